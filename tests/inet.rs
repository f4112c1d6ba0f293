//! TCP and UDP sockets survive `rcr dump` / `rcr restore` and `rcr dump -R`:
//! listeners (IPv4, IPv6, dual stack) with options, TCP sockets not
//! connected, UDP sockets bound and connected; and, with
//! `--tcp-established`, an established connection to a client outside the
//! tree (this test process), with data queued both ways, carried on with
//! nothing lost while a client thread keeps writing. What cannot be
//! carried is refused at dump, naming it, and the victim runs on.
//!
//! Victim: tests/victims/inet.c (its header comment says what each mode
//! checks after go). From outside, the tests compare the victim's lines of
//! /proc/net/{tcp,tcp6,udp,udp6} (local, remote, state) before the dump
//! and after the restore, and `nft list tables` for the network lock.
//!
//! Needs root and nft; without root every test prints a message and passes.
//! Run: `cargo test --release --test inet`.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// "key=value ..." of the first victim log line starting with `prefix`.
fn log_kv(t: &TestEnv, prefix: &str) -> BTreeMap<String, String> {
    let line = t.log_text().lines().find_map(|l| l.strip_prefix(prefix).map(str::to_string)).unwrap_or_else(|| panic!("no {prefix:?} line in the victim log"));
    line.split_whitespace().filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn log_port(t: &TestEnv) -> u16 {
    t.log_text().lines().find_map(|l| l.strip_prefix("PORT ").and_then(|p| p.trim().parse().ok())).expect("no PORT line in the victim log")
}

/// The /proc/net/{tcp,udp}{,6} lines of `pid`'s sockets: "proto local
/// remote state", sorted, as two reads in a row agree on them. A read of
/// /proc/net/tcp is not atomic: it walks the socket hash a page at a time,
/// and sockets that other tests create or close meanwhile can make it skip
/// a line.
fn net_view(pid: i32) -> Vec<String> {
    let mut last = net_view_once(pid);
    for _ in 0..50 {
        let now = net_view_once(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("/proc/net lines of pid {pid} never read the same twice in a row");
}

fn net_view_once(pid: i32) -> Vec<String> {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.flatten().filter_map(|e| fs::read_link(e.path()).ok()).filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string)).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        let s = fs::read_to_string(format!("/proc/net/{proto}")).unwrap_or_default();
        for l in s.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 9 && inodes.iter().any(|i| i == f[9]) {
                out.push(format!("{proto} {} {} st={}", f[1], f[2], f[3]));
            }
        }
    }
    out.sort();
    out
}

/// tx_queue and rx_queue of `pid`'s established TCP connection (/proc/net/tcp{,6}).
fn queues(pid: i32) -> (u64, u64) {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.flatten().filter_map(|e| fs::read_link(e.path()).ok()).filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string)).collect())
        .unwrap_or_default();
    for proto in ["tcp", "tcp6"] {
        let s = fs::read_to_string(format!("/proc/net/{proto}")).unwrap_or_default();
        for l in s.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 9 && f[3] == "01" && inodes.iter().any(|i| i == f[9]) {
                let (tx, rx) = f[4].split_once(':').expect("tx:rx");
                return (u64::from_str_radix(tx, 16).expect("tx"), u64::from_str_radix(rx, 16).expect("rx"));
            }
        }
    }
    panic!("no established TCP connection of pid {pid} in /proc/net/tcp{{,6}}");
}

/// The rcr tables `nft list tables` shows.
fn rcr_tables() -> Vec<String> {
    let out = std::process::Command::new("nft").args(["list", "tables"]).output().expect("running nft list tables");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("rcr-")).map(|l| l.trim().trim_start_matches("table ").to_string()).collect()
}

/// Deletes a network lock a failed test left behind.
struct TableGuard(String);

impl Drop for TableGuard {
    fn drop(&mut self) {
        if rcr_tables().contains(&self.0) {
            let _ = std::process::Command::new("nft").args(["delete", "table"]).args(self.0.split_whitespace()).status();
        }
    }
}

/// The network lock table the last dump of this test logged.
fn logged_table(t: &TestEnv) -> String {
    let mut logs: Vec<_> = fs::read_dir(&t.dir).expect("test dir").flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with("-dump.log")).collect();
    logs.sort();
    let text = fs::read_to_string(logs.last().expect("no dump log")).unwrap_or_default();
    text.lines().find_map(|l| l.split("network lock table ").nth(1).map(|r| r.split_whitespace().take(2).collect::<Vec<_>>().join(" "))).expect("the dump logged no network lock table")
}

fn start_sockets(name: &str) -> Option<(TestEnv, UdpSocket, BTreeMap<String, String>)> {
    let mut t = TestEnv::new(name)?;
    let u6 = UdpSocket::bind("[::1]:0").expect("bind [::1]:0");
    u6.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let port = u6.local_addr().expect("local addr").port().to_string();
    t.spawn_victim("inet", &["sockets", &port], false);
    t.wait_ready();
    let kv = log_kv(&t, "PORTS ");
    Some((t, u6, kv))
}

/// After go: a new connection to each listener, UDP both ways.
fn talk_to_sockets(u6: &UdpSocket, kv: &BTreeMap<String, String>) {
    for (host, key) in [("127.0.0.1", "l4"), ("[::1]", "l6"), ("127.0.0.1", "ld")] {
        let addr = format!("{host}:{}", kv[key]);
        let mut c = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connecting to {key} at {addr}: {e}"));
        c.write_all(b"x").expect("sending x");
    }
    let u4 = UdpSocket::bind("127.0.0.1:0").expect("bind");
    u4.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    u4.send_to(b"ping", format!("127.0.0.1:{}", kv["u4"])).expect("ping");
    let mut b = [0u8; 16];
    let (n, _) = u4.recv_from(&mut b).expect("no pong from the victim's UDP socket");
    assert_eq!(&b[..n], b"pong");
    let (n, from) = u6.recv_from(&mut b).expect("no hello from the victim's connected UDP socket");
    assert_eq!(&b[..n], b"hello");
    u6.send_to(b"reply", from).expect("reply");
}

#[test]
fn sockets_dump_kill_restore() {
    let Some((mut t, u6, kv)) = start_sockets("inet_sockets") else { return };
    let before = net_view(t.pid);
    // The two TCP sockets not connected are in no /proc/net table (the victim checks them).
    assert_eq!(before.len(), 5, "the victim should show 3 listeners and 2 UDP sockets: {before:?}");
    t.dump_ok(&[]);
    t.reap_victim();
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    assert_eq!(net_view(pid), before, "/proc/net lines of the victim's sockets (left: after restore)");
    t.go("");
    talk_to_sockets(&u6, &kv);
    let st = t.wait_restore_exit();
    t.assert_no_fail();
    assert!(st.success(), "rcr restore exited with {}", describe(st));
    t.assert_log_pass(1);
}

#[test]
fn sockets_leave_running() {
    let Some((mut t, u6, kv)) = start_sockets("inet_sockets_r") else { return };
    let before = net_view(t.pid);
    t.dump_ok(&["-R"]);
    std::thread::sleep(Duration::from_millis(100));
    assert_runs_free(t.pid, "after dump -R");
    assert_eq!(net_view(t.pid), before, "/proc/net lines after dump -R");
    t.go("");
    talk_to_sockets(&u6, &kv);
    let st = t.wait_victim_exit();
    t.assert_no_fail();
    assert!(st.success(), "the victim exited with {}", describe(st));
    t.assert_log_pass(1);
}

/// A client socket with a small receive buffer (so the server's sends
/// stay queued on its side), connected to `addr`.
fn small_client(addr: SocketAddr) -> TcpStream {
    let fam = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(fam, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    let v: libc::c_int = 4096;
    // SAFETY: setsockopt reads one int from `v`.
    let r = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &v as *const libc::c_int as *const libc::c_void, 4) };
    assert_eq!(r, 0, "SO_RCVBUF");
    // SAFETY: `fd` is a new socket nobody else owns.
    let s = unsafe { TcpStream::from(std::os::fd::OwnedFd::from_raw_fd(fd)) };
    let sock = socket_connect(s, addr);
    sock.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    sock
}

fn socket_connect(s: TcpStream, addr: SocketAddr) -> TcpStream {
    let (sa, len): (libc::sockaddr_storage, libc::socklen_t) = match addr {
        SocketAddr::V4(a) => {
            let mut sin: libc::sockaddr_in = libc::sockaddr_in { sin_family: libc::AF_INET as u16, sin_port: a.port().to_be(), sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() }, sin_zero: [0; 8] };
            // SAFETY: sockaddr_storage is plain data; all zeroes is valid; a sockaddr_in fits in it.
            let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            unsafe { std::ptr::copy_nonoverlapping(&mut sin as *mut _ as *const u8, &mut st as *mut _ as *mut u8, std::mem::size_of::<libc::sockaddr_in>()) };
            (st, std::mem::size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(a) => {
            // SAFETY: plain data, all zeroes is valid.
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            // SAFETY: plain data, all zeroes is valid.
            let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            // SAFETY: a sockaddr_in6 fits in a sockaddr_storage.
            unsafe { std::ptr::copy_nonoverlapping(&sin6 as *const _ as *const u8, &mut st as *mut _ as *mut u8, std::mem::size_of::<libc::sockaddr_in6>()) };
            (st, std::mem::size_of::<libc::sockaddr_in6>() as u32)
        }
    };
    use std::os::fd::AsRawFd;
    // SAFETY: `sa` holds a valid address of `len` bytes.
    let r = unsafe { libc::connect(s.as_raw_fd(), &sa as *const _ as *const libc::sockaddr, len) };
    assert_eq!(r, 0, "connect {addr}: {}", std::io::Error::last_os_error());
    s
}

fn pat(i: u64) -> u8 {
    (i % 251) as u8
}

/// Writes the pattern until `stop`, then shuts the sending side; returns
/// the bytes written (an error is a failure: the peer must never reset).
fn writer(mut s: TcpStream, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        let mut pos = 0u64;
        let mut buf = [0u8; 1000];
        while !stop.load(Ordering::Relaxed) {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = pat(pos + i as u64);
            }
            s.write_all(&buf).map_err(|e| format!("client write at byte {pos}: {e}"))?;
            pos += buf.len() as u64;
        }
        s.shutdown(Shutdown::Write).map_err(|e| format!("client shutdown: {e}"))?;
        Ok(pos)
    })
}

/// Reads the server's stream to its end, checking the pattern.
fn reader(mut s: TcpStream) -> std::thread::JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        let mut pos = 0u64;
        let mut buf = vec![0u8; 65536];
        loop {
            let n = s.read(&mut buf).map_err(|e| format!("client read at byte {pos}: {e}"))?;
            if n == 0 {
                return Ok(pos);
            }
            if let Some(i) = (0..n).find(|&i| buf[i] != pat(pos + i as u64)) {
                return Err(format!("byte {} of the server's stream is {}, expected {}", pos + i as u64, buf[i], pat(pos + i as u64)));
            }
            pos += n as u64;
        }
    })
}

/// The acceptance test: a connection from this process to a server in the
/// dumped tree goes on across dump (and kill and restore, unless
/// `leave_running`) with every byte of both streams delivered once.
fn established(name: &str, v6: bool, leave_running: bool) {
    let Some(mut t) = TestEnv::new(name) else { return };
    t.spawn_victim("inet", &["server", if v6 { "v6" } else { "v4" }], false);
    t.wait_log("PORT", |l| l.starts_with("PORT "));
    let addr: SocketAddr = if v6 { format!("[::1]:{}", log_port(&t)) } else { format!("127.0.0.1:{}", log_port(&t)) }.parse().expect("addr");
    let client = small_client(addr);
    t.wait_ready();
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(client.try_clone().expect("dup"), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let (tx, rx) = queues(t.pid);
    assert!(tx > 0 && rx > 0, "the server's send and receive queues should both hold data at dump time (tx {tx}, rx {rx})");
    let before = net_view(t.pid);
    if leave_running {
        t.dump_ok(&["--tcp-established", "-R"]);
        let table = logged_table(&t);
        assert!(!rcr_tables().contains(&table), "the network lock {table} is still there after dump -R: {:?}", rcr_tables());
        assert_runs_free(t.pid, "after dump -R");
    } else {
        t.dump_ok(&["--tcp-established"]);
        let table = logged_table(&t);
        let _guard = TableGuard(table.clone());
        assert!(rcr_tables().contains(&table), "the network lock {table} should stay while the tree is down: {:?}", rcr_tables());
        t.reap_victim();
        let images = t.images.to_string_lossy().into_owned();
        let out = t.rcr("restore-no-flag", &["restore", "-D", &images]);
        assert!(!out.status.success() && out.stderr.contains("--tcp-established"), "restore without --tcp-established should fail naming it:\n{}", out.stderr);
        assert!(out.stderr.contains(&format!("nft delete table {table}")), "a failed restore should say how to drop the lock:\n{}", out.stderr);
        let pid = t.restore(&["--tcp-established"]);
        assert_eq!(pid, t.pid, "restored with a different PID");
        assert!(!rcr_tables().contains(&table), "the network lock {table} is still there after restore: {:?}", rcr_tables());
    }
    assert_eq!(net_view(t.pid), before, "/proc/net lines of the server's sockets");
    t.go("");
    let r = reader(client);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let written = w.join().expect("writer thread").unwrap_or_else(|e| panic!("{e}"));
    let read = r.join().expect("reader thread").unwrap_or_else(|e| panic!("{e}"));
    let st = if leave_running { t.wait_victim_exit() } else { t.wait_restore_exit() };
    t.assert_no_fail();
    assert!(st.success(), "the server exited with {}", describe(st));
    t.assert_log_pass(1);
    let got = format!("GOT {written} SENT {read}");
    assert!(t.log_text().lines().any(|l| l == got), "the server should have printed {got:?} (bytes the client wrote, bytes it read)");
}

#[test]
fn established_v4_restore() {
    established("inet_est_v4", false, false);
}

#[test]
fn established_v6_restore() {
    established("inet_est_v6", true, false);
}

#[test]
fn established_v4_leave_running() {
    established("inet_est_v4_r", false, true);
}

#[test]
fn established_refused_without_flag() {
    let Some(mut t) = TestEnv::new("inet_est_refused") else { return };
    t.spawn_victim("inet", &["established"], false);
    t.wait_ready();
    let port = log_port(&t);
    let before = net_view(t.pid);
    let what = format!("pid {} fd", t.pid);
    t.assert_dump_refused(&[], &[&what, &format!("127.0.0.1:{port}"), " -> ", "--tcp-established"]);
    assert_eq!(net_view(t.pid), before, "/proc/net lines after the refused dump");
    t.go_expect_original_pass();
}

/// A listener saved without SO_REUSEADDR whose port holds a connection in
/// TIME_WAIT cannot be bound again until it expires (as for any program):
/// the restore fails naming the listener and the TIME_WAIT connection, and
/// leaves nothing behind.
#[test]
fn time_wait_on_listener_port_named() {
    let Some(mut t) = TestEnv::new("inet_timewait") else { return };
    t.spawn_victim("inet", &["timewait"], false);
    t.wait_ready();
    let port = log_port(&t);
    t.dump_ok(&[]);
    t.reap_victim();
    let images = t.images.to_string_lossy().into_owned();
    let out = t.rcr("restore", &["restore", "-D", &images]);
    assert!(!out.status.success(), "the restore should fail: the port is held by a TIME_WAIT connection");
    for want in [format!("listening on 127.0.0.1:{port}"), "1 connection(s) closed on this port are in TIME_WAIT".to_string(), "SO_REUSEADDR".to_string()] {
        assert!(out.stderr.contains(&want), "the error should say {want:?}:\n{}", out.stderr);
    }
    assert!(!pid_exists(t.pid), "the failed restore left pid {} behind", t.pid);
}

#[test]
fn listener_with_accept_queue_refused() {
    let Some(mut t) = TestEnv::new("inet_backlog") else { return };
    t.spawn_victim("inet", &["backlog"], false);
    t.wait_ready();
    let port = log_port(&t);
    let _waiting = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    std::thread::sleep(Duration::from_millis(100));
    let what = format!("pid {} fd 3", t.pid);
    t.assert_dump_refused(&["--tcp-established"], &[&what, &format!("listening on 127.0.0.1:{port}"), "1 connections wait in its accept queue"]);
    t.go_expect_original_pass();
}
