//! Credentials, scheduling and limits: who a task is and how it runs.
//!
//! Per thread (Linux keeps them in each task): uids, gids (real,
//! effective, saved, fs), supplementary groups, the five capability sets,
//! securebits, no_new_privs, the seccomp mode and filter chain, the
//! scheduling policy, RT priority, nice and CPU affinity. Per process:
//! the resource limits and oom_score_adj.
//!
//! * [`dump`] reads them from /proc (status, stat, limits,
//!   oom_score_adj), with sched_getscheduler/sched_getaffinity,
//!   PTRACE_SECCOMP_GET_FILTER and, for the securebits, a prctl run in the
//!   thread;
//! * [`restore`] checks at validate time that this rcr can set them
//!   (hard limits and capabilities it does not have itself are refused,
//!   naming them), sets oom_score_adj in the restore child, and packs the
//!   rest for the restorer blob, which applies them last
//!   (`restorer-blob/src/creds.rs` explains the order).
use crate::images::pb;
use anyhow::{bail, Context, Result};

pub mod dump;
pub mod restore;
pub mod trust;

/// RLIMIT_* names, by resource number.
pub const RLIMIT_NAMES: [&str; rcr_abi::NR_RLIMITS] = [
    "RLIMIT_CPU",
    "RLIMIT_FSIZE",
    "RLIMIT_DATA",
    "RLIMIT_STACK",
    "RLIMIT_CORE",
    "RLIMIT_RSS",
    "RLIMIT_NPROC",
    "RLIMIT_NOFILE",
    "RLIMIT_MEMLOCK",
    "RLIMIT_AS",
    "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
];

/// The row names of /proc/PID/limits, by resource number.
const LIMITS_ROWS: [&str; rcr_abi::NR_RLIMITS] = [
    "Max cpu time",
    "Max file size",
    "Max data size",
    "Max stack size",
    "Max core file size",
    "Max resident set",
    "Max processes",
    "Max open files",
    "Max locked memory",
    "Max address space",
    "Max file locks",
    "Max pending signals",
    "Max msgqueue size",
    "Max nice priority",
    "Max realtime priority",
    "Max realtime timeout",
];

pub const RLIM_INFINITY: u64 = u64::MAX;

pub fn rlimit_name(resource: u32) -> String {
    RLIMIT_NAMES.get(resource as usize).map_or_else(|| format!("resource {resource}"), |n| n.to_string())
}

/// Parses the text of /proc/PID/limits (every value in the kernel's own
/// unit, "unlimited" for RLIM_INFINITY).
pub fn parse_limits(text: &str) -> Result<Vec<pb::Rlimit>> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let Some((resource, row)) = LIMITS_ROWS.iter().enumerate().find(|(_, r)| line.starts_with(*r)) else {
            bail!("unknown row {line:?}");
        };
        let mut vals = line[row.len()..].split_whitespace();
        let mut value = |what: &str| -> Result<u64> {
            match vals.next() {
                Some("unlimited") => Ok(RLIM_INFINITY),
                Some(v) => v.parse().with_context(|| format!("{row}: {what} {v:?}")),
                None => bail!("{row}: no {what}"),
            }
        };
        let (cur, max) = (value("soft limit")?, value("hard limit")?);
        out.push(pb::Rlimit { resource: resource as u32, cur, max });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_rows() {
        let t = "Limit                     Soft Limit           Hard Limit           Units     \n\
                 Max cpu time              unlimited            unlimited            seconds   \n\
                 Max open files            256                  1000                 files     \n\
                 Max realtime timeout      unlimited            unlimited            us        \n";
        let l = parse_limits(t).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!((l[0].resource, l[0].cur, l[0].max), (0, RLIM_INFINITY, RLIM_INFINITY));
        assert_eq!((l[1].resource, l[1].cur, l[1].max), (7, 256, 1000));
        assert_eq!(l[2].resource, 15);
    }
}
