//! The Redis `store.url` as fred reads it, shared by the config (to check it at load and in
//! `--check`) and the Redis store (to connect). A leaf: it uses nothing of the proxy.

use std::borrow::Cow;

use fred::types::config::Config as FredConfig;

/// Checks a Redis `store.url` the way the Redis store reads it (fred's `Config::from_url`),
/// for `--check` and config loading. The reason never quotes the URL.
pub fn check_url(url: &str) -> Result<(), String> {
    let (plain_url, _tls) = split_tls_scheme(url);
    FredConfig::from_url(&plain_url).map(|_| ()).map_err(|err| format!("is not valid: {}", err.details()))
}

/// `rediss…://` becomes `redis…://` plus a TLS flag, so fred's URL parser does not build its own
/// TLS setup: it would load the system roots itself, fail on any unreadable one, and use the
/// process-wide rustls provider (which panics when none or several are available). Ours comes
/// from the Redis store's own rustls configuration.
pub(crate) fn split_tls_scheme(url: &str) -> (Cow<'_, str>, bool) {
    match url.split_once("://") {
        Some((scheme, rest)) if scheme.to_ascii_lowercase().starts_with("rediss") => {
            // "rediss", "rediss-cluster", "rediss-sentinel" -> drop the second 's'.
            let plain = format!("redis{}://{rest}", &scheme["rediss".len()..]);
            (Cow::Owned(plain), true)
        }
        _ => (Cow::Borrowed(url), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_schemes_are_split() {
        assert_eq!(
            split_tls_scheme("rediss://default:t@h:6379"),
            (Cow::Borrowed("redis://default:t@h:6379"), true)
        );
        assert_eq!(split_tls_scheme("rediss-cluster://h:1"), (Cow::Borrowed("redis-cluster://h:1"), true));
        assert_eq!(split_tls_scheme("redis://h:1"), (Cow::Borrowed("redis://h:1"), false));
        assert_eq!(split_tls_scheme("nonsense"), (Cow::Borrowed("nonsense"), false));
    }
}
