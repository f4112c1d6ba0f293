//! `rcr show`: prints an image set in readable form, like CRIU's crit.
//!
//! Every `*.img` file of the directory is listed in a stable order
//! (inventory, pstree, then per process core, mm, pagemap, pages, fdinfo,
//! fs, then files, then anything else by name), identified by its magic
//! (not its name), decoded with the [`pb`] types and printed either as
//! text or as one JSON document:
//!
//! ```text
//! {"dir": "...", "files": [{"file": "mm-123.img", "kind": "Mm", "entries": [...]}, ...]}
//! ```
//!
//! A pages file has no entries; its JSON object carries `"pages": {"nr_pages", "size"}`.
//! A compressed one (`pages-PID.img.zst`, known by its name) also carries
//! `"zstd": {"compressed_size", "frames"}`, from its seek table.
use crate::images::{self, pb, Kind, PAGE_SIZE};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fmt::{self, Write as _};
use std::io::{Read, Write as _};
use std::path::Path;

/// Prints the image set in `dir` as text, or as JSON when `json` is set.
pub fn run(dir: &Path, json: bool) -> Result<()> {
    let names = list_images(dir)?;
    if json {
        print_json(dir, &names)
    } else {
        print_text(dir, &names)
    }
}

// ---------------------------------------------------------------------------
// Listing and loading

/// Order of the per-process kinds within one process.
const PER_PROCESS: [Kind; 6] = [Kind::Core, Kind::Mm, Kind::Pagemap, Kind::Pages, Kind::Fdinfo, Kind::Fs];

/// The `*.img` file names of `dir`, in display order.
fn list_images(dir: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("reading image directory {}", dir.display()))?;
    let mut names = Vec::new();
    for ent in rd {
        let ent = ent.with_context(|| format!("reading image directory {}", dir.display()))?;
        if let Some(n) = ent.file_name().to_str().filter(|n| n.ends_with(".img") || n.ends_with(".img.zst")) {
            names.push(n.to_string());
        }
    }
    if names.is_empty() {
        bail!("{}: no *.img files: not an rcr image set", dir.display());
    }
    names.sort_by_key(|n| order_key(n));
    Ok(names)
}

/// Sort key of a file name: (group, pid, kind rank, name).
fn order_key(name: &str) -> (u8, u32, usize, String) {
    let stem = name.trim_end_matches(".zst").trim_end_matches(".img");
    let key = |group, pid, rank| (group, pid, rank, name.to_string());
    match stem {
        "inventory" => return key(0, 0, 0),
        "pstree" => return key(1, 0, 0),
        "files" => return key(3, 0, 0),
        "pipes" => return key(3, 0, 1),
        "stats-dump" => return key(5, 0, 0),
        "stats-restore" => return key(5, 0, 1),
        _ => {}
    }
    // A second pages file, pages-PID.N.img, sorts with the first.
    let stem = stem.split_once('.').map_or(stem, |(s, _)| s);
    let parsed = stem.rsplit_once('-').and_then(|(s, p)| Some((s, p.parse::<u32>().ok()?)));
    match parsed.and_then(|(s, pid)| Some((PER_PROCESS.iter().position(|k| k.stem() == s)?, pid))) {
        Some((rank, pid)) => key(2, pid, rank),
        None => key(4, 0, 0),
    }
}

/// Decoded contents of one image file.
#[derive(Debug)]
enum Body {
    Inventory(Vec<pb::Inventory>),
    Pstree(Vec<pb::PstreeEntry>),
    Core(Vec<pb::TaskCore>),
    Mm(Vec<pb::Mm>),
    Pagemap(Vec<pb::PagemapEntry>),
    Pages(PagesSummary),
    Files(Vec<pb::RegFile>),
    Fdinfo(Vec<pb::FdEntry>),
    Fs(Vec<pb::Fs>),
    Pipes(Vec<pb::PipeEntry>),
    Fds(Vec<pb::FileDesc>),
    MemFiles(Vec<pb::MemFile>),
    StatsDump(Vec<pb::DumpStats>),
    StatsRestore(Vec<pb::RestoreStats>),
}

/// What a pages file holds: its header was checked, the rest is raw pages.
#[derive(Debug, Serialize)]
struct PagesSummary {
    nr_pages: u64,
    size: u64,
    /// A compressed pages file (pages-PID.img.zst): `size` is what it
    /// decompresses to.
    #[serde(skip_serializing_if = "Option::is_none")]
    zstd: Option<ZstdSummary>,
}

#[derive(Debug, Serialize)]
struct ZstdSummary {
    compressed_size: u64,
    frames: usize,
}

/// Reads `path`, identifies it by its magic and decodes it.
fn load(path: &Path) -> Result<(Kind, Body)> {
    if path.extension().is_some_and(|e| e == "zst") {
        let (compressed_size, size, frames) = images::compress::summary(path)?;
        let zstd = Some(ZstdSummary { compressed_size, frames });
        return Ok((Kind::Pages, Body::Pages(PagesSummary { nr_pages: (size / PAGE_SIZE).saturating_sub(1), size, zstd })));
    }
    let mut h = [0u8; 8];
    let mut f = images::open_no_symlink(path)?;
    f.read_exact(&mut h).with_context(|| format!("{}: truncated header", path.display()))?;
    let kind = images::check_header(path, h, None)?;
    if kind == Kind::Pages {
        return Ok((kind, Body::Pages(pages_summary(path, f)?)));
    }
    std::io::Seek::rewind(&mut f).with_context(|| format!("rewinding {}", path.display()))?;
    let (kind, raw) = images::read_raw_from(f, path, Some(kind))?;
    Ok((kind, decode_body(path, kind, &raw)?))
}

fn decode_body(path: &Path, kind: Kind, raw: &[Vec<u8>]) -> Result<Body> {
    Ok(match kind {
        Kind::Inventory => Body::Inventory(images::decode_entries(path, kind, raw)?),
        Kind::Pstree => Body::Pstree(images::decode_entries(path, kind, raw)?),
        Kind::Core => Body::Core(images::decode_entries(path, kind, raw)?),
        Kind::Mm => Body::Mm(images::decode_entries(path, kind, raw)?),
        Kind::Pagemap => Body::Pagemap(images::decode_entries(path, kind, raw)?),
        Kind::Files => Body::Files(images::decode_entries(path, kind, raw)?),
        Kind::Fdinfo => Body::Fdinfo(images::decode_entries(path, kind, raw)?),
        Kind::Fs => Body::Fs(images::decode_entries(path, kind, raw)?),
        Kind::Pipes => Body::Pipes(images::decode_entries(path, kind, raw)?),
        Kind::Fds => Body::Fds(images::decode_entries(path, kind, raw)?),
        Kind::MemFiles => Body::MemFiles(images::decode_entries(path, kind, raw)?),
        Kind::StatsDump => Body::StatsDump(images::decode_entries(path, kind, raw)?),
        Kind::StatsRestore => Body::StatsRestore(images::decode_entries(path, kind, raw)?),
        Kind::Pages => bail!("{}: a pages file holds raw pages, not entries", path.display()),
    })
}

/// Checks the header page of a pages file (`f` is positioned after the
/// 8-byte header) and counts its pages.
fn pages_summary(path: &Path, mut f: std::fs::File) -> Result<PagesSummary> {
    let size = f.metadata().with_context(|| format!("{}: stat", path.display()))?.len();
    if size < PAGE_SIZE || size % PAGE_SIZE != 0 {
        bail!("{}: size {size} is not a header page plus whole pages", path.display());
    }
    let mut pad = vec![0u8; PAGE_SIZE as usize - 8];
    f.read_exact(&mut pad).with_context(|| format!("{}: truncated header page", path.display()))?;
    if let Some(off) = pad.iter().position(|b| *b != 0) {
        bail!("{}: header page padding is not zero at offset {}", path.display(), off + 8);
    }
    Ok(PagesSummary { nr_pages: size / PAGE_SIZE - 1, size, zstd: None })
}

// ---------------------------------------------------------------------------
// JSON

#[derive(Serialize)]
struct JsonDoc<'a> {
    dir: String,
    files: Vec<JsonFile<'a>>,
}

#[derive(Serialize)]
struct JsonFile<'a> {
    file: &'a str,
    kind: String,
    entries: JsonEntries<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pages: Option<&'a PagesSummary>,
}

/// The entries of a file, serialized as a plain array.
#[derive(Serialize)]
#[serde(untagged)]
enum JsonEntries<'a> {
    Inventory(&'a [pb::Inventory]),
    Pstree(&'a [pb::PstreeEntry]),
    Core(&'a [pb::TaskCore]),
    Mm(&'a [pb::Mm]),
    Pagemap(&'a [pb::PagemapEntry]),
    Files(&'a [pb::RegFile]),
    Fdinfo(&'a [pb::FdEntry]),
    Fs(&'a [pb::Fs]),
    Pipes(&'a [pb::PipeEntry]),
    Fds(&'a [pb::FileDesc]),
    MemFiles(&'a [pb::MemFile]),
    StatsDump(&'a [pb::DumpStats]),
    StatsRestore(&'a [pb::RestoreStats]),
    None([u8; 0]),
}

fn print_json(dir: &Path, names: &[String]) -> Result<()> {
    let loaded = names.iter().map(|n| load(&dir.join(n))).collect::<Result<Vec<_>>>()?;
    let files = names.iter().zip(&loaded).map(|(n, (kind, body))| json_file(n, *kind, body)).collect();
    let doc = JsonDoc { dir: dir.display().to_string(), files };
    let mut text = serde_json::to_string_pretty(&doc).context("converting the images to JSON")?;
    text.push('\n');
    write_stdout(&text)?;
    Ok(())
}

fn json_file<'a>(file: &'a str, kind: Kind, body: &'a Body) -> JsonFile<'a> {
    let (entries, pages) = match body {
        Body::Inventory(v) => (JsonEntries::Inventory(v), None),
        Body::Pstree(v) => (JsonEntries::Pstree(v), None),
        Body::Core(v) => (JsonEntries::Core(v), None),
        Body::Mm(v) => (JsonEntries::Mm(v), None),
        Body::Pagemap(v) => (JsonEntries::Pagemap(v), None),
        Body::Files(v) => (JsonEntries::Files(v), None),
        Body::Fdinfo(v) => (JsonEntries::Fdinfo(v), None),
        Body::Fs(v) => (JsonEntries::Fs(v), None),
        Body::Pipes(v) => (JsonEntries::Pipes(v), None),
        Body::Fds(v) => (JsonEntries::Fds(v), None),
        Body::MemFiles(v) => (JsonEntries::MemFiles(v), None),
        Body::StatsDump(v) => (JsonEntries::StatsDump(v), None),
        Body::StatsRestore(v) => (JsonEntries::StatsRestore(v), None),
        Body::Pages(s) => (JsonEntries::None([]), Some(s)),
    };
    JsonFile { file, kind: format!("{kind:?}"), entries, pages }
}

// ---------------------------------------------------------------------------
// Text

/// Writes to stdout; false once the reader went away (e.g. `| head`).
fn write_stdout(text: &str) -> Result<bool> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

fn print_text(dir: &Path, names: &[String]) -> Result<()> {
    if !write_stdout(&format!("image set {}\n", dir.display()))? {
        return Ok(());
    }
    for name in names {
        let (kind, body) = load(&dir.join(name))?;
        let mut out = String::new();
        fmt_file(&mut out, name, kind, &body).with_context(|| format!("{name}: formatting"))?;
        if !write_stdout(&out)? {
            break;
        }
    }
    Ok(())
}

fn fmt_file(o: &mut String, name: &str, kind: Kind, body: &Body) -> fmt::Result {
    match body {
        Body::Inventory(v) => fmt_entries(o, name, kind, v, fmt_inventory),
        Body::Pstree(v) => fmt_entries(o, name, kind, v, fmt_pstree),
        Body::Core(v) => fmt_entries(o, name, kind, v, fmt_core),
        Body::Mm(v) => fmt_entries(o, name, kind, v, fmt_mm),
        Body::Pagemap(v) => fmt_pagemap(o, name, v),
        Body::Pages(s) => fmt_pages(o, name, s),
        Body::Files(v) => fmt_entries(o, name, kind, v, fmt_regfile),
        Body::Fdinfo(v) => fmt_entries(o, name, kind, v, fmt_fd),
        Body::Fs(v) => fmt_entries(o, name, kind, v, fmt_fs),
        Body::Pipes(v) => fmt_entries(o, name, kind, v, fmt_pipe),
        Body::Fds(v) => fmt_entries(o, name, kind, v, fmt_desc),
        Body::MemFiles(v) => fmt_entries(o, name, kind, v, fmt_mem_file),
        Body::StatsDump(v) => fmt_entries(o, name, kind, v, fmt_dump_stats),
        Body::StatsRestore(v) => fmt_entries(o, name, kind, v, fmt_restore_stats),
    }
}

/// A file heading, then each entry as `  [i] ...`.
fn fmt_entries<M>(o: &mut String, name: &str, kind: Kind, v: &[M], f: fn(&mut String, &M) -> fmt::Result) -> fmt::Result {
    let entries = if v.len() == 1 { "entry" } else { "entries" };
    writeln!(o, "\n== {name}: {kind:?}, {} {entries}", v.len())?;
    for (i, m) in v.iter().enumerate() {
        write!(o, "  [{i}] ")?;
        f(o, m)?;
    }
    Ok(())
}

fn fmt_inventory(o: &mut String, e: &pb::Inventory) -> fmt::Result {
    writeln!(o, "format_version {}  root_pid {}  rcr {}", e.format_version, e.root_pid, e.rcr_version)?;
    writeln!(o, "      dumped {} on kernel {}", utc(e.dump_time_ms), e.kernel_release)?;
    writeln!(o, "      page_size {}  xsave_size {}  xcr0 {:#x}", e.page_size, e.xsave_size, e.xcr0)?;
    let parent = if e.parent.is_empty() { "(none)" } else { e.parent.as_str() };
    let pages = pb::PagesCompression::try_from(e.pages_compression).map_or("unknown", |c| c.as_str_name());
    writeln!(o, "      parent {parent}  pages {pages}")
}

fn fmt_pstree(o: &mut String, e: &pb::PstreeEntry) -> fmt::Result {
    writeln!(o, "pid {}  ppid {}  pgid {}  sid {}  threads {:?}", e.pid, e.ppid, e.pgid, e.sid, e.threads)
}

fn fmt_core(o: &mut String, e: &pb::TaskCore) -> fmt::Result {
    let state =
        pb::TaskState::try_from(e.state).map(|s| s.as_str_name().to_string()).unwrap_or_else(|_| format!("?({})", e.state));
    writeln!(o, "pid {}  comm {:?}  state {state}  personality {:#x}", e.pid, e.comm, e.personality)?;
    if e.interrupted_syscall < 0 {
        writeln!(o, "      not stopped in a syscall")?;
    } else {
        let (nr, res) = (e.interrupted_syscall, e.interrupted_result);
        writeln!(o, "      interrupted in syscall {nr}, result {res}{}", errno_name(res))?;
    }
    writeln!(o, "      blocked {:#x}{}", e.blocked, sig_list(e.blocked))?;
    writeln!(o, "      ignored {:#x}{}", e.sig_ignored, sig_list(e.sig_ignored))?;
    if e.state == pb::TaskState::Zombie as i32 {
        return writeln!(o, "      zombie, wait status {:#x}", e.exit_status);
    }
    match &e.regs {
        Some(r) => fmt_regs(o, r)?,
        None => writeln!(o, "      regs: missing")?,
    }
    fmt_xsave(o, &e.xsave)?;
    if e.xcomp_dynamic != 0 {
        writeln!(o, "      xcomp_dynamic {:#x} ({})", e.xcomp_dynamic, crate::arch::cur::xsave_feature_names(e.xcomp_dynamic))?;
    }
    for t in &e.threads {
        writeln!(o, "      thread {} comm {:?}  blocked {:#x}{}", t.tid, t.comm, t.blocked, sig_list(t.blocked))?;
        if let Some(r) = &t.regs {
            writeln!(o, "        rip {:#x}  rsp {:#x}  fs_base {:#x}  syscall {}", r.rip, r.rsp, r.fs_base, t.interrupted_syscall)?;
        }
    }
    for t in &e.posix_timers {
        let pending = if t.signal_pending { "  its signal pending" } else { "" };
        writeln!(
            o,
            "      posix timer {}  clock {}  notify {} to {}  signo {}  value {:#x}  left {} ns  interval {} ns  overrun {}{pending}",
            t.id, t.clock_id, t.notify, t.target, t.signo, t.sigev_value, t.value_ns, t.interval_ns, t.overrun
        )?;
    }
    Ok(())
}

/// Microseconds as milliseconds with three decimals.
fn ms(us: u64) -> String {
    format!("{}.{:03} ms", us / 1000, us % 1000)
}

fn fmt_dump_stats(o: &mut String, e: &pb::DumpStats) -> fmt::Result {
    let until = if e.leave_running { "resumed" } else { "killed" };
    writeln!(o, "total {}  frozen {} (until {until})  freezing {}", ms(e.total_us), ms(e.frozen_us), ms(e.freezing_us))?;
    writeln!(o, "      memory {}  fds {}  images {}  parasite {}", ms(e.memory_us), ms(e.fds_us), ms(e.images_us), ms(e.infect_us))?;
    writeln!(o, "      pages scanned {}  written {}  zero left out {}", e.pages_scanned, e.pages_written, e.pages_zero)?;
    writeln!(o, "      {} bytes of images  {} processes  {} threads", e.bytes_written, e.processes, e.threads)
}

fn fmt_restore_stats(o: &mut String, e: &pb::RestoreStats) -> fmt::Result {
    writeln!(o, "total {}  load {}  forking {}  restorer {}", ms(e.total_us), ms(e.load_us), ms(e.forking_us), ms(e.restorer_us))?;
    writeln!(o, "      pages restored {}  {} processes  {} threads", e.pages_restored, e.processes, e.threads)
}

fn fmt_pipe(o: &mut String, e: &pb::PipeEntry) -> fmt::Result {
    writeln!(o, "id {}  pipe:[{}]  size {}  {} bytes buffered", e.id, e.inode, e.size, e.data.len())
}

fn fmt_mem_file(o: &mut String, e: &pb::MemFile) -> fmt::Result {
    let kind = pb::MemFileKind::try_from(e.kind).map(|k| k.as_str_name().to_string()).unwrap_or_else(|_| format!("?({})", e.kind));
    let data: usize = e.data.iter().map(|d| d.data.len()).sum();
    writeln!(o, "id {}  {kind}  {:?}  mode {:o}  size {}  seals {:#x}  {} runs, {data} bytes of data", e.id, e.name, e.mode, e.size, e.seals, e.data.len())
}

fn fmt_desc(o: &mut String, e: &pb::FileDesc) -> fmt::Result {
    use pb::file_desc::Kind as K;
    let kind = match &e.kind {
        Some(K::RegFileId(id)) => format!("file {id}"),
        Some(K::Pipe(p)) => format!("pipe {} ({} end)", p.pipe_id, if p.write { "write" } else { "read" }),
        Some(K::Fifo(f)) => format!("fifo {} {}  size {}  {} bytes buffered", f.fifo_id, f.path, f.pipe_size, f.data.len()),
        Some(K::Terminal(t)) => {
            let size = t.winsize.as_ref().map(|w| format!("{}x{}", w.col, w.row)).unwrap_or_default();
            format!("shell-job terminal (was /dev/pts/{}, session {}, foreground group {}, size {size})", t.index, t.sid, t.foreground_pgid)
        }
        Some(k) => format!("{k:?}"),
        None => "?".to_string(),
    };
    writeln!(o, "id {}  {kind}  flags {}  pos {}  ({})", e.id, open_flags(e.flags), e.pos, e.link)
}

/// Names of the results the syscall-restart rule cares about.
fn errno_name(res: i64) -> &'static str {
    match res {
        -4 => " (-EINTR)",
        -512 => " (-ERESTARTSYS)",
        -513 => " (-ERESTARTNOINTR)",
        -514 => " (-ERESTARTNOHAND)",
        -516 => " (-ERESTART_RESTARTBLOCK)",
        _ => "",
    }
}

/// Signal numbers of a mask (bit n-1 = signal n), as ` {1,10}`.
fn sig_list(mask: u64) -> String {
    let sigs: Vec<String> = (0..64).filter(|b| mask & (1u64 << b) != 0).map(|b| (b + 1).to_string()).collect();
    if sigs.is_empty() {
        String::new()
    } else {
        format!(" {{{}}}", sigs.join(","))
    }
}

fn fmt_regs(o: &mut String, r: &pb::X86Regs) -> fmt::Result {
    #[rustfmt::skip]
    let regs = [
        ("rip", r.rip), ("rsp", r.rsp), ("rbp", r.rbp), ("eflags", r.eflags),
        ("rax", r.rax), ("orig_rax", r.orig_rax), ("rbx", r.rbx), ("rcx", r.rcx),
        ("rdx", r.rdx), ("rsi", r.rsi), ("rdi", r.rdi), ("r8", r.r8),
        ("r9", r.r9), ("r10", r.r10), ("r11", r.r11), ("r12", r.r12),
        ("r13", r.r13), ("r14", r.r14), ("r15", r.r15), ("fs_base", r.fs_base),
        ("gs_base", r.gs_base), ("cs", r.cs), ("ss", r.ss), ("ds", r.ds),
        ("es", r.es), ("fs", r.fs), ("gs", r.gs),
    ];
    for row in regs.chunks(4) {
        write!(o, "     ")?;
        for (name, v) in row {
            write!(o, " {name:>8} {v:#018x}")?;
        }
        writeln!(o)?;
    }
    Ok(())
}

/// Size of the XSAVE area and the two feature masks in it: XCR0 as the
/// kernel stores it in the software-reserved bytes 464..472 and XSTATE_BV
/// of the XSAVE header at 512..520.
fn fmt_xsave(o: &mut String, x: &[u8]) -> fmt::Result {
    let word = |at: usize| x.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    match (word(464), word(512)) {
        (Some(xcr0), Some(bv)) => writeln!(o, "      xsave {} bytes, xcr0 {xcr0:#x}, xstate_bv {bv:#x}", x.len()),
        _ => writeln!(o, "      xsave {} bytes (too short for an XSAVE header)", x.len()),
    }
}

fn fmt_mm(o: &mut String, e: &pb::Mm) -> fmt::Result {
    writeln!(o, "code {:#x}-{:#x}  data {:#x}-{:#x}", e.start_code, e.end_code, e.start_data, e.end_data)?;
    writeln!(o, "      brk {:#x}-{:#x}  start_stack {:#x}", e.start_brk, e.brk, e.start_stack)?;
    writeln!(o, "      args {:#x}-{:#x}  env {:#x}-{:#x}", e.arg_start, e.arg_end, e.env_start, e.env_end)?;
    writeln!(o, "      exe_file_id {}", e.exe_file_id)?;
    fmt_auxv(o, &e.auxv)?;
    writeln!(o, "      {} vmas:", e.vmas.len())?;
    e.vmas.iter().try_for_each(|v| fmt_vma(o, v))
}

fn fmt_auxv(o: &mut String, auxv: &[u64]) -> fmt::Result {
    writeln!(o, "      auxv, {} pairs:", auxv.len() / 2)?;
    for p in auxv.chunks(2) {
        match p {
            [t, v] => writeln!(o, "        {:<20} {v:#x}", auxv_name(*t))?,
            _ => writeln!(o, "        (odd trailing word {:#x})", p[0])?,
        }
    }
    Ok(())
}

#[rustfmt::skip]
fn auxv_name(t: u64) -> String {
    let name = match t {
        0 => "AT_NULL", 1 => "AT_IGNORE", 2 => "AT_EXECFD", 3 => "AT_PHDR", 4 => "AT_PHENT",
        5 => "AT_PHNUM", 6 => "AT_PAGESZ", 7 => "AT_BASE", 8 => "AT_FLAGS", 9 => "AT_ENTRY",
        10 => "AT_NOTELF", 11 => "AT_UID", 12 => "AT_EUID", 13 => "AT_GID", 14 => "AT_EGID",
        15 => "AT_PLATFORM", 16 => "AT_HWCAP", 17 => "AT_CLKTCK", 23 => "AT_SECURE",
        24 => "AT_BASE_PLATFORM", 25 => "AT_RANDOM", 26 => "AT_HWCAP2", 27 => "AT_RSEQ_FEATURE_SIZE",
        28 => "AT_RSEQ_ALIGN", 29 => "AT_HWCAP3", 30 => "AT_HWCAP4", 31 => "AT_EXECFN",
        33 => "AT_SYSINFO_EHDR", 51 => "AT_MINSIGSTKSZ",
        _ => return format!("AT_{t}"),
    };
    name.to_string()
}

fn fmt_vma(o: &mut String, v: &pb::Vma) -> fmt::Result {
    let kind = pb::VmaKind::try_from(v.kind).map(|k| k.as_str_name().to_string()).unwrap_or_else(|_| format!("?({})", v.kind));
    write!(o, "        {:#014x}-{:#014x} {} {:<16} {:<18}", v.start, v.end, prot_str(v.prot, v.flags), kind, map_flags(v.flags))?;
    if v.file_id != 0 || v.pgoff != 0 {
        write!(o, " file {} @{:#x} dev {} ino {}", v.file_id, v.pgoff, dev_str(v.dev), v.inode)?;
    }
    writeln!(o, " {}  [{}]", v.name, v.vm_flags.join(" "))
}

/// `rwxp` as /proc/PID/maps prints it: `s` for shared mappings.
fn prot_str(prot: u32, flags: u32) -> String {
    let bit = |b: u32, c: char| if prot & b != 0 { c } else { '-' };
    let share = if flags & 1 != 0 { 's' } else { 'p' };
    [bit(1, 'r'), bit(2, 'w'), bit(4, 'x'), share].iter().collect()
}

fn map_flags(flags: u32) -> String {
    const NAMES: [(u32, &str); 5] = [(0x1, "SHARED"), (0x2, "PRIVATE"), (0x20, "ANON"), (0x100, "GROWSDOWN"), (0x4000, "NORESERVE")];
    let mut parts: Vec<String> = NAMES.iter().filter(|(b, _)| flags & b != 0).map(|(_, n)| n.to_string()).collect();
    let rest = flags & !NAMES.iter().fold(0, |a, (b, _)| a | b);
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    parts.join("|")
}

/// `major:minor` of a Linux (glibc makedev) device number.
fn dev_str(dev: u64) -> String {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    format!("{major}:{minor}")
}

fn fmt_pagemap(o: &mut String, name: &str, v: &[pb::PagemapEntry]) -> fmt::Result {
    let total: u64 = v.iter().map(|e| u64::from(e.nr_pages)).sum();
    let stored: u64 = v.iter().filter(|e| e.flags & 1 != 0).map(|e| u64::from(e.nr_pages)).sum();
    let runs = if v.len() == 1 { "run" } else { "runs" };
    writeln!(
        o,
        "\n== {name}: Pagemap, {} {runs}, {total} pages ({} KiB), {stored} in the pages files",
        v.len(),
        total * PAGE_SIZE / 1024
    )?;
    let mut file_page = [0u64; 2];
    for (i, e) in v.iter().enumerate() {
        let end = e.vaddr + u64::from(e.nr_pages) * PAGE_SIZE;
        let present = e.flags & 1 != 0;
        let pages = if e.nr_pages == 1 { "page " } else { "pages" };
        write!(o, "  [{i}] {:#014x}-{end:#014x} {:>6} {pages}  flags {:#x}", e.vaddr, e.nr_pages, e.flags)?;
        if present {
            let part = (e.part as usize).min(1);
            let file = if part == 0 { String::new() } else { format!(" of part {}", e.part) };
            writeln!(o, " PRESENT, file pages {}..{}{file}", file_page[part], file_page[part] + u64::from(e.nr_pages))?;
            file_page[part] += u64::from(e.nr_pages);
        } else {
            writeln!(o)?;
        }
    }
    Ok(())
}

fn fmt_pages(o: &mut String, name: &str, s: &PagesSummary) -> fmt::Result {
    match &s.zstd {
        None => writeln!(o, "\n== {name}: Pages, header ok, {} pages, {} bytes", s.nr_pages, s.size),
        Some(z) => {
            let pct = 100.0 * z.compressed_size as f64 / s.size.max(1) as f64;
            let (n, size, zs, f) = (s.nr_pages, s.size, z.compressed_size, z.frames);
            writeln!(o, "\n== {name}: Pages, zstd seekable, {n} pages, {size} bytes compressed to {zs} ({pct:.1}%) in {f} frames")
        }
    }
}

fn fmt_regfile(o: &mut String, f: &pb::RegFile) -> fmt::Result {
    writeln!(o, "id {}  {}  {} mode {:#o}", f.id, f.path, file_type(f.mode), f.mode & 0o7777)?;
    write!(o, "      flags {:#o} ({})  pos {}  size {}", f.flags, open_flags(f.flags), f.pos, f.size)?;
    writeln!(o, "  dev {} ino {}  rdev {}  mtime_ns {}", dev_str(f.dev), f.inode, dev_str(f.rdev), f.mtime_ns)
}

fn file_type(mode: u32) -> &'static str {
    match mode & 0o170000 {
        0o100000 => "reg",
        0o040000 => "dir",
        0o020000 => "chr",
        0o060000 => "blk",
        0o010000 => "fifo",
        0o120000 => "lnk",
        0o140000 => "sock",
        _ => "?",
    }
}

fn open_flags(flags: u32) -> String {
    #[rustfmt::skip]
    const NAMES: [(u32, &str); 10] = [
        (0o100, "creat"), (0o200, "excl"), (0o400, "noctty"), (0o1000, "trunc"), (0o2000, "append"),
        (0o4000, "nonblock"), (0o40000, "direct"), (0o100000, "largefile"), (0o200000, "directory"),
        (0o10000000, "path"),
    ];
    let acc = match flags & 3 {
        0 => "rdonly",
        1 => "wronly",
        2 => "rdwr",
        _ => "acc3",
    };
    let mut parts = vec![acc.to_string()];
    parts.extend(NAMES.iter().filter(|(b, _)| flags & b != 0).map(|(_, n)| n.to_string()));
    parts.join("|")
}

fn fmt_fd(o: &mut String, e: &pb::FdEntry) -> fmt::Result {
    writeln!(o, "fd {} -> description {}{}", e.fd, e.desc_id, if e.cloexec { "  cloexec" } else { "" })
}

fn fmt_fs(o: &mut String, e: &pb::Fs) -> fmt::Result {
    writeln!(o, "cwd {}  root {}  umask {:#05o}", e.cwd, e.root, e.umask)
}

/// Milliseconds since the epoch as a UTC date (civil-from-days).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{:03} UTC ({ms} ms)", ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order() {
        let mut v: Vec<String> =
            ["files.img", "pages-12.img", "core-3.img", "mm-12.img", "pstree.img", "inventory.img", "zz.img", "fs-3.img"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        v.sort_by_key(|n| order_key(n));
        assert_eq!(
            v,
            ["inventory.img", "pstree.img", "core-3.img", "fs-3.img", "mm-12.img", "pages-12.img", "files.img", "zz.img"]
        );
    }

    #[test]
    fn formatting() {
        assert_eq!(prot_str(5, 2), "r-xp");
        assert_eq!(prot_str(3, 1), "rw-s");
        assert_eq!(map_flags(0x122), "PRIVATE|ANON|GROWSDOWN");
        assert_eq!(dev_str(0x10302), "259:2");
        assert_eq!(sig_list(1 << 9 | 1), " {1,10}");
        assert!(utc(0).starts_with("1970-01-01 00:00:00.000"));
        assert!(utc(1_700_000_000_123).starts_with("2023-11-14 22:13:20.123"));
    }
}
