#!/usr/bin/env bash
# e2e-vs-ss.sh BUILDDIR - end-to-end figures of sillad-client + sillad-exit on
# the default stack (tcp | sosistab3 | e2e | picomux) measured side by side
# with shadowsocks-libev (ss-local + ss-server, chacha20-ietf-poly1305) on the
# same loopback, in the same run:
#   bulk      one download of $SL_BENCH_BULK_MIB MiB (default 256): MiB/s
#   connect   1000 sequential fetches of a 1-byte body: latency p50, p99;
#             both proxy pairs run side by side and take turns, 5 rounds
#             of 200 fetches each, so that a change in the machine's load
#             during the run falls on both alike
#   parallel  1000 concurrent 1 MiB downloads: total seconds, and the peak
#             RSS (VmHWM) of the proxy pair, started fresh for this case
# For quick partial runs while working: SL_BENCH_CASES (default "bulk
# connect parallel") selects the cases, SL_BENCH_ONLY=1 measures sillad
# alone (figures not measured print as "-"), SL_BENCH_PAR_SIZE sets the
# size of each parallel download (default 1048576), and SL_BENCH_RSS_EACH=1
# prints the peak RSS of each proxy process of the parallel case.
# Every transfer is counted by bench/socks-load (status 200, Content-Length
# and the number of body bytes); a failed fetch fails the bench.
# Prints one table and the sillad/shadowsocks ratios (higher is better for
# sillad in every ratio printed).
set -euo pipefail
build=${1:?usage: e2e-vs-ss.sh BUILDDIR}
bulk_mib=${SL_BENCH_BULK_MIB:-256}
cases=" ${SL_BENCH_CASES:-bulk connect parallel} "
load=$build/bench/socks-load
export SILLAD_PLUGIN_PATH=$build/plugins/.libs

for b in "$load" "$build/roles/sillad-exit" "$build/roles/sillad-client"; do
    [ -x "$b" ] || { echo "e2e-vs-ss: missing $b" >&2; exit 1; }
done
if ! command -v ss-server >/dev/null || ! command -v ss-local >/dev/null; then
    echo "e2e-vs-ss: shadowsocks-libev is not installed (apt-get install" \
        "shadowsocks-libev, or ./run.sh bench)" >&2
    exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sillad-e2e-bench.XXXXXX")
pids=()
proxy_pids=()
cleanup() {
    for p in "${proxy_pids[@]}" "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${proxy_pids[@]}" "${pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    if [ -n "${SL_BENCH_KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# wait_key FILE KEY: the address after KEY in FILE, once written (10 s).
wait_key() {
    for _ in $(seq 100); do
        if [ -s "$1" ]; then
            local a
            a=$(awk -v k="$2" '$1 == k { print $2; exit }' "$1")
            [ -n "$a" ] && { echo "$a"; return 0; }
        fi
        sleep 0.1
    done
    echo "e2e-vs-ss: nothing for '$2' in $1" >&2
    return 1
}

# A free loopback port for shadowsocks, which cannot report one: bind port
# 0 with socks-load's origin, read the port back, stop it.
free_port() {
    local f=$tmp/port.$RANDOM
    "$load" serve --addr-file "$f" & local p=$!
    for _ in $(seq 100); do [ -s "$f" ] && break; sleep 0.05; done
    kill "$p"; wait "$p" 2>/dev/null || true
    sed 's/.*://' "$f"
}

"$load" serve --addr-file "$tmp/origin" & pids+=($!)
for _ in $(seq 100); do [ -s "$tmp/origin" ] && break; sleep 0.05; done
origin=$(cat "$tmp/origin")

stop_proxies() {
    for p in "${proxy_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${proxy_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    proxy_pids=()
}

# start_ss: ss-server + ss-local; sets $socks.
start_ss() {
    local sp lp
    sp=$(free_port)
    ss-server -s 127.0.0.1 -p "$sp" -k bench-password \
        -m chacha20-ietf-poly1305 -n 65536 > "$tmp/ss-server.log" 2>&1 &
    proxy_pids+=($!)
    lp=$(free_port)
    ss-local -s 127.0.0.1 -p "$sp" -b 127.0.0.1 -l "$lp" -k bench-password \
        -m chacha20-ietf-poly1305 -n 65536 > "$tmp/ss-local.log" 2>&1 &
    proxy_pids+=($!)
    socks=127.0.0.1:$lp
    for _ in $(seq 100); do
        grep -q listening "$tmp/ss-local.log" 2>/dev/null &&
            grep -q listening "$tmp/ss-server.log" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "e2e-vs-ss: shadowsocks did not start" >&2
    cat "$tmp"/ss-*.log >&2
    return 1
}

# start_sillad: sillad-exit + sillad-client on the default stack; sets
# $socks.
start_sillad() {
    local cookie=bench-cookie exit_addr pk
    rm -f "$tmp/exit.addr" "$tmp/client.addr"
    cat > "$tmp/exit.json" <<EOF
{ "listen": ["tcp addr=127.0.0.1:0 | sosistab3 cookie=$cookie | e2e signing_key=$tmp/exit.key | picomux"],
  "allow_private": true, "log_level": "${SL_BENCH_LOG:-warning}" }
EOF
    pk=$("$build/roles/sillad-exit" -c "$tmp/exit.json" --print-pubkey)
    "$build/roles/sillad-exit" -c "$tmp/exit.json" \
        --addr-file "$tmp/exit.addr" > "$tmp/exit.log" 2>&1 &
    proxy_pids+=($!)
    exit_addr=$(wait_key "$tmp/exit.addr" listen)
    cat > "$tmp/client.json" <<EOF
{ "socks5_listen": "127.0.0.1:0",
  "exits": ["tcp addr=$exit_addr | sosistab3 cookie=$cookie | e2e pubkey=$pk | picomux"],
  "log_level": "${SL_BENCH_LOG:-warning}" }
EOF
    "$build/roles/sillad-client" -c "$tmp/client.json" \
        --addr-file "$tmp/client.addr" > "$tmp/client.log" 2>&1 &
    proxy_pids+=($!)
    socks=$(wait_key "$tmp/client.addr" socks5)
    # The client dials its sessions in the background; one warm-up fetch.
    "$load" fetch --proxy "$socks" --target "$origin" --size 1 --count 1 \
        --concurrency 1 > /dev/null
}

# field LINE KEY: the value of KEY=... in a socks-load result line.
field() { sed -n "s/.*\\b$2=\\([^ ]*\\).*/\\1/p" <<< "$1"; }

peak_rss_kib() {
    local sum=0 p v
    for p in "${proxy_pids[@]}"; do
        v=$(awk '/^VmHWM:/ { print $2 }' "/proc/$p/status")
        sum=$((sum + v))
    done
    echo "$sum"
}

declare -A R
# run NAME CASE ARGS...: one socks-load fetch through $socks, its line
# printed and kept in $line.
run() {
    local name=$1 case=$2
    shift 2
    line=$("$load" fetch --proxy "$socks" --target "$origin" "$@") || {
        echo "e2e-vs-ss: $name, $case: $line" >&2
        return 1
    }
    printf '  %-7s %-9s %s
' "$name" "$case" "$line"
}

want() { [[ $cases == *" $1 "* ]]; }

# pct FILE P: the P-th percentile (0..1) of the numbers in FILE.
pct() {
    sort -g "$1" | awk -v p="$2" '{ v[NR] = $1 }
        END { i = int(p * (NR - 1) + 0.5) + 1; print v[i] }'
}

# The connect case: both pairs up at once, taking turns.
connect_rounds() {
    local names=() socks_of=() r i n line
    [ -n "${SL_BENCH_ONLY:-}" ] || names+=(ss)
    names+=(sillad)
    for n in "${names[@]}"; do
        "start_$n"
        socks_of+=("$socks")
        : > "$tmp/lat.$n"
    done
    for r in 1 2 3 4 5; do
        for i in "${!names[@]}"; do
            # Alternate who goes first from round to round.
            [ $((r % 2)) -eq 0 ] && i=$(( ${#names[@]} - 1 - i ))
            n=${names[$i]}
            socks=${socks_of[$i]}
            run "$n" "connect.$r" --size 1 --count 200 --concurrency 1 \
                --samples "$tmp/lat.$n"
        done
    done
    for n in "${names[@]}"; do
        R[$n.p50]=$(pct "$tmp/lat.$n" 0.50)
        R[$n.p99]=$(pct "$tmp/lat.$n" 0.99)
    done
    stop_proxies
}

measure() {
    local name=$1 line
    if want bulk; then
        "start_$name"
        run "$name" bulk --size $((bulk_mib * 1048576)) --count 1 \
            --concurrency 1
        R[$name.bulk]=$(field "$line" mib_per_s)
        stop_proxies
    fi
    if want parallel; then
        "start_$name"
        run "$name" parallel --size "${SL_BENCH_PAR_SIZE:-1048576}" \
            --count 1000 --concurrency 1000
        R[$name.par]=$(field "$line" seconds)
        R[$name.rss]=$(peak_rss_kib)
        if [ -n "${SL_BENCH_RSS_EACH:-}" ]; then
            for p in "${proxy_pids[@]}"; do
                printf '  %-7s %s VmHWM %s KiB\n' "$name" \
                    "$(cat "/proc/$p/comm")" \
                    "$(awk '/^VmHWM:/ { print $2 }' "/proc/$p/status")"
            done
        fi
        stop_proxies
    fi
}

echo "== end to end: sillad (tcp|sosistab3|e2e|picomux) vs shadowsocks-libev"
[ -n "${SL_BENCH_ONLY:-}" ] || measure ss
measure sillad
if want connect; then connect_rounds; fi
printf '%-40s %14s %14s %8s\n' figure sillad shadowsocks ratio
row() {
    # row LABEL KEY HIGHER_IS_BETTER(1|0)
    local s=${R[sillad.$2]:--} o=${R[ss.$2]:--} r
    if [ "$s" = - ] || [ "$o" = - ]; then
        r=-
    elif [ "$3" = 1 ]; then
        r=$(awk -v a="$s" -v b="$o" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    else
        r=$(awk -v a="$s" -v b="$o" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }')
    fi
    printf '%-40s %14s %14s %8s\n' "$1" "$s" "$o" "$r"
}
row "bulk ${bulk_mib} MiB download (MiB/s)" bulk 1
row "1000 sequential connects p50 (ms)" p50 0
row "1000 sequential connects p99 (ms)" p99 0
row "1000 x 1 MiB concurrent (s)" par 0
row "peak RSS client+server, 1000 conc (KiB)" rss 0
echo "(ratio > 1: sillad ahead)"
