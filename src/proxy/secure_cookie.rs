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
    /// Whether this request came over plain HTTP as the browser sees it, while the warning is
    /// still to be logged: not once it was, not on an HTTPS listener, and not for a request
    /// that a TLS-terminating proxy in front marked `X-Forwarded-Proto: https`. Call before
    /// the proxy replaces `X-Forwarded-Proto`; it costs a flag and a header lookup.
    pub(crate) fn plain_http(&self, https: bool, headers: &HeaderMap) -> bool {
        !(https || self.logged.load(Ordering::Relaxed) || forwarded_https(headers))
    }

    /// Logs the warning for a `Secure` cookie set on a plain-HTTP request for `host`, unless
    /// the host is `localhost` or a loopback address (browsers keep the cookie there), there is
    /// no host (not a browser), or another request logged it already.
    pub(crate) fn cookie_set(&self, host: Option<&HeaderValue>, request_id: &str) {
        let Some(host) = host.and_then(|h| h.to_str().ok()) else {
            return;
        };
        if is_local(host) || self.logged.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::warn!(
            request_id,
            host,
            "a session cookie marked Secure was set on a plain-HTTP request, and browsers drop such cookies, so every visit starts a new session: serve HTTPS (server.tls_cert), have the proxy in front send X-Forwarded-Proto: https, or set session.secure = false for plain-HTTP development (this warning is logged once)"
        );
    }

    #[cfg(test)]
    fn logged(&self) -> bool {
        self.logged.load(Ordering::Relaxed)
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
    fn plain_http_unless_https_or_forwarded_https() {
        let warning = SecureCookieWarning::default();
        let none = HeaderMap::new();
        assert!(warning.plain_http(false, &none));
        assert!(!warning.plain_http(true, &none), "HTTPS listener");
        for proto in ["https", "HTTPS", " https , http"] {
            assert!(!warning.plain_http(false, &headers(&[("x-forwarded-proto", proto)])), "{proto}");
        }
        assert!(warning.plain_http(false, &headers(&[("x-forwarded-proto", "http")])));
    }

    #[test]
    fn logged_once_for_a_remote_host_only() {
        let warning = SecureCookieWarning::default();
        warning.cookie_set(Some(&HeaderValue::from_static("localhost:8080")), "rid");
        warning.cookie_set(Some(&HeaderValue::from_static("127.0.0.1")), "rid");
        warning.cookie_set(None, "rid");
        assert!(!warning.logged(), "local hosts, and no host (not a browser), are not warned about");
        warning.cookie_set(Some(&HeaderValue::from_static("some-host:8080")), "rid");
        assert!(warning.logged());
        assert!(
            !warning.plain_http(false, &HeaderMap::new()),
            "logged once per process: nothing more to check"
        );
    }
}
