//! The ABI shared by the rcr host and its position-independent blobs.
//!
//! Everything here is `#[repr(C)]` with fixed-width fields only, and every
//! struct carries compile-time size and offset assertions: the host and a
//! blob are compiled separately (the blob for a freestanding environment),
//! so a layout change must break the build, not the restored process.
//!
//! The restorer bootstrap region, mapped by the host where no saved VMA
//! lies, is laid out as
//!
//! ```text
//! | restorer code | RestoreArgs | VmaEntry[] | PageRun[] | sigframe | stack | vDSO park |
//! ^ region start                                                               region end ^
//! ```
//!
//! The host fills everything but the code from the images; the blob reads
//! it, rebuilds the address space around the region, and rt_sigreturns into
//! the saved registers. The host then unmaps the region from outside.
#![no_std]

/// `RestoreArgs::magic`: guards against a host/blob mismatch.
pub const RESTORE_ARGS_MAGIC: u64 = 0x7263_722d_7273_7431; // "rcr-rst1"

/// rax of the `int3` each thread other than the leader stops at right
/// before its rt_sigreturn (after go and its credentials): the host then
/// steps it through rt_sigreturn. Threads run untraced-for-syscalls until
/// there, so a restore costs a few stops per thread, not one per syscall.
pub const THREAD_RETURN_MAGIC: u64 = 0x7263_722d_7468_7264; // "rcr-thrd"

/// Highest user address on x86-64 with 4-level paging (TASK_SIZE_MAX).
pub const TASK_SIZE: u64 = 0x0000_7fff_ffff_f000;

/// Words of auxv the host may pass (pairs of type/value, AT_NULL included).
pub const AUXV_WORDS: usize = 128;

/// One VMA the restorer maps. `fd` is an fd the host opened in the
/// restored task for file-backed VMAs, or -1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VmaEntry {
    pub start: u64,
    pub len: u64,
    /// File offset in bytes (page aligned).
    pub pgoff: u64,
    /// Protection to map with (the final one, plus PROT_WRITE while the
    /// restorer still has pages to copy in).
    pub map_prot: u32,
    /// Protection the VMA ends up with.
    pub final_prot: u32,
    /// mmap flags (MAP_PRIVATE/MAP_SHARED/MAP_ANONYMOUS/MAP_GROWSDOWN);
    /// the blob adds MAP_FIXED_NOREPLACE.
    pub flags: u32,
    pub fd: i32,
    /// madvise(2) advice the VMA had ([`MADV_BITS`]), applied after its
    /// pages are in.
    pub madvise: u32,
    pub _pad: u32,
}

/// Bits of [`VmaEntry::madvise`], in order, and the advice each stands
/// for: MADV_NOHUGEPAGE, MADV_HUGEPAGE, MADV_DONTDUMP, MADV_DONTFORK,
/// MADV_WIPEONFORK (smaps VmFlags nh, hg, dd, dc, wf).
pub const MADV_BITS: [u64; 5] = [15, 14, 16, 10, 18];

/// A run of saved pages: `nr_pages` pages at `vaddr`, stored in pages
/// file `part` (0: `RestoreArgs::pages_fd`, 1: `pages_fd1`) at byte
/// offset `file_off`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PageRun {
    pub vaddr: u64,
    pub nr_pages: u64,
    pub file_off: u64,
    pub part: u64,
}

/// One of the three kernel-provided mappings ([vvar], [vvar_vclock],
/// [vdso]). The blob moves each from `cur` to `park` before unmapping the
/// old address space, and from `park` to `target` at the end. `len` 0
/// means the mapping does not exist.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SpecialMapping {
    pub cur: u64,
    pub park: u64,
    pub target: u64,
    pub len: u64,
}

pub const SPECIAL_VVAR: usize = 0;
pub const SPECIAL_VVAR_VCLOCK: usize = 1;
pub const SPECIAL_VDSO: usize = 2;
pub const NR_SPECIAL: usize = 3;

/// The kernel's `struct prctl_mm_map` (include/uapi/linux/prctl.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PrctlMmMap {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: u64,
    pub auxv_size: u32,
    pub exe_fd: u32,
}

/// Arguments of the restorer blob, at a fixed place in the bootstrap
/// region. Pointers are absolute addresses inside the region.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RestoreArgs {
    /// Initial stack pointer of the blob; the entry loads it first.
    pub stack_top: u64,
    pub magic: u64,
    /// The bootstrap region, which the blob must not unmap.
    pub region_start: u64,
    pub region_len: u64,
    pub vmas: u64,
    pub nr_vmas: u64,
    pub page_runs: u64,
    pub nr_page_runs: u64,
    /// Where the host built the rt_sigframe (the address of its
    /// `pretcode` slot); the blob sets rsp to `sigframe + 8` and calls
    /// rt_sigreturn.
    pub sigframe: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub special: [SpecialMapping; NR_SPECIAL],
    pub mm_map: PrctlMmMap,
    pub auxv: [u64; AUXV_WORDS],
    pub pages_fd: i32,
    pub exe_fd: i32,
    /// The task's rseq registration (rseq(2)), re-registered by the blob
    /// once memory is back; `rseq_len` 0 means none.
    pub rseq_ptr: u64,
    pub rseq_len: u32,
    pub rseq_sig: u32,
    /// set_tid_address(2) value (clear_child_tid), 0 to leave as is.
    pub tid_address: u64,
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF, armed last of all.
    pub itimers: [parasite::ITimerVal; 3],
    /// The leader's robust futex list (set_robust_list(2)); length 0
    /// leaves it unset.
    pub robust_list: u64,
    pub robust_list_len: u64,
    /// The other threads: `nr_threads` [`ThreadArgs`], created by the blob
    /// once memory is back.
    pub threads: u64,
    pub nr_threads: u64,
    /// Signals pending for one of those threads only: `nr_pending`
    /// [`PendingSig`], queued by the blob after creating them.
    pub pending: u64,
    pub nr_pending: u64,
    /// Futex words: threads count themselves in `ready`, then wait for
    /// `go`, which the leader sets after its report to the host.
    pub ready: u32,
    pub go: u32,
    /// POSIX timers: `nr_timers` [`PosixTimerArgs`], created with their
    /// ids once the threads exist and armed next to the itimers.
    pub timers: u64,
    pub nr_timers: u64,
    /// prctl(PR_TIMER_CREATE_RESTORE_IDS) mode to leave the process in.
    pub timer_restore_ids: u64,
    /// Resource limits, set by the leader once its threads exist:
    /// `rlimits[r]` for each resource r whose bit is set in `rlimits_set`.
    pub rlimits: [Rlimit; NR_RLIMITS],
    pub rlimits_set: u32,
    /// PR_SET_DUMPABLE and PR_SET_PDEATHSIG values, set again by the
    /// leader after the credentials (a credential change resets both);
    /// -1: leave as is.
    pub dumpable: i32,
    pub pdeathsig: i32,
    /// Futex word: threads count themselves here once their credentials
    /// are in place; the leader waits for all before its own.
    pub creds_done: u32,
    /// The leader's own credentials and scheduling.
    pub creds: ThreadCreds,
    /// The second pages file (runs of part 1), -1 if none.
    pub pages_fd1: i32,
    pub _pad_pages: u32,
    /// The page reader thread (see [`PageReader`]); `reader.from` 0: none.
    pub reader: PageReader,
}

/// A helper thread that reads the second half of the pages while the
/// leader reads the first: bytes [`from`, end) of the runs laid end to
/// end. The host plans it only for processes with enough pages.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PageReader {
    /// Ready for clone3: CLONE_THREAD and friends, CLONE_CHILD_CLEARTID on
    /// `alive`, its stack in the region, `set_tid` pointing at `tid`.
    pub clone: CloneArgs,
    /// The TID the host picked: free at plan time and none of the image
    /// set's; clone3 fails (EEXIST) if someone took it since.
    pub tid: i32,
    /// Futex word, nonzero until the kernel clears it at the thread's exit
    /// (CLONE_CHILD_CLEARTID); the leader waits for 0 before going on.
    pub alive: u32,
    /// Byte offset in the concatenated runs where the thread starts.
    pub from: u64,
    /// 0, or the thread's -errno; `run` is then the failing run's index.
    pub result: i64,
    pub run: i64,
    /// Set by the leader: the TID when the thread ran, or clone3's -errno
    /// when it read everything itself; 0: no thread planned.
    pub outcome: i64,
}

/// Number of RLIMIT_* resources (RLIM_NLIMITS).
pub const NR_RLIMITS: usize = 16;

/// `struct rlimit64`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Rlimit {
    pub cur: u64,
    pub max: u64,
}

/// One classic-BPF seccomp filter for seccomp(SECCOMP_SET_MODE_FILTER):
/// `nr_insns` `struct sock_filter` at `insns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SeccompFilter {
    pub insns: u64,
    pub nr_insns: u32,
    pub flags: u32,
}

/// Scheduling, credentials, no_new_privs and seccomp of one thread, which
/// the blob applies in that thread last (see restorer-blob/src/creds.rs).
/// Pointers are region addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadCreds {
    /// 0: leave the credentials as inherited from rcr (older images).
    pub valid: u32,
    pub securebits: u32,
    /// real, effective, saved, fs.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    /// `nr_groups` u32 supplementary groups.
    pub groups: u64,
    pub nr_groups: u64,
    pub cap_eff: u64,
    pub cap_prm: u64,
    pub cap_inh: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: u32,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp_mode: u32,
    /// `nr_filters` [`SeccompFilter`], oldest first.
    pub filters: u64,
    pub nr_filters: u64,
    /// 0: leave scheduling as inherited.
    pub sched_valid: u32,
    /// Policy, with SCHED_RESET_ON_FORK (0x40000000) if set.
    pub sched_policy: u32,
    pub sched_priority: u32,
    pub nice: i32,
    /// CPU mask of `affinity_len` bytes; 0: leave as inherited.
    pub affinity: u64,
    pub affinity_len: u64,
}

/// clone3(2)'s `struct clone_args`, up to `set_tid_size`
/// (CLONE_ARGS_SIZE_VER1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
}

/// One thread the blob creates (every thread but the leader). The host
/// fills everything; the thread writes `result`/`step` if its setup fails.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadArgs {
    /// Ready for clone3: CLONE_THREAD and friends, the thread's stack in
    /// the region, its fs base as TLS, `set_tid` pointing at `tid`.
    pub clone: CloneArgs,
    pub tid: i32,
    /// 1: AMX tile data is live in the thread's saved state; the blob
    /// calls [`grow_for_tile_data`] in the thread before rt_sigreturn.
    pub tile_data: u32,
    /// The thread's rt_sigframe (address of its `pretcode` slot).
    pub sigframe: u64,
    pub gs_base: u64,
    pub rseq_ptr: u64,
    pub rseq_len: u32,
    pub rseq_sig: u32,
    pub tid_address: u64,
    pub robust_list: u64,
    pub robust_list_len: u64,
    /// Thread name (PR_SET_NAME), NUL padded.
    pub comm: [u8; 16],
    pub result: i64,
    pub step: u64,
    /// The process's [`RestoreArgs`] (for the futex words).
    pub restore_args: u64,
    /// The thread's own credentials and scheduling.
    pub creds: ThreadCreds,
}

/// One POSIX timer for the blob: timer_create(clock, &sigevent, &id) with
/// PR_TIMER_CREATE_RESTORE_IDS on, then timer_settime(id, 0, &spec).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PosixTimerArgs {
    pub id: i32,
    pub clock: i32,
    /// The kernel's `struct sigevent` (64 bytes on x86-64): value,
    /// signo, notify, then the tid for SIGEV_THREAD_ID.
    pub sigev_value: u64,
    pub sigev_signo: i32,
    pub sigev_notify: i32,
    pub sigev_tid: i32,
    pub _sigev_pad: [u32; 11],
    /// `struct itimerspec`: interval, then value (relative).
    pub interval_sec: i64,
    pub interval_nsec: i64,
    pub value_sec: i64,
    pub value_nsec: i64,
}

/// A signal to queue for one thread (rt_tgsigqueueinfo(2)).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingSig {
    pub tid: i32,
    pub signo: i32,
    pub siginfo: [u8; 128],
}

/// Set in the reported item index when a thread other than the leader
/// failed: the low bits are then the thread's index in the ThreadArgs.
pub const THREAD_INDEX: u64 = 1 << 32;

/// Bit where a credential step's item (resource, capability, filter
/// number) starts in the reported index, above [`THREAD_INDEX`] and the
/// thread's number.
pub const ITEM_SHIFT: u64 = 40;

/// Steps the blob reports on failure (in `rdi` at its final `int3`, with
/// the negative errno in `rax` and the item index in `rsi`).
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreStep {
    BadArgs = 1,
    ParkSpecial = 2,
    UnmapOld = 3,
    MapVma = 4,
    ReadPages = 5,
    Protect = 6,
    PlaceSpecial = 7,
    SetMm = 8,
    SetTls = 9,
    CloseFds = 10,
    Rseq = 11,
    Itimers = 12,
    RobustList = 13,
    SpawnThread = 14,
    ThreadName = 15,
    QueueSignal = 16,
    Madvise = 17,
    TimerRestoreIds = 50,
    TimerCreate = 51,
    TimerArm = 52,
    Sched = 30,
    Nice = 31,
    Affinity = 32,
    Securebits = 33,
    Capabilities = 34,
    Groups = 35,
    Gids = 36,
    Uids = 37,
    Ambient = 38,
    Bounding = 39,
    NoNewPrivs = 40,
    Seccomp = 41,
    Rlimit = 42,
    Dumpable = 43,
    PdeathSig = 44,
}

impl RestoreStep {
    pub fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            1 => Self::BadArgs,
            2 => Self::ParkSpecial,
            3 => Self::UnmapOld,
            4 => Self::MapVma,
            5 => Self::ReadPages,
            6 => Self::Protect,
            7 => Self::PlaceSpecial,
            8 => Self::SetMm,
            9 => Self::SetTls,
            10 => Self::CloseFds,
            11 => Self::Rseq,
            12 => Self::Itimers,
            13 => Self::RobustList,
            14 => Self::SpawnThread,
            15 => Self::ThreadName,
            16 => Self::QueueSignal,
            17 => Self::Madvise,
            50 => Self::TimerRestoreIds,
            51 => Self::TimerCreate,
            52 => Self::TimerArm,
            30 => Self::Sched,
            31 => Self::Nice,
            32 => Self::Affinity,
            33 => Self::Securebits,
            34 => Self::Capabilities,
            35 => Self::Groups,
            36 => Self::Gids,
            37 => Self::Uids,
            38 => Self::Ambient,
            39 => Self::Bounding,
            40 => Self::NoNewPrivs,
            41 => Self::Seccomp,
            42 => Self::Rlimit,
            43 => Self::Dumpable,
            44 => Self::PdeathSig,
            _ => return None,
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::BadArgs => "checking its arguments",
            Self::ParkSpecial => "parking the vDSO/vvar mappings",
            Self::UnmapOld => "unmapping the old address space",
            Self::MapVma => "mapping VMA",
            Self::ReadPages => "reading pages of run",
            Self::Protect => "setting the protection of VMA",
            Self::PlaceSpecial => "moving vDSO/vvar mapping",
            Self::SetMm => "PR_SET_MM_MAP",
            Self::SetTls => "setting fs/gs base",
            Self::CloseFds => "closing its helper fds",
            Self::Rseq => "registering rseq",
            Self::Itimers => "arming itimer",
            Self::RobustList => "setting the robust futex list",
            Self::SpawnThread => "creating thread",
            Self::ThreadName => "naming thread",
            Self::QueueSignal => "queueing pending signal",
            Self::Madvise => "applying the madvise flags of VMA",
            Self::TimerRestoreIds => "setting PR_TIMER_CREATE_RESTORE_IDS",
            Self::TimerCreate => "creating POSIX timer",
            Self::TimerArm => "arming POSIX timer",
            Self::Sched => "setting the scheduling policy (sched_setscheduler)",
            Self::Nice => "setting the nice value (setpriority)",
            Self::Affinity => "setting the CPU affinity (sched_setaffinity)",
            Self::Securebits => "setting the securebits (PR_SET_SECUREBITS)",
            Self::Capabilities => "setting the capability sets (capset)",
            Self::Groups => "setting the supplementary groups (setgroups)",
            Self::Gids => "setting the gids (setresgid/setfsgid)",
            Self::Uids => "setting the uids (setresuid/setfsuid)",
            Self::Ambient => "raising ambient capability",
            Self::Bounding => "dropping from the bounding set capability",
            Self::NoNewPrivs => "setting no_new_privs",
            Self::Seccomp => "installing seccomp filter",
            Self::Rlimit => "setting resource limit",
            Self::Dumpable => "setting the dumpable flag",
            Self::PdeathSig => "setting the parent-death signal",
        }
    }
}

macro_rules! assert_layout {
    ($t:ty, size = $size:expr, $($field:ident = $off:expr),* $(,)?) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
        $(const _: () = assert!(core::mem::offset_of!($t, $field) == $off);)*
    };
}

assert_layout!(VmaEntry, size = 48, start = 0, len = 8, pgoff = 16, map_prot = 24, final_prot = 28, flags = 32, fd = 36, madvise = 40);
assert_layout!(PageRun, size = 32, vaddr = 0, nr_pages = 8, file_off = 16, part = 24);
assert_layout!(SpecialMapping, size = 32, cur = 0, park = 8, target = 16, len = 24);
assert_layout!(PrctlMmMap, size = 104, auxv = 88, auxv_size = 96, exe_fd = 100);
assert_layout!(
    RestoreArgs,
    size = 88 + 96 + 104 + 1024 + 8 + 16 + 8 + 96 + 56 + 24 + 256 + 16 + 152 + 8 + 120,
    stack_top = 0,
    magic = 8,
    region_start = 16,
    sigframe = 64,
    special = 88,
    mm_map = 184,
    auxv = 288,
    pages_fd = 1312,
    exe_fd = 1316,
    rseq_ptr = 1320,
    rseq_len = 1328,
    rseq_sig = 1332,
    tid_address = 1336,
    itimers = 1344,
    robust_list = 1440,
    threads = 1456,
    pending = 1472,
    ready = 1488,
    go = 1492,
    timers = 1496,
    nr_timers = 1504,
    timer_restore_ids = 1512,
    rlimits = 1520,
    rlimits_set = 1776,
    dumpable = 1780,
    pdeathsig = 1784,
    creds_done = 1788,
    creds = 1792,
    pages_fd1 = 1944,
    reader = 1952,
);
assert_layout!(PageReader, size = 120, clone = 0, tid = 80, alive = 84, from = 88, result = 96, run = 104, outcome = 112);
assert_layout!(Rlimit, size = 16, cur = 0, max = 8);
assert_layout!(SeccompFilter, size = 16, insns = 0, nr_insns = 8, flags = 12);
assert_layout!(
    ThreadCreds,
    size = 152,
    valid = 0,
    securebits = 4,
    uids = 8,
    gids = 24,
    groups = 40,
    nr_groups = 48,
    cap_eff = 56,
    cap_amb = 88,
    no_new_privs = 96,
    seccomp_mode = 100,
    filters = 104,
    nr_filters = 112,
    sched_valid = 120,
    nice = 132,
    affinity = 136,
    affinity_len = 144,
);
assert_layout!(CloneArgs, size = 80, flags = 0, exit_signal = 32, stack = 40, tls = 56, set_tid = 64, set_tid_size = 72);
assert_layout!(ThreadArgs, size = 336, creds = 184, clone = 0, tid = 80, sigframe = 88, gs_base = 96, rseq_ptr = 104, tid_address = 120, robust_list = 128, comm = 144, result = 160, step = 168, restore_args = 176);
assert_layout!(PosixTimerArgs, size = 104, id = 0, clock = 4, sigev_value = 8, sigev_signo = 16, sigev_notify = 20, sigev_tid = 24, interval_sec = 72, value_sec = 88);
assert_layout!(PendingSig, size = 136, tid = 0, signo = 4, siginfo = 8);

/// arch_prctl: the XSAVE components the process may use (a u64 bitmap);
/// the parasite reads it.
pub const ARCH_GET_XCOMP_PERM: u64 = 0x1022;
/// arch_prctl: ask for one dynamic XSAVE component (by number); the
/// restore asks again for what the dumped process had.
pub const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;

/// Gives the calling thread room for AMX tile data in its kernel FPU
/// state. A thread that has not touched its tiles has none, and
/// rt_sigreturn then refuses a frame that holds tile data (it loads x87
/// and SSE state alone); its first tile instruction faults once (XFD) and
/// the kernel grows the state. This loads a one-row configuration, zeroes
/// tile 0, and releases the tiles (back to their initial state). Used by
/// the restore for every thread whose saved tile data is live.
///
/// # Safety
///
/// The process must have the permission (arch_prctl ARCH_REQ_XCOMP_PERM
/// for component 18): without it the tile instruction is a SIGILL. The
/// caller's tile registers are lost (rt_sigreturn loads the saved ones).
#[inline(always)]
pub unsafe fn grow_for_tile_data() {
    let mut cfg = [0u8; 64];
    cfg[0] = 1; // palette 1
    cfg[16] = 64; // colsb[0]: 64 bytes per row
    cfg[48] = 1; // rows[0]: one row
    // SAFETY: (for the caller) see above; `cfg` is a live 64-byte tile
    // configuration on this stack, read once.
    unsafe {
        core::arch::asm!(
            "ldtilecfg [{cfg}]",
            "tilezero tmm0",
            "tilerelease",
            cfg = in(reg) cfg.as_ptr(),
            options(nostack, preserves_flags),
        );
    }
}

pub mod parasite;
#[cfg(feature = "blob-sys")]
pub mod sys;
