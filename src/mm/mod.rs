//! Memory: VMAs, pages, mm_struct fields and the vDSO.
//!
//! Dump reads the layout from /proc/PID/smaps, the page state from
//! /proc/PID/pagemap and the page contents from the task. Restore turns the
//! images into the plan the restorer blob executes (`rcr_abi::VmaEntry`,
//! `rcr_abi::PageRun`).
pub mod dump;
pub mod restore;

use crate::images::pb::VmaKind;

pub const PROT_READ: u32 = 1;
pub const PROT_WRITE: u32 = 2;
pub const PROT_EXEC: u32 = 4;
pub const MAP_SHARED: u32 = 0x01;
pub const MAP_PRIVATE: u32 = 0x02;
pub const MAP_ANONYMOUS: u32 = 0x20;
pub const MAP_GROWSDOWN: u32 = 0x100;
pub const MAP_NORESERVE: u32 = 0x4000;

pub fn prot_string(prot: u32) -> String {
    let c = |b: u32, ch: char| if prot & b != 0 { ch } else { '-' };
    [c(PROT_READ, 'r'), c(PROT_WRITE, 'w'), c(PROT_EXEC, 'x')].iter().collect()
}

pub fn is_special(kind: VmaKind) -> bool {
    matches!(kind, VmaKind::VmaVdso | VmaKind::VmaVvar | VmaKind::VmaVvarVclock)
}
