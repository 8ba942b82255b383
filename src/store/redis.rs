//! The Redis store: a fred [`Pool`] set up so that no call outlives the configured timeout,
//! the proxy starts while Redis is down, and it recovers by itself when Redis comes back.
//!
//! How the fred settings get there:
//! - `fail_fast = false` plus a reconnect policy that never gives up: the connection tasks are
//!   spawned and keep trying (capped exponential backoff); [`RedisStore::connect`] never waits
//!   for them. Once a connection attempt has failed, calls on a client that is reconnecting
//!   fail at once instead of queueing for `timeout_ms` (the store is known to be down); on a
//!   cluster only while no node at all is connected (a clustered client reconnects to every
//!   node when one fails, and the surviving masters answer again within moments).
//! - `default_command_timeout = timeout`: a command that waits (for a connection, or for a
//!   stalled server) fails with a timeout, and fred marks it timed out so it is never written
//!   to Redis later, after the caller was told it failed. fred's timer covers the whole wait
//!   of a single command (it starts when the command is queued), so those calls need no timer
//!   of ours; QUIT at shutdown is also wrapped in `tokio::time::timeout` as a belt, slightly
//!   later so fred's own timeout normally wins.
//! - Error replies that refuse the proxy as such become their own kinds: `OOM` (maxmemory
//!   under `noeviction`: writes fail, reads work) and `NOPERM` (an ACL without a command the
//!   proxy needs: logged once as an ERROR), so logs and metrics say what to fix.
//! - No `unresponsive` check in fred: it would start a timer on every pass of the router loop
//!   (two per command), and it measures from the *latest* write, so under steady traffic it
//!   never fires. The store's own stall watch covers a connection that takes writes but no
//!   longer answers (a dropped NAT or load-balancer entry, a half-open TCP connection, which
//!   would otherwise fail every call until TCP gives up): the first timeout of a run starts
//!   one timer, and a client that has had no answer when it fires (the stall limit) is told
//!   to reconnect, whatever the traffic.
//! - `max_command_buffer_len`: commands queued while disconnected are bounded, so a long outage
//!   cannot grow memory; overflow fails at once.
//! - `rediss://`: rustls with the ring provider, roots from the system plus `ca_file`.
//! - Topologies (the README, "Scale-out"): `redis[s]-cluster://` gives a clustered client
//!   (one connection per node per pooled client; every command has one key, so fred routes it
//!   by slot and follows `MOVED`/`ASK`; reconnects try the cached slot map's nodes too), and
//!   `redis[s]-sentinel://` a client that asks the sentinels for the master on every
//!   (re)connect. A `redis://` URL at a cluster node is detected and reported.
//! - `store.min_replicas`: after a write, `WAIT N timeout_ms` on the same client and slot, so
//!   on the same connection to the same node; fewer replicas, or a connection that fred
//!   replaced between the write and the `WAIT` (its `CLIENT ID` changed), is
//!   [`StoreError::Replicas`].
//!
//! Nothing here logs a URL, a key (keys hold session ids), a value or a password.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::{Client, Pool};
use fred::error::{Error as FredError, ErrorKind};
use fred::interfaces::{
    ClientInterface, ClientLike, ClusterInterface, EventInterface, KeysInterface, LuaInterface, SetsInterface,
};
use fred::types::cluster::ClusterRouting;
use fred::types::config::{
    ClusterDiscoveryPolicy, Config as FredConfig, Options, ReconnectPolicy, Server, ServerConfig, TlsConfig,
};
use fred::types::scripts::Script;
use fred::types::{Builder, ClusterHash, CustomCommand, Expiration, InfoKind, SetOptions, Value};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::compared::Compared;
use super::error::StoreError;
use crate::boxed::pin_in_place;
use crate::config::StoreConfig;
use crate::redis_url::split_tls_scheme;

/// First reconnect delay after a connection is lost or cannot be made.
const RECONNECT_MIN_DELAY_MS: u32 = 100;
/// Longest delay between reconnect attempts: Redis is back in use at most this long after it
/// returns.
const RECONNECT_MAX_DELAY_MS: u32 = 2_000;
/// Each failed attempt multiplies the delay by this (100 ms, 200 ms, 400 ms, ... up to the cap).
const RECONNECT_BACKOFF_BASE: u32 = 2;
/// Random extra delay per attempt, so a fleet of proxies does not reconnect in lockstep.
const RECONNECT_JITTER_MS: u32 = 100;
/// fred's "max attempts" value meaning: never stop reconnecting.
const RECONNECT_FOREVER: u32 = 0;

/// Limit on one connection attempt: TCP connect plus TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Limit on the commands fred sends while setting up a connection (`AUTH`/`HELLO`, `PING`);
/// a server that accepts TCP but does not answer (stopped, overloaded) fails the attempt.
const SETUP_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How many times a command may be written when the connection drops while it is in flight.
/// Every command this store sends is idempotent (SET, GET, GETEX, DEL), so a retry on a new
/// connection is safe; the caller's timeout still bounds the whole call.
const MAX_COMMAND_ATTEMPTS: u32 = 3;

/// Commands waiting for each client's connection (fred's command queue). While Redis is down
/// they wait up to the timeout; the bound keeps a long outage under heavy traffic from growing
/// memory, and a full queue fails new calls at once.
const COMMAND_QUEUE_LIMIT: usize = 4096;

/// A connection that has given no answer for this many store timeouts is treated as dead,
/// closed and reconnected (callers have given up on it long before).
const UNRESPONSIVE_TIMEOUTS: u32 = 2;
/// Lower bound on that limit, so a very short store timeout does not make connections flap
/// under a brief server hiccup.
const UNRESPONSIVE_MIN: Duration = Duration::from_millis(500);

/// How long the task asking fred to replace a stalled connection waits for the reconnect.
const RECONNECT_REQUEST_WAIT: Duration = Duration::from_secs(10);

/// How much later than fred's command timeout the `tokio::time::timeout` belt (around QUIT)
/// fires. fred's timeout must win in the normal case: only it
/// marks a queued command as timed out so it is never sent after the caller gave up. The belt
/// is for anything that would keep those waiting past fred's timer.
const TIMEOUT_BELT_SLACK: Duration = Duration::from_millis(50);

/// How much longer than `WAIT`'s own timeout (`timeout_ms`) fred waits for its answer: `WAIT`
/// answers by itself when its timeout passes, with the count it reached.
const WAIT_ANSWER_SLACK: Duration = Duration::from_millis(500);

/// The number of hash slots of a Redis Cluster.
const CLUSTER_SLOTS: u32 = 16_384;

/// What `store.url` points at (its scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// `redis://`, `rediss://`: one server.
    Single,
    /// `redis-cluster://`, `rediss-cluster://`: Redis Cluster from seed nodes.
    Cluster,
    /// `redis-sentinel://`, `rediss-sentinel://`: the master Sentinel names.
    Sentinel,
}

impl Topology {
    fn of(server: &ServerConfig) -> Topology {
        match server {
            ServerConfig::Clustered { .. } => Topology::Cluster,
            ServerConfig::Sentinel { .. } => Topology::Sentinel,
            _ => Topology::Single,
        }
    }

    /// A fixed label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Topology::Single => "single",
            Topology::Cluster => "cluster",
            Topology::Sentinel => "sentinel",
        }
    }
}

/// Set when a `redis://` URL turns out to point at a Redis Cluster node (`INFO cluster` says
/// `cluster_enabled:1`, or a reply was `MOVED`/`ASK`): logged once at ERROR, and `/readyz`
/// says 503 with the reason, as every request for a key on another node would fail.
#[derive(Clone, Default)]
struct WrongTopology(Arc<AtomicBool>);

impl WrongTopology {
    const REASON: &'static str =
        "store.url is redis:// (one server) but the server is a Redis Cluster node: use redis-cluster://";

    fn detected(&self, how: &'static str) {
        if !self.0.swap(true, Ordering::Relaxed) {
            tracing::error!(detected_by = how, "{}", Self::REASON);
        }
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The Redis store. Clones share the pool.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// The `tokio::time::timeout` belt around QUIT (the store timeout plus slack).
    belt: Duration,
    /// Notices connections that fred still counts as up but that stopped answering.
    stalls: StallWatch,
    /// The conditional-write scripts, with their SHA1 digests computed once.
    scripts: Scripts,
    /// Round-robin cursor over the pooled clients (the store picks the client itself, to know
    /// which connection a timeout belongs to).
    next_client: AtomicUsize,
    /// The latest connection failure (refused, TLS, WRONGPASS, ...), cleared on reconnect, so
    /// a call that fails for want of a connection can say why.
    last_error: LastError,
    /// Connection tasks and the connection-event loggers, aborted on shutdown or drop so no
    /// reconnect loop outlives the store.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    topology: Topology,
    /// A `redis://` URL that points at a cluster node.
    wrong_topology: WrongTopology,
    /// `store.min_replicas`: writes are followed by `WAIT min_replicas wait_ms` (0: none).
    min_replicas: u32,
    /// `WAIT`'s timeout argument: `store.timeout_ms`.
    wait_ms: i64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        abort_all(&self.tasks);
    }
}

/// A fred command, boxed by the caller (with [`pin_in_place`], so the box is not filled by a
/// copy): fred's command futures are ~7 KiB, and every async fn that held one in place (this
/// module, the store enum, the session layer, the request handler) would grow by as much and
/// copy it on every request.
type FredCall<'a, T> = Pin<Box<dyn Future<Output = Result<T, FredError>> + Send + 'a>>;

/// The connections (server to `CLIENT ID`) of the client a write was sent on, as it was sent;
/// `None` without `store.min_replicas` (see [`RedisStore::replicated`]).
type ConnectionMarks = Option<HashMap<Server, i64>>;

impl RedisStore {
    /// Builds the pool and starts connecting in the background. Fails only for configuration
    /// problems; Redis being down is not one (calls fail until it is up, then succeed).
    /// Must be called within a tokio runtime (the connection tasks are spawned on it).
    pub fn connect(url: &str, cfg: &StoreConfig) -> Result<RedisStore, StoreError> {
        if cfg.timeout.is_zero() {
            // fred reads a zero command timeout as "no timeout".
            return Err(StoreError::Config("store.timeout_ms must be > 0".to_owned()));
        }
        if cfg.pool_size == 0 {
            return Err(StoreError::Config("store.pool_size must be > 0".to_owned()));
        }

        let (plain_url, tls) = split_tls_scheme(url);
        let mut config = FredConfig::from_url(&plain_url).map_err(|err| {
            // fred's URL errors describe the problem without echoing the URL.
            StoreError::Config(format!("invalid store.url: {}", err.details()))
        })?;
        if tls {
            config.tls = Some(TlsConfig::from(tls_client_config(cfg.ca_file.as_deref())?));
        } else if cfg.ca_file.is_some() {
            tracing::warn!("store.ca_file is ignored: the store URL is not rediss://");
        }
        let topology = Topology::of(&config.server);
        // After a failover or a reshard the seed nodes of the URL may be gone or replicas: on
        // reconnect, try the nodes of the latest slot map too.
        let _ = config.server.set_cluster_discovery_policy(ClusterDiscoveryPolicy::UseCache);
        // Start even while Redis is down: the reconnect policy keeps trying in the background.
        config.fail_fast = false;
        let target = config.server.hosts().first().map(|server| server.to_string()).unwrap_or_default();

        let mut builder = Builder::from_config(config);
        let mut policy = ReconnectPolicy::new_exponential(
            RECONNECT_FOREVER,
            RECONNECT_MIN_DELAY_MS,
            RECONNECT_MAX_DELAY_MS,
            RECONNECT_BACKOFF_BASE,
        );
        policy.set_jitter(RECONNECT_JITTER_MS);
        let stall_limit = stall_limit(cfg.timeout);
        builder
            .set_policy(policy)
            .with_performance_config(|perf| {
                perf.default_command_timeout = cfg.timeout;
            })
            .with_connection_config(|conn| {
                conn.connection_timeout = CONNECT_TIMEOUT;
                conn.internal_command_timeout = SETUP_COMMAND_TIMEOUT;
                conn.max_command_attempts = MAX_COMMAND_ATTEMPTS;
                conn.max_command_buffer_len = COMMAND_QUEUE_LIMIT;
                // Small request/response frames: do not let Nagle hold them back.
                conn.tcp.nodelay = Some(true);
            });
        let pool = builder
            .build_pool(cfg.pool_size)
            .map_err(|err| StoreError::Config(format!("redis client: {}", err.details())))?;

        // Subscribe to connection events before connecting so the first failure is seen too.
        let last_error = LastError::default();
        let wrong_topology = WrongTopology::default();
        let mut tasks: Vec<JoinHandle<()>> = pool
            .clients()
            .iter()
            .map(|client| {
                let check = (topology == Topology::Single).then(|| wrong_topology.clone());
                watch_connection(client, &target, last_error.clone(), check)
            })
            .collect();
        tasks.extend(pool.connect_pool().into_iter().map(|handle| {
            tokio::spawn(async move {
                // The connection task only ends on quit or on an error fred will not retry.
                if let Ok(Err(err)) = handle.await {
                    tracing::error!(error = %err, "redis connection task stopped");
                }
            })
        }));
        tracing::info!(
            server = %target,
            topology = topology.label(),
            tls,
            pool_size = cfg.pool_size,
            min_replicas = cfg.min_replicas,
            "redis store connecting in the background"
        );

        Ok(RedisStore {
            inner: Arc::new(Inner {
                stalls: StallWatch::new(pool.size(), stall_limit),
                scripts: Scripts::new(),
                pool,
                belt: cfg.timeout + TIMEOUT_BELT_SLACK,
                next_client: AtomicUsize::new(0),
                last_error,
                tasks: Mutex::new(tasks),
                topology,
                wrong_topology,
                min_replicas: cfg.min_replicas,
                wait_ms: i64::try_from(cfg.timeout.as_millis()).unwrap_or(i64::MAX),
            }),
        })
    }

    /// What the store URL points at.
    pub fn topology(&self) -> Topology {
        self.inner.topology
    }

    /// `GET key`, or `GETEX key EX secs` (fred has no GETEX method: sent as a custom command).
    pub async fn get(&self, key: &str, refresh_ttl: Option<u64>) -> Result<Option<Bytes>, StoreError> {
        let (index, client) = self.pick();
        match refresh_ttl {
            None => self.call(index, pin_in_place(|| client.get::<Option<Bytes>, _>(key))).await,
            Some(secs) => {
                let getex = CustomCommand::new_static("GETEX", ClusterHash::FirstKey, false);
                let args =
                    vec![Value::from(key), Value::from_static_str("EX"), Value::Integer(ttl_arg(secs)?)];
                self.call(index, pin_in_place(|| client.custom::<Option<Bytes>, Value>(getex, args))).await
            }
        }
    }

    /// `SET key value EX ttl_secs`; `Ok` only when Redis answered `OK`.
    pub async fn set(&self, key: &str, value: &str, ttl_secs: u64) -> Result<(), StoreError> {
        let expire = Some(Expiration::EX(ttl_arg(ttl_secs)?));
        let (index, client, marks) = self.pick_write();
        let reply = self
            .call(index, pin_in_place(|| client.set::<Value, _, _>(key, value, expire, None, false)))
            .await?;
        expect_reply("SET", &reply, Value::is_ok)?;
        self.replicated(index, client, key, marks).await
    }

    /// `DEL key`; `Ok` only when Redis answered with a count.
    pub async fn del(&self, key: &str) -> Result<(), StoreError> {
        let (index, client, marks) = self.pick_write();
        let reply = self.call(index, pin_in_place(|| client.del::<Value, _>(key))).await?;
        expect_reply("DEL", &reply, is_integer)?;
        self.replicated(index, client, key, marks).await
    }

    /// `SET key value EX ttl_secs NX`: `Ok(false)` when the key exists.
    pub async fn create(&self, key: &str, value: &str, ttl_secs: u64) -> Result<bool, StoreError> {
        let expire = Some(Expiration::EX(ttl_arg(ttl_secs)?));
        let (index, client, marks) = self.pick_write();
        let reply = self
            .call(
                index,
                pin_in_place(|| client.set::<Value, _, _>(key, value, expire, Some(SetOptions::NX), false)),
            )
            .await?;
        match reply {
            Value::Null => Ok(false),
            reply => {
                expect_reply("SET", &reply, Value::is_ok)?;
                self.replicated(index, client, key, marks).await.map(|()| true)
            }
        }
    }

    /// The `REPLACE_IF` script: `key` gets `value` only if it still holds `expected`.
    pub async fn replace_if(
        &self,
        key: &str,
        expected: &[u8],
        value: &str,
        ttl_secs: u64,
    ) -> Result<Compared, StoreError> {
        let args = vec![
            Value::Bytes(Bytes::copy_from_slice(expected)),
            Value::from(value),
            Value::Integer(ttl_arg(ttl_secs)?),
        ];
        // A retry after a lost reply finds the value it wrote and reports it changed, which the
        // session layer recognises as its own change: fred's retries stay safe.
        let (index, client, marks) = self.pick_write();
        let reply = self.script(index, client, &self.inner.scripts.replace_if, key, args, None).await?;
        self.replicated_if_done(index, client, key, marks, compared(reply)?).await
    }

    /// The `DELETE_IF` script: `key` is deleted only if it still holds `expected`.
    pub async fn delete_if(&self, key: &str, expected: &[u8]) -> Result<Compared, StoreError> {
        let args = vec![Value::Bytes(Bytes::copy_from_slice(expected))];
        // Sent once: a retry after a lost reply would find the key gone (deleted by the first
        // try) and report the session moved away, undoing a regenerate that happened.
        let once = Options { max_attempts: Some(1), ..Options::default() };
        let (index, client, marks) = self.pick_write();
        let reply = self.script(index, client, &self.inner.scripts.delete_if, key, args, Some(once)).await?;
        self.replicated_if_done(index, client, key, marks, compared(reply)?).await
    }

    /// The `INSPECT` script: the value and its TTL in one round trip.
    pub async fn inspect(&self, key: &str) -> Result<Option<(Bytes, u64)>, StoreError> {
        let (index, client) = self.pick();
        let reply = self.script(index, client, &self.inner.scripts.inspect, key, Vec::new(), None).await?;
        match reply {
            Value::Null => Ok(None),
            Value::Array(mut pair) if pair.len() == 2 => {
                let ttl = pair.pop().and_then(|t| t.as_i64()).unwrap_or(-1);
                let value = pair.pop().and_then(Value::into_bytes);
                match value {
                    Some(value) => Ok(Some((value, u64::try_from(ttl).unwrap_or(0)))),
                    None => Err(not_redis("GET and TTL")),
                }
            }
            _ => Err(not_redis("GET and TTL")),
        }
    }

    /// The `INDEX_ADD` script: `SADD`, then the set's TTL raised to at least `ttl_secs`.
    pub async fn index_add(&self, key: &str, member: &str, ttl_secs: u64) -> Result<(), StoreError> {
        let args = vec![Value::from(member), Value::Integer(ttl_arg(ttl_secs)?)];
        let (index, client, marks) = self.pick_write();
        let reply = self.script(index, client, &self.inner.scripts.index_add, key, args, None).await?;
        expect_reply("SADD", &reply, is_integer)?;
        self.replicated(index, client, key, marks).await
    }

    /// The `INDEX_TOUCH` script: the set's TTL raised to at least `ttl_secs`.
    pub async fn index_touch(&self, key: &str, ttl_secs: u64) -> Result<(), StoreError> {
        let args = vec![Value::Integer(ttl_arg(ttl_secs)?)];
        let (index, client, marks) = self.pick_write();
        let reply = self.script(index, client, &self.inner.scripts.index_touch, key, args, None).await?;
        expect_reply("EXPIRE", &reply, is_integer)?;
        self.replicated(index, client, key, marks).await
    }

    /// `SREM key member`.
    pub async fn index_remove(&self, key: &str, member: &str) -> Result<(), StoreError> {
        let (index, client, marks) = self.pick_write();
        let reply = self.call(index, pin_in_place(|| client.srem::<Value, _, _>(key, member))).await?;
        expect_reply("SREM", &reply, is_integer)?;
        self.replicated(index, client, key, marks).await
    }

    /// `SMEMBERS key`.
    pub async fn index_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let (index, client) = self.pick();
        let reply = self.call(index, pin_in_place(|| client.smembers::<Value, _>(key))).await?;
        match reply {
            Value::Array(items) => items
                .into_iter()
                .map(|item| {
                    item.into_bytes()
                        .and_then(|b| String::from_utf8(b.to_vec()).ok())
                        .ok_or_else(|| not_redis("SMEMBERS"))
                })
                .collect(),
            _ => Err(not_redis("SMEMBERS")),
        }
    }

    /// `WAIT min_replicas timeout_ms` after a write on client `index` for `key`: on the same
    /// connection as the write (on a cluster, the connection to the node that owns `key`'s slot,
    /// where the write went), so it waits for that write. Fewer replicas in time is an error:
    /// the caller must not acknowledge the write. Nothing to do with `min_replicas = 0`.
    ///
    /// `marks` are client `index`'s connections as the write was sent ([`RedisStore::pick_write`]):
    /// a connection replaced between the write and the `WAIT` (fred reconnects by itself) would
    /// have the `WAIT` count replicas for the new connection's writes, none, and vouch for
    /// nothing; so a change of those connections in between is an error too.
    async fn replicated(
        &self,
        index: usize,
        client: &Client,
        key: &str,
        marks: ConnectionMarks,
    ) -> Result<(), StoreError> {
        let wanted = self.inner.min_replicas;
        if wanted == 0 {
            return Ok(());
        }
        // Sent once: on a new connection (after a reconnect) WAIT would count replicas for that
        // connection's writes (none) and answer at once, vouching for nothing.
        let options = Options {
            max_attempts: Some(1),
            timeout: Some(Duration::from_millis(self.inner.wait_ms.unsigned_abs()) + WAIT_ANSWER_SLACK),
            ..Options::default()
        };
        let client = client.with_options(&options);
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let wait = CustomCommand::new_static("WAIT", ClusterHash::Custom(slot), false);
        let args = vec![Value::Integer(i64::from(wanted)), Value::Integer(self.inner.wait_ms)];
        let reply = self.call(index, pin_in_place(|| client.custom::<Value, Value>(wait, args))).await?;
        if marks.as_ref() != Some(&client.connection_ids()) {
            tracing::warn!(
                wanted,
                "store connection replaced between a write and its WAIT; the write is not known to be replicated; answering 503"
            );
            return Err(StoreError::Replicas { acked: 0, wanted });
        }
        match reply {
            Value::Integer(acked) if acked >= i64::from(wanted) => Ok(()),
            Value::Integer(acked) => {
                let acked = u32::try_from(acked).unwrap_or(0);
                tracing::warn!(
                    acked,
                    wanted,
                    timeout_ms = self.inner.wait_ms,
                    "store write not acknowledged by store.min_replicas replicas in time; answering 503"
                );
                Err(StoreError::Replicas { acked, wanted })
            }
            _ => Err(not_redis("WAIT")),
        }
    }

    /// [`RedisStore::replicated`] when a conditional write was done (nothing was written
    /// otherwise).
    async fn replicated_if_done(
        &self,
        index: usize,
        client: &Client,
        key: &str,
        marks: ConnectionMarks,
        result: Compared,
    ) -> Result<Compared, StoreError> {
        if result == Compared::Done {
            self.replicated(index, client, key, marks).await?;
        }
        Ok(result)
    }

    /// Runs a script on `key` on pooled client `index` with `EVALSHA`, and with `EVAL` (which
    /// also loads it) when the server does not have it (`NOSCRIPT`: first use, or after a
    /// restart or failover).
    async fn script(
        &self,
        index: usize,
        client: &Client,
        script: &Script,
        key: &str,
        args: Vec<Value>,
        options: Option<Options>,
    ) -> Result<Value, StoreError> {
        let client = client.with_options(&options.unwrap_or_default());
        let sha = script.sha1().clone();
        let lua = script.lua().cloned().unwrap_or_default();
        let run = pin_in_place(|| async move {
            match client.evalsha::<Value, _, _, _>(sha, key, args.clone()).await {
                Err(e) if e.details().starts_with("NOSCRIPT") => {
                    client.eval::<Value, _, _, _>(lua, key, args).await
                }
                reply => reply,
            }
        });
        self.call(index, run).await
    }

    /// Readiness: the store serves every key. One server or the Sentinel-named master: it
    /// answers `PING`. A cluster: the slot map covers every slot and each master in it answers
    /// `PING`. A `redis://` URL at a cluster node is never ready.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if self.inner.wrong_topology.is_set() {
            return Err(StoreError::Config(WrongTopology::REASON.to_owned()));
        }
        let (index, client) = self.pick();
        if self.inner.topology != Topology::Cluster {
            return self.call(index, Box::pin(client.ping::<()>(None))).await;
        }
        let result = match client.cached_cluster_state() {
            None => Err(StoreError::Unavailable("no cluster slot map yet".to_owned())),
            Some(routing) => match covering_masters(&routing) {
                Err(err) => Err(err),
                Ok(masters) => {
                    let pings = masters.into_iter().map(|master| {
                        let node = client.with_cluster_node(master);
                        async move {
                            self.call(index, pin_in_place(|| async move { node.ping::<()>(None).await }))
                                .await
                        }
                    });
                    let pings = futures_util::future::join_all(pings).await;
                    pings.into_iter().collect::<Result<Vec<()>, _>>().map(|_| ())
                }
            },
        };
        if result.is_err() {
            // A master that does not answer may have been replaced by its replica: refresh
            // every client's slot map now (CLUSTER SLOTS from any node that answers) rather
            // than when a reconnect or a MOVED reply gets to it, so the store serves the new
            // master's slots, and is ready, as soon as the cluster has promoted it.
            self.refresh_slot_maps().await;
        }
        result
    }

    /// `sync_cluster` on every pooled client, bounded by the belt.
    async fn refresh_slot_maps(&self) {
        let syncs = self.inner.pool.clients().iter().map(|client| client.sync_cluster());
        let _ = tokio::time::timeout(self.inner.belt, futures_util::future::join_all(syncs)).await;
    }

    /// Sends QUIT on every connection (bounded by the belt, as Redis may be down) and stops the
    /// connection tasks.
    pub async fn shutdown(&self) {
        let _ = tokio::time::timeout(self.inner.belt, self.inner.pool.quit()).await;
        abort_all(&self.inner.tasks);
    }

    /// [`RedisStore::pick`] for a write: with `min_replicas`, also the client's connections as
    /// the write is about to be sent (server and `CLIENT ID`, as fred keeps them), for
    /// [`RedisStore::replicated`].
    fn pick_write(&self) -> (usize, &Client, ConnectionMarks) {
        let (index, client) = self.pick();
        let marks = (self.inner.min_replicas > 0).then(|| client.connection_ids());
        (index, client, marks)
    }

    /// The next pooled client in turn, skipping disconnected ones while any is connected (as
    /// fred's own pool routing does), with its index.
    fn pick(&self) -> (usize, &Client) {
        let clients = self.inner.pool.clients();
        // `connect` refuses an empty pool, so `clients.len() > 0`.
        let start = self.inner.next_client.fetch_add(1, Ordering::Relaxed);
        let index = (0..clients.len())
            .map(|offset| start.wrapping_add(offset) % clients.len())
            .find(|&index| clients[index].is_connected())
            .unwrap_or(start % clients.len());
        (index, &clients[index])
    }

    /// Runs one fred call on client `index` (fred's command timeout bounds it), maps its error,
    /// and feeds the outcome to the stall watch.
    ///
    /// When the client is not connected and a connection attempt has already failed (Redis
    /// is known to be down: the connections are reconnecting), the call fails at once,
    /// without being sent or queued: a request must not wait `timeout_ms` for an answer that
    /// cannot come. While the first connection is still being made, calls wait for it.
    ///
    /// On a cluster only when the client has no connection to any node: a clustered client
    /// reconnects to every node when one of them fails, and while it does, the keys of the
    /// surviving masters are back within moments, so their calls wait (in
    /// `tests/scale_cluster.rs`' failover, failing at once whenever the client was not
    /// connected gave 4,426 of 7,045 503s to sessions on surviving masters; waiting, 7 of 19).
    /// A cluster of which no node is connected (all of it down, or the network to it) is a
    /// store known to be down like any other.
    async fn call<T>(&self, index: usize, request: FredCall<'_, T>) -> Result<T, StoreError> {
        if !self.client_connected(index)
            && (self.inner.topology != Topology::Cluster || self.no_node_connected(index))
        {
            if let Some(cause) = self.inner.last_error.get() {
                return Err(StoreError::Unavailable(format!(
                    "not connected to Redis (reconnecting): {cause}"
                )));
            }
        }
        let result = request.await.map_err(|err| self.fred_error(index, &err));
        match &result {
            // An answer, even an error reply, proves the connection works.
            Ok(_) | Err(StoreError::Command(_)) => self.inner.stalls.answered(index),
            Err(StoreError::Timeout) => {
                if let Some(run) = self.inner.stalls.timed_out(index, Instant::now()) {
                    self.check_later(index, run);
                }
            }
            // fred already knows the connection is down and is reconnecting.
            Err(_) => {}
        }
        result
    }

    fn fred_error(&self, index: usize, err: &FredError) -> StoreError {
        if self.inner.topology == Topology::Single {
            let details = err.details();
            if details.starts_with("MOVED ") || details.starts_with("ASK ") {
                self.inner.wrong_topology.detected("a MOVED or ASK reply");
            }
        }
        let failure = classify(err.kind(), self.client_connected(index));
        if failure == Failure::Command {
            return self.refusal(err.details()).unwrap_or_else(|| StoreError::Command(err.to_string()));
        }
        self.store_error(index, failure, &err.to_string())
    }

    /// An error reply that says Redis refuses the proxy's writes or commands as such, rather
    /// than this one call: out of memory under `noeviction` (also raised from inside a
    /// script), or an ACL without a command the proxy needs. The first ACL refusal is logged
    /// as an ERROR once per process: nothing works until an operator changes the ACL.
    fn refusal(&self, reply: &str) -> Option<StoreError> {
        if reply.starts_with("OOM ") || reply.contains("OOM command not allowed") {
            return Some(StoreError::OutOfMemory(reply.to_owned()));
        }
        if reply.starts_with("NOPERM") || reply.contains("NOPERM ") {
            let denied = StoreError::Denied(reply.to_owned());
            // Once per process: every worker has a store of its own.
            static LOGGED: AtomicBool = AtomicBool::new(false);
            if !LOGGED.swap(true, Ordering::Relaxed) {
                tracing::error!(error = %denied, "the session store refuses a command the proxy needs");
            }
            return Some(denied);
        }
        None
    }

    fn store_error(&self, index: usize, failure: Failure, message: &str) -> StoreError {
        match failure {
            Failure::Timeout if self.client_connected(index) => StoreError::Timeout,
            Failure::Timeout | Failure::NotConnected => {
                StoreError::Unavailable(match self.inner.last_error.get() {
                    Some(cause) => format!("not connected to Redis: {cause}"),
                    None => "not connected to Redis".to_owned(),
                })
            }
            Failure::Unavailable => StoreError::Unavailable(message.to_owned()),
            Failure::Config => StoreError::Config(message.to_owned()),
            Failure::Command => StoreError::Command(message.to_owned()),
        }
    }

    /// Whether client `index` has no connection to any node (fred's list of connection ids,
    /// kept as connections are made and dropped).
    fn no_node_connected(&self, index: usize) -> bool {
        self.inner.pool.clients().get(index).is_none_or(|client| client.active_connections().is_empty())
    }

    fn client_connected(&self, index: usize) -> bool {
        self.inner.pool.clients().get(index).is_some_and(|client| client.is_connected())
    }

    /// Once the stall limit has passed, replaces client `index`'s connection if its run of
    /// timeouts `run` is still on (no answer since). A timer rather than a later call's
    /// timeout: with no other traffic there is none. Holds the store weakly, so it never keeps
    /// a dropped store's connections alive.
    fn check_later(&self, index: usize, run: u64) {
        let store = Arc::downgrade(&self.inner);
        let limit = self.inner.stalls.limit;
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            if let Some(inner) = store.upgrade() {
                if inner.stalls.still_stalled(index, run) {
                    RedisStore { inner }.replace_connection(index);
                }
            }
        });
    }

    /// Makes client `index` drop its connection and reconnect: one that takes writes but never
    /// answers (a dropped NAT or load-balancer entry, a half-open TCP connection) would fail
    /// every call until TCP gives up.
    fn replace_connection(&self, index: usize) {
        let Some(client) = self.inner.pool.clients().get(index).cloned() else {
            return;
        };
        tracing::warn!(
            client = %client.id(),
            "redis connection stopped answering; reconnecting"
        );
        tokio::spawn(async move {
            // Only bounds this task: the reconnect itself carries on in fred's router.
            let _ = tokio::time::timeout(RECONNECT_REQUEST_WAIT, client.force_reconnection()).await;
        });
    }
}

/// Per pooled client, since when its calls have been timing out while fred counts it as
/// connected. Lock-free, as every call updates it.
struct StallWatch {
    /// Reference point for the stored times.
    epoch: Instant,
    /// Milliseconds since `epoch` plus one when the current run of timeouts began; 0: none.
    since: Box<[AtomicU64]>,
    /// How long a run of timeouts may last before the connection is replaced (the delay of
    /// the check each run starts).
    limit: Duration,
}

impl StallWatch {
    fn new(clients: usize, limit: Duration) -> StallWatch {
        StallWatch { epoch: Instant::now(), since: (0..clients).map(|_| AtomicU64::new(0)).collect(), limit }
    }

    /// Client `index` answered: its run of timeouts, if any, is over.
    fn answered(&self, index: usize) {
        if let Some(slot) = self.since.get(index) {
            // Read first: the common case writes nothing, so clients do not contend.
            if slot.load(Ordering::Relaxed) != 0 {
                slot.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Client `index` timed out at `now`. The first timeout since its last answer begins a run
    /// and returns it, for [`StallWatch::still_stalled`] once the limit has passed; later ones
    /// return `None`.
    fn timed_out(&self, index: usize, now: Instant) -> Option<u64> {
        let slot = self.since.get(index)?;
        let now_ms =
            u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX - 1) + 1;
        slot.compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok().then_some(now_ms)
    }

    /// Whether client `index`'s run of timeouts `run` is still on; if so, it ends here (the
    /// caller replaces the connection), so it is reported once.
    fn still_stalled(&self, index: usize, run: u64) -> bool {
        self.since
            .get(index)
            .is_some_and(|slot| slot.compare_exchange(run, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok())
    }
}

/// What a failed fred call means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No answer in time; a slow server if connected, an unreachable one if not.
    Timeout,
    /// The call could not be sent: no connection.
    NotConnected,
    /// The connection failed under the call (I/O, TLS, authentication, back-pressure).
    Unavailable,
    Config,
    /// The server answered with an error.
    Command,
}

/// Classifies a fred error. `connected` (whether any pooled client is connected) tells a
/// slow server from one that cannot be reached, which matter differently to whoever runs
/// Redis.
fn classify(kind: &ErrorKind, connected: bool) -> Failure {
    match kind {
        ErrorKind::Timeout => Failure::Timeout,
        // fail_fast refusals, and a client that is not running (after shutdown).
        ErrorKind::Canceled | ErrorKind::Unknown if !connected => Failure::NotConnected,
        ErrorKind::IO
        | ErrorKind::Canceled
        | ErrorKind::Tls
        | ErrorKind::Auth
        | ErrorKind::Backpressure
        | ErrorKind::Routing
        | ErrorKind::Cluster
        | ErrorKind::Sentinel => Failure::Unavailable,
        ErrorKind::Config | ErrorKind::Url => Failure::Config,
        // Unknown is also what fred uses for most server error replies (OOM, ERR ...).
        _ => Failure::Command,
    }
}

/// Compare-and-set, atomic in Redis: `KEYS[1]` gets `ARGV[2]` with `EX ARGV[3]` only if it
/// still holds exactly `ARGV[1]`. Answers 1 when written, the current value when it differs
/// (so a retry needs no extra GET), nil when the key is gone.
const REPLACE_IF: &str = r"local current = redis.call('GET', KEYS[1])
if not current then return false end
if current ~= ARGV[1] then return current end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1";

/// Compare-and-delete: `KEYS[1]` is deleted only if it still holds exactly `ARGV[1]`; the
/// answers are [`REPLACE_IF`]'s.
const DELETE_IF: &str = r"local current = redis.call('GET', KEYS[1])
if not current then return false end
if current ~= ARGV[1] then return current end
redis.call('DEL', KEYS[1])
return 1";

/// The value at `KEYS[1]` and its TTL, or nil: what an operator inspecting a session sees.
const INSPECT: &str = r"local value = redis.call('GET', KEYS[1])
if not value then return false end
return {value, redis.call('TTL', KEYS[1])}";

/// Adds `ARGV[1]` to the set at `KEYS[1]` and raises its TTL to at least `ARGV[2]` (a set is
/// never shortened: other members may need more).
const INDEX_ADD: &str = r"redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1";

/// Raises the TTL of the set at `KEYS[1]`, if there is one, to at least `ARGV[1]`.
const INDEX_TOUCH: &str = r"local ttl = redis.call('TTL', KEYS[1])
if ttl == -2 then return 0 end
if ttl < tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return 1";

/// The store's scripts. Each touches one key, so Redis Cluster routes it by that key.
struct Scripts {
    replace_if: Script,
    delete_if: Script,
    inspect: Script,
    index_add: Script,
    index_touch: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            replace_if: Script::from_lua(REPLACE_IF),
            delete_if: Script::from_lua(DELETE_IF),
            inspect: Script::from_lua(INSPECT),
            index_add: Script::from_lua(INDEX_ADD),
            index_touch: Script::from_lua(INDEX_TOUCH),
        }
    }
}

/// A reply no Redis gives to `command`; the reply itself is not included (it could echo a
/// session value).
fn not_redis(command: &str) -> StoreError {
    StoreError::Command(format!("unexpected reply to {command}: not a Redis answer"))
}

/// A conditional script's answer.
fn compared(reply: Value) -> Result<Compared, StoreError> {
    match reply {
        Value::Integer(1) => Ok(Compared::Done),
        Value::Null => Ok(Compared::Gone),
        reply => match reply.into_bytes() {
            Some(current) => Ok(Compared::Changed(current)),
            // The reply itself is not included: it could echo a session value.
            None => Err(StoreError::Command(
                "unexpected reply to a conditional write: not a Redis answer".to_owned(),
            )),
        },
    }
}

/// Checks the reply to a write. Any reply converts to `()`, so without this a peer that is not
/// Redis (a TCP connection to itself after Redis went away, which happens on a local port in
/// the ephemeral range; an echo or other service behind a wrong URL) would make every write
/// look saved while reads fail: the proxy would then answer 2xx for sessions it never stored.
fn expect_reply(
    command: &'static str,
    reply: &Value,
    expected: fn(&Value) -> bool,
) -> Result<(), StoreError> {
    if expected(reply) {
        Ok(())
    } else {
        // The reply itself is not included: it could echo a session value.
        Err(StoreError::Command(format!("unexpected reply to {command}: not a Redis answer")))
    }
}

fn is_integer(reply: &Value) -> bool {
    matches!(reply, Value::Integer(_))
}

/// A TTL as Redis's signed integer argument. Redis itself rejects 0 and values it cannot add to
/// the clock; a value that does not even fit an i64 is rejected here the same way.
fn ttl_arg(secs: u64) -> Result<i64, StoreError> {
    i64::try_from(secs).map_err(|_| StoreError::Command("ERR invalid expire time (out of range)".to_owned()))
}

/// The rustls client configuration for `rediss://`: the system's trusted roots plus the PEM
/// certificates in `ca_file`, with the ring provider passed explicitly so no process-wide
/// provider is needed. Runs once at startup (blocking file reads are acceptable there).
fn tls_client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, StoreError> {
    let mut roots = RootCertStore::empty();

    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::warn!(errors = native.errors.len(), "some system CA certificates could not be loaded");
    }
    let (_added, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::warn!(ignored, "some system CA certificates are invalid and were skipped");
    }

    if let Some(path) = ca_file {
        let bad_file =
            |reason: String| StoreError::Config(format!("store.ca_file {}: {reason}", path.display()));
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|err| bad_file(err.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| bad_file(err.to_string()))?;
        if certs.is_empty() {
            return Err(bad_file("no PEM certificates found".to_owned()));
        }
        for cert in certs {
            roots.add(cert).map_err(|err| bad_file(err.to_string()))?;
        }
    }

    if roots.is_empty() {
        return Err(StoreError::Config(
            "no trusted CA certificates for rediss:// (install the system CA bundle or set \
             store.ca_file)"
                .to_owned(),
        ));
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| StoreError::Config(format!("TLS setup: {err}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The masters of a cluster slot map, if it gives every slot one; else why the cluster cannot
/// serve every key.
fn covering_masters(routing: &ClusterRouting) -> Result<Vec<fred::types::config::Server>, StoreError> {
    let mut ranges: Vec<(u16, u16)> = routing.slots().iter().map(|range| (range.start, range.end)).collect();
    ranges.sort_unstable();
    let mut next: u32 = 0;
    for (start, end) in ranges {
        if u32::from(start) > next {
            break;
        }
        next = next.max(u32::from(end) + 1);
    }
    if next < CLUSTER_SLOTS {
        return Err(StoreError::Unavailable(format!("cluster slot {next} has no master")));
    }
    Ok(routing.unique_primary_nodes())
}

/// How long calls on a connection may keep timing out before it is treated as dead and
/// replaced (by the [`StallWatch`]).
fn stall_limit(timeout: Duration) -> Duration {
    (timeout * UNRESPONSIVE_TIMEOUTS).max(UNRESPONSIVE_MIN)
}

/// The latest connection failure of any pooled client, shared with the watcher tasks.
#[derive(Clone, Default)]
struct LastError(Arc<Mutex<Option<String>>>);

impl LastError {
    fn set(&self, error: Option<String>) {
        match self.0.lock() {
            Ok(mut slot) => *slot = error,
            Err(poisoned) => *poisoned.into_inner() = error,
        }
    }

    fn get(&self) -> Option<String> {
        match self.0.lock() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Follows one pooled client's connection events: records the latest failure for error
/// messages and logs failures and recoveries, so an operator sees why the store is unavailable
/// (refused, TLS, WRONGPASS) and when it is back. A failure repeating on every reconnect
/// attempt is logged once (then at debug level) until the client connects again. Messages come
/// from fred and the server and carry no URL or password.
fn watch_connection(
    client: &Client,
    target: &str,
    last_error: LastError,
    cluster_check: Option<WrongTopology>,
) -> JoinHandle<()> {
    let mut errors = client.error_rx();
    let mut reconnects = client.reconnect_rx();
    let client_id = client.id().to_owned();
    let target = target.to_owned();
    let info_client = client.clone();
    tokio::spawn(async move {
        let mut logged: Option<String> = None;
        loop {
            tokio::select! {
                event = errors.recv() => match event {
                    Ok((error, _server)) => {
                        let message = error.to_string();
                        if logged.as_ref() != Some(&message) {
                            tracing::warn!(
                                client = %client_id,
                                server = %target,
                                error = %message,
                                "redis connection error"
                            );
                        } else {
                            tracing::debug!(
                                client = %client_id,
                                server = %target,
                                error = %message,
                                "redis connection error (repeated)"
                            );
                        }
                        last_error.set(Some(message.clone()));
                        logged = Some(message);
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                },
                event = reconnects.recv() => match event {
                    Ok(_server) => {
                        tracing::info!(client = %client_id, server = %target, "redis connected");
                        last_error.set(None);
                        logged = None;
                        if let Some(check) = &cluster_check {
                            check_not_a_cluster(&info_client, check.clone());
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                },
            }
        }
    })
}

/// For a `redis://` URL: asks the server just connected to whether it is a cluster node
/// (`INFO cluster`), in a task of its own so the event loop goes on.
fn check_not_a_cluster(client: &Client, check: WrongTopology) {
    let client = client.clone();
    tokio::spawn(async move {
        if let Ok(Ok(info)) =
            tokio::time::timeout(SETUP_COMMAND_TIMEOUT, client.info::<String>(Some(InfoKind::Cluster))).await
        {
            if info.lines().any(|line| line.trim() == "cluster_enabled:1") {
                check.detected("INFO cluster at connect");
            }
        }
    });
}

fn abort_all(tasks: &Mutex<Vec<JoinHandle<()>>>) {
    let tasks = match tasks.lock() {
        Ok(mut tasks) => std::mem::take(&mut *tasks),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    for task in tasks {
        task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreUrl;

    fn config(url: &str) -> StoreConfig {
        StoreConfig {
            url: StoreUrl::Redis(url.to_owned()),
            key_prefix: "_session:".to_owned(),
            ca_file: None,
            timeout: Duration::from_millis(200),
            pool_size: 2,
            min_replicas: 0,
        }
    }

    #[test]
    fn errors_are_classified() {
        use Failure::*;
        assert_eq!(classify(&ErrorKind::Timeout, true), Timeout);
        assert_eq!(classify(&ErrorKind::Timeout, false), Timeout);
        assert_eq!(classify(&ErrorKind::Canceled, false), NotConnected);
        assert_eq!(classify(&ErrorKind::Unknown, false), NotConnected);
        assert_eq!(classify(&ErrorKind::Canceled, true), Unavailable);
        assert_eq!(classify(&ErrorKind::IO, true), Unavailable);
        assert_eq!(classify(&ErrorKind::Auth, false), Unavailable);
        assert_eq!(classify(&ErrorKind::Tls, false), Unavailable);
        assert_eq!(classify(&ErrorKind::Backpressure, true), Unavailable);
        assert_eq!(classify(&ErrorKind::Unknown, true), Command);
        assert_eq!(classify(&ErrorKind::InvalidArgument, true), Command);
        assert_eq!(classify(&ErrorKind::Url, true), Config);
    }

    #[test]
    fn stall_limit_follows_the_timeout() {
        assert_eq!(stall_limit(Duration::from_millis(100)), UNRESPONSIVE_MIN);
        assert_eq!(stall_limit(Duration::from_secs(1)), Duration::from_secs(2));
    }

    #[test]
    fn stall_watch_fires_once_per_run_of_timeouts() {
        let watch = StallWatch::new(2, Duration::from_secs(2));
        let t0 = watch.epoch;
        let at = |ms| t0 + Duration::from_millis(ms);
        let run = watch.timed_out(0, at(0)).expect("the first timeout begins a run");
        // Later timeouts belong to the same run.
        assert_eq!(watch.timed_out(0, at(1999)), None);
        assert_eq!(watch.timed_out(0, at(2500)), None);
        // Client 1 has its own run.
        assert!(watch.timed_out(1, at(1999)).is_some());
        // No answer since: the run's check ends it, once; the next timeout begins a new run.
        assert!(watch.still_stalled(0, run));
        assert!(!watch.still_stalled(0, run));
        let run = watch.timed_out(0, at(2600)).expect("a new run");
        // An answer ends the run: its check finds nothing, and a run begun since is another.
        watch.answered(0);
        assert!(!watch.still_stalled(0, run));
        let later = watch.timed_out(0, at(4100)).expect("a new run");
        assert!(!watch.still_stalled(0, run));
        assert!(watch.still_stalled(0, later));
        // Out-of-range indexes are ignored.
        watch.answered(7);
        assert_eq!(watch.timed_out(7, at(0)), None);
        assert!(!watch.still_stalled(7, 1));
    }

    #[test]
    fn ttl_out_of_range_is_rejected() {
        assert_eq!(ttl_arg(60).unwrap(), 60);
        assert!(ttl_arg(u64::MAX).is_err());
    }

    #[tokio::test]
    async fn config_errors_never_echo_the_password() {
        for url in [
            "redis://u:hunter2@host:notaport",
            "rediss://u:hunter2@:6379",
            "redis://u:hunter2@h:1/a/b",
            "redis-cluster://u:hunter2@host:notaport",
            "rediss-cluster://:hunter2@:7000",
            "redis-sentinel://:hunter2@h:26379",
            "rediss-sentinel://:hunter2@h:26379?node=h:x&sentinelServiceName=m",
            "redis-sentinel://h:26379?sentinelServiceName=m&sentinelPassword=hunter2&node=h:notaport",
        ] {
            let checked = crate::redis_url::check_url(url).expect_err(url);
            assert!(!checked.contains("hunter2"), "{checked}");
            let err = match RedisStore::connect(url, &config(url)) {
                Err(err) => err,
                Ok(_) => panic!("accepted a bad URL"),
            };
            assert_eq!(err.kind(), "config");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[tokio::test]
    async fn zero_pool_or_timeout_is_a_config_error() {
        let mut cfg = config("redis://127.0.0.1:1");
        cfg.pool_size = 0;
        assert!(matches!(RedisStore::connect("redis://127.0.0.1:1", &cfg), Err(StoreError::Config(_))));
        let mut cfg = config("redis://127.0.0.1:1");
        cfg.timeout = Duration::ZERO;
        assert!(matches!(RedisStore::connect("redis://127.0.0.1:1", &cfg), Err(StoreError::Config(_))));
    }

    #[tokio::test]
    async fn unreadable_ca_file_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for path in [missing, empty] {
            let mut cfg = config("rediss://127.0.0.1:1");
            cfg.ca_file = Some(path);
            assert!(matches!(RedisStore::connect("rediss://127.0.0.1:1", &cfg), Err(StoreError::Config(_))));
        }
    }

    /// A peer that echoes what it gets (as a TCP connection to itself does, once a local Redis
    /// on an ephemeral port is gone) passes fred's connection checks; reads fail on the reply
    /// type, and writes must fail too instead of looking saved.
    #[tokio::test]
    async fn writes_to_a_peer_that_is_not_redis_fail() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let echo = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let store = RedisStore::connect(&url, &config(&url)).unwrap();
        let guard = Duration::from_secs(10);
        let get = tokio::time::timeout(guard, store.get("k", None)).await.expect("the call must end");
        assert!(get.is_err(), "{get:?}");
        let set = tokio::time::timeout(guard, store.set("k", "{}", 60)).await.expect("the call must end");
        assert_eq!(set.unwrap_err().kind(), "command");
        let del = tokio::time::timeout(guard, store.del("k")).await.expect("the call must end");
        assert_eq!(del.unwrap_err().kind(), "command");
        let created =
            tokio::time::timeout(guard, store.create("k", "{}", 60)).await.expect("the call must end");
        assert_eq!(created.unwrap_err().kind(), "command");
        let replaced = tokio::time::timeout(guard, store.replace_if("k", b"{}", "{}", 60))
            .await
            .expect("the call must end");
        assert_eq!(replaced.unwrap_err().kind(), "command");
        let deleted =
            tokio::time::timeout(guard, store.delete_if("k", b"{}")).await.expect("the call must end");
        assert_eq!(deleted.unwrap_err().kind(), "command");
        tokio::time::timeout(guard, store.shutdown()).await.expect("shutdown must end");
        echo.abort();
    }

    /// Nothing listens on the port: building succeeds at once and calls fail within the
    /// timeout (the outer timeout only guards against a hang).
    #[tokio::test]
    async fn starts_and_fails_calls_while_redis_is_down() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = format!("redis://127.0.0.1:{port}");
        let store = RedisStore::connect(&url, &config(&url)).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(10), store.get("k", None))
            .await
            .expect("the call must end on its own");
        let err = result.unwrap_err();
        assert!(matches!(err.kind(), "unavailable" | "timeout"), "{err}");
        let failed = tokio::time::timeout(Duration::from_secs(10), store.replace_if("a", b"{}", "{}", 60))
            .await
            .expect("the call must end on its own");
        assert!(failed.is_err());
        tokio::time::timeout(Duration::from_secs(10), store.shutdown())
            .await
            .expect("shutdown must end on its own");
    }
}
