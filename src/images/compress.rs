//! Compressed pages (`rcr dump --compress`): pages-PID.img.zst.
//!
//! The file is pages-PID.img, header page included, compressed with zstd
//! in the zstd *seekable format*: independent frames of at most [`FRAME`]
//! uncompressed bytes each (each records its content size and carries an
//! XXH64 checksum), then a skippable frame holding the seek table (the
//! compressed and uncompressed size of every frame). `zstd -d` turns it
//! back into pages-PID.img byte for byte.
//!
//! The parasite cannot compress (it is a no_std blob), so the pages come
//! to rcr (process_vm_readv), which cuts them into frames and compresses
//! the frames on every core while it reads on. Restore decompresses the
//! frames on every core into a memfd holding exactly what pages-PID.img
//! would hold, and the restorer blob reads its pages from that.
use super::pages::{record, PageSink};
use super::pb::PagemapEntry;
use super::{pages_header, ImageDir, Kind, PAGES_DATA_OFFSET};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Uncompressed bytes per frame (the last one may hold fewer).
pub const FRAME: usize = 4 << 20;
/// Largest frame a reader accepts (a guard against a hostile seek table).
pub const MAX_FRAME: u32 = 64 << 20;
/// zstd level of `--compress` without a value.
pub const DEFAULT_LEVEL: i32 = 1;
const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
/// Seek table footer: number of frames (u32), descriptor (u8), magic (u32).
const FOOTER: u64 = 9;

/// The name of the compressed pages file of `pid`: pages-PID.img.zst.
pub fn name(pid: u32) -> String {
    format!("{}.zst", ImageDir::name(Kind::Pages, Some(pid)))
}

/// The compressed pages file of `pid`, for messages.
pub fn path(dir: &ImageDir, pid: u32) -> PathBuf {
    dir.path.join(name(pid))
}

/// One frame to compress: its number and its uncompressed bytes.
type Job = (u64, Vec<u8>);

/// The frames written so far; the compressing threads write in turn.
#[derive(Debug, Default)]
struct Order {
    /// Number of the frame to write next.
    next: u64,
    /// Bytes written to the file.
    pos: u64,
    /// (compressed, uncompressed) size of every frame written.
    table: Vec<(u32, u32)>,
    error: Option<String>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    file: File,
    order: Mutex<Order>,
    turn: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Order> {
        self.order.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends frame `seq` once every frame before it is in the file; a
    /// failed frame (`Err`) stops the file there.
    fn write_in_turn(&self, seq: u64, frame: std::result::Result<(&[u8], usize), String>) {
        let mut o = self.lock();
        while o.next != seq {
            o = self.turn.wait(o).unwrap_or_else(|e| e.into_inner());
        }
        if o.error.is_none() {
            match frame.and_then(|(z, raw)| self.file.write_all_at(z, o.pos).map(|()| (z.len(), raw)).map_err(|e| format!("writing {}: {e}", self.path.display()))) {
                Ok((z, raw)) => {
                    o.pos += z as u64;
                    o.table.push((z as u32, raw as u32));
                }
                Err(e) => o.error = Some(e),
            }
        }
        o.next += 1;
        self.turn.notify_all();
    }
}

/// A compressing thread: takes frames from `jobs` until the sink closes
/// it, compresses each and writes it in turn, and hands the buffer back.
fn worker(s: &Shared, jobs: &Mutex<Receiver<Job>>, free: &Sender<Vec<u8>>, level: i32) {
    let mut z = zstd::bulk::Compressor::new(level).and_then(|mut z| z.include_checksum(true).map(|()| z));
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(FRAME));
    loop {
        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((seq, data)) = job else { return };
        let frame = match z.as_mut() {
            Ok(z) => {
                out.clear();
                z.compress_to_buffer(&data[..], &mut out).map(|_| (&out[..], data.len()))
            }
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        };
        s.write_in_turn(seq, frame.map_err(|e| format!("{}: zstd level {level}: {e}", s.path.display())));
        let _ = free.send(data);
    }
}

/// Writes pages-PID.img.zst (see the module comment).
#[derive(Debug)]
pub struct ZstdPageFile {
    shared: Arc<Shared>,
    level: i32,
    entries: Vec<PagemapEntry>,
    /// The frame being filled.
    chunk: Vec<u8>,
    /// Uncompressed bytes so far, header page included.
    raw: u64,
    seq: u64,
    jobs: Option<SyncSender<Job>>,
    free: Receiver<Vec<u8>>,
    workers: Vec<JoinHandle<()>>,
}

impl ZstdPageFile {
    /// Creates the file (and removes a plain pages-PID.img a former dump
    /// left) and starts one compressing thread per core.
    pub fn create(dir: &ImageDir, pid: u32, level: i32) -> Result<Self> {
        let path = path(dir, pid);
        zstd::bulk::Compressor::new(level).with_context(|| format!("zstd level {level}"))?;
        let file = dir.create_file(&name(pid))?;
        dir.remove_file(&ImageDir::name(Kind::Pages, Some(pid)))?;
        let shared = Arc::new(Shared { path, file, order: Mutex::default(), turn: Condvar::new() });
        let n = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
        let (jobs, rx) = sync_channel::<Job>(2 * n);
        let rx = Arc::new(Mutex::new(rx));
        let (give, free) = channel();
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let (s, rx, give) = (shared.clone(), rx.clone(), give.clone());
            let w = std::thread::Builder::new().name(format!("rcr-zstd-{i}")).spawn(move || worker(&s, &rx, &give, level));
            workers.push(w.context("starting a compressing thread")?);
        }
        let mut chunk = Vec::with_capacity(FRAME);
        chunk.extend_from_slice(&pages_header());
        Ok(Self { shared, level, entries: Vec::new(), chunk, raw: PAGES_DATA_OFFSET, seq: 0, jobs: Some(jobs), free, workers })
    }

    /// Hands the full (or, at the end, last) frame to the threads.
    fn send(&mut self) -> Result<()> {
        if let Some(e) = &self.shared.lock().error {
            bail!("{e}");
        }
        let mut next = self.free.try_recv().unwrap_or_else(|_| Vec::with_capacity(FRAME));
        next.clear();
        let full = std::mem::replace(&mut self.chunk, next);
        let jobs = self.jobs.as_ref().context("the compressed pages file is closed")?;
        if jobs.send((self.seq, full)).is_err() {
            bail!("{}: the compressing threads are gone", self.shared.path.display());
        }
        self.seq += 1;
        Ok(())
    }

    /// Waits for the threads and returns (compressed bytes, seek table).
    fn drain(&mut self) -> Result<(u64, Vec<(u32, u32)>)> {
        if !self.chunk.is_empty() {
            self.send()?;
        }
        self.jobs = None;
        for w in self.workers.drain(..) {
            if w.join().is_err() {
                bail!("{}: a compressing thread panicked", self.shared.path.display());
            }
        }
        let mut o = self.shared.lock();
        if let Some(e) = o.error.take() {
            bail!("{e}");
        }
        Ok((o.pos, std::mem::take(&mut o.table)))
    }
}

impl PageSink for ZstdPageFile {
    fn put(&mut self, vaddr: u64, mut data: &[u8]) -> Result<()> {
        record(&mut self.entries, vaddr, data.len() as u64);
        self.raw += data.len() as u64;
        while !data.is_empty() {
            let n = (FRAME - self.chunk.len()).min(data.len());
            self.chunk.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.chunk.len() == FRAME {
                self.send()?;
            }
        }
        Ok(())
    }

    fn reserve(&mut self, _vaddr: u64, _len: u64) -> Option<(RawFd, u64)> {
        None
    }

    fn tail(&self) -> Option<(RawFd, u64)> {
        None
    }

    fn finish(mut self: Box<Self>) -> Result<Vec<PagemapEntry>> {
        let (pos, table) = self.drain()?;
        let path = &self.shared.path;
        let st = seek_table(&table);
        self.shared.file.write_all_at(&st, pos).with_context(|| format!("writing {}", path.display()))?;
        let size = pos + st.len() as u64;
        let pct = 100.0 * size as f64 / self.raw as f64;
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        crate::log::info(&format!(
            "{}: {:.1} MiB of pages compressed to {:.1} MiB ({pct:.1}%, zstd level {}, {} frames)",
            path.display(),
            mib(self.raw),
            mib(size),
            self.level,
            table.len()
        ));
        Ok(std::mem::take(&mut self.entries))
    }
}

/// The seek table frame: a skippable frame of (compressed, uncompressed)
/// sizes per frame and the footer (no checksums in the table: every frame
/// carries its own).
fn seek_table(table: &[(u32, u32)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + table.len() * 8 + FOOTER as usize);
    b.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    b.extend_from_slice(&((table.len() * 8) as u32 + FOOTER as u32).to_le_bytes());
    for (z, raw) in table {
        b.extend_from_slice(&z.to_le_bytes());
        b.extend_from_slice(&raw.to_le_bytes());
    }
    b.extend_from_slice(&(table.len() as u32).to_le_bytes());
    b.push(0);
    b.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
    b
}

/// One frame of a compressed pages file: where it lies in the file and
/// in the uncompressed pages file.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub off: u64,
    pub len: u32,
    pub raw_off: u64,
    pub raw_len: u32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads and checks the seek table of `f` (named `path` in errors).
pub fn read_table(f: &File, path: &Path) -> Result<Vec<Frame>> {
    let name = path.display();
    let size = f.metadata().with_context(|| format!("{name}: stat"))?.len();
    if size < 8 + FOOTER {
        bail!("{name}: {size} bytes, too short for a zstd seekable file: truncated, or not a compressed pages file");
    }
    let mut foot = [0u8; FOOTER as usize];
    f.read_exact_at(&mut foot, size - FOOTER).with_context(|| format!("{name}: reading the seek table footer"))?;
    if u32_at(&foot, 5) != SEEKABLE_MAGIC {
        bail!("{name}: no zstd seek table at its end (magic {:#x}): truncated, or not a compressed pages file", u32_at(&foot, 5));
    }
    let (n, desc) = (u64::from(u32_at(&foot, 0)), foot[4]);
    if desc & 0x7c != 0 {
        bail!("{name}: seek table descriptor {desc:#x} has reserved bits set");
    }
    let esize = if desc & 0x80 != 0 { 12 } else { 8 };
    let tlen = n * esize + FOOTER;
    let start = size.checked_sub(8 + tlen).with_context(|| format!("{name}: seek table of {n} frames is larger than the file"))?;
    let mut t = vec![0u8; 8 + tlen as usize];
    f.read_exact_at(&mut t, start).with_context(|| format!("{name}: reading the seek table"))?;
    if u32_at(&t, 0) != SKIPPABLE_MAGIC || u64::from(u32_at(&t, 4)) != tlen {
        bail!("{name}: the seek table frame at byte {start} has a bad header");
    }
    let mut frames = Vec::with_capacity(n as usize);
    let (mut off, mut raw_off) = (0u64, 0u64);
    for (i, e) in t[8..8 + (n * esize) as usize].chunks_exact(esize as usize).enumerate() {
        let (len, raw_len) = (u32_at(e, 0), u32_at(e, 4));
        if raw_len > MAX_FRAME {
            bail!("{name}: seek table entry {i}: frame of {raw_len} bytes (at most {MAX_FRAME} accepted)");
        }
        frames.push(Frame { off, len, raw_off, raw_len });
        off += u64::from(len);
        raw_off += u64::from(raw_len);
    }
    if off != start {
        bail!("{name}: the seek table describes {off} bytes of frames, the file holds {start}");
    }
    Ok(frames)
}

/// Opens `path` and reads its seek table, which must describe `want`
/// bytes of uncompressed pages file.
fn open_checked(path: &Path, want: u64) -> Result<(File, Vec<Frame>)> {
    let f = crate::images::open_no_symlink(path)?;
    let frames = read_table(&f, path)?;
    let raw = frames.last().map_or(0, |fr| fr.raw_off + u64::from(fr.raw_len));
    if raw != want {
        bail!("{}: decompresses to {raw} bytes, but the pagemap describes {want}", path.display());
    }
    Ok((f, frames))
}

/// Checks, from its seek table, that `path` decompresses to `want` bytes
/// (restore does it while loading the images, before decompressing).
pub fn check_size(path: &Path, want: u64) -> Result<()> {
    open_checked(path, want).map(|_| ())
}

/// Decompresses `path` into a new memfd (named `name`) that must come out
/// `want` bytes long: the contents of the plain pages file, which the
/// restorer blob reads like it. Every core decompresses frames.
pub fn unpack(path: &Path, want: u64, name: &str) -> Result<File> {
    let (f, frames) = open_checked(path, want)?;
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let mem = File::from(memfd_create(name, MFdFlags::MFD_CLOEXEC).context("memfd_create for the decompressed pages")?);
    mem.set_len(want).with_context(|| format!("sizing the memfd for {} to {want} bytes", path.display()))?;
    let next = AtomicUsize::new(0);
    let n = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8).min(frames.len().max(1));
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n).map(|_| s.spawn(|| unpack_frames(&f, &mem, &frames, &next, path))).collect();
        hs.into_iter().try_for_each(|h| h.join().unwrap_or_else(|_| bail!("{}: a decompressing thread panicked", path.display())))
    })?;
    Ok(mem)
}

/// A decompressing thread: takes frames in turn until none is left (or
/// another thread failed).
fn unpack_frames(f: &File, mem: &File, frames: &[Frame], next: &AtomicUsize, path: &Path) -> Result<()> {
    let mut z = zstd::bulk::Decompressor::new().context("creating a zstd decompressor")?;
    let (mut src, mut out) = (Vec::new(), Vec::new());
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(fr) = frames.get(i) else { return Ok(()) };
        let r = unpack_frame(&mut z, f, mem, fr, &mut src, &mut out);
        if r.is_err() {
            next.store(frames.len(), Ordering::Relaxed);
        }
        r.with_context(|| format!("{}: frame {i} (bytes {}..{})", path.display(), fr.off, fr.off + u64::from(fr.len)))?;
    }
}

fn unpack_frame(z: &mut zstd::bulk::Decompressor, f: &File, mem: &File, fr: &Frame, src: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<()> {
    src.resize(fr.len as usize, 0);
    f.read_exact_at(src, fr.off).context("reading the frame")?;
    out.clear();
    out.reserve(fr.raw_len as usize);
    let n = z.decompress_to_buffer(&src[..], out).map_err(|e| anyhow::anyhow!("corrupt zstd data: {e}"))?;
    if n != fr.raw_len as usize {
        bail!("decompresses to {n} bytes, its seek table entry says {}", fr.raw_len);
    }
    mem.write_all_at(out, fr.raw_off).context("writing the decompressed pages into a memfd")
}

/// What `rcr show` says of a compressed pages file: (file size,
/// uncompressed size, frames).
pub fn summary(path: &Path) -> Result<(u64, u64, usize)> {
    let f = crate::images::open_no_symlink(path)?;
    let frames = read_table(&f, path)?;
    let size = f.metadata().with_context(|| format!("{}: stat", path.display()))?.len();
    Ok((size, frames.iter().map(|fr| u64::from(fr.raw_len)).sum(), frames.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of text and of noise, some runs spanning frames, through the
    /// sink and back: the memfd holds exactly the plain pages file.
    #[test]
    fn round_trip() {
        let base = std::env::temp_dir().join(format!("rcr-zstd-unit-{}", std::process::id()));
        let dir = ImageDir::create(&base).expect("temp image dir");
        let mut sink = Box::new(ZstdPageFile::create(&dir, 7, DEFAULT_LEVEL).expect("sink"));
        let mut want = pages_header();
        let mut x = 0x1234_5678_9abc_def1u64;
        for (i, pages) in [3usize, 1100, 1, 2050].into_iter().enumerate() {
            let mut data = vec![0u8; pages * 4096];
            for (k, w) in data.chunks_exact_mut(8).enumerate() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&if i % 2 == 0 { x.to_le_bytes() } else { *b"words   " }.map(|b| b ^ (k % 3) as u8));
            }
            sink.put((i as u64 + 1) << 32, &data).expect("put");
            want.extend_from_slice(&data);
        }
        let entries = sink.finish().expect("finish");
        assert_eq!(entries.len(), 4);
        let p = path(&dir, 7);
        let (size, raw, frames) = summary(&p).expect("summary");
        assert_eq!((raw, frames), (want.len() as u64, want.len().div_ceil(FRAME)));
        assert!(size < raw, "{size} compressed bytes for {raw}");
        let mem = unpack(&p, want.len() as u64, "unit").expect("unpack");
        let mut got = vec![0u8; want.len()];
        mem.read_exact_at(&mut got, 0).expect("read memfd");
        assert!(got == want, "decompressed pages differ");
        assert!(unpack(&p, want.len() as u64 + 4096, "unit").is_err(), "a size the pagemap does not describe must be refused");
        let mut bad = std::fs::read(&p).expect("read");
        let n = bad.len();
        bad[n - 1] ^= 1;
        std::fs::write(&p, &bad).expect("write");
        let e = format!("{:#}", unpack(&p, want.len() as u64, "unit").expect_err("a broken seek table must be refused"));
        assert!(e.contains("pages-7.img.zst") && e.contains("seek table"), "{e}");
        let _ = std::fs::remove_dir_all(&base);
    }
}
