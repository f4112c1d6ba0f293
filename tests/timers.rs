//! POSIX timers survive `rcr dump` / `rcr restore` and a `rcr dump -R`
//! under their ids, with their clocks, sigevents, time left and
//! intervals; signals queued for a non-leader thread keep their payloads
//! and order.
//!
//! The victim is tests/victims/timers.c (its header comment lists the
//! timers and what it checks after go). From outside, these tests compare
//! /proc/PID/timers (ids, signal and value, notification and its target
//! thread, clock) before the dump and after the restore, check that the
//! deleted timer's id is still a hole, that the three sigqueued signals
//! are pending for thread "tgt" (SigPnd of its task) and the blocked
//! timer's signal for the process (ShdPnd), and that a timer on
//! CLOCK_THREAD_CPUTIME_ID in a threaded process is refused at dump.
//!
//! Needs root; without it every test prints a message and passes.
//! Run: `cargo test --test timers`.
mod common;

use common::*;
use std::time::Duration;

fn rtmin(n: i32) -> i32 {
    libc::SIGRTMIN() + n
}

/// The ids the victim printed: mono gap real none tid cpu blk.
fn victim_ids(t: &TestEnv) -> Vec<i32> {
    let log = t.log_text();
    let line = log.lines().find_map(|l| l.strip_prefix("IDS ")).expect("no IDS line in the victim log");
    line.split_whitespace().map(|s| s.parse().expect("IDS: a number")).collect()
}

fn proc_timers(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap_or_else(|e| panic!("reading /proc/{pid}/timers: {e}"))
}

fn listed_ids(timers: &str) -> Vec<i32> {
    let mut ids: Vec<i32> = timers.lines().filter_map(|l| l.strip_prefix("ID: ")).map(|s| s.trim().parse().unwrap()).collect();
    ids.sort();
    ids
}

fn tid_named(pid: i32, name: &str) -> i32 {
    task_ids(pid).into_iter().find(|&tid| task_file(pid, tid, "comm").is_some_and(|c| c.trim() == name)).unwrap_or_else(|| panic!("no thread {name} in pid {pid}"))
}

fn hex(s: Option<String>) -> u64 {
    u64::from_str_radix(s.as_deref().unwrap_or("").trim(), 16).unwrap_or(0)
}

/// Signals pending for thread "tgt" only, and for the process.
fn pending(pid: i32) -> (u64, u64) {
    let tgt = tid_named(pid, "tgt");
    let status = task_file(pid, tgt, "status").unwrap_or_default();
    let field = |key: &str| hex(status.lines().find_map(|l| l.strip_prefix(key)).map(str::to_string));
    (field("SigPnd:"), field("ShdPnd:"))
}

/// What the victim set up, seen from outside: its timers (the deleted
/// one's id missing, glibc's SIGEV_THREAD timer one more), the payload
/// signals pending for tgt, the blocked timer's signal for the process.
fn check_outside(pid: i32, ids: &[i32], what: &str) -> String {
    let timers = proc_timers(pid);
    let mut want: Vec<i32> = ids.iter().enumerate().filter(|&(i, _)| i != 1).map(|(_, &id)| id).collect();
    let listed = listed_ids(&timers);
    assert_eq!(listed.len(), want.len() + 1, "{what}: /proc/{pid}/timers lists {listed:?}, want {want:?} plus glibc's:\n{timers}");
    want.push(*listed.last().unwrap());
    want.sort();
    assert_eq!(listed, want, "{what}: timer ids in /proc/{pid}/timers");
    assert!(!listed.contains(&ids[1]), "{what}: the deleted timer {} is back", ids[1]);
    let (thread, shared) = pending(pid);
    assert!(thread & sigbit(rtmin(6)) != 0, "{what}: SIGRTMIN+6 is not pending for thread tgt (SigPnd {thread:#x})");
    assert!(shared & sigbit(rtmin(5)) != 0, "{what}: the blocked timer's SIGRTMIN+5 is not pending (ShdPnd {shared:#x})");
    timers
}

fn start(name: &str, args: &[&str]) -> Option<(TestEnv, Vec<i32>)> {
    let mut t = TestEnv::new(name)?;
    t.spawn_victim("timers", args, false);
    t.wait_ready();
    let ids = victim_ids(&t);
    assert_eq!(ids.len(), 7, "IDS line: {ids:?}");
    Some((t, ids))
}

/// dump (the victim dies), restore: the same timers under the same ids,
/// still ticking, with their time left; the payload signals still queued.
#[test]
fn timers_restore() {
    let Some((mut t, ids)) = start("timers_restore", &[]) else { return };
    let before = snapshot(t.pid);
    let timers = check_outside(t.pid, &ids, "before the dump");
    t.dump_ok(&[]);
    t.reap_victim();
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    assert_same_snapshot(&before, &snapshot(pid), "after restore");
    let after = check_outside(pid, &ids, "after restore");
    assert_eq!(timers, after, "/proc/PID/timers before the dump and after the restore:\n{}", diff_lines(&timers, &after));
    t.go_expect_pass();
}

/// dump -R: the original keeps its timers (none re-created or reset) and
/// its pending signals, and passes.
#[test]
fn timers_leave_running() {
    let Some((mut t, ids)) = start("timers_leave_running", &[]) else { return };
    let before = snapshot(t.pid);
    let timers = check_outside(t.pid, &ids, "before the dump");
    t.dump_ok(&["-R"]);
    assert!(t.victim.as_mut().unwrap().try_wait().unwrap().is_none(), "dump -R killed the victim");
    std::thread::sleep(Duration::from_millis(100));
    assert_runs_free(t.pid, "after dump -R");
    assert_same_snapshot(&before, &snapshot(t.pid), "after dump -R (the original)");
    let after = check_outside(t.pid, &ids, "after dump -R");
    assert_eq!(timers, after, "/proc/PID/timers of the original after dump -R:\n{}", diff_lines(&timers, &after));
    t.go_expect_original_pass();
}

/// A timer on CLOCK_THREAD_CPUTIME_ID counts the CPU time of the thread
/// that created it, which /proc does not show: in a threaded process the
/// dump is refused, naming the timer, and the victim runs on untouched.
#[test]
fn timers_refused_thread_cputime() {
    let Some((mut t, _)) = start("timers_refused_thread_cputime", &["thread-cpu"]) else { return };
    let before = snapshot(t.pid);
    let timers = proc_timers(t.pid);
    let out = t.dump(&[]);
    assert!(!out.status.success(), "rcr dump of a process with a thread CPU-time timer succeeded");
    assert!(out.stderr.contains("POSIX timer") && out.stderr.contains("CPU time of the thread"), "rcr dump's error should name the timer and its clock; stderr:\n{}", out.stderr);
    assert!(!t.images.join("inventory.img").exists(), "a refused dump left inventory.img behind");
    std::thread::sleep(Duration::from_millis(200));
    assert_runs_free(t.pid, "after the refused dump");
    assert_same_snapshot(&before, &snapshot(t.pid), "after the refused dump");
    assert_eq!(timers, proc_timers(t.pid), "/proc/PID/timers after the refused dump");
    t.go("");
    let st = t.wait_victim_exit();
    assert!(st.success(), "the refused victim exited with {}", describe(st));
    t.assert_log_pass(1);
}
