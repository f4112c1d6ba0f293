//! eventfd: its counter and EFD_SEMAPHORE (fdinfo `eventfd-count:` and
//! `eventfd-semaphore:`); O_NONBLOCK is a status flag the fd framework
//! restores. `eventfd-id:` is the kernel's own number and is not carried.
use super::fds::{CreateCx, Fd};
use crate::images::pb::{file_desc::Kind, EventFd, FileDesc};
use anyhow::{Context, Result};

/// The value of the fdinfo line `key` (e.g. `eventfd-count:`), trimmed.
pub(super) fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}

/// Dump side: the counter and the semaphore mode.
pub fn dump(f: &Fd) -> Result<Kind> {
    let text = &f.info.text;
    let count = field(text, "eventfd-count:").and_then(|v| u64::from_str_radix(v, 16).ok());
    let count = count.ok_or_else(|| f.refuse("its fdinfo has no readable `eventfd-count:` line"))?;
    let semaphore = match field(text, "eventfd-semaphore:") {
        Some(v) => v == "1",
        None => return Err(f.refuse("its fdinfo has no `eventfd-semaphore:` line (kernel older than 6.5?)")),
    };
    Ok(Kind::Eventfd(EventFd { count, semaphore }))
}

/// Restore side: one eventfd per description, with its counter.
pub fn create(descs: &[&FileDesc], cx: &mut CreateCx) -> Result<()> {
    for d in descs {
        let Some(Kind::Eventfd(e)) = &d.kind else { continue };
        let flags = libc::EFD_CLOEXEC | if e.semaphore { libc::EFD_SEMAPHORE } else { 0 };
        let fd = crate::sys::eventfd(e.count, flags)
            .with_context(|| format!("fds.img: description {} ({}): eventfd with counter {:#x}", d.id, d.link, e.count))?;
        cx.out.insert(d.id, fd);
    }
    Ok(())
}
