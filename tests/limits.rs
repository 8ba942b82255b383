//! Nothing unbounded (the README, "Limits"): the connection cap (`server.max_connections`,
//! the admin listener's own cap), the open-file limit checked at start, an upstream that stops
//! sending its response body (`upstream_read_timeout_ms`, per route `read_timeout_ms`), a
//! client that takes nothing of its response (`client_send_timeout_ms`, HTTP/1.1 and HTTP/2),
//! idle HTTP/2 connections that answer pings, and a SIGHUP reload whose file takes long to
//! read (it must not hold up accepting).
//!
//! All on loopback. No timed assertions: waits are hang guards and bounded polls; where a test
//! shows that something does *not* happen (a client waiting at the cap), the check can only
//! pass wrongly on a slow machine, never fail wrongly.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::faults::*;
use common::logs::{log_line, logs};
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use session_proxy::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

const BINARY: &str = env!("CARGO_BIN_EXE_session-proxy");
/// Short timeouts, so the tests are quick; the defaults are 60 s.
const SHORT_MS: u64 = 300;
/// What a client that is served must be served within, while others misbehave.
const SERVED_WITHIN: Duration = Duration::from_secs(1);
/// How long a waiting client is watched for an answer it must not get.
const NOT_SERVED_FOR: Duration = Duration::from_millis(300);
/// A body far larger than what the kernel's socket buffers hold on loopback.
const BIG_BODY_CHUNKS: usize = 256;
const CHUNK: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Every metric sample of `/metrics`, by series (`name{labels}`).
async fn metrics(proxy: &TestProxy) -> HashMap<String, f64> {
    let (_, _, body) = guarded("a scrape", get(&proxy.admin_url("/metrics"))).await;
    parse_metrics(&body)
}

fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
        .collect()
}

/// Polls `/metrics` until `series` reads `want`.
async fn wait_metric(proxy: &TestProxy, series: &str, want: f64) {
    guarded(&format!("{series} to reach {want}"), async {
        loop {
            if metrics(proxy).await.get(series).copied().unwrap_or(0.0) == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A keep-alive HTTP/1.1 connection held open by the test.
struct Held {
    sender: SendRequest<TestBody>,
    task: JoinHandle<()>,
}

impl Held {
    async fn open(addr: SocketAddr) -> Held {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Held { sender, task }
    }

    /// Sends a GET and reads the whole answer.
    async fn get(&mut self, path: &str) -> (StatusCode, String) {
        let req = Request::get(path).header("host", "test").body(empty()).unwrap();
        let resp = self.sender.send_request(req).await.expect("a response");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("a body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn route(upstream: &str, extra: &str) -> String {
    format!("[[route]]\nprefix = \"/\"\nupstream = \"{upstream}\"\nsession = false\n{extra}\n")
}

fn server(extra: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{extra}\n")
}

/// An upstream whose `/big` answer is far larger than the socket buffers; `/` says `ok`.
async fn big_upstream() -> Upstream {
    upstream(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() != "/big" {
            return Response::new(full("ok"));
        }
        let chunks =
            (0..BIG_BODY_CHUNKS).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'x'; CHUNK]))));
        Response::new(StreamBody::new(futures_util::stream::iter(chunks)).boxed())
    })
    .await
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Sends `GET /` and expects `ok` within [`SERVED_WITHIN`].
async fn served(proxy: &TestProxy, what: &str) {
    let answer = tokio::time::timeout(SERVED_WITHIN, get(&proxy.url("/"))).await;
    let (status, _, body) =
        answer.unwrap_or_else(|_| panic!("{what}: a normal client waited over {SERVED_WITHIN:?}"));
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"), "{what}");
}

// ---------------------------------------------------------------------------------------------
// The connection cap
// ---------------------------------------------------------------------------------------------

/// At `max_connections` the proxy accepts nothing more until a connection closes: the next
/// client waits in the backlog (it is not refused), the episode is counted once, and it is
/// served as soon as a place is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_accepting_pauses_until_a_connection_closes() {
    let up = upstream(|_req| async { Response::new(full("ok")) }).await;
    let proxy = start_proxy(&(server("max_connections = 3") + &route(&up.url(), ""))).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = Held::open(proxy.addr).await;
        assert_eq!(guarded("a request", conn.get("/")).await, (StatusCode::OK, "ok".to_owned()));
        held.push(conn);
    }
    wait_metric(&proxy, "session_proxy_open_connections", 3.0).await;
    wait_metric(&proxy, "session_proxy_connection_cap_reached_total{listener=\"public\"}", 1.0).await;
    let m = metrics(&proxy).await;
    assert_eq!(m["session_proxy_max_connections"], 3.0);

    // The fourth client connects (the kernel's backlog) but is not served while three are open.
    let mut fourth = Held::open(proxy.addr).await;
    let mut waiting = Box::pin(async move {
        let answer = fourth.get("/").await;
        (answer, fourth)
    });
    assert!(tokio::time::timeout(NOT_SERVED_FOR, &mut waiting).await.is_err(), "served above the cap");
    assert_eq!(metrics(&proxy).await["session_proxy_open_connections"], 3.0);

    drop(held.pop());
    let (answer, _fourth) = guarded("the waiting client, once a connection closed", waiting).await;
    assert_eq!(answer, (StatusCode::OK, "ok".to_owned()));
    wait_metric(&proxy, "session_proxy_open_connections", 3.0).await;
    // Still the same episode: at the cap again as soon as the fourth was taken in.
    assert_eq!(metrics(&proxy).await["session_proxy_connection_cap_reached_total{listener=\"public\"}"], 1.0);
    proxy.shutdown().await;
}

/// The admin listener has its own cap (32 connections): a flood of admin connections waits,
/// while the public listener keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_has_its_own_small_cap() {
    let up = upstream(|_req| async { Response::new(full("ok")) }).await;
    let proxy = start_proxy(&(server("") + &route(&up.url(), ""))).await;
    let admin = proxy.admin.unwrap();
    let mut held = Vec::new();
    for _ in 0..32 {
        let mut conn = Held::open(admin).await;
        assert_eq!(guarded("/healthz", conn.get("/healthz")).await.0, StatusCode::OK);
        held.push(conn);
    }
    let mut extra = Held::open(admin).await;
    let mut waiting = Box::pin(async move {
        let answer = extra.get("/healthz").await;
        (answer, extra)
    });
    assert!(tokio::time::timeout(NOT_SERVED_FOR, &mut waiting).await.is_err(), "admin served above its cap");
    served(&proxy, "the public listener, while the admin one is at its cap").await;
    let (_, text) = guarded("a scrape on a held connection", held[0].get("/metrics")).await;
    let m = parse_metrics(&text);
    assert_eq!(m["session_proxy_connection_cap_reached_total{listener=\"admin\"}"], 1.0, "{text}");
    assert_eq!(m["session_proxy_connection_cap_reached_total{listener=\"public\"}"], 0.0);
    drop(held.pop());
    let (answer, _extra) = guarded("the waiting admin client", waiting).await;
    assert_eq!(answer.0, StatusCode::OK);
    proxy.shutdown().await;
}

/// The binary on a config, its limits set by the shell first; stderr lines are collected.
struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    fn start(config: &str, ulimit: &str) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{ulimit} && exec \"$0\" --config \"$1\""))
            .arg(BINARY)
            .arg(&path)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().unwrap();
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Process { child, lines, config: path, _dir: dir }
    }

    /// The first log line whose message is `message`; `None` when the process exits first.
    async fn line(&mut self, message: &str) -> Option<serde_json::Value> {
        let needle = format!("\"message\":\"{message}");
        guarded(&format!("the log line {message:?}"), async {
            loop {
                if let Some(line) = self.lines.lock().unwrap().iter().find(|l| l.contains(&needle)) {
                    return Some(serde_json::from_str(line).unwrap());
                }
                if self.child.try_wait().unwrap().is_some() {
                    // The pipe may still hold the last lines.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let lines = self.lines.lock().unwrap();
                    return lines
                        .iter()
                        .find(|l| l.contains(&needle))
                        .map(|l| serde_json::from_str(l).unwrap());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    async fn exit_code(&mut self) -> Option<i32> {
        guarded("the binary to exit", async {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return status.code();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary_config(server_extra: &str) -> String {
    binary_config_to("http://127.0.0.1:9", server_extra)
}

fn binary_config_to(upstream: &str, server_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server_extra}\n\
         [session]\nsecrets = [\"s\"]\nsecure = false\n[[route]]\nprefix = \"/\"\nupstream = \"{upstream}\"\nsession = false\n"
    )
}

/// `max_connections` set in the file and an open-file limit that cannot hold it: the proxy
/// does not start, and says what to raise.
#[tokio::test]
async fn a_max_connections_the_open_file_limit_cannot_hold_stops_the_start() {
    let mut proc = Process::start(&binary_config("max_connections = 1000"), "ulimit -n 300");
    assert_eq!(proc.exit_code().await, Some(1), "{}", proc.log());
    let line = proc.line("cannot start").await.unwrap_or_else(|| panic!("no reason given: {}", proc.log()));
    let error = line["error"].as_str().unwrap();
    assert!(error.starts_with("server.max_connections = 1000 needs up to "), "{error}");
    assert!(error.contains("the open-file limit is 300"), "{error}");
    assert!(error.contains("LimitNOFILE"), "{error}");
}

/// The soft open-file limit is raised to the hard one at start; a `max_connections` that the
/// hard limit holds starts, and an unset one is lowered to what the limit holds, with a warning.
#[tokio::test]
async fn the_soft_limit_is_raised_and_an_unset_cap_fits_the_limit() {
    let mut proc =
        Process::start(&binary_config("max_connections = 1000"), "ulimit -Sn 100 && ulimit -Hn 4000");
    let listening = proc.line("listening").await.unwrap_or_else(|| panic!("did not start: {}", proc.log()));
    assert_eq!(listening["max_connections"], 1000);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proc.child.id())).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4000", "4000"], "{open_files}");

    let mut proc = Process::start(&binary_config(""), "ulimit -n 300");
    let warning = proc
        .line("server.max_connections is not set")
        .await
        .unwrap_or_else(|| panic!("no warning: {}", proc.log()));
    let cap = warning["max_connections"].as_u64().unwrap();
    assert!((1..150).contains(&cap), "two sockets per connection in 300 files: {cap}");
    let listening = proc.line("listening").await.unwrap_or_else(|| panic!("did not start: {}", proc.log()));
    assert_eq!(listening["max_connections"].as_u64(), Some(cap));
}

// ---------------------------------------------------------------------------------------------
// An upstream that stops sending its body
// ---------------------------------------------------------------------------------------------

/// An upstream that sends its head and part of a 100-byte body, then `then`: stays silent
/// until the proxy closes (`None`), or sends the rest after a pause. Every connection's end
/// (the proxy closed it) is reported on `closed`.
async fn stalling_upstream(
    then: Option<Duration>,
) -> (RawUpstream, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
    let up = RawUpstream::start(move |mut stream: TcpStream| {
        let closed_tx = closed_tx.clone();
        async move {
            let mut buf = Vec::new();
            if read_head(&mut stream, &mut buf).await.is_none() {
                return;
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789").await;
            if let Some(pause) = then {
                tokio::time::sleep(pause).await;
                let _ = stream.write_all(&[b'.'; 90]).await;
            }
            let mut sink = [0u8; 1024];
            while let Ok(Ok(n)) = tokio::time::timeout(HANG_GUARD, stream.read(&mut sink)).await {
                if n == 0 {
                    let _ = closed_tx.send(());
                    return;
                }
            }
        }
    })
    .await;
    (up, closed)
}

/// The upstream stops sending its body: after the route's `read_timeout_ms` the client's
/// response ends unfinished, the upstream connection is closed, and the cut is logged with the
/// request id. `read_timeout_ms = 0` (server-sent events) waits as long as the upstream does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_sending_its_body_is_cut_after_the_read_timeout() {
    let _ = logs();
    let (stalled, mut closed) = stalling_upstream(None).await;
    let (slow, _) = stalling_upstream(Some(Duration::from_millis(3 * SHORT_MS))).await;
    let healthy = upstream(|_req| async { Response::new(full("ok")) }).await;
    let toml = format!(
        "{}[[route]]\nprefix = \"/stalled\"\nupstream = \"{}\"\nsession = false\n\
         [[route]]\nprefix = \"/never\"\nupstream = \"{}\"\nsession = false\nread_timeout_ms = 0\n{}",
        server(&format!("upstream_read_timeout_ms = {SHORT_MS}")),
        stalled.url(),
        slow.url(),
        route(&healthy.url(), ""),
    );
    let proxy = start_proxy(&toml).await;

    let req = Request::get(proxy.url("/stalled")).header("x-request-id", "stall-7f2c").body(empty()).unwrap();
    let resp = guarded("the response head", client().request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let ended = guarded("the cut", async {
        loop {
            match body.frame().await {
                Some(Ok(frame)) => got.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..])),
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    })
    .await;
    assert!(ended.is_err(), "the body must end unfinished, not look complete ({} bytes)", got.len());
    assert_eq!(got, b"0123456789");
    guarded("the upstream connection to close", closed.recv()).await.unwrap();
    let line = log_line(&["stall-7f2c", "read timeout"]).await;
    assert_eq!(line["read_timeout_ms"], SHORT_MS);
    served(&proxy, "after the cut").await;

    // No read timeout on this route: the pause (three times the server's timeout) is waited out.
    let (status, _, body) = guarded("the slow body", get(&proxy.url("/never"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 100);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// A client that takes nothing of its response
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 client that asks for a large body and never reads: once the socket buffers are
/// full and nothing moves for `client_send_timeout_ms`, the proxy drops the connection (while
/// the client still holds its socket) and keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_takes_nothing_is_dropped_after_the_send_timeout() {
    let up = big_upstream().await;
    let proxy =
        start_proxy(&(server(&format!("client_send_timeout_ms = {SHORT_MS}")) + &route(&up.url(), ""))).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    wait_metric(&proxy, "session_proxy_open_connections", 1.0).await;
    // Not a byte read: the proxy must close its side by itself.
    wait_metric(&proxy, "session_proxy_open_connections", 0.0).await;
    served(&proxy, "after the drop").await;
    let mut got = Vec::new();
    let _ = guarded("reading what was sent before the drop", stream.read_to_end(&mut got)).await;
    assert!(got.len() < BIG_BODY_CHUNKS * CHUNK, "the whole body arrived: not dropped");
    proxy.shutdown().await;
}

/// The same over HTTP/2: a client that grants no flow-control window takes nothing, and its
/// connection is dropped after `client_send_timeout_ms` (answering pings does not help it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_grants_no_window_is_dropped_after_the_send_timeout() {
    let up = big_upstream().await;
    let proxy =
        start_proxy(&(server(&format!("client_send_timeout_ms = {SHORT_MS}")) + &route(&up.url(), ""))).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut h2, conn) =
        h2::client::Builder::new().initial_window_size(0).handshake::<_, Bytes>(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("http://{}/big", proxy.addr)).body(()).unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    let resp = guarded("the response head", resp).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    wait_metric(&proxy, "session_proxy_open_connections", 1.0).await;
    let ended = guarded("the proxy to drop the connection", conn).await.unwrap();
    let _ = ended;
    wait_metric(&proxy, "session_proxy_open_connections", 0.0).await;
    served(&proxy, "after the drop").await;
    drop(resp);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Idle HTTP/2 connections
// ---------------------------------------------------------------------------------------------

/// An HTTP/2 connection with no stream closes after the idle timeout even though it answers
/// every keep-alive ping; a stream in flight keeps it open however long it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_close_even_when_they_answer_pings() {
    let up = upstream(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(4 * SHORT_MS)).await;
        }
        Response::new(full("ok"))
    })
    .await;
    let limits = Limits {
        header_read_timeout: Duration::from_millis(SHORT_MS),
        http2_keep_alive: Duration::from_millis(SHORT_MS / 3),
        ..Limits::default()
    };
    let proxy = start_proxy_with(config(&(server("") + &route(&up.url(), ""))), limits).await;

    // A slow request, four idle timeouts long, is answered on its connection.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut h2 = guarded("ready", h2.ready()).await.unwrap();
    let req = Request::get(format!("http://{}/slow", proxy.addr)).body(()).unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    let resp = guarded("the slow answer", resp).await.expect("served, not closed as idle");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    while let Some(data) = guarded("the slow body", body.data()).await {
        let data = data.unwrap();
        let _ = body.flow_control().release_capacity(data.len());
    }
    // Then nothing: the h2 client answers the proxy's pings, and the proxy still closes.
    let ended = guarded("the idle connection to close", conn).await.unwrap();
    assert!(ended.is_ok(), "closed gracefully (GOAWAY): {ended:?}");
    wait_metric(&proxy, "session_proxy_open_connections", 0.0).await;
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------------------------

/// SIGHUP reads the config (and the certificate and key) off the thread that accepts
/// connections: while a reload waits on a file that takes long to read (here a FIFO nobody
/// writes yet), new connections are accepted and served within a second; then the reload
/// finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_stuck_reading_its_file_does_not_hold_up_accepting() {
    let up = upstream(|_req| async { Response::new(full("ok")) }).await;
    let config = binary_config_to(&up.url(), "");
    let mut proc = Process::start(&config, "true");
    let listening = proc.line("listening").await.unwrap_or_else(|| panic!("did not start: {}", proc.log()));
    let addr: SocketAddr = listening["addr"].as_str().unwrap().parse().unwrap();

    std::fs::remove_file(&proc.config).unwrap();
    let made = Command::new("mkfifo").arg(&proc.config).status().unwrap();
    assert!(made.success(), "mkfifo");
    let hup = Command::new("kill").arg("-HUP").arg(proc.child.id().to_string()).status().unwrap();
    assert!(hup.success());
    proc.line("SIGHUP: reloading the config").await.unwrap_or_else(|| panic!("no reload: {}", proc.log()));

    for i in 0..5 {
        let answer = tokio::time::timeout(SERVED_WITHIN, get(&format!("http://{addr}/"))).await;
        let (status, _, body) = answer.unwrap_or_else(|_| panic!("request {i} waited for the reload"));
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }
    assert!(
        !proc.lines.lock().unwrap().iter().any(|l| l.contains("config reloaded")),
        "the reload did not wait"
    );

    // Opening a FIFO for writing waits for its reader: the reload thread, already waiting.
    let (path, text) = (proc.config.clone(), config.clone());
    let fed = std::thread::spawn(move || std::fs::write(path, text));
    proc.line("config reloaded").await.unwrap_or_else(|| panic!("the reload never finished: {}", proc.log()));
    fed.join().unwrap().unwrap();
}
