//! The parasite blob: position-independent, no libc, no panics.
//!
//! The dumper points a seized task's registers at `__rcr_blob_entry`
//! with `rdi` = [`ParasiteArgs`] in the shared region (layout and protocol:
//! `rcr_abi::parasite`). The parasite connects to the dumper's socket and
//! serves [`Command`]s until the dumper says [`Cmd::Fini`] or the socket
//! closes; then, or if anything before that fails, it cures the task:
//! closes every fd it opened, records the task's alternate signal stack in
//! the cure sigframe, swallows a SIGPIPE its own writes may have raised,
//! and calls rt_sigreturn on the frame the dumper built from the task's
//! saved registers. The task carries on where it was stopped; only the
//! region itself stays mapped until the dumper unmaps it.
//!
//! Errors are answered as negative errno in [`Reply::status`].
#![no_std]
#![no_main]

rcr_abi::blob_mem_functions!();

use rcr_abi::parasite::{
    Cmd, Command, DrainRun, ITimerVal, KSigaction, ParasiteArgs, Reply, TaskMisc, HELLO, MAX_SEND_FDS,
    PARASITE_ARGS_MAGIC,
};
use rcr_abi::sys::{self, CmsgHdr, IoVec, MsgHdr};

rcr_abi::blob_entry!(parasite_main);

mod timers;

const AF_UNIX: u64 = 1;
const SOCK_SEQPACKET: u64 = 5;
const SOCK_CLOEXEC: u64 = 0x80000;
const MSG_NOSIGNAL: u64 = 0x4000;
const MSG_CMSG_CLOEXEC: u64 = 0x4000_0000;
const SIGPIPE: u64 = 13;
const EINVAL: i64 = 22;
const EIO: i64 = 5;
const EPROTO: i64 = 71;
const PR_GET_PDEATHSIG: u64 = 2;
const PR_GET_DUMPABLE: u64 = 3;
const PR_GET_TIMERSLACK: u64 = 30;
const PR_GET_CHILD_SUBREAPER: u64 = 37;
const PR_GET_NO_NEW_PRIVS: u64 = 39;
const PR_GET_TID_ADDRESS: u64 = 40;
const PR_GET_THP_DISABLE: u64 = 42;

/// Fds the parasite received and must close before it leaves.
const MAX_HELD: usize = 8;

struct State {
    sock: i32,
    held: [i32; MAX_HELD],
    pending_at_start: u64,
}

extern "C" fn parasite_main(args: *const ParasiteArgs) -> ! {
    // SAFETY: the dumper wrote a ParasiteArgs at `args`, inside the region
    // that stays mapped until after the parasite has returned.
    let a = unsafe { &*args };
    let mut st = State { sock: -1, held: [-1; MAX_HELD], pending_at_start: 0 };
    if a.magic == PARASITE_ARGS_MAGIC {
        serve(a, &mut st);
    }
    cure(a, &st)
}

fn serve(a: &ParasiteArgs, st: &mut State) {
    let mut pending = 0u64;
    if sys::syscall2(sys::NR_RT_SIGPENDING, &mut pending as *mut u64 as u64, 8) == 0 {
        st.pending_at_start = pending;
    }
    let sock = sys::syscall3(sys::NR_SOCKET, AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if sock < 0 {
        return;
    }
    st.sock = sock as i32;
    if a.connect_delay_ms != 0 {
        let ms = a.connect_delay_ms as u64;
        let ts = [ms / 1000, ms % 1000 * 1_000_000];
        sys::syscall2(sys::NR_NANOSLEEP, ts.as_ptr() as u64, 0);
    }
    if sys::syscall3(sys::NR_CONNECT, sock as u64, a.addr.as_ptr() as u64, a.addr_len as u64) < 0 {
        return;
    }
    let hello = Reply { cmd: HELLO, status: 0, value: [sys::syscall0(sys::NR_GETTID) as u64, sock as u64, 0] };
    if send_reply(st.sock, &hello, &[]) < 0 {
        return;
    }
    loop {
        let mut c = Command::default();
        let n = recv(st.sock, &mut c as *mut Command as u64, core::mem::size_of::<Command>() as u64, None);
        if n != core::mem::size_of::<Command>() as i64 {
            return; // EOF (the dumper is done or gone) or a broken message
        }
        let mut reply = Reply { cmd: c.cmd, status: 0, value: [0; 3] };
        let cmd = Cmd::from_u32(c.cmd);
        let mut fds: &[i32] = &[];
        let status = match cmd {
            Some(Cmd::Misc) => misc(a, st),
            Some(Cmd::Sigactions) => sigactions(a),
            Some(Cmd::Itimers) => itimers(a),
            Some(Cmd::RecvFd) => recv_fd(st, &mut reply),
            Some(Cmd::SendFds) => match fd_list(a, c.arg[0]) {
                Some(list) => {
                    fds = list;
                    0
                }
                None => -EINVAL,
            },
            Some(Cmd::DrainWrite) if c.arg[2] & rcr_abi::parasite::DRAIN_SKIP_ZERO != 0 => drain_skip_zero(a, &c, &mut reply),
            Some(Cmd::DrainWrite) => drain(a, &c, &mut reply, false),
            Some(Cmd::DrainSplice) => drain(a, &c, &mut reply, true),
            Some(Cmd::DrainPair) => drain_pair(a, &c, &mut reply),
            Some(Cmd::CloseFd) => close_fd(st, c.arg[0] as i32),
            Some(Cmd::Fini) => 0,
            Some(Cmd::Timers) => timers::read(a, &c, &mut reply),
            None => -EINVAL,
        };
        reply.status = status as i32;
        if send_reply(st.sock, &reply, fds) < 0 || cmd == Some(Cmd::Fini) {
            return;
        }
    }
}

/// Returns the task to the state saved in the cure sigframe. Never returns.
fn cure(a: &ParasiteArgs, st: &State) -> ! {
    if st.sock >= 0 {
        sys::close(st.sock);
    }
    for fd in st.held {
        if fd >= 0 {
            sys::close(fd);
        }
    }
    // The frame's uc_stack is what rt_sigreturn sets the alternate signal
    // stack to: keep the task's own.
    sys::syscall2(sys::NR_SIGALTSTACK, 0, a.sigframe + a.sigframe_uc_stack);
    // A write into a pipe whose reader (the dumper) died raised SIGPIPE;
    // it is blocked while the parasite runs, and must not reach the task.
    let pipe_bit = 1u64 << (SIGPIPE - 1);
    if st.pending_at_start & pipe_bit == 0 {
        let zero = [0u64; 2];
        for _ in 0..4 {
            let r = sys::syscall4(sys::NR_RT_SIGTIMEDWAIT, &pipe_bit as *const u64 as u64, 0, zero.as_ptr() as u64, 8);
            if r != SIGPIPE as i64 {
                break;
            }
        }
    }
    // SAFETY: the dumper built a complete rt_sigframe at `a.sigframe`;
    // rt_sigreturn replaces every register, so nothing of this stack is
    // used after. A direct jump to a hidden label stays PC-relative.
    unsafe {
        core::arch::asm!("jmp __rcr_sigreturn", in("rdi") a.sigframe + 8, options(noreturn));
    }
}

fn data<T>(a: &ParasiteArgs, count: usize) -> Option<&'static mut [T]> {
    let bytes = count.checked_mul(core::mem::size_of::<T>())?;
    if bytes as u64 > a.data_len || !a.data.is_multiple_of(core::mem::align_of::<T>() as u64) {
        return None;
    }
    // SAFETY: the data area is `data_len` bytes of the shared region,
    // aligned for T (checked), mapped for the parasite's whole life; the
    // dumper does not touch it while a command runs.
    Some(unsafe { core::slice::from_raw_parts_mut(a.data as *mut T, count) })
}

fn misc(a: &ParasiteArgs, st: &State) -> i64 {
    let Some(out) = data::<TaskMisc>(a, 1) else { return -EINVAL };
    let mut m = TaskMisc::default();
    let r = sys::syscall2(sys::NR_PRCTL, PR_GET_TID_ADDRESS, &mut m.tid_address as *mut u64 as u64);
    if r < 0 {
        return r;
    }
    m.brk = sys::syscall1(sys::NR_BRK, 0) as u64;
    let mut ss = [0u64; 3]; // ss_sp, ss_flags (+pad), ss_size
    let r = sys::syscall2(sys::NR_SIGALTSTACK, 0, ss.as_mut_ptr() as u64);
    if r < 0 {
        return r;
    }
    (m.altstack_sp, m.altstack_flags, m.altstack_size) = (ss[0], ss[1] as i32, ss[2]);
    m.timerslack_ns = sys::syscall1(sys::NR_PRCTL, PR_GET_TIMERSLACK) as u64;
    let old = sys::syscall1(sys::NR_UMASK, 0);
    sys::syscall1(sys::NR_UMASK, old as u64);
    m.umask = old as u32;
    m.personality = sys::syscall1(sys::NR_PERSONALITY, 0xffff_ffff) as u32;
    m.dumpable = sys::syscall1(sys::NR_PRCTL, PR_GET_DUMPABLE) as i32;
    let r = sys::syscall2(sys::NR_PRCTL, PR_GET_PDEATHSIG, &mut m.pdeathsig as *mut i32 as u64);
    if r < 0 {
        return r;
    }
    let r = sys::syscall2(sys::NR_PRCTL, PR_GET_CHILD_SUBREAPER, &mut m.child_subreaper as *mut i32 as u64);
    if r < 0 {
        return r;
    }
    m.thp_disable = sys::syscall1(sys::NR_PRCTL, PR_GET_THP_DISABLE) as i32;
    m.no_new_privs = sys::syscall1(sys::NR_PRCTL, PR_GET_NO_NEW_PRIVS) as i32;
    m.pending = st.pending_at_start;
    m.tid = sys::syscall0(sys::NR_GETTID) as i32;
    if sys::syscall2(sys::NR_ARCH_PRCTL, rcr_abi::ARCH_GET_XCOMP_PERM, &mut m.xcomp_perm as *mut u64 as u64) < 0 {
        m.xcomp_perm = 0;
    }
    if let Some(slot) = out.first_mut() {
        *slot = m;
    }
    0
}

fn sigactions(a: &ParasiteArgs) -> i64 {
    let Some(out) = data::<KSigaction>(a, 64) else { return -EINVAL };
    for (i, slot) in out.iter_mut().enumerate() {
        let r = sys::syscall4(sys::NR_RT_SIGACTION, i as u64 + 1, 0, slot as *mut KSigaction as u64, 8);
        if r < 0 {
            return r;
        }
    }
    0
}

fn itimers(a: &ParasiteArgs) -> i64 {
    let Some(out) = data::<ITimerVal>(a, 3) else { return -EINVAL };
    for (which, slot) in out.iter_mut().enumerate() {
        let r = sys::syscall2(sys::NR_GETITIMER, which as u64, slot as *mut ITimerVal as u64);
        if r < 0 {
            return r;
        }
    }
    0
}

fn fd_list(a: &ParasiteArgs, count: u64) -> Option<&'static [i32]> {
    if count == 0 || count as usize > MAX_SEND_FDS {
        return None;
    }
    data::<i32>(a, count as usize).map(|s| &*s)
}

fn close_fd(st: &mut State, fd: i32) -> i64 {
    for h in st.held.iter_mut() {
        if *h == fd {
            *h = -1;
        }
    }
    sys::syscall1(sys::NR_CLOSE, fd as u64)
}

/// Drains runs of the task's memory into `fd`: pwrite at each run's file
/// offset, or vmsplice into a pipe in order.
fn drain(a: &ParasiteArgs, c: &Command, reply: &mut Reply, splice: bool) -> i64 {
    let fd = c.arg[0];
    let Some(runs) = data::<DrainRun>(a, c.arg[1] as usize) else { return -EINVAL };
    let mut total = 0u64;
    for (i, run) in runs.iter().enumerate() {
        let mut done = 0u64;
        while done < run.len {
            let r = if splice {
                let iov = IoVec { base: run.vaddr + done, len: run.len - done };
                sys::syscall4(sys::NR_VMSPLICE, fd, &iov as *const IoVec as u64, 1, 0)
            } else {
                sys::syscall4(sys::NR_PWRITE64, fd, run.vaddr + done, run.len - done, run.file_off + done)
            };
            if r <= 0 {
                reply.value = [i as u64, done, total];
                return if r == 0 { -EIO } else { r };
            }
            done += r as u64;
            total += r as u64;
        }
    }
    reply.value[2] = total;
    0
}

/// DrainWrite leaving out all-zero pages (layout: see `Cmd::DrainWrite`).
/// The dumper only sends runs of readable private anonymous memory here.
fn drain_skip_zero(a: &ParasiteArgs, c: &Command, reply: &mut Reply) -> i64 {
    let n = c.arg[1] as usize;
    let Some(runs) = data::<DrainRun>(a, n) else { return -EINVAL };
    let pages: u64 = runs.iter().map(|r| r.len / PAGE).sum();
    let Some(words) = data::<u64>(a, n * 3 + pages.div_ceil(64) as usize) else { return -EINVAL };
    let Some((runs, bits)) = words.split_at_mut_checked(n * 3) else { return -EINVAL };
    let mut job = Job::new(c.arg[0], runs, bits, true);
    job.run();
    reply.value = if job.status < 0 { [job.fail_run, job.fail_done, job.written] } else { [0, 0, job.written] };
    job.status
}

const PAGE: u64 = 4096;

/// One list of runs for one writer thread: pwrite them back to back from
/// the first run's file offset into `fd`, leaving out (and marking in
/// `bits`) all-zero pages if `skip_zero`. Raw parts, so that it can be
/// handed to the second thread.
#[repr(C)]
struct Job {
    fd: u64,
    /// u64 words: vaddr, len, file_off per run.
    runs: *const u64,
    nr_runs: usize,
    bits: *mut u64,
    nr_bits: usize,
    skip_zero: bool,
    status: i64,
    written: u64,
    fail_run: u64,
    fail_done: u64,
    /// CLONE_CHILD_CLEARTID word of the thread running the job: the kernel
    /// clears it (and wakes a futex waiter) once that thread has exited.
    ctid: u32,
}

impl Job {
    fn new(fd: u64, runs: &[u64], bits: &mut [u64], skip_zero: bool) -> Self {
        let (runs, nr_runs, nr_bits) = (runs.as_ptr(), runs.len() / 3, bits.len());
        Job { fd, runs, nr_runs, bits: bits.as_mut_ptr(), nr_bits, skip_zero, status: 0, written: 0, fail_run: 0, fail_done: 0, ctid: 1 }
    }

    fn run(&mut self) {
        // SAFETY: `runs` and `bits` come from `Job::new`: disjoint parts of
        // the data area, alive until the command's reply, and only this
        // job's thread uses them while it runs.
        let (runs, bits) = unsafe { (core::slice::from_raw_parts(self.runs, self.nr_runs * 3), core::slice::from_raw_parts_mut(self.bits, self.nr_bits)) };
        for w in bits.iter_mut() {
            // SAFETY: `w` is a valid &mut u64; volatile only keeps the compiler
            // from turning this loop into a memset call through the GOT (the
            // blob must have no relocations).
            unsafe { core::ptr::write_volatile(w, 0) };
        }
        let Some(first) = runs.get(2).copied() else { return };
        let (mut pos, mut k) = (first, 0usize);
        for (i, run) in runs.chunks_exact(3).enumerate() {
            let &[vaddr, len, _] = run else { return };
            let mut seg = vaddr; // start of the pending non-zero segment
            let mut at = vaddr;
            while at <= vaddr + len {
                let end = at == vaddr + len;
                if end || (self.skip_zero && page_is_zero(at)) {
                    if at > seg {
                        let r = write_all(self.fd, seg, at - seg, pos);
                        if r < 0 {
                            (self.status, self.fail_run, self.fail_done, self.written) = (r, i as u64, seg - vaddr, pos - first);
                            return;
                        }
                        pos += at - seg;
                    }
                    if let (false, Some(w)) = (end, bits.get_mut(k / 64)) {
                        *w |= 1 << (k % 64);
                    }
                    seg = at + PAGE;
                }
                if end {
                    break;
                }
                at += PAGE;
                k += 1;
            }
        }
        self.written = pos - first;
    }
}

const CLONE_THREAD_FLAGS: u64 = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000 | 0x200000; // VM FS FILES SIGHAND THREAD SYSVSEM CHILD_CLEARTID
const NR_CLONE: u64 = 56;
const FUTEX_WAIT: u64 = 0;

/// DrainPair (layout: see `Cmd::DrainPair`): list 1 on a second thread.
fn drain_pair(a: &ParasiteArgs, c: &Command, reply: &mut Reply) -> i64 {
    let Some(head) = data::<u64>(a, 2) else { return -EINVAL };
    let (Some(&n0), Some(&n1)) = (head.first(), head.get(1)) else { return -EINVAL };
    let (n0, n1) = (n0 as usize, n1 as usize);
    let avail = (a.data_len.saturating_sub(rcr_abi::parasite::DRAIN_PAIR_STACK) / 8) as usize;
    let Some(words) = data::<u64>(a, avail) else { return -EINVAL };
    let Some((_, rest)) = words.split_at_mut_checked(2) else { return -EINVAL };
    let Some((runs0, rest)) = rest.split_at_mut_checked(n0 * 3) else { return -EINVAL };
    let Some((runs1, rest)) = rest.split_at_mut_checked(n1 * 3) else { return -EINVAL };
    let pages = |r: &[u64]| r.chunks_exact(3).map(|w| w.get(1).map_or(0, |l| l / PAGE)).sum::<u64>().div_ceil(64) as usize;
    let Some((bits0, rest)) = rest.split_at_mut_checked(pages(runs0)) else { return -EINVAL };
    let Some((bits1, _)) = rest.split_at_mut_checked(pages(runs1)) else { return -EINVAL };
    let skip = c.arg[2] & rcr_abi::parasite::DRAIN_SKIP_ZERO != 0;
    let (mut job0, mut job1) = (Job::new(c.arg[0], runs0, bits0, skip), Job::new(c.arg[1], runs1, bits1, skip));
    let stack_top = (a.data + a.data_len) & !15;
    let tid = spawn(stack_top, &mut job1);
    job0.run();
    if tid > 0 {
        // SAFETY: a volatile read of the word the kernel clears when the
        // second thread exits; the thread itself never writes it.
        while unsafe { core::ptr::read_volatile(&job1.ctid) } != 0 {
            sys::syscall4(sys::NR_FUTEX, &job1.ctid as *const u32 as u64, FUTEX_WAIT, 1, 0);
        }
    } else {
        job1.run();
    }
    reply.value = [job0.written, job1.written, 0];
    for (list, j) in [&job0, &job1].into_iter().enumerate() {
        if j.status < 0 {
            reply.value = [list as u64, j.fail_run, j.fail_done];
            return j.status;
        }
    }
    0
}

/// Starts a thread of this task running `job` on the stack below
/// `stack_top`; returns its tid, or -errno if clone failed.
fn spawn(stack_top: u64, job: &mut Job) -> i64 {
    let ret: i64;
    // SAFETY: clone with CLONE_VM|CLONE_THREAD... on the stack at the end
    // of the data area, unused by anything else during a DrainPair. The
    // child starts on that stack with every register but rax/rcx/r11 as
    // here, so r12 still holds `job`; it calls pair_thread, which never
    // returns. The caller waits for the child's exit (ctid) before `job`
    // or the stack go away.
    unsafe {
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "and rsp, -16",
            "call {main}",
            "ud2",
            "2:",
            main = sym pair_thread,
            inlateout("rax") NR_CLONE as i64 => ret,
            in("rdi") CLONE_THREAD_FLAGS,
            in("rsi") stack_top,
            in("rdx") 0u64,
            in("r10") &mut job.ctid as *mut u32 as u64,
            in("r8") 0u64,
            in("r12") job as *mut Job as u64,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// The second thread of a DrainPair: runs its job, then exits (the
/// kernel then clears and wakes `job.ctid`).
extern "C" fn pair_thread(job: *mut Job) -> ! {
    // SAFETY: `job` is the caller's job1, which it leaves alone until this
    // thread has exited.
    unsafe { (*job).run() };
    loop {
        sys::syscall1(sys::NR_EXIT, 0);
    }
}

/// pwrite of `len` bytes at `addr` to `off`, until done; 0 or -errno.
fn write_all(fd: u64, addr: u64, len: u64, off: u64) -> i64 {
    let mut done = 0;
    while done < len {
        let r = sys::syscall4(sys::NR_PWRITE64, fd, addr + done, len - done, off + done);
        if r <= 0 {
            return if r == 0 { -EIO } else { r };
        }
        done += r as u64;
    }
    0
}

/// Whether the page at `addr` holds only zero bytes. Most data pages
/// differ in their first word, so the test costs little where it fails.
fn page_is_zero(addr: u64) -> bool {
    // SAFETY: `addr` is a page of a readable private anonymous VMA of this
    // task, saved as present or swapped (the dumper chose it); the task is
    // stopped apart from this parasite, so the mapping stays.
    let p = unsafe { core::slice::from_raw_parts(addr as *const u64, 512) };
    p.chunks_exact(16).all(|c| c.iter().fold(0, |acc, w| acc | w) == 0)
}

/// Receives one fd (SCM_RIGHTS) and remembers it for the cure.
fn recv_fd(st: &mut State, reply: &mut Reply) -> i64 {
    let Some(slot) = st.held.iter().position(|h| *h < 0) else { return -EINVAL };
    let mut byte = 0u8;
    let mut fd = -1i32;
    let n = recv(st.sock, &mut byte as *mut u8 as u64, 1, Some(&mut fd));
    if n < 0 {
        return n;
    }
    if fd < 0 {
        return -EPROTO;
    }
    if let Some(h) = st.held.get_mut(slot) {
        *h = fd;
    }
    reply.value[0] = fd as u64;
    0
}

/// One recvmsg into `buf`; with `fd`, also takes one SCM_RIGHTS fd.
fn recv(sock: i32, buf: u64, len: u64, fd: Option<&mut i32>) -> i64 {
    let mut iov = IoVec { base: buf, len };
    let mut control = [0u64; 4];
    let mut msg = MsgHdr::new(&mut iov, control.as_mut_ptr() as u64, core::mem::size_of_val(&control) as u64);
    let n = sys::syscall3(sys::NR_RECVMSG, sock as u64, &mut msg as *mut MsgHdr as u64, MSG_CMSG_CLOEXEC);
    if n < 0 {
        return n;
    }
    if let Some(out) = fd {
        // SAFETY: `control` is 32 bytes, large enough for one cmsghdr (16)
        // and one int; the kernel wrote `msg.controllen` bytes of it.
        let h = unsafe { &*(control.as_ptr() as *const CmsgHdr) };
        if msg.controllen >= 20 && h.level == sys::SOL_SOCKET && h.kind == sys::SCM_RIGHTS {
            *out = control[2] as i32;
        }
    }
    n
}

/// Sends a reply, with `fds` attached as SCM_RIGHTS if any.
fn send_reply(sock: i32, r: &Reply, fds: &[i32]) -> i64 {
    let mut iov = IoVec { base: r as *const Reply as u64, len: core::mem::size_of::<Reply>() as u64 };
    // A cmsghdr and up to MAX_SEND_FDS ints, written element by element
    // with volatile stores: a zeroing or copying loop would become a
    // memset/memcpy libcall, which LLVM reaches through the GOT.
    #[repr(C)]
    struct Control {
        hdr: CmsgHdr,
        fds: [i32; MAX_SEND_FDS],
    }
    let mut control = core::mem::MaybeUninit::<Control>::uninit();
    let mut msg = MsgHdr::new(&mut iov, 0, 0);
    if !fds.is_empty() && fds.len() <= MAX_SEND_FDS {
        let data_len = (fds.len() * 4) as u64;
        let c = control.as_mut_ptr();
        // SAFETY: `c` points at a live Control; only its header and the
        // first fds.len() <= MAX_SEND_FDS ints are written, and only those
        // (controllen) are read by the kernel.
        unsafe {
            core::ptr::write_volatile(&raw mut (*c).hdr, CmsgHdr { len: 16 + data_len, level: sys::SOL_SOCKET, kind: sys::SCM_RIGHTS });
            for (i, fd) in fds.iter().enumerate() {
                core::ptr::write_volatile((&raw mut (*c).fds as *mut i32).add(i), *fd);
            }
        }
        msg.control = c as u64;
        msg.controllen = (16 + data_len + 7) & !7;
    }
    let n = sys::syscall3(sys::NR_SENDMSG, sock as u64, &msg as *const MsgHdr as u64, MSG_NOSIGNAL);
    if n >= 0 && n as usize != core::mem::size_of::<Reply>() {
        return -EIO;
    }
    n
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction (the build rejects blobs that need the
    // panic machinery's relocations). Spin rather than hurt the task: the
    // dumper sees no reply and kills or detaches it.
    loop {
        core::hint::spin_loop();
    }
}
