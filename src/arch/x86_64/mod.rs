//! x86-64: general registers, the XSAVE area, syscall restart, and the
//! rt_sigframe the restorer returns through.
use crate::images::pb;
use anyhow::{bail, Result};

pub mod sigframe;

/// Syscall number of restart_syscall(2).
pub const NR_RESTART_SYSCALL: u64 = 219;
pub const NR_BRK: u64 = 12;

// Kernel-internal errors a task stopped inside a syscall may show in rax
// (include/linux/errno.h); they never reach user space.
const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

/// Byte offset of `sw_reserved` in the legacy FXSAVE part of XSAVE.
pub const FX_SW_OFFSET: usize = 464;
/// Byte offset of the XSAVE header (xstate_bv first).
pub const XSAVE_HEADER_OFFSET: usize = 512;

pub fn regs_to_pb(r: &libc::user_regs_struct) -> pb::X86Regs {
    pb::X86Regs {
        r15: r.r15, r14: r.r14, r13: r.r13, r12: r.r12, rbp: r.rbp, rbx: r.rbx,
        r11: r.r11, r10: r.r10, r9: r.r9, r8: r.r8, rax: r.rax, rcx: r.rcx,
        rdx: r.rdx, rsi: r.rsi, rdi: r.rdi, orig_rax: r.orig_rax, rip: r.rip,
        cs: r.cs, eflags: r.eflags, rsp: r.rsp, ss: r.ss, fs_base: r.fs_base,
        gs_base: r.gs_base, ds: r.ds, es: r.es, fs: r.fs, gs: r.gs,
    }
}

/// Where registers prepared by [`prepare_restart`] will be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// In the same task (the parasite's cure): its restart block is intact.
    SameTask,
    /// In a restored process, which has no restart block.
    NewTask,
}

/// Rewrites registers saved inside an interrupted syscall into the state
/// the task must resume in, as the kernel would on signal return:
/// restartable syscalls are rerun (rip back over the 2-byte `syscall`,
/// rax = the syscall number). A syscall with a restart block (nanosleep and
/// friends) continues through restart_syscall(2) in the same task; a new
/// process has no restart block, so there it returns -EINTR.
/// Returns (syscall, original result) for the record, syscall -1 if none.
pub fn prepare_restart(r: &mut pb::X86Regs, resume: Resume) -> (i64, i64) {
    let nr = r.orig_rax as i64;
    if nr < 0 {
        return (-1, 0);
    }
    let res = r.rax as i64;
    match -res {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            r.rax = r.orig_rax;
            r.rip -= 2;
        }
        ERESTART_RESTARTBLOCK if resume == Resume::SameTask => {
            r.rax = NR_RESTART_SYSCALL;
            r.rip -= 2;
        }
        ERESTART_RESTARTBLOCK => r.rax = (-(libc::EINTR as i64)) as u64,
        _ => {}
    }
    (nr, res)
}

/// XCR0 of this CPU: the XSAVE features the OS enabled.
pub fn xcr0() -> u64 {
    // SAFETY: cpuid leaf 1 is always available on x86-64; xgetbv is only
    // executed when CPUID says the OS enabled XSAVE (OSXSAVE, ecx bit 27),
    // so it cannot fault.
    unsafe {
        let leaf1 = core::arch::x86_64::__cpuid(1);
        if leaf1.ecx & (1 << 27) == 0 {
            return 0;
        }
        core::arch::x86_64::_xgetbv(0)
    }
}

/// XSAVE component 18, AMX tile data: the one "dynamic" user component.
/// A task gets room for it only after asking for it (arch_prctl
/// ARCH_REQ_XCOMP_PERM) and then using it once; until then the kernel
/// takes from a signal frame only the area up to the other components
/// ([`xsave_default_size`]), and falls back to x87/SSE state alone for a
/// longer one.
pub const XFEATURE_TILEDATA: u64 = 1 << 18;

/// The dynamic components a process must ask for (ARCH_REQ_XCOMP_PERM).
pub const XFEATURE_DYNAMIC: u64 = XFEATURE_TILEDATA;

/// True if AMX tile data is live in an XSAVE area (not in its initial
/// state): restoring it needs the permission and a thread whose kernel
/// FPU state has room for it ([`rcr_abi::grow_for_tile_data`]).
pub fn tile_data_live(xsave: &[u8]) -> bool {
    xstate_bv(xsave) & XFEATURE_TILEDATA != 0
}

/// Refuses a thread with live tile data in a process without the
/// permission to use it (`xcomp_dynamic`): it could not be loaded back.
pub fn check_tile_data_permitted(xsave: &[u8], xcomp_dynamic: u64) -> Result<()> {
    if tile_data_live(xsave) && xcomp_dynamic & XFEATURE_TILEDATA == 0 {
        bail!("xsave holds live AMX tile data but field xcomp_dynamic {xcomp_dynamic:#x} lacks the permission for it (bit 18)");
    }
    Ok(())
}

/// Refuses dynamic components this rcr does not know or this CPU lacks.
pub fn check_xcomp_dynamic(features: u64) -> Result<()> {
    let bad = features & !(XFEATURE_DYNAMIC & xcr0());
    if bad != 0 {
        bail!("field xcomp_dynamic {features:#x}: {} cannot be asked for on this CPU (XCR0 {:#x})", xsave_feature_names(bad), xcr0());
    }
    Ok(())
}

/// Makes the calling process (a restored one, before the blob runs) able
/// to take back `xsave` through rt_sigreturn: asks for the dynamic
/// components it had ([`request_xcomp`]) and, if its tile data is live,
/// grows this thread's FPU state for it.
pub fn prepare_xstate(xcomp_dynamic: u64, xsave: &[u8]) -> Result<()> {
    check_tile_data_permitted(xsave, xcomp_dynamic)?;
    request_xcomp(xcomp_dynamic)?;
    if tile_data_live(xsave) {
        // SAFETY: the permission for tile data was just granted
        // (request_xcomp, for the bit checked above); this thread's tile
        // registers hold nothing of the restored process.
        unsafe { rcr_abi::grow_for_tile_data() };
    }
    Ok(())
}

/// Asks for each dynamic XSAVE component in `features` for the calling
/// process (arch_prctl ARCH_REQ_XCOMP_PERM), as the dumped one had.
fn request_xcomp(features: u64) -> Result<()> {
    for bit in (0..64).filter(|b| features & (1u64 << b) != 0) {
        // SAFETY: arch_prctl with integer arguments only.
        let r = unsafe { libc::syscall(libc::SYS_arch_prctl, rcr_abi::ARCH_REQ_XCOMP_PERM, bit as u64) };
        if r != 0 {
            bail!("asking for XSAVE component {bit} ({}) with arch_prctl(ARCH_REQ_XCOMP_PERM): {}", xsave_feature_names(1 << bit), std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The size of a standard-format XSAVE area that holds the components in
/// `features`: the end of the last one (CPUID leaf 0xD gives each user
/// component's size and offset), at least the legacy area and header.
pub fn xsave_size_for(features: u64) -> usize {
    // Each component's end, read once (CPUID traps to the hypervisor in
    // a VM, and every signal frame rcr builds asks).
    static ENDS: std::sync::OnceLock<[usize; 64]> = std::sync::OnceLock::new();
    let ends = ENDS.get_or_init(|| {
        let mut ends = [0; 64];
        for (i, end) in ends.iter_mut().enumerate().take(63).skip(2) {
            // Leaf 0xD is there whenever XCR0 has a bit above SSE set.
            let l = core::arch::x86_64::__cpuid_count(0xd, i as u32);
            *end = l.ebx as usize + l.eax as usize;
        }
        ends
    });
    (2..63).filter(|i| features & (1u64 << i) != 0).map(|i| ends[i]).fold(XSAVE_HEADER_OFFSET + 64, usize::max)
}

/// What every task of this CPU may hand rt_sigreturn: the XSAVE area of
/// the components in `xcr0` but the dynamic one.
pub fn xsave_default_size(xcr0: u64) -> usize {
    xsave_size_for(xcr0 & !XFEATURE_TILEDATA)
}

/// xstate_bv from an XSAVE area (the components it holds).
pub fn xstate_bv(xsave: &[u8]) -> u64 {
    xsave
        .get(XSAVE_HEADER_OFFSET..XSAVE_HEADER_OFFSET + 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        .unwrap_or(0)
}

/// Names of the XSAVE state components (bit n of XCR0 / xstate_bv).
const XSAVE_FEATURES: [&str; 20] = [
    "x87", "SSE", "AVX", "MPX BNDREGS", "MPX BNDCSR", "AVX-512 opmask", "AVX-512 ZMM_Hi256", "AVX-512 Hi16_ZMM", "PT", "PKRU", "PASID", "CET_U",
    "CET_S", "HDC", "UINTR", "LBR", "HWP", "AMX TILECFG", "AMX TILEDATA", "APX",
];

/// The names of the components in `bits`, e.g. "AVX-512 opmask, PKRU".
pub fn xsave_feature_names(bits: u64) -> String {
    (0..64).filter(|b| bits & (1 << b) != 0).map(|b| XSAVE_FEATURES.get(b).map_or(format!("component {b}"), |n| n.to_string())).collect::<Vec<_>>().join(", ")
}

/// Checks that an XSAVE area dumped elsewhere can be loaded here.
pub fn check_xsave_compatible(xsave: &[u8], host_xsave_size: usize) -> Result<()> {
    let need = xstate_bv(xsave);
    let have = xcr0();
    if need & !have != 0 {
        bail!(
            "xsave holds CPU state this CPU does not enable: {} (xstate_bv {:#x}, this CPU's XCR0 {:#x})",
            xsave_feature_names(need & !have),
            need,
            have
        );
    }
    if xsave.len() > host_xsave_size || xsave.len() < XSAVE_HEADER_OFFSET + 64 {
        bail!("xsave area of {} bytes does not fit this CPU ({} bytes)", xsave.len(), host_xsave_size);
    }
    Ok(())
}
