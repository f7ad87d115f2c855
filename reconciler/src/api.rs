//! HTTP routes: the manager API over mutual TLS (Raft, joins, heartbeats, cluster commands) and the local API on
//! the daemon's unix socket (init, join, leave, info, and the same cluster commands).

use std::sync::Arc;

use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::delete;
use axum::routing::get;
use axum::routing::post;
use axum::Extension;
use axum::Json;
use axum::Router;
use serde::Deserialize;

use crate::ca::Role;
use crate::daemon::Daemon;
use crate::daemon::DaemonError;
use crate::manager::ManagerError;
use crate::raftnet;
use crate::store::typ;
use crate::store::Request;
use crate::tls::LocalClient;
use crate::tls::PeerIdentity;
use crate::wire::*;
use futures_util::StreamExt as _;
use swarm_specs::task::Task;

pub(crate) type Peer = Extension<Option<PeerIdentity>>;
pub(crate) type Local = Option<Extension<LocalClient>>;

impl IntoResponse for DaemonError {
    fn into_response(self) -> Response {
        let status = match &self {
            DaemonError::Refused(_) => StatusCode::BAD_REQUEST,
            DaemonError::NotFound(_) => StatusCode::NOT_FOUND,
            DaemonError::Manager(ManagerError::NoQuorum { .. } | ManagerError::NotCommitted { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            DaemonError::Manager(_) => StatusCode::SERVICE_UNAVAILABLE,
            DaemonError::Remote(_) => StatusCode::BAD_GATEWAY,
            DaemonError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(ApiError {
                message: self.to_string(),
            }),
        )
            .into_response()
    }
}

fn forbidden(message: &str) -> DaemonError {
    DaemonError::Refused(message.to_string())
}

/// The caller must present a certificate of this cluster (any role).
fn node(peer: &Option<PeerIdentity>) -> Result<&PeerIdentity, DaemonError> {
    peer.as_ref()
        .ok_or_else(|| forbidden("this endpoint needs a node certificate of this swarm"))
}

/// The caller must be a manager (by certificate).
fn manager_peer(peer: &Option<PeerIdentity>) -> Result<&PeerIdentity, DaemonError> {
    match peer {
        Some(p) if p.role == Role::Manager => Ok(p),
        Some(_) => Err(forbidden(
            "this endpoint is for managers; a worker certificate was presented",
        )),
        None => Err(forbidden("this endpoint needs a manager certificate of this swarm")),
    }
}

/// Cluster commands: from the local socket, or remotely with a manager certificate.
pub(crate) fn operator(peer: &Option<PeerIdentity>, local: &Local) -> Result<(), DaemonError> {
    if local.is_some() {
        return Ok(());
    }
    manager_peer(peer).map(|_| ())
}

/// Routes served over TLS by every manager.
pub fn cluster_router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/raft/append", post(raft_append))
        .route("/raft/vote", post(raft_vote))
        .route("/raft/snapshot", post(raft_snapshot))
        .route("/v1/ping", get(|| async { "ok" }))
        .route("/v1/ca", get(ca))
        .route("/v1/join", post(admit))
        .route("/v1/managers/attach", post(attach))
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/internal/heartbeat", post(forwarded_heartbeat))
        .route("/v1/internal/write", post(internal_write))
        .route("/v1/internal/membership", get(internal_membership))
        .route("/v1/certs/renew", post(renew))
        .route("/v1/leave", post(node_left))
        .route("/v1/dispatcher/session", get(dispatcher_session))
        .route("/v1/dispatcher/status", post(dispatcher_status))
        .route("/v1/dispatcher/logs/{request}", post(dispatcher_logs))
        .merge(crate::secrets::routes::cluster_routes())
        .merge(operator_routes(daemon.clone()))
        .with_state(daemon)
}

/// Routes served on the daemon's unix socket.
pub fn local_router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/ping", get(|| async { "ok" }))
        .route("/v1/info", get(info))
        .route("/v1/init", post(init))
        .route("/v1/join-cluster", post(join))
        .route("/v1/leave-cluster", post(leave))
        .merge(crate::secrets::routes::local_routes())
        .merge(operator_routes(daemon.clone()))
        .with_state(daemon)
}

/// Cluster commands run on the leader, which holds the freshest state and applies guarded writes without
/// conflicts: a follower passes the request on, once (a forwarded request is never forwarded again).
async fn on_leader(
    State(d): State<Arc<Daemon>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    const FORWARDED: &str = "x-swarm-forwarded";
    // Only an operator's request is passed on: it reaches the leader with this manager's certificate, which the
    // leader trusts as an operator. Anyone else's is answered here (refused, or a webhook checked by its secret).
    let from_operator = request.extensions().get::<LocalClient>().is_some()
        || request
            .extensions()
            .get::<Option<PeerIdentity>>()
            .is_some_and(|p| p.as_ref().is_some_and(|p| p.role == Role::Manager));
    let leader = d
        .manager()
        .filter(|_| from_operator)
        .filter(|m| !m.is_leader() && !request.headers().contains_key(FORWARDED))
        .and_then(|m| m.leader().map(|(_, peer)| (m, peer)));
    let Some((m, leader)) = leader else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let body = match axum::body::to_bytes(request.into_body(), 16 << 20).await {
        Ok(b) => b,
        Err(e) => return DaemonError::Refused(format!("cannot read the request: {e}")).into_response(),
    };
    let url = format!("https://{}{path}", leader.addr);
    let forwarded = m
        .client
        .get()
        .request(method, &url)
        .header(FORWARDED, "1")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    match forwarded {
        Ok(r) => {
            // Streamed through, so that followed logs flow as they come.
            let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let body = axum::body::Body::from_stream(r.bytes_stream());
            (status, [("content-type", "application/json")], body).into_response()
        }
        Err(e) => DaemonError::Remote(format!("cannot reach the leader at {}: {e}", leader.addr)).into_response(),
    }
}

fn operator_routes(daemon: Arc<Daemon>) -> Router<Arc<Daemon>> {
    Router::new()
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{id}", get(inspect_node))
        .route("/v1/nodes/{id}", delete(remove_node))
        .route("/v1/nodes/{id}/update", post(update_node))
        .route("/v1/nodes/{id}/promote", post(promote))
        .route("/v1/nodes/{id}/demote", post(demote))
        .route("/v1/join-token/{role}", get(join_token))
        .route("/v1/cluster/update", post(update_settings))
        .route("/v1/tasks", get(list_tasks).post(put_tasks))
        .route("/v1/tasks/{id}/logs", get(task_logs))
        .merge(crate::routes::routes())
        .merge(crate::gitops::routes::routes())
        .merge(crate::secrets::routes::routes())
        .route_layer(axum::middleware::from_fn_with_state(daemon, on_leader))
}

pub(crate) type ApiResult<T> = Result<Json<T>, DaemonError>;

/// Why an AppendEntries request whose entries do not follow its `prev_log_id` is refused (over HTTPS or a Raft
/// connection alike).
const NOT_CONTIGUOUS: &str = "AppendEntries entries do not follow prev_log_id: refused";

async fn raft_append(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    Json(req): Json<openraft::raft::AppendEntriesRequest<crate::store::TypeConfig>>,
) -> Result<Json<Result<openraft::raft::AppendEntriesResponse<u64>, typ::RaftError>>, DaemonError> {
    manager_peer(&peer)?;
    let m = d.require_manager()?;
    if !crate::store::is_contiguous(&req) {
        return Err(DaemonError::Refused(NOT_CONTIGUOUS.into()));
    }
    Ok(Json(m.raft.append_entries(req).await))
}

/// Serves the Raft connections of [`crate::raftnet`]: reads a request frame, answers it, and so on until the peer
/// closes the connection or the server stops. A client without a manager's certificate gets one refusal frame and
/// the connection closes; the other checks are those of the `/raft/append` and `/raft/vote` routes, and a request
/// they turn down gets a refusal frame saying why.
pub fn raft_streams(daemon: Arc<Daemon>) -> crate::tls::StreamHandler {
    Arc::new(move |stream, peer, stop| Box::pin(serve_raft_stream(daemon.clone(), stream, peer, stop)))
}

async fn serve_raft_stream(
    d: Arc<Daemon>,
    mut stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: Option<PeerIdentity>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if let Err(e) = manager_peer(&peer) {
        // Says why once and closes: only managers get their requests read.
        let _ = raftnet::write_frame(&mut stream, raftnet::REFUSED, e.to_string().as_bytes()).await;
        return;
    }
    loop {
        let frame = tokio::select! {
            frame = raftnet::read_frame(&mut stream) => frame,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let (tag, body) = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e) => return tracing::debug!(error = %e, "a Raft connection failed"),
        };
        let (tag, answer) = match answer_raft(&d, tag, &body).await {
            Ok(answer) => (raftnet::ANSWER, answer),
            Err(refused) => (raftnet::REFUSED, refused.into_bytes()),
        };
        if let Err(e) = raftnet::write_frame(&mut stream, tag, &answer).await {
            return tracing::debug!(error = %e, "a Raft connection failed");
        }
    }
}

/// The JSON answer to one request frame, or why it was not handed to Raft.
async fn answer_raft(d: &Daemon, tag: u8, body: &[u8]) -> Result<Vec<u8>, String> {
    let m = d.require_manager().map_err(|e| e.to_string())?;
    let malformed = |e: serde_json::Error| format!("the request is not valid JSON of its RPC: {e}");
    let answer = match raftnet::Rpc::from_tag(tag) {
        Some(raftnet::Rpc::Append) => {
            let req: openraft::raft::AppendEntriesRequest<crate::store::TypeConfig> =
                serde_json::from_slice(body).map_err(malformed)?;
            if !crate::store::is_contiguous(&req) {
                return Err(NOT_CONTIGUOUS.into());
            }
            serde_json::to_vec(&m.raft.append_entries(req).await)
        }
        Some(raftnet::Rpc::Vote) => {
            let req: openraft::raft::VoteRequest<u64> = serde_json::from_slice(body).map_err(malformed)?;
            serde_json::to_vec(&m.raft.vote(req).await)
        }
        None => return Err(format!("unknown Raft RPC {tag}")),
    };
    answer.map_err(|e| format!("cannot encode the answer: {e}"))
}

async fn raft_vote(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    Json(req): Json<openraft::raft::VoteRequest<u64>>,
) -> Result<Json<Result<openraft::raft::VoteResponse<u64>, typ::RaftError>>, DaemonError> {
    manager_peer(&peer)?;
    let m = d.require_manager()?;
    Ok(Json(m.raft.vote(req).await))
}

async fn raft_snapshot(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    Json(req): Json<openraft::raft::InstallSnapshotRequest<crate::store::TypeConfig>>,
) -> Result<
    Json<Result<openraft::raft::InstallSnapshotResponse<u64>, typ::RaftError<openraft::error::InstallSnapshotError>>>,
    DaemonError,
> {
    manager_peer(&peer)?;
    let m = d.require_manager()?;
    Ok(Json(m.raft.install_snapshot(req).await))
}

async fn ca(State(d): State<Arc<Daemon>>) -> Result<String, DaemonError> {
    let m = d.require_manager()?;
    m.cluster()
        .map(|c| c.ca_cert_pem)
        .ok_or_else(|| DaemonError::Refused("the cluster is not initialized".into()))
}

async fn admit(State(d): State<Arc<Daemon>>, Json(req): Json<AdmissionRequest>) -> ApiResult<Admission> {
    d.admit(req).await.map(Json)
}

async fn attach(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    Json(req): Json<AttachRequest>,
) -> ApiResult<Empty> {
    let caller = manager_peer(&peer)?.clone();
    d.attach(&caller, req).await.map(|_| Json(Empty {}))
}

async fn heartbeat(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    Json(req): Json<HeartbeatRequest>,
) -> ApiResult<HeartbeatResponse> {
    let caller = node(&peer)?.clone();
    d.heartbeat(&caller, req).await.map(Json)
}

async fn forwarded_heartbeat(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    Json(req): Json<ForwardedHeartbeat>,
) -> ApiResult<Empty> {
    manager_peer(&peer)?;
    let m = d.require_manager()?;
    if !m.is_leader() {
        return Err(DaemonError::Manager(ManagerError::Rejected("not the leader".into())));
    }
    let role = m.node(&req.node_id).map(|(n, _)| n.role).unwrap_or(Role::Worker);
    d.heartbeat(
        &PeerIdentity {
            node_id: req.node_id,
            role,
        },
        req.request,
    )
    .await
    .map(|_| Json(Empty {}))
}

async fn internal_write(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    Json(req): Json<Request>,
) -> ApiResult<crate::store::Response> {
    manager_peer(&peer)?;
    let m = d.require_manager()?;
    // The same path as local writes: confirmed with a majority before it is appended.
    Ok(Json(m.write(req).await?))
}

async fn internal_membership(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
) -> ApiResult<crate::wire::AppliedMembership> {
    manager_peer(&peer)?;
    Ok(Json(d.require_manager()?.applied_membership()))
}

async fn renew(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    Json(req): Json<RenewRequest>,
) -> ApiResult<Renewal> {
    let caller = node(&peer)?.clone();
    d.renew(&caller, req).map(Json)
}

async fn node_left(State(d): State<Arc<Daemon>>, Extension(peer): Peer) -> ApiResult<Empty> {
    let caller = node(&peer)?.clone();
    d.node_left(&caller).await.map(|_| Json(Empty {}))
}

async fn info(State(d): State<Arc<Daemon>>) -> Json<Info> {
    Json(d.info())
}

async fn init(State(d): State<Arc<Daemon>>, Json(req): Json<InitRequest>) -> ApiResult<InitResponse> {
    d.init(req).await.map(Json)
}

async fn join(State(d): State<Arc<Daemon>>, Json(req): Json<JoinRequest>) -> ApiResult<JoinResponse> {
    d.join(req).await.map(Json)
}

async fn leave(State(d): State<Arc<Daemon>>, Json(req): Json<LeaveRequest>) -> ApiResult<Empty> {
    d.leave(req.force).await.map(|_| Json(Empty {}))
}

async fn list_nodes(State(d): State<Arc<Daemon>>, Extension(peer): Peer, local: Local) -> ApiResult<NodeList> {
    operator(&peer, &local)?;
    d.list_nodes().map(Json)
}

async fn inspect_node(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(id): Path<String>,
) -> ApiResult<crate::cluster::Node> {
    operator(&peer, &local)?;
    d.inspect_node(&id).map(Json)
}

#[derive(Deserialize)]
struct Force {
    #[serde(default)]
    force: bool,
}

async fn remove_node(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(id): Path<String>,
    Query(q): Query<Force>,
) -> ApiResult<Message> {
    operator(&peer, &local)?;
    d.remove_node(&id, q.force)
        .await
        .map(|message| Json(Message { message }))
}

async fn update_node(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(id): Path<String>,
    Json(req): Json<NodeUpdate>,
) -> ApiResult<crate::cluster::Node> {
    operator(&peer, &local)?;
    d.update_node(&id, req).await.map(Json)
}

async fn promote(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(id): Path<String>,
) -> ApiResult<Message> {
    operator(&peer, &local)?;
    d.promote(&id).await.map(|message| Json(Message { message }))
}

async fn demote(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(id): Path<String>,
) -> ApiResult<Message> {
    operator(&peer, &local)?;
    d.demote(&id).await.map(|message| Json(Message { message }))
}

#[derive(Deserialize)]
struct Rotate {
    #[serde(default)]
    rotate: bool,
}

async fn join_token(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(role): Path<String>,
    Query(q): Query<Rotate>,
) -> ApiResult<Token> {
    operator(&peer, &local)?;
    let role = match role.as_str() {
        "worker" => Role::Worker,
        "manager" => Role::Manager,
        other => {
            return Err(DaemonError::Refused(format!(
                "unknown role {other:?}: use worker or manager"
            )))
        }
    };
    d.join_token(role, q.rotate).await.map(|token| Json(Token { token }))
}

async fn update_settings(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Json(req): Json<SettingsUpdate>,
) -> ApiResult<crate::cluster::Settings> {
    operator(&peer, &local)?;
    d.update_settings(req).await.map(Json)
}

/// The leader's dispatcher, or the answer that sends a node to the leader (with its address in a header).
fn leader_dispatcher(d: &Daemon) -> Result<Arc<crate::dispatcher::Dispatcher>, Box<Response>> {
    let m = d.require_manager().map_err(|e| Box::new(e.into_response()))?;
    if m.is_leader() {
        if let Some(dispatcher) = d.dispatcher() {
            return Ok(dispatcher);
        }
    }
    let leader = m.leader().map(|(_, p)| p.addr).unwrap_or_default();
    let body = Json(ApiError {
        message: format!("not the leader; the leader is {leader:?}"),
    });
    let answer = (
        StatusCode::MISDIRECTED_REQUEST,
        [(crate::node_agent::LEADER_HEADER, leader)],
        body,
    );
    Err(Box::new(answer.into_response()))
}

async fn dispatcher_session(State(d): State<Arc<Daemon>>, Extension(peer): Peer) -> Response {
    let caller = match node(&peer) {
        Ok(c) => c.clone(),
        Err(e) => return e.into_response(),
    };
    let dispatcher = match leader_dispatcher(&d) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let rx = dispatcher.session(&caller.node_id);
    let lines = tokio_stream::wrappers::ReceiverStream::new(rx).map(|m| {
        let mut line = serde_json::to_vec(&m).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::io::Error>(axum::body::Bytes::from(line))
    });
    (
        StatusCode::OK,
        [("content-type", "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

async fn dispatcher_status(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    Json(report): Json<crate::dispatcher::StatusReport>,
) -> Response {
    let caller = match node(&peer) {
        Ok(c) => c.clone(),
        Err(e) => return e.into_response(),
    };
    match leader_dispatcher(&d) {
        // Answered once the reports are in Raft: a report acknowledged and then lost with its leader would leave
        // the task's status behind for good (the agent reports changes, not states).
        Ok(dispatcher) => match dispatcher.report(&caller.node_id, report.updates).await {
            Ok(()) => Json(Empty {}).into_response(),
            Err(e) => DaemonError::Manager(e).into_response(),
        },
        Err(r) => *r,
    }
}

async fn dispatcher_logs(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    Path(request): Path<String>,
    body: axum::body::Body,
) -> Response {
    if let Err(e) = node(&peer) {
        return e.into_response();
    }
    let Some(sink) = d.dispatcher().and_then(|x| x.log_sink(&request)) else {
        return DaemonError::NotFound(format!("no log request {request}")).into_response();
    };
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let item = chunk.map_err(|e| std::io::Error::other(e.to_string()));
        if sink.send(item).await.is_err() {
            break;
        }
    }
    Json(Empty {}).into_response()
}

async fn list_tasks(State(d): State<Arc<Daemon>>, Extension(peer): Peer, local: Local) -> ApiResult<Vec<Task>> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    Ok(Json(
        crate::store::list::<Task>(&m.sm).into_iter().map(|(t, _)| t).collect(),
    ))
}

/// Writes tasks as given (the orchestrator's job; exposed for tests and debugging as `swarm debug put-task`).
async fn put_tasks(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Json(tasks): Json<Vec<Task>>,
) -> ApiResult<Empty> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let ops = tasks.iter().map(crate::store::put).collect();
    m.write(Request { guards: vec![], ops }).await?;
    Ok(Json(Empty {}))
}

/// `?follow=&tail=&timestamps=` of the log routes (a task's, a service's).
#[derive(Deserialize)]
pub(crate) struct LogQuery {
    #[serde(default)]
    pub follow: bool,
    pub tail: Option<usize>,
    #[serde(default)]
    pub timestamps: bool,
}

async fn task_logs(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    if let Err(e) = operator(&peer, &local) {
        return e.into_response();
    }
    let result = async {
        let m = d.require_manager()?;
        let tasks: Vec<Task> = crate::store::list::<Task>(&m.sm).into_iter().map(|(t, _)| t).collect();
        let matches: Vec<&Task> = tasks.iter().filter(|t| t.id.starts_with(&id)).collect();
        let task = match matches.as_slice() {
            [one] => (*one).clone(),
            [] => return Err(DaemonError::NotFound(format!("task {id} not found"))),
            _ => {
                return Err(DaemonError::Refused(format!(
                    "task id {id:?} is ambiguous; give more characters"
                )))
            }
        };
        let dispatcher = d
            .dispatcher()
            .ok_or_else(|| DaemonError::Refused("this manager is not the leader".into()))?;
        Ok(dispatcher.request_logs(&task, q.follow, q.tail, q.timestamps).await?)
    }
    .await;
    match result {
        Ok(rx) => {
            let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
            (StatusCode::OK, [("content-type", "application/x-ndjson")], body).into_response()
        }
        Err(e) => e.into_response(),
    }
}
