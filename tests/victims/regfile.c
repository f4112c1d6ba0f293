/*
 * regfile: open regular files keep their fd number, offset and flags.
 *
 * DIR/regfile.dat holds 1000 lines "line NNNN\n" (10 bytes each). It is
 * opened read-only, moved to fd 42, partly read, then lseek'd and read so
 * that its offset is OFFSET. After restore lseek(fd, 0, SEEK_CUR) must
 * still be OFFSET, the next read must return the bytes there, and the fd
 * must still be read-only.
 * DIR/append.log is opened O_WRONLY|O_APPEND (fd 43) and written before the
 * dump; after restore a second write must land after the first, and the
 * file status flags must still include O_APPEND.
 *
 * usage: regfile GO_FILE DIR
 */
#include "victim.h"
#include <fcntl.h>

#define RFD 42
#define AFD 43
#define LINES 1000
#define OFFSET 4567L

static void move_fd(int from, int to)
{
	if (from < 0 || dup2(from, to) != to)
		fail("open/dup2 to fd %d: %s", to, strerror(errno));
	close(from);
}

int main(int argc, char **argv)
{
	char data[LINES * 10 + 1], path[4096], apath[4096], buf[64];

	need_args(argc, argv, 2, "GO_FILE DIR");
	snprintf(path, sizeof(path), "%s/regfile.dat", argv[2]);
	snprintf(apath, sizeof(apath), "%s/append.log", argv[2]);

	for (int i = 0; i < LINES; i++)
		snprintf(data + i * 10, 11, "line %04d\n", i);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, data, LINES * 10) != LINES * 10)
		fail("creating %s: %s", path, strerror(errno));
	close(fd);

	move_fd(open(path, O_RDONLY), RFD);
	if (read(RFD, buf, 25) != 25 || memcmp(buf, data, 25))
		fail("first read");
	if (lseek(RFD, OFFSET - 7, SEEK_SET) != OFFSET - 7 || read(RFD, buf, 7) != 7)
		fail("seek+read");

	move_fd(open(apath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644), AFD);
	if (write(AFD, "before\n", 7) != 7)
		fail("write before: %s", strerror(errno));

	ready();
	wait_for_go(argv[1]);

	off_t off = lseek(RFD, 0, SEEK_CUR);
	if (off != OFFSET)
		fail("offset of fd %d is %ld, expected %ld", RFD, (long)off, OFFSET);
	if (read(RFD, buf, 20) != 20 || memcmp(buf, data + OFFSET, 20))
		fail("read after restore returned the wrong bytes");
	if (fcntl(RFD, F_GETFL) & O_ACCMODE)
		fail("fd %d is no longer read-only", RFD);

	int fl = fcntl(AFD, F_GETFL);
	if (fl < 0 || !(fl & O_APPEND) || (fl & O_ACCMODE) != O_WRONLY)
		fail("fd %d flags are %#x, expected O_WRONLY|O_APPEND", AFD, fl);
	if (write(AFD, "after\n", 6) != 6)
		fail("write after: %s", strerror(errno));

	memset(buf, 0, sizeof(buf));
	fd = open(apath, O_RDONLY);
	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) < 0)
		fail("re-reading %s: %s", apath, strerror(errno));
	close(fd);
	if (strcmp(buf, "before\nafter\n"))
		fail("%s holds \"%s\", expected \"before\\nafter\\n\"", apath, buf);
	pass();
}
