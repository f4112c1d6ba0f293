//! Unix domain sockets survive `rcr dump` / `rcr restore` and `rcr dump -R`;
//! sockets rcr cannot carry are refused at dump, naming them, with the
//! target left running untouched.
//!
//! Victims: tests/victims/unix.c (socketpairs of the three types with data
//! queued, a listener on a path with an accepted and a pending connection,
//! an abstract-name datagram server and client, a socket whose peer closed,
//! a socket shared with a child; its header comment lists what it checks
//! after go) and tests/victims/unix_ext.c (a socket connected to this test
//! process, outside the dumped tree; raw IP, netlink and packet sockets).
//! From outside, the tests compare before the dump and after the restore
//! (or the -R dump) the harness snapshot of each process with socket
//! inodes relabelled in order of first appearance (the same sharing
//! compares equal), and each socket's /proc/net/unix entry (flags, type,
//! state, path).
//!
//! Needs root; without it every test prints a message and passes.
//! Run: `cargo test --release --test unix`.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::time::Duration;

/// /proc/net/unix by inode: "flags type state path".
fn net_unix() -> BTreeMap<String, String> {
    let s = fs::read_to_string("/proc/net/unix").expect("reading /proc/net/unix");
    s.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 7).then(|| (f[6].to_string(), format!("flags={} type={} st={} path={}", f[3], f[4], f[5], f.get(7).unwrap_or(&""))))
        })
        .collect()
}

/// Snapshots of `pids` with socket inodes relabelled, and the
/// /proc/net/unix entry of each label.
fn view(pids: &[i32]) -> (Vec<Snapshot>, BTreeMap<String, String>) {
    let net = net_unix();
    let mut labels: BTreeMap<String, usize> = BTreeMap::new();
    let mut entries = BTreeMap::new();
    let mut snaps = snapshot_group(pids);
    for s in &mut snaps {
        for v in s.attrs.values_mut() {
            if let Some(ino) = v.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                let n = labels.len() + 1;
                let label = *labels.entry(ino.to_string()).or_insert(n);
                entries.insert(format!("socket#{label}"), net.get(ino).cloned().unwrap_or_else(|| "<not in /proc/net/unix>".into()));
                *v = format!("socket:[#{label}]");
            }
        }
    }
    (snaps, entries)
}

fn assert_same_view(before: &(Vec<Snapshot>, BTreeMap<String, String>), after: &(Vec<Snapshot>, BTreeMap<String, String>), what: &str) {
    for (b, a) in before.0.iter().zip(&after.0) {
        assert_same_snapshot(b, a, what);
    }
    assert_eq!(before.1, after.1, "{what}: /proc/net/unix entries differ (left: before)");
}

/// Starts the main victim; returns the env, the child's PID and the
/// listener's path.
fn start(name: &str) -> Option<(TestEnv, i32, String)> {
    let mut t = TestEnv::new(name)?;
    let dir = t.dir.to_string_lossy().into_owned();
    t.spawn_victim("unix", &[&dir], false);
    t.wait_ready();
    let line = t.log_text().lines().find_map(|l| l.strip_prefix("UNIX ").map(str::to_string)).expect("no UNIX line in the victim log");
    let kv: BTreeMap<&str, &str> = line.split_whitespace().filter_map(|w| w.split_once('=')).collect();
    let child: i32 = kv["child"].parse().expect("child pid");
    t.track(&[child]);
    Some((t, child, kv["path"].to_string()))
}

#[test]
fn unix_dump_kill_restore() {
    let Some((mut t, child, path)) = start("unix_restore") else { return };
    let pids = [t.pid, child];
    let before = view(&pids);
    assert!(before.1.values().any(|e| e.contains("flags=00010000") && e.ends_with(&path)), "no listening socket on {path}: {:?}", before.1);
    t.dump_ok(&[]);
    t.reap_victim();
    wait_pids_gone(&[child], "the victim's child, after the dump");
    assert!(fs::symlink_metadata(&path).is_ok(), "the dumped listener's socket file {path} should be left behind (restore replaces it)");
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    assert_same_view(&before, &view(&pids), "after restore");
    t.go_expect_pass();
}

#[test]
fn unix_leave_running() {
    let Some((mut t, child, _)) = start("unix_leave_running") else { return };
    let pids = [t.pid, child];
    let before = view(&pids);
    t.dump_ok(&["-R"]);
    std::thread::sleep(Duration::from_millis(100));
    assert_runs_free(t.pid, "after dump -R");
    assert_same_view(&before, &view(&pids), "after dump -R");
    t.go_expect_original_pass();
}

#[test]
fn unix_external_stream_refused() {
    let Some(mut t) = TestEnv::new("unix_ext_stream") else { return };
    let path = t.path("ext.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    t.spawn_victim("unix_ext", &["stream", &path.to_string_lossy()], false);
    let (mut peer, _) = listener.accept().expect("accept");
    t.wait_ready();
    let me = format!("pid {} fd", std::process::id());
    let victim = format!("pid {} fd 3", t.pid);
    t.assert_dump_refused(&[], &[&victim, "outside the dumped tree", &me]);
    t.assert_dump_refused(&["--ext-unix-sk"], &[&victim, "not even with --ext-unix-sk", &me]);
    t.go("");
    let mut b = [0u8; 8];
    std::io::Read::read_exact(&mut peer, &mut b).expect("reading after-go");
    assert_eq!(&b, b"after-go");
    std::io::Write::write_all(&mut peer, b"ack").expect("ack");
    let st = t.wait_victim_exit();
    t.assert_no_fail();
    assert!(st.success(), "the refused victim exited with {}", describe(st));
}

#[test]
fn unix_external_dgram() {
    let Some(mut t) = TestEnv::new("unix_ext_dgram") else { return };
    let path = t.path("ext.sock");
    let peer = UnixDatagram::bind(&path).expect("bind");
    peer.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    t.spawn_victim("unix_ext", &["dgram", &path.to_string_lossy()], false);
    t.wait_ready();
    let victim = format!("pid {} fd 3", t.pid);
    t.assert_dump_refused(&[], &[&victim, "outside the dumped tree", "--ext-unix-sk", &path.to_string_lossy()]);
    let before = view(&[t.pid]);
    t.dump_ok(&["--ext-unix-sk"]);
    t.reap_victim();
    let images = t.images.to_string_lossy().into_owned();
    let out = t.rcr("restore-no-flag", &["restore", "-D", &images]);
    assert!(!out.status.success() && out.stderr.contains("--ext-unix-sk"), "restore without --ext-unix-sk should fail naming it:\n{}", out.stderr);
    let pid = t.restore(&["--ext-unix-sk"]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    assert_same_view(&before, &view(&[pid]), "after restore");
    t.go("");
    let mut b = [0u8; 16];
    let (n, from) = peer.recv_from(&mut b).expect("receiving after-go from the restored victim");
    assert_eq!(&b[..n], b"after-go");
    let cl = format!("{}-cl", path.to_string_lossy());
    assert_eq!(from.as_pathname().map(|p| p.to_string_lossy().into_owned()), Some(cl.clone()), "the sender's name");
    peer.send_to(b"ack", &cl).expect("ack");
    let st = t.wait_restore_exit();
    t.assert_no_fail();
    assert!(st.success(), "rcr restore exited with {}", describe(st));
    t.assert_log_pass(1);
}

/// Sockets of other families are refused with family and type named.
#[test]
fn other_families_refused() {
    for (mode, want) in [
        ("raw", ["AF_INET SOCK_RAW", "protocol 1"]),
        ("raw6", ["AF_INET6 SOCK_RAW", "raw IP sockets"]),
        ("netlink", ["AF_NETLINK SOCK_RAW", "netlink"]),
        ("packet", ["AF_PACKET SOCK_DGRAM", "packet"]),
    ] {
        let Some(mut t) = TestEnv::new(&format!("unix_refuse_{mode}")) else { return };
        t.spawn_victim("unix_ext", &[mode, "-"], false);
        t.wait_ready();
        let fd = t.log_text().lines().find_map(|l| l.strip_prefix("SOCKET fd=").map(str::to_string)).expect("SOCKET line");
        let what = format!("pid {} fd {fd} (socket:[", t.pid);
        let before = snapshot(t.pid);
        t.assert_dump_refused(&[], &[&what, want[0], want[1]]);
        assert_same_snapshot(&before, &snapshot(t.pid), "after the refused dump");
        t.go("");
        let st = t.wait_victim_exit();
        assert!(st.success(), "{mode}: the refused victim exited with {}", describe(st));
    }
}
