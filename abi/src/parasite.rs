//! The parasite's region and command protocol.
//!
//! The dumper maps a shared region into the target (MAP_SHARED anonymous
//! memory, which it also maps itself through /proc/PID/map_files), laid
//! out as
//!
//! ```text
//! | parasite code | ParasiteArgs | cure sigframe | stack | data area |
//! ^ region start                                          region end ^
//! ```
//!
//! and points the target's registers at the code with `rdi` = the args.
//! The parasite connects to the dumper's abstract unix socket named in the
//! args, then serves commands: the dumper sends a [`Command`], the
//! parasite answers with a [`Reply`]. Bulk data (page runs, signal
//! actions, fd lists...) goes through the data area of the shared region,
//! never through the socket; the socket carries only the fixed-size
//! messages and, for fd commands, SCM_RIGHTS.
//!
//! When the dumper closes the socket, or sends [`Cmd::Fini`], or any step
//! of connecting fails, the parasite cures the task itself: it closes what
//! it opened, fills the sigframe's alternate-stack field and calls
//! rt_sigreturn on the frame the dumper built from the saved registers.
//! So a dumper killed at any moment leaves the task running as before.

/// `ParasiteArgs::magic`.
pub const PARASITE_ARGS_MAGIC: u64 = 0x7263_722d_7061_7231; // "rcr-par1"

/// Size of the parasite's stack in the region.
pub const PARASITE_STACK: u64 = 64 * 1024;
/// Size of the data area at the end of the region.
pub const PARASITE_DATA: u64 = 1024 * 1024;

/// Written by the dumper before the parasite starts. Addresses are the
/// target's.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ParasiteArgs {
    /// Initial stack pointer; the entry loads it first.
    pub stack_top: u64,
    pub magic: u64,
    /// The rt_sigframe (its `pretcode` slot) holding the saved state.
    pub sigframe: u64,
    /// Byte offset of `uc_stack` in that frame, filled at cure time.
    pub sigframe_uc_stack: u64,
    pub data: u64,
    pub data_len: u64,
    /// sockaddr_un length and bytes (abstract name: sun_path[0] == 0).
    pub addr_len: u32,
    /// Tests only (RCR_TEST_CONNECT_DELAY_MS): milliseconds the parasite
    /// sleeps before it connects, so a test can catch rcr waiting; 0.
    pub connect_delay_ms: u32,
    pub addr: [u8; 110],
    pub _pad2: [u8; 2],
}

/// Commands. The reply's `status` is 0 or a negative errno.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    /// Per-task values /proc does not show: a [`TaskMisc`] in the data area.
    Misc = 1,
    /// All 64 signal actions: `[KSigaction; 64]` in the data area, signal
    /// n at index n-1.
    Sigactions = 2,
    /// The three itimers (real, virtual, prof): `[ITimerVal; 3]`.
    Itimers = 3,
    /// Receive one fd over the socket (SCM_RIGHTS); `value[0]` = its number
    /// in the task.
    RecvFd = 4,
    /// Send the `arg[0]` fds whose numbers are `i32`s in the data area back
    /// over the socket in one SCM_RIGHTS message (at most [`MAX_SEND_FDS`]).
    SendFds = 5,
    /// Write `arg[1]` runs ([`DrainRun`] in the data area) of the task's
    /// memory into fd `arg[0]` at their file offsets (pwrite). On failure
    /// `value[0]` is the index of the failing run. With
    /// [`DRAIN_SKIP_ZERO`] in `arg[2]`, pages that are all zero are left
    /// out: the others go back to back from the first run's `file_off`,
    /// and bit k (in u64 words, after the runs, at u64 index 3 * `arg[1]`)
    /// is set when the batch's k-th page was zero. `value[2]` = bytes
    /// written.
    DrainWrite = 6,
    /// vmsplice `arg[1]` runs into the pipe `arg[0]`, in order; the dumper
    /// drains the pipe meanwhile. On failure `value[0]` is the run index.
    DrainSplice = 7,
    /// Close fd `arg[0]` in the task.
    CloseFd = 8,
    /// Reply, then cure.
    Fini = 9,
    /// POSIX timers: the data area holds `arg[0]` [`PosixTimerState`]
    /// with `id` set; the parasite fills in the rest of each
    /// (timer_gettime, timer_getoverrun). `value[0]` is what
    /// prctl(PR_TIMER_CREATE_RESTORE_IDS, GET) returned (negative errno if
    /// the kernel lacks it). On failure `value[1]` is the failing index.
    Timers = 10,
    /// Two lists of runs written at once by two threads: the parasite
    /// clones a second thread into the task (sharing its memory and fds,
    /// every signal blocked, on a stack made of the last
    /// [`DRAIN_PAIR_STACK`] bytes of the data area) that pwrites list 1
    /// into fd `arg[1]` while the parasite pwrites list 0 into fd `arg[0]`;
    /// the second thread has exited before the reply (if the clone fails,
    /// the parasite writes list 1 itself, after list 0). Each list's pages
    /// go back to back from its first run's `file_off`. `arg[2]`: flags
    /// ([`DRAIN_SKIP_ZERO`]). Data area, in u64 words: `n0`, `n1`, then
    /// `n0` and `n1` [`DrainRun`]s, then the zero-page bitmap of list 0
    /// (one bit per page, in whole words), then that of list 1. `value[0]`
    /// and `value[1]`: bytes written into each file; on failure `value` is
    /// the list, the run index and the bytes of it done.
    DrainPair = 11,
}

impl Cmd {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Misc,
            2 => Self::Sigactions,
            3 => Self::Itimers,
            4 => Self::RecvFd,
            5 => Self::SendFds,
            6 => Self::DrainWrite,
            7 => Self::DrainSplice,
            8 => Self::CloseFd,
            9 => Self::Fini,
            10 => Self::Timers,
            11 => Self::DrainPair,
            _ => return None,
        })
    }
}

/// Most fds one [`Cmd::SendFds`] carries.
pub const MAX_SEND_FDS: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Command {
    pub cmd: u32,
    pub _pad: u32,
    pub arg: [u64; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Reply {
    pub cmd: u32,
    pub status: i32,
    pub value: [u64; 3],
}

/// Sent by the parasite right after it connects (`cmd` 0), with its tid
/// in `value[0]` and its socket's fd number in `value[1]`.
pub const HELLO: u32 = 0;

/// The kernel's `struct sigaction` for rt_sigaction(2) on x86-64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// `struct itimerval`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ITimerVal {
    pub interval_sec: i64,
    pub interval_usec: i64,
    pub value_sec: i64,
    pub value_usec: i64,
}

/// Per-task values read from inside the task.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskMisc {
    pub tid_address: u64,
    pub brk: u64,
    pub altstack_sp: u64,
    pub altstack_size: u64,
    pub timerslack_ns: u64,
    pub altstack_flags: i32,
    pub umask: u32,
    pub personality: u32,
    pub dumpable: i32,
    pub pdeathsig: i32,
    pub child_subreaper: i32,
    pub thp_disable: i32,
    pub no_new_privs: i32,
    /// Signals pending when the parasite started (rt_sigpending).
    pub pending: u64,
    pub tid: i32,
    pub _pad: u32,
    /// XSAVE components the process may use (arch_prctl
    /// ARCH_GET_XCOMP_PERM); 0 where the kernel does not say.
    pub xcomp_perm: u64,
}

/// [`Cmd::DrainWrite`] flag: leave out all-zero pages.
pub const DRAIN_SKIP_ZERO: u64 = 1;

/// The end of the data area that is the second thread's stack during a
/// [`Cmd::DrainPair`].
pub const DRAIN_PAIR_STACK: u64 = 16 * 1024;

/// One run of memory to drain: `len` bytes at `vaddr`, to file offset
/// `file_off` (ignored for vmsplice).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DrainRun {
    pub vaddr: u64,
    pub len: u64,
    pub file_off: u64,
}

/// One POSIX timer as [`Cmd::Timers`] reads it: `struct itimerspec`
/// (interval, then value) and the overrun count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PosixTimerState {
    pub id: i32,
    pub overrun: i32,
    pub interval_sec: i64,
    pub interval_nsec: i64,
    pub value_sec: i64,
    pub value_nsec: i64,
}

assert_layout!(PosixTimerState, size = 40, id = 0, overrun = 4, interval_sec = 8, value_sec = 24);
assert_layout!(
    ParasiteArgs,
    size = 168,
    stack_top = 0,
    magic = 8,
    sigframe = 16,
    sigframe_uc_stack = 24,
    data = 32,
    data_len = 40,
    addr_len = 48,
    connect_delay_ms = 52,
    addr = 56,
);
assert_layout!(Command, size = 32, cmd = 0, arg = 8);
assert_layout!(Reply, size = 32, cmd = 0, status = 4, value = 8);
assert_layout!(KSigaction, size = 32, handler = 0, flags = 8, restorer = 16, mask = 24);
assert_layout!(ITimerVal, size = 32, interval_sec = 0, value_sec = 16);
assert_layout!(
    TaskMisc,
    size = 96,
    tid_address = 0,
    brk = 8,
    altstack_sp = 16,
    altstack_size = 24,
    timerslack_ns = 32,
    altstack_flags = 40,
    umask = 44,
    personality = 48,
    dumpable = 52,
    pdeathsig = 56,
    child_subreaper = 60,
    thp_disable = 64,
    no_new_privs = 68,
    pending = 72,
    tid = 80,
    xcomp_perm = 88,
);
assert_layout!(DrainRun, size = 24, vaddr = 0, len = 8, file_off = 16);
