/* demo-counter: prints an incrementing counter with a timestamp every
 * 200 ms, for scripts/demo.sh to checkpoint and restore.
 *
 * It keeps to what rcr can carry today: one thread, no signal handlers,
 * no pipes or sockets (fds 0-2 are whatever the caller redirected them
 * to; anything else inherited is closed at start). Every line goes out
 * with one write(2), so a line is either in the log or not.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	/* Inherited descriptors (a terminal's, a CI runner's pipes) would make
	 * the process something rcr refuses; keep only stdin/out/err. */
	close_range(3, ~0U, 0);

	for (unsigned long count = 0;; count++) {
		struct timespec now;
		struct tm tm;
		char stamp[32], line[128];

		clock_gettime(CLOCK_REALTIME, &now);
		gmtime_r(&now.tv_sec, &tm);
		strftime(stamp, sizeof(stamp), "%H:%M:%S", &tm);
		int n = snprintf(line, sizeof(line), "%s.%03ld UTC  pid %d  count %lu\n", stamp,
				 now.tv_nsec / 1000000, (int)getpid(), count);
		if (write(STDOUT_FILENO, line, (size_t)n) != n)
			return 1;

		/* A restore can end a sleep early with EINTR (see "Syscall
		 * restart" in images-format.md); sleep the rest. */
		struct timespec left = { .tv_sec = 0, .tv_nsec = 200 * 1000 * 1000 };
		while (nanosleep(&left, &left) == -1 && errno == EINTR)
			;
	}
}
