//! Helpers for the reliability tests (`store_faults`, `upstream_faults`, `hostile`, `soak`):
//! hang guards, a process-wide panic counter, session cookies decoded the way a test needs
//! them, raw TCP upstreams and clients. Used as `common::faults`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use base64::Engine as _;
use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Anything a test awaits (a request, a body, a recovery) taking longer than this is a hang
/// and fails the test. Never a timing assertion: normal runs finish far sooner.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// The session cookie's name in these tests (the default).
pub const COOKIE_NAME: &str = "__session";

/// Awaits `future`, failing the test if it does not end within [`HANG_GUARD`].
pub async fn guarded<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG_GUARD, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {HANG_GUARD:?}: a hang"),
    }
}

static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

/// Counts every panic outside the test code (`tests/`) in this process from now on; the
/// default hook still prints it. A panic inside a task the proxy spawned (a connection, a
/// request) does not fail a test by itself: tokio catches it and the client merely sees a
/// reset. Counting them does. Failed assertions of other tests in the same binary (which run
/// in parallel) are in `tests/` and not counted.
pub fn count_panics() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info.location().is_some_and(|l| l.file().starts_with("tests/"));
            if !in_tests {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// Panics outside the test code seen since [`count_panics`] was first called.
pub fn panics() -> usize {
    PANICS.load(Ordering::SeqCst)
}

/// The `name=value` pair of our session cookie in a response's `Set-Cookie` headers.
pub fn session_cookie_pair(headers: &HeaderMap) -> Option<String> {
    headers.get_all(http::header::SET_COOKIE).iter().find_map(|v| {
        let pair = v.to_str().ok()?.split(';').next()?.trim();
        pair.strip_prefix(COOKIE_NAME)?.strip_prefix('=')?;
        Some(pair.to_owned())
    })
}

/// The session id inside a `__session=VALUE` pair: VALUE is percent-encoded
/// `base64(JSON string id) + "." + signature` (the README, cookie format).
pub fn session_id(pair: &str) -> Option<String> {
    let value = pair.strip_prefix(COOKIE_NAME)?.strip_prefix('=')?;
    let value = percent_encoding::percent_decode_str(value).decode_utf8().ok()?;
    let (payload, _signature) = value.rsplit_once('.')?;
    let json = base64::engine::general_purpose::STANDARD.decode(payload).ok()?;
    serde_json::from_slice::<String>(&json).ok()
}

/// An upstream speaking raw TCP: every accepted connection is handed to `behave`, which can
/// write anything (garbage, half a response) or nothing. Stops when dropped.
pub struct RawUpstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start<F, Fut>(behave: F) -> RawUpstream
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let behave = Arc::new(behave);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(behave(stream));
            }
        });
        RawUpstream { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 request head (through the blank line) from `stream` into `buf`;
/// returns the head's length, or `None` at EOF or after [`HANG_GUARD`].
pub async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let read = async {
        loop {
            if let Some(end) = find(buf, b"\r\n\r\n") {
                return Some(end + 4);
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(HANG_GUARD, read).await.ok().flatten()
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// How many times `needle` occurs in `haystack` (overlaps not counted twice).
pub fn count(haystack: &[u8], needle: &[u8]) -> usize {
    let mut n = 0;
    let mut rest = haystack;
    while let Some(at) = find(rest, needle) {
        n += 1;
        rest = &rest[at + needle.len()..];
    }
    n
}

/// An upstream that records the raw bytes of every connection it gets. For each request it
/// reads the head and a body framed by `Content-Length` or `chunked` (as sent by the proxy),
/// answers `200 ok` with `Connection: close`, then keeps reading until the proxy closes, so
/// anything the proxy sent beyond the first request is recorded too.
pub struct RecordingUpstream {
    pub upstream: RawUpstream,
    pub connections: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RecordingUpstream {
    pub async fn start() -> RecordingUpstream {
        let connections: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let record = connections.clone();
        let upstream = RawUpstream::start(move |mut stream| {
            let record = record.clone();
            async move {
                let mut buf = Vec::new();
                if let Some(head_len) = read_head(&mut stream, &mut buf).await {
                    let head = String::from_utf8_lossy(&buf[..head_len]).to_ascii_lowercase();
                    let body_done = |buf: &[u8]| -> bool {
                        let body = &buf[head_len..];
                        if head.contains("transfer-encoding: chunked") {
                            body.ends_with(b"0\r\n\r\n")
                        } else if let Some(len) = content_length(&head) {
                            body.len() >= len
                        } else {
                            true
                        }
                    };
                    let mut chunk = [0u8; 4096];
                    while !body_done(&buf) {
                        match tokio::time::timeout(HANG_GUARD, stream.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => break,
                        }
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                        .await;
                    // Whatever else arrives on this connection is recorded as well.
                    loop {
                        match tokio::time::timeout(HANG_GUARD, stream.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => break,
                        }
                    }
                }
                record.lock().unwrap().push(buf);
            }
        })
        .await;
        RecordingUpstream { upstream, connections }
    }

    pub fn url(&self) -> String {
        self.upstream.url()
    }

    /// Everything recorded so far, all connections concatenated.
    pub fn bytes(&self) -> Vec<u8> {
        self.connections.lock().unwrap().concat()
    }

    /// Waits until `n` connections are recorded (a connection is recorded once the proxy has
    /// closed it), then returns everything recorded, concatenated.
    pub async fn recorded(&self, n: usize) -> Vec<u8> {
        let deadline = std::time::Instant::now() + HANG_GUARD;
        while self.connections.lock().unwrap().len() < n {
            assert!(std::time::Instant::now() < deadline, "the upstream never got {n} connections");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.bytes()
    }

    pub fn clear(&self) {
        self.connections.lock().unwrap().clear();
    }
}

fn content_length(lower_head: &str) -> Option<usize> {
    lower_head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok())
}

/// Writes `request` on a fresh connection to `addr` and reads until the server closes the
/// connection (or resets it); fails the test if it stays open for [`HANG_GUARD`].
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything (a rejected head): a failed
    // write is then expected, and the answer is still read below.
    let _ = stream.write_all(request).await;
    read_until_closed(&mut stream).await
}

/// Reads until EOF or a reset; fails the test after [`HANG_GUARD`].
pub async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    };
    guarded("reading until the server closes", read).await;
    out
}

/// The status code of a raw HTTP/1.1 response (`None` when there is no status line).
pub fn raw_status(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.parse().ok()
}

/// A TCP relay in front of a server (Redis) that can cut every connection at once and refuse
/// new ones until healed: a network outage, while the server behind it keeps its data (unlike
/// a killed redis-server, which restarts empty).
pub struct CutRelay {
    pub addr: SocketAddr,
    /// Bumped on every cut: relays of an older generation close their connection.
    generation: tokio::sync::watch::Sender<u64>,
    down: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl CutRelay {
    pub async fn start(target: SocketAddr) -> CutRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (generation, down) = (generation.clone(), down.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if down.load(Ordering::SeqCst) {
                        continue; // dropped at once: the client sees the connection close
                    }
                    let Ok(server) = TcpStream::connect(target).await else {
                        continue;
                    };
                    let mut cut = generation.subscribe();
                    tokio::spawn(async move {
                        let (mut client, mut server) = (client, server);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            })
        };
        CutRelay { addr, generation, down, task }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Closes every relayed connection and refuses new ones until [`CutRelay::heal`].
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn heal(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for CutRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
