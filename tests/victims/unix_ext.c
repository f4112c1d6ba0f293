/*
 * unix_ext: a unix socket connected to a socket outside the dumped tree
 * (the test process holds the other end, bound at PATH).
 *
 *   unix_ext GO_FILE stream PATH   a stream socket connected to PATH
 *   unix_ext GO_FILE dgram PATH    a datagram socket connected to PATH
 *   unix_ext GO_FILE raw|raw6|netlink|packet -
 *                                  holds a socket of that kind (rcr refuses
 *                                  it); after go just prints PASS
 *
 * The datagram socket is bound to PATH-cl (so the peer can answer).
 * After go it sends "after-go" on the socket (the test receives it) and
 * waits for "ack" back, then prints PASS.
 */
#define _GNU_SOURCE
#include "victim.h"
#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>

int main(int argc, char **argv)
{
	need_args(argc, argv, 3, "GO_FILE stream|dgram PATH");
	int dgram = strcmp(argv[2], "dgram") == 0;
	int other = -2;
	if (!strcmp(argv[2], "raw"))
		other = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
	else if (!strcmp(argv[2], "raw6"))
		other = socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6);
	else if (!strcmp(argv[2], "netlink"))
		other = socket(AF_NETLINK, SOCK_RAW, 0);
	else if (!strcmp(argv[2], "packet"))
		other = socket(AF_PACKET, SOCK_DGRAM, 0);
	if (other == -1)
		fail("socket %s: %s", argv[2], strerror(errno));
	if (other >= 0) {
		say("SOCKET fd=%d", other);
		ready();
		wait_for_go(argv[1]);
		pass();
	}
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strncpy(a.sun_path, argv[3], sizeof(a.sun_path) - 1);
	int s = socket(AF_UNIX, dgram ? SOCK_DGRAM : SOCK_STREAM, 0);
	if (dgram) {
		/* Named, so that the peer outside can answer: PATH-cl. */
		struct sockaddr_un me = { .sun_family = AF_UNIX };
		snprintf(me.sun_path, sizeof(me.sun_path), "%s-cl", argv[3]);
		unlink(me.sun_path);
		if (bind(s, (struct sockaddr *)&me, sizeof(me)) != 0)
			fail("bind %s: %s", me.sun_path, strerror(errno));
	}
	if (connect(s, (struct sockaddr *)&a, sizeof(a)) != 0)
		fail("connect %s: %s", argv[3], strerror(errno));
	ready();
	wait_for_go(argv[1]);
	if (send(s, "after-go", 8, MSG_NOSIGNAL) != 8)
		fail("send after go: %s", strerror(errno));
	struct pollfd p = { s, POLLIN, 0 };
	if (poll(&p, 1, 10000) != 1)
		fail("no ack within 10 s");
	char b[16];
	if (recv(s, b, sizeof(b), 0) != 3 || memcmp(b, "ack", 3) != 0)
		fail("wrong ack");
	pass();
}
