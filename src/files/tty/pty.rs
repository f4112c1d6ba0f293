//! Pseudo-terminals owned by the tree: master (/dev/ptmx) and slave
//! (/dev/pts/N) ends, the state of the pair, and the sessions they are
//! the controlling terminal of.
//!
//! Dump: an fd on /dev/ptmx is a master (one description per pty: every
//! open of /dev/ptmx makes a new pair); its entry carries the state of
//! the pair (termios, window size, packet mode, lock, the session and
//! foreground group, read through the master, which anyone may query). An
//! fd on /dev/pts/N is a slave description. Bytes queued in the pty are
//! refused, naming the pty and the count. Once the whole tree is dumped,
//! [`finish`] refuses a slave whose master is not in the tree (the
//! terminal of a shell job, for `-j`), and sessions whose controlling
//! terminal rcr could not give back as it was.
//!
//! Restore: [`create`] opens /dev/ptmx until the kernel hands out the
//! saved index, opens the slave descriptions through the master
//! (TIOCGPTPEER, so the lock does not matter) and sets the state. In the
//! restore child, the session leader makes the slave its controlling
//! terminal right after setsid, before it forks anyone
//! ([`take_controlling`], TIOCSCTTY on the master: the kernel applies it
//! to the slave), so its session inherits it; once every group exists it
//! sets the foreground group ([`set_foreground`]).
use crate::files::fds::{CreateCx, DumpCx, Fd, Images};
use crate::images::pb::{file_desc::Kind, FileDesc, Pty};
use crate::proc;
use crate::sys::{self, TtyGet, TtySet};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

/// What the dump saw of the ptys of the tree, checked by [`finish`].
#[derive(Debug, Default)]
pub struct Table {
    /// The master of each pty by index: who holds it, and its state.
    masters: BTreeMap<u32, (String, Pty)>,
    /// The first holder of a slave description of each pty, by index.
    slaves: BTreeMap<u32, String>,
}

pub fn dump(f: &Fd, cx: &mut DumpCx) -> Result<Kind> {
    let (major, minor) = (libc::major(f.md.rdev()), libc::minor(f.md.rdev()));
    match (major, minor) {
        (5, 2) => dump_master(f, cx),
        (5, 0) => Err(f.refuse("it is /dev/tty, the controlling terminal under its alias; rcr does not reopen /dev/tty (open the terminal by its own path)")),
        _ => dump_slave(f, cx, super::pts_index((major, minor))),
    }
}

fn dump_master(f: &Fd, cx: &mut DumpCx) -> Result<Kind> {
    let fd = f.file.as_raw_fd();
    let get = |what: TtyGet| sys::tty_get(fd, what).with_context(|| format!("{}: {what:?} ioctl", f.what()));
    let index = get(TtyGet::PtyIndex)? as u32;
    refuse_queued(f, index, "output written on the slave and not yet read from the master")?;
    let session = match sys::tty_get(fd, TtyGet::Session) {
        Ok(sid) => sid as u32,
        Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => 0,
        Err(e) => return Err(e).with_context(|| format!("{}: TIOCGSID", f.what())),
    };
    let foreground = if session != 0 { get(TtyGet::Foreground)?.max(0) as u32 } else { 0 };
    let pty = Pty {
        index,
        master: true,
        termios: Some(super::termios(f.file.as_fd()).with_context(|| f.what())?),
        winsize: Some(super::winsize(f.file.as_fd()).with_context(|| f.what())?),
        packet: get(TtyGet::Packet)? != 0,
        locked: get(TtyGet::Locked)? != 0,
        exclusive: get(TtyGet::Exclusive)? != 0,
        session,
        foreground,
    };
    cx.pty.masters.insert(index, (f.what(), pty.clone()));
    Ok(Kind::Pty(pty))
}

fn dump_slave(f: &Fd, cx: &mut DumpCx, index: u32) -> Result<Kind> {
    if f.link != format!("/dev/pts/{index}") {
        return Err(f.refuse(&format!("it is pty slave {index} of a devpts instance other than /dev/pts")));
    }
    refuse_queued(f, index, "input written on the master and not yet read from the slave")?;
    let exclusive = sys::tty_get(f.file.as_raw_fd(), TtyGet::Exclusive).with_context(|| format!("{}: TIOCGEXCL", f.what()))? != 0;
    cx.pty.slaves.entry(index).or_insert_with(|| f.what());
    Ok(Kind::Pty(Pty { index, master: false, exclusive, ..Pty::default() }))
}

/// Refuses a pty end with bytes waiting to be read on it (FIONREAD).
fn refuse_queued(f: &Fd, index: u32, what: &str) -> Result<()> {
    let n = sys::tty_get(f.file.as_raw_fd(), TtyGet::Queued).with_context(|| format!("{}: FIONREAD", f.what()))?;
    if n > 0 {
        return Err(f.refuse(&format!("pty /dev/pts/{index} has {n} bytes of {what} queued; rcr does not carry data queued in a terminal")));
    }
    Ok(())
}

/// Checks, once every process of `tree` was dumped, that each slave's
/// master is in the tree, and that the controlling terminals of the
/// sessions can be given back as they were.
pub fn finish(cx: &DumpCx, tree: &[i32]) -> Result<()> {
    let t = &cx.pty;
    if let Some((index, who)) = t.slaves.iter().find(|(i, _)| !t.masters.contains_key(i)) {
        bail!(
            "{who}: its master (/dev/ptmx of /dev/pts/{index}) is not held in the dumped tree; rcr cannot carry the terminal \
             (if it is the terminal the job runs in, dump with -j/--shell-job)"
        );
    }
    let stats: Vec<(i32, proc::Stat)> = tree.iter().filter_map(|&pid| proc::stat(pid).ok().map(|s| (pid, s))).filter(|(_, s)| s.state != 'Z').collect();
    for (who, p) in t.masters.values().filter(|(_, p)| p.session != 0) {
        check_session(who, p, &stats)?;
    }
    if cx.shell_job {
        return Ok(());
    }
    for (pid, st) in &stats {
        let ours = t.masters.values().any(|(_, p)| p.session == *pid as u32);
        if st.session == *pid && st.tty_nr != 0 && !ours {
            let (major, minor) = proc::decode_dev(st.tty_nr);
            bail!("pid {pid} leads session {pid}, whose controlling terminal ({major}:{minor}) is not a pty of the dumped tree; rcr cannot give it back");
        }
    }
    Ok(())
}

/// The session whose controlling terminal pty `p` is (its master held
/// by `who`) has its leader in the tree, every live member of it has that
/// terminal, and its foreground group is one of the tree's.
fn check_session(who: &str, p: &Pty, stats: &[(i32, proc::Stat)]) -> Result<()> {
    let (sid, tty) = (p.session as i32, format!("/dev/pts/{}", p.index));
    if !stats.iter().any(|(pid, st)| *pid == sid && st.session == sid) {
        bail!("{tty} (master {who}) is the controlling terminal of session {sid}, whose leader is not alive in the dumped tree; rcr cannot give it back");
    }
    for (pid, st) in stats.iter().filter(|(_, st)| st.session == sid) {
        if proc::decode_dev(st.tty_nr) != super::pts_dev(p.index) {
            bail!("pid {pid} is in session {sid}, whose controlling terminal is {tty}, but has not that terminal (tty_nr {}); rcr restores one controlling terminal per session", st.tty_nr);
        }
    }
    if p.foreground != 0 && !stats.iter().any(|(_, st)| st.session == sid && st.pgrp == p.foreground as i32) {
        bail!("{tty} (master {who}): its foreground process group {} has no live process in session {sid} of the dumped tree; rcr cannot make it the foreground again", p.foreground);
    }
    Ok(())
}

/// Creates every pty a description refers to: the master with its saved
/// index, the slave descriptions, and the state of the pair.
pub fn create(descs: &[&FileDesc], cx: &mut CreateCx) -> Result<()> {
    let mut masters: BTreeMap<u32, (&FileDesc, &Pty)> = BTreeMap::new();
    let mut slaves: HashMap<u32, Vec<&FileDesc>> = HashMap::new();
    for d in descs {
        let Some(Kind::Pty(p)) = &d.kind else { continue };
        if !p.master {
            slaves.entry(p.index).or_default().push(d);
        } else if let Some((other, _)) = masters.insert(p.index, (d, p)) {
            bail!("fds.img: descriptions {} and {} are both the master of pty {}", other.id, d.id, p.index);
        }
    }
    if let Some((index, s)) = slaves.iter().find(|(i, _)| !masters.contains_key(i)) {
        bail!("fds.img: description {} ({}) is a slave of pty {index}, whose master is not in fds.img", s[0].id, s[0].link);
    }
    // Ptys the kernel handed out below the index wanted, held until all
    // are made: it gives out the lowest free index.
    let mut spare = Vec::new();
    for (&index, &(d, p)) in &masters {
        let master = open_master(d, index, &mut spare)?;
        let what = || format!("fds.img: description {} ({}): pty /dev/pts/{index}", d.id, d.link);
        setup(p, &master, slaves.get(&index).map(Vec::as_slice).unwrap_or_default(), cx).with_context(what)?;
        cx.out.insert(d.id, master);
    }
    Ok(())
}

/// Opens /dev/ptmx until the kernel hands out pty `index`, keeping the
/// lower ones it hands out meanwhile in `spare`.
fn open_master(d: &FileDesc, index: u32, spare: &mut Vec<OwnedFd>) -> Result<OwnedFd> {
    let what = || format!("fds.img: description {} ({}): pty /dev/pts/{index}", d.id, d.link);
    if std::path::Path::new(&format!("/dev/pts/{index}")).exists() {
        bail!("{}: /dev/pts/{index} is in use; rcr restores a pty with its saved index", what());
    }
    let path = if d.link.starts_with('/') && d.link.ends_with("/ptmx") { d.link.as_str() } else { "/dev/ptmx" };
    let cpath = std::ffi::CString::new(path).with_context(what)?;
    let flags = (d.flags as i32 & libc::O_ACCMODE) | libc::O_NOCTTY | libc::O_CLOEXEC;
    loop {
        let fd = sys::open(&cpath, flags).with_context(|| format!("{}: opening {path}", what()))?;
        let got = sys::tty_get(fd.as_raw_fd(), TtyGet::PtyIndex).with_context(|| format!("{}: TIOCGPTN", what()))? as u32;
        match got.cmp(&index) {
            std::cmp::Ordering::Equal => return Ok(fd),
            std::cmp::Ordering::Less => spare.push(fd),
            std::cmp::Ordering::Greater => bail!("{}: the kernel handed out /dev/pts/{got}: index {index} is in use", what()),
        }
    }
}

/// Opens the slave descriptions `slaves` of the pty whose master is
/// `master`, then gives the pair its saved state `p`: line settings and
/// window size before packet mode (changing them in packet mode would
/// queue status bytes), the lock last.
fn setup(p: &Pty, master: &OwnedFd, slaves: &[&FileDesc], cx: &mut CreateCx) -> Result<()> {
    let m = master.as_raw_fd();
    sys::tty_set(m, TtySet::Locked, 0).context("unlocking (TIOCSPTLCK)")?;
    for s in slaves {
        // No O_CLOEXEC: TIOCGPTPEER would keep it in the file's flags,
        // where fdinfo shows it whatever the fd's own bit.
        let flags = (s.flags as i32 & libc::O_ACCMODE) | libc::O_NOCTTY;
        let fd = sys::pty_open_peer(m, flags).with_context(|| format!("opening slave description {} (TIOCGPTPEER)", s.id))?;
        if matches!(&s.kind, Some(Kind::Pty(q)) if q.exclusive) {
            sys::tty_set_exclusive(fd.as_raw_fd()).context("TIOCEXCL on the slave")?;
        }
        cx.out.insert(s.id, fd);
    }
    if let Some(t) = &p.termios {
        super::set_termios(master.as_fd(), t)?;
    }
    if let Some(w) = &p.winsize {
        super::set_winsize(master.as_fd(), w)?;
    }
    if p.packet {
        sys::tty_set(m, TtySet::Packet, 1).context("TIOCPKT")?;
    }
    if p.exclusive {
        sys::tty_set_exclusive(m).context("TIOCEXCL on the master")?;
    }
    if p.locked {
        sys::tty_set(m, TtySet::Locked, 1).context("locking (TIOCSPTLCK)")?;
    }
    Ok(())
}

/// The master of the pty that is the controlling terminal of session
/// `pid`, as the restore child inherited it from rcr (`created`), if any.
fn session_master(pid: i32, images: &Images, created: &HashMap<u32, RawFd>) -> Result<Option<(RawFd, Pty)>> {
    let found = images.descs.iter().find_map(|d| match &d.kind {
        Some(Kind::Pty(p)) if p.master && p.session == pid as u32 => Some((d.id, p)),
        _ => None,
    });
    let Some((id, p)) = found else { return Ok(None) };
    let fd = *created.get(&id).ok_or_else(|| anyhow!("pty /dev/pts/{}: description {id} was not created", p.index))?;
    Ok(Some((fd, p.clone())))
}

/// In the restore child of a session leader, right after setsid and
/// before it forks: makes its saved pty its controlling terminal, which
/// the processes it forks then inherit.
pub fn take_controlling(pid: i32, images: &Images, created: &HashMap<u32, RawFd>) -> Result<()> {
    if let Some((fd, p)) = session_master(pid, images, created)? {
        sys::tty_set_controlling(fd).with_context(|| format!("making /dev/pts/{} the controlling terminal (TIOCSCTTY)", p.index))?;
    }
    Ok(())
}

/// In the restore child of a session leader, once every group of the tree
/// exists: gives its controlling terminal the saved foreground group.
/// (Every signal is blocked, so a background caller gets no SIGTTOU.)
pub fn set_foreground(pid: i32, images: &Images, created: &HashMap<u32, RawFd>) -> Result<()> {
    match session_master(pid, images, created)? {
        Some((fd, p)) if p.foreground != 0 => sys::tty_set(fd, TtySet::Foreground, p.foreground as i32)
            .with_context(|| format!("making group {} the foreground of /dev/pts/{} (TIOCSPGRP)", p.foreground, p.index)),
        _ => Ok(()),
    }
}
