//! Fetching a source's ref into the manager's own bare clone (`<data>/gitops/<source>.git`) with libgit2.
//!
//! The remote's refs are listed first, so that a missing branch is reported as such (with the branches there
//! are) instead of leaving an old commit in place; then only that ref is fetched. Credentials come from the
//! store through libgit2's callbacks: an SSH key (from memory, never written to disk) or an HTTPS token. SSH host
//! keys are checked against the daemon user's `~/.ssh/known_hosts` by libgit2, HTTPS certificates against the
//! system's CA store by OpenSSL.

use std::path::Path;
use std::sync::Once;

use super::SourceCredentials;

/// Where fetched commits are kept: a ref of our own, so nothing else in the clone moves.
const FETCHED: &str = "refs/swarm/fetched";

/// Why a fetch failed. Never quotes a credential.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    #[error("cannot prepare the local clone at {path}: {reason}")]
    Clone { path: String, reason: String },
    #[error("cannot reach {url}: {reason}")]
    Remote { url: String, reason: String },
    #[error("{url} refused the credentials: {reason}; check the source's --ssh-key or --token-file (`swarm source rm` and add it again to change them)")]
    Auth { url: String, reason: String },
    #[error("{url} has no branch or tag {reference:?}{}; check --ref", if .known.is_empty() { String::new() } else { format!(" (it has {})", .known.join(", ")) })]
    NoSuchRef {
        url: String,
        reference: String,
        known: Vec<String>,
    },
    #[error("cannot fetch {reference} from {url}: {reason}")]
    Fetch {
        url: String,
        reference: String,
        reason: String,
    },
}

/// Opens (or creates) the bare clone at `dir`.
pub fn open_clone(dir: &Path) -> Result<git2::Repository, FetchError> {
    let failed = |e: &dyn std::fmt::Display| FetchError::Clone {
        path: dir.display().to_string(),
        reason: e.to_string(),
    };
    if dir.exists() {
        return git2::Repository::open_bare(dir).map_err(|e| failed(&e.message()));
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| failed(&e))?;
    }
    git2::Repository::init_bare(dir).map_err(|e| failed(&e.message()))
}

/// Fetches `reference` of `url` into `repo` and returns the commit it points to.
pub fn fetch(
    repo: &git2::Repository,
    url: &str,
    reference: &str,
    credentials: Option<&SourceCredentials>,
) -> Result<git2::Oid, FetchError> {
    set_timeouts();
    let mut remote = repo.remote_anonymous(url).map_err(|e| FetchError::Remote {
        url: url.to_string(),
        reason: e.message().to_string(),
    })?;
    // 1. Which ref, and is it there?
    let attempts = std::cell::Cell::new(0);
    let wanted = {
        let connection = remote
            .connect_auth(git2::Direction::Fetch, Some(callbacks(credentials, &attempts)), None)
            .map_err(|e| classify(url, &e, attempts.get()))?;
        let heads = connection.list().map_err(|e| FetchError::Remote {
            url: url.to_string(),
            reason: e.message().to_string(),
        })?;
        let names: Vec<String> = heads.iter().map(|h| h.name().to_string()).collect();
        match resolve_ref(reference, &names) {
            Some(name) => name,
            None => {
                return Err(FetchError::NoSuchRef {
                    url: url.to_string(),
                    reference: reference.to_string(),
                    known: short_names(&names),
                })
            }
        }
    };
    // 2. Fetch that ref alone into our own ref.
    attempts.set(0);
    let mut options = git2::FetchOptions::new();
    options
        .remote_callbacks(callbacks(credentials, &attempts))
        .download_tags(git2::AutotagOption::None)
        .update_fetchhead(false);
    let refspec = format!("+{wanted}:{FETCHED}");
    remote
        .fetch(&[refspec.as_str()], Some(&mut options), None)
        .map_err(|e| match classify(url, &e, attempts.get()) {
            FetchError::Remote { reason, .. } => FetchError::Fetch {
                url: url.to_string(),
                reference: reference.to_string(),
                reason,
            },
            other => other,
        })?;
    repo.find_reference(FETCHED)
        .and_then(|r| r.peel_to_commit())
        .map(|c| c.id())
        .map_err(|e| FetchError::Fetch {
            url: url.to_string(),
            reference: reference.to_string(),
            reason: format!("{wanted} is not a commit: {}", e.message()),
        })
}

/// The remote ref that `reference` names: a full ref as given, else a branch, else a tag.
pub fn resolve_ref(reference: &str, remote_refs: &[String]) -> Option<String> {
    let candidates = if reference.starts_with("refs/") {
        vec![reference.to_string()]
    } else {
        vec![format!("refs/heads/{reference}"), format!("refs/tags/{reference}")]
    };
    candidates.into_iter().find(|c| remote_refs.iter().any(|r| r == c))
}

/// Branch and tag names, for the error that says which exist (at most 10).
fn short_names(refs: &[String]) -> Vec<String> {
    let mut names: Vec<String> = refs
        .iter()
        .filter(|r| !r.ends_with("^{}"))
        .filter_map(|r| r.strip_prefix("refs/heads/").or_else(|| r.strip_prefix("refs/tags/")))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    if names.len() > 10 {
        let more = names.len() - 10;
        names.truncate(10);
        names.push(format!("{more} more"));
    }
    names
}

fn classify(url: &str, e: &git2::Error, attempts: u32) -> FetchError {
    let reason = e.message().to_string();
    if e.code() == git2::ErrorCode::Auth || attempts > 1 {
        FetchError::Auth {
            url: url.to_string(),
            reason,
        }
    } else {
        FetchError::Remote {
            url: url.to_string(),
            reason,
        }
    }
}

/// Credentials for libgit2: offered once each (libgit2 asks again after a refusal, which would loop).
fn callbacks<'a>(
    credentials: Option<&'a SourceCredentials>,
    attempts: &'a std::cell::Cell<u32>,
) -> git2::RemoteCallbacks<'a> {
    let mut callbacks = git2::RemoteCallbacks::new();
    callbacks.credentials(move |_url, username, allowed| {
        attempts.set(attempts.get() + 1);
        if attempts.get() > 1 {
            return Err(git2::Error::new(
                git2::ErrorCode::Auth,
                git2::ErrorClass::Net,
                "the credentials were refused",
            ));
        }
        let ssh_key = credentials.and_then(|c| c.ssh_key.as_deref());
        let token = credentials.and_then(|c| c.token.as_deref());
        if allowed.contains(git2::CredentialType::SSH_KEY) {
            if let Some(key) = ssh_key {
                return git2::Cred::ssh_key_from_memory(username.unwrap_or("git"), None, key, None);
            }
        }
        if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) {
            if let Some(token) = token {
                return git2::Cred::userpass_plaintext(username.unwrap_or("x-access-token"), token);
            }
        }
        if allowed.contains(git2::CredentialType::USERNAME) {
            return git2::Cred::username(username.unwrap_or("git"));
        }
        Err(git2::Error::new(
            git2::ErrorCode::Auth,
            git2::ErrorClass::Net,
            "the repository asks for credentials and the source has none: add it with --ssh-key FILE or --token-file FILE",
        ))
    });
    callbacks
}

/// A fetch that hangs must not hold a source forever: 10 s to connect, 60 s without data.
fn set_timeouts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: libgit2's global options are set once, before this process's first fetch (the Once orders it
        // before any other git2 call made through this module).
        unsafe {
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(10_000);
            let _ = git2::opts::set_server_timeout_in_milliseconds(60_000);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitops::testing::commit;
    use crate::gitops::testing::repo_with;

    #[test]
    fn refs_resolve_as_branch_then_tag_or_as_given() {
        let refs: Vec<String> = [
            "HEAD",
            "refs/heads/main",
            "refs/tags/v1",
            "refs/tags/v1^{}",
            "refs/heads/v1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(resolve_ref("main", &refs).as_deref(), Some("refs/heads/main"));
        assert_eq!(resolve_ref("v1", &refs).as_deref(), Some("refs/heads/v1"));
        assert_eq!(resolve_ref("refs/tags/v1", &refs).as_deref(), Some("refs/tags/v1"));
        assert_eq!(resolve_ref("dev", &refs), None);
        assert_eq!(short_names(&refs), ["main", "v1"]);
    }

    #[test]
    fn fetches_a_file_url_and_follows_the_branch() {
        let (upstream_dir, upstream, first) = repo_with(&[("a.yml", "1")]);
        let url = format!("file://{}", upstream_dir.path().display());
        let local = tempfile::tempdir().unwrap();
        let clone = open_clone(&local.path().join("apps.git")).unwrap();
        assert_eq!(fetch(&clone, &url, "main", None).unwrap(), first);
        let second = commit(&upstream, &[("a.yml", "2")]);
        let clone = open_clone(&local.path().join("apps.git")).unwrap();
        assert_eq!(fetch(&clone, &url, "main", None).unwrap(), second);
        let err = fetch(&clone, &url, "dev", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{url} has no branch or tag \"dev\" (it has main); check --ref")
        );
        let err = fetch(&clone, "file:///nonexistent/repo", "main", None).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot reach file:///nonexistent/repo: "),
            "{err}"
        );
    }
}
