//! Hostile images: a truncated, corrupt, foreign-version or hand-edited
//! image set is refused by `rcr restore` with an error naming the image
//! file and the field, a non-zero exit, and no process left behind (none
//! with a saved pid, whether the refusal comes before the fork or from a
//! restored child); the environment checks (a file changed since the dump,
//! a pid in use, XSAVE state this CPU lacks); and the fuzzer's findings
//! (tests/fuzz/crashes/) replayed through the planning entry point.
//!
//! Images are edited with the rcr library itself ([`edit`]: decode every
//! entry, change it, write the file back).
//!
//! Needs root for the restore tests; without it they print a message and pass.
//! Run: `cargo test --release --test badimages`.
mod common;

use common::*;
use rcr::images::{self, pb, ImageWriter, Kind};
use std::fs;
use std::path::{Path, PathBuf};

/// Decodes every entry of `dir/file` as `M`, lets `f` change them, writes
/// the file back.
fn edit<M: prost::Message + Default>(dir: &Path, file: &str, kind: Kind, f: impl FnOnce(&mut Vec<M>)) {
    let p = dir.join(file);
    let mut v: Vec<M> = images::read_entries(&p, kind).unwrap_or_else(|e| panic!("decoding {file}: {e:#}"));
    f(&mut v);
    let mut w = ImageWriter::new(fs::File::create(&p).unwrap(), kind).unwrap();
    for m in &v {
        w.push(m).unwrap();
    }
    w.finish().unwrap();
}

/// Changes the raw bytes of `dir/file`.
fn edit_bytes(dir: &Path, file: &str, f: impl FnOnce(&mut Vec<u8>)) {
    let p = dir.join(file);
    let mut b = fs::read(&p).unwrap();
    f(&mut b);
    fs::write(&p, b).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Every pid and tid of the image set at `dir`.
fn saved_ids(dir: &Path) -> Vec<i32> {
    let tree: Vec<pb::PstreeEntry> = images::read_entries(&dir.join("pstree.img"), Kind::Pstree).unwrap();
    tree.iter().flat_map(|e| std::iter::once(e.pid).chain(e.threads.iter().copied())).map(|p| p as i32).collect()
}

/// `rcr restore -D dir` must fail, naming every one of `want`, and leave
/// no process with a saved id (those a restored child's failure left as
/// our zombies are reaped).
fn assert_refused(t: &mut TestEnv, case: &str, dir: &Path, ids: &[i32], want: &[&str]) {
    let d = dir.to_string_lossy().into_owned();
    let out = t.rcr(case, &["restore", "-D", &d]);
    assert!(!out.status.success(), "{case}: rcr restore succeeded");
    assert_eq!(out.status.code(), Some(1), "{case}: rcr restore ended with {}:\n{}", describe(out.status), out.stderr);
    for w in want {
        assert!(out.stderr.contains(w), "{case}: the error should name {w:?}:\n{}", out.stderr);
    }
    eprintln!("{case}: {}", out.stderr.trim());
    wait_pids_gone(ids, &format!("{case}: processes with the saved ids"));
}

/// Dumps the `heap` victim; returns the test env, its image dir and pid.
fn dumped_heap(name: &str) -> Option<(TestEnv, PathBuf, u32)> {
    let mut t = TestEnv::new(name)?;
    t.spawn_victim("heap", &[], false);
    t.wait_ready();
    t.dump_ok(&[]);
    t.reap_victim();
    let (images, pid) = (t.images.clone(), t.pid as u32);
    Some((t, images, pid))
}

type Mutation = Box<dyn Fn(&Path, u32)>;

/// (case, how to break the images of pid, what the error must name).
fn cases() -> Vec<(&'static str, Mutation, Vec<String>)> {
    let f = |k: &str, pid: u32| format!("{k}-{pid}.img");
    let mut v: Vec<(&'static str, Mutation, Vec<String>)> = Vec::new();
    let mut add = |case, m: Mutation, want: &[&str]| v.push((case, m, want.iter().map(|s| s.to_string()).collect()));
    add("truncated", Box::new(move |d, p| edit_bytes(d, &f("core", p), |b| b.truncate(b.len() - 3))), &["core-PID.img", "truncated"]);
    add("empty", Box::new(move |d, p| edit_bytes(d, &f("mm", p), |b| b.clear())), &["mm-PID.img", "truncated header"]);
    add("wrong_magic", Box::new(move |d, p| edit_bytes(d, &f("mm", p), |b| b[..4].copy_from_slice(b"XXXX"))), &["mm-PID.img", "unknown magic"]);
    add("foreign_version", Box::new(move |d, p| edit_bytes(d, &f("pagemap", p), |b| b[4..8].copy_from_slice(&99u32.to_le_bytes()))), &["pagemap-PID.img", "format version 99"]);
    add("inventory_version", Box::new(|d, _| edit::<pb::Inventory>(d, "inventory.img", Kind::Inventory, |v| v[0].format_version = 3)), &["inventory.img", "format_version 3"]);
    add("huge_frame", Box::new(move |d, p| edit_bytes(d, &f("fs", p), |b| b[8..12].copy_from_slice(&0xffff_fff0u32.to_le_bytes()))), &["fs-PID.img", "entry 0 claims 4294967280 bytes"]);
    add("frame_past_end", Box::new(move |d, p| edit_bytes(d, &f("fs", p), |b| b[8..12].copy_from_slice(&(1u32 << 20).to_le_bytes()))), &["fs-PID.img", "entry 0 truncated"]);
    add("garbage_entry", Box::new(move |d, p| edit_bytes(d, &f("fs", p), |b| b[12..].fill(0xff))), &["fs-PID.img", "does not decode"]);
    add("missing_file", Box::new(move |d, p| fs::remove_file(d.join(f("fdinfo", p))).unwrap()), &["fdinfo-PID.img"]);
    add("missing_pages", Box::new(move |d, p| fs::remove_file(d.join(f("pages", p))).unwrap()), &["pages-PID.img"]);
    add("misaligned_vma", Box::new(move |d, p| edit::<pb::Mm>(d, &f("mm", p), Kind::Mm, |m| m[0].vmas[2].start += 0x10)), &["mm-PID.img", "vma 2 [0x", "start not page aligned"]);
    add("overlapping_vmas", Box::new(move |d, p| edit::<pb::Mm>(d, &f("mm", p), Kind::Mm, |m| m[0].vmas[2].start = m[0].vmas[1].end - 4096)), &["mm-PID.img", "vma 2", "overlaps"]);
    add("vma_above_task_size", Box::new(move |d, p| edit::<pb::Mm>(d, &f("mm", p), Kind::Mm, |m| m[0].vmas.last_mut().unwrap().end = 0x8000_0000_0000)), &["mm-PID.img", "not a range of user addresses"]);
    add("unknown_vma_kind", Box::new(move |d, p| edit::<pb::Mm>(d, &f("mm", p), Kind::Mm, |m| m[0].vmas[0].kind = 99)), &["mm-PID.img", "vma 0", "unknown kind 99"]);
    add("unknown_task_state", Box::new(move |d, p| edit::<pb::TaskCore>(d, &f("core", p), Kind::Core, |c| c[0].state = 42)), &["core-PID.img", "task state 42"]);
    add("pages_count_mismatch", Box::new(move |d, p| edit_bytes(d, &f("pages", p), |b| b.truncate(b.len() - 4096))), &["pages-PID.img", "the pagemap describes"]);
    add("pagemap_misaligned", Box::new(move |d, p| edit::<pb::PagemapEntry>(d, &f("pagemap", p), Kind::Pagemap, |e| e[0].vaddr += 8)), &["pagemap-PID.img", "entry 0"]);
    add("pagemap_huge_count", Box::new(move |d, p| edit::<pb::PagemapEntry>(d, &f("pagemap", p), Kind::Pagemap, |e| e[0].nr_pages = u32::MAX)), &["pagemap-PID.img", "entry 0"]);
    add("pagemap_outside_vmas", Box::new(move |d, p| edit::<pb::PagemapEntry>(d, &f("pagemap", p), Kind::Pagemap, |e| e[0].vaddr = 0x1000)), &["pagemap-PID.img", "lies outside every VMA"]);
    add("fd_out_of_range", Box::new(move |d, p| edit::<pb::FdEntry>(d, &f("fdinfo", p), Kind::Fdinfo, |e| e[0].fd = u32::MAX)), &["fdinfo-PID.img", "fd 4294967295 is out of range"]);
    add("fd_twice", Box::new(move |d, p| edit::<pb::FdEntry>(d, &f("fdinfo", p), Kind::Fdinfo, |e| e.push(e[0]))), &["fdinfo-PID.img", "appears twice"]);
    add("dangling_desc_id", Box::new(move |d, p| edit::<pb::FdEntry>(d, &f("fdinfo", p), Kind::Fdinfo, |e| e[0].desc_id = 999)), &["fdinfo-PID.img", "unknown description 999"]);
    add("dangling_exe_file_id", Box::new(move |d, p| edit::<pb::Mm>(d, &f("mm", p), Kind::Mm, |m| m[0].exe_file_id = 999)), &["mm-PID.img", "exe_file_id 999"]);
    add("dangling_reg_file_id", Box::new(|d, _| edit::<pb::FileDesc>(d, "fds.img", Kind::Fds, |v| v[0].kind = Some(pb::file_desc::Kind::RegFileId(999)))), &["fds.img", "description 1", "file id 999"]);
    add("dangling_pipe_id", Box::new(|d, _| edit::<pb::FileDesc>(d, "fds.img", Kind::Fds, |v| v[0].kind = Some(pb::file_desc::Kind::Pipe(pb::PipeEnd { pipe_id: 77, write: false })))), &["fds.img", "pipe id 77"]);
    add("huge_xsave", Box::new(move |d, p| edit::<pb::TaskCore>(d, &f("core", p), Kind::Core, |c| c[0].xsave.resize(1 << 20, 0))), &["core-PID.img", "xsave is 1048576 bytes"]);
    add("unknown_xcomp", Box::new(move |d, p| edit::<pb::TaskCore>(d, &f("core", p), Kind::Core, |c| c[0].xcomp_dynamic = 1 << 19)), &["core-PID.img", "field xcomp_dynamic 0x80000"]);
    // "live AMX tile data but ... lacks the permission" here; on a CPU
    // without AMX: "xsave holds CPU state this CPU does not enable".
    add("tile_data_without_permission", Box::new(move |d, p| edit::<pb::TaskCore>(d, &f("core", p), Kind::Core, |c| c[0].xsave[514] |= 0x04)), &["core-PID.img", "thread", "xsave holds"]);
    add("short_siginfo", Box::new(move |d, p| edit::<pb::TaskCore>(d, &f("core", p), Kind::Core, |c| c[0].pending.push(pb::PendingSignal { signo: 10, shared: false, siginfo: vec![0; 3] }))), &["core-PID.img", "pending signal 10"]);
    add("sigaction_sigkill", Box::new(move |d, p| edit::<pb::TaskCore>(d, &f("core", p), Kind::Core, |c| c[0].sigactions.push(pb::SigAction { signo: 9, handler: 1, ..Default::default() }))), &["core-PID.img", "sigaction for signal 9"]);
    add("no_registers", Box::new(move |d, p| edit::<pb::TaskCore>(d, &f("core", p), Kind::Core, |c| c[0].regs = None)), &["core-PID.img", "no registers"]);
    add("relative_cwd", Box::new(move |d, p| edit::<pb::Fs>(d, &f("fs", p), Kind::Fs, |s| s[0].cwd = "tmp".into())), &["fs-PID.img", "cwd"]);
    add("pid_out_of_range", Box::new(|d, _| edit::<pb::PstreeEntry>(d, "pstree.img", Kind::Pstree, |e| e[0].threads.push(u32::MAX))), &["pstree.img", "thread 4294967295 is out of range"]);
    add("page_size", Box::new(|d, _| edit::<pb::Inventory>(d, "inventory.img", Kind::Inventory, |v| v[0].page_size = 65536)), &["inventory.img", "page_size 65536"]);
    v
}

/// Each hand-edited copy of one dump is refused, naming file and field.
#[test]
fn hand_edited_images_refused() {
    let Some((mut t, images, pid)) = dumped_heap("hand_edited_images_refused") else { return };
    let ids = saved_ids(&images);
    for (case, mutate, want) in cases() {
        let dir = t.path(&format!("case-{case}"));
        copy_dir(&images, &dir);
        mutate(&dir, pid);
        let want: Vec<String> = want.iter().map(|w| w.replace("PID", &pid.to_string())).collect();
        assert_refused(&mut t, case, &dir, &ids, &want.iter().map(String::as_str).collect::<Vec<_>>());
    }
    // The untouched set still restores: the cases above were refused for their edit.
    let pid = t.restore(&[]);
    assert_eq!(pid, t.pid);
    t.go_expect_pass();
}

/// A set that passes every check but fails in a restored child (the cwd
/// of the deepest process of a tree is gone): every process already
/// forked is killed, rcr exits non-zero naming the child's error.
#[test]
fn failure_in_a_child_kills_the_tree() {
    let Some(mut t) = TestEnv::new("failure_in_a_child_kills_the_tree") else { return };
    t.spawn_victim("tree", &[], true);
    t.wait_ready();
    t.dump_ok(&[]);
    t.reap_victim();
    let ids = saved_ids(&t.images);
    wait_pids_gone(&ids, "the dumped tree");
    let tree: Vec<pb::PstreeEntry> = images::read_entries(&t.images.join("pstree.img"), Kind::Pstree).unwrap();
    let last = tree.iter().rev().find(|e| !e.threads.is_empty()).unwrap().pid;
    let gone = t.path("gone-dir");
    fs::create_dir_all(&gone).unwrap();
    let gone_s = gone.to_string_lossy().into_owned();
    edit::<pb::Fs>(&t.images.clone(), &format!("fs-{last}.img"), Kind::Fs, |s| s[0].cwd = gone_s.clone());
    fs::remove_dir(&gone).unwrap();
    let images = t.images.clone();
    assert_refused(&mut t, "cwd-gone", &images, &ids, &[&format!("pid {last}"), "chdir", &gone_s]);
}

/// The xstate_bv of a saved XSAVE area claims a component this CPU does
/// not enable: refused, naming the component.
#[test]
fn xsave_feature_missing_refused() {
    let Some((mut t, images, pid)) = dumped_heap("xsave_feature_missing_refused") else { return };
    let xcr0 = rcr::arch::cur::xcr0();
    // AVX-512 (5-7), PKRU (9), AMX (17, 18): the first one this CPU lacks.
    let Some(bit) = [5u32, 6, 7, 9, 17, 18].into_iter().find(|b| xcr0 & (1 << b) == 0) else {
        eprintln!("skipping: this CPU enables every XSAVE component the test knows (XCR0 {xcr0:#x})");
        return;
    };
    let name = ["", "", "", "", "", "AVX-512 opmask", "AVX-512 ZMM_Hi256", "AVX-512 Hi16_ZMM", "", "PKRU", "", "", "", "", "", "", "", "AMX TILECFG", "AMX TILEDATA"][bit as usize];
    edit::<pb::TaskCore>(&images, &format!("core-{pid}.img"), Kind::Core, |c| {
        let bv = u64::from_le_bytes(c[0].xsave[512..520].try_into().unwrap()) | 1 << bit;
        c[0].xsave[512..520].copy_from_slice(&bv.to_le_bytes());
    });
    let ids = saved_ids(&images);
    assert_refused(&mut t, "xsave", &images, &ids, &[&format!("core-{pid}.img"), "xsave", name]);
}

/// Runs the heap victim from a copy of its binary (its text is mapped
/// privately, and it is its exe), dumps it (killing it) and returns the
/// copy's path.
fn dump_copied_heap(t: &mut TestEnv) -> PathBuf {
    let exe = t.path("victim-heap");
    fs::copy(victim_path("heap"), &exe).unwrap();
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg(&t.go);
    t.spawn_command(cmd, false);
    t.wait_ready();
    t.dump_ok(&[]);
    t.reap_victim();
    exe
}

/// A file a VMA maps privately (content shows through) was modified since
/// the dump: refused, naming the mapping and the file.
#[test]
fn mapped_file_changed_refused() {
    let Some(mut t) = TestEnv::new("mapped_file_changed_refused") else { return };
    let exe = dump_copied_heap(&mut t);
    let mut f = fs::OpenOptions::new().append(true).open(&exe).unwrap();
    std::io::Write::write_all(&mut f, b"\0").unwrap();
    drop(f);
    let (images, ids) = (t.images.clone(), saved_ids(&t.images));
    let exe_s = exe.to_string_lossy().into_owned();
    assert_refused(&mut t, "exe-changed", &images, &ids, &[&exe_s, "resized or modified"]);
}

/// The victim's binary was replaced (same content, a new inode) since the
/// dump: refused, naming the file and the inode.
#[test]
fn replaced_file_refused() {
    let Some(mut t) = TestEnv::new("replaced_file_refused") else { return };
    let exe = dump_copied_heap(&mut t);
    let new = t.path("victim-heap.new");
    fs::copy(&exe, &new).unwrap();
    fs::rename(&new, &exe).unwrap();
    let (images, ids) = (t.images.clone(), saved_ids(&t.images));
    let exe_s = exe.to_string_lossy().into_owned();
    assert_refused(&mut t, "exe-replaced", &images, &ids, &[&exe_s, "was replaced since the dump"]);
}

/// A pid in use: the message names it and the process using it.
#[test]
fn pid_in_use_names_the_user() {
    let Some(mut t) = TestEnv::new("pid_in_use_names_the_user") else { return };
    t.spawn_victim("heap", &[], false);
    t.wait_ready();
    t.dump_ok(&["-R"]);
    let images = t.images.to_string_lossy().into_owned();
    let out = t.rcr("restore-in-use", &["restore", "-D", &images]);
    assert!(!out.status.success(), "restore over a live pid succeeded");
    assert!(out.stderr.contains(&format!("pid {} is in use (by \"heap\")", t.pid)), "the error should name the pid and its user:\n{}", out.stderr);
    t.go("");
    assert!(t.wait_victim_exit().success());
}

/// Every finding of the fuzzer (tests/fuzz/crashes/*, image sets) goes
/// through the planning entry point without a panic; one with an
/// `expect` file must be refused with an error containing its text. The
/// corpus goes through too.
#[test]
fn fuzz_crashes_replayed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut n = 0;
    for sub in ["crashes", "corpus"] {
        let Ok(entries) = fs::read_dir(root.join(sub)) else { continue };
        for e in entries.flatten().filter(|e| e.path().is_dir()) {
            let r = std::panic::catch_unwind(|| rcr::restore::plan_only(&e.path()).map(|_| ()));
            let r = r.unwrap_or_else(|_| panic!("{}: restore planning panicked", e.path().display()));
            if let Ok(want) = fs::read_to_string(e.path().join("expect")) {
                let err = format!("{:#}", r.expect_err("a finding with an expect file must be refused"));
                assert!(err.contains(want.trim()), "{}: the error should contain {:?}: {err}", e.path().display(), want.trim());
            }
            n += 1;
        }
    }
    assert!(n >= 3, "no corpus in {}", root.display());
}
