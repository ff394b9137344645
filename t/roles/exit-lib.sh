# exit-lib.sh - sourced by t/roles/exit.test and bridge.test: finds the
# programs of this build, starts servers on 127.0.0.1 port 0 and kills by
# PID what it started.
set -u

top_build=${SL_TOP_BUILDDIR:-.}
EXIT=$top_build/roles/sillad-exit
BRIDGE=$top_build/roles/sillad-bridge
CAT=$top_build/tools/sillad-cat
CLIENT=$top_build/t/roles/tunnel-client
for b in "$EXIT" "$CAT" "$CLIENT"; do
    if [ ! -x "$b" ]; then
        echo "missing $b" >&2
        exit 99
    fi
done
if [ -z "${SILLAD_PLUGIN_PATH:-}" ]; then
    SILLAD_PLUGIN_PATH=$top_build/plugins/.libs
    export SILLAD_PLUGIN_PATH
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sillad-roles.XXXXXX")
pids=()
fails=0

cleanup() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

# start NAME CMD...: runs CMD in the background, output in $tmp/NAME.log;
# its PID goes to the variable pid_NAME.
start() {
    local name=$1
    shift
    "$@" > "$tmp/$name.log" 2>&1 &
    pids+=($!)
    eval "pid_$name=$!"
}

# wait_line FILE [KEY]: prints the address after KEY in FILE (or its
# first line without KEY) once written (at most 10 s).
wait_line() {
    local i
    for i in $(seq 100); do
        if [ -s "$1" ]; then
            if [ $# -gt 1 ]; then
                awk -v k="$2" '$1 == k { print $2; exit }' "$1"
            else
                head -1 "$1"
            fi
            return 0
        fi
        sleep 0.1
    done
    echo "no address in $1" >&2
    return 1
}

# wait_log FILE PATTERN [N]: waits (at most 10 s) until N (default 1)
# lines of FILE match the grep -E PATTERN; 1 if they never do.
wait_log() {
    local n=${3:-1} i
    for i in $(seq 100); do
        [ "$(grep -Ec -- "$2" "$1" 2>/dev/null)" -ge "$n" ] && return 0
        sleep 0.1
    done
    return 1
}

# expect NAME OUTPUT PATTERN...: each grep -E pattern must match OUTPUT.
expect() {
    local name=$1 out=$2
    shift 2
    for pat in "$@"; do
        if ! printf '%s\n' "$out" | grep -Eq -- "$pat"; then
            echo "FAIL $name: no match for /$pat/ in:"
            printf '%s\n' "$out" | sed 's/^/    /'
            fails=$((fails + 1))
            return 1
        fi
    done
    echo "ok   $name"
}

# stop_and_check NAME: SIGTERM, then the exit status must be 0 within 15 s
# (a leak under ASan, or a hang, fails).
stop_and_check() {
    local name=$1 pid rc i
    eval "pid=\$pid_$name"
    kill -TERM "$pid"
    for i in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "FAIL $name did not stop on SIGTERM"
        fails=$((fails + 1))
        return 1
    fi
    wait "$pid"
    rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "FAIL $name exited with $rc:"
        tail -30 "$tmp/$name.log" | sed 's/^/    /'
        fails=$((fails + 1))
        return 1
    fi
    echo "ok   $name stopped cleanly"
}
