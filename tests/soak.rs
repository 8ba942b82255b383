//! Soak: session requests through a session route, on keep-alive connections from several
//! concurrent clients, with the proxy in this process. The process's resident memory is
//! measured after a warm-up and after the run, and must not grow beyond a small bound; the
//! open file descriptors must come back to the warm-up level once the clients have gone.
//!
//! The default run is sized to catch a leak per request, not to prove stamina: see
//! [`DEFAULT_SOAK_REQUESTS`] for the numbers. The long soak, four times as long, is
//! `SOAK_REQUESTS=100000 cargo test --test soak -- --nocapture`; any count works, and the same
//! RSS bound then catches smaller leaks (at 100,000 requests, 42 bytes per request: any leaked
//! block beyond the smallest).
//!
//! This file holds this one test only: RSS and descriptors are per process, and another test
//! running beside it would move them. Run it with its numbers printed:
//! `cargo test --test soak -- --nocapture` (add `--release` for production-like speed, and
//! `SOAK_STORE=redis` in the environment to soak the Redis store instead of the embedded one).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::faults::*;
use common::redis_server::RedisServer;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use session_proxy::Limits;

/// Requests in the measured run unless `SOAK_REQUESTS` says otherwise. A leak of 168 bytes
/// per request is 25,000 x 168 B = 4 MiB here, the bound ([`MAX_RSS_GROWTH_KIB`]); anything a
/// request holds that is larger (its future, a header map, a hyper buffer) is tens to hundreds
/// of MiB. Checked by planting a leak in this test's upstream (the same process): 200 bytes per
/// request grew RSS by 5.4 MiB and failed, 100 bytes by 2.9 MiB and passed. Without a leak the
/// growth was 0.3 to 0.7 MiB at this count (0.6 and 1.1 MiB at 100,000), on 2 shared cores.
const DEFAULT_SOAK_REQUESTS: usize = 25_000;
/// Requests before the first measurement: allocator arenas, pools and caches fill up here.
const WARMUP_REQUESTS: usize = 5_000;
/// Concurrent clients, each on its own keep-alive connection with its own session.
const CLIENTS: usize = 16;
/// Allowed RSS growth over the measured run: over three times the most measured without a
/// leak, and what a leak of 168 bytes per request reaches in the default run.
const MAX_RSS_GROWTH_KIB: u64 = 4 * 1024;
/// Descriptors allowed above the warm-up level after the clients have gone (a listener or
/// runtime handle opened lazily, say).
const FD_SLACK: usize = 4;
/// Idle upstream connections close after this, so descriptors settle quickly once idle.
const POOL_IDLE: Duration = Duration::from_millis(200);
/// How long descriptors may take to settle once the clients have gone (a hang guard: they
/// normally settle within a few pool-idle periods).
const SETTLE_GUARD: Duration = Duration::from_secs(30);
/// Hard limit on the whole run: past it the test fails as a hang.
const RUN_GUARD: Duration = Duration::from_secs(600);

/// The measured run's length: `SOAK_REQUESTS` from the environment, else the default.
fn soak_requests() -> usize {
    match std::env::var("SOAK_REQUESTS") {
        Ok(count) => {
            count.parse().unwrap_or_else(|_| panic!("SOAK_REQUESTS={count:?}: not a number of requests"))
        }
        Err(_) => DEFAULT_SOAK_REQUESTS,
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits until the open descriptors are at most `limit`; returns the count.
async fn settle_fds(limit: usize) -> usize {
    let deadline = Instant::now() + SETTLE_GUARD;
    loop {
        let fds = open_fds();
        if fds <= limit || Instant::now() >= deadline {
            return fds;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `total` requests from [`CLIENTS`] clients, each with its own session and keep-alive
/// connection; three in four update the session, the fourth only reads it. Returns the number
/// of answers that were not a 200 with the expected session, and the clients are dropped (so
/// their connections close) before it returns.
async fn drive(proxy_url: &str, total: usize) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client_index| {
            let (next, bad, url) = (next.clone(), bad.clone(), format!("{proxy_url}/app"));
            tokio::spawn(async move {
                let http = client();
                let mut cookie: Option<String> = None;
                let mut last: Option<String> = None;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let mut req = Request::get(&url);
                    if let Some(cookie) = &cookie {
                        req = req.header("cookie", cookie);
                    }
                    let update = (n % 4 != 0).then(|| json!({ "client": client_index, "n": n }).to_string());
                    if let Some(update) = &update {
                        req = req.header("x-want-update", update);
                    }
                    let resp =
                        guarded("a soak request", http.request(req.body(empty()).unwrap())).await.unwrap();
                    let (parts, body) = resp.into_parts();
                    guarded("a soak body", body.collect()).await.unwrap();
                    let seen = parts.headers.get("x-seen").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    let expected_seen = last.clone().unwrap_or_else(|| "{}".to_owned());
                    if parts.status != StatusCode::OK || seen.as_deref() != Some(expected_seen.as_str()) {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(pair) = session_cookie_pair(&parts.headers) {
                        cookie = Some(pair);
                    }
                    if update.is_some() {
                        last = update;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    bad.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_session_requests_without_growth_or_descriptor_leaks() {
    count_panics();
    tokio::time::timeout(RUN_GUARD, soak()).await.expect("the soak did not finish in time");
}

async fn soak() {
    let up = upstream(|req: Request<Incoming>| async move {
        let mut resp = Response::builder();
        if let Some(seen) = req.headers().get("x-session") {
            resp = resp.header("x-seen", seen);
        }
        if let Some(want) = req.headers().get("x-want-update") {
            resp = resp.header("x-session-update", want);
        }
        resp.body(full("ok")).unwrap()
    })
    .await;
    // The embedded store by default; `SOAK_STORE=redis` soaks the Redis store (fred's pool,
    // buffers and timers) against a redis-server of its own instead.
    let redis = (std::env::var("SOAK_STORE").as_deref() == Ok("redis")).then(RedisServer::start);
    let store = redis.as_ref().map_or_else(|| "memory://".to_owned(), RedisServer::url);
    let limits = Limits { upstream_pool_idle_timeout: POOL_IDLE, ..Limits::default() };
    let toml =
        format!("[store]\nurl = \"{store}\"\n\n[[route]]\nprefix = \"/\"\nupstream = \"{}\"\n", up.url());
    let proxy = start_proxy_with(config(&toml), limits).await;
    let fds_idle = open_fds();

    let bad = drive(&proxy.url(""), WARMUP_REQUESTS).await;
    assert_eq!(bad, 0, "warm-up answers that were not a 200 with the expected session");
    let fds_warm = settle_fds(fds_idle + FD_SLACK).await;
    let rss_warm = rss_kib();

    let requests = soak_requests();
    let started = Instant::now();
    let bad = drive(&proxy.url(""), requests).await;
    let elapsed = started.elapsed();
    assert_eq!(bad, 0, "answers that were not a 200 with the expected session");
    let rss_after = rss_kib();
    let fds_after = settle_fds(fds_warm + FD_SLACK).await;
    let rss_settled = rss_kib();

    println!(
        "soak ({store}): {requests} session requests from {CLIENTS} keep-alive clients in {:.1} s ({:.0} req/s); \
         RSS after warm-up {} KiB, after the run {} KiB (growth {} KiB), {} KiB once idle; \
         open fds idle {fds_idle}, after warm-up {fds_warm}, after the run {fds_after}",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64(),
        rss_warm,
        rss_after,
        rss_after.saturating_sub(rss_warm),
        rss_settled,
    );
    assert!(
        rss_after.saturating_sub(rss_warm) < MAX_RSS_GROWTH_KIB,
        "RSS grew from {rss_warm} KiB to {rss_after} KiB over {requests} requests"
    );
    assert!(
        fds_after <= fds_warm + FD_SLACK,
        "descriptors leaked: {fds_warm} after warm-up, {fds_after} after"
    );
    assert_eq!(panics(), 0);
    guarded("proxy shutdown", proxy.shutdown()).await;
}
