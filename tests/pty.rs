//! Pseudo-terminals owned by the tree survive `rcr dump` / `rcr restore`
//! and `rcr dump -R`: both ends, several descriptions, the index, line
//! settings, window size, packet mode, lock, exclusive mode, the
//! controlling terminal of a session and its foreground group. What rcr
//! cannot carry is refused at dump, naming it: a slave whose master is
//! outside the tree, bytes queued in a pty. A restore whose pty index is
//! taken fails naming it.
//!
//! The victim is tests/victims/pty.c (its header lists the tree it sets
//! up and what each process checks after go). From outside, the tests
//! compare before and after: the harness snapshot of each process (fd
//! links /dev/ptmx and /dev/pts/N, flags, offsets) and the tty_nr and
//! tpgid fields of /proc/PID/stat.
//!
//! The tests take one lock: each restores a pty index that must stay free
//! meanwhile (the kernel hands out the lowest free index).
//!
//! Needs root; without it every test prints a message and passes.
//! Run: `cargo test --release --test pty`.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tree the victim made: its processes (P, C, G, D) and the paths of
/// its ptys A (C's terminal), B (locked, no slave), E (D's terminal).
struct Victim {
    pids: [i32; 4],
    a: String,
    b: String,
    e: String,
}

fn start(name: &str) -> Option<(TestEnv, Victim)> {
    let mut t = TestEnv::new(name)?;
    t.spawn_victim("pty", &[], true);
    t.wait_ready();
    let line = t.log_text().lines().find_map(|l| l.strip_prefix("PTY ").map(str::to_string)).expect("no PTY line in the victim log");
    let kv: BTreeMap<&str, &str> = line.split_whitespace().filter_map(|w| w.split_once('=')).collect();
    let (c, g): (i32, i32) = (kv["child"].parse().expect("child pid"), kv["grandchild"].parse().expect("grandchild pid"));
    let d: i32 = kv["d"].parse().expect("d pid");
    t.track(&[c, g, d]);
    let v = Victim { pids: [t.pid, c, g, d], a: kv["a"].to_string(), b: kv["b"].to_string(), e: kv["e"].to_string() };
    Some((t, v))
}

fn index(path: &str) -> u32 {
    path.strip_prefix("/dev/pts/").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{path} is not /dev/pts/N"))
}

/// tty_nr as /proc/PID/stat encodes the device of /dev/pts/`n`.
fn tty_nr(n: u32) -> String {
    let (major, minor) = (136 + n / 256, n % 256);
    ((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)).to_string()
}

/// "tty_nr tpgid" of each process, from /proc/PID/stat.
fn ctty(pids: &[i32]) -> Vec<String> {
    pids.iter().map(|&p| stat_fields(p).get(4..6).map(|f| f.join(" ")).unwrap_or_else(|| format!("<pid {p} gone>"))).collect()
}

fn view(pids: &[i32]) -> (Vec<Snapshot>, Vec<String>) {
    (snapshot_group(pids), ctty(pids))
}

fn assert_same_view(before: &(Vec<Snapshot>, Vec<String>), after: &(Vec<Snapshot>, Vec<String>), what: &str) {
    for (b, a) in before.0.iter().zip(&after.0) {
        assert_same_snapshot(b, a, what);
    }
    assert_eq!(before.1, after.1, "{what}: tty_nr and tpgid of P, C, G, D differ (left: before)");
}

/// Checks the victim set up what we expect, seen from outside.
fn check_setup(v: &Victim) {
    let [_, _, g, d] = v.pids;
    let a = tty_nr(index(&v.a));
    let want = vec!["0 -1".to_string(), format!("{a} {g}"), format!("{a} {g}"), format!("{} {d}", tty_nr(index(&v.e)))];
    assert_eq!(ctty(&v.pids), want, "tty_nr and tpgid of P, C, G, D");
    let d_fds = snapshot(d).attrs;
    assert!(!d_fds.values().any(|v| v.starts_with("/dev/pts")), "D should hold no fd on a pty: {d_fds:?}");
    let snap = snapshot(v.pids[1]);
    assert_eq!(snap.attrs.get("fd   0 target"), Some(&v.a), "C's fd 0");
    assert_eq!(snap.attrs.get("fd   5 target"), Some(&v.a), "C's fd 5");
    assert_eq!(snapshot(v.pids[0]).attrs.get("fd   3 target").map(String::as_str), Some("/dev/ptmx"), "P's fd 3");
}

/// A new pty master, and its index.
fn open_pty() -> (OwnedFd, u32) {
    // SAFETY: posix_openpt returns a new fd (owned here) or -1; TIOCGPTN
    // writes one int to a live local.
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let mut n: libc::c_int = -1;
        assert_eq!(libc::ioctl(fd, libc::TIOCGPTN, &mut n as *mut libc::c_int), 0, "TIOCGPTN");
        (OwnedFd::from_raw_fd(fd), n as u32)
    }
}

/// Opens /dev/ptmx until the kernel hands out pty `want`; returns all
/// the masters opened (holding `want` and the lower free ones).
fn hold_index(want: u32) -> Vec<OwnedFd> {
    let mut held = Vec::new();
    loop {
        let (fd, n) = open_pty();
        held.push(fd);
        assert!(n <= want, "the kernel handed out /dev/pts/{n} before {want}: someone else took it");
        if n == want {
            return held;
        }
    }
}

#[test]
fn pty_dump_kill_restore() {
    let _lock = serial();
    let Some((mut t, v)) = start("pty_restore") else { return };
    check_setup(&v);
    let before = view(&v.pids);
    t.dump_ok(&[]);
    t.reap_victim();
    wait_pids_gone(&v.pids[1..], "C and G, after the dump");
    // The index taken: the restore fails naming it, before forking anything.
    let held = hold_index(index(&v.a));
    let images = t.images.to_string_lossy().into_owned();
    let out = t.rcr("restore-taken", &["restore", "-D", &images]);
    assert!(!out.status.success(), "restore with {} taken should fail", v.a);
    assert!(out.stderr.contains(&format!("{} is in use", v.a)), "the error should say {} is in use:\n{}", v.a, out.stderr);
    assert!(v.pids.iter().all(|&p| !pid_exists(p)), "a failed restore left a process behind");
    drop(held);
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    assert_same_view(&before, &view(&v.pids), "after restore");
    assert!(std::path::Path::new(&v.b).exists(), "the locked pty {} is back", v.b);
    assert!(std::path::Path::new(&v.e).exists(), "pty {} is back", v.e);
    t.go_expect_pass();
}

#[test]
fn pty_leave_running() {
    let _lock = serial();
    let Some((mut t, v)) = start("pty_leave_running") else { return };
    check_setup(&v);
    let before = view(&v.pids);
    t.dump_ok(&["-R"]);
    std::thread::sleep(Duration::from_millis(100));
    for &p in &v.pids {
        assert_runs_free(p, "after dump -R");
    }
    assert_same_view(&before, &view(&v.pids), "after dump -R");
    t.go_expect_original_pass();
}

/// A dump that must fail naming every one of `want`, leaving the victim
/// running untraced; after go it passes.
fn assert_refused(t: &mut TestEnv, want: &[&str]) {
    let before = snapshot(t.pid);
    t.assert_dump_refused(&[], want);
    assert_same_snapshot(&before, &snapshot(t.pid), "after the refused dump");
    t.go("");
    let st = t.wait_victim_exit();
    t.assert_no_fail();
    assert!(st.success(), "the refused victim exited with {}", describe(st));
    t.assert_log_pass(1);
}

#[test]
fn pty_slave_of_outside_master_refused() {
    let _lock = serial();
    let Some(mut t) = TestEnv::new("pty_outside_master") else { return };
    let (master, _) = open_pty();
    let mut name = [0u8; 64];
    // SAFETY: unlockpt and ptsname_r on our own master fd; the buffer is
    // 64 bytes as passed.
    let path = unsafe {
        use std::os::fd::AsRawFd;
        assert_eq!(libc::unlockpt(master.as_raw_fd()), 0, "unlockpt");
        assert_eq!(libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr().cast(), name.len()), 0, "ptsname_r");
        std::ffi::CStr::from_ptr(name.as_ptr().cast()).to_string_lossy().into_owned()
    };
    t.spawn_victim("pty", &["slave", &path], true);
    t.wait_ready();
    let fd3 = format!("pid {} fd 3 ({path})", t.pid);
    assert_refused(&mut t, &[&fd3, "not held in the dumped tree", "-j/--shell-job"]);
    drop(master);
}

#[test]
fn pty_queued_input_refused() {
    let _lock = serial();
    let Some(mut t) = TestEnv::new("pty_queued") else { return };
    t.spawn_victim("pty", &["queued"], true);
    t.wait_ready();
    let fd4 = format!("pid {} fd 4 (/dev/pts/", t.pid);
    assert_refused(&mut t, &[&fd4, "has 3 bytes of input", "queued"]);
}
