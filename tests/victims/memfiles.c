/*
 * memfiles: files without a path to reopen, and objects rcr must refuse.
 *
 * usage: memfiles GO_FILE MODE [DIR]
 *
 * memfd: memfd A (sealable, sparse: data at 0 and at 1 MiB, size 2 MiB,
 *   seals SHRINK|GROW) on fd 10 (offset 1234) and fd 11 (dup of 10: one
 *   description), reopened O_RDONLY through /proc/self/fd on fd 12
 *   (offset 77, another description of the same inode); memfd B (not
 *   sealable) mapped MAP_SHARED and its fd closed; a child shares B's
 *   mapping and A's fds; memfd C write-sealed on fd 13; A mapped
 *   MAP_PRIVATE with one page written. After go: content, seals (and that
 *   they are enforced), offsets, the shared offset, the private page, and
 *   B seen by both processes (the child writes, the parent reads, and
 *   back).
 * ghost: DIR/ghost (mode 0641, sparse, 300 KiB) open O_RDWR on fd 20
 *   (offset 100) and O_RDONLY on fd 21 (offset 5), mapped MAP_SHARED,
 *   then unlinked. After go: both fds on one inode, still unlinked, same
 *   size, mode and content; a write through the mapping shows in the fd.
 * fifo: DIR/fifo opened O_RDONLY|O_NONBLOCK on fd 30, O_WRONLY on fd 31,
 *   O_RDWR on fd 32; pipe size 128 KiB; 3000 bytes buffered. After go:
 *   the bytes are back, byte-exact, the size too, and a write to fd 31
 *   reads back from fd 30.
 * big: DIR/big, 3 MiB of data, deleted and open on fd 20 (for
 *   --ghost-limit).
 * iouring, pidfd, mq, shm, msg: holds an io_uring fd, a pidfd,
 *   a POSIX message queue (fd 40), an attached SysV shared
 *   memory segment, a SysV message queue it sent to; rcr must refuse to
 *   dump. After go: the object still works.
 */
#define _GNU_SOURCE
#include "victim.h"
#include <fcntl.h>
#include <linux/io_uring.h>
#include <mqueue.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define MB (1024UL * 1024)
#define A_SEALS (F_SEAL_SHRINK | F_SEAL_GROW)

static void put(int fd, size_t off, size_t len, unsigned seed)
{
	char *b = malloc(len);
	fill(b, len, seed);
	if (pwrite(fd, b, len, off) != (ssize_t)len)
		fail("pwrite %zu at %zu: %s", len, off, strerror(errno));
	free(b);
}

static void expect(int fd, size_t off, size_t len, unsigned seed, const char *what)
{
	char *b = malloc(len);
	ssize_t n = pread(fd, b, len, off);
	if (n != (ssize_t)len)
		fail("%s: pread %zu at %zu gave %zd: %s", what, len, off, n, strerror(errno));
	long bad = check(b, len, seed);
	if (bad >= 0)
		fail("%s: wrong byte at %zu", what, off + bad);
	free(b);
}

static void expect_zero(int fd, size_t off, size_t len, const char *what)
{
	char *b = malloc(len);
	if (pread(fd, b, len, off) != (ssize_t)len)
		fail("%s: pread hole: %s", what, strerror(errno));
	for (size_t i = 0; i < len; i++)
		if (b[i])
			fail("%s: byte %zu of the hole is %d", what, off + i, b[i]);
	free(b);
}

static void at(int fd, int want, int to)
{
	if (dup2(fd, want) != want)
		fail("dup2 %d: %s", want, strerror(errno));
	if (fd != want && to)
		close(fd);
}

static off_t pos(int fd)
{
	return lseek(fd, 0, SEEK_CUR);
}

/* ---- memfd ---- */

static void memfd_setup(volatile char **shared, char **priv)
{
	int a = memfd_create("rcr A", MFD_ALLOW_SEALING);
	if (a < 0)
		fail("memfd_create: %s", strerror(errno));
	put(a, 0, 10000, 1);
	put(a, MB, 5000, 2);
	if (ftruncate(a, 2 * MB))
		fail("ftruncate: %s", strerror(errno));
	at(a, 10, 1);
	dup2(10, 11);
	lseek(10, 1234, SEEK_SET);
	int r = open("/proc/self/fd/10", O_RDONLY);
	if (r < 0)
		fail("reopen: %s", strerror(errno));
	at(r, 12, 1);
	lseek(12, 77, SEEK_SET);
	*priv = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, 10, 0);
	if (*priv == MAP_FAILED)
		fail("mmap private: %s", strerror(errno));
	(*priv)[PAGE + 5] = 'P';
	if (fcntl(10, F_ADD_SEALS, A_SEALS))
		fail("F_ADD_SEALS: %s", strerror(errno));

	int b = memfd_create("rcr B", 0);
	if (b < 0 || ftruncate(b, 16 * PAGE))
		fail("memfd B: %s", strerror(errno));
	*shared = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, b, 0);
	if (*shared == MAP_FAILED)
		fail("mmap shared: %s", strerror(errno));
	close(b);
	fill((char *)*shared + 3 * PAGE, PAGE, 3);

	int c = memfd_create("rcr C", MFD_ALLOW_SEALING);
	put(c, 0, 777, 4);
	if (fcntl(c, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SEAL))
		fail("sealing C: %s", strerror(errno));
	at(c, 13, 1);
}

static void memfd_check_common(volatile char *shared, const char *who)
{
	char what[64];
	snprintf(what, sizeof(what), "%s: memfd A", who);
	expect(11, 0, 10000, 1, what);
	expect_zero(11, 10000, MB - 10000, what);
	expect(11, MB, 5000, 2, what);
	struct stat st;
	if (fstat(10, &st) || st.st_size != (off_t)(2 * MB))
		fail("%s: size %ld", what, (long)st.st_size);
	if (check((char *)shared + 3 * PAGE, PAGE, 3) >= 0)
		fail("%s: memfd B's mapping lost its content", who);
}

static void memfd_check(volatile char *shared, char *priv, pid_t child)
{
	memfd_check_common(shared, "parent");
	if (fcntl(10, F_GET_SEALS) != A_SEALS)
		fail("memfd A seals %#x, want %#x", fcntl(10, F_GET_SEALS), A_SEALS);
	if (ftruncate(10, MB) == 0 || errno != EPERM)
		fail("memfd A: shrinking was not refused (F_SEAL_SHRINK)");
	if (pwrite(10, "x", 1, 2 * MB) >= 0 || errno != EPERM)
		fail("memfd A: growing was not refused (F_SEAL_GROW)");
	if (fcntl(13, F_GET_SEALS) != (F_SEAL_WRITE | F_SEAL_SEAL))
		fail("memfd C seals %#x", fcntl(13, F_GET_SEALS));
	if (write(13, "x", 1) >= 0 || errno != EPERM)
		fail("memfd C: writing was not refused (F_SEAL_WRITE)");
	expect(13, 0, 777, 4, "memfd C");
	if (pos(10) != 1234 || pos(12) != 77)
		fail("offsets %ld %ld, want 1234 77", (long)pos(10), (long)pos(12));
	lseek(11, 4321, SEEK_SET);
	if (pos(10) != 4321)
		fail("fds 10 and 11 no longer share their offset");
	if (fcntl(12, F_GETFL) & O_ACCMODE)
		fail("fd 12 is not O_RDONLY any more");
	struct stat s10, s12;
	fstat(10, &s10);
	fstat(12, &s12);
	if (s10.st_ino != s12.st_ino)
		fail("fds 10 and 12 are on different inodes");
	if (priv[PAGE + 5] != 'P')
		fail("the private page of memfd A lost its write");
	char c;
	if (pread(10, &c, 1, PAGE + 5) != 1 || c != (char)pattern(1, PAGE + 5))
		fail("the private write leaked into memfd A");
	/* B: the child writes 'C', we answer 'P'. */
	for (int i = 0; shared[0] != 'C'; i++) {
		if (i > 500)
			fail("the child's write to memfd B never showed");
		sleep_10ms();
	}
	shared[1] = 'P';
	int status;
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
		fail("the child failed (status %#x)", status);
}

static void memfd_child(const char *go, volatile char *shared)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	wait_for_go(go);
	memfd_check_common(shared, "child");
	shared[0] = 'C';
	for (int i = 0; shared[1] != 'P'; i++) {
		if (i > 500)
			fail("child: the parent's write to memfd B never showed");
		sleep_10ms();
	}
	exit(0);
}

static void run_memfd(const char *go)
{
	volatile char *shared;
	char *priv;
	memfd_setup(&shared, &priv);
	fflush(stdout);
	pid_t child = fork();
	if (child < 0)
		fail("fork: %s", strerror(errno));
	if (child == 0)
		memfd_child(go, shared);
	printf("child %d\n", child);
	ready();
	wait_for_go(go);
	memfd_check(shared, priv, child);
}

/* ---- ghost ---- */

static void run_ghost(const char *go, const char *dir)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/ghost", dir);
	umask(0);
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0641);
	if (fd < 0)
		fail("creating %s: %s", path, strerror(errno));
	put(fd, 0, 5000, 5);
	put(fd, 200 * 1024, 100 * 1024, 6);
	at(fd, 20, 1);
	lseek(20, 100, SEEK_SET);
	at(open(path, O_RDONLY), 21, 1);
	lseek(21, 5, SEEK_SET);
	char *map = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, 20, 0);
	if (map == MAP_FAILED)
		fail("mmap: %s", strerror(errno));
	if (unlink(path))
		fail("unlink: %s", strerror(errno));
	ready();
	wait_for_go(go);
	struct stat a, b;
	if (fstat(20, &a) || fstat(21, &b))
		fail("fstat: %s", strerror(errno));
	if (a.st_ino != b.st_ino)
		fail("fds 20 and 21 are on different inodes");
	if (a.st_nlink != 0 || access(path, F_OK) == 0)
		fail("the ghost is linked again (nlink %ld)", (long)a.st_nlink);
	if ((a.st_mode & 07777) != 0641 || a.st_size != 300 * 1024)
		fail("mode %o size %ld, want 641 %d", a.st_mode & 07777, (long)a.st_size, 300 * 1024);
	expect(21, 0, 5000, 5, "ghost");
	expect_zero(21, 5000, 200 * 1024 - 5000, "ghost");
	expect(21, 200 * 1024, 100 * 1024, 6, "ghost");
	if (pos(20) != 100 || pos(21) != 5)
		fail("offsets %ld %ld, want 100 5", (long)pos(20), (long)pos(21));
	if (check(map, 5000, 5) >= 0)
		fail("the mapping lost its content");
	map[7] = 'M';
	char c;
	if (pread(21, &c, 1, 7) != 1 || c != 'M')
		fail("a write through the mapping does not show in the fd");
	char link[4200], want[4200];
	ssize_t n = readlink("/proc/self/fd/20", link, sizeof(link) - 1);
	link[n > 0 ? n : 0] = 0;
	snprintf(want, sizeof(want), "%s (deleted)", path);
	if (strcmp(link, want))
		fail("fd 20 links to %s, want %s", link, want);
}

/* ---- fifo ---- */

static void run_fifo(const char *go, const char *dir)
{
	char path[4096], buf[4000];
	snprintf(path, sizeof(path), "%s/fifo", dir);
	if (mkfifo(path, 0600))
		fail("mkfifo: %s", strerror(errno));
	at(open(path, O_RDONLY | O_NONBLOCK), 30, 1);
	at(open(path, O_WRONLY), 31, 1);
	at(open(path, O_RDWR), 32, 1);
	if (fcntl(31, F_SETPIPE_SZ, 128 * 1024) < 0)
		fail("F_SETPIPE_SZ: %s", strerror(errno));
	fill(buf, 3000, 7);
	if (write(31, buf, 3000) != 3000)
		fail("write: %s", strerror(errno));
	ready();
	wait_for_go(go);
	int n = 0;
	if (ioctl(30, FIONREAD, &n) || n != 3000)
		fail("%d bytes buffered, want 3000", n);
	if (fcntl(32, F_GETPIPE_SZ) != 128 * 1024)
		fail("pipe size %d", fcntl(32, F_GETPIPE_SZ));
	if (!(fcntl(30, F_GETFL) & O_NONBLOCK) || (fcntl(31, F_GETFL) & O_ACCMODE) != O_WRONLY)
		fail("flags of fds 30/31 changed");
	if (read(30, buf, sizeof(buf)) != 3000 || check(buf, 3000, 7) >= 0)
		fail("the buffered bytes differ");
	if (write(31, "ping", 4) != 4 || read(32, buf, 4) != 4 || memcmp(buf, "ping", 4))
		fail("fds 31 and 32 are not connected through the FIFO");
	struct stat a, b;
	if (stat(path, &a) || fstat(30, &b) || a.st_ino != b.st_ino)
		fail("fd 30 is not the FIFO at %s", path);
}

/* ---- refused ---- */

static void run_refused(const char *go, const char *mode, const char *dir)
{
	int fd = -1, id = -1;
	char *seg = NULL;
	mqd_t q = -1;
	if (!strcmp(mode, "iouring")) {
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		fd = syscall(SYS_io_uring_setup, 4, &p);
	} else if (!strcmp(mode, "pidfd")) {
		fd = syscall(SYS_pidfd_open, getpid(), 0);
	} else if (!strcmp(mode, "mq")) {
		char name[64];
		snprintf(name, sizeof(name), "/rcr-test-%d", getpid());
		struct mq_attr attr = { .mq_maxmsg = 4, .mq_msgsize = 64 };
		q = mq_open(name, O_CREAT | O_RDWR, 0600, &attr);
		mq_unlink(name);
		fd = q;
		if (fd >= 0 && mq_send(q, "hello", 6, 1))
			fail("mq_send: %s", strerror(errno));
	} else if (!strcmp(mode, "shm")) {
		id = shmget(IPC_PRIVATE, 4 * PAGE, IPC_CREAT | 0600);
		seg = id < 0 ? NULL : shmat(id, NULL, 0);
		if (seg == (void *)-1 || !seg)
			fail("shm: %s", strerror(errno));
		shmctl(id, IPC_RMID, NULL);
		strcpy(seg, "shared");
		fd = 0;
	} else if (!strcmp(mode, "msg")) {
		id = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
		struct { long type; char text[8]; } m = { 1, "queued" };
		if (id < 0 || msgsnd(id, &m, sizeof(m.text), 0))
			fail("msg: %s", strerror(errno));
		fd = 0;
	} else if (!strcmp(mode, "big")) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/big", dir);
		fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
		if (fd >= 0) {
			put(fd, 0, 3 * MB, 8);
			unlink(path);
		}
	} else {
		fail("unknown mode %s", mode);
	}
	if (fd < 0)
		fail("%s: %s", mode, strerror(errno));
	if (fd > 0)
		at(fd, 40, 1);
	ready();
	wait_for_go(go);
	if (!strcmp(mode, "mq")) {
		char b[64];
		if (mq_receive(40, b, sizeof(b), NULL) != 6 || strcmp(b, "hello"))
			fail("the message queue lost its message");
	} else if (!strcmp(mode, "shm")) {
		if (strcmp(seg, "shared"))
			fail("the SysV segment lost its content");
		shmdt(seg);
	} else if (!strcmp(mode, "msg")) {
		struct { long type; char text[8]; } m;
		if (msgrcv(id, &m, sizeof(m.text), 0, IPC_NOWAIT) < 0 || strcmp(m.text, "queued"))
			fail("the SysV queue lost its message");
		msgctl(id, IPC_RMID, NULL);
	} else if (!strcmp(mode, "big")) {
		expect(40, 0, 3 * MB, 8, "big");
	} else if (fcntl(40, F_GETFD) < 0) {
		fail("fd 40 is gone");
	}
}

int main(int argc, char **argv)
{
	need_args(argc, argv, 2, "GO_FILE MODE [DIR]");
	const char *mode = argv[2], *dir = argc > 3 ? argv[3] : "/tmp";
	if (!strcmp(mode, "memfd"))
		run_memfd(argv[1]);
	else if (!strcmp(mode, "ghost"))
		run_ghost(argv[1], dir);
	else if (!strcmp(mode, "fifo"))
		run_fifo(argv[1], dir);
	else
		run_refused(argv[1], mode, dir);
	pass();
}
