#!/usr/bin/env bash
# Dump throughput of rcr for each way pages can leave the process:
#   readv  = "foundation": rcr reads the memory from outside (process_vm_readv)
#   write  = the injected parasite write()s its own memory into the image file
#   splice = the parasite vmsplice()s into a pipe, rcr splice()s into the file
# One victim of BENCH_MIB MiB (default 1024), every page non-zero, is dumped
# with -R (left running) BENCH_REPS times (default 5) per path, into a
# private tmpfs. Each whole `rcr dump` is timed (fork to exit, monotonic
# clock); medians are printed, GB/s = BENCH_MIB MiB / 1e9 / seconds.
#
# The machine is shared and noisy, and tmpfs speed depends on whether its
# pages were freed moments ago ("hot") or not (MACHINE-FACTS.md), so:
#   - paths are interleaved per round (readv, write, splice, readv, ...);
#   - every timed run starts right after the previous 1 GiB image was
#     deleted, so each gets hot pages alike;
#   - the baselines (tmpfs write and read, memcpy; bench-victim.c) run in
#     the same rounds, under the same conditions;
#   - a 1 MiB victim is dumped too: its time is the fixed cost of a dump
#     (ptrace, parasite, /proc parsing, images other than pages).
#
# Usage: sudo scripts/bench-dump.sh     (env: BENCH_MIB, BENCH_REPS)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MIB=${BENCH_MIB:-1024}
REPS=${BENCH_REPS:-5}
PATHS=(readv write splice)
declare -A NAME=([readv]="foundation (process_vm_readv)" [write]="parasite write"
                 [splice]="parasite vmsplice+splice")

die() { echo "bench-dump.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (rcr ptraces the victim): sudo $0"
command -v gcc >/dev/null || die "gcc missing: apt-get install build-essential"
command -v cargo >/dev/null || die "cargo missing: install Rust (scripts/test.sh does it)"
[[ $MIB =~ ^[1-9][0-9]*$ && $REPS =~ ^[1-9][0-9]*$ ]] || die "BENCH_MIB and BENCH_REPS must be positive integers"

W=$(mktemp -d /tmp/rcr-bench.XXXXXX)
IMG=$W/img          # private tmpfs: the image directory and the baseline file
B=$W/bench-victim
VICTIMS=()

# Kill only the victims we started, by PID, and only while they still run our binary.
cleanup() {
    local p
    for p in "${VICTIMS[@]}"; do
        if [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$B" ]; then kill -KILL "$p" 2>/dev/null || true; fi
        wait "$p" 2>/dev/null || true
    done
    if mountpoint -q "$IMG"; then umount "$IMG"; fi
    rm -rf "$W" "/dev/shm/rcr-bench-$$"
}
trap cleanup EXIT

echo "building rcr (cargo build --release) and the victim (gcc)" >&2
(cd "$REPO" && cargo build --release -q)
RCR=$(cd "$REPO" && realpath -m "${CARGO_TARGET_DIR:-target}")/release/rcr
[ -x "$RCR" ] || die "no rcr binary at $RCR"
gcc -O2 -Wall -o "$B" "$REPO/scripts/bench-victim.c"

# Room for one image and the baseline file at once, plus slack. Where
# mounting is not allowed, /dev/shm (also tmpfs) does.
mkdir "$IMG"
if ! mount -t tmpfs -o size=$((2 * MIB + 256))m,mode=0700 rcr-bench "$IMG" 2>/dev/null; then
    IMG=/dev/shm/rcr-bench-$$
    mkdir -m 0700 "$IMG"
fi

# start_victim MIB: starts a victim, waits for READY, sets VPID.
start_victim() {
    "$B" victim "$1" </dev/null >"$W/victim-$1.out" 2>&1 &
    VPID=$!
    VICTIMS+=("$VPID")
    local i
    for ((i = 0; i < 600; i++)); do   # up to 60 s
        grep -q READY "$W/victim-$1.out" && return 0
        kill -0 "$VPID" 2>/dev/null || die "victim ($1 MiB) died: $(cat "$W/victim-$1.out")"
        sleep 0.1
    done
    die "victim ($1 MiB) not READY after 60 s"
}

# dump PID PATH LOG: one timed dump into a fresh $IMG/dump; prints seconds.
dump() {
    rm -rf "$IMG/dump"
    "$B" time 300 "$RCR" dump -t "$1" -D "$IMG/dump" -R --pages-via "$2" -v 2>"$3" \
        || die "rcr dump --pages-via $2 of pid $1 failed; its log:"$'\n'"$(tail -20 "$3")"
}

median() { sort -g | awk 'NF {v[++n] = $1} END {print (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2}'; }
gbs() { awk -v s="$1" -v m="$MIB" 'BEGIN {printf "%.2f", m * 1048576 / 1e9 / s}'; }

start_victim "$MIB"; BIG=$VPID
start_victim 1;      TINY=$VPID

# Round 0 is a warm-up (first dumps and first tmpfs fills run slower); it is
# shown but left out of the medians.
declare -A T        # T[path] / T[tiny-path] / T[bw] ...: one time per line
for ((r = 0; r <= REPS; r++)); do
    rm -rf "$IMG/dump"
    read -r bw br bm < <("$B" baseline "$MIB" "$IMG/baseline")
    T[bw]+="$bw"$'\n' T[br]+="$br"$'\n' T[bm]+="$bm"$'\n'
    line=$(printf 'round %d: tmpfs write %.3f read %.3f memcpy %.3f |' "$r" "$bw" "$br" "$bm")
    for p in "${PATHS[@]}"; do
        s=$(dump "$BIG" "$p" "$W/$p.log")
        T[$p]+="$s"$'\n'
        line+=$(printf ' %s %.3f' "$p" "$s")
    done
    line+=" | 1 MiB:"
    for p in "${PATHS[@]}"; do
        s=$(dump "$TINY" "$p" "$W/tiny-$p.log")
        T[tiny-$p]+="$s"$'\n'
        line+=$(printf ' %s %.4f' "$p" "$s")
    done
    echo "$line" >&2
    if [ "$r" -eq 0 ]; then T=(); fi
done

echo
echo "rcr dump throughput, $MIB MiB process, tmpfs images, $REPS reps (medians)"
printf '%-30s %7s %7s\n' path seconds GB/s
for p in "${PATHS[@]}"; do
    m=$(median <<<"${T[$p]}")
    printf '%-30s %7.3f %7s\n' "${NAME[$p]}" "$m" "$(gbs "$m")"
done
echo "baselines: tmpfs write $(gbs "$(median <<<"${T[bw]}")") GB/s," \
     "tmpfs read $(gbs "$(median <<<"${T[br]}")") GB/s, memcpy $(gbs "$(median <<<"${T[bm]}")") GB/s"
printf 'fixed cost, whole dump of a 1 MiB process:'
for p in "${PATHS[@]}"; do printf ' %s %.1f ms' "$p" "$(awk -v s="$(median <<<"${T[tiny-$p]}")" 'BEGIN {print s * 1000}')"; done
echo
echo "pages-saved log lines (last run of each path):"
for p in "${PATHS[@]}"; do grep -h 'pages saved' "$W/$p.log" | sed 's/^/  /'; done
