//! `rcr check`: does this kernel have what rcr needs?
use anyhow::Result;

struct Probe {
    name: &'static str,
    ok: bool,
    detail: String,
}

fn exists(p: &str) -> bool {
    std::path::Path::new(p).exists()
}

/// Prints one line per requirement; returns 0 if all hold, 1 otherwise.
pub fn run() -> Result<i32> {
    let me = std::process::id();
    let effective = caps::read(None, caps::CapSet::Effective).unwrap_or_default();
    let has = |c: caps::Capability| effective.contains(&c);
    let probes = vec![
        Probe { name: "running as root", ok: nix::unistd::geteuid().is_root(), detail: "ptrace, clone3 set_tid and PR_SET_MM_MAP need it".into() },
        Probe {
            name: "CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE",
            ok: has(caps::Capability::CAP_SYS_ADMIN) || has(caps::Capability::CAP_CHECKPOINT_RESTORE),
            detail: "for clone3 set_tid and PR_SET_MM_MAP".into(),
        },
        Probe { name: "CAP_SYS_PTRACE", ok: has(caps::Capability::CAP_SYS_PTRACE), detail: "to seize processes".into() },
        Probe { name: "/proc/PID/map_files", ok: exists(&format!("/proc/{me}/map_files")), detail: "CONFIG_CHECKPOINT_RESTORE".into() },
        Probe { name: "/proc/PID/pagemap", ok: exists(&format!("/proc/{me}/pagemap")), detail: "which pages are present".into() },
        Probe { name: "/proc/sys/kernel/ns_last_pid", ok: exists("/proc/sys/kernel/ns_last_pid"), detail: "CONFIG_CHECKPOINT_RESTORE".into() },
        Probe { name: "XSAVE enabled", ok: crate::arch::cur::xcr0() != 0, detail: format!("XCR0 {:#x}", crate::arch::cur::xcr0()) },
        vdso_probe(),
    ];
    let mut all = true;
    for p in &probes {
        all &= p.ok;
        println!("{:<4} {:<42} {}", if p.ok { "ok" } else { "FAIL" }, p.name, p.detail);
    }
    println!("{}", if all { "Looks good." } else { "Some requirements are missing." });
    Ok(if all { 0 } else { 1 })
}

fn vdso_probe() -> Probe {
    let maps = crate::proc::maps(std::process::id() as i32).unwrap_or_default();
    let layout: Vec<String> = maps
        .iter()
        .filter(|m| m.name.starts_with("[v") && m.name != "[vsyscall]")
        .map(|m| format!("{} {}K", m.name, (m.end - m.start) / 1024))
        .collect();
    Probe { name: "vDSO layout", ok: maps.iter().any(|m| m.name == "[vdso]"), detail: layout.join(", ") }
}
