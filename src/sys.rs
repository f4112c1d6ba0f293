//! Thin wrappers over the syscalls rcr calls on itself (not through
//! ptrace), where std and nix fall short: clone3 with set_tid, fd moves,
//! raw open flags.
#![allow(unsafe_code)]

use anyhow::{Context, Result};
use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn cvt(r: libc::c_long) -> std::io::Result<libc::c_long> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// open(2) with exactly these flags.
pub fn open(path: &CStr, flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: path is NUL-terminated; the returned fd is new and ours.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), flags, 0) } as libc::c_long)?;
    // SAFETY: fd was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Makes `fd` appear as `want` (closing `fd` if it differs) and sets its
/// close-on-exec bit.
pub fn move_fd(fd: RawFd, want: RawFd, cloexec: bool) -> std::io::Result<RawFd> {
    if fd != want {
        let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
        // SAFETY: dup3 onto a number we own; `fd` is a fd we opened.
        cvt(unsafe { libc::dup3(fd, want, flags) } as libc::c_long)?;
        // SAFETY: closing the temporary fd we opened; `want` holds the file now.
        unsafe { libc::close(fd) };
    } else {
        let v = if cloexec { libc::FD_CLOEXEC } else { 0 };
        // SAFETY: F_SETFD on a fd we own.
        cvt(unsafe { libc::fcntl(want, libc::F_SETFD, v) } as libc::c_long)?;
    }
    Ok(want)
}

/// Sets or clears `fd`'s close-on-exec bit.
pub fn set_cloexec(fd: RawFd, cloexec: bool) -> std::io::Result<()> {
    let v = if cloexec { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD only changes the fd's own flag.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, v) } as libc::c_long).map(drop)
}

/// Whether fd number `fd` is open in rcr.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the fd's flags (EBADF if it is not open).
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// dup3 of `fd` onto `want` (not close-on-exec), then closes `fd`.
pub fn dup_onto(fd: OwnedFd, want: RawFd) -> std::io::Result<RawFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: dup3 onto a number the caller checked is free or owns.
    cvt(unsafe { libc::dup3(fd.as_raw_fd(), want, 0) } as libc::c_long)?;
    Ok(want)
}

/// Duplicates `fd` to the lowest number >= `min`, close-on-exec.
pub fn dup_above(fd: RawFd, min: RawFd) -> std::io::Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new fd; `fd` stays valid.
    Ok(cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) } as libc::c_long)? as RawFd)
}

pub fn lseek(fd: RawFd, pos: u64) -> std::io::Result<()> {
    // SAFETY: lseek on a fd we own.
    cvt(unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_SET) } as libc::c_long)?;
    Ok(())
}

/// lseek(SEEK_DATA) (or SEEK_HOLE with `hole`) from `from`; None when
/// there is no more data (ENXIO).
pub fn seek_data(fd: RawFd, from: u64, hole: bool) -> std::io::Result<Option<u64>> {
    let whence = if hole { libc::SEEK_HOLE } else { libc::SEEK_DATA };
    // SAFETY: lseek on a fd the caller owns.
    let r = unsafe { libc::lseek(fd, from as libc::off_t, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) };
    }
    Ok(Some(r as u64))
}

pub fn set_umask(mask: u32) {
    // SAFETY: umask(2) cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// Closes every open fd of this process except those in `keep`.
pub fn close_all_except(keep: &[RawFd]) -> Result<()> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .context("listing /proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if !keep.contains(&fd) {
            // SAFETY: closing fds of this (single-threaded, about to be
            // replaced) process; nothing else uses them any more. The fd of
            // the read_dir above is already closed (EBADF is harmless).
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// clone3(2) creating a child process with the given PID (CLONE_SET_TID
/// semantics: `set_tid` with one entry). Returns 0 in the child and the
/// PID in the parent.
///
/// # Safety
/// The caller must be single-threaded: the child continues on a copy of
/// the caller's address space with only the calling thread.
pub unsafe fn clone3_with_pid(pid: i32) -> std::io::Result<i32> {
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let tid: libc::pid_t = pid;
    let args = CloneArgs {
        flags: 0,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: &tid as *const libc::pid_t as u64,
        set_tid_size: 1,
        cgroup: 0,
    };
    // SAFETY: args is a valid clone_args of the size passed; with no
    // CLONE_VM the child gets its own copy of memory and returns here like
    // fork(). The caller guarantees single-threadedness.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    cvt(r).map(|r| r as i32)
}

pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit skips atexit handlers and stdio flushing, which is what
    // a forked child that failed must do.
    unsafe { libc::_exit(code) }
}

/// Page frame number of the kernel's shared zero page (what an anonymous
/// page that was read but never written maps), from rcr's own pagemap.
/// `None` without the privilege to see frame numbers.
pub fn zero_page_pfn() -> Option<u64> {
    use std::os::unix::fs::FileExt;
    static PFN: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *PFN.get_or_init(|| {
        // SAFETY: a fresh private anonymous read-only page, only read below
        // and unmapped before returning.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
        if p == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: p is a readable page; the volatile read faults in the zero page.
        unsafe { std::ptr::read_volatile(p as *const u8) };
        let mut e = [0u8; 8];
        let ok = std::fs::File::open("/proc/self/pagemap").and_then(|f| f.read_exact_at(&mut e, p as u64 / 4096 * 8));
        // SAFETY: unmapping the page mapped above.
        unsafe { libc::munmap(p, 4096) };
        let e = u64::from_le_bytes(e);
        let pfn = e & ((1 << 55) - 1);
        (ok.is_ok() && e & (1 << 63) != 0 && pfn != 0).then_some(pfn)
    })
}

fn pipe2(flags: i32) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds into `fds`.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) } as libc::c_long)?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pipe (both ends close-on-exec), grown to `size` bytes if allowed.
pub fn pipe(size: i32) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe2(libc::O_CLOEXEC)?;
    // Failure (above pipe-max-size) is harmless: the pipe keeps its size.
    let _ = set_pipe_size(std::os::fd::AsRawFd::as_raw_fd(&r), size);
    Ok((r, w))
}

/// splice(2) from a pipe into a file at `off`: moves up to `len` bytes.
pub fn splice_to_file(pipe: RawFd, file: RawFd, off: u64, len: u64) -> std::io::Result<u64> {
    let mut off = off as libc::loff_t;
    // SAFETY: splice between two fds the caller owns; `off` is a local.
    let n = unsafe { libc::splice(pipe, std::ptr::null_mut(), file, &mut off, len as usize, libc::SPLICE_F_MOVE) };
    Ok(cvt(n as libc::c_long)? as u64)
}

/// Waits until one of `fds` is readable (or hung up); returns its index.
pub fn poll_readable(fds: &[RawFd]) -> std::io::Result<usize> {
    let mut p: Vec<libc::pollfd> = fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    loop {
        // SAFETY: `p` is a live array of p.len() pollfds.
        let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, -1) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if let Some(i) = p.iter().position(|x| x.revents != 0) {
            return Ok(i);
        }
    }
}

/// An ioctl whose argument is a pointer the kernel writes one int to.
/// Private: each caller below names the requests it passes, all of that kind.
fn ioctl_read_int(fd: RawFd, req: libc::c_ulong) -> std::io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: every request callers pass writes exactly one int through
    // the pointer, which points at a live local int.
    cvt(unsafe { libc::ioctl(fd, req, &mut v as *mut libc::c_int) } as libc::c_long)?;
    Ok(v)
}

/// Bytes buffered in a pipe (FIONREAD; either end).
pub fn pipe_buffered(fd: RawFd) -> std::io::Result<usize> {
    Ok(ioctl_read_int(fd, libc::FIONREAD)? as usize)
}

/// F_GETPIPE_SZ.
pub fn pipe_size(fd: RawFd) -> std::io::Result<i32> {
    // SAFETY: fcntl with an integer command on a fd the caller owns.
    Ok(cvt(unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) } as libc::c_long)? as i32)
}

/// F_SETPIPE_SZ (only when `size` differs from the current size).
pub fn set_pipe_size(fd: RawFd, size: i32) -> std::io::Result<()> {
    if pipe_size(fd)? != size {
        // SAFETY: fcntl with integer arguments on a fd the caller owns.
        cvt(unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size) } as libc::c_long)?;
    }
    Ok(())
}

/// TIOCGWINSZ: the window size of the terminal at `fd`.
pub fn get_winsize(fd: std::os::fd::BorrowedFd) -> std::io::Result<libc::winsize> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one struct winsize to the pointer, which
    // points at a live local of that type.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) } as libc::c_long)?;
    Ok(ws)
}

/// TIOCSWINSZ: sets the window size of the terminal at `fd`.
pub fn set_winsize(fd: std::os::fd::BorrowedFd, ws: &libc::winsize) -> std::io::Result<()> {
    // SAFETY: TIOCSWINSZ only reads one struct winsize from the pointer,
    // which points at a live value of that type.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws as *const libc::winsize) } as libc::c_long)?;
    Ok(())
}

/// Terminal ioctls that write one int through their pointer argument.
#[derive(Debug, Clone, Copy)]
pub enum TtyGet {
    /// TIOCGPTN: the index N of a pty master's /dev/pts/N.
    PtyIndex,
    /// TIOCGPKT: packet mode of a pty master.
    Packet,
    /// TIOCGPTLCK: whether a pty's slave is locked.
    Locked,
    /// TIOCGEXCL: exclusive mode.
    Exclusive,
    /// TIOCGPGRP: the foreground process group.
    Foreground,
    /// TIOCGSID: the session whose controlling terminal it is.
    Session,
    /// FIONREAD: bytes ready to be read.
    Queued,
}

/// Terminal ioctls that read one int through their pointer argument.
#[derive(Debug, Clone, Copy)]
pub enum TtySet {
    /// TIOCPKT: packet mode on (1) or off (0).
    Packet,
    /// TIOCSPTLCK: lock (1) or unlock (0) the slave.
    Locked,
    /// TIOCSPGRP: the foreground process group.
    Foreground,
}

/// Reads one int of terminal state with `what`.
pub fn tty_get(fd: RawFd, what: TtyGet) -> std::io::Result<i32> {
    let req = match what {
        TtyGet::PtyIndex => libc::TIOCGPTN,
        TtyGet::Packet => libc::TIOCGPKT,
        TtyGet::Locked => libc::TIOCGPTLCK,
        TtyGet::Exclusive => libc::TIOCGEXCL,
        TtyGet::Foreground => libc::TIOCGPGRP,
        TtyGet::Session => libc::TIOCGSID,
        TtyGet::Queued => libc::FIONREAD,
    };
    ioctl_read_int(fd, req)
}

/// Sets one int of terminal state with `what`.
pub fn tty_set(fd: RawFd, what: TtySet, v: i32) -> std::io::Result<()> {
    let req = match what {
        TtySet::Packet => libc::TIOCPKT,
        TtySet::Locked => libc::TIOCSPTLCK,
        TtySet::Foreground => libc::TIOCSPGRP,
    };
    // SAFETY: every request above reads exactly one int from the pointer,
    // which points at a live local int.
    cvt(unsafe { libc::ioctl(fd, req, &v as *const libc::c_int) } as libc::c_long)?;
    Ok(())
}

/// TIOCEXCL: no more opens of the terminal at `fd` but by root.
pub fn tty_set_exclusive(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: TIOCEXCL takes no argument.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCEXCL) } as libc::c_long)?;
    Ok(())
}

/// TIOCSCTTY (no stealing): the terminal at `fd` (for a pty master: its
/// slave) becomes the controlling terminal of the caller, a session
/// leader without one.
pub fn tty_set_controlling(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument, not a pointer.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0 as libc::c_ulong) } as libc::c_long)?;
    Ok(())
}

/// TIOCGPTPEER: opens the slave of the pty master at `fd` with `flags`
/// (access mode, O_NOCTTY, O_NONBLOCK).
pub fn pty_open_peer(fd: RawFd, flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: TIOCGPTPEER takes the open flags as an integer argument
    // and returns a new fd.
    let peer = cvt(unsafe { libc::ioctl(fd, libc::TIOCGPTPEER, flags as libc::c_ulong) } as libc::c_long)?;
    // SAFETY: the fd was just created for us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(peer as RawFd) })
}

/// F_SETFL.
pub fn status_flags(fd: RawFd) -> std::io::Result<i32> {
    // SAFETY: fcntl F_GETFL on a fd the caller owns.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) } as libc::c_long).map(|f| f as i32)
}

pub fn set_status_flags(fd: RawFd, flags: i32) -> std::io::Result<()> {
    // SAFETY: fcntl with integer arguments on a fd the caller owns.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } as libc::c_long)?;
    Ok(())
}

/// tee(2): duplicates up to `len` bytes of pipe `from` into pipe `to`
/// without consuming them.
pub fn tee(from: RawFd, to: RawFd, len: usize) -> std::io::Result<usize> {
    // SAFETY: tee between two pipe fds the caller owns.
    Ok(cvt(unsafe { libc::tee(from, to, len, libc::SPLICE_F_NONBLOCK) } as libc::c_long)? as usize)
}

/// A pipe whose ends are inherited across fork (no close-on-exec).
pub fn pipe_inheritable() -> std::io::Result<(OwnedFd, OwnedFd)> {
    pipe2(0)
}

/// Moves `fd` to the lowest free number >= `min`, inheritable across fork.
pub fn move_above(fd: OwnedFd, min: RawFd) -> std::io::Result<RawFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: F_DUPFD creates a new fd; `fd` is closed when dropped below.
    let n = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, min) } as libc::c_long)? as RawFd;
    drop(fd);
    Ok(n)
}

/// A new shared anonymous memory object ("/dev/zero (deleted)", as
/// MAP_SHARED|MAP_ANONYMOUS makes) of `len` bytes, as an fd: mapped once,
/// opened through /proc/self/map_files, unmapped.
pub fn shmem_object(len: u64) -> Result<OwnedFd> {
    // SAFETY: a fresh mapping at a kernel-chosen address; unmapped below.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len as usize, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0)
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("mapping {len} bytes of shared memory"));
    }
    let start = p as u64;
    let link = format!("/proc/self/map_files/{:x}-{:x}", start, start + len);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&link);
    // SAFETY: unmapping the mapping made above; the open file keeps the object.
    unsafe { libc::munmap(p, len as usize) };
    Ok(f.with_context(|| format!("opening {link}"))?.into())
}

/// Closes a raw fd the caller owns.
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and does not use it afterwards.
    unsafe { libc::close(fd) };
}

/// dup2 keeping the close-on-exec bit as asked.
pub fn dup_to(fd: RawFd, want: RawFd, cloexec: bool) -> std::io::Result<()> {
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: dup3 onto a number the caller owns.
    cvt(unsafe { libc::dup3(fd, want, flags) } as libc::c_long)?;
    Ok(())
}

/// dup(2) to any free number.
pub fn dup(fd: RawFd) -> std::io::Result<RawFd> {
    // SAFETY: dup of a fd the caller owns creates a new one.
    Ok(cvt(unsafe { libc::dup(fd) } as libc::c_long)? as RawFd)
}

/// kcmp(2) type: are two fds the same open file description?
pub const KCMP_FILE: i32 = 0;

/// kcmp(2): 0 if the objects are the same, 1 or 2 for an order (less,
/// greater) that is stable but says nothing else.
pub fn kcmp(pid1: i32, pid2: i32, kind: i32, idx1: u64, idx2: u64) -> std::io::Result<i32> {
    // SAFETY: kcmp only compares kernel objects; for the kinds that take a
    // pointer (KCMP_EPOLL_TFD) the caller passes a valid one as idx2.
    cvt(unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, idx1, idx2) }).map(|r| r as i32)
}

/// Starts writeback of a file's dirty pages without waiting for it
/// (sync_file_range SYNC_FILE_RANGE_WRITE on the whole file); an
/// fdatasync later finds the work done or under way.
pub fn start_writeback(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: sync_file_range only acts on the file behind `fd`.
    cvt(unsafe { libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE) } as i64).map(drop)
}

/// How the open file descriptions behind two of rcr's own fds compare in
/// kcmp's order (a total order of the kernel objects): Equal when `a` and
/// `b` refer to one description.
pub fn order_descriptions(a: RawFd, b: RawFd) -> std::io::Result<std::cmp::Ordering> {
    let me = std::process::id() as i32;
    match kcmp(me, me, KCMP_FILE, a as u64, b as u64)? {
        0 => Ok(std::cmp::Ordering::Equal),
        1 => Ok(std::cmp::Ordering::Less),
        2 => Ok(std::cmp::Ordering::Greater),
        r => Err(std::io::Error::other(format!("kcmp KCMP_FILE returned {r}, expected 0, 1 or 2"))),
    }
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit: rcr holds a copy
/// of every open file description of the tree while it dumps, and every
/// description of the tree while it restores.
pub fn raise_nofile() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on rcr itself with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            let _ = NOFILE_SOFT.set(r.rlim_cur);
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// RLIMIT_NOFILE's soft limit before [`raise_nofile`].
static NOFILE_SOFT: std::sync::OnceLock<libc::rlim_t> = std::sync::OnceLock::new();

/// Puts back the soft limit [`raise_nofile`] raised (in a restore child,
/// which must not keep rcr's raised limit).
pub fn lower_nofile() {
    let Some(&soft) = NOFILE_SOFT.get() else { return };
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: as in raise_nofile.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = soft;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Takes ownership of a new fd a syscall wrapper returned as a number.
pub fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass fds they just created and nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// prctl(PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_GET):
/// whether this kernel lets timer_create(2) take a wanted id (Linux 6.13+).
pub fn timer_restore_ids_supported() -> bool {
    // SAFETY: a GET prctl with integer arguments only; it changes nothing.
    unsafe { libc::prctl(77, 2, 0, 0, 0) >= 0 }
}

/// sched_getscheduler(2) of task `tid`: the policy, with
/// SCHED_RESET_ON_FORK if set.
pub fn sched_policy(tid: i32) -> std::io::Result<u32> {
    // SAFETY: sched_getscheduler takes a plain tid.
    let r = unsafe { libc::sched_getscheduler(tid) };
    cvt(r as libc::c_long).map(|p| p as u32)
}

/// sched_getaffinity(2) of task `tid`, as 64-bit mask words.
pub fn sched_affinity(tid: i32) -> std::io::Result<Vec<u64>> {
    let mut words = vec![0u64; 128]; // 8192 CPUs
    // SAFETY: the kernel writes at most the buffer's size, given in bytes.
    let r = unsafe { libc::syscall(libc::SYS_sched_getaffinity, tid, words.len() * 8, words.as_mut_ptr()) };
    let n = cvt(r)? as usize;
    words.truncate(n.div_ceil(8));
    while words.len() > 1 && words.last() == Some(&0) {
        words.pop();
    }
    Ok(words)
}

// ---------------------------------------------------------------------------
// Anonymous-inode files (files::{eventfd, signalfd, timerfd, epoll, inotify})
// ---------------------------------------------------------------------------

/// An eventfd with counter `count` and `flags` (EFD_SEMAPHORE...): created
/// at 0, then written, since eventfd2 takes only 32 bits.
pub fn eventfd(count: u64, flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd2 takes no pointers; the fd is new and ours.
    let fd = own(cvt(unsafe { libc::eventfd(0, flags) } as libc::c_long)? as RawFd);
    if count != 0 {
        // SAFETY: writes the 8 bytes of a local.
        cvt(unsafe { libc::write(std::os::fd::AsRawFd::as_raw_fd(&fd), (&count as *const u64).cast(), 8) } as libc::c_long)?;
    }
    Ok(fd)
}

/// A signalfd for the signals of `mask` (bit n-1: signal n).
pub fn signalfd(mask: u64, flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: the kernel reads 8 bytes (the size passed) of a local.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_signalfd4, -1, &mask as *const u64, 8usize, flags) })?;
    Ok(own(fd as RawFd))
}

pub fn timerfd_create(clockid: i32, flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: no pointers; the fd is new and ours.
    Ok(own(cvt(unsafe { libc::timerfd_create(clockid, flags) } as libc::c_long)? as RawFd))
}

fn ts_ns(t: &libc::timespec) -> u64 {
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn ns_ts(ns: u64) -> libc::timespec {
    libc::timespec { tv_sec: (ns / 1_000_000_000) as libc::time_t, tv_nsec: (ns % 1_000_000_000) as libc::c_long }
}

/// timerfd_gettime(2): (time left, interval) in ns.
pub fn timerfd_gettime(fd: RawFd) -> std::io::Result<(u64, u64)> {
    let mut t = libc::itimerspec { it_interval: ns_ts(0), it_value: ns_ts(0) };
    // SAFETY: the kernel writes one itimerspec into a local.
    cvt(unsafe { libc::timerfd_gettime(fd, &mut t) } as libc::c_long)?;
    Ok((ts_ns(&t.it_value), ts_ns(&t.it_interval)))
}

/// timerfd_settime(2) with `flags` (TFD_TIMER_*), value and interval in ns.
pub fn timerfd_settime(fd: RawFd, flags: i32, value_ns: u64, interval_ns: u64) -> std::io::Result<()> {
    let t = libc::itimerspec { it_interval: ns_ts(interval_ns), it_value: ns_ts(value_ns) };
    // SAFETY: the kernel reads one itimerspec from a local; no old value.
    cvt(unsafe { libc::timerfd_settime(fd, flags, &t, std::ptr::null_mut()) } as libc::c_long)?;
    Ok(())
}

/// TFD_IOC_SET_TICKS (_IOW('T', 0, u64)): expirations waiting to be read.
pub fn timerfd_set_ticks(fd: RawFd, ticks: u64) -> std::io::Result<()> {
    const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;
    // SAFETY: the kernel reads one u64 from a local.
    cvt(unsafe { libc::ioctl(fd, TFD_IOC_SET_TICKS, &ticks as *const u64) } as libc::c_long)?;
    Ok(())
}

/// clock_gettime(2) of `clockid`, in ns.
pub fn clock_now_ns(clockid: i32) -> std::io::Result<i64> {
    let mut t = ns_ts(0);
    // SAFETY: the kernel writes one timespec into a local.
    cvt(unsafe { libc::clock_gettime(clockid, &mut t) } as libc::c_long)?;
    Ok(t.tv_sec * 1_000_000_000 + t.tv_nsec)
}

pub fn epoll_create() -> std::io::Result<OwnedFd> {
    // SAFETY: no pointers; the fd is new and ours.
    Ok(own(cvt(unsafe { libc::epoll_create1(0) } as libc::c_long)? as RawFd))
}

/// epoll_ctl(2) `op` of `fd` in `epfd` with `events` and `data`.
pub fn epoll_ctl(epfd: RawFd, op: i32, fd: RawFd, events: u32, data: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: the kernel reads one epoll_event from a local.
    cvt(unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } as libc::c_long)?;
    Ok(())
}

/// epoll_wait(2) without waiting: the (events, data) of up to `max` ready items.
pub fn epoll_wait_now(epfd: RawFd, max: usize) -> std::io::Result<Vec<(u32, u64)>> {
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; max.max(1)];
    // SAFETY: the kernel writes at most evs.len() events into the vector.
    let n = cvt(unsafe { libc::epoll_wait(epfd, evs.as_mut_ptr(), evs.len() as i32, 0) } as libc::c_long)? as usize;
    Ok(evs[..n].iter().map(|e| (e.events, e.u64)).collect())
}

/// What poll(2) reports for `fd` right now (all input and output events).
pub fn poll_now(fd: RawFd) -> std::io::Result<u32> {
    let ev = libc::POLLIN | libc::POLLOUT | libc::POLLPRI | libc::POLLRDNORM | libc::POLLWRNORM | libc::POLLRDBAND | libc::POLLWRBAND;
    let mut p = libc::pollfd { fd, events: ev | libc::POLLRDHUP, revents: 0 };
    // SAFETY: one pollfd, a local.
    cvt(unsafe { libc::poll(&mut p, 1, 0) } as libc::c_long)?;
    Ok(p.revents as u16 as u32)
}

/// kcmp(2) KCMP_EPOLL_TFD: is fd `fd` of `pid` the file registered, as the
/// `toff`-th registration with fd number `tfd`, in rcr's own epoll `epfd`?
pub fn kcmp_epoll_tfd(pid: i32, fd: i32, epfd: RawFd, tfd: u32, toff: u32) -> std::io::Result<bool> {
    const KCMP_EPOLL_TFD: i32 = 7;
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = Slot { efd: epfd as u32, tfd, toff };
    let me = std::process::id() as i32;
    Ok(kcmp(pid, me, KCMP_EPOLL_TFD, fd as u64, &slot as *const Slot as u64)? == 0)
}

pub fn inotify_init(flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: no pointers; the fd is new and ours.
    Ok(own(cvt(unsafe { libc::inotify_init1(flags) } as libc::c_long)? as RawFd))
}

/// inotify_add_watch(2): the watch descriptor.
pub fn inotify_add_watch(fd: RawFd, path: &CStr, mask: u32) -> std::io::Result<i32> {
    // SAFETY: path is NUL-terminated.
    Ok(cvt(unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) } as libc::c_long)? as i32)
}

pub fn inotify_rm_watch(fd: RawFd, wd: i32) -> std::io::Result<()> {
    // SAFETY: no pointers.
    cvt(unsafe { libc::inotify_rm_watch(fd, wd) } as libc::c_long)?;
    Ok(())
}

/// open_by_handle_at(2) of the handle (`kind`, `bytes`) on the filesystem
/// of `mount_fd`, with `flags` (O_PATH...).
pub fn open_by_handle(mount_fd: RawFd, kind: i32, bytes: &[u8], flags: i32) -> std::io::Result<OwnedFd> {
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
    let mut buf = Vec::with_capacity(8 + bytes.len());
    buf.extend_from_slice(&(bytes.len() as u32).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(bytes);
    // SAFETY: `buf` holds a complete struct file_handle of handle_bytes bytes.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_open_by_handle_at, mount_fd, buf.as_mut_ptr(), flags) })?;
    Ok(own(fd as RawFd))
}

// ---------------------------------------------------------------------------
// Sockets (unix domain sockets and the sock_diag netlink socket). Unix
// addresses are passed as the bytes of sun_path as the kernel reports them:
// empty for an unbound socket, a leading NUL for an abstract name.
// ---------------------------------------------------------------------------

/// socket(2), close-on-exec.
pub fn socket(domain: i32, ty: i32, protocol: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the new fd is ours.
    let fd = cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) } as libc::c_long)?;
    Ok(own(fd as RawFd))
}

/// socketpair(2) of AF_UNIX sockets of type `ty` (flags may be or-ed in).
pub fn socketpair(ty: i32) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two new fds into `fds`.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) } as libc::c_long)?;
    Ok((own(fds[0]), own(fds[1])))
}

/// getsockopt(2) of an int option.
pub fn getsockopt_int(fd: RawFd, level: i32, opt: i32) -> std::io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `v`.
    cvt(unsafe { libc::getsockopt(fd, level, opt, &mut v as *mut libc::c_int as *mut libc::c_void, &mut len) } as libc::c_long)?;
    Ok(v)
}

/// setsockopt(2) of an int option.
pub fn setsockopt_int(fd: RawFd, level: i32, opt: i32, v: i32) -> std::io::Result<()> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel reads `len` bytes from `v`.
    cvt(unsafe { libc::setsockopt(fd, level, opt, &v as *const libc::c_int as *const libc::c_void, len) } as libc::c_long)?;
    Ok(())
}

/// A sockaddr_un for `path` (sun_path bytes) and its length.
fn unix_addr(path: &[u8]) -> std::io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if path.len() > a.sun_path.len() {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    Ok((a, (std::mem::size_of::<libc::sa_family_t>() + path.len()) as libc::socklen_t))
}

/// sun_path bytes of a sockaddr_un of length `len`, without the trailing
/// NUL of a path name.
fn unix_path(a: &libc::sockaddr_un, len: libc::socklen_t) -> Vec<u8> {
    let n = (len as usize).saturating_sub(std::mem::size_of::<libc::sa_family_t>()).min(a.sun_path.len());
    let mut v: Vec<u8> = a.sun_path[..n].iter().map(|&c| c as u8).collect();
    if v.first().is_some_and(|&c| c != 0) {
        if let Some(end) = v.iter().position(|&c| c == 0) {
            v.truncate(end);
        }
    }
    v
}

/// getsockname (peer: false) or getpeername (peer: true) of a unix socket.
pub fn unix_name(fd: RawFd, peer: bool) -> std::io::Result<Vec<u8>> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    let p = &mut a as *mut libc::sockaddr_un as *mut libc::sockaddr;
    // SAFETY: the kernel writes at most `len` bytes into `a`.
    let r = unsafe { if peer { libc::getpeername(fd, p, &mut len) } else { libc::getsockname(fd, p, &mut len) } };
    cvt(r as libc::c_long)?;
    Ok(unix_path(&a, len))
}

/// bind(2) of a unix socket to `path`.
pub fn unix_bind(fd: RawFd, path: &[u8]) -> std::io::Result<()> {
    let (a, len) = unix_addr(path)?;
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe { libc::bind(fd, &a as *const libc::sockaddr_un as *const libc::sockaddr, len) } as libc::c_long)?;
    Ok(())
}

/// connect(2) of a unix socket to `path`.
pub fn unix_connect(fd: RawFd, path: &[u8]) -> std::io::Result<()> {
    let (a, len) = unix_addr(path)?;
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe { libc::connect(fd, &a as *const libc::sockaddr_un as *const libc::sockaddr, len) } as libc::c_long)?;
    Ok(())
}

pub fn listen(fd: RawFd, backlog: i32) -> std::io::Result<()> {
    // SAFETY: listen(2) takes no pointers.
    cvt(unsafe { libc::listen(fd, backlog) } as libc::c_long)?;
    Ok(())
}

/// accept4(2) without the peer's address; the new socket is close-on-exec.
pub fn accept(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed; the new fd is ours.
    let n = cvt(unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) } as libc::c_long)?;
    Ok(own(n as RawFd))
}

pub fn shutdown(fd: RawFd, how: i32) -> std::io::Result<()> {
    // SAFETY: shutdown(2) takes no pointers.
    cvt(unsafe { libc::shutdown(fd, how) } as libc::c_long)?;
    Ok(())
}

/// One message peeked from a socket's receive queue.
#[derive(Debug)]
pub struct Peeked {
    /// Bytes copied into the buffer.
    pub len: usize,
    /// msg_flags (MSG_TRUNC: the message goes on past the buffer).
    pub flags: i32,
    /// The sender's address (sun_path bytes), for datagrams.
    pub sender: Vec<u8>,
    /// Files passed with it (SCM_RIGHTS), now rcr's.
    pub rights: Vec<OwnedFd>,
    /// Whether it carried SCM_CREDENTIALS.
    pub creds: bool,
}

/// recvmsg(2) with MSG_PEEK|MSG_DONTWAIT into `buf`: the message at the
/// socket's peek offset (SO_PEEK_OFF moves on past it).
pub fn peek_msg(fd: RawFd, buf: &mut [u8]) -> std::io::Result<Peeked> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut ctl = [0u64; 64];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_name = &mut a as *mut libc::sockaddr_un as *mut libc::c_void;
    m.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.as_mut_ptr() as *mut libc::c_void;
    m.msg_controllen = std::mem::size_of_val(&ctl);
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    // SAFETY: every pointer in `m` refers to a live local buffer of the size given.
    let n = cvt(unsafe { libc::recvmsg(fd, &mut m, flags) } as libc::c_long)? as usize;
    let mut out = Peeked { len: n, flags: m.msg_flags, sender: unix_path(&a, m.msg_namelen), rights: Vec::new(), creds: false };
    // SAFETY: the CMSG macros walk the control buffer the kernel filled in,
    // within msg_controllen; SCM_RIGHTS payloads are arrays of new fds.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&m);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<libc::c_int>();
                let p = libc::CMSG_DATA(c) as *const libc::c_int;
                out.rights.extend((0..count).map(|i| own(std::ptr::read_unaligned(p.add(i)))));
            }
            out.creds |= (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS;
            c = libc::CMSG_NXTHDR(&m, c);
        }
    }
    Ok(out)
}

/// send(2) (to: None) or sendto(2) a unix address, never blocking and
/// without SIGPIPE. Returns the bytes sent.
pub fn unix_send(fd: RawFd, data: &[u8], to: Option<&[u8]>) -> std::io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    let p = data.as_ptr() as *const libc::c_void;
    let n = match to {
        // SAFETY: `data` is a live buffer of data.len() bytes.
        None => unsafe { libc::send(fd, p, data.len(), flags) },
        Some(path) => {
            let (a, len) = unix_addr(path)?;
            // SAFETY: as above, and `a` is a valid sockaddr_un of `len` bytes.
            unsafe { libc::sendto(fd, p, data.len(), flags, &a as *const libc::sockaddr_un as *const libc::sockaddr, len) }
        }
    };
    Ok(cvt(n as libc::c_long)? as usize)
}

/// send(2) of a whole buffer on a netlink socket.
pub fn send_all(fd: RawFd, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: `data` is a live buffer of data.len() bytes.
    let n = cvt(unsafe { libc::send(fd, data.as_ptr() as *const libc::c_void, data.len(), 0) } as libc::c_long)? as usize;
    if n != data.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, format!("sent {n} of {} bytes", data.len())));
    }
    Ok(())
}

/// recv(2) into `buf`; returns the bytes received.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into `buf`.
    Ok(cvt(unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) } as libc::c_long)? as usize)
}

// ---------------------------------------------------------------------------
// IP sockets (TCP and UDP, IPv4 and IPv6): addresses as std's SocketAddr,
// raw option structs (tcp_info, tcp_repair_window, linger...) as bytes.
// ---------------------------------------------------------------------------

/// getsockopt(2) into `buf`; returns the length the kernel wrote.
pub fn getsockopt_bytes(fd: RawFd, level: i32, opt: i32, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf`, which is that long.
    cvt(unsafe { libc::getsockopt(fd, level, opt, buf.as_mut_ptr() as *mut libc::c_void, &mut len) } as libc::c_long)?;
    Ok(len as usize)
}

/// setsockopt(2) of the raw bytes `data`.
pub fn setsockopt_bytes(fd: RawFd, level: i32, opt: i32, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: the kernel reads data.len() bytes from `data`.
    cvt(unsafe { libc::setsockopt(fd, level, opt, data.as_ptr() as *const libc::c_void, data.len() as libc::socklen_t) } as libc::c_long)?;
    Ok(())
}

/// Which queue of a socket [`socket_queued`] measures.
#[derive(Debug, Clone, Copy)]
pub enum SockQueue {
    /// SIOCINQ (FIONREAD): bytes readable (TCP), or the next datagram's size (UDP).
    In,
    /// SIOCOUTQ: bytes in the send queue, sent or not.
    Out,
    /// SIOCOUTQNSD: bytes in the send queue not yet sent.
    OutNotSent,
}

/// Bytes in the queue `q` of the socket at `fd`.
pub fn socket_queued(fd: RawFd, q: SockQueue) -> std::io::Result<i32> {
    const SIOCOUTQNSD: libc::c_ulong = 0x894b;
    let req = match q {
        SockQueue::In => libc::FIONREAD,
        SockQueue::Out => libc::TIOCOUTQ,
        SockQueue::OutNotSent => SIOCOUTQNSD,
    };
    ioctl_read_int(fd, req)
}

fn inet_from_storage(a: &libc::sockaddr_storage) -> std::io::Result<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match a.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let s = unsafe { &*(a as *const libc::sockaddr_storage as *const libc::sockaddr_in) };
            Ok(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)), u16::from_be(s.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let s = unsafe { &*(a as *const libc::sockaddr_storage as *const libc::sockaddr_in6) };
            Ok(SocketAddrV6::new(Ipv6Addr::from(s.sin6_addr.s6_addr), u16::from_be(s.sin6_port), s.sin6_flowinfo, s.sin6_scope_id).into())
        }
        f => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("address family {f} is not IP"))),
    }
}

fn inet_to_storage(addr: &std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        std::net::SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let s = unsafe { &mut *(&mut st as *mut libc::sockaddr_storage as *mut libc::sockaddr_in) };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = a.port().to_be();
            s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (st, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        std::net::SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in6.
            let s = unsafe { &mut *(&mut st as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6) };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = a.port().to_be();
            s.sin6_addr.s6_addr = a.ip().octets();
            s.sin6_flowinfo = a.flowinfo();
            s.sin6_scope_id = a.scope_id();
            (st, std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

/// getsockname (peer: false) or getpeername (peer: true) of an IP socket.
pub fn inet_name(fd: RawFd, peer: bool) -> std::io::Result<std::net::SocketAddr> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut a: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = &mut a as *mut libc::sockaddr_storage as *mut libc::sockaddr;
    // SAFETY: the kernel writes at most `len` bytes into `a`.
    let r = unsafe { if peer { libc::getpeername(fd, p, &mut len) } else { libc::getsockname(fd, p, &mut len) } };
    cvt(r as libc::c_long)?;
    inet_from_storage(&a)
}

/// bind(2) (connect: false) or connect(2) (connect: true) of an IP socket.
pub fn inet_bind_or_connect(fd: RawFd, addr: &std::net::SocketAddr, connect: bool) -> std::io::Result<()> {
    let (a, len) = inet_to_storage(addr);
    let p = &a as *const libc::sockaddr_storage as *const libc::sockaddr;
    // SAFETY: `a` holds a valid sockaddr of `len` bytes.
    let r = unsafe { if connect { libc::connect(fd, p, len) } else { libc::bind(fd, p, len) } };
    cvt(r as libc::c_long)?;
    Ok(())
}

/// recv(2) with `flags` into `buf`; returns the bytes received.
pub fn recv_flags(fd: RawFd, buf: &mut [u8], flags: i32) -> std::io::Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into `buf`.
    Ok(cvt(unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), flags) } as libc::c_long)? as usize)
}

/// send(2) with `flags`; returns the bytes sent.
pub fn send_flags(fd: RawFd, data: &[u8], flags: i32) -> std::io::Result<usize> {
    // SAFETY: `data` is a live buffer of data.len() bytes.
    Ok(cvt(unsafe { libc::send(fd, data.as_ptr() as *const libc::c_void, data.len(), flags) } as libc::c_long)? as usize)
}
/// Sets the disposition of `sig` to SIG_IGN in rcr itself.
pub fn ignore_signal(sig: nix::sys::signal::Signal) -> std::io::Result<()> {
    // SAFETY: SIG_IGN installs no handler, so no code of ours runs on
    // delivery; restore children set their saved dispositions anyway.
    unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn) }.map_err(std::io::Error::from)?;
    Ok(())
}

/// One region returned by the PAGEMAP_SCAN ioctl (`struct page_region`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// PAGEMAP_SCAN categories (linux/fs.h).
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;

#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// _IOWR('f', 16, struct pm_scan_arg)
const PAGEMAP_SCAN: u64 = (3 << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

/// One PAGEMAP_SCAN on an open /proc/PID/pagemap: the regions of
/// [start, end) whose pages have any of the `anyof` categories, each with
/// its categories masked by `ret`, into `out`. Returns how many regions
/// came back and where the walk ended.
pub fn pagemap_scan(pagemap: RawFd, start: u64, end: u64, anyof: u64, ret: u64, out: &mut [PageRegion]) -> std::io::Result<(usize, u64)> {
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        start,
        end,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        category_anyof_mask: anyof,
        return_mask: ret,
        ..Default::default()
    };
    // SAFETY: `arg` is a valid pm_scan_arg whose vec points at `out`, which
    // has room for vec_len page_region entries (same layout, repr(C)); the
    // kernel writes at most that many and updates walk_end in `arg`.
    let n = cvt(unsafe { libc::ioctl(pagemap, PAGEMAP_SCAN as _, &mut arg as *mut PmScanArg) } as libc::c_long)?;
    Ok((n as usize, arg.walk_end))
}

/// Installs `handler` for `sig` with SA_RESTART. The handler must be
/// async-signal-safe (an atomic store).
pub fn set_signal_handler(sig: i32, handler: extern "C" fn(i32)) -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the
    // handler is a plain extern "C" fn that stays valid for the process's life.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler as usize;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: sa is fully initialised; the old action is not wanted.
    cvt(unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } as libc::c_long).map(drop)
}

/// A copy of fd `fd` of process `pid` (pidfd_open + pidfd_getfd).
pub fn pidfd_getfd(pid: i32, fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
    let pidfd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the fd was just returned to us and is owned from here on.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: pidfd_getfd takes the pidfd, the target's fd number and flags; it returns a new fd.
    let r = cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })?;
    // SAFETY: as above, a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}
