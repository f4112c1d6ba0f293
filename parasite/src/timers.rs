//! [`Cmd::Timers`](rcr_abi::parasite::Cmd::Timers): the state of the
//! task's POSIX timers, which only the process itself can read.
use super::{data, EINVAL};
use rcr_abi::parasite::{Command, ParasiteArgs, PosixTimerState, Reply};
use rcr_abi::sys;

const NR_TIMER_GETTIME: u64 = 224;
const NR_TIMER_GETOVERRUN: u64 = 225;
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const PR_TIMER_CREATE_RESTORE_IDS_GET: u64 = 2;

/// Fills each [`PosixTimerState`] of the data area whose `id` the dumper
/// set: time left and interval, then the overrun count.
pub fn read(a: &ParasiteArgs, c: &Command, reply: &mut Reply) -> i64 {
    reply.value[0] = sys::syscall2(sys::NR_PRCTL, PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_GET) as u64;
    let Some(timers) = data::<PosixTimerState>(a, c.arg[0] as usize) else { return -EINVAL };
    for (i, t) in timers.iter_mut().enumerate() {
        // The itimerspec is the four i64 from interval_sec on (asserted layout).
        let spec = t as *mut PosixTimerState as u64 + core::mem::offset_of!(PosixTimerState, interval_sec) as u64;
        let r = sys::syscall2(NR_TIMER_GETTIME, t.id as u64, spec);
        if r < 0 {
            reply.value[1] = i as u64;
            return r;
        }
        let r = sys::syscall1(NR_TIMER_GETOVERRUN, t.id as u64);
        if r < 0 {
            reply.value[1] = i as u64;
            return r;
        }
        t.overrun = r as i32;
    }
    0
}
