//! rcr's side of a restore: it traces every process and thread of the
//! tree from its birth (PTRACE_O_TRACEFORK/TRACECLONE from the root) and
//! moves them all through the same stages together.
//!
//! ```text
//! each process:  forked ─► barrier 1 ─► barrier 2 ─► prepare ─► blob ─► report ─► rt_sigreturn
//! each zombie:   forked ─► barrier 1 ─► barrier 2 ─► exits with its status
//! each thread:             (created by the blob) ─► setup ─► waits for go ─► int3 ─► rt_sigreturn
//! page reader:              (created by the blob) ─► reads its half of the pages ─► exits, reaped
//! ```
//!
//! Nobody passes a barrier until every process reached it; no process
//! returns into its saved state until every blob has reported and every
//! zombie is dead. Then every task stops at the exit of its rt_sigreturn
//! (leaders are followed syscall by syscall from their report; threads
//! run free until an `int3` right before it, then rcr steps them through);
//! rcr unmaps each bootstrap region from outside (one injected munmap per
//! process), puts the saved signal masks in place, and detaches them all.
use super::child::{BARRIER_GROUPED, BARRIER_MAGIC};
use super::{describe_blob_failure, Tree};
use crate::infect::{Stop, Tracee};
use crate::stats::Mark;
use crate::{log, proc};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::io::Read;

const NR_RT_SIGRETURN: u64 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Phase {
    /// Running rcr's code in the child (or the blob, before its report).
    Running,
    AtBarrier(u64),
    /// The blob reported success and waits at its `int3`.
    Reported,
    /// A zombie let go to die.
    Dying,
    Dead,
    /// Stepping through the last syscalls to rt_sigreturn.
    Returning,
    /// Stopped at the exit of rt_sigreturn, in its saved state.
    Returned,
}

#[derive(Debug)]
struct Task {
    proc_idx: usize,
    leader: bool,
    phase: Phase,
    in_sigreturn: bool,
}

/// Where each live process's bootstrap region is: (start, len, address
/// of the blob's `syscall` instruction).
pub type RegionSpan = (u64, u64, u64);

/// A planned page reader thread of a process: its TID and the address of
/// its `outcome` word (rcr_abi::PageReader) in the process.
pub type ReaderPlan = (i32, u64);

struct Supervisor<'a> {
    tree: &'a Tree,
    spans: &'a [Option<RegionSpan>],
    tasks: HashMap<i32, Task>,
    /// How many tasks are in each phase, leaders and threads apart: the
    /// stage checks after each event are lookups, not scans of the tree.
    counts: HashMap<(bool, Phase), usize>,
    tracees: HashMap<i32, Tracee>,
    err: std::fs::File,
    /// Planned page reader TIDs, and the process (index) of each.
    readers: HashMap<i32, usize>,
    /// Page readers that started and are not reaped yet.
    live_readers: std::collections::HashSet<i32>,
    reader_plans: &'a [Option<ReaderPlan>],
}

/// Drives the forked tree to its saved state and detaches it, calling
/// `before_release` once every task is back in its saved state, before
/// any runs. On error every process of the tree is killed.
pub fn run(tree: &Tree, spans: &[Option<RegionSpan>], reader_plans: &[Option<ReaderPlan>], root: Tracee, err: std::fs::File, before_release: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    let mut tasks = HashMap::new();
    for (i, p) in tree.procs.iter().enumerate() {
        for (k, &tid) in p.entry.threads.iter().enumerate() {
            tasks.insert(tid as i32, Task { proc_idx: i, leader: k == 0, phase: Phase::Running, in_sigreturn: false });
        }
        if p.live.is_none() {
            tasks.insert(p.pid(), Task { proc_idx: i, leader: true, phase: Phase::Running, in_sigreturn: false });
        }
    }
    let mut counts = HashMap::new();
    for t in tasks.values() {
        *counts.entry((t.leader, Phase::Running)).or_default() += 1;
    }
    let readers = reader_plans.iter().enumerate().filter_map(|(i, r)| Some((r.as_ref()?.0, i))).collect();
    let live_readers = Default::default();
    let mut s = Supervisor { tree, spans, tasks, counts, tracees: HashMap::new(), err, readers, live_readers, reader_plans };
    s.tracees.insert(root.pid(), root);
    let result = s.drive().and_then(|()| s.finish()).and_then(|()| before_release());
    if let Err(e) = result {
        let msg = s.child_error();
        kill_tree(tree);
        s.tracees.drain().for_each(|(_, mut t)| t.forget());
        return Err(if msg.is_empty() { e } else { e.context(msg) });
    }
    for (_, t) in s.tracees.drain() {
        t.detach()?;
    }
    let n = tree.procs.len();
    log::info(&format!("restored {n} processes, {} tasks", s.tasks.len()));
    Ok(())
}

/// Kills every process of the tree that rcr traces or forked, by PID, and
/// reaps every task rcr traces or forked, threads included.
pub fn kill_tree(tree: &Tree) {
    let me = std::process::id().to_string();
    for (i, p) in tree.procs.iter().enumerate() {
        let pid = p.pid();
        let ours = proc::status(pid).map(|st| st.get("TracerPid") == Some(&me) || (i == 0 && st.get("PPid") == Some(&me)));
        if ours.unwrap_or(false) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    reap_all(std::time::Duration::from_secs(5));
}

/// Reaps whatever ends among rcr's children and tracees until none is
/// left (or `limit` passed: a task rcr did not kill; PTRACE_O_EXITKILL
/// ends it with rcr). In the order they end, not pid by pid: the exit of
/// a killed leader is reported only once rcr reaped its traced threads,
/// so waiting for one pid first could wait forever.
fn reap_all(limit: std::time::Duration) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        match waitpid(None, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(std::time::Duration::from_millis(2)),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

impl Supervisor<'_> {
    fn drive(&mut self) -> Result<()> {
        while self.count_any(&[Phase::Returned, Phase::Dead]) < self.tasks.len() || !self.live_readers.is_empty() {
            let (tid, stop) = crate::infect::wait_any().context("waiting for the restored tree")?;
            if let Some(&pi) = self.readers.get(&tid) {
                self.reader_stop(tid, pi, stop)?;
                continue;
            }
            let Some(task) = self.tasks.get(&tid) else {
                bail!("task {tid}, which is not in the image set, appeared during the restore");
            };
            let (pi, leader, phase) = (task.proc_idx, task.leader, task.phase);
            match stop {
                Stop::Exited(_) | Stop::Killed(_) if phase == Phase::Dying => {
                    self.set(tid, Phase::Dead);
                    if let Some(mut t) = self.tracees.remove(&tid) {
                        t.forget();
                    }
                }
                Stop::Exited(c) => bail!("pid {} exited with status {c} during the restore", self.pid_of(tid)),
                Stop::Killed(s) => bail!("pid {} was killed by signal {s} during the restore", self.pid_of(tid)),
                Stop::Interrupt => self.born(tid, leader)?,
                Stop::Event(_) => self.tracee(tid)?.cont(0)?,
                Stop::Signal(libc::SIGTRAP) if leader && phase != Phase::Dying => self.trapped(tid, pi)?,
                Stop::Signal(libc::SIGTRAP) if !leader => self.thread_returns(tid)?,
                Stop::Signal(sig) if phase == Phase::Dying => self.tracee(tid)?.cont(sig)?,
                Stop::Signal(sig) => bail!("pid {} got signal {sig} during the restore", self.pid_of(tid)),
                Stop::Syscall => self.syscall_stop(tid)?,
            }
            // Every blob reported, every zombie is dead, every thread waits.
            let reported = self.count(true, Phase::Reported);
            if reported > 0 && reported + self.count(true, Phase::Dead) == self.leaders() {
                self.release()?;
            }
        }
        Ok(())
    }

    /// A task's first stop (auto-attached): it runs freely until its next
    /// `int3` (a leader's barrier or report, a thread's last stop).
    fn born(&mut self, tid: i32, _leader: bool) -> Result<()> {
        self.tracees.entry(tid).or_insert_with(|| Tracee::adopt(tid)).cont(0)
    }

    /// A stop of a page reader thread: its first stop (let it run), its
    /// exit (reaped by that wait); anything else fails the restore.
    fn reader_stop(&mut self, tid: i32, pi: usize, stop: Stop) -> Result<()> {
        let pid = self.tree.procs[pi].pid();
        match stop {
            Stop::Interrupt => {
                self.live_readers.insert(tid);
                self.tracees.entry(tid).or_insert_with(|| Tracee::adopt(tid)).cont(0)
            }
            Stop::Event(_) => self.tracee(tid)?.cont(0),
            Stop::Exited(0) => {
                self.live_readers.remove(&tid);
                if let Some(mut t) = self.tracees.remove(&tid) {
                    t.forget();
                }
                Ok(())
            }
            Stop::Exited(c) => bail!("pid {pid}: page reader thread {tid} exited with status {c} during the restore"),
            Stop::Killed(sig) => bail!("pid {pid}: page reader thread {tid} was killed by signal {sig} during the restore"),
            Stop::Signal(sig) => bail!("pid {pid}: page reader thread {tid} got signal {sig} during the restore"),
            Stop::Syscall => bail!("pid {pid}: page reader thread {tid} stopped at a syscall"),
        }
    }

    /// After a blob's report: logs whether its page reader thread ran
    /// (the blob wrote the TID or clone3's -errno to `outcome`).
    fn log_reader(&self, pi: usize) {
        let Some((tid, addr)) = self.reader_plans.get(pi).copied().flatten() else { return };
        let pid = self.tree.procs[pi].pid();
        let mut word = [0u8; 8];
        let outcome = crate::infect::read_memory(pid, addr, &mut word).map(|()| i64::from_ne_bytes(word));
        match outcome {
            Ok(t) if t > 0 => log::info(&format!("pid {pid}: pages read by the leader and page reader thread {t}")),
            Ok(e) if e < 0 => {
                let err = std::io::Error::from_raw_os_error(-e as i32);
                log::info(&format!("pid {pid}: no page reader thread (clone3 with tid {tid}: {err}); the leader read all pages"))
            }
            Ok(_) => log::info(&format!("pid {pid}: page reader thread {tid} not started; the leader read all pages")),
            Err(e) => log::debug(&format!("pid {pid}: page reader outcome unknown: {e:#}")),
        }
    }

    /// A thread at its `int3` right before rt_sigreturn: stepped through
    /// it (entry, exit) here, it stays stopped in its saved state.
    fn thread_returns(&mut self, tid: i32) -> Result<()> {
        let t = self.tracee(tid)?;
        let rax = t.get_regs()?.rax;
        if rax != rcr_abi::THREAD_RETURN_MAGIC {
            bail!("thread {tid} of pid {} stopped at an unexpected int3 (rax {rax:#x})", self.pid_of(tid));
        }
        t.step_syscall()?;
        if t.syscall_entry()? != Some(NR_RT_SIGRETURN) {
            bail!("thread {tid} of pid {}: expected rt_sigreturn after its last int3", self.pid_of(tid));
        }
        t.step_syscall()?;
        self.set(tid, Phase::Returned);
        Ok(())
    }

    /// An `int3` of a leader: a barrier, or its blob's report.
    fn trapped(&mut self, tid: i32, pi: usize) -> Result<()> {
        let regs = self.tracee(tid)?.get_regs()?;
        if regs.rax == BARRIER_MAGIC {
            self.set(tid, Phase::AtBarrier(regs.rdi));
            if self.count(true, Phase::AtBarrier(regs.rdi)) == self.leaders() {
                self.pass_barrier(regs.rdi)?;
            }
            return Ok(());
        }
        if regs.rax != 0 {
            let l = self.tree.procs[pi].live.as_ref().context("a zombie ran the blob")?;
            bail!("pid {tid}: {}", describe_blob_failure(l, regs.rdi, regs.rsi, regs.rax as i64));
        }
        self.set(tid, Phase::Reported);
        self.log_reader(pi);
        Ok(())
    }

    fn pass_barrier(&mut self, n: u64) -> Result<()> {
        log::debug(&format!("all {} processes at barrier {n}", self.tree.procs.len()));
        crate::stats::mark(if n == BARRIER_GROUPED { Mark::BlobsStart } else { Mark::Forked });
        let leaders: Vec<(i32, usize)> = self.tasks.iter().filter(|(_, t)| t.leader).map(|(&tid, t)| (tid, t.proc_idx)).collect();
        for (tid, pi) in leaders {
            let zombie = self.tree.procs[pi].live.is_none();
            self.set(tid, if zombie && n == BARRIER_GROUPED { Phase::Dying } else { Phase::Running });
            self.tracee(tid)?.cont(0)?;
        }
        Ok(())
    }

    /// Lets every leader go on to release its threads and rt_sigreturn,
    /// syscall by syscall.
    fn release(&mut self) -> Result<()> {
        log::debug("every blob reported; releasing the tree");
        crate::stats::mark(Mark::BlobsDone);
        let reported: Vec<i32> = self.tasks.iter().filter(|(_, t)| t.phase == Phase::Reported).map(|(&tid, _)| tid).collect();
        for tid in reported {
            self.set(tid, Phase::Returning);
            self.tracee(tid)?.cont_syscall(0)?;
        }
        Ok(())
    }

    /// Follows a task to the exit of its rt_sigreturn, and stops it there.
    fn syscall_stop(&mut self, tid: i32) -> Result<()> {
        let entry = self.tracee(tid)?.syscall_entry()?;
        let task = self.tasks.get_mut(&tid).context("unknown task")?;
        match entry {
            Some(nr) => task.in_sigreturn = nr == NR_RT_SIGRETURN,
            None if task.in_sigreturn => {
                self.set(tid, Phase::Returned);
                return Ok(());
            }
            None => {}
        }
        self.tracee(tid)?.cont_syscall(0)
    }

    /// Everything sits at the exit of its rt_sigreturn: check each task
    /// resumed where it was saved, unmap the bootstrap regions, set the
    /// saved masks; stopped processes get their SIGSTOP.
    fn finish(&mut self) -> Result<()> {
        for (i, p) in self.tree.procs.iter().enumerate() {
            let Some(l) = &p.live else { continue };
            let leader = self.tracee(p.pid())?;
            let span = self.spans.get(i).copied().flatten().context("no bootstrap region recorded")?;
            unmap_region(leader, l.core.regs.as_ref().map_or(0, |r| r.rip), span)?;
            leader.set_sigmask(l.core.blocked)?;
            for t in &l.core.threads {
                let tr = self.tracee(t.tid as i32)?;
                let rip = tr.get_regs()?.rip;
                let want = t.regs.as_ref().map_or(0, |r| r.rip);
                if rip != want {
                    bail!("thread {} of pid {}: after rt_sigreturn rip is {rip:#x}, expected {want:#x}", t.tid, p.pid());
                }
                tr.set_sigmask(t.blocked)?;
            }
            if p.stopped {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid()), nix::sys::signal::Signal::SIGSTOP)
                    .with_context(|| format!("stopping pid {} again", p.pid()))?;
            }
        }
        Ok(())
    }

    fn count(&self, leader: bool, phase: Phase) -> usize {
        self.counts.get(&(leader, phase)).copied().unwrap_or(0)
    }

    /// Tasks, leaders and threads, in any of `phases`.
    fn count_any(&self, phases: &[Phase]) -> usize {
        phases.iter().map(|&p| self.count(true, p) + self.count(false, p)).sum()
    }

    fn leaders(&self) -> usize {
        self.tree.procs.len()
    }

    fn set(&mut self, tid: i32, phase: Phase) {
        if let Some(t) = self.tasks.get_mut(&tid) {
            if let Some(n) = self.counts.get_mut(&(t.leader, t.phase)) {
                *n -= 1;
            }
            t.phase = phase;
            *self.counts.entry((t.leader, phase)).or_default() += 1;
        }
    }

    fn tracee(&self, tid: i32) -> Result<&Tracee> {
        self.tracees.get(&tid).with_context(|| format!("task {tid} is not traced"))
    }

    fn pid_of(&self, tid: i32) -> i32 {
        self.tasks.get(&tid).map_or(tid, |t| self.tree.procs[t.proc_idx].pid())
    }

    /// What failed children wrote on the error pipe.
    fn child_error(&mut self) -> String {
        let _ = crate::sys::set_status_flags(std::os::fd::AsRawFd::as_raw_fd(&self.err), libc::O_NONBLOCK);
        let mut s = String::new();
        let _ = self.err.read_to_string(&mut s);
        s
    }
}

/// From the exit of the leader's rt_sigreturn (its saved registers live):
/// checks it resumes at `want_rip`, runs munmap of the bootstrap region at
/// the blob's `syscall` instruction, and puts the registers back.
fn unmap_region(t: &Tracee, want_rip: u64, (start, len, insn): RegionSpan) -> Result<()> {
    let restored = t.get_regs()?;
    if restored.rip != want_rip {
        bail!("pid {}: after rt_sigreturn rip is {:#x}, expected {want_rip:#x}", t.pid(), restored.rip);
    }
    let mut r = restored;
    (r.rip, r.rax, r.orig_rax, r.rdi, r.rsi) = (insn, libc::SYS_munmap as u64, u64::MAX, start, len);
    t.set_regs(&r)?;
    t.step_syscall()?;
    t.step_syscall()?;
    let res = t.get_regs()?.rax as i64;
    if res != 0 {
        bail!("pid {}: unmapping the bootstrap region: {}", t.pid(), std::io::Error::from_raw_os_error(-res as i32));
    }
    t.set_regs(&restored)
}
