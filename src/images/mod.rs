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
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Version of the image format this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;
/// Largest single message accepted from an image (a guard against hostile
/// or corrupt input).
pub const MAX_ENTRY: u32 = 64 << 20;
pub const PAGE_SIZE: u64 = 4096;

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

/// An image directory.
#[derive(Clone, Debug)]
pub struct ImageDir {
    pub path: PathBuf,
    /// Files written whose writeback was started but not waited for;
    /// [`ImageDir::sync`] makes them durable all at once (one fdatasync
    /// each per file cost a journal commit per file: 3-5 ms each here, six
    /// files per process).
    unsynced: std::sync::Arc<std::sync::Mutex<Vec<PathBuf>>>,
}

impl ImageDir {
    pub fn create(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("creating image directory {}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), unsynced: Default::default() })
    }

    pub fn open(path: &Path) -> Result<Self> {
        if !path.join("inventory.img").exists() {
            bail!("{} is not an rcr image set (no inventory.img)", path.display());
        }
        Ok(Self { path: path.to_path_buf(), unsynced: Default::default() })
    }

    /// Waits until every file written so far is on disk (fdatasync each;
    /// their writeback started when they were written, so the waits
    /// overlap and share journal commits).
    pub fn sync(&self) -> Result<()> {
        let paths = std::mem::take(&mut *self.unsynced.lock().map_err(|_| anyhow::anyhow!("image sync list poisoned"))?);
        for p in paths {
            let f = File::open(&p).with_context(|| format!("opening {} to sync it", p.display()))?;
            f.sync_data().with_context(|| format!("syncing {}", p.display()))?;
        }
        Ok(())
    }

    pub fn file(&self, kind: Kind, pid: Option<u32>) -> PathBuf {
        match pid {
            Some(p) if kind.per_process() => self.path.join(format!("{}-{}.img", kind.stem(), p)),
            _ => self.path.join(format!("{}.img", kind.stem())),
        }
    }

    /// Writes a file holding `msgs` as framed entries.
    pub fn write_all<M: Message>(&self, kind: Kind, pid: Option<u32>, msgs: &[M]) -> Result<()> {
        let path = self.file(kind, pid);
        let mut w = ImageWriter::create(&path, kind)?;
        for m in msgs {
            w.push(m)?;
        }
        w.finish().with_context(|| format!("writing {}", path.display()))?;
        self.unsynced.lock().map_err(|_| anyhow::anyhow!("image sync list poisoned"))?.push(path);
        Ok(())
    }

    pub fn write_one<M: Message>(&self, kind: Kind, pid: Option<u32>, msg: &M) -> Result<()> {
        self.write_all(kind, pid, std::slice::from_ref(msg))
    }

    pub fn read_all<M: Message + Default>(&self, kind: Kind, pid: Option<u32>) -> Result<Vec<M>> {
        read_entries(&self.file(kind, pid), kind)
    }

    /// Reads a file that must hold exactly one entry.
    pub fn read_one<M: Message + Default>(&self, kind: Kind, pid: Option<u32>) -> Result<M> {
        let path = self.file(kind, pid);
        let mut v: Vec<M> = read_entries(&path, kind)?;
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
    pub fn create(path: &Path, kind: Kind) -> Result<Self> {
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
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

/// Reads the raw framed entries of a protobuf image file.
pub fn read_raw_entries(path: &Path, want: Option<Kind>) -> Result<(Kind, Vec<Vec<u8>>)> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = BufReader::new(f);
    let mut h = [0u8; 8];
    r.read_exact(&mut h).with_context(|| format!("{}: truncated header", path.display()))?;
    let kind = check_header(path, h, want)?;
    if kind == Kind::Pages {
        bail!("{}: a pages file holds raw pages, not entries", path.display());
    }
    let mut out = Vec::new();
    loop {
        let mut lb = [0u8; 4];
        match r.read(&mut lb[..1])? {
            0 => break,
            _ => r.read_exact(&mut lb[1..]).with_context(|| format!("{}: entry {} truncated length", path.display(), out.len()))?,
        }
        let len = u32::from_le_bytes(lb);
        if len > MAX_ENTRY {
            bail!("{}: entry {} claims {} bytes (limit {})", path.display(), out.len(), len, MAX_ENTRY);
        }
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
