//! Hostile clients, over raw TCP so they can send what no HTTP library would: slowloris
//! headers, stalled bodies, oversized heads and cookies, thousands of cookies, bytes that are
//! not UTF-8 or are control characters, and request smuggling attempts. What reaches the
//! upstream is checked byte for byte with a recording upstream.
//!
//! What the proxy and hyper (the HTTP/1 parser under it) do, as these tests pin it down:
//! - a request head not complete within `header_read_timeout` (the proxy's own limit, see
//!   `server::conn`): the connection is closed without an answer (a 408 first is accepted too);
//! - a head larger than `max_header_bytes`, or with more than 100 header fields, gets `431`
//!   and the connection is closed;
//! - `Transfer-Encoding` together with `Content-Length` (in either order, whatever the length
//!   says), and a `Transfer-Encoding` other than one `chunked` (`gzip, chunked`, `chunked`
//!   twice): `400`, the connection is closed, and nothing is forwarded (the proxy's own rule,
//!   the README; hyper alone would read the first as chunked and forward it);
//! - differing `Content-Length` values, an invalid one, a `Transfer-Encoding` whose last coding
//!   is not `chunked`, `Transfer-Encoding` in HTTP/1.0, a space before the colon, obs-fold
//!   line continuations and control characters (NUL, CR, DEL, ...) in a value: `400`, and
//!   nothing is forwarded;
//! - obs-text (bytes 0x80-0xFF) in a value is legal HTTP and passes through unchanged;
//! - a request body: hyper has no timeout for it, and `upstream_timeout_ms` starts after it.
//!   The proxy's `body_idle_timeout` (60 s) cuts a body that sends nothing with 408; a body
//!   that keeps trickling is bounded by the upstream's own request limits.
//!
//! No timing assertions: bounded waits only guard against hangs.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::faults::*;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use session_proxy::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Header read timeout of the proxies in these tests: short, so slowloris tests are quick.
const HEADER_READ_TIMEOUT: Duration = Duration::from_millis(300);
/// Request head limit of the proxies in these tests.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long a slowloris client waits between two bytes.
const TRICKLE_PAUSE: Duration = Duration::from_millis(50);
/// Bytes a slowloris client sends at most: far more time than the header timeout allows.
const TRICKLE_MAX_BYTES: usize = 400;

/// An upstream that echoes the session it got in `x-seen` (`absent` without one) and, when
/// asked in `x-want-update`, sets the session to that.
async fn session_upstream() -> Upstream {
    upstream(|req: Request<Incoming>| async move {
        let seen = req.headers().get("x-session").cloned();
        let mut text = String::new();
        for (k, v) in req.headers() {
            text.push_str(&format!("{}: {}\n", k, String::from_utf8_lossy(v.as_bytes())));
        }
        let mut resp = Response::builder()
            .header("x-seen", seen.unwrap_or_else(|| http::HeaderValue::from_static("absent")));
        if let Some(want) = req.headers().get("x-want-update") {
            resp = resp.header("x-session-update", want);
        }
        resp.body(full(text)).unwrap()
    })
    .await
}

fn limits() -> Limits {
    Limits {
        header_read_timeout: HEADER_READ_TIMEOUT,
        max_header_bytes: MAX_HEADER_BYTES,
        ..Limits::default()
    }
}

/// A proxy with a session route `/` on `up` and a route `/rec` (session too) on `recorder`.
async fn proxy_for(up: &Upstream, recorder: &RecordingUpstream) -> TestProxy {
    proxy_with(up, recorder, limits()).await
}

async fn proxy_with(up: &Upstream, recorder: &RecordingUpstream, limits: Limits) -> TestProxy {
    let toml = format!(
        "[[route]]\nprefix = \"/\"\nupstream = \"{}\"\n\n[[route]]\nprefix = \"/rec\"\nupstream = \"{}\"\n",
        up.url(),
        recorder.url()
    );
    start_proxy_with(config(&toml), limits).await
}

/// A live session: its `__session=...` pair, holding `{"user":"ada"}`.
async fn live_session(proxy: &TestProxy) -> String {
    let req =
        Request::get(proxy.url("/login")).header("x-want-update", r#"{"user":"ada"}"#).body(empty()).unwrap();
    let (status, headers, _) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    session_cookie_pair(&headers).expect("a cookie for the new session")
}

/// Proves that nothing but one sentinel request reached `recorder` since it held `before`
/// connections: sends the sentinel and waits until it is recorded.
async fn assert_nothing_forwarded(proxy: &TestProxy, recorder: &RecordingUpstream, before: usize) {
    let answer =
        raw_exchange(proxy.addr, b"GET /rec/sentinel HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert_eq!(raw_status(&answer), Some(200));
    let recorded = recorder.recorded(before + 1).await;
    let connections = recorder.connections.lock().unwrap().len();
    assert_eq!(connections, before + 1, "{}", String::from_utf8_lossy(&recorded));
    let last = recorder.connections.lock().unwrap()[before].clone();
    assert!(find(&last, b"GET /rec/sentinel ").is_some(), "{}", String::from_utf8_lossy(&last));
}

fn seen_in(response: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(response).to_ascii_lowercase();
    text.lines().find_map(|l| l.strip_prefix("x-seen: ")).map(|v| v.trim().to_owned())
}

/// Slowloris: clients that send their head a byte at a time are closed once
/// `header_read_timeout` has passed, however steadily they trickle; many of them at once do
/// not keep others from being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_are_cut_by_the_header_read_timeout() {
    count_panics();
    let up = session_upstream().await;
    let recorder = RecordingUpstream::start().await;
    let proxy = proxy_for(&up, &recorder).await;

    let head: Vec<u8> = b"GET /rec HTTP/1.1\r\nHost: x\r\n"
        .iter()
        .copied()
        .chain(std::iter::repeat_n(b'a', TRICKLE_MAX_BYTES))
        .collect();
    let lorises: Vec<_> = (0..50)
        .map(|_| {
            let head = head.clone();
            let addr = proxy.addr;
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let mut answer = Vec::new();
                for byte in &head {
                    if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
                        break;
                    }
                    let mut buf = [0u8; 1024];
                    match tokio::time::timeout(TRICKLE_PAUSE, stream.read(&mut buf)).await {
                        Err(_) => continue,
                        Ok(Ok(0)) | Ok(Err(_)) => return Some(answer),
                        Ok(Ok(n)) => {
                            answer.extend_from_slice(&buf[..n]);
                            answer.extend(read_until_closed(&mut stream).await);
                            return Some(answer);
                        }
                    }
                }
                // Every byte was sent without the server closing: not bounded.
                None
            })
        })
        .collect();

    // Others are served while the lorises trickle.
    for _ in 0..5 {
        let (status, _, _) = guarded("a normal request", get(&proxy.url("/"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    for loris in lorises {
        let answer = loris.await.unwrap().expect("a slowloris head was never cut off");
        // hyper 1 just closes; an answer, if a later hyper sends one, must be a 408.
        assert!(
            answer.is_empty() || raw_status(&answer) == Some(408),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_nothing_forwarded(&proxy, &recorder, 0).await;
    assert_eq!(panics(), 0);
}

/// A client that sends its head and part of its body, then stops: the head was complete, so
/// the header timeout no longer applies and the request is forwarded with its body streaming.
/// The proxy cuts a body that sends nothing for `body_idle_timeout` with 408 and closes the
/// connection; a body that keeps coming, however slowly, is never cut by the proxy (the
/// upstream's own limits bound it, see `upstream_timeout_starts_after_the_request_body`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_cut() {
    count_panics();
    let up = session_upstream().await;
    let recorder = RecordingUpstream::start().await;
    let short_idle = Limits { body_idle_timeout: Duration::from_millis(300), ..limits() };
    let proxy = proxy_with(&up, &recorder, short_idle.clone()).await;
    let cookie = live_session(&proxy).await;

    for (framing, partial) in [
        ("content-length: 100\r\n", &b"only ten b"[..]),
        ("transfer-encoding: chunked\r\n", &b"5\r\nhello\r\n"[..]),
    ] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let head = format!("POST /rec/upload HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\n{framing}\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(partial).await.unwrap();
        // ...and nothing more: the proxy answers and closes.
        let answer = read_until_closed(&mut stream).await;
        assert_eq!(raw_status(&answer), Some(408), "{framing}: {}", String::from_utf8_lossy(&answer));
    }
    // An upstream slow to read is not the client's fault: a big body held up by the upstream
    // for longer than the idle timeout still goes through whole.
    let slow_reader = upstream(|req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let len = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
        Response::new(full(len.to_string()))
    })
    .await;
    let slow_proxy = start_proxy_with(
        config(&format!(
            "[[route]]\nprefix = \"/\"\nupstream = \"{}\"\nsession = false\n",
            slow_reader.url()
        )),
        short_idle,
    )
    .await;
    // A first chunk, a pause (the proxy waits on the client: its idle timer runs), then 16 MiB
    // at once, which the upstream holds up for a second.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
    let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let req = Request::post(slow_proxy.url("/upload")).body(BodyExt::boxed(body)).unwrap();
    let upload = tokio::spawn(async move { guarded("a big upload to a slow reader", send(req)).await });
    tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 16 * 1024 * 1024])))).await.unwrap();
    drop(tx);
    let (status, _, body) = upload.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "16777221"));

    // The upstream saw the requests start and then end without a complete body.
    let forwarded = recorder.recorded(2).await;
    let text = String::from_utf8_lossy(&forwarded);
    assert_eq!(count(&forwarded, b"POST /rec/upload HTTP/1.1\r\n"), 2, "{text}");
    assert_eq!(panics(), 0);
}

/// A client that keeps sending its body a byte at a time is never idle, so the proxy does not
/// cut it, and `upstream_timeout_ms` only starts after the body: what bounds it is the
/// upstream's own limit (every app server has one). When the upstream gives up and answers
/// early, the client gets that answer and the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_is_bounded_by_the_upstream() {
    count_panics();
    let impatient = upstream(|req: Request<Incoming>| async move {
        let read = tokio::time::timeout(Duration::from_millis(300), req.into_body().collect()).await;
        let status = if read.is_ok() { StatusCode::OK } else { StatusCode::REQUEST_TIMEOUT };
        Response::builder().status(status).body(full("upstream gave up")).unwrap()
    })
    .await;
    let proxy = start_proxy_with(
        config(&format!("[[route]]\nprefix = \"/\"\nupstream = \"{}\"\n", impatient.url())),
        Limits { body_idle_timeout: Duration::from_secs(5), ..limits() },
    )
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    for _ in 0..TRICKLE_MAX_BYTES {
        if stream.write_all(b"x").await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(TRICKLE_PAUSE, stream.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                answer.extend(read_until_closed(&mut stream).await);
                break;
            }
        }
    }
    assert_eq!(raw_status(&answer), Some(408), "{}", String::from_utf8_lossy(&answer));
    assert!(String::from_utf8_lossy(&answer).ends_with("upstream gave up"));
    assert_eq!(panics(), 0);
}

/// Oversized heads get 431 and are never forwarded; the limit is `max_header_bytes` (one
/// huge header or many) and at most 100 header fields. A 431 may turn into a plain close
/// when the client is still sending (a reset can overtake the answer), so a closed
/// connection without an answer is accepted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431() {
    count_panics();
    let up = session_upstream().await;
    let recorder = RecordingUpstream::start().await;
    let proxy = proxy_for(&up, &recorder).await;

    let one_huge =
        format!("GET /rec HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(2 * MAX_HEADER_BYTES));
    let many_small: String = (0..40).map(|i| format!("x-h{i}: {}\r\n", "b".repeat(500))).collect();
    let many_small = format!("GET /rec HTTP/1.1\r\nhost: x\r\n{many_small}\r\n");
    let too_many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let too_many = format!("GET /rec HTTP/1.1\r\nhost: x\r\n{too_many}\r\n");
    for (what, request) in
        [("one huge header", one_huge), ("many headers", many_small), ("150 fields", too_many)]
    {
        let answer = raw_exchange(proxy.addr, request.as_bytes()).await;
        assert!(
            raw_status(&answer) == Some(431) || answer.is_empty(),
            "{what}: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
    }
    // Just under the limits is served.
    let fits: String = (0..90).map(|i| format!("x-h{i}: {}\r\n", "c".repeat(100))).collect();
    let answer = raw_exchange(
        proxy.addr,
        format!("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{fits}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), Some(200));
    assert_nothing_forwarded(&proxy, &recorder, 0).await;
    assert_eq!(panics(), 0);
}

/// Cookies: an oversized session cookie (over 4096 bytes) is a new visitor, not an error; a
/// huge unrelated cookie or thousands of cookies in one header do not hide a valid session;
/// only the first cookie with the session's name counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_cookies_are_new_visitors_or_ignored() {
    count_panics();
    let up = session_upstream().await;
    let recorder = RecordingUpstream::start().await;
    // The default head limit (64 KiB), so thousands of cookies fit.
    let proxy = proxy_with(&up, &recorder, Limits::default()).await;
    let cookie = live_session(&proxy).await;
    let value = cookie.strip_prefix("__session=").unwrap();

    let visit = |cookie_header: String| {
        let url = proxy.url("/");
        async move {
            let req = Request::get(url).header("cookie", cookie_header).body(empty()).unwrap();
            let (status, headers, _) = guarded("a request", send(req)).await;
            assert_eq!(status, StatusCode::OK);
            headers["x-seen"].to_str().unwrap().to_owned()
        }
    };
    const SESSION: &str = r#"{"user":"ada"}"#;
    assert_eq!(visit(cookie.clone()).await, SESSION);

    // Oversized: a valid value padded past 4096 bytes, and plain junk.
    let padded = format!("__session={value}{}", "A".repeat(4200));
    assert_eq!(visit(padded).await, "{}");
    assert_eq!(visit(format!("__session={}", "%41".repeat(2000))).await, "{}");
    // A huge unrelated cookie next to ours.
    assert_eq!(visit(format!("big={}; {cookie}", "x".repeat(8000))).await, SESSION);
    // Thousands of cookies, ours last.
    let many: String = (0..3000).map(|i| format!("c{i}=v{i}; ")).collect();
    assert_eq!(visit(format!("{many}{cookie}")).await, SESSION);
    // Only the first `__session` counts: a bad one first hides a good one after it.
    assert_eq!(visit(format!("{many}__session=forged; {cookie}")).await, "{}");
    // Tampered, truncated, empty, quoted, and no `=` at all.
    let tampered = format!("__session=A{}", &value[1..]);
    assert_eq!(visit(tampered).await, "{}");
    assert_eq!(visit(format!("__session={}", &value[..value.len() - 3])).await, "{}");
    assert_eq!(visit("__session=".to_owned()).await, "{}");
    assert_eq!(visit(format!("__session=\"{value}\"")).await, SESSION);
    assert_eq!(visit(format!("__session; {cookie}")).await, SESSION);
    assert_eq!(panics(), 0);
}

/// Header values that are not UTF-8 (obs-text, 0x80-0xFF) are legal and pass through as
/// they are, without hiding the session or breaking request ids; control characters, a space
/// before the colon and obs-fold continuations get 400 and are never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_and_control_characters_in_headers() {
    count_panics();
    let up = session_upstream().await;
    let recorder = RecordingUpstream::start().await;
    let proxy = proxy_for(&up, &recorder).await;
    let cookie = live_session(&proxy).await;

    // obs-text everywhere: in an ordinary header, around the cookie, as a request id, as the
    // Host, and in a forged session header (which is still removed).
    let mut request =
        b"GET / HTTP/1.1\r\nhost: caf\xe9.example\r\nconnection: close\r\nx-latin1: caf\xe9 \xff\xfe\r\n"
            .to_vec();
    request.extend_from_slice(b"cookie: a=\xff\xfe; ");
    request.extend_from_slice(cookie.as_bytes());
    request
        .extend_from_slice(b"; b=\x80\r\nx-request-id: id-\xe9\r\nx_session: {\"user\":\"\xe9ve\"}\r\n\r\n");
    let answer = raw_exchange(proxy.addr, &request).await;
    assert_eq!(raw_status(&answer), Some(200), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(seen_in(&answer).as_deref(), Some(r#"{"user":"ada"}"#), "the session survives obs-text");
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    let id = text.lines().find_map(|l| l.strip_prefix("x-request-id: ")).unwrap().trim().to_owned();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "a non-ASCII id is replaced: {id}");
    assert!(!text.contains("x_session"), "forged header forwarded");

    // What the upstream gets: the obs-text bytes, unchanged.
    let answer = raw_exchange(
        proxy.addr,
        b"GET /rec HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-latin1: caf\xe9 \xff\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), Some(200));
    let forwarded = recorder.recorded(1).await;
    assert!(
        find(&forwarded, b"x-latin1: caf\xe9 \xff\r\n").is_some(),
        "{}",
        String::from_utf8_lossy(&forwarded)
    );

    let rejected: [(&str, &[u8]); 8] = [
        ("NUL", b"GET /rec HTTP/1.1\r\nhost: x\r\nx-a: a\0b\r\n\r\n"),
        ("SOH", b"GET /rec HTTP/1.1\r\nhost: x\r\nx-a: a\x01b\r\n\r\n"),
        ("DEL", b"GET /rec HTTP/1.1\r\nhost: x\r\nx-a: a\x7fb\r\n\r\n"),
        ("bare CR", b"GET /rec HTTP/1.1\r\nhost: x\r\nx-a: a\rb\r\n\r\n"),
        ("ESC in a cookie", b"GET /rec HTTP/1.1\r\nhost: x\r\ncookie: __session=\x1b[31m\r\n\r\n"),
        ("space before colon", b"GET /rec HTTP/1.1\r\nhost: x\r\nx-a : b\r\n\r\n"),
        ("obs-fold", b"GET /rec HTTP/1.1\r\nhost: x\r\nx-a: b\r\n c\r\n\r\n"),
        ("non-token name", b"GET /rec HTTP/1.1\r\nhost: x\r\nx\xe9: b\r\n\r\n"),
    ];
    let before = recorder.connections.lock().unwrap().len();
    for (what, request) in rejected {
        let answer = raw_exchange(proxy.addr, request).await;
        assert_eq!(raw_status(&answer), Some(400), "{what}: {}", String::from_utf8_lossy(&answer));
    }
    assert_nothing_forwarded(&proxy, &recorder, before).await;
    assert_eq!(panics(), 0);
}

/// Request smuggling: both `Content-Length` and `Transfer-Encoding`, in either order, get 400
/// and the connection closes after that one answer, so neither the request nor what follows
/// its body reaches the upstream; so do transfer codings other than one `chunked`, and
/// conflicting or invalid lengths (hyper's own 400). A request before the bad one on the same
/// connection, even one that parked in between, is served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_is_never_forwarded_ambiguously() {
    count_panics();
    let up = session_upstream().await;
    let recorder = RecordingUpstream::start().await;
    // The default idle limit (10 s), so a connection can park between two requests.
    let proxy =
        proxy_with(&up, &recorder, Limits { max_header_bytes: MAX_HEADER_BYTES, ..Limits::default() }).await;
    let smuggled = b"GET /rec/smuggled HTTP/1.1\r\nhost: x\r\n\r\n";

    // CL.TE and TE.CL: a front end reading the other header would see the smuggled request in
    // the body (or the body in the next request).
    let refused: [(&str, &str); 7] = [
        ("CL.TE", "content-length: 50\r\ntransfer-encoding: chunked\r\n"),
        ("TE.CL", "transfer-encoding: chunked\r\ncontent-length: 50\r\n"),
        ("a zero length", "content-length: 0\r\ntransfer-encoding: chunked\r\n"),
        ("an invalid length after TE", "Transfer-Encoding: chunked\r\nContent-Length: abc\r\n"),
        ("a coding before chunked", "transfer-encoding: gzip, chunked\r\n"),
        ("chunked twice", "transfer-encoding: chunked, chunked\r\n"),
        ("two TE headers", "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n"),
    ];
    for (what, headers) in refused {
        let mut request =
            format!("POST /rec/a HTTP/1.1\r\nhost: x\r\n{headers}\r\n5\r\nhello\r\n0\r\n\r\n").into_bytes();
        request.extend_from_slice(smuggled);
        let answer = raw_exchange(proxy.addr, &request).await;
        assert_eq!(raw_status(&answer), Some(400), "{what}: {}", String::from_utf8_lossy(&answer));
        assert_eq!(count(&answer, b"HTTP/1.1 "), 1, "one answer, then the connection closes: {what}");
        let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(text.contains("\r\nconnection: close\r\n"), "{what}: {text}");
    }
    assert_nothing_forwarded(&proxy, &recorder, 0).await;

    // The refusal is the bad request's own: one before it on the connection is served, also
    // when the connection parked in between (it parks after 50 to 100 ms idle; the scanner
    // goes with it).
    for pause in [None, Some(Duration::from_millis(400))] {
        recorder.clear();
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"POST /rec/first HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .unwrap();
        if let Some(pause) = pause {
            let mut first = [0u8; 12];
            stream.read_exact(&mut first).await.unwrap();
            assert_eq!(&first, b"HTTP/1.1 200");
            tokio::time::sleep(pause).await;
        }
        stream
            .write_all(b"POST /rec/second HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until_closed(&mut stream).await;
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(count(&answer, b" 400 Bad Request\r\n"), 1, "{pause:?}: {text}");
        let forwarded = recorder.recorded(1).await;
        let forwarded = String::from_utf8_lossy(&forwarded);
        assert!(forwarded.starts_with("POST /rec/first "), "{forwarded}");
        assert!(!forwarded.contains("/rec/second"), "{pause:?}: {forwarded}");
    }

    let rejected: [(&str, &str); 9] = [
        ("differing lengths", "content-length: 5\r\ncontent-length: 6\r\n"),
        ("a length list", "content-length: 5, 6\r\n"),
        ("a signed length", "content-length: +5\r\n"),
        ("a hex length", "content-length: 0x5\r\n"),
        ("a negative length", "content-length: -5\r\n"),
        ("identity last", "transfer-encoding: chunked, identity\r\n"),
        ("unknown coding", "transfer-encoding: xchunked\r\n"),
        ("chunked then identity", "transfer-encoding: chunked\r\ntransfer-encoding: identity\r\n"),
        ("space before colon", "transfer-encoding : chunked\r\ncontent-length: 5\r\n"),
    ];
    recorder.clear();
    for (what, headers) in rejected {
        let mut request = format!("POST /rec/a HTTP/1.1\r\nhost: x\r\n{headers}\r\nhello").into_bytes();
        request.extend_from_slice(smuggled);
        let answer = raw_exchange(proxy.addr, &request).await;
        assert_eq!(raw_status(&answer), Some(400), "{what}: {}", String::from_utf8_lossy(&answer));
    }
    // Transfer-Encoding is not HTTP/1.0.
    let answer = raw_exchange(
        proxy.addr,
        b"POST /rec/a HTTP/1.0\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), Some(400), "{}", String::from_utf8_lossy(&answer));
    // Equal duplicates are one length, and the body is framed by it; a lone chunked passes.
    let answer = raw_exchange(
        proxy.addr,
        b"POST /rec/a HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(raw_status(&answer), Some(200));
    let forwarded = recorder.recorded(1).await;
    let text = String::from_utf8_lossy(&forwarded).to_ascii_lowercase();
    assert_eq!(count(&forwarded, b" HTTP/1.1\r\n"), 1, "nothing rejected was forwarded: {text}");
    assert_eq!(text.matches("content-length: 5\r\n").count(), 1, "{text}");
    assert!(text.ends_with("\r\n\r\nhello"), "{text}");
    assert!(!text.contains("smuggled"));
    recorder.clear();
    let answer = raw_exchange(
        proxy.addr,
        b"POST /rec/a HTTP/1.1\r\nhost: x\r\nconnection: close\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), Some(200));
    let forwarded = String::from_utf8_lossy(&recorder.recorded(1).await).to_ascii_lowercase();
    assert!(
        forwarded.contains("transfer-encoding: chunked\r\n") && forwarded.contains("hello"),
        "{forwarded}"
    );
    assert_eq!(panics(), 0);
}

/// `Connection` lists hop-by-hop headers to remove; a client naming the proxy's own or framing
/// headers there must not change what the upstream gets: the session header is still sent, and
/// the body is still framed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_header_cannot_strip_the_session_or_the_framing() {
    count_panics();
    let up = session_upstream().await;
    let recorder = RecordingUpstream::start().await;
    let proxy = proxy_for(&up, &recorder).await;
    let cookie = live_session(&proxy).await;

    let request = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nconnection: close, x-session, x-request-id, x-forwarded-for\r\ncookie: {cookie}\r\n\r\n"
    );
    let answer = raw_exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(raw_status(&answer), Some(200));
    assert_eq!(seen_in(&answer).as_deref(), Some(r#"{"user":"ada"}"#), "x-session must reach the upstream");
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(text.contains("\nx-request-id: "), "{text}");
    assert!(text.contains("\nx-forwarded-for: "), "{text}");

    let request = "POST /rec/a HTTP/1.1\r\nhost: x\r\nconnection: close, content-length, transfer-encoding\r\ncontent-length: 5\r\n\r\nhello";
    let answer = raw_exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(raw_status(&answer), Some(200));
    let forwarded = recorder.recorded(1).await;
    let text = String::from_utf8_lossy(&forwarded).to_ascii_lowercase();
    assert!(
        text.contains("content-length: 5\r\n") || text.contains("transfer-encoding: chunked\r\n"),
        "{text}"
    );
    assert!(text.contains("hello"), "{text}");
    assert_eq!(panics(), 0);
}
