//! cwd, root and umask of a process (fs-<pid>.img).
use crate::images::pb::Fs;
use crate::proc;
use anyhow::{bail, Context, Result};

/// Dump side.
pub fn dump(pid: i32, status: &std::collections::HashMap<String, String>) -> Result<Fs> {
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

/// Restore side, in the restore child.
pub fn restore(fs: &Fs) -> Result<()> {
    if fs.root != "/" {
        std::os::unix::fs::chroot(&fs.root).with_context(|| format!("chroot {}", fs.root))?;
    }
    std::env::set_current_dir(&fs.cwd).with_context(|| format!("chdir {}", fs.cwd))?;
    crate::sys::set_umask(fs.umask);
    Ok(())
}
