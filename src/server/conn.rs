//! One client connection: the TLS handshake, HTTP/1.1 or HTTP/2, graceful shutdown, and the
//! parking of idle HTTP/1 keep-alive connections.
//!
//! # Parking
//!
//! hyper keeps an HTTP/1 connection's read and write buffers (8 KiB each) for the connection's
//! whole life, idle or not: at 10,000 quiet keep-alive clients that is most of the process's
//! memory. So an HTTP/1 connection is served in *segments*. A segment is one hyper connection
//! on the socket; it serves requests until the connection has been idle (no request in flight,
//! no byte read or written) for [`PARK_AFTER`]. Then hyper is told to close the idle connection,
//! which it does at once and without writing anything, and the socket is taken back without a
//! shutdown (`poll_without_shutdown`, `into_parts`), with any bytes hyper had read but not
//! used. The parked connection holds only its socket until the client sends again; then a new
//! segment picks up where the last one stopped, those bytes first. As nginx does between
//! keep-alive requests.
//!
//! The idle keep-alive limit ([`Limits::header_read_timeout`]) is the proxy's own, not hyper's
//! (whose timer would cost a timer and an allocation per request and restart with each
//! segment): the wait for a request's head counts from the end of the previous response (or
//! the connection's start) and is checked by the segment's periodic check, and across a park
//! by the parked connection's wait.
//!
//! Upgrades (WebSocket) on a segment are handed over by hand: hyper's own upgrade machinery
//! needs the connection to end in a shutdown, so the request handler leaves a
//! [`Handover`] and the segment sends it the socket once the `101` is written.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Limits, Shared};
use crate::proxy::{self, body::ProxyBody, upgrade::Handover};

/// An HTTP/1 connection with nothing in flight and no traffic for this long gives back hyper's
/// buffers (it parks between one and two of these after its last byte, at the segment's
/// check). Short enough that a crowd of idle clients never holds many buffers at once, long
/// enough that a busy keep-alive connection never parks between its requests. 10,000 clients
/// opening in about 2.5 s and going quiet peak at 42 to 52 MiB with 50 ms, against 49 to 66
/// MiB with 100 ms (`bench/idle_conns.py`); each check of a busy connection costs a wake-up.
const PARK_AFTER: Duration = Duration::from_millis(50);

/// While a request is in flight (a long poll, a stream, a slow upstream) the connection cannot
/// park, and the check backs off, doubling up to this, so that many such connections do not
/// wake ten times a second each.
const BUSY_CHECK_MAX: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface a client with prior knowledge opens with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What every connection of one server shares: the app, the protocol builders, the TLS
/// acceptor and the limits.
pub(super) struct Serving {
    pub shared: Arc<Shared>,
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub limits: Limits,
}

impl Serving {
    pub fn new(shared: Arc<Shared>, tls: Option<tokio_rustls::TlsAcceptor>, limits: Limits) -> Serving {
        let mut http1 = http1::Builder::new();
        http1
            // Enforced by the segments instead (see the module docs).
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(limits.http2_keep_alive)
            .keep_alive_timeout(limits.http2_keep_alive)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        Serving { shared, http1, http2, tls, limits }
    }
}

/// A socket a parked connection can wait on.
trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when the client has sent something (or closed).
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Socket for TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

/// hyper reads a TLS connection until rustls has no plaintext left and the socket would block,
/// so an idle TLS connection has nothing buffered and waits on its TCP socket.
impl Socket for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// One accepted client connection.
pub(super) struct Connection {
    pub serving: Arc<Serving>,
    pub shutdown: watch::Receiver<bool>,
    pub peer: SocketAddr,
}

impl Connection {
    pub async fn serve(self, stream: TcpStream) {
        let metrics = self.serving.shared.metrics.clone();
        metrics.connection_opened();
        match self.serving.tls.clone() {
            None => self.serve_plain(stream).await,
            // Boxed so the plain-HTTP task is not sized for the TLS handshake's state.
            Some(acceptor) => {
                let tls = Box::pin(self.serve_tls(acceptor, stream));
                tls.await
            }
        }
        metrics.connection_closed();
    }

    async fn serve_plain(mut self, mut stream: TcpStream) {
        // Nothing of hyper's is allocated until the client has spoken and said which protocol.
        // Every stage is boxed, each in a statement of its own, so that the task itself stays
        // a few hundred bytes and a parked connection holds little more.
        let limit = self.serving.limits.header_read_timeout;
        let head_deadline = Instant::now() + limit;
        let sniff = Box::pin(sniff(&mut stream, limit, &mut self.shutdown));
        match sniff.await {
            Sniffed::Http2(prefix) => {
                let h2 = Box::pin(self.serve_http2(Rewind::new(stream, prefix)));
                h2.await
            }
            Sniffed::Http1(prefix) => {
                let h1 = Box::pin(self.serve_http1(stream, prefix, head_deadline));
                h1.await
            }
            Sniffed::Closed | Sniffed::ShuttingDown => {}
            Sniffed::Failed(e) => tracing::debug!(peer = %self.peer, error = %e, "client connection failed"),
            Sniffed::TimedOut => {
                tracing::debug!(peer = %self.peer, "client sent no request within the header read timeout")
            }
        }
    }

    async fn serve_tls(self, acceptor: tokio_rustls::TlsAcceptor, stream: TcpStream) {
        let tls =
            match tokio::time::timeout(self.serving.limits.tls_handshake_timeout, acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
            };
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            self.serve_http2(tls).await
        } else {
            let head_deadline = Instant::now() + self.serving.limits.header_read_timeout;
            self.serve_http1(tls, Bytes::new(), head_deadline).await
        }
    }

    async fn serve_http2<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = self.serving.shared.clone();
        let client_ip = proxy::headers::client_ip(self.peer.ip());
        let service = service_fn(move |req| {
            let shared = shared.clone();
            let client_ip = client_ip.clone();
            crate::boxed::pin_in_place(|| async move {
                Ok::<_, std::convert::Infallible>(proxy::handle(shared, req, &client_ip, None).await)
            })
        });
        let conn = self.serving.http2.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let mut closing = false;
        let result = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                () = shutting_down(&mut self.shutdown), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = %self.peer, error = %e, "client connection ended with an error");
        }
    }

    /// Serves an HTTP/1 connection in segments, parking it between them (see the module docs).
    /// `head_deadline`: when the first request's head must be in.
    async fn serve_http1<S: Socket>(mut self, mut socket: S, mut unread: Bytes, mut head_deadline: Instant) {
        let state = Arc::new(ConnState::new());
        let client_ip = proxy::headers::client_ip(self.peer.ip());
        let limits = &self.serving.limits;
        loop {
            let segment = Segment {
                serving: &self.serving,
                state: &state,
                client_ip: &client_ip,
                peer: self.peer,
                head_deadline,
            };
            // Boxed: a parked connection's task then holds only this loop's few words.
            let segment = Box::pin(segment.run(socket, unread, &mut self.shutdown));
            let ended = segment.await;
            let Ended::Parked { socket: s, unread: u } = ended else { return };
            socket = s;
            unread = u;
            // A segment parks only after a request: the end of its response started the wait
            // for the next head.
            head_deadline = state.next_head_due(limits.header_read_timeout);
            if !unread.is_empty() {
                continue; // part of the next request is already here
            }
            let metrics = &self.serving.shared.metrics;
            metrics.connection_parked();
            let resume = tokio::select! {
                r = poll_fn(|cx| socket.poll_readable(cx)) => r.is_ok(),
                () = tokio::time::sleep_until(head_deadline) => false,
                () = shutting_down(&mut self.shutdown) => false,
            };
            metrics.connection_unparked();
            if !resume {
                return;
            }
        }
    }
}

/// Resolves once the server starts shutting down (at once if it already has).
async fn shutting_down(shutdown: &mut watch::Receiver<bool>) {
    // An error means the server is gone, which is a shutdown too.
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// What the first bytes of a plain connection said.
#[derive(Debug)]
enum Sniffed {
    /// The HTTP/2 preface (prior knowledge), and the bytes read.
    Http2(Bytes),
    /// Anything else, and the bytes read (enough to tell, at least one).
    Http1(Bytes),
    /// Closed before a byte.
    Closed,
    Failed(io::Error),
    /// Nothing to tell by within the header read timeout.
    TimedOut,
    ShuttingDown,
}

/// Reads until the bytes read are, or cannot be, the HTTP/2 preface, within `limit` and unless
/// the server shuts down first.
async fn sniff(stream: &mut TcpStream, limit: Duration, shutdown: &mut watch::Receiver<bool>) -> Sniffed {
    tokio::select! {
        r = tokio::time::timeout(limit, read_preface(stream)) => match r {
            Ok(Ok(sniffed)) => sniffed,
            Ok(Err(e)) => Sniffed::Failed(e),
            Err(_) => Sniffed::TimedOut,
        },
        () = shutting_down(shutdown) => Sniffed::ShuttingDown,
    }
}

async fn read_preface(stream: &mut TcpStream) -> io::Result<Sniffed> {
    let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(if buf.is_empty() { Sniffed::Closed } else { Sniffed::Http1(buf.freeze()) });
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Sniffed::Http1(buf.freeze()));
        }
        if n == H2_PREFACE.len() {
            return Ok(Sniffed::Http2(buf.freeze()));
        }
    }
}

/// What a connection's segments share with its request handlers.
struct ConnState {
    /// Bytes read or written, and requests started: any change is a sign of life.
    activity: AtomicU64,
    /// Requests whose response body has not ended.
    in_flight: AtomicUsize,
    /// Requests started on the connection (to tell when the next head has arrived).
    requests: AtomicU64,
    /// When the latest response body ended (so the wait for the next head began), in
    /// microseconds since `start`.
    idle_since_us: AtomicU64,
    start: Instant,
    /// Where an upgraded request wants the socket.
    handover: Handover,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            activity: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_us: AtomicU64::new(0),
            start: Instant::now(),
            handover: Handover::default(),
        }
    }

    fn touch(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }

    fn response_ended(&self) {
        let since_start = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.idle_since_us.store(since_start, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    /// When the next request's head is due: `limit` after the latest response ended.
    fn next_head_due(&self, limit: Duration) -> Instant {
        self.start + Duration::from_micros(self.idle_since_us.load(Ordering::Relaxed)) + limit
    }
}

/// What a segment's wait ended with.
enum Woke {
    Conn(hyper::Result<()>),
    /// The server is shutting down.
    Stop,
    /// Time for the segment's periodic check.
    Check,
}

/// How a segment ended.
enum Ended<S> {
    /// Idle after at least one request: the socket and what hyper had read of the next
    /// request.
    Parked { socket: S, unread: Bytes },
    /// Closed, upgraded, failed or shut down: the connection is over.
    Done,
}

/// One hyper connection on the socket, from a park (or the start) to the next (see the
/// module docs).
struct Segment<'a> {
    serving: &'a Serving,
    state: &'a Arc<ConnState>,
    client_ip: &'a http::HeaderValue,
    peer: SocketAddr,
    /// When the segment's first request head must be in.
    head_deadline: Instant,
}

impl Segment<'_> {
    async fn run<S: Socket>(
        self,
        socket: S,
        unread: Bytes,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended<S> {
        let Segment { serving, state, client_ip, peer, head_deadline } = self;
        let service = {
            let shared = serving.shared.clone();
            let state = state.clone();
            let client_ip = client_ip.clone();
            service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                let client_ip = client_ip.clone();
                state.requests.fetch_add(1, Ordering::Relaxed);
                state.in_flight.fetch_add(1, Ordering::Relaxed);
                state.touch();
                // Made here, so that a future hyper drops unpolled still counts down.
                let guard = InFlight(state.clone());
                // Boxed: hyper keeps the slot for a connection's request future for the
                // connection's whole life, and `handle`'s future is several KiB.
                crate::boxed::pin_in_place(|| async move {
                    let resp = proxy::handle(shared, req, &client_ip, Some(&guard.0.handover)).await;
                    Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked { body, _guard: guard }))
                })
            })
        };
        let io = Rewind::counted(socket, unread, state.clone());
        let mut conn = serving.http1.serve_connection(TokioIo::new(io), service);

        let requests_before = state.requests.load(Ordering::Relaxed);
        let mut seen = state.activity.load(Ordering::Relaxed);
        let mut check_every = PARK_AFTER;
        let check = tokio::time::sleep_until((Instant::now() + check_every).min(head_deadline));
        tokio::pin!(check);
        let stop = shutting_down(shutdown);
        tokio::pin!(stop);
        let draining = &*serving.shared.draining;
        let mut closing = false;
        let mut parking = false;
        // Whether `stop` and `check` hold this task's waker. Both keep it from their first
        // poll until they fire, so on the many wakes that are hyper's (every read and write)
        // they are not polled again: the draining flag (set before the stop signal is sent)
        // and `is_elapsed` tell whether they fired. `check` is polled again after each reset,
        // so it never depends on a waker surviving the reset.
        let (mut stop_polled, mut check_polled) = (false, false);
        let result = loop {
            let woke = poll_fn(|cx| {
                if let Poll::Ready(r) = conn.poll_without_shutdown(cx) {
                    return Poll::Ready(Woke::Conn(r));
                }
                if closing {
                    return Poll::Pending;
                }
                if !stop_polled || draining.load(Ordering::Relaxed) {
                    stop_polled = true;
                    if stop.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Woke::Stop);
                    }
                }
                if !check_polled || check.is_elapsed() {
                    check_polled = true;
                    if check.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Woke::Check);
                    }
                }
                Poll::Pending
            })
            .await;
            match woke {
                Woke::Conn(r) => break r,
                Woke::Stop => {
                    closing = true;
                    Pin::new(&mut conn).graceful_shutdown();
                }
                Woke::Check => {
                    let now = Instant::now();
                    let busy = state.in_flight.load(Ordering::Relaxed) > 0;
                    // Waiting for a head: since the segment began (a deadline that may have
                    // started before it, across parks) or since the last response ended.
                    let head_due = (!busy).then(|| {
                        if state.requests.load(Ordering::Relaxed) == requests_before {
                            head_deadline
                        } else {
                            state.next_head_due(serving.limits.header_read_timeout)
                        }
                    });
                    if head_due.is_some_and(|due| now >= due) {
                        tracing::debug!(peer = %peer, "no request head within the header read timeout; closing");
                        return Ended::Done;
                    }
                    check_every = if busy { (check_every * 2).min(BUSY_CHECK_MAX) } else { PARK_AFTER };
                    let next = now + check_every;
                    check.as_mut().reset(head_due.map_or(next, |due| due.min(next)));
                    check_polled = false;
                    let activity = state.activity.load(Ordering::Relaxed);
                    if activity != seen {
                        seen = activity;
                        continue;
                    }
                    // Only after a request: hyper treats a fresh connection as busy until its
                    // first exchange is over, and would close it after that instead of parking.
                    if !busy && state.requests.load(Ordering::Relaxed) != requests_before {
                        closing = true;
                        Pin::new(&mut conn).graceful_shutdown();
                        // Idle, hyper closes at once without writing. If it does not, it was
                        // not idle after all (a response still flushing): it finishes the
                        // exchange and the connection closes.
                        let closed = poll_fn(|cx| conn.poll_without_shutdown(cx));
                        if let Some(r) = futures_util::FutureExt::now_or_never(closed) {
                            parking = r.is_ok();
                            break r;
                        }
                    }
                }
            }
        };

        let parts = conn.into_parts();
        let (mut socket, rest) = parts.io.into_inner().into_parts();
        let unread = join(rest, parts.read_buf);
        if let Err(e) = result {
            tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
            return Ended::Done;
        }
        if let Some(tunnel) = state.handover.waiting() {
            // Upgraded: the tunnel takes the socket (if it has gone, the socket just closes).
            let _ = tunnel.send(Box::new(Rewind::new(socket, unread)));
            return Ended::Done;
        }
        if parking {
            return Ended::Parked { socket, unread };
        }
        // Closed by the client, by `Connection: close`, or for shutdown: what hyper's own
        // connection future does at the end.
        let _ = socket.shutdown().await;
        Ended::Done
    }
}

/// Counts a request as in flight until its response body has ended or been dropped.
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.response_ended();
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's [`InFlight`] guard.
    struct Tracked {
        #[pin]
        body: ProxyBody,
        _guard: InFlight,
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = <ProxyBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An IO that reads `prefix` first (bytes already taken off the socket) and, for a segment's
/// hyper, counts every read and write as a sign of life of the connection.
struct Rewind<I> {
    io: I,
    prefix: Bytes,
    activity: Option<Arc<ConnState>>,
}

impl<I> Rewind<I> {
    fn new(io: I, prefix: Bytes) -> Rewind<I> {
        Rewind { io, prefix, activity: None }
    }

    fn counted(io: I, prefix: Bytes, state: Arc<ConnState>) -> Rewind<I> {
        Rewind { io, prefix, activity: Some(state) }
    }

    /// The IO and whatever of the prefix was not read.
    fn into_parts(self) -> (I, Bytes) {
        (self.io, self.prefix)
    }

    fn touch<T>(&self, r: Poll<T>) -> Poll<T> {
        if let (Some(state), true) = (&self.activity, r.is_ready()) {
            state.touch();
        }
        r
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        self.touch(r)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.touch(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.touch(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// `a` then `b`, in a buffer of their own: `b` is a view into hyper's 8 KiB read buffer, which
/// must not stay allocated while the connection is parked.
fn join(a: Bytes, b: Bytes) -> Bytes {
    if b.is_empty() {
        return a;
    }
    let mut joined = BytesMut::with_capacity(a.len() + b.len());
    joined.extend_from_slice(&a);
    joined.extend_from_slice(&b);
    joined.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rewind_reads_the_prefix_first_then_the_io() {
        let mut io = Rewind::new(&b" world"[..], Bytes::from_static(b"hello"));
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn rewind_hands_back_what_was_not_read() {
        let mut io = Rewind::new(&b""[..], Bytes::from_static(b"abcdef"));
        let mut two = [0u8; 2];
        io.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"ab");
        assert_eq!(io.into_parts().1, Bytes::from_static(b"cdef"));
    }

    #[test]
    fn join_keeps_order_and_never_keeps_the_big_buffer() {
        let mut big = BytesMut::with_capacity(8192);
        big.extend_from_slice(b"cd");
        let joined = join(Bytes::from_static(b"ab"), big.freeze());
        assert_eq!(joined, "abcd");
        assert!(Vec::from(joined).capacity() < 8192);
        assert_eq!(join(Bytes::from_static(b"a"), BytesMut::with_capacity(8192).freeze()), "a");
    }

    #[tokio::test]
    async fn sniff_tells_http2_prior_knowledge_from_http1() {
        for (sent, h2) in [(H2_PREFACE, true), (&b"GET / HTTP/1.1\r\n\r\n"[..], false), (&b"P"[..], false)] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let client = tokio::spawn(async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                // One byte at a time: the sniffer must wait for enough bytes to decide.
                for b in sent {
                    c.write_all(&[*b]).await.unwrap();
                    tokio::task::yield_now().await;
                }
                c.shutdown().await.unwrap();
                c
            });
            let (mut s, _) = listener.accept().await.unwrap();
            let read = match read_preface(&mut s).await.unwrap() {
                Sniffed::Http2(read) if h2 => read,
                Sniffed::Http1(read) if !h2 => read,
                other => panic!("{sent:?} sniffed as {other:?}"),
            };
            assert!(sent.starts_with(&read) && !read.is_empty(), "{sent:?} read {read:?}");
            drop(client.await.unwrap());
        }
        // A client that closes without a byte.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut s, _) = listener.accept().await.unwrap();
        drop(client);
        assert!(matches!(read_preface(&mut s).await.unwrap(), Sniffed::Closed));
    }
}
