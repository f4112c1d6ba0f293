/*
 * tree: a process tree survives dump/restore (and dump -R).
 *
 *   R    the root (the harness may start it with setsid)
 *   ├─ A    setpgid(0, 0): leads its own process group
 *   │  └─ A1   in A's group; runs a second thread
 *   ├─ B    setsid(): leads its own session
 *   │  └─ B1   in B's session and group
 *   ├─ C    exits with status 7 at once; R does not reap it before go
 *   │       (a zombie at dump time)
 *   └─ D    setpgid(0, 0), then stops itself with raise(SIGSTOP) (state T
 *           at dump time)
 *
 * All share a MAP_SHARED|MAP_ANONYMOUS page: a slot per process (its ids,
 * a counter it increments in its loop, flags) and a total every live
 * process increments with its own counter (atomically).
 *
 * R, A, A1, B and B1 pass 8 tokens around a ring of pipes
 * R -> A -> A1 -> B -> B1 -> R, holding each about 0.5 ms: bytes are in
 * the pipes at any moment, the dump included. A token is {magic, id, seq};
 * each process checks seq % 5 is its place in the ring and is 5 more than
 * the last time it saw that token, and forwards seq + 1. A1's second
 * thread increments A1's counter too.
 *
 * R prints READY once every process has set up and recorded its ids, C is
 * a zombie, D is stopped and the tokens went around a few times, after
 *   TREE root=R a=A a1=A1 b=B b1=B1 c=C d=D
 *
 * After go (every process polls the go file between tokens), each ring
 * process checks its pid, ppid (not R's: its parent is whoever restored
 * it), pgid and sid are what they were, that the counters of the other four
 * move (the page is still shared), and that tokens keep coming in order.
 * Once every ring process has seen go and the shared page work, R lets 16
 * more tokens through, then absorbs the 8 tokens and closes its pipe end:
 * the end-of-file goes around the ring, each process checks it saw enough
 * tokens after go (8; R 16), waits for its child (A1 for A, B1 for B) and
 * exits 0 (or 1 with FAIL lines). R then reaps C (exit status 7 wanted),
 * writes a nonce into the shared page and sends SIGCONT to D, which checks
 * its ids, answers the nonce through the page and exits 0; R waits for
 * A, B and D (exit 0 each), checks it has no other child and that the
 * total matches the counters, and prints PASS.
 *
 * With "solo" the root has a single child S that just waits for go (and
 * exits, quietly, if its parent is gone). A go file containing "alone"
 * (the root was restored without its child) makes R check it has no child;
 * otherwise R waits for S (exit 0).
 *
 * Nothing outlives an aborted test: every wait is bounded, every child
 * exits once its parent is gone (its ppid changes), and D, stopped, leads
 * its own process group in R's session: when R dies that group becomes
 * orphaned and the kernel sends it SIGHUP (which kills D) and SIGCONT. (In
 * R's group, which has no parent outside the group within the session when
 * R leads a session, D would stay stopped forever.)
 *
 * usage: tree GO_FILE [solo]
 */
#define _GNU_SOURCE
#include "victim.h"
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

enum { R, A, A1, B, B1, C, D, NROLES };
#define NRING 5 /* R, A, A1, B, B1: the ring position is the role */
#define NTOKENS 8
#define TOKEN_MAGIC 0x70cc3e55u
#define C_STATUS 7
#define POST_GO_TIMEOUT 30.0 /* s */

static const char *const role_name[NROLES] = { "root", "a", "a1", "b", "b1", "c", "d" };

struct slot {
	_Atomic long pid, ppid, pgid, sid;
	_Atomic long count;
	_Atomic int ready, go_seen, shared_ok;
};

struct shared {
	struct slot s[NROLES];
	_Atomic long total;
	_Atomic long cont_nonce, d_reply;
	_Atomic int ending;
};

struct token {
	uint32_t magic, id;
	uint64_t seq;
};

static struct shared *sh;
static int ring[NRING][2]; /* ring[i]: from position i to position i + 1 */
static int me = R;
static long my_pid, my_ppid, my_pgid, my_sid;
static const char *go_file;
static int failures;
static char tree_line[256]; /* R: printed with READY */


#define bad(fmt, ...)                                                                                  \
	do {                                                                                           \
		failures++;                                                                            \
		say("FAIL: [%s pid %d] " fmt, role_name[me], (int)getpid(), ##__VA_ARGS__);            \
	} while (0)

/* Fatal: report and exit 1 (children exit with _exit: stdio was flushed
 * before every fork, so there is nothing of theirs to flush). */
#define die(fmt, ...)                                                                                  \
	do {                                                                                           \
		bad(fmt, ##__VA_ARGS__);                                                               \
		_exit(1);                                                                              \
	} while (0)

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void nap_us(long us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
	nanosleep(&ts, NULL);
}

static void bump(void)
{
	atomic_fetch_add(&sh->s[me].count, 1);
	atomic_fetch_add(&sh->total, 1);
}

static void record_ids(void)
{
	struct slot *s = &sh->s[me];

	my_pid = getpid();
	my_ppid = getppid();
	my_pgid = getpgid(0);
	my_sid = getsid(0);
	atomic_store(&s->pid, my_pid);
	atomic_store(&s->ppid, my_ppid);
	atomic_store(&s->pgid, my_pgid);
	atomic_store(&s->sid, my_sid);
}

static void check_ids(void)
{
	if (getpid() != my_pid)
		bad("getpid() is %d, was %ld", (int)getpid(), my_pid);
	if (me != R && getppid() != my_ppid)
		bad("getppid() is %d, was %ld", (int)getppid(), my_ppid);
	if (getpgid(0) != my_pgid)
		bad("getpgid() is %d, was %ld", (int)getpgid(0), my_pgid);
	if (getsid(0) != my_sid)
		bad("getsid() is %d, was %ld", (int)getsid(0), my_sid);
	if (atomic_load(&sh->s[me].pid) != my_pid)
		bad("the shared page says my pid is %ld", atomic_load(&sh->s[me].pid));
}

/* A child whose parent is gone (the test was aborted) leaves quietly. */
static void exit_if_orphaned(void)
{
	if (me != R && getppid() != my_ppid) {
		say("[%s pid %d] parent %ld gone (ppid now %d), exiting", role_name[me], (int)getpid(), my_ppid,
		    (int)getppid());
		_exit(3);
	}
}

/* Closes every ring fd but the ones in keep (or -1). */
static void close_ring_except(int keep1, int keep2)
{
	for (int i = 0; i < NRING; i++)
		for (int j = 0; j < 2; j++)
			if (ring[i][j] != keep1 && ring[i][j] != keep2)
				close(ring[i][j]);
}

static int read_full(int fd, void *buf, size_t len)
{
	size_t n = 0;

	while (n < len) {
		ssize_t r = read(fd, (char *)buf + n, len - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die("read from the ring: %s", strerror(errno));
		if (r == 0)
			break;
		n += r;
	}
	return (int)n;
}

static void write_token(int fd, const struct token *t)
{
	ssize_t w;

	do
		w = write(fd, t, sizeof(*t));
	while (w < 0 && errno == EINTR);
	if (w != sizeof(*t))
		die("write to the ring: %s", w < 0 ? strerror(errno) : "short write");
}

static void *a1_helper(void *arg)
{
	(void)arg;
	/* Counts for A1 along with A1's main thread, until A1 exits. */
	for (;;) {
		bump();
		nap_us(2000);
	}
	return NULL;
}

/*
 * The ring loop of every ring process. Returns once the ring has ended
 * (end-of-file after R closed its end), having checked what it could.
 */
static void ring_loop(void)
{
	int in = ring[(me + NRING - 1) % NRING][0], out = ring[me][1];
	uint64_t last_seq[NTOKENS] = { 0 };
	long tokens = 0, after_go = 0, r_after_all_go = 0, absorbed = 0;
	int go_seen = 0, shared_ok = 0, all_go = 0, absorbing = 0;
	long snap[NRING] = { 0 };
	double deadline = 0;

	for (;;) {
		struct pollfd pfd = { .fd = in, .events = POLLIN };
		int pr = poll(&pfd, 1, 5);

		if (pr < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		bump();
		if (pr > 0) {
			struct token t;
			int n = read_full(in, &t, sizeof(t));

			if (n == 0) {
				if (!atomic_load(&sh->ending))
					die("end of file on the ring before the root ended it (tokens seen %ld)", tokens);
				break;
			}
			if (n != sizeof(t))
				die("a partial token of %d bytes on the ring", n);
			if (t.magic != TOKEN_MAGIC || t.id >= NTOKENS)
				die("garbage on the ring: magic %#x id %u seq %llu", t.magic, t.id,
				    (unsigned long long)t.seq);
			{
				uint64_t want = last_seq[t.id] ? last_seq[t.id] + NRING : (me == R ? NRING : (uint64_t)me);
				if (t.seq != want)
					die("token %u has seq %llu, want %llu (lost, duplicated or reordered bytes)", t.id,
					    (unsigned long long)t.seq, (unsigned long long)want);
			}
			last_seq[t.id] = t.seq;
			tokens++;
			if (me == R && tokens == 3 * NTOKENS) {
				printf("%s\n", tree_line);
				ready();
			}
			if (go_seen)
				after_go++;
			if (me == R && all_go)
				r_after_all_go++;
			if (absorbing) {
				if (++absorbed == NTOKENS) {
					/* The ring is empty: end it. */
					atomic_store(&sh->ending, 1);
					close(out);
					out = -1;
				}
			} else {
				nap_us(500);
				t.seq++;
				write_token(out, &t);
			}
		}

		if (!go_seen) {
			exit_if_orphaned();
			if (go_exists(go_file)) {
				go_seen = 1;
				deadline = now() + POST_GO_TIMEOUT;
				check_ids();
				for (int i = 0; i < NRING; i++)
					snap[i] = atomic_load(&sh->s[i].count);
				atomic_store(&sh->s[me].go_seen, 1);
			}
			continue;
		}
		if (now() > deadline)
			die("the ring did not end within %.0f s after go (tokens after go %ld, shared ok %d, "
			    "all saw go %d, absorbing %d)",
			    POST_GO_TIMEOUT, after_go, shared_ok, all_go, absorbing);
		if (!shared_ok) {
			int moved = 1;
			for (int i = 0; i < NRING; i++)
				if (i != me && atomic_load(&sh->s[i].count) <= snap[i])
					moved = 0;
			if (moved) {
				shared_ok = 1;
				atomic_store(&sh->s[me].shared_ok, 1);
			}
		}
		if (me == R && !all_go) {
			all_go = 1;
			for (int i = 0; i < NRING; i++)
				if (!atomic_load(&sh->s[i].go_seen))
					all_go = 0;
		}
		if (me == R && all_go && !absorbing && r_after_all_go >= 2 * NTOKENS) {
			int all_ok = 1;
			for (int i = 0; i < NRING; i++)
				if (!atomic_load(&sh->s[i].shared_ok))
					all_ok = 0;
			absorbing = all_ok;
		}
	}
	if (out >= 0)
		close(out);
	close(in);
	if (!go_seen)
		die("the ring ended before go");
	if (!shared_ok)
		bad("the other processes' counters did not move after go: the page is not shared any more");
	if (after_go < (me == R ? 2 * NTOKENS : NTOKENS))
		bad("only %ld tokens came by after go", after_go);
	check_ids();
}

/* Waits (bounded) for child pid to exit with status want. */
static void wait_child_exit(pid_t pid, const char *what, int want)
{
	double deadline = now() + POST_GO_TIMEOUT;
	int status = 0;
	pid_t r;

	while ((r = waitpid(pid, &status, WNOHANG)) == 0) {
		if (now() > deadline) {
			bad("%s (pid %d) did not exit within %.0f s", what, (int)pid, POST_GO_TIMEOUT);
			return;
		}
		sleep_10ms();
	}
	if (r != pid)
		bad("waitpid(%s, pid %d): %s", what, (int)pid, r < 0 ? strerror(errno) : "other pid");
	else if (!WIFEXITED(status) || WEXITSTATUS(status) != want)
		bad("%s (pid %d) ended with wait status %#x, want exit %d", what, (int)pid, status, want);
}

static char proc_state(pid_t pid)
{
	char path[64], buf[512], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p[2] : 0;
}

static pid_t fork_role(int role)
{
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid < 0)
		die("fork %s: %s", role_name[role], strerror(errno));
	if (pid == 0)
		me = role;
	return pid;
}

/* A and B: the child is forked by then; run the ring, wait for it. */
static void run_ring_parent(pid_t child, const char *what)
{
	ring_loop();
	wait_child_exit(child, what, 0);
	_exit(failures ? 1 : 0);
}

static void run_ring_leaf(void)
{
	ring_loop();
	_exit(failures ? 1 : 0);
}

static void wait_ready(int role, double deadline)
{
	while (!atomic_load(&sh->s[role].ready)) {
		if (now() > deadline)
			die("%s did not get ready", role_name[role]);
		sleep_10ms();
	}
}

static int solo(void)
{
	pid_t s = fork_role(A);
	char buf[64] = { 0 };
	int fd;

	if (s == 0) {
		record_ids();
		for (long polls = 0; !go_exists(go_file); polls++) {
			exit_if_orphaned();
			if (polls == GO_TIMEOUT_POLLS)
				die("no go file; giving up");
			sleep_10ms();
		}
		_exit(0);
	}
	printf("SOLO root=%d child=%d\n", (int)getpid(), (int)s);
	ready();
	wait_for_go(go_file);
	check_ids();
	fd = open(go_file, O_RDONLY);
	if (fd >= 0) {
		if (read(fd, buf, sizeof(buf) - 1) < 0)
			buf[0] = 0;
		close(fd);
	}
	if (!strncmp(buf, "alone", 5)) {
		int status;
		pid_t r = waitpid(-1, &status, WNOHANG);
		if (r != -1 || errno != ECHILD)
			bad("restored alone, but waitpid(-1) says %d (%s), not ECHILD", (int)r,
			    r < 0 ? strerror(errno) : "a child");
	} else {
		wait_child_exit(s, "the child", 0);
	}
	fflush(stdout);
	if (failures)
		exit(1);
	pass();
}

int main(int argc, char **argv)
{
	pid_t pid[NROLES] = { 0 };
	double deadline;
	pthread_t helper;
	int in, out;

	need_args(argc, argv, 1, "GO_FILE [solo]");
	go_file = argv[1];
	sh = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		fail("mmap: %s", strerror(errno));
	record_ids();
	if (argc > 2 && !strcmp(argv[2], "solo"))
		return solo();

	for (int i = 0; i < NRING; i++)
		if (pipe(ring[i]))
			fail("pipe: %s", strerror(errno));

	/* A, and A1 under it. */
	pid[A] = fork_role(A);
	if (pid[A] == 0) {
		if (setpgid(0, 0))
			die("setpgid: %s", strerror(errno));
		pid[A1] = fork_role(A1);
		if (pid[A1] == 0) {
			close_ring_except(ring[A][0], ring[A1][1]);
			record_ids();
			if (pthread_create(&helper, NULL, a1_helper, NULL))
				die("pthread_create");
			atomic_store(&sh->s[A1].ready, 1);
			run_ring_leaf();
		}
		close_ring_except(ring[R][0], ring[A][1]);
		record_ids();
		atomic_store(&sh->s[A].ready, 1);
		run_ring_parent(pid[A1], "a1");
	}
	setpgid(pid[A], pid[A]); /* no race with the child's own call */

	/* B, and B1 under it. */
	pid[B] = fork_role(B);
	if (pid[B] == 0) {
		if (setsid() < 0)
			die("setsid: %s", strerror(errno));
		pid[B1] = fork_role(B1);
		if (pid[B1] == 0) {
			close_ring_except(ring[B][0], ring[B1][1]);
			record_ids();
			atomic_store(&sh->s[B1].ready, 1);
			run_ring_leaf();
		}
		close_ring_except(ring[A1][0], ring[B][1]);
		record_ids();
		atomic_store(&sh->s[B].ready, 1);
		run_ring_parent(pid[B1], "b1");
	}

	/* C: a zombie to be. */
	pid[C] = fork_role(C);
	if (pid[C] == 0) {
		close_ring_except(-1, -1);
		record_ids();
		atomic_store(&sh->s[C].ready, 1);
		_exit(C_STATUS);
	}

	/* D: stops itself; continued by R after go. */
	pid[D] = fork_role(D);
	if (pid[D] == 0) {
		long nonce;

		close_ring_except(-1, -1);
		if (setpgid(0, 0))
			die("setpgid: %s", strerror(errno));
		record_ids();
		atomic_store(&sh->s[D].ready, 1);
		raise(SIGSTOP);
		/* Continued: by R after go, or by the kernel (with a SIGHUP
		 * first, which kills us) if R died. */
		for (long polls = 0; !go_exists(go_file); polls++) {
			exit_if_orphaned();
			if (polls == GO_TIMEOUT_POLLS)
				die("no go file; giving up");
			sleep_10ms();
		}
		check_ids();
		bump();
		deadline = now() + POST_GO_TIMEOUT;
		while (!(nonce = atomic_load(&sh->cont_nonce))) {
			if (now() > deadline)
				die("no nonce from the root in the shared page: the page is not shared any more");
			sleep_10ms();
		}
		atomic_store(&sh->d_reply, nonce + 1);
		_exit(failures ? 1 : 0);
	}

	setpgid(pid[D], pid[D]);

	/* R: the ring's first and last process. */
	in = ring[B1][0];
	out = ring[R][1];
	close_ring_except(in, out);
	atomic_store(&sh->s[R].ready, 1);
	deadline = now() + 20;
	for (int i = 0; i < NROLES; i++)
		wait_ready(i, deadline);
	pid[A1] = atomic_load(&sh->s[A1].pid);
	pid[B1] = atomic_load(&sh->s[B1].pid);
	while (proc_state(pid[C]) != 'Z' || proc_state(pid[D]) != 'T') {
		if (now() > deadline)
			fail("C is not a zombie (%c) or D not stopped (%c)", proc_state(pid[C]), proc_state(pid[D]));
		sleep_10ms();
	}
	for (uint32_t i = 0; i < NTOKENS; i++) {
		struct token t = { TOKEN_MAGIC, i, 1 };
		write_token(out, &t);
	}
	/* ring_loop prints READY once the tokens went around a few times. */
	snprintf(tree_line, sizeof(tree_line), "TREE root=%d a=%d a1=%d b=%d b1=%d c=%d d=%d", (int)getpid(),
		 (int)pid[A], (int)pid[A1], (int)pid[B], (int)pid[B1], (int)pid[C], (int)pid[D]);
	ring_loop();

	/* Only R runs here: the ring is over. */
	wait_child_exit(pid[C], "c (the zombie)", C_STATUS);
	atomic_store(&sh->cont_nonce, (long)getpid() * 1000 + 17);
	if (proc_state(pid[D]) != 'T')
		bad("d (pid %d) is in state %c before SIGCONT, not stopped", (int)pid[D], proc_state(pid[D]));
	if (kill(pid[D], SIGCONT))
		bad("kill(d, SIGCONT): %s", strerror(errno));
	wait_child_exit(pid[D], "d (the stopped one)", 0);
	if (atomic_load(&sh->d_reply) != atomic_load(&sh->cont_nonce) + 1)
		bad("d's answer in the shared page is %ld, want %ld", atomic_load(&sh->d_reply),
		    atomic_load(&sh->cont_nonce) + 1);
	wait_child_exit(pid[A], "a", 0);
	wait_child_exit(pid[B], "b", 0);
	{
		int status;
		pid_t r = waitpid(-1, &status, WNOHANG);
		if (r != -1 || errno != ECHILD)
			bad("an unexpected child: waitpid(-1) says %d", (int)r);
	}
	{
		long sum = 0;
		for (int i = 0; i < NROLES; i++)
			sum += atomic_load(&sh->s[i].count);
		if (sum != atomic_load(&sh->total))
			bad("the counters add up to %ld, the shared total is %ld", sum, atomic_load(&sh->total));
	}
	fflush(stdout);
	if (failures)
		exit(1);
	pass();
}
