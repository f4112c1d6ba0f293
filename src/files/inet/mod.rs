//! IP sockets: TCP and UDP, IPv4 and IPv6. Carried: TCP listeners (with
//! their backlog), TCP sockets not connected (bound or not), established
//! TCP connections with `--tcp-established` (through TCP_REPAIR, under a
//! network lock: [`lock`]), UDP sockets bound or not, connected or not;
//! each with its options ([`opts`]). Refused at dump, naming the socket: a
//! listener with connections waiting to be accepted (no fd owns them), TCP
//! sockets in other states (SYN_SENT, FIN_WAIT*, CLOSE_WAIT, TIME_WAIT...),
//! an established connection without `--tcp-established`, datagrams
//! queued unread on a UDP socket (their senders cannot be carried) or
//! corked data not sent yet. Raw, ping, SCTP, MPTCP... sockets go on to the
//! unix module, which refuses them by family, type and protocol.
//!
//! Dump reads rcr's copy of the socket (getsockname, getpeername,
//! getsockopt, TCP_INFO, SO_MEMINFO, poll for the shutdown state).
//! Restore ([`restore::create`]) rebuilds every socket in rcr before the
//! tree is forked: listeners first, then the others, then the established
//! connections, which stay in repair mode until the tree is ready to run
//! ([`Repaired::finish`]).
mod lock;
mod opts;
mod repair;
mod restore;

use super::fds::{DumpCx, Fd};
use crate::images::pb::{file_desc::Kind, InetAddr, InetSocket};
use crate::sys;
use anyhow::{Context, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;

pub use lock::{check_nft, delete_table, drop_command, NetLock};
pub use restore::{create, validate, Repaired};

/// TCP_REPAIR off on `sock` (the dump watchdog's undo).
pub fn set_repair_off(sock: &std::os::fd::OwnedFd) -> Result<()> {
    Ok(repair::set_repair(sock.as_raw_fd(), false)?)
}

/// TCP states (sk_state).
pub const ESTABLISHED: u32 = 1;
pub const CLOSE: u32 = 7;
pub const LISTEN: u32 = 10;
/// Index of sk_rmem_alloc and sk_wmem_alloc in SO_MEMINFO.
const MEMINFO_RMEM: usize = 0;
const MEMINFO_WMEM: usize = 2;

/// What the dump of a tree keeps about IP sockets: the network lock, once
/// a connection was locked.
#[derive(Debug, Default)]
pub struct Table {
    pub lock: Option<NetLock>,
}

/// SO_DOMAIN, SO_TYPE, SO_PROTOCOL.
pub fn sock_kind(fd: RawFd) -> std::io::Result<(i32, i32, i32)> {
    let opt = |o| sys::getsockopt_int(fd, libc::SOL_SOCKET, o);
    Ok((opt(libc::SO_DOMAIN)?, opt(libc::SO_TYPE)?, opt(libc::SO_PROTOCOL)?))
}

/// Whether this module carries a socket of that kind (TCP or UDP over IP).
pub fn handles((family, ty, proto): (i32, i32, i32)) -> bool {
    matches!(family, libc::AF_INET | libc::AF_INET6) && matches!((ty, proto), (libc::SOCK_STREAM, libc::IPPROTO_TCP) | (libc::SOCK_DGRAM, libc::IPPROTO_UDP))
}

pub fn tcp_state_name(st: u32) -> String {
    const NAMES: [&str; 12] = ["?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING"];
    NAMES.get(st as usize).map_or_else(|| format!("state {st}"), |s| s.to_string())
}

fn to_pb(a: SocketAddr) -> InetAddr {
    match a {
        SocketAddr::V4(v) => InetAddr { addr: v.ip().octets().to_vec(), port: v.port() as u32, scope_id: 0 },
        SocketAddr::V6(v) => InetAddr { addr: v.ip().octets().to_vec(), port: v.port() as u32, scope_id: v.scope_id() },
    }
}

/// An address of the image (4 or 16 bytes).
pub fn from_pb(a: &InetAddr) -> Option<SocketAddr> {
    let port = u16::try_from(a.port).ok()?;
    match a.addr.len() {
        4 => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&a.addr[..]).ok()?)), port)),
        16 => Some(SocketAddrV6::new(Ipv6Addr::from(<[u8; 16]>::try_from(&a.addr[..]).ok()?), port, 0, a.scope_id).into()),
        _ => None,
    }
}

/// "TCP 127.0.0.1:80 -> 127.0.0.1:5000" or "UDP [::]:53", for messages.
pub fn describe(s: &InetSocket) -> String {
    let proto = if s.protocol == libc::IPPROTO_TCP as u32 { "TCP" } else { "UDP" };
    let show = |a: &Option<InetAddr>| a.as_ref().and_then(from_pb).map_or_else(|| "(unbound)".to_string(), |a| a.to_string());
    match &s.peer {
        Some(_) => format!("{proto} {} -> {}", show(&s.local), show(&s.peer)),
        None if s.state == LISTEN => format!("{proto} listening on {}", show(&s.local)),
        None => format!("{proto} {}", show(&s.local)),
    }
}

/// Dump side of one TCP or UDP socket (seen for the first time).
pub fn dump(f: &Fd, cx: &mut DumpCx) -> Result<Kind> {
    let fd = f.file.as_raw_fd();
    let (family, ty, protocol) = sock_kind(fd).with_context(|| format!("{}: getsockopt SO_DOMAIN/SO_TYPE/SO_PROTOCOL", f.what()))?;
    let mut s = InetSocket { inode: f.md.ino(), family: family as u32, r#type: ty as u32, protocol: protocol as u32, ..Default::default() };
    let local = sys::inet_name(fd, false).with_context(|| format!("{}: getsockname", f.what()))?;
    s.local = (local.port() != 0 || !local.ip().is_unspecified()).then(|| to_pb(local));
    let peer = sys::inet_name(fd, true).ok();
    s.peer = peer.map(to_pb);
    let tcp = protocol == libc::IPPROTO_TCP;
    s.state = match (tcp, peer) {
        (true, _) => repair::tcp_info(fd).with_context(|| format!("{}: TCP_INFO", f.what()))?[0] as u32,
        (false, Some(_)) => ESTABLISHED,
        (false, None) => CLOSE,
    };
    let established = s.state == ESTABLISHED;
    opts::dump(fd, &mut s, established).map_err(|e| f.refuse(&format!("{}: {e:#}", describe(&s))))?;
    if tcp {
        dump_tcp(f, cx, &mut s, local, peer)?;
    } else {
        dump_udp(f, &mut s)?;
    }
    Ok(Kind::Inet(s))
}

/// Receive side shut down (poll says RDHUP): 1; both sides (HUP): 3.
fn shutdown_state(fd: RawFd) -> Result<u32> {
    let ev = sys::poll_now(fd)?;
    Ok(if ev & libc::POLLHUP as u32 != 0 { 3 } else if ev & libc::POLLRDHUP as u32 != 0 { 1 } else { 0 })
}

fn dump_tcp(f: &Fd, cx: &mut DumpCx, s: &mut InetSocket, local: SocketAddr, peer: Option<SocketAddr>) -> Result<()> {
    let fd = f.file.as_raw_fd();
    match (s.state, peer) {
        (LISTEN, _) => {
            let info = repair::tcp_info(fd).with_context(|| format!("{}: TCP_INFO", f.what()))?;
            let u = |at: usize| u32::from_ne_bytes(info[at..at + 4].try_into().unwrap_or_default());
            if u(24) > 0 {
                return Err(f.refuse(&format!("{}: {} connections wait in its accept queue, owned by no fd", describe(s), u(24))));
            }
            s.backlog = u(28);
        }
        (CLOSE, _) => {}
        (ESTABLISHED, Some(peer)) => dump_established(f, cx, s, local, peer)?,
        (st, _) => {
            let conn = peer.map_or_else(|| format!("{local}"), |p| format!("{local} -> {p}"));
            return Err(f.refuse(&format!("TCP connection {conn} is in state {}; rcr carries only LISTEN, ESTABLISHED and CLOSE TCP sockets", tcp_state_name(st))));
        }
    }
    Ok(())
}

/// An established connection: locked, put in repair mode, read.
fn dump_established(f: &Fd, cx: &mut DumpCx, s: &mut InetSocket, local: SocketAddr, peer: SocketAddr) -> Result<()> {
    let conn = format!("TCP connection {local} -> {peer}");
    if !cx.tcp_established {
        return Err(f.refuse(&format!("{conn} is established; rcr carries established connections only with --tcp-established")));
    }
    let fd = f.file.as_raw_fd();
    s.shutdown = shutdown_state(fd).with_context(|| format!("{}: poll", f.what()))? & 1;
    let lock = cx.inet.lock.get_or_insert_with(NetLock::default);
    lock.block(local, peer).with_context(|| f.what())?;
    let copy = f.file.try_clone().with_context(|| format!("{}: dup", f.what()))?;
    crate::dump::watchdog::socket_repaired(f.pid, f.fd);
    repair::set_repair(fd, true).with_context(|| format!("{}: {conn}: turning TCP_REPAIR on", f.what()))?;
    lock.repaired(copy.into(), format!("{}: {conn}", f.what()));
    s.tcp = Some(repair::read(fd).with_context(|| format!("{}: {conn}: reading it in repair mode", f.what()))?);
    Ok(())
}

fn dump_udp(f: &Fd, s: &mut InetSocket) -> Result<()> {
    let fd = f.file.as_raw_fd();
    let mut m = [0u8; 36];
    sys::getsockopt_bytes(fd, libc::SOL_SOCKET, libc::SO_MEMINFO, &mut m).with_context(|| format!("{}: SO_MEMINFO", f.what()))?;
    let mem = |i: usize| u32::from_ne_bytes(m[i * 4..i * 4 + 4].try_into().unwrap_or_default());
    if mem(MEMINFO_RMEM) > 0 {
        let first = sys::socket_queued(fd, sys::SockQueue::In).unwrap_or(0);
        return Err(f.refuse(&format!("{}: datagrams are queued unread on it ({} bytes of receive memory, the first datagram {first} bytes); their senders cannot be carried", describe(s), mem(MEMINFO_RMEM))));
    }
    if opts::value(s, "UDP_CORK").unwrap_or(0) != 0 && mem(MEMINFO_WMEM) > 0 {
        return Err(f.refuse(&format!("{}: {} bytes are corked (UDP_CORK) and not sent yet", describe(s), mem(MEMINFO_WMEM))));
    }
    s.shutdown = shutdown_state(fd).with_context(|| format!("{}: poll", f.what()))?;
    Ok(())
}
