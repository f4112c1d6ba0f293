//! Restore side of IP sockets, in rcr before the tree is forked:
//!
//! 1. TCP listeners: socket, options, buffers, bind, listen(backlog);
//! 2. TCP sockets not connected and UDP sockets: socket, options, buffers,
//!    bind (when bound), connect (a connected UDP socket), shutdown;
//! 3. established TCP connections (only with `--tcp-established`):
//!    socket, options, TCP_REPAIR on, queue sequence numbers, bind and
//!    connect (neither sends anything in repair mode; repair lets the
//!    address be reused), negotiated options and timestamp clock, the sent
//!    part of the send queue and the receive queue, window. They stay in
//!    repair mode; once the tree is ready to run, [`Repaired::finish`]
//!    turns repair off, sends the unsent part of the send queue the
//!    ordinary way, sets SO_REUSEADDR (repair off clears it), the
//!    buffers and the shutdown state. Should the restore fail before,
//!    rcr's copies close in repair mode: the peer sees nothing, and the
//!    network lock keeps it waiting for another try.
use super::{describe, from_pb, opts, repair, ESTABLISHED, LISTEN};
use crate::files::fds::{CreateCx, Images};
use crate::images::pb::{file_desc::Kind, FileDesc, InetSocket};
use crate::sys;
use anyhow::{bail, Context, Result};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// The established connections rebuilt in repair mode, waiting for
/// [`Repaired::finish`]: rcr's copy, the image entry, a name for messages.
#[derive(Debug, Default)]
pub struct Repaired(Vec<(OwnedFd, InetSocket, String)>);

/// Refuses, before anything is created, an image with established
/// connections restored without `--tcp-established`.
pub fn validate(images: &Images) -> Result<()> {
    for d in &images.descs {
        if let Some(Kind::Inet(s)) = &d.kind {
            if s.tcp.is_some() && !images.tcp_established {
                bail!("fds.img: description {} ({}) is an established TCP connection; restore it with --tcp-established", d.id, describe(s));
            }
        }
    }
    Ok(())
}

fn rank(s: &InetSocket) -> u8 {
    match (s.state, s.tcp.is_some()) {
        (LISTEN, _) => 0,
        (_, false) => 1,
        (_, true) => 2,
    }
}

/// Recreates every IP socket the descriptions refer to.
pub fn create(descs: &[&FileDesc], cx: &mut CreateCx) -> Result<()> {
    let mut socks: Vec<(&FileDesc, &InetSocket)> = descs.iter().filter_map(|d| if let Some(Kind::Inet(s)) = &d.kind { Some((*d, s)) } else { None }).collect();
    socks.sort_by_key(|(_, s)| rank(s));
    for (d, s) in socks {
        let what = format!("fds.img: description {} ({})", d.id, describe(s));
        let fd = match &s.tcp {
            Some(_) => established(s, &mut cx.tcp, &what),
            None => plain(s),
        };
        cx.out.insert(d.id, fd.with_context(|| what.clone())?);
    }
    Ok(())
}

fn new_socket(s: &InetSocket) -> Result<OwnedFd> {
    sys::socket(s.family as i32, s.r#type as i32 | libc::SOCK_NONBLOCK, s.protocol as i32).context("socket")
}

fn bind_or_connect(fd: RawFd, a: &Option<crate::images::pb::InetAddr>, connect: bool) -> Result<()> {
    let step = if connect { "connect" } else { "bind" };
    let Some(a) = a else { return Ok(()) };
    let addr = from_pb(a).with_context(|| format!("{step}: an address of {} bytes", a.addr.len()))?;
    match sys::inet_bind_or_connect(fd, &addr, connect) {
        Err(e) if !connect && e.raw_os_error() == Some(libc::EADDRINUSE) => match time_waits(addr.port()) {
            0 => Err(e).with_context(|| format!("{step} {addr}")),
            n => Err(e).with_context(|| {
                format!("{step} {addr}: {n} connection(s) closed on this port are in TIME_WAIT (up to 60 s after the dump killed the tree), \
                         and the socket was saved without SO_REUSEADDR; retry later, or dump with -R")
            }),
        },
        r => r.with_context(|| format!("{step} {addr}")),
    }
}

/// Connections in TIME_WAIT whose local port is `port`, from
/// /proc/net/tcp and tcp6 (rcr's network namespace).
fn time_waits(port: u16) -> usize {
    const TIME_WAIT: &str = "06";
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|text| {
            text.lines()
                .skip(1)
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().take(4).collect();
                    f.len() == 4 && f[1].ends_with(&want) && f[3] == TIME_WAIT
                })
                .count()
        })
        .sum()
}

fn shutdown(fd: RawFd, bits: u32) -> Result<()> {
    let how = match bits {
        0 => return Ok(()),
        1 => libc::SHUT_RD,
        2 => libc::SHUT_WR,
        _ => libc::SHUT_RDWR,
    };
    match sys::shutdown(fd, how) {
        // An unconnected UDP socket is shut all the same.
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
        r => r.with_context(|| format!("shutdown({how})")),
    }
}

/// A listener, a TCP socket not connected, or a UDP socket.
fn plain(s: &InetSocket) -> Result<OwnedFd> {
    let fd = new_socket(s)?;
    let raw = fd.as_raw_fd();
    opts::set(raw, s, &[])?;
    opts::set_buf(raw, true, s.sndbuf)?;
    opts::set_buf(raw, false, s.rcvbuf)?;
    bind_or_connect(raw, &s.local, false)?;
    if s.state == LISTEN {
        sys::listen(raw, s.backlog as i32).with_context(|| format!("listen({})", s.backlog))?;
    } else if s.state == ESTABLISHED {
        bind_or_connect(raw, &s.peer, true)?;
    }
    shutdown(raw, s.shutdown)?;
    Ok(fd)
}

/// Buffers big enough for `len` queued bytes and their overhead.
fn room(len: usize, saved: i32) -> i32 {
    (saved / 2).max((len * 2 + (256 << 10)).min(i32::MAX as usize / 4) as i32)
}

/// An established connection, left in repair mode (its copy in `out`).
fn established(s: &InetSocket, out: &mut Repaired, what: &str) -> Result<OwnedFd> {
    let c = s.tcp.as_ref().context("no connection state")?;
    let fd = new_socket(s)?;
    let raw = fd.as_raw_fd();
    opts::set(raw, s, &["SO_REUSEADDR"])?;
    repair::set_repair(raw, true).context("turning TCP_REPAIR on")?;
    out.0.push((fd.try_clone().context("dup")?, s.clone(), what.to_string()));
    repair::set_seqs(raw, c).context("TCP_QUEUE_SEQ")?;
    bind_or_connect(raw, &s.local, false)?;
    bind_or_connect(raw, &s.peer, true)?;
    repair::set_options(raw, c).context("TCP_REPAIR_OPTIONS and TCP_TIMESTAMP")?;
    opts::force_buf(raw, true, room(c.send_queue.len(), s.sndbuf)).context("SO_SNDBUFFORCE")?;
    opts::force_buf(raw, false, room(c.recv_queue.len(), s.rcvbuf)).context("SO_RCVBUFFORCE")?;
    repair::set_queues(raw, c).context("refilling the queues")?;
    Ok(fd)
}

impl Repaired {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes every connection out of repair mode (the tree is about to run).
    pub fn finish(&mut self) -> Result<()> {
        for (fd, s, what) in self.0.drain(..) {
            finish_one(fd.as_raw_fd(), &s).with_context(|| what.clone())?;
        }
        Ok(())
    }
}

fn finish_one(fd: RawFd, s: &InetSocket) -> Result<()> {
    let c = s.tcp.as_ref().context("no connection state")?;
    repair::set_repair(fd, false).context("turning TCP_REPAIR off")?;
    sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, opts::value(s, "SO_REUSEADDR").unwrap_or(0)).context("SO_REUSEADDR")?;
    repair::send_unsent(fd, c).context("sending the unsent part of the send queue")?;
    opts::set_buf(fd, true, s.sndbuf)?;
    opts::set_buf(fd, false, s.rcvbuf)?;
    shutdown(fd, s.shutdown)
}
