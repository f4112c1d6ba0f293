/*
 * Shared helpers for the rcr end-to-end victims (zdtm style).
 *
 * Contract with the harness (tests/e2e.rs):
 *   argv[1] is the "go" file. The victim sets up its state, prints READY,
 *   then polls for the go file (access() + 10 ms nanosleep). The harness
 *   dumps and restores it meanwhile, then creates the go file (atomically,
 *   by rename). The victim then checks its state and prints PASS (exit 0)
 *   or "FAIL: <what>" (exit 1).
 *   stdin is /dev/null; stdout and stderr are the same O_APPEND log file.
 *
 * Victims may install signal handlers (rcr saves and restores them: see
 * sigstate). Each victim's header says what it holds (threads, children,
 * pipes, sockets, timers, credentials...); allstate holds every kind at
 * once. badfd and unsupported hold what a dump must refuse. All victims
 * are built with -pthread.
 *
 * A victim never waits forever: with no go file after GO_TIMEOUT_POLLS polls
 * (10 minutes) it fails, so a crashed harness leaves nothing running.
 */
#ifndef RCR_VICTIM_H
#define RCR_VICTIM_H

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#ifndef GO_TIMEOUT_POLLS
#define GO_TIMEOUT_POLLS 60000L /* 10 ms each */
#endif

static inline void ready(void)
{
	printf("READY\n");
	fflush(stdout);
}

static inline void sleep_10ms(void)
{
	struct timespec ts = { 0, 10 * 1000 * 1000 };
	nanosleep(&ts, NULL); /* EINTR or not, the caller just polls again */
}

static inline int go_exists(const char *go)
{
	return access(go, F_OK) == 0;
}

/*
 * Print one line with a single write(): threads and processes print
 * concurrently into the O_APPEND log, and stdio buffers are not shared.
 */
__attribute__((format(printf, 1, 2)))
static inline void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(1, buf, n) < 0)
		return;
}

/* Print "FAIL: ..." and exit 1. */
__attribute__((noreturn, format(printf, 1, 2)))
static inline void fail(const char *fmt, ...)
{
	va_list ap;

	printf("FAIL: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	exit(1);
}

static inline void wait_for_go(const char *go)
{
	for (long polls = 0; !go_exists(go); polls++) {
		if (polls == GO_TIMEOUT_POLLS)
			fail("no go file after %ld polls; giving up", polls);
		sleep_10ms();
	}
}

__attribute__((noreturn))
static inline void pass(void)
{
	printf("PASS\n");
	fflush(stdout);
	exit(0);
}

/* Usage check shared by all victims: need at least n arguments. */
/* Puts the new fd `fd` at number `want` (dup2 and close), or fails. */
static inline void put_fd(int fd, int want)
{
	if (fd < 0)
		fail("creating fd %d: %s", want, strerror(errno));
	if (fd != want) {
		if (dup2(fd, want) != want)
			fail("dup2 %d -> %d: %s", fd, want, strerror(errno));
		close(fd);
	}
}

static inline void need_args(int argc, char **argv, int n, const char *usage)
{
	if (argc < n + 1) {
		fprintf(stderr, "usage: %s %s\n", argv[0], usage);
		exit(2);
	}
}

/* A byte pattern that depends on a seed and the position: catches both
 * wrong content and content shifted to the wrong place. */
static inline unsigned char pattern(unsigned seed, size_t i)
{
	return (unsigned char)((i * 131 + seed * 7 + (i >> 12) * 29 + 1) ^ (seed >> 3));
}

static inline void fill(void *p, size_t len, unsigned seed)
{
	unsigned char *b = p;
	for (size_t i = 0; i < len; i++)
		b[i] = pattern(seed, i);
}

/* Returns the offset of the first wrong byte, or -1 if all match. */
static inline long check(const void *p, size_t len, unsigned seed)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < len; i++)
		if (b[i] != pattern(seed, i))
			return (long)i;
	return -1;
}

#endif
