/*
 * sigstate: signal handlers, masks, flags, the sigaltstack, the three
 * itimers, the umask and pending signals (with their siginfo) survive
 * dump/restore (and a dump -R that leaves the process running).
 *
 * Set up before READY:
 *   SIGALRM      handler, SA_RESTART; ITIMER_REAL 5 ms then every 20 ms
 *   SIGVTALRM    handler, SA_RESTART; ITIMER_VIRTUAL every 11 ms
 *   SIGPROF      handler, SA_SIGINFO|SA_RESTART; ITIMER_PROF every 13 ms
 *   SIGUSR1      handler, SA_SIGINFO|SA_ONSTACK (runs on the altstack)
 *   SIGHUP       handler, SA_RESETHAND (back to SIG_DFL after one delivery)
 *   SIGURG       handler, SA_NODEFER (re-raises itself once: nests)
 *   SIGWINCH     handler, sa_mask {SIGINT, SIGTTOU, SIGRTMIN+7}
 *   SIGRTMIN+3   handler, SA_SIGINFO|SA_RESTART (checked with sigqueue)
 *   SIGUSR2      handler, SA_SIGINFO; blocked and raised: pending
 *   SIGRTMIN+5   handler, SA_SIGINFO, sa_mask {SIGTERM}; blocked and
 *                sigqueued twice (payloads RT5_VAL1 then RT5_VAL2): two
 *                queued instances pending
 *   SIGPIPE, SIGRTMIN+10   SIG_IGN
 *   blocked: SIGUSR2, SIGRTMIN+5, SIGTTIN, SIGRTMAX-2
 *   a 64 KiB sigaltstack, umask 0073
 * The victim waits until each itimer has fired at least once (burning a
 * little CPU for the virtual and prof ones), then records every kernel
 * sigaction (raw rt_sigaction, all 64 signals), the blocked mask, the
 * altstack and the timer intervals, and prints READY.
 *
 * After go it checks, in this order, reporting every problem as a FAIL
 * line (it exits 1 at the end if there was any):
 *   - all 64 raw kernel sigactions (handler, flags incl. SA_RESTORER,
 *     restorer, mask), the blocked mask, the altstack and the umask are
 *     exactly as recorded; the glibc view (sigaction(sig, NULL, &old)) of
 *     each action it set has the handler, flags (minus SA_RESTORER) and
 *     sa_mask members it set;
 *   - getitimer: all three armed, with the intervals set, next expiry
 *     within the interval (plus one tick for the CPU timers: see
 *     CPU_TIMER_SLACK_US);
 *   - raising/sigqueueing each handled signal runs the right handler with
 *     the right siginfo, on the altstack for SIGUSR1, nested for SIGURG,
 *     with the sa_mask blocked for SIGWINCH; SIGHUP's action is SIG_DFL
 *     after one delivery; SIGPIPE and SIGRTMIN+10 are ignored;
 *   - SIGUSR2 and SIGRTMIN+5 are pending (sigpending); unblocking them
 *     delivers SIGUSR2 once (SI_TKILL, from this pid) and SIGRTMIN+5 twice
 *     (SI_QUEUE, payloads in order);
 *   - the ITIMER_REAL handler counts at least REAL_MIN_TICKS ticks in
 *     500 ms; busy-looping, the virtual and prof timers fire again.
 *
 * A signal whose action did not survive is not raised (it would kill the
 * victim); its FAIL line says why.
 *
 * With "fast", ITIMER_REAL fires every FAST_INTERVAL_US (1 ms) instead: a
 * SIGALRM is then almost surely pending (and unblocked) at dump time, and
 * the re-armed timer fires again while rcr restore still holds the process.
 *
 * With "alrm-blocked", SIGALRM is blocked last before READY, once one is
 * pending: the kernel re-arms a periodic ITIMER_REAL only when its SIGALRM
 * is dequeued, so until then getitimer() reports the timer with value 0
 * (but its interval). After go (and the raw-state check) the victim checks
 * SIGALRM is pending, unblocks it, checks its handler ran, and then checks
 * the timer as in the other modes: it must be armed again and tick.
 *
 * usage: sigstate GO_FILE [fast|alrm-blocked]
 */
#define _GNU_SOURCE
#include "victim.h"
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>

#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000 /* the kernel's; glibc adds it, its headers hide it */
#endif

#define ALT_SIZE (64 * 1024)
#define REAL_INTERVAL_US 20000
#define REAL_FIRST_US 5000
#define FAST_INTERVAL_US 1000 /* "fast" mode */
#define VIRT_INTERVAL_US 11000
#define PROF_INTERVAL_US 13000
#define REAL_MIN_TICKS 5
#define CPU_TIMER_TICKS 3 /* virtual/prof expirations wanted after go */
#define RT3_VAL 0x5eed
#define RT5_VAL1 1111
#define RT5_VAL2 2222
#define UMASK 0073

#define RT3 (SIGRTMIN + 3)
#define RT5 (SIGRTMIN + 5)
#define RT7 (SIGRTMIN + 7)
#define RT10 (SIGRTMIN + 10)
#define RTMAX2 (SIGRTMAX - 2)

static long real_interval_us = REAL_INTERVAL_US;
static int alrm_blocked_mode;
static char altstack[ALT_SIZE] __attribute__((aligned(64)));

/* ---- handlers: async-signal-safe, they only record ---- */

static volatile long real_ticks, vt_ticks, prof_ticks, prof_bad_signo;

static void on_alrm(int sig)
{
	(void)sig;
	real_ticks++;
}

static void on_vtalrm(int sig)
{
	(void)sig;
	vt_ticks++;
}

static void on_prof(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	prof_ticks++;
	if (si->si_signo != SIGPROF)
		prof_bad_signo = si->si_signo;
}

static volatile int usr1_runs, usr1_on_alt, usr1_ss_onstack, usr1_signo, usr1_code;
static volatile uintptr_t usr1_local_addr;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	volatile char local = 0;
	uintptr_t a = (uintptr_t)&local;
	stack_t cur;

	(void)sig;
	(void)uc;
	usr1_runs++;
	usr1_local_addr = a;
	usr1_on_alt = a >= (uintptr_t)altstack && a < (uintptr_t)altstack + ALT_SIZE;
	usr1_ss_onstack = sigaltstack(NULL, &cur) == 0 && (cur.ss_flags & SS_ONSTACK);
	usr1_signo = si->si_signo;
	usr1_code = si->si_code;
}

static volatile int hup_runs;

static void on_hup(int sig)
{
	(void)sig;
	hup_runs++;
}

static volatile int urg_runs, urg_depth, urg_max_depth, urg_blocked;

static void on_urg(int sig)
{
	sigset_t cur;

	(void)sig;
	urg_runs++;
	urg_depth++;
	if (urg_depth > urg_max_depth)
		urg_max_depth = urg_depth;
	if (sigprocmask(SIG_BLOCK, NULL, &cur) == 0 && sigismember(&cur, SIGURG))
		urg_blocked++;
	if (urg_depth == 1)
		raise(SIGURG); /* SA_NODEFER: delivered right away, nested */
	urg_depth--;
}

static volatile int winch_runs, winch_mask_ok = -1;

static void on_winch(int sig)
{
	sigset_t cur;

	(void)sig;
	winch_runs++;
	winch_mask_ok = sigprocmask(SIG_BLOCK, NULL, &cur) == 0 && sigismember(&cur, SIGINT) == 1 &&
			sigismember(&cur, SIGTTOU) == 1 && sigismember(&cur, RT7) == 1 &&
			sigismember(&cur, SIGWINCH) == 1;
}

static volatile int rt3_runs, rt3_signo, rt3_code, rt3_val, rt3_pid;

static void on_rt3(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	rt3_runs++;
	rt3_signo = si->si_signo;
	rt3_code = si->si_code;
	rt3_val = si->si_value.sival_int;
	rt3_pid = si->si_pid;
}

static volatile int usr2_runs, usr2_signo, usr2_code, usr2_pid, usr2_uid;

static void on_usr2(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	usr2_runs++;
	usr2_signo = si->si_signo;
	usr2_code = si->si_code;
	usr2_pid = si->si_pid;
	usr2_uid = si->si_uid;
}

#define RT5_MAX 8
static volatile int rt5_runs, rt5_val[RT5_MAX], rt5_code[RT5_MAX], rt5_pid[RT5_MAX];

static void on_rt5(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	if (rt5_runs < RT5_MAX) {
		rt5_val[rt5_runs] = si->si_value.sival_int;
		rt5_code[rt5_runs] = si->si_code;
		rt5_pid[rt5_runs] = si->si_pid;
	}
	rt5_runs++;
}

/* ---- the actions we install ---- */

struct act {
	const char *name;
	int sig;
	void *handler; /* sa_handler or sa_sigaction, or SIG_IGN */
	int flags;
	int mask[4]; /* sa_mask members, 0-terminated */
};

#define NACTS 12
static struct act acts[NACTS];

static void init_acts(void)
{
	struct act a[NACTS] = {
		{ "SIGALRM", SIGALRM, (void *)on_alrm, SA_RESTART, { 0 } },
		{ "SIGVTALRM", SIGVTALRM, (void *)on_vtalrm, SA_RESTART, { 0 } },
		{ "SIGPROF", SIGPROF, (void *)on_prof, SA_SIGINFO | SA_RESTART, { 0 } },
		{ "SIGUSR1", SIGUSR1, (void *)on_usr1, SA_SIGINFO | SA_ONSTACK, { 0 } },
		{ "SIGHUP", SIGHUP, (void *)on_hup, SA_RESETHAND, { 0 } },
		{ "SIGURG", SIGURG, (void *)on_urg, SA_NODEFER, { 0 } },
		{ "SIGWINCH", SIGWINCH, (void *)on_winch, SA_RESTART, { SIGINT, SIGTTOU, RT7, 0 } },
		{ "SIGRTMIN+3", RT3, (void *)on_rt3, SA_SIGINFO | SA_RESTART, { 0 } },
		{ "SIGUSR2", SIGUSR2, (void *)on_usr2, SA_SIGINFO, { 0 } },
		{ "SIGRTMIN+5", RT5, (void *)on_rt5, SA_SIGINFO, { SIGTERM, 0 } },
		{ "SIGPIPE", SIGPIPE, (void *)SIG_IGN, 0, { 0 } },
		{ "SIGRTMIN+10", RT10, (void *)SIG_IGN, 0, { 0 } },
	};
	memcpy(acts, a, sizeof a);
}

static const struct act *act_of(int sig)
{
	for (int i = 0; i < NACTS; i++)
		if (acts[i].sig == sig)
			return &acts[i];
	return NULL;
}

static void install(const struct act *a)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	if (a->flags & SA_SIGINFO)
		sa.sa_sigaction = (void (*)(int, siginfo_t *, void *))a->handler;
	else
		sa.sa_handler = (void (*)(int))a->handler;
	sa.sa_flags = a->flags;
	sigemptyset(&sa.sa_mask);
	for (int i = 0; a->mask[i]; i++)
		sigaddset(&sa.sa_mask, a->mask[i]);
	if (sigaction(a->sig, &sa, NULL) != 0)
		fail("sigaction(%s): %s", a->name, strerror(errno));
}

/* ---- raw kernel state ---- */

struct ksigaction {
	uintptr_t handler;
	unsigned long flags;
	uintptr_t restorer;
	uint64_t mask;
};

struct raw_state {
	struct ksigaction act[65]; /* [1..64] */
	uint64_t blocked;
	stack_t alt;
};

static void raw_state(struct raw_state *s)
{
	memset(s, 0, sizeof *s);
	for (int sig = 1; sig <= 64; sig++)
		if (syscall(SYS_rt_sigaction, sig, NULL, &s->act[sig], 8) != 0)
			fail("rt_sigaction(%d, NULL, &old): %s", sig, strerror(errno));
	if (syscall(SYS_rt_sigprocmask, SIG_BLOCK, NULL, &s->blocked, 8) != 0)
		fail("rt_sigprocmask: %s", strerror(errno));
	if (sigaltstack(NULL, &s->alt) != 0)
		fail("sigaltstack(NULL, &old): %s", strerror(errno));
}

static uint64_t raw_pending(void)
{
	uint64_t p = 0;
	if (syscall(SYS_rt_sigpending, &p, 8) != 0)
		fail("rt_sigpending: %s", strerror(errno));
	return p;
}

static uint64_t bit(int sig)
{
	return 1ULL << (sig - 1);
}

/* ---- failure collection ---- */

static int nbad;

__attribute__((format(printf, 1, 2)))
static void bad(const char *fmt, ...)
{
	va_list ap;

	printf("FAIL: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	nbad++;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Burns CPU until the virtual and prof tick counts reach the targets or
 * `secs` of wall time pass. Returns 0 on timeout. */
static int spin_until(long vt_target, long prof_target, double secs)
{
	volatile unsigned long x = 0;
	double end = now() + secs;

	while (vt_ticks < vt_target || prof_ticks < prof_target) {
		for (int i = 0; i < 100000; i++)
			x += i;
		if (now() > end)
			return 0;
	}
	return 1;
}

static void set_timer(int which, const char *name, long first_us, long interval_us)
{
	struct itimerval v = {
		.it_interval = { interval_us / 1000000, interval_us % 1000000 },
		.it_value = { first_us / 1000000, first_us % 1000000 },
	};
	if (setitimer(which, &v, NULL) != 0)
		fail("setitimer(%s): %s", name, strerror(errno));
}

/* ---- checks after go ---- */

static void check_raw(const struct raw_state *before, const struct raw_state *after)
{
	for (int sig = 1; sig <= 64; sig++) {
		const struct ksigaction *b = &before->act[sig], *a = &after->act[sig];
		if (memcmp(b, a, sizeof *a) != 0)
			bad("kernel sigaction of signal %d changed: handler %#lx flags %#lx restorer %#lx mask %#llx "
			    "before, handler %#lx flags %#lx restorer %#lx mask %#llx after",
			    sig, (unsigned long)b->handler, b->flags, (unsigned long)b->restorer,
			    (unsigned long long)b->mask, (unsigned long)a->handler, a->flags,
			    (unsigned long)a->restorer, (unsigned long long)a->mask);
	}
	if (before->blocked != after->blocked)
		bad("blocked mask %#llx, was %#llx", (unsigned long long)after->blocked,
		    (unsigned long long)before->blocked);
	if (before->alt.ss_sp != after->alt.ss_sp || before->alt.ss_size != after->alt.ss_size ||
	    before->alt.ss_flags != after->alt.ss_flags)
		bad("sigaltstack sp %p size %zu flags %#x, was sp %p size %zu flags %#x", after->alt.ss_sp,
		    after->alt.ss_size, after->alt.ss_flags, before->alt.ss_sp, before->alt.ss_size,
		    before->alt.ss_flags);
	if (after->alt.ss_sp != altstack || after->alt.ss_size != ALT_SIZE || after->alt.ss_flags != 0)
		bad("sigaltstack sp %p size %zu flags %#x, set sp %p size %d flags 0", after->alt.ss_sp,
		    after->alt.ss_size, after->alt.ss_flags, (void *)altstack, ALT_SIZE);
}

/* The glibc view of each action we set. Returns a bitmap of the signals
 * whose action is intact (safe to raise). */
static uint64_t check_actions(void)
{
	uint64_t ok = 0;

	for (int i = 0; i < NACTS; i++) {
		const struct act *a = &acts[i];
		struct sigaction old;
		int good = 1;

		if (sigaction(a->sig, NULL, &old) != 0) {
			bad("sigaction(%s, NULL, &old): %s", a->name, strerror(errno));
			continue;
		}
		void *h = (a->flags & SA_SIGINFO) ? (void *)old.sa_sigaction : (void *)old.sa_handler;
		if (h != a->handler) {
			bad("%s: handler %p, set %p", a->name, h, a->handler);
			good = 0;
		}
		if ((old.sa_flags & ~SA_RESTORER) != a->flags) {
			bad("%s: sa_flags %#x (without SA_RESTORER), set %#x", a->name, old.sa_flags & ~SA_RESTORER,
			    a->flags);
			good = 0;
		}
		for (int s = 1; s <= 64; s++) {
			if (s == 32 || s == 33)
				continue; /* glibc's sigismember refuses its reserved signals */
			int want = 0;
			for (int j = 0; a->mask[j]; j++)
				want |= a->mask[j] == s;
			if (sigismember(&old.sa_mask, s) != want) {
				bad("%s: sa_mask %s signal %d", a->name, want ? "lacks" : "has", s);
				good = 0;
			}
		}
		if (good)
			ok |= bit(a->sig);
	}
	return ok;
}

/* setitimer() of ITIMER_VIRTUAL/PROF adds one tick (TICK_NSEC: 1 to 10 ms,
 * by CONFIG_HZ) to a nonzero value, so a CPU timer armed with its interval,
 * or re-armed on restore, may read up to a tick more than the interval. */
#define CPU_TIMER_SLACK_US 10000

static void check_timer(int which, const char *name, long interval_us, long slack_us)
{
	struct itimerval v;

	if (getitimer(which, &v) != 0) {
		bad("getitimer(%s): %s", name, strerror(errno));
		return;
	}
	long iv = v.it_interval.tv_sec * 1000000L + v.it_interval.tv_usec;
	long val = v.it_value.tv_sec * 1000000L + v.it_value.tv_usec;
	if (iv != interval_us)
		bad("%s: interval %ld us, set %ld us", name, iv, interval_us);
	if (val <= 0)
		bad("%s: disarmed (value %ld us) after go", name, val);
	else if (val > interval_us + slack_us)
		bad("%s: next expiry in %ld us, more than the %ld us interval (+ %ld us slack)", name, val,
		    interval_us, slack_us);
}

/* Raises sig if its action survived. */
static int may_raise(uint64_t intact, int sig)
{
	if (intact & bit(sig))
		return 1;
	bad("%s: not raised, its action did not survive", act_of(sig)->name);
	return 0;
}

static void check_delivery(uint64_t intact)
{
	pid_t me = getpid();

	/* SA_ONSTACK + SA_SIGINFO */
	if (may_raise(intact, SIGUSR1)) {
		raise(SIGUSR1);
		if (usr1_runs != 1)
			bad("SIGUSR1 handler ran %d times, want 1", usr1_runs);
		if (!usr1_on_alt)
			bad("SIGUSR1 handler ran off the altstack (local at %#lx, altstack %p..+%#x)",
			    (unsigned long)usr1_local_addr, (void *)altstack, ALT_SIZE);
		if (!usr1_ss_onstack)
			bad("SIGUSR1 handler: sigaltstack() does not report SS_ONSTACK");
		if (usr1_signo != SIGUSR1 || usr1_code != SI_TKILL)
			bad("SIGUSR1 handler: si_signo %d si_code %d, want %d %d", usr1_signo, usr1_code, SIGUSR1,
			    SI_TKILL);
	}

	/* SA_SIGINFO with sigqueue */
	if (may_raise(intact, RT3)) {
		if (sigqueue(me, RT3, (union sigval){ .sival_int = RT3_VAL }) != 0)
			bad("sigqueue(SIGRTMIN+3): %s", strerror(errno));
		if (rt3_runs != 1)
			bad("SIGRTMIN+3 handler ran %d times, want 1", rt3_runs);
		if (rt3_signo != RT3 || rt3_code != SI_QUEUE || rt3_val != RT3_VAL || rt3_pid != me)
			bad("SIGRTMIN+3 siginfo: signo %d code %d value %#x pid %d, want %d %d %#x %d", rt3_signo,
			    rt3_code, rt3_val, rt3_pid, RT3, SI_QUEUE, RT3_VAL, me);
	}

	/* sa_mask */
	if (may_raise(intact, SIGWINCH)) {
		uint64_t before, after;
		syscall(SYS_rt_sigprocmask, SIG_BLOCK, NULL, &before, 8);
		raise(SIGWINCH);
		syscall(SYS_rt_sigprocmask, SIG_BLOCK, NULL, &after, 8);
		if (winch_runs != 1)
			bad("SIGWINCH handler ran %d times, want 1", winch_runs);
		if (winch_mask_ok != 1)
			bad("SIGWINCH handler: SIGINT, SIGTTOU, SIGRTMIN+7 and SIGWINCH not all blocked inside it");
		if (before != after)
			bad("blocked mask %#llx after the SIGWINCH handler, %#llx before", (unsigned long long)after,
			    (unsigned long long)before);
	}

	/* SA_NODEFER */
	if (may_raise(intact, SIGURG)) {
		raise(SIGURG);
		if (urg_runs != 2 || urg_max_depth != 2)
			bad("SIGURG (SA_NODEFER) handler ran %d times, nested %d deep; want 2 and 2", urg_runs,
			    urg_max_depth);
		if (urg_blocked)
			bad("SIGURG (SA_NODEFER) was blocked inside its own handler");
	}

	/* SA_RESETHAND */
	if (may_raise(intact, SIGHUP)) {
		struct sigaction old;
		raise(SIGHUP);
		if (hup_runs != 1)
			bad("SIGHUP handler ran %d times, want 1", hup_runs);
		if (sigaction(SIGHUP, NULL, &old) != 0)
			bad("sigaction(SIGHUP, NULL, &old): %s", strerror(errno));
		else if (old.sa_handler != SIG_DFL)
			bad("SIGHUP (SA_RESETHAND) handler is %p after one delivery, want SIG_DFL",
			    (void *)old.sa_handler);
	}

	/* SIG_IGN */
	if (may_raise(intact, SIGPIPE))
		raise(SIGPIPE);
	if (may_raise(intact, RT10))
		if (sigqueue(me, RT10, (union sigval){ .sival_int = 1 }) != 0)
			bad("sigqueue(SIGRTMIN+10): %s", strerror(errno));
}

static void check_pending(uint64_t intact)
{
	pid_t me = getpid();
	uint64_t want = bit(SIGUSR2) | bit(RT5);
	uint64_t p = raw_pending();
	sigset_t set;

	if ((p & want) != want)
		bad("pending signals %#llx after go lack %#llx (SIGUSR2 and/or SIGRTMIN+5)", (unsigned long long)p,
		    (unsigned long long)(want & ~p));
	if (sigpending(&set) != 0 || sigismember(&set, SIGUSR2) != 1 || sigismember(&set, RT5) != 1)
		bad("sigpending() does not show SIGUSR2 and SIGRTMIN+5");
	if (!(intact & bit(SIGUSR2)) || !(intact & bit(RT5))) {
		bad("SIGUSR2/SIGRTMIN+5 left blocked: their actions did not survive");
		return;
	}

	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	sigaddset(&set, RT5);
	if (sigprocmask(SIG_UNBLOCK, &set, NULL) != 0)
		bad("sigprocmask(SIG_UNBLOCK): %s", strerror(errno));

	if (usr2_runs != 1)
		bad("pending SIGUSR2: handler ran %d times after unblocking, want 1", usr2_runs);
	else if (usr2_signo != SIGUSR2 || usr2_code != SI_TKILL || usr2_pid != me || usr2_uid != (int)getuid())
		bad("pending SIGUSR2 siginfo: signo %d code %d pid %d uid %d, want %d %d %d %d", usr2_signo,
		    usr2_code, usr2_pid, usr2_uid, SIGUSR2, SI_TKILL, me, (int)getuid());

	if (rt5_runs != 2) {
		bad("pending SIGRTMIN+5: handler ran %d times after unblocking, want 2 (queued twice)", rt5_runs);
	}
	int vals[2] = { RT5_VAL1, RT5_VAL2 };
	for (int i = 0; i < rt5_runs && i < 2; i++)
		if (rt5_val[i] != vals[i] || rt5_code[i] != SI_QUEUE || rt5_pid[i] != me)
			bad("pending SIGRTMIN+5 delivery %d: value %d code %d pid %d, want %d %d %d", i + 1,
			    rt5_val[i], rt5_code[i], rt5_pid[i], vals[i], SI_QUEUE, me);

	p = raw_pending();
	if (p & want)
		bad("still pending after unblocking: %#llx", (unsigned long long)(p & want));
}

static void check_timers_fire(void)
{
	long r0 = real_ticks, v0 = vt_ticks, p0 = prof_ticks;
	double start = now();

	while (now() - start < 0.5)
		sleep_10ms(); /* SIGALRM cuts it short: fine */
	long dr = real_ticks - r0;
	if (dr < REAL_MIN_TICKS)
		bad("ITIMER_REAL: %ld ticks in %.0f ms, want at least %d", dr, (now() - start) * 1000,
		    REAL_MIN_TICKS);

	double spin_start = now();
	if (!spin_until(v0 + CPU_TIMER_TICKS, p0 + CPU_TIMER_TICKS, 10.0))
		bad("virtual/prof timers: %ld/%ld ticks in 10 s of busy loop, want %d each", vt_ticks - v0,
		    prof_ticks - p0, CPU_TIMER_TICKS);
	if (prof_bad_signo)
		bad("SIGPROF handler got si_signo %ld", prof_bad_signo);
	printf("after go: real +%ld ticks in 500 ms; virtual +%ld, prof +%ld in %.0f ms of busy loop\n", dr,
	       vt_ticks - v0, prof_ticks - p0, (now() - spin_start) * 1000);
}

int main(int argc, char **argv)
{
	struct raw_state before, after;

	need_args(argc, argv, 1, "GO_FILE [fast|alrm-blocked]");
	if (argc > 2 && strcmp(argv[2], "fast") == 0)
		real_interval_us = FAST_INTERVAL_US;
	else if (argc > 2 && strcmp(argv[2], "alrm-blocked") == 0)
		alrm_blocked_mode = 1;
	else if (argc > 2)
		fail("unknown mode %s", argv[2]);
	init_acts();

	umask(UMASK);

	stack_t ss = { .ss_sp = altstack, .ss_size = ALT_SIZE, .ss_flags = 0 };
	if (sigaltstack(&ss, NULL) != 0)
		fail("sigaltstack: %s", strerror(errno));

	for (int i = 0; i < NACTS; i++)
		install(&acts[i]);

	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR2);
	sigaddset(&block, RT5);
	sigaddset(&block, SIGTTIN);
	sigaddset(&block, RTMAX2);
	if (sigprocmask(SIG_BLOCK, &block, NULL) != 0)
		fail("sigprocmask: %s", strerror(errno));

	/* Pending: SIGUSR2 (thread-directed, by tgkill), SIGRTMIN+5 twice
	 * (process-directed, by rt_sigqueueinfo). */
	if (raise(SIGUSR2) != 0)
		fail("raise(SIGUSR2): %s", strerror(errno));
	if (sigqueue(getpid(), RT5, (union sigval){ .sival_int = RT5_VAL1 }) != 0 ||
	    sigqueue(getpid(), RT5, (union sigval){ .sival_int = RT5_VAL2 }) != 0)
		fail("sigqueue(SIGRTMIN+5): %s", strerror(errno));

	set_timer(ITIMER_REAL, "ITIMER_REAL", REAL_FIRST_US, real_interval_us);
	set_timer(ITIMER_VIRTUAL, "ITIMER_VIRTUAL", VIRT_INTERVAL_US, VIRT_INTERVAL_US);
	set_timer(ITIMER_PROF, "ITIMER_PROF", PROF_INTERVAL_US, PROF_INTERVAL_US);

	/* Every timer works before the dump. */
	if (!spin_until(1, 1, 10.0))
		fail("setup: virtual/prof timers did not fire (%ld/%ld ticks) in 10 s", vt_ticks, prof_ticks);
	for (int i = 0; real_ticks < 3; i++) {
		if (i == 1000)
			fail("setup: ITIMER_REAL did not tick 3 times in 1000 sleeps (%ld ticks)", real_ticks);
		sleep_10ms();
	}

	if (alrm_blocked_mode) {
		sigset_t alrm;
		sigemptyset(&alrm);
		sigaddset(&alrm, SIGALRM);
		sigprocmask(SIG_BLOCK, &alrm, NULL);
		for (int i = 0; !(raw_pending() & bit(SIGALRM)); i++) {
			if (i == 1000)
				fail("setup: no SIGALRM pending after blocking it for 1000 sleeps");
			sleep_10ms();
		}
		struct itimerval v;
		getitimer(ITIMER_REAL, &v);
		printf("SIGALRM blocked and pending; ITIMER_REAL value %ld us, interval %ld us\n",
		       v.it_value.tv_sec * 1000000L + v.it_value.tv_usec,
		       v.it_interval.tv_sec * 1000000L + v.it_interval.tv_usec);
	}

	raw_state(&before);
	uint64_t p = raw_pending();
	if ((p & (bit(SIGUSR2) | bit(RT5))) != (bit(SIGUSR2) | bit(RT5)))
		fail("setup: SIGUSR2 and SIGRTMIN+5 not pending (%#llx)", (unsigned long long)p);
	if (usr2_runs || rt5_runs)
		fail("setup: blocked signals were delivered");

	ready();
	wait_for_go(argv[1]);

	/* State as it was. */
	raw_state(&after);
	check_raw(&before, &after);
	mode_t m = umask(0022);
	if (m != UMASK)
		bad("umask %#o, set %#o", (unsigned)m, UMASK);
	uint64_t intact = check_actions();
	if (alrm_blocked_mode) {
		long r0 = real_ticks;
		sigset_t alrm;
		if (!(raw_pending() & bit(SIGALRM)))
			bad("SIGALRM (blocked) is not pending after go");
		sigemptyset(&alrm);
		sigaddset(&alrm, SIGALRM);
		sigprocmask(SIG_UNBLOCK, &alrm, NULL);
		if (real_ticks == r0)
			bad("unblocking the pending SIGALRM ran no handler");
	}
	check_timer(ITIMER_REAL, "ITIMER_REAL", real_interval_us, 0);
	check_timer(ITIMER_VIRTUAL, "ITIMER_VIRTUAL", VIRT_INTERVAL_US, CPU_TIMER_SLACK_US);
	check_timer(ITIMER_PROF, "ITIMER_PROF", PROF_INTERVAL_US, CPU_TIMER_SLACK_US);

	/* State works. */
	check_delivery(intact);
	check_pending(intact);
	check_timers_fire();

	if (nbad)
		exit(1);
	pass();
}
