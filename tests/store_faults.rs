//! The session store under faults, through the whole proxy: Redis killed and restarted, or cut
//! off the network, in the middle of a load run (the ledger, with single requests probing each
//! case of the outage on the side); and Redis frozen. Concurrent requests of one session are
//! in `concurrent.rs`.
//!
//! What the README promises and these tests check: a 2xx for a session change means the change
//! is in the store ("never a 2xx that claims a change that was not saved"); a store that is down
//! or stalled gives 503 with `Retry-After: 1` (`fail`) or a request without `x-session`
//! (`pass`); routes without sessions keep working; the proxy recovers by itself; nothing
//! panics. A write answered 503 may still land later (a SET already on the wire when its
//! timeout fired), so the ledger accepts a stored value newer than the last acknowledged one
//! as long as the client sent it.
//!
//! No timing assertions: bounded waits only guard against hangs.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::faults::*;
use common::redis_server::RedisServer;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::{json, Value};

/// Concurrent load clients, each with its own session.
const CLIENTS: usize = 32;
/// Requests each client sends at least (the run is longer when recovery needs it).
const REQUESTS_PER_CLIENT: u64 = 100;
/// Hard cap on one client's requests: the load loop is bounded in count as well as time.
const MAX_REQUESTS_PER_CLIENT: u64 = 2_000;
/// Acknowledged updates each client must get after Redis is back: proof of recovery, and the
/// updates the final ledger check can hold against Redis (a restarted redis-server is empty).
const ACKS_AFTER_RESTART: usize = 3;
/// Requests that must run entirely while Redis is down before it is started again.
const REQUESTS_WHILE_DOWN: usize = 64;
/// Per-command store timeout in these tests: short, so an outage answers quickly.
const STORE_TIMEOUT_MS: u64 = 500;
/// The longest the whole load run may take; past it the test fails as a hang.
const RUN_GUARD: Duration = Duration::from_secs(120);
/// How long the ledger upstream takes to answer an update.
const UPSTREAM_DELAY: Duration = Duration::from_millis(2);
/// Poll interval of the controller and of recovery loops.
const POLL: Duration = Duration::from_millis(10);
/// `session.max_age` in these tests.
const MAX_AGE: i64 = 3600;
/// How far below `MAX_AGE` a TTL may be and still count as freshly set.
const TTL_SLACK: i64 = 300;
/// Requests with this header are counted by the ledger upstream: whether a request reached it.
const PROBE: &str = "x-probe";
/// The three names of the header protocol; none may ever reach a client.
const PROTOCOL_HEADERS: [&str; 3] = ["x-session", "x-session-update", "x-session-regenerate"];

/// The upstream of these tests: it answers with the session it received in `x-seen`
/// (`absent` when the request had none) and, when the client asked for one in `x-want-update`,
/// puts that update in `x-session-update`. The counter is the requests it got with [`PROBE`].
async fn ledger_upstream() -> (Upstream, Arc<AtomicUsize>) {
    let probes = Arc::new(AtomicUsize::new(0));
    let counter = probes.clone();
    let up = upstream(move |req: Request<Incoming>| {
        if req.headers().contains_key(PROBE) {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        ledger_answer(req)
    })
    .await;
    (up, probes)
}

async fn ledger_answer(req: Request<Incoming>) -> Response<TestBody> {
    let seen = req.headers().get("x-session").cloned();
    let want = req.headers().get("x-want-update").cloned();
    let mut resp = Response::builder()
        .header("x-seen", seen.unwrap_or_else(|| http::HeaderValue::from_static("absent")));
    if let Some(want) = want {
        // Time between the proxy's session read and its write, so a fault lands there too.
        tokio::time::sleep(UPSTREAM_DELAY).await;
        resp = resp.header("x-session-update", want);
    }
    resp.body(full("ok")).unwrap()
}

fn proxy_toml(redis: &str, on_store_error: &str, up: &Upstream) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[store]
url = "{redis}"
timeout_ms = {STORE_TIMEOUT_MS}

[session]
secrets = ["test-secret"]
max_age = {MAX_AGE}
on_store_error = "{on_store_error}"

[[route]]
prefix = "/"
upstream = "{up}"

[[route]]
prefix = "/static/"
upstream = "{up}"
session = false
"#,
        up = up.url()
    )
}

type HttpClient = Client<HttpConnector, TestBody>;

/// Shared state between the load clients and the controller that kills Redis.
#[derive(Default)]
struct Run {
    /// Incremented just before Redis is killed: a write acknowledged by a request sent in the
    /// current epoch survived (nothing was killed since it was sent).
    epoch: AtomicU64,
    /// Odd while Redis is down (after `stop` returned, before `restart` began).
    down: AtomicU64,
    /// Set once `restart` has returned.
    restarted: AtomicBool,
    /// Requests finished, for the controller.
    completed: AtomicUsize,
    /// Requests with a session cookie that ran entirely while Redis was down.
    while_down: AtomicUsize,
    /// How many of those only read the session.
    reads_while_down: AtomicUsize,
}

/// One client's view: what it sent and what it was told.
#[derive(Default, Debug)]
struct Ledger {
    client: u64,
    /// Every seq this client ever sent as an update.
    sent: HashSet<u64>,
    /// The latest acknowledged (2xx) update: its seq and the epoch when it was sent.
    last_ack: Option<(u64, u64)>,
    /// The `__session=...` pair the client holds.
    cookie: Option<String>,
    acks_after_restart: usize,
    statuses: Vec<StatusCode>,
    /// Fully-down requests answered 200 without a session (`pass` read-only requests).
    passed_without_session: usize,
    violations: Vec<String>,
}

impl Ledger {
    /// What the last acknowledged update still requires of the store: its seq, unless Redis
    /// was killed since it was sent (a restarted redis-server starts empty).
    fn required_seq(&self, epoch_now: u64) -> Option<u64> {
        self.last_ack.and_then(|(seq, epoch)| (epoch == epoch_now).then_some(seq))
    }

    /// Checks a session value (seen by the upstream or read from Redis) against the ledger.
    fn check_value(&mut self, what: &str, value: &Value, required: Option<u64>) {
        let empty = value.as_object().is_some_and(|o| o.is_empty());
        if empty {
            if let Some(seq) = required {
                self.violations.push(format!("{what}: empty session, but update {seq} was acknowledged"));
            }
            return;
        }
        if value["client"].as_u64() != Some(self.client) {
            self.violations.push(format!("{what}: another client's session: {value}"));
            return;
        }
        let Some(seq) = value["seq"].as_u64() else {
            self.violations.push(format!("{what}: not a ledger value: {value}"));
            return;
        };
        if !self.sent.contains(&seq) {
            self.violations.push(format!("{what}: seq {seq} was never sent"));
        }
        if let Some(required) = required {
            if seq < required {
                self.violations.push(format!("{what}: seq {seq} older than acknowledged {required}"));
            }
        }
    }
}

/// One load client: sequential requests on its own keep-alive connection. Three in four
/// requests ask for an update `{"client":i,"seq":n}`, the fourth only reads.
async fn load_client(i: u64, proxy_url: String, run: Arc<Run>, pass: bool) -> Ledger {
    let http: HttpClient = client();
    let mut ledger = Ledger { client: i, ..Ledger::default() };
    for seq in 1..=MAX_REQUESTS_PER_CLIENT {
        let restarted = run.restarted.load(Ordering::SeqCst);
        if seq > REQUESTS_PER_CLIENT && restarted && ledger.acks_after_restart >= ACKS_AFTER_RESTART {
            break;
        }
        let update = seq % 4 != 0;
        let epoch = run.epoch.load(Ordering::SeqCst);
        let down_before = run.down.load(Ordering::SeqCst);
        let had_cookie = ledger.cookie.is_some();

        let mut req = Request::get(format!("{proxy_url}/app"));
        if let Some(cookie) = &ledger.cookie {
            req = req.header("cookie", cookie);
        }
        if update {
            ledger.sent.insert(seq);
            req = req.header("x-want-update", json!({"client": i, "seq": seq}).to_string());
        }
        let resp = guarded("a load request", http.request(req.body(empty()).unwrap()))
            .await
            .unwrap_or_else(|e| panic!("client {i}: request failed (reset by a crashed task?): {e}"));
        let (parts, body) = resp.into_parts();
        let body = guarded("a load response body", body.collect()).await.map(|b| b.to_bytes());
        let down_after = run.down.load(Ordering::SeqCst);
        let epoch_after = run.epoch.load(Ordering::SeqCst);
        run.completed.fetch_add(1, Ordering::SeqCst);
        let status = parts.status;
        ledger.statuses.push(status);
        if body.is_err() {
            ledger.violations.push(format!("request {seq}: body cut ({status})"));
            continue;
        }
        // Sent after Redis died and answered before it was started again, with a session.
        let fully_down = down_before == down_after && down_before % 2 == 1 && had_cookie;
        if fully_down {
            run.while_down.fetch_add(1, Ordering::SeqCst);
            if !update {
                run.reads_while_down.fetch_add(1, Ordering::SeqCst);
            }
            // fail: every session request is 503. pass: reads go through without a session,
            // updates are 503 because the write cannot happen.
            let expected = if pass && !update { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            if status != expected {
                ledger.violations.push(format!(
                    "request {seq} (update: {update}) while Redis was down: {status}, expected {expected}"
                ));
            }
        }

        if status.is_success() {
            // What the upstream saw must be this client's latest acknowledged update (or a
            // newer one it sent), unless Redis was killed since then.
            let seen = parts.headers.get("x-seen").map(|v| v.to_str().unwrap_or("?").to_owned());
            match seen.as_deref() {
                Some("absent") if pass => {
                    if fully_down {
                        ledger.passed_without_session += 1;
                    }
                }
                Some("absent") => ledger.violations.push(format!("request {seq}: no x-session under fail")),
                Some(text) if fully_down => {
                    ledger.violations.push(format!("request {seq}: a session ({text}) while Redis was down"))
                }
                Some(text) => match serde_json::from_str::<Value>(text) {
                    Ok(value) => {
                        let required = if epoch_after == epoch { ledger.required_seq(epoch) } else { None };
                        ledger.check_value(&format!("request {seq} (upstream saw)"), &value, required);
                    }
                    Err(_) => ledger.violations.push(format!("request {seq}: x-session not JSON: {text}")),
                },
                None => ledger.violations.push(format!("request {seq}: upstream answer without x-seen")),
            }
            if update {
                ledger.last_ack = Some((seq, epoch));
                if restarted {
                    ledger.acks_after_restart += 1;
                }
            }
            if let Some(pair) = session_cookie_pair(&parts.headers) {
                ledger.cookie = Some(pair);
            }
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            if parts.headers.get("retry-after").map(|v| v.as_bytes()) != Some(b"1") {
                ledger.violations.push(format!("request {seq}: 503 without Retry-After: 1"));
            }
            if session_cookie_pair(&parts.headers).is_some() {
                ledger.violations.push(format!("request {seq}: 503 that sets a cookie"));
            }
        } else {
            ledger.violations.push(format!("request {seq}: unexpected status {status}"));
        }
    }
    ledger
}

/// Waits (bounded) until `done` holds.
async fn wait_for(what: &str, deadline: Instant, mut done: impl FnMut() -> bool) {
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// How Redis goes away in the middle of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// redis-server is killed (SIGKILL) and started again, empty: updates acknowledged before
    /// the kill are lost with it, so the ledger holds Redis to those acknowledged after.
    Kill,
    /// Every connection to Redis is cut and new ones refused for a while; Redis keeps its data,
    /// so the ledger holds Redis to every acknowledged update, none excused.
    Cut,
}

async fn ledger_under_load(on_store_error: &str, fault: Fault) {
    count_panics();
    let pass = on_store_error == "pass";
    let mut redis = RedisServer::start();
    let relay = CutRelay::start(([127, 0, 0, 1], redis.port()).into()).await;
    let store_url = match fault {
        Fault::Kill => redis.url(),
        Fault::Cut => relay.url(),
    };
    let (up, probes) = ledger_upstream().await;
    let proxy = start_proxy(&proxy_toml(&store_url, on_store_error, &up)).await;
    let run = Arc::new(Run::default());
    let deadline = Instant::now() + RUN_GUARD;
    // Two sessions of the probes: one is only ever read, the other is also sent an update
    // while Redis is down (which may still land: see the module doc).
    let read_probe = new_session(&proxy, PROBED_SESSION).await;
    let write_probe = new_session(&proxy, PROBED_SESSION).await;

    let clients: Vec<_> =
        (0..CLIENTS as u64).map(|i| tokio::spawn(load_client(i, proxy.url(""), run.clone(), pass))).collect();

    // Kill Redis a third of the way through, while requests are in flight.
    let third = CLIENTS * REQUESTS_PER_CLIENT as usize / 3;
    wait_for("a third of the load", deadline, || run.completed.load(Ordering::SeqCst) >= third).await;
    match fault {
        Fault::Kill => {
            run.epoch.fetch_add(1, Ordering::SeqCst);
            tokio::task::block_in_place(|| redis.stop());
        }
        Fault::Cut => relay.cut(),
    }
    run.down.fetch_add(1, Ordering::SeqCst);

    // Routes without sessions do not need the store.
    let (status, _, body) = guarded("a non-session request", get(&proxy.url("/static/x"))).await;
    assert_eq!(status, StatusCode::OK, "non-session route while Redis is down: {body}");
    probe_while_down(&proxy, pass, &read_probe, &write_probe, &probes).await;

    // Enough of them, reads (which `pass` forwards) among them.
    wait_for("requests while Redis is down", deadline, || {
        run.while_down.load(Ordering::SeqCst) >= REQUESTS_WHILE_DOWN
            && run.reads_while_down.load(Ordering::SeqCst) > 0
    })
    .await;
    run.down.fetch_add(1, Ordering::SeqCst);
    match fault {
        Fault::Kill => tokio::task::block_in_place(|| redis.restart()),
        Fault::Cut => relay.heal(),
    }
    run.restarted.store(true, Ordering::SeqCst);

    let mut ledgers = Vec::new();
    for client in clients {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let ledger = tokio::time::timeout(remaining, client)
            .await
            .expect("the load run did not finish in time")
            .expect("a load client panicked");
        ledgers.push(ledger);
    }

    // The ledger: every acknowledged update since the restart is what Redis holds (or a newer
    // update the client sent), under the id of the cookie the client holds.
    let final_epoch = run.epoch.load(Ordering::SeqCst);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut passed_without_session = 0;
    for ledger in &mut ledgers {
        for status in &ledger.statuses {
            *statuses.entry(status.as_u16()).or_default() += 1;
        }
        passed_without_session += ledger.passed_without_session;
        assert!(
            ledger.acks_after_restart >= ACKS_AFTER_RESTART,
            "client {} did not recover: {} acknowledged updates after the restart",
            ledger.client,
            ledger.acks_after_restart
        );
        let required = ledger.required_seq(final_epoch);
        assert!(
            required.is_some(),
            "client {}: last acknowledged update predates the restart",
            ledger.client
        );
        let cookie = ledger.cookie.clone().expect("a client with acknowledged updates has a cookie");
        let id = session_id(&cookie).expect("the cookie decodes to an id");
        let stored = redis.cli(&["GET", &format!("_session:{id}")]);
        let value: Value = serde_json::from_str(&stored)
            .unwrap_or_else(|_| panic!("client {}: Redis holds {stored:?}, not JSON", ledger.client));
        ledger.check_value("Redis after the run", &value, required);
        assert!(ledger.violations.is_empty(), "client {}: {:#?}", ledger.client, ledger.violations);
    }
    let total: usize = statuses.values().sum();
    println!(
        "ledger ({on_store_error}, {fault:?}): {CLIENTS} clients, {total} requests, statuses {statuses:?}, \
         {} requests entirely while Redis was down",
        run.while_down.load(Ordering::SeqCst)
    );
    if pass {
        assert!(passed_without_session > 0, "pass: no read-only request was forwarded without a session");
    }

    // The probed session that was only read: gone with a killed Redis (it restarts empty, so
    // the id is a new visitor's), kept through a network cut.
    let (status, headers) = session_request(&client(), &proxy.url("/app"), Some(&read_probe), None).await;
    let expected = match fault {
        Fault::Kill => "{}",
        Fault::Cut => PROBED_SESSION,
    };
    assert_eq!((status, seen(&headers)), (StatusCode::OK, expected), "the probed session after the outage");
    // A session created now is stored with `max_age` as its TTL.
    let fresh = new_session(&proxy, r#"{"user":"carol"}"#).await;
    let key = format!("_session:{}", session_id(&fresh).unwrap());
    let ttl: i64 = redis.cli(&["TTL", &key]).parse().unwrap();
    assert!((MAX_AGE - TTL_SLACK..=MAX_AGE).contains(&ttl), "TTL {ttl}, expected about {MAX_AGE}");

    // Still serving, nothing panicked anywhere in the process, and a clean drain.
    let (status, _, _) = guarded("a request after the run", get(&proxy.url("/app"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(panics(), 0, "a task panicked during the run (see the output above)");
    guarded("proxy shutdown", proxy.shutdown()).await;
}

/// `fail`: while Redis is down every session request is 503; afterwards the ledger holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_survives_a_redis_kill_under_load_fail() {
    ledger_under_load("fail", Fault::Kill).await;
}

/// `pass`: while Redis is down reads are forwarded without a session and updates are 503
/// (the write cannot happen); afterwards the ledger holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_survives_a_redis_kill_under_load_pass() {
    ledger_under_load("pass", Fault::Kill).await;
}

/// Redis keeps its data through a network outage: every acknowledged update is in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_survives_a_network_cut_under_load_fail() {
    ledger_under_load("fail", Fault::Cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_survives_a_network_cut_under_load_pass() {
    ledger_under_load("pass", Fault::Cut).await;
}

/// Sends one request through the proxy with `cookie`, optionally asking for `update`.
async fn session_request(
    http: &HttpClient,
    url: &str,
    cookie: Option<&str>,
    update: Option<&str>,
) -> (StatusCode, http::HeaderMap) {
    request_with(http, url, cookie, update, &[]).await
}

/// As [`session_request`], with `extra` request headers.
async fn request_with(
    http: &HttpClient,
    url: &str,
    cookie: Option<&str>,
    update: Option<&str>,
    extra: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap) {
    let mut req = Request::get(url);
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    if let Some(update) = update {
        req = req.header("x-want-update", update);
    }
    let resp = guarded("a request", http.request(req.body(empty()).unwrap())).await.expect("request");
    let (parts, body) = resp.into_parts();
    guarded("a response body", body.collect()).await.expect("body");
    (parts.status, parts.headers)
}

fn seen(headers: &http::HeaderMap) -> &str {
    headers.get("x-seen").and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The session the outage probes start from.
const PROBED_SESSION: &str = r#"{"user":"ann"}"#;

/// A new session holding `value`: its `__session=...` pair.
async fn new_session(proxy: &TestProxy, value: &str) -> String {
    let (status, headers) = session_request(&client(), &proxy.url("/app"), None, Some(value)).await;
    assert_eq!(status, StatusCode::OK);
    session_cookie_pair(&headers).expect("a new session sets a cookie")
}

/// The store's 503: `Retry-After: 1`, no cookie.
fn assert_store_unavailable(what: &str, status: StatusCode, headers: &http::HeaderMap) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}");
    assert_eq!(headers.get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]), "{what}");
    assert!(session_cookie_pair(headers).is_none(), "{what}: a cookie");
}

/// One request at a time while Redis is down, where the load clients cannot tell which of
/// their requests reached the upstream: a read of a live session is 503 without calling the
/// upstream (`fail`) or is forwarded without any `x-session`, not even a forged one (`pass`);
/// an update of it, and a new visitor's, cannot be saved: 503; requests that need no store
/// read (no cookie, a bad cookie, a route without sessions) are served. No answer carries a
/// cookie or a protocol header.
async fn probe_while_down(
    proxy: &TestProxy,
    pass: bool,
    read_probe: &str,
    write_probe: &str,
    probes: &AtomicUsize,
) {
    let http = client();
    let url = proxy.url("/app");
    let probe = (PROBE, "1");
    let check_headers = |what: &str, headers: &http::HeaderMap| {
        for name in PROTOCOL_HEADERS {
            assert!(!headers.contains_key(name), "{what}: {name} reached the client");
        }
    };

    let before = probes.load(Ordering::SeqCst);
    let forged = ("x-session", r#"{"admin":true}"#);
    let (status, headers) = request_with(&http, &url, Some(read_probe), None, &[probe, forged]).await;
    check_headers("a read", &headers);
    if pass {
        assert_eq!(
            (status, seen(&headers)),
            (StatusCode::OK, "absent"),
            "pass: a read goes on without a session"
        );
        assert!(session_cookie_pair(&headers).is_none());
        assert_eq!(probes.load(Ordering::SeqCst), before + 1);
    } else {
        assert_store_unavailable("fail: a read", status, &headers);
        assert_eq!(probes.load(Ordering::SeqCst), before, "the upstream must not be called");
    }

    let before = probes.load(Ordering::SeqCst);
    let update = Some(r#"{"user":"bob"}"#);
    let (status, headers) = request_with(&http, &url, Some(write_probe), update, &[probe]).await;
    check_headers("an update", &headers);
    assert_store_unavailable("an update", status, &headers);
    if !pass {
        assert_eq!(probes.load(Ordering::SeqCst), before, "the upstream must not be called");
    }
    let (status, headers) = request_with(&http, &url, None, update, &[probe]).await;
    check_headers("a new visitor's update", &headers);
    assert_store_unavailable("a new visitor's update", status, &headers);

    for cookie in [None, Some("__session=garbage")] {
        let (status, headers) = request_with(&http, &url, cookie, None, &[probe]).await;
        check_headers("no store read", &headers);
        assert_eq!((status, seen(&headers)), (StatusCode::OK, "{}"), "cookie {cookie:?}");
    }
    let (status, headers) =
        request_with(&http, &proxy.url("/static/x"), Some(read_probe), None, &[probe]).await;
    check_headers("a route without sessions", &headers);
    assert_eq!(status, StatusCode::OK);
}

/// Redis frozen with SIGSTOP: it accepts nothing and answers nothing, connections stay open.
/// Session requests end at the store timeout with 503 (never a hang) without calling the
/// upstream, routes without sessions are served meanwhile, and sessions work again once Redis
/// resumes, with what they held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_gives_503_and_the_proxy_stays_responsive() {
    count_panics();
    let redis = RedisServer::start();
    let (up, probes) = ledger_upstream().await;
    let proxy = start_proxy(&proxy_toml(&redis.url(), "fail", &up)).await;
    let http = client();
    let url = proxy.url("/app");

    // A live session, and the store proven up, before the freeze; and one that is not even
    // read while Redis is frozen.
    let (status, headers) = session_request(&http, &url, None, Some(r#"{"v":1}"#)).await;
    assert_eq!(status, StatusCode::OK);
    let cookie = session_cookie_pair(&headers).expect("a new session sets a cookie");
    let (status, headers) = session_request(&http, &url, Some(&cookie), None).await;
    assert_eq!((status, seen(&headers)), (StatusCode::OK, r#"{"v":1}"#));
    let untouched = new_session(&proxy, PROBED_SESSION).await;

    redis.pause();
    let mut frozen = Vec::new();
    for i in 0..8 {
        let (http, url, cookie) = (http.clone(), url.clone(), cookie.clone());
        frozen.push(tokio::spawn(async move {
            // Half of them also try to write.
            let update = (i % 2 == 0).then_some(r#"{"v":2}"#);
            request_with(&http, &url, Some(&cookie), update, &[(PROBE, "1")]).await
        }));
    }
    // While those wait on the frozen store, other routes are served.
    for _ in 0..5 {
        let (status, _, _) = guarded("a non-session request", get(&proxy.url("/static/x"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    // A visitor without a cookie needs no store read either.
    let (status, headers) = session_request(&http, &url, None, None).await;
    assert_eq!((status, seen(&headers)), (StatusCode::OK, "{}"));
    for request in frozen {
        let (status, headers) = request.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a session request while Redis is frozen");
        assert_eq!(headers["retry-after"], "1");
        assert!(session_cookie_pair(&headers).is_none());
    }
    assert_eq!(probes.load(Ordering::SeqCst), 0, "a request answered 503 reached the upstream");

    redis.resume();
    // Recovery without a restart of the proxy. The writes answered 503 were already on the
    // wire when their timeout fired, so Redis may have run them on resume: {"v":2} is allowed.
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let (status, headers) = session_request(&http, &url, Some(&cookie), None).await;
        if status == StatusCode::OK {
            assert!(matches!(seen(&headers), r#"{"v":1}"# | r#"{"v":2}"#), "{}", seen(&headers));
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "sessions did not recover after Redis resumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = session_request(&http, &url, Some(&cookie), Some(r#"{"v":3}"#)).await;
    assert_eq!(status, StatusCode::OK);
    let id = session_id(&cookie).unwrap();
    assert_eq!(redis.cli(&["GET", &format!("_session:{id}")]), r#"{"v":3}"#);
    let (status, headers) = session_request(&http, &url, Some(&untouched), None).await;
    assert_eq!((status, seen(&headers)), (StatusCode::OK, PROBED_SESSION), "a session lost to the freeze");
    assert_eq!(panics(), 0);
}
