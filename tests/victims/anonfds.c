/*
 * anonfds: eventfd, signalfd, timerfd, epoll and inotify survive
 * dump/restore (and a dump -R that leaves the process running).
 *
 * Set up before READY:
 *   EFD1  eventfd, counter 0x100000005 (above 32 bits), EFD_NONBLOCK
 *   EFD2  eventfd, EFD_SEMAPHORE, counter 3
 *   SFD   signalfd for SIGUSR1 and SIGRTMIN+2 (both blocked), SFD_NONBLOCK
 *   TFD1  timerfd MONOTONIC, every 50 ms
 *   TFD2  timerfd MONOTONIC, one-shot 1 ms, fired and not read: 1 tick
 *   TFD3  timerfd REALTIME, TFD_TIMER_ABSTIME|TFD_TIMER_CANCEL_ON_SET,
 *         one hour from now
 *   TFD4  timerfd BOOTTIME, first in 10 s, then every 7 s
 *   EP    epoll with EFD1 (IN, data 0x1111), TFD1 (IN, 0x2222),
 *         SFD (IN, 0x3333), the pipe's read end (added with IN and data
 *         0x4000, then EPOLL_CTL_MOD to IN|ET and 0x4444), EFD2 (IN|ONESHOT,
 *         0x5555, fired once by epoll_wait: disabled), EP2 (IN, 0x7777)
 *   EP2   epoll with the pipe's write end (OUT, 0x6666): EP nests EP2
 *   IN    inotify with watches wd 2 (DIR: CREATE|DELETE), wd 3 (FILE2:
 *         MODIFY|ONESHOT), wd 6 (FILE5: ATTRIB|EXCL_UNLINK): wds 1, 4
 *         and 5 were added and removed, and their IN_IGNORED read
 * DIR is the directory of the go file + "/watched"; FILE2 and FILE5 are
 * files in it. The victim records every fdinfo line that should not
 * change (see stable()).
 *
 * After go it checks: the stable fdinfo lines are the same; counters
 * (EFD1 reads 0x100000005, EFD2 reads 1 in semaphore mode), flags
 * (O_NONBLOCK); epoll reports exactly EFD1 and EP2 (and TFD1 if it
 * ticked), not the fired oneshot; writing the pipe reports 0x4444; a
 * SIGUSR1 sent now is reported (0x3333) and read from SFD; TFD1 is
 * reported and ticks 4 more times in about 200 ms; TFD2 reads 1 tick;
 * TFD3 and TFD4 have their interval and a plausible time left; re-arming
 * the oneshot with EPOLL_CTL_MOD reports 0x5555; the inotify watches
 * report a create (wd 2), a modify then IN_IGNORED (wd 3, oneshot) and an
 * attrib (wd 6), and the next new watch gets wd 7.
 *
 * Mode "shared": after setup, an eventfd at fd 42 is registered in EP
 * (IN, 0x8888), then the victim forks a child that keeps fd 42 and the
 * parent closes it: only the child can register it again (its fd 42). After
 * go the parent sends SIGUSR2 to the child, which writes the eventfd: EP,
 * shared by both, must report 0x8888 to the parent; the child then exits.
 *
 * Modes (argv[2]): "queued" leaves an inotify event unread at READY (rcr
 * must refuse the dump; the victim reads it after go); "moved" registers
 * an eventfd in EP at fd 40, then moves it to fd 41 (rcr must refuse: no
 * process has the registered file at fd 40).
 *
 * usage: anonfds GO_FILE [queued|moved|shared]
 */
#define _GNU_SOURCE
#include "victim.h"
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/wait.h>

enum { EFD1 = 20, EFD2, SFD, TFD1, TFD2, TFD3, TFD4, EP, EP2, PIPE_R, PIPE_W, INO };
#define NFDS 12
#define MS 1000000LL

static char dir[512], file2[600], file5[600], file7[600];
static char saved[NFDS][2048];
static int failed;

#define check(cond, ...) do { if (!(cond)) { say("FAIL: " __VA_ARGS__); failed = 1; } } while (0)

static int cmp_lines(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The fdinfo lines of fd that dump/restore must keep, sorted (epoll lists
 * its registrations in the order of the files' kernel addresses), one per
 * line; epoll lines without the target's ino and sdev (a pipe's changes). */
static void stable(int fd, char *out, size_t len)
{
	static const char *keep[] = { "flags:", "eventfd-count:", "eventfd-semaphore:", "sigmask:", "clockid:",
				      "settime flags:", "it_interval:", "inotify ", NULL };
	char path[64], buf[4096], *save = NULL, *lines[64], norm[64][256];
	int n_lines = 0;
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	int f = open(path, O_RDONLY);
	ssize_t n = f < 0 ? -1 : read(f, buf, sizeof(buf) - 1);
	if (f >= 0)
		close(f);
	buf[n < 0 ? 0 : n] = 0;
	for (char *l = strtok_r(buf, "\n", &save); l && n_lines < 64; l = strtok_r(NULL, "\n", &save)) {
		int tfd;
		unsigned ev;
		unsigned long long data;
		if (sscanf(l, "tfd: %d events: %x data: %llx", &tfd, &ev, &data) == 3) {
			snprintf(norm[n_lines], sizeof(norm[0]), "tfd %d events %x data %llx", tfd, ev, data);
			lines[n_lines] = norm[n_lines];
			n_lines++;
			continue;
		}
		for (int i = 0; keep[i]; i++)
			if (!strncmp(l, keep[i], strlen(keep[i]))) {
				snprintf(norm[n_lines], sizeof(norm[0]), "%s", l);
				lines[n_lines] = norm[n_lines];
				n_lines++;
				break;
			}
	}
	qsort(lines, n_lines, sizeof(lines[0]), cmp_lines);
	out[0] = 0;
	for (int i = 0; i < n_lines; i++) {
		strncat(out, lines[i], len - strlen(out) - 2);
		strcat(out, "\n");
	}
}

static void epoll_add(int ep, int op, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };
	if (epoll_ctl(ep, op, fd, &ev) < 0)
		fail("epoll_ctl %d fd %d: %s", op, fd, strerror(errno));
}

static int watch(const char *path, uint32_t mask)
{
	int wd = inotify_add_watch(INO, path, mask);
	if (wd < 0)
		fail("inotify_add_watch %s: %s", path, strerror(errno));
	return wd;
}

static void touch(const char *path)
{
	int fd = open(path, O_CREAT | O_WRONLY, 0644);
	if (fd < 0)
		fail("creating %s: %s", path, strerror(errno));
	close(fd);
}

/* Reads every queued inotify event (the fd is non-blocking). */
static void drain_inotify(void)
{
	char buf[4096];
	while (read(INO, buf, sizeof(buf)) > 0)
		;
}

static void set_timer(int fd, int flags, long long value_ns, long long interval_ns)
{
	struct itimerspec t = { { interval_ns / 1000000000, interval_ns % 1000000000 }, { value_ns / 1000000000, value_ns % 1000000000 } };
	if (timerfd_settime(fd, flags, &t, NULL) < 0)
		fail("timerfd_settime fd %d: %s", fd, strerror(errno));
}

static void setup_timers(void)
{
	put_fd(timerfd_create(CLOCK_MONOTONIC, 0), TFD1);
	set_timer(TFD1, 0, 50 * MS, 50 * MS);
	put_fd(timerfd_create(CLOCK_MONOTONIC, 0), TFD2);
	set_timer(TFD2, 0, 1 * MS, 0);
	put_fd(timerfd_create(CLOCK_REALTIME, 0), TFD3);
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	set_timer(TFD3, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, (now.tv_sec + 3600) * 1000000000LL + now.tv_nsec, 0);
	put_fd(timerfd_create(CLOCK_BOOTTIME, TFD_NONBLOCK), TFD4);
	set_timer(TFD4, 0, 10000 * MS, 7000 * MS);
	struct timespec ms20 = { 0, 20 * MS };
	nanosleep(&ms20, NULL); /* TFD2 fires */
}

static void setup_epoll(const char *mode)
{
	int p[2];
	if (pipe(p) < 0)
		fail("pipe: %s", strerror(errno));
	put_fd(p[0], PIPE_R);
	put_fd(p[1], PIPE_W);
	put_fd(epoll_create1(0), EP2);
	epoll_add(EP2, EPOLL_CTL_ADD, PIPE_W, EPOLLOUT, 0x6666);
	put_fd(epoll_create1(0), EP);
	epoll_add(EP, EPOLL_CTL_ADD, EFD1, EPOLLIN, 0x1111);
	epoll_add(EP, EPOLL_CTL_ADD, TFD1, EPOLLIN, 0x2222);
	epoll_add(EP, EPOLL_CTL_ADD, SFD, EPOLLIN, 0x3333);
	epoll_add(EP, EPOLL_CTL_ADD, PIPE_R, EPOLLIN, 0x4000);
	epoll_add(EP, EPOLL_CTL_MOD, PIPE_R, EPOLLIN | EPOLLET, 0x4444);
	epoll_add(EP, EPOLL_CTL_ADD, EP2, EPOLLIN, 0x7777);
	/* fire the oneshot alone, in a fresh epoll, to leave the others as they are */
	epoll_add(EP, EPOLL_CTL_ADD, EFD2, EPOLLIN | EPOLLONESHOT, 0x5555);
	struct epoll_event evs[16];
	int n = epoll_wait(EP, evs, 16, 0), fired = 0;
	for (int i = 0; i < n; i++)
		fired |= evs[i].data.u64 == 0x5555;
	if (!fired)
		fail("the oneshot registration of EFD2 did not fire");
	if (!strcmp(mode, "moved")) {
		put_fd(eventfd(0, 0), 40);
		epoll_add(EP, EPOLL_CTL_ADD, 40, EPOLLIN, 0x40);
		put_fd(dup(40), 41);
		close(40);
	}
}

static void setup_inotify(const char *mode)
{
	put_fd(inotify_init1(IN_NONBLOCK), INO);
	char f1[600], f4[600];
	snprintf(f1, sizeof(f1), "%s/f1", dir);
	snprintf(f4, sizeof(f4), "%s/f4", dir);
	touch(f1);
	touch(file2);
	touch(f4);
	touch(file5);
	int w1 = watch(f1, IN_MODIFY);
	int w2 = watch(dir, IN_CREATE | IN_DELETE);
	int w3 = watch(file2, IN_MODIFY | IN_ONESHOT);
	inotify_rm_watch(INO, w1);
	int w4 = watch(f4, IN_MODIFY);
	inotify_rm_watch(INO, w4);
	int w5 = watch(f4, IN_MODIFY);
	inotify_rm_watch(INO, w5);
	int w6 = watch(file5, IN_ATTRIB | IN_EXCL_UNLINK);
	if (w1 != 1 || w2 != 2 || w3 != 3 || w4 != 4 || w5 != 5 || w6 != 6)
		fail("unexpected wds %d %d %d %d %d %d", w1, w2, w3, w4, w5, w6);
	drain_inotify();
	if (!strcmp(mode, "queued")) {
		char q[600];
		snprintf(q, sizeof(q), "%s/queued", dir);
		touch(q);
	}
}

static void setup(const char *mode)
{
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR1);
	sigaddset(&s, SIGRTMIN + 2);
	sigprocmask(SIG_BLOCK, &s, NULL);
	put_fd(eventfd(0, EFD_NONBLOCK), EFD1);
	uint64_t v = 0x100000005ULL;
	if (write(EFD1, &v, 8) != 8)
		fail("write EFD1: %s", strerror(errno));
	put_fd(eventfd(3, EFD_SEMAPHORE), EFD2);
	put_fd(signalfd(-1, &s, SFD_NONBLOCK), SFD);
	setup_timers();
	setup_epoll(mode);
	setup_inotify(mode);
}

/* The data of the items EP reports within `ms` (bit i: data 0x1111*(i+1)). */
static unsigned ep_ready(int ms)
{
	struct epoll_event evs[16];
	unsigned got = 0;
	int n = epoll_wait(EP, evs, 16, ms);
	for (int i = 0; i < n; i++) {
		uint64_t d = evs[i].data.u64;
		if (d % 0x1111 == 0 && d / 0x1111 >= 1 && d / 0x1111 <= 8)
			got |= 1u << (d / 0x1111 - 1);
		else
			check(0, "epoll reported unknown data %#llx", (unsigned long long)d);
	}
	return got;
}

static int reported_within(unsigned bit, int ms);
static pid_t child;

/* Mode "shared": the registration only the child holds at its number. */
static void setup_shared(void)
{
	put_fd(eventfd(0, 0), 42);
	epoll_add(EP, EPOLL_CTL_ADD, 42, EPOLLIN, 0x8888);
	child = fork();
	if (child < 0)
		fail("fork: %s", strerror(errno));
	if (child == 0) {
		sigset_t s;
		int sig;
		uint64_t one = 1;
		sigemptyset(&s);
		sigaddset(&s, SIGUSR2);
		sigprocmask(SIG_BLOCK, &s, NULL);
		if (sigwait(&s, &sig) != 0 || write(42, &one, 8) != 8)
			_exit(1);
		sleep(1); /* the registration lives as long as this fd */
		_exit(0);
	}
	close(42);
}

static void check_shared(void)
{
	int st;
	kill(child, SIGUSR2);
	check(reported_within(128u, 1000), "the registration the child made (0x8888) was not reported");
	check(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child failed (status %#x)", st);
}

/* Whether EP reports the item with bit `bit` (see ep_ready) within `ms`
 * (EP2 is always ready, so one epoll_wait does not wait for it). */
static int reported_within(unsigned bit, int ms)
{
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		if (ep_ready(10) & bit)
			return 1;
		sleep_10ms();
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 <= ms);
	return 0;
}

static void check_counters(void)
{
	uint64_t v = 0;
	check(read(EFD1, &v, 8) == 8 && v == 0x100000005ULL, "EFD1 read %#llx (%s)", (unsigned long long)v, strerror(errno));
	check(read(EFD2, &v, 8) == 8 && v == 1, "EFD2 (semaphore) read %llu", (unsigned long long)v);
	check(fcntl(EFD1, F_GETFL) & O_NONBLOCK, "EFD1 lost O_NONBLOCK");
	check(!(fcntl(EFD2, F_GETFL) & O_NONBLOCK), "EFD2 got O_NONBLOCK");
	check(fcntl(SFD, F_GETFL) & O_NONBLOCK, "SFD lost O_NONBLOCK");
}

static void check_epoll(void)
{
	unsigned got = ep_ready(0) & ~2u; /* TFD1 may or may not have ticked */
	check(got == (1u | 1u << 6), "epoll reported %#x at first, expected EFD1 and EP2 (bits 0 and 6)", got);
	if (write(PIPE_W, "x", 1) != 1)
		fail("write pipe");
	check(reported_within(8u, 100), "epoll did not report the pipe (0x4444) after a write: %#x", got);
	got = ep_ready(0);
	check(!(got & 8u), "the edge-triggered pipe was reported twice: %#x", got);
	kill(getpid(), SIGUSR1);
	check(reported_within(4u, 100), "epoll did not report the signalfd (0x3333) after SIGUSR1");
	struct signalfd_siginfo si;
	check(read(SFD, &si, sizeof(si)) == sizeof(si) && si.ssi_signo == SIGUSR1, "signalfd did not read SIGUSR1");
	check(!(ep_ready(0) & 16u), "the fired oneshot (0x5555) was reported before being re-armed");
	epoll_add(EP, EPOLL_CTL_MOD, EFD2, EPOLLIN | EPOLLONESHOT, 0x5555);
	check(reported_within(16u, 100), "the oneshot (0x5555) was not reported after EPOLL_CTL_MOD");
}

static long long now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void check_timers(void)
{
	uint64_t ticks = 0;
	check(read(TFD2, &ticks, 8) == 8 && ticks == 1, "TFD2 read %llu ticks, expected the 1 unread", (unsigned long long)ticks);
	check(reported_within(2u, 200), "epoll did not report TFD1 (0x2222) within 200 ms");
	check(read(TFD1, &ticks, 8) == 8, "read TFD1");
	long long t0 = now_ns(), n = 0;
	while (n < 4 && read(TFD1, &ticks, 8) == 8)
		n += ticks;
	long long dt = (now_ns() - t0) / MS;
	check(n >= 4 && dt >= 140 && dt <= 400, "TFD1: %lld ticks in %lld ms, expected 4 in about 200", n, dt);
	struct itimerspec it;
	timerfd_gettime(TFD3, &it);
	check(it.it_value.tv_sec > 3000 && it.it_value.tv_sec <= 3600 && it.it_interval.tv_sec == 0, "TFD3 has %ld s left", (long)it.it_value.tv_sec);
	timerfd_gettime(TFD4, &it);
	check(it.it_value.tv_sec < 10 && (it.it_value.tv_sec > 0 || it.it_value.tv_nsec > 0) && it.it_interval.tv_sec == 7 && it.it_interval.tv_nsec == 0,
	      "TFD4 has %ld.%09ld s left, interval %ld s", (long)it.it_value.tv_sec, it.it_value.tv_nsec, (long)it.it_interval.tv_sec);
}

/* Reads inotify events for up to 200 ms; returns "wd:mask[:name] ..." */
static void inotify_events(char *out, size_t len)
{
	char buf[4096] __attribute__((aligned(8)));
	out[0] = 0;
	for (int tries = 0; tries < 20; tries++) {
		ssize_t n = read(INO, buf, sizeof(buf));
		if (n <= 0) {
			if (out[0])
				return;
			sleep_10ms();
			continue;
		}
		for (char *p = buf; p < buf + n;) {
			struct inotify_event *e = (struct inotify_event *)p;
			char one[128];
			snprintf(one, sizeof(one), "%d:%x%s%s ", e->wd, e->mask, e->len ? ":" : "", e->len ? e->name : "");
			strncat(out, one, len - strlen(out) - 1);
			p += sizeof(*e) + e->len;
		}
	}
}

static void check_inotify(void)
{
	char got[1024], path[600];
	snprintf(path, sizeof(path), "%s/new", dir);
	touch(path);
	inotify_events(got, sizeof(got));
	check(!strcmp(got, "2:100:new "), "after creating DIR/new, inotify read \"%s\"", got);
	int fd = open(file2, O_WRONLY);
	if (fd < 0 || write(fd, "x", 1) != 1)
		fail("writing FILE2");
	close(fd);
	inotify_events(got, sizeof(got));
	check(!strcmp(got, "3:2 3:8000 "), "after writing FILE2, inotify read \"%s\" (expected MODIFY then IGNORED)", got);
	chmod(file5, 0600);
	inotify_events(got, sizeof(got));
	check(!strcmp(got, "6:4 "), "after chmod FILE5, inotify read \"%s\"", got);
	touch(file7);
	int wd = watch(file7, IN_MODIFY);
	check(wd == 7, "a new watch got wd %d, expected 7", wd);
}

int main(int argc, char **argv)
{
	need_args(argc, argv, 1, "GO_FILE [queued|moved|shared]");
	const char *mode = argc > 2 ? argv[2] : "";
	char go[512];
	snprintf(go, sizeof(go), "%s", argv[1]);
	snprintf(dir, sizeof(dir), "%s/watched", dirname(go));
	mkdir(dir, 0755);
	snprintf(file2, sizeof(file2), "%s/file2", dir);
	snprintf(file5, sizeof(file5), "%s/file5", dir);
	snprintf(file7, sizeof(file7), "%s/file7", dir);
	setup(mode);
	if (!strcmp(mode, "shared"))
		setup_shared();
	for (int i = 0; i < NFDS; i++)
		stable(EFD1 + i, saved[i], sizeof(saved[i]));
	ready();
	wait_for_go(argv[1]);
	if (!strcmp(mode, "queued"))
		drain_inotify();
	for (int i = 0; i < NFDS; i++) {
		char now[2048];
		stable(EFD1 + i, now, sizeof(now));
		check(!strcmp(now, saved[i]), "fd %d fdinfo changed:\n--- before\n%s--- after\n%s", EFD1 + i, saved[i], now);
	}
	check_epoll();
	check_counters();
	check_timers();
	check_inotify();
	if (!strcmp(mode, "shared"))
		check_shared();
	if (failed)
		exit(1);
	pass();
}
