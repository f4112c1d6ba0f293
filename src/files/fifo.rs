//! FIFOs (named pipes): path, buffered bytes.
use super::fds::{CreateCx, DumpCx, Fd};
use crate::images::pb::{file_desc::Kind, FileDesc};
use anyhow::{bail, Result};

/// Dump side: not carried yet.
pub fn dump(f: &Fd, _cx: &mut DumpCx) -> Result<Kind> {
    Err(f.refuse("it is a FIFO, which this version does not carry"))
}

/// Restore side.
pub fn create(descs: &[&FileDesc], _cx: &mut CreateCx) -> Result<()> {
    if let Some(d) = descs.first() {
        bail!("fds.img: description {} ({}): a FIFO, which this version does not restore", d.id, d.link);
    }
    Ok(())
}
