//! Files: fds and the open file descriptions behind them ([`fds`]), one
//! module per kind of file with its dump and restore side by side; cwd,
//! root and umask ([`fs`]); and the path-addressable files that fds, VMAs
//! and the exe link refer to ([`reg`], files.img, by id).
pub mod epoll;
pub mod eventfd;
pub mod fds;
pub mod fifo;
pub mod fs;
pub mod ghost;
pub mod inet;
pub mod inotify;
pub mod memfd;
pub mod pipe;
pub mod reg;
pub mod signalfd;
pub mod sysv;
pub mod timerfd;
pub mod tty;
pub mod unix;

use crate::images::pb::RegFile;

/// Major number of the memory character devices (/dev/null, /dev/zero,
/// /dev/full, /dev/random, /dev/urandom, ...), reopened by path.
pub const MEM_MAJOR: u64 = 1;

/// The files of an image set, with ids starting at 1.
#[derive(Debug, Default)]
pub struct FileTable {
    pub files: Vec<RegFile>,
}

impl FileTable {
    /// Adds a file description and returns its id.
    pub fn add(&mut self, mut f: RegFile) -> u32 {
        f.id = self.files.len() as u32 + 1;
        self.files.push(f);
        self.files.len() as u32
    }

    /// Returns the id of a file opened only for mapping or exe purposes,
    /// reusing an existing entry for the same object.
    pub fn add_shared(&mut self, f: RegFile) -> u32 {
        if let Some(e) = self.files.iter().find(|e| e.path == f.path && e.dev == f.dev && e.inode == f.inode && e.flags == f.flags && e.pos == 0) {
            return e.id;
        }
        self.add(f)
    }

    pub fn get(&self, id: u32) -> Option<&RegFile> {
        self.files.get((id as usize).checked_sub(1)?).filter(|f| f.id == id)
    }

    pub fn from_images(files: Vec<RegFile>) -> Self {
        let mut files = files;
        files.sort_by_key(|f| f.id);
        Self { files }
    }
}

pub fn file_type(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFLNK => "symlink",
        _ => "unknown file type",
    }
}
