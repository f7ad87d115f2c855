//! The scheduler's decision (pure): which node each pending task goes to, or why none can take it.
//!
//! [`schedule`] takes the nodes, the tasks already on them and the pending tasks, and returns one
//! [`Decision`] per pending task. Identical pending tasks (same service and spec) form a group whose filters run
//! once per node; each assignment then updates only the chosen node (its counts, reservations and host ports), so
//! the next task of the batch sees it. The caller writes all the decisions in one store transaction.
//!
//! Filters, in order ([`filters`]): Ready and Active, driver, resources, constraints, host-mode ports,
//! `max_replicas_per_node`. Among the nodes that pass, [`spread`] picks: spread preferences first (the
//! branch with the fewest tasks of the service, level by level), then nodes where the service keeps failing last,
//! then the fewest tasks of the service, then the fewest tasks overall.

pub mod filters;
pub mod spread;

use std::collections::HashMap;
use std::collections::HashSet;

use swarm_specs::spec::PortConfig;
use swarm_specs::spec::Protocol;
use swarm_specs::spec::PublishMode;
use swarm_specs::spec::ResourceAmounts;
use swarm_specs::spec::TaskSpec;
use swarm_specs::task::Task;
use swarm_specs::task::TaskState;

use crate::cluster::Node;
pub use filters::explain;
pub use filters::Rejection;

/// Recent failures of a service on a node from which the node is tried last for that service (swarmkit's value).
pub const FAILURES_BEFORE_LAST_RESORT: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Assign {
        task_id: String,
        node_id: String,
    },
    /// The task stays pending; `reason` is [`explain`]'s message.
    Unplaceable {
        task_id: String,
        reason: String,
    },
}

/// A node with what its tasks already hold.
#[derive(Debug, Clone)]
pub struct NodeInfo<'n> {
    pub node: &'n Node,
    /// Tasks on the node that occupy it ([`occupies_node`]), by service.
    pub tasks_by_service: HashMap<String, u64>,
    pub total_tasks: u64,
    /// Sum of the reservations of those tasks (`pids` unused).
    pub reserved: ResourceAmounts,
    /// Host-mode published ports those tasks hold.
    pub host_ports: HashSet<(Protocol, u16)>,
}

impl<'n> NodeInfo<'n> {
    pub fn new(node: &'n Node) -> NodeInfo<'n> {
        NodeInfo {
            node,
            tasks_by_service: HashMap::new(),
            total_tasks: 0,
            reserved: ResourceAmounts::default(),
            host_ports: HashSet::new(),
        }
    }

    pub fn service_tasks(&self, service: &str) -> u64 {
        self.tasks_by_service.get(service).copied().unwrap_or(0)
    }

    /// The node's capacity minus what its tasks reserve.
    pub fn available(&self) -> ResourceAmounts {
        let description = &self.node.description;
        ResourceAmounts {
            nano_cpus: description.nano_cpus.saturating_sub(self.reserved.nano_cpus),
            memory_bytes: description.memory_bytes.saturating_sub(self.reserved.memory_bytes),
            pids: 0,
        }
    }

    /// Counts a task's reservations against the node (a global task placed on it).
    pub fn reserve(&mut self, spec: &TaskSpec) {
        let wanted = &spec.resources.reservations;
        self.reserved.nano_cpus = self.reserved.nano_cpus.saturating_add(wanted.nano_cpus);
        self.reserved.memory_bytes = self.reserved.memory_bytes.saturating_add(wanted.memory_bytes);
    }

    fn add(&mut self, service: &str, spec: &TaskSpec, host_ports: &[(Protocol, u16)]) {
        match self.tasks_by_service.get_mut(service) {
            Some(count) => *count += 1,
            None => {
                self.tasks_by_service.insert(service.to_string(), 1);
            }
        }
        self.total_tasks += 1;
        let wanted = &spec.resources.reservations;
        self.reserved.nano_cpus = self.reserved.nano_cpus.saturating_add(wanted.nano_cpus);
        self.reserved.memory_bytes = self.reserved.memory_bytes.saturating_add(wanted.memory_bytes);
        self.host_ports.extend(host_ports.iter().copied());
    }
}

/// A task holds its node's resources and ports until it is finished or told to stop (as swarmkit counts them).
pub fn occupies_node(task: &Task) -> bool {
    task.node_id.is_some() && task.desired_state <= TaskState::Running && task.status.state <= TaskState::Running
}

/// The host-mode published ports of a service (ports Swarm picks itself never conflict).
pub fn host_ports(ports: &[PortConfig]) -> Vec<(Protocol, u16)> {
    ports
        .iter()
        .filter(|p| p.mode == PublishMode::Host)
        .filter_map(|p| p.published.map(|port| (p.protocol, port)))
        .collect()
}

/// Builds one [`NodeInfo`] per node from the tasks already assigned (tasks on unknown nodes are ignored).
pub fn node_infos<'n>(
    nodes: &'n [Node],
    existing: &[Task],
    ports: &dyn Fn(&str) -> Vec<PortConfig>,
) -> Vec<NodeInfo<'n>> {
    let mut infos: Vec<NodeInfo> = nodes.iter().map(NodeInfo::new).collect();
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
    let mut ports_by_service: HashMap<&str, Vec<(Protocol, u16)>> = HashMap::new();
    for task in existing.iter().filter(|t| occupies_node(t)) {
        let Some(&i) = task.node_id.as_deref().and_then(|id| index.get(id)) else {
            continue;
        };
        let held = ports_by_service
            .entry(task.service.as_str())
            .or_insert_with(|| host_ports(&ports(&task.service)));
        infos[i].add(&task.service, &task.spec, held);
    }
    infos
}

/// Identical pending tasks: one service, one spec.
struct Group<'t> {
    service: &'t str,
    spec: &'t TaskSpec,
    host_ports: Vec<(Protocol, u16)>,
    /// Indexes into the pending tasks, in order.
    members: Vec<usize>,
}

fn group_pending<'t>(pending: &'t [Task], ports: &dyn Fn(&str) -> Vec<PortConfig>) -> Vec<Group<'t>> {
    let mut groups: Vec<Group> = Vec::new();
    let mut by_service: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, task) in pending.iter().enumerate() {
        let candidates = by_service.entry(task.service.as_str()).or_default();
        match candidates.iter().find(|&&g| *groups[g].spec == task.spec) {
            Some(&g) => groups[g].members.push(i),
            None => {
                candidates.push(groups.len());
                groups.push(Group {
                    service: &task.service,
                    spec: &task.spec,
                    host_ports: host_ports(&ports(&task.service)),
                    members: vec![i],
                });
            }
        }
    }
    groups
}

/// Filters that do not change while a group is placed.
fn check_static(info: &NodeInfo, group: &Group) -> Result<(), Rejection> {
    filters::check_readiness(info.node)?;
    filters::check_driver(info.node, group.spec.driver)?;
    filters::check_constraints(info.node, &group.spec.placement.constraints)
}

/// Filters that an assignment to the node can change.
fn check_capacity(info: &NodeInfo, group: &Group) -> Result<(), Rejection> {
    filters::check_resources(&info.available(), &group.spec.resources.reservations)?;
    if let Some(&(protocol, port)) = group.host_ports.iter().find(|p| info.host_ports.contains(p)) {
        return Err(Rejection::HostPort { port, protocol });
    }
    let max = group.spec.placement.max_replicas_per_node;
    if max > 0 && info.service_tasks(group.service) >= max {
        return Err(Rejection::MaxReplicas(max));
    }
    Ok(())
}

/// All filters in the order (resources before constraints), so a rejection names the first that fails.
fn check_all(info: &NodeInfo, group: &Group) -> Result<(), Rejection> {
    filters::check_readiness(info.node)?;
    filters::check_driver(info.node, group.spec.driver)?;
    filters::check_resources(&info.available(), &group.spec.resources.reservations)?;
    filters::check_constraints(info.node, &group.spec.placement.constraints)?;
    check_capacity(info, group)
}

/// Places the pending tasks; one decision per pending task, in their order.
///
/// `ports` gives a service's published ports; `recent_failures` how often a service's tasks recently failed on a
/// node.
pub fn schedule(
    nodes: &[Node],
    existing: &[Task],
    pending: &[Task],
    ports: &dyn Fn(&str) -> Vec<PortConfig>,
    recent_failures: &dyn Fn(&str, &str) -> u32,
) -> Vec<Decision> {
    let mut infos = node_infos(nodes, existing, ports);
    let mut decisions: Vec<Option<Decision>> = vec![None; pending.len()];
    for group in group_pending(pending, ports) {
        place_group(&mut infos, &group, pending, recent_failures, &mut decisions);
    }
    decisions.into_iter().flatten().collect()
}

fn place_group(
    infos: &mut [NodeInfo],
    group: &Group,
    pending: &[Task],
    recent_failures: &dyn Fn(&str, &str) -> u32,
    decisions: &mut [Option<Decision>],
) {
    let mut rejections: Vec<Option<Rejection>> = vec![None; infos.len()];
    let mut spread = spread::Spread::new(&group.spec.placement.preferences);
    for (i, info) in infos.iter().enumerate() {
        if check_static(info, group).is_err() {
            rejections[i] = check_all(info, group).err();
            continue;
        }
        let failing = recent_failures(group.service, &info.node.id) >= FAILURES_BEFORE_LAST_RESORT;
        let eligible = match check_all(info, group) {
            Ok(()) => true,
            Err(rejection) => {
                rejections[i] = Some(rejection);
                false
            }
        };
        spread.add_node(i, info, group.service, failing, eligible);
    }
    let mut reason: Option<String> = None;
    for &member in &group.members {
        let task_id = pending[member].id.clone();
        let Some(i) = spread.pick() else {
            let reason = reason
                .get_or_insert_with(|| {
                    let all: Vec<Rejection> = rejections.iter().flatten().cloned().collect();
                    explain(&all)
                })
                .clone();
            decisions[member] = Some(Decision::Unplaceable { task_id, reason });
            continue;
        };
        infos[i].add(group.service, group.spec, &group.host_ports);
        decisions[member] = Some(Decision::Assign {
            task_id,
            node_id: infos[i].node.id.clone(),
        });
        match check_capacity(&infos[i], group) {
            Ok(()) => spread.assigned(i, &infos[i], group.service, true),
            Err(rejection) => {
                spread.assigned(i, &infos[i], group.service, false);
                rejections[i] = Some(rejection);
            }
        }
    }
}

#[cfg(test)]
mod tests;
