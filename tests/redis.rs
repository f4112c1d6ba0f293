//! A real server no one here wrote: redis-server from Debian, with data
//! loaded and a redis-cli client connected over TCP, is dumped with
//! `--tcp-established`, killed and restored. Afterwards the data is there,
//! the listening sockets (IPv4 and IPv6) accept new clients, and the old
//! client's connection (the same redis client id, the same TCP ports)
//! carries on: a command sent while the server was down is answered after
//! the restore, with nothing lost or repeated.
//!
//! The client is outside the dumped tree (a child of this test). From
//! outside, the test also compares the server's threads, its listening
//! sockets and the connection's ports in /proc/net/tcp{,6} before and after.
//!
//! Needs root and redis-server/redis-cli (`.ci/run` installs them).
//! Run: `cargo test --release --test redis`.
mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SERVER: &str = "/usr/bin/redis-server";
const CLI: &str = "/usr/bin/redis-cli";
const KEYS: usize = 2000;

/// A redis-cli process fed commands line by line on a pipe (its
/// non-interactive mode keeps one connection and answers each line).
struct Client {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Client {
    fn start(port: u16) -> Client {
        let mut child = Command::new(CLI)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {CLI}: {e}"));
        let stdin = child.stdin.take().expect("redis-cli stdin");
        let (tx, lines) = mpsc::channel();
        for out in [Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().expect("stderr"))] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        Client { child, stdin, lines }
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").and_then(|()| self.stdin.flush()).unwrap_or_else(|e| panic!("writing {cmd:?} to redis-cli: {e}"));
    }

    fn reply(&mut self, cmd: &str) -> String {
        self.lines.recv_timeout(TIMEOUT).unwrap_or_else(|e| panic!("no reply from redis-cli to {cmd:?} within {TIMEOUT:?}: {e}"))
    }

    fn call(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.reply(cmd)
    }

    /// Nothing more came (no error message, no stray reply).
    fn assert_quiet(&mut self) {
        if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            panic!("redis-cli printed an unexpected line: {l:?}");
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port free on both 127.0.0.1 and ::1 right now.
fn free_port() -> u16 {
    for _ in 0..50 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        if std::net::TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

/// Lines of /proc/net/tcp and tcp6 with local or remote port `port`:
/// "local remote state", addresses in the kernel's hex, listening and
/// established sockets only.
fn tcp_entries(port: u16) -> BTreeSet<String> {
    let hex = format!(":{port:04X}");
    let mut out = BTreeSet::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let s = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("reading {f}: {e}"));
        for l in s.lines().skip(1) {
            let w: Vec<&str> = l.split_whitespace().collect();
            // LISTEN (0A) and ESTABLISHED (01) only: short-lived clients leave TIME_WAITs.
            if w.len() > 3 && (w[1].ends_with(&hex) || w[2].ends_with(&hex)) && (w[3] == "0A" || w[3] == "01") {
                out.insert(format!("{} {} {}", w[1], w[2], w[3]));
            }
        }
    }
    out
}

/// Starts redis-server (no persistence, bound to 127.0.0.1 and ::1) as
/// the victim, waits until it accepts connections and loads the data.
fn start_server(t: &mut TestEnv, port: u16) {
    for p in [SERVER, CLI] {
        assert!(std::path::Path::new(p).exists(), "{p} is missing: install the Debian packages redis-server and redis-tools (.ci/run does)");
    }
    let mut cmd = Command::new(SERVER);
    let dir = t.dir.to_string_lossy().into_owned();
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1 ::1", "--save", "", "--appendonly", "no", "--dir", &dir]);
    cmd.args(["--daemonize", "no", "--logfile", "", "--protected-mode", "no"]);
    t.spawn_command(cmd, true);
    t.wait_log("redis to accept connections", |l| l.contains("Ready to accept connections"));
    let mut load = String::new();
    for i in 0..KEYS {
        load.push_str(&format!("SET key:{i} value-{i}-{}\n", "x".repeat(i % 97)));
    }
    load.push_str("RPUSH list a b c d\nHSET hash f1 v1 f2 v2\n");
    let out = Command::new(CLI)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("stdin").write_all(load.as_bytes())?;
            c.wait_with_output()
        })
        .expect("loading data with redis-cli");
    assert!(out.status.success(), "redis-cli loading data: {}", describe(out.status));
}

/// What a fresh client sees: the data, over IPv4 and over IPv6.
fn check_data(port: u16, host: &str) {
    let args = |cmd: &[&str]| {
        let mut v = vec!["-h".to_string(), host.to_string(), "-p".to_string(), port.to_string()];
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    };
    let run = |cmd: &[&str]| {
        let o = Command::new(CLI).args(args(cmd)).output().unwrap_or_else(|e| panic!("{CLI} {cmd:?}: {e}"));
        assert!(o.status.success(), "redis-cli -h {host} {cmd:?}: {}", describe(o.status));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(run(&["PING"]), "PONG", "a new client over {host}");
    assert_eq!(run(&["GET", "key:1234"]), format!("value-1234-{}", "x".repeat(1234 % 97)), "key:1234 over {host}");
    assert_eq!(run(&["LRANGE", "list", "0", "-1"]), "a\nb\nc\nd", "list over {host}");
    assert_eq!(run(&["HGET", "hash", "f2"]), "v2", "hash over {host}");
}

#[test]
fn redis_with_connected_client_survives_dump_kill_restore() {
    let Some(mut t) = TestEnv::new("redis") else { return };
    let port = free_port();
    start_server(&mut t, port);
    let mut cli = Client::start(port);
    let id = cli.call("CLIENT ID");
    assert!(id.parse::<u64>().is_ok(), "CLIENT ID answered {id:?}");
    assert_eq!(cli.call("DBSIZE"), (KEYS + 2).to_string());
    assert_eq!(cli.call("SET before-dump 1"), "OK");
    let before_tcp = tcp_entries(port);
    let before_tasks = task_ids(t.pid).len();
    assert_eq!(before_tcp.len(), 4, "expected two listeners and both ends of one connection on port {port}: {before_tcp:?}");

    t.dump_ok(&["--tcp-established"]);
    t.reap_victim();
    // Sent while the server is down: the network lock holds it back, the
    // client must see a pause and then the answer, not an error.
    cli.send("INCR during-down");
    let pid = t.restore(&["--tcp-established"]);
    assert_eq!(pid, t.pid, "redis-server restored with another PID");
    assert_eq!(cli.reply("INCR during-down"), "1", "the command sent while the server was down");

    assert_eq!(cli.call("CLIENT ID"), id, "the old connection must be the same redis client");
    assert_eq!(cli.call("GET before-dump"), "1");
    assert_eq!(cli.call("DBSIZE"), (KEYS + 4).to_string());
    assert_eq!(cli.call("SET after-restore 2"), "OK");
    cli.assert_quiet();
    assert_eq!(tcp_entries(port), before_tcp, "listeners and the connection in /proc/net/tcp{{,6}} (left: after)");
    check_data(port, "127.0.0.1");
    check_data(port, "::1");
    assert_eq!(task_ids(pid).len(), before_tasks, "redis-server threads after restore");
    assert_eq!(cli.call("GET after-restore"), "2");
    assert!(cli.child.try_wait().expect("try_wait").is_none(), "redis-cli exited");
}
