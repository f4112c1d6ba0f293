//! Signal state, itimers, umask and pending signals survive `rcr dump` /
//! `rcr restore`, and a `rcr dump -R` that leaves the process running.
//!
//! The victim is tests/victims/sigstate.c (its header comment lists what it
//! sets up and checks after go). From outside, these tests also compare
//! /proc/PID/status: Umask, SigBlk and SigIgn (part of the harness
//! snapshot), SigCgt (which signals have a handler), and the pending sets
//! SigPnd (thread-directed: the raised SIGUSR2) and ShdPnd (process-
//! directed: the sigqueued SIGRTMIN+5), leaving out the three timer
//! signals, which come and go. They also check, in rcr's log (-v -v -o), by
//! which path the pages left the target.
//!
//! Needs root; without it every test prints a message and passes.
//! Run: `cargo test --test sigstate`.
mod common;

use common::*;
use std::fs;
use std::time::Duration;

const UMASK: &str = "0073";

/// Signals the itimers send; they may be pending at any moment.
fn timer_bits() -> u64 {
    sigbit(libc::SIGALRM) | sigbit(libc::SIGVTALRM) | sigbit(libc::SIGPROF)
}

fn rtmin(n: i32) -> i32 {
    libc::SIGRTMIN() + n
}

/// Signals the victim catches (SIGHUP included: nothing raises it before go).
fn caught() -> u64 {
    use libc::{SIGALRM, SIGHUP, SIGPROF, SIGURG, SIGUSR1, SIGUSR2, SIGVTALRM, SIGWINCH};
    [SIGALRM, SIGVTALRM, SIGPROF, SIGUSR1, SIGHUP, SIGURG, SIGWINCH, SIGUSR2, rtmin(3), rtmin(5)].iter().fold(0, |m, &s| m | sigbit(s))
}

fn hex_field(pid: i32, key: &str) -> u64 {
    let v = status_field(pid, key).unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    u64::from_str_radix(&v, 16).unwrap_or_else(|e| panic!("{key} {v:?} of pid {pid}: {e}"))
}

/// What the signal side of /proc/PID/status looks like from outside.
#[derive(Debug, PartialEq, Eq)]
struct SigStatus {
    umask: String,
    blocked: u64,
    ignored: u64,
    caught: u64,
    /// SigPnd and ShdPnd without the timer signals.
    pending_thread: u64,
    pending_shared: u64,
}

fn sig_status(pid: i32) -> SigStatus {
    SigStatus {
        umask: status_field(pid, "Umask").unwrap_or_default(),
        blocked: hex_field(pid, "SigBlk"),
        ignored: hex_field(pid, "SigIgn"),
        caught: hex_field(pid, "SigCgt"),
        pending_thread: hex_field(pid, "SigPnd") & !timer_bits(),
        pending_shared: hex_field(pid, "ShdPnd") & !timer_bits(),
    }
}

/// The state the victim (started with `args`) sets up before READY, as
/// seen from outside.
fn expected(args: &[&str]) -> SigStatus {
    let alrm = if args.contains(&"alrm-blocked") { sigbit(libc::SIGALRM) } else { 0 };
    SigStatus {
        umask: UMASK.to_string(),
        blocked: sigbit(libc::SIGUSR2) | sigbit(rtmin(5)) | sigbit(libc::SIGTTIN) | sigbit(libc::SIGRTMAX() - 2) | alrm,
        ignored: sigbit(libc::SIGPIPE) | sigbit(rtmin(10)),
        caught: caught(),
        pending_thread: sigbit(libc::SIGUSR2),
        pending_shared: sigbit(rtmin(5)),
    }
}

/// Starts the sigstate victim, waits for READY and checks it set up what
/// we expect (so that a later mismatch is rcr's doing).
fn start(name: &str, args: &[&str]) -> Option<TestEnv> {
    let mut t = TestEnv::new(name)?;
    t.spawn_victim("sigstate", args, false);
    t.wait_ready();
    assert_eq!(sig_status(t.pid), expected(args), "the victim did not set up the intended signal state");
    Some(t)
}

/// The text of rcr's -o logs of every dump this test ran (the harness
/// names them rcr-SEQ-dump.log in the test dir).
fn dump_logs(t: &TestEnv) -> String {
    let mut names: Vec<_> = fs::read_dir(&t.dir)
        .expect("reading the test dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("rcr-") && n.ends_with("-dump.log"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no rcr dump log (rcr-*-dump.log) in {}", t.dir.display());
    names.iter().map(|n| fs::read_to_string(t.dir.join(n)).unwrap_or_default()).collect()
}

/// rcr's dump log says the pages went out `via` the given path.
fn assert_pages_via(t: &TestEnv, via: &str) {
    let log = dump_logs(t);
    let line = log.lines().find(|l| l.contains("pages saved in"));
    let want = format!("via {via}");
    assert!(
        line.is_some_and(|l| l.contains(&format!("pid {}:", t.pid)) && l.trim_end().ends_with(&want)),
        "rcr's dump log should say `pid {}: N pages saved in M runs {want}`; found {line:?}",
        t.pid
    );
}

/// Dump (killing the victim) with `extra` dump args, restore, compare from
/// outside, go, PASS.
fn dump_restore_pass(name: &str, args: &[&str], extra: &[&str], via: &str) {
    let Some(mut t) = start(name, args) else { return };
    let before = snapshot(t.pid);
    let sig_before = sig_status(t.pid);
    t.dump_ok(extra);
    assert_pages_via(&t, via);
    t.reap_victim();
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    assert_same_snapshot(&before, &snapshot(pid), "after restore");
    assert_eq!(sig_status(pid), sig_before, "signal state in /proc/PID/status after restore");
    t.go_expect_pass();
}

/// Handlers, flags, masks, altstack, itimers, umask and pending signals
/// survive dump + restore; the pages went through the parasite's write().
#[test]
fn sigstate_restore() {
    dump_restore_pass("sigstate_restore", &[], &[], "parasite write");
}

/// The same with the pages vmspliced by the parasite and spliced by rcr.
#[test]
fn sigstate_restore_pages_via_splice() {
    dump_restore_pass("sigstate_restore_pages_via_splice", &[], &["--pages-via", "splice"], "parasite vmsplice + splice");
}

/// ITIMER_REAL every 1 ms: a SIGALRM (not blocked) is almost surely
/// pending in the image, and the re-armed timer fires again while rcr
/// restore still steps the restored process (after its rt_sigreturn).
#[test]
fn sigstate_restore_fast_timer() {
    dump_restore_pass("sigstate_restore_fast_timer", &["fast"], &[], "parasite write");
}

/// SIGALRM blocked and pending at dump time: the kernel re-arms a periodic
/// ITIMER_REAL only when its SIGALRM is dequeued, so getitimer() reports
/// it with value 0 and its interval. After restore, once the victim
/// unblocks SIGALRM, the timer must tick again with its interval.
#[test]
fn sigstate_restore_pending_blocked_sigalrm() {
    dump_restore_pass("sigstate_restore_pending_blocked_sigalrm", &["alrm-blocked"], &[], "parasite write");
}

/// dump -R: the parasite comes and goes, and the original keeps its whole
/// signal state, pending signals included, and passes without a restore.
#[test]
fn sigstate_leave_running() {
    leave_running("sigstate_leave_running", &[]);
}

/// The same with SIGALRM arriving every 1 ms while the parasite works.
#[test]
fn sigstate_leave_running_fast_timer() {
    leave_running("sigstate_leave_running_fast_timer", &["fast"]);
}

fn leave_running(name: &str, args: &[&str]) {
    let Some(mut t) = start(name, args) else { return };
    let before = snapshot(t.pid);
    let sig_before = sig_status(t.pid);
    t.dump_ok(&["-R"]);
    assert_pages_via(&t, "parasite write");
    assert!(t.victim.as_mut().unwrap().try_wait().unwrap().is_none(), "dump -R killed the victim");
    std::thread::sleep(Duration::from_millis(100));
    assert_runs_free(t.pid, "after dump -R");
    assert_same_snapshot(&before, &snapshot(t.pid), "after dump -R (the original)");
    assert_eq!(sig_status(t.pid), sig_before, "signal state in /proc/PID/status after dump -R (the original)");
    t.go_expect_original_pass();
}

/// The images of a dump -R hold the pending signals too: once the original
/// has consumed its own (and passed), a restore from them passes again.
#[test]
fn sigstate_restore_after_leave_running() {
    let Some(mut t) = start("sigstate_restore_after_leave_running", &[]) else { return };
    let before = snapshot(t.pid);
    let sig_before = sig_status(t.pid);
    t.dump_ok(&["-R"]);
    t.go("");
    let st = t.wait_victim_exit();
    t.assert_no_fail();
    assert!(st.success(), "the original exited with {} after dump -R", describe(st));
    fs::remove_file(&t.go).unwrap();
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    assert_same_snapshot(&before, &snapshot(pid), "after restore");
    assert_eq!(sig_status(pid), sig_before, "signal state in /proc/PID/status after restore");
    t.go("");
    let st = t.wait_restore_exit();
    t.assert_no_fail();
    assert!(st.success(), "rcr restore exited with {}", describe(st));
    t.assert_log_pass(2);
}
