//! Forwarding: one request from the client, through the session seam, to the upstream and
//! back. Every failure maps to one status code here (404, 502, 503, 504).

pub(crate) mod body;
pub(crate) mod client;
pub(crate) mod headers;
pub(crate) mod upgrade;

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::config::OnStoreError;
use crate::route::{self, Route};
use crate::server::{App, Shared};
use crate::session::{protocol, Loaded, SaveError, SessionEvent, StoreCalls};
use body::{BodyWatch, ProxyBody, RequestBodyError, UpstreamBody};
use client::{PooledBody, UpstreamError};
use headers::X_REQUEST_ID;
use upgrade::Handover;

/// What one request did, for its access-log line.
struct Outcome {
    status: StatusCode,
    route: Option<Arc<Route>>,
    session: SessionEvent,
    store_time: Duration,
    upstream_time: Option<Duration>,
}

/// Handles one client request. Never fails: every error becomes a response. `handover` is the
/// HTTP/1 connection's, for upgrades; `None` on HTTP/2, which has none.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    client_ip: &HeaderValue,
    handover: Option<&Handover>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let request_id = headers::request_id(req.headers());
    // Requests in flight keep the config they started with when a reload swaps it.
    let app = shared.app.load_full();
    let mut out = Outcome {
        status: StatusCode::OK,
        route: None,
        session: SessionEvent::None,
        store_time: Duration::ZERO,
        upstream_time: None,
    };
    // For the access log, when it is on; a `Uri` clone shares the bytes hyper parsed.
    let logged = tracing::enabled!(target: "access", tracing::Level::INFO)
        .then(|| (req.method().clone(), req.uri().clone()));

    let mut resp = forward(&shared, &app, req, client_ip, handover, &request_id, &mut out).await;
    resp.headers_mut().insert(&X_REQUEST_ID, request_id.clone());
    out.status = resp.status();
    let elapsed = start.elapsed();

    shared.metrics.observe_request(
        out.route.as_deref().map(|r| &r.metrics),
        out.status,
        elapsed,
        out.upstream_time,
        out.session,
    );
    if let Some((method, uri)) = logged {
        tracing::info!(
            target: "access",
            request_id = %rid(&request_id),
            method = %method,
            path = %uri.path(),
            status = out.status.as_u16(),
            duration_ms = ms(elapsed),
            route = %out.route.as_deref().map_or("-", |r| r.prefix.as_str()),
            session = %out.session.as_str(),
            store_ms = ms(out.store_time),
            upstream_ms = out.upstream_time.map(ms),
        );
    }
    resp
}

/// The request id for log lines; ids are checked to be visible ASCII when taken or made.
fn rid(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("-")
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

async fn forward(
    shared: &Shared,
    app: &App,
    mut req: Request<Incoming>,
    client_ip: &HeaderValue,
    handover: Option<&Handover>,
    request_id: &HeaderValue,
    out: &mut Outcome,
) -> Response<ProxyBody> {
    let session_cfg = app.session.config();
    // Always, on every route: a client can never forge a session.
    let forged = protocol::strip_protocol_headers(
        req.headers_mut(),
        &[&session_cfg.header, &session_cfg.update_header, &session_cfg.regenerate_header],
    );
    if forged > 0 {
        shared.metrics.forged_headers_removed(forged);
    }

    // HTTP/2 carries the host in the URI; HTTP/1 in `Host`.
    let host_header = req.headers().get(header::HOST).cloned();
    let from_header = host_header.is_some();
    let host =
        host_header.or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    let Some(route) = app.routes.find(host.as_ref().and_then(|h| h.to_str().ok()), req.uri().path()) else {
        return status_response(StatusCode::NOT_FOUND, "404 Not Found\n");
    };
    out.route = Some(route.clone());

    // Hop-by-hop headers go before the session header is added: a client listing
    // `x-session` in `Connection` must not make the proxy drop the session it sets.
    // Upgrades exist on HTTP/1.1 only, whose connections pass their handover.
    let upgrade =
        handover.is_some() && req.version() == Version::HTTP_11 && headers::wants_upgrade(req.headers());
    headers::remove_hop_by_hop(req.headers_mut(), upgrade);

    // Request side of the session seam.
    let mut store = StoreCalls::new(&shared.store, &shared.metrics);
    let loaded = if route.session {
        let loaded = app.session.load(&mut store, req.headers_mut(), rid(request_id)).await;
        out.store_time = store.elapsed;
        match loaded {
            Ok(loaded) => {
                if loaded.cookie_rejected {
                    shared.metrics.cookie_rejected();
                }
                Some(loaded)
            }
            Err(e) => {
                shared.metrics.store_error(&e.error);
                match session_cfg.on_store_error {
                    OnStoreError::Fail => {
                        tracing::warn!(request_id = %rid(request_id), error = %e.error, "session store read failed; answering 503");
                        return store_unavailable();
                    }
                    OnStoreError::Pass => {
                        tracing::warn!(request_id = %rid(request_id), error = %e.error, "session store read failed; forwarding without a session");
                        Some(Loaded::unknown(e.id))
                    }
                }
            }
        }
    } else {
        None
    };

    let client_upgrade = handover.filter(|_| upgrade).map(Handover::expect);
    let (upstream_req, body_watch) =
        build_upstream_request(shared, req, route, client_ip, (host.as_ref(), from_header), request_id);

    let upstream_start = Instant::now();
    let result =
        send_with_timeout(shared, upstream_req, &route.authority, body_watch, app.upstream_timeout).await;
    out.upstream_time = Some(upstream_start.elapsed());
    let mut resp = match result {
        Ok(resp) => resp,
        Err(UpstreamFailure { status, reason }) => {
            tracing::warn!(request_id = %rid(request_id), route = %route.prefix, status = status.as_u16(), reason = %reason, "upstream failed");
            return status_response(status, status_text(status));
        }
    };

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::remove_hop_by_hop(resp.headers_mut(), switching && upgrade);

    // Response side of the session seam.
    if let Some(loaded) = loaded {
        let saved = app.session.save(&mut store, loaded, resp.headers_mut()).await;
        out.store_time = store.elapsed;
        match saved {
            Ok(event) => {
                out.session = event;
            }
            Err(SaveError::BadUpdate(e)) => {
                tracing::warn!(request_id = %rid(request_id), route = %route.prefix, error = %e, "upstream sent a bad session update; nothing written");
                return status_response(StatusCode::BAD_GATEWAY, "502 Bad Gateway\n");
            }
            Err(SaveError::Store(e)) => {
                shared.metrics.store_error(&e);
                tracing::warn!(request_id = %rid(request_id), route = %route.prefix, error = %e, "session store write failed; answering 503");
                return store_unavailable();
            }
        }
    }
    // The protocol headers never reach the client, on any route, in any spelling.
    protocol::strip_protocol_headers(
        resp.headers_mut(),
        &[&session_cfg.update_header, &session_cfg.regenerate_header],
    );

    if switching {
        match client_upgrade {
            Some(client) => upgrade::tunnel(client, hyper::upgrade::on(&mut resp), request_id.clone()),
            None => {
                tracing::warn!(
                    request_id = %rid(request_id),
                    "upstream switched protocols without being asked"
                );
                return status_response(StatusCode::BAD_GATEWAY, "502 Bad Gateway\n");
            }
        }
    }
    resp.map(http_body_util::Either::Left)
}

type UpstreamRequest = (Request<UpstreamBody>, Option<BodyWatch>);

/// The request as the upstream gets it: origin-form target (the route's path, stripped if
/// configured), HTTP/1.1, forwarding headers and request id set, `Host` kept. The caller has
/// already removed the hop-by-hop headers. `host` is the host the client asked for and
/// whether the request's `Host` header said so (else its URI did).
fn build_upstream_request(
    shared: &Shared,
    req: Request<Incoming>,
    route: &Route,
    client_ip: &HeaderValue,
    (host, from_header): (Option<&HeaderValue>, bool),
    request_id: &HeaderValue,
) -> UpstreamRequest {
    let path = route::upstream_path(route, req.uri().path_and_query());
    let (mut parts, body) = req.into_parts();
    parts.uri = Uri::from(path);
    parts.version = Version::HTTP_11;
    // The server's extensions (connection info, upgrade handles) mean nothing upstream.
    parts.extensions = http::Extensions::new();
    let h = &mut parts.headers;
    headers::set_forwarded(h, client_ip, shared.https, host);
    // HTTP/2 requests have no `Host` header (nor may an HTTP/1 request in absolute form);
    // the upstream speaks HTTP/1.1 and needs one.
    if let (Some(host), false) = (host, from_header) {
        h.insert(header::HOST, host.clone());
    }
    h.insert(&X_REQUEST_ID, request_id.clone());
    let (body, watch) = UpstreamBody::new(body, shared.body_idle_timeout);
    (Request::from_parts(parts, body), watch)
}

/// Why forwarding failed: the status to answer and, for the log line, why.
struct UpstreamFailure {
    status: StatusCode,
    reason: String,
}

/// Sends to the upstream; `upstream_timeout` counts from the end of the request body to the
/// response headers, and also bounds how long the upstream may leave the body unread (an
/// upstream that stops reading would otherwise hold the request forever). `body` is `None`
/// for a request whose body was complete from the start. Failures answer 502 (refused, reset,
/// garbage), 504 (timed out, or the upstream stopped reading the body), or 408 (the client
/// stopped sending its body).
async fn send_with_timeout(
    shared: &Shared,
    req: Request<UpstreamBody>,
    upstream: &Authority,
    body: Option<BodyWatch>,
    timeout: Duration,
) -> Result<Response<PooledBody>, UpstreamFailure> {
    const NO_HEADERS: &str = "no response headers within upstream_timeout_ms";
    let Some(BodyWatch { sent, stall }) = body else {
        // Most requests: no body to watch, so one timer from now. The send future is made in
        // place, inside the timeout, rather than made first and moved in.
        return match tokio::time::timeout(timeout, shared.client.send(req, upstream)).await {
            Ok(res) => res.map_err(upstream_failure),
            Err(_) => {
                Err(UpstreamFailure { status: StatusCode::GATEWAY_TIMEOUT, reason: NO_HEADERS.to_string() })
            }
        };
    };
    let deadline = async {
        tokio::select! {
            // Checked first: a body sent in full by then starts no watchdog timer.
            biased;
            sent = sent => {
                // A dropped sender means the body will never finish; the request ends first.
                if sent.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            () = stall.upstream_stalled(timeout) => {
                return "the upstream stopped reading the request body";
            }
        }
        tokio::time::sleep(timeout).await;
        NO_HEADERS
    };
    tokio::select! {
        res = shared.client.send(req, upstream) => res.map_err(upstream_failure),
        reason = deadline => Err(UpstreamFailure { status: StatusCode::GATEWAY_TIMEOUT, reason: reason.to_string() }),
    }
}

fn upstream_failure(e: UpstreamError) -> UpstreamFailure {
    let status = if client_body_idle(&e) {
        StatusCode::REQUEST_TIMEOUT
    } else if e.is_timeout() {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    };
    let reason = match e.source() {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    };
    UpstreamFailure { status, reason }
}

/// The request failed because the client stopped sending its body (not the upstream's fault).
fn client_body_idle(e: &UpstreamError) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if matches!(s.downcast_ref::<RequestBodyError>(), Some(RequestBodyError::Idle(_))) {
            return true;
        }
        source = s.source();
    }
    false
}

fn status_text(status: StatusCode) -> &'static str {
    match status {
        StatusCode::GATEWAY_TIMEOUT => "504 Gateway Timeout\n",
        StatusCode::SERVICE_UNAVAILABLE => "503 Service Unavailable\n",
        StatusCode::REQUEST_TIMEOUT => "408 Request Timeout\n",
        _ => "502 Bad Gateway\n",
    }
}

/// 503 for a store that failed: the client may retry in a second.
fn store_unavailable() -> Response<ProxyBody> {
    let mut resp = status_response(StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable\n");
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

pub(crate) fn status_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(body::local(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
