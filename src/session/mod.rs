//! Sessions: the header protocol of DESIGN.md between the store, the cookie and the upstream.
//!
//! The proxy calls [`SessionLayer::load`] once before forwarding a request on a session route
//! and [`SessionLayer::save`] once on the upstream's response. Everything about cookies
//! (`cookie`), ids (`id`) and header values (`protocol`) is pure and lives in the submodules.

pub(crate) mod cookie;
pub(crate) mod id;
pub(crate) mod protocol;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, SET_COOKIE};

use crate::config::SessionConfig;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use cookie::{CookieCodec, CookieRead};
use protocol::{Update, UpdateError};

/// What happened to the session during one request: the access log's `session` field and the
/// session metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionEvent {
    /// Not a session route, or a visitor without a session whose response changed nothing.
    None,
    /// A live session was read and left as it was.
    Loaded,
    Created,
    Updated,
    Destroyed,
    Regenerated,
}

impl SessionEvent {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SessionEvent::None => "none",
            SessionEvent::Loaded => "loaded",
            SessionEvent::Created => "created",
            SessionEvent::Updated => "updated",
            SessionEvent::Destroyed => "destroyed",
            SessionEvent::Regenerated => "regenerated",
        }
    }
}

/// The store as one request uses it: every command is timed for the metrics, and the total
/// goes on the request's access-log line.
pub(crate) struct StoreCalls<'a> {
    store: &'a Store,
    metrics: &'a Metrics,
    /// Time spent waiting for the store during this request.
    pub elapsed: Duration,
}

impl<'a> StoreCalls<'a> {
    pub(crate) fn new(store: &'a Store, metrics: &'a Metrics) -> StoreCalls<'a> {
        StoreCalls { store, metrics, elapsed: Duration::ZERO }
    }

    async fn timed<T>(
        &mut self,
        command: &'static str,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let out = fut.await;
        let took = start.elapsed();
        self.elapsed += took;
        self.metrics.store_command(command, took);
        out
    }

    async fn get(&mut self, key: &str, refresh_ttl: Option<u64>) -> Result<Option<Bytes>, StoreError> {
        let command = if refresh_ttl.is_some() { "getex" } else { "get" };
        let store = self.store;
        self.timed(command, store.get(key, refresh_ttl)).await
    }

    async fn set(&mut self, key: &str, value: &str, ttl: u64) -> Result<(), StoreError> {
        let store = self.store;
        self.timed("set", store.set(key, value, ttl)).await
    }

    async fn del(&mut self, key: &str) -> Result<(), StoreError> {
        let store = self.store;
        self.timed("del", store.del(key)).await
    }

    async fn rename_with(&mut self, old: &str, new: &str, value: &str, ttl: u64) -> Result<(), StoreError> {
        let store = self.store;
        self.timed("regenerate", store.rename_with(old, new, value, ttl)).await
    }
}

/// What the request side found, handed to the response side.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// A live session: the cookie verified and its key is in the store.
    live: Option<Live>,
    /// The cookie verified, but the store could not be read (`on_store_error = "pass"`): the
    /// id is ours (it is signed) but whether it is live is unknown.
    unknown: Option<String>,
    /// The cookie verified with a secret other than the first: re-sign it with the first.
    needs_resign: bool,
    /// The request carried a session cookie that failed verification.
    pub cookie_rejected: bool,
}

#[derive(Debug)]
struct Live {
    id: String,
    /// The stored JSON text, kept so `x-session-regenerate` can move it to a new id; `{}` when
    /// the stored value is not a JSON object (the session is treated as empty).
    value: Bytes,
}

impl Loaded {
    /// For a request whose store read failed under `on_store_error = "pass"`.
    pub(crate) fn unknown(id: Option<String>) -> Loaded {
        Loaded { unknown: id, ..Loaded::default() }
    }
}

/// A failed store read, with the cookie's verified id so `"pass"` can still honour an update.
#[derive(Debug)]
pub(crate) struct LoadError {
    pub error: StoreError,
    pub id: Option<String>,
}

/// Why the response side could not finish; each maps to one status code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SaveError {
    /// 502: the upstream sent an update that is not a JSON object or `null`, or too large.
    #[error("bad session update from upstream: {0}")]
    BadUpdate(#[from] UpdateError),
    /// 503: the write did not happen, so the client must not be told it did.
    #[error("session store write failed: {0}")]
    Store(#[from] StoreError),
}

/// One config generation's session settings, ready for the hot path.
pub(crate) struct SessionLayer {
    cfg: SessionConfig,
    codec: CookieCodec,
    key_prefix: String,
}

impl SessionLayer {
    pub(crate) fn new(cfg: &SessionConfig, key_prefix: &str) -> SessionLayer {
        SessionLayer { cfg: cfg.clone(), codec: CookieCodec::new(cfg), key_prefix: key_prefix.to_string() }
    }

    pub(crate) fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    fn key(&self, id: &str) -> String {
        let mut key = String::with_capacity(self.key_prefix.len() + id.len());
        key.push_str(&self.key_prefix);
        key.push_str(id);
        key
    }

    /// Request side: verifies the cookie, reads the session in one round trip (GETEX when
    /// `rolling`) and puts it in the request's session header. A request without a valid
    /// cookie needs no store read and carries `{}`. `request_id` is for its log line.
    pub(crate) async fn load(
        &self,
        store: &mut StoreCalls<'_>,
        headers: &mut HeaderMap,
        request_id: &str,
    ) -> Result<Loaded, LoadError> {
        let verified = match self.codec.read_cookie(headers) {
            CookieRead::Valid(v) => v,
            read => {
                headers.insert(&self.cfg.header, protocol::empty_session());
                let cookie_rejected = matches!(read, CookieRead::Rejected);
                return Ok(Loaded { cookie_rejected, ..Loaded::default() });
            }
        };
        let refresh = self.cfg.rolling.then_some(self.cfg.max_age);
        let stored = match store.get(&self.key(&verified.id), refresh).await {
            Ok(stored) => stored,
            Err(error) => return Err(LoadError { error, id: Some(verified.id) }),
        };
        let Some(value) = stored else {
            // Strict ids: a signed id that is not in the store is a new visitor.
            headers.insert(&self.cfg.header, protocol::empty_session());
            return Ok(Loaded::default());
        };
        let (header, value) = match protocol::to_request_header(&value) {
            Ok(header) => (header, value),
            Err(_) => {
                tracing::warn!(request_id, "stored session is not a JSON object; treating it as empty");
                // Treated as empty throughout: a regenerate moves `{}`, what the upstream saw,
                // not the unreadable value.
                (protocol::empty_session(), Bytes::from_static(protocol::EMPTY_SESSION.as_bytes()))
            }
        };
        headers.insert(&self.cfg.header, header);
        Ok(Loaded {
            live: Some(Live { id: verified.id, value }),
            needs_resign: verified.needs_resign,
            ..Loaded::default()
        })
    }

    /// Response side: acts on the exact update and regenerate headers, writes the store and
    /// sets or clears the cookie. On error nothing claims a change that was not saved: the
    /// caller answers 502 or 503 instead of the upstream's response.
    pub(crate) async fn save(
        &self,
        store: &mut StoreCalls<'_>,
        loaded: Loaded,
        resp: &mut HeaderMap,
    ) -> Result<SessionEvent, SaveError> {
        let update = self.read_update(resp)?;
        let regenerate = resp.contains_key(&self.cfg.regenerate_header);
        let max_age = self.cfg.max_age;
        let Loaded { live, unknown, needs_resign, .. } = loaded;
        let current = live.as_ref().map(|l| l.id.as_str()).or(unknown.as_deref());

        let event = match (update, current) {
            (Some(Update::Destroy), Some(id)) => {
                store.del(&self.key(id)).await?;
                resp.append(SET_COOKIE, self.codec.clear_cookie());
                SessionEvent::Destroyed
            }
            (Some(Update::Destroy), None) => SessionEvent::None,
            (Some(Update::Replace(text)), Some(id)) if regenerate => {
                let new = id::new_id();
                store.rename_with(&self.key(id), &self.key(&new), &text, max_age).await?;
                self.set_cookie(resp, &new);
                SessionEvent::Regenerated
            }
            // Only a session found in the store is overwritten in place. One whose read failed
            // (`"pass"`) may hold data the upstream never saw: its update starts a new session
            // rather than replace that data (strict ids).
            (Some(Update::Replace(text)), Some(id)) if live.is_some() => {
                store.set(&self.key(id), &text, max_age).await?;
                if self.cfg.rolling || needs_resign {
                    self.set_cookie(resp, id);
                }
                SessionEvent::Updated
            }
            (Some(Update::Replace(text)), _) => {
                let new = id::new_id();
                store.set(&self.key(&new), &text, max_age).await?;
                self.set_cookie(resp, &new);
                SessionEvent::Created
            }
            (None, _) => match live {
                Some(live) if regenerate => {
                    let new = id::new_id();
                    // `load` keeps only values it served (valid JSON objects, so UTF-8) or `{}`.
                    let text = std::str::from_utf8(&live.value).unwrap_or(protocol::EMPTY_SESSION);
                    store.rename_with(&self.key(&live.id), &self.key(&new), text, max_age).await?;
                    self.set_cookie(resp, &new);
                    SessionEvent::Regenerated
                }
                Some(live) => {
                    if self.cfg.rolling || needs_resign {
                        self.set_cookie(resp, &live.id);
                    }
                    SessionEvent::Loaded
                }
                // The store was unreachable on read: leave the unknown session alone.
                None if unknown.is_some() => SessionEvent::None,
                None if self.cfg.save_uninitialized => {
                    let new = id::new_id();
                    store.set(&self.key(&new), protocol::EMPTY_SESSION, max_age).await?;
                    self.set_cookie(resp, &new);
                    SessionEvent::Created
                }
                None => SessionEvent::None,
            },
        };
        Ok(event)
    }

    /// The update header by its exact name. More than one is ambiguous and refused.
    fn read_update(&self, resp: &HeaderMap) -> Result<Option<Update>, UpdateError> {
        let mut values = resp.get_all(&self.cfg.update_header).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(UpdateError::Duplicate);
        }
        protocol::parse_update(first, self.cfg.max_bytes).map(Some)
    }

    fn set_cookie(&self, resp: &mut HeaderMap, id: &str) {
        let value: HeaderValue = self.codec.set_cookie(id);
        resp.append(SET_COOKIE, value);
    }
}
