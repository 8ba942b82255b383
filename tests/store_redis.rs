//! The Redis store against a real redis-server: what lands in Redis (values, TTLs), recovery
//! after Redis is down, stopped or frozen, and TLS with a password (the Upstash set-up).
//!
//! No timing assertions: outer timeouts only guard against hangs, and recovery is polled with a
//! bounded retry loop.

mod common;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis_server::RedisServer;
use session_proxy::config::{StoreConfig, StoreUrl};
use session_proxy::store::{Compared, Store, StoreError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The store's per-call timeout in these tests: short, so failures come quickly.
const STORE_TIMEOUT: Duration = Duration::from_millis(300);
/// Any single store call (or connect) taking longer than this is a hang: the test fails.
const HANG_GUARD: Duration = Duration::from_secs(10);
/// How long the store may take to serve again after Redis is back.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between recovery probes.
const RECOVERY_POLL: Duration = Duration::from_millis(50);

fn store_config(url: String, ca_file: Option<PathBuf>) -> StoreConfig {
    StoreConfig {
        url: StoreUrl::Redis(url),
        key_prefix: "_session:".to_owned(),
        ca_file,
        timeout: STORE_TIMEOUT,
        pool_size: 2,
        min_replicas: 0,
    }
}

/// Runs a store future, failing the test if it does not end on its own.
async fn guarded<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG_GUARD, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not return within {HANG_GUARD:?}"),
    }
}

async fn connect(cfg: &StoreConfig) -> Store {
    match guarded("Store::connect", Store::connect(cfg)).await {
        Ok(store) => store,
        Err(err) => panic!("Store::connect failed: {err}"),
    }
}

/// Polls until a write and a read through `store` succeed again.
async fn wait_until_serving(store: &Store) {
    let started = Instant::now();
    loop {
        let write = guarded("set", store.set("probe", "{}", 60)).await;
        if write.is_ok() && guarded("get", store.get("probe", None)).await.is_ok() {
            return;
        }
        assert!(
            started.elapsed() < RECOVERY_DEADLINE,
            "store did not recover within {RECOVERY_DEADLINE:?}: {write:?}"
        );
        tokio::time::sleep(RECOVERY_POLL).await;
    }
}

fn ttl(redis: &RedisServer, key: &str) -> i64 {
    let out = redis.cli(&["TTL", key]);
    out.parse().unwrap_or_else(|_| panic!("TTL {key}: unexpected redis-cli output {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_get_del_round_trip() {
    let redis = RedisServer::start();
    let store = connect(&store_config(redis.url(), None)).await;
    assert_eq!(store.kind(), "redis");
    wait_until_serving(&store).await;

    let value = r#"{"user":"Zoë","n":1}"#;
    guarded("set", store.set("_session:abc", value, 120)).await.unwrap();
    assert_eq!(redis.cli(&["GET", "_session:abc"]), value);
    let remaining = ttl(&redis, "_session:abc");
    assert!((1..=120).contains(&remaining), "TTL {remaining}");

    let read = guarded("get", store.get("_session:abc", None)).await.unwrap();
    assert_eq!(read.as_deref(), Some(value.as_bytes()));

    guarded("del", store.del("_session:abc")).await.unwrap();
    assert_eq!(redis.cli(&["EXISTS", "_session:abc"]), "0");
    assert_eq!(guarded("get", store.get("_session:abc", None)).await.unwrap(), None);
    // Deleting a missing key is fine.
    guarded("del", store.del("_session:abc")).await.unwrap();
    guarded("ping", store.ping()).await.unwrap();
    guarded("shutdown", store.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getex_refreshes_the_ttl_and_get_does_not() {
    let redis = RedisServer::start();
    let store = connect(&store_config(redis.url(), None)).await;
    wait_until_serving(&store).await;

    assert_eq!(redis.cli(&["SET", "k", "{\"a\":1}", "EX", "50"]), "OK");
    let read = guarded("get", store.get("k", None)).await.unwrap();
    assert_eq!(read.as_deref(), Some(&b"{\"a\":1}"[..]));
    assert!(ttl(&redis, "k") <= 50);

    let read = guarded("getex", store.get("k", Some(5000))).await.unwrap();
    assert_eq!(read.as_deref(), Some(&b"{\"a\":1}"[..]));
    let refreshed = ttl(&redis, "k");
    assert!(refreshed > 50 && refreshed <= 5000, "TTL {refreshed}");

    // GETEX on a missing key is a miss, not an error.
    assert_eq!(guarded("getex", store.get("missing", Some(60))).await.unwrap(), None);
    assert_eq!(redis.cli(&["EXISTS", "missing"]), "0");
}

/// The conditional writes of the concurrent-requests rules, as Redis runs them: `SET NX` for
/// new sessions, compare-and-set and compare-and-delete scripts (EVALSHA, with EVAL when the
/// server does not have the script, as after `SCRIPT FLUSH` or a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_compare_the_text_that_was_read() {
    let redis = RedisServer::start();
    let store = connect(&store_config(redis.url(), None)).await;
    wait_until_serving(&store).await;

    assert!(guarded("create", store.create("_session:a", r#"{"n":1}"#, 300)).await.unwrap());
    assert!(!guarded("create", store.create("_session:a", "{}", 300)).await.unwrap());
    assert_eq!(redis.cli(&["GET", "_session:a"]), r#"{"n":1}"#);
    let remaining = ttl(&redis, "_session:a");
    assert!((250..=300).contains(&remaining), "TTL {remaining}");

    // Replaced only while the key holds what was read; the TTL is set again.
    let done = guarded("replace_if", store.replace_if("_session:a", br#"{"n":1}"#, r#"{"n":2}"#, 600)).await;
    assert_eq!(done.unwrap(), Compared::Done);
    assert_eq!(redis.cli(&["GET", "_session:a"]), r#"{"n":2}"#);
    assert!(ttl(&redis, "_session:a") > 300);
    let stale = guarded("replace_if", store.replace_if("_session:a", br#"{"n":1}"#, r#"{"n":3}"#, 600)).await;
    assert_eq!(stale.unwrap(), Compared::Changed(Bytes::from_static(br#"{"n":2}"#)));
    assert_eq!(redis.cli(&["GET", "_session:a"]), r#"{"n":2}"#);

    // The server lost its scripts: EVAL runs (and loads) them again.
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    let stale = guarded("delete_if", store.delete_if("_session:a", br#"{"n":1}"#)).await;
    assert_eq!(stale.unwrap(), Compared::Changed(Bytes::from_static(br#"{"n":2}"#)));
    let done = guarded("delete_if", store.delete_if("_session:a", br#"{"n":2}"#)).await;
    assert_eq!(done.unwrap(), Compared::Done);
    assert_eq!(redis.cli(&["EXISTS", "_session:a"]), "0");

    // A key that is gone is never written again.
    let gone = guarded("replace_if", store.replace_if("_session:a", br#"{"n":2}"#, "{}", 60)).await;
    assert_eq!(gone.unwrap(), Compared::Gone);
    assert_eq!(guarded("delete_if", store.delete_if("_session:a", b"{}")).await.unwrap(), Compared::Gone);
    assert_eq!(redis.cli(&["EXISTS", "_session:a"]), "0");

    // Non-ASCII compares byte for byte.
    assert_eq!(redis.cli(&["SET", "_session:b", r#"{"a":"café"}"#]), "OK");
    let stored = guarded("get", store.get("_session:b", None)).await.unwrap().unwrap();
    let done = guarded("replace_if", store.replace_if("_session:b", &stored, "{}", 60)).await;
    assert_eq!(done.unwrap(), Compared::Done);

    let stats = redis.cli(&["INFO", "commandstats"]);
    assert!(stats.contains("cmdstat_evalsha:"), "{stats}");
    assert!(stats.contains("cmdstat_eval:"), "{stats}");
}

/// Redis down when the store starts, and stopped again once it serves: every call fails
/// while Redis is away, and the same store serves again once it is back, without being
/// rebuilt. Nothing written while it was down shows up later; a restarted (unpersisted) Redis
/// has lost what it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_whenever_redis_is_up_without_being_rebuilt() {
    let mut redis = RedisServer::start();
    redis.stop();

    let store = connect(&store_config(redis.url(), None)).await;
    let read = guarded("get", store.get("k", None)).await;
    assert!(read.is_err(), "a read with Redis down must fail");
    let write = guarded("set", store.set("k", "{}", 60)).await;
    assert!(write.is_err(), "a write with Redis down must fail");
    let ping = guarded("ping", store.ping()).await;
    assert!(ping.is_err());
    let create = guarded("create", store.create("b", "{}", 60)).await;
    assert!(create.is_err());
    let replace = guarded("replace_if", store.replace_if("k", b"{}", "{}", 60)).await;
    assert!(replace.is_err());

    redis.restart();
    wait_until_serving(&store).await;
    guarded("set", store.set("k", "{\"up\":true}", 60)).await.unwrap();
    assert_eq!(redis.cli(&["GET", "k"]), "{\"up\":true}");
    // Nothing written while Redis was down shows up later.
    assert_eq!(redis.cli(&["EXISTS", "b"]), "0");

    // Stopped again, now that the store has been serving.
    guarded("set", store.set("before", "{}", 60)).await.unwrap();
    redis.stop();
    let read = guarded("get", store.get("before", None)).await;
    assert!(read.is_err(), "a read with Redis stopped must fail");

    redis.restart();
    wait_until_serving(&store).await;
    // Redis came back empty (no persistence): the old key is gone, new writes land.
    assert_eq!(guarded("get", store.get("before", None)).await.unwrap(), None);
    guarded("set", store.set("after", "{\"x\":2}", 60)).await.unwrap();
    assert_eq!(redis.cli(&["GET", "after"]), "{\"x\":2}");
    guarded("shutdown", store.shutdown()).await;
}

/// A stalled server, frozen (SIGSTOP: connections open, nothing answers) or busy (`DEBUG
/// SLEEP` from another connection): calls end at the store timeout as [`StoreError::Timeout`],
/// never hang, and the store serves again once the server does, with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_times_out_and_the_store_recovers() {
    let redis = RedisServer::start();
    let store = connect(&store_config(redis.url(), None)).await;
    wait_until_serving(&store).await;
    guarded("set", store.set("k", "{}", 60)).await.unwrap();

    redis.pause();
    let read = guarded("get", store.get("k", None)).await;
    assert!(matches!(read, Err(StoreError::Timeout)), "a stalled server must time out: {read:?}");
    // Later calls fail too (as timeout, or unavailable once the connection is recycled).
    let write = guarded("set", store.set("k2", "{}", 60)).await;
    assert!(write.is_err());
    redis.resume();

    wait_until_serving(&store).await;
    let read = guarded("get", store.get("k", None)).await.unwrap();
    assert_eq!(read.as_deref(), Some(&b"{}"[..]));

    // Stall the server from another connection for a few store timeouts.
    let sleeper = {
        let port = redis.port().to_string();
        std::thread::spawn(move || {
            std::process::Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port, "DEBUG", "SLEEP", "2"])
                .output()
        })
    };
    // Until the sleep starts, calls may still succeed; one of them must time out.
    let started = Instant::now();
    loop {
        match guarded("get", store.get("k", None)).await {
            Err(StoreError::Timeout) => break,
            Err(err) => panic!("expected a timeout, got {err}"),
            Ok(_) => {
                assert!(started.elapsed() < RECOVERY_DEADLINE, "DEBUG SLEEP never stalled the store");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let _ = sleeper.join();
    wait_until_serving(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_password_and_ca_file() {
    let redis = RedisServer::start_tls("upstash-like token/+=");
    assert!(redis.url().starts_with("rediss://default:"));
    let store = connect(&store_config(redis.url(), redis.ca_file())).await;
    wait_until_serving(&store).await;

    guarded("set", store.set("_session:tls", "{\"t\":1}", 90)).await.unwrap();
    assert_eq!(redis.cli(&["GET", "_session:tls"]), "{\"t\":1}");
    let remaining = ttl(&redis, "_session:tls");
    assert!((1..=90).contains(&remaining), "TTL {remaining}");
    let read = guarded("getex", store.get("_session:tls", Some(900))).await.unwrap();
    assert_eq!(read.as_deref(), Some(&b"{\"t\":1}"[..]));
    assert!(ttl(&redis, "_session:tls") > 90);
    guarded("shutdown", store.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_fails() {
    let redis = RedisServer::start_tls("right-password");
    let url = format!("rediss://default:wrong-password@127.0.0.1:{}", redis.port());
    let store = connect(&store_config(url, redis.ca_file())).await;

    // Every call fails; once the first connection attempt has been refused, the error names
    // the cause (and never the password).
    let started = Instant::now();
    loop {
        let read = guarded("get", store.get("k", None)).await;
        let err = read.expect_err("a wrong password must not serve");
        assert_eq!(err.kind(), "unavailable", "{err}");
        let message = err.to_string();
        assert!(!message.contains("wrong-password"), "{message}");
        if message.contains("WRONGPASS") {
            break;
        }
        assert!(started.elapsed() < RECOVERY_DEADLINE, "the error never named the cause: {message}");
    }
    assert!(guarded("ping", store.ping()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_the_private_ca_fails() {
    let redis = RedisServer::start_tls("token");
    // System roots only: the test CA is unknown, so the handshake is refused. (A machine
    // without any system roots refuses already at connect, as a config error.)
    let cfg = store_config(redis.url(), None);
    if let Ok(store) = guarded("Store::connect", Store::connect(&cfg)).await {
        let read = guarded("get", store.get("k", None)).await;
        assert!(read.is_err(), "an untrusted server certificate must not serve");
    }
}

/// A TCP relay to Redis that can silently stop forwarding on the connections open at that
/// moment while new connections work: what a NAT or load balancer dropping a connection's
/// state looks like to the client (writes are accepted, nothing ever answers).
struct BlackholeRelay {
    port: u16,
    /// Connections accepted at or before this generation no longer forward anything.
    cut: Arc<AtomicU64>,
    generation: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackholeRelay {
    async fn start(redis_port: u16) -> BlackholeRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicU64::new(0));
        let generation = Arc::new(AtomicU64::new(1));
        let task = {
            let (cut, generation) = (cut.clone(), generation.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                        continue;
                    };
                    let conn_generation = generation.load(Ordering::SeqCst);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    for (from, to) in [(client_read, server_write), (server_read, client_write)] {
                        let cut = cut.clone();
                        tokio::spawn(relay(from, to, conn_generation, cut));
                    }
                }
            })
        };
        BlackholeRelay { port, cut, generation, task }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// From now on, the connections open so far swallow everything.
    fn cut_open_connections(&self) {
        let current = self.generation.fetch_add(1, Ordering::SeqCst);
        self.cut.store(current, Ordering::SeqCst);
    }
}

impl Drop for BlackholeRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    generation: u64,
    cut: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if generation <= cut.load(Ordering::SeqCst) {
            continue; // swallowed: read (so the sender's writes succeed) but never delivered
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A store connected through a [`BlackholeRelay`], serving, with `k` set to `{}`.
async fn store_behind_relay() -> (RedisServer, BlackholeRelay, Store) {
    let redis = RedisServer::start();
    let relay = BlackholeRelay::start(redis.port()).await;
    let store = connect(&store_config(relay.url(), None)).await;
    wait_until_serving(&store).await;
    guarded("set", store.set("k", "{}", 60)).await.unwrap();
    (redis, relay, store)
}

/// With no other traffic, a connection that took a call and never answered is replaced by
/// itself: the next call, however much later, finds a working connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dropped_connection_is_replaced_without_traffic() {
    let (_redis, relay, store) = store_behind_relay().await;

    relay.cut_open_connections();
    // One call per pooled client (the store takes them in turn): each goes unanswered.
    for _ in 0..2 {
        let read = guarded("get", store.get("k", None)).await;
        assert!(matches!(read, Err(StoreError::Timeout)), "a swallowed call must time out: {read:?}");
    }
    // Quiet for longer than the stall limit (two timeouts, at least 500 ms), plus time to
    // reconnect.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for _ in 0..2 {
        let read = guarded("get", store.get("k", None)).await;
        assert_eq!(read.unwrap().as_deref(), Some(&b"{}"[..]), "the quiet dead connection was not replaced");
    }
}

/// Under steady traffic, a connection that accepts writes but never answers is replaced once
/// its calls have gone unanswered for the stall limit, without waiting for TCP to give up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dropped_connection_is_replaced_under_steady_traffic() {
    let (_redis, relay, store) = store_behind_relay().await;

    // Steady background traffic: a new call every few milliseconds on every client (a check
    // that measures from the latest write, as fred's unresponsive check does, never fires).
    let traffic = {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                let store = store.clone();
                tokio::spawn(async move {
                    let _ = store.get("k", None).await;
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    relay.cut_open_connections();
    let started = Instant::now();
    let mut saw_failure = false;
    loop {
        match guarded("get", store.get("k", None)).await {
            Ok(value) if saw_failure => {
                assert_eq!(value.as_deref(), Some(&b"{}"[..]));
                break;
            }
            Ok(_) => {}
            Err(_) => saw_failure = true,
        }
        assert!(started.elapsed() < RECOVERY_DEADLINE, "the dead connection was never replaced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    traffic.abort();
}

/// A relay to `target` that, after relaying a command naming `marker`, passes on the server's
/// reply and then closes that connection: a connection lost between a write's reply and
/// whatever the client sends next on it. Once only; later connections are relayed whole.
async fn relay_cutting_after_reply(
    target: std::net::SocketAddr,
    marker: &'static [u8],
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let used = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(target).await else { continue };
            let used = used.clone();
            tokio::spawn(async move {
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let upstream = {
                    let armed = armed.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match client_read.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if buf[..n].windows(marker.len()).any(|w| w == marker) {
                                armed.store(true, Ordering::SeqCst);
                            }
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    })
                };
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match server_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    if armed.load(Ordering::SeqCst) && !used.swap(true, Ordering::SeqCst) {
                        break; // the reply is out; the connection goes with it
                    }
                }
                upstream.abort();
            });
        }
    });
    addr
}

/// `min_replicas`: a write whose connection is lost right after its reply is never
/// acknowledged, while the same write through a connection that stays up is. Mostly fred
/// refuses to route the `WAIT` while it reconnects ("Failed to route command": 8 of 9 runs
/// here); when the `WAIT` does reach the new connection (1 of 9), it would count replicas for
/// that connection's writes, none, and vouch for a write it never saw: the store notices the
/// connection changed between the write and its `WAIT` and answers `Replicas` instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_on_a_replaced_connection_vouches_for_nothing() {
    let master = RedisServer::start();
    let replica = RedisServer::start();
    replica.cli(&["REPLICAOF", "127.0.0.1", &master.port().to_string()]);
    let started = Instant::now();
    while !master.cli(&["INFO", "replication"]).contains("connected_slaves:1") {
        assert!(started.elapsed() < RECOVERY_DEADLINE, "the replica did not attach");
        tokio::time::sleep(RECOVERY_POLL).await;
    }
    let target: std::net::SocketAddr = format!("127.0.0.1:{}", master.port()).parse().unwrap();
    let relay = relay_cutting_after_reply(target, b"cut-me").await;
    let mut cfg = store_config(format!("redis://{relay}"), None);
    cfg.pool_size = 1;
    cfg.min_replicas = 1;
    cfg.timeout = Duration::from_secs(2);
    let store = connect(&cfg).await;
    wait_until_serving(&store).await;

    // A write whose connection stays up: acknowledged by the replica.
    guarded("set", store.set("kept", "{}", 60)).await.expect("a replicated write is acknowledged");
    // The connection is cut right after the write's reply: the WAIT can only go on another.
    let cut = guarded("set", store.set("cut-me", "{}", 60)).await;
    eprintln!("the cut write: {cut:?}");
    assert!(
        matches!(cut, Err(StoreError::Replicas { .. } | StoreError::Command(_) | StoreError::Unavailable(_))),
        "a write whose WAIT could not be sent on its own connection must not be acknowledged: {cut:?}"
    );
    // The store serves again on the new connection.
    wait_until_serving(&store).await;
    guarded("set", store.set("after", "{}", 60)).await.expect("acknowledged again");
}
