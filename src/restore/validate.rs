//! Step 2 of the restore pipeline: every image is checked before anything
//! is created. Images are untrusted input (a corrupt disk, a truncated
//! copy, a hand edit, another rcr's format): every size, count, address,
//! fd number, length, enum value and id that refers to another image is
//! bounded here, so the later steps ([`crate::mm::restore::plan`], the
//! bootstrap region, the forked children, the blob) only see values they
//! can carry. Each error names the image file and the field, e.g.
//! `mm-1234.img: vma 17 [0x7f00..-0x7f00..): start not page aligned`.
//!
//! Three groups, in pipeline order:
//! * [`shared`]: the tree-wide images (inventory, pstree, files, fds,
//!   pipes, memfiles), once they are decoded;
//! * [`process`]: the images of one process (core, mm, pagemap, pages,
//!   fdinfo, fs), before its memory plan is made;
//! * [`environment`]: this machine against the images (PIDs free, files
//!   unchanged, XSAVE features, limits and credentials rcr can give).
//!
//! `images-format.md` ("What restore checks") lists the checks.
use super::{host_xsave_size, Tree};
use crate::arch::cur as arch;
use crate::files::fds::Images;
use crate::files::FileTable;
use crate::images::pb::{self, file_desc::Kind as DescKind};
use crate::images::{Kind, PAGES_DATA_OFFSET, PAGE_SIZE};
use crate::proc;
use anyhow::{bail, Context, Result};
use rcr_abi::{AUXV_WORDS, TASK_SIZE};
use std::collections::{HashMap, HashSet};
use std::fmt::Display;

/// Longest path the kernel takes (PATH_MAX, NUL included).
const PATH_MAX: usize = 4096;
/// Most threads per process, VMAs per process, entries of a list field.
const MAX_THREADS: usize = 1 << 16;
const MAX_VMAS: usize = 1 << 20;
const MAX_LIST: usize = 1 << 16;
/// Largest XSAVE area accepted (today's CPUs use under 12 KiB).
const MAX_XSAVE: usize = 1 << 16;
/// Smallest XSAVE area: the legacy region and the XSAVE header.
const MIN_XSAVE: usize = 512 + 64;
/// NGROUPS_MAX, BPF_MAXINSNS, highest signal number.
const NGROUPS_MAX: usize = 65536;
const BPF_MAXINSNS: usize = 4096;
const MAX_SIG: u32 = 64;
const SIGINFO_LEN: usize = 128;
/// Bytes of sockaddr_un.sun_path.
const SUN_PATH: usize = 108;

/// What this machine allows: PIDs below `pid_max`, fd numbers below
/// RLIMIT_NOFILE's hard limit.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub pid_max: u32,
    pub nofile: u64,
}

impl Limits {
    pub fn host() -> Result<Limits> {
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").context("reading /proc/sys/kernel/pid_max")?;
        let pid_max = pid_max.trim().parse().context("parsing /proc/sys/kernel/pid_max")?;
        let (_, nofile) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
        Ok(Limits { pid_max, nofile })
    }
}

/// The file name of a per-process image.
pub fn name(kind: Kind, pid: u32) -> String {
    format!("{}-{pid}.img", kind.stem())
}

fn check_path(file: &str, field: impl Display, p: &str, absolute: bool) -> Result<()> {
    if p.len() >= PATH_MAX || p.contains('\0') || (absolute && !p.starts_with('/')) {
        let len = p.len();
        bail!("{file}: {field}: {:?}{} is not a usable path", &p[..p.floor_char_boundary(64)], if len > 64 { format!("... ({len} bytes)") } else { String::new() });
    }
    Ok(())
}

fn check_len(file: &str, field: impl Display, len: usize, max: usize) -> Result<()> {
    if len > max {
        bail!("{file}: {field}: {len} entries or bytes, at most {max} accepted");
    }
    Ok(())
}

fn check_pid(file: &str, field: impl Display, pid: u32, l: &Limits, zero_ok: bool) -> Result<()> {
    if (pid == 0 && !zero_ok) || pid >= l.pid_max {
        bail!("{file}: {field} {pid} is out of range (1..{})", l.pid_max);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Tree-wide images
// ---------------------------------------------------------------------------

/// The tree-wide images: inventory, pstree (ids, parent links), files,
/// fds and what they refer to, pipes, memfiles.
pub fn shared(inv: &pb::Inventory, entries: &[pb::PstreeEntry], files: &FileTable, fds: &Images, l: &Limits) -> Result<()> {
    if inv.page_size as u64 != PAGE_SIZE {
        bail!("inventory.img: page_size {} (this machine's is {PAGE_SIZE})", inv.page_size);
    }
    pstree(entries, l)?;
    for (i, f) in files.files.iter().enumerate() {
        if f.id as usize != i + 1 {
            bail!("files.img: entry {i} has id {}; ids must run from 1", f.id);
        }
        check_path("files.img", format_args!("file {} path", f.id), &f.path, true)?;
    }
    descriptions(files, fds)?;
    let mut pipe_ids = HashSet::new();
    for p in &fds.pipes {
        if !pipe_ids.insert(p.id) {
            bail!("pipes.img: pipe {} appears twice", p.id);
        }
        if p.size > 1 << 31 || p.data.len() > p.size as usize {
            bail!("pipes.img: pipe {}: size {} with {} bytes of data", p.id, p.size, p.data.len());
        }
    }
    mem_files(&fds.mem_files)
}

/// Ids in range, each once; the root first, every other process after
/// its parent (so the parent links form a tree rooted at the first).
fn pstree(entries: &[pb::PstreeEntry], l: &Limits) -> Result<()> {
    const F: &str = "pstree.img";
    check_len(F, "processes", entries.len(), l.pid_max as usize)?;
    let mut seen: HashMap<u32, usize> = HashMap::new();
    let mut ids = HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        check_pid(F, format_args!("entry {i}: pid"), e.pid, l, false)?;
        check_pid(F, format_args!("pid {}: ppid", e.pid), e.ppid, l, true)?;
        check_pid(F, format_args!("pid {}: pgid", e.pid), e.pgid, l, true)?;
        check_pid(F, format_args!("pid {}: sid", e.pid), e.sid, l, true)?;
        check_len(F, format_args!("pid {}: threads", e.pid), e.threads.len(), MAX_THREADS)?;
        for &t in &e.threads {
            check_pid(F, format_args!("pid {}: thread", e.pid), t, l, false)?;
        }
        if i > 0 && !seen.contains_key(&e.ppid) {
            bail!("{F}: pid {} has parent {}, which is not an earlier entry of the tree", e.pid, e.ppid);
        }
        if seen.insert(e.pid, i).is_some() {
            bail!("{F}: pid {} appears twice", e.pid);
        }
        for id in e.threads.iter().chain(e.threads.is_empty().then_some(&e.pid)) {
            if !ids.insert(*id) {
                bail!("{F}: id {id} appears twice");
            }
        }
    }
    Ok(())
}

/// Every description's kind refers to an existing file, pipe or inode;
/// socket addresses fit their sockaddr.
fn descriptions(files: &FileTable, fds: &Images) -> Result<()> {
    const F: &str = "fds.img";
    let pipes: HashSet<u32> = fds.pipes.iter().map(|p| p.id).collect();
    let mem = |id: u32| id as usize >= 1 && id as usize <= fds.mem_files.len();
    for d in &fds.descs {
        check_len(F, format_args!("description {} link", d.id), d.link.len(), PATH_MAX)?;
        let wrong = match &d.kind {
            Some(DescKind::RegFileId(id)) => files.get(*id).is_none().then(|| format!("refers to unknown file id {id} (files.img)")),
            Some(DescKind::Pipe(p)) => (!pipes.contains(&p.pipe_id)).then(|| format!("refers to unknown pipe id {} (pipes.img)", p.pipe_id)),
            Some(DescKind::Memfd(m)) => (!mem(m.inode_id)).then(|| format!("refers to unknown memfd inode id {} (memfiles.img)", m.inode_id)),
            Some(DescKind::Ghost(g)) => (!mem(g.inode_id)).then(|| format!("refers to unknown ghost inode id {} (memfiles.img)", g.inode_id)),
            Some(DescKind::Fifo(f)) => {
                check_path(F, format_args!("description {} fifo path", d.id), &f.path, true)?;
                None
            }
            Some(DescKind::Epoll(e)) => {
                check_len(F, format_args!("description {} epoll targets", d.id), e.targets.len(), MAX_LIST)?;
                None
            }
            Some(DescKind::Unix(u)) => {
                let long = [&u.name, &u.peer_name].into_iter().find(|n| n.len() > SUN_PATH);
                long.map(|n| format!("unix socket address of {} bytes (sun_path holds {SUN_PATH})", n.len()))
            }
            Some(DescKind::Inet(i)) => {
                let bad_addr = [&i.local, &i.peer].into_iter().flatten().find(|a| !matches!(a.addr.len(), 4 | 16) || a.port > 0xffff);
                bad_addr.map(|a| format!("IP address of {} bytes, port {} (4 or 16 bytes, a 16-bit port)", a.addr.len(), a.port))
            }
            Some(DescKind::Inotify(n)) => {
                check_len(F, format_args!("description {} inotify watches", d.id), n.watches.len(), MAX_LIST)?;
                None
            }
            _ => None,
        };
        if let Some(what) = wrong {
            bail!("{F}: description {} ({}): {what}", d.id, d.link);
        }
    }
    Ok(())
}

fn mem_files(mem: &[pb::MemFile]) -> Result<()> {
    const F: &str = "memfiles.img";
    for m in mem {
        match pb::MemFileKind::try_from(m.kind) {
            Ok(pb::MemFileKind::MemFileMemfd | pb::MemFileKind::MemFileGhost) => {}
            _ => bail!("{F}: inode {}: unknown kind {}", m.id, m.kind),
        }
        check_path(F, format_args!("inode {} name", m.id), &m.name, m.kind == pb::MemFileKind::MemFileGhost as i32)?;
        if m.size > i64::MAX as u64 {
            bail!("{F}: inode {}: size {} is out of range", m.id, m.size);
        }
        for r in &m.data {
            if r.offset.checked_add(r.data.len() as u64).is_none_or(|end| end > m.size) {
                bail!("{F}: inode {}: data run at {} ({} bytes) lies beyond its size {}", m.id, r.offset, r.data.len(), m.size);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// One process
// ---------------------------------------------------------------------------

/// The images of one live process, decoded, before its plan is made.
#[derive(Debug)]
pub struct ProcImages<'a> {
    pub pid: u32,
    pub core: &'a pb::TaskCore,
    pub mm: &'a pb::Mm,
    pub pagemap: &'a [pb::PagemapEntry],
    pub fds: &'a [pb::FdEntry],
    pub fs: &'a pb::Fs,
}

pub fn process(p: &ProcImages, files: &FileTable, fd_images: &Images, l: &Limits) -> Result<()> {
    core(p.pid, p.core)?;
    mm(p.pid, p.mm, files, fd_images.mem_files.len())?;
    pagemap(p.pid, p.pagemap, &p.mm.vmas)?;
    fdinfo(p.pid, p.fds, fd_images, l)?;
    let f = name(Kind::Fs, p.pid);
    check_path(&f, "cwd", &p.fs.cwd, true)?;
    check_path(&f, "root", &p.fs.root, true)?;
    if p.fs.umask > 0o777 {
        bail!("{f}: umask {:#o} is out of range", p.fs.umask);
    }
    Ok(())
}

/// Registers, XSAVE areas, signals, credentials of a live process.
fn core(pid: u32, c: &pb::TaskCore) -> Result<()> {
    let f = &name(Kind::Core, pid);
    check_len(f, "threads", c.threads.len(), MAX_THREADS)?;
    check_len(f, "comm", c.comm.len(), 64)?;
    thread(f, pid, c.regs.as_ref(), &c.xsave, &c.pending, c.creds.as_ref(), c.sched.as_ref())?;
    for t in &c.threads {
        if t.xsave.len() != c.xsave.len() {
            bail!("{f}: thread {}: xsave is {} bytes, the leader's {}", t.tid, t.xsave.len(), c.xsave.len());
        }
        check_len(f, format_args!("thread {}: comm", t.tid), t.comm.len(), 64)?;
        thread(f, t.tid, t.regs.as_ref(), &t.xsave, &t.pending, t.creds.as_ref(), t.sched.as_ref())?;
    }
    let mut signos = HashSet::new();
    for a in &c.sigactions {
        if a.signo == 0 || a.signo > MAX_SIG || a.signo == libc::SIGKILL as u32 || a.signo == libc::SIGSTOP as u32 || !signos.insert(a.signo) {
            bail!("{f}: sigaction for signal {}: not a signal whose action can be set (or set twice)", a.signo);
        }
    }
    check_len(f, "posix_timers", c.posix_timers.len(), MAX_LIST)?;
    if let Some(t) = c.posix_timers.iter().find(|t| t.signo < 0 || t.signo as u32 > MAX_SIG) {
        bail!("{f}: posix timer {}: signal {} is out of range", t.id, t.signo);
    }
    check_len(f, "rlimits", c.rlimits.len(), 64)?;
    Ok(())
}

/// What every thread has: registers, an XSAVE area, pending signals,
/// credentials and scheduling.
fn thread(f: &str, tid: u32, regs: Option<&pb::X86Regs>, xsave: &[u8], pending: &[pb::PendingSignal], creds: Option<&pb::Creds>, sched: Option<&pb::Sched>) -> Result<()> {
    if regs.is_none() {
        bail!("{f}: thread {tid}: no registers");
    }
    if xsave.len() < MIN_XSAVE || xsave.len() > MAX_XSAVE || !xsave.len().is_multiple_of(64) {
        bail!("{f}: thread {tid}: xsave is {} bytes ({MIN_XSAVE}..={MAX_XSAVE}, a multiple of 64, accepted)", xsave.len());
    }
    check_len(f, format_args!("thread {tid}: pending"), pending.len(), MAX_LIST)?;
    if let Some(s) = pending.iter().find(|s| s.signo == 0 || s.signo > MAX_SIG || s.siginfo.len() != SIGINFO_LEN) {
        bail!("{f}: thread {tid}: pending signal {} with a {}-byte siginfo (want 1..={MAX_SIG}, {SIGINFO_LEN} bytes)", s.signo, s.siginfo.len());
    }
    if let Some(c) = creds {
        check_len(f, format_args!("thread {tid}: groups"), c.groups.len(), NGROUPS_MAX)?;
        check_len(f, format_args!("thread {tid}: seccomp_filters"), c.seccomp_filters.len(), MAX_LIST)?;
        for (i, s) in c.seccomp_filters.iter().enumerate() {
            if s.insns.is_empty() || !s.insns.len().is_multiple_of(8) || s.insns.len() > BPF_MAXINSNS * 8 {
                bail!("{f}: thread {tid}: seccomp filter {i} is {} bytes (1..={BPF_MAXINSNS} instructions of 8 bytes)", s.insns.len());
            }
        }
    }
    if let Some(s) = sched {
        check_len(f, format_args!("thread {tid}: sched affinity"), s.affinity.len(), 1024)?;
    }
    Ok(())
}

/// VMAs: page aligned, in user space, sorted, not overlapping, of a known
/// kind, their files in files.img or memfiles.img; the mm fields in user
/// space and in order.
fn mm(pid: u32, mm: &pb::Mm, files: &FileTable, mem_files: usize) -> Result<()> {
    let f = &name(Kind::Mm, pid);
    check_len(f, "vmas", mm.vmas.len(), MAX_VMAS)?;
    let mut special = HashSet::new();
    for (i, v) in mm.vmas.iter().enumerate() {
        let at = || format!("vma {i} [{:#x}-{:#x})", v.start, v.end);
        vma_range(f, i, v, mm.vmas.get(i.wrapping_sub(1)))?;
        let kind = pb::VmaKind::try_from(v.kind).ok().filter(|k| *k != pb::VmaKind::Unspecified);
        let Some(kind) = kind else { bail!("{f}: {}: unknown kind {}", at(), v.kind) };
        if matches!(kind, pb::VmaKind::VmaVdso | pb::VmaKind::VmaVvar | pb::VmaKind::VmaVvarVclock) && !special.insert(kind) {
            bail!("{f}: {}: a second {:?} mapping", at(), kind);
        }
        if matches!(kind, pb::VmaKind::VmaFilePrivate | pb::VmaKind::VmaFileShared) {
            if v.mem_file_id != 0 && v.mem_file_id as usize > mem_files {
                bail!("{f}: {}: mem_file_id {} is not in memfiles.img", at(), v.mem_file_id);
            }
            if v.mem_file_id == 0 && files.get(v.file_id).is_none() {
                bail!("{f}: {}: file_id {} is not in files.img", at(), v.file_id);
            }
        }
        if !v.pgoff.is_multiple_of(PAGE_SIZE) || v.pgoff.checked_add(v.end - v.start).is_none_or(|e| e > i64::MAX as u64) {
            bail!("{f}: {}: pgoff {:#x} not page aligned or out of range", at(), v.pgoff);
        }
        if v.prot & !7 != 0 {
            bail!("{f}: {}: prot {:#x} has unknown bits", at(), v.prot);
        }
        check_len(f, format_args!("{}: name", at()), v.name.len(), PATH_MAX)?;
        check_len(f, format_args!("{}: vm_flags", at()), v.vm_flags.len(), 64)?;
    }
    mm_fields(f, mm)?;
    if files.get(mm.exe_file_id).is_none() {
        bail!("{f}: exe_file_id {} is not in files.img", mm.exe_file_id);
    }
    Ok(())
}

fn vma_range(f: &str, i: usize, v: &pb::Vma, prev: Option<&pb::Vma>) -> Result<()> {
    let at = format!("vma {i} [{:#x}-{:#x})", v.start, v.end);
    if !v.start.is_multiple_of(PAGE_SIZE) {
        bail!("{f}: {at}: start not page aligned");
    }
    if !v.end.is_multiple_of(PAGE_SIZE) {
        bail!("{f}: {at}: end not page aligned");
    }
    if v.start >= v.end || v.end > TASK_SIZE {
        bail!("{f}: {at}: not a range of user addresses (start < end <= {TASK_SIZE:#x})");
    }
    if let Some(p) = prev.filter(|p| p.end > v.start) {
        bail!("{f}: {at}: overlaps or precedes vma {} [{:#x}-{:#x})", i - 1, p.start, p.end);
    }
    Ok(())
}

fn mm_fields(f: &str, mm: &pb::Mm) -> Result<()> {
    let pairs = [
        ("start_code", mm.start_code, "end_code", mm.end_code),
        ("start_data", mm.start_data, "end_data", mm.end_data),
        ("start_brk", mm.start_brk, "brk", mm.brk),
        ("arg_start", mm.arg_start, "arg_end", mm.arg_end),
        ("env_start", mm.env_start, "env_end", mm.env_end),
        ("start_stack", mm.start_stack, "start_stack", mm.start_stack),
    ];
    for (a, x, b, y) in pairs {
        if x > y || y >= TASK_SIZE {
            bail!("{f}: {a} {x:#x} / {b} {y:#x}: not in order below {TASK_SIZE:#x}");
        }
    }
    if !mm.auxv.len().is_multiple_of(2) || mm.auxv.len() > AUXV_WORDS {
        bail!("{f}: auxv has {} words (an even number, at most {AUXV_WORDS})", mm.auxv.len());
    }
    Ok(())
}

/// Runs page aligned, in user space, sorted, each inside VMAs.
fn pagemap(pid: u32, pm: &[pb::PagemapEntry], vmas: &[pb::Vma]) -> Result<()> {
    let f = &name(Kind::Pagemap, pid);
    let mut prev_end = 0;
    let mut v = 0;
    for (i, e) in pm.iter().enumerate() {
        let end = u64::from(e.nr_pages).checked_mul(PAGE_SIZE).and_then(|n| e.vaddr.checked_add(n)).unwrap_or(u64::MAX);
        let at = format!("entry {i} ({:#x}, {} pages)", e.vaddr, e.nr_pages);
        if !e.vaddr.is_multiple_of(PAGE_SIZE) || e.nr_pages == 0 || end > TASK_SIZE {
            bail!("{f}: {at}: not a page aligned, non-empty range of user addresses");
        }
        if e.flags & !(pb::PageFlags::PagePresent as u32) != 0 {
            bail!("{f}: {at}: unknown flags {:#x}", e.flags);
        }
        if e.vaddr < prev_end {
            bail!("{f}: {at}: overlaps or precedes entry {}", i - 1);
        }
        prev_end = end;
        // Both lists are sorted: walk the VMAs along the run.
        let mut a = e.vaddr;
        while a < end {
            while v < vmas.len() && vmas[v].end <= a {
                v += 1;
            }
            match vmas.get(v) {
                Some(m) if m.start <= a => a = m.end.min(end),
                _ => bail!("{f}: {at}: page {a:#x} lies outside every VMA of {}", name(Kind::Mm, pid)),
            }
        }
    }
    Ok(())
}

/// Fd numbers below RLIMIT_NOFILE's hard limit, each once, each on a
/// description of fds.img.
fn fdinfo(pid: u32, fds: &[pb::FdEntry], images: &Images, l: &Limits) -> Result<()> {
    let f = &name(Kind::Fdinfo, pid);
    let mut seen = HashSet::new();
    for e in fds {
        if u64::from(e.fd) >= l.nofile {
            bail!("{f}: fd {} is out of range (RLIMIT_NOFILE hard limit {})", e.fd, l.nofile);
        }
        if !seen.insert(e.fd) {
            bail!("{f}: fd {} appears twice", e.fd);
        }
        if images.get(e.desc_id).is_none() {
            bail!("{f}: fd {} refers to unknown description {} (fds.img)", e.fd, e.desc_id);
        }
    }
    Ok(())
}

/// The pages files of process `pid`, checked against its pagemap: part 0
/// always, part 1 if the pagemap has runs in it; each a pages file of
/// exactly the size its runs need. Returns their names in the directory.
pub fn pages_files(dir: &crate::images::ImageDir, pid: u32, pagemap: &[pb::PagemapEntry]) -> Result<Vec<String>> {
    use crate::images::pages::{part_name, part_pages, PAGE_PARTS};
    if let Some((i, e)) = pagemap.iter().enumerate().find(|(_, e)| e.part >= PAGE_PARTS) {
        bail!("pagemap-{pid}.img: entry {i} (run at {:#x}): part {} (rcr knows parts 0 and 1)", e.vaddr, e.part);
    }
    let mut names = Vec::new();
    for (part, pages) in part_pages(pagemap).into_iter().enumerate() {
        if part > 0 && pages == 0 {
            break;
        }
        let name = part_name(pid, part as u32);
        pages_file(dir, &name, pages)?;
        names.push(name);
    }
    Ok(names)
}

fn pages_file(dir: &crate::images::ImageDir, name: &str, pages: u64) -> Result<()> {
    pages_content(&dir.open_file(name)?, &dir.path.join(name), pages)
}

/// Checks that `f` (`path` in messages; for a compressed set, the memfd
/// decompressed from it) is a pages file holding exactly `pages` pages.
pub fn pages_content(f: &std::fs::File, path: &std::path::Path, pages: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut h = [0u8; 8];
    f.read_exact_at(&mut h, 0).with_context(|| format!("{}: truncated header", path.display()))?;
    crate::images::check_header(path, h, Some(Kind::Pages))?;
    let need = pages.checked_mul(PAGE_SIZE).and_then(|b| b.checked_add(PAGES_DATA_OFFSET));
    let have = f.metadata()?.len();
    if need != Some(have) {
        bail!("{}: {have} bytes, but the pagemap describes {pages} pages ({} bytes with the header page)", path.display(), need.map_or("too many".into(), |n| n.to_string()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// This machine
// ---------------------------------------------------------------------------

/// This machine against the images: every PID and TID is free, the files
/// are unchanged, the XSAVE state fits this CPU, the limits, credentials
/// and timers can be given.
pub fn environment(tree: &Tree) -> Result<()> {
    crate::files::fds::validate(&tree.fd_images, &tree.files)?;
    let mut ids: Vec<u32> = tree.procs.iter().flat_map(|p| p.entry.threads.iter().copied()).collect();
    ids.extend(tree.procs.iter().filter(|p| p.entry.threads.is_empty()).map(|p| p.entry.pid));
    for id in ids {
        if let Ok(st) = proc::stat(id as i32) {
            bail!("pid {id} is in use (by {:?}); rcr restores processes and threads with their original ids", st.comm);
        }
    }
    for p in &tree.procs {
        let Some(l) = &p.live else { continue };
        if let Some(exe) = tree.files.get(l.mm.exe_file_id) {
            crate::files::reg::check("exe link", exe, crate::files::reg::Content::SameSize)?;
        }
        let xsaves = std::iter::once((p.entry.pid, &l.core.xsave)).chain(l.core.threads.iter().map(|t| (t.tid, &t.xsave)));
        for (tid, xsave) in xsaves {
            arch::check_xsave_compatible(xsave, host_xsave_size())
                .and_then(|()| arch::check_tile_data_permitted(xsave, l.core.xcomp_dynamic))
                .with_context(|| format!("{}: thread {tid}", name(Kind::Core, p.entry.pid)))?;
        }
        arch::check_xcomp_dynamic(l.core.xcomp_dynamic).with_context(|| name(Kind::Core, p.entry.pid))?;
        crate::timers::validate(&l.core)?;
        crate::creds::restore::validate(p.entry.pid, &l.core)?;
    }
    Ok(())
}
