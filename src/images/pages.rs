//! Page transport: where dumped pages go and where restored pages come
//! from. Today a pages file in the image directory; the interface is what
//! a page server (socket) will implement later.
use super::pb::{PageFlags, PagemapEntry};
use super::{pages_header, ImageDir, Kind, PAGES_DATA_OFFSET, PAGE_SIZE};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// Receives the saved pages of one process, in increasing address order.
pub trait PageSink {
    /// Stores whole pages starting at `vaddr` (`data.len()` is a multiple
    /// of the page size).
    fn put(&mut self, vaddr: u64, data: &[u8]) -> Result<()>;
    /// For a sink that is a seekable file: records `len` bytes of pages at
    /// `vaddr` and returns the file and the offset where another writer
    /// (the parasite, or splice) must store them. `None` if the sink takes
    /// pages through [`PageSink::put`] only (a stream).
    fn reserve(&mut self, vaddr: u64, len: u64) -> Option<(RawFd, u64)>;
    /// Where the next [`PageSink::reserve`] will put its pages (`None` for
    /// a stream).
    fn tail(&self) -> Option<(RawFd, u64)>;
    /// Finishes the transfer and returns the pagemap describing it.
    fn finish(self: Box<Self>) -> Result<Vec<PagemapEntry>>;
}

/// Number of pages files a process may have: pages-<pid>.img (part 0),
/// and pages-<pid>.1.img (part 1), written at the same time by a second
/// writer on the other core (ext4 serializes buffered writes to one inode).
pub const PAGE_PARTS: u32 = 2;

/// The name of pages file `part` of process `pid` in the image directory.
pub fn part_name(pid: u32, part: u32) -> String {
    match part {
        0 => ImageDir::name(Kind::Pages, Some(pid)),
        n => format!("pages-{pid}.{n}.img"),
    }
}

/// The pages file `part` of process `pid`, for messages.
pub fn part_path(dir: &ImageDir, pid: u32, part: u32) -> PathBuf {
    dir.path.join(part_name(pid, part))
}

/// Writes pages-<pid>.img (or another part): a header page, then the pages
/// back to back.
#[derive(Debug)]
pub struct PageFile {
    path: PathBuf,
    file: File,
    /// Which pages file of the process this is (PagemapEntry.part).
    part: u32,
    /// Where the next pages go.
    pos: u64,
    entries: Vec<PagemapEntry>,
}

impl PageFile {
    pub fn create(dir: &ImageDir, pid: u32) -> Result<Self> {
        Self::create_part(dir, pid, 0)
    }

    pub fn create_part(dir: &ImageDir, pid: u32, part: u32) -> Result<Self> {
        let name = part_name(pid, part);
        let path = dir.path.join(&name);
        let file = dir.create_file(&name)?;
        file.write_all_at(&pages_header(), 0).with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { path, file, part, pos: PAGES_DATA_OFFSET, entries: Vec::new() })
    }

    fn record(&mut self, vaddr: u64, len: u64) -> u64 {
        let n = len / PAGE_SIZE;
        match self.entries.last_mut() {
            Some(last) if last.vaddr + u64::from(last.nr_pages) * PAGE_SIZE == vaddr && u64::from(last.nr_pages) + n <= u32::MAX as u64 => {
                last.nr_pages += n as u32;
            }
            _ => self.entries.push(PagemapEntry { vaddr, nr_pages: n as u32, flags: PageFlags::PagePresent as u32, part: self.part }),
        }
        let at = self.pos;
        self.pos += len;
        at
    }
}

/// Adds `len` bytes of pages at `vaddr` to the pagemap `entries`,
/// extending the last run when they follow it.
pub(super) fn record(entries: &mut Vec<PagemapEntry>, vaddr: u64, len: u64) {
    let n = len / PAGE_SIZE;
    match entries.last_mut() {
        Some(last) if last.vaddr + u64::from(last.nr_pages) * PAGE_SIZE == vaddr && u64::from(last.nr_pages) + n <= u32::MAX as u64 => {
            last.nr_pages += n as u32;
        }
        _ => entries.push(PagemapEntry { vaddr, nr_pages: n as u32, flags: PageFlags::PagePresent as u32, part: 0 }),
    }
}

impl PageSink for PageFile {
    fn put(&mut self, vaddr: u64, data: &[u8]) -> Result<()> {
        let at = self.record(vaddr, data.len() as u64);
        self.file.write_all_at(data, at).with_context(|| format!("writing {}", self.path.display()))
    }

    fn reserve(&mut self, vaddr: u64, len: u64) -> Option<(RawFd, u64)> {
        let at = self.record(vaddr, len);
        Some((self.file.as_raw_fd(), at))
    }

    fn tail(&self) -> Option<(RawFd, u64)> {
        Some((self.file.as_raw_fd(), self.pos))
    }

    fn finish(self: Box<Self>) -> Result<Vec<PagemapEntry>> {
        // Pages written by the parasite must be as long as the pagemap says.
        let len = self.file.metadata().with_context(|| format!("reading {}", self.path.display()))?.len();
        if len != self.pos {
            bail!("{}: {} bytes written, {} expected from its pagemap", self.path.display(), len, self.pos);
        }
        // No fdatasync: the pages stay in the page cache like any write()
        // (as CRIU does). Syncing 1 GiB put the disk's speed, and its
        // writeback noise (0.3-3 s here), into the frozen time.
        Ok(self.entries)
    }
}

/// Byte offset of each pagemap entry's first page in its pages file (the
/// entry's part): each part holds its entries' pages back to back, in the
/// order of the pagemap.
pub fn run_offsets(entries: &[PagemapEntry]) -> Vec<u64> {
    let mut off = [PAGES_DATA_OFFSET; PAGE_PARTS as usize];
    entries
        .iter()
        .map(|e| {
            let slot = &mut off[(e.part as usize).min(PAGE_PARTS as usize - 1)];
            let o = *slot;
            *slot += u64::from(e.nr_pages) * PAGE_SIZE;
            o
        })
        .collect()
}

/// Pages stored in each part, as the pagemap describes them.
pub fn part_pages(entries: &[PagemapEntry]) -> [u64; PAGE_PARTS as usize] {
    let mut n = [0; PAGE_PARTS as usize];
    for e in entries.iter().filter(|e| e.part < PAGE_PARTS) {
        n[e.part as usize] += u64::from(e.nr_pages);
    }
    n
}
