//! The manager's Raft store: openraft types, the redb-backed log and state machine, snapshots and the watch stream.
//!
//! Two redb files and a write-ahead file: log appends, the vote, truncation and purges are fsynced before they
//! return, the committed id is written with the next of those (see `log`), applying is made durable by the next
//! snapshot (see `state_machine`):
//! - `<dir>/raft.redb` and `<dir>/raft.wal`, the Raft log ([`LogStore`]): entries keyed by index, plus the vote, the
//!   committed and the purged log id; the write-ahead file holds the appends since redb's last durable commit;
//! - `<dir>/state.redb`, the state machine ([`StateMachineStore`]): generic tables of JSON values, each key with its
//!   *mod revision* (the log index of the entry that last wrote it), the last applied log id and membership, and
//!   the current snapshot so a restarted manager can serve it.
//!
//! A write is a [`Request`]: guards checked against the state before the entry, then ops that all apply or none
//! do. Readers use [`StateMachineStore::get`] / [`StateMachineStore::list`] (or the typed [`get`] / [`list`]) and
//! follow changes with [`StateMachineStore::subscribe`].

pub(crate) mod durable;
mod error;
mod log;
mod proposer;
mod state_machine;
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;
mod types;
mod wal;

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

pub use self::durable::DurableLog;
pub use self::error::StoreError;
pub use self::log::LogStore;
pub use self::proposer::ProposeResult;
pub use self::proposer::Proposer;
pub use self::state_machine::StateMachineStore;
pub use self::types::Change;
pub use self::types::Committed;
pub use self::types::Guard;
pub use self::types::Json;
pub use self::types::Op;
pub use self::types::Peer;
pub use self::types::Proposal;
pub use self::types::Request;
pub use self::types::Response;

/// A manager's Raft id. Stable for the life of the manager; the swarm node id ([`Peer::node_id`]) is the name users
/// see.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The Raft type plumbing for the manager store.
    pub TypeConfig:
        D = Proposal,
        R = Response,
        NodeId = NodeId,
        Node = Peer,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Short aliases for openraft's generic types, instantiated for [`TypeConfig`].
pub mod typ {
    use super::NodeId;
    use super::Peer;
    use super::TypeConfig;

    pub type Raft = openraft::Raft<TypeConfig>;
    pub type Entry = openraft::Entry<TypeConfig>;
    pub type EntryPayload = openraft::EntryPayload<TypeConfig>;
    pub type LogId = openraft::LogId<NodeId>;
    pub type LogState = openraft::LogState<TypeConfig>;
    pub type Vote = openraft::Vote<NodeId>;
    pub type Membership = openraft::Membership<NodeId, Peer>;
    pub type StoredMembership = openraft::StoredMembership<NodeId, Peer>;
    pub type Snapshot = openraft::Snapshot<TypeConfig>;
    pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Peer>;
    pub type RaftMetrics = openraft::RaftMetrics<NodeId, Peer>;
    pub type StorageError = openraft::StorageError<NodeId>;
    pub type StorageIOError = openraft::StorageIOError<NodeId>;

    pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
    pub type RPCError<E = openraft::error::Infallible> = openraft::error::RPCError<NodeId, Peer, RaftError<E>>;
    pub type Fatal = openraft::error::Fatal<NodeId>;
    pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, Peer>;
    pub type ClientWriteResponse = openraft::raft::ClientWriteResponse<TypeConfig>;
    pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, Peer>;
    pub type ForwardToLeader = openraft::error::ForwardToLeader<NodeId, Peer>;
    pub type InitializeError = openraft::error::InitializeError<NodeId, Peer>;
    pub type ChangeMembershipError = openraft::error::ChangeMembershipError<NodeId>;
    pub type InstallSnapshotError = openraft::error::InstallSnapshotError;

    pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
    pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<NodeId>;
    pub type VoteRequest = openraft::raft::VoteRequest<NodeId>;
    pub type VoteResponse = openraft::raft::VoteResponse<NodeId>;
    pub type InstallSnapshotRequest = openraft::raft::InstallSnapshotRequest<TypeConfig>;
    pub type InstallSnapshotResponse = openraft::raft::InstallSnapshotResponse<NodeId>;
}

/// Whether an AppendEntries request's entries follow its `prev_log_id` directly.
///
/// openraft 0.9.25 keeps a deposed leader's replication streams running: they can read the log as the new leader
/// rewrote (and purged) it and send it under the old vote and the old `prev_log_id`, leaving a gap that Raft's log
/// matching cannot see (openraft #1795). A receiver refuses such a request instead of appending it; the sender's
/// stream is stale anyway and gives up once it learns the new vote.
pub fn is_contiguous(request: &typ::AppendEntriesRequest) -> bool {
    match request.entries.first() {
        None => true,
        Some(first) => first.log_id.index == request.prev_log_id.map_or(0, |prev| prev.index + 1),
    }
}

/// The log store and the state machine of one manager.
pub struct Stores {
    pub log: LogStore,
    pub state_machine: StateMachineStore,
}

impl Stores {
    /// The stores of member `id`, whose appends of its own entries as leader return before they are synced: the
    /// state machine then applies an entry only once it is durable in the log (see `durable`).
    pub fn leading_as(self, id: NodeId) -> Stores {
        let log = self.log.leading_as(id);
        self.state_machine.apply_when_durable(log.durable());
        Stores {
            log,
            state_machine: self.state_machine,
        }
    }
}

/// redb's page cache, for each of the two files. Reads are served from the state machine's in-memory copy, so redb
/// reads only recent log entries (replication, apply) and the pages a write touches; its default (1 GiB) held most
/// of a manager's memory at 150,000 tasks.
pub const REDB_CACHE_BYTES: usize = 8 << 20;

/// Opens (creating if needed) `<dir>/raft.redb` and `<dir>/raft.wal` (log, vote, committed, purged; the write-ahead
/// file replayed into redb) and `<dir>/state.redb` (state machine and the current snapshot); what is fsynced when:
/// see the module documentation.
///
/// A store written by an earlier version, the state machine in `raft.redb`, has it moved to `state.redb` first:
/// copied to `state.redb.new`, fsynced, renamed, then deleted from `raft.redb`; a crash at any point leaves either
/// the old layout or the new one.
///
/// The files are locked while the returned stores (or any clone, or a `Raft` holding them) are alive; a second
/// `open` of the same directory fails with [`StoreError::Open`].
pub fn open(dir: &Path) -> Result<Stores, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let log_db = open_db(&dir.join("raft.redb"))?;
    let state_path = dir.join("state.redb");
    if state_machine::is_in(&log_db)? {
        if !state_path.exists() {
            let new = dir.join("state.redb.new");
            let _ = std::fs::remove_file(&new);
            state_machine::copy(&log_db, &open_db(&new)?)?;
            // The rename is durable once the directory is synced.
            std::fs::rename(&new, &state_path)
                .and_then(|()| std::fs::File::open(dir)?.sync_all())
                .map_err(|source| StoreError::Move {
                    from: new,
                    to: state_path.clone(),
                    source,
                })?;
            tracing::info!(path = %state_path.display(), "moved the state machine to a file of its own");
        }
        state_machine::delete_tables(&log_db)?;
    }
    let state_db = open_db(&state_path)?;
    state_machine::create_tables(&state_db)?;
    Ok(Stores {
        log: LogStore::open(Arc::new(log_db), &dir.join("raft.wal"))?,
        state_machine: StateMachineStore::load(Arc::new(state_db))?,
    })
}

fn open_db(path: &Path) -> Result<redb::Database, StoreError> {
    redb::Builder::new()
        .set_cache_size(REDB_CACHE_BYTES)
        .create(path)
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// The Raft timing and snapshot policy. Call [`openraft::Config::validate`] on the result before starting a node:
/// it rejects an election timeout that is not above the heartbeat or an empty election range.
///
/// `snapshot_every` is the number of log entries between snapshots; after a snapshot, the last 1,000 entries
/// (or `snapshot_every`, if smaller) stay in the log so a slightly lagging follower catches up from the log, not
/// from a full snapshot.
pub fn raft_config(
    snapshot_every: u64,
    heartbeat_ms: u64,
    election_min_ms: u64,
    election_max_ms: u64,
) -> openraft::Config {
    let snapshot_every = snapshot_every.max(1);
    openraft::Config {
        cluster_name: "swarm".to_string(),
        heartbeat_interval: heartbeat_ms,
        election_timeout_min: election_min_ms,
        election_timeout_max: election_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: snapshot_every.min(1000),
        // A follower further behind than this is caught up by snapshot; keep it above the snapshot interval.
        replication_lag_threshold: snapshot_every.saturating_mul(2),
        ..Default::default()
    }
}

/// Snapshot every 10,000 entries, heartbeat 50 ms, election timeout 150–300 ms.
pub fn default_raft_config() -> openraft::Config {
    raft_config(10_000, 50, 150, 300)
}

/// Typed access: an object lives in one table under one key.
pub trait Object: serde::Serialize + serde::de::DeserializeOwned {
    const TABLE: &'static str;
    fn key(&self) -> String;
}

/// The object stored under `key` and its mod revision. A stored value that does not deserialize as `T` is
/// logged (table, key and the kind of error — never the value) and treated as absent.
pub fn get<T: Object>(sm: &StateMachineStore, key: &str) -> Option<(T, u64)> {
    let (value, revision) = sm.get_json(T::TABLE, key)?;
    decode(key, &value).map(|object| (object, revision))
}

/// Every object of type `T`, sorted by key, each with its mod revision. Values that do not deserialize are
/// logged and skipped.
pub fn list<T: Object>(sm: &StateMachineStore) -> Vec<(T, u64)> {
    sm.list_json(T::TABLE)
        .into_iter()
        .filter_map(|(key, value, revision)| decode(&key, &value).map(|object| (object, revision)))
        .collect()
}

/// An op that stores `obj` under its key.
///
/// # Panics
/// If `T`'s `Serialize` fails, which derived impls only do for maps with non-scalar keys; use [`try_put`] for a
/// type that can.
pub fn put<T: Object>(obj: &T) -> Op {
    try_put(obj).expect("an Object type serializes to JSON (derived Serialize, scalar map keys)")
}

/// An op that stores `obj` under its key, or the serialization error.
pub fn try_put<T: Object>(obj: &T) -> Result<Op, serde_json::Error> {
    Ok(Op::Put {
        table: T::TABLE.to_string(),
        key: obj.key(),
        value: Json::encode(obj)?,
    })
}

/// An op that deletes the object of type `T` stored under `key` (nothing if there is none).
pub fn delete<T: Object>(key: &str) -> Op {
    Op::Delete {
        table: T::TABLE.to_string(),
        key: key.to_string(),
    }
}

/// `value` (stored under `key`) as a `T`, or `None` when it does not deserialize: logged with the table, the key and
/// the kind of error — never the value, which can be a secret.
pub fn decode<T: Object>(key: &str, value: &Json) -> Option<T> {
    match value.decode::<T>() {
        Ok(object) => Some(object),
        Err(e) => {
            tracing::warn!(table = T::TABLE, key, kind = ?e.classify(), "stored value does not decode; skipped");
            None
        }
    }
}
