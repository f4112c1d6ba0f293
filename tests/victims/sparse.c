/*
 * sparse: a 256 MiB anonymous mapping with only 5 touched pages.
 *
 * After restore the 5 pages must hold their data and every other page must
 * read as zero. The harness also checks from outside that pages-PID.img
 * stays small: untouched (and zero) pages must not be stored.
 *
 * usage: sparse GO_FILE
 */
#include "victim.h"
#include <stdint.h>
#include <sys/mman.h>

#define SIZE (256UL << 20)

int main(int argc, char **argv)
{
	/* Page indexes: first, last and three scattered in between. */
	static const size_t touched[] = { 0, 1, 9000, 37 * 256 + 5, SIZE / PAGE - 1 };
	const size_t ntouched = sizeof(touched) / sizeof(touched[0]);

	need_args(argc, argv, 1, "GO_FILE");

	char *m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m == MAP_FAILED)
		fail("mmap 256 MiB: %s", strerror(errno));
	for (size_t i = 0; i < ntouched; i++)
		fill(m + touched[i] * PAGE, PAGE, 100 + (unsigned)i);

	ready();
	wait_for_go(argv[1]);

	for (size_t i = 0; i < ntouched; i++) {
		long bad = check(m + touched[i] * PAGE, PAGE, 100 + (unsigned)i);
		if (bad >= 0)
			fail("touched page %zu: byte %ld differs", touched[i], bad);
	}
	for (size_t pg = 0, t = 0; pg < SIZE / PAGE; pg++) {
		if (t < ntouched && touched[t] == pg) {
			t++;
			continue;
		}
		const uint64_t *w = (const uint64_t *)(m + pg * PAGE);
		uint64_t acc = 0;
		for (size_t j = 0; j < PAGE / 8; j++)
			acc |= w[j];
		if (acc)
			fail("untouched page %zu is not zero", pg);
	}
	pass();
}
