#!/usr/bin/env bash
# bench/run.sh: session-proxy side by side with nginx and a Node.js session proxy (issue 5).
#
# Usage (from anywhere; needs root for the installs, Linux /proc; about 6 minutes, 8 with FLOOR=1,
# plus about 6 for the PGO build when anything it is built from has changed):
#
#   bench/run.sh
#
# What it does, in one run on this machine:
#   - installs what is missing: wrk, nginx (nginx-light when apt has it), redis-server, curl
#     (apt-get); the Node proxy's dependencies (`npm ci` in bench/node-proxy, from the
#     committed package-lock.json); the machine's Node.js (>= 18) and python3 are used as is;
#   - builds session-proxy in release mode with a training profile (scripts/build-pgo.sh, the
#     build for production; PGO=0 for a plain `cargo build --release --locked`; set
#     CARGO_TARGET_DIR to build elsewhere);
#   - starts, each as its own process under a temp dir, on free loopback ports: a redis-server
#     (no persistence), the upstream (nginx `return 200` with a 24-byte body, conf/
#     nginx-upstream.conf), nginx as a reverse proxy (conf/nginx-proxy.conf), the Node proxy
#     (bench/node-proxy, node:cluster with one worker per core) and one session-proxy per
#     scenario (conf/proxy.toml), so each scenario's CPU time and peak RSS belong to its own
#     processes. The system nginx service is never used;
#   - checks each proxy works (the session ones really pass the session to the upstream), then
#     measures, against that same upstream:
#       1. the upstream directly (the ceiling)
#       2. nginx as a plain reverse proxy (proxy_pass, upstream keepalive, worker_processes auto)
#       3. the Node proxy on a session route, with a valid cookie (one Redis GET per request)
#       4. session-proxy on a route with `session = false`
#       5. session-proxy on a session route with a valid cookie (one store read per request)
#       6. session-proxy where every response carries x-session-update (a read and a write)
#     and with FLOOR=1 also the floor under (4) and (5), what bounds them (examples/bare_proxy.rs:
#     the same crates and threads as session-proxy doing nothing but forward):
#       7. the bare hyper proxy
#       8. the bare hyper proxy waiting for one fred GET per request (a stored session's size)
#     with wrk (-c 64 -t 2 --latency): every scenario ROUNDS times, interleaved round-robin
#     (each round starts one scenario later), each run preceded by a WARMUP-second wrk run
#     that is not counted;
#   - for each run reads from /proc the CPU time (utime+stime, summed over all processes of
#     the proxy: nginx master+workers, node primary+workers; the proxy's utime also alone)
#     and the machine's busy time, and
#     the Redis commands per request (INFO commandstats) and per socket read Redis made (INFO
#     stats: how many commands the proxy batches into one write); at the end the peak RSS (VmHWM,
#     summed over the proxy's processes);
#   - starts a fresh session-proxy and measures its VmRSS before and while it holds 10,000
#     idle keep-alive connections (bench/idle_conns.py);
#   - prints the report (bench/report.py) and writes it to bench/out/report-<UTC time>.md
#     (bench/out/ is ignored by git). The one committed report, bench/results/latest.md, is
#     the run the README's table quotes: copy a run there by hand when the README changes.
#
# session-proxy runs with RUST_LOG=warn: the info-level access log is not what is compared
# (nginx runs with access_log off, the Node proxy logs nothing per request).
#
# Fairness on 2 cores: wrk, the upstream, Redis and the proxy all share the machine's cores.
# By default nothing is pinned: every proxy meets the same scheduler and the same competitors
# (wrk's 2 threads, the upstream's workers, Redis), and every proxy is configured to use every
# core (nginx `worker_processes auto`, one Node worker per core, session-proxy's one worker
# thread per core). WRK_CPUS / PROXY_CPUS (taskset CPU lists, e.g. 0 and 1) pin wrk and the
# proxies under test (2-6; the upstream nginx and Redis are never pinned) if you want to try a
# split; the results file records what was used.
#
# Background load (other users' builds and tests on the same 2 cores) skews everything: the
# script waits for a quiet machine before starting (up to QUIET_WAIT=120 s) and before each run
# (up to QUIET_BUDGET=90 s in all), and the report flags every run in which more than 10% of
# the machine went to processes other than wrk, the upstream, Redis and the proxy under test.
#
# Environment (defaults): DURATION=8 (s per measured run), WARMUP=2 (s), ROUNDS=5 (the host's
# speed drifts over minutes: five rounds sample each scenario at more moments than three),
# CONNECTIONS=64, THREADS=2, IDLE_CONNECTIONS=10000 (0 skips that test), WRK_CPUS= PROXY_CPUS= (no pinning),
# FLOOR= (1 adds scenarios 7 and 8, about 2 minutes more), BARE_PROXY_BIN= (their binary,
# else built with session-proxy, the same way), PGO=1 (0: plain release builds), SESSION_PROXY_BIN= (use this binary, skip the build), BENCH_REV= (build this commit from a
# `git archive` export instead of the work tree), RESULTS_FILE= (instead of
# bench/out/report-<UTC time>.md), KEEP_TMP=1 (keep the temp dir with every raw
# wrk output and log), NO_INSTALL=1 (never call apt-get/npm install).
#
# A proxy that dies, or a run with non-2xx responses or socket errors, is reported in the
# table and the notes below it, never hidden or retried.
#
# Profiling session-proxy per request (callgrind or perf): bench/profile.sh; see bench/README.md.

set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"

DURATION="${DURATION:-8}"
WARMUP="${WARMUP:-2}"
ROUNDS="${ROUNDS:-5}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
IDLE_CONNECTIONS="${IDLE_CONNECTIONS:-10000}"
WRK_CPUS="${WRK_CPUS:-}"
FLOOR="${FLOOR:-0}"
PGO="${PGO:-1}"
PROXY_CPUS="${PROXY_CPUS:-}"
SESSION_SECRET_NODE="bench-node-secret"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- installs
apt_updated=0
apt_install() {
    [[ "${NO_INSTALL:-}" == 1 ]] && die "missing $*, and NO_INSTALL=1"
    if [[ $apt_updated == 0 ]]; then
        apt-get update -qq >/dev/null
        apt_updated=1
    fi
    # Where no policy-rc.d exists, add one for the install so apt never starts the system
    # nginx (or redis) service: the benchmark runs its own instances.
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    [[ $made_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
    return 0
}

install_deps() {
    command -v wrk >/dev/null || { log "installing wrk"; apt_install wrk; }
    if ! command -v nginx >/dev/null; then
        [[ $apt_updated == 0 && "${NO_INSTALL:-}" != 1 ]] && { apt-get update -qq >/dev/null; apt_updated=1; }
        if apt-cache show nginx-light >/dev/null 2>&1; then
            log "installing nginx-light"; apt_install nginx-light
        else
            log "installing nginx"; apt_install nginx
        fi
    fi
    command -v redis-server >/dev/null || { log "installing redis-server"; apt_install redis-server; }
    command -v redis-cli >/dev/null || { log "installing redis-tools"; apt_install redis-tools; }
    command -v curl >/dev/null || { log "installing curl"; apt_install curl; }
    command -v node >/dev/null || { log "installing nodejs"; apt_install nodejs npm; }
    command -v python3 >/dev/null || die "python3 is needed (bench/idle_conns.py, bench/report.py)"
    local node_major
    node_major="$(node -p 'process.versions.node.split(".")[0]')"
    [[ "$node_major" -ge 18 ]] || die "Node.js >= 18 is needed, found $(node -v)"
    local nm="$BENCH_DIR/node-proxy/node_modules"
    if [[ ! -d "$nm" || "$BENCH_DIR/node-proxy/package-lock.json" -nt "$nm/.package-lock.json" ]]; then
        [[ "${NO_INSTALL:-}" == 1 ]] && die "bench/node-proxy has no node_modules, and NO_INSTALL=1"
        log "npm ci in bench/node-proxy"
        (cd "$BENCH_DIR/node-proxy" && npm ci --omit=dev --no-audit --no-fund --loglevel=error >/dev/null)
    fi
}

# ---------------------------------------------------------------- build
build() {
    # What must be built: session-proxy unless prebuilt, the floor's example with FLOOR=1
    # unless prebuilt. PGO=1 builds both with scripts/build-pgo.sh, which always builds
    # session-proxy (a prebuilt one is still the one measured), and keeps what it built
    # while nothing it is built from has changed.
    local targets=()
    if [[ -n "${SESSION_PROXY_BIN:-}" ]]; then
        [[ -x "$SESSION_PROXY_BIN" ]] || die "SESSION_PROXY_BIN=$SESSION_PROXY_BIN is not executable"
        BIN="$SESSION_PROXY_BIN"
        BUILT_FROM="prebuilt $SESSION_PROXY_BIN"
    else
        targets+=(--bin session-proxy)
    fi
    BARE_BIN="${BARE_PROXY_BIN:-}"
    if [[ $FLOOR == 1 && -n "$BARE_BIN" ]]; then
        [[ -x "$BARE_BIN" ]] || die "BARE_PROXY_BIN=$BARE_BIN is not executable"
    elif [[ $FLOOR == 1 ]]; then
        targets+=(--example bare_proxy)
    fi
    [[ ${#targets[@]} -gt 0 ]] || return 0
    local src="$ROOT" from="work tree"
    if [[ -n "${BENCH_REV:-}" ]]; then
        src="$TMP/src"
        mkdir -p "$src"
        git -C "$ROOT" archive "$BENCH_REV" | tar -x -C "$src"
        from="git archive $(git -C "$ROOT" rev-parse --short "$BENCH_REV")"
    fi
    local target="${CARGO_TARGET_DIR:-$src/target}" out
    if [[ $PGO == 1 ]]; then
        [[ -x "$src/scripts/build-pgo.sh" ]] || die "$from has no scripts/build-pgo.sh: run with PGO=0"
        local floor=()
        [[ " ${targets[*]} " == *" bare_proxy "* ]] && floor=(--floor)
        log "scripts/build-pgo.sh ${floor[*]} ($from, target dir $target)"
        (cd "$src" && CARGO_TARGET_DIR="$target" scripts/build-pgo.sh "${floor[@]}") \
            || die "scripts/build-pgo.sh failed"
        out="$target/pgo" from="$from, PGO (scripts/build-pgo.sh)"
    else
        log "cargo build --release --locked ${targets[*]} ($from, target dir $target)"
        (cd "$src" && CARGO_TARGET_DIR="$target" cargo build --release --locked --quiet "${targets[@]}") \
            || die "cargo build --release failed"
        out="$target/release" from="$from, cargo build --release"
    fi
    if [[ -z "${SESSION_PROXY_BIN:-}" ]]; then
        BIN="$out/session-proxy"
        BUILT_FROM="$from"
    fi
    if [[ -z "$BARE_BIN" && $FLOOR == 1 ]]; then
        BARE_BIN="$out/bare_proxy"
        [[ $PGO == 1 ]] || BARE_BIN="$out/examples/bare_proxy"
    fi
}

# ---------------------------------------------------------------- processes
PIDS=()
cleanup() {
    local i pid
    # Newest first: the proxies stop before the upstream and Redis they use, so they log no
    # connection errors; children first (nginx workers, node cluster workers).
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[$i]}
        for child in $(pgrep -P "$pid" 2>/dev/null || true); do kill "$child" 2>/dev/null || true; done
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ "${KEEP_TMP:-}" == 1 ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}

# Free loopback ports: all bound at once so none is handed out twice, then released.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_port() {
    local port=$1 name=$2 i
    for i in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "$name did not listen on port $port within 20 s (see $TMP/*.log)"
}

fill() { # fill TEMPLATE OUT KEY=VALUE...
    local tpl=$1 out=$2; shift 2
    local sed_args=() kv
    for kv in "$@"; do sed_args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${sed_args[@]}" "$tpl" >"$out"
}

# Command prefixes that pin wrk and the proxies when asked (taskset execs, so $! stays the
# pinned process itself).
PIN_WRK=()
PIN_PROXY=()
[[ -n "$WRK_CPUS" ]] && PIN_WRK=(taskset -c "$WRK_CPUS")
[[ -n "$PROXY_CPUS" ]] && PIN_PROXY=(taskset -c "$PROXY_CPUS")

start_nginx() { # start_nginx NAME PIN TEMPLATE KEY=VALUE...; sets NGINX_PID (PIN: yes = a proxy under test)
    local name=$1 pin=$2 tpl=$3; shift 3
    local pin_cmd=()
    [[ $pin == yes ]] && pin_cmd=("${PIN_PROXY[@]}")
    local prefix="$TMP/$name"
    mkdir -p "$prefix"
    fill "$tpl" "$prefix/nginx.conf" "PREFIX=$prefix" "$@"
    nginx -t -q -p "$prefix" -e "$prefix/error.log" -c "$prefix/nginx.conf" \
        || die "nginx config for $name is invalid"
    "${pin_cmd[@]}" nginx -p "$prefix" -e "$prefix/error.log" -c "$prefix/nginx.conf" \
        -g 'daemon off; master_process on;' >"$TMP/$name.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
}

start_session_proxy() { # start_session_proxy NAME PORT; sets SP_PID
    local name=$1 port=$2
    fill "$BENCH_DIR/conf/proxy.toml" "$TMP/$name.toml" \
        "LISTEN_PORT=$port" "REDIS_PORT=$REDIS_PORT" "UPSTREAM_PORT=$UPSTREAM_PORT"
    "$BIN" --config "$TMP/$name.toml" --check >/dev/null || die "$name: config check failed"
    RUST_LOG=warn "${PIN_PROXY[@]}" "$BIN" --config "$TMP/$name.toml" >"$TMP/$name.log" 2>&1 &
    SP_PID=$!
    PIDS+=("$SP_PID")
}

# The process and all its children (nginx workers, node cluster workers).
proc_tree() { echo "$1" $(pgrep -P "$1" 2>/dev/null || true); }

# Clock ticks of user+system CPU time, summed over the given processes (all their threads).
cpu_ticks() {
    local total
    read -r total _ <<<"$(cpu_ticks_split "$@")"
    echo "$total"
}

# The same as "TOTAL USER": user+system ticks and user ticks alone.
cpu_ticks_split() {
    local total=0 user=0 pid stat rest
    for pid in "$@"; do
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
        rest="${stat##*) }" # fields from 3 on; the name may contain spaces
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12])) # utime (field 14) + stime (field 15)
        user=$((user + f[11]))
    done
    echo "$total $user"
}

# Busy and total ticks of the whole machine (/proc/stat; busy excludes idle and iowait).
machine_ticks() {
    awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print t-$5-$6, t}' /proc/stat
}

# Busy share of the whole machine (percent of all cores) over SECONDS, from /proc/stat.
machine_busy_pct() {
    local b0 t0 b1 t1
    read -r b0 t0 <<<"$(machine_ticks)"
    sleep "$1"
    read -r b1 t1 <<<"$(machine_ticks)"
    echo $(( 100 * (b1 - b0) / (t1 - t0 > 0 ? t1 - t0 : 1) ))
}

status_kib() { # status_kib FIELD PID...: sum of a /proc/PID/status field in KiB
    local field=$1; shift
    local total=0 pid v
    for pid in "$@"; do
        v="$(awk -v f="$field:" '$1==f{print $2}' "/proc/$pid/status" 2>/dev/null)" || true
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# The session cookie (name=value) that a request to URL sets, or nothing.
session_cookie() { # session_cookie URL [CURL ARGS...]
    curl -s -m 5 -D - -o /dev/null "$@" | tr -d '\r' \
        | awk -F': ' 'tolower($1)=="set-cookie"{split($2,a,";"); print a[1]; exit}'
}

# ---------------------------------------------------------------- main
TMP="$(mktemp -d /tmp/session-proxy-bench.XXXXXX)"
trap cleanup EXIT
START_EPOCH=$(date +%s)

install_deps
build

# 10,000 idle connections need that many descriptors in the proxy and the client.
want_fds=$((IDLE_CONNECTIONS + 2048 > 8192 ? IDLE_CONNECTIONS + 2048 : 8192))
ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[[ "$(ulimit -n)" -ge "$want_fds" ]] || log "WARNING: ulimit -n is $(ulimit -n), below $want_fds"

# Background load (other users' builds and tests) skews every number: wait up to QUIET_WAIT
# seconds for the machine to be quiet, and record what was running if it never is.
QUIET_WAIT="${QUIET_WAIT:-120}"
BACKGROUND_NOTE=""
waited=0
while :; do
    busy=$(machine_busy_pct 2)
    [[ $busy -le 10 ]] && break
    if [[ $waited -ge $QUIET_WAIT ]]; then
        BACKGROUND_NOTE="the machine was ${busy}% busy before the benchmark started (after waiting ${waited} s); top processes (%CPU of one core): $(top -b -n 2 -d 1 -w 200 | awk '/^ *PID/{frame++; next} frame==2 && NF>=12 {print $9, $12}' | head -4 | awk '{printf "%s %s%%; ", $2, $1}')"
        log "WARNING: $BACKGROUND_NOTE"
        break
    fi
    log "machine ${busy}% busy before start (other processes); waiting for it to be quiet"
    sleep 5
    waited=$((waited + 7))
done

read -r REDIS_PORT UPSTREAM_PORT NGINX_PORT NODE_PORT SP4_PORT SP5_PORT SP6_PORT IDLE_PORT \
    BARE7_PORT BARE8_PORT <<<"$(free_ports 10)"

log "redis-server on $REDIS_PORT"
mkdir -p "$TMP/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$TMP/redis" --daemonize no --logfile "$TMP/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

log "upstream nginx on $UPSTREAM_PORT"
start_nginx upstream no "$BENCH_DIR/conf/nginx-upstream.conf" "UPSTREAM_PORT=$UPSTREAM_PORT"
UPSTREAM_PID=$NGINX_PID

log "nginx proxy on $NGINX_PORT"
start_nginx nginx-proxy yes "$BENCH_DIR/conf/nginx-proxy.conf" \
    "UPSTREAM_PORT=$UPSTREAM_PORT" "LISTEN_PORT=$NGINX_PORT"
NGINX_PROXY_PID=$NGINX_PID

log "node proxy on $NODE_PORT"
PORT=$NODE_PORT UPSTREAM="http://127.0.0.1:$UPSTREAM_PORT" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    SESSION_SECRET="$SESSION_SECRET_NODE" NODE_ENV=production \
    "${PIN_PROXY[@]}" node "$BENCH_DIR/node-proxy/server.js" >"$TMP/node-proxy.log" 2>&1 &
NODE_PID=$!
PIDS+=("$NODE_PID")

log "session-proxy x3 on $SP4_PORT $SP5_PORT $SP6_PORT"
start_session_proxy sp4 "$SP4_PORT"; SP4_PID=$SP_PID
start_session_proxy sp5 "$SP5_PORT"; SP5_PID=$SP_PID
start_session_proxy sp6 "$SP6_PORT"; SP6_PID=$SP_PID

BARE7_PID="" BARE8_PID=""
if [[ $FLOOR == 1 ]]; then
    log "bare hyper proxies (the floor) on $BARE7_PORT $BARE8_PORT"
    "${PIN_PROXY[@]}" "$BARE_BIN" --listen "127.0.0.1:$BARE7_PORT" --upstream "127.0.0.1:$UPSTREAM_PORT" \
        >"$TMP/bare7.log" 2>&1 &
    BARE7_PID=$!
    PIDS+=("$BARE7_PID")
fi

wait_port "$REDIS_PORT" redis-server
if [[ $FLOOR == 1 ]]; then
    # Started once Redis listens: it connects at start. Its GET reads a session of the size
    # (5) reads.
    rcli set bare-proxy:session '{"user":"bench","role":"tester"}' >/dev/null
    "${PIN_PROXY[@]}" "$BARE_BIN" --listen "127.0.0.1:$BARE8_PORT" --upstream "127.0.0.1:$UPSTREAM_PORT" \
        --redis "redis://127.0.0.1:$REDIS_PORT" >"$TMP/bare8.log" 2>&1 &
    BARE8_PID=$!
    PIDS+=("$BARE8_PID")
    wait_port "$BARE7_PORT" "bare proxy (7)"
    wait_port "$BARE8_PORT" "bare proxy (8)"
fi
wait_port "$UPSTREAM_PORT" "upstream nginx"
wait_port "$NGINX_PORT" "nginx proxy"
wait_port "$NODE_PORT" "node proxy"
wait_port "$SP4_PORT" "session-proxy (4)"
wait_port "$SP5_PORT" "session-proxy (5)"
wait_port "$SP6_PORT" "session-proxy (6)"
sleep 1 # node cluster workers start listening one by one

# ------------------------------------------------ sanity checks: each scenario does its job
NOTES="$TMP/notes.txt"
: >"$NOTES"
[[ -n "$BACKGROUND_NOTE" ]] && echo "$BACKGROUND_NOTE" >>"$NOTES"
note() { echo "$*" >>"$NOTES"; log "$*"; }
EXPECTED_SESSION='{"user":"bench","role":"tester"}'
SKIP=() # SKIP[n]=reason: scenario n is not measured

check_body() { # check_body SCENARIO URL EXPECTED [CURL ARGS...]
    local n=$1 url=$2 want=$3; shift 3
    local got
    got="$(curl -s -m 5 "$@" "$url" | tr -d '\r\n' || true)"
    if [[ "$got" != "$want" ]]; then
        note "check ($n) FAILED: $url answered '${got:0:200}', expected '$want'"
        return 1
    fi
}

check_body 1 "http://127.0.0.1:$UPSTREAM_PORT/" "hello from the upstream" || SKIP[1]="upstream check failed"
check_body 2 "http://127.0.0.1:$NGINX_PORT/" "hello from the upstream" || SKIP[2]="check failed"
check_body 4 "http://127.0.0.1:$SP4_PORT/plain/" "hello from the upstream" || SKIP[4]="check failed"
if [[ $FLOOR == 1 ]]; then
    check_body 7 "http://127.0.0.1:$BARE7_PORT/" "hello from the upstream" || SKIP[7]="check failed"
    check_body 8 "http://127.0.0.1:$BARE8_PORT/" "hello from the upstream" || SKIP[8]="check failed"
fi

NODE_COOKIE="$(session_cookie "http://127.0.0.1:$NODE_PORT/update/")"
if [[ -z "$NODE_COOKIE" ]]; then
    note "check (3) FAILED: the node proxy set no cookie on /update/"
    SKIP[3]="no session cookie"
else
    check_body 3 "http://127.0.0.1:$NODE_PORT/echo/" "$EXPECTED_SESSION" -H "Cookie: $NODE_COOKIE" \
        || SKIP[3]="session not passed to the upstream"
fi

SP_COOKIE="$(session_cookie "http://127.0.0.1:$SP5_PORT/update/")"
if [[ -z "$SP_COOKIE" ]]; then
    note "check (5, 6) FAILED: session-proxy set no session cookie on a response with x-session-update (session layer not in this build?)"
    SKIP[5]="no session cookie from session-proxy"
    SKIP[6]="no session cookie from session-proxy"
else
    check_body 5 "http://127.0.0.1:$SP5_PORT/echo/" "$EXPECTED_SESSION" -H "Cookie: $SP_COOKIE" \
        || SKIP[5]="session not passed to the upstream"
    check_body 6 "http://127.0.0.1:$SP6_PORT/echo/" "$EXPECTED_SESSION" -H "Cookie: $SP_COOKIE" \
        || SKIP[6]="session not passed to the upstream"
    # Scenario 6 must not issue a new cookie per request: the session is live.
    curl -s -m 5 -o /dev/null -H "Cookie: $SP_COOKIE" "http://127.0.0.1:$SP6_PORT/update/" \
        -D "$TMP/sp6-headers.txt" || true
    if grep -qi '^set-cookie:' "$TMP/sp6-headers.txt"; then
        note "note (6): session-proxy sets a cookie on every update of a live session"
    fi
    if grep -qi '^x-session-update' "$TMP/sp6-headers.txt"; then
        note "check (6) FAILED: x-session-update reached the client"
    fi
fi

# ------------------------------------------------ scenarios
NAMES=("" "upstream direct (ceiling)" "nginx reverse proxy" "Node proxy (express-session + connect-redis)"
    "session-proxy, session = false" "session-proxy, session read (valid cookie)"
    "session-proxy, read + write (update every response)" "bare hyper proxy (floor)"
    "bare hyper proxy + one fred GET (floor)")
URLS=("" "http://127.0.0.1:$UPSTREAM_PORT/" "http://127.0.0.1:$NGINX_PORT/" "http://127.0.0.1:$NODE_PORT/"
    "http://127.0.0.1:$SP4_PORT/plain/" "http://127.0.0.1:$SP5_PORT/" "http://127.0.0.1:$SP6_PORT/update/"
    "http://127.0.0.1:$BARE7_PORT/" "http://127.0.0.1:$BARE8_PORT/")
COOKIES=("" "" "" "$NODE_COOKIE" "" "$SP_COOKIE" "$SP_COOKIE" "" "")
ROOTPIDS=("" "" "$NGINX_PROXY_PID" "$NODE_PID" "$SP4_PID" "$SP5_PID" "$SP6_PID" "$BARE7_PID" "$BARE8_PID")
SCENARIOS=6
[[ $FLOOR == 1 ]] && SCENARIOS=8
DEAD=()

# Runs wrk for scenario N into OUTFILE and prints wrk's own CPU time in seconds (getrusage of
# the child), so the report can tell wrk's share of the machine from background load.
wrk_run() { # wrk_run N SECONDS OUTFILE
    local n=$1 secs=$2 out=$3
    local args=(-t "$THREADS" -c "$CONNECTIONS" -d "${secs}s" --latency)
    [[ -n "${COOKIES[$n]}" ]] && args+=(-H "Cookie: ${COOKIES[$n]}")
    python3 -c '
import resource, subprocess, sys
with open(sys.argv[1], "w") as out:
    subprocess.run(sys.argv[2:], stdout=out, stderr=subprocess.STDOUT)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{r.ru_utime + r.ru_stime:.3f}")' "$out" "${PIN_WRK[@]}" wrk "${args[@]}" "${URLS[$n]}" || echo 0
}


# Before each run: while other processes keep the machine busy (our own servers are idle
# between runs), wait for them, within a budget of QUIET_BUDGET seconds for the whole run.
QUIET_BUDGET="${QUIET_BUDGET:-90}"
quiet_waited=0
wait_quiet() {
    local busy
    while :; do
        busy=$(machine_busy_pct 1)
        [[ $busy -le 10 ]] && return 0
        if [[ $quiet_waited -ge $QUIET_BUDGET ]]; then
            log "$1: the machine is ${busy}% busy with other work; measuring anyway (wait budget spent)"
            return 0
        fi
        log "$1: the machine is ${busy}% busy with other work; waiting"
        sleep 2
        quiet_waited=$((quiet_waited + 3))
    done
}

RAW="$TMP/runs.tsv"
printf 'scenario\tround\twrk_file\tproxy_ticks\tupstream_ticks\tredis_ticks\tbusy_ticks\ttotal_ticks\tredis_stats\talive\twrk_cpu_s\tproxy_user_ticks\n' >"$RAW"

est=$((ROUNDS * SCENARIOS * (DURATION + WARMUP + 1)))
log "measuring: $ROUNDS rounds x $SCENARIOS scenarios x ${DURATION}s (+${WARMUP}s warm-up), about ${est}s"
for round in $(seq 1 "$ROUNDS"); do
    for ((k = 0; k < SCENARIOS; k++)); do
        n=$(( (k + round - 1) % SCENARIOS + 1 ))
        [[ -n "${SKIP[$n]:-}" || -n "${DEAD[$n]:-}" ]] && continue
        root="${ROOTPIDS[$n]}"
        wait_quiet "round $round ($n)"
        wrk_run "$n" "$WARMUP" "$TMP/warmup-$n-$round.txt" >/dev/null
        pids=()
        [[ -n "$root" ]] && read -r -a pids <<<"$(proc_tree "$root")"
        up_pids=($(proc_tree "$UPSTREAM_PID"))
        rcli config resetstat >/dev/null
        p0=0 pu0=0; [[ -n "$root" ]] && read -r p0 pu0 <<<"$(cpu_ticks_split "${pids[@]}")"
        u0=$(cpu_ticks "${up_pids[@]}"); r0=$(cpu_ticks "$REDIS_PID")
        read -r b0 t0 <<<"$(machine_ticks)"
        out="$TMP/wrk-$n-$round.txt"
        wrk_cpu=$(wrk_run "$n" "$DURATION" "$out")
        p1=0 pu1=0; [[ -n "$root" ]] && read -r p1 pu1 <<<"$(cpu_ticks_split "${pids[@]}")"
        u1=$(cpu_ticks "${up_pids[@]}"); r1=$(cpu_ticks "$REDIS_PID")
        read -r b1 t1 <<<"$(machine_ticks)"
        # Commands, and the socket reads Redis took them in (how well the proxy batches them).
        { rcli info commandstats; rcli info stats; } | tr -d '\r' \
            | grep -E '^(cmdstat_|total_reads_processed:)' >"$TMP/redis-$n-$round.txt" || true
        alive=1
        if [[ -n "$root" ]] && ! kill -0 "$root" 2>/dev/null; then
            alive=0
            DEAD[$n]=1
            note "($n) ${NAMES[$n]}: the proxy process $root DIED during round $round"
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$round" "$out" $((p1 - p0)) \
            $((u1 - u0)) $((r1 - r0)) $((b1 - b0)) $((t1 - t0)) "$TMP/redis-$n-$round.txt" "$alive" \
            "$wrk_cpu" $((pu1 - pu0)) >>"$RAW"
        log "round $round ($n) $(awk '/Requests\/sec/{print $2" req/s"}' "$out") $(grep -E 'Non-2xx|Socket errors' "$out" | tr '\n' ' ')"
    done
done

# Peak RSS (VmHWM) over the whole run, summed over each proxy's processes.
PEAK="$TMP/peak_rss.tsv"
: >"$PEAK"
for ((n = 2; n <= SCENARIOS; n++)); do
    root="${ROOTPIDS[$n]}"
    kill -0 "$root" 2>/dev/null || continue
    printf '%s\t%s\t%s\n' "$n" "$(status_kib VmHWM $(proc_tree "$root"))" \
        "$(proc_tree "$root" | wc -w)" >>"$PEAK"
done

# ------------------------------------------------ 10,000 idle keep-alive connections
IDLE_JSON="$TMP/idle.json"
if [[ "$IDLE_CONNECTIONS" -gt 0 ]]; then
    log "idle connections: a fresh session-proxy on $IDLE_PORT holding $IDLE_CONNECTIONS"
    start_session_proxy sp-idle "$IDLE_PORT"; IDLE_PID=$SP_PID
    wait_port "$IDLE_PORT" "session-proxy (idle)"
    # Warm it up first, so "before" includes the runtime, the upstream pool and the store pool.
    wrk -t 1 -c 8 -d 1s "http://127.0.0.1:$IDLE_PORT/" >/dev/null 2>&1 || true
    sleep 0.5
    python3 "$BENCH_DIR/idle_conns.py" --port "$IDLE_PORT" --pid "$IDLE_PID" --path / \
        --count "$IDLE_CONNECTIONS" >"$IDLE_JSON" 2>"$TMP/idle.err" || note "idle test failed: $(cat "$IDLE_JSON" "$TMP/idle.err")"
    kill -0 "$IDLE_PID" 2>/dev/null || note "the idle-connection session-proxy DIED (see its log)"
else
    echo '{"skipped": "IDLE_CONNECTIONS=0"}' >"$IDLE_JSON"
fi

# ------------------------------------------------ logs: anything the proxies complained about
for name in sp4 sp5 sp6 sp-idle node-proxy bare7 bare8; do
    f="$TMP/$name.log"
    [[ -s "$f" ]] || continue
    lines=$(wc -l <"$f")
    note "log $name: $lines line(s); first: $(head -c 300 "$f" | head -3 | tr '\n' ' ')"
done
for name in upstream nginx-proxy; do
    f="$TMP/$name/error.log"
    [[ -s "$f" ]] && note "log $name error.log: $(wc -l <"$f") line(s); first: $(head -2 "$f" | tr '\n' ' ')"
done

# ------------------------------------------------ report
META="$TMP/meta.env"
{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    dirty=""
    [[ -z "${BENCH_REV:-}" && -z "${SESSION_PROXY_BIN:-}" && -n "$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]] && dirty=" (work tree has uncommitted changes in src/)"
    echo "built_from=$BUILT_FROM$dirty"
    echo "cpu=$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo) x $(nproc)"
    echo "kernel=$(uname -r)"
    echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}')"
    echo "nginx=$(nginx -v 2>&1 | awk -F/ '{print $2}')"
    echo "node=$(node -v)"
    echo "redis=$(redis-server --version | awk '{print $3}' | cut -d= -f2)"
    echo "rustc=$(rustc -V 2>/dev/null | awk '{print $2}')"
    echo "duration=$DURATION"
    echo "warmup=$WARMUP"
    echo "rounds=$ROUNDS"
    echo "connections=$CONNECTIONS"
    echo "threads=$THREADS"
    echo "wrk_cpus=${WRK_CPUS:-none}"
    echo "proxy_cpus=${PROXY_CPUS:-none}"
    echo "clk_tck=$(getconf CLK_TCK)"
    echo "floor=$FLOOR"
    echo "elapsed=$(( $(date +%s) - START_EPOCH ))"
} >"$META"
for ((n = 1; n <= SCENARIOS; n++)); do
    [[ -n "${SKIP[$n]:-}" ]] && echo "skip$n=${SKIP[$n]}" >>"$META"
done

mkdir -p "$BENCH_DIR/out"
RESULT="${RESULTS_FILE:-$BENCH_DIR/out/report-$(date -u +%Y-%m-%dT%H%M%SZ).md}"
python3 "$BENCH_DIR/report.py" --meta "$META" --runs "$RAW" --peak "$PEAK" --idle "$IDLE_JSON" \
    --notes "$NOTES" >"$TMP/report.md"
cat "$TMP/report.md"
cp "$TMP/report.md" "$RESULT"
log "written to $RESULT (whole run: $(( $(date +%s) - START_EPOCH )) s)"
