//! Restore side of unix sockets, in rcr before the tree is forked:
//!
//! 1. listening sockets: socket, bind (a stale socket file at the path is
//!    unlinked first, unless a live socket is still bound to it), listen;
//! 2. sockets that are not connected: socket, bind if named;
//! 3. connected pairs: socketpair when neither end has a name; otherwise
//!    the client connects to the server end's name and the server end is
//!    accepted (from the tree's listener, or from a temporary one), so
//!    getsockname of the accepted end names the listener as before. A
//!    datagram pair is a socketpair with each end bound to its name. A
//!    stream or seqpacket socket whose peer was closed gets a stand-in
//!    peer, closed at the end (a datagram socket whose peer was closed
//!    comes back unconnected);
//! 4. pending connections: each client connects to its listener, in queue
//!    order, after every accepted connection was accepted;
//! 5. datagram sockets connected one way (or, with --ext-unix-sk, to a
//!    socket outside the tree): connect to the peer's name;
//! 6. SO_SNDBUF, SO_RCVBUF;
//! 7. queued messages, sent again in order from the peer (datagrams from
//!    the socket that had the sender's name, or from an unnamed socket);
//! 8. stand-in peers closed, SO_PASSCRED (a socket with it set that
//!    sends gets bound to a name), SO_PEEK_OFF, shutdowns.
use super::{diag, show_name, ESTABLISHED, LISTEN};
use crate::files::fds::CreateCx;
use crate::images::pb::{file_desc::Kind, FileDesc, UnixMessage, UnixSocket};
use crate::sys;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

const DGRAM: u32 = libc::SOCK_DGRAM as u32;

/// Where a queued message is sent from: a socket, and the name to send it
/// to (None: the socket's connected peer).
type Route<'s> = (RawFd, Option<&'s [u8]>);

struct Builder<'a> {
    by_ino: HashMap<u64, (&'a FileDesc, &'a UnixSocket)>,
    fds: HashMap<u64, OwnedFd>,
    /// Stand-in peers of sockets whose peer was closed, by the socket's inode.
    feeders: HashMap<u64, OwnedFd>,
    ext: bool,
}

/// Recreates every unix socket the descriptions refer to.
pub fn create(descs: &[&FileDesc], cx: &mut CreateCx) -> Result<()> {
    let mut b = Builder { by_ino: HashMap::new(), fds: HashMap::new(), feeders: HashMap::new(), ext: cx.images.ext_unix_sk };
    for d in descs {
        if let Some(Kind::Unix(s)) = &d.kind {
            b.by_ino.insert(s.inode, (d, s));
        }
    }
    let mut socks: Vec<&UnixSocket> = b.by_ino.values().map(|(_, s)| *s).collect();
    socks.sort_by_key(|s| s.inode);
    let pending: Vec<u64> = socks.iter().flat_map(|s| s.pending.iter().copied()).collect();
    for s in socks.iter().filter(|s| s.state == LISTEN) {
        let fd = b.plain(s)?;
        sys::listen(fd.as_raw_fd(), s.backlog as i32).with_context(|| b.what(s, &format!("listen({})", s.backlog)))?;
        b.fds.insert(s.inode, fd);
    }
    for s in socks.iter().filter(|s| s.state != LISTEN && s.state != ESTABLISHED) {
        let fd = b.plain(s)?;
        b.fds.insert(s.inode, fd);
    }
    for s in socks.iter().filter(|s| s.state == ESTABLISHED && !pending.contains(&s.inode)) {
        b.connected(s)?;
    }
    for l in socks.iter().filter(|s| s.state == LISTEN) {
        b.pending(l)?;
    }
    for s in &socks {
        b.set_options(s)?;
    }
    for s in &socks {
        b.refill(s)?;
    }
    b.feeders.clear();
    for s in &socks {
        b.finish(s)?;
    }
    for s in &socks {
        let fd = b.fds.remove(&s.inode).ok_or_else(|| anyhow!("{}: was not created", b.what(s, "")))?;
        cx.out.insert(b.by_ino[&s.inode].0.id, fd);
    }
    Ok(())
}

impl Builder<'_> {
    /// "fds.img: description N (socket:[I])" and a step, for errors.
    fn what(&self, s: &UnixSocket, step: &str) -> String {
        let id = self.by_ino.get(&s.inode).map_or(0, |(d, _)| d.id);
        format!("fds.img: description {id} (unix {} socket:[{}] {}): {step}", super::type_name(s.r#type), s.inode, show_name(&s.name))
    }

    fn new_socket(&self, s: &UnixSocket) -> Result<OwnedFd> {
        sys::socket(libc::AF_UNIX, s.r#type as i32 | libc::SOCK_NONBLOCK, 0).with_context(|| self.what(s, "socket"))
    }

    /// A new socket bound to the socket's name, if it has one.
    fn plain(&self, s: &UnixSocket) -> Result<OwnedFd> {
        let fd = self.new_socket(s)?;
        if !s.name.is_empty() {
            bind(fd.as_raw_fd(), s).with_context(|| self.what(s, "bind"))?;
        }
        Ok(fd)
    }

    /// A connected socket (not a pending client): with its peer, a
    /// stand-in for a closed peer, or alone (connected later by name).
    fn connected(&mut self, s: &UnixSocket) -> Result<()> {
        if self.fds.contains_key(&s.inode) {
            return Ok(());
        }
        let peer = self.by_ino.get(&s.peer_inode).map(|(_, p)| *p).filter(|p| p.peer_inode == s.inode);
        if s.peer_inode == 0 && s.r#type == DGRAM {
            // Connecting a datagram socket marks its target connected too;
            // a datagram socket without a peer is simply not connected.
            let fd = self.plain(s)?;
            self.fds.insert(s.inode, fd);
        } else if s.peer_inode == 0 {
            let (mine, feeder) = self.pair(s, None)?;
            self.fds.insert(s.inode, mine);
            self.feeders.insert(s.inode, feeder);
        } else if let Some(p) = peer {
            let (a, b) = self.pair(s, Some(p))?;
            self.fds.insert(s.inode, a);
            self.fds.insert(p.inode, b);
        } else {
            let fd = self.plain(s)?;
            self.fds.insert(s.inode, fd);
            self.connect_later(s)?;
        }
        Ok(())
    }

    /// Two connected sockets, `s` and `p` (or a stand-in when `p` is None).
    fn pair(&self, s: &UnixSocket, p: Option<&UnixSocket>) -> Result<(OwnedFd, OwnedFd)> {
        let pname: &[u8] = p.map_or(&[], |p| &p.name);
        if s.r#type == DGRAM || (s.name.is_empty() && pname.is_empty()) {
            let (a, b) = sys::socketpair(s.r#type as i32 | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC).with_context(|| self.what(s, "socketpair"))?;
            for (fd, x) in [(&a, Some(s)), (&b, p)] {
                if let Some(x) = x.filter(|x| !x.name.is_empty()) {
                    bind(fd.as_raw_fd(), x).with_context(|| self.what(x, "bind"))?;
                }
            }
            return Ok((a, b));
        }
        // The end with the name (of both, the newer: accept() makes the
        // server end after the client) is the accepted one.
        let s_serves = pname.is_empty() || (!s.name.is_empty() && p.is_some_and(|p| s.inode > p.inode));
        let (server, client) = if s_serves { (s, p) } else { (p.unwrap_or(s), Some(s)) };
        let (c, a) = self.via_listener(server, client)?;
        Ok(if s_serves { (a, c) } else { (c, a) })
    }

    /// Connects `client` (or a stand-in) to the name of `server` and
    /// accepts the connection from the tree's listener of that name, or a
    /// temporary one. Returns (client end, accepted end).
    fn via_listener(&self, server: &UnixSocket, client: Option<&UnixSocket>) -> Result<(OwnedFd, OwnedFd)> {
        let c = match client {
            Some(c) if c.inode != server.inode => self.plain(c)?,
            _ => self.new_socket(server)?,
        };
        let tree_listener =
            self.by_ino.values().map(|(_, l)| *l).find(|l| l.state == LISTEN && l.name == server.name && l.r#type == server.r#type);
        let temp;
        let listener = match tree_listener.and_then(|l| self.fds.get(&l.inode)) {
            Some(l) => l,
            None => {
                temp = self.plain(server)?;
                sys::listen(temp.as_raw_fd(), 1).with_context(|| self.what(server, "listen (temporary listener)"))?;
                &temp
            }
        };
        sys::unix_connect(c.as_raw_fd(), &server.name).with_context(|| self.what(server, &format!("connecting to {}", show_name(&server.name))))?;
        let a = sys::accept(listener.as_raw_fd()).with_context(|| self.what(server, "accept"))?;
        sys::set_status_flags(a.as_raw_fd(), libc::O_RDWR | libc::O_NONBLOCK).with_context(|| self.what(server, "F_SETFL"))?;
        Ok((c, a))
    }

    /// Connects the clients of the connections pending on listener `l`, in
    /// queue order.
    fn pending(&mut self, l: &UnixSocket) -> Result<()> {
        for c in &l.pending {
            let (_, cs) = *self.by_ino.get(c).ok_or_else(|| anyhow!("{}: pending client socket:[{c}] is not in fds.img", self.what(l, "")))?;
            let fd = self.plain(cs)?;
            let step = format!("connecting to {} (a connection not accepted yet)", show_name(&l.name));
            sys::unix_connect(fd.as_raw_fd(), &l.name).with_context(|| self.what(cs, &step))?;
            self.fds.insert(cs.inode, fd);
        }
        Ok(())
    }

    /// A datagram socket connected one way, to a socket of the tree or
    /// (--ext-unix-sk) outside it: connect to its name.
    fn connect_later(&self, s: &UnixSocket) -> Result<()> {
        let name = match self.by_ino.get(&s.peer_inode) {
            Some((_, p)) => p.name.clone(),
            None if !self.ext => bail!(
                "{}",
                self.what(s, &format!("connected to {} outside the dumped tree; restore it with --ext-unix-sk to connect to that name again", show_name(&s.peer_name)))
            ),
            None => s.peer_name.clone(),
        };
        if s.r#type != DGRAM || name.is_empty() {
            bail!("{}", self.what(s, &format!("its peer socket:[{}] cannot be reached by name", s.peer_inode)));
        }
        sys::unix_connect(self.fd(s)?, &name).with_context(|| self.what(s, &format!("connecting to {}", show_name(&name))))
    }

    fn fd(&self, s: &UnixSocket) -> Result<RawFd> {
        self.fds.get(&s.inode).map(|f| f.as_raw_fd()).ok_or_else(|| anyhow!("{}", self.what(s, "not created yet")))
    }

    fn set_options(&self, s: &UnixSocket) -> Result<()> {
        let fd = self.fd(s)?;
        let set = |o, v, name: &str| sys::setsockopt_int(fd, libc::SOL_SOCKET, o, v).with_context(|| self.what(s, &format!("setting {name} {v}")));
        for (get, force, want, name) in [(libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, s.sndbuf, "SO_SNDBUF"), (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, s.rcvbuf, "SO_RCVBUF")] {
            if want > 0 && sys::getsockopt_int(fd, libc::SOL_SOCKET, get).ok() != Some(want) {
                set(force, want / 2, name).or_else(|_| set(get, want / 2, name))?;
            }
        }
        Ok(())
    }

    /// Sends the socket's queued messages again, in order.
    fn refill(&self, s: &UnixSocket) -> Result<()> {
        for (i, m) in s.queue.iter().enumerate() {
            let temp;
            let (from, to) = match self.sender(s, m)? {
                Some(x) => x,
                None => {
                    temp = sys::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0).with_context(|| self.what(s, "socket"))?;
                    (temp.as_raw_fd(), Some(s.name.as_slice()))
                }
            };
            send_all(from, &m.data, to, s.r#type == DGRAM || s.r#type == libc::SOCK_SEQPACKET as u32)
                .with_context(|| self.what(s, &format!("sending queued message {} of {} ({} bytes) again", i + 1, s.queue.len(), m.data.len())))?;
        }
        Ok(())
    }

    /// Who sends a queued message again, and to which name (None: its
    /// connected peer). None: a temporary unnamed socket, to `s`'s name.
    fn sender<'s>(&self, s: &'s UnixSocket, m: &UnixMessage) -> Result<Option<Route<'s>>> {
        if let Some(f) = self.feeders.get(&s.inode) {
            return Ok(Some((f.as_raw_fd(), None)));
        }
        let by_name = || self.by_ino.values().map(|(_, o)| *o).find(|o| o.name == m.sender && o.r#type == s.r#type && o.state != LISTEN);
        let from = if s.r#type != DGRAM {
            self.by_ino.get(&s.peer_inode).map(|(_, p)| *p)
        } else if !m.sender.is_empty() {
            Some(by_name().ok_or_else(|| anyhow!("{}", self.what(s, &format!("no socket named {} to send a queued datagram from", show_name(&m.sender)))))?)
        } else {
            self.by_ino.get(&s.peer_inode).map(|(_, p)| *p)
        };
        let Some(o) = from else {
            if s.r#type != DGRAM || s.name.is_empty() {
                bail!("{}", self.what(s, "no socket to send its queued data from"));
            }
            return Ok(None);
        };
        let to = if o.peer_inode == s.inode { None } else { Some(s.name.as_slice()) };
        if to.is_some_and(|n| n.is_empty()) {
            bail!("{}", self.what(s, "it has no name to send its queued datagrams to"));
        }
        Ok(Some((self.fd(o)?, to)))
    }

    /// SO_PASSCRED, SO_PEEK_OFF and the shutdown state, once all data is
    /// in (a socket with SO_PASSCRED that sends gets bound to a name).
    fn finish(&self, s: &UnixSocket) -> Result<()> {
        let fd = self.fd(s)?;
        if s.passcred {
            sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1).with_context(|| self.what(s, "setting SO_PASSCRED"))?;
        }
        if s.peek_off >= 0 {
            sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, s.peek_off).with_context(|| self.what(s, "setting SO_PEEK_OFF"))?;
        }
        let how = match s.shutdown & 3 {
            1 => libc::SHUT_RD,
            2 => libc::SHUT_WR,
            3 => libc::SHUT_RDWR,
            _ => return Ok(()),
        };
        match sys::shutdown(fd, how) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
            r => r.with_context(|| self.what(s, &format!("shutdown({how})"))),
        }
    }
}

/// Sends `data` (one message when `records`), never blocking.
fn send_all(fd: RawFd, data: &[u8], to: Option<&[u8]>, records: bool) -> Result<()> {
    let mut off = 0;
    loop {
        let n = sys::unix_send(fd, &data[off..], to)?;
        off += n;
        if off >= data.len() {
            return Ok(());
        }
        if records || n == 0 {
            bail!("sent {off} of {} bytes", data.len());
        }
    }
}

/// Binds `fd` to the socket's name: a stale socket file at the path is
/// removed first (unless a live socket is bound to it); the file then gets
/// its mode and owner back.
fn bind(fd: RawFd, s: &UnixSocket) -> Result<()> {
    let is_path = s.name.first().is_some_and(|&c| c != 0);
    let path = std::path::Path::new(OsStr::from_bytes(&s.name));
    if is_path {
        clear_path(path)?;
    }
    sys::unix_bind(fd, &s.name).map_err(|e| {
        if e.raw_os_error() == Some(libc::EADDRINUSE) {
            anyhow!("{} is in use by another socket (is the dumped process still running, e.g. after dump -R?)", show_name(&s.name))
        } else {
            anyhow!("binding to {}: {e}", show_name(&s.name))
        }
    })?;
    let Some(f) = s.file.as_ref().filter(|_| is_path) else { return Ok(()) };
    if f.unlinked {
        return std::fs::remove_file(path).with_context(|| format!("unlinking {} (it was unlinked at dump time)", path.display()));
    }
    std::os::unix::fs::lchown(path, Some(f.uid), Some(f.gid)).with_context(|| format!("chown {}", path.display()))?;
    // Not through a symlink, should the path have been replaced since bind.
    let mode = nix::sys::stat::Mode::from_bits_truncate(f.mode & 0o7777);
    nix::sys::stat::fchmodat(nix::fcntl::AT_FDCWD, path, mode, nix::sys::stat::FchmodatFlags::NoFollowSymlink).with_context(|| format!("chmod {}", path.display()))
}

/// Removes a socket file left at `path` by the dumped process; refuses
/// anything else there, and a socket file a live socket is bound to.
fn clear_path(path: &std::path::Path) -> Result<()> {
    let md = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        r => r.with_context(|| format!("stat {}", path.display()))?,
    };
    if !md.file_type().is_socket() {
        bail!("{} exists and is a {}, not a socket file; rcr will not remove it", path.display(), crate::files::file_type(md.mode()));
    }
    if let Some(live) = diag::bound_to(md.ino(), md.dev())? {
        bail!("{} is still bound by a live socket (socket:[{live}]): is the dumped process still running (dump -R)?", path.display());
    }
    std::fs::remove_file(path).with_context(|| format!("removing the stale socket file {}", path.display()))
}
