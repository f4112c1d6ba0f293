/*
 * amx: AMX tile state across a dump (Intel AMX: XSAVE components 17 and
 * 18; tile data is "dynamic": a process must ask for it with
 * arch_prctl(ARCH_REQ_XCOMP_PERM) before its first tile instruction,
 * which otherwise dies with SIGILL).
 *
 * amx GO perm: asks for tile data, uses tile 0 once (load a pattern,
 * store it back, compare), releases the tiles (TILERELEASE: tile data
 * back in its initial state), READY; after go, checks that the
 * permission is still there (ARCH_GET_XCOMP_PERM) and uses tile 0 again.
 * After a restore that lost the permission, the tile load is a SIGILL.
 *
 * amx GO live: asks for tile data, then the main thread and a second one
 * each load their own pattern into their tile 0 and keep it there (tile
 * data live in the registers of both), READY; after go, each stores its
 * tile 0 and compares it with its pattern (a thread whose tile data came
 * back in its initial state reads zeros).
 *
 * Prints NOAMX and exits 3 at once where the kernel refuses the
 * permission (no AMX on this CPU).
 */
#include "victim.h"
#include <pthread.h>
#include <stdint.h>
#include <sys/syscall.h>

#define ARCH_GET_XCOMP_PERM 0x1022
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define ROWS 16
#define COLSB 64

static const char *go;

static void load_config(void)
{
	_Alignas(64) uint8_t cfg[64] = { 0 };
	cfg[0] = 1; /* palette 1 */
	cfg[16] = COLSB; /* colsb[0], u16 little-endian */
	cfg[48] = ROWS; /* rows[0] */
	asm volatile("ldtilecfg %0" : : "m"(cfg));
}

static void tile0_load(const void *p)
{
	asm volatile("tileloadd (%0,%1,1), %%tmm0" : : "r"(p), "r"((long)COLSB) : "memory");
}

static void tile0_store(void *p)
{
	asm volatile("tilestored %%tmm0, (%0,%1,1)" : : "r"(p), "r"((long)COLSB) : "memory");
}

/* Tile 0 holds the pattern of `seed`, or FAIL. */
static void check_tile0(unsigned seed, const char *when)
{
	_Alignas(64) uint8_t out[ROWS * COLSB];
	memset(out, 0, sizeof(out));
	tile0_store(out);
	long bad = check(out, sizeof(out), seed);
	if (bad >= 0)
		fail("%s: tile 0 byte %ld is 0x%02x, expected 0x%02x", when, bad, out[bad], pattern(seed, bad));
}

static void load_tile0(unsigned seed)
{
	_Alignas(64) uint8_t in[ROWS * COLSB];
	fill(in, sizeof(in), seed);
	load_config();
	tile0_load(in);
}

static void use_tiles(const char *when)
{
	load_tile0(0xa3);
	check_tile0(0xa3, when);
	asm volatile("tilerelease" : : : "memory");
}

static volatile int thread_loaded;

/* live mode's second thread: its own tile 0, kept until after go. */
static void *second(void *arg)
{
	(void)arg;
	load_tile0(0x5b);
	thread_loaded = 1;
	wait_for_go(go);
	check_tile0(0x5b, "after go, the second thread's tile 0");
	return NULL;
}

int main(int argc, char **argv)
{
	need_args(argc, argv, 2, "GO_FILE perm|live");
	go = argv[1];
	int live = !strcmp(argv[2], "live");
	pthread_t th;
	if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) {
		say("NOAMX: ARCH_REQ_XCOMP_PERM: %s", strerror(errno));
		return 3;
	}
	if (live) {
		if (pthread_create(&th, NULL, second, NULL))
			fail("pthread_create");
		while (!thread_loaded)
			sleep_10ms();
		load_tile0(0xa3);
	} else {
		use_tiles("before the dump");
	}
	ready();
	wait_for_go(go);
	uint64_t perm = 0;
	if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &perm))
		fail("ARCH_GET_XCOMP_PERM: %s", strerror(errno));
	if (!(perm & (1ULL << XFEATURE_XTILEDATA)))
		fail("the AMX tile data permission is gone (permitted components 0x%llx)", (unsigned long long)perm);
	if (live) {
		check_tile0(0xa3, "after go, the main thread's tile 0");
		pthread_join(th, NULL);
	} else
		use_tiles("after go");
	pass();
}
