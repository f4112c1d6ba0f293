//! The image set: one directory per checkpoint, one file per kind of state.
//!
//! ```text
//! protobuf image file                       pages-<pid>.img
//! +--------+---------+                      +--------+---------+------------+
//! | magic  | version |  8 bytes             | magic  | version | zero pad   |  one page
//! +--------+---------+                      +--------+---------+------------+
//! | len u32 LE       |  \                   | page of pagemap entry 0, ...  |  page aligned,
//! | message bytes    |   } repeated         | ...                           |  back to back
//! +------------------+  /                   +-------------------------------+
//! ```
//!
//! All integers are little-endian. Messages are the prost types generated
//! from `proto/rcr.proto` (module [`pb`]). `images-format.md` is the full
//! specification; keep the two in step.
pub mod pb {
    #![allow(clippy::all, missing_debug_implementations)]
    include!(concat!(env!("OUT_DIR"), "/rcr.images.rs"));
}

pub mod compress;
pub mod pages;

use anyhow::{bail, Context, Result};
use prost::Message;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use nix::fcntl::AtFlags;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Version of the image format this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;
/// Largest single message accepted from an image (a guard against hostile
/// or corrupt input).
pub const MAX_ENTRY: u32 = 64 << 20;
pub const PAGE_SIZE: u64 = 4096;

/// File present in an image directory while a dump writes into it, and
/// left there by a dump that did not finish: `rcr restore` refuses the set.
pub const INCOMPLETE_MARKER: &str = "dump-incomplete";

/// Kinds of image file: the magic each starts with and its file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Inventory,
    Pstree,
    Core,
    Mm,
    Pagemap,
    Pages,
    Files,
    Fdinfo,
    Fs,
    Pipes,
    Fds,
    MemFiles,
    StatsDump,
    StatsRestore,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::Inventory,
        Kind::Pstree,
        Kind::Core,
        Kind::Mm,
        Kind::Pagemap,
        Kind::Pages,
        Kind::Files,
        Kind::Fdinfo,
        Kind::Fs,
        Kind::Pipes,
        Kind::Fds,
        Kind::MemFiles,
        Kind::StatsDump,
        Kind::StatsRestore,
    ];

    /// The magic: four ASCII bytes, stored as they read.
    pub fn magic(self) -> [u8; 4] {
        *match self {
            Kind::Inventory => b"RINV",
            Kind::Pstree => b"RPST",
            Kind::Core => b"RCOR",
            Kind::Mm => b"RMM_",
            Kind::Pagemap => b"RPGM",
            Kind::Pages => b"RPGS",
            Kind::Files => b"RFIL",
            Kind::Fdinfo => b"RFDS",
            Kind::Fs => b"RFS_",
            Kind::Pipes => b"RPIP",
            Kind::Fds => b"RDSC",
            Kind::MemFiles => b"RMEM",
            Kind::StatsDump => b"RSTD",
            Kind::StatsRestore => b"RSTR",
        }
    }

    /// File stem; per-process kinds get `-<pid>` appended.
    pub fn stem(self) -> &'static str {
        match self {
            Kind::Inventory => "inventory",
            Kind::Pstree => "pstree",
            Kind::Core => "core",
            Kind::Mm => "mm",
            Kind::Pagemap => "pagemap",
            Kind::Pages => "pages",
            Kind::Files => "files",
            Kind::Fdinfo => "fdinfo",
            Kind::Fs => "fs",
            Kind::Pipes => "pipes",
            Kind::Fds => "fds",
            Kind::MemFiles => "memfiles",
            Kind::StatsDump => "stats-dump",
            Kind::StatsRestore => "stats-restore",
        }
    }

    pub fn per_process(self) -> bool {
        !matches!(self, Kind::Inventory | Kind::Pstree | Kind::Files | Kind::Pipes | Kind::Fds | Kind::MemFiles | Kind::StatsDump | Kind::StatsRestore)
    }

    pub fn from_magic(m: [u8; 4]) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.magic() == m)
    }
}

/// An image directory, opened once: every image file is opened relative to
/// that directory fd, by a plain name, never through a symlink
/// ([`ImageDir::open_file`], [`ImageDir::create_file`]). The directory is
/// created 0700 and its files 0600, whatever the umask; an existing
/// directory that group or others may write is refused (they could plant
/// or swap files in it).
#[derive(Clone, Debug)]
pub struct ImageDir {
    /// The path given on the command line, for messages.
    pub path: PathBuf,
    fd: std::sync::Arc<OwnedFd>,
    /// Files written whose writeback was started but not waited for;
    /// [`ImageDir::sync`] makes them durable all at once (one fdatasync
    /// each per file cost a journal commit per file: 3-5 ms each here, six
    /// files per process).
    unsynced: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Mode of the image directory rcr creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every image file rcr writes.
pub const FILE_MODE: u32 = 0o600;

impl ImageDir {
    /// Creates the directory (its parents as needed), or opens an existing
    /// one that neither group nor others may write.
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let created = match nix::unistd::mkdir(path, Mode::from_bits_truncate(DIR_MODE)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(e).with_context(|| format!("creating image directory {}", path.display())),
        };
        let dir = Self::open_dir(path)?;
        if created {
            // mkdir's mode went through the umask; the directory is ours.
            nix::sys::stat::fchmod(&*dir.fd, Mode::from_bits_truncate(DIR_MODE)).with_context(|| format!("chmod 0700 {}", path.display()))?;
        } else {
            let st = nix::sys::stat::fstat(&*dir.fd).with_context(|| format!("stat {}", path.display()))?;
            if st.st_mode & 0o022 != 0 {
                bail!(
                    "image directory {} is writable by {} (mode {:o}); others could plant files in it: use a directory only its owner may write (rcr creates new ones 0700)",
                    path.display(),
                    if st.st_mode & 0o002 != 0 { "everyone" } else { "its group" },
                    st.st_mode & 0o7777
                );
            }
        }
        Ok(dir)
    }

    /// Opens an existing image set: a real directory (not a symlink to
    /// one) holding inventory.img.
    pub fn open(path: &Path) -> Result<Self> {
        let dir = Self::open_dir(path)?;
        if dir.stat_file(INCOMPLETE_MARKER).is_some() {
            bail!("{}: incomplete image set: the dump did not finish ({} exists)", path.display(), path.join(INCOMPLETE_MARKER).display());
        }
        match dir.stat_file("inventory.img") {
            Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => Ok(dir),
            Some(_) => bail!("{}: inventory.img is not a regular file (a symlink?); refusing it", path.display()),
            None => bail!("{} is not an rcr image set (no inventory.img)", path.display()),
        }
    }

    fn open_dir(path: &Path) -> Result<Self> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(path, flags, Mode::empty()).map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => anyhow::anyhow!("image directory {}: not a directory (a symlink is not followed): {e}", path.display()),
            e => anyhow::anyhow!("opening image directory {}: {e}", path.display()),
        })?;
        Ok(Self { path: path.to_path_buf(), fd: std::sync::Arc::new(fd), unsynced: Default::default() })
    }

    /// The directory fd (every image file is opened relative to it).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// lstat of `name` in the directory, None if it is not there.
    pub fn stat_file(&self, name: &str) -> Option<libc::stat> {
        nix::sys::stat::fstatat(&*self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()
    }

    /// Opens image file `name` for reading: a regular file right in the
    /// directory; a symlink (or anything else) is refused, never followed.
    pub fn open_file(&self, name: &str) -> Result<File> {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = nix::fcntl::openat2(&*self.fd, name, how).map_err(|e| self.open_error(name, e))?;
        let f = File::from(fd);
        let st = nix::sys::stat::fstat(&f).with_context(|| format!("stat {}", self.path.join(name).display()))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            bail!("{}: not a regular file (mode {:o}); refusing it", self.path.join(name).display(), st.st_mode);
        }
        Ok(f)
    }

    fn open_error(&self, name: &str, e: Errno) -> anyhow::Error {
        let p = self.path.join(name);
        match e {
            Errno::ELOOP | Errno::EXDEV => anyhow::anyhow!("{}: a symlink in the image directory; rcr does not follow it ({e})", p.display()),
            e => anyhow::anyhow!("opening {}: {e}", p.display()),
        }
    }

    /// Creates image file `name` (mode 0600) for writing; an existing entry
    /// of that name (file or symlink) is unlinked first, so nothing outside
    /// the directory is ever written through it.
    pub fn create_file(&self, name: &str) -> Result<File> {
        self.remove_file(name)?;
        let how = OpenHow::new()
            .flags(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .mode(Mode::from_bits_truncate(FILE_MODE))
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = nix::fcntl::openat2(&*self.fd, name, how).map_err(|e| self.open_error(name, e))?;
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(FILE_MODE)).with_context(|| format!("chmod 0600 {}", self.path.join(name).display()))?;
        Ok(File::from(fd))
    }

    /// Unlinks `name` from the directory (a symlink itself, not its
    /// target); Ok if it was not there.
    pub fn remove_file(&self, name: &str) -> Result<()> {
        match nix::unistd::unlinkat(&*self.fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.path.join(name).display())),
        }
    }

    /// Names and lstat of the entries of the directory.
    pub fn entries(&self) -> Result<Vec<(String, libc::stat)>> {
        let rd = std::fs::read_dir(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).with_context(|| format!("listing {}", self.path.display()))?;
        let names: Vec<String> = rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
        Ok(names.into_iter().filter_map(|n| self.stat_file(&n).map(|st| (n, st))).collect())
    }

    /// Marks the directory as holding an unfinished dump before anything
    /// is written into it: the marker is created, then the inventory of an
    /// older set in it is removed, so the directory either holds the marker
    /// or no inventory, and never passes for a complete set mixing old and
    /// new files. The directory is synced when an old inventory was
    /// removed (before any new file is written); without one, a crash can
    /// only lose the marker of a set that has no inventory yet.
    pub fn begin_dump(&self) -> Result<()> {
        self.create_file(INCOMPLETE_MARKER)?;
        let inv = Self::name(Kind::Inventory, None);
        match nix::unistd::unlinkat(&*self.fd, inv.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) => self.sync_dir(),
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing the old {}", self.path.join(&inv).display())),
        }
    }

    /// The dump is complete (every file, the inventory last, is on disk):
    /// removes the marker.
    pub fn mark_complete(&self) -> Result<()> {
        nix::unistd::unlinkat(&*self.fd, INCOMPLETE_MARKER, nix::unistd::UnlinkatFlags::NoRemoveDir)
            .with_context(|| format!("removing {}", self.path.join(INCOMPLETE_MARKER).display()))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<()> {
        nix::unistd::fsync(&*self.fd).with_context(|| format!("syncing directory {}", self.path.display()))
    }

    /// Waits until every file written so far is on disk (fdatasync each;
    /// their writeback started when they were written, so the waits
    /// overlap and share journal commits).
    pub fn sync(&self) -> Result<()> {
        let names = std::mem::take(&mut *self.unsynced.lock().map_err(|_| anyhow::anyhow!("image sync list poisoned"))?);
        for n in names {
            let f = self.open_file(&n).context("reopening an image file to sync it")?;
            f.sync_data().with_context(|| format!("syncing {}", self.path.join(&n).display()))?;
        }
        Ok(())
    }

    /// The file name of an image of `kind` (of process `pid`).
    pub fn name(kind: Kind, pid: Option<u32>) -> String {
        match pid {
            Some(p) if kind.per_process() => format!("{}-{}.img", kind.stem(), p),
            _ => format!("{}.img", kind.stem()),
        }
    }

    /// The path of an image file, for messages.
    pub fn file(&self, kind: Kind, pid: Option<u32>) -> PathBuf {
        self.path.join(Self::name(kind, pid))
    }

    /// Writes a file holding `msgs` as framed entries.
    pub fn write_all<M: Message>(&self, kind: Kind, pid: Option<u32>, msgs: &[M]) -> Result<()> {
        let name = Self::name(kind, pid);
        let path = self.path.join(&name);
        let mut w = ImageWriter::new(self.create_file(&name)?, kind)?;
        for m in msgs {
            w.push(m).with_context(|| format!("writing {}", path.display()))?;
        }
        w.finish().with_context(|| format!("writing {}", path.display()))?;
        self.unsynced.lock().map_err(|_| anyhow::anyhow!("image sync list poisoned"))?.push(name);
        Ok(())
    }

    pub fn write_one<M: Message>(&self, kind: Kind, pid: Option<u32>, msg: &M) -> Result<()> {
        self.write_all(kind, pid, std::slice::from_ref(msg))
    }

    pub fn read_all<M: Message + Default>(&self, kind: Kind, pid: Option<u32>) -> Result<Vec<M>> {
        let f = self.open_file(&Self::name(kind, pid))?;
        let path = self.file(kind, pid);
        let (_, raw) = read_raw_from(f, &path, Some(kind))?;
        decode_entries(&path, kind, &raw)
    }

    /// Reads a file that must hold exactly one entry.
    pub fn read_one<M: Message + Default>(&self, kind: Kind, pid: Option<u32>) -> Result<M> {
        let path = self.file(kind, pid);
        let mut v: Vec<M> = self.read_all(kind, pid)?;
        if v.len() != 1 {
            bail!("{}: expected exactly one entry, found {}", path.display(), v.len());
        }
        Ok(v.remove(0))
    }
}

fn header(kind: Kind) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&kind.magic());
    h[4..].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// Checks the 8-byte header of `path` and returns its kind.
pub fn check_header(path: &Path, h: [u8; 8], want: Option<Kind>) -> Result<Kind> {
    let magic: [u8; 4] = [h[0], h[1], h[2], h[3]];
    let kind = Kind::from_magic(magic)
        .with_context(|| format!("{}: unknown magic {:02x?}: not an rcr image", path.display(), magic))?;
    if let Some(w) = want {
        if w != kind {
            bail!("{}: holds {:?} data, expected {:?}", path.display(), kind, w);
        }
    }
    let version = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if version != FORMAT_VERSION {
        bail!("{}: format version {} (this rcr reads version {})", path.display(), version, FORMAT_VERSION);
    }
    Ok(kind)
}

/// Streams framed entries into a new image file.
#[derive(Debug)]
pub struct ImageWriter {
    w: BufWriter<File>,
    buf: Vec<u8>,
}

impl ImageWriter {
    /// Starts writing entries of `kind` into `f`, a new, empty file.
    pub fn new(f: File, kind: Kind) -> Result<Self> {
        let mut w = BufWriter::new(f);
        w.write_all(&header(kind))?;
        Ok(Self { w, buf: Vec::new() })
    }

    pub fn push<M: Message>(&mut self, m: &M) -> Result<()> {
        self.buf.clear();
        m.encode(&mut self.buf)?;
        let len = u32::try_from(self.buf.len()).ok().filter(|l| *l <= MAX_ENTRY).context("image entry too large")?;
        self.w.write_all(&len.to_le_bytes())?;
        self.w.write_all(&self.buf)?;
        Ok(())
    }

    /// Flushes the entries and starts their writeback; the caller makes
    /// the file durable later ([`ImageDir::sync`]).
    pub fn finish(self) -> Result<()> {
        let f = self.w.into_inner().map_err(|e| e.into_error())?;
        crate::sys::start_writeback(f.as_raw_fd())?;
        Ok(())
    }
}

/// Reads the raw framed entries of a protobuf image file. A length is
/// checked against [`MAX_ENTRY`] and against what is left of the file
/// before anything is allocated for it.
pub fn read_raw_entries(path: &Path, want: Option<Kind>) -> Result<(Kind, Vec<Vec<u8>>)> {
    read_raw_from(open_no_symlink(path)?, path, want)
}

/// Opens `path` for reading, if it is a regular file and not a symlink
/// (for `rcr show`, which reads image files by path).
pub fn open_no_symlink(path: &Path) -> Result<File> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let f = File::from(nix::fcntl::open(path, flags, Mode::empty()).map_err(|e| match e {
        Errno::ELOOP => anyhow::anyhow!("{}: a symlink; rcr does not follow it", path.display()),
        e => anyhow::anyhow!("opening {}: {e}", path.display()),
    })?);
    let st = nix::sys::stat::fstat(&f).with_context(|| format!("stat {}", path.display()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        bail!("{}: not a regular file (mode {:o}); refusing it", path.display(), st.st_mode);
    }
    Ok(f)
}

/// Reads the raw framed entries of an open image file (`path` names it in
/// messages).
pub fn read_raw_from(f: File, path: &Path, want: Option<Kind>) -> Result<(Kind, Vec<Vec<u8>>)> {
    let size = f.metadata().with_context(|| format!("reading {}", path.display()))?.len();
    let mut r = BufReader::new(f);
    let mut h = [0u8; 8];
    r.read_exact(&mut h).with_context(|| format!("{}: truncated header", path.display()))?;
    let kind = check_header(path, h, want)?;
    if kind == Kind::Pages {
        bail!("{}: a pages file holds raw pages, not entries", path.display());
    }
    let mut out = Vec::new();
    let mut pos = 8u64;
    loop {
        let mut lb = [0u8; 4];
        match r.read(&mut lb[..1])? {
            0 => break,
            _ => r.read_exact(&mut lb[1..]).with_context(|| format!("{}: entry {} truncated length", path.display(), out.len()))?,
        }
        pos += 4;
        let len = u32::from_le_bytes(lb);
        if len > MAX_ENTRY {
            bail!("{}: entry {} claims {} bytes (limit {})", path.display(), out.len(), len, MAX_ENTRY);
        }
        if u64::from(len) > size.saturating_sub(pos) {
            bail!("{}: entry {} truncated: claims {} bytes, {} left in the file", path.display(), out.len(), len, size.saturating_sub(pos));
        }
        pos += u64::from(len);
        let mut b = vec![0u8; len as usize];
        r.read_exact(&mut b).with_context(|| format!("{}: entry {} truncated", path.display(), out.len()))?;
        out.push(b);
    }
    Ok((kind, out))
}

pub fn read_entries<M: Message + Default>(path: &Path, kind: Kind) -> Result<Vec<M>> {
    let (_, raw) = read_raw_entries(path, Some(kind))?;
    decode_entries(path, kind, &raw)
}

/// Decodes raw entries of `path` as messages of type `M`.
pub fn decode_entries<M: Message + Default>(path: &Path, kind: Kind, raw: &[Vec<u8>]) -> Result<Vec<M>> {
    raw.iter()
        .enumerate()
        .map(|(i, b)| {
            M::decode(b.as_slice())
                .with_context(|| format!("{}: entry {i} ({} bytes) does not decode as {kind:?}", path.display(), b.len()))
        })
        .collect()
}

/// The page-aligned data offset of a pages file: its header fills the
/// first page.
pub const PAGES_DATA_OFFSET: u64 = PAGE_SIZE;

/// Header page of a pages file.
pub fn pages_header() -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE as usize];
    page[..8].copy_from_slice(&header(Kind::Pages));
    page
}

/// Serializes bytes as a hex string in `rcr show --json`.
pub fn serde_hex<S: serde::Serializer>(b: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    let mut out = String::with_capacity(b.len() * 2);
    for x in b {
        use std::fmt::Write;
        let _ = write!(out, "{x:02x}");
    }
    s.serialize_str(&out)
}
