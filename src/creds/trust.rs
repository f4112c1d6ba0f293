//! Privilege: who may dump what, and how far an image set is trusted.
//!
//! Dump ([`check_dump`]): rcr gains nothing through ptrace. A caller
//! without CAP_SYS_PTRACE may dump only a process whose real, effective
//! and saved uids and gids are its own real ones (in every thread), that
//! is dumpable (not a set-uid or set-gid program, not PR_SET_DUMPABLE 0),
//! whose permitted capabilities it has too (a file-capability program's), and only if yama (when
//! present) allows tracing a non-descendant. Beyond ptrace, rcr's dump
//! opens /proc/PID/map_files, which needs CAP_CHECKPOINT_RESTORE (or
//! CAP_SYS_ADMIN), and reads seccomp filters, which needs CAP_SYS_ADMIN.
//! Each missing piece is refused up front, named, with the target untouched.
//!
//! Restore ([`for_restore`], [`Bound::check_tree`]): the images are
//! untrusted input unless root made them. A set is trusted when rcr runs
//! as root and the directory and every file in it are owned by root and
//! writable by nobody else. Otherwise every process in it is bounded:
//! * by the caller, when rcr runs as a non-root user (which also needs
//!   CAP_CHECKPOINT_RESTORE for clone3 set_tid, and CAP_SETUID,
//!   CAP_SETGID and CAP_SETPCAP for the blob to set the saved
//!   credentials; their absence is refused before anything is created);
//! * by the owner of the files, when root restores a set owned by a
//!   non-root user: that user's uid, gid and groups, no capability, no
//!   securebits; the files of the tree are then opened with that user's
//!   filesystem ids ([`Bound::open_as`]), so no DAC override carries over.
//!
//! Bounded means: every uid of every thread is the bound's uid, every gid
//! and supplementary group one of its groups, no capability (permitted,
//! effective, inheritable, ambient) and no securebit beyond the bound's,
//! deleted files recreated with the bound's owner only.
use crate::images::{pb, ImageDir};
use crate::proc;
use anyhow::{bail, Context, Result};
use std::path::Path;

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETPCAP: u32 = 8;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_CHECKPOINT_RESTORE: u32 = 40;

/// rcr's own credentials.
#[derive(Debug, Clone)]
struct Caller {
    ruid: u32,
    euid: u32,
    rgid: u32,
    groups: Vec<u32>,
    prm: u64,
    eff: u64,
}

fn ids(st: &std::collections::HashMap<String, String>, key: &str) -> Result<Vec<u32>> {
    let v = st.get(key).with_context(|| format!("no {key} in status"))?;
    v.split_whitespace().map(|x| x.parse().with_context(|| format!("status {key}: {v}"))).collect()
}

impl Caller {
    fn read() -> Result<Caller> {
        let st = proc::status(std::process::id() as i32)?;
        let (uids, gids) = (ids(&st, "Uid")?, ids(&st, "Gid")?);
        Ok(Caller {
            ruid: uids[0],
            euid: uids[1],
            rgid: gids[0],
            groups: ids(&st, "Groups")?,
            prm: proc::status_hex(&st, "CapPrm")?,
            eff: proc::status_hex(&st, "CapEff")?,
        })
    }

    fn has(&self, cap: u32) -> bool {
        self.eff & (1 << cap) != 0
    }
}

/// Refuses, naming the reason, a dump this rcr may not do.
pub fn check_dump(pid: i32) -> Result<()> {
    let me = Caller::read()?;
    let st = proc::status(pid).with_context(|| format!("pid {pid} does not exist"))?;
    if !me.has(CAP_SYS_PTRACE) {
        may_trace(pid, pid, &me, &st)?;
        for tid in proc::threads(pid)?.into_iter().filter(|&t| t != pid) {
            let Ok(text) = proc::read_string(pid, &format!("task/{tid}/status")) else { continue };
            let ts = text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
            may_trace(pid, tid, &me, &ts)?;
        }
    }
    if !me.has(CAP_CHECKPOINT_RESTORE) && !me.has(CAP_SYS_ADMIN) {
        bail!(
            "rcr dump as uid {} lacks CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN): it opens /proc/{pid}/map_files to share memory with the parasite; run it as root or give a copy of rcr the capability (setcap cap_checkpoint_restore+ep)",
            me.euid
        );
    }
    if st.get("Seccomp").map(String::as_str) == Some("2") && !me.has(CAP_SYS_ADMIN) {
        bail!("pid {pid} has seccomp filters; reading them (PTRACE_SECCOMP_GET_FILTER) needs CAP_SYS_ADMIN, which rcr (uid {}) lacks", me.euid);
    }
    Ok(())
}

/// The kernel's ptrace access rule for a tracer without CAP_SYS_PTRACE.
fn may_trace(pid: i32, tid: i32, me: &Caller, st: &std::collections::HashMap<String, String>) -> Result<()> {
    let (uids, gids) = (ids(st, "Uid")?, ids(st, "Gid")?);
    let name = if tid == pid { format!("pid {pid}") } else { format!("thread {tid} of pid {pid}") };
    let who = format!("uid {} may not trace it (ptrace: EPERM without CAP_SYS_PTRACE)", me.ruid);
    if uids[..3].iter().any(|&u| u != me.ruid) {
        bail!("{name} belongs to uid {} (real, effective, saved: {:?}); {who}", uids[1], &uids[..3]);
    }
    if gids[..3].iter().any(|&g| g != me.rgid) {
        bail!("{name} runs with gids {:?} (real, effective, saved), not uid {}'s gid {}; {who}", &gids[..3], me.ruid, me.rgid);
    }
    // A process that is not dumpable has the files in its /proc directory
    // (not the directory itself) owned by root.
    let status = format!("/proc/{pid}/task/{tid}/status");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&status).with_context(|| format!("stat {status}"))?);
    if owner != me.ruid {
        bail!("{name} is not dumpable (a set-uid or set-gid program, or PR_SET_DUMPABLE 0); {who}");
    }
    let extra = proc::status_hex(st, "CapPrm")? & !me.prm;
    if extra != 0 {
        bail!("{name} has capabilities {extra:#x} that rcr lacks; {who}");
    }
    match std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").map(|s| s.trim().to_string()) {
        Ok(scope) if scope != "0" => {
            bail!("yama ptrace_scope={scope} lets uid {} trace only its own descendants (1) or nothing (2, 3) without CAP_SYS_PTRACE; pid {pid} is not rcr's child", me.ruid)
        }
        _ => Ok(()),
    }
}

/// How far the credentials of an image set may go.
#[derive(Debug, Clone)]
pub struct Bound {
    /// Who the bound is, and why ("the image owner uid 1000: ...").
    pub who: String,
    pub uid: u32,
    /// The primary gid first, then the supplementary groups.
    pub gids: Vec<u32>,
    pub caps: u64,
    pub securebits: u32,
    /// Root restores an untrusted set: open the tree's files as `uid`.
    pub open_as: bool,
}

/// Decides how far the image set in `path` is trusted, before anything is
/// loaded: None when root restores a set only root could have written.
pub fn for_restore(path: &Path) -> Result<Option<Bound>> {
    let me = Caller::read()?;
    if me.euid != 0 {
        return caller_bound(&me).map(Some);
    }
    let dir = ImageDir::open(path)?;
    let st = nix::sys::stat::fstat(dir.as_fd()).with_context(|| format!("stat {}", path.display()))?;
    let mut owners = vec![(String::from("the directory"), st.st_uid, st.st_gid, st.st_mode)];
    for (name, st) in dir.entries()? {
        owners.push((name, st.st_uid, st.st_gid, st.st_mode));
    }
    if let Some((name, ..)) = owners.iter().find(|o| o.3 & 0o022 != 0 && o.3 & libc::S_IFMT != libc::S_IFLNK) {
        bail!("image set {}: {name} is writable by group or others, so anyone may have written it; refusing it as untrusted", path.display());
    }
    let mut others: Vec<&(String, u32, u32, u32)> = owners.iter().filter(|o| o.1 != 0).collect();
    others.dedup_by_key(|o| o.1);
    match others.as_slice() {
        [] => Ok(None),
        [o] => owner_bound(path, &o.0, o.1, o.2).map(Some),
        [a, b, ..] => bail!("image set {}: {} belongs to uid {} and {} to uid {}; refusing a set of mixed owners", path.display(), a.0, a.1, b.0, b.1),
    }
}

/// A non-root caller: bounded by itself; needs the capabilities the
/// restore uses.
fn caller_bound(me: &Caller) -> Result<Bound> {
    if !me.has(CAP_CHECKPOINT_RESTORE) && !me.has(CAP_SYS_ADMIN) {
        bail!(
            "rcr restore as uid {} lacks CAP_CHECKPOINT_RESTORE: creating processes with their saved PIDs (clone3 set_tid) needs it; nothing was restored",
            me.euid
        );
    }
    let missing: Vec<&str> = [(CAP_SETUID, "CAP_SETUID"), (CAP_SETGID, "CAP_SETGID"), (CAP_SETPCAP, "CAP_SETPCAP")].into_iter().filter(|c| !me.has(c.0)).map(|c| c.1).collect();
    if !missing.is_empty() {
        bail!("rcr restore as uid {} lacks {}: the restorer sets the saved credentials and securebits with them; nothing was restored", me.euid, missing.join(", "));
    }
    let mut gids = vec![me.rgid];
    gids.extend(&me.groups);
    Ok(Bound { who: format!("rcr's caller uid {}", me.ruid), uid: me.ruid, gids, caps: me.prm, securebits: 0, open_as: false })
}

/// Root restores a set owned by `uid`: bounded by that user.
fn owner_bound(path: &Path, what: &str, uid: u32, file_gid: u32) -> Result<Bound> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten();
    let mut gids = vec![user.as_ref().map_or(file_gid, |u| u.gid.as_raw())];
    if let Some(u) = &user {
        let name = std::ffi::CString::new(u.name.as_bytes()).unwrap_or_default();
        gids.extend(nix::unistd::getgrouplist(&name, u.gid).unwrap_or_default().iter().map(|g| g.as_raw()));
    }
    gids.dedup();
    let who = format!("uid {uid}, the owner of the untrusted image set {} ({what} is not root's)", path.display());
    crate::log::info(&format!("image set {}: {what} belongs to uid {uid}: restoring it as untrusted, bounded by that user", path.display()));
    Ok(Bound { who, uid, gids, caps: 0, securebits: 0, open_as: true })
}

impl Bound {
    /// Refuses any credential of any thread beyond the bound, and deleted
    /// files owned by anyone else, naming the image file and field.
    pub fn check_tree(&self, tree: &crate::restore::Tree) -> Result<()> {
        for p in &tree.procs {
            let Some(l) = &p.live else { continue };
            let pid = p.entry.pid;
            self.check_creds(pid, pid, l.core.creds.as_ref())?;
            for t in &l.core.threads {
                self.check_creds(pid, t.tid, t.creds.as_ref())?;
            }
        }
        for m in &tree.fd_images.mem_files {
            if m.kind == pb::MemFileKind::MemFileGhost as i32 && (m.uid != self.uid || !self.gids.contains(&m.gid)) {
                bail!("memfiles.img: deleted file {} ({}) owned by {}:{} goes beyond {}", m.id, m.name, m.uid, m.gid, self.who);
            }
        }
        Ok(())
    }

    fn check_creds(&self, pid: u32, tid: u32, c: Option<&pb::Creds>) -> Result<()> {
        let Some(c) = c else { return Ok(()) };
        let at = format!("core-{pid}.img: thread {tid}");
        if c.uids.iter().any(|&u| u != self.uid) {
            bail!("{at}: creds.uids {:?} go beyond {} (only uid {} is allowed)", c.uids, self.who, self.uid);
        }
        for (field, v) in [("creds.gids", &c.gids), ("creds.groups", &c.groups)] {
            if let Some(g) = v.iter().find(|g| !self.gids.contains(g)) {
                bail!("{at}: {field} has gid {g}, beyond {} (gids {:?})", self.who, self.gids);
            }
        }
        let sets = [("cap_prm", c.cap_prm), ("cap_eff", c.cap_eff), ("cap_inh", c.cap_inh), ("cap_amb", c.cap_amb)];
        if let Some((field, v)) = sets.iter().find(|s| s.1 & !self.caps != 0) {
            bail!("{at}: creds.{field} {v:#x} has capabilities {:#x} beyond {} (capabilities {:#x})", v & !self.caps, self.who, self.caps);
        }
        if c.securebits & !self.securebits != 0 {
            bail!("{at}: creds.securebits {:#x} go beyond {} (securebits {:#x})", c.securebits, self.who, self.securebits);
        }
        Ok(())
    }

    /// While the result lives, this (single-threaded) rcr opens and
    /// creates files as the bound's user (its fsuid, fsgid and groups), if
    /// [`Bound::open_as`]; the fs capabilities drop with the fsuid.
    pub fn files_as(&self) -> Result<Option<FsIds>> {
        if !self.open_as {
            return Ok(None);
        }
        FsIds::become_user(self.uid, &self.gids).map(Some).with_context(|| format!("taking on the file ids of {}", self.who))
    }
}

/// rcr's own filesystem ids, switched to a user's until dropped.
#[derive(Debug)]
pub struct FsIds {
    fsuid: nix::unistd::Uid,
    fsgid: nix::unistd::Gid,
    groups: Vec<nix::unistd::Gid>,
}

impl FsIds {
    fn become_user(uid: u32, gids: &[u32]) -> Result<FsIds> {
        use nix::unistd::{Gid, Uid};
        let groups = nix::unistd::getgroups().context("getgroups")?;
        let list: Vec<Gid> = gids.iter().map(|&g| Gid::from_raw(g)).collect();
        nix::unistd::setgroups(&list).context("setgroups")?;
        let fsgid = nix::unistd::setfsgid(list[0]);
        let fsuid = nix::unistd::setfsuid(Uid::from_raw(uid));
        Ok(FsIds { fsuid, fsgid, groups })
    }
}

impl Drop for FsIds {
    fn drop(&mut self) {
        nix::unistd::setfsuid(self.fsuid);
        nix::unistd::setfsgid(self.fsgid);
        let _ = nix::unistd::setgroups(&self.groups);
    }
}
