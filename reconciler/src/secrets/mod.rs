//! Secrets and configs: encrypted at rest, delivered only where needed, rotated by content.
//!
//! - **At rest.** Every manager holds the cluster's *secrets key* ([`keyring`], wrapped on disk). A secret's content
//!   is sealed with it (AES-256-GCM, bound to the secret's name) *before* it enters the Raft log: the `secret_data`
//!   table holds a [`SealedSecret`] per stored secret, written in the same entry as its [`SecretSpec`] (which has no
//!   content). The log, the snapshots and the redb file never hold a secret in the clear.
//! - **Managers.** `swarm init` creates the key; a manager that joins (or is promoted) fetches it from another
//!   manager over their mutual-TLS channel ([`routes`]), and checks it against the cluster's [`KeyInfo`].
//! - **Autolock.** With autolock the key-encryption key is derived from an unlock key that is never stored: a
//!   restarted manager is locked until `swarm unlock`. The unlock key itself travels in Raft sealed with the secrets
//!   key, so every unlocked manager rewraps its copy when autolock changes ([`run`]).
//! - **Delivery.** The dispatcher sends a node the contents its assigned tasks reference ([`delivery`]), decrypted
//!   only for that message; the agent writes them to a tmpfs (`swarm_agent::files`).
//! - **Rotation.** A stack's secret or config that changed gets a new stored name, so the services using it roll;
//!   the old object goes once nothing uses it any more ([`orphans`], on the leader).

pub mod crypto;
pub mod delivery;
pub mod keyring;
pub mod routes;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;
use swarm_specs::spec::ConfigSpec;
use swarm_specs::spec::ContentSource;
use swarm_specs::spec::SecretBytes;
use swarm_specs::spec::SecretSpec;
use swarm_specs::spec::StackSpec;
use swarm_specs::spec::STACK_NAMESPACE_LABEL;
use swarm_specs::task::Task;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

pub use self::crypto::Key;
pub use self::crypto::Sealed;
pub use self::crypto::UnlockKey;
pub use self::keyring::KeyError;
pub use self::keyring::Keyring;
pub use self::keyring::Protection;
use crate::cluster::now_millis;
use crate::cluster::Settings;
use crate::cluster::UnixMillis;
use crate::manager::Manager;
use crate::objects::Service;
use crate::objects::Stack;
use crate::store;
use crate::store::Guard;
use crate::store::Object;
use crate::store::Op;
use crate::store::Request;
use crate::store::StateMachineStore;

/// Docker's limit on a secret's or config's size.
pub const MAX_SIZE: usize = 500 * 1024;

/// A secret's content, sealed with the cluster's secrets key: the only form it takes in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    /// The stored name of the secret (the key of its [`SecretSpec`]).
    pub name: String,
    /// Shown by `secret ls|inspect` as Docker's secret id.
    pub id: String,
    /// SHA-256 of the content, as the spec has it.
    pub digest: String,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// The stack that made it (`swarm apply`); none for `swarm secret create`. A stack's secrets are removed once
    /// nothing uses them; the others only by `swarm secret rm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    pub sealed: Sealed,
}

impl Object for SealedSecret {
    const TABLE: &'static str = "secret_data";
    fn key(&self) -> String {
        self.name.clone()
    }
}

impl SealedSecret {
    /// Seals `data` as the content of secret `name` (of `stack`, when a stack defines it).
    pub fn seal(
        key: &Key,
        name: &str,
        data: &[u8],
        stack: Option<&str>,
        now: UnixMillis,
    ) -> Result<SealedSecret, crypto::CryptoError> {
        Ok(SealedSecret {
            name: name.to_string(),
            id: crate::ca::new_id(),
            digest: crypto::digest_hex(data),
            created_at: now,
            updated_at: now,
            stack: stack.map(str::to_string),
            sealed: key.seal(&context(name), data)?,
        })
    }

    pub fn open(&self, key: &Key) -> Result<SecretBytes, crypto::CryptoError> {
        key.open(&context(&self.name), &self.sealed).map(SecretBytes)
    }
}

/// What a secret's ciphertext is bound to: its name (one stored under another name does not open).
fn context(name: &str) -> String {
    format!("secret {name}")
}

/// When a config was created (configs are not secret: their content stays in [`ConfigSpec`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigMeta {
    pub name: String,
    pub id: String,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// The stack that made it; none for `swarm config create` (see [`SealedSecret::stack`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

impl Object for ConfigMeta {
    const TABLE: &'static str = "config_meta";
    fn key(&self) -> String {
        self.name.clone()
    }
}

/// The cluster's key record (one, under [`KEY_INFO`]): what lets a manager check a key, and how managers wrap it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// A fixed text sealed with the secrets key: a key that opens it is the cluster's.
    pub check: Sealed,
    pub autolock: bool,
    /// With autolock: the unlock key, sealed with the secrets key, so every manager can derive its KEK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlock_key: Option<Sealed>,
    /// Bumped whenever autolock is toggled or its key rotated: managers rewrap their copy when theirs differs.
    pub generation: u64,
}

pub const KEY_INFO: &str = "secrets";
const CHECK_CONTEXT: &str = "swarm secrets key check";
const UNLOCK_CONTEXT: &str = "swarm unlock key";

impl Object for KeyInfo {
    const TABLE: &'static str = "swarm_keys";
    fn key(&self) -> String {
        KEY_INFO.to_string()
    }
}

impl KeyInfo {
    pub fn new(key: &Key, unlock: Option<&UnlockKey>, generation: u64) -> Result<KeyInfo, crypto::CryptoError> {
        Ok(KeyInfo {
            check: key.seal(CHECK_CONTEXT, CHECK_CONTEXT.as_bytes())?,
            autolock: unlock.is_some(),
            unlock_key: unlock.map(|u| key.seal(UNLOCK_CONTEXT, u.as_bytes())).transpose()?,
            generation,
        })
    }

    /// Whether `key` is the cluster's secrets key.
    pub fn verifies(&self, key: &Key) -> bool {
        key.open(CHECK_CONTEXT, &self.check)
            .is_ok_and(|text| text == CHECK_CONTEXT.as_bytes())
    }

    /// The unlock key (autolock on), opened with the secrets key.
    pub fn unlock_key(&self, key: &Key) -> Result<Option<UnlockKey>, crypto::CryptoError> {
        match &self.unlock_key {
            None => Ok(None),
            Some(sealed) => {
                let bytes = key.open(UNLOCK_CONTEXT, sealed)?;
                UnlockKey::from_bytes(&bytes)
                    .map(Some)
                    .ok_or_else(|| crypto::CryptoError::Open(UNLOCK_CONTEXT.into()))
            }
        }
    }

    /// How managers protect their copy of the key now.
    pub fn protection(&self, key: &Key) -> Result<Protection, crypto::CryptoError> {
        Ok(match self.unlock_key(key)? {
            Some(unlock) => Protection::UnlockKey(unlock),
            None => Protection::Local,
        })
    }
}

/// Secret contents sent with `swarm apply` (`ApplyRequest::secret_data`): stored name → content, base64 in JSON.
/// `Debug` shows names only; decoding errors never quote the text.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretPayloads(pub BTreeMap<String, SecretBytes>);

impl SecretPayloads {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The contents of `desired`'s secrets named in `names` (stack-defined ones: external secrets have none here).
    pub fn of(desired: &StackSpec, names: &BTreeSet<String>) -> SecretPayloads {
        SecretPayloads(
            desired
                .secrets
                .iter()
                .filter(|(name, s)| names.contains(*name) && s.source != ContentSource::External)
                .map(|(name, s)| (name.clone(), s.data.clone()))
                .collect(),
        )
    }
}

impl std::fmt::Debug for SecretPayloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl Serialize for SecretPayloads {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, data) in &self.0 {
            map.serialize_entry(name, &swarm_specs::spec::base64_bytes::encode(&data.0))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for SecretPayloads {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let serde_json::Value::Object(map) = serde_json::Value::deserialize(d)? else {
            return Err(D::Error::custom("secret_data must map secret names to base64 contents"));
        };
        let mut out = BTreeMap::new();
        for (name, value) in map {
            let serde_json::Value::String(text) = value else {
                return Err(D::Error::custom(format!("secret_data.{name} must be a base64 string")));
            };
            let data = swarm_specs::spec::base64_bytes::decode(&text)
                .ok_or_else(|| D::Error::custom(format!("secret_data.{name} is not valid base64")))?;
            out.insert(name, SecretBytes(data));
        }
        Ok(SecretPayloads(out))
    }
}

/// `desired` with the contents sent beside it, each checked against the digest its spec carries.
pub fn with_payloads(desired: &StackSpec, payloads: &SecretPayloads) -> Result<StackSpec, String> {
    let mut spec = desired.clone();
    for (name, data) in &payloads.0 {
        let Some(secret) = spec.secrets.get_mut(name) else {
            return Err(format!(
                "the request carries content for secret {name}, which stack {} does not define",
                desired.name
            ));
        };
        if crypto::digest_hex(&data.0) != secret.digest {
            return Err(format!(
                "the content sent for secret {name} does not match its digest: plan and apply from the same files"
            ));
        }
        secret.data = data.clone();
    }
    Ok(spec)
}

/// What an apply adds to its entry for the secrets and configs it writes: each new secret's content sealed (it
/// enters the log only so), and a creation record for each new config. Reads the store for what exists already.
pub fn apply_ops(
    sm: &StateMachineStore,
    keyring: &Keyring,
    desired: &StackSpec,
    ops: &[Op],
    now: UnixMillis,
) -> Result<Vec<Op>, String> {
    let mut out = Vec::new();
    let mut key: Option<Key> = None;
    for op in ops {
        let Op::Put { table, key: name, .. } = op else { continue };
        if table == SecretSpec::TABLE {
            let Some(secret) = desired.secrets.get(name) else {
                continue;
            };
            if store::get::<SealedSecret>(sm, name).is_some_and(|(s, _)| s.digest == secret.digest) {
                continue;
            }
            if crypto::digest_hex(&secret.data.0) != secret.digest {
                return Err(format!(
                    "secret {name} (`{}` in stack {}) is new, but its content was not sent: apply from the stack files \
                     (`swarm apply -f FILE`). A saved plan or a stack rollback carries no secret content, and an \
                     earlier version of a secret is kept only while something uses it, and then the last \
                     `swarm update --secret-history-limit` versions",
                    secret.key, desired.name
                ));
            }
            if secret.data.0.len() > MAX_SIZE {
                return Err(format!(
                    "secret {name} (`{}` in stack {}) is {} bytes: secrets are limited to 500 KiB",
                    secret.key,
                    desired.name,
                    secret.data.0.len()
                ));
            }
            let k = match &key {
                Some(k) => k.clone(),
                None => {
                    let k = keyring.key().map_err(|e| e.to_string())?;
                    key = Some(k.clone());
                    k
                }
            };
            let sealed =
                SealedSecret::seal(&k, name, &secret.data.0, Some(&desired.name), now).map_err(|e| e.to_string())?;
            out.push(store::put(&sealed));
        } else if table == ConfigSpec::TABLE && store::get::<ConfigMeta>(sm, name).is_none() {
            out.push(store::put(&ConfigMeta {
                name: name.clone(),
                id: crate::ca::new_id(),
                created_at: now,
                updated_at: now,
                stack: Some(desired.name.clone()),
            }));
        }
    }
    Ok(out)
}

/// What the store holds that garbage collection looks at.
pub struct Inventory<'a> {
    pub secrets: &'a [(SecretSpec, u64)],
    pub sealed: &'a [(SealedSecret, u64)],
    pub configs: &'a [(ConfigSpec, u64)],
    pub config_meta: &'a [(ConfigMeta, u64)],
    pub stacks: &'a [Stack],
    pub services: &'a [Service],
    pub tasks: &'a [Task],
    /// Earlier versions of each stack secret or config kept once unused (`swarm update --secret-history-limit`),
    /// for `swarm stack rollback` to an older revision.
    pub keep_unused: usize,
}

/// The secrets and configs nothing uses any more (pure): those a stack made (rotated away, or dropped from their
/// stack) that no stack, service (current spec, or previous spec: what `service rollback` returns to) or unfinished
/// task references, beyond the newest [`Inventory::keep_unused`] of each (stack, key); and sealed contents and config
/// records whose object is gone. Secrets and configs made with `swarm secret|config create` stay until `rm`. Each
/// deletion is guarded on the revision it was decided on.
pub fn orphans<'a>(inv: &Inventory<'a>) -> Request {
    let mut used_secrets: BTreeSet<&str> = BTreeSet::new();
    let mut used_configs: BTreeSet<&str> = BTreeSet::new();
    for stack in inv.stacks {
        used_secrets.extend(stack.spec.secrets.keys().map(String::as_str));
        used_configs.extend(stack.spec.configs.keys().map(String::as_str));
    }
    let specs = inv
        .services
        .iter()
        .flat_map(|s| std::iter::once(&s.spec).chain(s.previous_spec.as_ref()))
        .map(|s| &s.task);
    let live_tasks = inv
        .tasks
        .iter()
        .filter(|t| !t.status.state.is_terminal())
        .map(|t| &t.spec);
    for task in specs.chain(live_tasks) {
        used_secrets.extend(task.secrets.iter().map(|r| r.source.as_str()));
        used_configs.extend(task.configs.iter().map(|r| r.source.as_str()));
    }
    let mut guards = Vec::new();
    let mut ops = Vec::new();
    // Made by a stack: its sealed content (or config record) says so (and when it was made), or the stack label does.
    let made_secrets: BTreeMap<&str, (&str, UnixMillis)> = inv
        .sealed
        .iter()
        .filter_map(|(s, _)| Some((s.name.as_str(), (s.stack.as_deref()?, s.created_at))))
        .collect();
    let made_configs: BTreeMap<&str, (&str, UnixMillis)> = inv
        .config_meta
        .iter()
        .filter_map(|(c, _)| Some((c.name.as_str(), (c.stack.as_deref()?, c.created_at))))
        .collect();
    // The stack that made an object (None: made by hand, or external) and when.
    fn made_by<'a>(
        made: &BTreeMap<&'a str, (&'a str, UnixMillis)>,
        name: &str,
        labels: &'a BTreeMap<String, String>,
        source: ContentSource,
    ) -> Option<(&'a str, UnixMillis)> {
        if source == ContentSource::External {
            return None;
        }
        made.get(name)
            .copied()
            .or_else(|| labels.get(STACK_NAMESPACE_LABEL).map(|s| (s.as_str(), 0)))
    }
    let unused_secrets = inv.secrets.iter().filter_map(|(secret, _)| {
        let (stack, at) = made_by(&made_secrets, &secret.name, &secret.labels, secret.source)?;
        (!used_secrets.contains(secret.name.as_str())).then_some((
            secret.name.as_str(),
            (stack, secret.key.as_str()),
            at,
        ))
    });
    let doomed = beyond_history(unused_secrets, inv.keep_unused);
    let mut kept_secrets = BTreeSet::new();
    for (secret, revision) in inv.secrets {
        if doomed.contains(secret.name.as_str()) {
            guards.push(revision_guard(SecretSpec::TABLE, &secret.name, *revision));
            ops.push(store::delete::<SecretSpec>(&secret.name));
        } else {
            kept_secrets.insert(secret.name.as_str());
        }
    }
    let known_secrets: BTreeSet<&str> = inv.secrets.iter().map(|(s, _)| s.name.as_str()).collect();
    for (sealed, revision) in inv.sealed {
        if !kept_secrets.contains(sealed.name.as_str()) {
            if !known_secrets.contains(sealed.name.as_str()) {
                // Its secret was absent when listed: still absent (not created since, with this very content).
                guards.push(revision_guard(SecretSpec::TABLE, &sealed.name, 0));
            }
            guards.push(revision_guard(SealedSecret::TABLE, &sealed.name, *revision));
            ops.push(store::delete::<SealedSecret>(&sealed.name));
        }
    }
    let unused_configs = inv.configs.iter().filter_map(|(config, _)| {
        let (stack, at) = made_by(&made_configs, &config.name, &config.labels, config.source)?;
        (!used_configs.contains(config.name.as_str())).then_some((
            config.name.as_str(),
            (stack, config.key.as_str()),
            at,
        ))
    });
    let doomed = beyond_history(unused_configs, inv.keep_unused);
    let mut kept_configs = BTreeSet::new();
    for (config, revision) in inv.configs {
        if doomed.contains(config.name.as_str()) {
            guards.push(revision_guard(ConfigSpec::TABLE, &config.name, *revision));
            ops.push(store::delete::<ConfigSpec>(&config.name));
        } else {
            kept_configs.insert(config.name.as_str());
        }
    }
    let known_configs: BTreeSet<&str> = inv.configs.iter().map(|(c, _)| c.name.as_str()).collect();
    for (meta, revision) in inv.config_meta {
        if !kept_configs.contains(meta.name.as_str()) {
            if !known_configs.contains(meta.name.as_str()) {
                guards.push(revision_guard(ConfigSpec::TABLE, &meta.name, 0));
            }
            guards.push(revision_guard(ConfigMeta::TABLE, &meta.name, *revision));
            ops.push(store::delete::<ConfigMeta>(&meta.name));
        }
    }
    Request { guards, ops }
}

/// Of unused versions `(name, (stack, key), made at)`, the names beyond the `keep` newest of each (stack, key).
fn beyond_history<'a>(
    unused: impl Iterator<Item = (&'a str, (&'a str, &'a str), UnixMillis)>,
    keep: usize,
) -> BTreeSet<&'a str> {
    let mut by_object: BTreeMap<(&str, &str), Vec<(UnixMillis, &str)>> = BTreeMap::new();
    for (name, object, at) in unused {
        by_object.entry(object).or_default().push((at, name));
    }
    by_object
        .into_values()
        .flat_map(|mut versions| {
            versions.sort_by(|a, b| b.cmp(a));
            versions.into_iter().skip(keep).map(|(_, name)| name)
        })
        .collect()
}

fn revision_guard(table: &str, key: &str, revision: u64) -> Guard {
    Guard::Revision {
        table: table.to_string(),
        key: key.to_string(),
        revision,
    }
}

/// Services whose current spec uses secret (or config) `name`, for `rm`'s refusal.
pub fn users(services: &[Service], name: &str, secret: bool) -> Vec<String> {
    services
        .iter()
        .filter(|s| {
            let refs = if secret {
                &s.spec.task.secrets
            } else {
                &s.spec.task.configs
            };
            refs.iter().any(|r| r.source == name)
        })
        .map(|s| s.name().to_string())
        .collect()
}

/// The key record and the first key of a new cluster (`swarm init`): installed in `keyring`, and the op that
/// records it. With `autolock`, also the unlock key to show once.
pub fn initialize(keyring: &Keyring, autolock: bool) -> Result<(Op, Option<UnlockKey>), KeyError> {
    let key = Key::generate()?;
    let unlock = if autolock { Some(UnlockKey::generate()?) } else { None };
    let info = KeyInfo::new(&key, unlock.as_ref(), 1)?;
    let protection = match &unlock {
        Some(u) => Protection::UnlockKey(u.clone()),
        None => Protection::Local,
    };
    keyring.install(key, &protection, info.generation)?;
    Ok((store::put(&info), unlock))
}

/// How often a manager without the key asks the others for it.
const FETCH_EVERY: Duration = Duration::from_millis(300);
/// The leader's garbage collection runs at least this often (a task that finished frees what it used).
const RESYNC: Duration = Duration::from_secs(3);

/// Runs on every manager until `stop`: gets the key when this manager has none, rewraps its copy when autolock
/// changes, and — on the leader — removes secrets and configs nothing uses.
pub async fn run(m: Arc<Manager>, mut stop: watch::Receiver<bool>) {
    let mut changes = m.sm.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        if let Err(e) = maintain_key(&m).await {
            tracing::warn!("secrets key: {e}");
        }
        if m.is_leader() {
            if let Err(e) = collect(&m).await {
                tracing::debug!("secrets garbage collection: {e}");
            }
        }
        let wait = if m.keyring.status() == keyring::Status::Missing {
            FETCH_EVERY
        } else {
            RESYNC
        };
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = &mut deadline => break,
                committed = changes.recv() => match committed {
                    Ok(c) if c.changes.iter().any(relevant) => break,
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => {
                        changes = m.sm.subscribe();
                        break;
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
        while changes.try_recv().is_ok() {}
    }
}

/// Changes that can make a secret or config unused, or change how managers wrap the key.
fn relevant(change: &store::Change) -> bool {
    let t = change.table.as_str();
    if t == Task::TABLE {
        // A task removed, or one that finished.
        #[derive(serde::Deserialize)]
        struct Status {
            status: swarm_specs::task::TaskStatus,
        }
        return change
            .value
            .as_ref()
            .is_none_or(|v| v.decode::<Status>().is_ok_and(|t| t.status.state.is_terminal()));
    }
    [
        SecretSpec::TABLE,
        ConfigSpec::TABLE,
        SealedSecret::TABLE,
        ConfigMeta::TABLE,
        Service::TABLE,
        Stack::TABLE,
        KeyInfo::TABLE,
    ]
    .contains(&t)
}

/// Gets the key when missing (from another manager, checked against the cluster's record), and rewraps the local
/// copy when the cluster's wrapping generation moved.
async fn maintain_key(m: &Manager) -> Result<(), String> {
    let info = store::get::<KeyInfo>(&m.sm, KEY_INFO);
    match (m.keyring.status(), info) {
        (keyring::Status::Locked, _) => Ok(()),
        (keyring::Status::Missing, None) => {
            // A cluster from before secrets were encrypted: its leader makes the key.
            if !m.is_leader() || m.cluster().is_none() {
                return Ok(());
            }
            let key = Key::generate().map_err(|e| e.to_string())?;
            let info = KeyInfo::new(&key, None, 1).map_err(|e| e.to_string())?;
            let request = Request {
                guards: vec![revision_guard(KeyInfo::TABLE, KEY_INFO, 0)],
                ops: vec![store::put(&info)],
            };
            if let store::Response::Applied { .. } = m.write_as_leader(request).await.map_err(|e| e.to_string())? {
                m.keyring
                    .install(key, &Protection::Local, info.generation)
                    .map_err(|e| e.to_string())?;
                tracing::info!("created the cluster's secrets key");
            }
            Ok(())
        }
        (keyring::Status::Missing, Some((info, _))) => {
            let key = routes::fetch_key(m).await?;
            if !info.verifies(&key) {
                return Err("a manager sent a key that is not this cluster's secrets key; not kept".into());
            }
            let protection = info.protection(&key).map_err(|e| e.to_string())?;
            m.keyring
                .install(key, &protection, info.generation)
                .map_err(|e| e.to_string())?;
            tracing::info!("received the cluster's secrets key from another manager");
            Ok(())
        }
        (keyring::Status::Unlocked, Some((info, _))) if m.keyring.generation() != Some(info.generation) => {
            let key = m.keyring.key().map_err(|e| e.to_string())?;
            if !info.verifies(&key) {
                return Err("this manager's secrets key is not the cluster's; remove its secrets directory".into());
            }
            let protection = info.protection(&key).map_err(|e| e.to_string())?;
            m.keyring
                .install(key, &protection, info.generation)
                .map_err(|e| e.to_string())?;
            tracing::info!(autolock = info.autolock, "rewrapped this manager's secrets key");
            Ok(())
        }
        (keyring::Status::Unlocked, _) => Ok(()),
    }
}

/// One garbage collection pass on the leader.
async fn collect(m: &Manager) -> Result<(), String> {
    let secrets = store::list::<SecretSpec>(&m.sm);
    let sealed = store::list::<SealedSecret>(&m.sm);
    let configs = store::list::<ConfigSpec>(&m.sm);
    let config_meta = store::list::<ConfigMeta>(&m.sm);
    if secrets.is_empty() && sealed.is_empty() && configs.is_empty() && config_meta.is_empty() {
        return Ok(());
    }
    let stacks: Vec<Stack> = store::list::<Stack>(&m.sm).into_iter().map(|(s, _)| s).collect();
    let services: Vec<Service> = store::list::<Service>(&m.sm).into_iter().map(|(s, _)| s).collect();
    let tasks: Vec<Task> = store::list::<Task>(&m.sm).into_iter().map(|(t, _)| t).collect();
    let keep_unused = m.cluster().map_or(Settings::default().secret_history_limit, |c| {
        c.settings.secret_history_limit
    });
    let request = orphans(&Inventory {
        keep_unused: keep_unused as usize,
        secrets: &secrets,
        sealed: &sealed,
        configs: &configs,
        config_meta: &config_meta,
        stacks: &stacks,
        services: &services,
        tasks: &tasks,
    });
    if request.ops.is_empty() {
        return Ok(());
    }
    let removed: Vec<String> = request
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Delete { table, key } if table == SecretSpec::TABLE || table == ConfigSpec::TABLE => Some(format!(
                "{} {key}",
                if table == SecretSpec::TABLE { "secret" } else { "config" }
            )),
            _ => None,
        })
        .collect();
    match m.write_as_leader(request).await.map_err(|e| e.to_string())? {
        store::Response::Applied { .. } if !removed.is_empty() => {
            tracing::info!("removed what nothing uses any more: {}", removed.join(", "));
        }
        _ => {}
    }
    Ok(())
}

/// Milliseconds now (for routes).
pub(crate) fn now() -> UnixMillis {
    now_millis()
}

#[cfg(test)]
mod tests;
