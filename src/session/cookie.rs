//! The session cookie, byte-compatible with Remix's `createCookie` with `secrets` (the README,
//! "Storage and cookie format"), so a legacy app behind the proxy and a Remix app can share
//! users' sessions.
//!
//! Wire format: `payload = base64(JSON.stringify(id))` (standard alphabet, padded),
//! `value = payload + "." + base64(HMAC-SHA256(secret, payload))` without trailing `=`, then
//! `encodeURIComponent` in `Set-Cookie`. Everything that depends only on the config (HMAC keys,
//! attribute text, the clearing header) is built once in [`CookieCodec::new`].
//!
//! A session's cookie comes back unchanged on every request, and checking it (HMAC, two base64
//! decodes, JSON, the id rules) is a tenth of a session request's CPU, so each thread remembers
//! the values it verified lately ([`RecentlyVerified`]).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD, STANDARD_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use http::header::{HeaderMap, HeaderValue, COOKIE};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use ring::hmac;

use crate::config::{SameSite, SessionConfig};
use crate::session::id::is_valid_id;

/// Longest session cookie value (as received, still percent-encoded) that is looked at. Ours
/// are about 90 bytes and Remix's about 70; anything longer is treated as no cookie, which
/// bounds the HMAC and decoding work an attacker can cause per request.
pub const MAX_COOKIE_VALUE_BYTES: usize = 4096;

/// Length of an HMAC-SHA256 tag in unpadded base64: the only signature form Remix produces.
const SIGNATURE_B64_LEN: usize = 43;

/// Latest `Expires` we write: 9999-12-31T23:59:59Z, the last instant an IMF-fixdate (4-digit
/// year) can express. Only reached with an absurd `max_age`; browsers cap lifetimes far lower.
const MAX_EXPIRES_UNIX_SECS: u64 = 253_402_300_799;

/// `encodeURIComponent`'s set: everything but ASCII alphanumerics and `-_.!~*'()`.
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

/// Decoder for the signed payload with `atob`'s leniency (padding optional, non-zero trailing
/// bits ignored). Only a holder of a secret can make a payload Remix itself would not, so this
/// only matters for exactness; `atob`'s removal of ASCII whitespace is not reproduced.
const PAYLOAD_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// What a request's session cookie turned out to be.
#[derive(Debug)]
pub enum CookieRead {
    /// No cookie with the session cookie's name.
    Absent,
    /// The first cookie with the name failed verification: a new visitor.
    Rejected,
    Valid(Verified),
}

/// A session id taken from a validly signed cookie.
#[derive(Clone, PartialEq, Eq)]
pub struct Verified {
    pub id: String,
    /// Verified with a secret other than the first: the response re-signs it with the first
    /// (secret rotation).
    pub needs_resign: bool,
}

/// The id is a bearer credential: keep it out of logs even when someone debug-prints this.
impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("id", &"<redacted>")
            .field("needs_resign", &self.needs_resign)
            .finish()
    }
}

/// Signs, verifies, reads and writes the session cookie. Build once per config.
pub struct CookieCodec {
    /// Tells this codec's entries in [`RecentlyVerified`] from those of every other codec
    /// (another config generation may have other secrets).
    generation: u64,
    /// One key per configured secret, in order: the first signs, every one verifies.
    keys: Vec<hmac::Key>,
    /// The cookie name, compared byte for byte with names in `Cookie` headers.
    name: String,
    /// `; Max-Age=<max_age>; Expires=`: the date is the only per-response part of the suffix.
    max_age_attr: String,
    /// `max_age` in seconds, for computing `Expires`.
    max_age: u64,
    /// `; Path=..[; Domain=..][; HttpOnly][; Secure]; SameSite=..`, the same on every cookie.
    attributes: String,
    /// The complete `Set-Cookie` value that clears the cookie; it never changes.
    clear: HeaderValue,
}

impl std::fmt::Debug for CookieCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieCodec")
            .field("name", &self.name)
            .field("secrets", &self.keys.len())
            .field("attributes", &self.attributes)
            .finish()
    }
}

impl CookieCodec {
    /// Precomputes keys and attribute text. Expects a validated config (token cookie name,
    /// clean path and domain, at least one non-empty secret: see `crate::config`); given
    /// anything else it still never panics: characters that cannot appear in a header are
    /// dropped, and with no secrets at all it signs with a random per-process key (cookies then
    /// die with the process, but are never unsigned).
    pub fn new(cfg: &SessionConfig) -> Self {
        let mut keys: Vec<hmac::Key> =
            cfg.secrets.iter().map(|secret| hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())).collect();
        if keys.is_empty() {
            let mut random = [0u8; 32];
            rand::fill(&mut random[..]);
            keys.push(hmac::Key::new(hmac::HMAC_SHA256, &random));
        }

        let name = header_safe(&cfg.cookie_name);
        let mut attributes = format!("; Path={}", header_safe(&cfg.path));
        if let Some(domain) = &cfg.domain {
            attributes.push_str("; Domain=");
            attributes.push_str(&header_safe(domain));
        }
        if cfg.http_only {
            attributes.push_str("; HttpOnly");
        }
        if cfg.secure {
            attributes.push_str("; Secure");
        }
        attributes.push_str(match cfg.same_site {
            SameSite::Strict => "; SameSite=Strict",
            SameSite::Lax => "; SameSite=Lax",
            SameSite::None => "; SameSite=None",
        });

        let clear = format!("{name}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT{attributes}");
        let clear = HeaderValue::try_from(clear).unwrap_or_else(|_| HeaderValue::from_static(""));

        CookieCodec {
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            keys,
            name,
            max_age_attr: format!("; Max-Age={}; Expires=", cfg.max_age),
            max_age: cfg.max_age,
            attributes,
            clear,
        }
    }

    /// The cookie value for `id`, signed with the first secret, before percent-encoding.
    pub fn sign(&self, id: &str) -> String {
        let mut json = String::with_capacity(id.len() + 2);
        push_json_string(&mut json, id);
        let payload_len = json.len().div_ceil(3) * 4;
        let mut value = String::with_capacity(payload_len + 1 + SIGNATURE_B64_LEN);
        STANDARD.encode_string(json.as_bytes(), &mut value);
        // `keys` is never empty (see `new`).
        if let Some(key) = self.keys.first() {
            let tag = hmac::sign(key, value.as_bytes());
            value.push('.');
            STANDARD_NO_PAD.encode_string(tag.as_ref(), &mut value);
        }
        value
    }

    /// Verifies a cookie value (already percent-decoded) with every secret and returns the id
    /// it carries. `None` for anything but a correctly signed JSON string that is a valid id.
    pub fn verify(&self, value: &str) -> Option<Verified> {
        let (payload, signature) = value.rsplit_once('.')?;
        // Remix compares against its own output, which is exactly 43 unpadded characters; the
        // decoder below also refuses non-zero trailing bits, so only that form passes.
        if signature.len() != SIGNATURE_B64_LEN {
            return None;
        }
        let mut tag = [0u8; 32];
        match STANDARD_NO_PAD.decode_slice(signature, &mut tag) {
            Ok(32) => {}
            _ => return None,
        }
        let index = self.keys.iter().position(|key| hmac::verify(key, payload.as_bytes(), &tag).is_ok())?;

        let json = PAYLOAD_B64.decode(payload).ok()?;
        let id: String = serde_json::from_slice(&json).ok()?;
        if !is_valid_id(&id) {
            return None;
        }
        Some(Verified { id, needs_resign: index != 0 })
    }

    /// The verified cookie of [`CookieCodec::read_cookie`], if any (tests' shorthand).
    #[cfg(test)]
    pub fn read(&self, headers: &HeaderMap) -> Option<Verified> {
        match self.read_cookie(headers) {
            CookieRead::Valid(v) => Some(v),
            CookieRead::Absent | CookieRead::Rejected => None,
        }
    }

    /// Finds the first cookie with the configured name across all `Cookie` headers (HTTP/2 may
    /// send several; they count in order, as Node joins them) and verifies it, telling a
    /// missing cookie from one that failed verification (for the `cookies_rejected` metric).
    /// As in Remix, only that first one counts: if it fails, there is no session.
    ///
    /// Parsing follows the `cookie` package Remix uses: pairs split at `;`, name and value
    /// trimmed of spaces and tabs, pairs without `=` skipped, one pair of surrounding double
    /// quotes removed from the value. Headers are read as bytes, so a header with non-UTF-8
    /// bytes elsewhere still yields its session cookie (Node reads headers as Latin-1 and would
    /// too). One pass over the headers, no allocation unless the value is percent-encoded.
    pub fn read_cookie(&self, headers: &HeaderMap) -> CookieRead {
        let name = self.name.as_bytes();
        for header in headers.get_all(COOKIE) {
            for pair in header.as_bytes().split(|&b| b == b';') {
                let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                    continue;
                };
                let (key, rest) = pair.split_at(eq);
                if trim(key) != name {
                    continue;
                }
                let raw = trim(rest.get(1..).unwrap_or_default());
                let raw = match raw {
                    [b'"', inner @ .., b'"'] => inner,
                    _ => raw,
                };
                return match self.read_value(raw) {
                    Some(v) => CookieRead::Valid(v),
                    None => CookieRead::Rejected,
                };
            }
        }
        CookieRead::Absent
    }

    /// Decodes and verifies the raw (still percent-encoded) value of our cookie, or finds it
    /// among the values this thread verified lately.
    fn read_value(&self, raw: &[u8]) -> Option<Verified> {
        if raw.is_empty() || raw.len() > MAX_COOKIE_VALUE_BYTES {
            return None;
        }
        if let Some(known) = RecentlyVerified::lookup(self.generation, raw) {
            return Some(known);
        }
        let verified = self.verify(&decode_uri_component(raw)?)?;
        RecentlyVerified::remember(self.generation, raw, &verified);
        Some(verified)
    }

    /// The complete `Set-Cookie` value for `id`: signed with the first secret,
    /// percent-encoded as `encodeURIComponent` does, `Max-Age` and an `Expires` of now plus
    /// `max_age`, then the configured attributes.
    pub fn set_cookie(&self, id: &str) -> HeaderValue {
        let signed = self.sign(id);
        let mut out = String::with_capacity(
            self.name.len() + signed.len() + 8 + self.max_age_attr.len() + 29 + self.attributes.len(),
        );
        out.push_str(&self.name);
        out.push('=');
        out.extend(percent_encoding::utf8_percent_encode(&signed, URI_COMPONENT));
        out.push_str(&self.max_age_attr);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
        push_imf_fixdate(&mut out, now.saturating_add(self.max_age));
        out.push_str(&self.attributes);
        // Every part is header-safe (see `new`); an empty value, which browsers ignore, is an
        // unreachable fallback that keeps this panic-free.
        HeaderValue::try_from(out).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The `Set-Cookie` value that deletes the cookie: same name, path and domain (browsers
    /// match on those) and the same flags, empty value, `Max-Age=0` and an `Expires` in 1970.
    pub fn clear_cookie(&self) -> HeaderValue {
        self.clear.clone()
    }
}

/// Source of [`CookieCodec::generation`].
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Raw cookie values one codec verified on this thread lately, and what they carry.
const RECENTLY_VERIFIED_MAX: usize = 4096;

thread_local! {
    static RECENTLY_VERIFIED: RefCell<RecentlyVerified> = RefCell::new(RecentlyVerified::default());
}

/// Cookie values (as received, still percent-encoded) that passed [`CookieCodec::verify`] on
/// this thread, with the id and rotation flag they carried. Verification depends only on the
/// value and the codec's secrets, so a value seen again verifies the same way; entries belong
/// to one codec (`generation`) and are dropped when another codec asks.
///
/// - Per thread: each worker runtime is one thread, so no lock is shared between workers.
/// - Only values that verified are kept: a client cannot fill it with made-up cookies, only
///   with cookies signed with one of the secrets. At [`RECENTLY_VERIFIED_MAX`] entries it
///   starts over empty: about 1 MiB per thread with the proxy's own cookies (about 90 bytes),
///   at most about 6 MiB with the longest ids a Remix app may sign (256 bytes, a cookie of
///   about 1.2 KiB once percent-encoded).
/// - Lookups hash the value with a per-map random key (std's `RandomState`) before any byte
///   comparison, so how long a forged value takes to miss says nothing about stored ones.
#[derive(Default)]
struct RecentlyVerified {
    generation: u64,
    entries: HashMap<Box<[u8]>, Verified>,
}

impl RecentlyVerified {
    fn lookup(generation: u64, raw: &[u8]) -> Option<Verified> {
        RECENTLY_VERIFIED.with_borrow(|cache| {
            if cache.generation != generation {
                return None;
            }
            cache.entries.get(raw).cloned()
        })
    }

    fn remember(generation: u64, raw: &[u8], verified: &Verified) {
        RECENTLY_VERIFIED.with_borrow_mut(|cache| {
            if cache.generation != generation || cache.entries.len() >= RECENTLY_VERIFIED_MAX {
                cache.generation = generation;
                cache.entries = HashMap::new();
            }
            cache.entries.insert(raw.into(), verified.clone());
        });
    }

    #[cfg(test)]
    fn len() -> usize {
        RECENTLY_VERIFIED.with_borrow(|cache| cache.entries.len())
    }
}

/// Drops characters that cannot appear in a header value (control characters), so a config
/// that slipped past validation cannot make `HeaderValue` construction fail.
fn header_safe(s: &str) -> String {
    s.chars().filter(|&c| c == '\t' || !c.is_control()).collect()
}

/// Trims spaces and tabs, as the `cookie` package does around names and values.
fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// JavaScript's `decodeURIComponent`: every `%XX` decoded, and the result must be UTF-8. A
/// malformed escape or invalid UTF-8 gives `None` (JS throws a `URIError`); `percent_decode`
/// alone would pass a malformed `%` through, so the escapes are checked first. Borrows `raw`
/// when there is nothing to decode.
fn decode_uri_component(raw: &[u8]) -> Option<Cow<'_, str>> {
    let escapes_well_formed = raw.iter().enumerate().filter(|&(_, &b)| b == b'%').all(|(i, _)| {
        matches!(raw.get(i + 1..i + 3), Some([high, low]) if high.is_ascii_hexdigit() && low.is_ascii_hexdigit())
    });
    if !escapes_well_formed {
        return None;
    }
    percent_encoding::percent_decode(raw).decode_utf8().ok()
}

/// Appends `JSON.stringify(s)`: quotes, `\"` and `\\`, `\b \f \n \r \t`, other control
/// characters as `\u00xx` (lowercase), everything else raw.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0'..='\u{1f}' => {
                out.push_str("\\u00");
                out.push_str(const_hex::Buffer::<1>::new().format(&[c as u8]));
            }
            _ => out.push(c),
        }
    }
    out.push('"');
}

/// Appends the IMF-fixdate (RFC 9110 §5.6.7) for a Unix time, e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`, clamped to [`MAX_EXPIRES_UNIX_SECS`] (`httpdate` panics
/// beyond it).
fn push_imf_fixdate(out: &mut String, unix_secs: u64) {
    let time = UNIX_EPOCH + Duration::from_secs(unix_secs.min(MAX_EXPIRES_UNIX_SECS));
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = write!(out, "{}", httpdate::HttpDate::from(time));
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    fn config(secrets: &[&str]) -> SessionConfig {
        SessionConfig {
            cookie_name: "__session".into(),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            max_age: 1_209_600,
            path: "/".into(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            save_uninitialized: false,
            rolling: false,
            header: HeaderName::from_static("x-session"),
            update_header: HeaderName::from_static("x-session-update"),
            regenerate_header: HeaderName::from_static("x-session-regenerate"),
            patch_header: HeaderName::from_static("x-session-patch"),
            index: None,
            login_url: None,
            identity_headers: Vec::new(),
            max_bytes: 16_384,
            on_store_error: crate::config::OnStoreError::Fail,
        }
    }

    fn codec(secrets: &[&str]) -> CookieCodec {
        CookieCodec::new(&config(secrets))
    }

    /// the README's test vector, as it appears in `Set-Cookie`.
    const VECTOR_ID: &str = "0123456789abcdef";
    const VECTOR_SIGNED: &str = "IjAxMjM0NTY3ODlhYmNkZWYi.PCyAmkvqqQJNQ7UMzWFVYtGWrV2Ri+t8aeKpCdQUKdU";
    const VECTOR_ENCODED: &str = "IjAxMjM0NTY3ODlhYmNkZWYi.PCyAmkvqqQJNQ7UMzWFVYtGWrV2Ri%2Bt8aeKpCdQUKdU";

    fn cookie_headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(COOKIE, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    fn verified(id: &str, needs_resign: bool) -> Option<Verified> {
        Some(Verified { id: id.into(), needs_resign })
    }

    /// Signs an arbitrary payload text as Remix would, for building odd cookies.
    fn sign_payload(secret: &str, json: &[u8]) -> String {
        let payload = STANDARD.encode(json);
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let sig = STANDARD_NO_PAD.encode(hmac::sign(&key, payload.as_bytes()));
        format!("{payload}.{sig}")
    }

    #[test]
    fn design_vector_signs() {
        let c = codec(&["s3cr3t"]);
        assert_eq!(c.sign(VECTOR_ID), VECTOR_SIGNED);
        let set = c.set_cookie(VECTOR_ID);
        let set = set.to_str().unwrap();
        assert!(set.starts_with(&format!("__session={VECTOR_ENCODED}; Max-Age=1209600; Expires=")), "{set}");
    }

    #[test]
    fn design_vector_verifies() {
        let c = codec(&["s3cr3t"]);
        assert_eq!(c.verify(VECTOR_SIGNED), verified(VECTOR_ID, false));
        let headers = cookie_headers(&[&format!("__session={VECTOR_ENCODED}")]);
        assert_eq!(c.read(&headers), verified(VECTOR_ID, false));
    }

    #[test]
    fn sign_verify_round_trip() {
        let c = codec(&["k"]);
        for id in [
            crate::session::id::new_id(),
            "a".into(),
            "quo\"te\\back".into(),
            "ünï€😀".into(),
            "x".repeat(256),
        ] {
            assert_eq!(c.verify(&c.sign(&id)), verified(&id, false), "{id}");
            let set = c.set_cookie(&id);
            let value = set.to_str().unwrap().split(';').next().unwrap();
            let headers = cookie_headers(&[value]);
            assert_eq!(c.read(&headers), verified(&id, false), "{id}");
        }
    }

    #[test]
    fn rotation() {
        let old = codec(&["old"]);
        let rotated = codec(&["new", "old"]);
        let by_old = old.sign(VECTOR_ID);
        assert_eq!(rotated.verify(&by_old), verified(VECTOR_ID, true));
        assert_eq!(rotated.verify(&rotated.sign(VECTOR_ID)), verified(VECTOR_ID, false));
        assert!(rotated.sign(VECTOR_ID) != by_old);
        // A secret that was dropped no longer verifies.
        assert_eq!(codec(&["new"]).verify(&by_old), None);
    }

    /// The value as a request's `Cookie` header carries it (percent-encoded).
    fn cookie_for(c: &CookieCodec, id: &str) -> HeaderMap {
        let set = c.set_cookie(id);
        cookie_headers(&[set.to_str().unwrap().split(';').next().unwrap()])
    }

    #[test]
    fn a_remembered_cookie_counts_only_for_the_codec_that_verified_it() {
        // A thread of its own: the cache is per thread.
        std::thread::spawn(|| {
            let old = codec(&["old"]);
            let headers = cookie_for(&old, VECTOR_ID);
            assert_eq!(old.read(&headers), verified(VECTOR_ID, false));
            assert_eq!(RecentlyVerified::len(), 1);
            assert_eq!(old.read(&headers), verified(VECTOR_ID, false), "served from the cache");

            // A reload with other secrets must not take the old codec's word for it.
            assert_eq!(codec(&["new"]).read(&headers), None);
            let rotated = codec(&["new", "old"]);
            assert_eq!(rotated.read(&headers), verified(VECTOR_ID, true));
            assert_eq!(rotated.read(&headers), verified(VECTOR_ID, true), "served from the cache");
            assert_eq!(old.read(&headers), verified(VECTOR_ID, false));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn only_verified_cookies_are_remembered_and_only_so_many() {
        std::thread::spawn(|| {
            let c = codec(&["k"]);
            let forged =
                cookie_headers(&[&format!("__session={}x", &VECTOR_ENCODED[..VECTOR_ENCODED.len() - 1])]);
            assert_eq!(c.read(&forged), None);
            assert_eq!(c.read(&forged), None);
            assert_eq!(RecentlyVerified::len(), 0);

            let first = cookie_for(&c, "first");
            assert_eq!(c.read(&first), verified("first", false));
            for i in 0..RECENTLY_VERIFIED_MAX + 10 {
                let id = format!("id-{i}");
                assert_eq!(c.read(&cookie_for(&c, &id)), verified(&id, false));
                assert!(RecentlyVerified::len() <= RECENTLY_VERIFIED_MAX);
            }
            // Forgotten when the cache started over, and verified again.
            assert_eq!(c.read(&first), verified("first", false));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn tampering_is_rejected() {
        let c = codec(&["s3cr3t"]);
        let (payload, sig) = VECTOR_SIGNED.rsplit_once('.').unwrap();
        let other_payload = STANDARD.encode("\"0123456789abcdee\"");
        let mut flipped_sig = sig.to_string();
        flipped_sig.replace_range(0..1, "Q");
        for bad in [
            format!("{other_payload}.{sig}"),
            format!("{payload}.{flipped_sig}"),
            format!("{payload}{sig}"),
            format!("{payload}.{sig}="),
            format!("{payload}.{sig}A"),
            format!("{payload}.{}", &sig[..42]),
            format!("{payload}."),
            format!(".{sig}"),
            format!("{payload}.{sig}.{sig}"),
            format!("x{payload}.{sig}"),
            payload.to_string(),
            String::new(),
            ".".into(),
            "garbage".into(),
        ] {
            assert_eq!(c.verify(&bad), None, "{bad}");
        }
    }

    #[test]
    fn signature_must_be_canonical() {
        // The last of 43 characters carries 2 unused bits; Remix never sets them.
        let c = codec(&["s3cr3t"]);
        let (payload, sig) = VECTOR_SIGNED.rsplit_once('.').unwrap();
        let last = sig.as_bytes()[42];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let pos = alphabet.iter().position(|&b| b == last).unwrap();
        let sibling = alphabet[pos ^ 1] as char;
        let forged = format!("{payload}.{}{sibling}", &sig[..42]);
        assert_eq!(c.verify(&forged), None);
        // Padded or URL-safe variants are refused too.
        assert_eq!(c.verify(&format!("{payload}.{sig}=")), None);
        let url_safe = sig.replace('+', "-").replace('/', "_");
        assert_eq!(c.verify(&format!("{payload}.{url_safe}")), None);
    }

    #[test]
    fn non_string_payloads_are_rejected() {
        let c = codec(&["s3cr3t"]);
        for json in [
            &b"123"[..],
            b"{}",
            b"[]",
            b"null",
            b"true",
            b"\"\"",
            b"\"a b\"",
            b"\"a\\nb\"",
            b"\"a",
            b"\xff\xfe",
            b"",
        ] {
            assert_eq!(c.verify(&sign_payload("s3cr3t", json)), None, "{json:?}");
        }
        let long = format!("\"{}\"", "x".repeat(257));
        assert_eq!(c.verify(&sign_payload("s3cr3t", long.as_bytes())), None);
    }

    #[test]
    fn payload_decoding_is_as_lenient_as_atob() {
        // Unpadded payload base64, as `atob` accepts; JSON whitespace, as `JSON.parse` accepts.
        let c = codec(&["s3cr3t"]);
        let payload = STANDARD_NO_PAD.encode(" \"abc\" ");
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"s3cr3t");
        let sig = STANDARD_NO_PAD.encode(hmac::sign(&key, payload.as_bytes()));
        assert_eq!(c.verify(&format!("{payload}.{sig}")), verified("abc", false));
    }

    #[test]
    fn read_finds_the_first_cookie_by_name() {
        let c = codec(&["s3cr3t"]);
        let good = format!("__session={VECTOR_ENCODED}");
        for header in [
            format!("a=1; {good}; b=2"),
            format!("{good};a=1"),
            format!("  {good}  "),
            format!("\t__session\t=\t{VECTOR_ENCODED}\t;x"),
            format!("__session=\"{VECTOR_ENCODED}\""),
            format!("noequals; {good}"),
            format!("__session_other=1; _session=2; __Session=3; {good}"),
            format!("__session={VECTOR_SIGNED}"),
        ] {
            assert_eq!(c.read(&cookie_headers(&[&header])), verified(VECTOR_ID, false), "{header}");
        }
    }

    #[test]
    fn only_the_first_cookie_with_the_name_counts() {
        let c = codec(&["s3cr3t"]);
        let good = format!("__session={VECTOR_ENCODED}");
        assert_eq!(c.read(&cookie_headers(&[&format!("__session=bad; {good}")])), None);
        assert_eq!(c.read(&cookie_headers(&[&format!("__session=; {good}")])), None);
        assert_eq!(c.read(&cookie_headers(&[&format!("{good}; __session=bad")])), verified(VECTOR_ID, false));
        let other = c.sign("ffffffffffffffff");
        assert_eq!(
            c.read(&cookie_headers(&[&format!("__session={other}; {good}")])),
            verified("ffffffffffffffff", false)
        );
    }

    #[test]
    fn several_cookie_headers_count_in_order() {
        let c = codec(&["s3cr3t"]);
        let good = format!("__session={VECTOR_ENCODED}");
        assert_eq!(c.read(&cookie_headers(&["a=1", "b=2", &good])), verified(VECTOR_ID, false));
        assert_eq!(c.read(&cookie_headers(&["__session=x", &good])), None);
        assert_eq!(c.read(&cookie_headers(&[&good, "__session=x"])), verified(VECTOR_ID, false));
    }

    #[test]
    fn non_utf8_bytes_elsewhere_do_not_hide_the_cookie() {
        let c = codec(&["s3cr3t"]);
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_bytes(b"x=\xff\xfe").unwrap());
        headers.append(COOKIE, HeaderValue::from_str(&format!("__session={VECTOR_ENCODED}")).unwrap());
        assert_eq!(c.read(&headers), verified(VECTOR_ID, false));
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_bytes(b"__session=\xff").unwrap());
        assert_eq!(c.read(&headers), None);
    }

    #[test]
    fn garbage_empty_and_huge_are_no_cookie() {
        let c = codec(&["s3cr3t"]);
        assert_eq!(c.read(&HeaderMap::new()), None);
        for header in [
            "",
            ";",
            "=",
            "__session",
            "__session=",
            "__session=\"",
            "__session=%",
            "__session=%zz",
            "__session=%E9",
            "__session=%2",
            "other=1",
        ] {
            assert_eq!(c.read(&cookie_headers(&[header])), None, "{header}");
        }
        // Oversized: a valid cookie padded with a huge escaped-but-ignored payload prefix.
        let huge = format!("__session={}", "A".repeat(MAX_COOKIE_VALUE_BYTES + 1));
        assert_eq!(c.read(&cookie_headers(&[&huge])), None);
        let huge_escapes = format!("__session={}", "%41".repeat(MAX_COOKIE_VALUE_BYTES));
        assert_eq!(c.read(&cookie_headers(&[&huge_escapes])), None);
    }

    #[test]
    fn thousands_of_cookies_are_read_in_one_pass() {
        let c = codec(&["s3cr3t"]);
        let mut header = "a=b; ".repeat(50_000);
        header.push_str(&format!("__session={VECTOR_ENCODED}"));
        assert_eq!(c.read(&cookie_headers(&[&header])), verified(VECTOR_ID, false));
        let semicolons = ";".repeat(200_000);
        assert_eq!(c.read(&cookie_headers(&[&semicolons])), None);
    }

    #[test]
    fn set_cookie_attributes() {
        let set = codec(&["s3cr3t"]).set_cookie(VECTOR_ID);
        let set = set.to_str().unwrap();
        let (head, expires_and_rest) = set.split_once("; Expires=").unwrap();
        assert_eq!(head, format!("__session={VECTOR_ENCODED}; Max-Age=1209600"));
        let (date, rest) = expires_and_rest.split_at(29);
        assert!(date.ends_with(" GMT"), "{date}");
        assert_eq!(rest, "; Path=/; HttpOnly; Secure; SameSite=Lax");

        let mut cfg = config(&["s3cr3t"]);
        cfg.cookie_name = "sid".into();
        cfg.path = "/app".into();
        cfg.domain = Some("example.com".into());
        cfg.http_only = false;
        cfg.secure = false;
        cfg.same_site = SameSite::Strict;
        cfg.max_age = 60;
        let c = CookieCodec::new(&cfg);
        let set = c.set_cookie(VECTOR_ID);
        let set = set.to_str().unwrap();
        assert!(set.starts_with(&format!("sid={VECTOR_ENCODED}; Max-Age=60; Expires=")));
        assert!(set.ends_with(" GMT; Path=/app; Domain=example.com; SameSite=Strict"), "{set}");

        cfg.same_site = SameSite::None;
        cfg.secure = true;
        let set = CookieCodec::new(&cfg).set_cookie(VECTOR_ID);
        assert!(set.to_str().unwrap().ends_with("; Domain=example.com; Secure; SameSite=None"));
    }

    #[test]
    fn set_cookie_expires_is_now_plus_max_age() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let set = codec(&["s3cr3t"]).set_cookie(VECTOR_ID);
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let date = set.to_str().unwrap().split("; Expires=").nth(1).unwrap()[..29].to_string();
        let candidates: Vec<String> = (before..=after)
            .map(|t| {
                let mut s = String::new();
                push_imf_fixdate(&mut s, t + 1_209_600);
                s
            })
            .collect();
        assert!(candidates.contains(&date), "{date}");
    }

    #[test]
    fn huge_max_age_does_not_overflow() {
        let mut cfg = config(&["s3cr3t"]);
        cfg.max_age = u64::MAX;
        let set = CookieCodec::new(&cfg).set_cookie(VECTOR_ID);
        let set = set.to_str().unwrap();
        assert!(set.contains(&format!("; Max-Age={}; Expires=Fri, 31 Dec 9999 23:59:59 GMT;", u64::MAX)));
    }

    #[test]
    fn clear_cookie_attributes() {
        assert_eq!(
            codec(&["s3cr3t"]).clear_cookie(),
            "__session=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; HttpOnly; Secure; SameSite=Lax"
        );
        let mut cfg = config(&["s3cr3t"]);
        cfg.domain = Some("example.com".into());
        cfg.path = "/app".into();
        cfg.http_only = false;
        assert_eq!(
            CookieCodec::new(&cfg).clear_cookie(),
            "__session=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/app; Domain=example.com; Secure; SameSite=Lax"
        );
    }

    #[test]
    fn percent_encoding_is_encode_uri_component() {
        let mut out = String::new();
        out.extend(percent_encoding::utf8_percent_encode("azAZ09-_.!~*'()+/= ;,\"%é", URI_COMPONENT));
        assert_eq!(out, "azAZ09-_.!~*'()%2B%2F%3D%20%3B%2C%22%25%C3%A9");
        assert_eq!(decode_uri_component(out.as_bytes()).as_deref(), Some("azAZ09-_.!~*'()+/= ;,\"%é"));
        assert_eq!(decode_uri_component(b"%2b%2F"), Some("+/".into()));
        assert_eq!(decode_uri_component(b"%C3"), None);
        assert_eq!(decode_uri_component(b"%G0"), None);
        assert_eq!(decode_uri_component(b"ab%"), None);
        assert_eq!(decode_uri_component(b"%%41"), None);
        assert_eq!(decode_uri_component(b"%4"), None);
        assert_eq!(decode_uri_component(b"%FF"), None);
        assert!(matches!(decode_uri_component(b"abc"), Some(Cow::Borrowed("abc"))));
    }

    #[test]
    fn json_string_matches_serde_json_and_js() {
        let all_ascii: String = (0u8..0x80).map(char::from).collect();
        for s in [all_ascii.as_str(), "", "é€😀\u{2028}", "\"\\"] {
            let mut ours = String::new();
            push_json_string(&mut ours, s);
            assert_eq!(ours, serde_json::to_string(s).unwrap(), "{s:?}");
        }
        let mut ours = String::new();
        push_json_string(&mut ours, "\u{1}\u{1f}\u{7f}");
        assert_eq!(ours, "\"\\u0001\\u001f\u{7f}\"");
    }

    #[test]
    fn imf_fixdate_known_values() {
        for (secs, text) in [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_709_164_800, "Thu, 29 Feb 2024 00:00:00 GMT"),
            (4_133_980_799, "Fri, 31 Dec 2100 23:59:59 GMT"),
            (MAX_EXPIRES_UNIX_SECS, "Fri, 31 Dec 9999 23:59:59 GMT"),
            (u64::MAX, "Fri, 31 Dec 9999 23:59:59 GMT"),
        ] {
            let mut out = String::new();
            push_imf_fixdate(&mut out, secs);
            assert_eq!(out, text, "{secs}");
        }
    }

    #[test]
    fn imf_fixdate_agrees_with_the_cookie_crate() {
        use cookie::time::OffsetDateTime;
        let mut t: u64 = 0;
        while t < MAX_EXPIRES_UNIX_SECS {
            let dt = OffsetDateTime::from_unix_timestamp(i64::try_from(t).unwrap()).unwrap();
            let reference = cookie::Cookie::build(("a", "b")).expires(dt).build().to_string();
            let mut ours = String::new();
            push_imf_fixdate(&mut ours, t);
            assert_eq!(reference, format!("a=b; Expires={ours}"), "{t}");
            t += 86_399 * 37 + 12_345;
        }
    }

    #[test]
    fn bad_config_never_panics() {
        let mut cfg = config(&[]);
        cfg.cookie_name = "a\r\nb".into();
        cfg.path = "/\0".into();
        cfg.domain = Some("x\ny".into());
        let c = CookieCodec::new(&cfg);
        let set = c.set_cookie("id");
        assert!(set.to_str().unwrap().starts_with("ab="));
        assert_eq!(c.verify(&c.sign("id")), verified("id", false));
        assert!(c.clear_cookie().to_str().unwrap().starts_with("ab=; Max-Age=0"));
    }

    #[test]
    fn debug_output_hides_ids_and_secrets() {
        let c = codec(&["topsecret"]);
        assert!(!format!("{c:?}").contains("topsecret"));
        let v = c.verify(&c.sign("myid")).unwrap();
        assert!(!format!("{v:?}").contains("myid"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_cookie_headers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
                let c = codec(&["s3cr3t"]);
                if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                    let mut headers = HeaderMap::new();
                    headers.insert(COOKIE, value);
                    prop_assert_eq!(c.read(&headers), None);
                }
                if let Ok(s) = std::str::from_utf8(&bytes) {
                    prop_assert_eq!(c.verify(s), None);
                }
            }
        }
    }

    /// Properties added with the reliability tests: signing round-trips for every secret, not
    /// just fixed ones; rotation; tampering; and cookie headers built around our cookie's name,
    /// which random bytes almost never reach.
    mod reliability_properties {
        use super::*;
        use proptest::prelude::*;

        fn secrets() -> impl Strategy<Value = Vec<String>> {
            prop::collection::vec(
                any::<String>().prop_filter("secrets are not empty", |s| !s.is_empty()),
                1..4,
            )
        }

        proptest! {
            #[test]
            fn sign_then_verify_round_trips_for_every_id_and_secret(id in any::<String>(), secrets in secrets()) {
                let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
                let c = codec(&refs);
                let expected = is_valid_id(&id).then(|| Verified { id: id.clone(), needs_resign: false });
                prop_assert_eq!(c.verify(&c.sign(&id)), expected.clone());
                // Through Set-Cookie and back, percent-encoding included.
                let set = c.set_cookie(&id);
                let pair = set.to_str().unwrap().split(';').next().unwrap().to_owned();
                prop_assert_eq!(c.read(&cookie_headers(&[&pair])), expected);
            }

            #[test]
            fn rotation_verifies_with_any_listed_secret(
                id in "[0-9a-f]{32}",
                old in "[ -~]{1,16}",
                new in "[ -~]{1,16}",
                other in "[ -~]{1,16}",
            ) {
                prop_assume!(old != new && old != other);
                let signed = codec(&[&old]).sign(&id);
                // Rotated: the new secret signs, the old one still verifies and asks for a re-sign.
                prop_assert_eq!(codec(&[&new, &old]).verify(&signed), verified(&id, true));
                prop_assert_eq!(codec(&[&old, &new]).verify(&signed), verified(&id, false));
                // Dropped: the old cookie is a new visitor.
                prop_assert_eq!(codec(&[&new, &other]).verify(&signed), None);
            }

            #[test]
            fn any_change_to_a_signed_value_is_rejected(
                id in "[0-9a-f]{16,32}",
                index in any::<prop::sample::Index>(),
                replacement in "[A-Za-z0-9+/=.]",
            ) {
                let c = codec(&["s3cr3t"]);
                let signed = c.sign(&id);
                let at = index.index(signed.len());
                let mut tampered = signed.clone();
                tampered.replace_range(at..at + 1, &replacement);
                prop_assume!(tampered != signed);
                prop_assert_eq!(c.verify(&tampered), None, "{} accepted", tampered);
                // Truncated or extended, too.
                prop_assert_eq!(c.verify(&signed[..at]), None);
                prop_assert_eq!(c.verify(&format!("{signed}{replacement}")), None);
            }

            #[test]
            fn cookie_headers_around_our_name_never_panic(
                before in prop::collection::vec("[a-z_]{0,8}(=[^;]{0,8})?", 0..4),
                value in "[A-Za-z0-9+/=%.\" \t\u{80}-\u{10FFFF}]{0,96}",
                after in prop::collection::vec("[a-z_]{0,8}(=[^;]{0,8})?", 0..4),
                separator in "(; |;|;;| ; )",
            ) {
                let c = codec(&["s3cr3t"]);
                let mut pairs = before.clone();
                pairs.push(format!("__session={value}"));
                pairs.extend(after);
                let header = pairs.join(&separator);
                if let Ok(value) = HeaderValue::from_str(&header) {
                    let mut headers = HeaderMap::new();
                    headers.insert(COOKIE, value);
                    // Unsigned input never verifies (the signature would have to be forged).
                    prop_assert_eq!(c.read(&headers), None);
                    prop_assert!(!matches!(c.read_cookie(&headers), CookieRead::Valid(_)));
                }
            }

            #[test]
            fn a_valid_cookie_is_found_among_arbitrary_others(
                others in prop::collection::vec("[a-zA-Z0-9_-]{1,8}=[a-zA-Z0-9%._-]{0,12}", 0..50),
                position in any::<prop::sample::Index>(),
            ) {
                let c = codec(&["s3cr3t"]);
                let set = c.set_cookie("0123456789abcdef");
                let ours = set.to_str().unwrap().split(';').next().unwrap().to_owned();
                let mut pairs: Vec<String> = others.into_iter().filter(|p| !p.starts_with("__session=")).collect();
                let at = position.index(pairs.len() + 1);
                pairs.insert(at, ours);
                let headers = cookie_headers(&[&pairs.join("; ")]);
                prop_assert_eq!(c.read(&headers), verified("0123456789abcdef", false));
            }
        }
    }
}
