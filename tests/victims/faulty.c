/*
 * faulty: victims for dumps that fail in the middle (tests/faults.rs).
 *
 * Mode "threads": the main thread creates a short-lived thread, joins it
 * and starts the next, without pause, until go: threads appear and vanish
 * during every dump, so freezing must catch them all or fail cleanly.
 * A 1 MiB buffer holds a pattern. After go: the pattern is intact, every
 * thread created ran (each adds 1 to a counter, checked against the
 * number created), at least one was created after READY; PASS.
 *
 * Mode "late": the root forks a child; the child holds a unix socketpair
 * on fds 10 and 11 with a message in flight carrying a file descriptor
 * (SCM_RIGHTS), which rcr refuses, so a dump of the tree fails late: after
 * the root was infected, read and cured. After go: the child reads the
 * message (still there, with its fd) and exits 0; the root checks its
 * pattern and the child's exit status; PASS.
 *
 * usage: faulty GO_FILE threads|late
 */
#define _GNU_SOURCE
#include "victim.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define BUF_SIZE (1UL << 20)
#define MSG "in flight"

static atomic_long ran;
static unsigned char *buf;

static void fill_buf(void)
{
	buf = malloc(BUF_SIZE);
	if (!buf)
		fail("malloc");
	for (size_t i = 0; i < BUF_SIZE; i++)
		buf[i] = (unsigned char)(i * 7 + 3);
}

static void check_pattern(void)
{
	for (size_t i = 0; i < BUF_SIZE; i++)
		if (buf[i] != (unsigned char)(i * 7 + 3))
			fail("pattern byte %zu is %u", i, buf[i]);
}

static void *one(void *arg)
{
	(void)arg;
	ran++;
	return NULL;
}

static int threads(const char *go)
{
	long created = 0, at_ready;
	pthread_t t;

	for (; created < 10; created++) {
		if (pthread_create(&t, NULL, one, NULL) || pthread_join(t, NULL))
			fail("pthread_create/join");
	}
	at_ready = created;
	ready();
	for (long polls = 0; !go_exists(go); polls++) {
		if (polls > GO_TIMEOUT_POLLS * 1000)
			fail("no go file");
		if (pthread_create(&t, NULL, one, NULL))
			fail("pthread_create: %s", strerror(errno));
		if (pthread_join(t, NULL))
			fail("pthread_join");
		created++;
		if (created % 4 == 0) {
			struct timespec ts = { 0, 200 * 1000 };
			nanosleep(&ts, NULL);
		}
	}
	check_pattern();
	if (ran != created)
		fail("%ld threads created, %ld ran", created, (long)ran);
	if (created <= at_ready)
		fail("no thread was created after READY");
	say("created %ld threads", created);
	return 0;
}

static void child_late(const char *go)
{
	int sv[2];
	char data[16] = MSG, got[16] = { 0 };
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { data, sizeof(MSG) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c;
	int fd = 0;

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) || dup2(sv[0], 10) < 0 || dup2(sv[1], 11) < 0)
		fail("socketpair/dup2: %s", strerror(errno));
	close(sv[0]);
	close(sv[1]);
	c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(11, &mh, 0) != sizeof(MSG))
		fail("sendmsg: %s", strerror(errno));
	wait_for_go(go);
	iov.iov_base = got;
	mh.msg_controllen = sizeof(cbuf);
	if (recvmsg(10, &mh, 0) != sizeof(MSG) || strcmp(got, MSG))
		fail("child: the message in flight is gone (%s)", got);
	c = CMSG_FIRSTHDR(&mh);
	if (!c || c->cmsg_type != SCM_RIGHTS)
		fail("child: the message lost its fd");
	exit(0);
}

static int late(const char *go)
{
	int st;
	pid_t pid = fork();

	if (pid < 0)
		fail("fork");
	if (pid == 0)
		child_late(go);
	/* let the child set up before READY */
	for (int i = 0; i < 50; i++)
		sleep_10ms();
	say("CHILD %d", pid);
	ready();
	wait_for_go(go);
	check_pattern();
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st))
		fail("the child ended with status %#x", st);
	return 0;
}

int main(int argc, char **argv)
{
	need_args(argc, argv, 2, "GO_FILE threads|late");
	fill_buf();
	if (!strcmp(argv[2], "threads"))
		threads(argv[1]);
	else if (!strcmp(argv[2], "late"))
		late(argv[1]);
	else
		fail("unknown mode %s", argv[2]);
	pass();
	return 0;
}
