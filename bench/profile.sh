#!/usr/bin/env bash
# bench/profile.sh: where session-proxy's instructions go per request, with callgrind.
#
# Usage: bench/profile.sh [SCENARIO...]     (default: 4 5 6; needs bench/run.sh's tools)
#
# `perf stat -e instructions` is not supported on this kind of VM, and wall-clock sampling is
# disturbed by anything else on the 2 cores; callgrind counts instructions exactly and
# repeatably. For each scenario (numbers as in run.sh: 4 = session = false, 5 = session read
# with a valid cookie, 6 = read + conditional write (/write/: a change on every response, one
# session per connection), and the floor: 7 = examples/bare_proxy.rs, 8 = the
# same waiting for one fred GET per request; callgrind only) it:
#   - starts a redis-server, the upstream nginx (conf/nginx-upstream.conf) and session-proxy
#     (conf/proxy.toml, RUST_LOG=warn) under `valgrind --tool=callgrind`;
#   - creates a session (5, 6), sends WARM requests, zeroes the counters (callgrind_control -z),
#     sends exactly REQUESTS keep-alive requests over CONNECTIONS connections
#     (bench/send_requests.py), and dumps the counters (callgrind_control -d);
#   - writes bench/callgrind_summary.py's tables (instructions per request, self cost by crate,
#     top functions by self and inclusive cost, malloc/free/memcpy calls per request) into
#     bench/out/profile-<date>-<scenario>.txt, and the raw dump beside it as
#     callgrind-<date>-<scenario>.out (for callgrind_annotate or kcachegrind).
#
# PROFILER=perf instead samples the native binary with `perf record -e cpu-clock` (kernel
# included) while wrk -t2 -c64 loads it for PERF_SECONDS=10, and writes the top shared objects
# and symbols into bench/out/perf-<date>-<scenario>.txt. Wall-clock samples are skewed by
# other load on the machine; callgrind's counts are not.
#
# bench/out/ is ignored by git: profiles are made on demand, never committed.
#
# CALLGRIND_ARGS= adds valgrind options, e.g. "--cache-sim=yes --LL=2097152,16,64" for cache
# misses per function with a last-level cache of an L2's size (callgrind simulates two levels,
# and takes the host's L3 for the last one, where a run barely misses).
#
# Environment (defaults): PROXY_CONF= (another session-proxy config template instead of
# conf/proxy.toml, e.g. conf/proxy-access.toml: scenario 5 with a `require` and two identity
# headers), REQUESTS=20000, WARM=2000, CONNECTIONS=8, SESSION_PROXY_BIN= (else
# the release binary is built as in run.sh; needs `debug = "line-tables-only"` or more for
# file:line names, which Cargo.toml's release profile has), BARE_PROXY_BIN= (for 7 and 8; else
# `cargo build --release --example bare_proxy`).

set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
REQUESTS="${REQUESTS:-20000}"
WARM="${WARM:-2000}"
CONNECTIONS="${CONNECTIONS:-8}"
SCENARIOS=("${@:-4 5 6}")
read -r -a SCENARIOS <<<"${SCENARIOS[*]}"

log() { printf '[profile %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in valgrind callgrind_control nginx redis-server curl python3; do
    command -v "$tool" >/dev/null || die "$tool is missing (bench/run.sh installs nginx and redis; valgrind: apt-get install valgrind)"
done

if [[ -n "${SESSION_PROXY_BIN:-}" ]]; then
    BIN="$SESSION_PROXY_BIN"
else
    target="${CARGO_TARGET_DIR:-$ROOT/target}"
    log "cargo build --release --locked (target dir $target)"
    (cd "$ROOT" && CARGO_TARGET_DIR="$target" cargo build --release --locked --quiet)
    BIN="$target/release/session-proxy"
fi
if [[ " ${SCENARIOS[*]} " == *" 7 "* || " ${SCENARIOS[*]} " == *" 8 "* ]]; then
    if [[ -n "${BARE_PROXY_BIN:-}" ]]; then
        BARE="$BARE_PROXY_BIN"
    else
        target="${CARGO_TARGET_DIR:-$ROOT/target}"
        log "cargo build --release --locked --example bare_proxy (target dir $target)"
        (cd "$ROOT" && CARGO_TARGET_DIR="$target" cargo build --release --locked --quiet --example bare_proxy)
        BARE="$target/release/examples/bare_proxy"
    fi
fi

TMP="$(mktemp -d /tmp/session-proxy-profile.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        for child in $(pgrep -P "$pid" 2>/dev/null || true); do kill "$child" 2>/dev/null || true; done
        kill "$pid" 2>/dev/null || true
    done
    [[ "${KEEP_TMP:-}" == 1 ]] && log "kept $TMP" || rm -rf "$TMP"
}
trap cleanup EXIT

read -r REDIS_PORT UPSTREAM_PORT PROXY_PORT <<<"$(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')"

wait_port() {
    local i
    for i in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on $1"
}
fill() {
    local tpl=$1 out=$2; shift 2
    local a=() kv
    for kv in "$@"; do a+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${a[@]}" "$tpl" >"$out"
}

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP" \
    --logfile "$TMP/redis.log" &
PIDS+=($!)
mkdir -p "$TMP/upstream"
fill "$BENCH_DIR/conf/nginx-upstream.conf" "$TMP/upstream/nginx.conf" "PREFIX=$TMP/upstream" \
    "UPSTREAM_PORT=$UPSTREAM_PORT"
nginx -p "$TMP/upstream" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
fill "${PROXY_CONF:-$BENCH_DIR/conf/proxy.toml}" "$TMP/proxy.toml" "LISTEN_PORT=$PROXY_PORT" \
    "REDIS_PORT=$REDIS_PORT" "UPSTREAM_PORT=$UPSTREAM_PORT"
wait_port "$REDIS_PORT"
wait_port "$UPSTREAM_PORT"

requests() { # requests COUNT URL [COOKIES]: prints how many got 200 (COOKIES: space-separated)
    local args=("$2" "$1" --connections "$CONNECTIONS") c
    for c in ${3:-}; do args+=(--cookie "$c"); done
    python3 "$BENCH_DIR/send_requests.py" "${args[@]}" 2>"$TMP/requests.err" || {
        log "requests to $2: $(cat "$TMP/requests.err")"
        echo 0
    }
}

OUT="$BENCH_DIR/out"
mkdir -p "$OUT"
DATE="$(date -u +%Y-%m-%d)"

path_of() {
    case $1 in
        4) echo /plain/ ;;
        5) echo / ;;
        6) echo /write/ ;;
        7 | 8) echo / ;;
        *) die "scenario $1: only 4 to 8 can be profiled" ;;
    esac
}
new_cookie() {
    curl -s -m 30 -D - -o /dev/null "http://127.0.0.1:$PROXY_PORT/update/" | tr -d '\r' \
        | awk -F': ' 'tolower($1)=="set-cookie"{split($2,a,";"); print a[1]; exit}'
}

if [[ "${PROFILER:-callgrind}" == perf ]]; then
    # Wall-clock sampling (cpu-clock: the hardware counters are not available in this VM) of
    # the native binary under wrk load, kernel included: where the CPU time really goes.
    command -v perf >/dev/null || die "perf is missing (apt-get install linux-perf)"
    command -v wrk >/dev/null || die "wrk is missing (bench/run.sh installs it)"
    for n in "${SCENARIOS[@]}"; do
        [[ $n == 7 || $n == 8 ]] && die "scenario $n: PROFILER=perf profiles session-proxy only (4 to 6)"
        path=$(path_of "$n")
        RUST_LOG=warn "$BIN" --config "$TMP/proxy.toml" >"$TMP/proxy.$n.log" 2>&1 &
        sp=$!
        PIDS+=("$sp")
        wait_port "$PROXY_PORT"
        cookie=""
        [[ $n != 4 ]] && cookie="$(new_cookie)"
        [[ $n != 4 && -z "$cookie" ]] && die "scenario $n: session-proxy set no session cookie"
        args=(-t 2 -c 64 -d "$((${PERF_SECONDS:-10} + 4))s")
        script_args=()
        if [[ $n == 6 ]]; then
            # Writes over 256 sessions, as run.sh's (6): one session under 64 connections
            # would mostly measure conflicts.
            for _ in $(seq 256); do new_cookie; done >"$TMP/cookies.txt"
            args+=(-s "$BENCH_DIR/cookies.lua")
            script_args=(-- "$TMP/cookies.txt" 2)
        elif [[ -n "$cookie" ]]; then
            args+=(-H "Cookie: $cookie")
        fi
        wrk "${args[@]}" "http://127.0.0.1:$PROXY_PORT$path" "${script_args[@]}" >"$TMP/wrk.$n.txt" 2>&1 &
        wrk_pid=$!
        sleep 2
        perf record -q -e cpu-clock -F 1999 -p "$sp" -o "$TMP/perf.$n.data" -- sleep "${PERF_SECONDS:-10}" \
            >/dev/null 2>&1
        wait "$wrk_pid" || true
        report="$OUT/perf-$DATE-$n.txt"
        {
            echo "session-proxy perf profile (cpu-clock, 1999 Hz, native, under wrk -t2 -c64), scenario $n ($path)"
            echo "commit $(git -C "$ROOT" rev-parse --short HEAD), binary $BIN, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
            grep -E 'Requests/sec|Non-2xx|Socket errors' "$TMP/wrk.$n.txt" || true
            echo
            echo "=== by shared object ==="
            perf report -i "$TMP/perf.$n.data" --stdio --no-children --sort dso 2>/dev/null \
                | grep -v '^#' | grep -v '^$' | head -8 || true
            echo
            echo "=== top symbols (self) ==="
            perf report -i "$TMP/perf.$n.data" --stdio --no-children --sort dso,symbol 2>/dev/null \
                | grep -v '^#' | grep -v '^$' | head -45 | cut -c1-200 || true
        } >"$report"
        kill "$sp" 2>/dev/null || true
        wait "$sp" 2>/dev/null || true
        log "scenario $n: perf -> $report"
    done
    exit 0
fi

for n in "${SCENARIOS[@]}"; do
    path=$(path_of "$n")
    out="$TMP/callgrind.$n.out"
    cmd=("$BIN" --config "$TMP/proxy.toml")
    case $n in
        7) cmd=("$BARE" --listen "127.0.0.1:$PROXY_PORT" --upstream "127.0.0.1:$UPSTREAM_PORT") ;;
        8)
            # A stored session of the size (5) reads.
            redis-cli -p "$REDIS_PORT" set bare-proxy:session '{"user":"bench","role":"tester"}' >/dev/null
            cmd=("$BARE" --listen "127.0.0.1:$PROXY_PORT" --upstream "127.0.0.1:$UPSTREAM_PORT"
                --redis "redis://127.0.0.1:$REDIS_PORT")
            ;;
    esac
    log "scenario $n: ${cmd[0]##*/} under callgrind on $PROXY_PORT"
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" --collect-atstart=yes ${CALLGRIND_ARGS:-} \
        --separate-threads=no "${cmd[@]}" >"$TMP/proxy.$n.log" 2>&1 &
    vg=$!
    PIDS+=("$vg")
    wait_port "$PROXY_PORT"
    cookie=""
    if [[ $n == 5 ]]; then
        cookie="$(new_cookie)"
        [[ -n "$cookie" ]] || die "scenario $n: session-proxy set no session cookie"
    elif [[ $n == 6 ]]; then
        # A session per connection: every request is a conditional write that meets no other.
        for _ in $(seq "$CONNECTIONS"); do
            c="$(new_cookie)"
            [[ -n "$c" ]] || die "scenario $n: session-proxy set no session cookie"
            cookie="$cookie $c"
        done
    fi
    url="http://127.0.0.1:$PROXY_PORT$path"
    requests "$WARM" "$url" "$cookie" >/dev/null
    callgrind_control -z "$vg" >/dev/null
    done_requests=$(requests "$REQUESTS" "$url" "$cookie")
    callgrind_control -d "$vg" >/dev/null
    [[ "$done_requests" == "$REQUESTS" ]] || log "scenario $n: only $done_requests of $REQUESTS requests got 200"
    # TERM: the bare proxy has no signal handling, and a background job ignores INT.
    kill -TERM "$vg"
    wait "$vg" || true
    # The dump after -z holds exactly the measured requests; it is the file with the suffix .1
    dump="$(ls "$out".* 2>/dev/null | sort | head -1)"
    [[ -n "$dump" ]] || die "scenario $n: no callgrind dump"
    report="$OUT/profile-$DATE-$n.txt"
    {
        echo "${cmd[0]##*/} callgrind profile, scenario $n ($path), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "commit $(git -C "$ROOT" rev-parse --short HEAD), binary ${cmd[0]}"
        echo "requests measured: $done_requests over $CONNECTIONS keep-alive connections (after $WARM warm-up);"
        echo "user-space instructions only (callgrind does not see the kernel: syscalls, TCP)"
        echo
        python3 "$BENCH_DIR/callgrind_summary.py" "$dump" "$done_requests"
    } >"$report"
    cp "$dump" "$OUT/callgrind-$DATE-$n.out"
    log "scenario $n: $(sed -n 6p "$report") -> $report"
    rm -f "$out"*
done
