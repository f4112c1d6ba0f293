/*
 * filemap: a MAP_PRIVATE file mapping with some pages dirtied.
 *
 * Creates DIR/filemap.dat (8 pages of known content), maps it privately,
 * reads every page and writes new data into pages 1, 4 and 6, then closes
 * the fd. After restore the dirtied pages must hold the new data, the clean
 * pages the file's data, and the file on disk must be unchanged (private
 * changes must never reach the file).
 *
 * usage: filemap GO_FILE DIR
 */
#include "victim.h"
#include <fcntl.h>
#include <sys/mman.h>

#define NPAGES 8
#define FILE_SEED(pg) (200 + (unsigned)(pg))
#define DIRTY_SEED(pg) (300 + (unsigned)(pg))

static int is_dirty(int pg)
{
	return pg == 1 || pg == 4 || pg == 6;
}

int main(int argc, char **argv)
{
	static char buf[NPAGES * PAGE];
	char path[4096];
	volatile unsigned sum = 0;

	need_args(argc, argv, 2, "GO_FILE DIR");
	snprintf(path, sizeof(path), "%s/filemap.dat", argv[2]);

	for (int pg = 0; pg < NPAGES; pg++)
		fill(buf + pg * PAGE, PAGE, FILE_SEED(pg));
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf) || fsync(fd))
		fail("creating %s: %s", path, strerror(errno));

	char *m = mmap(NULL, sizeof(buf), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (m == MAP_FAILED)
		fail("mmap %s: %s", path, strerror(errno));
	close(fd);

	for (int pg = 0; pg < NPAGES; pg++) {
		sum += (unsigned char)m[pg * PAGE]; /* fault the page in */
		if (is_dirty(pg))
			fill(m + pg * PAGE, PAGE, DIRTY_SEED(pg));
	}

	ready();
	wait_for_go(argv[1]);

	for (int pg = 0; pg < NPAGES; pg++) {
		unsigned seed = is_dirty(pg) ? DIRTY_SEED(pg) : FILE_SEED(pg);
		long bad = check(m + pg * PAGE, PAGE, seed);
		if (bad >= 0)
			fail("%s page %d of the mapping: byte %ld differs", is_dirty(pg) ? "dirty" : "clean", pg, bad);
	}

	/* The file itself must still hold the original content. */
	memset(buf, 0, sizeof(buf));
	fd = open(path, O_RDONLY);
	if (fd < 0 || read(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
		fail("re-reading %s: %s", path, strerror(errno));
	close(fd);
	for (int pg = 0; pg < NPAGES; pg++) {
		long bad = check(buf + pg * PAGE, PAGE, FILE_SEED(pg));
		if (bad >= 0)
			fail("file page %d on disk changed: byte %ld differs", pg, bad);
	}
	pass();
}
