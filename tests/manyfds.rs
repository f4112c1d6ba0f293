//! Hundreds of open file descriptions of one inode (eventfds all share the
//! anonymous inode; opens of one file share its inode), each in two fds of
//! a process and inherited by its child: after `rcr dump` + `rcr restore`
//! every fd refers to the right description again (rcr's dedupe orders the
//! descriptions of one inode with kcmp and binary-searches them).
//!
//! The victim is tests/victims/manyfds.c (its header lists the set-up and
//! its checks after go). From outside, the test checks with kcmp(2)
//! KCMP_FILE that each dup and the child's fd are the description they
//! were, and no other, and reads counters and offsets from fdinfo.
//!
//! Needs root; without it every test prints a message and passes.
//! Run: `cargo test --test manyfds`.
mod common;

use common::*;

const NEV: i32 = 300;
const NF: i32 = 100;

/// kcmp(2) KCMP_FILE: true if the two fds are one description.
fn same_file(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> bool {
    // SAFETY: kcmp compares kernel objects and touches no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, 0, fd1, fd2) };
    assert!(r >= 0, "kcmp pid {pid1} fd {fd1} / pid {pid2} fd {fd2} failed");
    r == 0
}

/// A number of fdinfo (eventfd-count is in hex, pos in decimal).
fn fdinfo(pid: i32, fd: i32, key: &str) -> i64 {
    let radix = if key == "eventfd-count:" { 16 } else { 10 };
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_else(|e| panic!("fdinfo {fd} of pid {pid}: {e}"));
    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| i64::from_str_radix(v.trim(), radix).ok()).unwrap_or_else(|| panic!("pid {pid} fd {fd}: no {key} in {text}"))
}

/// The originals (first..first+n) and their dups (dups..dups+n, dup j of
/// original perm(j)): each dup is its original, not the next one, and the
/// child's original is the parent's.
fn check_group(pids: [i32; 2], first: i32, dups: i32, n: i32, perm: impl Fn(i32) -> i32, what: &str) {
    for j in 0..n {
        let (orig, other) = (first + perm(j), first + perm(j + 1) % n);
        assert!(same_file(pids[0], dups + j, pids[0], orig), "{what}: fd {} is no longer a dup of fd {orig}", dups + j);
        assert!(!same_file(pids[0], dups + j, pids[0], other), "{what}: fd {} is also fd {other}", dups + j);
        assert!(same_file(pids[0], first + j, pids[1], first + j), "{what}: child fd {} is not the parent's", first + j);
    }
}

fn check_outside(pids: [i32; 2], what: &str) {
    check_group(pids, 100, 400, NEV, |j| (j * 7) % NEV, what);
    check_group(pids, 700, 800, NF, |j| (j * 13) % NF, what);
    for i in 0..NEV {
        assert_eq!(fdinfo(pids[0], 100 + i, "eventfd-count:"), i as i64 + 1, "{what}: counter of eventfd fd {}", 100 + i);
    }
    for i in 0..NF {
        assert_eq!(fdinfo(pids[0], 700 + i, "pos:"), 10 * i as i64, "{what}: offset of fd {}", 700 + i);
    }
}

#[test]
fn many_descriptions_of_one_inode() {
    run("many_descriptions_of_one_inode", 0);
}

/// As many descriptions as about half of rcr's RLIMIT_NOFILE hard limit,
/// at numbers up to over half of it: rcr cannot hold a copy of each above
/// the tree's numbers, so it creates them at their own numbers.
#[test]
fn descriptions_near_the_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let big = (lim.rlim_max.min(1 << 20) as i64 / 2 - 100).max(0);
    if big < 2000 {
        eprintln!("RLIMIT_NOFILE hard limit {} is too low for this test; skipped", lim.rlim_max);
        return;
    }
    run("descriptions_near_the_fd_limit", big);
}

/// Starts the victim (with `big` more eventfds), checks, dumps, restores,
/// checks again; the victim checks itself.
fn run(name: &str, big: i64) {
    let Some(mut t) = TestEnv::new(name) else { return };
    let dir = t.dir.to_string_lossy().into_owned();
    let big_arg = big.to_string();
    let args: Vec<&str> = if big > 0 { vec![&dir, &big_arg] } else { vec![&dir] };
    t.spawn_victim("manyfds", &args, false);
    t.wait_ready();
    let line = t.log_text().lines().find_map(|l| l.strip_prefix("child ").map(str::to_string)).expect("no `child PID` line in the victim log");
    let pids = [t.pid, line.trim().parse().expect("child pid")];
    t.track(&pids[1..]);
    check_outside(pids, "before the dump");
    t.dump_ok(&[]);
    t.reap_victim();
    wait_pids_gone(&pids, "the dumped tree");
    let pid = t.restore(&[]);
    assert_eq!(pid, pids[0], "restored with a different PID");
    check_outside(pids, "after restore");
    for k in (0..big as i32).step_by(97) {
        assert_eq!(fdinfo(pids[0], 1000 + k, "eventfd-count:"), 7 * k as i64 + 3, "after restore: counter of eventfd fd {}", 1000 + k);
    }
    t.go_expect_pass();
}
