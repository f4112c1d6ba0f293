//! Pseudo-terminals owned by the tree: master and slave ends.
use crate::files::fds::{CreateCx, DumpCx, Fd};
use crate::images::pb::{file_desc::Kind, FileDesc};
use anyhow::{bail, Result};

pub fn dump(f: &Fd, _cx: &mut DumpCx) -> Result<Kind> {
    Err(f.refuse("it is a pseudo-terminal; rcr does not carry them yet"))
}

pub fn create(descs: &[&FileDesc], _cx: &mut CreateCx) -> Result<()> {
    if let Some(d) = descs.first() {
        bail!("fds.img: description {} ({}): pseudo-terminals are not restored yet", d.id, d.link);
    }
    Ok(())
}
