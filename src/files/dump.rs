//! Dump side of files: classifies every fd, refuses what rcr cannot carry
//! yet (naming the fd), and records the rest.
use super::pipe::{pipe_inode, PipeTable};
use super::{FileTable, MEM_MAJOR};
use crate::images::pb::{FdEntry, Fs, RegFile};
use crate::proc;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::MetadataExt;
use std::fs::File;
use std::path::Path;

/// Records a path-addressable file (regular, directory, memory device) as
/// seen through a /proc magic link, and checks the path still names it.
/// `open`: the task's own open file (received from the parasite), to
/// fstat instead of following the link.
pub fn describe(link: &Path, what: &str, open: Option<&File>) -> Result<RegFile> {
    let target = std::fs::read_link(link).with_context(|| format!("{what}: readlink {}", link.display()))?;
    let target_s = target.to_string_lossy().to_string();
    let md = match open {
        Some(f) => f.metadata(),
        None => std::fs::metadata(link),
    }
    .with_context(|| format!("{what} ({target_s}): stat"))?;
    let mode = md.mode();
    let fmt = mode & libc::S_IFMT;
    let kind_ok = fmt == libc::S_IFREG || fmt == libc::S_IFDIR || (fmt == libc::S_IFCHR && libc::major(md.rdev()) as u64 == MEM_MAJOR);
    if !kind_ok {
        bail!("{what} ({target_s}) is a {}, which rcr cannot dump yet", describe_kind(&md, &target_s));
    }
    if !target_s.starts_with('/') || target_s.ends_with(" (deleted)") {
        bail!("{what} ({target_s}): the file has no path (deleted or unreachable); rcr cannot dump it yet");
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
        mode,
        dev: md.dev(),
        inode: md.ino(),
        rdev: md.rdev(),
        size: md.size(),
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
    })
}

fn describe_kind(md: &std::fs::Metadata, target: &str) -> String {
    let fmt = md.mode() & libc::S_IFMT;
    for kind in ["pipe", "socket"] {
        if target.starts_with(&format!("{kind}:")) {
            return kind.to_string();
        }
    }
    if target.starts_with("anon_inode:") {
        return format!("anonymous inode ({})", target.trim_start_matches("anon_inode:"));
    }
    if fmt == libc::S_IFCHR {
        return format!("character device {}:{}", libc::major(md.rdev()), libc::minor(md.rdev()));
    }
    super::file_type(md.mode()).to_string()
}

/// Dumps every fd of `pid`; fails on the first fd rcr cannot carry.
/// Describes the fds `fds` of `pid`, each with its open file as the task
/// holds it (passed by the parasite over SCM_RIGHTS).
/// Pipe ends go to `pipes`, everything else to `table`.
pub fn dump_fds(pid: i32, fds: Vec<(i32, File)>, table: &mut FileTable, pipes: &mut PipeTable) -> Result<Vec<FdEntry>> {
    let mut out = Vec::new();
    for (fd, file) in fds {
        let what = format!("fd {fd}");
        let link = proc::path(pid, &format!("fd/{fd}"));
        let info = proc::fdinfo(pid, fd)?;
        let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
        let target = std::fs::read_link(&link).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(inode) = pipe_inode(&target) {
            let (pipe_id, pipe_write) = pipes.add(pid, fd, &file, inode, info.flags)?;
            out.push(FdEntry { fd: fd as u32, file_id: 0, cloexec, pipe_id, pipe_write });
            continue;
        }
        let mut f = describe(&link, &what, Some(&file))?;
        f.flags = info.flags & !(libc::O_CLOEXEC as u32);
        f.pos = info.pos;
        let file_id = table.add(f);
        out.push(FdEntry { fd: fd as u32, file_id, cloexec, pipe_id: 0, pipe_write: false });
    }
    Ok(out)
}

/// cwd, root and umask.
pub fn dump_fs(pid: i32, status: &std::collections::HashMap<String, String>) -> Result<Fs> {
    let link = |n: &str| -> Result<String> {
        let p = proc::path(pid, n);
        let t = std::fs::read_link(&p).with_context(|| format!("readlink {}", p.display()))?;
        let s = t.to_string_lossy().to_string();
        if s.ends_with(" (deleted)") {
            bail!("{n} of pid {pid} ({s}) was deleted; rcr cannot dump it");
        }
        Ok(s)
    };
    let umask = status.get("Umask").map(|u| u32::from_str_radix(u, 8)).transpose().context("status Umask")?.unwrap_or(0o022);
    Ok(Fs { cwd: link("cwd")?, root: link("root")?, umask })
}
