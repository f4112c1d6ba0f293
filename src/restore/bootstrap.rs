//! The bootstrap region: the restorer blob, its arguments, the sigframe,
//! its stack and the place where the vDSO is parked, in one anonymous
//! mapping placed where neither rcr's current mappings nor the saved ones
//! are. Built in rcr before forking; the child inherits it, fills in the
//! fds it opened, and jumps.
//!
//! ```text
//! | code | RestoreArgs, VmaEntry[], PageRun[], ThreadArgs[], PendingSig[], PosixTimerArgs[], creds data |
//! | sigframe | a sigframe per other thread | stack | a stack per other thread | [reader stack] | vDSO park |
//! ```
//!
//! A process with at least [`READER_MIN`] bytes of pages gets a page
//! reader thread (one more small stack; [`rcr_abi::PageReader`]) when rcr
//! found a TID for it ([`pick_reader_tids`]).
#![allow(unsafe_code)]

use crate::arch::cur::sigframe;
use crate::blobs as blob;
use crate::images::pb;
use crate::mm::restore::Plan;
use anyhow::{bail, Context, Result};
use rcr_abi::parasite::ITimerVal;
use rcr_abi::{CloneArgs, PageReader, PageRun, PendingSig, PosixTimerArgs, RestoreArgs, ThreadArgs, VmaEntry, NR_SPECIAL, RESTORE_ARGS_MAGIC, TASK_SIZE};
use std::mem::{align_of, size_of};

const PAGE: u64 = 4096;
const STACK_SIZE: u64 = 64 << 10;
/// Stack of each other thread in the blob (a few frames, no signals).
const THREAD_STACK: u64 = 16 << 10;
const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS) as u64;
/// Saved pages from which a process gets a page reader thread: below,
/// starting a thread costs more than the half of the reading it saves.
pub const READER_MIN: u64 = 16 << 20;
/// The page reader's clone flags: a thread that clears `alive` at exit.
const READER_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_CHILD_CLEARTID) as u64;
/// Lowest address considered for the region.
const LOW: u64 = 1 << 32;

fn page_up(x: u64) -> u64 {
    (x + PAGE - 1) & !(PAGE - 1)
}

/// A mapped bootstrap region of this process.
#[derive(Debug)]
pub struct Region {
    pub start: u64,
    pub len: u64,
    args_off: u64,
    vmas_off: u64,
    nr_vmas: usize,
    /// The page reader's TID, if one is planned.
    pub reader_tid: Option<i32>,
}

/// Lowest gap of `len` bytes (plus a guard page on each side) above LOW
/// that none of `busy` touches.
pub fn find_hole(busy: &mut [(u64, u64)], len: u64) -> Result<u64> {
    busy.sort_unstable();
    let mut cand = LOW;
    for &(s, e) in busy.iter() {
        if e + PAGE <= cand {
            continue;
        }
        if s >= cand + len + 2 * PAGE {
            break;
        }
        cand = cand.max(page_up(e) + PAGE);
    }
    if cand + len + PAGE > TASK_SIZE {
        bail!("no room for the {len}-byte bootstrap region in the address space");
    }
    Ok(cand + PAGE)
}

impl Region {
    /// Maps the region at a free place and fills everything but the fds.
    /// `reader_tid`: the TID for the page reader thread, if the process
    /// gets one.
    pub fn build(plan: &Plan, core: &pb::TaskCore, busy: &mut [(u64, u64)], xcr0: u64, reader_tid: Option<i32>) -> Result<Region> {
        let regs = core.regs.as_ref().context("core image: no registers")?;
        let pending = thread_pending(core)?;
        let nthreads = core.threads.len() as u64;
        let code_len = page_up(blob::RESTORER_MEM_SIZE as u64);
        let args_off = code_len;
        let vmas_off = args_off + (size_of::<RestoreArgs>() as u64).next_multiple_of(64);
        let runs_off = vmas_off + (plan.vmas.len() * size_of::<VmaEntry>()) as u64;
        let threads_off = runs_off + (plan.runs.len() * size_of::<PageRun>()) as u64;
        let pending_off = threads_off + nthreads * size_of::<ThreadArgs>() as u64;
        let (timers, timer_restore_ids) = crate::timers::blob_args(core);
        let timers_off = pending_off + (pending.len() * size_of::<PendingSig>()) as u64;
        let creds_off = (timers_off + (timers.len() * size_of::<PosixTimerArgs>()) as u64).next_multiple_of(8);
        let frame_off = page_up(creds_off + crate::creds::restore::pack(core, 0).data.len() as u64);
        let frame_len = page_up(sigframe::frame_size(core.xsave.len()) as u64);
        let stack_off = frame_off + frame_len * (1 + nthreads);
        let reader_stack_off = stack_off + STACK_SIZE + THREAD_STACK * nthreads;
        let park_off = reader_stack_off + if reader_tid.is_some() { THREAD_STACK } else { 0 };
        let (park_base, park_len) = park_span(plan);
        let len = park_off + page_up(park_len);
        let start = find_hole(busy, len)?;
        map_fixed(start, len)?;
        let r = Region { start, len, args_off, vmas_off, nr_vmas: plan.vmas.len(), reader_tid };
        let creds = crate::creds::restore::pack(core, start + creds_off);

        // SAFETY: [start, start+len) was just mapped read-write by us and is
        // referenced by nothing else; every write below stays inside it
        // (offsets computed above from the same sizes).
        unsafe {
            let base = start as *mut u8;
            std::ptr::copy_nonoverlapping(blob::RESTORER_BLOB.as_ptr(), base, blob::RESTORER_BLOB.len());
            let vmas = base.add(vmas_off as usize) as *mut VmaEntry;
            std::ptr::copy_nonoverlapping(plan.vmas.as_ptr(), vmas, plan.vmas.len());
            let runs = base.add(runs_off as usize) as *mut PageRun;
            std::ptr::copy_nonoverlapping(plan.runs.as_ptr(), runs, plan.runs.len());
            let sigs = base.add(pending_off as usize) as *mut PendingSig;
            std::ptr::copy_nonoverlapping(pending.as_ptr(), sigs, pending.len());
            let tmrs = base.add(timers_off as usize) as *mut PosixTimerArgs;
            std::ptr::copy_nonoverlapping(timers.as_ptr(), tmrs, timers.len());
            std::ptr::copy_nonoverlapping(creds.data.as_ptr(), base.add(creds_off as usize), creds.data.len());
            let frame = std::slice::from_raw_parts_mut(base.add(frame_off as usize), frame_len as usize);
            // All signals stay blocked through rt_sigreturn (pending ones and
            // fresh timer ticks included) until rcr, done with the task,
            // sets the saved masks (restore::supervise).
            sigframe::build(frame, start + frame_off, regs, &core.xsave, u64::MAX, altstack(&core.altstack), xcr0)?;
            for (i, t) in core.threads.iter().enumerate() {
                let i = i as u64;
                let at = frame_off + frame_len * (1 + i);
                let frame = std::slice::from_raw_parts_mut(base.add(at as usize), frame_len as usize);
                let tregs = t.regs.as_ref().with_context(|| format!("core image: thread {} has no registers", t.tid))?;
                sigframe::build(frame, start + at, tregs, &t.xsave, u64::MAX, altstack(&t.altstack), xcr0)
                    .with_context(|| format!("thread {}", t.tid))?;
                let slot = threads_off + i * size_of::<ThreadArgs>() as u64;
                let stack = start + stack_off + STACK_SIZE + THREAD_STACK * i;
                let mut ta = thread_args(t, start + slot, start + at, stack, start + args_off);
                ta.creds = creds.threads[i as usize];
                std::ptr::write(base.add(slot as usize) as *mut ThreadArgs, ta);
            }
        }
        let mut special = plan.special;
        for s in special.iter_mut().take(NR_SPECIAL) {
            if s.len != 0 {
                s.park = start + park_off + (s.cur - park_base);
            }
        }
        let mut mm_map = plan.mm_map;
        let (rlimits, rlimits_set) = crate::creds::restore::rlimits(core);
        let (dumpable, pdeathsig) = crate::creds::restore::task_flags(core);
        let args = RestoreArgs {
            stack_top: start + stack_off + STACK_SIZE,
            magic: RESTORE_ARGS_MAGIC,
            region_start: start,
            region_len: len,
            vmas: start + vmas_off,
            nr_vmas: plan.vmas.len() as u64,
            page_runs: start + runs_off,
            nr_page_runs: plan.runs.len() as u64,
            sigframe: start + frame_off,
            fs_base: regs.fs_base,
            gs_base: regs.gs_base,
            special,
            mm_map,
            auxv: plan.auxv,
            pages_fd: -1,
            exe_fd: -1,
            rseq_ptr: core.rseq.as_ref().map_or(0, |r| r.pointer),
            rseq_len: core.rseq.as_ref().map_or(0, |r| r.size),
            rseq_sig: core.rseq.as_ref().map_or(0, |r| r.signature),
            tid_address: core.tid_address,
            itimers: [itimer(&core.itimer_real), itimer(&core.itimer_virtual), itimer(&core.itimer_prof)],
            robust_list: core.robust_list,
            robust_list_len: core.robust_list_len,
            threads: start + threads_off,
            nr_threads: nthreads,
            pending: start + pending_off,
            nr_pending: pending.len() as u64,
            ready: 0,
            go: 0,
            timers: start + timers_off,
            nr_timers: timers.len() as u64,
            timer_restore_ids,
            rlimits,
            rlimits_set,
            dumpable,
            pdeathsig,
            creds_done: 0,
            creds: creds.leader,
            pages_fd1: -1,
            _pad_pages: 0,
            reader: reader_tid.map_or_else(PageReader::default, |tid| reader_args(plan, tid, start + args_off, start + reader_stack_off)),
        };
        mm_map.auxv = start + args_off + std::mem::offset_of!(RestoreArgs, auxv) as u64;
        let args = RestoreArgs { mm_map, ..args };
        const _: () = assert!(align_of::<RestoreArgs>() <= 64);
        // SAFETY: args_off is inside the region and 64-byte aligned.
        unsafe { std::ptr::write((start + args_off) as *mut RestoreArgs, args) };
        protect(start, code_len, libc::PROT_READ | libc::PROT_EXEC)?;
        Ok(r)
    }

    fn args_mut(&mut self) -> &mut RestoreArgs {
        // SAFETY: `build` wrote a RestoreArgs at this aligned offset of the
        // region, which lives until `unmap`; &mut self guarantees uniqueness.
        unsafe { &mut *((self.start + self.args_off) as *mut RestoreArgs) }
    }

    /// The VMA table, for the child to fill in the fds it opened.
    pub fn vmas_mut(&mut self) -> &mut [VmaEntry] {
        // SAFETY: `build` wrote nr_vmas entries at this aligned offset.
        unsafe { std::slice::from_raw_parts_mut((self.start + self.vmas_off) as *mut VmaEntry, self.nr_vmas) }
    }

    /// The pages files (part 0 and, if the process has one, part 1) and
    /// the exe file.
    pub fn set_fds(&mut self, pages_fds: [i32; 2], exe_fd: i32) {
        let a = self.args_mut();
        [a.pages_fd, a.pages_fd1] = pages_fds;
        a.exe_fd = exe_fd;
        a.mm_map.exe_fd = exe_fd as u32;
    }

    /// Address of the blob's `syscall` instruction (reused from outside).
    pub fn syscall_insn(&self) -> u64 {
        self.start + blob::RESTORER_SYSCALL_INSN as u64
    }

    /// Enters the restorer blob. Never returns: the blob either rebuilds
    /// this process into the saved one or stops for the tracer to kill it.
    ///
    /// # Safety
    /// Only in the restore child, with all signals blocked, a tracer
    /// attached, and the fds filled in.
    pub unsafe fn jump(&self) -> ! {
        let entry = self.start + blob::RESTORER_ENTRY as u64;
        let args = self.start + self.args_off;
        // SAFETY: the caller upholds the contract above; the blob loads its
        // own stack from args and never returns here.
        unsafe { std::arch::asm!("jmp {e}", e = in(reg) entry, in("rdi") args, options(noreturn)) }
    }

    /// Unmaps the region from this process (rcr's own copy after forking).
    pub fn unmap(self) {
        // SAFETY: nothing in rcr refers to the region after the fork.
        unsafe { libc::munmap(self.start as *mut libc::c_void, self.len as usize) };
    }

    /// Address of the reader's `outcome` word in the restored process.
    pub fn reader_outcome_addr(&self) -> u64 {
        self.start + self.args_off + (std::mem::offset_of!(RestoreArgs, reader) + std::mem::offset_of!(PageReader, outcome)) as u64
    }
}

/// The page reader of a process whose RestoreArgs are at `args`: TID
/// `tid`, a stack at `stack`, the second half of the pages (page aligned).
fn reader_args(plan: &Plan, tid: i32, args: u64, stack: u64) -> PageReader {
    let reader = args + std::mem::offset_of!(RestoreArgs, reader) as u64;
    let clone = CloneArgs {
        flags: READER_CLONE_FLAGS,
        child_tid: reader + std::mem::offset_of!(PageReader, alive) as u64,
        stack,
        stack_size: THREAD_STACK,
        set_tid: reader + std::mem::offset_of!(PageReader, tid) as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    PageReader { clone, tid, alive: 1, from: plan.nr_pages() / 2 * PAGE, ..Default::default() }
}

/// A TID for the page reader of each process of `plans` (None: a zombie)
/// with at least [`READER_MIN`] bytes of pages: counting down from
/// pid_max - 1, pids with no /proc entry now that are none of `taken`
/// (the image set's pids and tids). RCR_TEST_READER_TID=N (tests only)
/// makes N the first pick.
pub fn pick_reader_tids(plans: &[Option<&Plan>], taken: &std::collections::HashSet<i32>) -> Vec<Option<i32>> {
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse::<i32>().ok()).unwrap_or(32768);
    let mut forced = std::env::var("RCR_TEST_READER_TID").ok().and_then(|s| s.parse::<i32>().ok());
    let mut next = pid_max - 1;
    let mut pick = || -> Option<i32> {
        if let Some(n) = forced.take() {
            return Some(n);
        }
        while next > 300 {
            let n = next;
            next -= 1;
            if !taken.contains(&n) && !std::path::Path::new(&format!("/proc/{n}")).exists() {
                return Some(n);
            }
        }
        None
    };
    plans.iter().map(|p| p.filter(|p| p.nr_pages() * PAGE >= READER_MIN).and_then(|_| pick())).collect()
}

fn altstack(a: &Option<pb::AltStack>) -> sigframe::AltStack {
    a.as_ref().map_or(sigframe::AltStack::NONE, |a| sigframe::AltStack { sp: a.sp, flags: a.flags, size: a.size })
}

/// The blob's arguments for one other thread: `slot` is where they go in
/// the region, `frame` its sigframe, `stack` the low end of its stack.
fn thread_args(t: &pb::ThreadCore, slot: u64, frame: u64, stack: u64, restore_args: u64) -> ThreadArgs {
    let mut comm = [0u8; 16];
    let name = t.comm.as_bytes();
    let n = name.len().min(15);
    comm[..n].copy_from_slice(&name[..n]);
    let clone = CloneArgs {
        flags: THREAD_CLONE_FLAGS,
        stack,
        stack_size: THREAD_STACK,
        tls: t.regs.as_ref().map_or(0, |r| r.fs_base),
        set_tid: slot + std::mem::offset_of!(ThreadArgs, tid) as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    ThreadArgs {
        clone,
        tid: t.tid as i32,
        tile_data: u32::from(crate::arch::cur::tile_data_live(&t.xsave)),
        sigframe: frame,
        gs_base: t.regs.as_ref().map_or(0, |r| r.gs_base),
        rseq_ptr: t.rseq.as_ref().map_or(0, |r| r.pointer),
        rseq_len: t.rseq.as_ref().map_or(0, |r| r.size),
        rseq_sig: t.rseq.as_ref().map_or(0, |r| r.signature),
        tid_address: t.tid_address,
        robust_list: t.robust_list,
        robust_list_len: t.robust_list_len,
        comm,
        result: 0,
        step: 0,
        restore_args,
        creds: Default::default(),
    }
}

/// Signals pending for one of the other threads, for the blob to queue.
fn thread_pending(core: &pb::TaskCore) -> Result<Vec<PendingSig>> {
    let mut out = Vec::new();
    for t in &core.threads {
        for p in &t.pending {
            let siginfo: [u8; 128] = p.siginfo.as_slice().try_into().map_err(|_| {
                anyhow::anyhow!("core image: thread {}: pending signal {} has a siginfo of {} bytes", t.tid, p.signo, p.siginfo.len())
            })?;
            out.push(PendingSig { tid: t.tid as i32, signo: p.signo as i32, siginfo });
        }
    }
    Ok(out)
}

fn itimer(t: &Option<pb::ITimer>) -> ITimerVal {
    let t = t.unwrap_or_default();
    let split = |us: u64| ((us / 1_000_000) as i64, (us % 1_000_000) as i64);
    // Value 0 with an interval: a periodic ITIMER_REAL whose SIGALRM was
    // still pending (the kernel re-arms it when the signal is dequeued).
    // That signal is queued again on restore; arm the timer for the next
    // period. Value 0 without an interval: disarmed, the blob leaves it so.
    let value_us = if t.value_us == 0 { t.interval_us } else { t.value_us };
    let ((interval_sec, interval_usec), (value_sec, value_usec)) = (split(t.interval_us), split(value_us));
    ITimerVal { interval_sec, interval_usec, value_sec, value_usec }
}

fn park_span(plan: &Plan) -> (u64, u64) {
    let present: Vec<_> = plan.special.iter().filter(|s| s.len != 0).collect();
    let lo = present.iter().map(|s| s.cur).min().unwrap_or(0);
    let hi = present.iter().map(|s| s.cur + s.len).max().unwrap_or(0);
    (lo, hi - lo)
}

fn map_fixed(start: u64, len: u64) -> Result<()> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the
    // range was chosen free of this process's mappings.
    let p = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED || p as u64 != start {
        bail!("mapping the bootstrap region at {start:#x}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn protect(start: u64, len: u64, prot: i32) -> Result<()> {
    // SAFETY: changes protection of the region's code pages, which only the
    // blob (not rcr) executes or writes.
    if unsafe { libc::mprotect(start as *mut libc::c_void, len as usize, prot) } != 0 {
        bail!("mprotect of the bootstrap code: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
