/*
 * heap: private anonymous memory survives dump/restore.
 *
 * Fills malloc'd buffers of several sizes (brk heap and malloc's own mmaps)
 * and anonymous mmaps with different protections (read-write, read-only
 * after filling, a PROT_NONE guard in the middle of a mapping, and one that
 * is only partly touched), then checks every byte after restore.
 * The harness compares /proc/PID/maps from outside, so protections must
 * also come back as they were.
 *
 * usage: heap GO_FILE
 */
#include "victim.h"
#include <sys/mman.h>

struct buf {
	const char *what;
	void *p;
	size_t len;
	unsigned seed;
};

int main(int argc, char **argv)
{
	static const size_t sizes[] = { 24, 1000, 64 << 10, 3 << 20 };
	struct buf bufs[16];
	int n = 0;

	need_args(argc, argv, 1, "GO_FILE");

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		void *p = malloc(sizes[i]);
		if (!p)
			fail("malloc(%zu)", sizes[i]);
		bufs[n++] = (struct buf){ "malloc", p, sizes[i], 10 + (unsigned)i };
	}

	/* Read-write, 16 pages. */
	char *rw = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	/* Filled, then made read-only. */
	char *ro = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	/* Three pages: rw | PROT_NONE | rw (splits into three VMAs). */
	char *guard = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	/* 64 pages of which only every 8th is touched. */
	char *partial = mmap(NULL, 64 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (rw == MAP_FAILED || ro == MAP_FAILED || guard == MAP_FAILED || partial == MAP_FAILED)
		fail("mmap: %s", strerror(errno));

	bufs[n++] = (struct buf){ "rw mmap", rw, 16 * PAGE, 20 };
	bufs[n++] = (struct buf){ "ro mmap", ro, 8 * PAGE, 21 };
	bufs[n++] = (struct buf){ "guard low page", guard, PAGE, 22 };
	bufs[n++] = (struct buf){ "guard high page", guard + 2 * PAGE, PAGE, 23 };
	for (int i = 0; i < 64; i += 8)
		bufs[n++] = (struct buf){ "partial mmap page", partial + i * PAGE, PAGE, 30 + (unsigned)i };

	for (int i = 0; i < n; i++)
		fill(bufs[i].p, bufs[i].len, bufs[i].seed);
	if (mprotect(ro, 8 * PAGE, PROT_READ) || mprotect(guard + PAGE, PAGE, PROT_NONE))
		fail("mprotect: %s", strerror(errno));

	ready();
	wait_for_go(argv[1]);

	for (int i = 0; i < n; i++) {
		long bad = check(bufs[i].p, bufs[i].len, bufs[i].seed);
		if (bad >= 0)
			fail("%s at %p: byte %ld of %zu differs", bufs[i].what, bufs[i].p, bad, bufs[i].len);
	}
	/* The untouched pages of the partial mapping must still read as zero. */
	for (int i = 0; i < 64; i++) {
		if (i % 8 == 0)
			continue;
		for (size_t j = 0; j < PAGE; j++)
			if (partial[i * PAGE + j])
				fail("untouched page %d of the partial mapping is not zero", i);
	}
	pass();
}
