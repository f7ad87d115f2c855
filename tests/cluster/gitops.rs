//! GitOps sources on a live cluster, with a real git repository made in the test (file:// remote): a commit
//! converges, a change rolls, `git revert` goes back, an invalid commit is OutOfSync with the loader's diagnostic
//! and applies nothing, a commit to one stack leaves another's tasks alone, a change made by hand is healed, and
//! the webhook syncs with the secret (bearer, GitHub signature, GitLab token) on any manager and refuses without.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::wait_until;
use crate::harness::Cluster;
use crate::services::tasks;
use crate::services::wait_running;

/// A process-driver stack: `replicas` tasks of one service whose environment says `version`.
pub fn stack(version: &str, replicas: u32) -> String {
    format!(
        r#"services:
  web:
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    x-swarm: {{driver: process}}
    stop_grace_period: 2s
    environment:
      VERSION: {version}
    deploy:
      replicas: {replicas}
"#
    )
}

/// A git working tree with its own identity (the machine's git config is not needed).
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Repo {
        let repo = Repo {
            dir: tempfile::Builder::new()
                .prefix("swarm-gitops-")
                .tempdir()
                .expect("temp dir"),
        };
        repo.git(&["init", "--quiet", "--initial-branch", "main"]);
        repo
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    #[track_caller]
    pub fn git(&self, args: &[&str]) -> String {
        let output = Command::new("git")
            .arg("-C")
            .arg(self.dir.path())
            .args(["-c", "user.name=swarm test", "-c", "user.email=test@swarm.invalid"])
            .args(["-c", "commit.gpgsign=false"])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("run git");
        assert!(
            output.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    pub fn write(&self, path: &str, text: &str) {
        let path = self.dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    /// Commits everything; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "-m", message]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }
}

/// The source's status as `swarm source inspect` prints it (JSON).
pub fn inspect(c: &Cluster, manager: &str, source: &str) -> Result<Value, String> {
    let run = c.swarm(manager, &["source", "inspect", source]);
    if run.code != 0 {
        return Err(run.show());
    }
    let list: Vec<Value> = serde_json::from_str(&run.stdout).map_err(|e| format!("{e}: {}", run.stdout))?;
    list.into_iter().next().ok_or_else(|| run.show())
}

/// Waits until `stack` of `source` is Synced and Healthy at `commit`.
pub fn wait_synced(c: &Cluster, manager: &str, source: &str, stack: &str, commit: &str, limit: Duration) -> Value {
    wait_until(
        &format!("stack {stack} of source {source} is Synced and Healthy at {commit:.10}"),
        limit,
        || {
            let info = inspect(c, manager, source)?;
            let s = &info["status"]["stacks"][stack];
            if s["sync"] == "Synced" && s["health"] == "Healthy" && s["applied_commit"] == commit {
                Ok(info)
            } else {
                Err(serde_json::to_string_pretty(&info["status"]).unwrap_or_default())
            }
        },
    )
}

/// Ids of the running tasks of `service`.
fn running_ids(all: &[Value], service: &str) -> BTreeSet<String> {
    all.iter()
        .filter(|t| t["service"] == service && t["desired_state"] == "running" && t["status"]["state"] == "running")
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect()
}

/// Waits until `service` runs exactly `n` tasks, all with `VERSION=version`.
fn wait_version(c: &Cluster, service: &str, version: &str, n: usize) -> BTreeSet<String> {
    wait_until(
        &format!("{service} runs {n} tasks of {version}"),
        Duration::from_secs(20),
        || {
            let all = tasks(c, "m1")?;
            let live: Vec<&Value> = all
                .iter()
                .filter(|t| t["service"] == service && t["desired_state"] == "running")
                .collect();
            let good = live
                .iter()
                .filter(|t| t["status"]["state"] == "running" && t["spec"]["env"]["VERSION"] == version)
                .count();
            if good == n && live.len() == n {
                Ok(running_ids(&all, service))
            } else {
                Err(format!(
                    "{good} of {} live tasks run {version}: {:?}",
                    live.len(),
                    live.iter()
                        .map(|t| format!("{} {} {}", t["slot"], t["status"]["state"], t["spec"]["env"]["VERSION"]))
                        .collect::<Vec<_>>()
                ))
            }
        },
    )
}

#[test]
fn a_source_follows_git_rolls_reverts_refuses_bad_commits_and_heals_drift() {
    let mut c = Cluster::new();
    c.init("m1");
    c.wait_all_ready();
    let repo = Repo::new();
    repo.write("stacks/web.yml", &stack("v1", 2));
    repo.write("stacks/api/docker-stack.yml", &stack("a1", 1));
    repo.write("README.md", "not a stack\n");
    let first = repo.commit("web v1, api a1");

    // The source: every stack under stacks/; a short interval so that drift is healed within the test.
    let added = c
        .swarm(
            "m1",
            &[
                "source",
                "add",
                "apps",
                "--repo",
                &repo.url(),
                "--path",
                "stacks/",
                "--interval",
                "1s",
            ],
        )
        .ok();
    assert!(added.stdout.contains("Source apps added"), "{}", added.show());
    assert!(added.stdout.contains("POST https://"), "{}", added.show());
    assert!(added.stdout.contains("/v1/sources/apps/sync"), "{}", added.show());

    // The first commit converges: both stacks Synced and Healthy at it.
    wait_version(&c, "web_web", "v1", 2);
    wait_synced(&c, "m1", "apps", "web", &first, Duration::from_secs(20));
    wait_synced(&c, "m1", "apps", "api", &first, Duration::from_secs(20));
    let api_tasks = wait_version(&c, "api_web", "a1", 1);
    let ls = c.run("m1", "source ls").ok();
    assert!(
        ls.stdout.contains("apps") && ls.stdout.contains("Synced"),
        "{}",
        ls.show()
    );
    let stacks = c.run("m1", "stack ls").ok();
    let web_row = stacks
        .stdout
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_default()
        .to_string();
    assert!(
        stacks
            .stdout
            .lines()
            .next()
            .unwrap_or_default()
            .ends_with("SYNC     HEALTH    COMMIT")
            && web_row.contains("Synced")
            && web_row.contains("Healthy")
            && web_row.contains(&first[..10]),
        "{}",
        stacks.show()
    );

    // A change to web rolls web's tasks; api's tasks are left alone (same task ids).
    repo.write("stacks/web.yml", &stack("v2", 2));
    let second = repo.commit("web v2");
    let sync = c.run("m1", "source sync apps").ok();
    assert!(
        sync.stdout.contains(&format!("at commit {}", &second[..10])),
        "{}",
        sync.show()
    );
    wait_version(&c, "web_web", "v2", 2);
    wait_synced(&c, "m1", "apps", "web", &second, Duration::from_secs(20));
    let history = c.run("m1", "stack history web").ok();
    assert!(history.stdout.contains(&format!("git {second}")), "{}", history.show());
    assert!(history.stdout.contains("source apps"), "{}", history.show());
    let info = inspect(&c, "m1", "apps").unwrap();
    assert_eq!(
        info["status"]["stacks"]["api"]["applied_commit"], first,
        "api's files did not change"
    );
    assert_eq!(
        running_ids(&tasks(&c, "m1").unwrap(), "api_web"),
        api_tasks,
        "api's tasks restarted"
    );

    // `git revert` is a rollback.
    repo.git(&["revert", "--no-edit", "HEAD"]);
    let reverted = repo.head();
    c.run("m1", "source sync apps").ok();
    let web_tasks = wait_version(&c, "web_web", "v1", 2);
    wait_synced(&c, "m1", "apps", "web", &reverted, Duration::from_secs(20));

    // An invalid commit: OutOfSync with the loader's diagnostic, nothing applied, the sync exits 1.
    repo.write(
        "stacks/web.yml",
        &stack("v3", 2).replace(
            "    stop_grace_period: 2s\n",
            "    stop_grace_period: 2s\n    imgae: busybox\n",
        ),
    );
    let bad = repo.commit("a typo");
    let failed = c.run("m1", "source sync apps");
    assert_eq!(failed.code, 1, "{}", failed.show());
    assert!(
        failed
            .stdout
            .contains("stacks/web.yml:6:5: error: services.web.imgae: unknown key \"imgae\""),
        "{}",
        failed.show()
    );
    let info = inspect(&c, "m1", "apps").unwrap();
    let web = &info["status"]["stacks"]["web"];
    assert_eq!(web["sync"], "OutOfSync", "{info:#}");
    assert_eq!(info["status"]["commit"], bad, "{info:#}");
    assert_eq!(web["applied_commit"], reverted, "{info:#}");
    assert!(
        web["error"]
            .as_str()
            .unwrap_or_default()
            .contains("did you mean \"image\"?"),
        "{info:#}"
    );
    let pretty = c.run("m1", "source inspect --pretty apps").ok();
    assert!(pretty.stdout.contains("unknown key \"imgae\""), "{}", pretty.show());
    assert_eq!(
        running_ids(&tasks(&c, "m1").unwrap(), "web_web"),
        web_tasks,
        "an invalid commit restarted web"
    );

    // The fix is fetched by itself within the interval (no `source sync`). Its web.yml is the one running, so
    // nothing is applied: the stack is Synced, still at the commit that last changed what it runs.
    repo.write("stacks/web.yml", &stack("v1", 2));
    let fixed = repo.commit("fix the typo");
    wait_until(
        "the fix is fetched and web is Synced again",
        Duration::from_secs(20),
        || {
            let info = inspect(&c, "m1", "apps")?;
            let web = &info["status"]["stacks"]["web"];
            if info["status"]["commit"] == fixed && web["sync"] == "Synced" && web["error"].is_null() {
                Ok(())
            } else {
                Err(format!("{info:#}"))
            }
        },
    );
    wait_synced(&c, "m1", "apps", "web", &reverted, Duration::from_secs(20));
    assert_eq!(
        running_ids(&tasks(&c, "m1").unwrap(), "web_web"),
        web_tasks,
        "the fix changed nothing live"
    );

    // Drift: a service updated by hand is put back as git says within an interval (self-heal).
    c.run("m1", "service update --env-add VERSION=by-hand --detach web_web")
        .ok();
    wait_until(
        "self-heal reverts the change made by hand",
        Duration::from_secs(20),
        || {
            let history = c.run("m1", "stack history web");
            let healed = history.stdout.lines().filter(|l| l.contains("source apps")).count();
            if healed >= 4 {
                Ok(())
            } else {
                Err(history.show())
            }
        },
    );
    wait_version(&c, "web_web", "v1", 2);
    // Healed from the commit fetched then.
    wait_synced(&c, "m1", "apps", "web", &fixed, Duration::from_secs(20));

    // Removing the source leaves its stacks running.
    c.run("m1", "source rm apps").ok();
    let ls = c.run("m1", "source ls").ok();
    assert!(!ls.stdout.contains("apps"), "{}", ls.show());
    wait_running(&c, "m1", "web_web", 2, &[], Duration::from_secs(5));
}

#[test]
fn a_webhook_syncs_with_the_secret_on_any_manager_and_is_refused_without() {
    let mut c = Cluster::new();
    c.init("m1");
    c.join_manager("m2");
    c.wait_all_ready();
    let leader = c.leader();
    let follower = if leader == "m1" { "m2" } else { "m1" };
    let repo = Repo::new();
    repo.write("web.yml", &stack("v1", 1));
    let first = repo.commit("v1");
    // An hour between fetches: only the webhook can explain a quick sync.
    let secret = c
        .swarm(
            "m1",
            &[
                "source",
                "add",
                "hooked",
                "--repo",
                &repo.url(),
                "--interval",
                "1h",
                "--quiet",
            ],
        )
        .ok()
        .stdout
        .trim()
        .to_string();
    assert_eq!(secret.len(), 25, "the secret is printed alone with --quiet: {secret:?}");
    wait_synced(&c, "m1", "hooked", "web", &first, Duration::from_secs(20));
    let path = "/v1/sources/hooked/sync";
    let push = r#"{"ref":"refs/heads/main","after":"0000000000000000000000000000000000000000"}"#;

    // Wrong or missing secrets: 401, and nothing is said about the secret.
    for headers in [
        vec!["Authorization: Bearer wrong".to_string()],
        vec![],
        vec!["X-Gitlab-Token: nope".to_string()],
        vec![format!("X-Hub-Signature-256: sha256={}", "0".repeat(64))],
    ] {
        for manager in [&leader, follower] {
            let (code, body) = c.post_anonymous(manager, path, &headers, push).unwrap();
            assert_eq!(code, 401, "{headers:?} on {manager}: {body}");
            assert!(!body.contains(&secret), "{body}");
        }
    }
    // A caller without a certificate gets no operator route, even through a follower. (No body: a route that never
    // reads one may reset the HTTP/2 stream while curl still sends it.)
    let (code, body) = c.post_anonymous(follower, "/v1/nodes/nobody/promote", &[], "").unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("needs a manager certificate"), "{body}");

    // The bearer secret, on the follower: the leader syncs at once.
    repo.write("web.yml", &stack("v2", 1));
    let second = repo.commit("v2");
    let bearer = vec![format!("Authorization: Bearer {secret}")];
    let (code, body) = c.post_anonymous(follower, path, &bearer, push).unwrap();
    assert_eq!(code, 202, "{body}");
    wait_synced(&c, "m1", "hooked", "web", &second, Duration::from_secs(20));

    // GitHub's signature of the push payload, on the leader.
    repo.write("web.yml", &stack("v3", 1));
    let third = repo.commit("v3");
    let signature = format!(
        "X-Hub-Signature-256: {}",
        swarm_reconciler::gitops::webhook::github_signature(&secret, push.as_bytes())
    );
    let github = vec![
        signature,
        "X-GitHub-Event: push".to_string(),
        "Content-Type: application/json".to_string(),
    ];
    let (code, body) = c.post_anonymous(&leader, path, &github, push).unwrap();
    assert_eq!(code, 202, "{body}");
    wait_synced(&c, "m1", "hooked", "web", &third, Duration::from_secs(20));

    // GitLab's token.
    repo.write("web.yml", &stack("v4", 1));
    let fourth = repo.commit("v4");
    let gitlab = vec![
        format!("X-Gitlab-Token: {secret}"),
        "X-Gitlab-Event: Push Hook".to_string(),
    ];
    let (code, body) = c.post_anonymous(follower, path, &gitlab, push).unwrap();
    assert_eq!(code, 202, "{body}");
    wait_synced(&c, "m1", "hooked", "web", &fourth, Duration::from_secs(20));

    // The secret is stored sealed: no file of either manager (Raft log and state included) holds it.
    for node in ["m1", "m2"] {
        let mut files = Vec::new();
        crate::secrets::files_under(&crate::secrets::node_dir(&c, node), &mut files);
        for path in files {
            let Ok(bytes) = std::fs::read(&path) else { continue };
            assert!(
                crate::secrets::find_any(&bytes, &[secret.as_bytes().to_vec()]).is_none(),
                "the webhook secret is in {}",
                path.display()
            );
        }
    }
}
