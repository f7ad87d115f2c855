//! An in-memory Raft network for tests and simulations: managers in one process, with links that can be cut.
//!
//! Every node registers its `Raft` with a [`Router`]; an RPC is a direct call on the target's `Raft`. A cut
//! link fails as `Unreachable`, both when the request is sent and when the response comes back, so a node cut
//! off mid-call does not learn the outcome — like a real partition.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;

use openraft::error::RPCError;
use openraft::error::RemoteError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::RaftNetwork;
use openraft::RaftNetworkFactory;

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
}

#[derive(Default)]
struct Links {
    nodes: BTreeMap<NodeId, typ::Raft>,
    /// Nodes cut off from everyone.
    isolated: BTreeSet<NodeId>,
    /// One-way cuts: (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
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

    /// Restores every link.
    pub fn heal(&self) {
        let mut links = self.links();
        links.isolated.clear();
        links.blocked.clear();
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Links> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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

    fn remote<E: std::error::Error>(&self, e: typ::RaftError<E>) -> typ::RPCError<E> {
        RPCError::RemoteError(RemoteError::new(self.to, e))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: typ::AppendEntriesRequest,
        _option: RPCOption,
    ) -> Result<typ::AppendEntriesResponse, typ::RPCError> {
        let raft = self.router.reach(self.from, self.to).map_err(Self::unreachable)?;
        let resp = raft.append_entries(rpc).await.map_err(|e| self.remote(e))?;
        self.router.returns(self.from, self.to).map_err(Self::unreachable)?;
        Ok(resp)
    }

    async fn install_snapshot(
        &mut self,
        rpc: typ::InstallSnapshotRequest,
        _option: RPCOption,
    ) -> Result<typ::InstallSnapshotResponse, typ::RPCError<typ::InstallSnapshotError>> {
        let raft = self.router.reach(self.from, self.to).map_err(Self::unreachable)?;
        let resp = raft.install_snapshot(rpc).await.map_err(|e| self.remote(e))?;
        self.router.returns(self.from, self.to).map_err(Self::unreachable)?;
        Ok(resp)
    }

    async fn vote(&mut self, rpc: typ::VoteRequest, _option: RPCOption) -> Result<typ::VoteResponse, typ::RPCError> {
        let raft = self.router.reach(self.from, self.to).map_err(Self::unreachable)?;
        let resp = raft.vote(rpc).await.map_err(|e| self.remote(e))?;
        self.router.returns(self.from, self.to).map_err(Self::unreachable)?;
        Ok(resp)
    }
}
