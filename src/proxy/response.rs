//! What the proxy sends to clients: the upstream's streamed body, or a short text of its own
//! (errors, 404).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use super::client::PooledBody;

/// A response body: the upstream's, streamed, or one of the proxy's own. `Either` avoids
/// boxing on the hot path.
pub(crate) type ProxyBody = Either<PooledBody, Full<Bytes>>;

/// A response of the proxy's own: `status` with a short plain-text body.
pub(crate) fn status_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(text.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
