//! Sessions: the header protocol of the README between the store, the cookie and the upstream.
//!
//! The proxy calls [`SessionLayer::load`] once before forwarding a request on a session route,
//! which says what [`SessionState`] the request's session is in, and [`SessionLayer::save`]
//! once on the upstream's response. The store-failure policy (`on_store_error`) is decided in
//! `load`, and nowhere else. Everything about cookies (`cookie`), ids (`id`) and header values
//! (`protocol`) is pure and lives in the submodules; `json` is the JavaScript value model that
//! merges concurrent changes; `calls` times the store commands.
//!
//! # Concurrent requests
//!
//! Every write of a session that was read is conditional: it replaces the stored value only if
//! the key still holds the exact text that was read. When another request changed the session
//! meanwhile, this response's change (against what its upstream was sent) is applied to the
//! session as it is now and written conditionally in turn, up to [`MAX_WRITE_TRIES`] times;
//! when the key is gone (destroyed, moved by a regenerate, expired), nothing is written and
//! the request is interrupted (409). New sessions are created only where no key is (`NX`).

pub(crate) mod calls;
pub(crate) mod cookie;
pub(crate) mod id;
pub(crate) mod index;
pub(crate) mod json;
pub(crate) mod protocol;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, SET_COOKIE};

use crate::config::{OnStoreError, Requirement, SessionConfig};
use crate::metrics::{Counter, Metrics};
use crate::store::{Compared, Store, StoreError};
use calls::{StoreCalls, StoreMetrics};
use cookie::{CookieCodec, CookieRead};
use index::Index;
use json::{Change, Js, JsObject};
use protocol::{Update, UpdateError};

/// How many conditional writes one response may make while other requests keep changing its
/// session; then it gives up with 503 and `Retry-After: 1`.
pub(crate) const MAX_WRITE_TRIES: usize = 5;

/// Fresh ids a new session tries before giving up. Two random 128-bit ids colliding is not
/// going to happen; the bound only keeps a store that answers every `NX` with "exists" (a
/// misbehaving proxy in between, say) from looping.
const MAX_CREATE_TRIES: usize = 3;

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

/// What the response side did: the access log's `session` field, and whether the response
/// sets the session cookie (a new or moved id, `rolling`, or a re-signed cookie; not a clearing
/// one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Saved {
    pub event: SessionEvent,
    pub cookie_set: bool,
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
    read: Bytes,
    /// What the upstream was sent, as stored JSON: `read`, or `{}` when that is not a JSON
    /// object (the session is treated as empty throughout; a regenerate moves `{}`).
    sent: Bytes,
    /// The cookie verified with a secret other than the first: re-sign it with the first.
    resign: bool,
}

/// Why the response side could not finish; the proxy maps each to its status code. In every
/// case nothing the client is told about was left half-written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SaveError {
    /// The upstream's session headers cannot be acted on (502).
    #[error("{0}")]
    Bad(#[from] BadHeaders),
    /// The write did not happen, so the client must not be told it did.
    #[error("session store write failed: {0}")]
    Store(#[from] StoreError),
    /// The session was destroyed or moved to another id after it was read: a request that
    /// started before a log-out never undoes it.
    #[error("the session was destroyed or moved while the request was in flight; nothing written")]
    Interrupted,
    /// Other requests kept changing the session through [`MAX_WRITE_TRIES`] tries.
    #[error("the session kept changing under {MAX_WRITE_TRIES} conditional writes; nothing written")]
    Contended,
}

/// Session headers from the upstream that cannot be acted on. Never holds their values.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BadHeaders {
    #[error("bad session update: {0}")]
    Update(UpdateError),
    #[error("bad session patch: {0}")]
    Patch(UpdateError),
    #[error("the upstream sent both a session update and a session patch")]
    UpdateAndPatch,
}

/// What the upstream's response asks for.
enum Requested {
    Nothing,
    Destroy,
    /// `x-session-update`: `text` is what to store when nothing changed concurrently.
    Replace {
        text: String,
        object: JsObject,
    },
    /// `x-session-patch`.
    Patch(JsObject),
}

/// This response's edit, for the session as it is in the store when the write comes.
enum Edit<'a> {
    /// Nothing: a regenerate moves the session as it is.
    None,
    /// What the response (`update`) changed against what its upstream was `sent`: worked out
    /// at the first conflict, as most writes meet none.
    Change {
        sent: JsObject,
        update: &'a JsObject,
        change: OnceLock<Change>,
    },
    Patch(&'a JsObject),
}

impl Edit<'_> {
    /// Applies the edit to `current`; whether that changed anything.
    fn apply(&self, current: &mut JsObject) -> bool {
        match self {
            Edit::None => false,
            Edit::Change { sent, update, change } => {
                change.get_or_init(|| Change::between(sent, update)).apply(current)
            }
            Edit::Patch(patch) => current.merge_patch(patch),
        }
    }
}

/// The session metrics' handles, resolved once per session layer.
struct SessionMetrics {
    created: Counter,
    updated: Counter,
    destroyed: Counter,
    regenerated: Counter,
    /// Conditional writes that met a concurrent change, by how they ended.
    merged: Counter,
    interrupted: Counter,
    exhausted: Counter,
    /// Updates and patches that changed nothing, so wrote nothing.
    skipped: Counter,
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
            merged: metrics.session_conflict("merged"),
            interrupted: metrics.session_conflict("interrupted"),
            exhausted: metrics.session_conflict("exhausted"),
            skipped: metrics.session_writes_skipped(),
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
    /// `session.index`, when set.
    index: Option<Index>,
    /// Removed from every client request: the protocol headers and the identity headers.
    request_strip: Vec<HeaderName>,
    /// Removed from every upstream response: the update, regenerate and patch headers.
    response_strip: Vec<HeaderName>,
}

impl SessionLayer {
    pub(crate) fn new(cfg: &SessionConfig, key_prefix: &str, metrics: &Arc<Metrics>) -> SessionLayer {
        SessionLayer {
            cfg: cfg.clone(),
            codec: CookieCodec::new(cfg),
            key_prefix: key_prefix.to_string(),
            metrics: SessionMetrics::new(metrics),
            index: cfg.index.as_ref().map(|pointer| Index::new(pointer, key_prefix, cfg.max_age)),
            request_strip: [&cfg.header, &cfg.update_header, &cfg.regenerate_header, &cfg.patch_header]
                .into_iter()
                .cloned()
                .chain(cfg.identity_headers.iter().map(|(name, _)| name.clone()))
                .collect(),
            response_strip: vec![
                cfg.update_header.clone(),
                cfg.regenerate_header.clone(),
                cfg.patch_header.clone(),
            ],
        }
    }

    /// The headers a client may never send, in any spelling: the protocol and identity
    /// headers.
    pub(crate) fn request_strip(&self) -> &[HeaderName] {
        &self.request_strip
    }

    /// The headers an upstream's response never passes on, in any spelling.
    pub(crate) fn response_strip(&self) -> &[HeaderName] {
        &self.response_strip
    }

    /// From the session as read: sets the identity headers (`[session.headers]`) on the
    /// request to the upstream, and says whether it meets the route's `requirement`. A request
    /// without a live session has no identity headers and meets no requirement.
    pub(crate) fn admit(
        &self,
        state: &SessionState,
        requirement: Option<&Requirement>,
        headers: &mut HeaderMap,
    ) -> bool {
        if requirement.is_none() && self.cfg.identity_headers.is_empty() {
            return true;
        }
        let SessionState::Live(live) = state else {
            return requirement.is_none();
        };
        // `sent` is a JSON object (what the upstream gets), so UTF-8.
        let text = std::str::from_utf8(&live.sent).unwrap_or(protocol::EMPTY_SESSION);
        for (name, pointer) in &self.cfg.identity_headers {
            if let Some(value) = json::lookup(text, pointer).and_then(protocol::identity_value) {
                headers.insert(name, value);
            }
        }
        requirement
            .is_none_or(|requirement| json::raw_meets(json::lookup(text, &requirement.pointer), requirement))
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
        if let (Some(ix), true) = (&self.index, self.cfg.rolling) {
            // The read gave the session a new TTL: its index set must outlive it too.
            if let Some(value) = ix.value_of_text(&read).filter(|v| ix.refresh_due(v)) {
                match store.index_touch(&ix.key(&value), ix.ttl()).await {
                    Ok(()) => ix.refreshed(&value),
                    Err(error) => {
                        tracing::warn!(request_id, error = %error, "could not refresh a session index set; the next request tries again")
                    }
                }
            }
        }
        Ok(SessionState::Live(Live { id: verified.id, read, sent, resign: verified.needs_resign }))
    }

    /// Response side: acts on the exact update, patch and regenerate headers, writes the store
    /// (conditionally, see the module docs) and sets or clears the cookie. On error nothing
    /// claims a change that was not saved: the caller answers 409, 502 or 503 instead of the
    /// upstream's response.
    pub(crate) async fn save(
        &self,
        store: &mut StoreCalls<'_>,
        state: SessionState,
        resp: &mut HeaderMap,
        request_id: &str,
    ) -> Result<Saved, SaveError> {
        let requested = self.read_request(resp)?;
        let regenerate = resp.contains_key(&self.cfg.regenerate_header);
        let resign = matches!(&state, SessionState::Live(live) if live.resign);
        let outcome = match state {
            SessionState::Anonymous => match requested {
                Requested::Replace { text, .. } => self.create(store, &text, resp).await,
                Requested::Patch(patch) => {
                    let mut object = JsObject::new();
                    object.merge_patch(&patch);
                    self.create(store, &object.to_text(), resp).await
                }
                Requested::Nothing if self.cfg.save_uninitialized => {
                    self.create(store, protocol::EMPTY_SESSION, resp).await
                }
                // Nothing to destroy, nothing to move.
                Requested::Destroy | Requested::Nothing => Ok(SessionEvent::None),
            },
            SessionState::Unknown { id } => match requested {
                Requested::Destroy => self.destroy(store, &id, None, resp, request_id).await,
                Requested::Replace { text, .. } if regenerate => {
                    self.move_unseen(store, &id, &text, resp).await
                }
                // The session may hold data the upstream never saw: its update starts a new
                // session rather than replace that data (strict ids).
                Requested::Replace { text, .. } => self.create(store, &text, resp).await,
                // A patch applies to the session as it is in the store now: read it again.
                Requested::Patch(patch) => {
                    let read = store.get(&self.key(&id), None).await?;
                    match read {
                        Some(read) => {
                            let sent = self.sent_of(&read, request_id);
                            let live = Live { id, read, sent, resign: false };
                            let requested = Requested::Patch(patch);
                            self.save_live(store, live, requested, regenerate, resp, request_id).await
                        }
                        None => {
                            let mut object = JsObject::new();
                            object.merge_patch(&patch);
                            self.create(store, &object.to_text(), resp).await
                        }
                    }
                }
                // The store was unreachable on read: leave the unknown session alone.
                Requested::Nothing => Ok(SessionEvent::None),
            },
            SessionState::Live(live) => {
                self.save_live(store, live, requested, regenerate, resp, request_id).await
            }
        };
        match &outcome {
            Ok(event) => self.metrics.count(*event),
            Err(SaveError::Interrupted) => {
                self.metrics.interrupted.inc();
            }
            Err(SaveError::Contended) => {
                self.metrics.exhausted.inc();
            }
            Err(_) => {}
        }
        outcome.map(|event| Saved { event, cookie_set: self.sets_cookie(event, resign) })
    }

    /// Whether a response that ended in `event` carries the session cookie: a new id always
    /// does; a kept one when `rolling`, or when its cookie is re-signed with the first secret
    /// (`refresh_cookie`).
    fn sets_cookie(&self, event: SessionEvent, resign: bool) -> bool {
        match event {
            SessionEvent::Created | SessionEvent::Regenerated => true,
            SessionEvent::Loaded | SessionEvent::Updated => self.cfg.rolling || resign,
            SessionEvent::None | SessionEvent::Destroyed => false,
        }
    }

    async fn save_live(
        &self,
        store: &mut StoreCalls<'_>,
        live: Live,
        requested: Requested,
        regenerate: bool,
        resp: &mut HeaderMap,
        request_id: &str,
    ) -> Result<SessionEvent, SaveError> {
        // The session as this response would leave it if nothing changed meanwhile, and its
        // edit for the session as it is when the write comes; `None`: the response changed
        // nothing.
        let (text, edit) = match &requested {
            Requested::Destroy => {
                return self.destroy(store, &live.id, Some(&live.read), resp, request_id).await
            }
            Requested::Nothing => (None, Edit::None),
            Requested::Replace { text, object } => {
                // An update that equals (as a JSON value) what the upstream was sent: legacy
                // apps often echo the whole session on every response.
                if text.as_bytes() == live.sent {
                    (None, Edit::None)
                } else {
                    let sent = Js::parse_object(&live.sent).unwrap_or_default();
                    if *object == sent {
                        (None, Edit::None)
                    } else {
                        (Some(text.clone()), Edit::Change { sent, update: object, change: OnceLock::new() })
                    }
                }
            }
            Requested::Patch(patch) => {
                let mut object = Js::parse_object(&live.sent).unwrap_or_default();
                if object.merge_patch(patch) {
                    (Some(object.to_text()), Edit::Patch(patch))
                } else {
                    (None, Edit::Patch(patch))
                }
            }
        };
        if text.is_none() && !matches!(requested, Requested::Nothing) {
            self.metrics.skipped.inc();
        }
        if regenerate {
            // `load` keeps only values it served (JSON objects, so UTF-8) or `{}`.
            let text = text.unwrap_or_else(|| String::from_utf8_lossy(&live.sent).into_owned());
            return self.regenerate(store, &live, text, &edit, resp, request_id).await;
        }
        let Some(text) = text else {
            self.refresh_cookie(resp, &live);
            return Ok(SessionEvent::Loaded);
        };
        self.write_back(store, &live, text, &edit, request_id).await?;
        self.refresh_cookie(resp, &live);
        Ok(SessionEvent::Updated)
    }

    /// Writes `text` over the live session if it still holds what was read; else applies
    /// `edit` to the session as it is now and tries again.
    async fn write_back(
        &self,
        store: &mut StoreCalls<'_>,
        live: &Live,
        mut text: String,
        edit: &Edit<'_>,
        request_id: &str,
    ) -> Result<(), SaveError> {
        let key = self.key(&live.id);
        let mut expected = live.read.clone();
        let mut conflicted = false;
        for _ in 0..MAX_WRITE_TRIES {
            let indexed = self.index_before(store, &live.id, Some(&expected), &text).await?;
            match store.replace_if(&key, &expected, &text, self.cfg.max_age).await? {
                Compared::Done => {
                    if conflicted {
                        self.metrics.merged.inc();
                    }
                    self.index_after(store, &live.id, indexed, request_id).await;
                    return Ok(());
                }
                Compared::Gone => return Err(SaveError::Interrupted),
                Compared::Changed(current) => {
                    conflicted = true;
                    let mut object = self.stored_object(&current, request_id);
                    if !edit.apply(&mut object) {
                        // The session holds this response's change already.
                        self.metrics.merged.inc();
                        return Ok(());
                    }
                    text = object.to_text();
                    expected = current;
                }
            }
        }
        Err(SaveError::Contended)
    }

    /// Moves the live session to a fresh id: `text` (the session as read, with this
    /// response's edit) is written under the new id first, then the old key is deleted if it
    /// still holds what was read; when another request changed it meanwhile, the new key gets
    /// the session as it is now, with `edit`, and the delete is tried again. Every command
    /// touches one key, so the two ids may live on different cluster nodes.
    async fn regenerate(
        &self,
        store: &mut StoreCalls<'_>,
        live: &Live,
        text: String,
        edit: &Edit<'_>,
        resp: &mut HeaderMap,
        request_id: &str,
    ) -> Result<SessionEvent, SaveError> {
        let old = self.key(&live.id);
        let new = self.create_fresh(store, &text).await?;
        let new_key = self.key(&new);
        let mut expected = live.read.clone();
        let mut written = text;
        let mut conflicted = false;
        for _ in 0..MAX_WRITE_TRIES {
            let compared = match store.delete_if(&old, &expected).await {
                Ok(compared) => compared,
                Err(e) => {
                    self.discard(store, &new_key, request_id).await;
                    return Err(e.into());
                }
            };
            match compared {
                Compared::Done => {
                    if conflicted {
                        self.metrics.merged.inc();
                    }
                    let old_value = self.index.as_ref().and_then(|ix| ix.value_of_text(&expected));
                    self.index_after(store, &live.id, (old_value, None), request_id).await;
                    self.set_cookie(resp, &new);
                    return Ok(SessionEvent::Regenerated);
                }
                Compared::Gone => {
                    self.discard(store, &new_key, request_id).await;
                    return Err(SaveError::Interrupted);
                }
                Compared::Changed(current) => {
                    conflicted = true;
                    let mut object = self.stored_object(&current, request_id);
                    edit.apply(&mut object);
                    let text = object.to_text();
                    let indexed = match self.index_before(store, &new, Some(written.as_bytes()), &text).await
                    {
                        Ok(indexed) => indexed,
                        Err(e) => {
                            self.discard(store, &new_key, request_id).await;
                            return Err(e.into());
                        }
                    };
                    if let Err(e) = store.set(&new_key, &text, self.cfg.max_age).await {
                        self.discard(store, &new_key, request_id).await;
                        return Err(e.into());
                    }
                    self.index_after(store, &new, indexed, request_id).await;
                    written = text;
                    expected = current;
                }
            }
        }
        self.discard(store, &new_key, request_id).await;
        Err(SaveError::Contended)
    }

    /// A regenerate of a session whose read failed (`on_store_error = "pass"`): its update
    /// goes under a fresh id and the old key, unseen, is deleted.
    async fn move_unseen(
        &self,
        store: &mut StoreCalls<'_>,
        old: &str,
        text: &str,
        resp: &mut HeaderMap,
    ) -> Result<SessionEvent, SaveError> {
        let new = self.create_fresh(store, text).await?;
        if let Err(e) = store.del(&self.key(old)).await {
            // Best effort: the new key expires on its own if this fails too.
            let _ = store.del(&self.key(&new)).await;
            return Err(e.into());
        }
        self.set_cookie(resp, &new);
        Ok(SessionEvent::Regenerated)
    }

    /// A new session under a fresh id, and its cookie.
    async fn create(
        &self,
        store: &mut StoreCalls<'_>,
        text: &str,
        resp: &mut HeaderMap,
    ) -> Result<SessionEvent, SaveError> {
        let new = self.create_fresh(store, text).await?;
        self.set_cookie(resp, &new);
        Ok(SessionEvent::Created)
    }

    /// Writes `text` under a fresh id where no key is (`NX`), and returns the id.
    async fn create_fresh(&self, store: &mut StoreCalls<'_>, text: &str) -> Result<String, StoreError> {
        for _ in 0..MAX_CREATE_TRIES {
            let new = id::new_id();
            self.index_before(store, &new, None, text).await?;
            if store.create(&self.key(&new), text, self.cfg.max_age).await? {
                return Ok(new);
            }
        }
        Err(StoreError::Command(format!("SET NX found {MAX_CREATE_TRIES} fresh ids taken")))
    }

    /// Deletes a key this request wrote and no client knows of, after a failed move; if that
    /// fails too, the key expires on its own.
    async fn discard(&self, store: &mut StoreCalls<'_>, key: &str, request_id: &str) {
        if let Err(e) = store.del(key).await {
            tracing::warn!(request_id, error = %e, "could not delete the new key of a failed regenerate; it expires on its own");
        }
    }

    /// The key deleted and the cookie cleared; `read` (what the session held, when known)
    /// says which index set it leaves.
    async fn destroy(
        &self,
        store: &mut StoreCalls<'_>,
        id: &str,
        read: Option<&[u8]>,
        resp: &mut HeaderMap,
        request_id: &str,
    ) -> Result<SessionEvent, SaveError> {
        store.del(&self.key(id)).await?;
        let old = self.index.as_ref().zip(read).and_then(|(ix, read)| ix.value_of_text(read));
        self.index_after(store, id, (old, None), request_id).await;
        resp.append(SET_COOKIE, self.codec.clear_cookie());
        Ok(SessionEvent::Destroyed)
    }

    /// Before session `id` is written with `text` over `before` (`None`: a new session): with
    /// an index, the id goes into the set of the new value first, and the set of an unchanged
    /// value is refreshed when due (see `index`). Returns the old and the new value, for
    /// [`SessionLayer::index_after`] once the write is done.
    async fn index_before(
        &self,
        store: &mut StoreCalls<'_>,
        id: &str,
        before: Option<&[u8]>,
        text: &str,
    ) -> Result<(Option<String>, Option<String>), StoreError> {
        let Some(ix) = &self.index else { return Ok((None, None)) };
        let old = before.and_then(|before| ix.value_of_text(before));
        let new = ix.value_of_text(text.as_bytes());
        if let Some(value) = &new {
            if old.as_ref() != Some(value) {
                store.index_add(&ix.key(value), id, ix.ttl()).await?;
                ix.refreshed(value);
            } else if ix.refresh_due(value) {
                store.index_touch(&ix.key(value), ix.ttl()).await?;
                ix.refreshed(value);
            }
        }
        Ok((old, new))
    }

    /// After session `id` was written (or deleted): with an index, the id leaves the set of
    /// its old value. A failure only leaves an id that readers of the index drop.
    async fn index_after(
        &self,
        store: &mut StoreCalls<'_>,
        id: &str,
        (old, new): (Option<String>, Option<String>),
        request_id: &str,
    ) {
        let (Some(ix), Some(old)) = (&self.index, old) else { return };
        if new.as_ref() == Some(&old) {
            return;
        }
        if let Err(error) = store.index_remove(&ix.key(&old), id).await {
            tracing::warn!(request_id, error = %error, "could not take a session out of its old index set; readers of the index drop it");
        }
    }

    /// A stored value as an object: one that is not a JSON object counts as empty.
    fn stored_object(&self, stored: &[u8], request_id: &str) -> JsObject {
        Js::parse_object(stored).unwrap_or_else(|| {
            tracing::warn!(request_id, "stored session is not a JSON object; treating it as empty");
            JsObject::new()
        })
    }

    /// What the upstream is sent for a stored value: the value, or `{}` when it is not a JSON
    /// object.
    fn sent_of(&self, stored: &Bytes, request_id: &str) -> Bytes {
        match Js::parse_object(stored) {
            Some(_) => stored.clone(),
            None => {
                tracing::warn!(request_id, "stored session is not a JSON object; treating it as empty");
                Bytes::from_static(protocol::EMPTY_SESSION.as_bytes())
            }
        }
    }

    /// A live session keeps its id; its cookie is sent again when `rolling` (a new Max-Age) or
    /// when it was signed with an old secret (secret rotation).
    fn refresh_cookie(&self, resp: &mut HeaderMap, live: &Live) {
        if self.cfg.rolling || live.resign {
            self.set_cookie(resp, &live.id);
        }
    }

    /// The update and patch headers by their exact names. More than one of either, or both,
    /// is ambiguous and refused.
    fn read_request(&self, resp: &HeaderMap) -> Result<Requested, BadHeaders> {
        let update = single(resp, &self.cfg.update_header).map_err(BadHeaders::Update)?;
        let patch = single(resp, &self.cfg.patch_header).map_err(BadHeaders::Patch)?;
        match (update, patch) {
            (Some(_), Some(_)) => Err(BadHeaders::UpdateAndPatch),
            (Some(value), None) => match protocol::parse_update(value, self.cfg.max_bytes) {
                Ok(Update::Destroy) => Ok(Requested::Destroy),
                Ok(Update::Replace { text, object }) => Ok(Requested::Replace { text, object }),
                Err(e) => Err(BadHeaders::Update(e)),
            },
            (None, Some(value)) => protocol::parse_patch(value, self.cfg.max_bytes)
                .map(Requested::Patch)
                .map_err(BadHeaders::Patch),
            (None, None) => Ok(Requested::Nothing),
        }
    }

    fn set_cookie(&self, resp: &mut HeaderMap, id: &str) {
        let value: HeaderValue = self.codec.set_cookie(id);
        resp.append(SET_COOKIE, value);
    }
}

/// Why an operation on the index cannot be done.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IndexError {
    #[error("session.index is not set, so there is no index of sessions")]
    NotConfigured,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Session management (the README): what operators do to sessions, through the admin
/// endpoints and the `sessions` command line.
impl SessionLayer {
    /// The stored text of session `id` and its remaining TTL in seconds.
    pub(crate) async fn inspect(
        &self,
        store: &mut StoreCalls<'_>,
        id: &str,
    ) -> Result<Option<(Bytes, u64)>, StoreError> {
        store.inspect(&self.key(id)).await
    }

    /// Deletes session `id`, and takes it out of its index set; `false` when there was none.
    pub(crate) async fn revoke(&self, store: &mut StoreCalls<'_>, id: &str) -> Result<bool, StoreError> {
        let key = self.key(id);
        let Some((data, _)) = store.inspect(&key).await? else {
            return Ok(false);
        };
        store.del(&key).await?;
        let old = self.index.as_ref().and_then(|ix| ix.value_of_text(&data));
        self.index_after(store, id, (old, None), "-").await;
        Ok(true)
    }

    /// The live sessions holding `value` at the index pointer, with their TTLs, by id. Ids
    /// whose session is gone (expired, destroyed) or holds another value now are dropped
    /// from the set as they are met.
    pub(crate) async fn index_sessions(
        &self,
        store: &mut StoreCalls<'_>,
        value: &str,
    ) -> Result<Vec<(String, u64)>, IndexError> {
        let ix = self.index.as_ref().ok_or(IndexError::NotConfigured)?;
        let set = ix.key(value);
        let mut live = Vec::new();
        for id in store.index_members(&set).await? {
            match store.inspect(&self.key(&id)).await? {
                Some((data, ttl)) if ix.value_of_text(&data).as_deref() == Some(value) => {
                    live.push((id, ttl))
                }
                _ => store.index_remove(&set, &id).await?,
            }
        }
        live.sort();
        Ok(live)
    }

    /// Destroys every live session holding `value` ("log this user out everywhere"); how
    /// many. A session that stops holding the value meanwhile is left alone.
    pub(crate) async fn revoke_index(
        &self,
        store: &mut StoreCalls<'_>,
        value: &str,
    ) -> Result<usize, IndexError> {
        let ix = self.index.as_ref().ok_or(IndexError::NotConfigured)?;
        let set = ix.key(value);
        let mut revoked = 0;
        for id in store.index_members(&set).await? {
            let key = self.key(&id);
            let mut current = store.inspect(&key).await?.map(|(data, _)| data);
            for _ in 0..MAX_WRITE_TRIES {
                let Some(data) = current.take().filter(|d| ix.value_of_text(d).as_deref() == Some(value))
                else {
                    break;
                };
                match store.delete_if(&key, &data).await? {
                    Compared::Done => {
                        revoked += 1;
                        break;
                    }
                    Compared::Changed(now) => current = Some(now),
                    Compared::Gone => break,
                }
            }
            store.index_remove(&set, &id).await?;
        }
        Ok(revoked)
    }
}

/// The one value of header `name`, if any; more than one is ambiguous.
fn single<'h>(
    headers: &'h HeaderMap,
    name: &http::HeaderName,
) -> Result<Option<&'h HeaderValue>, UpdateError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(UpdateError::Duplicate);
    }
    Ok(first)
}
