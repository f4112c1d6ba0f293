//! What the restore child does before it jumps into the restorer blob: it
//! is still a copy of rcr, and turns itself, step by step, into the shell
//! of the saved process (session, fs, fds, name, signal dispositions).
//! Errors go back to rcr as text over a pipe; the child then exits.
#![allow(unsafe_code)]

use super::bootstrap::Region;
use super::Loaded;
use crate::files;
use crate::images::pb;
use rcr_abi::parasite::KSigaction;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};

/// The two pipe ends the child keeps until the jump.
#[derive(Debug)]
pub struct Sync {
    pub go_read: RawFd,
    pub err_write: RawFd,
}

pub fn run(loaded: &Loaded, mut region: Region, sync: Sync) -> ! {
    let result = prepare(loaded, &mut region, &sync);
    // SAFETY: err_write is our end of the error pipe; it is consumed here.
    let mut err = unsafe { std::fs::File::from_raw_fd(sync.err_write) };
    match result {
        Ok(()) => {
            drop(err);
            // SAFETY: single-threaded child, signals blocked, tracer attached
            // (the go byte arrived), fds filled in by `prepare`.
            unsafe { region.jump() }
        }
        Err(e) => {
            let _ = write!(err, "{e:#}");
            crate::sys::exit_now(1)
        }
    }
}

fn prepare(l: &Loaded, region: &mut Region, sync: &Sync) -> Result<()> {
    // SAFETY: go_read is our end of the go pipe; consumed here.
    let mut go = unsafe { std::fs::File::from_raw_fd(sync.go_read) };
    let mut b = [0u8; 1];
    if go.read(&mut b).context("waiting for rcr")? != 1 {
        bail!("rcr went away before the restore started");
    }
    drop(go);
    restore_session(l)?;
    // SAFETY: personality(2) with a value the task had.
    unsafe { libc::personality(l.core.personality as libc::c_ulong) };
    files::restore::restore_fs(&l.fs)?;
    files::restore::restore_fds(&l.fds, &l.files, &[sync.err_write])?;
    open_mapping_fds(l, region)?;
    nix::sys::prctl::set_name(&std::ffi::CString::new(l.core.comm.as_bytes()).unwrap_or_default()).context("PR_SET_NAME")?;
    block_all_signals();
    restore_sigactions(&l.core)?;
    restore_task_flags(&l.core)?;
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

/// Recreates the session / process group the task led. A task that led
/// neither stays in rcr's (shell-job support comes with terminals).
fn restore_session(l: &Loaded) -> Result<()> {
    let pid = l.pstree.pid;
    if l.pstree.sid == pid {
        nix::unistd::setsid().context("setsid")?;
    } else if l.pstree.pgid == pid {
        nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0)).context("setpgid")?;
    }
    Ok(())
}

/// Opens the files the VMAs map, the pages image and the exe file; the
/// blob closes them all before the process runs.
fn open_mapping_fds(l: &Loaded, region: &mut Region) -> Result<()> {
    let mut by_id: HashMap<u32, RawFd> = HashMap::new();
    for (i, id) in l.plan.vma_files.iter().enumerate() {
        if *id == 0 {
            continue;
        }
        let fd = match by_id.get(id) {
            Some(fd) => *fd,
            None => {
                let f = l.files.get(*id).with_context(|| format!("file id {id}"))?;
                let fd = files::restore::open(f, f.flags).with_context(|| format!("mapping {}", f.path))?;
                by_id.insert(*id, fd);
                fd
            }
        };
        if let Some(v) = region.vmas_mut().get_mut(i) {
            v.fd = fd;
        }
    }
    let pages = std::fs::File::open(&l.pages_path).with_context(|| format!("opening {}", l.pages_path.display()))?;
    let exe = l.files.get(l.plan.exe_file_id).context("exe file")?;
    let exe_fd = files::restore::open(exe, libc::O_RDONLY as u32).with_context(|| format!("exe {}", exe.path))?;
    region.set_fds(pages.into_raw_fd(), exe_fd);
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

/// prctl flags of the task: dumpable, child subreaper, THP, timer slack.
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
