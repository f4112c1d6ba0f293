//! Seccomp through ptrace: suspending a tracee's filters while rcr works
//! on it, and reading them out for the image.
use super::{ptrace, Tracee};
use anyhow::{bail, Context, Result};

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
/// Most instructions a classic-BPF program may have (BPF_MAXINSNS).
const BPF_MAXINSNS: usize = 4096;

/// One filter of a thread's chain: its `struct sock_filter` array and its
/// flags (SECCOMP_FILTER_FLAG_LOG only: the one the kernel reports).
#[derive(Debug, Clone)]
pub struct Filter {
    pub insns: Vec<u8>,
    pub flags: u32,
}

impl Tracee {
    /// For a task under seccomp (/proc status `Seccomp` not 0): sets
    /// PTRACE_O_SUSPEND_SECCOMP along with `opts`, so that the parasite's
    /// syscalls and rcr's injected ones are not filtered (or killed, in
    /// strict mode). The kernel clears it on detach. Needs CAP_SYS_ADMIN
    /// and a kernel with CONFIG_CHECKPOINT_RESTORE.
    pub fn suspend_seccomp_if_needed(&self, opts: usize) -> Result<()> {
        let status = crate::proc::status(self.pid)?;
        let mode = status.get("Seccomp").map(String::as_str).unwrap_or("0");
        if mode == "0" {
            return Ok(());
        }
        let all = opts | libc::PTRACE_O_SUSPEND_SECCOMP as usize;
        ptrace(libc::PTRACE_SETOPTIONS, self.pid, 0, all).with_context(|| {
            format!("task {} runs under seccomp (mode {mode}); PTRACE_O_SUSPEND_SECCOMP (needs CAP_SYS_ADMIN) failed", self.pid)
        })?;
        Ok(())
    }

    /// Every seccomp filter of this (stopped) thread, oldest first
    /// (PTRACE_SECCOMP_GET_FILTER index 0 is the first one installed).
    pub fn seccomp_filters(&self) -> Result<Vec<Filter>> {
        let mut out = Vec::new();
        loop {
            let index = out.len();
            let mut buf = vec![0u8; BPF_MAXINSNS * 8];
            let n = match ptrace(PTRACE_SECCOMP_GET_FILTER, self.pid, index, buf.as_mut_ptr() as usize) {
                Ok(n) => n as usize,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
                Err(e) => return Err(e).with_context(|| format!("PTRACE_SECCOMP_GET_FILTER thread {} filter {index}", self.pid)),
            };
            if n == 0 || n > BPF_MAXINSNS {
                bail!("PTRACE_SECCOMP_GET_FILTER thread {} filter {index}: {n} instructions", self.pid);
            }
            buf.truncate(n * 8);
            // struct seccomp_metadata { u64 filter_off; u64 flags; }
            let mut meta = [index as u64, 0u64];
            ptrace(PTRACE_SECCOMP_GET_METADATA, self.pid, std::mem::size_of_val(&meta), meta.as_mut_ptr() as usize)
                .with_context(|| format!("PTRACE_SECCOMP_GET_METADATA thread {} filter {index}", self.pid))?;
            out.push(Filter { insns: buf, flags: meta[1] as u32 });
        }
    }
}
