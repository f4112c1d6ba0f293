//! The dump pipeline: `rcr dump -t PID -D DIR`.
//!
//! Steps, each a function below:
//! 1. [`preflight`]: the target exists and is something rcr can carry
//!    (checked again once frozen),
//! 2. [`freeze`]: seize and interrupt it (PTRACE_SEIZE + PTRACE_INTERRUPT),
//! 3. infect: inject the parasite ([`Parasite::infect`]),
//! 4. [`collect`]: registers, signals, memory layout, files, and what the
//!    parasite reads from inside — every refusal happens here, before
//!    anything is written,
//! 5. [`write_pages`]: the parasite drains the pages into the image,
//! 6. cure ([`Parasite::cure`]), then read the signals pending now, those
//!    that arrived during the dump included ([`pending_signals`]), and
//!    [`write_images`], the inventory last (a directory without an
//!    inventory is not an image set),
//! 7. [`finish`]: kill the target (default) or let it run (`-R`).
//!
//! Any error before step 7 drops the [`Parasite`] (which cures the task)
//! and the [`Tracee`] (which detaches): the target carries on as if
//! nothing happened. [`fault::point`]s mark where the tests kill rcr.
use crate::arch::cur as arch;
use crate::files::{self, FileTable};
use crate::images::pages::{PageFile, PageSink};
use crate::images::{pb, ImageDir, Kind, FORMAT_VERSION, PAGE_SIZE};
use crate::infect::parasite::{self, Parasite};
use crate::infect::Tracee;
use crate::mm::dump::{PageSource, ParasiteSource, ParasiteVia, ReadvSource};
use crate::{fault, log, mm, proc};
use anyhow::{bail, Context, Result};
use rcr_abi::parasite::{ITimerVal, TaskMisc};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Options {
    pub pid: i32,
    pub dir: PathBuf,
    pub leave_running: bool,
    pub pages_via: PagesVia,
}

/// How pages leave the target (`--pages-via`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PagesVia {
    /// The parasite writes them into the image file (the default).
    #[default]
    Write,
    /// The parasite vmsplices them into a pipe, rcr splices them on.
    Splice,
    /// rcr reads them from outside with process_vm_readv (fallback).
    Readv,
}

/// Everything read from the frozen task, ready to be written.
#[derive(Debug)]
struct Collected {
    pstree: pb::PstreeEntry,
    core: pb::TaskCore,
    mm: pb::Mm,
    files: FileTable,
    fds: Vec<pb::FdEntry>,
    fs: pb::Fs,
}

pub fn run(o: &Options) -> Result<()> {
    preflight(o.pid)?;
    let tracee = freeze(o.pid)?;
    fault::point("target seized");
    parasite::remove_leftovers(&tracee)?;
    let mut parasite = Parasite::infect(&tracee)?;
    let mut collected = collect(&tracee, &mut parasite)?;
    let dir = ImageDir::create(&o.dir)?;
    let written = write_pages(&tracee, &mut parasite, &dir, &collected, o.pages_via)
        .and_then(|pagemap| {
            parasite.cure()?;
            collected.core.pending = pending_signals(&tracee)?;
            write_images(&tracee, &dir, &collected, &pagemap)
        });
    if let Err(e) = written {
        remove_images(&dir, o.pid as u32);
        return Err(e);
    }
    fault::point("images written");
    finish(tracee, o.leave_running)
}

/// Removes what a failed dump wrote, so no partial image set is left.
fn remove_images(dir: &ImageDir, pid: u32) {
    for kind in Kind::ALL {
        let _ = std::fs::remove_file(dir.file(kind, Some(pid)));
    }
}

/// Refuses what this version cannot carry, naming the reason.
fn preflight(pid: i32) -> Result<()> {
    if pid <= 0 {
        bail!("invalid pid {pid}");
    }
    if pid == std::process::id() as i32 {
        bail!("pid {pid} is rcr itself");
    }
    let st = proc::stat(pid).with_context(|| format!("pid {pid} does not exist"))?;
    match st.state {
        'Z' => bail!("pid {pid} is a zombie"),
        'T' | 't' => bail!("pid {pid} is stopped or traced; rcr cannot dump stopped processes yet"),
        _ => {}
    }
    Ok(())
}

fn freeze(pid: i32) -> Result<Tracee> {
    let t = Tracee::seize(pid)?;
    log::info(&format!("pid {pid} seized and interrupted"));
    let threads = proc::threads(pid)?;
    if threads.len() != 1 {
        bail!("pid {pid} has {} threads ({:?}); rcr dumps single-threaded processes only for now", threads.len(), threads);
    }
    let children = proc::children(pid)?;
    if !children.is_empty() {
        bail!("pid {pid} has children {children:?}; rcr dumps single processes only for now");
    }
    Ok(t)
}

/// Credentials are not carried yet: the restored process gets rcr's. So
/// refuse a target whose credentials differ from rcr's own, naming them.
fn check_credentials(pid: i32, status: &HashMap<String, String>) -> Result<()> {
    let mine = proc::status(std::process::id() as i32)?;
    const KEYS: [&str; 10] = ["Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"];
    for key in KEYS {
        let (theirs, ours) = (status.get(key), mine.get(key));
        if theirs != ours {
            bail!(
                "pid {pid} has {key} {:?} but rcr runs with {:?}; rcr cannot carry credentials yet",
                theirs.map(String::as_str).unwrap_or("?"),
                ours.map(String::as_str).unwrap_or("?")
            );
        }
    }
    Ok(())
}

fn collect(t: &Tracee, p: &mut Parasite) -> Result<Collected> {
    let pid = t.pid();
    let st = proc::stat(pid)?;
    let status = proc::status(pid)?;
    check_credentials(pid, &status)?;
    let misc = p.misc()?;
    let mut core = collect_core(t, p.saved(), &st, &misc)?;
    core.sigactions = parasite::sigactions_to_pb(&p.sigactions()?);
    core.sig_ignored = core.sigactions.iter().filter(|a| a.handler == 1).fold(0, |m, a| m | 1u64 << (a.signo - 1));
    let [real, virt, prof] = p.itimers()?.try_into().map_err(|_| anyhow::anyhow!("itimers: wrong count"))?;
    (core.itimer_real, core.itimer_virtual, core.itimer_prof) = (itimer(real), itimer(virt), itimer(prof));
    let mut files = FileTable::default();
    let (region, region_len) = p.region();
    let mut maps = proc::smaps(pid)?;
    maps.retain(|m| m.end <= region || m.start >= region + region_len);
    let vmas = mm::dump::vmas(pid, &maps, &mut files)?;
    let exe = files::dump::describe(&proc::path(pid, "exe"), "exe link", None)?;
    let exe_id = files.add_shared(pb::RegFile { flags: libc::O_RDONLY as u32, ..exe });
    let brk = misc.brk;
    let mm = mm::dump::mm_fields(&st, brk, mm::dump::auxv(pid)?, exe_id, vmas);
    let fds = files::dump::dump_fds(pid, task_fds(p, pid)?, &mut files)?;
    let fs = files::dump::dump_fs(pid, &status)?;
    let pstree = pb::PstreeEntry {
        pid: pid as u32,
        ppid: st.ppid as u32,
        pgid: st.pgrp as u32,
        sid: st.session as u32,
        threads: vec![pid as u32],
    };
    Ok(Collected { pstree, core, mm, files, fds, fs })
}

fn collect_core(t: &Tracee, saved: &parasite::Saved, st: &proc::Stat, misc: &TaskMisc) -> Result<pb::TaskCore> {
    let pid = t.pid();
    if misc.pdeathsig != 0 {
        bail!("pid {pid} has a parent-death signal ({}); rcr cannot carry it (its parent changes on restore)", misc.pdeathsig);
    }
    let mut regs = arch::regs_to_pb(&saved.regs);
    let (sc, res) = arch::prepare_restart(&mut regs, arch::Resume::NewTask);
    if sc >= 0 {
        log::info(&format!("pid {pid} was in syscall {sc} (result {res}); registers set up to resume it"));
    }
    let (pointer, size, signature) = saved.rseq;
    let rseq = (size != 0).then_some(pb::Rseq { pointer, size, signature });
    Ok(pb::TaskCore {
        pid: pid as u32,
        state: pb::TaskState::Alive as i32,
        comm: st.comm.clone(),
        regs: Some(regs),
        xsave: saved.xsave.clone(),
        blocked: saved.sigmask,
        sig_ignored: 0,
        personality: misc.personality,
        interrupted_syscall: sc,
        interrupted_result: res,
        rseq,
        altstack: Some(pb::AltStack { sp: misc.altstack_sp, flags: misc.altstack_flags as u32, size: misc.altstack_size }),
        tid_address: misc.tid_address,
        dumpable: misc.dumpable,
        pdeathsig: misc.pdeathsig,
        child_subreaper: misc.child_subreaper != 0,
        thp_disable: misc.thp_disable != 0,
        timerslack_ns: misc.timerslack_ns,
        ..Default::default()
    })
}

/// The task's own fds (not the parasite's), each with a copy of its open
/// file passed back by the parasite.
fn task_fds(p: &mut Parasite, pid: i32) -> Result<Vec<(i32, std::fs::File)>> {
    let skip = p.task_fds();
    let fds: Vec<i32> = proc::fds(pid)?.into_iter().filter(|fd| !skip.contains(fd)).collect();
    let files = p.take_fds(&fds)?;
    Ok(fds.into_iter().zip(files.into_iter().map(std::fs::File::from)).collect())
}

fn itimer(v: ITimerVal) -> Option<pb::ITimer> {
    let us = |s: i64, u: i64| (s as u64) * 1_000_000 + u as u64;
    let t = pb::ITimer { interval_us: us(v.interval_sec, v.interval_usec), value_us: us(v.value_sec, v.value_usec) };
    (t.value_us != 0 || t.interval_us != 0).then_some(t)
}

/// Signals pending for the task once the parasite is gone (those that
/// arrived during the dump included), private then shared, as raw
/// siginfo. They are queued again in the restored process.
fn pending_signals(t: &Tracee) -> Result<Vec<pb::PendingSignal>> {
    let mut out = Vec::new();
    for shared in [false, true] {
        for info in t.peek_siginfo(shared)? {
            let signo = i32::from_le_bytes(info[..4].try_into().unwrap_or_default());
            out.push(pb::PendingSignal { signo: signo as u32, shared, siginfo: info });
        }
    }
    if !out.is_empty() {
        let list: Vec<String> = out.iter().map(|p| p.signo.to_string()).collect();
        log::info(&format!("pid {}: pending signals {}", t.pid(), list.join(",")));
    }
    Ok(out)
}

fn write_pages(t: &Tracee, p: &mut Parasite, dir: &ImageDir, c: &Collected, via: PagesVia) -> Result<Vec<pb::PagemapEntry>> {
    let mut sink = Box::new(PageFile::create(dir, t.pid() as u32)?);
    let mut readv = ReadvSource { pid: t.pid() };
    let mut through_parasite;
    let source: &mut dyn PageSource = match via {
        PagesVia::Readv => &mut readv,
        PagesVia::Write => {
            through_parasite = ParasiteSource::new(p, ParasiteVia::Write);
            &mut through_parasite
        }
        PagesVia::Splice => {
            through_parasite = ParasiteSource::new(p, ParasiteVia::Splice);
            &mut through_parasite
        }
    };
    let how = source.describe();
    let saved = mm::dump::dump_pages(t.pid(), &c.mm.vmas, source, sink.as_mut())?;
    let pagemap = (sink as Box<dyn PageSink>).finish()?;
    log::info(&format!("pid {}: {} pages saved in {} runs via {how}", t.pid(), saved, pagemap.len()));
    Ok(pagemap)
}

fn write_images(t: &Tracee, dir: &ImageDir, c: &Collected, pagemap: &[pb::PagemapEntry]) -> Result<()> {
    let pid = Some(t.pid() as u32);
    dir.write_all(Kind::Pagemap, pid, pagemap)?;
    dir.write_one(Kind::Core, pid, &c.core)?;
    dir.write_one(Kind::Mm, pid, &c.mm)?;
    dir.write_all(Kind::Fdinfo, pid, &c.fds)?;
    dir.write_one(Kind::Fs, pid, &c.fs)?;
    dir.write_all(Kind::Files, None, &c.files.files)?;
    dir.write_one(Kind::Pstree, None, &c.pstree)?;
    let inv = pb::Inventory {
        format_version: FORMAT_VERSION,
        root_pid: t.pid() as u32,
        parent: String::new(),
        kernel_release: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
        dump_time_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        rcr_version: env!("CARGO_PKG_VERSION").to_string(),
        page_size: PAGE_SIZE as u32,
        xsave_size: c.core.xsave.len() as u32,
        xcr0: arch::xcr0(),
    };
    dir.write_one(Kind::Inventory, None, &inv)
}

fn finish(t: Tracee, leave_running: bool) -> Result<()> {
    let pid = t.pid();
    if leave_running {
        t.detach()?;
        log::info(&format!("pid {pid} dumped and left running"));
    } else {
        t.kill()?;
        log::info(&format!("pid {pid} dumped and killed"));
    }
    Ok(())
}
