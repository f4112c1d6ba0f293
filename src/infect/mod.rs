//! The infection layer: everything rcr does to a live task through ptrace.
//!
//! Lifecycle of a dumped task, as CRIU's compel has it:
//!
//! 1. seize and stop ([`Tracee::seize`]);
//! 2. prepare: save its registers, XSAVE area and signal mask
//!    ([`Saved`]); no code bytes are overwritten: the syscalls run from
//!    outside use instructions of its own libc
//!    ([`Tracee::remote_syscall_guarded`]) or vDSO ([`vdso_syscall_insn`]);
//! 3. inject ([`parasite::Parasite::infect`]): a remote mmap of a shared
//!    region, which rcr maps too, loaded with the `parasite/` blob, the
//!    args and a sigframe holding the saved state;
//! 4. start: the parasite connects to rcr's unix socket;
//! 5. commands ([`parasite::Parasite`] methods);
//! 6. cure ([`parasite::Parasite::cure`]): the parasite rt_sigreturns into
//!    the saved state, rcr unmaps the region;
//! 7. resume ([`Tracee::detach`]) or kill ([`Tracee::kill`]).
//!
//! Remote syscalls ([`Tracee::remote_syscall`]) run one syscall in the
//! stopped task and are usable on their own.
//!
//! A seized task is interrupted with PTRACE_INTERRUPT, never SIGSTOP, so
//! nothing observable (no group stop, no SIGCHLD to its parent) happens.
//! [`Tracee`] detaches on drop, so every early return leaves the task
//! running as before.
#![allow(unsafe_code)]

use anyhow::{bail, Context, Result};
use std::mem::MaybeUninit;

pub mod parasite;
pub mod seccomp;

const PTRACE_EVENT_STOP: i32 = 128;
const NT_X86_XSTATE: libc::c_int = 0x202;
const SYSCALL_STOP: i32 = libc::SIGTRAP | 0x80;

/// A task seized by this process. Not `Send`: ptrace requests must come
/// from the thread that seized it.
#[derive(Debug)]
pub struct Tracee {
    pid: i32,
    attached: bool,
    gadgets: std::cell::OnceCell<Option<Gadgets>>,
    _not_send: std::marker::PhantomData<*const ()>,
}

/// How a traced task stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// PTRACE_EVENT_STOP: the stop PTRACE_INTERRUPT asks for.
    Interrupt,
    /// Syscall entry or exit (PTRACE_O_TRACESYSGOOD).
    Syscall,
    /// About to receive this signal.
    Signal(i32),
    /// A ptrace event other than PTRACE_EVENT_STOP (PTRACE_EVENT_FORK,
    /// _CLONE...): the task created a traced child or thread.
    Event(i32),
    Exited(i32),
    Killed(i32),
}

fn ptrace(req: libc::c_uint, pid: i32, addr: usize, data: usize) -> std::io::Result<libc::c_long> {
    // SAFETY: every caller passes addr/data that are either plain integers or
    // pointers to live buffers of the size the request writes (checked at
    // each call site).
    let r = unsafe { libc::ptrace(req, pid, addr as *mut libc::c_void, data as *mut libc::c_void) };
    if r == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Set by [`watch_for_exits`] (dump side).
static WATCH_EXITS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on [`wait_stop`] also notices a task that died under it. A
/// killed multi-threaded process whose threads rcr traces never reports
/// its leader to a waitpid on the leader alone (the other threads' exits
/// are for rcr to reap first), so a plain blocking waitpid would hang the
/// dump. SIGCHLD is blocked here (std's Command unblocks it in children)
/// and [`wait_stop`] sleeps in sigtimedwait for it between WNOHANG
/// waitpids, checking whether the task is dead.
pub fn watch_for_exits() -> Result<()> {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::from(Signal::SIGCHLD)), None).context("blocking SIGCHLD")?;
    WATCH_EXITS.store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

/// Whether `tid` is gone or a zombie. Reads the thread's own stat
/// (/proc/TID/task/TID/stat): /proc/TID/stat sums the CPU time of every
/// thread of the group, so asking it once per thread made dumps of many
/// threads quadratic (2,000 threads: 3.9 s, two thirds of it there).
pub fn dead(tid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{tid}/task/{tid}/stat")).unwrap_or_default();
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()).unwrap_or("X");
    matches!(state, "Z" | "X" | "x")
}

fn wait_stop_watching(pid: i32) -> Result<Stop> {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGCHLD);
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r == pid {
            return Ok(decode_status(status));
        }
        let e = std::io::Error::last_os_error();
        if r == -1 && e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).with_context(|| format!("waitpid {pid}"));
        }
        if r == 0 && dead(pid) {
            bail!("pid {pid} exited (or was killed) in the middle of the dump");
        }
        let ts = libc::timespec { tv_sec: 0, tv_nsec: 100_000_000 };
        // SAFETY: a valid signal set (SIGCHLD, blocked), no siginfo wanted,
        // a valid timeout; it only dequeues a pending SIGCHLD.
        unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    }
}

/// Waits for the next state change of a traced (or child) task.
pub fn wait_stop(pid: i32) -> Result<Stop> {
    if WATCH_EXITS.load(std::sync::atomic::Ordering::Relaxed) {
        return wait_stop_watching(pid);
    }
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if r == -1 && e.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return Err(e).with_context(|| format!("waitpid {pid}"));
    }
    Ok(decode_status(status))
}

/// Waits for the next state change of any traced task (or child):
/// (its tid, how it stopped).
pub fn wait_any() -> Result<(i32, Stop)> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::__WALL) };
        if r > 0 {
            return Ok((r, decode_status(status)));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("waitpid(-1)");
        }
    }
}

fn decode_status(status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        return Stop::Exited(libc::WEXITSTATUS(status));
    }
    if libc::WIFSIGNALED(status) {
        return Stop::Killed(libc::WTERMSIG(status));
    }
    let sig = libc::WSTOPSIG(status);
    if status >> 16 == PTRACE_EVENT_STOP {
        Stop::Interrupt
    } else if status >> 16 != 0 {
        Stop::Event(status >> 16)
    } else if sig == SYSCALL_STOP {
        Stop::Syscall
    } else {
        Stop::Signal(sig)
    }
}

impl Tracee {
    /// PTRACE_SEIZE + PTRACE_INTERRUPT, then waits until the task sits in
    /// the interrupt stop. Signals that arrive meanwhile are delivered, not
    /// lost.
    pub fn seize(pid: i32) -> Result<Self> {
        let opts = libc::PTRACE_O_TRACESYSGOOD as usize;
        ptrace(libc::PTRACE_SEIZE, pid, 0, opts).with_context(|| format!("PTRACE_SEIZE pid {pid}"))?;
        let t = Tracee { pid, attached: true, gadgets: Default::default(), _not_send: std::marker::PhantomData };
        ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0).with_context(|| format!("PTRACE_INTERRUPT pid {pid}"))?;
        t.wait_for_interrupt()?;
        t.suspend_seccomp_if_needed(opts)?;
        Ok(t)
    }

    /// Attaches to a child that is already ours (restore side), without
    /// stopping it; the processes and threads it creates are attached too,
    /// with the same options. They all die if rcr dies before detaching.
    /// With PTRACE_O_SUSPEND_SECCOMP too (inherited the same way, cleared
    /// on detach): the seccomp filters the blobs install do not act until
    /// rcr lets the tree go.
    pub fn seize_child(pid: i32) -> Result<Self> {
        let opts = (libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACEFORK | libc::PTRACE_O_TRACECLONE) as usize;
        let suspend = opts | libc::PTRACE_O_SUSPEND_SECCOMP as usize;
        if let Err(e) = ptrace(libc::PTRACE_SEIZE, pid, 0, suspend) {
            // Without CAP_SYS_ADMIN (a non-root restore, which validate
            // allows only for a tree without seccomp filters): no suspend.
            if e.raw_os_error() != Some(libc::EPERM) {
                return Err(e).with_context(|| format!("PTRACE_SEIZE pid {pid} with PTRACE_O_SUSPEND_SECCOMP"));
            }
            ptrace(libc::PTRACE_SEIZE, pid, 0, opts).with_context(|| format!("PTRACE_SEIZE pid {pid}"))?;
        }
        Ok(Tracee { pid, attached: true, gadgets: Default::default(), _not_send: std::marker::PhantomData })
    }

    /// Takes charge of a task rcr already traces (auto-attached through
    /// PTRACE_O_TRACEFORK/TRACECLONE on restore).
    pub fn adopt(pid: i32) -> Self {
        Tracee { pid, attached: true, gadgets: Default::default(), _not_send: std::marker::PhantomData }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// At a syscall stop: Some(number) at a syscall's entry, None at its
    /// exit (PTRACE_GET_SYSCALL_INFO).
    pub fn syscall_entry(&self) -> Result<Option<u64>> {
        const PTRACE_GET_SYSCALL_INFO: libc::c_uint = 0x420e;
        const OP_ENTRY: u8 = 1;
        let mut info = [0u64; 11];
        ptrace(PTRACE_GET_SYSCALL_INFO, self.pid, std::mem::size_of_val(&info), info.as_mut_ptr() as usize)
            .with_context(|| format!("PTRACE_GET_SYSCALL_INFO pid {}", self.pid))?;
        // struct ptrace_syscall_info: op (u8) at 0; entry.nr at 24.
        Ok(((info[0] & 0xff) as u8 == OP_ENTRY).then_some(info[3]))
    }

    /// Resumes until the next syscall entry or exit, without waiting.
    pub fn cont_syscall(&self, sig: i32) -> Result<()> {
        ptrace(libc::PTRACE_SYSCALL, self.pid, 0, sig as usize).with_context(|| format!("PTRACE_SYSCALL pid {}", self.pid))?;
        Ok(())
    }

    fn wait_for_interrupt(&self) -> Result<()> {
        loop {
            match wait_stop(self.pid)? {
                Stop::Interrupt => return Ok(()),
                Stop::Signal(sig) => {
                    // A signal got there first: let it be delivered and wait for
                    // the interrupt, which stays pending.
                    ptrace(libc::PTRACE_CONT, self.pid, 0, sig as usize)
                        .with_context(|| format!("PTRACE_CONT pid {} with signal {sig}", self.pid))?;
                }
                Stop::Syscall | Stop::Event(_) => {
                    ptrace(libc::PTRACE_CONT, self.pid, 0, 0).with_context(|| format!("PTRACE_CONT pid {}", self.pid))?;
                }
                Stop::Exited(c) => bail!("pid {} exited with status {c} while being stopped", self.pid),
                Stop::Killed(s) => bail!("pid {} was killed by signal {s} while being stopped", self.pid),
            }
        }
    }

    pub fn get_regs(&self) -> Result<libc::user_regs_struct> {
        let mut regs = MaybeUninit::<libc::user_regs_struct>::zeroed();
        ptrace(libc::PTRACE_GETREGS, self.pid, 0, regs.as_mut_ptr() as usize)
            .with_context(|| format!("PTRACE_GETREGS pid {}", self.pid))?;
        // SAFETY: PTRACE_GETREGS filled the whole struct (it was zeroed anyway).
        Ok(unsafe { regs.assume_init() })
    }

    pub fn set_regs(&self, regs: &libc::user_regs_struct) -> Result<()> {
        ptrace(libc::PTRACE_SETREGS, self.pid, 0, regs as *const _ as usize)
            .with_context(|| format!("PTRACE_SETREGS pid {}", self.pid))?;
        Ok(())
    }

    /// The XSAVE area (PTRACE_GETREGSET NT_X86_XSTATE), standard format.
    pub fn get_xsave(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 16384];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        ptrace(libc::PTRACE_GETREGSET, self.pid, NT_X86_XSTATE as usize, &mut iov as *mut _ as usize)
            .with_context(|| format!("PTRACE_GETREGSET NT_X86_XSTATE pid {}", self.pid))?;
        buf.truncate(iov.iov_len);
        Ok(buf)
    }

    /// Loads an XSAVE area (PTRACE_SETREGSET NT_X86_XSTATE).
    pub fn set_xsave(&self, xsave: &[u8]) -> Result<()> {
        let mut iov = libc::iovec { iov_base: xsave.as_ptr() as *mut libc::c_void, iov_len: xsave.len() };
        ptrace(libc::PTRACE_SETREGSET, self.pid, NT_X86_XSTATE as usize, &mut iov as *mut _ as usize)
            .with_context(|| format!("PTRACE_SETREGSET NT_X86_XSTATE pid {}", self.pid))?;
        Ok(())
    }

    pub fn set_sigmask(&self, mask: u64) -> Result<()> {
        ptrace(libc::PTRACE_SETSIGMASK, self.pid, 8, &mask as *const u64 as usize)
            .with_context(|| format!("PTRACE_SETSIGMASK pid {}", self.pid))?;
        Ok(())
    }

    /// Stops the running task again (PTRACE_INTERRUPT) and waits for it.
    pub fn interrupt(&self) -> Result<()> {
        ptrace(libc::PTRACE_INTERRUPT, self.pid, 0, 0).with_context(|| format!("PTRACE_INTERRUPT pid {}", self.pid))?;
        self.wait_for_interrupt()
    }

    /// The signals pending for the task (`shared`: process-wide), as raw
    /// 128-byte siginfo, oldest first (PTRACE_PEEKSIGINFO).
    pub fn peek_siginfo(&self, shared: bool) -> Result<Vec<Vec<u8>>> {
        #[repr(C)]
        struct PeekArgs {
            off: u64,
            flags: u32,
            nr: i32,
        }
        const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
        const PEEKSIGINFO_SHARED: u32 = 1;
        const BATCH: usize = 32;
        let mut out = Vec::new();
        loop {
            let args = PeekArgs { off: out.len() as u64, flags: if shared { PEEKSIGINFO_SHARED } else { 0 }, nr: BATCH as i32 };
            let mut buf = vec![0u8; 128 * BATCH];
            let n = ptrace(PTRACE_PEEKSIGINFO, self.pid, &args as *const PeekArgs as usize, buf.as_mut_ptr() as usize)
                .with_context(|| format!("PTRACE_PEEKSIGINFO pid {}", self.pid))? as usize;
            out.extend(buf.chunks_exact(128).take(n).map(<[u8]>::to_vec));
            if n < BATCH {
                return Ok(out);
            }
        }
    }

    /// The blocked signal mask, bit n-1 for signal n.
    pub fn get_sigmask(&self) -> Result<u64> {
        let mut mask = 0u64;
        ptrace(libc::PTRACE_GETSIGMASK, self.pid, 8, &mut mask as *mut u64 as usize)
            .with_context(|| format!("PTRACE_GETSIGMASK pid {}", self.pid))?;
        Ok(mask)
    }

    /// The rseq registration (PTRACE_GET_RSEQ_CONFIGURATION): pointer,
    /// length and signature; length 0 if none.
    pub fn get_rseq(&self) -> Result<(u64, u32, u32)> {
        #[repr(C)]
        #[derive(Default)]
        struct Conf {
            pointer: u64,
            size: u32,
            signature: u32,
            flags: u32,
            pad: u32,
        }
        const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
        let mut c = Conf::default();
        ptrace(PTRACE_GET_RSEQ_CONFIGURATION, self.pid, std::mem::size_of::<Conf>(), &mut c as *mut Conf as usize)
            .with_context(|| format!("PTRACE_GET_RSEQ_CONFIGURATION pid {}", self.pid))?;
        Ok((c.pointer, c.size, c.signature))
    }

    /// Resumes to the next syscall entry or exit and waits for it.
    pub fn step_syscall(&self) -> Result<()> {
        // A task of a stopped process (job control) traps back into a
        // group-stop report once; resume it again.
        for _ in 0..4 {
            ptrace(libc::PTRACE_SYSCALL, self.pid, 0, 0).with_context(|| format!("PTRACE_SYSCALL pid {}", self.pid))?;
            match wait_stop(self.pid)? {
                Stop::Syscall => return Ok(()),
                Stop::Interrupt => crate::log::debug(&format!("pid {}: group-stop report while stepping; resuming", self.pid)),
                other => return self.unexpected_stop(other),
            }
        }
        bail!("pid {}: keeps reporting a group stop instead of running", self.pid)
    }

    fn unexpected_stop(&self, other: Stop) -> Result<()> {
        let rip = self.get_regs().map(|r| format!("{:#x} rsp {:#x}", r.rip, r.rsp)).unwrap_or_default();
        bail!("pid {}: expected a syscall stop, got {other:?} at rip {rip}", self.pid)
    }

    /// Continues the task, delivering `sig` (0 for none); the caller waits
    /// for its next stop.
    pub fn cont(&self, sig: i32) -> Result<()> {
        ptrace(libc::PTRACE_CONT, self.pid, 0, sig as usize).with_context(|| format!("PTRACE_CONT pid {}", self.pid))?;
        Ok(())
    }

    /// Runs one syscall inside the stopped task, using a `syscall`
    /// instruction found at `insn` in its address space, and returns the
    /// raw result (negative errno on failure). The task's registers are
    /// back as they were afterwards, and it sits in an interrupt stop again,
    /// so an interrupted syscall of its own still restarts correctly when
    /// it is resumed.
    pub fn remote_syscall(&self, insn: u64, nr: u64, args: [u64; 6]) -> Result<i64> {
        // With every signal blocked, no signal stop comes between the
        // syscall's entry and exit; pending ones stay pending.
        let mask = self.get_sigmask()?;
        self.set_sigmask(u64::MAX)?;
        let r = self.remote_syscall_blocked(insn, nr, args);
        self.set_sigmask(mask)?;
        r
    }

    fn remote_syscall_blocked(&self, insn: u64, nr: u64, args: [u64; 6]) -> Result<i64> {
        let saved = self.get_regs()?;
        let mut r = saved;
        r.rip = insn;
        r.rax = nr;
        r.orig_rax = u64::MAX; // not in a syscall: no restart logic on resume
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (args[0], args[1], args[2], args[3], args[4], args[5]);
        self.set_regs(&r)?;
        let result = self.step_syscall().and_then(|()| self.step_syscall()).and_then(|()| self.get_regs());
        // Put the task back in an interrupt stop with its own registers,
        // whatever happened above.
        self.set_regs(&saved)?;
        self.reinterrupt()?;
        Ok(result?.rax as i64)
    }

    /// From a syscall stop, back into an interrupt stop, so that resuming
    /// the task later goes through the kernel's syscall-restart logic.
    fn reinterrupt(&self) -> Result<()> {
        ptrace(libc::PTRACE_INTERRUPT, self.pid, 0, 0).with_context(|| format!("PTRACE_INTERRUPT pid {}", self.pid))?;
        ptrace(libc::PTRACE_CONT, self.pid, 0, 0).with_context(|| format!("PTRACE_CONT pid {}", self.pid))?;
        self.wait_for_interrupt()
    }

    /// Runs one syscall inside the stopped task such that, whatever happens
    /// to rcr meanwhile, the task comes back to its own state by itself:
    /// the syscall runs at a `syscall; ret` in the task's code, and `ret`
    /// goes to its libc's rt_sigreturn stub with, as the frame, the task's
    /// saved state written below its stack's red zone. rcr watches the
    /// chain with PTRACE_SYSCALL and puts the overwritten stack bytes back.
    /// Without such code in the task (no glibc), this is
    /// [`Tracee::remote_syscall`] through its vDSO, whose few microseconds
    /// between setting and restoring registers are not covered.
    pub fn remote_syscall_guarded(&self, nr: u64, args: [u64; 6]) -> Result<i64> {
        Ok(self.remote_syscalls_guarded(&[(nr, args)])?[0])
    }

    /// Several syscalls in one guarded chain (see
    /// [`Tracee::remote_syscall_guarded`]): at each syscall's exit stop rcr
    /// points the task at the `syscall; ret` again with the next call's
    /// registers; the last `ret` goes to the rt_sigreturn stub. If rcr dies
    /// anywhere in the chain, the task finishes the call it is in and
    /// returns to its own state. Two stops per extra call instead of a
    /// whole guarded call each. Returns the results in order.
    pub fn remote_syscalls_guarded(&self, calls: &[(u64, [u64; 6])]) -> Result<Vec<i64>> {
        use crate::arch::cur::{self as arch, sigframe};
        let Some(&(nr, args)) = calls.first() else { return Ok(Vec::new()) };
        let Some(g) = self.gadgets()? else {
            let insn = vdso_syscall_insn(self.pid)?;
            return calls.iter().map(|&(nr, args)| self.remote_syscall(insn, nr, args)).collect();
        };
        let saved = Saved::read(self)?;
        let (regs, xsave, mask) = (saved.regs, &saved.xsave, saved.sigmask);
        let mut back = arch::regs_to_pb(&regs);
        arch::prepare_restart(&mut back, arch::Resume::SameTask);
        let size = sigframe::frame_size(xsave.len());
        let at = (regs.rsp - 128 - size as u64) & !63;
        let mut frame = vec![0u8; size];
        sigframe::build(&mut frame, at, &back, xsave, mask, sigframe::AltStack::UNCHANGED, arch::xcr0())?;
        frame[..8].copy_from_slice(&g.sigreturn.to_le_bytes()); // pretcode: where `ret` goes
        let mut old = vec![0u8; size];
        read_memory(self.pid, at, &mut old)?;
        write_memory(self.pid, at, &frame)?;
        let mut r = regs;
        r.rip = g.syscall_ret;
        r.rsp = at;
        r.rax = nr;
        r.orig_rax = u64::MAX;
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (args[0], args[1], args[2], args[3], args[4], args[5]);
        // Registers before the mask: from here on the task returns to its
        // own state (mask included) by itself.
        self.set_regs(&r)?;
        let result = self.set_sigmask(u64::MAX).and_then(|()| self.run_guarded_chain(calls, g.syscall_ret));
        if result.is_err() {
            // rcr is alive: put everything back directly.
            saved.write(self)?;
        }
        write_memory(self.pid, at, &old)?;
        self.reinterrupt()?;
        result
    }

    /// Steps through the syscalls (the first set up by the caller, each
    /// next one at `syscall_ret` from the previous one's exit stop) and the
    /// rt_sigreturn after them; returns the syscalls' results.
    fn run_guarded_chain(&self, calls: &[(u64, [u64; 6])], syscall_ret: u64) -> Result<Vec<i64>> {
        const NR_RT_SIGRETURN: u64 = 15;
        let mut results = Vec::with_capacity(calls.len());
        for (i, &(nr, _)) in calls.iter().enumerate() {
            self.step_syscall()?;
            crate::fault::kill_point("inside a guarded remote syscall");
            self.step_syscall()?;
            let mut r = self.get_regs()?;
            results.push(r.rax as i64);
            let Some(&(next, a)) = calls.get(i + 1) else { break };
            // Registers first, then rip: the task runs `syscall; ret` again.
            (r.rip, r.rax, r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (syscall_ret, next, a[0], a[1], a[2], a[3], a[4], a[5]);
            self.set_regs(&r).with_context(|| format!("pid {}: chaining syscall {next} after {nr}", self.pid))?;
        }
        self.step_syscall()?;
        let r = self.get_regs()?;
        if r.orig_rax != NR_RT_SIGRETURN {
            let last = calls.last().map_or(0, |c| c.0);
            bail!("pid {}: after syscall {last}, expected rt_sigreturn, got syscall {}", self.pid, r.orig_rax as i64);
        }
        self.step_syscall()?;
        Ok(results)
    }

    /// The task's `syscall; ret` and rt_sigreturn stub, found once.
    fn gadgets(&self) -> Result<Option<Gadgets>> {
        if let Some(g) = self.gadgets.get() {
            return Ok(*g);
        }
        let g = find_gadgets(self.pid)?;
        if g.is_none() {
            crate::log::info(&format!("pid {}: no rt_sigreturn stub in its code; remote syscalls run unguarded", self.pid));
        }
        Ok(*self.gadgets.get_or_init(|| g))
    }

    /// Lets the task go, as it was.
    pub fn detach(mut self) -> Result<()> {
        self.attached = false;
        ptrace(libc::PTRACE_DETACH, self.pid, 0, 0).with_context(|| format!("PTRACE_DETACH pid {}", self.pid))?;
        Ok(())
    }

    /// Kills the task (SIGKILL) and waits until it is gone from our view.
    pub fn kill(self) -> Result<()> {
        // SAFETY: plain kill(2) of a task we hold seized.
        if unsafe { libc::kill(self.pid, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("kill pid {}", self.pid));
        }
        self.reap_killed();
        Ok(())
    }

    /// The task is gone (rcr reaped its exit): nothing to detach.
    pub fn forget(&mut self) {
        self.attached = false;
    }

    /// Once its process was sent SIGKILL: waits until this task is gone
    /// from rcr's view (threads before their leader).
    pub fn reap_killed(mut self) {
        self.attached = false;
        loop {
            match wait_stop(self.pid) {
                Ok(Stop::Exited(_) | Stop::Killed(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Uses the gadgets already found in another thread of the same
    /// process instead of searching its code again.
    pub fn share_gadgets(&self, from: &Tracee) -> Result<()> {
        let g = from.gadgets()?;
        let _ = self.gadgets.set(g);
        Ok(())
    }

    /// get_robust_list(2) of this thread: head and length.
    pub fn robust_list(&self) -> Result<(u64, u64)> {
        let (mut head, mut len) = (0u64, 0usize);
        // SAFETY: both out-pointers are valid for the sizes the kernel writes.
        let r = unsafe { libc::syscall(libc::SYS_get_robust_list, self.pid, &mut head as *mut u64, &mut len as *mut usize) };
        if r != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("get_robust_list tid {}", self.pid));
        }
        Ok((head, len as u64))
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if self.attached {
            let _ = ptrace(libc::PTRACE_DETACH, self.pid, 0, 0);
        }
    }
}

/// Address of a `syscall` instruction in `pid`'s vDSO. The vDSO's code is
/// the same in every 64-bit process, so the offset is found in rcr's own.
pub fn vdso_syscall_insn(pid: i32) -> Result<u64> {
    let theirs = crate::proc::maps(pid)?
        .into_iter()
        .find(|m| m.name == "[vdso]")
        .with_context(|| format!("pid {pid} has no [vdso]; cannot run syscalls in it"))?;
    let mine = crate::proc::maps(std::process::id() as i32)?
        .into_iter()
        .find(|m| m.name == "[vdso]")
        .context("rcr itself has no [vdso]")?;
    if mine.end - mine.start != theirs.end - theirs.start {
        bail!("pid {pid}: its [vdso] differs in size from rcr's");
    }
    // SAFETY: [vdso] is mapped readable in this process for its whole life
    // and these are its bounds from /proc/self/maps.
    let code = unsafe { std::slice::from_raw_parts(mine.start as *const u8, (mine.end - mine.start) as usize) };
    let off = code.windows(2).position(|w| w == [0x0f, 0x05]).context("no syscall instruction in [vdso]")?;
    Ok(theirs.start + off as u64)
}

/// What a stopped task was: everything a cure or a failed injection puts
/// back.
#[derive(Debug, Clone)]
pub struct Saved {
    pub regs: libc::user_regs_struct,
    pub xsave: Vec<u8>,
    pub sigmask: u64,
    /// rseq registration: pointer, length (0: none), signature.
    pub rseq: (u64, u32, u32),
}

impl Saved {
    pub fn read(t: &Tracee) -> Result<Self> {
        Ok(Saved { regs: t.get_regs()?, xsave: t.get_xsave()?, sigmask: t.get_sigmask()?, rseq: t.get_rseq()? })
    }

    /// Puts registers, XSAVE area and mask back through ptrace.
    pub fn write(&self, t: &Tracee) -> Result<()> {
        t.set_regs(&self.regs)?;
        t.set_xsave(&self.xsave)?;
        t.set_sigmask(self.sigmask)
    }
}

/// Code in a task that lets a remote syscall return on its own.
#[derive(Debug, Clone, Copy)]
pub struct Gadgets {
    /// `syscall; ret`
    syscall_ret: u64,
    /// `mov $15, %rax; syscall` (glibc's and musl's `__restore_rt`)
    sigreturn: u64,
}

/// Looks for [`Gadgets`] in the task's file-backed executable mappings.
fn find_gadgets(pid: i32) -> Result<Option<Gadgets>> {
    let (mut syscall_ret, mut sigreturn) = (None, None);
    for m in crate::proc::maps(pid)? {
        if m.perms != "r-xp" || m.inode == 0 || m.end - m.start > 64 << 20 {
            continue;
        }
        let found = gadgets_in(pid, &m);
        syscall_ret = syscall_ret.or(found.0.map(|o| m.start + o));
        sigreturn = sigreturn.or(found.1.map(|o| m.start + o));
        if let (Some(syscall_ret), Some(sigreturn)) = (syscall_ret, sigreturn) {
            return Ok(Some(Gadgets { syscall_ret, sigreturn }));
        }
    }
    Ok(None)
}

const SYSCALL_RET: &[u8] = &[0x0f, 0x05, 0xc3];
const RESTORE_RT: &[u8] = &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

/// Where in mapping `m` of `pid` the two gadgets start (offsets from its
/// start). The processes of a tree map the same libraries: results are
/// kept by (device, inode, file offset, length) and a hit is checked by
/// reading the gadget bytes, so each library is scanned once per dump.
fn gadgets_in(pid: i32, m: &crate::proc::MapEntry) -> (Option<u64>, Option<u64>) {
    type Key = (u32, u32, u64, u64, u64);
    type Found = (Option<u64>, Option<u64>);
    static CACHE: std::sync::Mutex<Option<std::collections::HashMap<Key, Found>>> = std::sync::Mutex::new(None);
    let key = (m.dev_major, m.dev_minor, m.inode, m.offset, m.end - m.start);
    let at = |o: Option<u64>, pat: &[u8]| {
        let mut b = vec![0u8; pat.len()];
        o.is_none_or(|o| read_memory(pid, m.start + o, &mut b).is_ok() && b == pat)
    };
    let cached = CACHE.lock().ok().and_then(|c| c.as_ref().and_then(|c| c.get(&key).copied()));
    if let Some(found) = cached.filter(|f| at(f.0, SYSCALL_RET) && at(f.1, RESTORE_RT)) {
        return found;
    }
    let mut code = vec![0u8; (m.end - m.start) as usize];
    if read_memory(pid, m.start, &mut code).is_err() {
        return (None, None);
    }
    let find = |pat: &[u8]| code.windows(pat.len()).position(|w| w == pat).map(|o| o as u64);
    let found = (find(SYSCALL_RET), find(RESTORE_RT));
    if let Ok(mut c) = CACHE.lock() {
        c.get_or_insert_with(Default::default).insert(key, found);
    }
    found
}

/// Writes `data` at `addr` of another process (process_vm_writev).
pub fn write_memory(pid: i32, addr: u64, data: &[u8]) -> Result<()> {
    let local = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: `local` covers `data`, which the kernel only reads; `remote`
    // is an address in the other process.
    let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    if n != data.len() as isize {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("process_vm_writev pid {pid} at {addr:#x}"));
    }
    Ok(())
}

/// Reads `len` bytes at `addr` of another process (process_vm_readv).
pub fn read_memory(pid: i32, addr: u64, buf: &mut [u8]) -> Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let local = libc::iovec { iov_base: buf[done..].as_mut_ptr().cast(), iov_len: buf.len() - done };
        let remote = libc::iovec { iov_base: (addr as usize + done) as *mut libc::c_void, iov_len: buf.len() - done };
        // SAFETY: `local` covers the unfilled tail of `buf`, which we own
        // mutably; `remote` is only read by the kernel in the other process.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            let e = std::io::Error::last_os_error();
            return Err(e).with_context(|| format!("process_vm_readv pid {pid} at {:#x}", addr as usize + done));
        }
        done += n as usize;
    }
    Ok(())
}
