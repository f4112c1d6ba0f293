/* Victims of scripts/bench (one binary, one mode per kind of state):
 *
 *   victim dense MIB          MIB MiB of private anonymous memory (4 KiB pages),
 *                             every 8 bytes a different pseudo-random word
 *                             (incompressible, position dependent)
 *   victim sparse GIB MIB     a GIB GiB mapping (MAP_NORESERVE) with MIB MiB
 *                             touched, 1 MiB every GIB*1024/MIB MiB, as above
 *   victim zero MIB           MIB MiB written with zeros (touched, real pages)
 *   victim text MIB           MIB MiB of text-like memory (words of a small
 *                             vocabulary, each page its own sequence):
 *                             compressible, for dump --compress
 *   victim vmas N             N one-page mappings that cannot merge, each
 *                             written with its index
 *   victim fds N              N fds of its own binary, opened one by one,
 *                             fd i at file offset i
 *   victim tiny               nothing beyond a C program
 *
 * The victim prints "READY" and blocks in pause(). SIGUSR1 makes it check
 * everything it set up, print "PASS ..." or "FAIL ..." and exit 0 or 1. The
 * driver repeats SIGUSR1 until the victim exits (one that lands between
 * the test and pause() is lost). stdout should be a file opened O_APPEND.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static void die(const char *what) { perror(what); exit(1); }

/* splitmix64 of the word's offset: cheap, and no two pages alike. */
static inline uint64_t word(uint64_t off) {
    uint64_t z = off + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill(uint64_t *p, size_t len, uint64_t base) {
    for (size_t i = 0; i < len / 8; i++) p[i] = word(base + i * 8);
}

/* Offset of the first bad byte run, or -1. */
static long check(const uint64_t *p, size_t len, uint64_t base) {
    for (size_t i = 0; i < len / 8; i++)
        if (p[i] != word(base + i * 8)) return (long)(i * 8);
    return -1;
}

/* Text-like bytes for page number `pg`: words picked by an LCG seeded
 * with the page number, separated by spaces and newlines. */
static void text_page(char *p, uint64_t pg) {
    static const char *const words[] = {"the", "process", "memory", "page", "restore", "checkpoint", "kernel",
        "file", "dump", "thread", "signal", "mapping", "zero", "data", "linux", "image", "and", "of", "to",
        "in", "is", "a", "for", "with", "that", "on", "frozen", "socket", "pipe", "parasite"};
    uint64_t x = pg * 0x9e3779b97f4a7c15ull + 1;
    size_t i = 0;
    unsigned col = 0;
    while (i < 4096) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        for (const char *w = words[(x >> 33) % (sizeof words / sizeof *words)]; *w && i < 4096; w++) p[i++] = *w;
        if (i < 4096) p[i++] = ++col % 12 ? ' ' : '\n';
    }
}

static char *anon(size_t len, int flags) {
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
    if (p == MAP_FAILED) die("mmap");
    madvise(p, len, MADV_NOHUGEPAGE);
    return p;
}

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

static char *mode, *mem;
static size_t n, len, step, chunk;
static char **maps;
static int *fds;

static void setup(const char *self) {
    if (!strcmp(mode, "dense")) {
        len = n << 20;
        mem = anon(len, 0);
        fill((uint64_t *)mem, len, 0);
    } else if (!strcmp(mode, "sparse")) {
        len = n << 30;
        chunk = 1 << 20;
        mem = anon(len, MAP_NORESERVE);
        for (size_t off = 0; off < len; off += step) fill((uint64_t *)(mem + off), chunk, off);
    } else if (!strcmp(mode, "zero")) {
        len = n << 20;
        mem = anon(len, 0);
        for (size_t off = 0; off < len; off += 4096) memset(mem + off, 0, 4096);
    } else if (!strcmp(mode, "text")) {
        len = n << 20;
        mem = anon(len, 0);
        for (size_t off = 0; off < len; off += 4096) text_page(mem + off, off / 4096);
    } else if (!strcmp(mode, "vmas")) {
        maps = calloc(n, sizeof *maps);
        for (size_t i = 0; i < n; i++) {
            /* Alternate the protection: neighbours never merge. */
            maps[i] = mmap(NULL, 4096, PROT_READ | PROT_WRITE | (i % 2 ? PROT_EXEC : 0), MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (maps[i] == MAP_FAILED) die("mmap (vmas)");
            *(size_t *)maps[i] = i;
        }
    } else if (!strcmp(mode, "fds")) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < n + 64) {
            rl.rlim_cur = n + 64 > rl.rlim_max ? rl.rlim_max : n + 64;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
        fds = calloc(n, sizeof *fds);
        for (size_t i = 0; i < n; i++) {
            fds[i] = open(self, O_RDONLY | O_CLOEXEC);
            if (fds[i] < 0 || lseek(fds[i], (off_t)i, SEEK_SET) != (off_t)i) die("open/lseek (fds)");
        }
    } else if (strcmp(mode, "tiny")) {
        fprintf(stderr, "unknown mode %s\n", mode);
        exit(2);
    }
}

/* Empty string when all is well, else what is wrong. */
static const char *verify(void) {
    static char why[160];
    long bad;
    if (!strcmp(mode, "dense") && (bad = check((uint64_t *)mem, len, 0)) >= 0)
        snprintf(why, sizeof why, "memory differs at offset %ld", bad);
    else if (!strcmp(mode, "sparse")) {
        for (size_t off = 0; off < len; off += step) {
            if ((bad = check((uint64_t *)(mem + off), chunk, off)) >= 0) {
                snprintf(why, sizeof why, "touched memory differs at offset %zu", off + bad);
                return why;
            }
            if (off + step < len && mem[off + chunk] != 0) {
                snprintf(why, sizeof why, "untouched memory not zero at offset %zu", off + chunk);
                return why;
            }
        }
    } else if (!strcmp(mode, "text")) {
        char want[4096];
        for (size_t off = 0; off < len; off += 4096) {
            text_page(want, off / 4096);
            if (memcmp(want, mem + off, 4096)) {
                snprintf(why, sizeof why, "text memory differs in the page at offset %zu", off);
                return why;
            }
        }
    } else if (!strcmp(mode, "zero")) {
        for (size_t off = 0; off < len; off += 8)
            if (*(uint64_t *)(mem + off)) {
                snprintf(why, sizeof why, "zero memory not zero at offset %zu", off);
                return why;
            }
    } else if (!strcmp(mode, "vmas")) {
        for (size_t i = 0; i < n; i++)
            if (*(size_t *)maps[i] != i) {
                snprintf(why, sizeof why, "mapping %zu at %p holds %zu", i, (void *)maps[i], *(size_t *)maps[i]);
                return why;
            }
    } else if (!strcmp(mode, "fds")) {
        for (size_t i = 0; i < n; i++)
            if (lseek(fds[i], 0, SEEK_CUR) != (off_t)i) {
                snprintf(why, sizeof why, "fd %d: offset is not %zu", fds[i], i);
                return why;
            }
    }
    return why;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s dense MIB | sparse GIB MIB | zero MIB | text MIB | vmas N | fds N | tiny\n", argv[0]);
        return 2;
    }
    mode = argv[1];
    n = argc > 2 ? strtoull(argv[2], NULL, 0) : 0;
    if (!strcmp(mode, "sparse")) {
        size_t touched = argc > 3 ? strtoull(argv[3], NULL, 0) : 1024;
        step = (n << 30) / touched;  /* one MiB per step */
    }
    signal(SIGUSR1, on_usr1);
    setup("/proc/self/exe");
    printf("READY %s %zu pid %d\n", mode, n, getpid());
    fflush(stdout);
    while (!go) pause();
    const char *why = verify();
    printf(*why ? "FAIL %s %zu: %s\n" : "PASS %s %zu%s\n", mode, n, why);
    fflush(stdout);
    return *why ? 1 : 0;
}
