//! The pure parts of the header protocol between the proxy and the upstream (DESIGN.md, "The
//! header protocol"): stripping forged or leaked protocol headers, turning a stored session
//! into the ASCII-only `x-session` request header, and reading the upstream's
//! `x-session-update` into the exact text Remix would store.
//!
//! Everything here is synchronous, allocation-light and free of I/O so the proxy can call it on
//! every request.

use std::cell::Cell;
use std::fmt;
use std::io;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::ser::Formatter;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

/// The session sent to the upstream when the visitor has none yet.
pub const EMPTY_SESSION: &str = "{}";

/// [`EMPTY_SESSION`] as a header value; built from a static string, so it costs no allocation.
pub fn empty_session() -> HeaderValue {
    HeaderValue::from_static(EMPTY_SESSION)
}

/// Whether a header name, lowercased and with `_` read as `-`, equals `target`.
///
/// Some stacks (PHP, CGI) map `X_Session` and `X-Session` to the same variable, so a client
/// could forge the session header with either spelling. Both sides are normalised, so a
/// configured name with `_` (`x_session`) matches `X-Session` and itself. Allocates nothing.
pub fn normalized_eq(name: &str, target: &HeaderName) -> bool {
    let fold = |c: u8| if c == b'_' { b'-' } else { c.to_ascii_lowercase() };
    let target = target.as_str().as_bytes();
    name.len() == target.len() && name.bytes().zip(target).all(|(a, &b)| fold(a) == fold(b))
}

/// Removes every header whose name matches one of `names` by [`normalized_eq`], in every
/// spelling, and returns how many header fields (values, not distinct names) were removed.
///
/// Used on client requests (a client must never forge a session) and on upstream responses
/// (the update and regenerate headers never reach the client). Allocates only when something
/// matches, which honest traffic never does on requests.
pub fn strip_protocol_headers(headers: &mut HeaderMap, names: &[&HeaderName]) -> usize {
    // `Vec::new` does not allocate until the first push.
    let mut found: Vec<HeaderName> = Vec::new();
    for key in headers.keys() {
        if let Some(&target) = names.iter().find(|target| normalized_eq(key.as_str(), target)) {
            // The configured name when spelled exactly so (as an upstream's update is): a
            // clone of it shares its bytes, where a clone of a parsed name would allocate.
            found.push(if key == target { target.clone() } else { key.clone() });
        }
    }
    let mut removed = 0;
    for key in found {
        removed += headers.get_all(&key).iter().count();
        headers.remove(&key);
    }
    removed
}

/// A stored session that is not a JSON object (or not JSON at all). The caller treats it as an
/// empty session and logs this; the message never contains the stored text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stored session is not a JSON object")]
pub struct NotAnObject;

/// Converts the stored session text (compact JSON with raw UTF-8, as Remix writes it) into the
/// `x-session` request header value: every non-ASCII character escaped as `\uXXXX` (astral
/// characters as surrogate pairs, lowercase hex) so that any upstream can read it.
///
/// The text must be a JSON object. Whitespace outside strings is dropped, so a value written by
/// another app with newlines still makes a valid header; inside strings, raw DEL (legal in
/// JSON, illegal in a header) is escaped as well. Text that needs none of this is shared, not
/// copied; otherwise one allocation, the header's own buffer.
pub fn to_request_header(stored: &Bytes) -> Result<HeaderValue, NotAnObject> {
    let text = object_text(stored)?;
    if needs_rewrite(text.as_bytes()) {
        rewrite(text)
    } else if within(stored, text.as_bytes()) {
        // Compact printable ASCII, as most sessions are: the header shares the stored bytes.
        HeaderValue::from_maybe_shared(stored.slice_ref(text.as_bytes())).map_err(|_| NotAnObject)
    } else {
        // Unreachable (a borrowed `RawValue` is always a slice of its input); `slice_ref`
        // would panic, a copy does not.
        HeaderValue::from_bytes(text.as_bytes()).map_err(|_| NotAnObject)
    }
}

/// Whether `part` lies inside `whole`'s memory.
fn within(whole: &[u8], part: &[u8]) -> bool {
    let (outer, inner) = (whole.as_ptr_range(), part.as_ptr_range());
    outer.start <= inner.start && inner.end <= outer.end
}

/// The JSON object in `stored`, validated in full (syntax and UTF-8) by serde_json without
/// building a tree; afterwards the text can be scanned byte by byte because non-ASCII and
/// escapes occur only inside strings. Surrounding whitespace is not part of it.
fn object_text(stored: &[u8]) -> Result<&str, NotAnObject> {
    let raw: &RawValue = serde_json::from_slice(stored).map_err(|_| NotAnObject)?;
    let text = raw.get();
    if !text.starts_with('{') {
        return Err(NotAnObject);
    }
    Ok(text)
}

/// Whether valid JSON text has anything [`rewrite`] changes: whitespace outside strings, DEL
/// or non-ASCII (which valid JSON has only inside strings).
fn needs_rewrite(bytes: &[u8]) -> bool {
    // Most sessions: no whitespace at all and nothing above `~`, which a loop without state
    // can tell (and the compiler vectorises); only text with spaces needs to know strings.
    if bytes.iter().all(|&b| b > b' ' && b < 0x7f) {
        return false;
    }
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if b >= 0x7f {
            return true;
        }
        if !in_string {
            match b {
                b'"' => in_string = true,
                0..=b' ' => return true,
                _ => {}
            }
        } else if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            in_string = false;
        }
    }
    false
}

/// The header text of valid JSON: whitespace outside strings dropped, DEL and non-ASCII
/// escaped as `\uXXXX`. One allocation.
fn rewrite(text: &str) -> Result<HeaderValue, NotAnObject> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut in_string = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if !in_string {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'"' => {
                    in_string = true;
                    out.push(b);
                }
                _ => out.push(b),
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_string = false;
                out.push(b);
                i += 1;
            }
            b'\\' => {
                // An escape's second byte is ASCII; `\uXXXX` digits follow as plain ASCII.
                out.push(b);
                if let Some(&next) = bytes.get(i + 1) {
                    out.push(next);
                }
                i += 2;
            }
            0x7f => {
                push_u_escape(&mut out, 0x7f);
                i += 1;
            }
            0x00..=0x7e => {
                out.push(b);
                i += 1;
            }
            _ => {
                // `i` is on a char boundary: we only ever step over whole chars.
                let Some(c) = text.get(i..).and_then(|rest| rest.chars().next()) else {
                    return Err(NotAnObject);
                };
                let mut units = [0u16; 2];
                for &unit in c.encode_utf16(&mut units).iter() {
                    push_u_escape(&mut out, unit);
                }
                i += c.len_utf8();
            }
        }
    }
    // Cannot fail: the output is printable ASCII. Treated as a bad value rather than a panic.
    HeaderValue::try_from(out).map_err(|_| NotAnObject)
}

/// Appends `\uXXXX` with lowercase hex, as JavaScript writes its own escapes.
fn push_u_escape(out: &mut Vec<u8>, unit: u16) {
    out.extend_from_slice(b"\\u");
    out.extend_from_slice(const_hex::Buffer::<2>::new().format(&unit.to_be_bytes()).as_bytes());
}

/// What the upstream asked for in `x-session-update`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Store this text: `JSON.stringify(JSON.parse(value))` of the object sent.
    Replace(String),
    /// `null`: delete the session and clear the cookie.
    Destroy,
}

/// Why an `x-session-update` value was refused (the proxy answers 502 and writes nothing).
/// Messages never contain the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// More than one update header: which one the upstream meant is ambiguous.
    #[error("the upstream sent more than one session update header")]
    Duplicate,
    #[error("session update is {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("session update is not valid JSON (near byte {column})")]
    NotJson { column: usize },
    #[error("session update is a JSON {found}, not an object or null")]
    NotAnObject { found: &'static str },
}

/// Reads the upstream's `x-session-update` value.
///
/// `max_bytes` bounds the value as received, before any parsing. `null` (whitespace around it
/// allowed) destroys the session; a JSON object becomes the exact text JavaScript's
/// `JSON.stringify(JSON.parse(value))` produces, so a Remix app sharing the store reads and
/// writes the same bytes:
/// - compact; non-ASCII as raw UTF-8 (`\u00e9` becomes `é`); control characters escaped as JS
///   does (`\b \f \n \r \t`, others `\u00xx`);
/// - keys in the order sent, except that array-index keys (`"0"`, `"42"`, ...) come first in
///   ascending order, as in every JS object; a repeated key keeps its first position and its
///   last value;
/// - numbers as JS prints the double they parse to (`1.0` → `1`, `1e21` → `1e+21`, `-0` → `0`,
///   `12345678901234567890` → `12345678901234567000`), parsed from the literal text with
///   correct rounding.
///
/// Differences from JavaScript, all refusals (502) rather than different bytes: strings with a
/// lone surrogate escape (`"\ud800"`), numbers that overflow a double (`1e400`, which JS turns
/// into `null`), and nesting deeper than serde_json's limit of 128.
pub fn parse_update(value: &HeaderValue, max_bytes: usize) -> Result<Update, UpdateError> {
    let bytes = value.as_bytes();
    if bytes.len() > max_bytes {
        return Err(UpdateError::TooLarge { len: bytes.len(), max: max_bytes });
    }
    let text =
        std::str::from_utf8(bytes).map_err(|e| UpdateError::NotJson { column: e.valid_up_to() + 1 })?;

    // serde_json hands numbers to a visitor as already-rounded doubles (and, without its
    // `float_roundtrip` feature, not always correctly rounded). So the tree holds each number
    // as its ordinal in the text, and the writer formats the literal itself.
    let seen = Cell::new(0);
    let mut de = serde_json::Deserializer::from_str(text);
    let tree = JsSeed { seen: &seen }
        .deserialize(&mut de)
        .and_then(|tree| de.end().map(|()| tree))
        .map_err(|e| UpdateError::NotJson { column: e.column() })?;

    let map = match tree {
        Value::Null => return Ok(Update::Destroy),
        Value::Object(map) => map,
        Value::Bool(_) => return Err(UpdateError::NotAnObject { found: "boolean" }),
        Value::Number(_) => return Err(UpdateError::NotAnObject { found: "number" }),
        Value::String(_) => return Err(UpdateError::NotAnObject { found: "string" }),
        Value::Array(_) => return Err(UpdateError::NotAnObject { found: "array" }),
    };

    let literals = number_literals(text);
    if literals.len() != seen.get() {
        // Unreachable for text serde_json accepted; refuse rather than write wrong numbers.
        return Err(UpdateError::NotJson { column: 0 });
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut ser = serde_json::Serializer::with_formatter(&mut out, JsNumbers { literals: &literals });
    map.serialize(&mut ser).map_err(|_| UpdateError::NotJson { column: 0 })?;
    // serde_json writes valid UTF-8; an error here is unreachable.
    String::from_utf8(out).map(Update::Replace).map_err(|_| UpdateError::NotJson { column: 0 })
}

/// Builds a `serde_json::Value` the way `JSON.parse` builds a JS value, except that every
/// number becomes a placeholder: its ordinal among the number literals of the text (serde_json
/// parses in text order, so the n-th number visited is the n-th literal).
#[derive(Clone, Copy)]
struct JsSeed<'c> {
    seen: &'c Cell<usize>,
}

impl JsSeed<'_> {
    fn number(self) -> Value {
        let n = self.seen.get();
        self.seen.set(n + 1);
        Value::Number(Number::from(n))
    }
}

impl<'de> DeserializeSeed<'de> for JsSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
        Ok(self.number())
    }

    fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
        Ok(self.number())
    }

    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(self.number())
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        let mut has_index_key = false;
        while let Some(key) = access.next_key::<String>()? {
            let value = access.next_value_seed(self)?;
            has_index_key |= array_index(&key).is_some();
            // IndexMap insert (serde_json's `preserve_order`): a repeated key keeps its first
            // position and takes the last value, exactly as a JS object does.
            map.insert(key, value);
        }
        if has_index_key {
            map = js_key_order(map);
        }
        Ok(Value::Object(map))
    }
}

/// The array index a key denotes in JS (canonical decimal, 0 ..= 2^32 - 2), if any. JS objects
/// list such keys before all others, in ascending numeric order.
fn array_index(key: &str) -> Option<u32> {
    let bytes = key.as_bytes();
    let canonical = match bytes {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.len() < 10 && rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !canonical {
        return None;
    }
    key.parse::<u32>().ok().filter(|&n| n != u32::MAX)
}

/// Reorders an object's keys as JS does: array indices first, ascending, then the rest in
/// insertion order.
fn js_key_order(map: Map<String, Value>) -> Map<String, Value> {
    let mut indexed = Vec::new();
    let mut named = Vec::new();
    for (key, value) in map {
        match array_index(&key) {
            Some(n) => indexed.push((n, key, value)),
            None => named.push((key, value)),
        }
    }
    indexed.sort_by_key(|&(n, _, _)| n);
    indexed.into_iter().map(|(_, key, value)| (key, value)).chain(named).collect()
}

/// The number literals of valid JSON text, in order. Outside strings, and only there, a number
/// is a run of `-0-9.eE+` starting with `-` or a digit.
fn number_literals(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut literals = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                i += 1;
                while let Some(&c) = bytes.get(i) {
                    i += if c == b'\\' { 2 } else { 1 };
                    if c == b'"' {
                        break;
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while bytes
                    .get(i)
                    .is_some_and(|c| matches!(c, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'))
                {
                    i += 1;
                }
                if let Some(literal) = text.get(start..i) {
                    literals.push(literal);
                }
            }
            _ => i += 1,
        }
    }
    literals
}

/// Compact formatting (serde_json's default, whose string escaping already equals
/// `JSON.stringify`'s) that writes each number placeholder as JS would print its literal.
struct JsNumbers<'a> {
    literals: &'a [&'a str],
}

impl Formatter for JsNumbers<'_> {
    fn write_u64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: u64) -> io::Result<()> {
        let literal = usize::try_from(value)
            .ok()
            .and_then(|n| self.literals.get(n))
            .ok_or_else(|| io::Error::other("number placeholder out of range"))?;
        writer.write_all(js_number_literal(literal).as_bytes())
    }
}

/// Decimal literals with at most this many digits are integers a double holds exactly, which
/// JS prints unchanged: no need to go through `f64`.
const EXACT_INTEGER_DIGITS: usize = 15;

/// How JS prints the number a JSON literal parses to (`JSON.stringify(JSON.parse(literal))`).
fn js_number_literal(literal: &str) -> std::borrow::Cow<'_, str> {
    let digits = literal.strip_prefix('-').unwrap_or(literal);
    if digits.len() <= EXACT_INTEGER_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()) {
        return if digits == "0" { "0".into() } else { literal.into() };
    }
    match literal.parse::<f64>() {
        // `JSON.stringify` writes non-finite numbers as `null`.
        Ok(x) if x.is_finite() => js_number_to_string(x).into(),
        _ => "null".into(),
    }
}

/// ECMAScript `Number::toString(x)` (radix 10) for a finite double: the shortest digits that
/// round-trip (Rust's `{:e}` gives those, as V8 does), laid out by the spec's rules: plain
/// below 1e21, `0.000001`-style down to 1e-6, exponential (`1e+21`, `1.5e-7`) beyond.
fn js_number_to_string(x: f64) -> String {
    if x == 0.0 {
        return "0".to_owned(); // both zeros
    }
    let scientific = format!("{:e}", x.abs());
    let Some((mantissa, exponent)) = scientific.split_once('e') else {
        return x.to_string();
    };
    let Ok(exponent) = exponent.parse::<i32>() else {
        return x.to_string();
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    let n = exponent + 1; // position of the decimal point relative to the digits
    let mut out = String::with_capacity(digits.len() + 8);
    if x < 0.0 {
        out.push('-');
    }
    let zeros = |count: i32| "0".repeat(usize::try_from(count).unwrap_or(0));
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.push_str(&zeros(n - k));
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(usize::try_from(n).unwrap_or(0));
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.push_str(&zeros(-n));
        out.push_str(&digits);
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let e = n - 1;
        out.push('e');
        out.push(if e < 0 { '-' } else { '+' });
        out.push_str(&e.unsigned_abs().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &'static str) -> HeaderName {
        HeaderName::from_static(s)
    }

    fn update(s: &str) -> Result<Update, UpdateError> {
        parse_update(&HeaderValue::from_str(s).unwrap(), 16384)
    }

    fn stored(s: &str) -> String {
        match update(s) {
            Ok(Update::Replace(text)) => text,
            other => panic!("{s:?} gave {other:?}"),
        }
    }

    fn header(stored: &str) -> String {
        to_request_header(&Bytes::copy_from_slice(stored.as_bytes())).unwrap().to_str().unwrap().to_owned()
    }

    // ---- header names ----

    #[test]
    fn configured_names_with_underscores_match_every_spelling() {
        let target = HeaderName::from_static("x_session");
        for name in ["x_session", "x-session", "X_SESSION", "X-Session"] {
            assert!(normalized_eq(name, &target), "{name}");
        }
        assert!(!normalized_eq("x_sessions", &target));
        let mut headers = HeaderMap::new();
        headers.insert("x_session", HeaderValue::from_static("{}"));
        headers.insert("x-session", HeaderValue::from_static("{}"));
        assert_eq!(strip_protocol_headers(&mut headers, &[&target]), 2);
        assert!(headers.is_empty());
    }

    #[test]
    fn normalized_eq_matches_forged_spellings() {
        let target = name("x-session");
        for forged in ["x-session", "X-Session", "x_session", "X_SESSION", "x_Session"] {
            assert!(normalized_eq(forged, &target), "{forged}");
        }
        for other in ["x-sessions", "x-sessio", "xsession", "x-session-update", "", "x session"] {
            assert!(!normalized_eq(other, &target), "{other}");
        }
    }

    #[test]
    fn strip_removes_every_spelling_and_counts_fields() {
        let mut headers = HeaderMap::new();
        headers.append("x-session", HeaderValue::from_static("{}"));
        headers.append("x-session", HeaderValue::from_static("{\"a\":1}"));
        headers.append("x_session", HeaderValue::from_static("{}"));
        headers.append("x_session_update", HeaderValue::from_static("null"));
        headers.append("x-session-regenerate", HeaderValue::from_static("1"));
        headers.append("x-sessions", HeaderValue::from_static("keep"));
        headers.append("accept", HeaderValue::from_static("*/*"));
        let (a, b, c) = (name("x-session"), name("x-session-update"), name("x-session-regenerate"));
        assert_eq!(strip_protocol_headers(&mut headers, &[&a, &b, &c]), 5);
        assert_eq!(headers.len(), 2);
        assert!(headers.contains_key("x-sessions"));
        assert!(headers.contains_key("accept"));
    }

    #[test]
    fn strip_leaves_honest_headers_alone() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", HeaderValue::from_static("a=b"));
        let a = name("x-session");
        assert_eq!(strip_protocol_headers(&mut headers, &[&a]), 0);
        assert_eq!(strip_protocol_headers(&mut HeaderMap::new(), &[&a]), 0);
        assert_eq!(strip_protocol_headers(&mut headers, &[]), 0);
        assert_eq!(headers.len(), 1);
    }

    #[test]
    fn strip_parses_uppercase_from_the_wire() {
        // `HeaderName::from_bytes` lowercases, so `X_Session` on the wire is `x_session` here.
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_bytes(b"X_Session").unwrap(),
            HeaderValue::from_static("{\"admin\":true}"),
        );
        assert_eq!(strip_protocol_headers(&mut headers, &[&name("x-session")]), 1);
        assert!(headers.is_empty());
    }

    // ---- stored session -> request header ----

    #[test]
    fn empty_session_is_braces() {
        assert_eq!(empty_session(), "{}");
        assert_eq!(header(EMPTY_SESSION), "{}");
    }

    #[test]
    fn ascii_passes_through() {
        let text = r#"{"user":"ann smith","n":[1,2.5,-3e7],"ok":true,"x":null,"q":"a\"b\\c\n"}"#;
        assert_eq!(header(text), text);
    }

    #[test]
    fn non_ascii_is_escaped() {
        assert_eq!(header("{\"é\":\"café\"}"), r#"{"\u00e9":"caf\u00e9"}"#);
        assert_eq!(header("{\"a\":\"€😀\"}"), r#"{"a":"\u20ac\ud83d\ude00"}"#);
        assert_eq!(header("{\"a\":\"\u{7f}\u{80}\"}"), r#"{"a":"\u007f\u0080"}"#);
        // Already-escaped text stays as it is.
        assert_eq!(header(r#"{"a":"\u00e9\\u"}"#), r#"{"a":"\u00e9\\u"}"#);
    }

    #[test]
    fn text_that_needs_no_rewrite_is_shared_not_copied() {
        for text in [&b"{\"user\":\"bench\",\"n\":[1,2]}"[..], b"{\"a\":\"x y\",\"q\":\"\\\" }\"}"] {
            let stored = Bytes::copy_from_slice(text);
            let header = to_request_header(&stored).unwrap();
            assert_eq!(header.as_bytes(), text);
            assert_eq!(header.as_bytes().as_ptr(), stored.as_ptr(), "{text:?}");
        }
        let stored = Bytes::from_static(b"{\"a\": 1}");
        assert_ne!(to_request_header(&stored).unwrap().as_bytes().as_ptr(), stored.as_ptr());
    }

    #[test]
    fn whitespace_outside_strings_is_dropped() {
        let text = "{\n  \"a\" : \"x y\",\r\n\t\"b\": [ 1 , 2 ]\n}\n";
        assert_eq!(header(text), r#"{"a":"x y","b":[1,2]}"#);
        assert_eq!(header("  {}  "), "{}");
    }

    #[test]
    fn stored_non_objects_are_refused() {
        for bad in [
            &b"[]"[..],
            b"\"{}\"",
            b"1",
            b"null",
            b"true",
            b"",
            b"{",
            b"{\"a\":1}x",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":\"\x01\"}",
            b"{'a':1}",
        ] {
            assert_eq!(to_request_header(&Bytes::copy_from_slice(bad)), Err(NotAnObject), "{bad:?}");
        }
    }

    // ---- x-session-update ----

    #[test]
    fn null_destroys() {
        assert_eq!(update("null"), Ok(Update::Destroy));
        assert_eq!(update(" \tnull\t "), Ok(Update::Destroy));
    }

    #[test]
    fn objects_become_compact_text() {
        assert_eq!(stored("{}"), "{}");
        assert_eq!(stored(" { } "), "{}");
        assert_eq!(
            stored(
                r#"{ "user" : { "id" : 7, "roles" : [ "a", "b" ] }, "cart" : [ ], "n": null, "t": true }"#
            ),
            r#"{"user":{"id":7,"roles":["a","b"]},"cart":[],"n":null,"t":true}"#
        );
    }

    #[test]
    fn key_order_is_kept() {
        assert_eq!(stored(r#"{"z":1,"a":2,"m":{"y":1,"b":2}}"#), r#"{"z":1,"a":2,"m":{"y":1,"b":2}}"#);
    }

    #[test]
    fn duplicate_key_keeps_first_position_and_last_value() {
        assert_eq!(stored(r#"{"a":1,"b":2,"a":3}"#), r#"{"a":3,"b":2}"#);
        assert_eq!(stored(r#"{"a":{"x":1},"b":2,"a":"s"}"#), r#"{"a":"s","b":2}"#);
    }

    #[test]
    fn array_index_keys_come_first_as_in_js() {
        // JSON.stringify(JSON.parse('{"b":1,"10":2,"a":3,"2":4,"01":5,"-1":6,"4294967295":7,"4294967294":8}'))
        assert_eq!(
            stored(r#"{"b":1,"10":2,"a":3,"2":4,"01":5,"-1":6,"4294967295":7,"4294967294":8}"#),
            r#"{"2":4,"10":2,"4294967294":8,"b":1,"a":3,"01":5,"-1":6,"4294967295":7}"#
        );
        assert_eq!(stored(r#"{"1":1,"0":0}"#), r#"{"0":0,"1":1}"#);
    }

    #[test]
    fn unicode_is_stored_raw() {
        assert_eq!(stored(r#"{"a":"\u00e9"}"#), "{\"a\":\"é\"}");
        assert_eq!(stored(r#"{"\u20ac":"\ud83d\ude00"}"#), "{\"€\":\"😀\"}");
        assert_eq!(stored(r#"{"a":"\/"}"#), r#"{"a":"/"}"#);
    }

    #[test]
    fn control_characters_are_escaped_as_js_does() {
        assert_eq!(
            stored(r#"{"a":"\b\f\n\r\t\u0000\u001F\u007f\"\\"}"#),
            "{\"a\":\"\\b\\f\\n\\r\\t\\u0000\\u001f\u{7f}\\\"\\\\\"}"
        );
    }

    #[test]
    fn unicode_round_trip() {
        let sent = r#"{"name":"Jos\u00e9","emoji":"\ud83d\ude00","cjk":"\u4e2d\u6587","k\u00e9y":1}"#;
        let text = stored(sent);
        assert_eq!(text, "{\"name\":\"José\",\"emoji\":\"😀\",\"cjk\":\"中文\",\"kéy\":1}");
        assert_eq!(header(&text), sent);
        assert!(header(&text).is_ascii());
    }

    #[test]
    fn numbers_print_as_js() {
        let cases = [
            ("1", "1"),
            ("-1", "-1"),
            ("0", "0"),
            ("-0", "0"),
            ("-0.0", "0"),
            ("1.0", "1"),
            ("1.50", "1.5"),
            ("0.1", "0.1"),
            ("1e2", "100"),
            ("1E+2", "100"),
            ("1e21", "1e+21"),
            ("1e20", "100000000000000000000"),
            ("123e-20", "1.23e-18"),
            ("1e-6", "0.000001"),
            ("1e-7", "1e-7"),
            ("1.5e-7", "1.5e-7"),
            ("0.000001234", "0.000001234"),
            ("-123.456", "-123.456"),
            ("0.30000000000000004", "0.30000000000000004"),
            // The nearest double, printed shortest (serde_json's own parse is one ulp off).
            ("19920.015686572233", "19920.015686572235"),
            ("9007199254740993", "9007199254740992"),
            ("12345678901234567890", "12345678901234567000"),
            ("123456789012345678901234567890", "1.2345678901234568e+29"),
            ("999999999999999", "999999999999999"),
            ("5e-324", "5e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("2.2250738585072011e-308", "2.225073858507201e-308"),
        ];
        for (sent, js) in cases {
            assert_eq!(
                stored(&format!("{{\"n\":{sent},\"a\":[{sent}]}}")),
                format!("{{\"n\":{js},\"a\":[{js}]}}"),
                "{sent}"
            );
        }
    }

    #[test]
    fn numbers_follow_duplicate_keys_and_strings() {
        // Numbers inside strings are not literals; a replaced value's numbers are skipped.
        assert_eq!(
            stored(r#"{"a":1.0,"s":"2.0 -3e5","a":[4.0,{"x":5.0}],"b":6.0}"#),
            r#"{"a":[4,{"x":5}],"s":"2.0 -3e5","b":6}"#
        );
        assert_eq!(stored(r#"{"1.0":2.0,"\"3.0":4.0}"#), r#"{"1.0":2,"\"3.0":4}"#);
    }

    #[test]
    fn too_large_is_refused_before_parsing() {
        let value = HeaderValue::from_static("{\"a\":\"xxxxxxxx\"}");
        assert_eq!(parse_update(&value, 5), Err(UpdateError::TooLarge { len: 16, max: 5 }));
        assert!(matches!(parse_update(&value, 16), Ok(Update::Replace(_))));
        // Not JSON, but the size check comes first.
        let junk = HeaderValue::from_static("not json at all");
        assert!(matches!(parse_update(&junk, 3), Err(UpdateError::TooLarge { .. })));
    }

    #[test]
    fn non_objects_are_refused() {
        for (sent, found) in [
            ("[]", "array"),
            ("[1]", "array"),
            ("\"s\"", "string"),
            ("1", "number"),
            ("1.5", "number"),
            ("true", "boolean"),
        ] {
            assert_eq!(update(sent), Err(UpdateError::NotAnObject { found }), "{sent}");
        }
    }

    #[test]
    fn invalid_json_is_refused_without_echoing_it() {
        for sent in [
            "",
            " ",
            "{",
            "{\"a\":1",
            "{\"a\":1}}",
            "{a:1}",
            "{'a':1}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":NaN}",
            "{\"a\":undefined}",
            "{\"a\":1,}",
            "nul",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"secret-value\":1e400}",
        ] {
            let err = update(sent).unwrap_err();
            assert!(matches!(err, UpdateError::NotJson { .. }), "{sent}: {err:?}");
            if sent.len() > 3 {
                assert!(!err.to_string().contains(sent), "{err}");
            }
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let value = HeaderValue::from_bytes(b"{\"a\":\"\xe9\"}").unwrap();
        assert!(matches!(parse_update(&value, 100), Err(UpdateError::NotJson { .. })));
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = format!("{}1{}", "{\"a\":".repeat(2000), "}".repeat(2000));
        assert!(matches!(
            parse_update(&HeaderValue::from_str(&deep).unwrap(), usize::MAX),
            Err(UpdateError::NotJson { .. })
        ));
        let ok = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        let ok = format!("{{\"a\":{ok}}}");
        assert_eq!(stored(&ok), ok);
    }

    #[test]
    fn js_number_to_string_layouts() {
        assert_eq!(js_number_to_string(0.0), "0");
        assert_eq!(js_number_to_string(-0.0), "0");
        assert_eq!(js_number_to_string(123456789.0), "123456789");
        assert_eq!(js_number_to_string(1.5e300), "1.5e+300");
        assert_eq!(js_number_to_string(-1e-300), "-1e-300");
        assert_eq!(js_number_to_string(0.5), "0.5");
        assert_eq!(js_number_to_string(1e21), "1e+21");
        assert_eq!(js_number_to_string(999999999999999900000.0), "999999999999999900000");
        assert_eq!(js_number_to_string(1.2345e-6), "0.0000012345");
        assert_eq!(js_number_to_string(f64::MIN_POSITIVE), "2.2250738585072014e-308");
    }

    #[test]
    fn round_trips_preserve_values() {
        // Property: what parse_update stores, read back as a request header and sent again as
        // an update, stores the same text (a fixed point), and the header is always ASCII.
        let samples = [
            r#"{}"#,
            r#"{"a":{"b":{"c":[1,2,{"d":"é"}]}}}"#,
            r#"{"k":"\u0001\u001f\u007f\u0080\uffff\ud800\udc00\udbff\udfff"}"#,
            r#"{"n":[0.1,1e-7,1e21,123456789.123456789,-5e-324]}"#,
            r#"{"2":1,"1":2,"x":3,"1":4}"#,
            r#"{"quote":"\"","backslash":"\\","slash":"/"}"#,
        ];
        for sent in samples {
            let first = stored(sent);
            let header_value = header(&first);
            assert!(header_value.is_ascii(), "{sent}");
            assert_eq!(stored(&header_value), first, "{sent}");
            assert_eq!(header(&stored(&header_value)), header_value, "{sent}");
        }
    }

    #[test]
    fn array_index_recognition() {
        assert_eq!(array_index("0"), Some(0));
        assert_eq!(array_index("42"), Some(42));
        assert_eq!(array_index("4294967294"), Some(4294967294));
        for not in ["", "-0", "-1", "01", "1.0", "1e3", "4294967295", "99999999999", "a1", " 1"] {
            assert_eq!(array_index(not), None, "{not}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn normalized_eq_is_the_documented_comparison(name in "[a-zA-Z_-]{0,12}") {
                let target = HeaderName::from_static("x-session");
                let naive = name.to_ascii_lowercase().replace('_', "-") == "x-session";
                prop_assert_eq!(normalized_eq(&name, &target), naive);
            }

            #[test]
            fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                if let Ok(h) = to_request_header(&Bytes::copy_from_slice(&bytes)) {
                    prop_assert!(h.as_bytes().is_ascii());
                }
                if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                    let _ = parse_update(&value, 1024);
                }
            }

            #[test]
            fn string_maps_round_trip(
                map in proptest::collection::vec((any::<String>(), any::<String>()), 0..6),
                number in any::<i64>(),
            ) {
                let mut object = serde_json::Map::new();
                for (k, v) in map {
                    object.insert(k, Value::String(v));
                }
                object.insert("n".into(), Value::from(number));
                let original = Value::Object(object);
                // What an upstream sends: ASCII-only JSON (serde_json escapes controls only).
                let sent = to_request_header(&Bytes::from(original.to_string())).unwrap();
                let Ok(Update::Replace(text)) = parse_update(&sent, usize::MAX) else {
                    return Err(TestCaseError::fail("not stored"));
                };
                let back: Value = serde_json::from_str(&text).unwrap();
                // Same strings; the integer as JS keeps it (exact up to 2^53).
                for (k, v) in original.as_object().unwrap() {
                    if k == "n" {
                        let expected = number as f64;
                        prop_assert_eq!(back[k].as_f64(), Some(expected));
                    } else {
                        prop_assert_eq!(&back[k], v);
                    }
                }
                // Sending back what the upstream received stores the same text again.
                let again = to_request_header(&Bytes::copy_from_slice(text.as_bytes())).unwrap();
                prop_assert_eq!(parse_update(&again, usize::MAX), Ok(Update::Replace(text)));
            }
        }
    }

    /// Properties added with the reliability tests: JSON-shaped input of every kind, which
    /// random bytes almost never are.
    mod reliability_properties {
        use super::*;
        use proptest::prelude::*;

        /// Any JSON value, nested a few levels.
        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
                    .prop_map(Value::from),
                any::<String>().prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::vec((any::<String>(), inner), 0..6)
                        .prop_map(|entries| Value::Object(entries.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn every_json_value_is_stored_destroyed_or_refused(value in json(), max_bytes in 0usize..4096) {
                let text = value.to_string();
                // Non-ASCII goes as raw UTF-8 bytes; DEL, which JSON leaves unescaped, cannot be
                // in a header at all.
                let header = HeaderValue::from_bytes(text.as_bytes());
                prop_assume!(header.is_ok());
                let header = header.unwrap();
                let result = parse_update(&header, max_bytes);
                if text.len() > max_bytes {
                    prop_assert!(matches!(result, Err(UpdateError::TooLarge { .. })), "{:?}", result);
                    return Ok(());
                }
                match (&value, result) {
                    (Value::Null, Ok(Update::Destroy)) => {}
                    (Value::Object(_), Ok(Update::Replace(stored))) => {
                        // What is stored is JSON, an object, and stable: sending it back through
                        // the request header and as an update again stores the same text.
                        let back: Value = serde_json::from_str(&stored).unwrap();
                        prop_assert!(back.is_object());
                        let again = to_request_header(&Bytes::copy_from_slice(stored.as_bytes())).unwrap();
                        prop_assert!(again.as_bytes().is_ascii());
                        prop_assert_eq!(parse_update(&again, usize::MAX), Ok(Update::Replace(stored)));
                    }
                    (Value::Bool(_) | Value::Number(_) | Value::String(_) | Value::Array(_), Err(UpdateError::NotAnObject { .. })) => {}
                    (value, result) => prop_assert!(false, "{} gave {:?}", value, result),
                }
            }

            #[test]
            fn json_shaped_text_never_panics(
                text in "[\\{\\}\\[\\]\":,0-9a-z.eE+\\\\ -]{0,64}",
            ) {
                if let Ok(value) = HeaderValue::from_str(&text) {
                    match parse_update(&value, usize::MAX) {
                        Ok(Update::Replace(stored)) => {
                            prop_assert!(serde_json::from_str::<Value>(&stored).is_ok_and(|v| v.is_object()));
                        }
                        Ok(Update::Destroy) | Err(_) => {}
                    }
                }
                let header = to_request_header(&Bytes::copy_from_slice(text.as_bytes()));
                // The fast path (text used as it is) gives what the full rewrite gives.
                if let Ok(object) = object_text(text.as_bytes()) {
                    prop_assert_eq!(rewrite(object), header);
                }
            }

            #[test]
            fn stored_values_of_any_shape_become_ascii_headers(value in json()) {
                let text = value.to_string();
                if let Ok(object) = object_text(text.as_bytes()) {
                    prop_assert_eq!(rewrite(object), to_request_header(&Bytes::copy_from_slice(text.as_bytes())));
                }
                match to_request_header(&Bytes::copy_from_slice(text.as_bytes())) {
                    Ok(header) => {
                        prop_assert!(value.is_object());
                        prop_assert!(header.as_bytes().is_ascii());
                        let back: Value = serde_json::from_slice(header.as_bytes()).unwrap();
                        prop_assert!(back.is_object());
                    }
                    Err(_) => prop_assert!(!value.is_object()),
                }
            }
        }
    }
}
