//! The Raft log on redb: entries keyed by index, plus the vote and the committed and purged log ids.
//!
//! Every write is one redb transaction committed with immediate durability (fsync) before the call returns, so
//! openraft's `append` callback fires only for entries that are on disk — except the committed log id, which is a
//! hint, as etcd's commit index is: it is kept in memory and written in the next durable write's transaction. A
//! restarted manager applies its log up to the committed id it finds, and the rest once a leader tells it (a new
//! leader commits every entry of its log); `--force-new-cluster` applies the survivor's whole log
//! ([`crate::manager::Manager::apply_whole_log`]).
//!
//! The log has its redb file to itself (`raft.redb`; the state machine is in `state.redb`): a durable commit writes
//! the pages that changed since the last one, and the state machine's pages, changed by every apply, made a log
//! append's fsync about twice as long when they shared the file.
//! Writes run inline: the Raft core awaits them anyway, and staying off the blocking pool keeps simulation tests
//! with paused time deterministic.

use std::fmt::Debug;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;

use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::RaftLogReader;
use redb::Database;
use redb::ReadableDatabase;
use redb::ReadableTable;
use redb::TableDefinition;
use redb::WriteTransaction;

use super::error::from_json;
use super::error::to_json;
use super::typ;
use super::StoreError;
use super::TypeConfig;

/// Log entries, JSON-encoded, keyed by log index.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// `vote`, `committed` and `purged`, each JSON-encoded.
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_log_meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

pub(crate) fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(LOG_META)?;
    txn.commit()?;
    Ok(())
}

/// The Raft log of one manager. Cheap to clone; clones share the database (the clone is also the log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// The committed log id last saved, while it is not yet written: the next durable write takes it along.
    unwritten_committed: Arc<Mutex<Option<Option<typ::LogId>>>>,
}

/// Only the log id of a stored entry, to read the last log id without decoding the payload.
#[derive(serde::Deserialize)]
struct LogIdOnly {
    log_id: typ::LogId,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>) -> Self {
        LogStore {
            db,
            unwritten_committed: Arc::new(Mutex::new(None)),
        }
    }

    /// Commits `txn` durably, with the committed log id if a newer one is waiting to be written.
    fn commit(&self, txn: WriteTransaction) -> Result<(), StoreError> {
        let mut unwritten = self.unwritten_committed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(committed) = &*unwritten {
            let bytes = to_json(COMMITTED, committed)?;
            txn.open_table(LOG_META)?.insert(COMMITTED, bytes.as_slice())?;
        }
        txn.commit()?;
        *unwritten = None;
        Ok(())
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG_META)?;
        let Some(bytes) = table.get(name)? else {
            return Ok(None);
        };
        from_json(name, bytes.value()).map(Some)
    }

    fn write_meta<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let bytes = to_json(name, value)?;
        let txn = self.db.begin_write()?;
        txn.open_table(LOG_META)?.insert(name, bytes.as_slice())?;
        self.commit(txn)
    }

    fn entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<typ::Entry>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let mut entries = Vec::new();
        for row in table.range(range)? {
            let (index, bytes) = row?;
            entries.push(from_json(&format!("log entry {}", index.value()), bytes.value())?);
        }
        Ok(entries)
    }

    fn log_state(&self) -> Result<typ::LogState, StoreError> {
        let last_purged_log_id: Option<typ::LogId> = self.read_meta(PURGED)?;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let last_log_id = match table.last()? {
            Some((index, bytes)) => {
                let entry: LogIdOnly = from_json(&format!("log entry {}", index.value()), bytes.value())?;
                Some(entry.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(typ::LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    fn append_entries(&self, entries: impl IntoIterator<Item = typ::Entry>) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(LOG)?;
            for entry in entries {
                let bytes = to_json("log entry", &entry)?;
                table.insert(entry.log_id.index, bytes.as_slice())?;
            }
        }
        self.commit(txn)
    }

    /// Removes entries from `index` on.
    fn truncate_from(&self, index: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(LOG)?.retain_in(index.., |_, _| false)?;
        self.commit(txn)
    }

    /// Records `upto` as purged and removes entries up to it, in one transaction so a crash leaves no hole.
    fn purge_upto(&self, upto: &typ::LogId) -> Result<(), StoreError> {
        let bytes = to_json(PURGED, upto)?;
        let txn = self.db.begin_write()?;
        txn.open_table(LOG_META)?.insert(PURGED, bytes.as_slice())?;
        txn.open_table(LOG)?.retain_in(..=upto.index, |_, _| false)?;
        self.commit(txn)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<typ::Entry>, typ::StorageError> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        self.entries(range)
            .map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<typ::LogState, typ::StorageError> {
        self.log_state()
            .map_err(|e| e.into_raft(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &typ::Vote) -> Result<(), typ::StorageError> {
        self.write_meta(VOTE, vote)
            .map_err(|e| e.into_raft(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<typ::Vote>, typ::StorageError> {
        self.read_meta(VOTE)
            .map_err(|e| e.into_raft(ErrorSubject::Vote, ErrorVerb::Read))
    }

    /// Kept in memory and written with the next durable write (the Raft core waits for this before it applies, on
    /// every commit). A crash loses at most the last advances, which the entries themselves, durable on a majority,
    /// make good again: a leader tells the restarted manager the committed index, and `--force-new-cluster` applies
    /// the survivor's whole log. A fsync here cost about 0.4 ms of every write on the leader and of every replication
    /// round on the followers. A redb commit without durability, as before, cost a transaction per write on every
    /// manager and put its pages in the next append's fsync (one-client writes in `cargo bench --bench cluster`:
    /// 550 and 560 a second, without and with this change: within the noise).
    async fn save_committed(&mut self, committed: Option<typ::LogId>) -> Result<(), typ::StorageError> {
        *self.unwritten_committed.lock().unwrap_or_else(PoisonError::into_inner) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<typ::LogId>, typ::StorageError> {
        if let Some(committed) = *self.unwritten_committed.lock().unwrap_or_else(PoisonError::into_inner) {
            return Ok(committed);
        }
        let committed: Option<Option<typ::LogId>> = self
            .read_meta(COMMITTED)
            .map_err(|e| e.into_raft(ErrorSubject::Store, ErrorVerb::Read))?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), typ::StorageError>
    where
        I: IntoIterator<Item = typ::Entry> + Send,
        I::IntoIter: Send,
    {
        match self.append_entries(entries) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e.into_raft(ErrorSubject::Logs, ErrorVerb::Write))
            }
        }
    }

    async fn truncate(&mut self, log_id: typ::LogId) -> Result<(), typ::StorageError> {
        tracing::debug!(%log_id, "truncating the Raft log");
        self.truncate_from(log_id.index)
            .map_err(|e| e.into_raft(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: typ::LogId) -> Result<(), typ::StorageError> {
        tracing::debug!(%log_id, "purging the Raft log");
        self.purge_upto(&log_id)
            .map_err(|e| e.into_raft(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }
}
