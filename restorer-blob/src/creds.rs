//! Credentials, scheduling, limits, no_new_privs and seccomp: what the
//! blob applies last, when nothing privileged is left to do.
//!
//! Each thread (the leader and the threads the blob cloned), after the
//! leader's "go", applies in this order:
//!
//! 1. scheduling: policy and RT priority, nice, CPU affinity (still root:
//!    raising a priority needs CAP_SYS_NICE);
//! 2. seccomp filters, here only when the thread had no no_new_privs:
//!    installing a filter then needs CAP_SYS_ADMIN, which step 3 may drop.
//!    rcr traces every restored task with PTRACE_O_SUSPEND_SECCOMP, so the
//!    filters do not act on the blob's remaining syscalls, nor on rcr's
//!    injected munmap, until rcr detaches;
//! 3. credentials ([`apply_creds`]), in an order where each step still has
//!    the capability it needs;
//! 4. no_new_privs, then the seccomp filters (when it had no_new_privs:
//!    then no privilege is needed), then strict mode (which allows nothing
//!    but read, write, exit and rt_sigreturn) last of all.
//!
//! The threads count themselves in `creds_done` once done (or failed);
//! the leader waits for all of them and reports the first failure, then
//! does its own, then sets dumpable and the parent-death signal again (a
//! credential change of any thread resets both).
//! Resource limits are process-wide: the leader sets them before its
//! report, once memory is mapped and the threads exist, and before any
//! credential change (raising a hard limit needs CAP_SYS_RESOURCE).
use core::sync::atomic::{AtomicU32, Ordering};
use rcr_abi::{sys, RestoreArgs, RestoreStep, ThreadArgs, ThreadCreds, ITEM_SHIFT, NR_RLIMITS};

const NR_SETGROUPS: u64 = 116;
const NR_SETRESUID: u64 = 117;
const NR_SETRESGID: u64 = 119;
const NR_SETFSUID: u64 = 122;
const NR_SETFSGID: u64 = 123;
const NR_CAPGET: u64 = 125;
const NR_CAPSET: u64 = 126;
const NR_SETPRIORITY: u64 = 141;
const NR_SCHED_SETSCHEDULER: u64 = 144;
const NR_SCHED_SETAFFINITY: u64 = 203;
const NR_PRLIMIT64: u64 = 302;
const NR_SECCOMP: u64 = 317;
const NR_PAUSE: u64 = 34;

const PR_SET_PDEATHSIG: u64 = 1;
const PR_SET_DUMPABLE: u64 = 4;
const PR_SET_SECCOMP: u64 = 22;
const PR_CAPBSET_DROP: u64 = 24;
const PR_SET_SECUREBITS: u64 = 28;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const PR_CAP_AMBIENT_CLEAR_ALL: u64 = 4;
const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;
const SECCOMP_MODE_STRICT: u64 = 1;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
const PRIO_PROCESS: u64 = 0;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const FUTEX_WAIT_PRIVATE: u64 = 128;
const FUTEX_WAKE_PRIVATE: u64 = 129;
const EPERM: i64 = -1;

/// A failed step: the step, the item it was at (resource, capability,
/// filter number; 0 if none) and the negative errno.
pub type Fail = (RestoreStep, u64, i64);
type Res = Result<(), Fail>;

fn ok(step: RestoreStep, r: i64) -> Res {
    item(step, 0, r)
}

fn item(step: RestoreStep, i: u64, r: i64) -> Res {
    if r < 0 {
        Err((step, i, r))
    } else {
        Ok(())
    }
}

fn word(w: &u32) -> &AtomicU32 {
    // SAFETY: a 4-byte aligned futex word of the region (asserted layout),
    // accessed atomically by every thread of the blob.
    unsafe { AtomicU32::from_ptr(w as *const u32 as *mut u32) }
}

/// Leader, before its report: every saved resource limit (prlimit64 on
/// itself). A hard limit above rcr's own fails with EPERM, naming the
/// resource (rcr checks this before forking).
pub fn set_rlimits(a: &RestoreArgs) -> Res {
    for r in 0..NR_RLIMITS {
        if a.rlimits_set & (1 << r) != 0 {
            let lim = &a.rlimits[r];
            let ret = sys::syscall4(NR_PRLIMIT64, 0, r as u64, lim as *const _ as u64, 0);
            item(RestoreStep::Rlimit, (r as u64) << ITEM_SHIFT, ret)?;
        }
    }
    Ok(())
}

/// A thread other than the leader, after "go": applies its own state,
/// records a failure in its ThreadArgs, counts itself in `creds_done`.
/// On failure it sleeps until rcr, told by the leader, kills the tree.
/// (Its last syscalls, counting itself and rt_sigreturn, pass its new
/// filters, even strict mode, because rcr keeps seccomp suspended.)
pub fn thread_after_go(t: &mut ThreadArgs, a: &RestoreArgs) {
    // By reference: a copy of the struct would be a memcpy call, which
    // this crate's codegen reaches through a GOT slot.
    let result = sched(&t.creds).and_then(|()| apply_creds(&t.creds)).and_then(|()| lock_down(&t.creds));
    if let Err((step, i, err)) = result {
        t.step = step as u64 | i << 32;
        // SAFETY: `result` is this thread's own slot; the leader reads it
        // only after the release/acquire through `creds_done` below.
        unsafe { core::ptr::write_volatile(&mut t.result, err) };
    }
    let done = word(&a.creds_done);
    done.fetch_add(1, Ordering::AcqRel);
    sys::syscall3(sys::NR_FUTEX, done.as_ptr() as u64, FUTEX_WAKE_PRIVATE, 1);
    if result.is_err() {
        loop {
            sys::syscall0(NR_PAUSE);
        }
    }
}

/// The leader, after "go": waits until every thread applied its own
/// credentials (failing with the first thread's error, as `index`
/// THREAD_INDEX | i), then applies its own, dumpable and the parent-death
/// signal, and locks itself down.
pub fn leader_after_go(a: &RestoreArgs) -> Res {
    let done = word(&a.creds_done);
    loop {
        let n = done.load(Ordering::Acquire);
        if n as u64 >= a.nr_threads {
            break;
        }
        sys::syscall4(sys::NR_FUTEX, done.as_ptr() as u64, FUTEX_WAIT_PRIVATE, n as u64, 0);
    }
    // SAFETY: the host wrote `nr_threads` ThreadArgs at `threads`, aligned.
    let threads = unsafe { core::slice::from_raw_parts(a.threads as *const ThreadArgs, a.nr_threads as usize) };
    for (i, t) in threads.iter().enumerate() {
        // SAFETY: written before the thread counted itself (acquire above).
        let result = unsafe { core::ptr::read_volatile(&t.result) };
        if result < 0 {
            let step = RestoreStep::from_u64(t.step & 0xffff_ffff).unwrap_or(RestoreStep::Capabilities);
            return Err((step, (t.step >> 32) << ITEM_SHIFT | rcr_abi::THREAD_INDEX | i as u64, result));
        }
    }
    let c = &a.creds;
    let own = |r: Res| r.map_err(|(s, i, e)| (s, i << ITEM_SHIFT, e));
    own(sched(c))?;
    own(apply_creds(c))?;
    if a.dumpable >= 0 {
        ok(RestoreStep::Dumpable, sys::syscall2(sys::NR_PRCTL, PR_SET_DUMPABLE, a.dumpable as u64))?;
    }
    if a.pdeathsig > 0 {
        ok(RestoreStep::PdeathSig, sys::syscall2(sys::NR_PRCTL, PR_SET_PDEATHSIG, a.pdeathsig as u64))?;
    }
    own(lock_down(c))
}

/// Policy and RT priority, nice, affinity, as saved for this thread.
fn sched(c: &ThreadCreds) -> Res {
    if c.sched_valid == 0 {
        return Ok(());
    }
    let param = c.sched_priority as i32;
    ok(RestoreStep::Sched, sys::syscall3(NR_SCHED_SETSCHEDULER, 0, c.sched_policy as u64, &param as *const i32 as u64))?;
    ok(RestoreStep::Nice, sys::syscall3(NR_SETPRIORITY, PRIO_PROCESS, 0, c.nice as i64 as u64))?;
    if c.affinity_len != 0 {
        ok(RestoreStep::Affinity, sys::syscall3(NR_SCHED_SETAFFINITY, 0, c.affinity_len, c.affinity))?;
    }
    Ok(())
}

/// The credentials, from root's (the restore child is a copy of rcr) to
/// the saved ones. The order matters:
///
/// 1. securebits = SECBIT_NO_SETUID_FIXUP: the uid changes below then
///    leave every capability set alone (no clearing of effective,
///    permitted or ambient when root's uids go);
/// 2. capset with the saved inheritable set (effective and permitted kept
///    as they are): while the bounding set is still full, since a new
///    inheritable set must lie within old inheritable | bounding;
/// 3. setgroups, setresgid, setfsgid, then setresuid, setfsuid (each
///    needs CAP_SETGID/CAP_SETUID, kept by step 1; setresgid resets the
///    fsgid, so setfsgid comes after it, the same for the uids);
/// 4. ambient raises (a cap must be in permitted and inheritable, and
///    SECBIT_NO_CAP_AMBIENT_RAISE not yet set);
/// 5. bounding set drops (needs CAP_SETPCAP, still effective);
/// 6. securebits = the saved ones (needs CAP_SETPCAP; locks included);
/// 7. capset to the saved effective, permitted, inheritable sets: only
///    lowers permitted, and ambient stays (it lies within permitted and
///    inheritable).
fn apply_creds(c: &ThreadCreds) -> Res {
    if c.valid == 0 {
        return Ok(());
    }
    if c.no_new_privs == 0 {
        install_filters(c)?;
    }
    let prctl2 = |op: u64, v: u64| sys::syscall2(sys::NR_PRCTL, op, v);
    ok(RestoreStep::Securebits, prctl2(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP))?;
    let (eff, prm, _) = capget()?;
    capset(eff, prm, c.cap_inh)?;
    ok(RestoreStep::Groups, sys::syscall2(NR_SETGROUPS, c.nr_groups, c.groups))?;
    let [r, e, s, fs] = c.gids;
    ok(RestoreStep::Gids, sys::syscall3(NR_SETRESGID, r as u64, e as u64, s as u64))?;
    set_fs_id(NR_SETFSGID, fs, RestoreStep::Gids)?;
    let [r, e, s, fs] = c.uids;
    ok(RestoreStep::Uids, sys::syscall3(NR_SETRESUID, r as u64, e as u64, s as u64))?;
    set_fs_id(NR_SETFSUID, fs, RestoreStep::Uids)?;
    ok(RestoreStep::Ambient, sys::syscall5(sys::NR_PRCTL, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))?;
    for cap in 0..64u64 {
        if c.cap_amb & (1 << cap) != 0 {
            let r = sys::syscall5(sys::NR_PRCTL, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0);
            item(RestoreStep::Ambient, cap, r)?;
        }
    }
    drop_bounding(c.cap_bnd)?;
    ok(RestoreStep::Securebits, prctl2(PR_SET_SECUREBITS, c.securebits as u64))?;
    capset(c.cap_eff, c.cap_prm, c.cap_inh)
}

/// setfsuid/setfsgid report nothing but the previous value: set, then
/// read back with an invalid id (which changes nothing).
fn set_fs_id(nr: u64, id: u32, step: RestoreStep) -> Res {
    sys::syscall1(nr, id as u64);
    if sys::syscall1(nr, u32::MAX as u64) as u32 != id {
        return Err((step, 0, EPERM));
    }
    Ok(())
}

fn drop_bounding(keep: u64) -> Res {
    for cap in 0..64u64 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        let r = sys::syscall2(sys::NR_PRCTL, PR_CAPBSET_DROP, cap);
        if r == -22 {
            break; // EINVAL: past the kernel's last capability
        }
        item(RestoreStep::Bounding, cap, r)?;
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capget() -> Result<(u64, u64, u64), Fail> {
    let mut h = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut d = [CapData::default(); 2];
    ok(RestoreStep::Capabilities, sys::syscall2(NR_CAPGET, &mut h as *mut _ as u64, d.as_mut_ptr() as u64))?;
    let join = |f: fn(&CapData) -> u32| f(&d[0]) as u64 | (f(&d[1]) as u64) << 32;
    Ok((join(|x| x.effective), join(|x| x.permitted), join(|x| x.inheritable)))
}

fn capset(eff: u64, prm: u64, inh: u64) -> Res {
    let h = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let half = |i: u32| CapData { effective: (eff >> i) as u32, permitted: (prm >> i) as u32, inheritable: (inh >> i) as u32 };
    let d = [half(0), half(32)];
    ok(RestoreStep::Capabilities, sys::syscall2(NR_CAPSET, &h as *const _ as u64, d.as_ptr() as u64))
}

/// no_new_privs, the filters if not installed yet, strict mode.
fn lock_down(c: &ThreadCreds) -> Res {
    if c.valid == 0 {
        return Ok(());
    }
    if c.no_new_privs != 0 {
        ok(RestoreStep::NoNewPrivs, sys::syscall5(sys::NR_PRCTL, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        install_filters(c)?;
    }
    if c.seccomp_mode == 1 {
        ok(RestoreStep::Seccomp, sys::syscall2(sys::NR_PRCTL, PR_SET_SECCOMP, SECCOMP_MODE_STRICT))?;
    }
    Ok(())
}

/// `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: u16,
    filter: u64,
}

fn install_filters(c: &ThreadCreds) -> Res {
    // SAFETY: the host wrote `nr_filters` SeccompFilter at `filters`.
    let filters = unsafe { core::slice::from_raw_parts(c.filters as *const rcr_abi::SeccompFilter, c.nr_filters as usize) };
    for (i, f) in filters.iter().enumerate() {
        let prog = SockFprog { len: f.nr_insns as u16, filter: f.insns };
        let r = sys::syscall3(NR_SECCOMP, SECCOMP_SET_MODE_FILTER, f.flags as u64, &prog as *const _ as u64);
        item(RestoreStep::Seccomp, i as u64, r)?;
    }
    Ok(())
}
