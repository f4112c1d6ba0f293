//! Open file descriptions shared between fds and between processes stay
//! shared after `rcr dump` / `rcr restore` (and after `dump -R`), with
//! their offsets and flags; regular files resized since the dump are
//! refused at restore.
//!
//! The victim is tests/victims/sharedfd.c (its header lists the set-up and
//! the checks it makes after go). From outside, these tests compare each
//! process's fd targets (pipes by label), offsets and flags (the harness
//! snapshot_group), and which
//! fds share a description, with kcmp(2) KCMP_FILE across both processes.
//!
//! Needs root; without it every test prints a message and passes.
//! Run: `cargo test --test files`.
mod common;

use common::*;
use std::fs;

/// The fds the victim sets up, in both processes.
const FDS: [i32; 10] = [50, 51, 52, 53, 54, 55, 56, 57, 58, 59];

/// kcmp(2) KCMP_FILE: Some(true) if the two fds are one description.
fn same_file(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> Option<bool> {
    // SAFETY: kcmp compares kernel objects and touches no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, 0, fd1, fd2) };
    (r >= 0).then_some(r == 0)
}

/// Which (process, fd) pairs share a description, as "P:fd=Q:fd" lines,
/// with each PID replaced by its role (parent, child).
fn sharing(pids: &[i32; 2]) -> Vec<String> {
    let all: Vec<(usize, i32)> = (0..2).flat_map(|i| FDS.iter().map(move |&fd| (i, fd))).collect();
    let mut out = Vec::new();
    for (n, &(i, a)) in all.iter().enumerate() {
        for &(j, b) in &all[n + 1..] {
            if same_file(pids[i], a, pids[j], b) == Some(true) {
                out.push(format!("{}:{a}={}:{b}", ["parent", "child"][i], ["parent", "child"][j]));
            }
        }
    }
    out
}

fn child_pid(t: &mut TestEnv) -> i32 {
    let line = t.log_text().lines().find_map(|l| l.strip_prefix("child ").map(str::to_string)).expect("no `child PID` line in the victim log");
    let pid = line.trim().parse().expect("child pid");
    t.track(&[pid]);
    pid
}

fn start(t: &mut TestEnv) -> ([i32; 2], Vec<Snapshot>, Vec<String>) {
    let dir = t.dir.to_string_lossy().into_owned();
    t.spawn_victim("sharedfd", &[&dir], false);
    t.wait_ready();
    let pids = [t.pid, child_pid(t)];
    let share = sharing(&pids);
    for want in ["parent:50=parent:51", "parent:50=child:50", "parent:56=child:56"] {
        assert!(share.contains(&want.to_string()), "before the dump, {want} is not one description: {share:?}");
    }
    assert!(!share.iter().any(|s| s.contains("child:52")), "child fd 52 should be a description of its own: {share:?}");
    (pids, snapshot_group(&pids), share)
}

fn check_same(pids: &[i32; 2], before: &[Snapshot], share: &[String], what: &str) {
    for ((p, b), a) in pids.iter().zip(before).zip(snapshot_group(pids)) {
        assert_same_snapshot(b, &a, &format!("{what}: pid {p}"));
    }
    assert_eq!(sharing(pids), share, "{what}: which fds share a description");
}

#[test]
fn shared_descriptions_restore() {
    let Some(mut t) = TestEnv::new("shared_descriptions_restore") else { return };
    let (pids, before, share) = start(&mut t);
    t.dump_ok(&[]);
    t.reap_victim();
    wait_pids_gone(&pids, "the dumped tree");
    let pid = t.restore(&[]);
    assert_eq!(pid, pids[0], "restored with a different PID");
    check_same(&pids, &before, &share, "after restore");
    t.go_expect_pass();
}

#[test]
fn shared_descriptions_leave_running() {
    let Some(mut t) = TestEnv::new("shared_descriptions_leave_running") else { return };
    let (pids, before, share) = start(&mut t);
    t.dump_ok(&["-R"]);
    check_same(&pids, &before, &share, "after dump -R");
    t.go_expect_original_pass();
}

/// A file that grew since the dump (held without O_APPEND) is refused by
/// name, before any process is created.
#[test]
fn refused_restore_resized_file() {
    let Some(mut t) = TestEnv::new("refused_restore_resized_file") else { return };
    let (pids, _, _) = start(&mut t);
    t.dump_ok(&[]);
    t.reap_victim();
    wait_pids_gone(&pids, "the dumped tree");
    let data = t.path("shared.dat");
    let mut content = fs::read(&data).unwrap();
    content.push(b'!');
    fs::write(&data, content).unwrap(); // same inode, one byte longer
    let images = t.images.to_string_lossy().into_owned();
    let out = t.rcr("restore-resized", &["restore", "-D", &images]);
    assert!(!out.status.success(), "restore with a resized file succeeded");
    assert!(out.stderr.contains("shared.dat") && out.stderr.contains("resized"), "stderr does not name the file: {}", out.stderr);
    for p in pids {
        assert!(!pid_exists(p), "a process with pid {p} exists after the refused restore");
    }
}
