//! Concurrent requests of one session (DESIGN.md, "Concurrent requests"), end to end on a real
//! `redis-server` and on `memory://`: no lost update when many requests of one session change
//! it at once (the ledger), no log-out or regenerate undone by a request that was already in
//! flight (409), a regenerate that carries a change made meanwhile, an app that echoes the
//! session costing no write, and a Remix app's write between the proxy's read and write
//! surviving it.
//!
//! The app is scripted by the request (see [`app`]). No timed assertions: the races are made
//! deterministic by holding a request in the app until the test releases it; delays in the
//! ledger only spread the requests out, and waits are hang guards.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::faults::{count_panics, guarded, panics, session_cookie_pair, session_id};
use common::redis_server::RedisServer;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::sync::Notify;

/// How many clients the ledger runs at once on one session.
const LEDGER_CLIENTS: usize = 50;
/// The ledger's app waits up to this long (spread over the clients) before it answers, so
/// that the requests' reads and writes interleave.
const LEDGER_MAX_DELAY_MS: u64 = 250;

/// A request held in the app: it tells the test it has the session, then waits to be let go.
#[derive(Default)]
struct Gate {
    loaded: Notify,
    release: Notify,
}

/// The app, scripted by request headers (each response carries `x-seen`, the session it got):
/// - `x-add: KEY`: echoes the whole session with one more key, `KEY: "KEY"` (the typical
///   legacy app);
/// - `x-patch-add: KEY`: answers with the patch `{"KEY": "KEY"}`;
/// - `x-delay-ms: N`: answers after N ms;
/// - `x-hold`: waits at the [`Gate`] before answering;
/// - `x-echo`: answers with the session it got as the update, unchanged;
/// - `x-want-update`, `x-want-patch`, `x-want-regenerate`: answers with those headers.
async fn app(gate: Arc<Gate>) -> Upstream {
    upstream(move |req: Request<Incoming>| {
        let gate = gate.clone();
        async move {
            let header = |name: &str| req.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
            let seen = header("x-session").unwrap_or_default();
            if let Some(ms) = header("x-delay-ms") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            }
            if header("x-hold").is_some() {
                gate.loaded.notify_one();
                gate.release.notified().await;
            }
            let mut resp = Response::builder().header("x-seen", &seen);
            if let Some(key) = header("x-add") {
                let mut session: Value = serde_json::from_str(&seen).unwrap();
                session[key.as_str()] = json!(key);
                resp = resp.header("x-session-update", session.to_string());
            }
            if let Some(key) = header("x-patch-add") {
                resp = resp.header("x-session-patch", json!({ key.as_str(): key }).to_string());
            }
            if header("x-echo").is_some() {
                resp = resp.header("x-session-update", &seen);
            }
            for (asked, name) in [
                ("x-want-update", "x-session-update"),
                ("x-want-patch", "x-session-patch"),
                ("x-want-regenerate", "x-session-regenerate"),
            ] {
                if let Some(value) = header(asked) {
                    resp = resp.header(name, value);
                }
            }
            resp.body(full("ok")).unwrap()
        }
    })
    .await
}

enum Backend {
    Redis(RedisServer),
    Memory,
}

/// A proxy with an admin listener in front of [`app`], on one store.
struct Env {
    backend: Backend,
    gate: Arc<Gate>,
    proxy: TestProxy,
    _app: Upstream,
}

/// What one request got back.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
}

impl Answer {
    /// The session the app was sent.
    fn seen(&self) -> &str {
        self.headers.get("x-seen").map_or("", |v| v.to_str().unwrap())
    }

    fn new_cookie(&self) -> Option<String> {
        session_cookie_pair(&self.headers)
    }
}

impl Env {
    async fn start(backend: Backend) -> Env {
        count_panics();
        let gate = Arc::new(Gate::default());
        let app = app(gate.clone()).await;
        let url = match &backend {
            Backend::Redis(redis) => redis.url(),
            Backend::Memory => "memory://".to_owned(),
        };
        let proxy = start_proxy(&format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[store]
url = "{url}"
timeout_ms = 5000

[session]
secrets = ["test-secret"]
secure = false

[[route]]
prefix = "/"
upstream = "{app}"
"#,
            app = app.url()
        ))
        .await;
        Env { backend, gate, proxy, _app: app }
    }

    fn redis(&self) -> Option<&RedisServer> {
        match &self.backend {
            Backend::Redis(redis) => Some(redis),
            Backend::Memory => None,
        }
    }

    async fn call(&self, cookie: Option<&str>, headers: &[(&str, &str)]) -> Answer {
        let mut req = Request::get(self.proxy.url("/app"));
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = guarded("a request", client().request(req.body(empty()).unwrap())).await.unwrap();
        let (parts, body) = resp.into_parts();
        guarded("its body", body.collect()).await.unwrap();
        Answer { status: parts.status, headers: parts.headers }
    }

    /// A new session holding `value`: its cookie.
    async fn create(&self, value: &str) -> String {
        let answer = self.call(None, &[("x-want-update", value)]).await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.new_cookie().expect("a new session sets a cookie")
    }

    /// The session behind `cookie` as the app is sent it (`{}`: none), and, on Redis, checks
    /// that the stored text is the same.
    async fn session(&self, cookie: &str) -> String {
        let answer = self.call(Some(cookie), &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.assert_no_cookie();
        let seen = answer.seen().to_owned();
        if let Some(redis) = self.redis() {
            let stored = redis.cli(&["GET", &key(cookie)]);
            assert_eq!(if stored.is_empty() { "{}" } else { stored.as_str() }, seen);
        }
        seen
    }

    async fn metric(&self, series: &str) -> f64 {
        let (status, _, text) = get(&self.proxy.admin_url("/metrics")).await;
        assert_eq!(status, StatusCode::OK);
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in {text}"))
    }

    /// Sends a request that the app holds until [`Env::release`], once the app has it.
    async fn held(
        &self,
        cookie: &str,
        headers: &[(&'static str, &'static str)],
    ) -> tokio::task::JoinHandle<Answer> {
        let (url, cookie, headers) = (self.proxy.url("/app"), cookie.to_owned(), headers.to_vec());
        let task = tokio::spawn(async move {
            let mut req = Request::get(url).header("cookie", cookie).header("x-hold", "1");
            for (name, value) in headers {
                req = req.header(name, value);
            }
            let resp =
                guarded("the held request", client().request(req.body(empty()).unwrap())).await.unwrap();
            let (parts, body) = resp.into_parts();
            guarded("its body", body.collect()).await.unwrap();
            Answer { status: parts.status, headers: parts.headers }
        });
        guarded("the held request's read", self.gate.loaded.notified()).await;
        task
    }

    fn release(&self) {
        self.gate.release.notify_one();
    }
}

impl Answer {
    fn assert_no_cookie(&self) {
        assert!(self.headers.get("set-cookie").is_none(), "unexpected Set-Cookie: {:?}", self.headers);
    }
}

/// The Redis key of the session behind `cookie`.
fn key(cookie: &str) -> String {
    format!("_session:{}", session_id(cookie).unwrap())
}

fn backend(redis: bool) -> Backend {
    if redis {
        Backend::Redis(RedisServer::start())
    } else {
        Backend::Memory
    }
}

/// How a ledger client adds its key.
#[derive(Clone, Copy)]
enum Add {
    /// Echoes the whole session with one more key.
    Echo,
    /// Sends a merge patch of its key.
    Patch,
}

/// [`LEDGER_CLIENTS`] clients on one session at once, each adding its own key; every key
/// whose response was a 2xx is in the stored session afterwards, and no other: zero lost
/// updates, nothing written that a client was not told about.
async fn ledger(redis: bool, add: Add) {
    let env = Env::start(backend(redis)).await;
    let cookie = env.create(r#"{"start":true}"#).await;
    let clients: Vec<_> = (0..LEDGER_CLIENTS)
        .map(|i| {
            let (url, cookie) = (env.proxy.url("/app"), cookie.clone());
            tokio::spawn(async move {
                let key = format!("k{i}");
                // Spread over [0, LEDGER_MAX_DELAY_MS), in an order unrelated to `i`.
                let delay = (i as u64 * 7919) % LEDGER_MAX_DELAY_MS;
                let header = match add {
                    Add::Echo => "x-add",
                    Add::Patch => "x-patch-add",
                };
                let req = Request::get(url)
                    .header("cookie", cookie)
                    .header(header, &key)
                    .header("x-delay-ms", delay.to_string())
                    .body(empty())
                    .unwrap();
                let resp = guarded("a ledger request", client().request(req)).await.unwrap();
                let (parts, body) = resp.into_parts();
                guarded("its body", body.collect()).await.unwrap();
                (key, parts.status, parts.headers)
            })
        })
        .collect();
    let mut saved = Vec::new();
    let mut refused = Vec::new();
    for client in clients {
        let (key, status, headers) = client.await.unwrap();
        assert!(headers.get("set-cookie").is_none(), "{key}: the session keeps its id");
        match status {
            StatusCode::OK => saved.push(key),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(headers.get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]), "{key}");
                refused.push(key);
            }
            other => panic!("{key}: {other}"),
        }
    }
    let stored: Value = serde_json::from_str(&env.session(&cookie).await).unwrap();
    assert_eq!(stored["start"], json!(true), "{stored}");
    for key in &saved {
        assert_eq!(stored[key.as_str()], json!(key), "{key} got a 2xx but is not in {stored}");
    }
    for key in &refused {
        assert!(stored.get(key.as_str()).is_none(), "{key} got a 503 but is in {stored}");
    }
    assert_eq!(stored.as_object().unwrap().len(), 1 + saved.len(), "{stored}");
    // The clients did overlap (else this proves nothing), and most of them got through.
    let merged = env.metric(r#"session_proxy_session_conflicts_total{outcome="merged"}"#).await;
    assert!(merged > 0.0, "no request met a concurrent change");
    assert!(saved.len() * 2 >= LEDGER_CLIENTS, "only {} of {LEDGER_CLIENTS} got through", saved.len());
    let exhausted = env.metric(r#"session_proxy_session_conflicts_total{outcome="exhausted"}"#).await;
    assert_eq!(exhausted, refused.len() as f64);
    println!(
        "ledger ({}, {}): {} saved, {} refused with 503, {merged} merged",
        if redis { "redis" } else { "memory" },
        match add {
            Add::Echo => "echo",
            Add::Patch => "patch",
        },
        saved.len(),
        refused.len()
    );
    assert_eq!(panics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_of_echoing_clients_loses_no_update_redis() {
    ledger(true, Add::Echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_of_echoing_clients_loses_no_update_memory() {
    ledger(false, Add::Echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_of_patching_clients_loses_no_update_redis() {
    ledger(true, Add::Patch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_of_patching_clients_loses_no_update_memory() {
    ledger(false, Add::Patch).await;
}

/// A log-out completes while a request of the session is in the app; that request's update
/// then gets 409, writes nothing and touches no cookie: the log-out stays.
async fn a_request_in_flight_never_undoes_a_log_out(redis: bool) {
    let env = Env::start(backend(redis)).await;
    let cookie = env.create(r#"{"user":"ada"}"#).await;
    let slow = env.held(&cookie, &[("x-want-update", r#"{"user":"ada","cart":1}"#)]).await;

    let logout = env.call(Some(&cookie), &[("x-want-update", "null")]).await;
    assert_eq!(logout.status, StatusCode::OK);
    assert!(logout.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"), "destroyed");
    env.release();
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, StatusCode::CONFLICT);
    slow.assert_no_cookie();

    if let Some(redis) = env.redis() {
        assert_eq!(redis.cli(&["EXISTS", &key(&cookie)]), "0");
    }
    assert_eq!(env.session(&cookie).await, "{}", "the old cookie is a new visitor");
    assert_eq!(env.metric(r#"session_proxy_session_conflicts_total{outcome="interrupted"}"#).await, 1.0);
    // A patch in flight is interrupted the same way.
    let cookie = env.create(r#"{"user":"bob"}"#).await;
    let slow = env.held(&cookie, &[("x-want-patch", r#"{"cart":1}"#)]).await;
    assert_eq!(env.call(Some(&cookie), &[("x-want-update", "null")]).await.status, StatusCode::OK);
    env.release();
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, StatusCode::CONFLICT);
    slow.assert_no_cookie();
    assert_eq!(env.session(&cookie).await, "{}");
    assert_eq!(panics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_never_undoes_a_log_out_redis() {
    a_request_in_flight_never_undoes_a_log_out(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_never_undoes_a_log_out_memory() {
    a_request_in_flight_never_undoes_a_log_out(false).await;
}

/// A log-in regenerates the session while a request of it is in the app: that request's
/// update gets 409; the old id stays gone and the new one holds the log-in's data.
async fn a_request_in_flight_never_revives_a_regenerated_id(redis: bool) {
    let env = Env::start(backend(redis)).await;
    let cookie = env.create(r#"{"cart":[1]}"#).await;
    let slow = env.held(&cookie, &[("x-want-update", r#"{"cart":[1,2]}"#)]).await;

    let login = env
        .call(Some(&cookie), &[("x-want-update", r#"{"cart":[1],"user":"ada"}"#), ("x-want-regenerate", "1")])
        .await;
    assert_eq!(login.status, StatusCode::OK);
    let moved = login.new_cookie().expect("a regenerate sets a new cookie");
    assert_ne!(session_id(&moved), session_id(&cookie));
    env.release();
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, StatusCode::CONFLICT);
    slow.assert_no_cookie();

    if let Some(redis) = env.redis() {
        assert_eq!(redis.cli(&["EXISTS", &key(&cookie)]), "0");
    }
    assert_eq!(env.session(&cookie).await, "{}");
    assert_eq!(env.session(&moved).await, r#"{"cart":[1],"user":"ada"}"#);
    assert_eq!(panics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_never_revives_a_regenerated_id_redis() {
    a_request_in_flight_never_revives_a_regenerated_id(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_never_revives_a_regenerated_id_memory() {
    a_request_in_flight_never_revives_a_regenerated_id(false).await;
}

/// A regenerate in the app while another request changes the session: the change made
/// meanwhile moves to the new id with the regenerate's own, and the old id is gone.
async fn a_regenerate_carries_a_change_made_meanwhile(redis: bool) {
    let env = Env::start(backend(redis)).await;
    let cookie = env.create(r#"{"cart":[1]}"#).await;
    let login = env
        .held(&cookie, &[("x-want-update", r#"{"cart":[1],"user":"ada"}"#), ("x-want-regenerate", "1")])
        .await;
    let add = env.call(Some(&cookie), &[("x-want-patch", r#"{"seen":true}"#)]).await;
    assert_eq!(add.status, StatusCode::OK);
    env.release();
    let login = login.await.unwrap();
    assert_eq!(login.status, StatusCode::OK);
    let moved = login.new_cookie().expect("a regenerate sets a new cookie");
    assert_eq!(env.session(&moved).await, r#"{"cart":[1],"seen":true,"user":"ada"}"#);
    assert_eq!(env.session(&cookie).await, "{}");
    assert_eq!(env.metric(r#"session_proxy_session_conflicts_total{outcome="merged"}"#).await, 1.0);
    assert_eq!(panics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regenerate_carries_a_change_made_meanwhile_redis() {
    a_regenerate_carries_a_change_made_meanwhile(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regenerate_carries_a_change_made_meanwhile_memory() {
    a_regenerate_carries_a_change_made_meanwhile(false).await;
}

/// An app that answers every request with the session unchanged costs no write: 1,000 such
/// requests make 1,000 reads and not one write command.
async fn an_echoing_app_costs_no_write(redis: bool) {
    const REQUESTS: usize = 1000;
    let env = Env::start(backend(redis)).await;
    let cookie = env.create(r#"{"user":"ada","n":1,"tags":["a","b"]}"#).await;
    if let Some(redis) = env.redis() {
        assert_eq!(redis.cli(&["CONFIG", "RESETSTAT"]), "OK");
    }
    for _ in 0..REQUESTS {
        let answer = env.call(Some(&cookie), &[("x-echo", "1")]).await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.assert_no_cookie();
    }
    if let Some(redis) = env.redis() {
        let stats = redis.cli(&["INFO", "commandstats"]);
        let calls = |command: &str| {
            stats
                .lines()
                .find_map(|line| {
                    line.strip_prefix(&format!("cmdstat_{command}:calls="))?.split(',').next()?.parse().ok()
                })
                .unwrap_or(0u64)
        };
        assert_eq!(calls("get"), REQUESTS as u64, "{stats}");
        for write in ["set", "evalsha", "eval", "del", "getex", "expire"] {
            assert_eq!(calls(write), 0, "{write}: {stats}");
        }
    }
    let skipped = env.metric("session_proxy_session_writes_skipped_total").await;
    assert_eq!(skipped, REQUESTS as f64);
    let writes =
        env.metric(r#"session_proxy_store_command_duration_seconds_count{command="replace_if"}"#).await;
    assert_eq!(writes, 0.0);
    assert_eq!(panics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoing_app_costs_no_write_redis() {
    an_echoing_app_costs_no_write(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoing_app_costs_no_write_memory() {
    an_echoing_app_costs_no_write(false).await;
}

/// A Remix app sharing the store writes the session (a plain `SET`, as
/// `remix-upstash-session` does) between the proxy's read and its write: the Remix change
/// survives, merged with the proxy's, in the key order JavaScript would give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remix_write_between_read_and_write_survives() {
    let env = Env::start(backend(true)).await;
    let cookie = env.create(r#"{"user":"ada","cart":[]}"#).await;
    let slow = env.held(&cookie, &[("x-add", "visited")]).await;
    let redis = env.redis().unwrap();
    let remix = r#"{"user":"ada","cart":["book"],"theme":"dark"}"#;
    assert_eq!(redis.cli(&["SET", &key(&cookie), remix, "EX", "600"]), "OK");
    env.release();
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    assert_eq!(
        redis.cli(&["GET", &key(&cookie)]),
        r#"{"user":"ada","cart":["book"],"theme":"dark","visited":"visited"}"#
    );
    assert_eq!(panics(), 0);
}
