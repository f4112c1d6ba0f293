//! Restore side: what rcr checks before forking, what the restore child
//! sets itself (oom_score_adj), and what it packs for the restorer blob
//! (credentials, scheduling, limits: applied last, in the blob).
use crate::images::pb;
use crate::proc;
use anyhow::{bail, Context, Result};
use rcr_abi::{RestoreStep, Rlimit, SeccompFilter, ThreadCreds, ITEM_SHIFT, NR_RLIMITS};

const CAP_SYS_ADMIN: u64 = 21;
const CAP_SYS_RESOURCE: u64 = 24;
const SCHED_RESET_ON_FORK: u32 = 0x4000_0000;

/// rcr's own capability sets, from /proc/self/status.
struct Mine {
    prm: u64,
    inh: u64,
    bnd: u64,
    limits: Vec<pb::Rlimit>,
}

impl Mine {
    fn read() -> Result<Mine> {
        let me = std::process::id() as i32;
        let st = proc::status(me)?;
        let limits = super::parse_limits(&proc::read_string(me, "limits")?).context("parsing rcr's own /proc/PID/limits")?;
        Ok(Mine { prm: proc::status_hex(&st, "CapPrm")?, inh: proc::status_hex(&st, "CapInh")?, bnd: proc::status_hex(&st, "CapBnd")?, limits })
    }

    fn has(&self, cap: u64) -> bool {
        self.prm & (1 << cap) != 0
    }
}

/// Before anything is created: every limit, capability and filter of
/// `core` is one this rcr can set up. Without CAP_SYS_RESOURCE no hard
/// limit can be raised above rcr's own; capabilities rcr lacks cannot be
/// given; filters without no_new_privs need CAP_SYS_ADMIN.
pub fn validate(pid: u32, core: &pb::TaskCore) -> Result<()> {
    let mine = Mine::read()?;
    for l in &core.rlimits {
        let ours = mine.limits.iter().find(|m| m.resource == l.resource).map_or(super::RLIM_INFINITY, |m| m.max);
        if l.max > ours && !mine.has(CAP_SYS_RESOURCE) {
            bail!(
                "pid {pid}: hard {} {} is above rcr's own {} and rcr lacks CAP_SYS_RESOURCE to raise it; run rcr restore with a hard limit of at least {}",
                super::rlimit_name(l.resource),
                show_limit(l.max),
                show_limit(ours),
                show_limit(l.max)
            );
        }
        if l.cur > l.max || l.resource as usize >= NR_RLIMITS {
            bail!("core-{pid}.img: {} soft {} above hard {}", super::rlimit_name(l.resource), l.cur, l.max);
        }
    }
    check_creds(pid, core.pid, core.creds.as_ref(), &mine)?;
    for t in &core.threads {
        check_creds(pid, t.tid, t.creds.as_ref(), &mine)?;
    }
    Ok(())
}

fn show_limit(v: u64) -> String {
    if v == super::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

fn check_creds(pid: u32, tid: u32, c: Option<&pb::Creds>, mine: &Mine) -> Result<()> {
    let Some(c) = c else { return Ok(()) };
    if c.uids.len() != 4 || c.gids.len() != 4 {
        bail!("core-{pid}.img: thread {tid}: uids/gids need 4 values each (real, effective, saved, fs)");
    }
    let missing = [("permitted", c.cap_prm & !mine.prm), ("bounding", c.cap_bnd & !mine.bnd), ("inheritable", c.cap_inh & !(mine.prm | mine.inh))];
    for (set, extra) in missing {
        if extra != 0 {
            bail!("pid {pid}: thread {tid} has capabilities {extra:#x} in its {set} set, which rcr itself does not have; it cannot give them");
        }
    }
    if c.seccomp_filters.iter().any(|f| f.insns.is_empty() || f.insns.len() % 8 != 0 || f.insns.len() > 4096 * 8) {
        bail!("core-{pid}.img: thread {tid}: a seccomp filter is not a whole number (1..4096) of 8-byte instructions");
    }
    if !c.seccomp_filters.is_empty() && !mine.has(CAP_SYS_ADMIN) {
        bail!("pid {pid}: thread {tid} has seccomp filters; restoring them needs CAP_SYS_ADMIN (PTRACE_O_SUSPEND_SECCOMP)");
    }
    Ok(())
}

/// In the restore child (still root): /proc/self/oom_score_adj. Lowering
/// it below what rcr started with needs CAP_SYS_RESOURCE.
pub fn set_oom_score_adj(core: &pb::TaskCore) -> Result<()> {
    let Some(v) = core.oom_score_adj else { return Ok(()) };
    let cur = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", v.to_string()) {
        bail!(
            "setting oom_score_adj {v} (rcr's is {}): {e}; lowering it below the value rcr was started with needs CAP_SYS_RESOURCE",
            cur.trim()
        );
    }
    Ok(())
}

/// The saved limits for the blob, and which are set.
pub fn rlimits(core: &pb::TaskCore) -> ([Rlimit; NR_RLIMITS], u32) {
    let mut out = [Rlimit::default(); NR_RLIMITS];
    let mut set = 0;
    for l in core.rlimits.iter().filter(|l| (l.resource as usize) < NR_RLIMITS) {
        out[l.resource as usize] = Rlimit { cur: l.cur, max: l.max };
        set |= 1 << l.resource;
    }
    (out, set)
}

/// dumpable and pdeathsig for the blob to set again after the
/// credentials (-1/0: leave). Only 0 and 1 can be set with prctl.
pub fn task_flags(core: &pb::TaskCore) -> (i32, i32) {
    if core.creds.is_none() {
        return (-1, 0);
    }
    (if core.dumpable == 0 || core.dumpable == 1 { core.dumpable } else { -1 }, core.pdeathsig)
}

/// The variable-size parts (groups, affinity masks, filters) laid out for
/// the bootstrap region at `base`, and the [`ThreadCreds`] pointing into
/// them: the leader's, then one per other thread.
#[derive(Debug, Default)]
pub struct Packed {
    pub data: Vec<u8>,
    pub leader: ThreadCreds,
    pub threads: Vec<ThreadCreds>,
}

pub fn pack(core: &pb::TaskCore, base: u64) -> Packed {
    let mut p = Packed::default();
    p.leader = pack_one(&mut p.data, base, core.creds.as_ref(), core.sched.as_ref());
    for t in &core.threads {
        let tc = pack_one(&mut p.data, base, t.creds.as_ref(), t.sched.as_ref());
        p.threads.push(tc);
    }
    p
}

/// Appends `bytes` 8-byte aligned; returns their address.
fn put(data: &mut Vec<u8>, base: u64, bytes: &[u8]) -> u64 {
    data.resize(data.len().next_multiple_of(8), 0);
    let at = base + data.len() as u64;
    data.extend_from_slice(bytes);
    at
}

fn pack_one(data: &mut Vec<u8>, base: u64, c: Option<&pb::Creds>, s: Option<&pb::Sched>) -> ThreadCreds {
    let mut tc = ThreadCreds::default();
    if let Some(s) = s {
        let words: Vec<u8> = s.affinity.iter().flat_map(|w| w.to_le_bytes()).collect();
        tc.sched_valid = 1;
        tc.sched_policy = s.policy | if s.reset_on_fork { SCHED_RESET_ON_FORK } else { 0 };
        tc.sched_priority = s.rt_priority;
        tc.nice = s.nice;
        if !words.is_empty() {
            (tc.affinity, tc.affinity_len) = (put(data, base, &words), words.len() as u64);
        }
    }
    let Some(c) = c else { return tc };
    let four = |v: &[u32]| [0, 1, 2, 3].map(|i| v.get(i).copied().unwrap_or(0));
    tc.valid = 1;
    tc.securebits = c.securebits;
    (tc.uids, tc.gids) = (four(&c.uids), four(&c.gids));
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    (tc.groups, tc.nr_groups) = (put(data, base, &groups), c.groups.len() as u64);
    (tc.cap_eff, tc.cap_prm, tc.cap_inh, tc.cap_bnd, tc.cap_amb) = (c.cap_eff, c.cap_prm, c.cap_inh, c.cap_bnd, c.cap_amb);
    tc.no_new_privs = c.no_new_privs as u32;
    tc.seccomp_mode = c.seccomp_mode;
    let filters: Vec<SeccompFilter> = c
        .seccomp_filters
        .iter()
        .map(|f| SeccompFilter { insns: put(data, base, &f.insns), nr_insns: (f.insns.len() / 8) as u32, flags: f.flags })
        .collect();
    let table: Vec<u8> = filters.iter().flat_map(|f| [f.insns.to_le_bytes(), (u64::from(f.nr_insns) | u64::from(f.flags) << 32).to_le_bytes()]).flatten().collect();
    (tc.filters, tc.nr_filters) = (put(data, base, &table), filters.len() as u64);
    tc
}

/// The item part of a blob failure in one of the steps of this module:
/// which limit, capability or filter, and in which thread.
pub fn describe_item(step: RestoreStep, index: u64, core: &pb::TaskCore) -> Option<String> {
    let item = index >> ITEM_SHIFT;
    let what = match step {
        RestoreStep::Rlimit => {
            let name = super::rlimit_name(item as u32);
            let l = core.rlimits.iter().find(|l| u64::from(l.resource) == item);
            return Some(l.map_or(format!(" {name}"), |l| format!(" {name} (soft {}, hard {})", show_limit(l.cur), show_limit(l.max))));
        }
        RestoreStep::Ambient | RestoreStep::Bounding => format!(" {item}"),
        RestoreStep::Seccomp => format!(" {item}"),
        RestoreStep::Sched | RestoreStep::Nice | RestoreStep::Affinity | RestoreStep::Securebits | RestoreStep::Capabilities => String::new(),
        RestoreStep::Groups | RestoreStep::Gids | RestoreStep::Uids | RestoreStep::NoNewPrivs => String::new(),
        _ => return None,
    };
    let thread = index & rcr_abi::THREAD_INDEX != 0;
    let tid = if thread { core.threads.get((index & 0xffff_ffff) as usize).map_or(0, |t| t.tid) } else { core.pid };
    Some(format!("{what} in thread {tid}"))
}
