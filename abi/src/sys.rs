//! Raw x86-64 Linux syscalls for the blobs (feature `blob-sys`).
//!
//! Register ABI: number in rax; arguments in rdi, rsi, rdx, r10, r8, r9;
//! result in rax (-4095..-1 is -errno); rcx and r11 are clobbered.
//!
//! Also the memory primitives the compiler may emit calls to: the blobs
//! link no libc, so `memcpy`/`memset`/`memmove`/`memcmp`/`bcmp` come from
//! [`blob_mem_functions!`], written with string instructions so they
//! cannot recurse into themselves.

pub const NR_PREAD64: u64 = 17;
pub const NR_MMAP: u64 = 9;
pub const NR_MPROTECT: u64 = 10;
pub const NR_MUNMAP: u64 = 11;
pub const NR_CLOSE: u64 = 3;
pub const NR_MREMAP: u64 = 25;
pub const NR_EXIT_GROUP: u64 = 231;
pub const NR_PRCTL: u64 = 157;
pub const NR_ARCH_PRCTL: u64 = 158;
pub const NR_RSEQ: u64 = 334;

#[inline(always)]
pub fn syscall6(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64, a6: u64) -> i64 {
    let ret: i64;
    // SAFETY: a raw syscall; the callers pass arguments the restorer owns
    // (addresses inside the region or the saved layout). The kernel
    // clobbers only rcx and r11, declared here.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr as i64 => ret,
            in("rdi") a1, in("rsi") a2, in("rdx") a3,
            in("r10") a4, in("r8") a5, in("r9") a6,
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

#[inline(always)]
pub fn syscall5(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    syscall6(nr, a1, a2, a3, a4, a5, 0)
}
#[inline(always)]
pub fn syscall4(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    syscall6(nr, a1, a2, a3, a4, 0, 0)
}
#[inline(always)]
pub fn syscall3(nr: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    syscall6(nr, a1, a2, a3, 0, 0, 0)
}
#[inline(always)]
pub fn syscall2(nr: u64, a1: u64, a2: u64) -> i64 {
    syscall6(nr, a1, a2, 0, 0, 0, 0)
}

pub fn close(fd: i32) {
    syscall6(NR_CLOSE, fd as u64, 0, 0, 0, 0, 0);
}

pub fn exit_group(code: i32) {
    syscall6(NR_EXIT_GROUP, code as u64, 0, 0, 0, 0, 0);
}

/// Emits a blob's entry code: `__rcr_blob_entry` (at offset 0 through the
/// linker script) loads the stack pointer from the first word of the args
/// in `rdi` and calls `$main(args)`; `__rcr_sigreturn` calls rt_sigreturn
/// on the frame whose `pretcode` slot ends at `rdi`; `__rcr_syscall_insn`
/// labels its `syscall` instruction, which the host may reuse.
#[macro_export]
macro_rules! blob_entry {
    ($main:path) => {
        core::arch::global_asm!(
            ".section .text.entry,\"ax\",@progbits",
            ".globl __rcr_blob_entry",
            ".hidden __rcr_blob_entry",
            "__rcr_blob_entry:",
            "    mov rsp, [rdi]",
            "    and rsp, -16",
            "    call {main}",
            "    ud2",
            ".globl __rcr_sigreturn",
            ".hidden __rcr_sigreturn",
            "__rcr_sigreturn:",
            "    mov rsp, rdi",
            "    mov eax, 15",
            ".globl __rcr_syscall_insn",
            ".hidden __rcr_syscall_insn",
            "__rcr_syscall_insn:",
            "    syscall",
            "    ud2",
            ".text",
            main = sym $main,
        );
    };
}

/// Defines `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp` in the blob
/// crate that invokes it. They must live in the binary crate itself: the
/// linker then binds the compiler's calls to them directly, where symbols
/// from a library crate would be reached through GOT entries (dynamic
/// relocations the flat blob cannot have).
#[macro_export]
macro_rules! blob_mem_functions {
    () => {
        /// # Safety
        /// `dst` and `src` must be valid for `n` bytes and not overlap.
        #[no_mangle]
        pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
            // SAFETY: the caller guarantees both ranges are valid for n bytes.
            unsafe {
                core::arch::asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _, options(nostack, preserves_flags));
            }
            dst
        }

        /// # Safety
        /// `dst` and `src` must be valid for `n` bytes; they may overlap.
        #[no_mangle]
        pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
            if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
                // SAFETY: forward copy is correct when dst does not start inside src.
                return unsafe { memcpy(dst, src, n) };
            }
            // SAFETY: backward copy with the direction flag set, restored after.
            unsafe {
                core::arch::asm!(
                    "std", "rep movsb", "cld",
                    inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
                    options(nostack),
                );
            }
            dst
        }

        /// # Safety
        /// `dst` must be valid for `n` bytes.
        #[no_mangle]
        pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
            // SAFETY: the caller guarantees dst is valid for n bytes.
            unsafe {
                core::arch::asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8, options(nostack, preserves_flags));
            }
            dst
        }

        /// # Safety
        /// `a` and `b` must be valid for `n` bytes.
        #[no_mangle]
        pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
            let mut i = 0;
            while i < n {
                // SAFETY: i < n and both ranges are valid for n bytes.
                let (x, y) = unsafe { (core::ptr::read_volatile(a.add(i)), core::ptr::read_volatile(b.add(i))) };
                if x != y {
                    return x as i32 - y as i32;
                }
                i += 1;
            }
            0
        }

        /// # Safety
        /// As `memcmp`.
        #[no_mangle]
        pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
            // SAFETY: same contract as memcmp.
            unsafe { memcmp(a, b, n) }
        }
    };
}

pub const NR_WRITE: u64 = 1;
pub const NR_NANOSLEEP: u64 = 35;
pub const NR_RT_SIGACTION: u64 = 13;
pub const NR_PWRITE64: u64 = 18;
pub const NR_GETITIMER: u64 = 36;
pub const NR_SETITIMER: u64 = 38;
pub const NR_SOCKET: u64 = 41;
pub const NR_CONNECT: u64 = 42;
pub const NR_SENDMSG: u64 = 46;
pub const NR_RECVMSG: u64 = 47;
pub const NR_BRK: u64 = 12;
pub const NR_UMASK: u64 = 95;
pub const NR_RT_SIGPENDING: u64 = 127;
pub const NR_RT_SIGTIMEDWAIT: u64 = 128;
pub const NR_SIGALTSTACK: u64 = 131;
pub const NR_PERSONALITY: u64 = 135;
pub const NR_GETTID: u64 = 186;
pub const NR_SET_TID_ADDRESS: u64 = 218;
pub const NR_VMSPLICE: u64 = 278;
pub const NR_FUTEX: u64 = 202;
pub const NR_MADVISE: u64 = 28;
pub const NR_SET_ROBUST_LIST: u64 = 273;
pub const NR_RT_TGSIGQUEUEINFO: u64 = 297;
pub const NR_CLONE3: u64 = 435;
pub const NR_EXIT: u64 = 60;
pub const NR_GETPID: u64 = 39;

#[inline(always)]
pub fn syscall1(nr: u64, a1: u64) -> i64 {
    syscall6(nr, a1, 0, 0, 0, 0, 0)
}
#[inline(always)]
pub fn syscall0(nr: u64) -> i64 {
    syscall6(nr, 0, 0, 0, 0, 0, 0)
}

/// `struct iovec`.
#[repr(C)]
#[derive(Debug)]
pub struct IoVec {
    pub base: u64,
    pub len: u64,
}

/// `struct msghdr`.
#[repr(C)]
#[derive(Debug)]
pub struct MsgHdr {
    pub name: u64,
    pub namelen: u32,
    pub _pad: u32,
    pub iov: u64,
    pub iovlen: u64,
    pub control: u64,
    pub controllen: u64,
    pub flags: i32,
    pub _pad2: u32,
}

impl MsgHdr {
    /// A message of one buffer, with a control buffer of `controllen`
    /// bytes at `control` (0, 0 for none).
    pub fn new(iov: &mut IoVec, control: u64, controllen: u64) -> Self {
        MsgHdr {
            name: 0,
            namelen: 0,
            _pad: 0,
            iov: iov as *mut IoVec as u64,
            iovlen: 1,
            control,
            controllen,
            flags: 0,
            _pad2: 0,
        }
    }
}

/// `struct cmsghdr`, followed by its data.
#[repr(C)]
#[derive(Debug)]
pub struct CmsgHdr {
    pub len: u64,
    pub level: i32,
    pub kind: i32,
}

pub const SOL_SOCKET: i32 = 1;
pub const SCM_RIGHTS: i32 = 1;
