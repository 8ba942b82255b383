//! The quick start: a tiny "legacy app" that knows nothing about cookies or Redis, with the
//! proxy in front of it on the embedded memory store.
//!
//! ```text
//! cargo run --example demo          # app on 127.0.0.1:3000, proxy on 127.0.0.1:8080
//! curl -c jar -b jar http://127.0.0.1:8080/            # visits: 1, 2, 3 ...
//! curl -c jar -b jar 'http://127.0.0.1:8080/login?name=ada'
//! curl -c jar -b jar http://127.0.0.1:8080/logout
//! ```
//!
//! The app reads the session from `x-session` and answers with `x-session-update`; the proxy
//! does everything else. It runs with the repository's `proxy.toml` (or `--config PATH`).

use std::convert::Infallible;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use session_proxy::{Limits, Server};

/// Where the demo app listens; `proxy.toml` routes to it.
const APP_ADDR: &str = "127.0.0.1:3000";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let config_path = std::env::args()
        .skip_while(|a| a != "--config")
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("proxy.toml"));
    let config = session_proxy::config::load(&config_path)?;

    let app = tokio::net::TcpListener::bind(APP_ADDR).await?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = app.accept().await {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(legacy_app))
                    .await;
            });
        }
    });

    let server = Server::bind(config, Limits::default()).await?;
    println!("demo app on http://{APP_ADDR}; proxy on http://{}", server.local_addr());
    println!("try: curl -c jar -b jar http://{}/", server.local_addr());
    session_proxy::signals::run_with_signals(server, config_path).await?;
    Ok(())
}

/// The legacy app: reads `x-session`, answers with `x-session-update` when it changes it.
async fn legacy_app(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut session: Map<String, Value> = req
        .headers()
        .get("x-session")
        .and_then(|v| serde_json::from_slice(v.as_bytes()).ok())
        .unwrap_or_default();
    let query = req.uri().query().unwrap_or("");
    let mut resp = Response::builder().header("content-type", "text/plain; charset=utf-8");
    let text = match req.uri().path() {
        "/login" => {
            let name = query.strip_prefix("name=").unwrap_or("guest");
            session.insert("user".into(), json!(name));
            resp = resp.header("x-session-regenerate", "1");
            format!("logged in as {name} (new session id issued)\n")
        }
        "/logout" => {
            resp = resp.header("x-session-update", "null");
            let body = "logged out (session destroyed)\n".to_string();
            return Ok(resp.body(Full::new(Bytes::from(body))).unwrap_or_default());
        }
        "/static/hello.txt" => "static file: no session here\n".to_string(),
        _ => {
            let visits = session.get("visits").and_then(Value::as_u64).unwrap_or(0) + 1;
            session.insert("visits".into(), json!(visits));
            let user = session.get("user").and_then(Value::as_str).unwrap_or("anonymous");
            format!("hello {user}: visits = {visits}\n")
        }
    };
    if req.uri().path() != "/static/hello.txt" {
        resp = resp.header("x-session-update", Value::Object(session).to_string());
    }
    Ok(resp.body(Full::new(Bytes::from(text))).unwrap_or_default())
}
