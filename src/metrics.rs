//! Prometheus metrics, exposed by the admin listener's `/metrics`.
//!
//! Label values stay bounded: a route's configured prefix (or `-` for requests no route
//! matched), a status class, a store command name, an error kind or a session event — never a
//! path, an id or anything a client chose. Per-route handles are looked up once when a route
//! table is built, and the session layer resolves its own handles when it is built, so the hot
//! path increments without hashing labels.
//!
//! A leaf: it imports nothing of the proxy. The modules that own a label's values (a session
//! event, a store error kind, a store command) pass them in as `&'static str`.

use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

/// A counter handle, resolved once and incremented on the hot path.
pub(crate) type Counter = prometheus_client::metrics::counter::Counter;
/// A gauge handle.
pub(crate) type Gauge = prometheus_client::metrics::gauge::Gauge;
/// A histogram handle, resolved once and observed on the hot path.
pub(crate) type Histogram = prometheus_client::metrics::histogram::Histogram;

/// Request and upstream durations: 0.5 ms to about 16 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Store commands: 0.1 ms to about 3 s (the command timeout is 1 s by default).
fn store_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatusLabels {
    route: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreInfoLabels {
    backend: &'static str,
    topology: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The status classes counted per route; index is `status / 100 - 1`.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Every metric of the process. Cheap to share: each metric is an `Arc` inside.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatusLabels, Counter>,
    /// Requests a route's `require` refused, by route and status (302, 401).
    require_refused: Family<RouteStatusLabels, Counter>,
    request_duration: HistogramFamily<RouteLabels>,
    upstream_duration: HistogramFamily<RouteLabels>,
    store_duration: HistogramFamily<CommandLabels>,
    store_errors: Family<KindLabels, Counter>,
    /// Which store the proxy uses (always 1, labelled).
    store_info: Family<StoreInfoLabels, Gauge>,
    /// `store.min_replicas`.
    store_min_replicas: Gauge,
    sessions: Family<EventLabels, Counter>,
    conflicts: Family<OutcomeLabels, Counter>,
    writes_skipped: Counter,
    admin_unauthorized: Counter,
    cookies_rejected: Counter,
    forged_headers: Counter,
    open_connections: Gauge,
    /// The cap on open client connections in effect (`server.max_connections`, or what the
    /// open-file limit holds).
    max_connections: Gauge,
    /// Times a listener reached its connection cap and paused accepting.
    cap_reached: Family<ListenerLabels, Counter>,
    parked_connections: Gauge,
    /// Every park so far.
    parks: Counter,
    /// Handles for requests that matched no route.
    unmatched: RouteMetrics,
}

/// One route's handles, resolved once per route table.
#[derive(Debug, Clone)]
pub(crate) struct RouteMetrics {
    requests: [Counter; 5],
    duration: Histogram,
    upstream: Histogram,
    /// Requests its `require` refused: sent to log in (302), and refused outright (401).
    pub refused_redirect: Counter,
    pub refused_unauthorized: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("session_proxy");
        let requests = Family::<RouteStatusLabels, Counter>::default();
        registry.register("requests", "Requests by route prefix and status class", requests.clone());
        let require_refused = Family::<RouteStatusLabels, Counter>::default();
        registry.register(
            "require_refused",
            "Requests a route's `require` kept from the upstream, by route and status (302: sent to log in, 401)",
            require_refused.clone(),
        );
        let request_duration: HistogramFamily<RouteLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by route prefix",
            request_duration.clone(),
        );
        let upstream_duration: HistogramFamily<RouteLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "upstream_duration_seconds",
            "Time the upstream took to answer with headers, by route prefix",
            upstream_duration.clone(),
        );
        let store_duration: HistogramFamily<CommandLabels> = Family::new_with_constructor(store_histogram);
        registry.register(
            "store_command_duration_seconds",
            "Store command round trips",
            store_duration.clone(),
        );
        let store_errors = Family::<KindLabels, Counter>::default();
        registry.register("store_errors", "Failed store commands by kind", store_errors.clone());
        let store_info = Family::<StoreInfoLabels, Gauge>::default();
        registry.register(
            "store_info",
            "The session store in use: backend (memory, redis) and topology (memory, single, cluster, sentinel); always 1",
            store_info.clone(),
        );
        let store_min_replicas = Gauge::default();
        registry.register(
            "store_min_replicas",
            "store.min_replicas: replicas each write must reach (WAIT) before it is acknowledged",
            store_min_replicas.clone(),
        );
        let sessions = Family::<EventLabels, Counter>::default();
        registry.register(
            "sessions",
            "Sessions created, updated, destroyed and regenerated",
            sessions.clone(),
        );
        let conflicts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "session_conflicts",
            "Session writes that met a concurrent change, by outcome (merged, interrupted: 409, exhausted: 503)",
            conflicts.clone(),
        );
        let writes_skipped = Counter::default();
        registry.register(
            "session_writes_skipped",
            "Session updates and patches that changed nothing, so wrote nothing",
            writes_skipped.clone(),
        );
        let admin_unauthorized = Counter::default();
        registry.register(
            "admin_unauthorized",
            "Session management requests refused for a missing or wrong admin token",
            admin_unauthorized.clone(),
        );
        let cookies_rejected = Counter::default();
        registry.register(
            "cookies_rejected",
            "Session cookies that failed verification (treated as new visitors)",
            cookies_rejected.clone(),
        );
        let forged_headers = Counter::default();
        registry.register(
            "forged_headers_removed",
            "Session protocol headers removed from client requests",
            forged_headers.clone(),
        );
        let open_connections = Gauge::default();
        registry.register("open_connections", "Open client connections", open_connections.clone());
        let max_connections = Gauge::default();
        registry.register(
            "max_connections",
            "The cap on open client connections in effect",
            max_connections.clone(),
        );
        let cap_reached = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connection_cap_reached",
            "Times a listener reached its connection cap and paused accepting until a connection closed",
            cap_reached.clone(),
        );
        let parked_connections = Gauge::default();
        registry.register(
            "parked_connections",
            "Idle HTTP/1 keep-alive connections waiting for their next request without buffers",
            parked_connections.clone(),
        );
        let parks = Counter::default();
        registry.register(
            "connection_parks",
            "Times an idle HTTP/1 keep-alive connection gave back its buffers",
            parks.clone(),
        );

        let mut metrics = Metrics {
            registry,
            requests,
            require_refused,
            request_duration,
            upstream_duration,
            store_duration,
            store_errors,
            store_info,
            store_min_replicas,
            sessions,
            conflicts,
            writes_skipped,
            admin_unauthorized,
            cookies_rejected,
            forged_headers,
            open_connections,
            max_connections,
            cap_reached,
            parked_connections,
            parks,
            unmatched: RouteMetrics::placeholder(),
        };
        metrics.unmatched = metrics.route("-");
        metrics
    }

    /// Handles for one route prefix (called when a route table is built, not per request).
    pub(crate) fn route(&self, prefix: &str) -> RouteMetrics {
        let route = prefix.to_string();
        RouteMetrics {
            requests: STATUS_CLASSES.map(|status| {
                self.requests.get_or_create_owned(&RouteStatusLabels { route: route.clone(), status })
            }),
            duration: self.request_duration.get_or_create_owned(&RouteLabels { route: route.clone() }),
            upstream: self.upstream_duration.get_or_create_owned(&RouteLabels { route: route.clone() }),
            refused_redirect: self
                .require_refused
                .get_or_create_owned(&RouteStatusLabels { route: route.clone(), status: "302" }),
            refused_unauthorized: self
                .require_refused
                .get_or_create_owned(&RouteStatusLabels { route, status: "401" }),
        }
    }

    /// Counts a finished request (at response headers).
    pub(crate) fn observe_request(
        &self,
        route: Option<&RouteMetrics>,
        status: StatusCode,
        duration: Duration,
        upstream: Option<Duration>,
    ) {
        let route = route.unwrap_or(&self.unmatched);
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        route.requests[class].inc();
        route.duration.observe(duration.as_secs_f64());
        if let Some(upstream) = upstream {
            route.upstream.observe(upstream.as_secs_f64());
        }
    }

    /// The counter of one session event (`created`, ...), exposed at 0 from this call on.
    /// Called when a session layer is built, not per request.
    pub(crate) fn session_event(&self, event: &'static str) -> Counter {
        self.sessions.get_or_create_owned(&EventLabels { event })
    }

    /// The counter of session writes that met a concurrent change and ended as `outcome`,
    /// exposed at 0 from this call on.
    pub(crate) fn session_conflict(&self, outcome: &'static str) -> Counter {
        self.conflicts.get_or_create_owned(&OutcomeLabels { outcome })
    }

    /// The counter of updates and patches that wrote nothing because they changed nothing.
    pub(crate) fn session_writes_skipped(&self) -> Counter {
        self.writes_skipped.clone()
    }

    /// The counter of session management requests refused for their token.
    pub(crate) fn admin_unauthorized(&self) -> Counter {
        self.admin_unauthorized.clone()
    }

    /// The round-trip histogram of one store command (`get`, `set`, ...). Called when a
    /// session layer is built, not per request.
    pub(crate) fn store_command(&self, command: &'static str) -> Histogram {
        self.store_duration.get_or_create_owned(&CommandLabels { command })
    }

    /// The counter of failed store commands of one kind, exposed at 0 from this call on, so
    /// `rate()` and alerts see the series before the first error (an absent series is not a
    /// zero to Prometheus).
    pub(crate) fn store_error(&self, kind: &'static str) -> Counter {
        self.store_errors.get_or_create_owned(&KindLabels { kind })
    }

    /// [`Metrics::store_error`]'s counters for every kind in `kinds`, resolved at once.
    pub(crate) fn store_errors(&self, kinds: &'static [&'static str]) -> StoreErrorCounters {
        StoreErrorCounters { kinds, counters: kinds.iter().map(|&kind| self.store_error(kind)).collect() }
    }

    pub(crate) fn cookie_rejected(&self) {
        self.cookies_rejected.inc();
    }

    pub(crate) fn forged_headers_removed(&self, n: usize) {
        self.forged_headers.inc_by(n as u64);
    }

    /// The gauge of open client connections, which their tickets move (`admission`).
    pub(crate) fn open_connections(&self) -> Gauge {
        self.open_connections.clone()
    }

    /// Records which store is in use (`store_info`, `store_min_replicas`).
    pub(crate) fn set_store(&self, backend: &'static str, topology: &'static str, min_replicas: u32) {
        self.store_info.get_or_create(&StoreInfoLabels { backend, topology }).set(1);
        self.store_min_replicas.set(i64::from(min_replicas));
    }

    pub(crate) fn set_max_connections(&self, cap: usize) {
        self.max_connections.set(i64::try_from(cap).unwrap_or(i64::MAX));
    }

    /// The counter of `listener`'s episodes at its connection cap, exposed at 0 from this call
    /// on.
    pub(crate) fn connection_cap_reached(&self, listener: &'static str) -> Counter {
        self.cap_reached.get_or_create_owned(&ListenerLabels { listener })
    }

    pub(crate) fn connection_parked(&self) {
        self.parked_connections.inc();
        self.parks.inc();
    }

    pub(crate) fn connection_unparked(&self) {
        self.parked_connections.dec();
    }

    /// The Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Failed store commands, counted by kind without hashing labels.
pub(crate) struct StoreErrorCounters {
    kinds: &'static [&'static str],
    /// One per `kinds`, in that order.
    counters: Vec<Counter>,
}

impl StoreErrorCounters {
    /// Counts one failure of `kind` (a kind outside the list resolved is not counted).
    pub(crate) fn count(&self, kind: &str) {
        if let Some(counter) = self.kinds.iter().position(|&k| k == kind).and_then(|i| self.counters.get(i)) {
            counter.inc();
        }
    }
}

impl RouteMetrics {
    /// Unregistered handles, used only until `Metrics::new` resolves the real ones.
    fn placeholder() -> RouteMetrics {
        RouteMetrics {
            requests: Default::default(),
            duration: latency_histogram(),
            upstream: latency_histogram(),
            refused_redirect: Counter::default(),
            refused_unauthorized: Counter::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_route_and_status_class_with_bounded_labels() {
        let m = Metrics::new();
        let api = m.route("/api");
        let created = m.session_event("created");
        m.observe_request(
            Some(&api),
            StatusCode::OK,
            Duration::from_millis(3),
            Some(Duration::from_millis(2)),
        );
        created.inc();
        m.observe_request(None, StatusCode::NOT_FOUND, Duration::from_millis(1), None);
        let text = m.encode();
        assert!(text.contains(r#"session_proxy_requests_total{route="/api",status="2xx"} 1"#), "{text}");
        assert!(text.contains(r#"session_proxy_requests_total{route="-",status="4xx"} 1"#), "{text}");
        assert!(text.contains(r#"session_proxy_sessions_total{event="created"} 1"#), "{text}");
        assert!(text.contains(r#"session_proxy_upstream_duration_seconds_count{route="/api"} 1"#), "{text}");
        assert!(text.contains(r#"session_proxy_upstream_duration_seconds_count{route="-"} 0"#), "{text}");
    }

    #[test]
    fn resolved_error_kinds_and_session_events_are_exposed_at_zero_and_count() {
        let m = Metrics::new();
        let kinds = ["timeout", "unavailable", "command", "config"];
        let events = ["created", "updated", "destroyed", "regenerated"];
        const KINDS: [&str; 4] = ["timeout", "unavailable", "command", "config"];
        let errors = m.store_errors(&KINDS);
        for event in events {
            let _ = m.session_event(event);
        }
        let text = m.encode();
        for kind in kinds {
            assert!(
                text.contains(&format!("session_proxy_store_errors_total{{kind=\"{kind}\"}} 0")),
                "{text}"
            );
        }
        for event in events {
            assert!(text.contains(&format!("session_proxy_sessions_total{{event=\"{event}\"}} 0")), "{text}");
        }
        for kind in kinds {
            errors.count(kind);
        }
        errors.count("not a kind");
        // A handle resolved again counts into the same series.
        m.store_error("timeout").inc();
        let text = m.encode();
        for kind in kinds {
            let n = if kind == "timeout" { 2 } else { 1 };
            assert!(
                text.contains(&format!("session_proxy_store_errors_total{{kind=\"{kind}\"}} {n}")),
                "{text}"
            );
        }
    }

    #[test]
    fn store_command_durations_are_histograms_by_command() {
        let m = Metrics::new();
        let get = m.store_command("get");
        get.observe(Duration::from_micros(300).as_secs_f64());
        m.store_command("get").observe(Duration::from_millis(2).as_secs_f64());
        let text = m.encode();
        assert!(text.contains("# TYPE session_proxy_store_command_duration_seconds histogram"), "{text}");
        assert!(
            text.contains(r#"session_proxy_store_command_duration_seconds_count{command="get"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"session_proxy_store_command_duration_seconds_bucket{le="0.0004",command="get"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn open_connections_go_up_and_down() {
        let m = Metrics::new();
        let open = m.open_connections();
        open.inc();
        open.inc();
        open.dec();
        m.connection_parked();
        let text = m.encode();
        assert!(text.contains("session_proxy_open_connections 1\n"));
        assert!(text.contains("session_proxy_parked_connections 1\n"));
        m.connection_unparked();
        let text = m.encode();
        assert!(text.contains("session_proxy_parked_connections 0\n"));
        assert!(text.contains("session_proxy_connection_parks_total 1\n"));
    }
}
