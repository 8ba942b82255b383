//! The embedded store (`memory://`): a sharded map of key to (value, expiry) with the TTL
//! semantics of the Redis commands the proxy uses, for one process and no Redis.
//!
//! Expiry is checked on every read (an expired key is absent, as in Redis). Expired entries are
//! also swept out of a shard when it is written to and its last sweep is older than
//! `SWEEP_INTERVAL`, so memory stays bounded by the live sessions plus what expired within one
//! interval, without a background task. Only writes add entries, so a shard that is never
//! written to never grows.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::compared::Compared;
use super::error::StoreError;

/// Number of independently locked shards: enough that concurrent requests rarely wait on the
/// same lock, few enough that the sweep of one shard stays short.
const SHARDS: usize = 16;

/// How often, at most, a shard is swept of expired entries on write. Bounds how long expired
/// sessions may keep using memory.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The embedded store. Clones share the same map.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Picks a shard for a key; randomly seeded so keys chosen by clients cannot pile into one
    /// shard.
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

struct Shard {
    entries: HashMap<String, Entry>,
    /// The sets of the session index, by key (Redis's keyspace is one; these keys never take
    /// the form of a session key).
    sets: HashMap<String, Set>,
    /// When this shard was last swept of expired entries.
    last_sweep: Instant,
}

struct Set {
    members: HashSet<String>,
    expires_at: Instant,
}

struct Entry {
    value: Bytes,
    expires_at: Instant,
}

impl Entry {
    fn is_live(&self, now: Instant) -> bool {
        now < self.expires_at
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        let now = Instant::now();
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(Shard { entries: HashMap::new(), sets: HashMap::new(), last_sweep: now }))
            .collect();
        MemoryStore { inner: Arc::new(Inner { hasher: RandomState::new(), shards }) }
    }

    /// `GET key`, or `GETEX key EX secs` when `refresh_ttl` is set.
    pub fn get(&self, key: &str, refresh_ttl: Option<u64>) -> Result<Option<Bytes>, StoreError> {
        self.get_at(key, refresh_ttl, Instant::now())
    }

    /// `SET key value EX ttl_secs`.
    pub fn set(&self, key: &str, value: &str, ttl_secs: u64) -> Result<(), StoreError> {
        self.set_at(key, value, ttl_secs, Instant::now())
    }

    /// `DEL key`.
    pub fn del(&self, key: &str) {
        self.shard(key).entries.remove(key);
    }

    /// `SET key value EX ttl_secs NX`: `false` when the key exists.
    pub fn create(&self, key: &str, value: &str, ttl_secs: u64) -> Result<bool, StoreError> {
        let now = Instant::now();
        let expires_at = expiry(now, ttl_secs, "set")?;
        let mut shard = self.write_shard(key, now);
        if shard.entries.get(key).is_some_and(|e| e.is_live(now)) {
            return Ok(false);
        }
        shard
            .entries
            .insert(key.to_owned(), Entry { value: Bytes::copy_from_slice(value.as_bytes()), expires_at });
        Ok(true)
    }

    /// Replaces `key`'s value (and TTL) only if it still holds `expected`, under the shard's
    /// lock.
    pub fn replace_if(
        &self,
        key: &str,
        expected: &[u8],
        value: &str,
        ttl_secs: u64,
    ) -> Result<Compared, StoreError> {
        let now = Instant::now();
        let expires_at = expiry(now, ttl_secs, "set")?;
        let mut shard = self.write_shard(key, now);
        let Some(entry) = shard.entries.get_mut(key).filter(|e| e.is_live(now)) else {
            return Ok(Compared::Gone);
        };
        if entry.value != expected {
            return Ok(Compared::Changed(entry.value.clone()));
        }
        *entry = Entry { value: Bytes::copy_from_slice(value.as_bytes()), expires_at };
        Ok(Compared::Done)
    }

    /// Deletes `key` only if it still holds `expected`, under the shard's lock.
    pub fn delete_if(&self, key: &str, expected: &[u8]) -> Compared {
        let now = Instant::now();
        let mut shard = self.shard(key);
        let Some(entry) = shard.entries.get(key).filter(|e| e.is_live(now)) else {
            return Compared::Gone;
        };
        if entry.value != expected {
            return Compared::Changed(entry.value.clone());
        }
        shard.entries.remove(key);
        Compared::Done
    }

    /// The value and its remaining TTL in whole seconds (as Redis's `TTL` rounds).
    pub fn inspect(&self, key: &str) -> Option<(Bytes, u64)> {
        let now = Instant::now();
        let shard = self.shard(key);
        let entry = shard.entries.get(key).filter(|e| e.is_live(now))?;
        let left = entry.expires_at.saturating_duration_since(now);
        Some((entry.value.clone(), left.as_secs() + u64::from(left.subsec_nanos() >= 500_000_000)))
    }

    /// `SADD key member`, and the set's TTL raised to at least `ttl_secs`.
    pub fn index_add(&self, key: &str, member: &str, ttl_secs: u64) -> Result<(), StoreError> {
        let now = Instant::now();
        let at_least = expiry(now, ttl_secs, "expire")?;
        let mut shard = self.write_shard(key, now);
        let set = shard
            .sets
            .entry(key.to_owned())
            .or_insert_with(|| Set { members: HashSet::new(), expires_at: now });
        if set.expires_at <= now {
            set.members.clear();
        }
        set.members.insert(member.to_owned());
        set.expires_at = set.expires_at.max(at_least);
        Ok(())
    }

    /// The set's TTL raised to at least `ttl_secs`, if it exists.
    pub fn index_touch(&self, key: &str, ttl_secs: u64) -> Result<(), StoreError> {
        let now = Instant::now();
        let at_least = expiry(now, ttl_secs, "expire")?;
        if let Some(set) = self.shard(key).sets.get_mut(key).filter(|set| set.expires_at > now) {
            set.expires_at = set.expires_at.max(at_least);
        }
        Ok(())
    }

    /// `SREM key member`; an emptied set is gone, as in Redis.
    pub fn index_remove(&self, key: &str, member: &str) {
        let mut shard = self.shard(key);
        if let Some(set) = shard.sets.get_mut(key) {
            set.members.remove(member);
            if set.members.is_empty() {
                shard.sets.remove(key);
            }
        }
    }

    /// `SMEMBERS key`.
    pub fn index_members(&self, key: &str) -> Vec<String> {
        let now = Instant::now();
        let shard = self.shard(key);
        shard
            .sets
            .get(key)
            .filter(|set| set.expires_at > now)
            .map(|set| set.members.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Nothing to close; the map goes away with the last clone.
    pub fn shutdown(&self) {}

    fn get_at(&self, key: &str, refresh_ttl: Option<u64>, now: Instant) -> Result<Option<Bytes>, StoreError> {
        // Validated before the lookup, as Redis rejects a bad GETEX whether or not the key exists.
        let new_expiry = match refresh_ttl {
            Some(secs) => Some(expiry(now, secs, "getex")?),
            None => None,
        };
        let mut shard = self.shard(key);
        let Some(entry) = shard.entries.get_mut(key) else {
            return Ok(None);
        };
        if !entry.is_live(now) {
            shard.entries.remove(key);
            return Ok(None);
        }
        if let Some(expires_at) = new_expiry {
            entry.expires_at = expires_at;
        }
        Ok(Some(entry.value.clone()))
    }

    fn set_at(&self, key: &str, value: &str, ttl_secs: u64, now: Instant) -> Result<(), StoreError> {
        let expires_at = expiry(now, ttl_secs, "set")?;
        self.write_shard(key, now)
            .entries
            .insert(key.to_owned(), Entry { value: Bytes::copy_from_slice(value.as_bytes()), expires_at });
        Ok(())
    }

    /// `key`'s shard, locked for a write that may add an entry: swept of expired entries first
    /// when its last sweep is older than [`SWEEP_INTERVAL`].
    fn write_shard(&self, key: &str, now: Instant) -> MutexGuard<'_, Shard> {
        let mut shard = self.shard(key);
        if now.saturating_duration_since(shard.last_sweep) >= SWEEP_INTERVAL {
            shard.entries.retain(|_, entry| entry.is_live(now));
            shard.sets.retain(|_, set| set.expires_at > now);
            shard.last_sweep = now;
        }
        shard
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        // Truncating the hash is fine: it only spreads keys over the shards.
        let index = self.inner.hasher.hash_one(key) as usize % self.inner.shards.len();
        // A panic while holding the lock cannot leave a shard half-updated (every update is a
        // single map operation), so a poisoned lock is still safe to use.
        self.inner.shards[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.shards.iter().map(|shard| shard.lock().map(|s| s.entries.len()).unwrap_or(0)).sum()
    }
}

/// The expiry instant for `EX secs`, rejecting what Redis rejects (`EX 0`) and what the clock
/// cannot represent, with Redis's wording.
fn expiry(now: Instant, secs: u64, command: &str) -> Result<Instant, StoreError> {
    if secs == 0 {
        return Err(invalid_expire(command));
    }
    now.checked_add(Duration::from_secs(secs)).ok_or_else(|| invalid_expire(command))
}

fn invalid_expire(command: &str) -> StoreError {
    StoreError::Command(format!("ERR invalid expire time in '{command}' command"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn set_get_del_round_trip() {
        let store = MemoryStore::new();
        assert_eq!(store.get("k", None).unwrap(), None);
        store.set("k", "{\"a\":\"é\"}", 60).unwrap();
        assert_eq!(store.get("k", None).unwrap().as_deref(), Some("{\"a\":\"é\"}".as_bytes()));
        store.set("k", "{}", 60).unwrap();
        assert_eq!(store.get("k", None).unwrap().as_deref(), Some(&b"{}"[..]));
        store.del("k");
        assert_eq!(store.get("k", None).unwrap(), None);
        store.del("k");
    }

    #[test]
    fn keys_expire_after_their_ttl() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        store.set_at("k", "v", 10, t0).unwrap();
        assert!(store.get_at("k", None, t0 + secs(9)).unwrap().is_some());
        assert_eq!(store.get_at("k", None, t0 + secs(10)).unwrap(), None);
        // The expired read removed the entry.
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn plain_get_does_not_refresh() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        store.set_at("k", "v", 10, t0).unwrap();
        assert!(store.get_at("k", None, t0 + secs(5)).unwrap().is_some());
        assert_eq!(store.get_at("k", None, t0 + secs(11)).unwrap(), None);
    }

    #[test]
    fn getex_refreshes_the_ttl() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        store.set_at("k", "v", 10, t0).unwrap();
        assert!(store.get_at("k", Some(10), t0 + secs(8)).unwrap().is_some());
        // Past the original expiry, within the refreshed one.
        assert!(store.get_at("k", None, t0 + secs(17)).unwrap().is_some());
        assert_eq!(store.get_at("k", None, t0 + secs(18)).unwrap(), None);
    }

    #[test]
    fn getex_can_shorten_the_ttl() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        store.set_at("k", "v", 100, t0).unwrap();
        assert!(store.get_at("k", Some(5), t0).unwrap().is_some());
        assert_eq!(store.get_at("k", None, t0 + secs(5)).unwrap(), None);
    }

    #[test]
    fn getex_does_not_revive_an_expired_key() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        store.set_at("k", "v", 10, t0).unwrap();
        assert_eq!(store.get_at("k", Some(10), t0 + secs(10)).unwrap(), None);
        assert_eq!(store.get_at("k", None, t0 + secs(11)).unwrap(), None);
    }

    #[test]
    fn set_replaces_the_ttl() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        store.set_at("k", "v1", 10, t0).unwrap();
        store.set_at("k", "v2", 100, t0 + secs(5)).unwrap();
        assert_eq!(store.get_at("k", None, t0 + secs(50)).unwrap().as_deref(), Some(&b"v2"[..]));
    }

    #[test]
    fn invalid_ttls_are_rejected_like_redis() {
        let store = MemoryStore::new();
        let err = store.set("k", "v", 0).unwrap_err();
        assert_eq!(err.kind(), "command");
        assert!(store.set("k", "v", u64::MAX).is_err());
        assert_eq!(store.get("k", None).unwrap(), None);
        store.set("k", "v", 60).unwrap();
        assert!(store.get("k", Some(0)).is_err());
        assert!(store.get("k", Some(u64::MAX)).is_err());
        // A rejected GETEX leaves the key alone.
        assert!(store.get("k", None).unwrap().is_some());
    }

    #[test]
    fn create_only_when_absent() {
        let store = MemoryStore::new();
        assert!(store.create("k", "{\"a\":1}", 60).unwrap());
        assert!(!store.create("k", "{}", 60).unwrap());
        assert_eq!(store.get("k", None).unwrap().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert!(store.create("k2", "{}", 0).is_err());
        // An expired key counts as absent.
        let t0 = Instant::now();
        store.set_at("old", "v", 1, t0 - secs(2)).unwrap();
        assert!(store.create("old", "{}", 60).unwrap());
    }

    #[test]
    fn replace_if_compares_and_sets() {
        let store = MemoryStore::new();
        assert_eq!(store.replace_if("k", b"{}", "{\"a\":1}", 60).unwrap(), Compared::Gone);
        assert_eq!(store.get("k", None).unwrap(), None);
        store.set("k", "{}", 60).unwrap();
        assert_eq!(store.replace_if("k", b"{}", "{\"a\":1}", 60).unwrap(), Compared::Done);
        assert_eq!(
            store.replace_if("k", b"{}", "{\"b\":2}", 60).unwrap(),
            Compared::Changed(Bytes::from_static(b"{\"a\":1}"))
        );
        assert_eq!(store.get("k", None).unwrap().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert!(store.replace_if("k", b"{\"a\":1}", "{}", 0).is_err());
        assert_eq!(store.get("k", None).unwrap().as_deref(), Some(&b"{\"a\":1}"[..]));
    }

    #[test]
    fn delete_if_compares_and_deletes() {
        let store = MemoryStore::new();
        assert_eq!(store.delete_if("k", b"{}"), Compared::Gone);
        store.set("k", "{\"a\":1}", 60).unwrap();
        assert_eq!(store.delete_if("k", b"{}"), Compared::Changed(Bytes::from_static(b"{\"a\":1}")));
        assert!(store.get("k", None).unwrap().is_some());
        assert_eq!(store.delete_if("k", b"{\"a\":1}"), Compared::Done);
        assert_eq!(store.get("k", None).unwrap(), None);
    }

    #[test]
    fn index_sets_add_remove_and_expire() {
        let store = MemoryStore::new();
        store.index_add("i", "a", 60).unwrap();
        store.index_add("i", "b", 10).unwrap();
        let mut members = store.index_members("i");
        members.sort();
        assert_eq!(members, ["a", "b"]);
        store.index_remove("i", "a");
        assert_eq!(store.index_members("i"), ["b"]);
        store.index_remove("i", "b");
        assert!(store.index_members("i").is_empty());
        assert!(store.index_add("i", "a", 0).is_err());
        store.index_touch("missing", 60).unwrap();
        assert!(store.index_members("missing").is_empty());
    }

    #[test]
    fn inspect_gives_the_value_and_its_ttl() {
        let store = MemoryStore::new();
        assert_eq!(store.inspect("k"), None);
        store.set("k", "{}", 100).unwrap();
        let (value, ttl) = store.inspect("k").unwrap();
        assert_eq!(value, "{}");
        assert!((99..=100).contains(&ttl), "{ttl}");
    }

    #[test]
    fn writes_sweep_expired_entries() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        for i in 0..1000 {
            store.set_at(&format!("k{i}"), "v", 1, t0).unwrap();
        }
        assert_eq!(store.len(), 1000);
        // One write per shard after the sweep interval clears every expired entry it finds;
        // enough distinct keys reach every shard.
        let later = t0 + SWEEP_INTERVAL;
        for i in 0..1000 {
            store.set_at(&format!("n{i}"), "v", 1, later).unwrap();
        }
        assert_eq!(store.len(), 1000);
    }

    #[test]
    fn clones_share_the_map() {
        let store = MemoryStore::new();
        let clone = store.clone();
        store.set("k", "v", 60).unwrap();
        assert!(clone.get("k", None).unwrap().is_some());
    }
}
