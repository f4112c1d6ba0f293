//! Fault injection and interruption, for a dump that must fail cleanly.
//!
//! Each call to [`point`] is a numbered place (counting from 1) where a
//! dump may fail or rcr may die. In rcr's environment:
//! - `RCR_FAULT_KILL_AT=N`: rcr sends itself SIGKILL at the N-th point,
//! - `RCR_FAULT_FAIL_AT=N`: the N-th point (or the first after it that
//!   can fail, see [`kill_point`]) returns an error, which takes
//!   the dump's normal error path (the tree is cured, detached and left
//!   running, the images removed).
//!
//! Both log which point they hit. Without them [`point`] only counts. The
//! tests loop over N until a dump completes, so every point on the path is
//! covered, whatever the path.
//!
//! SIGTERM and SIGINT during a dump ([`catch_interrupts`]) only set a
//! flag; the next point (and [`check`] in long loops) turns it into an
//! error, so an interrupted dump takes the same error path.
use anyhow::{bail, Result};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::OnceLock;

static PASSED: AtomicU32 = AtomicU32::new(0);
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);
static FAILED: AtomicBool = AtomicBool::new(false);

fn env_at(var: &'static str) -> Option<u32> {
    std::env::var(var).ok().and_then(|v| v.parse().ok())
}

fn kill_at() -> Option<u32> {
    static AT: OnceLock<Option<u32>> = OnceLock::new();
    *AT.get_or_init(|| env_at("RCR_FAULT_KILL_AT"))
}

fn fail_at() -> Option<u32> {
    static AT: OnceLock<Option<u32>> = OnceLock::new();
    *AT.get_or_init(|| env_at("RCR_FAULT_FAIL_AT"))
}

/// Marks a step of the dump: where a crash of rcr must leave the target
/// unharmed, and where an error must take the clean error path.
pub fn point(name: &str) -> Result<()> {
    inject(name)?;
    check()
}

/// A point on a cleanup path (curing the parasite): it may be killed or
/// failed, but never fails for an interruption, or the cleanup that must
/// follow one could not run.
pub fn inject(name: &str) -> Result<()> {
    let n = kill_point(name);
    // The first failable point at or after N fails ([`kill_point`]s are
    // counted but cannot fail), and only once: the cleanup that follows
    // passes points too.
    if let Some(at) = fail_at().filter(|&at| n >= at && !FAILED.swap(true, Ordering::SeqCst)) {
        crate::log::info(&format!("fault injection: failing at point {n} ({name})"));
        bail!("injected fault at point {n} ({name}) (RCR_FAULT_FAIL_AT={at})");
    }
    Ok(())
}

/// A point where only a kill is meaningful (rcr is between two ptrace
/// stops of a remote syscall, where an error would not find the task in a
/// state it can be put back from). Returns the point's number.
pub fn kill_point(name: &str) -> u32 {
    let n = PASSED.fetch_add(1, Ordering::SeqCst) + 1;
    if kill_at() == Some(n) {
        crate::log::info(&format!("fault injection: SIGKILL at point {n} ({name})"));
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    n
}

/// Fails if rcr got SIGTERM or SIGINT since [`catch_interrupts`].
pub fn check() -> Result<()> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => Ok(()),
        sig => {
            let name = nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("a signal");
            bail!("interrupted by {name}: the dump was abandoned, the target left running as it was")
        }
    }
}

extern "C" fn on_interrupt(sig: i32) {
    INTERRUPTED.store(sig, Ordering::SeqCst);
}

/// From now on SIGTERM and SIGINT only set the flag [`check`] reads
/// (SA_RESTART: the syscalls rcr is in carry on).
pub fn catch_interrupts() -> Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        crate::sys::set_signal_handler(sig, on_interrupt)?;
    }
    Ok(())
}
