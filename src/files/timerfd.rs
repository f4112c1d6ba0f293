//! timerfd: clock, settime flags, time left, interval, and expirations not
//! yet read.
//!
//! Dump: the clock, the settime flags and the ticks come from fdinfo;
//! the time left and the interval from timerfd_gettime(2) on rcr's copy of
//! the file, which also accounts the periods a periodic timer missed since
//! its last read (as read(2) would: the value read later is the same). The
//! ticks are read from fdinfo again after it.
//!
//! Restore: rcr creates the timer with its clock before forking the tree;
//! the first process of the tree holding it (in tree order, recorded at
//! dump) arms it once its fds are in place, just before its memory is
//! restored, so little time is lost. A relative timer gets the time it had
//! left at dump time (the time between dump and restore does not count for
//! it: it is as if the process was frozen); a TFD_TIMER_ABSTIME timer gets
//! its absolute expiry again (dump clock + time left), so the time between
//! counts, and missed periods show up as ticks. Unread expirations come
//! back with TFD_IOC_SET_TICKS (the kernel needs CONFIG_CHECKPOINT_RESTORE).
use super::eventfd::field;
use super::fds::{CreateCx, Fd, Images};
use crate::images::pb::{file_desc::Kind, FdEntry, FileDesc, TimerFd};
use anyhow::{anyhow, Context, Result};
use std::os::fd::AsRawFd;

/// The ticks line of the fdinfo of rcr's copy, read again after gettime.
fn ticks_now(f: &Fd) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", f.file.as_raw_fd())).context("fdinfo of rcr's copy")?;
    field(&text, "ticks:").and_then(|v| v.parse().ok()).ok_or_else(|| f.refuse("its fdinfo has no readable `ticks:` line"))
}

/// Dump side: clock, flags, time left, interval, ticks.
pub fn dump(f: &Fd) -> Result<Kind> {
    let text = &f.info.text;
    let clockid = field(text, "clockid:").and_then(|v| v.parse().ok()).ok_or_else(|| f.refuse("its fdinfo has no readable `clockid:`"))?;
    let flags = field(text, "settime flags:").and_then(|v| u32::from_str_radix(v, 8).ok());
    let settime_flags = flags.ok_or_else(|| f.refuse("its fdinfo has no readable `settime flags:`"))?;
    let (value_ns, interval_ns) = crate::sys::timerfd_gettime(f.file.as_raw_fd()).with_context(|| format!("{}: timerfd_gettime", f.what()))?;
    let clock_now_ns = crate::sys::clock_now_ns(clockid).with_context(|| format!("{}: clock_gettime({clockid})", f.what()))?;
    let ticks = ticks_now(f)?;
    Ok(Kind::Timerfd(TimerFd { clockid, settime_flags, value_ns, interval_ns, ticks, clock_now_ns, pid: f.pid as u32 }))
}

/// Restore side: the timers, with their clocks, not armed yet.
pub fn create(descs: &[&FileDesc], cx: &mut CreateCx) -> Result<()> {
    for d in descs {
        let Some(Kind::Timerfd(t)) = &d.kind else { continue };
        let fd = crate::sys::timerfd_create(t.clockid, libc::TFD_CLOEXEC)
            .with_context(|| format!("fds.img: description {} ({}): timerfd_create on clock {}", d.id, d.link, t.clockid))?;
        cx.out.insert(d.id, fd);
    }
    Ok(())
}

/// In a restore child, once its fds are in place: arms the timers this
/// process is the first holder of, and gives them their unread ticks.
pub fn after_fds(pid: i32, fds: &[FdEntry], images: &Images) -> Result<()> {
    let mut done = Vec::new();
    for e in fds {
        let Some(Kind::Timerfd(t)) = images.get(e.desc_id).and_then(|d| d.kind.as_ref()) else { continue };
        if t.pid as i32 != pid || done.contains(&e.desc_id) {
            continue;
        }
        done.push(e.desc_id);
        arm(e.fd as i32, t).with_context(|| format!("fd {} (timerfd, description {})", e.fd, e.desc_id))?;
    }
    Ok(())
}

fn arm(fd: i32, t: &TimerFd) -> Result<()> {
    let abs = t.settime_flags & libc::TFD_TIMER_ABSTIME as u32 != 0;
    let value = if t.value_ns == 0 && t.interval_ns == 0 {
        0 // disarmed (or a one-shot that fired: its ticks say so)
    } else if abs {
        (t.clock_now_ns.max(0) as u64).saturating_add(t.value_ns)
    } else if t.value_ns == 0 {
        t.interval_ns // periodic, due right at dump time
    } else {
        t.value_ns
    };
    if value != 0 || t.interval_ns != 0 || t.settime_flags != 0 {
        crate::sys::timerfd_settime(fd, t.settime_flags as i32, value, t.interval_ns)
            .map_err(|e| anyhow!("timerfd_settime(flags {:#o}, value {value} ns, interval {} ns): {e}", t.settime_flags, t.interval_ns))?;
    }
    if t.ticks != 0 {
        crate::sys::timerfd_set_ticks(fd, t.ticks).map_err(|e| anyhow!("TFD_IOC_SET_TICKS {} (needs CONFIG_CHECKPOINT_RESTORE): {e}", t.ticks))?;
    }
    Ok(())
}
