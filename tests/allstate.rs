//! One process holding every kind of state rcr carries, at once (the
//! per-kind tests check each in depth): tests/victims/allstate.c lists
//! them and checks each after go. From outside: the harness snapshot
//! (maps, fd targets with pipes and sockets by label, offsets, flags,
//! status fields), the thread count, /proc/PID/timers, limits and
//! oom_score_adj, before and after.
//!
//! Needs root; without it every test prints a message and passes.
//! Run: `cargo test --test allstate`.
mod common;

use common::*;
use std::fs;

fn outside(pid: i32) -> Vec<String> {
    let read = |n: &str| fs::read_to_string(format!("/proc/{pid}/{n}")).unwrap_or_else(|e| format!("<{e}>"));
    vec![
        format!("threads {}", task_ids(pid).len()),
        format!("timers {}", read("timers")),
        format!("limits {}", read("limits")),
        format!("oom_score_adj {}", read("oom_score_adj")),
        format!("groups {:?}", status_field(pid, "Groups")),
        format!("nice {}", stat_fields(pid).get(18).cloned().unwrap_or_default()),
    ]
}

/// The snapshot with socket inodes replaced by labels in fd order (a
/// restore makes new sockets; which fds share one must stay the same).
fn snap(pid: i32) -> Snapshot {
    let mut s = snapshot_group(&[pid]).remove(0);
    let mut labels: std::collections::BTreeMap<String, usize> = Default::default();
    for v in s.attrs.values_mut() {
        if let Some(ino) = v.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
            let n = labels.len() + 1;
            *v = format!("socket:[#{}]", *labels.entry(ino.to_string()).or_insert(n));
        }
    }
    s
}

fn start(t: &mut TestEnv) -> (Vec<Snapshot>, Vec<String>) {
    let dir = t.dir.to_string_lossy().into_owned();
    t.spawn_victim("allstate", &[&dir], false);
    t.wait_ready();
    (vec![snap(t.pid)], outside(t.pid))
}

fn check_same(t: &TestEnv, before: &(Vec<Snapshot>, Vec<String>), what: &str) {
    assert_same_snapshot(&before.0[0], &snap(t.pid), what);
    assert_eq!(before.1, outside(t.pid), "{what}: threads, timers, limits, oom_score_adj, groups, nice");
}

#[test]
fn allstate_restore() {
    let Some(mut t) = TestEnv::new("allstate_restore") else { return };
    let before = start(&mut t);
    t.dump_ok(&[]);
    t.reap_victim();
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    check_same(&t, &before, "after restore");
    t.go_expect_pass();
}

#[test]
fn allstate_leave_running() {
    let Some(mut t) = TestEnv::new("allstate_leave_running") else { return };
    let before = start(&mut t);
    t.dump_ok(&["-R"]);
    check_same(&t, &before, "after dump -R");
    t.go_expect_original_pass();
}
