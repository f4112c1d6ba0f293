/*
 * pty: pseudo-terminals owned by the tree survive dump/restore (and a
 * dump -R that leaves the tree running).
 *
 * Set up before READY (started as a session leader without a terminal):
 *   P (this process) opens pty A (/dev/ptmx at fd 3, dup'd at fd 7),
 *     unlocks it and sets, through the master: termios (no ICANON, ECHO,
 *     OPOST, ICRNL, IXON; NOFLSH; VINTR ^G, VMIN 2, VTIME 9, 9600 baud),
 *     window size 37x111 (555x333 pixels), then packet mode. It opens
 *     pty B (fd 4) and leaves it locked, with no slave anywhere.
 *   C (child of P) calls setsid, opens A's slave on fd 0 and makes it its
 *     controlling terminal (TIOCSCTTY), opens it again on fd 5 (a second
 *     description), sets exclusive mode (TIOCEXCL), forks G and makes G's
 *     process group the foreground one.
 *   G (child of C) leads its own process group, inherits fds 0 and 5;
 *     SIGWINCH and SIGINT are blocked (it collects them after go).
 *   D (another child of P) calls setsid, opens the slave of pty E (fd 6 in
 *     P, unlocked), makes it its controlling terminal and closes it: D's
 *     session has that terminal but no fd on it.
 *   P prints "PTY child=C grandchild=G d=D a=/dev/pts/N b=/dev/pts/M
 *   e=/dev/pts/K" and READY.
 *
 * After go (each process polls for the go file):
 *   P: ptsname of A and B, termios, window size, packet mode on, A
 *      unlocked and B locked, TIOCGSID of A is C and TIOCGPGRP is G; then
 *      writes "hello" to A, reads "world!" back (each packet-mode read
 *      starts with status byte 0), sets a new window size (SIGWINCH to
 *      G's group), writes VINTR (^G: SIGINT to G's group); waits for C to
 *      exit 0 and prints PASS.
 *   C: tcgetsid(0) is C, ttyname(0) is A's slave, /dev/tty opens onto it,
 *      exclusive mode on, termios as set, tcgetpgrp(0) is G; waits for G
 *      to exit 0; no SIGWINCH or SIGINT reached C (a background group).
 *   G: tcgetpgrp(0) is its own group, /dev/tty opens; reads "hello" on fd
 *      0, writes "world!" on fd 5; gets SIGWINCH and sees the new window
 *      size; gets SIGINT.
 *   D: /dev/tty opens, onto a terminal whose session and foreground group
 *      are D's.
 * Every failure is a FAIL line; C and G report theirs through their exit
 * status too.
 *
 * usage: pty GO_FILE               the tree above
 *        pty GO_FILE slave PATH    holds PATH (a pty slave) at fd 3
 *        pty GO_FILE queued        holds a pty master (fd 3) and its slave
 *                                  (fd 4, raw mode), with "abc" written to
 *                                  the master and unread on the slave;
 *                                  after go reads it and passes
 */
#define _GNU_SOURCE
#include "victim.h"
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>

#define STEP_MS 10000

static struct termios want_tio;
static char name_a[64], name_b[64], name_e[64];
static int failed;

__attribute__((format(printf, 1, 2)))
static void bad(const char *fmt, ...)
{
	char buf[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	say("FAIL: [pid %d] %s", getpid(), buf);
	failed = 1;
}

static int ioctl_int(int fd, unsigned long req)
{
	int v = -1;

	if (ioctl(fd, req, &v) < 0)
		return -1000 - errno;
	return v;
}

static void check_termios(const char *who, int fd)
{
	struct termios t;

	if (tcgetattr(fd, &t) < 0) {
		bad("%s: tcgetattr: %s", who, strerror(errno));
		return;
	}
	if (t.c_iflag != want_tio.c_iflag || t.c_oflag != want_tio.c_oflag || t.c_cflag != want_tio.c_cflag || t.c_lflag != want_tio.c_lflag)
		bad("%s: termios flags i%o o%o c%o l%o, want i%o o%o c%o l%o", who, t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag,
		    want_tio.c_iflag, want_tio.c_oflag, want_tio.c_cflag, want_tio.c_lflag);
	if (memcmp(t.c_cc, want_tio.c_cc, sizeof(t.c_cc)) != 0)
		bad("%s: termios control characters differ (VINTR %d VMIN %d VTIME %d)", who, t.c_cc[VINTR], t.c_cc[VMIN], t.c_cc[VTIME]);
	if (cfgetospeed(&t) != B9600 || cfgetispeed(&t) != B9600)
		bad("%s: speeds %u/%u, want B9600", who, (unsigned)cfgetispeed(&t), (unsigned)cfgetospeed(&t));
}

static void check_winsize(const char *who, int fd, int row, int col)
{
	struct winsize w;

	if (ioctl(fd, TIOCGWINSZ, &w) < 0)
		bad("%s: TIOCGWINSZ: %s", who, strerror(errno));
	else if (w.ws_row != row || w.ws_col != col || w.ws_xpixel != 555 || w.ws_ypixel != 333)
		bad("%s: window %dx%d (%dx%d px), want %dx%d (555x333)", who, w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel, row, col);
}

/* Reads exactly len bytes from fd within STEP_MS; with packet mode, each
 * read's first byte is the status byte, which must be 0 (data). */
static int read_all(int fd, char *buf, size_t len, int packet)
{
	size_t got = 0;
	char tmp[256];

	while (got < len) {
		struct pollfd p = { fd, POLLIN, 0 };
		if (poll(&p, 1, STEP_MS) <= 0)
			return -1;
		ssize_t n = read(fd, tmp, sizeof(tmp));
		if (n <= 0)
			return -1;
		char *data = tmp;
		if (packet) {
			if (tmp[0] != 0) {
				bad("packet-mode read: status byte %#x, want 0", (unsigned char)tmp[0]);
				return -1;
			}
			data++;
			n--;
		}
		if ((size_t)n > len - got)
			n = len - got;
		memcpy(buf + got, data, n);
		got += n;
	}
	return 0;
}

/* Waits (blocked) for signal sig, at most STEP_MS. */
static int wait_sig(int sig)
{
	struct timespec ts = { STEP_MS / 1000, 0 };
	sigset_t one;

	sigemptyset(&one);
	sigaddset(&one, sig);
	return sigtimedwait(&one, NULL, &ts) == sig;
}

static void check_dev_tty(const char *who)
{
	int fd = open("/dev/tty", O_RDWR | O_NOCTTY);

	if (fd < 0) {
		bad("%s: open /dev/tty: %s", who, strerror(errno));
		return;
	}
	/* /dev/tty's inode is 5:0: compare the terminal behind it instead. */
	if (tcgetsid(fd) != getsid(0) || tcgetsid(fd) != tcgetsid(0))
		bad("%s: /dev/tty (session %d) is not the terminal on fd 0 (session %d)", who, tcgetsid(fd), tcgetsid(0));
	close(fd);
}

static int grandchild(const char *go)
{
	char buf[8];

	wait_for_go(go);
	if (tcgetpgrp(0) != getpgrp())
		bad("G: tcgetpgrp(0) %d, want my group %d", tcgetpgrp(0), getpgrp());
	check_dev_tty("G");
	if (read_all(0, buf, 5, 0) < 0 || memcmp(buf, "hello", 5) != 0)
		bad("G: did not read \"hello\" on fd 0");
	else if (write(5, "world!", 6) != 6)
		bad("G: write on fd 5: %s", strerror(errno));
	if (!wait_sig(SIGWINCH))
		bad("G: no SIGWINCH after the window size changed");
	else
		check_winsize("G", 0, 40, 100);
	if (!wait_sig(SIGINT))
		bad("G: no SIGINT after VINTR (^G) was typed");
	return failed;
}

/* D: the controlling terminal is E's slave, with no fd on it. */
static void d_child(const char *go, int sync)
{
	int fd;

	close(3);
	close(4);
	close(7);
	if (setsid() < 0)
		fail("D: setsid: %s", strerror(errno));
	fd = open(name_e, O_RDWR | O_NOCTTY);
	if (fd < 0 || ioctl(fd, TIOCSCTTY, 0) < 0)
		fail("D: %s as the controlling terminal: %s", name_e, strerror(errno));
	close(fd);
	close(6);
	if (write(sync, "D", 1) != 1)
		exit(3);
	close(sync);
	wait_for_go(go);
	fd = open("/dev/tty", O_RDWR | O_NOCTTY);
	if (fd < 0)
		bad("D: open /dev/tty: %s", strerror(errno));
	else if (tcgetsid(fd) != getpid() || tcgetpgrp(fd) != getpid())
		bad("D: /dev/tty has session %d and foreground %d, want mine (%d)", tcgetsid(fd), tcgetpgrp(fd), getpid());
	exit(failed);
}

static void child(const char *go, int sync)
{
	sigset_t set;
	pid_t g;
	int fd, st;

	close(3);
	close(4);
	close(6);
	close(7);
	if (setsid() < 0)
		fail("C: setsid: %s", strerror(errno));
	fd = open(name_a, O_RDWR | O_NOCTTY);
	if (fd < 0 || ioctl(fd, TIOCSCTTY, 0) < 0 || dup2(fd, 0) != 0)
		fail("C: opening %s as the controlling terminal: %s", name_a, strerror(errno));
	close(fd);
	fd = open(name_a, O_RDWR | O_NOCTTY);
	if (fd < 0 || dup2(fd, 5) != 5)
		fail("C: second open of %s: %s", name_a, strerror(errno));
	close(fd);
	if (ioctl(0, TIOCEXCL) < 0)
		fail("C: TIOCEXCL: %s", strerror(errno));
	g = fork();
	if (g < 0)
		fail("C: fork: %s", strerror(errno));
	if (g == 0) {
		setpgid(0, 0);
		if (write(sync, "G", 1) != 1)
			exit(3);
		close(sync);
		exit(grandchild(go));
	}
	if (setpgid(g, g) < 0 && errno != EACCES)
		fail("C: setpgid(G): %s", strerror(errno));
	if (tcsetpgrp(0, g) < 0)
		fail("C: tcsetpgrp(G): %s", strerror(errno));
	if (write(sync, "C", 1) != 1)
		exit(3);
	close(sync);

	wait_for_go(go);
	if (tcgetsid(0) != getpid())
		bad("C: tcgetsid(0) %d, want %d", tcgetsid(0), getpid());
	if (strcmp(ttyname(0) ? ttyname(0) : "?", name_a) != 0)
		bad("C: ttyname(0) %s, want %s", ttyname(0), name_a);
	check_dev_tty("C");
	if (ioctl_int(0, TIOCGEXCL) != 1)
		bad("C: TIOCGEXCL %d, want 1", ioctl_int(0, TIOCGEXCL));
	check_termios("C", 0);
	if (tcgetpgrp(0) != g)
		bad("C: tcgetpgrp(0) %d, want G %d", tcgetpgrp(0), g);
	if (waitpid(g, &st, 0) != g || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		bad("C: G ended with status %#x", st);
	sigpending(&set);
	if (sigismember(&set, SIGWINCH) || sigismember(&set, SIGINT))
		bad("C: SIGWINCH or SIGINT reached C, outside the foreground group");
	exit(failed);
}

static int setup_a(int a)
{
	struct winsize w = { 37, 111, 555, 333 };
	struct termios t;
	int one = 1;

	if (unlockpt(a) < 0 || ptsname_r(a, name_a, sizeof(name_a)) != 0)
		return -1;
	if (tcgetattr(a, &t) < 0)
		return -1;
	t.c_iflag &= ~(ICRNL | IXON);
	t.c_oflag &= ~OPOST;
	t.c_lflag &= ~(ICANON | ECHO);
	t.c_lflag |= NOFLSH;
	t.c_cc[VINTR] = 7;
	t.c_cc[VMIN] = 2;
	t.c_cc[VTIME] = 9;
	cfsetispeed(&t, B9600);
	cfsetospeed(&t, B9600);
	if (tcsetattr(a, TCSANOW, &t) < 0 || tcgetattr(a, &want_tio) < 0)
		return -1;
	if (ioctl(a, TIOCSWINSZ, &w) < 0 || ioctl(a, TIOCPKT, &one) < 0)
		return -1;
	return 0;
}

static void parent(const char *go, pid_t c, pid_t g, pid_t d)
{
	struct winsize w = { 40, 100, 555, 333 };
	char buf[8], name[64];
	int st;

	wait_for_go(go);
	if (ptsname_r(3, name, sizeof(name)) != 0 || strcmp(name, name_a) != 0)
		bad("P: pty A is %s, want %s", name, name_a);
	if (ptsname_r(4, name, sizeof(name)) != 0 || strcmp(name, name_b) != 0)
		bad("P: pty B is %s, want %s", name, name_b);
	check_termios("P", 7);
	check_winsize("P", 3, 37, 111);
	if (ioctl_int(3, TIOCGPKT) != 1)
		bad("P: TIOCGPKT %d, want 1", ioctl_int(3, TIOCGPKT));
	if (ioctl_int(3, TIOCGPTLCK) != 0 || ioctl_int(4, TIOCGPTLCK) != 1)
		bad("P: TIOCGPTLCK A %d B %d, want 0 and 1", ioctl_int(3, TIOCGPTLCK), ioctl_int(4, TIOCGPTLCK));
	if (ioctl_int(3, TIOCGSID) != c)
		bad("P: TIOCGSID of A %d, want C %d", ioctl_int(3, TIOCGSID), c);
	if (ioctl_int(3, TIOCGPGRP) != g)
		bad("P: TIOCGPGRP of A %d, want G %d", ioctl_int(3, TIOCGPGRP), g);
	if (write(3, "hello", 5) != 5)
		bad("P: writing hello: %s", strerror(errno));
	else if (read_all(3, buf, 6, 1) < 0 || memcmp(buf, "world!", 6) != 0)
		bad("P: did not read \"world!\" from the master");
	if (ioctl(3, TIOCSWINSZ, &w) < 0)
		bad("P: TIOCSWINSZ: %s", strerror(errno));
	if (write(7, "\a", 1) != 1)
		bad("P: writing VINTR: %s", strerror(errno));
	if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		bad("P: C ended with status %#x", st);
	if (waitpid(d, &st, 0) != d || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		bad("P: D ended with status %#x", st);
	if (ptsname_r(6, name, sizeof(name)) != 0 || strcmp(name, name_e) != 0)
		bad("P: pty E is %s, want %s", name, name_e);
	if (failed)
		exit(1);
	pass();
}

static int hold_slave(const char *go, const char *path)
{
	int fd = open(path, O_RDWR | O_NOCTTY);

	if (fd < 0 || dup2(fd, 3) != 3)
		fail("open %s: %s", path, strerror(errno));
	ready();
	wait_for_go(go);
	pass();
}

static int hold_queued(const char *go)
{
	struct termios t;
	char name[64], buf[3];
	int m = posix_openpt(O_RDWR | O_NOCTTY), s;

	if (m != 3 || unlockpt(m) < 0 || ptsname_r(m, name, sizeof(name)) != 0)
		fail("opening a pty: %s", strerror(errno));
	s = open(name, O_RDWR | O_NOCTTY);
	if (s != 4 || tcgetattr(s, &t) < 0)
		fail("opening %s: %s", name, strerror(errno));
	cfmakeraw(&t);
	if (tcsetattr(s, TCSANOW, &t) < 0 || write(m, "abc", 3) != 3)
		fail("raw mode and write: %s", strerror(errno));
	ready();
	wait_for_go(go);
	if (read_all(s, buf, 3, 0) < 0 || memcmp(buf, "abc", 3) != 0)
		fail("the queued bytes are gone");
	pass();
}

int main(int argc, char **argv)
{
	int sync[2], a, b, e;
	sigset_t set;
	pid_t c, g, d;
	char buf[2];

	need_args(argc, argv, 1, "GO_FILE [slave PATH]");
	if (argc > 3 && !strcmp(argv[2], "slave"))
		return hold_slave(argv[1], argv[3]);
	if (argc > 2 && !strcmp(argv[2], "queued"))
		return hold_queued(argv[1]);
	sigemptyset(&set);
	sigaddset(&set, SIGWINCH);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	a = posix_openpt(O_RDWR | O_NOCTTY);
	if (a != 3 || setup_a(a) < 0 || dup2(a, 7) != 7)
		fail("setting up pty A (fd %d): %s", a, strerror(errno));
	b = posix_openpt(O_RDWR | O_NOCTTY);
	if (b != 4 || ptsname_r(b, name_b, sizeof(name_b)) != 0)
		fail("opening pty B (fd %d): %s", b, strerror(errno));
	e = posix_openpt(O_RDWR | O_NOCTTY);
	if (e != 5 || dup2(e, 6) != 6 || close(e) < 0 || unlockpt(6) < 0 || ptsname_r(6, name_e, sizeof(name_e)) != 0)
		fail("opening pty E (fd %d): %s", e, strerror(errno));
	if (pipe(sync) < 0)
		fail("pipe: %s", strerror(errno));
	d = fork();
	if (d < 0)
		fail("fork: %s", strerror(errno));
	if (d == 0) {
		close(sync[0]);
		d_child(argv[1], sync[1]);
	}
	c = fork();
	if (c < 0)
		fail("fork: %s", strerror(errno));
	if (c == 0) {
		close(sync[0]);
		child(argv[1], sync[1]);
	}
	close(sync[1]);
	for (int i = 0; i < 3; i++)
		if (read(sync[0], buf, 1) != 1)
			fail("C, G or D died during setup");
	close(sync[0]);
	/* G is C's only child and leads its own group: the foreground one. */
	g = ioctl_int(3, TIOCGPGRP);
	say("PTY child=%d grandchild=%d d=%d a=%s b=%s e=%s", c, g, d, name_a, name_b, name_e);
	ready();
	parent(argv[1], c, g, d);
	return 1;
}
