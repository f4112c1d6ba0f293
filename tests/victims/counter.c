/*
 * counter: a running computation continues where it was.
 *
 * Counts in a loop with 10 ms sleeps and prints "count N" every 10 steps.
 * The harness notes the last N printed before the dump and writes it into
 * the go file. After restore the counter must be above that N (it went on
 * counting, it did not restart from 0); the harness also checks that the
 * "count" lines in the log never go backwards.
 *
 * usage: counter GO_FILE
 */
#include "victim.h"

int main(int argc, char **argv)
{
	long counter = 0, seen = -1;

	need_args(argc, argv, 1, "GO_FILE");
	ready();

	for (;;) {
		counter++;
		if (counter % 10 == 0) {
			printf("count %ld\n", counter);
			fflush(stdout);
		}
		if (go_exists(argv[1]))
			break;
		if (counter == GO_TIMEOUT_POLLS)
			fail("no go file after %ld polls; giving up", counter);
		sleep_10ms();
	}

	FILE *f = fopen(argv[1], "r");
	if (!f || fscanf(f, "%ld", &seen) != 1)
		fail("go file %s does not hold the last count seen", argv[1]);
	fclose(f);
	if (counter <= seen)
		fail("counter is %ld but %ld was printed before the dump", counter, seen);
	printf("final count %ld (last seen before dump %ld)\n", counter, seen);
	pass();
}
