//! session-proxy: a reverse proxy that gives any web app server-side sessions in Redis,
//! byte-compatible with Remix's cookie signing and `remix-upstash-session`.
//!
//! A request flows through these modules, each owning one concern:
//!
//! - [`config`]: `proxy.toml` → validated runtime types (`${VAR}` expansion, unknown keys
//!   rejected).
//! - [`server`]: listeners, the worker threads (one single-threaded runtime per core), reload,
//!   graceful shutdown; `server::conn` serves one connection (TLS, HTTP/1.1 or HTTP/2) and
//!   parks idle HTTP/1 keep-alive connections without buffers.
//! - `route`: which `[[route]]` a request goes to.
//! - `proxy`: forwarding to the upstream, hop-by-hop headers, upgrades, timeouts, and the
//!   status code of every failure.
//! - `session`: cookie signing, ids and the header protocol (the seam `proxy` calls once on
//!   the way in and once on the way out).
//! - [`store`]: Redis (through fred) and the embedded memory store.
//! - `admin` and `metrics`: `/healthz`, `/readyz`, `/metrics`.
//! - [`tls`]: HTTPS termination.
//! - [`signals`]: SIGTERM/SIGINT drain, SIGHUP reload, for the binary.
//! - [`alloc`]: mimalloc as the binary's global allocator.

pub mod alloc;
pub mod config;
pub mod metrics;
pub mod server;
pub mod signals;
pub mod store;
pub mod tls;

mod admin;
mod boxed;
mod proxy;
mod route;
mod session;

pub use config::Config;
pub use server::{Limits, Reloader, Server};
