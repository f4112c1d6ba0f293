/*
 * inet: TCP and UDP sockets for tests/inet.rs.
 *
 *   inet GO_FILE sockets UDPPORT
 *     a TCP listener on 127.0.0.1 with options, one on [::1] (V6ONLY),
 *     a dual-stack one on [::] (V6ONLY 0), a TCP socket bound and not
 *     connected and one neither (both with options), a UDP socket bound on
 *     127.0.0.1 and one on [::1] connected to the test's [::1]:UDPPORT.
 *     Prints "PORTS l4=.. l6=.. ld=.. c4=.. u4=..". After go: every name,
 *     peer and option as set; each listener accepts a new connection from
 *     the test and reads "x" from it; u4 answers the test's "ping" with
 *     "pong"; u6 sends "hello" and waits for "reply". Then PASS.
 *   inet GO_FILE server v4|v6
 *     a TCP server on loopback; prints "PORT p"; accepts one client, sends
 *     as much of the pattern as the socket takes (most of it stays in its
 *     send queue: the client does not read yet), reads nothing (what the
 *     client sends stays queued), then READY. After go: reads the client's
 *     pattern stream to its end while sending 1 MiB more of its own, then
 *     shuts its sending side; prints "GOT n SENT m" and PASS if every byte
 *     read followed the pattern.
 *   inet GO_FILE backlog
 *     a listener on 127.0.0.1 that never accepts; prints "PORT p"; READY.
 *   inet GO_FILE timewait
 *     a listener on 127.0.0.1 without SO_REUSEADDR and a connection of its
 *     own, closed server side first: TIME_WAIT on the listener's port;
 *     prints "PORT p"; READY.
 *   inet GO_FILE established
 *     connects to itself through a listener (both ends in the process),
 *     prints "PORT p"; READY; after go PASS.
 *
 * The pattern: byte i of a stream is i % 251.
 */
#define _GNU_SOURCE
#include "victim.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#define X(call) do { if ((call) != 0) fail("%s:%d %s: %s", __FILE__, __LINE__, #call, strerror(errno)); } while (0)

static void seti(int s, int level, int opt, int v) { X(setsockopt(s, level, opt, &v, sizeof(v))); }
static int geti(int s, int level, int opt)
{
	int v = 0;
	socklen_t l = sizeof(v);
	X(getsockopt(s, level, opt, &v, &l));
	return v;
}
static void want(int s, const char *what, int level, int opt, int v)
{
	int got = geti(s, level, opt);
	if (got != v)
		fail("%s: option %d/%d is %d, expected %d", what, level, opt, got, v);
}

static int port_of(int s)
{
	struct sockaddr_storage a;
	socklen_t l = sizeof(a);
	X(getsockname(s, (struct sockaddr *)&a, &l));
	return ntohs(a.ss_family == AF_INET ? ((struct sockaddr_in *)&a)->sin_port : ((struct sockaddr_in6 *)&a)->sin6_port);
}

static void bind4(int s, const char *ip, int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, ip, &a.sin_addr);
	X(bind(s, (struct sockaddr *)&a, sizeof(a)));
}

static void bind6(int s, const char *ip, int port)
{
	struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(port) };
	inet_pton(AF_INET6, ip, &a.sin6_addr);
	X(bind(s, (struct sockaddr *)&a, sizeof(a)));
}

/* The names of a socket, as text, to compare before and after. */
static void names(int s, char *out, size_t n)
{
	struct sockaddr_storage a, b;
	socklen_t la = sizeof(a), lb = sizeof(b);
	char x[64] = "", y[64] = "-";
	X(getsockname(s, (struct sockaddr *)&a, &la));
	void *ia = a.ss_family == AF_INET ? (void *)&((struct sockaddr_in *)&a)->sin_addr : (void *)&((struct sockaddr_in6 *)&a)->sin6_addr;
	inet_ntop(a.ss_family, ia, x, sizeof(x));
	if (getpeername(s, (struct sockaddr *)&b, &lb) == 0) {
		void *ib = b.ss_family == AF_INET ? (void *)&((struct sockaddr_in *)&b)->sin_addr : (void *)&((struct sockaddr_in6 *)&b)->sin6_addr;
		inet_ntop(b.ss_family, ib, y, sizeof(y));
		snprintf(y + strlen(y), sizeof(y) - strlen(y), ":%d", ntohs(((struct sockaddr_in *)&b)->sin_port));
	}
	snprintf(out, n, "%s:%d %s", x, port_of(s), y);
}

static void accept_one(int l, const char *what)
{
	struct pollfd p = { l, POLLIN, 0 };
	if (poll(&p, 1, 10000) != 1)
		fail("%s: no new connection within 10 s", what);
	int c = accept(l, NULL, NULL);
	if (c < 0)
		fail("%s: accept: %s", what, strerror(errno));
	struct pollfd q = { c, POLLIN, 0 };
	char b;
	if (poll(&q, 1, 10000) != 1 || read(c, &b, 1) != 1 || b != 'x')
		fail("%s: no 'x' on the new connection", what);
	close(c);
}

/*
 * Leaves a TIME_WAIT connection on the listener's own address: the server
 * side closes first. A restored listener without SO_REUSEADDR must still
 * bind its port (rcr sets it for the bind only).
 */
static void leave_time_wait(int l)
{
	struct sockaddr_storage a;
	socklen_t al = sizeof(a);
	X(getsockname(l, (struct sockaddr *)&a, &al));
	int c = socket(a.ss_family, SOCK_STREAM, 0);
	X(connect(c, (struct sockaddr *)&a, al));
	int s = accept(l, NULL, NULL);
	if (s < 0)
		fail("time-wait: accept: %s", strerror(errno));
	close(s);
	char b;
	if (read(c, &b, 1) != 0)
		fail("time-wait: expected the server's FIN");
	close(c);
}

static void udp_wait(int s, const char *what)
{
	struct pollfd p = { s, POLLIN, 0 };
	if (poll(&p, 1, 10000) != 1)
		fail("%s: nothing received within 10 s", what);
}

static int sockets(char **argv)
{
	int l4 = socket(AF_INET, SOCK_STREAM, 0), l6 = socket(AF_INET6, SOCK_STREAM, 0), ld = socket(AF_INET6, SOCK_STREAM, 0);
	int c4 = socket(AF_INET, SOCK_STREAM, 0), c6 = socket(AF_INET6, SOCK_STREAM, 0);
	int u4 = socket(AF_INET, SOCK_DGRAM, 0), u6 = socket(AF_INET6, SOCK_DGRAM, 0);
	seti(l4, SOL_SOCKET, SO_REUSEADDR, 1);
	seti(l4, SOL_SOCKET, SO_KEEPALIVE, 1);
	seti(l4, SOL_TCP, TCP_KEEPIDLE, 33);
	seti(l4, SOL_TCP, TCP_KEEPINTVL, 7);
	seti(l4, SOL_TCP, TCP_KEEPCNT, 4);
	seti(l4, SOL_TCP, TCP_NODELAY, 1);
	seti(l4, SOL_SOCKET, SO_RCVBUF, 50000);
	seti(l4, SOL_IP, IP_TOS, 0x10);
	seti(l4, SOL_IP, IP_TTL, 33);
	seti(l4, SOL_TCP, TCP_DEFER_ACCEPT, 5);
	seti(l4, SOL_SOCKET, SO_PRIORITY, 3);
	seti(l4, SOL_SOCKET, SO_MARK, 42);
	seti(l4, SOL_TCP, TCP_FASTOPEN, 5);
	struct linger lg = { 1, 5 };
	X(setsockopt(l4, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)));
	bind4(l4, "127.0.0.1", 0);
	X(listen(l4, 7));
	seti(l6, SOL_IPV6, IPV6_V6ONLY, 1);
	seti(l6, SOL_IPV6, IPV6_TCLASS, 0x20);
	bind6(l6, "::1", 0);
	X(listen(l6, 3));
	seti(ld, SOL_IPV6, IPV6_V6ONLY, 0);
	seti(ld, SOL_SOCKET, SO_REUSEPORT, 1);
	bind6(ld, "::", 0);
	X(listen(ld, 5));
	seti(c4, SOL_SOCKET, SO_REUSEPORT, 1);
	seti(c4, SOL_SOCKET, SO_SNDBUF, 40000);
	bind4(c4, "127.0.0.1", 0);
	seti(c6, SOL_TCP, TCP_NODELAY, 1);
	seti(c6, SOL_SOCKET, SO_KEEPALIVE, 1);
	seti(u4, SOL_SOCKET, SO_BROADCAST, 1);
	seti(u4, SOL_IP, IP_MULTICAST_TTL, 9);
	bind4(u4, "127.0.0.1", 0);
	seti(u6, SOL_IPV6, IPV6_UNICAST_HOPS, 17);
	struct sockaddr_in6 t = { .sin6_family = AF_INET6, .sin6_port = htons(atoi(argv[3])) };
	inet_pton(AF_INET6, "::1", &t.sin6_addr);
	X(connect(u6, (struct sockaddr *)&t, sizeof(t)));
	int all[] = { l4, l6, ld, c4, c6, u4, u6 };
	char before[7][160], after[160];
	for (int i = 0; i < 7; i++)
		names(all[i], before[i], sizeof(before[i]));
	int rcv = geti(l4, SOL_SOCKET, SO_RCVBUF), snd = geti(c4, SOL_SOCKET, SO_SNDBUF);
	int defer = geti(l4, SOL_TCP, TCP_DEFER_ACCEPT); /* rounded to SYN-ACK retransmissions */
	say("PORTS l4=%d l6=%d ld=%d c4=%d u4=%d", port_of(l4), port_of(l6), port_of(ld), port_of(c4), port_of(u4));
	ready();
	wait_for_go(argv[1]);
	for (int i = 0; i < 7; i++) {
		names(all[i], after, sizeof(after));
		if (strcmp(after, before[i]))
			fail("socket %d: names %s, before %s", i, after, before[i]);
	}
	want(l4, "l4", SOL_SOCKET, SO_REUSEADDR, 1);
	want(l4, "l4", SOL_SOCKET, SO_KEEPALIVE, 1);
	want(l4, "l4", SOL_TCP, TCP_KEEPIDLE, 33);
	want(l4, "l4", SOL_TCP, TCP_KEEPINTVL, 7);
	want(l4, "l4", SOL_TCP, TCP_KEEPCNT, 4);
	want(l4, "l4", SOL_TCP, TCP_NODELAY, 1);
	want(l4, "l4", SOL_SOCKET, SO_RCVBUF, rcv);
	want(l4, "l4", SOL_IP, IP_TOS, 0x10);
	want(l4, "l4", SOL_IP, IP_TTL, 33);
	want(l4, "l4", SOL_TCP, TCP_DEFER_ACCEPT, defer);
	want(l4, "l4", SOL_SOCKET, SO_PRIORITY, 3);
	want(l4, "l4", SOL_SOCKET, SO_MARK, 42);
	want(l4, "l4", SOL_TCP, TCP_FASTOPEN, 5);
	want(l4, "l4", SOL_SOCKET, SO_ACCEPTCONN, 1);
	socklen_t ll = sizeof(lg);
	X(getsockopt(l4, SOL_SOCKET, SO_LINGER, &lg, &ll));
	if (!lg.l_onoff || lg.l_linger != 5)
		fail("l4: SO_LINGER %d %d", lg.l_onoff, lg.l_linger);
	want(l6, "l6", SOL_IPV6, IPV6_V6ONLY, 1);
	want(l6, "l6", SOL_IPV6, IPV6_TCLASS, 0x20);
	want(ld, "ld", SOL_IPV6, IPV6_V6ONLY, 0);
	want(ld, "ld", SOL_SOCKET, SO_REUSEPORT, 1);
	want(c4, "c4", SOL_SOCKET, SO_REUSEPORT, 1);
	want(c4, "c4", SOL_SOCKET, SO_SNDBUF, snd);
	want(c4, "c4", SOL_SOCKET, SO_ACCEPTCONN, 0);
	want(c6, "c6", SOL_TCP, TCP_NODELAY, 1);
	want(c6, "c6", SOL_SOCKET, SO_KEEPALIVE, 1);
	want(u4, "u4", SOL_SOCKET, SO_BROADCAST, 1);
	want(u4, "u4", SOL_IP, IP_MULTICAST_TTL, 9);
	want(u6, "u6", SOL_IPV6, IPV6_UNICAST_HOPS, 17);
	accept_one(l4, "l4");
	accept_one(l6, "l6");
	accept_one(ld, "ld");
	udp_wait(u4, "u4");
	struct sockaddr_storage from;
	socklen_t fl = sizeof(from);
	char b[16];
	if (recvfrom(u4, b, sizeof(b), 0, (struct sockaddr *)&from, &fl) != 4 || memcmp(b, "ping", 4))
		fail("u4: expected ping");
	if (sendto(u4, "pong", 4, 0, (struct sockaddr *)&from, fl) != 4)
		fail("u4: sendto: %s", strerror(errno));
	if (send(u6, "hello", 5, 0) != 5)
		fail("u6: send: %s", strerror(errno));
	udp_wait(u6, "u6");
	if (recv(u6, b, sizeof(b), 0) != 5 || memcmp(b, "reply", 5))
		fail("u6: expected reply");
	pass();
	return 0;
}

static unsigned char pat(unsigned long i) { return i % 251; }

/* After go: read the client's stream to its end while sending `more`
 * pattern bytes after `sent`. */
static void serve(int c, unsigned long sent, unsigned long more)
{
	unsigned long got = 0, end = sent + more;
	int eof = 0;
	unsigned char buf[65536];
	while (!eof || sent < end) {
		struct pollfd p = { c, (eof ? 0 : POLLIN) | (sent < end ? POLLOUT : 0), 0 };
		if (poll(&p, 1, 60000) != 1)
			fail("server: stuck for 60 s (got %lu, sent %lu)", got, sent);
		if (p.revents & (POLLERR | POLLNVAL))
			fail("server: socket error (revents %#x, got %lu)", p.revents, got);
		if (!eof && (p.revents & (POLLIN | POLLHUP))) {
			ssize_t n = read(c, buf, sizeof(buf));
			if (n < 0 && errno != EAGAIN)
				fail("server: read: %s", strerror(errno));
			for (ssize_t i = 0; i < n; i++, got++)
				if (buf[i] != pat(got))
					fail("server: byte %lu of the client's stream is %d, expected %d", got, buf[i], pat(got));
			eof = n == 0;
		}
		if (sent < end && (p.revents & POLLOUT)) {
			size_t n = end - sent < sizeof(buf) ? end - sent : sizeof(buf);
			for (size_t i = 0; i < n; i++)
				buf[i] = pat(sent + i);
			ssize_t w = write(c, buf, n);
			if (w < 0 && errno != EAGAIN)
				fail("server: write: %s", strerror(errno));
			sent += w > 0 ? w : 0;
			if (sent == end)
				X(shutdown(c, SHUT_WR));
		}
	}
	say("GOT %lu SENT %lu", got, sent);
}

static int server(char **argv)
{
	int v6 = !strcmp(argv[3], "v6");
	int l = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
	if (v6)
		bind6(l, "::1", 0);
	else
		bind4(l, "127.0.0.1", 0);
	X(listen(l, 1));
	say("PORT %d", port_of(l));
	int c = accept(l, NULL, NULL);
	if (c < 0)
		fail("accept: %s", strerror(errno));
	X(fcntl(c, F_SETFL, O_NONBLOCK));
	unsigned long sent = 0;
	unsigned char buf[4096];
	for (int idle = 0; idle < 20; ) {
		for (size_t i = 0; i < sizeof(buf); i++)
			buf[i] = pat(sent + i);
		ssize_t w = write(c, buf, sizeof(buf));
		if (w > 0) {
			sent += w;
			idle = 0;
		} else if (errno == EAGAIN) {
			idle++;
			sleep_10ms();
		} else {
			fail("write: %s", strerror(errno));
		}
	}
	say("QUEUED %lu", sent);
	ready();
	wait_for_go(argv[1]);
	serve(c, sent, 1 << 20);
	pass();
	return 0;
}

int main(int argc, char **argv)
{
	need_args(argc, argv, 2, "GO_FILE sockets UDPPORT | server v4|v6 | backlog | timewait | established");
	if (!strcmp(argv[2], "sockets"))
		return sockets(argv);
	if (!strcmp(argv[2], "server"))
		return server(argv);
	int l = socket(AF_INET, SOCK_STREAM, 0);
	bind4(l, "127.0.0.1", 0);
	X(listen(l, 4));
	say("PORT %d", port_of(l));
	if (!strcmp(argv[2], "timewait"))
		leave_time_wait(l);
	if (!strcmp(argv[2], "established")) {
		int c = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port_of(l)) };
		inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
		X(connect(c, (struct sockaddr *)&a, sizeof(a)));
		if (accept(l, NULL, NULL) < 0)
			fail("accept: %s", strerror(errno));
	}
	ready();
	wait_for_go(argv[1]);
	pass();
	return 0;
}
