//! The routes of GitOps sources: `swarm source add|ls|inspect|rm|sync` (operators: the local socket or a manager
//! certificate, run on the leader), and the webhook `POST /v1/sources/{name}/sync` that a CI system or a git host
//! calls without a client certificate, authenticated by the source's secret alone ([`super::webhook`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::routing::post;
use axum::Extension;
use axum::Json;
use axum::Router;
use serde::Deserialize;

use super::run::SyncError;
use super::webhook;
use super::webhook_path;
use super::SealedCredentials;
use super::Source;
use super::SourceCreate;
use super::SourceCreated;
use super::SourceCredentials;
use super::SourceInfo;
use super::SourceStatus;
use crate::api::operator;
use crate::api::ApiResult;
use crate::api::Local;
use crate::api::Peer;
use crate::cluster::now_millis;
use crate::daemon::Daemon;
use crate::daemon::DaemonError;
use crate::manager::Manager;
use crate::manager::ManagerError;
use crate::store;
use crate::store::Guard;
use crate::store::Object;
use crate::store::Request;
use crate::store::Response as WriteResponse;
use crate::wire::ApiError;
use crate::wire::Empty;

/// Push events of big repositories can be large; GitHub caps them at 25 MB.
const WEBHOOK_BODY_LIMIT: usize = 25 << 20;

pub fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/v1/sources", get(list).post(add))
        .route("/v1/sources/{name}", get(inspect).delete(remove))
        .route(
            "/v1/sources/{name}/sync",
            post(sync).layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT)),
        )
}

impl From<SyncError> for DaemonError {
    fn from(e: SyncError) -> DaemonError {
        match e {
            SyncError::NotFound(_) => DaemonError::NotFound(e.to_string()),
            SyncError::NotLeader => DaemonError::Manager(ManagerError::Rejected(e.to_string())),
            SyncError::Stopped | SyncError::Internal { .. } => DaemonError::Io(e.to_string()),
        }
    }
}

fn info(m: &Manager, source: Source) -> SourceInfo {
    let status = store::get::<SourceStatus>(&m.sm, &source.name)
        .map(|(s, _)| s)
        .unwrap_or_else(|| SourceStatus {
            name: source.name.clone(),
            ..SourceStatus::default()
        });
    SourceInfo {
        webhook_path: webhook_path(&source.name),
        source,
        status,
    }
}

fn find(m: &Manager, name: &str) -> Result<(Source, u64), DaemonError> {
    store::get::<Source>(&m.sm, name)
        .ok_or_else(|| DaemonError::NotFound(format!("source {name} not found; `swarm source ls` lists them")))
}

async fn list(State(d): State<Arc<Daemon>>, Extension(peer): Peer, local: Local) -> ApiResult<Vec<SourceInfo>> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    Ok(Json(
        store::list::<Source>(&m.sm)
            .into_iter()
            .map(|(s, _)| info(&m, s))
            .collect(),
    ))
}

async fn inspect(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
) -> ApiResult<SourceInfo> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let (source, _) = find(&m, &name)?;
    Ok(Json(info(&m, source)))
}

async fn add(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Json(req): Json<SourceCreate>,
) -> ApiResult<SourceCreated> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let secret = crate::ca::new_secret();
    let (source, credentials) =
        super::check_new_source(&req, secret.clone(), now_millis()).map_err(DaemonError::Refused)?;
    let key = m.keyring.key().map_err(|e| DaemonError::Refused(e.to_string()))?;
    let credentials = credentials.seal(&key).map_err(DaemonError::Refused)?;
    let request = Request {
        guards: vec![Guard::Revision {
            table: Source::TABLE.into(),
            key: source.name.clone(),
            revision: 0,
        }],
        ops: vec![
            store::put(&source),
            store::put(&credentials),
            store::delete::<SourceStatus>(&source.name),
        ],
    };
    match m.write(request).await? {
        WriteResponse::GuardFailed { .. } => Err(DaemonError::Refused(format!(
            "source {} exists already; remove it first with `swarm source rm {}` (its stacks keep running)",
            source.name, source.name
        ))),
        _ => Ok(Json(SourceCreated {
            webhook_path: webhook_path(&source.name),
            source,
            webhook_secret: secret,
        })),
    }
}

/// Removes the source, its credentials and its status. Its stacks keep running as they are (`swarm stack rm`
/// removes a stack).
async fn remove(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
) -> ApiResult<Empty> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let (_, revision) = find(&m, &name)?;
    let request = Request {
        guards: vec![Guard::Revision {
            table: Source::TABLE.into(),
            key: name.clone(),
            revision,
        }],
        ops: vec![
            store::delete::<Source>(&name),
            store::delete::<SealedCredentials>(&name),
            store::delete::<SourceStatus>(&name),
        ],
    };
    match m.write(request).await? {
        WriteResponse::GuardFailed { .. } => Err(DaemonError::Refused(format!(
            "source {name} changed while it was being removed; run the command again"
        ))),
        _ => Ok(Json(Empty {})),
    }
}

#[derive(Deserialize)]
struct SyncQuery {
    /// Wait for the sync and answer with the status (operators; the default), or only start it.
    #[serde(default = "yes")]
    wait: bool,
}

fn yes() -> bool {
    true
}

/// `swarm source sync NAME` (an operator: runs on the leader, waits, answers with the status), or a webhook (no
/// client certificate: the source's secret, then a sync is started on the leader and the answer is 202).
async fn sync(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
    Query(q): Query<SyncQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = if operator(&peer, &local).is_ok() {
        operator_sync(&d, &name, q.wait).await
    } else {
        hook(&d, &name, &headers, &body).await
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn operator_sync(d: &Daemon, name: &str, wait: bool) -> Result<Response, DaemonError> {
    let m = d.require_manager()?;
    let (source, _) = find(&m, name)?;
    let gitops = d
        .gitops()
        .ok_or_else(|| DaemonError::Manager(ManagerError::Rejected("the GitOps loop is not running".into())))?;
    if !wait {
        gitops.trigger(name)?;
        return Ok(started(name));
    }
    gitops.sync(name).await?;
    Ok(Json(info(&m, source)).into_response())
}

fn started(name: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "message": format!("sync of source {name} started") })),
    )
        .into_response()
}

async fn hook(d: &Daemon, name: &str, headers: &HeaderMap, body: &[u8]) -> Result<Response, DaemonError> {
    let m = d.require_manager()?;
    // Any manager can check the secret (the store is replicated); the sync itself runs on the leader.
    let secret = SourceCredentials::read(&m, name)
        .map_err(|e| DaemonError::Refused(format!("webhook of source {name}: {e}")))?
        .map(|c| c.webhook_secret);
    let checked = match &secret {
        Some(secret) => webhook::verify(headers, body, secret),
        // An unknown source looks like a wrong secret: the answer does not tell which sources exist.
        None => Err(webhook::WebhookError::Mismatch),
    };
    if let Err(e) = checked {
        tracing::info!(source = %name, "webhook refused: {e}");
        return Ok((
            StatusCode::UNAUTHORIZED,
            Json(ApiError {
                message: format!("webhook of source {name} refused: {e}"),
            }),
        )
            .into_response());
    }
    if m.is_leader() {
        let gitops = d
            .gitops()
            .ok_or_else(|| DaemonError::Manager(ManagerError::Rejected("the GitOps loop is not running".into())))?;
        gitops.trigger(name)?;
        return Ok(started(name));
    }
    let (_, leader) = m
        .leader()
        .ok_or_else(|| DaemonError::Manager(ManagerError::Rejected("there is no leader now; retry".into())))?;
    let url = format!("https://{}{}?wait=false", leader.addr, webhook_path(name));
    let answer = m
        .client
        .get()
        .post(&url)
        .send()
        .await
        .map_err(|e| DaemonError::Remote(format!("cannot reach the leader at {}: {e}", leader.addr)))?;
    if answer.status().is_success() {
        Ok(started(name))
    } else {
        let message = answer
            .json::<ApiError>()
            .await
            .map(|e| e.message)
            .unwrap_or_else(|_| "the leader refused the sync".into());
        Err(DaemonError::Remote(message))
    }
}
