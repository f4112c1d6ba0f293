//! Terminals: what every terminal device keeps apart from its open files
//! (line settings, window size), read at dump and set at restore. The
//! kinds of terminal rcr carries build on it.
pub mod pty;
pub mod shell;

use super::fds::{DumpCx, Fd};
use crate::images::pb::file_desc::Kind;
use crate::images::pb::{Termios, Winsize};
use anyhow::{Context, Result};
use nix::sys::termios as nt;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;

/// The line settings of the terminal open at `fd`.
pub fn termios(fd: BorrowedFd) -> Result<Termios> {
    let t = nt::tcgetattr(fd).context("tcgetattr")?;
    let raw: libc::termios = t.into();
    Ok(Termios {
        iflag: raw.c_iflag,
        oflag: raw.c_oflag,
        cflag: raw.c_cflag,
        lflag: raw.c_lflag,
        line: raw.c_line as u32,
        cc: raw.c_cc.to_vec(),
        ispeed: raw.c_ispeed,
        ospeed: raw.c_ospeed,
    })
}

/// Sets the line settings `t` (from an image) on the terminal at `fd`, at
/// once (TCSANOW).
pub fn set_termios(fd: BorrowedFd, t: &Termios) -> Result<()> {
    let mut raw: libc::termios = nt::tcgetattr(fd).context("tcgetattr")?.into();
    if t.cc.len() != raw.c_cc.len() {
        anyhow::bail!("termios: {} control characters, expected {}", t.cc.len(), raw.c_cc.len());
    }
    raw.c_iflag = t.iflag;
    raw.c_oflag = t.oflag;
    raw.c_cflag = t.cflag;
    raw.c_lflag = t.lflag;
    raw.c_line = u8::try_from(t.line).context("termios: line discipline out of range")?;
    raw.c_cc.copy_from_slice(&t.cc);
    raw.c_ispeed = t.ispeed;
    raw.c_ospeed = t.ospeed;
    nt::tcsetattr(fd, nt::SetArg::TCSANOW, &nt::Termios::from(raw)).context("tcsetattr")
}

/// The window size of the terminal at `fd`.
pub fn winsize(fd: BorrowedFd) -> Result<Winsize> {
    let w = crate::sys::get_winsize(fd).context("TIOCGWINSZ")?;
    Ok(Winsize { row: w.ws_row.into(), col: w.ws_col.into(), xpixel: w.ws_xpixel.into(), ypixel: w.ws_ypixel.into() })
}

/// Sets the window size `w` (from an image) on the terminal at `fd`.
pub fn set_winsize(fd: BorrowedFd, w: &Winsize) -> Result<()> {
    let field = |v: u32, name: &str| u16::try_from(v).with_context(|| format!("winsize.{name} {v} out of range"));
    let ws = libc::winsize { ws_row: field(w.row, "row")?, ws_col: field(w.col, "col")?, ws_xpixel: field(w.xpixel, "xpixel")?, ws_ypixel: field(w.ypixel, "ypixel")? };
    crate::sys::set_winsize(fd, &ws).context("TIOCSWINSZ")
}


/// Major numbers of the Unix98 pty slaves (/dev/pts/N).
const PTS_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;

/// (major, minor) of /dev/pts/`index`.
fn pts_dev(index: u32) -> (u32, u32) {
    (PTS_MAJORS.start() + index / 256, index % 256)
}

/// N of the slave /dev/pts/N with device number (major, minor).
fn pts_index((major, minor): (u32, u32)) -> u32 {
    (major - PTS_MAJORS.start()) * 256 + minor
}

/// Whether `md` is a terminal rcr knows: /dev/ptmx (5:2, a pty master
/// once opened), a /dev/pts/N slave, or /dev/tty (5:0, the controlling
/// terminal under its alias).
pub fn is_tty(md: &std::fs::Metadata) -> bool {
    if md.mode() & libc::S_IFMT != libc::S_IFCHR {
        return false;
    }
    let (major, minor) = (libc::major(md.rdev()), libc::minor(md.rdev()));
    (major, minor) == (5, 2) || (major, minor) == (5, 0) || PTS_MAJORS.contains(&major)
}

/// Dumps an fd on a terminal: the terminal of a shell job (`-j`), or a
/// pty whose pair the tree owns.
pub fn dump(f: &Fd, cx: &mut DumpCx) -> Result<Kind> {
    if shell::is_job_terminal(f, cx)? {
        return shell::dump(f, cx);
    }
    pty::dump(f, cx)
}
