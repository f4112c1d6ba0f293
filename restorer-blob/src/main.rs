//! The restorer blob: position-independent, no libc, no panics.
//!
//! The host jumps to `__rcr_blob_entry` with `rdi` pointing at
//! [`RestoreArgs`] inside the bootstrap region (layout: see `rcr-abi`). The
//! blob then, in order:
//!
//! 1. parks the current [vvar]/[vvar_vclock]/[vdso] inside the region,
//! 2. unmaps everything outside the region,
//! 3. maps every saved VMA at its address (MAP_FIXED_NOREPLACE),
//! 4. reads the saved pages into place (with a second thread reading the
//!    second half when the host planned one, [`read_pages`]) and applies
//!    final protections,
//! 5. moves the parked vDSO mappings to their saved addresses,
//! 6. sets the mm fields (PR_SET_MM_MAP), the TLS bases, the rseq
//!    registration, the clear_child_tid address and the robust list,
//! 7. creates the other threads with their saved TIDs (clone3 `set_tid`);
//!    each sets its own per-thread state, counts itself ready and waits,
//! 8. queues the signals pending for single threads, creates the POSIX
//!    timers under their ids (`timers`), sets the resource limits, arms
//!    the itimers and the POSIX timers,
//! 9. reports to the tracing host with `int3` (rax = 0), releases the
//!    threads, applies its scheduling, credentials and seccomp state
//!    ([`creds`], after every thread did its own) and calls rt_sigreturn
//!    on the sigframe the host prepared; every thread does the same on its
//!    own frame, after an `int3` (rax = THREAD_RETURN_MAGIC) that lets the
//!    host step it through its rt_sigreturn.
//!
//! On failure it stops at `int3` with rax = -errno, rdi = step, rsi = item
//! index, and never continues: the host kills it.
#![no_std]
#![no_main]

rcr_abi::blob_mem_functions!();

mod creds;

use rcr_abi::sys;

use core::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use rcr_abi::{CloneArgs, PageRun, PendingSig, RestoreArgs, RestoreStep, ThreadArgs, VmaEntry, NR_SPECIAL, RESTORE_ARGS_MAGIC, TASK_SIZE, THREAD_RETURN_MAGIC};

rcr_abi::blob_entry!(restore_main);

mod timers;

const MAP_FIXED_NOREPLACE: u64 = 0x100000;
const MREMAP_MAYMOVE: u64 = 1;
const MREMAP_FIXED: u64 = 2;
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
const ARCH_SET_GS: u64 = 0x1001;
const ARCH_SET_FS: u64 = 0x1002;
const PAGE_SIZE: u64 = 4096;
const PR_SET_NAME: u64 = 15;
const FUTEX_WAIT_PRIVATE: u64 = 128;
const FUTEX_WAKE_PRIVATE: u64 = 129;
/// Shared (not private) wait: the kernel's CLONE_CHILD_CLEARTID wake is.
const FUTEX_WAIT: u64 = 0;
/// What a thread made by [`clone_into`] runs.
const CHILD_THREAD: u64 = 0;
const CHILD_READER: u64 = 1;

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
    read_pages(a, runs);
    protect_vmas(vmas);
    advise_vmas(vmas);
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
    if a.robust_list_len != 0 {
        let r = sys::syscall2(sys::NR_SET_ROBUST_LIST, a.robust_list, a.robust_list_len);
        check(RestoreStep::RobustList, 0, r);
    }
    spawn_threads(a);
    queue_pending(a);
    timers::create(a);
    creds::set_rlimits(a).unwrap_or_else(|(step, i, err)| fail(step, i, err));
    // Timers last: they start counting as the process is about to run.
    for (which, t) in a.itimers.iter().enumerate() {
        if t.value_sec != 0 || t.value_usec != 0 {
            let r = sys::syscall3(sys::NR_SETITIMER, which as u64, t as *const _ as u64, 0);
            check(RestoreStep::Itimers, which as u64, r);
        }
    }
    timers::arm(a);
    report(0, 0, 0);
    if a.nr_threads != 0 {
        let go = futex_word(&a.go);
        go.store(1, Ordering::Release);
        sys::syscall3(sys::NR_FUTEX, go.as_ptr() as u64, FUTEX_WAKE_PRIVATE, i32::MAX as u64);
    }
    creds::leader_after_go(a).unwrap_or_else(|(step, i, err)| fail(step, i, err));
    sigreturn(a.sigframe)
}

/// rt_sigreturn on the frame whose `pretcode` slot is at `frame`.
fn sigreturn(frame: u64) -> ! {
    // SAFETY: the host built a complete rt_sigframe at `frame`; rt_sigreturn
    // replaces every register, so nothing of this stack frame is used after.
    // A direct jump to a hidden label stays PC-relative (no GOT entry).
    unsafe {
        core::arch::asm!("jmp __rcr_sigreturn", in("rdi") frame + 8, options(noreturn));
    }
}

/// A futex word of the arguments, shared by every thread of the blob.
fn futex_word(w: &u32) -> &AtomicU32 {
    // SAFETY: the word is 4-byte aligned (asserted layout), lives in the
    // region for the blob's lifetime, and is only accessed atomically once
    // threads exist.
    unsafe { AtomicU32::from_ptr(w as *const u32 as *mut u32) }
}

/// A result word of the page reader, written by one thread, read by the
/// other.
fn shared_word(w: &i64) -> &AtomicI64 {
    // SAFETY: as for futex_word: 8-byte aligned (asserted layout), in the
    // region, only accessed atomically while two threads exist.
    unsafe { AtomicI64::from_ptr(w as *const i64 as *mut i64) }
}

/// Creates every saved thread and waits until each has set itself up;
/// fails with the first thread's error.
fn spawn_threads(a: &RestoreArgs) {
    if a.nr_threads == 0 {
        return;
    }
    // SAFETY: the host wrote `nr_threads` ThreadArgs at `threads`, aligned.
    let threads = unsafe { core::slice::from_raw_parts(a.threads as *const ThreadArgs, a.nr_threads as usize) };
    let ready = futex_word(&a.ready);
    for (i, t) in threads.iter().enumerate() {
        let r = clone_into(&t.clone, CHILD_THREAD, t as *const ThreadArgs as u64);
        if r < 0 {
            fail(RestoreStep::SpawnThread, i as u64, r);
        }
    }
    loop {
        let n = ready.load(Ordering::Acquire);
        if n as u64 >= a.nr_threads {
            break;
        }
        sys::syscall4(sys::NR_FUTEX, ready.as_ptr() as u64, FUTEX_WAIT_PRIVATE, n as u64, 0);
    }
    for (i, t) in threads.iter().enumerate() {
        // SAFETY: the thread wrote its result before counting itself ready
        // (release/acquire through `ready`).
        let result = unsafe { core::ptr::read_volatile(&t.result) };
        if result < 0 {
            let step = RestoreStep::from_u64(t.step).unwrap_or(RestoreStep::SpawnThread);
            fail(step, rcr_abi::THREAD_INDEX | i as u64, result);
        }
    }
}

/// clone3 with `c` into [`child_entry`]`(arg, kind)` on the stack `c`
/// names. Returns the new TID (or -errno) in the calling thread; the new
/// thread never returns.
fn clone_into(c: &CloneArgs, kind: u64, arg: u64) -> i64 {
    let ret: i64;
    // SAFETY: clone3 with CLONE_VM|CLONE_THREAD... on a stack of the region
    // reserved for this thread (the host set `c.stack`). The child starts
    // on that stack with every register but rax/rcx/r11 as here, so r12 and
    // r13 still hold `arg` and `kind`; it calls child_entry, which never
    // returns. The parent just gets the TID.
    unsafe {
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "mov rsi, r13",
            "and rsp, -16",
            "call {main}",
            "ud2",
            "2:",
            main = sym child_entry,
            inlateout("rax") sys::NR_CLONE3 as i64 => ret,
            in("rdi") c as *const CloneArgs as u64,
            in("rsi") core::mem::size_of_val(c) as u64,
            in("r12") arg,
            in("r13") kind,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// First code of a thread made by [`clone_into`]: a saved thread
/// ([`ThreadArgs`]) or the page reader ([`RestoreArgs`]).
extern "C" fn child_entry(arg: u64, kind: u64) -> ! {
    if kind == CHILD_READER {
        reader_main(arg as *const RestoreArgs)
    }
    thread_main(arg as *mut ThreadArgs)
}

/// A new thread: per-thread state, then wait for the leader's go and
/// rt_sigreturn into the saved registers.
fn thread_main(t: *mut ThreadArgs) -> ! {
    // SAFETY: `t` is this thread's ThreadArgs in the region; only this
    // thread writes it (result/step) until it counts itself ready.
    let t = unsafe { &mut *t };
    let result = thread_setup(t);
    if let Err((step, err)) = result {
        t.step = step as u64;
        t.result = err;
    }
    // SAFETY: the host pointed `restore_args` at the process's RestoreArgs,
    // in the same region; threads only touch its futex words, atomically.
    let a = unsafe { &*(t.restore_args as *const RestoreArgs) };
    let ready = futex_word(&a.ready);
    ready.fetch_add(1, Ordering::AcqRel);
    sys::syscall3(sys::NR_FUTEX, ready.as_ptr() as u64, FUTEX_WAKE_PRIVATE, 1);
    if result.is_err() {
        loop {
            sys::syscall1(sys::NR_EXIT, 1);
        }
    }
    let go = futex_word(&a.go);
    while go.load(Ordering::Acquire) == 0 {
        sys::syscall4(sys::NR_FUTEX, go.as_ptr() as u64, FUTEX_WAIT_PRIVATE, 0, 0);
    }
    creds::thread_after_go(t, a);
    // SAFETY: int3 traps to the tracing host, which steps this thread
    // through the rt_sigreturn below (or kills the tree).
    unsafe { core::arch::asm!("int3", in("rax") THREAD_RETURN_MAGIC, options(nostack)) };
    sigreturn(t.sigframe)
}

fn thread_setup(t: &ThreadArgs) -> Result<(), (RestoreStep, i64)> {
    let ok = |step, r: i64| if r < 0 { Err((step, r)) } else { Ok(()) };
    if t.tile_data != 0 {
        // SAFETY: the host set `tile_data` only for a process it gave the
        // tile data permission (ARCH_REQ_XCOMP_PERM) before the blob ran.
        unsafe { rcr_abi::grow_for_tile_data() };
    }
    ok(RestoreStep::SetTls, sys::syscall2(sys::NR_ARCH_PRCTL, ARCH_SET_GS, t.gs_base))?;
    if t.rseq_len != 0 {
        ok(RestoreStep::Rseq, sys::syscall4(sys::NR_RSEQ, t.rseq_ptr, t.rseq_len as u64, 0, t.rseq_sig as u64))?;
    }
    if t.tid_address != 0 {
        sys::syscall1(sys::NR_SET_TID_ADDRESS, t.tid_address);
    }
    if t.robust_list_len != 0 {
        ok(RestoreStep::RobustList, sys::syscall2(sys::NR_SET_ROBUST_LIST, t.robust_list, t.robust_list_len))?;
    }
    ok(RestoreStep::ThreadName, sys::syscall2(sys::NR_PRCTL, PR_SET_NAME, t.comm.as_ptr() as u64))
}

/// Queues the signals saved as pending for one thread only. The leader may
/// send any si_code to a thread of its own process.
fn queue_pending(a: &RestoreArgs) {
    // SAFETY: the host wrote `nr_pending` PendingSig at `pending`, aligned.
    let sigs = unsafe { core::slice::from_raw_parts(a.pending as *const PendingSig, a.nr_pending as usize) };
    let tgid = sys::syscall0(sys::NR_GETPID);
    for (i, p) in sigs.iter().enumerate() {
        let r = sys::syscall4(sys::NR_RT_TGSIGQUEUEINFO, tgid as u64, p.tid as u64, p.signo as u64, p.siginfo.as_ptr() as u64);
        check(RestoreStep::QueueSignal, i as u64, r);
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

/// Reads every run into place. With a planned reader thread that starts,
/// the leader reads bytes [0, reader.from) and the thread the rest; the
/// leader then waits until the thread is gone. If clone3 fails (its TID
/// was taken since the plan, ...), the leader reads everything itself.
fn read_pages(a: &RestoreArgs, runs: &[PageRun]) {
    let total = runs.iter().map(|r| r.nr_pages * PAGE_SIZE).sum::<u64>();
    let mut split = total;
    if a.reader.from != 0 && a.reader.from < total {
        let tid = clone_into(&a.reader.clone, CHILD_READER, a as *const RestoreArgs as u64);
        shared_word(&a.reader.outcome).store(tid, Ordering::Relaxed);
        if tid > 0 {
            split = a.reader.from;
        }
    }
    if let Err((i, err)) = read_range([a.pages_fd, a.pages_fd1], runs, 0, split) {
        fail(RestoreStep::ReadPages, i, err);
    }
    if split < total {
        wait_reader(a);
    }
}

/// Waits until the reader thread exited (the kernel zeroes `alive`), then
/// fails with its error if it had one.
fn wait_reader(a: &RestoreArgs) {
    let alive = futex_word(&a.reader.alive);
    loop {
        let v = alive.load(Ordering::Acquire);
        if v == 0 {
            break;
        }
        sys::syscall4(sys::NR_FUTEX, alive.as_ptr() as u64, FUTEX_WAIT, v as u64, 0);
    }
    let err = shared_word(&a.reader.result).load(Ordering::Acquire);
    if err < 0 {
        // The reader stored `run` before its result (release/acquire).
        fail(RestoreStep::ReadPages, shared_word(&a.reader.run).load(Ordering::Relaxed) as u64, err);
    }
}

/// The page reader thread: reads its part, leaves its result, exits (the
/// thread only; the kernel then zeroes `alive` and wakes the leader).
fn reader_main(a: *const RestoreArgs) -> ! {
    // SAFETY: `a` is the process's RestoreArgs in the region; this thread
    // only reads it, and writes its result words atomically.
    let a = unsafe { &*a };
    // SAFETY: as in restore_main: the host wrote `nr_page_runs` runs there.
    let runs = unsafe { core::slice::from_raw_parts(a.page_runs as *const PageRun, a.nr_page_runs as usize) };
    if let Err((i, err)) = read_range([a.pages_fd, a.pages_fd1], runs, a.reader.from, u64::MAX) {
        shared_word(&a.reader.run).store(i as i64, Ordering::Relaxed);
        shared_word(&a.reader.result).store(err, Ordering::Release);
    }
    loop {
        sys::syscall1(sys::NR_EXIT, 0);
    }
}

/// Reads bytes [from, to) of the runs laid end to end into place; on
/// failure, the run's index and -errno.
fn read_range(fds: [i32; 2], runs: &[PageRun], from: u64, to: u64) -> Result<(), (u64, i64)> {
    let mut pos = 0u64;
    for (i, run) in runs.iter().enumerate() {
        let len = run.nr_pages * PAGE_SIZE;
        let (lo, hi) = (from.max(pos), to.min(pos + len));
        if lo < hi {
            let fd = match fds.get(run.part as usize) {
                Some(&fd) if fd >= 0 => fd,
                _ => return Err((i as u64, -9)),
            };
            let mut done = lo - pos;
            while done < hi - pos {
                let r = sys::syscall4(sys::NR_PREAD64, fd as u64, run.vaddr + done, hi - pos - done, run.file_off + done);
                if r <= 0 {
                    return Err((i as u64, if r == 0 { -5 } else { r }));
                }
                done += r as u64;
            }
        }
        pos += len;
    }
    Ok(())
}

fn protect_vmas(vmas: &[VmaEntry]) {
    for (i, v) in vmas.iter().enumerate() {
        if v.map_prot != v.final_prot {
            let r = sys::syscall3(sys::NR_MPROTECT, v.start, v.len, v.final_prot as u64);
            check(RestoreStep::Protect, i as u64, r);
        }
    }
}

fn advise_vmas(vmas: &[VmaEntry]) {
    for (i, v) in vmas.iter().enumerate() {
        for (bit, advice) in rcr_abi::MADV_BITS.iter().enumerate() {
            if v.madvise & (1 << bit) != 0 {
                check(RestoreStep::Madvise, i as u64, sys::syscall3(sys::NR_MADVISE, v.start, v.len, *advice));
            }
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
    for fd in [a.pages_fd, a.pages_fd1] {
        if fd >= 0 {
            sys::close(fd);
        }
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
