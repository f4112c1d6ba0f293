#!/usr/bin/env bash
# Builds rcr and runs all its tests (cargo test --release) on Debian 12 or
# similar, x86-64. Installs what the tests need first: gcc and the C
# library headers (build-essential), nftables, tmux and redis (see
# tools.sh), and a Rust toolchain through rustup
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

# shellcheck source=scripts/tools.sh
. "$REPO/scripts/tools.sh"

ensure_tools
ensure_test_tools
echo "test.sh: gcc $(gcc -dumpfullversion), $(rustc --version), kernel $(uname -r)"
cd "$REPO"
exec cargo test --release "$@"
