//! Sessions end to end: the header protocol, the storage and cookie format and the error table
//! of the README, through a running proxy, an in-process upstream and a real `redis-server` that
//! each test starts on a free port.
//!
//! The behaviour bodies take a [`Backend`] and run against Redis (values and TTLs read back
//! with `redis-cli`), against the embedded `memory://` store (read back through the proxy
//! itself) and, for the lifecycle, against a TLS-only Redis with a password (the Upstash
//! path). Redis-only tests cover what only Redis has: Remix's own keys, values written by
//! others, a store that fails between the read and the write. Redis down, frozen or cut off
//! as a whole is in `store_faults.rs`.
//!
//! The upstream is scripted by the request: every `reply-NAME: VALUE` header the test sends is
//! answered with `NAME: VALUE`, and the response body lists the headers the upstream received.
//! No timed assertions: waits are bounded retry loops, timeouts only guard against hangs, and
//! TTL checks allow a generous slack.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use common::redis_server::RedisServer;
use common::*;
use cookie::time::OffsetDateTime;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use ring::hmac;

/// The first (signing) secret of most tests: the one of the README's test vector.
const SECRET: &str = "s3cr3t";
const KEY_PREFIX: &str = "_session:";
const COOKIE_NAME: &str = "__session";
/// `session.max_age` in these tests: large enough that TTLs stay far from it during a test.
const MAX_AGE: u64 = 3600;
/// How far below `MAX_AGE` a TTL may be and still count as freshly set: covers a slow,
/// loaded machine many times over, while a TTL that was not refreshed is far below it.
const TTL_SLACK: i64 = 300;
/// The store timeout while Redis is meant to be healthy: far above any real round trip, so a
/// loaded machine never turns a slow answer into a 503.
const HEALTHY_STORE_TIMEOUT_MS: u64 = 5000;
/// The store timeout of tests that make the store fail (the README's default): each failing
/// call costs this long, and a healthy round trip stays far below it even on a loaded machine.
const FAILING_STORE_TIMEOUT_MS: u64 = 1000;
/// Any single request taking longer than this is a hang: the test fails.
const HANG_GUARD: Duration = Duration::from_secs(20);
/// How long the proxy may take to serve sessions again after Redis is back.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between recovery probes.
const RECOVERY_POLL: Duration = Duration::from_millis(50);
/// Request headers with this prefix are sent back by the upstream, without it, as response
/// headers.
const REPLY_PREFIX: &str = "reply-";
/// A request carrying this header makes the upstream stop Redis before it answers: a store
/// failure between the session read and the write.
const STOP_REDIS: &str = "x-test-stop-redis";
/// The TLS server's password, with characters that must be percent-encoded in the URL.
const TLS_PASSWORD: &str = "upstash token/+=";
/// the README's test vector: id `0123456789abcdef` signed with `s3cr3t`.
const VECTOR_ID: &str = "0123456789abcdef";
const VECTOR_COOKIE: &str =
    "__session=IjAxMjM0NTY3ODlhYmNkZWYi.PCyAmkvqqQJNQ7UMzWFVYtGWrV2Ri%2Bt8aeKpCdQUKdU";
/// The proxy's session cookie is only looked at up to this many bytes (the README: oversized
/// cookies are a new visitor).
const MAX_COOKIE_VALUE_BYTES: usize = 4096;

/// `encodeURIComponent`'s set, as Remix's cookie serializer uses it.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

// ---------------------------------------------------------------------------------------------
// The store under test
// ---------------------------------------------------------------------------------------------

/// Where the proxy keeps sessions in a test.
enum Backend {
    Redis(Arc<Mutex<RedisServer>>),
    Memory,
}

impl Backend {
    fn redis() -> Backend {
        Backend::Redis(Arc::new(Mutex::new(RedisServer::start())))
    }

    fn redis_tls() -> Backend {
        Backend::Redis(Arc::new(Mutex::new(RedisServer::start_tls(TLS_PASSWORD))))
    }

    fn memory() -> Backend {
        Backend::Memory
    }

    /// The `[store]` table for this backend.
    fn store_toml(&self, timeout_ms: u64) -> String {
        match self {
            Backend::Memory => format!("[store]\nurl = \"memory://\"\ntimeout_ms = {timeout_ms}\n"),
            Backend::Redis(server) => {
                let server = lock(server);
                let ca = server
                    .ca_file()
                    .map(|ca| format!("ca_file = \"{}\"\n", ca.display()))
                    .unwrap_or_default();
                format!(
                    "[store]\nurl = \"{}\"\nkey_prefix = \"{KEY_PREFIX}\"\ntimeout_ms = {timeout_ms}\n{ca}",
                    server.url()
                )
            }
        }
    }
}

fn lock(server: &Mutex<RedisServer>) -> MutexGuard<'_, RedisServer> {
    server.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The session settings a test changes; everything else is the default.
#[derive(Clone)]
struct Opts {
    secrets: Vec<&'static str>,
    rolling: bool,
    save_uninitialized: bool,
    max_bytes: usize,
    on_store_error: &'static str,
    store_timeout_ms: u64,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            secrets: vec![SECRET],
            rolling: false,
            save_uninitialized: false,
            max_bytes: 16384,
            on_store_error: "fail",
            store_timeout_ms: HEALTHY_STORE_TIMEOUT_MS,
        }
    }
}

/// A proxy with a session route (`/`) and a non-session route (`/static/`), both to one
/// scripted upstream, over one store.
struct Env {
    backend: Backend,
    proxy: TestProxy,
    upstream: Upstream,
    /// Requests the upstream has received.
    hits: Arc<AtomicUsize>,
    opts: Opts,
}

impl Env {
    async fn start(backend: Backend, opts: Opts) -> Env {
        let redis = match &backend {
            Backend::Redis(server) => Some(server.clone()),
            Backend::Memory => None,
        };
        let (upstream, hits) = scripted_upstream(redis).await;
        let proxy = start_proxy(&Env::toml(&backend, &opts, &upstream)).await;
        let env = Env { backend, proxy, upstream, hits, opts };
        // The Redis store connects in the background; a test starts once it serves.
        env.wait_until_serving().await;
        env.hits.store(0, Ordering::SeqCst);
        env
    }

    fn toml(backend: &Backend, opts: &Opts, upstream: &Upstream) -> String {
        let secrets: Vec<String> = opts.secrets.iter().map(|s| format!("\"{s}\"")).collect();
        format!(
            r#"
{store}
[session]
secrets = [{secrets}]
max_age = {MAX_AGE}
rolling = {rolling}
save_uninitialized = {save_uninitialized}
max_bytes = {max_bytes}
on_store_error = "{on_store_error}"

[[route]]
prefix = "/"
upstream = "{upstream}"

[[route]]
prefix = "/static/"
upstream = "{upstream}"
session = false
"#,
            store = backend.store_toml(opts.store_timeout_ms),
            secrets = secrets.join(", "),
            rolling = opts.rolling,
            save_uninitialized = opts.save_uninitialized,
            max_bytes = opts.max_bytes,
            on_store_error = opts.on_store_error,
            upstream = upstream.url(),
        )
    }

    /// Applies new session settings to the running proxy (a config reload: same store).
    fn reconfigure(&mut self, opts: Opts) {
        self.proxy
            .reloader
            .apply(config(&Env::toml(&self.backend, &opts, &self.upstream)))
            .expect("reload applies");
        self.opts = opts;
    }

    fn redis(&self) -> Option<MutexGuard<'_, RedisServer>> {
        match &self.backend {
            Backend::Redis(server) => Some(lock(server)),
            Backend::Memory => None,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// A request on the session route.
    async fn call(&self, cookie: Option<&str>, reply: &[(&str, &str)]) -> Answer {
        self.request("/app", cookie, reply, &[]).await
    }

    /// A request to `path` with a `Cookie` header, headers the upstream answers with, and
    /// extra request headers. Every answer is checked not to carry a protocol response header.
    async fn request(
        &self,
        path: &str,
        cookie: Option<&str>,
        reply: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> Answer {
        let mut builder = Request::get(self.proxy.url(path));
        if let Some(cookie) = cookie {
            builder = builder.header("cookie", cookie);
        }
        for (name, value) in reply {
            // Raw bytes: updates may carry UTF-8 as they are.
            builder = builder
                .header(format!("{REPLY_PREFIX}{name}"), HeaderValue::from_bytes(value.as_bytes()).unwrap());
        }
        for (name, value) in extra {
            builder = builder.header(*name, *value);
        }
        let req = builder.body(empty()).unwrap();
        let (status, headers, body) = match tokio::time::timeout(HANG_GUARD, send(req)).await {
            Ok(answer) => answer,
            Err(_) => panic!("request to {path} did not finish within {HANG_GUARD:?}"),
        };
        let answer = Answer { status, headers, body };
        answer.assert_no_protocol_headers();
        answer
    }

    /// Creates a session holding `value` (compact JSON) and checks it landed.
    async fn create(&self, value: &str) -> Issued {
        let answer = self.call(None, &[("x-session-update", value)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let issued = answer.issued(self.opts.secrets[0]);
        self.assert_stored(&issued.id, Some(value)).await;
        issued
    }

    /// The session text stored under `id`, or `None` when there is none. Redis: read with
    /// `redis-cli`, exactly as stored. Memory: read through the proxy with a cookie signed in
    /// the test, so this is the request header form (ASCII-escaped), and a stored `{}` reads
    /// as `None` (the bodies never store `{}` but in `save_uninitialized`, which checks it by
    /// the absence of a new cookie instead).
    async fn stored(&self, id: &str) -> Option<String> {
        if let Some(redis) = self.redis() {
            let key = format!("{KEY_PREFIX}{id}");
            return match redis.cli(&["EXISTS", &key]).as_str() {
                "0" => None,
                "1" => Some(redis.cli(&["GET", &key])),
                other => panic!("EXISTS {key}: unexpected redis-cli output {other:?}"),
            };
        }
        let cookie = format!("{COOKIE_NAME}={}", sign(id, self.opts.secrets[0]));
        let answer = self.request("/readback", Some(&cookie), &[], &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.session().filter(|session| *session != "{}").map(str::to_owned)
    }

    /// Checks what is stored under `id`; `expected` is the exact stored text.
    async fn assert_stored(&self, id: &str, expected: Option<&str>) {
        let expected = match self.backend {
            Backend::Redis(_) => expected.map(str::to_owned),
            Backend::Memory => expected.map(ascii_escape),
        };
        assert_eq!(self.stored(id).await, expected, "session {id}");
    }

    /// The key's TTL in seconds (Redis only).
    fn ttl(&self, id: &str) -> Option<i64> {
        let redis = self.redis()?;
        let out = redis.cli(&["TTL", &format!("{KEY_PREFIX}{id}")]);
        Some(out.parse().unwrap_or_else(|_| panic!("TTL: unexpected redis-cli output {out:?}")))
    }

    /// Checks (Redis only) that the key was just given `max_age` as its TTL.
    fn assert_fresh_ttl(&self, id: &str) {
        if let Some(ttl) = self.ttl(id) {
            let max_age = i64::try_from(MAX_AGE).unwrap();
            assert!((max_age - TTL_SLACK..=max_age).contains(&ttl), "TTL {ttl}, expected about {max_age}");
        }
    }

    /// Number of keys in Redis; `None` for the memory store.
    fn key_count(&self) -> Option<usize> {
        self.redis().map(|redis| redis.cli(&["DBSIZE"]).parse().unwrap())
    }

    /// Polls until a request that needs a store read succeeds again. The probe's id is never
    /// stored and its `null` update writes nothing, whatever the settings
    /// (`save_uninitialized` included).
    async fn wait_until_serving(&self) {
        let probe = format!("{COOKIE_NAME}={}", sign("recovery-probe", self.opts.secrets[0]));
        let started = Instant::now();
        loop {
            let answer = self.call(Some(&probe), &[("x-session-update", "null")]).await;
            // With `on_store_error = "pass"` a failed read is a 200 without `x-session`.
            if answer.status == StatusCode::OK && answer.session().is_some() {
                return;
            }
            assert!(
                matches!(answer.status, StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE),
                "{}",
                answer.status
            );
            assert!(
                started.elapsed() < RECOVERY_DEADLINE,
                "the proxy did not recover within {RECOVERY_DEADLINE:?}"
            );
            tokio::time::sleep(RECOVERY_POLL).await;
        }
    }
}

/// The scripted upstream: answers every `reply-NAME: VALUE` request header with `NAME: VALUE`,
/// lists the request headers it got in the body (`name: value` lines), counts requests, and
/// stops `redis` first when asked by [`STOP_REDIS`].
async fn scripted_upstream(redis: Option<Arc<Mutex<RedisServer>>>) -> (Upstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let up = upstream(move |req: Request<Incoming>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let redis = redis.clone();
        async move {
            if req.headers().contains_key(STOP_REDIS) {
                let server = redis.expect("only Redis tests stop Redis");
                // RedisServer::stop blocks until the process is gone.
                tokio::task::spawn_blocking(move || lock(&server).stop()).await.unwrap();
            }
            let mut resp = Response::builder();
            let mut text = String::new();
            for (name, value) in req.headers() {
                if let Some(reply) = name.as_str().strip_prefix(REPLY_PREFIX) {
                    resp = resp.header(reply, value.clone());
                }
                text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
            }
            resp.body(full(text)).unwrap()
        }
    })
    .await;
    (up, hits)
}

// ---------------------------------------------------------------------------------------------
// Answers, cookies and Remix's signing, written from the format in the README
// ---------------------------------------------------------------------------------------------

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    /// The upstream's list of the request headers it received, or the proxy's error text.
    body: String,
}

/// A session cookie the proxy issued.
struct Issued {
    /// `__session=VALUE`, as a browser sends it back.
    pair: String,
    id: String,
}

impl Answer {
    /// The `x-session` header the upstream received.
    fn session(&self) -> Option<&str> {
        echoed(&self.body, "x-session")
    }

    /// Every request header the upstream received whose name is a protocol header name in any
    /// spelling, as `name: value` lines.
    fn protocol_headers_seen_upstream(&self) -> Vec<&str> {
        self.body
            .lines()
            .filter(|line| line.split_once(": ").is_some_and(|(name, _)| is_protocol_name(name)))
            .collect()
    }

    /// The `Set-Cookie` values for the session cookie.
    fn session_cookies(&self) -> Vec<&str> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .filter(|v| v.starts_with(&format!("{COOKIE_NAME}=")))
            .collect()
    }

    fn assert_no_session_cookie(&self) {
        assert!(self.session_cookies().is_empty(), "unexpected Set-Cookie: {:?}", self.session_cookies());
    }

    /// Exactly one session `Set-Cookie`, a live one: checks every attribute and the Remix
    /// format (verifies with `secret`), and returns the cookie and its id.
    fn issued(&self, secret: &str) -> Issued {
        let cookies = self.session_cookies();
        assert_eq!(cookies.len(), 1, "expected one session Set-Cookie: {cookies:?}");
        let set = cookie::Cookie::parse(cookies[0]).unwrap();
        assert_eq!(set.max_age(), Some(cookie::time::Duration::seconds(i64::try_from(MAX_AGE).unwrap())));
        let expires = set.expires_datetime().expect("Expires");
        assert!(expires > OffsetDateTime::now_utc(), "Expires {expires} is not in the future");
        assert_eq!(set.path(), Some("/"));
        assert_eq!(set.http_only(), Some(true));
        assert_eq!(set.secure(), Some(true));
        assert_eq!(set.same_site(), Some(cookie::SameSite::Lax));
        let value = set.value();
        let id =
            remix_unsign(value, &[secret]).unwrap_or_else(|| panic!("{value} does not verify with {secret}"));
        assert!(
            id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "new ids are 32 lowercase hex characters: {id}"
        );
        Issued { pair: format!("{COOKIE_NAME}={value}"), id }
    }

    /// Exactly one session `Set-Cookie`, the one that clears it: empty value, `Max-Age=0`, an
    /// `Expires` in the past, and the path and flags of the live cookie (browsers match on
    /// them).
    fn assert_cleared(&self) {
        let cookies = self.session_cookies();
        assert_eq!(cookies.len(), 1, "expected one session Set-Cookie: {cookies:?}");
        let set = cookie::Cookie::parse(cookies[0]).unwrap();
        assert_eq!(set.value(), "");
        assert_eq!(set.max_age(), Some(cookie::time::Duration::ZERO));
        let expires = set.expires_datetime().expect("Expires");
        assert!(expires < OffsetDateTime::now_utc(), "Expires {expires} is not in the past");
        assert_eq!(set.path(), Some("/"));
        assert_eq!(set.http_only(), Some(true));
        assert_eq!(set.secure(), Some(true));
    }

    /// The update and regenerate headers never reach the client, in any spelling.
    fn assert_no_protocol_headers(&self) {
        for name in self.headers.keys() {
            let normalized = name.as_str().replace('_', "-");
            assert!(
                !["x-session-update", "x-session-regenerate", "x-session-patch"]
                    .contains(&normalized.as_str()),
                "{name} reached the client"
            );
        }
    }
}

/// Whether a header name is one of the four protocol names by the README's comparison.
fn is_protocol_name(name: &str) -> bool {
    let normalized = name.to_ascii_lowercase().replace('_', "-");
    ["x-session", "x-session-update", "x-session-regenerate", "x-session-patch"]
        .contains(&normalized.as_str())
}

/// A signed cookie value for `id`, percent-encoded for a `Cookie` header: what Remix's
/// `createCookie` with `secrets: [secret]` writes.
fn sign(id: &str, secret: &str) -> String {
    sign_payload(serde_json::to_string(id).unwrap().as_bytes(), secret)
}

/// As [`sign`], for any payload bytes (a non-string JSON payload, padded JSON).
fn sign_payload(json: &[u8], secret: &str) -> String {
    let payload = STANDARD.encode(json);
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let signature = STANDARD_NO_PAD.encode(hmac::sign(&key, payload.as_bytes()));
    utf8_percent_encode(&format!("{payload}.{signature}"), URI_COMPONENT).to_string()
}

/// Remix's `unsign` + `decodeCookieValue`, written independently of the proxy: the id a
/// percent-encoded cookie value carries if it verifies with one of `secrets`.
fn remix_unsign(encoded: &str, secrets: &[&str]) -> Option<String> {
    let value = percent_decode_str(encoded).decode_utf8().ok()?;
    let (payload, signature) = value.rsplit_once('.')?;
    let verified = secrets.iter().any(|secret| {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        STANDARD_NO_PAD.encode(hmac::sign(&key, payload.as_bytes())) == signature
    });
    if !verified {
        return None;
    }
    let json = STANDARD.decode(payload).ok()?;
    serde_json::from_slice::<serde_json::Value>(&json).ok()?.as_str().map(str::to_owned)
}

/// The stored text as the upstream receives it: non-ASCII as `\uXXXX` (UTF-16 units,
/// lowercase hex), everything else as stored.
fn ascii_escape(stored: &str) -> String {
    let mut out = String::new();
    for c in stored.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0u16; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// A cookie with the first character of its signature changed (the last one would only
/// touch base64 padding bits).
fn with_bad_signature(pair: &str) -> String {
    let dot = pair.rfind('.').unwrap();
    let mut bytes = pair.as_bytes().to_vec();
    let first = &mut bytes[dot + 1];
    *first = if *first == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

fn cookie_value(pair: &str) -> &str {
    pair.split_once('=').unwrap().1
}

// ---------------------------------------------------------------------------------------------
// Behaviour, on every store
// ---------------------------------------------------------------------------------------------

/// Generates one `#[tokio::test]` per body in a module named for the store.
macro_rules! store_tests {
    ($module:ident, $backend:expr, [$($body:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $body() {
                    super::$body($backend).await;
                }
            )*
        }
    };
}

/// The behaviour bodies that run on every store, listed once so none runs on one store only.
macro_rules! on_redis_and_memory {
    ([$($body:ident),* $(,)?]) => {
        store_tests!(redis_store, super::Backend::redis(), [$($body),*]);
        store_tests!(memory_store, super::Backend::memory(), [$($body),*]);
    };
}

on_redis_and_memory!([
    new_visitor_gets_an_empty_session_and_no_cookie,
    lifecycle_create_read_update,
    rolling_refreshes_ttl_and_cookie_on_every_response,
    regenerate_moves_the_session_to_a_fresh_id,
    destroy_deletes_the_key_and_clears_the_cookie,
    without_a_session_destroy_and_regenerate_do_nothing,
    save_uninitialized_creates_an_empty_session,
    strict_ids_unknown_signed_id_is_a_new_visitor,
    bad_cookies_are_new_visitors,
    bad_updates_are_502_and_write_nothing,
    forged_headers_are_stripped_on_every_route,
    upstream_protocol_headers_in_other_spellings_are_stripped_not_acted_on,
    secret_rotation_verifies_old_and_re_signs_with_the_first,
    patches_merge_into_the_session_as_stored,
    echoed_updates_write_nothing,
]);

// The Upstash path: TLS-only redis-server, password in the URL, private CA in `ca_file`.
store_tests!(
    redis_tls_store,
    super::Backend::redis_tls(),
    [
        lifecycle_create_read_update,
        rolling_refreshes_ttl_and_cookie_on_every_response,
        regenerate_moves_the_session_to_a_fresh_id,
        destroy_deletes_the_key_and_clears_the_cookie,
    ]
);

/// A visitor without a cookie gets `{}`, no cookie, and costs no store command; so does one
/// with a cookie that fails verification.
async fn new_visitor_gets_an_empty_session_and_no_cookie(backend: Backend) {
    let env = Env::start(backend, Opts::default()).await;
    if let Some(redis) = env.redis() {
        assert_eq!(redis.cli(&["CONFIG", "RESETSTAT"]), "OK");
    }
    for cookie in [None, Some("theme=dark"), Some("__session=garbage"), Some("theme=dark; __session=a.b")] {
        let answer = env.call(cookie, &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.session(), Some("{}"), "{cookie:?}");
        assert_eq!(answer.protocol_headers_seen_upstream(), ["x-session: {}"], "{cookie:?}");
        answer.assert_no_session_cookie();
    }
    if let Some(redis) = env.redis() {
        let stats = redis.cli(&["INFO", "commandstats"]);
        for command in ["get", "getex", "set", "del"] {
            assert!(
                !stats.contains(&format!("cmdstat_{command}:")),
                "a new visitor cost a {command}:\n{stats}"
            );
        }
        assert_eq!(redis.cli(&["DBSIZE"]), "0");
    };
}

/// Create, read back, replace: Remix's cookie format, the exact compact JSON in the store
/// with `max_age` as TTL, ASCII-escaped JSON to the upstream, raw UTF-8 in the store.
async fn lifecycle_create_read_update(backend: Backend) {
    let env = Env::start(backend, Opts::default()).await;

    // The upstream's JSON as sent (spaces, escapes, `1.0`) is stored as JSON.stringify writes
    // it; its own cookies pass through next to the session cookie.
    let answer = env
        .call(
            None,
            &[
                ("x-session-update", r#"{ "user" : "Zo\u00eb", "n" : 1.0, "tags" : [ "a", "b" ] }"#),
                ("set-cookie", "theme=dark; Path=/"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let session = answer.issued(SECRET);
    let set_cookies: Vec<_> = answer.headers.get_all("set-cookie").iter().collect();
    assert!(set_cookies.contains(&&HeaderValue::from_static("theme=dark; Path=/")), "{set_cookies:?}");
    env.assert_stored(&session.id, Some(r#"{"user":"Zoë","n":1,"tags":["a","b"]}"#)).await;
    env.assert_fresh_ttl(&session.id);

    // The next request carries it, ASCII-only; nothing to set.
    let answer = env.call(Some(&session.pair), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.session(), Some(r#"{"user":"Zo\u00eb","n":1,"tags":["a","b"]}"#));
    assert_eq!(answer.protocol_headers_seen_upstream().len(), 1);
    answer.assert_no_session_cookie();

    // An update replaces the session under the same id; raw UTF-8 from the upstream is fine.
    let answer =
        env.call(Some(&session.pair), &[("x-session-update", "{\"user\":\"Zoë\",\"mood\":\"😀\"}")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.assert_no_session_cookie();
    env.assert_stored(&session.id, Some("{\"user\":\"Zoë\",\"mood\":\"😀\"}")).await;
    env.assert_fresh_ttl(&session.id);
    let answer = env.call(Some(&session.pair), &[]).await;
    assert_eq!(answer.session(), Some(r#"{"user":"Zo\u00eb","mood":"\ud83d\ude00"}"#));

    // The cookie in a longer Cookie header, and quoted, still counts.
    for cookie in [
        format!("theme=dark; {}; lang=en", session.pair),
        format!("{COOKIE_NAME}=\"{}\"", cookie_value(&session.pair)),
    ] {
        let answer = env.call(Some(&cookie), &[]).await;
        assert_eq!(answer.session(), Some(r#"{"user":"Zo\u00eb","mood":"\ud83d\ude00"}"#), "{cookie}");
    }
    // HTTP/2 clients may send every cookie as its own field (RFC 9113 §8.2.3).
    let req = Request::get(env.proxy.url("/app"))
        .header("cookie", "theme=dark")
        .header("cookie", session.pair.as_str())
        .body(empty())
        .unwrap();
    let resp = tokio::time::timeout(HANG_GUARD, h2_client().request(req)).await.unwrap().unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(echoed(&body, "x-session"), Some(r#"{"user":"Zo\u00eb","mood":"\ud83d\ude00"}"#));
    if let Some(keys) = env.key_count() {
        assert_eq!(keys, 1);
    }
}

/// `rolling = true`: every read refreshes the TTL (GETEX) and every response of a live session
/// sets the cookie again; a visitor without a session still gets none.
async fn rolling_refreshes_ttl_and_cookie_on_every_response(backend: Backend) {
    let env = Env::start(backend, Opts { rolling: true, ..Opts::default() }).await;
    let session = env.create(r#"{"user":"ann"}"#).await;

    if let Some(redis) = env.redis() {
        assert_eq!(redis.cli(&["EXPIRE", &format!("{KEY_PREFIX}{}", session.id), "50"]), "1");
    }
    let answer = env.call(Some(&session.pair), &[]).await;
    assert_eq!(answer.session(), Some(r#"{"user":"ann"}"#));
    assert_eq!(answer.issued(SECRET).id, session.id, "same session, fresh cookie");
    env.assert_fresh_ttl(&session.id);

    let answer = env.call(Some(&session.pair), &[("x-session-update", r#"{"user":"bob"}"#)]).await;
    assert_eq!(answer.issued(SECRET).id, session.id);
    env.assert_stored(&session.id, Some(r#"{"user":"bob"}"#)).await;
    env.assert_fresh_ttl(&session.id);

    env.call(None, &[]).await.assert_no_session_cookie();
}

/// `x-session-regenerate` moves the session to a fresh id: the old key is gone, the old cookie
/// is worth nothing, the new key holds the data (or the update sent with it).
async fn regenerate_moves_the_session_to_a_fresh_id(backend: Backend) {
    let env = Env::start(backend, Opts::default()).await;
    let first = env.create(r#"{"cart":[1,2]}"#).await;

    // Without an update (and with an empty value: any value counts).
    let answer = env.call(Some(&first.pair), &[("x-session-regenerate", "")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let second = answer.issued(SECRET);
    assert_ne!(second.id, first.id);
    env.assert_stored(&first.id, None).await;
    env.assert_stored(&second.id, Some(r#"{"cart":[1,2]}"#)).await;
    env.assert_fresh_ttl(&second.id);
    assert_eq!(env.call(Some(&first.pair), &[]).await.session(), Some("{}"), "the old id is dead");
    assert_eq!(env.call(Some(&second.pair), &[]).await.session(), Some(r#"{"cart":[1,2]}"#));

    // With an update: log-in.
    let answer = env
        .call(
            Some(&second.pair),
            &[("x-session-update", r#"{"cart":[1,2],"user":7}"#), ("x-session-regenerate", "1")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let third = answer.issued(SECRET);
    assert!(third.id != second.id && third.id != first.id);
    env.assert_stored(&second.id, None).await;
    env.assert_stored(&third.id, Some(r#"{"cart":[1,2],"user":7}"#)).await;
    env.assert_fresh_ttl(&third.id);
    if let Some(keys) = env.key_count() {
        assert_eq!(keys, 1);
    }
}

/// `x-session-update: null` deletes the key and clears the cookie; with regenerate too, it
/// still only destroys.
async fn destroy_deletes_the_key_and_clears_the_cookie(backend: Backend) {
    let env = Env::start(backend, Opts::default()).await;
    let session = env.create(r#"{"user":"ann"}"#).await;
    let answer = env.call(Some(&session.pair), &[("x-session-update", "null")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.assert_cleared();
    env.assert_stored(&session.id, None).await;
    let answer = env.call(Some(&session.pair), &[]).await;
    assert_eq!(answer.session(), Some("{}"));
    answer.assert_no_session_cookie();

    let session = env.create(r#"{"user":"bob"}"#).await;
    let answer =
        env.call(Some(&session.pair), &[("x-session-regenerate", "1"), ("x-session-update", " null ")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.assert_cleared();
    env.assert_stored(&session.id, None).await;
    if let Some(keys) = env.key_count() {
        assert_eq!(keys, 0, "destroy with regenerate must not create a session");
    }
}

/// Without a session, `null` and regenerate do nothing (no cookie, nothing stored), also for
/// a validly signed id that is not in the store; an update with regenerate just creates one.
async fn without_a_session_destroy_and_regenerate_do_nothing(backend: Backend) {
    let env = Env::start(backend, Opts::default()).await;
    let unknown = format!("{COOKIE_NAME}={}", sign("not-in-the-store", SECRET));
    for cookie in [None, Some(unknown.as_str())] {
        for reply in [
            &[("x-session-update", "null")][..],
            &[("x-session-regenerate", "1")][..],
            &[("x-session-update", "null"), ("x-session-regenerate", "1")][..],
        ] {
            let answer = env.call(cookie, reply).await;
            assert_eq!(answer.status, StatusCode::OK);
            answer.assert_no_session_cookie();
        }
    }
    if let Some(keys) = env.key_count() {
        assert_eq!(keys, 0);
    }
    env.assert_stored("not-in-the-store", None).await;

    let answer = env.call(None, &[("x-session-regenerate", "1"), ("x-session-update", r#"{"a":1}"#)]).await;
    let session = answer.issued(SECRET);
    env.assert_stored(&session.id, Some(r#"{"a":1}"#)).await;
}

/// `save_uninitialized = true`: a new visitor gets a stored `{}` and a cookie at once; that
/// session is live afterwards (no new cookie on the next request).
async fn save_uninitialized_creates_an_empty_session(backend: Backend) {
    let env = Env::start(backend, Opts { save_uninitialized: true, ..Opts::default() }).await;
    let answer = env.call(None, &[]).await;
    assert_eq!(answer.session(), Some("{}"));
    let session = answer.issued(SECRET);
    if let Some(redis) = env.redis() {
        assert_eq!(redis.cli(&["GET", &format!("{KEY_PREFIX}{}", session.id)]), "{}");
    }
    env.assert_fresh_ttl(&session.id);

    let answer = env.call(Some(&session.pair), &[]).await;
    assert_eq!(answer.session(), Some("{}"));
    answer.assert_no_session_cookie();

    // An update from a new visitor creates one session, with one cookie.
    let answer = env.call(None, &[("x-session-update", r#"{"a":1}"#)]).await;
    let other = answer.issued(SECRET);
    env.assert_stored(&other.id, Some(r#"{"a":1}"#)).await;
    // Destroy without a session still does nothing.
    env.call(None, &[("x-session-update", "null")]).await.assert_no_session_cookie();
    if let Some(keys) = env.key_count() {
        assert_eq!(keys, 2);
    }
}

/// Strict ids: a validly signed cookie whose key is absent (never stored, expired, destroyed
/// elsewhere) is a new visitor, and an update gets a new id; the proxy never writes to it.
async fn strict_ids_unknown_signed_id_is_a_new_visitor(backend: Backend) {
    let env = Env::start(backend, Opts::default()).await;
    let forged_id = "attacker-chosen-id";
    let cookie = format!("{COOKIE_NAME}={}", sign(forged_id, SECRET));
    let answer = env.call(Some(&cookie), &[]).await;
    assert_eq!(answer.session(), Some("{}"));
    answer.assert_no_session_cookie();

    let answer = env.call(Some(&cookie), &[("x-session-update", r#"{"user":"ann"}"#)]).await;
    let issued = answer.issued(SECRET);
    assert_ne!(issued.id, forged_id);
    env.assert_stored(forged_id, None).await;
    env.assert_stored(&issued.id, Some(r#"{"user":"ann"}"#)).await;

    // Destroyed by another request (another tab): the stale cookie's update starts afresh.
    let stale = issued;
    let answer = env.call(Some(&stale.pair), &[("x-session-update", "null")]).await;
    answer.assert_cleared();
    let answer = env.call(Some(&stale.pair), &[("x-session-update", r#"{"user":"bob"}"#)]).await;
    let fresh = answer.issued(SECRET);
    assert_ne!(fresh.id, stale.id);
    env.assert_stored(&stale.id, None).await;
    env.assert_stored(&fresh.id, Some(r#"{"user":"bob"}"#)).await;
}

/// Tampered, malformed, oversized, non-string and unknown-secret cookies, and a good cookie
/// after a bad one with the same name: all a new visitor, never an error, never a session.
async fn bad_cookies_are_new_visitors(backend: Backend) {
    let env = Env::start(backend, Opts::default()).await;
    let alice = env.create(r#"{"user":"alice"}"#).await;
    let bob = env.create(r#"{"user":"bob"}"#).await;
    let (alice_payload, alice_signature) = cookie_value(&alice.pair).rsplit_once('.').unwrap();
    let (bob_payload, _) = cookie_value(&bob.pair).rsplit_once('.').unwrap();
    let padded = |spaces: usize| {
        let json = format!("{}{}", " ".repeat(spaces), serde_json::to_string(&alice.id).unwrap());
        format!("{COOKIE_NAME}={}", sign_payload(json.as_bytes(), SECRET))
    };
    // Control: padding inside the signed JSON is accepted (JSON.parse allows it) while the
    // cookie stays under the limit, so the oversized case below fails only on its size.
    let small = padded(2000);
    assert!(small.len() < MAX_COOKIE_VALUE_BYTES);
    assert_eq!(env.call(Some(&small), &[]).await.session(), Some(r#"{"user":"alice"}"#));
    let oversized = padded(3100);
    assert!(cookie_value(&oversized).len() > MAX_COOKIE_VALUE_BYTES);

    let bad = [
        ("tampered signature", with_bad_signature(&alice.pair)),
        ("tampered payload", format!("{COOKIE_NAME}={bob_payload}.{alice_signature}")),
        ("garbage", format!("{COOKIE_NAME}=garbage")),
        ("empty", format!("{COOKIE_NAME}=")),
        ("bad escape", format!("{COOKIE_NAME}=%E9%zz")),
        ("no signature", format!("{COOKIE_NAME}={alice_payload}")),
        ("oversized", oversized),
        ("number payload", format!("{COOKIE_NAME}={}", sign_payload(b"123", SECRET))),
        (
            "object payload",
            format!(
                "{COOKIE_NAME}={}",
                sign_payload(format!("{{\"id\":\"{}\"}}", alice.id).as_bytes(), SECRET)
            ),
        ),
        ("null payload", format!("{COOKIE_NAME}={}", sign_payload(b"null", SECRET))),
        ("unknown secret", format!("{COOKIE_NAME}={}", sign(&alice.id, "not-our-secret"))),
        ("bad first, good second", format!("{COOKIE_NAME}=bad; {}", alice.pair)),
    ];
    for (what, cookie) in &bad {
        let answer = env.call(Some(cookie), &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{what}");
        assert_eq!(answer.session(), Some("{}"), "{what}");
        answer.assert_no_session_cookie();
    }
    // An update behind a bad cookie starts a new session and leaves the others alone.
    for (what, cookie) in &bad {
        let answer = env.call(Some(cookie), &[("x-session-update", r#"{"user":"mallory"}"#)]).await;
        let issued = answer.issued(SECRET);
        assert!(issued.id != alice.id && issued.id != bob.id, "{what}");
    }
    env.assert_stored(&alice.id, Some(r#"{"user":"alice"}"#)).await;
    env.assert_stored(&bob.id, Some(r#"{"user":"bob"}"#)).await;

    // Only the first cookie with the name counts: good first, bad second is the session.
    let answer = env.call(Some(&format!("{}; {COOKIE_NAME}=bad", alice.pair)), &[]).await;
    assert_eq!(answer.session(), Some(r#"{"user":"alice"}"#));
}

/// An update that is not a JSON object or `null`, too large, or sent twice, a patch that is not
/// a JSON object, too large or sent twice, and an update with a patch: 502, no cookie, and
/// nothing written (not even by a regenerate sent with it).
async fn bad_updates_are_502_and_write_nothing(backend: Backend) {
    const MAX_BYTES: usize = 64;
    let env = Env::start(backend, Opts { max_bytes: MAX_BYTES, ..Opts::default() }).await;
    let session = env.create(r#"{"user":"ann"}"#).await;
    let keys_before = env.key_count();

    // `{"k":"xxx…"}` is 8 bytes plus the x's.
    let at_limit = format!("{{\"k\":\"{}\"}}", "x".repeat(MAX_BYTES - 8));
    let over_limit = format!("{{\"k\":\"{}\"}}", "x".repeat(MAX_BYTES - 7));
    assert_eq!((at_limit.len(), over_limit.len()), (MAX_BYTES, MAX_BYTES + 1));
    let bad_updates: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("not JSON", vec![("x-session-update", "user=ann")]),
        ("truncated JSON", vec![("x-session-update", r#"{"user":"#)]),
        ("array", vec![("x-session-update", r#"[{"user":"x"}]"#)]),
        ("string", vec![("x-session-update", r#""{}""#)]),
        ("number", vec![("x-session-update", "42")]),
        ("boolean", vec![("x-session-update", "true")]),
        ("too large", vec![("x-session-update", over_limit.as_str())]),
        ("two updates", vec![("x-session-update", r#"{"a":1}"#), ("x-session-update", r#"{"a":1}"#)]),
        ("update and null", vec![("x-session-update", r#"{"a":1}"#), ("x-session-update", "null")]),
        ("bad update with regenerate", vec![("x-session-update", "[1]"), ("x-session-regenerate", "1")]),
        ("patch not JSON", vec![("x-session-patch", "user=ann")]),
        ("patch null", vec![("x-session-patch", "null")]),
        ("patch array", vec![("x-session-patch", r#"[{"user":"x"}]"#)]),
        ("patch too large", vec![("x-session-patch", over_limit.as_str())]),
        ("two patches", vec![("x-session-patch", r#"{"a":1}"#), ("x-session-patch", r#"{"b":1}"#)]),
        ("update and patch", vec![("x-session-update", r#"{"a":1}"#), ("x-session-patch", r#"{"b":1}"#)]),
        ("null update and patch", vec![("x-session-update", "null"), ("x-session-patch", r#"{"b":1}"#)]),
        ("bad patch with regenerate", vec![("x-session-patch", "1"), ("x-session-regenerate", "1")]),
    ];
    for cookie in [Some(session.pair.as_str()), None] {
        for (what, reply) in &bad_updates {
            let answer = env.call(cookie, reply).await;
            assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{what}");
            answer.assert_no_session_cookie();
            assert!(answer.headers.get_all("set-cookie").iter().next().is_none(), "{what}");
        }
    }
    env.assert_stored(&session.id, Some(r#"{"user":"ann"}"#)).await;
    assert_eq!(env.key_count(), keys_before);

    // Exactly `max_bytes` is accepted.
    let answer = env.call(Some(&session.pair), &[("x-session-update", at_limit.as_str())]).await;
    assert_eq!(answer.status, StatusCode::OK);
    env.assert_stored(&session.id, Some(&at_limit)).await;
}

/// Clients lose every header that normalises to a protocol name, on session and non-session
/// routes, whatever the spelling; the upstream sees only the proxy's `x-session`.
async fn forged_headers_are_stripped_on_every_route(backend: Backend) {
    let env = Env::start(backend, Opts::default()).await;
    let session = env.create(r#"{"user":"ann"}"#).await;
    let forged =
        "X-Session: {\"admin\":true}\r\nX_Session: {\"admin\":true}\r\nx_session: {\"admin\":true}\r\n\
                  x_session_update: {\"admin\":true}\r\nX-Session-Update: {\"admin\":true}\r\n\
                  X-SESSION-REGENERATE: 1\r\nx_Session_Regenerate: 1\r\n\
                  X-Session-Patch: {\"admin\":true}\r\nx_session_patch: {\"admin\":true}\r\n";
    for (path, cookie, expected) in [
        ("/app", String::new(), vec!["x-session: {}"]),
        ("/app", format!("Cookie: {}\r\n", session.pair), vec![r#"x-session: {"user":"ann"}"#]),
        ("/static/app.css", String::new(), vec![]),
        ("/static/app.css", format!("Cookie: {}\r\n", session.pair), vec![]),
    ] {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n{cookie}{forged}\r\n");
        let answer = raw(env.proxy.addr, request.as_bytes()).await;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        let seen: Vec<&str> = body
            .lines()
            .filter(|line| line.split_once(": ").is_some_and(|(name, _)| is_protocol_name(name)))
            .collect();
        assert_eq!(seen, expected, "{path} {cookie}");
        assert!(!head.to_ascii_lowercase().contains("set-cookie: __session"), "{path}: {head}");
    }
    // The forged update and regenerate were not acted on.
    env.assert_stored(&session.id, Some(r#"{"user":"ann"}"#)).await;
    if let Some(keys) = env.key_count() {
        assert_eq!(keys, 1);
    }
}

/// `x-session-patch` is an RFC 7386 merge patch of the session as stored: keys set, objects
/// merged, `null` removes; a visitor without a session gets the patch applied to `{}`; with a
/// regenerate, the session is patched, then moved. PHP's empty session, `[]`, counts as `{}`.
async fn patches_merge_into_the_session_as_stored(backend: Backend) {
    let env = Env::start(backend, Opts::default()).await;
    let session = env.create(r#"{"user":"ann","cart":{"a":1},"n":0}"#).await;

    let answer = env
        .call(Some(&session.pair), &[("x-session-patch", r#"{"cart":{"b":2},"user":null,"n":1,"t":"é"}"#)])
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.assert_no_session_cookie();
    answer.assert_no_protocol_headers();
    env.assert_stored(&session.id, Some(r#"{"cart":{"a":1,"b":2},"n":1,"t":"é"}"#)).await;

    // A patch that changes nothing writes nothing.
    let answer = env.call(Some(&session.pair), &[("x-session-patch", r#"{"n":1,"gone":null}"#)]).await;
    assert_eq!(answer.status, StatusCode::OK);
    env.assert_stored(&session.id, Some(r#"{"cart":{"a":1,"b":2},"n":1,"t":"é"}"#)).await;

    // A new visitor: the patch applied to `{}` (its nulls remove nothing) is a new session.
    let answer = env.call(None, &[("x-session-patch", r#"{"x":{"y":1,"z":null},"w":null}"#)]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let created = answer.issued(SECRET);
    env.assert_stored(&created.id, Some(r#"{"x":{"y":1}}"#)).await;

    // Patched, then moved to a fresh id.
    let answer = env
        .call(Some(&session.pair), &[("x-session-patch", r#"{"user":"bob"}"#), ("x-session-regenerate", "1")])
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let moved = answer.issued(SECRET);
    env.assert_stored(&session.id, None).await;
    env.assert_stored(&moved.id, Some(r#"{"cart":{"a":1,"b":2},"n":1,"t":"é","user":"bob"}"#)).await;

    // `[]` from PHP's `json_encode` of an empty array: an empty session. (Read through the
    // proxy, the memory store's `{}` looks like no session; the new cookie shows it is one.)
    let empty = env.redis().is_some().then_some("{}");
    let answer = env.call(Some(&moved.pair), &[("x-session-update", "[]")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.assert_no_session_cookie();
    env.assert_stored(&moved.id, empty).await;
    let answer = env.call(None, &[("x-session-update", "[]")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let php = answer.issued(SECRET);
    env.assert_stored(&php.id, empty).await;
}

/// An update that equals, as a JSON value, the session its upstream was sent (legacy apps
/// echo the whole session on every response) writes nothing: the stored text keeps its own
/// key order and spacing, where a write would have stored the update's.
async fn echoed_updates_write_nothing(backend: Backend) {
    let env = Env::start(backend, Opts::default()).await;
    let session = env.create(r#"{"a":1,"b":{"c":[1,2]},"d":"é"}"#).await;
    for echo in [r#"{"a":1,"b":{"c":[1,2]},"d":"é"}"#, r#"{ "d":"\u00e9", "b":{"c":[1,2.0]}, "a":1.0 }"#] {
        let answer = env.call(Some(&session.pair), &[("x-session-update", echo)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{echo}");
        answer.assert_no_session_cookie();
        env.assert_stored(&session.id, Some(r#"{"a":1,"b":{"c":[1,2]},"d":"é"}"#)).await;
    }
    // Any real change is written, exactly as sent.
    let answer = env.call(Some(&session.pair), &[("x-session-update", r#"{"d":"é","a":2}"#)]).await;
    assert_eq!(answer.status, StatusCode::OK);
    env.assert_stored(&session.id, Some(r#"{"d":"é","a":2}"#)).await;
}

/// Only the exact response header names are acted on; every other spelling, and the exact
/// names on non-session routes, are removed and ignored.
async fn upstream_protocol_headers_in_other_spellings_are_stripped_not_acted_on(backend: Backend) {
    let env = Env::start(backend, Opts::default()).await;
    let session = env.create(r#"{"user":"ann"}"#).await;
    let misspelled = [
        ("x_session_update", r#"{"user":"mallory"}"#),
        ("X_Session_Update", "null"),
        ("x_session_regenerate", "1"),
        ("X_SESSION_PATCH", r#"{"user":"mallory"}"#),
        ("X-SESSION-REGENERATE-", "1"),
    ];
    for cookie in [Some(session.pair.as_str()), None] {
        let answer = env.call(cookie, &misspelled[..4]).await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.assert_no_session_cookie();
        answer.assert_no_protocol_headers();
    }
    // A near-miss name is an ordinary header and passes through.
    let answer = env.call(None, &misspelled[4..]).await;
    assert_eq!(answer.headers.get("x-session-regenerate-").map(|v| v.as_bytes()), Some(&b"1"[..]));

    // The exact names on a non-session route: stripped (checked in `request`), not acted on.
    for cookie in [Some(session.pair.as_str()), None] {
        let answer = env
            .request(
                "/static/x",
                cookie,
                &[
                    ("x-session-update", r#"{"user":"mallory"}"#),
                    ("x-session-regenerate", "1"),
                    ("x-session-patch", r#"{"user":"mallory"}"#),
                ],
                &[],
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.assert_no_session_cookie();
        assert!(answer.protocol_headers_seen_upstream().is_empty());
    }
    env.assert_stored(&session.id, Some(r#"{"user":"ann"}"#)).await;
    if let Some(keys) = env.key_count() {
        assert_eq!(keys, 1);
    }
}

/// Rotation as deployed: secrets `["old"]`, then `["new", "old"]` (a reload, same store): a
/// cookie signed with "old" still verifies and every response re-signs it with "new"; after
/// dropping "old", only re-signed cookies work.
async fn secret_rotation_verifies_old_and_re_signs_with_the_first(backend: Backend) {
    let mut env = Env::start(backend, Opts { secrets: vec!["old"], ..Opts::default() }).await;
    let old = env.create(r#"{"user":"ann"}"#).await;
    let other = env.create(r#"{"user":"bob"}"#).await;

    env.reconfigure(Opts { secrets: vec!["new", "old"], ..Opts::default() });
    let answer = env.call(Some(&old.pair), &[]).await;
    assert_eq!(answer.session(), Some(r#"{"user":"ann"}"#));
    let resigned = answer.issued("new");
    assert_eq!(resigned.id, old.id);
    assert_eq!(remix_unsign(cookie_value(&resigned.pair), &["old"]), None, "signed with the first secret");
    // A cookie signed with the first secret needs nothing.
    env.call(Some(&resigned.pair), &[]).await.assert_no_session_cookie();

    // An update behind an old-secret cookie is saved and re-signs too; destroy just clears.
    let answer = env.call(Some(&other.pair), &[("x-session-update", r#"{"user":"bob","n":2}"#)]).await;
    assert_eq!(answer.issued("new").id, other.id);
    env.assert_stored(&other.id, Some(r#"{"user":"bob","n":2}"#)).await;
    env.call(Some(&other.pair), &[("x-session-update", "null")]).await.assert_cleared();

    env.reconfigure(Opts { secrets: vec!["new"], ..Opts::default() });
    assert_eq!(env.call(Some(&old.pair), &[]).await.session(), Some("{}"), "old secret retired");
    assert_eq!(env.call(Some(&resigned.pair), &[]).await.session(), Some(r#"{"user":"ann"}"#));
}

// ---------------------------------------------------------------------------------------------
// Redis only: compatibility with Remix, stored values, failed writes
// ---------------------------------------------------------------------------------------------

#[test]
fn test_signing_matches_the_design_vector() {
    assert_eq!(format!("{COOKIE_NAME}={}", sign(VECTOR_ID, SECRET)), VECTOR_COOKIE);
    assert_eq!(remix_unsign(cookie_value(VECTOR_COOKIE), &[SECRET]).as_deref(), Some(VECTOR_ID));
}

/// A session written by a Remix app (`remix-upstash-session`: its key, its cookie) is the
/// upstream's session; the proxy's writes keep the same layout for the Remix app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_sessions_with_a_remix_app() {
    let env = Env::start(Backend::redis(), Opts::default()).await;
    let key = format!("{KEY_PREFIX}{VECTOR_ID}");
    {
        let redis = env.redis().unwrap();
        assert_eq!(redis.cli(&["SET", &key, r#"{"userId":42,"name":"Zoë"}"#, "EX", "600"]), "OK");
    }
    let answer = env.call(Some(VECTOR_COOKIE), &[]).await;
    assert_eq!(answer.session(), Some(r#"{"userId":42,"name":"Zo\u00eb"}"#));
    answer.assert_no_session_cookie();

    // The proxy's update goes to the same key, as the Remix app would write it.
    let answer =
        env.call(Some(VECTOR_COOKIE), &[("x-session-update", r#"{"userId":42,"name":"Zoë","n":1}"#)]).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.assert_no_session_cookie();
    env.assert_stored(VECTOR_ID, Some(r#"{"userId":42,"name":"Zoë","n":1}"#)).await;
    env.assert_fresh_ttl(VECTOR_ID);

    // And a cookie the proxy issues is one the Remix app can read (`issued` unsigns it as
    // Remix does) for a key it can read.
    let session = env.create(r#"{"from":"proxy"}"#).await;
    assert_eq!(remix_unsign(cookie_value(&session.pair), &[SECRET]).as_deref(), Some(session.id.as_str()));
}

/// A stored value that is not a JSON object (written by something else) is an empty session,
/// not an error: the upstream gets `{}`, a regenerate moves `{}` (what the upstream saw, not
/// the unreadable value), and the session is live, so an update writes to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_non_objects_are_an_empty_session() {
    let env = Env::start(Backend::redis(), Opts::default()).await;
    let cookie = format!("{COOKIE_NAME}={}", sign(VECTOR_ID, SECRET));
    let key = format!("{KEY_PREFIX}{VECTOR_ID}");
    // Written by Lua so that a value can hold bytes that are not UTF-8 (`\255`), which
    // redis-cli arguments cannot carry here.
    let set_stored = |lua_literal: &str| {
        let script = format!("return redis.call('SET', KEYS[1], {lua_literal}, 'EX', 600)");
        assert_eq!(env.redis().unwrap().cli(&["EVAL", &script, "1", &key]), "OK");
    };
    let stored_values = [
        ("array", "'[1,2]'"),
        ("string", "'\"text\"'"),
        ("not JSON", "'not json'"),
        ("truncated", "'{\"a\":'"),
        ("empty", "''"),
        ("not UTF-8", "'{\"a\":\"\\255\"}'"),
    ];
    for (what, lua_literal) in stored_values {
        set_stored(lua_literal);
        let answer = env.call(Some(&cookie), &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{what}");
        assert_eq!(answer.session(), Some("{}"), "{what}");
        answer.assert_no_session_cookie();

        let answer = env.call(Some(&cookie), &[("x-session-regenerate", "1")]).await;
        assert_eq!(answer.status, StatusCode::OK, "{what}");
        let moved = answer.issued(SECRET);
        env.assert_stored(VECTOR_ID, None).await;
        env.assert_stored(&moved.id, Some("{}")).await;
        assert_eq!(env.redis().unwrap().cli(&["DEL", &format!("{KEY_PREFIX}{}", moved.id)]), "1");
    }
    set_stored("'[1,2]'");
    let answer = env.call(Some(&cookie), &[("x-session-update", r#"{"fixed":true}"#)]).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.assert_no_session_cookie();
    env.assert_stored(VECTOR_ID, Some(r#"{"fixed":true}"#)).await;
}

/// The store fails between the read and the write (the upstream stops Redis before it
/// answers): the write is a 503 with `Retry-After: 1`, never a 2xx claiming a change that was
/// not saved, and no cookie.
async fn failed_write_is_503(with_session: bool, reply: &[(&str, &str)]) {
    let opts = Opts { store_timeout_ms: FAILING_STORE_TIMEOUT_MS, ..Opts::default() };
    let env = Env::start(Backend::redis(), opts).await;
    let session = env.create(r#"{"user":"ann"}"#).await;
    let cookie = with_session.then_some(session.pair.as_str());
    let answer = env.request("/app", cookie, reply, &[(STOP_REDIS, "1")]).await;
    assert_eq!(env.hits(), 2, "the upstream answered (create, then this request)");
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.headers.get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
    answer.assert_no_session_cookie();
}

mod failed_write {
    use super::failed_write_is_503;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn update() {
        failed_write_is_503(true, &[("x-session-update", r#"{"user":"bob"}"#)]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_visitors_update() {
        failed_write_is_503(false, &[("x-session-update", r#"{"user":"bob"}"#)]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn destroy() {
        failed_write_is_503(true, &[("x-session-update", "null")]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn regenerate() {
        failed_write_is_503(true, &[("x-session-regenerate", "1")]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn regenerate_with_update() {
        failed_write_is_503(true, &[("x-session-regenerate", "1"), ("x-session-update", r#"{"u":1}"#)]).await;
    }

    /// With `save_uninitialized`, even the `{}` a new visitor would get must be saved first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn save_uninitialized() {
        use super::*;
        let opts =
            Opts { save_uninitialized: true, store_timeout_ms: FAILING_STORE_TIMEOUT_MS, ..Opts::default() };
        let env = Env::start(Backend::redis(), opts).await;
        let answer = env.request("/app", None, &[], &[(STOP_REDIS, "1")]).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        answer.assert_no_session_cookie();
    }
}

/// `on_store_error = "pass"` when only the read fails (here a Redis user that may not GET):
/// the upstream saw no session, so its update must not overwrite the session it never saw.
/// It starts a new session instead, and the old one is left as it was (strict ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_mode_update_after_a_failed_read_never_overwrites_the_unseen_session() {
    let redis = RedisServer::start();
    redis.cli(&["ACL", "SETUSER", "noread", "on", ">pw", "~*", "+@all", "-get", "-getex"]);
    let stored = r#"{"user":"alice","cart":[1,2]}"#;
    redis.cli(&["SET", "_session:0123456789abcdef", stored, "EX", "3600"]);
    let upstream = upstream(|_req| async {
        Response::builder().header("x-session-update", r#"{"visits":1}"#).body(full("ok")).unwrap()
    })
    .await;
    let url = redis.url().replacen("redis://", "redis://noread:pw@", 1);
    let proxy = start_proxy(&format!(
        "[store]\nurl = \"{url}\"\n\
         [session]\nsecrets = [\"{SECRET}\"]\non_store_error = \"pass\"\n\
         [[route]]\nprefix = \"/\"\nupstream = \"{}\"\n",
        upstream.url()
    ))
    .await;
    let cookie = format!("{COOKIE_NAME}={}", sign("0123456789abcdef", SECRET));
    let request = Request::get(proxy.url("/")).header("cookie", &cookie).body(empty()).unwrap();
    let (status, headers, _) = send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        redis.cli(&["GET", "_session:0123456789abcdef"]),
        stored,
        "the unseen session was overwritten"
    );
    let set_cookie = headers.get("set-cookie").expect("a new session gets a cookie").to_str().unwrap();
    let new_id = remix_unsign(cookie_value(set_cookie.split(';').next().unwrap()), &[SECRET]).unwrap();
    assert_ne!(new_id, "0123456789abcdef");
    assert_eq!(redis.cli(&["GET", &format!("_session:{new_id}")]), r#"{"visits":1}"#);
}
