//! Build script: generates the image types from `proto/` and builds the
//! two blobs (restorer and parasite) into flat, checked, embeddable binaries.
//!
//! Protobuf: `protox` parses the schema in pure Rust, so `cargo build`
//! needs no `protoc` on the machine and no generated code is checked in.
//!
//! Blob: a second cargo invocation builds `restorer-blob/` for the host
//! target with its own target dir and RUSTFLAGS (PIE, no start files, no
//! libc, static-pie, our linker script), then `rust-objcopy -O binary`
//! flattens it. Before embedding, the ELF is checked with goblin: no
//! dynamic relocations (the blob runs wherever it is put, unpatched), no
//! undefined symbols (no hidden libc calls), no writable data that would
//! be lost by flattening; the entry and exported symbol offsets are taken
//! from the ELF and written to `blobs.rs`.
use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    build_protos(&out);
    let mut consts = String::new();
    build_blob(&out, "restorer-blob", "restorer", &["__rcr_blob_entry", "__rcr_syscall_insn"], &mut consts);
    build_blob(&out, "parasite", "parasite", &["__rcr_blob_entry"], &mut consts);
    std::fs::write(out.join("blobs.rs"), consts).expect("write blobs.rs");
}

fn build_protos(out: &Path) {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/rcr.proto"], ["proto"]).expect("parse proto/rcr.proto");
    let mut cfg = prost_build::Config::new();
    cfg.type_attribute(".", "#[derive(serde::Serialize)]");
    cfg.field_attribute("rcr.images.TaskCore.xsave", "#[serde(serialize_with = \"crate::images::serde_hex\")]");
    cfg.field_attribute("rcr.images.PendingSignal.siginfo", "#[serde(serialize_with = \"crate::images::serde_hex\")]");
    cfg.field_attribute("rcr.images.ThreadCore.xsave", "#[serde(serialize_with = \"crate::images::serde_hex\")]");
    cfg.field_attribute("rcr.images.PipeEntry.data", "#[serde(serialize_with = \"crate::images::serde_hex\")]");
    cfg.field_attribute("rcr.images.SeccompFilter.insns", "#[serde(serialize_with = \"crate::images::serde_hex\")]");
    cfg.out_dir(out);
    cfg.compile_fds(fds).expect("generate image types");
}

fn find_tool(name: &str) -> PathBuf {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc).args(["--print", "sysroot"]).output().expect("rustc --print sysroot");
    let sysroot = String::from_utf8(sysroot.stdout).expect("sysroot utf-8");
    let host = env::var("HOST").expect("HOST");
    let p = Path::new(sysroot.trim()).join("lib/rustlib").join(host).join("bin").join(name);
    assert!(p.exists(), "{} not found in the Rust toolchain ({})", name, p.display());
    p
}

fn build_blob(out: &Path, dir: &str, bin: &str, exports: &[&str], consts: &mut String) {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let crate_dir = manifest_dir.join(dir);
    println!("cargo:rerun-if-changed={}", crate_dir.join("src").display());

    println!("cargo:rerun-if-changed={}", crate_dir.join("Cargo.toml").display());
    println!("cargo:rerun-if-changed=abi/src");
    println!("cargo:rerun-if-changed=abi/blob.ld");
    let target_dir = out.join(format!("{dir}-target"));
    // One linker script for both blobs (entry first, flat): part of the ABI.
    let script = manifest_dir.join("abi/blob.ld");
    let flags = [
        "-Crelocation-model=pie".to_string(),
        "-Cpanic=abort".to_string(),
        "-Clink-arg=-nostartfiles".to_string(),
        "-Clink-arg=-nostdlib".to_string(),
        "-Clink-arg=-static-pie".to_string(),
        "-Clink-arg=-Wl,--no-dynamic-linker".to_string(),
        "-Clink-arg=-Wl,-z,norelro".to_string(),
        "-Clink-arg=-Wl,--build-id=none".to_string(),
        format!("-Clink-arg=-Wl,-T,{}", script.display()),
    ];
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let host = env::var("HOST").expect("HOST");
    let status = Command::new(cargo)
        .args(["build", "--release", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .args(["--target", &host, "--target-dir"])
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\u{1f}"))
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .status()
        .expect("run cargo for the blob");
    assert!(status.success(), "building {dir} failed");

    let elf_path = target_dir.join(&host).join("release").join(bin);
    let elf_bytes = std::fs::read(&elf_path).expect("read blob ELF");
    let layout = check_blob_elf(dir, &elf_bytes, exports);

    let flat = out.join(format!("{bin}.bin"));
    let status = Command::new(find_tool("rust-objcopy"))
        .args(["-O", "binary"])
        .arg(&elf_path)
        .arg(&flat)
        .status()
        .expect("run rust-objcopy");
    assert!(status.success(), "objcopy of {dir} failed");
    let flat_len = std::fs::metadata(&flat).expect("flat blob").len();
    assert!(flat_len <= layout.mem_size, "{dir}: flat image larger than its memory image");

    let up = bin.to_uppercase();
    writeln!(consts, "/// Flat image of `{dir}/`.").unwrap();
    writeln!(consts, "pub static {up}_BLOB: &[u8] = include_bytes!({:?});", flat.display().to_string()).unwrap();
    writeln!(consts, "/// Bytes the blob occupies in memory (code, data and zeroed bss).").unwrap();
    writeln!(consts, "pub const {up}_MEM_SIZE: usize = {};", layout.mem_size).unwrap();
    writeln!(consts, "pub const {up}_ENTRY: usize = {};", layout.entry).unwrap();
    for (name, off) in &layout.symbols {
        let cname = format!("{up}_{}", name.trim_start_matches('_').to_uppercase().replace("RCR_", ""));
        writeln!(consts, "pub const {cname}: usize = {off};").unwrap();
    }
}

struct BlobLayout {
    entry: u64,
    mem_size: u64,
    symbols: Vec<(String, u64)>,
}

fn check_blob_elf(dir: &str, bytes: &[u8], exports: &[&str]) -> BlobLayout {
    use goblin::elf::{program_header::PT_LOAD, section_header::SHT_RELA, Elf};
    let elf = Elf::parse(bytes).unwrap_or_else(|e| panic!("{dir}: not an ELF: {e}"));
    let relocs = elf.dynrelas.len() + elf.dynrels.len() + elf.pltrelocs.len();
    assert!(
        relocs == 0,
        "{dir}: the blob has {relocs} dynamic relocations; it must be position independent without \
         patching (no statics holding addresses, no formatting, no panics)"
    );
    for sh in &elf.section_headers {
        let name = elf.shdr_strtab.get_at(sh.sh_name).unwrap_or("?");
        assert!(
            !(sh.sh_type == SHT_RELA && sh.sh_flags & u64::from(goblin::elf::section_header::SHF_ALLOC) != 0),
            "{dir}: allocated relocation section {name}"
        );
        assert!(!name.starts_with(".got") && name != ".plt", "{dir}: unexpected section {name} (GOT/PLT use)");
    }
    let mut undefined = Vec::new();
    for sym in elf.syms.iter().chain(elf.dynsyms.iter()) {
        let name = elf.strtab.get_at(sym.st_name).or_else(|| elf.dynstrtab.get_at(sym.st_name)).unwrap_or("");
        if sym.st_shndx == 0 && !name.is_empty() {
            undefined.push(name.to_string());
        }
    }
    assert!(undefined.is_empty(), "{dir}: undefined symbols (hidden libc calls?): {undefined:?}");
    let loads: Vec<_> = elf.program_headers.iter().filter(|p| p.p_type == PT_LOAD).collect();
    assert!(!loads.is_empty(), "{dir}: no PT_LOAD segment");
    assert!(loads[0].p_vaddr == 0, "{dir}: first segment does not start at 0");
    let mem_size = loads.iter().map(|p| p.p_vaddr + p.p_memsz).max().unwrap_or(0);
    let mut symbols = Vec::new();
    for want in exports {
        let off = elf
            .syms
            .iter()
            .find(|s| elf.strtab.get_at(s.st_name) == Some(want))
            .map(|s| s.st_value)
            .unwrap_or_else(|| panic!("{dir}: exported symbol {want} missing"));
        symbols.push((want.to_string(), off));
    }
    assert!(elf.entry == symbols.first().map(|s| s.1).unwrap_or(u64::MAX) || exports.is_empty() || elf.entry < mem_size);
    assert!(elf.entry == 0, "{dir}: entry is at {:#x}, the linker script must put it first", elf.entry);
    BlobLayout { entry: elf.entry, mem_size, symbols }
}
