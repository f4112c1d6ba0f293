/*
 * daemon: a daemon-like process in its own session.
 *
 * The harness starts it with setsid(). It chdirs to "/", sets umask 027 and
 * keeps /dev/null, /dev/zero and /dev/urandom open. After restore it checks
 * that it still leads its session and process group, that cwd and umask are
 * unchanged, and that the device fds still work: /dev/zero reads zeros,
 * /dev/urandom reads data, /dev/null reads EOF.
 *
 * usage: daemon GO_FILE   (GO_FILE must be an absolute path)
 */
#include "victim.h"
#include <fcntl.h>
#include <sys/stat.h>

static int open_dev(const char *path)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		fail("open %s: %s", path, strerror(errno));
	return fd;
}

int main(int argc, char **argv)
{
	unsigned char buf[4096];
	char cwd[4096];

	need_args(argc, argv, 1, "GO_FILE");
	if (argv[1][0] != '/')
		fail("the go file must be an absolute path");
	if (getsid(0) != getpid())
		fail("not started as a session leader (sid %d, pid %d)", getsid(0), getpid());
	if (chdir("/"))
		fail("chdir /: %s", strerror(errno));
	umask(027);
	int null_fd = open_dev("/dev/null");
	int zero_fd = open_dev("/dev/zero");
	int rand_fd = open_dev("/dev/urandom");

	ready();
	wait_for_go(argv[1]);

	if (getsid(0) != getpid())
		fail("sid is %d, expected %d", getsid(0), getpid());
	if (getpgrp() != getpid())
		fail("pgid is %d, expected %d", getpgrp(), getpid());
	if (!getcwd(cwd, sizeof(cwd)) || strcmp(cwd, "/"))
		fail("cwd is not /");
	mode_t old = umask(022);
	if (old != 027)
		fail("umask is %03o, expected 027", (unsigned)old);

	memset(buf, 0xa5, sizeof(buf));
	if (read(zero_fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
		fail("read /dev/zero: %s", strerror(errno));
	for (size_t i = 0; i < sizeof(buf); i++)
		if (buf[i])
			fail("/dev/zero returned a non-zero byte");

	memset(buf, 0, sizeof(buf));
	if (read(rand_fd, buf, 64) != 64)
		fail("read /dev/urandom: %s", strerror(errno));
	int nonzero = 0;
	for (int i = 0; i < 64; i++)
		nonzero += buf[i] != 0;
	if (nonzero < 32)
		fail("/dev/urandom returned %d non-zero bytes of 64", nonzero);

	ssize_t n = read(null_fd, buf, sizeof(buf));
	if (n != 0)
		fail("read /dev/null returned %zd, expected 0 (EOF)", n);
	pass();
}
