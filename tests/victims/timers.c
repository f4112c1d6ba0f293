/*
 * timers: POSIX timers (timer_create) keep their ids, clocks, sigevents,
 * time left and intervals across dump/restore (and dump -R); signals
 * pending for a non-leader thread keep their payloads and order.
 *
 * Threads: main and "tgt" (created first, so timers can target it).
 * Timers, created in this order (ids are whatever the kernel gives):
 *   mono  CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+1, value MONO_VAL (64-bit),
 *         5 ms then every 20 ms; the handler checks si_code, si_timerid,
 *         si_value
 *   gap   created then deleted: the ids have a hole, which must stay one
 *   real  CLOCK_REALTIME, SIGEV_SIGNAL SIGRTMIN+2, one-shot in 1000 s
 *   none  CLOCK_MONOTONIC, SIGEV_NONE, one-shot in 600 s (polled)
 *   tid   CLOCK_MONOTONIC, SIGEV_THREAD_ID to tgt, SIGRTMIN+4, TID_VAL,
 *         every 25 ms; the handler checks it runs on tgt
 *   cpu   CLOCK_PROCESS_CPUTIME_ID, SIGEV_SIGNAL SIGRTMIN+3, in 100 s of CPU
 *   blk   CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+5 (blocked everywhere),
 *         every 50 ms: its signal is pending (the timer's own) at dump
 *   thr   glibc SIGEV_THREAD (SIGEV_THREAD_ID to glibc's helper thread),
 *         one-shot in 500 s
 * Main also sigqueues SIGRTMIN+6 three times to tgt (pthread_sigqueue,
 * payloads 1, 2, 3), which blocks it: three queued per-thread signals.
 * Before READY: mono and tid ticked, blk's signal is pending; main sleeps
 * 200 ms, then records timer_gettime of real, none and cpu and the time.
 * Prints "IDS mono gap real none tid cpu blk" for the harness (thr's
 * timer_t is glibc's, not the kernel's id).
 *
 * After go:
 *   - timer_gettime works on every saved id; on the deleted one it fails
 *     with EINVAL;
 *   - real, none, cpu: time left at most what was left at READY, and not
 *     less than that minus the time since (not reset, not lost); mono,
 *     tid, blk: their intervals, time left within one interval;
 *   - mono and tid tick on (5 more each in 300 ms), right payload, tid on
 *     tgt only; real and cpu never fired;
 *   - blk's signal is pending once (sigtimedwait gets it with its
 *     si_timerid and value, then nothing more at once), and the timer
 *     ticks again once its signal was taken;
 *   - thr: re-armed to 10 ms, glibc runs its function with its value;
 *   - tgt finds SIGRTMIN+6 pending; unblocked, it runs 3 times, payloads
 *     1, 2, 3 in order, SI_QUEUE, from this pid.
 * Every problem is a FAIL line; PASS (exit 0) if there was none.
 *
 * With "thread-cpu", main also creates a CLOCK_THREAD_CPUTIME_ID timer:
 * rcr cannot tell which thread's clock it counts and must refuse the dump.
 *
 * usage: timers GO_FILE [thread-cpu]
 */
#define _GNU_SOURCE
#include "victim.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>

#define MONO_VAL 0x1122334455667788ULL
#define TID_VAL 0xbeefULL
#define BLK_VAL 0xb10cULL
#define THR_VAL 0x7e7eULL
#define MONO_NS 20000000L
#define TID_NS 25000000L
#define BLK_NS 50000000L
#define REAL_S 1000
#define NONE_S 600
#define CPU_S 100
#define THR_S 500
#define NQ 3

#define SIG_MONO (SIGRTMIN + 1)
#define SIG_REAL (SIGRTMIN + 2)
#define SIG_CPU (SIGRTMIN + 3)
#define SIG_TID (SIGRTMIN + 4)
#define SIG_BLK (SIGRTMIN + 5)
#define SIG_Q (SIGRTMIN + 6)

enum { T_MONO, T_GAP, T_REAL, T_NONE, T_TID, T_CPU, T_BLK, T_THR, NT };
static const char *names[NT] = { "mono", "gap", "real", "none", "tid", "cpu", "blk", "thr" };
static timer_t tm[NT];
static int ids[NT];

static volatile pid_t tgt_tid;
static atomic_int mono_ticks, mono_bad, tid_ticks, tid_bad, real_fired, cpu_fired, thr_runs, thr_bad;
static atomic_int go_flag, tgt_done, tgt_failed;
static volatile int q_vals[8], q_codes[8], q_pids[8], q_count;
static int failures;

#define bad(...)                                   \
	do {                                       \
		printf("FAIL: " __VA_ARGS__);      \
		printf("\n");                      \
		fflush(stdout);                    \
		failures++;                        \
	} while (0)

static pid_t gettid_(void)
{
	return (pid_t)syscall(SYS_gettid);
}

static double now(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double secs(struct timespec ts)
{
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_mono(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	if (si->si_code != SI_TIMER || si->si_timerid != ids[T_MONO] || (uint64_t)si->si_value.sival_ptr != MONO_VAL)
		mono_bad++;
	mono_ticks++;
}

static void on_tid(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	if (si->si_code != SI_TIMER || si->si_timerid != ids[T_TID] || (uint64_t)si->si_value.sival_ptr != TID_VAL ||
	    gettid_() != tgt_tid)
		tid_bad++;
	tid_ticks++;
}

static void on_real(int sig)
{
	(void)sig;
	real_fired++;
}

static void on_cpu(int sig)
{
	(void)sig;
	cpu_fired++;
}

static void on_q(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	int n = q_count;
	if (n < 8) {
		q_vals[n] = si->si_value.sival_int;
		q_codes[n] = si->si_code;
		q_pids[n] = si->si_pid;
	}
	q_count = n + 1;
}

static void on_thr(union sigval v)
{
	if ((uint64_t)v.sival_ptr != THR_VAL)
		thr_bad++;
	thr_runs++;
}

static void handle(int sig, void (*h)(int, siginfo_t *, void *), void (*plain)(int))
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	if (h) {
		sa.sa_sigaction = h;
		sa.sa_flags = SA_SIGINFO | SA_RESTART;
	} else {
		sa.sa_handler = plain;
		sa.sa_flags = SA_RESTART;
	}
	if (sigaction(sig, &sa, NULL) != 0)
		fail("sigaction(%d): %s", sig, strerror(errno));
}

static void tgt_check(void)
{
	sigset_t set;
	if (sigpending(&set) != 0 || sigismember(&set, SIG_Q) != 1) {
		say("FAIL: tgt: SIGRTMIN+6 is not pending");
		tgt_failed = 1;
	}
	sigemptyset(&set);
	sigaddset(&set, SIG_Q);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	if (q_count != NQ) {
		say("FAIL: tgt: SIGRTMIN+6 delivered %d times, want %d", q_count, NQ);
		tgt_failed = 1;
	}
	for (int i = 0; i < NQ && i < q_count; i++) {
		if (q_vals[i] != i + 1 || q_codes[i] != SI_QUEUE || q_pids[i] != getpid()) {
			say("FAIL: tgt: SIGRTMIN+6 #%d: value %d code %d pid %d, want %d %d %d", i, q_vals[i], q_codes[i],
			    q_pids[i], i + 1, SI_QUEUE, getpid());
			tgt_failed = 1;
		}
	}
}

static void *tgt_main(void *arg)
{
	(void)arg;
	tgt_tid = gettid_();
	while (!go_flag) {
		struct timespec ts = { 0, 5 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	tgt_check();
	tgt_done = 1;
	return NULL;
}

static void make(int i, clockid_t clock, struct sigevent *sev, long first_s, long first_ns, long period_ns)
{
	if (timer_create(clock, sev, &tm[i]) != 0)
		fail("timer_create(%s): %s", names[i], strerror(errno));
	ids[i] = (int)(intptr_t)tm[i]; /* the kernel's id, except for SIGEV_THREAD */
	struct itimerspec its = { { 0, period_ns }, { first_s, first_ns } };
	if (timer_settime(tm[i], 0, &its, NULL) != 0)
		fail("timer_settime(%s): %s", names[i], strerror(errno));
}

static struct sigevent sig_event(int signo, uint64_t val)
{
	struct sigevent sev;
	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = SIGEV_SIGNAL;
	sev.sigev_signo = signo;
	sev.sigev_value.sival_ptr = (void *)val;
	return sev;
}

static void create_timers(void)
{
	struct sigevent sev = sig_event(SIG_MONO, MONO_VAL);
	make(T_MONO, CLOCK_MONOTONIC, &sev, 0, 5000000, MONO_NS);
	sev = sig_event(SIGALRM, 0);
	make(T_GAP, CLOCK_MONOTONIC, &sev, 0, 0, 0);
	if (timer_delete(tm[T_GAP]) != 0)
		fail("timer_delete(gap): %s", strerror(errno));
	sev = sig_event(SIG_REAL, 1);
	make(T_REAL, CLOCK_REALTIME, &sev, REAL_S, 0, 0);
	sev = sig_event(0, 2);
	sev.sigev_notify = SIGEV_NONE;
	make(T_NONE, CLOCK_MONOTONIC, &sev, NONE_S, 0, 0);
	sev = sig_event(SIG_TID, TID_VAL);
	sev.sigev_notify = SIGEV_THREAD_ID;
	sev._sigev_un._tid = tgt_tid;
	make(T_TID, CLOCK_MONOTONIC, &sev, 0, TID_NS, TID_NS);
	sev = sig_event(SIG_CPU, 3);
	make(T_CPU, CLOCK_PROCESS_CPUTIME_ID, &sev, CPU_S, 0, 0);
	sev = sig_event(SIG_BLK, BLK_VAL);
	make(T_BLK, CLOCK_MONOTONIC, &sev, 0, 1000000, BLK_NS);
	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = SIGEV_THREAD;
	sev.sigev_notify_function = on_thr;
	sev.sigev_value.sival_ptr = (void *)THR_VAL;
	make(T_THR, CLOCK_MONOTONIC, &sev, THR_S, 0, 0);
}

static int pending(int sig)
{
	sigset_t set;
	return sigpending(&set) == 0 && sigismember(&set, sig) == 1;
}

static void settle_before_ready(void)
{
	for (int i = 0; mono_ticks < 3 || tid_ticks < 3 || !pending(SIG_BLK); i++) {
		if (i == 500)
			fail("timers did not fire before READY: mono %d tid %d blk pending %d", mono_ticks, tid_ticks,
			     pending(SIG_BLK));
		sleep_10ms();
	}
	for (int i = 0; i < 20; i++)
		sleep_10ms();
}

static struct itimerspec get(int i)
{
	struct itimerspec its;
	memset(&its, 0, sizeof(its));
	if (timer_gettime(tm[i], &its) != 0)
		bad("timer_gettime(%s, id %d) after go: %s", names[i], ids[i], strerror(errno));
	return its;
}

/* Time left on one-shot timer i: at most `before`, at least `before - gone - slack`. */
static void check_left(int i, double before, double gone, double slack)
{
	struct itimerspec its = get(i);
	double left = secs(its.it_value);
	if (its.it_interval.tv_sec || its.it_interval.tv_nsec)
		bad("%s: interval %.9f, want 0", names[i], secs(its.it_interval));
	if (left > before + 0.001 || left < before - gone - slack)
		bad("%s: %.6f s left, want between %.6f and %.6f (it had %.6f at READY, %.3f s ago)", names[i], left,
		    before - gone - slack, before, before, gone);
}

static void check_periodic(int i, long period_ns)
{
	struct itimerspec its = get(i);
	long ns = its.it_value.tv_sec * 1000000000L + its.it_value.tv_nsec;
	if (its.it_interval.tv_sec != 0 || its.it_interval.tv_nsec != period_ns)
		bad("%s: interval %.9f, want %.9f", names[i], secs(its.it_interval), period_ns / 1e9);
	if (ns <= 0 || ns > period_ns)
		bad("%s: %ld ns left, want within (0, %ld]", names[i], ns, period_ns);
}

static void check_ids(void)
{
	for (int i = 0; i < NT; i++)
		if (i != T_GAP)
			get(i);
	struct itimerspec its;
	errno = 0;
	if (timer_gettime(tm[T_GAP], &its) == 0 || errno != EINVAL)
		bad("timer_gettime on the deleted id %d: %s, want EINVAL", ids[T_GAP], strerror(errno));
}

static void check_ticking(void)
{
	int m0 = mono_ticks, t0 = tid_ticks;
	for (int i = 0; i < 100 && (mono_ticks < m0 + 5 || tid_ticks < t0 + 5); i++)
		sleep_10ms();
	if (mono_ticks < m0 + 5 || tid_ticks < t0 + 5)
		bad("timers stopped: mono %d -> %d, tid %d -> %d in 1 s", m0, mono_ticks, t0, tid_ticks);
	if (mono_bad || tid_bad)
		bad("wrong siginfo: mono %d bad of %d, tid %d bad of %d (si_code, si_timerid, value or thread)", mono_bad,
		    mono_ticks, tid_bad, tid_ticks);
	if (real_fired || cpu_fired)
		bad("far timers fired: real %d, cpu %d", real_fired, cpu_fired);
}

/* sigtimedwait for SIG_BLK up to ms milliseconds, through the EINTRs of
 * the handled timer signals. */
static int wait_blk(siginfo_t *si, long ms)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIG_BLK);
	double end = now(CLOCK_MONOTONIC) + ms / 1e3;
	for (;;) {
		double left = end - now(CLOCK_MONOTONIC);
		if (left < 0)
			left = 0;
		struct timespec ts = { (time_t)left, (long)((left - (time_t)left) * 1e9) };
		int r = sigtimedwait(&set, si, &ts);
		if (r >= 0 || errno != EINTR || left == 0)
			return r;
	}
}

static void check_blk(void)
{
	siginfo_t si;
	if (wait_blk(&si, 0) != SIG_BLK) {
		bad("blk: its signal is not pending after go");
		return;
	}
	if (si.si_code != SI_TIMER || si.si_timerid != ids[T_BLK] || (uint64_t)si.si_value.sival_ptr != BLK_VAL)
		bad("blk: siginfo code %d timerid %d value %#llx, want %d %d %#llx", si.si_code, si.si_timerid,
		    (unsigned long long)(uint64_t)si.si_value.sival_ptr, SI_TIMER, ids[T_BLK], BLK_VAL);
	if (wait_blk(&si, 0) == SIG_BLK)
		bad("blk: a second signal was pending at once (the pending one should be the timer's own)");
	if (wait_blk(&si, 1000) != SIG_BLK)
		bad("blk: the timer did not fire again within 1 s once its signal was taken");
	check_periodic(T_BLK, BLK_NS);
}

static void check_thr(void)
{
	struct itimerspec its = { { 0, 0 }, { 0, 10000000 } };
	if (timer_settime(tm[T_THR], 0, &its, NULL) != 0) {
		bad("thr: timer_settime: %s", strerror(errno));
		return;
	}
	for (int i = 0; i < 100 && thr_runs == 0; i++)
		sleep_10ms();
	if (thr_runs != 1 || thr_bad)
		bad("thr: glibc ran the SIGEV_THREAD function %d times (%d with a wrong value), want once", thr_runs,
		    thr_bad);
}

int main(int argc, char **argv)
{
	need_args(argc, argv, 1, "GO_FILE [thread-cpu]");
	int thread_cpu = argc > 2 && strcmp(argv[2], "thread-cpu") == 0;
	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIG_BLK);
	sigaddset(&block, SIG_Q);
	pthread_sigmask(SIG_BLOCK, &block, NULL);
	handle(SIG_MONO, on_mono, NULL);
	handle(SIG_TID, on_tid, NULL);
	handle(SIG_Q, on_q, NULL);
	handle(SIG_REAL, NULL, on_real);
	handle(SIG_CPU, NULL, on_cpu);
	pthread_t th;
	if (pthread_create(&th, NULL, tgt_main, NULL) != 0)
		fail("pthread_create");
	pthread_setname_np(th, "tgt");
	while (!tgt_tid)
		sleep_10ms();
	create_timers();
	for (int i = 1; i <= NQ; i++)
		if (pthread_sigqueue(th, SIG_Q, (union sigval){ .sival_int = i }) != 0)
			fail("pthread_sigqueue: %s", strerror(errno));
	if (thread_cpu) {
		timer_t t;
		struct sigevent sev = sig_event(SIG_CPU, 4);
		if (timer_create(CLOCK_THREAD_CPUTIME_ID, &sev, &t) != 0)
			fail("timer_create(CLOCK_THREAD_CPUTIME_ID): %s", strerror(errno));
	}
	settle_before_ready();
	double real0 = secs(get(T_REAL).it_value), none0 = secs(get(T_NONE).it_value), cpu0 = secs(get(T_CPU).it_value);
	double t0 = now(CLOCK_MONOTONIC);
	say("IDS %d %d %d %d %d %d %d", ids[0], ids[1], ids[2], ids[3], ids[4], ids[5], ids[6]);
	ready();
	wait_for_go(argv[1]);

	double gone = now(CLOCK_MONOTONIC) - t0;
	check_ids();
	check_left(T_REAL, real0, gone, 0.05);
	check_left(T_NONE, none0, gone, 0.05);
	check_left(T_CPU, cpu0, gone, 0.05);
	if (real0 > REAL_S - 0.1 || none0 > NONE_S - 0.1)
		bad("the victim did not wait before READY (real %.3f none %.3f left)", real0, none0);
	check_periodic(T_MONO, MONO_NS);
	check_periodic(T_TID, TID_NS);
	check_ticking();
	check_blk();
	check_thr();
	go_flag = 1;
	for (int i = 0; i < 500 && !tgt_done; i++)
		sleep_10ms();
	if (!tgt_done)
		bad("tgt did not finish its checks");
	else if (tgt_failed)
		failures++;
	if (timer_getoverrun(tm[T_MONO]) < 0)
		bad("timer_getoverrun(mono): %s", strerror(errno));
	if (failures)
		return 1;
	pass();
}
