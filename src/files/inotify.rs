//! inotify instances and their watches.
//!
//! Dump: every fdinfo line `inotify wd:W ino:I sdev:D mask:M ignored_mask:0
//! fhandle-bytes:N fhandle-type:T f_handle:H` is one watch. rcr opens the
//! watched inode by its file handle (open_by_handle_at on a mount of the
//! filesystem with device D, from /proc/self/mountinfo) and records the
//! path it is reachable at, checked against I and D. Events queued and not
//! read yet cannot be carried: inotify has no way to read them without
//! consuming them (no peek), so a dump -R would lose them for the original;
//! an instance with queued events (FIONREAD > 0) is refused, and the dump
//! can be retried once the process has read them.
//!
//! Restore: rcr creates the instance before forking the tree and adds the
//! watches in wd order, each on its path (checked to be the same inode
//! still) with its mask and IN_DONT_FOLLOW. The kernel hands out wds
//! cyclically (the lowest free one from the last given + 1), so to reach
//! a saved wd, rcr adds and removes a throw-away watch until the next wd
//! is the saved one, then reads away the IN_IGNORED events that leaves.
use super::fds::{CreateCx, DumpCx, Fd};
use crate::images::pb::{file_desc::Kind, FileDesc, Inotify, InotifyWatch};
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

/// One `inotify wd:` line of an instance's fdinfo (path not resolved yet).
fn parse_watch(line: &str) -> Option<InotifyWatch> {
    let mut w = InotifyWatch::default();
    for word in line.split_whitespace().skip(1) {
        let (k, v) = word.split_once(':')?;
        let hex = || u64::from_str_radix(v, 16).ok();
        match k {
            "wd" => w.wd = hex()? as u32,
            "ino" => w.ino = hex()?,
            "sdev" => w.sdev = hex()? as u32,
            "mask" => w.mask = hex()? as u32,
            "fhandle-type" => w.handle_type = hex()? as u32,
            "f_handle" => w.handle = (0..v.len() / 2).map(|i| u8::from_str_radix(&v[2 * i..2 * i + 2], 16).ok()).collect::<Option<_>>()?,
            _ => {}
        }
    }
    Some(w)
}

/// Whether `md` is inode `ino` on the filesystem with kernel device `sdev`.
fn same_inode(md: &std::fs::Metadata, ino: u64, sdev: u32) -> bool {
    md.ino() == ino && libc::major(md.dev()) == sdev >> 20 && libc::minor(md.dev()) == sdev & 0xfffff
}

/// Mount points of the filesystem with kernel device `sdev` (mountinfo
/// field 3 is major:minor, field 5 the mount point, octal-escaped).
fn mounts_of(sdev: u32) -> Vec<String> {
    let want = format!("{}:{}", sdev >> 20, sdev & 0xfffff);
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && f[2] == want).then(|| f[4].replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\"))
        })
        .collect()
}

/// A path to the watched inode, through its file handle.
fn resolve(w: &InotifyWatch) -> Result<String> {
    if w.handle.is_empty() {
        bail!("its fdinfo shows no file handle (the filesystem cannot make one)");
    }
    let mounts = mounts_of(w.sdev);
    for m in &mounts {
        let Ok(mfd) = std::fs::File::open(m) else { continue };
        let Ok(fd) = crate::sys::open_by_handle(mfd.as_raw_fd(), w.handle_type as i32, &w.handle, libc::O_PATH) else { continue };
        let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) else { continue };
        let path = path.to_string_lossy().into_owned();
        if std::fs::symlink_metadata(&path).is_ok_and(|md| same_inode(&md, w.ino, w.sdev)) {
            return Ok(path);
        }
    }
    bail!("no path reaches it (unlinked, or on no mount rcr can see: tried {mounts:?})")
}

/// Dump side: the watches with their paths; refuses queued events.
pub fn dump(f: &Fd, _cx: &mut DumpCx) -> Result<Kind> {
    let queued = crate::sys::pipe_buffered(f.file.as_raw_fd()).with_context(|| format!("{}: FIONREAD", f.what()))?;
    if queued > 0 {
        return Err(f.refuse(&format!(
            "{queued} bytes of inotify events are queued unread, and inotify cannot be read without consuming them \
             (retry once the process has read its events)"
        )));
    }
    let mut watches = Vec::new();
    for line in f.info.text.lines().filter(|l| l.starts_with("inotify ")) {
        let mut w = parse_watch(line).ok_or_else(|| f.refuse(&format!("unreadable fdinfo line {line:?}")))?;
        w.path = resolve(&w).map_err(|e| f.refuse(&format!("watch {} on inode {:#x} of device {:#x}: {e}", w.wd, w.ino, w.sdev)))?;
        watches.push(w);
    }
    watches.sort_by_key(|w| w.wd);
    Ok(Kind::Inotify(Inotify { watches }))
}

/// Restore side: each instance with its watches at their wds.
pub fn create(descs: &[&FileDesc], cx: &mut CreateCx) -> Result<()> {
    for d in descs {
        let Some(Kind::Inotify(i)) = &d.kind else { continue };
        let fd = make(i).with_context(|| format!("fds.img: description {} ({})", d.id, d.link))?;
        cx.out.insert(d.id, fd);
    }
    Ok(())
}

/// A path rcr can watch and throw away: an inode none of `watches` is on.
fn throwaway(watches: &[InotifyWatch]) -> Result<CString> {
    for p in ["/", "/proc", "/dev", "/sys", "/tmp", "/etc"] {
        let Ok(md) = std::fs::symlink_metadata(p) else { continue };
        if !watches.iter().any(|w| same_inode(&md, w.ino, w.sdev)) {
            return Ok(CString::new(p)?);
        }
    }
    bail!("no directory to use as a throw-away watch")
}

fn make(i: &Inotify) -> Result<OwnedFd> {
    let fd = crate::sys::inotify_init(libc::IN_CLOEXEC | libc::IN_NONBLOCK).context("inotify_init1")?;
    let raw = fd.as_raw_fd();
    let spare = throwaway(&i.watches)?;
    let mut next = 1u32;
    for w in &i.watches {
        while next < w.wd {
            let got = crate::sys::inotify_add_watch(raw, &spare, libc::IN_DELETE_SELF).context("throw-away watch")?;
            crate::sys::inotify_rm_watch(raw, got).context("removing the throw-away watch")?;
            if got as u32 != next {
                bail!("throw-away watch got wd {got}, expected {next}: the kernel does not hand out wds as rcr expects");
            }
            next += 1;
            if next.is_multiple_of(1024) {
                drain(&fd)?;
            }
        }
        add(raw, w).with_context(|| format!("watch {} ({})", w.wd, w.path))?;
        next = w.wd + 1;
    }
    drain(&fd)?;
    Ok(fd)
}

/// Adds watch `w` on its path, checked to be the saved inode still.
fn add(fd: RawFd, w: &InotifyWatch) -> Result<()> {
    let md = std::fs::symlink_metadata(&w.path).context("lstat")?;
    if !same_inode(&md, w.ino, w.sdev) {
        bail!("{} is now inode {:#x} (device {:#x}), not the watched inode {:#x} (device {:#x})", w.path, md.ino(), md.dev(), w.ino, w.sdev);
    }
    let path = CString::new(w.path.as_bytes())?;
    let got = crate::sys::inotify_add_watch(fd, &path, w.mask | libc::IN_DONT_FOLLOW).map_err(|e| anyhow!("inotify_add_watch mask {:#x}: {e}", w.mask))?;
    if got as u32 != w.wd {
        bail!("inotify_add_watch gave wd {got}, expected {}", w.wd);
    }
    Ok(())
}

/// Reads away the IN_IGNORED events the throw-away watches left.
fn drain(fd: &OwnedFd) -> Result<()> {
    let mut f = std::fs::File::from(fd.try_clone().context("dup")?);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e).context("reading the IN_IGNORED events of the throw-away watches"),
        }
    }
}
