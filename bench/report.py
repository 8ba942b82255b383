#!/usr/bin/env python3
"""Turns bench/run.sh's raw measurements into the Markdown report (stdout).

Inputs (all written by run.sh into its temp dir): --meta (key=value lines), --runs (one TSV
line per measured wrk run: wrk output file, CPU tick deltas, Redis commandstats file),
--peak (VmHWM per proxy), --idle (idle_conns.py's JSON), --notes (free text lines).
"""

import argparse
import json
import re
import statistics

NAMES = {
    1: "upstream direct (ceiling)",
    2: "nginx reverse proxy",
    3: "Node proxy, session read (express-session + connect-redis, cluster x2)",
    4: "session-proxy, `session = false`",
    5: "session-proxy, session read (valid cookie)",
    6: "session-proxy, read + write (update on every response, many sessions)",
    7: "floor: bare hyper proxy (`examples/bare_proxy.rs`)",
    8: "floor: bare hyper proxy + one fred GET per request",
    9: "session-proxy, echo: the update is the session unchanged (no write)",
    10: "session-proxy, contention: 64 connections patch one session (`x-session-patch`)",
    11: "session-proxy, read + write with `session.index = \"/user/id\"` (index unchanged)",
    12: "nginx over TLS, HTTP/1.1 (wrk)",
    13: "session-proxy over TLS, HTTP/1.1, session read (wrk)",
    14: "nginx over TLS, HTTP/2 (h2load)",
    15: "session-proxy over TLS, HTTP/2, session read (h2load)",
    16: "session-proxy, session read on a 3-master Redis Cluster",
    17: "session-proxy, session read over 256 sessions on one Redis (16's client, like for like)",
}
#: Scenarios only measured with FLOOR=1.
FLOOR_SCENARIOS = (7, 8)
NGINX = 2
#: What each scenario's "vs nginx" columns compare with: nginx over the same protocol.
BASE = {13: 12, 15: 14}
#: Scenarios whose client is h2load (no latency percentiles).
H2 = (14, 15)
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
MIB = 1024.0
#: Above this share of the machine spent outside the benchmark's own processes, a run is
#: flagged as disturbed by background load.
OTHER_LOAD_WARN_PCT = 10.0


def parse_wrk(path):
    text = open(path, errors="replace").read()
    r = {"text": text}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    r["requests"] = int(m.group(1)) if m else 0
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        r[f"p{pct}"] = float(m.group(1)) * UNITS[m.group(2)] if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r["sock"] = tuple(int(x) for x in m.groups()) if m else (0, 0, 0, 0)
    return r


def parse_h2load(path):
    """h2load's summary: req/s over the measured time, requests done, non-2xx (3xx counts as
    2xx does with wrk), and failed/errored/timeout requests in the socket-error slots."""
    text = open(path, errors="replace").read()
    r = {"text": text, "p50": None, "p75": None, "p90": None, "p99": None}
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", text)
    r["requests"] = int(m.group(3)) if m else 0
    r["sock"] = (0, int(m.group(6)), int(m.group(5)), int(m.group(7))) if m else (0, 0, 0, 0)
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    r["non2xx"] = int(m.group(3)) + int(m.group(4)) if m else 0
    m = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", text)
    r["mean"] = float(m.group(5)) * UNITS[m.group(6)] if m else None
    return r


def parse_metrics(path):
    """Counter samples of a /metrics snapshot: {'name{labels}': value}."""
    values = {}
    if not path:
        return values
    try:
        for line in open(path):
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#"):
                values[parts[0]] = float(parts[1])
    except OSError:
        pass
    return values


def parse_redis(path):
    """Calls per command (not counting run.sh's own CONFIG and INFO), and the socket reads
    Redis made (None when not recorded); summed over the nodes of a cluster."""
    calls, reads = {}, None
    try:
        for line in open(path):
            m = re.match(r"cmdstat_(\w+):calls=(\d+)", line.strip())
            if m and m.group(1) not in ("config", "info"):
                calls[m.group(1)] = calls.get(m.group(1), 0) + int(m.group(2))
            m = re.match(r"total_reads_processed:(\d+)", line.strip())
            if m:
                reads = (reads or 0) + int(m.group(1))
    except OSError:
        pass
    return calls, reads


def fmt_ms(v):
    if v is None:
        return "-"
    return f"{v * 1000:.0f} µs" if v < 1 else f"{v:.2f} ms"


def yardstick(run):
    """CPU per request of the work that is the same in scenarios 2 and 4 to 6: wrk's and the
    upstream nginx's (their mean). It follows the host's speed at the moment of the run."""
    return (run["wrk_us"] + run["upstream_us"]) / 2


def median_or_none(values):
    values = list(values)
    return statistics.median(values) if values else None


def fmt_ratio(v):
    return "-" if v is None else f"{v:.2f}x"


def main():
    ap = argparse.ArgumentParser()
    for a in ("meta", "runs", "peak", "idle", "notes"):
        ap.add_argument(f"--{a}", required=True)
    args = ap.parse_args()

    meta = {}
    for line in open(args.meta):
        if "=" in line:
            k, v = line.rstrip("\n").split("=", 1)
            meta[k] = v
    tck = float(meta.get("clk_tck", 100))

    runs = {}
    lines = open(args.runs).read().splitlines()[1:]
    for line in lines:
        (n, rnd, wrk_file, p, u, rd, busy, total, redis_file, alive, wrk_cpu, p_user,
         m_before, m_after, tool) = line.split("\t")
        n = int(n)
        w = parse_h2load(wrk_file) if tool == "h2load" else parse_wrk(wrk_file)
        m0, m1 = parse_metrics(m_before), parse_metrics(m_after)
        w["metrics"] = {k: v - m0.get(k, 0.0) for k, v in m1.items()} if m_after else None
        redis_calls, redis_reads = parse_redis(redis_file)
        req = w["requests"] or 1
        w.update(
            round=int(rnd),
            proxy_us=int(p) / tck * 1e6 / req,
            proxy_user_us=int(p_user) / tck * 1e6 / req,
            upstream_us=int(u) / tck * 1e6 / req,
            redis_us=int(rd) / tck * 1e6 / req,
            busy_us=int(busy) / tck * 1e6 / req,
            wrk_us=float(wrk_cpu or 0) * 1e6 / req,
            # Machine time not spent by wrk, the upstream, Redis or the proxy under test:
            # kernel work outside process context, and other users' processes.
            other_pct=100.0 * (int(busy) / tck - int(p) / tck - int(u) / tck - int(rd) / tck
                               - float(wrk_cpu or 0)) / max(int(total) / tck, 1e-9),
            busy_pct=100.0 * int(busy) / max(int(total), 1),
            redis=redis_calls,
            redis_reads=redis_reads,
            alive=alive == "1",
        )
        runs.setdefault(n, []).append(w)

    peak = {}
    for line in open(args.peak).read().splitlines():
        n, kib, procs = line.split("\t")
        peak[int(n)] = (int(kib), int(procs))

    rows = {}
    for n, rs in runs.items():
        good = [r for r in rs if r["rps"] is not None]
        if not good:
            continue
        by_rps = sorted(good, key=lambda r: r["rps"])
        med_run = by_rps[(len(by_rps) - 1) // 2]
        rows[n] = {
            "rps": statistics.median(r["rps"] for r in good),
            "min": by_rps[0]["rps"],
            "max": by_rps[-1]["rps"],
            "p50": med_run["p50"],
            "p99": med_run["p99"],
            "cpu": statistics.median(r["proxy_us"] for r in good) if n != 1 else None,
            "cpu_user": statistics.median(r["proxy_user_us"] for r in good) if n != 1 else None,
            "cpu_kernel": statistics.median(r["proxy_us"] - r["proxy_user_us"] for r in good) if n != 1 else None,
            "upstream_us": statistics.median(r["upstream_us"] for r in good),
            "redis_us": statistics.median(r["redis_us"] for r in good),
            "busy_us": statistics.median(r["busy_us"] for r in good),
            "wrk_us": statistics.median(r["wrk_us"] for r in good),
            # In units of the yardstick, per round: see the speed-adjusted table.
            "busy_yard": median_or_none(r["busy_us"] / yardstick(r) for r in good if yardstick(r) > 0),
            "cpu_yard": median_or_none(r["proxy_us"] / yardstick(r) for r in good if yardstick(r) > 0),
            "other_pct": statistics.median(r["other_pct"] for r in good),
            "other_max": max(r["other_pct"] for r in good),
            "busy_pct": statistics.median(r["busy_pct"] for r in good),
            "rss": peak[n][0] / MIB if n in peak else None,
            "procs": peak[n][1] if n in peak else None,
            "non2xx": sum(r["non2xx"] for r in rs),
            "sock": [sum(x) for x in zip(*(r["sock"] for r in rs))],
            "requests": sum(r["requests"] for r in rs),
            "runs": len(rs),
            "died": any(not r["alive"] for r in rs),
            "redis": {
                cmd: statistics.median(r["redis"].get(cmd, 0) / max(r["requests"], 1) for r in good)
                for cmd in sorted({c for r in good for c in r["redis"]})
            },
            "cmds_total": median_or_none(sum(r["redis"].values()) / max(r["requests"], 1) for r in good),
            # /metrics counters per request (only the scenarios with an admin listener).
            "metrics": {
                key: statistics.median(r["metrics"].get(key, 0.0) / max(r["requests"], 1) for r in good)
                for key in sorted({k for r in good if r["metrics"] for k in r["metrics"]})
            },
            "mean": med_run.get("mean"),
            # Commands per socket read: 1 when every command comes in a write of its own.
            "redis_batch": median_or_none(sum(r["redis"].values()) / r["redis_reads"]
                                          for r in good if r["redis_reads"] and r["redis"]),
        }
    def ratio(n, key, base=None):
        base = base or BASE.get(n, NGINX)
        ng = rows.get(base)
        if n not in rows or not ng or rows[n][key] is None or not ng[key]:
            return None
        return rows[n][key] / ng[key]

    def paired(n, key, base=None):
        """The median over rounds of scenario n's `key` against nginx's in the same round: the
        two ran seconds apart, so the host's drift between rounds cancels out."""
        base = base or BASE.get(n, NGINX)
        if n not in runs or base not in runs:
            return None
        ours = {r["round"]: r for r in runs[n] if r["rps"] is not None}
        theirs = {r["round"]: r for r in runs[base] if r["rps"] is not None}
        return median_or_none(ours[k][key] / theirs[k][key] for k in ours if k in theirs and theirs[k][key])

    def adjusted_rps(n):
        """req/s against nginx from the machine's CPU per request in yardsticks (inverse ratio)."""
        r = ratio(n, "busy_yard")
        return None if not r else 1.0 / r

    out = []
    p = out.append
    p(f"# session-proxy benchmark, {meta.get('date', '?')}")
    p("")
    p(f"- commit `{meta.get('commit')}` (session-proxy built from: {meta.get('built_from')}), rustc {meta.get('rustc')}")
    p(f"- machine: {meta.get('cpu')}, kernel {meta.get('kernel')}; everything on loopback")
    p(f"- wrk {meta.get('wrk')}: `-c {meta.get('connections')} -t {meta.get('threads')} -d {meta.get('duration')}s --latency`, "
      f"{meta.get('rounds')} rounds, scenarios interleaved round-robin, {meta.get('warmup')} s warm-up before each run (not counted)")
    p(f"- pinning: wrk CPUs {meta.get('wrk_cpus')}, proxy CPUs {meta.get('proxy_cpus')} (none = the scheduler shares both cores among wrk, upstream, Redis and the proxy)")
    p(f"- upstream: nginx {meta.get('nginx')} `return 200` (24-byte body), worker_processes auto; Redis {meta.get('redis')} (no persistence); Node {meta.get('node')}")
    p("- session-proxy runs with `RUST_LOG=warn` (no per-request access log; nginx runs with `access_log off`, the Node proxy logs nothing per request)")
    p(f"- whole run: {meta.get('elapsed')} s")
    p("")
    p("| # | scenario | req/s median | min – max | vs nginx | p50 | p99 | proxy CPU/req | vs nginx | peak RSS | vs nginx | non-2xx | socket errors |")
    p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    floor = meta.get("floor") == "1"
    if meta.get("scenarios"):
        shown = sorted(int(x) for x in meta["scenarios"].split())
    else:
        shown = [n for n in NAMES if (floor or n not in FLOOR_SCENARIOS) and n <= 8]
    for n in shown:
        skip = meta.get(f"skip{n}")
        if n not in rows:
            p(f"| {n} | {NAMES[n]} | not run: {skip or 'no successful run'} | | | | | | | | | | |")
            continue
        r = rows[n]
        cpu = "-" if r["cpu"] is None else f"{r['cpu']:.1f} µs"
        rss = "-" if r["rss"] is None else f"{r['rss']:.1f} MiB" + (f" ({r['procs']} procs)" if r["procs"] and r["procs"] > 1 else "")
        sock = r["sock"]
        sock_s = "0" if not any(sock) else f"connect {sock[0]}, read {sock[1]}, write {sock[2]}, timeout {sock[3]}"
        died = " **(proxy died)**" if r["died"] else ""
        p(f"| {n} | {NAMES[n]}{died} | {r['rps']:,.0f} | {r['min']:,.0f} – {r['max']:,.0f} | {fmt_ratio(ratio(n, 'rps'))} "
          f"| {fmt_ms(r['p50'])} | {fmt_ms(r['p99'])} | {cpu} | {fmt_ratio(ratio(n, 'cpu'))} | {rss} | {fmt_ratio(ratio(n, 'rss'))} "
          f"| {r['non2xx']} | {sock_s} |")
    p("")
    p("req/s: median of the rounds (min – max beside it). p50/p99: wrk's latency distribution of the median run. "
      "Proxy CPU/req: utime+stime of all the proxy's processes (nginx master+workers, node primary+workers, "
      "session-proxy's one process) over the measured run, divided by its requests; median of the rounds. "
      "Peak RSS: VmHWM at the end of the run, summed over the proxy's processes. Ratios are to (2), except "
      "(13) to (12) and (15) to (14): nginx over the same protocol. (14) and (15) are h2load's "
      f"(`{meta.get('h2', '')}`, h2load {meta.get('h2load', '?')}): no percentiles, its mean time per request "
      "is in the table of the new scenarios below. (12) to (15) run over TLS with a self-signed P-256 "
      "certificate, keep-alive (one handshake per connection); (12) and (14) are one nginx, (13) and (15) one "
      "session-proxy (and (17) is (5)'s), so they show the same peak RSS.")
    p("")
    p("Where the machine's CPU went, per request (medians of the rounds; µs of CPU time; the proxy's "
      "user and kernel time are medians each, so they need not add up to its total exactly):")
    p("")
    p("| # | proxy | proxy: user / kernel | upstream nginx | redis-server | wrk | machine busy | other (not any of these) | Redis commands per request (per socket read Redis made) |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for n in shown:
        if n not in rows:
            continue
        r = rows[n]
        proxy = r["cpu"] or 0.0
        cmds = ", ".join(f"{c.upper()} {v:.2f}" for c, v in r["redis"].items() if v >= 0.005) or "none"
        if r["redis_batch"] is not None and cmds != "none":
            cmds += f" ({r['redis_batch']:.1f} per read)"
        split = "-" if r["cpu_user"] is None else f"{r['cpu_user']:.1f} / {r['cpu_kernel']:.1f}"
        p(f"| {n} | {proxy:.1f} | {split} | {r['upstream_us']:.1f} | {r['redis_us']:.1f} | {r['wrk_us']:.1f} "
          f"| {r['busy_us']:.1f} ({r['busy_pct']:.0f}% of the machine) | {r['other_pct']:.0f}% of the machine | {cmds} |")
    p("")
    p("Speed-adjusted. The host's speed drifts during a run (other VMs share it) and each scenario's rounds "
      "run at different moments, so the ratios above can move from run to run by more than the proxies differ. "
      "In (2) and (4) to (6), wrk and the upstream nginx do the same work for every request at similar rates, "
      "so their CPU time per request (the mean of the two: the yardstick) follows the machine's speed at that "
      "moment. In units of it (per round, then the median), CPU per request compares across scenarios and "
      "runs; with every core busy, req/s is inversely proportional to the machine's CPU per request, which "
      "gives the speed-adjusted req/s ratio. (1) and (3) run at other rates, where wrk's and the upstream's "
      "own cost per request differs, so they are left out (the floor, (7) and (8), runs at the rates of (2) "
      "and (4) to (6)). But the yardstick is not independent of the proxy: behind a proxy that serves more "
      "requests per second, wrk and the upstream spend less CPU per request (more of them per wake-up), so "
      "these ratios understate the faster proxy (not measured in this run: with nginx and B in turns "
      "seconds apart, `bench/ab.py nginx B --scenario 4` on 2026-12-04, the yardstick was 0.99x behind "
      "nginx against nginx, 0.93x behind session-proxy and 0.83x behind the floor). The paired ratios (each round against nginx's in the same round, then the median) take "
      "the drift out without that bias.")
    p("")
    p("| # | machine CPU/req in yardsticks | req/s vs nginx, speed-adjusted | proxy CPU/req in yardsticks | proxy CPU vs nginx, speed-adjusted | req/s vs nginx, paired | proxy CPU vs nginx, paired |")
    p("|---|---:|---:|---:|---:|---:|---:|")
    for n in (2, 4, 5, 6, 7, 8):
        if n not in rows or rows[n]["busy_yard"] is None:
            continue
        r = rows[n]
        p(f"| {n} | {r['busy_yard']:.2f} | {fmt_ratio(adjusted_rps(n))} | {r['cpu_yard']:.2f} "
          f"| {fmt_ratio(ratio(n, 'cpu_yard'))} | {fmt_ratio(paired(n, 'rps'))} | {fmt_ratio(paired(n, 'proxy_us'))} |")
    p("")

    def by_label(n, family, label, floor=0.0):
        """{label value: per request} of one labelled counter in the proxy's /metrics (values
        below `floor` left out), or None without them."""
        if n not in rows or not rows[n]["metrics"]:
            return None
        pattern = re.compile(re.escape(family) + r'\{' + label + r'="(\w+)"\}')
        out = {}
        for key, v in rows[n]["metrics"].items():
            m = pattern.match(key)
            if m and v >= floor:
                out[m.group(1)] = v
        return out

    def conflicts(n):
        """{outcome: per request}: the session conflicts the proxy counted."""
        return by_label(n, "session_proxy_session_conflicts_total", "outcome")

    def ops(n):
        """{operation: per request}: the store operations the proxy made."""
        return by_label(n, "session_proxy_store_command_duration_seconds_count", "command", floor=0.0005)

    def fmt_ops(n):
        o = ops(n)
        if o is None:
            return "-"
        return f"{sum(o.values()):.2f}: " + (", ".join(f"{k} {v:.2f}" for k, v in sorted(o.items())) or "none")

    def metric(n, prefix):
        if n not in rows or not rows[n]["metrics"]:
            return None
        return sum(v for k, v in rows[n]["metrics"].items() if k.startswith(prefix))

    def fmt_conflicts(n):
        c = conflicts(n)
        if c is None:
            return "-"
        return ", ".join(f"{o} {v:.3f}" for o, v in sorted(c.items())) or "none"

    new = [n for n in (5, 6, 9, 10, 11, 12, 13, 14, 15, 16, 17) if n in shown]
    if any(n >= 9 for n in new):
        p("## Session writes, index, TLS and cluster (issues 23, 24, 26, 27)")
        p("")
        p("| # | scenario | req/s | vs | p99 (h2load: mean) | proxy CPU/req | vs | store operations/req (the proxy's) | "
          "Redis commands/req (scripts' inside included) | conflicts/req by outcome | writes skipped/req | non-2xx |")
        p("|---|---|---:|---:|---:|---:|---:|---|---|---|---:|---:|")
        for n in new:
            if n not in rows:
                p(f"| {n} | {NAMES[n]} | not run: {meta.get(f'skip{n}') or 'no successful run'} | | | | | | | | | |")
                continue
            r = rows[n]
            base = 5 if n in (16, 17) else BASE.get(n, NGINX)
            lat = fmt_ms(r["mean"]) + " (mean)" if n in H2 else fmt_ms(r["p99"])
            cmds = ", ".join(f"{c.upper()} {v:.2f}" for c, v in r["redis"].items() if v >= 0.005) or "none"
            total = "-" if r["cmds_total"] is None else f"{r['cmds_total']:.2f}"
            skipped = metric(n, "session_proxy_session_writes_skipped")
            cpu = "-" if r["cpu"] is None else f"{r['cpu']:.1f} µs"
            p(f"| {n} | {NAMES[n]} | {r['rps']:,.0f} | {fmt_ratio(ratio(n, 'rps', base))} of ({base}) | {lat} | {cpu} "
              f"| {fmt_ratio(ratio(n, 'cpu', base))} | {fmt_ops(n)} | {total}: {cmds} | {fmt_conflicts(n)} "
              f"| {'-' if skipped is None else f'{skipped:.2f}'} | {r['non2xx']} |")
        p("")
        p("Store operations per request: what the proxy sent, from its `/metrics` (the count of "
          "`session_proxy_store_command_duration_seconds` by command; `replace_if` is the conditional write, one "
          "`EVALSHA`; `index_*` the index's). Redis commands per request: `INFO commandstats` over the measured "
          "run (all three masters for (16)), which also counts the `GET` and `SET` that the write script runs "
          "inside Redis: one conditional write shows as `EVALSHA` + `GET` + `SET`. Conflicts and skipped writes: "
          "the proxy's `/metrics` (`session_proxy_session_conflicts_total{outcome}`, "
          "`session_proxy_session_writes_skipped_total`), all read before and after the run, per request; '-' "
          "where the proxy has no admin listener. (6), (11) and (16) cycle over many sessions (4 per connection by default; wrk cycles over "
          "them, `bench/cookies.lua`), so their writes seldom meet; (10) has all 64 connections on one session: "
          "a conflict is merged and written again, and after 5 tries answered with 503 (`exhausted`).")
        p("")

    idle = {}
    try:
        idle = json.load(open(args.idle))
    except (OSError, ValueError):
        pass
    p("## 10,000 idle keep-alive connections (a fresh session-proxy)")
    p("")
    if "holding_rss_kib" in idle:
        p(f"- held {idle['held']:,} of {idle['requested']:,} connections (one keep-alive request each, then silent; "
          f"opened in {idle['opened_in_s']} s); errors: {idle['errors'] or 'none'}")
        settled = f" (the last sample: {idle['settled_rss_kib'] / MIB:.1f} MiB)" if "settled_rss_kib" in idle else ""
        p(f"- VmRSS before: {idle['before_rss_kib'] / MIB:.1f} MiB; while holding (max of samples over 3 s): "
          f"**{idle['holding_rss_kib'] / MIB:.1f} MiB**{settled}; after closing them: "
          f"{idle['after_close_rss_kib'] / MIB:.1f} MiB")
        per = (idle["holding_rss_kib"] - idle["before_rss_kib"]) * 1024 / max(idle["held"], 1)
        p(f"- that is {per / 1024:.1f} KiB per idle connection; open fds before {idle['before_fds']}, "
          f"while holding (min) {idle['holding_fds_min']}")
    elif "skipped" in idle:
        p(f"- skipped ({idle['skipped']})")
    else:
        p(f"- failed: {idle or 'no output'}")
    p("")

    p("## Targets")
    p("")
    p("Issue 5:")
    p("")

    def target(label, ok, detail):
        mark = "n/a" if ok is None else ("**met**" if ok else "**not met**")
        p(f"- {label}: {mark} ({detail})")

    def have(*ns):
        return all(n in rows for n in ns)

    if have(4, 2):
        rr, cr = ratio(4, "rps"), ratio(4, "cpu")
        target("(4) >= 1.0x nginx req/s at no more CPU/request", rr >= 1.0 and cr <= 1.0,
               f"{rr:.2f}x req/s, {cr:.2f}x CPU/request; paired {fmt_ratio(paired(4, 'rps'))} req/s, "
               f"{fmt_ratio(paired(4, 'proxy_us'))} CPU/request; speed-adjusted {fmt_ratio(adjusted_rps(4))} req/s, "
               f"{fmt_ratio(ratio(4, 'cpu_yard'))} CPU/request")
    else:
        target("(4) >= 1.0x nginx", None, "not measured")
    for n, want in ((5, 0.8), (6, 0.6)):
        if have(n, 2):
            rr = ratio(n, "rps")
            target(f"({n}) >= {want}x nginx req/s", rr >= want,
                   f"{rr:.2f}x; paired {fmt_ratio(paired(n, 'rps'))}; speed-adjusted {fmt_ratio(adjusted_rps(n))}")
        else:
            target(f"({n}) >= {want}x nginx req/s", None, "not measured")
    if have(5, 3):
        x = rows[5]["rps"] / rows[3]["rps"]
        target("(5) >= 3x the Node proxy", x >= 3.0, f"{x:.2f}x")
    else:
        target("(5) >= 3x the Node proxy", None, "not measured")
    if have(5, 1) and rows[5]["p99"] is not None and rows[1]["p99"] is not None:
        d = rows[5]["p99"] - rows[1]["p99"]
        target("p99 of (5) < 1 ms above (1)", d < 1.0,
               f"{fmt_ms(rows[5]['p99'])} vs {fmt_ms(rows[1]['p99'])}: {d:+.2f} ms; p50 {fmt_ms(rows[5]['p50'])} vs "
               f"{fmt_ms(rows[1]['p50'])}. wrk's 64 connections are a closed loop, so latency is about "
               "64 / throughput, and (1)'s tail comes from wrk and nginx competing for the 2 cores")
    else:
        target("p99 of (5) < 1 ms above (1)", None, "not measured")
    if "holding_rss_kib" in idle:
        mib = idle["holding_rss_kib"] / MIB
        if idle["held"] >= 10000:
            target("< 64 MiB RSS with 10,000 idle connections", mib < 64, f"{mib:.1f} MiB holding {idle['held']:,}")
        else:
            # Fewer held (the open-file limit, see the notes): before + 10,000 x the measured
            # cost per connection.
            per_kib = (idle["holding_rss_kib"] - idle["before_rss_kib"]) / max(idle["held"], 1)
            at_10k = (idle["before_rss_kib"] + per_kib * 10000) / MIB
            held_all = idle["held"] >= idle["requested"]
            target("< 64 MiB RSS with 10,000 idle connections", at_10k < 64 and held_all,
                   f"{mib:.1f} MiB holding {idle['held']:,} of {idle['requested']:,}; extrapolated to "
                   f"10,000: {at_10k:.1f} MiB")
    else:
        target("< 64 MiB RSS with 10,000 idle connections", None, "not measured")
    p("")
    p("")
    p("Issues 23, 24, 26, 27:")
    p("")
    if have(6, 2):
        r6 = rows[6]
        p(f"- (6) with the conditional write: {fmt_ratio(ratio(6, 'rps'))} of nginx's req/s (target above); "
          f"store operations per request {fmt_ops(6)} (Redis: {r6['cmds_total']:.2f}: "
          + ", ".join(f"{c.upper()} {v:.2f}" for c, v in r6["redis"].items() if v >= 0.005)
          + f"); conflicts per request: {fmt_conflicts(6)}")
    if have(9):
        # Both counts: what the proxy sent, and what Redis ran (no script call hides in it).
        t = rows[9]["cmds_total"]
        o = ops(9)
        ok = t is not None and abs(t - 1.0) <= 0.01 and (o is None or abs(sum(o.values()) - 1.0) <= 0.01)
        target("(9) echo: exactly 1 store command per request", ok,
               f"the proxy's store operations per request {fmt_ops(9)}; Redis: {t:.3f} ("
               + ", ".join(f"{c.upper()} {v:.3f}" for c, v in rows[9]["redis"].items())
               + f"); writes skipped per request {metric(9, 'session_proxy_session_writes_skipped') or 0:.3f}")
    else:
        target("(9) echo: exactly 1 store command per request", None, meta.get("skip9") or "not measured")
    if have(10):
        r10 = rows[10]
        bad = f"; {r10['non2xx']} non-2xx responses" if r10["non2xx"] else "; no non-2xx response"
        p(f"- (10) contention, reported (no target): {r10['rps']:,.0f} req/s ({fmt_ratio(ratio(10, 'rps'))} of nginx), "
          f"p99 {fmt_ms(r10['p99'])}, conflicts per request {fmt_conflicts(10)}, "
          f"store operations per request {fmt_ops(10)}{bad}")
    else:
        target("(10) contention", None, meta.get("skip10") or "not measured")
    if have(11, 6) and ops(11) is not None and ops(6) is not None:
        # Per request, both make one read and one conditional write, plus one more write per
        # merged conflict (a retry); with the index, nothing else.
        o11, o6 = ops(11), ops(6)
        c11, c6 = (conflicts(11) or {}).get("merged", 0.0), (conflicts(6) or {}).get("merged", 0.0)
        extra = sum(v for k, v in o11.items() if k not in o6)
        writes11 = o11.get("replace_if", 0.0) - c11
        writes6 = o6.get("replace_if", 0.0) - c6
        reads = sum(o11.get(k, 0.0) - o6.get(k, 0.0) for k in ("get", "getex"))
        target("(11) session.index: no extra store command per write that keeps the indexed value",
               extra < 0.005 and abs(reads) < 0.005 and writes11 - writes6 < 0.01,
               f"with index {fmt_ops(11)}, without ((6)) {fmt_ops(6)}; operations (6) does not make: {extra:.3f} per "
               f"request; conditional writes less merged conflicts: {writes11:.3f} against {writes6:.3f}; "
               f"Redis commands {rows[11]['cmds_total']:.2f} against {rows[6]['cmds_total']:.2f}; "
               f"req/s {rows[11]['rps']:,.0f} against {rows[6]['rps']:,.0f} ({rows[11]['rps'] / rows[6]['rps']:.2f}x)")
    else:
        target("(11) session.index: no extra store command", None, meta.get("skip11") or "not measured")
    for n, b, label in ((13, 12, "HTTPS HTTP/1.1"), (15, 14, "HTTP/2 over TLS")):
        if have(n, b):
            rr = ratio(n, "rps")
            target(f"({n}) {label} >= 0.8x nginx's req/s ({b})", rr >= 0.8,
                   f"{rr:.2f}x ({rows[n]['rps']:,.0f} against {rows[b]['rps']:,.0f}); paired {fmt_ratio(paired(n, 'rps'))}; "
                   f"proxy CPU per request {rows[n]['cpu']:.1f} µs against {rows[b]['cpu']:.1f} µs "
                   f"({fmt_ratio(ratio(n, 'cpu'))})")
        else:
            target(f"({n}) {label} >= 0.8x nginx's req/s ({b})", None,
                   meta.get(f"skip{n}") or meta.get(f"skip{b}") or "not measured")
    if have(16, 5):
        rr = ratio(16, "rps", 5)
        like = ""
        if have(17):
            like = (f"; like for like, against (17) (the same wrk script and as many sessions on one Redis): "
                    f"{ratio(16, 'rps', 17):.2f}x, paired {fmt_ratio(paired(16, 'rps', 17))}, proxy CPU per request "
                    f"{fmt_ratio(ratio(16, 'cpu', 17))}")
        target("(16) session reads on a 3-master Redis Cluster >= 0.9x (5)", rr >= 0.9,
               f"{rr:.2f}x ({rows[16]['rps']:,.0f} against {rows[5]['rps']:,.0f}); paired {fmt_ratio(paired(16, 'rps', 5))}"
               + like)
    else:
        target("(16) session reads on a 3-master Redis Cluster >= 0.9x (5)", None,
               meta.get("skip16") or "not measured")
    p("")
    if have(2, 4, 7):
        p("What bounds (4) and (5): the floor, the same crates and threads doing nothing but forward "
          "(speed-adjusted, against nginx):")
        p("")
        p(f"- (7) bare hyper proxy: {fmt_ratio(adjusted_rps(7))} req/s at {fmt_ratio(ratio(7, 'cpu_yard'))} CPU/request; "
          f"(4) session-proxy without a session: {fmt_ratio(adjusted_rps(4))} at {fmt_ratio(ratio(4, 'cpu_yard'))}")
        if have(5, 8):
            p(f"- (8) bare hyper proxy + one fred GET: {fmt_ratio(adjusted_rps(8))} req/s at "
              f"{fmt_ratio(ratio(8, 'cpu_yard'))} CPU/request; (5) session-proxy with a session read: "
              f"{fmt_ratio(adjusted_rps(5))} at {fmt_ratio(ratio(5, 'cpu_yard'))}")
        p("")

    notes = [l for l in open(args.notes).read().splitlines() if l.strip()]
    bad = [n for n in rows if rows[n]["non2xx"] or any(rows[n]["sock"]) or rows[n]["died"]]
    noisy = [n for n in rows if rows[n]["other_max"] > OTHER_LOAD_WARN_PCT]
    if noisy:
        notes.insert(0, "background load: in " + ", ".join(f"({n}) up to {rows[n]['other_max']:.0f}%" for n in noisy)
                     + " of the machine went to processes other than wrk, the upstream, Redis and the proxy "
                     "(other users' work, kernel threads); those runs are slower than on a quiet machine")
    if notes or bad:
        p("## Notes and errors")
        p("")
        for n in bad:
            r = rows[n]
            p(f"- ({n}) {NAMES[n]}: {r['non2xx']} non-2xx/3xx responses and socket errors {r['sock']} "
              f"out of {r['requests']:,} requests in {r['runs']} runs" + (", the proxy died" if r["died"] else ""))
        for l in notes:
            p(f"- {l}")
        p("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
