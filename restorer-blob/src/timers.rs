//! POSIX timers: created under their saved ids once every thread exists
//! (a SIGEV_THREAD_ID timer needs its thread), armed last of all, next to
//! the itimers.
use crate::{check, fail};
use rcr_abi::{sys, PosixTimerArgs, RestoreArgs, RestoreStep};

const NR_TIMER_CREATE: u64 = 222;
const NR_TIMER_SETTIME: u64 = 223;
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const PR_TIMER_CREATE_RESTORE_IDS_ON: u64 = 1;

fn timers(a: &RestoreArgs) -> &[PosixTimerArgs] {
    if a.nr_timers == 0 {
        return &[];
    }
    // SAFETY: the host wrote `nr_timers` PosixTimerArgs at `timers`, in
    // the region, aligned.
    unsafe { core::slice::from_raw_parts(a.timers as *const PosixTimerArgs, a.nr_timers as usize) }
}

/// timer_create for each saved timer with PR_TIMER_CREATE_RESTORE_IDS on:
/// the kernel takes the id from the `timer_t` the last argument points to.
/// Then leaves the mode as the process had it.
pub fn create(a: &RestoreArgs) {
    let list = timers(a);
    if list.is_empty() && a.timer_restore_ids == 0 {
        return;
    }
    let on = sys::syscall2(sys::NR_PRCTL, PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_ON);
    check(RestoreStep::TimerRestoreIds, 0, on);
    for (i, t) in list.iter().enumerate() {
        let mut id = t.id;
        // The sigevent is the 64 bytes from sigev_value on (asserted layout).
        let sigevent = t as *const PosixTimerArgs as u64 + core::mem::offset_of!(PosixTimerArgs, sigev_value) as u64;
        let r = sys::syscall3(NR_TIMER_CREATE, t.clock as u64, sigevent, &mut id as *mut i32 as u64);
        check(RestoreStep::TimerCreate, i as u64, r);
        if id != t.id {
            fail(RestoreStep::TimerCreate, i as u64, -16);
        }
    }
    let r = sys::syscall2(sys::NR_PRCTL, PR_TIMER_CREATE_RESTORE_IDS, a.timer_restore_ids);
    check(RestoreStep::TimerRestoreIds, 1, r);
}

/// timer_settime (relative) for each armed timer.
pub fn arm(a: &RestoreArgs) {
    for (i, t) in timers(a).iter().enumerate() {
        if t.value_sec == 0 && t.value_nsec == 0 {
            continue;
        }
        let spec = t as *const PosixTimerArgs as u64 + core::mem::offset_of!(PosixTimerArgs, interval_sec) as u64;
        check(RestoreStep::TimerArm, i as u64, sys::syscall4(NR_TIMER_SETTIME, t.id as u64, 0, spec, 0));
    }
}
