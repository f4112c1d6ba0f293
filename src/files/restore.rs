//! Restore side of files. `check` runs in rcr before anything is created;
//! the rest runs in the child that becomes the restored process.
use super::FileTable;
use crate::images::pb::{FdEntry, Fs, RegFile};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::fs::MetadataExt;

/// Flags that only make sense when a file is first created.
const CREATE_FLAGS: u32 = (libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32;

/// Whether a file's content must be as it was at dump time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// Only read-only regular files must be unchanged: a file the process
    /// writes itself (its log, a shared mapping) may legitimately change.
    MayChange,
    /// The content shows through (the unwritten pages of a private
    /// mapping), so size and mtime must match.
    Unchanged,
}

/// Refuses files that are gone or were replaced since the dump, and
/// files whose size or mtime changed where that matters (see [`Content`]).
pub fn check(what: &str, f: &RegFile, content: Content) -> Result<()> {
    let md = std::fs::metadata(&f.path).with_context(|| format!("{what}: {} is gone", f.path))?;
    if md.mode() & libc::S_IFMT != f.mode & libc::S_IFMT {
        bail!("{what}: {} is now a {}, it was a {}", f.path, super::file_type(md.mode()), super::file_type(f.mode));
    }
    if md.mode() & libc::S_IFMT == libc::S_IFCHR {
        if md.rdev() != f.rdev {
            bail!("{what}: {} is now device {:#x}, it was {:#x}", f.path, md.rdev(), f.rdev);
        }
        return Ok(());
    }
    if md.dev() != f.dev || md.ino() != f.inode {
        bail!("{what}: {} was replaced since the dump (inode {} on device {:#x}, saved {} on {:#x})", f.path, md.ino(), md.dev(), f.inode, f.dev);
    }
    let read_only = f.flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32;
    if (read_only || content == Content::Unchanged) && md.mode() & libc::S_IFMT == libc::S_IFREG {
        unchanged(what, f, &md)?;
    }
    Ok(())
}

fn unchanged(what: &str, f: &RegFile, md: &std::fs::Metadata) -> Result<()> {
    let mtime = md.mtime() * 1_000_000_000 + md.mtime_nsec();
    if md.size() != f.size || mtime != f.mtime_ns {
        bail!(
            "{what}: {} was replaced or modified since the dump (size {} mtime {} ns, saved {} and {})",
            f.path,
            md.size(),
            mtime,
            f.size,
            f.mtime_ns
        );
    }
    Ok(())
}

/// Checks every file the images refer to.
pub fn check_all(table: &FileTable, fds: &[FdEntry]) -> Result<()> {
    for fd in fds {
        let f = table.get(fd.file_id).with_context(|| format!("fdinfo: fd {} refers to unknown file id {}", fd.fd, fd.file_id))?;
        check(&format!("fd {}", fd.fd), f, Content::MayChange)?;
    }
    Ok(())
}

/// Opens a saved file as it was opened (flags, then offset).
pub fn open(f: &RegFile, flags: u32) -> Result<RawFd> {
    let flags = flags & !CREATE_FLAGS & !(libc::O_CLOEXEC as u32);
    let c = std::ffi::CString::new(f.path.as_bytes()).context("path with NUL")?;
    let fd = crate::sys::open(&c, flags as i32).with_context(|| format!("opening {}", f.path))?;
    Ok(fd.into_raw_fd())
}

/// Closes every fd except `keep`, then reopens the saved fds at their
/// numbers with their flags, offsets and close-on-exec bits. Pipe ends are
/// duplicated from `pipes` (read, write by pipe id), which rcr created.
pub fn restore_fds(fds: &[FdEntry], table: &FileTable, keep: &[RawFd], pipes: &HashMap<u32, (RawFd, RawFd)>) -> Result<()> {
    crate::sys::close_all_except(keep)?;
    let mut sorted: Vec<&FdEntry> = fds.iter().collect();
    sorted.sort_by_key(|e| e.fd);
    for e in sorted {
        let what = format!("fd {}", e.fd);
        if e.pipe_id != 0 {
            let &(r, w) = pipes.get(&e.pipe_id).with_context(|| format!("{what}: unknown pipe id {}", e.pipe_id))?;
            let end = if e.pipe_write { w } else { r };
            crate::sys::dup_to(end, e.fd as RawFd, e.cloexec).with_context(|| format!("{what}: placing pipe {}", e.pipe_id))?;
            continue;
        }
        let f = table.get(e.file_id).with_context(|| format!("{what}: unknown file id {}", e.file_id))?;
        let fd = open(f, f.flags).with_context(|| what.clone())?;
        let fd = crate::sys::move_fd(fd, e.fd as RawFd, e.cloexec).with_context(|| what.clone())?;
        let fmt = f.mode & libc::S_IFMT;
        if (fmt == libc::S_IFREG || fmt == libc::S_IFDIR) && f.pos != 0 {
            crate::sys::lseek(fd, f.pos).with_context(|| format!("{what}: seeking {} to {}", f.path, f.pos))?;
        }
    }
    Ok(())
}

/// Root, cwd and umask.
pub fn restore_fs(fs: &Fs) -> Result<()> {
    if fs.root != "/" {
        std::os::unix::fs::chroot(&fs.root).with_context(|| format!("chroot {}", fs.root))?;
    }
    std::env::set_current_dir(&fs.cwd).with_context(|| format!("chdir {}", fs.cwd))?;
    crate::sys::set_umask(fs.umask);
    Ok(())
}
