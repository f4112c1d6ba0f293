//! Minimal logging: messages go to stderr or to the `-o` log file, with a
//! verbosity level set by `-v`.
use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

struct Logger {
    level: u8,
    file: Option<Mutex<File>>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Sets the log destination and level; call once from `main`.
pub fn init(path: Option<&Path>, verbose: u8) -> Result<()> {
    let file = match path {
        Some(p) => Some(Mutex::new(
            File::options().create(true).append(true).open(p).with_context(|| format!("opening log file {}", p.display()))?,
        )),
        None => None,
    };
    let _ = LOGGER.set(Logger { level: verbose, file });
    Ok(())
}

fn emit(level: u8, tag: &str, msg: &str) {
    let (lv, file) = match LOGGER.get() {
        Some(l) => (l.level, l.file.as_ref()),
        None => (0, None),
    };
    if level > lv {
        return;
    }
    let line = format!("rcr: {tag}{msg}\n");
    match file {
        Some(f) => {
            if let Ok(mut f) = f.lock() {
                let _ = f.write_all(line.as_bytes());
            }
            // Errors also reach the terminal.
            if level == 0 && tag == "error: " {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

pub fn error(msg: &str) {
    emit(0, "error: ", msg);
}

pub fn warn(msg: &str) {
    emit(0, "warning: ", msg);
}

/// Shown with -v.
pub fn info(msg: &str) {
    emit(1, "", msg);
}
/// Shown with -vv.
pub fn debug(msg: &str) {
    emit(2, "", msg);
}
