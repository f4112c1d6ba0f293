//! Dump side of memory.
//!
//! Which pages are saved, per kind of VMA (PAGEMAP_SCAN categories, or on
//! older kernels pagemap bits: 63 present, 62 swapped, 61 file page or
//! shared anonymous):
//!
//! | VMA               | saved pages                                        |
//! |-------------------|----------------------------------------------------|
//! | private anonymous | present or swapped, except the shared zero page and (if readable) pages of zeros |
//! | shared anonymous  | all data pages of the shmem object (SEEK_DATA), except all-zero ones |
//! | private file      | written ones: present and not a file page, or swapped |
//! | shared file       | none: the file holds the content                   |
//! | vDSO, vvar        | none: the kernel provides them                     |
use super::*;
use crate::files::fds::DumpCx;
use crate::files::reg::describe;
use crate::images::pages::PageSink;
use crate::images::pb::{Mm, Vma};
use crate::images::PAGE_SIZE;
use crate::proc::{self, MapEntry, Stat};
use anyhow::{bail, Context, Result};
use crate::infect::parasite::Parasite;
use rcr_abi::parasite::DrainRun;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
const PM_PFN: u64 = (1 << 55) - 1;
/// Largest chunk of memory read from the task at once.
const CHUNK: u64 = 4 << 20;

fn classify(m: &MapEntry) -> Result<VmaKind> {
    Ok(match m.name.as_str() {
        "[vdso]" => VmaKind::VmaVdso,
        "[vvar]" => VmaKind::VmaVvar,
        "[vvar_vclock]" => VmaKind::VmaVvarVclock,
        // Before the inode test: the maps "inode" of a segment is its shmid, 0 for the first.
        n if n.starts_with("/SYSV") && n.ends_with(" (deleted)") => bail!(
            "mapping {}: an attached SysV shared memory segment (key 0x{}, shmid {}); rcr cannot carry SysV IPC objects",
            m.describe(),
            &n[5..n.len() - 10],
            m.inode
        ),
        _ if m.inode == 0 => {
            if m.shared() {
                VmaKind::VmaAnonShared
            } else {
                VmaKind::VmaAnonPrivate
            }
        }
        "/dev/zero (deleted)" if m.shared() => VmaKind::VmaAnonShared,
        n if n.starts_with('/') && !n.ends_with(" (deleted)") => {
            if m.shared() {
                VmaKind::VmaFileShared
            } else {
                VmaKind::VmaFilePrivate
            }
        }
        n if n.starts_with('[') && m.inode == 0 => VmaKind::VmaAnonPrivate,
        // memfds and deleted files: their inode goes to memfiles.img.
        n if n.starts_with('/') && m.shared() => VmaKind::VmaFileShared,
        n if n.starts_with('/') => VmaKind::VmaFilePrivate,
        _ => bail!("mapping {}: backed by a file rcr cannot reopen (deleted, memfd or SysV shm)", m.describe()),
    })
}

fn prot_of(perms: &str) -> u32 {
    let b = perms.as_bytes();
    let mut p = 0;
    if b.first() == Some(&b'r') {
        p |= PROT_READ;
    }
    if b.get(1) == Some(&b'w') {
        p |= PROT_WRITE;
    }
    if b.get(2) == Some(&b'x') {
        p |= PROT_EXEC;
    }
    p
}

/// Builds the VMA records (registering backing files in `files`).
pub fn vmas(pid: i32, maps: &[MapEntry], cx: &mut DumpCx) -> Result<Vec<Vma>> {
    let mut out = Vec::new();
    for m in maps {
        if m.name == "[vsyscall]" {
            continue; // fixed kernel page above TASK_SIZE, present in every process
        }
        let kind = classify(m)?;
        if !is_special(kind) && (m.has_flag("io") || m.has_flag("pf")) {
            bail!("mapping {}: device or PFN mapping (VM_IO/VM_PFNMAP), rcr cannot dump it", m.describe());
        }
        let mut flags = if m.shared() { MAP_SHARED } else { MAP_PRIVATE };
        if matches!(kind, VmaKind::VmaAnonPrivate | VmaKind::VmaAnonShared) {
            flags |= MAP_ANONYMOUS;
        }
        if m.has_flag("gd") {
            flags |= MAP_GROWSDOWN;
        }
        if m.has_flag("nr") {
            flags |= MAP_NORESERVE;
        }
        let (mut file_id, mut mem_file_id) = (0, 0);
        if matches!(kind, VmaKind::VmaFilePrivate | VmaKind::VmaFileShared) && m.name.ends_with(" (deleted)") {
            mem_file_id = mem_file(pid, m, cx)?;
        } else if matches!(kind, VmaKind::VmaFilePrivate | VmaKind::VmaFileShared) {
            let what = format!("mapping {}", m.describe());
            let link = proc::path(pid, &format!("map_files/{:x}-{:x}", m.start, m.end));
            let mut f = describe(&link, &what, None)?;
            // Shared mappings that may become writable need a writable fd.
            let write = m.shared() && m.has_flag("mw");
            f.flags = if write { libc::O_RDWR as u32 } else { libc::O_RDONLY as u32 };
            file_id = cx.files.add_shared(f);
        }
        out.push(Vma {
            start: m.start,
            end: m.end,
            prot: prot_of(&m.perms),
            flags,
            kind: kind as i32,
            pgoff: m.offset,
            file_id,
            name: m.name.clone(),
            vm_flags: m.vm_flags.clone(),
            dev: libc::makedev(m.dev_major, m.dev_minor),
            inode: m.inode,
            mem_file_id,
        });
    }
    Ok(out)
}

/// A mapping of a memfd or a deleted file: its inode, through
/// /proc/PID/map_files, in the table of inodes without a path.
fn mem_file(pid: i32, m: &MapEntry, cx: &mut DumpCx) -> Result<u32> {
    use crate::files::{fds, ghost, memfd};
    use crate::images::pb::{MemFile, MemFileKind};
    let what = format!("mapping {}", m.describe());
    let link = proc::path(pid, &format!("map_files/{:x}-{:x}", m.start, m.end));
    let f = std::fs::File::open(&link).with_context(|| format!("{what}: opening {}", link.display()))?;
    if let Some(why) = fds::special_fs(&f) {
        bail!("{what}: {why}; rcr cannot carry it");
    }
    let head = match (memfd::memfd_name(&m.name), ghost::ghost_path(&m.name)) {
        (Some(name), _) => {
            memfd::check_memfd_fs(&f).with_context(|| what.clone())?;
            MemFile { kind: MemFileKind::MemFileMemfd as i32, name: name.to_string(), ..Default::default() }
        }
        (None, Some(path)) => MemFile { kind: MemFileKind::MemFileGhost as i32, name: path.to_string(), ..Default::default() },
        _ => bail!("{what}: backed by a file rcr cannot reopen"),
    };
    let mode = std::os::unix::fs::MetadataExt::mode(&f.metadata().with_context(|| format!("{what}: fstat"))?);
    if mode & libc::S_IFMT != libc::S_IFREG {
        bail!("{what}: not a regular file; rcr cannot carry it");
    }
    cx.memfd.add(&f, &what, head)
}

/// The mm_struct fields (brk comes separately: /proc does not show it).
pub fn mm_fields(st: &Stat, brk: u64, auxv: Vec<u64>, exe_file_id: u32, vmas: Vec<Vma>) -> Mm {
    Mm {
        start_code: st.start_code,
        end_code: st.end_code,
        start_data: st.start_data,
        end_data: st.end_data,
        start_brk: st.start_brk,
        brk,
        start_stack: st.start_stack,
        arg_start: st.arg_start,
        arg_end: st.arg_end,
        env_start: st.env_start,
        env_end: st.env_end,
        auxv,
        exe_file_id,
        vmas,
    }
}

/// Raw /proc/PID/auxv as words.
pub fn auxv(pid: i32) -> Result<Vec<u64>> {
    let p = proc::path(pid, "auxv");
    let b = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
}

/// Appends the runs of `vma` that must be saved to `runs`: from the
/// PAGEMAP_SCAN ioctl (which walks the page tables, so an untouched range
/// costs nothing), or, on kernels without it (`*scan` turns false), from
/// reading the VMA's pagemap entries.
fn saved_runs(pagemap: &std::fs::File, vma: &Vma, zero_pfn: Option<u64>, scan: &mut bool, runs: &mut Vec<(u64, u64)>) -> Result<()> {
    let kind = VmaKind::try_from(vma.kind).unwrap_or(VmaKind::Unspecified);
    if !matches!(kind, VmaKind::VmaAnonPrivate | VmaKind::VmaFilePrivate) {
        return Ok(());
    }
    crate::stats::add(crate::stats::Count::PagesScanned, (vma.end - vma.start) / PAGE_SIZE);
    if *scan {
        match scan_runs(pagemap, vma, kind, runs) {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => *scan = false,
            Err(e) => return Err(e).with_context(|| format!("PAGEMAP_SCAN of {:#x}-{:#x}", vma.start, vma.end)),
        }
    }
    let want = pages_to_save(pagemap, vma, zero_pfn)?;
    runs_of(vma.start, &want, runs);
    Ok(())
}

/// Regions asked from the kernel per PAGEMAP_SCAN call.
const SCAN_REGIONS: usize = 4096;

/// The PAGEMAP_SCAN path of [`saved_runs`]: regions of present or swapped
/// pages, kept by the same rules as the pagemap bits (table above). When
/// many regions come back, the kernel's walk_end may stop short of a range
/// it did scan, so a resumed walk can repeat regions: they are clipped.
fn scan_runs(pagemap: &std::fs::File, vma: &Vma, kind: VmaKind, runs: &mut Vec<(u64, u64)>) -> std::io::Result<()> {
    use crate::sys::{PageRegion, PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED};
    let keep = |c: u64| match kind {
        VmaKind::VmaAnonPrivate => c & PAGE_IS_SWAPPED != 0 || (c & PAGE_IS_PRESENT != 0 && c & PAGE_IS_PFNZERO == 0),
        _ => c & PAGE_IS_SWAPPED != 0 || (c & PAGE_IS_PRESENT != 0 && c & PAGE_IS_FILE == 0),
    };
    let mut buf = vec![PageRegion::default(); SCAN_REGIONS];
    let (any, ret) = (PAGE_IS_PRESENT | PAGE_IS_SWAPPED, PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE | PAGE_IS_PFNZERO);
    let mut done = vma.start;
    loop {
        let (n, walk_end) = crate::sys::pagemap_scan(pagemap.as_raw_fd(), done, vma.end, any, ret, &mut buf)?;
        for r in buf[..n].iter().filter(|r| keep(r.categories)) {
            let start = r.start.max(runs.last().map_or(0, |l| l.0 + l.1));
            match runs.last_mut() {
                _ if start >= r.end => {}
                Some(l) if l.0 + l.1 == start => l.1 += r.end - start,
                _ => runs.push((start, r.end - start)),
            }
        }
        if n < buf.len() || walk_end >= vma.end || walk_end <= done {
            return Ok(());
        }
        done = walk_end;
    }
}

/// Which pages of `vma` must be saved, as a bitmap over its pages.
/// Private anonymous pages that map the shared zero page (read, never
/// written) are left out when its frame number is known.
fn pages_to_save(pagemap: &std::fs::File, vma: &Vma, zero_pfn: Option<u64>) -> Result<Vec<bool>> {
    let n = ((vma.end - vma.start) / PAGE_SIZE) as usize;
    let mut raw = vec![0u8; n * 8];
    pagemap
        .read_exact_at(&mut raw, vma.start / PAGE_SIZE * 8)
        .with_context(|| format!("reading pagemap of {:#x}-{:#x}", vma.start, vma.end))?;
    let kind = VmaKind::try_from(vma.kind).unwrap_or(VmaKind::Unspecified);
    let mut zero = 0;
    let want = raw
        .chunks_exact(8)
        .map(|c| {
            let e = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            match kind {
                VmaKind::VmaAnonPrivate if e & PM_PRESENT != 0 && Some(e & PM_PFN) == zero_pfn => {
                    zero += 1;
                    false
                }
                VmaKind::VmaAnonPrivate if e & PM_PRESENT != 0 => true,
                VmaKind::VmaAnonPrivate => e & PM_SWAP != 0,
                VmaKind::VmaFilePrivate => e & PM_SWAP != 0 || (e & PM_PRESENT != 0 && e & PM_FILE == 0),
                _ => false,
            }
        })
        .collect();
    crate::stats::add(crate::stats::Count::PagesZero, zero);
    Ok(want)
}

/// The runs (address, length) of `want`, a bitmap over the pages of a
/// VMA starting at `start`, appended to `runs`.
fn runs_of(start: u64, want: &[bool], runs: &mut Vec<(u64, u64)>) {
    let mut i = 0;
    while i < want.len() {
        if !want[i] {
            i += 1;
            continue;
        }
        let j = (i..want.len()).find(|&j| !want[j]).unwrap_or(want.len());
        runs.push((start + i as u64 * PAGE_SIZE, (j - i) as u64 * PAGE_SIZE));
        i = j;
    }
}

fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(8).all(|w| w == [0u8; 8])
}

/// Where the contents of a task's private memory come from.
pub trait PageSource {
    /// Moves `runs` (address and length, page aligned, in increasing
    /// order) of the task's memory into `sink`, leaving out the pages
    /// that are all zero when `skip_zero` (then the runs are readable
    /// private anonymous memory, which restores as zero anyway).
    fn drain(&mut self, runs: &[(u64, u64)], skip_zero: bool, sink: &mut dyn PageSink) -> Result<()>;
    /// How pages travel, for the log.
    fn describe(&self) -> &'static str;
}

/// The fallback path, from outside the task: process_vm_readv into a
/// buffer, then the sink.
#[derive(Debug)]
pub struct ReadvSource {
    pub pid: i32,
}

impl PageSource for ReadvSource {
    fn drain(&mut self, runs: &[(u64, u64)], skip_zero: bool, sink: &mut dyn PageSink) -> Result<()> {
        let mut buf = vec![0u8; CHUNK.min(runs.iter().map(|r| r.1).max().unwrap_or(0)) as usize];
        readv_runs(self.pid, runs, skip_zero, sink, &mut buf)
    }

    fn describe(&self) -> &'static str {
        "process_vm_readv (fallback)"
    }
}

/// process_vm_readv of `runs` through `buf`, then into `sink`.
fn readv_runs(pid: i32, runs: &[(u64, u64)], skip_zero: bool, sink: &mut dyn PageSink, buf: &mut [u8]) -> Result<()> {
    for &(addr, len) in runs {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            crate::infect::read_memory(pid, addr + done, &mut buf[..n]).with_context(|| format!("reading pages at {:#x}", addr + done))?;
            put_run(sink, addr + done, &buf[..n], skip_zero)?;
            done += n as u64;
        }
    }
    Ok(())
}

/// Reads the pages of every VMA that needs them and hands them to `sink`:
/// private memory through `source`, shared anonymous memory from its
/// shmem object.
pub fn dump_pages(pid: i32, vmas: &[Vma], source: &mut dyn PageSource, sink: &mut dyn PageSink) -> Result<()> {
    let pm_path = proc::path(pid, "pagemap");
    let pagemap = std::fs::File::open(&pm_path).with_context(|| format!("opening {}", pm_path.display()))?;
    let zero_pfn = crate::sys::zero_page_pfn();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut runs = Vec::new();
    let mut scan = true;
    let mut skip_zero = false;
    for vma in vmas {
        if vma.kind == VmaKind::VmaAnonShared as i32 {
            flush_runs(&mut runs, skip_zero, source, sink)?;
            dump_shmem(pid, vma, &mut buf, sink)?;
            continue;
        }
        // Written pages of zeros in private anonymous memory are left out
        // (restored memory is fresh, so zero); the test reads the page, so
        // only where it is readable. File pages must keep their zeros.
        let zero_ok = vma.kind == VmaKind::VmaAnonPrivate as i32 && vma.prot & PROT_READ != 0;
        if zero_ok != skip_zero {
            flush_runs(&mut runs, skip_zero, source, sink)?;
            skip_zero = zero_ok;
        }
        saved_runs(&pagemap, vma, zero_pfn, &mut scan, &mut runs)?;
    }
    flush_runs(&mut runs, skip_zero, source, sink)?;
    Ok(())
}

fn flush_runs(runs: &mut Vec<(u64, u64)>, skip_zero: bool, source: &mut dyn PageSource, sink: &mut dyn PageSink) -> Result<()> {
    if !runs.is_empty() {
        source.drain(runs, skip_zero, sink)?;
        runs.clear();
    }
    Ok(())
}

/// Shared anonymous memory lives in a shmem object; pages this process
/// never faulted in, or that were swapped out, leave no trace in its
/// pagemap. So read the object itself through /proc/PID/map_files,
/// finding its data with SEEK_DATA/SEEK_HOLE.
fn dump_shmem(pid: i32, vma: &Vma, buf: &mut [u8], sink: &mut dyn PageSink) -> Result<u64> {
    use std::os::fd::AsRawFd;
    let what = || format!("shared anonymous mapping {:#x}-{:#x}", vma.start, vma.end);
    let link = proc::path(pid, &format!("map_files/{:x}-{:x}", vma.start, vma.end));
    let f = std::fs::File::open(&link).with_context(|| format!("{}: opening {}", what(), link.display()))?;
    let end = vma.pgoff + (vma.end - vma.start);
    let mut saved = 0;
    let mut off = vma.pgoff;
    while off < end {
        let data = match crate::sys::seek_data(f.as_raw_fd(), off, false) {
            Ok(Some(d)) if d < end => d & !(PAGE_SIZE - 1),
            Ok(_) => break,
            Err(e) => return Err(e).with_context(what),
        };
        let hole = crate::sys::seek_data(f.as_raw_fd(), data, true).with_context(what)?.unwrap_or(end).min(end);
        let mut pos = data;
        while pos < hole {
            let len = (hole - pos).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..len], pos).with_context(what)?;
            saved += put_run(sink, vma.start + (pos - vma.pgoff), &buf[..len], true)?;
            pos += len as u64;
        }
        off = hole;
    }
    Ok(saved)
}

/// Stores a run of pages, leaving out all-zero pages when `skip_zero`.
fn put_run(sink: &mut dyn PageSink, addr: u64, data: &[u8], skip_zero: bool) -> Result<u64> {
    let ps = PAGE_SIZE as usize;
    if !skip_zero {
        sink.put(addr, data)?;
        return Ok((data.len() / ps) as u64);
    }
    let mut saved = 0;
    let mut start: Option<usize> = None;
    for (k, page) in data.chunks_exact(ps).enumerate() {
        match (is_zero(page), start) {
            (false, None) => start = Some(k),
            (true, Some(s)) => {
                sink.put(addr + (s * ps) as u64, &data[s * ps..k * ps])?;
                saved += (k - s) as u64;
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        sink.put(addr + (s * ps) as u64, &data[s * ps..])?;
        saved += (data.len() / ps - s) as u64;
    }
    crate::stats::add(crate::stats::Count::PagesZero, (data.len() / ps) as u64 - saved);
    Ok(saved)
}

/// How the parasite moves pages out of the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParasiteVia {
    /// pwrite from the task's memory into the image file: one copy, the
    /// fastest path to a file (see MACHINE-FACTS).
    Write,
    /// vmsplice into a pipe, splice from the pipe into the image file: the
    /// path a stream sink (page server) needs.
    Splice,
}

/// Opens the sink of the second writer (the second pages file).
pub type OpenSink<'s> = Box<dyn FnMut() -> Result<Box<dyn PageSink>> + 's>;

/// The second pages file, for a second writer on the other core: a
/// thread the parasite clones in the task, pwriting half of each large
/// drain from the task's memory while the parasite writes the other half
/// (ext4 serializes buffered writes into one inode, so two writers need
/// two files). Opened on the first drain large enough to share.
pub struct SecondFile<'s> {
    open: OpenSink<'s>,
    sink: Option<Box<dyn PageSink>>,
}

impl std::fmt::Debug for SecondFile<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecondFile").field("opened", &self.sink.is_some()).finish()
    }
}

impl<'s> SecondFile<'s> {
    pub fn new(open: OpenSink<'s>) -> Self {
        SecondFile { open, sink: None }
    }

    /// The pagemap entries of what went into the second file (none if it
    /// was never opened).
    pub fn finish(self) -> Result<Vec<crate::images::pb::PagemapEntry>> {
        self.sink.map_or(Ok(Vec::new()), |s| s.finish())
    }
}

/// Drains smaller than this are not shared between two writers.
const SHARE_MIN: u64 = 16 << 20;

/// Largest run one list of a pair batch carries (its bitmap must fit half
/// of the data area): longer runs are split.
const PAIR_PIECE: u64 = 4 << 30;

/// The normal path: pages leave through the parasite.
#[derive(Debug)]
pub struct ParasiteSource<'a, 't> {
    p: &'a mut Parasite<'t>,
    via: ParasiteVia,
    /// The image file (Write) or the pipe's write end (Splice), as an fd
    /// number in the task.
    task_fd: Option<(RawFd, i32)>,
    pipe_read: Option<OwnedFd>,
    second: Option<SecondFile<'a>>,
    /// The second file's fd number in the task.
    second_fd: Option<i32>,
}

impl<'a, 't> ParasiteSource<'a, 't> {
    pub fn new(p: &'a mut Parasite<'t>, via: ParasiteVia) -> Self {
        ParasiteSource { p, via, task_fd: None, pipe_read: None, second: None, second_fd: None }
    }

    /// Shares large Write drains with a second thread in the task, writing
    /// into `second`. Only for a task without seccomp filters: its new
    /// thread would run under them (rcr suspends them for the traced one).
    pub fn set_second_file(&mut self, second: SecondFile<'a>) {
        self.second = Some(second);
    }

    /// The second file back, to finish it.
    pub fn take_second_file(&mut self) -> Option<SecondFile<'a>> {
        self.second.take()
    }

    /// Drains `runs` with two writers: the first half of the bytes (lower
    /// addresses) by the parasite into `sink`, the second half by its
    /// second thread into the second file, in batches that fit the data
    /// area; each sink records its runs where they were written.
    fn drain_pair(&mut self, second: &mut SecondFile<'a>, runs: &[(u64, u64)], skip_zero: bool, sink: &mut dyn PageSink) -> Result<()> {
        use crate::infect::parasite::drain_pair_fits;
        if second.sink.is_none() {
            second.sink = Some((second.open)()?);
        }
        let other = second.sink.as_deref_mut().context("second pages file")?;
        let total: u64 = runs.iter().map(|r| r.1).sum();
        let (head, tail) = split_at_byte(runs, total / 2 / PAGE_SIZE * PAGE_SIZE);
        let lists = [split_runs(&head, PAIR_PIECE), split_runs(&tail, PAIR_PIECE)];
        let mut next = [0usize; 2];
        while next[0] < lists[0].len() || next[1] < lists[1].len() {
            let tails = [sink.tail(), other.tail()];
            let (Some((file0, base0)), Some((file1, base1))) = (tails[0], tails[1]) else { bail!("this page sink does not take direct writes") };
            let mut batch: [Vec<DrainRun>; 2] = Default::default();
            let mut grew = true;
            while grew {
                grew = false;
                for (k, base) in [(0, base0), (1, base1)] {
                    let Some(&(vaddr, len)) = lists[k].get(next[k]) else { continue };
                    batch[k].push(DrainRun { vaddr, len, file_off: base });
                    if drain_pair_fits([&batch[0], &batch[1]]) {
                        next[k] += 1;
                        grew = true;
                    } else {
                        batch[k].pop();
                    }
                }
            }
            let fds = [self.task_fd(file0)?, self.second_fd(file1)?];
            let (written, zero) = self.p.drain_pair(fds, [&batch[0], &batch[1]], skip_zero)?;
            record_batch(sink, &batch[0], &zero[0], base0, written[0])?;
            record_batch(other, &batch[1], &zero[1], base1, written[1])?;
        }
        Ok(())
    }

    fn second_fd(&mut self, mine: RawFd) -> Result<i32> {
        match self.second_fd {
            Some(theirs) => Ok(theirs),
            None => {
                let theirs = self.p.give_fd(mine)?;
                self.second_fd = Some(theirs);
                Ok(theirs)
            }
        }
    }

    /// The task's number for rcr's fd `mine`, handing it over once.
    fn task_fd(&mut self, mine: RawFd) -> Result<i32> {
        match self.task_fd {
            Some((m, theirs)) if m == mine => Ok(theirs),
            Some(_) => bail!("the page sink changed its file mid-dump"),
            None => {
                let theirs = self.p.give_fd(mine)?;
                self.task_fd = Some((mine, theirs));
                Ok(theirs)
            }
        }
    }

    fn pipe(&mut self) -> Result<(RawFd, i32)> {
        if self.pipe_read.is_none() {
            let (r, w) = crate::sys::pipe(PIPE_SIZE).context("creating the page pipe")?;
            self.task_fd(w.as_raw_fd())?;
            self.pipe_read = Some(r);
        }
        let r = self.pipe_read.as_ref().map(|r| r.as_raw_fd()).context("page pipe")?;
        Ok((r, self.task_fd.map(|t| t.1).context("page pipe")?))
    }

    /// The skip-zero Write path: the parasite packs the non-zero pages of
    /// each batch back to back from the sink's tail and returns a bitmap
    /// of the zero ones; the sink then records the non-zero runs, which
    /// must land exactly where the parasite wrote them.
    fn drain_skip_zero(&mut self, runs: &[(u64, u64)], sink: &mut dyn PageSink) -> Result<()> {
        use crate::infect::parasite::drain_fits;
        let pieces = split_runs(runs, MAX_PIECE);
        let mut i = 0;
        while i < pieces.len() {
            let (file, base) = sink.tail().context("this page sink does not take direct writes")?;
            let mut batch = Vec::new();
            while let Some(&(vaddr, len)) = pieces.get(i) {
                batch.push(DrainRun { vaddr, len, file_off: base });
                if !drain_fits(&batch) {
                    batch.pop();
                    break;
                }
                i += 1;
            }
            let fd = self.task_fd(file)?;
            let (written, zero) = self.p.drain_write_skip_zero(fd, &batch)?;
            record_batch(sink, &batch, &zero, base, written)?;
        }
        Ok(())
    }
}

/// Records in `sink` the runs of `batch` the parasite wrote back to back
/// from `base` (all but the pages set in the bitmap `zero`), checking
/// they land where it wrote them and add up to `written` bytes.
fn record_batch(sink: &mut dyn PageSink, batch: &[DrainRun], zero: &[u64], base: u64, written: u64) -> Result<()> {
    crate::stats::add(crate::stats::Count::PagesZero, zero.iter().map(|w| u64::from(w.count_ones())).sum());
    let mut at = base;
    for (vaddr, len) in nonzero_runs(batch, zero) {
        let (_, off) = sink.reserve(vaddr, len).context("this page sink does not take direct writes")?;
        if off != at {
            bail!("page sink put {vaddr:#x} at {off}, the parasite wrote it at {at}");
        }
        at += len;
    }
    if at - base != written {
        bail!("the parasite wrote {written} bytes of pages, its zero-page bitmap leaves {}", at - base);
    }
    Ok(())
}

/// Runs of memory: (address, length) in bytes.
type Runs = Vec<(u64, u64)>;

/// `runs` cut after `at` bytes: the runs before, the runs after (a run
/// may be split at a page boundary).
fn split_at_byte(runs: &[(u64, u64)], at: u64) -> (Runs, Runs) {
    let (mut head, mut tail, mut seen) = (Vec::new(), Vec::new(), 0);
    for &(vaddr, len) in runs {
        let n = at.saturating_sub(seen).min(len);
        if n > 0 {
            head.push((vaddr, n));
        }
        if n < len {
            tail.push((vaddr + n, len - n));
        }
        seen += len;
    }
    (head, tail)
}

/// Pipe size asked for the splice path (fs.pipe-max-size is 1 MiB here).
const PIPE_SIZE: i32 = 1 << 20;

/// Largest run one skip-zero batch carries (its bitmap must fit the
/// parasite's data area): longer runs are split.
const MAX_PIECE: u64 = 16 << 30;

fn split_runs(runs: &[(u64, u64)], max: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(runs.len());
    for &(mut vaddr, mut len) in runs {
        while len > max {
            out.push((vaddr, max));
            (vaddr, len) = (vaddr + max, len - max);
        }
        out.push((vaddr, len));
    }
    out
}

/// The runs of `batch` whose pages are not set in the bitmap `zero`.
fn nonzero_runs(batch: &[DrainRun], zero: &[u64]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut k = 0usize;
    for r in batch {
        let n = (r.len / PAGE_SIZE) as usize;
        let want: Vec<bool> = (k..k + n).map(|b| zero.get(b / 64).is_none_or(|w| w >> (b % 64) & 1 == 0)).collect();
        runs_of(r.vaddr, &want, &mut out);
        k += n;
    }
    out
}

impl PageSource for ParasiteSource<'_, '_> {
    fn drain(&mut self, runs: &[(u64, u64)], skip_zero: bool, sink: &mut dyn PageSink) -> Result<()> {
        let total: u64 = runs.iter().map(|r| r.1).sum();
        if let Some(mut second) = self.second.take_if(|_| total >= SHARE_MIN && self.via == ParasiteVia::Write) {
            let r = self.drain_pair(&mut second, runs, skip_zero, sink);
            self.second = Some(second);
            return r;
        }
        self.drain_here(runs, skip_zero, sink)
    }

    fn describe(&self) -> &'static str {
        match self.via {
            ParasiteVia::Write => "parasite write",
            ParasiteVia::Splice => "parasite vmsplice + splice",
        }
    }
}

impl ParasiteSource<'_, '_> {
    /// Drains `runs` through the parasite alone.
    fn drain_here(&mut self, runs: &[(u64, u64)], skip_zero: bool, sink: &mut dyn PageSink) -> Result<()> {
        if skip_zero && self.via == ParasiteVia::Write {
            return self.drain_skip_zero(runs, sink);
        }
        let max = self.p.max_runs();
        for chunk in runs.chunks(max) {
            let mut file = -1;
            let mut batch = Vec::with_capacity(chunk.len());
            for &(vaddr, len) in chunk {
                let (fd, file_off) = sink.reserve(vaddr, len).context("this page sink does not take direct writes")?;
                file = fd;
                batch.push(DrainRun { vaddr, len, file_off });
            }
            match self.via {
                ParasiteVia::Write => {
                    let fd = self.task_fd(file)?;
                    self.p.drain_write(fd, &batch)?;
                }
                ParasiteVia::Splice => {
                    let (pipe_r, fd) = self.pipe()?;
                    let mut consume = |_total: u64, sock: RawFd| splice_runs(pipe_r, sock, file, &batch);
                    self.p.drain_splice(fd, &batch, &mut consume)?;
                }
            }
        }
        Ok(())
    }
}

/// Moves the spliced runs from the pipe into the file at their offsets.
/// Stops if the parasite answers before all bytes came (it failed).
fn splice_runs(pipe: RawFd, sock: RawFd, file: RawFd, runs: &[DrainRun]) -> Result<()> {
    for run in runs {
        let mut done = 0;
        while done < run.len {
            if crate::sys::poll_readable(&[pipe, sock]).context("waiting for pages")? == 1 {
                bail!("the parasite stopped sending pages at {:#x}", run.vaddr + done);
            }
            let n = crate::sys::splice_to_file(pipe, file, run.file_off + done, run.len - done)
                .with_context(|| format!("splicing pages at {:#x} into the image", run.vaddr + done))?;
            if n == 0 {
                bail!("the page pipe closed at {:#x}: the parasite is gone", run.vaddr + done);
            }
            done += n;
        }
    }
    Ok(())
}
