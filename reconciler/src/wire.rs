//! Request and response bodies of the manager API and the local socket API (JSON).

use serde::Deserialize;
use serde::Serialize;

use crate::ca::Role;
use crate::cluster::Node;
use crate::cluster::NodeDescription;

/// Every error answer: the message is for the person at the terminal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InitRequest {
    pub advertise_addr: Option<String>,
    pub listen_addr: Option<String>,
    #[serde(default)]
    pub force_new_cluster: bool,
    /// Protect the managers' secrets key with an unlock key (`swarm unlock` after each restart).
    #[serde(default)]
    pub autolock: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitResponse {
    pub node_id: String,
    pub worker_token: String,
    pub advertise_addr: String,
    /// With autolock: the unlock key, shown this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlock_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    pub remote_addr: String,
    pub advertise_addr: Option<String>,
    pub listen_addr: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub node_id: String,
    pub role: Role,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LeaveRequest {
    #[serde(default)]
    pub force: bool,
}

/// A joining node's request to a manager (no client certificate yet).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdmissionRequest {
    pub token: String,
    pub csr_pem: String,
    /// The address the node advertises (`host:port`).
    pub addr: String,
    /// Its Raft id, used when the token makes it a manager.
    pub raft_id: u64,
    pub description: NodeDescription,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Admission {
    pub node_id: String,
    pub cluster_id: String,
    pub role: Role,
    pub cert_pem: String,
    pub managers: Vec<String>,
}

/// A manager's Raft membership as far as it has applied it: a leader that removed itself asks the remaining voters,
/// since none of them replicates to it once the change is committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppliedMembership {
    /// Raft ids of the voters; `None` while the newest membership entry is not applied yet.
    pub voters: Option<Vec<u64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachRequest {
    pub raft_id: u64,
    pub addr: String,
    /// Set by a manager that forwards another node's request to the leader: whose request it is.
    #[serde(default)]
    pub on_behalf_of: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub description: NodeDescription,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedHeartbeat {
    pub node_id: String,
    pub request: HeartbeatRequest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The role the cluster gives the node: a change means promote or demote.
    pub role: Role,
    pub period_ms: u64,
    pub managers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Renewal {
    pub cert_pem: String,
    pub ca_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeList {
    pub nodes: Vec<Node>,
    /// Node id of the Raft leader, when known.
    pub leader: Option<String>,
    /// The node answering (`*` in `node ls`).
    pub self_id: String,
    /// True when the answering manager knows no leader: the list may be out of date.
    pub stale: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeUpdate {
    pub availability: Option<String>,
    #[serde(default)]
    pub label_add: Vec<String>,
    #[serde(default)]
    pub label_rm: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Token {
    pub token: String,
}

/// `swarm info`: the Swarm section of `docker info`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Info {
    /// inactive | active
    pub local_node_state: String,
    pub node_id: String,
    pub node_addr: String,
    pub cluster_id: String,
    pub is_manager: bool,
    pub managers: usize,
    pub nodes: usize,
    pub managers_known: Vec<String>,
    pub leader: String,
    pub raft_term: u64,
    pub raft_last_applied: u64,
    pub snapshot_interval: u64,
    pub election_timeout_ms: String,
    pub raft_heartbeat_ms: u64,
    pub heartbeat_period_ms: u64,
    pub heartbeat_grace: u32,
    pub ca_expiry_unix: u64,
    pub cert_expiry_unix: u64,
}

/// `swarm update`: only the given settings change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SettingsUpdate {
    pub heartbeat_period_ms: Option<u64>,
    pub heartbeat_grace: Option<u32>,
    /// `Some(None)` turns pruning off.
    pub prune_down_after_ms: Option<Option<u64>>,
    pub node_cert_validity_ms: Option<u64>,
    pub task_history_limit: Option<u32>,
    pub secret_history_limit: Option<u32>,
}
