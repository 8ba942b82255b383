//! Thread per core: the acceptor deals connections round-robin over the worker threads, each
//! with its own upstream pool and Redis connections. Whichever worker serves a request, it sees
//! the same sessions; `store.pool_size` is the number of Redis connections in all (at least one
//! per worker), and shutdown closes every worker's.
//!
//! No timed assertions: waits are bounded polls.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::*;
use http::{Request, Response};
use hyper::body::Incoming;
use session_proxy::Limits;

const WORKERS: usize = 3;
/// Redis connections in all: dealt 2, 1, 1 over the three workers.
const POOL_SIZE: usize = 4;
/// Fresh connections after the one that made the session: round-robin dealing puts at least
/// two on every worker.
const READERS: usize = 2 * WORKERS;
/// How long Redis connections may take to open or close.
const SETTLE_DEADLINE: Duration = Duration::from_secs(20);

/// An upstream that sets `{"who": V}` when the request carries `x-test-set: V`, and answers
/// with the session it was given.
async fn session_upstream() -> Upstream {
    upstream(|req: Request<Incoming>| async move {
        let given = req.headers().get("x-session").map(|v| v.to_str().unwrap_or("?").to_owned());
        let mut resp = Response::new(full(given.unwrap_or_default()));
        if let Some(who) = req.headers().get("x-test-set") {
            let update = format!("{{\"who\":\"{}\"}}", who.to_str().unwrap_or("?"));
            resp.headers_mut().insert("x-session-update", update.parse().unwrap());
        }
        resp
    })
    .await
}

fn proxy_toml(up: &Upstream, store: &str) -> String {
    format!("{store}\n[[route]]\nprefix = \"/\"\nupstream = \"{}\"\n", up.url())
}

fn limits() -> Limits {
    Limits { workers: WORKERS, ..Limits::default() }
}

/// Makes a session on one connection, then reads it on [`READERS`] fresh connections (so on
/// every worker): each must see it.
async fn session_seen_by_every_worker(proxy: &TestProxy) {
    let req = Request::get(proxy.url("/")).header("x-test-set", "alice").body(empty()).unwrap();
    let (status, headers, _) = send(req).await;
    assert_eq!(status, 200);
    let cookie = headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();

    for reader in 0..READERS {
        // `send` builds a new client, so every request is a new connection.
        let req = Request::get(proxy.url("/")).header("cookie", &cookie).body(empty()).unwrap();
        let (status, _, body) = send(req).await;
        assert_eq!(status, 200, "reader {reader}");
        assert_eq!(body, r#"{"who":"alice"}"#, "reader {reader} (a fresh connection) lost the session");
    }
}

#[tokio::test]
async fn the_memory_store_is_one_store_for_all_workers() {
    let up = session_upstream().await;
    let proxy = start_proxy_with(config(&proxy_toml(&up, "[store]\nurl = \"memory://\"")), limits()).await;
    session_seen_by_every_worker(&proxy).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn redis_connections_are_dealt_over_the_workers_and_closed_at_shutdown() {
    redis_connections_per_worker(POOL_SIZE, POOL_SIZE).await;
}

#[tokio::test]
async fn a_pool_smaller_than_the_workers_still_gives_each_worker_a_connection() {
    redis_connections_per_worker(1, WORKERS).await;
}

/// With `store.pool_size = pool_size`, sessions work on every worker over `expected` Redis
/// connections in all, and shutdown closes every one.
async fn redis_connections_per_worker(pool_size: usize, expected: usize) {
    let redis = RedisServer::start();
    let up = session_upstream().await;
    let proxy = start_proxy_with(config(&proxy_toml(&up, &redis_store(&redis, pool_size))), limits()).await;

    session_seen_by_every_worker(&proxy).await;
    assert_eq!(redis.cli(&["DBSIZE"]), "1", "one session, whichever worker wrote or read it");
    // `CLIENT LIST` counts redis-cli's own connection too.
    wait_for_clients(&redis, expected + 1).await;

    proxy.shutdown().await;
    wait_for_clients(&redis, 1).await;
}

fn redis_store(redis: &RedisServer, pool_size: usize) -> String {
    format!("[store]\nurl = \"{}\"\npool_size = {pool_size}", redis.url())
}

/// Polls `CLIENT LIST` until it has exactly `expected` connections.
async fn wait_for_clients(redis: &RedisServer, expected: usize) {
    let started = Instant::now();
    loop {
        let clients = redis.cli(&["CLIENT", "LIST"]).lines().count();
        if clients == expected {
            return;
        }
        assert!(started.elapsed() < SETTLE_DEADLINE, "redis has {clients} connections, expected {expected}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn readyz_pings_every_workers_store() {
    let redis = RedisServer::start();
    let up = session_upstream().await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{}",
        proxy_toml(&up, &redis_store(&redis, POOL_SIZE))
    );
    let proxy = start_proxy_with(config(&toml), limits()).await;
    let started = Instant::now();
    while get(&proxy.admin_url("/readyz")).await.0 != 200 {
        assert!(started.elapsed() < SETTLE_DEADLINE, "/readyz never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(redis.cli(&["CONFIG", "RESETSTAT"]), "OK");
    const PROBES: usize = 4;
    for _ in 0..PROBES {
        let (status, _, body) = get(&proxy.admin_url("/readyz")).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "ready\n"));
    }
    // At least one PING per worker and probe (fred may add one of its own while a pooled
    // connection finishes its set-up).
    let stats = redis.cli(&["INFO", "commandstats"]);
    let calls: usize = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_ping:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(calls >= WORKERS * PROBES, "{PROBES} probes of {WORKERS} workers sent {calls} PINGs");
    proxy.shutdown().await;
}
