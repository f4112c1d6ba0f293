/*
 * badfd: a process rcr must refuse to dump.
 *
 * Mode "socket": holds a unix socketpair on fds 10 and 11, with a message
 * in flight that carries a file descriptor (SCM_RIGHTS), which rcr cannot
 * carry. Mode "pipe": holds the read end of a pipe on fd 10, with a
 * message in flight, whose write end (fd 11) only a child holds; dumped
 * with --scope process, that end is outside the dump. rcr dump must
 * refuse, name the fd in its error, and leave the process running
 * untouched: after go the message is still there to read.
 *
 * usage: badfd GO_FILE pipe|socket
 */
#include "victim.h"
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define MSG "still here"

int main(int argc, char **argv)
{
	char buf[32] = { 0 };
	int fds[2], rc;

	need_args(argc, argv, 2, "GO_FILE pipe|socket");
	if (!strcmp(argv[2], "pipe"))
		rc = pipe(fds);
	else if (!strcmp(argv[2], "socket"))
		rc = socketpair(AF_UNIX, SOCK_STREAM, 0, fds);
	else
		fail("unknown mode %s", argv[2]);
	if (rc)
		fail("%s: %s", argv[2], strerror(errno));
	/* fds[0] reads, fds[1] writes; put them on fixed numbers. */
	if (dup2(fds[0], 10) != 10 || dup2(fds[1], 11) != 11)
		fail("dup2: %s", strerror(errno));
	close(fds[0]);
	close(fds[1]);
	if (!strcmp(argv[2], "socket")) {
		/* The message carries fd 0 (SCM_RIGHTS). */
		union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int))]; } ctl;
		struct iovec iov = { (void *)MSG, sizeof(MSG) };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof(ctl.b) };
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		int fd0 = 0;
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd0, sizeof(int));
		if (sendmsg(11, &m, 0) != sizeof(MSG))
			fail("sendmsg: %s", strerror(errno));
	} else if (write(11, MSG, sizeof(MSG)) != sizeof(MSG)) {
		fail("write: %s", strerror(errno));
	}

	pid_t child = -1;
	int status;
	if (!strcmp(argv[2], "pipe")) {
		fflush(stdout);
		child = fork();
		if (child < 0)
			fail("fork: %s", strerror(errno));
		if (child == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the victim */
			close(10);
			wait_for_go(argv[1]);
			_exit(0);
		}
		close(11);
	}

	printf("%s fds 10 11\n", argv[2]);
	ready();
	wait_for_go(argv[1]);

	if (read(10, buf, sizeof(buf)) != sizeof(MSG) || strcmp(buf, MSG))
		fail("the message in the %s is gone", argv[2]);
	if (child > 0 && (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status)))
		fail("the pipe's writer did not exit 0 (status %#x)", status);
	pass();
}
