//! Dump side: credentials and scheduling of every thread, the limits and
//! oom_score_adj of the process. Runs once the parasite is gone, with
//! every thread stopped.
use crate::images::pb;
use crate::infect::Tracee;
use crate::tree::dump::Process;
use crate::{log, proc};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;

const NR_PRCTL: u64 = 157;
const PR_GET_SECUREBITS: u64 = 27;
const SCHED_DEADLINE: u32 = 6;
const SCHED_RESET_ON_FORK: u32 = 0x4000_0000;

/// Fills the credentials, scheduling, limits and oom_score_adj of `core`
/// (the leader's and, in `core.threads`, every other thread's).
pub fn collect(p: &Process, core: &mut pb::TaskCore) -> Result<()> {
    let leader = p.leader().context("a live process without threads")?;
    core.creds = Some(thread_creds(p.pid, leader, leader, None)?);
    core.sched = Some(thread_sched(p.pid, p.pid)?);
    for (t, tc) in p.threads[1..].iter().zip(core.threads.iter_mut()) {
        // The dump read each other thread's securebits with the parasite in.
        let securebits = tc.creds.as_ref().map(|c| c.securebits);
        tc.creds = Some(thread_creds(p.pid, t, leader, securebits)?);
        tc.sched = Some(thread_sched(p.pid, t.pid())?);
    }
    let limits = proc::read_string(p.pid, "limits")?;
    core.rlimits = super::parse_limits(&limits).with_context(|| format!("parsing /proc/{}/limits", p.pid))?;
    let oom = proc::read_string(p.pid, "oom_score_adj")?;
    core.oom_score_adj = Some(oom.trim().parse().with_context(|| format!("/proc/{}/oom_score_adj: {oom:?}", p.pid))?);
    Ok(())
}

/// /proc/PID/task/TID/status, the securebits (`securebits` if already
/// read, else PR_GET_SECUREBITS run in the thread) and the seccomp filters.
fn thread_creds(pid: i32, t: &Tracee, leader: &Tracee, securebits: Option<u32>) -> Result<pb::Creds> {
    let tid = t.pid();
    let text = proc::read_string(pid, &format!("task/{tid}/status"))?;
    let st: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim(), v.trim())).collect();
    let field = |key: &str| st.get(key).copied().with_context(|| format!("/proc/{pid}/task/{tid}/status: no {key}"));
    let ids = |key: &str| -> Result<Vec<u32>> {
        let v: Vec<u32> = field(key)?.split_whitespace().map(str::parse).collect::<Result<_, _>>().with_context(|| format!("thread {tid}: {key}"))?;
        if v.len() != 4 {
            bail!("/proc/{pid}/task/{tid}/status: {key} has {} values, not 4", v.len());
        }
        Ok(v)
    };
    let hex = |key: &str| -> Result<u64> { u64::from_str_radix(field(key)?, 16).with_context(|| format!("thread {tid}: {key}")) };
    let groups = field("Groups")?.split_whitespace().map(str::parse).collect::<Result<_, _>>().with_context(|| format!("thread {tid}: Groups"))?;
    let seccomp_mode: u32 = field("Seccomp")?.parse().with_context(|| format!("thread {tid}: Seccomp"))?;
    let securebits = match securebits {
        Some(b) => b as i64,
        None => {
            if !std::ptr::eq(t, leader) {
                t.share_gadgets(leader)?;
            }
            t.remote_syscall_guarded(NR_PRCTL, [PR_GET_SECUREBITS, 0, 0, 0, 0, 0])?
        }
    };
    if securebits < 0 {
        bail!("PR_GET_SECUREBITS in thread {tid}: {}", std::io::Error::from_raw_os_error(-securebits as i32));
    }
    let filters = if seccomp_mode == 2 { t.seccomp_filters()? } else { Vec::new() };
    if !filters.is_empty() {
        log::info(&format!("thread {tid}: {} seccomp filters", filters.len()));
    }
    Ok(pb::Creds {
        uids: ids("Uid")?,
        gids: ids("Gid")?,
        groups,
        cap_inh: hex("CapInh")?,
        cap_prm: hex("CapPrm")?,
        cap_eff: hex("CapEff")?,
        cap_bnd: hex("CapBnd")?,
        cap_amb: hex("CapAmb")?,
        securebits: securebits as u32,
        no_new_privs: field("NoNewPrivs")? == "1",
        seccomp_mode,
        seccomp_filters: filters.into_iter().map(|f| pb::SeccompFilter { insns: f.insns, flags: f.flags }).collect(),
    })
}

/// Policy (sched_getscheduler), RT priority and nice (stat fields 40
/// and 19), CPU affinity.
fn thread_sched(pid: i32, tid: i32) -> Result<pb::Sched> {
    let policy = crate::sys::sched_policy(tid).with_context(|| format!("sched_getscheduler thread {tid}"))?;
    if policy & !SCHED_RESET_ON_FORK == SCHED_DEADLINE {
        bail!("thread {tid} of pid {pid} runs under SCHED_DEADLINE; rcr cannot carry its runtime/deadline/period yet");
    }
    let stat = proc::read_string(pid, &format!("task/{tid}/stat"))?;
    let rest: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| -> Result<i64> {
        rest.get(n - 3).and_then(|v| v.parse().ok()).with_context(|| format!("/proc/{pid}/task/{tid}/stat: field {n}"))
    };
    let affinity = crate::sys::sched_affinity(tid).with_context(|| format!("sched_getaffinity thread {tid}"))?;
    Ok(pb::Sched {
        policy: policy & !SCHED_RESET_ON_FORK,
        reset_on_fork: policy & SCHED_RESET_ON_FORK != 0,
        rt_priority: field(40)? as u32,
        nice: field(19)? as i32,
        affinity,
    })
}
