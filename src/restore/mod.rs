//! The restore pipeline: `rcr restore -D DIR`.
//!
//! Steps, each a function below:
//! 1. [`load`]: read and cross-check the images,
//! 2. [`validate`]: the PID is free, the files are unchanged, the vDSO and
//!    XSAVE layouts fit this machine — nothing is created before this,
//! 3. [`bootstrap::Region::build`]: place the restorer blob, its arguments
//!    and the sigframe in rcr's own memory, where the child will inherit it,
//! 4. [`fork_task`]: clone3 with the saved PID; the child ([`child`])
//!    rebuilds session, fs and fds, then jumps into the blob,
//! 5. [`supervise`]: trace the child through the blob, then unmap the
//!    bootstrap region from outside and detach,
//! 6. [`finish`]: write the pidfile; wait for the process unless `-d`.
//!
//! If anything fails after the fork, the child is killed (it is traced
//! with PTRACE_O_EXITKILL, so even rcr's death kills it): a failed restore
//! leaves no half-built process behind.

pub mod bootstrap;
pub mod child;

use crate::arch::cur as arch;
use crate::files::FileTable;
use crate::images::{pb, ImageDir, Kind, FORMAT_VERSION};
use crate::infect::{self, Stop, Tracee};
use crate::mm::restore::Plan;
use crate::{log, proc};
use anyhow::{bail, Context, Result};
use bootstrap::Region;
use rcr_abi::RestoreStep;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub detached: bool,
    pub pidfile: Option<PathBuf>,
}

/// The images of one process, loaded and cross-checked.
#[derive(Debug)]
pub struct Loaded {
    pub pstree: pb::PstreeEntry,
    pub core: pb::TaskCore,
    pub mm: pb::Mm,
    pub files: FileTable,
    pub fds: Vec<pb::FdEntry>,
    pub fs: pb::Fs,
    pub pages_path: PathBuf,
    pub plan: Plan,
}

/// Returns the exit code for rcr: the restored process's status unless
/// detached.
pub fn run(o: &Options) -> Result<i32> {
    let loaded = load(&o.dir)?;
    validate(&loaded)?;
    let mut busy = crate::mm::restore::occupied(&loaded.mm);
    busy.extend(proc::maps(std::process::id() as i32)?.iter().map(|m| (m.start, m.end)));
    let region = Region::build(&loaded.plan, &loaded.core, &mut busy, arch::xcr0())?;
    let (region_start, region_len, insn) = (region.start, region.len, region.syscall_insn());
    let tracee = fork_task(&loaded, region)?;
    supervise(&loaded, tracee, region_start, region_len, insn)?;
    finish(o, loaded.pstree.pid as i32)
}

fn load(path: &std::path::Path) -> Result<Loaded> {
    let dir = ImageDir::open(path)?;
    let inv: pb::Inventory = dir.read_one(Kind::Inventory, None)?;
    if inv.format_version != FORMAT_VERSION {
        bail!("inventory.img: format_version {} (this rcr reads {})", inv.format_version, FORMAT_VERSION);
    }
    if !inv.parent.is_empty() {
        bail!("inventory.img: parent {:?}: incremental image sets are not supported yet", inv.parent);
    }
    let tree: Vec<pb::PstreeEntry> = dir.read_all(Kind::Pstree, None)?;
    let pstree = match tree.as_slice() {
        [one] => one.clone(),
        _ => bail!("pstree.img: {} processes; this rcr restores exactly one", tree.len()),
    };
    if pstree.pid != inv.root_pid {
        bail!("pstree.img: pid {} does not match inventory.img root_pid {}", pstree.pid, inv.root_pid);
    }
    let pid = Some(pstree.pid);
    let core: pb::TaskCore = dir.read_one(Kind::Core, pid)?;
    if core.state != pb::TaskState::Alive as i32 {
        bail!("core-{}.img: task state {} is not one this rcr restores", pstree.pid, core.state);
    }
    let mm: pb::Mm = dir.read_one(Kind::Mm, pid)?;
    let pagemap: Vec<pb::PagemapEntry> = dir.read_all(Kind::Pagemap, pid)?;
    let files = FileTable::from_images(dir.read_all(Kind::Files, None)?);
    let fds = dir.read_all(Kind::Fdinfo, pid)?;
    let fs = dir.read_one(Kind::Fs, pid)?;
    let pages_path = dir.file(Kind::Pages, pid);
    check_pages_file(&pages_path, &pagemap)?;
    let self_maps = proc::maps(std::process::id() as i32)?;
    let plan = crate::mm::restore::plan(&mm, &pagemap, &files, &self_maps)?;
    Ok(Loaded { pstree, core, mm, files, fds, fs, pages_path, plan })
}

fn check_pages_file(path: &std::path::Path, pagemap: &[pb::PagemapEntry]) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = [0u8; 8];
    f.read_exact(&mut h).with_context(|| format!("{}: truncated header", path.display()))?;
    crate::images::check_header(path, h, Some(Kind::Pages))?;
    let pages: u64 = pagemap.iter().map(|p| u64::from(p.nr_pages)).sum();
    let need = crate::images::PAGES_DATA_OFFSET + pages * crate::images::PAGE_SIZE;
    let have = f.metadata()?.len();
    if have != need {
        bail!("{}: {} bytes, but the pagemap describes {}", path.display(), have, need);
    }
    Ok(())
}

fn validate(l: &Loaded) -> Result<()> {
    let pid = l.pstree.pid;
    if let Ok(st) = proc::stat(pid as i32) {
        bail!("pid {pid} is in use (by {:?}); rcr restores a process with its original pid", st.comm);
    }
    crate::files::restore::check_all(&l.files, &l.fds)?;
    if let Some(exe) = l.files.get(l.mm.exe_file_id) {
        crate::files::restore::check("exe link", exe, crate::files::restore::Content::MayChange)?;
    }
    arch::check_xsave_compatible(&l.core.xsave, host_xsave_size())?;
    Ok(())
}

/// Size of the XSAVE area this CPU uses for the enabled features
/// (CPUID leaf 0xD, sub-leaf 0, EBX).
fn host_xsave_size() -> usize {
    std::arch::x86_64::__cpuid_count(0xd, 0).ebx as usize
}

/// Forks the child with the saved PID and seizes it; the child runs
/// [`child::run`] and never returns here.
fn fork_task(l: &Loaded, region: Region) -> Result<Tracee> {
    let pid = l.pstree.pid as i32;
    let max_fd = l.fds.iter().map(|f| f.fd as i32).max().unwrap_or(2).max(2);
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    // The child's ends must not sit on an fd number it is about to restore.
    let go_child = crate::sys::dup_above(child::into_raw(go_r), max_fd + 1)?;
    let err_child = crate::sys::dup_above(child::into_raw(err_w), max_fd + 1)?;
    // SAFETY: rcr is single-threaded here (restore never spawns threads).
    #[allow(unsafe_code)]
    let forked = unsafe { crate::sys::clone3_with_pid(pid) };
    match forked {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => bail!("pid {pid} is in use; cannot restore with it"),
        Err(e) => return Err(e).with_context(|| format!("clone3 with pid {pid}")),
        Ok(0) => {
            drop(go_w);
            drop(err_r);
            child::run(l, region, child::Sync { go_read: go_child, err_write: err_child })
        }
        Ok(_) => {}
    }
    region.unmap();
    child::close(go_child);
    child::close(err_child);
    let tracee = Tracee::seize_child(pid);
    let tracee = match tracee {
        Ok(t) => t,
        Err(e) => {
            kill_child(pid);
            return Err(e);
        }
    };
    // Let the child go; then wait for it to fail or reach the blob.
    let mut go = std::fs::File::from(go_w);
    std::io::Write::write_all(&mut go, b"g").context("starting the restore child")?;
    drop(go);
    match wait_for_blob(&tracee) {
        Ok(()) => Ok(tracee),
        Err(e) => {
            let msg = child::read_error(child::into_raw(err_r));
            kill_child(pid);
            if msg.is_empty() {
                Err(e)
            } else {
                bail!("restoring pid {pid}: {msg}")
            }
        }
    }
}

fn kill_child(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
}

/// Waits until the child stops at the blob's `int3`.
fn wait_for_blob(t: &Tracee) -> Result<()> {
    loop {
        match infect::wait_stop(t.pid())? {
            Stop::Signal(libc::SIGTRAP) => return Ok(()),
            Stop::Signal(sig) => {
                // Signals are blocked in the child; a fault is fatal.
                bail!("restore child got signal {sig} before the restorer ran");
            }
            Stop::Exited(c) => bail!("restore child exited with status {c}"),
            Stop::Killed(s) => bail!("restore child was killed by signal {s}"),
            Stop::Interrupt | Stop::Syscall => {
                t.cont(0)?;
            }
        }
    }
}

/// Reads the blob's verdict, lets it rt_sigreturn, then removes the
/// bootstrap region with one injected munmap and detaches.
fn supervise(l: &Loaded, t: Tracee, region_start: u64, region_len: u64, insn: u64) -> Result<()> {
    let pid = t.pid();
    let result = (|| -> Result<()> {
        let r = t.get_regs()?;
        if r.rax != 0 {
            bail!("{}", describe_blob_failure(l, r.rdi, r.rsi, r.rax as i64));
        }
        t.step_syscall()?; // rt_sigreturn entry
        t.step_syscall()?; // rt_sigreturn exit: the saved registers are live
        let restored = t.get_regs()?;
        let want = l.core.regs.as_ref().map(|r| r.rip).unwrap_or(0);
        if restored.rip != want {
            bail!("after rt_sigreturn rip is {:#x}, expected {:#x}", restored.rip, want);
        }
        let mut r = restored;
        (r.rip, r.rax, r.orig_rax, r.rdi, r.rsi) = (insn, libc::SYS_munmap as u64, u64::MAX, region_start, region_len);
        t.set_regs(&r)?;
        t.step_syscall()?;
        t.step_syscall()?;
        let res = t.get_regs()?.rax as i64;
        if res != 0 {
            bail!("unmapping the bootstrap region: {}", std::io::Error::from_raw_os_error(-res as i32));
        }
        t.set_regs(&restored)?;
        // The sigframe kept every signal blocked, so none could stop the
        // steps above; the saved mask takes over now, as rcr lets go.
        t.set_sigmask(l.core.blocked)?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            t.detach()?;
            log::info(&format!("pid {pid} restored"));
            Ok(())
        }
        Err(e) => {
            drop(t);
            kill_child(pid);
            Err(e.context(format!("restoring pid {pid}")))
        }
    }
}

fn describe_blob_failure(l: &Loaded, step: u64, index: u64, rax: i64) -> String {
    let err = std::io::Error::from_raw_os_error((-rax) as i32);
    let step = RestoreStep::from_u64(step);
    let what = step.map(RestoreStep::describe).unwrap_or("an unknown step");
    let item = match step {
        Some(RestoreStep::MapVma | RestoreStep::Protect) => l
            .plan
            .vmas
            .get(index as usize)
            .map(|v| {
                let name = l.mm.vmas.iter().find(|m| m.start == v.start).map(|m| m.name.as_str()).unwrap_or("");
                format!(" {:#x}-{:#x} {}", v.start, v.start + v.len, name)
            })
            .unwrap_or_default(),
        Some(RestoreStep::ReadPages) => format!(" {index} (pagemap entry)"),
        _ => String::new(),
    };
    format!("restorer blob failed {what}{item}: {err}")
}

fn finish(o: &Options, pid: i32) -> Result<i32> {
    if let Some(p) = &o.pidfile {
        std::fs::write(p, format!("{pid}\n")).with_context(|| format!("writing pidfile {}", p.display()))?;
    }
    if o.detached {
        return Ok(0);
    }
    loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).with_context(|| format!("waiting for pid {pid}")),
        }
    }
}
