//! Harness for the end-to-end tests: builds the C victims in
//! `tests/victims/`, runs them, drives `rcr dump` / `rcr restore` and checks
//! the result from outside.
//!
//! Every test gets a [`TestEnv`]: its own temp dir (images, victim log, go
//! file, rcr output), the PIDs it started, and a `Drop` that kills only those
//! PIDs and removes the dir. When a test panics, the `Drop` first prints the
//! victim log and the output of every rcr run, so a failure explains itself.
//! Every wait is bounded by [`TIMEOUT`].
//!
//! Set `RCR_E2E_KEEP=1` to keep the temp dirs of failed tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

/// Bound for every wait in the harness.
pub const TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);

pub const RCR: &str = env!("CARGO_BIN_EXE_rcr");
const VICTIMS: &[&str] =
    &["heap", "sparse", "filemap", "regfile", "fpu", "counter", "daemon", "badfd", "unsupported", "sigstate", "steady", "threads", "tree", "sharedfd", "timers", "creds", "anonfds", "unix", "unix_ext", "memfiles", "allstate", "inet", "pty", "zeropages", "manyfds", "nodump", "faulty", "compress", "bigmem", "amx"];
const TMP_PREFIX: &str = "rcr-e2e-";

/// Image files every successful dump of PID must leave behind.
pub fn image_files(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = ["inventory.img", "pstree.img", "files.img"].iter().map(|s| s.to_string()).collect();
    for k in ["core", "mm", "pagemap", "pages", "fdinfo", "fs"] {
        v.push(format!("{k}-{pid}.img"));
    }
    v
}

// ---------------------------------------------------------------------------
// Victim build (once per test process)
// ---------------------------------------------------------------------------

fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        remove_stale_tmp_dirs();
        let dir = std::env::temp_dir().join(format!("{TMP_PREFIX}{}-bin", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating the victim build dir");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/victims");
        // Start all compilers, then collect them.
        let jobs: Vec<(&str, Child)> = VICTIMS
            .iter()
            .map(|v| {
                let child = Command::new("gcc")
                    .args(["-O2", "-g", "-Wall", "-Wextra", "-pthread", "-o"])
                    .arg(dir.join(v))
                    .arg(src.join(format!("{v}.c")))
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("running gcc (is it installed?)");
                (*v, child)
            })
            .collect();
        for (v, child) in jobs {
            let out = child.wait_with_output().expect("waiting for gcc");
            let msg = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "gcc failed for {v}.c:\n{msg}");
            if !msg.trim().is_empty() {
                eprintln!("gcc warnings for {v}.c:\n{msg}");
            }
        }
        dir
    })
}

/// Removes temp dirs left behind by test processes that no longer exist
/// (the build dir can't be removed at exit: there is no hook for that).
fn remove_stale_tmp_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(TMP_PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

pub fn victim_path(name: &str) -> PathBuf {
    bin_dir().join(name)
}

// ---------------------------------------------------------------------------
// Small process helpers
// ---------------------------------------------------------------------------

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Polls `f` every 10 ms until it returns `Some`, or panics after `TIMEOUT`.
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > TIMEOUT {
            panic!("timed out after {TIMEOUT:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Waits for a child with a timeout; kills it on timeout and panics.
pub fn wait_child(child: &mut Child, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out after {TIMEOUT:?} waiting for {what} (pid {}); killed it", child.id());
        }
        std::thread::sleep(POLL);
    }
}

/// How a process ended, for messages.
pub fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{st:?}"),
    }
}

/// Waits until `pid` (not necessarily our child) is gone. If it is our
/// child (we are a child subreaper, so orphans end up here), reaps it and
/// returns its wait status.
pub fn wait_pid_gone(pid: i32, what: &str) -> Option<i32> {
    wait_until(&format!("{what} (pid {pid}) to end"), || {
        let mut status = 0;
        // SAFETY: plain waitpid on a specific PID; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(Some(status));
        }
        if r < 0 && !pid_exists(pid) {
            return Some(None);
        }
        None
    })
}

/// The value of a `Key:` line of /proc/PID/status.
pub fn status_field(pid: i32, key: &str) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string()))
}

/// The fields of /proc/PID/stat after the comm, split on spaces
/// (index 0 is the state, 1 ppid, 2 pgrp, 3 session).
pub fn stat_fields(pid: i32) -> Vec<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rfind(')').map(|i| &s[i + 2..]).unwrap_or("");
    after.split_whitespace().map(str::to_string).collect()
}

/// Checks that `pid` is running or sleeping normally: not stopped, not
/// traced, not a zombie.
pub fn assert_runs_free(pid: i32, what: &str) {
    let state = status_field(pid, "State").unwrap_or_else(|| panic!("{what}: pid {pid} is gone"));
    assert!(state.starts_with('S') || state.starts_with('R'), "{what}: pid {pid} has State {state:?}, expected S or R");
    let tracer = status_field(pid, "TracerPid").unwrap_or_default();
    assert_eq!(tracer, "0", "{what}: pid {pid} is still traced (TracerPid {tracer})");
}

/// What /proc/PID/stat says about a process's place in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// R, S, D, T, t, Z, ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub threads: i64,
}

/// /proc/PID/stat of `pid`, or `None` if it is gone.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let f = stat_fields(pid);
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
    Some(ProcStat {
        state: f.first()?.chars().next()?,
        ppid: num(1)? as i32,
        pgrp: num(2)? as i32,
        session: num(3)? as i32,
        threads: num(17)?,
    })
}

/// The thread ids in /proc/PID/task (empty if the process is gone).
pub fn task_ids(pid: i32) -> std::collections::BTreeSet<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok())).collect())
        .unwrap_or_default()
}

/// The content of /proc/PID/task/TID/NAME, trimmed; `None` if unreadable.
pub fn task_file(pid: i32, tid: i32, name: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/{name}")).ok().map(|s| s.trim().to_string())
}

/// The state letter of thread TID of PID (from its stat), if it exists.
pub fn task_state(pid: i32, tid: i32) -> Option<char> {
    let s = task_file(pid, tid, "stat")?;
    s.rfind(')').and_then(|i| s[i + 1..].trim_start().chars().next())
}

/// The syscall number thread TID of PID is blocked in, from
/// /proc/PID/task/TID/syscall; `None` if it is running or unreadable.
pub fn task_syscall(pid: i32, tid: i32) -> Option<i64> {
    task_file(pid, tid, "syscall")?.split_whitespace().next()?.parse().ok()
}

/// Waits until every PID of `pids` is gone, reaping those that are our
/// (subreaper) children; a PID may also be reaped by someone else (PID 1).
pub fn wait_pids_gone(pids: &[i32], what: &str) {
    let mut left: Vec<i32> = pids.to_vec();
    wait_until(&format!("{what} (pids {pids:?}) to be gone"), || {
        left.retain(|&pid| {
            let mut status = 0;
            // SAFETY: waitpid on a specific PID; `status` is a valid out pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            r != pid && pid_exists(pid)
        });
        left.is_empty().then_some(())
    });
}

fn readlink(p: impl AsRef<Path>) -> String {
    fs::read_link(p).map(|l| l.to_string_lossy().into_owned()).unwrap_or_else(|e| format!("<{e}>"))
}

/// What we compare from outside before the dump and after the restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub maps: String,
    /// Everything else, as key -> value, compared one by one.
    pub attrs: BTreeMap<String, String>,
}

/// Takes a snapshot of `pid`: maps, comm, cmdline, exe, cwd, root, some
/// status fields, and each fd's target, offset and flags.
pub fn snapshot(pid: i32) -> Snapshot {
    let p = format!("/proc/{pid}");
    let maps = fs::read_to_string(format!("{p}/maps")).unwrap_or_else(|e| panic!("reading {p}/maps: {e}"));
    let mut a = BTreeMap::new();
    a.insert("comm".into(), fs::read_to_string(format!("{p}/comm")).unwrap_or_default().trim().to_string());
    a.insert(
        "cmdline".into(),
        fs::read(format!("{p}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ")).unwrap_or_default(),
    );
    for l in ["exe", "cwd", "root"] {
        a.insert(l.into(), readlink(format!("{p}/{l}")));
    }
    for k in ["Umask", "SigBlk", "SigIgn", "Uid", "Gid"] {
        a.insert(format!("status {k}"), status_field(pid, k).unwrap_or_default());
    }
    if let Ok(fds) = fs::read_dir(format!("{p}/fd")) {
        for fd in fds.flatten() {
            let n = fd.file_name().to_string_lossy().into_owned();
            a.insert(format!("fd {n:>3} target"), readlink(fd.path()));
            let info = fs::read_to_string(format!("{p}/fdinfo/{n}")).unwrap_or_default();
            for line in info.lines() {
                if let Some(v) = line.strip_prefix("pos:") {
                    a.insert(format!("fd {n:>3} pos"), v.trim().to_string());
                }
                if let Some(v) = line.strip_prefix("flags:") {
                    // O_LARGEFILE depends on who opened the file (a 64-bit
                    // open() always adds it): compare the rest, close-on-exec
                    // included.
                    const O_LARGEFILE: u32 = 0o100000; // the kernel's; libc says 0 on 64-bit
                    let f = u32::from_str_radix(v.trim(), 8).unwrap_or(u32::MAX) & !O_LARGEFILE;
                    a.insert(format!("fd {n:>3} flags"), format!("0{f:o}"));
                }
            }
        }
    }
    Snapshot { maps, attrs: a }
}

/// Line diff of two texts: lines only in `a` (-) and only in `b` (+).
pub fn diff_lines(a: &str, b: &str) -> String {
    let mut out = String::new();
    for l in a.lines().filter(|l| !b.lines().any(|x| x == *l)) {
        let _ = writeln!(out, "- {l}");
    }
    for l in b.lines().filter(|l| !a.lines().any(|x| x == *l)) {
        let _ = writeln!(out, "+ {l}");
    }
    if out.is_empty() {
        out.push_str("(same lines, different order)\n");
    }
    out
}

/// Panics with every difference between two snapshots.
pub fn assert_same_snapshot(before: &Snapshot, after: &Snapshot, what: &str) {
    let mut msg = String::new();
    if before.maps != after.maps {
        let _ = write!(
            msg,
            "/proc/PID/maps differ (- before, + after):\n{}\nfull maps before:\n{}\nfull maps after:\n{}\n",
            diff_lines(&before.maps, &after.maps),
            before.maps,
            after.maps
        );
    }
    let keys: std::collections::BTreeSet<&String> = before.attrs.keys().chain(after.attrs.keys()).collect();
    for k in keys {
        let (b, a) = (before.attrs.get(k), after.attrs.get(k));
        if b != a {
            let _ = writeln!(msg, "{k}: before {b:?}, after {a:?}");
        }
    }
    assert!(msg.is_empty(), "{what}: the process differs from outside:\n{msg}");
}

/// Snapshots of several processes (a tree, or one process with a pipe),
/// with the inode numbers that a restore is free to change replaced by
/// labels given in order of first appearance (pids in the order given, fds
/// in order, then mappings in order): pipes (`pipe:[#1]`) and shared
/// anonymous memory (`/dev/zero (deleted)` and SysV segments in maps),
/// memfds and deleted files (any other ` (deleted)` mapping).
/// Sockets keep their inodes: tests/unix.rs looks them up in
/// /proc/net/unix and labels them itself.
/// Equal labels before and after mean the same sharing: an fd still on the
/// same pipe as the other fds that were on that pipe, a mapping still
/// shared with the same mappings of the same processes. Mappings are
/// compared exactly otherwise (rcr restores madvise flags, so neighbours
/// the kernel kept apart stay apart).
pub fn snapshot_group(pids: &[i32]) -> Vec<Snapshot> {
    let mut pipes: BTreeMap<String, usize> = BTreeMap::new();
    let mut shmem: BTreeMap<String, usize> = BTreeMap::new();
    pids.iter()
        .map(|&pid| {
            let mut snap = snapshot(pid);
            for v in snap.attrs.values_mut() {
                if let Some(ino) = v.strip_prefix("pipe:[").and_then(|r| r.strip_suffix(']')) {
                    let n = pipes.len() + 1;
                    let label = *pipes.entry(ino.to_string()).or_insert(n);
                    *v = format!("pipe:[#{label}]");
                }
            }
            let mut maps = String::new();
            for line in snap.maps.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                let path = if f.len() > 5 { f[5..].join(" ") } else { String::new() };
                // Shared anonymous memory, SysV segments, memfds and deleted
                // files: objects a restore recreates with new inodes.
                if f.len() > 5 && path.ends_with(" (deleted)") {
                    let n = shmem.len() + 1;
                    let label = *shmem.entry(format!("{} {}", f[3], f[4])).or_insert(n);
                    let _ = writeln!(maps, "{} {} {} shmem#{label} {path}", f[0], f[1], f[2]);
                } else {
                    let _ = writeln!(maps, "{line}");
                }
            }
            snap.maps = maps;
            snap
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Spawning
// ---------------------------------------------------------------------------

/// Signal set as the kernel sees it: bit `n - 1` is signal `n`.
pub const fn sigbit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// How a child starts. Every child starts with all signal dispositions at
/// SIG_DFL and no signal blocked (whatever the harness inherited), then
/// gets `ignore` and `block`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpawnOpts {
    /// Start the child in its own session (setsid).
    pub setsid: bool,
    /// Signals set to SIG_IGN ([`sigbit`] mask).
    pub ignore: u64,
    /// Signals blocked ([`sigbit`] mask).
    pub block: u64,
}

/// The kernel's struct sigaction on x86_64 (not glibc's).
#[repr(C)]
#[derive(Debug)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// Installs a pre_exec hook on `cmd`: marks every inherited fd >= 3
/// close-on-exec (the harness itself may have inherited pipes, which would
/// make rcr refuse the victim), then sets up signals and session per `opts`.
pub fn prepare(cmd: &mut Command, opts: SpawnOpts) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: the hook runs between fork and exec and calls only
    // async-signal-safe syscalls (close_range, fcntl, rt_sigaction,
    // rt_sigprocmask, setsid); it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
                for fd in 3..4096 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            // Raw rt_sigaction: glibc's sigaction() refuses its reserved
            // signals 32 and 33, which may be inherited as ignored.
            for sig in 1..=64 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    let handler = if opts.ignore & sigbit(sig) != 0 { libc::SIG_IGN } else { libc::SIG_DFL };
                    let sa = KernelSigaction { handler, flags: 0, restorer: 0, mask: 0 };
                    libc::syscall(libc::SYS_rt_sigaction, sig, &sa as *const KernelSigaction, 0usize, 8usize);
                }
            }
            let mask: u64 = opts.block;
            libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &mask as *const u64, 0usize, 8usize);
            if opts.setsid && libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes this test process a child subreaper once, so that a process
/// restored with `-d` is reparented to us and we can reap it and see its
/// exit status (PID 1 of the machine may not reap).
fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes no pointers.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
        assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER: {}", io::Error::last_os_error());
    });
}

// ---------------------------------------------------------------------------
// The per-test environment
// ---------------------------------------------------------------------------

/// One rcr invocation, kept for the failure report.
#[derive(Debug)]
pub struct RcrRun {
    pub args: Vec<String>,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    pub log_path: PathBuf,
    pub status: Option<ExitStatus>,
}

/// Output of a finished rcr command.
#[derive(Debug)]
pub struct RcrOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug)]
pub struct TestEnv {
    pub name: String,
    pub dir: PathBuf,
    pub images: PathBuf,
    pub go: PathBuf,
    pub log: PathBuf,
    /// The victim we spawned (our child until reaped).
    pub victim: Option<Child>,
    /// PID of the victim (and of its restored incarnations).
    pub pid: i32,
    /// The running `rcr restore`, if any.
    pub restore: Option<Child>,
    /// Set once a restore was started: the restored process is not our
    /// child, so Drop has to find it by PID (and checks it is ours first).
    restored_pid: Option<i32>,
    /// More PIDs Drop kills (if they are ours): the other processes of a
    /// tree, see [`TestEnv::track`].
    tracked: Vec<i32>,
    /// Signal setup of the victims and of rcr (default: all SIG_DFL, none
    /// blocked).
    pub victim_opts: SpawnOpts,
    pub rcr_opts: SpawnOpts,
    /// Extra environment of every rcr this env starts (test hooks such as
    /// RCR_TEST_READER_TID).
    pub rcr_env: Vec<(String, String)>,
    runs: Vec<RcrRun>,
    seq: usize,
}

impl TestEnv {
    /// A fresh environment, or `None` (with a message) if not root.
    pub fn new(name: &str) -> Option<TestEnv> {
        if !is_root() {
            eprintln!("skipping {name}: rcr needs root (ptrace, restoring PIDs)");
            return None;
        }
        bin_dir();
        become_subreaper();
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("{TMP_PREFIX}{}-{name}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("images")).expect("creating the test dir");
        // As rcr creates its own: 0700 (rcr refuses one others may write).
        fs::set_permissions(dir.join("images"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod 0700 the image dir");
        Some(TestEnv {
            name: name.to_string(),
            images: dir.join("images"),
            go: dir.join("go"),
            log: dir.join("victim.log"),
            dir,
            victim: None,
            pid: 0,
            restore: None,
            restored_pid: None,
            tracked: Vec::new(),
            victim_opts: SpawnOpts::default(),
            rcr_opts: SpawnOpts::default(),
            rcr_env: Vec::new(),
            runs: Vec::new(),
            seq: 0,
        })
    }

    /// Path of a file in this test's dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts victim `name` as `name GO_FILE args...`: stdin /dev/null,
    /// stdout and stderr the O_APPEND log.
    pub fn spawn_victim(&mut self, name: &str, args: &[&str], setsid: bool) -> i32 {
        let mut cmd = Command::new(victim_path(name));
        cmd.arg(&self.go).args(args);
        self.spawn_command(cmd, setsid)
    }

    /// Starts `cmd` (any program, e.g. an interpreter) as the victim: stdin
    /// /dev/null, stdout and stderr the O_APPEND log, signals per
    /// `victim_opts`. Drop kills it.
    pub fn spawn_command(&mut self, mut cmd: Command, setsid: bool) -> i32 {
        let log = fs::OpenOptions::new().create(true).append(true).mode(0o644).open(&self.log).expect("opening the victim log");
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("dup log")).stderr(log);
        prepare(&mut cmd, SpawnOpts { setsid, ..self.victim_opts });
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting victim {:?}: {e}", cmd.get_program()));
        self.pid = child.id() as i32;
        self.victim = Some(child);
        self.pid
    }

    /// Has Drop kill these PIDs too (the other processes of a victim tree),
    /// each only if it is still ours then: its command line names this
    /// test's dir (victims get the go file as argv[1]; children of a victim
    /// inherit its command line), so a PID reused by another test's process
    /// is left alone.
    pub fn track(&mut self, pids: &[i32]) {
        for &p in pids {
            if p > 0 && p != self.pid && !self.tracked.contains(&p) {
                self.tracked.push(p);
            }
        }
    }

    /// Whether `pid` is one of this test's processes: it runs one of our
    /// binaries (a victim, rcr), its command line names this test's dir
    /// (e.g. an interpreter running a script written there), or its parent
    /// is this test process or our rcr restore.
    pub fn is_ours(&self, pid: i32) -> bool {
        if !pid_exists(pid) {
            return false;
        }
        let exe = readlink(format!("/proc/{pid}/exe"));
        let ppid = stat_fields(pid).get(1).and_then(|p| p.parse::<u32>().ok());
        exe.starts_with(&*bin_dir().to_string_lossy())
            || exe.starts_with(RCR)
            || self.cmdline_names_dir(pid)
            || ppid == Some(std::process::id())
            || (ppid.is_some() && ppid == self.restore.as_ref().map(Child::id))
    }

    /// Whether the command line of `pid` contains this test's dir.
    pub fn cmdline_names_dir(&self, pid: i32) -> bool {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        cmdline.contains(&*self.dir.to_string_lossy())
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the victim log has a line for which `pred` holds. Fails
    /// early if the victim (our child) already exited.
    pub fn wait_log(&mut self, what: &str, pred: impl Fn(&str) -> bool) {
        let log = self.log.clone();
        let mut victim = self.victim.take();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(&format!("{what} in the victim log"), || {
                if fs::read_to_string(&log).unwrap_or_default().lines().any(&pred) {
                    return Some(());
                }
                if let Some(v) = victim.as_mut() {
                    if let Some(st) = v.try_wait().expect("try_wait") {
                        panic!("victim exited ({}) before printing {what}", describe(st));
                    }
                }
                None
            })
        }));
        self.victim = victim;
        if let Err(e) = r {
            std::panic::resume_unwind(e);
        }
    }

    pub fn wait_ready(&mut self) {
        self.wait_log("READY", |l| l == "READY");
    }

    /// Runs rcr with `args` (plus -v -v -o LOG) to completion, bounded.
    pub fn rcr(&mut self, tag: &str, args: &[&str]) -> RcrOutput {
        let mut child = self.spawn_rcr(tag, args);
        let st = wait_child(&mut child, &format!("rcr {}", args.join(" ")));
        let run = self.runs.last_mut().expect("run recorded");
        run.status = Some(st);
        RcrOutput {
            status: st,
            stdout: fs::read_to_string(&run.stdout_path).unwrap_or_default(),
            stderr: fs::read_to_string(&run.stderr_path).unwrap_or_default(),
        }
    }

    /// Starts rcr with `args` (plus -v -v -o LOG), stdout/stderr to files.
    pub fn spawn_rcr(&mut self, tag: &str, args: &[&str]) -> Child {
        self.seq += 1;
        let base = self.dir.join(format!("rcr-{}-{tag}", self.seq));
        let run = RcrRun {
            args: args.iter().map(|s| s.to_string()).collect(),
            stdout_path: base.with_extension("out"),
            stderr_path: base.with_extension("err"),
            log_path: base.with_extension("log"),
            status: None,
        };
        let mut cmd = Command::new(RCR);
        cmd.args(args)
            .arg("-v")
            .arg("-v")
            .arg("-o")
            .arg(&run.log_path)
            .stdin(Stdio::null())
            .stdout(File::create(&run.stdout_path).expect("creating rcr stdout file"))
            .stderr(File::create(&run.stderr_path).expect("creating rcr stderr file"));
        cmd.envs(self.rcr_env.iter().map(|(k, v)| (k, v)));
        prepare(&mut cmd, self.rcr_opts);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {RCR}: {e}"));
        self.runs.push(run);
        child
    }

    /// The -v -v log of the last `rcr CMD` run ("" if none or unreadable).
    pub fn rcr_log(&self, cmd: &str) -> String {
        let run = self.runs.iter().rev().find(|r| r.args.first().map(String::as_str) == Some(cmd));
        run.and_then(|r| fs::read_to_string(&r.log_path).ok()).unwrap_or_default()
    }

    /// `rcr dump -t PID -D images [extra]`, expected to succeed and to leave
    /// all image files behind.
    pub fn dump_ok(&mut self, extra: &[&str]) {
        let out = self.dump(extra);
        assert!(out.status.success(), "rcr dump failed ({}):\n{}", describe(out.status), out.stderr);
        for f in image_files(self.pid) {
            assert!(self.images.join(&f).is_file(), "rcr dump succeeded but {f} is missing from the image dir");
        }
    }

    /// `rcr dump -t PID -D images [extra]`, whatever the outcome.
    pub fn dump(&mut self, extra: &[&str]) -> RcrOutput {
        let pid = self.pid.to_string();
        let images = self.images.to_string_lossy().into_owned();
        let mut args = vec!["dump", "-t", &pid, "-D", &images];
        args.extend_from_slice(extra);
        self.rcr("dump", &args)
    }

    /// `rcr dump` with `args`, which must fail with an error containing
    /// every one of `want`, leaving no image set and the victim running
    /// untraced.
    pub fn assert_dump_refused(&mut self, args: &[&str], want: &[&str]) {
        let out = self.dump(args);
        assert!(!out.status.success(), "rcr dump {args:?} should have been refused");
        for w in want {
            assert!(out.stderr.contains(w), "rcr dump {args:?}: the error should name {w:?}:\n{}", out.stderr);
        }
        assert!(!self.images.join("inventory.img").exists(), "a refused dump left inventory.img behind");
        std::thread::sleep(Duration::from_millis(100));
        assert_runs_free(self.pid, "after the refused dump");
    }

    /// Reaps the victim after a dump that killed it, then waits until its
    /// PID is free.
    pub fn reap_victim(&mut self) -> ExitStatus {
        let mut v = self.victim.take().expect("no victim to reap");
        let st = wait_child(&mut v, "the dumped victim to die (rcr dump should kill it)");
        let pid = self.pid;
        wait_until(&format!("/proc/{pid} to go away after reaping the victim"), || (!pid_exists(pid)).then_some(()));
        st
    }

    /// Waits for the victim (still our child) to exit and returns its status.
    pub fn wait_victim_exit(&mut self) -> ExitStatus {
        let mut v = self.victim.take().expect("no victim");
        wait_child(&mut v, "the victim to exit")
    }

    fn pidfile(&self, n: usize) -> PathBuf {
        self.dir.join(format!("restore-{n}.pid"))
    }

    /// Starts `rcr restore -D images --pidfile F [extra]` and waits for the
    /// pidfile; returns the PID in it. Fails early if rcr exits with an
    /// error first.
    pub fn restore(&mut self, extra: &[&str]) -> i32 {
        assert!(self.restore.is_none(), "a restore is already running");
        let pidfile = self.pidfile(self.seq + 1);
        let _ = fs::remove_file(&pidfile);
        let images = self.images.to_string_lossy().into_owned();
        let pf = pidfile.to_string_lossy().into_owned();
        let mut args = vec!["restore", "-D", &images, "--pidfile", &pf];
        args.extend_from_slice(extra);
        let mut child = self.spawn_rcr("restore", &args);
        self.restored_pid = Some(self.pid);
        let detached = extra.iter().any(|a| *a == "-d" || *a == "--restore-detached");
        let read_pid = || fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until("the restore pidfile", || {
                if read_pid().is_some() {
                    return Some(());
                }
                if let Some(st) = child.try_wait().expect("try_wait") {
                    // With -d rcr may exit right after writing the pidfile.
                    if detached && st.success() && read_pid().is_some() {
                        return Some(());
                    }
                    panic!("rcr restore exited ({}) without writing the pidfile", describe(st));
                }
                None
            })
        }));
        self.restore = Some(child);
        if let Err(e) = r {
            std::panic::resume_unwind(e);
        }
        // Let a write in progress finish before trusting the content.
        std::thread::sleep(Duration::from_millis(20));
        read_pid().expect("pidfile vanished")
    }

    /// Waits for the running `rcr restore` to exit.
    pub fn wait_restore_exit(&mut self) -> ExitStatus {
        let mut child = self.restore.take().expect("no restore running");
        let st = wait_child(&mut child, "rcr restore to exit");
        if let Some(run) = self.runs.iter_mut().rev().find(|r| r.args.first().map(String::as_str) == Some("restore")) {
            run.status = Some(st);
        }
        st
    }

    /// Creates the go file, atomically, with `content`.
    pub fn go(&self, content: &str) {
        let tmp = self.dir.join("go.tmp");
        fs::write(&tmp, content).expect("writing go.tmp");
        fs::rename(&tmp, &self.go).expect("renaming go.tmp to go");
    }

    /// Panics with the victim's FAIL lines, if any.
    pub fn assert_no_fail(&self) {
        let log = self.log_text();
        let fails: Vec<&str> = log.lines().filter(|l| l.starts_with("FAIL")).collect();
        assert!(fails.is_empty(), "victim reported: {fails:?}");
    }

    pub fn assert_log_pass(&self, times: usize) {
        self.assert_no_fail();
        let log = self.log_text();
        let n = log.lines().filter(|l| *l == "PASS").count();
        assert_eq!(n, times, "expected {times} PASS line(s) in the victim log, found {n}");
    }

    /// The common path: snapshot, dump (killing the victim), reap it, restore
    /// with a pidfile, check same PID and same snapshot. Leaves the restore
    /// running (the victim is waiting for go).
    pub fn dump_kill_restore(&mut self) {
        let before = snapshot(self.pid);
        self.dump_ok(&[]);
        self.reap_victim();
        let pid = self.restore(&[]);
        assert_eq!(pid, self.pid, "restored with a different PID");
        assert_same_snapshot(&before, &snapshot(pid), "after restore");
    }

    /// Touches go, waits for `rcr restore` to exit with 0 and checks PASS.
    pub fn go_expect_pass(&mut self) {
        self.go("");
        let st = self.wait_restore_exit();
        self.assert_no_fail();
        assert!(st.success(), "rcr restore exited with {} (it should pass on the victim's exit status)", describe(st));
        self.assert_log_pass(1);
    }

    /// After a `dump -R`: touches go, waits for the original victim (still
    /// our child) to exit with 0 and checks PASS.
    pub fn go_expect_original_pass(&mut self) {
        self.go("");
        let st = self.wait_victim_exit();
        self.assert_no_fail();
        assert!(st.success(), "the original victim exited with {} after dump -R", describe(st));
        self.assert_log_pass(1);
    }

    /// Everything the failure report shows.
    fn report(&self) -> String {
        fn tail(p: &Path, n: usize) -> String {
            let s = fs::read_to_string(p).unwrap_or_else(|e| format!("<{e}>"));
            let lines: Vec<&str> = s.lines().collect();
            let skip = lines.len().saturating_sub(n);
            let mut out = if skip > 0 { format!("[... {skip} lines skipped]\n") } else { String::new() };
            out.push_str(&lines[skip..].join("\n"));
            out
        }
        let mut r = format!("==== {} failed; test dir {}\n", self.name, self.dir.display());
        let _ = write!(r, "---- victim log (pid {}):\n{}\n", self.pid, tail(&self.log, 60));
        for run in &self.runs {
            let st = run.status.map(describe).unwrap_or_else(|| "still running / killed".into());
            let _ = write!(
                r,
                "---- rcr {} -> {st}\n-- stdout:\n{}\n-- stderr:\n{}\n-- log (-v -v):\n{}\n",
                run.args.join(" "),
                tail(&run.stdout_path, 40),
                tail(&run.stderr_path, 40),
                tail(&run.log_path, 80)
            );
        }
        if let Ok(entries) = fs::read_dir(&self.images) {
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| format!("{} ({} bytes)", e.file_name().to_string_lossy(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                .collect();
            names.sort();
            let _ = writeln!(r, "---- image dir: {names:?}");
        }
        r
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            eprintln!("{}", self.report());
        }
        // The restored process is not our child until rcr restore dies; kill it
        // by PID, but only if it is ours (see is_ours). The same for the
        // other processes of a tree.
        let by_pid: Vec<i32> = self.restored_pid.into_iter().chain(self.tracked.iter().copied()).collect();
        for &pid in &by_pid {
            let ours = if Some(pid) == self.restored_pid { self.is_ours(pid) } else { self.cmdline_names_dir(pid) };
            if ours {
                // SAFETY: kill(2) on a PID we checked is one of this test's processes.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for child in [self.restore.as_mut(), self.victim.as_mut()].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Reap the restored processes if they ended up as our (subreaper)
        // children.
        let start = Instant::now();
        for pid in by_pid {
            while pid_exists(pid) && start.elapsed() < Duration::from_secs(2) {
                let mut status = 0;
                // SAFETY: waitpid on a specific PID with a valid out pointer.
                if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } < 0 {
                    break; // not our child
                }
                std::thread::sleep(POLL);
            }
        }
        if failed && std::env::var_os("RCR_E2E_KEEP").is_some() {
            eprintln!("keeping {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits (bounded) until no dump watchdog of a killed rcr runs any more:
/// orphaned, they are reparented to this test process (a child
/// subreaper); their command line is `rcr __watchdog`. (Those of other
/// tests running in parallel are waited for too: harmless.)
pub fn wait_watchdogs(what: &str) {
    let me = std::process::id().to_string();
    let start = Instant::now();
    loop {
        let busy: Vec<i32> = fs::read_dir("/proc")
            .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_else(|_| Vec::new())
            .into_iter()
            .filter(|&p: &i32| stat_fields(p).get(1) == Some(&me))
            .filter(|p| fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"__watchdog")))
            .collect();
        if busy.is_empty() {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{what}: the dump watchdog(s) {busy:?} still run after 15 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}
