//! The dump pipeline: `rcr dump -t PID -D DIR`.
//!
//! Steps, each a function below:
//! 1. [`preflight`]: the target exists and is something rcr can carry
//!    (checked again once frozen),
//! 2. [`freeze`]: seize and interrupt it (PTRACE_SEIZE + PTRACE_INTERRUPT),
//! 3. [`collect`]: registers, signals, memory layout, files — every refusal
//!    happens here, before anything is written,
//! 4. [`write_images`]: pages first, the inventory last (a directory without
//!    an inventory is not an image set),
//! 5. [`finish`]: kill the target (default) or let it run (`-R`).
//!
//! Any error before step 5 drops the [`Tracee`], which detaches: the
//! target carries on as if nothing happened.
use crate::arch::cur as arch;
use crate::files::{self, FileTable};
use crate::images::pages::{PageFile, PageSink};
use crate::images::{pb, ImageDir, Kind, FORMAT_VERSION, PAGE_SIZE};
use crate::infect::Tracee;
use crate::{log, mm, proc};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Options {
    pub pid: i32,
    pub dir: PathBuf,
    pub leave_running: bool,
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
    let collected = collect(&tracee)?;
    let dir = ImageDir::create(&o.dir)?;
    if let Err(e) = write_images(&tracee, &dir, &collected) {
        remove_images(&dir, o.pid as u32);
        return Err(e);
    }
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

fn collect(t: &Tracee) -> Result<Collected> {
    let pid = t.pid();
    let st = proc::stat(pid)?;
    let status = proc::status(pid)?;
    check_credentials(pid, &status)?;
    let core = collect_core(t, &st, &status)?;
    let mut files = FileTable::default();
    let maps = proc::smaps(pid)?;
    let vmas = mm::dump::vmas(pid, &maps, &mut files)?;
    let exe = files::dump::describe(&proc::path(pid, "exe"), "exe link")?;
    let exe_id = files.add_shared(pb::RegFile { flags: libc::O_RDONLY as u32, ..exe });
    let brk = remote_brk(t, &vmas)?;
    let mm = mm::dump::mm_fields(&st, brk, mm::dump::auxv(pid)?, exe_id, vmas);
    let fds = files::dump::dump_fds(pid, &mut files)?;
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

fn signal_list(mask: u64) -> String {
    (1..=64).filter(|s| mask & (1u64 << (s - 1)) != 0).map(|s| s.to_string()).collect::<Vec<_>>().join(",")
}

fn collect_core(t: &Tracee, st: &proc::Stat, status: &HashMap<String, String>) -> Result<pb::TaskCore> {
    let pid = t.pid();
    let caught = proc::status_hex(status, "SigCgt")?;
    if caught != 0 {
        bail!("pid {pid} has handlers for signals {}; rcr cannot carry signal handlers yet", signal_list(caught));
    }
    let mut regs = arch::regs_to_pb(&t.get_regs()?);
    let (sc, res) = arch::prepare_restart(&mut regs);
    if sc >= 0 {
        log::info(&format!("pid {pid} was in syscall {sc} (result {res}); registers set up to resume it"));
    }
    let pers = proc::read_string(pid, "personality")?;
    let (pointer, size, signature) = t.get_rseq()?;
    let rseq = (size != 0).then_some(pb::Rseq { pointer, size, signature });
    Ok(pb::TaskCore {
        pid: pid as u32,
        state: pb::TaskState::Alive as i32,
        comm: st.comm.clone(),
        regs: Some(regs),
        xsave: t.get_xsave()?,
        blocked: t.get_sigmask()?,
        sig_ignored: proc::status_hex(status, "SigIgn")?,
        personality: u32::from_str_radix(pers.trim(), 16).context("parsing personality")?,
        interrupted_syscall: sc,
        interrupted_result: res,
        rseq,
    })
}

/// The current program break, which /proc does not show: brk(0) run
/// inside the task, through a `syscall` instruction of its vDSO.
fn remote_brk(t: &Tracee, vmas: &[pb::Vma]) -> Result<u64> {
    let vdso = vmas
        .iter()
        .find(|v| v.kind == pb::VmaKind::VmaVdso as i32)
        .with_context(|| format!("pid {} has no [vdso]; cannot run syscalls in it", t.pid()))?;
    let mut code = vec![0u8; (vdso.end - vdso.start) as usize];
    crate::infect::read_memory(t.pid(), vdso.start, &mut code)?;
    let off = code.windows(2).position(|w| w == [0x0f, 0x05]).context("no syscall instruction in [vdso]")?;
    let r = t.remote_syscall(vdso.start + off as u64, arch::NR_BRK, [0; 6])?;
    if r < 0 {
        bail!("brk(0) in pid {} failed: {}", t.pid(), std::io::Error::from_raw_os_error(-r as i32));
    }
    Ok(r as u64)
}

fn write_images(t: &Tracee, dir: &ImageDir, c: &Collected) -> Result<()> {
    let pid = Some(t.pid() as u32);
    let mut sink = Box::new(PageFile::create(dir, t.pid() as u32)?);
    let saved = mm::dump::dump_pages(t.pid(), &c.mm.vmas, sink.as_mut())?;
    let pagemap = (sink as Box<dyn PageSink>).finish()?;
    log::info(&format!("pid {}: {} pages saved in {} runs (process_vm_readv path)", t.pid(), saved, pagemap.len()));
    dir.write_all(Kind::Pagemap, pid, &pagemap)?;
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
