//! Tests of the Raft store: openraft's storage suite, guards, durability, the watch stream, and a small cluster
//! over the in-memory network.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::RaftLogStorage;
use openraft::storage::RaftLogStorageExt;
use openraft::storage::RaftStateMachine;
use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use openraft::CommittedLeaderId;
use openraft::EntryPayload;
use openraft::RaftLogReader;
use openraft::RaftSnapshotBuilder;
use serde_json::json;
use tempfile::TempDir;
use tokio::sync::broadcast;

use super::testing::Router;
use super::*;

const WAIT: Duration = Duration::from_secs(10);

struct TempStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), typ::StorageError> {
        let dir = TempDir::new().expect("temp dir");
        let stores = open(dir.path()).expect("open a fresh store");
        Ok((dir, stores.log, stores.state_machine))
    }
}

#[test]
fn passes_the_openraft_storage_suite() {
    // The suite runs each case on its own runtime, so this is a plain test.
    Suite::test_all(TempStores).expect("openraft storage suite");
}

fn log_id(term: u64, index: u64) -> typ::LogId {
    typ::LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(index: u64, payload: typ::EntryPayload) -> typ::Entry {
    typ::Entry {
        log_id: log_id(1, index),
        payload,
    }
}

fn write(index: u64, guards: Vec<Guard>, ops: Vec<Op>) -> typ::Entry {
    entry(index, EntryPayload::Normal(Request { guards, ops }.into()))
}

fn membership(index: u64) -> typ::Entry {
    let members: BTreeMap<NodeId, Peer> = [(1, Router::peer(1))].into();
    entry(index, EntryPayload::Membership(typ::Membership::from(members)))
}

fn put(table: &str, key: &str, value: serde_json::Value) -> Op {
    Op::Put {
        table: table.into(),
        key: key.into(),
        value: value.into(),
    }
}

fn del(table: &str, key: &str) -> Op {
    Op::Delete {
        table: table.into(),
        key: key.into(),
    }
}

fn at(table: &str, key: &str, revision: u64) -> Guard {
    Guard::Revision {
        table: table.into(),
        key: key.into(),
        revision,
    }
}

fn fresh() -> (TempDir, Stores) {
    let dir = TempDir::new().expect("temp dir");
    let stores = open(dir.path()).expect("open");
    (dir, stores)
}

async fn apply(sm: &mut StateMachineStore, entries: Vec<typ::Entry>) -> Vec<Response> {
    sm.apply(entries).await.expect("apply")
}

#[tokio::test]
async fn create_only_guard_refuses_the_second_writer() {
    let (_dir, mut stores) = fresh();
    let sm = &mut stores.state_machine;

    let first = write(
        1,
        vec![at("services", "web", 0)],
        vec![put("services", "web", json!({"replicas": 1}))],
    );
    let second = write(
        2,
        vec![at("services", "web", 0)],
        vec![put("services", "web", json!({"replicas": 9}))],
    );
    let responses = apply(sm, vec![first, second]).await;

    assert_eq!(
        responses,
        vec![
            Response::Applied { revision: 1 },
            Response::GuardFailed {
                index: 0,
                actual_revision: 1
            }
        ]
    );
    assert_eq!(sm.get("services", "web"), Some((json!({"replicas": 1}), 1)));
    // A refused write still advances the revision: the entry was applied, its ops were not.
    assert_eq!(sm.revision(), 2);
}

#[tokio::test]
async fn a_batch_with_one_failing_guard_applies_none_of_its_ops() {
    let (_dir, mut stores) = fresh();
    let sm = &mut stores.state_machine;
    apply(
        sm,
        vec![write(
            1,
            vec![],
            vec![put("services", "web", json!(1)), put("services", "db", json!(1))],
        )],
    )
    .await;

    let stale_plan = write(
        2,
        vec![at("services", "web", 1), at("services", "db", 7)],
        vec![
            put("services", "web", json!(2)),
            del("services", "db"),
            put("networks", "front", json!(2)),
        ],
    );
    let responses = apply(sm, vec![stale_plan]).await;

    assert_eq!(
        responses,
        vec![Response::GuardFailed {
            index: 1,
            actual_revision: 1
        }]
    );
    assert_eq!(
        sm.list("services"),
        vec![("db".to_string(), json!(1), 1), ("web".to_string(), json!(1), 1)]
    );
    assert!(sm.list("networks").is_empty());

    // The same plan against the current revisions applies all of its ops.
    let fresh_plan = write(
        3,
        vec![at("services", "web", 1), at("services", "db", 1)],
        vec![
            put("services", "web", json!(2)),
            del("services", "db"),
            put("networks", "front", json!(2)),
        ],
    );
    assert_eq!(
        apply(sm, vec![fresh_plan]).await,
        vec![Response::Applied { revision: 3 }]
    );
    assert_eq!(sm.list("services"), vec![("web".to_string(), json!(2), 3)]);
    assert_eq!(sm.get("networks", "front"), Some((json!(2), 3)));
    assert_eq!(sm.get("services", "db"), None);
}

#[tokio::test]
async fn guards_see_the_earlier_entries_of_the_same_batch() {
    let (_dir, mut stores) = fresh();
    let sm = &mut stores.state_machine;
    let responses = apply(
        sm,
        vec![
            write(1, vec![], vec![put("t", "k", json!("a"))]),
            write(2, vec![at("t", "k", 1)], vec![del("t", "k")]),
            write(3, vec![at("t", "k", 0)], vec![put("t", "k", json!("b"))]),
        ],
    )
    .await;
    assert_eq!(
        responses,
        vec![
            Response::Applied { revision: 1 },
            Response::Applied { revision: 2 },
            Response::Applied { revision: 3 }
        ]
    );
    assert_eq!(sm.get("t", "k"), Some((json!("b"), 3)));
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Service {
    name: String,
    replicas: u32,
}

impl Object for Service {
    const TABLE: &'static str = "services";
    fn key(&self) -> String {
        self.name.clone()
    }
}

#[tokio::test]
async fn typed_access_skips_values_that_do_not_decode() {
    let (_dir, mut stores) = fresh();
    let sm = &mut stores.state_machine;
    let web = Service {
        name: "web".into(),
        replicas: 3,
    };
    apply(
        sm,
        vec![write(
            1,
            vec![],
            vec![super::put(&web), put("services", "broken", json!({"name": 5}))],
        )],
    )
    .await;

    assert_eq!(super::get::<Service>(sm, "web"), Some((web, 1)));
    assert_eq!(super::get::<Service>(sm, "broken"), None);
    assert_eq!(super::list::<Service>(sm).len(), 1);

    apply(sm, vec![write(2, vec![], vec![super::delete::<Service>("web")])]).await;
    assert_eq!(super::get::<Service>(sm, "web"), None);
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = TempDir::new().expect("temp dir");
    let vote = typ::Vote::new_committed(3, 1);
    let snapshot_meta;
    {
        let Stores {
            mut log,
            mut state_machine,
        } = open(dir.path()).expect("open");
        log.save_vote(&vote).await.expect("vote");
        let entries = vec![
            membership(0),
            write(1, vec![], vec![put("nodes", "n1", json!({"ready": true}))]),
            write(2, vec![], vec![put("nodes", "n2", json!({"ready": false}))]),
            write(3, vec![], vec![del("nodes", "n2")]),
        ];
        log.blocking_append(entries.clone()).await.expect("append");
        log.save_committed(Some(log_id(1, 3))).await.expect("committed");
        apply(&mut state_machine, entries[..3].to_vec()).await;
        snapshot_meta = state_machine.build_snapshot().await.expect("snapshot").meta;
        apply(&mut state_machine, entries[3..].to_vec()).await;
        log.purge(log_id(1, 0)).await.expect("purge");
    }

    let Stores {
        mut log,
        mut state_machine,
    } = open(dir.path()).expect("reopen");
    assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
    assert_eq!(log.read_committed().await.expect("committed"), Some(log_id(1, 3)));
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 0)));
    assert_eq!(state.last_log_id, Some(log_id(1, 3)));
    let entries = log.try_get_log_entries(0..).await.expect("entries");
    assert_eq!(
        entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );

    let (applied, members) = state_machine.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(log_id(1, 3)));
    assert_eq!(members.log_id(), &Some(log_id(1, 0)));
    assert_eq!(state_machine.revision(), 3);
    assert_eq!(state_machine.get("nodes", "n1"), Some((json!({"ready": true}), 1)));
    assert_eq!(state_machine.get("nodes", "n2"), None);

    let snapshot = state_machine
        .get_current_snapshot()
        .await
        .expect("read snapshot")
        .expect("a snapshot");
    assert_eq!(snapshot.meta, snapshot_meta);
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 2)));
}

#[tokio::test]
async fn after_a_crash_the_state_machine_is_back_at_its_last_snapshot_and_catches_up_from_the_log() {
    let dir = TempDir::new().expect("temp dir");
    let crashed = TempDir::new().expect("temp dir");
    let entries = [
        membership(0),
        write(1, vec![], vec![put("nodes", "n1", json!({"ready": true}))]),
        write(2, vec![], vec![put("nodes", "n2", json!({"ready": false}))]),
        write(3, vec![], vec![del("nodes", "n1")]),
    ];
    let Stores {
        mut log,
        mut state_machine,
    } = open(dir.path()).expect("open");
    log.blocking_append(entries[..3].to_vec()).await.expect("append");
    apply(&mut state_machine, entries[..2].to_vec()).await;
    state_machine.build_snapshot().await.expect("snapshot");
    apply(&mut state_machine, entries[2..3].to_vec()).await;
    log.save_committed(Some(log_id(1, 2))).await.expect("committed");
    // The next append writes the committed id with it.
    log.blocking_append(entries[3..].to_vec()).await.expect("append");
    copy_files(dir.path(), crashed.path(), &STORE_FILES);

    let Stores {
        mut log,
        mut state_machine,
    } = open(crashed.path()).expect("open what the crash left");
    let (applied, _) = state_machine.applied_state().await.expect("applied state");
    assert_eq!(
        applied,
        Some(log_id(1, 1)),
        "the apply after the snapshot was not durable"
    );
    assert_eq!(log.read_committed().await.expect("committed"), Some(log_id(1, 2)));
    assert_eq!(log.get_log_state().await.expect("log").last_log_id, Some(log_id(1, 3)));
    // What openraft does when it starts: apply the log up to the committed id.
    openraft::StorageHelper::new(&mut log, &mut state_machine)
        .get_initial_state()
        .await
        .expect("initial state");
    let (applied, _) = state_machine.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(log_id(1, 2)));
    assert_eq!(state_machine.get("nodes", "n2"), Some((json!({"ready": false}), 2)));
}

/// Every file of a store.
const STORE_FILES: [&str; 3] = ["raft.redb", "raft.wal", "state.redb"];

/// What a crash leaves: the files as they are on disk now, the stores still open.
fn copy_files(from: &std::path::Path, to: &std::path::Path, files: &[&str]) {
    for file in files {
        std::fs::copy(from.join(file), to.join(file)).expect("copy");
    }
}

/// A write of `key` in an entry of `term` at `index`.
fn entry_at(term: u64, index: u64, key: &str) -> typ::Entry {
    typ::Entry {
        log_id: log_id(term, index),
        ..write(index, vec![], vec![put("kv", key, json!(term))])
    }
}

async fn log_ids(log: &mut LogStore) -> Vec<(u64, u64)> {
    let entries = log.try_get_log_entries(0..).await.expect("entries");
    entries
        .iter()
        .map(|e| (e.log_id.leader_id.term, e.log_id.index))
        .collect()
}

#[tokio::test]
async fn appends_and_truncations_survive_a_crash_through_the_write_ahead_file() {
    let dir = TempDir::new().expect("temp dir");
    let crashed = TempDir::new().expect("temp dir");
    let Stores { mut log, .. } = open(dir.path()).expect("open");
    log.blocking_append((1..=3).map(|i| entry_at(1, i, "a")).collect::<Vec<_>>())
        .await
        .expect("append");
    // A new leader's entries replace 2 and 3.
    log.truncate(log_id(1, 2)).await.expect("truncate");
    log.blocking_append(vec![entry_at(2, 2, "b")]).await.expect("append");
    assert_eq!(log_ids(&mut log).await, vec![(1, 1), (2, 2)]);
    copy_files(dir.path(), crashed.path(), &STORE_FILES);
    // Without the write-ahead file, redb alone has none of it: its commits were not durable.
    let without = TempDir::new().expect("temp dir");
    copy_files(dir.path(), without.path(), &["raft.redb", "state.redb"]);
    assert_eq!(log_ids(&mut open(without.path()).expect("open").log).await, vec![]);

    let Stores { mut log, .. } = open(crashed.path()).expect("open what the crash left");
    assert_eq!(log_ids(&mut log).await, vec![(1, 1), (2, 2)]);
    assert_eq!(
        std::fs::metadata(crashed.path().join("raft.wal")).expect("wal").len(),
        0,
        "replayed into redb durably, the write-ahead file starts over"
    );
}

#[tokio::test]
async fn a_crash_between_a_purge_and_the_write_ahead_file_starting_over_leaves_no_purged_entry() {
    let dir = TempDir::new().expect("temp dir");
    let crashed = TempDir::new().expect("temp dir");
    let Stores { mut log, .. } = open(dir.path()).expect("open");
    log.blocking_append((1..=4).map(|i| entry_at(1, i, "a")).collect::<Vec<_>>())
        .await
        .expect("append");
    copy_files(dir.path(), crashed.path(), &["raft.wal"]);
    log.purge(log_id(1, 2)).await.expect("purge");
    copy_files(dir.path(), crashed.path(), &["raft.redb", "state.redb"]);

    let Stores { mut log, .. } = open(crashed.path()).expect("open what the crash left");
    assert_eq!(log_ids(&mut log).await, vec![(1, 3), (1, 4)]);
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
}

#[tokio::test]
async fn the_write_ahead_file_starts_over_once_it_is_large_and_nothing_is_lost() {
    let dir = TempDir::new().expect("temp dir");
    let crashed = TempDir::new().expect("temp dir");
    let Stores { log, .. } = open(dir.path()).expect("open");
    let mut log = log.reset_at(1024);
    let wal = dir.path().join("raft.wal");
    let mut sizes = Vec::new();
    for i in 1..=20 {
        log.blocking_append(vec![entry_at(1, i, "a")]).await.expect("append");
        sizes.push(std::fs::metadata(&wal).expect("wal").len());
    }
    assert!(sizes.contains(&0), "the file never started over: {sizes:?}");
    assert!(sizes.iter().all(|&size| size < 1024), "{sizes:?}");
    copy_files(dir.path(), crashed.path(), &STORE_FILES);
    let Stores { mut log, .. } = open(crashed.path()).expect("open what the crash left");
    assert_eq!(log_ids(&mut log).await, (1..=20).map(|i| (1, i)).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_store_of_the_single_file_layout_has_its_state_machine_moved_to_its_own_file() {
    let dir = TempDir::new().expect("temp dir");
    let entries = vec![
        membership(0),
        write(1, vec![], vec![put("nodes", "n1", json!({"ready": true}))]),
        write(2, vec![], vec![put("nodes", "n2", json!({"ready": false}))]),
    ];
    {
        // As earlier versions wrote it: the log and the state machine in `raft.redb`.
        let db = Arc::new(redb::Database::create(dir.path().join("raft.redb")).expect("create"));
        log::create_tables(&db).expect("log tables");
        state_machine::create_tables(&db).expect("state machine tables");
        let mut log = LogStore::open(db.clone(), &dir.path().join("raft.wal")).expect("log");
        let mut state_machine = StateMachineStore::load(db).expect("load");
        log.blocking_append(entries.clone()).await.expect("append");
        apply(&mut state_machine, entries[..2].to_vec()).await;
        state_machine.build_snapshot().await.expect("snapshot");
        apply(&mut state_machine, entries[2..].to_vec()).await;
    }

    let Stores {
        mut log,
        mut state_machine,
    } = open(dir.path()).expect("open the old layout");
    let (applied, _) = state_machine.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(log_id(1, 2)));
    assert_eq!(state_machine.get("nodes", "n2"), Some((json!({"ready": false}), 2)));
    let snapshot = state_machine
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("a snapshot");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1)));
    assert_eq!(log.get_log_state().await.expect("log").last_log_id, Some(log_id(1, 2)));
    drop((log, state_machine));

    assert!(dir.path().join("state.redb").exists());
    assert!(!dir.path().join("state.redb.new").exists());
    let db = redb::Database::open(dir.path().join("raft.redb")).expect("reopen raft.redb");
    assert!(
        !state_machine::is_in(&db).expect("tables"),
        "raft.redb still holds the state machine"
    );
    drop(db);
    // Opening again changes nothing.
    let Stores { state_machine, .. } = open(dir.path()).expect("open the new layout");
    assert_eq!(state_machine.revision(), 2);
}

/// `entry_at`, written by member `leader` as the leader of `term`.
fn entry_by(leader: NodeId, term: u64, index: u64) -> typ::Entry {
    typ::Entry {
        log_id: typ::LogId::new(CommittedLeaderId::new(term, leader), index),
        ..entry_at(term, index, "a")
    }
}

#[tokio::test]
async fn a_followers_append_is_durable_when_it_returns_and_a_leaders_own_once_synced_in_the_background() {
    let dir = TempDir::new().expect("temp dir");
    let Stores { mut log, .. } = open(dir.path()).expect("open").leading_as(1);
    let durable = log.durable();

    // Member 1 follows member 2 in term 1.
    log.save_vote(&typ::Vote::new_committed(1, 2)).await.expect("vote");
    log.blocking_append(vec![entry_by(2, 1, 1), entry_by(2, 1, 2)])
        .await
        .expect("append");
    assert!(durable.is_durable(2));

    // A truncation, synced: entries from 2 on are gone, and so is their durability.
    log.truncate(log_id(1, 2)).await.expect("truncate");
    assert!(durable.is_durable(1) && !durable.is_durable(2));

    // Member 1 leads term 2: its own entries are durable once the background sync has run.
    log.save_vote(&typ::Vote::new_committed(2, 1)).await.expect("vote");
    log.blocking_append((2..=4).map(|i| entry_by(1, 2, i)).collect::<Vec<_>>())
        .await
        .expect("append");
    tokio::time::timeout(WAIT, durable.wait(4))
        .await
        .expect("synced in time")
        .expect("synced");
    assert_eq!(log_ids(&mut log).await, [(1, 1), (2, 2), (2, 3), (2, 4)]);
}

#[tokio::test]
async fn the_state_machine_applies_an_entry_only_once_it_is_durable_in_the_log() {
    let (_dir, stores) = fresh();
    let (durable, watched) = tokio::sync::watch::channel(durable::Durable::Below(1));
    stores
        .state_machine
        .apply_when_durable(durable::DurableLog::new(watched));
    let mut sm = stores.state_machine.clone();
    let entries = vec![membership(0), write(1, vec![], vec![put("kv", "a", json!(1))])];
    let applying = tokio::spawn(async move { sm.apply(entries).await.map(|_| sm) });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!applying.is_finished(), "applied an entry that is not durable");
    assert_eq!(stores.state_machine.get("kv", "a"), None);

    durable.send_replace(durable::Durable::Below(2));
    let mut sm = tokio::time::timeout(WAIT, applying)
        .await
        .expect("applied in time")
        .expect("task")
        .expect("applied");
    assert_eq!(stores.state_machine.get("kv", "a"), Some((json!(1), 1)));

    // A log that cannot be synced any more: nothing more is applied, and openraft hears why.
    durable.send_replace(durable::Durable::Failed("fdatasync: input/output error".into()));
    let err = sm
        .apply(vec![write(2, vec![], vec![put("kv", "b", json!(2))])])
        .await
        .expect_err("not applied");
    assert!(err.to_string().contains("input/output error"), "{err}");
    assert_eq!(stores.state_machine.get("kv", "b"), None);
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let (dir, _stores) = fresh();
    let err = open(dir.path()).err().expect("the file is locked");
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
}

async fn next(rx: &mut broadcast::Receiver<Committed>) -> Committed {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a committed change")
        .expect("not lagged")
}

#[tokio::test]
async fn watchers_see_each_committed_change_with_its_revision() {
    let (_dir, mut stores) = fresh();
    let sm = &mut stores.state_machine;
    let mut rx = sm.subscribe();

    apply(
        sm,
        vec![
            membership(0),
            write(
                1,
                vec![],
                vec![put("tasks", "t1", json!("new")), put("tasks", "t2", json!("new"))],
            ),
            write(2, vec![at("tasks", "t1", 0)], vec![del("tasks", "t1")]),
            write(3, vec![], vec![del("tasks", "t1"), del("tasks", "absent")]),
        ],
    )
    .await;

    let first = next(&mut rx).await;
    assert_eq!(first.revision, 1);
    assert_eq!(
        *first.changes,
        vec![
            Change {
                table: "tasks".into(),
                key: "t1".into(),
                value: Some(json!("new").into()),
                revision: 1
            },
            Change {
                table: "tasks".into(),
                key: "t2".into(),
                value: Some(json!("new").into()),
                revision: 1
            },
        ]
    );
    // Entry 2's guard failed, so it changed nothing and is not broadcast.
    let second = next(&mut rx).await;
    assert_eq!(second.revision, 3);
    assert_eq!(
        *second.changes,
        vec![Change {
            table: "tasks".into(),
            key: "t1".into(),
            value: None,
            revision: 3
        }]
    );
    assert!(rx.try_recv().is_err(), "nothing else was committed");
    assert_eq!(sm.list_with_revision("tasks").0, 3);
}

#[tokio::test]
async fn installing_a_snapshot_resyncs_watchers() {
    let (_leader_dir, mut leader) = fresh();
    let (_follower_dir, mut follower) = fresh();
    apply(
        &mut leader.state_machine,
        vec![
            membership(0),
            write(
                1,
                vec![],
                vec![put("nodes", "a", json!(1)), put("nodes", "b", json!(1))],
            ),
            write(2, vec![], vec![put("nodes", "b", json!(2))]),
        ],
    )
    .await;
    apply(
        &mut follower.state_machine,
        vec![
            membership(0),
            write(
                1,
                vec![],
                vec![put("nodes", "gone", json!(0)), put("nodes", "a", json!(0))],
            ),
        ],
    )
    .await;
    let snapshot = leader.state_machine.build_snapshot().await.expect("build");
    let mut rx = follower.state_machine.subscribe();

    follower
        .state_machine
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("install");

    let resync = next(&mut rx).await;
    assert_eq!(resync.revision, 2);
    let mut changes: Vec<_> = resync
        .changes
        .iter()
        .cloned()
        .map(|c| (c.key, c.value.map(|v| v.to_value()), c.revision))
        .collect();
    changes.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        changes,
        vec![
            ("a".to_string(), Some(json!(1)), 1),
            ("b".to_string(), Some(json!(2)), 2),
            ("gone".to_string(), None, 2),
        ]
    );
    let sm = &mut follower.state_machine;
    assert_eq!(sm.list("nodes"), leader.state_machine.list("nodes"));
    assert_eq!(sm.revision(), 2);
    let current = sm
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("installed snapshot is current");
    assert_eq!(current.meta, snapshot.meta);
}

#[tokio::test]
async fn a_snapshot_that_does_not_decode_is_refused_and_changes_nothing() {
    let (_dir, mut stores) = fresh();
    let sm = &mut stores.state_machine;
    apply(sm, vec![write(1, vec![], vec![put("t", "k", json!(1))])]).await;
    let meta = typ::SnapshotMeta {
        last_log_id: Some(log_id(2, 9)),
        last_membership: typ::StoredMembership::default(),
        snapshot_id: "bad".into(),
    };
    let bad = Box::new(std::io::Cursor::new(b"{not json".to_vec()));
    assert!(sm.install_snapshot(&meta, bad).await.is_err());
    assert_eq!(sm.get("t", "k"), Some((json!(1), 1)));
    assert_eq!(sm.revision(), 1);
}

/// Three managers over the in-memory network, each on its own redb store.
struct Cluster {
    router: Router,
    machines: BTreeMap<NodeId, StateMachineStore>,
    _dirs: Vec<TempDir>,
}

impl Cluster {
    async fn start(config: openraft::Config) -> Cluster {
        let config = Arc::new(config.validate().expect("valid config"));
        let router = Router::new();
        let mut machines = BTreeMap::new();
        let mut dirs = Vec::new();
        for id in 1..=3 {
            let (dir, stores) = fresh();
            machines.insert(id, stores.state_machine.clone());
            router.start(id, config.clone(), stores).await.expect("start node");
            dirs.push(dir);
        }
        let members: BTreeMap<NodeId, Peer> = (1..=3).map(|id| (id, Router::peer(id))).collect();
        router
            .raft(1)
            .expect("node 1")
            .initialize(members)
            .await
            .expect("initialize");
        let cluster = Cluster {
            router,
            machines,
            _dirs: dirs,
        };
        // Until every node holds the membership (index 0) and the leader's blank entry (index 1), cutting one off
        // could leave the others with no membership, unable to elect anyone.
        for id in 1..=3 {
            cluster.wait_applied(id, 1).await;
        }
        cluster
    }

    fn raft(&self, id: NodeId) -> typ::Raft {
        self.router.raft(id).expect("node is running")
    }

    /// Waits until `observer` sees a leader other than `not`.
    async fn leader(&self, observer: NodeId, not: Option<NodeId>) -> NodeId {
        let metrics = self
            .raft(observer)
            .wait(Some(WAIT))
            .metrics(|m| m.current_leader.is_some() && m.current_leader != not, "a leader")
            .await
            .expect("a leader is elected");
        metrics.current_leader.expect("checked above")
    }

    async fn wait_applied(&self, id: NodeId, index: u64) {
        self.raft(id)
            .wait(Some(WAIT))
            .applied_index_at_least(Some(index), "applied")
            .await
            .expect("the entry is applied");
    }

    async fn shutdown(self) {
        for id in 1..=3 {
            self.raft(id).shutdown().await.expect("shutdown");
        }
    }
}

fn put_request(key: &str, value: serde_json::Value) -> Request {
    Request {
        guards: vec![],
        ops: vec![put("kv", key, value)],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_elect_a_leader_and_replicate_a_write() {
    let cluster = Cluster::start(raft_config(1000, 50, 150, 300)).await;
    let leader = cluster.leader(1, None).await;

    let request = Request {
        guards: vec![at("kv", "greeting", 0)],
        ops: vec![put("kv", "greeting", json!("hello"))],
    };
    let written = cluster
        .raft(leader)
        .client_write(request.into())
        .await
        .expect("write on the leader");
    let index = written.log_id.index;
    assert_eq!(written.data, Response::Applied { revision: index });
    for id in 1..=3 {
        cluster.wait_applied(id, index).await;
        assert_eq!(
            cluster.machines[&id].get("kv", "greeting"),
            Some((json!("hello"), index))
        );
    }

    // A follower does not take writes; it names the leader to forward to.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let err = cluster
        .raft(follower)
        .client_write(put_request("x", json!(1)).into())
        .await
        .expect_err("followers refuse writes");
    let forward = err.forward_to_leader().expect("ForwardToLeader");
    assert_eq!(forward.leader_id, Some(leader));
    assert_eq!(forward.leader_node, Some(Router::peer(leader)));

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_loses_quorum_and_the_rest_carry_on() {
    let cluster = Cluster::start(raft_config(1000, 50, 150, 300)).await;
    let old = cluster.leader(1, None).await;
    let others: Vec<NodeId> = (1..=3).filter(|id| *id != old).collect();

    cluster.router.isolate(old);
    // A write to the cut-off leader does not fail by itself: it waits for a quorum that never answers.
    let stranded = tokio::spawn({
        let raft = cluster.raft(old);
        async move { raft.client_write(put_request("lost", json!(true)).into()).await }
    });
    // A linearizable read on it does fail: it cannot confirm its leadership.
    let read = cluster.raft(old).ensure_linearizable().await;
    assert!(
        matches!(
            read,
            Err(typ::RaftError::APIError(typ::CheckIsLeaderError::QuorumNotEnough(_)))
        ),
        "{read:?}"
    );

    let new = cluster.leader(others[0], Some(old)).await;
    assert_ne!(new, old);
    let written = cluster
        .raft(new)
        .client_write(put_request("after", json!(1)).into())
        .await
        .expect("the majority takes writes");
    assert!(!stranded.is_finished());

    cluster.router.heal();
    cluster.wait_applied(old, written.log_id.index).await;
    assert_eq!(
        cluster.machines[&old].get("kv", "after"),
        Some((json!(1), written.log_id.index))
    );
    assert_eq!(cluster.machines[&old].get("kv", "lost"), None);
    // Once the old leader's unreplicated entry is overwritten, its waiting writer is told where the leader is.
    let stranded = tokio::time::timeout(WAIT, stranded)
        .await
        .expect("the stranded write resolves")
        .expect("task");
    let err = stranded.expect_err("the stranded write was not committed");
    assert!(err.forward_to_leader().is_some(), "{err:?}");

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_manager_catches_up_from_a_snapshot() {
    let cluster = Cluster::start(raft_config(5, 50, 150, 300)).await;
    let leader = cluster.leader(1, None).await;
    let lagging = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut rx = cluster.machines[&lagging].subscribe();

    cluster.router.isolate(lagging);
    let mut last = 0;
    for i in 0..30 {
        last = cluster
            .raft(leader)
            .client_write(put_request(&format!("k{i:02}"), json!(i)).into())
            .await
            .expect("write")
            .log_id
            .index;
    }
    // The leader snapshots every 5 entries and keeps 5 in the log, so the follower's next entry is gone.
    cluster
        .raft(leader)
        .wait(Some(WAIT))
        .metrics(|m| m.purged.is_some_and(|p| p.index > 5), "log purged")
        .await
        .expect("the leader purges its log");

    cluster.router.rejoin(lagging);
    cluster.wait_applied(lagging, last).await;
    let sm = &cluster.machines[&lagging];
    assert_eq!(sm.list("kv"), cluster.machines[&leader].list("kv"));
    assert_eq!(sm.list("kv").len(), 30);

    let snapshot = cluster.raft(lagging).get_snapshot().await.expect("get snapshot");
    assert!(snapshot.is_some(), "the follower keeps the installed snapshot");
    // The install reached watchers as one resync carrying many keys.
    let mut saw_resync = false;
    while let Ok(committed) = rx.try_recv() {
        saw_resync |= committed.changes.len() > 1;
    }
    assert!(saw_resync, "watchers get a resync from the snapshot");

    cluster.shutdown().await;
}

#[test]
fn a_json_value_keeps_its_text_and_serializes_as_it() {
    let value = json!({"b": 1, "a": [true, null, "x\u{e9}"], "c": {"d": 1.5}});
    let stored = Json::from(value.clone());
    // The same bytes a `Value` serializes to, in the log, the snapshots and on the wire.
    assert_eq!(stored.as_str(), serde_json::to_string(&value).unwrap());
    let op = put("t", "k", value.clone());
    let text = serde_json::to_string(&op).unwrap();
    assert_eq!(
        text,
        serde_json::to_string(&json!({"Put": {"table": "t", "key": "k", "value": value}})).unwrap()
    );
    let back: Op = serde_json::from_str(&text).unwrap();
    assert_eq!(back, op);
    assert_eq!(stored.to_value(), value);
    assert_eq!(stored, value);
    #[derive(serde::Deserialize, PartialEq, Debug)]
    struct OnlyB {
        b: u64,
    }
    assert_eq!(stored.decode::<OnlyB>().unwrap(), OnlyB { b: 1 });
    assert!(stored.decode::<u64>().is_err());
}

#[test]
fn a_single_request_is_stored_as_before_and_a_batch_round_trips() {
    let request = Request {
        guards: vec![at("kv", "a", 0)],
        ops: vec![put("kv", "a", json!({"x": [1, 2]})), del("kv", "b")],
    };
    let one = serde_json::to_string(&Proposal::from(request.clone())).unwrap();
    // Log entries written before batches existed read back as one request.
    assert_eq!(one, serde_json::to_string(&request).unwrap());
    assert_eq!(
        serde_json::from_str::<Proposal>(&one).unwrap(),
        Proposal::One(request.clone())
    );

    let batch = Proposal::Batch {
        batch: vec![request.clone(), put_request("c", json!(3))],
    };
    let text = serde_json::to_string(&batch).unwrap();
    assert_eq!(serde_json::from_str::<Proposal>(&text).unwrap(), batch);

    let mixed = r#"{"guards": [], "ops": [], "batch": []}"#;
    let err = serde_json::from_str::<Proposal>(mixed).expect_err("both shapes at once");
    assert!(err.to_string().contains("either `guards` and `ops`"), "{err}");
}

#[tokio::test]
async fn a_batch_applies_each_request_on_its_own_at_the_entrys_revision() {
    let (_dir, mut stores) = fresh();
    let sm = &mut stores.state_machine;
    apply(sm, vec![write(1, vec![], vec![put("kv", "taken", json!(0))])]).await;
    let mut rx = sm.subscribe();

    let batch = Proposal::Batch {
        batch: vec![
            put_request("a", json!(1)),
            // Its guard fails: only this request is left out.
            Request {
                guards: vec![at("kv", "taken", 0)],
                ops: vec![put("kv", "taken", json!("mine"))],
            },
            Request {
                guards: vec![at("kv", "c", 0)],
                ops: vec![put("kv", "c", json!(3)), del("kv", "never-there")],
            },
        ],
    };
    let responses = apply(sm, vec![entry(2, EntryPayload::Normal(batch))]).await;

    assert_eq!(
        responses,
        vec![Response::Batch(vec![
            Response::Applied { revision: 2 },
            Response::GuardFailed {
                index: 0,
                actual_revision: 1
            },
            Response::Applied { revision: 2 },
        ])]
    );
    assert_eq!(sm.get("kv", "a"), Some((json!(1), 2)));
    assert_eq!(sm.get("kv", "taken"), Some((json!(0), 1)));
    assert_eq!(sm.get("kv", "c"), Some((json!(3), 2)));
    // Watchers get the entry as one change set, as a request with several ops.
    let committed = rx.try_recv().expect("one change set");
    assert_eq!(committed.revision, 2);
    let keys: Vec<&str> = committed.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["a", "c"]);
    assert!(rx.try_recv().is_err(), "one entry, one change set");
}

/// Writes that queue up while the proposer's slots are taken share entries; each gets its own response, and two
/// concurrent writes to one key never share an entry (each keeps its own revision).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proposer_shares_entries_between_concurrent_writes_of_different_keys() {
    let cluster = Cluster::start(raft_config(1000, 50, 150, 300)).await;
    let leader = cluster.leader(1, None).await;
    let proposer = Proposer::start(cluster.raft(leader));
    let before = cluster.raft(leader).metrics().borrow().last_log_index.unwrap_or(0);

    let writes = 200;
    let mut calls = Vec::new();
    for i in 0..writes {
        let proposer = proposer.clone();
        // Every tenth write goes to the same key: those must land in separate entries.
        let key = if i % 10 == 0 {
            "same".to_string()
        } else {
            format!("k{i}")
        };
        let request = Request {
            guards: if i == 1 { vec![at("kv", "nothing", 7)] } else { vec![] },
            ops: vec![put("kv", &key, json!(i))],
        };
        calls.push(tokio::spawn(async move { proposer.write(request).await }));
    }
    let mut revisions = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        let response = call.await.expect("task").expect("committed");
        match (i, response) {
            (
                1,
                Response::GuardFailed {
                    index: 0,
                    actual_revision: 0,
                },
            ) => {}
            (_, Response::Applied { revision }) if i != 1 => revisions.push((i, revision)),
            (i, other) => panic!("write {i}: {other:?}"),
        }
    }

    let last = cluster.raft(leader).metrics().borrow().last_log_index.unwrap_or(0);
    assert!(
        last - before < writes as u64 / 2,
        "{writes} concurrent writes took {} entries",
        last - before
    );
    // Concurrent writes to one key: each in an entry of its own, the last one applied wins.
    let mut same: Vec<(u64, usize)> = revisions
        .iter()
        .filter(|(i, _)| i % 10 == 0)
        .map(|(i, r)| (*r, *i))
        .collect();
    same.sort();
    assert!(
        same.windows(2).all(|w| w[0].0 < w[1].0),
        "one key, one revision each: {same:?}"
    );
    cluster.wait_applied(leader, last).await;
    let sm = &cluster.machines[&leader];
    let (revision, i) = same.last().copied().expect("writes to the same key");
    assert_eq!(sm.get("kv", "same"), Some((json!(i), revision)));
    for (i, revision) in revisions.iter().filter(|(i, _)| i % 10 != 0) {
        assert_eq!(sm.get("kv", &format!("k{i}")), Some((json!(i), *revision)));
    }
    assert_eq!(sm.get("kv", "k1"), None, "the guarded write failed alone");

    // A follower's proposer says where the leader is, for every write of the entry.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let err = Proposer::start(cluster.raft(follower))
        .write(put_request("x", json!(1)))
        .await
        .expect_err("followers refuse writes");
    assert!(err.forward_to_leader().is_some(), "{err:?}");

    cluster.shutdown().await;
}
