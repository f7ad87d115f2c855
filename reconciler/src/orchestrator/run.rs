//! The orchestrator's loop on the leader: read the store, decide ([`super::reconcile`]), write, and wait for the
//! next change, the next restart delay or the periodic resync.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use swarm_specs::spec::NetworkSpec;
use swarm_specs::task::Task;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::watch;

use super::Actions;
use super::Inputs;
use crate::cluster::now_millis;
use crate::cluster::Cluster;
use crate::cluster::Node;
use crate::manager::Manager;
use crate::manager::ManagerError;
use crate::objects::Service;
use crate::store;
use crate::store::Guard;
use crate::store::Object;
use crate::store::Op;
use crate::store::Request;

/// A pass runs at least this often even without changes (rule 2's resync).
pub const RESYNC: Duration = Duration::from_secs(2);
/// Ops per Raft entry: placing 10,000 tasks costs 10 entries, not 10,000.
pub const OPS_PER_ENTRY: usize = 1_000;

/// Runs until `shutdown`; passes only while this manager leads.
pub async fn run(manager: Arc<Manager>, mut shutdown: watch::Receiver<bool>) {
    let mut changes = manager.sm.subscribe();
    let mut tasks = TaskCache::default();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut wait = RESYNC;
        if manager.is_leader() {
            // Every change received so far (the previous pass's writes among them) is in the copy.
            loop {
                match changes.try_recv() {
                    Ok(c) => tasks.apply(&c),
                    Err(TryRecvError::Lagged(_)) => {
                        changes = manager.sm.subscribe();
                        tasks.forget();
                    }
                    Err(_) => break,
                }
            }
            tasks.load(&manager.sm);
            match pass(&manager, &tasks).await {
                Ok(Some(at)) => {
                    let now = now_millis();
                    wait = wait.min(Duration::from_millis(at.saturating_sub(now).max(1)));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!("orchestrator pass: {e}");
                    wait = Duration::from_millis(100);
                }
            }
        } else {
            // A follower keeps no copy: it would decode every change for nothing.
            tasks.forget();
        }
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = &mut deadline => break,
                committed = changes.recv() => match committed {
                    Ok(c) => {
                        tasks.apply(&c);
                        if c.changes.iter().any(|ch| relevant(&ch.table)) {
                            break;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        changes = manager.sm.subscribe();
                        tasks.forget();
                        break;
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }
}

/// The leader's orchestrator's copy of the tasks, decoded once and kept up to date from the watch stream, so a pass
/// over 150,000 tasks does not copy and decode all of them from the store again. It can be behind the store by the
/// changes not yet received; every write of a pass is guarded by the revisions it read, so a stale copy costs a
/// failed guard and another pass, never a wrong write.
#[derive(Default)]
pub struct TaskCache {
    /// Sorted by id, as the store lists them (the decision is deterministic for the same inputs).
    by_id: BTreeMap<String, (Task, u64)>,
    /// The store's revision when the copy was read; `None` when there is no copy.
    loaded: Option<u64>,
}

impl TaskCache {
    /// Reads every task from the store unless the copy is there already.
    pub fn load(&mut self, sm: &store::StateMachineStore) {
        if self.loaded.is_some() {
            return;
        }
        let (revision, rows) = sm.list_with_revision(Task::TABLE);
        self.by_id = rows
            .into_iter()
            .filter_map(|(key, value, rev)| store::decode::<Task>(&key, &value).map(|t| (key, (t, rev))))
            .collect();
        self.loaded = Some(revision);
    }

    pub fn forget(&mut self) {
        self.by_id = BTreeMap::new();
        self.loaded = None;
    }

    /// One committed entry's task changes (nothing without a copy; changes the copy holds already are skipped).
    pub fn apply(&mut self, committed: &store::Committed) {
        let Some(floor) = self.loaded else { return };
        if committed.revision <= floor {
            return;
        }
        for change in committed.changes.iter().filter(|c| c.table == Task::TABLE) {
            let task = change
                .value
                .as_ref()
                .and_then(|v| store::decode::<Task>(&change.key, v));
            match task {
                Some(t) => self.by_id.insert(change.key.clone(), (t, change.revision)),
                None => self.by_id.remove(&change.key),
            };
        }
    }

    /// The tasks with their revisions, borrowed, in id order.
    pub fn rows(&self) -> Vec<(&Task, u64)> {
        self.by_id.values().map(|(t, r)| (t, *r)).collect()
    }
}

fn relevant(table: &str) -> bool {
    table == Task::TABLE || table == Service::TABLE || table == Node::TABLE || table == Cluster::TABLE
}

/// One pass: decide and write. Returns when to run again for a restart delay.
pub async fn pass(manager: &Manager, tasks: &TaskCache) -> Result<Option<u64>, ManagerError> {
    let listed = store::list::<Service>(&manager.sm);
    let revisions: HashMap<String, u64> = listed.iter().map(|(s, r)| (s.spec.name.clone(), *r)).collect();
    let services: Vec<Service> = listed.into_iter().map(|(s, _)| s).collect();
    let tasks = tasks.rows();
    let nodes: Vec<Node> = manager.nodes();
    let history_limit = manager
        .cluster()
        .map(|c| c.settings.task_history_limit as usize)
        .unwrap_or(5)
        .max(1);
    let networks: Vec<NetworkSpec> = store::list::<NetworkSpec>(&manager.sm)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let inputs = Inputs {
        services: &services,
        tasks: &tasks,
        nodes: &nodes,
        networks: &networks,
        now: now_millis(),
        history_limit,
    };
    let actions = super::reconcile(&inputs, &mut crate::ca::new_id);
    let wake_at = actions.wake_at;
    // Rollout progress is written after the tasks it was decided with, guarded against a concurrent change of the
    // service (an operator's update wins; the next pass decides again).
    let rollouts: Vec<Request> = actions
        .services
        .iter()
        .map(|s| Request {
            guards: vec![Guard::Revision {
                table: Service::TABLE.to_string(),
                key: s.spec.name.clone(),
                revision: revisions.get(&s.spec.name).copied().unwrap_or(0),
            }],
            ops: vec![store::put(s)],
        })
        .collect();
    for request in requests(actions).into_iter().chain(rollouts) {
        if let store::Response::GuardFailed { .. } = manager.write_as_leader(request).await? {
            // Someone (an agent's status report) wrote a task meanwhile: the next pass decides again.
            return Ok(Some(now_millis()));
        }
    }
    Ok(wake_at)
}

/// The actions as guarded writes of at most [`OPS_PER_ENTRY`] ops each: creations first (guarded on absence), then
/// updates and deletions (guarded on the revision the decision read).
pub fn requests(actions: Actions) -> Vec<Request> {
    let mut items: Vec<(Guard, Op)> = Vec::new();
    for task in &actions.create {
        items.push((guard(&task.id, 0), store::put(task)));
    }
    for (task, revision) in &actions.update {
        items.push((guard(&task.id, *revision), store::put(task)));
    }
    for (id, revision) in &actions.delete {
        items.push((guard(id, *revision), store::delete::<Task>(id)));
    }
    items
        .chunks(OPS_PER_ENTRY)
        .map(|chunk| Request {
            guards: chunk.iter().map(|(g, _)| g.clone()).collect(),
            ops: chunk.iter().map(|(_, o)| o.clone()).collect(),
        })
        .collect()
}

fn guard(id: &str, revision: u64) -> Guard {
    Guard::Revision {
        table: Task::TABLE.to_string(),
        key: id.to_string(),
        revision,
    }
}

#[cfg(test)]
mod tests {
    use swarm_specs::spec::Driver;
    use swarm_specs::spec::TaskSpec;
    use swarm_specs::task::TaskState;
    use swarm_specs::task::TaskStatus;

    use super::*;
    use crate::store::Change;
    use crate::store::Committed;

    fn task(id: &str, state: TaskState) -> Task {
        Task {
            id: id.into(),
            service: "s_web".into(),
            slot: Some(1),
            node_id: Some("n1".into()),
            spec_version: 1,
            spec: TaskSpec::with_command(Driver::Process, None, vec!["true".into()]),
            desired_state: TaskState::Running,
            status: TaskStatus::new(state, 1, ""),
            created_at: 1,
            ports: Vec::new(),
            networks: Vec::new(),
            started_at: None,
        }
    }

    fn committed(revision: u64, changes: Vec<(&str, Option<Task>)>) -> Committed {
        Committed {
            revision,
            changes: changes
                .into_iter()
                .map(|(key, t)| Change {
                    table: Task::TABLE.into(),
                    key: key.into(),
                    value: t.map(|t| store::Json::encode(&t).unwrap()),
                    revision,
                })
                .chain([Change {
                    table: "services".into(),
                    key: "s_web".into(),
                    value: None,
                    revision,
                }])
                .collect::<Vec<_>>()
                .into(),
        }
    }

    #[test]
    fn the_task_copy_follows_changes_after_its_listing_and_only_those() {
        let mut cache = TaskCache::default();
        // No copy: changes are not even decoded.
        cache.apply(&committed(1, vec![("a", Some(task("a", TaskState::Assigned)))]));
        assert!(cache.rows().is_empty());

        // Listed at revision 5: a change at or below it is in the listing already (or was overtaken by it).
        cache.by_id.insert("a".into(), (task("a", TaskState::Running), 5));
        cache.loaded = Some(5);
        cache.apply(&committed(4, vec![("a", Some(task("a", TaskState::Starting)))]));
        assert_eq!(cache.rows()[0].0.status.state, TaskState::Running);

        // Later changes: updated, added, deleted; other tables ignored.
        cache.apply(&committed(
            6,
            vec![
                ("a", Some(task("a", TaskState::Failed))),
                ("b", Some(task("b", TaskState::New))),
            ],
        ));
        let rows = cache.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].0.status.state, rows[0].1), (TaskState::Failed, 6));
        assert_eq!(rows[1].0.id, "b");
        cache.apply(&committed(7, vec![("a", None)]));
        assert_eq!(
            cache.rows().iter().map(|(t, _)| t.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );

        cache.forget();
        assert!(cache.rows().is_empty());
    }
}
