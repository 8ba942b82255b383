//! The index of live sessions by a value in them (`session.index`, the README's "Session
//! management"): for each value at the configured JSON pointer (a user id, say), a set of the
//! ids of the sessions that hold it, so that an operator can list a user's sessions and log the
//! user out everywhere.
//!
//! The set of a value lives under `key_prefix + "index " + pointer + " " + value`. A session
//! key is `key_prefix + id`, and ids never contain a space, so an index key can never be read
//! as a session. Every command touches one key (Redis Cluster).
//!
//! Kept by the write path: a session id is added to its new value's set *before* the write
//! that gives it the value (so a "log out everywhere" running meanwhile cannot miss it) and
//! removed from its old value's set *after* the write succeeded. A write that fails in
//! between leaves an id in a set it does not belong to; readers check each id against its
//! session and drop the ones that do not hold the value (or are gone), so the index heals as
//! it is read. A write that does not change the indexed value costs no index command.
//!
//! The TTL of a set is raised to at least [`Index::SET_TTL_FACTOR`] times `max_age` when an id
//! is added, and, by each process, at most once per `max_age` per value when a session holding
//! it is written or (with `rolling`) read, so that a set outlives every session in it: a
//! session lives at most `max_age` past its last write or read, and its set at least
//! `max_age` past that, whatever the traffic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::json::{Js, JsObject};
use crate::config::JsonPointer;

/// Values whose set this process has refreshed lately, at most this many (then the record
/// starts over: the cost is one extra refresh per value).
const REFRESHED_MAX: usize = 100_000;

/// One config generation's index settings.
pub(crate) struct Index {
    pointer: JsonPointer,
    /// `key_prefix + "index " + pointer + " "`: a value's set key is this plus the value.
    key_base: String,
    /// The sets' TTL: at least `max_age` past the latest write or read of any session in it.
    ttl: u64,
    /// How often, at most, this process refreshes one value's set.
    refresh_every: Duration,
    refreshed: Mutex<HashMap<String, Instant>>,
}

impl Index {
    /// A set's TTL in units of `max_age`.
    pub(crate) const SET_TTL_FACTOR: u64 = 2;

    pub(crate) fn new(pointer: &JsonPointer, key_prefix: &str, max_age: u64) -> Index {
        Index {
            pointer: pointer.clone(),
            key_base: format!("{key_prefix}index {} ", pointer.as_str()),
            ttl: max_age.saturating_mul(Self::SET_TTL_FACTOR),
            refresh_every: Duration::from_secs(max_age),
            refreshed: Mutex::new(HashMap::new()),
        }
    }

    /// The key of `value`'s set.
    pub(crate) fn key(&self, value: &str) -> String {
        let mut key = String::with_capacity(self.key_base.len() + value.len());
        key.push_str(&self.key_base);
        key.push_str(value);
        key
    }

    pub(crate) fn ttl(&self) -> u64 {
        self.ttl
    }

    /// The indexed value of a session object: the scalar at the pointer, if any.
    pub(crate) fn value_of(&self, object: &JsObject) -> Option<String> {
        object.at(&self.pointer).and_then(Js::index_text)
    }

    /// The indexed value of a stored session text.
    pub(crate) fn value_of_text(&self, text: &[u8]) -> Option<String> {
        self.value_of(&Js::parse_object(text)?)
    }

    /// Whether this process should refresh `value`'s set now: not within `max_age`.
    pub(crate) fn refresh_due(&self, value: &str) -> bool {
        let refreshed = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
        refreshed.get(value).is_none_or(|at| at.elapsed() >= self.refresh_every)
    }

    /// Records that `value`'s set was refreshed (or created) now.
    pub(crate) fn refreshed(&self, value: &str) {
        let mut refreshed = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
        if refreshed.len() >= REFRESHED_MAX {
            refreshed.clear();
        }
        refreshed.insert(value.to_owned(), Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Index {
        Index::new(&JsonPointer::parse("/user/id").unwrap(), "_session:", 100)
    }

    #[test]
    fn index_keys_can_never_be_session_keys() {
        let ix = index();
        let key = ix.key("42");
        assert_eq!(key, "_session:index /user/id 42");
        // A session key is the prefix and an id, and ids have no spaces.
        let id = key.strip_prefix("_session:").unwrap();
        assert!(!crate::session::id::is_valid_id(id));
        assert_eq!(ix.ttl(), 200);
    }

    #[test]
    fn values_come_from_the_pointer() {
        let ix = index();
        assert_eq!(ix.value_of_text(br#"{"user":{"id":42}}"#), Some("42".to_owned()));
        assert_eq!(ix.value_of_text(br#"{"user":{"id":"ada"}}"#), Some("ada".to_owned()));
        assert_eq!(ix.value_of_text(br#"{"user":{"id":null}}"#), None);
        assert_eq!(ix.value_of_text(br#"{"user":{}}"#), None);
        assert_eq!(ix.value_of_text(b"not json"), None);
    }

    #[test]
    fn each_value_is_refreshed_once_per_max_age() {
        let ix = index();
        assert!(ix.refresh_due("42"));
        ix.refreshed("42");
        assert!(!ix.refresh_due("42"));
        assert!(ix.refresh_due("43"));
    }
}
