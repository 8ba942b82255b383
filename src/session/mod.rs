//! Sessions: the header protocol of DESIGN.md between the store, the cookie and the upstream.
//!
//! The proxy calls [`SessionLayer::load`] once before forwarding a request on a session route,
//! which says what [`SessionState`] the request's session is in, and [`SessionLayer::save`]
//! once on the upstream's response. The store-failure policy (`on_store_error`) is decided in
//! `load`, and nowhere else. Everything about cookies (`cookie`), ids (`id`) and header values
//! (`protocol`) is pure and lives in the submodules; `calls` times the store commands.

pub(crate) mod calls;
pub(crate) mod cookie;
pub(crate) mod id;
pub(crate) mod protocol;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, SET_COOKIE};

use crate::config::{OnStoreError, SessionConfig};
use crate::metrics::{Counter, Metrics};
use crate::store::{Store, StoreError};
use calls::{StoreCalls, StoreMetrics};
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

/// The state a request's session is in, as the request side found it and the response side
/// acts on it.
#[derive(Debug)]
pub(crate) enum SessionState {
    /// No session: no cookie, one that failed verification, or a verified id whose key is not
    /// in the store (strict ids). The upstream was sent `{}`.
    Anonymous,
    /// The cookie verified and its key is in the store.
    Live(Live),
    /// The cookie verified, but the store could not be read (`on_store_error = "pass"`): the id
    /// is ours (it is signed), whether it is live is unknown. The upstream was sent no session.
    Unknown { id: String },
}

/// A live session as it was read.
#[derive(Debug)]
pub(crate) struct Live {
    id: String,
    /// The stored text exactly as read: what a conditional write compares against.
    #[allow(dead_code)] // read by the conditional writes of DESIGN.md's "Concurrent requests"
    read: Bytes,
    /// What the upstream was sent, as stored JSON: `read`, or `{}` when that is not a JSON
    /// object (the session is treated as empty throughout; a regenerate moves `{}`).
    sent: Bytes,
    /// The cookie verified with a secret other than the first: re-sign it with the first.
    resign: bool,
}

/// Why the response side could not finish; the proxy maps each to its status code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SaveError {
    /// The upstream sent an update that is not a JSON object or `null`, or too large.
    #[error("bad session update from upstream: {0}")]
    BadUpdate(#[from] UpdateError),
    /// The write did not happen, so the client must not be told it did.
    #[error("session store write failed: {0}")]
    Store(#[from] StoreError),
}

/// The session metrics' handles, resolved once per session layer.
struct SessionMetrics {
    created: Counter,
    updated: Counter,
    destroyed: Counter,
    regenerated: Counter,
    store: StoreMetrics,
    metrics: Arc<Metrics>,
}

impl SessionMetrics {
    fn new(metrics: &Arc<Metrics>) -> SessionMetrics {
        SessionMetrics {
            created: metrics.session_event(SessionEvent::Created.as_str()),
            updated: metrics.session_event(SessionEvent::Updated.as_str()),
            destroyed: metrics.session_event(SessionEvent::Destroyed.as_str()),
            regenerated: metrics.session_event(SessionEvent::Regenerated.as_str()),
            store: StoreMetrics::new(metrics),
            metrics: metrics.clone(),
        }
    }

    /// Counts a session created, updated, destroyed or regenerated (a session merely loaded,
    /// or none, is not an event).
    fn count(&self, event: SessionEvent) {
        match event {
            SessionEvent::Created => self.created.inc(),
            SessionEvent::Updated => self.updated.inc(),
            SessionEvent::Destroyed => self.destroyed.inc(),
            SessionEvent::Regenerated => self.regenerated.inc(),
            SessionEvent::None | SessionEvent::Loaded => return,
        };
    }
}

/// One config generation's session settings, ready for the hot path.
pub(crate) struct SessionLayer {
    cfg: SessionConfig,
    codec: CookieCodec,
    key_prefix: String,
    metrics: SessionMetrics,
}

impl SessionLayer {
    pub(crate) fn new(cfg: &SessionConfig, key_prefix: &str, metrics: &Arc<Metrics>) -> SessionLayer {
        SessionLayer {
            cfg: cfg.clone(),
            codec: CookieCodec::new(cfg),
            key_prefix: key_prefix.to_string(),
            metrics: SessionMetrics::new(metrics),
        }
    }

    pub(crate) fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// `store` as one request of this layer uses it: timed and counted.
    pub(crate) fn calls<'a>(&'a self, store: &'a Store) -> StoreCalls<'a> {
        StoreCalls::new(store, &self.metrics.store)
    }

    fn key(&self, id: &str) -> String {
        let mut key = String::with_capacity(self.key_prefix.len() + id.len());
        key.push_str(&self.key_prefix);
        key.push_str(id);
        key
    }

    /// Request side: verifies the cookie, reads the session in one round trip (GETEX when
    /// `rolling`) and puts it in the request's session header. A request without a valid
    /// cookie needs no store read and carries `{}`. `request_id` is for log lines.
    ///
    /// A failed read is decided here by `on_store_error`: `"pass"` forwards without a session
    /// ([`SessionState::Unknown`]), `"fail"` returns the error (the proxy answers 503).
    pub(crate) async fn load(
        &self,
        store: &mut StoreCalls<'_>,
        headers: &mut HeaderMap,
        request_id: &str,
    ) -> Result<SessionState, StoreError> {
        let verified = match self.codec.read_cookie(headers) {
            CookieRead::Valid(v) => v,
            read => {
                if matches!(read, CookieRead::Rejected) {
                    self.metrics.metrics.cookie_rejected();
                }
                headers.insert(&self.cfg.header, protocol::empty_session());
                return Ok(SessionState::Anonymous);
            }
        };
        let refresh = self.cfg.rolling.then_some(self.cfg.max_age);
        let read = match store.get(&self.key(&verified.id), refresh).await {
            Ok(Some(read)) => read,
            Ok(None) => {
                // Strict ids: a signed id that is not in the store is a new visitor.
                headers.insert(&self.cfg.header, protocol::empty_session());
                return Ok(SessionState::Anonymous);
            }
            Err(error) => {
                return match self.cfg.on_store_error {
                    OnStoreError::Fail => Err(error),
                    OnStoreError::Pass => {
                        tracing::warn!(request_id, error = %error, "session store read failed; forwarding without a session");
                        Ok(SessionState::Unknown { id: verified.id })
                    }
                };
            }
        };
        let (header, sent) = match protocol::to_request_header(&read) {
            Ok(header) => (header, read.clone()),
            Err(_) => {
                tracing::warn!(request_id, "stored session is not a JSON object; treating it as empty");
                (protocol::empty_session(), Bytes::from_static(protocol::EMPTY_SESSION.as_bytes()))
            }
        };
        headers.insert(&self.cfg.header, header);
        Ok(SessionState::Live(Live { id: verified.id, read, sent, resign: verified.needs_resign }))
    }

    /// Response side: acts on the exact update and regenerate headers, writes the store and
    /// sets or clears the cookie. On error nothing claims a change that was not saved: the
    /// caller answers 502 or 503 instead of the upstream's response.
    pub(crate) async fn save(
        &self,
        store: &mut StoreCalls<'_>,
        state: SessionState,
        resp: &mut HeaderMap,
    ) -> Result<SessionEvent, SaveError> {
        let update = self.read_update(resp)?;
        let regenerate = resp.contains_key(&self.cfg.regenerate_header);
        let event = match state {
            SessionState::Anonymous => match update {
                Some(Update::Replace(text)) => self.create(store, &text, resp).await?,
                None if self.cfg.save_uninitialized => {
                    self.create(store, protocol::EMPTY_SESSION, resp).await?
                }
                // Nothing to destroy, nothing to move.
                Some(Update::Destroy) | None => SessionEvent::None,
            },
            SessionState::Unknown { id } => match update {
                Some(Update::Destroy) => self.destroy(store, &id, resp).await?,
                Some(Update::Replace(text)) if regenerate => self.regenerate(store, &id, &text, resp).await?,
                // The session may hold data the upstream never saw: its update starts a new
                // session rather than replace that data (strict ids).
                Some(Update::Replace(text)) => self.create(store, &text, resp).await?,
                // The store was unreachable on read: leave the unknown session alone.
                None => SessionEvent::None,
            },
            SessionState::Live(live) => match update {
                Some(Update::Destroy) => self.destroy(store, &live.id, resp).await?,
                Some(Update::Replace(text)) if regenerate => {
                    self.regenerate(store, &live.id, &text, resp).await?
                }
                Some(Update::Replace(text)) => {
                    store.set(&self.key(&live.id), &text, self.cfg.max_age).await?;
                    self.refresh_cookie(resp, &live);
                    SessionEvent::Updated
                }
                None if regenerate => {
                    // `load` keeps only values it served (JSON objects, so UTF-8) or `{}`.
                    let text = std::str::from_utf8(&live.sent).unwrap_or(protocol::EMPTY_SESSION);
                    self.regenerate(store, &live.id, text, resp).await?
                }
                None => {
                    self.refresh_cookie(resp, &live);
                    SessionEvent::Loaded
                }
            },
        };
        self.metrics.count(event);
        Ok(event)
    }

    /// A new session under a fresh id, and its cookie.
    async fn create(
        &self,
        store: &mut StoreCalls<'_>,
        text: &str,
        resp: &mut HeaderMap,
    ) -> Result<SessionEvent, StoreError> {
        let new = id::new_id();
        store.set(&self.key(&new), text, self.cfg.max_age).await?;
        self.set_cookie(resp, &new);
        Ok(SessionEvent::Created)
    }

    /// `text` under a fresh id, the old key deleted, and the new cookie.
    async fn regenerate(
        &self,
        store: &mut StoreCalls<'_>,
        old: &str,
        text: &str,
        resp: &mut HeaderMap,
    ) -> Result<SessionEvent, StoreError> {
        let new = id::new_id();
        store.rename_with(&self.key(old), &self.key(&new), text, self.cfg.max_age).await?;
        self.set_cookie(resp, &new);
        Ok(SessionEvent::Regenerated)
    }

    /// The key deleted and the cookie cleared.
    async fn destroy(
        &self,
        store: &mut StoreCalls<'_>,
        id: &str,
        resp: &mut HeaderMap,
    ) -> Result<SessionEvent, StoreError> {
        store.del(&self.key(id)).await?;
        resp.append(SET_COOKIE, self.codec.clear_cookie());
        Ok(SessionEvent::Destroyed)
    }

    /// A live session keeps its id; its cookie is sent again when `rolling` (a new Max-Age) or
    /// when it was signed with an old secret (secret rotation).
    fn refresh_cookie(&self, resp: &mut HeaderMap, live: &Live) {
        if self.cfg.rolling || live.resign {
            self.set_cookie(resp, &live.id);
        }
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
