#!/usr/bin/env bash
# run.sh - set up, build, demo and test sillad on a Debian machine.
#
#   ./run.sh demo    install dependencies, build, run the main job
#   ./run.sh test    install dependencies, build, run every test
#                    (-Werror, then again under ASan+UBSan, fuzzers briefly,
#                    and make distcheck)
#   ./run.sh deps | build | bench
set -euo pipefail

top=$(cd "$(dirname "$0")" && pwd)
build="$top/_build"
jobs=$(nproc 2>/dev/null || echo 2)

packages=(
    build-essential autoconf automake libtool pkg-config
    libevent-dev libsodium-dev libjansson-dev libcunit1-dev libssl-dev
    mandoc curl clang valgrind
)

log() { printf '==> %s\n' "$*" >&2; }

deps() {
    local missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
            grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "dependencies already installed"
        return
    fi
    log "installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
}

# True when configure is missing or older than what it is made from.
need_autoreconf() {
    [ -x "$top/configure" ] || return 0
    [ -n "$(find "$top" -path "$top/_build*" -prune -o \
        \( -name configure.ac -o -name '*.am' \) -newer "$top/configure" \
        -print -quit)" ]
}

# configure_in DIR [configure args...]
configure_in() {
    local dir=$1; shift
    if need_autoreconf; then
        (cd "$top" && autoreconf -fi >/dev/null 2>&1)
    fi
    mkdir -p "$dir"
    (cd "$dir" && "$top/configure" -q "$@" >/dev/null)
}

build() {
    log "building in $build"
    configure_in "$build" --enable-werror
    make -s -C "$build" -j"$jobs" >/dev/null
}

demo() {
    deps
    build
    export SILLAD_PLUGIN_PATH="$build/plugins/.libs"
    local tmp pid msg out
    tmp=$(mktemp -d)
    trap 'kill "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
    log "starting an echo server: sillad-cat listen 'tcp addr=127.0.0.1:0' --echo"
    "$build/tools/sillad-cat" listen 'tcp addr=127.0.0.1:0' --echo \
        --addr-file "$tmp/addr" &
    pid=$!
    for _ in $(seq 50); do [ -s "$tmp/addr" ] && break; sleep 0.1; done
    local addr
    addr=$(cat "$tmp/addr")
    msg="hello through sillad at $(date -u +%H:%M:%S)"
    log "dialing: echo '$msg' | sillad-cat dial 'tcp addr=$addr'"
    out=$(printf '%s\n' "$msg" | "$build/tools/sillad-cat" dial "tcp addr=$addr")
    printf '%s\n' "$out"
    [ "$out" = "$msg" ] || { log "demo FAILED: echo mismatch"; exit 1; }
    log "demo passed: bytes went through the tcp stack and back"
}

test_all() {
    deps
    log "build with -Werror and run the tests"
    configure_in "$build" --enable-werror
    make -s -C "$build" -j"$jobs" >/dev/null
    make -C "$build" -j"$jobs" check || { cat "$build"/t/*/*.log >&2 || true; exit 1; }
    log "build with AddressSanitizer + UndefinedBehaviorSanitizer and run the tests"
    configure_in "$build-san" --enable-werror --enable-sanitizers
    make -s -C "$build-san" -j"$jobs" >/dev/null
    make -C "$build-san" -j"$jobs" check || { cat "$build-san"/t/*/*.log >&2 || true; exit 1; }
    if [ -x "$top/t/fuzz/run-fuzzers.sh" ]; then
        log "fuzz targets, briefly"
        "$top/t/fuzz/run-fuzzers.sh" "$build-fuzz" 30
    fi
    log "make distcheck"
    make -C "$build" -j"$jobs" distcheck DISTCHECK_CONFIGURE_FLAGS=--enable-werror >/dev/null
    log "all tests passed"
}

bench() {
    deps
    build
    make -C "$build" bench
}

case "${1:-}" in
    deps) deps ;;
    build) deps; build ;;
    demo) demo ;;
    test) test_all ;;
    bench) bench ;;
    *) echo "usage: $0 demo|test|deps|build|bench" >&2; exit 2 ;;
esac
