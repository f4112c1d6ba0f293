//! Multi-threaded processes and process trees: `rcr dump` takes a process
//! with all its threads and, by default, all its descendants; `rcr restore`
//! brings them back with the same PIDs and TIDs, parent links, process
//! groups and sessions, the zombie as a zombie and the stopped child
//! stopped, with pipes and shared memory between them as they were.
//!
//! Victims: tests/victims/threads.c (20 threads, each in its own state;
//! its header comment lists what it checks after go), tests/victims/tree.c
//! (a 3-level tree with a zombie, a stopped child, a pipe ring and a shared
//! page), and a Python program with threads (the interpreter is the victim:
//! a real program none of us wrote). From outside, the tests compare
//! /proc before the dump and after the restore: the TIDs in
//! /proc/PID/task, each thread's name and state and, for the three blocked
//! threads, the syscall it sits in; for a tree, each process's state, ppid,
//! pgrp, session and thread count; and the harness snapshot (maps, fds,
//! ...) with pipe and shared-memory inodes relabelled, so that the same
//! sharing compares equal.
//!
//! Needs root; without it every test prints a message and passes.
//! Run: `cargo test --release --test tree`.
mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a restored process or tree may take to settle (rcr restore
/// may still hold it for a moment after writing the pidfile).
const SETTLE: Duration = Duration::from_secs(10);

/// Polls `check` until it returns `Ok`, for at most `SETTLE`; then panics
/// with the last error.
fn settle(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if start.elapsed() > SETTLE => panic!("{what} (after {SETTLE:?}):\n{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Running or sleeping: the states a live, unstopped process or thread
/// may show at any moment (compared as one).
fn norm_state(c: char) -> char {
    match c {
        'R' | 'S' => 'S',
        other => other,
    }
}

/// Every thread of `pid` is untraced (TracerPid 0).
fn untraced(pid: i32) -> Result<(), String> {
    for tid in task_ids(pid) {
        let st = task_file(pid, tid, "status").unwrap_or_default();
        let tracer = st.lines().find_map(|l| l.strip_prefix("TracerPid:")).map(str::trim).unwrap_or("?");
        if tracer != "0" {
            return Err(format!("pid {pid} thread {tid} has TracerPid {tracer}"));
        }
    }
    Ok(())
}

/// The first line of the victim log that starts with `prefix`, without it.
fn log_line(t: &TestEnv, prefix: &str) -> String {
    t.log_text()
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no `{prefix}` line in the victim log"))
}

/// `key=value` pairs of a log line.
fn kv(line: &str) -> BTreeMap<String, i32> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or_else(|e| panic!("bad number in {w:?}: {e}", w = v))))
        .collect()
}

/// Checks that a dump left the image files of each live process, and only
/// a core image for each zombie.
fn assert_images(t: &TestEnv, live: &[i32], zombies: &[i32]) {
    for &pid in live {
        for f in image_files(pid) {
            assert!(t.images.join(&f).is_file(), "{f} (of live pid {pid}) is missing from the image dir");
        }
    }
    for &pid in zombies {
        assert!(t.images.join(format!("core-{pid}.img")).is_file(), "core-{pid}.img (of the zombie) is missing");
        for k in ["mm", "pagemap", "pages", "fdinfo", "fs"] {
            assert!(!t.images.join(format!("{k}-{pid}.img")).exists(), "the zombie {pid} got a {k} image");
        }
    }
}

/// Image files that name `pid` (`*-PID.img`).
fn images_of(t: &TestEnv, pid: i32) -> Vec<String> {
    let suffix = format!("-{pid}.img");
    let mut v: Vec<String> = fs::read_dir(&t.images)
        .expect("reading the image dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(&suffix))
        .collect();
    v.sort();
    v
}

fn assert_same_snapshots(before: &[Snapshot], after: &[Snapshot], pids: &[i32], what: &str) {
    for ((b, a), pid) in before.iter().zip(after).zip(pids) {
        assert_same_snapshot(b, a, &format!("{what}, pid {pid}"));
    }
}

// ---------------------------------------------------------------------------
// threads
// ---------------------------------------------------------------------------

const SYS_READ: i64 = 0;
const SYS_FUTEX: i64 = 202;
const SYS_CLOCK_NANOSLEEP: i64 = 230;

/// What the threads victim printed, and what /proc showed before the dump.
struct Threads {
    tids: BTreeSet<i32>,
    /// (tid, the syscall it must be blocked in, what)
    blocked: Vec<(i32, i64, &'static str)>,
    /// tid -> comm
    comms: BTreeMap<i32, String>,
}

fn comms(pid: i32) -> BTreeMap<i32, String> {
    task_ids(pid).into_iter().map(|tid| (tid, task_file(pid, tid, "comm").unwrap_or_default())).collect()
}

/// Starts the threads victim and checks from outside that it set up what
/// we expect: the 20 TIDs it printed are those in /proc/PID/task, the
/// workers are named, the three special threads sit in their syscalls.
fn start_threads(name: &str) -> Option<(TestEnv, Threads)> {
    let mut t = TestEnv::new(name)?;
    t.spawn_victim("threads", &[], false);
    t.wait_ready();
    let tids: BTreeSet<i32> = log_line(&t, "TIDS ").split_whitespace().map(|s| s.parse().expect("TIDS line")).collect();
    assert_eq!(tids.len(), 20, "the victim should print 20 TIDs");
    assert!(tids.contains(&t.pid), "the TIDS line misses the main thread {}", t.pid);
    assert_eq!(task_ids(t.pid), tids, "/proc/PID/task differs from the victim's TIDS line");
    let sp = kv(&log_line(&t, "SPECIAL "));
    let blocked = vec![(sp["futex"], SYS_FUTEX, "futex"), (sp["sleeper"], SYS_CLOCK_NANOSLEEP, "sleeper"), (sp["reader"], SYS_READ, "reader")];
    let pid = t.pid;
    settle("the special threads should sit in their syscalls before the dump", || blocked_in_syscalls(pid, &blocked));
    let comms = comms(pid);
    let workers = comms.values().filter(|c| c.starts_with("work")).count();
    assert_eq!(workers, 16, "16 threads should be named workNN: {comms:?}");
    Some((t, Threads { tids, blocked, comms }))
}

fn blocked_in_syscalls(pid: i32, blocked: &[(i32, i64, &str)]) -> Result<(), String> {
    let mut err = String::new();
    for &(tid, nr, what) in blocked {
        let got = task_syscall(pid, tid);
        if got != Some(nr) {
            let _ = writeln!(err, "{what} thread {tid}: in syscall {got:?}, want {nr} (/proc/{pid}/task/{tid}/syscall)");
        }
    }
    if err.is_empty() {
        Ok(())
    } else {
        Err(err)
    }
}

/// From outside, after a restore or a dump -R: the same TIDs, names, every
/// thread running or sleeping and untraced, the special threads back in
/// their syscalls.
fn check_threads_outside(pid: i32, th: &Threads, what: &str) {
    settle(&format!("{what}: threads from outside"), || {
        let tids = task_ids(pid);
        if tids != th.tids {
            return Err(format!(
                "TIDs in /proc/{pid}/task differ:\n  before {:?}\n  now    {tids:?}",
                th.tids
            ));
        }
        let now = comms(pid);
        if now != th.comms {
            return Err(format!("thread names differ:\n  before {:?}\n  now    {now:?}", th.comms));
        }
        let states: BTreeMap<i32, Option<char>> = tids.iter().map(|&tid| (tid, task_state(pid, tid))).collect();
        if states.values().any(|s| s.map(norm_state) != Some('S')) {
            return Err(format!("thread states (want R or S): {states:?}"));
        }
        untraced(pid)?;
        blocked_in_syscalls(pid, &th.blocked)
    });
}

/// Dump (kill) + restore: same PID, same TIDs, names, states, snapshot;
/// PASS from inside.
#[test]
fn threads_restore() {
    let Some((mut t, th)) = start_threads("threads_restore") else { return };
    let before = snapshot_group(&[t.pid]);
    t.dump_ok(&[]);
    t.reap_victim();
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    check_threads_outside(pid, &th, "after restore");
    assert_same_snapshots(&before, &snapshot_group(&[pid]), &[pid], "after restore");
    t.go_expect_pass();
}

/// dump -R: every thread is left running as it was (untraced, not
/// stopped, back in its syscall), and the original passes.
#[test]
fn threads_leave_running() {
    let Some((mut t, th)) = start_threads("threads_leave_running") else { return };
    let before = snapshot_group(&[t.pid]);
    t.dump_ok(&["-R"]);
    assert!(t.victim.as_mut().unwrap().try_wait().unwrap().is_none(), "dump -R killed the victim");
    check_threads_outside(t.pid, &th, "after dump -R (the original)");
    assert_same_snapshots(&before, &snapshot_group(&[t.pid]), &[t.pid], "after dump -R (the original)");
    t.go_expect_original_pass();
}

/// Dump, restore, then dump the restored process again (killing it) and
/// restore that: the restored threads are as dumpable as the originals.
#[test]
fn threads_dump_restored() {
    let Some((mut t, th)) = start_threads("threads_dump_restored") else { return };
    let before = snapshot_group(&[t.pid]);
    t.dump_ok(&[]);
    t.reap_victim();
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    check_threads_outside(pid, &th, "after the first restore");

    // Second round, into another image dir.
    t.images = t.dir.join("images2");
    fs::create_dir_all(&t.images).unwrap();
    t.dump_ok(&[]);
    let st = t.wait_restore_exit();
    assert_eq!(
        st.code(),
        Some(128 + libc::SIGKILL),
        "the first rcr restore should exit 128+SIGKILL once the second dump killed its process; it ended with {}",
        describe(st)
    );
    wait_pids_gone(&[pid], "the restored process, dumped again");
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored (second time) with a different PID");
    check_threads_outside(pid, &th, "after the second restore");
    assert_same_snapshots(&before, &snapshot_group(&[pid]), &[pid], "after the second restore");
    t.go_expect_pass();
    assert_eq!(t.log_text().lines().filter(|l| *l == "READY").count(), 1, "the victim started over (READY twice)");
}

// ---------------------------------------------------------------------------
// tree
// ---------------------------------------------------------------------------

const ROLES: [&str; 7] = ["root", "a", "a1", "b", "b1", "c", "d"];

/// The PIDs of the tree victim by role, in ROLES order.
struct Tree {
    pids: Vec<(&'static str, i32)>,
}

impl Tree {
    fn pid(&self, role: &str) -> i32 {
        self.pids.iter().find(|(r, _)| *r == role).map(|(_, p)| *p).unwrap_or_else(|| panic!("no role {role}"))
    }
    fn all(&self) -> Vec<i32> {
        self.pids.iter().map(|(_, p)| *p).collect()
    }
    /// Everyone but the zombie.
    fn live(&self) -> Vec<i32> {
        self.pids.iter().filter(|(r, _)| *r != "c").map(|(_, p)| *p).collect()
    }
}

/// role -> /proc/PID/stat; the root's ppid is left out (its parent is
/// whoever restored it), and running/sleeping count as one state.
fn tree_view(tree: &Tree) -> BTreeMap<&'static str, Option<ProcStat>> {
    tree.pids
        .iter()
        .map(|&(role, pid)| {
            let st = proc_stat(pid).map(|mut s| {
                s.state = norm_state(s.state);
                if role == "root" {
                    s.ppid = 0;
                }
                s
            });
            (role, st)
        })
        .collect()
}

fn start_tree(name: &str) -> Option<(TestEnv, Tree)> {
    let mut t = TestEnv::new(name)?;
    t.spawn_victim("tree", &[], true);
    t.wait_ready();
    let m = kv(&log_line(&t, "TREE "));
    let tree = Tree { pids: ROLES.iter().map(|r| (*r, *m.get(*r).unwrap_or_else(|| panic!("no {r}= in the TREE line")))).collect() };
    assert_eq!(tree.pid("root"), t.pid, "the TREE line's root is not the victim");
    t.track(&tree.all());
    // The victim set up what we think (so that a difference later is rcr's).
    let v = tree_view(&tree);
    let st = |r: &str| v[r].clone().unwrap_or_else(|| panic!("{r} (pid {}) is gone before the dump", tree.pid(r)));
    let (root, a, b, d) = (tree.pid("root"), tree.pid("a"), tree.pid("b"), tree.pid("d"));
    let want = [
        ("root", 'S', 0, root, root, 1),
        ("a", 'S', root, a, root, 1),
        ("a1", 'S', a, a, root, 2),
        ("b", 'S', root, b, b, 1),
        ("b1", 'S', b, b, b, 1),
        ("c", 'Z', root, root, root, 1),
        ("d", 'T', root, d, root, 1),
    ];
    for (role, state, ppid, pgrp, session, threads) in want {
        let s = st(role);
        assert_eq!(
            (s.state, s.ppid, s.pgrp, s.session, s.threads),
            (state, ppid, pgrp, session, threads),
            "{role} (pid {}): (state, ppid, pgrp, session, threads) before the dump",
            tree.pid(role)
        );
    }
    Some((t, tree))
}

/// Waits until the tree looks from outside as `before` did, untraced.
fn check_tree_outside(tree: &Tree, before: &BTreeMap<&'static str, Option<ProcStat>>, what: &str) {
    settle(&format!("{what}: the tree from outside"), || {
        let now = tree_view(tree);
        let mut err = String::new();
        for (role, b) in before {
            if now[role] != *b {
                let _ = writeln!(err, "{role} (pid {}): before {b:?}\n{:>w$}now    {:?}", tree.pid(role), "", now[role], w = role.len() + 13);
            }
        }
        for pid in tree.live() {
            if let Err(e) = untraced(pid) {
                let _ = writeln!(err, "{e}");
            }
        }
        if err.is_empty() {
            Ok(())
        } else {
            Err(err)
        }
    });
}

/// The whole tree: dump (kill), wait until every PID is gone, restore:
/// same PIDs, parents, groups, sessions, states (zombie, stopped), thread
/// counts, fds on the same pipes, the same shared page; then PASS from
/// inside (the root's exit status through rcr restore).
#[test]
fn tree_restore() {
    let Some((mut t, tree)) = start_tree("tree_restore") else { return };
    let before = tree_view(&tree);
    let live = tree.live();
    let snaps = snapshot_group(&live);
    t.dump_ok(&[]);
    assert_images(&t, &live, &[tree.pid("c")]);
    t.reap_victim();
    wait_pids_gone(&tree.all(), "the dumped tree");
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    check_tree_outside(&tree, &before, "after restore");
    let root_ppid = proc_stat(pid).map(|s| s.ppid);
    let restorer = t.restore.as_ref().map(|c| c.id() as i32);
    assert_eq!(root_ppid, restorer, "the restored root's parent should be rcr restore (which waits for it)");
    assert_same_snapshots(&snaps, &snapshot_group(&live), &live, "after restore");
    t.go_expect_pass();
    wait_pids_gone(&tree.all(), "the restored tree, after PASS");
}

/// dump -R: the whole tree is resumed as it was (the zombie still a zombie,
/// the stopped child still stopped, nobody traced), and passes.
#[test]
fn tree_leave_running() {
    let Some((mut t, tree)) = start_tree("tree_leave_running") else { return };
    let before = tree_view(&tree);
    let live = tree.live();
    let snaps = snapshot_group(&live);
    t.dump_ok(&["-R"]);
    assert_images(&t, &live, &[tree.pid("c")]);
    assert!(t.victim.as_mut().unwrap().try_wait().unwrap().is_none(), "dump -R killed the root");
    check_tree_outside(&tree, &before, "after dump -R (the original)");
    assert_same_snapshots(&snaps, &snapshot_group(&live), &live, "after dump -R (the original)");
    t.go_expect_original_pass();
    wait_pids_gone(&tree.all(), "the original tree, after PASS");
}

/// --scope process on a process with a child: only the root is dumped (no
/// image names the child) and restored, alone; the root then finds it has
/// no child. The child, left behind, goes away by itself (it exits when
/// its parent dies).
#[test]
fn tree_scope_process() {
    let Some(mut t) = TestEnv::new("tree_scope_process") else { return };
    t.spawn_victim("tree", &["solo"], true);
    t.wait_ready();
    let m = kv(&log_line(&t, "SOLO "));
    let (root, child) = (m["root"], m["child"]);
    assert_eq!(root, t.pid);
    t.track(&[child]);
    assert_eq!(proc_stat(child).map(|s| s.ppid), Some(root), "the child's parent before the dump");
    let before = snapshot_group(&[root]);
    t.dump_ok(&["--scope", "process"]);
    assert!(images_of(&t, child).is_empty(), "--scope process dumped the child too: {:?}", images_of(&t, child));
    t.reap_victim();
    // rcr killed the root (only); the orphaned child notices and exits (a
    // child left frozen or stopped by the dump would stay: a failure).
    wait_pids_gone(&[child], "the child left behind by a --scope process dump");
    let pid = t.restore(&[]);
    assert_eq!(pid, root, "restored with a different PID");
    settle("the restored root should run free", || {
        let s = proc_stat(pid).ok_or("gone")?;
        if norm_state(s.state) != 'S' || s.pgrp != root || s.session != root {
            return Err(format!("{s:?}"));
        }
        untraced(pid)
    });
    if let Some(children) = task_file(pid, pid, "children") {
        assert!(children.is_empty(), "the root was restored with children: {children}");
    }
    assert!(!pid_exists(child), "pid {child} (the child) exists after restoring the root alone");
    assert_same_snapshots(&before, &snapshot_group(&[pid]), &[pid], "after restore");
    t.go("alone");
    let st = t.wait_restore_exit();
    t.assert_no_fail();
    assert!(st.success(), "rcr restore exited with {}", describe(st));
    t.assert_log_pass(1);
}

// ---------------------------------------------------------------------------
// python3
// ---------------------------------------------------------------------------

const PY_VICTIM: &str = r#"
# A multi-threaded Python program for rcr: 8 workers take tasks from a
# queue.Queue, compute sums of squares and hand the results back under a
# threading.Condition; a sleeper thread sits in time.sleep; the main thread
# produces tasks. READY once all threads run and results come in; after the
# go file (argv[1]) appears: the work goes on, every worker still has its
# thread-local ids, every result is right and every task was done once.
import os
import queue
import sys
import threading
import time

GO = sys.argv[1]
NWORKERS = 8
tasks = queue.Queue(maxsize=32)
cond = threading.Condition(threading.Lock())
results = {}                 # seq -> (n, value)
done_by = [0] * NWORKERS
started = [None] * NWORKERS  # native thread ids
local = threading.local()
failures = []
sleeper_stop = threading.Event()
sleeper_naps = [0]


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg, flush=True)


def expected(n):
    return (n - 1) * n * (2 * n - 1) // 6


def worker(k):
    local.k = k
    local.native = threading.get_native_id()
    local.ident = threading.get_ident()
    with cond:
        started[k] = local.native
        cond.notify_all()
    while True:
        item = tasks.get()
        if item is None:
            break
        seq, n = item
        v = sum(i * i for i in range(n))
        if local.k != k or local.native != threading.get_native_id() or local.ident != threading.get_ident():
            fail("worker %d: thread-local ids changed: %r %r %r" % (k, local.k, local.native, local.ident))
        with cond:
            if seq in results:
                fail("task %d done twice" % seq)
            results[seq] = (n, v)
            done_by[k] += 1
            cond.notify_all()
        time.sleep(0.002)


def sleeper():
    while not sleeper_stop.is_set():
        time.sleep(0.5)
        sleeper_naps[0] += 1


def main():
    threads = [threading.Thread(target=worker, args=(k,), name="w%d" % k) for k in range(NWORKERS)]
    threads.append(threading.Thread(target=sleeper, name="sleeper"))
    for t in threads:
        t.start()
    seq = 0
    ready = False
    polls = 0
    while not os.path.exists(GO):
        try:
            tasks.put((seq, 500 + seq % 1500), timeout=0.01)
            seq += 1
        except queue.Full:
            pass
        if not ready:
            with cond:
                if all(started) and len(results) >= 4 * NWORKERS:
                    ready = True
                    print("TIDS %d %s" % (threading.get_native_id(), " ".join(str(t) for t in started)))
                    print("READY", flush=True)
        polls += 1
        if polls > 60000:
            fail("no go file; giving up")
            os._exit(1)
    if not ready:
        fail("go before READY")
    # The work goes on: every worker does more.
    with cond:
        before = list(done_by)
    deadline = time.monotonic() + 20
    while True:
        with cond:
            moved = all(d > b for d, b in zip(done_by, before)) and sum(done_by) >= sum(before) + 200
        if moved or time.monotonic() > deadline:
            break
        try:
            tasks.put((seq, 500 + seq % 1500), timeout=0.01)
            seq += 1
        except queue.Full:
            pass
    if not moved:
        fail("the workers did not go on after go: %r then %r" % (before, done_by))
    for _ in range(NWORKERS):
        tasks.put(None)
    sleeper_stop.set()
    for t in threads:
        t.join(timeout=10)
        if t.is_alive():
            fail("thread %s did not finish" % t.name)
            os._exit(1)
    if sorted(results) != list(range(seq)):
        fail("%d results for %d tasks" % (len(results), seq))
    wrong = [s for s, (n, v) in results.items() if v != expected(n)]
    if wrong:
        fail("%d wrong results, e.g. task %d" % (len(wrong), wrong[0]))
    if sleeper_naps[0] < 1:
        fail("the sleeper never woke up")
    print("tasks %d, per worker %r, sleeper naps %d" % (seq, done_by, sleeper_naps[0]))
    if failures:
        sys.exit(1)
    print("PASS", flush=True)


main()
"#;

fn find_python() -> Option<std::path::PathBuf> {
    let usr = std::path::PathBuf::from("/usr/bin/python3");
    if usr.is_file() {
        return Some(usr);
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join("python3")).find(|p| p.is_file())
}

/// A real interpreter with 10 threads (Lock, Condition, queue.Queue,
/// time.sleep): dump (kill), restore, same TIDs, PASS.
#[test]
fn python3_threads() {
    let Some(mut t) = TestEnv::new("python3_threads") else { return };
    let Some(py) = find_python() else {
        eprintln!("skipping python3_threads: no python3 (neither /usr/bin/python3 nor on PATH)");
        return;
    };
    let script = t.path("victim.py");
    fs::write(&script, PY_VICTIM).expect("writing the python victim");
    let mut cmd = Command::new(&py);
    cmd.arg("-u").arg(&script).arg(&t.go);
    t.spawn_command(cmd, false);
    t.wait_ready();
    let printed: BTreeSet<i32> = log_line(&t, "TIDS ").split_whitespace().map(|s| s.parse().expect("TIDS line")).collect();
    let tids = task_ids(t.pid);
    assert!(printed.is_subset(&tids), "the TIDs python printed {printed:?} are not all in /proc/PID/task {tids:?}");
    assert!(tids.len() >= 10, "python should run at least 10 threads: {tids:?}");
    let names = comms(t.pid);
    let before = snapshot_group(&[t.pid]);
    t.dump_ok(&[]);
    t.reap_victim();
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    settle("the restored python's threads", || {
        let now = task_ids(pid);
        if now != tids {
            return Err(format!("TIDs before {tids:?}, now {now:?}"));
        }
        let n = comms(pid);
        if n != names {
            return Err(format!("thread names before {names:?}, now {n:?}"));
        }
        untraced(pid)
    });
    assert_same_snapshots(&before, &snapshot_group(&[pid]), &[pid], "after restore");
    t.go_expect_pass();
}
