//! Pipes: both ends, the bytes buffered in them, their size and flags.
//!
//! Dump: every fd whose link reads `pipe:[INODE]` is an end of pipe INODE;
//! the first end seen records the pipe (F_GETPIPE_SZ, and its buffered
//! bytes, peeked with tee(2) so the original keeps them). A pipe whose
//! other end a process outside the tree holds is refused: that end cannot
//! be reconnected. An end nobody holds stays closed.
//!
//! Restore: rcr creates every pipe before forking the tree and fills it;
//! its two ends are the descriptions the fds refer to ([`super::fds`]).
use super::fds::{CreateCx, Fd};
use crate::images::pb::{file_desc::Kind, FileDesc, PipeEnd, PipeEntry};
use crate::sys;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// The pipes of a tree being dumped.
#[derive(Debug, Default)]
pub struct PipeTable {
    pub pipes: Vec<PipeEntry>,
    by_inode: HashMap<u64, u32>,
    /// For each pipe id: who holds the read and the write end.
    holders: HashMap<u32, [Option<String>; 2]>,
}

/// The inode of a `pipe:[N]` link target.
pub fn pipe_inode(link: &str) -> Option<u64> {
    link.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

impl PipeTable {
    /// Records fd `fd` of `pid`, an end of pipe `inode` opened with
    /// `flags` (from fdinfo); `file` is the task's open file. Returns the
    /// pipe id.
    pub fn add(&mut self, pid: i32, fd: i32, file: &File, inode: u64, write: bool) -> Result<u32> {
        let id = match self.by_inode.get(&inode) {
            Some(&id) => id,
            None => {
                let what = || format!("pid {pid} fd {fd} (pipe:[{inode}])");
                let size = sys::pipe_size(file.as_raw_fd()).with_context(|| format!("{}: F_GETPIPE_SZ", what()))?;
                let data = peek(file, write, size).with_context(what)?;
                let id = self.pipes.len() as u32 + 1;
                self.pipes.push(PipeEntry { id, inode, size: size as u32, data });
                self.by_inode.insert(inode, id);
                id
            }
        };
        self.holders.entry(id).or_default()[write as usize].get_or_insert_with(|| format!("pid {pid} fd {fd}"));
        Ok(id)
    }

    /// Refuses a pipe whose other end a process outside the tree (`tree`:
    /// the dumped PIDs) holds. An end nobody holds any more was closed: the
    /// restored pipe gets it closed too.
    pub fn check_complete(&self, tree: &[i32]) -> Result<()> {
        for p in &self.pipes {
            let [r, w] = self.holders.get(&p.id).cloned().unwrap_or_default();
            let (ours, missing) = match (r, w) {
                (Some(_), Some(_)) | (None, None) => continue,
                (Some(r), None) => (format!("{r} is the read end"), "write"),
                (None, Some(w)) => (format!("{w} is the write end"), "read"),
            };
            if let Some(outside) = outside_holder(p.inode, tree) {
                bail!("{ours} of pipe:[{}], whose {missing} end {outside} holds, outside the dumped tree; rcr cannot reconnect it", p.inode);
            }
        }
        Ok(())
    }
}

/// A process outside `tree` with an fd on pipe `inode`, as "pid N fd M".
fn outside_holder(inode: u64, tree: &[i32]) -> Option<String> {
    let want = format!("pipe:[{inode}]");
    let procs = std::fs::read_dir("/proc").ok()?;
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if tree.contains(&pid) || pid == std::process::id() as i32 {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == want.as_str()) {
                return Some(format!("pid {pid} fd {}", fd.file_name().to_string_lossy()));
            }
        }
    }
    None
}

/// The bytes buffered in the pipe, copied with tee(2) (not consumed).
/// From the write end, a read end is opened through /proc/self/fd.
pub fn peek(file: &File, write_end: bool, size: i32) -> Result<Vec<u8>> {
    let n = sys::pipe_buffered(file.as_raw_fd()).context("FIONREAD")?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let reader = if write_end {
        let link = format!("/proc/self/fd/{}", file.as_raw_fd());
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&link)
            .with_context(|| format!("opening a read end through {link}"))?
    } else {
        file.try_clone().context("dup")?
    };
    let (tmp_r, tmp_w) = sys::pipe(size.max(n as i32)).context("pipe")?;
    let copied = sys::tee(reader.as_raw_fd(), tmp_w.as_raw_fd(), n).context("tee")?;
    if copied != n {
        bail!("tee copied {copied} of the {n} buffered bytes");
    }
    drop(tmp_w);
    let mut data = Vec::with_capacity(n);
    File::from(tmp_r).read_to_end(&mut data).context("reading the copied bytes")?;
    Ok(data)
}

/// Dump side of one pipe end (seen for the first time).
pub fn dump(f: &Fd, pipes: &mut PipeTable) -> Result<Kind> {
    let inode = pipe_inode(&f.link).ok_or_else(|| f.refuse("unexpected pipe link"))?;
    let write = f.flags() & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
    let pipe_id = pipes.add(f.pid, f.fd, f.file, inode, write)?;
    Ok(Kind::Pipe(PipeEnd { pipe_id, write }))
}

/// Creates every pipe an end of which a description refers to, with its
/// size and bytes; its ends become those descriptions.
pub fn create(descs: &[&FileDesc], cx: &mut CreateCx) -> Result<()> {
    let mut ends: HashMap<u32, [Option<u32>; 2]> = HashMap::new();
    for d in descs {
        let Some(Kind::Pipe(e)) = &d.kind else { continue };
        let slot = &mut ends.entry(e.pipe_id).or_default()[e.write as usize];
        if let Some(other) = slot.replace(d.id) {
            bail!("fds.img: descriptions {other} and {} are both the {} end of pipe {}", d.id, if e.write { "write" } else { "read" }, e.pipe_id);
        }
    }
    for (pipe_id, [r_id, w_id]) in ends {
        let p = cx.images.pipes.iter().find(|p| p.id == pipe_id).with_context(|| format!("pipes.img: no pipe {pipe_id}"))?;
        let (r, w) = make(p)?;
        for (id, end) in [(r_id, r), (w_id, w)] {
            if let Some(id) = id {
                cx.out.insert(id, end);
            }
        }
    }
    Ok(())
}

/// One pipe with its size and buffered bytes.
fn make(p: &PipeEntry) -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let what = || format!("pipes.img: pipe {} (pipe:[{}])", p.id, p.inode);
    if p.data.len() > p.size as usize {
        bail!("{}: {} bytes buffered in a pipe of {} bytes", what(), p.data.len(), p.size);
    }
    let (r, w) = sys::pipe_inheritable().with_context(what)?;
    sys::set_pipe_size(r.as_raw_fd(), p.size as i32).with_context(|| format!("{}: F_SETPIPE_SZ {}", what(), p.size))?;
    let mut wf = File::from(w);
    std::io::Write::write_all(&mut wf, &p.data).with_context(|| format!("{}: refilling its bytes", what()))?;
    Ok((r, wf.into()))
}
