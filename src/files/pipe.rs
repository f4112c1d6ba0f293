//! Pipes: both ends, the bytes buffered in them, their size and flags.
//!
//! Dump: every fd whose link reads `pipe:[INODE]` is an end of pipe INODE;
//! the first end seen records the pipe (F_GETPIPE_SZ, and its buffered
//! bytes, peeked with tee(2) so the original keeps them). A pipe whose
//! other end a process outside the tree holds is refused: that end cannot
//! be reconnected. An end nobody holds stays closed.
//!
//! Restore: rcr creates every pipe before forking the tree, fills it, and
//! every restored process inherits all of them; each process dup2s the ends
//! it had to its fd numbers and closes the rest, so processes that shared a
//! pipe share it again.
use crate::images::pb::PipeEntry;
use crate::sys;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// File status flags of a pipe end worth restoring.
const END_FLAGS: u32 = (libc::O_NONBLOCK | libc::O_DIRECT) as u32;

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
    /// pipe id and whether this is the write end.
    pub fn add(&mut self, pid: i32, fd: i32, file: &File, inode: u64, flags: u32) -> Result<(u32, bool)> {
        let write = flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
        let id = match self.by_inode.get(&inode) {
            Some(&id) => id,
            None => {
                let what = || format!("pid {pid} fd {fd} (pipe:[{inode}])");
                let size = sys::pipe_size(file.as_raw_fd()).with_context(|| format!("{}: F_GETPIPE_SZ", what()))?;
                let data = peek(file, write, size).with_context(what)?;
                let id = self.pipes.len() as u32 + 1;
                self.pipes.push(PipeEntry { id, inode, size: size as u32, data, read_flags: 0, write_flags: 0 });
                self.by_inode.insert(inode, id);
                id
            }
        };
        let e = &mut self.pipes[id as usize - 1];
        if write {
            e.write_flags = flags & END_FLAGS;
        } else {
            e.read_flags = flags & END_FLAGS;
        }
        self.holders.entry(id).or_default()[write as usize].get_or_insert_with(|| format!("pid {pid} fd {fd}"));
        Ok((id, write))
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
fn peek(file: &File, write_end: bool, size: i32) -> Result<Vec<u8>> {
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

/// Creates every pipe with its size, bytes and end flags, both ends at fd
/// numbers >= `min` and inheritable. Returns (read, write) by pipe id.
pub fn create_all(pipes: &[PipeEntry], min: RawFd) -> Result<HashMap<u32, (RawFd, RawFd)>> {
    let mut out = HashMap::new();
    for p in pipes {
        let what = || format!("pipes.img: pipe {} (pipe:[{}])", p.id, p.inode);
        if p.data.len() > p.size as usize {
            bail!("{}: {} bytes buffered in a pipe of {} bytes", what(), p.data.len(), p.size);
        }
        let (r, w) = sys::pipe_inheritable().with_context(what)?;
        sys::set_pipe_size(r.as_raw_fd(), p.size as i32).with_context(|| format!("{}: F_SETPIPE_SZ {}", what(), p.size))?;
        let mut wf = File::from(w);
        std::io::Write::write_all(&mut wf, &p.data).with_context(|| format!("{}: refilling its bytes", what()))?;
        sys::set_status_flags(r.as_raw_fd(), p.read_flags as i32).with_context(what)?;
        sys::set_status_flags(wf.as_raw_fd(), p.write_flags as i32).with_context(what)?;
        let r = sys::move_above(r, min).with_context(what)?;
        let w = sys::move_above(wf.into(), min).with_context(what)?;
        out.insert(p.id, (r, w));
    }
    Ok(out)
}
