//! Header rules of a proxy: hop-by-hop removal (RFC 9110 §7.6.1), the `X-Forwarded-*`
//! headers, and request ids.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// `x-request-id`: kept when the client sends one, generated otherwise.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers that are never forwarded (RFC 9110 §7.6.1, plus the non-standard
/// `Keep-Alive` and `Proxy-Connection` that old clients still send). `Connection` and
/// `Upgrade` are handled by [`remove_hop_by_hop`] because an upgrade keeps them.
static HOP_BY_HOP: [&HeaderName; 7] = [
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::PROXY_AUTHORIZATION,
    &header::PROXY_AUTHENTICATE,
];

/// A request id kept from a client is at most this long, so a hostile value cannot bloat
/// every log line; longer ones are replaced by a generated id.
pub(crate) const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether the message asks to switch protocols (`Connection: upgrade` plus `Upgrade`).
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

/// Whether any `Connection` header lists `token` (case-insensitive).
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers in either direction: every name listed in `Connection`, then
/// `Connection` itself and the fixed list. With `keep_upgrade` (a request or 101 response of
/// an upgrade), `Upgrade` survives and `Connection: upgrade` is set again, since both hops
/// must see them for the switch to happen.
///
/// Runs twice per request, so it first looks at the names once: most requests have none of
/// these headers and most upstream responses only `Connection: keep-alive`, and then nothing
/// is hashed, looked up or allocated beyond the removals themselves.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let (mut connection, mut upgrade, mut fixed) = (false, false, false);
    for name in headers.keys() {
        connection |= name == header::CONNECTION;
        upgrade |= name == header::UPGRADE;
        fixed |= HOP_BY_HOP.contains(&name);
    }
    if connection {
        // Taken out first (one lookup) so the listed names can be removed while reading them;
        // one value, the usual case, needs no list.
        if let Entry::Occupied(entry) = headers.entry(header::CONNECTION) {
            let mut values = entry.remove_entry_mult().1;
            let first = values.next();
            let rest: Vec<HeaderValue> = values.collect();
            remove_listed(headers, first.as_slice());
            remove_listed(headers, &rest);
        }
    }
    if fixed {
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// Removes the headers named in `Connection` values, except those [`remove_hop_by_hop`]
/// removes (or keeps) anyway: `Connection`, `Upgrade` and the fixed list. Removing by `&str`
/// needs no `HeaderName` (no allocation for names such as `x-custom-hop`).
fn remove_listed(headers: &mut HeaderMap, values: &[HeaderValue]) {
    let handled = |token: &[u8]| {
        token.is_empty()
            || token.eq_ignore_ascii_case(header::CONNECTION.as_str().as_bytes())
            || token.eq_ignore_ascii_case(header::UPGRADE.as_str().as_bytes())
            || HOP_BY_HOP.iter().any(|name| token.eq_ignore_ascii_case(name.as_str().as_bytes()))
    };
    for value in values {
        // Most upstream responses say just this, which names only a header of the fixed list.
        if value.as_bytes().trim_ascii().eq_ignore_ascii_case(KEEP_ALIVE.as_str().as_bytes()) {
            continue;
        }
        for token in value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            // A token that is not UTF-8 names no header.
            if let (false, Ok(name)) = (handled(token), std::str::from_utf8(token)) {
                headers.remove(name);
            }
        }
    }
}

/// Whether the request's `Accept` allows HTML (RFC 9110 §12.5.1: `text/html`, `text/*` or
/// `*/*` with a non-zero `q`; no `Accept` at all allows anything): what tells a browser's
/// navigation from an API call.
pub(crate) fn accepts_html(headers: &HeaderMap) -> bool {
    let mut accept = headers.get_all(header::ACCEPT).iter().peekable();
    if accept.peek().is_none() {
        return true;
    }
    accept.filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let allowed = ["text/html", "text/*", "*/*"].iter().any(|m| media.eq_ignore_ascii_case(m));
        let q_zero = parts.any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>() == Ok(0.0)
            })
        });
        allowed && !q_zero
    })
}

/// Where a browser goes to log in: `login_url` with `next=` the request's own path and query,
/// percent-encoded (never a host from a header, so no open redirect through it).
pub(crate) fn login_location(login_url: &str, uri: &http::Uri) -> Option<HeaderValue> {
    /// RFC 3986 unreserved characters stay; everything else is encoded.
    const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    let next = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let separator = if login_url.contains('?') { '&' } else { '?' };
    HeaderValue::try_from(format!("{login_url}{separator}next={}", utf8_percent_encode(next, COMPONENT))).ok()
}

/// Whether a request's `Transfer-Encoding` is anything but one `chunked`: hyper accepts any
/// list that ends in `chunked` (RFC 9112 §6.1), but the header is hop-by-hop, so a body still
/// in another coding would reach the upstream as if it had none; and `chunked` twice is not
/// allowed at all.
pub(crate) fn transfer_coding_refused(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (values.next(), values.next()) {
        (None, _) => false,
        (Some(v), None) => !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => true,
    }
}

/// The client's address as a header value, made once per connection for `X-Forwarded-For`.
pub(crate) fn client_ip(addr: IpAddr) -> HeaderValue {
    // An IP address's text is always a valid header value.
    HeaderValue::try_from(addr.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Sets `X-Forwarded-For` (client address appended to any list already there),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (the host the client asked for).
pub(crate) fn set_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    https: bool,
    host: Option<&HeaderValue>,
) {
    // One lookup: most requests have no `X-Forwarded-For` yet.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(entry) => {
            entry.insert(client.clone());
        }
        Entry::Occupied(mut entry) => {
            // The first value is the list so far; inserting replaces every value.
            let prev = entry.get().as_bytes();
            let xff = if prev.trim_ascii().is_empty() {
                Some(client.clone())
            } else {
                let mut list = Vec::with_capacity(prev.len() + 2 + client.len());
                list.extend_from_slice(prev);
                list.extend_from_slice(b", ");
                list.extend_from_slice(client.as_bytes());
                HeaderValue::from_bytes(&list).ok()
            };
            if let Some(v) = xff {
                entry.insert(v);
            }
        }
    }
    let proto = if https { "https" } else { "http" };
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(h) => {
            headers.insert(&X_FORWARDED_HOST, h.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// The client's request id if it is usable, else a fresh one (32 hex characters).
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    new_request_id()
}

fn new_request_id() -> HeaderValue {
    let n: u128 = rand::random();
    let mut hex = const_hex::Buffer::<16>::new();
    hex.format(&n.to_be_bytes());
    let buf: [u8; 32] = *hex.as_byte_array();
    // One allocation that its clones (the upstream's and the client's copies) share; from a
    // slice, the first clone would allocate again. 32 hex digits are always a valid value.
    HeaderValue::from_maybe_shared(Bytes::from_owner(buf)).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn removes_fixed_list_and_names_listed_in_connection() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Custom-Hop"),
            ("connection", "close"),
            ("x-custom-hop", "1"),
            // Named by `close`: a connection option names the header to remove, whatever it is.
            ("close", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("proxy-authenticate", "Basic"),
            ("upgrade", "websocket"),
            ("x-keep", "yes"),
            ("host", "example.com"),
        ]);
        remove_hop_by_hop(&mut h, false);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-keep"]);
    }

    #[test]
    fn one_connection_header_and_none_at_all() {
        let mut h = map(&[
            ("Connection", "Keep-Alive, X-Hop, close"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "h2c"),
            ("x-keep", "yes"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);

        // A lone option, as most messages carry: `keep-alive` (no scan) and `close` (scanned).
        for (option, named) in [(" Keep-Alive ", "keep-alive"), ("close", "close")] {
            let mut h = map(&[("connection", option), (named, "1"), ("x-keep", "yes")]);
            remove_hop_by_hop(&mut h, false);
            assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"], "{option}");
        }

        let mut h = map(&[("host", "example.com"), ("x-keep", "yes")]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn upgrade_keeps_upgrade_and_connection_upgrade() {
        let mut h = map(&[("connection", "Upgrade, x-hop"), ("upgrade", "websocket"), ("x-hop", "1")]);
        assert!(wants_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert!(h.get("x-hop").is_none());
    }

    #[test]
    fn wants_upgrade_needs_both_headers() {
        assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&map(&[("connection", "upgrade")])));
        assert!(wants_upgrade(&map(&[("connection", "keep-alive, UPGRADE"), ("upgrade", "h2c")])));
    }

    #[test]
    fn only_a_lone_chunked_transfer_coding_is_passed_on() {
        assert!(!transfer_coding_refused(&map(&[])));
        assert!(!transfer_coding_refused(&map(&[("transfer-encoding", "chunked")])));
        assert!(!transfer_coding_refused(&map(&[("transfer-encoding", " Chunked ")])));
        assert!(transfer_coding_refused(&map(&[("transfer-encoding", "gzip, chunked")])));
        assert!(transfer_coding_refused(&map(&[("transfer-encoding", "chunked, chunked")])));
        assert!(transfer_coding_refused(&map(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked")
        ])));
        assert!(transfer_coding_refused(&map(&[("transfer-encoding", "identity")])));
    }

    #[test]
    fn forwarded_headers_append_and_overwrite() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
        ]);
        let host = HeaderValue::from_static("app.example.com");
        set_forwarded(&mut h, &client_ip("127.0.0.1".parse().unwrap()), false, Some(&host));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example.com");
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, &client_ip("::1".parse().unwrap()), true, None);
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn browsers_accept_html_and_api_clients_do_not() {
        let accepts = |value: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(v) = value {
                headers.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            }
            accepts_html(&headers)
        };
        assert!(accepts(Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")));
        assert!(accepts(Some("*/*")));
        assert!(accepts(Some("TEXT/*")));
        assert!(accepts(None));
        assert!(!accepts(Some("application/json")));
        assert!(!accepts(Some("text/html;q=0, application/json")));
        assert!(!accepts(Some("text/plain")));
    }

    #[test]
    fn login_location_carries_only_the_path_and_query() {
        let uri: http::Uri = "/a/b?x=1&y=%C3%A9".parse().unwrap();
        assert_eq!(login_location("/login", &uri).unwrap(), "/login?next=%2Fa%2Fb%3Fx%3D1%26y%3D%25C3%25A9");
        assert_eq!(
            login_location("https://id.example/login?app=1", &uri).unwrap().to_str().unwrap(),
            "https://id.example/login?app=1&next=%2Fa%2Fb%3Fx%3D1%26y%3D%25C3%25A9"
        );
        // An absolute-form request names a host: only its path and query go into `next`.
        let absolute: http::Uri = "http://evil.example/x".parse().unwrap();
        assert_eq!(login_location("/login", &absolute).unwrap(), "/login?next=%2Fx");
    }

    #[test]
    fn request_id_is_kept_or_generated() {
        let kept = request_id(&map(&[("x-request-id", "abc-123")]));
        assert_eq!(kept, "abc-123");
        let generated = request_id(&HeaderMap::new());
        assert_eq!(generated.len(), 32);
        assert!(generated.to_str().unwrap().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(generated, request_id(&HeaderMap::new()));
        let too_long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        assert_eq!(request_id(&map(&[("x-request-id", &too_long)])).len(), 32);
        assert_eq!(request_id(&map(&[("x-request-id", "has space")])).len(), 32);
    }
}
