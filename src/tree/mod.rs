//! Process trees: which processes a dump takes, and how their kinship
//! (parent links, sessions, process groups) is rebuilt on restore.
//!
//! * [`dump`] freezes a tree: every thread of every process is seized and
//!   interrupted, walking down from the root, before anything is read.
//! * [`plan`] (below) checks, from the pstree entries alone, that the
//!   sessions and groups can be rebuilt by forking, and says how: both the
//!   dump (to refuse early) and the restore (to act) use it.
//! * [`restore`] is what each restored process does right after it is
//!   forked: found its session or group, fork its own children, join a
//!   foreign group once every group exists.
pub mod dump;
pub mod restore;

use crate::images::pb::PstreeEntry;
use anyhow::{bail, Result};
use std::collections::HashMap;

/// Which processes `rcr dump` takes (BLCR's scopes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Scope {
    /// The process and all its descendants (the default, as in CRIU).
    #[default]
    Tree,
    /// The process alone (with all its threads).
    Process,
}

/// How a restored process gets its session and process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kin {
    /// Inherited from the parent as it is forked (or rcr's, for the root).
    Inherit,
    /// `setsid()` right after the fork: a session leader.
    NewSession,
    /// `setpgid(0, 0)` right after the fork: a group leader.
    NewGroup,
    /// `setpgid(0, pgid)` once every group of the tree exists.
    JoinGroup(i32),
}

/// The kin of every process of `tree` (root first, parents before their
/// children), or a refusal naming the process that cannot be rebuilt.
pub fn plan(tree: &[PstreeEntry]) -> Result<Vec<Kin>> {
    let by_pid: HashMap<u32, &PstreeEntry> = tree.iter().map(|e| (e.pid, e)).collect();
    let mut kin = Vec::with_capacity(tree.len());
    for (i, e) in tree.iter().enumerate() {
        let parent = if i == 0 { None } else { by_pid.get(&e.ppid).copied() };
        if i > 0 && parent.is_none() {
            bail!("pstree: pid {} has parent {}, which is not in the tree (or comes after it)", e.pid, e.ppid);
        }
        let k = if e.sid == e.pid {
            if e.pgid != e.pid {
                bail!("pid {} leads session {} but is in process group {}", e.pid, e.sid, e.pgid);
            }
            Kin::NewSession
        } else if e.pgid == e.pid {
            Kin::NewGroup
        } else if parent.is_none_or(|p| p.pgid == e.pgid) {
            Kin::Inherit
        } else {
            match by_pid.get(&e.pgid) {
                Some(leader) if leader.sid == e.sid => Kin::JoinGroup(e.pgid as i32),
                _ => bail!(
                    "pid {} is in process group {}, whose leader is not in the dumped tree; rcr cannot recreate that group",
                    e.pid,
                    e.pgid
                ),
            }
        };
        if let Some(p) = parent {
            if e.sid != e.pid && e.sid != p.sid {
                bail!(
                    "pid {} is in session {} but its parent {} is in session {}; rcr recreates a session only through its leader or by inheritance",
                    e.pid,
                    e.sid,
                    p.pid,
                    p.sid
                );
            }
        }
        kin.push(k);
    }
    Ok(kin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(pid: u32, ppid: u32, pgid: u32, sid: u32) -> PstreeEntry {
        PstreeEntry { pid, ppid, pgid, sid, threads: vec![pid] }
    }

    #[test]
    fn sessions_and_groups() {
        let tree = [e(10, 1, 10, 10), e(11, 10, 11, 10), e(12, 11, 11, 10), e(13, 10, 13, 13), e(14, 10, 11, 10), e(15, 10, 10, 10)];
        let k = plan(&tree).unwrap();
        assert_eq!(k, [Kin::NewSession, Kin::NewGroup, Kin::Inherit, Kin::NewSession, Kin::JoinGroup(11), Kin::Inherit]);
    }

    #[test]
    fn root_outside_session_inherits() {
        let k = plan(&[e(10, 1, 5, 5), e(11, 10, 5, 5)]).unwrap();
        assert_eq!(k, [Kin::Inherit, Kin::Inherit]);
    }

    #[test]
    fn refusals_name_the_process() {
        let err = plan(&[e(10, 1, 10, 10), e(11, 10, 99, 10)]).unwrap_err().to_string();
        assert!(err.contains("pid 11") && err.contains("group 99"), "{err}");
        let err = plan(&[e(10, 1, 10, 10), e(11, 10, 11, 10), e(12, 11, 12, 7)]).unwrap_err().to_string();
        assert!(err.contains("pid 12") && err.contains("session 7"), "{err}");
    }
}
