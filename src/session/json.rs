//! Session values as JavaScript holds them: what `JSON.parse` builds and `JSON.stringify`
//! writes, so that every text the proxy stores is the text a Remix app sharing the store would
//! write for the same object. On that model, the edits of the README's "Concurrent requests":
//! a response's change against what its upstream was sent ([`Change`]), applied to the session
//! as it is now, and RFC 7386 merge patches ([`JsObject::merge_patch`]).
//!
//! What JavaScript does and this module does too:
//! - object keys keep their insertion order, except that array-index keys (`"0"`, `"42"`, ...)
//!   come first in ascending order; assigning an existing key keeps its position; a repeated
//!   key in a text keeps its first position and its last value;
//! - numbers are kept as JS prints the double they parse to (`1.0` → `1`, `1e21` → `1e+21`,
//!   `-0` → `0`, `12345678901234567890` → `12345678901234567000`), from the literal text with
//!   correct rounding;
//! - text is written compact, non-ASCII as raw UTF-8, control characters escaped as
//!   `JSON.stringify` does.
//!
//! Refused rather than written differently: strings with a lone surrogate escape, numbers that
//! overflow a double (`1e400`, which JS turns into `null`), nesting deeper than 128.

use std::cell::Cell;
use std::fmt;

use indexmap::IndexMap;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::config::{JsonPointer, RequiredValue, Requirement};

/// A JSON value as JavaScript holds it. Equality is JSON value equality: objects compare
/// without regard to key order, numbers by the double they denote.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Js {
    Null,
    Bool(bool),
    /// As JS prints it, which is one text per double: equal numbers have equal texts.
    Number(Box<str>),
    String(String),
    Array(Vec<Js>),
    Object(JsObject),
}

/// A JSON object with JavaScript's key order (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct JsObject(IndexMap<String, Js, KeyHasher>);

/// The keys' hasher: foldhash, seeded per process, rather than the standard SipHash. In
/// scenario 6 of `bench/profile.sh` (a conditional write on every request) SipHash took about
/// 3,000 of the 92,000 instructions per request. Collisions cannot be forced into more than
/// quadratic work in the number of keys, which `session.max_bytes` bounds.
type KeyHasher = foldhash::fast::RandomState;

/// Why a text is not JSON that JavaScript would read back the same. Never holds the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not valid JSON (near column {column})")]
pub(crate) struct NotJson {
    pub column: usize,
}

impl Js {
    /// `JSON.parse(text)`.
    pub(crate) fn parse(text: &str) -> Result<Js, NotJson> {
        // serde_json hands numbers to a visitor as already-rounded doubles (and, without its
        // `float_roundtrip` feature, not always correctly rounded), so each number is taken
        // from its literal in the text instead: the n-th number visited is the n-th literal.
        let literals = number_literals(text);
        let seen = Cell::new(0);
        let mut de = serde_json::Deserializer::from_str(text);
        let value = JsSeed { literals: &literals, seen: &seen }
            .deserialize(&mut de)
            .and_then(|value| de.end().map(|()| value))
            .map_err(|e| NotJson { column: e.column() })?;
        if seen.get() != literals.len() {
            // Unreachable for text serde_json accepted; refuse rather than keep wrong numbers.
            return Err(NotJson { column: 0 });
        }
        Ok(value)
    }

    /// The object in `text`, or `None` when it is not JSON or not an object.
    pub(crate) fn parse_object(text: &[u8]) -> Option<JsObject> {
        match Js::parse(std::str::from_utf8(text).ok()?) {
            Ok(Js::Object(object)) => Some(object),
            _ => None,
        }
    }

    /// One step of an RFC 6901 pointer: an object's key, or an array's item by its decimal
    /// index (no leading zeros).
    fn child(&self, token: &str) -> Option<&Js> {
        match self {
            Js::Object(object) => object.get(token),
            Js::Array(items) => {
                let canonical = token == "0" || !token.starts_with('0');
                items.get(token.parse::<usize>().ok().filter(|_| canonical)?)
            }
            _ => None,
        }
    }

    /// Whether this is the configured value: a string, number (compared as doubles) or boolean.
    fn equals(&self, want: &RequiredValue) -> bool {
        match (self, want) {
            (Js::String(s), RequiredValue::String(w)) => s == w,
            (Js::Number(n), RequiredValue::Number(w)) => n.parse::<f64>().is_ok_and(|x| x == *w),
            (Js::Bool(b), RequiredValue::Bool(w)) => b == w,
            _ => false,
        }
    }

    /// The text a scalar is indexed and looked up by: a string as it is, a number or boolean as
    /// JSON text; `None` for `null`, objects and arrays.
    pub(crate) fn index_text(&self) -> Option<String> {
        match self {
            Js::String(s) => Some(s.clone()),
            Js::Number(n) => Some(n.to_string()),
            Js::Bool(b) => Some(b.to_string()),
            Js::Null | Js::Array(_) | Js::Object(_) => None,
        }
    }

    /// What `typeof` would call it, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Js::Null => "null",
            Js::Bool(_) => "boolean",
            Js::Number(_) => "number",
            Js::String(_) => "string",
            Js::Array(_) => "array",
            Js::Object(_) => "object",
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            Js::Null => out.push_str("null"),
            Js::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Js::Number(n) => out.push_str(n),
            Js::String(s) => write_string(out, s),
            Js::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Js::Object(object) => object.write(out),
        }
    }
}

/// Appends `JSON.stringify(s)`: quotes and backslashes escaped, `\b \f \n \r \t`, other
/// control characters as lowercase `\u00xx`, everything else as it is (a Rust string has no
/// lone surrogates, the only other thing JavaScript escapes): serde_json's escaping, written
/// into `out` directly rather than through a string allocated per key and value.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, &byte) in s.as_bytes().iter().enumerate() {
        let escape = ESCAPE[usize::from(byte)];
        if escape == 0 {
            continue;
        }
        // Every escaped byte is ASCII, so `i` is a character boundary.
        out.push_str(&s[plain..i]);
        out.push('\\');
        if escape == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            out.push(char::from(escape));
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

/// For each byte, the letter after the backslash that escapes it (`u`: `\u00xx`), or 0.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

impl JsObject {
    pub(crate) fn new() -> JsObject {
        JsObject::default()
    }

    /// `object[key] = value`: an existing key keeps its position; a new one goes last, or
    /// among the leading array-index keys in ascending order.
    pub(crate) fn insert(&mut self, key: String, value: Js) {
        match array_index(&key) {
            // IndexMap's insert keeps an existing key where it is.
            None => {
                self.0.insert(key, value);
            }
            Some(_) if self.0.contains_key(&key) => {
                self.0.insert(key, value);
            }
            Some(n) => {
                let at =
                    self.0.keys().position(|k| array_index(k).is_none_or(|m| m > n)).unwrap_or(self.0.len());
                self.0.shift_insert(at, key, value);
            }
        }
    }

    /// `delete object[key]`: the other keys keep their order.
    pub(crate) fn remove(&mut self, key: &str) -> Option<Js> {
        self.0.shift_remove(key)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Js> {
        self.0.get(key)
    }

    /// The value at `pointer` in this object.
    pub(crate) fn at(&self, pointer: &JsonPointer) -> Option<&Js> {
        let (first, rest) = pointer.tokens().split_first()?;
        rest.iter().try_fold(self.get(first)?, |value, token| value.child(token))
    }

    /// `JSON.stringify(object)`.
    pub(crate) fn to_text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        out.push('{');
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_string(out, key);
            out.push(':');
            value.write(out);
        }
        out.push('}');
    }

    /// Applies an RFC 7386 merge patch: keys of the patch are set, objects merged key by key,
    /// `null` removes a key. Returns whether anything changed.
    pub(crate) fn merge_patch(&mut self, patch: &JsObject) -> bool {
        let mut changed = false;
        for (key, value) in &patch.0 {
            match value {
                Js::Null => changed |= self.remove(key).is_some(),
                Js::Object(inner) => match self.0.get_mut(key) {
                    Some(Js::Object(target)) => changed |= target.merge_patch(inner),
                    _ => {
                        let mut target = JsObject::new();
                        target.merge_patch(inner);
                        self.insert(key.clone(), Js::Object(target));
                        changed = true;
                    }
                },
                value => {
                    if self.0.get(key) != Some(value) {
                        self.insert(key.clone(), value.clone());
                        changed = true;
                    }
                }
            }
        }
        changed
    }
}

/// What a response changed in the session, against what its upstream was sent: the keys added,
/// changed (to any value, `null` included) or removed, recursing into objects both sides have;
/// arrays and other values count whole.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Change(Vec<(String, Edit)>);

#[derive(Debug, Clone, PartialEq)]
enum Edit {
    Set(Js),
    Remove,
    /// An object both sides have, changed inside; `whole` is the new value, for a session in
    /// which that key no longer holds an object.
    Inside {
        change: Change,
        whole: JsObject,
    },
}

impl Change {
    /// `after` against `before`.
    pub(crate) fn between(before: &JsObject, after: &JsObject) -> Change {
        let mut edits = Vec::new();
        for (key, value) in &after.0 {
            match (before.0.get(key), value) {
                (Some(old), new) if old == new => {}
                (Some(Js::Object(old)), Js::Object(new)) => edits.push((
                    key.clone(),
                    Edit::Inside { change: Change::between(old, new), whole: new.clone() },
                )),
                (_, new) => edits.push((key.clone(), Edit::Set(new.clone()))),
            }
        }
        for key in before.0.keys() {
            if !after.0.contains_key(key) {
                edits.push((key.clone(), Edit::Remove));
            }
        }
        Change(edits)
    }

    /// Makes the same change to `target`, the session as it is now. Returns whether anything
    /// changed (the change may be there already).
    pub(crate) fn apply(&self, target: &mut JsObject) -> bool {
        let mut changed = false;
        for (key, edit) in &self.0 {
            match edit {
                Edit::Set(value) => {
                    if target.get(key) != Some(value) {
                        target.insert(key.clone(), value.clone());
                        changed = true;
                    }
                }
                Edit::Remove => changed |= target.remove(key).is_some(),
                Edit::Inside { change, whole } => match target.0.get_mut(key) {
                    Some(Js::Object(inner)) => changed |= change.apply(inner),
                    _ => {
                        target.insert(key.clone(), Js::Object(whole.clone()));
                        changed = true;
                    }
                },
            }
        }
        changed
    }
}

/// The value at `pointer` in valid JSON `text` (a session as read, which `load` has already
/// validated), as the slice of `text` that holds it; `None` when nothing is there (or the text
/// turns out not to be JSON). A scan by hand, without building a tree or deserializing: for
/// the bench session with a `require` and two identity headers (`bench/profile.sh 5` with
/// `conf/proxy-access.toml`), a tree took about 5.7k instructions per request and serde_json
/// walking `RawValue`s 8.3k. Keys are compared as written, unescaped only when they hold a
/// backslash.
pub(crate) fn lookup<'a>(text: &'a str, pointer: &JsonPointer) -> Option<&'a str> {
    let bytes = text.as_bytes();
    let (mut start, mut end) = (skip_ws(bytes, 0), text.trim_end().len());
    for token in pointer.tokens() {
        (start, end) = match bytes.get(start)? {
            b'{' => member(text, start, token)?,
            b'[' => {
                let canonical = token == "0" || !token.starts_with('0');
                item(bytes, start, token.parse::<usize>().ok().filter(|_| canonical)?)?
            }
            _ => return None,
        };
    }
    text.get(start..end)
}

/// The value of the last member named `key` of the object at `open` (JS keeps the last).
fn member(text: &str, open: usize, key: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut found = None;
    let mut i = skip_ws(bytes, open + 1);
    if bytes.get(i) == Some(&b'}') {
        return None;
    }
    loop {
        let key_end = string_end(bytes, i)?;
        let quoted = text.get(i..key_end)?;
        let matches = match quoted.get(1..quoted.len() - 1)? {
            raw if raw.contains('\\') => serde_json::from_str::<String>(quoted).ok()? == key,
            raw => raw == key,
        };
        i = skip_ws(bytes, key_end);
        (bytes.get(i) == Some(&b':')).then_some(())?;
        let value = skip_ws(bytes, i + 1);
        let value_end = value_end(bytes, value)?;
        if matches {
            found = Some((value, value_end));
        }
        i = skip_ws(bytes, value_end);
        match bytes.get(i)? {
            b',' => i = skip_ws(bytes, i + 1),
            b'}' => return found,
            _ => return None,
        }
    }
}

/// The item at `index` of the array at `open`.
fn item(bytes: &[u8], open: usize, index: usize) -> Option<(usize, usize)> {
    let mut i = skip_ws(bytes, open + 1);
    if bytes.get(i) == Some(&b']') {
        return None;
    }
    let mut at = 0;
    loop {
        let end = value_end(bytes, i)?;
        if at == index {
            return Some((i, end));
        }
        i = skip_ws(bytes, end);
        match bytes.get(i)? {
            b',' => i = skip_ws(bytes, i + 1),
            _ => return None,
        }
        at += 1;
    }
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end (one past the closing quote) of the string that opens at `i`.
fn string_end(bytes: &[u8], i: usize) -> Option<usize> {
    (bytes.get(i) == Some(&b'"')).then_some(())?;
    let mut j = i + 1;
    loop {
        match bytes.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
}

/// The end of the value that starts at `i`: a string, a container (strings inside skipped
/// whole), or a number or literal (up to the next delimiter).
fn value_end(bytes: &[u8], i: usize) -> Option<usize> {
    match bytes.get(i)? {
        b'"' => string_end(bytes, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match bytes.get(j)? {
                    b'"' => {
                        j = string_end(bytes, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while !matches!(bytes.get(j), None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')) {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// Whether the raw JSON value (at a route's requirement's pointer) meets it: a value other
/// than `null` and `false`; with a required value, one equal to it or an array containing it.
pub(crate) fn raw_meets(value: Option<&str>, requirement: &Requirement) -> bool {
    let Some(text) = value else { return false };
    if text == "null" || text == "false" {
        return false;
    }
    let Some(want) = &requirement.value else { return true };
    match Js::parse(text) {
        Ok(Js::Array(items)) => items.iter().any(|item| item.equals(want)),
        Ok(value) => value.equals(want),
        Err(_) => false,
    }
}

/// Builds a [`Js`] as `JSON.parse` builds a JS value, taking each number from its literal.
#[derive(Clone, Copy)]
struct JsSeed<'a> {
    literals: &'a [&'a str],
    /// How many numbers have been visited.
    seen: &'a Cell<usize>,
}

impl JsSeed<'_> {
    fn number<E: serde::de::Error>(self) -> Result<Js, E> {
        let n = self.seen.get();
        self.seen.set(n + 1);
        let literal = self.literals.get(n).ok_or_else(|| E::custom("number out of place"))?;
        match js_number_literal(literal) {
            Some(text) => Ok(Js::Number(text.into())),
            // JS turns it into `null`, which would change the value: refused.
            None => Err(E::custom("number out of range")),
        }
    }
}

impl<'de> DeserializeSeed<'de> for JsSeed<'_> {
    type Value = Js;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Js, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsSeed<'_> {
    type Value = Js;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Js, E> {
        Ok(Js::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Js, E> {
        self.number()
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Js, E> {
        self.number()
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Js, E> {
        self.number()
    }

    fn visit_str<E>(self, v: &str) -> Result<Js, E> {
        Ok(Js::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Js, E> {
        Ok(Js::String(v))
    }

    fn visit_unit<E>(self) -> Result<Js, E> {
        Ok(Js::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Js, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Js::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Js, A::Error> {
        let mut object = JsObject::new();
        while let Some(key) = access.next_key::<String>()? {
            let value = access.next_value_seed(self)?;
            object.insert(key, value);
        }
        Ok(Js::Object(object))
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

/// Decimal literals with at most this many digits are integers a double holds exactly, which
/// JS prints unchanged: no need to go through `f64`.
const EXACT_INTEGER_DIGITS: usize = 15;

/// How JS prints the number a JSON literal parses to (`JSON.stringify(JSON.parse(literal))`),
/// or `None` for one that overflows a double (JS would write `null`).
fn js_number_literal(literal: &str) -> Option<std::borrow::Cow<'_, str>> {
    let digits = literal.strip_prefix('-').unwrap_or(literal);
    if digits.len() <= EXACT_INTEGER_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Some(if digits == "0" { "0".into() } else { literal.into() });
    }
    match literal.parse::<f64>() {
        Ok(x) if x.is_finite() => Some(js_number_to_string(x).into()),
        _ => None,
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

    fn object(text: &str) -> JsObject {
        match Js::parse(text) {
            Ok(Js::Object(o)) => o,
            other => panic!("{text}: {other:?}"),
        }
    }

    fn text(o: &JsObject) -> String {
        o.to_text()
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
    fn pointers_find_values_and_scalars_have_index_texts() {
        let o = object(r#"{"user":{"id":42,"email":"a@b","roles":["x","y"],"a/b":{"~":true}},"n":null}"#);
        let at = |p: &str| o.at(&JsonPointer::parse(p).unwrap()).cloned();
        assert_eq!(at("/user/id").and_then(|v| v.index_text()), Some("42".to_owned()));
        assert_eq!(at("/user/email").and_then(|v| v.index_text()), Some("a@b".to_owned()));
        assert_eq!(at("/user/roles/1").and_then(|v| v.index_text()), Some("y".to_owned()));
        assert_eq!(at("/user/a~1b/~0").and_then(|v| v.index_text()), Some("true".to_owned()));
        assert_eq!(at("/user/roles/01"), None);
        assert_eq!(at("/user/roles/2"), None);
        assert_eq!(at("/user/missing"), None);
        assert_eq!(at("/n").and_then(|v| v.index_text()), None);
        assert_eq!(at("/user").and_then(|v| v.index_text()), None);
        assert_eq!(at("/user/id/deeper"), None);
    }

    #[test]
    fn requirements_need_a_value_or_the_value() {
        struct Session(&'static str);
        impl Session {
            fn meets(&self, requirement: &Requirement) -> bool {
                raw_meets(lookup(self.0, &requirement.pointer), requirement)
            }
        }
        let o = Session(
            r#"{"user":{"id":7,"off":false,"none":null},"roles":["admin","dev"],"role":"dev","n":2.0,"ok":true}"#,
        );
        let req = |pointer: &str, value: Option<RequiredValue>| Requirement {
            pointer: JsonPointer::parse(pointer).unwrap(),
            value,
        };
        assert!(o.meets(&req("/user", None)));
        assert!(o.meets(&req("/user/id", None)));
        for missing in ["/user/off", "/user/none", "/nope", "/user/id/x"] {
            assert!(!o.meets(&req(missing, None)), "{missing}");
        }
        let string = |s: &str| Some(RequiredValue::String(s.to_owned()));
        assert!(o.meets(&req("/roles", string("admin"))));
        assert!(!o.meets(&req("/roles", string("root"))));
        assert!(o.meets(&req("/role", string("dev"))));
        assert!(!o.meets(&req("/role", string("admin"))));
        assert!(o.meets(&req("/n", Some(RequiredValue::Number(2.0)))));
        assert!(o.meets(&req("/user/id", Some(RequiredValue::Number(7.0)))));
        assert!(!o.meets(&req("/user/id", string("7"))));
        assert!(o.meets(&req("/ok", Some(RequiredValue::Bool(true)))));
        assert!(!o.meets(&req("/user/off", Some(RequiredValue::Bool(false)))));
    }

    #[test]
    fn lookup_finds_the_same_values_as_the_tree() {
        let text = r#"{"user":{"id":42,"name":"Zo\u00eb","roles":["x","y"],"a/b":{"~":true},"id":7},"n":null,"e":{}}"#;
        let tree = object(text);
        for pointer in [
            "/user/id",
            "/user/name",
            "/user/roles",
            "/user/roles/1",
            "/user/a~1b/~0",
            "/n",
            "/e",
            "/user/roles/01",
            "/user/roles/2",
            "/missing",
            "/user/id/x",
            "/e/x",
        ] {
            let pointer = JsonPointer::parse(pointer).unwrap();
            let raw = lookup(text, &pointer).map(|v| Js::parse(v).unwrap());
            assert_eq!(raw.as_ref(), tree.at(&pointer), "{}", pointer.as_str());
        }
        assert!(lookup("not json", &JsonPointer::parse("/a").unwrap()).is_none());
        // The last of a repeated key counts, as in `JSON.parse`.
        let id = lookup(text, &JsonPointer::parse("/user/id").unwrap()).unwrap();
        assert_eq!(id, "7");
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

    #[test]
    fn equality_is_json_value_equality() {
        assert_eq!(
            object(r#"{"a":1,"b":{"x":[1,2],"y":null}}"#),
            object(r#"{"b":{"y":null,"x":[1,2]},"a":1.0}"#)
        );
        assert_ne!(object(r#"{"a":[1,2]}"#), object(r#"{"a":[2,1]}"#));
        assert_ne!(object(r#"{"a":1}"#), object(r#"{"a":"1"}"#));
        assert_ne!(object(r#"{"a":null}"#), object("{}"));
    }

    #[test]
    fn insert_and_remove_keep_js_key_order() {
        let mut o = object(r#"{"b":1,"a":2}"#);
        o.insert("b".into(), Js::Bool(true));
        o.insert("c".into(), Js::Null);
        o.insert("7".into(), Js::Null);
        o.insert("2".into(), Js::Null);
        o.insert("10".into(), Js::Null);
        assert_eq!(text(&o), r#"{"2":null,"7":null,"10":null,"b":true,"a":2,"c":null}"#);
        assert!(o.remove("b").is_some());
        assert!(o.remove("nope").is_none());
        assert_eq!(text(&o), r#"{"2":null,"7":null,"10":null,"a":2,"c":null}"#);
    }

    #[test]
    fn change_is_what_was_added_changed_or_removed() {
        let sent = object(r#"{"keep":1,"gone":2,"same":{"x":1},"deep":{"x":1,"y":2},"arr":[1]}"#);
        let update =
            object(r#"{"keep":1,"same":{"x":1},"deep":{"x":1,"y":3,"z":null},"arr":[1,2],"new":null}"#);
        let change = Change::between(&sent, &update);
        assert_ne!(change, Change::default());
        // Applied to what was sent, it gives the update (as a value).
        let mut again = sent.clone();
        assert!(change.apply(&mut again));
        assert_eq!(again, update);
        // Applied to a session another request changed meanwhile, both changes survive.
        let mut current =
            object(r#"{"keep":1,"gone":2,"same":{"x":1},"deep":{"x":1,"y":2,"w":9},"arr":[1],"other":true}"#);
        assert!(change.apply(&mut current));
        assert_eq!(
            text(&current),
            r#"{"keep":1,"same":{"x":1},"deep":{"x":1,"y":3,"w":9,"z":null},"arr":[1,2],"other":true,"new":null}"#
        );
        // Applied twice, the second time changes nothing.
        assert!(!change.apply(&mut current));
        // Nothing changed: an empty change.
        assert_eq!(Change::between(&sent, &sent.clone()), Change::default());
    }

    #[test]
    fn a_change_inside_an_object_that_is_gone_sets_the_whole_object() {
        let change = Change::between(&object(r#"{"o":{"a":1}}"#), &object(r#"{"o":{"a":1,"b":2}}"#));
        let mut current = object(r#"{"o":"replaced"}"#);
        assert!(change.apply(&mut current));
        assert_eq!(text(&current), r#"{"o":{"a":1,"b":2}}"#);
        let mut current = object("{}");
        assert!(change.apply(&mut current));
        assert_eq!(text(&current), r#"{"o":{"a":1,"b":2}}"#);
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The examples of RFC 7386, section 3 (objects only: a session is an object).
        let cases = [
            (r#"{"a":"b"}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"b":"c"}"#, r#"{"a":"b","b":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"a":null}"#, r#"{}"#),
            (r#"{"a":"b","b":"c"}"#, r#"{"a":null}"#, r#"{"b":"c"}"#),
            (r#"{"a":["b"]}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"c"}"#, r#"{"a":["b"]}"#, r#"{"a":["b"]}"#),
            (r#"{"a":{"b":"c"}}"#, r#"{"a":{"b":"d","c":null}}"#, r#"{"a":{"b":"d"}}"#),
            (r#"{"a":[{"b":"c"}]}"#, r#"{"a":[1]}"#, r#"{"a":[1]}"#),
            (r#"{"e":null}"#, r#"{"a":1}"#, r#"{"e":null,"a":1}"#),
            (r#"{}"#, r#"{"a":{"bb":{"ccc":null}}}"#, r#"{"a":{"bb":{}}}"#),
        ];
        for (target, patch, result) in cases {
            let mut o = object(target);
            let changed = o.merge_patch(&object(patch));
            assert_eq!(text(&o), result, "{target} + {patch}");
            assert_eq!(changed, target != result, "{target} + {patch}");
        }
    }

    #[test]
    fn parse_refuses_what_js_would_write_differently() {
        for bad in [r#"{"a":1e400}"#, r#"{"a":"\ud800"}"#, "{", "{\"a\":1} x", ""] {
            assert!(Js::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Js::parse_object(b"[1]"), None);
        assert_eq!(Js::parse_object(b"\xff"), None);
        assert_eq!(Js::parse("[]").map(|v| v.kind()), Ok("array"));
    }

    mod properties {
        use proptest::prelude::*;
        use serde_json::Value;

        use super::*;

        /// Any JSON value, nested a few levels, with keys that need escaping now and then.
        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i32>().prop_map(Value::from),
                "[a-z\"\\\\/~ é]{0,6}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 32, 5, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::vec(("[a-z\"\\\\/~0-9]{0,4}", inner), 0..5)
                        .prop_map(|entries| Value::Object(entries.into_iter().collect())),
                ]
            })
        }

        /// Every pointer to a value inside `value`, and a missing one below each object.
        fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
            let escape = |k: &str| k.replace('~', "~0").replace('/', "~1");
            match value {
                Value::Object(map) => {
                    out.push(format!("{at}/missing~0key"));
                    for (k, v) in map {
                        let p = format!("{at}/{}", escape(k));
                        out.push(p.clone());
                        pointers(v, p, out);
                    }
                }
                Value::Array(items) => {
                    out.push(format!("{at}/{}", items.len()));
                    for (i, v) in items.iter().enumerate() {
                        let p = format!("{at}/{i}");
                        out.push(p.clone());
                        pointers(v, p, out);
                    }
                }
                _ => {}
            }
        }

        proptest! {
            /// The hand-written escaping is serde_json's, which is JavaScript's.
            #[test]
            fn strings_are_written_as_serde_json_writes_them(s in "\\PC*|[\\x00-\\x1f\"\\\\a-z\u{e9}\u{2028}\u{1f600}]{0,12}") {
                let mut out = String::new();
                write_string(&mut out, &s);
                prop_assert_eq!(out, serde_json::to_string(&s).unwrap());
            }

            #[test]
            fn lookup_agrees_with_the_tree(entries in prop::collection::vec(("[a-z~/]{0,3}", json()), 0..5), pretty in any::<bool>()) {
                let value = Value::Object(entries.into_iter().collect());
                let text = if pretty { serde_json::to_string_pretty(&value).unwrap() } else { value.to_string() };
                let Ok(Js::Object(tree)) = Js::parse(&text) else { return Err(TestCaseError::fail("not an object")) };
                let mut all = Vec::new();
                pointers(&value, String::new(), &mut all);
                for pointer in all {
                    let pointer = JsonPointer::parse(&pointer).unwrap();
                    let raw = lookup(&text, &pointer).map(|v| Js::parse(v).unwrap());
                    prop_assert_eq!(raw.as_ref(), tree.at(&pointer), "{} in {}", pointer.as_str(), text);
                }
            }
        }
    }
}
