//! The dispatcher (leader only): each node's session — the tasks assigned to it, as one full set and then changes,
//! in bounded messages — and the status reports coming back, batched into Raft writes. Also relays task logs.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;
use swarm_specs::task::Task;
use swarm_specs::task::TaskState;
use swarm_specs::task::TaskStatus;
use tokio::sync::mpsc;

use crate::manager::Manager;
use crate::manager::ManagerError;
use crate::secrets::delivery::Delivery;
use crate::store;
use crate::store::Object;

impl Object for Task {
    const TABLE: &'static str = "tasks";
    fn key(&self) -> String {
        self.id.clone()
    }
}

/// At most this many tasks travel in one session message, whatever the cluster's size.
pub const MAX_TASKS_PER_MESSAGE: usize = 100;
/// Status reports are written to Raft at most this often (one entry for all of them).
pub const STATUS_BATCH_INTERVAL: Duration = Duration::from_millis(20);
/// A session sends a ping this often, so both ends notice a dead connection.
pub const SESSION_PING: Duration = Duration::from_secs(2);

/// One line of a node's session stream (NDJSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionMessage {
    /// The complete set of tasks assigned to the node follows, in `Tasks` messages, until `End`.
    Begin,
    /// Part of the complete set (between `Begin` and `End`), or — outside it — new or changed assignments.
    Tasks {
        tasks: Vec<Task>,
    },
    End,
    /// These tasks are no longer assigned to the node.
    Removed {
        task_ids: Vec<String>,
    },
    /// Contents of secrets and configs the node's tasks use, sent before those tasks (`Debug` hides the data; never
    /// logged). Inside a complete set, the node drops what the set does not send again.
    Files {
        files: Vec<swarm_agent::files::FilePayload>,
    },
    /// No task of the node needs these any more.
    ForgetFiles {
        files: Vec<swarm_agent::files::FileKey>,
    },
    /// Send this task's logs to `/v1/dispatcher/logs/{request}`.
    Logs {
        request: String,
        task_id: String,
        follow: bool,
        tail: Option<usize>,
        timestamps: bool,
    },
    Ping,
}

/// A batch of status reports from a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub updates: Vec<(String, TaskStatus)>,
}

/// The pure part of status batching: which reported statuses change which tasks. A report for a task that is not
/// on the reporting node, or that would move its observed state backwards, is dropped (rule 4).
pub fn apply_reports(
    tasks: &mut BTreeMap<String, Task>,
    node_id: &str,
    updates: Vec<(String, TaskStatus)>,
) -> Vec<String> {
    let mut changed = Vec::new();
    for (id, status) in updates {
        let Some(task) = tasks.get_mut(&id) else { continue };
        if task.node_id.as_deref() != Some(node_id) {
            continue;
        }
        if task.status.advance(status) {
            if task.status.state == TaskState::Running && task.started_at.is_none() {
                task.started_at = Some(task.status.timestamp);
            }
            if !changed.contains(&id) {
                changed.push(id);
            }
        }
    }
    changed
}

/// The leader's dispatcher: live sessions and the status batcher.
pub struct Dispatcher {
    manager: Arc<Manager>,
    /// Node id → the sender of its session stream (for log requests).
    sessions: Mutex<HashMap<String, mpsc::Sender<SessionMessage>>>,
    /// Log request id → where the lines go.
    logs: Mutex<HashMap<String, mpsc::Sender<Result<bytes_type::Bytes, std::io::Error>>>>,
    reports: mpsc::UnboundedSender<Queued>,
    routes: Arc<Routes>,
}

/// A session's share of the task changes: the router pushes, the session takes.
#[derive(Default)]
struct Inbox {
    queue: Mutex<Inboxed>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Inboxed {
    /// Each change as (the entry's changes, the index of this one): shared, not copied per session.
    changes: Vec<(Arc<[store::Change]>, usize)>,
    /// The router lost track (it lagged, or this inbox overflowed): send the complete set again.
    resync: bool,
}

/// At most this many changes wait in one session's inbox; beyond, the session sends its complete set again.
const INBOX_CAPACITY: usize = 10_000;

impl Inbox {
    fn push(&self, changes: &Arc<[store::Change]>, index: usize) {
        let mut q = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.resync {
            return;
        }
        if q.changes.len() >= INBOX_CAPACITY {
            q.changes = Vec::new();
            q.resync = true;
        } else {
            q.changes.push((changes.clone(), index));
        }
        drop(q);
        self.wake.notify_one();
    }

    fn resync(&self) {
        let mut q = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        q.changes = Vec::new();
        q.resync = true;
        drop(q);
        self.wake.notify_one();
    }

    fn take(&self) -> Inboxed {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// The one reader of every task change: it hands each change to the sessions of the node the task is on and of the
/// node it was on, so a session's cost is its node's tasks, not the cluster's (5,000 sessions each looking at every
/// change was most of a large cluster's leader CPU).
#[derive(Default)]
struct Routes {
    inner: Mutex<Routing>,
}

#[derive(Default)]
struct Routing {
    /// Node id → the inboxes of its sessions (a reconnecting node can briefly have two).
    inboxes: HashMap<String, Vec<Arc<Inbox>>>,
    /// Task id → the node it was on at the last change the router handled.
    task_node: HashMap<String, String>,
    /// The same, by node: what a session's complete set reads.
    node_tasks: HashMap<String, HashSet<String>>,
    /// The revision of the last change the router handled.
    revision: u64,
}

impl Routing {
    fn place(&mut self, task: &str, node: Option<&str>) -> Option<String> {
        let before = match node {
            Some(n) => self.task_node.insert(task.to_string(), n.to_string()),
            None => self.task_node.remove(task),
        };
        if before.as_deref() != node {
            if let Some(b) = &before {
                if let Some(set) = self.node_tasks.get_mut(b) {
                    set.remove(task);
                    if set.is_empty() {
                        self.node_tasks.remove(b);
                    }
                }
            }
            if let Some(n) = node {
                self.node_tasks
                    .entry(n.to_string())
                    .or_default()
                    .insert(task.to_string());
            }
        }
        before
    }
}

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Routing> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn open(&self, node_id: &str) -> Arc<Inbox> {
        let inbox = Arc::new(Inbox::default());
        self.lock()
            .inboxes
            .entry(node_id.to_string())
            .or_default()
            .push(inbox.clone());
        inbox
    }

    /// The tasks on `node_id` and the revision the router has handled, read together: every later change of one of
    /// the node's tasks is in the node's inboxes.
    fn tasks_of(&self, node_id: &str) -> (u64, Vec<String>) {
        let r = self.lock();
        let ids = r
            .node_tasks
            .get(node_id)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default();
        (r.revision, ids)
    }

    fn close(&self, node_id: &str, inbox: &Arc<Inbox>) {
        let mut r = self.lock();
        if let Some(list) = r.inboxes.get_mut(node_id) {
            list.retain(|i| !Arc::ptr_eq(i, inbox));
            if list.is_empty() {
                r.inboxes.remove(node_id);
            }
        }
    }

    /// Where every task is, from the store (at start and after the router lagged); every session resyncs.
    fn reset(&self, sm: &store::StateMachineStore) {
        let (revision, task_node) = sm.index(Task::TABLE, node_of);
        let mut r = self.lock();
        r.task_node = HashMap::new();
        r.node_tasks = HashMap::new();
        for (task, node) in task_node {
            r.place(&task, Some(&node));
        }
        r.revision = revision;
        r.inboxes.values().flatten().for_each(|i| i.resync());
    }

    /// Hands one entry's task changes to the inboxes that need them (an entry the index covers already is skipped).
    fn route(&self, committed: &store::Committed) {
        let mut r = self.lock();
        if committed.revision <= r.revision {
            return;
        }
        for (i, change) in committed.changes.iter().enumerate() {
            if change.table != Task::TABLE {
                continue;
            }
            let placement = change.value.as_ref().and_then(|v| v.decode::<Placement>().ok());
            let node = placement.as_ref().and_then(|p| p.node_id.as_deref());
            let before = r.place(&change.key, node);
            let nodes = [node, before.as_deref().filter(|b| Some(*b) != node)];
            for inbox in nodes.into_iter().flatten().filter_map(|n| r.inboxes.get(n)).flatten() {
                inbox.push(&committed.changes, i);
            }
        }
        r.revision = committed.revision;
    }
}

/// The node a stored task is on, read without decoding the rest of it.
#[derive(Deserialize)]
struct Placement<'a> {
    #[serde(borrow)]
    node_id: Option<std::borrow::Cow<'a, str>>,
}

fn node_of(task: &store::Json) -> Option<String> {
    task.decode::<Placement>().ok()?.node_id.map(|n| n.into_owned())
}

/// Routes task changes to sessions until `shutdown` (see [`Routes`]).
async fn route_changes(
    sm: store::StateMachineStore,
    routes: Arc<Routes>,
    mut watch: tokio::sync::broadcast::Receiver<store::Committed>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let committed = tokio::select! {
            _ = shutdown.changed() => return,
            c = watch.recv() => c,
        };
        match committed {
            Ok(c) => routes.route(&c),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                watch = sm.subscribe();
                routes.reset(&sm);
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// A node's reports waiting for the next batch, and who to tell once they are written.
type Queued = (
    String,
    Vec<(String, TaskStatus)>,
    tokio::sync::oneshot::Sender<Result<(), String>>,
);

/// `bytes` comes through axum; named here to keep the imports short.
mod bytes_type {
    pub use axum::body::Bytes;
}

impl Dispatcher {
    pub fn start(manager: Arc<Manager>, shutdown: tokio::sync::watch::Receiver<bool>) -> Arc<Dispatcher> {
        let (reports, rx) = mpsc::unbounded_channel();
        let routes = Arc::new(Routes::default());
        let d = Arc::new(Dispatcher {
            manager: manager.clone(),
            sessions: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
            reports,
            routes: routes.clone(),
        });
        // Subscribed before any session opens, so every change after the index reaches the sessions that need it.
        let watch = manager.sm.subscribe();
        routes.reset(&manager.sm);
        tokio::spawn(route_changes(manager.sm.clone(), routes, watch, shutdown.clone()));
        tokio::spawn(batch_statuses(manager, rx, shutdown));
        d
    }

    /// Queues a node's reports for the next batch and returns once that batch is committed (or failed).
    pub async fn report(&self, node_id: &str, updates: Vec<(String, TaskStatus)>) -> Result<(), ManagerError> {
        let (done, written) = tokio::sync::oneshot::channel();
        self.reports
            .send((node_id.to_string(), updates, done))
            .map_err(|_| ManagerError::Rejected("the dispatcher stopped".into()))?;
        match written.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ManagerError::Rejected(format!("task statuses not written: {e}"))),
            Err(_) => Err(ManagerError::Rejected("the dispatcher stopped".into())),
        }
    }

    /// The stream of one node's session: full set first, then changes; ends when the connection does.
    pub fn session(self: &Arc<Self>, node_id: &str) -> mpsc::Receiver<SessionMessage> {
        let (tx, rx) = mpsc::channel(64);
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(node_id.to_string(), tx.clone());
        }
        tokio::spawn(run_session(self.clone(), node_id.to_string(), tx));
        rx
    }

    /// Asks the node that runs `task` for its logs; the lines arrive on the returned receiver.
    pub async fn request_logs(
        &self,
        task: &Task,
        follow: bool,
        tail: Option<usize>,
        timestamps: bool,
    ) -> Result<mpsc::Receiver<Result<bytes_type::Bytes, std::io::Error>>, ManagerError> {
        let node = task
            .node_id
            .clone()
            .ok_or_else(|| ManagerError::Rejected("the task has no node yet".into()))?;
        let session = self
            .sessions
            .lock()
            .ok()
            .and_then(|s| s.get(&node).cloned())
            .ok_or_else(|| ManagerError::Rejected(format!("node {node} has no session with the leader: is it up?")))?;
        let request = crate::ca::new_id();
        let (tx, rx) = mpsc::channel(64);
        if let Ok(mut l) = self.logs.lock() {
            l.insert(request.clone(), tx);
        }
        let message = SessionMessage::Logs {
            request,
            task_id: task.id.clone(),
            follow,
            tail,
            timestamps,
        };
        session
            .send(message)
            .await
            .map_err(|_| ManagerError::Rejected(format!("node {node} went away")))?;
        Ok(rx)
    }

    /// Where a node posts the log lines of a request.
    pub fn log_sink(&self, request: &str) -> Option<mpsc::Sender<Result<bytes_type::Bytes, std::io::Error>>> {
        self.logs.lock().ok().and_then(|mut l| l.remove(request))
    }

    fn end_session(&self, node_id: &str, tx: &mpsc::Sender<SessionMessage>) {
        if let Ok(mut s) = self.sessions.lock() {
            if s.get(node_id).is_some_and(|t| t.same_channel(tx)) {
                s.remove(node_id);
            }
        }
    }
}

/// A task is the node's to run once it is assigned there: a global task pinned to its node but still pending (it
/// does not fit yet) is not.
fn assigned_to(task: &Task, node_id: &str) -> bool {
    task.node_id.as_deref() == Some(node_id) && task.status.state >= swarm_specs::task::TaskState::Assigned
}

/// Sends the node's complete set. Returns the revision of the router's index it was read from, and for each task
/// sent the revision it was sent at: a change of the inbox at or below those is in the set already.
async fn send_full(
    d: &Dispatcher,
    node_id: &str,
    tx: &mpsc::Sender<SessionMessage>,
    delivery: &mut Delivery,
) -> Option<(u64, HashMap<String, u64>)> {
    let m = &d.manager;
    let sm = &m.sm;
    // The router's index names the node's tasks, so only those are read from the store (the store may be ahead of
    // the index: each task is read as it is now, and older changes of it are skipped).
    let (revision, ids) = d.routes.tasks_of(node_id);
    let mut sent = HashMap::new();
    let mut mine: Vec<Task> = Vec::new();
    for id in ids {
        let Some((value, rev)) = sm.get_json(Task::TABLE, &id) else {
            continue;
        };
        if let Some(t) = store::decode::<Task>(&id, &value).filter(|t| assigned_to(t, node_id)) {
            sent.insert(id, rev);
            mine.push(t);
        }
    }
    mine.sort_by(|a, b| a.id.cmp(&b.id));
    tx.send(SessionMessage::Begin).await.ok()?;
    // The node keeps only what a complete set sends again: start from nothing sent.
    *delivery = Delivery::default();
    mine.iter().for_each(|t| delivery.track(t));
    let files = delivery.next(sm, &m.keyring, node_id).send;
    if !files.is_empty() {
        tx.send(SessionMessage::Files { files }).await.ok()?;
    }
    for chunk in mine.chunks(MAX_TASKS_PER_MESSAGE) {
        tx.send(SessionMessage::Tasks { tasks: chunk.to_vec() }).await.ok()?;
    }
    tx.send(SessionMessage::End).await.ok()?;
    Some((revision, sent))
}

async fn run_session(d: Arc<Dispatcher>, node_id: String, tx: mpsc::Sender<SessionMessage>) {
    // The inbox opens before the complete set is read: a change after the set's revision is in the inbox.
    let inbox = d.routes.open(&node_id);
    session(&d, &node_id, &tx, &inbox).await;
    d.routes.close(&node_id, &inbox);
    d.end_session(&node_id, &tx);
}

/// Sends the complete set, then the changes the router hands this node, until the connection ends.
async fn session(d: &Dispatcher, node_id: &str, tx: &mpsc::Sender<SessionMessage>, inbox: &Inbox) -> Option<()> {
    let sm = &d.manager.sm;
    let mut delivery = Delivery::default();
    let (mut revision, mut sent) = send_full(d, node_id, tx, &mut delivery).await?;
    let mut mine: HashSet<String> = sent.keys().cloned().collect();
    let mut ping = tokio::time::interval(SESSION_PING);
    loop {
        tokio::select! {
            _ = tx.closed() => return None,
            _ = ping.tick() => tx.send(SessionMessage::Ping).await.ok()?,
            _ = inbox.wake.notified() => {
                let Inboxed { changes, resync } = inbox.take();
                if resync {
                    (revision, sent) = send_full(d, node_id, tx, &mut delivery).await?;
                    mine = sent.keys().cloned().collect();
                    continue;
                }
                let mut changed = Vec::new();
                let mut removed = Vec::new();
                for change in changes.iter().map(|(entry, i)| &entry[*i]) {
                    if change.revision <= revision || sent.get(&change.key).is_some_and(|&at| change.revision <= at) {
                        continue; // in the complete set already
                    }
                    let task = change.value.as_ref().and_then(|v| store::decode::<Task>(&change.key, v));
                    match task {
                        Some(t) if assigned_to(&t, node_id) => {
                            mine.insert(t.id.clone());
                            delivery.track(&t);
                            changed.push(t);
                        }
                        _ if mine.remove(&change.key) => {
                            delivery.untrack(&change.key);
                            removed.push(change.key.clone());
                        }
                        _ => {}
                    }
                }
                // Contents first, so a task never arrives before what it needs.
                let files = delivery.next(sm, &d.manager.keyring, node_id);
                if !files.send.is_empty() {
                    tx.send(SessionMessage::Files { files: files.send }).await.ok()?;
                }
                for chunk in changed.chunks(MAX_TASKS_PER_MESSAGE) {
                    tx.send(SessionMessage::Tasks { tasks: chunk.to_vec() }).await.ok()?;
                }
                if !removed.is_empty() {
                    tx.send(SessionMessage::Removed { task_ids: removed }).await.ok()?;
                }
                if !files.forget.is_empty() {
                    tx.send(SessionMessage::ForgetFiles { files: files.forget }).await.ok()?;
                }
            }
        }
    }
}

/// Writes queued status reports every `STATUS_BATCH_INTERVAL`, all in one guarded Raft entry.
async fn batch_statuses(
    manager: Arc<Manager>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.changed() => return,
            r = rx.recv() => match r { Some(r) => r, None => return },
        };
        tokio::time::sleep(STATUS_BATCH_INTERVAL).await;
        let mut queued = vec![first];
        while let Ok(more) = rx.try_recv() {
            queued.push(more);
        }
        let mut pending = Vec::with_capacity(queued.len());
        let mut waiting = Vec::with_capacity(queued.len());
        for (node, updates, done) in queued {
            pending.push((node, updates));
            waiting.push(done);
        }
        let result = write_reports(&manager, &pending).await;
        for done in waiting {
            let _ = done.send(result.clone());
        }
    }
}

/// Writes one batch in a guarded entry, reading the tasks again when a guard fails (an orchestrator write
/// meanwhile). Reports that change nothing (stale, backwards, not the node's) need no write.
async fn write_reports(manager: &Manager, pending: &[(String, Vec<(String, TaskStatus)>)]) -> Result<(), String> {
    for _ in 0..5 {
        let mut tasks: BTreeMap<String, Task> = BTreeMap::new();
        let mut revisions: BTreeMap<String, u64> = BTreeMap::new();
        for (_, updates) in pending {
            for (id, _) in updates {
                if let Some((t, rev)) = store::get::<Task>(&manager.sm, id) {
                    revisions.insert(id.clone(), rev);
                    tasks.insert(id.clone(), t);
                }
            }
        }
        let mut changed: Vec<String> = Vec::new();
        for (node, updates) in pending {
            for id in apply_reports(&mut tasks, node, updates.clone()) {
                if !changed.contains(&id) {
                    changed.push(id);
                }
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        let request = store::Request {
            guards: changed
                .iter()
                .map(|id| store::Guard::Revision {
                    table: Task::TABLE.into(),
                    key: id.clone(),
                    revision: revisions.get(id).copied().unwrap_or(0),
                })
                .collect(),
            ops: changed.iter().filter_map(|id| tasks.get(id)).map(store::put).collect(),
        };
        match manager.write(request).await {
            Ok(store::Response::GuardFailed { .. }) => continue,
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::warn!("cannot write task statuses: {e}");
                return Err(e.to_string());
            }
        }
    }
    Err("the tasks kept changing while their statuses were written".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, node: &str, state: TaskState) -> Task {
        let spec = swarm_specs::spec::TaskSpec::with_command(
            swarm_specs::spec::Driver::Process,
            None,
            vec!["true".to_string()],
        );
        Task {
            id: id.into(),
            service: "s_web".into(),
            slot: Some(1),
            node_id: Some(node.into()),
            spec_version: 1,
            spec,
            desired_state: TaskState::Running,
            status: TaskStatus::new(state, 0, ""),
            created_at: 0,
            ports: Vec::new(),
            networks: Vec::new(),
            started_at: None,
        }
    }

    #[test]
    fn reports_apply_only_forward_and_only_from_the_tasks_node() {
        let mut tasks = BTreeMap::from([
            ("a".to_string(), task("a", "n1", TaskState::Running)),
            ("b".to_string(), task("b", "n2", TaskState::Assigned)),
        ]);
        let changed = apply_reports(
            &mut tasks,
            "n1",
            vec![
                ("a".into(), TaskStatus::new(TaskState::Starting, 5, "late")), // backwards: dropped
                ("b".into(), TaskStatus::new(TaskState::Running, 5, "not mine")), // other node: dropped
                ("zzz".into(), TaskStatus::new(TaskState::Running, 5, "unknown")), // unknown: dropped
            ],
        );
        assert!(changed.is_empty());
        assert_eq!(tasks["a"].status.state, TaskState::Running);
        let changed = apply_reports(
            &mut tasks,
            "n2",
            vec![("b".into(), TaskStatus::new(TaskState::Accepted, 6, "ok"))],
        );
        assert_eq!(changed, vec!["b".to_string()]);
        assert_eq!(tasks["b"].status.state, TaskState::Accepted);
    }

    #[test]
    fn session_messages_are_ndjson_friendly() {
        let line = serde_json::to_string(&SessionMessage::Removed {
            task_ids: vec!["x".into()],
        })
        .unwrap();
        assert_eq!(line, r#"{"type":"removed","task_ids":["x"]}"#);
        let back: SessionMessage = serde_json::from_str(&line).unwrap();
        assert_eq!(
            back,
            SessionMessage::Removed {
                task_ids: vec!["x".into()]
            }
        );
    }
}
