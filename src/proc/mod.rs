//! Parsers for the /proc files rcr reads.
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::PathBuf;

pub fn path(pid: i32, rest: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{rest}"))
}

pub fn read_string(pid: i32, rest: &str) -> Result<String> {
    let p = path(pid, rest);
    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
}

/// The fields of /proc/PID/stat rcr uses (proc(5) numbering in comments).
#[derive(Debug, Default, Clone)]
pub struct Stat {
    pub comm: String,     // (2)
    pub state: char,      // (3)
    pub ppid: i32,        // (4)
    pub pgrp: i32,        // (5)
    pub session: i32,     // (6)
    pub tty_nr: u32,      // (7) controlling terminal, device number in the kernel's encoding (0: none)
    pub tpgid: i32,       // (8) foreground process group of that terminal (-1: none)
    pub num_threads: i64, // (20)
    pub start_code: u64,  // (26)
    pub end_code: u64,    // (27)
    pub start_stack: u64, // (28)
    pub start_data: u64,  // (45)
    pub end_data: u64,    // (46)
    pub start_brk: u64,   // (47)
    pub arg_start: u64,   // (48)
    pub arg_end: u64,     // (49)
    pub env_start: u64,   // (50)
    pub env_end: u64,     // (51)
    pub exit_code: i32,   // (52) wait status of a zombie
}

pub fn stat(pid: i32) -> Result<Stat> {
    let s = read_string(pid, "stat")?;
    parse_stat(&s).with_context(|| format!("parsing /proc/{pid}/stat"))
}

fn parse_stat(s: &str) -> Result<Stat> {
    let open = s.find('(').context("no '('")?;
    let close = s.rfind(')').context("no ')'")?;
    let comm = s[open + 1..close].to_string();
    // Fields from (3) on, so field n is rest[n - 3].
    let rest: Vec<&str> = s[close + 1..].split_whitespace().collect();
    if rest.len() < 49 {
        bail!("only {} fields", rest.len() + 2);
    }
    let f = |n: usize| -> Result<u64> { rest[n - 3].parse::<u64>().with_context(|| format!("field {n}")) };
    let i = |n: usize| -> Result<i64> { rest[n - 3].parse::<i64>().with_context(|| format!("field {n}")) };
    Ok(Stat {
        comm,
        state: rest[0].chars().next().unwrap_or('?'),
        ppid: i(4)? as i32,
        pgrp: i(5)? as i32,
        session: i(6)? as i32,
        tty_nr: i(7)? as u32,
        tpgid: i(8)? as i32,
        num_threads: i(20)?,
        start_code: f(26)?,
        end_code: f(27)?,
        start_stack: f(28)?,
        start_data: f(45)?,
        end_data: f(46)?,
        start_brk: f(47)?,
        arg_start: f(48)?,
        arg_end: f(49)?,
        env_start: f(50)?,
        env_end: f(51)?,
        exit_code: rest.get(52 - 3).and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

/// /proc/PID/status as key → value.
pub fn status(pid: i32) -> Result<HashMap<String, String>> {
    let s = read_string(pid, "status")?;
    Ok(s.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

pub fn status_hex(st: &HashMap<String, String>, key: &str) -> Result<u64> {
    let v = st.get(key).with_context(|| format!("no {key} in status"))?;
    u64::from_str_radix(v, 16).with_context(|| format!("status {key}: {v}"))
}

/// One line of /proc/PID/smaps with the parts rcr needs.
#[derive(Debug, Clone, Default)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub perms: String, // "rw-p"
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    pub name: String,
    pub vm_flags: Vec<String>,
}

impl MapEntry {
    pub fn shared(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b's')
    }
    pub fn has_flag(&self, f: &str) -> bool {
        self.vm_flags.iter().any(|x| x == f)
    }
    pub fn describe(&self) -> String {
        format!("{:#x}-{:#x} {} {}", self.start, self.end, self.perms, self.name)
    }
}

/// Parses /proc/PID/smaps (maps lines plus their VmFlags).
pub fn smaps(pid: i32) -> Result<Vec<MapEntry>> {
    let s = read_string(pid, "smaps")?;
    parse_smaps(&s).with_context(|| format!("parsing /proc/{pid}/smaps"))
}

fn parse_smaps(s: &str) -> Result<Vec<MapEntry>> {
    let mut out: Vec<MapEntry> = Vec::new();
    for line in s.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.vm_flags = flags.split_whitespace().map(str::to_string).collect();
            }
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            out.push(parse_maps_line(line).with_context(|| format!("line {line:?}"))?);
        }
    }
    Ok(out)
}

pub fn parse_maps_line(line: &str) -> Result<MapEntry> {
    let mut it = line.splitn(6, ' ');
    let range = it.next().context("range")?;
    let perms = it.next().context("perms")?.to_string();
    let offset = u64::from_str_radix(it.next().context("offset")?, 16)?;
    let dev = it.next().context("dev")?;
    let inode = it.next().context("inode")?.parse()?;
    let name = it.next().unwrap_or("").trim_start().to_string();
    let (a, b) = range.split_once('-').context("range")?;
    let (ma, mi) = dev.split_once(':').context("dev")?;
    Ok(MapEntry {
        start: u64::from_str_radix(a, 16)?,
        end: u64::from_str_radix(b, 16)?,
        perms,
        offset,
        dev_major: u32::from_str_radix(ma, 16)?,
        dev_minor: u32::from_str_radix(mi, 16)?,
        inode,
        name,
        vm_flags: Vec::new(),
    })
}

/// Parses /proc/PID/maps (no VmFlags).
pub fn maps(pid: i32) -> Result<Vec<MapEntry>> {
    read_string(pid, "maps")?.lines().map(parse_maps_line).collect()
}

/// /proc/PID/fdinfo/FD: pos, flags (octal), mnt_id, ino.
#[derive(Debug, Clone, Default)]
pub struct FdInfo {
    pub pos: u64,
    pub flags: u32,
    /// The whole file, for the kind-specific lines (eventfd-count, tfd...).
    pub text: String,
}

pub fn fdinfo(pid: i32, fd: i32) -> Result<FdInfo> {
    let s = read_string(pid, &format!("fdinfo/{fd}"))?;
    let mut info = FdInfo { text: s.clone(), ..Default::default() };
    for l in s.lines() {
        if let Some(v) = l.strip_prefix("pos:") {
            info.pos = v.trim().parse().with_context(|| format!("fdinfo {fd} pos"))?;
        } else if let Some(v) = l.strip_prefix("flags:") {
            info.flags = u32::from_str_radix(v.trim(), 8).with_context(|| format!("fdinfo {fd} flags"))?;
        }
    }
    Ok(info)
}

/// The open fd numbers of a process, sorted.
pub fn fds(pid: i32) -> Result<Vec<i32>> {
    let p = path(pid, "fd");
    let mut v = Vec::new();
    for e in std::fs::read_dir(&p).with_context(|| format!("listing {}", p.display()))? {
        let name = e?.file_name();
        if let Some(n) = name.to_str().and_then(|s| s.parse().ok()) {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// Thread ids of a process.
pub fn threads(pid: i32) -> Result<Vec<i32>> {
    let p = path(pid, "task");
    let mut v = Vec::new();
    for e in std::fs::read_dir(&p).with_context(|| format!("listing {}", p.display()))? {
        if let Some(n) = e?.file_name().to_str().and_then(|s| s.parse().ok()) {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// Children of a thread group (all threads' children files).
pub fn children(pid: i32) -> Result<Vec<i32>> {
    let mut v = Vec::new();
    for t in threads(pid)? {
        let s = read_string(pid, &format!("task/{t}/children"))?;
        v.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let mut fields = vec!["0"; 52];
        fields[26] = "4096";
        let line = format!("42 (a) b) c) S 1 42 42 {}", fields[7..].join(" "));
        let st = parse_stat(&line).unwrap();
        assert_eq!(st.comm, "a) b) c");
        assert_eq!(st.ppid, 1);
        assert_eq!(st.pgrp, 42);
    }

    #[test]
    fn smaps_lines_and_flags() {
        let s = "00400000-00401000 r-xp 00001000 fd:01 1234    /usr/bin/x y\nSize: 4 kB\nVmFlags: rd ex mr mw me\n7ffd0000-7ffd2000 rw-p 00000000 00:00 0                          [stack]\nVmFlags: rd wr gd\n";
        let m = parse_smaps(s).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "/usr/bin/x y");
        assert_eq!(m[0].offset, 0x1000);
        assert_eq!((m[0].dev_major, m[0].dev_minor, m[0].inode), (0xfd, 1, 1234));
        assert!(m[1].has_flag("gd"));
        assert_eq!(m[1].name, "[stack]");
    }
}
