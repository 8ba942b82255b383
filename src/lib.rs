//! session-proxy: a reverse proxy that gives any web app server-side sessions in Redis,
//! byte-compatible with Remix's cookie signing and `remix-upstash-session`.
//!
//! The modules, each owning one concern; each imports only the ones listed after it:
//!
//! - [`signals`]: SIGTERM/SIGINT drain, SIGHUP reload, for the binary.
//! - [`server`]: listeners, the worker threads (one single-threaded runtime per core), client
//!   connections (TLS, HTTP/1.1 or HTTP/2; `server::parking` parks idle HTTP/1 keep-alive
//!   connections without buffers), reload and graceful shutdown. Hands every request to the
//!   worker's `proxy::Proxy`.
//! - `admin`: the admin listener's `/healthz`, `/readyz`, `/metrics`, and the session
//!   management endpoints.
//! - [`manage`]: session management from the command line (`session-proxy sessions`).
//! - `admission`: how many connections a listener holds at once (`server.max_connections`,
//!   the admin listener's own cap); a connection's place travels with its socket.
//! - `proxy`: one request: routing, hop-by-hop headers, the session seam, forwarding to the
//!   upstream, upgrades, timeouts; `proxy::error` is the one table from failure to status
//!   code.
//! - `route`: which `[[route]]` a request goes to.
//! - `session`: cookie signing, ids and the header protocol; what state a request's session
//!   is in, and the store-failure policy.
//! - [`store`]: Redis (through fred) and the embedded memory store.
//! - [`tls`]: HTTPS termination.
//! - [`metrics`]: Prometheus metrics; a leaf that imports nothing of the proxy.
//! - [`config`]: `proxy.toml` → validated runtime types (`${VAR}` expansion, unknown keys
//!   rejected).
//! - `io_error`: I/O errors in plain words for the messages people read; a leaf.
//! - `redis_url`: the Redis `store.url` as fred reads it, for the config's check and the
//!   Redis store; a leaf.
//!
//! The binary (`src/main.rs`) parses arguments, loads the config, starts logging, installs
//! mimalloc as its global allocator (`src/alloc.rs`) and calls [`Server`].

pub mod config;
pub mod manage;
pub mod metrics;
pub mod server;
pub mod signals;
pub mod store;
pub mod tls;

mod admin;
mod admission;
mod boxed;
mod io_error;
mod proxy;
mod redis_url;
mod route;
mod session;

pub use config::Config;
pub use server::{Limits, Reloader, Server};
