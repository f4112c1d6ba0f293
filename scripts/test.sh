#!/usr/bin/env bash
# Builds rcr and runs all its tests (cargo test --release) on Debian 12 or
# similar, x86-64. Installs what the tests need first: gcc and the C
# library headers (build-essential), and a Rust toolchain through rustup
# if none >= MIN_RUST is usable. Exits with the status of cargo test.
#
# Usage: sudo scripts/test.sh [extra cargo test arguments]
#
# Root is needed: the tests checkpoint and restore real processes.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MIN_RUST=1.85

die() { echo "test.sh: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    die "must run as root (the tests use ptrace and restore processes under their old PIDs): sudo $0"
fi

apt_install() {
    echo "test.sh: installing $* (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

rust_ok() {
    command -v cargo >/dev/null && command -v rustc >/dev/null || return 1
    local v
    v=$(rustc --version | awk '{print $2}')
    [ "$(printf '%s\n%s\n' "$MIN_RUST" "$v" | sort -V | head -n1)" = "$MIN_RUST" ]
}

ensure_tools() {
    export PATH="$HOME/.cargo/bin:$PATH"
    local pkgs=()
    { command -v gcc >/dev/null && command -v make >/dev/null && [ -e /usr/include/stdio.h ]; } || pkgs+=(build-essential)
    rust_ok || command -v curl >/dev/null || pkgs+=(curl ca-certificates)
    if [ ${#pkgs[@]} -gt 0 ]; then apt_install "${pkgs[@]}"; fi
    if ! rust_ok; then
        echo "test.sh: installing a Rust toolchain (rustup, stable, minimal profile) into $HOME/.cargo"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y -q --profile minimal
        rust_ok || die "no Rust toolchain >= $MIN_RUST after installing rustup"
    fi
    local host objcopy
    host=$(rustc -vV | sed -n 's/^host: //p')
    objcopy="$(rustc --print sysroot)/lib/rustlib/$host/bin/rust-objcopy"
    if [ ! -x "$objcopy" ]; then
        command -v rustup >/dev/null || die "rust-objcopy missing ($objcopy) and no rustup to add llvm-tools"
        rustup component add llvm-tools
    fi
}

ensure_tools
echo "test.sh: gcc $(gcc -dumpfullversion), $(rustc --version), kernel $(uname -r)"
cd "$REPO"
exec cargo test --release "$@"
