/*
 * sharedfd: open file descriptions shared between fds and between
 * processes keep sharing after restore; regular files keep their flags.
 *
 * Set-up (DIR is argv[2]):
 *   DIR/shared.dat (SIZE pattern bytes) opened O_RDWR at fd 50, dup'd to
 *   fd 51; a forked child inherits fd 50 (one description in three fds of
 *   two processes), and opens its own description of the same file at
 *   fd 52 (offset 777). The parent reads 1000 bytes through fd 50.
 *   fd 53: DIR itself (O_DIRECTORY); fd 54: shared.dat O_PATH;
 *   fd 55: shared.dat O_DIRECT if the filesystem allows it (else a note);
 *   fd 56: DIR/append.log O_WRONLY|O_APPEND, shared with the child;
 *   fds 57-59: /dev/null (write), /dev/urandom, /dev/zero (read).
 *   A pipe (parent -> child) orders the checks after go; another (child
 *   -> parent) holds READY back until the child's fds are set up.
 * After go: the parent checks its offsets (50 and 51 at 1000), reads 10
 * bytes through fd 51 (offset 1010 for all three fds) and tells the child;
 * the child checks that its fd 50 moved to 1010 with the parent's read,
 * that its own fd 52 stayed at 777 and reads the right byte there, checks
 * the other fds' flags, appends "child\n" to the log and exits 0; the
 * parent waits for it, appends "parent\n" and checks the log reads
 * "before\nchild\nparent\n". PASS only if both passed.
 *
 * usage: sharedfd GO_FILE DIR
 */
#define _GNU_SOURCE
#include "victim.h"
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define SIZE 100000
#define SEED 17

static void expect_off(const char *who, int fd, long want)
{
	long off = lseek(fd, 0, SEEK_CUR);
	if (off != want)
		fail("%s: fd %d at offset %ld, expected %ld", who, fd, off, want);
}

static void expect_flags(const char *who, int fd, int mask, int want)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || (fl & mask) != want)
		fail("%s: fd %d has flags %#o (mask %#o), expected %#o", who, fd, fl, mask, want);
}

static void read_check(const char *who, int fd, long off, size_t n)
{
	unsigned char buf[64], want[64];
	if (read(fd, buf, n) != (ssize_t)n)
		fail("%s: read %zu bytes from fd %d: %s", who, n, fd, strerror(errno));
	for (size_t i = 0; i < n; i++)
		want[i] = pattern(SEED, off + i);
	if (memcmp(buf, want, n))
		fail("%s: fd %d: wrong bytes at offset %ld", who, fd, off);
}

static void common_checks(const char *who, int direct)
{
	struct stat st;
	expect_flags(who, 53, O_DIRECTORY | O_ACCMODE, O_DIRECTORY | O_RDONLY);
	if (fstat(53, &st) || !S_ISDIR(st.st_mode) || faccessat(53, "shared.dat", R_OK, 0))
		fail("%s: fd 53 is not the directory holding shared.dat", who);
	expect_flags(who, 54, O_PATH, O_PATH);
	if (fstat(54, &st) || st.st_size != SIZE)
		fail("%s: fstat of the O_PATH fd 54: size %ld", who, (long)st.st_size);
	if (direct)
		expect_flags(who, 55, O_DIRECT, O_DIRECT);
	expect_flags(who, 56, O_APPEND | O_ACCMODE, O_APPEND | O_WRONLY);
	expect_flags(who, 57, O_ACCMODE, O_WRONLY);
	char b[16];
	if (write(57, "x", 1) != 1 || read(58, b, 16) != 16 || read(59, b, 16) != 16 || b[0] || b[15])
		fail("%s: /dev/null, /dev/urandom or /dev/zero misbehave", who);
}

static int child_main(int rd, int up, int direct)
{
	char c;
	put_fd(open("shared.dat", O_RDONLY), 52);
	if (lseek(52, 777, SEEK_SET) != 777)
		fail("child: lseek");
	if (write(up, "r", 1) != 1 || close(up)) /* its fds are set: the parent may say READY */
		fail("child: pipe up");
	if (write(1, "", 0) < 0)
		fail("child: stdout");
	if (read(rd, &c, 1) != 1) /* set-up done: parent goes on */
		fail("child: read pipe");
	if (read(rd, &c, 1) != 1) /* after go: parent moved the shared offset */
		fail("child: read pipe after go");
	expect_off("child", 50, 1010);
	expect_off("child", 52, 777);
	read_check("child", 52, 777, 1);
	common_checks("child", direct);
	if (write(56, "child\n", 6) != 6)
		fail("child: append");
	return 0;
}

int main(int argc, char **argv)
{
	need_args(argc, argv, 2, "GO_FILE DIR");
	if (chdir(argv[2]))
		fail("chdir %s", argv[2]);
	static unsigned char data[SIZE];
	fill(data, SIZE, SEED);
	int fd = open("shared.dat", O_RDWR | O_CREAT | O_TRUNC, 0640);
	if (fd < 0 || write(fd, data, SIZE) != SIZE || lseek(fd, 0, SEEK_SET))
		fail("writing shared.dat");
	put_fd(fd, 50);
	put_fd(dup(50), 51);
	put_fd(open(".", O_RDONLY | O_DIRECTORY), 53);
	put_fd(open("shared.dat", O_PATH), 54);
	int d = open("shared.dat", O_RDONLY | O_DIRECT);
	int direct = d >= 0;
	if (direct)
		put_fd(d, 55);
	else
		say("note: O_DIRECT not supported here (%s); fd 55 left out", strerror(errno));
	put_fd(open("append.log", O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 0600), 56);
	if (write(56, "before\n", 7) != 7)
		fail("append");
	put_fd(open("/dev/null", O_WRONLY), 57);
	put_fd(open("/dev/urandom", O_RDONLY), 58);
	put_fd(open("/dev/zero", O_RDONLY), 59);
	int p[2], q[2];
	if (pipe(p) || pipe(q))
		fail("pipe");
	pid_t child = fork();
	if (child < 0)
		fail("fork");
	if (child == 0) {
		close(p[1]);
		close(q[0]);
		exit(child_main(p[0], q[1], direct));
	}
	close(p[0]);
	close(q[1]);
	char r;
	/* 'r', then EOF once the child closed its end: its fds are final. */
	if (read(q[0], &r, 1) != 1 || read(q[0], &r, 1) != 0 || close(q[0]))
		fail("pipe up from the child");
	unsigned char buf[1000];
	if (read(50, buf, 1000) != 1000 || memcmp(buf, data, 1000))
		fail("first read");
	if (write(p[1], "s", 1) != 1)
		fail("pipe");
	say("child %d", child);
	ready();
	wait_for_go(argv[1]);

	expect_off("parent", 50, 1000);
	expect_off("parent", 51, 1000);
	read_check("parent", 51, 1000, 10);
	expect_off("parent", 50, 1010);
	common_checks("parent", direct);
	if (write(p[1], "g", 1) != 1)
		fail("pipe after go");
	int st;
	if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st))
		fail("child failed (status %#x)", st);
	if (write(56, "parent\n", 7) != 7)
		fail("append");
	char log[64] = { 0 };
	int l = open("append.log", O_RDONLY);
	if (l < 0 || read(l, log, sizeof(log) - 1) < 0 || strcmp(log, "before\nchild\nparent\n"))
		fail("append.log reads %s", log);
	pass();
}
