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
 * amx GO live: asks for tile data, loads a pattern into tile 0 and keeps
 * it there (tile data live in the registers), READY; after go, stores
 * tile 0 and compares it with the pattern. rcr refuses to dump it; the
 * check after go is that the refused dump left the tile as it was.
 *
 * Prints NOAMX and exits 3 at once where the kernel refuses the
 * permission (no AMX on this CPU).
 */
#include "victim.h"
#include <stdint.h>
#include <sys/syscall.h>

#define ARCH_GET_XCOMP_PERM 0x1022
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define ROWS 16
#define COLSB 64

static _Alignas(64) uint8_t cfg[64];
static _Alignas(64) uint8_t pattern_buf[ROWS * COLSB];
static _Alignas(64) uint8_t out[ROWS * COLSB];

static void load_config(void)
{
	memset(cfg, 0, sizeof(cfg));
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

/* Tile 0 holds the pattern, or FAIL. */
static void check_tile0(const char *when)
{
	memset(out, 0, sizeof(out));
	tile0_store(out);
	for (size_t i = 0; i < sizeof(out); i++)
		if (out[i] != pattern_buf[i])
			fail("%s: tile 0 byte %zu is 0x%02x, expected 0x%02x", when, i, out[i], pattern_buf[i]);
}

static void use_tiles(const char *when)
{
	load_config();
	tile0_load(pattern_buf);
	check_tile0(when);
	asm volatile("tilerelease" : : : "memory");
}

int main(int argc, char **argv)
{
	need_args(argc, argv, 2, "GO_FILE perm|live");
	const char *go = argv[1];
	int live = !strcmp(argv[2], "live");
	fill(pattern_buf, sizeof(pattern_buf), 0xa3);
	if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) {
		say("NOAMX: ARCH_REQ_XCOMP_PERM: %s", strerror(errno));
		return 3;
	}
	if (live) {
		load_config();
		tile0_load(pattern_buf);
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
	if (live)
		check_tile0("after go, tile data kept in tile 0");
	else
		use_tiles("after go");
	pass();
}
