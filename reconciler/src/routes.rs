//! Operator routes for services and stacks (served by every manager, run on the leader; see [`crate::api`]).

use std::sync::Arc;

use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::routing::post;
use axum::Extension;
use axum::Json;
use axum::Router;
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde::Serialize;
use swarm_specs::spec::ConfigSpec;
use swarm_specs::spec::SecretSpec;
use swarm_specs::spec::ServiceMode;
use swarm_specs::spec::ServiceSpec;
use swarm_specs::task::Task;

use crate::api::operator;
use crate::api::ApiResult;
use crate::api::Local;
use crate::api::LogQuery;
use crate::api::Peer;
use crate::cluster::now_millis;
use crate::cluster::Node;
use crate::daemon::Daemon;
use crate::daemon::DaemonError;
use crate::manager::Manager;
use crate::objects::Service;
use crate::objects::Stack;
use crate::objects::StackRevision;
use crate::orchestrator::Progress;
use crate::stacks;
use crate::store;
use crate::store::Guard;
use crate::store::Object;
use crate::store::Request;
use crate::store::Response as WriteResponse;
use crate::tls::PeerIdentity;
use crate::wire::Empty;

/// A service with how far it got, as `service ls` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub service: Service,
    pub progress: Progress,
}

/// `POST /v1/services/{name}/update`: the whole new spec, and the version it was made from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceUpdate {
    pub spec: ServiceSpec,
    /// The service version the caller read; the update is refused when the service moved since.
    pub version: u64,
    /// Replace the tasks even if the task template did not change.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackSummary {
    pub name: String,
    pub revision: u64,
    pub services: usize,
    pub updated_at: u64,
}

pub fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/v1/services", get(list_services).post(create_service))
        .route("/v1/services/{name}", get(inspect_service).delete(remove_service))
        .route("/v1/services/{name}/update", post(update_service))
        .route("/v1/services/{name}/rollback", post(rollback_service))
        .route("/v1/services/{name}/logs", get(service_logs))
        .route("/v1/stacks", get(list_stacks))
        .route("/v1/stacks/{name}", get(inspect_stack).delete(remove_stack))
        .route("/v1/stacks/{name}/history", get(stack_history))
        .route("/v1/stacks/{name}/plan", post(plan_stack))
        .route("/v1/stacks/{name}/apply", post(apply_stack))
        .route("/v1/stacks/{name}/rollback", post(rollback_stack))
}

fn services_with_revisions(m: &Manager) -> Vec<(Service, u64)> {
    store::list::<Service>(&m.sm)
}

/// A service by exact name, or by a unique prefix of its id.
fn resolve(m: &Manager, wanted: &str) -> Result<(Service, u64), DaemonError> {
    let all = services_with_revisions(m);
    if let Some(found) = all.iter().find(|(s, _)| s.name() == wanted || s.id == wanted) {
        return Ok(found.clone());
    }
    let matches: Vec<&(Service, u64)> = all.iter().filter(|(s, _)| s.id.starts_with(wanted)).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(DaemonError::NotFound(format!("service {wanted} not found"))),
        _ => Err(DaemonError::Refused(format!(
            "service id {wanted:?} is ambiguous; give more characters"
        ))),
    }
}

fn progress_of(m: &Manager, services: &[Service]) -> Vec<Progress> {
    let tasks: Vec<Task> = store::list::<Task>(&m.sm).into_iter().map(|(t, _)| t).collect();
    let nodes: Vec<Node> = m.nodes();
    services
        .iter()
        .map(|s| {
            let mine: Vec<&Task> = tasks.iter().filter(|t| t.service == s.spec.name).collect();
            crate::orchestrator::progress(s, &mine, &nodes)
        })
        .collect()
}

async fn list_services(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
) -> ApiResult<Vec<ServiceInfo>> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let services: Vec<Service> = services_with_revisions(&m).into_iter().map(|(s, _)| s).collect();
    let progress = progress_of(&m, &services);
    Ok(Json(
        services
            .into_iter()
            .zip(progress)
            .map(|(service, progress)| ServiceInfo { service, progress })
            .collect(),
    ))
}

async fn inspect_service(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
) -> ApiResult<ServiceInfo> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let (service, _) = resolve(&m, &name)?;
    let progress = progress_of(&m, std::slice::from_ref(&service))[0];
    Ok(Json(ServiceInfo { service, progress }))
}

fn check_spec(spec: &ServiceSpec) -> Result<(), DaemonError> {
    if spec.name.is_empty()
        || !spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(DaemonError::Refused(format!(
            "invalid service name {:?}: use letters, digits, '-', '_' and '.'",
            spec.name
        )));
    }
    if spec.name.starts_with(swarm_specs::task::MANUAL_SERVICE_PREFIX) {
        return Err(DaemonError::Refused(format!(
            "invalid service name {:?}: names starting with {:?} are reserved for `swarm debug run`",
            spec.name,
            swarm_specs::task::MANUAL_SERVICE_PREFIX
        )));
    }
    if spec.task.driver == swarm_specs::spec::Driver::Docker && spec.task.image.is_none() {
        return Err(DaemonError::Refused(format!(
            "service {}: the docker driver needs an image",
            spec.name
        )));
    }
    Ok(())
}

/// Guards that every secret and config the service uses exists, and still does when the write applies (so a
/// concurrent `secret rm` cannot slip in between).
fn file_ref_guards(m: &Manager, spec: &ServiceSpec) -> Result<Vec<Guard>, DaemonError> {
    let secrets = spec.task.secrets.iter().map(|r| {
        let revision = store::get::<SecretSpec>(&m.sm, &r.source).map(|(_, rev)| rev);
        ("secret", SecretSpec::TABLE, &r.source, revision)
    });
    let configs = spec.task.configs.iter().map(|r| {
        let revision = store::get::<ConfigSpec>(&m.sm, &r.source).map(|(_, rev)| rev);
        ("config", ConfigSpec::TABLE, &r.source, revision)
    });
    secrets
        .chain(configs)
        .map(|(kind, table, name, revision)| match revision {
            Some(revision) => Ok(guard(table, name, revision)),
            None => Err(DaemonError::Refused(format!(
                "service {}: {kind} {name} does not exist; create it first (`swarm {kind} create {name} FILE`)",
                spec.name
            ))),
        })
        .collect()
}

async fn create_service(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Json(spec): Json<ServiceSpec>,
) -> ApiResult<Service> {
    operator(&peer, &local)?;
    check_spec(&spec)?;
    let m = d.require_manager()?;
    let mut guards = vec![guard(Service::TABLE, &spec.name, 0)];
    guards.extend(file_ref_guards(&m, &spec)?);
    let service = Service::new(crate::ca::new_id(), spec, now_millis());
    let request = Request {
        guards,
        ops: vec![store::put(&service)],
    };
    match m.write(request).await? {
        WriteResponse::GuardFailed { index: 0, .. } => Err(DaemonError::Refused(format!(
            "service {} already exists; use `swarm service update`",
            service.name()
        ))),
        WriteResponse::GuardFailed { .. } => Err(DaemonError::Refused(format!(
            "service {}: a secret or config it uses changed while it was being created; run the command again",
            service.name()
        ))),
        _ => Ok(Json(service)),
    }
}

async fn update_service(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
    Json(update): Json<ServiceUpdate>,
) -> ApiResult<Service> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let (service, revision) = resolve(&m, &name)?;
    if update.spec.name != service.spec.name {
        return Err(DaemonError::Refused("a service cannot be renamed".into()));
    }
    check_spec(&update.spec)?;
    if update.version != service.version {
        return Err(DaemonError::Refused(format!(
            "service {} changed (version {} is now {}) since it was read; run the command again",
            service.name(),
            update.version,
            service.version
        )));
    }
    let mut guards = vec![guard(Service::TABLE, service.name(), revision)];
    guards.extend(file_ref_guards(&m, &update.spec)?);
    let Some(updated) = service.updated(update.spec, update.force, now_millis()) else {
        return Ok(Json(service));
    };
    let request = Request {
        guards,
        ops: vec![store::put(&updated)],
    };
    match m.write(request).await? {
        WriteResponse::GuardFailed { .. } => Err(DaemonError::Refused(format!(
            "service {} changed while it was being updated; run the command again",
            service.name()
        ))),
        _ => Ok(Json(updated)),
    }
}

/// `POST /v1/services/{name}/rollback`: back to the previous spec, following `rollback_config`
/// (`docker service rollback`).
async fn rollback_service(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
) -> ApiResult<Service> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let (service, revision) = resolve(&m, &name)?;
    let Some(rolled_back) = service.rolled_back("manually requested rollback", now_millis()) else {
        return Err(DaemonError::Refused(format!(
            "service {} has no previous spec to roll back to (it was never updated)",
            service.name()
        )));
    };
    let request = Request {
        guards: vec![guard(Service::TABLE, service.name(), revision)],
        ops: vec![store::put(&rolled_back)],
    };
    match m.write(request).await? {
        WriteResponse::GuardFailed { .. } => Err(DaemonError::Refused(format!(
            "service {} changed while it was being rolled back; run the command again",
            service.name()
        ))),
        _ => Ok(Json(rolled_back)),
    }
}

async fn remove_service(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
) -> ApiResult<Empty> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let (service, revision) = resolve(&m, &name)?;
    let request = Request {
        guards: vec![guard(Service::TABLE, service.name(), revision)],
        ops: vec![store::delete::<Service>(service.name())],
    };
    m.write(request).await?;
    Ok(Json(Empty {}))
}

/// Every task's output of the service, each line tagged with its task (`web.1`) and node, merged as they come.
async fn service_logs(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    if let Err(e) = operator(&peer, &local) {
        return e.into_response();
    }
    let result = async {
        let m = d.require_manager()?;
        let (service, _) = resolve(&m, &name)?;
        let dispatcher = d
            .dispatcher()
            .ok_or_else(|| DaemonError::Refused("this manager is not the leader".into()))?;
        let nodes = m.nodes();
        let tasks: Vec<Task> = store::list::<Task>(&m.sm)
            .into_iter()
            .map(|(t, _)| t)
            .filter(|t| t.service == service.spec.name && t.node_id.is_some())
            .filter(|t| t.status.state >= swarm_specs::task::TaskState::Starting)
            .collect();
        let mut streams = Vec::new();
        for task in tasks {
            // A task on a node that is away has no logs to give now; the others still do.
            let Ok(rx) = dispatcher.request_logs(&task, q.follow, q.tail, q.timestamps).await else {
                continue;
            };
            let label = match task.slot {
                Some(slot) => format!("{}.{slot}.{}", task.service, short(&task.id)),
                None => format!("{}.{}", task.service, short(&task.id)),
            };
            let host = task
                .node_id
                .as_deref()
                .and_then(|id| nodes.iter().find(|n| n.id == id))
                .map(|n| n.description.hostname.clone())
                .unwrap_or_default();
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(move |chunk| chunk.map(|bytes| tag_lines(&bytes, &label, &host)));
            streams.push(stream);
        }
        Ok::<_, DaemonError>(futures_util::stream::select_all(streams))
    }
    .await;
    match result {
        Ok(stream) => {
            let body = axum::body::Body::from_stream(stream);
            (StatusCode::OK, [("content-type", "application/x-ndjson")], body).into_response()
        }
        Err(e) => e.into_response(),
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Adds `task` and `node` to each NDJSON line of a chunk.
fn tag_lines(bytes: &[u8], task: &str, node: &str) -> axum::body::Bytes {
    let mut out = Vec::with_capacity(bytes.len() + 64);
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(mut map)) => {
                map.insert("task".into(), task.into());
                map.insert("node".into(), node.into());
                out.extend_from_slice(&serde_json::to_vec(&map).unwrap_or_default());
            }
            _ => out.extend_from_slice(line),
        }
        out.push(b'\n');
    }
    out.into()
}

async fn list_stacks(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
) -> ApiResult<Vec<StackSummary>> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let services = services_with_revisions(&m);
    Ok(Json(
        store::list::<Stack>(&m.sm)
            .into_iter()
            .map(|(s, _)| StackSummary {
                services: services.iter().filter(|(x, _)| x.stack() == Some(&s.name)).count(),
                name: s.name,
                revision: s.revision,
                updated_at: s.updated_at,
            })
            .collect(),
    ))
}

async fn inspect_stack(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
) -> ApiResult<Stack> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    store::get::<Stack>(&m.sm, &name)
        .map(|(s, _)| Json(s))
        .ok_or_else(|| DaemonError::NotFound(format!("stack {name} not found")))
}

async fn stack_history(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
) -> ApiResult<Vec<StackRevision>> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let history = stacks::history(&m.sm, &name);
    if history.is_empty() {
        return Err(DaemonError::NotFound(format!("stack {name} has no history")));
    }
    Ok(Json(history))
}

async fn plan_stack(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
    Json(req): Json<stacks::PlanRequest>,
) -> ApiResult<stacks::LivePlan> {
    operator(&peer, &local)?;
    check_stack_name(&name, &req.spec.name)?;
    let m = d.require_manager()?;
    Ok(Json(stacks::plan_live(&m.sm, &req.spec)))
}

fn check_stack_name(path: &str, spec: &str) -> Result<(), DaemonError> {
    if path != spec {
        return Err(DaemonError::Refused(format!(
            "the request is for stack {path} but the spec is stack {spec}"
        )));
    }
    Ok(())
}

async fn apply_stack(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
    Json(req): Json<stacks::ApplyRequest>,
) -> ApiResult<stacks::ApplyResponse> {
    operator(&peer, &local)?;
    check_stack_name(&name, &req.spec.name)?;
    for spec in req.spec.services.values() {
        check_spec(spec)?;
    }
    let m = d.require_manager()?;
    Ok(Json(apply_request(&m, &req, &caller(&m, &peer, &local)).await?))
}

/// Who called, for the stack history: the operator's node, or this node's local socket.
fn caller(m: &Manager, peer: &Option<PeerIdentity>, local: &Local) -> String {
    match (local, peer) {
        (Some(_), _) => format!("{} (local socket)", m.node_id),
        (None, Some(p)) => p.node_id.clone(),
        (None, None) => "unknown".to_string(),
    }
}

/// Applies a stack spec as one guarded write (what `swarm apply`, `stack rollback` and a git source do).
pub(crate) async fn apply_request(
    m: &Manager,
    req: &stacks::ApplyRequest,
    by: &str,
) -> Result<stacks::ApplyResponse, DaemonError> {
    // Concurrent applies of one stack: the guard on the stack record lets one win; the other reads again
    // (stacks::apply_live, shared with the GitOps sync).
    match stacks::apply_live(m, req, by, now_millis(), false).await {
        Ok(response) => Ok(response),
        Err(stacks::ApplyLiveError::Manager(e)) => Err(DaemonError::Manager(e)),
        Err(e) => Err(DaemonError::Refused(e.to_string())),
    }
}

/// `POST /v1/stacks/{name}/rollback`: which revision to go back to (default: the one before the current).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StackRollback {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
}

/// Applies an earlier revision's spec as a new revision (history stays append-only, as `nomad job revert` does),
/// pruning what that revision did not have.
async fn rollback_stack(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
    Json(req): Json<StackRollback>,
) -> ApiResult<stacks::ApplyResponse> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let history = stacks::history(&m.sm, &name);
    let Some(latest) = history.last() else {
        return Err(DaemonError::NotFound(format!("stack {name} has no history")));
    };
    let target = match req.to {
        Some(to) => to,
        None if latest.revision > 1 => latest.revision - 1,
        None => {
            return Err(DaemonError::Refused(format!(
                "stack {name} has only revision 1: there is nothing to roll back to"
            )))
        }
    };
    let Some(revision) = history.iter().find(|r| r.revision == target) else {
        let known: Vec<String> = history.iter().map(|r| r.revision.to_string()).collect();
        return Err(DaemonError::NotFound(format!(
            "stack {name} has no revision {target} (it has {}); see `swarm stack history {name}`",
            known.join(", ")
        )));
    };
    let apply = stacks::ApplyRequest {
        spec: revision.spec.clone(),
        expected_revision: None,
        prune: true,
        source: format!("rollback to revision {target} ({})", revision.source),
        secret_data: Default::default(),
    };
    Ok(Json(apply_request(&m, &apply, &caller(&m, &peer, &local)).await?))
}

async fn remove_stack(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
) -> ApiResult<Vec<String>> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let current = stacks::current(&m.sm, &name);
    if current.stack.is_none() && current.services.is_empty() {
        return Err(DaemonError::NotFound(format!("nothing found in stack: {name}")));
    }
    let removed: Vec<String> = current.services.iter().map(|(s, _)| s.name().to_string()).collect();
    let ops = stacks::remove_ops(&current);
    m.write(Request { guards: vec![], ops }).await?;
    Ok(Json(removed))
}

fn guard(table: &str, key: &str, revision: u64) -> Guard {
    Guard::Revision {
        table: table.to_string(),
        key: key.to_string(),
        revision,
    }
}

/// Replicas of a replicated service, if it is one.
pub fn replicas(spec: &ServiceSpec) -> Option<u64> {
    match spec.mode {
        ServiceMode::Replicated { replicas } => Some(replicas),
        _ => None,
    }
}
