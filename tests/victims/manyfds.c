/*
 * manyfds: hundreds of open file descriptions of one inode, each in two fds
 * of the parent and inherited by a child; after restore every fd must refer
 * to the right one (rcr's dedupe compares descriptions with kcmp; all
 * eventfds share one anonymous inode, all opens of one file its inode).
 *
 * Set-up (DIR is argv[2]):
 *   fds 100..399: NEV eventfds, eventfd 100+i with counter i+1;
 *   fds 400..699: fd 400+j is a dup of eventfd 100+EV_PERM(j);
 *   fds 700..799: NF opens of DIR/data (O_RDWR), open 700+i at offset 10*i;
 *   fds 800..899: fd 800+j is a dup of open 700+F_PERM(j).
 *   A forked child inherits them all and waits (prints "child PID").
 * After go: the child checks every counter and offset through /proc/self
 * fdinfo (nothing changes), adds 1000000 to each eventfd through fds
 * 100..399 and exits 0. The parent waits for it, then reads every eventfd
 * through its dup (i+1+1000000 expected: the dup, the original and the
 * child's fd are one description) and checks every dup's offset, moves
 * each open through its dup and sees the original move.
 *
 * With a third argument N (the "big" mode), the parent also holds N more
 * eventfds at fds 1000..1000+N-1, eventfd 1000+k with counter 7*k+3 (the
 * soft RLIMIT_NOFILE is raised to the hard limit first); the parent checks
 * each counter after go through fdinfo. rcr's limit being that of the
 * tree, N near the limit's half leaves rcr no room for a second copy of
 * every description above the tree's numbers.
 *
 * usage: manyfds GO_FILE DIR [N]
 */
#define _GNU_SOURCE
#include "victim.h"
#include <fcntl.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/wait.h>

#define NEV 300
#define NF 100
#define EV_PERM(j) (((j) * 7) % NEV)
#define F_PERM(j) (((j) * 13) % NF)

/* The number after `key` in /proc/self/fdinfo/FD (in `base`), or -1. */
static long long fdinfo_in(int fd, const char *key, int base)
{
	char path[64], line[256];
	long long v = -1;
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	FILE *f = fopen(path, "r");
	if (!f)
		fail("%s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, strlen(key)))
			v = strtoll(line + strlen(key), NULL, base);
	fclose(f);
	return v;
}

/* eventfd-count is in hex, pos in decimal. */
static long long fdinfo(int fd, const char *key)
{
	return fdinfo_in(fd, key, strcmp(key, "eventfd-count:") ? 10 : 16);
}

static int big;

static void set_up(const char *dir)
{
	char path[4096];
	struct rlimit rl = { 1024, 1024 };
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		fail("getrlimit: %s", strerror(errno));
	rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < (rlim_t)1000 + big + 10)
		fail("RLIMIT_NOFILE %lu is too low for %d more fds", (unsigned long)rl.rlim_cur, big);
	for (int k = 0; k < big; k++)
		put_fd(eventfd(7 * k + 3, 0), 1000 + k);
	for (int i = 0; i < NEV; i++)
		put_fd(eventfd(i + 1, 0), 100 + i);
	for (int j = 0; j < NEV; j++)
		put_fd(dup(100 + EV_PERM(j)), 400 + j);
	snprintf(path, sizeof(path), "%s/data", dir);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || ftruncate(fd, 10 * NF + 4096) != 0)
		fail("%s: %s", path, strerror(errno));
	close(fd);
	for (int i = 0; i < NF; i++) {
		put_fd(open(path, O_RDWR), 700 + i);
		if (lseek(700 + i, 10 * i, SEEK_SET) != 10 * i)
			fail("lseek fd %d: %s", 700 + i, strerror(errno));
	}
	for (int j = 0; j < NF; j++)
		put_fd(dup(700 + F_PERM(j)), 800 + j);
}

static void child_check(void)
{
	for (int i = 0; i < NEV; i++) {
		if (fdinfo(100 + i, "eventfd-count:") != i + 1)
			fail("child: eventfd fd %d has count %lld, expected %d", 100 + i, fdinfo(100 + i, "eventfd-count:"), i + 1);
		if (eventfd_write(100 + i, 1000000) != 0)
			fail("child: eventfd_write fd %d: %s", 100 + i, strerror(errno));
	}
	for (int i = 0; i < NF; i++)
		if (fdinfo(700 + i, "pos:") != 10 * i)
			fail("child: fd %d at offset %lld, expected %d", 700 + i, fdinfo(700 + i, "pos:"), 10 * i);
	exit(0);
}

static void parent_check(pid_t child)
{
	int st;
	for (int k = 0; k < big; k++)
		if (fdinfo(1000 + k, "eventfd-count:") != 7 * k + 3)
			fail("eventfd fd %d has count %lld, expected %d", 1000 + k, fdinfo(1000 + k, "eventfd-count:"), 7 * k + 3);
	if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail("the child failed (status %#x)", st);
	for (int j = 0; j < NEV; j++) {
		eventfd_t v = 0;
		if (eventfd_read(400 + j, &v) != 0)
			fail("eventfd_read fd %d: %s", 400 + j, strerror(errno));
		if (v != (eventfd_t)EV_PERM(j) + 1 + 1000000)
			fail("fd %d (dup of %d) reads %llu, expected %d", 400 + j, 100 + EV_PERM(j), (unsigned long long)v, EV_PERM(j) + 1 + 1000000);
	}
	for (int j = 0; j < NF; j++) {
		int orig = 700 + F_PERM(j);
		if (lseek(800 + j, 0, SEEK_CUR) != 10 * F_PERM(j))
			fail("fd %d (dup of %d) at offset %ld, expected %d", 800 + j, orig, (long)lseek(800 + j, 0, SEEK_CUR), 10 * F_PERM(j));
		lseek(800 + j, 5000 + j, SEEK_SET);
		if (lseek(orig, 0, SEEK_CUR) != 5000 + j)
			fail("fd %d did not move with its dup %d", orig, 800 + j);
	}
}

int main(int argc, char **argv)
{
	need_args(argc, argv, 2, "GO_FILE DIR [N]");
	big = argc > 3 ? atoi(argv[3]) : 0;
	set_up(argv[2]);
	pid_t child = fork();
	if (child < 0)
		fail("fork: %s", strerror(errno));
	if (child == 0) {
		wait_for_go(argv[1]);
		child_check();
	}
	say("child %d", child);
	ready();
	wait_for_go(argv[1]);
	parent_check(child);
	pass();
}
