/*
 * compress: memory for `rcr dump --compress` (tests/compress.rs).
 *
 *   text   24 MiB private anonymous, text-like (words of a small
 *          vocabulary, spaces and newlines): compresses well,
 *   noise  8 MiB private anonymous of xorshift output: does not compress,
 *   zeros  8 MiB written with zeros (not stored, compressed or not),
 *   shm    1 MiB shared anonymous of text (the shmem path of the dump),
 *   sparse 16 GiB MAP_NORESERVE with 4 chunks of 64 KiB of noise at spread
 *          offsets (found by PAGEMAP_SCAN; restore fills only the chunks).
 *
 * After go it regenerates every pattern and compares, checks the zeros and
 * the pages around the chunks, and prints PASS.
 *
 * usage: compress GO_FILE
 */
#include "victim.h"
#include <stdint.h>
#include <sys/mman.h>

#define TEXT (24UL << 20)
#define NOISE (8UL << 20)
#define ZEROS (8UL << 20)
#define SHM (1UL << 20)
#define SPARSE (16UL << 30)
#define CHUNK (64UL << 10)
#define NCHUNK 4

static const char *const words[] = {
	"the", "process", "memory", "page", "restore", "checkpoint", "kernel", "file", "dump", "thread",
	"signal", "mapping", "zero", "data", "linux", "image", "parasite", "frozen", "socket", "pipe",
	"and", "of", "to", "in", "is", "a", "for", "with", "that", "on",
};
#define NWORDS (sizeof(words) / sizeof(words[0]))

static void text(char *p, size_t len, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
	size_t i = 0;
	unsigned col = 0;
	while (i < len) {
		x = x * 6364136223846793005ULL + 1442695040888963407ULL;
		for (const char *w = words[(x >> 33) % NWORDS]; *w && i < len; w++)
			p[i++] = *w;
		if (i < len)
			p[i++] = ++col % 12 ? ' ' : '\n';
	}
}

static void noise(char *p, size_t len, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ULL | 1;
	for (size_t i = 0; i + 8 <= len; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(p + i, &x, 8);
	}
}

static char *map(size_t len, int flags)
{
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		fail("mmap %zu bytes: %s", len, strerror(errno));
	return m;
}

static size_t chunk_off(int i)
{
	return (SPARSE / NCHUNK) * (size_t)i + (size_t)i * 5 * PAGE + PAGE;
}

static int all_zero(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i])
			return 0;
	return 1;
}

/* Regenerates `len` bytes with `gen` and compares them with `p`. */
static void expect(const char *what, const char *p, size_t len, void (*gen)(char *, size_t, uint64_t), uint64_t seed)
{
	char *want = malloc(len);
	if (!want)
		fail("malloc %zu", len);
	gen(want, len, seed);
	for (size_t i = 0; i < len; i++)
		if (p[i] != want[i])
			fail("%s: byte %zu differs (%#x, want %#x)", what, i, (unsigned char)p[i], (unsigned char)want[i]);
	free(want);
}

int main(int argc, char **argv)
{
	need_args(argc, argv, 1, "GO_FILE");
	char *t = map(TEXT, MAP_PRIVATE);
	text(t, TEXT, 1);
	char *n = map(NOISE, MAP_PRIVATE);
	noise(n, NOISE, 2);
	char *z = map(ZEROS, MAP_PRIVATE);
	memset(z, 7, ZEROS);
	memset(z, 0, ZEROS);
	char *s = map(SHM, MAP_SHARED);
	text(s, SHM, 3);
	char *sp = map(SPARSE, MAP_PRIVATE | MAP_NORESERVE);
	for (int i = 0; i < NCHUNK; i++)
		noise(sp + chunk_off(i), CHUNK, 10 + (uint64_t)i);

	ready();
	wait_for_go(argv[1]);

	expect("text", t, TEXT, text, 1);
	expect("noise", n, NOISE, noise, 2);
	if (!all_zero(z, ZEROS))
		fail("zeros: not all zero");
	expect("shm", s, SHM, text, 3);
	for (int i = 0; i < NCHUNK; i++) {
		char what[32];
		snprintf(what, sizeof(what), "sparse chunk %d", i);
		expect(what, sp + chunk_off(i), CHUNK, noise, 10 + (uint64_t)i);
		if (!all_zero(sp + chunk_off(i) - PAGE, PAGE) || !all_zero(sp + chunk_off(i) + CHUNK, PAGE))
			fail("sparse: a page beside chunk %d is not zero", i);
	}
	pass();
}
