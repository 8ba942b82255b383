//! What the proxy sends to clients: the upstream's streamed body, or a short text of its own
//! (errors, 404).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use tokio::time::{Instant, Sleep};

use super::client::PooledBody;

/// A response body: the upstream's, streamed, or one of the proxy's own. `Either` avoids
/// boxing on the hot path.
pub(crate) type ProxyBody = Either<Streamed, Full<Bytes>>;

/// A response of the proxy's own: `status` with a short plain-text body.
pub(crate) fn status_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(text.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Why the upstream's response body did not reach its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResponseBodyError {
    /// The upstream connection failed or sent a malformed body.
    #[error("upstream response body: {0}")]
    Upstream(#[from] hyper::Error),
    /// The upstream sent nothing for the route's read timeout.
    #[error("the upstream sent nothing of its response body for {0:?}")]
    Stalled(Duration),
}

/// The upstream's response body on its way to the client, cut when the upstream sends nothing
/// for the route's read timeout (`upstream_read_timeout_ms`, per route `read_timeout_ms`): the
/// client's response then ends unfinished (hyper closes an HTTP/1 connection mid-body, resets
/// an HTTP/2 stream) and the upstream connection is closed, never pooled.
///
/// The timer is armed only when the upstream has nothing to give, and disarmed by its next
/// frame: while the client is slow to take the response, hyper does not poll this body, and
/// that time is not the upstream's. A body that never waits (most: the head and a small body
/// arrive together) costs no timer.
pub(crate) struct Streamed {
    inner: PooledBody,
    read_timeout: Option<Duration>,
    /// Made on the first wait, then reset; boxed because `Sleep` is not `Unpin`.
    idle: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// For the log line when the body is cut.
    request_id: HeaderValue,
}

impl Streamed {
    pub(crate) fn new(
        inner: PooledBody,
        read_timeout: Option<Duration>,
        request_id: HeaderValue,
    ) -> Streamed {
        Streamed { inner, read_timeout, idle: None, armed: false, request_id }
    }

    /// Whether the upstream has sent nothing for the read timeout, counting from the first
    /// wait since its last frame (the timer is armed by that wait).
    fn stalled(&mut self, cx: &mut Context<'_>) -> Option<Duration> {
        let timeout = self.read_timeout?;
        let idle = self.idle.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if !self.armed {
            idle.as_mut().reset(Instant::now() + timeout);
            self.armed = true;
        }
        idle.as_mut().poll(cx).is_ready().then_some(timeout)
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(ResponseBodyError::from)))
            }
            Poll::Pending => match this.stalled(cx) {
                None => Poll::Pending,
                Some(timeout) => {
                    // Not pooled: the connection still owes the rest of this body.
                    this.inner.abandon();
                    tracing::warn!(
                        request_id = this.request_id.to_str().unwrap_or("-"),
                        read_timeout_ms = timeout.as_millis() as u64,
                        "upstream sent nothing of its response body for the read timeout; \
                         the response is cut and the upstream connection closed"
                    );
                    Poll::Ready(Some(Err(ResponseBodyError::Stalled(timeout))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
