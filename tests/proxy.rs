//! The HTTP half: routing, streaming, hop-by-hop headers, forwarding headers, request ids,
//! upgrades, the upstream timeout and graceful shutdown. Failing upstreams are in
//! `upstream_faults.rs`, slow or hostile clients in `hostile.rs` and `parking.rs`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

fn routes(a: &Upstream, b: &Upstream) -> String {
    format!(
        r#"
[[route]]
prefix = "/"
upstream = "{a}"
session = false

[[route]]
prefix = "/api"
upstream = "{b}"
session = false

[[route]]
prefix = "/static/"
upstream = "{b}"
session = false
strip_prefix = true

[[route]]
prefix = "/"
host = "admin.example.com"
upstream = "{b}"
session = false
"#,
        a = a.url(),
        b = b.url()
    )
}

#[tokio::test]
async fn routes_by_longest_prefix_and_host_and_404s_unmatched() {
    let a = echo_upstream("a").await;
    let b = echo_upstream("b").await;
    let proxy = start_proxy(&routes(&a, &b)).await;

    let (s, _, body) = get(&proxy.url("/api/users?x=1")).await;
    assert_eq!(s, 200);
    assert_eq!(echoed(&body, "upstream"), Some("b"));
    assert_eq!(echoed(&body, "path"), Some("/api/users?x=1"));

    let (_, _, body) = get(&proxy.url("/apiary")).await;
    assert_eq!(echoed(&body, "upstream"), Some("a"), "segment boundary");

    let (_, _, body) = get(&proxy.url("/static/app.css")).await;
    assert_eq!(echoed(&body, "upstream"), Some("b"));
    assert_eq!(echoed(&body, "path"), Some("/app.css"), "strip_prefix");

    let (_, _, body) = get(&proxy.url("/static")).await;
    assert_eq!(echoed(&body, "upstream"), Some("a"), "/static/ matches only below it");

    let req =
        Request::get(proxy.url("/anything")).header("host", "ADMIN.example.com:8080").body(empty()).unwrap();
    let (_, _, body) = send(req).await;
    assert_eq!(echoed(&body, "upstream"), Some("b"), "host route preferred");
    assert_eq!(echoed(&body, "host"), Some("ADMIN.example.com:8080"), "Host kept");

    let only_api = start_proxy(&format!("[[route]]\nprefix = \"/api\"\nupstream = \"{}\"\n", b.url())).await;
    let (s, headers, _) = get(&only_api.url("/other")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn forwarded_headers_and_request_ids() {
    let a = echo_upstream("a").await;
    let proxy =
        start_proxy(&format!("[[route]]\nprefix = \"/\"\nupstream = \"{}\"\nsession = false\n", a.url()))
            .await;

    let req = Request::get(proxy.url("/x"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("host", "app.example.com")
        .body(empty())
        .unwrap();
    let (_, headers, body) = send(req).await;
    assert_eq!(echoed(&body, "x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(echoed(&body, "x-forwarded-proto"), Some("http"));
    assert_eq!(echoed(&body, "x-forwarded-host"), Some("app.example.com"));
    let generated = headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 32);
    assert_eq!(echoed(&body, "x-request-id"), Some(generated.as_str()), "same id upstream and to the client");

    let req = Request::get(proxy.url("/x")).header("x-request-id", "trace-abc-1").body(empty()).unwrap();
    let (_, headers, body) = send(req).await;
    assert_eq!(headers["x-request-id"], "trace-abc-1");
    assert_eq!(echoed(&body, "x-request-id"), Some("trace-abc-1"));
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let up = upstream(|req: Request<hyper::body::Incoming>| async move {
        let mut text = String::new();
        for (k, v) in req.headers() {
            text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
        }
        Response::builder()
            .header("connection", "x-up-hop")
            .header("x-up-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("x-up-keep", "yes")
            .body(full(text))
            .unwrap()
    })
    .await;
    let proxy =
        start_proxy(&format!("[[route]]\nprefix = \"/\"\nupstream = \"{}\"\nsession = false\n", up.url()))
            .await;

    let request = "GET /h HTTP/1.1\r\nHost: x\r\nConnection: close, X-Client-Hop\r\nX-Client-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic abc\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Keep: kept\r\n\r\n";
    let answer = raw(proxy.addr, request.as_bytes()).await.to_ascii_lowercase();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    for gone in ["x-client-hop", "keep-alive", "te:", "proxy-authorization", "proxy-connection", "upgrade"] {
        assert!(!body.contains(gone), "{gone} reached the upstream:\n{body}");
    }
    assert!(body.contains("x-keep: kept"));
    assert!(!head.contains("x-up-hop"), "{head}");
    assert!(!head.contains("keep-alive: timeout"), "{head}");
    assert!(!head.contains("proxy-authenticate"), "{head}");
    assert!(head.contains("x-up-keep: yes"));
}

/// Streaming, not buffering: the upstream sees the first chunk of an upload before the client
/// has sent the second, and the client sees the first chunk of a download before the
/// upstream sends the second. Then a large body goes through both ways intact.
#[tokio::test]
async fn bodies_stream_both_ways() {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<usize>();
    let (go_tx, go_rx) = mpsc::unbounded_channel::<()>();
    let go_rx = std::sync::Arc::new(tokio::sync::Mutex::new(go_rx));
    let up = upstream(move |req: Request<hyper::body::Incoming>| {
        let seen_tx = seen_tx.clone();
        let go_rx = go_rx.clone();
        async move {
            match req.uri().path() {
                "/upload" => {
                    let mut body = req.into_body();
                    let mut total = 0usize;
                    while let Some(frame) = body.frame().await {
                        if let Ok(data) = frame.unwrap().into_data() {
                            total += data.len();
                            let _ = seen_tx.send(total);
                        }
                    }
                    Response::new(full(total.to_string()))
                }
                _ => {
                    let (tx, rx) =
                        mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(1);
                    tokio::spawn(async move {
                        let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await;
                        go_rx.lock().await.recv().await;
                        let chunk = Bytes::from(vec![b'x'; 1 << 20]);
                        for _ in 0..32 {
                            let _ = tx.send(Ok(Frame::data(chunk.clone()))).await;
                        }
                    });
                    Response::new(BodyExt::boxed(StreamBody::new(tokio_stream_from(rx))))
                }
            }
        }
    })
    .await;
    let proxy =
        start_proxy(&format!("[[route]]\nprefix = \"/\"\nupstream = \"{}\"\nsession = false\n", up.url()))
            .await;

    // Upload: send one chunk, wait until the upstream has it, then send 32 MiB more.
    let (body_tx, body_rx) =
        mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(1);
    let req = Request::post(proxy.url("/upload"))
        .body(BodyExt::boxed(StreamBody::new(tokio_stream_from(body_rx))))
        .unwrap();
    let pending = tokio::spawn(async move { client().request(req).await.unwrap() });
    body_tx.send(Ok(Frame::data(Bytes::from_static(b"hello")))).await.unwrap();
    assert_eq!(
        seen_rx.recv().await,
        Some(5),
        "the first chunk reached the upstream before the rest was sent"
    );
    let chunk = Bytes::from(vec![b'y'; 1 << 20]);
    for _ in 0..32 {
        body_tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    }
    drop(body_tx);
    let resp = pending.await.unwrap();
    let total = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(total, (5 + (32usize << 20)).to_string());

    // Download: the first chunk arrives before the upstream is told to send the rest.
    let resp = client().request(Request::get(proxy.url("/download")).body(empty()).unwrap()).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first");
    go_tx.send(()).unwrap();
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        total += frame.unwrap().into_data().map(|d| d.len()).unwrap_or(0);
    }
    assert_eq!(total, 32 << 20);
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served() {
    let a = echo_upstream("a").await;
    let proxy =
        start_proxy(&format!("[[route]]\nprefix = \"/\"\nupstream = \"{}\"\nsession = false\n", a.url()))
            .await;
    let resp = h2_client().request(Request::get(proxy.url("/h2?q")).body(empty()).unwrap()).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert_eq!(echoed(&body, "path"), Some("/h2?q"));
    assert_eq!(echoed(&body, "host"), Some(proxy.addr.to_string().as_str()), "Host from the :authority");
}

#[tokio::test]
async fn websocket_passes_through() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() {
                ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
                    "echo {}",
                    msg.to_text().unwrap()
                )))
                .await
                .unwrap();
            }
        }
    });
    let proxy = start_proxy(&format!(
        "[[route]]\nprefix = \"/\"\nupstream = \"http://{ws_addr}\"\nsession = false\n"
    ))
    .await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut ws, resp) =
        tokio_tungstenite::client_async(format!("ws://{}/socket", proxy.addr), stream).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(tokio_tungstenite::tungstenite::Message::text(format!("hi {i}"))).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply.to_text().unwrap(), format!("echo hi {i}"));
    }
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
}

#[tokio::test]
async fn upstream_timeout_starts_after_the_request_body() {
    let up = upstream(|req: Request<hyper::body::Incoming>| async move {
        let n = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
        Response::new(full(n.to_string()))
    })
    .await;
    let proxy = start_proxy(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream_timeout_ms = 300\n\
         [[route]]\nprefix = \"/\"\nupstream = \"{}\"\nsession = false\n",
        up.url()
    ))
    .await;
    // An upload slower than the upstream timeout still succeeds.
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(1);
    let req = Request::post(proxy.url("/slow-upload"))
        .body(BodyExt::boxed(StreamBody::new(tokio_stream_from(rx))))
        .unwrap();
    let pending = tokio::spawn(async move { client().request(req).await.unwrap() });
    for _ in 0..4 {
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc")))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(tx);
    let resp = pending.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "12");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let headers = finishes_in_flight_request_on_shutdown(client()).await;
    // The connection heard of the shutdown while its request was in flight, not only later
    // when it went idle: the response already says the connection ends.
    assert_eq!(headers.get("connection").map(|v| v.to_str().unwrap()), Some("close"));
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_http2_requests() {
    finishes_in_flight_request_on_shutdown(h2_client()).await;
}

/// Returns the in-flight response's headers.
async fn finishes_in_flight_request_on_shutdown(
    client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>,
) -> http::HeaderMap {
    let up = upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Response::new(full("done"))
    })
    .await;
    let mut proxy =
        start_proxy(&format!("[[route]]\nprefix = \"/\"\nupstream = \"{}\"\nsession = false\n", up.url()))
            .await;
    let req = Request::get(proxy.url("/slow")).body(empty()).unwrap();
    let in_flight = tokio::spawn(async move {
        let resp = client.request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = proxy.begin_shutdown();
    let (status, headers, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "done");
    tokio::time::timeout(Duration::from_secs(10), stopped).await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err(), "still accepting after shutdown");
    headers
}

/// The README: on session routes the upgrade request carries `x-session` like any other, and a
/// forged one never reaches the upstream.
#[tokio::test]
async fn websocket_on_a_session_route_carries_the_session_header() {
    use tokio_tungstenite::tungstenite::handshake::server::{Request as WsRequest, Response as WsResponse};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<Vec<String>>();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        // The callback's signature is tungstenite's, large error type included.
        #[allow(clippy::result_large_err)]
        let record = |req: &WsRequest, resp: WsResponse| {
            let sessions =
                req.headers().get_all("x-session").iter().map(|v| v.to_str().unwrap().to_string()).collect();
            let _ = seen_tx.send(sessions);
            Ok(resp)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(stream, record).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() {
                ws.send(msg).await.unwrap();
            }
        }
    });
    let proxy = start_proxy(&format!("[[route]]\nprefix = \"/\"\nupstream = \"http://{ws_addr}\"\n")).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/socket", proxy.addr),
    )
    .unwrap();
    request.headers_mut().insert("x-session", "{\"user\":\"forged\"}".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::client_async(request, stream).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(seen_rx.await.unwrap(), ["{}"], "the upstream sees the proxy's session, never the forged one");
    ws.send(tokio_tungstenite::tungstenite::Message::text("ping")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().to_text().unwrap(), "ping");
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
}
