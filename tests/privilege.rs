//! Privilege: no privilege is gained through rcr, and its image directory
//! is its own.
//!
//! * The image directory is created 0700 and its files 0600 whatever the
//!   umask; an existing directory others may write is refused.
//! * Symlinks planted in the image directory are never followed: a dump
//!   replaces them (their targets stay untouched), a restore refuses them;
//!   an image directory that is itself a symlink is refused.
//! * A non-root rcr (uid 65534, through setpriv) refuses to dump another
//!   user's process, a non-dumpable one, and, without
//!   CAP_CHECKPOINT_RESTORE, its own; a copy of rcr with that file
//!   capability dumps its own process. A non-root restore needs
//!   CAP_CHECKPOINT_RESTORE, CAP_SETUID, CAP_SETGID and CAP_SETPCAP; with
//!   them it restores the process as it was, with no capability.
//! * An image set owned by a non-root user is untrusted even when root
//!   restores it: hand-edited credentials beyond that user (uid 0, full
//!   capabilities) are refused naming the field; the legit set restores;
//!   a file of the process only root may open is not reopened for it.
//!
//! The victim is tests/victims/heap.c (it checks its memory after go and
//! prints PASS). Needs root (and setpriv, setcap); without root every test
//! prints a message and passes.
mod common;

use common::*;
use rcr::images::{pb, ImageDir, Kind};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

const NOBODY: u32 = 65534;
const ALL_CAPS: u64 = (1 << 41) - 1;

/// `setpriv` running the rest of the command as uid/gid `id`, no groups.
fn as_user(id: u32, program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={id}")).arg(format!("--regid={id}")).arg("--clear-groups").arg(program);
    c
}

/// Runs `cmd` to completion (bounded); returns its status and stderr.
fn run(t: &TestEnv, tag: &str, mut cmd: Command) -> (ExitStatus, String) {
    let err = t.path(&format!("{tag}.err"));
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(fs::File::create(&err).expect("stderr file"));
    prepare(&mut cmd, SpawnOpts::default());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {tag}: {e}"));
    let st = wait_child(&mut child, tag);
    (st, fs::read_to_string(&err).unwrap_or_default())
}

fn assert_refused(what: &str, (st, err): (ExitStatus, String), want: &[&str]) {
    assert!(!st.success(), "{what} should have been refused:\n{err}");
    for w in want {
        assert!(err.contains(w), "{what}: the error should name {w:?}:\n{err}");
    }
}

/// A directory owned by uid 65534 inside the test dir.
fn nobody_dir(t: &TestEnv) -> PathBuf {
    let d = t.path("nobody");
    fs::create_dir_all(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(NOBODY), Some(NOBODY)).unwrap();
    d
}

/// A copy of `program` with file capabilities `caps` (setcap syntax),
/// executable by everyone; None if setcap is not there.
fn cap_copy(t: &TestEnv, program: &Path, name: &str, caps: &str) -> Option<PathBuf> {
    let p = t.path(name);
    fs::copy(program, &p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    match Command::new("setcap").arg(caps).arg(&p).status() {
        Ok(st) if st.success() => Some(p),
        r => {
            eprintln!("skipping: setcap {caps} failed ({r:?})");
            None
        }
    }
}

fn chown_tree(dir: &Path, id: u32) {
    std::os::unix::fs::chown(dir, Some(id), Some(id)).unwrap();
    for e in fs::read_dir(dir).unwrap().flatten() {
        std::os::unix::fs::lchown(e.path(), Some(id), Some(id)).unwrap();
    }
}

/// Directory 0700, every file a regular 0600 one, all owned by `uid`.
fn assert_modes(dir: &Path, uid: u32) {
    let md = fs::symlink_metadata(dir).unwrap();
    assert!(md.is_dir(), "{} is not a directory", dir.display());
    assert_eq!(md.mode() & 0o7777, 0o700, "image directory mode");
    assert_eq!(md.uid(), uid, "image directory owner");
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap().flatten() {
        let md = fs::symlink_metadata(e.path()).unwrap();
        assert!(md.file_type().is_file(), "{} is not a regular file", e.path().display());
        assert_eq!(md.mode() & 0o7777, 0o600, "mode of {}", e.path().display());
        assert_eq!(md.uid(), uid, "owner of {}", e.path().display());
        n += 1;
    }
    assert!(n >= 9, "only {n} files in {}", dir.display());
}

fn spawn_nobody_heap(t: &mut TestEnv) -> i32 {
    // The log is one of the victim's files: a restore bounded by nobody
    // must be able to open it as nobody.
    fs::File::create(&t.log).unwrap();
    std::os::unix::fs::chown(&t.log, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut cmd = as_user(NOBODY, &victim_path("heap"));
    cmd.arg(&t.go);
    let pid = t.spawn_command(cmd, false);
    t.wait_ready();
    assert_eq!(status_field(pid, "Uid").as_deref(), Some("65534\t65534\t65534\t65534"), "the victim runs as nobody");
    pid
}

#[test]
fn image_dir_modes_under_umask_0() {
    let Some(mut t) = TestEnv::new("priv_modes") else { return };
    t.spawn_victim("heap", &[], false);
    t.wait_ready();
    let images = t.path("fresh/images");
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(format!("umask 0; exec {RCR} dump -t {} -D {}", t.pid, images.display()));
    let (st, err) = run(&t, "dump-umask0", sh);
    assert!(st.success(), "dump under umask 0 failed:\n{err}");
    assert_modes(&images, 0);
    t.reap_victim();
    t.images = images.clone();
    t.restore(&[]);
    t.go_expect_pass();
    assert_modes(&images, 0);
}

#[test]
fn writable_image_dir_refused() {
    let Some(mut t) = TestEnv::new("priv_writable") else { return };
    t.spawn_victim("heap", &[], false);
    t.wait_ready();
    fs::set_permissions(&t.images, fs::Permissions::from_mode(0o777)).unwrap();
    t.assert_dump_refused(&[], &["writable by everyone", "mode 777"]);
    fs::set_permissions(&t.images, fs::Permissions::from_mode(0o770)).unwrap();
    t.assert_dump_refused(&[], &["writable by its group"]);
    fs::set_permissions(&t.images, fs::Permissions::from_mode(0o700)).unwrap();
    t.dump_ok(&["-R"]);
    t.go_expect_original_pass();
}

#[test]
fn symlinks_in_image_dir_not_followed() {
    let Some(mut t) = TestEnv::new("priv_symlinks") else { return };
    let pid = t.spawn_victim("heap", &[], false);
    t.wait_ready();
    let precious = t.path("precious");
    fs::write(&precious, "precious\n").unwrap();
    for name in [format!("pages-{pid}.img"), format!("core-{pid}.img"), "inventory.img".into()] {
        std::os::unix::fs::symlink(&precious, t.images.join(name)).unwrap();
    }
    // The image directory itself a symlink: refused, the victim untouched.
    let link = t.path("link");
    std::os::unix::fs::symlink(&t.images, &link).unwrap();
    let out = t.rcr("dump-link", &["dump", "-t", &pid.to_string(), "-D", link.to_str().unwrap()]);
    assert_refused("dump into a symlinked image dir", (out.status, out.stderr), &["symlink is not followed"]);
    assert_runs_free(pid, "after the refused dump");
    // Planted files are replaced, never written through.
    t.dump_ok(&[]);
    assert_eq!(fs::read_to_string(&precious).unwrap(), "precious\n", "a symlink in the image dir was followed");
    assert_modes(&t.images, 0);
    t.reap_victim();
    // Restore: a symlinked image file or directory is refused, nothing created.
    let core = t.images.join(format!("core-{pid}.img"));
    let saved = t.path("core-saved.img");
    fs::rename(&core, &saved).unwrap();
    std::os::unix::fs::symlink(&saved, &core).unwrap();
    let images = t.images.to_str().unwrap().to_string();
    let out = t.rcr("restore-symlink", &["restore", "-D", &images]);
    assert_refused("restore through a symlinked core image", (out.status, out.stderr), &[&format!("core-{pid}.img"), "symlink"]);
    assert!(!pid_exists(pid), "a refused restore created pid {pid}");
    let out = t.rcr("show-symlink", &["show", "-D", &images]);
    assert_refused("rcr show of a set with a symlinked core image", (out.status, out.stderr), &[&format!("core-{pid}.img"), "symlink"]);
    let out = t.rcr("restore-link", &["restore", "-D", link.to_str().unwrap()]);
    assert_refused("restore from a symlinked image dir", (out.status, out.stderr), &["symlink is not followed"]);
    fs::remove_file(&core).unwrap();
    fs::rename(&saved, &core).unwrap();
    t.restore(&[]);
    t.go_expect_pass();
}

#[test]
fn nonroot_dump_refused_with_reason() {
    let Some(mut t) = TestEnv::new("priv_dump_refused") else { return };
    let dir = nobody_dir(&t);
    // root's process: not nobody's to trace.
    let pid = t.spawn_victim("heap", &[], false);
    t.wait_ready();
    let mut c = as_user(NOBODY, Path::new(RCR));
    c.args(["dump", "-t", &pid.to_string(), "-D"]).arg(dir.join("a"));
    assert_refused("nobody dumping root's process", run(&t, "dump-root-victim", c), &[&format!("pid {pid} belongs to uid 0"), "uid 65534 may not trace it"]);
    assert_runs_free(pid, "after the refused dump");
    assert!(!dir.join("a").exists(), "a refused dump created its image dir");
}

#[test]
fn nonroot_dump_own_process() {
    let Some(mut t) = TestEnv::new("priv_dump_own") else { return };
    let dir = nobody_dir(&t);
    let pid = spawn_nobody_heap(&mut t);
    // Without CAP_CHECKPOINT_RESTORE: refused, naming it.
    let mut c = as_user(NOBODY, Path::new(RCR));
    c.args(["dump", "-t", &pid.to_string(), "-D"]).arg(dir.join("plain"));
    assert_refused("nobody dumping its own process without the capability", run(&t, "dump-nocap", c), &["CAP_CHECKPOINT_RESTORE", "map_files"]);
    assert_runs_free(pid, "after the refused dump");
    let Some(rcr_cr) = cap_copy(&t, Path::new(RCR), "rcr-cr", "cap_checkpoint_restore+ep") else { return };
    // A process of the same uid that is not dumpable, or has capabilities
    // rcr lacks (a file-capability program): refused, saying why.
    let fcap_heap = cap_copy(&t, &victim_path("heap"), "heap-fcap", "cap_net_bind_service+ep").unwrap();
    for (prog, name, want) in [(victim_path("nodump"), "nodump", "is not dumpable"), (fcap_heap, "heap-fcap", "has capabilities 0x400 that rcr lacks")] {
        let mut v = as_user(NOBODY, &prog);
        v.arg(t.path(&format!("go-{name}"))).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        prepare(&mut v, SpawnOpts::default());
        let mut child = v.spawn().unwrap();
        let vpid = child.id() as i32;
        wait_until(&format!("{name} to run"), || (status_field(vpid, "Name").as_deref() == Some(name)).then_some(()));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut c = as_user(NOBODY, &rcr_cr);
        c.args(["dump", "-t", &vpid.to_string(), "-D"]).arg(dir.join(name));
        let r = run(&t, &format!("dump-{name}"), c);
        let _ = child.kill();
        let _ = child.wait();
        assert_refused(&format!("nobody dumping {name}"), r, &[&format!("pid {vpid} {want}"), "uid 65534 may not trace it"]);
    }
    // With the capability on a copy of rcr: the dump works, images are nobody's.
    let images = dir.join("images");
    let mut c = as_user(NOBODY, &rcr_cr);
    c.args(["dump", "-t", &pid.to_string(), "-D"]).arg(&images);
    let (st, err) = run(&t, "dump-cap", c);
    assert!(st.success(), "nobody's dump with CAP_CHECKPOINT_RESTORE failed:\n{err}");
    assert_modes(&images, NOBODY);
    t.reap_victim();
    // Restore as nobody: without the capabilities refused, with them the
    // process comes back as nobody, without any capability.
    let pidfile = dir.join("pid");
    let restore = |prog: &Path| {
        let mut c = as_user(NOBODY, prog);
        c.args(["restore", "-d", "-D"]).arg(&images).arg("--pidfile").arg(&pidfile);
        c
    };
    assert_refused("nobody restoring without capabilities", run(&t, "restore-nocap", restore(Path::new(RCR))), &["lacks CAP_CHECKPOINT_RESTORE", "clone3 set_tid"]);
    assert_refused("nobody restoring with CAP_CHECKPOINT_RESTORE only", run(&t, "restore-cr", restore(&rcr_cr)), &["CAP_SETUID, CAP_SETGID, CAP_SETPCAP"]);
    assert!(!pid_exists(pid), "a refused restore created pid {pid}");
    let Some(rcr_all) = cap_copy(&t, Path::new(RCR), "rcr-all", "cap_checkpoint_restore,cap_setuid,cap_setgid,cap_setpcap+ep") else { return };
    let (st, err) = run(&t, "restore-caps", restore(&rcr_all));
    assert!(st.success(), "nobody's restore with the capabilities failed:\n{err}");
    assert_eq!(fs::read_to_string(&pidfile).unwrap().trim(), pid.to_string());
    t.pid = 0;
    t.track(&[pid]);
    assert_eq!(status_field(pid, "Uid").as_deref(), Some("65534\t65534\t65534\t65534"));
    for key in ["CapPrm", "CapEff", "CapInh", "CapAmb"] {
        assert_eq!(status_field(pid, key).as_deref(), Some("0000000000000000"), "{key} of the restored process");
    }
    t.go("");
    t.wait_log("PASS", |l| l == "PASS");
    assert_eq!(wait_pid_gone(pid, "the restored victim"), Some(0), "the restored victim's exit status");
    t.assert_log_pass(1);
}

/// Hand-edits the leader's credentials in the core image of `pid` in `dir`.
fn edit_creds(dir: &Path, pid: i32, f: impl Fn(&mut pb::Creds)) {
    let d = ImageDir::open(dir).unwrap();
    let mut core: pb::TaskCore = d.read_one(Kind::Core, Some(pid as u32)).unwrap();
    f(core.creds.as_mut().expect("creds in the core image"));
    d.write_one(Kind::Core, Some(pid as u32), &core).unwrap();
}

fn copy_set(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    fs::set_permissions(to, fs::Permissions::from_mode(0o700)).unwrap();
}

/// A hand-edit of the saved credentials.
type Edit = Box<dyn Fn(&mut pb::Creds)>;

#[test]
fn untrusted_image_set_bounded_by_owner() {
    let Some(mut t) = TestEnv::new("priv_untrusted") else { return };
    let pid = spawn_nobody_heap(&mut t);
    t.dump_ok(&[]);
    t.reap_victim();
    chown_tree(&t.images, NOBODY);
    let edits: [(&str, &str, Edit); 3] = [
        ("uid0", "creds.uids [0, 0, 0, 0]", Box::new(|c| c.uids = vec![0; 4])),
        ("caps", "creds.cap_prm 0x1ffffffffff", Box::new(|c| (c.cap_prm, c.cap_eff) = (ALL_CAPS, ALL_CAPS))),
        ("group0", "creds.groups has gid 0", Box::new(|c| c.groups = vec![0])),
    ];
    for (tag, field, edit) in edits {
        let dir = t.path(&format!("edited-{tag}"));
        copy_set(&t.images, &dir);
        edit_creds(&dir, pid, edit);
        chown_tree(&dir, NOBODY);
        let out = t.rcr(&format!("restore-{tag}"), &["restore", "-D", dir.to_str().unwrap()]);
        assert_refused(&format!("root restoring nobody's set edited to {field}"), (out.status, out.stderr), &[&format!("core-{pid}.img"), field, "uid 65534", "untrusted"]);
        assert!(!pid_exists(pid), "a refused restore created pid {pid}");
    }
    // A root-owned set that others may write is anyone's: refused.
    let dir = t.path("root-writable");
    copy_set(&t.images, &dir);
    chown_tree(&dir, 0);
    fs::set_permissions(dir.join(format!("core-{pid}.img")), fs::Permissions::from_mode(0o666)).unwrap();
    let out = t.rcr("restore-writable", &["restore", "-D", dir.to_str().unwrap()]);
    assert_refused("a root-owned set with a world-writable file", (out.status, out.stderr), &[&format!("core-{pid}.img is writable by group or others")]);
    // The legit set of nobody's process restores, as nobody.
    t.restore(&[]);
    assert_eq!(status_field(pid, "Uid").as_deref(), Some("65534\t65534\t65534\t65534"));
    assert_eq!(status_field(pid, "CapEff").as_deref(), Some("0000000000000000"));
    t.go_expect_pass();
}

#[test]
fn untrusted_image_set_files_opened_as_owner() {
    let Some(mut t) = TestEnv::new("priv_files_as_owner") else { return };
    // nobody's victim writes to a log only root may open (its fd was
    // inherited from root): a restore bounded by nobody cannot reopen it.
    fs::File::create(&t.log).unwrap();
    fs::set_permissions(&t.log, fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = as_user(NOBODY, &victim_path("heap"));
    cmd.arg(&t.go);
    let pid = t.spawn_command(cmd, false);
    t.wait_ready();
    t.dump_ok(&[]);
    t.reap_victim();
    let trusted = t.path("trusted");
    copy_set(&t.images, &trusted);
    chown_tree(&t.images, NOBODY);
    let images = t.images.to_str().unwrap().to_string();
    let out = t.rcr("restore-untrusted", &["restore", "-D", &images]);
    assert_refused("root restoring nobody's set holding root's file", (out.status, out.stderr), &["victim.log", "Permission denied"]);
    assert!(!pid_exists(pid), "a refused restore left pid {pid}");
    // The same images owned by root are trusted: the file opens.
    t.images = trusted;
    t.restore(&[]);
    t.go_expect_pass();
}

#[test]
fn root_dump_into_users_dir_restores_bounded() {
    let Some(mut t) = TestEnv::new("priv_users_dir") else { return };
    let pid = spawn_nobody_heap(&mut t);
    // An existing directory of nobody's, 0700: root's dump writes its
    // files there (root's, 0600); the set is then nobody's, bounded by
    // nobody on restore, and still restores (rcr reads its images as root).
    let images = nobody_dir(&t).join("images");
    fs::create_dir(&images).unwrap();
    fs::set_permissions(&images, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&images, Some(NOBODY), Some(NOBODY)).unwrap();
    t.images = images.clone();
    t.dump_ok(&[]);
    let md = fs::metadata(images.join(format!("pages-{pid}.img"))).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o7777), (0, 0o600), "owner and mode of the pages file");
    t.reap_victim();
    t.restore(&[]);
    assert_eq!(status_field(pid, "Uid").as_deref(), Some("65534\t65534\t65534\t65534"));
    t.go_expect_pass();
}
