//! Operations, end to end: the admin endpoints, metrics that move with traffic, `/readyz`
//! against a real redis-server, HTTPS over HTTP/1.1 and HTTP/2 (ALPN) with a certificate made
//! at test time, reload swapping config for new requests only, and the built binary: `--check`,
//! SIGHUP reload (routes, secrets, certificate, invalid files, restart-only keys), SIGTERM drain
//! and JSON logs that never carry a cookie or session content.
//!
//! No timed assertions: every wait is a hang guard, and state that settles asynchronously
//! (a reconnect, a closed connection) is polled until it holds. The binary is started on port 0
//! and the tests read the bound addresses from its `listening` log lines, so no port is guessed.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::redis_server::RedisServer;
use common::*;
use http::header::SET_COOKIE;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio_rustls::client::TlsStream;

/// Anything that takes longer than this is a hang: the test fails instead of waiting forever.
const HANG_GUARD: Duration = Duration::from_secs(30);
/// Pause between polls of state that settles asynchronously.
const POLL: Duration = Duration::from_millis(20);
/// The store timeout in the Redis tests: short, so a stopped or frozen Redis fails fast.
const STORE_TIMEOUT_MS: u64 = 300;

/// Session content the app stores; it must never appear in a log.
const SESSION_MARKER: &str = "SESSION-CONTENT-7f3a";

async fn guarded<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG_GUARD, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: no result within {HANG_GUARD:?}"),
    }
}

/// Polls `check` until it returns `Some`, failing the test after the hang guard.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    guarded(what, async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// An upstream app that uses sessions
// ---------------------------------------------------------------------------------------------

/// Echoes the session it got (`session: {...}`) and, by path: `/app/login` creates one,
/// `/app/touch` updates it, `/app/regenerate` moves it to a fresh id, `/app/logout` destroys it.
async fn session_app() -> Upstream {
    upstream(|req: Request<Incoming>| async move {
        let session = req.headers().get("x-session").map(|v| v.to_str().unwrap().to_owned());
        let mut resp = Response::builder();
        match req.uri().path() {
            "/app/login" => {
                let update = format!(r#"{{"user":"ada","note":"{SESSION_MARKER}"}}"#);
                resp = resp.header("x-session-update", update);
            }
            "/app/touch" => resp = resp.header("x-session-update", r#"{"user":"ada","n":2}"#),
            "/app/regenerate" => resp = resp.header("x-session-regenerate", "1"),
            "/app/logout" => resp = resp.header("x-session-update", "null"),
            _ => {}
        }
        resp.body(full(format!("session: {}\n", session.as_deref().unwrap_or("-")))).unwrap()
    })
    .await
}

/// An upstream whose requests wait until released: for requests in flight during a reload or
/// a shutdown. `arrived` yields once per request that reached it.
struct HeldUpstream {
    upstream: Upstream,
    arrived: mpsc::UnboundedReceiver<()>,
    release: Arc<Notify>,
}

async fn held_upstream(response_header: Option<(&'static str, &'static str)>) -> HeldUpstream {
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let upstream = upstream(move |_req: Request<Incoming>| {
        let arrived_tx = arrived_tx.clone();
        let gate = gate.clone();
        async move {
            let _ = arrived_tx.send(());
            gate.notified().await;
            let mut resp = Response::builder();
            if let Some((name, value)) = response_header {
                resp = resp.header(name, value);
            }
            resp.body(full("released\n")).unwrap()
        }
    })
    .await;
    HeldUpstream { upstream, arrived, release }
}

impl HeldUpstream {
    async fn wait_arrival(&mut self) {
        guarded("request reaching the upstream", self.arrived.recv()).await.unwrap();
    }

    fn release_one(&self) {
        // A stored permit covers a handler that has not reached `notified()` yet.
        self.release.notify_one();
    }
}

// ---------------------------------------------------------------------------------------------
// Cookies and metrics
// ---------------------------------------------------------------------------------------------

/// `__session=<value>` from a response's `Set-Cookie`, if the proxy set one.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

async fn get_with(url: &str, cookie: Option<&str>) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::get(url);
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    send(req.body(empty()).unwrap()).await
}

/// The `session: ...` line an app answered with.
fn session_seen(body: &str) -> &str {
    echoed(body, "session").unwrap_or_else(|| panic!("no session line in {body:?}"))
}

/// `series → value` from the admin `/metrics` text (`name{labels} value` lines).
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(proxy: &TestProxy) -> HashMap<String, f64> {
    let (status, _, body) = get(&proxy.admin_url("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    parse_metrics(&body)
}

/// A series' value; a series not exposed yet counts as 0.
fn metric(metrics: &HashMap<String, f64>, series: &str) -> f64 {
    metrics.get(series).copied().unwrap_or(0.0)
}

const OPEN_CONNECTIONS: &str = "session_proxy_open_connections";

// ---------------------------------------------------------------------------------------------
// Admin endpoints and metrics, in process
// ---------------------------------------------------------------------------------------------

fn with_admin(routes: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{routes}")
}

#[tokio::test]
async fn admin_endpoints_answer_on_the_admin_listener_only() {
    let app = echo_upstream("app").await;
    let routes = format!("[[route]]\nprefix = \"/\"\nupstream = \"{}\"\nsession = false\n", app.url());
    let proxy = start_proxy(&with_admin(&routes)).await;

    let (status, _, body) = get(&proxy.admin_url("/healthz")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    let (status, _, body) = get(&proxy.admin_url("/readyz")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ready\n"), "the memory store is always ready");

    let (status, headers, body) = get(&proxy.admin_url("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    let content_type = headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    for family in [
        "# TYPE session_proxy_requests counter",
        "# TYPE session_proxy_request_duration_seconds histogram",
        "# TYPE session_proxy_upstream_duration_seconds histogram",
        "# TYPE session_proxy_store_command_duration_seconds histogram",
        "# TYPE session_proxy_store_errors counter",
        "# TYPE session_proxy_sessions counter",
        "# TYPE session_proxy_cookies_rejected counter",
        "# TYPE session_proxy_forged_headers_removed counter",
        "# TYPE session_proxy_open_connections gauge",
    ] {
        assert!(body.contains(family), "missing {family:?} in\n{body}");
    }

    let head = Request::head(proxy.admin_url("/healthz")).body(empty()).unwrap();
    assert_eq!(send(head).await.0, StatusCode::OK);
    let post = Request::post(proxy.admin_url("/healthz")).body(empty()).unwrap();
    let (status, headers, _) = send(post).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET, HEAD");
    assert_eq!(get(&proxy.admin_url("/nope")).await.0, StatusCode::NOT_FOUND);

    // On the public listener these paths are ordinary requests for the app.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _, body) = get(&proxy.url(path)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(echoed(&body, "upstream"), Some("app"), "{path} must reach the app");
        assert_eq!(echoed(&body, "path"), Some(path));
    }
}

#[tokio::test]
async fn metrics_move_as_requests_go_through() {
    let app = session_app().await;
    let routes = format!(
        "[[route]]\nprefix = \"/app\"\nupstream = \"{u}\"\n\n[[route]]\nprefix = \"/static/\"\nupstream = \"{u}\"\nsession = false\n",
        u = app.url()
    );
    let proxy = start_proxy(&with_admin(&routes)).await;
    let m = scrape(&proxy).await;
    assert_eq!(metric(&m, r#"session_proxy_requests_total{route="/app",status="2xx"}"#), 0.0);

    let (status, ..) = get(&proxy.url("/static/site.css")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(get(&proxy.url("/elsewhere")).await.0, StatusCode::NOT_FOUND);

    let (_, headers, _) = get(&proxy.url("/app/login")).await;
    let cookie = session_cookie(&headers).expect("login sets a cookie");
    let (_, _, body) = get_with(&proxy.url("/app/"), Some(&cookie)).await;
    assert!(session_seen(&body).contains("ada"), "{body}");
    get_with(&proxy.url("/app/touch"), Some(&cookie)).await;
    let (_, headers, _) = get_with(&proxy.url("/app/regenerate"), Some(&cookie)).await;
    let cookie = session_cookie(&headers).expect("regenerate sets a new cookie");
    let (_, headers, _) = get_with(&proxy.url("/app/logout"), Some(&cookie)).await;
    assert!(session_cookie(&headers).is_some(), "logout clears the cookie");

    let tampered = format!("{}x", cookie);
    let (_, _, body) = get_with(&proxy.url("/app/"), Some(&tampered)).await;
    assert_eq!(session_seen(&body), "{}", "a tampered cookie is a new visitor");
    let forged = Request::get(proxy.url("/app/"))
        .header("x-session", r#"{"user":"root"}"#)
        .header("x_session", r#"{"user":"root"}"#)
        .header("x-session-update", r#"{"user":"root"}"#)
        .body(empty())
        .unwrap();
    let (_, _, body) = send(forged).await;
    assert_eq!(session_seen(&body), "{}", "forged session headers never reach the app");

    let m = scrape(&proxy).await;
    let expect = [
        (r#"session_proxy_requests_total{route="/static/",status="2xx"}"#, 1.0),
        (r#"session_proxy_requests_total{route="-",status="4xx"}"#, 1.0),
        // login, read, touch, regenerate, logout, tampered, forged
        (r#"session_proxy_requests_total{route="/app",status="2xx"}"#, 7.0),
        (r#"session_proxy_request_duration_seconds_count{route="/app"}"#, 7.0),
        (r#"session_proxy_upstream_duration_seconds_count{route="/app"}"#, 7.0),
        (r#"session_proxy_request_duration_seconds_count{route="-"}"#, 1.0),
        (r#"session_proxy_upstream_duration_seconds_count{route="-"}"#, 0.0),
        (r#"session_proxy_sessions_total{event="created"}"#, 1.0),
        (r#"session_proxy_sessions_total{event="updated"}"#, 1.0),
        (r#"session_proxy_sessions_total{event="regenerated"}"#, 1.0),
        (r#"session_proxy_sessions_total{event="destroyed"}"#, 1.0),
        ("session_proxy_cookies_rejected_total", 1.0),
        ("session_proxy_forged_headers_removed_total", 3.0),
        // reads with a valid cookie: read, touch, regenerate, logout
        (r#"session_proxy_store_command_duration_seconds_count{command="get"}"#, 4.0),
        // new sessions are created where no key is: login, and regenerate's fresh id
        (r#"session_proxy_store_command_duration_seconds_count{command="create"}"#, 2.0),
        // touch: written only if the key still holds what was read
        (r#"session_proxy_store_command_duration_seconds_count{command="replace_if"}"#, 1.0),
        // regenerate: the old key deleted only if it still holds what was copied
        (r#"session_proxy_store_command_duration_seconds_count{command="delete_if"}"#, 1.0),
        (r#"session_proxy_store_command_duration_seconds_count{command="del"}"#, 1.0),
        (r#"session_proxy_store_command_duration_seconds_count{command="set"}"#, 0.0),
        (r#"session_proxy_session_conflicts_total{outcome="merged"}"#, 0.0),
        (r#"session_proxy_session_conflicts_total{outcome="interrupted"}"#, 0.0),
        (r#"session_proxy_session_conflicts_total{outcome="exhausted"}"#, 0.0),
        ("session_proxy_session_writes_skipped_total", 0.0),
    ];
    for (series, want) in expect {
        assert_eq!(metric(&m, series), want, "{series}");
    }

    // Open connections: once the clients above are gone the gauge settles at 0; two held
    // connections count 2; closing them brings it back to 0. Admin scrapes are not counted.
    let settle = |want: f64| {
        let proxy = &proxy;
        eventually("open connections to settle", move || async move {
            (metric(&scrape(proxy).await, OPEN_CONNECTIONS) == want).then_some(())
        })
    };
    settle(0.0).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        let task = tokio::spawn(conn);
        let req = Request::get("/static/a").header("host", "x").body(empty()).unwrap();
        assert_eq!(sender.send_request(req).await.unwrap().status(), StatusCode::OK);
        held.push((sender, task));
    }
    assert_eq!(metric(&scrape(&proxy).await, OPEN_CONNECTIONS), 2.0);
    for (sender, task) in held {
        drop(sender);
        let _ = task.await;
    }
    settle(0.0).await;
}

#[tokio::test]
async fn readyz_follows_redis_and_store_errors_are_counted() {
    let mut redis = RedisServer::start();
    let app = session_app().await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[store]\nurl = \"{}\"\ntimeout_ms = {STORE_TIMEOUT_MS}\n\n[[route]]\nprefix = \"/app\"\nupstream = \"{}\"\n",
        redis.url(),
        app.url()
    );
    let proxy = start_proxy(&toml).await;
    let ready = |want: StatusCode| {
        let proxy = &proxy;
        eventually("/readyz to settle", move || async move {
            let (status, _, body) = get(&proxy.admin_url("/readyz")).await;
            (status == want).then_some(body)
        })
    };
    ready(StatusCode::OK).await;
    let (_, headers, _) = get(&proxy.url("/app/login")).await;
    let cookie = session_cookie(&headers).expect("a session was saved in Redis");

    redis.stop();
    let (status, _, body) = guarded("/readyz", get(&proxy.admin_url("/readyz"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.starts_with("not ready: session store"), "{body}");
    assert_eq!(get(&proxy.admin_url("/healthz")).await.0, StatusCode::OK, "the process still serves");
    let (status, headers, _) = get_with(&proxy.url("/app/"), Some(&cookie)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    let m = scrape(&proxy).await;
    let errors: f64 = ["timeout", "unavailable", "command"]
        .iter()
        .map(|kind| metric(&m, &format!(r#"session_proxy_store_errors_total{{kind="{kind}"}}"#)))
        .sum();
    assert!(errors >= 2.0, "the probe and the request both failed: {errors}");
    assert_eq!(metric(&m, r#"session_proxy_requests_total{route="/app",status="5xx"}"#), 1.0);

    redis.restart();
    ready(StatusCode::OK).await;

    // A frozen Redis: the PING is cut by the store timeout, so the probe answers instead of
    // hanging (the hang guard is two orders of magnitude above the store timeout).
    redis.pause();
    let (status, _, body) = guarded("/readyz with Redis frozen", get(&proxy.admin_url("/readyz"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    redis.resume();
    ready(StatusCode::OK).await;
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Reload, in process
// ---------------------------------------------------------------------------------------------

fn session_routes(upstream: &Upstream, extra_session: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[session]\nsecrets = [\"s\"]\n{extra_session}\n[[route]]\nprefix = \"/\"\nupstream = \"{}\"\n",
        upstream.url()
    )
}

/// A request in flight when the config is swapped finishes on the config it started with; the
/// next request uses the new one. The probe is the update header's name: the old config acts
/// on `x-session-update`, the new one on `x-app-update` only.
#[tokio::test]
async fn reload_swaps_config_for_new_requests_while_in_flight_ones_finish_on_the_old() {
    let mut held = held_upstream(Some(("x-session-update", r#"{"user":"ada"}"#))).await;
    let proxy = start_proxy(&session_routes(&held.upstream, "")).await;
    let url = proxy.url("/before");
    let in_flight = tokio::spawn(async move { get(&url).await });
    held.wait_arrival().await;

    let renamed = config(&session_routes(&held.upstream, "update_header = \"x-app-update\""));
    proxy.reloader.apply(renamed).unwrap();
    held.release_one();
    let (status, headers, _) = guarded("in-flight request", in_flight).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(session_cookie(&headers).is_some(), "the old config acted on x-session-update");
    assert!(!headers.contains_key("x-session-update"), "and removed it");

    let url = proxy.url("/after");
    let after = tokio::spawn(async move { get(&url).await });
    held.wait_arrival().await;
    held.release_one();
    let (_, headers, _) = guarded("request after the reload", after).await.unwrap();
    assert!(session_cookie(&headers).is_none(), "x-session-update is an ordinary header now");
    assert!(headers.contains_key("x-session-update"));
}

// ---------------------------------------------------------------------------------------------
// HTTPS, in process
// ---------------------------------------------------------------------------------------------

/// A test CA, and server certificates for `localhost` and 127.0.0.1 that it signs.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and its key, as PEM, plus the certificate's DER to compare with what a
/// client is served.
struct ServerCert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        TestCa { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    fn server_cert(&self) -> ServerCert {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        // The chain as a server sends it: leaf, then the CA.
        let cert_pem = format!("{}{}", cert.pem(), self.issuer.pem());
        ServerCert { cert_pem, key_pem: key.serialize_pem(), der: cert.der().clone() }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }
}

impl ServerCert {
    fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

/// A TLS connection to `addr` as `localhost`, trusting only `ca`, offering `alpn`.
async fn tls_connect(addr: SocketAddr, ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    guarded("TLS handshake", connector.connect(name, tcp)).await.expect("TLS handshake")
}

/// The certificate the server presented on `stream`.
fn served_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().expect("a server certificate")[0].clone().into_owned()
}

/// One GET over an established TLS stream, in the protocol ALPN chose.
async fn https_get(stream: TlsStream<TcpStream>, path: &str) -> (StatusCode, Version, String) {
    https_gets(stream, path, 1).await.remove(0)
}

/// `count` GETs, one after the other on one TLS connection, each after a pause long enough for
/// an idle HTTP/1 connection to park (and give back its buffers).
async fn https_gets(
    stream: TlsStream<TcpStream>,
    path: &str,
    count: usize,
) -> Vec<(StatusCode, Version, String)> {
    async fn read(resp: Response<Incoming>) -> (StatusCode, Version, String) {
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.version, String::from_utf8_lossy(&body).into_owned())
    }
    let pause = || tokio::time::sleep(Duration::from_millis(400));
    let mut answers = Vec::new();
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        for i in 0..count {
            if i > 0 {
                pause().await;
            }
            let req = Request::get(format!("https://localhost{path}")).body(empty()).unwrap();
            answers.push(read(guarded("HTTP/2 request", sender.send_request(req)).await.unwrap()).await);
        }
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        for i in 0..count {
            if i > 0 {
                pause().await;
            }
            let req = Request::get(path).header("host", "localhost").body(empty()).unwrap();
            answers.push(read(guarded("HTTP/1.1 request", sender.send_request(req)).await.unwrap()).await);
        }
    }
    answers
}

fn tls_config(cert: &Path, key: &Path, upstream: &Upstream) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\n[[route]]\nprefix = \"/\"\nupstream = \"{}\"\nsession = false\n",
        cert.display(),
        key.display(),
        upstream.url()
    )
}

/// ALPN protocols a client offers, the one the server should pick, the HTTP version served.
type AlpnCase = (&'static [&'static [u8]], Option<&'static [u8]>, Version);

#[tokio::test]
async fn https_over_http1_and_http2_by_alpn() {
    let ca = TestCa::new();
    let server_cert = ca.server_cert();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = server_cert.write(dir.path());
    let app = echo_upstream("app").await;
    let proxy = start_proxy(&tls_config(&cert, &key, &app)).await;

    let cases: [AlpnCase; 3] = [
        (&[b"http/1.1"], Some(b"http/1.1"), Version::HTTP_11),
        (&[b"h2", b"http/1.1"], Some(b"h2"), Version::HTTP_2),
        (&[], None, Version::HTTP_11),
    ];
    for (offered, negotiated, version) in cases {
        let stream = tls_connect(proxy.addr, &ca.der(), offered).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), negotiated, "offered {offered:?}");
        assert_eq!(served_cert(&stream), server_cert.der);
        // Twice on the connection: an HTTP/1.1 one has parked in between.
        for (status, got_version, body) in https_gets(stream, "/hello?x=1", 2).await {
            assert_eq!(status, StatusCode::OK);
            assert_eq!(got_version, version);
            assert_eq!(echoed(&body, "x-forwarded-proto"), Some("https"), "{body}");
            assert_eq!(echoed(&body, "path"), Some("/hello?x=1"));
            assert_eq!(echoed(&body, "host"), Some("localhost"), "HTTP/2 authority becomes Host");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------------

const BINARY: &str = env!("CARGO_BIN_EXE_session-proxy");

/// The built binary, started on a config file with `LOG_FORMAT=json`. Every stderr line is
/// kept (for the no-secrets check) and handed to the test in order. Killed on drop.
struct ProxyProcess {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Writes `config` to a temporary `proxy.toml`, starts the binary on it and waits for its
    /// `listening` lines (and `admin listening` when `admin_listen` is set).
    async fn start(config: &str) -> ProxyProcess {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(BINARY)
            .arg("--config")
            .arg(&path)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the session-proxy binary");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::unbounded_channel();
        let pipe = child.stderr.take().unwrap();
        let kept = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                kept.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut proc = ProxyProcess {
            child,
            lines,
            stderr,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            config: path,
            _dir: dir,
        };
        let wants_admin = config.contains("admin_listen");
        while proc.addr.port() == 0 || (wants_admin && proc.admin.is_none()) {
            let line = proc.next_log(|l| matches!(message(l), "listening" | "admin listening")).await;
            let addr: SocketAddr = line["addr"].as_str().unwrap().parse().unwrap();
            match message(&line) {
                "listening" => proc.addr = addr,
                _ => proc.admin = Some(addr),
            }
        }
        proc
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin.expect("no admin listener"), path)
    }

    /// The next log line that `matches`, skipping the others; fails the test if the process
    /// ends or nothing matches within the hang guard.
    async fn next_log(&mut self, matches: impl Fn(&Value) -> bool) -> Value {
        self.collect_until(matches).await.pop().unwrap()
    }

    /// Every log line up to and including the first that `matches`.
    async fn collect_until(&mut self, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let line = match tokio::time::timeout(HANG_GUARD, self.lines.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) => panic!("the proxy exited; its log:\n{}", self.log()),
                Err(_) => panic!("no expected log line within {HANG_GUARD:?}; log:\n{}", self.log()),
            };
            let value: Value = serde_json::from_str(&line).unwrap_or(Value::String(line));
            let done = matches(&value);
            seen.push(value);
            if done {
                return seen;
            }
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Rewrites the config file and sends SIGHUP; returns the log lines up to the reload's
    /// outcome (`config reloaded` or `config reload failed`).
    async fn reload(&mut self, config: &str) -> Vec<Value> {
        std::fs::write(&self.config, config).unwrap();
        self.signal("HUP");
        self.collect_until(|l| {
            matches!(message(l), "config reloaded" | "config reload failed; keeping the running config")
        })
        .await
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        guarded("the proxy to exit", async {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return status;
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn message(line: &Value) -> &str {
    line["message"].as_str().unwrap_or_default()
}

fn route_block(prefix: &str, upstream: &Upstream, session: bool) -> String {
    format!("\n[[route]]\nprefix = \"{prefix}\"\nupstream = \"{}\"\nsession = {session}\n", upstream.url())
}

/// A config for the binary: listeners on port 0, `secrets`, then `rest` (routes, tables).
fn binary_config(admin: bool, secrets: &[&str], rest: &str) -> String {
    let admin = if admin { "admin_listen = \"127.0.0.1:0\"\n" } else { "" };
    let secrets = secrets.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    format!("[server]\nlisten = \"127.0.0.1:0\"\n{admin}\n[session]\nsecrets = [{secrets}]\nsecure = false\n{rest}")
}

fn check(config: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BINARY).arg("--config").arg(&path).arg("--check").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_loads_the_certificate_and_key_and_names_the_one_that_fails() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.server_cert().write(dir.path());
    let config = |cert: &Path, key: &Path| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\n[session]\nsecrets = [\"s\"]\n\n[[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\n",
            cert.display(),
            key.display()
        )
    };

    let (ok, stdout, stderr) = check(&config(&cert, &key));
    assert!(ok, "a good config passes: {stderr}");
    assert!(stdout.ends_with(": ok\n"), "{stdout}");

    let missing = dir.path().join("missing-key.pem");
    let (ok, _, stderr) = check(&config(&cert, &missing));
    assert!(!ok);
    assert!(stderr.contains("server.tls_key") && stderr.contains("missing-key.pem"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one message: {stderr}");

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let (ok, _, stderr) = check(&config(&garbage, &key));
    assert!(!ok);
    assert!(stderr.contains("server.tls_cert") && stderr.contains("garbage.pem"), "{stderr}");

    let other_dir = tempfile::tempdir().unwrap();
    let (other_cert, _) = ca.server_cert().write(other_dir.path());
    let (ok, _, stderr) = check(&config(&other_cert, &key));
    assert!(!ok);
    assert!(stderr.contains("server.tls_cert/tls_key"), "{stderr}");
}

/// A SIGHUP applies a new route and a new first secret (how rotation then behaves is in
/// `sessions.rs`, on every store) and logs the keys it cannot apply without a restart.
#[tokio::test]
async fn sighup_applies_routes_and_secrets_and_logs_keys_that_need_a_restart() {
    let a = echo_upstream("a").await;
    let b = echo_upstream("b").await;
    let app = session_app().await;
    let first = format!("{}{}", route_block("/a", &a, false), route_block("/app", &app, true));
    let mut proxy = ProxyProcess::start(&binary_config(true, &["old-secret-1"], &first)).await;
    assert_eq!(get(&proxy.url("/b")).await.0, StatusCode::NOT_FOUND);
    let (_, headers, _) = get(&proxy.url("/app/login")).await;
    let old_cookie = session_cookie(&headers).expect("login sets a cookie");

    let both = format!("{first}{}", route_block("/b", &b, false));
    let secrets = ["new-secret-2", "old-secret-1"];
    // Turning HTTPS on needs a new listener: logged, not applied (the files are not read).
    let changed = binary_config(true, &secrets, &format!("\n[store]\nurl = \"redis://127.0.0.1:1\"\n{both}"))
        .replace(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"127.0.0.1:1\"\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"",
    );
    let log = proxy.reload(&changed).await;
    assert_eq!(message(log.last().unwrap()), "config reloaded");
    let restart_keys: Vec<&str> = log.iter().filter_map(|l| l["key"].as_str()).collect();
    assert_eq!(restart_keys, ["server.admin_listen", "server.tls_cert/tls_key", "store.url"], "{log:?}");
    for line in log.iter().filter(|l| l["key"].is_string()) {
        assert_eq!(line["level"], "WARN");
        assert!(message(line).contains("needs a restart"), "{line}");
    }

    let (status, _, body) = get(&proxy.url("/b/x")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed(&body, "upstream"), Some("b"));
    assert_eq!(get(&proxy.admin_url("/healthz")).await.0, StatusCode::OK, "admin still on the old address");
    assert_eq!(get(&proxy.url("/a")).await.0, StatusCode::OK);
    let (_, headers, body) = get_with(&proxy.url("/app/"), Some(&old_cookie)).await;
    assert!(
        session_seen(&body).contains("ada"),
        "memory store still in use, old secret still verifies: {body}"
    );
    let new_cookie = session_cookie(&headers).expect("re-signed with the new first secret");
    assert_ne!(new_cookie, old_cookie);
}

#[tokio::test]
async fn sighup_with_an_invalid_file_keeps_serving_the_old_config_and_says_why() {
    let a = echo_upstream("a").await;
    let b = echo_upstream("b").await;
    let good = binary_config(false, &["s"], &route_block("/a", &a, false));
    let mut proxy = ProxyProcess::start(&good).await;

    let with_b = format!("{}{}", route_block("/a", &a, false), route_block("/b", &b, false));
    let typo =
        binary_config(false, &["s"], &with_b).replace("secure = false", "secure = false\nmax_agee = 5");
    let log = proxy.reload(&typo).await;
    let outcome = log.last().unwrap();
    assert_eq!(outcome["level"], "ERROR");
    assert!(outcome["error"].as_str().unwrap().contains("max_agee"), "{outcome}");
    assert_eq!(get(&proxy.url("/a")).await.0, StatusCode::OK);
    assert_eq!(get(&proxy.url("/b")).await.0, StatusCode::NOT_FOUND, "nothing of the bad file applied");

    let log = proxy.reload("[server\nlisten = ").await;
    assert_eq!(message(log.last().unwrap()), "config reload failed; keeping the running config");
    assert_eq!(get(&proxy.url("/a")).await.0, StatusCode::OK);

    // Reloading still works after failures.
    let log = proxy.reload(&binary_config(false, &["s"], &with_b)).await;
    assert_eq!(message(log.last().unwrap()), "config reloaded");
    assert_eq!(get(&proxy.url("/b")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn sighup_reloads_the_tls_certificate() {
    let ca = TestCa::new();
    let first = ca.server_cert();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = first.write(dir.path());
    let app = echo_upstream("app").await;
    let config = format!("{}\n[session]\nsecrets = [\"s\"]\n", tls_config(&cert, &key, &app));
    let mut proxy = ProxyProcess::start(&config).await;

    let before = tls_connect(proxy.addr, &ca.der(), &[b"h2"]).await;
    assert_eq!(served_cert(&before), first.der);

    // Renewed in place, as certbot or cert-manager do.
    let renewed = ca.server_cert();
    renewed.write(dir.path());
    let log = proxy.reload(&config).await;
    let outcome = log.last().unwrap();
    assert_eq!(message(outcome), "config reloaded");
    assert_eq!(outcome["tls_certificate_reloaded"], true);
    assert!(!log.iter().any(|l| l["key"].is_string()), "no restart needed: {log:?}");
    let after = tls_connect(proxy.addr, &ca.der(), &[b"h2"]).await;
    assert_eq!(served_cert(&after), renewed.der);
    let (status, _, body) = https_get(after, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed(&body, "x-forwarded-proto"), Some("https"));
    // A connection made before the reload keeps working on its certificate.
    let (status, ..) = https_get(before, "/").await;
    assert_eq!(status, StatusCode::OK);

    // A key that does not load: the reload is refused and the renewed certificate stays.
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    let log = proxy.reload(&config).await;
    let outcome = log.last().unwrap();
    assert_eq!(outcome["level"], "ERROR");
    assert!(outcome["error"].as_str().unwrap().starts_with("server.tls_key"), "{outcome}");
    let still = tls_connect(proxy.addr, &ca.der(), &[b"http/1.1"]).await;
    assert_eq!(served_cert(&still), renewed.der);
    assert_eq!(https_get(still, "/").await.0, StatusCode::OK);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let mut held = held_upstream(None).await;
    let mut proxy =
        ProxyProcess::start(&binary_config(true, &["s"], &route_block("/", &held.upstream, false))).await;
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    held.wait_arrival().await;

    proxy.signal("TERM");
    proxy.next_log(|l| message(l) == "shutting down: draining").await;
    let (status, _, body) = get(&proxy.admin_url("/readyz")).await;
    assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down\n"));
    assert_eq!(get(&proxy.admin_url("/healthz")).await.0, StatusCode::OK, "alive while it drains");

    held.release_one();
    let (status, _, body) = guarded("in-flight request", in_flight).await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "released\n"));
    proxy.next_log(|l| message(l) == "drained").await;
    let exit = proxy.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}

/// `shutdown_grace_ms` is applied by a reload: a request that never finishes is cut after the
/// reloaded grace instead of the day the proxy started with (the hang guard would fail first).
#[tokio::test]
async fn sighup_applies_a_new_shutdown_grace() {
    let mut held = held_upstream(None).await;
    let routes = route_block("/", &held.upstream, false);
    let config = |grace_ms: u64| {
        binary_config(false, &["s"], &routes)
            .replace("[session]", &format!("shutdown_grace_ms = {grace_ms}\n\n[session]"))
    };
    let mut proxy = ProxyProcess::start(&config(86_400_000)).await;
    let log = proxy.reload(&config(50)).await;
    assert_eq!(message(log.last().unwrap()), "config reloaded");

    let url = proxy.url("/never");
    let _stuck = tokio::spawn(async move { client().get(url.parse().unwrap()).await });
    held.wait_arrival().await;
    proxy.signal("TERM");
    let line = proxy.next_log(|l| message(l).starts_with("shutting down")).await;
    assert_eq!(line["grace_ms"], 50);
    proxy.next_log(|l| message(l) == "shutdown grace elapsed with requests still in flight").await;
    proxy.wait_exit().await;
}

#[tokio::test]
async fn json_logs_carry_the_access_fields_and_never_a_cookie_or_session_content() {
    let app = session_app().await;
    let secret = "log-test-secret-9b1e";
    let mut proxy =
        ProxyProcess::start(&binary_config(false, &[secret], &route_block("/app", &app, true))).await;

    let login = Request::get(proxy.url("/app/login")).header("x-request-id", "trace-login-1").body(empty());
    let (_, headers, _) = send(login.unwrap()).await;
    let cookie = session_cookie(&headers).unwrap();
    let (_, _, body) = get_with(&proxy.url("/app/"), Some(&cookie)).await;
    assert!(session_seen(&body).contains(SESSION_MARKER));
    get_with(&proxy.url("/app/logout"), Some(&cookie)).await;
    get_with(&proxy.url("/nowhere"), Some(&cookie)).await;

    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
    // The process has exited: wait for the reader to reach the end of its stderr.
    guarded("the end of stderr", async { while proxy.lines.recv().await.is_some() {} }).await;
    let lines = proxy.stderr.lock().unwrap().clone();

    let parsed: Vec<serde_json::Map<String, Value>> = lines
        .iter()
        .map(|l| match serde_json::from_str(l) {
            Ok(Value::Object(map)) => map,
            _ => panic!("not one JSON object: {l:?}"),
        })
        .collect();
    let access: Vec<_> = parsed.iter().filter(|l| l["target"] == "access").collect();
    assert_eq!(access.len(), 4, "{lines:#?}");
    for line in &access {
        for field in ["request_id", "method", "path", "status", "duration_ms", "route", "session", "store_ms"]
        {
            assert!(line.contains_key(field), "{field} missing from {line:?}");
        }
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["method"], "GET");
        assert!(line["duration_ms"].is_number() && line["store_ms"].is_number(), "{line:?}");
    }
    let by_path = |path: &str| access.iter().find(|l| l["path"] == path).copied().unwrap();
    let login = by_path("/app/login");
    assert_eq!(login["request_id"], "trace-login-1");
    assert_eq!((login["status"].as_u64(), login["session"].as_str()), (Some(200), Some("created")));
    assert!(login["upstream_ms"].is_number());
    assert_eq!(by_path("/app/")["session"], "loaded");
    assert_eq!(by_path("/app/logout")["session"], "destroyed");
    let unmatched = by_path("/nowhere");
    assert_eq!((unmatched["status"].as_u64(), unmatched["route"].as_str()), (Some(404), Some("-")));
    assert!(!unmatched.contains_key("upstream_ms"), "no upstream was called");

    let text = lines.join("\n");
    let value = cookie.split_once('=').unwrap().1;
    let decoded = percent_encoding::percent_decode_str(value).decode_utf8().unwrap().into_owned();
    let (payload, signature) = decoded.rsplit_once('.').unwrap();
    let id_json = base64::engine::general_purpose::STANDARD.decode(payload).unwrap();
    let id = serde_json::from_slice::<String>(&id_json).unwrap();
    for needle in [value, decoded.as_str(), payload, signature, id.as_str(), SESSION_MARKER, secret] {
        assert!(!text.contains(needle), "{needle:?} appears in the log:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Warnings a newcomer needs: Secure cookies on plain HTTP, short secrets
// ---------------------------------------------------------------------------------------------

const SECURE_COOKIE_WARNING: &str = "a session cookie marked Secure was set on a plain-HTTP request";

/// Sends a login (which sets the session cookie) with these `Host` and extra headers, and
/// returns the log lines up to its access line: the warning, if any, is written before it.
async fn login_as(proxy: &mut ProxyProcess, host: &str, extra: &[(&str, &str)], id: &str) -> Vec<Value> {
    let mut req = Request::get(proxy.url("/app/login")).header("host", host).header("x-request-id", id);
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    let (status, headers, _) = send(req.body(empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let cookie = headers.get(SET_COOKIE).expect("login sets the cookie").to_str().unwrap().to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    proxy.collect_until(|l| l["target"] == "access" && l["request_id"] == id).await
}

fn secure_warnings(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| message(l).starts_with(SECURE_COOKIE_WARNING)).collect()
}

/// With `secure = true`, a cookie set on plain HTTP for a host other than localhost or a
/// loopback address is dropped by browsers: one WARN line per process says so, naming the host
/// and never the cookie. HTTPS (the listener's, or `X-Forwarded-Proto: https` from a proxy in
/// front) and local hosts, where browsers keep Secure cookies, are not warned about.
#[tokio::test]
async fn a_secure_cookie_on_plain_http_for_a_remote_host_is_warned_about_once() {
    let app = session_app().await;
    let config =
        binary_config(false, &["s"], &route_block("/app", &app, true)).replace("secure = false\n", "");
    let mut proxy = ProxyProcess::start(&config).await;

    let local = [
        ("localhost:8080", &[][..]),
        ("127.0.0.1:8080", &[]),
        ("[::1]:8080", &[]),
        ("app.example.com", &[("x-forwarded-proto", "https")]),
    ];
    for (i, (host, extra)) in local.iter().enumerate() {
        let lines = login_as(&mut proxy, host, extra, &format!("quiet-{i}")).await;
        assert!(secure_warnings(&lines).is_empty(), "no warning for {host} {extra:?}: {lines:?}");
    }

    let lines = login_as(&mut proxy, "app.example.com:8080", &[], "first-plain").await;
    let warned = secure_warnings(&lines);
    assert_eq!(warned.len(), 1, "{lines:?}");
    assert_eq!(warned[0]["level"], "WARN");
    assert_eq!(warned[0]["host"], "app.example.com:8080");
    assert_eq!(warned[0]["request_id"], "first-plain");
    assert!(message(warned[0]).contains("session.secure = false"), "says what to do: {}", warned[0]);

    for i in 0..3 {
        let lines = login_as(&mut proxy, "other.example.com", &[], &format!("again-{i}")).await;
        assert!(secure_warnings(&lines).is_empty(), "once per process: {lines:?}");
    }
}

/// A secret shorter than 32 bytes is accepted, with a warning that names its position in
/// `session.secrets` and never its value: from `--check` (exit 0) and when the proxy starts.
#[tokio::test]
async fn short_secrets_are_warned_about_at_start_and_by_check() {
    let long = "0123456789abcdef0123456789abcdef";
    let short = "tiny-secret-41f0";
    let app = session_app().await;
    let config = binary_config(false, &[long, short], &route_block("/app", &app, true));

    let (ok, stdout, stderr) = check(&config);
    assert!(ok, "valid, so exit 0: {stderr}");
    assert!(stdout.ends_with(": ok\n"), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "one warning: {stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("session.secrets[1] is shorter than 32 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains(short) && !stderr.contains("session.secrets[0]"), "{stderr}");
    let (ok, _, stderr) = check(&binary_config(false, &[long], &route_block("/app", &app, true)));
    assert!(ok && stderr.is_empty(), "no warning for a long secret: {stderr}");

    let mut proxy = ProxyProcess::start(&config).await;
    proxy.signal("TERM");
    proxy.wait_exit().await;
    guarded("the end of stderr", async { while proxy.lines.recv().await.is_some() {} }).await;
    let log = proxy.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("session.secrets[")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("\"WARN\"") && warnings[0].contains("session.secrets[1]"), "{log}");
    assert!(!log.contains(short), "the secret never appears: {log}");
}

/// `--check`'s messages are one line each, in words: a missing file says so and how to give
/// the path; a bad value names its key; neither carries an OS error code or Debug text.
#[test]
fn check_messages_are_sentences() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let out = Command::new(BINARY).arg("--config").arg(&missing).arg("--check").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "session-proxy: cannot read the config file {}: there is no such file (give its path with --config; the default is proxy.toml in the current directory)",
            missing.display()
        )
    );

    for (config, key) in [
        ("[server]\nlisten = \"localhost\"\n", "server.listen"),
        (
            "[server]\nlisten = \"127.0.0.1:1\"\n[session]\nsecrets = [\"s\"]\nmax_agee = 3\n",
            "session.max_agee",
        ),
    ] {
        let (ok, _, stderr) = check(config);
        assert!(!ok);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
        assert!(!stderr.contains("os error") && !stderr.contains(" { "), "{stderr}");
    }
}
