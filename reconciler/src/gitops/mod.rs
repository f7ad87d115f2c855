//! GitOps sources: the manager follows a branch of a git repository and keeps the stacks it holds applied.
//!
//! A [`Source`] names a repository, a ref and a folder; every stack file in that folder is one stack
//! ([`layout`]). On the leader, [`run`] syncs each source every interval, at once when its webhook or
//! `swarm source sync` asks: fetch (git2, in a blocking thread) → load and validate every stack at the commit
//! ([`snapshot`], the same loader as `swarm validate`, reading blobs through [`files`]) → plan against the live
//! cluster ([`crate::stacks::plan_live`]) → decide ([`status`], pure) → apply through the same path as
//! `swarm apply` ([`crate::stacks::apply_live`]) → record the [`SourceStatus`]. Only stacks whose own files
//! changed since they were last applied are applied again; a stack whose live state drifted from git is
//! re-applied when self-heal is on.
//!
//! Three tables: `sources` (what to follow; returned by the API), `source_credentials` (the webhook secret and
//! the git credentials; never returned by any route, never logged) and `source_status` (written by the leader's
//! loop only).

pub mod fetch;
pub mod files;
pub mod layout;
pub mod routes;
pub mod run;
pub mod snapshot;
pub mod status;
pub mod webhook;

#[cfg(test)]
pub(crate) mod testing;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use crate::cluster::UnixMillis;
use crate::store::Object;

/// The interval when none is given.
pub const DEFAULT_INTERVAL_MS: u64 = 60_000;
/// The shortest interval accepted.
pub const MIN_INTERVAL_MS: u64 = 1_000;

/// What a source follows and how. Holds no secret: the credentials are in [`SourceCredentials`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub name: String,
    /// `file:///srv/git/apps.git`, `https://host/org/repo.git`, `ssh://git@host/org/repo.git` or `git@host:org/repo`.
    pub repo: String,
    /// A branch or tag name, or a full ref (`refs/heads/main`).
    #[serde(rename = "ref")]
    pub reference: String,
    /// The folder that holds the stacks, inside the repository, without leading or trailing `/` (`""`: the root).
    pub path: String,
    pub interval_ms: u64,
    /// Remove what git no longer has: services, networks and volumes left out of a stack file, and the stacks whose
    /// file is gone.
    pub prune: bool,
    /// Apply what git says without being asked; off: the status says OutOfSync until `swarm source sync`.
    pub auto_sync: bool,
    /// With auto-sync: re-apply git's spec when the live stack drifted (a `service update` or `scale` by hand).
    pub self_heal: bool,
    /// Which credentials the fetch uses (the credentials themselves are in [`SourceCredentials`]).
    pub auth: AuthKind,
    /// The age recipients (`age1...`) whose keys the manager holds for this source: encrypt secret and config
    /// files to one of them (`age -r`). The keys themselves are in [`SourceCredentials`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub age_recipients: Vec<String>,
    pub created_at: UnixMillis,
}

impl Object for Source {
    const TABLE: &'static str = "sources";
    fn key(&self) -> String {
        self.name.clone()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    None,
    SshKey,
    Token,
}

/// A source's secrets: the webhook secret (generated at `swarm source add`) and the credentials git needs.
///
/// Never stored as they are: the store holds them sealed with the cluster's secrets key ([`SealedCredentials`],
/// as stack secrets are), so the Raft log, snapshots and redb files never hold them in plaintext, and a locked
/// manager (autolock) cannot read them. No route returns them; `Debug` shows no value; errors never quote them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCredentials {
    pub name: String,
    pub webhook_secret: String,
    /// A private key (OpenSSH or PEM) for `ssh://` and `git@host:` repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
    /// A token for `https://` repositories (sent as the password; the user is the URL's, or `x-access-token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// An age key file (`AGE-SECRET-KEY-1...` lines) that decrypts the source's `*.age` secret and config files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_key: Option<String>,
}

impl std::fmt::Debug for SourceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceCredentials")
            .field("name", &self.name)
            .field("webhook_secret", &"<redacted>")
            .field("ssh_key", &self.ssh_key.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("age_key", &self.age_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// [`SourceCredentials`] as the store holds them: sealed (AES-256-GCM) with the cluster's secrets key, bound to
/// the source's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedCredentials {
    pub name: String,
    pub sealed: crate::secrets::crypto::Sealed,
}

impl Object for SealedCredentials {
    const TABLE: &'static str = "source_credentials";
    fn key(&self) -> String {
        self.name.clone()
    }
}

impl SourceCredentials {
    /// The age identities that decrypt this source's encrypted files (none without `--age-key-file`).
    pub fn age_identities(&self) -> Result<Vec<swarm_specs::age::Identity>, String> {
        match &self.age_key {
            None => Ok(Vec::new()),
            Some(text) => swarm_specs::age::parse_identities(text).map_err(|e| format!("--age-key-file {e}")),
        }
    }

    fn context(name: &str) -> String {
        format!("source-credentials/{name}")
    }

    pub fn seal(&self, key: &crate::secrets::crypto::Key) -> Result<SealedCredentials, String> {
        let json = serde_json::to_vec(self).map_err(|e| format!("cannot encode the credentials: {e}"))?;
        let sealed = key
            .seal(&Self::context(&self.name), &json)
            .map_err(|e| format!("cannot seal the credentials of source {}: {e}", self.name))?;
        Ok(SealedCredentials {
            name: self.name.clone(),
            sealed,
        })
    }

    /// The credentials of source `name`, opened with this manager's key; `Ok(None)` when the source has none.
    pub fn read(m: &crate::manager::Manager, name: &str) -> Result<Option<SourceCredentials>, String> {
        let Some((stored, _)) = crate::store::get::<SealedCredentials>(&m.sm, name) else {
            return Ok(None);
        };
        let key = m.keyring.key().map_err(|e| e.to_string())?;
        let json = key
            .open(&Self::context(name), &stored.sealed)
            .map_err(|e| format!("the credentials of source {name}: {e}"))?;
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| format!("the credentials of source {name} do not decode: {e}"))
    }
}

/// Whether the cluster runs what git says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncState {
    Synced,
    OutOfSync,
    /// Not known yet (never fetched, or the fetch failed before anything was known).
    #[default]
    Unknown,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Synced => "Synced",
            SyncState::OutOfSync => "OutOfSync",
            SyncState::Unknown => "Unknown",
        }
    }
}

/// How the stack's services are doing, worst last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Health {
    Healthy,
    /// Tasks are being started or replaced.
    Progressing,
    /// Not in the cluster (never applied, or a service git has is not there).
    #[default]
    Missing,
    /// A rollback, a paused update, or tasks that cannot be placed.
    Degraded,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "Healthy",
            Health::Progressing => "Progressing",
            Health::Missing => "Missing",
            Health::Degraded => "Degraded",
        }
    }
}

/// The state of one stack of a source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackStatus {
    pub sync: SyncState,
    pub health: Health,
    /// What makes the health what it is: `service web_web: 1/2 tasks running`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health_message: String,
    /// The stack file in the repository.
    pub file: String,
    /// The commit whose files the stack runs: the last one applied (a commit that leaves the stack's files alone
    /// does not move it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_commit: Option<String>,
    /// A digest of every file the stack read at `applied_commit` (stack file, `.env`, secret and config files):
    /// a commit that leaves them alone leaves the stack alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<String>,
    /// The stack's revision after the last apply by this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Why it is out of sync, or what the last apply did: `drifted from git: service.web (update); ...`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Why the last sync could not apply the stack: the loader's diagnostics, an apply refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The loader's warnings at the last sync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub last_sync_at: UnixMillis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_at: Option<UnixMillis>,
}

/// What the leader's loop last saw of a source. Written by the loop only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub name: String,
    /// The commit the ref pointed to at the last successful fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_at: Option<UnixMillis>,
    /// Why the last sync failed as a whole (fetch, a missing path); the stacks keep their last known state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub stacks: BTreeMap<String, StackStatus>,
}

impl Object for SourceStatus {
    const TABLE: &'static str = "source_status";
    fn key(&self) -> String {
        self.name.clone()
    }
}

impl SourceStatus {
    /// The source's state in one word: OutOfSync if any stack is, Synced if all are, else Unknown.
    pub fn sync(&self) -> SyncState {
        if self.stacks.is_empty() {
            return if self.error.is_some() || self.commit.is_none() {
                SyncState::Unknown
            } else {
                SyncState::Synced
            };
        }
        self.stacks
            .values()
            .map(|s| s.sync)
            .max_by_key(|s| match s {
                SyncState::Synced => 0,
                SyncState::Unknown => 1,
                SyncState::OutOfSync => 2,
            })
            .unwrap_or_default()
    }

    /// The worst health of its stacks (Healthy without stacks).
    pub fn health(&self) -> Health {
        self.stacks.values().map(|s| s.health).max().unwrap_or(Health::Healthy)
    }
}

/// A source as `swarm source ls|inspect` shows it: what it follows and where it stands (no credentials).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceInfo {
    pub source: Source,
    pub status: SourceStatus,
    /// Where CI posts to trigger a sync: `POST https://MANAGER:PORT<webhook_path>`.
    pub webhook_path: String,
}

/// `POST /v1/sources`: a new source, with its credentials (never echoed back).
#[derive(Clone, Serialize, Deserialize)]
pub struct SourceCreate {
    pub name: String,
    pub repo: String,
    #[serde(rename = "ref", default = "default_ref")]
    pub reference: String,
    #[serde(default)]
    pub path: String,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    #[serde(default)]
    pub prune: bool,
    #[serde(default = "yes")]
    pub auto_sync: bool,
    #[serde(default = "yes")]
    pub self_heal: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The text of an age key file, for encrypted secret and config files in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_key: Option<String>,
}

impl std::fmt::Debug for SourceCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceCreate")
            .field("name", &self.name)
            .field("repo", &self.repo)
            .field("ref", &self.reference)
            .field("path", &self.path)
            .field("interval_ms", &self.interval_ms)
            .field("ssh_key", &self.ssh_key.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("age_key", &self.age_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

fn default_ref() -> String {
    "main".into()
}

fn default_interval() -> u64 {
    DEFAULT_INTERVAL_MS
}

fn yes() -> bool {
    true
}

/// The answer to `POST /v1/sources`: the only time the webhook secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceCreated {
    pub source: Source,
    pub webhook_secret: String,
    pub webhook_path: String,
}

/// The webhook route of a source.
pub fn webhook_path(name: &str) -> String {
    format!("/v1/sources/{name}/sync")
}

/// Checks a new source and splits it into what the API shows and the credentials it keeps to itself.
pub fn check_new_source(
    req: &SourceCreate,
    webhook_secret: String,
    now: UnixMillis,
) -> Result<(Source, SourceCredentials), String> {
    check_name(&req.name)?;
    let repo = req.repo.trim();
    check_repo_url(repo)?;
    let reference = req.reference.trim();
    check_ref(reference)?;
    let path = normalize_path(&req.path)?;
    if req.interval_ms < MIN_INTERVAL_MS {
        return Err(format!(
            "--interval {} ms is too short: give at least 1s (webhooks trigger a sync at once anyway)",
            req.interval_ms
        ));
    }
    let scheme = url_kind(repo);
    let auth = match (&req.ssh_key, &req.token) {
        (Some(_), Some(_)) => return Err("give --ssh-key or --token-file, not both".into()),
        (Some(key), None) => {
            if scheme != UrlKind::Ssh {
                return Err(format!(
                    "--ssh-key is for ssh repositories (ssh://... or git@host:path); {repo} is not one"
                ));
            }
            if key.trim().is_empty() {
                return Err("the --ssh-key file is empty".into());
            }
            AuthKind::SshKey
        }
        (None, Some(token)) => {
            if scheme != UrlKind::Https {
                return Err(format!(
                    "--token-file is for https:// repositories (a token is never sent in clear); {repo} is not one"
                ));
            }
            if token.trim().is_empty() {
                return Err("the --token-file file is empty".into());
            }
            AuthKind::Token
        }
        (None, None) => AuthKind::None,
    };
    let age_recipients = match &req.age_key {
        None => Vec::new(),
        Some(text) => swarm_specs::age::parse_identities(text)
            .map_err(|e| format!("--age-key-file {e}"))?
            .iter()
            .map(swarm_specs::age::Identity::recipient)
            .collect(),
    };
    let source = Source {
        name: req.name.clone(),
        repo: repo.to_string(),
        reference: reference.to_string(),
        path,
        interval_ms: req.interval_ms,
        prune: req.prune,
        auto_sync: req.auto_sync,
        self_heal: req.self_heal && req.auto_sync,
        auth,
        age_recipients,
        created_at: now,
    };
    let credentials = SourceCredentials {
        name: req.name.clone(),
        webhook_secret,
        ssh_key: req.ssh_key.clone(),
        token: req.token.as_ref().map(|t| t.trim().to_string()),
        age_key: req.age_key.clone(),
    };
    Ok((source, credentials))
}

/// A source name: what a stack name may be (it names the webhook route and the fetch directory too).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid source name {name:?}: use up to 64 letters, digits, `_` and `-`, starting with a letter or digit"
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UrlKind {
    File,
    Https,
    Http,
    Ssh,
    Git,
}

fn url_kind(url: &str) -> UrlKind {
    if url.starts_with("file://") || url.starts_with('/') {
        UrlKind::File
    } else if url.starts_with("https://") {
        UrlKind::Https
    } else if url.starts_with("http://") {
        UrlKind::Http
    } else if url.starts_with("git://") {
        UrlKind::Git
    } else {
        UrlKind::Ssh
    }
}

fn check_repo_url(url: &str) -> Result<(), String> {
    let how = "give file:///path/to/repo, https://host/org/repo.git, ssh://git@host/org/repo.git or git@host:org/repo";
    if url.is_empty() {
        return Err(format!("--repo is empty: {how}"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("--repo {url:?} contains spaces or control characters: {how}"));
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        if !["file", "https", "http", "ssh", "git"].contains(&scheme) {
            return Err(format!("--repo: unsupported scheme {scheme:?}: {how}"));
        }
        if scheme == "file" {
            if !rest.starts_with('/') {
                return Err(format!(
                    "--repo {url}: a file:// URL needs an absolute path (file:///srv/repo)"
                ));
            }
            return Ok(());
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if userinfo.contains(':') {
                // Say where, never echo the secret.
                return Err(
                    "--repo must not carry a password: put the token in a file and pass --token-file FILE \
                     (it is kept out of every output)"
                        .into(),
                );
            }
        }
        if authority.is_empty() {
            return Err(format!("--repo {url} has no host: {how}"));
        }
        return Ok(());
    }
    if url.starts_with('/') {
        return Ok(());
    }
    // scp-like: [user@]host:path
    match url.split_once(':') {
        Some((host, path)) if !host.is_empty() && !path.is_empty() && !host.contains('/') => Ok(()),
        _ => Err(format!("--repo {url:?} is not a repository URL: {how}")),
    }
}

fn check_ref(reference: &str) -> Result<(), String> {
    let bad = reference.is_empty()
        || reference.starts_with('-')
        || reference.starts_with('/')
        || reference.ends_with('/')
        || reference.ends_with(".lock")
        || reference.contains("..")
        || reference.contains("@{")
        || reference
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
    if bad {
        return Err(format!(
            "--ref {reference:?} is not a valid branch or tag name (e.g. main, v1.2, refs/heads/release)"
        ));
    }
    Ok(())
}

/// `stacks/`, `./stacks`, `/stacks` → `stacks`; `.`, `` and `/` → the root. `..` is refused.
pub fn normalize_path(path: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "--path {path:?} climbs out of the repository; give a folder inside it, e.g. stacks/"
                ))
            }
            other => parts.push(other),
        }
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(repo: &str) -> SourceCreate {
        SourceCreate {
            name: "apps".into(),
            repo: repo.into(),
            reference: "main".into(),
            path: "./stacks/".into(),
            interval_ms: 60_000,
            prune: false,
            auto_sync: true,
            self_heal: true,
            ssh_key: None,
            token: None,
            age_key: None,
        }
    }

    #[test]
    fn a_new_source_is_checked_and_its_secrets_kept_apart() {
        let mut req = create("https://git.example.com/org/apps.git");
        req.token = Some("tok-123\n".into());
        let (source, creds) = check_new_source(&req, "s3cret".into(), 7).unwrap();
        assert_eq!(source.path, "stacks");
        assert_eq!(source.auth, AuthKind::Token);
        assert_eq!(creds.token.as_deref(), Some("tok-123"));
        let shown = serde_json::to_string(&source).unwrap();
        assert!(!shown.contains("tok-123") && !shown.contains("s3cret"), "{shown}");
        let debug = format!("{creds:?} {req:?}");
        assert!(!debug.contains("tok-123") && !debug.contains("s3cret"), "{debug}");
    }

    #[test]
    fn an_age_key_is_kept_with_the_credentials_and_only_its_recipient_shown() {
        let id = swarm_specs::age::Identity::generate(&ring::rand::SystemRandom::new());
        let mut req = create("file:///srv/apps");
        req.age_key = Some(format!("# created by age-keygen\n{}\n", id.to_secret_string()));
        let (source, creds) = check_new_source(&req, "s".into(), 0).unwrap();
        assert_eq!(source.age_recipients, vec![id.recipient()]);
        assert_eq!(creds.age_identities().unwrap()[0].recipient(), id.recipient());
        let shown = format!("{} {creds:?} {req:?}", serde_json::to_string(&source).unwrap());
        assert!(!shown.contains(&id.to_secret_string()), "{shown}");

        req.age_key = Some("# comment\nAGE-SECRET-KEY-1NOTAKEY\n".into());
        let err = check_new_source(&req, "s".into(), 0).unwrap_err();
        assert!(err.starts_with("--age-key-file line 2: "), "{err}");
    }

    #[test]
    fn bad_sources_are_refused_with_what_to_do() {
        let refuse = |req: SourceCreate| check_new_source(&req, "s".into(), 0).unwrap_err();
        let err = refuse(create("https://me:hunter2@example.com/x.git"));
        assert!(err.contains("--token-file") && !err.contains("hunter2"), "{err}");
        let mut req = create("file:///srv/apps");
        req.token = Some("t".into());
        assert!(refuse(req).contains("--token-file is for https://"));
        let mut req = create("https://example.com/x.git");
        req.ssh_key = Some("k".into());
        assert!(refuse(req).contains("--ssh-key is for ssh repositories"));
        let mut req = create("file:///srv/apps");
        req.path = "../etc".into();
        assert!(refuse(req).contains("climbs out of the repository"));
        let mut req = create("file:///srv/apps");
        req.reference = "main branch".into();
        assert!(refuse(req).contains("not a valid branch or tag name"));
        let mut req = create("file:///srv/apps");
        req.interval_ms = 10;
        assert!(refuse(req).contains("too short"));
        let mut req = create("file:///srv/apps");
        req.name = "../x".into();
        assert!(refuse(req).contains("invalid source name"));
        assert!(refuse(create("ftp://x/y")).contains("unsupported scheme"));
        assert!(refuse(create("file://relative")).contains("absolute path"));
        for ok in [
            "file:///srv/apps",
            "/srv/apps.git",
            "git@github.com:org/apps.git",
            "ssh://git@host:22/org/apps.git",
        ] {
            check_new_source(&create(ok), "s".into(), 0).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn a_source_sums_up_its_stacks() {
        let mut status = SourceStatus {
            name: "apps".into(),
            commit: Some("c".into()),
            ..SourceStatus::default()
        };
        assert_eq!(status.sync(), SyncState::Synced);
        let stack = |sync, health| StackStatus {
            sync,
            health,
            ..StackStatus::default()
        };
        status
            .stacks
            .insert("a".into(), stack(SyncState::Synced, Health::Healthy));
        status
            .stacks
            .insert("b".into(), stack(SyncState::OutOfSync, Health::Progressing));
        assert_eq!(status.sync(), SyncState::OutOfSync);
        assert_eq!(status.health(), Health::Progressing);
        status
            .stacks
            .insert("c".into(), stack(SyncState::Synced, Health::Degraded));
        assert_eq!(status.health(), Health::Degraded);
    }
}
