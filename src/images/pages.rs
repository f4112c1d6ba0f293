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

/// Writes pages-<pid>.img: a header page, then the pages back to back.
#[derive(Debug)]
pub struct PageFile {
    path: PathBuf,
    file: File,
    /// Where the next pages go.
    pos: u64,
    entries: Vec<PagemapEntry>,
}

impl PageFile {
    pub fn create(dir: &ImageDir, pid: u32) -> Result<Self> {
        let path = dir.file(Kind::Pages, Some(pid));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        file.write_all_at(&pages_header(), 0).with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { path, file, pos: PAGES_DATA_OFFSET, entries: Vec::new() })
    }

    fn record(&mut self, vaddr: u64, len: u64) -> u64 {
        record(&mut self.entries, vaddr, len);
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
        _ => entries.push(PagemapEntry { vaddr, nr_pages: n as u32, flags: PageFlags::PagePresent as u32 }),
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

/// Byte offset in the pages file of each pagemap entry's first page.
pub fn run_offsets(entries: &[PagemapEntry]) -> Vec<u64> {
    let mut off = PAGES_DATA_OFFSET;
    entries
        .iter()
        .map(|e| {
            let o = off;
            off += u64::from(e.nr_pages) * PAGE_SIZE;
            o
        })
        .collect()
}
