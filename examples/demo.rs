//! The quick start: a tiny "legacy app" that knows nothing about cookies or Redis, with the
//! proxy in front of it on the embedded memory store.
//!
//! ```text
//! cargo run --example demo          # app on 127.0.0.1:3000, proxy on 127.0.0.1:8080, admin on 9901
//! cargo run --example demo -- --listen-addr 127.0.0.1:8081   # or LISTEN_ADDR=...; see --help
//! curl -c jar -b jar http://127.0.0.1:8080/            # visits: 1, 2, 3 ...
//! curl -i -c jar -b jar http://127.0.0.1:8080/account  # 302 to /login?next=%2Faccount
//! curl -i -c jar -b jar 'http://127.0.0.1:8080/login?name=ada&next=%2Faccount'
//! curl -c jar -b jar http://127.0.0.1:8080/account     # the account page of ada
//! curl -c jar -b jar http://127.0.0.1:8080/logout
//! ```
//!
//! The app reads the session from `x-session` and answers with `x-session-update`; the proxy
//! does everything else: `/account` is a route with `require = "/user"`, so only logged-in
//! sessions reach it, and the app reads who is logged in from the `x-user` identity header. It runs with the repository's `proxy.toml` (or `--config PATH`), whose
//! `${APP_ADDR}`, `${LISTEN_ADDR}` and `${ADMIN_ADDR}` the demo fills in from its flags (a port
//! of 0 takes a free one; the addresses in use are printed on start). Ctrl-C stops it.

use std::convert::Infallible;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use session_proxy::config::ConfigError;
use session_proxy::server::StartError;
use session_proxy::{Limits, Server};

/// The session-proxy demo: a small app that counts visits in its session, behind the proxy on
/// the embedded memory store.
#[derive(Parser)]
#[command(
    after_help = "Each address may also come from the environment variable named beside it; a port of 0 takes a free one.\nThe same variables set the addresses in the shipped proxy.toml when the proxy runs on its own."
)]
struct Args {
    /// Where the demo app listens; the shipped proxy.toml routes to it
    /// (upstream = "http://${APP_ADDR}").
    #[arg(long, env = "APP_ADDR", default_value = "127.0.0.1:3000")]
    app_addr: SocketAddr,
    /// Where the proxy listens (server.listen = "${LISTEN_ADDR}").
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    listen_addr: SocketAddr,
    /// The admin listener: /healthz, /readyz, /metrics (server.admin_listen = "${ADMIN_ADDR}").
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9901")]
    admin_addr: SocketAddr,
    /// The proxy's config file.
    #[arg(long, default_value = "proxy.toml")]
    config: PathBuf,
}

/// Where a port that is taken can be changed, for the error that says so.
const PORT_FLAGS: &str = "the demo's addresses are set with --app-addr, --listen-addr and --admin-addr (or APP_ADDR, LISTEN_ADDR, ADMIN_ADDR); see --help";

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Colours only on a terminal: escape codes would litter a file or a CI log.
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let hint = if matches!(&e, Failed::Start(StartError::Bind { .. })) {
                format!("; {PORT_FLAGS}")
            } else {
                String::new()
            };
            eprintln!("demo: {e}{hint}");
            ExitCode::FAILURE
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
}

async fn run(args: Args) -> Result<(), Failed> {
    let app = tokio::net::TcpListener::bind(args.app_addr).await.map_err(|source| StartError::Bind {
        addr: args.app_addr,
        key: "the demo app, --app-addr",
        source,
    })?;
    // With port 0 the app's real address is only known now, and the config needs it.
    let app_addr = app.local_addr().unwrap_or(args.app_addr);
    let text = std::fs::read_to_string(&args.config)
        .map_err(|source| ConfigError::Read { path: args.config.clone(), source })?;
    let config = session_proxy::config::from_toml_str_with_env(&text, |name| match name {
        "APP_ADDR" => Some(app_addr.to_string()),
        "LISTEN_ADDR" => Some(args.listen_addr.to_string()),
        "ADMIN_ADDR" => Some(args.admin_addr.to_string()),
        _ => std::env::var(name).ok(),
    })?;
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
    let proxy = server.local_addr();
    let admin = server.admin_addr().map_or_else(|| "off".to_owned(), |a| format!("http://{a}"));
    println!("demo app on http://{app_addr}; proxy on http://{proxy}; admin on {admin}");
    println!("try: curl -c jar -b jar http://{proxy}/");
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}

/// The legacy app: reads `x-session`, answers with `x-session-update` when it changes it.
async fn legacy_app(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let received = req.headers().get("x-session");
    let mut session: Map<String, Value> =
        received.and_then(|v| serde_json::from_slice(v.as_bytes()).ok()).unwrap_or_default();
    let query = req.uri().query().unwrap_or("");
    let mut resp = Response::builder().header("content-type", "text/plain; charset=utf-8");
    let path = req.uri().path();
    let text = match path {
        "/login" => {
            let Some(name) = param(query, "name").filter(|n| !n.is_empty()) else {
                // Where the proxy sends browsers that need a log-in, with `next`.
                let next = param(query, "next").unwrap_or_else(|| "/".to_owned());
                let body = format!("log in: /login?name=YOU&next={}\n", encode(&next));
                return Ok(resp.body(Full::new(Bytes::from(body))).unwrap_or_default());
            };
            session.insert("user".into(), json!(name));
            resp = resp.header("x-session-regenerate", "1");
            // Back where the browser was going: a path of this site only, never `//host`.
            if let Some(next) = param(query, "next").filter(|n| n.starts_with('/') && !n.starts_with("//")) {
                resp = resp.status(302).header("location", next);
            }
            format!("logged in as {name} (new session id issued)\n")
        }
        // A route with `require = "/user"` in `proxy.toml`: only logged-in sessions get here,
        // and the proxy names the user in the `x-user` identity header.
        "/account" => {
            let user = req.headers().get("x-user").and_then(|v| v.to_str().ok()).unwrap_or("?");
            let body = format!("account of {user} (from the x-user header)\n");
            return Ok(resp.body(Full::new(Bytes::from(body))).unwrap_or_default());
        }
        "/logout" => {
            resp = resp.header("x-session-update", "null");
            let body = "logged out (session destroyed)\n".to_string();
            return Ok(resp.body(Full::new(Bytes::from(body))).unwrap_or_default());
        }
        // Assets: `proxy.toml` routes these with `session = false`, so they arrive without a
        // session and never count as a visit.
        "/favicon.ico" | "/static/hello.txt" => {
            let seen =
                if received.is_some() { "a session (its route has session = true)" } else { "no session" };
            return Ok(resp.body(Full::new(Bytes::from(format!("{path}: {seen}\n")))).unwrap_or_default());
        }
        _ => {
            let visits = session.get("visits").and_then(Value::as_u64).unwrap_or(0) + 1;
            session.insert("visits".into(), json!(visits));
            let user = session.get("user").and_then(Value::as_str).unwrap_or("anonymous");
            format!("hello {user}: visits = {visits}\n")
        }
    };
    resp = resp.header("x-session-update", Value::Object(session).to_string());
    Ok(resp.body(Full::new(Bytes::from(text))).unwrap_or_default())
}

/// The percent-decoded value of `name` in a query string.
fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned())
    })
}

fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}
