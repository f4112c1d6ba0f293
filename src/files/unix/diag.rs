//! A small sock_diag client (NETLINK_SOCK_DIAG, UNIX_DIAG): what the
//! kernel tells about every unix socket of rcr's network namespace: name,
//! bound file, peer, pending connections, queue lengths, shutdown state.
use crate::sys;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::os::fd::AsRawFd;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const SHOW_NAME: u32 = 1;
const SHOW_VFS: u32 = 2;
const SHOW_PEER: u32 = 4;
const SHOW_ICONS: u32 = 8;
const SHOW_RQLEN: u32 = 0x10;
const SHOW_MEMINFO: u32 = 0x20;
const ATTR_NAME: u16 = 0;
const ATTR_VFS: u16 = 1;
const ATTR_PEER: u16 = 2;
const ATTR_ICONS: u16 = 3;
const ATTR_RQLEN: u16 = 4;
const ATTR_MEMINFO: u16 = 5;
const ATTR_SHUTDOWN: u16 = 6;
/// Index of sk_wmem_alloc in UNIX_DIAG_MEMINFO.
const MEMINFO_WMEM_ALLOC: usize = 2;

/// What sock_diag reports about one unix socket.
#[derive(Debug, Clone, Default)]
pub struct Diag {
    pub state: u8,
    pub inode: u64,
    pub name: Vec<u8>,
    /// The bound file: (inode, device as st_dev encodes it).
    pub vfs: Option<(u64, u64)>,
    pub peer: u64,
    /// Listening: the client sockets of the connections not accepted yet.
    pub icons: Vec<u64>,
    /// Listening: (pending connections, backlog); else (queued bytes, sent bytes not yet read).
    pub rqlen: (u32, u32),
    /// Bytes this socket sent that nobody has read yet.
    pub wmem: u32,
    pub shutdown: u8,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_ne_bytes(s.try_into().unwrap_or_default()))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2).map_or(0, |s| u16::from_ne_bytes(s.try_into().unwrap_or_default()))
}

/// The kernel's dev_t (major << 20 | minor) as stat's st_dev.
fn user_dev(kdev: u32) -> u64 {
    libc::makedev(kdev >> 20, kdev & 0xfffff)
}

/// Every unix socket of the namespace, by inode.
pub fn all() -> Result<HashMap<u64, Diag>> {
    let nl = sys::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_SOCK_DIAG).context("opening a NETLINK_SOCK_DIAG socket")?;
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id
    req.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&0u32.to_ne_bytes()); // any inode
    let show = SHOW_NAME | SHOW_VFS | SHOW_PEER | SHOW_ICONS | SHOW_RQLEN | SHOW_MEMINFO;
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // no cookie
    sys::send_all(nl.as_raw_fd(), &req).context("sock_diag request")?;
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = sys::recv(nl.as_raw_fd(), &mut buf).context("sock_diag answer")?;
        let mut at = 0;
        while at + 16 <= n {
            let len = u32_at(&buf, at) as usize;
            let ty = u16_at(&buf, at + 4);
            if len < 16 || at + len > n {
                bail!("sock_diag: malformed answer (message of {len} bytes at {at} of {n})");
            }
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => bail!("sock_diag: error {}", -(u32_at(&buf, at + 16) as i32)),
                _ => {
                    let d = parse(&buf[at + 16..at + len]);
                    out.insert(d.inode, d);
                }
            }
            at += (len + 3) & !3;
        }
    }
}

/// One unix_diag_msg and its attributes.
fn parse(m: &[u8]) -> Diag {
    let mut d = Diag { state: m[2], inode: u32_at(m, 4) as u64, ..Diag::default() };
    let mut at = 16;
    while at + 4 <= m.len() {
        let len = u16_at(m, at) as usize;
        if len < 4 || at + len > m.len() {
            break;
        }
        let v = &m[at + 4..at + len];
        match u16_at(m, at + 2) {
            ATTR_NAME => d.name = path_name(v),
            ATTR_VFS => d.vfs = Some((u32_at(v, 0) as u64, user_dev(u32_at(v, 4)))),
            ATTR_PEER => d.peer = u32_at(v, 0) as u64,
            ATTR_ICONS => d.icons = v.chunks_exact(4).map(|c| u32_at(c, 0) as u64).collect(),
            ATTR_RQLEN => d.rqlen = (u32_at(v, 0), u32_at(v, 4)),
            ATTR_MEMINFO => d.wmem = u32_at(v, MEMINFO_WMEM_ALLOC * 4),
            ATTR_SHUTDOWN => d.shutdown = v.first().copied().unwrap_or(0),
            _ => {}
        }
        at += (len + 3) & !3;
    }
    d
}

/// A name as sock_diag reports it: a path ends at its first NUL (the
/// length given to bind may count the terminator); an abstract name keeps
/// every byte.
fn path_name(v: &[u8]) -> Vec<u8> {
    match v.first() {
        Some(&c) if c != 0 => v[..v.iter().position(|&c| c == 0).unwrap_or(v.len())].to_vec(),
        _ => v.to_vec(),
    }
}

/// A live socket bound to the file (inode `ino` on device `dev`), if any.
pub fn bound_to(ino: u64, dev: u64) -> Result<Option<u64>> {
    Ok(all()?.values().find(|d| d.vfs == Some((ino, dev))).map(|d| d.inode))
}
