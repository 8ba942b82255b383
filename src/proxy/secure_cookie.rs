//! The one warning about a `Secure` session cookie that browsers will drop (the README's error
//! table): with `session.secure = true`, a cookie set in answer to a plain-HTTP request is
//! refused by every browser, so each visit starts a new session and leaves an orphan key in the
//! store, and nothing else says why. curl and browsers accept `Secure` cookies from `localhost`
//! and loopback addresses, which hides the problem while developing; so the warning is for
//! other hosts, once per process (the first such response), not per request.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{HeaderMap, HeaderValue};
use http::uri::Authority;

use super::headers::X_FORWARDED_PROTO;

/// Whether the warning was logged; shared by every worker of a server (a process runs one).
#[derive(Default)]
pub(crate) struct SecureCookieWarning {
    logged: AtomicBool,
}

impl SecureCookieWarning {
    /// The host a `Secure` cookie set on this request would be dropped for, while the warning
    /// is still to be logged: `None` once it was, on an HTTPS listener, for a request that a
    /// TLS-terminating proxy in front marked `X-Forwarded-Proto: https`, and for `localhost`
    /// and loopback addresses. Call before the proxy replaces `X-Forwarded-Proto`.
    pub(crate) fn insecure_host(
        &self,
        https: bool,
        headers: &HeaderMap,
        host: Option<&HeaderValue>,
    ) -> Option<HeaderValue> {
        if https || self.logged.load(Ordering::Relaxed) || forwarded_https(headers) {
            return None;
        }
        let host = host?;
        (!is_local(host.to_str().ok()?)).then(|| host.clone())
    }

    /// Logs the warning unless another request did already.
    pub(crate) fn log_once(&self, host: &HeaderValue, request_id: &str) {
        if self.logged.swap(true, Ordering::Relaxed) {
            return;
        }
        let host = String::from_utf8_lossy(host.as_bytes());
        tracing::warn!(
            request_id,
            host = %host,
            "a session cookie marked Secure was set on a plain-HTTP request, and browsers drop such cookies, so every visit starts a new session: serve HTTPS (server.tls_cert), have the proxy in front send X-Forwarded-Proto: https, or set session.secure = false for plain-HTTP development (this warning is logged once)"
        );
    }
}

/// `X-Forwarded-Proto: https` from a TLS-terminating proxy in front (the first value's first
/// element: the protocol the browser used).
fn forwarded_https(headers: &HeaderMap) -> bool {
    headers.get(&X_FORWARDED_PROTO).is_some_and(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .next()
            .is_some_and(|p| p.trim_ascii().eq_ignore_ascii_case(b"https"))
    })
}

/// `localhost`, a name under it (RFC 6761 §6.3; browsers treat both as secure contexts), or a
/// loopback address, with or without a port.
fn is_local(host: &str) -> bool {
    let Ok(authority) = host.parse::<Authority>() else {
        return false;
    };
    let name = authority.host().trim_end_matches('.');
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            name.eq_ignore_ascii_case("localhost")
                || name.len() > ".localhost".len()
                    && name[name.len() - ".localhost".len()..].eq_ignore_ascii_case(".localhost")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn local_hosts_are_localhost_and_loopback_addresses() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.",
            "app.localhost:3000",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.8.9.1",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_local(host), "{host}");
        }
        for host in [
            "example.com",
            "some-host:8080",
            "localhost.example.com",
            "notlocalhost",
            "10.0.0.5:8080",
            "0.0.0.0",
            "[::]:8080",
            "[2001:db8::1]",
            "",
            "bad host",
        ] {
            assert!(!is_local(host), "{host}");
        }
    }

    #[test]
    fn only_plain_http_requests_for_other_hosts_until_logged() {
        let warning = SecureCookieWarning::default();
        let remote = HeaderValue::from_static("some-host:8080");
        let local = HeaderValue::from_static("localhost:8080");
        let none = HeaderMap::new();
        assert_eq!(warning.insecure_host(false, &none, Some(&remote)), Some(remote.clone()));
        assert_eq!(warning.insecure_host(true, &none, Some(&remote)), None, "HTTPS listener");
        assert_eq!(warning.insecure_host(false, &none, Some(&local)), None);
        assert_eq!(warning.insecure_host(false, &none, None), None, "no host: not a browser");
        for proto in ["https", "HTTPS", " https , http"] {
            let h = headers(&[("x-forwarded-proto", proto)]);
            assert_eq!(warning.insecure_host(false, &h, Some(&remote)), None, "{proto}");
        }
        let h = headers(&[("x-forwarded-proto", "http")]);
        assert!(warning.insecure_host(false, &h, Some(&remote)).is_some());

        warning.log_once(&remote, "rid");
        assert_eq!(warning.insecure_host(false, &none, Some(&remote)), None, "logged once per process");
    }
}
