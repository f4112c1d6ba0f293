/*
 * allstate: one process holding every kind of state rcr carries at once
 * (the per-kind victims test each in depth; this one checks they coexist).
 *
 * Set-up (DIR is argv[2]), then READY, then go, then every check below;
 * PASS or the first failure:
 *   fd 40/41  DIR/data (pattern) O_RDWR, dup'd: one description at 3000
 *   fd 42/43  a pipe holding "pipe-bytes"
 *   fd 44/45  DIR/fifo, read and write ends, holding "fifo-bytes"
 *   fd 46/47  a stream socketpair, "ping" queued to 47, "pong" to 46
 *   fd 48/49  a datagram socketpair, "one" and "three" queued to 49
 *   fd 50     a unix stream socket listening on DIR/sock (absolute path)
 *   fd 51     an eventfd with count 5
 *   fd 52     an epoll set: the eventfd (data 0xE1), the pipe's read end
 *             (data 0xE2), the timerfd (data 0xE3)
 *   fd 53     a signalfd for SIGUSR1 (blocked, one pending, sent before)
 *   fd 54     a timerfd, CLOCK_MONOTONIC, every 20 ms
 *   fd 55     inotify watching DIR/watched for IN_CREATE
 *   fd 56     a memfd "allstate" with PAGE bytes, sealed against growing
 *             and shrinking, also mapped shared
 *   fd 57     DIR/ghost, written then unlinked
 *   a POSIX timer (CLOCK_MONOTONIC, 10 ms, SIGRTMIN+1, value 777), the
 *   real itimer (every 10 ms), SIGRTMIN+2 blocked and queued with 4242,
 *   a second thread counting, supplementary groups {11, 22}, RLIMIT_NOFILE
 *   soft 900, nice 3, oom_score_adj 200.
 *
 * usage: allstate GO_FILE DIR
 */
#define _GNU_SOURCE
#include "victim.h"
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <sys/un.h>

#define DATA_SIZE 10000
static atomic_long ptimer_hits, alrm_hits, thread_ticks;
static atomic_int rt_value = -1, bad_value;
static timer_t ptimer;
static unsigned char *memmap;

static void on_rt(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (sig == SIGRTMIN + 1) {
		if (si->si_value.sival_int != 777)
			bad_value = si->si_value.sival_int;
		ptimer_hits++;
	} else if (sig == SIGRTMIN + 2) {
		rt_value = si->si_value.sival_int;
	} else if (sig == SIGALRM) {
		alrm_hits++;
	}
}

static void *counter(void *arg)
{
	(void)arg;
	for (;;) {
		thread_ticks++;
		sleep_10ms();
	}
	return NULL;
}

static void set_up_fds(const char *dir)
{
	static unsigned char data[DATA_SIZE];
	int p[2], s[2];
	fill(data, DATA_SIZE, 5);
	int fd = open("data", O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, data, DATA_SIZE) != DATA_SIZE || lseek(fd, 3000, SEEK_SET) != 3000)
		fail("data file");
	put_fd(fd, 40);
	put_fd(dup(40), 41);
	if (pipe(p) || write(p[1], "pipe-bytes", 10) != 10)
		fail("pipe");
	put_fd(p[0], 42);
	put_fd(p[1], 43);
	if (mkfifo("fifo", 0600))
		fail("mkfifo");
	put_fd(open("fifo", O_RDONLY | O_NONBLOCK), 44);
	put_fd(open("fifo", O_WRONLY), 45);
	if (write(45, "fifo-bytes", 10) != 10)
		fail("fifo write");
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, s))
		fail("socketpair");
	put_fd(s[0], 46);
	put_fd(s[1], 47);
	if (write(46, "ping", 4) != 4 || write(47, "pong", 4) != 4)
		fail("stream write");
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, s))
		fail("socketpair dgram");
	put_fd(s[0], 48);
	put_fd(s[1], 49);
	if (send(48, "one", 3, 0) != 3 || send(48, "three", 5, 0) != 5)
		fail("dgram send");
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s/sock", dir);
	put_fd(socket(AF_UNIX, SOCK_STREAM, 0), 50);
	if (bind(50, (struct sockaddr *)&a, sizeof(a)) || listen(50, 4))
		fail("listen: %s", strerror(errno));
	put_fd(eventfd(5, 0), 51);
	put_fd(timerfd_create(CLOCK_MONOTONIC, 0), 54);
	struct itimerspec its = { { 0, 20000000 }, { 0, 20000000 } };
	if (timerfd_settime(54, 0, &its, NULL))
		fail("timerfd_settime");
	put_fd(epoll_create1(0), 52);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0xE1 };
	if (epoll_ctl(52, EPOLL_CTL_ADD, 51, &ev))
		fail("epoll add eventfd");
	ev.data.u64 = 0xE2;
	if (epoll_ctl(52, EPOLL_CTL_ADD, 42, &ev))
		fail("epoll add pipe");
	ev.data.u64 = 0xE3;
	if (epoll_ctl(52, EPOLL_CTL_ADD, 54, &ev))
		fail("epoll add timerfd");
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	put_fd(signalfd(-1, &usr1, 0), 53);
	put_fd(inotify_init1(0), 55);
	if (mkdir("watched", 0700) || inotify_add_watch(55, "watched", IN_CREATE) != 1)
		fail("inotify_add_watch");
	put_fd(memfd_create("allstate", MFD_ALLOW_SEALING), 56);
	unsigned char page[PAGE];
	fill(page, PAGE, 9);
	if (write(56, page, PAGE) != PAGE || fcntl(56, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK))
		fail("memfd");
	memmap = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, 56, 0);
	if (memmap == MAP_FAILED)
		fail("mmap memfd");
	put_fd(open("ghost", O_RDWR | O_CREAT | O_TRUNC, 0640), 57);
	if (write(57, "ghost-content", 13) != 13 || unlink("ghost"))
		fail("ghost");
}

static void set_up_signals(void)
{
	struct sigaction sa = { .sa_sigaction = on_rt, .sa_flags = SA_SIGINFO | SA_RESTART };
	sigaction(SIGRTMIN + 1, &sa, NULL);
	sigaction(SIGRTMIN + 2, &sa, NULL);
	sigaction(SIGALRM, &sa, NULL);
	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGRTMIN + 2);
	sigprocmask(SIG_BLOCK, &block, NULL);
	kill(getpid(), SIGUSR1);
	union sigval v = { .sival_int = 4242 };
	if (sigqueue(getpid(), SIGRTMIN + 2, v))
		fail("sigqueue");
	struct sigevent sev = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGRTMIN + 1 };
	sev.sigev_value.sival_int = 777;
	struct itimerspec its = { { 0, 10000000 }, { 0, 10000000 } };
	if (timer_create(CLOCK_MONOTONIC, &sev, &ptimer) || timer_settime(ptimer, 0, &its, NULL))
		fail("timer_create");
	struct itimerval itv = { { 0, 10000 }, { 0, 10000 } };
	setitimer(ITIMER_REAL, &itv, NULL);
}

static void set_up_creds(void)
{
	gid_t groups[] = { 11, 22 };
	if (setgroups(2, groups))
		fail("setgroups");
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	rl.rlim_cur = 900;
	if (setrlimit(RLIMIT_NOFILE, &rl))
		fail("setrlimit");
	if (setpriority(PRIO_PROCESS, 0, 3))
		fail("setpriority");
	int fd = open("/proc/self/oom_score_adj", O_WRONLY);
	if (fd < 0 || write(fd, "200", 3) != 3)
		fail("oom_score_adj");
	close(fd);
}

static void expect_read(int fd, const char *want, size_t n, const char *what)
{
	char buf[64] = { 0 };
	ssize_t r = read(fd, buf, sizeof(buf));
	if (r != (ssize_t)n || memcmp(buf, want, n))
		fail("%s: read %zd bytes \"%.*s\", expected \"%s\"", what, r, (int)(r > 0 ? r : 0), buf, want);
}

static void check_fds(const char *dir)
{
	if (lseek(40, 0, SEEK_CUR) != 3000 || lseek(41, 100, SEEK_CUR) != 3100 || lseek(40, 0, SEEK_CUR) != 3100)
		fail("data: fds 40 and 41 no longer share one offset");
	expect_read(42, "pipe-bytes", 10, "pipe");
	expect_read(44, "fifo-bytes", 10, "fifo");
	expect_read(47, "ping", 4, "stream socket 47");
	expect_read(46, "pong", 4, "stream socket 46");
	expect_read(49, "one", 3, "datagram 1");
	expect_read(49, "three", 5, "datagram 2");
	int c = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s/sock", dir);
	if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)))
		fail("connecting to the listening socket: %s", strerror(errno));
	int s = accept(50, NULL, NULL);
	if (s < 0 || write(c, "hi", 2) != 2)
		fail("accept: %s", strerror(errno));
	expect_read(s, "hi", 2, "accepted socket");
	struct epoll_event evs[8];
	usleep(30000); /* the timerfd fires */
	int n = epoll_wait(52, evs, 8, 1000), seen = 0;
	for (int i = 0; i < n; i++)
		seen |= 1 << (evs[i].data.u64 - 0xE1);
	if (seen != 5 && seen != 7) /* eventfd and timerfd; the pipe was drained */
		fail("epoll reports %d events, set %#x", n, seen);
	uint64_t v;
	if (read(51, &v, 8) != 8 || v != 5)
		fail("eventfd count %llu", (unsigned long long)v);
	struct signalfd_siginfo si;
	if (read(53, &si, sizeof(si)) != sizeof(si) || si.ssi_signo != SIGUSR1)
		fail("signalfd: no pending SIGUSR1");
	if (read(54, &v, 8) != 8 || v < 1)
		fail("timerfd: no expirations");
	int f = open("watched/created", O_CREAT | O_WRONLY, 0600);
	close(f);
	char ev[256];
	struct inotify_event *ie = (void *)ev;
	if (read(55, ev, sizeof(ev)) <= 0 || ie->wd != 1 || !(ie->mask & IN_CREATE) || strcmp(ie->name, "created"))
		fail("inotify: no IN_CREATE event for wd 1");
	if (check(memmap, PAGE, 9) != -1 || fcntl(56, F_GET_SEALS) != (F_SEAL_GROW | F_SEAL_SHRINK))
		fail("memfd content or seals");
	if (pwrite(56, "Z", 1, 7) != 1 || memmap[7] != 'Z')
		fail("memfd and its mapping no longer share pages");
	struct stat st;
	char gbuf[32] = { 0 };
	if (fstat(57, &st) || st.st_nlink != 0 || pread(57, gbuf, 31, 0) != 13 || strcmp(gbuf, "ghost-content"))
		fail("ghost file: nlink %ld content \"%s\"", (long)st.st_nlink, gbuf);
}

static void check_rest(void)
{
	long p0 = ptimer_hits, a0 = alrm_hits, t0 = thread_ticks;
	struct itimerspec cur;
	if (timer_gettime(ptimer, &cur))
		fail("POSIX timer gone: %s", strerror(errno));
	sigset_t rt;
	sigemptyset(&rt);
	sigaddset(&rt, SIGRTMIN + 2);
	sigprocmask(SIG_UNBLOCK, &rt, NULL);
	if (rt_value != 4242)
		fail("queued SIGRTMIN+2 carried %d, expected 4242", rt_value);
	for (int i = 0; i < 50 && (ptimer_hits < p0 + 3 || alrm_hits < a0 + 3 || thread_ticks < t0 + 3); i++)
		sleep_10ms();
	if (ptimer_hits < p0 + 3 || alrm_hits < a0 + 3 || thread_ticks < t0 + 3 || bad_value)
		fail("after restore: POSIX timer %ld, itimer %ld, thread %ld (bad value %d)", ptimer_hits - p0, alrm_hits - a0,
		     thread_ticks - t0, bad_value);
	gid_t g[8];
	int ng = getgroups(8, g);
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	errno = 0;
	int nice = getpriority(PRIO_PROCESS, 0);
	char oom[16] = { 0 };
	int fd = open("/proc/self/oom_score_adj", O_RDONLY);
	if (fd < 0 || read(fd, oom, 15) <= 0)
		fail("reading oom_score_adj");
	if (ng != 2 || g[0] != 11 || g[1] != 22 || rl.rlim_cur != 900 || nice != 3 || atoi(oom) != 200)
		fail("creds/limits: %d groups, NOFILE %ld, nice %d, oom_score_adj %s", ng, (long)rl.rlim_cur, nice, oom);
}

int main(int argc, char **argv)
{
	need_args(argc, argv, 2, "GO_FILE DIR");
	if (chdir(argv[2]))
		fail("chdir %s", argv[2]);
	set_up_fds(argv[2]);
	set_up_signals();
	pthread_t th;
	if (pthread_create(&th, NULL, counter, NULL))
		fail("pthread_create");
	set_up_creds();
	ready();
	wait_for_go(argv[1]);
	check_fds(argv[2]);
	check_rest();
	pass();
}
