/* Victim of scripts/bench for the thread and process cases (built as `tree`), three modes:
 *
 *   tree-victim procs N [--startup-only]
 *       A tree of N processes, two levels deep: the root forks B = floor(
 *       sqrt(N-1)) branch children, and the other N-1-B processes are leaves
 *       spread over the branches (N=100: 9 branches of 10 leaves). The root
 *       calls setsid() first, so the tree is its own session and process
 *       group. Every process writes 64 KiB of private memory with a pattern
 *       of its own, then blocks in pause(). The root prints READY once
 *       every process is set up and has closed the pipe it reported on (so
 *       the tree holds only fds 0-2, all inherited from the root).
 *   tree-victim threads N [--startup-only]
 *       One process of N threads: the main thread and N-1 threads, each
 *       with a 256 KiB stack (pthread_attr_setstacksize), 4 KiB of TLS and
 *       16 KiB of its stack written with a pattern of its own. The threads
 *       block in FUTEX_WAIT, the main thread in pause(); READY once
 *       every thread is set up.
 *
 *   After READY, SIGUSR1 to the root checks the whole tree, as a restore
 *   must have left it: every task checks its memory pattern(s), its pid or
 *   tid, and (processes) its parent's pid; a process waits for its own
 *   children with waitpid() and reports through its exit status, a thread
 *   through a slot in memory and then pthread_join(). A process repeats
 *   SIGUSR1 to its children until they exit (one that arrives just before
 *   pause() is lost); so should the sender of the first one. The root prints
 *   "PASS ..." and exits 0, or "FAIL ..." and exits 1 (also if the tree
 *   does not answer within 20 s). Only the root writes to stdout/stderr.
 *
 *   --startup-only: the baseline. Build the same tree, print the seconds
 *   from the start of main() to the moment it would print READY
 *   (CLOCK_MONOTONIC), then run the check at once and exit as above.
 *
 *   tree-victim time SECS CMD...
 *       runs CMD, prints its wall time in seconds (CLOCK_MONOTONIC) on
 *       stdout; the command's own stdout goes to stderr. Kills CMD and
 *       fails if it takes over SECS s. (Not used by scripts/bench.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROC_MEM (64 << 10)   /* private memory per process */
#define TLS_MEM (4 << 10)     /* TLS per thread */
#define STACK_MEM (16 << 10)  /* written stack per thread */
#define THREAD_STACK (256 << 10)
#define CHECK_SECS 20

/* Exit codes / result slots of a task's check. */
enum { OK = 0, BAD_MEM = 10, BAD_PID = 11, BAD_PPID = 12, BAD_TLS = 13, BAD_STACK = 14,
       BAD_CHILD = 15, BAD_WAIT = 16, NOT_DONE = 17, BAD_SID = 18,
       LEAF = 20 /* a branch's exit code for its leaf's code c: LEAF + c */ };
static const char *why(int c) {
    static char buf[80];
    if (c >= LEAF + BAD_MEM && c < 2 * LEAF + BAD_MEM) {
        snprintf(buf, sizeof buf, "a leaf below it: %s", why(c - LEAF));
        return buf;
    }
    switch (c) {
    case OK: return "ok";
    case BAD_MEM: return "memory pattern";
    case BAD_PID: return "pid/tid";
    case BAD_PPID: return "parent pid";
    case BAD_TLS: return "TLS pattern";
    case BAD_STACK: return "stack pattern";
    case BAD_CHILD: return "a child failed";
    case BAD_WAIT: return "waitpid";
    case NOT_DONE: return "no answer";
    case BAD_SID: return "session or process group";
    default: return "killed or unknown";
    }
}

static void die(const char *what) { perror(what); exit(1); }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static unsigned char pat(unsigned seed, size_t i) { return (unsigned char)(seed * 131u + i * 7u + (i >> 9) + 1u); }
static void fill(unsigned char *p, size_t len, unsigned seed) {
    for (size_t i = 0; i < len; i++) p[i] = pat(seed, i);
}
static int same(const volatile unsigned char *p, size_t len, unsigned seed) {
    for (size_t i = 0; i < len; i++)
        if (p[i] != pat(seed, i)) return 0;
    return 1;
}

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }
static void on_alarm(int sig) {
    (void)sig;
    static const char m[] = "FAIL: the tree did not answer the check within 20 s\n";
    if (write(1, m, sizeof m - 1) < 0) {}
    _exit(1);
}

/* Blocks until SIGUSR1 arrives. A signal that lands between the test and
 * pause() is lost, so the senders repeat it until they get an answer. */
static void wait_usr1(void) {
    while (!got_usr1) pause();
}

/* Sends SIGUSR1 to the children in kids[0..n) and reaps them, repeating the
 * signal every 100 ms to those still running. codes[i]: exit code, or
 * BAD_WAIT if waitpid failed. */
static void check_children(const pid_t *kids, int n, int *codes) {
    int left = n;
    for (int i = 0; i < n; i++) codes[i] = -1;
    for (int round = 0; left > 0; round++) {
        if (round % 10 == 0)
            for (int i = 0; i < n; i++)
                if (codes[i] < 0) kill(kids[i], SIGUSR1);
        for (int i = 0; i < n; i++) {
            if (codes[i] >= 0) continue;
            int st;
            pid_t r = waitpid(kids[i], &st, WNOHANG);
            if (r == 0) continue;
            codes[i] = r != kids[i] ? BAD_WAIT : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            left--;
        }
        if (left > 0) usleep(10000);
    }
}

static unsigned char *private_mem(unsigned seed) {
    unsigned char *p = mmap(NULL, PROC_MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("mmap");
    fill(p, PROC_MEM, seed);
    return p;
}

/* ---------------------------------------------------------------- procs */

static int ready_w = -1; /* write end of the READY pipe, closed before blocking */

static void report_ready(void) {
    char c = 1;
    if (write(ready_w, &c, 1) != 1) _exit(2);
    close(ready_w);
}

/* One process of the tree below the root: index idx (seed), its children
 * (leaves, for a branch) already forked. Never returns. */
static void child_main(unsigned idx, pid_t *kids, int nkids, pid_t parent) {
    pid_t me = getpid();
    unsigned char *mem = private_mem(idx);
    report_ready();
    wait_usr1();
    int code = OK;
    if (!same(mem, PROC_MEM, idx)) code = BAD_MEM;
    else if (getpid() != me || syscall(SYS_gettid) != me) code = BAD_PID;
    else if (getppid() != parent) code = BAD_PPID;
    int codes[nkids + 1];
    check_children(kids, nkids, codes);
    for (int i = 0; i < nkids && code == OK; i++)
        if (codes[i] != OK) code = codes[i] >= BAD_MEM && codes[i] < BAD_MEM + LEAF ? LEAF + codes[i] : BAD_CHILD;
    _exit(code);
}

static pid_t fork_or_die(void) {
    pid_t p = fork();
    if (p < 0) die("fork");
    return p;
}

static int run_procs(int n, int startup_only, double t0) {
    if (setsid() < 0) die("setsid");
    pid_t root = getpid();
    int nb = n > 1 ? (int)sqrt((double)(n - 1)) : 0;
    int nleaves = n - 1 - nb;
    int fds[2];
    if (pipe(fds) < 0) die("pipe");
    ready_w = fds[1];
    pid_t *branches = calloc(nb + 1, sizeof *branches);
    unsigned idx = 1;
    for (int b = 0; b < nb; b++) {
        int mine = nleaves / nb + (b < nleaves % nb);
        unsigned bidx = idx++;
        unsigned first_leaf = idx;
        idx += mine;
        pid_t bp = fork_or_die();
        if (bp == 0) {
            close(fds[0]);
            free(branches);
            pid_t self = getpid();
            pid_t *leaves = calloc(mine + 1, sizeof *leaves);
            for (int l = 0; l < mine; l++) {
                pid_t lp = fork_or_die();
                if (lp == 0) {
                    free(leaves);
                    child_main(first_leaf + l, NULL, 0, self);
                }
                leaves[l] = lp;
            }
            child_main(bidx, leaves, mine, root);
        }
        branches[b] = bp;
    }
    unsigned char *mem = private_mem(0);
    close(fds[1]);
    /* EOF once every process has written its byte and closed its end. */
    int got = 0;
    for (;;) {
        char buf[256];
        ssize_t r = read(fds[0], buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die("read ready pipe");
        if (r == 0) break;
        got += r;
    }
    close(fds[0]);
    if (got != n - 1) { fprintf(stderr, "only %d of %d children came up\n", got, n - 1); return 1; }
    if (startup_only) {
        printf("%.6f\n", now() - t0);
        got_usr1 = 1;
    } else {
        printf("READY procs %d (%d branches, %d leaves) root %d\n", n, nb, nleaves, root);
    }
    fflush(stdout);
    wait_usr1();

    alarm(CHECK_SECS);
    int code = OK, bad = 0, first_bad = OK;
    pid_t first_bad_pid = 0;
    if (!same(mem, PROC_MEM, 0)) code = BAD_MEM;
    else if (getpid() != root || syscall(SYS_gettid) != root) code = BAD_PID;
    else if (getsid(0) != root || getpgrp() != root) code = BAD_SID;
    int codes[nb + 1];
    check_children(branches, nb, codes);
    for (int b = 0; b < nb; b++)
        if (codes[b] != OK && bad++ == 0) { first_bad = codes[b]; first_bad_pid = branches[b]; }
    if (code != OK) {
        printf("FAIL: root %d: %s\n", root, why(code));
        return 1;
    }
    if (bad) {
        printf("FAIL: %d of %d branches report failures (first: pid %d: %s)\n", bad, nb, first_bad_pid,
               why(first_bad));
        return 1;
    }
    printf("PASS procs %d: every process has its pid, parent and memory\n", n);
    return 0;
}

/* -------------------------------------------------------------- threads */

static atomic_int ready_count, done_count, go;
static int *results;
static __thread unsigned char tls[TLS_MEM];

static long futex(atomic_int *addr, int op, int val, const struct timespec *ts) {
    return syscall(SYS_futex, addr, op, val, ts, NULL, 0);
}

static void *thread_main(void *arg) {
    unsigned idx = (unsigned)(uintptr_t)arg;
    pid_t tid = syscall(SYS_gettid);
    volatile unsigned char stack[STACK_MEM];
    fill(tls, TLS_MEM, idx);
    fill((unsigned char *)stack, STACK_MEM, idx + 7777);
    atomic_fetch_add(&ready_count, 1);
    futex(&ready_count, FUTEX_WAKE_PRIVATE, 1, NULL);
    while (!atomic_load(&go)) futex(&go, FUTEX_WAIT_PRIVATE, 0, NULL);
    int code = OK;
    if (!same(tls, TLS_MEM, idx)) code = BAD_TLS;
    else if (!same(stack, STACK_MEM, idx + 7777)) code = BAD_STACK;
    else if (syscall(SYS_gettid) != tid) code = BAD_PID;
    results[idx] = code;
    atomic_fetch_add(&done_count, 1);
    futex(&done_count, FUTEX_WAKE_PRIVATE, 1, NULL);
    return NULL;
}

/* Waits until *c == want or the deadline; 0 on time. */
static int wait_count(atomic_int *c, int want, double deadline) {
    for (int v; (v = atomic_load(c)) != want;) {
        double left = deadline - now();
        if (left <= 0) return -1;
        struct timespec ts = {(time_t)left, (long)((left - (time_t)left) * 1e9)};
        futex(c, FUTEX_WAIT_PRIVATE, v, &ts);
    }
    return 0;
}

static int run_threads(int n, int startup_only, double t0) {
    pid_t pid = getpid();
    int nt = n - 1;
    pthread_t *th = calloc(nt + 1, sizeof *th);
    results = calloc(nt + 1, sizeof *results);
    for (int i = 0; i < nt; i++) results[i] = NOT_DONE;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, THREAD_STACK);
    /* SIGUSR1 only for the main thread: blocked in every other one. */
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    for (int i = 0; i < nt; i++) {
        int e = pthread_create(&th[i], &attr, thread_main, (void *)(uintptr_t)i);
        if (e) { errno = e; die("pthread_create"); }
    }
    pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
    unsigned char *mem = private_mem(0);
    if (wait_count(&ready_count, nt, now() + 60)) { fprintf(stderr, "threads did not come up\n"); return 1; }
    if (startup_only) {
        printf("%.6f\n", now() - t0);
        got_usr1 = 1;
    } else {
        printf("READY threads %d pid %d\n", n, pid);
    }
    fflush(stdout);
    wait_usr1();

    alarm(CHECK_SECS);
    double deadline = now() + CHECK_SECS - 2;
    atomic_store(&go, 1);
    futex(&go, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
    int code = OK;
    if (!same(mem, PROC_MEM, 0)) code = BAD_MEM;
    else if (getpid() != pid || syscall(SYS_gettid) != pid) code = BAD_PID;
    int late = wait_count(&done_count, nt, deadline);
    int bad = 0, first_bad = OK, first_idx = -1;
    for (int i = 0; i < nt; i++)
        if (results[i] != OK && bad++ == 0) { first_bad = results[i]; first_idx = i; }
    if (code != OK) { printf("FAIL: main thread: %s\n", why(code)); return 1; }
    if (late || bad) {
        printf("FAIL: %d of %d threads report failures (first: thread %d: %s)\n", bad, nt, first_idx,
               why(first_bad));
        return 1;
    }
    /* Joining needs each exiting thread's clear_child_tid futex wake. */
    for (int i = 0; i < nt; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 5;
        int e = pthread_timedjoin_np(th[i], NULL, &ts);
        if (e) { printf("FAIL: pthread_join of thread %d: %s\n", i, strerror(e)); return 1; }
    }
    printf("PASS threads %d: every thread has its tid, TLS and stack\n", n);
    return 0;
}

int main(int argc, char **argv) {
    double t0 = now();
    if (argc >= 4 && !strcmp(argv[1], "time")) {
        /* SIGALRM without SA_RESTART: waitpid() returns EINTR at the limit. */
        struct sigaction sa = {.sa_handler = on_usr1};
        sigaction(SIGALRM, &sa, NULL);
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
    int n = argc >= 3 ? atoi(argv[2]) : 0;
    int startup_only = argc == 4 && !strcmp(argv[3], "--startup-only");
    if (n < 1 || n > 10000 || (argc == 4 && !startup_only) || argc > 4 ||
        (strcmp(argv[1], "procs") && strcmp(argv[1], "threads"))) {
        fprintf(stderr, "usage: %s procs|threads N [--startup-only] | time SECS CMD...\n", argv[0]);
        return 2;
    }
    /* Only fds 0-2 may stay open for rcr: drop whatever we inherited. */
    close_range(3, ~0U, 0);
    struct sigaction sa = {.sa_handler = on_usr1}, sal = {.sa_handler = on_alarm};
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGALRM, &sal, NULL);
    return !strcmp(argv[1], "procs") ? run_procs(n, startup_only, t0) : run_threads(n, startup_only, t0);
}
