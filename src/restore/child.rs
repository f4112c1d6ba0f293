//! What a restore child does: it is still a copy of rcr, and turns
//! itself, step by step, into the shell of a saved process, then jumps
//! into the restorer blob:
//!
//! 1. block every signal; the root waits for rcr's go (rcr traces it
//!    first; every process forked after it is traced from birth),
//! 2. found its session or group (a session leader takes its controlling
//!    terminal: [`crate::files::tty::pty`]), fork its children
//!    ([`crate::tree::restore`]),
//! 3. barrier "forked": every process of the tree exists,
//! 4. join a group another process leads; barrier "grouped"; a session
//!    leader sets the foreground group of its terminal,
//! 5. a zombie dies here with its saved status; the others wait until
//!    their zombie children are dead, then rebuild fs, fds (pipes from
//!    the ones rcr created, [`Inherited`]), name, signal dispositions,
//!    flags and pending signals, and jump.
//!
//! A barrier is an `int3` with [`BARRIER_MAGIC`] in rax: rcr holds the
//! process there until every process arrived. Errors go back to rcr as
//! text over the shared error pipe; the child then exits.
#![allow(unsafe_code)]

use super::bootstrap::Region;
use super::{Inherited, Loaded, Proc, Tree};
use crate::files::{self, FileTable};
use crate::images::pb;
use rcr_abi::parasite::KSigaction;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};

/// rax at a barrier's `int3` (the blob's report has 0 or -errno there).
pub const BARRIER_MAGIC: u64 = 0x7263_725f_6261_7272;
/// rdi at the barriers.
pub const BARRIER_FORKED: u64 = 1;
pub const BARRIER_GROUPED: u64 = 2;

/// The two pipe ends the child keeps until the jump.
#[derive(Debug)]
pub struct Sync {
    pub go_read: RawFd,
    pub err_write: RawFd,
}

/// Becomes process `idx` of `tree`. Never returns.
pub fn run(tree: &Tree, idx: usize, regions: &mut [Option<Region>], inherited: &Inherited, sync: &Sync) -> ! {
    block_all_signals();
    let pid = tree.procs[idx].pid();
    let Err(e) = become_process(tree, idx, regions, inherited, sync);
    // SAFETY: err_write is this process's copy of the error pipe's write end.
    let mut err = unsafe { std::fs::File::from_raw_fd(sync.err_write) };
    let _ = write!(err, "pid {pid}: {e:#}");
    crate::sys::exit_now(1)
}

fn become_process(tree: &Tree, idx: usize, regions: &mut [Option<Region>], inherited: &Inherited, sync: &Sync) -> Result<Infallible> {
    let p = &tree.procs[idx];
    if idx == 0 {
        wait_for_go(sync.go_read)?;
    }
    crate::tree::restore::found(p.kin)?;
    files::tty::pty::take_controlling(p.pid(), &tree.fd_images, &inherited.descs)?;
    if idx == 0 {
        files::tty::shell::enter(&tree.fd_images, p.kin)?;
    }
    for &c in &p.children {
        crate::tree::restore::fork_child(tree.procs[c].pid(), || run(tree, c, regions, inherited, sync))?;
    }
    barrier(BARRIER_FORKED);
    crate::tree::restore::join(p.kin)?;
    barrier(BARRIER_GROUPED);
    files::tty::pty::set_foreground(p.pid(), &tree.fd_images, &inherited.descs)?;
    let Some(l) = &p.live else {
        let _ = nix::sys::prctl::set_name(&std::ffi::CString::new(p.comm.as_bytes()).unwrap_or_default());
        die(p.exit_status)
    };
    wait_for_zombies(tree, p)?;
    let region = regions[idx].as_mut().context("no bootstrap region")?;
    prepare(l, tree.bound.as_ref(), &tree.files, &tree.fd_images, region, inherited, sync)?;
    crate::sys::close(sync.err_write);
    // SAFETY: single-threaded child, signals blocked, traced by rcr since
    // before its birth (the root: since the go byte), fds filled in by
    // `prepare`.
    unsafe { region.jump() }
}

fn wait_for_go(fd: RawFd) -> Result<()> {
    // SAFETY: go_read is this process's end of the go pipe; consumed here.
    let mut go = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut b = [0u8; 1];
    if go.read(&mut b).context("waiting for rcr")? != 1 {
        bail!("rcr went away before the restore started");
    }
    Ok(())
}

/// Stops for rcr until every process of the tree reached barrier `n`.
fn barrier(n: u64) {
    // SAFETY: int3 traps to rcr, which traces this process; rcr resumes it
    // right after the instruction, suppressing the SIGTRAP.
    unsafe { std::arch::asm!("int3", in("rax") BARRIER_MAGIC, in("rdi") n, options(nostack)) };
}

/// A zombie's end: exit with its saved status, or die by its signal (no
/// core dump).
fn die(status: i32) -> ! {
    let sig = status & 0x7f;
    if sig != 0 {
        // SAFETY: plain syscalls on this process only: no core dump, the
        // signal's default action, unblocked, then sent to ourselves.
        unsafe {
            libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
        }
    }
    crate::sys::exit_now((status >> 8) & 0xff)
}

/// Waits (without reaping) until every zombie child of `p` has died and
/// rcr, its tracer, has let its parent see it.
fn wait_for_zombies(tree: &Tree, p: &Proc) -> Result<()> {
    for &c in &p.children {
        let child = &tree.procs[c];
        if child.live.is_some() {
            continue;
        }
        let flags = nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT;
        loop {
            let id = nix::sys::wait::Id::Pid(nix::unistd::Pid::from_raw(child.pid()));
            match nix::sys::wait::waitid(id, flags) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => {
                    r.with_context(|| format!("waiting for zombie child {}", child.pid()))?;
                    break;
                }
            }
        }
    }
    Ok(())
}

fn prepare(l: &Loaded, tree_bound: Option<&crate::creds::trust::Bound>, files: &FileTable, fd_images: &files::fds::Images, region: &mut Region, inherited: &Inherited, sync: &Sync) -> Result<()> {
    // SAFETY: personality(2) with a value the task had.
    unsafe { libc::personality(l.core.personality as libc::c_ulong) };
    // The pages files, opened through the image directory fd (closed next),
    // above every fd number the process will use.
    let max_fd = l.fds.iter().map(|f| f.fd as RawFd).chain(inherited.fds()).max().unwrap_or(2).max(2);
    let mut pages = [-1; 2];
    for (fd, name) in pages.iter_mut().zip(&l.pages_names) {
        let opened = l.pages_dir.open_file(name)?;
        *fd = crate::sys::dup_above(opened.as_raw_fd(), max_fd + 1).with_context(|| format!("moving the fd of {name}"))?;
    }
    // A compressed image: the memfd rcr decompressed it into (this child's
    // copy, already above the process's fds; the blob closes it).
    if let Some(mem) = &l.pages_mem {
        pages[0] = mem.as_raw_fd();
    }
    // The tree's own files are opened as the user an untrusted set is bounded by.
    let ids = tree_bound.map(|b| b.files_as()).transpose()?.flatten();
    files::fs::restore(&l.fs)?;
    let mut keep = inherited.fds();
    keep.push(sync.err_write);
    keep.extend(pages.iter().filter(|fd| **fd >= 0));
    crate::sys::close_all_except(&keep)?;
    files::fds::place(&l.fds, &inherited.descs)?;
    files::fds::after_fds(l.core.pid as i32, &l.fds, fd_images)?;
    crate::sys::lower_nofile();
    open_mapping_fds(l, files, region, inherited, pages)?;
    inherited.close_all_except(&l.fds);
    drop(ids);
    nix::sys::prctl::set_name(&std::ffi::CString::new(l.core.comm.as_bytes()).unwrap_or_default()).context("PR_SET_NAME")?;
    restore_sigactions(&l.core)?;
    restore_task_flags(&l.core)?;
    crate::arch::cur::prepare_xstate(l.core.xcomp_dynamic, &l.core.xsave)?;
    crate::creds::restore::set_oom_score_adj(&l.core)?;
    queue_pending(&l.core)?;
    unregister_own_rseq()?;
    Ok(())
}

/// Drops the rseq area glibc registered for rcr's thread (inherited by
/// this child): once the blob unmaps rcr's memory, the kernel would fault
/// updating it and kill the task with SIGSEGV on its next preemption.
fn unregister_own_rseq() -> Result<()> {
    extern "C" {
        // glibc >= 2.35: offset of the rseq area from the thread pointer,
        // and its size (0 if glibc did not register one).
        static __rseq_offset: isize;
        static __rseq_size: u32;
    }
    const RSEQ_FLAG_UNREGISTER: u64 = 1;
    const RSEQ_SIG: u64 = 0x5305_3053; // glibc's x86 signature
    // SAFETY: plain reads of two glibc constants set before main.
    let (offset, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size == 0 {
        return Ok(());
    }
    let tp: u64;
    // SAFETY: on x86-64 glibc, fs:0 holds the thread pointer itself.
    unsafe { std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly)) };
    let area = (tp as i64 + offset as i64) as u64;
    // glibc registers at least the original 32-byte struct rseq.
    let len = u64::from(size.max(32));
    // SAFETY: unregisters this thread's own registration; nothing else uses it.
    let r = unsafe { libc::syscall(libc::SYS_rseq, area, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) };
    if r != 0 {
        bail!("unregistering rcr's own rseq area: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens the files the VMAs map (for shared anonymous memory, memfds and
/// deleted files: a copy of the object rcr created), the pages image and
/// the exe file; the blob closes them all before the process runs.
fn open_mapping_fds(l: &Loaded, files: &FileTable, region: &mut Region, inherited: &Inherited, pages: [RawFd; 2]) -> Result<()> {
    assign_fds(&l.plan.vma_shmem, region, |inode| {
        let obj = inherited.shmem.get(&inode).with_context(|| format!("no shared memory object for inode {inode}"))?;
        crate::sys::dup(*obj).context("dup of a shared memory object")
    })?;
    assign_fds(&l.plan.vma_mem, region, |id| {
        let obj = inherited.mem.get(&id).with_context(|| format!("no memfd or deleted file {id} in memfiles.img"))?;
        crate::sys::dup(*obj).context("dup of a memfd or deleted file")
    })?;
    assign_fds(&l.plan.vma_files, region, |id| {
        let f = files.get(id).with_context(|| format!("file id {id}"))?;
        files::reg::open(f, f.flags).with_context(|| format!("mapping {}", f.path))
    })?;
    let exe = files.get(l.plan.exe_file_id).context("exe file")?;
    let exe_fd = files::reg::open(exe, libc::O_RDONLY as u32).with_context(|| format!("exe {}", exe.path))?;
    region.set_fds(pages, exe_fd);
    Ok(())
}

/// Gives each VMA with a non-zero key in `keys` (parallel to the region's
/// VMAs) an fd, opened once per key with `open`.
fn assign_fds<K: Copy + Default + Eq + std::hash::Hash>(keys: &[K], region: &mut Region, mut open: impl FnMut(K) -> Result<RawFd>) -> Result<()> {
    let mut by_key: HashMap<K, RawFd> = HashMap::new();
    for (i, &key) in keys.iter().enumerate() {
        if key == K::default() {
            continue;
        }
        let fd = match by_key.get(&key) {
            Some(&fd) => fd,
            None => *by_key.entry(key).or_insert(open(key)?),
        };
        if let Some(v) = region.vmas_mut().get_mut(i) {
            v.fd = fd;
        }
    }
    Ok(())
}

/// Sets every signal's action as saved: handler, flags, restorer and
/// mask (the addresses are the saved process's, mapped by the blob before
/// any signal can be delivered: all are blocked until its rt_sigreturn).
/// Raw rt_sigaction: glibc's sigaction() refuses the signals it reserves
/// (32, 33) and would replace the restorer.
fn restore_sigactions(core: &pb::TaskCore) -> Result<()> {
    let mut acts = [KSigaction::default(); 64];
    for (i, a) in acts.iter_mut().enumerate() {
        if core.sig_ignored & (1u64 << i) != 0 {
            a.handler = 1; // SIG_IGN (images without the full actions)
        }
    }
    for s in &core.sigactions {
        let slot = acts.get_mut((s.signo as usize).wrapping_sub(1)).with_context(|| format!("core image: sigaction for signal {}", s.signo))?;
        *slot = KSigaction { handler: s.handler, flags: s.flags, restorer: s.restorer, mask: s.mask };
    }
    // Setting SIGCHLD to SIG_IGN first discards the SIGCHLD each zombie
    // child's death queued here; those that were pending at dump time are
    // queued again afterwards (queue_pending).
    let ign = KSigaction { handler: 1, ..Default::default() };
    // SAFETY: as below.
    unsafe { libc::syscall(libc::SYS_rt_sigaction, libc::SIGCHLD, &ign as *const KSigaction, 0usize, 8usize) };
    for (i, sa) in acts.iter().enumerate() {
        let sig = i as i32 + 1;
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `sa` is a kernel sigaction of the size passed (8-byte
        // sigset); every signal is blocked, so no handler runs in this
        // process before the saved address space is in place.
        let r = unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, sa as *const KSigaction, 0usize, 8usize) };
        if r != 0 {
            bail!("rt_sigaction signal {sig}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// prctl flags of the task: dumpable, child subreaper, THP, timer slack,
/// parent-death signal (its parent is the restored one by now).
fn restore_task_flags(core: &pb::TaskCore) -> Result<()> {
    let set = |what: &str, op: libc::c_int, v: u64| -> Result<()> {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(op, v as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) } != 0 {
            bail!("restoring {what} ({v}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    };
    if core.dumpable == 0 {
        set("dumpable", libc::PR_SET_DUMPABLE, 0)?;
    }
    if core.child_subreaper {
        set("child subreaper", libc::PR_SET_CHILD_SUBREAPER, 1)?;
    }
    if core.thp_disable {
        set("THP disable", libc::PR_SET_THP_DISABLE, 1)?;
    }
    if core.timerslack_ns != 0 {
        set("timer slack", libc::PR_SET_TIMERSLACK, core.timerslack_ns)?;
    }
    if core.pdeathsig != 0 {
        set("parent-death signal", libc::PR_SET_PDEATHSIG, core.pdeathsig as u64)?;
    }
    Ok(())
}

/// Queues the signals that were pending at dump time, with their siginfo,
/// to this process itself (which rt_[tg]sigqueueinfo allows for any
/// si_code). They stay pending until the blob's rt_sigreturn unblocks them.
fn queue_pending(core: &pb::TaskCore) -> Result<()> {
    let pid = std::process::id() as libc::c_long;
    for p in &core.pending {
        if p.siginfo.len() != 128 {
            bail!("core image: pending signal {} has a siginfo of {} bytes", p.signo, p.siginfo.len());
        }
        // SAFETY: the siginfo buffer is 128 bytes as the kernel reads;
        // the signal goes to this process only.
        let r = unsafe {
            if p.shared {
                libc::syscall(libc::SYS_rt_sigqueueinfo, pid, p.signo as libc::c_long, p.siginfo.as_ptr())
            } else {
                libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, pid, p.signo as libc::c_long, p.siginfo.as_ptr())
            }
        };
        if r != 0 {
            bail!("queueing pending signal {}: {}", p.signo, std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn block_all_signals() {
    // SAFETY: sigfillset initialises the set; sigprocmask only changes our mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Reads what a failed child wrote before exiting.
pub fn read_error(fd: RawFd) -> String {
    // SAFETY: rcr's read end of the error pipe, consumed here.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

pub fn close(fd: RawFd) {
    // SAFETY: closing a pipe end rcr no longer needs.
    drop(unsafe { std::fs::File::from_raw_fd(fd) });
}

pub fn into_raw(f: std::os::fd::OwnedFd) -> RawFd {
    f.into_raw_fd()
}
