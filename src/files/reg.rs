//! Path-addressable files: regular files, directories and memory devices
//! (/dev/null, /dev/zero, /dev/urandom...), for fds, file mappings and the
//! exe link. Saved by path with what identifies the object (device,
//! inode, size, mtime); reopened by path at restore after checking that
//! the path still names that object.
use super::fds::{CreateCx, Fd};
use super::{FileTable, MEM_MAJOR};
use crate::images::pb::{file_desc::Kind, FileDesc, RegFile};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Flags that only make sense when a file is first created, and
/// O_CLOEXEC (the fd's, not the description's): dropped when reopening.
const CREATE_FLAGS: u32 = (libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_CLOEXEC) as u32;

/// Whether `md` is a kind this module carries.
pub fn is_reg(md: &std::fs::Metadata) -> bool {
    let fmt = md.mode() & libc::S_IFMT;
    fmt == libc::S_IFREG || fmt == libc::S_IFDIR || (fmt == libc::S_IFCHR && libc::major(md.rdev()) as u64 == MEM_MAJOR)
}

/// Records a path-addressable file as seen through a /proc magic link,
/// and checks the path still names it. `open`: the task's own open file
/// (received from the parasite), to fstat instead of following the link.
pub fn describe(link: &Path, what: &str, open: Option<&File>) -> Result<RegFile> {
    let target = std::fs::read_link(link).with_context(|| format!("{what}: readlink {}", link.display()))?;
    let target_s = target.to_string_lossy().to_string();
    let md = match open {
        Some(f) => f.metadata(),
        None => std::fs::metadata(link),
    }
    .with_context(|| format!("{what} ({target_s}): stat"))?;
    if !is_reg(&md) {
        bail!("{what} ({target_s}) is a {}, which rcr cannot carry", super::fds::describe_kind(&md, &target_s));
    }
    if !target_s.starts_with('/') || target_s.ends_with(" (deleted)") {
        bail!("{what} ({target_s}): the file has no path (deleted or unreachable); rcr cannot carry it here");
    }
    let by_path = std::fs::metadata(&target).with_context(|| format!("{what} ({target_s}): the path no longer resolves"))?;
    if by_path.dev() != md.dev() || by_path.ino() != md.ino() {
        bail!("{what} ({target_s}): the path now names another file (the open one was replaced)");
    }
    Ok(RegFile {
        id: 0,
        path: target_s,
        flags: 0,
        pos: 0,
        mode: md.mode(),
        dev: md.dev(),
        inode: md.ino(),
        rdev: md.rdev(),
        size: md.size(),
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
    })
}

/// Dump side for an fd: the file goes to files.img, the description
/// refers to it.
pub fn dump(fd: &Fd, files: &mut FileTable) -> Result<Kind> {
    let mut f = describe(&fd.link_path(), &format!("pid {} fd {}", fd.pid, fd.fd), Some(fd.file))?;
    f.flags = fd.flags();
    f.pos = fd.info.pos;
    Ok(Kind::RegFileId(files.add(f)))
}

/// Whether a file's content must be as it was at dump time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// Shared mappings: a read-only file must be unchanged, a writable one
    /// may have changed in any way.
    MayChange,
    /// Files opened for writing: the size must match (a file resized
    /// since the dump is another file to the process; O_APPEND files may
    /// only have grown), the mtime need not.
    SameSize,
    /// Read-only files, and files whose content shows through (the
    /// unwritten pages of a private mapping): size and mtime must match.
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
    if md.mode() & libc::S_IFMT != libc::S_IFREG {
        return Ok(());
    }
    let read_only = f.flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32;
    let mtime = md.mtime() * 1_000_000_000 + md.mtime_nsec();
    // An O_APPEND writer does not care where the end is; a file that
    // grew under it (another writer, a second restore) is still its file.
    let appends = f.flags & libc::O_APPEND as u32 != 0 && !read_only;
    let size_ok = md.size() == f.size || (content == Content::MayChange && !read_only) || (appends && md.size() > f.size);
    if !size_ok || ((read_only || content == Content::Unchanged) && mtime != f.mtime_ns) {
        bail!(
            "{what}: {} was resized or modified since the dump (size {} mtime {} ns, saved {} and {})",
            f.path,
            md.size(),
            mtime,
            f.size,
            f.mtime_ns
        );
    }
    Ok(())
}

/// Opens a saved file with `flags` (creation flags and O_CLOEXEC dropped).
pub fn open(f: &RegFile, flags: u32) -> Result<RawFd> {
    Ok(std::os::fd::IntoRawFd::into_raw_fd(open_path(&f.path, flags)?))
}

/// Opens `path` as a saved description was opened: its access mode and
/// status flags, without creation flags and O_CLOEXEC. Also for FIFOs and
/// for new opens of memfds and deleted files through /proc/self/fd.
pub fn open_path(path: &str, flags: u32) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_bytes()).with_context(|| format!("{path:?}: path with NUL"))?;
    crate::sys::open(&c, (flags & !CREATE_FLAGS) as i32).with_context(|| format!("opening {path} with flags {flags:#o}"))
}

/// Restore side: opens each description (flags, then offset).
pub fn create(descs: &[&FileDesc], cx: &mut CreateCx) -> Result<()> {
    for d in descs {
        let Some(Kind::RegFileId(id)) = d.kind else { continue };
        let what = format!("fds.img: description {} ({})", d.id, d.link);
        let f = cx.files.get(id).with_context(|| format!("{what}: unknown file id {id}"))?;
        let fd = open(f, d.flags).with_context(|| what.clone())?;
        let fd = crate::sys::own(fd);
        let fmt = f.mode & libc::S_IFMT;
        if (fmt == libc::S_IFREG || fmt == libc::S_IFDIR) && d.pos != 0 {
            crate::sys::lseek(std::os::fd::AsRawFd::as_raw_fd(&fd), d.pos).with_context(|| format!("{what}: seeking {} to {}", f.path, d.pos))?;
        }
        cx.out.insert(d.id, fd);
    }
    Ok(())
}

/// Checks every regular file the descriptions refer to.
pub fn check_all(files: &FileTable, descs: &[FileDesc]) -> Result<()> {
    for d in descs {
        let Some(Kind::RegFileId(id)) = d.kind else { continue };
        let what = format!("fds.img: description {}", d.id);
        let f = files.get(id).with_context(|| format!("{what}: unknown file id {id}"))?;
        let content = if f.flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32 { Content::Unchanged } else { Content::SameSize };
        check(&what, f, content)?;
    }
    Ok(())
}
