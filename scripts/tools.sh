# Shared by scripts/demo.sh and scripts/test.sh (sourced, not run): makes
# sure gcc, the C headers, python3 and a Rust toolchain with rust-objcopy are there,
# installing them on a fresh Debian 12. Expects MIN_RUST and die() to be set.
# ensure_test_tools adds what only the tests use.

apt_install() {
    echo "installing $* (apt-get)"
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
    # The tests restore a real multi-threaded program: python3.
    [ -x /usr/bin/python3 ] || pkgs+=(python3)
    # --tcp-established locks the network with nftables: nft.
    command -v nft >/dev/null || [ -x /usr/sbin/nft ] || pkgs+=(nftables)
    if [ ${#pkgs[@]} -gt 0 ]; then apt_install "${pkgs[@]}"; fi
    if ! rust_ok; then
        echo "installing a Rust toolchain (rustup, stable, minimal profile) into $HOME/.cargo"
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

# What the tests use beyond the build (nftables comes with ensure_tools,
# for rcr's network lock): tmux (shell-job tests drive a terminal), redis-server
# and redis-tools (a real server restored with a client connected),
# setcap from libcap2-bin and setpriv from util-linux (the privilege tests
# run rcr as another user, with file capabilities).
ensure_test_tools() {
    local pkgs=()
    command -v tmux >/dev/null || pkgs+=(tmux)
    command -v setcap >/dev/null || [ -x /sbin/setcap ] || pkgs+=(libcap2-bin)
    command -v setpriv >/dev/null || pkgs+=(util-linux)
    [ -x /usr/bin/redis-server ] || pkgs+=(redis-server)
    [ -x /usr/bin/redis-cli ] || pkgs+=(redis-tools)
    if [ ${#pkgs[@]} -gt 0 ]; then apt_install "${pkgs[@]}"; fi
}
