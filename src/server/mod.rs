//! The server: binds the listeners, accepts connections and deals them to the worker threads
//! (`workers`: one single-threaded runtime per core), where `conn` serves them (plain or TLS,
//! HTTP/1.1 or HTTP/2, through `proxy::handle`); swaps the config on reload and drains on
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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::admin;
use crate::config::{Config, ConfigError, StoreConfig};
use crate::metrics::Metrics;
use crate::proxy::client::UpstreamClient;
use crate::route::RouteTable;
use crate::session::SessionLayer;
use crate::store::{Store, StoreError};
use crate::tls::{Tls, TlsError};

mod conn;
mod workers;

use conn::{Connection, Serving};
use workers::Workers;

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
    /// Worker threads, each with its own single-threaded runtime, upstream pool and Redis
    /// connections. Default: one per core the process may use.
    pub workers: usize,
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
            workers: workers::default_count(),
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
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
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

/// What every connection of one worker shares. The app, the metrics and the draining flag are
/// the same for all workers; the upstream pool and the store connections are the worker's own.
pub(crate) struct Shared {
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
    /// Set once shutdown begins: `/readyz` then answers 503 so a load balancer stops sending
    /// new requests while the in-flight ones finish.
    pub draining: Arc<AtomicBool>,
    /// [`Limits::body_idle_timeout`], for every request body sent upstream.
    pub body_idle_timeout: Duration,
}

/// A bound, ready-to-run proxy.
pub struct Server {
    listener: TcpListener,
    admin: Option<TcpListener>,
    tls: Option<Tls>,
    workers: Workers,
    /// One per worker, in the workers' order.
    shared: Vec<Arc<Shared>>,
    limits: Limits,
    reloader: Reloader,
}

impl Server {
    /// Binds the listeners, starts the worker threads and builds the store (which starts even
    /// while Redis is down).
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
        let workers = Workers::start(limits.workers).map_err(StartError::Workers)?;
        let stores = connect_stores(&config.store, &workers).await?;
        let metrics = Arc::new(Metrics::new());
        let app = Arc::new(ArcSwap::from_pointee(App::new(&config, &metrics)));
        let draining = Arc::new(AtomicBool::new(false));
        let shared: Vec<Arc<Shared>> = stores
            .into_iter()
            .map(|store| {
                Arc::new(Shared {
                    app: app.clone(),
                    client: UpstreamClient::new(
                        limits.upstream_connect_timeout,
                        limits.upstream_pool_idle_timeout,
                    ),
                    store,
                    metrics: metrics.clone(),
                    https: tls.is_some(),
                    draining: draining.clone(),
                    body_idle_timeout: limits.body_idle_timeout,
                })
            })
            .collect();
        let reloader =
            Reloader { shared: shared[0].clone(), tls: tls.clone(), current: Arc::new(Mutex::new(config)) };
        Ok(Server { listener, admin, tls, workers, shared, limits, reloader })
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
        let Server { listener, admin, tls, workers, shared, limits, reloader } = self;
        let tls = tls.map(|t| t.acceptor());
        let servings: Vec<Arc<Serving>> =
            shared.iter().map(|s| Arc::new(Serving::new(s.clone(), tls.clone(), limits.clone()))).collect();
        // Every connection holds a receiver; the drain ends when the last one is dropped.
        let (stop, stopping) = watch::channel(false);
        // Stops the admin listener once the drain is over.
        let (background_stop, background_stopped) = watch::channel(false);
        // The admin listener runs here, on the caller's runtime; `/readyz` pings every
        // worker's store.
        let stores: Arc<[Store]> = shared.iter().map(|s| s.store.clone()).collect();
        let admin_task =
            admin.map(|l| tokio::spawn(admin::serve(l, shared[0].clone(), stores, background_stopped)));

        tracing::info!(
            addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            tls = tls.is_some(),
            workers = workers.len(),
            "listening"
        );
        tokio::pin!(shutdown);
        let mut next = 0;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let conn = Connection { serving: servings[next].clone(), shutdown: stopping.clone(), peer };
                        deal(&workers, next, stream, conn);
                        next = (next + 1) % workers.len();
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
        // One flag for all workers (and `/readyz`).
        shared[0].draining.store(true, Ordering::Relaxed);
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
        let _ = background_stop.send(true);
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        // Each worker closes its own store connections, on its own runtime; then the workers
        // stop, dropping what is left (connections past the grace, idle upstream connections).
        let closing: Vec<_> = shared
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let s = s.clone();
                workers.spawn(index, async move { s.store.shutdown().await })
            })
            .collect();
        for task in closing {
            let _ = task.await;
        }
        let _ = tokio::task::spawn_blocking(move || workers.stop_and_join()).await;
    }
}

/// Hands an accepted connection to worker `index`, which registers the socket with its own
/// reactor and serves it.
fn deal(workers: &Workers, index: usize, stream: TcpStream, conn: Connection) {
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hand the connection to a worker");
            return;
        }
    };
    workers.spawn(index, async move {
        match TcpStream::from_std(stream) {
            Ok(stream) => conn.serve(stream).await,
            Err(e) => tracing::warn!(error = %e, "worker cannot register the connection"),
        }
    });
}

/// One store per worker, each connected on its worker's runtime, so that a request's store
/// calls never leave its thread. `store.pool_size` is the number of Redis connections in all,
/// dealt over the workers, at least one each. The memory store is one map that all share.
async fn connect_stores(cfg: &StoreConfig, workers: &Workers) -> Result<Vec<Store>, StartError> {
    let count = workers.len();
    let mut stores: Vec<Store> = Vec::with_capacity(count);
    for index in 0..count {
        if let Some(Store::Memory(memory)) = stores.first() {
            stores.push(Store::Memory(memory.clone()));
            continue;
        }
        let cfg = worker_store_config(cfg, index, count);
        let store = workers
            .spawn(index, async move { Store::connect(&cfg).await })
            .await
            .map_err(|e| StartError::Workers(workers::stopped(e)))??;
        stores.push(store);
    }
    Ok(stores)
}

/// Worker `index`'s share of `store.pool_size` (at least one connection).
fn worker_store_config(cfg: &StoreConfig, index: usize, workers: usize) -> StoreConfig {
    let share = cfg.pool_size / workers + usize::from(index < cfg.pool_size % workers);
    StoreConfig { pool_size: share.max(1), ..cfg.clone() }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreUrl;

    fn shares(pool_size: usize, workers: usize) -> Vec<usize> {
        let cfg = StoreConfig {
            url: StoreUrl::Memory,
            key_prefix: "_session:".to_owned(),
            ca_file: None,
            timeout: Duration::from_secs(1),
            pool_size,
        };
        (0..workers).map(|index| worker_store_config(&cfg, index, workers).pool_size).collect()
    }

    #[test]
    fn the_pool_is_dealt_over_the_workers_at_least_one_each() {
        assert_eq!(shares(2, 2), [1, 1]);
        assert_eq!(shares(2, 1), [2]);
        assert_eq!(shares(5, 2), [3, 2]);
        assert_eq!(shares(4, 3), [2, 1, 1]);
        assert_eq!(shares(1, 4), [1, 1, 1, 1]);
    }
}
