#!/usr/bin/env python3
"""Sends exactly COUNT keep-alive HTTP/1.1 GET requests over CONNECTIONS connections, for
bench/profile.sh (wrk has no request count: its threads can stop early, but wrk still waits
out the whole duration).

Usage: send_requests.py URL COUNT [--connections 8] [--cookie 'name=value' ...]
With several --cookie, connection i sends the (i mod n)-th: one session per connection, so
writes never meet a concurrent write of their session. Prints the number of 200 responses; the others are counted on stderr. Exit code 1 when any
response was not 200 or a connection failed.
"""

import argparse
import asyncio
import sys
from urllib.parse import urlsplit

#: One request waits at most this long (callgrind slows the proxy down 50-100x).
REQUEST_TIMEOUT = 60.0


async def worker(host, port, request, quota, results):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while quota[0] > 0:
            quota[0] -= 1
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await asyncio.wait_for(reader.readexactly(length), REQUEST_TIMEOUT)
            results[status] = results.get(status, 0) + 1
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("count", type=int)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--cookie", action="append", default=[])
    a = ap.parse_args()
    u = urlsplit(a.url)
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    head = f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nUser-Agent: send-requests\r\n"
    cookies = a.cookie or [""]
    requests = [(head + (f"Cookie: {c}\r\n" if c else "") + "\r\n").encode() for c in cookies]
    quota, results = [a.count], {}
    outcomes = await asyncio.gather(
        *(worker(u.hostname, u.port or 80, requests[i % len(requests)], quota, results) for i in range(a.connections)),
        return_exceptions=True,
    )
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    ok = results.get(200, 0)
    print(ok)
    others = {k: v for k, v in results.items() if k != 200}
    if others or failures:
        print(f"non-200 responses: {others}; connection failures: {failures}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
