//! The orchestration objects the store holds besides nodes and tasks: services, stacks and their revisions, and the
//! networks, volumes, secrets and configs a stack defines.

use serde::Deserialize;
use serde::Serialize;
use swarm_specs::spec::ConfigSpec;
use swarm_specs::spec::NetworkSpec;
use swarm_specs::spec::SecretSpec;
use swarm_specs::spec::ServiceSpec;
use swarm_specs::spec::StackSpec;
use swarm_specs::spec::VolumeSpec;
use swarm_specs::spec::STACK_NAMESPACE_LABEL;

use crate::cluster::UnixMillis;
use crate::store::Object;

/// A service: its spec, and the versions that tell the orchestrator which tasks are current.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub spec: ServiceSpec,
    /// The spec the last update replaced (`service inspect` shows it as PreviousSpec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<ServiceSpec>,
    /// Bumped by every change of the service object.
    pub version: u64,
    /// Bumped only when the task template changes (or `--force`): tasks of an older version are replaced.
    pub task_version: u64,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// Where the last rolling update (or rollback) of the tasks stands; `None` before the first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<UpdateStatus>,
}

/// The state of a rolling update, as Swarm names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    /// A rollback, started by hand or by a failed update.
    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            UpdateState::RollbackStarted | UpdateState::RollbackPaused | UpdateState::RollbackCompleted
        )
    }

    /// Still moving tasks (not paused, not finished).
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }
}

/// A service's `UpdateStatus`: its state, when it started and ended, and why it is where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started_at: UnixMillis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<UnixMillis>,
    pub message: String,
}

impl Service {
    pub fn new(id: String, spec: ServiceSpec, now: UnixMillis) -> Service {
        Service {
            id,
            spec,
            previous_spec: None,
            version: 1,
            task_version: 1,
            created_at: now,
            updated_at: now,
            update_status: None,
        }
    }

    /// The service with `spec` in place of its own: the previous spec is kept, and the task version moves when the
    /// task template changed or `force` is set — which starts a rolling update. The same spec again resumes a
    /// paused update (or rollback). Returns `None` when nothing would change.
    pub fn updated(&self, spec: ServiceSpec, force: bool, now: UnixMillis) -> Option<Service> {
        let paused = self.update_status.as_ref().map(|u| u.state);
        if spec == self.spec && !force {
            let resumed = match paused {
                Some(UpdateState::Paused) => UpdateState::Updating,
                Some(UpdateState::RollbackPaused) => UpdateState::RollbackStarted,
                _ => return None,
            };
            let mut service = self.clone();
            service.version += 1;
            service.updated_at = now;
            if let Some(status) = &mut service.update_status {
                // Failures before the resume no longer count.
                status.started_at = now;
                status.state = resumed;
                status.message = format!("{} resumed", if resumed.is_rollback() { "rollback" } else { "update" });
            }
            return Some(service);
        }
        // Published ports are bound by each task's container (no routing mesh yet): changing them needs new tasks.
        let replaces_tasks = spec.task != self.spec.task || spec.ports != self.spec.ports || force;
        let update_status = if replaces_tasks {
            Some(UpdateStatus {
                state: UpdateState::Updating,
                started_at: now,
                completed_at: None,
                message: "update in progress".to_string(),
            })
        } else {
            self.update_status.clone()
        };
        Some(Service {
            id: self.id.clone(),
            previous_spec: Some(self.spec.clone()),
            spec,
            version: self.version + 1,
            task_version: self.task_version + u64::from(replaces_tasks),
            created_at: self.created_at,
            updated_at: now,
            update_status,
        })
    }

    /// The service rolled back to its previous spec (which becomes the previous spec in turn), its tasks replaced
    /// following `rollback_config`. `None` when there is no previous spec.
    pub fn rolled_back(&self, message: &str, now: UnixMillis) -> Option<Service> {
        let previous = self.previous_spec.clone()?;
        let replaces_tasks = previous.task != self.spec.task || previous.ports != self.spec.ports;
        Some(Service {
            id: self.id.clone(),
            previous_spec: Some(self.spec.clone()),
            spec: previous,
            version: self.version + 1,
            task_version: self.task_version + u64::from(replaces_tasks),
            created_at: self.created_at,
            updated_at: now,
            update_status: Some(UpdateStatus {
                state: if replaces_tasks {
                    UpdateState::RollbackStarted
                } else {
                    UpdateState::RollbackCompleted
                },
                started_at: now,
                completed_at: (!replaces_tasks).then_some(now),
                message: message.to_string(),
            }),
        })
    }

    /// The update config that drives the current rollout: `rollback_config` during a rollback.
    pub fn rollout_config(&self) -> &swarm_specs::spec::UpdateConfig {
        match &self.update_status {
            Some(u) if u.state.is_rollback() => &self.spec.rollback_config,
            _ => &self.spec.update_config,
        }
    }

    /// The stack the service belongs to (the `com.docker.stack.namespace` label), if any.
    pub fn stack(&self) -> Option<&str> {
        self.spec.labels.get(STACK_NAMESPACE_LABEL).map(String::as_str)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

impl Object for Service {
    const TABLE: &'static str = "services";
    fn key(&self) -> String {
        self.spec.name.clone()
    }
}

/// A stack as the last apply left it: its objects (secret content excluded) and its current revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stack {
    pub name: String,
    /// 1 for the first apply, +1 for every apply that changed something.
    pub revision: u64,
    pub spec: StackSpec,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

impl Object for Stack {
    const TABLE: &'static str = "stacks";
    fn key(&self) -> String {
        self.name.clone()
    }
}

/// One entry of a stack's history: what was applied, from where, when and by whom. Append-only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackRevision {
    pub stack: String,
    pub revision: u64,
    /// Where the spec came from: `file sha256:…`, `git <commit>`, `plan …`.
    pub source: String,
    /// Who applied it: the operator's node or `local`, as the API saw the caller.
    pub applied_by: String,
    pub applied_at: UnixMillis,
    /// What the apply changed: `2 to create, 1 to update, 0 to remove`.
    pub summary: String,
    pub spec: StackSpec,
}

impl StackRevision {
    /// Keys sort by revision within a stack.
    pub fn key_for(stack: &str, revision: u64) -> String {
        format!("{stack}/{revision:010}")
    }
}

impl Object for StackRevision {
    const TABLE: &'static str = "stack_revisions";
    fn key(&self) -> String {
        StackRevision::key_for(&self.stack, self.revision)
    }
}

impl Object for NetworkSpec {
    const TABLE: &'static str = "networks";
    fn key(&self) -> String {
        self.name.clone()
    }
}

impl Object for VolumeSpec {
    const TABLE: &'static str = "volumes";
    fn key(&self) -> String {
        self.name.clone()
    }
}

/// Only the secret's metadata and digest: the content is never serialized (the secrets issue stores it encrypted).
impl Object for SecretSpec {
    const TABLE: &'static str = "secrets";
    fn key(&self) -> String {
        self.name.clone()
    }
}

impl Object for ConfigSpec {
    const TABLE: &'static str = "configs";
    fn key(&self) -> String {
        self.name.clone()
    }
}
