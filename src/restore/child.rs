//! What the restore child does before it jumps into the restorer blob: it
//! is still a copy of rcr, and turns itself, step by step, into the shell
//! of the saved process (session, fs, fds, name, signal dispositions).
//! Errors go back to rcr as text over a pipe; the child then exits.
#![allow(unsafe_code)]

use super::bootstrap::Region;
use super::Loaded;
use crate::files;
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
    restore_dispositions(l.core.sig_ignored)?;
    block_all_signals();
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

/// Sets every signal to SIG_IGN or SIG_DFL as saved. Raw rt_sigaction:
/// glibc's sigaction() refuses the signals it reserves (32, 33).
fn restore_dispositions(ignored: u64) -> Result<()> {
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let handler = if ignored & (1u64 << (sig - 1)) != 0 { libc::SIG_IGN } else { libc::SIG_DFL };
        let sa = KernelSigaction { handler, flags: 0, restorer: 0, mask: 0 };
        // SAFETY: sa is a kernel sigaction of the size passed (8-byte
        // sigset); SIG_IGN/SIG_DFL run no code in this process.
        let r = unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, &sa as *const KernelSigaction, 0usize, 8usize) };
        if r != 0 {
            bail!("rt_sigaction signal {sig}: {}", std::io::Error::last_os_error());
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
