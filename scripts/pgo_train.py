#!/usr/bin/env python3
"""scripts/pgo_train.py: the training run of scripts/build-pgo.sh.

Runs an instrumented session-proxy (built with -Cprofile-generate) through a mix of the
requests a production proxy sees, so that the profile it writes at exit says which code is hot:

- plain HTTP/1.1 keep-alive on a `session = false` route and on session routes: no cookie,
  a valid cookie (a store read), an update on the response (equal to the session: a read;
  changing it: a read and a conditional write), a new id
  (regenerate), a destroyed session, a forged or stale cookie; GET, HEAD and POST with a
  Content-Length or a chunked body; small, large and chunked responses; upgraded
  connections (bytes both ways through the tunnel); the admin endpoints; the same mix on the
  memory store;
- the same over TLS (HTTP/1.1), and HTTP/2 over TLS and in cleartext (curl, a request per
  connection), when `openssl` and a curl with HTTP/2 are there (else it says what it skipped);

against an upstream written here (asyncio, stdlib only) and a redis-server it starts on a
free port. With `--bare PATH` it also trains examples/bare_proxy.rs (the benchmark's floor),
plain and waiting for one Redis GET per request.

Usage: pgo_train.py PROXY [--bare BARE] [--requests 24000]
Exits non-zero when a proxy fails to start or answers with an unexpected status: a profile of
failing requests would optimise the wrong code.
"""

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

SESSION = b'{"user":"train","role":"tester"}'
# The counter of the /write/ updates, so each one changes the session.
WRITES = itertools.count()
SMALL = b"hello from the upstream\n"
BIG = b"x" * (64 * 1024)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    for _ in range(300):
        if proc is not None and proc.poll() is not None:
            sys.exit(f"pgo_train.py: {what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"pgo_train.py: {what} did not listen on port {port}")


# ------------------------------------------------------------------ HTTP/1.1 on both sides
async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        if b":" in line:
            name, _, value = line.partition(b":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], headers


async def read_body(reader, headers):
    if b"chunked" in b",".join(headers.get(b"transfer-encoding", [])).lower():
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                return body
    length = int(headers.get(b"content-length", [b"0"])[0])
    return await reader.readexactly(length) if length else b""


async def upstream(reader, writer):
    """The app behind the proxy: answers by path, like a legacy app using the header protocol."""
    try:
        while True:
            try:
                start, headers = await read_head(reader)
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                return  # the proxy closed the connection, or the run is over
            method, path = start.split(b" ")[:2]
            await read_body(reader, headers)
            if path.endswith(b"/ws"):
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
                while data := await reader.read(65536):  # an echo, until the client closes
                    writer.write(data)
                    await writer.drain()
                return
            extra, body, chunked = [], SMALL, False
            if b"/update/" in path:
                extra.append(b"x-session-update: " + SESSION)  # equal to the session: no write
            elif b"/write/" in path:
                # A change on every response: a real conditional write (and, when clients
                # share a session, the merge after a conflict).
                extra.append(b"x-session-update: " + SESSION[:-1] + b',"n":%d}' % next(WRITES))
            elif path.endswith(b"/login"):
                extra += [b"x-session-update: " + SESSION, b"x-session-regenerate: 1"]
            elif path.endswith(b"/logout"):
                extra.append(b"x-session-update: null")
            elif path.endswith(b"/big"):
                body = BIG
            elif path.endswith(b"/chunked"):
                chunked = True
            head = [b"HTTP/1.1 200 OK", b"content-type: text/plain", b"cache-control: no-store"] + extra
            if chunked:
                head.append(b"transfer-encoding: chunked")
                payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (SMALL, BIG[:3000], SMALL)) + b"0\r\n\r\n"
            else:
                head.append(b"content-length: %d" % len(body))
                payload = b"" if method == b"HEAD" else body
            writer.write(b"\r\n".join(head) + b"\r\n\r\n" + payload)
            await writer.drain()
    finally:
        writer.close()


def mix(cookie, stale, own):
    """(method, path, cookie, body, chunked) of one round of a client's requests. `cookie` is
    shared by every client (its updates equal its session: nothing is written); `own` is this
    client's, changed by every /write/ (a conditional write that meets no other)."""
    post = b"a=1&b=" + b"y" * 2000
    return [
        (b"GET", b"/plain/", None, b"", False),
        (b"GET", b"/plain/big", None, b"", False),
        (b"POST", b"/plain/form", None, post, False),
        (b"GET", b"/", cookie, b"", False),
        (b"GET", b"/", cookie, b"", False),
        (b"GET", b"/page?x=1", cookie, b"", False),
        (b"HEAD", b"/", cookie, b"", False),
        (b"GET", b"/update/", cookie, b"", False),
        (b"POST", b"/update/", cookie, post, True),
        (b"GET", b"/write/", own, b"", False),
        (b"GET", b"/write/", own, b"", False),
        (b"GET", b"/chunked", cookie, b"", False),
        (b"GET", b"/", None, b"", False),
        (b"GET", b"/", stale, b"", False),
    ]


async def client(port, tls, rounds, cookie, stale, failures):
    own = await new_cookie(port, tls)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    try:
        for _ in range(rounds):
            for method, path, c, body, chunked in mix(cookie, stale, own):
                req = [method + b" " + path + b" HTTP/1.1", b"host: train.local", b"user-agent: pgo-train",
                       b"accept: */*"]
                if c:
                    req.append(b"cookie: " + c)
                if body and chunked:
                    req.append(b"transfer-encoding: chunked")
                    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
                elif body:
                    req += [b"content-type: application/x-www-form-urlencoded", b"content-length: %d" % len(body)]
                writer.write(b"\r\n".join(req) + b"\r\n\r\n" + body)
                start, headers = await read_head(reader)
                if method != b"HEAD":
                    await read_body(reader, headers)
                if start.split(b" ")[1] != b"200":
                    failures.append(f"{method.decode()} {path.decode()}: {start.decode()}")
                    return
    finally:
        writer.close()


async def new_cookie(port, tls):
    """A valid session cookie, from a request whose response carries an update."""
    for _ in range(50):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        writer.write(b"GET /update/ HTTP/1.1\r\nhost: train.local\r\n\r\n")
        start, headers = await read_head(reader)
        await read_body(reader, headers)
        writer.close()
        if start.split(b" ")[1] == b"200" and b"set-cookie" in headers:
            return headers[b"set-cookie"][0].split(b";")[0]
        await asyncio.sleep(0.1)  # 503 until the Redis connection is up
    sys.exit("pgo_train.py: session-proxy set no session cookie")


def tls_context():
    """A client context for the proxy's certificate made here (so none is verified)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


async def drive(port, tls, requests, connections):
    """`tls` is None or a client context."""
    cookie = await new_cookie(port, tls)
    name, _, value = cookie.partition(b"=")
    stale = name + b"=" + value[:-4] + b"AAAA"
    rounds = max(1, requests // (connections * len(mix(cookie, stale, cookie))))
    failures = []
    await asyncio.gather(*(client(port, tls, rounds, cookie, stale, failures) for _ in range(connections)))
    if failures:
        sys.exit(f"pgo_train.py: unexpected answers: {failures[:3]}")
    return cookie


async def drive_upgrades(port, tunnels, messages):
    """Upgraded connections (as WebSockets are): a 101, then bytes both ways through the tunnel."""
    async def one():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /plain/ws HTTP/1.1\r\nhost: train.local\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        start, _ = await read_head(reader)
        if start.split(b" ")[1] != b"101":
            sys.exit(f"pgo_train.py: an upgrade got {start.decode()}")
        for _ in range(messages):
            writer.write(BIG[:1024])
            await reader.readexactly(1024)
        writer.close()
    for _ in range(tunnels // 8):
        await asyncio.gather(*(one() for _ in range(8)))


async def scrape(port, paths, times):
    """The admin listener's endpoints, as a monitor polls them."""
    for _ in range(times):
        for path in paths:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET " + path + b" HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
            start, headers = await read_head(reader)
            await read_body(reader, headers)
            writer.close()
            if start.split(b" ")[1] != b"200":
                sys.exit(f"pgo_train.py: admin {path.decode()} answered {start.decode()}")


async def drive_bare(port, requests, connections):
    async def one():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(requests // connections):
            writer.write(b"GET / HTTP/1.1\r\nhost: train.local\r\nuser-agent: pgo-train\r\n\r\n")
            start, headers = await read_head(reader)
            await read_body(reader, headers)
            if start.split(b" ")[1] != b"200":
                sys.exit(f"pgo_train.py: the bare proxy answered {start.decode()}")
        writer.close()
    await asyncio.gather(*(one() for _ in range(connections)))


async def curl_h2(urls, flags, cookie):
    """HTTP/2 requests, one per connection (curl 7.88, Debian 12's, fails every request after
    the first on a reused HTTP/2 connection, with any server); False when there is no curl
    with HTTP/2."""
    if not shutil.which("curl"):
        return False
    features = subprocess.run(["curl", "-V"], stdout=subprocess.PIPE, text=True).stdout
    if "HTTP2" not in features:
        return False
    for url in urls:
        curl = await asyncio.create_subprocess_exec(
            "curl", "-sS", *flags, "-H", "cookie: " + cookie.decode(), "-o", "/dev/null",
            "-w", "%{http_version} %{http_code}", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await curl.communicate()
        if curl.returncode != 0 or out != b"2 200":
            sys.exit(f"pgo_train.py: HTTP/2 request to {url} failed: {out.decode()} {err.decode().strip()}")
    return True


def stop(proc, what):
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        sys.exit(f"pgo_train.py: {what} did not stop on SIGTERM (its profile is lost)")
    if code != 0:
        sys.exit(f"pgo_train.py: {what} exited with {code}")


def config(tmp, name, listen, store, upstream_port, tls=None, admin=None):
    """A proxy.toml: `store` is the store's URL, `tls` (cert, key) paths, `admin` a port."""
    server = f'listen = "127.0.0.1:{listen}"\n'
    if tls:
        server += f'tls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n'
    if admin:
        server += f'admin_listen = "127.0.0.1:{admin}"\n'
    path = os.path.join(tmp, f"{name}.toml")
    with open(path, "w") as f:
        f.write(f"""[server]
{server}
[store]
url = "{store}"
key_prefix = "_session:"

[session]
secrets = ["pgo-training-secret"]
secure = false

[[route]]
prefix = "/plain/"
upstream = "http://127.0.0.1:{upstream_port}"
session = false

[[route]]
prefix = "/"
upstream = "http://127.0.0.1:{upstream_port}"
""")
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("proxy")
    ap.add_argument("--bare")
    ap.add_argument("--requests", type=int, default=24000)
    ap.add_argument("--connections", type=int, default=16)
    a = ap.parse_args()
    if not shutil.which("redis-server"):
        sys.exit("pgo_train.py: redis-server is missing (apt-get install -y redis-server)")

    tmp = tempfile.mkdtemp(prefix="session-proxy-pgo.")
    procs = []

    def start(args, what, **kw):
        proc = subprocess.Popen(args, stdout=open(os.path.join(tmp, f"{what}.log"), "w"),
                                stderr=subprocess.STDOUT, **kw)
        procs.append(proc)
        return proc

    loop = asyncio.new_event_loop()
    try:
        redis_port, upstream_port, plain_port, tls_port, memory_port, admin_port = (free_port() for _ in range(6))
        redis = start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                       "--appendonly", "no", "--dir", tmp], "redis")
        server = loop.run_until_complete(asyncio.start_server(upstream, "127.0.0.1", upstream_port))
        wait_port(redis_port, redis, "redis-server")
        env = {**os.environ, "RUST_LOG": "warn"}

        redis_url = f"redis://127.0.0.1:{redis_port}"
        proxy = start([a.proxy, "--config", config(tmp, "plain", plain_port, redis_url, upstream_port,
                                                   admin=admin_port)], "proxy", env=env)
        memory = start([a.proxy, "--config", config(tmp, "memory", memory_port, "memory://", upstream_port)],
                       "proxy-memory", env=env)
        tls = None
        if shutil.which("openssl"):
            cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            tls = start([a.proxy, "--config", config(tmp, "tls", tls_port, redis_url, upstream_port, (cert, key))],
                        "proxy-tls", env=env)
        else:
            print("pgo_train.py: no openssl, so TLS is not trained", file=sys.stderr)
        wait_port(plain_port, proxy, "session-proxy")

        t0 = time.monotonic()
        cookie = loop.run_until_complete(drive(plain_port, None, a.requests, a.connections))
        trained = [f"{a.requests} HTTP/1.1"]
        loop.run_until_complete(drive_upgrades(plain_port, 64, 20))
        loop.run_until_complete(scrape(admin_port, (b"/metrics", b"/healthz", b"/readyz"), 20))
        trained += ["64 upgrades", "60 admin"]
        wait_port(memory_port, memory, "session-proxy on the memory store")
        loop.run_until_complete(drive(memory_port, None, a.requests // 4, a.connections // 2))
        trained.append(f"{a.requests // 4} HTTP/1.1 on the memory store")
        stop(memory, "session-proxy on the memory store")
        h2_urls = [f"http://127.0.0.1:{plain_port}{p}" for p in ("/plain/", "/", "/update/", "/plain/big")] * 25
        if loop.run_until_complete(curl_h2(h2_urls, ["--http2-prior-knowledge"], cookie)):
            trained.append(f"{len(h2_urls)} h2c")
        else:
            print("pgo_train.py: this curl cannot speak HTTP/2, so h2c is not trained", file=sys.stderr)
        if tls:
            wait_port(tls_port, tls, "session-proxy with TLS")
            loop.run_until_complete(drive(tls_port, tls_context(), a.requests // 4, a.connections // 2))
            trained.append(f"{a.requests // 4} HTTP/1.1 over TLS")
            h2_urls = [u.replace(f"http://127.0.0.1:{plain_port}", f"https://127.0.0.1:{tls_port}") for u in h2_urls]
            if loop.run_until_complete(curl_h2(h2_urls, ["--http2", "-k"], cookie)):
                trained.append(f"{len(h2_urls)} h2 over TLS")
            else:
                print("pgo_train.py: this curl cannot speak HTTP/2, so h2 over TLS is not trained", file=sys.stderr)
            stop(tls, "session-proxy with TLS")
        stop(proxy, "session-proxy")

        if a.bare:
            bare_port, bare_get_port = free_port(), free_port()
            up = ["--upstream", f"127.0.0.1:{upstream_port}"]
            bare = start([a.bare, "--listen", f"127.0.0.1:{bare_port}", *up], "bare")
            bare_get = start([a.bare, "--listen", f"127.0.0.1:{bare_get_port}", *up,
                              "--redis", f"redis://127.0.0.1:{redis_port}"], "bare-get")
            subprocess.run(["redis-cli", "-p", str(redis_port), "set", "bare-proxy:session", SESSION],
                           check=True, stdout=subprocess.DEVNULL)
            for port, proc, what in ((bare_port, bare, "bare proxy"), (bare_get_port, bare_get, "bare proxy + GET")):
                wait_port(port, proc, what)
                loop.run_until_complete(drive_bare(port, a.requests // 2, a.connections))
                stop(proc, what)
            trained.append(f"{a.requests // 2} each through the bare proxies")
        print(f"pgo_train.py: trained on {', '.join(trained)} (requests) in {time.monotonic() - t0:.1f} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
