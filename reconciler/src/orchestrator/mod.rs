//! The orchestrator's decision (pure): from services, tasks and nodes, which tasks to create, which to stop and
//! which to forget; then the scheduler's placement of the new ones.
//!
//! [`reconcile`] is level-triggered: it looks at the whole state and returns [`Actions`]; applying them and running
//! it again changes nothing (until time passes a restart delay, which [`Actions::wake_at`] names). Each task has a
//! *key*: its slot for replicated services and jobs, its node for global ones. Per key:
//! - a live task (desired state Running or earlier) whose run ended, or whose node is gone, Down or drained, is told
//!   to shut down;
//! - a key without a live task gets a new one — at once when the last task was stopped by the cluster (an update, a
//!   drain, a lost node), after the restart policy's delay when it failed or exited, never when the policy says no;
//! - a key whose live task is of an older task version is updated: stop-first (the old task stops before the new
//!   one is created) or start-first, at most `update_config.parallelism` keys at a time;
//! - finished tasks beyond the history limit are deleted, and every task of a removed service.
//!
//! The invariant the tests check: outside a start-first update, a key never holds two live tasks on Ready nodes.

pub mod run;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::HashMap;

use swarm_specs::spec::FailureAction;
use swarm_specs::spec::NetworkSpec;
use swarm_specs::spec::RestartCondition;
use swarm_specs::spec::ServiceMode;
use swarm_specs::spec::UpdateConfig;
use swarm_specs::spec::UpdateOrder;
use swarm_specs::task::Task;
use swarm_specs::task::TaskState;
use swarm_specs::task::TaskStatus;

use crate::cluster::Availability;
use crate::cluster::Node;
use crate::cluster::NodeStatus;
use crate::objects::Service;
use crate::objects::UpdateState;
use crate::objects::UpdateStatus;
use crate::scheduler;
use crate::scheduler::Decision;

/// Failures of a service on a node within this period make the scheduler try the node last.
pub const RECENT_FAILURE_WINDOW_MS: u64 = 5 * 60 * 1000;

/// What the orchestrator sees.
pub struct Inputs<'a> {
    pub services: &'a [Service],
    /// Every task with its mod revision.
    pub tasks: &'a [(&'a Task, u64)],
    pub nodes: &'a [Node],
    /// The stored networks, copied into each new task that attaches to one (its node creates it from that).
    pub networks: &'a [NetworkSpec],
    pub now: u64,
    /// Tasks kept per key, the live one included (Swarm's `task-history-limit`, default 5).
    pub history_limit: usize,
}

/// What to write.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Actions {
    pub create: Vec<Task>,
    /// Existing tasks with their new value and the revision they were read at.
    pub update: Vec<(Task, u64)>,
    /// Task ids to delete with the revision they were read at.
    pub delete: Vec<(String, u64)>,
    /// Services whose rollout moved on (update status, or rolled back to their previous spec), to write guarded on
    /// the revision they were read at.
    pub services: Vec<Service>,
    /// The earliest time a restart delay, an update delay or a monitor period runs out: run again then.
    pub wake_at: Option<u64>,
}

impl Actions {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty() && self.services.is_empty()
    }
}

/// A task's key within its service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Key {
    Slot(u64),
    Node(String),
}

/// The working set: every task, the changes made to it, and the new ones.
struct Work<'a> {
    inputs: &'a Inputs<'a>,
    /// Borrowed until changed: a pass over 100,000 settled tasks copies none of them.
    tasks: Vec<Cow<'a, Task>>,
    /// For tasks that existed: their revision. New tasks are those past `existing`.
    revisions: Vec<u64>,
    existing: usize,
    deleted: Vec<bool>,
    nodes: HashMap<&'a str, &'a Node>,
    wake_at: Option<u64>,
    services: Vec<Service>,
}

impl Work<'_> {
    fn live(&self, i: usize) -> bool {
        !self.deleted[i] && self.tasks[i].desired_state <= TaskState::Running
    }

    fn node(&self, i: usize) -> Option<&Node> {
        self.tasks[i]
            .node_id
            .as_deref()
            .and_then(|id| self.nodes.get(id).copied())
    }

    /// A task's node is lost to it: removed, Down, or drained.
    fn node_lost(&self, i: usize) -> bool {
        if self.tasks[i].node_id.is_none() {
            return false;
        }
        match self.node(i) {
            None => true,
            Some(n) => n.status == NodeStatus::Down || n.availability == Availability::Drain,
        }
    }

    /// A task told to stop that may still be running where it can be seen stopping (its node is up).
    fn stopping(&self, i: usize) -> bool {
        let t = &self.tasks[i];
        !self.deleted[i]
            && t.desired_state > TaskState::Running
            && t.status.state <= TaskState::Running
            && t.status.state >= TaskState::Assigned
            && self.node(i).is_some_and(|n| n.status == NodeStatus::Ready)
    }

    fn shut_down(&mut self, i: usize) {
        if self.tasks[i].desired_state <= TaskState::Running {
            self.tasks[i].to_mut().desired_state = TaskState::Shutdown;
        }
    }

    fn delete(&mut self, i: usize) {
        self.deleted[i] = true;
    }

    fn wake(&mut self, at: u64) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    fn create(&mut self, service: &Service, key: &Key, new_id: &mut dyn FnMut() -> String) {
        let now = self.inputs.now;
        let (slot, node_id, status) = match key {
            Key::Slot(s) => (
                Some(*s),
                None,
                TaskStatus::new(TaskState::Pending, now, "pending task scheduling"),
            ),
            // Pinned to its node, pending until the scheduler has checked that it fits there.
            Key::Node(n) => (
                None,
                Some(n.clone()),
                TaskStatus::new(TaskState::Pending, now, "pending task scheduling"),
            ),
        };
        self.tasks.push(Cow::Owned(Task {
            id: new_id(),
            service: service.spec.name.clone(),
            slot,
            node_id,
            spec_version: service.task_version,
            spec: service.spec.task.clone(),
            desired_state: TaskState::Running,
            status,
            created_at: now,
            ports: service.spec.ports.clone(),
            networks: service
                .spec
                .task
                .networks
                .iter()
                .filter_map(|a| self.inputs.networks.iter().find(|n| n.name == a.target))
                .cloned()
                .collect(),
            started_at: None,
        }));
        self.revisions.push(0);
        self.deleted.push(false);
    }
}

/// What a key needs.
enum Need {
    Nothing,
    Create,
    /// Its live task is of an older version.
    Update,
}

/// The orchestrator's decision for the whole cluster. `new_id` names new tasks.
pub fn reconcile(inputs: &Inputs, new_id: &mut dyn FnMut() -> String) -> Actions {
    let mut work = Work {
        inputs,
        tasks: inputs.tasks.iter().map(|(t, _)| Cow::Borrowed(*t)).collect(),
        revisions: inputs.tasks.iter().map(|(_, r)| *r).collect(),
        existing: inputs.tasks.len(),
        deleted: vec![false; inputs.tasks.len()],
        nodes: inputs.nodes.iter().map(|n| (n.id.as_str(), n)).collect(),
        wake_at: None,
        services: Vec::new(),
    };
    let services: HashMap<&str, &Service> = inputs.services.iter().map(|s| (s.spec.name.as_str(), s)).collect();
    let mut by_service: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for i in 0..work.existing {
        if inputs.tasks[i].0.is_manual() {
            continue; // placed by hand (`swarm debug run`): not the orchestrator's
        }
        let name = inputs.tasks[i].0.service.as_str();
        let Some(service) = services.get(name) else {
            work.delete(i); // the service is gone: its tasks go (the agents stop them)
            continue;
        };
        by_service.entry(name).or_default().push(i);
        // A task whose run ended, or whose node is lost (except a global task on a Down node: it has nowhere else
        // to go), is no longer live.
        let global = matches!(service.spec.mode, ServiceMode::Global | ServiceMode::GlobalJob);
        let ended = work.tasks[i].status.state.is_terminal();
        let lost =
            work.node_lost(i) && !(global && work.node(i).is_some_and(|n| n.availability != Availability::Drain));
        if work.live(i) && (ended || lost) {
            work.shut_down(i);
        }
    }
    for service in inputs.services {
        let indexes = by_service.remove(service.spec.name.as_str()).unwrap_or_default();
        reconcile_service(&mut work, service, indexes, new_id);
    }
    place(&mut work);
    finish(work)
}

fn reconcile_service(work: &mut Work, service: &Service, indexes: Vec<usize>, new_id: &mut dyn FnMut() -> String) {
    let mut keyed: BTreeMap<Key, Vec<usize>> = BTreeMap::new();
    for &i in &indexes {
        let t = &work.tasks[i];
        let key = match (&service.spec.mode, t.slot, &t.node_id) {
            (ServiceMode::Global | ServiceMode::GlobalJob, _, Some(node)) => Key::Node(node.clone()),
            (_, Some(slot), _) => Key::Slot(slot),
            _ => {
                // A task without its key (a mode change): it has no place any more.
                work.shut_down(i);
                continue;
            }
        };
        keyed.entry(key).or_default().push(i);
    }
    // Which keys the service should have, and whether each is done (a job's completed key).
    let wanted: Vec<Key> = match &service.spec.mode {
        ServiceMode::Replicated { replicas } => (1..=*replicas).map(Key::Slot).collect(),
        ServiceMode::ReplicatedJob { total_completions, .. } => (1..=*total_completions).map(Key::Slot).collect(),
        ServiceMode::Global | ServiceMode::GlobalJob => global_nodes(work, service, &keyed),
    };
    let job = matches!(
        service.spec.mode,
        ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob
    );
    // Keys no longer wanted: stop their tasks; forget them once finished.
    let unwanted: Vec<Key> = keyed.keys().filter(|k| !wanted.contains(k)).cloned().collect();
    for key in unwanted {
        for &i in &keyed[&key] {
            work.shut_down(i);
            if work.tasks[i].status.state.is_terminal() || !work.stopping(i) {
                work.delete(i);
            }
        }
    }
    let rollout = Rollout::of(service);
    if rollout.state.is_some_and(UpdateState::is_rollback) {
        adopt_rolled_back(work, service, &keyed);
    }
    // Too many updated tasks failed: the failure action decides before anything else moves.
    let mut paused = matches!(rollout.state, Some(UpdateState::Paused | UpdateState::RollbackPaused));
    if rollout.in_progress() {
        if let Some(verdict) = rollout.failure(work, service, &indexes, wanted.len(), job) {
            match verdict {
                Verdict::RolledBack(rolled_back) => {
                    // The next pass (woken by the service's change) replaces the tasks.
                    work.services.push(rolled_back);
                    return;
                }
                Verdict::Paused(service) => {
                    work.services.push(service);
                    paused = true;
                }
            }
        }
    }
    let mut updates = Vec::new();
    let mut in_progress = 0u64;
    let mut live_jobs = 0u64;
    let mut job_candidates = Vec::new();
    // Every wanted key holds a running task of the current version (the rollout may complete).
    let mut all_current = true;
    let mut last_started = None::<u64>;
    for key in &wanted {
        let members = keyed.get(key).cloned().unwrap_or_default();
        if job && completed(work, service, &members) {
            continue;
        }
        let need = key_need(work, service, &members, job);
        let live_here = members.iter().any(|&i| work.live(i));
        live_jobs += u64::from(job && live_here);
        let current = members
            .iter()
            .copied()
            .find(|&i| work.live(i) && work.tasks[i].spec_version == service.task_version);
        match current.map(|i| &work.tasks[i]) {
            Some(t) if t.status.state == TaskState::Running => {
                // Rolled out by this update: the next key waits `delay` after it started.
                if rollout.in_progress() && t.created_at >= rollout.since {
                    let started = t.started_at.unwrap_or(t.status.timestamp);
                    last_started = last_started.max(Some(started));
                    let free_at = started.saturating_add(rollout.config.delay_ms);
                    if work.inputs.now < free_at {
                        in_progress += 1;
                        work.wake(free_at);
                    }
                }
            }
            Some(_) => {
                in_progress += 1;
                all_current = false;
            }
            None => {
                all_current = false;
                if !live_here && members.iter().any(|&i| work.stopping(i)) {
                    in_progress += 1;
                }
            }
        }
        match need {
            Need::Nothing => {}
            Need::Create if job => job_candidates.push(key.clone()),
            Need::Create => {
                // The new task is in flight from now on.
                work.create(service, key, new_id);
                in_progress += 1;
            }
            Need::Update => updates.push((key.clone(), members)),
        }
    }
    if let ServiceMode::ReplicatedJob { max_concurrent, .. } = service.spec.mode {
        let room = max_concurrent.max(1).saturating_sub(live_jobs);
        job_candidates.truncate(usize::try_from(room).unwrap_or(usize::MAX));
    }
    for key in job_candidates {
        work.create(service, &key, new_id);
    }
    // Rolling update: at most `parallelism` keys in flight (0 = all), none while paused.
    let parallelism = rollout.config.parallelism;
    let budget = if paused {
        0
    } else if parallelism == 0 {
        usize::MAX
    } else {
        usize::try_from(parallelism.saturating_sub(in_progress)).unwrap_or(usize::MAX)
    };
    let remaining = updates.len();
    for (key, members) in updates.into_iter().take(budget) {
        match rollout.config.order {
            UpdateOrder::StopFirst => {
                for i in members {
                    work.shut_down(i);
                }
            }
            UpdateOrder::StartFirst => work.create(service, &key, new_id),
        }
    }
    // Every key rolled out and running: the update completes once the last task has been watched for `monitor`.
    if rollout.in_progress() && remaining == 0 && (all_current || job) {
        let done_at = last_started.map_or(0, |t| t.saturating_add(rollout.config.monitor_ms));
        if work.inputs.now >= done_at || job {
            work.services.push(rollout.completed(service, work.inputs.now));
        } else {
            work.wake(done_at);
        }
    }
    // The restart policy counts failures in the kept history: keep at least enough of it to count them.
    let policy = &service.spec.task.restart_policy;
    let keep = if policy.max_attempts > 0 {
        work.inputs.history_limit.max(
            usize::try_from(policy.max_attempts)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
        )
    } else {
        work.inputs.history_limit
    };
    for members in keyed.values() {
        reap(work, members, keep);
    }
}

/// A service's rollout as the orchestrator drives it: its state, since when, and the config that paces it.
struct Rollout<'a> {
    state: Option<UpdateState>,
    since: u64,
    config: &'a UpdateConfig,
}

/// What too many failures lead to.
enum Verdict {
    Paused(Service),
    RolledBack(Service),
}

impl<'a> Rollout<'a> {
    fn of(service: &'a Service) -> Rollout<'a> {
        Rollout {
            state: service.update_status.as_ref().map(|u| u.state),
            since: service.update_status.as_ref().map_or(0, |u| u.started_at),
            config: service.rollout_config(),
        }
    }

    fn in_progress(&self) -> bool {
        self.state.is_some_and(UpdateState::in_progress)
    }

    /// Tasks of this rollout that failed (or, outside jobs, exited) before running or within `monitor` after they
    /// started; past `max_failure_ratio` of the keys, the failure action: pause, or roll back (continue: nothing).
    fn failure(&self, work: &Work, service: &Service, indexes: &[usize], keys: usize, job: bool) -> Option<Verdict> {
        let mut failures = 0u64;
        let mut culprit: Option<&Task> = None;
        for &i in indexes {
            let t = &work.tasks[i];
            let failed = match t.status.state {
                TaskState::Failed | TaskState::Rejected => true,
                TaskState::Complete => !job,
                _ => false,
            };
            let early = t
                .started_at
                .is_none_or(|started| t.status.timestamp < started.saturating_add(self.config.monitor_ms));
            if failed && early && t.spec_version == service.task_version && t.created_at >= self.since {
                failures += 1;
                if culprit.is_none_or(|c| (t.status.timestamp, &t.id) < (c.status.timestamp, &c.id)) {
                    culprit = Some(t);
                }
            }
        }
        let keys = u64::try_from(keys.max(1)).unwrap_or(u64::MAX);
        let tolerated = failures.saturating_mul(1_000_000) <= u64::from(self.config.max_failure_ratio_ppm) * keys;
        let culprit = culprit?;
        if tolerated || self.config.failure_action == FailureAction::Continue {
            return None;
        }
        let rollback = self.state == Some(UpdateState::RollbackStarted);
        let now = work.inputs.now;
        if self.config.failure_action == FailureAction::Rollback && !rollback {
            let message = format!(
                "update rolled back due to failure or early termination of task {}",
                culprit.id
            );
            if let Some(rolled_back) = service.rolled_back(&message, now) {
                return Some(Verdict::RolledBack(rolled_back));
            }
        }
        let mut paused = service.clone();
        paused.update_status = Some(UpdateStatus {
            state: if rollback {
                UpdateState::RollbackPaused
            } else {
                UpdateState::Paused
            },
            started_at: self.since,
            completed_at: None,
            message: format!(
                "{} paused due to failure or early termination of task {}",
                if rollback { "rollback" } else { "update" },
                culprit.id
            ),
        });
        Some(Verdict::Paused(paused))
    }

    fn completed(&self, service: &Service, now: u64) -> Service {
        let rollback = self.state == Some(UpdateState::RollbackStarted);
        let mut done = service.clone();
        done.update_status = Some(UpdateStatus {
            state: if rollback {
                UpdateState::RollbackCompleted
            } else {
                UpdateState::Completed
            },
            started_at: self.since,
            completed_at: Some(now),
            message: format!("{} completed", if rollback { "rollback" } else { "update" }),
        });
        done
    }
}

/// During a rollback, a live task that already runs the spec rolled back to (its key was not updated yet, or was
/// updated back already) is current: it keeps running, relabelled, instead of being replaced by an identical one.
fn adopt_rolled_back(work: &mut Work, service: &Service, keyed: &BTreeMap<Key, Vec<usize>>) {
    for members in keyed.values() {
        for &i in members {
            let t = &work.tasks[i];
            if work.live(i)
                && t.spec_version != service.task_version
                && t.spec == service.spec.task
                && t.ports == service.spec.ports
            {
                work.tasks[i].to_mut().spec_version = service.task_version;
            }
        }
    }
}

/// The nodes a global service runs on: every node where it may run, plus those that already hold a task of it.
fn global_nodes(work: &mut Work, service: &Service, keyed: &BTreeMap<Key, Vec<usize>>) -> Vec<Key> {
    let mut keys = Vec::new();
    for node in work.inputs.nodes {
        let fits = scheduler::filters::check_driver(node, service.spec.task.driver).is_ok()
            && scheduler::filters::check_constraints(node, &service.spec.task.placement.constraints).is_ok();
        let key = Key::Node(node.id.clone());
        let has_task = keyed.contains_key(&key);
        // A drained node loses its task; a Down or paused one keeps it but gets no new one.
        let keep = fits && node.availability != Availability::Drain;
        let new = fits && node.availability == Availability::Active && node.status == NodeStatus::Ready;
        if new || (keep && has_task) {
            keys.push(key);
        }
    }
    keys
}

/// A job's key is done once a task of the current version completed.
fn completed(work: &Work, service: &Service, members: &[usize]) -> bool {
    members.iter().any(|&i| {
        let t = &work.tasks[i];
        t.spec_version == service.task_version && t.status.state == TaskState::Complete
    })
}

fn key_need(work: &mut Work, service: &Service, members: &[usize], job: bool) -> Need {
    let version = service.task_version;
    let mut live: Vec<usize> = members.iter().copied().filter(|&i| work.live(i)).collect();
    let mut current: Vec<usize> = live
        .iter()
        .copied()
        .filter(|&i| work.tasks[i].spec_version == version)
        .collect();
    // Two live tasks of the current version (a leader change mid-write, say): keep the most advanced.
    if current.len() > 1 {
        current.sort_by_key(|&i| {
            (
                std::cmp::Reverse(work.tasks[i].status.state),
                std::cmp::Reverse(work.tasks[i].created_at),
            )
        });
        for &i in &current[1..] {
            work.shut_down(i);
        }
        current.truncate(1);
        live.retain(|&i| work.live(i));
    }
    if let Some(&new) = current.first() {
        // Start-first: the old task stops once the new one runs.
        if work.tasks[new].status.state == TaskState::Running {
            for &i in &live {
                if i != new {
                    work.shut_down(i);
                }
            }
        }
        return Need::Nothing;
    }
    if !live.is_empty() {
        return Need::Update;
    }
    // Stop-first: wait until the stopped task is seen stopped.
    if members.iter().any(|&i| work.stopping(i)) {
        return Need::Nothing;
    }
    let Some(&last) = members.iter().max_by_key(|&&i| (work.tasks[i].created_at, i)) else {
        return Need::Create;
    };
    let t = &work.tasks[last];
    let failed = matches!(t.status.state, TaskState::Failed | TaskState::Rejected);
    let exited = t.status.state == TaskState::Complete;
    if !failed && !exited {
        // Stopped by the cluster (an update, a drain, a lost node): replace it at once.
        return Need::Create;
    }
    let policy = &service.spec.task.restart_policy;
    let allowed = match policy.condition {
        RestartCondition::None => false,
        RestartCondition::OnFailure => failed,
        RestartCondition::Any => failed || (exited && !job),
    };
    if !allowed {
        return Need::Nothing;
    }
    if policy.max_attempts > 0 {
        let since = work.inputs.now.saturating_sub(policy.window_ms);
        let failures = members
            .iter()
            .filter(|&&i| {
                let t = &work.tasks[i];
                matches!(
                    t.status.state,
                    TaskState::Failed | TaskState::Rejected | TaskState::Complete
                ) && (policy.window_ms == 0 || t.created_at >= since)
            })
            .count() as u64;
        if failures > policy.max_attempts {
            return Need::Nothing;
        }
    }
    let due = t.status.timestamp.saturating_add(policy.delay_ms);
    if work.inputs.now < due {
        work.wake(due);
        return Need::Nothing;
    }
    Need::Create
}

/// Keeps `limit` tasks per key (the live ones first, then the newest finished); deletes older finished ones.
fn reap(work: &mut Work, members: &[usize], limit: usize) {
    let mut old: Vec<usize> = members
        .iter()
        .copied()
        .filter(|&i| !work.deleted[i] && !work.live(i))
        .collect();
    let live = members.iter().filter(|&&i| work.live(i)).count();
    let keep = limit.saturating_sub(live);
    if old.len() <= keep {
        return;
    }
    old.sort_by_key(|&i| std::cmp::Reverse(work.tasks[i].created_at));
    for &i in &old[keep..] {
        if !work.stopping(i) {
            work.delete(i);
        }
    }
}

/// Places pending tasks: new and old tasks without a node, of live services, in one scheduler call; and checks
/// that each pending task pinned to its node (global services) fits there.
fn place(work: &mut Work) {
    place_pinned(work);
    let services: HashMap<&str, &Service> = work.inputs.services.iter().map(|s| (s.spec.name.as_str(), s)).collect();
    let waiting = |i: usize| {
        let t = &work.tasks[i];
        !work.deleted[i] && t.node_id.is_none() && work.live(i) && t.status.state <= TaskState::Pending
    };
    let pending_index: Vec<usize> = (0..work.tasks.len()).filter(|&i| waiting(i)).collect();
    if pending_index.is_empty() {
        return;
    }
    let pending: Vec<Task> = pending_index
        .iter()
        .map(|&i| work.tasks[i].clone().into_owned())
        .collect();
    let existing: Vec<Task> = (0..work.tasks.len())
        .filter(|&i| !work.deleted[i] && work.tasks[i].node_id.is_some())
        .map(|i| work.tasks[i].clone().into_owned())
        .collect();
    let now = work.inputs.now;
    let mut failures: HashMap<(&str, &str), u32> = HashMap::new();
    for (t, _) in work.inputs.tasks {
        if t.status.state == TaskState::Failed && now.saturating_sub(t.status.timestamp) < RECENT_FAILURE_WINDOW_MS {
            if let Some(node) = t.node_id.as_deref() {
                *failures.entry((t.service.as_str(), node)).or_default() += 1;
            }
        }
    }
    let ports = |name: &str| services.get(name).map(|s| s.spec.ports.clone()).unwrap_or_default();
    let recent = |service: &str, node: &str| failures.get(&(service, node)).copied().unwrap_or(0);
    let decisions = scheduler::schedule(work.inputs.nodes, &existing, &pending, &ports, &recent);
    for (decision, i) in decisions.into_iter().zip(pending_index) {
        let task = work.tasks[i].to_mut();
        match decision {
            Decision::Assign { node_id, .. } => {
                task.node_id = Some(node_id);
                task.status = TaskStatus::new(TaskState::Assigned, now, "assigned");
            }
            Decision::Unplaceable { reason, .. } => {
                if task.status.err.as_deref() != Some(reason.as_str()) {
                    let mut status = TaskStatus::new(TaskState::Pending, now, "pending task scheduling");
                    status.err = Some(reason);
                    task.status = status;
                }
            }
        }
    }
}

/// A global service's pending task goes to its node once the node is Ready and Active, offers the driver, has the
/// resources left and matches the constraints; until then it stays pending and says why.
fn place_pinned(work: &mut Work) {
    let pinned = |i: usize| {
        let t = &work.tasks[i];
        !work.deleted[i] && t.node_id.is_some() && work.live(i) && t.status.state <= TaskState::Pending
    };
    let pinned_index: Vec<usize> = (0..work.tasks.len()).filter(|&i| pinned(i)).collect();
    if pinned_index.is_empty() {
        return;
    }
    let now = work.inputs.now;
    let held: Vec<Task> = (0..work.tasks.len())
        .filter(|&i| !work.deleted[i] && !pinned(i) && scheduler::occupies_node(&work.tasks[i]))
        .map(|i| work.tasks[i].clone().into_owned())
        .collect();
    let mut infos = scheduler::node_infos(work.inputs.nodes, &held, &|_| Vec::new());
    for i in pinned_index {
        let task = work.tasks[i].to_mut();
        let Some(info) = infos.iter_mut().find(|n| Some(&n.node.id) == task.node_id.as_ref()) else {
            continue; // the node is gone: the next pass stops the task
        };
        let verdict = scheduler::filters::check_readiness(info.node)
            .and_then(|_| scheduler::filters::check_driver(info.node, task.spec.driver))
            .and_then(|_| scheduler::filters::check_resources(&info.available(), &task.spec.resources.reservations))
            .and_then(|_| scheduler::filters::check_constraints(info.node, &task.spec.placement.constraints));
        match verdict {
            Ok(()) => {
                info.reserve(&task.spec);
                task.status = TaskStatus::new(TaskState::Assigned, now, "assigned");
            }
            Err(rejection) => {
                let reason = scheduler::explain(&[rejection]);
                if task.status.err.as_deref() != Some(reason.as_str()) {
                    let mut status = TaskStatus::new(TaskState::Pending, now, "pending task scheduling");
                    status.err = Some(reason);
                    task.status = status;
                }
            }
        }
    }
}

fn finish(work: Work) -> Actions {
    let mut actions = Actions {
        wake_at: work.wake_at,
        services: work.services,
        ..Actions::default()
    };
    for (i, task) in work.tasks.into_iter().enumerate() {
        if i >= work.existing {
            if !work.deleted[i] {
                actions.create.push(task.into_owned());
            }
        } else if work.deleted[i] {
            actions.delete.push((task.id.clone(), work.revisions[i]));
        } else if let Cow::Owned(task) = task {
            // Changed by this pass (perhaps back to what it was).
            if task != *work.inputs.tasks[i].0 {
                actions.update.push((task, work.revisions[i]));
            }
        }
    }
    actions
}

/// How a service is doing, as `service ls` shows it: running tasks and the tasks it should have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    pub running: u64,
    pub desired: u64,
    /// Completed tasks (jobs).
    pub completed: u64,
}

/// The running and desired counts of one service.
pub fn progress(service: &Service, tasks: &[&Task], nodes: &[Node]) -> Progress {
    let current = |t: &&&Task| t.spec_version == service.task_version;
    let running = tasks
        .iter()
        .filter(|t| t.desired_state <= TaskState::Running && t.status.state == TaskState::Running)
        .count() as u64;
    let completed = tasks
        .iter()
        .filter(current)
        .filter(|t| t.status.state == TaskState::Complete)
        .count() as u64;
    let desired = match &service.spec.mode {
        ServiceMode::Replicated { replicas } => *replicas,
        ServiceMode::ReplicatedJob { total_completions, .. } => *total_completions,
        ServiceMode::Global | ServiceMode::GlobalJob => nodes
            .iter()
            .filter(|n| {
                n.availability == Availability::Active
                    && n.status == NodeStatus::Ready
                    && scheduler::filters::check_driver(n, service.spec.task.driver).is_ok()
                    && scheduler::filters::check_constraints(n, &service.spec.task.placement.constraints).is_ok()
            })
            .count() as u64,
    };
    Progress {
        running,
        desired,
        completed,
    }
}
