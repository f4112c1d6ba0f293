/*
 * threads: a multi-threaded process survives dump/restore (and dump -R),
 * every thread in its own state.
 *
 * Threads (index: name):
 *   0..15  workNN    hand 8 work items around a ring queue (mutex + two
 *                    condition variables; 16 workers for 8 items, so about
 *                    half of them wait on the condvar at any moment), each
 *                    counting in __thread counters what it did, napping
 *                    200 us per item; work keeps flowing during the dump
 *   16     futexw    blocked in a raw FUTEX_WAIT on a word main sets and
 *                    wakes after go
 *   17     sleeper   loops over nanosleep(1 s) until main sets a flag
 *   18     reader    blocked in read() on a pipe main writes to after go
 *                    (it read a first line, written before READY, already)
 *   19     main      (comm "threads")
 * Each thread sets, before READY: its name, its own blocked mask (every
 * thread's differs from every other's), its own sigaltstack (size per
 * thread, SS_AUTODISARM on odd indexes), TLS values, and records its tid,
 * TLS address, fs base, pthread_self(), robust list head, clear_child_tid
 * address (PR_GET_TID_ADDRESS) and rseq registration (glibc's).
 *
 * Main prints READY once every worker did some work and the three blocked
 * threads sit in their syscalls (futex, clock_nanosleep, read, checked in
 * /proc/self/task/TID/syscall), with the lines
 *   TIDS main w0 .. w15 futexw sleeper reader
 *   SPECIAL futex=TID sleeper=TID reader=TID
 * for the harness.
 *
 * After go, every thread checks its own recorded state is unchanged (tid,
 * TLS values and address, fs base, pthread_self, mask, altstack, name,
 * robust list, clear_child_tid, rseq still registered at the same area);
 * every worker must do 20 more items (the hand-off goes on); futexw must
 * have returned from FUTEX_WAIT only once woken (an EINTR is tolerated and
 * reported, a 0 return before the wake is a failure); sleeper must wake up
 * from its nanosleep; reader must read exactly "after-go\n". Then main
 * joins every thread (with a timeout: a lost clear_child_tid hangs
 * pthread_join) and checks the work items: none lost or duplicated, total
 * hops and sums equal to what the workers counted in their TLS.
 * Every problem is a FAIL line; PASS (exit 0) if there was none.
 *
 * usage: threads GO_FILE
 */
#define _GNU_SOURCE
#include "victim.h"
#include <asm/prctl.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/rseq.h>
#include <sys/syscall.h>

#ifndef SS_AUTODISARM
#define SS_AUTODISARM (1U << 31) /* the kernel's; glibc 2.36 does not define it */
#endif

#define NWORK 16
#define FUTEX_T NWORK
#define SLEEP_T (NWORK + 1)
#define READ_T (NWORK + 2)
#define MAIN_T (NWORK + 3)
#define NTHREADS (NWORK + 4)

#define NITEMS 8
#define QCAP 16
#define ITEM_MAGIC 0x17e3c0deu
#define TLS_MAGIC 0x7e57ab1e5eedULL
#define MORE_ITEMS 20 /* per worker, after go */
#define MSG1 "hello\n"
#define MSG2 "after-go\n"

struct item {
	uint32_t magic, id;
	uint64_t hops, sum;
};

static struct {
	pthread_mutex_t mu;
	pthread_cond_t not_empty, not_full;
	struct item buf[QCAP];
	int head, count, stop;
} q = { .mu = PTHREAD_MUTEX_INITIALIZER, .not_empty = PTHREAD_COND_INITIALIZER, .not_full = PTHREAD_COND_INITIALIZER };

struct rec {
	pthread_t pt;
	char name[16];
	pid_t tid;
	void *tls_addr;
	unsigned long fsbase;
	void *robust_head;
	size_t robust_len;
	void *tid_addr;
	sigset_t mask;
	stack_t ss;
	long rseq_len; /* the length glibc registered with (EBUSY), 0 if none found */
	_Atomic int started, blocking, verified;
	_Atomic unsigned long done;
	unsigned long final_done, final_sum; /* written by a worker when it stops */
};
static struct rec rec[NTHREADS];

static __thread uint64_t tls_magic;
static __thread int tls_idx = -1;
static __thread unsigned long tls_done, tls_sum;

static _Atomic int failures, go_flag, sleep_stop;
static _Atomic uint32_t futex_word;
static int rpipe[2];


#define bad(fmt, ...)                                                                          \
	do {                                                                                   \
		atomic_fetch_add(&failures, 1);                                                \
		say("FAIL: [%s tid %d] " fmt, tls_idx >= 0 ? rec[tls_idx].name : "?",          \
		    (int)syscall(SYS_gettid), ##__VA_ARGS__);                                  \
	} while (0)

static uint64_t magic_for(int idx)
{
	return TLS_MAGIC ^ ((uint64_t)idx * 0x100010001ULL);
}

/* Blocked signals, different for every thread. */
static void mask_for(int idx, sigset_t *m)
{
	sigemptyset(m);
	if (idx < NWORK) {
		sigaddset(m, SIGUSR2);
		sigaddset(m, SIGRTMIN + 1 + idx);
	} else if (idx < MAIN_T) {
		sigaddset(m, SIGWINCH);
		sigaddset(m, SIGRTMIN + 1 + idx);
	} else {
		sigaddset(m, SIGUSR1);
		sigaddset(m, SIGRTMIN + 24);
	}
}

static void nap_us(long us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
	nanosleep(&ts, NULL);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct rseq *rseq_area(void)
{
	return (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
}

/* Registering again what is registered says EBUSY; what is not registered
 * gets registered (returns 0). */
static long rseq_again(long len)
{
	return syscall(SYS_rseq, rseq_area(), (uint32_t)len, 0, RSEQ_SIG);
}

static void setup_self(int idx, const char *name)
{
	struct rec *r = &rec[idx];
	size_t ss_size = 32768 + idx * 4096;
	stack_t ss = { .ss_sp = malloc(ss_size), .ss_size = ss_size, .ss_flags = (idx & 1) ? (int)SS_AUTODISARM : 0 };

	tls_idx = idx;
	tls_magic = magic_for(idx);
	r->pt = pthread_self();
	r->tid = syscall(SYS_gettid);
	if (name && pthread_setname_np(pthread_self(), name))
		bad("pthread_setname_np");
	if (prctl(PR_GET_NAME, r->name))
		bad("PR_GET_NAME: %s", strerror(errno));
	mask_for(idx, &r->mask);
	if (pthread_sigmask(SIG_SETMASK, &r->mask, NULL))
		bad("pthread_sigmask");
	if (!ss.ss_sp || sigaltstack(&ss, NULL) || sigaltstack(NULL, &r->ss))
		bad("sigaltstack: %s", strerror(errno));
	r->tls_addr = &tls_magic;
	if (syscall(SYS_arch_prctl, ARCH_GET_FS, &r->fsbase))
		bad("ARCH_GET_FS: %s", strerror(errno));
	if (syscall(SYS_get_robust_list, 0, &r->robust_head, &r->robust_len))
		bad("get_robust_list: %s", strerror(errno));
	if (prctl(PR_GET_TID_ADDRESS, &r->tid_addr))
		bad("PR_GET_TID_ADDRESS: %s", strerror(errno));
	r->rseq_len = 0;
	if (__rseq_size) {
		long lens[] = { __rseq_size, 32 };
		for (unsigned i = 0; i < sizeof(lens) / sizeof(lens[0]) && !r->rseq_len; i++)
			if (rseq_again(lens[i]) < 0 && errno == EBUSY)
				r->rseq_len = lens[i];
	}
	atomic_store(&r->started, 1);
}

static int mask_eq(const sigset_t *a, const sigset_t *b)
{
	for (int s = 1; s <= 64; s++)
		if (sigismember(a, s) != sigismember(b, s))
			return 0;
	return 1;
}

static unsigned long long mask_bits(const sigset_t *m)
{
	unsigned long long v = 0;
	for (int s = 1; s <= 64; s++)
		if (sigismember(m, s) == 1)
			v |= 1ULL << (s - 1);
	return v;
}

/* Checks the calling thread's state against what setup_self recorded. */
static void verify_self(int idx)
{
	struct rec *r = &rec[idx];
	pid_t tid = syscall(SYS_gettid);
	unsigned long fsbase = 0;
	void *head = NULL, *tid_addr = NULL;
	size_t len = 0;
	char name[16] = { 0 };
	sigset_t cur;
	stack_t ss;

	if (tls_idx != idx || tls_magic != magic_for(idx))
		bad("TLS values changed: idx %d (want %d), magic %#llx (want %#llx)", tls_idx, idx,
		    (unsigned long long)tls_magic, (unsigned long long)magic_for(idx));
	if ((void *)&tls_magic != r->tls_addr)
		bad("TLS address %p, was %p", (void *)&tls_magic, r->tls_addr);
	if (tid != r->tid)
		bad("gettid() is %d, was %d", tid, r->tid);
	if (syscall(SYS_arch_prctl, ARCH_GET_FS, &fsbase) || fsbase != r->fsbase)
		bad("fs base %#lx, was %#lx", fsbase, r->fsbase);
	if (!pthread_equal(pthread_self(), r->pt))
		bad("pthread_self() %#lx, was %#lx", (unsigned long)pthread_self(), (unsigned long)r->pt);
	if (pthread_sigmask(SIG_BLOCK, NULL, &cur))
		bad("pthread_sigmask(NULL)");
	else if (!mask_eq(&cur, &r->mask))
		bad("blocked mask %#llx, was %#llx", mask_bits(&cur), mask_bits(&r->mask));
	if (sigaltstack(NULL, &ss))
		bad("sigaltstack(NULL): %s", strerror(errno));
	else if (ss.ss_sp != r->ss.ss_sp || ss.ss_size != r->ss.ss_size || ss.ss_flags != r->ss.ss_flags)
		bad("sigaltstack sp %p size %zu flags %#x, was sp %p size %zu flags %#x", ss.ss_sp, ss.ss_size,
		    ss.ss_flags, r->ss.ss_sp, r->ss.ss_size, r->ss.ss_flags);
	if (prctl(PR_GET_NAME, name) || strcmp(name, r->name))
		bad("name %.16s, was %s", name, r->name);
	if (syscall(SYS_get_robust_list, 0, &head, &len) || head != r->robust_head || len != r->robust_len)
		bad("robust list %p len %zu, was %p len %zu", head, len, r->robust_head, r->robust_len);
	if (prctl(PR_GET_TID_ADDRESS, &tid_addr) || tid_addr != r->tid_addr)
		bad("clear_child_tid %p, was %p", tid_addr, r->tid_addr);
	if (r->rseq_len) {
		long rc = rseq_again(r->rseq_len);
		if (rc == 0)
			bad("rseq was not registered any more (registered it again at %p)", (void *)rseq_area());
		else if (errno != EBUSY)
			bad("rseq registration changed: rseq(%p, %ld) says %s", (void *)rseq_area(), r->rseq_len,
			    strerror(errno));
		else if ((int32_t)rseq_area()->cpu_id < 0)
			bad("rseq cpu_id is %d", (int)rseq_area()->cpu_id);
	}
	atomic_store(&r->verified, 1);
}

static void *worker(void *arg)
{
	int idx = (int)(intptr_t)arg;
	struct rec *r = &rec[idx];
	char name[16];
	int verified = 0;

	snprintf(name, sizeof(name), "work%02d", idx);
	setup_self(idx, name);
	for (;;) {
		struct item it;

		pthread_mutex_lock(&q.mu);
		while (q.count == 0 && !q.stop)
			pthread_cond_wait(&q.not_empty, &q.mu);
		if (q.stop) {
			pthread_mutex_unlock(&q.mu);
			break;
		}
		it = q.buf[q.head];
		q.head = (q.head + 1) % QCAP;
		q.count--;
		pthread_cond_signal(&q.not_full);
		pthread_mutex_unlock(&q.mu);

		if (it.magic != ITEM_MAGIC || it.id >= NITEMS)
			bad("bad work item: magic %#x id %u", it.magic, it.id);
		it.hops++;
		it.sum += idx + 1;
		tls_done++;
		tls_sum += idx + 1;

		pthread_mutex_lock(&q.mu);
		while (q.count == QCAP)
			pthread_cond_wait(&q.not_full, &q.mu);
		q.buf[(q.head + q.count) % QCAP] = it;
		q.count++;
		pthread_cond_signal(&q.not_empty);
		pthread_mutex_unlock(&q.mu);

		atomic_store(&r->done, tls_done);
		if (!verified && atomic_load(&go_flag)) {
			verified = 1;
			if (tls_done != atomic_load(&r->done))
				bad("TLS counter %lu, shadow %lu", tls_done, atomic_load(&r->done));
			verify_self(idx);
		}
		nap_us(200);
	}
	r->final_done = tls_done;
	r->final_sum = tls_sum;
	return (void *)(intptr_t)(idx + 1000);
}

static void *futex_thread(void *arg)
{
	long early = 0;

	(void)arg;
	setup_self(FUTEX_T, "futexw");
	atomic_store(&rec[FUTEX_T].blocking, 1);
	while (atomic_load(&futex_word) == 0) {
		long rc = syscall(SYS_futex, &futex_word, FUTEX_WAIT, 0, NULL, NULL, 0);
		if (atomic_load(&futex_word) != 0)
			break;
		if (rc == 0)
			bad("FUTEX_WAIT returned 0 (woken) while nobody woke it");
		else if (errno == EINTR)
			early++;
		else if (errno != EAGAIN)
			bad("FUTEX_WAIT: %s", strerror(errno));
	}
	if (!atomic_load(&go_flag))
		bad("the futex word changed before go");
	if (early)
		say("futexw: FUTEX_WAIT returned EINTR %ld time(s) before the wake", early);
	verify_self(FUTEX_T);
	return (void *)(intptr_t)(FUTEX_T + 1000);
}

static void *sleep_thread(void *arg)
{
	long naps = 0, eintr = 0;

	(void)arg;
	setup_self(SLEEP_T, "sleeper");
	atomic_store(&rec[SLEEP_T].blocking, 1);
	while (!atomic_load(&sleep_stop)) {
		struct timespec ts = { 1, 0 }, rem = { 0, 0 };
		if (nanosleep(&ts, &rem)) {
			if (errno != EINTR)
				bad("nanosleep: %s", strerror(errno));
			else if (rem.tv_sec > 1 || (rem.tv_sec == 1 && rem.tv_nsec > 0) || rem.tv_nsec < 0)
				bad("nanosleep EINTR with remaining time %ld.%09ld > the 1 s asked", (long)rem.tv_sec,
				    rem.tv_nsec);
			eintr++;
		}
		naps++;
	}
	if (!atomic_load(&go_flag))
		bad("sleeper stopped before go");
	say("sleeper: %ld naps, %ld ended by EINTR", naps, eintr);
	verify_self(SLEEP_T);
	return (void *)(intptr_t)(SLEEP_T + 1000);
}

/* Reads one line (up to '\n') from the pipe, one byte at a time. */
static int read_line(char *buf, size_t size, long *eintr)
{
	size_t n = 0;

	while (n + 1 < size) {
		ssize_t r = read(rpipe[0], buf + n, 1);
		if (r < 0 && errno == EINTR) {
			(*eintr)++;
			continue;
		}
		if (r <= 0)
			break;
		if (buf[n++] == '\n')
			break;
	}
	buf[n] = 0;
	return (int)n;
}

static void *read_thread(void *arg)
{
	char buf[64];
	long eintr = 0;

	(void)arg;
	setup_self(READ_T, "reader");
	read_line(buf, sizeof(buf), &eintr);
	if (strcmp(buf, MSG1))
		bad("first line from the pipe is \"%s\", not \"hello\"", buf);
	atomic_store(&rec[READ_T].blocking, 1);
	read_line(buf, sizeof(buf), &eintr);
	if (!atomic_load(&go_flag))
		bad("read() returned before go (got \"%s\")", buf);
	if (strcmp(buf, MSG2))
		bad("second line from the pipe is \"%s\", not \"after-go\"", buf);
	if (eintr)
		say("reader: read() returned EINTR %ld time(s)", eintr);
	verify_self(READ_T);
	return (void *)(intptr_t)(READ_T + 1000);
}

/* The syscall number a thread is blocked in, from /proc/self/task/TID/syscall
 * (-1 if running, -2 if unreadable). */
static long task_syscall(pid_t tid)
{
	char path[64], buf[256];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", tid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -2;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -2;
	buf[n] = 0;
	if (!strncmp(buf, "running", 7))
		return -1;
	return strtol(buf, NULL, 10);
}

static void join_one(int idx, double timeout)
{
	struct timespec abs;
	void *ret = NULL;
	int rc;

	clock_gettime(CLOCK_REALTIME, &abs);
	abs.tv_sec += (time_t)timeout;
	rc = pthread_timedjoin_np(rec[idx].pt, &ret, &abs);
	if (rc == ETIMEDOUT) {
		bad("thread %s (tid %d) not joined within %.0f s (still running, or its clear_child_tid is lost)",
		    rec[idx].name, rec[idx].tid, timeout);
		fflush(stdout);
		exit(1);
	}
	if (rc)
		bad("pthread_timedjoin_np(%s): %s", rec[idx].name, strerror(rc));
	else if (ret != (void *)(intptr_t)(idx + 1000))
		bad("thread %s returned %p, not %d", rec[idx].name, ret, idx + 1000);
}

int main(int argc, char **argv)
{
	static const char *const special_names[] = { "futex", "sleeper", "reader" };
	static const long special_sys[] = { SYS_futex, SYS_clock_nanosleep, SYS_read };
	void *(*const special_fn[])(void *) = { futex_thread, sleep_thread, read_thread };
	unsigned long snap[NWORK];
	pthread_attr_t attr;
	double deadline;
	char line[512];
	int n, ok;

	need_args(argc, argv, 1, "GO_FILE");
	setup_self(MAIN_T, NULL);
	if (pipe(rpipe))
		fail("pipe: %s", strerror(errno));
	for (int i = 0; i < NITEMS; i++)
		q.buf[i] = (struct item){ .magic = ITEM_MAGIC, .id = i };
	q.count = NITEMS;

	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	for (int i = 0; i < NWORK; i++)
		if (pthread_create(&rec[i].pt, &attr, worker, (void *)(intptr_t)i))
			fail("pthread_create worker %d", i);
	for (int i = 0; i < 3; i++)
		if (pthread_create(&rec[FUTEX_T + i].pt, NULL, special_fn[i], NULL))
			fail("pthread_create %s", special_names[i]);
	if (write(rpipe[1], MSG1, strlen(MSG1)) != (ssize_t)strlen(MSG1))
		fail("write to the pipe: %s", strerror(errno));

	/* Steady state: everyone started, every worker worked, the three
	 * blocked threads are in their syscalls. */
	deadline = now() + 20;
	for (;;) {
		ok = 1;
		for (int i = 0; i < MAIN_T; i++)
			if (!atomic_load(&rec[i].started) || (i < NWORK && atomic_load(&rec[i].done) < 20) ||
			    (i >= NWORK && !atomic_load(&rec[i].blocking)))
				ok = 0;
		for (int i = 0; ok && i < 3; i++) {
			long s = task_syscall(rec[FUTEX_T + i].tid);
			if (s != -2 && s != special_sys[i])
				ok = 0;
		}
		if (ok)
			break;
		if (now() > deadline)
			fail("threads did not reach their steady state within 20 s");
		sleep_10ms();
	}
	if (atomic_load(&failures))
		fail("setup failed");

	n = snprintf(line, sizeof(line), "TIDS");
	n += snprintf(line + n, sizeof(line) - n, " %d", rec[MAIN_T].tid);
	for (int i = 0; i < MAIN_T; i++)
		n += snprintf(line + n, sizeof(line) - n, " %d", rec[i].tid);
	printf("%s\n", line);
	printf("SPECIAL futex=%d sleeper=%d reader=%d\n", rec[FUTEX_T].tid, rec[SLEEP_T].tid, rec[READ_T].tid);
	printf("rseq: %s (glibc __rseq_size %u)\n", rec[MAIN_T].rseq_len ? "checked" : "not checked", __rseq_size);
	ready();

	wait_for_go(argv[1]);
	atomic_store(&go_flag, 1);
	verify_self(MAIN_T);

	/* The hand-off goes on: every worker does MORE_ITEMS more items and
	 * checks itself. */
	for (int i = 0; i < NWORK; i++)
		snap[i] = atomic_load(&rec[i].done);
	deadline = now() + 20;
	for (;;) {
		ok = 1;
		for (int i = 0; i < NWORK; i++)
			if (atomic_load(&rec[i].done) < snap[i] + MORE_ITEMS || !atomic_load(&rec[i].verified))
				ok = 0;
		if (ok)
			break;
		if (now() > deadline) {
			for (int i = 0; i < NWORK; i++)
				if (atomic_load(&rec[i].done) < snap[i] + MORE_ITEMS || !atomic_load(&rec[i].verified))
					bad("worker %s (tid %d) did %lu items after go (want %d), verified %d",
					    rec[i].name, rec[i].tid, atomic_load(&rec[i].done) - snap[i], MORE_ITEMS,
					    atomic_load(&rec[i].verified));
			break;
		}
		sleep_10ms();
	}

	/* Wake the three blocked threads, one after the other. */
	atomic_store(&futex_word, 1);
	syscall(SYS_futex, &futex_word, FUTEX_WAKE, 1, NULL, NULL, 0);
	join_one(FUTEX_T, 5);
	atomic_store(&sleep_stop, 1);
	join_one(SLEEP_T, 5);
	if (write(rpipe[1], MSG2, strlen(MSG2)) != (ssize_t)strlen(MSG2))
		bad("write to the pipe: %s", strerror(errno));
	join_one(READ_T, 5);

	pthread_mutex_lock(&q.mu);
	q.stop = 1;
	pthread_cond_broadcast(&q.not_empty);
	pthread_mutex_unlock(&q.mu);
	for (int i = 0; i < NWORK; i++)
		join_one(i, 5);

	/* Every item is there once; the hops and sums match what the workers
	 * counted in their TLS. */
	{
		unsigned long hops = 0, sum = 0, done = 0, wsum = 0;
		int seen[NITEMS] = { 0 };

		if (q.count != NITEMS)
			bad("%d work items in the queue, want %d", q.count, NITEMS);
		for (int i = 0; i < q.count && i < QCAP; i++) {
			struct item *it = &q.buf[(q.head + i) % QCAP];
			if (it->magic != ITEM_MAGIC || it->id >= NITEMS || seen[it->id]++)
				bad("work item %d: magic %#x id %u (lost or duplicated)", i, it->magic, it->id);
			hops += it->hops;
			sum += it->sum;
		}
		for (int i = 0; i < NWORK; i++) {
			done += rec[i].final_done;
			wsum += rec[i].final_sum;
		}
		if (hops != done || sum != wsum)
			bad("items show %lu hops (sum %lu), workers counted %lu (sum %lu)", hops, sum, done, wsum);
		printf("items: %lu hops\n", hops);
	}
	verify_self(MAIN_T);
	fflush(stdout);
	if (atomic_load(&failures))
		exit(1);
	pass();
}
