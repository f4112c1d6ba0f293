#!/usr/bin/env bash
# rcr demo: start a counter, checkpoint it, let it die, restore it, and
# watch it carry on counting from where it stopped, under the same PID.
#
# Usage: sudo scripts/demo.sh        (Debian 12 or similar, x86-64)
#
# Installs what it needs (gcc, and a Rust toolchain through rustup if none
# is usable), builds rcr in release mode, and cleans up after itself.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MIN_RUST=1.85

if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' N=$'\e[0m'; else B='' G='' R='' N=''; fi
step() { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
die() { printf '%sdemo.sh: %s%s\n' "$R" "$*" "$N" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    die "must run as root (rcr uses ptrace, and restores the process under its old PID): sudo $0"
fi

# --- tools ----------------------------------------------------------------

# shellcheck source=scripts/tools.sh
. "$REPO/scripts/tools.sh"

# --- the demo -------------------------------------------------------------

WORK=$(mktemp -d /tmp/rcr-demo.XXXXXX)
LOG=$WORK/counter.log
IMG=$WORK/images
PID=''

# The counter is ours only while its exe is our binary (PIDs get reused).
is_counter() { [ -n "$1" ] && [ "$(readlink "/proc/$1/exe" 2>/dev/null)" = "$WORK/demo-counter" ]; }

cleanup() {
    if is_counter "$PID"; then kill -KILL "$PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

gone() { [ ! -e "/proc/$1" ]; }

# wait_for TENTHS CMD ARGS...: waits up to TENTHS tenths of a second for
# CMD ARGS to succeed.
wait_for() {
    local i n=$1
    shift
    for ((i = 0; i < n; i++)); do
        if "$@"; then return 0; fi
        sleep 0.1
    done
    return 1
}

# The numbers after "count" in the log, one per line.
counts() { sed -n 's/.*count \([0-9]*\)$/\1/p' "$LOG"; }

step "tools"
ensure_tools
echo "gcc $(gcc -dumpfullversion), $(rustc --version)"

step "building rcr (cargo build --release)"
(cd "$REPO" && cargo build --release --quiet)
RCR=${CARGO_TARGET_DIR:-$REPO/target}/release/rcr
gcc -O2 -Wall -o "$WORK/demo-counter" "$REPO/scripts/demo-counter.c"

step "starting the counter in its own session, logging to $LOG"
# In a script, background jobs share the script's process group, so setsid
# does not fork: $! is the counter itself.
setsid "$WORK/demo-counter" </dev/null >>"$LOG" 2>&1 &
PID=$!
disown "$PID" # no "Killed" notice when the dump kills it; bash still reaps it
wait_for 30 is_counter "$PID" || die "the counter did not start"
echo "pid $PID"
sleep 2
tail -n 3 "$LOG"

step "rcr dump -t $PID -D $IMG"
timeout 60 "$RCR" dump -t "$PID" -D "$IMG"
# The dump killed it; bash reaps it and the PID leaves /proc.
wait_for 50 gone "$PID" || die "pid $PID is still in /proc after the dump"
DUMPED_LINES=$(wc -l <"$LOG")
LAST=$(counts | tail -n 1)
echo "pid $PID is gone; its last line said count $LAST"
ls -l "$IMG"

step "rcr show -D $IMG (first lines)"
timeout 30 "$RCR" show -D "$IMG" | head -n 30

sleep 1 # a visible gap in the log's timestamps

step "rcr restore -D $IMG -d --pidfile $WORK/restored.pid"
timeout 60 "$RCR" restore -D "$IMG" -d --pidfile "$WORK/restored.pid"
NEW=$(cat "$WORK/restored.pid")
echo "restored as pid $NEW"
sleep 1.5

step "the log around the checkpoint"
sed -n "$((DUMPED_LINES > 3 ? DUMPED_LINES - 2 : 1)),${DUMPED_LINES}p" "$LOG"
echo "----- dumped, killed, restored -----"
sed -n "$((DUMPED_LINES + 1)),\$p" "$LOG" | head -n 8

NEXT=$(counts | sed -n "$((DUMPED_LINES + 1))p")
[ "$NEW" = "$PID" ] || die "restored under pid $NEW, expected $PID"
is_counter "$PID" || die "pid $PID is not running the counter after restore"
[ -n "$NEXT" ] || die "the restored counter printed nothing"
[ "$NEXT" = "$((LAST + 1))" ] || die "the restored counter went on from $NEXT, expected $((LAST + 1))"
printf '\n%sOK%s: pid %s counted to %s, was checkpointed and killed, and continued from %s after restore.\n' \
    "$G" "$N" "$PID" "$LAST" "$NEXT"

step "stopping the demo (kill $PID) and cleaning up"
kill -KILL "$PID"
