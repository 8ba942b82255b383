//! Redis Sentinel end to end: one master, one replica and three sentinels (quorum 2, a short
//! `down-after-milliseconds`) started here (see `tests/common/redis_topology.rs`), a proxy on
//! `redis-sentinel://` in front. The session lifecycle; the master killed and the proxy
//! following the promoted replica without a restart; no acknowledged write lost with
//! `min_replicas = 1`; the lifecycle over `rediss-sentinel://` (every process TLS only).

mod common;

use std::time::{Duration, Instant};

use common::app::{AppEnv, Backend, Load};
use common::faults::session_id;
use common::redis_topology::Sentinel;
use http::StatusCode;

const ROUTES: &str = "[[route]]\nprefix = \"/\"\nupstream = \"{app}\"\n";
/// Sentinel needs `down-after-milliseconds` plus an election and a promotion.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(20);

fn key(cookie: &str) -> String {
    format!("_session:{}", session_id(cookie).unwrap())
}

async fn proxy_on(url: &str, store: &str) -> AppEnv {
    AppEnv::start_on(Backend::Url(url.to_owned()), &format!("timeout_ms = 1000\n{store}"), "", "", ROUTES)
        .await
}

async fn wait_ready(env: &AppEnv, want: StatusCode, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let answer = env.admin(http::Method::GET, "/readyz", None).await;
        if answer.status == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "/readyz still {} ({}) after {limit:?}", answer.status, answer.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_then_failover_followed_without_restart_and_no_acknowledged_write_lost() {
    let mut sentinel = tokio::task::spawn_blocking(Sentinel::start).await.unwrap();
    let env = proxy_on(&sentinel.url(), "min_replicas = 1").await;
    wait_ready(&env, StatusCode::OK, Duration::from_secs(10)).await;
    assert_eq!(env.metric("session_proxy_store_info{backend=\"redis\",topology=\"sentinel\"}").await, 1.0);
    assert_eq!(env.metric("session_proxy_store_min_replicas").await, 1.0);

    // The lifecycle, on the master Sentinel names, replicated to the replica.
    let cookie = env.create(r#"{"a":1}"#).await;
    assert_eq!(sentinel.master.cli(&["GET", &key(&cookie)]), r#"{"a":1}"#);
    assert_eq!(
        sentinel.replica.cli(&["GET", &key(&cookie)]),
        r#"{"a":1}"#,
        "WAIT 1 made it reach the replica"
    );
    assert_eq!(env.call(Some(&cookie), &[("x-patch-add", "b")]).await.status, StatusCode::OK);
    assert_eq!(env.call(Some(&cookie), &[]).await.seen(), r#"{"a":1,"b":"b"}"#);
    let answer = env.call(Some(&cookie), &[("x-want-regenerate", "1")]).await;
    let moved = answer.new_cookie().expect("a new cookie");
    assert_eq!(sentinel.master.cli(&["GET", &key(&cookie)]), "");
    assert_eq!(env.call(Some(&moved), &[("x-want-update", "null")]).await.status, StatusCode::OK);
    assert_eq!(sentinel.master.cli(&["GET", &key(&moved)]), "");

    // A ledger of acknowledged patches while the master dies.
    let mut cookies = Vec::new();
    for _ in 0..10 {
        cookies.push(env.create("{}").await);
    }
    let load = Load::start(&env, &cookies, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old_master = sentinel.master.port;
    sentinel.master.kill();
    let down = wait_ready(&env, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(5)).await;
    let back = wait_ready(&env, StatusCode::OK, FAILOVER_DEADLINE).await;
    eprintln!("readyz 503 after {down:?}, 200 again {back:?} later");
    assert_eq!(sentinel.master_port(), Some(sentinel.replica.port), "Sentinel promoted the replica");
    assert_ne!(sentinel.replica.port, old_master);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ledger, statuses) = load.finish().await;

    let served = statuses.iter().filter(|(_, s, _)| s.is_success()).count();
    let refused = statuses.iter().filter(|(_, s, _)| *s == StatusCode::SERVICE_UNAVAILABLE).count();
    eprintln!("{served} acknowledged, {refused} got 503, of {}", statuses.len());
    assert_eq!(served + refused, statuses.len(), "only 2xx or 503 during a failover");
    assert!(served > 0);
    // Every acknowledged patch is on the new master.
    for (cookie, field) in &ledger {
        let stored = sentinel.replica.cli(&["GET", &key(cookie)]);
        let session: serde_json::Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(session[field.as_str()], field.as_str(), "acknowledged patch lost: {stored}");
    }
    // Reads follow the new master; writes need a replica it no longer has: 503, never 2xx.
    let answer = env.call(Some(&cookies[0]), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.seen(), sentinel.replica.cli(&["GET", &key(&cookies[0])]));
    let answer = env.call(Some(&cookies[0]), &[("x-patch-add", "late")]).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_without_min_replicas_keeps_serving_writes() {
    let mut sentinel = tokio::task::spawn_blocking(Sentinel::start).await.unwrap();
    let env = proxy_on(&sentinel.url(), "").await;
    wait_ready(&env, StatusCode::OK, Duration::from_secs(10)).await;
    let cookie = env.create(r#"{"a":1}"#).await;
    sentinel.replica.wait_until("has the session", |r| !r.cli(&["GET", &key(&cookie)]).is_empty());
    sentinel.master.kill();
    wait_ready(&env, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(5)).await;
    let back = wait_ready(&env, StatusCode::OK, FAILOVER_DEADLINE).await;
    eprintln!("ready again {back:?} after the outage was seen");
    let answer = env.call(Some(&cookie), &[("x-patch-add", "b")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(sentinel.replica.cli(&["GET", &key(&cookie)]), r#"{"a":1,"b":"b"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sentinel_lifecycle() {
    let sentinel = tokio::task::spawn_blocking(|| Sentinel::start_tls("s3cret-pw")).await.unwrap();
    let url = sentinel.url();
    assert!(url.starts_with("rediss-sentinel://"), "{url}");
    let ca = sentinel.ca_file().unwrap();
    // The URL names only the sentinels (TLS only): the proxy finds the master through them.
    let env = proxy_on(&url, &format!("ca_file = \"{}\"", ca.display())).await;
    wait_ready(&env, StatusCode::OK, Duration::from_secs(10)).await;
    assert_eq!(env.metric("session_proxy_store_info{backend=\"redis\",topology=\"sentinel\"}").await, 1.0);

    // Create, read, update, destroy, each checked on the master.
    let cookie = env.create(r#"{"a":1}"#).await;
    assert_eq!(sentinel.master.cli(&["GET", &key(&cookie)]), r#"{"a":1}"#);
    assert_eq!(env.call(Some(&cookie), &[]).await.seen(), r#"{"a":1}"#);
    let answer = env.call(Some(&cookie), &[("x-add", "b")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(sentinel.master.cli(&["GET", &key(&cookie)]), r#"{"a":1,"b":"b"}"#);
    assert_eq!(env.call(Some(&cookie), &[]).await.seen(), r#"{"a":1,"b":"b"}"#);
    let answer = env.call(Some(&cookie), &[("x-want-update", "null")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(sentinel.master.cli(&["EXISTS", &key(&cookie)]), "0");
    assert_eq!(env.call(Some(&cookie), &[]).await.seen(), "{}", "a new visitor");
}
