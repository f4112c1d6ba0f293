//! The parasite, seen from the dumper: inject, command, cure.
//!
//! [`Parasite::infect`] maps a shared region into the stopped task with one
//! remote mmap, maps the same memory into rcr through
//! /proc/PID/map_files, copies the blob, its [`ParasiteArgs`] and a cure
//! sigframe (the task's saved registers, XSAVE area and signal mask) into
//! it, blocks every signal of the task and lets it run the blob. The
//! parasite connects to an abstract unix socket only rcr listens on (its
//! peer credentials are checked), and then serves commands.
//!
//! [`Parasite::cure`] ends it: rcr stops the task, closes the socket, and
//! watches with PTRACE_SYSCALL as the parasite rt_sigreturns through the
//! cure sigframe; then it unmaps the region with a remote munmap. The path
//! the parasite takes is the one it takes alone if rcr dies: a closed
//! socket means "cure yourself". If the parasite does not get there, rcr
//! puts the saved registers, XSAVE area and mask back itself. Dropping an
//! uncured [`Parasite`] cures it, so every error path leaves the task as
//! it was.
#![allow(unsafe_code)]

pub use super::Saved;
use super::Tracee;
use crate::arch::cur as arch;
use crate::arch::cur::sigframe;
use crate::images::pb;
use crate::{fault, log};
use anyhow::{bail, Context, Result};
use rcr_abi::parasite::{
    Cmd, Command, DrainRun, ITimerVal, KSigaction, ParasiteArgs, PosixTimerState, Reply, TaskMisc, HELLO,
    PARASITE_ARGS_MAGIC, PARASITE_DATA, PARASITE_STACK,
};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

const PAGE: u64 = 4096;
const NR_MMAP: u64 = 9;
const NR_MUNMAP: u64 = 11;
const NR_RT_SIGRETURN: u64 = 15;
/// How long the parasite may take to connect after it is started.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Syscall stops allowed between closing the socket and rt_sigreturn.
const MAX_CURE_STOPS: usize = 64;

fn page_up(x: u64) -> u64 {
    (x + PAGE - 1) & !(PAGE - 1)
}

/// Offsets of the parts of the region (see `rcr_abi::parasite`).
#[derive(Debug, Clone, Copy)]
struct Layout {
    args: u64,
    frame: u64,
    stack_top: u64,
    data: u64,
    len: u64,
}

impl Layout {
    fn new(xsave_len: usize) -> Self {
        let args = page_up(crate::blobs::PARASITE_MEM_SIZE as u64);
        let frame = args + PAGE;
        let stack = frame + page_up(sigframe::frame_size(xsave_len) as u64);
        let stack_top = stack + PARASITE_STACK;
        let data = stack_top;
        Layout { args, frame, stack_top, data, len: data + PARASITE_DATA }
    }
}

/// rcr's own mapping of the shared region.
#[derive(Debug)]
struct LocalMap {
    ptr: *mut u8,
    len: usize,
}

impl LocalMap {
    fn open(pid: i32, start: u64, len: u64) -> Result<Self> {
        let link = crate::proc::path(pid, &format!("map_files/{:x}-{:x}", start, start + len));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&link)
            .with_context(|| format!("opening {}", link.display()))?;
        // SAFETY: a fresh shared mapping of the region's shmem object; no
        // Rust reference aliases it, all access goes through `bytes`.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len as usize, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, f.as_raw_fd(), 0)
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("mapping {}", link.display()));
        }
        Ok(LocalMap { ptr: p.cast(), len: len as usize })
    }

    /// The bytes at `off..off + n`. The task writes only the data area, and
    /// only while a command runs, when rcr does not look at it.
    fn bytes(&mut self, off: u64, n: usize) -> &mut [u8] {
        assert!(off as usize + n <= self.len, "region access out of bounds");
        // SAFETY: in bounds (asserted); the mapping lives as long as self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off as usize), n) }
    }
}

impl Drop for LocalMap {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping of the region; `bytes` borrows
        // cannot outlive self.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Per-thread values read by [`Parasite::thread_misc`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadMisc {
    pub altstack_sp: u64,
    pub altstack_flags: u32,
    pub altstack_size: u64,
    pub tid_address: u64,
    /// PR_GET_SECUREBITS (read here, in the same chain, to spare the
    /// credentials dump a guarded call of its own per thread).
    pub securebits: u32,
}

/// A parasite running inside a seized task.
#[derive(Debug)]
pub struct Parasite<'t> {
    t: &'t Tracee,
    saved: Saved,
    start: u64,
    layout: Layout,
    local: LocalMap,
    sock: Option<OwnedFd>,
    /// Fds rcr handed to the task, by their number there.
    sent_fds: Vec<i32>,
    /// The task was let go into the blob.
    running: bool,
    /// The parasite's socket, by its number in the task.
    task_sock: i32,
}

/// Unmaps the region from the stopped task.
fn remote_munmap(t: &Tracee, start: u64, len: u64) -> Result<()> {
    let r = t.remote_syscall_guarded(NR_MUNMAP, [start, len, 0, 0, 0, 0])?;
    if r < 0 {
        bail!("munmap of the parasite region {start:#x} in pid {} failed: {}", t.pid(), errno(r));
    }
    Ok(())
}

fn errno(r: i64) -> std::io::Error {
    std::io::Error::from_raw_os_error((-r) as i32)
}

impl<'t> Parasite<'t> {
    /// Injects the parasite into the stopped task `t` and waits until it
    /// has connected.
    pub fn infect(t: &'t Tracee) -> Result<Self> {
        let pid = t.pid();
        let saved = Saved::read(t)?;
        let layout = Layout::new(saved.xsave.len());
        let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        let flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64;
        crate::dump::watchdog::region_mapping(pid, layout.len);
        let r = t.remote_syscall_guarded(NR_MMAP, [0, layout.len, prot, flags, u64::MAX, 0]);
        let r = r.inspect_err(|_| crate::dump::watchdog::region_unmapped(pid))?;
        if r < 0 {
            crate::dump::watchdog::region_unmapped(pid);
            bail!("mmap of the parasite region ({} bytes) in pid {pid} failed: {}", layout.len, errno(r));
        }
        let start = r as u64;
        crate::dump::watchdog::region_mapped(pid, start, layout.len);
        let local = match fault::point("parasite region mapped").and_then(|()| LocalMap::open(pid, start, layout.len)) {
            Ok(l) => l,
            Err(e) => {
                if remote_munmap(t, start, layout.len).is_ok() {
                    crate::dump::watchdog::region_unmapped(pid);
                }
                return Err(e);
            }
        };
        let mut p = Parasite { t, saved, start, layout, local, sock: None, sent_fds: Vec::new(), running: false, task_sock: -1 };
        // From here on, dropping `p` cures the task.
        let listener = Listener::new(pid)?;
        p.load(&listener)?;
        fault::point("parasite loaded")?;
        p.start()?;
        fault::point("parasite started")?;
        p.sock = Some(listener.accept(pid)?);
        let hello = p.recv_reply(HELLO)?;
        p.task_sock = hello.value[1] as i32;
        log::debug(&format!("pid {pid}: parasite at {start:#x} connected from tid {}", hello.value[0]));
        fault::point("parasite connected")?;
        Ok(p)
    }

    /// The infected process.
    pub fn pid(&self) -> i32 {
        self.t.pid()
    }

    /// The task's state as found, before the parasite went in.
    pub fn saved(&self) -> &Saved {
        &self.saved
    }

    /// The parasite's region in the task (start, length): not the task's.
    pub fn region(&self) -> (u64, u64) {
        (self.start, self.layout.len)
    }

    /// The fds the parasite holds in the task (its socket, what rcr gave
    /// it): not the task's own.
    pub fn task_fds(&self) -> Vec<i32> {
        std::iter::once(self.task_sock).chain(self.sent_fds.iter().copied()).collect()
    }

    /// The saved registers as the cure sigframe holds them: an interrupted
    /// syscall set up to restart in this same task.
    fn resume_regs(&self) -> pb::X86Regs {
        let mut regs = arch::regs_to_pb(&self.saved.regs);
        arch::prepare_restart(&mut regs, arch::Resume::SameTask);
        regs
    }

    /// Copies the blob, the args and the cure sigframe into the region.
    fn load(&mut self, listener: &Listener) -> Result<()> {
        let blob = crate::blobs::PARASITE_BLOB;
        self.local.bytes(0, blob.len()).copy_from_slice(blob);
        let regs = self.resume_regs();
        let frame_at = self.start + self.layout.frame;
        let frame_len = sigframe::frame_size(self.saved.xsave.len());
        let (xsave, mask) = (self.saved.xsave.clone(), self.saved.sigmask);
        // The parasite overwrites uc_stack with the task's own at cure time.
        sigframe::build(self.local.bytes(self.layout.frame, frame_len), frame_at, &regs, &xsave, mask, sigframe::AltStack::NONE, arch::xcr0())?;
        let mut args = ParasiteArgs {
            stack_top: self.start + self.layout.stack_top,
            magic: PARASITE_ARGS_MAGIC,
            sigframe: frame_at,
            sigframe_uc_stack: sigframe::UC_STACK_OFFSET as u64,
            data: self.start + self.layout.data,
            data_len: PARASITE_DATA,
            addr_len: listener.addr_len,
            connect_delay_ms: test_connect_delay_ms(),
            addr: [0; 110],
            _pad2: [0; 2],
        };
        args.addr.copy_from_slice(&listener.addr_bytes());
        // SAFETY: ParasiteArgs is plain old data (repr(C), integers only).
        let raw = unsafe {
            std::slice::from_raw_parts(&args as *const ParasiteArgs as *const u8, std::mem::size_of::<ParasiteArgs>())
        };
        self.local.bytes(self.layout.args, raw.len()).copy_from_slice(raw);
        Ok(())
    }

    /// Points the task at the blob, with every signal blocked, and lets it go.
    fn start(&mut self) -> Result<()> {
        let mut r = self.saved.regs;
        r.rip = self.start + crate::blobs::PARASITE_ENTRY as u64;
        r.rdi = self.start + self.layout.args;
        r.rsp = self.start + self.layout.stack_top;
        r.orig_rax = u64::MAX; // no syscall restart on resume
        r.rax = 0;
        // Registers first: should rcr die between the two, the task runs
        // the parasite with its own mask, and the parasite cures it.
        self.t.set_regs(&r)?;
        self.t.set_sigmask(u64::MAX)?;
        self.t.cont(0)?;
        self.running = true;
        Ok(())
    }

    fn sock(&self) -> Result<RawFd> {
        self.sock.as_ref().map(|s| s.as_raw_fd()).context("parasite socket is closed")
    }

    fn send_cmd(&self, cmd: Cmd, arg: [u64; 3]) -> Result<()> {
        let c = Command { cmd: cmd as u32, _pad: 0, arg };
        // SAFETY: sending the bytes of a repr(C) integer struct.
        let n = unsafe {
            libc::send(self.sock()?, &c as *const Command as *const libc::c_void, std::mem::size_of::<Command>(), libc::MSG_NOSIGNAL)
        };
        if n != std::mem::size_of::<Command>() as isize {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("sending {cmd:?} to the parasite in pid {}", self.t.pid()));
        }
        Ok(())
    }

    /// Receives one reply, with the fds attached to it (if any).
    fn recv_reply_fds(&self, cmd: u32, fds: &mut Vec<OwnedFd>) -> Result<Reply> {
        let mut r = Reply::default();
        let mut iov = libc::iovec { iov_base: (&mut r as *mut Reply).cast(), iov_len: std::mem::size_of::<Reply>() };
        let mut control = [0u64; 64];
        // SAFETY: an all-zero msghdr is valid; the pointers set below refer
        // to live locals of the sizes given.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: msg describes buffers owned by this frame.
        let n = unsafe { libc::recvmsg(self.sock()?, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        let pid = self.t.pid();
        if n < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("reading from the parasite in pid {pid}"));
        }
        // SAFETY: walking the control messages the kernel wrote into `msg`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                    let data = libc::CMSG_DATA(c) as *const i32;
                    for i in 0..count {
                        fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if n == 0 {
            bail!("the parasite in pid {pid} closed its socket");
        }
        if n as usize != std::mem::size_of::<Reply>() || r.cmd != cmd {
            bail!("the parasite in pid {pid} sent a malformed reply ({n} bytes, command {})", r.cmd);
        }
        Ok(r)
    }

    fn recv_reply(&self, cmd: u32) -> Result<Reply> {
        let mut fds = Vec::new();
        self.recv_reply_fds(cmd, &mut fds)
    }

    /// Runs one command and checks its status.
    fn call(&mut self, cmd: Cmd, arg: [u64; 3]) -> Result<Reply> {
        self.send_cmd(cmd, arg)?;
        let r = self.recv_reply(cmd as u32)?;
        fault::point("parasite command done")?;
        if r.status < 0 {
            bail!("parasite command {cmd:?} in pid {} failed: {}", self.t.pid(), errno(r.status as i64));
        }
        Ok(r)
    }

    /// Reads `n` values of `T` the parasite left in the data area.
    fn read_data<T: Copy + Default>(&mut self, n: usize) -> Vec<T> {
        let size = std::mem::size_of::<T>();
        let bytes = self.local.bytes(self.layout.data, n * size);
        (0..n)
            // SAFETY: T is a repr(C) integer struct from rcr-abi; any bytes
            // are a valid value; read_unaligned copes with any alignment.
            .map(|i| unsafe { std::ptr::read_unaligned(bytes.as_ptr().add(i * size) as *const T) })
            .collect()
    }

    fn write_data<T: Copy>(&mut self, items: &[T]) {
        let size = std::mem::size_of_val(items);
        // SAFETY: viewing repr(C) integer structs as bytes.
        let raw = unsafe { std::slice::from_raw_parts(items.as_ptr() as *const u8, size) };
        self.local.bytes(self.layout.data, size).copy_from_slice(raw);
    }

    pub fn misc(&mut self) -> Result<TaskMisc> {
        self.call(Cmd::Misc, [0; 3])?;
        Ok(self.read_data::<TaskMisc>(1)[0])
    }

    /// What only a thread itself can read, for `t`, another (seized,
    /// stopped) thread of the infected process: its sigaltstack, its
    /// clear_child_tid address and its securebits. One guarded chain of
    /// remote syscalls in `t` writes the first two into the data area,
    /// idle between commands.
    pub fn thread_misc(&mut self, t: &Tracee) -> Result<ThreadMisc> {
        const NR_SIGALTSTACK: u64 = 131;
        const NR_PRCTL: u64 = 157;
        const PR_GET_TID_ADDRESS: u64 = 40;
        const PR_GET_SECUREBITS: u64 = 27;
        t.share_gadgets(self.t)?;
        let scratch = self.start + self.layout.data;
        let calls = [(NR_SIGALTSTACK, [0, scratch, 0, 0, 0, 0]), (NR_PRCTL, [PR_GET_TID_ADDRESS, scratch + 64, 0, 0, 0, 0]), (NR_PRCTL, [PR_GET_SECUREBITS, 0, 0, 0, 0, 0])];
        let r = t.remote_syscalls_guarded(&calls)?;
        for (what, &r) in ["sigaltstack", "PR_GET_TID_ADDRESS", "PR_GET_SECUREBITS"].iter().zip(&r) {
            if r < 0 {
                bail!("{what} in thread {}: {}", t.pid(), errno(r));
            }
        }
        let b = self.local.bytes(self.layout.data, 72);
        let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
        Ok(ThreadMisc { altstack_sp: word(0), altstack_flags: word(8) as u32, altstack_size: word(16), tid_address: word(64), securebits: r[2] as u32 })
    }

    /// All 64 signal actions, signal n at index n-1.
    pub fn sigactions(&mut self) -> Result<Vec<KSigaction>> {
        self.call(Cmd::Sigactions, [0; 3])?;
        Ok(self.read_data::<KSigaction>(64))
    }

    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF.
    pub fn itimers(&mut self) -> Result<Vec<ITimerVal>> {
        self.call(Cmd::Itimers, [0; 3])?;
        Ok(self.read_data::<ITimerVal>(3))
    }

    /// The state of the POSIX timers `ids` (timer_gettime and
    /// timer_getoverrun in the task), in order, and what
    /// prctl(PR_TIMER_CREATE_RESTORE_IDS, GET) returned there (a negative
    /// errno if the kernel lacks it).
    pub fn posix_timers(&mut self, ids: &[i32]) -> Result<(Vec<PosixTimerState>, i64)> {
        let max = PARASITE_DATA as usize / std::mem::size_of::<PosixTimerState>();
        if ids.len() > max {
            bail!("pid {} has {} POSIX timers; rcr reads at most {max}", self.t.pid(), ids.len());
        }
        let slots: Vec<PosixTimerState> = ids.iter().map(|&id| PosixTimerState { id, ..Default::default() }).collect();
        self.write_data(&slots);
        self.send_cmd(Cmd::Timers, [ids.len() as u64, 0, 0])?;
        let r = self.recv_reply(Cmd::Timers as u32)?;
        if r.status < 0 {
            let id = ids.get(r.value[1] as usize).copied().unwrap_or(-1);
            bail!("reading POSIX timer {id} in pid {}: {}", self.t.pid(), errno(r.status as i64));
        }
        Ok((self.read_data::<PosixTimerState>(ids.len()), r.value[0] as i64))
    }

    /// Hands `fd` to the task; returns its number there. The parasite
    /// closes it at cure time at the latest.
    pub fn give_fd(&mut self, fd: RawFd) -> Result<i32> {
        self.send_cmd(Cmd::RecvFd, [0; 3])?;
        send_fd(self.sock()?, fd).with_context(|| format!("passing fd {fd} to the parasite in pid {}", self.t.pid()))?;
        let r = self.recv_reply(Cmd::RecvFd as u32)?;
        if r.status < 0 {
            bail!("parasite could not receive fd {fd} in pid {}: {}", self.t.pid(), errno(r.status as i64));
        }
        let theirs = r.value[0] as i32;
        self.sent_fds.push(theirs);
        Ok(theirs)
    }

    /// Closes an fd of the task that rcr gave it.
    pub fn close_fd(&mut self, theirs: i32) -> Result<()> {
        self.call(Cmd::CloseFd, [theirs as u64, 0, 0])?;
        self.sent_fds.retain(|f| *f != theirs);
        Ok(())
    }

    /// Gets copies of the task's fds `fds` (SCM_RIGHTS), in order.
    pub fn take_fds(&mut self, fds: &[i32]) -> Result<Vec<OwnedFd>> {
        let mut out = Vec::with_capacity(fds.len());
        for chunk in fds.chunks(rcr_abi::parasite::MAX_SEND_FDS) {
            self.write_data(chunk);
            self.send_cmd(Cmd::SendFds, [chunk.len() as u64, 0, 0])?;
            let before = out.len();
            let r = self.recv_reply_fds(Cmd::SendFds as u32, &mut out)?;
            if r.status < 0 {
                bail!("parasite in pid {} could not send fds {chunk:?}: {}", self.t.pid(), errno(r.status as i64));
            }
            if out.len() - before != chunk.len() {
                bail!("parasite in pid {} sent {} fds for {chunk:?}", self.t.pid(), out.len() - before);
            }
        }
        Ok(out)
    }

    /// Most runs one drain command carries (they fill the data area).
    /// A [`Parasite::drain_write_skip_zero`] batch must also pass [`drain_fits`].
    pub fn max_runs(&self) -> usize {
        (PARASITE_DATA as usize) / std::mem::size_of::<DrainRun>()
    }

    /// Has the parasite pwrite `runs` of its memory into `fd` (a number in
    /// the task, see [`Parasite::give_fd`]) at their file offsets.
    pub fn drain_write(&mut self, fd: i32, runs: &[DrainRun]) -> Result<u64> {
        self.write_data(runs);
        let r = self.send_cmd(Cmd::DrainWrite, [fd as u64, runs.len() as u64, 0]).and_then(|()| self.recv_reply(Cmd::DrainWrite as u32))?;
        self.drain_result(r, runs)
    }

    /// Like [`Parasite::drain_write`], leaving out all-zero pages: the
    /// others go back to back from `runs[0].file_off`. Returns the bytes
    /// written and a bitmap over the pages of `runs`, set for the zero ones.
    /// `runs` must be readable private anonymous memory and fit
    /// [`drain_fits`] together.
    pub fn drain_write_skip_zero(&mut self, fd: i32, runs: &[DrainRun]) -> Result<(u64, Vec<u64>)> {
        use rcr_abi::parasite::DRAIN_SKIP_ZERO;
        self.write_data(runs);
        let r = self.send_cmd(Cmd::DrainWrite, [fd as u64, runs.len() as u64, DRAIN_SKIP_ZERO]).and_then(|()| self.recv_reply(Cmd::DrainWrite as u32))?;
        let written = self.drain_result(r, runs)?;
        let words = drain_bitmap_words(runs);
        let mut all = self.read_data::<u64>(runs.len() * 3 + words);
        Ok((written, all.split_off(runs.len() * 3)))
    }

    /// Has the parasite and a second thread it clones pwrite `runs0` into
    /// `fd0` and `runs1` into `fd1` at the same time, each list back to
    /// back from its first run's `file_off` (leaving out all-zero pages if
    /// `skip_zero`). Returns the bytes written into each file and each
    /// list's zero-page bitmap. The two lists must pass [`drain_pair_fits`].
    pub fn drain_pair(&mut self, fds: [i32; 2], runs: [&[DrainRun]; 2], skip_zero: bool) -> Result<([u64; 2], [Vec<u64>; 2])> {
        use rcr_abi::parasite::DRAIN_SKIP_ZERO;
        let mut words = vec![runs[0].len() as u64, runs[1].len() as u64];
        words.extend(runs.iter().flat_map(|l| l.iter()).flat_map(|r| [r.vaddr, r.len, r.file_off]));
        self.write_data(&words);
        let flags = if skip_zero { DRAIN_SKIP_ZERO } else { 0 };
        let r = self.send_cmd(Cmd::DrainPair, [fds[0] as u64, fds[1] as u64, flags]).and_then(|()| self.recv_reply(Cmd::DrainPair as u32))?;
        fault::point("pages drained")?;
        if r.status < 0 {
            let run = runs.get(r.value[0] as usize).and_then(|l| l.get(r.value[1] as usize)).copied().unwrap_or_default();
            bail!(
                "parasite in pid {} could not drain memory at {:#x} ({} bytes, {} done, writer {}): {}",
                self.t.pid(),
                run.vaddr,
                run.len,
                r.value[2],
                r.value[0],
                errno(r.status as i64)
            );
        }
        let (w0, w1) = (drain_bitmap_words(runs[0]), drain_bitmap_words(runs[1]));
        let mut all = self.read_data::<u64>(words.len() + w0 + w1);
        let bits1 = all.split_off(words.len() + w0);
        let bits0 = all.split_off(words.len());
        Ok(([r.value[0], r.value[1]], [bits0, bits1]))
    }

    /// Has the parasite vmsplice `runs` into the pipe `fd` (its number in
    /// the task) while `consume` empties the other end; `consume` gets the
    /// total byte count and is called right after the command is sent.
    pub fn drain_splice(&mut self, fd: i32, runs: &[DrainRun], consume: &mut dyn FnMut(u64, RawFd) -> Result<()>) -> Result<u64> {
        self.write_data(runs);
        self.send_cmd(Cmd::DrainSplice, [fd as u64, runs.len() as u64, 0])?;
        let total = runs.iter().map(|r| r.len).sum();
        consume(total, self.sock()?)?;
        let r = self.recv_reply(Cmd::DrainSplice as u32)?;
        self.drain_result(r, runs)
    }

    fn drain_result(&self, r: Reply, runs: &[DrainRun]) -> Result<u64> {
        fault::point("pages drained")?;
        if r.status < 0 {
            let run = runs.get(r.value[0] as usize).copied().unwrap_or_default();
            bail!(
                "parasite in pid {} could not drain memory at {:#x} ({} bytes, {} done): {}",
                self.t.pid(),
                run.vaddr,
                run.len,
                r.value[1],
                errno(r.status as i64)
            );
        }
        Ok(r.value[2])
    }

    /// Ends the parasite: it rt_sigreturns into the saved state and the
    /// region is unmapped. The task is left stopped, as it was found.
    pub fn cure(mut self) -> Result<()> {
        self.cure_inner()
    }

    fn cure_inner(&mut self) -> Result<()> {
        let t = self.t;
        let pid = t.pid();
        let ok = if self.running {
            // Before the interrupt: failing here leaves the parasite as it
            // was, for the drop to cure.
            fault::inject("curing the parasite")?;
            t.interrupt()?;
            fault::kill_point("parasite interrupted for cure");
            // A closed socket is the parasite's signal to cure itself.
            self.sock = None;
            self.watch_sigreturn()
        } else {
            Err(anyhow::anyhow!("it was never started"))
        };
        self.running = false;
        if let Err(e) = &ok {
            log::warn(&format!("pid {pid}: the parasite did not return by itself ({e:#}); restoring its registers through ptrace"));
            self.saved.write(t)?;
        }
        fault::inject("parasite returned")?;
        remote_munmap(t, self.start, self.layout.len)?;
        self.start = 0;
        crate::dump::watchdog::region_unmapped(pid);
        fault::inject("parasite region unmapped")?;
        log::debug(&format!("pid {pid}: parasite cured"));
        Ok(())
    }

    /// Steps the task from syscall to syscall until it has come out of
    /// rt_sigreturn, and checks it landed on the saved registers.
    fn watch_sigreturn(&self) -> Result<()> {
        let t = self.t;
        for _ in 0..MAX_CURE_STOPS {
            t.step_syscall()?;
            let r = t.get_regs()?;
            if r.orig_rax != NR_RT_SIGRETURN || !self.in_region(r.rip) {
                continue;
            }
            t.step_syscall()?; // its exit: the saved state is in place
            let now = t.get_regs()?;
            let want = self.resume_regs();
            if now.rip != want.rip || now.rsp != want.rsp {
                bail!("rt_sigreturn landed at rip {:#x} rsp {:#x}, not at {:#x} {:#x}", now.rip, now.rsp, want.rip, want.rsp);
            }
            return Ok(());
        }
        bail!("no rt_sigreturn within {MAX_CURE_STOPS} syscalls")
    }

    fn in_region(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.start + self.layout.len
    }
}

impl Drop for Parasite<'_> {
    fn drop(&mut self) {
        if self.start != 0 {
            if let Err(e) = self.cure_inner() {
                log::error(&format!("pid {}: curing the parasite after an error: {e:#}", self.t.pid()));
            }
        }
    }
}

/// Unmaps parasite regions an earlier rcr left in the stopped task: when
/// rcr is killed while the parasite is in, the parasite returns the task
/// to its saved state by itself but cannot unmap the code it runs from
/// (the dump's watchdog does, unless it was killed too: this is the
/// second line of defence). A region is recognised by its exact content (this rcr's blob at offset 0,
/// the args magic after it), never by its look alone. Returns how many.
pub fn remove_leftovers(t: &Tracee) -> Result<usize> {
    use std::os::unix::fs::FileExt;
    let pid = t.pid();
    let blob = crate::blobs::PARASITE_BLOB;
    let args = Layout::new(0).args;
    let mut removed = 0;
    for m in crate::proc::maps(pid)? {
        if m.perms != "rwxs" || m.name != "/dev/zero (deleted)" || m.end - m.start < args + PAGE {
            continue;
        }
        let link = crate::proc::path(pid, &format!("map_files/{:x}-{:x}", m.start, m.end));
        let Ok(f) = std::fs::File::open(&link) else { continue };
        let mut code = vec![0u8; blob.len()];
        let mut magic = [0u8; 8];
        let ours = f.read_exact_at(&mut code, 0).is_ok()
            && code == blob
            && f.read_exact_at(&mut magic, args + 8).is_ok()
            && u64::from_le_bytes(magic) == PARASITE_ARGS_MAGIC;
        if ours {
            remote_munmap(t, m.start, m.end - m.start)?;
            log::warn(&format!("pid {pid}: removed a parasite region {:#x}-{:#x} left by an rcr that was killed", m.start, m.end));
            removed += 1;
        }
    }
    Ok(removed)
}

/// Unmaps the parasite region a dead rcr left in `t` (the dump watchdog's
/// job, once the parasite has returned): the one mapped at `start` if it
/// is still there as mapped; with `start` 0 (rcr died inside the mmap)
/// the regions of `len` bytes that hold this rcr's blob or nothing yet.
pub fn remove_region(t: &Tracee, start: u64, len: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let pid = t.pid();
    if start == 0 {
        remove_leftovers(t)?;
    }
    for m in crate::proc::maps(pid)? {
        if m.perms != "rwxs" || m.name != "/dev/zero (deleted)" || m.end - m.start != len || (start != 0 && m.start != start) {
            continue;
        }
        if start == 0 {
            let link = crate::proc::path(pid, &format!("map_files/{:x}-{:x}", m.start, m.end));
            let mut bytes = vec![0u8; len as usize];
            let empty = std::fs::File::open(&link).and_then(|f| f.read_exact_at(&mut bytes, 0)).is_ok() && bytes.iter().all(|&b| b == 0);
            if !empty {
                continue;
            }
        }
        remote_munmap(t, m.start, len)?;
    }
    Ok(())
}

/// rcr's end of the parasite's connection: an abstract unix socket with a
/// name no one else uses; the peer must be the infected task.
#[derive(Debug)]
struct Listener {
    fd: OwnedFd,
    addr: libc::sockaddr_un,
    addr_len: u32,
}

impl Listener {
    fn new(pid: i32) -> Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("rcr-parasite-{}-{pid}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        // SAFETY: socket(2); the fd is new and owned below.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("creating the parasite socket");
        }
        // SAFETY: fd was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_un is valid.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as u16;
        for (i, b) in name.bytes().enumerate() {
            addr.sun_path[i + 1] = b as libc::c_char; // sun_path[0] = 0: abstract
        }
        let addr_len = (std::mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as u32;
        // SAFETY: addr is a valid sockaddr_un of at least addr_len bytes.
        let r = unsafe { libc::bind(fd.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, addr_len) };
        if r != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("binding the parasite socket @{name}"));
        }
        // SAFETY: listen on our socket.
        if unsafe { libc::listen(fd.as_raw_fd(), 1) } != 0 {
            return Err(std::io::Error::last_os_error()).context("listening on the parasite socket");
        }
        Ok(Listener { fd, addr, addr_len })
    }

    fn addr_bytes(&self) -> [u8; 110] {
        let mut out = [0u8; 110];
        // SAFETY: viewing the sockaddr_un (110 bytes) as bytes.
        let raw = unsafe { std::slice::from_raw_parts(&self.addr as *const _ as *const u8, 110) };
        out.copy_from_slice(raw);
        out
    }

    /// Waits for the parasite of `pid` to connect.
    /// A SIGTERM or SIGINT to rcr meanwhile ends the wait with the
    /// interruption's error (poll returns EINTR even under SA_RESTART).
    fn accept(&self, pid: i32) -> Result<OwnedFd> {
        let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                bail!("the parasite in pid {pid} did not connect within {CONNECT_TIMEOUT:?}");
            }
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if r > 0 {
                break;
            }
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e).with_context(|| format!("waiting for the parasite in pid {pid} to connect"));
                }
                fault::check()?;
            }
        }
        // SAFETY: accept4 on our listening socket; the fd is new and owned below.
        let c = unsafe { libc::accept4(self.fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
        if c < 0 {
            return Err(std::io::Error::last_os_error()).context("accepting the parasite's connection");
        }
        // SAFETY: c was just returned by accept4.
        let c = unsafe { OwnedFd::from_raw_fd(c) };
        let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: SO_PEERCRED fills a ucred of `len` bytes.
        let r = unsafe { libc::getsockopt(c.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len) };
        if r != 0 || cred.pid != pid {
            bail!("parasite socket: peer is pid {}, not {pid}", cred.pid);
        }
        Ok(c)
    }
}

/// RCR_TEST_CONNECT_DELAY_MS=N (tests only): the parasite sleeps N ms
/// before it connects, so a test can signal rcr while it waits.
fn test_connect_delay_ms() -> u32 {
    std::env::var("RCR_TEST_CONNECT_DELAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Sends one byte with `fd` attached (SCM_RIGHTS).
fn send_fd(sock: RawFd, fd: RawFd) -> std::io::Result<()> {
    let byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_ptr() as *mut libc::c_void, iov_len: 1 };
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; pointers below refer to locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
    // SAFETY: the control buffer is 32 bytes, enough for one cmsghdr + int.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut i32, fd);
    }
    // SAFETY: msg describes live buffers.
    if unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) } != 1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Signal actions as image entries: only the ones not at their default
/// (SIG_DFL, no flags, empty mask).
pub fn sigactions_to_pb(acts: &[KSigaction]) -> Vec<pb::SigAction> {
    acts.iter()
        .enumerate()
        .filter(|(_, a)| **a != KSigaction::default())
        .map(|(i, a)| pb::SigAction { signo: i as u32 + 1, handler: a.handler, flags: a.flags, restorer: a.restorer, mask: a.mask })
        .collect()
}

/// u64 words of the zero-page bitmap of a skip-zero drain of `runs`.
pub fn drain_bitmap_words(runs: &[DrainRun]) -> usize {
    (runs.iter().map(|r| r.len / 4096).sum::<u64>()).div_ceil(64) as usize
}

/// Whether two lists of a [`Parasite::drain_pair`] and their bitmaps fit
/// the data area, below the second thread's stack.
pub fn drain_pair_fits(runs: [&[DrainRun]; 2]) -> bool {
    let words = 2 + runs.iter().map(|l| l.len() * 3 + drain_bitmap_words(l)).sum::<usize>();
    words * 8 <= (PARASITE_DATA - rcr_abi::parasite::DRAIN_PAIR_STACK) as usize
}

/// Whether `runs` and their zero-page bitmap fit the data area together.
pub fn drain_fits(runs: &[DrainRun]) -> bool {
    (runs.len() * 3 + drain_bitmap_words(runs)) * 8 <= PARASITE_DATA as usize
}
