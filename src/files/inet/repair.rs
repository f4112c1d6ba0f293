//! TCP_REPAIR (linux/tcp.h): reading an established connection's state
//! from a socket in repair mode, and building a socket in repair mode
//! that continues it. In repair mode connect() sends no SYN, sends put
//! data in the send queue as already sent (or, with TCP_RECV_QUEUE, in
//! the receive queue), and closing sends neither FIN nor RST
//! (tcp_disconnect only sets ECONNABORTED).
use crate::images::pb::{TcpConnection, TcpWindow};
use crate::sys;
use std::io::Result;
use std::os::fd::RawFd;

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const NO_QUEUE: i32 = 0;
const RECV_QUEUE: i32 = 1;
const SEND_QUEUE: i32 = 2;
/// tcpi_options bits.
const OPT_TIMESTAMPS: u32 = 1;
const OPT_SACK: u32 = 2;
const OPT_WSCALE: u32 = 4;
/// TCP option codes TCP_REPAIR_OPTIONS takes.
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;

fn sol_tcp(fd: RawFd, opt: i32, v: i32) -> Result<()> {
    sys::setsockopt_int(fd, libc::SOL_TCP, opt, v)
}

/// TCP_REPAIR on or off (off sends a window probe).
pub fn set_repair(fd: RawFd, on: bool) -> Result<()> {
    sol_tcp(fd, TCP_REPAIR, on as i32)
}

fn select(fd: RawFd, queue: i32) -> Result<()> {
    sol_tcp(fd, TCP_REPAIR_QUEUE, queue)
}

/// TCP_INFO as bytes (state at 0, options at 5, window scales at 6).
pub fn tcp_info(fd: RawFd) -> Result<[u8; 104]> {
    let mut b = [0u8; 104];
    sys::getsockopt_bytes(fd, libc::SOL_TCP, libc::TCP_INFO, &mut b)?;
    Ok(b)
}

/// Peeks `len` bytes of the selected queue; fails if fewer are there.
fn peek(fd: RawFd, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    let n = sys::recv_flags(fd, &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)?;
    if n != len {
        return Err(std::io::Error::other(format!("peeked {n} of {len} queued bytes")));
    }
    Ok(buf)
}

/// The receive queue, peeked from the start whatever SO_PEEK_OFF says
/// (put back as it was).
fn peek_recv(fd: RawFd, len: usize) -> Result<Vec<u8>> {
    let off = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    if off >= 0 {
        sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    }
    let r = peek(fd, len);
    if off >= 0 {
        sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, off)?;
    }
    r
}

/// Reads the state of a connection whose socket is in repair mode.
pub fn read(fd: RawFd) -> Result<TcpConnection> {
    let mut c = TcpConnection::default();
    select(fd, SEND_QUEUE)?;
    c.send_seq = sys::getsockopt_int(fd, libc::SOL_TCP, TCP_QUEUE_SEQ)? as u32;
    let outq = sys::socket_queued(fd, sys::SockQueue::Out)? as usize;
    c.unsent = sys::socket_queued(fd, sys::SockQueue::OutNotSent)? as u32;
    c.send_queue = peek(fd, outq)?;
    select(fd, RECV_QUEUE)?;
    c.recv_seq = sys::getsockopt_int(fd, libc::SOL_TCP, TCP_QUEUE_SEQ)? as u32;
    let inq = sys::socket_queued(fd, sys::SockQueue::In)? as usize;
    c.recv_queue = peek_recv(fd, inq)?;
    select(fd, NO_QUEUE)?;
    c.mss = sys::getsockopt_int(fd, libc::SOL_TCP, libc::TCP_MAXSEG)? as u32;
    let info = tcp_info(fd)?;
    c.options = info[5] as u32;
    (c.snd_wscale, c.rcv_wscale) = ((info[6] & 0xf) as u32, (info[6] >> 4) as u32);
    c.timestamp = sys::getsockopt_int(fd, libc::SOL_TCP, TCP_TIMESTAMP)? as u32;
    let mut w = [0u8; 20];
    sys::getsockopt_bytes(fd, libc::SOL_TCP, TCP_REPAIR_WINDOW, &mut w)?;
    let u = |i: usize| u32::from_ne_bytes(w[i * 4..i * 4 + 4].try_into().unwrap_or_default());
    c.window = Some(TcpWindow { snd_wl1: u(0), snd_wnd: u(1), max_window: u(2), rcv_wnd: u(3), rcv_wup: u(4) });
    Ok(c)
}

/// Before bind and connect: where both queues start (the saved sequence
/// numbers less what the queues held).
pub fn set_seqs(fd: RawFd, c: &TcpConnection) -> Result<()> {
    select(fd, SEND_QUEUE)?;
    sol_tcp(fd, TCP_QUEUE_SEQ, c.send_seq.wrapping_sub(c.send_queue.len() as u32) as i32)?;
    select(fd, RECV_QUEUE)?;
    sol_tcp(fd, TCP_QUEUE_SEQ, c.recv_seq.wrapping_sub(c.recv_queue.len() as u32) as i32)?;
    select(fd, NO_QUEUE)
}

/// After connect: the options negotiated at the handshake, and the
/// timestamp clock.
pub fn set_options(fd: RawFd, c: &TcpConnection) -> Result<()> {
    let mut opts: Vec<(u32, u32)> = vec![(TCPOPT_MSS, c.mss)];
    if c.options & OPT_WSCALE != 0 {
        opts.push((TCPOPT_WINDOW, c.snd_wscale | (c.rcv_wscale << 16)));
    }
    if c.options & OPT_SACK != 0 {
        opts.push((TCPOPT_SACK_PERM, 0));
    }
    if c.options & OPT_TIMESTAMPS != 0 {
        opts.push((TCPOPT_TIMESTAMP, 0));
    }
    let bytes: Vec<u8> = opts.iter().flat_map(|(k, v)| k.to_ne_bytes().into_iter().chain(v.to_ne_bytes())).collect();
    sys::setsockopt_bytes(fd, libc::SOL_TCP, TCP_REPAIR_OPTIONS, &bytes)?;
    sol_tcp(fd, TCP_TIMESTAMP, c.timestamp as i32)
}

/// Writes `data` into the selected queue, in chunks the socket takes.
fn fill(fd: RawFd, queue: i32, data: &[u8]) -> Result<()> {
    select(fd, queue)?;
    let mut at = 0;
    let mut chunk = data.len().max(1);
    while at < data.len() {
        let end = (at + chunk).min(data.len());
        match sys::send_flags(fd, &data[at..end], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
            Ok(n) => at += n,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOMEM | libc::EAGAIN)) && chunk > 4096 => chunk /= 2,
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("queued {at} of {} bytes: {e}", data.len()))),
        }
    }
    select(fd, NO_QUEUE)
}

/// After the options: the sent part of the send queue (as sent, not
/// acked) and the receive queue; then the window.
pub fn set_queues(fd: RawFd, c: &TcpConnection) -> Result<()> {
    let sent = c.send_queue.len() - (c.unsent as usize).min(c.send_queue.len());
    fill(fd, SEND_QUEUE, &c.send_queue[..sent])?;
    fill(fd, RECV_QUEUE, &c.recv_queue)?;
    if let Some(w) = &c.window {
        let b: Vec<u8> = [w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup].iter().flat_map(|v| v.to_ne_bytes()).collect();
        sys::setsockopt_bytes(fd, libc::SOL_TCP, TCP_REPAIR_WINDOW, &b)?;
    }
    Ok(())
}

/// Once repair is off: the part of the send queue never sent, through the
/// ordinary path (in repair mode a send counts as sent).
pub fn send_unsent(fd: RawFd, c: &TcpConnection) -> Result<()> {
    let unsent = &c.send_queue[c.send_queue.len() - (c.unsent as usize).min(c.send_queue.len())..];
    let mut at = 0;
    while at < unsent.len() {
        at += sys::send_flags(fd, &unsent[at..], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)?;
    }
    Ok(())
}
