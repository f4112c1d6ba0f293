#!/usr/bin/env bash
# Builds rcr and runs all its tests (cargo test --release) on Debian 12 or
# similar, x86-64. Installs what the tests need first: gcc and the C
# library headers (build-essential), nftables, tmux and redis (see
# tools.sh), and a Rust toolchain through rustup
# if none >= MIN_RUST is usable. Runs cargo test, then a smoke run of the
# benchmark suite (scripts/bench --quick --selftest), the image fuzzer
# for 20 s (scripts/fuzz) and the soak (scripts/soak: 200 dumps and
# restores of one running tree). Exits non-zero if any fails.
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
cargo test --release "$@"
# The benchmark suite at small sizes, one run each (a few seconds): every
# case must dump, restore and pass its own check, so the suite cannot rot.
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
BENCH_OUT="$out" scripts/bench --quick --selftest >"$out/log" 2>&1 || { cat "$out/log"; die "scripts/bench --quick --selftest failed"; }
echo "test.sh: scripts/bench --quick --selftest passed"
# The soak: the same running tree dumped and restored 200 times (about a
# minute), its state and leaks checked after every round.
scripts/soak 200 || die "scripts/soak failed"
# The image fuzzer for a short fixed time: a panic, hang or runaway memory
# on a mutated image set fails the run (the input is kept in tests/fuzz/crashes/).
scripts/fuzz 20 >"$out/fuzz" 2>&1 || { cat "$out/fuzz"; die "scripts/fuzz found a crash (see tests/fuzz/crashes/)"; }
tail -n 1 "$out/fuzz"
