//! The rt_sigframe the restorer blob returns through.
//!
//! rt_sigreturn(2) reads `struct rt_sigframe` at `rsp - 8` (the handler's
//! `ret` popped `pretcode`):
//!
//! ```text
//! +0    pretcode            u64 (unused here)
//! +8    struct ucontext     uc_flags, uc_link, uc_stack (24 bytes),
//!                           uc_mcontext (struct sigcontext, 256 bytes),
//!                           uc_sigmask (8 bytes)            = 304 bytes
//! +312  struct siginfo      128 bytes (unused here)
//! ...   XSAVE area          64-byte aligned, uc_mcontext.fpstate points here;
//!                           sw_reserved holds the _fpx_sw_bytes, and
//!                           FP_XSTATE_MAGIC2 follows the area
//! ```
use crate::images::pb;
use anyhow::{bail, Result};

const UC_FP_XSTATE: u64 = 0x1;
const UC_SIGCONTEXT_SS: u64 = 0x2;
const UC_STRICT_RESTORE_SS: u64 = 0x4;
const SS_DISABLE: u32 = 2;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
const USER_CS: u64 = 0x33;
const USER_DS: u64 = 0x2b;

const UC_OFFSET: usize = 8;
/// Offset of `uc.uc_stack` (ss_sp, ss_flags, ss_size) in the frame.
pub const UC_STACK_OFFSET: usize = UC_OFFSET + 16;
const MCONTEXT_OFFSET: usize = UC_OFFSET + 40;
const SIGMASK_OFFSET: usize = MCONTEXT_OFFSET + 256;
const FRAME_FIXED: usize = 8 + 304 + 128;

/// Bytes a sigframe for an XSAVE area of `xsave_len` bytes needs.
pub fn frame_size(xsave_len: usize) -> usize {
    align64(FRAME_FIXED) + xsave_len + 4
}

fn align64(x: usize) -> usize {
    (x + 63) & !63
}

fn put(buf: &mut [u8], off: usize, v: u64) {
    buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn put32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// The alternate signal stack rt_sigreturn installs (`stack_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AltStack {
    pub sp: u64,
    pub flags: u32,
    pub size: u64,
}

impl AltStack {
    pub const NONE: AltStack = AltStack { sp: 0, flags: SS_DISABLE, size: 0 };
    /// Leaves the task's alternate stack as it is: rt_sigreturn ignores
    /// the error an invalid mode (SS_ONSTACK | SS_DISABLE) gives.
    pub const UNCHANGED: AltStack = AltStack { sp: 0, flags: 3, size: 0 };
}

/// Builds the frame into `buf`, which will live at address `at` (64-byte
/// aligned) in the restored task. `xcr0` is this CPU's enabled feature set.
pub fn build(buf: &mut [u8], at: u64, regs: &pb::X86Regs, xsave: &[u8], blocked: u64, altstack: AltStack, xcr0: u64) -> Result<()> {
    if !at.is_multiple_of(64) {
        bail!("sigframe address {at:#x} is not 64-byte aligned");
    }
    if buf.len() < frame_size(xsave.len()) {
        bail!("sigframe buffer too small");
    }
    buf.fill(0);
    put(buf, UC_OFFSET, UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS);
    put(buf, UC_STACK_OFFSET, altstack.sp);
    put32(buf, UC_STACK_OFFSET + 8, altstack.flags);
    put(buf, UC_STACK_OFFSET + 16, altstack.size);

    let gp = [
        regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15, regs.rdi, regs.rsi, regs.rbp,
        regs.rbx, regs.rdx, regs.rax, regs.rcx, regs.rsp, regs.rip, regs.eflags,
    ];
    for (i, v) in gp.iter().enumerate() {
        put(buf, MCONTEXT_OFFSET + i * 8, *v);
    }
    // cs, gs, fs, ss: 16 bits each.
    let seg = MCONTEXT_OFFSET + 18 * 8;
    buf[seg..seg + 2].copy_from_slice(&(USER_CS as u16).to_le_bytes());
    buf[seg + 6..seg + 8].copy_from_slice(&(USER_DS as u16).to_le_bytes());
    // err, trapno, oldmask, cr2 stay 0; fpstate follows them.
    let fp_off = align64(FRAME_FIXED);
    put(buf, MCONTEXT_OFFSET + 18 * 8 + 8 + 32, at + fp_off as u64);
    put(buf, SIGMASK_OFFSET, blocked);

    let (xsave, features) = for_sigreturn(xsave, xcr0, super::xsave_default_size(xcr0));
    let fp = &mut buf[fp_off..fp_off + xsave.len() + 4];
    fp[..xsave.len()].copy_from_slice(xsave);
    // _fpx_sw_bytes: magic1, extended_size, xfeatures, xstate_size.
    let sw = super::FX_SW_OFFSET;
    fp[sw..sw + 48].fill(0);
    put32(fp, sw, FP_XSTATE_MAGIC1);
    put32(fp, sw + 4, (xsave.len() + 4) as u32);
    put(fp, sw + 8, features);
    put32(fp, sw + 16, xsave.len() as u32);
    put32(fp, xsave.len(), FP_XSTATE_MAGIC2);
    Ok(())
}

/// The part of `xsave` the frame carries, and the components it declares.
/// Unless AMX tile data is live in it, the area is cut to `default_size`
/// (see [`super::XFEATURE_TILEDATA`]): a task that never used AMX (the
/// cured target, every freshly restored one) rejects a longer area, and
/// rt_sigreturn would then quietly load x87/SSE state only, zeroing the
/// upper halves of ymm/zmm.
fn for_sigreturn(xsave: &[u8], xcr0: u64, default_size: usize) -> (&[u8], u64) {
    if super::tile_data_live(xsave) {
        return (xsave, xcr0);
    }
    (&xsave[..xsave.len().min(default_size)], xcr0 & !super::XFEATURE_TILEDATA)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_registers_and_fpstate() {
        let regs = pb::X86Regs { rip: 0x1111, rsp: 0x2222, rax: 7, r8: 8, ..Default::default() };
        let xsave = vec![0xabu8; 1024];
        let mut buf = vec![0u8; frame_size(xsave.len())];
        build(&mut buf, 0x10000, &regs, &xsave, 0x5, AltStack::NONE, 0x7).unwrap();
        let rd = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
        assert_eq!(rd(MCONTEXT_OFFSET), 8); // r8 first
        assert_eq!(rd(MCONTEXT_OFFSET + 16 * 8), 0x1111); // rip
        assert_eq!(rd(MCONTEXT_OFFSET + 15 * 8), 0x2222); // rsp
        assert_eq!(rd(SIGMASK_OFFSET), 0x5);
        let fp = rd(MCONTEXT_OFFSET + 184) as usize - 0x10000;
        assert_eq!(fp % 64, 0);
        assert_eq!(u32::from_le_bytes(buf[fp + 464..fp + 468].try_into().unwrap()), FP_XSTATE_MAGIC1);
        // x87 | SSE | AVX: the area is cut to the end of AVX state (CPUID).
        let end = super::super::xsave_size_for(0x7);
        assert_eq!(u32::from_le_bytes(buf[fp + end..fp + end + 4].try_into().unwrap()), FP_XSTATE_MAGIC2);
        assert_eq!(u32::from_le_bytes(buf[fp + 464 + 16..fp + 464 + 20].try_into().unwrap()) as usize, end);
    }

    #[test]
    fn area_cut_unless_tile_data_is_live() {
        let tile = super::super::XFEATURE_TILEDATA;
        let mut xsave = vec![0u8; 11008];
        xsave[512] = 0xe7; // xstate_bv: x87, SSE, AVX, AVX-512
        assert_eq!(for_sigreturn(&xsave, 0x600e7, 2816), (&xsave[..2816], 0x200e7));
        xsave[512 + 2] = 0x04; // bit 18: tile data live
        assert_eq!(for_sigreturn(&xsave, 0x600e7 | tile, 2816), (&xsave[..], 0x600e7));
    }
}
