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

# rate FN: MiB/s of one transfer by FN.
rate() {
    local t0 t1
    t0=$(now); "$1"; t1=$(now)
    echo "$size_mib / ($t1 - $t0)" | bc -l
}

median() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }

# check_count WHAT: the receiver counted every byte.  A figure for a
# transfer that lost bytes would be a lie.
check_count() {
    if [ "$(cat "$tmp/count")" != "$((size_mib * 1048576))" ]; then
        echo "bench: $1 delivered $(cat "$tmp/count") bytes, not" \
            "$((size_mib * 1048576))" >&2
        exit 1
    fi
}

# The receivers all count what they get with wc -c, the baseline too, so
# that every transfer does the same work besides the one measured.
plain() {
    rm -f "$tmp/port"
    ( "$b/bench/plaincat" listen "$tmp/port" | wc -c > "$tmp/count" ) &
    local pid=$!
    while [ ! -s "$tmp/port" ]; do sleep 0.01; done
    head -c "${size_mib}M" /dev/zero |
        "$b/bench/plaincat" dial 127.0.0.1 "$(cat "$tmp/port")"
    wait "$pid"
    check_count "plain"
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
    check_count "tcp$layers"
}
sillad_tcp() { sillad_over ""; }
sillad_picomux() { sillad_over " | picomux"; }

# Rounds take turns (plain, tcp, picomux, then again), and each ratio is
# the median of the ratios within a round, so that a change in the
# machine's load during the run falls on all alike.
has_pm=0
[ -e "$b/plugins/.libs/picomux.so" ] && has_pm=1
base=() tcp=() pm=() r_tcp=() r_pm=() r_pm_tcp=()
for r in $(seq "$rounds"); do
    base+=("$(rate plain)")
    tcp+=("$(rate sillad_tcp)")
    r_tcp+=("$(echo "${tcp[-1]} / ${base[-1]}" | bc -l)")
    if [ $has_pm = 1 ]; then
        pm+=("$(rate sillad_picomux)")
        r_pm+=("$(echo "${pm[-1]} / ${base[-1]}" | bc -l)")
        r_pm_tcp+=("$(echo "${pm[-1]} / ${tcp[-1]}" | bc -l)")
    fi
done
echo "sillad bench: ${size_mib} MiB per transfer, $rounds rounds taking turns, loopback (medians)"
printf '%-40s %10.1f MiB/s\n' "baseline: plain socket copy" "$(median "${base[@]}")"
printf '%-40s %10.1f MiB/s   ratio %.2f\n' "sillad-cat over tcp" \
    "$(median "${tcp[@]}")" "$(median "${r_tcp[@]}")"
if [ $has_pm = 1 ]; then
    printf '%-40s %10.1f MiB/s   ratio %.2f to sillad tcp, %.2f to plain\n' \
        "sillad-cat over tcp|picomux (1 stream)" "$(median "${pm[@]}")" \
        "$(median "${r_pm_tcp[@]}")" "$(median "${r_pm[@]}")"
fi
for extra in "$b"/bench/bench-*; do
    [ -x "$extra" ] || continue
    echo
    "$extra"
done
