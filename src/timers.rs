//! POSIX timers (timer_create(2)): dump and restore side by side.
//!
//! Dump: /proc/PID/timers lists each timer (id, signal and sigev value,
//! notification and its target, clock); the parasite reads, inside the
//! frozen task, its time left and interval (timer_gettime) and overrun
//! (timer_getoverrun), see [`Parasite::posix_timers`]. A signal a timer
//! had queued itself and that is still pending is taken out of the
//! pending lists ([`claim_pending`]): on restore the timer is armed to
//! fire at once instead, so that the signal is again the timer's own
//! (re-armed on delivery, counted in the overrun).
//!
//! Restore: the restorer blob creates every timer under its id with
//! PR_TIMER_CREATE_RESTORE_IDS (Linux 6.13+), once the threads exist, and
//! arms it with its time left next to the itimers. The overrun count is
//! not carried (no kernel interface sets it): timer_getoverrun returns 0
//! until the next expiry.
use crate::images::pb;
use crate::infect::parasite::Parasite;
use anyhow::{bail, Context, Result};
use rcr_abi::parasite::PosixTimerState;
use rcr_abi::PosixTimerArgs;

const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD: i32 = 2;
const SIGEV_THREAD_ID: i32 = 4;
const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
const SI_TIMER: i32 = -2;
const NSEC: u64 = 1_000_000_000;

/// One entry of /proc/PID/timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcTimer {
    pub id: i32,
    pub signo: i32,
    pub sigev_value: u64,
    pub notify: i32,
    pub target: i32,
    pub clock: i32,
}

/// Parses /proc/PID/timers: blocks of `ID:`, `signal: SIGNO/VALUE`,
/// `notify: KIND/pid.N` (or `tid.N`), `ClockID:` lines. Sorted by id.
pub fn parse(text: &str) -> Result<Vec<ProcTimer>> {
    let mut out: Vec<ProcTimer> = Vec::new();
    for line in text.lines() {
        let (key, val) = line.split_once(':').with_context(|| format!("line {line:?}"))?;
        let val = val.trim();
        if key == "ID" {
            out.push(ProcTimer { id: val.parse()?, signo: 0, sigev_value: 0, notify: 0, target: 0, clock: 0 });
            continue;
        }
        let t = out.last_mut().with_context(|| format!("{key} before any ID"))?;
        match key {
            "signal" => {
                let (signo, value) = val.split_once('/').with_context(|| format!("signal {val:?}"))?;
                t.signo = signo.parse()?;
                t.sigev_value = u64::from_str_radix(value.trim_start_matches("0x"), 16)?;
            }
            "notify" => {
                let (kind, target) = val.split_once('/').with_context(|| format!("notify {val:?}"))?;
                let (whom, n) = target.split_once('.').with_context(|| format!("notify {val:?}"))?;
                let kind = match kind {
                    "signal" => 0,
                    "none" => SIGEV_NONE,
                    "thread" => SIGEV_THREAD,
                    _ => bail!("notify kind {kind:?}"),
                };
                t.notify = kind | if whom == "tid" { SIGEV_THREAD_ID } else { 0 };
                t.target = n.parse()?;
            }
            "ClockID" => t.clock = val.parse()?,
            _ => {}
        }
    }
    out.sort_by_key(|t| t.id);
    Ok(out)
}

/// Refuses a timer whose clock or target rcr cannot recreate as it was.
fn check(pid: i32, tids: &[i32], t: &ProcTimer) -> Result<()> {
    let id = t.id;
    if t.notify & SIGEV_THREAD_ID != 0 && !tids.contains(&t.target) {
        bail!("pid {pid}: POSIX timer {id} signals thread {}, which is not a thread of the process (it exited?)", t.target);
    }
    if t.clock == CLOCK_THREAD_CPUTIME_ID && tids.len() > 1 {
        bail!("pid {pid}: POSIX timer {id} counts the CPU time of the thread that created it (CLOCK_THREAD_CPUTIME_ID), which /proc does not tell in a process of {} threads", tids.len());
    }
    if t.clock >= 0 {
        return Ok(());
    }
    // A CPU clock of a given process or thread: ~pid << 3 | perthread << 2 | kind.
    let (owner, perthread, kind) = (!(t.clock >> 3), t.clock & 4 != 0, t.clock & 3);
    if kind == 3 {
        bail!("pid {pid}: POSIX timer {id} runs on a dynamic clock (clock id {}, an fd of a clock device)", t.clock);
    }
    match (owner, perthread) {
        (0, true) if tids.len() > 1 => bail!("pid {pid}: POSIX timer {id} counts the CPU time of the thread that created it (clock id {}), which /proc does not tell in a process of {} threads", t.clock, tids.len()),
        (0, _) => Ok(()),
        (tid, true) if tids.contains(&tid) => Ok(()),
        (tid, true) => bail!("pid {pid}: POSIX timer {id} counts the CPU time of thread {tid} of another process (clock id {})", t.clock),
        (p, false) if p == pid => Ok(()),
        (p, false) => bail!("pid {pid}: POSIX timer {id} counts the CPU time of another process, pid {p} (clock id {})", t.clock),
    }
}

/// The POSIX timers of the frozen process `pid` (threads `tids`, the
/// leader first), and its PR_TIMER_CREATE_RESTORE_IDS mode.
pub fn dump(pid: i32, tids: &[i32], p: &mut Parasite) -> Result<(Vec<pb::PosixTimer>, i32)> {
    let listed = parse(&crate::proc::read_string(pid, "timers")?).with_context(|| format!("parsing /proc/{pid}/timers"))?;
    for t in &listed {
        check(pid, tids, t)?;
    }
    let ids: Vec<i32> = listed.iter().map(|t| t.id).collect();
    let (states, mode) = p.posix_timers(&ids)?;
    if mode < 0 && !listed.is_empty() {
        bail!(
            "pid {pid} has {} POSIX timers, but this kernel cannot create a timer with a given id (PR_TIMER_CREATE_RESTORE_IDS, Linux 6.13+): they would come back with other ids",
            listed.len()
        );
    }
    let timers = listed.iter().zip(states).map(|(t, s)| to_pb(t, &s)).collect();
    Ok((timers, mode.max(0) as i32))
}

fn to_pb(t: &ProcTimer, s: &PosixTimerState) -> pb::PosixTimer {
    let ns = |sec: i64, nsec: i64| sec as u64 * NSEC + nsec as u64;
    pb::PosixTimer {
        id: t.id,
        clock_id: t.clock,
        notify: t.notify,
        signo: t.signo,
        sigev_value: t.sigev_value,
        target: t.target as u32,
        value_ns: ns(s.value_sec, s.value_nsec),
        interval_ns: ns(s.interval_sec, s.interval_nsec),
        overrun: s.overrun,
        signal_pending: false,
    }
}

/// Takes the signals the process's timers queued themselves (SI_TIMER,
/// si_timerid one of theirs) out of the pending lists of `core` and marks
/// those timers `signal_pending`.
pub fn claim_pending(core: &mut pb::TaskCore) {
    let mut timers = std::mem::take(&mut core.posix_timers);
    let mut claim = |list: &mut Vec<pb::PendingSignal>| {
        list.retain(|p| {
            let word = |at: usize| p.siginfo.get(at..at + 4).map_or(0, |b| i32::from_le_bytes(b.try_into().unwrap_or_default()));
            let mine = (word(8) == SI_TIMER).then(|| timers.iter_mut().find(|t| t.id == word(16) && t.signo as u32 == p.signo)).flatten();
            match mine {
                Some(t) => {
                    t.signal_pending = true;
                    false
                }
                None => true,
            }
        })
    };
    claim(&mut core.pending);
    for th in &mut core.threads {
        claim(&mut th.pending);
    }
    core.posix_timers = timers;
}

/// Refuses, before anything is created, timers this kernel cannot restore
/// under their ids, or whose thread is not in the image.
pub fn validate(core: &pb::TaskCore) -> Result<()> {
    let pid = core.pid;
    if core.posix_timers.is_empty() && core.timer_restore_ids == 0 {
        return Ok(());
    }
    if !crate::sys::timer_restore_ids_supported() {
        bail!("core-{pid}.img: POSIX timers need PR_TIMER_CREATE_RESTORE_IDS (Linux 6.13+) to come back with their ids; this kernel lacks it");
    }
    for t in &core.posix_timers {
        if t.notify & SIGEV_THREAD_ID != 0 && t.target != pid && !core.threads.iter().any(|th| th.tid == t.target) {
            bail!("core-{pid}.img: POSIX timer {} signals thread {}, which the image does not hold", t.id, t.target);
        }
    }
    Ok(())
}

/// The restorer blob's view of the timers of `core`, and the
/// PR_TIMER_CREATE_RESTORE_IDS mode to leave the process in.
pub fn blob_args(core: &pb::TaskCore) -> (Vec<PosixTimerArgs>, u64) {
    let split = |ns: u64| ((ns / NSEC) as i64, (ns % NSEC) as i64);
    let args = core
        .posix_timers
        .iter()
        .map(|t| {
            // A signal it had queued fires again at once, from the timer.
            let value_ns = if t.signal_pending { 1 } else { t.value_ns };
            let ((interval_sec, interval_nsec), (value_sec, value_nsec)) = (split(t.interval_ns), split(value_ns));
            PosixTimerArgs {
                id: t.id,
                clock: t.clock_id,
                sigev_value: t.sigev_value,
                sigev_signo: t.signo,
                sigev_notify: t.notify,
                sigev_tid: if t.notify & SIGEV_THREAD_ID != 0 { t.target as i32 } else { 0 },
                _sigev_pad: [0; 11],
                interval_sec,
                interval_nsec,
                value_sec,
                value_nsec,
            }
        })
        .collect();
    (args, core.timer_restore_ids as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_timers() {
        let text = "ID: 4\nsignal: 38/000000000000beef\nnotify: signal/tid.77\nClockID: 1\nID: 0\nsignal: 14/0000000000000000\nnotify: none/pid.70\nClockID: -6\n";
        let t = parse(text).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0], ProcTimer { id: 0, signo: 14, sigev_value: 0, notify: SIGEV_NONE, target: 70, clock: -6 });
        assert_eq!(t[1], ProcTimer { id: 4, signo: 38, sigev_value: 0xbeef, notify: SIGEV_THREAD_ID, target: 77, clock: 1 });
    }

    #[test]
    fn cpu_clocks() {
        let t = |clock| ProcTimer { id: 1, signo: 10, sigev_value: 0, notify: 0, target: 70, clock };
        let process_clock = |pid: i32| (!pid << 3) | 2;
        let thread_clock = |tid: i32| (!tid << 3) | 6;
        assert!(check(70, &[70, 71], &t(process_clock(70))).is_ok());
        assert!(check(70, &[70, 71], &t(process_clock(99))).is_err());
        assert!(check(70, &[70, 71], &t(thread_clock(71))).is_ok());
        assert!(check(70, &[70, 71], &t(thread_clock(99))).is_err());
        assert!(check(70, &[70, 71], &t(CLOCK_THREAD_CPUTIME_ID)).is_err());
        assert!(check(70, &[70], &t(CLOCK_THREAD_CPUTIME_ID)).is_ok());
        assert!(check(70, &[70], &t(2)).is_ok());
    }
}
