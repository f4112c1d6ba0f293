//! Faults during a dump: whatever goes wrong, the target runs on as it was,
//! with nothing of the dump inside it, and the image directory holds no
//! set `rcr restore` accepts.
//!
//! - `fail_at_every_point`: RCR_FAULT_FAIL_AT=1, 2, ... (the N-th fault
//!   point returns an error) on `allstate`, until a dump gets through;
//! - `enospc_on_small_tmpfs`: the images on a 64 KiB tmpfs;
//! - `sigterm_and_sigint_mid_dump`: the signal sent while the victim is
//!   traced by rcr;
//! - `signal_storm_mid_dump`: SIGINT every 200 µs from then until rcr
//!   exits, so signals land in the cleanup's blocking calls too;
//! - `sigint_while_waiting_for_parasite`: SIGINT while rcr is blocked in
//!   poll(2) for the parasite's connection (which a test hook delays);
//! - `target_killed_mid_dump`: the victim SIGKILLed while traced;
//! - `thread_appears_mid_dump`: `faulty threads` creates threads without
//!   pause, dumped (-R) ten times;
//! - `late_refusal_in_second_process`: `faulty late`, whose child holds a
//!   socket with an fd in flight: refused after the root was infected;
//! - `sigkill_with_tcp_established`: RCR_FAULT_KILL_AT=1, 2, ... on a
//!   `--tcp-established -R` dump of `inet server`: the watchdog turns
//!   TCP_REPAIR off and deletes the lock table; the connection then
//!   carries both streams to their end.
//!
//! Each time: rcr exits non-zero saying why, the victim's maps, fds and
//! status are as before (harness snapshot), it is not traced, no
//! `rwxs /dev/zero (deleted)` parasite region is left, `rcr restore`
//! refuses the directory, and after go the victim passes its own checks.
//!
//! Needs root (the tmpfs test mounts one under the test's dir in /tmp and
//! unmounts it); without it every test prints a message and passes.
mod common;

use common::*;
use std::fs::{self, File};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(240);

/// Starts rcr with `args` (plus -v -v -o LOG) and extra environment;
/// returns the child and its stderr file.
fn spawn_rcr_env(t: &TestEnv, tag: &str, env: &[(&str, String)], args: &[&str]) -> (Child, PathBuf) {
    let base = t.dir.join(format!("rcr-{tag}"));
    let err = base.with_extension("err");
    let mut cmd = Command::new(RCR);
    cmd.args(args)
        .args(["-v", "-v", "-o"])
        .arg(base.with_extension("log"))
        .env_remove("RCR_FAULT_KILL_AT")
        .env_remove("RCR_FAULT_FAIL_AT")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(File::create(base.with_extension("out")).expect("rcr stdout file"))
        .stderr(File::create(&err).expect("rcr stderr file"));
    prepare(&mut cmd, t.rcr_opts);
    (cmd.spawn().unwrap_or_else(|e| panic!("starting {RCR}: {e}")), err)
}

fn rcr_env(t: &TestEnv, tag: &str, env: &[(&str, String)], args: &[&str]) -> (ExitStatus, String) {
    let (mut child, err) = spawn_rcr_env(t, tag, env, args);
    let st = wait_child(&mut child, &format!("rcr {}", args.join(" ")));
    (st, fs::read_to_string(err).unwrap_or_default())
}

fn dump_args(pid: i32, dir: &Path) -> Vec<String> {
    ["dump", "-t", &pid.to_string(), "-D", &dir.to_string_lossy(), "-R"].map(str::to_string).to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// What the harness snapshot does not cover: threads, timers, limits.
fn outside(pid: i32) -> Vec<String> {
    let read = |n: &str| fs::read_to_string(format!("/proc/{pid}/{n}")).unwrap_or_else(|e| format!("<{e}>"));
    vec![format!("threads {}", task_ids(pid).len()), format!("timers {}", read("timers")), format!("limits {}", read("limits"))]
}

/// The snapshot with socket inodes replaced by labels in fd order.
fn snap(pid: i32) -> (Snapshot, Vec<String>) {
    let mut s = snapshot_group(&[pid]).remove(0);
    let mut labels: std::collections::BTreeMap<String, usize> = Default::default();
    for v in s.attrs.values_mut() {
        if let Some(ino) = v.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
            let n = labels.len() + 1;
            *v = format!("socket:[#{}]", *labels.entry(ino.to_string()).or_insert(n));
        }
    }
    (s, outside(pid))
}

/// A parasite region left in `pid`'s maps, if any.
fn leftover(pid: i32) -> Option<String> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines().find(|l| l.contains(" rwxs ") && l.ends_with("/dev/zero (deleted)")).map(str::to_string)
}

/// The victim after a failed dump: as before, free, nothing left inside.
fn check_untouched(pid: i32, before: &(Snapshot, Vec<String>), what: &str) {
    std::thread::sleep(Duration::from_millis(20));
    assert_runs_free(pid, what);
    assert_eq!(leftover(pid), None, "{what}: a parasite region is left in pid {pid}");
    let now = snap(pid);
    assert_same_snapshot(&before.0, &now.0, what);
    assert_eq!(before.1, now.1, "{what}: threads, timers, limits");
}

/// `rcr restore` of `dir` fails, saying why.
fn assert_restore_refused(t: &TestEnv, dir: &Path, tag: &str, what: &str) {
    let (st, err) = rcr_env(t, tag, &[], &["restore", "-D", &dir.to_string_lossy()]);
    assert!(!st.success(), "{what}: rcr restore accepted the image directory of a failed dump");
    assert!(
        err.contains("incomplete image set: the dump did not finish") || err.contains("not an rcr image set"),
        "{what}: rcr restore should refuse the directory clearly:\n{err}"
    );
}

fn start_allstate(t: &mut TestEnv) -> (Snapshot, Vec<String>) {
    let dir = t.dir.to_string_lossy().into_owned();
    let pid = t.spawn_victim("allstate", &[&dir], false);
    t.wait_ready();
    snap(pid)
}

/// `injected fault at point M (NAME) (RCR_FAULT_FAIL_AT=N)` in rcr's
/// stderr: "M NAME" (M is N, or the first point after it that can fail).
fn point_name(err: &str, n: u32) -> Option<String> {
    let prefix = "injected fault at point ";
    let l = err.lines().find(|l| l.contains(prefix) && l.ends_with(&format!("(RCR_FAULT_FAIL_AT={n})")))?;
    let rest = &l[l.find(prefix)? + prefix.len()..];
    let (m, name) = rest.split_once(" (")?;
    Some(format!("{m} {}", name.rsplit_once(") (")?.0))
}

#[test]
fn fail_at_every_point() {
    let Some(mut t) = TestEnv::new("fail_at_every_point") else { return };
    let before = start_allstate(&mut t);
    let (pid, images) = (t.pid, t.images.clone());
    let started = Instant::now();
    let mut names = Vec::new();
    let mut n = 1u32;
    loop {
        assert!(n <= 500 && started.elapsed() < BOUND, "still failing at point {n} after {:?}; is RCR_FAULT_FAIL_AT ignored?", started.elapsed());
        let (st, err) = rcr_env(&t, &format!("fail-{n}"), &[("RCR_FAULT_FAIL_AT", n.to_string())], &strs(&dump_args(pid, &images)));
        if st.success() {
            assert!(point_name(&err, n).is_none(), "rcr reported an injected fault at {n} but exited 0");
            break;
        }
        assert_eq!(st.code(), Some(1), "RCR_FAULT_FAIL_AT={n}: rcr ended with {}:\n{err}", describe(st));
        let name = point_name(&err, n).unwrap_or_else(|| panic!("RCR_FAULT_FAIL_AT={n}: rcr failed without naming the injected fault:\n{err}"));
        let what = format!("after the dump failed at point {n} ({name})");
        check_untouched(pid, &before, &what);
        assert!(!images.join("inventory.img").exists(), "{what}: inventory.img exists");
        assert_restore_refused(&t, &images, &format!("restore-{n}"), &what);
        names.push(format!("{n:>3} {name}"));
        n += 1;
    }
    eprintln!("{}: {} points failed in turn:\n{}", t.name, names.len(), names.join("\n"));
    assert!(n > 30, "only {} fault points on a dump of allstate; expected more than 30", n - 1);
    for step in ["infecting", "collected", "fds described", "pages written", "cured", "images written", "parasite command done", "images synced"] {
        assert!(names.iter().any(|l| l.contains(step)), "no fault point named {step:?} was passed:\n{}", names.join("\n"));
    }
    check_untouched(pid, &before, "after the complete dump -R");
    // A dump killed while it overwrites that complete set leaves no set.
    let (st, _) = rcr_env(&t, "overwrite", &[("RCR_FAULT_KILL_AT", (n / 2).to_string())], &strs(&dump_args(pid, &images)));
    assert_eq!(st.signal(), Some(libc::SIGKILL), "RCR_FAULT_KILL_AT={}: rcr ended with {}", n / 2, describe(st));
    wait_watchdogs("after a dump over a complete set was killed");
    assert!(images.join("dump-incomplete").exists() && !images.join("inventory.img").exists(), "a killed dump over a complete set left a set that looks complete");
    assert_restore_refused(&t, &images, "restore-overwrite", "after a dump over a complete set was killed");
    check_untouched(pid, &before, "after a dump over a complete set was killed");
    t.go_expect_original_pass();
}

/// Unmounts the tmpfs when the test ends, passing or not.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn enospc_on_small_tmpfs() {
    let Some(mut t) = TestEnv::new("enospc_on_small_tmpfs") else { return };
    let small = t.dir.join("small");
    fs::create_dir_all(&small).expect("mkdir small");
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "rcr-test-enospc"]).arg(&small).status().expect("running mount");
    assert!(st.success(), "mount -t tmpfs failed ({st})");
    let _m = Mount(small.clone());
    let before = start_allstate(&mut t);
    let images = small.join("img");
    let (st, err) = rcr_env(&t, "enospc", &[], &strs(&dump_args(t.pid, &images)));
    assert_eq!(st.code(), Some(1), "a dump onto a full tmpfs ended with {}:\n{err}", describe(st));
    assert!(err.contains("No space left on device"), "the error should say ENOSPC:\n{err}");
    assert!(err.contains(&format!("{}/", images.display())) && err.contains(".img"), "the error should name the image file:\n{err}");
    check_untouched(t.pid, &before, "after the dump failed with ENOSPC");
    let left: Vec<String> = fs::read_dir(&images).expect("listing the image dir").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, vec!["dump-incomplete".to_string()], "rcr should remove its partial files from the full tmpfs");
    assert_restore_refused(&t, &images, "restore-enospc", "after ENOSPC");
    t.go_expect_original_pass();
}

/// Waits until `pid` is traced (rcr is in the middle of its dump); false
/// if `rcr` exited first.
fn wait_traced(pid: i32, rcr: &mut Child) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if status_field(pid, "TracerPid").is_some_and(|v| v != "0") {
            return true;
        }
        if rcr.try_wait().expect("try_wait").is_some() {
            return false;
        }
    }
    panic!("pid {pid} was not traced within 10 s of starting rcr dump");
}

#[test]
fn sigterm_and_sigint_mid_dump() {
    let Some(mut t) = TestEnv::new("sigterm_and_sigint_mid_dump") else { return };
    let before = start_allstate(&mut t);
    let (pid, images) = (t.pid, t.images.clone());
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let mut hit = false;
        for attempt in 0..20 {
            let (mut child, err) = spawn_rcr_env(&t, &format!("{name}-{attempt}"), &[], &strs(&dump_args(pid, &images)));
            if !wait_traced(pid, &mut child) {
                let _ = wait_child(&mut child, "rcr dump");
                continue;
            }
            // SAFETY: kill(2) on our own rcr child, by PID.
            unsafe { libc::kill(child.id() as i32, sig) };
            let st = wait_child(&mut child, "rcr dump after the signal");
            let err = fs::read_to_string(err).unwrap_or_default();
            if st.success() {
                continue; // the signal came after the last point: a complete dump
            }
            let what = format!("after {name} to rcr mid-dump (attempt {attempt})");
            assert_eq!(st.code(), Some(1), "{what}: rcr ended with {} (signal {:?}):\n{err}", describe(st), st.signal());
            assert!(err.contains(&format!("interrupted by {name}")), "{what}: rcr should say it was interrupted:\n{err}");
            check_untouched(pid, &before, &what);
            assert_restore_refused(&t, &images, &format!("restore-{name}"), &what);
            hit = true;
            break;
        }
        assert!(hit, "{name} never landed in the middle of a dump in 20 attempts");
    }
    t.go_expect_original_pass();
}

/// SIGINT to rcr every 200 µs from the moment it traces the victim until it
/// exits: whatever blocking call each signal lands in (waitpid, poll,
/// recvmsg, splice, the cleanup's own remote syscalls) must either carry on
/// or end in the same clean "interrupted" failure.
#[test]
fn signal_storm_mid_dump() {
    let Some(mut t) = TestEnv::new("signal_storm_mid_dump") else { return };
    let before = start_allstate(&mut t);
    let (pid, images) = (t.pid, t.images.clone());
    let mut hits = 0;
    for attempt in 0..8 {
        let (mut child, err) = spawn_rcr_env(&t, &format!("storm-{attempt}"), &[], &strs(&dump_args(pid, &images)));
        if !wait_traced(pid, &mut child) {
            let _ = wait_child(&mut child, "rcr dump");
            continue;
        }
        let (t0, mut sent) = (Instant::now(), 0u32);
        let st = loop {
            if let Some(st) = child.try_wait().expect("try_wait on rcr") {
                break st;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "rcr dump did not end within 60 s of a SIGINT storm ({sent} sent)");
            // SAFETY: kill(2) on our own rcr child, by PID; not yet reaped (try_wait above).
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            sent += 1;
            std::thread::sleep(Duration::from_micros(200));
        };
        let err = fs::read_to_string(err).unwrap_or_default();
        let what = format!("after {sent} SIGINTs to rcr mid-dump (attempt {attempt})");
        if st.success() {
            continue; // every signal came after the last point
        }
        assert_eq!(st.code(), Some(1), "{what}: rcr ended with {} (signal {:?}):\n{err}", describe(st), st.signal());
        assert!(err.contains("interrupted by SIGINT"), "{what}: rcr should say it was interrupted:\n{err}");
        check_untouched(pid, &before, &what);
        assert_restore_refused(&t, &images, &format!("restore-storm-{attempt}"), &what);
        hits += 1;
    }
    assert!(hits >= 4, "a SIGINT storm ended only {hits} of 8 dumps as interrupted");
    t.go_expect_original_pass();
}

/// The number of the syscall `pid` is blocked in, from /proc/PID/syscall.
fn blocked_in(pid: u32) -> Option<i64> {
    fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?.split_whitespace().next()?.parse().ok()
}

/// SIGINT lands while rcr waits in poll(2) for the parasite to connect
/// (EINTR even under SA_RESTART): the dump must end as interrupted, not
/// as a connect timeout. RCR_TEST_CONNECT_DELAY_MS makes the parasite
/// sleep 3 s before it connects, so the wait is certain to be seen.
#[test]
fn sigint_while_waiting_for_parasite() {
    let Some(mut t) = TestEnv::new("sigint_while_waiting_for_parasite") else { return };
    let before = start_allstate(&mut t);
    let (pid, images) = (t.pid, t.images.clone());
    let env = [("RCR_TEST_CONNECT_DELAY_MS", "3000".to_string())];
    let (mut child, err) = spawn_rcr_env(&t, "connect", &env, &strs(&dump_args(pid, &images)));
    let t0 = Instant::now();
    while blocked_in(child.id()) != Some(libc::SYS_poll) {
        assert!(child.try_wait().expect("try_wait on rcr").is_none(), "rcr dump ended before it waited for the parasite");
        assert!(t0.elapsed() < Duration::from_secs(20), "rcr was not seen waiting in poll(2) within 20 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    let log = fs::read_to_string(t.dir.join("rcr-connect.log")).unwrap_or_default();
    assert!(!log.contains("connected from tid"), "the parasite connected despite its 3 s delay:\n{log}");
    // SAFETY: kill(2) on our own rcr child, by PID; not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = wait_child(&mut child, "rcr dump after SIGINT in the connect wait");
    let err = fs::read_to_string(err).unwrap_or_default();
    let what = "after SIGINT to rcr waiting for the parasite";
    assert_eq!(st.code(), Some(1), "{what}: rcr ended with {}:\n{err}", describe(st));
    assert!(err.contains("interrupted by SIGINT"), "{what}: rcr should say it was interrupted:\n{err}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{what}: rcr took {:?}, as if it waited out the connect timeout", t0.elapsed());
    check_untouched(pid, &before, what);
    assert_restore_refused(&t, &images, "restore-connect", what);
    t.go_expect_original_pass();
}

#[test]
fn target_killed_mid_dump() {
    let Some(mut t) = TestEnv::new("target_killed_mid_dump") else { return };
    for attempt in 0..10 {
        let dir = t.dir.to_string_lossy().into_owned();
        let pid = t.spawn_victim("allstate", &[&dir], false);
        t.wait_ready();
        let images = t.dir.join(format!("img-{attempt}"));
        let (mut child, err) = spawn_rcr_env(&t, &format!("killed-{attempt}"), &[], &strs(&dump_args(pid, &images)));
        let traced = wait_traced(pid, &mut child);
        // SAFETY: kill(2) on our own victim, by PID (still our unreaped child).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let st = wait_child(&mut child, "rcr dump of a victim killed mid-dump");
        let v = t.wait_victim_exit();
        assert_eq!(v.signal(), Some(libc::SIGKILL), "the victim ended with {}", describe(v));
        let err = fs::read_to_string(err).unwrap_or_default();
        if !traced || st.success() {
            continue;
        }
        assert_eq!(st.code(), Some(1), "rcr ended with {}:\n{err}", describe(st));
        assert!(err.contains(&pid.to_string()), "the error should name pid {pid}:\n{err}");
        assert_restore_refused(&t, &images, "restore-killed", "after the target was killed mid-dump");
        return;
    }
    panic!("the victim was never killed in the middle of a dump in 10 attempts");
}

#[test]
fn thread_appears_mid_dump() {
    let Some(mut t) = TestEnv::new("thread_appears_mid_dump") else { return };
    let pid = t.spawn_victim("faulty", &["threads"], false);
    t.wait_ready();
    let (mut ok, mut failed) = (0, Vec::new());
    for i in 0..10 {
        let images = t.dir.join(format!("img-{i}"));
        let (st, err) = rcr_env(&t, &format!("threads-{i}"), &[], &strs(&dump_args(pid, &images)));
        let what = format!("after dump -R {i} of a victim creating threads ({})", describe(st));
        std::thread::sleep(Duration::from_millis(20));
        assert_runs_free(pid, &what);
        assert_eq!(leftover(pid), None, "{what}: a parasite region is left in pid {pid}");
        if st.success() {
            ok += 1;
        } else {
            assert_eq!(st.code(), Some(1), "{what}:\n{err}");
            assert_restore_refused(&t, &images, &format!("restore-{i}"), &what);
            failed.push(err.lines().last().unwrap_or("").to_string());
        }
    }
    eprintln!("{}: {ok} dumps complete, {} failed cleanly: {failed:?}", t.name, failed.len());
    t.go_expect_original_pass();
}

#[test]
fn late_refusal_in_second_process() {
    let Some(mut t) = TestEnv::new("late_refusal_in_second_process") else { return };
    let root = t.spawn_victim("faulty", &["late"], false);
    t.wait_ready();
    let child: i32 = t.log_text().lines().find_map(|l| l.strip_prefix("CHILD ")?.trim().parse().ok()).expect("CHILD line");
    t.track(&[child]);
    let before = [snap(root), snap(child)];
    let images = t.images.clone();
    let args = ["dump", "-t", &root.to_string(), "-D", &images.to_string_lossy()].map(str::to_string);
    let (st, err) = rcr_env(&t, "late", &[], &strs(&args));
    assert_eq!(st.code(), Some(1), "a dump of a tree with a refused fd ended with {}:\n{err}", describe(st));
    assert!(err.contains(&format!("pid {child} fd 1")), "the error should name the child's fd:\n{err}");
    let log = fs::read_to_string(t.dir.join("rcr-late.log")).unwrap_or_default();
    assert!(log.contains(&format!("pid {root}: parasite cured")), "the root should have been dumped before the refusal:\n{log}");
    for (p, b) in [root, child].into_iter().zip(&before) {
        check_untouched(p, b, &format!("pid {p} after the late refusal"));
    }
    assert_restore_refused(&t, &images, "restore-late", "after the late refusal");
    t.go_expect_original_pass();
}

/// The network lock tables of rcr process `rcr` (`inet rcr-PID-MS`).
fn tables_of(rcr: u32) -> Vec<String> {
    let out = Command::new("nft").args(["list", "tables"]).output().expect("running nft list tables");
    let want = format!("rcr-{rcr}-");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&want)).map(|l| l.trim().to_string()).collect()
}

/// rcr is killed at every fault point of a `--tcp-established -R` dump of
/// a server with a connection to this test: each time the watchdog turns
/// TCP_REPAIR off and deletes the network lock table; in the end the
/// connection carries both streams to their end (a socket left in repair
/// mode or a lock left in place would stall it) and the server passes.
#[test]
fn sigkill_with_tcp_established() {
    use std::io::{Read, Write};
    let Some(mut t) = TestEnv::new("sigkill_with_tcp_established") else { return };
    if Command::new("nft").arg("--version").output().map_or(true, |o| !o.status.success()) {
        eprintln!("skipping {}: no nft", t.name);
        return;
    }
    let pid = t.spawn_victim("inet", &["server", "v4"], false);
    t.wait_log("PORT", |l| l.starts_with("PORT "));
    let port: u16 = t.log_text().lines().find_map(|l| l.strip_prefix("PORT ")?.trim().parse().ok()).expect("PORT line");
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting to the server");
    t.wait_ready();
    const SENT: usize = 100_000;
    let out: Vec<u8> = (0..SENT).map(|i| (i % 251) as u8).collect();
    client.write_all(&out).expect("client write");
    let started = Instant::now();
    let (mut repaired, mut unlocked) = (0, 0);
    let mut n = 1u32;
    loop {
        assert!(n <= 500 && started.elapsed() < BOUND, "rcr still killed at point {n}");
        let images = t.dir.join(format!("img-{n}"));
        let mut args = dump_args(pid, &images);
        args.push("--tcp-established".into());
        let (mut child, err) = spawn_rcr_env(&t, &format!("tcp-{n}"), &[("RCR_FAULT_KILL_AT", n.to_string())], &strs(&args));
        let rcr = child.id();
        let st = wait_child(&mut child, "rcr dump --tcp-established");
        let what = format!("after rcr was killed at point {n} of a --tcp-established dump");
        wait_watchdogs(&what);
        if st.success() {
            break;
        }
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{what}: rcr ended with {}", describe(st));
        let err = fs::read_to_string(err).unwrap_or_default();
        repaired += err.matches("TCP_REPAIR turned off").count();
        unlocked += usize::from(fs::read_to_string(t.dir.join(format!("rcr-tcp-{n}.log"))).unwrap_or_default().contains("network lock table"));
        assert!(!err.contains("error: watchdog"), "{what}: the watchdog failed:\n{err}");
        assert_eq!(tables_of(rcr), Vec::<String>::new(), "{what}: the network lock table is left");
        assert_runs_free(pid, &what);
        assert_eq!(leftover(pid), None, "{what}: a parasite region is left in pid {pid}");
        n += 1;
    }
    eprintln!("{}: {} kills; the watchdog turned TCP_REPAIR off {repaired} times; a lock existed in {unlocked} runs", t.name, n - 1);
    assert!(repaired > 0 && unlocked > 0, "no kill happened while a socket was in repair mode under a lock");
    t.go("");
    client.shutdown(std::net::Shutdown::Write).expect("client shutdown");
    client.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let mut got = Vec::new();
    client.read_to_end(&mut got).expect("reading the server's stream to its end");
    if let Some(i) = got.iter().enumerate().position(|(i, &b)| b != (i % 251) as u8) {
        panic!("byte {i} of the server's stream is {}", got[i]);
    }
    let st = t.wait_victim_exit();
    t.assert_no_fail();
    assert!(st.success(), "the server exited with {}", describe(st));
    assert!(t.log_text().lines().any(|l| l == format!("GOT {SENT} SENT {}", got.len())), "the server should have read {SENT} bytes and sent {}", got.len());
}
