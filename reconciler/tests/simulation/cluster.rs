//! A simulated manager cluster: Raft nodes on their own redb stores, wired through the in-memory router, that crash
//! and restart from disk; a monitor per node checks every metrics update the node publishes.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;

use openraft::error::Fatal;
use openraft::ServerState;
use serde_json::json;
use swarm_reconciler::store;
use swarm_reconciler::store::testing::MalformedAppend;
use swarm_reconciler::store::testing::Router;
use swarm_reconciler::store::typ;
use swarm_reconciler::store::NodeId;
use swarm_reconciler::store::Op;
use swarm_reconciler::store::Request;
use swarm_reconciler::store::Response;
use swarm_reconciler::store::StateMachineStore;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::schedule::Step;

/// The table the simulated clients write.
pub const TABLE: &str = "kv";

/// How often a wait re-checks its condition.
const POLL: Duration = Duration::from_millis(5);

/// How long starting, stopping or reopening a node may take.
const NODE_DEADLINE: Duration = Duration::from_secs(5);

type WriteResult = Result<typ::ClientWriteResponse, typ::RaftError<typ::ClientWriteError>>;

/// A table's rows: key, value and mod revision.
pub type Rows = Vec<(String, swarm_reconciler::store::Json, u64)>;

/// Whether openraft is built to elect one leader per term (its `single-term-leader` feature). By default it is not:
/// a leader is identified by (term, node id), totally ordered, so a term can have several leaders one after the
/// other (a voter that granted (5, node 2) may later grant (5, node 3)); only the last can commit. Raft's "one
/// leader per term" then reads "one leader per (term, node)", which holds by construction, so with the default
/// the checks that carry the weight are: votes never go back, and no two nodes apply different entries at one
/// index. The feature makes the committed leader id a bare term, which is how this tells the modes apart.
const ONE_LEADER_PER_TERM: bool =
    std::mem::size_of::<openraft::CommittedLeaderId<NodeId>>() == std::mem::size_of::<u64>();

/// What the nodes reported over the run, and every way that broke an invariant.
#[derive(Default)]
pub struct Seen {
    /// term → the nodes some node named as its leader.
    leaders: BTreeMap<u64, BTreeSet<NodeId>>,
    /// The last vote and applied index each node reported; neither may go back, not even across a restart.
    votes: BTreeMap<NodeId, typ::Vote>,
    applied: BTreeMap<NodeId, u64>,
    /// index → the entry some node applied there, and that node: every node must apply the same entry.
    entries: BTreeMap<u64, (typ::LogId, NodeId)>,
    pub violations: Vec<String>,
}

impl Seen {
    fn observe(&mut self, m: &typ::RaftMetrics) {
        // Before a (re)started node has loaded its store, it publishes placeholder metrics: skip those.
        if m.vote == typ::Vote::default() && m.last_log_index.is_none() {
            return;
        }
        if let Err(fatal) = &m.running_state {
            if !matches!(fatal, Fatal::Stopped) {
                self.violations
                    .push(format!("node {} stopped on its own: {fatal}", m.id));
            }
        }
        if let Some(leader) = m.current_leader {
            let leaders = self.leaders.entry(m.current_term).or_default();
            leaders.insert(leader);
            if ONE_LEADER_PER_TERM && leaders.len() > 1 {
                self.violations.push(format!(
                    "two leaders in term {}: {leaders:?} (node {} names {leader})",
                    m.current_term, m.id
                ));
            }
        }
        if let Some(before) = self.votes.insert(m.id, m.vote) {
            if m.vote.partial_cmp(&before) == Some(std::cmp::Ordering::Less) {
                self.violations
                    .push(format!("node {}'s vote went back from {before} to {}", m.id, m.vote));
            }
        }
        if let Some(last) = m.last_applied {
            match self.entries.entry(last.index) {
                Entry::Vacant(e) => {
                    e.insert((last, m.id));
                }
                Entry::Occupied(e) if e.get().0 != last => {
                    let (other, by) = *e.get();
                    self.violations.push(format!(
                        "two entries applied at index {}: {other} on node {by}, {last} on node {}",
                        last.index, m.id
                    ));
                }
                Entry::Occupied(_) => {}
            }
        }
        let applied_now = m.last_applied.map_or(0, |l| l.index);
        let applied = self.applied.entry(m.id).or_default();
        if applied_now < *applied {
            self.violations.push(format!(
                "node {}'s applied index went back from {applied} to {applied_now}",
                m.id
            ));
        }
        *applied = applied_now;
    }

    /// How many terms had a leader, and how many of those had more than one.
    pub fn leader_terms(&self) -> (usize, usize) {
        let shared = self.leaders.values().filter(|leaders| leaders.len() > 1).count();
        (self.leaders.len(), shared)
    }
}

/// How a client write ended.
#[derive(Debug)]
pub enum Write {
    /// `client_write` returned Ok: the entry at `revision` is committed.
    Acked { node: NodeId, revision: u64, attempts: u32 },
    /// No attempt returned Ok in time; an attempt that timed out may still commit later (see [`Sim::settle`]).
    Unacked { attempts: u32 },
}

/// N managers in one process.
pub struct Sim {
    router: Router,
    config: Arc<openraft::Config>,
    nodes: Vec<NodeId>,
    /// Each node's data directory; it outlives crashes.
    dirs: BTreeMap<NodeId, TempDir>,
    /// The state machines of the running nodes (a crashed node's must be dropped, or its store stays locked).
    machines: BTreeMap<NodeId, StateMachineStore>,
    monitors: BTreeMap<NodeId, JoinHandle<()>>,
    seen: Arc<Mutex<Seen>>,
    /// Writes whose attempt timed out, still waiting for an answer: k{n} and the attempt.
    pending: Vec<(u64, JoinHandle<WriteResult>)>,
}

impl Sim {
    /// Starts `count` nodes, initializes them as one cluster and waits until each holds the membership and the first
    /// leader's blank entry (before that, cutting a node off could leave the rest unable to elect anyone).
    pub async fn start(count: usize, config: openraft::Config) -> Result<Sim, String> {
        let config = Arc::new(config.validate().map_err(|e| format!("invalid Raft config: {e}"))?);
        let nodes: Vec<NodeId> = (1..=count as NodeId).collect();
        let mut sim = Sim {
            router: Router::new(),
            config,
            nodes: nodes.clone(),
            dirs: BTreeMap::new(),
            machines: BTreeMap::new(),
            monitors: BTreeMap::new(),
            seen: Arc::default(),
            pending: Vec::new(),
        };
        for &id in &nodes {
            sim.dirs.insert(id, data_dir()?);
            sim.restart(id).await?;
        }
        let members = nodes
            .iter()
            .map(|&id| (id, Router::peer(id)))
            .collect::<BTreeMap<_, _>>();
        sim.raft(1)?
            .initialize(members)
            .await
            .map_err(|e| format!("initialize: {e}"))?;
        for &id in &nodes {
            sim.raft(id)?
                .wait(Some(NODE_DEADLINE))
                .applied_index_at_least(Some(1), "membership and first blank entry")
                .await
                .map_err(|e| format!("node {id} did not apply the first entries: {e}"))?;
        }
        Ok(sim)
    }

    fn raft(&self, id: NodeId) -> Result<typ::Raft, String> {
        self.router.raft(id).ok_or_else(|| format!("node {id} is not running"))
    }

    fn running(&self) -> Vec<(NodeId, typ::Raft)> {
        self.nodes
            .iter()
            .filter_map(|&id| self.router.raft(id).map(|raft| (id, raft)))
            .collect()
    }

    /// The running nodes that believe they lead, highest term first.
    fn believers(&self) -> Vec<NodeId> {
        let mut believers: Vec<(u64, NodeId)> = self
            .running()
            .into_iter()
            .filter_map(|(id, raft)| {
                let m = raft.metrics().borrow().clone();
                (m.state == ServerState::Leader).then_some((m.current_term, id))
            })
            .collect();
        believers.sort_unstable_by(|a, b| b.cmp(a));
        believers.into_iter().map(|(_, id)| id).collect()
    }

    /// The node that leads in the highest term, as far as the nodes know.
    pub fn leader(&self) -> Option<NodeId> {
        self.believers().first().copied()
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records every running node's metrics now (the monitors see each update too; this is the per-step sample).
    pub fn sample(&self) {
        for (_, raft) in self.running() {
            let m = raft.metrics().borrow().clone();
            self.seen().observe(&m);
        }
    }

    /// The invariant violations seen so far.
    pub fn violations(&self) -> Vec<String> {
        self.seen().violations.clone()
    }

    fn violation(&self, what: String) {
        self.seen().violations.push(what);
    }

    pub fn leader_terms(&self) -> (usize, usize) {
        self.seen().leader_terms()
    }

    /// The malformed AppendEntries requests the network carried (see [`MalformedAppend`]).
    pub fn malformed(&self) -> Vec<MalformedAppend> {
        self.router.malformed()
    }

    /// Applies a link step to the router (writes, crashes and restarts have their own methods).
    pub fn cut(&self, step: &Step) {
        let r = &self.router;
        match step {
            Step::Isolate(id) => r.isolate(*id),
            Step::Rejoin(id) => r.rejoin(*id),
            Step::Split(minority) => {
                for &x in minority {
                    for &y in self.nodes.iter().filter(|y| !minority.contains(y)) {
                        r.block(x, y);
                        r.block(y, x);
                    }
                }
            }
            Step::Block(from, to) => r.block(*from, *to),
            Step::Hold(id) => r.hold(*id),
            Step::Release(id) => r.release(*id),
            Step::Heal => r.heal(),
            Step::Write { .. } | Step::Crash(_) | Step::Restart(_) | Step::Idle(_) => {}
        }
    }

    /// Writes `k{n} = n` through the nodes that believe they lead, each attempt bounded by `attempt`, until one is
    /// acknowledged or `within` has passed. Attempt `i` goes to believer `pick + i` (highest term first), so a
    /// stale leader gets its turn too.
    pub async fn write(&mut self, n: u64, pick: u64, within: Duration, attempt: Duration) -> Write {
        let deadline = Instant::now() + within;
        let mut attempts = 0;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Write::Unacked { attempts };
            }
            let believers = self.believers();
            if believers.is_empty() {
                tokio::time::sleep(POLL).await;
                continue;
            }
            let node = believers[((pick + u64::from(attempts)) % believers.len() as u64) as usize];
            let Ok(raft) = self.raft(node) else { continue };
            attempts += 1;
            let mut call = tokio::spawn(async move { raft.client_write(put(n).into()).await });
            match tokio::time::timeout(attempt.min(deadline - now), &mut call).await {
                Ok(Ok(Ok(written))) => {
                    let revision = written.log_id.index;
                    if written.data != (Response::Applied { revision }) {
                        self.violation(format!("k{n} written at {revision} but applied as {:?}", written.data));
                    }
                    return Write::Acked {
                        node,
                        revision,
                        attempts,
                    };
                }
                // Not the leader any more, or stopped: ask the next believer (after a beat, not in a hot loop).
                Ok(Ok(Err(_))) => tokio::time::sleep(POLL).await,
                Ok(Err(panic)) => {
                    self.violation(format!("client_write of k{n} on node {node} panicked: {panic}"));
                    return Write::Unacked { attempts };
                }
                // The entry may still commit; keep listening.
                Err(_) => self.pending.push((n, call)),
            }
        }
    }

    /// Writes `k{n} = n` on node `node` (whether it leads or not), waiting at most `within` for the answer; a write
    /// still unanswered then is kept, like [`Self::write`]'s timed-out attempts.
    pub async fn write_on(&mut self, node: NodeId, n: u64, within: Duration) -> Result<WriteResult, String> {
        let raft = self.raft(node)?;
        let mut call = tokio::spawn(async move { raft.client_write(put(n).into()).await });
        match tokio::time::timeout(within, &mut call).await {
            Ok(result) => result.map_err(|panic| format!("client_write of k{n} on node {node} panicked: {panic}")),
            Err(_) => {
                self.pending.push((n, call));
                Err(format!("k{n} on node {node}: no answer within {within:?}"))
            }
        }
    }

    /// The metrics node `id` publishes now, if it runs.
    pub fn metrics(&self, id: NodeId) -> Option<typ::RaftMetrics> {
        self.router.raft(id).map(|raft| raft.metrics().borrow().clone())
    }

    /// Shuts node `id` down, as a crash would stop it: nothing more reaches its store.
    pub async fn crash(&mut self, id: NodeId) -> Result<(), String> {
        if let Some(monitor) = self.monitors.remove(&id) {
            monitor.abort();
        }
        self.machines.remove(&id);
        let raft = self
            .router
            .remove(id)
            .ok_or_else(|| format!("node {id} is not running"))?;
        match tokio::time::timeout(NODE_DEADLINE, raft.shutdown()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("node {id}'s Raft task failed while stopping: {e}")),
            Err(_) => Err(format!("node {id} did not stop within {NODE_DEADLINE:?}")),
        }
    }

    /// Starts node `id` from its data directory.
    pub async fn restart(&mut self, id: NodeId) -> Result<(), String> {
        let dir = self.dirs[&id].path().to_path_buf();
        let deadline = Instant::now() + NODE_DEADLINE;
        // Raft's state machine worker ends just after shutdown returns; until then it holds the store's file lock.
        let stores = loop {
            match store::open(&dir) {
                Ok(stores) => break stores,
                Err(store::StoreError::Open { .. }) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Err(e) => return Err(format!("node {id} cannot reopen its store: {e}")),
            }
        };
        let machine = stores.state_machine.clone();
        let raft = self
            .router
            .start(id, self.config.clone(), stores)
            .await
            .map_err(|e| format!("node {id} does not start from its store: {e}"))?;
        self.machines.insert(id, machine);
        let seen = self.seen.clone();
        let mut metrics = raft.metrics();
        self.monitors.insert(
            id,
            tokio::spawn(async move {
                loop {
                    let m = metrics.borrow_and_update().clone();
                    seen.lock().unwrap_or_else(PoisonError::into_inner).observe(&m);
                    if metrics.changed().await.is_err() {
                        // The Raft core owns the sender; a crash aborts this monitor before stopping the node, so
                        // a closed channel means the core ended on its own (a panic: openraft reports no metrics).
                        seen.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .violations
                            .push(format!(
                                "node {id}'s Raft core stopped on its own (panicked); last metrics: {m}"
                            ));
                        return;
                    }
                }
            }),
        );
        Ok(())
    }

    /// Waits until every running node has applied the same last entry, and it is the last entry any node holds.
    pub async fn converge(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let metrics: Vec<typ::RaftMetrics> = self
                .running()
                .iter()
                .map(|(_, raft)| raft.metrics().borrow().clone())
                .collect();
            let last = metrics.iter().filter_map(|m| m.last_log_index).max();
            if metrics.iter().all(|m| m.last_applied.map(|l| l.index) == last) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let states: Vec<String> = metrics.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "the nodes did not converge within {within:?}:\n  {}",
                    states.join("\n  ")
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits up to `within` for the writes whose attempt timed out. Returns those that were acknowledged late (k{n}
    /// and the revision) and how many never answered.
    pub async fn settle(&mut self, within: Duration) -> (Vec<(u64, u64)>, usize) {
        let deadline = Instant::now() + within;
        let mut late = Vec::new();
        let mut unanswered = 0;
        for (n, call) in std::mem::take(&mut self.pending) {
            match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(Ok(written))) => late.push((n, written.log_id.index)),
                Ok(Ok(Err(_))) => {}
                Ok(Err(panic)) => self.violation(format!("client_write of k{n} panicked: {panic}")),
                Err(_) => unanswered += 1,
            }
        }
        (late, unanswered)
    }

    /// Every running node's revision and `kv` table.
    pub fn contents(&self) -> BTreeMap<NodeId, (u64, Rows)> {
        self.machines
            .iter()
            .map(|(&id, sm)| {
                let (revision, rows) = sm.list_with_revision(TABLE);
                (id, (revision, rows))
            })
            .collect()
    }

    pub async fn shutdown(mut self) -> Result<(), String> {
        for (_, call) in self.pending.drain(..) {
            call.abort();
        }
        for id in self.nodes.clone() {
            if self.router.raft(id).is_some() {
                self.crash(id).await?;
            }
        }
        Ok(())
    }
}

/// The client's request for write `n`.
pub fn put(n: u64) -> Request {
    Request {
        guards: vec![],
        ops: vec![Op::Put {
            table: TABLE.to_string(),
            key: format!("k{n}"),
            value: json!(n).into(),
        }],
    }
}

/// A node's data directory: on tmpfs when there is one. fsync there is free, which keeps the timing of a run about
/// Raft rather than the disk; a crash here is a stopped Raft and a reopened redb file either way.
fn data_dir() -> Result<TempDir, String> {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new().prefix("swarm-sim-").tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("swarm-sim-").tempdir()
    };
    dir.map_err(|e| format!("cannot create a data directory: {e}"))
}
