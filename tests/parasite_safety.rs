//! Parasite safety: a dump that lets the target run (`-R`), or a dump whose
//! rcr dies (SIGKILL) at any moment, must leave the target exactly as it
//! was: same registers (general, whole XSAVE area), same signal mask, same
//! memory byte for byte, same /proc/PID/maps (no parasite region left:
//! when rcr is killed, the dump's watchdog unmaps it, see
//! src/dump/watchdog.rs; the test waits for the watchdog to finish), same
//! fds and signal state, not traced, sleeping, and still one thread (the
//! drain's second writer thread is gone).
//!
//! The victim is `steady` (tests/victims/steady.c): it loads a pattern into
//! zmm16-31, k1-7 and most general registers, then blocks in a raw pause()
//! right after; SIGUSR1 wakes it, and it checks its registers and memory
//! itself and prints PASS.
//!
//! The test reads the victim's state from outside with its own ptrace
//! (PTRACE_SEIZE + PTRACE_INTERRUPT, GETREGS, GETREGSET NT_X86_XSTATE,
//! GETSIGMASK, process_vm_readv of every readable VMA, then PTRACE_DETACH).
//! Interrupting a task in pause() shows rax = -514 (ERESTARTNOHAND),
//! orig_rax = 34 and rip after the syscall instruction; after the detach it
//! re-enters pause, so the same reading is expected before and after.
//!
//! Tests: `comparison_detects_changes` (the checks themselves see a changed
//! register / vector register / memory byte, and so does the victim),
//! `leave_running_is_invisible[_avx]` (dump -R), `sigkill_at_every_fault_point`
//! (RCR_FAULT_KILL_AT=1, 2, ... on one victim), `sigkill_at_random_times`
//! (SIGKILL from outside, 100 delays over a dump's duration) and
//! `sigkill_during_remote_syscall` (SIGKILL while the victim is seen inside
//! a syscall rcr makes it run: mmap or munmap).
//!
//! Needs root; without it every test prints a message and passes.
//! `RCR_KILL_SEED=N` replays the random delays of `sigkill_at_random_times`.
#![allow(unsafe_code)]
mod common;

use common::*;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const NT_X86_XSTATE: usize = 0x202;
const PTRACE_EVENT_STOP: i32 = 128;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
const NR_PAUSE: u64 = 34;
const ERESTARTNOHAND: i64 = 514;
const PAGE: u64 = 4096;
/// Bound of a whole test.
const TEST_BOUND: Duration = Duration::from_secs(240);

// ---------------------------------------------------------------------------
// Reading a task from outside
// ---------------------------------------------------------------------------

fn ptrace(req: libc::c_uint, pid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: callers pass integers or pointers to live buffers of the size
    // the request writes.
    let r = unsafe { libc::ptrace(req, pid, addr as *mut libc::c_void, data as *mut libc::c_void) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Holds `pid` seized and in an interrupt stop; detaches on drop (also
/// when a check panics), so the victim is never left traced by us.
struct Seized(i32);

impl Seized {
    fn new(pid: i32) -> Seized {
        ptrace(libc::PTRACE_SEIZE, pid, 0, 0).unwrap_or_else(|e| panic!("PTRACE_SEIZE {pid}: {e}"));
        let s = Seized(pid);
        ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0).unwrap_or_else(|e| panic!("PTRACE_INTERRUPT {pid}: {e}"));
        loop {
            let mut status = 0;
            // SAFETY: waitpid on a specific pid with a valid out pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
            if r == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            assert_eq!(r, pid, "waitpid {pid}: {}", io::Error::last_os_error());
            assert!(libc::WIFSTOPPED(status), "pid {pid} ended while we interrupted it (wait status {status:#x})");
            if status >> 16 == PTRACE_EVENT_STOP {
                return s;
            }
            // A signal stop came first (nothing should send any): note it,
            // deliver it, and wait for the interrupt stop.
            let sig = libc::WSTOPSIG(status);
            eprintln!("pid {pid}: signal {sig} arrived while we interrupted it");
            ptrace(libc::PTRACE_CONT, pid, 0, sig as usize).unwrap_or_else(|e| panic!("PTRACE_CONT {pid}: {e}"));
        }
    }
}

impl Drop for Seized {
    fn drop(&mut self) {
        if let Err(e) = ptrace(libc::PTRACE_DETACH, self.0, 0, 0) {
            if !std::thread::panicking() {
                panic!("PTRACE_DETACH {}: {e}", self.0);
            }
        }
    }
}

/// One VMA and its content.
#[derive(Clone)]
struct Region {
    line: String,
    start: u64,
    end: u64,
    data: Vec<u8>,
    /// Pages process_vm_readv could not read (their bytes read as 0).
    unreadable: Vec<u64>,
}

/// Everything compared.
#[derive(Clone)]
struct Capture {
    regs: libc::user_regs_struct,
    xsave: Vec<u8>,
    sigmask: u64,
    /// rseq registration (pointer, size): the kernel writes that area.
    rseq: (u64, u32),
    maps: String,
    regions: Vec<Region>,
    /// The harness's snapshot (maps, fds, cwd, SigBlk, ...) plus more
    /// status fields.
    snap: Snapshot,
}

fn read_remote(pid: i32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let local = libc::iovec { iov_base: buf[done..].as_mut_ptr().cast(), iov_len: buf.len() - done };
        let remote = libc::iovec { iov_base: (addr as usize + done) as *mut libc::c_void, iov_len: buf.len() - done };
        // SAFETY: `local` is the unfilled tail of `buf`; `remote` is only
        // read, in the other process.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            return Err(if n == 0 { io::Error::from(io::ErrorKind::UnexpectedEof) } else { io::Error::last_os_error() });
        }
        done += n as usize;
    }
    Ok(())
}

fn parse_range(line: &str) -> (u64, u64) {
    let range = line.split_whitespace().next().unwrap_or("");
    let (a, b) = range.split_once('-').unwrap_or_else(|| panic!("bad maps line {line:?}"));
    (u64::from_str_radix(a, 16).expect("maps start"), u64::from_str_radix(b, 16).expect("maps end"))
}

fn maps_name(line: &str) -> &str {
    // start-end perms offset dev inode [name]
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start();
        rest = rest.find(' ').map(|i| &rest[i..]).unwrap_or("");
    }
    rest.trim()
}

fn read_regions(pid: i32, maps: &str) -> Vec<Region> {
    let mut out = Vec::new();
    for line in maps.lines() {
        let perms = line.split_whitespace().nth(1).unwrap_or("");
        let name = maps_name(line);
        if !perms.starts_with('r') || matches!(name, "[vvar]" | "[vvar_vclock]" | "[vsyscall]") {
            continue;
        }
        let (start, end) = parse_range(line);
        let mut data = vec![0u8; (end - start) as usize];
        let mut unreadable = Vec::new();
        if read_remote(pid, start, &mut data).is_err() {
            data.fill(0);
            for (i, page) in data.chunks_mut(PAGE as usize).enumerate() {
                let at = start + i as u64 * PAGE;
                if read_remote(pid, at, page).is_err() {
                    page.fill(0);
                    unreadable.push(at);
                }
            }
        }
        out.push(Region { line: line.to_string(), start, end, data, unreadable });
    }
    out
}

/// Reads the whole state of `pid`, holding it in an interrupt stop.
fn capture(pid: i32) -> Capture {
    let s = Seized::new(pid);
    // SAFETY: all-zero is a valid user_regs_struct.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs as *mut _ as usize).unwrap_or_else(|e| panic!("PTRACE_GETREGS {pid}: {e}"));
    let mut xsave = vec![0u8; 1 << 16];
    let mut iov = libc::iovec { iov_base: xsave.as_mut_ptr().cast(), iov_len: xsave.len() };
    ptrace(libc::PTRACE_GETREGSET, pid, NT_X86_XSTATE, &mut iov as *mut _ as usize)
        .unwrap_or_else(|e| panic!("PTRACE_GETREGSET NT_X86_XSTATE {pid}: {e}"));
    xsave.truncate(iov.iov_len);
    let mut sigmask = 0u64;
    ptrace(libc::PTRACE_GETSIGMASK, pid, 8, &mut sigmask as *mut u64 as usize).unwrap_or_else(|e| panic!("PTRACE_GETSIGMASK {pid}: {e}"));
    let mut rseq_conf = [0u64; 3]; // pointer, size+signature, flags+pad
    let rseq = match ptrace(PTRACE_GET_RSEQ_CONFIGURATION, pid, 24, rseq_conf.as_mut_ptr() as usize) {
        Ok(_) => (rseq_conf[0], rseq_conf[1] as u32),
        Err(_) => (0, 0),
    };
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_else(|e| panic!("reading /proc/{pid}/maps: {e}"));
    let regions = read_regions(pid, &maps);
    let mut snap = snapshot(pid);
    for k in ["SigPnd", "ShdPnd", "SigCgt", "NoNewPrivs", "Seccomp", "Cpus_allowed_list", "Threads"] {
        snap.attrs.insert(format!("status {k}"), status_field(pid, k).unwrap_or_default());
    }
    drop(s);
    Capture { regs, xsave, sigmask, rseq, maps, regions, snap }
}

// ---------------------------------------------------------------------------
// Comparing
// ---------------------------------------------------------------------------

fn reg_list(r: &libc::user_regs_struct) -> [(&'static str, u64); 27] {
    [
        ("r15", r.r15),
        ("r14", r.r14),
        ("r13", r.r13),
        ("r12", r.r12),
        ("rbp", r.rbp),
        ("rbx", r.rbx),
        ("r11", r.r11),
        ("r10", r.r10),
        ("r9", r.r9),
        ("r8", r.r8),
        ("rax", r.rax),
        ("rcx", r.rcx),
        ("rdx", r.rdx),
        ("rsi", r.rsi),
        ("rdi", r.rdi),
        ("orig_rax", r.orig_rax),
        ("rip", r.rip),
        ("cs", r.cs),
        ("eflags", r.eflags),
        ("rsp", r.rsp),
        ("ss", r.ss),
        ("fs_base", r.fs_base),
        ("gs_base", r.gs_base),
        ("ds", r.ds),
        ("es", r.es),
        ("fs", r.fs),
        ("gs", r.gs),
    ]
}

/// What byte `off` of a standard-format XSAVE area holds.
fn xsave_field(off: usize) -> String {
    let legacy = match off {
        0..=1 => Some("FCW".to_string()),
        2..=3 => Some("FSW".into()),
        4..=5 => Some("FTW (abridged) + reserved".into()),
        6..=7 => Some("FOP".into()),
        8..=15 => Some("FIP".into()),
        16..=23 => Some("FDP".into()),
        24..=27 => Some("MXCSR".into()),
        28..=31 => Some("MXCSR_MASK".into()),
        32..=159 => Some(format!("st{} byte {}", (off - 32) / 16, (off - 32) % 16)),
        160..=415 => Some(format!("xmm{} byte {}", (off - 160) / 16, (off - 160) % 16)),
        416..=463 => Some("legacy reserved".into()),
        464..=511 => Some("sw_reserved (fx_sw_bytes)".into()),
        512..=519 => Some("XSTATE_BV".into()),
        520..=527 => Some("XCOMP_BV".into()),
        528..=575 => Some("XSAVE header reserved".into()),
        _ => None,
    };
    if let Some(l) = legacy {
        return l;
    }
    for i in 2..=19u32 {
        // cpuid leaf 0xD: XSAVE component sizes and standard-format offsets.
        let c = std::arch::x86_64::__cpuid_count(0xd, i);
        let (size, base) = (c.eax as usize, c.ebx as usize);
        if size == 0 || off < base || off >= base + size {
            continue;
        }
        let rel = off - base;
        return match i {
            2 => format!("YMM_Hi128: ymm{} byte {}", rel / 16, 16 + rel % 16),
            5 => format!("opmask: k{} byte {}", rel / 8, rel % 8),
            6 => format!("ZMM_Hi256: zmm{} byte {}", rel / 32, 32 + rel % 32),
            7 => format!("Hi16_ZMM: zmm{} byte {}", 16 + rel / 64, rel % 64),
            9 => format!("PKRU byte {rel}"),
            _ => format!("xstate component {i} byte {rel}"),
        };
    }
    "outside every known component".into()
}

/// Every difference in registers, XSAVE area, mask, memory (of the VMAs of
/// `want`, which must all still be there) and the snapshot attributes.
/// Maps are compared by the caller.
/// `dead_stack`: ignore the victim's stack below its red zone (below
/// rsp - 128), which the ABI lets anyone overwrite (signal frames do) and
/// where rcr writes the return frame of a guarded remote syscall: when
/// rcr is killed inside one, that frame stays there.
fn diff_state(want: &Capture, got: &Capture, dead_stack: bool) -> String {
    let mut msg = String::new();
    for ((name, a), (_, b)) in reg_list(&want.regs).iter().zip(reg_list(&got.regs).iter()) {
        if a != b {
            let _ = writeln!(msg, "register {name}: before {a:#x}, after {b:#x}");
        }
    }
    if want.xsave.len() != got.xsave.len() {
        let _ = writeln!(msg, "XSAVE area: {} bytes before, {} after", want.xsave.len(), got.xsave.len());
    }
    let xdiff: Vec<usize> = want.xsave.iter().zip(&got.xsave).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i).collect();
    for &i in xdiff.iter().take(16) {
        let _ = writeln!(msg, "XSAVE byte {i} ({}): before {:#04x}, after {:#04x}", xsave_field(i), want.xsave[i], got.xsave[i]);
    }
    if xdiff.len() > 16 {
        let _ = writeln!(msg, "... {} differing XSAVE bytes in all", xdiff.len());
    }
    if want.sigmask != got.sigmask {
        let _ = writeln!(msg, "signal mask: before {:#018x}, after {:#018x}", want.sigmask, got.sigmask);
    }
    let mut reported = 0;
    for w in &want.regions {
        let Some(g) = got.regions.iter().find(|g| g.line == w.line) else {
            let _ = writeln!(msg, "VMA {:?} is gone (or changed its maps line)", w.line);
            continue;
        };
        if w.unreadable != g.unreadable {
            let _ = writeln!(msg, "VMA {:?}: unreadable pages before {:x?}, after {:x?}", w.line, w.unreadable, g.unreadable);
        }
        let red_zone = want.regs.rsp.saturating_sub(128);
        let in_stack = want.regs.rsp >= w.start && want.regs.rsp < w.start + w.data.len() as u64;
        let dead = |i: usize| dead_stack && in_stack && w.start + (i as u64) < red_zone;
        let diffs: Vec<usize> =
            w.data.iter().zip(&g.data).enumerate().filter(|(i, (a, b))| a != b && !dead(*i)).map(|(i, _)| i).collect();
        if diffs.is_empty() {
            continue;
        }
        reported += 1;
        if reported > 8 {
            continue;
        }
        let _ = writeln!(msg, "memory of VMA {:?}: {} bytes differ", w.line, diffs.len());
        for &i in diffs.iter().take(8) {
            let addr = w.start + i as u64;
            let rseq = if addr >= want.rseq.0 && addr < want.rseq.0 + want.rseq.1 as u64 {
                format!(" (in the rseq area at {:#x}, byte {})", want.rseq.0, addr - want.rseq.0)
            } else {
                String::new()
            };
            let _ = writeln!(msg, "  at {addr:#x} (offset {i:#x}){rseq}: before {:#04x}, after {:#04x}", w.data[i], g.data[i]);
        }
    }
    if reported > 8 {
        let _ = writeln!(msg, "... memory differs in {reported} VMAs in all");
    }
    let keys: std::collections::BTreeSet<&String> = want.snap.attrs.keys().chain(got.snap.attrs.keys()).collect();
    for k in keys {
        let (a, b) = (want.snap.attrs.get(k), got.snap.attrs.get(k));
        if a != b {
            let _ = writeln!(msg, "{k}: before {a:?}, after {b:?}");
        }
    }
    msg
}

/// Whether `line` is a parasite region left behind: `rwxs 00000000 00:01
/// INODE /dev/zero (deleted)`.
fn is_leftover(line: &str) -> bool {
    let f: Vec<&str> = line.split_whitespace().collect();
    f.len() == 7
        && f[1] == "rwxs"
        && f[2] == "00000000"
        && f[3] == "00:01"
        && f[4].parse::<u64>().is_ok()
        && f[5] == "/dev/zero"
        && f[6] == "(deleted)"
}

/// Checks the maps after a run: `now` is `orig` (which has no leftovers)
/// plus leftover parasite regions, of which at most `allowed` are new
/// since `prev`; leftovers of `prev` may be gone (rcr removes the ones it
/// recognises at its next dump). Returns (new leftover lines, removed ones).
fn check_maps(orig: &str, prev: &str, now: &str, allowed: usize, what: &str) -> (Vec<String>, Vec<String>) {
    let rest: Vec<&str> = now.lines().filter(|l| !is_leftover(l) || orig.lines().any(|o| o == *l)).collect();
    let added: Vec<String> = now.lines().filter(|l| is_leftover(l) && !prev.lines().any(|p| p == *l)).map(str::to_string).collect();
    let removed: Vec<String> = prev.lines().filter(|l| is_leftover(l) && !now.lines().any(|n| n == *l)).map(str::to_string).collect();
    let ok = rest == orig.lines().collect::<Vec<_>>() && added.len() <= allowed;
    assert!(
        ok,
        "{what}: /proc/PID/maps changed beyond {allowed} new leftover parasite region(s) (- before this run, + after):\n{}\n\
         changes since the start (- original, + now):\n{}\nfull maps before this run:\n{prev}\nfull maps after:\n{now}",
        diff_lines(prev, now),
        diff_lines(orig, now)
    );
    (added, removed)
}

// ---------------------------------------------------------------------------
// The victim
// ---------------------------------------------------------------------------

fn state_char(pid: i32) -> Option<char> {
    stat_fields(pid).first().and_then(|s| s.chars().next())
}

/// Waits until `pid` sleeps in pause() (state S, /proc/PID/syscall says
/// 34), bounded; then gives it `settle` more.
fn wait_in_pause(pid: i32, what: &str, settle: Duration) {
    let start = Instant::now();
    loop {
        let sc = fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let st = state_char(pid);
        if st == Some('S') && sc.split_whitespace().next() == Some("34") {
            break;
        }
        assert!(pid_exists(pid) && st != Some('Z'), "{what}: pid {pid} died: {}", death(pid));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: pid {pid} did not get back into pause() within 5 s: state {st:?}, /proc/PID/syscall {sc:?}, TracerPid {:?}",
            status_field(pid, "TracerPid")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(settle);
}

/// How our (unreaped) child `pid` ended, peeked with WNOWAIT so that the
/// harness still reaps it.
fn death(pid: i32) -> String {
    // SAFETY: all-zero siginfo_t is valid; waitid writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on one PID with a valid out pointer; WNOWAIT leaves
    // the child waitable.
    let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) };
    // SAFETY: waitid filled si_status for a child that ended.
    let status = unsafe { info.si_status() };
    match (r, info.si_code) {
        (0, libc::CLD_EXITED) => format!("exited with code {status}"),
        (0, libc::CLD_KILLED) => format!("killed by signal {status}"),
        (0, libc::CLD_DUMPED) => format!("killed by signal {status} (core dumped)"),
        _ => format!("gone (waitid {r}, si_code {}, state {:?})", info.si_code, stat_fields(pid).first()),
    }
}

/// The state of a free (untraced) victim sleeping in pause.
fn assert_sleeping_free(pid: i32, what: &str) {
    assert_eq!(state_char(pid), Some('S'), "{what}: pid {pid} is not sleeping (stat {:?})", stat_fields(pid).first());
    assert_runs_free(pid, what);
}

fn start_steady(t: &mut TestEnv, args: &[&str]) -> (i32, Capture) {
    let pid = t.spawn_victim("steady", args, false);
    t.wait_ready();
    wait_in_pause(pid, "after READY", Duration::from_millis(100));
    assert_sleeping_free(pid, "before the dump");
    let c = capture(pid);
    let rax = c.regs.rax as i64;
    assert!(
        c.regs.orig_rax == NR_PAUSE && rax == -ERESTARTNOHAND,
        "the victim is not interrupted in pause(): orig_rax {} rax {rax} (expected 34, -514)",
        c.regs.orig_rax as i64
    );
    eprintln!("{}: victim {pid}: {}", t.name, t.log_text().lines().find(|l| l.starts_with("mode ")).unwrap_or("?"));
    (pid, c)
}

/// Wakes the victim with SIGUSR1 and checks it passes its own checks.
fn wake_expect_pass(t: &mut TestEnv) {
    // SAFETY: kill(2) on our own victim's PID (still our unreaped child).
    assert_eq!(unsafe { libc::kill(t.pid, libc::SIGUSR1) }, 0, "kill SIGUSR1 {}", t.pid);
    let st = t.wait_victim_exit();
    t.assert_no_fail();
    assert!(st.success(), "the victim exited with {} after SIGUSR1", describe(st));
    t.assert_log_pass(1);
}

// ---------------------------------------------------------------------------
// Running rcr with an environment / killing it
// ---------------------------------------------------------------------------

struct Run {
    desc: String,
    dir: PathBuf,
    log: PathBuf,
    out: PathBuf,
    err: PathBuf,
    status: Option<ExitStatus>,
}

/// Our own rcr runner (the harness's has no environment): `rcr dump -t PID
/// -D DIR -R -v -v -o LOG`, with `RCR_FAULT_KILL_AT` if given. Prints the
/// last runs' output if the test fails; kills a still running rcr.
struct Runner {
    base: PathBuf,
    runs: Vec<Run>,
    child: Option<Child>,
}

impl Runner {
    fn new(t: &TestEnv) -> Runner {
        Runner { base: t.dir.clone(), runs: Vec::new(), child: None }
    }

    fn spawn(&mut self, pid: i32, kill_at: Option<u32>) -> &mut Child {
        let n = self.runs.len() + 1;
        let run = Run {
            desc: format!("run {n}: RCR_FAULT_KILL_AT={kill_at:?} rcr dump -t {pid} -R"),
            dir: self.base.join(format!("img-{n}")),
            log: self.base.join(format!("rcr-{n}.log")),
            out: self.base.join(format!("rcr-{n}.out")),
            err: self.base.join(format!("rcr-{n}.err")),
            status: None,
        };
        let mut cmd = Command::new(RCR);
        cmd.args(["dump", "-t", &pid.to_string(), "-D"])
            .arg(&run.dir)
            .args(["-R", "-v", "-v", "-o"])
            .arg(&run.log)
            .env_remove("RCR_FAULT_KILL_AT")
            .stdin(Stdio::null())
            .stdout(File::create(&run.out).expect("rcr stdout file"))
            .stderr(File::create(&run.err).expect("rcr stderr file"));
        if let Some(k) = kill_at {
            cmd.env("RCR_FAULT_KILL_AT", k.to_string());
        }
        prepare(&mut cmd, SpawnOpts::default());
        self.runs.push(run);
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("starting {RCR}: {e}")));
        self.child.as_mut().unwrap()
    }

    fn wait(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("no rcr running");
        let st = wait_child(&mut c, "rcr dump");
        self.runs.last_mut().unwrap().status = Some(st);
        st
    }

    fn last(&self) -> &Run {
        self.runs.last().expect("no run")
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.last().log).unwrap_or_default()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let skip = self.runs.len().saturating_sub(3);
            for r in &self.runs[skip..] {
                let st = r.status.map(describe).unwrap_or_else(|| "killed / still running".into());
                eprintln!(
                    "---- {} -> {st}\n-- stderr:\n{}\n-- log:\n{}",
                    r.desc,
                    fs::read_to_string(&r.err).unwrap_or_default(),
                    fs::read_to_string(&r.log).unwrap_or_default()
                );
            }
        }
    }
}

/// `fault injection: SIGKILL at point N (NAME)` in a log: NAME.
fn fault_point_name(log: &str, n: u32) -> Option<String> {
    let prefix = format!("fault injection: SIGKILL at point {n} (");
    log.lines().find_map(|l| l.find(&prefix).map(|i| l[i + prefix.len()..].trim_end_matches(')').to_string()))
}

/// After an rcr run (killed or not): the victim is back in pause, free,
/// with `orig`'s registers, XSAVE, mask, memory and attributes, and its
/// maps are checked by [`check_maps`]. Returns the new maps and the leftover
/// regions that appeared and went away.
fn check_after_run(pid: i32, orig: &Capture, prev_maps: &str, what: &str, killed: bool) -> (String, Vec<String>, Vec<String>) {
    wait_watchdogs(what);
    std::thread::sleep(Duration::from_millis(if killed { 100 } else { 20 }));
    wait_in_pause(pid, what, Duration::ZERO);
    assert_sleeping_free(pid, what);
    let now = capture(pid);
    let again = format!("{what} (after our own look)");
    wait_in_pause(pid, &again, Duration::ZERO);
    assert_sleeping_free(pid, &again);
    let (added, removed) = check_maps(&orig.maps, prev_maps, &now.maps, 0, what);
    let threads = fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    assert_eq!(threads, 1, "{what}: the victim has {threads} threads (a writer thread of the parasite left running?)");
    let d = diff_state(orig, &now, killed);
    assert!(d.is_empty(), "{what}: the victim's state changed:\n{d}");
    (now.maps, added, removed)
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// The comparison itself sees a changed register, vector register and
/// memory byte, and the victim's own check catches them too.
#[test]
fn comparison_detects_changes() {
    let Some(mut t) = TestEnv::new("comparison_detects_changes") else { return };
    let (pid, before) = start_steady(&mut t, &[]);
    let avx512 = t.log_text().contains("mode avx512");
    {
        let _s = Seized::new(pid);
        let mut regs = before.regs;
        regs.r13 ^= 1;
        ptrace(libc::PTRACE_SETREGS, pid, 0, &regs as *const _ as usize).expect("SETREGS");
        let mut x = before.xsave.clone();
        // zmm20 byte 3 (Hi16_ZMM), or ymm5 byte 3 (legacy xmm area).
        let off = if avx512 {
            std::arch::x86_64::__cpuid_count(0xd, 7).ebx as usize + 4 * 64 + 3 // Hi16_ZMM offset
        } else {
            160 + 5 * 16 + 3
        };
        x[off] ^= 0x80;
        let mut iov = libc::iovec { iov_base: x.as_mut_ptr().cast(), iov_len: x.len() };
        ptrace(libc::PTRACE_SETREGSET, pid, NT_X86_XSTATE, &mut iov as *mut _ as usize).expect("SETREGSET");
        let big = before.regions.iter().max_by_key(|r| r.end - r.start).expect("regions");
        let addr = big.start + 12345;
        let mut b = [big.data[12345] ^ 1];
        let local = libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: 1 };
        let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: 1 };
        // SAFETY: writes one byte of the victim's largest (heap) VMA.
        assert_eq!(unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) }, 1, "process_vm_writev");
    }
    wait_in_pause(pid, "after our changes", Duration::ZERO);
    let after = capture(pid);
    let d = diff_state(&before, &after, false);
    eprintln!("differences found, as expected:\n{d}");
    assert!(d.contains("register r13"), "r13 change not seen:\n{d}");
    let want = if avx512 { "Hi16_ZMM: zmm20 byte 3" } else { "xmm5 byte 3" };
    assert!(d.contains(want), "vector change not seen ({want}):\n{d}");
    assert!(d.contains("1 bytes differ"), "memory change not seen:\n{d}");
    // SAFETY: kill(2) on our own victim.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let st = t.wait_victim_exit();
    assert_eq!(st.code(), Some(1), "the victim should have failed its own check ({})", describe(st));
    let log = t.log_text();
    assert!(log.contains("FAIL: r13 is"), "the victim did not report r13:\n{log}");
}

#[test]
fn leave_running_is_invisible() {
    leave_running_check("leave_running_is_invisible", &[]);
}

/// The same with the victim's AVX path (ymm0-15), also on AVX-512 machines.
#[test]
fn leave_running_is_invisible_avx() {
    leave_running_check("leave_running_is_invisible_avx", &["avx"]);
}

/// dump -R, then everything must read back exactly as before.
fn leave_running_check(name: &str, args: &[&str]) {
    let Some(mut t) = TestEnv::new(name) else { return };
    let (pid, before) = start_steady(&mut t, args);
    t.dump_ok(&["-R"]);
    assert!(t.victim.as_mut().unwrap().try_wait().unwrap().is_none(), "dump -R killed the victim");
    wait_in_pause(pid, "after dump -R", Duration::from_millis(100));
    assert_sleeping_free(pid, "after dump -R");
    let after = capture(pid);
    wait_in_pause(pid, "after dump -R (after our own look)", Duration::ZERO);
    assert_sleeping_free(pid, "after dump -R (after our own look)");
    let mut msg = String::new();
    if before.maps != after.maps {
        let _ = write!(msg, "/proc/PID/maps differ (- before, + after):\n{}", diff_lines(&before.maps, &after.maps));
    }
    msg.push_str(&diff_state(&before, &after, false));
    assert!(msg.is_empty(), "dump -R left traces in the victim:\n{msg}");
    wake_expect_pass(&mut t);
}

/// Kills rcr at each of its fault points in turn (RCR_FAULT_KILL_AT=1, 2,
/// ...) on the same victim, until a dump gets through all of them.
#[test]
fn sigkill_at_every_fault_point() {
    let Some(mut t) = TestEnv::new("sigkill_at_every_fault_point") else { return };
    let (pid, orig) = start_steady(&mut t, &[]);
    let mut r = Runner::new(&t);
    let started = Instant::now();
    let mut maps = orig.maps.clone();
    let mut report = Vec::new();
    let mut n = 1u32;
    loop {
        assert!(n <= 200, "rcr still killed itself at point {n}; is RCR_FAULT_KILL_AT ignored?");
        assert!(started.elapsed() < TEST_BOUND, "took longer than {TEST_BOUND:?} (at point {n})");
        r.spawn(pid, Some(n));
        let st = r.wait();
        let log = r.log();
        if st.success() {
            assert!(fault_point_name(&log, n).is_none(), "rcr logged a fault injection at {n} but exited 0");
            let (_, added, _) = // Earlier kills in this loop may have left return frames below the
            // red zone, which a complete dump restores as it found them.
            check_after_run(pid, &orig, &maps, &format!("after a complete dump -R (RCR_FAULT_KILL_AT={n})"), true);
            assert!(added.is_empty(), "a complete dump -R left a new parasite region: {added:?}");
            break;
        }
        assert_eq!(st.signal(), Some(libc::SIGKILL), "rcr with RCR_FAULT_KILL_AT={n} ended with {}, not SIGKILL", describe(st));
        let name = fault_point_name(&log, n).unwrap_or_else(|| panic!("rcr was killed at {n} but its log names no fault point:\n{log}"));
        let what = format!("after rcr was killed at point {n} ({name})");
        if name != "image set marked complete" {
            let inv = r.last().dir.join("inventory.img");
            let marker = r.last().dir.join("dump-incomplete");
            assert!(!inv.exists() || marker.exists(), "{what}: {} exists without {}: a partial dump looks like an image set", inv.display(), marker.display());
        }
        let (m, added, removed) = check_after_run(pid, &orig, &maps, &what, true);
        report.push(format!("point {n:>2} {name:<30} {}", outcome(&added, &removed)));
        maps = m;
        n += 1;
    }
    eprintln!("{}: fault points exercised on pid {pid}:\n{}", t.name, report.join("\n"));
    assert!(n > 8, "only {} fault points were passed by a complete dump; expected at least 8", n - 1);
    wake_expect_pass(&mut t);
}

/// One line about the leftover regions of a run.
fn outcome(added: &[String], removed: &[String]) -> String {
    let range = |l: &String| l.split_whitespace().next().unwrap_or("").to_string();
    let mut s = if added.is_empty() { "no new region".to_string() } else { format!("LEFTOVER {}", range(&added[0])) };
    if !removed.is_empty() {
        let r: Vec<String> = removed.iter().map(range).collect();
        s.push_str(&format!("; removed earlier leftover(s) {}", r.join(" ")));
    }
    s
}

/// Tiny xorshift PRNG (no dependency); seed printed for replays.
fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Kills rcr from outside (SIGKILL) after delays spread over the time a
/// dump takes, 100 times on the same victim.
#[test]
fn sigkill_at_random_times() {
    let Some(mut t) = TestEnv::new("sigkill_at_random_times") else { return };
    let (pid, orig) = start_steady(&mut t, &[]);
    let mut r = Runner::new(&t);
    let started = Instant::now();
    let mut maps = orig.maps.clone();
    // How long a complete dump takes (spawn to exit), median of 3.
    let mut times = Vec::new();
    for i in 0..3 {
        let t0 = Instant::now();
        r.spawn(pid, None);
        let st = r.wait();
        times.push(t0.elapsed());
        assert!(st.success(), "a plain dump -R failed ({})", describe(st));
        let added;
        (maps, added, _) = check_after_run(pid, &orig, &maps, &format!("after plain dump -R {i}"), false);
        assert!(added.is_empty(), "a complete dump -R left a new parasite region: {added:?}");
    }
    times.sort();
    let dur = times[1];
    let mut seed: u64 = std::env::var("RCR_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
    eprintln!("{}: a dump takes {dur:?} ({times:?}); RCR_KILL_SEED={seed}", t.name);
    const RUNS: u32 = 100;
    let mut report = Vec::new();
    for i in 0..RUNS {
        assert!(started.elapsed() < TEST_BOUND, "took longer than {TEST_BOUND:?} (at run {i})");
        let frac = (i as f64 + (xorshift(&mut seed) % 1000) as f64 / 1000.0) / RUNS as f64;
        let delay = dur.mul_f64(frac);
        let child = r.spawn(pid, None);
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL to our own rcr child, by PID
        let st = r.wait();
        let log = r.log();
        let phase = log.lines().last().unwrap_or("(nothing logged)").to_string();
        let what = format!("after rcr was SIGKILLed {delay:?} after its start ({}; last log line {phase:?})", describe(st));
        let (m, added, removed) = check_after_run(pid, &orig, &maps, &what, true);
        maps = m;
        report.push(format!("run {i:>2}: delay {delay:>10.3?} {:<18} last log: {phase:<70} {}", describe(st), outcome(&added, &removed)));
    }
    eprintln!("{}: pid {pid}:\n{}", t.name, report.join("\n"));
    wake_expect_pass(&mut t);
}

/// Kills rcr (SIGKILL) the moment the victim is seen inside one of the
/// syscalls rcr runs in it from outside (mmap 9, munmap 11): the window
/// between rcr pointing the task's registers at a `syscall` instruction
/// (and blocking every signal) and putting them back. Up to 40 attempts on
/// the same victim; stops at the first hit checked.
#[test]
fn sigkill_during_remote_syscall() {
    let Some(mut t) = TestEnv::new("sigkill_during_remote_syscall") else { return };
    let (pid, orig) = start_steady(&mut t, &[]);
    let mut r = Runner::new(&t);
    let started = Instant::now();
    let mut maps = orig.maps.clone();
    let path = format!("/proc/{pid}/syscall");
    let mut hits = 0;
    for i in 0..40 {
        assert!(started.elapsed() < TEST_BOUND, "took longer than {TEST_BOUND:?} (at attempt {i})");
        let child = r.spawn(pid, None);
        let mut seen = None;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            let sc = fs::read_to_string(&path).unwrap_or_default();
            let nr = sc.split_whitespace().next().unwrap_or("").to_string();
            if nr == "9" || nr == "11" {
                let _ = child.kill(); // SIGKILL to our own rcr child, by PID
                seen = Some(sc.trim().to_string());
                break;
            }
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
        }
        let st = r.wait();
        let Some(sc) = seen else { continue };
        hits += 1;
        let what = format!(
            "attempt {i}: rcr ({}) was SIGKILLed while the victim showed /proc/PID/syscall {sc:?}; rcr's last log line {:?}",
            describe(st),
            r.log().lines().last().unwrap_or("")
        );
        eprintln!("{what}");
        (maps, _, _) = check_after_run(pid, &orig, &maps, &what, true);
    }
    eprintln!("{}: {hits} kill(s) inside a remote syscall", t.name);
    wake_expect_pass(&mut t);
}
