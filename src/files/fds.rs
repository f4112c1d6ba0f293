//! File descriptors and the open file descriptions behind them.
//!
//! Dump: every fd of every process is received from the parasite (rcr
//! then holds the task's own open file), classified by its /proc link and
//! fstat ([`classify`]), and recorded as an [`FdEntry`] (number,
//! close-on-exec) pointing at a [`FileDesc`] in fds.img. Two fds, in one
//! process or in several, that refer to one open file description (kcmp
//! KCMP_FILE on rcr's copies) point at one entry, which its kind's module
//! describes once. A kind rcr cannot carry is refused with the fd number,
//! its link and a sentence.
//!
//! Restore: rcr creates every description before forking the tree
//! ([`create_all`], each kind's `create`), each at its own fd number in
//! the tree where it can (so a tree using most of rcr's fd limit fits),
//! else above all the tree's numbers; every process inherits them all,
//! dups its own to their numbers ([`place`]), runs the per-process steps that need its fd numbers
//! ([`after_fds`]: timers armed, epoll registrations) and closes the rest. So what was
//! shared is shared again: offsets, status flags, pipe buffers, sockets.
use super::pipe::PipeTable;
use super::{epoll, eventfd, fifo, ghost, inet, inotify, memfd, pipe, reg, signalfd, sysv, timerfd, tty, unix, FileTable};
use crate::images::pb::{file_desc::Kind, FdEntry, FileDesc, MemFile, PipeEntry};
use crate::images::{ImageDir, Kind as ImageKind};
use crate::proc::{self, FdInfo};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Status flags restored with F_SETFL when the created file lacks them.
const SETFL_FLAGS: u32 = (libc::O_NONBLOCK | libc::O_APPEND | libc::O_DIRECT | libc::O_NOATIME) as u32;

/// One fd of a frozen task, as the dump sees it.
#[derive(Debug)]
pub struct Fd<'a> {
    pub pid: i32,
    pub fd: i32,
    /// readlink of /proc/PID/fd/N: a path, `pipe:[N]`, `anon_inode:[eventfd]`...
    pub link: String,
    /// rcr's copy of the task's open file (passed over SCM_RIGHTS).
    pub file: &'a File,
    pub md: std::fs::Metadata,
    pub info: FdInfo,
}

impl Fd<'_> {
    /// "pid P fd N (LINK)", for messages.
    pub fn what(&self) -> String {
        format!("pid {} fd {} ({})", self.pid, self.fd, self.link)
    }

    pub fn link_path(&self) -> PathBuf {
        proc::path(self.pid, &format!("fd/{}", self.fd))
    }

    /// Access mode and status flags, without O_CLOEXEC.
    pub fn flags(&self) -> u32 {
        self.info.flags & !(libc::O_CLOEXEC as u32)
    }

    /// The error for a file rcr cannot carry: fd, link, and why.
    pub fn refuse(&self, why: &str) -> anyhow::Error {
        anyhow!("{}: {why}; rcr cannot carry it", self.what())
    }
}

/// What kind of file an fd refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Reg,
    Pipe,
    Fifo,
    Socket,
    /// A terminal: pty master or slave.
    Tty,
    EventFd,
    Epoll,
    SignalFd,
    TimerFd,
    Inotify,
    Memfd,
    Ghost,
    Unknown,
}

/// Classifies a file by its /proc link and its stat.
pub fn classify(link: &str, md: &std::fs::Metadata) -> Class {
    let fmt = md.mode() & libc::S_IFMT;
    match link {
        l if l.starts_with("pipe:[") => Class::Pipe,
        l if l.starts_with("socket:[") => Class::Socket,
        _ if tty::is_tty(md) => Class::Tty,
        "anon_inode:[eventfd]" => Class::EventFd,
        "anon_inode:[eventpoll]" => Class::Epoll,
        "anon_inode:[signalfd]" => Class::SignalFd,
        "anon_inode:[timerfd]" => Class::TimerFd,
        "anon_inode:inotify" => Class::Inotify,
        l if l.starts_with("/memfd:") && fmt == libc::S_IFREG => Class::Memfd,
        _ if fmt == libc::S_IFIFO => Class::Fifo,
        l if l.ends_with(" (deleted)") && fmt == libc::S_IFREG => Class::Ghost,
        _ if reg::is_reg(md) => Class::Reg,
        _ => Class::Unknown,
    }
}

/// A few words on a file rcr does not know, for refusals.
pub fn describe_kind(md: &std::fs::Metadata, link: &str) -> String {
    if let Some(rest) = link.strip_prefix("anon_inode:") {
        return format!("anonymous inode ({})", rest.trim_matches(|c| c == '[' || c == ']'));
    }
    if md.mode() & libc::S_IFMT == libc::S_IFCHR {
        return format!("character device {}:{}", libc::major(md.rdev()), libc::minor(md.rdev()));
    }
    if md.mode() & libc::S_IFMT == libc::S_IFBLK {
        return format!("block device {}:{}", libc::major(md.rdev()), libc::minor(md.rdev()));
    }
    super::file_type(md.mode()).to_string()
}

/// What the dump of a tree collects about files, shared by its processes.
#[derive(Debug, Default)]
pub struct DumpCx {
    /// Path-addressable files (fds, mappings, exe links).
    pub files: FileTable,
    pub descs: Vec<FileDesc>,
    /// rcr's copy of each description, same index as `descs` (for kcmp).
    held: Vec<File>,
    /// Indices into `descs` by (st_dev, st_ino) of the file, each list in
    /// kcmp order of the descriptions (all anonymous inodes share one
    /// inode number: a binary search keeps the dedupe O(log n) kcmp calls).
    by_inode: HashMap<(u64, u64), Vec<usize>>,
    pub pipes: PipeTable,
    pub unix: unix::Table,
    pub epoll: epoll::Table,
    pub memfd: memfd::Table,
    pub fifo: fifo::Table,
    /// TCP and UDP: the network lock of the connections carried.
    pub inet: inet::Table,
    pub pty: tty::pty::Table,
    /// `rcr dump -j`: fds on the job's terminal (outside the tree) are allowed.
    pub shell_job: bool,
    /// The controlling terminal of the tree's session, if that session is
    /// outside the tree (set with or without -j, to refuse helpfully).
    pub job: Option<tty::shell::Job>,
    /// `rcr dump --tcp-established`: established TCP connections are carried.
    pub tcp_established: bool,
}

impl DumpCx {
    /// Where the description `file` refers to is (Ok: the id of the
    /// recorded one) or would go (Err: its place in the inode's list).
    fn find(&self, file: &File, key: (u64, u64)) -> Result<std::result::Result<u32, usize>> {
        let list = self.by_inode.get(&key).map(Vec::as_slice).unwrap_or_default();
        let (mut lo, mut hi) = (0, list.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let i = list[mid];
            match crate::sys::order_descriptions(self.held[i].as_raw_fd(), file.as_raw_fd()).context("kcmp")? {
                std::cmp::Ordering::Equal => return Ok(Ok(self.descs[i].id)),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(Err(lo))
    }

    /// Records a new description at `place` (from [`DumpCx::find`]).
    fn add(&mut self, mut d: FileDesc, file: File, key: (u64, u64), place: usize) -> u32 {
        d.id = self.descs.len() as u32 + 1;
        self.by_inode.entry(key).or_default().insert(place, self.descs.len());
        self.descs.push(d);
        self.held.push(file);
        self.descs.len() as u32
    }
}

/// The /proc link of each fd of `fds`, read once for the whole dump;
/// refuses, before the parasite sends them over, fds it cannot send:
/// io_uring instances (the kernel refuses them in SCM_RIGHTS).
pub fn precheck(pid: i32, fds: &[i32]) -> Result<Vec<String>> {
    let mut links = Vec::with_capacity(fds.len());
    for &fd in fds {
        let link = std::fs::read_link(proc::path(pid, &format!("fd/{fd}"))).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
        if link == "anon_inode:[io_uring]" {
            bail!("pid {pid} fd {fd} ({link}): it is an io_uring instance (its rings and pending requests cannot be carried); rcr cannot carry it");
        }
        links.push(link);
    }
    Ok(links)
}

/// Describes the fds `fds` of `pid` (number, /proc link from [`precheck`],
/// the open file as the task holds it); fails on the first fd rcr cannot
/// carry.
pub fn dump_fds(pid: i32, fds: Vec<(i32, String, File)>, cx: &mut DumpCx) -> Result<Vec<FdEntry>> {
    let mut out = Vec::with_capacity(fds.len());
    for (fd, link, file) in fds {
        let info = proc::fdinfo(pid, fd)?;
        let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
        let md = file.metadata().with_context(|| format!("pid {pid} fd {fd}: fstat"))?;
        let key = (md.dev(), md.ino());
        let place = match cx.find(&file, key)? {
            Ok(desc_id) => {
                out.push(FdEntry { fd: fd as u32, cloexec, desc_id });
                continue;
            }
            Err(place) => place,
        };
        let f = Fd { pid, fd, link, file: &file, md, info };
        let kind = dump_kind(&f, cx)?;
        let desc = FileDesc { id: 0, flags: f.flags(), pos: f.info.pos, link: f.link.clone(), kind: Some(kind) };
        let desc_id = cx.add(desc, file, key, place);
        out.push(FdEntry { fd: fd as u32, cloexec, desc_id });
    }
    Ok(out)
}

fn dump_kind(f: &Fd, cx: &mut DumpCx) -> Result<Kind> {
    refuse_special_fs(f)?;
    match classify(&f.link, &f.md) {
        Class::Reg => reg::dump(f, &mut cx.files),
        Class::Pipe => pipe::dump(f, &mut cx.pipes),
        Class::Fifo => fifo::dump(f, cx),
        Class::Socket => socket(f, cx),
        Class::Tty => tty::dump(f, cx),
        Class::EventFd => eventfd::dump(f),
        Class::Epoll => epoll::dump(f, cx),
        Class::SignalFd => signalfd::dump(f),
        Class::TimerFd => timerfd::dump(f),
        Class::Inotify => inotify::dump(f, cx),
        Class::Memfd => memfd::dump(f, cx),
        Class::Ghost => ghost::dump(f, cx),
        Class::Unknown => Err(f.refuse(&format!("it is a {}", describe_kind(&f.md, &f.link)))),
    }
}

/// A socket: TCP and UDP to [`inet`], the rest to [`unix`] (which refuses
/// other families).
fn socket(f: &Fd, cx: &mut DumpCx) -> Result<Kind> {
    let kind = inet::sock_kind(f.file.as_raw_fd()).with_context(|| format!("{}: getsockopt SO_DOMAIN/SO_TYPE/SO_PROTOCOL", f.what()))?;
    if inet::handles(kind) {
        inet::dump(f, cx)
    } else {
        unix::dump(f, cx)
    }
}

/// Files of filesystems whose objects rcr cannot carry, whatever their
/// stat says (a POSIX message queue is S_IFREG): why, or None.
pub fn special_fs(file: &File) -> Option<&'static str> {
    const MQUEUE_MAGIC: i64 = 0x1980_0202;
    const SECRETMEM_MAGIC: i64 = 0x5345_434d;
    const AIO_RING_MAGIC: i64 = 0xa10a_10a1;
    match nix::sys::statfs::fstatfs(file).ok()?.filesystem_type().0 as i64 {
        MQUEUE_MAGIC => Some("it is a POSIX message queue (mqueue filesystem): rcr does not carry IPC objects"),
        SECRETMEM_MAGIC => Some("it is a memfd_secret area, whose content the kernel hides from everyone"),
        AIO_RING_MAGIC => Some("it is an AIO ring"),
        _ => None,
    }
}

fn refuse_special_fs(f: &Fd) -> Result<()> {
    special_fs(f.file).map_or(Ok(()), |why| Err(f.refuse(why)))
}

/// Checks that need the whole tree, once every process was dumped
/// (`tree`: the dumped PIDs): peers and other ends held outside it.
pub fn finish(cx: &mut DumpCx, tree: &[i32]) -> Result<()> {
    cx.pipes.check_complete(tree)?;
    unix::finish(cx, tree)?;
    epoll::finish(cx, tree)?;
    tty::pty::finish(cx, tree)?;
    sysv::check_tree(tree)?;
    Ok(())
}

/// Writes the tree-wide file images: files.img, fds.img, pipes.img and
/// what the kinds keep apart.
pub fn write_images(dir: &ImageDir, cx: &DumpCx) -> Result<()> {
    dir.write_all(ImageKind::Files, None, &cx.files.files)?;
    dir.write_all(ImageKind::Fds, None, &cx.descs)?;
    dir.write_all(ImageKind::Pipes, None, &cx.pipes.pipes)?;
    dir.write_all(ImageKind::MemFiles, None, &cx.memfd.entries())?;
    Ok(())
}

/// The tree-wide file images, loaded for restore.
#[derive(Debug, Default)]
pub struct Images {
    pub descs: Vec<FileDesc>,
    pub pipes: Vec<PipeEntry>,
    /// `rcr restore --ext-unix-sk`: reconnect sockets to peers outside the tree.
    pub ext_unix_sk: bool,
    /// `rcr restore -j`: the job's terminal is rcr's own.
    pub shell_job: bool,
    /// `rcr restore --tcp-established`.
    pub tcp_established: bool,
    /// Inodes of memfds and deleted files (memfiles.img), ids from 1.
    pub mem_files: Vec<MemFile>,
}

impl Images {
    pub fn load(dir: &ImageDir) -> Result<Images> {
        let descs: Vec<FileDesc> = dir.read_all(ImageKind::Fds, None)?;
        for (i, d) in descs.iter().enumerate() {
            if d.id as usize != i + 1 || d.kind.is_none() {
                bail!("fds.img: entry {i} has id {} and kind {:?}; ids must run from 1 and every entry needs a kind", d.id, d.kind);
            }
        }
        let mem_files = if dir.stat_file(&ImageDir::name(ImageKind::MemFiles, None)).is_some() { memfd::load(dir.read_all(ImageKind::MemFiles, None)?)? } else { Vec::new() };
        Ok(Images { descs, pipes: dir.read_all(ImageKind::Pipes, None)?, mem_files, ..Images::default() })
    }

    pub fn get(&self, id: u32) -> Option<&FileDesc> {
        self.descs.get((id as usize).checked_sub(1)?)
    }

    /// Checks, before anything is created, that every fd of `pid` refers
    /// to a known description.
    pub fn check_fds(&self, pid: i32, fds: &[FdEntry]) -> Result<()> {
        if let Some(e) = fds.iter().find(|e| self.get(e.desc_id).is_none()) {
            bail!("fdinfo-{pid}.img: fd {} refers to unknown description {} (fds.img)", e.fd, e.desc_id);
        }
        Ok(())
    }
}

/// Checks that the files the descriptions need are still as saved.
pub fn validate(images: &Images, files: &FileTable) -> Result<()> {
    inet::validate(images)?;
    tty::shell::check(images)?;
    reg::check_all(files, &images.descs)
}

/// What the kinds' `create` functions share: the images, and the fds
/// created so far by description id.
#[derive(Debug)]
pub struct CreateCx<'a> {
    pub images: &'a Images,
    pub files: &'a FileTable,
    /// The recreated inodes of memfds and deleted files, by memfiles.img id.
    pub mem: &'a HashMap<u32, RawFd>,
    pub out: HashMap<u32, OwnedFd>,
    /// Established TCP connections, still in repair mode.
    pub tcp: inet::Repaired,
}

/// Creates every description (in rcr, before forking the tree), with its
/// status flags. Each goes to its `homes` number (its fd number in a
/// process of the tree; [`homes`]) when rcr can make it free, so a tree
/// with as many fds as rcr's limit allows still fits, else to an
/// inheritable number >= `min`. `mem`: the inodes [`memfd::create_inodes`]
/// recreated. Also returns rcr's copies of the established TCP connections,
/// in repair mode until the tree runs.
pub fn create_all(images: &Images, files: &FileTable, mem: &HashMap<u32, RawFd>, min: RawFd, homes: &HashMap<u32, RawFd>) -> Result<(HashMap<u32, RawFd>, inet::Repaired)> {
    let mut cx = CreateCx { images, files, mem, out: HashMap::new(), tcp: inet::Repaired::default() };
    let of = |c: fn(&Kind) -> bool| -> Vec<&FileDesc> { images.descs.iter().filter(|d| d.kind.as_ref().is_some_and(c)).collect() };
    reg::create(&of(|k| matches!(k, Kind::RegFileId(_))), &mut cx)?;
    pipe::create(&of(|k| matches!(k, Kind::Pipe(_))), &mut cx)?;
    fifo::create(&of(|k| matches!(k, Kind::Fifo(_))), &mut cx)?;
    memfd::create(&of(|k| matches!(k, Kind::Memfd(_))), &mut cx)?;
    ghost::create(&of(|k| matches!(k, Kind::Ghost(_))), &mut cx)?;
    unix::create(&of(|k| matches!(k, Kind::Unix(_))), &mut cx)?;
    inet::create(&of(|k| matches!(k, Kind::Inet(_))), &mut cx)?;
    eventfd::create(&of(|k| matches!(k, Kind::Eventfd(_))), &mut cx)?;
    signalfd::create(&of(|k| matches!(k, Kind::Signalfd(_))), &mut cx)?;
    timerfd::create(&of(|k| matches!(k, Kind::Timerfd(_))), &mut cx)?;
    inotify::create(&of(|k| matches!(k, Kind::Inotify(_))), &mut cx)?;
    epoll::create(&of(|k| matches!(k, Kind::Epoll(_))), &mut cx)?;
    tty::pty::create(&of(|k| matches!(k, Kind::Pty(_))), &mut cx)?;
    tty::shell::create(&of(|k| matches!(k, Kind::Terminal(_))), &mut cx)?;
    let mut out = HashMap::with_capacity(images.descs.len());
    let mut pending = Pending { at: cx.out.iter().map(|(&id, fd)| (fd.as_raw_fd(), id)).collect(), fds: std::mem::take(&mut cx.out) };
    for d in &images.descs {
        let what = || format!("fds.img: description {} ({})", d.id, d.link);
        let fd = pending.take(d.id).ok_or_else(|| anyhow!("{}: was not created", what()))?;
        set_flags(&fd, d.flags).with_context(what)?;
        let fd = match homes.get(&d.id) {
            Some(&home) => pending.place_home(fd, home).with_context(what)?,
            None => Err(fd),
        };
        let n = match fd {
            Ok(n) => n,
            Err(fd) => crate::sys::move_above(fd, min).with_context(what)?,
        };
        out.insert(d.id, n);
    }
    Ok((out, cx.tcp))
}

/// The preferred fd number of each description: its number in the first
/// process (in `fds`, process by process) that holds it at a number no
/// other description took.
pub fn homes<'a>(fds: impl Iterator<Item = &'a FdEntry>) -> HashMap<u32, RawFd> {
    let mut homes = HashMap::new();
    let mut taken = std::collections::HashSet::new();
    for e in fds {
        if !homes.contains_key(&e.desc_id) && taken.insert(e.fd as RawFd) {
            homes.insert(e.desc_id, e.fd as RawFd);
        }
    }
    homes
}

/// Created descriptions not placed yet, by id and by the number they
/// sit at for now.
struct Pending {
    fds: HashMap<u32, OwnedFd>,
    at: HashMap<RawFd, u32>,
}

impl Pending {
    fn take(&mut self, id: u32) -> Option<OwnedFd> {
        let fd = self.fds.remove(&id)?;
        self.at.remove(&fd.as_raw_fd());
        Some(fd)
    }

    /// Puts `fd` at `home` if that is its number, is free, or holds a
    /// description not placed yet (which moves to the lowest free number);
    /// gives `fd` back if rcr holds `home` for something else.
    fn place_home(&mut self, fd: OwnedFd, home: RawFd) -> Result<std::result::Result<RawFd, OwnedFd>> {
        if fd.as_raw_fd() == home {
            return Ok(Ok(std::os::fd::IntoRawFd::into_raw_fd(fd)));
        }
        if let Some(&other) = self.at.get(&home) {
            let held = self.take(other).context("a pending description vanished")?;
            let moved = held.try_clone().with_context(|| format!("moving description {other} off fd {home}"))?;
            drop(held);
            self.at.insert(moved.as_raw_fd(), other);
            self.fds.insert(other, moved);
        }
        if crate::sys::fd_is_open(home) {
            return Ok(Err(fd));
        }
        Ok(Ok(crate::sys::dup_onto(fd, home).with_context(|| format!("dup3 onto fd {home}"))?))
    }
}

/// Gives a created file the saved status flags F_SETFL can set, where
/// creating it did not already.
fn set_flags(fd: &OwnedFd, saved: u32) -> Result<()> {
    let now = crate::sys::status_flags(fd.as_raw_fd())? as u32;
    if now & SETFL_FLAGS != saved & SETFL_FLAGS {
        let want = (now & !SETFL_FLAGS) | (saved & SETFL_FLAGS);
        crate::sys::set_status_flags(fd.as_raw_fd(), want as i32).with_context(|| format!("F_SETFL {want:#o}"))?;
    }
    Ok(())
}

/// In a restore child: puts each saved fd at its number, from the
/// descriptions rcr created (`created`, by id), with its close-on-exec bit.
/// A description that sits at a number this process gives to another one
/// is first copied above all of its numbers.
pub fn place(fds: &[FdEntry], created: &HashMap<u32, RawFd>) -> Result<()> {
    let target: HashMap<RawFd, u32> = fds.iter().map(|e| (e.fd as RawFd, e.desc_id)).collect();
    let above = fds.iter().map(|e| e.fd as RawFd + 1).max().unwrap_or(0);
    let mut from: HashMap<u32, RawFd> = HashMap::with_capacity(fds.len());
    let mut aside = Vec::new();
    for e in fds {
        if from.contains_key(&e.desc_id) {
            continue;
        }
        let &src = created.get(&e.desc_id).ok_or_else(|| anyhow!("fd {}: description {} was not created", e.fd, e.desc_id))?;
        let src = match target.get(&src) {
            Some(&other) if other != e.desc_id => {
                let n = crate::sys::dup_above(src, above).with_context(|| format!("copying description {} off fd {src}", e.desc_id))?;
                aside.push(n);
                n
            }
            _ => src,
        };
        from.insert(e.desc_id, src);
    }
    for e in fds {
        let src = from[&e.desc_id];
        let what = || format!("fd {}: placing description {}", e.fd, e.desc_id);
        if src == e.fd as RawFd {
            crate::sys::set_cloexec(src, e.cloexec).with_context(what)?;
        } else {
            crate::sys::dup_to(src, e.fd as RawFd, e.cloexec).with_context(what)?;
        }
    }
    aside.into_iter().for_each(crate::sys::close);
    Ok(())
}

/// In a restore child, once its fds are in place: the steps that need the
/// process's own fd numbers.
pub fn after_fds(pid: i32, fds: &[FdEntry], images: &Images) -> Result<()> {
    timerfd::after_fds(pid, fds, images)?;
    epoll::after_fds(pid, fds, images)
}
