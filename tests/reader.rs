//! The page reader thread of the restorer: a process with at least 16 MiB
//! of pages gets a second thread in its blob that reads the second half
//! of the pages while the leader reads the first, under a TID rcr picked
//! (free, none of the image set's). The victim is tests/victims/bigmem.c
//! (96 MiB, each page stamped with its address, one more thread).
//!
//! - `reader_reads_half`: dump, restore; rcr's log says the reader ran;
//!   from outside, /proc/PID/task lists exactly the saved threads (the
//!   reader is gone and reaped); the victim checks every byte: PASS.
//! - `reader_tid_taken_falls_back`: RCR_TEST_READER_TID names the PID of
//!   a live process the test started, so clone3 of the reader fails with
//!   EEXIST: the leader reads every page itself and the restore passes.
//! - `killed_while_reading`: the restored process is SIGKILLed while its
//!   reader (forced to a free TID the test picked) is alive: rcr fails,
//!   and neither the process nor the reader is left.
//!
//! Needs root; without it every test prints a message and passes.
//! Run: `cargo test --test reader`.
mod common;

use common::*;
use std::process::{Child, Command, Stdio};

/// Starts bigmem and dumps it (killing it); returns its saved tids.
fn dump_bigmem(t: &mut TestEnv) -> std::collections::BTreeSet<i32> {
    let dir = t.dir.to_string_lossy().into_owned();
    t.spawn_victim("bigmem", &[&dir], false);
    t.wait_ready();
    let tids = task_ids(t.pid);
    assert_eq!(tids.len(), 2, "bigmem should have 2 threads before the dump: {tids:?}");
    tids
}

/// The restored process has exactly `saved` as its threads.
fn assert_tasks(pid: i32, saved: &std::collections::BTreeSet<i32>) {
    let now = task_ids(pid);
    assert_eq!(&now, saved, "/proc/{pid}/task after the restore: {now:?}, saved {saved:?} (a page reader left behind?)");
}

/// The TID in "page reader thread N" of rcr's restore log.
fn reader_tid(log: &str) -> Option<i32> {
    let l = log.lines().find(|l| l.contains("pages read by the leader and page reader thread "))?;
    l.rsplit(' ').next()?.parse().ok()
}

#[test]
fn reader_reads_half() {
    let Some(mut t) = TestEnv::new("reader") else { return };
    let saved = dump_bigmem(&mut t);
    t.dump_kill_restore();
    assert_tasks(t.pid, &saved);
    let log = t.rcr_log("restore");
    let tid = reader_tid(&log).unwrap_or_else(|| panic!("rcr's restore log does not say a page reader ran:\n{log}"));
    assert!(!saved.contains(&tid), "the page reader took saved tid {tid}");
    assert!(!pid_exists(tid), "page reader {tid} still exists after the restore");
    t.go_expect_pass();
}

/// A process holding a PID, killed and reaped on drop.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn reader_tid_taken_falls_back() {
    let Some(mut t) = TestEnv::new("reader_taken") else { return };
    let mut cmd = Command::new("sleep");
    cmd.arg("120").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    prepare(&mut cmd, SpawnOpts::default());
    let holder = Holder(cmd.spawn().expect("starting sleep"));
    let held = holder.0.id() as i32;
    let saved = dump_bigmem(&mut t);
    t.rcr_env.push(("RCR_TEST_READER_TID".into(), held.to_string()));
    t.dump_kill_restore();
    assert_tasks(t.pid, &saved);
    let log = t.rcr_log("restore");
    let want = format!("no page reader thread (clone3 with tid {held}: File exists");
    assert!(log.contains(&want), "rcr's restore log should say {want:?}:\n{log}");
    assert!(pid_exists(held), "the process holding pid {held} is gone");
    t.go_expect_pass();
    drop(holder);
}

/// A pid with no /proc entry now, counting down from pid_max - 2.
fn free_pid() -> i32 {
    let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    (300..max - 1).rev().find(|&n| !pid_exists(n)).expect("no free pid")
}

#[test]
fn killed_while_reading() {
    let Some(mut t) = TestEnv::new("reader_killed") else { return };
    dump_bigmem(&mut t);
    t.dump_ok(&[]);
    t.reap_victim();
    let tid = free_pid();
    t.rcr_env.push(("RCR_TEST_READER_TID".into(), tid.to_string()));
    let images = t.images.to_string_lossy().into_owned();
    let mut rcr = t.spawn_rcr("restore", &["restore", "-D", &images]);
    let task = format!("/proc/{}/task/{tid}", t.pid);
    let start = std::time::Instant::now();
    while !std::path::Path::new(&task).exists() {
        assert!(rcr.try_wait().expect("try_wait").is_none(), "rcr restore ended before the page reader {tid} was seen");
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "no page reader {tid} after 20 s");
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    // SAFETY: kill(2) of the restored process the test started (by PID).
    unsafe { libc::kill(t.pid, libc::SIGKILL) };
    let st = wait_child(&mut rcr, "rcr restore to fail");
    assert!(!st.success(), "rcr restore succeeded although pid {} was killed while reading", t.pid);
    wait_until(&format!("pid {} and reader {tid} to be gone", t.pid), || (!pid_exists(t.pid) && !pid_exists(tid)).then_some(()));
}
