//! The session management endpoints (the README's "Session management"), enabled by
//! `server.admin_token`: `GET`/`DELETE /sessions/{id}` and `GET`/`DELETE /index/{value}`.
//!
//! Every request needs `Authorization: Bearer <token>`. The token is compared in constant time
//! (the SHA-256 digests of the two, so not even its length shows in the timing) and never
//! logged; a missing or wrong one gets 401 and is counted. Without `admin_token` these paths are
//! 404, as any other unknown path.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use percent_encoding::percent_decode_str;
use ring::digest::{digest, SHA256};
use serde_json::json;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use super::reply::{json, text, AdminBody};
use crate::config::AdminToken;
use crate::metrics::Counter;
use crate::proxy::App;
use crate::session::id::is_valid_id;
use crate::session::IndexError;
use crate::store::Store;

/// What a session management request asks for, from its path.
pub(crate) enum Target<'a> {
    /// `/sessions/{id}`, the id still percent-encoded.
    Session(&'a str),
    /// `/index/{value}`, the value still percent-encoded.
    Index(&'a str),
}

impl<'a> Target<'a> {
    pub(crate) fn of(path: &'a str) -> Option<Target<'a>> {
        if let Some(id) = path.strip_prefix("/sessions/") {
            Some(Target::Session(id))
        } else {
            path.strip_prefix("/index/").map(Target::Index)
        }
    }
}

/// Serves one session management request.
pub(crate) async fn serve(
    method: &Method,
    headers: &HeaderMap,
    target: Target<'_>,
    app: &App,
    store: &Store,
    unauthorized: &Counter,
) -> Response<AdminBody> {
    let Some(token) = &app.admin_token else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    if !authorized(headers, token) {
        unauthorized.inc();
        let mut resp =
            text(StatusCode::UNAUTHORIZED, "unauthorized: send Authorization: Bearer <server.admin_token>\n");
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    if method != Method::GET && method != Method::DELETE {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, DELETE"));
        return resp;
    }
    let session = &app.session;
    let mut calls = session.calls(store);
    match target {
        Target::Session(raw) => {
            let Some(id) = decode(raw).filter(|id| is_valid_id(id)) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "not a session id: 1 to 256 bytes of UTF-8 without spaces or control characters\n",
                );
            };
            if method == Method::DELETE {
                return match session.revoke(&mut calls, &id).await {
                    Ok(_) => {
                        tracing::info!(target: "admin", "session revoked by an operator");
                        Response::builder()
                            .status(StatusCode::NO_CONTENT)
                            .body(AdminBody::default())
                            .unwrap_or_default()
                    }
                    Err(e) => store_failed(&e),
                };
            }
            match session.inspect(&mut calls, &id).await {
                Ok(Some((data, ttl))) => {
                    // The data as stored when it is JSON (an object, normally); a stored value
                    // that is not JSON is shown as a string.
                    let data = std::str::from_utf8(&data)
                        .ok()
                        .and_then(|text| RawValue::from_string(text.to_owned()).ok())
                        .map_or_else(|| json!(String::from_utf8_lossy(&data)), |raw| json!(raw));
                    json(StatusCode::OK, &json!({ "id": id, "ttl": ttl, "data": data }))
                }
                Ok(None) => text(StatusCode::NOT_FOUND, "no such session\n"),
                Err(e) => store_failed(&e),
            }
        }
        Target::Index(raw) => {
            let Some(value) = decode(raw).filter(|v| !v.is_empty()) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "not an index value: percent-encoded UTF-8, not empty\n",
                );
            };
            if method == Method::DELETE {
                return match session.revoke_index(&mut calls, &value).await {
                    Ok(revoked) => {
                        tracing::info!(target: "admin", revoked, "sessions revoked by an operator by index value");
                        json(StatusCode::OK, &json!({ "value": value, "revoked": revoked }))
                    }
                    Err(e) => index_failed(&e),
                };
            }
            match session.index_sessions(&mut calls, &value).await {
                Ok(live) => {
                    let sessions: Vec<_> =
                        live.iter().map(|(id, ttl)| json!({ "id": id, "ttl": ttl })).collect();
                    json(StatusCode::OK, &json!({ "value": value, "sessions": sessions }))
                }
                Err(e) => index_failed(&e),
            }
        }
    }
}

/// Whether the request carries `Authorization: Bearer <token>` (the scheme in any case).
fn authorized(headers: &HeaderMap, token: &AdminToken) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes) else {
        return false;
    };
    let Some((scheme, given)) = value.split_first_chunk::<7>() else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let (given, expected) = (digest(&SHA256, given.trim_ascii()), digest(&SHA256, token.as_bytes()));
    bool::from(given.as_ref().ct_eq(expected.as_ref()))
}

/// A path segment percent-decoded into UTF-8.
fn decode(raw: &str) -> Option<String> {
    percent_decode_str(raw).decode_utf8().ok().map(|s| s.into_owned())
}

fn store_failed(e: &crate::store::StoreError) -> Response<AdminBody> {
    tracing::warn!(target: "admin", error = %e, "session management: the store failed");
    let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, format!("the session store failed: {e}\n"));
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

fn index_failed(e: &IndexError) -> Response<AdminBody> {
    match e {
        IndexError::NotConfigured => text(StatusCode::NOT_FOUND, format!("{e}\n")),
        IndexError::Store(e) => store_failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(t: &str) -> AdminToken {
        crate::config::from_toml_str_with_env(
            &format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"{t}\"\n\
                 [session]\nsecrets = [\"s\"]\n[[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\n"
            ),
            |_| None,
        )
        .unwrap()
        .server
        .admin_token
        .unwrap()
    }

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let t = token("open-sesame-42");
        let check = |value: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(v) = value {
                headers.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            }
            authorized(&headers, &t)
        };
        assert!(check(Some("Bearer open-sesame-42")));
        assert!(check(Some("bearer open-sesame-42")));
        assert!(!check(None));
        assert!(!check(Some("Bearer open-sesame-4")));
        assert!(!check(Some("Bearer open-sesame-422")));
        assert!(!check(Some("Basic b3Blbi1zZXNhbWUtNDI=")));
        assert!(!check(Some("open-sesame-42")));
        assert!(!check(Some("Bearer")));
    }

    #[test]
    fn targets_and_path_decoding() {
        assert!(matches!(Target::of("/sessions/abc"), Some(Target::Session("abc"))));
        assert!(matches!(Target::of("/index/a%2Fb"), Some(Target::Index("a%2Fb"))));
        assert!(Target::of("/metrics").is_none());
        assert_eq!(decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(decode("%FF"), None);
    }
}
