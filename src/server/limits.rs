//! Timeouts and limits of the server that are not in `proxy.toml`, with their defaults, and
//! the HTTP/2 limits set on hyper's server (`http2`), all of them explicit rather than left to
//! hyper's and h2's defaults, which change between versions.

use std::time::Duration;

use super::workers;

/// Timeouts and limits that are not in `proxy.toml`. The defaults suit production; tests
/// shorten them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A client must send a request's complete headers within this time, and an idle
    /// keep-alive connection is closed after it: the wait for the next request and its head
    /// count together, across parks (see `parking`). Bounds slowloris clients. An HTTP/2
    /// connection with no stream for this long closes too, pings or not (see `http2`).
    pub header_read_timeout: Duration,
    /// TCP connect to an upstream; past it the request gets 504.
    pub upstream_connect_timeout: Duration,
    /// Idle pooled upstream connections are closed after this.
    pub upstream_pool_idle_timeout: Duration,
    /// A TLS client must finish its handshake within this time.
    pub tls_handshake_timeout: Duration,
    /// HTTP/2 pings every this often; a peer that does not answer within the same time is
    /// dropped. Answering does not keep an idle connection open (`header_read_timeout`).
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

/// HTTP/2 streams open at once on one connection (`SETTINGS_MAX_CONCURRENT_STREAMS`); a
/// stream beyond it is refused (`REFUSED_STREAM`). RFC 9113 asks for at least 100; nginx
/// allows 128, hyper 200. Each open stream may hold an upstream connection.
pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams a client may reset before the server has taken them up, after which the connection
/// is closed with `ENHANCE_YOUR_CALM`: the rapid reset attack (CVE-2023-44487). h2's default.
/// A stream reset after it was taken up cancels its request at once.
pub const HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the server may reset because of the client's protocol errors before it closes the
/// connection (RUSTSEC-2024-0003). hyper's default.
pub const HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// Response data queued per stream beyond what the client lets through (its flow-control
/// window, its socket): with [`HTTP2_MAX_CONCURRENT_STREAMS`], at most 6.4 MiB per connection
/// waits on a client that takes nothing, and only until `client_send_timeout_ms`. hyper's
/// default is 400 KiB.
pub const HTTP2_MAX_SEND_BUF_SIZE: usize = 64 * 1024;
/// Request body bytes a client may send on one stream ahead of the proxy passing them on
/// (`SETTINGS_INITIAL_WINDOW_SIZE`). hyper's default.
pub const HTTP2_STREAM_WINDOW: u32 = 1024 * 1024;
/// The same for all the streams of one connection together: what one connection's uploads
/// can hold in memory. hyper's default.
pub const HTTP2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Largest frame a client may send (`SETTINGS_MAX_FRAME_SIZE`): the protocol's minimum. With
/// the header list limit (`max_header_bytes`) it also bounds how many CONTINUATION frames one
/// header block may take before h2 closes the connection (CVE-2024-27316).
pub const HTTP2_MAX_FRAME_SIZE: u32 = 16 * 1024;

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
