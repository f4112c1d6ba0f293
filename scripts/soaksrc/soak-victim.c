/*
 * The victim of scripts/soak: a two-process tree that checks itself again
 * and again while it is dumped and restored many times.
 *
 * State held (and checked at every round):
 *   - 8 MiB of private anonymous memory and 1 MiB of a shared memfd mapping,
 *     both filled with a seeded pattern;
 *   - a worker thread writing a counter into a pipe every 2 ms; the main
 *     thread reads it and checks the sequence has no gap and no repeat;
 *   - a child process on a socketpair that answers every request with
 *     request + 1 and its getppid();
 *   - a regular file open at a known offset, an eventfd holding a value;
 *   - a TCP listener on 127.0.0.1 (same port, still accepting);
 *   - a SIGUSR2 handler with its mask and flags, SIGTERM blocked;
 *   - an interval timer (ITIMER_REAL, 5 ms) whose SIGALRM ticks must go on.
 *
 * Protocol: argv[1] is a scratch directory. The victim prints
 * "READY <pid> <child pid>" once set up. Each SIGUSR1 asks for a check:
 * it prints "PASS <n>" or "FAIL <n>: <what>" (n counts the checks) and
 * carries on. It exits once the file <dir>/stop exists (looked for every
 * 2 ms), and after an hour at most.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ANON_LEN (8UL << 20)
#define MEMFD_LEN (1UL << 20)
#define FILE_OFF 12345
#define EVENT_VAL 77
#define PIPE_FD 100
#define SOCK_FD 101
#define FILE_FD 102
#define EVENT_FD 103
#define LISTEN_FD 104

static volatile sig_atomic_t check_asked, alarms, usr2;
static unsigned char *anon, *shared;
static int pipe_rd, listen_port;
static uint64_t next_seq;
static char failure[256];

static void say(const char *fmt, ...)
{
	char b[300];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(b, sizeof(b) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(b) - 2)
		n = sizeof(b) - 2;
	b[n++] = '\n';
	if (write(1, b, n) < 0)
		_exit(3);
}

static void die(const char *what)
{
	say("FAIL setup: %s: %s", what, strerror(errno));
	exit(1);
}

static unsigned char pat(unsigned seed, size_t i)
{
	return (unsigned char)((i * 131 + seed * 7 + (i >> 12) * 29 + 1) ^ (seed >> 3));
}

static void failf(const char *fmt, ...)
{
	if (failure[0])
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(failure, sizeof(failure), fmt, ap);
	va_end(ap);
}

static void on_usr1(int s) { (void)s; check_asked = 1; }
static void on_alarm(int s) { (void)s; alarms++; }
static void on_usr2(int s) { (void)s; usr2++; }

static void put(int fd, int want)
{
	if (fd < 0)
		die("creating an fd");
	if (fd != want) {
		if (dup2(fd, want) != want)
			die("dup2");
		close(fd);
	}
}

static void *worker(void *arg)
{
	(void)arg;
	for (uint64_t seq = 0;; seq++) {
		if (write(PIPE_FD + 10, &seq, sizeof(seq)) != sizeof(seq)) {
			if (errno == EINTR) {
				seq--;
				continue;
			}
			say("FAIL worker: pipe write: %s", strerror(errno));
			exit(1);
		}
		struct timespec ts = { 0, 2000000 };
		while (nanosleep(&ts, &ts) && errno == EINTR)
			;
	}
	return NULL;
}

static void child_loop(void)
{
	for (;;) {
		uint64_t q;
		ssize_t n = read(SOCK_FD, &q, sizeof(q));
		if (n < 0 && errno == EINTR)
			continue;
		if (n != sizeof(q))
			_exit(n == 0 ? 0 : 4);
		uint64_t a[2] = { q + 1, (uint64_t)getppid() };
		if (write(SOCK_FD, a, sizeof(a)) != sizeof(a))
			_exit(5);
	}
}

static void setup_memory(void)
{
	anon = mmap(NULL, ANON_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (anon == MAP_FAILED)
		die("mmap anon");
	for (size_t i = 0; i < ANON_LEN; i++)
		anon[i] = pat(1, i);
	int m = memfd_create("soak-shared", 0);
	if (m < 0 || ftruncate(m, MEMFD_LEN))
		die("memfd");
	shared = mmap(NULL, MEMFD_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
	if (shared == MAP_FAILED)
		die("mmap memfd");
	close(m);
	for (size_t i = 0; i < MEMFD_LEN; i++)
		shared[i] = pat(2, i);
}

static void setup_fds(const char *dir)
{
	int p[2], s[2];
	if (pipe(p))
		die("pipe");
	put(p[0], PIPE_FD);
	put(p[1], PIPE_FD + 10);
	pipe_rd = PIPE_FD;
	fcntl(PIPE_FD, F_SETFL, O_NONBLOCK);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, s))
		die("socketpair");
	put(s[0], SOCK_FD);
	put(s[1], SOCK_FD + 10);
	char path[4096];
	snprintf(path, sizeof(path), "%s/soak-file", dir);
	int f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	put(f, FILE_FD);
	if (pwrite(FILE_FD, "soak file contents", 18, 0) != 18 || lseek(FILE_FD, FILE_OFF, SEEK_SET) != FILE_OFF)
		die("file");
	put(eventfd(EVENT_VAL, EFD_NONBLOCK), EVENT_FD);
	int l = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	if (l < 0 || bind(l, (void *)&a, sizeof(a)) || listen(l, 8) || getsockname(l, (void *)&a, &al))
		die("listener");
	put(l, LISTEN_FD);
	listen_port = ntohs(a.sin_port);
}

static void setup_signals(void)
{
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_alarm;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);
	sa.sa_handler = on_usr2;
	sa.sa_flags = SA_RESTART | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGWINCH);
	sigaction(SIGUSR2, &sa, NULL);
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGTERM);
	sigprocmask(SIG_BLOCK, &m, NULL);
	struct itimerval it = { { 0, 5000 }, { 0, 5000 } };
	setitimer(ITIMER_REAL, &it, NULL);
}

static void drain_pipe(void)
{
	uint64_t buf[64];
	for (;;) {
		ssize_t n = read(pipe_rd, buf, sizeof(buf));
		if (n < 0)
			return; /* EAGAIN (or EINTR: next turn) */
		if (n % 8) {
			failf("pipe: read %zd bytes, not a multiple of 8", n);
			return;
		}
		for (ssize_t i = 0; i < n / 8; i++, next_seq++)
			if (buf[i] != next_seq) {
				failf("pipe: got counter %llu, expected %llu", (unsigned long long)buf[i], (unsigned long long)next_seq);
				next_seq = buf[i];
			}
	}
}

static void check_memory(void)
{
	for (size_t i = 0; i < ANON_LEN; i++)
		if (anon[i] != pat(1, i))
			return failf("anon memory: byte %zu is %u, expected %u", i, anon[i], pat(1, i));
	for (size_t i = 0; i < MEMFD_LEN; i++)
		if (shared[i] != pat(2, i))
			return failf("memfd memory: byte %zu differs", i);
}

static void check_child(pid_t child, uint64_t q)
{
	uint64_t a[2];
	if (write(SOCK_FD + 10, &q, sizeof(q)) != sizeof(q))
		return failf("child: write: %s", strerror(errno));
	ssize_t n;
	while ((n = read(SOCK_FD + 10, a, sizeof(a))) < 0 && errno == EINTR)
		;
	if (n != sizeof(a))
		return failf("child %d: read %zd: %s", child, n, strerror(errno));
	if (a[0] != q + 1 || a[1] != (uint64_t)getpid())
		failf("child %d: answered %llu ppid %llu", child, (unsigned long long)a[0], (unsigned long long)a[1]);
}

static void check_files(void)
{
	char b[18];
	if (lseek(FILE_FD, 0, SEEK_CUR) != FILE_OFF)
		return failf("file: offset %lld", (long long)lseek(FILE_FD, 0, SEEK_CUR));
	if (pread(FILE_FD, b, 18, 0) != 18 || memcmp(b, "soak file contents", 18))
		return failf("file: contents differ");
	uint64_t v;
	if (read(EVENT_FD, &v, 8) != 8 || v != EVENT_VAL)
		return failf("eventfd: value not %d", EVENT_VAL);
	v = EVENT_VAL;
	if (write(EVENT_FD, &v, 8) != 8)
		return failf("eventfd: write back");
	struct sockaddr_in a;
	socklen_t al = sizeof(a);
	if (getsockname(LISTEN_FD, (void *)&a, &al) || ntohs(a.sin_port) != listen_port)
		return failf("listener: port %d, expected %d", ntohs(a.sin_port), listen_port);
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (void *)&a, al))
		return failf("listener: connect: %s", strerror(errno));
	int s = accept(LISTEN_FD, NULL, NULL);
	if (s < 0)
		failf("listener: accept: %s", strerror(errno));
	/* The client closes first: its side keeps the TIME_WAIT, on its own
	 * port, not the listener's (which has no SO_REUSEADDR). */
	close(c);
	char b1;
	if (s >= 0 && read(s, &b1, 1) != 0)
		failf("listener: expected the client's FIN");
	close(s);
}

static void check_signals(void)
{
	struct sigaction sa;
	sigaction(SIGUSR2, NULL, &sa);
	if (sa.sa_handler != on_usr2 || !(sa.sa_flags & SA_NODEFER) || !sigismember(&sa.sa_mask, SIGWINCH))
		return failf("SIGUSR2 action changed");
	sigset_t m;
	sigprocmask(SIG_BLOCK, NULL, &m);
	if (!sigismember(&m, SIGTERM) || sigismember(&m, SIGUSR2))
		return failf("signal mask changed");
	int before = usr2;
	raise(SIGUSR2);
	if (usr2 != before + 1)
		failf("SIGUSR2 not handled");
	struct itimerval it;
	getitimer(ITIMER_REAL, &it);
	if (it.it_interval.tv_usec != 5000)
		failf("itimer interval is %ld us", (long)it.it_interval.tv_usec);
}

/* Waits up to 2 s for the timer and the worker to show progress. */
static void check_progress(void)
{
	int a0 = alarms;
	uint64_t s0 = next_seq;
	for (int i = 0; i < 200 && (alarms == a0 || next_seq == s0); i++) {
		struct timespec ts = { 0, 10000000 };
		nanosleep(&ts, NULL);
		drain_pipe();
	}
	if (alarms == a0)
		failf("itimer: no SIGALRM in 2 s");
	if (next_seq == s0)
		failf("worker: no counter in 2 s");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: soak-victim DIR\n");
		return 2;
	}
	setup_memory();
	setup_fds(argv[1]);
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0)
		child_loop();
	close(SOCK_FD);
	setup_signals();
	pthread_t t;
	if (pthread_create(&t, NULL, worker, NULL))
		die("pthread_create");
	char stop[4096];
	snprintf(stop, sizeof(stop), "%s/stop", argv[1]);
	say("READY %d %d", getpid(), child);
	time_t end = time(NULL) + 3600;
	for (uint64_t n = 1; time(NULL) < end && access(stop, F_OK); ) {
		struct timespec ts = { 0, 2000000 };
		nanosleep(&ts, NULL);
		drain_pipe();
		if (!check_asked)
			continue;
		check_asked = 0;
		check_memory();
		check_child(child, n * 1000);
		check_files();
		check_signals();
		check_progress();
		if (failure[0])
			say("FAIL %llu: %s", (unsigned long long)n, failure);
		else
			say("PASS %llu", (unsigned long long)n);
		failure[0] = 0;
		n++;
	}
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	return 0;
}
