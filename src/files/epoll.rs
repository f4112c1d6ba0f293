//! epoll instances and their registrations.
//!
//! Dump: every fdinfo line `tfd: N events: X data: Y ... ino: I sdev: D`
//! is one registration. The kernel keys a registration by (file, fd
//! number): it must be made again by a process that holds both the epoll
//! and the registered file at fd N. [`finish`] picks, for each
//! registration, the first process of the tree (in tree order) holding the
//! epoll whose fd N is the registered file, checked with kcmp
//! KCMP_EPOLL_TFD against rcr's copy of the epoll; if no such process
//! exists (the fd was closed or moved after the registration, while the
//! file stayed open elsewhere), the dump is refused.
//!
//! Restore: rcr creates the (empty) epolls before forking the tree; each
//! process, once its fds are at their numbers ([`after_fds`]), makes the
//! registrations it was picked for with epoll_ctl(EPOLL_CTL_ADD) and the
//! saved events and data. Readiness is recomputed by the kernel. A
//! EPOLLONESHOT registration that already fired (its events hold no event
//! bit any more) is added with the events its file reports now and fired
//! once with epoll_wait, which leaves it disabled as it was; if its file
//! reports nothing, it is added with its saved bits, and the kernel adds
//! EPOLLERR|EPOLLHUP (it then reports only an error or a hang-up). Each
//! process adds its fired oneshots before anything else, so that
//! epoll_wait sees only them; if another process registers in the same
//! epoll at that very moment, an edge-triggered item of its own that is
//! ready could be consumed by that epoll_wait (a known narrow race).
use super::fds::{CreateCx, DumpCx, Fd, Images};
use crate::images::pb::{file_desc::Kind, Epoll, EpollTarget, FdEntry, FileDesc};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;

/// Bits epoll keeps on a EPOLLONESHOT registration after it fired.
const PRIVATE_BITS: u32 = (libc::EPOLLWAKEUP | libc::EPOLLONESHOT | libc::EPOLLET | libc::EPOLLEXCLUSIVE) as u32;

/// rcr's copy of each epoll, in the order their descriptions were added.
#[derive(Debug, Default)]
pub struct Table {
    held: Vec<(String, File)>,
}

/// One `tfd:` line of an epoll's fdinfo.
fn parse_target(line: &str) -> Option<EpollTarget> {
    let mut t = EpollTarget::default();
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        let hex = |v: Option<&str>| v.and_then(|v| u64::from_str_radix(v, 16).ok());
        match w {
            "tfd:" => t.tfd = words.next()?.parse().ok()?,
            "events:" => t.events = hex(words.next())? as u32,
            "data:" => t.data = hex(words.next())?,
            w if w.starts_with("ino:") => t.ino = hex(w.strip_prefix("ino:"))?,
            w if w.starts_with("sdev:") => t.sdev = hex(w.strip_prefix("sdev:"))? as u32,
            _ => {}
        }
    }
    Some(t)
}

/// Dump side: the registrations (their process is picked in [`finish`]).
pub fn dump(f: &Fd, cx: &mut DumpCx) -> Result<Kind> {
    let mut targets = Vec::new();
    for line in f.info.text.lines().filter(|l| l.starts_with("tfd:")) {
        targets.push(parse_target(line).ok_or_else(|| f.refuse(&format!("unreadable fdinfo line {line:?}")))?);
    }
    let copy = f.file.try_clone().with_context(|| format!("{}: dup", f.what()))?;
    cx.epoll.held.push((f.what(), copy));
    Ok(Kind::Epoll(Epoll { targets }))
}

/// The fds of `pid` that refer to the epoll rcr holds as `epfd`.
fn holds(pid: i32, epfd: i32) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir(crate::proc::path(pid, "fd")) else { return Vec::new() };
    let mut fds: Vec<i32> = dir
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[eventpoll]"))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| crate::sys::kcmp(pid, me, crate::sys::KCMP_FILE, fd as u64, epfd as u64).is_ok_and(|r| r == 0))
        .collect();
    fds.sort_unstable();
    fds
}

/// Once every process was dumped (`tree`: PIDs in tree order): picks the
/// process that registers each target again, or refuses.
pub fn finish(cx: &mut DumpCx, tree: &[i32]) -> Result<()> {
    let mut held = cx.epoll.held.iter();
    for d in cx.descs.iter_mut() {
        let Some(Kind::Epoll(ep)) = &mut d.kind else { continue };
        let (what, file) = held.next().ok_or_else(|| anyhow!("epoll {}: rcr's copy is missing", d.link))?;
        let holders: Vec<i32> = tree.iter().copied().filter(|&p| !holds(p, file.as_raw_fd()).is_empty()).collect();
        for i in 0..ep.targets.len() {
            let toff = ep.targets[..i].iter().filter(|t| t.tfd == ep.targets[i].tfd).count() as u32;
            let t = &mut ep.targets[i];
            let found = holders.iter().copied().find(|&p| crate::sys::kcmp_epoll_tfd(p, t.tfd as i32, file.as_raw_fd(), t.tfd, toff).unwrap_or(false));
            let Some(pid) = found else {
                bail!(
                    "{what}: it watches fd {} (inode {:#x} on device {:#x}), but no process of the tree holding this epoll has that file \
                     at fd {} any more (closed or moved after the registration); rcr cannot register it again",
                    t.tfd,
                    t.ino,
                    t.sdev,
                    t.tfd
                );
            };
            t.pid = pid as u32;
        }
    }
    Ok(())
}

/// Restore side: empty epoll instances.
pub fn create(descs: &[&FileDesc], cx: &mut CreateCx) -> Result<()> {
    for d in descs {
        let fd = crate::sys::epoll_create().with_context(|| format!("fds.img: description {} ({}): epoll_create1", d.id, d.link))?;
        cx.out.insert(d.id, fd);
    }
    Ok(())
}

/// In a restore child, once its fds are in place: makes the registrations
/// this process was picked for, the fired oneshot ones first.
pub fn after_fds(pid: i32, fds: &[FdEntry], images: &Images) -> Result<()> {
    let mut mine = Vec::new();
    for e in fds {
        let Some(Kind::Epoll(ep)) = images.get(e.desc_id).and_then(|d| d.kind.as_ref()) else { continue };
        if mine.iter().any(|&(_, id, _)| id == e.desc_id) {
            continue;
        }
        mine.extend(ep.targets.iter().filter(|t| t.pid as i32 == pid).map(|t| (e.fd as i32, e.desc_id, t)));
    }
    let fired = |t: &EpollTarget| t.events & !PRIVATE_BITS == 0;
    for &(epfd, id, t) in mine.iter().filter(|(_, _, t)| fired(t)) {
        add_fired(epfd, t).with_context(|| format!("fd {epfd} (epoll, description {id}): registering fd {} (a oneshot that fired)", t.tfd))?;
    }
    for &(epfd, id, t) in mine.iter().filter(|(_, _, t)| !fired(t)) {
        crate::sys::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, t.tfd as i32, t.events, t.data)
            .with_context(|| format!("fd {epfd} (epoll, description {id}): EPOLL_CTL_ADD fd {} events {:#x}", t.tfd, t.events))?;
    }
    Ok(())
}

/// Adds a oneshot registration that had fired, and fires it again if its
/// file reports anything now, which disables it as it was.
fn add_fired(epfd: i32, t: &EpollTarget) -> Result<()> {
    let now = crate::sys::poll_now(t.tfd as i32).context("poll")? & !(libc::POLLNVAL as u32);
    crate::sys::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, t.tfd as i32, t.events | now, t.data).context("EPOLL_CTL_ADD")?;
    if now != 0 {
        let got = crate::sys::epoll_wait_now(epfd, 64).context("epoll_wait")?;
        if !got.iter().any(|&(_, data)| data == t.data) {
            bail!("epoll_wait did not report it (got {got:?})");
        }
    }
    Ok(())
}
