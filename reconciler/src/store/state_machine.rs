//! The state machine on redb: generic tables of JSON values with mod revisions, snapshots, and the watch stream.
//!
//! redb holds the truth; an in-memory copy serves reads so readers never wait for a disk write. A write
//! (apply or snapshot install) is computed against the copy, committed to redb in one transaction, then published
//! to the copy, then broadcast.
//!
//! Applying is not fsynced, installing a snapshot and building one are. redb makes a commit without durability
//! durable with the next durable one in the same file (`state.redb`: the next snapshot, or closing the store); a
//! crash in between rolls the state machine back to an older `last_applied`, never before the last snapshot, and
//! the restarted manager applies the same entries again from its log up to the committed id it finds (log entries
//! are only purged after a snapshot, which is durable, and only up to it). So a watcher may see a change again
//! after a crash, never one that the cluster did not commit; and a write costs one fsync on the leader's path (its
//! log append) instead of three.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::PoisonError;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;

use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::RaftSnapshotBuilder;
use redb::Database;
use redb::Durability;
use redb::ReadTransaction;
use redb::ReadableDatabase;
use redb::ReadableTable;
use redb::TableDefinition;
use redb::TableHandle;
use tokio::sync::broadcast;

use super::durable::DurableLog;
use super::error::from_json;
use super::error::to_json;
use super::typ;
use super::Change;
use super::Committed;
use super::Guard;
use super::Json;
use super::Op;
use super::Proposal;
use super::Request;
use super::Response;
use super::StoreError;
use super::TypeConfig;

/// Values keyed by (table, key), each a JSON-encoded [`Versioned`].
const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("sm_kv");
/// `last_applied` and `last_membership`, JSON-encoded; written in the same transaction as the values.
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
/// The current snapshot: `meta` and `data`.
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_snapshot");

const LAST_APPLIED: &str = "last_applied";
const LAST_MEMBERSHIP: &str = "last_membership";
const SNAPSHOT_META: &str = "meta";
const SNAPSHOT_DATA: &str = "data";

/// How many committed changes a watcher may fall behind before it gets `Lagged` and must resync.
const WATCH_CAPACITY: usize = 1024;

pub(crate) fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    txn.open_table(KV)?;
    txn.open_table(SM_META)?;
    txn.open_table(SNAPSHOT)?;
    txn.commit()?;
    Ok(())
}

/// Whether `db` holds the state machine's tables: a store written before the state machine had a file of its own.
pub(crate) fn is_in(db: &Database) -> Result<bool, StoreError> {
    let txn = db.begin_read()?;
    let found = txn.list_tables()?.any(|table| table.name() == SM_META.name());
    Ok(found)
}

/// Copies the state machine's tables from `from` into `to`, in one durable transaction.
pub(crate) fn copy(from: &Database, to: &Database) -> Result<(), StoreError> {
    let read = from.begin_read()?;
    let write = to.begin_write()?;
    {
        let mut kv = write.open_table(KV)?;
        for row in read.open_table(KV)?.iter()? {
            let (key, value) = row?;
            kv.insert(key.value(), value.value())?;
        }
        for definition in [SM_META, SNAPSHOT] {
            let mut table = write.open_table(definition)?;
            for row in read.open_table(definition)?.iter()? {
                let (key, value) = row?;
                table.insert(key.value(), value.value())?;
            }
        }
    }
    write.commit()?;
    Ok(())
}

/// Deletes the state machine's tables from `db` (a store written before the state machine had a file of its own,
/// once they are copied).
pub(crate) fn delete_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    txn.delete_table(KV)?;
    txn.delete_table(SM_META)?;
    txn.delete_table(SNAPSHOT)?;
    txn.commit()?;
    Ok(())
}

/// A stored value and the log index of the entry that last wrote it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Versioned {
    value: Json,
    revision: u64,
}

type Tables = BTreeMap<String, BTreeMap<String, Versioned>>;

/// The whole state machine; also the snapshot format (JSON).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct State {
    last_applied: Option<typ::LogId>,
    last_membership: typ::StoredMembership,
    tables: Tables,
}

impl State {
    fn revision_of(&self, table: &str, key: &str) -> Option<u64> {
        self.tables.get(table)?.get(key).map(|v| v.revision)
    }
}

/// The replicated state of one manager. Cheap to clone (an `Arc` inside); every clone sees the same state.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    /// The applied state, as redb holds it after the last commit; readers take this lock only briefly.
    state: RwLock<State>,
    /// Serializes writers (apply, install) across clones, so a write computed against `state` stays valid until it
    /// is published.
    writer: Mutex<()>,
    changes: broadcast::Sender<Committed>,
    /// The log whose entries are applied, if an entry must be durable there before it is applied (see `durable`).
    durable: OnceLock<DurableLog>,
}

impl StateMachineStore {
    pub(crate) fn load(db: Arc<Database>) -> Result<Self, StoreError> {
        let state = read_state(&db.begin_read()?)?;
        let (changes, _) = broadcast::channel(WATCH_CAPACITY);
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                db,
                state: RwLock::new(state),
                writer: Mutex::new(()),
                changes,
                durable: OnceLock::new(),
            }),
        })
    }

    /// From now on, applies an entry only once it is durable in `durable`'s log (see `durable`). Set once.
    pub(crate) fn apply_when_durable(&self, durable: DurableLog) {
        let _ = self.inner.durable.set(durable);
    }

    /// The value stored under `key` in `table`, and its mod revision.
    pub fn get(&self, table: &str, key: &str) -> Option<(serde_json::Value, u64)> {
        self.get_json(table, key).map(|(v, r)| (v.to_value(), r))
    }

    /// Like [`Self::get`], the value as stored (no parsing).
    pub fn get_json(&self, table: &str, key: &str) -> Option<(Json, u64)> {
        let state = self.read();
        let v = state.tables.get(table)?.get(key)?;
        Some((v.value.clone(), v.revision))
    }

    /// Every key of `table` with its value and mod revision, sorted by key.
    pub fn list(&self, table: &str) -> Vec<(String, serde_json::Value, u64)> {
        self.list_json(table)
            .into_iter()
            .map(|(k, v, r)| (k, v.to_value(), r))
            .collect()
    }

    /// Like [`Self::list`], the values as stored (no parsing).
    pub fn list_json(&self, table: &str) -> Vec<(String, Json, u64)> {
        self.list_with_revision(table).1
    }

    /// The names of the tables that hold at least one key, sorted.
    pub fn tables(&self) -> Vec<String> {
        self.read()
            .tables
            .iter()
            .filter(|(_, keys)| !keys.is_empty())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Like [`Self::list_json`], with the state machine's revision at the moment of the listing. A watcher
    /// subscribes first, lists, then skips every [`Committed`] whose revision is not above the listing's.
    pub fn list_with_revision(&self, table: &str) -> (u64, Vec<(String, Json, u64)>) {
        self.scan(table, |key, v| Some((key.to_string(), v.value.clone(), v.revision)))
    }

    /// Each key of `table` for which `pick` finds something in its value, with what it found, and the revision of
    /// the state they were read from (an index to keep up to date from the watch stream).
    pub fn index<T>(&self, table: &str, pick: impl Fn(&Json) -> Option<T>) -> (u64, Vec<(String, T)>) {
        self.scan(table, |key, v| pick(&v.value).map(|found| (key.to_string(), found)))
    }

    /// What `pick` makes of each row of `table` (in key order), and the state's revision, under one read lock.
    fn scan<T>(&self, table: &str, pick: impl Fn(&str, &Versioned) -> Option<T>) -> (u64, Vec<T>) {
        let state = self.read();
        let rows = state
            .tables
            .get(table)
            .map(|keys| keys.iter().filter_map(|(key, v)| pick(key, v)).collect())
            .unwrap_or_default();
        (revision(&state), rows)
    }

    /// The revision of the last applied entry (its log index; 0 when nothing was applied).
    pub fn revision(&self) -> u64 {
        revision(&self.read())
    }

    /// Committed changes from now on, each sent once it is durable. Capacity 1024: a receiver that falls further
    /// behind gets `RecvError::Lagged` and must resync from [`Self::list`].
    pub fn subscribe(&self) -> broadcast::Receiver<Committed> {
        self.inner.changes.subscribe()
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written: writers only swap in complete
        // values. So a poisoned lock is still safe to read.
        self.inner.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn apply_entries(&self, entries: Vec<typ::Entry>) -> Result<Vec<Response>, StoreError> {
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let _writer = self.inner.writer.lock().unwrap_or_else(PoisonError::into_inner);

        let mut batch = Batch::default();
        let mut responses = Vec::with_capacity(entries.len());
        {
            let state = self.read();
            for entry in entries {
                responses.push(match entry.payload {
                    EntryPayload::Blank => Response::Blank,
                    EntryPayload::Membership(membership) => {
                        batch.membership = Some(typ::StoredMembership::new(Some(entry.log_id), membership));
                        Response::Membership
                    }
                    EntryPayload::Normal(proposal) => batch.apply_proposal(&state, entry.log_id.index, proposal),
                });
            }
        }

        let mut txn = self.inner.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut kv = txn.open_table(KV)?;
            for (table, keys) in &batch.writes {
                for (key, v) in keys {
                    match v {
                        Some(v) => {
                            let bytes = to_json("value", v)?;
                            kv.insert((table.as_str(), key.as_str()), bytes.as_slice())?;
                        }
                        None => {
                            kv.remove((table.as_str(), key.as_str()))?;
                        }
                    }
                }
            }
            let mut meta = txn.open_table(SM_META)?;
            meta.insert(LAST_APPLIED, to_json(LAST_APPLIED, &Some(last))?.as_slice())?;
            if let Some(membership) = &batch.membership {
                meta.insert(LAST_MEMBERSHIP, to_json(LAST_MEMBERSHIP, membership)?.as_slice())?;
            }
        }
        txn.commit()?;

        {
            let mut state = self.inner.state.write().unwrap_or_else(PoisonError::into_inner);
            for (table, keys) in batch.writes {
                let rows = state.tables.entry(table).or_default();
                for (key, v) in keys {
                    match v {
                        Some(v) => rows.insert(key, v),
                        None => rows.remove(&key),
                    };
                }
            }
            state.tables.retain(|_, rows| !rows.is_empty());
            state.last_applied = Some(last);
            if let Some(membership) = batch.membership {
                state.last_membership = membership;
            }
        }

        for committed in batch.committed {
            // No receiver is not an error: nobody is watching.
            let _ = self.inner.changes.send(committed);
        }
        Ok(responses)
    }

    fn build(&self) -> Result<typ::Snapshot, StoreError> {
        // A read transaction is a consistent view that never blocks apply.
        let state = read_state(&self.inner.db.begin_read()?)?;
        let data = to_json("snapshot", &state)?;
        let meta = typ::SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.last_membership,
            snapshot_id: snapshot_id(&state.last_applied),
        };

        let txn = self.inner.db.begin_write()?;
        {
            let mut table = txn.open_table(SNAPSHOT)?;
            let current: Option<typ::SnapshotMeta> = match table.get(SNAPSHOT_META)? {
                Some(bytes) => Some(from_json("snapshot meta", bytes.value())?),
                None => None,
            };
            // An install may have raced this build with a newer snapshot; keep the newer one.
            if current.is_none_or(|c| c.last_log_id <= meta.last_log_id) {
                table.insert(SNAPSHOT_META, to_json("snapshot meta", &meta)?.as_slice())?;
                table.insert(SNAPSHOT_DATA, data.as_slice())?;
            }
        }
        txn.commit()?;
        tracing::info!(snapshot = %meta.snapshot_id, "built a snapshot");

        Ok(typ::Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    fn install(&self, meta: &typ::SnapshotMeta, data: Vec<u8>) -> Result<(), StoreError> {
        let incoming: State = serde_json::from_slice(&data).map_err(StoreError::Snapshot)?;
        let _writer = self.inner.writer.lock().unwrap_or_else(PoisonError::into_inner);

        let txn = self.inner.db.begin_write()?;
        {
            txn.delete_table(KV)?;
            let mut kv = txn.open_table(KV)?;
            for (table, keys) in &incoming.tables {
                for (key, v) in keys {
                    kv.insert((table.as_str(), key.as_str()), to_json("value", v)?.as_slice())?;
                }
            }
            let mut sm_meta = txn.open_table(SM_META)?;
            sm_meta.insert(LAST_APPLIED, to_json(LAST_APPLIED, &meta.last_log_id)?.as_slice())?;
            sm_meta.insert(
                LAST_MEMBERSHIP,
                to_json(LAST_MEMBERSHIP, &meta.last_membership)?.as_slice(),
            )?;
            let mut snapshot = txn.open_table(SNAPSHOT)?;
            snapshot.insert(SNAPSHOT_META, to_json("snapshot meta", meta)?.as_slice())?;
            snapshot.insert(SNAPSHOT_DATA, data.as_slice())?;
        }
        txn.commit()?;

        // The snapshot's metadata is authoritative for what it covers.
        let new_state = State {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            tables: incoming.tables,
        };
        let revision = revision(&new_state);
        let changes = resync_changes(&self.read(), &new_state, revision);
        *self.inner.state.write().unwrap_or_else(PoisonError::into_inner) = new_state;
        tracing::info!(snapshot = %meta.snapshot_id, revision, "installed a snapshot");

        let _ = self.inner.changes.send(Committed {
            revision,
            changes: changes.into(),
        });
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<typ::Snapshot>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(SNAPSHOT)?;
        let Some(meta) = table.get(SNAPSHOT_META)? else {
            return Ok(None);
        };
        let meta: typ::SnapshotMeta = from_json("snapshot meta", meta.value())?;
        let data = match table.get(SNAPSHOT_DATA)? {
            Some(data) => data.value().to_vec(),
            None => return Ok(None),
        };
        Ok(Some(typ::Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// The writes of a batch of entries, computed before anything is persisted.
#[derive(Default)]
struct Batch {
    /// The final value of every key the batch touches (`None`: deleted).
    writes: BTreeMap<String, BTreeMap<String, Option<Versioned>>>,
    membership: Option<typ::StoredMembership>,
    committed: Vec<Committed>,
}

impl Batch {
    /// The key's mod revision as of the entries applied so far (0 = absent).
    fn revision_of(&self, state: &State, table: &str, key: &str) -> u64 {
        match self.writes.get(table).and_then(|keys| keys.get(key)) {
            Some(v) => v.as_ref().map_or(0, |v| v.revision),
            None => state.revision_of(table, key).unwrap_or(0),
        }
    }

    /// Applies an entry's request(s); their changes reach watchers as one [`Committed`] at the entry's revision.
    fn apply_proposal(&mut self, state: &State, revision: u64, proposal: Proposal) -> Response {
        let mut changes = Vec::new();
        let response = match proposal {
            Proposal::One(request) => self.apply(state, revision, request, &mut changes),
            Proposal::Batch { batch } => Response::Batch(
                batch
                    .into_iter()
                    .map(|request| self.apply(state, revision, request, &mut changes))
                    .collect(),
            ),
        };
        if !changes.is_empty() {
            self.committed.push(Committed {
                revision,
                changes: changes.into(),
            });
        }
        response
    }

    fn apply(&mut self, state: &State, revision: u64, request: Request, changes: &mut Vec<Change>) -> Response {
        for (index, guard) in request.guards.iter().enumerate() {
            match guard {
                Guard::Revision {
                    table,
                    key,
                    revision: expected,
                } => {
                    let actual_revision = self.revision_of(state, table, key);
                    if actual_revision != *expected {
                        return Response::GuardFailed { index, actual_revision };
                    }
                }
            }
        }

        for op in request.ops {
            match op {
                Op::Put { table, key, value } => {
                    self.writes.entry(table.clone()).or_default().insert(
                        key.clone(),
                        Some(Versioned {
                            value: value.clone(),
                            revision,
                        }),
                    );
                    changes.push(Change {
                        table,
                        key,
                        value: Some(value),
                        revision,
                    });
                }
                Op::Delete { table, key } => {
                    if self.revision_of(state, &table, &key) == 0 {
                        continue;
                    }
                    self.writes.entry(table.clone()).or_default().insert(key.clone(), None);
                    changes.push(Change {
                        table,
                        key,
                        value: None,
                        revision,
                    });
                }
            }
        }
        Response::Applied { revision }
    }
}

/// Every key of `new` with its value, and a deletion for every key of `old` that `new` lacks.
fn resync_changes(old: &State, new: &State, revision: u64) -> Vec<Change> {
    let mut changes = Vec::new();
    for (table, keys) in &old.tables {
        for key in keys.keys() {
            if new.revision_of(table, key).is_none() {
                changes.push(Change {
                    table: table.clone(),
                    key: key.clone(),
                    value: None,
                    revision,
                });
            }
        }
    }
    for (table, keys) in &new.tables {
        for (key, v) in keys {
            changes.push(Change {
                table: table.clone(),
                key: key.clone(),
                value: Some(v.value.clone()),
                revision: v.revision,
            });
        }
    }
    changes
}

fn revision(state: &State) -> u64 {
    state.last_applied.map_or(0, |l| l.index)
}

fn snapshot_id(last_applied: &Option<typ::LogId>) -> String {
    // The state at a log id is fixed, so the log id names the snapshot's content.
    match last_applied {
        Some(log_id) => format!("{}-{}", log_id.leader_id, log_id.index),
        None => "empty".to_string(),
    }
}

fn read_state(txn: &ReadTransaction) -> Result<State, StoreError> {
    let meta = txn.open_table(SM_META)?;
    let last_applied: Option<typ::LogId> = match meta.get(LAST_APPLIED)? {
        Some(bytes) => from_json(LAST_APPLIED, bytes.value())?,
        None => None,
    };
    let last_membership = match meta.get(LAST_MEMBERSHIP)? {
        Some(bytes) => from_json(LAST_MEMBERSHIP, bytes.value())?,
        None => typ::StoredMembership::default(),
    };
    let mut tables = Tables::new();
    for row in txn.open_table(KV)?.iter()? {
        let (key, bytes) = row?;
        let (table, key) = key.value();
        let v: Versioned = from_json(&format!("the value of {table}/{key}"), bytes.value())?;
        tables.entry(table.to_string()).or_default().insert(key.to_string(), v);
    }
    Ok(State {
        last_applied,
        last_membership,
        tables,
    })
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<typ::Snapshot, typ::StorageError> {
        self.build()
            .map_err(|e| e.into_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<typ::LogId>, typ::StoredMembership), typ::StorageError> {
        let state = self.read();
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, typ::StorageError>
    where
        I: IntoIterator<Item = typ::Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<typ::Entry> = entries.into_iter().collect();
        if let (Some(durable), Some(last)) = (self.inner.durable.get(), entries.last()) {
            durable
                .wait(last.log_id.index)
                .await
                .map_err(|e| StoreError::NotDurable(e).into_raft(ErrorSubject::Log(last.log_id), ErrorVerb::Read))?;
        }
        self.apply_entries(entries)
            .map_err(|e| e.into_raft(ErrorSubject::StateMachine, ErrorVerb::Write))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, typ::StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &typ::SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), typ::StorageError> {
        self.install(meta, snapshot.into_inner())
            .map_err(|e| e.into_raft(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<typ::Snapshot>, typ::StorageError> {
        self.current_snapshot()
            .map_err(|e| e.into_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}
