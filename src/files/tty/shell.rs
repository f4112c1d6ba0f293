//! The terminal of a shell job (`-j`): outside the tree, replaced on
//! restore by the terminal rcr runs in.
use crate::files::fds::{CreateCx, DumpCx, Fd};
use crate::images::pb::{file_desc::Kind, FileDesc};
use anyhow::{bail, Result};

/// Whether `f` is on the terminal of the job's session, outside the tree.
pub fn is_job_terminal(_f: &Fd, _cx: &DumpCx) -> Result<bool> {
    Ok(false)
}

pub fn dump(f: &Fd, _cx: &mut DumpCx) -> Result<Kind> {
    Err(f.refuse("it is the terminal of a shell job; rcr does not carry it yet"))
}

pub fn create(descs: &[&FileDesc], _cx: &mut CreateCx) -> Result<()> {
    if let Some(d) = descs.first() {
        bail!("fds.img: description {} ({}): shell-job terminals are not restored yet", d.id, d.link);
    }
    Ok(())
}
