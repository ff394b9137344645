#!/usr/bin/env bash
# run-fuzzers.sh BUILDDIR SECONDS - builds every libFuzzer target with clang
# (ASan+UBSan) and runs each for SECONDS on a copy of its seed corpus.
# Exits non-zero on any crash, leak, timeout or out-of-memory.
set -euo pipefail
out=${1:?usage: run-fuzzers.sh BUILDDIR SECONDS}
secs=${2:-30}
top=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
cd "$top"

cflags="-std=c11 -g -O1 -fsanitize=fuzzer,address,undefined
    -fno-sanitize-recover=undefined -D_GNU_SOURCE
    -Iplugin-api -Icore -Icommon -It/core -Iplugins/picomux
    -Iplugins/sosistab3 -I$out"
libs_crypto="$(pkg-config --cflags --libs libsodium jansson libcrypto)"
libs_core="$(pkg-config --cflags --libs libevent jansson cunit) -ldl"

# A config.h for sources built outside the autotools tree.
cat > "$out/config.h" <<CFG
#define PACKAGE_VERSION "fuzz"
#define SL_PLUGINDIR "/nonexistent"
CFG

build() {
    local name=$1; shift
    # shellcheck disable=SC2086
    clang $cflags -o "$out/$name" "$@"
}

build fuzz-picomux-frame t/fuzz/fuzz-picomux-frame.c \
    plugins/picomux/picomux-frame.c
build fuzz-s3-handshake t/fuzz/fuzz-s3-handshake.c \
    plugins/sosistab3/s3-crypto.c common/blake3.c $libs_crypto
build fuzz-s3-record t/fuzz/fuzz-s3-record.c \
    plugins/sosistab3/s3-crypto.c common/blake3.c $libs_crypto
build fuzz-stack t/fuzz/fuzz-stack.c t/core/fake.c core/*.c $libs_core
for extra in t/fuzz/fuzz-*.sh.inc; do
    [ -f "$extra" ] && . "$extra"
done

status=0
run() {
    local name=$1 corpus=$2 work="$out/corpus-$1"
    rm -rf "$work"
    mkdir -p "$work"
    cp -r "$corpus"/. "$work"/ 2>/dev/null || true
    echo "== $name: ${secs}s"
    if ! "$out/$name" -max_total_time="$secs" -rss_limit_mb=2048 \
        -timeout=10 -max_len=70000 -print_final_stats=1 "$work" \
        > "$out/$name.log" 2>&1; then
        echo "FAIL $name (see $out/$name.log)"
        tail -40 "$out/$name.log"
        status=1
    else
        grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' \
            "$out/$name.log" | tr '\n' ' '
        echo
    fi
}
run fuzz-picomux-frame t/fuzz/corpus/picomux
run fuzz-s3-handshake t/fuzz/corpus/s3-handshake
run fuzz-s3-record t/fuzz/corpus/s3-record
run fuzz-stack t/fuzz/corpus/stack
for extra in t/fuzz/fuzz-*.run.inc; do
    [ -f "$extra" ] && . "$extra"
done
exit $status
