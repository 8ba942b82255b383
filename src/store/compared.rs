//! What a conditional write found.

use bytes::Bytes;

/// What a conditional write found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compared {
    /// The key held the expected text: the write (or delete) is done.
    Done,
    /// The key holds another text now (returned, so a retry needs no extra read); nothing
    /// was written.
    Changed(Bytes),
    /// The key is gone (deleted, moved or expired); nothing was written.
    Gone,
}
