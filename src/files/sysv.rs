//! SysV IPC of the host IPC namespace, which rcr does not carry: refused
//! at dump when the tree visibly uses it.
//!
//! - shared memory: an attached segment shows as a `/SYSV<key> (deleted)`
//!   mapping and is refused there (`mm::dump`); a segment a process of the
//!   tree created or last attached or detached (/proc/sysvipc/shm cpid,
//!   lpid) is refused here;
//! - message queues: one a process of the tree last sent to or received
//!   from (/proc/sysvipc/msg lspid, lrpid) is refused here;
//! - semaphores: /proc/sysvipc/sem records no pid, so a tree using a
//!   semaphore set cannot be detected and is not refused (the restored
//!   tree then finds the set as it is at restore time, if it still exists).
use anyhow::{bail, Context, Result};

/// Refuses SysV shared memory segments and message queues that a process
/// of `tree` uses.
pub fn check_tree(tree: &[i32]) -> Result<()> {
    check_table("/proc/sysvipc/shm", "shared memory segment", "shmid", &["cpid", "lpid"], tree)?;
    check_table("/proc/sysvipc/msg", "message queue", "msqid", &["lspid", "lrpid"], tree)
}

/// One /proc/sysvipc table: a row whose `pid_cols` hold a pid of `tree`
/// is refused.
fn check_table(path: &str, what: &str, id_col: &str, pid_cols: &[&str], tree: &[i32]) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {path}")),
    };
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    let col = |name: &str| head.iter().position(|h| *h == name);
    let (Some(key), Some(id)) = (col("key"), col(id_col)) else { return Ok(()) };
    for line in lines {
        let row: Vec<&str> = line.split_whitespace().collect();
        for name in pid_cols {
            let Some(pid) = col(name).and_then(|c| row.get(c)).and_then(|p| p.parse::<i32>().ok()) else { continue };
            if pid > 0 && tree.contains(&pid) {
                let (k, i) = (row.get(key).unwrap_or(&"?"), row.get(id).unwrap_or(&"?"));
                bail!("pid {pid} uses SysV {what} key {k} id {i} ({path} {name}); rcr cannot carry SysV IPC objects");
            }
        }
    }
    Ok(())
}
