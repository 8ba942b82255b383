//! The admin listener (`server.admin_listen`), never the public one: `/healthz` (the process
//! serves), `/readyz` (the store answers a PING within its timeout, and the server is not
//! draining), `/metrics` (OpenMetrics text, which Prometheus scrapes) and, with
//! `server.admin_token`, the session management endpoints (`sessions`).
//!
//! The public listener never routes to these: `/healthz` there is an ordinary request for the
//! upstream, so nothing about the process leaks to clients.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::{Admitted, Gate};
use crate::metrics::{Counter, Histogram, Metrics, StoreErrorCounters};
use crate::proxy::App;
use crate::store::{Store, StoreError};
use reply::{text, AdminBody};
use sessions::Target;

mod reply;
mod sessions;

/// Admin clients are probes and scrapers; they get the same slowloris bound as the public side.
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// After a failed `accept` (usually out of file descriptors), wait before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Open admin connections at most: probes and scrapers need a handful, and a flood of them
/// must not eat the file descriptors the public listener counts on. At the cap, accepting
/// pauses until one closes (idle ones close after [`ADMIN_HEADER_READ_TIMEOUT`]).
pub(crate) const MAX_CONNECTIONS: usize = 32;

/// What `prometheus-client` writes: the OpenMetrics text format, which Prometheus negotiates
/// and parses (a plain `text/plain; version=0.0.4` label would misdescribe the `# EOF` and
/// `_total` conventions).
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin endpoints read.
pub(crate) struct AdminState {
    pub metrics: Arc<Metrics>,
    /// Every worker's store: `/readyz` is ready only when each of them answers.
    pub stores: Vec<Store>,
    /// Set once shutdown begins: `/readyz` then answers 503 so a load balancer stops sending
    /// new requests while the in-flight ones finish.
    pub draining: Arc<AtomicBool>,
    /// The config generation in effect: its admin token and session layer.
    pub app: Arc<ArcSwap<App>>,
    /// `/readyz`'s PING, timed and counted like every store command.
    ping: Histogram,
    errors: StoreErrorCounters,
    /// Session management requests refused for a missing or wrong token.
    unauthorized: Counter,
}

impl AdminState {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        stores: Vec<Store>,
        draining: Arc<AtomicBool>,
        app: Arc<ArcSwap<App>>,
    ) -> AdminState {
        let ping = metrics.store_command("ping");
        let errors = metrics.store_errors(&StoreError::KINDS);
        let unauthorized = metrics.admin_unauthorized();
        AdminState { metrics, stores, draining, app, ping, errors, unauthorized }
    }
}

/// Serves the admin endpoints until `stop` turns true.
pub(crate) async fn serve(listener: TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(addr = %addr, "admin listening");
    }
    let gate = Gate::new(MAX_CONNECTIONS, "admin", &state.metrics, None);
    loop {
        let ticket = tokio::select! {
            ticket = gate.admit() => ticket,
            _ = stop.changed() => return,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(Admitted::new(stream, ticket)), service);
            let _ = conn.await;
        });
    }
}

async fn route(state: &AdminState, req: Request<Incoming>) -> Response<AdminBody> {
    if let Some(target) = Target::of(req.uri().path()) {
        let app = state.app.load_full();
        // Any worker's store will do: each reaches the same Redis (or the one memory map).
        let Some(store) = state.stores.first() else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "no session store\n");
        };
        return sessions::serve(req.method(), req.headers(), target, &app, store, &state.unauthorized).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readyz(state).await,
        "/metrics" => {
            reply::with_type(StatusCode::OK, Bytes::from(state.metrics.encode()), METRICS_CONTENT_TYPE)
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// 200 while the store answers a PING on every worker's connections (at once, so one probe
/// takes one round trip). The PING is bounded by the store timeout (a stalled Redis gives 503
/// after `store.timeout_ms`, never a hung probe); it is timed and its errors counted like any
/// store command, so the metrics show an outage even without traffic.
async fn readyz(state: &AdminState) -> Response<AdminBody> {
    if state.draining.load(Ordering::Relaxed) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down\n");
    }
    let start = Instant::now();
    let pings = futures_util::future::join_all(state.stores.iter().map(Store::ping)).await;
    state.ping.observe(start.elapsed().as_secs_f64());
    match pings.into_iter().find_map(Result::err) {
        None => text(StatusCode::OK, "ready\n"),
        Some(e) => {
            state.errors.count(e.kind());
            text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: session store: {e}\n"))
        }
    }
}
