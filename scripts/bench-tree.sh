#!/usr/bin/env bash
# Dump and restore time of rcr for many tasks:
#   single  = one process (bench-tree-victim procs 1): the fixed cost of a
#             whole `rcr dump` and `rcr restore -d`
#   procs   = a tree of BENCH_PROCS processes (default 100; root, 9 branches,
#             90 leaves), each with 64 KiB of written private memory
#   threads = one process of BENCH_THREADS threads (default 500), each with
#             a 256 KiB stack, 4 KiB of TLS and 16 KiB of stack written
# (scripts/bench-tree-victim.c). Each round, for each case: start the victim
# and wait until every task sleeps; time `rcr dump -t ROOT -D DIR` (which
# kills the tree); wait until every PID/TID of the tree is gone from /proc
# (PID 1 reaps orphans only after 1-2 s here, and restoring before fails
# with EEXIST); time `rcr restore -D DIR -d --pidfile F` (which returns once
# the whole tree runs); then check the restored tree: same PIDs/TIDs, and
# the victim's own check (SIGUSR1: every task checks its memory, pid/tid and
# parent; the root prints PASS or FAIL). Every restore is checked, so no
# broken restore is timed. Whole commands are timed (fork to exit,
# monotonic clock). Images go to a private tmpfs (or /dev/shm, also tmpfs).
#
# Baseline, measured in the same rounds: the time the victim takes to create
# the same tree itself (`bench-tree-victim procs|threads N --startup-only`:
# fork or pthread_create every task and let each write its memory, from
# main() until all are set up). Round 0 is a warm-up, shown but left out of
# the medians. Per-task costs are the median time of a case minus that of
# the single process, divided by the N-1 extra tasks.
#
# Usage: sudo scripts/bench-tree.sh [REPS]   (default 5)
#        env: BENCH_PROCS, BENCH_THREADS (tree sizes), BENCH_RCR (use this
#        rcr binary instead of building target/release/rcr)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=${1:-5}
NPROCS=${BENCH_PROCS:-100}
NTHREADS=${BENCH_THREADS:-500}
CASES=(single procs threads)
declare -A MODE=([single]="procs 1" [procs]="procs $NPROCS" [threads]="threads $NTHREADS")
declare -A N=([single]=1 [procs]=$NPROCS [threads]=$NTHREADS)
declare -A NAME=([single]="1 process (fixed cost)" [procs]="tree of $NPROCS processes"
                 [threads]="1 process, $NTHREADS threads")

die() { echo "bench-tree.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (rcr ptraces the victim): sudo $0"
command -v gcc >/dev/null || die "gcc missing: apt-get install build-essential"
[[ $REPS =~ ^[1-9][0-9]*$ && $NPROCS =~ ^[1-9][0-9]*$ && $NTHREADS =~ ^[1-9][0-9]*$ ]] \
    || die "REPS, BENCH_PROCS and BENCH_THREADS must be positive integers"

W=$(mktemp -d /tmp/rcr-bench-tree.XXXXXX)
IMG=$W/img
B=$W/bench-tree-victim
KILLME=()   # every PID/TID of every tree we started (and so restored)

# Is $1 a task of our victim binary? (A restored task gets its exe link back.)
ours() { [ "$(readlink "/proc/$1/exe" 2>/dev/null)" = "$B" ]; }

# Kill only the trees we started, by PID, and only while they run our binary.
# The live descendants of each are listed first (before any is killed and
# its children are handed to PID 1), in case IDS missed some.
cleanup() {
    local p all=()
    for p in "${KILLME[@]}"; do
        if ours "$p"; then mapfile -t -O "${#all[@]}" all < <(tasks procs "$p"); fi
    done
    for p in "${all[@]}"; do
        if ours "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
    done
    if mountpoint -q "$IMG"; then umount "$IMG"; fi
    rm -rf "$W" "/dev/shm/rcr-bench-tree-$$"
}
trap cleanup EXIT

if [ -n "${BENCH_RCR:-}" ]; then
    RCR=$(realpath "$BENCH_RCR")
else
    command -v cargo >/dev/null || die "cargo missing: install Rust (scripts/test.sh does it)"
    echo "building rcr (cargo build --release) and the victim (gcc)" >&2
    (cd "$REPO" && cargo build --release -q)
    RCR=$(cd "$REPO" && realpath -m "${CARGO_TARGET_DIR:-target}")/release/rcr
fi
[ -x "$RCR" ] || die "no rcr binary at $RCR"
gcc -O2 -Wall -pthread -o "$B" "$REPO/scripts/bench-tree-victim.c" -lm

mkdir "$IMG"
if ! mount -t tmpfs -o size=512m,mode=0700 rcr-bench-tree "$IMG" 2>/dev/null; then
    IMG=/dev/shm/rcr-bench-tree-$$
    mkdir -m 0700 "$IMG"
fi

# tasks MODE ROOT: the PIDs of ROOT and all its descendants (procs), or the
# TIDs of ROOT's threads (threads), sorted, one a line.
tasks() {
    if [ "$1" = threads ]; then
        ls "/proc/$2/task" 2>/dev/null | sort -n
        return
    fi
    local todo=("$2") p c
    while [ ${#todo[@]} -gt 0 ]; do
        p=${todo[-1]}; unset 'todo[-1]'
        echo "$p"
        for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do todo+=("$c"); done
    done | sort -n
}

# all_asleep ROOT IDS...: every task is in state S (blocked in pause/futex).
all_asleep() {
    local root=$1 id st f; shift
    for id in "$@"; do
        f=/proc/$id/stat
        if [ -e "/proc/$root/task/$id" ]; then f=/proc/$root/task/$id/stat; fi
        st=$(cat "$f" 2>/dev/null) || return 1
        st=${st##*) }
        [ "${st:0:1}" = S ] || return 1
    done
}

# wait_until SECS WHAT CMD...: polls CMD every 10 ms; dies after SECS s.
wait_until() {
    local secs=$1 what=$2 i; shift 2
    for ((i = 0; i < secs * 100; i++)); do
        "$@" && return 0
        sleep 0.01
    done
    die "timed out after $secs s waiting for $what"
}

gone() { local id; for id in "$@"; do [ ! -e "/proc/$id" ] || return 1; done; }
settled() { grep -Eq '^(PASS|FAIL)' "$1"; }

# start CASE: starts the victim, waits for READY and for every task to
# sleep; sets ROOT and IDS (the tree's PIDs or TIDs).
start() {
    local out=$W/$1.out
    : >"$out"   # not the READY of the previous round: truncated before the fork
    # The victim closes every fd above 2 it inherited (this environment
    # leaks one), so the tree holds only stdin, stdout and stderr.
    # shellcheck disable=SC2086 # MODE is "procs N" or "threads N": two words
    "$B" ${MODE[$1]} </dev/null >"$out" 2>&1 &
    ROOT=$!
    disown "$ROOT"    # no "Killed" job notice when rcr dump kills it
    KILLME+=("$ROOT")
    wait_until 60 "READY from $1 victim" grep -q READY "$out"
    mapfile -t IDS < <(tasks "${MODE[$1]%% *}" "$ROOT")
    KILLME+=("${IDS[@]}")
    [ ${#IDS[@]} -eq "${N[$1]}" ] || die "$1 victim has ${#IDS[@]} tasks, not ${N[$1]}"
    wait_until 20 "every task of the $1 victim to sleep" all_asleep "$ROOT" "${IDS[@]}"
}

# timed LOG CMD...: runs CMD (at most 120 s), stdout+stderr to LOG; sets S
# to its wall time in seconds.
timed() {
    local log=$1; shift
    if ! "$B" time 120 "$@" >"$W/t" 2>"$log"; then
        die "failed: $*"$'\n'"$(tail -20 "$log")"
    fi
    S=$(cat "$W/t")
}

# check CASE: the restored tree has the same PIDs/TIDs, all asleep, and
# passes the victim's own check; then it has exited.
check() {
    local out=$W/$1.out kind=${MODE[$1]%% *} got i
    got=$(cat "$W/pidfile" 2>/dev/null) || die "$1: no pidfile after restore"
    [ "$got" = "$ROOT" ] || die "$1: restored root is pid $got, not $ROOT"
    got=$(tasks "$kind" "$ROOT" | tr '\n' ' ')
    [ "$got" = "$(printf '%s ' "${IDS[@]}")" ] \
        || die "$1: restored tasks differ from the dumped ones:"$'\n'"dumped:   ${IDS[*]}"$'\n'"restored: $got"
    wait_until 20 "every restored task of $1 to sleep" all_asleep "$ROOT" "${IDS[@]}"
    # A SIGUSR1 that lands just before the victim's pause() is lost: repeat it.
    for ((i = 0; i < 60; i++)); do
        settled "$out" && break
        if ours "$ROOT"; then kill -USR1 "$ROOT" 2>/dev/null || true; fi
        sleep 0.5
    done
    grep -q '^PASS' "$out" || die "$1: the restored tree fails its check:"$'\n'"$(cat "$out")"
    wait_until 30 "the checked $1 tree to exit" gone "${IDS[@]}"
}

ms() { awk -v s="$1" 'BEGIN {printf "%.1f", s * 1000}'; }
# median / stat3 (median [min-max] in ms) of the numbers on stdin, one a line;
# empty lines (the here-strings add one) are skipped.
median() { sort -g | awk 'NF {v[++n] = $1} END {print (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2}'; }
stat3() { sort -g <<<"$1" | awk 'NF {v[++n] = $1} END {m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2;
                                                   printf "%8.2f [%.2f-%.2f]", m * 1000, v[1] * 1000, v[n] * 1000}'; }

declare -A T   # T[case-dump|restore|create]: one time in seconds per line
declare -A SIZE  # SIZE[case]: KiB of images
for ((r = 0; r <= REPS; r++)); do
    line="round $r:"
    for c in "${CASES[@]}"; do
        # Baseline: the victim builds the same tree, times it, checks it, exits.
        out=$(timeout 60 "$B" ${MODE[$c]} --startup-only 2>&1) && [[ $out == *$'\nPASS'* ]] \
            || die "$c --startup-only failed: $out"
        s=${out%%$'\n'*}
        T[$c-create]+="$s"$'\n'

        start "$c"
        rm -rf "$IMG/dump" "$W/pidfile"
        timed "$W/$c-dump.log" "$RCR" dump -t "$ROOT" -D "$IMG/dump"
        T[$c-dump]+="$S"$'\n'
        d=$S
        SIZE[$c]=$(du -sk "$IMG/dump" | cut -f1)
        wait_until 30 "the dumped $c tree to leave /proc" gone "${IDS[@]}"
        timed "$W/$c-restore.log" "$RCR" restore -D "$IMG/dump" -d --pidfile "$W/pidfile"
        T[$c-restore]+="$S"$'\n'
        check "$c"
        line+=" $c dump $(ms "$d") restore $(ms "$S") create $(ms "$s") ms |"
    done
    echo "${line% |}" >&2
    if [ "$r" -eq 0 ]; then T=(); fi
done

echo
echo "rcr dump and restore of many tasks, images on tmpfs, $REPS reps:" \
     "median [min-max] in ms, whole commands; every restore checked"
printf '%-28s %6s  %-24s %-24s %-24s\n' case tasks dump restore "baseline: create tree"
for c in "${CASES[@]}"; do
    printf '%-28s %6d  %-24s %-24s %-24s\n' "${NAME[$c]}" "${N[$c]}" "$(stat3 "${T[$c-dump]}")" \
        "$(stat3 "${T[$c-restore]}")" "$(stat3 "${T[$c-create]}")"
done
# per CASE WHAT: µs per task beyond the first.
per() { awk -v a="$(median <<<"${T[$1-$2]}")" -v b="$(median <<<"${T[single-$2]}")" -v n="${N[$1]}" \
            'BEGIN {printf "%.0f", (a - b) * 1e6 / (n - 1)}'; }
echo "per extra task, (median of the case - median of 1 process) / (N-1), in µs:"
for c in procs threads; do
    [ "${N[$c]}" -gt 1 ] || continue
    echo "  per ${c%s}: dump $(per $c dump), restore $(per $c restore), create (baseline) $(per $c create)"
done
printf 'image sizes:'; for c in "${CASES[@]}"; do printf ' %s %s KiB' "$c" "${SIZE[$c]}"; done
echo " (tmpfs: $IMG)"
