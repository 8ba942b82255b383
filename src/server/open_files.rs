//! The open files the server needs. At start the soft `RLIMIT_NOFILE` is raised to the hard
//! limit (the default soft limit, often 1,024, would stop a busy proxy long before its
//! connection cap), and the cap is checked against it: each client connection may hold two
//! sockets (its own and one to its upstream), and the store's connections, the admin
//! connections and the process's own files come on top.
//!
//! A `server.max_connections` set in the file that the limit cannot hold stops the start with
//! a message that says what to raise; the default is lowered to what the limit holds, with a
//! warning, so that the proxy still starts where the hard limit is low.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::config::DEFAULT_MAX_CONNECTIONS;

/// Files the process keeps open besides connections and workers: stdio, the listeners, a
/// certificate or config file being read on reload, Redis connections being replaced.
pub(super) const PROCESS_FILES: u64 = 64;
/// Per worker thread: its runtime's epoll and wake-up descriptors, with room to spare.
pub(super) const FILES_PER_WORKER: u64 = 4;

/// The connection cap the server runs with.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Cap {
    /// As the file sets it, or the default, and the limit holds it.
    Fits(usize),
    /// The default, lowered to what the limit holds.
    Lowered { cap: usize, limit: u64 },
}

impl Cap {
    pub(super) fn get(&self) -> usize {
        match *self {
            Cap::Fits(cap) | Cap::Lowered { cap, .. } => cap,
        }
    }
}

/// The open-file limit cannot hold the connection cap.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "server.max_connections = {max_connections} needs up to {needed} open files (a client and an \
     upstream socket per connection, and {others} for the store, the admin listener and the \
     process), but the open-file limit is {limit}: raise it (systemd LimitNOFILE=, \
     `ulimit -n`, docker --ulimit nofile=) or lower server.max_connections"
)]
pub struct TooFewFiles {
    max_connections: usize,
    needed: u64,
    others: u64,
    limit: u64,
}

/// Raises the soft open-file limit to the hard one; returns the limit in effect (`u64::MAX`
/// for none).
pub(super) fn raise_limit() -> u64 {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    if current == maximum {
        return current.unwrap_or(u64::MAX);
    }
    match setrlimit(Resource::Nofile, Rlimit { current: maximum, maximum }) {
        Ok(()) => maximum.unwrap_or(u64::MAX),
        Err(e) => {
            tracing::warn!(error = %e, soft = current, hard = maximum, "cannot raise the open-file limit");
            current.unwrap_or(u64::MAX)
        }
    }
}

/// The cap for `configured` (`server.max_connections`, `None` when unset) under `limit` open
/// files, `others` of which the rest of the process needs.
pub(super) fn connection_cap(configured: Option<usize>, others: u64, limit: u64) -> Result<Cap, TooFewFiles> {
    let wanted = configured.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    let needed = 2 * wanted as u64 + others;
    if needed <= limit {
        return Ok(Cap::Fits(wanted));
    }
    let held = usize::try_from(limit.saturating_sub(others) / 2).unwrap_or(usize::MAX);
    match configured {
        None if held > 0 => Ok(Cap::Lowered { cap: held, limit }),
        _ => Err(TooFewFiles { max_connections: wanted, needed, others, limit }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_the_limit_holds_is_kept() {
        assert_eq!(connection_cap(Some(1000), 100, 2100), Ok(Cap::Fits(1000)));
        assert_eq!(connection_cap(None, 100, 1_048_576), Ok(Cap::Fits(DEFAULT_MAX_CONNECTIONS)));
        assert_eq!(connection_cap(None, 100, u64::MAX), Ok(Cap::Fits(DEFAULT_MAX_CONNECTIONS)));
    }

    #[test]
    fn the_default_is_lowered_to_what_the_limit_holds() {
        assert_eq!(connection_cap(None, 100, 20_000), Ok(Cap::Lowered { cap: 9_950, limit: 20_000 }));
        assert_eq!(connection_cap(None, 100, 1024).unwrap().get(), 462);
    }

    #[test]
    fn a_cap_set_in_the_file_that_the_limit_cannot_hold_stops_the_start() {
        let e = connection_cap(Some(1000), 100, 2099).unwrap_err();
        let message = e.to_string();
        assert!(
            message.starts_with("server.max_connections = 1000 needs up to 2100 open files"),
            "{message}"
        );
        assert!(message.contains("the open-file limit is 2099"), "{message}");
        // Not even one connection fits: the default cannot be lowered to nothing.
        assert!(connection_cap(None, 100, 101).is_err());
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise_limit();
        let now = getrlimit(Resource::Nofile);
        assert_eq!(now.current, now.maximum);
        assert_eq!(limit, now.current.unwrap_or(u64::MAX));
    }
}
