//! The client's request body on its way upstream: it says when it has been sent in full (the
//! upstream timeout starts then), sees an upstream that stops reading it, and is cut when the
//! client stops sending.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// Why the request body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestBodyError {
    /// The client sent nothing for the body idle timeout (the request is answered 408; the
    /// body's [`BodyWatch`] says so too).
    #[error("the client sent no request body data for {0:?}")]
    Idle(Duration),
    /// The client's connection failed or sent a malformed body.
    #[error("request body: {0}")]
    Client(#[from] hyper::Error),
}

pin_project_lite::pin_project! {
    /// The client's request body, streamed to the upstream. When the last frame has been
    /// handed over, it fires `sent`: `upstream_timeout_ms` counts from that moment, so a slow
    /// upload is bounded by client-side timeouts rather than cut by the upstream timeout.
    /// The client-side timeout is `idle_timeout`: a body that sends nothing for that long
    /// fails, which aborts the upstream request (hyper has no body read timeout, so a client
    /// that stops mid-body would otherwise hold a client and an upstream connection forever).
    pub(crate) struct UpstreamBody {
        #[pin]
        inner: Incoming,
        sent: Option<oneshot::Sender<()>>,
        // `None` for a body that was complete from the start (a GET): nothing to watch.
        handoff: Option<Arc<Handoff>>,
        idle_timeout: Duration,
        // Armed when the client has nothing to give (and only then: while the upstream is
        // slow to take data, hyper does not poll this body and that time is not the client's),
        // disarmed by the next frame. Boxed (`Sleep` is not `Unpin`) only for bodies that ever
        // wait, so a GET costs nothing.
        idle: Option<Pin<Box<Sleep>>>,
        idle_armed: bool,
    }
}

impl UpstreamBody {
    /// The body, and the watch the request's deadline uses to follow it; no watch for a body
    /// that is complete already (no body at all, as in most requests), which then costs
    /// neither a channel nor a clock read.
    pub(crate) fn new(inner: Incoming, idle_timeout: Duration) -> (UpstreamBody, Option<BodyWatch>) {
        let mut body =
            UpstreamBody { inner, sent: None, handoff: None, idle_timeout, idle: None, idle_armed: false };
        if body.inner.is_end_stream() {
            return (body, None);
        }
        let (tx, sent) = oneshot::channel();
        let handoff = Arc::new(Handoff {
            start: Instant::now(),
            since_ms: AtomicU64::new(0),
            client_idle: AtomicBool::new(false),
        });
        body.sent = Some(tx);
        body.handoff = Some(handoff.clone());
        (body, Some(BodyWatch { sent, stall: StallWatch { handoff } }))
    }
}

/// Since when the upstream connection has held a frame of the body without asking for the
/// next one: the time the upstream spends not reading the request.
#[derive(Debug)]
struct Handoff {
    start: Instant,
    /// Milliseconds after `start`, plus one, of the last frame handed over that was not
    /// followed by another poll; 0 while hyper is asking for more or the body is done.
    since_ms: AtomicU64,
    /// The body failed because the client sent nothing for the idle timeout: the request
    /// failed on the client's side, not the upstream's.
    client_idle: AtomicBool,
}

impl Handoff {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }
}

/// What the request's deadline knows of its body (see [`UpstreamBody`]).
pub(crate) struct BodyWatch {
    /// Fires when the last frame has been handed to the upstream connection.
    pub sent: oneshot::Receiver<()>,
    /// Sees an upstream that stopped reading the body.
    pub stall: StallWatch,
}

/// See [`StallWatch::upstream_stalled`] and [`StallWatch::client_went_idle`].
pub(crate) struct StallWatch {
    handoff: Arc<Handoff>,
}

impl StallWatch {
    /// Whether the body was cut because the client stopped sending it.
    pub(crate) fn client_went_idle(&self) -> bool {
        self.handoff.client_idle.load(Ordering::Relaxed)
    }

    /// Completes when the upstream has not taken any of the body for `idle` (the proxy passes
    /// `upstream_timeout_ms`): it accepted the request but stopped reading it, which neither
    /// the client-side idle timeout (the client is not the one waiting) nor the wait for
    /// response headers (the body never ends) would bound.
    pub(crate) async fn upstream_stalled(&self, idle: Duration) {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let check_every = (idle / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(check_every).await;
            let since = self.handoff.since_ms.load(Ordering::Relaxed);
            if since != 0 && self.handoff.now_ms().saturating_sub(since) >= idle_ms {
                return;
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let mut this = self.project();
        // hyper is asking for more: whatever it was handed has been taken.
        if let Some(handoff) = this.handoff.as_deref() {
            handoff.since_ms.store(0, Ordering::Relaxed);
        }
        let polled = match this.inner.as_mut().poll_frame(cx) {
            Poll::Pending => {
                let timeout = *this.idle_timeout;
                let idle = this.idle.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if !*this.idle_armed {
                    idle.as_mut().reset(Instant::now() + timeout);
                    *this.idle_armed = true;
                }
                match idle.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        if let Some(handoff) = this.handoff.as_deref() {
                            handoff.client_idle.store(true, Ordering::Relaxed);
                        }
                        Poll::Ready(Some(Err(RequestBodyError::Idle(timeout))))
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            Poll::Ready(polled) => {
                *this.idle_armed = false;
                Poll::Ready(polled.map(|frame| frame.map_err(RequestBodyError::from)))
            }
        };
        let done = match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
            // With a known length, hyper stops polling after the last data frame.
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if done {
            if let Some(tx) = this.sent.take() {
                let _ = tx.send(());
            }
        } else if let (Poll::Ready(Some(Ok(_))), Some(handoff)) = (&polled, this.handoff.as_deref()) {
            handoff.since_ms.store(handoff.now_ms(), Ordering::Relaxed);
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
