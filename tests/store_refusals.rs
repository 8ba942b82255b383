//! A Redis that answers but refuses: out of memory under `noeviction` (writes get 503, reads
//! and routes without sessions keep working, and it recovers by itself when memory frees), an
//! evicting policy (an evicted session is a new visitor), an ACL that forbids the proxy's
//! scripts (503 and one clear ERROR line, never a silent fallback), and a Redis the proxy knows
//! to be down (503, or the upstream without a session, at once rather than after `timeout_ms`).
//!
//! Each test runs its own redis-server on a free port.

mod common;

use std::time::{Duration, Instant};

use common::app::{key, AppEnv, Backend};
use common::faults::guarded;
use common::logs::{log_line, logs};
use common::redis_server::RedisServer;
use http::{Method, StatusCode};

/// A session route at `/` and a route without sessions at `/assets`.
const ROUTES: &str = r#"
[[route]]
prefix = "/assets"
upstream = "{app}"
session = false

[[route]]
prefix = "/"
upstream = "{app}"
"#;

fn redis(env: &AppEnv) -> &RedisServer {
    env.redis().expect("these tests run on Redis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_refuses_writes_with_503_while_reads_work_and_recovers_by_itself() {
    let env = AppEnv::start_with(true, "", "", ROUTES).await;
    let cookie = env.create(r#"{"n":1}"#).await;
    let redis = redis(&env);
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]), "OK");
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "1"]), "OK");

    let update = env.call(Some(&cookie), &[("x-want-update", r#"{"n":2}"#)]).await;
    assert_eq!(update.status, StatusCode::SERVICE_UNAVAILABLE, "{}", update.body);
    assert_eq!(update.headers["retry-after"], "1");
    update.assert_no_cookie();
    let patch = env.call(Some(&cookie), &[("x-want-patch", r#"{"m":1}"#)]).await;
    assert_eq!(patch.status, StatusCode::SERVICE_UNAVAILABLE);
    let created = env.call(None, &[("x-want-update", r#"{"n":9}"#)]).await;
    assert_eq!(created.status, StatusCode::SERVICE_UNAVAILABLE, "a new session is a write too");
    created.assert_no_cookie();

    // Reads (GETEX refreshes the TTL and is allowed at maxmemory) and other routes still work.
    assert_eq!(env.session(&cookie).await, r#"{"n":1}"#);
    assert_eq!(env.get("/assets/app.css", None, &[]).await.status, StatusCode::OK);
    assert!(env.metric(r#"session_proxy_store_errors_total{kind="out_of_memory"}"#).await >= 3.0);

    // Memory frees: the same update succeeds, with no restart.
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
    let update = env.call(Some(&cookie), &[("x-want-update", r#"{"n":2}"#)]).await;
    assert_eq!(update.status, StatusCode::OK, "{}", update.body);
    assert_eq!(env.session(&cookie).await, r#"{"n":2}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_evicted_under_an_evicting_policy_is_a_new_visitor() {
    let env = AppEnv::start_with(true, "", "", ROUTES).await;
    let cookie = env.create(r#"{"user":"ann"}"#).await;
    let redis = redis(&env);
    let session_key = key(&cookie);
    let used: u64 = redis
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:")?.trim().parse().ok())
        .expect("INFO memory has used_memory");
    let limit = (used + 4 * 1024 * 1024).to_string();
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]), "OK");
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", &limit]), "OK");
    // Fill Redis with newer keys until it evicts the session (the least recently used key).
    let filler = "x".repeat(100_000);
    let mut filled = 0;
    while redis.cli(&["EXISTS", &session_key]) == "1" {
        assert!(filled < 2_000, "Redis never evicted the session");
        redis.cli(&["SET", &format!("filler:{filled}"), &filler]);
        filled += 1;
    }

    let answer = env.call(Some(&cookie), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.seen(), "{}", "an evicted session reaches the app as a new visitor's");
    let again = env.call(Some(&cookie), &[("x-want-update", r#"{"user":"bob"}"#)]).await;
    assert_eq!(again.status, StatusCode::OK);
    let fresh = again.new_cookie().expect("the visitor gets a new session");
    assert_ne!(key(&fresh), session_key, "never the evicted id again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_that_forbids_the_scripts_fails_writes_with_503_and_one_clear_error() {
    let _ = logs();
    let env = AppEnv::start_with(true, "", "", ROUTES).await;
    let cookie = env.create(r#"{"n":1}"#).await;
    let redis = redis(&env);
    assert_eq!(redis.cli(&["ACL", "SETUSER", "default", "-evalsha", "-eval"]), "OK");

    for _ in 0..2 {
        let update = env.call(Some(&cookie), &[("x-want-update", r#"{"n":2}"#)]).await;
        assert_eq!(update.status, StatusCode::SERVICE_UNAVAILABLE, "{}", update.body);
        update.assert_no_cookie();
    }
    // Nothing was written another way: no silent fallback to a plain SET.
    assert_eq!(redis.cli(&["GET", &key(&cookie)]), r#"{"n":1}"#);
    assert!(env.metric(r#"session_proxy_store_errors_total{kind="denied"}"#).await >= 2.0);
    let line = log_line(&[r#""level":"ERROR""#, "ACL forbids a command the proxy needs", "EVALSHA"]).await;
    assert!(!line.to_string().contains(r#"{\"n\""#), "no session contents in the log: {line}");
    let errors = String::from_utf8_lossy(&logs().lock().unwrap())
        .lines()
        .filter(|l| l.contains(r#""level":"ERROR""#) && l.contains("ACL forbids"))
        .count();
    assert_eq!(errors, 1, "the ERROR line is written once per process");

    // The operator fixes the ACL: writes work again, with no restart.
    assert_eq!(redis.cli(&["ACL", "SETUSER", "default", "+evalsha", "+eval"]), "OK");
    let update = env.call(Some(&cookie), &[("x-want-update", r#"{"n":2}"#)]).await;
    assert_eq!(update.status, StatusCode::OK, "{}", update.body);
    assert_eq!(env.session(&cookie).await, r#"{"n":2}"#);
}

/// Stops the env's Redis, then waits until the proxy has seen it go (`/readyz` 503).
async fn take_redis_down(env: &mut AppEnv) {
    match &mut env.backend {
        Backend::Redis(redis) => redis.stop(),
        Backend::Memory | Backend::Url(_) => unreachable!("these tests run on Redis"),
    }
    guarded("/readyz to say 503", async {
        while env.admin(Method::GET, "/readyz", None).await.status != StatusCode::SERVICE_UNAVAILABLE {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// `timeout_ms` is 5 s in [`AppEnv`]: an answer in under half of it was not a wait for the
/// timeout. (A bound of behaviour, not of speed: a slow machine cannot make it fail wrongly
/// unless it takes 2.5 s for a 503.)
const AT_ONCE: Duration = Duration::from_millis(2_500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_known_to_be_down_answers_503_at_once_and_recovers() {
    let mut env = AppEnv::start_with(true, "", "", ROUTES).await;
    let cookie = env.create(r#"{"n":1}"#).await;
    take_redis_down(&mut env).await;

    for _ in 0..3 {
        let started = Instant::now();
        let answer = env.call(Some(&cookie), &[]).await;
        let took = started.elapsed();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers["retry-after"], "1");
        assert!(took < AT_ONCE, "a 503 for a store known down took {took:?}");
    }
    assert_eq!(env.get("/assets/app.css", None, &[]).await.status, StatusCode::OK);

    match &mut env.backend {
        Backend::Redis(redis) => redis.restart(),
        Backend::Memory | Backend::Url(_) => unreachable!(),
    }
    guarded("the proxy to reconnect", async {
        while env.admin(Method::GET, "/readyz", None).await.status != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The restarted Redis is empty: the old cookie is a new visitor, and writes work.
    let answer = env.call(Some(&cookie), &[("x-want-update", r#"{"n":2}"#)]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.new_cookie().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pass_a_store_known_to_be_down_forwards_without_a_session_at_once() {
    let mut env = AppEnv::start_with(true, "", "on_store_error = \"pass\"", ROUTES).await;
    let cookie = env.create(r#"{"n":1}"#).await;
    take_redis_down(&mut env).await;

    let started = Instant::now();
    let answer = env.call(Some(&cookie), &[]).await;
    let took = started.elapsed();
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.received("x-session").is_empty(), "no session is forwarded: {}", answer.body);
    assert!(took < AT_ONCE, "a pass for a store known down took {took:?}");
}
