//! Concurrent requests of one session (the README, "Concurrent requests"), end to end on a real
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

use common::app::{key, AppEnv};
use common::faults::{guarded, panics, session_id};
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};

/// How many clients the ledger runs at once on one session.
const LEDGER_CLIENTS: usize = 50;
/// The ledger's app waits up to this long (spread over the clients) before it answers, so
/// that the requests' reads and writes interleave.
const LEDGER_MAX_DELAY_MS: u64 = 250;

type Env = AppEnv;

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
    let env = Env::start(redis, "", "").await;
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
    let env = Env::start(redis, "", "").await;
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
    let env = Env::start(redis, "", "").await;
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
    let env = Env::start(redis, "", "").await;
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
    let env = Env::start(redis, "", "").await;
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
        let calls = |command: &str| redis.command_calls(command);
        let stats = redis.cli(&["INFO", "commandstats"]);
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
    let env = Env::start(true, "", "").await;
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
