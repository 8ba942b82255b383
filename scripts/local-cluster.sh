#!/usr/bin/env bash
# A throwaway local Redis Cluster (3 masters, 3 replicas) for trying the proxy on
# redis-cluster://, without persistence, in a temporary directory.
#
#   scripts/local-cluster.sh start [FIRST_PORT]   # ports FIRST_PORT..FIRST_PORT+5 (default 7001)
#   scripts/local-cluster.sh stop                 # stops the nodes it started (by PID)
#
# The store URL is printed on start. Needs redis-server and redis-cli (Redis 7).
set -euo pipefail

state="${TMPDIR:-/tmp}/session-proxy-local-cluster"

case "${1:-}" in
start)
    first="${2:-7001}"
    if [ -e "$state/pids" ]; then
        echo "already running (see $state); stop it first" >&2
        exit 1
    fi
    mkdir -p "$state"
    nodes=()
    for i in 0 1 2 3 4 5; do
        port=$((first + i))
        mkdir -p "$state/$port"
        redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
            --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
            --save "" --appendonly no --dir "$state/$port" --logfile "$state/$port/redis.log" \
            --daemonize no </dev/null >/dev/null 2>&1 &
        echo $! >>"$state/pids"
        nodes+=("127.0.0.1:$port")
    done
    for i in 0 1 2 3 4 5; do
        for _ in $(seq 100); do
            redis-cli -p $((first + i)) ping >/dev/null 2>&1 && break
            sleep 0.05
        done
    done
    timeout 60 redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
    for _ in $(seq 200); do
        redis-cli -p "$first" cluster info | grep -q 'cluster_state:ok' && break
        sleep 0.05
    done
    echo "redis-cluster://127.0.0.1:$first?node=127.0.0.1:$((first + 1))&node=127.0.0.1:$((first + 2))"
    ;;
stop)
    if [ -e "$state/pids" ]; then
        while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$state/pids"
        # Wait (bounded) until they are gone, so nothing writes into the directory as it goes.
        while read -r pid; do
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        done <"$state/pids"
        rm -rf "$state"
    fi
    ;;
*)
    echo "usage: $0 start [FIRST_PORT] | stop" >&2
    exit 2
    ;;
esac
