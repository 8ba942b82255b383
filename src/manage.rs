//! Session management from the command line (`session-proxy sessions ...`), for operators
//! without the admin port at hand: the same operations as the admin endpoints, on the store
//! that `--config` names.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use serde_json::value::RawValue;

use crate::config::{Config, StoreUrl};
use crate::metrics::Metrics;
use crate::session::id::is_valid_id;
use crate::session::{IndexError, SessionLayer};
use crate::store::{Store, StoreError};

/// How long the command waits for the store's first connection.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// Pause between connection checks.
const CONNECT_POLL: Duration = Duration::from_millis(100);

/// One session management operation.
#[derive(Debug, Clone)]
pub enum Operation {
    /// Print a session: `{"id", "ttl", "data"}`.
    Show { id: String },
    /// Destroy a session.
    Revoke { id: String },
    /// Destroy every session holding `value` at `session.index`.
    RevokeIndex { value: String },
}

/// Why an operation could not be done; the message is for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("store.url is memory://: those sessions live inside the running proxy's process; use the admin endpoints (server.admin_token) instead")]
    MemoryStore,
    #[error("{0:?} is not a session id: 1 to 256 bytes without spaces or control characters")]
    BadId(String),
    #[error("no session {0}")]
    NoSuchSession(String),
    #[error("the session store did not answer within {} s: {error}", .waited.as_secs())]
    Unreachable { waited: Duration, error: StoreError },
    #[error("the session store failed: {0}")]
    Store(#[from] StoreError),
    #[error("session.index is not set in the config, so there is no index to revoke by")]
    NotIndexed,
}

impl From<IndexError> for ManageError {
    fn from(e: IndexError) -> ManageError {
        match e {
            IndexError::NotConfigured => ManageError::NotIndexed,
            IndexError::Store(e) => ManageError::Store(e),
        }
    }
}

/// Runs `operation` against the store of `config` and returns what to print.
pub async fn run(config: &Config, operation: Operation) -> Result<String, ManageError> {
    if matches!(config.store.url, StoreUrl::Memory) {
        return Err(ManageError::MemoryStore);
    }
    let store = Store::connect(&config.store).await?;
    let outcome = run_on(&store, config, operation).await;
    store.shutdown().await;
    outcome
}

async fn run_on(store: &Store, config: &Config, operation: Operation) -> Result<String, ManageError> {
    wait_until_connected(store).await?;
    let metrics = Arc::new(Metrics::new());
    let layer = SessionLayer::new(&config.session, &config.store.key_prefix, &metrics);
    let mut calls = layer.calls(store);
    match operation {
        Operation::Show { id } => {
            check_id(&id)?;
            let (data, ttl) =
                layer.inspect(&mut calls, &id).await?.ok_or(ManageError::NoSuchSession(id.clone()))?;
            let data = std::str::from_utf8(&data)
                .ok()
                .and_then(|text| RawValue::from_string(text.to_owned()).ok())
                .map_or_else(|| json!(String::from_utf8_lossy(&data)), |raw| json!(raw));
            Ok(json!({ "id": id, "ttl": ttl, "data": data }).to_string())
        }
        Operation::Revoke { id } => {
            check_id(&id)?;
            if layer.revoke(&mut calls, &id).await? {
                Ok(format!("revoked session {id}"))
            } else {
                Ok(format!("no session {id} (nothing to revoke)"))
            }
        }
        Operation::RevokeIndex { value } => {
            let revoked = layer.revoke_index(&mut calls, &value).await?;
            Ok(format!("revoked {revoked} session(s) holding {value:?}"))
        }
    }
}

fn check_id(id: &str) -> Result<(), ManageError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ManageError::BadId(id.to_owned()))
    }
}

/// The store connects in the background; a command waits for it, within [`CONNECT_WAIT`].
async fn wait_until_connected(store: &Store) -> Result<(), ManageError> {
    let deadline = Instant::now() + CONNECT_WAIT;
    loop {
        match store.ping().await {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                return Err(ManageError::Unreachable { waited: CONNECT_WAIT, error })
            }
            Err(_) => tokio::time::sleep(CONNECT_POLL).await,
        }
    }
}
