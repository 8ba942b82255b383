//! The server: binds the listeners, accepts connections up to `server.max_connections`
//! (`crate::admission`; the open-file limit is raised and checked at start, `open_files`) and
//! deals them to the worker threads (`workers`: one single-threaded runtime per core), where
//! `conn` serves them (plain or TLS, HTTP/2 through `http2`, or HTTP/1.1 through `parking`)
//! and hands every request to the worker's `proxy::Proxy`; swaps the config on reload and
//! drains on shutdown.
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

use crate::admin::{self, AdminState};
use crate::admission::{Admitted, Gate, Ticket};
use crate::config::{Config, ConfigError, StoreConfig, StoreUrl};
use crate::metrics::Metrics;
use crate::proxy::client::UpstreamClient;
use crate::proxy::secure_cookie::SecureCookieWarning;
use crate::proxy::{App, Proxy};
use crate::store::{Store, StoreError};
use crate::tls::{Tls, TlsError};

mod conn;
mod framing;
mod http2;
mod limits;
mod open_files;
mod parking;
mod workers;

pub use limits::*;

use conn::{Connection, Serving};
use open_files::{Cap, TooFewFiles};
use workers::Workers;

/// After a failed `accept` (usually out of file descriptors), wait before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `key` is what set the address (`server.listen`, `server.admin_listen`, or a flag).
    #[error("cannot listen on {addr} ({key}): {}", crate::io_error::binding(source))]
    Bind { addr: SocketAddr, key: &'static str, source: std::io::Error },
    #[error("session store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot start the worker threads: {}", crate::io_error::plain(.0))]
    Workers(std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The open-file limit cannot hold `server.max_connections`.
    #[error(transparent)]
    OpenFiles(#[from] TooFewFiles),
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

/// A bound, ready-to-run proxy.
pub struct Server {
    listener: TcpListener,
    admin: Option<TcpListener>,
    tls: Option<Tls>,
    workers: Workers,
    /// One per worker, in the workers' order.
    proxies: Vec<Arc<Proxy>>,
    /// Set once shutdown begins: `/readyz` then answers 503, and idle connections close.
    draining: Arc<AtomicBool>,
    limits: Limits,
    /// Open client connections at most (`server.max_connections`, or what the open-file
    /// limit holds).
    max_connections: usize,
    /// `server.client_send_timeout_ms` (a restart applies a change).
    client_send_timeout: Duration,
    reloader: Reloader,
}

impl Server {
    /// Binds the listeners, starts the worker threads and builds the store (which starts even
    /// while Redis is down).
    pub async fn bind(config: Config, limits: Limits) -> Result<Server, StartError> {
        log_warnings(&config);
        let max_connections = connection_cap(&config, &limits)?;
        let tls = match &config.server.tls {
            Some(files) => Some(Tls::load(files)?),
            None => None,
        };
        let listener = bind(config.server.listen, "server.listen").await?;
        let admin = match config.server.admin_listen {
            Some(addr) => Some(bind(addr, "server.admin_listen").await?),
            None => None,
        };
        let workers = Workers::start(limits.workers).map_err(StartError::Workers)?;
        let stores = connect_stores(&config.store, &workers).await?;
        let metrics = Arc::new(Metrics::new());
        metrics.set_max_connections(max_connections);
        if let Some(store) = stores.first() {
            metrics.set_store(store.kind(), store.topology(), config.store.min_replicas);
        }
        let app = Arc::new(ArcSwap::from_pointee(App::new(&config, &metrics)));
        let secure_cookie = Arc::new(SecureCookieWarning::default());
        let proxies: Vec<Arc<Proxy>> = stores
            .into_iter()
            .map(|store| {
                Arc::new(Proxy {
                    app: app.clone(),
                    client: UpstreamClient::new(
                        limits.upstream_connect_timeout,
                        limits.upstream_pool_idle_timeout,
                    ),
                    store,
                    metrics: metrics.clone(),
                    https: tls.is_some(),
                    secure_cookie: secure_cookie.clone(),
                    body_idle_timeout: limits.body_idle_timeout,
                })
            })
            .collect();
        let client_send_timeout = config.server.client_send_timeout;
        let reloader = Reloader { app, metrics, tls: tls.clone(), current: Arc::new(Mutex::new(config)) };
        let draining = Arc::new(AtomicBool::new(false));
        Ok(Server {
            listener,
            admin,
            tls,
            workers,
            proxies,
            draining,
            limits,
            max_connections,
            client_send_timeout,
            reloader,
        })
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
        let Server {
            listener,
            admin,
            tls,
            workers,
            proxies,
            draining,
            limits,
            max_connections,
            client_send_timeout,
            reloader,
        } = self;
        let tls = tls.map(|t| t.acceptor());
        let servings: Vec<Arc<Serving>> = proxies
            .iter()
            .map(|p| {
                let serving = Serving::new(
                    p.clone(),
                    draining.clone(),
                    tls.clone(),
                    limits.clone(),
                    client_send_timeout,
                );
                Arc::new(serving)
            })
            .collect();
        // Every connection holds a receiver; the drain ends when the last one is dropped.
        let (stop, stopping) = watch::channel(false);
        // Stops the admin listener once the drain is over.
        let (background_stop, background_stopped) = watch::channel(false);
        // The admin listener runs here, on the caller's runtime; `/readyz` pings every
        // worker's store.
        let admin_task = admin.map(|listener| {
            let stores = proxies.iter().map(|p| p.store.clone()).collect();
            let state =
                AdminState::new(reloader.metrics.clone(), stores, draining.clone(), reloader.app.clone());
            tokio::spawn(admin::serve(listener, Arc::new(state), background_stopped))
        });

        let metrics = &reloader.metrics;
        let gate = Gate::new(max_connections, "public", metrics, Some(metrics.open_connections()));

        tracing::info!(
            addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            tls = tls.is_some(),
            workers = workers.len(),
            max_connections,
            "listening"
        );
        tokio::pin!(shutdown);
        let mut next = 0;
        loop {
            // A place under the cap first: at the cap nothing is accepted until a connection
            // closes, and the kernel's backlog holds the clients that arrive meanwhile.
            let ticket = tokio::select! {
                ticket = gate.admit() => ticket,
                () = &mut shutdown => break,
            };
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let conn = Connection { serving: servings[next].clone(), shutdown: stopping.clone(), peer };
                        deal(&workers, next, stream, ticket, conn);
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
        draining.store(true, Ordering::Relaxed);
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
        let closing: Vec<_> = proxies
            .iter()
            .enumerate()
            .map(|(index, p)| {
                let p = p.clone();
                workers.spawn(index, async move { p.store.shutdown().await })
            })
            .collect();
        for task in closing {
            let _ = task.await;
        }
        let _ = tokio::task::spawn_blocking(move || workers.stop_and_join()).await;
    }
}

/// Hands an accepted connection to worker `index`, which registers the socket with its own
/// reactor and serves it. The socket keeps the connection's `ticket` until it closes.
fn deal(workers: &Workers, index: usize, stream: TcpStream, ticket: Ticket, conn: Connection) {
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hand the connection to a worker");
            return;
        }
    };
    workers.spawn(index, async move {
        match TcpStream::from_std(stream) {
            Ok(stream) => conn.serve(Admitted::new(stream, ticket)).await,
            Err(e) => tracing::warn!(error = %e, "worker cannot register the connection"),
        }
    });
}

/// The cap on open client connections: `server.max_connections` under the open-file limit,
/// raised first (see `open_files`).
fn connection_cap(config: &Config, limits: &Limits) -> Result<usize, TooFewFiles> {
    let workers = limits.workers.max(1);
    let store = match config.store.url {
        StoreUrl::Memory => 0,
        // Each worker's share of the pool, at least one each (`worker_store_config`).
        StoreUrl::Redis(_) => config.store.pool_size.max(workers),
    };
    let admin = if config.server.admin_listen.is_some() { admin::MAX_CONNECTIONS } else { 0 };
    let others =
        (store + admin) as u64 + open_files::PROCESS_FILES + open_files::FILES_PER_WORKER * workers as u64;
    let limit = open_files::raise_limit();
    let cap = open_files::connection_cap(config.server.max_connections, others, limit)?;
    if let Cap::Lowered { cap, limit } = cap {
        tracing::warn!(
            max_connections = cap,
            open_file_limit = limit,
            "server.max_connections is not set, and the open-file limit cannot hold the default \
             (two sockets per connection): serving at most max_connections; raise the limit \
             (systemd LimitNOFILE=, ulimit -n) or set server.max_connections"
        );
    }
    Ok(cap.get())
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

async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, key, source })
}

/// What the config has that is valid but unwise (`Config::warnings`), at start and on reload.
fn log_warnings(config: &Config) {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
}

/// Swaps in a new config for new requests (SIGHUP). Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    /// The app every worker's proxy serves from.
    app: Arc<ArcSwap<App>>,
    metrics: Arc<Metrics>,
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
        log_warnings(&config);
        self.app.store(Arc::new(App::new(&config, &self.metrics)));

        // Remember the running values of what was not applied, so the next reload compares
        // against what is really in effect.
        let mut config = config;
        config.server.listen = current.server.listen;
        config.server.admin_listen = current.server.admin_listen;
        config.server.max_connections = current.server.max_connections;
        config.server.client_send_timeout = current.server.client_send_timeout;
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
            min_replicas: 0,
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
