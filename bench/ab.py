#!/usr/bin/env python3
"""bench/ab.py: two builds of session-proxy (or the floor) in turns, on one upstream and Redis.

A full `run.sh` compares scenarios whose rounds run at different moments, so a change of a
few percent is lost in the host's drift. Here A and B run alternately (A, B, A, B, ...), each
for DURATION seconds of wrk against the same upstream nginx and redis-server, and every round
is measured in units of what did not change: the CPU per request of wrk and the upstream nginx
(the yardstick of bench/report.py). What is left is the difference between the two builds.

Usage:
    bench/ab.py A B [--scenario 4|5|6] [--rounds 5] [--duration 6] [--warmup 2] [--cluster-b]
                    [--cluster-both] [--connections 64]

A and B are a session-proxy binary (run with bench/conf/proxy.toml and RUST_LOG=warn), or
`bare:PATH` for examples/bare_proxy.rs (the floor, scenario 7), or `bare+get:PATH` for the
floor waiting for one fred GET (scenario 8), or `nginx` for nginx as a reverse proxy with
bench/conf/nginx-proxy.conf (scenario 2; its CPU is its master's and workers'). The scenario
picks the request, as in run.sh: 4 is the `session = false` route, 5 a session read with a
valid cookie, 6 a read and a write (the floor and nginx forward whatever they are sent).
`bench/ab.py nginx target/pgo/session-proxy --scenario 4` is target (4) with the drift of a
full run taken out: the two proxies in turns, seconds apart. Needs wrk, nginx, redis-server
and curl (run.sh installs them). Prints each round and the medians, and B's against A's: as
measured, and in yardsticks (fair between two builds of one proxy, which run at nearly the
same rate; behind a faster proxy the yardstick itself shrinks, which it prints too).

--cluster-b (scenario 5 only): B's store is a 3-master Redis Cluster that ab.py starts (as
run.sh's (16): no replicas, slots dealt by `redis-cli --cluster create`), A's the single
redis-server, and both read over 256 sessions made through each (bench/cookies.lua, as run.sh's
(16) and (17)). `bench/ab.py target/pgo/session-proxy target/pgo/session-proxy --scenario 5
--cluster-b` is target (16) >= 0.9x with the drift taken out. The Redis column is the CPU of
the redis-server processes each build talks to (the cluster's three summed). --cluster-both puts
both builds on that cluster (two builds of one proxy compared on (16)'s path). Both also take two
floors, `bare+get:PATH`, which then GET 256 keys (bare_proxy --keys) on either store:
`bench/ab.py bare+get:BARE bare+get:BARE --scenario 5 --cluster-b` is what (16)'s ratio can be
on this machine for any proxy on these crates.

--connections: wrk's connections (64 as in run.sh; 1 to 8 show what a change costs a request's
latency when the proxy is far from busy). The p50 and p99 columns are wrk's latency percentiles.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from report import yardstick  # bench/report.py: the same unit as a full run's report

BENCH = os.path.dirname(os.path.abspath(__file__))
TICK = os.sysconf("SC_CLK_TCK")
PATHS = {4: "/plain/", 5: "/", 6: "/write/"}  # /write/: an update that changes the session
SESSION = '{"user":"bench","role":"tester"}'
FLOOR_KEY, FLOOR_KEYS = "bare-proxy:session", 256  # bare_proxy --keys reads FLOOR_KEY:0 to :255


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def fill(template, out, **values):
    with open(template) as f:
        text = f.read()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    with open(out, "w") as f:
        f.write(text)


def wait_port(port, what):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"ab.py: {what} did not listen on port {port}")


def cpu_ticks(pids):
    """(user, system) clock ticks summed over the processes (all their threads)."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])
    return user, system


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], stdout=subprocess.PIPE, text=True).stdout
    return [int(p) for p in out.split()]


class Processes:
    """What the run started, stopped newest first."""

    def __init__(self):
        self.procs = []

    def start(self, args, log, env=None):
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()


def parse_spec(spec):
    """("bare" | "bare+get" | "nginx" | "", the binary's path) of a command-line build."""
    if spec == "nginx":
        return ("nginx", shutil.which("nginx") or "nginx")
    kind, _, path = spec.partition(":")
    return (kind, path) if kind in ("bare", "bare+get") else ("", spec)


def start_cluster(procs, tmp):
    """Three cluster-enabled redis-servers with every slot dealt among them: (their ports,
    their processes), as run.sh's (16)."""
    ports = free_ports(6)
    nodes, bus = ports[:3], ports[3:]
    started = []
    for port, bus_port in zip(nodes, bus):
        home = os.path.join(tmp, f"cluster-{port}")
        os.makedirs(home)
        started.append(procs.start(
            ["redis-server", "--port", str(port), "--cluster-port", str(bus_port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", os.path.join(home, "nodes.conf"),
             "--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no", "--dir", home],
            open(os.path.join(home, "redis.log"), "w")))
    for port in nodes:
        wait_port(port, "a cluster node")
    create = subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in nodes],
                             "--cluster-yes"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if create.returncode != 0:
        sys.exit(f"ab.py: the Redis Cluster did not form:\n{create.stdout[-500:]}")
    for _ in range(100):
        states = [subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"], stdout=subprocess.PIPE,
                                 text=True).stdout for p in nodes]
        if all("cluster_state:ok" in state for state in states):
            return nodes, started
        time.sleep(0.1)
    sys.exit("ab.py: the Redis Cluster did not reach cluster_state:ok")


def start_proxy(spec, port, ports, tmp, procs, name, store_url=None, keys=0):
    log = open(os.path.join(tmp, f"{name}.log"), "w")
    kind, path = parse_spec(spec)
    if kind == "nginx":
        prefix = os.path.join(tmp, name)
        os.makedirs(prefix)
        fill(os.path.join(BENCH, "conf", "nginx-proxy.conf"), os.path.join(prefix, "nginx.conf"),
             PREFIX=prefix, UPSTREAM_PORT=ports["upstream"], LISTEN_PORT=port)
        return procs.start([path, "-p", prefix, "-e", os.path.join(prefix, "error.log"),
                            "-c", os.path.join(prefix, "nginx.conf"), "-g", "daemon off; master_process on;"],
                           log)
    if kind:
        args = [path, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{ports['upstream']}"]
        if kind == "bare+get":
            args += ["--redis", store_url or f"redis://127.0.0.1:{ports['redis']}"]
            if keys:
                args += ["--keys", str(keys)]
        return procs.start(args, log)
    config = os.path.join(tmp, f"{name}.toml")
    fill(os.path.join(BENCH, "conf", "proxy.toml"), config, LISTEN_PORT=port,
         REDIS_PORT=ports["redis"], UPSTREAM_PORT=ports["upstream"])
    if store_url:
        with open(config) as f:
            text = f.read()
        with open(config, "w") as f:
            f.write(text.replace(f'"redis://127.0.0.1:{ports["redis"]}"', f'"{store_url}"'))
    return procs.start([path, "--config", config], log, env={**os.environ, "RUST_LOG": "warn"})


def session_cookie(port):
    """The cookie a session-proxy sets for a request to the update route, once its Redis
    connection is up (it connects in the background and answers 503 until then)."""
    for _ in range(50):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/update/", timeout=5) as resp:
                for value in resp.headers.get_all("Set-Cookie") or []:
                    return value.split(";", 1)[0]
        except OSError:  # urllib's HTTPError (the 503) is one
            pass
        time.sleep(0.1)
    return None


def wrk(url, seconds, cookie, cookies_file=None, connections=64):
    """The number of requests wrk made (its CPU time shows in `os.times()`'s children) and its
    p50 and p99 latency in ms. With cookies_file, wrk cycles over its sessions
    (bench/cookies.lua), as run.sh's (6) does."""
    threads = min(2, connections)
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if cookie:
        args[1:1] = ["-H", f"Cookie: {cookie}"]
    if cookies_file:
        args[1:1] = ["-s", os.path.join(BENCH, "cookies.lua")]
        args += ["--", cookies_file, str(threads)]
    out = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    match = re.search(r"(\d+) requests in", out)
    if not match or "Non-2xx" in out:
        sys.exit(f"ab.py: wrk on {url} failed or got errors:\n{out}")
    return int(match.group(1)), latency_ms(out, "50%"), latency_ms(out, "99%")


def latency_ms(out, percentile):
    """One of wrk --latency's percentiles, in ms (wrk prints us, ms or s)."""
    match = re.search(rf"^\s*{percentile}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not match:
        return float("nan")
    return float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--scenario", type=int, choices=sorted(PATHS), default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--cluster-b", action="store_true",
                        help="B's store is a 3-master Redis Cluster (scenario 5, 256 sessions each)")
    parser.add_argument("--cluster-both", action="store_true",
                        help="A's and B's store is that cluster (scenario 5, 256 sessions)")
    opts = parser.parse_args()
    for tool in ("wrk", "nginx", "redis-server", "redis-cli"):
        if not shutil.which(tool):
            sys.exit(f"ab.py: {tool} is missing (bench/run.sh installs it)")
    for spec in (opts.a, opts.b):
        path = parse_spec(spec)[1]
        if not os.access(path, os.X_OK) and spec != "nginx":
            sys.exit(f"ab.py: {path} is not an executable")
    on_cluster = [n for n, flag in (("a", opts.cluster_both), ("b", opts.cluster_b or opts.cluster_both)) if flag]
    if on_cluster and (opts.scenario != 5 or any(parse_spec(s)[0] not in ("", "bare+get") for s in (opts.a, opts.b))):
        sys.exit("ab.py: --cluster-b and --cluster-both compare two session-proxy builds, or two floors "
                 "with a GET (bare+get:PATH), on scenario 5")

    tmp = tempfile.mkdtemp(prefix="session-proxy-ab.")
    procs = Processes()
    try:
        ports = dict(zip(("redis", "upstream", "a", "b"), free_ports(4)))
        redis = procs.start(["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", tmp],
                            open(os.path.join(tmp, "redis.log"), "w"))
        prefix = os.path.join(tmp, "upstream")
        os.makedirs(prefix)
        fill(os.path.join(BENCH, "conf", "nginx-upstream.conf"), os.path.join(prefix, "nginx.conf"),
             PREFIX=prefix, UPSTREAM_PORT=ports["upstream"])
        upstream = procs.start(["nginx", "-p", prefix, "-e", os.path.join(prefix, "error.log"),
                                "-c", os.path.join(prefix, "nginx.conf"),
                                "-g", "daemon off; master_process on;"],
                               open(os.path.join(prefix, "out.log"), "w"))
        wait_port(ports["redis"], "redis-server")
        subprocess.run(["redis-cli", "-p", str(ports["redis"]), "set", FLOOR_KEY, SESSION],
                       check=True, stdout=subprocess.DEVNULL)
        # The redis-server processes each build talks to (for their CPU per request).
        stores = {"a": [redis], "b": [redis]}
        store_urls = {"a": None, "b": None}
        if on_cluster:
            nodes, cluster = start_cluster(procs, tmp)
            for n in on_cluster:
                stores[n] = cluster
                store_urls[n] = f"redis-cluster://127.0.0.1:{nodes[0]}"
            # A floor on the cluster reads 256 keys, spread over its masters as sessions are;
            # so does the other floor, on whichever store it has.
            if any(parse_spec(s)[0] for s in (opts.a, opts.b)):
                for store_port, cluster_mode in ((ports["redis"], []), (nodes[0], ["-c"])):
                    setter = subprocess.run(["redis-cli", *cluster_mode, "-p", str(store_port)],
                                            input="".join(f"SET {FLOOR_KEY}:{i} '{SESSION}'\n"
                                                          for i in range(FLOOR_KEYS)),
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    if setter.returncode != 0 or "ERR" in setter.stdout or "MOVED" in setter.stdout:
                        sys.exit(f"ab.py: could not store the floor's keys:\n{setter.stdout[-500:]}")
        keys = FLOOR_KEYS if on_cluster else 0
        proxies = {n: start_proxy(spec, ports[n], ports, tmp, procs, n, store_urls[n], keys)
                   for n, spec in (("a", opts.a), ("b", opts.b))}
        wait_port(ports["upstream"], "the upstream nginx")
        for n in proxies:
            wait_port(ports[n], f"proxy {n.upper()}")

        # One cookie serves both when both are session-proxy (same config and secret) on one
        # store; on two stores, each gets sessions made through it.
        sp = [n for n, spec in (("a", opts.a), ("b", opts.b)) if not parse_spec(spec)[0]]
        cookie = None
        if opts.scenario in (5, 6) and sp:
            cookie = session_cookie(ports[sp[0]])
            if not cookie:
                sys.exit("ab.py: session-proxy set no session cookie")

        # (6) writes on every request: 256 sessions, as in run.sh, so the writes seldom meet
        # (64 connections on one session mostly end in 503: run.sh's contention scenario).
        # On the cluster, 256 sessions for (5) too, spread over its masters.
        cookies_files = {n: None for n in proxies}
        if (opts.scenario == 6 or on_cluster) and cookie:
            for n in proxies:
                made = n if n in sp else sp[0]
                cookies_files[n] = os.path.join(tmp, f"cookies-{made}.txt")
                if os.path.exists(cookies_files[n]):
                    continue
                with open(cookies_files[n], "w") as f:
                    for _ in range(256):
                        made_cookie = session_cookie(ports[made])
                        if not made_cookie:
                            sys.exit(f"ab.py: proxy {made.upper()} set no session cookie")
                        f.write(made_cookie + "\n")
            cookie = None

        url = {n: f"http://127.0.0.1:{ports[n]}{PATHS[opts.scenario]}" for n in proxies}
        for n in proxies:
            wrk(url[n], opts.warmup, cookie, cookies_files[n], opts.connections)

        rows = {"a": [], "b": []}
        print(f"scenario {opts.scenario}, {opts.rounds} rounds of {opts.duration} s each, A and B in turns"
              + {0: "", 1: " (B on a 3-master Redis Cluster)", 2: " (both on a 3-master Redis Cluster)"}[len(on_cluster)])
        print("round  build    req/s  user µs/req  kernel µs/req  CPU/req in yardsticks  yardstick µs (wrk, upstream)"
              "  redis µs/req  p50 ms  p99 ms")
        for round_no in range(1, opts.rounds + 1):
            for n, proc in proxies.items():
                upstream_pids = [upstream.pid] + children(upstream.pid)
                # nginx's work is in its worker processes; session-proxy and the floor are one.
                proxy_pids = [proc.pid] + children(proc.pid)
                redis_pids = [r.pid for r in stores[n]]
                p0, u0, r0 = cpu_ticks(proxy_pids), cpu_ticks(upstream_pids), cpu_ticks(redis_pids)
                w0 = os.times()
                requests, p50, p99 = wrk(url[n], opts.duration, cookie, cookies_files[n], opts.connections)
                w1 = os.times()
                p1, u1, r1 = cpu_ticks(proxy_pids), cpu_ticks(upstream_pids), cpu_ticks(redis_pids)
                per_req = 1e6 / requests
                user = (p1[0] - p0[0]) / TICK * per_req
                kernel = (p1[1] - p0[1]) / TICK * per_req
                upstream_us = (sum(u1) - sum(u0)) / TICK * per_req
                redis_us = (sum(r1) - sum(r0)) / TICK * per_req
                wrk_us = (w1.children_user + w1.children_system - w0.children_user - w0.children_system) * per_req
                yard = yardstick({"wrk_us": wrk_us, "upstream_us": upstream_us})
                row = (requests / opts.duration, user, kernel, (user + kernel) / yard if yard else float("nan"), yard,
                       wrk_us, upstream_us, redis_us, p50, p99)
                rows[n].append(row)
                print(f"{round_no:5}  {n.upper():5} {row[0]:8.0f}  {row[1]:11.2f}  {row[2]:13.2f}  {row[3]:21.3f}  "
                      f"{row[4]:12.2f} ({row[5]:.2f}, {row[6]:.2f})  {row[7]:12.2f}  {row[8]:6.3f}  {row[9]:6.3f}")

        med = {n: [statistics.median(col) for col in zip(*rows[n])] for n in rows}
        print("\nmedians")
        for n in rows:
            m = med[n]
            print(f"       {n.upper():5} {m[0]:8.0f}  {m[1]:11.2f}  {m[2]:13.2f}  {m[3]:21.3f}  "
                  f"{m[4]:12.2f} ({m[5]:.2f}, {m[6]:.2f})  {m[7]:12.2f}  {m[8]:6.3f}  {m[9]:6.3f}")
        a, b = med["a"], med["b"]
        cpu = {n: statistics.median(r[1] + r[2] for r in rows[n]) for n in rows}
        paired = statistics.median(rb[0] / ra[0] for ra, rb in zip(rows["a"], rows["b"]))
        print(f"\nB against A: req/s {b[0] / a[0]:.3f}x (paired, round by round: {paired:.3f}x), "
              f"CPU per request in yardsticks {b[3] / a[3]:.3f}x "
              f"(as measured {cpu['b'] / cpu['a']:.3f}x; yardstick {b[4] / a[4]:.3f}x)")
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
