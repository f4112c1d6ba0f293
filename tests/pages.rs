//! The page paths leave out what restores by itself and keep the rest:
//! a 64 GiB sparse mapping (PAGEMAP_SCAN), pages written with zeros and
//! pages only read (zero page), and a private file mapping whose written
//! zero page must come back as zeros. The victim is
//! tests/victims/zeropages.c; from outside the test checks the size of
//! the pages files (pages-PID.img and the second writer's pages-PID.1.img),
//! the restored maps and the restored RSS.
//!
//! Needs root; without it every test prints a message and passes.
//! Run: `cargo test --test pages`.
mod common;

use common::*;
use std::fs;

/// Bytes of written data in the victim (chunks, half of mixed, one file
/// page) plus room for its stack, libc and heap.
const DATA: u64 = (8 << 16) + (2 << 20) + 4096;
const SLACK: u64 = 4 << 20;

fn kib_field(pid: i32, key: &str) -> u64 {
    let v = status_field(pid, key).unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    v.trim_end_matches(" kB").trim().parse().unwrap_or_else(|e| panic!("{key} {v:?} of pid {pid}: {e}"))
}

/// Bytes of the pages files of `pid` (both parts; the second may be absent).
fn pages_bytes(images: &std::path::Path, pid: i32) -> u64 {
    let main = fs::metadata(images.join(format!("pages-{pid}.img"))).expect("pages image").len();
    main + fs::metadata(images.join(format!("pages-{pid}.1.img"))).map_or(0, |m| m.len())
}

fn has_huge_vma(pid: i32) -> bool {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines().any(|l| {
        let range = l.split_whitespace().next().unwrap_or("");
        let (a, b) = range.split_once('-').unwrap_or(("0", "0"));
        u64::from_str_radix(b, 16).unwrap_or(0) - u64::from_str_radix(a, 16).unwrap_or(0) == 64 << 30
    })
}

#[test]
fn zero_and_sparse_pages() {
    let Some(mut t) = TestEnv::new("zeropages") else { return };
    let dir = t.dir.to_string_lossy().into_owned();
    t.spawn_victim("zeropages", &[&dir], false);
    t.wait_ready();
    assert!(has_huge_vma(t.pid), "the victim has no 64 GiB mapping before the dump");
    t.dump_kill_restore();
    let size = pages_bytes(&t.images, t.pid);
    assert!(size < DATA + SLACK, "the pages files are {size} bytes; zero or untouched pages seem to be stored (data is {DATA})");
    assert!(size >= DATA, "the pages files are {size} bytes, less than the {DATA} bytes of data the victim wrote");
    assert!(has_huge_vma(t.pid), "the restored process has no 64 GiB mapping");
    // The 40 MiB of zeros and zero-page reads are not filled in by restore.
    let rss = kib_field(t.pid, "VmRSS");
    assert!(rss < 24 << 10, "restored VmRSS is {rss} kB: zero pages seem to have been filled in");
    t.go_expect_pass();
}

#[test]
fn zero_and_sparse_pages_readv() {
    let Some(mut t) = TestEnv::new("zeropages") else { return };
    let dir = t.dir.to_string_lossy().into_owned();
    t.spawn_victim("zeropages", &[&dir], false);
    t.wait_ready();
    t.dump_ok(&["--pages-via", "readv"]);
    t.reap_victim();
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    let size = pages_bytes(&t.images, pid);
    assert!(size < DATA + SLACK, "pages image is {size} bytes via readv; zero pages seem to be stored");
    t.go_expect_pass();
}
