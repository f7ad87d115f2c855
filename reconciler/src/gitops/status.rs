//! The decisions of a sync, as pure functions: what a plan means for a stack of a source (apply it, leave it, say
//! why not), and how healthy the stack's services are.

use std::collections::BTreeSet;

use swarm_specs::spec::ServiceMode;
use swarm_specs::task::Task;
use swarm_specs::task::TaskState;

use super::snapshot::LoadedStack;
use super::Health;
use super::Source;
use super::StackStatus;
use super::SyncState;
use crate::cluster::Node;
use crate::cluster::UnixMillis;
use crate::objects::Service;
use crate::objects::UpdateState;
use crate::plan::Action;
use crate::plan::Change;
use crate::plan::Kind;
use crate::plan::Plan;

/// The changes an apply of the source would make: without prune, services, networks and volumes that git no
/// longer has stay (as `swarm apply` keeps them), so their removal is no difference. Stack secrets and configs
/// that a rotation replaced always go.
pub fn effective_changes(plan: &Plan, prune: bool) -> Vec<&Change> {
    plan.changes
        .iter()
        .filter(|c| prune || c.action != Action::Remove || matches!(c.kind, Kind::Secret | Kind::Config))
        .collect()
}

/// `service.web (update), network.front (create)`, at most five, then how many more.
pub fn describe(changes: &[&Change]) -> String {
    let mut parts: Vec<String> = changes
        .iter()
        .take(5)
        .map(|c| {
            let action = match c.action {
                Action::Create => "create",
                Action::Update => "update",
                Action::Remove => "remove",
                Action::Rotate => "rotate",
            };
            format!("{} ({action})", c.address)
        })
        .collect();
    if changes.len() > 5 {
        parts.push(format!("{} more", changes.len() - 5));
    }
    parts.join(", ")
}

/// What is known about one stack of a source when its sync decides.
pub struct Facts<'a> {
    pub source: &'a Source,
    pub stack: &'a LoadedStack,
    pub previous: Option<&'a StackStatus>,
    /// [`describe`]d effective changes between git's spec and the cluster (empty: in sync).
    pub changes: &'a str,
    /// A service of the stack that a rollback put back on an older spec: its name and the rollback's message.
    pub rolled_back: Option<(String, String)>,
    /// Another source that applies this stack.
    pub owner: Option<&'a str>,
    /// Asked for by an operator (`swarm source sync`): applies even without auto-sync or self-heal.
    pub manual: bool,
}

/// What to do with one stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The cluster runs what git says; `moved`: git's files for it changed (a commit that changes nothing live).
    InSync { moved: bool },
    /// Apply git's spec, for this reason.
    Apply { reason: String },
    /// Leave the cluster as it is: the stack is out of sync, for this reason (`error`: the sync failed for it).
    Hold { message: String, error: Option<String> },
}

pub fn decide(f: &Facts<'_>) -> Verdict {
    let name = &f.stack.name;
    if let Some(owner) = f.owner {
        return Verdict::Hold {
            message: String::new(),
            error: Some(format!(
                "stack {name} is applied by source {owner}; a stack follows one source (rename the file, or remove it \
                 from one of them)"
            )),
        };
    }
    if let Err(diagnostics) = &f.stack.spec {
        return Verdict::Hold {
            message: format!("{} is invalid at this commit; nothing was applied", f.stack.file),
            error: Some(diagnostics.clone()),
        };
    }
    let moved = f.previous.and_then(|p| p.inputs.as_deref()) != Some(f.stack.inputs.as_str());
    if f.changes.is_empty() {
        return Verdict::InSync { moved };
    }
    let sync_cmd = format!("`swarm source sync {}`", f.source.name);
    if f.manual {
        return Verdict::Apply {
            reason: format!("{sync_cmd} asked for it"),
        };
    }
    if !f.source.auto_sync {
        return Verdict::Hold {
            message: format!("{}; auto-sync is off: run {sync_cmd} to apply", f.changes),
            error: None,
        };
    }
    if moved {
        return Verdict::Apply {
            reason: "its files changed".into(),
        };
    }
    if !f.source.self_heal {
        return Verdict::Hold {
            message: format!(
                "drifted from git: {}; self-heal is off: run {sync_cmd} to revert",
                f.changes
            ),
            error: None,
        };
    }
    if let Some((service, why)) = &f.rolled_back {
        return Verdict::Hold {
            message: format!(
                "service {service} was rolled back ({why}); git's spec is applied again when the stack's files \
                 change, or by {sync_cmd}"
            ),
            error: None,
        };
    }
    Verdict::Apply {
        reason: format!("self-heal: the cluster drifted from git ({})", f.changes),
    }
}

/// The stack's status after the sync: `applied` is the apply's outcome when the verdict was to apply (the stack's
/// revision, or why it failed); `health` is [`health`] of the stack as it is now.
pub fn next_status(
    f: &Facts<'_>,
    commit: &str,
    verdict: &Verdict,
    applied: Option<Result<u64, String>>,
    health: (Health, String),
    now: UnixMillis,
) -> StackStatus {
    let previous = f.previous.cloned().unwrap_or_default();
    let mut status = StackStatus {
        sync: SyncState::OutOfSync,
        health: health.0,
        health_message: health.1,
        file: f.stack.file.clone(),
        applied_commit: previous.applied_commit.clone(),
        inputs: previous.inputs.clone(),
        revision: previous.revision,
        message: String::new(),
        error: None,
        warnings: f.stack.warnings.clone(),
        last_sync_at: now,
        last_applied_at: previous.last_applied_at,
    };
    let synced_at_commit = |status: &mut StackStatus| {
        status.sync = SyncState::Synced;
        status.applied_commit = Some(commit.to_string());
        status.inputs = Some(f.stack.inputs.clone());
    };
    match verdict {
        Verdict::InSync { moved } => {
            status.sync = SyncState::Synced;
            if *moved || status.applied_commit.is_none() {
                synced_at_commit(&mut status);
            }
        }
        Verdict::Hold { message, error } => {
            status.message = message.clone();
            status.error = error.clone();
        }
        Verdict::Apply { reason } => match applied {
            Some(Ok(revision)) => {
                synced_at_commit(&mut status);
                status.revision = Some(revision);
                status.last_applied_at = Some(now);
                status.message = format!("applied at revision {revision}: {reason}");
            }
            Some(Err(e)) => {
                status.message = format!("{}; the apply failed", f.changes);
                status.error = Some(e);
            }
            None => status.message = format!("{}; to be applied ({reason})", f.changes),
        },
    }
    status
}

/// How a stack's services are doing: the worst of them, with what makes it so. `expected`: the services git's spec
/// has (a missing one is Missing); `services` and `tasks`: the stack's, as the store has them.
pub fn health(
    expected: Option<&BTreeSet<String>>,
    services: &[&Service],
    tasks: &[&Task],
    nodes: &[Node],
) -> (Health, String) {
    if services.is_empty() {
        return (Health::Missing, "not in the cluster".into());
    }
    let mut worst = (Health::Healthy, String::new());
    let mut note = |health: Health, message: String| {
        if health > worst.0 {
            worst = (health, message);
        }
    };
    if let Some(expected) = expected {
        for name in expected {
            if !services.iter().any(|s| s.name() == name) {
                note(Health::Missing, format!("service {name} is not in the cluster"));
            }
        }
    }
    for service in services {
        let name = service.name();
        let mine: Vec<&Task> = tasks.iter().copied().filter(|t| t.service == name).collect();
        if let Some(update) = &service.update_status {
            match update.state {
                UpdateState::Paused
                | UpdateState::RollbackStarted
                | UpdateState::RollbackPaused
                | UpdateState::RollbackCompleted => {
                    note(
                        Health::Degraded,
                        format!("service {name}: {}: {}", update.state.as_str(), update.message),
                    );
                    continue;
                }
                UpdateState::Updating => note(Health::Progressing, format!("service {name}: updating")),
                UpdateState::Completed => {}
            }
        }
        let unplaceable = mine.iter().find(|t| {
            t.spec_version == service.task_version
                && t.desired_state == TaskState::Running
                && t.status.state == TaskState::Pending
                && t.status.err.as_deref().is_some_and(|e| !e.is_empty())
        });
        if let Some(task) = unplaceable {
            note(
                Health::Degraded,
                format!("service {name}: {}", task.status.err.as_deref().unwrap_or_default()),
            );
            continue;
        }
        let progress = crate::orchestrator::progress(service, &mine, nodes);
        let job = matches!(
            service.spec.mode,
            ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob
        );
        if job {
            if progress.completed < progress.desired {
                note(
                    Health::Progressing,
                    format!("service {name}: {}/{} completed", progress.completed, progress.desired),
                );
            }
        } else if progress.running < progress.desired {
            note(
                Health::Progressing,
                format!(
                    "service {name}: {}/{} tasks running",
                    progress.running, progress.desired
                ),
            );
        } else if mine
            .iter()
            .any(|t| t.desired_state == TaskState::Running && t.spec_version != service.task_version)
        {
            note(Health::Progressing, format!("service {name}: replacing tasks"));
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;
    use swarm_specs::spec::Driver;
    use swarm_specs::spec::EndpointMode;
    use swarm_specs::spec::ServiceSpec;
    use swarm_specs::spec::StackSpec;
    use swarm_specs::spec::TaskSpec;
    use swarm_specs::spec::UpdateConfig;
    use swarm_specs::task::TaskStatus;

    use super::*;
    use crate::gitops::AuthKind;
    use crate::objects::UpdateStatus;

    fn source(auto_sync: bool, self_heal: bool) -> Source {
        Source {
            name: "apps".into(),
            repo: "file:///srv/apps".into(),
            reference: "main".into(),
            path: "stacks".into(),
            interval_ms: 60_000,
            prune: false,
            auto_sync,
            self_heal,
            auth: AuthKind::None,
            age_recipients: Vec::new(),
            created_at: 0,
        }
    }

    fn loaded(inputs: &str, valid: bool) -> LoadedStack {
        LoadedStack {
            name: "web".into(),
            file: "stacks/web.yml".into(),
            inputs: inputs.into(),
            spec: if valid {
                Ok(StackSpec::default())
            } else {
                Err("stacks/web.yml:3:5: error: services.web.imgae: unknown key \"imgae\"".into())
            },
            warnings: Vec::new(),
        }
    }

    fn applied_at(inputs: &str) -> StackStatus {
        StackStatus {
            sync: SyncState::Synced,
            applied_commit: Some("c1".into()),
            inputs: Some(inputs.into()),
            revision: Some(1),
            ..StackStatus::default()
        }
    }

    fn facts<'a>(
        source: &'a Source,
        stack: &'a LoadedStack,
        previous: Option<&'a StackStatus>,
        changes: &'a str,
    ) -> Facts<'a> {
        Facts {
            source,
            stack,
            previous,
            changes,
            rolled_back: None,
            owner: None,
            manual: false,
        }
    }

    #[test]
    fn a_stack_is_applied_when_its_files_changed_and_left_alone_when_they_did_not() {
        let s = source(true, true);
        let before = applied_at("d1");
        let new = loaded("d2", true);
        let verdict = decide(&facts(&s, &new, Some(&before), "service.web (update)"));
        assert_eq!(
            verdict,
            Verdict::Apply {
                reason: "its files changed".into()
            }
        );
        // A commit that touched other stacks only: same inputs, no changes, nothing to do, commit kept.
        let same = loaded("d1", true);
        let f = facts(&s, &same, Some(&before), "");
        let verdict = decide(&f);
        assert_eq!(verdict, Verdict::InSync { moved: false });
        let status = next_status(&f, "c2", &verdict, None, (Health::Healthy, String::new()), 9);
        assert_eq!(status.sync, SyncState::Synced);
        assert_eq!(status.applied_commit.as_deref(), Some("c1"));
        // Files changed but nothing live would (a comment): synced at the new commit.
        let f = facts(&s, &new, Some(&before), "");
        let verdict = decide(&f);
        let status = next_status(&f, "c2", &verdict, None, (Health::Healthy, String::new()), 9);
        assert_eq!(status.applied_commit.as_deref(), Some("c2"));
        assert_eq!(status.inputs.as_deref(), Some("d2"));
    }

    #[test]
    fn drift_is_healed_only_with_self_heal_and_never_over_a_rollback() {
        let before = applied_at("d1");
        let same = loaded("d1", true);
        let drift = "service.web (update)";
        let healing = source(true, true);
        assert!(matches!(
            decide(&facts(&healing, &same, Some(&before), drift)),
            Verdict::Apply { reason } if reason.starts_with("self-heal")
        ));
        let no_heal = source(true, false);
        let verdict = decide(&facts(&no_heal, &same, Some(&before), drift));
        assert!(matches!(&verdict, Verdict::Hold { message, error: None } if message.contains("self-heal is off")));
        let mut f = facts(&healing, &same, Some(&before), drift);
        f.rolled_back = Some(("web_web".into(), "update failed".into()));
        assert!(matches!(decide(&f), Verdict::Hold { message, .. } if message.contains("was rolled back")));
        // An operator's sync applies all the same.
        f.manual = true;
        assert!(matches!(decide(&f), Verdict::Apply { .. }));
        let manual_only = source(false, false);
        let new = loaded("d2", true);
        let f = facts(&manual_only, &new, Some(&before), drift);
        assert!(matches!(decide(&f), Verdict::Hold { message, .. } if message.contains("auto-sync is off")));
    }

    #[test]
    fn an_invalid_commit_holds_the_stack_with_the_diagnostic_and_keeps_what_runs() {
        let s = source(true, true);
        let before = applied_at("d1");
        let bad = loaded("d2", false);
        let f = facts(&s, &bad, Some(&before), "");
        let verdict = decide(&f);
        let status = next_status(&f, "c2", &verdict, None, (Health::Healthy, String::new()), 9);
        assert_eq!(status.sync, SyncState::OutOfSync);
        assert!(status.error.as_deref().unwrap().contains("unknown key \"imgae\""));
        assert_eq!(status.applied_commit.as_deref(), Some("c1"));
        assert_eq!(
            status.inputs.as_deref(),
            Some("d1"),
            "the revert to d1 must count as unchanged"
        );
        let mut f = facts(&s, &bad, Some(&before), "");
        f.owner = Some("other");
        assert!(matches!(decide(&f), Verdict::Hold { error: Some(e), .. } if e.contains("applied by source other")));
    }

    #[test]
    fn a_failed_apply_is_out_of_sync_with_the_reason() {
        let s = source(true, true);
        let new = loaded("d2", true);
        let f = facts(&s, &new, None, "service.web (create)");
        let verdict = decide(&f);
        let status = next_status(
            &f,
            "c2",
            &verdict,
            Some(Err("service web_web exists outside stack web".into())),
            (Health::Missing, String::new()),
            9,
        );
        assert_eq!(status.sync, SyncState::OutOfSync);
        assert_eq!(status.applied_commit, None);
        assert!(status.error.unwrap().contains("exists outside"));
        let ok = next_status(&f, "c2", &verdict, Some(Ok(4)), (Health::Progressing, String::new()), 9);
        assert_eq!(
            (ok.sync, ok.revision, ok.applied_commit.as_deref()),
            (SyncState::Synced, Some(4), Some("c2"))
        );
    }

    fn service(name: &str, replicas: u64) -> Service {
        let spec = ServiceSpec {
            name: name.into(),
            labels: BTreeMap::new(),
            mode: ServiceMode::Replicated { replicas },
            task: TaskSpec::with_command(Driver::Process, None, vec!["sleep".into(), "60".into()]),
            endpoint_mode: EndpointMode::Vip,
            ports: Vec::new(),
            update_config: UpdateConfig::default(),
            rollback_config: UpdateConfig::default(),
        };
        Service::new(format!("id-{name}"), spec, 0)
    }

    fn task(service: &Service, slot: u64, version: u64, state: TaskState, err: Option<&str>) -> Task {
        let mut status = TaskStatus::new(state, 0, "");
        status.err = err.map(str::to_string);
        serde_json::from_value(json!({
            "id": format!("{}-{slot}-{version}", service.name()),
            "service": service.name(),
            "slot": slot,
            "spec_version": version,
            "spec": serde_json::to_value(&service.spec.task).unwrap(),
            "desired_state": "running",
            "status": serde_json::to_value(&status).unwrap(),
            "created_at": 0,
        }))
        .unwrap()
    }

    #[test]
    fn health_is_the_worst_of_the_services() {
        let web = service("web_web", 2);
        let running = [
            task(&web, 1, 1, TaskState::Running, None),
            task(&web, 2, 1, TaskState::Running, None),
        ];
        let tasks: Vec<&Task> = running.iter().collect();
        assert_eq!(health(None, &[&web], &tasks, &[]).0, Health::Healthy);
        assert_eq!(
            health(None, &[&web], &tasks[..1], &[]),
            (Health::Progressing, "service web_web: 1/2 tasks running".into())
        );
        let expected: BTreeSet<String> = ["web_web".to_string(), "web_db".to_string()].into();
        assert_eq!(
            health(Some(&expected), &[&web], &tasks, &[]),
            (Health::Missing, "service web_db is not in the cluster".into())
        );
        assert_eq!(health(None, &[], &[], &[]).0, Health::Missing);
        let pending = task(&web, 2, 1, TaskState::Pending, Some("no suitable node (1 node: ...)"));
        assert_eq!(
            health(None, &[&web], &[&running[0], &pending], &[]),
            (
                Health::Degraded,
                "service web_web: no suitable node (1 node: ...)".into()
            )
        );
        let mut rolled = web.clone();
        rolled.update_status = Some(UpdateStatus {
            state: UpdateState::RollbackCompleted,
            started_at: 0,
            completed_at: Some(1),
            message: "update failed: task exited".into(),
        });
        assert_eq!(
            health(None, &[&rolled], &tasks, &[]),
            (
                Health::Degraded,
                "service web_web: rollback_completed: update failed: task exited".into()
            )
        );
        let mut updating = web.clone();
        updating.task_version = 2;
        updating.update_status = Some(UpdateStatus {
            state: UpdateState::Updating,
            started_at: 0,
            completed_at: None,
            message: String::new(),
        });
        assert_eq!(health(None, &[&updating], &tasks, &[]).0, Health::Progressing);
        updating.update_status = None;
        assert_eq!(
            health(None, &[&updating], &tasks, &[]),
            (Health::Progressing, "service web_web: replacing tasks".into())
        );
    }

    #[test]
    fn without_prune_what_git_dropped_is_no_difference() {
        let change = |kind, action| Change {
            address: "x".into(),
            kind,
            action,
            before: serde_json::Value::Null,
            after: serde_json::Value::Null,
            fields: Vec::new(),
            replaces_tasks: false,
            placement: None,
        };
        let plan = Plan {
            format_version: "1".into(),
            stack: "web".into(),
            base_revision: None,
            changes: vec![
                change(Kind::Service, Action::Remove),
                change(Kind::Secret, Action::Remove),
                change(Kind::Service, Action::Update),
            ],
            summary: Default::default(),
            desired: None,
        };
        assert_eq!(effective_changes(&plan, false).len(), 2);
        assert_eq!(effective_changes(&plan, true).len(), 3);
    }
}
