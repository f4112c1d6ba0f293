//! Freezing a tree for a dump: seize and interrupt every thread of every
//! process, top down, so that nothing in the tree runs (or forks, or
//! spawns threads) while any of it is read.
//!
//! A process is frozen once a listing of its threads finds none that is
//! not seized yet (a thread created meanwhile shows up in the next
//! listing). Its children are listed only then, when no thread of it can
//! fork any more; they are frozen in turn.
use super::Scope;
use crate::images::pb::PstreeEntry;
use crate::infect::Tracee;
use crate::{log, proc};
use anyhow::{bail, Context, Result};
use std::collections::{HashSet, VecDeque};

/// How a process was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Alive,
    /// In a job-control stop (SIGSTOP, SIGTSTP...): restored stopped.
    Stopped,
    /// Exited, not yet reaped by its parent; the wait status.
    Zombie(i32),
}

/// One process of a frozen tree.
#[derive(Debug)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub state: State,
    /// Every thread, seized and interrupted; the leader first. Empty for
    /// a zombie.
    pub threads: Vec<Tracee>,
}

impl Process {
    pub fn pstree(&self) -> PstreeEntry {
        PstreeEntry {
            pid: self.pid as u32,
            ppid: self.ppid as u32,
            pgid: self.pgid as u32,
            sid: self.sid as u32,
            threads: self.threads.iter().map(|t| t.pid() as u32).collect(),
        }
    }

    pub fn leader(&self) -> Option<&Tracee> {
        self.threads.first()
    }
}

/// A frozen tree: the root first, every parent before its children.
/// Dropping it detaches every thread: the tree runs on as before.
#[derive(Debug)]
pub struct Frozen {
    pub procs: Vec<Process>,
}

/// Seizes `root` and, with [`Scope::Tree`], all its descendants.
pub fn freeze(root: i32, scope: Scope) -> Result<Frozen> {
    let mut frozen = Frozen { procs: Vec::new() };
    let mut queue = VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        let p = freeze_process(pid)?;
        if scope == Scope::Tree && !p.threads.is_empty() {
            queue.extend(proc::children(pid).with_context(|| format!("listing the children of pid {pid}"))?);
        } else if scope == Scope::Process {
            let kids = proc::children(pid).unwrap_or_default();
            if !kids.is_empty() {
                log::info(&format!("pid {pid}: children {kids:?} left out (--scope process)"));
            }
        }
        frozen.procs.push(p);
    }
    let threads: usize = frozen.procs.iter().map(|p| p.threads.len()).sum();
    log::info(&format!("froze {} processes, {threads} threads", frozen.procs.len()));
    Ok(frozen)
}

fn freeze_process(pid: i32) -> Result<Process> {
    let st = proc::stat(pid).with_context(|| format!("pid {pid} does not exist"))?;
    let state = match st.state {
        'Z' if proc::threads(pid).map(|t| t.len()).unwrap_or(1) > 1 => {
            bail!("pid {pid}: its main thread exited but other threads run on; rcr cannot dump such a process")
        }
        'Z' => State::Zombie(st.exit_code),
        'T' => State::Stopped,
        't' => bail!("pid {pid} is being traced by another process (TracerPid in /proc/{pid}/status)"),
        'X' => bail!("pid {pid} is exiting"),
        _ => State::Alive,
    };
    let threads = if matches!(state, State::Zombie(_)) { Vec::new() } else { seize_threads(pid)? };
    if let State::Zombie(status) = state {
        log::debug(&format!("pid {pid} is a zombie (wait status {status:#x})"));
    }
    Ok(Process { pid, ppid: st.ppid, pgid: st.pgrp, sid: st.session, state, threads })
}

/// Seizes every thread of `pid` until a listing finds no new one.
fn seize_threads(pid: i32) -> Result<Vec<Tracee>> {
    let mut seized: Vec<Tracee> = Vec::new();
    let mut seen = HashSet::new();
    loop {
        let tids = proc::threads(pid).with_context(|| format!("listing the threads of pid {pid}"))?;
        let mut new: Vec<i32> = tids.into_iter().filter(|t| !seen.contains(t)).collect();
        if new.is_empty() {
            break;
        }
        new.sort_by_key(|&t| (t != pid, t)); // the leader first
        for tid in new {
            seen.insert(tid);
            match Tracee::seize(tid) {
                Ok(t) => seized.push(t),
                // A thread that exited between the listing and the seize.
                Err(_) if !proc::path(pid, &format!("task/{tid}")).exists() => {}
                Err(e) => return Err(e).with_context(|| format!("freezing thread {tid} of pid {pid}")),
            }
        }
    }
    if seized.first().map(Tracee::pid) != Some(pid) {
        bail!("pid {pid}: could not seize its main thread");
    }
    Ok(seized)
}

impl Frozen {
    /// Kills every process (SIGKILL to each, all at once), then waits
    /// until every thread is gone from rcr's view.
    pub fn kill(self) -> Result<()> {
        for p in &self.procs {
            if !p.threads.is_empty() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        for p in self.procs {
            for t in p.threads.into_iter().rev() {
                t.reap_killed();
            }
        }
        Ok(())
    }

    /// Lets every process go; a stopped one gets SIGSTOP first, so it
    /// stops again as soon as it is detached.
    pub fn resume(self) -> Result<()> {
        for p in &self.procs {
            if p.state == State::Stopped {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), nix::sys::signal::Signal::SIGSTOP)
                    .with_context(|| format!("stopping pid {} again", p.pid))?;
            }
        }
        let mut first_err = None;
        for p in self.procs {
            for t in p.threads {
                if let Err(e) = t.detach() {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
