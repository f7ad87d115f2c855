//! The scheduler's filters: why a node cannot take a task, and the message that sums those reasons up.

use std::cmp::Reverse;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::net::SocketAddr;

use swarm_specs::spec::Constraint;
use swarm_specs::spec::ConstraintOp;
use swarm_specs::spec::Driver;
use swarm_specs::spec::Protocol;
use swarm_specs::spec::ResourceAmounts;

use crate::cluster::Availability;
use crate::cluster::Node;
use crate::cluster::NodeStatus;

const NODE_LABELS: &str = "node.labels.";
const ENGINE_LABELS: &str = "engine.labels.";

/// The first filter a node fails for a task, in the order the filters run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not Ready: Down, or not heard from yet.
    NotReady(NodeStatus),
    /// Paused or drained by an operator.
    Unavailable(Availability),
    /// The node cannot run the task's driver (e.g. no Docker Engine).
    MissingDriver(Driver),
    /// The task's reservations that do not fit in what the node has left (`None`: that one fits).
    Resources {
        nano_cpus: Option<u64>,
        memory_bytes: Option<u64>,
    },
    /// The first constraint the node does not satisfy.
    Constraint(Constraint),
    /// A host-mode published port already taken on the node.
    HostPort { port: u16, protocol: Protocol },
    /// The node already runs `max_replicas_per_node` tasks of the service.
    MaxReplicas(u64),
}

impl Rejection {
    /// Filter order, which is also the order of reasons with equal counts in [`explain`].
    fn stage(&self) -> u8 {
        match self {
            Rejection::NotReady(_) => 0,
            Rejection::Unavailable(_) => 1,
            Rejection::MissingDriver(_) => 2,
            Rejection::Resources { .. } => 3,
            Rejection::Constraint(_) => 4,
            Rejection::HostPort { .. } => 5,
            Rejection::MaxReplicas(_) => 6,
        }
    }

    /// The reason as it follows a count of nodes (`3 lack 2 GiB memory`, `1 lacks 2 GiB memory`).
    pub fn phrase(&self, plural: bool) -> String {
        let verb = |one: &str, many: &str| if plural { many.to_string() } else { one.to_string() };
        match self {
            Rejection::NotReady(NodeStatus::Down) => "down".to_string(),
            Rejection::NotReady(_) => "not ready".to_string(),
            Rejection::Unavailable(Availability::Drain) => "drained".to_string(),
            Rejection::Unavailable(_) => "paused".to_string(),
            Rejection::MissingDriver(driver) => {
                format!("{} the {} driver", verb("lacks", "lack"), driver_name(*driver))
            }
            Rejection::Resources {
                nano_cpus,
                memory_bytes,
            } => {
                let mut parts = Vec::new();
                if let Some(cpus) = nano_cpus {
                    parts.push(human_cpus(*cpus));
                }
                if let Some(bytes) = memory_bytes {
                    parts.push(format!("{} memory", human_bytes(*bytes)));
                }
                format!("{} {}", verb("lacks", "lack"), parts.join(" and "))
            }
            Rejection::Constraint(constraint) => format!("not matching constraint {constraint}"),
            Rejection::HostPort { port, protocol } => {
                format!("{} host port {port}/{protocol} in use", verb("has", "have"))
            }
            Rejection::MaxReplicas(max) => format!("{} max_replicas_per_node {max}", verb("is at", "are at")),
        }
    }
}

/// Why a task cannot be placed, from the rejection of every node:
/// `no suitable node (5 nodes: 3 not matching constraint node.labels.zone==east, 2 lack 2 GiB memory)`.
///
/// Reasons are counted by their text, most frequent first, then in filter order.
pub fn explain(rejections: &[Rejection]) -> String {
    let mut counted: Vec<(&Rejection, usize)> = Vec::new();
    for rejection in rejections {
        match counted.iter_mut().find(|(seen, _)| *seen == rejection) {
            Some((_, count)) => *count += 1,
            None => counted.push((rejection, 1)),
        }
    }
    counted.sort_by_key(|(rejection, count)| (Reverse(*count), rejection.stage()));
    let total = rejections.len();
    let mut out = format!("no suitable node ({total} node{}", if total == 1 { "" } else { "s" });
    for (i, (rejection, count)) in counted.iter().enumerate() {
        let sep = if i == 0 { ": " } else { ", " };
        let _ = write!(out, "{sep}{count} {}", rejection.phrase(*count != 1));
    }
    out.push(')');
    out
}

/// The name a node lists in its description's drivers.
pub fn driver_name(driver: Driver) -> &'static str {
    match driver {
        Driver::Docker => "docker",
        Driver::Process => "process",
    }
}

pub fn check_readiness(node: &Node) -> Result<(), Rejection> {
    if node.status != NodeStatus::Ready {
        return Err(Rejection::NotReady(node.status));
    }
    if node.availability != Availability::Active {
        return Err(Rejection::Unavailable(node.availability));
    }
    Ok(())
}

pub fn check_driver(node: &Node, driver: Driver) -> Result<(), Rejection> {
    let name = driver_name(driver);
    if node.description.drivers.iter().any(|d| d == name) {
        Ok(())
    } else {
        Err(Rejection::MissingDriver(driver))
    }
}

/// `available` is the node's capacity minus what its tasks already reserve.
pub fn check_resources(available: &ResourceAmounts, wanted: &ResourceAmounts) -> Result<(), Rejection> {
    let nano_cpus = (wanted.nano_cpus > available.nano_cpus).then_some(wanted.nano_cpus);
    let memory_bytes = (wanted.memory_bytes > available.memory_bytes).then_some(wanted.memory_bytes);
    if nano_cpus.is_none() && memory_bytes.is_none() {
        Ok(())
    } else {
        Err(Rejection::Resources {
            nano_cpus,
            memory_bytes,
        })
    }
}

pub fn check_constraints(node: &Node, constraints: &[Constraint]) -> Result<(), Rejection> {
    match constraints.iter().find(|c| !constraint_matches(node, c)) {
        Some(failed) => Err(Rejection::Constraint(failed.clone())),
        None => Ok(()),
    }
}

/// Swarm's rules: keys are case-insensitive, label names case-sensitive; values of `node.role`,
/// `node.hostname` and `node.platform.*` compare case-insensitively, ids and label values exactly.
/// A missing label reads as empty, so `node.labels.zone!=east` matches a node without a zone.
pub fn constraint_matches(node: &Node, constraint: &Constraint) -> bool {
    let key = constraint.key.as_str();
    let lower = key.to_ascii_lowercase();
    let role = node.role.to_string();
    let (actual, fold): (Option<&str>, bool) = match lower.as_str() {
        "node.id" => (Some(&node.id), false),
        "node.hostname" => (Some(&node.description.hostname), true),
        "node.role" => (Some(&role), true),
        "node.platform.os" => (Some(&node.description.os), true),
        "node.platform.arch" => (Some(&node.description.arch), true),
        "node.ip" => {
            let matched = ip_matches(node_ip(&node.addr), &constraint.value);
            return matched == (constraint.op == ConstraintOp::Eq);
        }
        _ => (label(node, key), false),
    };
    let equal = match actual {
        Some(value) if fold => value.eq_ignore_ascii_case(&constraint.value),
        Some(value) => value == constraint.value,
        None => constraint.value.is_empty(),
    };
    equal == (constraint.op == ConstraintOp::Eq)
}

/// The value of a `node.labels.K` or `engine.labels.K` descriptor on a node (prefix in any case).
pub fn label<'n>(node: &'n Node, key: &str) -> Option<&'n str> {
    for (prefix, labels) in [
        (NODE_LABELS, &node.labels),
        (ENGINE_LABELS, &node.description.engine_labels),
    ] {
        if key.len() > prefix.len() && key.is_char_boundary(prefix.len()) {
            let (head, name) = key.split_at(prefix.len());
            if head.eq_ignore_ascii_case(prefix) {
                return labels.get(name).map(String::as_str);
            }
        }
    }
    None
}

/// The node's address is `IP` or `IP:port` (`[v6]:port`).
fn node_ip(addr: &str) -> Option<IpAddr> {
    addr.parse::<SocketAddr>()
        .map(|s| s.ip())
        .ok()
        .or_else(|| addr.parse().ok())
}

/// `value` is an address or a CIDR network (`10.0.0.0/8`).
fn ip_matches(ip: Option<IpAddr>, value: &str) -> bool {
    let Some(ip) = ip else { return false };
    let Some((net, len)) = value.split_once('/') else {
        return value.parse::<IpAddr>().is_ok_and(|v| v == ip);
    };
    let (Ok(net), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u32>()) else {
        return false;
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) if len <= 32 => len == 0 || (u32::from(a) ^ u32::from(b)) >> (32 - len) == 0,
        (IpAddr::V6(a), IpAddr::V6(b)) if len <= 128 => len == 0 || (u128::from(a) ^ u128::from(b)) >> (128 - len) == 0,
        _ => false,
    }
}

/// `2 GiB`, `1.5 GiB`, `512 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if bytes >= size {
            return format!("{} {unit}", trimmed(bytes as f64 / size as f64));
        }
    }
    format!("{bytes} B")
}

/// `1 CPU`, `2 CPUs`, `0.5 CPUs`.
pub fn human_cpus(nano_cpus: u64) -> String {
    let text = trimmed(nano_cpus as f64 / 1e9);
    if text == "1" {
        "1 CPU".to_string()
    } else {
        format!("{text} CPUs")
    }
}

fn trimmed(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}
