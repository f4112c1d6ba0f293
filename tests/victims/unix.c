/*
 * unix: unix domain sockets survive dump/restore (and dump -R).
 *
 * Set up before READY (every queue is checked byte-exact after go):
 *   sp   stream socketpair: 3000 bytes queued a->b, 1000 bytes b->a; on
 *        sp[0] SO_SNDBUF 65536 and SO_PEEK_OFF moved to 10 by a peek.
 *   dg   datagram socketpair: 5 messages 0->1 (lengths 1, 100, 1000, 7,
 *        3000), 2 messages 1->0: boundaries checked.
 *   sq   seqpacket socketpair: 3 records 0->1, then shutdown(sq[0], SHUT_WR)
 *        and SO_PASSCRED on sq[0]:
 *        sq[1] reads the 3 records then end-of-file; sq[0] cannot send.
 *   L    stream listener on DIR/l.sock, backlog 5, mode 0640: c1
 *        connected and accepted as a1 with data queued both ways; c2
 *        connected but not accepted. After go: accept returns c2's
 *        connection, data flows both ways, names are DIR/l.sock, and a new
 *        client can still connect.
 *   srv  datagram server on the abstract name @rcr-unix-PID; cl bound to
 *        @rcr-unix-PID-cl and connected to srv: 3 messages cl->srv (sender
 *        names checked), 1 reply srv->cl.
 *   or   stream socketpair whose other end was closed after writing: the
 *        bytes then end-of-file.
 *   sh   datagram socketpair shared with a child process C: each queued a
 *        message for the other before READY; after go C reads its message
 *        and answers, the root reads both (in order) and reaps C (exit 0).
 * Prints "UNIX path=DIR/l.sock child=C" before READY.
 *
 * usage: unix GO_FILE DIR
 */
#define _GNU_SOURCE
#include "victim.h"
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

static char lpath[108];
static char srvname[64], clname[64];

#define CHECK(c, ...) do { if (!(c)) fail(__VA_ARGS__); } while (0)

static socklen_t mkaddr(struct sockaddr_un *a, const char *name, int abstract)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	size_t n = strlen(name);
	if (abstract) {
		memcpy(a->sun_path + 1, name, n);
		return offsetof(struct sockaddr_un, sun_path) + 1 + n;
	}
	memcpy(a->sun_path, name, n);
	return offsetof(struct sockaddr_un, sun_path) + n + 1;
}

static void xsend(int fd, const void *b, size_t n, const char *what)
{
	ssize_t r = send(fd, b, n, MSG_NOSIGNAL);
	CHECK(r == (ssize_t)n, "send %s: %zd of %zu: %s", what, r, n, strerror(errno));
}

/* Reads exactly n bytes (stream) and checks the pattern. */
static void read_pattern(int fd, size_t n, unsigned seed, const char *what)
{
	char *b = malloc(n);
	size_t got = 0;
	while (got < n) {
		ssize_t r = recv(fd, b + got, n - got, MSG_DONTWAIT);
		CHECK(r > 0, "%s: read %zd after %zu of %zu bytes: %s", what, r, got, n, strerror(errno));
		got += r;
	}
	long bad = check(b, n, seed);
	CHECK(bad < 0, "%s: wrong byte at %ld", what, bad);
	free(b);
}

/* Receives one message of exactly n bytes with the pattern. */
static void recv_msg(int fd, size_t n, unsigned seed, const char *what)
{
	char b[8192];
	ssize_t r = recv(fd, b, sizeof(b), MSG_DONTWAIT);
	CHECK(r == (ssize_t)n, "%s: message of %zd bytes, want %zu (%s)", what, r, n, r < 0 ? strerror(errno) : "");
	long bad = check(b, n, seed);
	CHECK(bad < 0, "%s: wrong byte at %ld", what, bad);
}

static void expect_empty(int fd, const char *what)
{
	char b[16];
	ssize_t r = recv(fd, b, sizeof(b), MSG_DONTWAIT);
	CHECK(r < 0 && errno == EAGAIN, "%s: expected an empty queue, recv gave %zd (%s)", what, r, strerror(errno));
}

static void expect_name(int fd, int peer, const char *want, const char *what)
{
	struct sockaddr_un a;
	socklen_t len = sizeof(a);
	int r = peer ? getpeername(fd, (struct sockaddr *)&a, &len) : getsockname(fd, (struct sockaddr *)&a, &len);
	CHECK(r == 0, "%s: get%sname: %s", what, peer ? "peer" : "sock", strerror(errno));
	CHECK(len > offsetof(struct sockaddr_un, sun_path) && strcmp(a.sun_path, want) == 0, "%s: name is '%.*s', want '%s'", what,
	      (int)(len - offsetof(struct sockaddr_un, sun_path)), a.sun_path, want);
}

static int getopt_int(int fd, int opt)
{
	int v = -99;
	socklen_t l = sizeof(v);
	getsockopt(fd, SOL_SOCKET, opt, &v, &l);
	return v;
}

static const size_t dg_len[5] = { 1, 100, 1000, 7, 3000 };

int main(int argc, char **argv)
{
	need_args(argc, argv, 2, "GO_FILE DIR");
	const char *go = argv[1];
	int sp[2], dg[2], sq[2], or[2], sh[2];
	static char big[4096];

	snprintf(lpath, sizeof(lpath), "%s/l.sock", argv[2]);
	snprintf(srvname, sizeof(srvname), "rcr-unix-%d", getpid());
	snprintf(clname, sizeof(clname), "rcr-unix-%d-cl", getpid());

	/* sp: stream pair, data both ways, SO_SNDBUF, SO_PEEK_OFF 10. */
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0, "socketpair: %s", strerror(errno));
	int sndbuf = 65536;
	setsockopt(sp[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	int sp_sndbuf = getopt_int(sp[0], SO_SNDBUF);
	fill(big, 3000, 11);
	xsend(sp[0], big, 3000, "sp a->b");
	fill(big, 1000, 12);
	xsend(sp[1], big, 1000, "sp b->a");
	int zero = 0;
	setsockopt(sp[0], SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero));
	CHECK(recv(sp[0], big, 10, MSG_PEEK) == 10, "peek 10 bytes");

	/* dg: datagram pair. */
	CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) == 0, "socketpair dgram");
	for (int i = 0; i < 5; i++) {
		fill(big, dg_len[i], 20 + i);
		xsend(dg[0], big, dg_len[i], "dg 0->1");
	}
	for (int i = 0; i < 2; i++) {
		fill(big, 50 + i, 30 + i);
		xsend(dg[1], big, 50 + i, "dg 1->0");
	}

	/* sq: seqpacket pair, 3 records then shutdown. */
	CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sq) == 0, "socketpair seqpacket");
	for (int i = 0; i < 3; i++) {
		fill(big, 10 * (i + 1), 40 + i);
		xsend(sq[0], big, 10 * (i + 1), "sq");
	}
	CHECK(shutdown(sq[0], SHUT_WR) == 0, "shutdown");
	int one = 1;
	setsockopt(sq[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof(one));

	/* L: listener with an accepted and a pending connection. */
	struct sockaddr_un la;
	socklen_t llen = mkaddr(&la, lpath, 0);
	unlink(lpath);
	int L = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
	CHECK(bind(L, (struct sockaddr *)&la, llen) == 0, "bind %s: %s", lpath, strerror(errno));
	chmod(lpath, 0640);
	CHECK(listen(L, 5) == 0, "listen");
	int c1 = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(connect(c1, (struct sockaddr *)&la, llen) == 0, "connect c1: %s", strerror(errno));
	int a1 = accept(L, NULL, NULL);
	CHECK(a1 >= 0, "accept a1: %s", strerror(errno));
	xsend(c1, "hello from c1", 13, "c1");
	xsend(a1, "hello from a1!", 14, "a1");
	int c2 = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(connect(c2, (struct sockaddr *)&la, llen) == 0, "connect c2: %s", strerror(errno));

	/* srv/cl: abstract datagram server and a connected client. */
	struct sockaddr_un sa, ca;
	socklen_t slen = mkaddr(&sa, srvname, 1), clen = mkaddr(&ca, clname, 1);
	int srv = socket(AF_UNIX, SOCK_DGRAM, 0), cl = socket(AF_UNIX, SOCK_DGRAM, 0);
	CHECK(bind(srv, (struct sockaddr *)&sa, slen) == 0, "bind @%s: %s", srvname, strerror(errno));
	CHECK(bind(cl, (struct sockaddr *)&ca, clen) == 0, "bind @%s: %s", clname, strerror(errno));
	CHECK(connect(cl, (struct sockaddr *)&sa, slen) == 0, "connect cl");
	for (int i = 0; i < 3; i++) {
		fill(big, 200 + i, 50 + i);
		xsend(cl, big, 200 + i, "cl");
	}
	CHECK(sendto(srv, "reply", 5, 0, (struct sockaddr *)&ca, clen) == 5, "sendto cl");

	/* or: the other end wrote and closed. */
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, or) == 0, "socketpair or");
	xsend(or[1], "last words", 10, "or");
	close(or[1]);

	/* sh: shared with a child. */
	CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, sh) == 0, "socketpair sh");
	pid_t root = getpid();
	pid_t child = fork();
	CHECK(child >= 0, "fork");
	if (child == 0) {
		xsend(sh[1], "from-child-before", 17, "child");
		for (long polls = 0; !go_exists(go); polls++) {
			if (getppid() != root || polls == GO_TIMEOUT_POLLS)
				_exit(3);
			sleep_10ms();
		}
		char b[64];
		struct pollfd p = { sh[1], POLLIN, 0 };
		poll(&p, 1, 5000);
		ssize_t r = recv(sh[1], b, sizeof(b), MSG_DONTWAIT);
		if (r != 18 || memcmp(b, "from-parent-before", 18) != 0) {
			say("FAIL: child: read %zd bytes", r);
			_exit(1);
		}
		xsend(sh[1], "child-after", 11, "child after");
		_exit(0);
	}
	xsend(sh[0], "from-parent-before", 18, "parent");
	{
		/* Wait until the child's message is queued. */
		struct pollfd p = { sh[0], POLLIN, 0 };
		CHECK(poll(&p, 1, 10000) == 1, "child never wrote");
	}

	say("UNIX path=%s child=%d", lpath, child);
	ready();
	wait_for_go(go);

	/* sp */
	CHECK(getopt_int(sp[0], SO_PEEK_OFF) == 10, "sp[0] SO_PEEK_OFF is %d, want 10", getopt_int(sp[0], SO_PEEK_OFF));
	CHECK(getopt_int(sp[0], SO_SNDBUF) == sp_sndbuf, "sp[0] SO_SNDBUF is %d, want %d", getopt_int(sp[0], SO_SNDBUF), sp_sndbuf);
	CHECK(recv(sp[0], big, 5, MSG_PEEK) == 5, "peek at offset 10");
	fill(big + 100, 1000, 12);
	CHECK(memcmp(big, big + 100 + 10, 5) == 0, "peek at offset 10 returned other bytes");
	int off = -1;
	setsockopt(sp[0], SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off));
	read_pattern(sp[1], 3000, 11, "sp a->b");
	read_pattern(sp[0], 1000, 12, "sp b->a");
	expect_empty(sp[0], "sp[0]");
	expect_empty(sp[1], "sp[1]");
	xsend(sp[0], "x", 1, "sp after");
	CHECK(recv(sp[1], big, 10, 0) == 1 && big[0] == 'x', "sp after go");

	/* dg */
	for (int i = 0; i < 5; i++)
		recv_msg(dg[1], dg_len[i], 20 + i, "dg 0->1");
	for (int i = 0; i < 2; i++)
		recv_msg(dg[0], 50 + i, 30 + i, "dg 1->0");
	expect_empty(dg[0], "dg[0]");
	expect_empty(dg[1], "dg[1]");

	/* sq */
	for (int i = 0; i < 3; i++)
		recv_msg(sq[1], 10 * (i + 1), 40 + i, "sq record");
	CHECK(recv(sq[1], big, 10, MSG_DONTWAIT) == 0, "sq: no end-of-file after the records");
	CHECK(send(sq[0], "y", 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && errno == EPIPE, "sq[0] could send after shutdown(SHUT_WR)");

	/* L */
	CHECK(getopt_int(sq[0], SO_PASSCRED) == 1, "sq[0] lost SO_PASSCRED");
	CHECK(getopt_int(L, SO_ACCEPTCONN) == 1, "L is not listening");
	CHECK(recv(a1, big, 100, MSG_DONTWAIT) == 13 && memcmp(big, "hello from c1", 13) == 0, "a1 did not get c1's bytes");
	CHECK(recv(c1, big, 100, MSG_DONTWAIT) == 14 && memcmp(big, "hello from a1!", 14) == 0, "c1 did not get a1's bytes");
	expect_name(a1, 0, lpath, "a1 sockname");
	expect_name(c1, 1, lpath, "c1 peername");
	expect_name(L, 0, lpath, "L sockname");
	int a2 = accept(L, NULL, NULL);
	CHECK(a2 >= 0, "accept of the pending connection: %s", strerror(errno));
	CHECK(accept(L, NULL, NULL) < 0 && errno == EAGAIN, "a second pending connection appeared");
	expect_name(a2, 0, lpath, "a2 sockname");
	expect_name(c2, 1, lpath, "c2 peername");
	xsend(c2, "c2->a2", 6, "c2");
	xsend(a2, "a2->c2!", 7, "a2");
	CHECK(recv(a2, big, 100, MSG_DONTWAIT) == 6, "a2 recv");
	CHECK(recv(c2, big, 100, MSG_DONTWAIT) == 7, "c2 recv");
	int c3 = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(connect(c3, (struct sockaddr *)&la, llen) == 0, "a new client cannot connect to %s: %s", lpath, strerror(errno));
	struct stat st;
	CHECK(stat(lpath, &st) == 0 && (st.st_mode & 07777) == 0640, "%s mode %o, want 0640", lpath, st.st_mode & 07777);

	/* srv/cl */
	for (int i = 0; i < 3; i++) {
		struct sockaddr_un from;
		socklen_t flen = sizeof(from);
		ssize_t r = recvfrom(srv, big, sizeof(big), MSG_DONTWAIT, (struct sockaddr *)&from, &flen);
		CHECK(r == 200 + i && check(big, r, 50 + i) < 0, "srv message %d: %zd bytes", i, r);
		CHECK(flen == clen && memcmp(from.sun_path, ca.sun_path, clen - offsetof(struct sockaddr_un, sun_path)) == 0,
		      "srv message %d: sender is not @%s", i, clname);
	}
	expect_empty(srv, "srv");
	CHECK(recv(cl, big, 100, MSG_DONTWAIT) == 5 && memcmp(big, "reply", 5) == 0, "cl did not get the reply");
	xsend(cl, "after", 5, "cl after");
	CHECK(recv(srv, big, 100, MSG_DONTWAIT) == 5, "srv did not get cl's message after go");

	/* or */
	CHECK(recv(or[0], big, 100, MSG_DONTWAIT) == 10 && memcmp(big, "last words", 10) == 0, "or: lost the last words");
	CHECK(recv(or[0], big, 100, MSG_DONTWAIT) == 0, "or: no end-of-file");

	/* sh */
	char b[64];
	CHECK(recv(sh[0], b, sizeof(b), MSG_DONTWAIT) == 17 && memcmp(b, "from-child-before", 17) == 0, "sh: the child's first message");
	struct pollfd p = { sh[0], POLLIN, 0 };
	CHECK(poll(&p, 1, 10000) == 1, "sh: the child did not answer");
	CHECK(recv(sh[0], b, sizeof(b), MSG_DONTWAIT) == 11 && memcmp(b, "child-after", 11) == 0, "sh: the child's answer");
	int status;
	CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child ended with status %#x", status);
	unlink(lpath);
	pass();
}
