//! Body types: the client's request body on its way upstream, which says when it has been
//! sent in full (the upstream timeout starts then), and the response body type.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::sync::oneshot;

/// What the proxy sends to clients: the upstream's streamed body, or a small body of its own
/// (errors, 404). `Either` avoids boxing on the hot path.
pub(crate) type ProxyBody = Either<Incoming, Full<Bytes>>;

/// A short local response body.
pub(crate) fn local(text: &'static str) -> ProxyBody {
    Either::Right(Full::new(Bytes::from_static(text.as_bytes())))
}

pin_project_lite::pin_project! {
    /// The client's request body, streamed to the upstream. When the last frame has been
    /// handed over, it fires `sent`: `upstream_timeout_ms` counts from that moment, so a slow
    /// upload is bounded by client-side timeouts rather than cut by the upstream timeout.
    pub(crate) struct UpstreamBody {
        #[pin]
        inner: Incoming,
        sent: Option<oneshot::Sender<()>>,
    }
}

impl UpstreamBody {
    pub(crate) fn new(inner: Incoming, sent: oneshot::Sender<()>) -> UpstreamBody {
        let mut body = UpstreamBody { inner, sent: Some(sent) };
        if body.inner.is_end_stream() {
            body.fire();
        }
        body
    }

    fn fire(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
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
