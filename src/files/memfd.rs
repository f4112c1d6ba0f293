//! memfds, and the table of inodes without a path (memfds and deleted
//! files, [`super::ghost`]) that descriptions and mappings share.
//!
//! Dump: the first fd or mapping (through /proc/PID/map_files) of such an
//! inode records it in [`Table`] by (st_dev, st_ino): name or path, mode,
//! size, seals, and its content, read sparse-aware (SEEK_DATA/SEEK_HOLE),
//! up to the `--ghost-limit`. Every description (fds.img Memfd/GhostFile)
//! and every mapping (Vma.mem_file_id) refers to its inode by id; a shared
//! mapping saves no pages of its own: they are the inode's content.
//!
//! Restore: rcr recreates each inode before anything else
//! ([`create_inodes`]: memfd_create with MFD_ALLOW_SEALING, content, mode,
//! then the seals), and opens each description as a new open of it through
//! /proc/self/fd/N with the saved access mode and flags, at the saved
//! offset ([`reopen`]). Mappings map the same inode.
use super::fds::{CreateCx, DumpCx, Fd};
use crate::images::pb::{file_desc::Kind, DataRun, FileDesc, MemFile, MemFileKind, Memfd};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

/// Default of `--ghost-limit`: the most content saved per memfd or
/// deleted file.
pub const DEFAULT_LIMIT: u64 = 64 << 20;
/// Largest data run, and about the most data per memfiles.img entry.
const CHUNK: u64 = 4 << 20;

/// The inodes of memfds and deleted files of a tree being dumped.
#[derive(Debug, Default)]
pub struct Table {
    pub files: Vec<MemFile>,
    by_inode: HashMap<(u64, u64), u32>,
    /// `--ghost-limit` (None: [`DEFAULT_LIMIT`]).
    pub limit: Option<u64>,
}

impl Table {
    /// The id of the inode `file` is open on, recorded (content and all)
    /// the first time; `head` gives its kind and name, `what` names the
    /// fd or mapping for messages.
    pub fn add(&mut self, file: &File, what: &str, head: MemFile) -> Result<u32> {
        let md = file.metadata().with_context(|| format!("{what}: fstat"))?;
        if let Some(&id) = self.by_inode.get(&(md.dev(), md.ino())) {
            return Ok(id);
        }
        let seals = if head.kind == MemFileKind::MemFileMemfd as i32 { get_seals(file).with_context(|| format!("{what}: F_GET_SEALS"))? } else { 0 };
        let data = read_content(file, md.size(), self.limit.unwrap_or(DEFAULT_LIMIT)).with_context(|| what.to_string())?;
        let id = self.files.len() as u32 + 1;
        let mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
        let (mode, size, uid, gid, dev, inode) = (md.mode(), md.size(), md.uid(), md.gid(), md.dev(), md.ino());
        self.files.push(MemFile { id, mode, size, seals, uid, gid, mtime_ns, dev, inode, data, ..head });
        self.by_inode.insert((dev, inode), id);
        Ok(id)
    }

    /// The entries of memfiles.img: each inode, its content split over
    /// entries of about [`CHUNK`] bytes.
    pub fn entries(&self) -> Vec<MemFile> {
        let mut out = Vec::new();
        for f in &self.files {
            let mut cur = MemFile { data: Vec::new(), ..f.clone() };
            let mut bytes = 0;
            for run in &f.data {
                if bytes > 0 && bytes + run.data.len() as u64 > CHUNK {
                    out.push(std::mem::replace(&mut cur, MemFile { id: f.id, ..Default::default() }));
                    bytes = 0;
                }
                bytes += run.data.len() as u64;
                cur.data.push(run.clone());
            }
            out.push(cur);
        }
        out
    }
}

/// Joins the continuation entries of memfiles.img and checks the ids.
pub fn load(entries: Vec<MemFile>) -> Result<Vec<MemFile>> {
    let mut out: Vec<MemFile> = Vec::new();
    for e in entries {
        let n = out.len();
        match out.last_mut() {
            Some(last) if last.id == e.id => last.data.extend(e.data),
            _ if e.id as usize == n + 1 => out.push(e),
            _ => bail!("memfiles.img: entry with id {} after id {n}; ids must run from 1", e.id),
        }
    }
    Ok(out)
}

/// F_GET_SEALS of a memfd.
fn get_seals(f: &File) -> Result<u32> {
    Ok(nix::fcntl::fcntl(f, nix::fcntl::FcntlArg::F_GET_SEALS)? as u32)
}

/// The data extents (offset, length) of a file of `size` bytes.
fn extents(f: &File, size: u64) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < size {
        let Some(data) = crate::sys::seek_data(f.as_raw_fd(), off, false).context("SEEK_DATA")? else { break };
        if data >= size {
            break;
        }
        let hole = crate::sys::seek_data(f.as_raw_fd(), data, true).context("SEEK_HOLE")?.unwrap_or(size).min(size);
        out.push((data, hole - data));
        off = hole;
    }
    Ok(out)
}

/// The content of `file` that is not a hole, through a new read-only
/// open of it (the task's own may be write-only); refused above `limit`.
fn read_content(file: &File, size: u64, limit: u64) -> Result<Vec<DataRun>> {
    let link = format!("/proc/self/fd/{}", file.as_raw_fd());
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOATIME).open(&link);
    let f = match f {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => std::fs::File::open(&link),
        r => r,
    }
    .with_context(|| format!("opening {link} to read the content"))?;
    let ext = extents(&f, size)?;
    let total: u64 = ext.iter().map(|e| e.1).sum();
    if total > limit {
        bail!("its content is {total} bytes (size {size}), above the --ghost-limit of {limit} bytes; raise --ghost-limit to dump it");
    }
    let mut out = Vec::new();
    for (start, len) in ext {
        let mut pos = start;
        while pos < start + len {
            let n = (start + len - pos).min(CHUNK) as usize;
            let mut data = vec![0u8; n];
            f.read_exact_at(&mut data, pos).with_context(|| format!("reading {n} bytes at {pos}"))?;
            out.push(DataRun { offset: pos, data });
            pos += n as u64;
        }
    }
    Ok(out)
}

/// The name memfd_create was given, from a `/memfd:NAME (deleted)` link.
pub fn memfd_name(link: &str) -> Option<&str> {
    link.strip_prefix("/memfd:")?.strip_suffix(" (deleted)")
}

/// Dump side of a memfd description.
pub fn dump(f: &Fd, cx: &mut DumpCx) -> Result<Kind> {
    let name = memfd_name(&f.link).ok_or_else(|| f.refuse("a memfd link without its \" (deleted)\" suffix"))?;
    check_memfd_fs(f.file).map_err(|e| f.refuse(&e.to_string()))?;
    let head = MemFile { kind: MemFileKind::MemFileMemfd as i32, name: name.to_string(), ..Default::default() };
    let inode_id = cx.memfd.add(f.file, &f.what(), head)?;
    Ok(Kind::Memfd(Memfd { inode_id }))
}

/// memfds live on the kernel's internal tmpfs; hugetlbfs ones are refused.
pub fn check_memfd_fs(file: &File) -> Result<()> {
    let t = nix::sys::statfs::fstatfs(file).context("fstatfs")?.filesystem_type();
    if t == nix::sys::statfs::HUGETLBFS_MAGIC {
        bail!("it is a memfd on hugetlbfs (MFD_HUGETLB), which this version does not carry");
    }
    if t != nix::sys::statfs::TMPFS_MAGIC {
        bail!("it looks like a memfd but lives on filesystem {:#x}, not tmpfs", t.0);
    }
    Ok(())
}

/// Recreates every inode of memfiles.img (memfds and deleted files), with
/// its content, mode and seals: by id, each an O_RDWR fd.
pub fn create_inodes(files: &[MemFile]) -> Result<HashMap<u32, OwnedFd>> {
    let mut out = HashMap::with_capacity(files.len());
    for m in files {
        let what = || format!("memfiles.img: inode {} ({:?})", m.id, m.name);
        let fd = match MemFileKind::try_from(m.kind) {
            Ok(MemFileKind::MemFileMemfd) => create_memfd(m).with_context(what)?,
            Ok(MemFileKind::MemFileGhost) => super::ghost::create_inode(m).with_context(what)?,
            _ => bail!("{}: unknown kind {}", what(), m.kind),
        };
        out.insert(m.id, fd);
    }
    Ok(out)
}

fn create_memfd(m: &MemFile) -> Result<OwnedFd> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(m.name.as_str(), MFdFlags::MFD_ALLOW_SEALING).context("memfd_create")?;
    let f = File::from(fd);
    write_content(&f, m)?;
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(m.mode & 0o7777)).context("fchmod")?;
    if m.seals != 0 {
        let seals = nix::fcntl::SealFlag::from_bits_retain(m.seals as i32);
        nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_ADD_SEALS(seals)).with_context(|| format!("F_ADD_SEALS {:#x}", m.seals))?;
    }
    Ok(f.into())
}

/// Gives a new file the saved size and content.
pub fn write_content(f: &File, m: &MemFile) -> Result<()> {
    f.set_len(m.size).with_context(|| format!("ftruncate to {}", m.size))?;
    for run in &m.data {
        if run.offset + run.data.len() as u64 > m.size {
            bail!("a data run at {} of {} bytes lies beyond the size {}", run.offset, run.data.len(), m.size);
        }
        f.write_all_at(&run.data, run.offset).with_context(|| format!("writing {} bytes at {}", run.data.len(), run.offset))?;
    }
    Ok(())
}

/// A new open file description of the inode `inode` (an fd of rcr), with
/// `flags` (access mode and status flags) and at offset `pos`.
pub fn reopen(inode: RawFd, flags: u32, pos: u64) -> Result<OwnedFd> {
    let fd = super::reg::open_path(&format!("/proc/self/fd/{inode}"), flags)?;
    if pos != 0 {
        crate::sys::lseek(fd.as_raw_fd(), pos).with_context(|| format!("seeking to {pos}"))?;
    }
    Ok(fd)
}

/// Restore side: each memfd description, a new open of its inode.
pub fn create(descs: &[&FileDesc], cx: &mut CreateCx) -> Result<()> {
    for d in descs {
        let Some(Kind::Memfd(m)) = &d.kind else { continue };
        let what = || format!("fds.img: description {} ({})", d.id, d.link);
        let &inode = cx.mem.get(&m.inode_id).ok_or_else(|| anyhow!("{}: no memfd inode {} in memfiles.img", what(), m.inode_id))?;
        cx.out.insert(d.id, reopen(inode, d.flags, d.pos).with_context(what)?);
    }
    Ok(())
}
