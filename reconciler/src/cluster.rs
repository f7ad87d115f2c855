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
    /// When `status` last changed (for pruning nodes that stay Down).
    #[serde(default)]
    pub status_changed_at: UnixMillis,
}

impl Node {
    /// A node entering the cluster: active and unlabelled, addressed by the host of `advertise_addr`; a manager also
    /// records its API address and Raft id. An `Unknown` status says the node is still joining.
    pub fn joining(
        id: &str,
        role: Role,
        advertise_addr: &str,
        raft_id: u64,
        description: NodeDescription,
        status: NodeStatus,
        now: UnixMillis,
    ) -> Node {
        let manager = role == Role::Manager;
        Node {
            id: id.to_string(),
            role,
            availability: Availability::Active,
            labels: BTreeMap::new(),
            status,
            status_message: if status == NodeStatus::Unknown {
                "joining".into()
            } else {
                String::new()
            },
            addr: crate::daemon::host_of(advertise_addr),
            manager_addr: manager.then(|| advertise_addr.to_string()),
            raft_id: manager.then_some(raft_id),
            description,
            created_at: now,
            updated_at: now,
            status_changed_at: now,
        }
    }
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
    /// Finished tasks kept per slot.
    pub task_history_limit: u32,
    /// Earlier versions of each stack secret or config kept once nothing uses them, for `swarm stack rollback`.
    #[serde(default = "default_secret_history_limit")]
    pub secret_history_limit: u32,
}

fn default_secret_history_limit() -> u32 {
    Settings::default().secret_history_limit
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_period_ms: 1_000,
            heartbeat_grace: 3,
            prune_down_after_ms: None,
            node_cert_validity_ms: 90 * 24 * 3600 * 1000,
            task_history_limit: 5,
            secret_history_limit: 2,
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

/// What the leader's node monitor decides for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeTransition {
    /// No heartbeat for longer than the grace: the node is Down.
    MarkDown(String),
    /// A worker Down for longer than `prune_down_after_ms`: removed from the cluster.
    Prune(String),
}

/// The node monitor's decision (pure): which nodes missed their heartbeats, and which Down workers to prune.
///
/// `last_seen` gives, per node id, milliseconds since its last heartbeat and the heartbeat period in force when it
/// arrived (a node learns a new period only with its next beat, so its deadline follows the longer of the two);
/// nodes without one count from when this manager became leader (`leading_for_ms`), so a new leader gives every
/// node a full grace period.
pub fn node_transitions(
    nodes: &[Node],
    last_seen: &dyn Fn(&str) -> Option<(u64, u64)>,
    leading_for_ms: u64,
    self_id: &str,
    settings: &Settings,
    now: UnixMillis,
) -> Vec<NodeTransition> {
    let beats = u64::from(settings.heartbeat_grace.max(1));
    let mut out = Vec::new();
    for node in nodes.iter().filter(|n| n.id != self_id) {
        match node.status {
            NodeStatus::Down => {
                let prune = settings.prune_down_after_ms.is_some_and(|after| {
                    node.role == Role::Worker && now.saturating_sub(node.status_changed_at) > after
                });
                if prune {
                    out.push(NodeTransition::Prune(node.id.clone()));
                }
            }
            NodeStatus::Ready | NodeStatus::Unknown => {
                let (silent_for, period) = match last_seen(&node.id) {
                    Some((ms, period)) => (ms.min(leading_for_ms), period.max(settings.heartbeat_period_ms)),
                    None => (leading_for_ms, settings.heartbeat_period_ms),
                };
                if silent_for > period.saturating_mul(beats) {
                    out.push(NodeTransition::MarkDown(node.id.clone()));
                }
            }
        }
    }
    out
}

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
        let description = NodeDescription {
            hostname: host.into(),
            ..Default::default()
        };
        Node::joining(id, Role::Worker, "127.0.0.1:2377", 0, description, NodeStatus::Ready, 0)
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
    fn silent_nodes_go_down_after_the_grace_and_new_leaders_give_a_full_grace() {
        let nodes = vec![node("a", "a"), node("b", "b"), node("me", "me")];
        let settings = Settings::default(); // 1 s × 3
        let seen = |id: &str| match id {
            "a" => Some((3_500, 1_000)),
            "b" => Some((500, 1_000)),
            _ => None,
        };
        let t = node_transitions(&nodes, &seen, 60_000, "me", &settings, 0);
        assert_eq!(t, vec![NodeTransition::MarkDown("a".into())]);
        // Leading for only 2 s: nobody is Down yet, whatever the heartbeat map says.
        assert!(node_transitions(&nodes, &seen, 2_000, "me", &settings, 0).is_empty());
        // No heartbeat at all since this manager leads: Down once the grace has passed.
        assert_eq!(
            node_transitions(&nodes, &|_| None, 3_001, "me", &settings, 0),
            vec![
                NodeTransition::MarkDown("a".into()),
                NodeTransition::MarkDown("b".into())
            ]
        );
    }

    #[test]
    fn shortening_the_period_keeps_the_deadline_a_node_was_given_at_its_last_beat() {
        let nodes = vec![node("a", "a")];
        // The period was 1 s when "a" last beat, 700 ms ago; it is 200 ms now.
        let settings = Settings {
            heartbeat_period_ms: 200,
            ..Settings::default()
        };
        let seen = |_: &str| Some((700, 1_000));
        assert!(node_transitions(&nodes, &seen, 60_000, "me", &settings, 0).is_empty());
        let seen = |_: &str| Some((3_100, 1_000));
        assert_eq!(
            node_transitions(&nodes, &seen, 60_000, "me", &settings, 0),
            vec![NodeTransition::MarkDown("a".into())]
        );
    }

    #[test]
    fn down_workers_are_pruned_only_when_asked_and_managers_never() {
        let mut down = node("w", "w");
        down.status = NodeStatus::Down;
        down.status_changed_at = 1_000;
        let mut manager = down.clone();
        manager.id = "m".into();
        manager.role = Role::Manager;
        let nodes = vec![down, manager];
        let mut settings = Settings::default();
        assert!(node_transitions(&nodes, &|_| None, 0, "x", &settings, 10_000_000).is_empty());
        settings.prune_down_after_ms = Some(60_000);
        assert!(node_transitions(&nodes, &|_| None, 0, "x", &settings, 61_000).is_empty());
        assert_eq!(
            node_transitions(&nodes, &|_| None, 0, "x", &settings, 61_001),
            vec![NodeTransition::Prune("w".into())]
        );
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
