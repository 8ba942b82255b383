//! Why a store call failed, by kind.

/// Why a store call failed. The proxy answers 503 for all of them at run time; `Config` only
/// comes from [`Store::connect`](super::Store::connect).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The call did not finish within `StoreConfig::timeout` while connected (a stalled or
    /// overloaded server).
    #[error("store call timed out")]
    Timeout,
    /// The store cannot be reached: not connected, connection lost, TLS or authentication
    /// failure.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The server answered with an error (for example wrong type).
    #[error("store command failed: {0}")]
    Command(String),
    /// Redis refused a write for want of memory (`maxmemory` reached under `noeviction`):
    /// writes fail until memory frees, reads keep working.
    #[error("Redis is out of memory and refuses writes until memory frees (maxmemory with a noeviction policy): {0}")]
    OutOfMemory(String),
    /// Redis's ACL forbids a command the proxy needs (`NOPERM`): it keeps failing until the
    /// proxy's Redis user is allowed it.
    #[error("Redis's ACL forbids a command the proxy needs; allow the proxy's user GET, GETEX, SET, DEL, EVALSHA, EVAL, SADD, SREM, SMEMBERS, PING and (with store.min_replicas) WAIT: {0}")]
    Denied(String),
    /// The store configuration cannot work (bad URL, unreadable `ca_file`, a `redis://` URL
    /// at a Redis Cluster node).
    #[error("store configuration: {0}")]
    Config(String),
    /// The write was done but fewer than `store.min_replicas` replicas acknowledged it within
    /// the timeout: it may not survive the loss of its master, so it is not acknowledged.
    #[error("store write reached {acked} of store.min_replicas = {wanted} replicas in time")]
    Replicas { acked: u32, wanted: u32 },
}

impl StoreError {
    /// Every [`kind`](StoreError::kind), for metrics that expose each at 0 from the start.
    pub const KINDS: [&'static str; 7] =
        ["timeout", "unavailable", "command", "out_of_memory", "denied", "config", "replicas"];

    /// A short, fixed label for metrics and logs (bounded cardinality).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout => "timeout",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Command(_) => "command",
            StoreError::OutOfMemory(_) => "out_of_memory",
            StoreError::Denied(_) => "denied",
            StoreError::Config(_) => "config",
            StoreError::Replicas { .. } => "replicas",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_are_fixed_labels() {
        assert_eq!(StoreError::Timeout.kind(), "timeout");
        assert_eq!(StoreError::Unavailable("x".into()).kind(), "unavailable");
        assert_eq!(StoreError::Command("x".into()).kind(), "command");
        assert_eq!(StoreError::OutOfMemory("x".into()).kind(), "out_of_memory");
        assert_eq!(StoreError::Denied("x".into()).kind(), "denied");
        assert_eq!(StoreError::Config("x".into()).kind(), "config");
        let errors = [
            StoreError::Timeout,
            StoreError::Unavailable("x".into()),
            StoreError::Command("x".into()),
            StoreError::OutOfMemory("x".into()),
            StoreError::Denied("x".into()),
            StoreError::Config("x".into()),
            StoreError::Replicas { acked: 0, wanted: 1 },
        ];
        assert_eq!(errors.map(|e| e.kind()), StoreError::KINDS);
    }
}
