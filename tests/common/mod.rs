//! Shared test harness: a proxy on port 0 built from a TOML snippet, in-process upstreams on
//! port 0, and small HTTP clients. Everything started here stops when dropped.
#![allow(dead_code)]

pub mod app;
pub mod faults;
pub mod logs;
pub mod redis_server;
pub mod redis_topology;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use session_proxy::{Config, Limits, Reloader, Server};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> TestBody {
    full(Bytes::new())
}

/// A running proxy; shut down (and awaited) on `shutdown`, aborted on drop.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub reloader: Reloader,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestProxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin.expect("no admin listener"), path)
    }

    /// Starts the graceful drain; the returned handle finishes when the server has stopped.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("already shut down")
    }

    pub async fn shutdown(mut self) {
        let task = self.begin_shutdown();
        task.await.unwrap();
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A config from a TOML snippet; `listen` is added (port 0) unless the snippet has a
/// `[server]` table, and `SESSION_SECRET` resolves to `test-secret`.
pub fn config(toml: &str) -> Config {
    let text = if toml.contains("[server]") {
        toml.to_string()
    } else {
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{toml}")
    };
    let text = if text.contains("[session]") {
        text
    } else {
        format!("{text}\n[session]\nsecrets = [\"test-secret\"]\n")
    };
    session_proxy::config::from_toml_str_with_env(&text, |name| match name {
        "SESSION_SECRET" => Some("test-secret".to_string()),
        _ => None,
    })
    .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"))
}

pub async fn start_proxy(toml: &str) -> TestProxy {
    start_proxy_with(config(toml), Limits::default()).await
}

pub async fn start_proxy_with(config: Config, limits: Limits) -> TestProxy {
    let server = Server::bind(config, limits).await.expect("proxy starts");
    let addr = server.local_addr();
    let admin = server.admin_addr();
    let reloader = server.reloader();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    TestProxy { addr, admin, reloader, stop: Some(stop), task: Some(task) }
}

/// An in-process HTTP/1.1 upstream on port 0 (with upgrades) running `handler`.
pub struct Upstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream { addr, task }
}

/// An upstream that answers every request with its method, path and request headers as
/// JSON-ish text lines (`name: value`), so tests can see what was forwarded.
pub async fn echo_upstream(name: &'static str) -> Upstream {
    upstream(move |req: Request<Incoming>| async move {
        let mut text = format!("upstream: {name}\nmethod: {}\npath: {}\n", req.method(), req.uri());
        for (k, v) in req.headers() {
            text.push_str(&format!("{}: {}\n", k, String::from_utf8_lossy(v.as_bytes())));
        }
        Response::new(full(text))
    })
    .await
}

/// A pooled HTTP/1.1 client.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge client.
pub fn h2_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

pub async fn get(url: &str) -> (http::StatusCode, http::HeaderMap, String) {
    send(Request::get(url).body(empty()).unwrap()).await
}

pub async fn send(req: Request<TestBody>) -> (http::StatusCode, http::HeaderMap, String) {
    let resp = client().request(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

/// The value of `name:` in an echo upstream's answer.
pub fn echoed<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

/// Sends raw bytes on a fresh connection and reads until the server closes or `limit` bytes.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
