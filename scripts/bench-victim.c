/* Helper for scripts/bench-dump.sh, one binary with three modes:
 *
 *   bench-victim victim MIB          the process to dump: allocates MIB MiB,
 *                                    makes every page non-zero (so rcr skips
 *                                    none), prints READY, blocks in pause().
 *   bench-victim baseline MIB FILE   what the hardware gives without rcr:
 *                                    write() a populated MIB MiB buffer into
 *                                    the new FILE, read() it back into a
 *                                    populated buffer, memcpy between two
 *                                    populated buffers; prints three times
 *                                    in seconds. Only the copies are timed.
 *   bench-victim time SECS CMD...    runs CMD, prints its wall time in
 *                                    seconds (CLOCK_MONOTONIC) on stdout; the
 *                                    command's own stdout goes to stderr. Kills
 *                                    CMD and fails if it takes over SECS s.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void on_alarm(int sig) { (void)sig; }

static void die(const char *what) { perror(what); exit(1); }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* MIB MiB of private anonymous memory (4 KiB pages: no madvise, so no THP),
 * every page written with a non-zero byte that varies from page to page. */
static char *populated(size_t len) {
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("mmap");
    for (size_t off = 0; off < len; off += 4096)
        memset(p + off, 1 + (off >> 12) % 255, 4096);
    return p;
}

static void xfer(int write_it, int fd, char *buf, size_t len) {
    for (size_t done = 0; done < len;) {
        ssize_t n = write_it ? write(fd, buf + done, len - done) : read(fd, buf + done, len - done);
        if (n <= 0) die(write_it ? "write" : "read");
        done += n;
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s victim MIB | baseline MIB FILE | time SECS CMD...\n", argv[0]);
        return 2;
    }
    if (!strcmp(argv[1], "time") && argc > 3) {
        /* SIGALRM without SA_RESTART: waitpid() returns EINTR at the limit. */
        struct sigaction sa = {.sa_handler = on_alarm};
        sigaction(SIGALRM, &sa, NULL);
        double t0 = now();
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            dup2(2, 1);
            execvp(argv[3], argv + 3);
            die(argv[3]);
        }
        alarm(atoi(argv[2]));
        int st;
        if (waitpid(pid, &st, 0) < 0) {
            fprintf(stderr, "%s: timed out after %s s, killing it\n", argv[3], argv[2]);
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return 124;
        }
        printf("%.6f\n", now() - t0);
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }

    size_t len = (size_t)atol(argv[2]) << 20;
    if (!strcmp(argv[1], "victim")) {
        /* Only fds 0-2 may stay open for rcr: drop whatever we inherited. */
        close_range(3, ~0U, 0);
        populated(len);
        printf("READY\n");
        fflush(stdout);
        for (;;) pause();
    }
    if (!strcmp(argv[1], "baseline") && argc == 4) {
        char *a = populated(len), *b = populated(len);
        /* Write the file once untimed and delete it, so the timed write
         * gets just-freed ("hot") pages, like a dump into an image directory
         * deleted just before it (see MACHINE-FACTS.md, hot vs cold). */
        int fd = -1;
        for (int pass = 0; pass < 2; pass++) {
            unlink(argv[3]);
            if (fd >= 0) close(fd);
            fd = open(argv[3], O_RDWR | O_CREAT | O_EXCL, 0600);
            if (fd < 0) die(argv[3]);
            if (pass == 0) xfer(1, fd, a, len);
        }
        double t0 = now();
        xfer(1, fd, a, len); /* tmpfs write: allocates the file's pages, copies */
        double t1 = now();
        if (lseek(fd, 0, SEEK_SET) < 0) die("lseek");
        xfer(0, fd, b, len); /* tmpfs read: copies only */
        double t2 = now();
        memcpy(b, a, len);
        __asm__ volatile("" : : "r"(b) : "memory"); /* keep the copy */
        double t3 = now();
        close(fd);
        unlink(argv[3]);
        printf("%.6f %.6f %.6f\n", t1 - t0, t2 - t1, t3 - t2);
        return 0;
    }
    fprintf(stderr, "%s: bad mode %s\n", argv[0], argv[1]);
    return 2;
}
