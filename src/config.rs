//! Configuration: the serde shape of `proxy.toml`, `${VAR}` expansion, and the validated
//! runtime types the rest of the proxy uses. The proxy core never sees TOML.
//!
//! Loading is three steps, each with errors that name the offending key:
//! 1. parse the text into toml's spanned document tree (`toml::de::DeTable`), so later errors
//!    can still point at a line and column;
//! 2. expand `${VAR}` / `${VAR:-default}` in every string value of that tree, which knows
//!    each value's key path (`session.secrets[0]`);
//! 3. deserialize the private file shape (`deny_unknown_fields` everywhere, so a typo is an
//!    error) and convert it, with validation and defaults, into [`Config`].
//!
//! Secrets and the store URL (which may hold a password) never appear in an error message or
//! in `Debug` output.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use http::Uri;
use serde::Deserialize;
use toml::de::{DeTable, DeValue};

// ---------------------------------------------------------------------------------------------
// Defaults (the README, `proxy.toml`): every key but `server.listen`, `session.secrets` and the
// routes' `prefix` / `upstream` has one.
// ---------------------------------------------------------------------------------------------

/// `server.upstream_timeout_ms`: from the end of the request body to the upstream's response
/// headers, then 504.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 30_000;
/// `server.shutdown_grace_ms`: how long in-flight requests may finish after SIGTERM/SIGINT.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 30_000;
/// `server.max_connections`: open client connections; at the cap, accepting pauses. Left
/// unset, the server lowers it to what the process's open-file limit can hold (with a
/// warning); set, a limit that cannot hold it stops the start.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// `server.upstream_read_timeout_ms`: the longest pause between two reads of an upstream's
/// response body (nginx's `proxy_read_timeout`); 0 means never.
pub const DEFAULT_UPSTREAM_READ_TIMEOUT_MS: u64 = 60_000;
/// `server.client_send_timeout_ms`: a client that takes nothing of its response this long is
/// dropped (nginx's `send_timeout`).
pub const DEFAULT_CLIENT_SEND_TIMEOUT_MS: u64 = 60_000;
/// `store.url`: the embedded in-process store (one process, lost on restart).
pub const DEFAULT_STORE_URL: &str = "memory://";
/// `store.key_prefix`: the prefix `remix-upstash-session` uses, so both can share sessions.
pub const DEFAULT_KEY_PREFIX: &str = "_session:";
/// `store.timeout_ms`: per store command; fred has no command timeout of its own.
pub const DEFAULT_STORE_TIMEOUT_MS: u64 = 1_000;
/// `store.pool_size`: Redis connections.
pub const DEFAULT_POOL_SIZE: usize = 2;
/// `session.cookie_name`: Remix's default cookie name.
pub const DEFAULT_COOKIE_NAME: &str = "__session";
/// `session.max_age`: 14 days, in seconds (cookie Max-Age and store TTL).
pub const DEFAULT_MAX_AGE_SECS: u64 = 1_209_600;
/// `session.path`.
pub const DEFAULT_COOKIE_PATH: &str = "/";
/// `session.secure`.
pub const DEFAULT_SECURE: bool = true;
/// `session.http_only`.
pub const DEFAULT_HTTP_ONLY: bool = true;
/// `session.same_site`.
pub const DEFAULT_SAME_SITE: SameSite = SameSite::Lax;
/// `session.save_uninitialized`.
pub const DEFAULT_SAVE_UNINITIALIZED: bool = false;
/// `session.rolling`.
pub const DEFAULT_ROLLING: bool = false;
/// `session.header`: request header carrying the session to the upstream.
pub const DEFAULT_HEADER: &str = "x-session";
/// `session.update_header`: response header carrying the new session from the upstream.
pub const DEFAULT_UPDATE_HEADER: &str = "x-session-update";
/// `session.regenerate_header`: response header asking for a fresh id.
pub const DEFAULT_REGENERATE_HEADER: &str = "x-session-regenerate";
/// `session.patch_header`: response header carrying a JSON merge patch, applied atomically.
pub const DEFAULT_PATCH_HEADER: &str = "x-session-patch";
/// `session.max_bytes`: largest update header value accepted from the upstream.
pub const DEFAULT_MAX_BYTES: usize = 16_384;
/// `session.on_store_error`.
pub const DEFAULT_ON_STORE_ERROR: OnStoreError = OnStoreError::Fail;
/// `route.session`.
pub const DEFAULT_ROUTE_SESSION: bool = true;
/// `route.strip_prefix`.
pub const DEFAULT_STRIP_PREFIX: bool = false;

// ---------------------------------------------------------------------------------------------
// Limits: catch typos and nonsense at load time instead of at 3 a.m.
// ---------------------------------------------------------------------------------------------

/// Upper bound of every `*_ms` key: one day. Anything longer is a typo, and "wait forever" is
/// never what a proxy should do.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// `server.max_connections` upper bound: a million connections need two million sockets
/// (client and upstream), twice the default per-process ceiling of Linux (`fs.nr_open`).
pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;
/// `store.pool_size` upper bound: far more Redis connections than one proxy process can use;
/// a bigger number is a typo that would exhaust Redis' connection limit (Upstash caps them).
pub const MAX_POOL_SIZE: usize = 64;
/// `store.min_replicas` upper bound: more replicas than any deployment has per master.
pub const MAX_MIN_REPLICAS: u32 = 16;
/// Secrets shorter than this are accepted with a warning (at start, on reload and in
/// `--check`): cookies are signed with HMAC-SHA256, whose key should hold as many random bytes
/// as its output (32) so that it cannot be guessed offline from one signed cookie.
pub const MIN_SECRET_BYTES: usize = 32;
/// `session.max_bytes` upper bound: 1 MiB. A session travels in a header on every request,
/// so it has to stay small; hyper's own header size limits may already be lower.
pub const MAX_SESSION_BYTES: usize = 1_048_576;

/// Header names that `session.header`, `update_header`, `regenerate_header` and `patch_header` may not take
/// (compared after lowercasing and `_` → `-`): the proxy strips the session headers from every
/// client request and response, so one of these would break cookies, routing, framing or the
/// request id.
const RESERVED_HEADER_NAMES: &[&str] = &[
    "host",
    "cookie",
    "set-cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

// ---------------------------------------------------------------------------------------------
// Runtime types: the contract with the rest of the crate.
// ---------------------------------------------------------------------------------------------

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub session: SessionConfig,
    /// In file order; matching rules live in `crate::route`.
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) when set.
    pub tls: Option<TlsFiles>,
    pub admin_listen: Option<SocketAddr>,
    /// From the end of the request body to the upstream's response headers.
    pub upstream_timeout: Duration,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Open client connections at most; `None` when the file does not set it: then
    /// [`DEFAULT_MAX_CONNECTIONS`], lowered to what the open-file limit holds.
    pub max_connections: Option<usize>,
    /// The longest pause between two reads of an upstream's response body, for routes without
    /// a `read_timeout_ms` of their own; `None`: never (the routes already carry the result).
    pub upstream_read_timeout: Option<Duration>,
    /// A client that takes nothing of its response this long is dropped.
    pub client_send_timeout: Duration,
    /// Enables the session management endpoints of the admin listener.
    pub admin_token: Option<AdminToken>,
}

/// `server.admin_token`: the bearer token of the session management endpoints. Never shown:
/// `Debug` prints `***`, and no error message quotes it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// An RFC 6901 JSON pointer (`/user/id`) into a session, its reference tokens unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPointer {
    /// As written in the config (the index key and log lines use it).
    text: String,
    tokens: Vec<String>,
}

impl JsonPointer {
    /// Parses a pointer: `/` then tokens separated by `/`, with `~1` for `/` and `~0` for `~`.
    /// The whole document (the empty pointer) is not a place a value can be taken from.
    pub fn parse(text: &str) -> Result<JsonPointer, &'static str> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err("must be a JSON pointer starting with '/', such as \"/user/id\"");
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, false) => token.push(c),
                    (_, true) => match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => return Err("has a '~' that is not '~0' or '~1' (RFC 6901 escapes)"),
                    },
                }
            }
            tokens.push(token);
        }
        Ok(JsonPointer { text: text.to_owned(), tokens })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The reference tokens, unescaped, in order.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `memory://`: the embedded in-process store.
    Memory,
    /// `redis://`, `rediss://`, `redis[s]-cluster://` or `redis[s]-sentinel://`; the URL may
    /// hold passwords, so it is never logged whole (`Debug` and `redacted()` hide them).
    Redis(String),
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub url: StoreUrl,
    pub key_prefix: String,
    /// Extra PEM roots for `rediss://`.
    pub ca_file: Option<PathBuf>,
    /// Per store command.
    pub timeout: Duration,
    pub pool_size: usize,
    /// `store.min_replicas`: each write is followed by `WAIT min_replicas timeout_ms` (0: no
    /// WAIT). Always 0 with `memory://`.
    pub min_replicas: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// 503 with `Retry-After: 1`; the upstream is not called.
    Fail,
    /// Forward without `x-session`.
    Pass,
}

#[derive(Clone)]
pub struct SessionConfig {
    pub cookie_name: String,
    /// At least one, none empty. The first signs, every one verifies. Never logged (`Debug`
    /// prints only how many there are).
    pub secrets: Vec<String>,
    /// Seconds, > 0: cookie Max-Age and store TTL.
    pub max_age: u64,
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
    pub save_uninitialized: bool,
    pub rolling: bool,
    /// Request header carrying the session to the upstream (lowercase).
    pub header: HeaderName,
    /// Response header carrying the new session from the upstream (lowercase).
    pub update_header: HeaderName,
    /// Response header asking for a fresh id (lowercase).
    pub regenerate_header: HeaderName,
    /// Response header: an RFC 7386 merge patch for the session as it is in the store.
    pub patch_header: HeaderName,
    /// Largest update header value accepted, in bytes as received.
    pub max_bytes: usize,
    pub on_store_error: OnStoreError,
    /// Keep an index of live sessions by the value at this pointer (`session.index`).
    pub index: Option<JsonPointer>,
    /// Where routes with `require` send browsers without a session that meets it: a path, or
    /// an absolute `http(s)` URL.
    pub login_url: Option<String>,
    /// `[session.headers]`: request headers set from the session on session routes (name,
    /// lowercase; where in the session). Stripped from every client request.
    pub identity_headers: Vec<(HeaderName, JsonPointer)>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Starts with `/`.
    pub prefix: String,
    /// `http://host:port` (scheme and authority only).
    pub upstream: Uri,
    pub session: bool,
    pub strip_prefix: bool,
    /// Lowercased, without a port.
    pub host: Option<String>,
    /// The longest pause between two reads of the upstream's response body: the route's
    /// `read_timeout_ms`, else `server.upstream_read_timeout_ms`; `None`: never (long polls,
    /// server-sent events).
    pub read_timeout: Option<Duration>,
    /// Only sessions that meet it reach the upstream (`require`, `require_value`).
    pub require: Option<Requirement>,
}

/// `[[route]] require` and `require_value`: the session must hold a value at `pointer` other
/// than `null` and `false`; with `value`, one equal to it or an array containing it.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    pub pointer: JsonPointer,
    pub value: Option<RequiredValue>,
}

/// What `require_value` may be: a TOML string, number or boolean.
#[derive(Debug, Clone, PartialEq)]
pub enum RequiredValue {
    String(String),
    Number(f64),
    Bool(bool),
}

impl Config {
    /// The keys whose change between `self` (running) and `new` (just reloaded) only takes
    /// effect after a restart: listeners are bound and the store is connected once. SIGHUP
    /// reload applies everything else and logs these.
    ///
    /// Paths are compared, not file contents: a certificate renewed in place is not reported.
    pub fn restart_required_changes(&self, new: &Config) -> Vec<&'static str> {
        let (old_server, new_server) = (&self.server, &new.server);
        let (old_store, new_store) = (&self.store, &new.store);
        [
            ("server.listen", old_server.listen != new_server.listen),
            ("server.admin_listen", old_server.admin_listen != new_server.admin_listen),
            ("server.tls_cert/tls_key", old_server.tls != new_server.tls),
            ("server.max_connections", old_server.max_connections != new_server.max_connections),
            (
                "server.client_send_timeout_ms",
                old_server.client_send_timeout != new_server.client_send_timeout,
            ),
            ("store.url", old_store.url != new_store.url),
            ("store.ca_file", old_store.ca_file != new_store.ca_file),
            ("store.pool_size", old_store.pool_size != new_store.pool_size),
            ("store.timeout_ms", old_store.timeout != new_store.timeout),
            ("store.min_replicas", old_store.min_replicas != new_store.min_replicas),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}

/// Something a valid config should not have: accepted, but said at start, on reload and by
/// `--check`. Like errors, it names the key and never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.key, self.message)
    }
}

impl Config {
    /// What is accepted but unwise: secrets shorter than [`MIN_SECRET_BYTES`], by their
    /// position in `session.secrets` (never their value or length).
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        self.session
            .secrets
            .iter()
            .enumerate()
            .filter(|(_, secret)| secret.len() < MIN_SECRET_BYTES)
            .map(|(index, _)| ConfigWarning {
                key: format!("session.secrets[{index}]"),
                message: format!(
                    "is shorter than {MIN_SECRET_BYTES} bytes, so a signed cookie could be used to guess it; use a long random value, such as the output of `openssl rand -hex 32`"
                ),
            })
            .collect()
    }
}

impl StoreUrl {
    /// The URL with its password replaced by `***`, for logs and `Debug`.
    pub fn redacted(&self) -> String {
        match self {
            StoreUrl::Memory => DEFAULT_STORE_URL.to_owned(),
            StoreUrl::Redis(url) => redact_userinfo(url),
        }
    }

    /// `rediss://`, `rediss-cluster://`, `rediss-sentinel://`: the store connections use TLS.
    pub fn is_tls(&self) -> bool {
        match self {
            StoreUrl::Memory => false,
            StoreUrl::Redis(url) => url_scheme(url).is_some_and(|s| {
                let s = s.to_ascii_lowercase();
                s == "rediss" || s == "rediss-cluster" || s == "rediss-sentinel"
            }),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Memory => f.write_str("Memory"),
            StoreUrl::Redis(_) => f.debug_tuple("Redis").field(&self.redacted()).finish(),
        }
    }
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfig")
            .field("cookie_name", &self.cookie_name)
            .field("secrets", &format_args!("<{} redacted>", self.secrets.len()))
            .field("max_age", &self.max_age)
            .field("path", &self.path)
            .field("domain", &self.domain)
            .field("secure", &self.secure)
            .field("http_only", &self.http_only)
            .field("same_site", &self.same_site)
            .field("save_uninitialized", &self.save_uninitialized)
            .field("rolling", &self.rolling)
            .field("header", &self.header)
            .field("update_header", &self.update_header)
            .field("regenerate_header", &self.regenerate_header)
            .field("patch_header", &self.patch_header)
            .field("max_bytes", &self.max_bytes)
            .field("on_store_error", &self.on_store_error)
            .field("index", &self.index)
            .field("login_url", &self.login_url)
            .field("identity_headers", &self.identity_headers)
            .finish()
    }
}

/// The scheme of `scheme://...`, if there is one.
fn url_scheme(url: &str) -> Option<&str> {
    url.split_once("://").map(|(scheme, _)| scheme)
}

/// Replaces the password of `scheme://user:password@host...` with `***`. A user info without
/// `:` is hidden whole, since some clients read a lone user info as the password; a string
/// that is not `scheme://...` at all is hidden whole, since we cannot tell where a password is.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let tail = redact_query_passwords(tail);
    match authority.rsplit_once('@') {
        None => format!("{scheme}://{authority}{tail}"),
        Some((userinfo, host)) => {
            let userinfo = match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{scheme}://{userinfo}@{host}{tail}")
        }
    }
}

/// Hides the value of every query parameter that can hold a secret (`sentinelPassword=`, and
/// any other parameter whose name contains "pass" or "token").
fn redact_query_passwords(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _value)) if is_secret_param(name) => format!("{name}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("pass") || name.contains("token") || name.contains("secret")
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a configuration was rejected. Every message names the key (or, for a file that cannot
/// be read, the path) and never contains a secret or the store URL.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file itself could not be read.
    #[error("cannot read the config file {}: {}{}", path.display(), crate::io_error::reading(source), read_hint(source))]
    Read { path: PathBuf, source: std::io::Error },
    /// TOML syntax, an unknown key, or a value of the wrong type. `at` is the key path (when
    /// toml knows it) and the line and column.
    #[error("{at}: {message}")]
    Toml { at: String, message: String },
    /// `${VAR}` without a default, and `VAR` is not set.
    #[error("{key}: environment variable `{var}` is not set and has no default (use ${{{var}:-default}})")]
    MissingVar { key: String, var: String },
    /// `${` with no `}` after it.
    #[error("{key}: `${{` without a closing `}}`")]
    UnterminatedVar { key: String },
    /// `${...}` that is not `${NAME}` or `${NAME:-default}`.
    #[error("{key}: invalid variable reference: {reason}")]
    BadVar { key: String, reason: &'static str },
    /// A value that parsed but is not acceptable (bad address, missing required key, ...).
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

/// What to do when the config file is not where it was looked for.
fn read_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            " (give its path with --config; the default is proxy.toml in the current directory)"
        }
        _ => "",
    }
}

/// A validation error for `key`.
fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

/// Turns a toml error into a one-line [`ConfigError::Toml`]: `key` (the path
/// `serde_path_to_error` tracked while deserializing; none for a syntax error) and the line and
/// column. toml's own `Display` would quote the offending source line, which may be the line
/// holding a secret, so only its message is kept.
fn toml_error(error: toml::de::Error, text: &str, key: Option<String>) -> ConfigError {
    let location = error.span().map(|span| line_column(text, span.start));
    let at = match (key, location) {
        (Some(key), Some((line, column))) => format!("{key} (line {line}, column {column})"),
        (Some(key), None) => key,
        (None, Some((line, column))) => format!("line {line}, column {column}"),
        (None, None) => "proxy.toml".to_owned(),
    };
    ConfigError::Toml { at, message: error.message().to_owned() }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    (line, column)
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Reads and validates the config file at `path`, expanding variables from the process
/// environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    from_toml_str(&text)
}

/// Validates `text`, expanding variables from the process environment (a variable whose value
/// is not valid Unicode counts as unset).
pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
    from_toml_str_with_env(text, |name| std::env::var(name).ok())
}

/// Validates `text`, expanding variables with `env` (injectable so tests need not touch the
/// process environment).
pub fn from_toml_str_with_env(
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut document = DeTable::parse(text).map_err(|e| toml_error(e, text, None))?;
    expand_table(document.get_mut(), "", &env)?;
    let shape: FileShape =
        serde_path_to_error::deserialize(toml::de::Deserializer::from(document)).map_err(|e| {
            // An empty path (an error about the file as a whole) would print as ".".
            let key = (e.path().iter().len() > 0).then(|| e.path().to_string());
            toml_error(e.into_inner(), text, key)
        })?;
    Config::try_from(shape)
}

// ---------------------------------------------------------------------------------------------
// `${VAR}` expansion
// ---------------------------------------------------------------------------------------------

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Expands every string value below `table`, whose key path is `path` ("" at the root).
fn expand_table(table: &mut DeTable<'_>, path: &str, env: Env<'_>) -> Result<(), ConfigError> {
    for (key, value) in table.iter_mut() {
        let key_path =
            if path.is_empty() { key.get_ref().to_string() } else { format!("{path}.{}", key.get_ref()) };
        expand_value(value.get_mut(), &key_path, env)?;
    }
    Ok(())
}

fn expand_value(value: &mut DeValue<'_>, path: &str, env: Env<'_>) -> Result<(), ConfigError> {
    match value {
        DeValue::String(text) => {
            if let Some(expanded) = expand_str(text, env).map_err(|e| e.at(path))? {
                *text = Cow::Owned(expanded);
            }
        }
        DeValue::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                expand_value(item.get_mut(), &format!("{path}[{index}]"), env)?;
            }
        }
        DeValue::Table(table) => expand_table(table, path, env)?,
        DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_) | DeValue::Datetime(_) => {}
    }
    Ok(())
}

/// What is wrong with one string's variable references; the key is added by the caller.
#[derive(Debug, PartialEq, Eq)]
enum ExpandError {
    Missing(String),
    Unterminated,
    BadName,
    Nested,
}

impl ExpandError {
    fn at(self, key: &str) -> ConfigError {
        let key = key.to_owned();
        match self {
            ExpandError::Missing(var) => ConfigError::MissingVar { key, var },
            ExpandError::Unterminated => ConfigError::UnterminatedVar { key },
            ExpandError::BadName => ConfigError::BadVar {
                key,
                reason: "a variable name is letters, digits and `_`, not starting with a digit",
            },
            ExpandError::Nested => {
                ConfigError::BadVar { key, reason: "a default cannot contain another `${`" }
            }
        }
    }
}

/// Expands `${VAR}` and `${VAR:-default}` in `input`; `None` when there is nothing to expand.
///
/// As in the shell, `:-` takes the default when the variable is unset *or empty*, and `${VAR}`
/// of a variable set to "" gives "". A `$` not followed by `{` is literal. Expanded text is not
/// expanded again, so a variable's value can never pull in another variable.
fn expand_str(input: &str, env: Env<'_>) -> Result<Option<String>, ExpandError> {
    if !input.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(ExpandError::Unterminated)?;
        out.push_str(&resolve(&after[..end], env)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// The value of one reference, given what is between `${` and `}`.
fn resolve(reference: &str, env: Env<'_>) -> Result<String, ExpandError> {
    let (name, default) = match reference.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (reference, None),
    };
    if !is_var_name(name) {
        return Err(ExpandError::BadName);
    }
    if default.is_some_and(|d| d.contains("${")) {
        return Err(ExpandError::Nested);
    }
    match (env(name), default) {
        (Some(value), Some(default)) if value.is_empty() => Ok(default.to_owned()),
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_owned()),
        (None, None) => Err(ExpandError::Missing(name.to_owned())),
    }
}

/// A portable environment variable name (POSIX): `[A-Za-z_][A-Za-z0-9_]*`.
fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

// ---------------------------------------------------------------------------------------------
// File shape: exactly what `proxy.toml` may contain. Every key is optional here so that a
// missing required key is reported by the conversion below with its full path (`route[2].prefix`)
// rather than by serde. Enum-like keys (`same_site`, ...) are strings so `${VAR}` works there too.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct FileShape {
    server: ServerShape,
    store: StoreShape,
    session: SessionShape,
    route: Vec<RouteShape>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ServerShape {
    listen: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    admin_listen: Option<String>,
    upstream_timeout_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    admin_token: Option<String>,
    max_connections: Option<u64>,
    upstream_read_timeout_ms: Option<u64>,
    client_send_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct StoreShape {
    url: Option<String>,
    key_prefix: Option<String>,
    ca_file: Option<String>,
    timeout_ms: Option<u64>,
    pool_size: Option<u64>,
    min_replicas: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct SessionShape {
    cookie_name: Option<String>,
    #[serde(deserialize_with = "secret_list")]
    secrets: Option<Vec<String>>,
    max_age: Option<u64>,
    path: Option<String>,
    domain: Option<String>,
    secure: Option<bool>,
    http_only: Option<bool>,
    same_site: Option<String>,
    save_uninitialized: Option<bool>,
    rolling: Option<bool>,
    header: Option<String>,
    update_header: Option<String>,
    regenerate_header: Option<String>,
    patch_header: Option<String>,
    max_bytes: Option<u64>,
    on_store_error: Option<String>,
    index: Option<String>,
    login_url: Option<String>,
    headers: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RouteShape {
    prefix: Option<String>,
    upstream: Option<String>,
    session: Option<bool>,
    strip_prefix: Option<bool>,
    host: Option<String>,
    read_timeout_ms: Option<u64>,
    require: Option<String>,
    require_value: Option<RequiredValueShape>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RequiredValueShape {
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
}

/// `session.secrets` as an array of strings. serde's stock error for a lone string would quote
/// it (`invalid type: string "...", expected a sequence`), and that string is a secret.
fn secret_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct SecretList;

    impl<'de> serde::de::Visitor<'de> for SecretList {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of strings")
        }

        fn visit_str<E: serde::de::Error>(self, _secret: &str) -> Result<Self::Value, E> {
            Err(E::invalid_type(serde::de::Unexpected::Other("a string"), &self))
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut secrets = Vec::new();
            while let Some(secret) = seq.next_element()? {
                secrets.push(secret);
            }
            Ok(secrets)
        }
    }

    d.deserialize_seq(SecretList).map(Some)
}

// ---------------------------------------------------------------------------------------------
// Conversion and validation: file shape → runtime types.
// ---------------------------------------------------------------------------------------------

impl TryFrom<FileShape> for Config {
    type Error = ConfigError;

    fn try_from(shape: FileShape) -> Result<Config, ConfigError> {
        let server = server_config(shape.server)?;
        let read_timeout = server.upstream_read_timeout;
        Ok(Config {
            server,
            store: store_config(shape.store)?,
            session: session_config(shape.session)?,
            routes: route_configs(shape.route, read_timeout)?,
        })
    }
}

/// The value of a required key.
fn required<T>(value: Option<T>, key: &str) -> Result<T, ConfigError> {
    value.ok_or_else(|| invalid(key, "is required"))
}

fn server_config(shape: ServerShape) -> Result<ServerConfig, ConfigError> {
    let listen = socket_addr(&required(shape.listen, "server.listen")?, "server.listen")?;
    let admin_listen = match shape.admin_listen {
        Some(text) => Some(socket_addr(&text, "server.admin_listen")?),
        None => None,
    };
    // Port 0 asks the OS for a fresh port, so two `:0` listeners do not clash (tests use that).
    if admin_listen == Some(listen) && listen.port() != 0 {
        return Err(invalid(
            "server.admin_listen",
            "must differ from server.listen (the admin endpoints are never served publicly)",
        ));
    }
    Ok(ServerConfig {
        listen,
        tls: tls_files(shape.tls_cert, shape.tls_key)?,
        admin_listen,
        upstream_timeout: timeout(
            shape.upstream_timeout_ms.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_MS),
            "server.upstream_timeout_ms",
        )?,
        shutdown_grace: timeout(
            shape.shutdown_grace_ms.unwrap_or(DEFAULT_SHUTDOWN_GRACE_MS),
            "server.shutdown_grace_ms",
        )?,
        max_connections: shape.max_connections.map(max_connections).transpose()?,
        upstream_read_timeout: timeout_or_never(
            shape.upstream_read_timeout_ms.unwrap_or(DEFAULT_UPSTREAM_READ_TIMEOUT_MS),
            "server.upstream_read_timeout_ms",
        )?,
        client_send_timeout: timeout(
            shape.client_send_timeout_ms.unwrap_or(DEFAULT_CLIENT_SEND_TIMEOUT_MS),
            "server.client_send_timeout_ms",
        )?,
        admin_token: admin_token(shape.admin_token, admin_listen.is_some())?,
    })
}

/// Visible ASCII, so that it fits an `Authorization` header as it is; never echoed.
fn admin_token(token: Option<String>, admin_listen: bool) -> Result<Option<AdminToken>, ConfigError> {
    let Some(token) = token else { return Ok(None) };
    const KEY: &str = "server.admin_token";
    if token.is_empty() {
        return Err(invalid(KEY, "must not be empty (leave the key out to disable the session endpoints)"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            KEY,
            "must be printable ASCII without spaces (it travels in an Authorization header)",
        ));
    }
    if !admin_listen {
        return Err(invalid(
            KEY,
            "is set but server.admin_listen is not: the session endpoints are served there",
        ));
    }
    Ok(Some(AdminToken(token)))
}

fn max_connections(value: u64) -> Result<usize, ConfigError> {
    match usize::try_from(value) {
        Ok(n @ 1..=MAX_MAX_CONNECTIONS) => Ok(n),
        _ => Err(invalid("server.max_connections", format!("must be between 1 and {MAX_MAX_CONNECTIONS}"))),
    }
}

fn socket_addr(text: &str, key: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| invalid(key, format!("{text:?} is not an IP address and port (such as 127.0.0.1:8080)")))
}

fn tls_files(cert: Option<String>, key: Option<String>) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid("server.tls_key", "is required when server.tls_cert is set")),
        (None, Some(_)) => Err(invalid("server.tls_cert", "is required when server.tls_key is set")),
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: file_path(cert, "server.tls_cert")?,
            key: file_path(key, "server.tls_key")?,
        })),
    }
}

fn file_path(text: String, key: &str) -> Result<PathBuf, ConfigError> {
    if text.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    Ok(PathBuf::from(text))
}

/// A `*_ms` value: 1..=[`MAX_TIMEOUT_MS`]. Zero would mean every request times out at once.
fn timeout(ms: u64, key: &str) -> Result<Duration, ConfigError> {
    if ms == 0 || ms > MAX_TIMEOUT_MS {
        return Err(invalid(key, format!("must be between 1 and {MAX_TIMEOUT_MS} milliseconds")));
    }
    Ok(Duration::from_millis(ms))
}

/// A `*_ms` value where 0 means never: `None`, else as [`timeout`].
fn timeout_or_never(ms: u64, key: &str) -> Result<Option<Duration>, ConfigError> {
    if ms > MAX_TIMEOUT_MS {
        return Err(invalid(key, format!("must be between 0 (never) and {MAX_TIMEOUT_MS} milliseconds")));
    }
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

fn store_config(shape: StoreShape) -> Result<StoreConfig, ConfigError> {
    let url = store_url(shape.url.as_deref().unwrap_or(DEFAULT_STORE_URL))
        .map_err(|reason| invalid("store.url", reason))?;
    let ca_file = match shape.ca_file {
        Some(_) if !url.is_tls() => {
            return Err(invalid(
                "store.ca_file",
                "is only used with a TLS store.url (rediss://, rediss-cluster://, rediss-sentinel://)",
            ))
        }
        Some(path) => Some(file_path(path, "store.ca_file")?),
        None => None,
    };
    let min_replicas = match (shape.min_replicas, &url) {
        (None | Some(0), _) => 0,
        (Some(_), StoreUrl::Memory) => {
            return Err(invalid("store.min_replicas", "needs a Redis store.url (memory:// has no replicas)"))
        }
        (Some(n), StoreUrl::Redis(_)) => match u32::try_from(n) {
            Ok(n @ 1..=MAX_MIN_REPLICAS) => n,
            _ => {
                return Err(invalid(
                    "store.min_replicas",
                    format!("must be between 0 and {MAX_MIN_REPLICAS}"),
                ))
            }
        },
    };
    Ok(StoreConfig {
        url,
        key_prefix: shape.key_prefix.unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned()),
        ca_file,
        timeout: timeout(shape.timeout_ms.unwrap_or(DEFAULT_STORE_TIMEOUT_MS), "store.timeout_ms")?,
        pool_size: pool_size(shape.pool_size)?,
        min_replicas,
    })
}

/// Parses `store.url`. The reasons never quote the URL: it may carry a password.
fn store_url(url: &str) -> Result<StoreUrl, String> {
    const SCHEMES: &str = "must start with memory://, redis://, rediss://, redis-cluster://, \
                           rediss-cluster://, redis-sentinel:// or rediss-sentinel://";
    let (scheme, rest) = url.split_once("://").ok_or(SCHEMES)?;
    if scheme.eq_ignore_ascii_case("memory") {
        return match rest {
            "" => Ok(StoreUrl::Memory),
            _ => Err("memory:// takes nothing after the scheme".to_owned()),
        };
    }
    let scheme = scheme.to_ascii_lowercase();
    let sentinel = match scheme.as_str() {
        "redis" | "rediss" | "redis-cluster" | "rediss-cluster" => false,
        "redis-sentinel" | "rediss-sentinel" => true,
        _ => return Err(SCHEMES.to_owned()),
    };
    let uri: Uri = url.parse().map_err(|_| format!("is not a valid {scheme}:// URL"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".to_owned());
    }
    let has_param = |wanted: &str| {
        uri.query().is_some_and(|query| {
            query
                .split('&')
                .any(|pair| pair.split_once('=').is_some_and(|(k, v)| k == wanted && !v.is_empty()))
        })
    };
    if sentinel && !has_param("sentinelServiceName") {
        return Err(format!(
            "{scheme}:// needs the master's name: ?sentinelServiceName=NAME (as in the sentinels' \
             `sentinel monitor NAME ...`)"
        ));
    }
    if !sentinel && has_param("sentinelServiceName") {
        return Err(format!("sentinelServiceName is only for redis-sentinel:// URLs, not {scheme}://"));
    }
    crate::redis_url::check_url(url)?;
    Ok(StoreUrl::Redis(url.to_owned()))
}

fn pool_size(value: Option<u64>) -> Result<usize, ConfigError> {
    let Some(value) = value else {
        return Ok(DEFAULT_POOL_SIZE);
    };
    match usize::try_from(value) {
        Ok(size @ 1..=MAX_POOL_SIZE) => Ok(size),
        _ => Err(invalid("store.pool_size", format!("must be between 1 and {MAX_POOL_SIZE}"))),
    }
}

fn session_config(shape: SessionShape) -> Result<SessionConfig, ConfigError> {
    let secure = shape.secure.unwrap_or(DEFAULT_SECURE);
    let same_site = match shape.same_site {
        Some(text) => same_site(&text)?,
        None => DEFAULT_SAME_SITE,
    };
    // Browsers drop `SameSite=None` cookies that are not `Secure`.
    if same_site == SameSite::None && !secure {
        return Err(invalid("session.same_site", "\"none\" requires session.secure = true"));
    }
    let max_bytes = shape.max_bytes.unwrap_or(DEFAULT_MAX_BYTES as u64);
    let max_bytes = match usize::try_from(max_bytes) {
        Ok(bytes @ 1..=MAX_SESSION_BYTES) => bytes,
        _ => return Err(invalid("session.max_bytes", format!("must be between 1 and {MAX_SESSION_BYTES}"))),
    };
    let max_age = shape.max_age.unwrap_or(DEFAULT_MAX_AGE_SECS);
    if max_age == 0 {
        return Err(invalid("session.max_age", "must be > 0 seconds"));
    }
    let [header, update_header, regenerate_header, patch_header] = session_headers(
        shape.header.as_deref().unwrap_or(DEFAULT_HEADER),
        shape.update_header.as_deref().unwrap_or(DEFAULT_UPDATE_HEADER),
        shape.regenerate_header.as_deref().unwrap_or(DEFAULT_REGENERATE_HEADER),
        shape.patch_header.as_deref().unwrap_or(DEFAULT_PATCH_HEADER),
    )?;
    let identity_headers =
        identity_headers(shape.headers, [&header, &update_header, &regenerate_header, &patch_header])?;
    Ok(SessionConfig {
        cookie_name: cookie_name(shape.cookie_name.unwrap_or_else(|| DEFAULT_COOKIE_NAME.to_owned()))?,
        secrets: secrets(shape.secrets)?,
        max_age,
        path: cookie_path(shape.path.unwrap_or_else(|| DEFAULT_COOKIE_PATH.to_owned()))?,
        domain: shape.domain.map(cookie_domain).transpose()?,
        secure,
        http_only: shape.http_only.unwrap_or(DEFAULT_HTTP_ONLY),
        same_site,
        save_uninitialized: shape.save_uninitialized.unwrap_or(DEFAULT_SAVE_UNINITIALIZED),
        rolling: shape.rolling.unwrap_or(DEFAULT_ROLLING),
        header,
        update_header,
        regenerate_header,
        patch_header,
        max_bytes,
        on_store_error: match shape.on_store_error {
            Some(text) => on_store_error(&text)?,
            None => DEFAULT_ON_STORE_ERROR,
        },
        index: shape
            .index
            .map(|text| JsonPointer::parse(&text).map_err(|reason| invalid("session.index", reason)))
            .transpose()?,
        login_url: shape.login_url.map(|url| login_url(&url)).transpose()?,
        identity_headers,
    })
}

/// `session.login_url`: a path (`/login`), or an absolute `http://` or `https://` URL. Never a
/// protocol-relative `//host`: the redirect goes where the operator said, nowhere else.
fn login_url(url: &str) -> Result<String, ConfigError> {
    const KEY: &str = "session.login_url";
    if url.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(invalid(KEY, "must be printable ASCII without spaces (percent-encode the rest)"));
    }
    if url.starts_with('/') && !url.starts_with("//") {
        return Ok(url.to_owned());
    }
    let absolute = url.parse::<Uri>().ok().filter(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.authority().is_some_and(|a| !a.host().is_empty())
    });
    match absolute {
        Some(_) => Ok(url.to_owned()),
        None => Err(invalid(
            KEY,
            "must be a path starting with '/' (not '//') or an absolute http:// or https:// URL",
        )),
    }
}

/// `[session.headers]`: each name a valid header name (lowercased), distinct from the others,
/// from the protocol headers and from the headers the proxy relies on (compared lowercased,
/// with `_` as `-`: clients' copies are stripped by that comparison); each value a pointer.
fn identity_headers(
    shapes: std::collections::BTreeMap<String, String>,
    protocol: [&HeaderName; 4],
) -> Result<Vec<(HeaderName, JsonPointer)>, ConfigError> {
    let mut headers: Vec<(HeaderName, JsonPointer)> = Vec::with_capacity(shapes.len());
    for (name, pointer) in shapes {
        let key = format!("session.headers.{name}");
        let header = header_name(&name, &key)?;
        let normalised = normalise_header_name(&name);
        if RESERVED_HEADER_NAMES.contains(&normalised.as_str()) {
            return Err(invalid(key, format!("{name:?} is a header the proxy itself relies on")));
        }
        if protocol.iter().any(|p| normalise_header_name(p.as_str()) == normalised) {
            return Err(invalid(
                key,
                "is one of the session protocol headers (compared lowercased, with '_' as '-')",
            ));
        }
        if headers.iter().any(|(other, _)| normalise_header_name(other.as_str()) == normalised) {
            return Err(invalid(
                key,
                "is the same header as another entry (compared lowercased, with '_' as '-')",
            ));
        }
        let pointer = JsonPointer::parse(&pointer).map_err(|reason| invalid(&key, reason))?;
        headers.push((header, pointer));
    }
    Ok(headers)
}

/// At least one secret, none empty. Errors name the index, never the value.
fn secrets(secrets: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let secrets = required(secrets, "session.secrets")?;
    if secrets.is_empty() {
        return Err(invalid("session.secrets", "needs at least one secret"));
    }
    if let Some(index) = secrets.iter().position(String::is_empty) {
        return Err(invalid(format!("session.secrets[{index}]"), "must not be empty"));
    }
    Ok(secrets)
}

/// RFC 6265 §4.1.1: `cookie-name = token` (RFC 9110 §5.6.2 `tchar`s).
fn cookie_name(name: String) -> Result<String, ConfigError> {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(invalid(
            "session.cookie_name",
            "must be a non-empty token (letters, digits and !#$%&'*+-.^_`|~)",
        ));
    }
    Ok(name)
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 6265 §4.1.1 `path-value`: any ASCII CHAR except controls and `;`. It must start with
/// `/`, or browsers replace it with the request's directory.
fn cookie_path(path: String) -> Result<String, ConfigError> {
    if !path.starts_with('/') {
        return Err(invalid("session.path", "must start with '/'"));
    }
    if !path.bytes().all(|b| b.is_ascii() && !b.is_ascii_control() && b != b';') {
        return Err(invalid("session.path", "must not contain ';', control or non-ASCII characters"));
    }
    Ok(path)
}

/// A `Domain` attribute value: a host name, so no `;`, whitespace, controls or non-ASCII
/// (an internationalised domain must be given in its `xn--` form).
fn cookie_domain(domain: String) -> Result<String, ConfigError> {
    if domain.is_empty() {
        return Err(invalid("session.domain", "must not be empty (leave it out for a host-only cookie)"));
    }
    if !domain.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
        return Err(invalid(
            "session.domain",
            "must not contain ';', spaces, control or non-ASCII characters",
        ));
    }
    Ok(domain)
}

fn same_site(text: &str) -> Result<SameSite, ConfigError> {
    match text.to_ascii_lowercase().as_str() {
        "strict" => Ok(SameSite::Strict),
        "lax" => Ok(SameSite::Lax),
        "none" => Ok(SameSite::None),
        _ => Err(invalid("session.same_site", format!("{text:?} is not \"strict\", \"lax\" or \"none\""))),
    }
}

fn on_store_error(text: &str) -> Result<OnStoreError, ConfigError> {
    match text.to_ascii_lowercase().as_str() {
        "fail" => Ok(OnStoreError::Fail),
        "pass" => Ok(OnStoreError::Pass),
        _ => Err(invalid("session.on_store_error", format!("{text:?} is not \"fail\" or \"pass\""))),
    }
}

/// The four protocol header names, lowercased and checked to be distinct (and not reserved)
/// after normalisation: the proxy strips client headers by the normalised name, so two names
/// that normalise alike would make one strip the other.
fn session_headers(
    header: &str,
    update: &str,
    regenerate: &str,
    patch: &str,
) -> Result<[HeaderName; 4], ConfigError> {
    let named = [
        ("session.header", header),
        ("session.update_header", update),
        ("session.regenerate_header", regenerate),
        ("session.patch_header", patch),
    ];
    for (i, (key, name)) in named.iter().enumerate() {
        let normalised = normalise_header_name(name);
        if RESERVED_HEADER_NAMES.contains(&normalised.as_str()) {
            return Err(invalid(*key, format!("{name:?} is a header the proxy itself relies on")));
        }
        if let Some((earlier, _)) =
            named[..i].iter().find(|(_, other)| normalise_header_name(other) == normalised)
        {
            return Err(invalid(
                *key,
                format!("is the same header as {earlier} (compared lowercased, with '_' as '-')"),
            ));
        }
    }
    Ok([
        header_name(header, named[0].0)?,
        header_name(update, named[1].0)?,
        header_name(regenerate, named[2].0)?,
        header_name(patch, named[3].0)?,
    ])
}

/// The comparison form the proxy uses for stripping: lowercase, `_` → `-`.
fn normalise_header_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

fn header_name(name: &str, key: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| invalid(key, format!("{name:?} is not a valid HTTP header name")))
}

/// The routes; `read_timeout` is `server.upstream_read_timeout_ms`, for routes without their own.
fn route_configs(
    shapes: Vec<RouteShape>,
    read_timeout: Option<Duration>,
) -> Result<Vec<RouteConfig>, ConfigError> {
    if shapes.is_empty() {
        return Err(invalid("route", "at least one [[route]] is required"));
    }
    let mut routes: Vec<RouteConfig> = Vec::with_capacity(shapes.len());
    for (index, shape) in shapes.into_iter().enumerate() {
        let route = route_config(shape, index, read_timeout)?;
        // Two routes with the same host and prefix: the second could never match.
        if let Some(earlier) = routes.iter().position(|r| r.host == route.host && r.prefix == route.prefix) {
            return Err(invalid(
                format!("route[{index}]"),
                format!("has the same host and prefix as route[{earlier}]"),
            ));
        }
        routes.push(route);
    }
    Ok(routes)
}

fn route_config(
    shape: RouteShape,
    index: usize,
    read_timeout: Option<Duration>,
) -> Result<RouteConfig, ConfigError> {
    let key = |name: &str| format!("route[{index}].{name}");
    let prefix = required(shape.prefix, &key("prefix"))?;
    route_prefix(&prefix).map_err(|reason| invalid(key("prefix"), reason))?;
    let upstream = required(shape.upstream, &key("upstream"))?;
    let upstream = upstream_uri(&upstream).map_err(|reason| invalid(key("upstream"), reason))?;
    let host = match shape.host {
        Some(host) => Some(route_host(&host).map_err(|reason| invalid(key("host"), reason))?),
        None => None,
    };
    let session = shape.session.unwrap_or(DEFAULT_ROUTE_SESSION);
    let require = match (shape.require, shape.require_value) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(invalid(key("require_value"), "needs `require` (the pointer to compare at)"))
        }
        (Some(_), _) if !session => {
            return Err(invalid(key("require"), "needs a session route: this route has session = false"))
        }
        (Some(pointer), value) => Some(Requirement {
            pointer: JsonPointer::parse(&pointer).map_err(|reason| invalid(key("require"), reason))?,
            value: value.map(|v| match v {
                RequiredValueShape::Bool(b) => RequiredValue::Bool(b),
                RequiredValueShape::Integer(n) => RequiredValue::Number(n as f64),
                RequiredValueShape::Float(x) => RequiredValue::Number(x),
                RequiredValueShape::String(s) => RequiredValue::String(s),
            }),
        }),
    };
    Ok(RouteConfig {
        prefix,
        upstream,
        session,
        strip_prefix: shape.strip_prefix.unwrap_or(DEFAULT_STRIP_PREFIX),
        host,
        require,
        read_timeout: match shape.read_timeout_ms {
            Some(ms) => timeout_or_never(ms, &key("read_timeout_ms"))?,
            None => read_timeout,
        },
    })
}

/// A path prefix: compared with request paths, so it has to look like one.
fn route_prefix(prefix: &str) -> Result<(), &'static str> {
    if !prefix.starts_with('/') {
        return Err("must start with '/'");
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#') {
        return Err("must be a path: no spaces, control characters, '?' or '#'");
    }
    Ok(())
}

/// `http://host[:port]` with nothing after the authority but an optional `/`, returned as a
/// scheme + authority URI. Only plain HTTP: upstreams are local apps.
fn upstream_uri(text: &str) -> Result<Uri, &'static str> {
    let uri: Uri = text.parse().map_err(|_| "is not a valid URI")?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err("must start with http://");
    }
    let authority = uri.authority().ok_or("has no host")?;
    if authority.as_str().contains('@') {
        return Err("must not contain user info");
    }
    if authority.host().is_empty() {
        return Err("has no host");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("must be only http://host:port (no path or query)");
    }
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|_| "is not a valid URI")
}

/// A `Host` to match: lowercased, any `:port` removed (the README: ports are ignored).
fn route_host(text: &str) -> Result<String, &'static str> {
    const BAD_HOST: &str = "must be a host name such as app.example.com";
    if text.contains(['@', '/', '?', '#']) {
        return Err(BAD_HOST);
    }
    let authority: Authority = text.parse().map_err(|_| BAD_HOST)?;
    let host = authority.host();
    if host.is_empty() {
        return Err(BAD_HOST);
    }
    Ok(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid file: the three required things. `[store]` is there (empty) so tests
    /// can add a line to every table.
    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8080"

[store]

[session]
secrets = ["s3cr3t"]

[[route]]
prefix = "/"
upstream = "http://127.0.0.1:3000"
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// An environment holding exactly `vars`.
    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn parse(text: &str) -> Config {
        from_toml_str_with_env(text, no_env).unwrap()
    }

    fn error(text: &str) -> String {
        from_toml_str_with_env(text, no_env).unwrap_err().to_string()
    }

    /// MINIMAL with `line` added at the top of `table` (`server`, `store`, `session`, `route`).
    fn with(table: &str, line: &str) -> String {
        let header = if table == "route" { "[[route]]\n".to_owned() } else { format!("[{table}]\n") };
        MINIMAL.replacen(&header, &format!("{header}{line}\n"), 1)
    }

    /// MINIMAL with `line` replacing the line that starts with `start`.
    fn replacing(start: &str, line: &str) -> String {
        MINIMAL.lines().map(|l| if l.starts_with(start) { line } else { l }).collect::<Vec<_>>().join("\n")
    }

    /// Asserts the error message starts with `key` (the key is always named first).
    fn assert_error_names(text: &str, key: &str) -> String {
        let message = error(text);
        assert!(message.starts_with(key), "expected an error about {key}, got: {message}");
        message
    }

    /// The configuration reference (the README's), every key at its default or commented out.
    const FULL_EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:8080"          # required
# tls_cert = "cert.pem"            # with tls_key: serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN)
# tls_key = "key.pem"
# admin_listen = "127.0.0.1:9901"  # /healthz, /readyz, /metrics; never on the public listener
# upstream_timeout_ms = 30000      # until the upstream's response headers, then 504
# shutdown_grace_ms = 30000        # SIGTERM/SIGINT: stop accepting, finish in-flight requests
# max_connections = 20000          # open client connections; at the cap, accepting pauses
# upstream_read_timeout_ms = 60000 # between two reads of the upstream's response body; 0 = never
# client_send_timeout_ms = 60000   # a client that takes nothing of its response this long is dropped
# admin_token = "${ADMIN_TOKEN}"   # enables the session management endpoints (Bearer token)

[store]
url = "memory://"                  # embedded in-process store (one process; lost on restart)
# url = "redis://127.0.0.1:6379"   # also rediss:// (TLS, e.g. Upstash: rediss://default:TOKEN@HOST:6379),
                                   # redis-cluster://, rediss-cluster://, redis-sentinel://, rediss-sentinel://
key_prefix = "_session:"
# ca_file = "ca.pem"               # extra PEM roots for rediss:// (private CA)
# timeout_ms = 1000                # per store command
# pool_size = 2
# min_replicas = 0                 # Redis only: WAIT for this many replicas after each write, else 503

[session]
cookie_name = "__session"
secrets = ["${SESSION_SECRET}"]    # required, at least one: the first signs, every one verifies
max_age = 1209600                  # seconds, > 0: cookie Max-Age and store TTL
path = "/"
# domain = "example.com"
secure = true
http_only = true
same_site = "lax"                  # "strict" | "lax" | "none"
save_uninitialized = false         # save (and set a cookie for) a new, unmodified session
rolling = false                    # refresh TTL and cookie Max-Age on every request
header = "x-session"               # request header: the session, to the upstream
update_header = "x-session-update" # response header: the new session, from the upstream
regenerate_header = "x-session-regenerate" # response header: move the session to a fresh id
patch_header = "x-session-patch"   # response header: a JSON merge patch applied atomically
# index = "/user/id"               # JSON pointer: keep a per-value index of live sessions (admin API)
# login_url = "/login"             # where routes with `require` send anonymous browsers
max_bytes = 16384                  # largest session accepted from the upstream (JSON bytes)
on_store_error = "fail"            # "fail": 503; "pass": forward without a session

[session.headers]                  # identity headers for the upstream, from the session
# "x-user-id" = "/user/id"         # header name = JSON pointer (RFC 6901) into the session

[[route]]                          # longest matching prefix wins
prefix = "/static/"
upstream = "http://127.0.0.1:3000"
session = false

[[route]]
prefix = "/"                       # matches on path-segment boundaries: "/app" matches
upstream = "http://127.0.0.1:3000" # "/app" and "/app/x", never "/apple"
session = true                     # default true
# strip_prefix = false
# host = "app.example.com"         # only requests for this Host
# require = "/user"                # JSON pointer that must hold a value (not null or false)
# require_value = "admin"          # ... equal to this (or, for an array, containing it)
# read_timeout_ms = 0              # per-route upstream_read_timeout_ms (0: never, for SSE)
"#;

    // --- the full example and defaults -------------------------------------------------

    #[test]
    fn full_example_parses() {
        let config = from_toml_str_with_env(FULL_EXAMPLE, env(&[("SESSION_SECRET", "top-secret")])).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.store.url, StoreUrl::Memory);
        assert_eq!(config.store.key_prefix, "_session:");
        assert_eq!(config.session.secrets, vec!["top-secret".to_owned()]);
        assert_eq!(config.session.same_site, SameSite::Lax);
        assert_eq!(config.session.on_store_error, OnStoreError::Fail);
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.routes[0].prefix, "/static/");
        assert!(!config.routes[0].session);
        assert_eq!(config.routes[1].prefix, "/");
        assert!(config.routes[1].session);
        assert_eq!(config.routes[1].upstream.scheme_str(), Some("http"));
        assert_eq!(config.routes[1].upstream.authority().unwrap().as_str(), "127.0.0.1:3000");
    }

    #[test]
    fn full_example_without_secret_names_the_variable() {
        let message = from_toml_str_with_env(FULL_EXAMPLE, no_env).unwrap_err().to_string();
        assert!(message.starts_with("session.secrets[0]:"), "{message}");
        assert!(message.contains("SESSION_SECRET"), "{message}");
    }

    #[test]
    fn every_default() {
        let config = parse(MINIMAL);
        let server = &config.server;
        assert_eq!(server.tls, None);
        assert_eq!(server.admin_listen, None);
        assert_eq!(server.upstream_timeout, Duration::from_millis(30_000));
        assert_eq!(server.shutdown_grace, Duration::from_millis(30_000));
        assert_eq!(server.max_connections, None, "unset: the server derives it (DEFAULT_MAX_CONNECTIONS)");
        assert_eq!(server.upstream_read_timeout, Some(Duration::from_millis(60_000)));
        assert_eq!(server.client_send_timeout, Duration::from_millis(60_000));
        let store = &config.store;
        assert_eq!(store.url, StoreUrl::Memory);
        assert_eq!(store.key_prefix, "_session:");
        assert_eq!(store.ca_file, None);
        assert_eq!(store.timeout, Duration::from_millis(1_000));
        assert_eq!(store.pool_size, 2);
        let session = &config.session;
        assert_eq!(session.cookie_name, "__session");
        assert_eq!(session.max_age, 1_209_600);
        assert_eq!(session.path, "/");
        assert_eq!(session.domain, None);
        assert!(session.secure);
        assert!(session.http_only);
        assert_eq!(session.same_site, SameSite::Lax);
        assert!(!session.save_uninitialized);
        assert!(!session.rolling);
        assert_eq!(session.header, "x-session");
        assert_eq!(session.update_header, "x-session-update");
        assert_eq!(session.regenerate_header, "x-session-regenerate");
        assert_eq!(session.patch_header, "x-session-patch");
        assert_eq!(session.max_bytes, 16_384);
        assert_eq!(session.on_store_error, OnStoreError::Fail);
        let route = &config.routes[0];
        assert!(route.session);
        assert!(!route.strip_prefix);
        assert_eq!(route.host, None);
        assert_eq!(route.read_timeout, Some(Duration::from_millis(60_000)));
    }

    #[test]
    fn explicit_values_are_used() {
        let text = r#"
[server]
listen = "[::1]:8443"
tls_cert = "cert.pem"
tls_key = "key.pem"
admin_listen = "127.0.0.1:9901"
upstream_timeout_ms = 5000
shutdown_grace_ms = 100
max_connections = 500
upstream_read_timeout_ms = 7000
client_send_timeout_ms = 8000
admin_token = "operator-token"

[store]
url = "rediss://default:TOKEN@example.upstash.io:6379"
key_prefix = "app:"
ca_file = "ca.pem"
timeout_ms = 250
pool_size = 8

[session]
cookie_name = "sid"
secrets = ["new", "old"]
max_age = 60
path = "/app"
domain = "example.com"
secure = true
http_only = false
same_site = "None"
save_uninitialized = true
rolling = true
header = "X-App-Session"
update_header = "x-app-update"
regenerate_header = "x-app-regen"
patch_header = "X_App_Patch"
max_bytes = 4096
on_store_error = "pass"
index = "/user/id"
login_url = "/login"

[session.headers]
"x-user-id" = "/user/id"
"X-Roles" = "/roles"

[[route]]
prefix = "/admin"
upstream = "http://localhost:3003"
require = "/roles"
require_value = "admin"

[[route]]
prefix = "/app"
upstream = "http://localhost:3000/"
session = false
strip_prefix = true
host = "App.Example.com:443"
read_timeout_ms = 0

[[route]]
prefix = "/api"
upstream = "http://localhost:3001"
read_timeout_ms = 2500

[[route]]
prefix = "/"
upstream = "http://localhost:3002"
"#;
        let mut config = parse(text);
        assert_eq!(config.server.listen, "[::1]:8443".parse().unwrap());
        assert_eq!(config.server.tls, Some(TlsFiles { cert: "cert.pem".into(), key: "key.pem".into() }));
        assert_eq!(config.server.admin_listen, Some("127.0.0.1:9901".parse().unwrap()));
        assert_eq!(config.server.upstream_timeout, Duration::from_millis(5000));
        assert_eq!(config.server.shutdown_grace, Duration::from_millis(100));
        assert_eq!(config.server.max_connections, Some(500));
        assert_eq!(config.server.upstream_read_timeout, Some(Duration::from_millis(7000)));
        assert_eq!(config.server.client_send_timeout, Duration::from_millis(8000));
        assert_eq!(
            config.server.admin_token.as_ref().map(AdminToken::as_bytes),
            Some(&b"operator-token"[..])
        );
        assert!(config.store.url.is_tls());
        assert_eq!(config.store.key_prefix, "app:");
        assert_eq!(config.store.ca_file, Some(PathBuf::from("ca.pem")));
        assert_eq!(config.store.timeout, Duration::from_millis(250));
        assert_eq!(config.store.pool_size, 8);
        let session = &config.session;
        assert_eq!(session.cookie_name, "sid");
        assert_eq!(session.secrets, vec!["new".to_owned(), "old".to_owned()]);
        assert_eq!(session.max_age, 60);
        assert_eq!(session.path, "/app");
        assert_eq!(session.domain.as_deref(), Some("example.com"));
        assert!(!session.http_only);
        assert_eq!(session.same_site, SameSite::None);
        assert!(session.save_uninitialized);
        assert!(session.rolling);
        assert_eq!(session.header, "x-app-session");
        assert_eq!(session.patch_header, "x_app_patch");
        assert_eq!(session.max_bytes, 4096);
        assert_eq!(session.on_store_error, OnStoreError::Pass);
        assert_eq!(session.index, Some(JsonPointer::parse("/user/id").unwrap()));
        assert_eq!(session.login_url.as_deref(), Some("/login"));
        let headers: Vec<(&str, &JsonPointer)> =
            session.identity_headers.iter().map(|(name, pointer)| (name.as_str(), pointer)).collect();
        assert_eq!(
            headers,
            [
                ("x-roles", &JsonPointer::parse("/roles").unwrap()),
                ("x-user-id", &JsonPointer::parse("/user/id").unwrap())
            ]
        );
        let admin = config.routes.remove(0);
        assert_eq!(
            admin.require,
            Some(Requirement {
                pointer: JsonPointer::parse("/roles").unwrap(),
                value: Some(RequiredValue::String("admin".to_owned())),
            })
        );
        let route = &config.routes[0];
        assert!(route.require.is_none());
        assert_eq!(route.upstream.authority().unwrap().as_str(), "localhost:3000");
        assert_eq!(route.upstream.path(), "/");
        assert!(!route.session);
        assert!(route.strip_prefix);
        assert_eq!(route.host.as_deref(), Some("app.example.com"));
        assert_eq!(route.read_timeout, None, "0: never");
        assert_eq!(config.routes[1].read_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(config.routes[2].read_timeout, Some(Duration::from_millis(7000)), "the server's");
    }

    // --- TOML errors and unknown keys ---------------------------------------------------------

    #[test]
    fn syntax_error_gives_line_and_column() {
        let message = error("[server]\nlisten = \"127.0.0.1:8080\"\nsecrets = [\"abc\n");
        assert!(message.contains("line 3"), "{message}");
        assert!(!message.contains("abc"), "the offending line must not be quoted: {message}");
    }

    #[test]
    fn unknown_top_level_table_is_rejected() {
        let message = error(&format!("{MINIMAL}\n[sesion]\nrolling = true\n"));
        assert!(message.contains("unknown field `sesion`"), "{message}");
    }

    #[test]
    fn unknown_key_in_each_table_is_rejected() {
        for (table, path) in
            [("server", "server"), ("store", "store"), ("session", "session"), ("route", "route")]
        {
            let message = assert_error_names(&with(table, "bogus_key = 1"), path);
            assert!(message.contains("unknown field `bogus_key`"), "{message}");
            assert!(message.contains("line "), "{message}");
        }
    }

    #[test]
    fn wrong_type_names_the_key() {
        let message = assert_error_names(&with("store", "pool_size = \"two\""), "store.pool_size");
        assert!(message.contains("invalid type"), "{message}");
    }

    #[test]
    fn secrets_as_a_string_does_not_echo_it() {
        let message = assert_error_names(&replacing("secrets", "secrets = \"hunter2\""), "session.secrets");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn type_errors_inside_arrays_name_the_index() {
        let text = format!("{MINIMAL}\n[[route]]\nprefix = \"/x\"\nsession = \"yes\"\n");
        assert_error_names(&text, "route[1].session (line 16,");
        let text = replacing("secrets", "secrets = [\"ok\", [\"hunter2\"]]");
        let message = assert_error_names(&text, "session.secrets[1] (line 8,");
        assert!(!message.contains("hunter2"), "{message}");
    }

    // --- ${VAR} expansion ---------------------------------------------------------------------

    fn expand(input: &str, vars: &[(&str, &str)]) -> Result<Option<String>, ExpandError> {
        expand_str(input, &env(vars))
    }

    #[test]
    fn expands_plain_variable() {
        assert_eq!(expand("a${X}b${Y}", &[("X", "1"), ("Y", "2")]), Ok(Some("a1b2".to_owned())));
    }

    #[test]
    fn expands_default_when_unset_or_empty() {
        assert_eq!(expand("${X:-dflt}", &[]), Ok(Some("dflt".to_owned())));
        assert_eq!(expand("${X:-dflt}", &[("X", "")]), Ok(Some("dflt".to_owned())));
        assert_eq!(expand("${X:-dflt}", &[("X", "set")]), Ok(Some("set".to_owned())));
    }

    #[test]
    fn empty_default_and_empty_value() {
        assert_eq!(expand("a${X:-}b", &[]), Ok(Some("ab".to_owned())));
        assert_eq!(expand("a${X}b", &[("X", "")]), Ok(Some("ab".to_owned())));
    }

    #[test]
    fn dollar_without_brace_is_literal() {
        assert_eq!(expand("pa$$word$", &[]), Ok(None));
        assert_eq!(expand("$${X}", &[("X", "1")]), Ok(Some("$1".to_owned())));
    }

    #[test]
    fn expanded_values_are_not_expanded_again() {
        assert_eq!(expand("${X}", &[("X", "${Y}"), ("Y", "no")]), Ok(Some("${Y}".to_owned())));
    }

    #[test]
    fn unterminated_reference_is_an_error() {
        assert_eq!(expand("abc${X", &[("X", "1")]), Err(ExpandError::Unterminated));
        let message = assert_error_names(&replacing("listen", "listen = \"${PORT\""), "server.listen");
        assert!(message.contains("closing"), "{message}");
    }

    #[test]
    fn bad_reference_is_an_error() {
        assert_eq!(expand("${}", &[]), Err(ExpandError::BadName));
        assert_eq!(expand("${1X}", &[]), Err(ExpandError::BadName));
        assert_eq!(expand("${A-B}", &[]), Err(ExpandError::BadName));
        assert_eq!(expand("${A:-${B}}", &[]), Err(ExpandError::Nested));
    }

    #[test]
    fn missing_variable_names_variable_and_key() {
        let text = replacing("upstream", "upstream = \"http://${UPSTREAM_HOST}:3000\"");
        let message = assert_error_names(&text, "route[0].upstream");
        assert!(message.contains("UPSTREAM_HOST"), "{message}");
    }

    #[test]
    fn variables_expand_everywhere_including_arrays() {
        let text = replacing("secrets", "secrets = [\"${A}\", \"${B:-fallback}\"]")
            .replace("\"127.0.0.1:8080\"", "\"${HOST:-127.0.0.1}:${PORT}\"");
        let config = from_toml_str_with_env(&text, env(&[("A", "first"), ("PORT", "9000")])).unwrap();
        assert_eq!(config.session.secrets, vec!["first".to_owned(), "fallback".to_owned()]);
        assert_eq!(config.server.listen, "127.0.0.1:9000".parse().unwrap());
    }

    #[test]
    fn missing_variable_in_array_names_the_index() {
        let text = replacing("secrets", "secrets = [\"x\", \"${NOPE}\"]");
        let message = assert_error_names(&text, "session.secrets[1]");
        assert!(message.contains("NOPE"), "{message}");
    }

    #[test]
    fn variables_work_in_enum_like_keys() {
        let text = with("session", "same_site = \"${SAME_SITE:-strict}\"");
        assert_eq!(parse(&text).session.same_site, SameSite::Strict);
    }

    // --- required keys ------------------------------------------------------------------------

    #[test]
    fn listen_is_required() {
        assert_error_names(&replacing("listen", ""), "server.listen");
    }

    #[test]
    fn secrets_are_required() {
        assert_error_names(&replacing("secrets", ""), "session.secrets");
    }

    #[test]
    fn secrets_must_not_be_an_empty_list() {
        assert_error_names(&replacing("secrets", "secrets = []"), "session.secrets");
    }

    #[test]
    fn secrets_must_not_be_empty_strings() {
        let message =
            assert_error_names(&replacing("secrets", "secrets = [\"ok\", \"\"]"), "session.secrets[1]");
        assert!(!message.contains("ok"), "{message}");
    }

    #[test]
    fn short_secrets_are_warned_about_by_position_never_by_value() {
        let long = "x".repeat(MIN_SECRET_BYTES);
        let short = "y".repeat(MIN_SECRET_BYTES - 1);
        let config =
            parse(&replacing("secrets", &format!("secrets = [\"{long}\", \"{short}\", \"s3cr3t\"]")));
        let warnings = config.warnings();
        let keys: Vec<&str> = warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["session.secrets[1]", "session.secrets[2]"]);
        for warning in &warnings {
            let text = warning.to_string();
            assert!(text.starts_with(&warning.key) && text.contains("32 bytes"), "{text}");
            assert!(!text.contains(&short) && !text.contains("s3cr3t") && !text.contains("31"), "{text}");
        }
        assert!(parse(&replacing("secrets", &format!("secrets = [\"{long}\"]"))).warnings().is_empty());
    }

    #[test]
    fn a_route_is_required() {
        let text = MINIMAL.split("[[route]]").next().unwrap();
        assert_error_names(text, "route");
    }

    #[test]
    fn route_prefix_and_upstream_are_required() {
        assert_error_names(&replacing("prefix", ""), "route[0].prefix");
        assert_error_names(&replacing("upstream", ""), "route[0].upstream");
    }

    // --- server -------------------------------------------------------------------------------

    #[test]
    fn listen_must_be_a_socket_address() {
        assert_error_names(&replacing("listen", "listen = \"localhost:8080\""), "server.listen");
    }

    #[test]
    fn admin_listen_must_be_a_socket_address() {
        assert_error_names(&with("server", "admin_listen = \"9901\""), "server.admin_listen");
    }

    #[test]
    fn admin_listen_must_differ_from_listen() {
        assert_error_names(&with("server", "admin_listen = \"127.0.0.1:8080\""), "server.admin_listen");
    }

    #[test]
    fn admin_and_public_may_both_use_port_zero() {
        let text = replacing("listen", "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"");
        assert!(parse(&text).server.admin_listen.is_some());
    }

    #[test]
    fn tls_cert_needs_tls_key_and_back() {
        assert_error_names(&with("server", "tls_cert = \"c.pem\""), "server.tls_key");
        assert_error_names(&with("server", "tls_key = \"k.pem\""), "server.tls_cert");
        assert_error_names(&with("server", "tls_cert = \"\"\ntls_key = \"k.pem\""), "server.tls_cert");
    }

    #[test]
    fn timeouts_must_be_positive_and_bounded() {
        assert_error_names(&with("server", "upstream_timeout_ms = 0"), "server.upstream_timeout_ms");
        assert_error_names(&with("server", "shutdown_grace_ms = 0"), "server.shutdown_grace_ms");
        assert_error_names(&with("store", "timeout_ms = 0"), "store.timeout_ms");
        assert_error_names(&with("store", "timeout_ms = 86400001"), "store.timeout_ms");
        assert_error_names(&with("store", "timeout_ms = -5"), "store.timeout_ms");
        assert_error_names(&with("server", "client_send_timeout_ms = 0"), "server.client_send_timeout_ms");
    }

    #[test]
    fn read_timeouts_may_be_zero_for_never_and_are_bounded() {
        let config = parse(&with("server", "upstream_read_timeout_ms = 0"));
        assert_eq!(config.server.upstream_read_timeout, None);
        assert_eq!(config.routes[0].read_timeout, None, "routes inherit the server's never");
        assert_error_names(
            &with("server", "upstream_read_timeout_ms = 86400001"),
            "server.upstream_read_timeout_ms",
        );
        assert_error_names(&with("route", "read_timeout_ms = 86400001"), "route[0].read_timeout_ms");
        assert_error_names(&with("route", "read_timeout_ms = -1"), "route[0].read_timeout_ms");
    }

    #[test]
    fn max_connections_is_bounded() {
        assert_eq!(parse(&with("server", "max_connections = 1")).server.max_connections, Some(1));
        assert_eq!(
            parse(&with("server", "max_connections = 1000000")).server.max_connections,
            Some(MAX_MAX_CONNECTIONS)
        );
        for bad in ["0", "1000001", "-1", "\"many\""] {
            assert_error_names(
                &with("server", &format!("max_connections = {bad}")),
                "server.max_connections",
            );
        }
    }

    // --- store --------------------------------------------------------------------------------

    #[test]
    fn store_url_schemes() {
        assert_eq!(store_url("memory://"), Ok(StoreUrl::Memory));
        assert!(store_url("redis://127.0.0.1:6379").is_ok());
        assert!(store_url("redis://:pw@[::1]:6379/0").is_ok());
        assert!(store_url("rediss://default:TOKEN@x.upstash.io:6379").is_ok());
        assert_error_names(&with("store", "url = \"memcache://x\""), "store.url");
        assert_error_names(&with("store", "url = \"127.0.0.1:6379\""), "store.url");
    }

    #[test]
    fn cluster_and_sentinel_urls() {
        for url in [
            "redis-cluster://127.0.0.1:7000",
            "redis-cluster://:pw@127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002",
            "rediss-cluster://:pw@10.0.0.1:7000",
            "redis-sentinel://127.0.0.1:26379?sentinelServiceName=mymaster&node=127.0.0.1:26380",
            "rediss-sentinel://:pw@h:26379/0?sentinelServiceName=m&sentinelPassword=sp",
        ] {
            assert!(store_url(url).is_ok(), "{url}: {:?}", store_url(url));
        }
        assert!(StoreUrl::Redis("rediss-cluster://h:1".to_owned()).is_tls());
        assert!(StoreUrl::Redis("rediss-sentinel://h:1".to_owned()).is_tls());
        assert!(!StoreUrl::Redis("redis-cluster://h:1".to_owned()).is_tls());
        let text = with("store", "url = \"rediss-cluster://h:1\"\nca_file = \"ca.pem\"");
        assert_eq!(parse(&text).store.ca_file, Some(PathBuf::from("ca.pem")));
    }

    #[test]
    fn cluster_and_sentinel_url_errors_name_the_problem_not_the_password() {
        let message =
            assert_error_names(&with("store", "url = \"redis-sentinel://:hunter2@h:26379\""), "store.url");
        assert!(message.contains("sentinelServiceName"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        let message = assert_error_names(
            &with("store", "url = \"redis-cluster://:hunter2@h:1?sentinelServiceName=m\""),
            "store.url",
        );
        assert!(message.contains("only for redis-sentinel"), "{message}");
        for url in [
            "redis-cluster://:hunter2@h:notaport",
            "redis-clusters://:hunter2@h:1",
            "redis-cluster://:hunter2@",
        ] {
            let message = assert_error_names(&with("store", &format!("url = \"{url}\"")), "store.url");
            assert!(!message.contains("hunter2"), "{message}");
        }
    }

    #[test]
    fn sentinel_passwords_are_redacted() {
        let url = StoreUrl::Redis(
            "redis-sentinel://:hunter2@h:26379?sentinelServiceName=m&sentinelPassword=hunter3&node=h:1"
                .to_owned(),
        );
        let shown = url.redacted();
        assert!(!shown.contains("hunter2") && !shown.contains("hunter3"), "{shown}");
        assert!(shown.contains("sentinelServiceName=m") && shown.contains("node=h:1"), "{shown}");
        assert!(!format!("{url:?}").contains("hunter3"));
    }

    #[test]
    fn min_replicas() {
        assert_eq!(parse(&with("store", "url = \"redis://h:1\"")).store.min_replicas, 0);
        assert_eq!(
            parse(&with("store", "url = \"redis-cluster://h:1\"\nmin_replicas = 1")).store.min_replicas,
            1
        );
        assert_eq!(parse(&with("store", "min_replicas = 0")).store.min_replicas, 0);
        let message = assert_error_names(&with("store", "min_replicas = 1"), "store.min_replicas");
        assert!(message.contains("memory://"), "{message}");
        assert_error_names(&with("store", "url = \"redis://h:1\"\nmin_replicas = 17"), "store.min_replicas");
    }

    #[test]
    fn memory_url_takes_nothing_after_the_scheme() {
        assert_error_names(&with("store", "url = \"memory://foo\""), "store.url");
    }

    #[test]
    fn redis_url_needs_a_host_and_is_never_echoed() {
        for url in
            ["redis://", "redis://:hunter2@", "rediss://user:hunter2@ho st:1", "redis://:hunter2@:6379"]
        {
            let message = assert_error_names(&with("store", &format!("url = \"{url}\"")), "store.url");
            assert!(!message.contains("hunter2") && !message.contains("ho st"), "{message}");
        }
    }

    #[test]
    fn ca_file_needs_rediss() {
        assert_error_names(&with("store", "ca_file = \"ca.pem\""), "store.ca_file");
        let text = with("store", "url = \"redis://h:1\"\nca_file = \"ca.pem\"");
        assert_error_names(&text, "store.ca_file");
    }

    #[test]
    fn pool_size_is_bounded() {
        assert_error_names(&with("store", "pool_size = 0"), "store.pool_size");
        assert_error_names(&with("store", "pool_size = 65"), "store.pool_size");
        assert_eq!(parse(&with("store", "pool_size = 64")).store.pool_size, 64);
    }

    #[test]
    fn redacted_url_hides_the_password() {
        let url = StoreUrl::Redis("rediss://default:hunter2@x.upstash.io:6379/0".to_owned());
        assert_eq!(url.redacted(), "rediss://default:***@x.upstash.io:6379/0");
        assert!(!format!("{url:?}").contains("hunter2"));
        let bare = StoreUrl::Redis("redis://hunter2@h:6379".to_owned());
        assert_eq!(bare.redacted(), "redis://***@h:6379");
        let plain = StoreUrl::Redis("redis://h:6379".to_owned());
        assert_eq!(plain.redacted(), "redis://h:6379");
        assert_eq!(StoreUrl::Redis("garbage:hunter2".to_owned()).redacted(), "***");
        assert_eq!(StoreUrl::Memory.redacted(), "memory://");
    }

    #[test]
    fn is_tls_only_for_rediss() {
        assert!(StoreUrl::Redis("REDISS://h:1".to_owned()).is_tls());
        assert!(!StoreUrl::Redis("redis://h:1".to_owned()).is_tls());
        assert!(!StoreUrl::Memory.is_tls());
    }

    // --- session ------------------------------------------------------------------------------

    #[test]
    fn secrets_are_not_in_debug_output() {
        let config = parse(&replacing("secrets", "secrets = [\"hunter2\", \"older-secret\"]"));
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("older-secret"), "{debug}");
        assert!(debug.contains("<2 redacted>"), "{debug}");
    }

    #[test]
    fn cookie_name_must_be_a_token() {
        for bad in ["", "a b", "a;b", "a=b", "sé"] {
            assert_error_names(&with("session", &format!("cookie_name = \"{bad}\"")), "session.cookie_name");
        }
    }

    #[test]
    fn max_age_must_be_positive() {
        assert_error_names(&with("session", "max_age = 0"), "session.max_age");
    }

    #[test]
    fn path_must_start_with_slash_and_be_clean() {
        assert_error_names(&with("session", "path = \"app\""), "session.path");
        assert_error_names(&with("session", "path = \"/a;b\""), "session.path");
        assert_error_names(&with("session", "path = \"/a\\nb\""), "session.path");
    }

    #[test]
    fn domain_must_be_clean() {
        for bad in ["", "a b.com", "a.com;x", "a\\tb"] {
            assert_error_names(&with("session", &format!("domain = \"{bad}\"")), "session.domain");
        }
    }

    #[test]
    fn same_site_values() {
        assert_eq!(parse(&with("session", "same_site = \"STRICT\"")).session.same_site, SameSite::Strict);
        assert_error_names(&with("session", "same_site = \"sometimes\""), "session.same_site");
    }

    #[test]
    fn same_site_none_requires_secure() {
        let text = with("session", "same_site = \"none\"\nsecure = false");
        assert_error_names(&text, "session.same_site");
    }

    #[test]
    fn header_names_must_be_valid() {
        assert_error_names(&with("session", "header = \"x session\""), "session.header");
        assert_error_names(&with("session", "update_header = \"\""), "session.update_header");
        assert_error_names(&with("session", "regenerate_header = \"x:y\""), "session.regenerate_header");
    }

    #[test]
    fn header_names_are_lowercased() {
        let config = parse(&with("session", "header = \"X-My-Session\""));
        assert_eq!(config.session.header.as_str(), "x-my-session");
    }

    #[test]
    fn header_names_must_be_distinct_after_normalisation() {
        let message =
            assert_error_names(&with("session", "update_header = \"X_Session\""), "session.update_header");
        assert!(message.contains("session.header"), "{message}");
        let text = with("session", "regenerate_header = \"x-session-update\"");
        assert_error_names(&text, "session.regenerate_header");
        let text = with("session", "patch_header = \"X-Session-Regenerate\"");
        assert_error_names(&text, "session.patch_header");
    }

    #[test]
    fn header_names_must_not_be_reserved() {
        assert_error_names(&with("session", "header = \"Cookie\""), "session.header");
    }

    #[test]
    fn max_bytes_is_bounded() {
        assert_error_names(&with("session", "max_bytes = 0"), "session.max_bytes");
        assert_error_names(&with("session", "max_bytes = 1048577"), "session.max_bytes");
        assert_eq!(parse(&with("session", "max_bytes = 1048576")).session.max_bytes, 1_048_576);
    }

    #[test]
    fn on_store_error_values() {
        assert_eq!(
            parse(&with("session", "on_store_error = \"pass\"")).session.on_store_error,
            OnStoreError::Pass
        );
        assert_error_names(&with("session", "on_store_error = \"retry\""), "session.on_store_error");
    }

    // --- routes -------------------------------------------------------------------------------

    #[test]
    fn prefix_must_start_with_slash() {
        assert_error_names(&replacing("prefix", "prefix = \"app\""), "route[0].prefix");
        assert_error_names(&replacing("prefix", "prefix = \"/a?b\""), "route[0].prefix");
    }

    #[test]
    fn upstream_must_be_plain_http_scheme_and_authority() {
        for bad in [
            "127.0.0.1:3000",
            "https://127.0.0.1:3000",
            "http://127.0.0.1:3000/app",
            "http://127.0.0.1:3000/?x=1",
            "http://user:pw@127.0.0.1:3000",
            "http://",
            "not a uri",
        ] {
            assert_error_names(&replacing("upstream", &format!("upstream = \"{bad}\"")), "route[0].upstream");
        }
    }

    #[test]
    fn upstream_keeps_scheme_and_authority_only() {
        let uri =
            &parse(&replacing("upstream", "upstream = \"http://Example.com:8080/\"")).routes[0].upstream;
        assert_eq!(uri.scheme(), Some(&Scheme::HTTP));
        assert_eq!(uri.authority().unwrap().port_u16(), Some(8080));
        assert_eq!(uri.path(), "/");
        assert_eq!(uri.query(), None);
    }

    #[test]
    fn host_is_lowercased_without_port() {
        let host = |h: &str| parse(&with("route", &format!("host = \"{h}\""))).routes[0].host.clone();
        assert_eq!(host("App.Example.COM").as_deref(), Some("app.example.com"));
        assert_eq!(host("app.example.com:8443").as_deref(), Some("app.example.com"));
        assert_eq!(host("[::1]:80").as_deref(), Some("[::1]"));
        assert_error_names(&with("route", "host = \"\""), "route[0].host");
        assert_error_names(&with("route", "host = \"a/b\""), "route[0].host");
    }

    #[test]
    fn duplicate_host_and_prefix_names_both_routes() {
        let dup = r#"
[[route]]
prefix = "/x"
upstream = "http://h:1"

[[route]]
prefix = "/"
upstream = "http://h:2"
"#;
        let message = assert_error_names(&format!("{MINIMAL}{dup}"), "route[2]");
        assert!(message.contains("route[0]"), "{message}");
        // Same prefix with a different host is fine; host comparison ignores case and port.
        let hosted = "\n[[route]]\nprefix = \"/\"\nupstream = \"http://h:2\"\nhost = \"A.com\"\n";
        parse(&format!("{MINIMAL}{hosted}"));
        let again = format!("{MINIMAL}{hosted}{}", hosted.replace("A.com", "a.com:80"));
        assert_error_names(&again, "route[2]");
    }

    // --- loading and reload -------------------------------------------------------------------

    #[test]
    fn load_reads_a_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        assert_eq!(load(&path).unwrap().routes.len(), 1);
        let missing = dir.path().join("nope.toml");
        let message = load(&missing).unwrap_err().to_string();
        assert!(message.contains("nope.toml"), "{message}");
    }

    #[test]
    fn admin_token_needs_the_admin_listener_and_is_never_shown() {
        let with_token = |token: &str, admin: bool| {
            let admin = if admin { "admin_listen = \"127.0.0.1:0\"\n" } else { "" };
            replacing("[server]", &format!("[server]\n{admin}admin_token = \"{token}\""))
        };
        let config = parse(&with_token("s3cret-token-value", true));
        let token = config.server.admin_token.clone().expect("a token");
        assert_eq!(token.as_bytes(), b"s3cret-token-value");
        assert!(!format!("{config:?}").contains("s3cret-token-value"));
        for (text, why) in [
            (with_token("s3cret-token-value", false), "admin_listen"),
            (with_token("", true), "empty"),
            (with_token("has space", true), "printable"),
        ] {
            let message = assert_error_names(&text, "server.admin_token");
            assert!(message.contains(why), "{message}");
            assert!(!message.contains("s3cret") && !message.contains("has space"), "{message}");
        }
        assert_eq!(parse(MINIMAL).server.admin_token, None);
    }

    #[test]
    fn index_is_a_json_pointer() {
        let config = parse(&with("session", "index = \"/user/id\""));
        let pointer = config.session.index.expect("an index");
        assert_eq!(pointer.as_str(), "/user/id");
        assert_eq!(pointer.tokens(), ["user", "id"]);
        let escaped = JsonPointer::parse("/a~1b/c~0d/").unwrap();
        assert_eq!(escaped.tokens(), ["a/b", "c~d", ""]);
        for bad in ["user/id", "", "/a~2", "/a~"] {
            assert_error_names(&with("session", &format!("index = \"{bad}\"")), "session.index");
        }
        assert_eq!(parse(MINIMAL).session.index, None);
    }

    #[test]
    fn routes_require_pointers_and_values() {
        let with_route = |lines: &str| {
            format!("{MINIMAL}\n[[route]]\nprefix = \"/p\"\nupstream = \"http://127.0.0.1:1\"\n{lines}\n")
        };
        let config = parse(&with_route("require = \"/user/roles\"\nrequire_value = \"admin\""));
        let require = config.routes[1].require.clone().expect("a requirement");
        assert_eq!(require.pointer.tokens(), ["user", "roles"]);
        assert_eq!(require.value, Some(RequiredValue::String("admin".to_owned())));
        for (value, want) in [
            ("3", RequiredValue::Number(3.0)),
            ("2.5", RequiredValue::Number(2.5)),
            ("true", RequiredValue::Bool(true)),
        ] {
            let config = parse(&with_route(&format!("require = \"/x\"\nrequire_value = {value}")));
            assert_eq!(config.routes[1].require.as_ref().unwrap().value, Some(want));
        }
        assert_eq!(parse(&with_route("require = \"/user\"")).routes[1].require.as_ref().unwrap().value, None);
        assert_eq!(parse(MINIMAL).routes[0].require, None);
        assert_error_names(&with_route("require = \"user\""), "route[1].require");
        assert_error_names(&with_route("require = \"/a~2\""), "route[1].require");
        assert_error_names(&with_route("require_value = \"admin\""), "route[1].require_value");
        let message =
            assert_error_names(&with_route("require = \"/user\"\nsession = false"), "route[1].require");
        assert!(message.contains("session = false"), "{message}");
    }

    #[test]
    fn login_url_is_a_path_or_an_absolute_http_url() {
        for good in ["/login", "/auth/login?app=1", "https://id.example/login", "http://127.0.0.1:3000/login"]
        {
            let config = parse(&with("session", &format!("login_url = \"{good}\"")));
            assert_eq!(config.session.login_url.as_deref(), Some(good));
        }
        for bad in
            ["login", "//evil.example/login", "ftp://x/login", "http://", "javascript:alert(1)", "/a b"]
        {
            assert_error_names(&with("session", &format!("login_url = \"{bad}\"")), "session.login_url");
        }
    }

    #[test]
    fn identity_headers_are_checked_names_and_pointers() {
        let table = |lines: &str| format!("{MINIMAL}\n[session.headers]\n{lines}\n");
        let config = parse(&table("\"X-User-Id\" = \"/user/id\"\n\"x-user-roles\" = \"/user/roles\""));
        let names: Vec<&str> = config.session.identity_headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-user-id", "x-user-roles"]);
        assert_eq!(config.session.identity_headers[0].1.tokens(), ["user", "id"]);
        for (line, key) in [
            ("\"x user\" = \"/a\"", "session.headers.x user"),
            ("\"X_Session_Update\" = \"/a\"", "session.headers.X_Session_Update"),
            ("\"x-session\" = \"/a\"", "session.headers.x-session"),
            ("\"cookie\" = \"/a\"", "session.headers.cookie"),
            ("\"x-user\" = \"user\"", "session.headers.x-user"),
            ("\"x-user\" = \"/a\"\n\"X_User\" = \"/b\"", "session.headers.x-user"),
        ] {
            assert_error_names(&table(line), key);
        }
    }

    #[test]
    fn restart_required_changes_lists_listeners_and_store() {
        let old = parse(MINIMAL);
        assert!(old.restart_required_changes(&old).is_empty());
        let mut new = old.clone();
        new.session.rolling = true;
        new.store.key_prefix = "other:".to_owned();
        new.server.upstream_timeout = Duration::from_secs(1);
        new.server.upstream_read_timeout = None;
        new.routes[0].read_timeout = None;
        assert!(old.restart_required_changes(&new).is_empty(), "live-reloadable keys");
        new.server.listen = "127.0.0.1:9999".parse().unwrap();
        new.server.admin_listen = Some("127.0.0.1:9901".parse().unwrap());
        new.server.tls = Some(TlsFiles { cert: "c".into(), key: "k".into() });
        new.store.url = StoreUrl::Redis("redis://h:1".to_owned());
        new.store.ca_file = Some("ca.pem".into());
        new.store.pool_size = 3;
        new.store.timeout = Duration::from_secs(2);
        new.server.max_connections = Some(10);
        new.server.client_send_timeout = Duration::from_secs(1);
        assert_eq!(
            old.restart_required_changes(&new),
            vec![
                "server.listen",
                "server.admin_listen",
                "server.tls_cert/tls_key",
                "server.max_connections",
                "server.client_send_timeout_ms",
                "store.url",
                "store.ca_file",
                "store.pool_size",
                "store.timeout_ms",
            ]
        );
    }
}

/// Property tests: whatever the text and whatever the values of the known keys, loading never
/// panics; what it accepts satisfies every documented limit; what it rejects is named by key
/// and never quotes a secret.
#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Every key `proxy.toml` knows, with its table.
    const KEYS: &[(&str, &str)] = &[
        ("server", "listen"),
        ("server", "tls_cert"),
        ("server", "tls_key"),
        ("server", "admin_listen"),
        ("server", "upstream_timeout_ms"),
        ("server", "shutdown_grace_ms"),
        ("server", "max_connections"),
        ("server", "upstream_read_timeout_ms"),
        ("server", "client_send_timeout_ms"),
        ("store", "url"),
        ("store", "key_prefix"),
        ("store", "ca_file"),
        ("store", "timeout_ms"),
        ("store", "pool_size"),
        ("session", "cookie_name"),
        ("session", "secrets"),
        ("session", "max_age"),
        ("session", "path"),
        ("session", "domain"),
        ("session", "secure"),
        ("session", "http_only"),
        ("session", "same_site"),
        ("session", "save_uninitialized"),
        ("session", "rolling"),
        ("session", "header"),
        ("session", "update_header"),
        ("session", "regenerate_header"),
        ("session", "patch_header"),
        ("session", "max_bytes"),
        ("session", "on_store_error"),
        ("route", "prefix"),
        ("route", "upstream"),
        ("route", "session"),
        ("route", "strip_prefix"),
        ("route", "host"),
        ("route", "read_timeout_ms"),
    ];

    /// Values of the required keys when a case does not set them.
    fn required_default(table: &str, key: &str) -> Option<&'static str> {
        match (table, key) {
            ("server", "listen") => Some("\"127.0.0.1:8080\""),
            ("session", "secrets") => Some("[\"s3cr3t\"]"),
            ("route", "prefix") => Some("\"/\""),
            ("route", "upstream") => Some("\"http://127.0.0.1:3000\""),
            _ => None,
        }
    }

    fn toml_string(s: &str) -> String {
        toml::Value::String(s.to_owned()).to_string()
    }

    /// Secrets come from their own alphabet, so a test can tell whether an error quotes one.
    fn secret() -> impl Strategy<Value = String> {
        "S3CRET[A-Z]{6}"
    }

    /// A TOML value, as text: anything from plausible to absurd for any key.
    fn value() -> impl Strategy<Value = String> {
        let text = prop_oneof![
            any::<String>(),
            "[ -~]{0,24}",
            "127\\.0\\.0\\.1:[0-9]{1,6}",
            "\\[::1\\]:[0-9]{1,5}",
            "(http|https|redis|rediss|memory|ftp)://[a-z0-9.:@/?#%\\[\\]]{0,20}",
            "/[a-zA-Z0-9/?#% ._-]{0,10}",
            "[xX][-_][a-zA-Z_-]{0,12}",
            "(none|lax|strict|None|LAX|pass|fail|Fail| lax)",
            "\\$\\{(SET|UNSET|EMPTY|1X|)(:-[a-z${}]{0,4})?\\}?",
            "[a-z]{0,4}\\$\\{SET\\}[a-z]{0,4}",
        ]
        .prop_map(|s| toml_string(&s));
        let integer = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            prop::sample::select(vec![
                0i64,
                1,
                2,
                63,
                64,
                65,
                1_048_576,
                1_048_577,
                86_400_000,
                86_400_001,
                4_294_967_296
            ])
            .prop_map(|n| n.to_string()),
        ];
        prop_oneof![
            4 => text,
            2 => integer,
            1 => any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
            1 => any::<bool>().prop_map(|b| b.to_string()),
            1 => prop::collection::vec(any::<String>(), 0..3).prop_map(|v| toml::Value::from(v).to_string()),
            1 => prop::collection::vec(secret(), 0..3).prop_map(|v| toml::Value::from(v).to_string()),
            1 => prop::collection::vec(any::<i64>(), 0..3).prop_map(|v| toml::Value::from(v).to_string()),
            1 => Just("{ a = 1 }".to_owned()),
            1 => Just("1979-05-27T07:32:00Z".to_owned()),
        ]
    }

    /// What one case sets: for some keys a value, for some required keys nothing at all.
    #[derive(Debug, Clone)]
    enum Setting {
        Value(String),
        Omitted,
    }

    fn settings() -> impl Strategy<Value = Vec<(usize, Setting)>> {
        let setting = prop_oneof![8 => value().prop_map(Setting::Value), 1 => Just(Setting::Omitted)];
        prop::collection::vec((0..KEYS.len(), setting), 1..5)
    }

    /// The file for `settings`: every table, the required keys at their defaults unless set or
    /// omitted, and the set keys (the last setting of a key wins).
    fn document(settings: &[(usize, Setting)]) -> String {
        let mut out = String::new();
        for table in ["server", "store", "session", "route"] {
            out.push_str(if table == "route" { "[[route]]\n" } else { "" });
            if table != "route" {
                out.push_str(&format!("[{table}]\n"));
            }
            for (index, (t, key)) in KEYS.iter().enumerate() {
                if *t != table {
                    continue;
                }
                let chosen = settings.iter().rev().find(|(i, _)| *i == index).map(|(_, s)| s.clone());
                let text = match chosen {
                    Some(Setting::Value(text)) => Some(text),
                    Some(Setting::Omitted) => None,
                    None => required_default(table, key).map(str::to_owned),
                };
                if let Some(text) = text {
                    out.push_str(&format!("{key} = {text}\n"));
                }
            }
        }
        out
    }

    const VAR_START: &str = "${";

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("from-env".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    /// Every documented limit of an accepted config.
    fn check_invariants(c: &Config) -> Result<(), TestCaseError> {
        let s = &c.session;
        prop_assert!(!s.secrets.is_empty() && s.secrets.iter().all(|x| !x.is_empty()));
        prop_assert!(s.max_age > 0);
        prop_assert!(s.max_bytes <= MAX_SESSION_BYTES);
        prop_assert!(s.path.starts_with('/'));
        prop_assert!(s.same_site != SameSite::None || s.secure, "same_site none without secure");
        let headers = [&s.header, &s.update_header, &s.regenerate_header, &s.patch_header];
        for (i, a) in headers.iter().enumerate() {
            prop_assert!(!RESERVED_HEADER_NAMES.contains(&normalise_header_name(a.as_str()).as_str()));
            for b in &headers[i + 1..] {
                prop_assert_ne!(normalise_header_name(a.as_str()), normalise_header_name(b.as_str()));
            }
        }
        let read_timeouts = c.routes.iter().filter_map(|r| r.read_timeout);
        for d in [
            c.server.upstream_timeout,
            c.server.shutdown_grace,
            c.store.timeout,
            c.server.client_send_timeout,
        ]
        .into_iter()
        .chain(c.server.upstream_read_timeout)
        .chain(read_timeouts)
        {
            prop_assert!(d > Duration::ZERO && d <= Duration::from_millis(MAX_TIMEOUT_MS));
        }
        prop_assert!(c.server.max_connections.is_none_or(|n| (1..=MAX_MAX_CONNECTIONS).contains(&n)));
        prop_assert!((1..=MAX_POOL_SIZE).contains(&c.store.pool_size));
        prop_assert!(c.server.admin_listen != Some(c.server.listen) || c.server.listen.port() == 0);
        prop_assert!(!c.routes.is_empty());
        for r in &c.routes {
            prop_assert!(r.prefix.starts_with('/'));
            prop_assert_eq!(r.upstream.scheme_str(), Some("http"));
            prop_assert!(r.upstream.authority().is_some());
            if let Some(host) = &r.host {
                prop_assert_eq!(host, &host.to_ascii_lowercase());
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = from_toml_str_with_env(&text, env);
        }

        #[test]
        fn toml_like_text_never_panics(
            text in "(\\[\\[?(server|store|session|route)\\]\\]?\n|[a-z_]{1,12} ?= ?(\"[^\"\n]{0,12}\"|[0-9-]{1,6}|true|\\[[^\n]{0,12}\\]|\\{[^\n]{0,8}\\})\n|#[^\n]{0,8}\n){0,10}",
        ) {
            let _ = from_toml_str_with_env(&text, env);
        }

        #[test]
        fn known_keys_with_arbitrary_values(settings in settings()) {
            let text = document(&settings);
            match from_toml_str_with_env(&text, env) {
                Ok(config) => check_invariants(&config)?,
                Err(e) => {
                    let message = e.to_string();
                    // One line that names a key this case set or left out.
                    prop_assert!(!message.contains('\n'), "{}", message);
                    let named = settings.iter().any(|(i, _)| message.contains(KEYS[*i].1));
                    prop_assert!(named, "error names none of the keys set: {}\n{}", message, text);
                    // Secrets are never quoted.
                    for (i, setting) in &settings {
                        if let (("session", "secrets"), Setting::Value(v)) = (KEYS[*i], setting) {
                            for word in v.split('"').filter(|w| w.starts_with("S3CRET")) {
                                prop_assert!(!message.contains(word), "secret in: {}", message);
                            }
                        }
                    }
                }
            }
        }

        #[test]
        fn store_passwords_are_never_in_errors_or_debug(
            password in "[A-Za-z0-9]{12}",
            rest in "[a-z0-9.:/@?#]{0,12}",
            scheme in "(redis|rediss|redis-cluster|http|)",
        ) {
            let url = format!("{scheme}://user:{password}@{rest}");
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:8080\"\n[store]\nurl = {}\n[session]\nsecrets = [\"s\"]\n[[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\n",
                toml_string(&url)
            );
            match from_toml_str_with_env(&text, env) {
                Ok(config) => {
                    let debug = format!("{:?}", config);
                    prop_assert!(!debug.contains(&password), "{}", debug);
                    let redacted = config.store.url.redacted();
                    prop_assert!(!redacted.contains(&password), "{}", redacted);
                }
                Err(e) => prop_assert!(!e.to_string().contains(&password), "{}", e),
            }
        }

        #[test]
        fn expansion_never_panics(input in any::<String>(), braces in "[${}:-A-Z_]{0,16}") {
            let env: Env<'_> = &env;
            for text in [input.as_str(), braces.as_str()] {
                // Only `${` starts a reference: without one there is nothing to expand or fail,
                // with one the text is expanded or rejected.
                let has_reference = text.contains(VAR_START);
                let untouched = matches!(expand_str(text, env), Ok(None));
                prop_assert_eq!(untouched, !has_reference, "{:?}", text);
            }
        }
    }
}
