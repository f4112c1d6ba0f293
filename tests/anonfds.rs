//! Anonymous-inode files (eventfd, signalfd, timerfd, epoll, inotify):
//! dump + kill + restore, dump -R, and the refusals (inotify events queued
//! unread; an epoll registration whose fd number no longer holds its file).
//! The victim (tests/victims/anonfds.c) checks itself; these tests also
//! compare the fdinfo lines that must not change from outside.
mod common;

use common::*;
use std::time::Duration;

/// The victim's fds 20..=31 (see anonfds.c).
const FDS: std::ops::RangeInclusive<i32> = 20..=31;

/// The fdinfo lines of the victim's anonymous fds that dump/restore keep,
/// by fd, sorted; epoll lines without the target's ino and sdev.
fn stable_fdinfo(pid: i32) -> Vec<(i32, Vec<String>)> {
    const KEEP: &[&str] = &["flags:", "eventfd-count:", "eventfd-semaphore:", "sigmask:", "clockid:", "settime flags:", "it_interval:", "inotify "];
    FDS.map(|fd| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_else(|e| panic!("fdinfo {fd} of pid {pid}: {e}"));
        let mut lines: Vec<String> = text
            .lines()
            .filter_map(|l| {
                if l.starts_with("tfd:") {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    return Some(format!("tfd {} events {} data {}", w[1], w[3], w[5]));
                }
                KEEP.iter().any(|k| l.starts_with(k)).then(|| l.to_string())
            })
            .collect();
        lines.sort();
        (fd, lines)
    })
    .collect()
}

/// A fdinfo line of `fd` of `pid` starting with `key`.
fn fdinfo_line(pid: i32, fd: i32, key: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
    text.lines().find(|l| l.starts_with(key)).unwrap_or("").to_string()
}

/// What we compare from outside: the snapshot (pipes labelled) and the
/// stable fdinfo lines.
fn outside(pid: i32) -> (Vec<Snapshot>, Vec<(i32, Vec<String>)>) {
    (snapshot_group(&[pid]), stable_fdinfo(pid))
}

fn assert_same_outside(before: &(Vec<Snapshot>, Vec<(i32, Vec<String>)>), pid: i32, what: &str) {
    let after = outside(pid);
    assert_same_snapshot(&before.0[0], &after.0[0], what);
    for ((fd, b), (_, a)) in before.1.iter().zip(&after.1) {
        assert_eq!(b, a, "{what}: fdinfo of fd {fd} (stable lines)");
    }
    // TFD2 (fd 24) fired once and was not read: its tick must be there.
    assert_eq!(fdinfo_line(pid, 24, "ticks:"), "ticks: 1", "{what}: the unread expiration of the one-shot timerfd (fd 24)");
}

fn start(name: &str, mode: &[&str]) -> Option<TestEnv> {
    let mut t = TestEnv::new(name)?;
    t.spawn_victim("anonfds", mode, false);
    t.wait_ready();
    Some(t)
}

/// Every kind, dumped (killing the victim) and restored: same fdinfo from
/// outside, and the victim sees counters, timers, registrations and
/// watches as they were, and new events reported.
#[test]
fn anonfds_restore() {
    let Some(mut t) = start("anonfds_restore", &[]) else { return };
    let before = outside(t.pid);
    t.dump_ok(&[]);
    t.reap_victim();
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    assert_same_outside(&before, pid, "after restore");
    t.go_expect_pass();
}

/// dump -R: the original keeps all its state (timer ticks, epoll
/// registrations, inotify watches and wds) and passes.
#[test]
fn anonfds_leave_running() {
    let Some(mut t) = start("anonfds_leave_running", &[]) else { return };
    let before = outside(t.pid);
    t.dump_ok(&["-R"]);
    std::thread::sleep(Duration::from_millis(100));
    assert_runs_free(t.pid, "after dump -R");
    assert_same_outside(&before, t.pid, "after dump -R (the original)");
    t.go_expect_original_pass();
}

/// An epoll shared by a parent and its child, with a registration only the
/// child holds at its fd number (the parent closed it): the child makes it
/// again, and the parent sees it report.
#[test]
fn anonfds_restore_shared_epoll() {
    let Some(mut t) = start("anonfds_restore_shared_epoll", &["shared"]) else { return };
    let child = wait_until("the victim's child", || {
        let c = std::fs::read_to_string(format!("/proc/{}/task/{}/children", t.pid, t.pid)).ok()?;
        c.split_whitespace().next()?.parse::<i32>().ok()
    });
    t.track(&[child]);
    let before = outside(t.pid);
    t.dump_ok(&[]);
    t.reap_victim();
    wait_pids_gone(&[child], "the dumped child");
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    assert!(pid_exists(child), "the child {child} was not restored");
    assert_same_outside(&before, pid, "after restore");
    t.go_expect_pass();
}

/// A refused dump: the error names `culprit`, and the victim runs on as it
/// was and passes.
fn refused(name: &str, mode: &str, culprit: &[&str]) {
    let Some(mut t) = start(name, &[mode]) else { return };
    let before = outside(t.pid);
    let out = t.dump(&[]);
    assert!(!out.status.success(), "rcr dump of anonfds in mode {mode} succeeded");
    assert!(culprit.iter().all(|c| out.stderr.contains(c)), "rcr dump's error should contain {culprit:?}; stderr:\n{}", out.stderr);
    assert!(!t.images.join("inventory.img").exists(), "a refused dump left inventory.img behind");
    std::thread::sleep(Duration::from_millis(100));
    assert_runs_free(t.pid, "after the refused dump");
    assert_same_snapshot(&before.0[0], &snapshot_group(&[t.pid])[0], "after the refused dump");
    t.go_expect_original_pass();
}

/// Events queued on an inotify instance cannot be read without consuming
/// them: the dump is refused, naming the fd.
#[test]
fn anonfds_refuse_inotify_queue() {
    refused("anonfds_refuse_inotify_queue", "queued", &["fd 31", "queued unread"]);
}

/// An epoll registration made at fd 40 whose file was then moved to fd 41:
/// no process holds it at fd 40, so it cannot be registered again.
#[test]
fn anonfds_refuse_moved_epoll_target() {
    refused("anonfds_refuse_moved_epoll_target", "moved", &["fd 27", "watches fd 40"]);
}
