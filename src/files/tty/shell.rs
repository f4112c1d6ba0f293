//! The terminal of a shell job (`-j`): the controlling terminal of the
//! tree's session, which a shell outside the tree leads (its master held
//! by a terminal emulator such as tmux).
//!
//! Dump ([`find_job`], [`is_job_terminal`], [`dump`]): an fd on that
//! terminal is saved as a [`Terminal`] with the terminal's line settings
//! and window size; without `-j` it is refused, suggesting `-j`.
//!
//! Restore: the job goes onto the terminal `rcr restore -j` runs in (its
//! controlling terminal, in the foreground of its shell). [`create`]
//! opens it again for every saved description; the root, once in its
//! group, makes that group the foreground one and sets the saved line
//! settings ([`enter`], in the restore child, before anything of the job
//! runs); rcr ([`Foreground`]) ignores SIGTTOU and SIGTTIN, sends SIGWINCH
//! if the window size changed, and, while waiting for the job, hands the
//! terminal back as a shell would when the job stops or ends.
use super::{pts_index, set_termios, termios, winsize, PTS_MAJORS};
use crate::files::fds::{CreateCx, DumpCx, Fd, Images};
use crate::images::pb::{file_desc::Kind, FileDesc, PstreeEntry, Terminal};
use crate::tree::Kin;
use crate::{log, proc};
use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::sys::termios as nt;
use nix::unistd::Pid;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// The controlling terminal of a dumped tree's session that is outside
/// the tree: the job's terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// (major, minor) of the terminal device.
    dev: (u32, u32),
    sid: i32,
    /// The terminal's foreground process group at dump time.
    tpgid: i32,
}

/// The job's terminal of a frozen tree (root first): the root's
/// controlling terminal, if the root's session is outside the tree. A
/// tree that holds its session leader has no terminal outside it (its
/// terminal, if any, is a pty of its own or none): -j changes nothing.
pub fn find_job(tree: &[PstreeEntry]) -> Result<Option<Job>> {
    let Some(root) = tree.first() else { return Ok(None) };
    if tree.iter().any(|e| e.pid == root.sid) {
        return Ok(None);
    }
    let st = proc::stat(root.pid as i32)?;
    if st.tty_nr == 0 {
        return Ok(None);
    }
    Ok(Some(Job { dev: proc::decode_dev(st.tty_nr), sid: root.sid as i32, tpgid: st.tpgid }))
}

fn dev_of(md: &std::fs::Metadata) -> (u32, u32) {
    (libc::major(md.rdev()), libc::minor(md.rdev()))
}

/// "/dev/pts/N" for a pty slave, else "device MAJ:MIN".
fn dev_name((major, minor): (u32, u32)) -> String {
    match PTS_MAJORS.contains(&major) {
        true => format!("/dev/pts/{}", pts_index((major, minor))),
        false => format!("device {major}:{minor}"),
    }
}

/// Whether `f` is on the job's terminal. Without `-j` such an fd is
/// refused here, naming the terminal and suggesting `-j`.
pub fn is_job_terminal(f: &Fd, cx: &DumpCx) -> Result<bool> {
    let Some(job) = cx.job.filter(|j| j.dev == dev_of(&f.md)) else { return Ok(false) };
    if !cx.shell_job {
        bail!(
            "{}: it is {}, the controlling terminal of session {}, outside the dumped tree (a shell job); dump it with -j/--shell-job and restore it with -j in a terminal",
            f.what(),
            dev_name(job.dev),
            job.sid
        );
    }
    Ok(true)
}

/// Saves an fd on the job's terminal: the terminal's line settings and
/// window size, where it was, who had it.
pub fn dump(f: &Fd, cx: &mut DumpCx) -> Result<Kind> {
    let job = cx.job.with_context(|| format!("{}: not on the job's terminal", f.what()))?;
    let fd = f.file.as_fd();
    let termios = termios(fd).with_context(|| format!("{}: reading its line settings", f.what()))?;
    let winsize = winsize(fd).with_context(|| format!("{}: reading its window size", f.what()))?;
    Ok(Kind::Terminal(Terminal {
        termios: Some(termios),
        winsize: Some(winsize),
        index: pts_index(job.dev),
        sid: job.sid as u32,
        foreground_pgid: job.tpgid.max(0) as u32,
    }))
}

/// The first shell-job terminal description of an image set.
fn saved(images: &Images) -> Option<(&FileDesc, &Terminal)> {
    images.descs.iter().find_map(|d| match &d.kind {
        Some(Kind::Terminal(t)) => Some((d, t)),
        _ => None,
    })
}

/// Refuses, before anything is created, a shell job restored without -j.
pub fn check(images: &Images) -> Result<()> {
    match saved(images) {
        Some((d, _)) if !images.shell_job => {
            bail!("fds.img: description {} ({}): dumped as a shell job: restore with -j/--shell-job, from a shell in a terminal", d.id, d.link)
        }
        _ => Ok(()),
    }
}

/// Opens rcr's terminal once per saved description, with its access mode.
pub fn create(descs: &[&FileDesc], cx: &mut CreateCx) -> Result<()> {
    if descs.is_empty() {
        return Ok(());
    }
    let path = own_terminal()?;
    for d in descs {
        let what = || format!("fds.img: description {} ({}): opening rcr's terminal {path}", d.id, d.link);
        cx.out.insert(d.id, open(&path, d.flags as i32 & libc::O_ACCMODE).with_context(what)?);
    }
    Ok(())
}

fn open(path: &str, access: i32) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(path).context("terminal path")?;
    Ok(crate::sys::open(&c, access | libc::O_NOCTTY | libc::O_CLOEXEC)?)
}

/// The path of rcr's controlling terminal (/dev/pts/N, else /dev/tty),
/// or a refusal if it has none, or if its stdin is another terminal.
fn own_terminal() -> Result<String> {
    let st = proc::stat(std::process::id() as i32)?;
    if st.tty_nr == 0 {
        bail!("rcr restore -j: rcr has no controlling terminal; run it from a shell in the terminal the job is to use");
    }
    let dev = proc::decode_dev(st.tty_nr);
    let stdin = nix::sys::stat::fstat(std::io::stdin().as_fd()).ok();
    if let Some(s) = stdin.filter(|s| s.st_mode & libc::S_IFMT == libc::S_IFCHR && nix::unistd::isatty(std::io::stdin()).unwrap_or(false)) {
        let sdev = (libc::major(s.st_rdev), libc::minor(s.st_rdev));
        if sdev != dev {
            bail!("rcr restore -j: stdin is {}, but rcr's controlling terminal is {}; the job goes on the controlling terminal", dev_name(sdev), dev_name(dev));
        }
    }
    Ok(if PTS_MAJORS.contains(&dev.0) { dev_name(dev) } else { "/dev/tty".to_string() })
}

/// In the root's restore child, once it is in its group (signals all
/// blocked, so SIGTTOU does not stop it): a root leading its own group
/// makes it the terminal's foreground group; the saved line settings are
/// set. Nothing of the job runs before.
pub fn enter(images: &Images, kin: Kin) -> Result<()> {
    let Some((_, t)) = saved(images).filter(|_| images.shell_job) else { return Ok(()) };
    let tty = open(&own_terminal()?, libc::O_RDWR)?;
    if kin == Kin::NewGroup {
        nix::unistd::tcsetpgrp(&tty, nix::unistd::getpgrp()).context("making the job's group the terminal's foreground group (tcsetpgrp)")?;
    }
    if let Some(termios) = &t.termios {
        set_termios(tty.as_fd(), termios).context("setting the job's line settings on rcr's terminal")?;
    }
    Ok(())
}

/// rcr restoring a shell job on its own terminal: what it found there
/// before, to hand the terminal back.
#[derive(Debug)]
pub struct Foreground {
    tty: OwnedFd,
    own_pgrp: Pid,
    /// The line settings rcr found (its shell's, for running commands).
    original: nt::Termios,
    /// The job's own process group, made foreground (None: the job is
    /// in rcr's group).
    job_pgrp: Option<Pid>,
    saved: Terminal,
}

impl Foreground {
    /// With -j and a saved terminal: finds rcr's terminal (refusing if
    /// there is none, or if rcr is not in its foreground), and ignores
    /// SIGTTOU and SIGTTIN in rcr, which the job puts in the background.
    pub fn attach(images: &Images, root: &PstreeEntry, kin: Kin) -> Result<Option<Foreground>> {
        let Some((_, t)) = saved(images).filter(|_| images.shell_job) else { return Ok(None) };
        let path = own_terminal()?;
        let tty = open(&path, libc::O_RDWR)?;
        let own_pgrp = nix::unistd::getpgrp();
        let fg = nix::unistd::tcgetpgrp(&tty).with_context(|| format!("tcgetpgrp on {path}"))?;
        if fg != own_pgrp {
            bail!("rcr restore -j: rcr (process group {own_pgrp}) is not in the foreground of {path} (group {fg}); run it as a foreground command");
        }
        let original = nt::tcgetattr(&tty).with_context(|| format!("tcgetattr on {path}"))?;
        crate::sys::ignore_signal(Signal::SIGTTOU).context("ignoring SIGTTOU")?;
        crate::sys::ignore_signal(Signal::SIGTTIN).context("ignoring SIGTTIN")?;
        let job_pgrp = (kin == Kin::NewGroup).then_some(Pid::from_raw(root.pid as i32));
        log::info(&format!("shell job: restoring onto {path} (was /dev/pts/{}, session {})", t.index, t.sid));
        Ok(Some(Foreground { tty, own_pgrp, original, job_pgrp, saved: t.clone() }))
    }

    /// Once the job runs: SIGWINCH to its processes in the foreground
    /// group if the window size differs from the saved one (a curses
    /// program redraws), as the kernel sends it on a resize.
    pub fn after_restore(&self, tree: &[PstreeEntry]) {
        let Ok(now) = winsize(self.tty.as_fd()) else { return };
        if self.saved.winsize.as_ref().is_none_or(|w| *w == now) {
            return;
        }
        // The processes in the root's group: the foreground group now.
        for e in tree.iter().filter(|e| e.pgid == tree[0].pgid) {
            let pid = e.pid as i32;
            settle(pid);
            let _ = kill(Pid::from_raw(pid), Signal::SIGWINCH);
        }
        log::info(&format!("shell job: window size now {}x{}: SIGWINCH sent", now.col, now.row));
    }

    /// rcr takes the terminal back: into the foreground, with the line
    /// settings it found if `reset` (a job killed by a signal left its own).
    pub fn take_back(&self, reset: bool) {
        let _ = nix::unistd::tcsetpgrp(&self.tty, self.own_pgrp);
        if reset {
            let _ = nt::tcsetattr(&self.tty, nt::SetArg::TCSADRAIN, &self.original);
        }
    }

    /// The job stopped (Ctrl-Z): rcr takes the terminal back and stops
    /// itself, so its shell sees a stopped job; once continued (`fg`) it
    /// gives the terminal to the job again and continues it.
    pub fn job_stopped(&self) -> Result<()> {
        let Some(job) = self.job_pgrp else { return Ok(()) };
        let job_mode = nt::tcgetattr(&self.tty).ok();
        self.take_back(true);
        kill(Pid::this(), Signal::SIGSTOP).context("stopping rcr with its job")?;
        nix::unistd::tcsetpgrp(&self.tty, job).context("giving the terminal back to the job (tcsetpgrp)")?;
        if let Some(m) = job_mode {
            nt::tcsetattr(&self.tty, nt::SetArg::TCSADRAIN, &m).context("setting the job's line settings again")?;
        }
        kill(Pid::from_raw(-job.as_raw()), Signal::SIGCONT).context("continuing the job")
    }

    /// Whether rcr must watch for the job stopping (it has its own group).
    pub fn own_group(&self) -> bool {
        self.job_pgrp.is_some()
    }
}

/// Waits (at most a second) until `pid`, just detached, is no longer
/// runnable: back in the call it was dumped in (a terminal read, say), so
/// that a signal interrupts that call instead of arriving just before it
/// (a curses program would notice the resize only at its next key).
fn settle(pid: i32) {
    for _ in 0..100 {
        match proc::stat(pid) {
            Ok(st) if st.state == 'R' || st.state == 't' => std::thread::sleep(std::time::Duration::from_millis(10)),
            _ => return,
        }
    }
}
