//! The Raft log: entries keyed by index, plus the vote and the committed and purged log ids.
//!
//! The entries are read from redb (`raft.redb`) and made durable by a write-ahead file (`raft.wal`, see `wal`): an
//! append is committed to redb without durability, so replication and apply can read it at once, and recorded in
//! the write-ahead file, synced, before openraft's `append` callback fires (a leader's append of its own entries
//! fires it before the sync, see below and `durable`). A durable redb commit (the vote, a
//! purge, or the write-ahead file reaching [`wal::RESET_BYTES`]) makes everything before it durable in redb, and the
//! write-ahead file starts over. Opening the store replays the file into redb: appends in order (entries at or
//! below the purged id skipped, as a purge may have been made durable just before a crash) and truncations, so the
//! log is what it was when the last record was synced.
//!
//! Why not redb alone: a durable redb commit writes every page the transaction changed, 8 pages of 4 KiB for one
//! entry, where a record here is one write at the end of a file; the append's fsync is on every write's path, on
//! the leader and on a follower, one after the other (see BENCHMARKS.md).
//!
//! The committed log id is a hint, as etcd's commit index is: it is kept in memory and written with the next append
//! record or durable commit. A restarted manager applies its log up to the committed id it finds, and the rest once
//! a leader tells it (a new leader commits every entry of its log); `--force-new-cluster` applies the survivor's
//! whole log ([`crate::manager::Manager::apply_whole_log`]).
//!
//! The log has its redb file to itself (the state machine is in `state.redb`): a durable commit writes the pages
//! that changed since the last one, and the state machine's pages, changed by every apply, made a log append's
//! fsync about 1.5 times as long when they shared the file.
//!
//! Writes run inline (the Raft core awaits them anyway), but for the sync of a leader's append of its own entries:
//! that append returns before its record is synced, and the sync runs on the blocking pool while the entries are
//! replicated. What may count on an entry only once it is durable waits for it through [`DurableLog`] (see
//! `durable`).

use std::fmt::Debug;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;

use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::RaftLogReader;
use redb::Database;
use redb::Durability;
use redb::ReadableDatabase;
use redb::ReadableTable;
use redb::TableDefinition;
use redb::WriteTransaction;
use tokio::sync::watch;

use super::durable::Durable;
use super::durable::DurableLog;
use super::error::from_json;
use super::error::to_json;
use super::typ;
use super::wal;
use super::wal::Record;
use super::wal::Wal;
use super::NodeId;
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

/// The Raft log of one manager. Cheap to clone; clones share the database and the write-ahead file (the clone is
/// also the log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// The committed log id last saved, while it is not yet written: the next append record or durable commit takes
    /// it along. Locked before `wal` when both are.
    unwritten_committed: Arc<Mutex<Option<Option<typ::LogId>>>>,
    wal: Arc<Mutex<WalState>>,
    /// How far the log is durable (see `durable`).
    durable: Arc<watch::Sender<Durable>>,
    /// The vote last saved.
    vote: Arc<Mutex<Option<typ::Vote>>>,
    /// This member's id, when its own appends as leader return before they are synced ([`Self::leading_as`]).
    own_id: Option<NodeId>,
    /// The write-ahead file starts over once it is this large.
    reset_at: u64,
}

/// The write-ahead file and what has been written to it.
struct WalState {
    wal: Wal,
    /// Every entry below this index has been written to the file (or to redb durably).
    written_below: u64,
    /// Counts truncations, so that a sync begun before one does not vouch for entries written after it.
    truncations: u64,
    /// A background sync runs; it goes round once more if `sync_again` is set when it is done.
    syncing: bool,
    sync_again: bool,
}

/// Only the log id of a stored entry, to read the last log id without decoding the payload.
#[derive(serde::Deserialize)]
struct LogIdOnly {
    log_id: typ::LogId,
}

impl LogStore {
    /// The log in `db` (its tables created if needed) and the write-ahead file at `wal_path`, whose records are
    /// replayed into redb first.
    pub(crate) fn open(db: Arc<Database>, wal_path: &Path) -> Result<Self, StoreError> {
        create_tables(&db)?;
        let (wal, records) = Wal::open(wal_path).map_err(|source| StoreError::Wal {
            path: wal_path.to_path_buf(),
            source,
        })?;
        let mut store = LogStore {
            db,
            unwritten_committed: Arc::new(Mutex::new(None)),
            wal: Arc::new(Mutex::new(WalState {
                wal,
                written_below: 0,
                truncations: 0,
                syncing: false,
                sync_again: false,
            })),
            durable: Arc::new(watch::Sender::new(Durable::Below(0))),
            vote: Arc::default(),
            own_id: None,
            reset_at: wal::RESET_BYTES,
        };
        if !records.is_empty() {
            store.replay(records)?;
        }
        // Everything in redb is durable now.
        let below = store.log_state()?.last_log_id.map_or(0, |last| last.index + 1);
        store.lock_wal().written_below = below;
        store.durable.send_replace(Durable::Below(below));
        store.vote = Arc::new(Mutex::new(store.read_meta(VOTE)?));
        Ok(store)
    }

    /// This log, as the log of member `id`: its appends of its own entries as leader return before they are synced
    /// (see `durable`). Without this every append is synced before it returns.
    pub fn leading_as(mut self, id: NodeId) -> Self {
        self.own_id = Some(id);
        self
    }

    /// Waits for entries of this log to be durable.
    pub fn durable(&self) -> DurableLog {
        DurableLog::new(self.durable.subscribe())
    }

    /// Starts the write-ahead file over once it is `bytes` large (tests use a small size).
    #[cfg(test)]
    pub(crate) fn reset_at(mut self, bytes: u64) -> Self {
        self.reset_at = bytes;
        self
    }

    /// Writes what the write-ahead file recorded into redb, durably, and empties the file.
    fn replay(&self, records: Vec<Record>) -> Result<(), StoreError> {
        let purged: Option<typ::LogId> = self.read_meta(PURGED)?;
        let txn = self.db.begin_write()?;
        {
            let mut log = txn.open_table(LOG)?;
            let mut meta = txn.open_table(LOG_META)?;
            for record in &records {
                match record {
                    Record::Append { committed, entries } => {
                        for (index, json) in entries {
                            if purged.is_none_or(|p| *index > p.index) {
                                log.insert(*index, json.as_slice())?;
                            }
                        }
                        if let Some(committed) = committed {
                            meta.insert(COMMITTED, committed.as_slice())?;
                        }
                    }
                    Record::Truncate { from } => {
                        log.retain_in(*from.., |_, _| false)?;
                    }
                }
            }
        }
        tracing::info!(records = records.len(), "replayed the Raft log's write-ahead file");
        self.commit(txn)
    }

    fn lock_committed(&self) -> MutexGuard<'_, Option<Option<typ::LogId>>> {
        self.unwritten_committed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_wal(&self) -> MutexGuard<'_, WalState> {
        self.wal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that everything written so far is durable (after a synced write or a durable commit).
    fn all_durable(&self, state: &WalState) {
        let below = state.written_below;
        self.durable.send_if_modified(|durable| match durable {
            Durable::Below(b) if *b != below => {
                *durable = Durable::Below(below);
                true
            }
            _ => false,
        });
    }

    /// An error if a background sync failed: the file may have lost records, so nothing more is written.
    fn check_not_failed(&self, state: &WalState) -> Result<(), StoreError> {
        match &*self.durable.borrow() {
            Durable::Failed(e) => Err(wal_error(&state.wal, std::io::Error::other(e.clone()))),
            Durable::Below(_) => Ok(()),
        }
    }

    /// Whether `entries` are this member's own, appended as the leader of the term it voted for itself in.
    fn appends_as_leader(&self, entries: &[typ::Entry]) -> bool {
        let (Some(me), Some(first)) = (self.own_id, entries.first()) else {
            return false;
        };
        let vote = self.vote.lock().unwrap_or_else(PoisonError::into_inner);
        vote.as_ref().is_some_and(|vote| {
            vote.is_committed()
                && vote.leader_id().voted_for() == Some(me)
                && first.log_id.leader_id == *vote.leader_id()
        })
    }

    /// Syncs the write-ahead file on the blocking pool, unless a sync runs already (it then goes round once more).
    /// The sync holds the file and the durability channel, not the database, so a store closed meanwhile can be
    /// opened again at once.
    fn sync_in_background(&self, state: &mut WalState) {
        if state.syncing {
            state.sync_again = true;
            return;
        }
        state.syncing = true;
        let (wal, durable) = (self.wal.clone(), self.durable.clone());
        tokio::task::spawn_blocking(move || sync_rounds(&wal, &durable));
    }

    /// Commits `txn` durably, with the committed log id if a newer one is waiting to be written; everything the
    /// write-ahead file held is then durable in redb, and it starts over.
    fn commit(&self, txn: WriteTransaction) -> Result<(), StoreError> {
        let mut unwritten = self.lock_committed();
        let mut state = self.lock_wal();
        if let Some(committed) = &*unwritten {
            let bytes = to_json(COMMITTED, committed)?;
            txn.open_table(LOG_META)?.insert(COMMITTED, bytes.as_slice())?;
        }
        txn.commit()?;
        *unwritten = None;
        self.all_durable(&state);
        state.wal.reset().map_err(|e| wal_error(&state.wal, e))
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

    /// Writes `entries` to redb without durability and to the write-ahead file, synced before this returns unless
    /// `sync_later` (then in the background, see `durable`).
    fn append_entries(
        &self,
        entries: impl IntoIterator<Item = typ::Entry>,
        sync_later: bool,
    ) -> Result<(), StoreError> {
        self.check_not_failed(&self.lock_wal())?;
        let mut written = Vec::new();
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut table = txn.open_table(LOG)?;
            for entry in entries {
                let bytes = to_json("log entry", &entry)?;
                table.insert(entry.log_id.index, bytes.as_slice())?;
                written.push((entry.log_id.index, bytes));
            }
        }
        txn.commit()?;

        let full = {
            let mut unwritten = self.lock_committed();
            let committed = match &*unwritten {
                Some(committed) => Some(to_json(COMMITTED, committed)?),
                None => None,
            };
            let mut state = self.lock_wal();
            let below = written.last().map(|(index, _)| index + 1);
            let record = Record::Append {
                committed,
                entries: written,
            };
            if sync_later {
                state.wal.append(&record)
            } else {
                state.wal.write(&record)
            }
            .map_err(|e| wal_error(&state.wal, e))?;
            *unwritten = None;
            if let Some(below) = below {
                state.written_below = below;
            }
            if sync_later {
                self.sync_in_background(&mut state);
            } else {
                self.all_durable(&state);
            }
            state.wal.len() >= self.reset_at
        };
        if full {
            // Makes everything durable in redb, and the write-ahead file starts over.
            self.commit(self.db.begin_write()?)?;
        }
        Ok(())
    }

    /// Removes entries from `index` on: recorded in the write-ahead file first, so that replaying it cannot bring
    /// back an entry written before and removed here.
    fn truncate_from(&self, index: u64) -> Result<(), StoreError> {
        {
            let mut state = self.lock_wal();
            self.check_not_failed(&state)?;
            state
                .wal
                .write(&Record::Truncate { from: index })
                .map_err(|e| wal_error(&state.wal, e))?;
            state.truncations += 1;
            state.written_below = state.written_below.min(index);
            self.all_durable(&state);
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        txn.open_table(LOG)?.retain_in(index.., |_, _| false)?;
        txn.commit()?;
        Ok(())
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

/// Syncs the write-ahead file until no sync is asked for any more, moving `durable` up to what each sync covers.
fn sync_rounds(wal: &Mutex<WalState>, durable: &watch::Sender<Durable>) {
    let lock = || wal.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let (file, below, truncations) = {
            let mut state = lock();
            state.sync_again = false;
            (state.wal.sync_handle(), state.written_below, state.truncations)
        };
        let synced = file.sync_data();
        let mut state = lock();
        match synced {
            // After a truncation the indexes below `below` may hold other entries, written (and synced) since.
            Ok(()) if state.truncations == truncations => {
                durable.send_if_modified(|durable| match durable {
                    Durable::Below(b) if *b < below => {
                        *durable = Durable::Below(below);
                        true
                    }
                    _ => false,
                });
            }
            Ok(()) => {}
            Err(e) => {
                tracing::error!(path = %state.wal.path().display(), error = %e, "cannot sync the Raft log");
                durable.send_replace(Durable::Failed(e.to_string()));
            }
        }
        if !state.sync_again {
            state.syncing = false;
            return;
        }
    }
}

fn wal_error(wal: &Wal, source: std::io::Error) -> StoreError {
    StoreError::Wal {
        path: wal.path().to_path_buf(),
        source,
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
            .map_err(|e| e.into_raft(ErrorSubject::Vote, ErrorVerb::Write))?;
        *self.vote.lock().unwrap_or_else(PoisonError::into_inner) = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<typ::Vote>, typ::StorageError> {
        self.read_meta(VOTE)
            .map_err(|e| e.into_raft(ErrorSubject::Vote, ErrorVerb::Read))
    }

    /// Kept in memory and written with the next append record or durable commit (the Raft core waits for this
    /// before it applies, on every commit). A crash loses at most the last advances, which the entries themselves, durable on a majority,
    /// make good again: a leader tells the restarted manager the committed index, and `--force-new-cluster` applies
    /// the survivor's whole log. A fsync here cost about 0.4 ms of every write on the leader and of every replication
    /// round on the followers. A redb commit without durability, as before, cost a transaction per write on every
    /// manager and put its pages in the next append's fsync (one-client writes in `cargo bench --bench cluster`:
    /// 550 and 560 a second, without and with this change: within the noise).
    async fn save_committed(&mut self, committed: Option<typ::LogId>) -> Result<(), typ::StorageError> {
        *self.lock_committed() = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<typ::LogId>, typ::StorageError> {
        if let Some(committed) = *self.lock_committed() {
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
        let entries: Vec<typ::Entry> = entries.into_iter().collect();
        let sync_later = self.appends_as_leader(&entries);
        match self.append_entries(entries, sync_later) {
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
