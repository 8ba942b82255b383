//! Route matching: which `[[route]]` a request goes to.
//!
//! Rules (the README, "Configuration reference"): a route with `host` is preferred over one without, then the
//! longest prefix wins; prefixes match on path-segment boundaries; a prefix ending in `/`
//! matches only below it. The table is sorted once when the config loads, so a lookup is a
//! linear scan that stops at the first match.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};

use crate::config::{Requirement, RouteConfig};
use crate::metrics::{Metrics, RouteMetrics};

/// One route, ready for the hot path.
#[derive(Debug)]
pub(crate) struct Route {
    /// The prefix as configured; also the bounded `route` label of logs and metrics.
    pub prefix: String,
    /// Lowercased host without port; `None` matches every host.
    pub host: Option<String>,
    /// Upstream `host:port`.
    pub authority: Authority,
    /// Whether requests on this route carry a session.
    pub session: bool,
    /// Remove the prefix from the path before forwarding.
    pub strip_prefix: bool,
    /// Only sessions that meet it reach the upstream.
    pub require: Option<Requirement>,
    /// The longest pause between two reads of the upstream's response body; `None`: never.
    pub read_timeout: Option<Duration>,
    /// This route's metric handles, resolved once.
    pub metrics: RouteMetrics,
}

/// All routes in match order: host-specific first, then longest prefix first.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub(crate) fn new(configs: &[RouteConfig], metrics: &Metrics) -> RouteTable {
        let mut routes: Vec<Arc<Route>> = configs
            .iter()
            .map(|c| {
                Arc::new(Route {
                    prefix: c.prefix.clone(),
                    host: c.host.clone(),
                    authority: c
                        .upstream
                        .authority()
                        .cloned()
                        // Config validation guarantees an authority; this is only a fallback.
                        .unwrap_or_else(|| Authority::from_static("127.0.0.1")),
                    session: c.session,
                    strip_prefix: c.strip_prefix,
                    require: c.require.clone(),
                    read_timeout: c.read_timeout,
                    metrics: metrics.route(&c.prefix),
                })
            })
            .collect();
        // Stable sort keeps file order between equals, so ties resolve predictably.
        routes.sort_by(|a, b| {
            b.host.is_some().cmp(&a.host.is_some()).then(b.prefix.len().cmp(&a.prefix.len()))
        });
        RouteTable { routes }
    }

    /// The route for a request, given its `Host` (any case, port allowed) and path.
    pub(crate) fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        // Only routes with a `host` look at it: the port is stripped once, when the first
        // of them is tried (most configs have none).
        let mut bare_host = None;
        self.routes.iter().find(|r| {
            let host_ok = match (&r.host, host) {
                (None, _) => true,
                (Some(want), Some(got)) => {
                    want.eq_ignore_ascii_case(bare_host.get_or_insert_with(|| host_without_port(got)))
                }
                (Some(_), None) => false,
            };
            host_ok && prefix_matches(&r.prefix, path)
        })
    }
}

/// `"/app"` matches `/app` and `/app/x`, never `/apple`; `"/static/"` matches only below it.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// Strips `:port` from a `Host` value, leaving IPv6 literals (`[::1]:80`) intact.
fn host_without_port(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|h| h.find(']')) {
        return &host[..end + 2];
    }
    // A byte search: `:` is ASCII, so the split is on a character boundary.
    match host.bytes().rposition(|b| b == b':') {
        Some(colon) if host.as_bytes()[colon + 1..].iter().all(u8::is_ascii_digit) => &host[..colon],
        _ => host,
    }
}

/// The path and query to send upstream: with `strip_prefix`, the prefix is removed and the
/// path keeps a leading `/` (`/app/x` → `/x`, `/app` → `/`).
pub(crate) fn upstream_path(route: &Route, pq: Option<&PathAndQuery>) -> PathAndQuery {
    let Some(pq) = pq else {
        return PathAndQuery::from_static("/");
    };
    if !route.strip_prefix {
        return pq.clone();
    }
    let path = pq.path();
    let rest = path.strip_prefix(route.prefix.as_str()).unwrap_or(path);
    let rest = rest.trim_start_matches('/');
    let mut out = String::with_capacity(rest.len() + 1 + pq.query().map_or(0, |q| q.len() + 1));
    out.push('/');
    out.push_str(rest);
    if let Some(q) = pq.query() {
        out.push('?');
        out.push_str(q);
    }
    // Built from parts of a valid PathAndQuery, so it parses; fall back to the original.
    PathAndQuery::try_from(out).unwrap_or_else(|_| pq.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, host: Option<&str>, strip: bool) -> RouteConfig {
        RouteConfig {
            prefix: prefix.to_string(),
            upstream: "http://127.0.0.1:3000".parse().unwrap(),
            session: true,
            strip_prefix: strip,
            host: host.map(str::to_string),
            require: None,
            read_timeout: None,
        }
    }

    fn table(routes: &[RouteConfig]) -> RouteTable {
        RouteTable::new(routes, &Metrics::new())
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        assert!(prefix_matches("/app", "/app"));
        assert!(prefix_matches("/app", "/app/x"));
        assert!(!prefix_matches("/app", "/apple"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/static/", "/static/a.css"));
        assert!(!prefix_matches("/static/", "/static"));
        assert!(!prefix_matches("/app", "/"));
    }

    #[test]
    fn longest_prefix_wins_whatever_the_file_order() {
        let t = table(&[route("/", None, false), route("/api", None, false), route("/api/v2", None, false)]);
        assert_eq!(t.find(None, "/api/v2/x").unwrap().prefix, "/api/v2");
        assert_eq!(t.find(None, "/api/v1").unwrap().prefix, "/api");
        assert_eq!(t.find(None, "/apix").unwrap().prefix, "/");
    }

    #[test]
    fn no_match_is_none() {
        let t = table(&[route("/app", None, false)]);
        assert!(t.find(None, "/other").is_none());
        assert!(t.find(None, "/apple").is_none());
    }

    #[test]
    fn host_routes_are_preferred_and_compared_case_insensitively_without_port() {
        let t = table(&[route("/api", None, false), route("/", Some("app.example.com"), false)]);
        assert_eq!(t.find(Some("APP.example.com:8080"), "/api/x").unwrap().prefix, "/");
        assert_eq!(t.find(Some("other.example.com"), "/api/x").unwrap().prefix, "/api");
        assert!(t.find(Some("other.example.com"), "/x").is_none());
        assert!(t.find(None, "/x").is_none());
    }

    #[test]
    fn host_without_port_handles_ipv6() {
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(host_without_port("a.b:1"), "a.b");
        assert_eq!(host_without_port("a.b"), "a.b");
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash_and_the_query() {
        let t = table(&[route("/app", None, true), route("/s/", None, true), route("/k", None, false)]);
        let path = |p: &str| {
            let pq: PathAndQuery = p.parse().unwrap();
            let r = t.find(None, pq.path()).unwrap();
            upstream_path(r, Some(&pq)).to_string()
        };
        assert_eq!(path("/app/x"), "/x");
        assert_eq!(path("/app"), "/");
        assert_eq!(path("/app?q=1"), "/?q=1");
        assert_eq!(path("/app/x/y?q=1"), "/x/y?q=1");
        assert_eq!(path("/s/a.css"), "/a.css");
        assert_eq!(path("/k/x?z"), "/k/x?z");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// The matching rules of the README, written out plainly: a route with `host` beats one
        /// without, then the longer prefix, then the earlier one in the file.
        fn reference(routes: &[RouteConfig], host: Option<&str>, path: &str) -> Option<usize> {
            let host = host.map(|h| {
                let h = h.to_ascii_lowercase();
                match h.rsplit_once(':') {
                    // RFC 3986: `port = *DIGIT`, so `a.com:` has an (empty) port too.
                    Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_owned(),
                    _ => h,
                }
            });
            let matches = |r: &RouteConfig| {
                let host_ok = match (&r.host, &host) {
                    (None, _) => true,
                    (Some(want), Some(got)) => want == got,
                    (Some(_), None) => false,
                };
                let p = r.prefix.as_bytes();
                let prefix_ok = path.as_bytes().starts_with(p)
                    && (p.last() == Some(&b'/') || path.len() == p.len() || path.as_bytes()[p.len()] == b'/');
                host_ok && prefix_ok
            };
            let mut best: Option<usize> = None;
            for (i, r) in routes.iter().enumerate() {
                if !matches(r) {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some(b) => {
                        let b = &routes[b];
                        (r.host.is_some(), r.prefix.len()) > (b.host.is_some(), b.prefix.len())
                    }
                };
                if better {
                    best = Some(i);
                }
            }
            best
        }

        fn route_strategy() -> impl Strategy<Value = RouteConfig> {
            // A tiny alphabet, so prefixes, paths and hosts collide often.
            ("/[ab/]{0,4}", prop::option::of(prop::sample::select(vec!["a.com", "b.com"])), any::<bool>())
                .prop_map(|(prefix, host, strip)| route(&prefix, host, strip))
        }

        proptest! {
            #[test]
            fn find_agrees_with_the_reference_model(
                routes in prop::collection::vec(route_strategy(), 1..8),
                host in prop::option::of(prop::sample::select(
                    vec!["a.com", "A.COM", "a.com:8080", "B.com:1", "c.com", "a.com:", "[::1]:80", ""],
                )),
                path in "/[ab/]{0,6}",
            ) {
                let t = table(&routes);
                let found = t.find(host, &path).map(|r| (&r.prefix, &r.host, r.strip_prefix));
                // The first of equal routes wins, as in the file: compare all their fields.
                let expected = reference(&routes, host, &path).map(|i| (&routes[i].prefix, &routes[i].host, routes[i].strip_prefix));
                prop_assert_eq!(found, expected);
            }

            #[test]
            fn arbitrary_prefixes_hosts_and_paths_never_panic(
                prefixes in prop::collection::vec(any::<String>(), 0..4),
                host in prop::option::of(any::<String>()),
                path in any::<String>(),
            ) {
                for prefix in &prefixes {
                    let _ = prefix_matches(prefix, &path);
                }
                let routes: Vec<RouteConfig> = prefixes.iter().map(|p| route(p, host.as_deref(), true)).collect();
                let t = table(&routes);
                let _ = t.find(host.as_deref(), &path);
                let _ = host_without_port(host.as_deref().unwrap_or_default());
            }

            #[test]
            fn upstream_path_keeps_the_rest_and_the_query(
                prefix in "/[ab/]{0,4}",
                rest in "[ab/]{0,6}",
                query in prop::option::of("[a-z=&]{0,6}"),
                strip in any::<bool>(),
            ) {
                let path = format!("{prefix}{rest}");
                let pq_text = match &query {
                    Some(q) => format!("{path}?{q}"),
                    None => path.clone(),
                };
                let pq: PathAndQuery = pq_text.parse().unwrap();
                let t = table(&[route(&prefix, None, strip)]);
                let Some(r) = t.find(None, &path) else {
                    return Ok(());
                };
                let out = upstream_path(r, Some(&pq));
                prop_assert_eq!(out.query(), pq.query());
                if strip {
                    prop_assert!(out.path().starts_with('/'));
                    prop_assert!(!out.path().starts_with("//"), "{}", out);
                    prop_assert!(path.ends_with(out.path().trim_start_matches('/')), "{} -> {}", path, out);
                } else {
                    prop_assert_eq!(out, pq);
                }
            }
        }
    }
}
