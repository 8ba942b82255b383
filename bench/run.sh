#!/usr/bin/env bash
# bench/run.sh: session-proxy side by side with nginx and a Node.js session proxy (issue 5),
# and its session write path, index, TLS and Redis Cluster scenarios (issues 23, 24, 26, 27).
#
# Usage (from anywhere; needs root for the installs, Linux /proc). The whole run of
# bench/results/latest.md (scenarios 1 to 6) took 690 s; scenarios 9 to 15 add 7 x 5 rounds x
# 11 s, and 16 and 17 (with a build that has cluster support) 2 x 5 x 11 s more: about 18
# minutes now, 20 with the cluster (the measuring alone: 13 or 15 scenarios x 5 x 11 s = 715
# or 825 s), 2 more with FLOOR=1, plus about 6 for the PGO build when anything it is built
# from has changed; ONLY= runs a subset:
#
#   bench/run.sh
#
# What it does, in one run on this machine:
#   - installs what is missing: wrk, nginx (nginx-light when apt has it), redis-server, curl,
#     h2load (nghttp2-client), openssl (apt-get); the Node proxy's dependencies (`npm ci` in
#     bench/node-proxy, from the committed package-lock.json); the machine's Node.js (>= 18)
#     and python3 are used as is;
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
#       6. session-proxy where every response carries an x-session-update that changes the
#          session (a read and a conditional write), over 256 sessions (bench/cookies.lua)
#     and with FLOOR=1 also the floor under (4) and (5), what bounds them (examples/bare_proxy.rs:
#     the same crates and threads as session-proxy doing nothing but forward):
#       7. the bare hyper proxy
#       8. the bare hyper proxy waiting for one fred GET per request (a stored session's size)
#     and the scenarios of issues 23, 24, 26 and 27 (bench/README.md says more of each):
#       9. echo: the upstream returns the session unchanged in x-session-update (no write)
#      10. contention: 64 connections on one session, each request a merge patch
#          (x-session-patch) of a key of its own (bench/contention.lua)
#      11. (6) with session.index = "/user/id", the updates keeping the indexed value
#      12. nginx over TLS, HTTP/1.1 (wrk)        13. session-proxy over TLS, HTTP/1.1, session read
#      14. nginx over TLS, HTTP/2 (h2load)       15. session-proxy over TLS, HTTP/2, session read
#          (a self-signed certificate made at run time; h2load -c 4 -m 16: 64 streams)
#      16. session reads on a 3-master Redis Cluster (store.url = redis-cluster://) started
#          here; skipped, with --check's reason, by a build that refuses the URL
#      17. (5) with (16)'s client (wrk cycling over 256 sessions), on the one Redis: (16)'s
#          like-for-like baseline, measured only beside (16)
#     with wrk (-c 64 -t 2 --latency; h2load for 14, 15): every scenario ROUNDS times, interleaved round-robin
#     (each round starts one scenario later), each run preceded by a WARMUP-second wrk run
#     that is not counted;
#   - for each run reads from /proc the CPU time (utime+stime, summed over all processes of
#     the proxy: nginx master+workers, node primary+workers; the proxy's utime also alone)
#     and the machine's busy time, and
#     the Redis commands per request (INFO commandstats) and per socket read Redis made (INFO
#     stats: how many commands the proxy batches into one write); for the session-proxies with
#     an admin listener, their /metrics before and after (store operations, conflicts by
#     outcome, skipped writes); at the end the peak RSS (VmHWM, summed over the proxy's processes);
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
# wrk output and log), NO_INSTALL=1 (never call apt-get/npm install), ONLY= (a comma list of
# scenarios to run, e.g. ONLY=2,5,16), SESSIONS=4*CONNECTIONS (the sessions (6), (11) and (16)
# cycle over), H2_CLIENTS=4 H2_STREAMS=16 (h2load's connections and streams per connection).
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
    command -v h2load >/dev/null || { log "installing nghttp2-client (h2load)"; apt_install nghttp2-client; }
    command -v openssl >/dev/null || { log "installing openssl"; apt_install openssl; }
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

# conf/proxy.toml for NAME on PORT, with SECTION:LINE extras: each LINE goes into [SECTION]
# (replacing a line there with the same key), e.g. "server:admin_listen = ...".
session_proxy_conf() { # session_proxy_conf NAME PORT [SECTION:LINE...]; writes $TMP/NAME.toml
    local name=$1 port=$2; shift 2
    fill "$BENCH_DIR/conf/proxy.toml" "$TMP/$name.base.toml" \
        "LISTEN_PORT=$port" "REDIS_PORT=$REDIS_PORT" "UPSTREAM_PORT=$UPSTREAM_PORT"
    python3 - "$TMP/$name.base.toml" "$TMP/$name.toml" "$@" <<'EOF'
import sys
src, dst, extras = sys.argv[1], sys.argv[2], sys.argv[3:]
add = {}
for e in extras:
    section, line = e.split(":", 1)
    add.setdefault(section, []).append(line)
keys = {sec: {l.split("=", 1)[0].strip() for l in lines} for sec, lines in add.items()}
out, section = [], None
for line in open(src).read().splitlines():
    t = line.strip()
    if t.startswith("["):
        section = t.strip("[]")
        out.append(line)
        out.extend(add.pop(section, []))
        continue
    if section in keys and "=" in t and not t.startswith("#") and t.split("=", 1)[0].strip() in keys[section]:
        continue
    out.append(line)
for section, lines in add.items():
    out += ["", f"[{section}]"] + lines
open(dst, "w").write("\n".join(out) + "\n")
EOF
}

start_session_proxy() { # start_session_proxy NAME PORT [SECTION:LINE...]; sets SP_PID
    local name=$1 port=$2; shift 2
    session_proxy_conf "$name" "$port" "$@"
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

# 10,000 idle connections need that many descriptors in the proxy and the client, and the
# proxy checks at start that its limit holds server.max_connections (default 20,000) at two
# sockets each (client and upstream) plus its own; below that it lowers the cap with a WARN,
# and the idle test would meet the lowered cap. As root the hard limit can be raised too.
want_fds=65536
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
    BARE7_PORT BARE8_PORT SP9_PORT SP10_PORT SP11_PORT NGINX_TLS_PORT SP_TLS_PORT SP16_PORT \
    ADMIN6_PORT ADMIN9_PORT ADMIN10_PORT ADMIN11_PORT CL1_PORT CL2_PORT CL3_PORT \
    CL1_BUS CL2_BUS CL3_BUS ADMIN5_PORT ADMIN_TLS_PORT ADMIN16_PORT <<<"$(free_ports 29)"
CL_PORTS=("$CL1_PORT" "$CL2_PORT" "$CL3_PORT")
CL_BUS=("$CL1_BUS" "$CL2_BUS" "$CL3_BUS")

# Which scenarios run: all by default (7 and 8 with FLOOR=1), or the list in ONLY.
ORDER=(1 2 3 4 5 6)
[[ $FLOOR == 1 ]] && ORDER+=(7 8)
ORDER+=(9 10 11 12 13 14 15 16 17)
if [[ -n "${ONLY:-}" ]]; then
    read -r -a ORDER <<<"${ONLY//,/ }"
fi
wanted() { [[ " ${ORDER[*]} " == *" $1 "* ]]; }
if [[ $FLOOR != 1 ]] && { wanted 7 || wanted 8; }; then die "scenarios 7 and 8 need FLOOR=1"; fi

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

admin() { echo "server:admin_listen = \"127.0.0.1:$1\""; }
log "session-proxy x6 on $SP4_PORT $SP5_PORT $SP6_PORT $SP9_PORT $SP10_PORT $SP11_PORT"
start_session_proxy sp4 "$SP4_PORT"; SP4_PID=$SP_PID
start_session_proxy sp5 "$SP5_PORT" "$(admin "$ADMIN5_PORT")"; SP5_PID=$SP_PID
start_session_proxy sp6 "$SP6_PORT" "$(admin "$ADMIN6_PORT")"; SP6_PID=$SP_PID
start_session_proxy sp9 "$SP9_PORT" "$(admin "$ADMIN9_PORT")"; SP9_PID=$SP_PID
start_session_proxy sp10 "$SP10_PORT" "$(admin "$ADMIN10_PORT")"; SP10_PID=$SP_PID
ADMIN_TOKEN="bench-admin-token-not-for-production"
start_session_proxy sp11 "$SP11_PORT" "$(admin "$ADMIN11_PORT")" \
    "server:admin_token = \"$ADMIN_TOKEN\"" 'session:index = "/user/id"'; SP11_PID=$SP_PID

# TLS (12 to 15): one self-signed certificate made now, for nginx and session-proxy alike.
mkdir -p "$TMP/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$TMP/tls/key.pem" -out "$TMP/tls/cert.pem" >"$TMP/tls/openssl.log" 2>&1 \
    || die "openssl could not make a certificate: $(cat "$TMP/tls/openssl.log")"
log "nginx over TLS (HTTP/2 and HTTP/1.1) on $NGINX_TLS_PORT, session-proxy over TLS on $SP_TLS_PORT"
start_nginx nginx-tls yes "$BENCH_DIR/conf/nginx-tls.conf" "UPSTREAM_PORT=$UPSTREAM_PORT" \
    "LISTEN_PORT=$NGINX_TLS_PORT" "CERT=$TMP/tls/cert.pem" "KEY=$TMP/tls/key.pem"
NGINX_TLS_PID=$NGINX_PID
start_session_proxy sp-tls "$SP_TLS_PORT" "server:tls_cert = \"$TMP/tls/cert.pem\"" \
    "server:tls_key = \"$TMP/tls/key.pem\"" "$(admin "$ADMIN_TLS_PORT")"; SP_TLS_PID=$SP_PID

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
wait_port "$SP9_PORT" "session-proxy (9)"
wait_port "$SP10_PORT" "session-proxy (10)"
wait_port "$SP11_PORT" "session-proxy (11)"
wait_port "$NGINX_TLS_PORT" "nginx over TLS"
wait_port "$SP_TLS_PORT" "session-proxy over TLS"
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

# Each session scenario has a session of its own (made here, through its proxy): those that
# write ((6), (9) to (11)) never change what the others read. (5) and the TLS ones (13, 15)
# read the same one, and never write it.
SP_COOKIE="$(session_cookie "http://127.0.0.1:$SP5_PORT/update/")"
SP6_COOKIE="$(session_cookie "http://127.0.0.1:$SP6_PORT/update/")"
SP9_COOKIE="$(session_cookie "http://127.0.0.1:$SP9_PORT/update/")"
SP10_COOKIE="$(session_cookie "http://127.0.0.1:$SP10_PORT/update/")"
SP11_COOKIE="$(session_cookie "http://127.0.0.1:$SP11_PORT/login-user/")"
if [[ -z "$SP_COOKIE" ]]; then
    note "check (5) FAILED: session-proxy set no session cookie on a response with x-session-update (session layer not in this build?)"
    for n in 5 13 15; do SKIP[n]="no session cookie from session-proxy"; done
else
    check_body 5 "http://127.0.0.1:$SP5_PORT/echo/" "$EXPECTED_SESSION" -H "Cookie: $SP_COOKIE" \
        || SKIP[5]="session not passed to the upstream"
fi

# A session write scenario: its session is there, a request of it writes what it should (the
# upstream's echo of the session after one request: WANT), sets no new cookie and passes no
# session header to the client.
check_write() { # check_write N PORT COOKIE PATH WANT [CURL ARGS...]
    local n=$1 port=$2 cookie=$3 path=$4 want=$5; shift 5
    if [[ -z "$cookie" ]]; then
        SKIP[n]="no session cookie from session-proxy"
        note "check ($n) FAILED: no session cookie"
        return
    fi
    curl -s -m 5 -o /dev/null -H "Cookie: $cookie" "$@" "http://127.0.0.1:$port$path" \
        -D "$TMP/sp$n-headers.txt" || true
    grep -qi '^set-cookie:' "$TMP/sp$n-headers.txt" \
        && note "note ($n): session-proxy sets a cookie on every write of a live session"
    grep -qiE '^x-session-(update|patch)' "$TMP/sp$n-headers.txt" \
        && note "check ($n) FAILED: the session header reached the client"
    local got
    got="$(curl -s -m 5 -H "Cookie: $cookie" "http://127.0.0.1:$port/echo/" | tr -d '\r\n' || true)"
    if [[ ! "$got" =~ $want ]]; then
        note "check ($n) FAILED: after one request of $path the session is '${got:0:200}', expected /$want/"
        SKIP[n]="the session was not written as expected"
    fi
}
# (6) and (11): the update sets "n" to the upstream's request id (32 hex digits).
check_write 6 "$SP6_PORT" "$SP6_COOKIE" /write/ '^\{"user":"bench","role":"tester","n":"[0-9a-f]{32}"\}$'
check_write 9 "$SP9_PORT" "$SP9_COOKIE" /echo-update/ '^\{"user":"bench","role":"tester"\}$'
check_write 10 "$SP10_PORT" "$SP10_COOKIE" /patch/ '^\{"user":"bench","role":"tester","check":1\}$' \
    -H 'X-Bench-Patch: {"check":1}'
check_write 11 "$SP11_PORT" "$SP11_COOKIE" /write-user/ '^\{"user":\{"id":"bench"\},"role":"tester","n":"[0-9a-f]{32}"\}$'
# (11): the index lists the session under its /user/id (the admin endpoint, with the token).
if [[ -z "${SKIP[11]:-}" ]]; then
    idx="$(curl -s -m 5 -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:$ADMIN11_PORT/index/bench" || true)"
    if ! grep -q '"sessions"' <<<"$idx"; then
        note "check (11) FAILED: GET /index/bench on the admin listener answered '${idx:0:200}'"
        SKIP[11]="the session index is not kept"
    fi
fi

# (12) to (15): TLS; h2load's clients must get HTTP/2 by ALPN, wrk's HTTP/1.1.
check_tls() { # check_tls N PORT PATH WANT HTTP_VERSION [CURL ARGS...]
    local n=$1 port=$2 path=$3 want=$4 version=$5; shift 5
    local flag=--http1.1 got
    [[ $version == 2 ]] && flag=--http2
    got="$(curl -s -k -m 5 "$flag" -w '|%{http_version}' "$@" "https://127.0.0.1:$port$path" | tr -d '\r\n' || true)"
    if [[ "$got" != "$want|$version" ]]; then
        note "check ($n) FAILED: https://127.0.0.1:$port$path answered '${got:0:200}', expected '$want|$version' (body|HTTP version)"
        SKIP[n]="check over TLS failed"
    fi
}
# What each TLS server negotiates with an OpenSSL client (wrk and h2load are OpenSSL too).
for pair in "nginx:$NGINX_TLS_PORT" "session-proxy:$SP_TLS_PORT"; do
    note "TLS: ${pair%%:*} negotiates $(curl -s -k -m 5 -v -o /dev/null "https://127.0.0.1:${pair#*:}/plain/" 2>&1 \
        | tr -d '\r' | sed -n 's/^\* SSL connection using //p' | head -1) with curl $(curl -V | awk 'NR==1{print $2, $5}')"
done
check_tls 12 "$NGINX_TLS_PORT" / "hello from the upstream" 1.1
check_tls 14 "$NGINX_TLS_PORT" / "hello from the upstream" 2
if [[ -n "$SP_COOKIE" ]]; then
    check_tls 13 "$SP_TLS_PORT" /echo/ "$EXPECTED_SESSION" 1.1 -H "Cookie: $SP_COOKIE"
    check_tls 15 "$SP_TLS_PORT" /echo/ "$EXPECTED_SESSION" 2 -H "Cookie: $SP_COOKIE"
fi

# (6), (11) and (16) read and write SESSIONS sessions (4 per connection by default, made here
# through the proxy, as log-ins); wrk cycles over them with bench/cookies.lua, each thread over
# its own share, so two requests of one session are seldom in flight at once and their writes
# seldom meet (wrk cannot tie a session to a connection; with one session per connection,
# about 5% of (6)'s writes met another). (10) is the scenario where they all do.
SESSIONS="${SESSIONS:-$((4 * CONNECTIONS))}"
make_sessions() { # make_sessions URL FILE: SESSIONS session cookies, one a line
    : >"$2"
    for _ in $(seq 1 "$SESSIONS"); do session_cookie "$1" >>"$2" || true; done
    grep -c . "$2" || true
}
if wanted 6 && [[ -z "${SKIP[6]:-}" ]]; then
    made=$(make_sessions "http://127.0.0.1:$SP6_PORT/update/" "$TMP/sp6-cookies.txt")
    [[ $made == "$SESSIONS" ]] || { SKIP[6]="made $made of $SESSIONS sessions"; note "(6) ${SKIP[6]}"; }
fi
if wanted 11 && [[ -z "${SKIP[11]:-}" ]]; then
    made=$(make_sessions "http://127.0.0.1:$SP11_PORT/login-user/" "$TMP/sp11-cookies.txt")
    [[ $made == "$SESSIONS" ]] || { SKIP[11]="made $made of $SESSIONS sessions"; note "(11) ${SKIP[11]}"; }
fi

# ------------------------------------------------ (16) a 3-master Redis Cluster
# Three cluster-enabled redis-servers (no replicas: the bench measures the routing, not
# failover), slots dealt by `redis-cli --cluster create`, and a session-proxy whose store.url
# is redis-cluster:// on the first node. A build that refuses the URL skips (16) with its reason.
CLUSTER_PIDS=()
start_cluster() {
    local i port
    for i in 0 1 2; do
        port=${CL_PORTS[$i]}
        mkdir -p "$TMP/cluster-$port"
        redis-server --port "$port" --cluster-port "${CL_BUS[$i]}" --bind 127.0.0.1 \
            --cluster-enabled yes --cluster-config-file "$TMP/cluster-$port/nodes.conf" \
            --cluster-node-timeout 5000 --save "" --appendonly no --dir "$TMP/cluster-$port" \
            --daemonize no --logfile "$TMP/cluster-$port.log" >"$TMP/cluster-$port.out" 2>&1 &
        CLUSTER_PIDS+=($!)
        PIDS+=($!)
    done
    for i in 0 1 2; do
        port_opens "${CL_PORTS[$i]}" "${CLUSTER_PIDS[$i]}" \
            || { cat "$TMP/cluster-${CL_PORTS[$i]}".{out,log} 2>/dev/null | grep . | tail -3 \
                >"$TMP/cluster-create.log"; return 1; }
    done
    redis-cli --cluster create "${CL_PORTS[@]/#/127.0.0.1:}" --cluster-yes \
        >"$TMP/cluster-create.log" 2>&1 || return 1
    for i in $(seq 1 100); do
        local ok=0
        for port in "${CL_PORTS[@]}"; do
            redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && ok=$((ok + 1))
        done
        [[ $ok == 3 ]] && return 0
        sleep 0.2
    done
    return 1
}

port_opens() { # port_opens PORT PID: 0 once it listens, 1 if PID died or 20 s passed
    local i
    for i in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

SP16_PID=""
CLUSTER_COOKIES="$TMP/cluster-cookies.txt"
if wanted 16; then
    log "redis cluster on ${CL_PORTS[*]} (bus ${CL_BUS[*]})"
    if ! start_cluster; then
        SKIP[16]="the Redis Cluster did not form: $(tail -3 "$TMP/cluster-create.log" | tr '\n' ' ')"
    else
        session_proxy_conf sp16 "$SP16_PORT" "store:url = \"redis-cluster://127.0.0.1:$CL1_PORT\"" \
            "$(admin "$ADMIN16_PORT")"
        if ! "$BIN" --config "$TMP/sp16.toml" --check >"$TMP/sp16-check.txt" 2>&1; then
            SKIP[16]="skipped: this build refuses store.url = redis-cluster://: $(head -c 300 "$TMP/sp16-check.txt" | tr '\n' ' ' | sed "s|$TMP/||g")"
        else
            RUST_LOG=warn "${PIN_PROXY[@]}" "$BIN" --config "$TMP/sp16.toml" >"$TMP/sp16.log" 2>&1 &
            SP16_PID=$!
            PIDS+=("$SP16_PID")
            if ! port_opens "$SP16_PORT" "$SP16_PID"; then
                SKIP[16]="session-proxy on the cluster did not start: $(head -c 300 "$TMP/sp16.log" | tr '\n' ' ')"
            else
                # Sessions made through the proxy (log-ins), so their keys spread over the
                # masters' slots as real ones do; wrk cycles over them (bench/cookies.lua).
                made=$(make_sessions "http://127.0.0.1:$SP16_PORT/update/" "$CLUSTER_COOKIES")
                spread=""
                for port in "${CL_PORTS[@]}"; do spread+="$(redis-cli -p "$port" dbsize) "; done
                note "(16) $made of $SESSIONS sessions made through the proxy; keys per master: ${spread% }"
                if [[ $made -lt 1 ]]; then
                    SKIP[16]="no session cookie from session-proxy on the cluster"
                else
                    check_body 16 "http://127.0.0.1:$SP16_PORT/echo/" "$EXPECTED_SESSION" \
                        -H "Cookie: $(head -1 "$CLUSTER_COOKIES")" || SKIP[16]="session not passed to the upstream"
                fi
            fi
        fi
    fi
    [[ -n "${SKIP[16]:-}" ]] && note "(16) ${SKIP[16]}"
fi
# (17): (5) with (16)'s client, wrk cycling over as many sessions with bench/cookies.lua, on the
# single Redis: what (16) is compared with like for like. Only measured beside (16).
if wanted 17; then
    if ! wanted 16 || [[ -n "${SKIP[16]:-}" ]]; then
        SKIP[17]="only measured beside (16)"
    else
        made=$(make_sessions "http://127.0.0.1:$SP5_PORT/update/" "$TMP/sp17-cookies.txt")
        [[ $made == "$SESSIONS" ]] || { SKIP[17]="made $made of $SESSIONS sessions"; note "(17) ${SKIP[17]}"; }
    fi
fi

# ------------------------------------------------ scenarios
# Per scenario: NAMES, URLS, COOKIES (a Cookie header for every request), ROOTPIDS (the proxy
# under test), TOOL (wrk, or h2load for HTTP/2), LUA (a wrk script, with LUA_ARGS),
# REDIS_PORTS / REDIS_PIDS (the store it uses: commandstats and CPU), ADMIN (its admin port:
# /metrics read before and after each run, for conflicts and skipped writes).
NAMES=("" "upstream direct (ceiling)" "nginx reverse proxy" "Node proxy (express-session + connect-redis)"
    "session-proxy, session = false" "session-proxy, session read (valid cookie)"
    "session-proxy, read + write (update every response, many sessions)" "bare hyper proxy (floor)"
    "bare hyper proxy + one fred GET (floor)"
    "session-proxy, echo (the update is the session unchanged)"
    "session-proxy, contention (64 connections patch one session)"
    "session-proxy, read + write with session.index"
    "nginx over TLS, HTTP/1.1 (wrk)" "session-proxy over TLS, HTTP/1.1, session read (wrk)"
    "nginx over TLS, HTTP/2 (h2load)" "session-proxy over TLS, HTTP/2, session read (h2load)"
    "session-proxy, session read on a 3-master Redis Cluster"
    "session-proxy, session read over many sessions (as 16, on one Redis)")
URLS=("" "http://127.0.0.1:$UPSTREAM_PORT/" "http://127.0.0.1:$NGINX_PORT/" "http://127.0.0.1:$NODE_PORT/"
    "http://127.0.0.1:$SP4_PORT/plain/" "http://127.0.0.1:$SP5_PORT/" "http://127.0.0.1:$SP6_PORT/write/"
    "http://127.0.0.1:$BARE7_PORT/" "http://127.0.0.1:$BARE8_PORT/"
    "http://127.0.0.1:$SP9_PORT/echo-update/" "http://127.0.0.1:$SP10_PORT/patch/"
    "http://127.0.0.1:$SP11_PORT/write-user/"
    "https://127.0.0.1:$NGINX_TLS_PORT/" "https://127.0.0.1:$SP_TLS_PORT/"
    "https://127.0.0.1:$NGINX_TLS_PORT/" "https://127.0.0.1:$SP_TLS_PORT/"
    "http://127.0.0.1:$SP16_PORT/" "http://127.0.0.1:$SP5_PORT/")
COOKIES=("" "" "" "$NODE_COOKIE" "" "$SP_COOKIE" "" "" "" "$SP9_COOKIE" "$SP10_COOKIE"
    "" "" "$SP_COOKIE" "" "$SP_COOKIE" "" "")
ROOTPIDS=("" "" "$NGINX_PROXY_PID" "$NODE_PID" "$SP4_PID" "$SP5_PID" "$SP6_PID" "$BARE7_PID" "$BARE8_PID"
    "$SP9_PID" "$SP10_PID" "$SP11_PID" "$NGINX_TLS_PID" "$SP_TLS_PID" "$NGINX_TLS_PID" "$SP_TLS_PID"
    "$SP16_PID" "$SP5_PID")
TOOL=() LUA=() LUA_ARGS=() ADMIN=() REDIS_PORTS=() REDIS_PIDS=()
TOOL[14]=h2load TOOL[15]=h2load
LUA[10]="$BENCH_DIR/contention.lua" LUA_ARGS[10]=$((CONNECTIONS / THREADS))
LUA[6]="$BENCH_DIR/cookies.lua" LUA_ARGS[6]="$TMP/sp6-cookies.txt $THREADS"
LUA[11]="$BENCH_DIR/cookies.lua" LUA_ARGS[11]="$TMP/sp11-cookies.txt $THREADS"
LUA[16]="$BENCH_DIR/cookies.lua" LUA_ARGS[16]="$CLUSTER_COOKIES $THREADS"
LUA[17]="$BENCH_DIR/cookies.lua" LUA_ARGS[17]="$TMP/sp17-cookies.txt $THREADS"
ADMIN[5]=$ADMIN5_PORT ADMIN[6]=$ADMIN6_PORT ADMIN[9]=$ADMIN9_PORT ADMIN[10]=$ADMIN10_PORT
ADMIN[11]=$ADMIN11_PORT ADMIN[13]=$ADMIN_TLS_PORT ADMIN[15]=$ADMIN_TLS_PORT ADMIN[16]=$ADMIN16_PORT
ADMIN[17]=$ADMIN5_PORT
for n in "${ORDER[@]}"; do REDIS_PORTS[n]=$REDIS_PORT REDIS_PIDS[n]=$REDIS_PID; done
REDIS_PORTS[16]="${CL_PORTS[*]}" REDIS_PIDS[16]="${CLUSTER_PIDS[*]}"
H2_CLIENTS="${H2_CLIENTS:-4}"
H2_STREAMS="${H2_STREAMS:-16}"
DEAD=()

# Runs wrk (or h2load) for scenario N into OUTFILE and prints the client's own CPU time in
# seconds (getrusage of the child), so the report can tell its share of the machine from
# background load.
wrk_run() { # wrk_run N SECONDS OUTFILE
    local n=$1 secs=$2 out=$3 cmd
    if [[ "${TOOL[$n]:-wrk}" == h2load ]]; then
        # h2load: H2_CLIENTS connections x H2_STREAMS concurrent streams (64 by default, as
        # wrk's 64 connections), HTTP/2 by ALPN.
        cmd=(h2load -t "$THREADS" -c "$H2_CLIENTS" -m "$H2_STREAMS" -D "$secs")
        [[ -n "${COOKIES[$n]}" ]] && cmd+=(-H "cookie: ${COOKIES[$n]}")
        cmd+=("${URLS[$n]}")
    else
        cmd=(wrk -t "$THREADS" -c "$CONNECTIONS" -d "${secs}s" --latency)
        [[ -n "${COOKIES[$n]}" ]] && cmd+=(-H "Cookie: ${COOKIES[$n]}")
        [[ -n "${LUA[$n]:-}" ]] && cmd+=(-s "${LUA[$n]}")
        cmd+=("${URLS[$n]}")
        [[ -n "${LUA_ARGS[$n]:-}" ]] && cmd+=(-- ${LUA_ARGS[$n]}) # (split: paths have no spaces)
    fi
    python3 -c '
import resource, subprocess, sys
with open(sys.argv[1], "w") as out:
    subprocess.run(sys.argv[2:], stdout=out, stderr=subprocess.STDOUT)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{r.ru_utime + r.ru_stime:.3f}")' "$out" "${PIN_WRK[@]}" "${cmd[@]}" || echo 0
}

# The session counters of a proxy's /metrics: conflicts by outcome, skipped writes, sessions,
# store errors, and the store operations it made (the count of each one's latency histogram:
# Redis's commandstats also count the GET and SET that the write script makes inside).
metrics_snapshot() { # metrics_snapshot ADMIN_PORT FILE
    curl -s -m 5 "http://127.0.0.1:$1/metrics" \
        | grep -E '^session_proxy_(session_conflicts|session_writes_skipped|sessions|store_errors|store_command_duration_seconds_count)' \
            >"$2" || true
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
printf 'scenario\tround\twrk_file\tproxy_ticks\tupstream_ticks\tredis_ticks\tbusy_ticks\ttotal_ticks\tredis_stats\talive\twrk_cpu_s\tproxy_user_ticks\tmetrics_before\tmetrics_after\ttool\n' >"$RAW"

SCENARIOS=${#ORDER[@]}
est=$((ROUNDS * SCENARIOS * (DURATION + WARMUP + 1)))
log "measuring: $ROUNDS rounds x $SCENARIOS scenarios (${ORDER[*]}) x ${DURATION}s (+${WARMUP}s warm-up), about ${est}s"
for round in $(seq 1 "$ROUNDS"); do
    for ((k = 0; k < SCENARIOS; k++)); do
        n=${ORDER[$(( (k + round - 1) % SCENARIOS ))]}
        [[ -n "${SKIP[$n]:-}" || -n "${DEAD[$n]:-}" ]] && continue
        root="${ROOTPIDS[$n]}"
        wait_quiet "round $round ($n)"
        wrk_run "$n" "$WARMUP" "$TMP/warmup-$n-$round.txt" >/dev/null
        pids=()
        [[ -n "$root" ]] && read -r -a pids <<<"$(proc_tree "$root")"
        up_pids=($(proc_tree "$UPSTREAM_PID"))
        read -r -a r_ports <<<"${REDIS_PORTS[$n]:-$REDIS_PORT}"
        read -r -a r_pids <<<"${REDIS_PIDS[$n]:-$REDIS_PID}"
        for port in "${r_ports[@]}"; do redis-cli -p "$port" config resetstat >/dev/null; done
        m0="" m1=""
        if [[ -n "${ADMIN[$n]:-}" ]]; then
            m0="$TMP/metrics-$n-$round-before.txt" m1="$TMP/metrics-$n-$round-after.txt"
            metrics_snapshot "${ADMIN[$n]}" "$m0"
        fi
        p0=0 pu0=0; [[ -n "$root" ]] && read -r p0 pu0 <<<"$(cpu_ticks_split "${pids[@]}")"
        u0=$(cpu_ticks "${up_pids[@]}"); r0=$(cpu_ticks "${r_pids[@]}")
        read -r b0 t0 <<<"$(machine_ticks)"
        out="$TMP/wrk-$n-$round.txt"
        wrk_cpu=$(wrk_run "$n" "$DURATION" "$out")
        p1=0 pu1=0; [[ -n "$root" ]] && read -r p1 pu1 <<<"$(cpu_ticks_split "${pids[@]}")"
        u1=$(cpu_ticks "${up_pids[@]}"); r1=$(cpu_ticks "${r_pids[@]}")
        read -r b1 t1 <<<"$(machine_ticks)"
        [[ -n "$m1" ]] && metrics_snapshot "${ADMIN[$n]}" "$m1"
        # Commands, and the socket reads Redis took them in (how well the proxy batches them);
        # on the cluster, every master's, one after the other (report.py sums them).
        for port in "${r_ports[@]}"; do
            redis-cli -p "$port" info commandstats
            redis-cli -p "$port" info stats
        done | tr -d '\r' | grep -E '^(cmdstat_|total_reads_processed:)' >"$TMP/redis-$n-$round.txt" || true
        alive=1
        if [[ -n "$root" ]] && ! kill -0 "$root" 2>/dev/null; then
            alive=0
            DEAD[$n]=1
            note "($n) ${NAMES[$n]}: the proxy process $root DIED during round $round"
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$round" "$out" $((p1 - p0)) \
            $((u1 - u0)) $((r1 - r0)) $((b1 - b0)) $((t1 - t0)) "$TMP/redis-$n-$round.txt" "$alive" \
            "$wrk_cpu" $((pu1 - pu0)) "$m0" "$m1" "${TOOL[$n]:-wrk}" >>"$RAW"
        log "round $round ($n) $(awk '/Requests\/sec/{print $2" req/s"} /^finished in/{print $4" req/s"}' "$out" | tr -d ,) $(grep -E 'Non-2xx|Socket errors|^status codes' "$out" | tr '\n' ' ')"
    done
done

# Peak RSS (VmHWM) over the whole run, summed over each proxy's processes.
PEAK="$TMP/peak_rss.tsv"
: >"$PEAK"
for n in "${ORDER[@]}"; do
    root="${ROOTPIDS[$n]}"
    [[ -n "$root" ]] || continue
    kill -0 "$root" 2>/dev/null || continue
    printf '%s\t%s\t%s\n' "$n" "$(status_kib VmHWM $(proc_tree "$root"))" \
        "$(proc_tree "$root" | wc -w)" >>"$PEAK"
done

# ------------------------------------------------ 10,000 idle keep-alive connections
IDLE_JSON="$TMP/idle.json"
if [[ "$IDLE_CONNECTIONS" -gt 0 ]]; then
    # The proxy counts two sockets per connection (client and upstream) plus about 200 of its
    # own against the open-file limit, and lowers an unset max_connections to fit. Where the
    # hard limit cannot be raised (a container without CAP_SYS_RESOURCE: 20,000 here), it
    # holds fewer than 10,000: measure that many, with the cap set to it, and let the report
    # extrapolate.
    idle_fit=$((($(ulimit -n) - 1024) / 2))
    idle_cap=()
    if [[ "$IDLE_CONNECTIONS" -gt "$idle_fit" ]]; then
        note "idle test: the open-file limit ($(ulimit -n), hard $(ulimit -Hn)) holds $idle_fit connections at two sockets each, not $IDLE_CONNECTIONS; measured $idle_fit (max_connections = $idle_fit)"
        IDLE_CONNECTIONS=$idle_fit
        idle_cap=("server:max_connections = $idle_fit")
    fi
    log "idle connections: a fresh session-proxy on $IDLE_PORT holding $IDLE_CONNECTIONS"
    start_session_proxy sp-idle "$IDLE_PORT" "${idle_cap[@]}"; IDLE_PID=$SP_PID
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
for name in sp4 sp5 sp6 sp9 sp10 sp11 sp-tls sp16 sp-idle node-proxy bare7 bare8; do
    f="$TMP/$name.log"
    [[ -s "$f" ]] || continue
    lines=$(wc -l <"$f")
    note "log $name: $lines line(s); first: $(head -c 300 "$f" | head -3 | tr '\n' ' ')"
done
for name in upstream nginx-proxy nginx-tls; do
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
echo "scenarios=${ORDER[*]}" >>"$META"
echo "h2load=$(h2load --version 2>&1 | head -1 | awk '{print $NF}')" >>"$META"
echo "h2=-c $H2_CLIENTS -m $H2_STREAMS -t $THREADS" >>"$META"
for n in "${ORDER[@]}"; do
    [[ -n "${SKIP[$n]:-}" ]] && echo "skip$n=${SKIP[$n]}" >>"$META"
done

mkdir -p "$BENCH_DIR/out"
RESULT="${RESULTS_FILE:-$BENCH_DIR/out/report-$(date -u +%Y-%m-%dT%H%M%SZ).md}"
python3 "$BENCH_DIR/report.py" --meta "$META" --runs "$RAW" --peak "$PEAK" --idle "$IDLE_JSON" \
    --notes "$NOTES" >"$TMP/report.md"
cat "$TMP/report.md"
cp "$TMP/report.md" "$RESULT"
log "written to $RESULT (whole run: $(( $(date +%s) - START_EPOCH )) s)"
