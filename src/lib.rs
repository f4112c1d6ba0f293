//! # rcr: checkpoint/restore for Linux processes
//!
//! ## Architecture
//!
//! ```text
//!            dump                                         restore
//!  +-------------------------+                 +-------------------------------+
//!  | dump::run               |                 | restore::run                  |
//!  |  1 freeze the tree      |   image set     |  1 load + validate images     |
//!  |    (tree::dump, infect/)| --------------> |  2 create shared objects, fork|
//!  |  2 per process: inject  |  images/ + pb   |    the tree with saved PIDs   |
//!  |    the parasite, dump   |  (proto/)       |  3 per resource restore       |
//!  |    mm, files, threads   |                 |    files::restore, mm::plan   |
//!  |  3 drain pages, cure    |                 |  4 blob: memory, threads      |
//!  |  4 kill or resume tree  |                 |  5 supervise: release, detach |
//!  +-------------------------+                 +-------------------------------+
//! ```
//!
//! * [`dump`] and [`restore`] are the two pipelines; each is a short list of
//!   named steps. They hold no resource logic themselves.
//! * [`infect`] is everything done to a live task through ptrace: seize and
//!   interrupt, registers and XSAVE, remote syscalls, detach, and the
//!   parasite ([`infect::parasite`]): the `parasite/` blob injected into the
//!   task, which serves commands over a unix socket (drain pages into the
//!   image, read signal actions, itimers, POSIX timers, per-task values,
//!   pass fds) and rt_sigreturns into the saved state when rcr closes the
//!   socket, or when rcr dies.
//! * [`images`] is the on-disk format: framing, the generated protobuf
//!   types ([`images::pb`], from `proto/rcr.proto`), the pages file, and
//!   its zstd-compressed form ([`images::compress`], `dump --compress`).
//!   `images-format.md` specifies it for outside readers.
//! * One module per kind of resource, each with its dump and restore side
//!   by side: [`mm`] (VMAs, pages, mm fields, vDSO), [`files`] (fds and
//!   the open file descriptions behind them, shared across fds and
//!   processes, one module per kind of file; cwd, root; TCP and UDP in
//!   [`files::inet`], with TCP_REPAIR and an nftables network lock), [`tree`] (which
//!   processes, their parent links, sessions and groups: freezing on dump,
//!   forking on restore), [`timers`] (POSIX timers), [`creds`]
//!   (credentials, seccomp, scheduling, limits: applied last, by the blob).
//!   [`creds::trust`] decides who may dump what and how far an image set
//!   is trusted (a non-root caller, a set not owned by root: bounded).
//! * [`proc`] parses /proc; [`arch`] holds what is x86-64 specific:
//!   register layouts, the XSAVE area, the rt_sigframe, syscall restart.
//! * The two blobs, restorer (`restorer-blob/`) and parasite (`parasite/`),
//!   are `#![no_std]` position independent binaries built by `build.rs` and
//!   embedded here ([`blobs`]); the ABI they share with the host (argument
//!   structs, the parasite protocol, raw syscalls, the linker script)
//!   lives in the `rcr-abi` crate (`abi/`).
//! * Shell jobs (`-j`, [`files::tty::shell`]): a tree on a terminal outside
//!   it is restored onto rcr's terminal, as its foreground job.
//! * [`fault`] numbers the places where the tests kill rcr mid-dump.
//!
//! ## Restore in one paragraph
//!
//! `rcr restore` creates what processes share (every open file
//! description, shared memory), then
//! forks the root with its saved PID (clone3 `set_tid`); each process forks
//! its own children the same way, so all inherit those objects, and rcr
//! traces every one from birth ([`restore::supervise`]). After two
//! barriers (all forked; all in their sessions and groups) zombies die with
//! their status and every other process reopens its files at their fd
//! numbers, opens the files its VMAs map, then jumps into the restorer
//! blob, copied into a bootstrap region that overlaps neither rcr's
//! mappings nor the saved ones. The blob parks the vDSO, unmaps everything
//! else, maps the saved VMAs and reads their pages in (from 16 MiB of
//! pages with a second, short-lived "page reader" thread under a TID rcr
//! picked, which reads the second half and exits before the blob goes
//! on; rcr reaps it), moves the vDSO to
//! its saved place, sets the mm fields and TLS, recreates the other threads
//! with their TIDs, sets the resource limits, stops at an `int3`, and once
//! rcr has seen every blob report, takes on its saved scheduling,
//! credentials and seccomp filters and rt_sigreturns on a frame holding the
//! saved registers and XSAVE area, as each thread does on its own (rcr
//! keeps seccomp suspended for its tracees until it detaches). rcr catches every rt_sigreturn's
//! exit, unmaps the bootstrap regions with one injected syscall each, sets
//! the saved masks and detaches: nothing of rcr is left in the tree.
//!
//! ## Unsafe code
//!
//! Only [`infect`], [`arch`], [`sys`] and the restore child and bootstrap
//! region ([`restore::child`], [`restore::bootstrap`], plus the clone3 calls
//! in [`restore`] and [`tree::restore`]) contain `unsafe`; each block states
//! its invariant.
#![deny(unsafe_code)]

pub mod arch;
pub mod blobs;
pub mod check;
pub mod creds;
pub mod dump;
pub mod fault;
pub mod files;
pub mod images;
pub mod infect;
pub mod log;
pub mod mm;
pub mod proc;
pub mod restore;
pub mod show;
pub mod stats;
pub mod sys;
pub mod timers;
pub mod tree;
