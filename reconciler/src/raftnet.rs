//! Raft RPCs between managers: JSON over HTTPS with mutual TLS (the routes are in `api`).

use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::Unreachable;
use openraft::network::Backoff;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::store::NodeId;
use crate::store::Peer;
use crate::store::TypeConfig;

/// The HTTP client managers use to reach each other; replaced when the node's certificate is renewed.
#[derive(Clone)]
pub struct PeerClient(Arc<RwLock<reqwest::Client>>);

impl PeerClient {
    pub fn new(client: reqwest::Client) -> PeerClient {
        PeerClient(Arc::new(RwLock::new(client)))
    }

    pub fn get(&self) -> reqwest::Client {
        self.0
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub fn replace(&self, client: reqwest::Client) {
        match self.0.write() {
            Ok(mut c) => *c = client,
            Err(e) => *e.into_inner() = client,
        }
    }
}

/// Creates one connection object per peer; they share the client.
#[derive(Clone)]
pub struct Network {
    pub client: PeerClient,
}

pub struct Connection {
    client: PeerClient,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Peer) -> Connection {
        Connection {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

impl Connection {
    async fn call<Req, Resp, E>(
        &self,
        route: &str,
        body: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Peer, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("https://{}/raft/{route}", self.addr);
        let timeout = option.hard_ttl().max(Duration::from_millis(50));
        let response = self
            .client
            .get()
            .post(&url)
            .json(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| {
                // A peer that answers too slowly (a loaded machine, a first TLS handshake) is not unreachable: openraft
                // backs off from an unreachable peer, and heartbeats missing for that long start an election there.
                if e.is_timeout() {
                    RPCError::Network(NetworkError::new(&e))
                } else {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
            })?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            let err = std::io::Error::other(format!("{url}: {status}: {text}"));
            return Err(RPCError::Network(NetworkError::new(&err)));
        }
        let result: Result<Resp, RaftError<NodeId, E>> = response
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    /// How long replication to an unreachable peer pauses: 50 ms, doubling up to 200 ms. openraft's 500 ms is longer
    /// than a follower waits for a heartbeat (lease + election timeout, 450 ms at the least with the defaults), so
    /// one refused connection while a peer restarts its listener could cost the leader its leadership.
    fn backoff(&self) -> Backoff {
        Backoff::new((0..).map(|i: u32| Duration::from_millis(50 << i.min(2))))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId, InstallSnapshotError>>> {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}
