//! Upstream faults: an upstream that refuses, hangs, speaks garbage, cuts its body short or is
//! merely slow gets 502, 504, a cleanly cut response or the answer, and the proxy keeps
//! serving every other client meanwhile (the README, "Errors").
//!
//! Faulty upstreams are raw TCP servers, so they can send what no HTTP library would. No
//! timing assertions: bounded waits only guard against hangs.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::faults::*;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `upstream_timeout_ms` of the proxy that meets the hanging upstream: short, so the test is.
const SHORT_UPSTREAM_TIMEOUT_MS: u64 = 300;
/// How long the slow upstream takes: well inside the default 30 s upstream timeout.
const SLOW_ANSWER: Duration = Duration::from_millis(500);
/// Requests the background client sends at most while the faults are exercised.
const BACKGROUND_MAX_REQUESTS: usize = 100_000;

/// An upstream that reads the request head, then writes `answer` and closes.
async fn answers_with(answer: &'static [u8]) -> RawUpstream {
    RawUpstream::start(move |mut stream: TcpStream| async move {
        let mut buf = Vec::new();
        if read_head(&mut stream, &mut buf).await.is_some() {
            let _ = stream.write_all(answer).await;
            let _ = stream.shutdown().await;
        }
    })
    .await
}

/// An upstream that reads the request head, writes `answer`, then holds the connection open
/// without another byte until the proxy closes it.
async fn answers_then_hangs(answer: &'static [u8]) -> RawUpstream {
    RawUpstream::start(move |mut stream: TcpStream| async move {
        let mut buf = Vec::new();
        if read_head(&mut stream, &mut buf).await.is_some() {
            let _ = stream.write_all(answer).await;
            let mut sink = [0u8; 1024];
            while let Ok(Ok(n)) = tokio::time::timeout(HANG_GUARD, stream.read(&mut sink)).await {
                if n == 0 {
                    break;
                }
            }
        }
    })
    .await
}

/// Requests the healthy route in a loop until told to stop; every answer must be 200.
struct Background {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Background {
    fn start(url: String) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let task = {
            let (stop, ok) = (stop.clone(), ok.clone());
            tokio::spawn(async move {
                let http = client();
                let mut failures = Vec::new();
                for _ in 0..BACKGROUND_MAX_REQUESTS {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let req = Request::get(&url).body(empty()).unwrap();
                    match guarded("a background request", http.request(req)).await {
                        Ok(resp) if resp.status() == StatusCode::OK => {
                            match guarded("a background body", resp.into_body().collect()).await {
                                Ok(body) => {
                                    let body = body.to_bytes();
                                    if body == "healthy" {
                                        ok.fetch_add(1, Ordering::SeqCst);
                                    } else {
                                        failures.push(format!("body: {body:?}"));
                                    }
                                }
                                Err(e) => failures.push(format!("body: {e}")),
                            }
                        }
                        other => failures.push(format!("{other:?}")),
                    }
                }
                failures
            })
        };
        Background { stop, ok, task }
    }

    /// Stops the loop; asserts that it was served throughout, with at least one request after
    /// `since` successes (so the faults happened while it ran).
    async fn finish(self, since: usize) {
        let deadline = std::time::Instant::now() + HANG_GUARD;
        while self.ok.load(Ordering::SeqCst) <= since {
            assert!(std::time::Instant::now() < deadline, "the background client stopped being served");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.store(true, Ordering::SeqCst);
        let failures = guarded("the background client", self.task).await.unwrap();
        assert!(failures.is_empty(), "other clients were not served: {failures:#?}");
    }
}

async fn healthy() -> Upstream {
    upstream(|_req| async { Response::new(full("healthy")) }).await
}

fn route(prefix: &str, upstream: &str, session: bool) -> String {
    format!("[[route]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nsession = {session}\n")
}

/// Refused, hung, garbage and 101-without-asking upstreams: 502 or 504, on routes with and
/// without sessions, while another client keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_upstreams_get_502_or_504_and_others_are_served() {
    count_panics();
    let ok = healthy().await;
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let hangs = answers_then_hangs(b"").await;
    let headers_then_hangs = answers_then_hangs(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc").await;
    let closes = answers_with(b"").await;
    let malformed: Vec<(&str, &'static [u8])> = vec![
        ("not-http", b"garbage garbage\r\n\r\n"),
        ("no-colon", b"HTTP/1.1 200 OK\r\nthis header has no colon\r\ncontent-length: 0\r\n\r\n"),
        ("bad-name", b"HTTP/1.1 200 OK\r\nbad name: x\r\ncontent-length: 0\r\n\r\n"),
        ("nul-value", b"HTTP/1.1 200 OK\r\nx-a: a\0b\r\ncontent-length: 0\r\n\r\n"),
        ("bad-status", b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n"),
        ("bad-length", b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n"),
        ("two-lengths", b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd"),
        ("unasked-101", b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n"),
        ("bad-update", b"HTTP/1.1 200 OK\r\nx-session-update: [1]\r\ncontent-length: 0\r\n\r\n"),
    ];
    let mut raw_upstreams = Vec::new();
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream_timeout_ms = {SHORT_UPSTREAM_TIMEOUT_MS}\n{}{}{}{}{}",
        route("/ok", &ok.url(), false),
        route("/refused", &refused, true),
        route("/hangs", &hangs.url(), true),
        route("/closes", &closes.url(), true),
        route("/late-body", &headers_then_hangs.url(), false),
    );
    for (name, answer) in &malformed {
        let up = answers_with(answer).await;
        toml.push_str(&route(&format!("/{name}"), &up.url(), true));
        raw_upstreams.push(up);
    }
    let proxy = start_proxy(&toml).await;
    let background = Background::start(proxy.url("/ok"));

    let (status, headers, _) = guarded("refused", get(&proxy.url("/refused"))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "refused");
    assert!(headers.contains_key("x-request-id"));
    let (status, _, _) = guarded("hangs", get(&proxy.url("/hangs"))).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "hangs before answering");
    let (status, _, _) = guarded("closes", get(&proxy.url("/closes"))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "closes without answering");
    for (name, _) in &malformed {
        let (status, headers, body) = guarded(name, get(&proxy.url(&format!("/{name}")))).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{name}: {body}");
        assert!(!headers.contains_key("x-session-update"), "{name}");
        assert!(!headers.contains_key("set-cookie"), "{name}");
    }

    // Headers in time, then the body stalls: `upstream_timeout_ms` only covers the wait for
    // the headers (the README), so the response starts and its body waits for the upstream, as
    // a long poll or an event stream would. The client can give up; others are not affected.
    let resp =
        guarded("late body", client().request(Request::get(proxy.url("/late-body")).body(empty()).unwrap()))
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = guarded("first bytes", body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "abc");
    let more = tokio::time::timeout(Duration::from_millis(200), body.frame()).await;
    assert!(more.is_err(), "the stalled body produced {more:?}");
    drop(body);

    // Still the same answers after all that.
    let (status, _, _) = guarded("refused again", get(&proxy.url("/refused"))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "refused, afterwards");
    background.finish(0).await;
    assert_eq!(panics(), 0);
    guarded("proxy shutdown", proxy.shutdown()).await;
}

/// An upstream that closes in the middle of its body: the client gets a response that is
/// visibly cut (short of its `Content-Length`, or without the last chunk) and a closed
/// connection; never a hang, never a complete-looking response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_mid_body_gives_a_cut_response() {
    count_panics();
    let ok = healthy().await;
    let cut_length =
        answers_with(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly a part of the body").await;
    let cut_chunked =
        answers_with(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n").await;
    let cut_session = answers_with(
        b"HTTP/1.1 200 OK\r\nx-session-update: {\"a\":1}\r\ncontent-length: 1000\r\n\r\npartial",
    )
    .await;
    // Valid headers, then a chunk size that is not hex: the body fails at its first chunk.
    let bad_chunk =
        answers_with(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n").await;
    let proxy = start_proxy(&format!(
        "{}{}{}{}{}",
        route("/ok", &ok.url(), false),
        route("/cut-length", &cut_length.url(), false),
        route("/cut-chunked", &cut_chunked.url(), false),
        route("/cut-session", &cut_session.url(), true),
        route("/bad-chunk", &bad_chunk.url(), false),
    ))
    .await;
    let background = Background::start(proxy.url("/ok"));

    // Raw bytes show exactly what the client gets.
    let raw = raw_exchange(proxy.addr, b"GET /cut-length HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert_eq!(raw_status(&raw), Some(200), "{text}");
    assert!(text.contains("content-length: 1000"), "{text}");
    let body_len = raw.len() - find(&raw, b"\r\n\r\n").unwrap() - 4;
    assert!(body_len < 1000, "a cut body must be short of its length: {body_len}");

    let raw = raw_exchange(proxy.addr, b"GET /cut-chunked HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert_eq!(raw_status(&raw), Some(200), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(!text.ends_with("0\r\n\r\n"), "a cut chunked body must not end with the last chunk: {text:?}");

    // An HTTP client sees an error while reading the body.
    for path in ["/cut-length", "/cut-chunked", "/cut-session"] {
        let resp = guarded(path, client().request(Request::get(proxy.url(path)).body(empty()).unwrap()))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let body = guarded(path, resp.into_body().collect()).await;
        assert!(body.is_err(), "{path}: the cut body must end in an error, got {body:?}");
    }
    // The body failed before anything of it was sent: the connection closes, possibly before
    // the status line (hyper flushes the head with the first body bytes), never a 200 that
    // looks complete.
    let req = Request::get(proxy.url("/bad-chunk")).body(empty()).unwrap();
    match guarded("bad chunk", client().request(req)).await {
        Err(_) => {}
        Ok(resp) => {
            let body = guarded("bad chunk body", resp.into_body().collect()).await;
            assert!(body.is_err(), "a failed body must end in an error, got {body:?}");
        }
    }

    background.finish(0).await;
    assert_eq!(panics(), 0);
}

/// A slow upstream inside its timeout is simply answered; other clients are served while it
/// takes its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_within_its_timeout_is_answered() {
    count_panics();
    let ok = healthy().await;
    let slow = upstream(|_req| async {
        tokio::time::sleep(SLOW_ANSWER).await;
        Response::builder().header("x-session-update", r#"{"slow":true}"#).body(full("finally")).unwrap()
    })
    .await;
    let proxy =
        start_proxy(&format!("{}{}", route("/ok", &ok.url(), false), route("/slow", &slow.url(), true)))
            .await;
    let background = Background::start(proxy.url("/ok"));
    let before = background.ok.load(Ordering::SeqCst);
    let slow_requests: Vec<_> = (0..4)
        .map(|_| {
            let url = proxy.url("/slow");
            tokio::spawn(async move { guarded("a slow request", get(&url)).await })
        })
        .collect();
    for request in slow_requests {
        let (status, headers, body) = request.await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "finally"));
        assert!(session_cookie_pair(&headers).is_some(), "the slow answer's update was saved");
    }
    background.finish(before).await;
    assert_eq!(panics(), 0);
}

/// An upstream that accepts a request and then neither reads its body nor answers: the
/// upload fills the socket buffers and stops, so neither the client-side body timeout (the
/// client is not the one waiting) nor the wait for response headers (the body never ends)
/// would bound it. The proxy answers 504 once the upstream has taken nothing for
/// `upstream_timeout_ms`, and the client is not left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_the_body_gets_504() {
    let stuck = RawUpstream::start(|stream: TcpStream| async move {
        // Hold the connection open without reading a byte.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(stream);
    })
    .await;
    let proxy = start_proxy_with(
        config(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nupstream_timeout_ms = {SHORT_UPSTREAM_TIMEOUT_MS}\n\
             [[route]]\nprefix = \"/\"\nupstream = \"http://{}\"\nsession = false\n",
            stuck.addr
        )),
        session_proxy::Limits::default(),
    )
    .await;
    // Far more than loopback socket buffers hold, sent as fast as the proxy takes it.
    let body = vec![b'x'; 64 << 20];
    let request = Request::post(proxy.url("/upload")).body(full(body)).unwrap();
    let response = guarded("the upload to a stuck upstream", client().request(request)).await;
    match response {
        Ok(resp) => assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT),
        // The proxy may answer while the client is still writing and close the connection,
        // which a client can see as an error instead of the 504: not a hang either way.
        Err(e) => eprintln!("client saw the connection end before reading the 504: {e}"),
    }
}

/// An upstream that floods its response head, with too many header fields, one huge header,
/// or header lines without end: 502, the upstream connection is closed once the limit is
/// passed (hyper's buffer never grows past it), nothing panics, and others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_floods_its_response_head_gets_502() {
    count_panics();
    let ok = healthy().await;
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many: &'static [u8] =
        format!("HTTP/1.1 200 OK\r\n{many}content-length: 0\r\n\r\n").into_bytes().leak();
    let huge: &'static [u8] =
        format!("HTTP/1.1 200 OK\r\nx-huge: {}\r\ncontent-length: 0\r\n\r\n", "a".repeat(600 * 1024))
            .into_bytes()
            .leak();
    let many = answers_with(many).await;
    let huge = answers_with(huge).await;
    // Header lines until the proxy hangs up; how much it took is reported.
    let (sent_tx, mut sent) = tokio::sync::mpsc::unbounded_channel();
    let endless = RawUpstream::start(move |mut stream: TcpStream| {
        let sent_tx = sent_tx.clone();
        async move {
            let mut buf = Vec::new();
            if read_head(&mut stream, &mut buf).await.is_none() {
                return;
            }
            let line = format!("x-more: {}\r\n", "b".repeat(1000));
            let mut written = stream.write_all(b"HTTP/1.1 200 OK\r\n").await.map(|()| 0usize);
            while let Ok(n) = written {
                if n > 64 << 20 {
                    break;
                }
                written = stream.write_all(line.as_bytes()).await.map(|()| n + line.len());
            }
            let _ = sent_tx.send(written.is_err());
        }
    })
    .await;
    let proxy = start_proxy(&format!(
        "{}{}{}{}",
        route("/ok", &ok.url(), false),
        route("/many", &many.url(), true),
        route("/huge", &huge.url(), false),
        route("/endless", &endless.url(), false),
    ))
    .await;
    let background = Background::start(proxy.url("/ok"));
    for path in ["/many", "/huge", "/endless"] {
        let (status, _, body) = guarded(path, get(&proxy.url(path))).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{path}: {body}");
    }
    let cut = guarded("the endless head's connection", sent.recv()).await.unwrap();
    assert!(cut, "the proxy read 64 MiB of one response head");
    background.finish(0).await;
    assert_eq!(panics(), 0);
}
