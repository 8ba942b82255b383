#!/usr/bin/env python3
"""Idle keep-alive connections: how much memory a proxy needs to hold many quiet clients.

Opens N TCP connections to HOST:PORT, sends one keep-alive HTTP/1.1 request on each and reads
its response, then holds every connection open without sending anything. Meanwhile it samples
the proxy's VmRSS (from /proc/PID/status) and its number of open file descriptors: once
before connecting, repeatedly while holding (the largest sample is the result; the last one,
once the crowd has settled, is printed beside it), and once after closing. Prints one JSON
object.

session-proxy closes a keep-alive connection that stays idle for 10 s (its header-read
timeout), so the hold is kept shorter than that: every sample is taken while all connections
are still open, which the fd count confirms.

Usage: idle_conns.py --port PORT --pid PID [--host 127.0.0.1] [--path /] [--count 10000]
The caller must raise `ulimit -n` above COUNT (for this client and for the proxy).
"""

import argparse
import asyncio
import json
import os
import sys
import time

#: Connections being opened at the same time: a burst of 10,000 SYNs would overflow the
#: proxy's listen backlog (1024 for tokio) and turn into slow SYN retries.
CONNECT_CONCURRENCY = 256
#: How long to hold all connections after the last response, sampling as we go. Must stay
#: well under session-proxy's 10 s idle keep-alive timeout.
HOLD_SECONDS = 3.0
SAMPLE_INTERVAL = 0.25
#: Give up on one connection's request after this long.
REQUEST_TIMEOUT = 10.0


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def one(host, port, path, sem, conns, errors):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), REQUEST_TIMEOUT
            )
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "User-Agent: idle-conns\r\nAccept: */*\r\n\r\n".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(reader.readexactly(length), REQUEST_TIMEOUT)
            if status != 200:
                errors.append(f"status {status}")
            conns.append(writer)
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            errors.append(type(e).__name__)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--count", type=int, default=10000)
    a = p.parse_args()

    before_rss, before_fds = vm_rss_kib(a.pid), open_fds(a.pid)
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    conns, errors = [], []
    t0 = time.monotonic()
    await asyncio.gather(
        *(one(a.host, a.port, a.path, sem, conns, errors) for _ in range(a.count))
    )
    opened_in = time.monotonic() - t0

    samples = []
    end = time.monotonic() + HOLD_SECONDS
    while time.monotonic() < end:
        samples.append((vm_rss_kib(a.pid), open_fds(a.pid)))
        await asyncio.sleep(SAMPLE_INTERVAL)
    holding_rss = max(s[0] for s in samples)
    # The first samples still see the last clients' buffers (they have not parked yet) and
    # memory freed but not yet given back to the OS; the last one is what the crowd costs for good.
    settled_rss = samples[-1][0]
    holding_fds = min(s[1] for s in samples)

    for w in conns:
        w.close()
    await asyncio.sleep(1.0)
    after_rss = vm_rss_kib(a.pid)

    error_counts = {}
    for e in errors:
        error_counts[e] = error_counts.get(e, 0) + 1
    print(
        json.dumps(
            {
                "requested": a.count,
                "held": len(conns),
                "errors": error_counts,
                "opened_in_s": round(opened_in, 2),
                "before_rss_kib": before_rss,
                "holding_rss_kib": holding_rss,
                "settled_rss_kib": settled_rss,
                "after_close_rss_kib": after_rss,
                "before_fds": before_fds,
                "holding_fds_min": holding_fds,
            }
        )
    )


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)
