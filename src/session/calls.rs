//! The store as one request uses it: every command is timed into its histogram, every failure
//! counted by its kind, and the total time goes on the request's access-log line.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::metrics::{Histogram, Metrics, StoreErrorCounters};
use crate::store::{Compared, Store, StoreError};

/// The metric handles of the store commands a request makes, resolved once per session layer
/// so that timing a command hashes no labels.
pub(crate) struct StoreMetrics {
    get: Histogram,
    getex: Histogram,
    set: Histogram,
    create: Histogram,
    replace_if: Histogram,
    delete_if: Histogram,
    del: Histogram,
    inspect: Histogram,
    index_add: Histogram,
    index_touch: Histogram,
    index_remove: Histogram,
    index_members: Histogram,
    errors: StoreErrorCounters,
}

impl StoreMetrics {
    pub(crate) fn new(metrics: &Metrics) -> StoreMetrics {
        StoreMetrics {
            get: metrics.store_command("get"),
            getex: metrics.store_command("getex"),
            set: metrics.store_command("set"),
            create: metrics.store_command("create"),
            replace_if: metrics.store_command("replace_if"),
            delete_if: metrics.store_command("delete_if"),
            del: metrics.store_command("del"),
            inspect: metrics.store_command("inspect"),
            index_add: metrics.store_command("index_add"),
            index_touch: metrics.store_command("index_touch"),
            index_remove: metrics.store_command("index_remove"),
            index_members: metrics.store_command("index_members"),
            errors: metrics.store_errors(&StoreError::KINDS),
        }
    }
}

/// One request's view of the store (see the module docs).
pub(crate) struct StoreCalls<'a> {
    store: &'a Store,
    metrics: &'a StoreMetrics,
    /// Time spent waiting for the store during this request.
    pub elapsed: Duration,
}

impl<'a> StoreCalls<'a> {
    pub(crate) fn new(store: &'a Store, metrics: &'a StoreMetrics) -> StoreCalls<'a> {
        StoreCalls { store, metrics, elapsed: Duration::ZERO }
    }

    async fn timed<T>(
        &mut self,
        histogram: &Histogram,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let out = fut.await;
        let took = start.elapsed();
        self.elapsed += took;
        histogram.observe(took.as_secs_f64());
        if let Err(e) = &out {
            self.metrics.errors.count(e.kind());
        }
        out
    }

    /// `GET key`, or `GETEX key EX secs` with `refresh_ttl`.
    pub(crate) async fn get(
        &mut self,
        key: &str,
        refresh_ttl: Option<u64>,
    ) -> Result<Option<Bytes>, StoreError> {
        let (store, m) = (self.store, self.metrics);
        let histogram = if refresh_ttl.is_some() { &m.getex } else { &m.get };
        self.timed(histogram, store.get(key, refresh_ttl)).await
    }

    pub(crate) async fn set(&mut self, key: &str, value: &str, ttl: u64) -> Result<(), StoreError> {
        let (store, m) = (self.store, self.metrics);
        self.timed(&m.set, store.set(key, value, ttl)).await
    }

    pub(crate) async fn del(&mut self, key: &str) -> Result<(), StoreError> {
        let (store, m) = (self.store, self.metrics);
        self.timed(&m.del, store.del(key)).await
    }

    /// `SET NX`: `false` when the key exists.
    pub(crate) async fn create(&mut self, key: &str, value: &str, ttl: u64) -> Result<bool, StoreError> {
        let (store, m) = (self.store, self.metrics);
        self.timed(&m.create, store.create(key, value, ttl)).await
    }

    pub(crate) async fn replace_if(
        &mut self,
        key: &str,
        expected: &[u8],
        value: &str,
        ttl: u64,
    ) -> Result<Compared, StoreError> {
        let (store, m) = (self.store, self.metrics);
        self.timed(&m.replace_if, store.replace_if(key, expected, value, ttl)).await
    }

    pub(crate) async fn delete_if(&mut self, key: &str, expected: &[u8]) -> Result<Compared, StoreError> {
        let (store, m) = (self.store, self.metrics);
        self.timed(&m.delete_if, store.delete_if(key, expected)).await
    }

    /// The value at `key` and its TTL.
    pub(crate) async fn inspect(&mut self, key: &str) -> Result<Option<(Bytes, u64)>, StoreError> {
        let (store, m) = (self.store, self.metrics);
        self.timed(&m.inspect, store.inspect(key)).await
    }

    pub(crate) async fn index_add(&mut self, key: &str, member: &str, ttl: u64) -> Result<(), StoreError> {
        let (store, m) = (self.store, self.metrics);
        self.timed(&m.index_add, store.index_add(key, member, ttl)).await
    }

    pub(crate) async fn index_touch(&mut self, key: &str, ttl: u64) -> Result<(), StoreError> {
        let (store, m) = (self.store, self.metrics);
        self.timed(&m.index_touch, store.index_touch(key, ttl)).await
    }

    pub(crate) async fn index_remove(&mut self, key: &str, member: &str) -> Result<(), StoreError> {
        let (store, m) = (self.store, self.metrics);
        self.timed(&m.index_remove, store.index_remove(key, member)).await
    }

    pub(crate) async fn index_members(&mut self, key: &str) -> Result<Vec<String>, StoreError> {
        let (store, m) = (self.store, self.metrics);
        self.timed(&m.index_members, store.index_members(key)).await
    }
}
