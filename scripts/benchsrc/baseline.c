/* Baselines of scripts/bench: what the machine gives without rcr.
 *
 *   baseline write BYTES FILE   write() BYTES bytes (from a populated,
 *                               incompressible 64 MiB buffer, over and over)
 *                               sequentially into the new FILE: the page
 *                               cache, no fsync. Prints the seconds.
 *   baseline fill FILE          fills fresh anonymous memory of FILE's size
 *                               from FILE: mmap, MADV_POPULATE_WRITE, read().
 *                               Prints the seconds (mmap to the last read).
 * Times are CLOCK_MONOTONIC; only the work above is timed.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#define BUF (64u << 20)

static void die(const char *what) { perror(what); exit(1); }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int do_write(size_t bytes, const char *path) {
    uint64_t *buf = malloc(BUF), x = 88172645463325252ull;
    if (!buf) die("malloc");
    for (size_t i = 0; i < BUF / 8; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[i] = x;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) die(path);
    double t0 = now();
    for (size_t done = 0; done < bytes;) {
        size_t want = bytes - done < BUF ? bytes - done : BUF;
        ssize_t n = write(fd, (char *)buf, want);
        if (n <= 0) die("write");
        done += (size_t)n;
    }
    double t = now() - t0;
    close(fd);
    printf("%.6f\n", t);
    return 0;
}

static int do_fill(const char *path) {
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) die(path);
    size_t len = (size_t)st.st_size;
    double t0 = now();
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("mmap");
    madvise(p, len, MADV_NOHUGEPAGE);
    if (madvise(p, len, MADV_POPULATE_WRITE)) die("MADV_POPULATE_WRITE");
    for (size_t done = 0; done < len;) {
        ssize_t n = read(fd, p + done, len - done);
        if (n <= 0) die("read");
        done += (size_t)n;
    }
    double t = now() - t0;
    printf("%.6f\n", t);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "write")) return do_write(strtoull(argv[2], NULL, 0), argv[3]);
    if (argc == 3 && !strcmp(argv[1], "fill")) return do_fill(argv[2]);
    fprintf(stderr, "usage: %s write BYTES FILE | fill FILE\n", argv[0]);
    return 2;
}
