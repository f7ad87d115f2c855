//! Stacks against the live cluster: the current state of a stack as the store holds it, a plan with drift and a
//! placement dry-run, and an apply that writes the whole stack in one guarded Raft entry.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;
use serde_json::json;
use swarm_specs::spec::ConfigSpec;
use swarm_specs::spec::ContentSource;
use swarm_specs::spec::NetworkSpec;
use swarm_specs::spec::SecretSpec;
use swarm_specs::spec::ServiceMode;
use swarm_specs::spec::ServiceSpec;
use swarm_specs::spec::StackSpec;
use swarm_specs::spec::VolumeSpec;
use swarm_specs::spec::STACK_NAMESPACE_LABEL;
use swarm_specs::task::Task;
use swarm_specs::task::TaskState;
use swarm_specs::task::TaskStatus;

use crate::cluster::Node;
use crate::manager::Manager;
use crate::manager::ManagerError;
use crate::objects::Service;
use crate::objects::Stack;
use crate::objects::StackRevision;
use crate::plan;
use crate::plan::Action;
use crate::plan::Kind;
use crate::plan::Plan;
use crate::scheduler;
use crate::store;
use crate::store::Guard;
use crate::store::Object;
use crate::store::Op;
use crate::store::Request;
use crate::store::StateMachineStore;

/// `POST /v1/stacks/{name}/plan`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanRequest {
    pub spec: StackSpec,
}

/// A live plan: the changes (with placement), the drift since the last apply, and what is not honoured yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LivePlan {
    pub plan: Plan,
    /// What differs between the last applied revision and the cluster, because of commands outside the stack
    /// (`swarm service scale`, `service update`): each change reads "the cluster has `after`, the stack said `before`".
    pub drift: Vec<plan::Change>,
    /// Parts of the stack this version accepts but does not enforce yet.
    pub notices: Vec<String>,
}

/// `POST /v1/stacks/{name}/apply`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub spec: StackSpec,
    /// From a saved plan: refuse when the stack moved past this revision since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_revision: Option<u64>,
    /// Remove services, networks, volumes, secrets and configs the stack no longer has.
    #[serde(default)]
    pub prune: bool,
    /// Where the spec came from (`file sha256:…`, `git …`).
    #[serde(default)]
    pub source: String,
    /// The content of the stack's new or rotated secrets (`SecretSpec::data` is never serialized), checked against
    /// their digests and sealed by the manager before anything is written. Never echoed in answers or errors.
    #[serde(default, skip_serializing_if = "crate::secrets::SecretPayloads::is_empty")]
    pub secret_data: crate::secrets::SecretPayloads,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// The stack's revision after the apply (unchanged when there was nothing to do).
    pub revision: u64,
    pub changed: bool,
    pub plan: Plan,
    /// The services of the stack and the task version each converges to.
    pub services: Vec<(String, u64)>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ApplyError {
    #[error(
        "plan is stale: stack {stack} changed at revision {actual} after the plan was made at revision {planned}; \
         run `swarm plan` again"
    )]
    Stale { stack: String, planned: u64, actual: u64 },
    #[error("{0}")]
    Invalid(String),
}

/// A stack's current state: the last applied spec with the services as they are now.
pub struct Current {
    pub stack: Option<(Stack, u64)>,
    /// Services of the stack (by label or by the last applied spec), as they are now.
    pub services: Vec<(Service, u64)>,
    pub spec: StackSpec,
}

pub fn current(sm: &StateMachineStore, name: &str) -> Current {
    let stack = store::get::<Stack>(sm, name);
    let applied = stack.as_ref().map(|(s, _)| s.spec.clone());
    let services: Vec<(Service, u64)> = store::list::<Service>(sm)
        .into_iter()
        .filter(|(s, _)| s.stack() == Some(name) || applied.as_ref().is_some_and(|a| a.services.contains_key(s.name())))
        .collect();
    let mut spec = applied.unwrap_or_else(|| StackSpec {
        name: name.to_string(),
        ..StackSpec::default()
    });
    spec.services = services
        .iter()
        .map(|(s, _)| (s.name().to_string(), s.spec.clone()))
        .collect();
    Current { stack, services, spec }
}

/// The live plan of `desired` against the store.
pub fn plan_live(sm: &StateMachineStore, desired: &StackSpec) -> LivePlan {
    let current = current(sm, &desired.name);
    let mut plan = plan::plan(desired, &current.spec);
    plan.base_revision = Some(current.stack.as_ref().map_or(0, |(s, _)| s.revision));
    let drift = match &current.stack {
        Some((stack, _)) => {
            let mut applied = stack.spec.clone();
            applied.secrets = current.spec.secrets.clone();
            applied.configs = current.spec.configs.clone();
            plan::plan(&current.spec, &applied).changes
        }
        None => Vec::new(),
    };
    let nodes: Vec<Node> = store::list::<Node>(sm).into_iter().map(|(n, _)| n).collect();
    let tasks: Vec<Task> = store::list::<Task>(sm).into_iter().map(|(t, _)| t).collect();
    dry_run(&mut plan, desired, &current, &nodes, &tasks);
    LivePlan {
        plan,
        drift,
        notices: notices(desired),
    }
}

/// What this version accepts but does not enforce yet, said rather than dropped silently.
pub fn notices(desired: &StackSpec) -> Vec<String> {
    use swarm_specs::spec::Driver;
    use swarm_specs::spec::PublishMode;
    let mut out = Vec::new();
    for (name, service) in &desired.services {
        let ingress: Vec<String> = service
            .ports
            .iter()
            .filter(|p| p.mode == PublishMode::Ingress)
            .filter_map(|p| p.published.map(|port| port.to_string()))
            .collect();
        if !ingress.is_empty() {
            out.push(format!(
                "service {name}: port {} is published on the nodes that run its tasks (no routing mesh yet)",
                ingress.join(", ")
            ));
        }
    }
    let containers_on_networks = desired
        .services
        .values()
        .any(|s| s.task.driver == Driver::Docker && !s.task.networks.is_empty());
    if containers_on_networks && desired.networks.values().any(|n| n.driver == "overlay" && !n.external) {
        out.push(
            "networks: each node gets a bridge network of the stack's network; services find each other by name among \
             the tasks on one node (cross-host overlay and virtual IPs are not built yet)"
                .to_string(),
        );
    }
    out
}

/// Fills each created or updated service's placement: where its new tasks would go, and what cannot be placed.
pub fn dry_run(plan: &mut Plan, desired: &StackSpec, current: &Current, nodes: &[Node], tasks: &[Task]) {
    // Tasks of services this plan replaces no longer hold their nodes; the rest stay.
    let replaced: BTreeSet<&str> = plan
        .changes
        .iter()
        .filter(|c| c.kind == Kind::Service && (c.replaces_tasks || c.action == Action::Remove))
        .filter_map(|c| change_service(c, desired, current))
        .collect();
    let mut existing: Vec<Task> = tasks
        .iter()
        .filter(|t| !replaced.contains(t.service.as_str()))
        .cloned()
        .collect();
    for change in plan.changes.iter_mut() {
        if change.kind != Kind::Service || change.action == Action::Remove {
            continue;
        }
        let Some(name) = change_service(change, desired, current) else {
            continue;
        };
        let Some(spec) = desired.services.get(name) else {
            continue;
        };
        let live = existing
            .iter()
            .filter(|t| t.service == name && scheduler::occupies_node(t))
            .count() as u64;
        let placement = match &spec.mode {
            ServiceMode::Replicated { replicas } => {
                let wanted = replicas.saturating_sub(live);
                place_replicas(spec, wanted, nodes, &mut existing, desired)
            }
            ServiceMode::ReplicatedJob { max_concurrent, .. } => {
                place_replicas(spec, (*max_concurrent).max(1), nodes, &mut existing, desired)
            }
            ServiceMode::Global | ServiceMode::GlobalJob => place_global(spec, nodes, &existing),
        };
        change.placement = Some(placement);
    }
}

/// The stored name of the service a change is about.
fn change_service<'a>(change: &plan::Change, desired: &'a StackSpec, current: &'a Current) -> Option<&'a str> {
    let value = if change.after.is_null() {
        &change.before
    } else {
        &change.after
    };
    let name = value.get("name")?.as_str()?;
    desired
        .services
        .keys()
        .chain(current.spec.services.keys())
        .find(|k| k.as_str() == name)
        .map(String::as_str)
}

fn place_replicas(
    spec: &ServiceSpec,
    wanted: u64,
    nodes: &[Node],
    existing: &mut Vec<Task>,
    desired: &StackSpec,
) -> serde_json::Value {
    let pending: Vec<Task> = (0..wanted)
        .map(|i| Task {
            id: format!("dry-run-{}-{i}", spec.name),
            service: spec.name.clone(),
            slot: Some(i + 1),
            node_id: None,
            spec_version: 0,
            spec: spec.task.clone(),
            desired_state: TaskState::Running,
            status: TaskStatus::new(TaskState::Pending, 0, "dry run"),
            created_at: 0,
            ports: Vec::new(),
            networks: Vec::new(),
            started_at: None,
        })
        .collect();
    let ports = |name: &str| desired.services.get(name).map(|s| s.ports.clone()).unwrap_or_default();
    let decisions = scheduler::schedule(nodes, existing, &pending, &ports, &|_, _| 0);
    let mut by_node: BTreeMap<String, u64> = BTreeMap::new();
    let mut unplaceable: BTreeMap<String, u64> = BTreeMap::new();
    for (decision, mut task) in decisions.into_iter().zip(pending) {
        match decision {
            scheduler::Decision::Assign { node_id, .. } => {
                let host = hostname(nodes, &node_id);
                *by_node.entry(host).or_default() += 1;
                task.node_id = Some(node_id);
                task.status.state = TaskState::Assigned;
                existing.push(task);
            }
            scheduler::Decision::Unplaceable { reason, .. } => *unplaceable.entry(reason).or_default() += 1,
        }
    }
    json!({
        "new_tasks": wanted,
        "nodes": by_node,
        "unplaceable": unplaceable.into_iter().map(|(reason, count)| json!({"count": count, "reason": reason})).collect::<Vec<_>>(),
    })
}

fn place_global(spec: &ServiceSpec, nodes: &[Node], existing: &[Task]) -> serde_json::Value {
    let infos = scheduler::node_infos(nodes, existing, &|_| Vec::new());
    let mut by_node: BTreeMap<String, u64> = BTreeMap::new();
    let mut rejections = Vec::new();
    for info in &infos {
        let node = info.node;
        let check = scheduler::filters::check_readiness(node)
            .and_then(|_| scheduler::filters::check_driver(node, spec.task.driver))
            .and_then(|_| scheduler::filters::check_resources(&info.available(), &spec.task.resources.reservations))
            .and_then(|_| scheduler::filters::check_constraints(node, &spec.task.placement.constraints));
        match check {
            Ok(()) => {
                by_node.insert(node.description.hostname.clone(), 1);
            }
            Err(rejection) => rejections.push(rejection),
        }
    }
    let skipped = if rejections.is_empty() {
        serde_json::Value::Null
    } else {
        json!(scheduler::explain(&rejections).replacen("no suitable node", "not on every node", 1))
    };
    json!({ "new_tasks": by_node.len(), "nodes": by_node, "unplaceable": [], "skipped_nodes": skipped })
}

fn hostname(nodes: &[Node], id: &str) -> String {
    nodes
        .iter()
        .find(|n| n.id == id)
        .map(|n| n.description.hostname.clone())
        .unwrap_or_else(|| id.to_string())
}

/// The write that applies `desired`: one entry, guarded on every object it read.
pub struct ApplyWrite {
    pub request: Option<Request>,
    pub revision: u64,
    pub plan: Plan,
    pub services: Vec<(String, u64)>,
}

/// What the apply of `desired` writes (pure but for the store reads done by the caller into `current` and `live`).
#[allow(clippy::too_many_arguments)]
pub fn apply_write(
    desired: &StackSpec,
    current: &Current,
    last_revision: u64,
    others: &Others,
    request: &ApplyRequest,
    applied_by: &str,
    now: u64,
    new_id: &mut dyn FnMut() -> String,
) -> Result<ApplyWrite, ApplyError> {
    let stack_revision = current.stack.as_ref().map_or(0, |(s, _)| s.revision);
    if let Some(planned) = request.expected_revision {
        if planned != stack_revision {
            return Err(ApplyError::Stale {
                stack: desired.name.clone(),
                planned,
                actual: stack_revision,
            });
        }
    }
    for (name, secret) in &desired.secrets {
        if secret.source == ContentSource::External && !others.secrets.contains_key(name) {
            return Err(ApplyError::Invalid(format!(
                "secret {name} is declared external but does not exist in the cluster; create it first \
                 (`swarm secret create {name} FILE`)"
            )));
        }
    }
    for (name, config) in &desired.configs {
        if config.source == ContentSource::External && !others.configs.contains_key(name) {
            return Err(ApplyError::Invalid(format!(
                "config {name} is declared external but does not exist in the cluster; create it first \
                 (`swarm config create {name} FILE`)"
            )));
        }
    }
    let mut plan = plan::plan(desired, &current.spec);
    plan.base_revision = Some(stack_revision);
    let mut guards = vec![Guard::Revision {
        table: Stack::TABLE.into(),
        key: desired.name.clone(),
        revision: current.stack.as_ref().map_or(0, |(_, r)| *r),
    }];
    let mut ops = Vec::new();
    let live: BTreeMap<&str, &(Service, u64)> = current.services.iter().map(|s| (s.0.name(), s)).collect();
    let mut versions = Vec::new();
    for (name, spec) in &desired.services {
        let mut spec = spec.clone();
        spec.labels
            .entry(STACK_NAMESPACE_LABEL.to_string())
            .or_insert_with(|| desired.name.clone());
        match live.get(name.as_str()) {
            Some((service, revision)) => {
                guards.push(guard(Service::TABLE, name, *revision));
                match service.updated(spec, false, now) {
                    Some(updated) => {
                        versions.push((name.clone(), updated.task_version));
                        ops.push(store::put(&updated));
                    }
                    None => versions.push((name.clone(), service.task_version)),
                }
            }
            None => {
                if let Some(revision) = others.services.get(name) {
                    return Err(ApplyError::Invalid(format!(
                        "service {name} exists outside stack {} (revision {revision}); remove it or rename the service",
                        desired.name
                    )));
                }
                guards.push(guard(Service::TABLE, name, 0));
                let service = Service::new(new_id(), spec, now);
                versions.push((name.clone(), service.task_version));
                ops.push(store::put(&service));
            }
        }
    }
    put_objects(
        &mut ops,
        &desired.networks,
        &current.spec.networks,
        |n: &NetworkSpec| n.external,
    );
    put_objects(&mut ops, &desired.volumes, &current.spec.volumes, |v: &VolumeSpec| {
        v.external
    });
    // Compared without their content, which the stored specs never carry (it is sealed apart).
    let secrets: BTreeMap<String, SecretSpec> = desired
        .secrets
        .iter()
        .map(|(name, s)| {
            let mut s = s.clone();
            s.data = Default::default();
            (name.clone(), s)
        })
        .collect();
    put_objects(&mut ops, &secrets, &current.spec.secrets, |s: &SecretSpec| {
        s.source == ContentSource::External
    });
    put_objects(&mut ops, &desired.configs, &current.spec.configs, |c: &ConfigSpec| {
        c.source == ContentSource::External
    });
    // Stack-owned secrets and configs that a rotation replaced go at once; other objects only with --prune.
    for (name, (_, revision)) in &live {
        if !desired.services.contains_key(*name) && request.prune {
            guards.push(guard(Service::TABLE, name, *revision));
            ops.push(store::delete::<Service>(name));
        }
    }
    delete_missing::<NetworkSpec>(
        &mut ops,
        &desired.networks,
        &current.spec.networks,
        request.prune,
        |n| n.external,
    );
    delete_missing::<VolumeSpec>(&mut ops, &desired.volumes, &current.spec.volumes, request.prune, |v| {
        v.external
    });
    // Secrets and configs the stack no longer has (rotated away, or dropped) are not deleted here: tasks that
    // still run may need them again (a restart before the rollout reaches them, a rollback). The leader removes
    // them once nothing uses them (`secrets::orphans`).
    let changed = !ops.is_empty() || current.stack.is_none();
    if !changed {
        return Ok(ApplyWrite {
            request: None,
            revision: stack_revision,
            plan,
            services: versions,
        });
    }
    let revision = stack_revision.max(last_revision) + 1;
    let mut recorded = desired.clone();
    for spec in recorded.services.values_mut() {
        spec.labels
            .entry(STACK_NAMESPACE_LABEL.to_string())
            .or_insert_with(|| desired.name.clone());
    }
    if !request.prune {
        // Services left out of the file but not pruned still belong to the stack.
        for (name, (service, _)) in &live {
            if !recorded.services.contains_key(*name) {
                recorded.services.insert(name.to_string(), service.spec.clone());
            }
        }
    }
    let stack = Stack {
        name: desired.name.clone(),
        revision,
        spec: recorded.clone(),
        created_at: current.stack.as_ref().map_or(now, |(s, _)| s.created_at),
        updated_at: now,
    };
    let s = &plan.summary;
    let history = StackRevision {
        stack: desired.name.clone(),
        revision,
        source: request.source.clone(),
        applied_by: applied_by.to_string(),
        applied_at: now,
        summary: format!(
            "{} to create, {} to update, {} to rotate, {} to remove",
            s.create, s.update, s.rotate, s.remove
        ),
        spec: recorded,
    };
    ops.push(store::put(&stack));
    ops.push(store::put(&history));
    Ok(ApplyWrite {
        request: Some(Request { guards, ops }),
        revision,
        plan,
        services: versions,
    })
}

/// Why [`apply_live`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyLiveError {
    /// Refused as it stands (stale plan, a name clash): nothing was written.
    #[error(transparent)]
    Refused(#[from] ApplyError),
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error("stack {0} kept changing while it was applied; run the command again")]
    Contended(String),
}

/// Applies `request` to the live cluster: reads the stack's current state, makes the write ([`apply_write`]) and
/// commits it, reading again when a concurrent apply of the same stack won the guard (up to three times). The
/// path of both `POST /v1/stacks/{name}/apply` and the GitOps sync. `leader_only`: commit with
/// [`Manager::write_as_leader`] (a controller's decision is dropped once this manager no longer leads) instead
/// of through whichever manager leads.
pub async fn apply_live(
    m: &Manager,
    request: &ApplyRequest,
    applied_by: &str,
    now: u64,
    leader_only: bool,
) -> Result<ApplyResponse, ApplyLiveError> {
    let name = &request.spec.name;
    // The contents sent beside the spec, each checked against its digest.
    let desired = crate::secrets::with_payloads(&request.spec, &request.secret_data)
        .map_err(|e| ApplyLiveError::Refused(ApplyError::Invalid(e)))?;
    for _ in 0..3 {
        let current = current(&m.sm, name);
        let others = Others::read(&m.sm, &current);
        let last = last_revision(&m.sm, name);
        let write = apply_write(
            &desired,
            &current,
            last,
            &others,
            request,
            applied_by,
            now,
            &mut crate::ca::new_id,
        )?;
        let Some(mut entry) = write.request else {
            return Ok(ApplyResponse {
                revision: write.revision,
                changed: false,
                plan: write.plan,
                services: write.services,
            });
        };
        // New secrets enter the log sealed, in this same entry.
        let sealed = crate::secrets::apply_ops(&m.sm, &m.keyring, &desired, &entry.ops, now)
            .map_err(|e| ApplyLiveError::Refused(ApplyError::Invalid(e)))?;
        entry.ops.extend(sealed);
        let response = if leader_only {
            m.write_as_leader(entry).await?
        } else {
            m.write(entry).await?
        };
        if let store::Response::GuardFailed { .. } = response {
            continue;
        }
        return Ok(ApplyResponse {
            revision: write.revision,
            changed: true,
            plan: write.plan,
            services: write.services,
        });
    }
    Err(ApplyLiveError::Contended(name.clone()))
}

/// Objects outside the stack that an apply must not clash with.
#[derive(Default)]
pub struct Others {
    /// Services of other stacks (or none) by name, with their revision.
    pub services: BTreeMap<String, u64>,
    pub secrets: BTreeMap<String, ()>,
    /// Configs in the store (for `external: true` references).
    pub configs: BTreeMap<String, ()>,
}

impl Others {
    pub fn read(sm: &StateMachineStore, current: &Current) -> Others {
        let mine: BTreeSet<&str> = current.services.iter().map(|(s, _)| s.name()).collect();
        Others {
            services: store::list::<Service>(sm)
                .into_iter()
                .filter(|(s, _)| !mine.contains(s.name()))
                .map(|(s, r)| (s.spec.name, r))
                .collect(),
            secrets: store::list::<SecretSpec>(sm)
                .into_iter()
                .map(|(s, _)| (s.name, ()))
                .collect(),
            configs: store::list::<ConfigSpec>(sm)
                .into_iter()
                .map(|(c, _)| (c.name, ()))
                .collect(),
        }
    }
}

/// The highest revision in a stack's history (0 when it has none).
pub fn last_revision(sm: &StateMachineStore, stack: &str) -> u64 {
    let prefix = format!("{stack}/");
    sm.list(StackRevision::TABLE)
        .into_iter()
        .filter(|(k, _, _)| k.starts_with(&prefix))
        .filter_map(|(k, _, _)| k[prefix.len()..].parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

/// A stack's history, oldest first.
pub fn history(sm: &StateMachineStore, stack: &str) -> Vec<StackRevision> {
    store::list::<StackRevision>(sm)
        .into_iter()
        .map(|(r, _)| r)
        .filter(|r| r.stack == stack)
        .collect()
}

fn put_objects<T: Object + PartialEq>(
    ops: &mut Vec<Op>,
    desired: &BTreeMap<String, T>,
    current: &BTreeMap<String, T>,
    external: impl Fn(&T) -> bool,
) {
    for (name, object) in desired {
        if !external(object) && current.get(name) != Some(object) {
            ops.push(store::put(object));
        }
    }
}

fn delete_missing<T: Object>(
    ops: &mut Vec<Op>,
    desired: &BTreeMap<String, T>,
    current: &BTreeMap<String, T>,
    delete: bool,
    external: impl Fn(&T) -> bool,
) {
    if !delete {
        return;
    }
    for (name, object) in current {
        if !desired.contains_key(name) && !external(object) {
            ops.push(store::delete::<T>(name));
        }
    }
}

fn guard(table: &str, key: &str, revision: u64) -> Guard {
    Guard::Revision {
        table: table.to_string(),
        key: key.to_string(),
        revision,
    }
}

/// The ops that remove a whole stack: its services (their tasks follow), networks, volumes, secrets, configs and
/// the stack record; the history stays.
pub fn remove_ops(current: &Current) -> Vec<Op> {
    let mut ops: Vec<Op> = current
        .services
        .iter()
        .map(|(s, _)| store::delete::<Service>(s.name()))
        .collect();
    let spec = &current.spec;
    ops.extend(
        spec.networks
            .values()
            .filter(|n| !n.external)
            .map(|n| store::delete::<NetworkSpec>(&n.name)),
    );
    ops.extend(
        spec.volumes
            .values()
            .filter(|v| !v.external)
            .map(|v| store::delete::<VolumeSpec>(&v.name)),
    );
    for s in spec.secrets.values().filter(|s| s.source != ContentSource::External) {
        ops.push(store::delete::<SecretSpec>(&s.name));
        ops.push(store::delete::<crate::secrets::SealedSecret>(&s.name));
    }
    for c in spec.configs.values().filter(|c| c.source != ContentSource::External) {
        ops.push(store::delete::<ConfigSpec>(&c.name));
        ops.push(store::delete::<crate::secrets::ConfigMeta>(&c.name));
    }
    if current.stack.is_some() {
        ops.push(store::delete::<Stack>(&spec.name));
    }
    ops
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use swarm_specs::spec::Driver;
    use swarm_specs::spec::EndpointMode;
    use swarm_specs::spec::TaskSpec;
    use swarm_specs::spec::UpdateConfig;

    use super::*;

    fn service(name: &str, replicas: u64) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            labels: BTreeMap::new(),
            mode: ServiceMode::Replicated { replicas },
            task: TaskSpec::with_command(Driver::Process, None, vec!["sleep".into(), "1".into()]),
            endpoint_mode: EndpointMode::Vip,
            ports: Vec::new(),
            update_config: UpdateConfig::default(),
            rollback_config: UpdateConfig::default(),
        }
    }

    fn stack(services: &[ServiceSpec]) -> StackSpec {
        StackSpec {
            name: "shop".into(),
            services: services.iter().map(|s| (s.name.clone(), s.clone())).collect(),
            ..StackSpec::default()
        }
    }

    fn request(spec: &StackSpec) -> ApplyRequest {
        ApplyRequest {
            spec: spec.clone(),
            expected_revision: None,
            prune: false,
            source: "test".into(),
            secret_data: Default::default(),
        }
    }

    /// The state after `write` was applied: the stack record and its services.
    fn applied(write: &ApplyWrite) -> Current {
        let mut stack = None;
        let mut services = Vec::new();
        for op in &write.request.as_ref().unwrap().ops {
            if let Op::Put { table, value, .. } = op {
                if table == Stack::TABLE {
                    stack = Some((value.decode::<Stack>().unwrap(), 7));
                } else if table == Service::TABLE {
                    services.push((value.decode::<Service>().unwrap(), 7));
                }
            }
        }
        let (s, _) = stack.clone().unwrap();
        let mut spec = s.spec.clone();
        spec.services = services
            .iter()
            .map(|(s, _)| (s.name().to_string(), s.spec.clone()))
            .collect();
        Current { stack, services, spec }
    }

    fn empty() -> Current {
        Current {
            stack: None,
            services: Vec::new(),
            spec: StackSpec {
                name: "shop".into(),
                ..StackSpec::default()
            },
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("id{n}")
        }
    }

    #[test]
    fn a_first_apply_writes_every_service_with_the_stack_label_and_revision_one() {
        let desired = stack(&[service("shop_web", 2), service("shop_api", 1)]);
        let write = apply_write(
            &desired,
            &empty(),
            0,
            &Others::default(),
            &request(&desired),
            "me",
            5,
            &mut ids(),
        )
        .unwrap();
        assert_eq!(write.revision, 1);
        let written = write.request.as_ref().unwrap();
        assert!(written
            .guards
            .iter()
            .all(|g| matches!(g, Guard::Revision { revision: 0, .. })));
        let state = applied(&write);
        assert_eq!(state.services.len(), 2);
        for (s, _) in &state.services {
            assert_eq!(s.stack(), Some("shop"));
        }
        // Applying the same file again writes nothing.
        let again = apply_write(
            &desired,
            &state,
            1,
            &Others::default(),
            &request(&desired),
            "me",
            6,
            &mut ids(),
        )
        .unwrap();
        assert!(again.request.is_none());
        assert_eq!(again.revision, 1);
    }

    #[test]
    fn a_plan_made_at_an_older_revision_is_refused() {
        let v1 = stack(&[service("shop_web", 2)]);
        let write = apply_write(&v1, &empty(), 0, &Others::default(), &request(&v1), "me", 5, &mut ids()).unwrap();
        let state = applied(&write);
        let v2 = stack(&[service("shop_web", 3)]);
        let mut stale = request(&v2);
        stale.expected_revision = Some(0);
        let err = apply_write(&v2, &state, 1, &Others::default(), &stale, "me", 6, &mut ids())
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "plan is stale: stack shop changed at revision 1 after the plan was made at revision 0; run `swarm plan` again"
        );
        stale.expected_revision = Some(1);
        let ok = apply_write(&v2, &state, 1, &Others::default(), &stale, "me", 6, &mut ids()).unwrap();
        assert_eq!(ok.revision, 2);
    }

    #[test]
    fn services_left_out_stay_unless_pruned_and_a_name_of_another_stack_is_refused() {
        let v1 = stack(&[service("shop_web", 1), service("shop_old", 1)]);
        let state =
            applied(&apply_write(&v1, &empty(), 0, &Others::default(), &request(&v1), "me", 5, &mut ids()).unwrap());
        let v2 = stack(&[service("shop_web", 1)]);
        let kept = apply_write(&v2, &state, 1, &Others::default(), &request(&v2), "me", 6, &mut ids()).unwrap();
        assert!(kept.request.is_none(), "nothing to do without --prune");
        let mut prune = request(&v2);
        prune.prune = true;
        let pruned = apply_write(&v2, &state, 1, &Others::default(), &prune, "me", 6, &mut ids()).unwrap();
        let ops = &pruned.request.unwrap().ops;
        assert!(ops.contains(&store::delete::<Service>("shop_old")));
        let others = Others {
            services: BTreeMap::from([("shop_new".to_string(), 3)]),
            secrets: BTreeMap::new(),
            configs: BTreeMap::new(),
        };
        let v3 = stack(&[service("shop_web", 1), service("shop_new", 1)]);
        let err = apply_write(&v3, &state, 1, &others, &request(&v3), "me", 7, &mut ids())
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("service shop_new exists outside stack shop"),
            "{err}"
        );
    }
}
