//! Credentials, seccomp filters, scheduling, CPU affinity, resource
//! limits and oom_score_adj survive `rcr dump` / `rcr restore` and a
//! `rcr dump -R`, per thread where Linux keeps them per thread.
//!
//! The victim is tests/victims/creds.c (its header lists what it sets up:
//! two threads with different uids, capabilities, securebits, filters,
//! policies, nice values and affinities). It checks itself after go; from
//! outside these tests compare, for every thread, the credential lines of
//! /proc/PID/task/TID/status (Uid, Gid, Groups, Cap*, NoNewPrivs, Seccomp,
//! Seccomp_filters, Cpus_allowed_list) and the scheduling fields of its
//! stat (nice, rt_priority, policy), and /proc/PID/limits and
//! /proc/PID/oom_score_adj, before and after.
//!
//! A restore whose saved hard limit is above rcr's own (rcr lacks
//! CAP_SYS_RESOURCE here) must fail before creating anything, naming the
//! limit.
//!
//! Needs root; without it every test prints a message and passes.
//! Run: `cargo test --test creds`.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

const STATUS_KEYS: [&str; 12] =
    ["Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters", "Cpus_allowed_list"];

/// What the tests compare: per thread (by its index, the leader first)
/// the status lines and stat fields above; the limits and oom_score_adj.
fn creds_state(pid: i32) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut tids: Vec<i32> =
        fs::read_dir(format!("/proc/{pid}/task")).expect("listing tasks").flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    tids.sort_by_key(|&t| (t != pid, t));
    for (i, tid) in tids.iter().enumerate() {
        let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).expect("task status");
        for key in STATUS_KEYS {
            let v = status.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':'))).unwrap_or("?");
            out.insert(format!("thread{i}.{key}"), v.trim().to_string());
        }
        let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).expect("task stat");
        let rest: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        for (name, n) in [("nice", 19), ("rt_priority", 40), ("policy", 41)] {
            out.insert(format!("thread{i}.{name}"), rest[n - 3].to_string());
        }
    }
    out.insert("limits".into(), fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits"));
    out.insert("oom_score_adj".into(), fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).expect("oom").trim().to_string());
    out
}

fn assert_same_state(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>, what: &str) {
    let diffs: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| format!("{k}: {:?} -> {:?}", before.get(k), after.get(k)))
        .collect();
    assert!(diffs.is_empty(), "{what}: credentials/limits differ:\n{}", diffs.join("\n"));
}

/// Starts the victim, waits for READY and checks from outside it set up
/// what it should (so that a later mismatch is rcr's doing).
fn start(name: &str) -> Option<(TestEnv, BTreeMap<String, String>)> {
    let mut t = TestEnv::new(name)?;
    t.spawn_victim("creds", &[], false);
    t.wait_ready();
    let s = creds_state(t.pid);
    let want = [
        ("thread0.Uid", "1000\t1001\t1002\t1000"),
        ("thread0.Gid", "2000\t2001\t2002\t2000"),
        ("thread0.Groups", "10 20 30"),
        ("thread0.CapAmb", "0000000000000400"),
        ("thread0.NoNewPrivs", "1"),
        ("thread0.Seccomp_filters", "2"),
        ("thread0.nice", "5"),
        ("thread1.Uid", "3000\t3000\t3000\t3000"),
        ("thread1.CapPrm", "0000000000000000"),
        ("thread1.Seccomp", "2"),
        ("thread1.Seccomp_filters", "1"),
        ("thread1.NoNewPrivs", "0"),
        ("thread1.Cpus_allowed_list", "0"),
        ("thread1.nice", "7"),
        ("thread1.policy", "3"),
        ("oom_score_adj", "300"),
    ];
    for (k, v) in want {
        assert_eq!(s.get(k).map(String::as_str), Some(v), "the victim did not set up {k}");
    }
    assert!(s["limits"].lines().any(|l| l.starts_with("Max open files") && l.split_whitespace().skip(3).take(2).eq(["200", "300"])));
    Some((t, s))
}

/// dump (killing the victim), restore: same state from outside, and the
/// victim passes its own checks.
#[test]
fn creds_restore() {
    let Some((mut t, before)) = start("creds_restore") else { return };
    t.dump_kill_restore();
    assert_same_state(&before, &creds_state(t.pid), "after restore");
    assert_runs_free(t.pid, "after restore");
    t.go_expect_pass();
}

/// dump -R: the parasite comes and goes through a thread under seccomp
/// filters with most capabilities dropped; the original keeps everything.
#[test]
fn creds_leave_running() {
    let Some((mut t, before)) = start("creds_leave_running") else { return };
    let snap = snapshot(t.pid);
    t.dump_ok(&["-R"]);
    assert!(t.victim.as_mut().unwrap().try_wait().unwrap().is_none(), "dump -R killed the victim");
    assert_runs_free(t.pid, "after dump -R");
    assert_same_snapshot(&snap, &snapshot(t.pid), "after dump -R (the original)");
    assert_same_state(&before, &creds_state(t.pid), "after dump -R (the original)");
    t.go_expect_original_pass();
}

/// rcr restore run with a hard RLIMIT_NOFILE below the saved one (300):
/// without CAP_SYS_RESOURCE it cannot raise it, so it refuses before
/// forking anything, naming the limit. A restore with enough room then
/// works (nothing was left behind).
#[test]
fn creds_restore_rlimit_above_rcr() {
    let Some((mut t, before)) = start("creds_restore_rlimit_above_rcr") else { return };
    t.dump_ok(&[]);
    t.reap_victim();
    let images = t.images.to_string_lossy().into_owned();
    let err = t.path("restore-lowered.err");
    let mut cmd = Command::new(RCR);
    cmd.args(["restore", "-D", &images, "-d"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(fs::File::create(&err).unwrap());
    // SAFETY: between fork and exec, only setrlimit (async-signal-safe).
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 100, rlim_max: 250 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("starting rcr restore");
    let st = wait_child(&mut child, "rcr restore with a lowered RLIMIT_NOFILE");
    let msg = fs::read_to_string(&err).unwrap_or_default();
    assert!(!st.success(), "rcr restore should refuse a hard RLIMIT_NOFILE of 300 above its own 250; stderr:\n{msg}");
    assert!(msg.contains("RLIMIT_NOFILE") && msg.contains("300") && msg.contains("CAP_SYS_RESOURCE"), "unclear error:\n{msg}");
    assert!(!pid_exists(t.pid), "a refused restore left pid {} behind", t.pid);
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid);
    assert_same_state(&before, &creds_state(pid), "after restore");
    t.go_expect_pass();
}
