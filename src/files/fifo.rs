//! FIFOs (named pipes): reopened by path, with their pipe size and the
//! bytes buffered in them.
//!
//! Dump: the first description of a FIFO (by st_dev, st_ino) records its
//! pipe size and buffered bytes, peeked with tee(2) ([`super::pipe::peek`])
//! so the task keeps them; its path must still name it. Every description
//! of that FIFO gets one fifo_id.
//!
//! Restore: per FIFO, rcr opens the path O_RDWR|O_NONBLOCK first (a
//! reader and a writer: no open of it blocks then), sets the pipe size,
//! refills the bytes, opens each description with its saved flags, and
//! lets go of its own open. All share the FIFO's one pipe buffer.
use super::fds::{CreateCx, DumpCx, Fd};
use crate::images::pb::{file_desc::Kind, FifoFile, FileDesc};
use crate::sys;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;


/// The FIFOs of a tree being dumped, by (st_dev, st_ino).
#[derive(Debug, Default)]
pub struct Table {
    by_inode: HashMap<(u64, u64), u32>,
}

/// Dump side of one FIFO description.
pub fn dump(f: &Fd, cx: &mut DumpCx) -> Result<Kind> {
    let (dev, inode) = (f.md.dev(), f.md.ino());
    check_path(&f.link, dev, inode).map_err(|e| f.refuse(&format!("{e:#}")))?;
    let mut e = FifoFile { path: f.link.clone(), dev, inode, ..Default::default() };
    e.pipe_size = sys::pipe_size(f.file.as_raw_fd()).with_context(|| format!("{}: F_GETPIPE_SZ", f.what()))? as u32;
    let next = cx.fifo.by_inode.len() as u32 + 1;
    e.fifo_id = *cx.fifo.by_inode.entry((dev, inode)).or_insert(next);
    if e.fifo_id == next {
        let write = f.flags() & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
        e.data = super::pipe::peek(f.file, write, e.pipe_size as i32).with_context(|| f.what())?;
    }
    Ok(Kind::Fifo(e))
}

/// The path must name this FIFO (same device and inode).
fn check_path(path: &str, dev: u64, inode: u64) -> Result<()> {
    if !path.starts_with('/') {
        bail!("the FIFO has no path ({path})");
    }
    let md = std::fs::metadata(path).with_context(|| format!("the FIFO's path {path} no longer resolves (deleted or moved)"))?;
    if md.mode() & libc::S_IFMT != libc::S_IFIFO {
        bail!("{path} is now a {}, not the FIFO", super::file_type(md.mode()));
    }
    if md.dev() != dev || md.ino() != inode {
        bail!("{path} now names another FIFO (inode {} on {:#x}, saved {inode} on {dev:#x})", md.ino(), md.dev());
    }
    Ok(())
}


/// Restore side: per FIFO, refill its buffer, then open its descriptions.
pub fn create(descs: &[&FileDesc], cx: &mut CreateCx) -> Result<()> {
    let mut by_fifo: BTreeMap<u32, Vec<(&FileDesc, &FifoFile)>> = BTreeMap::new();
    for d in descs {
        if let Some(Kind::Fifo(f)) = &d.kind {
            by_fifo.entry(f.fifo_id).or_default().push((d, f));
        }
    }
    for group in by_fifo.values() {
        let (d0, f0) = group[0];
        let what = || format!("fds.img: description {} (FIFO {})", d0.id, f0.path);
        check_path(&f0.path, f0.dev, f0.inode).with_context(what)?;
        let keeper = super::reg::open_path(&f0.path, (libc::O_RDWR | libc::O_NONBLOCK) as u32).with_context(what)?;
        refill(&keeper, f0.pipe_size, group.iter().flat_map(|(_, f)| f.data.iter().copied()).collect()).with_context(what)?;
        for (d, f) in group {
            let fd = super::reg::open_path(&f.path, d.flags).with_context(|| format!("fds.img: description {} (FIFO {})", d.id, f.path))?;
            cx.out.insert(d.id, fd);
        }
    }
    Ok(())
}

/// Sets the pipe size of a FIFO nobody else has open and puts its bytes
/// back.
fn refill(keeper: &OwnedFd, size: u32, data: Vec<u8>) -> Result<()> {
    let there = sys::pipe_buffered(keeper.as_raw_fd()).context("FIONREAD")?;
    if there != 0 {
        bail!("it already buffers {there} bytes: another process has it open; rcr cannot restore its buffer");
    }
    sys::set_pipe_size(keeper.as_raw_fd(), size as i32).with_context(|| format!("F_SETPIPE_SZ {size}"))?;
    if data.len() > size as usize {
        bail!("{} bytes buffered in a pipe of {size} bytes", data.len());
    }
    let mut w = File::from(keeper.try_clone().context("dup")?);
    std::io::Write::write_all(&mut w, &data).context("refilling its bytes")?;
    Ok(())
}
