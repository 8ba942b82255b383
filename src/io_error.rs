//! I/O errors in plain words, for messages people read (`--check`, start-up and reload log
//! lines): the standard library's text ends in `(os error 98)`, and its `Debug` form is
//! `Os { code: 98, kind: AddrInUse, .. }`. Each message says what happened and, where a person
//! can do something about it, what.

use std::io::{self, ErrorKind};

/// Why reading a file failed, with what to do about the common cases.
pub fn reading(e: &io::Error) -> String {
    match e.kind() {
        ErrorKind::NotFound => "there is no such file".to_owned(),
        ErrorKind::PermissionDenied => "permission denied (the proxy's user cannot read it)".to_owned(),
        ErrorKind::IsADirectory => "it is a directory, not a file".to_owned(),
        ErrorKind::InvalidData => "it is not UTF-8 text".to_owned(),
        _ => plain(e),
    }
}

/// Why binding a listening socket failed, with what to do about the common cases.
pub fn binding(e: &io::Error) -> String {
    match e.kind() {
        ErrorKind::AddrInUse => {
            "another process is already listening there; stop it or choose another port".to_owned()
        }
        ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need root or the CAP_NET_BIND_SERVICE capability)".to_owned()
        }
        ErrorKind::AddrNotAvailable => {
            "this machine has no such address (use 127.0.0.1, 0.0.0.0 or one of its own addresses)".to_owned()
        }
        _ => plain(e),
    }
}

/// The error's own text without the ` (os error N)` the standard library appends.
pub fn plain(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(at) => lowercase_first(&text[..at]),
        None => text,
    }
}

/// The OS's message starts a sentence ("Address already in use"); ours puts it after a colon.
fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_os_error_codes_or_debug_text() {
        let in_use = io::Error::from_raw_os_error(98);
        let refused = io::Error::from_raw_os_error(111);
        for text in [binding(&in_use), plain(&refused), reading(&io::Error::from_raw_os_error(2))] {
            assert!(!text.contains("os error") && !text.contains("Os {") && !text.contains("code"), "{text}");
        }
        assert!(binding(&in_use).contains("already listening"), "{}", binding(&in_use));
        assert_eq!(plain(&refused), "connection refused");
        assert_eq!(plain(&io::Error::other("custom text")), "custom text");
    }
}
