//! `swarm stack ...`: Docker's stack commands (ls, ps, services, rm), plus the history of what was applied.

use std::process::ExitCode;

use swarm_reconciler::cluster::now_millis;
use swarm_reconciler::objects::Service;
use swarm_reconciler::objects::StackRevision;
use swarm_reconciler::plan;
use swarm_reconciler::routes::ServiceInfo;
use swarm_reconciler::routes::StackRollback;
use swarm_reconciler::routes::StackSummary;
use swarm_reconciler::stacks::ApplyResponse;

use crate::apply::converge;
use crate::apply::Applied;
use crate::client::Client;
use crate::node::url_segment;
use crate::service::ago;
use crate::service::format_services;
use crate::service::format_tasks;
use crate::service::table;
use crate::service::tasks_and_nodes;
use crate::service::update_notes;
use crate::service::PsArgs;
use crate::service::ServiceFilter;
use crate::service::TaskFilter;

#[derive(clap::Subcommand)]
pub enum StackCommand {
    /// List stacks.
    #[command(alias = "list")]
    Ls,
    /// List the tasks of a stack's services.
    Ps {
        stack: String,
        #[command(flatten)]
        opts: PsArgs,
    },
    /// List a stack's services.
    Services {
        stack: String,
        /// Only display IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Filter: name=PREFIX, id=PREFIX, label=KEY[=VALUE], mode=replicated|global|replicated-job|global-job.
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
    },
    /// Remove one or more stacks and their services.
    #[command(alias = "remove", alias = "down")]
    Rm {
        #[arg(required = true, value_name = "STACK")]
        stacks: Vec<String>,
    },
    /// Show what was applied to a stack: when, by whom, from where, and what it changed.
    History { stack: String },
    /// Apply an earlier revision again, as a new revision (the history stays append-only); what that revision did
    /// not have is removed.
    Rollback {
        stack: String,
        /// The revision to go back to (default: the one before the current).
        #[arg(long, value_name = "REVISION")]
        to: Option<u64>,
        /// Exit at once instead of waiting for the services to converge.
        #[arg(short, long)]
        detach: bool,
        /// Do not show the progress.
        #[arg(short, long)]
        quiet: bool,
    },
}

pub async fn run(client: &Client, cmd: StackCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        StackCommand::Ls => {
            let list: Vec<StackSummary> = client.get("/v1/stacks").await?;
            // GitOps: with sources, SYNC, HEALTH and COMMIT columns too (src/source.rs).
            let git = crate::source::stack_columns(client).await;
            if git.is_empty() {
                print!("{}", format_stacks(&list, now_millis()));
            } else {
                print!("{}", crate::source::format_stacks(&list, &git, now_millis()));
            }
            Ok(ExitCode::SUCCESS)
        }
        StackCommand::Ps { stack, opts } => ps(client, &stack, &opts).await,
        StackCommand::Services { stack, quiet, filters } => services(client, &stack, quiet, &filters).await,
        StackCommand::Rm { stacks } => rm(client, &stacks).await,
        StackCommand::Rollback {
            stack,
            to,
            detach,
            quiet,
        } => rollback(client, &stack, to, detach, quiet).await,
        StackCommand::History { stack } => {
            let history: Vec<StackRevision> = client
                .get(&format!("/v1/stacks/{}/history", url_segment(&stack)))
                .await?;
            print!("{}", format_history(&history, now_millis()));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The services of one stack (by the `com.docker.stack.namespace` label).
async fn stack_services(client: &Client, stack: &str) -> anyhow::Result<Vec<ServiceInfo>> {
    let all: Vec<ServiceInfo> = client.get("/v1/services").await?;
    Ok(all.into_iter().filter(|i| i.service.stack() == Some(stack)).collect())
}

async fn ps(client: &Client, stack: &str, opts: &PsArgs) -> anyhow::Result<ExitCode> {
    let filter = TaskFilter::parse(&opts.filters)?;
    let services: Vec<Service> = stack_services(client, stack)
        .await?
        .into_iter()
        .map(|i| i.service)
        .collect();
    if services.is_empty() {
        anyhow::bail!("nothing found in stack: {stack}");
    }
    let (tasks, nodes) = tasks_and_nodes(client).await?;
    print!(
        "{}",
        format_tasks(&services, &tasks, &nodes, &filter, now_millis(), opts)
    );
    eprint!("{}", update_notes(&services, now_millis()));
    Ok(ExitCode::SUCCESS)
}

async fn services(client: &Client, stack: &str, quiet: bool, filters: &[String]) -> anyhow::Result<ExitCode> {
    let filter = ServiceFilter::parse(filters)?;
    let list = stack_services(client, stack).await?;
    if list.is_empty() {
        eprintln!("Nothing found in stack: {stack}");
        return Ok(ExitCode::SUCCESS);
    }
    let shown: Vec<&ServiceInfo> = list.iter().filter(|i| filter.matches(&i.service)).collect();
    print!("{}", format_services(&shown, quiet));
    let services: Vec<Service> = shown.iter().map(|i| i.service.clone()).collect();
    eprint!("{}", update_notes(&services, now_millis()));
    Ok(ExitCode::SUCCESS)
}

async fn rollback(
    client: &Client,
    stack: &str,
    to: Option<u64>,
    detach: bool,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let response: ApplyResponse = client
        .post(
            &format!("/v1/stacks/{}/rollback", url_segment(stack)),
            &StackRollback { to },
        )
        .await?;
    print!(
        "{}",
        plan::render(&response.plan, std::io::IsTerminal::is_terminal(&std::io::stdout()))
    );
    if response.changed {
        println!("Rolled back stack {stack}: revision {}.", response.revision);
    } else {
        println!(
            "Stack {stack} already is as that revision was (revision {}).",
            response.revision
        );
    }
    if detach {
        return Ok(ExitCode::SUCCESS);
    }
    let applied = Applied {
        stack: stack.to_string(),
        services: response.services,
    };
    converge(client, &applied, quiet).await
}

/// As `docker stack rm`: a stack that is not there is reported, not an error; the others are still removed.
async fn rm(client: &Client, stacks: &[String]) -> anyhow::Result<ExitCode> {
    let known: Vec<StackSummary> = client.get("/v1/stacks").await?;
    let mut failed = false;
    for stack in stacks {
        let has_services = !stack_services(client, stack).await?.is_empty();
        if !has_services && !known.iter().any(|s| s.name == *stack) {
            eprintln!("Nothing found in stack: {stack}");
            continue;
        }
        match client
            .delete::<Vec<String>>(&format!("/v1/stacks/{}", url_segment(stack)))
            .await
        {
            Ok(removed) => print!("{}", removal_lines(&removed)),
            Err(e) => {
                eprintln!("Error: {stack}: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn removal_lines(removed: &[String]) -> String {
    let mut names = removed.to_vec();
    names.sort();
    names.iter().map(|n| format!("Removing service {n}\n")).collect()
}

/// `stack ls`: NAME, SERVICES, REVISION, UPDATED, sorted by name.
fn format_stacks(list: &[StackSummary], now: u64) -> String {
    let mut list = list.to_vec();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows = vec![vec![
        "NAME".to_string(),
        "SERVICES".to_string(),
        "REVISION".to_string(),
        "UPDATED".to_string(),
    ]];
    for s in list {
        rows.push(vec![
            s.name.clone(),
            s.services.to_string(),
            s.revision.to_string(),
            ago(now, s.updated_at),
        ]);
    }
    table(&rows)
}

/// `stack history`: REVISION, APPLIED, BY, SOURCE, CHANGES, oldest first (the latest ends next to the prompt).
fn format_history(history: &[StackRevision], now: u64) -> String {
    let mut history: Vec<&StackRevision> = history.iter().collect();
    history.sort_by_key(|r| r.revision);
    let mut rows = vec![vec![
        "REVISION".to_string(),
        "APPLIED".to_string(),
        "BY".to_string(),
        "SOURCE".to_string(),
        "CHANGES".to_string(),
    ]];
    for r in history {
        rows.push(vec![
            r.revision.to_string(),
            ago(now, r.applied_at),
            r.applied_by.clone(),
            r.source.clone(),
            r.summary.clone(),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use swarm_specs::spec::StackSpec;

    use super::*;

    #[test]
    fn stacks_are_listed_by_name() {
        let list = vec![
            StackSummary {
                name: "web".into(),
                revision: 3,
                services: 2,
                updated_at: 1_000,
            },
            StackSummary {
                name: "api".into(),
                revision: 1,
                services: 1,
                updated_at: 121_000,
            },
        ];
        assert_eq!(
            format_stacks(&list, 181_000),
            "NAME   SERVICES   REVISION   UPDATED\n\
             api    1          1          about a minute ago\n\
             web    2          3          3 minutes ago\n"
        );
    }

    #[test]
    fn history_is_oldest_first() {
        let revision = |n: u64, at: u64, summary: &str| StackRevision {
            stack: "web".into(),
            revision: n,
            source: format!("git c0ffee{n}"),
            applied_by: "local".into(),
            applied_at: at,
            summary: summary.into(),
            spec: StackSpec::default(),
        };
        let history = vec![
            revision(2, 50_000, "0 to create, 1 to update, 0 to remove"),
            revision(1, 0, "2 to create, 0 to update, 0 to remove"),
        ];
        assert_eq!(
            format_history(&history, 60_000),
            "REVISION   APPLIED              BY      SOURCE        CHANGES\n\
             1          about a minute ago   local   git c0ffee1   2 to create, 0 to update, 0 to remove\n\
             2          10 seconds ago       local   git c0ffee2   0 to create, 1 to update, 0 to remove\n"
        );
    }

    #[test]
    fn removals_are_announced_in_order() {
        let removed = vec!["web_web".to_string(), "web_db".to_string()];
        assert_eq!(
            removal_lines(&removed),
            "Removing service web_db\nRemoving service web_web\n"
        );
    }
}
