//! What a restored process does about its kin, in the restore child,
//! in this order (see [`crate::restore::child`]):
//! 1. [`found`] its own session or group, if it led one,
//! 2. [`fork_child`] each of its children with its saved PID (they inherit
//!    the session and group just made),
//! 3. once every process of the tree got that far: [`join`] a group led by
//!    another process of the tree.
use super::Kin;
use anyhow::{Context, Result};
use nix::unistd::{setpgid, setsid, Pid};

pub fn found(kin: Kin) -> Result<()> {
    match kin {
        Kin::NewSession => {
            setsid().context("setsid")?;
        }
        Kin::NewGroup => setpgid(Pid::from_raw(0), Pid::from_raw(0)).context("setpgid(0, 0)")?,
        Kin::Inherit | Kin::JoinGroup(_) => {}
    }
    Ok(())
}

pub fn join(kin: Kin) -> Result<()> {
    if let Kin::JoinGroup(pgid) = kin {
        setpgid(Pid::from_raw(0), Pid::from_raw(pgid)).with_context(|| format!("joining process group {pgid}"))?;
    }
    Ok(())
}

/// Forks a child with PID `pid` that runs `body`, which must not return
/// (the child exits if it does).
pub fn fork_child(pid: i32, body: impl FnOnce()) -> Result<()> {
    // SAFETY: restore children are single-threaded (no thread is created
    // before the restorer blob).
    #[allow(unsafe_code)]
    let forked = unsafe { crate::sys::clone3_with_pid(pid) };
    match forked.with_context(|| format!("forking pid {pid}"))? {
        0 => {
            body();
            crate::sys::exit_now(127)
        }
        _ => Ok(()),
    }
}
