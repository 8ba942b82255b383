//! HTTP/1 connections that give back their buffers while idle: [`serve`] runs one connection
//! with hyper, handing each request to a handler, and between requests an idle connection
//! holds only its socket (and the framing scanner's few dozen bytes, see below). Everything
//! else of the server and the proxy is ordinary hyper.
//!
//! # Why
//!
//! hyper keeps an HTTP/1 connection's read and write buffers (8 KiB each) for the connection's
//! whole life, idle or not: at 10,000 quiet keep-alive clients that is most of the process's
//! memory. Parking keeps such a crowd near nginx's memory (`bench/idle_conns.py`).
//!
//! # How
//!
//! A connection is served in *segments*. A segment is one hyper connection on the socket; it
//! serves requests until the connection has been idle (no request in flight, no byte read or
//! written) for [`PARK_AFTER`]. Then hyper is told to close the idle connection, which it does
//! at once and without writing anything, and the socket is taken back without a shutdown
//! (`poll_without_shutdown`, `into_parts`), with any bytes hyper had read but not used. The
//! parked connection holds only its socket (and scanner) until the client sends again; then a new segment
//! picks up where the last one stopped, those bytes first. As nginx does between keep-alive
//! requests.
//!
//! The idle keep-alive limit (`header_read_timeout`) is enforced here, not by hyper (whose
//! timer would cost a timer and an allocation per request and restart with each segment): the
//! wait for a request's head counts from the end of the previous response (or the connection's
//! start) and is checked by the segment's periodic check, and across a park by the parked
//! connection's wait.
//!
//! The same check drops a client that takes nothing of its response for
//! `client_send_timeout` (nginx's `send_timeout`): the socket refused a write (hyper has bytes
//! to send) and no write has gone through since. The write path only notes a refusal and the
//! first write after it, so a request costs no timer and no clock read for this.
//!
//! # Framing
//!
//! hyper reads a request with both `Content-Length` and `Transfer-Encoding` as chunked and
//! drops the `Content-Length` before the handler sees it; the proxy refuses such requests.
//! So the bytes a connection reads also go through a `framing::Scanner` (carried across
//! parks), and a request whose head carried both goes to [`Handler::refuse_ambiguous`]
//! instead of [`Handler::handle`]. Scanning costs a pass over each head's line ends.
//!
//! # Upgrades
//!
//! `poll_without_shutdown` cannot hand a connection to hyper's upgrade machinery: when a `101`
//! has been written it fails the request's `hyper::upgrade::on` (hyper expects the caller to
//! take the socket back itself). So a segment that sees a request asking to switch protocols
//! (an `Upgrade` header) stops parking and runs the rest of the connection as hyper's own
//! `with_upgrades()` connection: the handler uses `hyper::upgrade::on` as with any hyper
//! server. Such a connection, if the upstream declines the switch, goes on serving keep-alive
//! requests without parking; the idle limit still holds.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::framing::Scanner;
use crate::admission::Admitted;
use crate::metrics::Metrics;

/// An HTTP/1 connection with nothing in flight and no traffic for this long gives back hyper's
/// buffers (it parks between one and two of these after its last byte, at the segment's
/// check). Short enough that a crowd of idle clients never holds many buffers at once, long
/// enough that a busy keep-alive connection never parks between its requests. 10,000 clients
/// opening in about 2.5 s and going quiet peak at 42 to 52 MiB with 50 ms, against 49 to 66
/// MiB with 100 ms (`bench/idle_conns.py`); each check of a busy connection costs a wake-up.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(50);

/// While a request is in flight (a long poll, a stream, a slow upstream) the connection cannot
/// park, and the check backs off, doubling up to this, so that many such connections do not
/// wake ten times a second each.
const BUSY_CHECK_MAX: Duration = Duration::from_secs(1);

/// A socket a parked connection can wait on.
pub(super) trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when the client has sent something (or closed).
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Socket for Admitted<TcpStream> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().poll_read_ready(cx)
    }
}

/// hyper reads a TLS connection until rustls has no plaintext left and the socket would block,
/// so an idle TLS connection has nothing buffered and waits on its TCP socket.
impl Socket for tokio_rustls::server::TlsStream<Admitted<TcpStream>> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.get_ref().poll_read_ready(cx)
    }
}

/// What the parked HTTP/1 connections of one server share.
pub(super) struct Http1 {
    pub builder: http1::Builder,
    /// A client must send a request's complete head within this time, and an idle keep-alive
    /// connection is closed after it (see the module docs).
    pub header_read_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// Set once shutdown begins (before the shutdown signal is sent).
    pub draining: Arc<AtomicBool>,
    /// A client that takes nothing of its response this long is dropped (see the module
    /// docs).
    pub client_send_timeout: Duration,
}

impl Http1 {
    pub fn new(
        max_buf_size: usize,
        header_read_timeout: Duration,
        client_send_timeout: Duration,
        metrics: Arc<Metrics>,
        draining: Arc<AtomicBool>,
    ) -> Http1 {
        let mut builder = http1::Builder::new();
        builder
            // Enforced by the segments instead (see the module docs).
            .header_read_timeout(None)
            .max_buf_size(max_buf_size)
            .keep_alive(true);
        Http1 { builder, header_read_timeout, metrics, draining, client_send_timeout }
    }
}

/// What serves the requests of a parked connection.
pub(super) trait Handler: Clone + Send + Sync + Unpin + 'static {
    type Body: Body<Data = Bytes> + Send + 'static;

    /// The response to one request. Called in the boxed request future, so that the future it
    /// returns is made in place there rather than moved in.
    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Response<Self::Body>> + Send + '_;

    /// The response to a request whose head carried both `Content-Length` and
    /// `Transfer-Encoding` (see the module docs): never handled, and it should close the
    /// connection (hyper already will).
    fn refuse_ambiguous(&self, req: Request<Incoming>) -> Response<Self::Body>;
}

/// Serves one HTTP/1 connection until it closes, is upgraded, fails, or the server shuts down,
/// parking it whenever it is idle (see the module docs). Each request goes to `handler`.
/// `unread` holds bytes already read off `socket`; the first request's head is due by
/// `head_deadline`.
pub(super) async fn serve<S, H>(
    http1: &Http1,
    mut socket: S,
    mut unread: Bytes,
    mut head_deadline: Instant,
    handler: H,
    shutdown: &mut watch::Receiver<bool>,
    peer: SocketAddr,
) where
    S: Socket,
    H: Handler,
    <H::Body as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let state = Arc::new(ConnState::new());
    let mut framing = Scanner::new();
    framing.scan(&unread);
    loop {
        let segment = Segment { http1, state: &state, peer, head_deadline };
        // Boxed: a parked connection's task then holds only this loop's few words (the
        // scanner's among them).
        let segment = Box::pin(segment.run(socket, unread, framing, handler.clone(), shutdown));
        let Ended::Parked { socket: s, unread: u, framing: f } = segment.await else { return };
        socket = s;
        unread = u;
        framing = f;
        // A segment parks only after a request: the end of its response started the wait for
        // the next head.
        head_deadline = state.next_head_due(http1.header_read_timeout);
        if !unread.is_empty() {
            continue; // part of the next request is already here
        }
        http1.metrics.connection_parked();
        let resume = tokio::select! {
            r = poll_fn(|cx| socket.poll_readable(cx)) => r.is_ok(),
            () = tokio::time::sleep_until(head_deadline) => false,
            () = shutting_down(shutdown) => false,
        };
        http1.metrics.connection_unparked();
        if !resume {
            return;
        }
    }
}

/// Resolves once the server starts shutting down (at once if it already has).
pub(super) async fn shutting_down(shutdown: &mut watch::Receiver<bool>) {
    // An error means the server is gone, which is a shutdown too.
    let _ = shutdown.wait_for(|stopping| *stopping).await;
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
    /// A request asked to switch protocols: the connection is served by hyper's upgradeable
    /// connection from then on (see the module docs).
    upgrade_asked: AtomicBool,
    /// The socket refused a write and none has gone through since: the client is not taking
    /// its response.
    write_blocked: AtomicBool,
    /// Times a refused write was followed by one that went through: the client took some.
    unblocked: AtomicU64,
    /// The index of the first request whose head carried both framing headers; `u64::MAX`
    /// while there is none.
    ambiguous_from: AtomicU64,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            activity: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_us: AtomicU64::new(0),
            start: Instant::now(),
            upgrade_asked: AtomicBool::new(false),
            write_blocked: AtomicBool::new(false),
            unblocked: AtomicU64::new(0),
            ambiguous_from: AtomicU64::new(u64::MAX),
        }
    }

    fn touch(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }

    /// A write (or flush) went through: one load on the hot path, more only after a refusal.
    fn wrote(&self) {
        if self.write_blocked.load(Ordering::Relaxed) {
            self.write_blocked.store(false, Ordering::Relaxed);
            self.unblocked.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn response_ended(&self) {
        let since_start = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.idle_since_us.store(since_start, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// When the next request's head is due: `limit` after the latest response ended.
    fn next_head_due(&self, limit: Duration) -> Instant {
        self.start + Duration::from_micros(self.idle_since_us.load(Ordering::Relaxed)) + limit
    }
}

/// The schedule of a segment's periodic check.
struct Checks {
    every: Duration,
}

impl Checks {
    /// When to check next, or `None` when the connection waits for a request head that is
    /// overdue (`head_due` says since when it is due): then it closes.
    fn next(&mut self, state: &ConnState, head_due: impl Fn() -> Instant) -> Option<Instant> {
        let now = Instant::now();
        let busy = state.busy();
        let head_due = (!busy).then(head_due);
        if head_due.is_some_and(|due| now >= due) {
            return None;
        }
        self.every = if busy { (self.every * 2).min(BUSY_CHECK_MAX) } else { PARK_AFTER };
        let next = now + self.every;
        Some(head_due.map_or(next, |due| due.min(next)))
    }
}

/// Since when a client has taken nothing of its response, as the periodic check sees it.
#[derive(Default)]
struct SendStall {
    /// When the check first saw the current refusal, and the `unblocked` count then.
    since: Option<(Instant, u64)>,
}

impl SendStall {
    /// Whether the client has taken nothing for `limit`: a write was refused, and none went
    /// through since the check first saw that (so it counts from a check, at most one check
    /// period late).
    fn over(&mut self, state: &ConnState, limit: Duration) -> bool {
        if !state.write_blocked.load(Ordering::Relaxed) {
            self.since = None;
            return false;
        }
        let now = Instant::now();
        let unblocked = state.unblocked.load(Ordering::Relaxed);
        match self.since {
            Some((since, seen)) if seen == unblocked => now.duration_since(since) >= limit,
            _ => {
                self.since = Some((now, unblocked));
                false
            }
        }
    }
}

/// What a segment's wait ended with.
enum Woke {
    Conn(hyper::Result<()>),
    /// The server is shutting down.
    Stop,
    /// Time for the segment's periodic check.
    Check,
    /// A request asked to switch protocols.
    Upgrade,
}

/// How a segment ended.
enum Ended<S> {
    /// Idle after at least one request: the socket, what hyper had read of the next request,
    /// and the framing scanner, which has seen those bytes.
    Parked { socket: S, unread: Bytes, framing: Scanner },
    /// Closed, upgraded, failed or shut down: the connection is over.
    Done,
}

/// One hyper connection on the socket, from a park (or the start) to the next (see the
/// module docs).
struct Segment<'a> {
    http1: &'a Http1,
    state: &'a Arc<ConnState>,
    peer: SocketAddr,
    /// When the segment's first request head must be in.
    head_deadline: Instant,
}

impl Segment<'_> {
    async fn run<S, H>(
        self,
        socket: S,
        unread: Bytes,
        framing: Scanner,
        handler: H,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended<S>
    where
        S: Socket,
        H: Handler,
        <H::Body as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Segment { http1, state, peer, head_deadline } = self;
        let service = {
            let state = state.clone();
            service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                let index = state.requests.fetch_add(1, Ordering::Relaxed);
                let ambiguous = index >= state.ambiguous_from.load(Ordering::Relaxed);
                state.in_flight.fetch_add(1, Ordering::Relaxed);
                state.touch();
                if req.headers().contains_key(http::header::UPGRADE) {
                    state.upgrade_asked.store(true, Ordering::Relaxed);
                }
                // Made here, so that a future hyper drops unpolled still counts down.
                let guard = InFlight(state.clone());
                // Boxed: hyper keeps the slot for a connection's request future for the
                // connection's whole life, and the handler's future is several KiB.
                crate::boxed::pin_in_place(|| async move {
                    let resp =
                        if ambiguous { handler.refuse_ambiguous(req) } else { handler.handle(req).await };
                    Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked { body, _guard: guard }))
                })
            })
        };
        let io = Rewind::counted(socket, unread, state.clone(), framing);
        let mut conn = http1.builder.serve_connection(TokioIo::new(io), service);

        let requests_before = state.requests.load(Ordering::Relaxed);
        // Waiting for a head: since the segment began (a deadline that may have started before
        // it, across parks) or since the last response ended.
        let head_due = || {
            if state.requests.load(Ordering::Relaxed) == requests_before {
                head_deadline
            } else {
                state.next_head_due(http1.header_read_timeout)
            }
        };
        let mut seen = state.activity.load(Ordering::Relaxed);
        let mut checks = Checks { every: PARK_AFTER };
        let mut stall = SendStall::default();
        let mut check = pin!(tokio::time::sleep_until((Instant::now() + PARK_AFTER).min(head_deadline)));
        let mut stop = pin!(shutting_down(shutdown));
        let draining = &*http1.draining;
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
                if state.upgrade_asked.load(Ordering::Relaxed) {
                    return Poll::Ready(Woke::Upgrade);
                }
                if let Poll::Ready(r) = conn.poll_without_shutdown(cx) {
                    return Poll::Ready(Woke::Conn(r));
                }
                if !closing && (!stop_polled || draining.load(Ordering::Relaxed)) {
                    stop_polled = true;
                    if stop.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Woke::Stop);
                    }
                }
                // Checked while closing too: a client that takes nothing of a response still
                // being written must not hold the connection.
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
                Woke::Upgrade => break Ok(()),
                Woke::Stop => {
                    closing = true;
                    Pin::new(&mut conn).graceful_shutdown();
                }
                Woke::Check => {
                    if stall.over(state, http1.client_send_timeout) {
                        client_took_nothing(peer, http1.client_send_timeout);
                        return Ended::Done;
                    }
                    let Some(next) = checks.next(state, head_due) else {
                        tracing::debug!(peer = %peer, "no request head within the header read timeout; closing");
                        return Ended::Done;
                    };
                    check.as_mut().reset(next);
                    check_polled = false;
                    if closing {
                        continue;
                    }
                    let busy = state.busy();
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

        if state.upgrade_asked.load(Ordering::Relaxed) {
            // The rest of the connection is hyper's own, with upgrades (see the module docs).
            let mut conn = pin!(conn.with_upgrades());
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
                        }
                        return Ended::Done;
                    }
                    () = stop.as_mut(), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    () = check.as_mut() => {
                        if stall.over(state, http1.client_send_timeout) {
                            client_took_nothing(peer, http1.client_send_timeout);
                            return Ended::Done;
                        }
                        let Some(next) = checks.next(state, head_due) else {
                            tracing::debug!(peer = %peer, "no request head within the header read timeout; closing");
                            return Ended::Done;
                        };
                        check.as_mut().reset(next);
                    }
                }
            }
        }

        let parts = conn.into_parts();
        let (mut socket, rest, framing) = parts.io.into_inner().into_counted_parts();
        let unread = join(rest, parts.read_buf);
        if let Err(e) = result {
            tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
            return Ended::Done;
        }
        if parking {
            return Ended::Parked { socket, unread, framing };
        }
        // Closed by the client, by `Connection: close`, or for shutdown: what hyper's own
        // connection future does at the end.
        let _ = socket.shutdown().await;
        Ended::Done
    }
}

fn client_took_nothing(peer: SocketAddr, limit: Duration) {
    tracing::info!(
        peer = %peer,
        client_send_timeout_ms = limit.as_millis() as u64,
        "the client took nothing of its response for client_send_timeout_ms; closing the connection"
    );
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
    struct Tracked<B> {
        #[pin]
        body: B,
        _guard: InFlight,
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An IO that reads `prefix` first (bytes already taken off the socket: by the protocol
/// sniffer, or by the last segment) and, for a segment's hyper, counts every read and write as
/// a sign of life of the connection and passes what it reads to the framing scanner.
pub(super) struct Rewind<I> {
    io: I,
    prefix: Bytes,
    /// A segment's: the connection's state, and the scanner that has seen every byte read
    /// before (the prefix included).
    counted: Option<(Arc<ConnState>, Scanner)>,
}

impl<I> Rewind<I> {
    pub fn new(io: I, prefix: Bytes) -> Rewind<I> {
        Rewind { io, prefix, counted: None }
    }

    fn counted(io: I, prefix: Bytes, state: Arc<ConnState>, framing: Scanner) -> Rewind<I> {
        Rewind { io, prefix, counted: Some((state, framing)) }
    }

    /// The IO and whatever of the prefix was not read.
    #[cfg(test)]
    fn into_parts(self) -> (I, Bytes) {
        (self.io, self.prefix)
    }

    /// The IO, whatever of the prefix was not read, and the framing scanner.
    fn into_counted_parts(self) -> (I, Bytes, Scanner) {
        let framing = self.counted.map_or_else(Scanner::new, |(_, framing)| framing);
        (self.io, self.prefix, framing)
    }

    fn state(&self) -> Option<&ConnState> {
        self.counted.as_ref().map(|(state, _)| &**state)
    }

    fn touch<T>(&self, r: Poll<T>) -> Poll<T> {
        if let (Some(state), true) = (self.state(), r.is_ready()) {
            state.touch();
        }
        r
    }

    /// A write or flush: a sign of life when it went through, and either way what the
    /// send-stall check needs to know.
    fn wrote<T>(&self, r: Poll<T>, touch: bool) -> Poll<T> {
        if let Some(state) = self.state() {
            if r.is_ready() {
                if touch {
                    state.touch();
                }
                state.wrote();
            } else {
                state.write_blocked.store(true, Ordering::Relaxed);
            }
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
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let (Some((state, framing)), Poll::Ready(Ok(()))) = (&mut self.counted, &r) {
            framing.scan(&buf.filled()[before..]);
            if let Some(index) = framing.ambiguous() {
                state.ambiguous_from.store(index, Ordering::Relaxed);
            }
        }
        self.touch(r)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(r, true)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(r, true)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    /// TLS buffers what is written and may refuse a flush instead.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.wrote(r, false)
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
    use bytes::BytesMut;
    use tokio::io::AsyncReadExt;

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
}
