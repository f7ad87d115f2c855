//! `swarm source ...`: GitOps sources — the manager follows a git branch and keeps the stacks in it applied.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use swarm_reconciler::cluster::now_millis;
use swarm_reconciler::gitops::Source;
use swarm_reconciler::gitops::SourceCreate;
use swarm_reconciler::gitops::SourceCreated;
use swarm_reconciler::gitops::SourceInfo;
use swarm_reconciler::gitops::SourceStatus;
use swarm_reconciler::routes::StackSummary;
use swarm_reconciler::wire::Empty;
use swarm_reconciler::wire::Info;

use crate::client::Client;
use crate::node::url_segment;
use crate::service::ago;
use crate::service::table;

#[derive(clap::Subcommand)]
pub enum SourceCommand {
    /// Follow a git repository: each stack file (or folder with a docker-stack.yml) under --path is a stack, applied
    /// and kept as git says. Prints the webhook secret once.
    Add {
        name: String,
        /// file:///path, https://host/org/repo.git, ssh://git@host/org/repo.git or git@host:org/repo.
        #[arg(long)]
        repo: String,
        /// Branch or tag to follow.
        #[arg(long = "ref", default_value = "main")]
        reference: String,
        /// The folder holding the stacks (default: the repository's root).
        #[arg(long, default_value = "")]
        path: String,
        /// How often to fetch (webhooks and `swarm source sync` fetch at once).
        #[arg(long, default_value = "1m", value_name = "DURATION")]
        interval: String,
        /// Remove what git no longer has (services left out of a file, stacks whose file is gone).
        #[arg(long)]
        prune: bool,
        /// Only apply on `swarm source sync`; otherwise the status shows OutOfSync.
        #[arg(long)]
        no_auto_sync: bool,
        /// Leave changes made by hand (`service update`, `scale`) until the next commit; they show as OutOfSync.
        #[arg(long)]
        no_self_heal: bool,
        /// Private key for an ssh repository (the host must be in ~/.ssh/known_hosts of the daemon's user).
        #[arg(long, value_name = "FILE", conflicts_with = "token_file")]
        ssh_key: Option<PathBuf>,
        /// File holding a token for an https repository.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// age key file (`age-keygen -o key.txt`) that decrypts the repository's `*.age` secret and config files.
        /// The manager keeps it sealed with the cluster's secrets key; encrypt files to the recipient it prints.
        #[arg(long, value_name = "FILE")]
        age_key_file: Option<PathBuf>,
        /// Print only the webhook secret.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List sources with their commit, sync and health.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show sources in detail (JSON, or --pretty): each stack's sync, health, commit and errors.
    Inspect {
        #[arg(required = true)]
        sources: Vec<String>,
        #[arg(long)]
        pretty: bool,
    },
    /// Stop following sources (their stacks keep running; `swarm stack rm` removes a stack).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        sources: Vec<String>,
    },
    /// Fetch and apply now, even without auto-sync; waits and prints each stack's state (exit 1 on a failure).
    Sync { name: String },
}

pub async fn run(client: &Client, cmd: SourceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SourceCommand::Add {
            name,
            repo,
            reference,
            path,
            interval,
            prune,
            no_auto_sync,
            no_self_heal,
            ssh_key,
            token_file,
            age_key_file,
            quiet,
        } => {
            let interval_ms = u64::try_from(
                swarm_specs::units::parse_duration(&interval)
                    .with_context(|| format!("--interval {interval:?}"))?
                    .as_millis(),
            )?;
            let read = |flag: &str, file: &PathBuf| {
                std::fs::read_to_string(file).with_context(|| format!("cannot read {flag} {}", file.display()))
            };
            let req = SourceCreate {
                name,
                repo,
                reference,
                path,
                interval_ms,
                prune,
                auto_sync: !no_auto_sync,
                self_heal: !no_self_heal,
                ssh_key: ssh_key.as_ref().map(|f| read("--ssh-key", f)).transpose()?,
                token: token_file.as_ref().map(|f| read("--token-file", f)).transpose()?,
                age_key: age_key_file.as_ref().map(|f| read("--age-key-file", f)).transpose()?,
            };
            let created: SourceCreated = client.post("/v1/sources", &req).await?;
            if quiet {
                println!("{}", created.webhook_secret);
            } else {
                let manager = client
                    .get::<Info>("/v1/info")
                    .await
                    .ok()
                    .filter(|i| i.is_manager && !i.node_addr.is_empty())
                    .map(|i| i.node_addr)
                    .unwrap_or_else(|| "MANAGER:2377".into());
                print!("{}", format_added(&created, &manager));
            }
            Ok(ExitCode::SUCCESS)
        }
        SourceCommand::Ls { quiet } => {
            let list: Vec<SourceInfo> = client.get("/v1/sources").await?;
            if quiet {
                for s in &list {
                    println!("{}", s.source.name);
                }
            } else {
                print!("{}", format_sources(&list, now_millis()));
            }
            Ok(ExitCode::SUCCESS)
        }
        SourceCommand::Inspect { sources, pretty } => {
            let mut found = Vec::new();
            for name in &sources {
                found.push(
                    client
                        .get::<SourceInfo>(&format!("/v1/sources/{}", url_segment(name)))
                        .await?,
                );
            }
            if pretty {
                for info in &found {
                    print!("{}", format_pretty(info, now_millis()));
                }
            } else {
                println!("{}", serde_json::to_string_pretty(&found)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        SourceCommand::Rm { sources } => {
            let mut failed = false;
            for name in &sources {
                match client
                    .delete::<Empty>(&format!("/v1/sources/{}", url_segment(name)))
                    .await
                {
                    Ok(_) => println!("{name}"),
                    Err(e) => {
                        eprintln!("Error: {name}: {e:#}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        SourceCommand::Sync { name } => {
            let info: SourceInfo = client
                .post(&format!("/v1/sources/{}/sync", url_segment(&name)), &Empty {})
                .await?;
            print!("{}", format_sync(&info.status));
            let failed = info.status.error.is_some() || info.status.stacks.values().any(|s| s.error.is_some());
            Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
    }
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}

fn format_added(created: &SourceCreated, manager: &str) -> String {
    let s = &created.source;
    let mut how = vec![format!("every {}", human_ms(s.interval_ms))];
    if s.auto_sync {
        how.push("auto-sync".into());
    } else {
        how.push("sync on request only".into());
    }
    if s.self_heal {
        how.push("self-heal".into());
    }
    if s.prune {
        how.push("prune".into());
    }
    format!(
        "Source {name} added: it follows {reference} of {repo} ({path}; {how}).\n\
         Webhook for CI or your git host (no client certificate needed):\n  \
         POST https://{manager}{path_}\n\
         Secret, shown only now (as `Authorization: Bearer <secret>`, GitHub's webhook secret or GitLab's secret token):\n  \
         {secret}\n\
         {age}The first sync starts now; `swarm source inspect --pretty {name}` shows how it went.\n",
        name = s.name,
        reference = s.reference,
        repo = s.repo,
        path = if s.path.is_empty() {
            "stacks at the repository's root".to_string()
        } else {
            format!("stacks in {}/", s.path)
        },
        how = how.join(", "),
        path_ = created.webhook_path,
        secret = created.webhook_secret,
        age = if s.age_recipients.is_empty() {
            String::new()
        } else {
            format!(
                "Encrypted files (*.age) are decrypted with the key of {}: `age -r RECIPIENT -o FILE.age FILE`.\n",
                s.age_recipients.join(", ")
            )
        },
    )
}

fn human_ms(ms: u64) -> String {
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

/// `source ls`: NAME, REPO, REF, COMMIT, STACKS, SYNC, HEALTH, LAST SYNC, sorted by name.
fn format_sources(list: &[SourceInfo], now: u64) -> String {
    let mut list: Vec<&SourceInfo> = list.iter().collect();
    list.sort_by(|a, b| a.source.name.cmp(&b.source.name));
    let mut rows = vec![
        ["NAME", "REPO", "REF", "COMMIT", "STACKS", "SYNC", "HEALTH", "LAST SYNC"]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    ];
    for info in list {
        let st = &info.status;
        rows.push(vec![
            info.source.name.clone(),
            info.source.repo.clone(),
            info.source.reference.clone(),
            st.commit.as_deref().map(short).unwrap_or("-").to_string(),
            st.stacks.len().to_string(),
            if st.error.is_some() {
                "Error".to_string()
            } else {
                st.sync().as_str().to_string()
            },
            st.health().as_str().to_string(),
            st.last_sync_at.map_or_else(|| "never".to_string(), |t| ago(now, t)),
        ]);
    }
    table(&rows)
}

/// `source inspect --pretty`.
fn format_pretty(info: &SourceInfo, now: u64) -> String {
    let s: &Source = &info.source;
    let st = &info.status;
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14}{v}\n"));
    line("Name:", s.name.clone());
    line("Repository:", s.repo.clone());
    line("Ref:", s.reference.clone());
    line(
        "Path:",
        if s.path.is_empty() {
            "/".into()
        } else {
            format!("{}/", s.path)
        },
    );
    line("Interval:", human_ms(s.interval_ms));
    line(
        "Policy:",
        format!(
            "auto-sync {}, self-heal {}, prune {}",
            on(s.auto_sync),
            on(s.self_heal),
            on(s.prune)
        ),
    );
    line("Webhook:", format!("POST {}", info.webhook_path));
    if !s.age_recipients.is_empty() {
        line(
            "age:",
            format!("decrypts files encrypted to {}", s.age_recipients.join(", ")),
        );
    }
    line("Commit:", st.commit.clone().unwrap_or_else(|| "-".into()));
    line(
        "Last sync:",
        st.last_sync_at.map_or_else(|| "never".to_string(), |t| ago(now, t)),
    );
    if let Some(e) = &st.error {
        line("Error:", e.clone());
    }
    out.push_str(&format_stack_rows(st));
    for (name, stack) in &st.stacks {
        if let Some(e) = &stack.error {
            out.push_str(&format!("\n{name}: error:\n{}\n", indent(e, 2)));
        } else if !stack.message.is_empty() && stack.sync != swarm_reconciler::gitops::SyncState::Synced {
            out.push_str(&format!("\n{name}: {}\n", stack.message));
        }
    }
    out.push('\n');
    out
}

fn on(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|l| format!("{pad}{l}\n"))
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// STACK, FILE, SYNC, HEALTH, COMMIT, DETAIL.
fn format_stack_rows(st: &SourceStatus) -> String {
    if st.stacks.is_empty() {
        return "\nNo stacks.\n".into();
    }
    let mut rows = vec![["STACK", "FILE", "SYNC", "HEALTH", "COMMIT", "DETAIL"]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()];
    for (name, s) in &st.stacks {
        let detail = if s.error.is_some() {
            "error (see below)".to_string()
        } else if s.sync != swarm_reconciler::gitops::SyncState::Synced {
            "out of sync (see below)".to_string()
        } else {
            s.health_message.clone()
        };
        rows.push(vec![
            name.clone(),
            s.file.clone(),
            s.sync.as_str().to_string(),
            s.health.as_str().to_string(),
            s.applied_commit.as_deref().map(short).unwrap_or("-").to_string(),
            detail,
        ]);
    }
    format!("\n{}", table(&rows))
}

/// `source sync`: where each stack stands after the sync.
fn format_sync(st: &SourceStatus) -> String {
    let mut out = String::new();
    if let Some(e) = &st.error {
        out.push_str(&format!("Error: source {}: {e}\n", st.name));
    } else if let Some(c) = &st.commit {
        out.push_str(&format!("Source {} is at commit {}\n", st.name, short(c)));
    }
    for (name, s) in &st.stacks {
        let mut line = format!("  {name}: {} {}", s.sync.as_str(), s.health.as_str());
        if let Some(c) = &s.applied_commit {
            line.push_str(&format!(" at {}", short(c)));
        }
        if !s.message.is_empty() {
            line.push_str(&format!(" — {}", s.message));
        }
        out.push_str(&line);
        out.push('\n');
        if let Some(e) = &s.error {
            out.push_str(&format!("{}\n", indent(e, 4)));
        }
    }
    out
}

/// SYNC, HEALTH and COMMIT of each stack a source applies, by stack name (for `swarm stack ls`); empty when there
/// are no sources (or the daemon predates them).
pub async fn stack_columns(client: &Client) -> BTreeMap<String, [String; 3]> {
    let Ok(list) = client.get::<Vec<SourceInfo>>("/v1/sources").await else {
        return BTreeMap::new();
    };
    list.iter()
        .flat_map(|info| info.status.stacks.iter())
        .map(|(name, s)| {
            (
                name.clone(),
                [
                    s.sync.as_str().to_string(),
                    s.health.as_str().to_string(),
                    s.applied_commit.as_deref().map(short).unwrap_or("-").to_string(),
                ],
            )
        })
        .collect()
}

/// `stack ls` when there are sources: NAME, SERVICES, REVISION, UPDATED as without them, then SYNC, HEALTH and
/// COMMIT (`-` for a stack no source applies), sorted by name.
pub fn format_stacks(list: &[StackSummary], git: &BTreeMap<String, [String; 3]>, now: u64) -> String {
    let mut list: Vec<&StackSummary> = list.iter().collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows = vec![["NAME", "SERVICES", "REVISION", "UPDATED", "SYNC", "HEALTH", "COMMIT"]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()];
    let none = ["-".to_string(), "-".to_string(), "-".to_string()];
    for s in list {
        let mut row = vec![
            s.name.clone(),
            s.services.to_string(),
            s.revision.to_string(),
            ago(now, s.updated_at),
        ];
        row.extend(git.get(&s.name).unwrap_or(&none).iter().cloned());
        rows.push(row);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use swarm_reconciler::gitops::AuthKind;
    use swarm_reconciler::gitops::Health;
    use swarm_reconciler::gitops::StackStatus;
    use swarm_reconciler::gitops::SyncState;

    use super::*;

    fn info() -> SourceInfo {
        let mut status = SourceStatus {
            name: "apps".into(),
            commit: Some("0123456789abcdef".into()),
            last_sync_at: Some(50_000),
            ..SourceStatus::default()
        };
        status.stacks.insert(
            "web".into(),
            StackStatus {
                sync: SyncState::Synced,
                health: Health::Healthy,
                file: "stacks/web.yml".into(),
                applied_commit: Some("0123456789abcdef".into()),
                ..StackStatus::default()
            },
        );
        status.stacks.insert(
            "api".into(),
            StackStatus {
                sync: SyncState::OutOfSync,
                health: Health::Healthy,
                file: "stacks/api/docker-stack.yml".into(),
                error: Some("stacks/api/docker-stack.yml:3:5: error: bad".into()),
                ..StackStatus::default()
            },
        );
        SourceInfo {
            source: Source {
                name: "apps".into(),
                repo: "file:///srv/apps".into(),
                reference: "main".into(),
                path: "stacks".into(),
                interval_ms: 60_000,
                prune: false,
                auto_sync: true,
                self_heal: true,
                auth: AuthKind::None,
                age_recipients: Vec::new(),
                created_at: 0,
            },
            status,
            webhook_path: "/v1/sources/apps/sync".into(),
        }
    }

    #[test]
    fn sources_are_listed_with_their_commit_sync_and_health() {
        assert_eq!(
            format_sources(&[info()], 60_000),
            "NAME   REPO               REF    COMMIT       STACKS   SYNC        HEALTH    LAST SYNC\n\
             apps   file:///srv/apps   main   0123456789   2        OutOfSync   Healthy   10 seconds ago\n"
        );
    }

    #[test]
    fn stack_ls_shows_the_git_columns_of_the_stacks_a_source_applies() {
        let stack = |name: &str| StackSummary {
            name: name.into(),
            revision: 2,
            services: 1,
            updated_at: 1_000,
        };
        let git = BTreeMap::from([(
            "web".to_string(),
            ["Synced".to_string(), "Healthy".to_string(), "0123456789".to_string()],
        )]);
        assert_eq!(
            format_stacks(&[stack("web"), stack("manual")], &git, 11_000),
            "NAME     SERVICES   REVISION   UPDATED          SYNC     HEALTH    COMMIT\n\
             manual   1          2          10 seconds ago   -        -         -\n\
             web      1          2          10 seconds ago   Synced   Healthy   0123456789\n"
        );
    }

    #[test]
    fn a_sync_says_where_each_stack_stands_with_the_diagnostic() {
        assert_eq!(
            format_sync(&info().status),
            "Source apps is at commit 0123456789\n  \
             api: OutOfSync Healthy\n    \
             stacks/api/docker-stack.yml:3:5: error: bad\n  \
             web: Synced Healthy at 0123456789\n"
        );
    }
}
