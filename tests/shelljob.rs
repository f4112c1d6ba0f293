//! Shell jobs (`-j/--shell-job`): an interactive program running in a
//! shell in a terminal is dumped from outside with `rcr dump -j`, and
//! restored by typing `rcr restore -j` at a shell prompt in a terminal
//! (the same one or another, of another size): it comes back on that
//! terminal, in the foreground, in its mode, with its state.
//!
//! The terminals are tmux panes (a private tmux server per test, on a
//! socket in the test's dir, killed at the end); each pane runs bash with
//! a clean environment and the prompt `$ `. The programs are Debian's
//! python3 (/usr/bin/python3): its REPL (readline) and a small curses
//! program counting keys. The tests type with `tmux send-keys` and read
//! the screen with `tmux capture-pane`; from outside they check /proc:
//! same PID, the session of the pane's shell, fds 0-2 on the pane's
//! /dev/pts, the terminal's foreground group is the job's.
//!
//! Needs root, tmux and /usr/bin/python3; without them each test prints a
//! message and passes. Run: `cargo test --release --test shelljob`.
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PYTHON: &str = "/usr/bin/python3";
const TMUX: &str = "tmux";

/// A private tmux server: sessions by name, each a bash at a `$ ` prompt.
struct Tmux {
    sock: PathBuf,
    /// Programs started in the panes (and restored there), killed at the end.
    pids: Vec<i32>,
}

impl Tmux {
    fn new(t: &TestEnv) -> Tmux {
        Tmux { sock: t.path("tmux.sock"), pids: Vec::new() }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(TMUX).arg("-S").arg(&self.sock).args(args).stdin(Stdio::null()).output().expect("running tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new session `name` of `cols`x`rows` running bash; waits for its prompt.
    fn session(&self, name: &str, cols: u32, rows: u32, home: &Path) -> i32 {
        let shell = format!(
            "exec env -i PATH=/usr/bin:/bin TERM=screen HOME={} PS1='$ ' /bin/bash --norc --noprofile -i 251>&-",
            home.display()
        );
        self.run(&["new-session", "-d", "-s", name, "-x", &cols.to_string(), "-y", &rows.to_string(), &shell]);
        self.wait_screen(name, "the shell prompt", |s| last_line(s) == "$");
        self.run(&["display", "-p", "-t", name, "#{pane_pid}"]).trim().parse().expect("pane_pid")
    }

    fn tty(&self, name: &str) -> String {
        self.run(&["display", "-p", "-t", name, "#{pane_tty}"]).trim().to_string()
    }

    /// Types `keys` (tmux key names: "Enter", "C-d", or literal text).
    fn keys(&self, name: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", name];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    fn screen(&self, name: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", name])
    }

    fn wait_screen(&self, name: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen(name);
            if pred(&s) {
                return s;
            }
            if start.elapsed() > TIMEOUT {
                panic!("timed out waiting for {what} in tmux session {name}; the screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The program the shell of session `name` (pid `shell`) started.
    fn child_of(&mut self, shell: i32, comm: &str) -> i32 {
        let pid = wait_until(&format!("{comm} started by pid {shell}"), || {
            let kids = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).ok()?;
            kids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()).find(|&p| proc_comm(p) == comm)
        });
        self.pids.push(pid);
        pid
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for s in self.run_quiet(&["list-sessions", "-F", "#{session_name}"]).lines() {
                eprintln!("--- tmux session {s}:\n{}", self.run_quiet(&["capture-pane", "-p", "-t", s]));
            }
        }
        for &pid in &self.pids {
            if proc_comm(pid) == "python3" {
                // SAFETY: kill(2) on the PID of a program this test started in its own tmux.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        self.run_quiet(&["kill-server"]);
        let start = Instant::now();
        while self.pids.iter().any(|&p| proc_comm(p) == "python3") && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Tmux {
    fn run_quiet(&self, args: &[&str]) -> String {
        Command::new(TMUX).arg("-S").arg(&self.sock).args(args).stdin(Stdio::null()).stderr(Stdio::null()).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }
}

fn proc_comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

fn last_line(screen: &str) -> &str {
    screen.lines().map(str::trim_end).rfind(|l| !l.is_empty()).unwrap_or("")
}

/// The environment for a test, or None (the test passes) without root,
/// tmux or Debian's python3.
fn setup(name: &str) -> Option<(TestEnv, Tmux)> {
    let t = TestEnv::new(name)?;
    if Command::new(TMUX).arg("-V").output().map(|o| !o.status.success()).unwrap_or(true) || !Path::new(PYTHON).exists() {
        eprintln!("skipping {name}: needs tmux and {PYTHON}");
        return None;
    }
    let tm = Tmux::new(&t);
    Some((t, tm))
}

/// `rcr dump -j -t PID` from outside the terminal, expected to succeed.
fn dump_job(t: &mut TestEnv, pid: i32) {
    let images = t.images.to_string_lossy().into_owned();
    let out = t.rcr("dump", &["dump", "-j", "-t", &pid.to_string(), "-D", &images]);
    assert!(out.status.success(), "rcr dump -j failed ({}):\n{}", describe(out.status), out.stderr);
}

/// Types `rcr restore -j` at the prompt of session `name`.
fn restore_in(tm: &Tmux, t: &TestEnv, name: &str) {
    let cmd = format!("{RCR} restore -j -D {} -v -v -o {}", t.images.display(), t.path(&format!("restore-{name}.log")).display());
    tm.keys(name, &[&cmd, "Enter"]);
}

/// From outside: `pid` runs again, in session `sid` (the pane's shell's),
/// fds 0-2 on `tty`, its group the terminal's foreground group.
fn check_on_terminal(pid: i32, sid: i32, tty: &str) {
    wait_until(&format!("restored pid {pid} to run untraced"), || {
        (status_field(pid, "TracerPid").as_deref() == Some("0") && proc_comm(pid) == "python3").then_some(())
    });
    let f = stat_fields(pid); // [0] state, [2] pgrp, [3] session, [5] tpgid
    assert_eq!(f[3], sid.to_string(), "pid {pid}: session (stat: {f:?})");
    assert_eq!(f[5], f[2], "pid {pid}: the terminal's foreground group (tpgid) is not its group (stat: {f:?})");
    for fd in 0..3 {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).map(|p| p.display().to_string()).unwrap_or_default();
        assert_eq!(link, tty, "pid {pid} fd {fd}");
    }
}

#[test]
fn python_repl_comes_back_in_the_same_pane() {
    let Some((mut t, mut tm)) = setup("repl") else { return };
    let home = t.dir.clone();
    let shell = tm.session("a", 120, 40, &home);
    let tty = tm.tty("a");
    tm.keys("a", &[&format!("{PYTHON} -q"), "Enter"]);
    let py = tm.child_of(shell, "python3");
    tm.wait_screen("a", "python's prompt", |s| last_line(s) == ">>>");
    tm.keys("a", &["x = 41", "Enter"]);
    tm.wait_screen("a", "the prompt after x = 41", |s| s.matches(">>>").count() == 2);

    dump_job(&mut t, py);
    wait_pid_gone(py, "the dumped python");
    tm.wait_screen("a", "the shell's prompt after the dump", |s| last_line(s) == "$");

    restore_in(&tm, &t, "a");
    check_on_terminal(py, shell, &tty);
    tm.keys("a", &["print(x + 1)", "Enter"]);
    let s = tm.wait_screen("a", "42", |s| s.lines().any(|l| l.trim_end() == "42"));
    // Readline drew the typed line once: the terminal is in its mode (no echo of its own).
    assert_eq!(s.matches("print(x + 1)").count(), 1, "the typed line shows other than once:\n{s}");

    tm.keys("a", &["exit(3)", "Enter"]);
    tm.wait_screen("a", "the shell's prompt after python exits", |s| last_line(s) == "$");
    wait_pid_gone(py, "the restored python");
    tm.keys("a", &["echo status=$?", "Enter"]);
    tm.wait_screen("a", "rcr's exit status", |s| s.lines().any(|l| l.trim_end() == "status=3"));
}

/// Draws `keys=N resizes=M size=COLSxROWS` and counts keys until `q`
/// (exits with the count).
const CURSES_PROGRAM: &str = r#"
import curses
def main(s):
    keys = resizes = 0
    while True:
        h, w = s.getmaxyx()
        s.clear()
        s.addstr(0, 0, f"keys={keys} resizes={resizes} size={w}x{h}")
        s.refresh()
        c = s.getch()
        if c == curses.KEY_RESIZE:
            resizes += 1
        elif c == ord("q"):
            return keys
        else:
            keys += 1
raise SystemExit(curses.wrapper(main))
"#;

#[test]
fn curses_program_moves_to_another_terminal_and_redraws() {
    let Some((mut t, mut tm)) = setup("curses") else { return };
    let home = t.dir.clone();
    let prog = t.path("counter.py");
    std::fs::write(&prog, CURSES_PROGRAM).expect("writing the curses program");
    let shell_a = tm.session("a", 120, 40, &home);
    let shell_b = tm.session("b", 100, 30, &home);
    let tty_b = tm.tty("b");
    assert_ne!(tm.tty("a"), tty_b);
    tm.keys("a", &[&format!("{PYTHON} {}", prog.display()), "Enter"]);
    let py = tm.child_of(shell_a, "python3");
    tm.wait_screen("a", "the counter", |s| s.contains("keys=0 resizes=0 size=120x40"));
    tm.keys("a", &["a", "b", "c"]);
    tm.wait_screen("a", "3 keys counted", |s| s.contains("keys=3 resizes=0 size=120x40"));

    dump_job(&mut t, py);
    wait_pid_gone(py, "the dumped program");
    tm.wait_screen("a", "the shell's prompt after the dump", |s| last_line(s) == "$");

    restore_in(&tm, &t, "b");
    check_on_terminal(py, shell_b, &tty_b);
    // Another size: SIGWINCH, and the program redraws at once.
    tm.wait_screen("b", "the redraw at the new size", |s| s.contains("keys=3 resizes=1 size=100x30"));
    tm.keys("b", &["x", "y"]);
    tm.wait_screen("b", "the count going on", |s| s.contains("keys=5 resizes=1 size=100x30"));
    tm.keys("b", &["q"]);
    tm.wait_screen("b", "the shell's prompt after the program exits", |s| last_line(s) == "$");
    wait_pid_gone(py, "the restored program");
    tm.keys("b", &["echo status=$?", "Enter"]);
    tm.wait_screen("b", "rcr's exit status", |s| s.lines().any(|l| l.trim_end() == "status=5"));
}

#[test]
fn refusals_name_the_terminal_and_leave_nothing_behind() {
    let Some((mut t, mut tm)) = setup("refusals") else { return };
    let home = t.dir.clone();
    let shell = tm.session("a", 120, 40, &home);
    let tty = tm.tty("a");
    tm.keys("a", &[&format!("{PYTHON} -q"), "Enter"]);
    let py = tm.child_of(shell, "python3");
    tm.wait_screen("a", "python's prompt", |s| last_line(s) == ">>>");
    let images = t.images.to_string_lossy().into_owned();

    // Without -j: refused, naming the fd and the terminal, suggesting -j; python runs on.
    let out = t.rcr("dump", &["dump", "-t", &py.to_string(), "-D", &images]);
    assert!(!out.status.success(), "rcr dump of a shell job without -j succeeded");
    let err = out.stderr;
    assert!(err.contains(&format!("pid {py} fd 0")) && err.contains(&tty) && err.contains("-j"), "unclear refusal: {err}");
    assert_runs_free(py, "python after the refused dump");
    tm.keys("a", &["print(6 * 7)", "Enter"]);
    tm.wait_screen("a", "python answering after the refused dump", |s| s.lines().any(|l| l.trim_end() == "42"));

    dump_job(&mut t, py);
    wait_pid_gone(py, "the dumped python");

    // A -j image set restored without -j: refused before anything is created.
    let out = t.rcr("restore", &["restore", "-D", &images]);
    assert!(!out.status.success(), "rcr restore of a shell job without -j succeeded");
    assert!(out.stderr.contains("dumped as a shell job: restore with -j"), "unclear refusal: {}", out.stderr);
    assert!(!pid_exists(py), "pid {py} exists after the refused restore");

    // -j without a terminal (new session, stdin /dev/null): refused, nothing left.
    let out = Command::new("setsid").arg("-w").arg(RCR).args(["restore", "-j", "-D", &images]).stdin(Stdio::null()).output().expect("running setsid rcr");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rcr restore -j without a terminal succeeded");
    assert!(err.contains("no controlling terminal"), "unclear refusal: {err}");
    assert!(!pid_exists(py), "pid {py} exists after the refused restore");

    // The image set is still good: restored in the pane, python answers.
    restore_in(&tm, &t, "a");
    check_on_terminal(py, shell, &tty);
    tm.keys("a", &["print(6 * 7 + 1)", "Enter"]);
    tm.wait_screen("a", "python answering after the restore", |s| s.lines().any(|l| l.trim_end() == "43"));
}

/// A program whose process group is its shell's job's (`sh -c`, outside
/// the tree): restored into rcr's group, which stays in the foreground.
#[test]
fn job_in_a_group_outside_the_tree_joins_rcrs() {
    let Some((mut t, mut tm)) = setup("group") else { return };
    let home = t.dir.clone();
    let shell = tm.session("a", 120, 40, &home);
    let tty = tm.tty("a");
    tm.keys("a", &[&format!("sh -c '{PYTHON} -q; echo sh-done'"), "Enter"]);
    let sh = tm.child_of(shell, "sh");
    let py = tm.child_of(sh, "python3");
    tm.wait_screen("a", "python's prompt", |s| last_line(s) == ">>>");
    assert_eq!(stat_fields(py)[2], sh.to_string(), "python is not in sh's group");
    tm.keys("a", &["z = 9", "Enter"]);
    tm.wait_screen("a", "the prompt after z = 9", |s| s.matches(">>>").count() == 2);

    dump_job(&mut t, py);
    wait_pid_gone(py, "the dumped python");
    tm.wait_screen("a", "the shell's prompt after the dump", |s| s.contains("sh-done") && last_line(s) == "$");

    restore_in(&tm, &t, "a");
    check_on_terminal(py, shell, &tty);
    let rcr_pid: i32 = stat_fields(py)[1].parse().expect("ppid");
    assert_eq!(stat_fields(py)[2], stat_fields(rcr_pid)[2], "python is not in rcr's group");
    tm.keys("a", &["print(z * 2)", "Enter"]);
    tm.wait_screen("a", "18", |s| s.lines().any(|l| l.trim_end() == "18"));
    tm.keys("a", &["exit(4)", "Enter"]);
    tm.wait_screen("a", "the shell's prompt after python exits", |s| last_line(s) == "$" && !pid_exists(py));
    tm.keys("a", &["echo status=$?", "Enter"]);
    tm.wait_screen("a", "rcr's exit status", |s| s.lines().any(|l| l.trim_end() == "status=4"));
}
