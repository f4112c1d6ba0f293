//! `rcr dump --compress`: pages go to pages-PID.img.zst (zstd seekable
//! format) and restore decompresses them without being asked. The victim
//! (tests/victims/compress.c) holds text-like memory, random memory, pages
//! of zeros, shared anonymous memory and a sparse 16 GiB mapping, and checks
//! them all itself after restore. From outside the tests check that the
//! image is smaller than the memory, that no plain pages file is written,
//! that `rcr show` and `zstd -t` read it, and that a corrupt or truncated
//! stream is refused naming the file, leaving no process behind.
//!
//! Needs root; without it every test prints a message and passes.
//! Run: `cargo test --test compress`.
mod common;

use common::*;
use std::fs;
use std::path::PathBuf;

/// What the victim holds that must be stored: text, noise, shm, sparse chunks.
const TEXT: u64 = 24 << 20;
const NOISE: u64 = 8 << 20;
const SHM: u64 = 1 << 20;
const CHUNKS: u64 = 4 * (64 << 10);

fn zst(t: &TestEnv) -> PathBuf {
    t.images.join(format!("pages-{}.img.zst", t.pid))
}

/// `rcr dump --compress...` that must succeed.
fn dump_compressed(t: &mut TestEnv, extra: &[&str]) {
    let out = t.dump(extra);
    assert!(out.status.success(), "rcr dump {extra:?} failed ({}):\n{}", describe(out.status), out.stderr);
    assert!(zst(t).is_file(), "rcr dump {extra:?} wrote no {}", zst(t).display());
    let plain = t.images.join(format!("pages-{}.img", t.pid));
    assert!(!plain.exists(), "a compressed dump left a plain {} too", plain.display());
}

/// The compressed image is smaller than the memory (the text shrinks) but
/// not smaller than the random part (which cannot shrink).
fn check_ratio(t: &TestEnv) {
    let size = fs::metadata(zst(t)).expect("compressed pages image").len();
    let data = TEXT + NOISE + SHM + CHUNKS;
    assert!(size < NOISE + TEXT / 2 + SHM + (2 << 20), "{} is {size} bytes for {data} bytes of data: the text did not compress", zst(t).display());
    assert!(size > NOISE, "{} is {size} bytes, less than the {NOISE} bytes of random data", zst(t).display());
}

/// `rcr show` reads the image set, compressed pages file included; the
/// zstd tool (if installed) finds the stream sound.
fn check_readers(t: &mut TestEnv) {
    let images = t.images.to_string_lossy().into_owned();
    let out = t.rcr("show", &["show", "-D", &images]);
    assert!(out.status.success(), "rcr show failed:\n{}", out.stderr);
    let name = format!("pages-{}.img.zst: Pages, zstd seekable", t.pid);
    assert!(out.stdout.contains(&name), "rcr show does not describe the compressed pages ({name:?}):\n{}", out.stdout);
    assert!(out.stdout.contains("pages PAGES_ZSTD"), "rcr show does not say the inventory's pages are compressed:\n{}", out.stdout);
    let json = t.rcr("show", &["show", "-D", &images, "--json"]);
    assert!(json.status.success() && json.stdout.contains("\"compressed_size\""), "rcr show --json lacks the zstd summary:\n{}", json.stderr);
    if std::path::Path::new("/usr/bin/zstd").exists() {
        let st = std::process::Command::new("/usr/bin/zstd").arg("-q").arg("-t").arg(zst(t)).status().expect("running zstd -t");
        assert!(st.success(), "zstd -t {} failed: not a sound zstd stream", zst(t).display());
    }
}

#[test]
fn compressed_dump_kill_restore() {
    let Some(mut t) = TestEnv::new("compress") else { return };
    t.spawn_victim("compress", &[], false);
    t.wait_ready();
    dump_compressed(&mut t, &["--compress"]);
    t.reap_victim();
    check_ratio(&t);
    check_readers(&mut t);
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid, "restored with a different PID");
    // The 8 MiB of zeros and the untouched sparse range are not filled in.
    let rss: u64 = status_field(pid, "VmRSS").and_then(|v| v.trim_end_matches(" kB").trim().parse().ok()).expect("VmRSS");
    assert!(rss < (TEXT + NOISE + SHM + (6 << 20)) >> 10, "restored VmRSS is {rss} kB: zero or sparse pages seem to have been filled in");
    t.go_expect_pass();
}

#[test]
fn compressed_leave_running_then_restore() {
    let Some(mut t) = TestEnv::new("compress-R") else { return };
    t.spawn_victim("compress", &[], false);
    t.wait_ready();
    dump_compressed(&mut t, &["-R", "--compress=3"]);
    check_ratio(&t);
    // The original ran on untouched: it checks its memory and passes...
    t.go_expect_original_pass();
    let pid = t.pid;
    wait_until(&format!("/proc/{pid} to go away"), || (!pid_exists(pid)).then_some(()));
    // ...and the image restores, sees the go file and passes too.
    assert_eq!(t.restore(&[]), pid, "restored with a different PID");
    let st = t.wait_restore_exit();
    assert!(st.success(), "the restored victim exited with {}", describe(st));
    t.assert_log_pass(2);
}

#[test]
fn zero_and_sparse_pages_compressed() {
    let Some(mut t) = TestEnv::new("compress-zeropages") else { return };
    let dir = t.dir.to_string_lossy().into_owned();
    t.spawn_victim("zeropages", &[&dir], false);
    t.wait_ready();
    dump_compressed(&mut t, &["--compress"]);
    t.reap_victim();
    // 32 MiB of zeros, 8 MiB of zero-page reads and the 64 GiB range: none stored.
    let size = fs::metadata(zst(&t)).expect("compressed pages image").len();
    assert!(size < 4 << 20, "{} is {size} bytes: zero or untouched pages seem to be stored", zst(&t).display());
    assert_eq!(t.restore(&[]), t.pid, "restored with a different PID");
    t.go_expect_pass();
}

/// Restore must fail before forking anything, naming the file and `want`.
fn assert_restore_refused(t: &mut TestEnv, want: &str) {
    let images = t.images.to_string_lossy().into_owned();
    let out = t.rcr("restore", &["restore", "-D", &images]);
    assert!(!out.status.success(), "rcr restore of a damaged {} succeeded", zst(t).display());
    let name = format!("pages-{}.img.zst", t.pid);
    assert!(out.stderr.contains(&name) && out.stderr.contains(want), "the error should name {name} and say {want:?}:\n{}", out.stderr);
    assert!(!pid_exists(t.pid), "a refused restore left pid {} behind", t.pid);
}

#[test]
fn corrupt_stream_is_refused() {
    let Some(mut t) = TestEnv::new("compress-corrupt") else { return };
    t.spawn_victim("compress", &[], false);
    t.wait_ready();
    dump_compressed(&mut t, &["--compress"]);
    t.reap_victim();
    let good = fs::read(zst(&t)).expect("reading the compressed pages");
    // Flip bytes in the middle of the frames (compressed text or raw noise:
    // the frame checksum catches either).
    let mut bad = good.clone();
    for b in &mut bad[good.len() / 3..good.len() / 3 + 64] {
        *b ^= 0x5a;
    }
    fs::write(zst(&t), &bad).expect("writing the corrupt stream");
    assert_restore_refused(&mut t, "frame");
    // Cut off: the seek table at the end is gone.
    fs::write(zst(&t), &good[..good.len() / 2]).expect("writing the truncated stream");
    assert_restore_refused(&mut t, "seek table");
    // Intact again: it restores.
    fs::write(zst(&t), &good).expect("writing the stream back");
    assert_eq!(t.restore(&[]), t.pid, "restored with a different PID");
    t.go_expect_pass();
}

#[test]
fn compress_with_splice_is_refused() {
    let Some(mut t) = TestEnv::new("compress-splice") else { return };
    t.spawn_victim("compress", &[], false);
    t.wait_ready();
    t.assert_dump_refused(&["--compress", "--pages-via", "splice"], &["--compress", "splice"]);
    t.go("");
    let st = t.wait_victim_exit();
    assert!(st.success(), "the victim exited with {} after the refused dump", describe(st));
}
