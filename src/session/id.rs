//! Session ids: issuing fresh ones and deciding which ids from signed cookies are acceptable.
//!
//! The id is the only thing a cookie carries; the session itself lives in the store under
//! `key_prefix + id`, so an id must be unguessable (CSPRNG) and safe to embed in a store key.

/// Random bytes in a fresh id: 128 bits, far beyond guessing range.
pub const ID_BYTES: usize = 16;

/// Longest id accepted from a validly signed cookie. Remix apps issue 16-character ids and we
/// issue 32; the bound only keeps store keys and log-free work small.
pub const MAX_ID_BYTES: usize = 256;

/// A fresh session id: [`ID_BYTES`] bytes from `rand::rng()` (ChaCha12 seeded from the OS, a
/// CSPRNG) as lowercase hex.
pub fn new_id() -> String {
    let mut bytes = [0u8; ID_BYTES];
    rand::fill(&mut bytes[..]);
    const_hex::encode(bytes)
}

/// Whether an id taken from a validly signed cookie may be used as a store key: 1 to
/// [`MAX_ID_BYTES`] bytes, with no control characters and no whitespace (Unicode
/// `White_Space`, which covers every kind of space). Any other id is accepted, so sessions
/// issued by Remix apps (16 hex characters) keep working.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_BYTES && !id.chars().any(|c| c.is_control() || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_id_is_32_lowercase_hex() {
        let id = new_id();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert!(is_valid_id(&id));
    }

    #[test]
    fn new_ids_differ() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn remix_ids_are_valid() {
        assert!(is_valid_id("0123456789abcdef"));
        assert!(is_valid_id("a"));
        assert!(is_valid_id("id-with.punct_uation:and/slash"));
        assert!(is_valid_id("ünïcödé"));
        assert!(is_valid_id(&"x".repeat(MAX_ID_BYTES)));
    }

    #[test]
    fn bad_ids_are_rejected() {
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"x".repeat(MAX_ID_BYTES + 1)));
        // 86 three-byte chars: 258 bytes although only 86 chars.
        assert!(!is_valid_id(&"€".repeat(86)));
        for bad in [
            "a b",
            " a",
            "a\t",
            "a\nb",
            "a\rb",
            "a\0b",
            "a\x7fb",
            "a\u{85}b",
            "a\u{a0}b",
            "a\u{2028}b",
            "a\u{3000}b",
        ] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }
}
