//! Session storage: the embedded in-process store (`memory://`) and Redis (`redis://`,
//! `rediss://`) behind one enum, so the proxy core never knows which one it talks to.
//!
//! The store works on whole keys (`key_prefix + id` is built by the caller) and stores the
//! session's JSON text exactly as `remix-upstash-session` does: `SET key value EX ttl`, read back
//! with `GET`, or `GETEX key EX ttl` when reads refresh the TTL (`rolling = true`). Writes of a
//! session that was read are conditional ([`Store::replace_if`], [`Store::delete_if`]: the key
//! must still hold the text that was read), new sessions are created only where no key is
//! (`NX`), and every command touches one key, so all of it works on Redis Cluster.
//!
//! Every call ends within `StoreConfig::timeout`, whether the backend is down, stalled or slow;
//! failures come back as a [`StoreError`] whose [`kind`](StoreError::kind) is a bounded metrics
//! label. Errors never carry session values or the store password.

mod compared;
mod error;
pub mod memory;
pub mod redis;

pub use compared::Compared;
pub use error::StoreError;

use bytes::Bytes;

use crate::config::{StoreConfig, StoreUrl};

/// A session store. Cheap to clone: every clone shares the same connections or map.
#[derive(Clone)]
pub enum Store {
    /// `memory://`: one process only, lost on restart.
    Memory(memory::MemoryStore),
    /// `redis://`, `rediss://`, `redis[s]-cluster://`, `redis[s]-sentinel://`: a pool of fred
    /// clients.
    Redis(redis::RedisStore),
}

impl Store {
    /// Builds the store. Fails only for config problems (bad URL, unreadable ca_file), never
    /// because Redis is down: a Redis store starts while Redis is unreachable and serves as soon
    /// as it is up.
    pub async fn connect(cfg: &StoreConfig) -> Result<Store, StoreError> {
        match &cfg.url {
            StoreUrl::Memory => Ok(Store::Memory(memory::MemoryStore::new())),
            StoreUrl::Redis(url) => Ok(Store::Redis(redis::RedisStore::connect(url, cfg)?)),
        }
    }

    /// `GET key`, or when `refresh_ttl` is `Some(secs)` `GETEX key EX secs` (one round trip).
    /// An expired or missing key is `Ok(None)`.
    pub async fn get(&self, key: &str, refresh_ttl: Option<u64>) -> Result<Option<Bytes>, StoreError> {
        match self {
            Store::Memory(store) => store.get(key, refresh_ttl),
            Store::Redis(store) => store.get(key, refresh_ttl).await,
        }
    }

    /// `SET key value EX ttl_secs`, unconditionally.
    pub async fn set(&self, key: &str, value: &str, ttl_secs: u64) -> Result<(), StoreError> {
        match self {
            Store::Memory(store) => store.set(key, value, ttl_secs),
            Store::Redis(store) => store.set(key, value, ttl_secs).await,
        }
    }

    /// `SET key value EX ttl_secs NX`: `Ok(false)` when the key exists (nothing written).
    pub async fn create(&self, key: &str, value: &str, ttl_secs: u64) -> Result<bool, StoreError> {
        match self {
            Store::Memory(store) => store.create(key, value, ttl_secs),
            Store::Redis(store) => store.create(key, value, ttl_secs).await,
        }
    }

    /// Replaces `key`'s value with `value` (TTL `ttl_secs`) only if it still holds exactly
    /// `expected`, atomically.
    pub async fn replace_if(
        &self,
        key: &str,
        expected: &[u8],
        value: &str,
        ttl_secs: u64,
    ) -> Result<Compared, StoreError> {
        match self {
            Store::Memory(store) => store.replace_if(key, expected, value, ttl_secs),
            Store::Redis(store) => store.replace_if(key, expected, value, ttl_secs).await,
        }
    }

    /// Deletes `key` only if it still holds exactly `expected`, atomically.
    pub async fn delete_if(&self, key: &str, expected: &[u8]) -> Result<Compared, StoreError> {
        match self {
            Store::Memory(store) => Ok(store.delete_if(key, expected)),
            Store::Redis(store) => store.delete_if(key, expected).await,
        }
    }

    /// `DEL key`; deleting a missing key is not an error.
    pub async fn del(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(store) => {
                store.del(key);
                Ok(())
            }
            Store::Redis(store) => store.del(key).await,
        }
    }

    /// The value at `key` and its remaining TTL in seconds, or `None` when there is none.
    pub async fn inspect(&self, key: &str) -> Result<Option<(Bytes, u64)>, StoreError> {
        match self {
            Store::Memory(store) => Ok(store.inspect(key)),
            Store::Redis(store) => store.inspect(key).await,
        }
    }

    /// Adds `member` to the set at `key` and raises the set's TTL to at least `ttl_secs`.
    pub async fn index_add(&self, key: &str, member: &str, ttl_secs: u64) -> Result<(), StoreError> {
        match self {
            Store::Memory(store) => store.index_add(key, member, ttl_secs),
            Store::Redis(store) => store.index_add(key, member, ttl_secs).await,
        }
    }

    /// Raises the TTL of the set at `key`, if it exists, to at least `ttl_secs`.
    pub async fn index_touch(&self, key: &str, ttl_secs: u64) -> Result<(), StoreError> {
        match self {
            Store::Memory(store) => store.index_touch(key, ttl_secs),
            Store::Redis(store) => store.index_touch(key, ttl_secs).await,
        }
    }

    /// Removes `member` from the set at `key`.
    pub async fn index_remove(&self, key: &str, member: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(store) => {
                store.index_remove(key, member);
                Ok(())
            }
            Store::Redis(store) => store.index_remove(key, member).await,
        }
    }

    /// The members of the set at `key`.
    pub async fn index_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Memory(store) => Ok(store.index_members(key)),
            Store::Redis(store) => store.index_members(key).await,
        }
    }

    /// Checks that the store answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(store) => store.ping().await,
        }
    }

    /// Closes connections and stops background tasks; bounded by the store timeout.
    pub async fn shutdown(&self) {
        match self {
            Store::Memory(store) => store.shutdown(),
            Store::Redis(store) => store.shutdown().await,
        }
    }

    /// `"memory"`, or for Redis `"single"`, `"cluster"` or `"sentinel"` (the URL's form), for
    /// logs and metrics.
    pub fn topology(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(store) => store.topology().label(),
        }
    }

    /// `"memory"` or `"redis"`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn memory_config() -> StoreConfig {
        StoreConfig {
            url: StoreUrl::Memory,
            key_prefix: "_session:".to_owned(),
            ca_file: None,
            timeout: Duration::from_millis(1000),
            pool_size: 2,
            min_replicas: 0,
        }
    }

    #[tokio::test]
    async fn memory_store_through_the_enum() {
        let store = Store::connect(&memory_config()).await.unwrap();
        assert_eq!(store.kind(), "memory");
        store.ping().await.unwrap();
        store.set("k", "{\"a\":1}", 60).await.unwrap();
        assert_eq!(store.get("k", None).await.unwrap().as_deref(), Some(&b"{\"a\":1}"[..]));
        store.del("k").await.unwrap();
        assert_eq!(store.get("k", None).await.unwrap(), None);
        store.shutdown().await;
    }

    #[tokio::test]
    async fn conditional_writes_through_the_enum() {
        let store = Store::connect(&memory_config()).await.unwrap();
        assert!(store.create("k", "{}", 60).await.unwrap());
        assert!(!store.create("k", "{\"x\":1}", 60).await.unwrap());
        assert_eq!(store.replace_if("k", b"{}", "{\"b\":2}", 60).await.unwrap(), Compared::Done);
        assert_eq!(
            store.delete_if("k", b"{}").await.unwrap(),
            Compared::Changed(Bytes::from_static(b"{\"b\":2}"))
        );
        assert_eq!(store.delete_if("k", b"{\"b\":2}").await.unwrap(), Compared::Done);
        assert_eq!(store.replace_if("k", b"{\"b\":2}", "{}", 60).await.unwrap(), Compared::Gone);
    }

    #[tokio::test]
    async fn bad_redis_url_is_a_config_error() {
        let cfg =
            StoreConfig { url: StoreUrl::Redis("redis://user:secret@[::1".to_owned()), ..memory_config() };
        let err = match Store::connect(&cfg).await {
            Err(err) => err,
            Ok(_) => panic!("a malformed URL must not build a store"),
        };
        assert_eq!(err.kind(), "config");
        assert!(!err.to_string().contains("secret"));
    }
}
