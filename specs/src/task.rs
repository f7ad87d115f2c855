//! Tasks: one running instance of a service on one node, with Docker Swarm's states.
//!
//! The orchestrator owns a task's desired state, the scheduler its node, the agent its observed status (rule 4).
//! Observed state only moves forward: [`TaskState`] is ordered, and [`TaskStatus::advance`] refuses to go back.

use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;

use crate::spec::TaskSpec;

/// Swarm's task states, in lifecycle order (the derive of `Ord` follows the declaration order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Ready,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Remove,
    Orphaned,
}

impl TaskState {
    pub const ALL: [TaskState; 14] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Shutdown,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Remove,
        TaskState::Orphaned,
    ];

    /// A state the task never leaves (it is finished, one way or another).
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    /// As `docker service ps` prints it: `Running`, `Shutdown`, ...
    pub fn title(self) -> &'static str {
        match self {
            TaskState::New => "New",
            TaskState::Pending => "Pending",
            TaskState::Assigned => "Assigned",
            TaskState::Accepted => "Accepted",
            TaskState::Preparing => "Preparing",
            TaskState::Ready => "Ready",
            TaskState::Starting => "Starting",
            TaskState::Running => "Running",
            TaskState::Complete => "Complete",
            TaskState::Shutdown => "Shutdown",
            TaskState::Failed => "Failed",
            TaskState::Rejected => "Rejected",
            TaskState::Remove => "Remove",
            TaskState::Orphaned => "Orphaned",
        }
    }
}

/// What the agent last observed of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskStatus {
    pub state: TaskState,
    /// Milliseconds since the Unix epoch when `state` was entered.
    pub timestamp: u64,
    /// A short description (`started`, `container exited`).
    pub message: String,
    /// Why it failed, for a person: names the image, the node, the path...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// The container id or process id that runs the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_id: Option<String>,
}

impl TaskStatus {
    pub fn new(state: TaskState, timestamp: u64, message: impl Into<String>) -> TaskStatus {
        TaskStatus {
            state,
            timestamp,
            message: message.into(),
            err: None,
            exit_code: None,
            runtime_id: None,
        }
    }

    /// Applies a newer observation; a report of an earlier state than the current one is dropped (returns false).
    pub fn advance(&mut self, next: TaskStatus) -> bool {
        if next.state < self.state || (next.state == self.state && next == *self) {
            return false;
        }
        *self = next;
        true
    }
}

/// Tasks of a service named with this prefix are placed by hand (`swarm debug run`, for testing agents): the
/// orchestrator leaves them alone, and no real service may take such a name.
pub const MANUAL_SERVICE_PREFIX: &str = "swarm-debug";

/// One task: the unit the scheduler places and the agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    pub id: String,
    /// Stored name of the service (`<stack>_<service>`).
    pub service: String,
    /// Replicated services: the slot (1..=replicas). Global services: none (one task per node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    /// Set by the scheduler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The service spec version this task was made from.
    pub spec_version: u64,
    pub spec: TaskSpec,
    /// Set by the orchestrator: Running for live tasks, Shutdown / Remove to stop them.
    pub desired_state: TaskState,
    /// Set by the agent (and by the scheduler up to Assigned).
    pub status: TaskStatus,
    pub created_at: u64,
    /// The service's published ports, bound by this task's container on its node (until the routing mesh exists,
    /// ingress-mode ports too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::spec::PortConfig>,
    /// The networks the task attaches to, as the stack defines them, so its node can create them (subnet, options).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<crate::spec::NetworkSpec>,
    /// When the task was first seen running (set by the dispatcher): a rolling update counts a failure within its
    /// `monitor` period after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
}

impl Task {
    /// Placed by hand, outside any service (see [`MANUAL_SERVICE_PREFIX`]).
    pub fn is_manual(&self) -> bool {
        self.service.starts_with(MANUAL_SERVICE_PREFIX)
    }

    /// The container name Docker Swarm gives a task: `<service>.<slot>.<task id>` (global: the node id in the middle).
    pub fn container_name(&self) -> String {
        let middle = match (self.slot, &self.node_id) {
            (Some(slot), _) => slot.to_string(),
            (None, Some(node)) => node.clone(),
            (None, None) => "0".to_string(),
        };
        format!("{}.{}.{}", self.service, middle, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_ordered_as_swarm_orders_them() {
        let mut sorted = TaskState::ALL;
        sorted.sort();
        assert_eq!(sorted, TaskState::ALL);
        assert!(TaskState::Running < TaskState::Complete);
        assert!(TaskState::Complete.is_terminal() && !TaskState::Running.is_terminal());
    }

    #[test]
    fn observed_state_never_goes_backwards() {
        let mut status = TaskStatus::new(TaskState::Running, 10, "started");
        assert!(!status.advance(TaskStatus::new(TaskState::Starting, 11, "late report")));
        assert_eq!(status.state, TaskState::Running);
        assert!(status.advance(TaskStatus::new(TaskState::Failed, 12, "exited")));
        assert_eq!(status.state, TaskState::Failed);
        assert!(
            !status.advance(TaskStatus::new(TaskState::Failed, 12, "exited")),
            "a duplicate is not news"
        );
    }
}
