//! The GitOps loop on the leader: each source is synced every interval, and at once when `swarm source sync` or
//! its webhook asks; between syncs, changes in the store (a service updated by hand, tasks starting) refresh the
//! stacks' sync and health without fetching. Git runs in blocking threads; one sync per source at a time.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::collections::HashSet;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use swarm_specs::spec::StackSpec;
use swarm_specs::task::Task;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::fetch;
use super::files::GitTree;
use super::snapshot;
use super::snapshot::Snapshot;
use super::status;
use super::status::Facts;
use super::status::Verdict;
use super::Health;
use super::Source;
use super::SourceCredentials;
use super::SourceStatus;
use super::StackStatus;
use super::SyncState;
use crate::cluster::Node;
use crate::cluster::UnixMillis;
use crate::manager::Manager;
use crate::objects::Service;
use crate::objects::Stack;
use crate::stacks;
use crate::store;
use crate::store::Guard;
use crate::store::Object;
use crate::store::Request;

/// Even with nothing to do the loop looks around this often (a leadership change, a missed event).
const RESYNC: Duration = Duration::from_secs(2);
/// Store changes are folded for this long before the stacks' status is refreshed.
const REFRESH_DEBOUNCE: Duration = Duration::from_millis(300);
/// A sync whose writes were refused for want of a recent majority (a manager joining under load, say) is tried
/// again after this long if this manager still leads, not after the source's interval: the first sync of a source
/// polled hourly would otherwise wait an hour.
const RETRY_NOT_LEADER: Duration = Duration::from_secs(1);

/// Wall-clock time for the records (injected so tests can fix it).
pub type Clock = Arc<dyn Fn() -> UnixMillis + Send + Sync>;

/// Why a sync could not be run. (A sync that ran but failed — a fetch error, an invalid stack — is reported in
/// the [`SourceStatus`] it returns.)
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    #[error("source {0} not found; `swarm source ls` lists them")]
    NotFound(String),
    #[error("this manager stopped leading; run the command again (it goes to the new leader)")]
    NotLeader,
    #[error("the GitOps loop is not running on this manager")]
    Stopped,
    #[error("the sync of source {name} failed: {reason}")]
    Internal { name: String, reason: String },
}

type Reply = oneshot::Sender<Result<SourceStatus, SyncError>>;

struct SyncRequest {
    name: String,
    manual: bool,
    reply: Option<Reply>,
}

/// The handle of the leader's GitOps loop.
pub struct GitOps {
    requests: mpsc::UnboundedSender<SyncRequest>,
}

impl GitOps {
    /// Starts the loop; it syncs only while `manager` leads, keeps its clones under `dir`, and ends with `stop`.
    pub fn start(
        manager: Arc<Manager>,
        dir: PathBuf,
        clock: Clock,
        stop: watch::Receiver<bool>,
    ) -> (Arc<GitOps>, tokio::task::JoinHandle<()>) {
        let (requests, rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(Ctx {
            manager,
            dir,
            clock,
            snapshots: Mutex::new(HashMap::new()),
        });
        let handle = tokio::spawn(run(ctx, rx, stop));
        (Arc::new(GitOps { requests }), handle)
    }

    /// Syncs `name` now (after a sync already running, so the fetch sees every commit made before this call) and
    /// returns its status. As an operator's request it applies even without auto-sync or self-heal.
    pub async fn sync(&self, name: &str) -> Result<SourceStatus, SyncError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(SyncRequest {
                name: name.to_string(),
                manual: true,
                reply: Some(reply),
            })
            .map_err(|_| SyncError::Stopped)?;
        answer.await.map_err(|_| SyncError::Stopped)?
    }

    /// Asks for a sync of `name` as soon as possible (a webhook): the source's own auto-sync settings apply.
    pub fn trigger(&self, name: &str) -> Result<(), SyncError> {
        self.requests
            .send(SyncRequest {
                name: name.to_string(),
                manual: false,
                reply: None,
            })
            .map_err(|_| SyncError::Stopped)
    }
}

struct Ctx {
    manager: Arc<Manager>,
    dir: PathBuf,
    clock: Clock,
    /// The last snapshot of each source (derived from git; a new leader loads it again).
    snapshots: Mutex<HashMap<String, Arc<Snapshot>>>,
}

impl Ctx {
    fn snapshot(&self, name: &str) -> Option<Arc<Snapshot>> {
        self.snapshots.lock().ok().and_then(|s| s.get(name).cloned())
    }

    fn remember(&self, name: &str, snapshot: Option<Arc<Snapshot>>) {
        if let Ok(mut all) = self.snapshots.lock() {
            match snapshot {
                Some(s) => all.insert(name.to_string(), s),
                None => all.remove(name),
            };
        }
    }

    fn clone_dir(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.git"))
    }
}

/// Syncs waiting to start: whether any asker was an operator, and who waits for the result.
#[derive(Default)]
struct Queued {
    manual: bool,
    replies: Vec<Reply>,
}

async fn run(ctx: Arc<Ctx>, mut requests: mpsc::UnboundedReceiver<SyncRequest>, mut stop: watch::Receiver<bool>) {
    let mut changes = ctx.manager.sm.subscribe();
    let mut due: HashMap<String, Instant> = HashMap::new();
    let mut queued: HashMap<String, Queued> = HashMap::new();
    let mut running: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut jobs: JoinSet<(String, Vec<Reply>, Result<SourceStatus, SyncError>)> = JoinSet::new();
    let mut refresh_at: Option<Instant> = None;
    let mut was_leader = false;
    let mut sources_changed = true;
    loop {
        if *stop.borrow() {
            return;
        }
        let now = Instant::now();
        let leader = ctx.manager.is_leader();
        if leader {
            let sources: BTreeMap<String, Source> = store::list::<Source>(&ctx.manager.sm)
                .into_iter()
                .map(|(s, _)| (s.name.clone(), s))
                .collect();
            if sources_changed || !was_leader {
                sources_changed = false;
                forget_removed(&ctx, &sources);
                due.retain(|name, _| sources.contains_key(name));
            }
            for name in sources.keys() {
                due.entry(name.clone()).or_insert(now);
            }
            let busy: HashSet<&String> = running.values().collect();
            for (name, at) in &due {
                if *at <= now && !busy.contains(name) {
                    queued.entry(name.clone()).or_default();
                }
            }
            let ready: Vec<String> = queued.keys().filter(|n| !busy.contains(n)).cloned().collect();
            for name in ready {
                let Some(q) = queued.remove(&name) else { continue };
                if !sources.contains_key(&name) {
                    for reply in q.replies {
                        let _ = reply.send(Err(SyncError::NotFound(name.clone())));
                    }
                    continue;
                }
                due.remove(&name);
                let job_ctx = ctx.clone();
                let job_name = name.clone();
                let handle = jobs.spawn(async move {
                    let result = sync_source(&job_ctx, &job_name, q.manual).await;
                    (job_name, q.replies, result)
                });
                running.insert(handle.id(), name);
            }
            if refresh_at.is_some_and(|at| at <= now) {
                refresh_at = None;
                let busy: HashSet<String> = running.values().cloned().collect();
                refresh(&ctx, &sources, &busy).await;
            }
        } else {
            due.clear();
            refresh_at = None;
            for (_, q) in queued.drain() {
                for reply in q.replies {
                    let _ = reply.send(Err(SyncError::NotLeader));
                }
            }
        }
        was_leader = leader;

        let busy: HashSet<&String> = running.values().collect();
        let mut wake = now + RESYNC;
        for (name, at) in &due {
            if !busy.contains(name) {
                wake = wake.min(*at);
            }
        }
        if let Some(at) = refresh_at {
            wake = wake.min(at);
        }
        tokio::select! {
            // Stopped (or the daemon dropped the sender): the JoinSet aborts running syncs when dropped.
            _ = stop.changed() => return,
            _ = tokio::time::sleep_until(wake) => {}
            request = requests.recv() => match request {
                Some(r) => {
                    let q = queued.entry(r.name).or_default();
                    q.manual |= r.manual;
                    q.replies.extend(r.reply);
                }
                None => return,
            },
            Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => {
                let (id, outcome) = match done {
                    Ok((id, outcome)) => (id, Some(outcome)),
                    Err(e) => (e.id(), None),
                };
                let name = running.remove(&id);
                let mut refused = false;
                if let Some((name, replies, result)) = outcome {
                    for reply in replies {
                        let _ = reply.send(result.clone());
                    }
                    if let Err(e) = &result {
                        tracing::warn!(source = %name, "gitops sync: {e}");
                        refused = matches!(e, SyncError::NotLeader);
                    }
                }
                if let Some(name) = name {
                    let interval = store::get::<Source>(&ctx.manager.sm, &name)
                        .map_or(super::DEFAULT_INTERVAL_MS, |(s, _)| s.interval_ms);
                    let wait = if refused { RETRY_NOT_LEADER } else { Duration::from_millis(interval) };
                    due.insert(name, Instant::now() + wait);
                }
            }
            committed = changes.recv() => match committed {
                Ok(c) => {
                    if c.changes.iter().any(|ch| ch.table == Source::TABLE) {
                        sources_changed = true;
                    }
                    if c.changes.iter().any(|ch| affects_status(&ch.table)) {
                        refresh_at.get_or_insert(Instant::now() + REFRESH_DEBOUNCE);
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    changes = ctx.manager.sm.subscribe();
                    sources_changed = true;
                    refresh_at.get_or_insert(Instant::now());
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

fn affects_status(table: &str) -> bool {
    table == Service::TABLE || table == Task::TABLE || table == Stack::TABLE || table == Node::TABLE
}

/// Drops what is kept for sources that are gone: their snapshot and their clone.
fn forget_removed(ctx: &Ctx, sources: &BTreeMap<String, Source>) {
    if let Ok(mut all) = ctx.snapshots.lock() {
        all.retain(|name, _| sources.contains_key(name));
    }
    let Ok(entries) = std::fs::read_dir(&ctx.dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(name) = file.strip_suffix(".git") {
            if !sources.contains_key(name) {
                let path = entry.path();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = std::fs::remove_dir_all(&path) {
                        tracing::warn!("cannot remove the clone of a removed source at {}: {e}", path.display());
                    }
                });
            }
        }
    }
}

/// Fetches the source and loads its stacks (in a blocking thread); the cached snapshot is reused when the commit
/// did not move. Errors are rendered: they end up in the source's status.
fn fetch_and_load(
    dir: &Path,
    source: &Source,
    credentials: Option<&SourceCredentials>,
    cached: Option<Arc<Snapshot>>,
) -> Result<Arc<Snapshot>, String> {
    let repo = fetch::open_clone(dir).map_err(|e| e.to_string())?;
    let commit = fetch::fetch(&repo, &source.repo, &source.reference, credentials).map_err(|e| e.to_string())?;
    let origin = (source.repo.clone(), source.reference.clone(), source.path.clone());
    if let Some(cached) = cached.filter(|c| c.commit == commit.to_string() && c.origin == origin) {
        return Ok(cached);
    }
    let tree = GitTree::at_commit(repo, commit).map_err(|e| e.to_string())?;
    let age = credentials
        .map(SourceCredentials::age_identities)
        .transpose()?
        .unwrap_or_default();
    let stacks = snapshot::load(&tree, &source.path, &age).map_err(|e| e.to_string())?;
    Ok(Arc::new(Snapshot {
        origin,
        commit: commit.to_string(),
        stacks,
    }))
}

/// One sync: fetch, load, decide and apply each stack, record.
async fn sync_source(ctx: &Ctx, name: &str, manual: bool) -> Result<SourceStatus, SyncError> {
    let m = &ctx.manager;
    let (source, source_revision) =
        store::get::<Source>(&m.sm, name).ok_or_else(|| SyncError::NotFound(name.to_string()))?;
    let credentials = SourceCredentials::read(m, name).map_err(|reason| SyncError::Internal {
        name: name.to_string(),
        reason,
    })?;
    let previous = store::get::<SourceStatus>(&m.sm, name)
        .map(|(s, _)| s)
        .unwrap_or_else(|| SourceStatus {
            name: name.to_string(),
            ..SourceStatus::default()
        });
    let dir = ctx.clone_dir(name);
    let cached = ctx.snapshot(name);
    let blocking_source = source.clone();
    let fetched =
        tokio::task::spawn_blocking(move || fetch_and_load(&dir, &blocking_source, credentials.as_ref(), cached))
            .await
            .map_err(|e| SyncError::Internal {
                name: name.to_string(),
                reason: format!("the git thread failed: {e}"),
            })?;
    let now = (ctx.clock)();
    let mut status = previous.clone();
    status.last_sync_at = Some(now);
    match fetched {
        Ok(snapshot) => {
            ctx.remember(name, Some(snapshot.clone()));
            status.error = None;
            status.commit = Some(snapshot.commit.clone());
            status.fetched_at = Some(now);
            status.stacks = evaluate(ctx, &source, &snapshot, &previous, Mode::Sync { manual }, now).await;
        }
        Err(e) => {
            tracing::warn!(source = %name, "gitops fetch: {e}");
            status.error = Some(e);
            refresh_health(ctx, &mut status);
        }
    }
    write_status(m, &status, source_revision).await?;
    Ok(status)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A sync: applies what the verdicts say.
    Sync { manual: bool },
    /// A refresh between syncs: decides, never applies, keeps the sync times.
    Refresh,
}

/// Each stack's new status (applying where the verdict says so, in sync mode).
async fn evaluate(
    ctx: &Ctx,
    source: &Source,
    snapshot: &Snapshot,
    previous: &SourceStatus,
    mode: Mode,
    now: UnixMillis,
) -> BTreeMap<String, StackStatus> {
    let m = &ctx.manager;
    let owners = owners(m, &source.name);
    let mut out = BTreeMap::new();
    for stack in &snapshot.stacks {
        let before = previous.stacks.get(&stack.name);
        let (changes, rolled_back) = match &stack.spec {
            Ok(spec) => {
                let live = stacks::plan_live(&m.sm, spec);
                let effective = status::effective_changes(&live.plan, source.prune);
                (status::describe(&effective), rolled_back(m, &stack.name))
            }
            Err(_) => (String::new(), None),
        };
        let facts = Facts {
            source,
            stack,
            previous: before,
            changes: &changes,
            rolled_back,
            owner: owners.get(&stack.name).map(String::as_str),
            manual: mode == Mode::Sync { manual: true },
        };
        let verdict = status::decide(&facts);
        let applied = match (&verdict, &stack.spec, mode) {
            (Verdict::Apply { reason }, Ok(spec), Mode::Sync { .. }) => {
                Some(apply(ctx, source, &snapshot.commit, spec, reason, now).await)
            }
            _ => None,
        };
        let health = stack_health(m, &stack.name, stack.spec.as_ref().ok());
        let at = match (mode, before) {
            (Mode::Refresh, Some(b)) => b.last_sync_at,
            _ => now,
        };
        let mut next = status::next_status(&facts, &snapshot.commit, &verdict, applied, health, at);
        if mode == Mode::Refresh {
            next.last_applied_at = before.and_then(|b| b.last_applied_at);
        }
        out.insert(stack.name.clone(), next);
    }
    // Stacks whose files are gone from git.
    for (name, before) in &previous.stacks {
        if out.contains_key(name) || before.applied_commit.is_none() {
            continue;
        }
        let may_remove = source.prune && (source.auto_sync || mode == Mode::Sync { manual: true });
        if may_remove && matches!(mode, Mode::Sync { .. }) {
            match remove_stack(m, name).await {
                Ok(()) => {
                    tracing::info!(source = %source.name, stack = %name, "removed: its file is gone from git (prune)");
                    continue;
                }
                Err(e) => {
                    let mut kept = before.clone();
                    kept.sync = SyncState::OutOfSync;
                    kept.error = Some(format!(
                        "its file is gone from git but the stack could not be removed: {e}"
                    ));
                    out.insert(name.clone(), kept);
                    continue;
                }
            }
        }
        let mut kept = before.clone();
        let health = stack_health(m, name, None);
        kept.health = health.0;
        kept.health_message = health.1;
        if kept.health == Health::Missing && !source.prune {
            // Removed by hand after git dropped it: nothing left to report.
            continue;
        }
        kept.sync = SyncState::OutOfSync;
        kept.error = None;
        kept.message = if source.prune {
            format!(
                "{} is gone from git; the stack is removed at the next sync",
                before.file
            )
        } else {
            format!(
                "{} is gone from git; the stack keeps running (prune is off: `swarm stack rm {name}` removes it)",
                before.file
            )
        };
        out.insert(name.clone(), kept);
    }
    out
}

/// Applies git's spec of one stack through the same path as `swarm apply`; the stack's new revision.
async fn apply(
    ctx: &Ctx,
    source: &Source,
    commit: &str,
    spec: &StackSpec,
    reason: &str,
    now: UnixMillis,
) -> Result<u64, String> {
    let request = stacks::ApplyRequest {
        spec: spec.clone(),
        expected_revision: None,
        prune: source.prune,
        source: format!("git {commit}"),
        secret_data: Default::default(),
    };
    let by = format!("source {}", source.name);
    match stacks::apply_live(&ctx.manager, &request, &by, now, true).await {
        Ok(response) => {
            if response.changed {
                tracing::info!(
                    source = %source.name,
                    stack = %spec.name,
                    revision = response.revision,
                    commit = %commit,
                    "applied: {reason}"
                );
            }
            Ok(response.revision)
        }
        Err(e) => {
            tracing::warn!(source = %source.name, stack = %spec.name, "apply failed: {e}");
            Err(e.to_string())
        }
    }
}

async fn remove_stack(m: &Manager, name: &str) -> Result<(), String> {
    let current = stacks::current(&m.sm, name);
    if current.stack.is_none() && current.services.is_empty() {
        return Ok(());
    }
    let ops = stacks::remove_ops(&current);
    m.write_as_leader(Request { guards: vec![], ops })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Stacks that another source applied, by stack name.
fn owners(m: &Manager, me: &str) -> HashMap<String, String> {
    store::list::<SourceStatus>(&m.sm)
        .into_iter()
        .filter(|(s, _)| s.name != me)
        .flat_map(|(s, _)| {
            s.stacks
                .into_iter()
                .filter(|(_, st)| st.applied_commit.is_some())
                .map(move |(stack, _)| (stack, s.name.clone()))
        })
        .collect()
}

/// A service of the stack that a rollback put back on an older spec.
fn rolled_back(m: &Manager, stack: &str) -> Option<(String, String)> {
    stacks::current(&m.sm, stack).services.into_iter().find_map(|(s, _)| {
        s.update_status
            .as_ref()
            .filter(|u| u.state.is_rollback())
            .map(|u| (s.name().to_string(), u.message.clone()))
    })
}

fn stack_health(m: &Manager, stack: &str, spec: Option<&StackSpec>) -> (Health, String) {
    let current = stacks::current(&m.sm, stack);
    let services: Vec<&Service> = current.services.iter().map(|(s, _)| s).collect();
    let names: HashSet<&str> = services.iter().map(|s| s.name()).collect();
    let tasks: Vec<Task> = store::list::<Task>(&m.sm)
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| names.contains(t.service.as_str()))
        .collect();
    let tasks: Vec<&Task> = tasks.iter().collect();
    let expected: Option<BTreeSet<String>> = spec.map(|s| s.services.keys().cloned().collect());
    status::health(expected.as_ref(), &services, &tasks, &m.nodes())
}

/// Only the health of each stack (after a failed fetch, when git's side is unknown).
fn refresh_health(ctx: &Ctx, status: &mut SourceStatus) {
    for (name, stack) in status.stacks.iter_mut() {
        let (health, message) = stack_health(&ctx.manager, name, None);
        stack.health = health;
        stack.health_message = message;
    }
}

/// Between syncs: the sync and health of each stack of each idle source as the store has them now, written when
/// they changed.
async fn refresh(ctx: &Ctx, sources: &BTreeMap<String, Source>, busy: &HashSet<String>) {
    for (name, source) in sources {
        if busy.contains(name) {
            continue;
        }
        let Some((previous, _)) = store::get::<SourceStatus>(&ctx.manager.sm, name) else {
            continue;
        };
        let Some(snapshot) = ctx
            .snapshot(name)
            .filter(|s| Some(&s.commit) == previous.commit.as_ref())
        else {
            continue;
        };
        let mut next = previous.clone();
        next.stacks = evaluate(ctx, source, &snapshot, &previous, Mode::Refresh, (ctx.clock)()).await;
        if next != previous {
            let Some((_, revision)) = store::get::<Source>(&ctx.manager.sm, name) else {
                continue;
            };
            if let Err(e) = write_status(&ctx.manager, &next, revision).await {
                tracing::debug!(source = %name, "gitops status refresh: {e}");
            }
        }
    }
}

/// Records the status, guarded on the source it belongs to (a source removed meanwhile gets no status back).
async fn write_status(m: &Manager, status: &SourceStatus, source_revision: u64) -> Result<(), SyncError> {
    let request = Request {
        guards: vec![Guard::Revision {
            table: Source::TABLE.to_string(),
            key: status.name.clone(),
            revision: source_revision,
        }],
        ops: vec![store::put(status)],
    };
    match m.write_as_leader(request).await {
        Ok(_) => Ok(()),
        Err(crate::manager::ManagerError::Rejected(_)) => Err(SyncError::NotLeader),
        Err(e) => Err(SyncError::Internal {
            name: status.name.clone(),
            reason: format!("cannot record the status: {e}"),
        }),
    }
}
