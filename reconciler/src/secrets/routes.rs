//! The API of secrets and configs: `swarm secret|config create|ls|inspect|rm` (operators only, run on the leader),
//! `swarm unlock` (local socket only), `swarm unlock-key` and autolock, and the managers' key transfer.
//!
//! No answer carries a secret's content, and no error quotes it: request bodies with content are decoded by hand.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::routing::get;
use axum::routing::post;
use axum::Extension;
use axum::Json;
use axum::Router;
use serde::Deserialize;
use serde::Serialize;
use swarm_specs::spec::base64_bytes;
use swarm_specs::spec::ConfigSpec;
use swarm_specs::spec::ContentSource;
use swarm_specs::spec::SecretBytes;
use swarm_specs::spec::SecretSpec;
use swarm_specs::spec::STACK_NAMESPACE_LABEL;

use super::crypto;
use super::ConfigMeta;
use super::Key;
use super::KeyInfo;
use super::SealedSecret;
use super::UnlockKey;
use super::KEY_INFO;
use super::MAX_SIZE;
use crate::api::operator;
use crate::api::ApiResult;
use crate::api::Local;
use crate::api::Peer;
use crate::ca::Role;
use crate::daemon::Daemon;
use crate::daemon::DaemonError;
use crate::manager::Manager;
use crate::objects::Service;
use crate::store;
use crate::store::Guard;
use crate::store::Object;
use crate::store::Request;
use crate::store::Response as WriteResponse;
use crate::wire::Empty;
use crate::wire::Message;

/// `POST /v1/secrets` and `POST /v1/configs`: the content base64 in `data`.
#[derive(Clone, Serialize)]
pub struct CreateRequest {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Base64.
    pub data: String,
}

impl std::fmt::Debug for CreateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateRequest")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// Decoded from a JSON value by hand: serde's own messages would quote a misplaced content.
impl<'de> Deserialize<'de> for CreateRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let serde_json::Value::Object(mut map) = serde_json::Value::deserialize(d)? else {
            return Err(D::Error::custom("expected an object with name, labels and data"));
        };
        let name = match map.remove("name") {
            Some(serde_json::Value::String(n)) => n,
            _ => return Err(D::Error::custom("name must be a string")),
        };
        let labels = match map.remove("labels") {
            None | Some(serde_json::Value::Null) => BTreeMap::new(),
            Some(v) => serde_json::from_value(v).map_err(|_| D::Error::custom("labels must map strings to strings"))?,
        };
        let data = match map.remove("data") {
            Some(serde_json::Value::String(d)) => d,
            _ => return Err(D::Error::custom("data must be a base64 string")),
        };
        Ok(CreateRequest { name, labels, data })
    }
}

/// A secret or config as `ls` and `inspect` show it. A secret's never has its content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Configs only: SHA-256 of the content, hex (empty for secrets).
    pub digest: String,
    /// The store revision that last wrote it (Docker's `Version.Index`).
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<u64>,
    /// The stack it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// Configs only: the content, base64 (as Docker's `Spec.Data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UnlockKeyAnswer {
    /// The unlock key (`SWMKEY-1-...`), or none when autolock is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlock_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutolockRequest {
    pub enabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutolockAnswer {
    /// Whether anything changed.
    pub changed: bool,
    /// When autolock was just enabled: the new unlock key, shown this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlock_key: Option<String>,
}

/// The secrets key on its way from one manager to another (over their mutual-TLS channel).
#[derive(Serialize, Deserialize)]
pub struct KeyTransfer {
    key: String,
}

/// Operator routes (served by every manager, run on the leader).
pub fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/v1/secrets", get(list_secrets).post(create_secret))
        .route("/v1/secrets/{name}", get(inspect_secret).delete(remove_secret))
        .route("/v1/configs", get(list_configs).post(create_config))
        .route("/v1/configs/{name}", get(inspect_config).delete(remove_config))
        .route("/v1/swarm/unlock-key", get(unlock_key))
        .route("/v1/swarm/autolock", post(autolock))
}

/// Routes of the daemon's local socket only: unlocking is this manager's business, never forwarded.
pub fn local_routes() -> Router<Arc<Daemon>> {
    Router::new().route("/v1/unlock", post(unlock))
}

/// Manager-to-manager routes.
pub fn cluster_routes() -> Router<Arc<Daemon>> {
    Router::new().route("/v1/internal/secrets-key", get(send_key))
}

fn refused(e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Refused(e.to_string())
}

/// Docker's rule for secret and config names.
fn check_name(kind: &str, name: &str) -> Result<(), DaemonError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(DaemonError::Refused(format!(
            "invalid {kind} name {name:?}: use up to 64 letters, digits, '-', '_' and '.', starting and ending with a \
             letter or digit"
        )))
    }
}

fn decode_content(kind: &str, name: &str, data: &str) -> Result<Vec<u8>, DaemonError> {
    let bytes = base64_bytes::decode(data)
        .ok_or_else(|| DaemonError::Refused(format!("the content of {kind} {name} is not valid base64")))?;
    if bytes.is_empty() || bytes.len() > MAX_SIZE {
        return Err(DaemonError::Refused(format!(
            "{kind} {name} is {} bytes: it must hold between 1 byte and 500 KiB",
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn guard(table: &str, key: &str, revision: u64) -> Guard {
    Guard::Revision {
        table: table.to_string(),
        key: key.to_string(),
        revision,
    }
}

fn stack_of(labels: &BTreeMap<String, String>) -> Option<String> {
    labels.get(STACK_NAMESPACE_LABEL).cloned()
}

fn secret_info(m: &Manager, spec: &SecretSpec, revision: u64) -> ObjectInfo {
    let sealed = store::get::<SealedSecret>(&m.sm, &spec.name).map(|(s, _)| s);
    ObjectInfo {
        id: sealed
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or_else(|| spec.name.clone()),
        name: spec.name.clone(),
        labels: spec.labels.clone(),
        // Not shown for secrets: a digest lets anyone test guesses of a weak secret.
        digest: String::new(),
        version: revision,
        created_at: sealed.as_ref().map(|s| s.created_at),
        updated_at: sealed.as_ref().map(|s| s.updated_at),
        stack: sealed
            .as_ref()
            .and_then(|s| s.stack.clone())
            .or_else(|| stack_of(&spec.labels)),
        data: None,
    }
}

fn config_info(m: &Manager, spec: &ConfigSpec, revision: u64) -> ObjectInfo {
    let meta = store::get::<ConfigMeta>(&m.sm, &spec.name).map(|(c, _)| c);
    ObjectInfo {
        id: meta.as_ref().map(|c| c.id.clone()).unwrap_or_else(|| spec.name.clone()),
        name: spec.name.clone(),
        labels: spec.labels.clone(),
        digest: spec.digest.clone(),
        version: revision,
        created_at: meta.as_ref().map(|c| c.created_at),
        updated_at: meta.as_ref().map(|c| c.updated_at),
        stack: meta
            .as_ref()
            .and_then(|c| c.stack.clone())
            .or_else(|| stack_of(&spec.labels)),
        data: Some(base64_bytes::encode(&spec.data)),
    }
}

/// An object by exact name, or by its id or a unique prefix of it.
fn resolve<T: Clone>(kind: &str, wanted: &str, all: &[(T, u64, String, String)]) -> Result<(T, u64), DaemonError> {
    if let Some((t, r, _, _)) = all.iter().find(|(_, _, name, id)| name == wanted || id == wanted) {
        return Ok((t.clone(), *r));
    }
    let matches: Vec<&(T, u64, String, String)> = all.iter().filter(|(_, _, _, id)| id.starts_with(wanted)).collect();
    match matches.as_slice() {
        [one] => Ok((one.0.clone(), one.1)),
        [] => Err(DaemonError::NotFound(format!("{kind} {wanted} not found"))),
        _ => Err(DaemonError::Refused(format!(
            "{kind} id {wanted:?} is ambiguous; give more characters or the name"
        ))),
    }
}

fn find_secret(m: &Manager, wanted: &str) -> Result<(SecretSpec, u64), DaemonError> {
    let all: Vec<(SecretSpec, u64, String, String)> = store::list::<SecretSpec>(&m.sm)
        .into_iter()
        .filter(|(s, _)| s.source != ContentSource::External)
        .map(|(s, r)| {
            let id = store::get::<SealedSecret>(&m.sm, &s.name)
                .map(|(x, _)| x.id)
                .unwrap_or_default();
            let name = s.name.clone();
            (s, r, name, id)
        })
        .collect();
    resolve("secret", wanted, &all)
}

fn find_config(m: &Manager, wanted: &str) -> Result<(ConfigSpec, u64), DaemonError> {
    let all: Vec<(ConfigSpec, u64, String, String)> = store::list::<ConfigSpec>(&m.sm)
        .into_iter()
        .filter(|(c, _)| c.source != ContentSource::External)
        .map(|(c, r)| {
            let id = store::get::<ConfigMeta>(&m.sm, &c.name)
                .map(|(x, _)| x.id)
                .unwrap_or_default();
            let name = c.name.clone();
            (c, r, name, id)
        })
        .collect();
    resolve("config", wanted, &all)
}

async fn list_secrets(State(d): State<Arc<Daemon>>, Extension(peer): Peer, local: Local) -> ApiResult<Vec<ObjectInfo>> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    Ok(Json(
        store::list::<SecretSpec>(&m.sm)
            .iter()
            .filter(|(s, _)| s.source != ContentSource::External)
            .map(|(s, r)| secret_info(&m, s, *r))
            .collect(),
    ))
}

async fn inspect_secret(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
) -> ApiResult<ObjectInfo> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let (spec, revision) = find_secret(&m, &name)?;
    Ok(Json(secret_info(&m, &spec, revision)))
}

async fn create_secret(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Json(req): Json<CreateRequest>,
) -> ApiResult<ObjectInfo> {
    operator(&peer, &local)?;
    check_name("secret", &req.name)?;
    let data = decode_content("secret", &req.name, &req.data)?;
    let m = d.require_manager()?;
    let key = m.keyring.key().map_err(refused)?;
    let now = super::now();
    let spec = SecretSpec {
        name: req.name.clone(),
        key: req.name.clone(),
        labels: req.labels.clone(),
        source: ContentSource::File,
        digest: crypto::digest_hex(&data),
        data: SecretBytes(Vec::new()),
    };
    let sealed = SealedSecret::seal(&key, &req.name, &data, None, now).map_err(refused)?;
    let request = Request {
        guards: vec![
            guard(SecretSpec::TABLE, &req.name, 0),
            guard(SealedSecret::TABLE, &req.name, 0),
        ],
        ops: vec![store::put(&spec), store::put(&sealed)],
    };
    match m.write(request).await? {
        WriteResponse::GuardFailed { .. } => Err(DaemonError::Refused(format!(
            "secret {} already exists; secrets cannot be changed: create one under a new name, or remove it first",
            req.name
        ))),
        WriteResponse::Applied { revision } => Ok(Json(secret_info(&m, &spec, revision))),
        _ => Ok(Json(secret_info(&m, &spec, 0))),
    }
}

fn in_use(kind: &str, name: &str, services: &[String]) -> DaemonError {
    DaemonError::Refused(format!(
        "{kind} {name} is in use by the following service{}: {}; remove it from {} first",
        if services.len() == 1 { "" } else { "s" },
        services.join(", "),
        if services.len() == 1 { "it" } else { "them" }
    ))
}

async fn remove_secret(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
) -> ApiResult<Empty> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let (spec, revision) = find_secret(&m, &name)?;
    let services: Vec<Service> = store::list::<Service>(&m.sm).into_iter().map(|(s, _)| s).collect();
    let users = super::users(&services, &spec.name, true);
    if !users.is_empty() {
        return Err(in_use("secret", &spec.name, &users));
    }
    let request = Request {
        guards: vec![guard(SecretSpec::TABLE, &spec.name, revision)],
        ops: vec![
            store::delete::<SecretSpec>(&spec.name),
            store::delete::<SealedSecret>(&spec.name),
        ],
    };
    match m.write(request).await? {
        WriteResponse::GuardFailed { .. } => Err(DaemonError::Refused(format!(
            "secret {} changed while it was being removed; run the command again",
            spec.name
        ))),
        _ => Ok(Json(Empty {})),
    }
}

async fn list_configs(State(d): State<Arc<Daemon>>, Extension(peer): Peer, local: Local) -> ApiResult<Vec<ObjectInfo>> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    Ok(Json(
        store::list::<ConfigSpec>(&m.sm)
            .iter()
            .filter(|(c, _)| c.source != ContentSource::External)
            .map(|(c, r)| config_info(&m, c, *r))
            .collect(),
    ))
}

async fn inspect_config(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
) -> ApiResult<ObjectInfo> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let (spec, revision) = find_config(&m, &name)?;
    Ok(Json(config_info(&m, &spec, revision)))
}

async fn create_config(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Json(req): Json<CreateRequest>,
) -> ApiResult<ObjectInfo> {
    operator(&peer, &local)?;
    check_name("config", &req.name)?;
    let data = decode_content("config", &req.name, &req.data)?;
    let m = d.require_manager()?;
    let now = super::now();
    let spec = ConfigSpec {
        name: req.name.clone(),
        key: req.name.clone(),
        labels: req.labels.clone(),
        source: ContentSource::File,
        digest: crypto::digest_hex(&data),
        data,
    };
    let meta = ConfigMeta {
        name: req.name.clone(),
        id: crate::ca::new_id(),
        created_at: now,
        updated_at: now,
        stack: None,
    };
    let request = Request {
        guards: vec![guard(ConfigSpec::TABLE, &req.name, 0)],
        ops: vec![store::put(&spec), store::put(&meta)],
    };
    match m.write(request).await? {
        WriteResponse::GuardFailed { .. } => Err(DaemonError::Refused(format!(
            "config {} already exists; configs cannot be changed: create one under a new name, or remove it first",
            req.name
        ))),
        WriteResponse::Applied { revision } => Ok(Json(config_info(&m, &spec, revision))),
        _ => Ok(Json(config_info(&m, &spec, 0))),
    }
}

async fn remove_config(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Path(name): Path<String>,
) -> ApiResult<Empty> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let (spec, revision) = find_config(&m, &name)?;
    let services: Vec<Service> = store::list::<Service>(&m.sm).into_iter().map(|(s, _)| s).collect();
    let users = super::users(&services, &spec.name, false);
    if !users.is_empty() {
        return Err(in_use("config", &spec.name, &users));
    }
    let request = Request {
        guards: vec![guard(ConfigSpec::TABLE, &spec.name, revision)],
        ops: vec![
            store::delete::<ConfigSpec>(&spec.name),
            store::delete::<ConfigMeta>(&spec.name),
        ],
    };
    match m.write(request).await? {
        WriteResponse::GuardFailed { .. } => Err(DaemonError::Refused(format!(
            "config {} changed while it was being removed; run the command again",
            spec.name
        ))),
        _ => Ok(Json(Empty {})),
    }
}

fn key_info(m: &Manager) -> Result<(KeyInfo, u64), DaemonError> {
    store::get::<KeyInfo>(&m.sm, KEY_INFO).ok_or_else(|| {
        DaemonError::Refused(
            "the cluster has no secrets key yet (its leader creates one within seconds); try again".into(),
        )
    })
}

#[derive(Deserialize)]
struct Rotate {
    #[serde(default)]
    rotate: bool,
}

/// `swarm unlock-key [--rotate]`: the current unlock key, or a new one.
async fn unlock_key(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Query(q): Query<Rotate>,
) -> ApiResult<UnlockKeyAnswer> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let key = m.keyring.key().map_err(refused)?;
    let (info, revision) = key_info(&m)?;
    if !info.autolock {
        return Err(DaemonError::Refused(
            "autolock is not enabled, so there is no unlock key; enable it with `swarm update --autolock=true`".into(),
        ));
    }
    if !q.rotate {
        let unlock = info.unlock_key(&key).map_err(refused)?;
        return Ok(Json(UnlockKeyAnswer {
            unlock_key: unlock.map(|u| u.reveal()),
        }));
    }
    let unlock = UnlockKey::generate().map_err(refused)?;
    let next = KeyInfo::new(&key, Some(&unlock), info.generation + 1).map_err(refused)?;
    write_key_info(&m, &next, revision).await?;
    Ok(Json(UnlockKeyAnswer {
        unlock_key: Some(unlock.reveal()),
    }))
}

async fn write_key_info(m: &Manager, info: &KeyInfo, revision: u64) -> Result<(), DaemonError> {
    let request = Request {
        guards: vec![guard(KeyInfo::TABLE, KEY_INFO, revision)],
        ops: vec![store::put(info)],
    };
    match m.write(request).await? {
        WriteResponse::GuardFailed { .. } => Err(DaemonError::Refused(
            "the cluster's key settings changed meanwhile; run the command again".into(),
        )),
        _ => Ok(()),
    }
}

/// `swarm update --autolock=true|false`.
async fn autolock(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Peer,
    local: Local,
    Json(req): Json<AutolockRequest>,
) -> ApiResult<AutolockAnswer> {
    operator(&peer, &local)?;
    let m = d.require_manager()?;
    let key = m.keyring.key().map_err(refused)?;
    let (info, revision) = key_info(&m)?;
    if info.autolock == req.enabled {
        return Ok(Json(AutolockAnswer {
            changed: false,
            unlock_key: None,
        }));
    }
    let unlock = if req.enabled {
        Some(UnlockKey::generate().map_err(refused)?)
    } else {
        None
    };
    let next = KeyInfo::new(&key, unlock.as_ref(), info.generation + 1).map_err(refused)?;
    write_key_info(&m, &next, revision).await?;
    Ok(Json(AutolockAnswer {
        changed: true,
        unlock_key: unlock.map(|u| u.reveal()),
    }))
}

/// `swarm unlock`: the body is `{"key": "SWMKEY-1-..."}`, read by hand so no error quotes it.
async fn unlock(State(d): State<Arc<Daemon>>, body: axum::body::Bytes) -> ApiResult<Message> {
    if d.state().is_none() {
        return Err(DaemonError::Refused(
            "This node is not part of a swarm: there is nothing to unlock".into(),
        ));
    }
    let text = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("key").and_then(|k| k.as_str()).map(str::to_string))
        .ok_or_else(|| DaemonError::Refused("the request must be {\"key\": \"SWMKEY-1-...\"}".into()))?;
    let unlock = UnlockKey::parse(&text).map_err(refused)?;
    d.keyring().unlock(&unlock).map_err(refused)?;
    Ok(Json(Message {
        message: "Swarm unlocked.".into(),
    }))
}

/// Another manager asks for the secrets key (it just joined, or was promoted): only a manager of this swarm, by
/// certificate and by the store, gets it.
async fn send_key(State(d): State<Arc<Daemon>>, Extension(peer): Peer) -> ApiResult<KeyTransfer> {
    let caller = match &peer {
        Some(p) if p.role == Role::Manager => p.clone(),
        _ => {
            return Err(DaemonError::Refused(
                "this endpoint is for managers; a manager certificate of this swarm is needed".into(),
            ))
        }
    };
    let m = d.require_manager()?;
    let removed = m.cluster().is_some_and(|c| c.removed_nodes.contains(&caller.node_id));
    let is_manager = m.node(&caller.node_id).is_some_and(|(n, _)| n.role == Role::Manager);
    if removed || !is_manager {
        return Err(DaemonError::Refused(format!(
            "node {} is not a manager of this swarm",
            caller.node_id
        )));
    }
    let key = m.keyring.key().map_err(refused)?;
    Ok(Json(KeyTransfer {
        key: base64_bytes::encode(key.as_bytes()),
    }))
}

/// Asks the other managers for the secrets key, one after another; the first answer wins (the caller checks it).
pub async fn fetch_key(m: &Manager) -> Result<Key, String> {
    let mut errors = Vec::new();
    for (id, peer) in m.voters() {
        if id == m.raft_id {
            continue;
        }
        let url = format!("https://{}/v1/internal/secrets-key", peer.addr);
        let answer = m.client.get().get(&url).timeout(Duration::from_secs(5)).send().await;
        let response = match answer {
            Ok(r) => r,
            Err(e) => {
                errors.push(format!("{}: {e}", peer.addr));
                continue;
            }
        };
        if !response.status().is_success() {
            let message = response
                .json::<crate::wire::ApiError>()
                .await
                .map(|e| e.message)
                .unwrap_or_default();
            errors.push(format!("{}: {message}", peer.addr));
            continue;
        }
        let Ok(transfer) = response.json::<KeyTransfer>().await else {
            errors.push(format!("{}: an answer that is not a key", peer.addr));
            continue;
        };
        match base64_bytes::decode(&transfer.key).and_then(|b| Key::from_bytes(&b)) {
            Some(key) => return Ok(key),
            None => errors.push(format!("{}: an answer that is not a key", peer.addr)),
        }
    }
    if errors.is_empty() {
        return Err("no other manager to get the secrets key from yet".into());
    }
    Err(format!("no manager sent the secrets key: {}", errors.join("; ")))
}
