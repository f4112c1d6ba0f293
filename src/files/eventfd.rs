//! eventfd: counter and flags.
use super::fds::{CreateCx, Fd};
use crate::images::pb::{file_desc::Kind, FileDesc};
use anyhow::{bail, Result};

/// Dump side: not carried yet.
pub fn dump(f: &Fd) -> Result<Kind> {
    Err(f.refuse("it is an eventfd, which this version does not carry"))
}

/// Restore side.
pub fn create(descs: &[&FileDesc], _cx: &mut CreateCx) -> Result<()> {
    if let Some(d) = descs.first() {
        bail!("fds.img: description {} ({}): an eventfd, which this version does not restore", d.id, d.link);
    }
    Ok(())
}
