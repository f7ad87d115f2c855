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
use openraft::Entry;
use openraft::EntryPayload;
use openraft::LogId;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::store::NodeId;
use crate::store::Peer;
use crate::store::TypeConfig;

/// What one AppendEntries request carries at most, in bytes of entries (a larger entry goes alone).
///
/// openraft 0.9 gives an AppendEntries call one heartbeat interval (50 ms) to be answered and sends up to
/// `max_payload_entries` (300) entries in it, however large. A new leader does not know how far a follower matches
/// and probes from the middle of its log, so its first call carries the 300 entries there, a third of a megabyte in
/// `cargo bench --bench cluster`, more with large specs or batches. On a slow disk that call took longer than 50 ms
/// and so did every retry, which is the same call: the new leader could not replicate to the one follower left and
/// took writes only seconds later (a 4.6 s failover among 120). Capped, a call is answered in milliseconds, and
/// openraft sends what was left out at once.
pub const APPEND_BYTES: usize = 64 * 1024;

/// Keeps the longest prefix of `entries` that fits in `budget` bytes (at least one entry). Returns the log id of the
/// last entry kept if any were cut off.
fn cut_to_size(entries: &mut Vec<Entry<TypeConfig>>, budget: usize) -> Option<LogId<NodeId>> {
    let mut bytes = 0;
    let keep = entries
        .iter()
        .position(|entry| {
            bytes += entry_size(entry);
            bytes > budget
        })
        .map_or(entries.len(), |over| over.max(1));
    if keep == entries.len() {
        return None;
    }
    entries.truncate(keep);
    entries.last().map(|entry| entry.log_id)
}

/// About how many bytes `entry` takes in a request: its requests' keys and values, and the envelope.
fn entry_size(entry: &Entry<TypeConfig>) -> usize {
    const ENVELOPE: usize = 128;
    match &entry.payload {
        EntryPayload::Normal(proposal) => ENVELOPE + proposal.size(),
        EntryPayload::Blank | EntryPayload::Membership(_) => ENVELOPE,
    }
}

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

    /// Sends at most [`APPEND_BYTES`] of the entries openraft hands over (and always the first); if the follower
    /// takes them, the answer says how far it matches now, and openraft sends the rest right away.
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        let cut = cut_to_size(&mut rpc.entries, APPEND_BYTES);
        let response = self.call("append", &rpc, &option).await?;
        Ok(match (response, cut) {
            (AppendEntriesResponse::Success, Some(last_sent)) => AppendEntriesResponse::PartialSuccess(Some(last_sent)),
            (response, _) => response,
        })
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

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;
    use proptest::prelude::*;

    use super::*;
    use crate::store::Op;
    use crate::store::Proposal;
    use crate::store::Request;

    /// A log entry at `index` whose one write carries a value of `bytes` bytes.
    fn entry(index: u64, bytes: usize) -> Entry<TypeConfig> {
        let value = serde_json::Value::String("x".repeat(bytes));
        let request = Request {
            guards: vec![],
            ops: vec![Op::Put {
                table: "t".into(),
                key: "k".into(),
                value: value.into(),
            }],
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal::One(request)),
        }
    }

    fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn entries_within_the_budget_all_go() {
        let mut entries: Vec<_> = (1..=3).map(|i| entry(i, 1000)).collect();
        assert_eq!(cut_to_size(&mut entries, 64 * 1024), None);
        assert_eq!(indexes(&entries), [1, 2, 3]);
        assert_eq!(cut_to_size(&mut Vec::new(), 0), None);
    }

    #[test]
    fn the_entries_past_the_budget_are_left_for_the_next_call() {
        let mut entries: Vec<_> = (1..=10).map(|i| entry(i, 30 * 1024)).collect();
        let last = cut_to_size(&mut entries, 64 * 1024);
        assert_eq!(indexes(&entries), [1, 2]);
        assert_eq!(last.map(|l| l.index), Some(2));
    }

    #[test]
    fn an_entry_larger_than_the_budget_goes_alone() {
        let mut entries = vec![entry(7, 200 * 1024), entry(8, 10)];
        assert_eq!(cut_to_size(&mut entries, 64 * 1024).map(|l| l.index), Some(7));
        assert_eq!(indexes(&entries), [7]);
    }

    proptest! {
        /// What is kept is a prefix, never empty, within the budget unless it is one entry, and as long as the
        /// budget allows; the returned id names its last entry exactly when something was cut.
        #[test]
        fn the_kept_entries_are_the_longest_prefix_within_the_budget(
            sizes in prop::collection::vec(0usize..5000, 0..40),
            budget in 0usize..40_000,
        ) {
            let all: Vec<_> = sizes.iter().enumerate().map(|(i, &b)| entry(i as u64 + 1, b)).collect();
            let mut kept = all.clone();
            let last = cut_to_size(&mut kept, budget);
            prop_assert_eq!(indexes(&kept), indexes(&all[..kept.len()]));
            prop_assert!(all.is_empty() || !kept.is_empty());
            let bytes: usize = kept.iter().map(entry_size).sum();
            prop_assert!(kept.len() <= 1 || bytes <= budget);
            if kept.len() < all.len() {
                prop_assert_eq!(last, kept.last().map(|e| e.log_id));
                prop_assert!(bytes + entry_size(&all[kept.len()]) > budget);
            } else {
                prop_assert_eq!(last, None);
            }
        }
    }
}
