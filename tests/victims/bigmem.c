/*
 * bigmem: 96 MiB of private anonymous memory survives dump/restore; enough
 * pages that the restorer reads them with a second thread (rcr's page
 * reader, for processes with at least 16 MiB of pages).
 *
 * Memory: 64 MiB read-write; 24 MiB filled then made read-only; an 8 MiB
 * mapping with every other MiB touched (several page runs, holes between
 * them). Every byte has the position pattern of victim.h, and every page
 * also starts with its own address xor a seed, so a page read into the
 * wrong place (by a multiple of the pattern's period) is caught too.
 * One more thread (comm "bigmem-t") sleeps until main sets a flag after
 * go, so the process has a saved thread besides the reader rcr adds and
 * removes.
 *
 * After go: main checks every byte, the untouched MiBs read as zero,
 * stops and joins the thread; PASS if all is well.
 *
 * usage: bigmem GO_FILE
 */
#define _GNU_SOURCE
#include "victim.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>

#define MiB (1UL << 20)
#define STAMP 0x5a5a1234abcd0000UL

static atomic_int stop;

static void *sleeper(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop))
		sleep_10ms();
	return NULL;
}

/* Fills [p, p+len) with the position pattern, then stamps each page. */
static void fill_stamped(char *p, size_t len, unsigned seed)
{
	fill(p, len, seed);
	for (size_t off = 0; off < len; off += PAGE)
		*(uint64_t *)(p + off) = (uintptr_t)(p + off) ^ STAMP;
}

static void check_stamped(const char *what, char *p, size_t len, unsigned seed)
{
	for (size_t off = 0; off < len; off += PAGE) {
		if (*(uint64_t *)(p + off) != ((uintptr_t)(p + off) ^ STAMP))
			fail("%s: page at %p does not carry its own address", what, (void *)(p + off));
		for (size_t i = 8; i < PAGE; i++)
			if ((unsigned char)p[off + i] != pattern(seed, off + i))
				fail("%s: byte %zu of the page at %p differs", what, i, (void *)(p + off));
	}
}

static char *map(size_t len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		fail("mmap %zu: %s", len, strerror(errno));
	return p;
}

int main(int argc, char **argv)
{
	pthread_t t;

	need_args(argc, argv, 1, "GO_FILE");
	char *rw = map(64 * MiB), *ro = map(24 * MiB), *holes = map(8 * MiB);
	fill_stamped(rw, 64 * MiB, 1);
	fill_stamped(ro, 24 * MiB, 2);
	for (size_t m = 0; m < 8; m += 2)
		fill_stamped(holes + m * MiB, MiB, 3 + (unsigned)m);
	if (mprotect(ro, 24 * MiB, PROT_READ))
		fail("mprotect: %s", strerror(errno));
	if (pthread_create(&t, NULL, sleeper, NULL))
		fail("pthread_create");
	pthread_setname_np(t, "bigmem-t");

	ready();
	wait_for_go(argv[1]);

	check_stamped("rw", rw, 64 * MiB, 1);
	check_stamped("ro", ro, 24 * MiB, 2);
	for (size_t m = 0; m < 8; m++) {
		char *mib = holes + m * MiB;
		if (m % 2 == 0) {
			check_stamped("holes", mib, MiB, 3 + (unsigned)m);
			continue;
		}
		for (size_t i = 0; i < MiB; i++)
			if (mib[i])
				fail("holes: byte %zu of untouched MiB %zu is not zero", i, m);
	}
	atomic_store(&stop, 1);
	if (pthread_join(t, NULL))
		fail("pthread_join");
	pass();
}
