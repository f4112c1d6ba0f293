/*
 * zeropages: what the page paths must leave out, and what they must keep.
 *
 *   huge   64 GiB MAP_NORESERVE private anonymous mapping, 8 chunks of
 *          64 KiB written at spread offsets (found by PAGEMAP_SCAN; the
 *          restore must map it NORESERVE and fill only the chunks),
 *   zeros  32 MiB written with zeros (real pages full of zeros: not stored),
 *   rzero  8 MiB only read (mapped to the shared zero page: not stored),
 *   mixed  4 MiB where even pages hold data and odd pages were written
 *          with zeros,
 *   file   a private mapping of DIR/zeropages.dat (4 pages of 0xab) whose
 *          page 1 was overwritten with zeros and page 2 with data: the
 *          zeros must come back as zeros, not as the file's bytes.
 *
 * After go it checks all of that (the huge mapping around and between the
 * chunks, one page per MiB elsewhere) and prints PASS. The test checks from
 * outside that pages-PID.img holds far less than the zeros.
 *
 * usage: zeropages GO_FILE DIR
 */
#include "victim.h"
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>

#define HUGE (64UL << 30)
#define CHUNK (64UL << 10)
#define NCHUNK 8
#define ZEROS (32UL << 20)
#define RZERO (8UL << 20)
#define MIXED (4UL << 20)

static int all_zero(const char *p, size_t len)
{
	const uint64_t *w = (const uint64_t *)p;
	uint64_t acc = 0;
	for (size_t j = 0; j < len / 8; j++)
		acc |= w[j];
	return acc == 0;
}

static char *anon(size_t len, int flags)
{
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
	if (m == MAP_FAILED)
		fail("mmap %zu bytes: %s", len, strerror(errno));
	return m;
}

static size_t chunk_off(int i)
{
	return (HUGE / NCHUNK) * (size_t)i + (size_t)i * 3 * PAGE;
}

int main(int argc, char **argv)
{
	need_args(argc, argv, 2, "GO_FILE DIR");
	char *huge = anon(HUGE, MAP_NORESERVE);
	for (int i = 0; i < NCHUNK; i++)
		fill(huge + chunk_off(i), CHUNK, 10 + (unsigned)i);
	char *zeros = anon(ZEROS, 0);
	memset(zeros, 1, ZEROS);
	memset(zeros, 0, ZEROS);
	char *rzero = anon(RZERO, 0);
	volatile char sink = 0;
	for (size_t o = 0; o < RZERO; o += PAGE)
		sink += rzero[o];
	char *mixed = anon(MIXED, 0);
	for (size_t pg = 0; pg < MIXED / PAGE; pg++) {
		if (pg % 2)
			memset(mixed + pg * PAGE, 0, PAGE);
		else
			fill(mixed + pg * PAGE, PAGE, 50 + (unsigned)pg);
	}
	char path[4096];
	snprintf(path, sizeof(path), "%s/zeropages.dat", argv[2]);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	char ab[PAGE];
	memset(ab, 0xab, PAGE);
	for (int i = 0; i < 4; i++)
		if (fd < 0 || write(fd, ab, PAGE) != (ssize_t)PAGE)
			fail("writing %s: %s", path, strerror(errno));
	char *file = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (file == MAP_FAILED)
		fail("mmap %s: %s", path, strerror(errno));
	close(fd);
	memset(file + PAGE, 0, PAGE);
	fill(file + 2 * PAGE, PAGE, 77);

	ready();
	wait_for_go(argv[1]);

	for (int i = 0; i < NCHUNK; i++) {
		long bad = check(huge + chunk_off(i), CHUNK, 10 + (unsigned)i);
		if (bad >= 0)
			fail("huge chunk %d: byte %ld differs", i, bad);
		if (!all_zero(huge + chunk_off(i) - PAGE, PAGE) || !all_zero(huge + chunk_off(i) + CHUNK, PAGE))
			fail("huge: a page beside chunk %d is not zero", i);
	}
	for (size_t o = 1UL << 20; o < HUGE; o += 1UL << 30)
		if (!all_zero(huge + o, PAGE))
			fail("huge: untouched page at +%#zx is not zero", o);
	if (!all_zero(zeros, ZEROS))
		fail("zeros: not all zero");
	if (!all_zero(rzero, RZERO))
		fail("rzero: not all zero");
	for (size_t pg = 0; pg < MIXED / PAGE; pg++) {
		if (pg % 2 ? !all_zero(mixed + pg * PAGE, PAGE) : check(mixed + pg * PAGE, PAGE, 50 + (unsigned)pg) >= 0)
			fail("mixed: page %zu is wrong", pg);
	}
	for (int i = 0; i < 4; i++) {
		int ok = i == 1 ? all_zero(file + PAGE, PAGE) : i == 2 ? check(file + 2 * PAGE, PAGE, 77) < 0 : (unsigned char)file[i * PAGE] == 0xab && (unsigned char)file[i * PAGE + PAGE - 1] == 0xab;
		if (!ok)
			fail("file: page %d is wrong", i);
	}
	pass();
}
