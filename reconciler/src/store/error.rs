//! Errors of the Raft store, and their mapping to openraft's storage error.

use std::path::PathBuf;

use openraft::AnyError;
use openraft::ErrorSubject;
use openraft::ErrorVerb;

use super::typ;

/// Why the Raft store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the manager data directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },

    #[error(
        "cannot open the Raft store {path}: {source} (is another swarm manager using this data directory? \
         stop it, or start this one with its own directory)"
    )]
    Open { path: PathBuf, source: redb::DatabaseError },

    #[error("cannot move {from} to {to}: {source} (check the permissions of the manager data directory)")]
    Move {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot read or write the Raft log's write-ahead file {path}: {source} (check the disk and the permissions of the manager data directory)")]
    Wal { path: PathBuf, source: std::io::Error },

    #[error("Raft store database error: {0}")]
    Db(#[from] redb::Error),

    #[error(
        "the Raft store holds {what} that does not decode: {source} (the data directory is damaged or was written \
         by an incompatible swarm version; restore it from a backup or rejoin this manager with an empty directory)"
    )]
    Corrupt { what: String, source: serde_json::Error },

    #[error("cannot encode {what} for the Raft store: {source}")]
    Encode { what: String, source: serde_json::Error },

    #[error("{0}; entries not known durable are not applied (check the disk; restart the manager once it is sound)")]
    NotDurable(String),

    #[error("snapshot does not decode: {0}")]
    Snapshot(serde_json::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}

from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl StoreError {
    pub(crate) fn corrupt(what: impl Into<String>, source: serde_json::Error) -> Self {
        StoreError::Corrupt {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn encode(what: impl Into<String>, source: serde_json::Error) -> Self {
        StoreError::Encode {
            what: what.into(),
            source,
        }
    }

    /// This error as openraft sees it: a storage failure that stops the Raft node.
    pub(crate) fn into_raft(self, subject: ErrorSubject<super::NodeId>, verb: ErrorVerb) -> typ::StorageError {
        typ::StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

/// JSON-encodes a value for a redb table.
pub(crate) fn to_json<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::encode(what, e))
}

/// JSON-decodes a value read from a redb table.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt(what, e))
}
