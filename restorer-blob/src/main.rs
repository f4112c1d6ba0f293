//! The restorer blob: position-independent, no libc, no panics.
//!
//! The host jumps to `__rcr_blob_entry` with `rdi` pointing at
//! [`RestoreArgs`] inside the bootstrap region (layout: see `rcr-abi`). The
//! blob then, in order:
//!
//! 1. parks the current [vvar]/[vvar_vclock]/[vdso] inside the region,
//! 2. unmaps everything outside the region,
//! 3. maps every saved VMA at its address (MAP_FIXED_NOREPLACE),
//! 4. reads the saved pages into place and applies final protections,
//! 5. moves the parked vDSO mappings to their saved addresses,
//! 6. sets the mm fields (PR_SET_MM_MAP), the TLS bases, the rseq
//!    registration, the clear_child_tid address and the itimers,
//! 7. reports to the tracing host with `int3` (rax = 0) and calls
//!    rt_sigreturn on the sigframe the host prepared.
//!
//! On failure it stops at `int3` with rax = -errno, rdi = step, rsi = item
//! index, and never continues: the host kills it.
#![no_std]
#![no_main]

rcr_abi::blob_mem_functions!();

use rcr_abi::sys;

use rcr_abi::{PageRun, RestoreArgs, RestoreStep, VmaEntry, NR_SPECIAL, RESTORE_ARGS_MAGIC, TASK_SIZE};

rcr_abi::blob_entry!(restore_main);

const MAP_FIXED_NOREPLACE: u64 = 0x100000;
const MREMAP_MAYMOVE: u64 = 1;
const MREMAP_FIXED: u64 = 2;
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
const ARCH_SET_GS: u64 = 0x1001;
const ARCH_SET_FS: u64 = 0x1002;
const PAGE_SIZE: u64 = 4096;

/// Stops for the host: rax = result, rdi = step, rsi = index.
#[inline(always)]
fn report(result: i64, step: u64, index: u64) {
    // SAFETY: int3 traps to the tracing host, which reads the registers and
    // either resumes us right after it (success) or kills us.
    unsafe {
        core::arch::asm!("int3", in("rax") result, in("rdi") step, in("rsi") index, options(nostack));
    }
}

fn fail(step: RestoreStep, index: u64, err: i64) -> ! {
    loop {
        report(if err < 0 { err } else { -1 }, step as u64, index);
        sys::exit_group(127);
    }
}

fn check(step: RestoreStep, index: u64, ret: i64) -> i64 {
    if ret < 0 {
        fail(step, index, ret);
    }
    ret
}

extern "C" fn restore_main(args: *const RestoreArgs) -> ! {
    // SAFETY: the host placed a fully initialised RestoreArgs at `args`,
    // inside the bootstrap region that stays mapped for the blob's lifetime.
    let a = unsafe { &*args };
    if a.magic != RESTORE_ARGS_MAGIC {
        fail(RestoreStep::BadArgs, 0, -22);
    }
    // SAFETY: the host wrote `nr_vmas` VmaEntry and `nr_page_runs` PageRun
    // values at these region addresses, suitably aligned.
    let vmas = unsafe { core::slice::from_raw_parts(a.vmas as *const VmaEntry, a.nr_vmas as usize) };
    // SAFETY: as above.
    let runs = unsafe { core::slice::from_raw_parts(a.page_runs as *const PageRun, a.nr_page_runs as usize) };

    park_special(a);
    unmap_old(a);
    map_vmas(vmas);
    read_pages(a.pages_fd, runs);
    protect_vmas(vmas);
    close_helper_fds(a, vmas);
    place_special(a);
    let mm_map = a.mm_map;
    check(
        RestoreStep::SetMm,
        0,
        sys::syscall5(
            sys::NR_PRCTL,
            PR_SET_MM,
            PR_SET_MM_MAP,
            &mm_map as *const _ as u64,
            core::mem::size_of_val(&mm_map) as u64,
            0,
        ),
    );
    if a.exe_fd >= 0 {
        sys::close(a.exe_fd);
    }
    check(RestoreStep::SetTls, 0, sys::syscall2(sys::NR_ARCH_PRCTL, ARCH_SET_FS, a.fs_base));
    check(RestoreStep::SetTls, 1, sys::syscall2(sys::NR_ARCH_PRCTL, ARCH_SET_GS, a.gs_base));
    if a.rseq_len != 0 {
        let r = sys::syscall4(sys::NR_RSEQ, a.rseq_ptr, a.rseq_len as u64, 0, a.rseq_sig as u64);
        check(RestoreStep::Rseq, 0, r);
    }
    if a.tid_address != 0 {
        sys::syscall1(sys::NR_SET_TID_ADDRESS, a.tid_address);
    }
    // Timers last: they start counting as the process is about to run.
    for (which, t) in a.itimers.iter().enumerate() {
        if t.value_sec != 0 || t.value_usec != 0 {
            let r = sys::syscall3(sys::NR_SETITIMER, which as u64, t as *const _ as u64, 0);
            check(RestoreStep::Itimers, which as u64, r);
        }
    }
    report(0, 0, 0);
    // SAFETY: the host built a complete rt_sigframe at `sigframe`; rt_sigreturn
    // replaces every register, so nothing of this stack frame is used after.
    // A direct jump to a hidden label stays PC-relative (no GOT entry).
    unsafe {
        core::arch::asm!("jmp __rcr_sigreturn", in("rdi") a.sigframe + 8, options(noreturn));
    }
}

fn park_special(a: &RestoreArgs) {
    for i in 0..NR_SPECIAL {
        let s = a.special[i];
        if s.len == 0 || s.cur == 0 {
            continue;
        }
        let r = sys::syscall5(sys::NR_MREMAP, s.cur, s.len, s.len, MREMAP_MAYMOVE | MREMAP_FIXED, s.park);
        check(RestoreStep::ParkSpecial, i as u64, r);
    }
}

fn unmap_old(a: &RestoreArgs) {
    let end = a.region_start + a.region_len;
    if a.region_start > 0 {
        check(RestoreStep::UnmapOld, 0, sys::syscall2(sys::NR_MUNMAP, 0, a.region_start));
    }
    if end < TASK_SIZE {
        check(RestoreStep::UnmapOld, 1, sys::syscall2(sys::NR_MUNMAP, end, TASK_SIZE - end));
    }
}

fn map_vmas(vmas: &[VmaEntry]) {
    for (i, v) in vmas.iter().enumerate() {
        let fd = if v.fd >= 0 { v.fd as u64 } else { u64::MAX };
        let r = sys::syscall6(
            sys::NR_MMAP,
            v.start,
            v.len,
            v.map_prot as u64,
            v.flags as u64 | MAP_FIXED_NOREPLACE,
            fd,
            v.pgoff,
        );
        check(RestoreStep::MapVma, i as u64, r);
        if r as u64 != v.start {
            fail(RestoreStep::MapVma, i as u64, -17);
        }
    }
}

fn read_pages(fd: i32, runs: &[PageRun]) {
    for (i, run) in runs.iter().enumerate() {
        let mut done = 0u64;
        let total = run.nr_pages * PAGE_SIZE;
        while done < total {
            let r = sys::syscall4(
                sys::NR_PREAD64,
                fd as u64,
                run.vaddr + done,
                total - done,
                run.file_off + done,
            );
            if r == 0 {
                fail(RestoreStep::ReadPages, i as u64, -5);
            }
            done += check(RestoreStep::ReadPages, i as u64, r) as u64;
        }
    }
}

fn protect_vmas(vmas: &[VmaEntry]) {
    for (i, v) in vmas.iter().enumerate() {
        if v.map_prot != v.final_prot {
            let r = sys::syscall3(sys::NR_MPROTECT, v.start, v.len, v.final_prot as u64);
            check(RestoreStep::Protect, i as u64, r);
        }
    }
}

fn close_helper_fds(a: &RestoreArgs, vmas: &[VmaEntry]) {
    // Several VMAs may share one fd; a second close gets EBADF, which is fine.
    for v in vmas {
        if v.fd >= 0 {
            sys::close(v.fd);
        }
    }
    if a.pages_fd >= 0 {
        sys::close(a.pages_fd);
    }
}

fn place_special(a: &RestoreArgs) {
    for i in 0..NR_SPECIAL {
        let s = a.special[i];
        if s.len == 0 {
            continue;
        }
        let r = if s.target == 0 {
            sys::syscall2(sys::NR_MUNMAP, s.park, s.len)
        } else {
            sys::syscall5(sys::NR_MREMAP, s.park, s.len, s.len, MREMAP_MAYMOVE | MREMAP_FIXED, s.target)
        };
        check(RestoreStep::PlaceSpecial, i as u64, r);
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction (the build rejects blobs that link the
    // panic machinery's formatting); stop hard if it ever happens.
    loop {
        sys::exit_group(126);
    }
}
