//! The network lock: one nftables table per dump (`inet rcr-PID-MS`), whose
//! input and output chains drop every packet of each carried TCP
//! connection, both directions. It goes in before the connection's socket
//! enters repair mode and stays until restore has rebuilt the connection,
//! so neither side sees a reset: the peer's packets are dropped (it
//! retransmits), and the dead socket's silence is not an answer.
//!
//! [`NetLock`] also owns rcr's copy of every socket it put in repair mode.
//! Dropped without [`NetLock::keep`] (a failed dump, or `-R` through
//! [`NetLock::release`]) it turns repair off on each and deletes the table,
//! leaving the target as before.
use crate::log;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};

/// Fails clearly when `nft` cannot be run (before the dump touches anything).
pub fn check_nft() -> Result<()> {
    match Command::new("nft").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(st) if st.success() => Ok(()),
        Ok(st) => bail!("`nft --version` failed ({st}); --tcp-established needs nftables (Debian package nftables) for the network lock"),
        Err(e) => bail!("cannot run nft ({e}); --tcp-established needs nftables (Debian package nftables, binary nft) for the network lock"),
    }
}

/// Feeds `script` to `nft -f -`.
fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft").args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().context("running nft -f -")?;
    child.stdin.take().context("nft stdin")?.write_all(script.as_bytes()).context("writing to nft")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!("nft -f - failed ({}): {}\nscript:\n{script}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Deletes the table `name` (as the inventory records it: "inet NAME").
pub fn delete_table(name: &str) -> Result<()> {
    nft(&format!("delete table {name}\n")).with_context(|| format!("deleting the network lock table {name}"))
}

/// The command that drops a lock left behind, for messages.
pub fn drop_command(name: &str) -> String {
    format!("nft delete table {name}")
}

/// nft match of one direction of a connection: from `a` to `b`.
fn direction(a: SocketAddr, b: SocketAddr) -> String {
    let (ia, ib) = (a.ip().to_canonical(), b.ip().to_canonical());
    let fam = if ia.is_ipv4() { "ip" } else { "ip6" };
    format!("{fam} saddr {ia} {fam} daddr {ib} tcp sport {} tcp dport {}", a.port(), b.port())
}

#[derive(Debug)]
pub struct NetLock {
    /// "inet rcr-PID-MS".
    pub name: String,
    created: bool,
    /// rcr's copies of the sockets in repair mode, with their names for messages.
    repaired: Vec<(OwnedFd, String)>,
    kept: bool,
}

impl Default for NetLock {
    fn default() -> Self {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        NetLock { name: format!("inet rcr-{}-{ms}", std::process::id()), created: false, repaired: Vec::new(), kept: false }
    }
}

impl NetLock {
    /// Drops every packet between `local` and `peer` from now on.
    pub fn block(&mut self, local: SocketAddr, peer: SocketAddr) -> Result<()> {
        let mut s = String::new();
        if !self.created {
            s += &format!("add table {n}\nadd chain {n} input {{ type filter hook input priority -300; policy accept; }}\n", n = self.name);
            s += &format!("add chain {n} output {{ type filter hook output priority -300; policy accept; }}\n", n = self.name);
        }
        for chain in ["input", "output"] {
            for (a, b) in [(local, peer), (peer, local)] {
                s += &format!("add rule {} {chain} {} drop\n", self.name, direction(a, b));
            }
        }
        if !self.created {
            crate::dump::watchdog::table_created(&self.name);
        }
        nft(&s).with_context(|| format!("network lock for {local} -> {peer}"))?;
        if !self.created {
            log::info(&format!("network lock table {} created", self.name));
        }
        self.created = true;
        Ok(())
    }

    /// Remembers a socket rcr put in repair mode (`fd`: rcr's own copy).
    pub fn repaired(&mut self, fd: OwnedFd, what: String) {
        self.repaired.push((fd, what));
    }

    /// The table's name if one was made.
    pub fn table(&self) -> Option<&str> {
        self.created.then_some(self.name.as_str())
    }

    /// Turns repair off on every socket and deletes the table.
    pub fn release(mut self) -> Result<()> {
        self.kept = true;
        let mut first_err = None;
        for (fd, what) in self.repaired.drain(..) {
            if let Err(e) = super::repair::set_repair(fd.as_raw_fd(), false) {
                first_err.get_or_insert(anyhow::anyhow!("{what}: turning TCP_REPAIR off: {e}"));
            }
        }
        crate::dump::watchdog::sockets_released();
        if self.created {
            if let Err(e) = delete_table(&self.name) {
                first_err.get_or_insert(e);
            }
        }
        crate::dump::watchdog::table_created("");
        first_err.map_or(Ok(()), Err)
    }

    /// Leaves the table and the sockets in repair mode (the tree was
    /// killed: closing them sends nothing); returns the table's name.
    pub fn keep(mut self) -> Option<String> {
        self.kept = true;
        crate::dump::watchdog::sockets_released();
        crate::dump::watchdog::table_created("");
        self.table().map(str::to_string)
    }
}

impl Drop for NetLock {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let me = std::mem::take(self);
        self.kept = true;
        if let Err(e) = me.release() {
            log::warn(&format!("undoing the network lock: {e:#}"));
        }
    }
}
