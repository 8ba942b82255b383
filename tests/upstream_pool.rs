//! The upstream connection pool (`proxy::client`): keep-alive connections are reused, a
//! connection the upstream closed while idle never costs a request, a response its client
//! abandoned never puts its connection back, idle connections close after the idle timeout
//! with no request to notice them, a connect that never completes gets 504 at the connect
//! timeout, and a request without `Host` gets the upstream's.
//!
//! The proxies here run one worker, so every request meets the same pool. No timed
//! assertions: waits are bounded polls.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::faults::*;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use session_proxy::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
/// How long a bounded wait may take before the test fails as a hang.
const DEADLINE: Duration = Duration::from_secs(20);

fn one_worker() -> Limits {
    Limits { workers: 1, ..Limits::default() }
}

fn plain_route(upstream: &str) -> String {
    format!("[[route]]\nprefix = \"/\"\nupstream = \"{upstream}\"\nsession = false\n")
}

/// Connections the upstream accepted, and how many of them are still open.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    open: AtomicUsize,
}

/// A raw upstream that answers `per_connection` requests on each connection (without ever
/// saying `Connection: close`), then closes it.
async fn counting_upstream(per_connection: usize, counts: Arc<Counts>) -> RawUpstream {
    RawUpstream::start(move |mut stream: TcpStream| {
        let counts = counts.clone();
        async move {
            counts.accepted.fetch_add(1, Ordering::SeqCst);
            counts.open.fetch_add(1, Ordering::SeqCst);
            for _ in 0..per_connection {
                let mut head = Vec::new();
                if read_head(&mut stream, &mut head).await.is_none() || stream.write_all(OK).await.is_err() {
                    break;
                }
            }
            if per_connection == usize::MAX {
                // Open until the proxy closes it.
                let mut sink = [0u8; 64];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            }
            let _ = stream.shutdown().await;
            counts.open.fetch_sub(1, Ordering::SeqCst);
        }
    })
    .await
}

/// `n` requests one after the other on one client connection; every answer must be `ok`.
async fn sequential_ok(proxy: &TestProxy, n: usize) {
    let client = client();
    for i in 0..n {
        let resp = client.request(Request::get(proxy.url("/")).body(empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok", "request {i}");
    }
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let counts = Arc::new(Counts::default());
    let up = counting_upstream(usize::MAX, counts.clone()).await;
    let proxy = start_proxy_with(config(&plain_route(&up.url())), one_worker()).await;

    sequential_ok(&proxy, 20).await;
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1, "20 requests in turn need one connection");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_without_notice_costs_no_request() {
    let counts = Arc::new(Counts::default());
    let up = counting_upstream(1, counts.clone()).await;
    let proxy = start_proxy_with(config(&plain_route(&up.url())), one_worker()).await;

    sequential_ok(&proxy, 30).await;
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 30);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_response_its_client_abandoned_does_not_go_back_to_the_pool() {
    // `/big` streams far more than any socket buffer holds; anything else is a short answer.
    let up = upstream(|req: Request<Incoming>| async move {
        if req.uri().path() == "/big" {
            Response::new(full(Bytes::from(vec![b'x'; 8 << 20])))
        } else {
            Response::new(full("ok"))
        }
    })
    .await;
    let proxy = start_proxy_with(config(&plain_route(&up.url())), one_worker()).await;

    for _ in 0..3 {
        let client = client();
        let resp = client.request(Request::get(proxy.url("/big")).body(empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        // One frame read, the rest left: the client goes away mid-body.
        assert!(body.frame().await.is_some());
        drop(body);
        drop(client);
        // Had the half-read connection gone back, these would get the rest of `/big`.
        sequential_ok(&proxy, 5).await;
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let counts = Arc::new(Counts::default());
    let up = counting_upstream(usize::MAX, counts.clone()).await;
    let limits = Limits { upstream_pool_idle_timeout: Duration::from_millis(200), ..one_worker() };
    let proxy = start_proxy_with(config(&plain_route(&up.url())), limits).await;

    sequential_ok(&proxy, 3).await;
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
    // No request comes after: the sweeper alone must close it.
    let started = Instant::now();
    while counts.open.load(Ordering::SeqCst) > 0 {
        assert!(started.elapsed() < DEADLINE, "the idle upstream connection was never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And the next request opens a new one.
    sequential_ok(&proxy, 1).await;
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_request_without_host_gets_the_upstreams() {
    // HTTP/1.0 allows a request without `Host`; the upstream speaks HTTP/1.1 and needs one.
    let app = echo_upstream("app").await;
    let proxy = start_proxy_with(config(&plain_route(&app.url())), one_worker()).await;
    let answer = raw(proxy.addr, b"GET /x HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert_eq!(echoed(body, "host"), Some(app.addr.to_string().as_str()), "{body}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_request_in_absolute_form_without_host_keeps_the_host_it_asked_for() {
    // The host the client asked for is in the URI; the upstream gets it as `Host`.
    let app = echo_upstream("app").await;
    let proxy = start_proxy_with(config(&plain_route(&app.url())), one_worker()).await;
    let answer = raw(proxy.addr, b"GET http://app.example.com/x HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert_eq!(echoed(body, "host"), Some("app.example.com"), "{body}");
    assert_eq!(echoed(body, "x-forwarded-host"), Some("app.example.com"), "{body}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_connect_that_times_out_gets_504() {
    // A listener that never accepts, its backlog filled: the kernel drops further SYNs, so a
    // connect neither succeeds nor is refused.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        // Those past the backlog stay pending; that is the point.
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            fillers.push(s);
        }
    }

    let limits = Limits { upstream_connect_timeout: Duration::from_millis(300), ..one_worker() };
    // The upstream timeout is far longer, so only the connect timeout can answer in time.
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream_timeout_ms = 60000\n{}",
        plain_route(&format!("http://{addr}"))
    );
    let proxy = start_proxy_with(config(&toml), limits).await;
    let (status, _, _) = tokio::time::timeout(DEADLINE, get(&proxy.url("/")))
        .await
        .expect("a connect that never completes must end at the connect timeout");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    drop(listener);
    proxy.shutdown().await;
}
