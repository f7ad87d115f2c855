//! Raft RPCs between managers, with mutual TLS. AppendEntries and votes go as JSON frames on connections of their
//! own ([`tls::RAFT_ALPN`], served by `api::raft_streams`), kept open and reused; snapshots, and every RPC to a
//! manager that does not offer that protocol, go as JSON over HTTPS (the `/raft/*` routes in `api`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
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
use rustls::pki_types::ServerName;
use rustls::AlertDescription;
use rustls::ClientConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::ca::Role;
use crate::store::DurableLog;
use crate::store::NodeId;
use crate::store::Peer;
use crate::store::TypeConfig;
use crate::tls;

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

/// The RPCs a Raft connection carries; a request frame's tag. (Snapshots go over HTTPS: they are rare and large.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    Append = 1,
    Vote = 2,
}

impl Rpc {
    pub fn from_tag(tag: u8) -> Option<Rpc> {
        match tag {
            1 => Some(Rpc::Append),
            2 => Some(Rpc::Vote),
            _ => None,
        }
    }

    /// The HTTPS route of the same RPC.
    fn route(self) -> &'static str {
        match self {
            Rpc::Append => "append",
            Rpc::Vote => "vote",
        }
    }
}

/// The tag of an answer frame: the JSON of the RPC's `Result`.
pub const ANSWER: u8 = 0;
/// The tag of a refusal frame: a message saying why the request was not handed to Raft.
pub const REFUSED: u8 = 255;
/// Largest frame body read (AppendEntries carry [`APPEND_BYTES`] or one entry): a length past it means the stream
/// is not what it should be.
pub const MAX_FRAME: usize = 256 << 20;

/// Writes one frame: its tag, the body's length (u32, big-endian) and the body.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, tag: u8, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&len| len as usize <= MAX_FRAME)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a frame of {} bytes is too large", body.len()),
            )
        })?;
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(tag);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Reads one frame; None if the stream ended before one began.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    let first = r.read(&mut header).await?;
    if first == 0 {
        return Ok(None);
    }
    r.read_exact(&mut header[first..]).await?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes announced; at most {MAX_FRAME} are read"),
        ));
    }
    // Grows with what arrives, not with what the header claims.
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    (&mut *r).take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the stream ended {} bytes into a frame of {len}", body.len()),
        ));
    }
    Ok(Some((header[0], body)))
}

/// Sends a request frame and reads the answer frame.
async fn exchange_frames<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    tag: u8,
    request: &[u8],
) -> std::io::Result<(u8, Vec<u8>)> {
    write_frame(stream, tag, request).await?;
    read_frame(stream)
        .await?
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the peer closed the Raft connection"))
}

enum StreamError {
    /// No TCP connection or no TLS session: the peer is down or not who it should be.
    Connect(std::io::Error),
    /// The peer's TLS server does not offer [`tls::RAFT_ALPN`].
    NoRaftProtocol,
    /// The connection failed during the exchange.
    Io(std::io::Error),
}

/// A TLS connection to the manager at `addr` (host:port) that negotiated [`tls::RAFT_ALPN`]. The server must be a
/// manager of this swarm, whatever name it is dialled by (the verifier in `config` checks that).
async fn connect(addr: &str, config: Arc<ClientConfig>) -> Result<RaftStream, StreamError> {
    let tcp = TcpStream::connect(addr).await.map_err(StreamError::Connect)?;
    tcp.set_nodelay(true).map_err(StreamError::Connect)?;
    let name =
        ServerName::try_from(Role::Manager.cert_name()).map_err(|e| StreamError::Connect(std::io::Error::other(e)))?;
    let stream = TlsConnector::from(config).connect(name, tcp).await.map_err(|e| {
        let refused = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
            == Some(&rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol));
        if refused {
            StreamError::NoRaftProtocol
        } else {
            StreamError::Connect(e)
        }
    })?;
    if stream.get_ref().1.alpn_protocol() != Some(tls::RAFT_ALPN) {
        return Err(StreamError::NoRaftProtocol);
    }
    Ok(stream)
}

/// A Raft connection to the manager at `addr` with the node certificate in `config` ([`tls::client_config`]), for a
/// caller that speaks the frames itself ([`write_frame`], [`read_frame`]).
pub async fn dial(addr: &str, config: &ClientConfig) -> std::io::Result<RaftStream> {
    connect(addr, tls::raft_client_config(config))
        .await
        .map_err(|e| match e {
            StreamError::Connect(e) | StreamError::Io(e) => e,
            StreamError::NoRaftProtocol => std::io::Error::other(format!("{addr} does not take Raft connections")),
        })
}

/// How managers reach each other: an HTTP client, and the TLS configuration of the connections that carry Raft
/// RPCs as frames ([`tls::RAFT_ALPN`]) with the idle ones kept for reuse. Both are replaced when the node's
/// certificate is renewed; connections made with the old certificate are then not reused.
#[derive(Clone)]
pub struct PeerClient {
    clients: Arc<RwLock<Clients>>,
    idle: Arc<Mutex<HashMap<String, Vec<Idle>>>>,
}

struct Clients {
    http: reqwest::Client,
    /// None: Raft RPCs go over HTTP (a node without its certificate yet, the simulations).
    raft: Option<Arc<ClientConfig>>,
    /// Counts replacements, so a connection made with an older certificate is known.
    generation: u64,
}

/// An idle Raft connection and the generation of the certificate it was made with.
struct Idle {
    generation: u64,
    stream: RaftStream,
}

/// A Raft connection, client side.
pub type RaftStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Idle Raft connections kept per peer; more are closed when they come back.
const IDLE_PER_PEER: usize = 4;

impl PeerClient {
    /// A client whose Raft RPCs go over `client` (HTTPS), until [`Self::replace`] gives it a Raft configuration.
    pub fn new(client: reqwest::Client) -> PeerClient {
        PeerClient {
            clients: Arc::new(RwLock::new(Clients {
                http: client,
                raft: None,
                generation: 0,
            })),
            idle: Arc::default(),
        }
    }

    pub fn get(&self) -> reqwest::Client {
        self.read(|c| c.http.clone())
    }

    /// Replaces the HTTP client and the Raft connections' configuration ([`tls::raft_client_config`]; None sends
    /// Raft RPCs over HTTPS). Idle Raft connections are closed.
    pub fn replace(&self, client: reqwest::Client, raft: Option<Arc<ClientConfig>>) {
        let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
        clients.http = client;
        clients.raft = raft;
        clients.generation += 1;
        drop(clients);
        self.lock_idle().clear();
    }

    fn read<T>(&self, f: impl FnOnce(&Clients) -> T) -> T {
        f(&self.clients.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection to `addr` made with the current certificate, if any.
    fn take_idle(&self, addr: &str, generation: u64) -> Option<RaftStream> {
        let mut idle = self.lock_idle();
        let streams = idle.get_mut(addr)?;
        while let Some(conn) = streams.pop() {
            if conn.generation == generation {
                return Some(conn.stream);
            }
        }
        None
    }

    fn put_idle(&self, addr: &str, generation: u64, stream: RaftStream) {
        if self.read(|c| c.generation) != generation {
            return;
        }
        let mut idle = self.lock_idle();
        let streams = idle.entry(addr.to_string()).or_default();
        if streams.len() < IDLE_PER_PEER {
            streams.push(Idle { generation, stream });
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
    /// The peer refused [`tls::RAFT_ALPN`] (a manager of an older version): RPCs to it go over HTTPS.
    http_only: bool,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Peer) -> Connection {
        Connection {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
            http_only: false,
        }
    }
}

impl Connection {
    /// Sends one RPC on a Raft connection to the peer (an idle one, else a new one) and reads its answer. Falls
    /// back to [`Self::call`] (HTTPS) without a Raft configuration or for a peer that does not serve Raft
    /// connections.
    async fn exchange<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        body: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Peer, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let (config, generation) = self.client.read(|c| (c.raft.clone(), c.generation));
        let Some(config) = config.filter(|_| !self.http_only) else {
            return self.call(rpc.route(), body, option).await;
        };
        let network =
            |e: &dyn std::error::Error| RPCError::Network(NetworkError::new(&std::io::Error::other(e.to_string())));
        let request = serde_json::to_vec(body).map_err(|e| network(&e))?;
        let timeout = option.hard_ttl().max(Duration::from_millis(50));
        let reply = match tokio::time::timeout(timeout, self.round_trip(config, generation, rpc, &request)).await {
            Err(_) => {
                // Too slow is not unreachable: see `call`.
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{}: no answer within {timeout:?}", self.addr),
                );
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
            Ok(Err(StreamError::NoRaftProtocol)) => {
                debug!(addr = %self.addr, "the peer does not serve Raft connections; using HTTPS");
                self.http_only = true;
                return self.call(rpc.route(), body, option).await;
            }
            Ok(Err(StreamError::Connect(e))) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            Ok(Err(StreamError::Io(e))) => return Err(RPCError::Network(NetworkError::new(&e))),
            Ok(Ok(reply)) => reply,
        };
        match reply {
            (ANSWER, body) => {
                let result: Result<Resp, RaftError<NodeId, E>> =
                    serde_json::from_slice(&body).map_err(|e| network(&e))?;
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            (_, body) => {
                let e = std::io::Error::other(format!("{}: refused: {}", self.addr, String::from_utf8_lossy(&body)));
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }

    /// One request and its answer, on an idle connection if there is one. A peer that restarted closed the idle
    /// connections to it, so a failure there is retried once on a new connection (RPCs may be repeated: a follower
    /// takes the same entries or the same vote request twice alike).
    async fn round_trip(
        &self,
        config: Arc<ClientConfig>,
        generation: u64,
        rpc: Rpc,
        request: &[u8],
    ) -> Result<(u8, Vec<u8>), StreamError> {
        if let Some(mut stream) = self.client.take_idle(&self.addr, generation) {
            match exchange_frames(&mut stream, rpc as u8, request).await {
                Ok(reply) => {
                    self.keep(generation, stream, &reply);
                    return Ok(reply);
                }
                Err(e) => debug!(addr = %self.addr, error = %e, "an idle Raft connection failed; connecting again"),
            }
        }
        let mut stream = connect(&self.addr, config).await?;
        let reply = exchange_frames(&mut stream, rpc as u8, request)
            .await
            .map_err(StreamError::Io)?;
        self.keep(generation, stream, &reply);
        Ok(reply)
    }

    /// Keeps `stream` for the next RPC, unless its answer was a refusal (the server may close it after one).
    fn keep(&self, generation: u64, stream: RaftStream, reply: &(u8, Vec<u8>)) {
        if reply.0 == ANSWER {
            self.client.put_idle(&self.addr, generation, stream);
        }
    }

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
        let response = self.exchange(Rpc::Append, &rpc, &option).await?;
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
        self.exchange(Rpc::Vote, &rpc, &option).await
    }
}

/// The Raft network `inner` with one rule added: an AppendEntries request tells a follower a commit index
/// (`leader_commit`) only once this manager's log is durable up to it, since the leader's own appends return before
/// they are synced (see `store::durable`). Waits at most the RPC's time.
pub struct Gated<N> {
    pub inner: N,
    pub durable: DurableLog,
}

pub struct GatedConnection<C> {
    inner: C,
    durable: DurableLog,
}

impl<N: RaftNetworkFactory<TypeConfig>> RaftNetworkFactory<TypeConfig> for Gated<N> {
    type Network = GatedConnection<N::Network>;

    async fn new_client(&mut self, target: NodeId, node: &Peer) -> Self::Network {
        GatedConnection {
            inner: self.inner.new_client(target, node).await,
            durable: self.durable.clone(),
        }
    }
}

impl<C: RaftNetwork<TypeConfig>> RaftNetwork<TypeConfig> for GatedConnection<C> {
    fn backoff(&self) -> Backoff {
        self.inner.backoff()
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        if let Some(committed) = rpc.leader_commit {
            if !self.durable.is_durable(committed.index) {
                let error = |e: String| RPCError::Network(NetworkError::new(&std::io::Error::other(e)));
                match tokio::time::timeout(option.hard_ttl(), self.durable.wait(committed.index)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(error(e)),
                    Err(_) => return Err(error(format!("log entry {} is not yet durable here", committed.index))),
                }
            }
        }
        self.inner.append_entries(rpc, option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId, InstallSnapshotError>>> {
        self.inner.install_snapshot(rpc, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        self.inner.vote(rpc, option).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering;

    use axum::routing::post;
    use openraft::CommittedLeaderId;
    use openraft::Vote;
    use proptest::prelude::*;
    use tokio::net::TcpListener;

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

    /// Frames as written come back as read, one after another, and the stream's end reads as None.
    fn read_all(mut bytes: &[u8]) -> std::io::Result<Vec<(u8, Vec<u8>)>> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut frames = Vec::new();
            while let Some(frame) = read_frame(&mut bytes).await? {
                frames.push(frame);
            }
            Ok(frames)
        })
    }

    fn write_all(frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut out = Vec::new();
            for (tag, body) in frames {
                write_frame(&mut out, *tag, body).await.unwrap();
            }
            out
        })
    }

    proptest! {
        #[test]
        fn frames_read_back_as_written(frames in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..300)), 0..8)) {
            prop_assert_eq!(read_all(&write_all(&frames)).unwrap(), frames);
        }

        /// A stream cut inside a frame is an error, never a shorter frame; cut between frames, it reads the whole
        /// frames before the cut.
        #[test]
        fn a_cut_stream_never_reads_as_a_frame(
            frames in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..100)), 1..5),
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = write_all(&frames);
            let cut = cut.index(bytes.len());
            let mut ends = frames.iter().scan(0, |end, (_, body)| { *end += 5 + body.len(); Some(*end) });
            match read_all(&bytes[..cut]) {
                Ok(read) => {
                    prop_assert!(cut == 0 || ends.any(|end| end == cut));
                    prop_assert_eq!(&read[..], &frames[..read.len()]);
                }
                Err(e) => prop_assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
            }
        }

        /// Arbitrary bytes read as frames or fail, without panicking or allocating what a length claims past
        /// MAX_FRAME.
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = read_all(&bytes);
        }
    }

    #[test]
    fn a_length_past_the_limit_is_refused() {
        let mut bytes = vec![ANSWER];
        bytes.extend_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
        let e = read_all(&bytes).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("at most"), "{e}");
    }

    /// A manager's TLS configurations, server and client, from a new CA.
    fn manager_tls() -> (Arc<rustls::ServerConfig>, Arc<ClientConfig>) {
        tls::install_crypto_provider();
        let ca = crate::ca::RootCa::generate("c1", crate::ca::DEFAULT_CA_VALIDITY).unwrap();
        let (key, csr) = crate::ca::new_node_key("m1").unwrap();
        let cert = ca
            .issue(&csr, "m1", Role::Manager, crate::ca::DEFAULT_NODE_CERT_VALIDITY)
            .unwrap();
        let server = tls::server_config(ca.cert_pem(), &cert, &key).unwrap();
        let client = tls::client_config(ca.cert_pem(), &cert, &key).unwrap();
        (server, client)
    }

    fn vote_answer() -> VoteResponse<NodeId> {
        VoteResponse::new(Vote::new(7, 2), None, true)
    }

    /// A peer that answers every vote request with [`vote_answer`], on Raft connections if `raft` (counting them
    /// and closing each after `answers_per_connection` answers) and over HTTPS at `/raft/vote` (counting those).
    struct FakePeer {
        addr: String,
        connections: Arc<AtomicUsize>,
        https_votes: Arc<AtomicUsize>,
    }

    async fn fake_peer(mut server: Arc<rustls::ServerConfig>, raft: bool, answers_per_connection: usize) -> FakePeer {
        if !raft {
            // A manager of a version without Raft connections.
            Arc::make_mut(&mut server)
                .alpn_protocols
                .retain(|p| p != tls::RAFT_ALPN);
        }
        let connections = Arc::new(AtomicUsize::new(0));
        let https_votes = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let handler: tls::StreamHandler = Arc::new(move |mut stream, peer, _stop| {
            counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                assert_eq!(peer.map(|p| p.role), Some(Role::Manager));
                for _ in 0..answers_per_connection {
                    let Ok(Some((tag, body))) = read_frame(&mut stream).await else {
                        return;
                    };
                    assert_eq!(Rpc::from_tag(tag), Some(Rpc::Vote));
                    let _: VoteRequest<NodeId> = serde_json::from_slice(&body).unwrap();
                    let answer = serde_json::to_vec(&Ok::<_, RaftError<NodeId>>(vote_answer())).unwrap();
                    write_frame(&mut stream, ANSWER, &answer).await.unwrap();
                }
            })
        });
        let counted = https_votes.clone();
        let router = axum::Router::new().route(
            "/raft/vote",
            post(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { axum::Json(Ok::<_, RaftError<NodeId>>(vote_answer())) }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(tls::serve(
            listener,
            server,
            router,
            Some(handler),
            std::future::pending(),
        ));
        FakePeer {
            addr,
            connections,
            https_votes,
        }
    }

    async fn connection(client: Arc<ClientConfig>, addr: &str) -> Connection {
        let peers = PeerClient::new(reqwest::Client::new());
        let raft = tls::raft_client_config(&client);
        peers.replace(tls::http_client(client, Duration::from_secs(10)).unwrap(), Some(raft));
        let peer = Peer {
            addr: addr.to_string(),
            node_id: "m2".into(),
        };
        Network { client: peers }.new_client(2, &peer).await
    }

    async fn vote(conn: &mut Connection) -> VoteResponse<NodeId> {
        let request = VoteRequest::new(Vote::new(7, 1), None);
        conn.vote(request, RPCOption::new(Duration::from_secs(10)))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn rpcs_share_one_raft_connection() {
        let (server, client) = manager_tls();
        let peer = fake_peer(server, true, usize::MAX).await;
        let mut conn = connection(client, &peer.addr).await;
        for _ in 0..3 {
            assert_eq!(vote(&mut conn).await, vote_answer());
        }
        assert_eq!(peer.connections.load(Ordering::SeqCst), 1);
        assert_eq!(peer.https_votes.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_replaced_without_failing_the_rpc() {
        let (server, client) = manager_tls();
        let peer = fake_peer(server, true, 1).await;
        let mut conn = connection(client, &peer.addr).await;
        assert_eq!(vote(&mut conn).await, vote_answer());
        assert_eq!(vote(&mut conn).await, vote_answer());
        assert_eq!(peer.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_peer_without_raft_connections_is_called_over_https() {
        let (server, client) = manager_tls();
        let peer = fake_peer(server, false, usize::MAX).await;
        let mut conn = connection(client, &peer.addr).await;
        assert_eq!(vote(&mut conn).await, vote_answer());
        assert_eq!(vote(&mut conn).await, vote_answer());
        assert_eq!(peer.connections.load(Ordering::SeqCst), 0);
        assert_eq!(peer.https_votes.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refusal_reaches_the_caller_with_its_reason() {
        let (mut server, client) = manager_tls();
        Arc::make_mut(&mut server).alpn_protocols = vec![tls::RAFT_ALPN.to_vec()];
        // Refuses each request once it has read it, as `api::answer_raft` does (a refusal written before the
        // request is read races with the request: a closed socket that receives data resets the connection).
        let handler: tls::StreamHandler = Arc::new(|mut stream, _peer, _stop| {
            Box::pin(async move {
                while let Ok(Some(_)) = read_frame(&mut stream).await {
                    let _ = write_frame(&mut stream, REFUSED, b"this endpoint is for managers").await;
                }
            })
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(tls::serve(
            listener,
            server,
            axum::Router::new(),
            Some(handler),
            std::future::pending(),
        ));
        let mut conn = connection(client, &addr).await;
        for _ in 0..2 {
            let request = VoteRequest::new(Vote::new(7, 1), None);
            let result = conn.vote(request, RPCOption::new(Duration::from_secs(10))).await;
            match result {
                Err(RPCError::Network(e)) => assert!(e.to_string().contains("for managers"), "{e}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_unreachable_peer_is_reported_unreachable() {
        let (_, client) = manager_tls();
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let mut conn = connection(client, &addr).await;
        let request = VoteRequest::new(Vote::new(7, 1), None);
        let result = conn.vote(request, RPCOption::new(Duration::from_secs(10))).await;
        assert!(matches!(result, Err(RPCError::Unreachable(_))), "{result:?}");
    }

    /// A network that records the commit index of every AppendEntries it is asked to send.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Option<u64>>>>);

    impl RaftNetworkFactory<TypeConfig> for Recorder {
        type Network = Recorder;

        async fn new_client(&mut self, _target: NodeId, _node: &Peer) -> Recorder {
            self.clone()
        }
    }

    impl RaftNetwork<TypeConfig> for Recorder {
        async fn append_entries(
            &mut self,
            rpc: AppendEntriesRequest<TypeConfig>,
            _option: RPCOption,
        ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
            self.0.lock().unwrap().push(rpc.leader_commit.map(|c| c.index));
            Ok(AppendEntriesResponse::Success)
        }

        async fn install_snapshot(
            &mut self,
            _rpc: InstallSnapshotRequest<TypeConfig>,
            _option: RPCOption,
        ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId, InstallSnapshotError>>>
        {
            unreachable!("not sent in these tests")
        }

        async fn vote(
            &mut self,
            _rpc: VoteRequest<NodeId>,
            _option: RPCOption,
        ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
            unreachable!("not sent in these tests")
        }
    }

    fn append_committing(index: Option<u64>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: None,
            entries: vec![],
            leader_commit: index.map(|i| LogId::new(CommittedLeaderId::new(2, 1), i)),
        }
    }

    #[tokio::test]
    async fn a_commit_index_goes_to_followers_only_once_it_is_durable_here() {
        use crate::store::durable::Durable;
        let (durable, watched) = tokio::sync::watch::channel(Durable::Below(3));
        let recorder = Recorder::default();
        let mut network = Gated {
            inner: recorder.clone(),
            durable: DurableLog::new(watched),
        };
        let peer = Peer {
            addr: "m2".into(),
            node_id: "m2".into(),
        };
        let mut conn = network.new_client(2, &peer).await;
        let option = || RPCOption::new(Duration::from_secs(10));

        // Durable already, or no commit index at all: sent at once.
        conn.append_entries(append_committing(Some(2)), option()).await.unwrap();
        conn.append_entries(append_committing(None), option()).await.unwrap();
        assert_eq!(*recorder.0.lock().unwrap(), [Some(2), None]);

        // Not yet durable: held back until it is.
        let mut held = tokio::spawn(async move {
            conn.append_entries(append_committing(Some(5)), RPCOption::new(Duration::from_secs(10)))
                .await
                .map(|_| conn)
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!held.is_finished());
        assert_eq!(recorder.0.lock().unwrap().len(), 2);
        durable.send_replace(Durable::Below(6));
        let mut conn = (&mut held).await.unwrap().unwrap();
        assert_eq!(*recorder.0.lock().unwrap(), [Some(2), None, Some(5)]);

        // Never durable within the RPC's time, or never at all: an error, and nothing sent.
        let result = conn
            .append_entries(append_committing(Some(9)), RPCOption::new(Duration::from_millis(20)))
            .await;
        assert!(matches!(result, Err(RPCError::Network(_))), "{result:?}");
        durable.send_replace(Durable::Failed("fdatasync: input/output error".into()));
        let result = conn.append_entries(append_committing(Some(9)), option()).await;
        assert!(matches!(result, Err(RPCError::Network(_))), "{result:?}");
        assert_eq!(recorder.0.lock().unwrap().len(), 3);
    }
}
