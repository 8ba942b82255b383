//! The client to the upstreams: HTTP/1.1 keep-alive connections (hyper's `client::conn`),
//! pooled per upstream, one pool per worker thread.
//!
//! It does what the proxy needs of hyper-util's legacy client and no more: no DNS cache, no
//! proxies, no HTTP/2, no pool key hashing, and no task per request to hand the connection
//! back (hyper-util spawns one to wait until the connection is ready again). A connection goes
//! back to the pool when its response body has been read to the end, from the body itself.
//!
//! Kept from hyper-util: a request that a reused connection closed before taking it (the
//! upstream timed out the idle connection as the request came) is sent again on another
//! connection; a request a connection took is never sent twice. Idle connections close after
//! the idle timeout; connects are bounded by the connect timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::request_body::UpstreamBody;

/// The largest response head an upstream may send (status line and headers, session updates
/// included); past it the request gets 502 and the connection is closed. The largest that
/// hyper's default read buffer allowed before it was set, so nothing that worked before fails.
/// The count of header fields is hyper's default, 100: setting it would cost an allocation
/// per response.
pub(crate) const MAX_HEAD_BYTES: usize = 400 * 1024;
/// hyper's read buffer for an upstream connection grows up to this: a head of
/// [`MAX_HEAD_BYTES`] and room to spare (hyper's default).
const MAX_READ_BUFFER: usize = MAX_HEAD_BYTES + 8 * 1024;

/// Why a request got no response from the upstream. The messages are for the log line that
/// says so: they name the upstream and carry the underlying cause in plain words.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("connecting to the upstream {} timed out", .0)]
    ConnectTimeout(Authority),
    #[error("cannot connect to the upstream {}: {}{}", .0, crate::io_error::plain(.1), connect_hint(.1))]
    Connect(Authority, #[source] io::Error),
    #[error("the HTTP/1.1 handshake with the upstream {} failed: {}", .0, with_cause(.1))]
    Handshake(Authority, #[source] hyper::Error),
    /// The connection failed while sending the request or reading the response head
    /// (refused mid-way, reset, garbage, a request body that failed).
    #[error("the upstream connection failed: {}", with_cause(.0))]
    Send(#[source] hyper::Error),
}

/// What to check when an upstream refuses connections: most often, the app is not running.
fn connect_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => " (is the app running and listening there?)",
        _ => "",
    }
}

/// hyper's message, and the socket's error under it when there is one.
fn with_cause(e: &hyper::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => match cause.downcast_ref::<io::Error>() {
            Some(io) => format!("{e}: {}", crate::io_error::plain(io)),
            None => format!("{e}: {cause}"),
        },
        None => e.to_string(),
    }
}

impl UpstreamError {
    /// Whether the upstream did not answer in time: a connect that timed out, here or in the
    /// kernel (`ETIMEDOUT`), or a connection the kernel gave up on. The proxy answers those
    /// 504 like a slow response, everything else 502.
    pub fn timed_out(&self) -> bool {
        let io = match self {
            UpstreamError::ConnectTimeout(_) => return true,
            UpstreamError::Connect(_, e) => Some(e),
            // hyper keeps the socket's error as its direct cause.
            UpstreamError::Handshake(_, e) | UpstreamError::Send(e) => {
                std::error::Error::source(e).and_then(|s| s.downcast_ref::<io::Error>())
            }
        };
        io.is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
    }
}

/// One worker's pooled client. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub(crate) struct UpstreamClient {
    pool: Arc<Pool>,
}

struct Pool {
    /// Idle connections by upstream. A short list searched in order: a proxy has a handful
    /// of upstreams, and comparing a few authorities is cheaper than hashing one.
    idle: Mutex<Vec<IdleHost>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// The sweeper that closes expired idle connections, started with the first connection
    /// (on the worker's runtime, which the constructor may not run on).
    sweeper_started: AtomicBool,
}

struct IdleHost {
    authority: Authority,
    /// Most recently used last: reuse the warmest connection, let the coldest expire.
    conns: Vec<Idle>,
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

impl UpstreamClient {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> UpstreamClient {
        UpstreamClient {
            pool: Arc::new(Pool {
                idle: Mutex::new(Vec::new()),
                connect_timeout,
                idle_timeout,
                sweeper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `req` (origin-form target) to `authority` on an idle connection, or a new one.
    /// The response body hands the connection back to the pool when read to the end.
    pub async fn send(
        &self,
        mut req: Request<UpstreamBody>,
        authority: &Authority,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        prepare(&mut req, authority);
        while let Some(mut sender) = self.pool.checkout(authority) {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.pooled(resp, sender, authority)),
                Err(mut e) => match e.take_message() {
                    // Closed before it took the request: nothing was sent, try the next one.
                    Some(unsent) => req = unsent,
                    None => return Err(UpstreamError::Send(e.into_error())),
                },
            }
        }
        let mut sender = self.connect(authority).await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok(self.pooled(resp, sender, authority)),
            Err(e) => Err(UpstreamError::Send(e)),
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        self.pool.start_sweeper();
        let addr = (
            authority.host().trim_start_matches('[').trim_end_matches(']'),
            authority.port_u16().unwrap_or(80),
        );
        let stream = match tokio::time::timeout(self.pool.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(UpstreamError::Connect(authority.clone(), e)),
            Err(_) => return Err(UpstreamError::ConnectTimeout(authority.clone())),
        };
        // Small request heads: do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .max_header_size(MAX_HEAD_BYTES)
            .max_buf_size(MAX_READ_BUFFER)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Handshake(authority.clone(), e))?;
        // The connection runs as its own task on this worker; it ends when the upstream closes
        // it, or when its sender is dropped with nothing in flight (expired, or unusable).
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn pooled(
        &self,
        resp: Response<Incoming>,
        sender: SendRequest<UpstreamBody>,
        authority: &Authority,
    ) -> Response<PooledBody> {
        // After a 101 the connection belongs to the upgrade; it never goes back.
        let reuse = resp.status() != StatusCode::SWITCHING_PROTOCOLS;
        resp.map(|inner| {
            let mut body = PooledBody {
                inner,
                release: reuse.then(|| Release {
                    pool: self.pool.clone(),
                    authority: authority.clone(),
                    sender,
                }),
            };
            if body.inner.is_end_stream() {
                body.release();
            }
            body
        })
    }
}

/// What hyper's `client::conn` leaves to the caller, as hyper-util did it: CONNECT names the
/// upstream in authority form (other requests come in origin form), and a request without a
/// `Host` (HTTP/1.0) gets the upstream's.
fn prepare(req: &mut Request<UpstreamBody>, authority: &Authority) {
    if req.method() == Method::CONNECT {
        *req.uri_mut() = Uri::from(authority.clone());
    }
    if !req.headers().contains_key(header::HOST) {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Vec<IdleHost>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection to `authority` that is ready for a request.
    /// Expired ones are dropped on the way, and closed ones met from the newest end; one still
    /// busy (its request body not yet sent in full) stays for later. Usually the newest is
    /// ready, so a checkout costs the same however many connections are idle. Checking every
    /// one made a request at 256 connections cost 3.8k instructions more than at 16, against
    /// 0.6k now (`CONNECTIONS=16` and `256 bench/profile.sh 5`); the sweeper catches the rest.
    fn checkout(&self, authority: &Authority) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.lock();
        let host = idle.iter_mut().find(|h| same_upstream(&h.authority, authority))?;
        // One worker's connections, put back in time order: the expired ones are a prefix.
        let now = Instant::now();
        let expired = host.conns.partition_point(|c| now.duration_since(c.since) >= self.idle_timeout);
        host.conns.drain(..expired);
        let mut i = host.conns.len();
        while i > 0 {
            i -= 1;
            let sender = &host.conns[i].sender;
            if sender.is_closed() {
                host.conns.remove(i);
            } else if sender.is_ready() {
                return Some(host.conns.remove(i).sender);
            }
        }
        None
    }

    fn put_back(&self, authority: Authority, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let conn = Idle { sender, since: Instant::now() };
        let mut idle = self.lock();
        match idle.iter_mut().find(|h| same_upstream(&h.authority, &authority)) {
            Some(host) => host.conns.push(conn),
            None => idle.push(IdleHost { authority, conns: vec![conn] }),
        }
    }

    /// Closes expired and closed idle connections every idle timeout, even when no request
    /// comes to notice them; ends with the pool.
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Pool> = Arc::downgrade(self);
        let every = self.idle_timeout;
        tokio::spawn(async move {
            // `interval` refuses a zero period; a zero idle timeout only means nothing is kept.
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                let now = Instant::now();
                let mut idle = pool.lock();
                for host in idle.iter_mut() {
                    host.conns.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < every);
                }
                idle.retain(|h| !h.conns.is_empty());
            }
        });
    }
}

/// Byte equality: every request names its upstream by the route's one `Authority`, so the
/// case-insensitive comparison of `Authority::eq` would only cost time (a differently cased
/// duplicate would at worst get a pool entry of its own).
fn same_upstream(a: &Authority, b: &Authority) -> bool {
    a.as_str() == b.as_str()
}

/// The connection an upstream response came on, handed back when its body is done.
struct Release {
    pool: Arc<Pool>,
    authority: Authority,
    sender: SendRequest<UpstreamBody>,
}

/// An upstream response body. Read to its end, it gives its connection back to the pool;
/// dropped before, or failed, it takes the connection with it (hyper then closes it: an
/// HTTP/1 connection with an unread body cannot carry another request).
pub(crate) struct PooledBody {
    inner: Incoming,
    release: Option<Release>,
}

impl PooledBody {
    /// Gives up on the rest of the body: its connection is closed once the body is dropped,
    /// never pooled.
    pub(crate) fn abandon(&mut self) {
        self.release = None;
    }

    fn release(&mut self) {
        if let Some(Release { pool, authority, sender }) = self.release.take() {
            pool.put_back(authority, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.release = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_upstream_and_say_what_to_check() {
        let authority: Authority = "127.0.0.1:3000".parse().unwrap();
        let refused =
            UpstreamError::Connect(authority.clone(), io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(
            refused.to_string(),
            "cannot connect to the upstream 127.0.0.1:3000: connection refused (is the app running and listening there?)"
        );
        let refused = UpstreamError::Connect(authority.clone(), io::Error::from_raw_os_error(111));
        assert!(!refused.to_string().contains("os error"), "{refused}");
        assert_eq!(
            UpstreamError::ConnectTimeout(authority).to_string(),
            "connecting to the upstream 127.0.0.1:3000 timed out"
        );
    }

    /// A ready HTTP/1 connection to `listener`, and the server's end of it.
    async fn connection(listener: &tokio::net::TcpListener) -> (SendRequest<UpstreamBody>, TcpStream) {
        let (stream, accepted) =
            tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream.unwrap())).await.unwrap();
        tokio::spawn(conn);
        sender.ready().await.unwrap();
        (sender, accepted.unwrap().0)
    }

    /// Bounded: a connection whose server end is gone is seen closed within moments.
    async fn until(mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not within 5 s");
    }

    /// `checkout` skips the expired connections (the oldest) and the closed ones it meets from
    /// the newest end, and hands out the newest live one. No sweeper runs here (it starts with
    /// `connect`), so only `checkout` can drop them.
    #[tokio::test]
    async fn checkout_takes_the_newest_live_connection_and_never_an_expired_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let idle_timeout = Duration::from_secs(1);
        let client = UpstreamClient::new(Duration::from_secs(5), idle_timeout);
        let pool = &client.pool;
        let (old, _old_server) = connection(&listener).await;
        let (middle, middle_server) = connection(&listener).await;
        let (newest, newest_server) = connection(&listener).await;

        pool.put_back(authority.clone(), old);
        tokio::time::sleep(idle_timeout + Duration::from_millis(200)).await;
        pool.put_back(authority.clone(), middle);
        pool.put_back(authority.clone(), newest);
        drop(newest_server);
        until(|| pool.lock()[0].conns.last().is_some_and(|c| c.sender.is_closed())).await;

        let taken = pool.checkout(&authority).expect("the middle connection is live and fresh");
        assert!(pool.lock()[0].conns.is_empty(), "the expired and the closed connection are dropped");
        // It is the middle one: it closes with its server end (the old one's is still open).
        drop(middle_server);
        until(|| taken.is_closed()).await;
        assert!(pool.checkout(&authority).is_none());
    }
}
