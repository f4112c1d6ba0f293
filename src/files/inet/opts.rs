//! Socket options of IP sockets: a table of int options read with
//! getsockopt at dump and set again at restore, plus the few that are not
//! ints (SO_LINGER, TCP_CONGESTION, SO_BINDTODEVICE) and the buffer sizes.
//! State rcr cannot see whole is refused: a classic BPF filter, IP
//! options, a TCP upper-layer protocol (kTLS).
use crate::images::pb::{InetSocket, Linger, SockOpt};
use crate::sys;
use anyhow::{bail, Context, Result};
use std::os::fd::RawFd;

const TCP: u8 = 1;
const UDP: u8 = 2;
const V4: u8 = 4;
const V6: u8 = 8;
/// Not for established connections (TCP_FASTOPEN).
const UNCONNECTED: u8 = 16;
/// Saved only when not 0 (options that need privileges to set).
const NONZERO: u8 = 32;
const ANY: u8 = TCP | UDP | V4 | V6;

const IP_BIND_ADDRESS_NO_PORT: i32 = 24;
const IPV6_FREEBIND: i32 = 78;
const IPV6_TRANSPARENT: i32 = 75;
const TCP_ULP: i32 = 31;

/// (name, level, option, where it applies), in the order restore sets them.
const INT_OPTS: &[(&str, i32, i32, u8)] = &[
    ("SO_REUSEADDR", libc::SOL_SOCKET, libc::SO_REUSEADDR, ANY),
    ("SO_REUSEPORT", libc::SOL_SOCKET, libc::SO_REUSEPORT, ANY),
    ("SO_KEEPALIVE", libc::SOL_SOCKET, libc::SO_KEEPALIVE, ANY),
    ("SO_BROADCAST", libc::SOL_SOCKET, libc::SO_BROADCAST, ANY),
    ("SO_DONTROUTE", libc::SOL_SOCKET, libc::SO_DONTROUTE, ANY),
    ("SO_OOBINLINE", libc::SOL_SOCKET, libc::SO_OOBINLINE, ANY),
    ("SO_RCVLOWAT", libc::SOL_SOCKET, libc::SO_RCVLOWAT, ANY),
    ("SO_MARK", libc::SOL_SOCKET, libc::SO_MARK, ANY | NONZERO),
    ("SO_TIMESTAMP", libc::SOL_SOCKET, libc::SO_TIMESTAMP, ANY | NONZERO),
    ("SO_TIMESTAMPNS", libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, ANY | NONZERO),
    ("IP_TOS", libc::SOL_IP, libc::IP_TOS, TCP | UDP | V4),
    ("IP_TTL", libc::SOL_IP, libc::IP_TTL, TCP | UDP | V4),
    ("IP_FREEBIND", libc::SOL_IP, libc::IP_FREEBIND, TCP | UDP | V4),
    ("IP_TRANSPARENT", libc::SOL_IP, libc::IP_TRANSPARENT, TCP | UDP | V4 | NONZERO),
    ("IP_BIND_ADDRESS_NO_PORT", libc::SOL_IP, IP_BIND_ADDRESS_NO_PORT, TCP | UDP | V4),
    ("IP_MTU_DISCOVER", libc::SOL_IP, libc::IP_MTU_DISCOVER, TCP | UDP | V4),
    ("IP_RECVERR", libc::SOL_IP, libc::IP_RECVERR, TCP | UDP | V4),
    ("IP_PKTINFO", libc::SOL_IP, libc::IP_PKTINFO, UDP | V4),
    ("IP_RECVTOS", libc::SOL_IP, libc::IP_RECVTOS, UDP | V4),
    ("IP_RECVTTL", libc::SOL_IP, libc::IP_RECVTTL, UDP | V4),
    ("IP_MULTICAST_TTL", libc::SOL_IP, libc::IP_MULTICAST_TTL, UDP | V4),
    ("IP_MULTICAST_LOOP", libc::SOL_IP, libc::IP_MULTICAST_LOOP, UDP | V4),
    ("IP_MULTICAST_ALL", libc::SOL_IP, libc::IP_MULTICAST_ALL, UDP | V4),
    ("IPV6_V6ONLY", libc::SOL_IPV6, libc::IPV6_V6ONLY, TCP | UDP | V6),
    ("IPV6_TCLASS", libc::SOL_IPV6, libc::IPV6_TCLASS, TCP | UDP | V6),
    ("IPV6_UNICAST_HOPS", libc::SOL_IPV6, libc::IPV6_UNICAST_HOPS, TCP | UDP | V6),
    ("IPV6_FREEBIND", libc::SOL_IPV6, IPV6_FREEBIND, TCP | UDP | V6),
    ("IPV6_TRANSPARENT", libc::SOL_IPV6, IPV6_TRANSPARENT, TCP | UDP | V6 | NONZERO),
    ("IPV6_MTU_DISCOVER", libc::SOL_IPV6, libc::IPV6_MTU_DISCOVER, TCP | UDP | V6),
    ("IPV6_RECVERR", libc::SOL_IPV6, libc::IPV6_RECVERR, TCP | UDP | V6),
    ("IPV6_RECVPKTINFO", libc::SOL_IPV6, libc::IPV6_RECVPKTINFO, UDP | V6),
    ("IPV6_MULTICAST_HOPS", libc::SOL_IPV6, libc::IPV6_MULTICAST_HOPS, UDP | V6),
    ("IPV6_MULTICAST_LOOP", libc::SOL_IPV6, libc::IPV6_MULTICAST_LOOP, UDP | V6),
    // After IP_TOS and IPV6_TCLASS, which set the priority too.
    ("SO_PRIORITY", libc::SOL_SOCKET, libc::SO_PRIORITY, ANY),
    ("TCP_NODELAY", libc::SOL_TCP, libc::TCP_NODELAY, TCP | V4 | V6),
    ("TCP_CORK", libc::SOL_TCP, libc::TCP_CORK, TCP | V4 | V6),
    ("TCP_KEEPIDLE", libc::SOL_TCP, libc::TCP_KEEPIDLE, TCP | V4 | V6),
    ("TCP_KEEPINTVL", libc::SOL_TCP, libc::TCP_KEEPINTVL, TCP | V4 | V6),
    ("TCP_KEEPCNT", libc::SOL_TCP, libc::TCP_KEEPCNT, TCP | V4 | V6),
    ("TCP_SYNCNT", libc::SOL_TCP, libc::TCP_SYNCNT, TCP | V4 | V6),
    ("TCP_LINGER2", libc::SOL_TCP, libc::TCP_LINGER2, TCP | V4 | V6),
    ("TCP_DEFER_ACCEPT", libc::SOL_TCP, libc::TCP_DEFER_ACCEPT, TCP | V4 | V6),
    ("TCP_USER_TIMEOUT", libc::SOL_TCP, libc::TCP_USER_TIMEOUT, TCP | V4 | V6),
    ("TCP_NOTSENT_LOWAT", libc::SOL_TCP, libc::TCP_NOTSENT_LOWAT, TCP | V4 | V6),
    ("TCP_THIN_LINEAR_TIMEOUTS", libc::SOL_TCP, libc::TCP_THIN_LINEAR_TIMEOUTS, TCP | V4 | V6),
    ("TCP_FASTOPEN", libc::SOL_TCP, libc::TCP_FASTOPEN, TCP | V4 | V6 | UNCONNECTED | NONZERO),
    ("UDP_CORK", libc::SOL_UDP, libc::UDP_CORK, UDP | V4 | V6),
];

fn flags_of(s: &InetSocket) -> u8 {
    let proto = if s.protocol == libc::IPPROTO_TCP as u32 { TCP } else { UDP };
    let fam = if s.family == libc::AF_INET as u32 { V4 } else { V6 };
    proto | fam
}

/// Reads every option of the table that applies to `s`, the buffers and
/// the other options, into `s`; refuses what cannot be carried.
pub fn dump(fd: RawFd, s: &mut InetSocket, established: bool) -> Result<()> {
    let want = flags_of(s);
    for &(name, level, opt, when) in INT_OPTS {
        if when & want != want || (established && when & UNCONNECTED != 0) {
            continue;
        }
        let value = sys::getsockopt_int(fd, level, opt).with_context(|| format!("getsockopt {name}"))?;
        if when & NONZERO == 0 || value != 0 {
            s.opts.push(SockOpt { name: name.into(), level, opt, value });
        }
    }
    s.sndbuf = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).context("getsockopt SO_SNDBUF")?;
    s.rcvbuf = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF).context("getsockopt SO_RCVBUF")?;
    let mut l = [0u8; 8];
    sys::getsockopt_bytes(fd, libc::SOL_SOCKET, libc::SO_LINGER, &mut l).context("getsockopt SO_LINGER")?;
    let int = |b: &[u8]| i32::from_ne_bytes(b.try_into().unwrap_or_default());
    s.linger = (int(&l[..4]) != 0).then(|| Linger { seconds: int(&l[4..]) });
    s.bind_device = string_opt(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE).context("getsockopt SO_BINDTODEVICE")?;
    if want & TCP != 0 {
        s.congestion = string_opt(fd, libc::SOL_TCP, libc::TCP_CONGESTION).context("getsockopt TCP_CONGESTION")?;
    }
    refuse_hidden(fd, want)
}

fn string_opt(fd: RawFd, level: i32, opt: i32) -> Result<String> {
    let mut b = [0u8; 64];
    let n = sys::getsockopt_bytes(fd, level, opt, &mut b)?;
    let b = &b[..n];
    Ok(String::from_utf8_lossy(&b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]).into_owned())
}

/// State the option table does not carry, refused when present.
fn refuse_hidden(fd: RawFd, want: u8) -> Result<()> {
    let mut none = [0u8; 0];
    let filter = sys::getsockopt_bytes(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &mut none).context("getsockopt SO_GET_FILTER")?;
    if filter > 0 {
        bail!("a socket filter (SO_ATTACH_FILTER, {filter} instructions) is attached to it");
    }
    if want & V4 != 0 {
        let mut o = [0u8; 40];
        if sys::getsockopt_bytes(fd, libc::SOL_IP, libc::IP_OPTIONS, &mut o).context("getsockopt IP_OPTIONS")? > 0 {
            bail!("IP options (IP_OPTIONS) are set on it");
        }
    }
    if want & TCP != 0 {
        let ulp = string_opt(fd, libc::SOL_TCP, TCP_ULP).context("getsockopt TCP_ULP")?;
        if !ulp.is_empty() {
            bail!("the TCP upper-layer protocol {ulp:?} (TCP_ULP) is attached to it");
        }
    }
    Ok(())
}

/// Sets the table's options (all but `skip`), SO_LINGER, SO_BINDTODEVICE
/// and TCP_CONGESTION: before bind.
pub fn set(fd: RawFd, s: &InetSocket, skip: &[&str]) -> Result<()> {
    for o in s.opts.iter().filter(|o| !skip.contains(&o.name.as_str())) {
        sys::setsockopt_int(fd, o.level, o.opt, o.value).with_context(|| format!("setsockopt {} {}", o.name, o.value))?;
    }
    if let Some(l) = &s.linger {
        let b: Vec<u8> = [1i32, l.seconds].iter().flat_map(|v| v.to_ne_bytes()).collect();
        sys::setsockopt_bytes(fd, libc::SOL_SOCKET, libc::SO_LINGER, &b).with_context(|| format!("setsockopt SO_LINGER {}", l.seconds))?;
    }
    if !s.bind_device.is_empty() {
        sys::setsockopt_bytes(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, s.bind_device.as_bytes()).with_context(|| format!("setsockopt SO_BINDTODEVICE {}", s.bind_device))?;
    }
    if !s.congestion.is_empty() && string_opt(fd, libc::SOL_TCP, libc::TCP_CONGESTION)? != s.congestion {
        sys::setsockopt_bytes(fd, libc::SOL_TCP, libc::TCP_CONGESTION, s.congestion.as_bytes()).with_context(|| format!("setsockopt TCP_CONGESTION {}", s.congestion))?;
    }
    Ok(())
}

/// The saved value of option `name`, if saved.
pub fn value(s: &InetSocket, name: &str) -> Option<i32> {
    s.opts.iter().find(|o| o.name == name).map(|o| o.value)
}

/// Sets one buffer size as saved: half (the kernel doubles), with the
/// FORCE variant (rcr may exceed the sysctl maximum, as the kernel's own
/// autotuning did), unless a fresh socket already has that size (so
/// autotuning stays on); checks the result.
pub fn set_buf(fd: RawFd, snd: bool, saved: i32) -> Result<()> {
    let (opt, name) = if snd { (libc::SO_SNDBUF, "SO_SNDBUF") } else { (libc::SO_RCVBUF, "SO_RCVBUF") };
    if sys::getsockopt_int(fd, libc::SOL_SOCKET, opt)? == saved {
        return Ok(());
    }
    force_buf(fd, snd, (saved + 1) / 2).with_context(|| format!("setsockopt {name} {}", (saved + 1) / 2))?;
    let got = sys::getsockopt_int(fd, libc::SOL_SOCKET, opt)?;
    if (got - saved).abs() > 1 {
        bail!("{name}: set to {} for {saved} as saved, the kernel says {got}", (saved + 1) / 2);
    }
    Ok(())
}

/// SO_SNDBUFFORCE / SO_RCVBUFFORCE of `half` (the kernel doubles it).
pub fn force_buf(fd: RawFd, snd: bool, half: i32) -> std::io::Result<()> {
    let force = if snd { libc::SO_SNDBUFFORCE } else { libc::SO_RCVBUFFORCE };
    sys::setsockopt_int(fd, libc::SOL_SOCKET, force, half)
}
