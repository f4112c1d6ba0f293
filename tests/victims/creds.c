/*
 * creds: credentials, seccomp, scheduling and limits survive dump/restore
 * (and a dump -R that leaves the process running). Started as root.
 *
 * Set up before READY:
 *   process-wide: RLIMIT_NOFILE 200/300, RLIMIT_CORE 0/1 MiB, RLIMIT_STACK
 *     soft 4 MiB, RLIMIT_NPROC 500/600, RLIMIT_MSGQUEUE 100000/200000;
 *     oom_score_adj 300; groups {10, 20, 30}; gids 2000/2001/2002;
 *     dumpable set back to 1 after the uid change reset it.
 *   main thread (raw syscalls, this thread only): bounding set without
 *     CAP_SYS_BOOT and CAP_MKNOD; uids 1000/1001/1002, fsuid 1000, fsgid
 *     2000; capabilities kept through SECBIT_KEEP_CAPS: permitted
 *     {CHOWN, KILL, SETPCAP, NET_BIND_SERVICE, SYS_NICE}, effective
 *     {CHOWN, KILL}, inheritable {KILL, NET_BIND_SERVICE}, ambient
 *     {NET_BIND_SERVICE}; securebits NOROOT|KEEP_CAPS|NO_CAP_AMBIENT_RAISE;
 *     nice 5; no_new_privs and two seccomp filters: the older makes
 *     getppid fail with ECONNREFUSED and uname with EHOSTDOWN, the newer
 *     makes uname fail with ENOMSG (the newest filter's errno wins, so
 *     the order of the chain shows).
 *   second thread (created after the gids, before the rest): SCHED_BATCH,
 *     nice 7, affinity CPU 0, a seccomp filter of its own installed
 *     without no_new_privs (getpgrp fails with EADDRINUSE), then uids
 *     3000/3000/3000 (so no capabilities at all).
 * After go each thread checks its own state, exactly, and the main thread
 * the process-wide part; every problem is a FAIL line.
 *
 * usage: creds GO_FILE
 */
#define _GNU_SOURCE
#include "victim.h"
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>

#define SECBIT_NOROOT (1 << 0)
#define SECBIT_KEEP_CAPS (1 << 4)
#define SECBIT_NO_CAP_AMBIENT_RAISE (1 << 6)
#define MAIN_SECBITS (SECBIT_NOROOT | SECBIT_KEEP_CAPS | SECBIT_NO_CAP_AMBIENT_RAISE)
#define BIT(c) (1ULL << (c))
#define MAIN_PRM (BIT(CAP_CHOWN) | BIT(CAP_KILL) | BIT(CAP_SETPCAP) | BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_SYS_NICE))
#define MAIN_EFF (BIT(CAP_CHOWN) | BIT(CAP_KILL))
#define MAIN_INH (BIT(CAP_KILL) | BIT(CAP_NET_BIND_SERVICE))
#define MAIN_AMB BIT(CAP_NET_BIND_SERVICE)
#define MAIN_DROPPED (BIT(CAP_SYS_BOOT) | BIT(CAP_MKNOD))
#define OOM 300

static const struct { int res; rlim_t cur, max; int keep_max; } limits[] = {
	{ RLIMIT_NOFILE, 200, 300, 0 },
	{ RLIMIT_CORE, 0, 1 << 20, 0 },
	{ RLIMIT_STACK, 4 << 20, 0, 1 },
	{ RLIMIT_NPROC, 500, 600, 0 },
	{ RLIMIT_MSGQUEUE, 100000, 200000, 0 },
};
#define NLIMITS (sizeof(limits) / sizeof(limits[0]))

static struct rlimit want_limits[NLIMITS];
static uint64_t full_bnd; /* the bounding set we started with */
static int last_cap, start_cpus;
static volatile int thread_ready, thread_done, bad;
static const char *go_file;

#define check(cond, ...)                                                                                       \
	do {                                                                                                   \
		if (!(cond)) {                                                                                 \
			say("FAIL: " __VA_ARGS__);                                                            \
			bad = 1;                                                                               \
		}                                                                                              \
	} while (0)

static void die(const char *what)
{
	fail("%s: %s", what, strerror(errno));
}

static void capset3(uint64_t eff, uint64_t prm, uint64_t inh)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2] = {
		{ (uint32_t)eff, (uint32_t)prm, (uint32_t)inh },
		{ (uint32_t)(eff >> 32), (uint32_t)(prm >> 32), (uint32_t)(inh >> 32) },
	};
	if (syscall(SYS_capset, &h, d))
		die("capset");
}

static void capget3(uint64_t *eff, uint64_t *prm, uint64_t *inh)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d))
		die("capget");
	*eff = d[0].effective | (uint64_t)d[1].effective << 32;
	*prm = d[0].permitted | (uint64_t)d[1].permitted << 32;
	*inh = d[0].inheritable | (uint64_t)d[1].inheritable << 32;
}

static uint64_t bounding(void)
{
	uint64_t m = 0;
	for (int c = 0; c <= last_cap; c++)
		if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1)
			m |= BIT(c);
	return m;
}

static uint64_t ambient(void)
{
	uint64_t m = 0;
	for (int c = 0; c <= last_cap; c++)
		if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1)
			m |= BIT(c);
	return m;
}

/* A filter: syscall `nr1` fails with `e1`, `nr2` (if >= 0) with `e2`. */
static void install_filter(int nr1, int e1, int nr2, int e2, unsigned flags)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr1, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | e1),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr2, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | e2),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { sizeof(f) / sizeof(f[0]), f };
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog))
		die("seccomp");
}

static void check_ids(const char *who, uid_t ru, uid_t eu, uid_t su, uid_t fsu, gid_t rg, gid_t eg, gid_t sg, gid_t fsg)
{
	uid_t r, e, s;
	gid_t gr, ge, gs;
	gid_t groups[16];
	int n;

	getresuid(&r, &e, &s);
	check(r == ru && e == eu && s == su, "%s: uids %u %u %u, want %u %u %u", who, r, e, s, ru, eu, su);
	n = (int)syscall(SYS_setfsuid, -1);
	check((uid_t)n == fsu, "%s: fsuid %d, want %u", who, n, fsu);
	getresgid(&gr, &ge, &gs);
	check(gr == rg && ge == eg && gs == sg, "%s: gids %u %u %u, want %u %u %u", who, gr, ge, gs, rg, eg, sg);
	n = (int)syscall(SYS_setfsgid, -1);
	check((gid_t)n == fsg, "%s: fsgid %d, want %u", who, n, fsg);
	n = getgroups(16, groups);
	check(n == 3 && groups[0] == 10 && groups[1] == 20 && groups[2] == 30, "%s: %d groups (first %u), want 10 20 30", who, n,
	      n > 0 ? groups[0] : 0);
}

static void check_caps(const char *who, uint64_t eff, uint64_t prm, uint64_t inh, uint64_t amb, uint64_t bnd)
{
	uint64_t e, p, i;

	capget3(&e, &p, &i);
	check(e == eff && p == prm && i == inh, "%s: caps eff %#llx prm %#llx inh %#llx, want %#llx %#llx %#llx", who,
	      (unsigned long long)e, (unsigned long long)p, (unsigned long long)i, (unsigned long long)eff,
	      (unsigned long long)prm, (unsigned long long)inh);
	check(ambient() == amb, "%s: ambient %#llx, want %#llx", who, (unsigned long long)ambient(), (unsigned long long)amb);
	check(bounding() == bnd, "%s: bounding %#llx, want %#llx", who, (unsigned long long)bounding(), (unsigned long long)bnd);
}

static void check_sched(const char *who, int policy, int nice, int cpu0_only)
{
	cpu_set_t set;
	int p = sched_getscheduler(0);

	errno = 0;
	int n = getpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid));
	check(p == policy, "%s: policy %d, want %d", who, p, policy);
	check(errno == 0 && n == nice, "%s: nice %d, want %d", who, n, nice);
	if (sched_getaffinity(0, sizeof(set), &set))
		die("sched_getaffinity");
	if (cpu0_only)
		check(CPU_COUNT(&set) == 1 && CPU_ISSET(0, &set), "%s: affinity: %d CPUs, want CPU 0 only", who, CPU_COUNT(&set));
	else
		check(CPU_COUNT(&set) == start_cpus, "%s: affinity: %d CPUs, want all %d", who, CPU_COUNT(&set), start_cpus);
}

static void *second(void *arg)
{
	cpu_set_t one;

	(void)arg;
	if (sched_setscheduler(0, SCHED_BATCH, &(struct sched_param){ 0 }))
		die("SCHED_BATCH");
	if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 7))
		die("setpriority 7");
	CPU_ZERO(&one);
	CPU_SET(0, &one);
	if (sched_setaffinity(0, sizeof(one), &one))
		die("sched_setaffinity");
	/* A filter without no_new_privs: installing it needs CAP_SYS_ADMIN,
	 * which the uid change below takes away. */
	install_filter(SYS_getpgrp, EADDRINUSE, -1, 0, 0);
	if (syscall(SYS_setresuid, 3000, 3000, 3000)) /* raw: this thread only */
		die("setresuid in the second thread");
	thread_ready = 1;
	wait_for_go(go_file);
	check_ids("thread", 3000, 3000, 3000, 3000, 2000, 2001, 2002, 2001);
	check_caps("thread", 0, 0, 0, 0, full_bnd);
	check(prctl(PR_GET_SECUREBITS) == 0, "thread: securebits %d, want 0", prctl(PR_GET_SECUREBITS));
	check(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 0, "thread: no_new_privs set");
	check(prctl(PR_GET_SECCOMP) == 2, "thread: seccomp mode %d, want 2", prctl(PR_GET_SECCOMP));
	check(syscall(SYS_getppid) > 0, "thread: getppid failed: %s (a filter of the main thread?)", strerror(errno));
	errno = 0;
	check(syscall(SYS_getpgrp) == -1 && errno == EADDRINUSE, "thread: getpgrp: %s, want EADDRINUSE from its own filter",
	      strerror(errno));
	check_sched("thread", SCHED_BATCH, 7, 1);
	thread_done = 1;
	return NULL;
}

static void set_limits(void)
{
	for (size_t i = 0; i < NLIMITS; i++) {
		struct rlimit r;
		if (getrlimit(limits[i].res, &r))
			die("getrlimit");
		r.rlim_cur = limits[i].cur;
		if (!limits[i].keep_max)
			r.rlim_max = limits[i].max;
		if (setrlimit(limits[i].res, &r))
			die("setrlimit");
		want_limits[i] = r;
	}
}

static void set_oom(void)
{
	int fd = open("/proc/self/oom_score_adj", O_WRONLY);
	if (fd < 0 || write(fd, "300", 3) != 3)
		die("oom_score_adj");
	close(fd);
}

/* Main thread's own credentials, raw syscalls only (glibc's wrappers
 * would change every thread). */
static void main_creds(void)
{
	if (prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0) || prctl(PR_CAPBSET_DROP, CAP_MKNOD, 0, 0, 0))
		die("PR_CAPBSET_DROP");
	if (prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_KEEP_CAPS, 0, 0, 0))
		die("PR_SET_SECUREBITS");
	if (syscall(SYS_setresuid, 1000, 1001, 1002))
		die("setresuid");
	capset3(MAIN_EFF | BIT(CAP_SETPCAP), MAIN_PRM, MAIN_INH);
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0))
		die("PR_CAP_AMBIENT_RAISE");
	if (prctl(PR_SET_SECUREBITS, MAIN_SECBITS, 0, 0, 0))
		die("PR_SET_SECUREBITS (final)");
	capset3(MAIN_EFF, MAIN_PRM, MAIN_INH);
	syscall(SYS_setfsuid, 1000);
	syscall(SYS_setfsgid, 2000);
	if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 5))
		die("setpriority 5");
	if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0))
		die("PR_SET_DUMPABLE");
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		die("PR_SET_NO_NEW_PRIVS");
	install_filter(SYS_getppid, ECONNREFUSED, SYS_uname, EHOSTDOWN, 0);
	install_filter(SYS_uname, ENOMSG, -1, 0, SECCOMP_FILTER_FLAG_LOG);
}

static void check_main(void)
{
	struct utsname u;
	char buf[32] = "";
	int fd;
	long r;

	check_ids("main", 1000, 1001, 1002, 1000, 2000, 2001, 2002, 2000);
	check_caps("main", MAIN_EFF, MAIN_PRM, MAIN_INH, MAIN_AMB, full_bnd & ~MAIN_DROPPED);
	check(prctl(PR_GET_SECUREBITS) == MAIN_SECBITS, "main: securebits %#x, want %#x", prctl(PR_GET_SECUREBITS), MAIN_SECBITS);
	check(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "main: no_new_privs not set");
	check(prctl(PR_GET_SECCOMP) == 2, "main: seccomp mode %d, want 2", prctl(PR_GET_SECCOMP));
	check(prctl(PR_GET_DUMPABLE) == 1, "main: dumpable %d, want 1", prctl(PR_GET_DUMPABLE));
	errno = 0;
	r = syscall(SYS_getppid);
	check(r == -1 && errno == ECONNREFUSED, "main: getppid returned %ld (%s), want ECONNREFUSED from the older filter", r,
	      strerror(errno));
	errno = 0;
	r = syscall(SYS_uname, &u);
	check(r == -1 && errno == ENOMSG, "main: uname returned %ld (%s), want ENOMSG from the newer filter", r, strerror(errno));
	check_sched("main", SCHED_OTHER, 5, 0);
	for (size_t i = 0; i < NLIMITS; i++) {
		struct rlimit l;
		getrlimit(limits[i].res, &l);
		check(l.rlim_cur == want_limits[i].rlim_cur && l.rlim_max == want_limits[i].rlim_max,
		      "rlimit %d: %llu/%llu, want %llu/%llu", limits[i].res, (unsigned long long)l.rlim_cur,
		      (unsigned long long)l.rlim_max, (unsigned long long)want_limits[i].rlim_cur,
		      (unsigned long long)want_limits[i].rlim_max);
	}
	fd = open("/proc/self/oom_score_adj", O_RDONLY);
	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) < 0)
		check(0, "reading oom_score_adj: %s", strerror(errno));
	else
		check(atoi(buf) == OOM, "oom_score_adj %d, want %d", atoi(buf), OOM);
	if (fd >= 0)
		close(fd);
}

int main(int argc, char **argv)
{
	pthread_t t;
	gid_t groups[] = { 10, 20, 30 };
	FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "r");

	need_args(argc, argv, 1, "GO_FILE");
	go_file = argv[1];
	if (!f || fscanf(f, "%d", &last_cap) != 1)
		die("cap_last_cap");
	fclose(f);
	full_bnd = bounding();
	{
		cpu_set_t all;
		if (sched_getaffinity(0, sizeof(all), &all))
			die("sched_getaffinity");
		start_cpus = CPU_COUNT(&all);
	}
	set_limits();
	set_oom();
	if (setgroups(3, groups) || setresgid(2000, 2001, 2002))
		die("setgroups/setresgid");
	if (pthread_create(&t, NULL, second, NULL))
		die("pthread_create");
	while (!thread_ready)
		sleep_10ms();
	main_creds();
	ready();
	wait_for_go(go_file);
	check_main();
	pthread_join(t, NULL);
	check(thread_done, "the second thread did not finish its checks");
	if (bad)
		exit(1);
	pass();
}
