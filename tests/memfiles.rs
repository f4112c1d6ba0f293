//! Files without a path to reopen survive `rcr dump` / `rcr restore` and
//! `rcr dump -R`: memfds (content, seals, offsets, shared descriptions,
//! shared and private mappings, shared by two processes), deleted files
//! still open (ghosts) and FIFOs. And what rcr must refuse at dump time,
//! leaving the target running: io_uring, pidfd, a POSIX message queue,
//! SysV shared memory and message queues, a deleted file above
//! --ghost-limit. (A lone /dev/ptmx is carried now: tests/pty.rs.)
//!
//! The victim is tests/victims/memfiles.c (its header lists what each
//! mode sets up and checks after go). From outside, the tests compare
//! /proc/PID/fd links, fdinfo pos and flags, and /proc/PID/maps (with the
//! inode numbers of memfds and deleted files replaced by labels: the
//! restore recreates them) before and after.
//!
//! Needs root; without it every test prints a message and passes.
//! Run: `cargo test --test memfiles`.
mod common;

use common::*;
use std::time::Duration;

/// Starts the memfiles victim in `mode` (with the test dir as DIR), waits
/// for READY; returns the env and the PIDs of its processes.
fn start(name: &str, mode: &str) -> Option<(TestEnv, Vec<i32>)> {
    let mut t = TestEnv::new(name)?;
    let dir = t.dir.to_string_lossy().into_owned();
    t.spawn_victim("memfiles", &[mode, &dir], false);
    t.wait_ready();
    let mut pids = vec![t.pid];
    let child = t.log_text().lines().find_map(|l| l.strip_prefix("child ").and_then(|p| p.parse::<i32>().ok()));
    if let Some(c) = child {
        pids.push(c);
        t.track(&[c]);
    }
    Some((t, pids))
}

fn assert_same_group(before: &[Snapshot], after: &[Snapshot], what: &str) {
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(after) {
        assert_same_snapshot(b, a, what);
    }
}

/// Dump (killing the tree), restore, compare from outside, go, PASS.
fn dump_restore(name: &str, mode: &str, check: impl Fn(&TestEnv, &[i32])) {
    let Some((mut t, pids)) = start(name, mode) else { return };
    check(&t, &pids);
    let before = snapshot_group(&pids);
    t.dump_ok(&[]);
    t.reap_victim();
    wait_pids_gone(&pids, "the dumped tree");
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    assert_same_group(&before, &snapshot_group(&pids), "after restore");
    check(&t, &pids);
    t.go_expect_pass();
}

/// Dump -R, compare from outside, go: the original carries on and passes.
fn leave_running(name: &str, mode: &str) {
    let Some((mut t, pids)) = start(name, mode) else { return };
    let before = snapshot_group(&pids);
    t.dump_ok(&["-R"]);
    std::thread::sleep(Duration::from_millis(100));
    assert_same_group(&before, &snapshot_group(&pids), "after dump -R");
    t.go("");
    let st = t.wait_victim_exit();
    assert!(st.success(), "the victim exited with {} after dump -R", describe(st));
    t.assert_log_pass(1);
}

fn fd_link(pid: i32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

#[test]
fn memfd_restore() {
    dump_restore("memfd_restore", "memfd", |_, pids| {
        assert_eq!(fd_link(pids[0], 10), "/memfd:rcr A (deleted)");
        assert_eq!(fd_link(pids[0], 13), "/memfd:rcr C (deleted)");
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", pids[1])).unwrap_or_default();
        assert!(maps.lines().any(|l| l.contains(" rw-s ") && l.ends_with("/memfd:rcr B (deleted)")), "the child lost memfd B's mapping:\n{maps}");
    });
}

#[test]
fn memfd_leave_running() {
    leave_running("memfd_leave_running", "memfd");
}

#[test]
fn memfd_images_show() {
    let Some((mut t, _)) = start("memfd_images_show", "memfd") else { return };
    t.dump_ok(&["-R"]);
    let images = t.images.to_string_lossy().into_owned();
    let out = t.rcr("show", &["show", "-D", &images]);
    assert!(out.status.success(), "rcr show failed:\n{}", out.stderr);
    for want in ["memfiles.img", "MEM_FILE_MEMFD", "\"rcr A\"", "\"rcr B\"", "seals 0x6"] {
        assert!(out.stdout.contains(want), "rcr show should print {want:?}:\n{}", out.stdout);
    }
    // The 2 MiB memfd A is sparse: only its 15000 bytes of data are saved.
    let size = std::fs::metadata(t.images.join("memfiles.img")).map(|m| m.len()).unwrap_or(0);
    assert!(size < 200 * 1024, "memfiles.img is {size} bytes: the holes were saved");
    t.go("");
    assert!(t.wait_victim_exit().success());
}

#[test]
fn ghost_restore() {
    dump_restore("ghost_restore", "ghost", |t, pids| {
        let want = format!("{} (deleted)", t.path("ghost").display());
        assert_eq!(fd_link(pids[0], 20), want);
        assert_eq!(fd_link(pids[0], 21), want);
        assert!(!t.path("ghost").exists(), "the ghost file is linked in its directory");
    });
}

#[test]
fn ghost_leave_running() {
    leave_running("ghost_leave_running", "ghost");
}

#[test]
fn fifo_restore() {
    dump_restore("fifo_restore", "fifo", |t, pids| {
        let want = t.path("fifo").to_string_lossy().into_owned();
        for fd in [30, 31, 32] {
            assert_eq!(fd_link(pids[0], fd), want);
        }
    });
}

#[test]
fn fifo_leave_running() {
    leave_running("fifo_leave_running", "fifo");
}

/// The dump of `mode` must fail naming `culprit` (all of `words`), leave
/// no inventory.img and the victim running as it was; after go it passes.
fn refused(name: &str, mode: &str, dump_args: &[&str], words: &[&str]) {
    let Some((mut t, pids)) = start(name, mode) else { return };
    let before = snapshot_group(&pids);
    let out = t.dump(dump_args);
    assert!(!out.status.success(), "rcr dump of memfiles {mode} succeeded");
    for w in words {
        assert!(out.stderr.contains(w), "rcr dump's error should contain {w:?}; stderr:\n{}", out.stderr);
    }
    assert!(!t.images.join("inventory.img").exists(), "a refused dump left inventory.img behind");
    std::thread::sleep(Duration::from_millis(200));
    assert!(t.victim.as_mut().unwrap().try_wait().unwrap().is_none(), "the refused victim died");
    assert_runs_free(t.pid, "after the refused dump");
    assert_same_group(&before, &snapshot_group(&pids), "after the refused dump");
    t.go("");
    let st = t.wait_victim_exit();
    assert!(st.success(), "the refused victim exited with {}", describe(st));
    t.assert_log_pass(1);
}

#[test]
fn refused_io_uring() {
    refused("refused_io_uring", "iouring", &[], &["fd 40", "anon_inode:[io_uring]", "io_uring"]);
}

#[test]
fn refused_pidfd() {
    refused("refused_pidfd", "pidfd", &[], &["fd 40", "pidfd"]);
}

#[test]
fn refused_posix_mq() {
    refused("refused_posix_mq", "mq", &[], &["fd 40", "POSIX message queue"]);
}

#[test]
fn refused_sysv_shm() {
    refused("refused_sysv_shm", "shm", &[], &["/SYSV", "SysV shared memory segment"]);
}

#[test]
fn refused_sysv_msg() {
    refused("refused_sysv_msg", "msg", &[], &["SysV message queue", "lspid"]);
}

#[test]
fn refused_ghost_limit() {
    refused("refused_ghost_limit", "big", &["--ghost-limit", "1048576"], &["fd 40", "/big (deleted)", "3145728 bytes", "--ghost-limit"]);
}
