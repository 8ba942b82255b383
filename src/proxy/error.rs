//! Everything that can go wrong on a request, and the one place that turns it into a status
//! code (the README, "Errors") and a log line.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::client::UpstreamError;
use super::response::{status_response, ProxyBody};
use crate::session::{BadHeaders, SaveError};
use crate::store::StoreError;

/// Why a request got an answer of the proxy's own instead of the upstream's.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// No `[[route]]` matches the request.
    #[error("no route matches")]
    NoRoute,
    /// The route's `require` is not met and this is a browser navigation: sent to log in
    /// (the `Location`).
    #[error("the route requires a session that this request does not have; sent to log in")]
    LoginRequired(HeaderValue),
    /// The route's `require` is not met.
    #[error("the route requires a session that this request does not have")]
    Unauthorized,
    /// The request's framing is ambiguous or not one the proxy passes on (the reason says
    /// which): never forwarded, and the connection closes after the answer (RFC 9112 §6.3).
    #[error("request framing refused: {0}")]
    BadFraming(&'static str),
    /// The session could not be read and `on_store_error = "fail"`: the upstream is not called.
    #[error("session store read failed: {0}")]
    StoreRead(StoreError),
    /// The upstream refused or reset the connection, or answered with garbage.
    #[error("upstream failed: {0}")]
    Upstream(UpstreamError),
    /// The upstream did not answer in time (its connect, its response headers within
    /// `upstream_timeout_ms`, or it stopped reading the request body); the reason is for the
    /// log line.
    #[error("upstream timed out: {0}")]
    UpstreamTimeout(&'static str),
    /// The client stopped sending its request body for this long; the upstream request was
    /// aborted.
    #[error("the client sent no request body data for {0:?}")]
    ClientBodyIdle(Duration),
    /// The upstream sent session headers that cannot be acted on (an update or patch that is
    /// not a JSON object, too large, or both at once); nothing was written.
    #[error("upstream sent {0}")]
    BadUpdate(BadHeaders),
    /// The store write of a session change failed: never a 2xx for a change that was not saved.
    #[error("session store write failed: {0}")]
    StoreWrite(StoreError),
    /// The session was destroyed or moved to another id while the request was in flight:
    /// nothing was written, and the client keeps no cookie of it (the README, "Concurrent
    /// requests").
    #[error("the session was destroyed or moved while the request was in flight")]
    Interrupted,
    /// Other requests kept changing the session through every conditional write.
    #[error("the session kept changing under every conditional write")]
    Contended,
    /// The upstream answered 101 to a request that did not ask to switch protocols.
    #[error("upstream switched protocols without being asked")]
    UnaskedUpgrade,
}

impl Failure {
    /// the README's error table.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Failure::NoRoute => StatusCode::NOT_FOUND,
            Failure::LoginRequired(_) => StatusCode::FOUND,
            Failure::Unauthorized => StatusCode::UNAUTHORIZED,
            Failure::BadFraming(_) => StatusCode::BAD_REQUEST,
            Failure::ClientBodyIdle(_) => StatusCode::REQUEST_TIMEOUT,
            Failure::Upstream(_) | Failure::BadUpdate(_) | Failure::UnaskedUpgrade => StatusCode::BAD_GATEWAY,
            Failure::Interrupted => StatusCode::CONFLICT,
            Failure::StoreRead(_) | Failure::StoreWrite(_) | Failure::Contended => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Failure::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The response the client gets: the status with its reason phrase as a short text body;
    /// a store failure says when to try again.
    pub(crate) fn response(&self) -> Response<ProxyBody> {
        let status = self.status();
        let mut resp = status_response(status, status_text(status));
        let headers = resp.headers_mut();
        match self {
            Failure::StoreRead(_) | Failure::StoreWrite(_) | Failure::Contended => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Failure::LoginRequired(location) => {
                headers.insert(header::LOCATION, location.clone());
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
            Failure::Unauthorized => {
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
            _ => {}
        }
        if let Failure::BadFraming(_) = self {
            // Where the next request would start is not certain.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// Logs the failure with the request id and route (a request that matched no route is not
    /// logged: it is the client's mistake, and the access log has it). Messages never carry a
    /// session value, a cookie or a secret.
    pub(crate) fn log(&self, request_id: &str, route: &str) {
        let status = self.status().as_u16();
        match self {
            // Not the proxy's trouble: the access log has them.
            Failure::NoRoute | Failure::LoginRequired(_) | Failure::Unauthorized => {}
            Failure::BadFraming(reason) => {
                tracing::warn!(request_id, status, reason, "request framing refused; closing the connection");
            }
            Failure::StoreRead(error) => {
                tracing::warn!(request_id, route, status, error = %error, "session store read failed; answering 503");
            }
            Failure::StoreWrite(error) => {
                tracing::warn!(request_id, route, status, error = %error, "session store write failed; answering 503");
            }
            Failure::BadUpdate(error) => {
                tracing::warn!(request_id, route, status, error = %error, "upstream sent bad session headers; nothing written");
            }
            Failure::Interrupted => {
                tracing::warn!(
                    request_id,
                    route,
                    status,
                    "session destroyed or moved while the request was in flight; nothing written"
                );
            }
            Failure::Contended => {
                tracing::warn!(
                    request_id,
                    route,
                    status,
                    "session kept changing under every conditional write; nothing written"
                );
            }
            Failure::Upstream(error) => {
                // The error's text names the upstream and carries its cause.
                tracing::warn!(request_id, route, status, reason = %error, "upstream failed");
            }
            Failure::UpstreamTimeout(_) | Failure::ClientBodyIdle(_) => {
                tracing::warn!(request_id, route, status, reason = %self, "upstream failed");
            }
            Failure::UnaskedUpgrade => {
                tracing::warn!(request_id, route, status, "upstream switched protocols without being asked");
            }
        }
    }
}

impl From<SaveError> for Failure {
    fn from(e: SaveError) -> Failure {
        match e {
            SaveError::Bad(e) => Failure::BadUpdate(e),
            SaveError::Store(e) => Failure::StoreWrite(e),
            SaveError::Interrupted => Failure::Interrupted,
            SaveError::Contended => Failure::Contended,
        }
    }
}

fn status_text(status: StatusCode) -> &'static str {
    match status {
        StatusCode::FOUND => "302 Found\n",
        StatusCode::UNAUTHORIZED => "401 Unauthorized\n",
        StatusCode::BAD_REQUEST => "400 Bad Request\n",
        StatusCode::NOT_FOUND => "404 Not Found\n",
        StatusCode::REQUEST_TIMEOUT => "408 Request Timeout\n",
        StatusCode::CONFLICT => "409 Conflict\n",
        StatusCode::SERVICE_UNAVAILABLE => "503 Service Unavailable\n",
        StatusCode::GATEWAY_TIMEOUT => "504 Gateway Timeout\n",
        _ => "502 Bad Gateway\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_has_its_status_and_store_failures_say_when_to_retry() {
        let cases = [
            (Failure::NoRoute, 404),
            (Failure::LoginRequired(HeaderValue::from_static("/login?next=%2F")), 302),
            (Failure::Unauthorized, 401),
            (Failure::BadFraming("both Content-Length and Transfer-Encoding"), 400),
            (Failure::ClientBodyIdle(Duration::from_secs(1)), 408),
            (Failure::BadUpdate(BadHeaders::UpdateAndPatch), 502),
            (Failure::Interrupted, 409),
            (Failure::Contended, 503),
            (Failure::UnaskedUpgrade, 502),
            (Failure::StoreRead(StoreError::Timeout), 503),
            (Failure::StoreWrite(StoreError::Unavailable("down".into())), 503),
            (Failure::UpstreamTimeout("no response headers"), 504),
        ];
        for (failure, status) in cases {
            let resp = failure.response();
            assert_eq!(resp.status().as_u16(), status, "{failure}");
            assert_eq!(resp.headers().get(header::RETRY_AFTER).is_some(), status == 503, "{failure}");
            assert_eq!(resp.headers().get(header::LOCATION).is_some(), status == 302, "{failure}");
            assert_eq!(
                resp.headers().get(header::CACHE_CONTROL).is_some(),
                matches!(status, 302 | 401),
                "{failure}"
            );
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8");
            assert_eq!(resp.headers().get(header::CONNECTION).is_some(), status == 400, "{failure}");
        }
    }
}
