#!/usr/bin/env bash
# run-bench.sh BUILDDIR - throughput figures with a baseline measured in the
# same run.  Prints figures and ratios; asserts nothing about speed.
set -euo pipefail
b=${1:?usage: run-bench.sh BUILDDIR}
export SILLAD_PLUGIN_PATH="$b/plugins/.libs"
size_mib=${SL_BENCH_MIB:-1024}
rounds=${SL_BENCH_ROUNDS:-3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

now() { date +%s.%N; }

# Median MiB/s of a transfer function over $rounds rounds.
measure() {
    local fn=$1 r t0 t1 rates=()
    for r in $(seq "$rounds"); do
        t0=$(now); "$fn"; t1=$(now)
        rates+=("$(echo "$size_mib / ($t1 - $t0)" | bc -l)")
    done
    printf '%s\n' "${rates[@]}" | sort -g | sed -n "$(( (rounds + 1) / 2 ))p"
}

plain() {
    rm -f "$tmp/port"
    "$b/bench/plaincat" listen "$tmp/port" >/dev/null &
    local pid=$!
    while [ ! -s "$tmp/port" ]; do sleep 0.01; done
    head -c "${size_mib}M" /dev/zero |
        "$b/bench/plaincat" dial 127.0.0.1 "$(cat "$tmp/port")"
    wait "$pid"
}

# sillad_over "LAYERS": one transfer through sillad-cat over tcp|LAYERS.
sillad_over() {
    local layers=$1
    rm -f "$tmp/addr"
    ( "$b/tools/sillad-cat" -q listen "tcp addr=127.0.0.1:0$layers" \
        --addr-file "$tmp/addr" </dev/null | wc -c > "$tmp/count" ) &
    local pid=$!
    while [ ! -s "$tmp/addr" ]; do sleep 0.01; done
    head -c "${size_mib}M" /dev/zero |
        "$b/tools/sillad-cat" -q dial "tcp addr=$(cat "$tmp/addr")$layers"
    wait "$pid"
    # A figure for a transfer that lost bytes would be a lie.
    if [ "$(cat "$tmp/count")" != "$((size_mib * 1048576))" ]; then
        echo "bench: tcp$layers delivered $(cat "$tmp/count") bytes, not" \
            "$((size_mib * 1048576))" >&2
        exit 1
    fi
}
sillad_tcp() { sillad_over ""; }
sillad_picomux() { sillad_over " | picomux"; }

echo "sillad bench: ${size_mib} MiB per transfer, median of $rounds rounds, loopback"
base=$(measure plain)
tcp=$(measure sillad_tcp)
printf '%-40s %10.1f MiB/s\n' "baseline: plain socket copy" "$base"
printf '%-40s %10.1f MiB/s   ratio %.2f\n' "sillad-cat over tcp" "$tcp" \
    "$(echo "$tcp / $base" | bc -l)"
if [ -e "$b/plugins/.libs/picomux.so" ]; then
    pm=$(measure sillad_picomux)
    printf '%-40s %10.1f MiB/s   ratio %.2f to sillad tcp, %.2f to plain\n' \
        "sillad-cat over tcp|picomux (1 stream)" "$pm" \
        "$(echo "$pm / $tcp" | bc -l)" "$(echo "$pm / $base" | bc -l)"
fi
for extra in "$b"/bench/bench-*; do
    [ -x "$extra" ] || continue
    echo
    "$extra"
done
