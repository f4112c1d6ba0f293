//! Timings and counters of one `rcr dump` or `rcr restore`, written into
//! the image set as `stats-dump.img` / `stats-restore.img` (proto/stats.proto)
//! and printed by `rcr show`; `scripts/bench` reads them (frozen time).
//!
//! One place, one clock: everything is CLOCK_MONOTONIC ([`Instant`])
//! relative to [`start`], kept in process-wide atomics so that any module
//! can add to a phase ([`timer`]) or a counter ([`add`]) without passing
//! a context around. Each rcr run is one dump or one restore, so the
//! values are simply that run's.
use crate::images::{pb, ImageDir, Kind};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

/// Time spent in a kind of work, summed over all processes.
#[derive(Clone, Copy, Debug)]
pub enum Phase {
    Freezing,
    Infect,
    Memory,
    Fds,
    Images,
    Load,
}

/// Quantities counted during the run.
#[derive(Clone, Copy, Debug)]
pub enum Count {
    PagesScanned,
    PagesWritten,
    PagesZero,
    PagesRestored,
}

/// Moments of the run, in µs since [`start`] (0: not reached).
#[derive(Clone, Copy, Debug)]
pub enum Mark {
    /// First freeze of a dump, first clone3 of a restore.
    Begin,
    /// Dump: tree killed or resumed; restore: every process forked.
    Forked,
    /// Restore: barrier 2 released, the blobs run.
    BlobsStart,
    /// Restore: every blob reported.
    BlobsDone,
    /// Dump: the tree was killed or let go.
    Released,
}

static EPOCH: OnceLock<Instant> = OnceLock::new();
static PHASES: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];
static COUNTS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static MARKS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// Starts the clock of this run (first call wins).
pub fn start() {
    EPOCH.get_or_init(Instant::now);
}

/// µs since [`start`].
pub fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Adds the time until it is dropped to `phase`.
#[derive(Debug)]
pub struct Timer(Phase, Instant);

impl Drop for Timer {
    fn drop(&mut self) {
        PHASES[self.0 as usize].fetch_add(self.1.elapsed().as_micros() as u64, Relaxed);
    }
}

pub fn timer(phase: Phase) -> Timer {
    Timer(phase, Instant::now())
}

/// Runs `f`, adding its time to `phase`.
pub fn time<T>(phase: Phase, f: impl FnOnce() -> T) -> T {
    let _t = timer(phase);
    f()
}

pub fn add(c: Count, n: u64) {
    COUNTS[c as usize].fetch_add(n, Relaxed);
}

/// Records that `m` happens now (the first time only).
pub fn mark(m: Mark) {
    let _ = MARKS[m as usize].compare_exchange(0, now_us().max(1), Relaxed, Relaxed);
}

fn phase(p: Phase) -> u64 {
    PHASES[p as usize].load(Relaxed)
}

fn count(c: Count) -> u64 {
    COUNTS[c as usize].load(Relaxed)
}

/// µs from mark `a` to mark `b`, 0 if either was not reached.
fn between(a: Mark, b: Mark) -> u64 {
    let (a, b) = (MARKS[a as usize].load(Relaxed), MARKS[b as usize].load(Relaxed));
    if a == 0 || b == 0 {
        0
    } else {
        b.saturating_sub(a)
    }
}

/// Total size of the files in `dir`.
fn dir_bytes(dir: &ImageDir) -> u64 {
    let Ok(entries) = dir.entries() else { return 0 };
    entries.iter().filter(|(_, st)| st.st_mode & libc::S_IFMT == libc::S_IFREG).map(|(_, st)| st.st_size as u64).sum()
}

/// rcr's own peak resident set so far, KiB (VmHWM of its current mm; 0 if
/// unreadable). getrusage's ru_maxrss would count the process rcr was
/// exec'd from too.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

/// The statistics of a finished dump, written to `stats-dump.img`.
pub fn write_dump(dir: &ImageDir, leave_running: bool, processes: usize, threads: usize) -> anyhow::Result<()> {
    let s = pb::DumpStats {
        freezing_us: phase(Phase::Freezing),
        frozen_us: between(Mark::Begin, Mark::Released),
        memory_us: phase(Phase::Memory),
        fds_us: phase(Phase::Fds),
        images_us: phase(Phase::Images),
        infect_us: phase(Phase::Infect),
        total_us: now_us(),
        pages_scanned: count(Count::PagesScanned),
        pages_written: count(Count::PagesWritten),
        pages_zero: count(Count::PagesZero),
        bytes_written: dir_bytes(dir),
        leave_running,
        processes: processes as u32,
        threads: threads as u32,
        peak_rss_kib: peak_rss_kib(),
    };
    dir.write_one(Kind::StatsDump, None, &s)
}

/// The statistics of a restore whose tree runs now, written to `stats-restore.img`.
pub fn write_restore(dir: &ImageDir, processes: usize, threads: usize) -> anyhow::Result<()> {
    let s = pb::RestoreStats {
        load_us: phase(Phase::Load),
        forking_us: between(Mark::Begin, Mark::Forked),
        restorer_us: between(Mark::BlobsStart, Mark::BlobsDone),
        total_us: now_us(),
        pages_restored: count(Count::PagesRestored),
        processes: processes as u32,
        threads: threads as u32,
        peak_rss_kib: peak_rss_kib(),
    };
    dir.write_one(Kind::StatsRestore, None, &s)
}
