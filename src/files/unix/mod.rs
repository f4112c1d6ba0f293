//! Sockets. Unix domain sockets (stream, datagram, seqpacket) are carried;
//! every other family is refused at dump, naming it.
//!
//! Dump: each socket is described from rcr's copy of the task's open file
//! (getsockname/getpeername, getsockopt) and from sock_diag ([`diag`]:
//! peer inode, pending connections, backlog, shutdown state, bound file).
//! Its receive queue is read without consuming it: rcr sets the socket's
//! SO_PEEK_OFF to 0, peeks message after message (each peek moves the
//! offset on), then puts the task's own SO_PEEK_OFF back, so a process left
//! running (`-R`) reads the same bytes it would have. Queued file
//! descriptors (SCM_RIGHTS) and credentials (SO_PASSCRED with data queued)
//! are refused. Once the whole tree is dumped ([`finish`]), every peer must
//! be a socket of the tree, except, with `--ext-unix-sk`, the peer of a
//! connected datagram socket that has a name (restore connects to it
//! again). A stream or seqpacket socket whose peer is outside the tree is
//! refused even then: the other end cannot be reconnected to a running
//! process (CRIU hands such sockets over with --inherit-fd, which rcr does
//! not have).
//!
//! Restore: [`restore::create`] rebuilds the sockets in rcr before the
//! tree is forked (see its comment for the order).
mod diag;
mod restore;

use super::fds::{DumpCx, Fd};
use crate::images::pb::{file_desc::Kind, BoundFile, UnixMessage, UnixSocket};
use crate::sys;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

pub use restore::create;

/// sk_state values sock_diag reports.
pub const ESTABLISHED: u32 = 1;
pub const LISTEN: u32 = 10;
/// Refuse queues larger than this (bytes per socket).
const MAX_QUEUE: usize = 64 << 20;

/// What the dump of a tree records about unix sockets.
#[derive(Debug, Default)]
pub struct Table {
    /// `--ext-unix-sk`: datagram peers outside the tree are allowed.
    pub ext: bool,
    /// sock_diag's view of every unix socket, read at the first socket.
    diag: Option<HashMap<u64, diag::Diag>>,
    /// Every socket dumped, with "pid P fd N (socket:[I])" and what
    /// sock_diag said, for the tree-wide checks.
    socks: Vec<(UnixSocket, String, diag::Diag)>,
}

/// Dump side of one socket (seen for the first time).
pub fn dump(f: &Fd, cx: &mut DumpCx) -> Result<Kind> {
    let fd = f.file.as_raw_fd();
    let opt = |o| sys::getsockopt_int(fd, libc::SOL_SOCKET, o).with_context(|| format!("{}: getsockopt {o}", f.what()));
    let (family, ty, proto) = (opt(libc::SO_DOMAIN)?, opt(libc::SO_TYPE)?, opt(libc::SO_PROTOCOL)?);
    if family != libc::AF_UNIX {
        return Err(f.refuse(&refusal(family, ty, proto)));
    }
    if cx.unix.diag.is_none() {
        cx.unix.diag = Some(diag::all().with_context(|| format!("{}: asking sock_diag about unix sockets", f.what()))?);
    }
    let inode = f.md.ino();
    let Some(d) = cx.unix.diag.as_ref().and_then(|m| m.get(&inode)).cloned() else {
        return Err(f.refuse("sock_diag does not know this unix socket (another network namespace?)"));
    };
    let mut s = UnixSocket { inode, r#type: ty as u32, state: d.state as u32, name: d.name.clone(), peer_inode: d.peer, shutdown: d.shutdown as u32, ..Default::default() };
    s.file = bound_file(f, &d)?;
    if s.state == ESTABLISHED {
        s.peer_name = sys::unix_name(fd, true).unwrap_or_default();
    }
    s.passcred = opt(libc::SO_PASSCRED)? != 0;
    s.sndbuf = opt(libc::SO_SNDBUF)?;
    s.rcvbuf = opt(libc::SO_RCVBUF)?;
    s.peek_off = opt(libc::SO_PEEK_OFF)?;
    if s.state == LISTEN {
        s.backlog = d.rqlen.1;
        s.pending = d.icons.clone();
    } else {
        s.queue = peek_queue(f, ty, d.rqlen.0 as usize)?;
    }
    if s.passcred && !s.queue.is_empty() {
        return Err(f.refuse("data is queued on it with SO_PASSCRED set: the senders' credentials (SCM_CREDENTIALS) cannot be carried"));
    }
    cx.unix.socks.push((s.clone(), f.what(), d));
    Ok(Kind::Unix(s))
}

/// Why a socket of another family is refused: family, type, protocol.
fn refusal(family: i32, ty: i32, proto: i32) -> String {
    let tyname = match ty {
        libc::SOCK_STREAM => "SOCK_STREAM".to_string(),
        libc::SOCK_DGRAM => "SOCK_DGRAM".to_string(),
        libc::SOCK_SEQPACKET => "SOCK_SEQPACKET".to_string(),
        libc::SOCK_RAW => "SOCK_RAW".to_string(),
        t => format!("type {t}"),
    };
    let (fam, why) = match family {
        libc::AF_INET | libc::AF_INET6 => {
            let fam = if family == libc::AF_INET { "AF_INET" } else { "AF_INET6" };
            let why = match (ty, proto) {
                (libc::SOCK_DGRAM, libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6) => "ICMP (ping) sockets are not carried",
                (libc::SOCK_RAW, _) => "raw IP sockets are not carried",
                _ => "only TCP and UDP sockets are carried among IP sockets",
            };
            (fam.to_string(), why)
        }
        libc::AF_NETLINK => ("AF_NETLINK".to_string(), "netlink sockets are not carried"),
        libc::AF_PACKET => ("AF_PACKET".to_string(), "packet sockets are not carried"),
        f => (format!("family {f}"), "only unix domain sockets are carried"),
    };
    format!("it is an {fam} {tyname} socket (protocol {proto}); {why}")
}

/// The socket file of a path-bound socket, as it is on disk.
fn bound_file(f: &Fd, d: &diag::Diag) -> Result<Option<BoundFile>> {
    let Some(&first) = d.name.first() else { return Ok(None) };
    if first == 0 {
        return Ok(None);
    }
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&d.name));
    if !path.is_absolute() {
        return Err(f.refuse(&format!("it is bound to the relative path {:?}, which rcr cannot resolve as the process did", path)));
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) if d.vfs == Some((md.ino(), md.dev())) => Ok(Some(BoundFile { mode: md.mode(), uid: md.uid(), gid: md.gid(), unlinked: false })),
        _ => Ok(Some(BoundFile { mode: 0, uid: 0, gid: 0, unlinked: true })),
    }
}

/// The socket's receive queue, peeked (not consumed) message by message
/// with SO_PEEK_OFF, which is put back as the task had it.
fn peek_queue(f: &Fd, ty: i32, bytes: usize) -> Result<Vec<UnixMessage>> {
    let scm = f.info.text.lines().find_map(|l| l.strip_prefix("scm_fds:")).and_then(|v| v.trim().parse::<u32>().ok()).unwrap_or(0);
    if scm > 0 {
        return Err(f.refuse(&format!("{scm} file descriptors are queued on it in SCM_RIGHTS messages, which rcr cannot carry")));
    }
    let fd = f.file.as_raw_fd();
    let saved = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).with_context(|| format!("{}: SO_PEEK_OFF", f.what()))?;
    sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).with_context(|| format!("{}: setting SO_PEEK_OFF 0", f.what()))?;
    let r = walk_queue(f, fd, ty, bytes);
    let back = sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, saved).with_context(|| format!("{}: putting SO_PEEK_OFF back to {saved}", f.what()));
    let msgs = r?;
    back?;
    Ok(msgs)
}

fn walk_queue(f: &Fd, fd: RawFd, ty: i32, bytes: usize) -> Result<Vec<UnixMessage>> {
    let mut buf = vec![0u8; 1 << 20];
    let mut msgs: Vec<UnixMessage> = Vec::new();
    let (mut total, mut open) = (0usize, false);
    loop {
        let p = match sys::peek_msg(fd, &mut buf) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break,
            Err(e) => return Err(e).with_context(|| format!("{}: peeking at its receive queue", f.what())),
            Ok(p) => p,
        };
        if !p.rights.is_empty() {
            return Err(f.refuse("file descriptors are queued on it (SCM_RIGHTS), which rcr cannot carry"));
        }
        // A stream, or a seqpacket socket shut down for reading, says 0 at
        // the end of its queue instead of EAGAIN.
        if p.len == 0 && ty != libc::SOCK_DGRAM && total >= bytes {
            break;
        }
        total += p.len;
        if total > MAX_QUEUE {
            return Err(f.refuse(&format!("more than {MAX_QUEUE} bytes are queued on it")));
        }
        match msgs.last_mut() {
            Some(m) if open || ty == libc::SOCK_STREAM => m.data.extend_from_slice(&buf[..p.len]),
            // Stream and seqpacket reads name the peer: only a datagram's sender matters.
            _ => msgs.push(UnixMessage { data: buf[..p.len].to_vec(), sender: if ty == libc::SOCK_DGRAM { p.sender } else { Vec::new() } }),
        }
        open = p.flags & libc::MSG_TRUNC != 0;
    }
    Ok(msgs)
}

/// Checks that need the whole tree (`tree`: the dumped PIDs): every peer
/// and pending connection belongs to it, or may be reconnected.
pub fn finish(cx: &DumpCx, tree: &[i32]) -> Result<()> {
    let t = &cx.unix;
    let held: HashMap<u64, usize> = t.socks.iter().enumerate().map(|(i, (s, _, _))| (s.inode, i)).collect();
    let pending: HashMap<u64, usize> = t.socks.iter().enumerate().flat_map(|(i, (s, _, _))| s.pending.iter().map(move |&c| (c, i))).collect();
    for (s, what, d) in &t.socks {
        for &c in &s.pending {
            if c == 0 {
                bail!("{what}: a connection waits on this listening socket whose client was closed; rcr cannot see what it sent");
            }
            if !held.contains_key(&c) {
                bail!("{what}: a connection from socket:[{c}] ({}) waits on this listening socket, outside the dumped tree; rcr cannot carry it", holder(c, tree));
            }
        }
        if s.state != ESTABLISHED || s.peer_inode == 0 {
            continue;
        }
        if let Some(&i) = held.get(&s.peer_inode) {
            let p = &t.socks[i].0;
            if s.r#type == libc::SOCK_DGRAM as u32 && p.peer_inode != s.inode && p.name.is_empty() {
                bail!("{what}: connected to socket:[{}], which has no name and is connected elsewhere; rcr cannot reconnect it", p.inode);
            }
        } else if let Some(&l) = pending.get(&s.inode) {
            if d.wmem > 0 {
                bail!("{what}: it sent {} bytes on a connection {} has not accepted yet; rcr cannot carry them", d.wmem, t.socks[l].1);
            }
        } else {
            check_external(t, s, what, tree)?;
        }
    }
    check_senders(t)
}

/// A socket whose peer is outside the tree: refused, except a named
/// datagram peer with `--ext-unix-sk`.
fn check_external(t: &Table, s: &UnixSocket, what: &str, tree: &[i32]) -> Result<()> {
    let peer = format!("socket:[{}] {} ({})", s.peer_inode, show_name(&s.peer_name), holder(s.peer_inode, tree));
    if s.r#type != libc::SOCK_DGRAM as u32 {
        bail!("{what}: connected to {peer}, outside the dumped tree; a {} connection to a process outside the tree cannot be remade (not even with --ext-unix-sk)", type_name(s.r#type));
    }
    if !t.ext {
        bail!("{what}: connected to {peer}, outside the dumped tree; rcr refuses it unless --ext-unix-sk is given (restore then connects to the same name)");
    }
    if s.peer_name.is_empty() {
        bail!("{what}: connected to {peer}, outside the dumped tree and without a name; even with --ext-unix-sk rcr cannot reconnect it");
    }
    Ok(())
}

/// Queued datagrams must come from an unnamed socket or a socket of the
/// tree (restore sends them again from there).
fn check_senders(t: &Table) -> Result<()> {
    for (s, what, _) in &t.socks {
        for m in s.queue.iter().filter(|m| !m.sender.is_empty()) {
            if !t.socks.iter().any(|(o, _, _)| o.name == m.sender && o.r#type == s.r#type && o.state != LISTEN) {
                bail!("{what}: a datagram from {} is queued on it, and no socket of the dumped tree has that name; rcr cannot send it again", show_name(&m.sender));
            }
        }
    }
    Ok(())
}

/// "pid P fd N" of a process outside `tree` holding socket `inode`.
fn holder(inode: u64, tree: &[i32]) -> String {
    let want = format!("socket:[{inode}]");
    let me = std::process::id() as i32;
    let Ok(procs) = std::fs::read_dir("/proc") else { return "held by no process rcr can see".into() };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if tree.contains(&pid) || pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str().as_bytes() == want.as_bytes()) {
                return format!("held by pid {pid} fd {}", fd.file_name().to_string_lossy());
            }
        }
    }
    "held by no process rcr can see".into()
}

/// A unix address for messages: a path, `@name` (abstract) or `unnamed`.
pub fn show_name(name: &[u8]) -> String {
    match name.first() {
        None => "(unnamed)".into(),
        Some(0) => format!("@{}", String::from_utf8_lossy(&name[1..])),
        _ => String::from_utf8_lossy(name).into_owned(),
    }
}

pub fn type_name(ty: u32) -> &'static str {
    match ty as i32 {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "unknown-type",
    }
}
