//! HTTP/2 client connections: hyper's server with every limit set explicitly, and what hyper
//! leaves to its caller, bounded here:
//!
//! - an idle connection (no stream open, none started) closes after the idle timeout, even
//!   when it answers hyper's keep-alive pings (which only prove the peer is alive);
//! - a client that takes nothing of its responses for `client_send_timeout` (it grants no
//!   flow-control window, or does not read its socket) is dropped;
//! - a connection that was told to close (idle, or the server drains) and does not finish
//!   within the idle timeout is dropped (a client that reads nothing never gets the GOAWAY).
//!
//! A response body counts as waiting for the client from the moment it is handed to hyper, and
//! from each frame it hands hyper, until hyper asks for more: hyper asks only once the client
//! has made room (flow-control window and send buffer). The connection's periodic check (a fraction of the shorter timeout, one
//! timer per connection, none per request) watches those counters.
//!
//! The limits that bound abuse of the protocol itself (rapid reset, CONTINUATION floods,
//! SETTINGS and PING floods, more streams than allowed) are hyper's and h2's, set in
//! [`builder`] from [`super::limits`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use super::limits::{self, Limits};
use super::parking::shutting_down;
use crate::proxy::{ConnInfo, Proxy, ProxyBody};

/// The periodic check runs this many times per the shorter of the idle and send timeouts, so
/// either is enforced at most a quarter late.
const CHECKS_PER_TIMEOUT: u32 = 4;
/// The check never runs more often than this, whatever the timeouts.
const MIN_CHECK_EVERY: Duration = Duration::from_millis(10);

/// hyper's HTTP/2 server with the limits of [`Limits`] and [`limits`]' HTTP/2 constants.
pub(super) fn builder(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keep_alive)
        .keep_alive_timeout(limits.http2_keep_alive)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits::HTTP2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(limits::HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(limits::HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS)
        .max_send_buf_size(limits::HTTP2_MAX_SEND_BUF_SIZE)
        .initial_stream_window_size(limits::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(limits::HTTP2_CONNECTION_WINDOW)
        .max_frame_size(limits::HTTP2_MAX_FRAME_SIZE);
    http2
}

/// What one HTTP/2 connection's streams tell its periodic check.
#[derive(Default)]
struct Streams {
    /// Streams whose response has not ended (in the proxy, or its body being sent).
    in_flight: AtomicUsize,
    /// Streams started: any change is a sign of life.
    started: AtomicU64,
    /// Response bodies that handed hyper a frame and have not been asked for the next.
    waiting: AtomicUsize,
    /// Times a waiting body was asked for more: the client took something.
    taken: AtomicU64,
}

/// The timeouts of one connection.
pub(super) struct Timeouts {
    /// No stream open and none started for this long: the connection closes.
    pub idle: Duration,
    /// A client that takes nothing of its responses this long is dropped.
    pub client_send: Duration,
}

/// Serves one HTTP/2 connection until it closes, is dropped for one of the reasons in the
/// module docs, or the server shuts down.
pub(super) async fn serve<I>(
    builder: &http2::Builder<TokioExecutor>,
    timeouts: &Timeouts,
    io: I,
    proxy: Arc<Proxy>,
    info: ConnInfo,
    shutdown: &mut watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let streams = Arc::new(Streams::default());
    let service = {
        let streams = streams.clone();
        service_fn(move |req: Request<Incoming>| {
            let proxy = proxy.clone();
            let info = info.clone();
            streams.started.fetch_add(1, Ordering::Relaxed);
            streams.in_flight.fetch_add(1, Ordering::Relaxed);
            // Made here, so that a stream reset before its response still counts down.
            let guard = InFlight(streams.clone());
            crate::boxed::pin_in_place(|| async move {
                let resp = proxy.handle(req, &info).await;
                Ok::<_, std::convert::Infallible>(resp.map(|body| Watched::new(body, guard)))
            })
        })
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);

    let every = (timeouts.idle.min(timeouts.client_send) / CHECKS_PER_TIMEOUT).max(MIN_CHECK_EVERY);
    let mut check = tokio::time::interval_at(Instant::now() + every, every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = Watch::default();
    // Once the connection was told to close: when it must have.
    let mut closing: Option<Instant> = None;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            () = shutting_down(shutdown), if closing.is_none() => {
                closing = Some(Instant::now() + timeouts.idle);
                conn.as_mut().graceful_shutdown();
            }
            _ = check.tick() => {
                let now = Instant::now();
                if closing.is_some_and(|deadline| now >= deadline) {
                    tracing::debug!(peer = %peer, "HTTP/2 connection did not close in time; dropping it");
                    return;
                }
                match watch.check(&streams, now, timeouts) {
                    Verdict::Fine => {}
                    Verdict::Idle => {
                        if closing.is_none() {
                            tracing::debug!(peer = %peer, "idle HTTP/2 connection; closing");
                            closing = Some(now + timeouts.idle);
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                    Verdict::Stalled => {
                        tracing::info!(
                            peer = %peer,
                            client_send_timeout_ms = timeouts.client_send.as_millis() as u64,
                            "the client took nothing of its responses for client_send_timeout_ms; closing the connection"
                        );
                        return;
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
    }
}

/// What the periodic check concluded.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Fine,
    /// No stream open and none started for the idle timeout.
    Idle,
    /// Responses waiting for the client, and it took nothing of them for the send timeout.
    Stalled,
}

/// What the periodic check remembers between its runs.
#[derive(Default)]
struct Watch {
    /// Since when (as first seen by a check) nothing is in flight, and `started` then.
    idle_since: Option<(Instant, u64)>,
    /// Since when (as first seen) a response waits for the client, and `taken` then.
    stalled_since: Option<(Instant, u64)>,
}

impl Watch {
    fn check(&mut self, streams: &Streams, now: Instant, timeouts: &Timeouts) -> Verdict {
        let started = streams.started.load(Ordering::Relaxed);
        if streams.in_flight.load(Ordering::Relaxed) == 0 {
            match self.idle_since {
                Some((since, seen)) if seen == started => {
                    if now.duration_since(since) >= timeouts.idle {
                        return Verdict::Idle;
                    }
                }
                _ => self.idle_since = Some((now, started)),
            }
        } else {
            self.idle_since = None;
        }
        let taken = streams.taken.load(Ordering::Relaxed);
        if streams.waiting.load(Ordering::Relaxed) > 0 {
            match self.stalled_since {
                Some((since, seen)) if seen == taken => {
                    if now.duration_since(since) >= timeouts.client_send {
                        return Verdict::Stalled;
                    }
                }
                _ => self.stalled_since = Some((now, taken)),
            }
        } else {
            self.stalled_since = None;
        }
        Verdict::Fine
    }
}

/// Counts a stream as in flight until its response body has ended or been dropped (or its
/// request future, when the client reset the stream first).
struct InFlight(Arc<Streams>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that tells the connection when it waits for the client (see the module
/// docs).
struct Watched {
    body: ProxyBody,
    guard: InFlight,
    /// It was handed to hyper, or handed hyper a frame, and has not been asked for more.
    handed: bool,
}

impl Watched {
    /// A body hyper has yet to ask for, which waits on the client like a handed frame: with no
    /// window from the client, hyper never asks. One that is empty from the start waits for
    /// nothing (hyper ends the stream with the headers).
    fn new(body: ProxyBody, guard: InFlight) -> Watched {
        let handed = !body.is_end_stream();
        if handed {
            guard.0.waiting.fetch_add(1, Ordering::Relaxed);
        }
        Watched { body, guard, handed }
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = <ProxyBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let streams = &this.guard.0;
        if this.handed {
            this.handed = false;
            streams.waiting.fetch_sub(1, Ordering::Relaxed);
            streams.taken.fetch_add(1, Ordering::Relaxed);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Ok(_)))) && !this.body.is_end_stream() {
            this.handed = true;
            streams.waiting.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.handed {
            self.guard.0.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts =
        Timeouts { idle: Duration::from_secs(10), client_send: Duration::from_secs(60) };

    #[test]
    fn idle_counts_from_the_first_check_that_sees_nothing_in_flight_and_no_new_stream() {
        let streams = Streams::default();
        let mut watch = Watch::default();
        let t0 = Instant::now();
        assert_eq!(watch.check(&streams, t0, &TIMEOUTS), Verdict::Fine);
        assert_eq!(watch.check(&streams, t0 + Duration::from_secs(9), &TIMEOUTS), Verdict::Fine);
        // A stream came and went between two checks: idle starts again.
        streams.started.fetch_add(1, Ordering::Relaxed);
        assert_eq!(watch.check(&streams, t0 + Duration::from_secs(10), &TIMEOUTS), Verdict::Fine);
        assert_eq!(watch.check(&streams, t0 + Duration::from_secs(19), &TIMEOUTS), Verdict::Fine);
        assert_eq!(watch.check(&streams, t0 + Duration::from_secs(20), &TIMEOUTS), Verdict::Idle);
        // A stream in flight is never idle, however long.
        streams.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut watch = Watch::default();
        assert_eq!(watch.check(&streams, t0, &TIMEOUTS), Verdict::Fine);
        assert_eq!(watch.check(&streams, t0 + Duration::from_secs(3600), &TIMEOUTS), Verdict::Fine);
    }

    #[test]
    fn a_client_that_takes_nothing_for_the_send_timeout_is_stalled() {
        let streams = Streams::default();
        streams.in_flight.fetch_add(1, Ordering::Relaxed);
        streams.waiting.fetch_add(1, Ordering::Relaxed);
        let mut watch = Watch::default();
        let t0 = Instant::now();
        assert_eq!(watch.check(&streams, t0, &TIMEOUTS), Verdict::Fine);
        // It took something: the wait starts again.
        streams.taken.fetch_add(1, Ordering::Relaxed);
        assert_eq!(watch.check(&streams, t0 + Duration::from_secs(59), &TIMEOUTS), Verdict::Fine);
        assert_eq!(watch.check(&streams, t0 + Duration::from_secs(100), &TIMEOUTS), Verdict::Fine);
        assert_eq!(watch.check(&streams, t0 + Duration::from_secs(119), &TIMEOUTS), Verdict::Stalled);
        // Nothing waiting: a slow upstream is not the client's fault.
        streams.waiting.fetch_sub(1, Ordering::Relaxed);
        assert_eq!(watch.check(&streams, t0 + Duration::from_secs(500), &TIMEOUTS), Verdict::Fine);
    }
}
