//! The dump's watchdog: undoes what a dump left inside the target when
//! rcr dies in the middle (SIGKILL, a crash).
//!
//! When rcr is killed while the parasite runs, the parasite sees its
//! socket close and rt_sigreturns into the saved state by itself, and the
//! kernel detaches the tracees; but the parasite region stays mapped, TCP
//! sockets stay in repair mode and the network lock table stays. So at the
//! start of a dump rcr spawns itself as `rcr __watchdog` ([`start`]), with
//! - stdin: the read end of a pipe whose only write end rcr holds: EOF
//!   means rcr is gone (or done),
//! - stdout: the journal, a shared memory object rcr writes what must be
//!   undone into ([`region_mapping`], [`region_mapped`], [`socket_repaired`],
//!   [`table_created`]) and clears as it undoes it itself,
//! - stderr: rcr's, for its messages.
//!
//! It closes every other fd (it never holds the parasite's socket, whose
//! close is what makes the parasite return). On EOF ([`main`]) it reads the
//! journal: empty, it exits; otherwise it turns TCP_REPAIR off on each
//! socket (a pidfd_getfd copy), deletes the table, waits for each process
//! to be untraced and out of the parasite, seizes it and unmaps the
//! region with a remote munmap through the task's own code, and detaches.
//! rcr's normal end (success or error) closes the pipe and waits for it.
use crate::infect::{parasite, Tracee};
use crate::{log, sys};
use anyhow::{Context, Result};
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Journal records: `[kind, pid, a, b]` as u64 LE, in fixed slots.
const SLOTS: usize = 1024;
const SLOT: u64 = 32;
/// The network lock table name: u64 length then the bytes.
const TABLE_OFF: u64 = SLOTS as u64 * SLOT;
const TABLE_MAX: usize = 256;
/// A whole number of pages (a shared memory object is mapped to make it).
const JOURNAL_LEN: u64 = TABLE_OFF + 4096;

const KIND_REGION: u64 = 1;
const KIND_SOCKET: u64 = 2;

/// rcr's side of the journal: the object and which slots are in use.
struct Journal {
    file: File,
    used: Vec<Option<(u64, u64)>>,
}

static JOURNAL: Mutex<Option<Journal>> = Mutex::new(None);

/// The running watchdog; dropping it closes the pipe and waits for it
/// (it exits at once if the journal is empty).
#[derive(Debug)]
pub struct Watchdog {
    child: Option<Child>,
    pipe: Option<OwnedFd>,
}

/// Spawns the watchdog.
pub fn start() -> Result<Watchdog> {
    let exe = std::env::current_exe().context("finding rcr's own executable for the watchdog")?;
    let journal = sys::shmem_object(JOURNAL_LEN).context("the watchdog's journal")?;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("the watchdog's pipe")?;
    let file = File::from(journal.try_clone().context("dup of the journal")?);
    let child = Command::new(&exe)
        .arg("__watchdog")
        .stdin(Stdio::from(r))
        .stdout(Stdio::from(journal))
        .spawn()
        .with_context(|| format!("starting the dump's watchdog ({} __watchdog)", exe.display()))?;
    *lock() = Some(Journal { file, used: vec![None; SLOTS] });
    Ok(Watchdog { child: Some(child), pipe: Some(w) })
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        *lock() = None;
        self.pipe = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

fn lock() -> std::sync::MutexGuard<'static, Option<Journal>> {
    JOURNAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets (or with kind 0 clears) the record of `(kind, pid, key)`; a no-op
/// without a watchdog (restore, tests of parts).
fn record(kind: u64, pid: i32, key: u64, vals: [u64; 2], clear: bool) {
    let mut g = lock();
    let Some(j) = g.as_mut() else { return };
    let id = (kind << 32 | pid as u64, key);
    let slot = j.used.iter().position(|u| *u == Some(id)).or_else(|| (!clear).then(|| j.used.iter().position(Option::is_none)).flatten());
    let Some(i) = slot else {
        if !clear {
            log::warn(&format!("the watchdog's journal is full: pid {pid} is not covered if rcr dies"));
        }
        return;
    };
    let rec = if clear { [0u64; 4] } else { [kind, pid as u64, vals[0], vals[1]] };
    let bytes: Vec<u8> = rec.iter().flat_map(|v| v.to_le_bytes()).collect();
    if let Err(e) = j.file.write_all_at(&bytes, i as u64 * SLOT) {
        log::warn(&format!("writing the watchdog's journal: {e}"));
    }
    j.used[i] = (!clear).then_some(id);
}

/// A parasite region of `len` bytes is about to be mapped in `pid`.
pub fn region_mapping(pid: i32, len: u64) {
    record(KIND_REGION, pid, 0, [0, len], false);
}

/// It was mapped at `start`.
pub fn region_mapped(pid: i32, start: u64, len: u64) {
    record(KIND_REGION, pid, 0, [start, len], false);
}

/// rcr unmapped it (or it never was mapped).
pub fn region_unmapped(pid: i32) {
    record(KIND_REGION, pid, 0, [0, 0], true);
}

/// Socket `fd` of `pid` is in TCP_REPAIR.
pub fn socket_repaired(pid: i32, fd: i32) {
    record(KIND_SOCKET, pid, fd as u64, [fd as u64, 0], false);
}

/// rcr turned repair off on every socket, or keeps them so (the tree was
/// killed).
pub fn sockets_released() {
    let mut g = lock();
    let Some(j) = g.as_mut() else { return };
    for (i, u) in j.used.iter_mut().enumerate() {
        if matches!(u, Some((id, _)) if *id >> 32 == KIND_SOCKET) {
            let _ = j.file.write_all_at(&[0u8; SLOT as usize], i as u64 * SLOT);
            *u = None;
        }
    }
}

/// The network lock table `name` exists ("" once deleted or kept).
pub fn table_created(name: &str) {
    let mut g = lock();
    let Some(j) = g.as_mut() else { return };
    let b = &name.as_bytes()[..name.len().min(TABLE_MAX)];
    let mut rec = (b.len() as u64).to_le_bytes().to_vec();
    rec.extend_from_slice(b);
    if let Err(e) = j.file.write_all_at(&rec, TABLE_OFF) {
        log::warn(&format!("writing the watchdog's journal: {e}"));
    }
}

/// What the journal holds when rcr is gone.
#[derive(Debug, Default)]
struct Left {
    regions: Vec<(i32, u64, u64)>,
    sockets: Vec<(i32, i32)>,
    table: String,
}

fn read_journal(bytes: &[u8]) -> Left {
    let mut left = Left::default();
    let word = |i: usize| u64::from_le_bytes(bytes.get(i * 8..i * 8 + 8).and_then(|b| b.try_into().ok()).unwrap_or_default());
    for s in 0..SLOTS {
        let [kind, pid, a, b] = [0, 1, 2, 3].map(|k| word(s * 4 + k));
        match kind {
            KIND_REGION => left.regions.push((pid as i32, a, b)),
            KIND_SOCKET => left.sockets.push((pid as i32, a as i32)),
            _ => {}
        }
    }
    let n = (word(TABLE_OFF as usize / 8) as usize).min(TABLE_MAX);
    let at = TABLE_OFF as usize + 8;
    left.table = String::from_utf8_lossy(bytes.get(at..at + n).unwrap_or_default()).into_owned();
    left
}

/// `rcr __watchdog`: waits for rcr to go, then undoes what the journal
/// lists. Returns the exit code.
pub fn main() -> Result<i32> {
    sys::close_all_except(&[0, 1, 2])?;
    // A ^C to rcr's terminal, or a signal to its process group, must not
    // stop the cleanup: a session of its own, SIGINT and SIGTERM caught.
    let _ = nix::unistd::setsid();
    crate::fault::catch_interrupts()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    let bytes = std::fs::read("/proc/self/fd/1").context("reading the journal")?;
    let left = read_journal(&bytes);
    if left.regions.is_empty() && left.sockets.is_empty() && left.table.is_empty() {
        return Ok(0);
    }
    log::warn("watchdog: rcr ended in the middle of a dump; undoing what it left in the target");
    let mut ok = true;
    for &(pid, fd) in &left.sockets {
        ok &= report(unrepair(pid, fd).with_context(|| format!("pid {pid} fd {fd}: turning TCP_REPAIR off")));
    }
    if !left.table.is_empty() {
        ok &= report(crate::files::inet::delete_table(&left.table));
    }
    for &(pid, start, len) in &left.regions {
        ok &= report(remove_region(pid, start, len).with_context(|| format!("pid {pid}: removing the parasite region")));
    }
    Ok(if ok { 0 } else { 1 })
}

fn report(r: Result<()>) -> bool {
    if let Err(e) = &r {
        log::error(&format!("watchdog: {e:#}"));
    }
    r.is_ok()
}

fn unrepair(pid: i32, fd: i32) -> Result<()> {
    let sock = sys::pidfd_getfd(pid, fd).context("pidfd_getfd")?;
    crate::files::inet::set_repair_off(&sock)?;
    log::warn(&format!("watchdog: pid {pid} fd {fd}: TCP_REPAIR turned off"));
    Ok(())
}

/// Unmaps the region rcr left in `pid`. With `start` 0 rcr died inside the
/// guarded mmap, maybe before the target ran it: the target then runs it
/// once it is let go (by the first pass at the latest), so a second pass
/// looks again.
fn remove_region(pid: i32, start: u64, len: u64) -> Result<()> {
    remove_region_once(pid, start, len)?;
    if start == 0 {
        std::thread::sleep(Duration::from_millis(20));
        remove_region_once(pid, start, len)?;
    }
    Ok(())
}

/// Seizes `pid` once rcr's tracing is gone and the parasite has returned
/// (its code is no longer running in the region), and unmaps the region.
fn remove_region_once(pid: i32, start: u64, len: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if crate::infect::dead(pid) {
            return Ok(()); // gone or a zombie: nothing left inside it
        }
        match Tracee::seize(pid) {
            Ok(t) => {
                let rip = t.get_regs()?.rip;
                let busy = start != 0 && (start..start + len).contains(&rip);
                if !busy {
                    let r = parasite::remove_region(&t, start, len);
                    t.detach()?;
                    log::warn(&format!("watchdog: pid {pid}: parasite region at {start:#x} ({len} bytes; 0: rcr died inside the mmap) removed"));
                    return r;
                }
                t.detach()?;
            }
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => {}
        }
        if Instant::now() > deadline {
            anyhow::bail!("pid {pid} is still running the parasite at {start:#x} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
