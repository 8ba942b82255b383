//! Timeouts and limits of the server that are not in `proxy.toml`, with their defaults.

use std::time::Duration;

use super::workers;

/// Timeouts and limits that are not in `proxy.toml`. The defaults suit production; tests
/// shorten them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A client must send a request's complete headers within this time, and an idle
    /// keep-alive connection is closed after it: the wait for the next request and its head
    /// count together, across parks (see `parking`). Bounds slowloris clients.
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
