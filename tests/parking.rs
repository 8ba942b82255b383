//! Idle HTTP/1 keep-alive connections are parked: after `PARK_AFTER` (50 ms) without traffic,
//! hyper's buffers are dropped and the connection holds only its socket until the client sends
//! again. These tests check that a parked connection behaves exactly like one that never
//! parked (requests after a park, a head split across a park, pipelining, upgrades, the idle
//! timeout, shutdown), and that parking really happens (the `parked_connections` gauge).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use session_proxy::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Comfortably longer than the proxy's 50 to 100 ms: the connection has parked by then.
const IDLE: Duration = Duration::from_millis(400);
const PARKED: &str = "session_proxy_parked_connections";

fn routes(upstream: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [[route]]\nprefix = \"/\"\nupstream = \"{upstream}\"\nsession = false\n"
    )
}

async fn parked(proxy: &TestProxy) -> f64 {
    metric(proxy, PARKED).await
}

/// One unlabelled metric's value from `/metrics` (0 when absent).
async fn metric(proxy: &TestProxy, name: &str) -> f64 {
    let (_, _, body) = get(&proxy.admin_url("/metrics")).await;
    let metrics: HashMap<&str, f64> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k, v.parse().ok()?))))
        .collect();
    metrics.get(name).copied().unwrap_or(0.0)
}

/// Waits (up to 10 s) until the gauge reads `want`.
async fn wait_parked(proxy: &TestProxy, want: f64) {
    for _ in 0..200 {
        if parked(proxy).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{PARKED} never reached {want} (is {})", parked(proxy).await);
}

/// A raw HTTP/1.1 client connection that reads responses one at a time (pipelining safe).
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Raw { s, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut chunk))
            .await
            .expect("no response within 10 s")
            .unwrap();
        assert!(n > 0, "connection closed early; have {:?}", String::from_utf8_lossy(&self.buf));
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// One response: its head and its `Content-Length` body.
    async fn response(&mut self) -> (String, String) {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
            })
            .expect("a content-length");
        while self.buf.len() < head_end + length {
            self.fill().await;
        }
        let body = String::from_utf8(self.buf[head_end..head_end + length].to_vec()).unwrap();
        self.buf.drain(..head_end + length);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        (head, body)
    }

    /// Sends a GET and returns the path the upstream saw.
    async fn get(&mut self, path: &str) -> String {
        self.send(get_request(path).as_bytes()).await;
        let (_, body) = self.response().await;
        echoed(&body, "path").expect("an echo").to_owned()
    }

    /// Reads until the proxy closes the connection (within 10 s); returns what came first.
    async fn until_closed(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.buf);
        tokio::time::timeout(Duration::from_secs(10), self.s.read_to_end(&mut rest))
            .await
            .expect("the proxy never closed the connection")
            .unwrap();
        rest
    }
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: parking.test\r\n\r\n")
}

#[tokio::test]
async fn a_parked_connection_serves_its_next_requests_as_if_it_never_parked() {
    let app = echo_upstream("app").await;
    let proxy = start_proxy(&routes(&app.url())).await;
    let mut c = Raw::connect(proxy.addr).await;

    assert_eq!(c.get("/first").await, "/first");
    wait_parked(&proxy, 1.0).await;

    // A request on the parked connection.
    assert_eq!(c.get("/after-park").await, "/after-park");
    wait_parked(&proxy, 1.0).await;

    // A head split across a park: a request and the first half of the next arrive together,
    // hyper reads both, serves the first and parks holding the half, which the next segment
    // must get back before the rest.
    let next = get_request("/split");
    let (first_half, second_half) = next.as_bytes().split_at(20);
    c.send(&[get_request("/before-split").as_bytes(), first_half].concat()).await;
    let (_, body) = c.response().await;
    assert_eq!(echoed(&body, "path"), Some("/before-split"));
    tokio::time::sleep(IDLE).await;
    c.send(second_half).await;
    let (_, body) = c.response().await;
    assert_eq!(echoed(&body, "path"), Some("/split"));
    wait_parked(&proxy, 1.0).await;

    // Pipelined requests in one write, a POST with its body among them, after a park.
    let pipelined = format!(
        "{}POST /post HTTP/1.1\r\nHost: parking.test\r\nContent-Length: 5\r\n\r\nhello{}",
        get_request("/one"),
        get_request("/two")
    );
    c.send(pipelined.as_bytes()).await;
    for (path, method) in [("/one", "GET"), ("/post", "POST"), ("/two", "GET")] {
        let (_, body) = c.response().await;
        assert_eq!(echoed(&body, "path"), Some(path));
        assert_eq!(echoed(&body, "method"), Some(method));
    }

    // The client closes a parked connection: the proxy lets it go.
    wait_parked(&proxy, 1.0).await;
    drop(c);
    wait_parked(&proxy, 0.0).await;
}

#[tokio::test]
async fn a_connection_with_a_request_in_flight_never_parks() {
    // Echoes the request body: the response waits for the whole body.
    let app = upstream(|req: http::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let body = req.into_body().collect().await.unwrap().to_bytes();
        http::Response::new(full(body))
    })
    .await;
    let proxy = start_proxy(&routes(&app.url())).await;
    let mut c = Raw::connect(proxy.addr).await;
    c.send(b"POST /slow HTTP/1.1\r\nHost: parking.test\r\nContent-Length: 10\r\n\r\nhello").await;
    tokio::time::sleep(IDLE).await;
    assert_eq!(parked(&proxy).await, 0.0, "parked under a request whose body is still coming");
    c.send(b"world").await;
    let (_, body) = c.response().await;
    assert_eq!(body, "helloworld");
    wait_parked(&proxy, 1.0).await;
}

/// The proxy's idle keep-alive and header read limit in this test.
const LIMIT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn the_idle_keep_alive_limit_runs_across_parks() {
    let app = echo_upstream("app").await;
    let limits = Limits { header_read_timeout: LIMIT, ..Limits::default() };
    let proxy = start_proxy_with(config(&routes(&app.url())), limits).await;

    // An idle keep-alive connection is closed once the limit has passed since its last request.
    let mut c = Raw::connect(proxy.addr).await;
    c.get("/").await;
    let rest = c.until_closed().await;
    assert!(
        rest.is_empty(),
        "nothing is written to an idle connection: {:?}",
        String::from_utf8_lossy(&rest)
    );

    // The limit also covers the wait plus the next head: a client that stays quiet for most of
    // it and then trickles a head is cut when the limit has passed since its last response,
    // although that head is read by a new segment. Without the proxy's own deadline the cut
    // would come a whole limit later (2.0 s against 3.8 s here).
    let mut c = Raw::connect(proxy.addr).await;
    c.get("/").await;
    let answered = std::time::Instant::now();
    tokio::time::sleep(LIMIT * 9 / 10).await;
    trickle_until_cut(c.s, Duration::from_millis(150)).await;
    let after = answered.elapsed();
    assert!(after < LIMIT * 3 / 2, "cut {after:?} after the last response; the limit is {LIMIT:?}");

    // A head trickled right after a response, a byte every 50 ms, keeps the connection from
    // parking: the segment that served the response cuts it at the limit.
    let mut c = Raw::connect(proxy.addr).await;
    c.get("/").await;
    let answered = std::time::Instant::now();
    trickle_until_cut(c.s, Duration::from_millis(50)).await;
    let after = answered.elapsed();
    assert!(after >= LIMIT, "cut {after:?} after the last response, before the limit of {LIMIT:?}");
    assert!(after < LIMIT * 3 / 2, "cut {after:?} after the last response; the limit is {LIMIT:?}");
}

/// Sends a request head a byte at a time, `pause` apart, until the proxy closes the
/// connection; panics if it answers or lets the whole head through.
async fn trickle_until_cut(mut s: TcpStream, pause: Duration) {
    let head = format!("GET / HTTP/1.1\r\nHost: parking.test\r\nX-Pad: {}\r\n\r\n", "a".repeat(80));
    for byte in head.as_bytes() {
        if s.write_all(std::slice::from_ref(byte)).await.is_err() {
            return;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(pause, s.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => panic!("answered a trickled head: {:?}", String::from_utf8_lossy(&buf[..n])),
        }
    }
    panic!("a trickled head was never cut");
}

#[tokio::test]
async fn a_websocket_upgrade_on_a_connection_that_parked() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    // Answers one plain request and closes that connection (so the proxy cannot reuse it for
    // the upgrade), then a WebSocket on a second connection.
    let server = tokio::spawn(async move {
        let (plain, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(full("plain\n")))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .serve_connection(hyper_util::rt::TokioIo::new(plain), service)
            .await;
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() {
                let reply = format!("echo {}", msg.to_text().unwrap());
                ws.send(tokio_tungstenite::tungstenite::Message::text(reply)).await.unwrap();
            }
        }
    });
    let proxy = start_proxy(&routes(&format!("http://{ws_addr}"))).await;

    let mut c = Raw::connect(proxy.addr).await;
    c.send(get_request("/plain").as_bytes()).await;
    let (_, body) = c.response().await;
    assert_eq!(body, "plain\n");
    wait_parked(&proxy, 1.0).await;

    let (mut ws, resp) =
        tokio_tungstenite::client_async(format!("ws://{}/socket", proxy.addr), c.s).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(tokio_tungstenite::tungstenite::Message::text(format!("hi {i}"))).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply.to_text().unwrap(), format!("echo hi {i}"));
    }
    // An upgraded connection is not parked, however quiet.
    tokio::time::sleep(IDLE).await;
    assert_eq!(parked(&proxy).await, 0.0);
    ws.send(tokio_tungstenite::tungstenite::Message::text("still here")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().to_text().unwrap(), "echo still here");
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_closes_parked_connections_at_once() {
    let app = echo_upstream("app").await;
    let mut proxy = start_proxy(&routes(&app.url())).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut c = Raw::connect(proxy.addr).await;
        c.get("/").await;
        idle.push(c);
    }
    wait_parked(&proxy, 3.0).await;
    let stopped = proxy.begin_shutdown();
    // The default grace is 30 s: parked connections must not hold the drain that long.
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("parked connections held the drain")
        .unwrap();
    for mut c in idle {
        let rest = c.until_closed().await;
        assert!(rest.is_empty(), "closed without a byte: {:?}", String::from_utf8_lossy(&rest));
    }
}
