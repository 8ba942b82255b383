//! Forwarding: one request from the client, through the session seam, to the upstream and
//! back.
//!
//! The server calls [`Proxy::handle`] for every request. A worker's `Proxy` owns what a request
//! needs: the routes and session settings of the current config generation ([`App`], swapped
//! whole on reload), the upstream client, the store and the metrics. Every failure is a
//! [`Failure`] whose `status()` is the README's error table (`error`).

pub(crate) mod client;
pub(crate) mod error;
pub(crate) mod headers;
pub(crate) mod request_body;
pub(crate) mod response;
pub(crate) mod secure_cookie;
pub(crate) mod upgrade;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::config::{AdminToken, Config};
use crate::metrics::Metrics;
use crate::route::{self, Route, RouteTable};
use crate::session::{protocol, SessionEvent, SessionLayer};
use crate::store::Store;
use client::{PooledBody, UpstreamClient, UpstreamError};
pub(crate) use error::Failure;
use headers::X_REQUEST_ID;
use http_body_util::Either;
use request_body::{BodyWatch, StallWatch, UpstreamBody};
pub(crate) use response::ProxyBody;
use response::Streamed;
use secure_cookie::SecureCookieWarning;

/// The part of the config that a reload swaps in at once; requests in flight keep the
/// generation they started with.
pub(crate) struct App {
    pub routes: RouteTable,
    pub session: SessionLayer,
    pub upstream_timeout: Duration,
    /// `server.admin_token`: enables the admin listener's session management endpoints.
    pub admin_token: Option<AdminToken>,
}

impl App {
    pub(crate) fn new(config: &Config, metrics: &Arc<Metrics>) -> App {
        App {
            routes: RouteTable::new(&config.routes, metrics),
            session: SessionLayer::new(&config.session, &config.store.key_prefix, metrics),
            upstream_timeout: config.server.upstream_timeout,
            admin_token: config.server.admin_token.clone(),
        }
    }
}

/// One worker's proxy. The app and the metrics are the same for all workers; the upstream
/// pool and the store connections are the worker's own.
pub(crate) struct Proxy {
    /// One for the whole server: a reload swaps it for every worker at once.
    pub app: Arc<ArcSwap<App>>,
    /// Pooled keep-alive HTTP/1.1 client to the upstreams; its connections live on this
    /// worker.
    pub client: UpstreamClient,
    /// This worker's Redis connections (or the one shared memory store).
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Whether clients reach us over HTTPS (for `X-Forwarded-Proto`).
    pub https: bool,
    /// One for the whole server: a `Secure` cookie set on plain HTTP is logged once.
    pub secure_cookie: Arc<SecureCookieWarning>,
    /// A request body that sends nothing for this long is cut (`Limits::body_idle_timeout`).
    pub body_idle_timeout: Duration,
}

/// What the proxy knows of the client connection a request came on.
#[derive(Clone)]
pub(crate) struct ConnInfo {
    /// The client's address, made once per connection for `X-Forwarded-For`.
    pub client_ip: HeaderValue,
}

/// What one request did, for its access-log line.
struct Outcome {
    route: Option<Arc<Route>>,
    session: SessionEvent,
    store_time: Duration,
    upstream_time: Option<Duration>,
}

impl Proxy {
    /// Handles one client request. Never fails: every error becomes a response.
    pub(crate) async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<ProxyBody> {
        let start = Instant::now();
        let request_id = headers::request_id(req.headers());
        // Requests in flight keep the config they started with when a reload swaps it.
        let app = self.app.load_full();
        let mut out = Outcome {
            route: None,
            session: SessionEvent::None,
            store_time: Duration::ZERO,
            upstream_time: None,
        };
        let logged = logged(&req);
        let mut resp = match self.forward(&app, req, conn, &request_id, &mut out).await {
            Ok(resp) => resp,
            Err(failure) => failed(&failure, &request_id, &out),
        };
        self.finish(&mut resp, start, request_id, &out, logged);
        resp
    }

    /// Answers a request the connection refused before it reached [`Proxy::handle`] (its
    /// framing), logged and counted like any other failure.
    pub(crate) fn refuse(&self, req: Request<Incoming>, failure: Failure) -> Response<ProxyBody> {
        let start = Instant::now();
        let request_id = headers::request_id(req.headers());
        let out = Outcome {
            route: None,
            session: SessionEvent::None,
            store_time: Duration::ZERO,
            upstream_time: None,
        };
        let logged = logged(&req);
        let mut resp = failed(&failure, &request_id, &out);
        self.finish(&mut resp, start, request_id, &out, logged);
        resp
    }

    /// The last touches of every response: the request id, the metrics and the access log.
    fn finish(
        &self,
        resp: &mut Response<ProxyBody>,
        start: Instant,
        request_id: HeaderValue,
        out: &Outcome,
        logged: Option<(http::Method, Uri)>,
    ) {
        let status = resp.status();
        let elapsed = start.elapsed();

        self.metrics.observe_request(
            out.route.as_deref().map(|r| &r.metrics),
            status,
            elapsed,
            out.upstream_time,
        );
        if let Some((method, uri)) = logged {
            tracing::info!(
                target: "access",
                request_id = %rid(&request_id),
                method = %method,
                path = %uri.path(),
                status = status.as_u16(),
                duration_ms = ms(elapsed),
                route = %out.route.as_deref().map_or("-", |r| r.prefix.as_str()),
                session = %out.session.as_str(),
                store_ms = ms(out.store_time),
                upstream_ms = out.upstream_time.map(ms),
            );
        }
        resp.headers_mut().insert(&X_REQUEST_ID, request_id);
    }

    async fn forward(
        &self,
        app: &App,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
        out: &mut Outcome,
    ) -> Result<Response<ProxyBody>, Failure> {
        // A request with a body: only a lone `chunked` coding is passed on (most requests have
        // no body, and no header lookup).
        if !http_body::Body::is_end_stream(req.body()) && headers::transfer_coding_refused(req.headers()) {
            return Err(Failure::BadFraming("a Transfer-Encoding other than a lone chunked"));
        }
        // Always, on every route: a client can never forge a session or an identity header.
        let forged = protocol::strip_protocol_headers(req.headers_mut(), app.session.request_strip());
        if forged > 0 {
            self.metrics.forged_headers_removed(forged);
        }

        // HTTP/2 carries the host in the URI; HTTP/1 in `Host`.
        let host_header = req.headers().get(header::HOST).cloned();
        let from_header = host_header.is_some();
        let host = host_header
            .or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        let route = app
            .routes
            .find(host.as_ref().and_then(|h| h.to_str().ok()), req.uri().path())
            .ok_or(Failure::NoRoute)?;
        out.route = Some(route.clone());

        // Hop-by-hop headers go before the session header is added: a client listing
        // `x-session` in `Connection` must not make the proxy drop the session it sets.
        // Upgrades exist on HTTP/1.1 only.
        let upgrade = req.version() == Version::HTTP_11 && headers::wants_upgrade(req.headers());
        headers::remove_hop_by_hop(req.headers_mut(), upgrade);

        // Before `X-Forwarded-Proto` is replaced: would a `Secure` cookie set on this request
        // be dropped by the browser (and is that still to be said)?
        let plain_http = route.session
            && app.session.config().secure
            && self.secure_cookie.plain_http(self.https, req.headers());

        // Request side of the session seam.
        let mut store = app.session.calls(&self.store);
        let session = if route.session {
            let loaded = app.session.load(&mut store, req.headers_mut(), rid(request_id)).await;
            out.store_time = store.elapsed;
            let state = loaded.map_err(Failure::StoreRead)?;
            if !app.session.admit(&state, route.require.as_ref(), req.headers_mut()) {
                return Err(self.refuse_unmet(app, &req, route));
            }
            Some(state)
        } else {
            None
        };

        // Taken before the request goes on, as hyper requires: the client's side of a switch.
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (upstream_req, body_watch) =
            self.upstream_request(req, route, conn, (host.as_ref(), from_header), request_id);

        let upstream_start = Instant::now();
        let result = self.send(upstream_req, route, body_watch, app.upstream_timeout).await;
        out.upstream_time = Some(upstream_start.elapsed());
        let mut resp = result?;

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::remove_hop_by_hop(resp.headers_mut(), switching && upgrade);

        // Response side of the session seam.
        if let Some(session) = session {
            let saved = app.session.save(&mut store, session, resp.headers_mut(), rid(request_id)).await;
            out.store_time = store.elapsed;
            let saved = saved?;
            out.session = saved.event;
            if plain_http && saved.cookie_set {
                self.secure_cookie.cookie_set(host.as_ref(), rid(request_id));
            }
        }
        // The protocol headers never reach the client, on any route, in any spelling.
        protocol::strip_protocol_headers(resp.headers_mut(), app.session.response_strip());

        if switching {
            let client = client_upgrade.ok_or(Failure::UnaskedUpgrade)?;
            upgrade::tunnel(client, hyper::upgrade::on(&mut resp), request_id.clone());
        }
        let read_timeout = route.read_timeout;
        Ok(resp.map(|body| Either::Left(Streamed::new(body, read_timeout, request_id.clone()))))
    }

    /// A request whose session does not meet its route's `require`: a browser navigation
    /// (GET or HEAD accepting HTML) is sent to `session.login_url`, with its own path and query
    /// as `next`; anything else is refused.
    fn refuse_unmet(&self, app: &App, req: &Request<Incoming>, route: &Route) -> Failure {
        let navigation =
            matches!(*req.method(), Method::GET | Method::HEAD) && headers::accepts_html(req.headers());
        let login = app.session.config().login_url.as_deref().filter(|_| navigation);
        match login.and_then(|url| headers::login_location(url, req.uri())) {
            Some(location) => {
                route.metrics.refused_redirect.inc();
                Failure::LoginRequired(location)
            }
            None => {
                route.metrics.refused_unauthorized.inc();
                Failure::Unauthorized
            }
        }
    }

    /// The request as the upstream gets it: origin-form target (the route's path, stripped if
    /// configured), HTTP/1.1, forwarding headers and request id set, `Host` kept. The caller
    /// has already removed the hop-by-hop headers. `host` is the host the client asked for and
    /// whether the request's `Host` header said so (else its URI did).
    fn upstream_request(
        &self,
        req: Request<Incoming>,
        route: &Route,
        conn: &ConnInfo,
        (host, from_header): (Option<&HeaderValue>, bool),
        request_id: &HeaderValue,
    ) -> (Request<UpstreamBody>, Option<BodyWatch>) {
        let path = route::upstream_path(route, req.uri().path_and_query());
        let (mut parts, body) = req.into_parts();
        parts.uri = Uri::from(path);
        parts.version = Version::HTTP_11;
        // The server's extensions (connection info, upgrade handles) mean nothing upstream.
        parts.extensions = http::Extensions::new();
        let h = &mut parts.headers;
        headers::set_forwarded(h, &conn.client_ip, self.https, host);
        // HTTP/2 requests have no `Host` header (nor may an HTTP/1 request in absolute form);
        // the upstream speaks HTTP/1.1 and needs one.
        if let (Some(host), false) = (host, from_header) {
            h.insert(header::HOST, host.clone());
        }
        h.insert(&X_REQUEST_ID, request_id.clone());
        let (body, watch) = UpstreamBody::new(body, self.body_idle_timeout);
        (Request::from_parts(parts, body), watch)
    }

    /// Sends to the upstream; `timeout` (`upstream_timeout_ms`) counts from the end of the
    /// request body to the response headers, and also bounds how long the upstream may leave
    /// the body unread (an upstream that stops reading would otherwise hold the request
    /// forever). `body` is `None` for a request whose body was complete from the start.
    async fn send(
        &self,
        req: Request<UpstreamBody>,
        route: &Route,
        body: Option<BodyWatch>,
        timeout: Duration,
    ) -> Result<Response<PooledBody>, Failure> {
        const NO_HEADERS: &str = "no response headers within upstream_timeout_ms";
        let Some(BodyWatch { sent, stall }) = body else {
            // Most requests: no body to watch, so one timer from now. The send future is made
            // in place, inside the timeout, rather than made first and moved in.
            return match tokio::time::timeout(timeout, self.client.send(req, &route.authority)).await {
                Ok(res) => res.map_err(|e| self.upstream_failure(e, None)),
                Err(_) => Err(Failure::UpstreamTimeout(NO_HEADERS)),
            };
        };
        let deadline = async {
            tokio::select! {
                // Checked first: a body sent in full by then starts no watchdog timer.
                biased;
                sent = sent => {
                    // A dropped sender means the body will never finish; the request ends
                    // first.
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
            res = self.client.send(req, &route.authority) => res.map_err(|e| self.upstream_failure(e, Some(&stall))),
            reason = deadline => Err(Failure::UpstreamTimeout(reason)),
        }
    }

    /// What a failed send means: the client stopped sending its body (not the upstream's
    /// fault), the upstream did not answer in time, or it failed.
    fn upstream_failure(&self, e: UpstreamError, body: Option<&StallWatch>) -> Failure {
        if body.is_some_and(StallWatch::client_went_idle) {
            Failure::ClientBodyIdle(self.body_idle_timeout)
        } else if e.timed_out() {
            Failure::UpstreamTimeout("connecting timed out")
        } else {
            Failure::Upstream(e)
        }
    }
}

/// The proxy's own answer to a failed request, logged with the request id and route.
fn failed(failure: &Failure, request_id: &HeaderValue, out: &Outcome) -> Response<ProxyBody> {
    failure.log(rid(request_id), out.route.as_deref().map_or("-", |r| r.prefix.as_str()));
    failure.response()
}

/// The method and target for the access log, when it is on; a `Uri` clone shares the bytes
/// hyper parsed.
fn logged(req: &Request<Incoming>) -> Option<(http::Method, Uri)> {
    tracing::enabled!(target: "access", tracing::Level::INFO)
        .then(|| (req.method().clone(), req.uri().clone()))
}

/// The request id for log lines; ids are checked to be visible ASCII when taken or made.
fn rid(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("-")
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}
