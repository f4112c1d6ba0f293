//! `rcr` command line: parses arguments and dispatches to the library.
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "rcr", version, about = "Checkpoint/restore for Linux processes")]
struct Cli {
    /// Write the log to this file instead of stderr (CRIU's -o).
    #[arg(short = 'o', long = "log-file", global = true)]
    log_file: Option<PathBuf>,
    /// More log output; repeat for more (CRIU's -v).
    #[arg(short = 'v', action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Checkpoint a process into an image directory.
    Dump {
        /// PID of the process to dump.
        #[arg(short = 't', long = "tree")]
        pid: i32,
        /// Image directory (created if missing).
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Leave the process running after the dump instead of killing it.
        #[arg(short = 'R', long = "leave-running")]
        leave_running: bool,
        /// How pages leave the process: the parasite writes them to the
        /// image (write), vmsplices them to rcr (splice), or rcr reads them
        /// from outside (readv, the fallback).
        #[arg(long = "pages-via", value_enum, default_value_t = rcr::dump::PagesVia::Write)]
        pages_via: rcr::dump::PagesVia,
        /// What to dump: the process and all its descendants (tree), or
        /// the process alone (process).
        #[arg(long = "scope", value_enum, default_value_t = rcr::tree::Scope::Tree)]
        scope: rcr::tree::Scope,
        /// Allow unix datagram sockets connected to a named socket outside
        /// the dumped tree (restore connects them to that name again).
        /// Stream and seqpacket peers outside the tree are refused still.
        #[arg(long = "ext-unix-sk")]
        ext_unix_sk: bool,
        /// Most bytes of content saved per memfd or deleted-but-open file
        /// (their data, holes excepted); a larger one fails the dump.
        #[arg(long = "ghost-limit", default_value_t = rcr::files::memfd::DEFAULT_LIMIT)]
        ghost_limit: u64,
        /// A shell job: the tree runs in a terminal (and session) outside
        /// it; fds on that terminal are saved as "the restoring terminal".
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Carry established TCP connections (TCP_REPAIR); without it a
        /// tree with one is refused. Traffic on them is blocked from the
        /// dump until the restore (network lock).
        #[arg(long = "tcp-established")]
        tcp_established: bool,
        /// Compress the pages with zstd (off by default) at LEVEL (1-19;
        /// 1 if not given) into pages-PID.img.zst, on every core; rcr then
        /// reads the pages itself (process_vm_readv). Restore decompresses
        /// them without being asked.
        #[arg(long = "compress", value_name = "LEVEL", num_args = 0..=1, require_equals = true, default_missing_value = "1",
              value_parser = clap::value_parser!(i32).range(1..=19))]
        compress: Option<i32>,
    },
    /// Restore a process from an image directory.
    Restore {
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Return once the process runs instead of waiting for it.
        #[arg(short = 'd', long = "restore-detached")]
        detached: bool,
        /// Write the PID of the restored process to this file.
        #[arg(long = "pidfile")]
        pidfile: Option<PathBuf>,
        /// Connect unix datagram sockets whose peer was outside the dumped
        /// tree to that peer's name again (see dump --ext-unix-sk).
        #[arg(long = "ext-unix-sk")]
        ext_unix_sk: bool,
        /// Restore a shell job (dumped with -j) into the terminal rcr runs
        /// in, as the foreground job.
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Restore established TCP connections (dumped with --tcp-established).
        #[arg(long = "tcp-established")]
        tcp_established: bool,
    },
    /// Print an image set in readable form (like CRIU's crit).
    Show {
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Report whether this kernel has what rcr needs.
    Check,
    /// Internal: the dump's watchdog (started by `rcr dump` itself).
    #[command(name = "__watchdog", hide = true)]
    Watchdog,
}

fn main() {
    rcr::stats::start();
    let cli = Cli::parse();
    if let Err(e) = rcr::log::init(cli.log_file.as_deref(), cli.verbose) {
        eprintln!("rcr: {e:#}");
        std::process::exit(1);
    }
    let result = match cli.cmd {
        Cmd::Dump { pid, dir, leave_running, pages_via, scope, ext_unix_sk, ghost_limit, shell_job, tcp_established, compress } => {
            let o = rcr::dump::Options { pid, dir, leave_running, pages_via, scope, ext_unix_sk, ghost_limit, shell_job, tcp_established, compress };
            rcr::dump::run(&o).map(|()| 0)
        }
        Cmd::Restore { dir, detached, pidfile, ext_unix_sk, shell_job, tcp_established } => {
            rcr::restore::run(&rcr::restore::Options { dir, detached, pidfile, ext_unix_sk, shell_job, tcp_established })
        }
        Cmd::Show { dir, json } => rcr::show::run(&dir, json).map(|()| 0),
        Cmd::Check => rcr::check::run(),
        Cmd::Watchdog => rcr::dump::watchdog::main(),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            rcr::log::error(&format!("{e:#}"));
            std::process::exit(1);
        }
    }
}
