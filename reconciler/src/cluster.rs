//! The cluster's own objects in the store: the cluster record (CA, join secrets, settings) and the nodes.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

use crate::ca::Role;
use crate::store::Object;

/// Milliseconds since the Unix epoch; timestamps in stored objects use it so they compare across machines.
pub type UnixMillis = u64;

pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    Active,
    Pause,
    Drain,
}

impl Availability {
    pub fn parse(text: &str) -> Result<Availability, String> {
        match text.to_ascii_lowercase().as_str() {
            "active" => Ok(Availability::Active),
            "pause" => Ok(Availability::Pause),
            "drain" => Ok(Availability::Drain),
            _ => Err(format!(
                "invalid availability {text:?}: expected active, pause or drain"
            )),
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Availability::Active => "Active",
            Availability::Pause => "Pause",
            Availability::Drain => "Drain",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    #[default]
    Unknown,
    Ready,
    Down,
}

impl NodeStatus {
    pub fn title(self) -> &'static str {
        match self {
            NodeStatus::Unknown => "Unknown",
            NodeStatus::Ready => "Ready",
            NodeStatus::Down => "Down",
        }
    }
}

/// What a node says about itself when its session starts (and whenever it changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeDescription {
    pub hostname: String,
    /// Docker Engine version when an engine is reachable.
    pub engine_version: Option<String>,
    pub os: String,
    pub arch: String,
    pub nano_cpus: u64,
    pub memory_bytes: u64,
    pub engine_labels: BTreeMap<String, String>,
    /// Task drivers this node can run (`docker` only when an engine is reachable).
    pub drivers: Vec<String>,
}

/// A member of the cluster, as `swarm node ls|inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub role: Role,
    pub availability: Availability,
    pub labels: BTreeMap<String, String>,
    pub status: NodeStatus,
    /// Why the status is what it is (e.g. "heartbeat failure").
    pub status_message: String,
    /// The node's address as other nodes reach it (IP or IP:port).
    pub addr: String,
    /// For managers: the address of its API and Raft endpoint.
    pub manager_addr: Option<String>,
    /// For managers: its Raft id.
    pub raft_id: Option<u64>,
    pub description: NodeDescription,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

impl Object for Node {
    const TABLE: &'static str = "nodes";
    fn key(&self) -> String {
        self.id.clone()
    }
}

/// Settings a user can change with `swarm update` (Docker's `docker swarm update` shapes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// How often nodes report; Docker's default is 5 s, ours 1 s.
    pub heartbeat_period_ms: u64,
    /// Missed heartbeats before a node is marked Down.
    pub heartbeat_grace: u32,
    /// Remove nodes that have been Down this long (None: never, the default).
    pub prune_down_after_ms: Option<u64>,
    /// Lifetime of node certificates.
    pub node_cert_validity_ms: u64,
    /// Raft snapshot interval in log entries.
    pub snapshot_interval: u64,
    /// Finished tasks kept per slot.
    pub task_history_limit: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_period_ms: 1_000,
            heartbeat_grace: 3,
            prune_down_after_ms: None,
            node_cert_validity_ms: 90 * 24 * 3600 * 1000,
            snapshot_interval: 10_000,
            task_history_limit: 5,
        }
    }
}

/// The one cluster record: identity, CA, join secrets, settings.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub id: String,
    pub created_at: UnixMillis,
    pub ca_cert_pem: String,
    /// The CA's private key, so that any manager can sign certificates.
    pub ca_key_pem: String,
    pub worker_secret: String,
    pub manager_secret: String,
    pub settings: Settings,
    /// Ids of removed nodes: their certificates stay valid until expiry, so they are refused by id.
    pub removed_nodes: BTreeSet<String>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .field("settings", &self.settings)
            .field("removed_nodes", &self.removed_nodes)
            .finish_non_exhaustive()
    }
}

impl Object for Cluster {
    const TABLE: &'static str = "cluster";
    fn key(&self) -> String {
        CLUSTER_KEY.to_string()
    }
}

pub const CLUSTER_KEY: &str = "cluster";

/// Finds the node an id (or a unique prefix of one, or a hostname) names, as Docker's CLI resolves node arguments.
pub fn resolve_node<'a>(nodes: &'a [Node], wanted: &str) -> Result<&'a Node, String> {
    if let Some(n) = nodes.iter().find(|n| n.id == wanted) {
        return Ok(n);
    }
    let by_prefix: Vec<&Node> = nodes.iter().filter(|n| n.id.starts_with(wanted)).collect();
    match by_prefix.as_slice() {
        [one] => return Ok(one),
        [] => {}
        many => {
            return Err(format!(
                "node {wanted:?} is ambiguous: it matches {} nodes ({}); give more characters",
                many.len(),
                many.iter().map(|n| n.id.as_str()).collect::<Vec<_>>().join(", ")
            ))
        }
    }
    let by_name: Vec<&Node> = nodes.iter().filter(|n| n.description.hostname == wanted).collect();
    match by_name.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("node {wanted} not found")),
        _ => Err(format!(
            "node name {wanted:?} is ambiguous: several nodes have that hostname; use the node id"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, host: &str) -> Node {
        Node {
            id: id.into(),
            role: Role::Worker,
            availability: Availability::Active,
            labels: BTreeMap::new(),
            status: NodeStatus::Ready,
            status_message: String::new(),
            addr: "127.0.0.1".into(),
            manager_addr: None,
            raft_id: None,
            description: NodeDescription {
                hostname: host.into(),
                ..Default::default()
            },
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn nodes_resolve_by_id_unique_prefix_or_hostname() {
        let nodes = vec![node("xpjabc", "a"), node("xqzdef", "b")];
        assert_eq!(resolve_node(&nodes, "xpjabc").unwrap().id, "xpjabc");
        assert_eq!(resolve_node(&nodes, "xp").unwrap().id, "xpjabc");
        assert_eq!(resolve_node(&nodes, "b").unwrap().id, "xqzdef");
        assert!(resolve_node(&nodes, "x").unwrap_err().contains("ambiguous"));
        assert_eq!(resolve_node(&nodes, "zzz").unwrap_err(), "node zzz not found");
    }

    #[test]
    fn cluster_debug_hides_keys_and_secrets() {
        let c = Cluster {
            id: "c".into(),
            created_at: 0,
            ca_cert_pem: "CERT".into(),
            ca_key_pem: "PRIVATE-KEY".into(),
            worker_secret: "WSECRET".into(),
            manager_secret: "MSECRET".into(),
            settings: Settings::default(),
            removed_nodes: BTreeSet::new(),
        };
        let text = format!("{c:?}");
        for secret in ["PRIVATE-KEY", "WSECRET", "MSECRET"] {
            assert!(!text.contains(secret), "{text}");
        }
    }
}
