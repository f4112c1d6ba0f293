//! Restore side of memory: turns the mm and pagemap images into the plan
//! the restorer blob executes, and checks it against this machine.
use super::*;
use crate::files::FileTable;
use crate::images::pages::run_offsets;
use crate::images::pb::{Mm, PagemapEntry, Vma};
use crate::images::PAGE_SIZE;
use crate::proc::MapEntry;
use anyhow::{bail, Context, Result};
use rcr_abi::{PageRun, PrctlMmMap, SpecialMapping, VmaEntry, AUXV_WORDS, NR_SPECIAL, SPECIAL_VDSO, SPECIAL_VVAR, SPECIAL_VVAR_VCLOCK, TASK_SIZE};

/// The memory part of a restore, computed before forking.
#[derive(Debug)]
pub struct Plan {
    pub vmas: Vec<VmaEntry>,
    /// files.img id of each VMA's file (0 for none), parallel to `vmas`.
    pub vma_files: Vec<u32>,
    /// Saved inode of each shared anonymous VMA's memory object (0 for
    /// others), parallel to `vmas`: such VMAs map the object rcr recreates.
    pub vma_shmem: Vec<u64>,
    /// memfiles.img id of each VMA of a memfd or deleted file (0 for
    /// others), parallel to `vmas`: such VMAs map the inode rcr recreates.
    pub vma_mem: Vec<u32>,
    pub runs: Vec<PageRun>,
    pub special: [SpecialMapping; NR_SPECIAL],
    pub mm_map: PrctlMmMap,
    pub auxv: [u64; AUXV_WORDS],
    pub exe_file_id: u32,
}

impl Plan {
    /// Pages the restore reads into place (all runs).
    pub fn nr_pages(&self) -> u64 {
        self.runs.iter().map(|r| r.nr_pages).sum()
    }
}

fn special_index(kind: VmaKind) -> Option<usize> {
    match kind {
        VmaKind::VmaVvar => Some(SPECIAL_VVAR),
        VmaKind::VmaVvarVclock => Some(SPECIAL_VVAR_VCLOCK),
        VmaKind::VmaVdso => Some(SPECIAL_VDSO),
        _ => None,
    }
}

const SPECIAL_NAMES: [&str; NR_SPECIAL] = ["[vvar]", "[vvar_vclock]", "[vdso]"];

pub fn plan(mm: &Mm, pagemap: &[PagemapEntry], files: &FileTable, self_maps: &[MapEntry]) -> Result<Plan> {
    let mut vmas = Vec::new();
    let mut vma_files = Vec::new();
    let mut vma_shmem = Vec::new();
    let mut vma_mem = Vec::new();
    let mut special = [SpecialMapping::default(); NR_SPECIAL];
    check_sorted(&mm.vmas)?;
    for (i, v) in mm.vmas.iter().enumerate() {
        let kind = VmaKind::try_from(v.kind).map_err(|_| anyhow::anyhow!("mm image: vma {i} has unknown kind {}", v.kind))?;
        if let Some(s) = special_index(kind) {
            special[s].target = v.start;
            special[s].len = v.end - v.start;
            continue;
        }
        if matches!(kind, VmaKind::VmaFilePrivate | VmaKind::VmaFileShared) && v.mem_file_id == 0 {
            let f = files.get(v.file_id).with_context(|| format!("mm image: vma {i} ({:#x}) refers to unknown file id {}", v.start, v.file_id))?;
            use crate::files::reg::{check, Content};
            let content = if kind == VmaKind::VmaFilePrivate { Content::Unchanged } else { Content::MayChange };
            check(&format!("mapping {:#x}-{:#x}", v.start, v.end), f, content)?;
        }
        let has_pages = pagemap.iter().any(|p| p.vaddr < v.end && p.vaddr + u64::from(p.nr_pages) * PAGE_SIZE > v.start);
        let map_prot = if has_pages { v.prot | PROT_WRITE | PROT_READ } else { v.prot };
        let shmem = kind == VmaKind::VmaAnonShared;
        vmas.push(VmaEntry {
            start: v.start,
            len: v.end - v.start,
            pgoff: v.pgoff,
            map_prot,
            final_prot: v.prot,
            flags: if shmem { v.flags & !MAP_ANONYMOUS } else { v.flags },
            fd: -1,
            madvise: madvise_bits(&v.vm_flags),
            _pad: 0,
        });
        vma_files.push(v.file_id);
        vma_shmem.push(if shmem { v.inode.max(1) } else { 0 });
        vma_mem.push(v.mem_file_id);
    }
    for (s, name) in SPECIAL_NAMES.iter().enumerate() {
        let cur = self_maps.iter().find(|m| m.name == *name);
        match (cur, special[s].len) {
            (Some(c), len) if len == 0 || c.end - c.start == len => {
                special[s].cur = c.start;
                special[s].len = c.end - c.start;
            }
            (Some(c), len) => bail!(
                "mm image: the saved {name} is {len} bytes but this kernel's is {}; the images come from an incompatible kernel",
                c.end - c.start
            ),
            (None, 0) => {}
            (None, _) => bail!("mm image: the process had a {name} mapping but this kernel provides none"),
        }
    }
    let offsets = run_offsets(pagemap);
    let runs = pagemap
        .iter()
        .zip(offsets)
        .map(|(p, off)| PageRun { vaddr: p.vaddr, nr_pages: u64::from(p.nr_pages), file_off: off, part: u64::from(p.part) })
        .collect::<Vec<_>>();
    check_runs(&runs, &vmas)?;
    let mut auxv = [0u64; AUXV_WORDS];
    if mm.auxv.len() > AUXV_WORDS {
        bail!("mm image: auxv has {} words, at most {} supported", mm.auxv.len(), AUXV_WORDS);
    }
    auxv[..mm.auxv.len()].copy_from_slice(&mm.auxv);
    let mm_map = PrctlMmMap {
        start_code: mm.start_code,
        end_code: mm.end_code,
        start_data: mm.start_data,
        end_data: mm.end_data,
        start_brk: mm.start_brk,
        brk: mm.brk,
        start_stack: mm.start_stack,
        arg_start: mm.arg_start,
        arg_end: mm.arg_end,
        env_start: mm.env_start,
        env_end: mm.env_end,
        auxv: 0, // set when the plan is placed in the bootstrap region
        auxv_size: (mm.auxv.len() * 8) as u32,
        exe_fd: u32::MAX,
    };
    if files.get(mm.exe_file_id).is_none() {
        bail!("mm image: exe_file_id {} is not in files.img", mm.exe_file_id);
    }
    Ok(Plan { vmas, vma_files, vma_shmem, vma_mem, runs, special, mm_map, auxv, exe_file_id: mm.exe_file_id })
}

/// The [`rcr_abi::MADV_BITS`] of a VMA, from its smaps VmFlags.
fn madvise_bits(vm_flags: &[String]) -> u32 {
    const NAMES: [&str; 5] = ["nh", "hg", "dd", "dc", "wf"];
    NAMES.iter().enumerate().filter(|(_, n)| vm_flags.iter().any(|f| f == *n)).fold(0, |m, (i, _)| m | 1 << i)
}

fn check_sorted(vmas: &[Vma]) -> Result<()> {
    for (i, v) in vmas.iter().enumerate() {
        if v.start >= v.end || v.start % PAGE_SIZE != 0 || v.end % PAGE_SIZE != 0 || v.end > TASK_SIZE {
            bail!("mm image: vma {i} has a bad range {:#x}-{:#x}", v.start, v.end);
        }
        if i > 0 && vmas[i - 1].end > v.start {
            bail!("mm image: vma {i} ({:#x}) overlaps or precedes vma {}", v.start, i - 1);
        }
    }
    Ok(())
}

/// Every saved page must fall inside a VMA the restorer maps writable.
fn check_runs(runs: &[PageRun], vmas: &[VmaEntry]) -> Result<()> {
    for (i, r) in runs.iter().enumerate() {
        let end = r.vaddr + r.nr_pages * PAGE_SIZE;
        let mut a = r.vaddr;
        while a < end {
            let v = vmas
                .iter()
                .find(|v| v.start <= a && a < v.start + v.len)
                .with_context(|| format!("pagemap image: entry {i} ({:#x}) lies outside every VMA", r.vaddr))?;
            a = (v.start + v.len).min(end);
        }
    }
    Ok(())
}

/// Address ranges the plan will occupy (to keep the bootstrap region out).
pub fn occupied(mm: &Mm) -> Vec<(u64, u64)> {
    mm.vmas.iter().map(|v| (v.start, v.end)).collect()
}
