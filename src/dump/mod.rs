//! The dump pipeline: `rcr dump -t PID -D DIR`.
//!
//! Steps, each a function below:
//! 1. [`preflight`]: the root exists and is something rcr can carry; the
//!    [`watchdog`] starts; the directory is marked incomplete
//!    ([`ImageDir::begin_dump`]),
//! 2. freeze ([`tree::dump::freeze`]): seize and interrupt every thread of
//!    the root and (by default) of all its descendants, top down; check
//!    that sessions and groups can be rebuilt ([`tree::plan`]),
//! 3. for each process in turn ([`dump_process`]): infect it with the
//!    parasite ([`Parasite::infect`]), [`collect`] its state (registers of
//!    every thread, signals, memory layout, files...), [`write_pages`]
//!    (the parasite drains them), cure ([`Parasite::cure`]), read the
//!    signals pending now ([`pending_signals`]) and write its images;
//!    a zombie only gets its exit status written,
//! 4. [`write_tree_images`]: pstree, files, pipes, and the inventory last;
//!    then [`complete`] removes the incomplete marker,
//! 5. finish: kill the whole tree (default) or let it all run on (`-R`).
//!
//! Any error before step 5 removes what was written (the marker stays), and
//! drops the frozen tree (each [`Parasite`] cures its task on drop, each
//! [`Tracee`] detaches): the tree carries on as if nothing happened.
//! [`fault::point`]s mark each step: the tests fail rcr there
//! (`RCR_FAULT_FAIL_AT`) or kill it (`RCR_FAULT_KILL_AT`), and SIGTERM or
//! SIGINT turn into an error at the next one. If rcr dies, the
//! [`watchdog`] undoes what it left inside the tree.
use crate::arch::cur as arch;
use crate::files::{self, fds::DumpCx, inet::NetLock};
use crate::images::compress;
use crate::images::pages::{PageFile, PageSink};
use crate::images::{pb, ImageDir, Kind, FORMAT_VERSION, PAGE_SIZE};
use crate::infect::parasite::{self, Parasite};
use crate::infect::Tracee;
use crate::mm::dump::{PageSource, ParasiteSource, ParasiteVia, ReadvSource};
use crate::tree::dump::{Frozen, Process, State};
use crate::tree::{self, Scope};
use crate::stats::{self, Mark, Phase};
use crate::{fault, log, mm, proc};

pub mod watchdog;
use anyhow::{bail, Context, Result};
use rcr_abi::parasite::{ITimerVal, TaskMisc};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Options {
    pub pid: i32,
    pub dir: PathBuf,
    pub leave_running: bool,
    pub pages_via: PagesVia,
    pub scope: Scope,
    /// `--ext-unix-sk`: allow datagram sockets connected to named sockets outside the tree.
    pub ext_unix_sk: bool,
    /// Most content saved per memfd or deleted file (`--ghost-limit`).
    pub ghost_limit: u64,
    /// `-j/--shell-job`: the tree's terminal is outside it.
    pub shell_job: bool,
    /// `--tcp-established`: carry established TCP connections.
    pub tcp_established: bool,
    /// `--compress[=LEVEL]`: zstd level for pages-PID.img.zst; `None`
    /// writes plain pages-PID.img.
    pub compress: Option<i32>,
}

/// How pages leave the target (`--pages-via`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PagesVia {
    /// The parasite writes them into the image file (the default).
    #[default]
    Write,
    /// The parasite vmsplices them into a pipe, rcr splices them on.
    Splice,
    /// rcr reads them from outside with process_vm_readv (fallback).
    Readv,
}

/// Everything read from one frozen process, ready to be written.
#[derive(Debug)]
struct Collected {
    core: pb::TaskCore,
    mm: pb::Mm,
    fds: Vec<pb::FdEntry>,
    fs: pb::Fs,
}

pub fn run(o: &Options) -> Result<()> {
    preflight(o.pid)?;
    if o.compress.is_some() && o.pages_via == PagesVia::Splice {
        bail!("--compress reads the pages with process_vm_readv (the parasite cannot compress); it does not go with --pages-via splice");
    }
    if o.tcp_established {
        files::inet::check_nft()?;
    }
    fault::catch_interrupts()?;
    crate::infect::watch_for_exits()?;
    // Declared before the frozen tree: dropped after it is released.
    let _watchdog = watchdog::start()?;
    crate::sys::raise_nofile();
    let dir = ImageDir::create(&o.dir)?;
    dir.begin_dump()?;
    fault::point("image directory marked incomplete")?;
    stats::mark(Mark::Begin);
    let frozen = {
        let _t = stats::timer(Phase::Freezing);
        tree::dump::freeze(o.pid, o.scope)?
    };
    let lock = match dump_tree(&frozen, &dir, o).and_then(|lock| complete(&dir).map(|()| lock)) {
        Ok(lock) => lock,
        Err(e) => {
            for p in &frozen.procs {
                remove_images(&dir, p.pid as u32);
            }
            return Err(e);
        }
    };
    let n = frozen.procs.len();
    let threads = frozen.procs.iter().map(|p| p.threads.len()).sum();
    if o.leave_running {
        let unlocked = lock.map_or(Ok(()), NetLock::release);
        frozen.resume()?;
        unlocked?;
        log::info(&format!("pid {}: {n} processes dumped and left running", o.pid));
    } else {
        if let Some(table) = lock.and_then(NetLock::keep) {
            log::info(&format!("network lock {table} stays until restore"));
        }
        frozen.kill()?;
        log::info(&format!("pid {}: {n} processes dumped and killed", o.pid));
    }
    stats::mark(Mark::Released);
    if let Err(e) = stats::write_dump(&dir, o.leave_running, n, threads) {
        log::warn(&format!("the dump is complete, but its statistics were not written: {e:#}"));
    }
    Ok(())
}

/// The last step before the tree is released: the set is marked complete.
fn complete(dir: &ImageDir) -> Result<()> {
    fault::point("images written")?;
    dir.mark_complete()?;
    fault::point("image set marked complete")
}

/// Returns the network lock, if a TCP connection was locked (on error it
/// is undone as it drops).
fn dump_tree(frozen: &Frozen, dir: &ImageDir, o: &Options) -> Result<Option<NetLock>> {
    fault::point("target seized")?;
    let pstree: Vec<pb::PstreeEntry> = frozen.procs.iter().map(Process::pstree).collect();
    tree::plan(&pstree)?;
    let mut shared = DumpCx::default();
    shared.unix.ext = o.ext_unix_sk;
    shared.memfd.limit = Some(o.ghost_limit);
    shared.shell_job = o.shell_job;
    shared.job = files::tty::shell::find_job(&pstree)?;
    shared.tcp_established = o.tcp_established;
    let mut xsave_size = 0;
    for p in &frozen.procs {
        match p.state {
            State::Zombie(status) => {
                let comm = proc::stat(p.pid).map(|st| st.comm).unwrap_or_default();
                let core = pb::TaskCore { pid: p.pid as u32, state: pb::TaskState::Zombie as i32, exit_status: status, comm, ..Default::default() };
                dir.write_one(Kind::Core, Some(p.pid as u32), &core)?;
                fault::point("zombie written")?;
            }
            State::Alive | State::Stopped => {
                xsave_size = dump_process(p, p.pid == o.pid, dir, &mut shared, o)?;
            }
        }
    }
    let pids: Vec<i32> = frozen.procs.iter().map(|p| p.pid).collect();
    stats::time(Phase::Fds, || files::fds::finish(&mut shared, &pids))?;
    fault::point("shared files described")?;
    stats::time(Phase::Images, || write_tree_images(dir, o, &pstree, &shared, xsave_size))?;
    Ok(shared.inet.lock.take())
}

/// Removes what a failed dump wrote, so no partial image set is left.
fn remove_images(dir: &ImageDir, pid: u32) {
    for kind in Kind::ALL {
        let _ = dir.remove_file(&ImageDir::name(kind, Some(pid)));
    }
    let _ = dir.remove_file(&compress::name(pid));
}

/// Refuses what this version cannot carry, naming the reason.
fn preflight(pid: i32) -> Result<()> {
    if pid <= 0 {
        bail!("invalid pid {pid}");
    }
    if pid == std::process::id() as i32 {
        bail!("pid {pid} is rcr itself");
    }
    let st = proc::stat(pid).with_context(|| format!("pid {pid} does not exist"))?;
    match st.state {
        'Z' => bail!("pid {pid} is a zombie"),
        't' => bail!("pid {pid} is being traced by another process"),
        _ => {}
    }
    crate::creds::trust::check_dump(pid)
}

/// Dumps one live process of the frozen tree; returns its XSAVE size.
fn dump_process(p: &Process, is_root: bool, dir: &ImageDir, shared: &mut DumpCx, o: &Options) -> Result<usize> {
    let leader = p.leader().context("a live process without threads")?;
    let pid = p.pid;
    let step = |what: &str| fault::point(&format!("pid {pid}: {what}"));
    step("infecting")?;
    parasite::remove_leftovers(leader)?;
    let mut parasite = stats::time(Phase::Infect, || Parasite::infect(leader))?;
    let mut c = collect(leader, &mut parasite, shared, is_root)?;
    step("collected")?;
    c.core.threads = p.threads[1..].iter().map(|t| collect_thread(t, &mut parasite)).collect::<Result<_>>()?;
    (c.core.posix_timers, c.core.timer_restore_ids) = crate::timers::dump(pid, &p.threads.iter().map(Tracee::pid).collect::<Vec<_>>(), &mut parasite)?;
    if p.state == State::Stopped {
        c.core.state = pb::TaskState::Stopped as i32;
    }
    step("threads and timers collected")?;
    let pagemap = stats::time(Phase::Memory, || write_pages(leader, &mut parasite, dir, &c, o.pages_via, o.compress))?;
    step("pages written")?;
    stats::time(Phase::Infect, || parasite.cure())?;
    step("cured")?;
    crate::creds::dump::collect(p, &mut c.core)?;
    c.core.pending = pending_signals(leader, true)?;
    for (t, tc) in p.threads[1..].iter().zip(c.core.threads.iter_mut()) {
        tc.pending = pending_signals(t, false)?;
    }
    crate::timers::claim_pending(&mut c.core);
    step("credentials and signals read")?;
    stats::time(Phase::Images, || write_images(pid as u32, dir, &c, &pagemap))?;
    step("images written")?;
    Ok(c.core.xsave.len())
}

fn collect(t: &Tracee, p: &mut Parasite, shared: &mut DumpCx, is_root: bool) -> Result<Collected> {
    let pid = t.pid();
    let st = proc::stat(pid)?;
    let status = proc::status(pid)?;
    let misc = p.misc()?;
    if is_root && misc.pdeathsig != 0 {
        bail!("pid {pid} has a parent-death signal ({}); rcr cannot carry it for the root of the tree (its parent changes on restore)", misc.pdeathsig);
    }
    let mut core = collect_core(t, p.saved(), &st, &misc)?;
    core.sigactions = parasite::sigactions_to_pb(&p.sigactions()?);
    core.sig_ignored = core.sigactions.iter().filter(|a| a.handler == 1).fold(0, |m, a| m | 1u64 << (a.signo - 1));
    let [real, virt, prof] = p.itimers()?.try_into().map_err(|_| anyhow::anyhow!("itimers: wrong count"))?;
    (core.itimer_real, core.itimer_virtual, core.itimer_prof) = (itimer(real), itimer(virt), itimer(prof));
    let (region, region_len) = p.region();
    let mut maps = proc::smaps(pid)?;
    maps.retain(|m| m.end <= region || m.start >= region + region_len);
    let vmas = mm::dump::vmas(pid, &maps, shared)?;
    let exe = files::reg::describe(&proc::path(pid, "exe"), "exe link", None)?;
    let exe_id = shared.files.add_shared(pb::RegFile { flags: libc::O_RDONLY as u32, ..exe });
    let brk = misc.brk;
    let mm = mm::dump::mm_fields(&st, brk, mm::dump::auxv(pid)?, exe_id, vmas);
    fault::point(&format!("pid {pid}: memory layout read"))?;
    let fds = stats::time(Phase::Fds, || dump_task_fds(p, pid, shared))?;
    let fs = files::fs::dump(pid, &status)?;
    Ok(Collected { core, mm, fds, fs })
}

/// The state of a thread other than the leader: registers and mask from
/// ptrace, altstack and clear_child_tid from inside (through the
/// parasite's region), robust list with get_robust_list(2).
fn collect_thread(t: &Tracee, p: &mut Parasite) -> Result<pb::ThreadCore> {
    let tid = t.pid();
    let saved = parasite::Saved::read(t)?;
    let misc = p.thread_misc(t).with_context(|| format!("reading thread {tid}"))?;
    let mut regs = arch::regs_to_pb(&saved.regs);
    let (sc, res) = arch::prepare_restart(&mut regs, arch::Resume::NewTask);
    let (pointer, size, signature) = saved.rseq;
    let (robust_list, robust_list_len) = t.robust_list()?;
    let comm = std::fs::read_to_string(proc::path(p.pid(), &format!("task/{tid}/comm"))).unwrap_or_default();
    Ok(pb::ThreadCore {
        tid: tid as u32,
        comm: comm.trim_end_matches('\n').to_string(),
        regs: Some(regs),
        xsave: saved.xsave,
        blocked: saved.sigmask,
        interrupted_syscall: sc,
        interrupted_result: res,
        rseq: (size != 0).then_some(pb::Rseq { pointer, size, signature }),
        altstack: Some(pb::AltStack { sp: misc.altstack_sp, flags: misc.altstack_flags, size: misc.altstack_size }),
        tid_address: misc.tid_address,
        robust_list,
        robust_list_len,
        pending: Vec::new(),
        // Only the securebits for now: creds::dump::collect fills the rest.
        creds: Some(pb::Creds { securebits: misc.securebits, ..Default::default() }),
        ..Default::default()
    })
}

fn collect_core(t: &Tracee, saved: &parasite::Saved, st: &proc::Stat, misc: &TaskMisc) -> Result<pb::TaskCore> {
    let pid = t.pid();
    let mut regs = arch::regs_to_pb(&saved.regs);
    let (sc, res) = arch::prepare_restart(&mut regs, arch::Resume::NewTask);
    if sc >= 0 {
        log::info(&format!("pid {pid} was in syscall {sc} (result {res}); registers set up to resume it"));
    }
    let (pointer, size, signature) = saved.rseq;
    let rseq = (size != 0).then_some(pb::Rseq { pointer, size, signature });
    let (robust_list, robust_list_len) = t.robust_list()?;
    Ok(pb::TaskCore {
        robust_list,
        robust_list_len,
        pid: pid as u32,
        state: pb::TaskState::Alive as i32,
        comm: st.comm.clone(),
        regs: Some(regs),
        xsave: saved.xsave.clone(),
        blocked: saved.sigmask,
        sig_ignored: 0,
        personality: misc.personality,
        interrupted_syscall: sc,
        interrupted_result: res,
        rseq,
        altstack: Some(pb::AltStack { sp: misc.altstack_sp, flags: misc.altstack_flags as u32, size: misc.altstack_size }),
        tid_address: misc.tid_address,
        dumpable: misc.dumpable,
        pdeathsig: misc.pdeathsig,
        child_subreaper: misc.child_subreaper != 0,
        thp_disable: misc.thp_disable != 0,
        timerslack_ns: misc.timerslack_ns,
        xcomp_dynamic: misc.xcomp_perm & arch::XFEATURE_DYNAMIC,
        ..Default::default()
    })
}

/// The task's own fds (not the parasite's), described: the parasite
/// passes copies of their open files over in batches, each described (and
/// its duplicates dropped) before the next, so rcr never holds two copies
/// of a tree's worth of fds.
fn dump_task_fds(p: &mut Parasite, pid: i32, shared: &mut DumpCx) -> Result<Vec<pb::FdEntry>> {
    const BATCH: usize = 512;
    let skip = p.task_fds();
    let fds: Vec<i32> = proc::fds(pid)?.into_iter().filter(|fd| !skip.contains(fd)).collect();
    let links = files::fds::precheck(pid, &fds)?;
    let mut out = Vec::with_capacity(fds.len());
    for (nums, links) in fds.chunks(BATCH).zip(links.chunks(BATCH)) {
        let files = p.take_fds(nums)?.into_iter().map(std::fs::File::from);
        let batch = nums.iter().zip(links).zip(files).map(|((&fd, l), f)| (fd, l.clone(), f)).collect();
        out.extend(files::fds::dump_fds(pid, batch, shared)?);
        fault::point(&format!("pid {pid}: fds described"))?;
    }
    Ok(out)
}

fn itimer(v: ITimerVal) -> Option<pb::ITimer> {
    let us = |s: i64, u: i64| (s as u64) * 1_000_000 + u as u64;
    let t = pb::ITimer { interval_us: us(v.interval_sec, v.interval_usec), value_us: us(v.value_sec, v.value_usec) };
    (t.value_us != 0 || t.interval_us != 0).then_some(t)
}

/// Signals pending for the task once the parasite is gone (those that
/// arrived during the dump included), private then (for the leader,
/// `with_shared`) process-wide, as raw siginfo. They are queued again in
/// the restored process.
fn pending_signals(t: &Tracee, with_shared: bool) -> Result<Vec<pb::PendingSignal>> {
    let mut out = Vec::new();
    for shared in [false, true] {
        if shared && !with_shared {
            continue;
        }
        for info in t.peek_siginfo(shared)? {
            let signo = i32::from_le_bytes(info[..4].try_into().unwrap_or_default());
            out.push(pb::PendingSignal { signo: signo as u32, shared, siginfo: info });
        }
    }
    if !out.is_empty() {
        let list: Vec<String> = out.iter().map(|p| p.signo.to_string()).collect();
        log::info(&format!("pid {}: pending signals {}", t.pid(), list.join(",")));
    }
    Ok(out)
}

/// Pages go to pages-PID.img, or compressed (`compress`, a zstd level) to
/// pages-PID.img.zst: then rcr reads them (readv), as only it compresses.
fn write_pages(t: &Tracee, p: &mut Parasite, dir: &ImageDir, c: &Collected, via: PagesVia, compress: Option<i32>) -> Result<Vec<pb::PagemapEntry>> {
    let pid = t.pid() as u32;
    let mut sink: Box<dyn PageSink> = match compress {
        Some(level) => Box::new(compress::ZstdPageFile::create(dir, pid, level)?),
        None => {
            dir.remove_file(&compress::name(pid))?;
            Box::new(PageFile::create(dir, pid)?)
        }
    };
    let mut readv = ReadvSource { pid: t.pid() };
    let mut through_parasite = None;
    let pid = t.pid();
    let source: &mut dyn PageSource = match via {
        PagesVia::Readv => &mut readv,
        _ if compress.is_some() => &mut readv,
        PagesVia::Write => {
            let source = through_parasite.insert(ParasiteSource::new(p, ParasiteVia::Write));
            if !under_seccomp(pid)? {
                let open: mm::dump::OpenSink = Box::new(move || Ok(Box::new(PageFile::create_part(dir, pid as u32, 1)?)));
                source.set_second_file(mm::dump::SecondFile::new(open));
            }
            source
        }
        PagesVia::Splice => through_parasite.insert(ParasiteSource::new(p, ParasiteVia::Splice)),
    };
    let how = if compress.is_some() { "process_vm_readv into zstd" } else { source.describe() };
    let file = || format!("pid {}: saving its memory into {} (and its .1 part)", t.pid(), dir.file(Kind::Pages, Some(t.pid() as u32)).display());
    mm::dump::dump_pages(t.pid(), &c.mm.vmas, source, sink.as_mut()).with_context(file)?;
    // The second writer's pages file, if it wrote one: its runs merge into
    // the one pagemap (each entry names its file).
    let second_pagemap = match through_parasite.as_mut().and_then(|s| s.take_second_file()) {
        Some(h) => h.finish().with_context(file)?,
        None => Vec::new(),
    };
    let second: u64 = second_pagemap.iter().map(|e| u64::from(e.nr_pages)).sum();
    let mut pagemap = (sink as Box<dyn PageSink>).finish().with_context(file)?;
    if !second_pagemap.is_empty() {
        pagemap.extend(second_pagemap);
        pagemap.sort_by_key(|e| e.vaddr);
    }
    let saved: u64 = pagemap.iter().map(|e| u64::from(e.nr_pages)).sum();
    stats::add(stats::Count::PagesWritten, saved);
    log::info(&format!("pid {}: {} pages saved in {} runs via {how}", t.pid(), saved, pagemap.len()));
    if second > 0 {
        log::info(&format!("pid {pid}: {second} of them by a second parasite thread, into pages-{pid}.1.img"));
    }
    Ok(pagemap)
}

/// Whether `pid` runs under seccomp (/proc status `Seccomp` not 0).
fn under_seccomp(pid: i32) -> Result<bool> {
    Ok(proc::status(pid)?.get("Seccomp").is_some_and(|m| m != "0"))
}

fn write_images(pid: u32, dir: &ImageDir, c: &Collected, pagemap: &[pb::PagemapEntry]) -> Result<()> {
    let pid = Some(pid);
    dir.write_all(Kind::Pagemap, pid, pagemap)?;
    dir.write_one(Kind::Core, pid, &c.core)?;
    dir.write_one(Kind::Mm, pid, &c.mm)?;
    dir.write_all(Kind::Fdinfo, pid, &c.fds)?;
    dir.write_one(Kind::Fs, pid, &c.fs)
}

/// The images of the tree as a whole; the inventory last, once every
/// other file is on disk (and it too before the tree is killed).
fn write_tree_images(dir: &ImageDir, o: &Options, pstree: &[pb::PstreeEntry], shared: &DumpCx, xsave_size: usize) -> Result<()> {
    files::fds::write_images(dir, shared)?;
    fault::point("file images written")?;
    dir.write_all(Kind::Pstree, None, pstree)?;
    dir.sync()?;
    fault::point("images synced")?;
    let inv = pb::Inventory {
        format_version: FORMAT_VERSION,
        root_pid: o.pid as u32,
        parent: String::new(),
        kernel_release: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
        dump_time_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        rcr_version: env!("CARGO_PKG_VERSION").to_string(),
        page_size: PAGE_SIZE as u32,
        xsave_size: xsave_size as u32,
        xcr0: arch::xcr0(),
        network_lock: shared.inet.lock.as_ref().and_then(NetLock::table).unwrap_or_default().to_string(),
        pages_compression: if o.compress.is_some() { pb::PagesCompression::PagesZstd } else { pb::PagesCompression::PagesPlain } as i32,
    };
    dir.write_one(Kind::Inventory, None, &inv)?;
    dir.sync()
}
