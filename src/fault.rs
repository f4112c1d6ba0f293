//! Fault injection, for the tests that kill rcr in the middle of a dump.
//!
//! Each call to [`point`] is a numbered place where rcr may die. With
//! `RCR_FAULT_KILL_AT=N` in its environment, rcr sends itself SIGKILL at
//! the N-th point it passes (counting from 1), after logging which one.
//! Without it, [`point`] only counts. The test harness loops over N until
//! a dump completes, so every point on the path is covered, whatever the
//! path.
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

static PASSED: AtomicU32 = AtomicU32::new(0);

fn kill_at() -> Option<u32> {
    static AT: OnceLock<Option<u32>> = OnceLock::new();
    *AT.get_or_init(|| std::env::var("RCR_FAULT_KILL_AT").ok().and_then(|v| v.parse().ok()))
}

/// Marks a place where a crash of rcr must leave the target unharmed.
pub fn point(name: &str) {
    let n = PASSED.fetch_add(1, Ordering::SeqCst) + 1;
    if kill_at() == Some(n) {
        crate::log::info(&format!("fault injection: SIGKILL at point {n} ({name})"));
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
