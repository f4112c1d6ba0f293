//! The restore pipeline: `rcr restore -D DIR`.
//!
//! Steps, each a function below:
//! 1. [`load`]: decode the images and check every field of them
//!    ([`validate::shared`], [`validate::process`]: sizes, counts,
//!    addresses, fd numbers, lengths, enum values, ids between images),
//!    check that sessions and groups can be rebuilt ([`crate::tree::plan`]),
//!    then make the memory plan of each process,
//! 2. [`validate::environment`]: every PID and TID is free, the files are
//!    unchanged, the XSAVE state fits this CPU, limits and credentials
//!    can be given — nothing is created before this ([`plan_only`] stops
//!    here),
//! 3. [`bootstrap::Region::build`]: for each live process, place the
//!    restorer blob, its arguments and the sigframes of its threads in
//!    rcr's own memory, where the forked tree will inherit them,
//! 4. [`Inherited::create`]: what processes share (pipes, shared anonymous
//!    memory) is created by rcr, so that every process inherits it,
//! 5. [`fork_root`]: clone3 with the root's PID; each process ([`child`])
//!    forks its own children, rebuilds its session, group, fs and fds, and
//!    jumps into its blob, which recreates its threads,
//! 6. [`supervise::run`]: rcr traces the whole tree (auto-attached through
//!    fork and clone), holds every process at two barriers (all forked;
//!    all in their groups), lets the zombies die, waits until every blob
//!    reports, lets them all rt_sigreturn, unmaps each bootstrap region from
//!    outside and detaches everything at once,
//! 7. [`finish`]: write the pidfile; wait for the root unless `-d`.
//!
//! With `-j` ([`Foreground`]), rcr first makes sure it runs in the
//! foreground of a terminal; it hands the terminal back if the restore
//! fails, and when the job ends or stops.
//!
//! If anything fails after the fork, every process is killed (each is
//! traced with PTRACE_O_EXITKILL, so even rcr's death kills them): a failed
//! restore leaves no half-built process behind.

pub mod bootstrap;
pub mod child;
pub mod supervise;
pub mod validate;

use crate::arch::cur as arch;
use crate::files::tty::shell::Foreground;
use crate::files::FileTable;
use crate::images::{pb, ImageDir, Kind, FORMAT_VERSION};
use crate::infect::Tracee;
use crate::mm::restore::Plan;
use crate::proc;
use crate::tree::Kin;
use anyhow::{bail, Context, Result};
use bootstrap::Region;
use rcr_abi::RestoreStep;
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub detached: bool,
    pub pidfile: Option<PathBuf>,
    /// `--ext-unix-sk`: connect datagram sockets to peers outside the tree again.
    pub ext_unix_sk: bool,
    /// `-j/--shell-job`: restore into rcr's terminal, as the foreground job.
    pub shell_job: bool,
    /// `--tcp-established`: restore established TCP connections.
    pub tcp_established: bool,
}

/// The images of one live process, loaded and cross-checked.
#[derive(Debug)]
pub struct Loaded {
    pub core: pb::TaskCore,
    pub mm: pb::Mm,
    pub fds: Vec<pb::FdEntry>,
    pub fs: pb::Fs,
    /// The image directory and the names of this process's plain pages
    /// files in it, by part (pages-PID.img, then pages-PID.1.img if any;
    /// none when compressed); the restore child opens them relative to the
    /// directory.
    pub pages_dir: ImageDir,
    pub pages_names: Vec<String>,
    /// pages-PID.img.zst, when the pages are compressed.
    pub pages_zst: Option<PathBuf>,
    /// The pagemap, kept for [`unpack_all`] when the pages are compressed.
    pub pagemap: Vec<pb::PagemapEntry>,
    /// The decompressed pages of a compressed image (a memfd holding what
    /// pages-PID.img would, made by [`unpack_all`] once the images are
    /// valid), at an fd number above all of the process's; rcr closes its
    /// copy once the tree runs.
    pub pages_mem: Option<std::os::fd::OwnedFd>,
    pub plan: Plan,
}

/// One process of the tree to restore.
#[derive(Debug)]
pub struct Proc {
    pub entry: pb::PstreeEntry,
    pub kin: Kin,
    /// None for a zombie.
    pub live: Option<Box<Loaded>>,
    /// Zombies: the wait status to die with, and the name.
    pub exit_status: i32,
    pub comm: String,
    pub stopped: bool,
    /// Indices (in [`Tree::procs`]) of the children, in fork order.
    pub children: Vec<usize>,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.entry.pid as i32
    }
}

/// The whole image set: the processes (root first, parents before their
/// children) and what they share.
#[derive(Debug)]
pub struct Tree {
    pub procs: Vec<Proc>,
    pub files: FileTable,
    /// Open file descriptions and what they refer to (fds.img, pipes.img...).
    pub fd_images: crate::files::fds::Images,
    /// The dump's network lock (inventory.img network_lock), "" if none.
    pub net_lock: String,
    /// How far the image set is trusted (None: root restores root's set);
    /// see [`crate::creds::trust`].
    pub bound: Option<crate::creds::trust::Bound>,
}

/// What rcr creates before forking, inherited by every restored process
/// (open file descriptions at their own fd numbers where rcr could, the
/// rest at fd numbers above all of the tree's): the open file descriptions by id
/// (fds.img), shared anonymous memory objects by their saved inode, the
/// inodes of memfds and deleted files by their id (memfiles.img).
#[derive(Debug, Default)]
pub struct Inherited {
    pub descs: HashMap<u32, RawFd>,
    pub shmem: HashMap<u64, RawFd>,
    pub mem: HashMap<u32, RawFd>,
    /// rcr's copies of the established TCP connections, in repair mode.
    pub tcp: crate::files::inet::Repaired,
}

impl Inherited {
    fn create(tree: &Tree) -> Result<Inherited> {
        let live = || tree.procs.iter().filter_map(|p| p.live.as_ref());
        let min = 1 + live().flat_map(|l| l.fds.iter().map(|f| f.fd as RawFd)).max().unwrap_or(2).max(2);
        let mut mem = HashMap::new();
        for (id, fd) in crate::files::memfd::create_inodes(&tree.fd_images.mem_files)? {
            mem.insert(id, crate::sys::move_above(fd, min)?);
        }
        let homes = crate::files::fds::homes(live().flat_map(|l| l.fds.iter()));
        let descs = crate::files::fds::create_all(&tree.fd_images, &tree.files, &mem, min, &homes);
        let (descs, tcp) = descs.inspect_err(|_| mem.values().for_each(|&fd| crate::sys::close(fd)))?;
        let mut sizes: HashMap<u64, u64> = HashMap::new();
        for l in live() {
            for v in l.mm.vmas.iter().filter(|v| v.kind == pb::VmaKind::VmaAnonShared as i32) {
                let end = v.pgoff + (v.end - v.start);
                let e = sizes.entry(v.inode.max(1)).or_default();
                *e = (*e).max(end);
            }
        }
        let mut shmem = HashMap::new();
        for (inode, size) in sizes {
            let fd = crate::sys::shmem_object(size).with_context(|| format!("recreating shared memory object {inode}"))?;
            shmem.insert(inode, crate::sys::move_above(fd, min)?);
        }
        Ok(Inherited { descs, shmem, mem, tcp })
    }

    pub fn fds(&self) -> Vec<RawFd> {
        self.descs.values().chain(self.shmem.values()).chain(self.mem.values()).copied().collect()
    }

    pub fn close_all(&self) {
        self.close_all_except(&[]);
    }

    /// In a restore child: closes what it inherited, but not `keep` (its
    /// own fd numbers, where a description may have been created at).
    pub fn close_all_except(&self, keep: &[pb::FdEntry]) {
        let keep: std::collections::HashSet<RawFd> = keep.iter().map(|e| e.fd as RawFd).collect();
        for fd in self.fds().into_iter().filter(|fd| !keep.contains(fd)) {
            crate::sys::close(fd);
        }
    }
}

/// Returns the exit code for rcr: the root's status unless detached.
pub fn run(o: &Options) -> Result<i32> {
    crate::sys::raise_nofile();
    let bound = crate::creds::trust::for_restore(&o.dir)?;
    let mut tree = crate::stats::time(crate::stats::Phase::Load, || load(&o.dir))?;
    if let Some(b) = &bound {
        b.check_tree(&tree)?;
    }
    tree.bound = bound;
    tree.fd_images.ext_unix_sk = o.ext_unix_sk;
    tree.fd_images.shell_job = o.shell_job;
    tree.fd_images.tcp_established = o.tcp_established;
    let lock = tree.net_lock.clone();
    let r = validate::environment(&tree).and_then(|()| unpack_all(&mut tree)).and_then(|()| restore_job(&tree));
    let job = if lock.is_empty() {
        r?
    } else {
        let drop = crate::files::inet::drop_command(&lock);
        let job = r.map_err(|e| anyhow::anyhow!("{e:#}\nthe network lock (nftables table {lock}) stays in place, so the peers of the saved TCP connections wait for another try; to drop it: {drop}"))?;
        if let Err(e) = crate::files::inet::delete_table(&lock) {
            crate::log::warn(&format!("the restored tree runs, but the network lock stays: {e:#}"));
        }
        job
    };
    for l in tree.procs.iter_mut().filter_map(|p| p.live.as_mut()) {
        l.pages_mem = None; // the restored processes hold their own copies until their blobs close them
    }
    write_stats(o, &tree);
    finish(o, tree.procs[0].pid(), job.as_ref())
}

/// `stats-restore.img`, once the tree runs; a failure to write it (a
/// read-only image directory) is only a warning.
fn write_stats(o: &Options, tree: &Tree) {
    let live = || tree.procs.iter().filter_map(|p| p.live.as_ref());
    let pages = live().map(|l| l.plan.nr_pages()).sum();
    crate::stats::add(crate::stats::Count::PagesRestored, pages);
    let threads = tree.procs.iter().map(|p| p.entry.threads.len().max(1)).sum();
    let written = ImageDir::open(&o.dir).and_then(|dir| crate::stats::write_restore(&dir, tree.procs.len(), threads));
    if let Err(e) = written {
        crate::log::warn(&format!("the tree runs, but the restore statistics were not written: {e:#}"));
    }
}

/// Steps 3 to 6 for a shell job (`-j`): the job's terminal is rcr's,
/// taken back if the restore fails; [`restore_tree`] for anything else.
fn restore_job(tree: &Tree) -> Result<Option<Foreground>> {
    let job = Foreground::attach(&tree.fd_images, &tree.procs[0].entry, tree.procs[0].kin)?;
    let restored = restore_tree(tree);
    if let Some(j) = &job {
        match &restored {
            Ok(()) => j.after_restore(&tree.procs.iter().map(|p| p.entry.clone()).collect::<Vec<_>>()),
            Err(_) => j.take_back(true),
        }
    }
    restored.map(|()| job)
}

/// Steps 3 to 6: from the bootstrap regions to the detached tree;
/// established TCP connections leave repair mode just before the tree is
/// let go.
fn restore_tree(tree: &Tree) -> Result<()> {
    let mut regions = build_regions(tree)?;
    let spans: Vec<_> = regions.iter().map(|r| r.as_ref().map(|r| (r.start, r.len, r.syscall_insn()))).collect();
    let readers: Vec<_> = regions.iter().map(|r| r.as_ref().and_then(|r| Some((r.reader_tid?, r.reader_outcome_addr())))).collect();
    let inherited = match tree.bound.as_ref().map(|b| b.files_as()).transpose() {
        Ok(ids) => {
            let inherited = Inherited::create(tree);
            drop(ids);
            inherited
        }
        Err(e) => Err(e),
    };
    let mut tcp = crate::files::inet::Repaired::default();
    let root = inherited.and_then(|mut inh| {
        tcp = std::mem::take(&mut inh.tcp);
        crate::stats::mark(crate::stats::Mark::Begin);
        let root = fork_root(tree, &mut regions, &inh);
        inh.close_all();
        root
    });
    for r in regions.into_iter().flatten() {
        r.unmap();
    }
    let (tracee, err_r) = root?;
    supervise::run(tree, &spans, &readers, tracee, err_r, &mut || tcp.finish())
}

/// A bootstrap region for each live process, none overlapping rcr's
/// mappings, another region, or the saved mappings of its own process;
/// with a page reader thread for the processes with many pages.
fn build_regions(tree: &Tree) -> Result<Vec<Option<Region>>> {
    let mut busy: Vec<(u64, u64)> = proc::maps(std::process::id() as i32)?.iter().map(|m| (m.start, m.end)).collect();
    let taken: std::collections::HashSet<i32> = tree.procs.iter().flat_map(|p| p.entry.threads.iter().chain([&p.entry.pid])).map(|&t| t as i32).collect();
    let plans: Vec<_> = tree.procs.iter().map(|p| p.live.as_ref().map(|l| &l.plan)).collect();
    let reader_tids = bootstrap::pick_reader_tids(&plans, &taken);
    let mut regions = Vec::new();
    for (p, reader_tid) in tree.procs.iter().zip(reader_tids) {
        let Some(l) = &p.live else {
            regions.push(None);
            continue;
        };
        let mut mine = busy.clone();
        mine.extend(crate::mm::restore::occupied(&l.mm));
        let r = Region::build(&l.plan, &l.core, &mut mine, arch::xcr0(), reader_tid).with_context(|| format!("pid {}", p.pid()));
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                regions.into_iter().flatten().for_each(Region::unmap);
                return Err(e);
            }
        };
        busy.push((r.start, r.start + r.len));
        regions.push(Some(r));
    }
    Ok(regions)
}

/// Steps 1 and 2 without forking anything: loads and checks the image set
/// at `path` against this machine (what `rcr restore` does before it
/// creates anything; the entry point of the image fuzzer).
pub fn plan_only(path: &std::path::Path) -> Result<Tree> {
    let tree = load(path)?;
    validate::environment(&tree)?;
    Ok(tree)
}

/// Step 1: decodes every image and checks it ([`validate::shared`],
/// [`validate::process`]) before planning the memory of each process.
fn load(path: &std::path::Path) -> Result<Tree> {
    let dir = ImageDir::open(path)?;
    let limits = validate::Limits::host()?;
    let inv: pb::Inventory = dir.read_one(Kind::Inventory, None)?;
    if inv.format_version != FORMAT_VERSION {
        bail!("inventory.img: format_version {} (this rcr reads {})", inv.format_version, FORMAT_VERSION);
    }
    if !inv.parent.is_empty() {
        bail!("inventory.img: parent {:?}: incremental image sets are not supported yet", inv.parent);
    }
    let entries: Vec<pb::PstreeEntry> = dir.read_all(Kind::Pstree, None)?;
    match entries.first() {
        Some(e) if e.pid == inv.root_pid => {}
        Some(e) => bail!("pstree.img: the first process is {}, but inventory.img names root_pid {}", e.pid, inv.root_pid),
        None => bail!("pstree.img: no processes"),
    }
    let zstd = match pb::PagesCompression::try_from(inv.pages_compression) {
        Ok(c) => c == pb::PagesCompression::PagesZstd,
        Err(_) => bail!("inventory.img: pages_compression {} is not one this rcr reads", inv.pages_compression),
    };
    let files = FileTable::from_images(dir.read_all(Kind::Files, None)?);
    let fd_images = crate::files::fds::Images::load(&dir)?;
    validate::shared(&inv, &entries, &files, &fd_images, &limits)?;
    let kins = crate::tree::plan(&entries)?;
    let self_maps = proc::maps(std::process::id() as i32)?;
    let index: HashMap<u32, usize> = entries.iter().enumerate().map(|(i, e)| (e.pid, i)).collect();
    let mut procs = Vec::with_capacity(entries.len());
    let cx = LoadCx { dir: &dir, files: &files, fd_images: &fd_images, self_maps: &self_maps, limits: &limits, zstd };
    for (entry, kin) in entries.iter().zip(kins) {
        procs.push(load_process(&cx, entry.clone(), kin)?);
    }
    for (i, e) in entries.iter().enumerate().skip(1) {
        let parent = index[&e.ppid];
        if procs[parent].live.is_none() {
            bail!("pstree.img: pid {} has a zombie as its parent ({})", e.pid, e.ppid);
        }
        procs[parent].children.push(i);
    }
    Ok(Tree { procs, files, fd_images, net_lock: inv.network_lock, bound: None })
}

/// What [`load_process`] reads against.
struct LoadCx<'a> {
    dir: &'a ImageDir,
    files: &'a FileTable,
    fd_images: &'a crate::files::fds::Images,
    self_maps: &'a [proc::MapEntry],
    limits: &'a validate::Limits,
    /// The pages are compressed (`Inventory.pages_compression`).
    zstd: bool,
}

fn load_process(cx: &LoadCx, entry: pb::PstreeEntry, kin: Kin) -> Result<Proc> {
    let (dir, pid) = (cx.dir, Some(entry.pid));
    let core: pb::TaskCore = dir.read_one(Kind::Core, pid)?;
    if core.pid != entry.pid {
        bail!("core-{}.img: holds pid {}", entry.pid, core.pid);
    }
    let mut p = Proc { entry, kin, live: None, exit_status: core.exit_status, comm: core.comm.clone(), stopped: false, children: Vec::new() };
    match pb::TaskState::try_from(core.state).ok() {
        Some(pb::TaskState::Zombie) if p.entry.threads.is_empty() => return Ok(p),
        Some(pb::TaskState::Zombie) => bail!("core-{}.img: a zombie, but pstree.img lists threads {:?} for it", p.entry.pid, p.entry.threads),
        Some(pb::TaskState::Alive) => {}
        Some(pb::TaskState::Stopped) => p.stopped = true,
        _ => bail!("core-{}.img: task state {} is not one this rcr restores", p.entry.pid, core.state),
    }
    let tids: Vec<u32> = core.threads.iter().map(|t| t.tid).collect();
    if p.entry.threads.first() != Some(&p.entry.pid) || p.entry.threads[1..] != tids[..] {
        bail!("core-{}.img: threads {tids:?} do not match pstree.img's {:?}", p.entry.pid, p.entry.threads);
    }
    let mm: pb::Mm = dir.read_one(Kind::Mm, pid)?;
    let pagemap: Vec<pb::PagemapEntry> = dir.read_all(Kind::Pagemap, pid)?;
    let fds: Vec<pb::FdEntry> = dir.read_all(Kind::Fdinfo, pid)?;
    let fs: pb::Fs = dir.read_one(Kind::Fs, pid)?;
    let imgs = validate::ProcImages { pid: p.entry.pid, core: &core, mm: &mm, pagemap: &pagemap, fds: &fds, fs: &fs };
    validate::process(&imgs, cx.files, cx.fd_images, cx.limits)?;
    let (pages_names, pages_zst) = if cx.zstd {
        if let Some((i, e)) = pagemap.iter().enumerate().find(|(_, e)| e.part != 0) {
            bail!("pagemap-{}.img: entry {i} (run at {:#x}): part {} in a compressed set (one pages file)", p.entry.pid, e.vaddr, e.part);
        }
        let path = crate::images::compress::path(dir, p.entry.pid);
        crate::images::compress::check_size(&path, pages_file_len(&pagemap))?;
        (Vec::new(), Some(path))
    } else {
        (validate::pages_files(dir, p.entry.pid, &pagemap)?, None)
    };
    let plan = crate::mm::restore::plan(&mm, &pagemap, cx.files, cx.self_maps).with_context(|| format!("pid {}", p.entry.pid))?;
    p.live = Some(Box::new(Loaded { core, mm, fds, fs, pages_dir: dir.clone(), pages_names, pages_zst, pagemap, pages_mem: None, plan }));
    Ok(p)
}

/// Forks the root with its saved PID and seizes it (its descendants and
/// threads get attached as they are created); the child runs
/// [`child::run`] and never returns here. Returns the root's tracee and
/// the read end of the error pipe every process of the tree writes to.
fn fork_root(tree: &Tree, regions: &mut [Option<Region>], inherited: &Inherited) -> Result<(Tracee, std::fs::File)> {
    let pid = tree.procs[0].pid();
    let max_fd = inherited.fds().into_iter().chain(tree.procs.iter().filter_map(|p| p.live.as_ref()).flat_map(|l| l.fds.iter().map(|f| f.fd as RawFd))).max().unwrap_or(2).max(2);
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    // The children's ends must not sit on an fd number they are about to restore.
    let go_child = crate::sys::dup_above(child::into_raw(go_r), max_fd + 1)?;
    let err_child = crate::sys::dup_above(child::into_raw(err_w), max_fd + 1)?;
    let sync = child::Sync { go_read: go_child, err_write: err_child };
    // SAFETY: rcr is single-threaded here (restore never spawns threads).
    #[allow(unsafe_code)]
    let forked = unsafe { crate::sys::clone3_with_pid(pid) };
    match forked {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => bail!("pid {pid} is in use; cannot restore with it"),
        Err(e) => return Err(e).with_context(|| format!("clone3 with pid {pid}")),
        Ok(0) => {
            drop(go_w);
            drop(err_r);
            child::run(tree, 0, regions, inherited, &sync)
        }
        Ok(_) => {}
    }
    child::close(go_child);
    child::close(err_child);
    let tracee = match Tracee::seize_child(pid) {
        Ok(t) => t,
        Err(e) => {
            supervise::kill_tree(tree);
            return Err(e);
        }
    };
    // Let the root go: from now on everything it creates is traced.
    let mut go = std::fs::File::from(go_w);
    if let Err(e) = std::io::Write::write_all(&mut go, b"g") {
        supervise::kill_tree(tree);
        return Err(e).context("starting the restore child");
    }
    Ok((tracee, std::fs::File::from(err_r)))
}

/// Decompresses the pages of every live process whose images are
/// compressed (their seek tables were checked by [`load`]): the step
/// between validating the images and creating anything.
fn unpack_all(tree: &mut Tree) -> Result<()> {
    let _t = crate::stats::timer(crate::stats::Phase::Load);
    for l in tree.procs.iter_mut().filter_map(|p| p.live.as_mut()) {
        if let Some(path) = &l.pages_zst {
            l.pages_mem = Some(unpack_pages(path, &l.pagemap, &l.fds)?);
        }
    }
    Ok(())
}

/// Bytes of the plain pages file `pagemap` describes (saturating: a
/// hostile count gives a size no file has).
fn pages_file_len(pagemap: &[pb::PagemapEntry]) -> u64 {
    let pages: u64 = pagemap.iter().map(|p| u64::from(p.nr_pages)).sum();
    pages.saturating_mul(crate::images::PAGE_SIZE).saturating_add(crate::images::PAGES_DATA_OFFSET)
}

/// Decompresses pages-PID.img.zst (`path`) into a memfd for the restorer
/// blob, placed above every fd number the process will have.
fn unpack_pages(path: &std::path::Path, pagemap: &[pb::PagemapEntry], fds: &[pb::FdEntry]) -> Result<std::os::fd::OwnedFd> {
    let t = std::time::Instant::now();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mem = crate::images::compress::unpack(path, pages_file_len(pagemap), &name)?;
    validate::pages_content(&mem, path, pagemap.iter().map(|p| u64::from(p.nr_pages)).sum())?;
    let len = mem.metadata().map(|m| m.len()).unwrap_or(0);
    crate::log::info(&format!("{}: {:.1} MiB of pages decompressed in {} ms", path.display(), len as f64 / (1 << 20) as f64, t.elapsed().as_millis()));
    let min = 1 + fds.iter().map(|f| f.fd as RawFd).max().unwrap_or(2).max(2);
    let fd = crate::sys::move_above(mem.into(), min).with_context(|| format!("moving the decompressed {} above fd {min}", path.display()))?;
    Ok(crate::sys::own(fd))
}

/// Size of the XSAVE area this CPU uses for the enabled features
/// (CPUID leaf 0xD, sub-leaf 0, EBX).
pub fn host_xsave_size() -> usize {
    std::arch::x86_64::__cpuid_count(0xd, 0).ebx as usize
}

pub fn describe_blob_failure(l: &Loaded, step: u64, index: u64, rax: i64) -> String {
    let err = std::io::Error::from_raw_os_error((-rax) as i32);
    let step = RestoreStep::from_u64(step);
    let what = step.map(RestoreStep::describe).unwrap_or("an unknown step");
    if let Some(item) = step.and_then(|s| crate::creds::restore::describe_item(s, index, &l.core)) {
        return format!("restorer blob failed {what}{item}: {err}");
    }
    let item = match step {
        Some(RestoreStep::MapVma | RestoreStep::Protect | RestoreStep::Madvise) => l
            .plan
            .vmas
            .get(index as usize)
            .map(|v| {
                let name = l.mm.vmas.iter().find(|m| m.start == v.start).map(|m| m.name.as_str()).unwrap_or("");
                format!(" {:#x}-{:#x} {}", v.start, v.start + v.len, name)
            })
            .unwrap_or_default(),
        Some(RestoreStep::ReadPages) => format!(" {index} (pagemap entry)"),
        Some(RestoreStep::SpawnThread) => l.core.threads.get(index as usize).map(|t| format!(" {}", t.tid)).unwrap_or_default(),
        Some(RestoreStep::TimerCreate | RestoreStep::TimerArm) => l.core.posix_timers.get(index as usize).map(|t| format!(" {}", t.id)).unwrap_or_default(),
        _ if index & rcr_abi::THREAD_INDEX != 0 => {
            let i = (index & !rcr_abi::THREAD_INDEX) as usize;
            format!(" in thread {}", l.core.threads.get(i).map_or(0, |t| t.tid))
        }
        _ => String::new(),
    };
    format!("restorer blob failed {what}{item}: {err}")
}

fn finish(o: &Options, pid: i32, job: Option<&Foreground>) -> Result<i32> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    if let Some(p) = &o.pidfile {
        std::fs::write(p, format!("{pid}\n")).with_context(|| format!("writing pidfile {}", p.display()))?;
    }
    if o.detached {
        return Ok(0);
    }
    // A shell job in its own group: rcr stops and continues with it (Ctrl-Z, fg).
    let flags = job.filter(|j| j.own_group()).map(|_| WaitPidFlag::WUNTRACED);
    loop {
        let (code, signaled) = match waitpid(nix::unistd::Pid::from_raw(pid), flags) {
            Ok(WaitStatus::Exited(_, code)) => (code, false),
            Ok(WaitStatus::Signaled(_, sig, _)) => (128 + sig as i32, true),
            Ok(WaitStatus::Stopped(..)) => {
                job.map(Foreground::job_stopped).transpose()?;
                continue;
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).with_context(|| format!("waiting for pid {pid}")),
        };
        if let Some(j) = job {
            j.take_back(signaled);
        }
        return Ok(code);
    }
}
