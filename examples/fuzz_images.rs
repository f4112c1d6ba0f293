//! The image fuzzer: a stand-in for `cargo fuzz` (which needs nightly and
//! libFuzzer) over the image decoders and the restore planning step.
//!
//! ```text
//! cargo run --profile fuzz --example fuzz_images -- [--seconds N] [--corpus DIR] [--crashes DIR] [--seed N]
//! cargo run --profile fuzz --example fuzz_images -- --shrink IMAGE_DIR [--max-runs N]
//! cargo run --profile fuzz --example fuzz_images -- --check IMAGE_DIR   (plan_only once, print the outcome)
//! ```
//!
//! Each corpus entry is an image set (a directory, made by
//! `scripts/fuzz --make-corpus` from real dumps). Each round copies one set,
//! mutates one of its files, now and then two or three (bit flips, truncation, inserted bytes,
//! interesting values in the 8-byte header or a frame length, and
//! field-aware mutations of the protobuf entries at the wire level: huge,
//! zero, negative or off-by-one numbers, lengths grown or cut, fields
//! dropped or repeated, one field's value swapped between two entries),
//! then runs [`rcr::restore::plan_only`] (decode, validate, plan; nothing
//! is forked) under `catch_unwind`. A panic, a round slower than
//! `SLOW`, or peak memory above `MAX_RSS` is a finding: the mutated set is
//! copied to the crashes directory (default `tests/fuzz/crashes`), which
//! `tests/badimages.rs` replays. The address space is limited (`MAX_AS`) so
//! an unbounded allocation aborts the run; the set being tried is then
//! left in the work directory printed at start.
//!
//! `--shrink DIR` keeps only the first `--max-runs` (default 4) pagemap
//! entries of each process, at most 4 pages each, and cuts its pages file
//! to match, so a corpus entry stays small (planning never reads the
//! pages themselves). `RCR_FUZZ_VERBOSE=1` prints every mutation and the
//! error it was refused with.
use rcr::images::{self, Kind, ImageWriter};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SLOW: Duration = Duration::from_secs(2);
const MAX_RSS_KB: u64 = 1 << 20;
const MAX_AS: u64 = 4 << 30;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    if let Some(dir) = opt("--shrink") {
        let max = opt("--max-runs").map_or(4, |s| s.parse().expect("--max-runs N"));
        if let Err(e) = shrink(Path::new(&dir), max) {
            eprintln!("fuzz_images: shrinking {dir}: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if let Some(dir) = opt("--check") {
        match rcr::restore::plan_only(Path::new(&dir)) {
            Ok(t) => println!("{dir}: plans ({} processes)", t.procs.len()),
            Err(e) => println!("{dir}: refused: {e:#}"),
        }
        return;
    }
    let seconds: u64 = opt("--seconds").map_or(60, |s| s.parse().expect("--seconds N"));
    let corpus = PathBuf::from(opt("--corpus").unwrap_or_else(|| "tests/fuzz/corpus".into()));
    let crashes = PathBuf::from(opt("--crashes").unwrap_or_else(|| "tests/fuzz/crashes".into()));
    let seed = opt("--seed").map_or_else(|| now_ns() ^ u64::from(std::process::id()) << 32, |s| s.parse().expect("--seed N"));
    let found = fuzz(&corpus, &crashes, seconds, seed);
    std::process::exit(if found > 0 { 1 } else { 0 });
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
}

/// xorshift64*: enough randomness for mutations, and reproducible by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
    fn coin(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Runs rounds for `seconds`; returns how many findings were saved.
fn fuzz(corpus: &Path, crashes: &Path, seconds: u64, seed: u64) -> usize {
    let sets = corpus_sets(corpus);
    if sets.is_empty() {
        eprintln!("fuzz_images: no image sets in {}", corpus.display());
        std::process::exit(2);
    }
    // The soft limit only: restore planning compares the saved hard limits with rcr's.
    if let Ok((_, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_AS) {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, MAX_AS.min(hard), hard);
    }
    let work = std::env::temp_dir().join(format!("rcr-fuzz-{}", std::process::id()));
    eprintln!("fuzz_images: {} sets from {}, {seconds} s, seed {seed}; work dir {} (holds the input if this process aborts)", sets.len(), corpus.display(), work.display());
    let last_msg = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let msg = last_msg.clone();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut m) = msg.lock() {
            *m = info.to_string();
        }
    }));
    let mut rng = Rng(seed | 1);
    let verbose = std::env::var_os("RCR_FUZZ_VERBOSE").is_some();
    let (start, mut rounds, mut found, mut refused) = (Instant::now(), 0u64, 0, 0u64);
    while start.elapsed() < Duration::from_secs(seconds) {
        let set = &sets[rng.below(sets.len())];
        let _ = std::fs::remove_dir_all(&work);
        copy_dir(set, &work).expect("copying a corpus set");
        let what: Vec<String> = (0..1 + rng.below(3) * usize::from(rng.coin(3))).map(|_| mutate_set(&work, &mut rng)).collect();
        let what = what.join(", ");
        let t = Instant::now();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| rcr::restore::plan_only(&work).map(|_| ())));
        let took = t.elapsed();
        let finding = match &r {
            Err(_) => Some(format!("panic: {}", last_msg.lock().map(|m| m.clone()).unwrap_or_default())),
            Ok(_) if took > SLOW => Some(format!("slow: {took:?}")),
            Ok(_) if peak_rss_kb() > MAX_RSS_KB => Some(format!("memory: peak RSS {} KiB", peak_rss_kb())),
            Ok(Err(e)) => {
                if verbose {
                    eprintln!("{what}: {e:#}");
                }
                refused += 1;
                None
            }
            Ok(Ok(())) => None,
        };
        if let Some(f) = finding {
            let dest = crashes.join(format!("{}-{:016x}", set.file_name().unwrap_or_default().to_string_lossy(), rng.next()));
            eprintln!("fuzz_images: FINDING after {what}: {f}; saved as {}", dest.display());
            let _ = std::fs::create_dir_all(crashes);
            copy_dir(&work, &dest).expect("saving the finding");
            found += 1;
        }
        rounds += 1;
    }
    let _ = std::fs::remove_dir_all(&work);
    eprintln!("fuzz_images: {rounds} rounds, {refused} refused with an error, {found} findings");
    found
}

/// Peak resident set size of this process (VmHWM), KiB.
fn peak_rss_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

fn corpus_sets(corpus: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.join("inventory.img").is_file()).collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// Mutates one file of the set at `dir`; returns what was done.
fn mutate_set(dir: &Path, rng: &mut Rng) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
    files.sort();
    let path = files[rng.below(files.len())].clone();
    let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    if rng.coin(40) {
        let _ = std::fs::remove_file(&path);
        return format!("removing {name}");
    }
    let mut data = std::fs::read(&path).unwrap_or_default();
    let is_pages = name.starts_with("pages-");
    let what = if !is_pages && data.len() >= 8 && !rng.coin(4) { mutate_entries(&mut data, rng) } else { mutate_bytes(&mut data, rng, is_pages) };
    std::fs::write(&path, &data).expect("writing the mutated file");
    format!("{what} in {name}")
}

const INTERESTING: [u64; 16] = [0, 1, 2, 7, 0xff, 0xfff, 0x1000, 0x1001, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0x1_0000_0000, 0x7fff_ffff_f000, 0x8000_0000_0000, i64::MAX as u64, u64::MAX];

fn interesting(rng: &mut Rng, old: u64) -> u64 {
    match rng.below(4) {
        0 => old.wrapping_add(1),
        1 => old.wrapping_sub(1),
        2 => old ^ (1 << rng.below(64)),
        _ => INTERESTING[rng.below(INTERESTING.len())],
    }
}

/// Raw mutations: bit flips, truncation, inserted or repeated bytes, an
/// interesting value over the header or a frame length.
fn mutate_bytes(d: &mut Vec<u8>, rng: &mut Rng, is_pages: bool) -> String {
    if d.is_empty() {
        d.extend_from_slice(&[rng.next() as u8; 9]);
        return "filling an empty file".into();
    }
    match rng.below(if is_pages { 3 } else { 6 }) {
        0 => {
            let n = rng.below(d.len() + 1);
            d.truncate(n);
            format!("truncation to {n} bytes")
        }
        1 => {
            let at = rng.below(d.len() + 1);
            let max = if rng.coin(8) { 8192 } else { 8 };
            let n = 1 + rng.below(max);
            let fill = rng.next() as u8;
            d.splice(at..at, std::iter::repeat_n(fill, n));
            format!("{n} bytes inserted at {at}")
        }
        2 => {
            let at = rng.below(8.min(d.len()));
            d[at] ^= 1 << rng.below(8);
            format!("bit flip in the header byte {at}")
        }
        3 => {
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(d.len());
                d[at] ^= 1 << rng.below(8);
            }
            "bit flips".into()
        }
        4 if d.len() >= 12 => {
            let v = interesting(rng, u64::from(u32::from_le_bytes([d[8], d[9], d[10], d[11]]))) as u32;
            d[8..12].copy_from_slice(&v.to_le_bytes());
            format!("first frame length {v}")
        }
        _ => {
            let at = rng.below(d.len());
            let n = rng.below(d.len() - at).min(4096);
            let chunk = d[at..at + n].to_vec();
            d.splice(at..at, chunk);
            format!("{n} bytes repeated at {at}")
        }
    }
}

/// Field-aware mutations of the framed protobuf entries of one file.
fn mutate_entries(d: &mut Vec<u8>, rng: &mut Rng) -> String {
    let Some(mut entries) = split_frames(&d[8..]) else { return mutate_bytes(d, rng, false) };
    if entries.is_empty() {
        entries.push(Vec::new());
    }
    let what = match rng.below(8) {
        0 if entries.len() >= 2 => swap_field(&mut entries, rng),
        1 => {
            let i = rng.below(entries.len());
            let e = entries[i].clone();
            entries.insert(i, e);
            format!("entry {i} repeated")
        }
        2 if entries.len() >= 2 => {
            let i = rng.below(entries.len());
            entries.remove(i);
            format!("entry {i} removed")
        }
        _ => {
            let i = rng.below(entries.len());
            format!("entry {i}: {}", mutate_message(&mut entries[i], rng, 0))
        }
    };
    let mut out = d[..8].to_vec();
    for e in entries {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(&e);
    }
    *d = out;
    what
}

fn split_frames(mut b: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut v = Vec::new();
    while !b.is_empty() {
        let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
        v.push(b.get(4..4 + len)?.to_vec());
        b = &b[4 + len..];
    }
    Some(v)
}

/// A protobuf field at the wire level.
#[derive(Clone, Debug)]
enum Val {
    Varint(u64),
    Fixed64(u64),
    Bytes(Vec<u8>),
    Fixed32(u32),
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let (&x, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(x & 0x7f).checked_shl(shift)?;
        if x & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn parse(mut b: &[u8]) -> Option<Vec<(u32, Val)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let (num, wt) = (u32::try_from(key >> 3).ok()?, key & 7);
        let val = match wt {
            0 => Val::Varint(varint(&mut b)?),
            1 => Val::Fixed64(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)),
            2 => {
                let n = usize::try_from(varint(&mut b)?).ok()?;
                Val::Bytes(b.get(..n)?.to_vec())
            }
            5 => Val::Fixed32(u32::from_le_bytes(b.get(..4)?.try_into().ok()?)),
            _ => return None,
        };
        b = &b[match &val {
            Val::Fixed64(_) => 8,
            Val::Fixed32(_) => 4,
            Val::Bytes(x) => x.len(),
            Val::Varint(_) => 0,
        }..];
        if num == 0 {
            return None;
        }
        out.push((num, val));
    }
    Some(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn encode(fields: &[(u32, Val)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (num, v) in fields {
        let wt = match v {
            Val::Varint(_) => 0,
            Val::Fixed64(_) => 1,
            Val::Bytes(_) => 2,
            Val::Fixed32(_) => 5,
        };
        put_varint(&mut out, u64::from(*num) << 3 | wt);
        match v {
            Val::Varint(x) => put_varint(&mut out, *x),
            Val::Fixed64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Val::Fixed32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Val::Bytes(x) => {
                put_varint(&mut out, x.len() as u64);
                out.extend_from_slice(x);
            }
        }
    }
    out
}

/// One mutation of one field of a message, perhaps inside a nested one.
fn mutate_message(msg: &mut Vec<u8>, rng: &mut Rng, depth: usize) -> String {
    let Some(mut fields) = parse(msg) else {
        let n = msg.len();
        if n > 0 {
            msg[rng.below(n)] ^= 1 << rng.below(8);
        }
        return "a bit flip in an unparsable message".into();
    };
    if fields.is_empty() {
        fields.push((1 + rng.below(60) as u32, Val::Varint(interesting(rng, 0))));
        *msg = encode(&fields);
        return "a field added to an empty message".into();
    }
    let i = rng.below(fields.len());
    let num = fields[i].0;
    let what = match (&mut fields[i].1, rng.below(10)) {
        (Val::Bytes(b), 0..=3) if depth < 4 && parse(b).is_some_and(|f| !f.is_empty()) => {
            let w = mutate_message(b, rng, depth + 1);
            format!("field {num} > {w}")
        }
        (_, 8) => {
            fields.remove(i);
            format!("field {num} dropped")
        }
        (_, 9) => {
            let f = fields[i].clone();
            let max = if rng.coin(10) { 1000 } else { 3 };
            let n = 1 + rng.below(max);
            for _ in 0..n {
                fields.insert(i, f.clone());
            }
            format!("field {num} repeated {n} times")
        }
        (Val::Varint(x), _) => {
            *x = interesting(rng, *x);
            format!("field {num} = {x}")
        }
        (Val::Fixed64(x), _) => {
            *x = interesting(rng, *x);
            format!("field {num} = {x}")
        }
        (Val::Fixed32(x), _) => {
            *x = interesting(rng, u64::from(*x)) as u32;
            format!("field {num} = {x}")
        }
        (Val::Bytes(b), _) => {
            match rng.below(3) {
                0 => b.truncate(rng.below(b.len() + 1)),
                1 => {
                    let max = if rng.coin(4) { 1 << 20 } else { 64 };
                    let (n, fill) = (rng.below(max), rng.next() as u8);
                    b.resize(b.len() + 1 + n, fill)
                }
                _ => b.clear(),
            }
            format!("field {num} now {} bytes", b.len())
        }
    };
    *msg = encode(&fields);
    what
}

/// Swaps the values of one varint field between two entries (ids of one
/// entry given to another).
fn swap_field(entries: &mut [Vec<u8>], rng: &mut Rng) -> String {
    let (a, b) = (rng.below(entries.len()), rng.below(entries.len()));
    let (Some(mut fa), Some(mut fb)) = (parse(&entries[a]), parse(&entries[b])) else { return "no swap (unparsable)".into() };
    let Some(ia) = (!fa.is_empty()).then(|| rng.below(fa.len())) else { return "no swap (empty)".into() };
    let num = fa[ia].0;
    let Some(ib) = fb.iter().position(|(n, _)| *n == num) else { return format!("no swap (field {num} only in entry {a})") };
    std::mem::swap(&mut fa[ia].1, &mut fb[ib].1);
    entries[a] = encode(&fa);
    entries[b] = encode(&fb);
    format!("field {num} swapped between entries {a} and {b}")
}

/// Keeps the first `max` pagemap entries of each process of the set at
/// `dir`, and their pages.
fn shrink(dir: &Path, max: usize) -> anyhow::Result<()> {
    let entries: Vec<images::pb::PstreeEntry> = images::read_entries(&dir.join("pstree.img"), Kind::Pstree)?;
    for e in entries {
        let pm_path = dir.join(format!("pagemap-{}.img", e.pid));
        if !pm_path.exists() {
            continue;
        }
        let mut pm: Vec<images::pb::PagemapEntry> = images::read_entries(&pm_path, Kind::Pagemap)?;
        pm.truncate(max);
        // The content of the pages is never read by planning: keep a few per run.
        pm.iter_mut().for_each(|p| p.nr_pages = p.nr_pages.min(4));
        let mut w = ImageWriter::new(std::fs::File::create(&pm_path)?, Kind::Pagemap)?;
        for m in &pm {
            w.push(m)?;
        }
        w.finish()?;
        let pages: u64 = pm.iter().map(|p| u64::from(p.nr_pages)).sum();
        let f = std::fs::OpenOptions::new().write(true).open(dir.join(format!("pages-{}.img", e.pid)))?;
        f.set_len(images::PAGES_DATA_OFFSET + pages * images::PAGE_SIZE)?;
        f.sync_all()?;
    }
    Ok(())
}
