//! # rcr: checkpoint/restore for Linux processes
//!
//! ## Architecture
//!
//! ```text
//!            dump                                         restore
//!  +-------------------------+                 +-------------------------------+
//!  | dump::run               |                 | restore::run                  |
//!  |  1 seize    (infect/)   |   image set     |  1 load + validate images     |
//!  |  2 inject the parasite  | --------------> |  2 fork with the saved PID    |
//!  |  3 per resource dump    |  images/ + pb   |  3 per resource restore       |
//!  |    mm::dump, files::dump|  (proto/)       |    files::restore, mm::plan   |
//!  |  4 drain pages, write   |                 |  4 jump into the restorer blob|
//!  |  5 cure; kill or resume |                 |  5 finish from outside, detach|
//!  +-------------------------+                 +-------------------------------+
//! ```
//!
//! * [`dump`] and [`restore`] are the two pipelines; each is a short list of
//!   named steps. They hold no resource logic themselves.
//! * [`infect`] is everything done to a live task through ptrace: seize and
//!   interrupt, registers and XSAVE, remote syscalls, detach, and the
//!   parasite ([`infect::parasite`]): the `parasite/` blob injected into the
//!   task, which serves commands over a unix socket (drain pages into the
//!   image, read signal actions, itimers, per-task values, pass fds) and
//!   rt_sigreturns into the saved state when rcr closes the socket, or
//!   when rcr dies.
//! * [`images`] is the on-disk format: framing, the generated protobuf
//!   types ([`images::pb`], from `proto/rcr.proto`), the pages file.
//!   `images-format.md` specifies it for outside readers.
//! * One module per kind of resource, each with its dump and restore side
//!   by side: [`mm`] (VMAs, pages, mm fields, vDSO), [`files`] (fds, cwd,
//!   root).
//! * [`proc`] parses /proc; [`arch`] holds what is x86-64 specific:
//!   register layouts, the XSAVE area, the rt_sigframe, syscall restart.
//! * The two blobs, restorer (`restorer-blob/`) and parasite (`parasite/`),
//!   are `#![no_std]` position independent binaries built by `build.rs` and
//!   embedded here ([`blobs`]); the ABI they share with the host (argument
//!   structs, the parasite protocol, raw syscalls, the linker script)
//!   lives in the `rcr-abi` crate (`abi/`).
//! * [`fault`] numbers the places where the tests kill rcr mid-dump.
//!
//! ## Restore in one paragraph
//!
//! `rcr restore` forks a child with the saved PID (clone3 `set_tid`). The
//! child reopens the files at their fd numbers, opens the files the VMAs
//! map, then jumps into the restorer blob, copied into a bootstrap region
//! that overlaps neither rcr's current mappings nor the saved ones. The
//! blob parks the vDSO, unmaps everything else, maps the saved VMAs and
//! reads their pages in, moves the vDSO to its saved place, sets the mm
//! fields and TLS, stops at an `int3` for the tracing parent, and calls
//! rt_sigreturn on a frame holding the saved registers and XSAVE area. The
//! parent catches the exit of that rt_sigreturn, unmaps the bootstrap
//! region with one injected syscall, puts the saved registers back and
//! detaches: nothing of rcr is left in the process.
//!
//! ## Unsafe code
//!
//! Only [`infect`], [`arch`], [`sys`] and the restore child and bootstrap
//! region ([`restore::child`], [`restore::bootstrap`], plus the clone3 call
//! in [`restore`]) contain `unsafe`; each block states its invariant.
#![deny(unsafe_code)]

pub mod arch;
pub mod blobs;
pub mod check;
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
pub mod sys;
pub mod tree;
