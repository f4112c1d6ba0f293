//! Deleted files still open (ghosts: the /proc link reads
//! `/path (deleted)`): their inode, content and all, goes to the table of
//! inodes without a path ([`super::memfd::Table`], memfiles.img), up to
//! the `--ghost-limit`.
//!
//! Restore: the file is created again at its path (or, if something else
//! took that name, at a free name next to it) with its content, owner,
//! mode and mtime, and unlinked at once; its descriptions are new opens of
//! it through /proc/self/fd/N ([`super::memfd::reopen`]), so their links
//! read `/path (deleted)` again.
use super::fds::{CreateCx, DumpCx, Fd};
use crate::images::pb::{file_desc::Kind, FileDesc, GhostFile, MemFile, MemFileKind};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

/// The path of a deleted file, from its `/path (deleted)` link.
pub fn ghost_path(link: &str) -> Option<&str> {
    link.strip_suffix(" (deleted)").filter(|p| p.starts_with('/'))
}

/// Dump side of a description of a deleted file.
pub fn dump(f: &Fd, cx: &mut DumpCx) -> Result<Kind> {
    let path = ghost_path(&f.link).ok_or_else(|| f.refuse("a deleted file without an absolute path"))?;
    let head = MemFile { kind: MemFileKind::MemFileGhost as i32, name: path.to_string(), ..Default::default() };
    let inode_id = cx.memfd.add(f.file, &f.what(), head)?;
    Ok(Kind::Ghost(GhostFile { inode_id }))
}

/// Creates the file at its path or a free name next to it, O_RDWR, and
/// returns it with the name used.
fn create_at(path: &str, id: u32) -> Result<File> {
    let open = |p: &str| std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(p);
    let mut last = None;
    for n in 0..100 {
        let p = if n == 0 { path.to_string() } else { format!("{path}.rcr-ghost-{id}-{n}") };
        match open(&p) {
            Ok(f) => {
                // Unlink only the file just created, not one swapped in since.
                let (ours, now) = (f.metadata().with_context(|| format!("fstat {p}"))?, std::fs::symlink_metadata(&p).with_context(|| format!("lstat {p}"))?);
                if (ours.dev(), ours.ino()) != (now.dev(), now.ino()) {
                    bail!("{p} was replaced right after rcr created it; not unlinking what is there now");
                }
                std::fs::remove_file(&p).with_context(|| format!("unlinking {p}"))?;
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e).with_context(|| format!("creating {p}")),
        }
    }
    Err(anyhow!("creating {path}: no free name next to it ({last:?})"))
}

/// Recreates a deleted file: content, owner, mode and mtime; unlinked.
pub fn create_inode(m: &MemFile) -> Result<OwnedFd> {
    if !m.name.starts_with('/') {
        bail!("the path {:?} is not absolute", m.name);
    }
    let f = create_at(&m.name, m.id)?;
    super::memfd::write_content(&f, m)?;
    std::os::unix::fs::fchown(&f, Some(m.uid), Some(m.gid)).with_context(|| format!("fchown {}:{}", m.uid, m.gid))?;
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(m.mode & 0o7777)).context("fchmod")?;
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(m.mtime_ns.max(0) as u64);
    f.set_modified(mtime).context("futimens")?;
    Ok(f.into())
}

/// Restore side: each description, a new open of its recreated inode.
pub fn create(descs: &[&FileDesc], cx: &mut CreateCx) -> Result<()> {
    for d in descs {
        let Some(Kind::Ghost(g)) = &d.kind else { continue };
        let what = || format!("fds.img: description {} ({})", d.id, d.link);
        let &inode = cx.mem.get(&g.inode_id).ok_or_else(|| anyhow!("{}: no deleted file {} in memfiles.img", what(), g.inode_id))?;
        cx.out.insert(d.id, super::memfd::reopen(inode, d.flags, d.pos).with_context(what)?);
    }
    Ok(())
}
