//! A manager: its Raft member, writes (forwarded to the leader, refused clearly without quorum), heartbeats and
//! the leader's node monitor, and Raft membership changes.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use openraft::ServerState;

use crate::ca::Role;
use crate::cluster::now_millis;
use crate::cluster::Cluster;
use crate::cluster::Node;
use crate::cluster::NodeStatus;
use crate::cluster::NodeTransition;
use crate::cluster::CLUSTER_KEY;
use crate::raftnet::Network;
use crate::raftnet::PeerClient;
use crate::store;
use crate::store::typ;
use crate::store::NodeId;
use crate::store::Object as _;
use crate::store::Peer;
use crate::store::Request;
use crate::store::Response;
use crate::store::StateMachineStore;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(
        "cluster has no quorum: {reachable} of {total} managers reachable; writes are refused until a majority ({needed}) \
         is back. Restart the missing managers, or if they are lost for good run `swarm init --force-new-cluster` on a \
         surviving manager (it keeps the data)"
    )]
    NoQuorum {
        reachable: usize,
        total: usize,
        needed: usize,
    },
    /// A majority answers, but the write was not committed in time: a leader election was under way, or the
    /// managers are too slow right now.
    #[error(
        "the write was not committed in time although {reachable} of {total} managers answer (a leader election may \
         be under way); run the command again"
    )]
    NotCommitted { reachable: usize, total: usize },
    #[error("write was rejected: {0}")]
    Rejected(String),
    #[error("the store could not be opened: {0}")]
    Store(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// Tunables of a manager; tests shorten them.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// How long a write may wait for a leader and a quorum before it is refused.
    pub write_timeout: Duration,
    pub raft: openraft::Config,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            write_timeout: Duration::from_secs(3),
            raft: store::default_raft_config(),
        }
    }
}

pub struct Manager {
    pub raft: typ::Raft,
    pub sm: StateMachineStore,
    /// The Raft log (openraft owns it while the member runs; read only after [`Self::shutdown`]).
    log: store::LogStore,
    pub raft_id: NodeId,
    pub node_id: String,
    pub client: PeerClient,
    /// This manager's copy of the cluster's secrets key (see [`crate::secrets`]); kept by the daemon across role
    /// changes, so an unlocked manager stays unlocked.
    pub keyring: Arc<crate::secrets::Keyring>,
    config: ManagerConfig,
    /// Leader only: when each node was last heard from. Not replicated (rule 1's exception).
    /// Each entry: when the beat arrived and the heartbeat period in force then (the node's deadline follows it,
    /// so shortening the period does not mark nodes Down before they could know).
    heartbeats: Mutex<HashMap<String, (Instant, u64)>>,
    /// Leader only: since when this manager leads (nodes get a full grace period after a leader change).
    leader_since: Mutex<Option<Instant>>,
    /// Leader only: when a majority last acknowledged this leader (see [`track_quorum_acks`]).
    quorum_acked_at: Arc<Mutex<Option<Instant>>>,
    /// Leader only: writes go into Raft entries through it (group commit).
    proposer: store::Proposer,
}

/// How recent a majority's acknowledgement must be for a write to skip confirming leadership before it appends.
/// About what that confirmation itself leaves open (a round trip and the append), so the window in which a leader
/// cut off from its majority can append an entry that is then reported as failed, yet commits when the majority
/// returns to it, stays as narrow as with the confirmation; under load every replication round is such an
/// acknowledgement.
const FRESH_QUORUM_ACK: Duration = Duration::from_millis(5);

/// Where a manager stands in the Raft membership it knows.
enum Standing {
    Alone,
    Among,
    Outside,
}

/// Keeps `at` = when a majority last acknowledged this leader. openraft reports the age of that acknowledgement
/// as of its last metrics flush, which can be long ago on a quiet leader; the instant it stands for does not age.
async fn track_quorum_acks(
    mut metrics: tokio::sync::watch::Receiver<openraft::metrics::RaftDataMetrics<NodeId>>,
    at: Arc<Mutex<Option<Instant>>>,
) {
    while metrics.changed().await.is_ok() {
        let millis = metrics.borrow_and_update().millis_since_quorum_ack;
        let acked = millis.and_then(|ms| Instant::now().checked_sub(Duration::from_millis(ms)));
        if let Ok(mut at) = at.lock() {
            *at = acked;
        }
    }
}

impl Manager {
    /// Opens the store under `dir` and starts this manager's Raft member (not yet part of any membership).
    pub async fn start(
        dir: &Path,
        raft_id: NodeId,
        node_id: &str,
        client: PeerClient,
        keyring: Arc<crate::secrets::Keyring>,
        config: ManagerConfig,
    ) -> Result<Arc<Manager>, ManagerError> {
        let network = Network { client: client.clone() };
        Self::start_with_network(dir, raft_id, node_id, network, client, keyring, config).await
    }

    /// Like [`Self::start`], with Raft RPCs carried by `network` instead of HTTPS: the simulations' in-memory
    /// network ([`store::testing::Router::network`]). Writes forwarded to another leader still use `client`.
    pub async fn start_with_network<N: openraft::RaftNetworkFactory<store::TypeConfig>>(
        dir: &Path,
        raft_id: NodeId,
        node_id: &str,
        network: N,
        client: PeerClient,
        keyring: Arc<crate::secrets::Keyring>,
        config: ManagerConfig,
    ) -> Result<Arc<Manager>, ManagerError> {
        let stores = store::open(dir)
            .map_err(|e| ManagerError::Store(e.to_string()))?
            .leading_as(raft_id);
        let sm = stores.state_machine.clone();
        let log = stores.log.clone();
        let raft_config = Arc::new(
            config
                .raft
                .clone()
                .validate()
                .map_err(|e| ManagerError::Raft(e.to_string()))?,
        );
        // The leader's own appends are synced while they are replicated, so what makes a commit visible waits for the
        // sync (store::durable): applying in the state machine, and the commit index sent to followers.
        let network = crate::raftnet::Gated {
            inner: network,
            durable: stores.log.durable(),
        };
        let raft = openraft::Raft::new(raft_id, raft_config, network, stores.log, stores.state_machine)
            .await
            .map_err(|e| ManagerError::Raft(e.to_string()))?;
        let quorum_acked_at = Arc::new(Mutex::new(None));
        tokio::spawn(track_quorum_acks(raft.data_metrics(), quorum_acked_at.clone()));
        let proposer = store::Proposer::start(raft.clone());
        Ok(Arc::new(Manager {
            proposer,
            raft,
            sm,
            log,
            raft_id,
            node_id: node_id.to_string(),
            client,
            keyring,
            config,
            heartbeats: Mutex::new(HashMap::new()),
            leader_since: Mutex::new(None),
            quorum_acked_at,
        }))
    }

    /// Makes this manager the only member of a new cluster.
    pub async fn initialize(&self, me: Peer) -> Result<(), ManagerError> {
        let members = BTreeMap::from([(self.raft_id, me)]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| ManagerError::Raft(e.to_string()))
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.raft_id)
            && !matches!(self.standing(), Standing::Outside)
    }

    /// The current leader as this manager knows it.
    pub fn leader(&self) -> Option<(NodeId, Peer)> {
        let metrics = self.raft.metrics().borrow().clone();
        let id = metrics.current_leader?;
        let peer = metrics.membership_config.membership().get_node(&id).cloned()?;
        Some((id, peer))
    }

    /// Voting members and their addresses.
    pub fn voters(&self) -> Vec<(NodeId, Peer)> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|p| (id, p.clone())))
            .collect()
    }

    pub fn cluster(&self) -> Option<Cluster> {
        store::get::<Cluster>(&self.sm, CLUSTER_KEY).map(|(c, _)| c)
    }

    pub fn nodes(&self) -> Vec<Node> {
        store::list::<Node>(&self.sm).into_iter().map(|(n, _)| n).collect()
    }

    pub fn node(&self, id: &str) -> Option<(Node, u64)> {
        store::get::<Node>(&self.sm, id)
    }

    /// Commits `request` through the leader, wherever it is; fails within `write_timeout` without quorum.
    pub async fn write(&self, request: Request) -> Result<Response, ManagerError> {
        let deadline = Instant::now() + self.config.write_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.no_quorum().await);
            }
            let attempt = if matches!(self.standing(), Standing::Outside) {
                // Removed from the membership (demoted, or a leader that removed itself): no leader replicates to
                // this manager any more, so what it knows of the leader may be itself. A voter knows better.
                self.forward_to_voters(&request, remaining).await
            } else if self.is_leader() && !self.quorum_acked() {
                // A leader that has not heard from a majority lately must not append: the entry could commit
                // later, after the caller was told it failed. Wait for acks (or a new leader) until the deadline.
                None
            } else if self.is_leader() {
                // Confirm with a majority before appending: an entry appended by a cut-off leader could commit
                // later, after the caller was told that the write failed. A majority that acknowledged this leader
                // just now is confirmation enough (see FRESH_QUORUM_ACK), so under load a write costs one round
                // trip instead of two.
                if !self.quorum_acked_within(FRESH_QUORUM_ACK) {
                    match tokio::time::timeout(remaining, self.raft.ensure_linearizable()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) => {
                            let wait = remaining.min(Duration::from_millis(50));
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        Err(_) => return Err(self.no_quorum().await),
                    }
                }
                match tokio::time::timeout(remaining, self.proposer.write(request.clone())).await {
                    Ok(Ok(response)) => return Ok(response),
                    Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => None,
                    Ok(Err(e)) => return Err(ManagerError::Raft(e.to_string())),
                    Err(_) => return Err(self.no_quorum().await),
                }
            } else if let Some((_, leader)) = self.leader() {
                self.forward_write(&leader, &request, remaining).await
            } else {
                None
            };
            if let Some(response) = attempt {
                return Ok(response);
            }
            // No leader yet, or it did not answer: wait for the next election result.
            let wait = remaining.min(Duration::from_millis(50));
            let _ = self
                .raft
                .wait(Some(wait))
                .metrics(|m| m.current_leader.is_some(), "leader")
                .await;
            tokio::time::sleep(Duration::from_millis(10).min(remaining)).await;
        }
    }

    /// Commits `request` only if this manager leads now (never forwarded): a leader-only controller's decision is
    /// worth nothing once another manager leads, since that one decides again from the state it sees.
    pub async fn write_as_leader(&self, request: Request) -> Result<Response, ManagerError> {
        if !self.is_leader() || !self.quorum_acked() {
            return Err(ManagerError::Rejected("this manager is not the leader".into()));
        }
        let timeout = self.config.write_timeout;
        match tokio::time::timeout(timeout, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ManagerError::Rejected(format!("leadership not confirmed: {e}"))),
            Err(_) => return Err(self.no_quorum().await),
        }
        match tokio::time::timeout(timeout, self.proposer.write(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(ManagerError::Raft(e.to_string())),
            Err(_) => Err(self.no_quorum().await),
        }
    }

    /// Where this manager stands in the membership it knows: the only voter, one of several, or none (a leader that
    /// just removed itself leads until the remaining voters elect one of them, and must not take writes meanwhile: no
    /// voter would accept its entries).
    fn standing(&self) -> Standing {
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow();
        let membership = metrics.membership_config.membership();
        let mut voters = membership.voter_ids();
        match (voters.next(), voters.next()) {
            (Some(only), None) if only == self.raft_id => Standing::Alone,
            _ if membership.voter_ids().any(|id| id == self.raft_id) => Standing::Among,
            _ => Standing::Outside,
        }
    }

    /// Whether a majority acknowledged this leader within `age` (always, for the only manager).
    fn quorum_acked_within(&self, age: Duration) -> bool {
        match self.standing() {
            Standing::Alone => true,
            Standing::Outside => false,
            Standing::Among => {
                let acked = self.quorum_acked_at.lock().ok().and_then(|at| *at);
                acked.is_some_and(|at| at.elapsed() <= age)
            }
        }
    }

    /// Whether a majority acknowledged this leader recently (always true for the only manager).
    fn quorum_acked(&self) -> bool {
        match self.standing() {
            Standing::Alone => true,
            Standing::Outside => false,
            Standing::Among => {
                let stale_after = (self.config.raft.election_timeout_max * 2).max(500);
                let millis = self.raft.metrics().borrow().millis_since_quorum_ack;
                millis.is_some_and(|ms| ms <= stale_after)
            }
        }
    }

    async fn forward_to_voters(&self, request: &Request, timeout: Duration) -> Option<Response> {
        for (_, peer) in self.voters() {
            if let Some(response) = self.forward_write(&peer, request, timeout).await {
                return Some(response);
            }
        }
        None
    }

    async fn forward_write(&self, leader: &Peer, request: &Request, timeout: Duration) -> Option<Response> {
        let url = format!("https://{}/v1/internal/write", leader.addr);
        let response = self
            .client
            .get()
            .post(url)
            .json(request)
            .timeout(timeout)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json::<Response>().await.ok()
    }

    /// Counts the managers that answer now, to say how far from quorum the cluster is.
    async fn no_quorum(&self) -> ManagerError {
        let voters = self.voters();
        let total = voters.len().max(1);
        let mut reachable = 0;
        for (id, peer) in &voters {
            if *id == self.raft_id {
                reachable += 1;
                continue;
            }
            let url = format!("https://{}/v1/ping", peer.addr);
            let ok = self
                .client
                .get()
                .get(url)
                .timeout(Duration::from_millis(300))
                .send()
                .await;
            if ok.is_ok_and(|r| r.status().is_success()) {
                reachable += 1;
            }
        }
        let needed = total / 2 + 1;
        if reachable >= needed {
            return ManagerError::NotCommitted { reachable, total };
        }
        ManagerError::NoQuorum {
            reachable,
            total,
            needed,
        }
    }

    /// Adds a manager to the Raft membership: as a learner until it has caught up, then as a voter.
    pub async fn add_manager(&self, raft_id: NodeId, peer: Peer) -> Result<(), ManagerError> {
        self.raft
            .add_learner(raft_id, peer, true)
            .await
            .map_err(|e| ManagerError::Raft(e.to_string()))?;
        let mut voters: BTreeSet<NodeId> = self.voters().into_iter().map(|(id, _)| id).collect();
        voters.insert(raft_id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| ManagerError::Raft(e.to_string()))?;
        Ok(())
    }

    /// Removes a manager from the Raft membership (the leader steps down when it removes itself).
    pub async fn remove_manager(&self, raft_id: NodeId) -> Result<(), ManagerError> {
        let voters: BTreeSet<NodeId> = self
            .voters()
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| *id != raft_id)
            .collect();
        if voters.is_empty() {
            return Err(ManagerError::Rejected("cannot remove the last manager".into()));
        }
        let change = self.raft.change_membership(voters.clone(), false);
        let result = tokio::time::timeout(self.config.write_timeout * 2, change).await;
        if raft_id != self.raft_id {
            return match result {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(ManagerError::Raft(e.to_string())),
                Err(_) => Err(self.no_quorum().await),
            };
        }
        if let Ok(Ok(_)) = result {
            return Ok(());
        }
        // The remaining voters may elect one of them and commit the change before this leader hears that they took
        // it: then nobody tells this manager, and openraft's call neither succeeds nor fails. Ask them.
        let peers: Vec<Peer> = self
            .voters()
            .into_iter()
            .filter(|(id, _)| voters.contains(id))
            .map(|(_, peer)| peer)
            .collect();
        let deadline = Instant::now() + self.config.write_timeout;
        while Instant::now() < deadline {
            for peer in &peers {
                let url = format!("https://{}/v1/internal/membership", peer.addr);
                let call = self.client.get().get(url).timeout(Duration::from_millis(500)).send();
                let Ok(response) = call.await else { continue };
                let Ok(applied) = response.json::<crate::wire::AppliedMembership>().await else {
                    continue;
                };
                if applied.voters.is_some_and(|v| !v.is_empty() && !v.contains(&raft_id)) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(ManagerError::Raft(format!(
            "the other managers did not confirm this manager's removal in time ({}); check `node ls` and run the \
             command again",
            match result {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer from the Raft membership change".into(),
            }
        )))
    }

    /// The voters of this manager's membership once it is applied here (see [`crate::wire::AppliedMembership`]).
    pub fn applied_membership(&self) -> crate::wire::AppliedMembership {
        let metrics = self.raft.metrics().borrow().clone();
        let entry = metrics.membership_config.log_id().map(|l| l.index);
        let applied = metrics.last_applied.map(|l| l.index);
        let voters = (applied >= entry).then(|| metrics.membership_config.membership().voter_ids().collect());
        crate::wire::AppliedMembership { voters }
    }

    /// Leader only: a node reported in. Writes only the transition to Ready.
    pub async fn heartbeat(&self, node_id: &str) -> Result<(), ManagerError> {
        if let Ok(mut beats) = self.heartbeats.lock() {
            let period = self.cluster().map(|c| c.settings.heartbeat_period_ms).unwrap_or(1_000);
            beats.insert(node_id.to_string(), (Instant::now(), period));
        }
        if let Some((mut node, revision)) = self.node(node_id) {
            if node.status != NodeStatus::Ready {
                node.status = NodeStatus::Ready;
                node.status_message = String::new();
                node.updated_at = now_millis();
                node.status_changed_at = node.updated_at;
                self.write(guarded_put(&node, revision)).await?;
            }
        }
        Ok(())
    }

    /// Leader only: marks nodes Down whose heartbeats stopped for longer than the grace, and prunes workers Down for
    /// longer than the cluster's prune setting (off by default). Returns what it did.
    pub async fn check_heartbeats(&self) -> Result<Vec<NodeTransition>, ManagerError> {
        let now = Instant::now();
        let Some(since) = self.leader_since() else {
            return Ok(vec![]);
        };
        let Some((mut cluster, cluster_rev)) = store::get::<Cluster>(&self.sm, CLUSTER_KEY) else {
            return Ok(vec![]);
        };
        let beats = self.heartbeats.lock().map(|b| b.clone()).unwrap_or_default();
        let seen = |id: &str| {
            beats
                .get(id)
                .map(|(t, period)| (now.duration_since(*t).as_millis() as u64, *period))
        };
        let nodes = self.nodes();
        let leading_for = now.duration_since(since).as_millis() as u64;
        let decided = crate::cluster::node_transitions(
            &nodes,
            &seen,
            leading_for,
            &self.node_id,
            &cluster.settings,
            now_millis(),
        );
        for transition in &decided {
            match transition {
                NodeTransition::MarkDown(id) => {
                    let Some((mut node, revision)) = self.node(id) else {
                        continue;
                    };
                    node.status = NodeStatus::Down;
                    node.status_message = "heartbeat failure".into();
                    node.updated_at = now_millis();
                    node.status_changed_at = node.updated_at;
                    self.write(guarded_put(&node, revision)).await?;
                }
                NodeTransition::Prune(id) => {
                    let Some((_, revision)) = self.node(id) else { continue };
                    cluster.removed_nodes.insert(id.clone());
                    let request = Request {
                        guards: vec![
                            store::Guard::Revision {
                                table: Node::TABLE.into(),
                                key: id.clone(),
                                revision,
                            },
                            store::Guard::Revision {
                                table: Cluster::TABLE.into(),
                                key: CLUSTER_KEY.into(),
                                revision: cluster_rev,
                            },
                        ],
                        ops: vec![store::delete::<Node>(id), store::put(&cluster)],
                    };
                    self.write(request).await?;
                    tracing::info!(node = %id, "pruned a node that stayed down");
                    // The cluster record changed: one prune per pass keeps its guard valid.
                    break;
                }
            }
        }
        Ok(decided)
    }

    fn leader_since(&self) -> Option<Instant> {
        self.leader_since.lock().ok().and_then(|s| *s)
    }

    /// Runs the leader's duties until the manager shuts down: tracks leadership and checks heartbeats.
    pub async fn run_leader_duties(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut metrics = self.raft.metrics();
        let mut last_check: Option<Instant> = None;
        loop {
            let leading = metrics.borrow().state == ServerState::Leader;
            if let Ok(mut since) = self.leader_since.lock() {
                match (leading, since.is_some()) {
                    (true, false) => *since = Some(Instant::now()),
                    (false, true) => *since = None,
                    _ => {}
                }
            }
            let period = self.cluster().map(|c| c.settings.heartbeat_period_ms).unwrap_or(1_000);
            let tick = Duration::from_millis((period / 4).clamp(20, 250));
            // Raft's metrics change on every write: check at most once a tick (the check reads every node).
            if leading && last_check.is_none_or(|at| at.elapsed() >= tick) {
                last_check = Some(Instant::now());
                if let Err(e) = self.check_heartbeats().await {
                    tracing::debug!("heartbeat check: {e}");
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = metrics.changed() => {}
                _ = tokio::time::sleep(tick) => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }

    /// After [`Self::shutdown`]: applies every entry of this manager's log that its state machine lacks, as if
    /// committed, and returns how many. `--force-new-cluster` rebuilds the cluster from the state machine, and the
    /// committed id is not fsynced (see `store::log`), so an acknowledged write may be in the log only; like etcd's
    /// `--force-new-cluster`, the survivor's whole log counts.
    pub async fn apply_whole_log(&self) -> Result<usize, ManagerError> {
        use openraft::storage::RaftStateMachine as _;
        use openraft::RaftLogReader as _;
        let from = self.sm.revision() + 1;
        let entries = self
            .log
            .clone()
            .try_get_log_entries(from..)
            .await
            .map_err(|e| ManagerError::Store(e.to_string()))?;
        let Some(first) = entries.first() else { return Ok(0) };
        if first.log_id.index != from {
            return Err(ManagerError::Store(format!(
                "the Raft log starts at entry {} but the state machine has applied only up to {}",
                first.log_id.index,
                from - 1
            )));
        }
        let count = entries.len();
        self.sm
            .clone()
            .apply(entries)
            .await
            .map_err(|e| ManagerError::Store(e.to_string()))?;
        Ok(count)
    }
}

/// A put that fails if someone else changed the object since it was read.
pub fn guarded_put<T: store::Object>(obj: &T, revision: u64) -> Request {
    Request {
        guards: vec![store::Guard::Revision {
            table: T::TABLE.to_string(),
            key: obj.key(),
            revision,
        }],
        ops: vec![store::put(obj)],
    }
}

/// Role as Docker prints it in `node ls`'s MANAGER STATUS column.
pub fn manager_status(node: &Node, leader_node_id: Option<&str>) -> &'static str {
    match node.role {
        Role::Worker => "",
        Role::Manager if Some(node.id.as_str()) == leader_node_id => "Leader",
        Role::Manager if node.status == NodeStatus::Down => "Unreachable",
        Role::Manager => "Reachable",
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt as _;
    use openraft::CommittedLeaderId;
    use openraft::EntryPayload;
    use serde_json::json;

    use super::*;
    use crate::store::testing::Router;

    fn put(key: &str, value: serde_json::Value) -> Request {
        Request {
            guards: vec![],
            ops: vec![store::Op::Put {
                table: "kv".into(),
                key: key.into(),
                value: value.into(),
            }],
        }
    }

    /// What `--force-new-cluster` relies on: an entry that reached the log but not the state machine (a follower
    /// that had not heard of the commit yet, or a crash that undid an apply) is applied from the log.
    #[tokio::test]
    async fn apply_whole_log_applies_the_entries_the_state_machine_lacks() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp dir");
        let router = Router::new();
        let m = Manager::start_with_network(
            &dir.path().join("raft"),
            1,
            &Router::peer(1).node_id,
            router.network(1),
            PeerClient::new(reqwest::Client::new()),
            Arc::new(crate::secrets::Keyring::new(dir.path().join("keys"))),
            ManagerConfig::default(),
        )
        .await
        .expect("start");
        router.add(1, m.raft.clone());
        m.initialize(Router::peer(1)).await.expect("initialize");
        m.write(put("a", json!(1))).await.expect("write");
        let term = m.raft.metrics().borrow().current_term;
        m.shutdown().await;

        let applied = m.sm.revision();
        let entry = typ::Entry {
            log_id: typ::LogId::new(CommittedLeaderId::new(term, 1), applied + 1),
            payload: EntryPayload::Normal(put("b", json!(2)).into()),
        };
        m.log.clone().blocking_append([entry]).await.expect("append");
        assert_eq!(m.sm.get("kv", "b"), None);

        assert_eq!(m.apply_whole_log().await.expect("apply"), 1);
        assert_eq!(m.sm.get("kv", "b"), Some((json!(2), applied + 1)));
        assert_eq!(m.sm.get("kv", "a").map(|(v, _)| v), Some(json!(1)));
        assert_eq!(m.apply_whole_log().await.expect("nothing left"), 0);
    }
}
