/*
 * fpu: vector registers, opmask registers and MXCSR survive dump/restore.
 *
 * With AVX-512 (avx512f + avx512bw): loads a distinct pattern into all of
 * zmm0..zmm31 (so xmm, the ymm upper halves and the zmm upper halves are all
 * covered) and k1..k7, and sets MXCSR to a non-default value. Without
 * AVX-512 it falls back to ymm0..ymm15 (AVX) and MXCSR.
 * The whole wait (write READY, poll for the go file, sleep) runs inside ONE
 * asm block with raw syscalls, which preserve the vector state (libc calls
 * might not). After the loop the registers are stored to memory, still
 * inside the asm block, and compared with the pattern.
 *
 * Built without -mavx512f on purpose: the AVX-512 and AVX functions carry
 * target attributes instead, so the rest of the program stays plain x86-64
 * and the fallback really runs on CPUs without AVX-512.
 *
 * usage: fpu GO_FILE [avx]     ("avx" forces the AVX path)
 */
#include "victim.h"
#include <stddef.h>
#include <stdint.h>

#define NR_write 1
#define NR_access 21
#define NR_nanosleep 35
#define STR_(x) #x
#define STR(x) STR_(x)
#define MXCSR_PATTERN 0xffc0u /* round toward zero, FTZ, DAZ, all masked */
#define MXCSR_DEFAULT 0x1f80u

/* One struct so the asm needs a single base register; offsets are fixed. */
struct regs {
	uint8_t zin[32 * 64];   /* offset 0    */
	uint8_t zout[32 * 64];  /* offset 2048 */
	uint64_t kin[8];        /* offset 4096 */
	uint64_t kout[8];       /* offset 4160 */
	uint32_t mxcsr_in;      /* offset 4224 */
	uint32_t mxcsr_out;     /* offset 4228 */
	uint32_t mxcsr_default; /* offset 4232 */
} __attribute__((aligned(64)));
_Static_assert(offsetof(struct regs, zout) == 2048, "zout");
_Static_assert(offsetof(struct regs, kin) == 4096, "kin");
_Static_assert(offsetof(struct regs, kout) == 4160, "kout");
_Static_assert(offsetof(struct regs, mxcsr_in) == 4224, "mxcsr_in");

static struct regs r;
static const char ready_msg[] = "READY\n";

#define Z_LOAD(n) "vmovdqu64 " #n "*64(%[r]), %%zmm" #n "\n\t"
#define Z_STORE(n) "vmovdqu64 %%zmm" #n ", 2048+" #n "*64(%[r])\n\t"
#define Y_LOAD(n) "vmovdqu " #n "*32(%[r]), %%ymm" #n "\n\t"
#define Y_STORE(n) "vmovdqu %%ymm" #n ", 2048+" #n "*32(%[r])\n\t"
#define K_LOAD(n) "kmovq 4096+" #n "*8(%[r]), %%k" #n "\n\t"
#define K_STORE(n) "kmovq %%k" #n ", 4160+" #n "*8(%[r])\n\t"

#define X8(M, a, b, c, d, e, f, g, h) M(a) M(b) M(c) M(d) M(e) M(f) M(g) M(h)
#define ALL16(M) X8(M, 0, 1, 2, 3, 4, 5, 6, 7) X8(M, 8, 9, 10, 11, 12, 13, 14, 15)
#define ALL32(M) ALL16(M) X8(M, 16, 17, 18, 19, 20, 21, 22, 23) X8(M, 24, 25, 26, 27, 28, 29, 30, 31)
#define K1TO7(M) M(1) M(2) M(3) M(4) M(5) M(6) M(7)

/* write(1, "READY\n");
 * while (access(go, F_OK) && --polls) nanosleep(10 ms); */
#define WAIT_LOOP                                                              \
	"mov $" STR(NR_write) ", %%eax\n\t"                                    \
	"mov $1, %%edi\n\t"                                                    \
	"mov %[msg], %%rsi\n\t"                                                \
	"mov $6, %%edx\n\t"                                                    \
	"syscall\n\t"                                                          \
	"1:\n\t"                                                               \
	"mov $" STR(NR_access) ", %%eax\n\t"                                   \
	"mov %[go], %%rdi\n\t"                                                 \
	"xor %%esi, %%esi\n\t"                                                 \
	"syscall\n\t"                                                          \
	"test %%rax, %%rax\n\t"                                                \
	"jz 2f\n\t"                                                            \
	"dec %[polls]\n\t"                                                     \
	"jz 2f\n\t"                                                            \
	"mov $" STR(NR_nanosleep) ", %%eax\n\t" /* EINTR just loops */         \
	"mov %[ts], %%rdi\n\t"                                                 \
	"xor %%esi, %%esi\n\t"                                                 \
	"syscall\n\t"                                                          \
	"jmp 1b\n\t"                                                           \
	"2:\n\t"

#define GPR_CLOBBERS "rax", "rcx", "rdx", "rsi", "rdi", "r11", "memory", "cc"
#define XMM0_15 "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", \
	"xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"
#define XMM16_31 "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", \
	"xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31"

__attribute__((target("avx512f,avx512bw"), noinline))
static void run_avx512(const char *go, const struct timespec *ts, long *polls)
{
	asm volatile("ldmxcsr 4224(%[r])\n\t"
		     ALL32(Z_LOAD) K1TO7(K_LOAD)
		     WAIT_LOOP
		     ALL32(Z_STORE) K1TO7(K_STORE)
		     "stmxcsr 4228(%[r])\n\t"
		     "ldmxcsr 4232(%[r])\n\t"
		     "vzeroupper\n\t"
		     : [polls] "+r"(*polls)
		     : [r] "r"(&r), [go] "r"(go), [ts] "r"(ts), [msg] "r"(ready_msg)
		     : GPR_CLOBBERS, XMM0_15, XMM16_31,
		       "k1", "k2", "k3", "k4", "k5", "k6", "k7");
}

__attribute__((target("avx"), noinline))
static void run_avx(const char *go, const struct timespec *ts, long *polls)
{
	asm volatile("ldmxcsr 4224(%[r])\n\t"
		     ALL16(Y_LOAD)
		     WAIT_LOOP
		     ALL16(Y_STORE)
		     "stmxcsr 4228(%[r])\n\t"
		     "ldmxcsr 4232(%[r])\n\t"
		     "vzeroupper\n\t"
		     : [polls] "+r"(*polls)
		     : [r] "r"(&r), [go] "r"(go), [ts] "r"(ts), [msg] "r"(ready_msg)
		     : GPR_CLOBBERS, XMM0_15);
}

int main(int argc, char **argv)
{
	const struct timespec ts = { 0, 10 * 1000 * 1000 };
	int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");

	need_args(argc, argv, 1, "GO_FILE [avx]");
	if (argc > 2 && !strcmp(argv[2], "avx"))
		avx512 = 0;
	if (!avx512 && !__builtin_cpu_supports("avx"))
		fail("this CPU has neither AVX-512 nor AVX");

	fill(r.zin, sizeof(r.zin), 400);
	for (int k = 0; k < 8; k++)
		r.kin[k] = (0x0123456789abcdefULL * (uint64_t)(k + 3)) ^ ((uint64_t)k << 59);
	r.mxcsr_in = MXCSR_PATTERN;
	r.mxcsr_default = MXCSR_DEFAULT;

	printf("mode %s\n", avx512 ? "avx512 (zmm0-31, k1-7, mxcsr)" : "avx (ymm0-15, mxcsr)");
	fflush(stdout);

	/* Prints READY from inside the asm block, once the registers are loaded. */
	long polls = GO_TIMEOUT_POLLS;
	if (avx512)
		run_avx512(argv[1], &ts, &polls);
	else
		run_avx(argv[1], &ts, &polls);
	if (polls == 0)
		fail("no go file after %ld polls; giving up", GO_TIMEOUT_POLLS);

	size_t width = avx512 ? 64 : 32, nregs = avx512 ? 32 : 16;
	for (size_t n = 0; n < nregs; n++) {
		const uint8_t *want = r.zin + n * width, *got = r.zout + n * width;
		for (size_t b = 0; b < width; b++)
			if (want[b] != got[b])
				fail("%s%zu byte %zu is 0x%02x, expected 0x%02x", avx512 ? "zmm" : "ymm", n, b, got[b], want[b]);
	}
	for (int k = 1; avx512 && k < 8; k++)
		if (r.kout[k] != r.kin[k])
			fail("k%d is %#llx, expected %#llx", k, (unsigned long long)r.kout[k], (unsigned long long)r.kin[k]);
	if (r.mxcsr_out != MXCSR_PATTERN)
		fail("mxcsr is %#x, expected %#x", r.mxcsr_out, MXCSR_PATTERN);
	pass();
}
