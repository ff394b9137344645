#!/usr/bin/env bash
# run.sh - set up, build, demo and test sillad on a Debian machine.
#
#   ./run.sh demo    install dependencies, build, run the main job
#   ./run.sh test    install dependencies, build, run every test
#                    (-Werror, the demo, then again under ASan+UBSan,
#                    fuzzers briefly, and make distcheck)
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
    # Configured already, with these arguments, by this configure: keep it.
    if [ -f "$dir/config.status" ] && [ "$dir/config.status" -nt "$top/configure" ] &&
        [ "$("$dir/config.status" --config | tr -d "'" | sed 's/^-q *//; s/ -q\b//')" = "$*" ]; then
        return
    fi
    # configure's exit trap tries "rm -f core", which complains about our
    # core/ directory of objects: drop that one line of noise.
    (cd "$dir" && "$top/configure" -q "$@" >/dev/null) 2>&1 |
        grep -v "^rm: cannot remove 'core': Is a directory$" >&2 || true
    [ -f "$dir/config.status" ] || { log "configure failed in $dir"; exit 1; }
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
    local cookie page socks http exit_addr pk out
    # Globals: the EXIT trap runs after this function has returned.
    tmp=$(mktemp -d)
    pids=()
    # Newest first (the client before its exit), and on past any that
    # has already ended (the origin serves once): a failing kill in an
    # EXIT trap under set -e would end the trap and leave the rest running.
    trap 'for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
              kill "${pids[i]}" 2>/dev/null || true
          done; rm -rf "$tmp"' EXIT
    trap 'exit 1' INT TERM HUP
    waitfor() {   # waitfor FILE KEY: the address after KEY, once written
        for _ in $(seq 100); do
            [ -s "$1" ] && awk -v k="$2" '$1 == k { print $2; f = 1 }
                END { exit !f }' "$1" && return 0
            sleep 0.1
        done
        log "demo FAILED: nothing for '$2' in $1"; exit 1
    }
    cookie=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')

    log "a web page to fetch, served once on 127.0.0.1 by sillad-cat"
    page="hello from behind a sillad exit, $(date -u +%H:%M:%S)"
    printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %s\r\n\r\n%s\n' \
        $((${#page} + 1)) "$page" > "$tmp/response"
    "$build/tools/sillad-cat" listen 'tcp addr=127.0.0.1:0' --once \
        --addr-file "$tmp/origin" < "$tmp/response" > /dev/null &
    pids+=($!)
    for _ in $(seq 50); do [ -s "$tmp/origin" ] && break; sleep 0.1; done

    log "sillad-exit on tcp | sosistab3 | e2e | picomux"
    cat > "$tmp/exit.json" <<EOF
{
  "listen": ["tcp addr=127.0.0.1:0 | sosistab3 cookie=$cookie | e2e signing_key=$tmp/exit.key | picomux"],
  "allow_private": true
}
EOF
    pk=$("$build/roles/sillad-exit" -c "$tmp/exit.json" --print-pubkey)
    "$build/roles/sillad-exit" -c "$tmp/exit.json" --addr-file "$tmp/exit.addr" &
    pids+=($!)
    exit_addr=$(waitfor "$tmp/exit.addr" listen)

    log "sillad-client: SOCKS5 and HTTP CONNECT on 127.0.0.1, one exit at $exit_addr"
    cat > "$tmp/client.json" <<EOF
{
  "socks5_listen": "127.0.0.1:0",
  "http_listen": "127.0.0.1:0",
  "exits": ["tcp addr=$exit_addr | sosistab3 cookie=$cookie | e2e pubkey=$pk | picomux"],
  "sessions": 2
}
EOF
    "$build/roles/sillad-client" -c "$tmp/client.json" --addr-file "$tmp/client.addr" &
    pids+=($!)
    socks=$(waitfor "$tmp/client.addr" socks5)
    http=$(waitfor "$tmp/client.addr" http)

    log "curl --socks5-hostname $socks http://$(cat "$tmp/origin")/"
    out=$(curl -sS --max-time 20 --socks5-hostname "$socks" "http://$(cat "$tmp/origin")/")
    printf '%s\n' "$out"
    [ "$out" = "$page" ] || { log "demo FAILED: the page did not come back"; exit 1; }
    log "demo passed: the page came through client -> exit over the default stack"
    log "(HTTP CONNECT proxy was on $http; both stop now)"
}

test_all() {
    deps
    log "build with -Werror and run the tests"
    configure_in "$build" --enable-werror
    make -s -C "$build" -j"$jobs" >/dev/null
    make -C "$build" -j"$jobs" check || { cat "$build"/t/*/*.log >&2 || true; exit 1; }
    log "the main job, as ./run.sh demo runs it"
    ( demo )
    log "build with AddressSanitizer + UndefinedBehaviorSanitizer and run the tests"
    configure_in "$build-san" --enable-werror --enable-sanitizers
    make -s -C "$build-san" -j"$jobs" >/dev/null
    make -C "$build-san" -j"$jobs" check || { cat "$build-san"/t/*/*.log >&2 || true; exit 1; }
    if [ -x "$top/t/fuzz/run-fuzzers.sh" ]; then
        log "fuzz targets, briefly"
        "$top/t/fuzz/run-fuzzers.sh" "$build-fuzz" 15
    fi
    # The full suite has run twice above; from the tarball, run the tests
    # that need its data, scripts, pages and examples, so that a file
    # missing from the distribution still fails here.
    log "make distcheck (the tarball builds, installs, and its test data is complete)"
    make -C "$build" -j"$jobs" distcheck DISTCHECK_CONFIGURE_FLAGS=--enable-werror \
        TESTS="t/docs/check-man.sh t/install/sdk.test t/plugins/test-blake3 \
t/core/test-loader t/conform/tcp.test t/plugins/hex-conform.test \
t/roles/exit.test t/roles/test-inbound" >/dev/null
    log "all tests passed"
}

bench() {
    deps
    if ! command -v ss-server >/dev/null; then
        # The end-to-end baseline.  Debian enables a shadowsocks server
        # service on install; the bench starts its own, so turn that off.
        packages=(shadowsocks-libev)
        deps
        if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
            local sudo=""
            [ "$(id -u)" -eq 0 ] || sudo=sudo
            $sudo systemctl disable --now shadowsocks-libev.service \
                >/dev/null 2>&1 || true
        fi
    fi
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
