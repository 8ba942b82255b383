//! The server: binds the listeners, accepts connections (served by `conn`: plain or TLS,
//! HTTP/1.1 or HTTP/2, through `proxy::handle`), swaps the config on reload and drains on
//! shutdown.
//!
//! Like mini-redis, [`Server::bind`] returns a value whose addresses tests can read (bind to
//! port 0), and [`Server::run`] takes the shutdown signal as a future.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::proxy::body::UpstreamBody;
use crate::route::RouteTable;
use crate::session::SessionLayer;
use crate::store::{Store, StoreError};
use crate::tls::{Tls, TlsError};

mod conn;

use conn::{Connection, Serving};

/// Timeouts and limits that are not in `proxy.toml`. The defaults suit production; tests
/// shorten them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A client must send a request's complete headers within this time, and an idle
    /// keep-alive connection is closed after it: the wait for the next request and its head
    /// count together, across parks (see `conn`). Bounds slowloris clients.
    pub header_read_timeout: Duration,
    /// TCP connect to an upstream; past it the request gets 504.
    pub upstream_connect_timeout: Duration,
    /// Idle pooled upstream connections are closed after this.
    pub upstream_pool_idle_timeout: Duration,
    /// A TLS client must finish its handshake within this time.
    pub tls_handshake_timeout: Duration,
    /// HTTP/2 pings on an idle connection every this often; a peer that does not answer
    /// within the same time is dropped.
    pub http2_keep_alive: Duration,
    /// Largest request head (HTTP/1 read buffer, HTTP/2 header list). Larger gets 431.
    pub max_header_bytes: usize,
    /// A request body that sends nothing for this long is cut: the upstream request is
    /// aborted and the client gets 408. Bounds clients that stop in the middle of a body
    /// (hyper has no body timeout; `upstream_timeout_ms` starts only after the body).
    pub body_idle_timeout: Duration,
}

/// 10 s is plenty for a real client to send its headers and short for a slowloris.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_UPSTREAM_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// 64 KiB of request head: far above real browsers, small enough to bound memory per client.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// As nginx's `client_body_timeout`: far longer than any pause of a real upload.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// After a failed `accept` (usually out of file descriptors), wait before trying again.
pub(crate) const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            upstream_connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
            upstream_pool_idle_timeout: DEFAULT_UPSTREAM_POOL_IDLE_TIMEOUT,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            http2_keep_alive: DEFAULT_HTTP2_KEEP_ALIVE,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("session store: {0}")]
    Store(#[from] StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

/// Why a reload was refused; the running config stays in place, whole.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new certificate or key does not load (the old one keeps being served).
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The part of the config that a reload swaps in at once; requests in flight keep the
/// generation they started with.
pub(crate) struct App {
    pub routes: RouteTable,
    pub session: SessionLayer,
    pub upstream_timeout: Duration,
}

impl App {
    fn new(config: &Config, metrics: &Metrics) -> App {
        App {
            routes: RouteTable::new(&config.routes, metrics),
            session: SessionLayer::new(&config.session, &config.store.key_prefix),
            upstream_timeout: config.server.upstream_timeout,
        }
    }
}

/// What every connection shares.
pub(crate) struct Shared {
    pub app: ArcSwap<App>,
    /// Pooled keep-alive HTTP/1.1 client to the upstreams.
    pub client: Client<HttpConnector, UpstreamBody>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Whether clients reach us over HTTPS (for `X-Forwarded-Proto`).
    pub https: bool,
    /// Set once shutdown begins: `/readyz` then answers 503 so a load balancer stops sending
    /// new requests while the in-flight ones finish.
    pub draining: AtomicBool,
    /// [`Limits::body_idle_timeout`], for every request body sent upstream.
    pub body_idle_timeout: Duration,
}

/// A bound, ready-to-run proxy.
pub struct Server {
    listener: TcpListener,
    admin: Option<TcpListener>,
    tls: Option<Tls>,
    shared: Arc<Shared>,
    limits: Limits,
    reloader: Reloader,
}

impl Server {
    /// Binds the listeners and builds the store (which starts even while Redis is down).
    pub async fn bind(config: Config, limits: Limits) -> Result<Server, StartError> {
        let tls = match &config.server.tls {
            Some(files) => Some(Tls::load(files)?),
            None => None,
        };
        let listener = bind(config.server.listen).await?;
        let admin = match config.server.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let store = Store::connect(&config.store).await?;
        let metrics = Arc::new(Metrics::new());

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(limits.upstream_connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(limits.upstream_pool_idle_timeout)
            .build(connector);

        let shared = Arc::new(Shared {
            app: ArcSwap::from_pointee(App::new(&config, &metrics)),
            client,
            store,
            metrics,
            https: tls.is_some(),
            draining: AtomicBool::new(false),
            body_idle_timeout: limits.body_idle_timeout,
        });
        let reloader =
            Reloader { shared: shared.clone(), tls: tls.clone(), current: Arc::new(Mutex::new(config)) };
        Ok(Server { listener, admin, tls, shared, limits, reloader })
    }

    /// The address the proxy listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The admin listener's address, when one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// A handle that swaps in a new config (SIGHUP).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
    /// within `shutdown_grace_ms` (as last reloaded), and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server { listener, admin, tls, shared, limits, reloader } = self;
        let tls = tls.map(|t| t.acceptor());
        let serving = Arc::new(Serving::new(shared.clone(), tls, limits));
        // Every connection holds a receiver; the drain ends when the last one is dropped.
        let (stop, stopping) = watch::channel(false);
        let (admin_stop, admin_stopped) = watch::channel(false);
        let admin_task = admin.map(|l| tokio::spawn(admin::serve(l, shared.clone(), admin_stopped)));

        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), tls = serving.tls.is_some(), "listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let conn = Connection { serving: serving.clone(), shutdown: stopping.clone(), peer };
                        tokio::spawn(conn.serve(stream));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                },
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        drop(stopping);
        shared.draining.store(true, Ordering::Relaxed);
        let shutdown_grace = reloader.shutdown_grace();
        tracing::info!(
            connections = stop.receiver_count(),
            grace_ms = shutdown_grace.as_millis() as u64,
            "shutting down: draining"
        );
        stop.send_replace(true);
        match tokio::time::timeout(shutdown_grace, stop.closed()).await {
            Ok(()) => tracing::info!("drained"),
            Err(_) => tracing::warn!("shutdown grace elapsed with requests still in flight"),
        }
        let _ = admin_stop.send(true);
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        shared.store.shutdown().await;
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

/// Swaps in a new config for new requests (SIGHUP). Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
    /// The HTTPS acceptor's certificate handle, when the server terminates TLS.
    tls: Option<Tls>,
    /// The config in effect: what was applied, with the running values of the keys that only
    /// a restart applies, so each reload compares against what really runs.
    current: Arc<Mutex<Config>>,
}

impl Reloader {
    /// Reads and validates `path`, then applies it (see [`Reloader::apply`]). An invalid file
    /// leaves the running config in place, whole.
    pub fn reload_from(&self, path: &Path) -> Result<(), ReloadError> {
        let config = crate::config::load(path)?;
        self.apply(config)
    }

    /// Swaps in routes, session settings, secrets, the upstream timeout and the shutdown grace
    /// at once for new requests (requests in flight finish on the config they started with),
    /// and, on an HTTPS server, the certificate and key read again from their files. Logs every
    /// changed key that only a restart applies and keeps its running value.
    ///
    /// All or nothing: when the certificate or key does not load, nothing changes.
    pub fn apply(&self, config: Config) -> Result<(), ReloadError> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        // HTTPS stays HTTPS: the certificate files (renewed in place, or new paths) are read
        // again. Turning TLS on or off needs a new listener, so a restart.
        let reload_tls = match (&self.tls, &current.server.tls, &config.server.tls) {
            (Some(tls), Some(_), Some(files)) => {
                tls.reload(files)?;
                true
            }
            _ => false,
        };

        let mut compared = config.clone();
        if reload_tls {
            compared.server.tls = current.server.tls.clone();
        }
        for key in current.restart_required_changes(&compared) {
            tracing::warn!(
                key,
                "changed in the config file but needs a restart to take effect; keeping the running value"
            );
        }
        self.shared.app.store(Arc::new(App::new(&config, &self.shared.metrics)));

        // Remember the running values of what was not applied, so the next reload compares
        // against what is really in effect.
        let mut config = config;
        config.server.listen = current.server.listen;
        config.server.admin_listen = current.server.admin_listen;
        if !reload_tls {
            config.server.tls = current.server.tls.clone();
        }
        config.store.url = current.store.url.clone();
        config.store.ca_file = current.store.ca_file.clone();
        config.store.timeout = current.store.timeout;
        config.store.pool_size = current.store.pool_size;
        let routes = config.routes.len();
        let secrets = config.session.secrets.len();
        *current = config;
        tracing::info!(routes, secrets, tls_certificate_reloaded = reload_tls, "config reloaded");
        Ok(())
    }

    /// `server.shutdown_grace_ms` as last loaded.
    fn shutdown_grace(&self) -> Duration {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).server.shutdown_grace
    }
}
