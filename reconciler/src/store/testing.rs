//! An in-memory Raft network for tests and simulations: managers in one process, with links that can be cut.
//!
//! Every node registers its `Raft` with a [`Router`]; an RPC is a direct call on the target's `Raft`. A cut
//! link fails as `Unreachable`, both when the request is sent and when the response comes back, so a node cut
//! off mid-call does not learn the outcome — like a real partition. A *held* node's messages are neither lost nor
//! delivered: they wait, and arrive late once it is released — like a frozen process's socket buffers.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;

use openraft::error::RPCError;
use openraft::error::RemoteError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::RaftNetwork;
use openraft::RaftNetworkFactory;
use tokio::sync::oneshot;
use tokio::sync::Notify;

use super::typ;
use super::NodeId;
use super::Peer;
use super::Stores;
use super::TypeConfig;

/// Why an in-memory RPC did not reach its target.
#[derive(Debug, thiserror::Error)]
#[error("node {to} is unreachable from node {from} (link cut or node not running)")]
pub struct Cut {
    pub from: NodeId,
    pub to: NodeId,
}

/// The in-memory network: which nodes run and which links are cut. Cheap to clone; clones share the state.
#[derive(Clone, Default)]
pub struct Router {
    state: Arc<Mutex<Links>>,
    /// Wakes the messages waiting for a held node to be released.
    released: Arc<Notify>,
}

#[derive(Default)]
struct Links {
    nodes: BTreeMap<NodeId, typ::Raft>,
    /// Nodes cut off from everyone.
    isolated: BTreeSet<NodeId>,
    /// One-way cuts: (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Nodes whose messages (both ways) wait until they are released.
    held: BTreeSet<NodeId>,
    /// AppendEntries requests whose entries do not start right after `prev_log_id`, in the order sent.
    malformed: Vec<MalformedAppend>,
}

/// An AppendEntries request whose first entry is not at `prev_log_id.index + 1`: a gap (or overlap) Raft's log
/// matching cannot see. The router refuses it, as the real receiver does, and records it for the simulations.
#[derive(Debug, Clone)]
pub struct MalformedAppend {
    pub from: NodeId,
    pub to: NodeId,
    /// The vote the request carries (the sender's replication session).
    pub vote: typ::Vote,
    /// The sender's own vote when it sent the request; different from `vote` when the session is stale.
    pub sender_vote: Option<typ::Vote>,
    /// The target's vote when the request was sent; a target whose vote is not above `vote` accepts the request.
    pub target_vote: Option<typ::Vote>,
    pub prev_log_id: Option<typ::LogId>,
    pub first: typ::LogId,
}

impl MalformedAppend {
    /// Whether the target would have taken the request (its vote is not above the request's), had it not been
    /// refused on arrival.
    pub fn would_be_accepted(&self) -> bool {
        self.target_vote
            .is_some_and(|target| matches!(target.partial_cmp(&self.vote), Some(Ordering::Less | Ordering::Equal)))
    }
}

impl std::fmt::Display for MalformedAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let vote = |v: &Option<typ::Vote>| v.map_or("-".to_string(), |v| v.to_string());
        write!(
            f,
            "node {} (vote {}) sent node {} (vote {}) AppendEntries under vote {} with prev_log_id {}, first entry {}",
            self.from,
            vote(&self.sender_vote),
            self.to,
            vote(&self.target_vote),
            self.vote,
            self.prev_log_id.map_or("none".to_string(), |p| p.to_string()),
            self.first,
        )
    }
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// The address book entry the tests use for node `id`.
    pub fn peer(id: NodeId) -> Peer {
        Peer {
            addr: format!("mem://{id}"),
            node_id: format!("node-{id}"),
        }
    }

    /// Starts a Raft node on `stores`, talking through this router, and registers it.
    pub async fn start(
        &self,
        id: NodeId,
        config: Arc<openraft::Config>,
        stores: Stores,
    ) -> Result<typ::Raft, typ::Fatal> {
        let raft = typ::Raft::new(id, config, self.network(id), stores.log, stores.state_machine).await?;
        self.add(id, raft.clone());
        Ok(raft)
    }

    /// The network factory node `from` uses to reach the others.
    pub fn network(&self, from: NodeId) -> Network {
        Network {
            from,
            router: self.clone(),
        }
    }

    /// Makes `raft` reachable as node `id`.
    pub fn add(&self, id: NodeId, raft: typ::Raft) {
        self.links().nodes.insert(id, raft);
    }

    /// Unregisters node `id` (it no longer receives anything) and returns it, to shut it down or restart it.
    pub fn remove(&self, id: NodeId) -> Option<typ::Raft> {
        self.links().nodes.remove(&id)
    }

    /// The running node `id`.
    pub fn raft(&self, id: NodeId) -> Option<typ::Raft> {
        self.links().nodes.get(&id).cloned()
    }

    /// Cuts node `id` off from every other node, both ways.
    pub fn isolate(&self, id: NodeId) {
        self.links().isolated.insert(id);
    }

    /// Reconnects an isolated node.
    pub fn rejoin(&self, id: NodeId) {
        self.links().isolated.remove(&id);
    }

    /// Drops every message from `from` to `to` (one way).
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.links().blocked.insert((from, to));
    }

    pub fn unblock(&self, from: NodeId, to: NodeId) {
        self.links().blocked.remove(&(from, to));
    }

    /// Holds every message to and from node `id` until [`Self::release`]: the sender waits, and may give up, but
    /// the message is still delivered (if its link is up then) once the node is released. The node's own timers
    /// keep running, so it may time out and campaign meanwhile; its late messages carry whatever term it had.
    pub fn hold(&self, id: NodeId) {
        self.links().held.insert(id);
    }

    /// Delivers the messages held for node `id` (those not waiting for another held node too).
    pub fn release(&self, id: NodeId) {
        self.links().held.remove(&id);
        self.released.notify_waiters();
    }

    /// Restores every link and releases every held node.
    pub fn heal(&self) {
        let mut links = self.links();
        links.isolated.clear();
        links.blocked.clear();
        links.held.clear();
        drop(links);
        self.released.notify_waiters();
    }

    /// Every malformed AppendEntries sent so far (see [`MalformedAppend`]).
    pub fn malformed(&self) -> Vec<MalformedAppend> {
        self.links().malformed.clone()
    }

    fn record_malformed(&self, from: NodeId, to: NodeId, rpc: &typ::AppendEntriesRequest, first: typ::LogId) {
        let vote_of = |id| self.raft(id).map(|raft| raft.metrics().borrow().vote);
        let malformed = MalformedAppend {
            from,
            to,
            vote: rpc.vote,
            sender_vote: vote_of(from),
            target_vote: vote_of(to),
            prev_log_id: rpc.prev_log_id,
            first,
        };
        self.links().malformed.push(malformed);
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Links> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn held(&self, from: NodeId, to: NodeId) -> bool {
        let links = self.links();
        links.held.contains(&from) || links.held.contains(&to)
    }

    /// Returns once neither end of the link from `from` to `to` is held.
    async fn until_released(&self, from: NodeId, to: NodeId) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the check, so a release between the check and the await is not missed.
            released.as_mut().enable();
            if !self.held(from, to) {
                return;
            }
            released.await;
        }
    }

    /// The target's `Raft`, if a message from `from` gets to `to` now.
    fn reach(&self, from: NodeId, to: NodeId) -> Result<typ::Raft, Cut> {
        let links = self.links();
        let cut = links.isolated.contains(&from) || links.isolated.contains(&to) || links.blocked.contains(&(from, to));
        match links.nodes.get(&to) {
            Some(raft) if !cut => Ok(raft.clone()),
            _ => Err(Cut { from, to }),
        }
    }

    /// Whether the response to a call from `from` gets back from `to`.
    fn returns(&self, from: NodeId, to: NodeId) -> Result<(), Cut> {
        let links = self.links();
        if links.isolated.contains(&from) || links.isolated.contains(&to) || links.blocked.contains(&(to, from)) {
            return Err(Cut { from, to });
        }
        Ok(())
    }
}

/// The [`RaftNetworkFactory`] of one node.
pub struct Network {
    from: NodeId,
    router: Router,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &Peer) -> Self::Network {
        Connection {
            from: self.from,
            to: target,
            router: self.router.clone(),
        }
    }
}

/// A link from one node to another.
pub struct Connection {
    from: NodeId,
    to: NodeId,
    router: Router,
}

impl Connection {
    fn unreachable<E: std::error::Error>(cut: Cut) -> typ::RPCError<E> {
        RPCError::Unreachable(Unreachable::new(&cut))
    }

    /// Sends `rpc` over this link: `call` runs on the target's `Raft` if the link is up.
    ///
    /// A message to or from a held node is handed to a task of its own that waits for the release, so it arrives
    /// even if the sender has timed out by then; its response comes back only if the sender still waits.
    async fn send<Req, Resp, E, F, Fut>(&self, rpc: Req, call: F) -> Result<Resp, typ::RPCError<E>>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        E: std::error::Error + Send + 'static,
        F: FnOnce(typ::Raft, Req) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Resp, typ::RaftError<E>>> + Send,
    {
        let (from, to, router) = (self.from, self.to, self.router.clone());
        if !router.held(from, to) {
            return deliver(&router, from, to, rpc, call).await;
        }
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            router.until_released(from, to).await;
            // Nobody waiting for the response is fine: the sender gave up, the message still arrived.
            let _ = tx.send(deliver(&router, from, to, rpc, call).await);
        });
        match rx.await {
            Ok(result) => result,
            // The delivery task was dropped with the runtime: the message never arrived.
            Err(_) => Err(Connection::unreachable(Cut { from, to })),
        }
    }
}

/// One message from `from` to `to`, cut on the way there or back as the links are when it passes.
async fn deliver<Req, Resp, E, F, Fut>(
    router: &Router,
    from: NodeId,
    to: NodeId,
    rpc: Req,
    call: F,
) -> Result<Resp, typ::RPCError<E>>
where
    E: std::error::Error,
    F: FnOnce(typ::Raft, Req) -> Fut,
    Fut: Future<Output = Result<Resp, typ::RaftError<E>>>,
{
    let raft = router.reach(from, to).map_err(Connection::unreachable)?;
    let resp = call(raft, rpc)
        .await
        .map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))?;
    // A node held while the call ran gets the response after its release (or never, if its caller gave up).
    router.until_released(from, to).await;
    router.returns(from, to).map_err(Connection::unreachable)?;
    Ok(resp)
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: typ::AppendEntriesRequest,
        _option: RPCOption,
    ) -> Result<typ::AppendEntriesResponse, typ::RPCError> {
        if let Some(first) = rpc.entries.first().filter(|_| !super::is_contiguous(&rpc)) {
            // Refused as the real network's receiver refuses it (see `store::is_contiguous`); recorded for the tests.
            self.router.record_malformed(self.from, self.to, &rpc, first.log_id);
            return Err(Self::unreachable(Cut {
                from: self.from,
                to: self.to,
            }));
        }
        self.send(rpc, |raft, rpc| async move { raft.append_entries(rpc).await })
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: typ::InstallSnapshotRequest,
        _option: RPCOption,
    ) -> Result<typ::InstallSnapshotResponse, typ::RPCError<typ::InstallSnapshotError>> {
        self.send(rpc, |raft, rpc| async move { raft.install_snapshot(rpc).await })
            .await
    }

    async fn vote(&mut self, rpc: typ::VoteRequest, _option: RPCOption) -> Result<typ::VoteResponse, typ::RPCError> {
        self.send(rpc, |raft, rpc| async move { raft.vote(rpc).await }).await
    }
}
