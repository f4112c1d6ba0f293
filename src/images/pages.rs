//! Page transport: where dumped pages go and where restored pages come
//! from. Today a pages file in the image directory; the interface is what
//! a page server (socket) will implement later.
use super::pb::{PageFlags, PagemapEntry};
use super::{pages_header, ImageDir, Kind, PAGES_DATA_OFFSET, PAGE_SIZE};
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

/// Receives the saved pages of one process, in increasing address order.
pub trait PageSink {
    /// Stores whole pages starting at `vaddr` (`data.len()` is a multiple
    /// of the page size).
    fn put(&mut self, vaddr: u64, data: &[u8]) -> Result<()>;
    /// Finishes the transfer and returns the pagemap describing it.
    fn finish(self: Box<Self>) -> Result<Vec<PagemapEntry>>;
}

/// Writes pages-<pid>.img: a header page, then the pages back to back.
#[derive(Debug)]
pub struct PageFile {
    path: PathBuf,
    w: BufWriter<File>,
    entries: Vec<PagemapEntry>,
    pub pages: u64,
}

impl PageFile {
    pub fn create(dir: &ImageDir, pid: u32) -> Result<Self> {
        let path = dir.file(Kind::Pages, Some(pid));
        let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        w.write_all(&pages_header())?;
        Ok(Self { path, w, entries: Vec::new(), pages: 0 })
    }
}

impl PageSink for PageFile {
    fn put(&mut self, vaddr: u64, data: &[u8]) -> Result<()> {
        let n = data.len() as u64 / PAGE_SIZE;
        self.w.write_all(data).with_context(|| format!("writing {}", self.path.display()))?;
        self.pages += n;
        match self.entries.last_mut() {
            Some(last) if last.vaddr + u64::from(last.nr_pages) * PAGE_SIZE == vaddr && u64::from(last.nr_pages) + n <= u32::MAX as u64 => {
                last.nr_pages += n as u32;
            }
            _ => self.entries.push(PagemapEntry { vaddr, nr_pages: n as u32, flags: PageFlags::PagePresent as u32 }),
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Vec<PagemapEntry>> {
        let f = self.w.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", self.path.display()))?;
        f.sync_data().with_context(|| format!("syncing {}", self.path.display()))?;
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
