//! The known attacks on HTTP/2 servers, each against a proxy that keeps serving a normal
//! client meanwhile (every one of its requests answered within [`SERVED_WITHIN`]): rapid reset
//! (CVE-2023-44487), a CONTINUATION flood (CVE-2024-27316), SETTINGS and PING floods from a
//! client that reads nothing, a stream that never sends its body, and more concurrent streams
//! than the proxy allows. Attacks are raw frames on a TCP socket (or the `h2` crate's client),
//! all on loopback, bounded in frames or bytes.
//!
//! What "survived with bounded CPU and memory" means here, checked per attack: the attacker's
//! connection is closed by the proxy, or the proxy stops reading it (its writes stall long
//! before the flood is sent), or the work it causes is capped (streams refused beyond the
//! limit, upstream requests bounded); the process's resident memory grows by less than
//! [`RSS_GROWTH_MAX`]; and nothing panics. The tests run one at a time (a lock), so the
//! memory they measure is their own.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::faults::*;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use session_proxy::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// A normal client's request during an attack must be answered within this (a hang guard:
/// unloaded, they take a few milliseconds).
const SERVED_WITHIN: Duration = Duration::from_secs(1);
/// How much the process's resident memory may grow over one attack.
const RSS_GROWTH_MAX: u64 = 64 * 1024 * 1024;
/// A flood sends at most this many bytes; a proxy that keeps reading a client it cannot
/// answer would take all of them.
const FLOOD_BYTES: usize = 64 * 1024 * 1024;
/// A flood's writer that cannot write for this long has been stopped by the proxy.
const WRITE_STALLED: Duration = Duration::from_secs(2);

/// One attack at a time, so each measures its own memory.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// `GET /` (or `POST /` with a body to come) for authority `x`, in HPACK: indexed `:method`,
/// `:scheme http`, `:path /`, and `:authority` as a literal.
fn request_block(post: bool) -> Vec<u8> {
    vec![if post { 0x83 } else { 0x82 }, 0x86, 0x84, 0x01, 0x01, b'x']
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// What the proxy sent on an attacked connection.
#[derive(Debug, Default)]
struct Seen {
    /// RST_STREAM frames: (stream, error code).
    resets: Vec<(u32, u32)>,
    /// GOAWAY's error code, if one came.
    goaway: Option<u32>,
    /// HEADERS frames (responses), by stream.
    responses: Vec<u32>,
}

/// A raw HTTP/2 connection: the preface and an empty SETTINGS are sent; a task reads and
/// records every frame the proxy sends until it closes the connection.
struct Attacker {
    write: OwnedWriteHalf,
    seen: Arc<std::sync::Mutex<Seen>>,
    reader: JoinHandle<()>,
}

impl Attacker {
    async fn connect(addr: SocketAddr) -> Attacker {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (read, mut write) = stream.into_split();
        write.write_all(PREFACE).await.unwrap();
        write.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        Attacker { write, seen: seen.clone(), reader: tokio::spawn(read_frames(read, seen)) }
    }

    /// Writes `bytes`; `false` once the proxy has closed the connection.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.write.write_all(bytes).await.is_ok()
    }

    /// Waits until what the proxy sent so far satisfies `done`.
    async fn wait_for(&self, what: &str, done: impl Fn(&Seen) -> bool) {
        guarded(what, async {
            while !done(&self.seen.lock().unwrap()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// Closes the attacker's side; returns what the proxy sent, once it has closed its side.
    async fn closed(self) -> Seen {
        drop(self.write);
        guarded("the proxy to close the attacked connection", self.reader).await.unwrap();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

async fn read_frames(mut read: OwnedReadHalf, seen: Arc<std::sync::Mutex<Seen>>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, stream) = (buf[3], u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff);
            let payload = &buf[9..9 + len];
            let code = |at: usize| payload.get(at..at + 4).map(|b| u32::from_be_bytes(b.try_into().unwrap()));
            let mut seen = seen.lock().unwrap();
            match kind {
                RST_STREAM => seen.resets.push((stream, code(0).unwrap_or(0))),
                GOAWAY => seen.goaway = code(4),
                HEADERS => seen.responses.push(stream),
                _ => {}
            }
            buf.drain(..9 + len);
        }
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A normal client, requesting `GET /` in a loop on fresh connections while an attack runs;
/// each answer must be `ok` within [`SERVED_WITHIN`].
struct Bystander {
    stop: Arc<std::sync::atomic::AtomicBool>,
    served: Arc<AtomicUsize>,
    task: JoinHandle<Vec<String>>,
}

impl Bystander {
    fn start(url: String) -> Bystander {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let task = {
            let (stop, served) = (stop.clone(), served.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) && failures.is_empty() {
                    match tokio::time::timeout(SERVED_WITHIN, get(&url)).await {
                        Ok((StatusCode::OK, _, body)) if body == "ok" => {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(other) => failures.push(format!("{other:?}")),
                        Err(_) => failures.push(format!("not answered within {SERVED_WITHIN:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                failures
            })
        };
        Bystander { stop, served, task }
    }

    /// Stops it; asserts it was served throughout, at least `min` times; returns how often.
    async fn finish(self, min: usize) -> usize {
        let deadline = std::time::Instant::now() + HANG_GUARD;
        while self.served.load(Ordering::SeqCst) < min && !self.task.is_finished() {
            assert!(std::time::Instant::now() < deadline, "the normal client was not served");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.store(true, Ordering::SeqCst);
        let failures = guarded("the normal client", self.task).await.unwrap();
        assert!(failures.is_empty(), "the normal client during the attack: {failures:?}");
        self.served.load(Ordering::SeqCst)
    }
}

/// The process's resident set size.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    kib * 1024
}

fn assert_rss_bounded(before: u64, what: &str) {
    let grown = rss().saturating_sub(before);
    assert!(grown < RSS_GROWTH_MAX, "{what}: resident memory grew by {} MiB", grown >> 20);
}

/// An upstream that answers `ok`, reading whatever body comes, and counts the requests it is
/// in the middle of (and the most at once).
struct CountingUpstream {
    upstream: Upstream,
    total: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

async fn counting_upstream() -> CountingUpstream {
    let total = Arc::new(AtomicUsize::new(0));
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (t, n, p) = (total.clone(), now.clone(), peak.clone());
    let upstream = upstream(move |req: Request<hyper::body::Incoming>| {
        let (t, n, p) = (t.clone(), n.clone(), p.clone());
        async move {
            t.fetch_add(1, Ordering::SeqCst);
            let at_once = n.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(at_once, Ordering::SeqCst);
            let _ = req.into_body().collect().await;
            n.fetch_sub(1, Ordering::SeqCst);
            Response::new(full("ok"))
        }
    })
    .await;
    CountingUpstream { upstream, total, peak }
}

/// The proxy under attack: HTTP/2 by prior knowledge, one plain route, a short body idle
/// timeout (so streams that never send their body end soon).
async fn proxy_for(up: &CountingUpstream) -> TestProxy {
    let toml = format!("[[route]]\nprefix = \"/\"\nupstream = \"{}\"\nsession = false\n", up.upstream.url());
    let limits = Limits { body_idle_timeout: Duration::from_millis(500), ..Limits::default() };
    start_proxy_with(config(&toml), limits).await
}

/// One attack's setting: the lock, a counting upstream, the proxy, the normal client, and the
/// resident memory before.
struct Scene {
    _one: tokio::sync::MutexGuard<'static, ()>,
    up: CountingUpstream,
    proxy: TestProxy,
    bystander: Bystander,
    rss_before: u64,
}

impl Scene {
    async fn begin() -> Scene {
        let one = ONE_AT_A_TIME.lock().await;
        count_panics();
        let up = counting_upstream().await;
        let proxy = proxy_for(&up).await;
        let bystander = Bystander::start(proxy.url("/"));
        Scene { _one: one, up, proxy, bystander, rss_before: rss() }
    }

    /// Checks that the normal client was served throughout, memory stayed bounded and nothing
    /// panicked; returns how many requests of the upstream's were not the attacker's.
    async fn end(self, what: &str) -> (usize, CountingUpstream) {
        let served = self.bystander.finish(3).await;
        assert_rss_bounded(self.rss_before, what);
        assert_eq!(panics(), 0);
        self.proxy.shutdown().await;
        (served, self.up)
    }
}

/// Rapid reset: HEADERS then RST_STREAM, thousands of times, as fast as the socket takes
/// them. After 20 streams reset before the proxy took them up (the pending-accept reset limit)
/// the connection gets GOAWAY `ENHANCE_YOUR_CALM` and is closed, so the flood costs no upstream
/// work; the normal client is served throughout, and memory stays bounded. (A stream reset
/// after it was taken up cancels its request at once: hyper drops the request's future.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_survived() {
    let scene = Scene::begin().await;
    let mut attacker = Attacker::connect(scene.proxy.addr).await;
    let block = request_block(false);
    // Far more than the loopback socket buffers hold (about 20 MB of frames), so the flood
    // cannot all be written before the proxy has read and refused it, however fast it runs.
    const FLOOD: u32 = 400_000;
    let mut sent = 0u32;
    for batch in 0..FLOOD / 100 {
        let mut burst = Vec::new();
        for i in 0..100u32 {
            let id = 2 * (batch * 100 + i) + 1;
            burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
            burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        }
        if !attacker.send(&burst).await {
            break;
        }
        sent += 100;
    }
    let seen = attacker.closed().await;
    assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "after {sent} reset streams: {seen:?}");
    assert!(sent < FLOOD, "closed before the whole flood was sent");
    let (served, up) = scene.end("rapid reset").await;
    let attack_requests = up.total.load(Ordering::SeqCst) - served;
    assert!(attack_requests < 100, "{attack_requests} of {sent} reset streams reached the upstream");
}

/// CONTINUATION flood: a HEADERS frame without END_HEADERS, then CONTINUATION frames without
/// end. The proxy closes the connection once the header block passes its limit, long before
/// the flood is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off() {
    let scene = Scene::begin().await;
    let mut attacker = Attacker::connect(scene.proxy.addr).await;
    // A literal header (new name) whose value goes on across the CONTINUATION frames.
    let mut first = request_block(false);
    first.extend_from_slice(&[0x00, 0x01, b'a', 0x7f, 0xff, 0xff, 0xff, 0x0f]);
    let mut written = 0usize;
    if attacker.send(&frame(HEADERS, END_STREAM, 1, &first)).await {
        let filler = frame(CONTINUATION, 0, 1, &vec![b'a'; 16 * 1024]);
        while written < FLOOD_BYTES {
            match tokio::time::timeout(WRITE_STALLED, attacker.send(&filler)).await {
                Ok(true) => written += filler.len(),
                Ok(false) | Err(_) => break,
            }
        }
    }
    let seen = attacker.closed().await;
    assert!(written < FLOOD_BYTES, "the proxy read {written} bytes of one header block");
    assert!(seen.goaway.is_some_and(|code| code != 0), "closed with an error GOAWAY: {seen:?}");
    assert!(seen.responses.is_empty(), "the flooded stream was never served: {seen:?}");
    let (served, up) = scene.end("CONTINUATION flood").await;
    assert_eq!(
        up.total.load(Ordering::SeqCst),
        served,
        "only the normal client's requests reached the upstream"
    );
}

/// A flood of `unit` frames from a client that never reads: the proxy owes it an answer to
/// each (an ACK, a PONG), stops reading once it cannot write them, and so the flood stalls.
async fn flood_without_reading(unit: Vec<u8>, what: &str) {
    let scene = Scene::begin().await;
    let stream = TcpStream::connect(scene.proxy.addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    write.write_all(PREFACE).await.unwrap();
    let burst: Vec<u8> = unit.iter().copied().cycle().take(unit.len() * 4096).collect();
    let mut written = 0usize;
    let mut stalled = false;
    while written < FLOOD_BYTES {
        match tokio::time::timeout(WRITE_STALLED, write.write_all(&burst)).await {
            Ok(Ok(())) => written += burst.len(),
            Ok(Err(_)) => break,
            Err(_) => {
                stalled = true;
                break;
            }
        }
    }
    assert!(stalled, "{what}: the proxy read {written} bytes from a client that reads nothing");
    drop((read, write));
    scene.end(what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_flood_from_a_client_that_reads_nothing_stalls() {
    // SETTINGS_HEADER_TABLE_SIZE = 4096, again and again: each needs an ACK.
    flood_without_reading(frame(SETTINGS, 0, 0, &[0x00, 0x01, 0x00, 0x00, 0x10, 0x00]), "SETTINGS flood")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_from_a_client_that_reads_nothing_stalls() {
    flood_without_reading(frame(PING, 0, 0, &[7; 8]), "PING flood").await;
}

/// A stream that never sends its body ends with 408 after the body idle timeout, and more
/// streams than `max_concurrent_streams` are refused: the upstream never sees more than 100
/// of one connection's requests at once, and the connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_never_send_their_body_and_too_many_streams_are_bounded() {
    let scene = Scene::begin().await;
    let addr = scene.proxy.addr;

    // With the h2 client: one stream, its body promised and never sent.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut h2 = guarded("ready", h2.ready()).await.unwrap();
    let req = Request::post(format!("http://{addr}/")).body(()).unwrap();
    let (resp, body) = h2.send_request(req, false).unwrap();
    let resp = guarded("the answer to a body that never came", resp).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    drop((body, h2));
    let _ = guarded("the h2 client to end", conn).await;

    // Raw: 150 streams that promise a body, on one connection.
    let mut attacker = Attacker::connect(addr).await;
    let block = request_block(true);
    let mut burst = Vec::new();
    for i in 0..150u32 {
        burst.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
    }
    assert!(attacker.send(&burst).await);
    // The 50 beyond the limit are refused at once; the 100 others get their answer (408) once
    // the body idle timeout has passed.
    let refused = |seen: &Seen| seen.resets.iter().filter(|(_, code)| *code == REFUSED_STREAM).count();
    attacker
        .wait_for("every stream answered or refused", |seen| seen.responses.len() + refused(seen) >= 150)
        .await;
    let seen = attacker.closed().await;
    assert_eq!(refused(&seen), 50, "streams beyond the 100th are refused: {:?}", seen.resets);
    assert_eq!(seen.responses.len(), 100, "the others are answered");
    let (_, up) = scene.end("stalled and excess streams").await;
    // The normal client's one request at a time besides the attacker's 100.
    let peak = up.peak.load(Ordering::SeqCst);
    assert!(peak <= 100 + 1, "upstream requests at once: {peak}");
}
