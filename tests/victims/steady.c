/*
 * steady: a process whose whole state stays still while it waits, so that
 * a test can compare it from outside, byte for byte, before and after
 * something (a dump -R, a killed dump) touched it.
 *
 * Sets up:
 *   - memory with known content: a 40 MiB malloc (its own mmap; large
 *     enough that rcr drains it with two writer threads), a 192 KiB
 *     malloc (brk heap), a .bss buffer, a .data buffer and a stack buffer;
 *   - registers: with AVX-512 (avx512f + avx512bw) zmm16..zmm31 and k1..k7,
 *     without it ymm0..ymm15; plus rbx, rdx, rsi, rdi, r8, r9, r10 and
 *     r12..r15 (all the general registers a syscall does not clobber, but
 *     rbp and rsp);
 *   - a SIGUSR1 handler (no SA_RESTART), and alarm(600) as a safety net:
 *     SIGALRM keeps its default action, so a victim nobody wakes dies after
 *     10 minutes (it prints nothing then; the harness sees the signal).
 * It pins itself to the CPU it runs on, so that the kernel never rewrites
 * the rseq area (cpu_id) in its TLS while it waits.
 *
 * Then it prints READY and, in ONE asm block, loads the registers and
 * blocks in a raw pause() syscall (nr 34), issued right after the loads so
 * nothing clobbers them. The test wakes it with SIGUSR1 (NOT the go file,
 * which is ignored): pause returns -EINTR, the asm stores the registers,
 * and the victim checks registers, memory and that exactly its handler ran,
 * then prints PASS.
 *
 * Built without -mavx512f on purpose (like fpu.c): only the functions that
 * need it carry target attributes.
 *
 * usage: steady GO_FILE [avx]      ("avx" forces the AVX path)
 */
#define _GNU_SOURCE
#include "victim.h"
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#define BIG_SIZE (40UL << 20)
#define SMALL_SIZE (192UL << 10)
#define BSS_SIZE (64UL << 10)
#define STACK_BUF (16UL << 10)
#define NGPR 11

/* Fixed offsets: the asm addresses the fields as steady_regs+OFF(%rip). */
struct regs {
	uint8_t zin[16 * 64];  /* 0:    zmm16..31 (or ymm0..15 in 32-byte slots) */
	uint8_t zout[16 * 64]; /* 1024 */
	uint64_t kin[8];       /* 2048: k0 unused */
	uint64_t kout[8];      /* 2112 */
	uint64_t gin[NGPR];    /* 2176: rbx rdx rsi rdi r8 r9 r10 r12 r13 r14 r15 */
	uint64_t gout[NGPR];   /* 2264 */
	int64_t ret;           /* 2352: what pause returned */
} __attribute__((aligned(64)));
_Static_assert(offsetof(struct regs, zout) == 1024, "zout");
_Static_assert(offsetof(struct regs, kin) == 2048, "kin");
_Static_assert(offsetof(struct regs, kout) == 2112, "kout");
_Static_assert(offsetof(struct regs, gin) == 2176, "gin");
_Static_assert(offsetof(struct regs, gout) == 2264, "gout");
_Static_assert(offsetof(struct regs, ret) == 2352, "ret");

/* Global with a fixed assembler name, reachable rip-relative from the asm. */
__attribute__((visibility("hidden"))) struct regs steady_regs __asm__("steady_regs");

static const char *const gpr_names[NGPR] = { "rbx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r12", "r13", "r14", "r15" };

static unsigned char bss_buf[BSS_SIZE];
static unsigned char data_buf[4096] = { 1, 2, 3 }; /* in .data, overwritten below */
static volatile sig_atomic_t usr1_count;

static void on_usr1(int sig)
{
	(void)sig;
	usr1_count++;
}

#define Z_LOAD(n, m) "vmovdqu64 steady_regs+" #n "*64(%%rip), %%zmm" #m "\n\t"
#define Z_STORE(n, m) "vmovdqu64 %%zmm" #m ", steady_regs+1024+" #n "*64(%%rip)\n\t"
#define Y_LOAD(n) "vmovdqu steady_regs+" #n "*64(%%rip), %%ymm" #n "\n\t"
#define Y_STORE(n) "vmovdqu %%ymm" #n ", steady_regs+1024+" #n "*64(%%rip)\n\t"
#define K_LOAD(n) "kmovq steady_regs+2048+" #n "*8(%%rip), %%k" #n "\n\t"
#define K_STORE(n) "kmovq %%k" #n ", steady_regs+2112+" #n "*8(%%rip)\n\t"
#define G_LOAD(i, reg) "mov steady_regs+2176+" #i "*8(%%rip), %%" #reg "\n\t"
#define G_STORE(i, reg) "mov %%" #reg ", steady_regs+2264+" #i "*8(%%rip)\n\t"

#define Z_ALL(M) M(0, 16) M(1, 17) M(2, 18) M(3, 19) M(4, 20) M(5, 21) M(6, 22) M(7, 23) \
	M(8, 24) M(9, 25) M(10, 26) M(11, 27) M(12, 28) M(13, 29) M(14, 30) M(15, 31)
#define Y_ALL(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
#define K_ALL(M) M(1) M(2) M(3) M(4) M(5) M(6) M(7)
#define G_ALL(M) M(0, rbx) M(1, rdx) M(2, rsi) M(3, rdi) M(4, r8) M(5, r9) M(6, r10) \
	M(7, r12) M(8, r13) M(9, r14) M(10, r15)

/* pause() (nr 34), result stored; rcx and r11 are clobbered by syscall. */
#define PAUSE                                                                  \
	"mov $34, %%eax\n\t"                                                   \
	"syscall\n\t"                                                          \
	"mov %%rax, steady_regs+2352(%%rip)\n\t"

#define GPR_CLOBBERS "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", \
	"r12", "r13", "r14", "r15", "memory", "cc"
#define XMM0_15 "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", \
	"xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"
#define XMM16_31 "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", \
	"xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31"

__attribute__((target("avx512f,avx512bw"), noinline))
static void wait_avx512(void)
{
	asm volatile(Z_ALL(Z_LOAD) K_ALL(K_LOAD) G_ALL(G_LOAD)
		     PAUSE
		     G_ALL(G_STORE) Z_ALL(Z_STORE) K_ALL(K_STORE)
		     "vzeroupper\n\t"
		     ::: GPR_CLOBBERS, XMM16_31, "k1", "k2", "k3", "k4", "k5", "k6", "k7");
}

__attribute__((target("avx"), noinline))
static void wait_avx(void)
{
	asm volatile(Y_ALL(Y_LOAD) G_ALL(G_LOAD)
		     PAUSE
		     G_ALL(G_STORE) Y_ALL(Y_STORE)
		     "vzeroupper\n\t"
		     ::: GPR_CLOBBERS, XMM0_15);
}

static void check_mem(const char *what, const void *p, size_t len, unsigned seed)
{
	long off = check(p, len, seed);
	if (off >= 0)
		fail("%s (%zu bytes at %p) differs at offset %ld: 0x%02x, expected 0x%02x", what, len, p, off,
		     ((const unsigned char *)p)[off], pattern(seed, (size_t)off));
}

int main(int argc, char **argv)
{
	volatile unsigned char stack_buf[STACK_BUF];
	int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");

	need_args(argc, argv, 1, "GO_FILE [avx]");
	if (argc > 2 && !strcmp(argv[2], "avx"))
		avx512 = 0;
	if (!avx512 && !__builtin_cpu_supports("avx"))
		fail("this CPU has neither AVX-512 nor AVX");

	int cpu = sched_getcpu();
	if (cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set) != 0)
			fail("sched_setaffinity to cpu %d: %s", cpu, strerror(errno));
	}

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART */
	if (sigaction(SIGUSR1, &sa, NULL) != 0)
		fail("sigaction SIGUSR1: %s", strerror(errno));
	alarm(600); /* safety net: SIGALRM's default action kills */

	unsigned char *big = malloc(BIG_SIZE), *small = malloc(SMALL_SIZE);
	if (!big || !small)
		fail("malloc");
	fill(big, BIG_SIZE, 501);
	fill(small, SMALL_SIZE, 502);
	fill(bss_buf, BSS_SIZE, 503);
	fill(data_buf, sizeof(data_buf), 504);
	fill((void *)stack_buf, STACK_BUF, 505);

	fill(steady_regs.zin, sizeof(steady_regs.zin), 506);
	memset(steady_regs.zout, 0, sizeof(steady_regs.zout));
	for (int k = 0; k < 8; k++)
		steady_regs.kin[k] = (0x0fedcba987654321ULL * (uint64_t)(k + 5)) ^ ((uint64_t)k << 61);
	for (int i = 0; i < NGPR; i++)
		steady_regs.gin[i] = 0x5a5a000000000000ULL ^ (0x1111111111ULL * (uint64_t)(i + 1)) ^ ((uint64_t)i << 40);
	steady_regs.ret = 1;

	printf("mode %s, pid %d, pinned to cpu %d, big %p\n",
	       avx512 ? "avx512 (zmm16-31, k1-7, gprs)" : "avx (ymm0-15, gprs)", (int)getpid(), cpu, (void *)big);
	ready(); /* last libc call before the registers are loaded */
	if (avx512)
		wait_avx512();
	else
		wait_avx();

	if (steady_regs.ret != -EINTR)
		fail("pause returned %lld, expected -EINTR (%d)", (long long)steady_regs.ret, -EINTR);
	if (usr1_count != 1)
		fail("the SIGUSR1 handler ran %d times, expected once", (int)usr1_count);
	for (int i = 0; i < NGPR; i++)
		if (steady_regs.gout[i] != steady_regs.gin[i])
			fail("%s is %#llx, expected %#llx", gpr_names[i], (unsigned long long)steady_regs.gout[i],
			     (unsigned long long)steady_regs.gin[i]);
	size_t width = avx512 ? 64 : 32;
	for (size_t n = 0; n < 16; n++) {
		const uint8_t *want = steady_regs.zin + n * 64, *got = steady_regs.zout + n * 64;
		for (size_t b = 0; b < width; b++)
			if (want[b] != got[b])
				fail("%s%zu byte %zu is 0x%02x, expected 0x%02x", avx512 ? "zmm" : "ymm", avx512 ? n + 16 : n,
				     b, got[b], want[b]);
	}
	for (int k = 1; avx512 && k < 8; k++)
		if (steady_regs.kout[k] != steady_regs.kin[k])
			fail("k%d is %#llx, expected %#llx", k, (unsigned long long)steady_regs.kout[k],
			     (unsigned long long)steady_regs.kin[k]);
	check_mem("the 40 MiB malloc", big, BIG_SIZE, 501);
	check_mem("the 192 KiB malloc", small, SMALL_SIZE, 502);
	check_mem("the .bss buffer", bss_buf, BSS_SIZE, 503);
	check_mem("the .data buffer", data_buf, sizeof(data_buf), 504);
	check_mem("the stack buffer", (const void *)stack_buf, STACK_BUF, 505);
	pass();
}
