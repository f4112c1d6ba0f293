//! signalfd: its signal mask (fdinfo `sigmask:`); O_NONBLOCK is a status
//! flag the fd framework restores. Signals pending for the process are
//! carried with the process (core image), so a signalfd reads them again.
use super::fds::{CreateCx, Fd};
use crate::images::pb::{file_desc::Kind, FileDesc, SignalFd};
use anyhow::{Context, Result};

/// Dump side: the mask.
pub fn dump(f: &Fd) -> Result<Kind> {
    let mask = super::eventfd::field(&f.info.text, "sigmask:").and_then(|v| u64::from_str_radix(v, 16).ok());
    let mask = mask.ok_or_else(|| f.refuse("its fdinfo has no readable `sigmask:` line"))?;
    Ok(Kind::Signalfd(SignalFd { mask }))
}

/// Restore side: one signalfd per description.
pub fn create(descs: &[&FileDesc], cx: &mut CreateCx) -> Result<()> {
    for d in descs {
        let Some(Kind::Signalfd(s)) = &d.kind else { continue };
        let fd = crate::sys::signalfd(s.mask, libc::SFD_CLOEXEC)
            .with_context(|| format!("fds.img: description {} ({}): signalfd with mask {:#x}", d.id, d.link, s.mask))?;
        cx.out.insert(d.id, fd);
    }
    Ok(())
}
