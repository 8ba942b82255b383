//! The admin listener's responses: short texts and JSON.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

pub(crate) type AdminBody = Full<Bytes>;

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<AdminBody> {
    with_type(status, body.into(), "text/plain; charset=utf-8")
}

pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> Response<AdminBody> {
    with_type(status, Bytes::from(body.to_string()), "application/json")
}

pub(crate) fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<AdminBody> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
