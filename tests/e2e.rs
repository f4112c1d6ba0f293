//! End-to-end tests: real processes (the C victims in tests/victims/) are
//! dumped with `rcr dump` and brought back with `rcr restore`, zdtm style.
//!
//! Each victim sets up some state, prints READY and polls for a "go" file;
//! the test dumps and restores it meanwhile, checks from outside (same PID,
//! same /proc/PID/maps, fds, cwd, ...), then creates the go file and the
//! victim checks its own state and prints PASS or FAIL.
//!
//! Needs root; without it every test prints a message and passes.
//! Run: `cargo test --test e2e` (RCR_E2E_KEEP=1 keeps failed tests' dirs).
mod common;

use common::*;
use std::fs;
use std::time::Duration;

/// Starts a victim, waits for READY, then does the full dump (kill) +
/// restore + go cycle.
fn full_cycle(name: &str, victim: &str, args: &[&str], setsid: bool) -> Option<TestEnv> {
    let mut t = TestEnv::new(name)?;
    t.spawn_victim(victim, args, setsid);
    t.wait_ready();
    t.dump_kill_restore();
    t.go_expect_pass();
    Some(t)
}

#[test]
fn heap() {
    full_cycle("heap", "heap", &[], false);
}

#[test]
fn sparse() {
    let Some(mut t) = TestEnv::new("sparse") else { return };
    t.spawn_victim("sparse", &[], false);
    t.wait_ready();
    t.dump_kill_restore();
    // 5 touched pages of a 256 MiB mapping: zero/untouched pages must not
    // be stored.
    let pages = t.images.join(format!("pages-{}.img", t.pid));
    let size = fs::metadata(&pages).expect("pages image").len();
    assert!(size < 8 << 20, "{} is {size} bytes; untouched pages seem to be stored", pages.display());
    t.go_expect_pass();
}

#[test]
fn filemap() {
    let Some(mut t) = TestEnv::new("filemap") else { return };
    let dir = t.dir.to_string_lossy().into_owned();
    t.spawn_victim("filemap", &[&dir], false);
    t.wait_ready();
    let file_before = fs::read(t.path("filemap.dat")).expect("filemap.dat");
    t.dump_kill_restore();
    t.go_expect_pass();
    assert!(fs::read(t.path("filemap.dat")).expect("filemap.dat") == file_before, "filemap.dat changed on disk");
}

#[test]
fn regfile() {
    let Some(mut t) = TestEnv::new("regfile") else { return };
    let dir = t.dir.to_string_lossy().into_owned();
    t.spawn_victim("regfile", &[&dir], false);
    t.wait_ready();
    // Offsets and flags of fds 42 and 43 are part of the snapshot compared
    // in dump_kill_restore.
    t.dump_kill_restore();
    t.go_expect_pass();
    let append = fs::read_to_string(t.path("append.log")).unwrap_or_default();
    assert_eq!(append, "before\nafter\n", "append.log content");
}

#[test]
fn fpu() {
    let Some(t) = full_cycle("fpu", "fpu", &[], false) else { return };
    let log = t.log_text();
    eprintln!("fpu victim ran in {}", log.lines().find(|l| l.starts_with("mode ")).unwrap_or("an unknown mode"));
}

/// The AVX path of the fpu victim (ymm only), also on AVX-512 machines.
#[test]
fn fpu_avx() {
    full_cycle("fpu_avx", "fpu", &["avx"], false);
}

/// `dump -R`: the target, cured, carries on with every zmm/ymm byte (the
/// cure returns through a signal frame too).
#[test]
fn fpu_leave_running() {
    let Some(mut t) = TestEnv::new("fpu_leave_running") else { return };
    t.spawn_victim("fpu", &[], false);
    t.wait_ready();
    t.dump_ok(&["-R"]);
    t.go_expect_original_pass();
}

/// The amx victim in `mode`, ready; None (the test says so and passes)
/// where the CPU has no AMX tiles.
fn amx_victim(name: &str, mode: &str) -> Option<TestEnv> {
    let mut t = TestEnv::new(name)?;
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpuinfo.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "amx_tile")) {
        eprintln!("{name}: skipped: this CPU has no AMX tiles");
        return None;
    }
    t.spawn_victim("amx", &[mode], false);
    t.wait_ready();
    Some(t)
}

/// A process that asked for AMX tile data (arch_prctl ARCH_REQ_XCOMP_PERM)
/// keeps that permission across dump and restore: after go it uses the
/// tiles again (without it: SIGILL).
#[test]
fn amx_permission() {
    let Some(mut t) = amx_victim("amx_permission", "perm") else { return };
    t.dump_kill_restore();
    t.go_expect_pass();
}

/// Tile data live in the registers of two threads comes back in each:
/// every thread whose tile data is live gets room for it (the leader in
/// rcr's child, the other thread in the blob) before its rt_sigreturn.
#[test]
fn amx_live_tiles() {
    let Some(mut t) = amx_victim("amx_live_tiles", "live") else { return };
    t.dump_kill_restore();
    t.go_expect_pass();
}

/// `dump -R` of live tiles: the cured target keeps them (its return frame
/// carries the whole area).
#[test]
fn amx_live_tiles_leave_running() {
    let Some(mut t) = amx_victim("amx_live_tiles_leave_running", "live") else { return };
    t.dump_ok(&["-R"]);
    t.go_expect_original_pass();
}

fn counts(log: &str) -> Vec<u64> {
    log.lines().filter_map(|l| l.strip_prefix("count ")).filter_map(|n| n.parse().ok()).collect()
}

#[test]
fn counter() {
    let Some(mut t) = TestEnv::new("counter") else { return };
    t.spawn_victim("counter", &[], false);
    t.wait_ready();
    // Let it count a while, so that a restart from 0 can't go unnoticed.
    t.wait_log("count 30", |l| l.strip_prefix("count ").and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n >= 30));
    let before = snapshot(t.pid);
    t.dump_ok(&[]);
    t.reap_victim();
    let last = *counts(&t.log_text()).last().expect("count lines before the dump");
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    assert_same_snapshot(&before, &snapshot(pid), "after restore");
    // It must go on counting after the restore, from where it was.
    t.wait_log(&format!("a count above {last} (after restore)"), |l| {
        l.strip_prefix("count ").and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n > last)
    });
    t.go(&last.to_string());
    let st = t.wait_restore_exit();
    assert!(st.success(), "rcr restore exited with {}", describe(st));
    t.assert_log_pass(1);
    let c = counts(&t.log_text());
    assert!(c.windows(2).all(|w| w[0] < w[1]), "count lines went backwards: {c:?}");
    assert_eq!(t.log_text().lines().filter(|l| *l == "READY").count(), 1, "the victim started over (READY twice)");
}

#[test]
fn daemon() {
    let Some(mut t) = TestEnv::new("daemon") else { return };
    t.spawn_victim("daemon", &[], true);
    t.wait_ready();
    t.dump_kill_restore();
    // /proc/PID/stat after comm: state ppid pgrp session
    let stat = stat_fields(t.pid);
    let me = t.pid.to_string();
    assert_eq!(
        (stat.get(2), stat.get(3)),
        (Some(&me), Some(&me)),
        "restored daemon should lead its process group and session; stat fields {stat:?}"
    );
    t.go_expect_pass();
}

/// Ignored and blocked signals come back as dumped, not as rcr restore
/// had them (rcr restore runs with other signals ignored here). Includes
/// 32 and 33, which glibc's sigaction() refuses to touch.
#[test]
fn signal_dispositions() {
    let Some(mut t) = TestEnv::new("signal_dispositions") else { return };
    let ignore = sigbit(libc::SIGHUP) | sigbit(libc::SIGPIPE) | sigbit(32);
    let block = sigbit(libc::SIGUSR1) | sigbit(40);
    t.victim_opts = SpawnOpts { ignore, block, ..SpawnOpts::default() };
    t.spawn_victim("heap", &[], false);
    t.wait_ready();
    let want = (Some(format!("{ignore:016x}")), Some(format!("{block:016x}")));
    let got = |pid| (status_field(pid, "SigIgn"), status_field(pid, "SigBlk"));
    assert_eq!(got(t.pid), want, "the victim did not start with the intended (SigIgn, SigBlk)");
    let before = snapshot(t.pid);
    t.dump_ok(&[]);
    t.reap_victim();
    t.rcr_opts = SpawnOpts { ignore: sigbit(libc::SIGUSR2) | sigbit(33), ..SpawnOpts::default() };
    let pid = t.restore(&[]);
    assert_eq!(got(pid), want, "restored (SigIgn, SigBlk) differ from the dumped ones");
    assert_same_snapshot(&before, &snapshot(pid), "after restore");
    t.go_expect_pass();
}

#[test]
fn leave_running() {
    let Some(mut t) = TestEnv::new("leave_running") else { return };
    t.spawn_victim("heap", &[], false);
    t.wait_ready();
    let before = snapshot(t.pid);
    t.dump_ok(&["-R"]);
    assert!(t.victim.as_mut().unwrap().try_wait().unwrap().is_none(), "dump -R killed the victim");
    std::thread::sleep(Duration::from_millis(100));
    assert_runs_free(t.pid, "after dump -R");
    assert_same_snapshot(&before, &snapshot(t.pid), "after dump -R (the original)");
    t.go("");
    let st = t.wait_victim_exit();
    assert!(st.success(), "the original exited with {} after dump -R", describe(st));
    t.assert_log_pass(1);
}

/// The images of a dump -R are restorable once the original has gone.
#[test]
fn restore_after_leave_running() {
    let Some(mut t) = TestEnv::new("restore_after_leave_running") else { return };
    t.spawn_victim("heap", &[], false);
    t.wait_ready();
    let before = snapshot(t.pid);
    t.dump_ok(&["-R"]);
    t.go("");
    let st = t.wait_victim_exit();
    assert!(st.success(), "the original exited with {} after dump -R", describe(st));
    fs::remove_file(&t.go).unwrap();
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    assert_same_snapshot(&before, &snapshot(pid), "after restore");
    t.go("");
    let st = t.wait_restore_exit();
    assert!(st.success(), "rcr restore exited with {}", describe(st));
    t.assert_log_pass(2);
}

#[test]
fn restore_twice() {
    let Some(mut t) = TestEnv::new("restore_twice") else { return };
    t.spawn_victim("heap", &[], false);
    t.wait_ready();
    let before = snapshot(t.pid);
    t.dump_ok(&[]);
    t.reap_victim();
    let images_before = read_dir_contents(&t.images);
    for round in 1..=2 {
        let pid = t.restore(&[]);
        assert_eq!(pid, t.pid, "round {round}: restored with a different PID");
        assert_same_snapshot(&before, &snapshot(pid), &format!("round {round}: after restore"));
        t.go("");
        let st = t.wait_restore_exit();
        assert!(st.success(), "round {round}: rcr restore exited with {}", describe(st));
        t.assert_log_pass(round);
        wait_pid_gone(pid, "the restored process");
        fs::remove_file(&t.go).unwrap();
        assert!(read_dir_contents(&t.images) == images_before, "round {round}: restore modified the image dir");
        assert!(t.images.join("stats-restore.img").exists(), "round {round}: no stats-restore.img");
    }
}

/// Every file of a dir with its content, but stats-restore.img: the one
/// file a restore writes (its own timings, images-format.md 4.11).
fn read_dir_contents(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .flatten()
        .filter(|e| e.file_name() != "stats-restore.img")
        .map(|e| (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap_or_default()))
        .collect();
    v.sort();
    v
}

/// Dumps a victim rcr must refuse: the dump must fail with an error that
/// satisfies `names_culprit` (described by `culprit`), write no
/// inventory.img, and leave the victim running as it was, untraced.
fn refused(name: &str, victim: &str, mode: &str, culprit: &str, names_culprit: impl Fn(&str) -> bool) {
    refused_with(name, victim, mode, &[], culprit, names_culprit)
}

fn refused_with(name: &str, victim: &str, mode: &str, dump_args: &[&str], culprit: &str, names_culprit: impl Fn(&str) -> bool) {
    let Some(mut t) = TestEnv::new(name) else { return };
    t.spawn_victim(victim, &[mode], false);
    t.wait_ready();
    let before = snapshot(t.pid);
    let out = t.dump(dump_args);
    assert!(!out.status.success(), "rcr dump of a {victim} victim in mode {mode} succeeded");
    assert!(names_culprit(&out.stderr), "rcr dump's error should name {culprit}; stderr:\n{}", out.stderr);
    assert!(!t.images.join("inventory.img").exists(), "a refused dump left inventory.img behind (it claims a complete image set)");
    assert!(t.victim.as_mut().unwrap().try_wait().unwrap().is_none(), "the refused victim died");
    std::thread::sleep(Duration::from_millis(200));
    assert_runs_free(t.pid, "after the refused dump");
    assert_same_snapshot(&before, &snapshot(t.pid), "after the refused dump");
    t.go("");
    let st = t.wait_victim_exit();
    assert!(st.success(), "the refused victim exited with {}", describe(st));
    t.assert_log_pass(1);
}

/// badfd holds a pipe on fds 10 and 11.
#[test]
fn refused_dump_leaves_target_running() {
    // The pipe's write end is held by the victim's child, left out by
    // --scope process: the read end (fd 10) cannot be reconnected.
    refused_with("refused_pipe", "badfd", "pipe", &["--scope", "process"], "fd 10 (the pipe's read end)", |e| {
        e.contains("fd 10") && e.contains("outside")
    });
}

#[test]
fn refused_dump_socketpair() {
    // A socketpair whose queued message carries a file descriptor.
    refused("refused_socketpair", "badfd", "socket", "fd 10 (the socket with SCM_RIGHTS queued)", |e| e.contains("fd 10") && e.contains("SCM_RIGHTS"));
}

#[test]
fn refused_dump_pdeathsig() {
    refused("refused_pdeathsig", "unsupported", "pdeathsig", "the parent-death signal (12)", |e| {
        e.contains("parent-death signal") && e.contains("12")
    });
}

#[test]
fn detached_restore() {
    let Some(mut t) = TestEnv::new("detached_restore") else { return };
    t.spawn_victim("heap", &[], false);
    t.wait_ready();
    let before = snapshot(t.pid);
    t.dump_ok(&[]);
    t.reap_victim();
    let pid = t.restore(&["-d"]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    let st = t.wait_restore_exit();
    assert!(st.success(), "rcr restore -d exited with {}", describe(st));
    assert!(pid_exists(pid), "the restored process is gone right after rcr restore -d returned");
    assert_same_snapshot(&before, &snapshot(pid), "after restore -d");
    t.go("");
    // We are a child subreaper, so the detached process is reparented to us
    // and we get its exit status; if not, we only see it disappear.
    if let Some(status) = wait_pid_gone(pid, "the detached restored process") {
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the detached restored process ended with wait status {status:#x}"
        );
    }
    t.assert_log_pass(1);
}

#[test]
fn show_json() {
    let Some(mut t) = TestEnv::new("show_json") else { return };
    t.spawn_victim("heap", &[], false);
    t.wait_ready();
    t.dump_ok(&[]);
    t.reap_victim();
    let images = t.images.to_string_lossy().into_owned();
    let out = t.rcr("show-json", &["show", "-D", &images, "--json"]);
    assert!(out.status.success(), "rcr show --json failed ({}):\n{}", describe(out.status), out.stderr);
    let json = out.stdout.trim_start();
    assert!(json.starts_with('{') || json.starts_with('['), "rcr show --json output is not JSON:\n{json}");
    assert!(json.contains(&t.pid.to_string()), "rcr show --json output does not mention pid {}:\n{json}", t.pid);
    let out = t.rcr("show", &["show", "-D", &images]);
    assert!(out.status.success(), "rcr show failed ({}):\n{}", describe(out.status), out.stderr);
    assert!(out.stdout.contains(&t.pid.to_string()), "rcr show output does not mention pid {}:\n{}", t.pid, out.stdout);
}

/// Restore refuses a PID that is taken (here: the original, left running
/// by -R), says so, and creates nothing; the original is unharmed.
#[test]
fn refused_restore_pid_in_use() {
    let Some(mut t) = TestEnv::new("refused_restore_pid_in_use") else { return };
    t.spawn_victim("heap", &[], false);
    t.wait_ready();
    let before = snapshot(t.pid);
    t.dump_ok(&["-R"]);
    let images = t.images.to_string_lossy().into_owned();
    let out = t.rcr("restore-pid-in-use", &["restore", "-D", &images]);
    assert!(!out.status.success(), "restore over a live pid succeeded");
    assert!(out.stderr.contains(&format!("pid {} is in use", t.pid)), "stderr does not name the pid: {}", out.stderr);
    assert_same_snapshot(&before, &snapshot(t.pid), "original after the refused restore");
    t.go("");
    let st = t.wait_victim_exit();
    assert!(st.success(), "the original exited with {}", describe(st));
    t.assert_log_pass(1);
}

/// A file replaced between dump and restore is refused by name, before
/// any process is created.
#[test]
fn refused_restore_replaced_file() {
    let Some(mut t) = TestEnv::new("refused_restore_replaced_file") else { return };
    let dir = t.dir.to_string_lossy().into_owned();
    t.spawn_victim("regfile", &[&dir], false);
    t.wait_ready();
    t.dump_ok(&[]);
    t.reap_victim();
    let data = t.path("regfile.dat");
    let content = fs::read(&data).unwrap();
    fs::remove_file(&data).unwrap();
    fs::write(&data, content).unwrap(); // same bytes, another inode
    wait_pid_gone(t.pid, "the dumped victim");
    let images = t.images.to_string_lossy().into_owned();
    let out = t.rcr("restore-replaced", &["restore", "-D", &images]);
    assert!(!out.status.success(), "restore with a replaced file succeeded");
    assert!(out.stderr.contains("regfile.dat") && out.stderr.contains("replaced"), "stderr does not name the file: {}", out.stderr);
    assert!(!pid_exists(t.pid), "a process with pid {} exists after the refused restore", t.pid);
}
