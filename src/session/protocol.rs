//! The pure parts of the header protocol between the proxy and the upstream (the README, "The
//! header protocol"): stripping forged or leaked protocol headers, turning a stored session
//! into the ASCII-only `x-session` request header, and reading the upstream's
//! `x-session-update` into the exact text Remix would store.
//!
//! Everything here is synchronous, allocation-light and free of I/O so the proxy can call it on
//! every request.

use std::borrow::Borrow;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::value::RawValue;

use super::json::{Js, JsObject};

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
pub fn strip_protocol_headers<N: Borrow<HeaderName>>(headers: &mut HeaderMap, names: &[N]) -> usize {
    // `Vec::new` does not allocate until the first push.
    let mut found: Vec<HeaderName> = Vec::new();
    for key in headers.keys() {
        if let Some(target) =
            names.iter().map(Borrow::borrow).find(|target| normalized_eq(key.as_str(), target))
        {
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

/// What an identity header carries of a session value (the README's "Access control and identity
/// headers"): a string as it is, with every byte outside printable ASCII and every `%`
/// percent-encoded (RFC 3986); a number or boolean as JSON text; an object or array as compact
/// ASCII JSON; nothing for `null`.
pub fn identity_value(text: &str) -> Option<HeaderValue> {
    /// Bytes outside printable ASCII (`utf8_percent_encode` encodes every non-ASCII byte) and `%`.
    const NOT_PRINTABLE: &AsciiSet = &CONTROLS.add(b'%');
    match text.as_bytes().first()? {
        b'n' => None,
        b'"' => {
            let string: std::borrow::Cow<'_, str> = serde_json::from_str(text).ok()?;
            HeaderValue::try_from(utf8_percent_encode(&string, NOT_PRINTABLE).to_string()).ok()
        }
        // Numbers and booleans as their JSON text; objects and arrays as compact ASCII JSON
        // (the stored text is compact already, unless another app wrote it with spaces).
        _ if needs_rewrite(text.as_bytes()) => rewrite(text).ok(),
        _ => HeaderValue::from_str(text).ok(),
    }
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
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Store this object; `text` is `JSON.stringify(JSON.parse(value))` of the object sent.
    Replace { text: String, object: JsObject },
    /// `null`: delete the session and clear the cookie.
    Destroy,
}

/// Why an `x-session-update` or `x-session-patch` value was refused (the proxy answers 502 and
/// writes nothing). Messages never contain the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// More than one such header: which one the upstream meant is ambiguous.
    #[error("the upstream sent the header more than once")]
    Duplicate,
    #[error("the value is {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("the value is not valid JSON (near byte {column})")]
    NotJson { column: usize },
    #[error("the value is a JSON {found}, not an object")]
    NotAnObject { found: &'static str },
}

/// Reads the upstream's `x-session-update` value.
///
/// `max_bytes` bounds the value as received, before any parsing. `null` (whitespace around it
/// allowed) destroys the session; a JSON object becomes the exact text JavaScript's
/// `JSON.stringify(JSON.parse(value))` produces (see [`json`](super::json)), so a Remix app
/// sharing the store reads and writes the same bytes. An empty array counts as `{}`: it is
/// what PHP's `json_encode` writes for an empty session.
pub fn parse_update(value: &HeaderValue, max_bytes: usize) -> Result<Update, UpdateError> {
    match parse_value(value, max_bytes)? {
        Js::Null => Ok(Update::Destroy),
        Js::Object(object) => Ok(Update::Replace { text: object.to_text(), object }),
        Js::Array(items) if items.is_empty() => {
            Ok(Update::Replace { text: EMPTY_SESSION.to_owned(), object: JsObject::new() })
        }
        other => Err(UpdateError::NotAnObject { found: other.kind() }),
    }
}

/// Reads the upstream's `x-session-patch` value: a JSON object (an RFC 7386 merge patch),
/// within `max_bytes`. An empty array counts as `{}`, as in [`parse_update`].
pub fn parse_patch(value: &HeaderValue, max_bytes: usize) -> Result<JsObject, UpdateError> {
    match parse_value(value, max_bytes)? {
        Js::Object(object) => Ok(object),
        Js::Array(items) if items.is_empty() => Ok(JsObject::new()),
        other => Err(UpdateError::NotAnObject { found: other.kind() }),
    }
}

fn parse_value(value: &HeaderValue, max_bytes: usize) -> Result<Js, UpdateError> {
    let bytes = value.as_bytes();
    if bytes.len() > max_bytes {
        return Err(UpdateError::TooLarge { len: bytes.len(), max: max_bytes });
    }
    let text =
        std::str::from_utf8(bytes).map_err(|e| UpdateError::NotJson { column: e.valid_up_to() + 1 })?;
    Js::parse(text).map_err(|e| UpdateError::NotJson { column: e.column })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn name(s: &'static str) -> HeaderName {
        HeaderName::from_static(s)
    }

    fn update(s: &str) -> Result<Update, UpdateError> {
        parse_update(&HeaderValue::from_str(s).unwrap(), 16384)
    }

    fn stored(s: &str) -> String {
        match update(s) {
            Ok(Update::Replace { text, .. }) => text,
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
        assert_eq!(strip_protocol_headers::<HeaderName>(&mut headers, &[]), 0);
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
        assert!(matches!(parse_update(&value, 16), Ok(Update::Replace { .. })));
        // Not JSON, but the size check comes first.
        let junk = HeaderValue::from_static("not json at all");
        assert!(matches!(parse_update(&junk, 3), Err(UpdateError::TooLarge { .. })));
    }

    #[test]
    fn an_empty_array_counts_as_an_empty_object() {
        // PHP's `json_encode` of an empty session.
        assert_eq!(stored("[]"), "{}");
        assert_eq!(stored(" [ ] "), "{}");
        assert_eq!(parse_patch(&HeaderValue::from_static("[]"), 100), Ok(JsObject::new()));
    }

    #[test]
    fn patches_are_objects() {
        let patch = parse_patch(&HeaderValue::from_static(r#"{"a":null,"b":{"c":1.0}}"#), 100).unwrap();
        assert_eq!(patch.to_text(), r#"{"a":null,"b":{"c":1}}"#);
        for (sent, found) in
            [("null", "null"), ("[1]", "array"), ("\"s\"", "string"), ("1", "number"), ("true", "boolean")]
        {
            assert_eq!(
                parse_patch(&HeaderValue::from_str(sent).unwrap(), 100),
                Err(UpdateError::NotAnObject { found }),
                "{sent}"
            );
        }
        assert_eq!(
            parse_patch(&HeaderValue::from_static(r#"{"a":1}"#), 3),
            Err(UpdateError::TooLarge { len: 7, max: 3 })
        );
        assert!(matches!(parse_patch(&HeaderValue::from_static("{"), 100), Err(UpdateError::NotJson { .. })));
    }

    #[test]
    fn non_objects_are_refused() {
        for (sent, found) in
            [("[1]", "array"), ("\"s\"", "string"), ("1", "number"), ("1.5", "number"), ("true", "boolean")]
        {
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
                let Ok(Update::Replace { text, .. }) = parse_update(&sent, usize::MAX) else {
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
                let Ok(Update::Replace { text: again, .. }) = parse_update(&again, usize::MAX) else {
                    return Err(TestCaseError::fail("not stored again"));
                };
                prop_assert_eq!(again, text);
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
                    (Value::Array(items), Ok(Update::Replace { text, .. })) if items.is_empty() => {
                        prop_assert_eq!(text, "{}");
                    }
                    (Value::Object(_), Ok(Update::Replace { text: stored, .. })) => {
                        // What is stored is JSON, an object, and stable: sending it back through
                        // the request header and as an update again stores the same text.
                        let back: Value = serde_json::from_str(&stored).unwrap();
                        prop_assert!(back.is_object());
                        let again = to_request_header(&Bytes::copy_from_slice(stored.as_bytes())).unwrap();
                        prop_assert!(again.as_bytes().is_ascii());
                        let Ok(Update::Replace { text: again, .. }) = parse_update(&again, usize::MAX) else {
                            return Err(TestCaseError::fail("not stored again"));
                        };
                        prop_assert_eq!(again, stored);
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
                        Ok(Update::Replace { text: stored, .. }) => {
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
