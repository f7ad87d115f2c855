//! Task drivers: one trait, two implementations — `docker` (a container through the Docker Engine) and `process`
//! (a child process of the agent). The agent's task state machine only talks to this trait.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::BoxStream;
use swarm_specs::spec::TaskSpec;

pub mod docker;
pub mod process;

/// The resync of a driver whose events may be missed (see [`Driver::resync_interval`]).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(1);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Labels every runtime object of ours carries, so the agent can find (adopt) and clean up its own work.
pub const LABEL_TASK: &str = "io.swarm.task.id";
pub const LABEL_SERVICE: &str = "io.swarm.service.name";
pub const LABEL_SLOT: &str = "io.swarm.task.slot";
pub const LABEL_NODE: &str = "io.swarm.node.id";
pub const LABEL_STACK: &str = "com.docker.stack.namespace";

/// Everything a driver needs to run one task.
#[derive(Debug, Clone)]
pub struct TaskRun {
    pub task_id: String,
    /// Stored service name (`<stack>_<service>`).
    pub service: String,
    pub slot: Option<u64>,
    pub node_id: String,
    pub stack: Option<String>,
    /// `<service>.<slot>.<task id>`, as Swarm names task containers.
    pub name: String,
    pub spec: TaskSpec,
    /// Extra environment the agent adds (`SWARM_TASK_ID`, `SWARM_TASK_SLOT`, ...).
    pub env: BTreeMap<String, String>,
    /// Ports to publish on the node (the docker driver binds them; a process binds its own).
    pub ports: Vec<swarm_specs::spec::PortConfig>,
    /// The networks of `spec.networks` as the stack defines them (subnet, labels, options), when known.
    pub networks: Vec<swarm_specs::spec::NetworkSpec>,
    /// The task's secret and config files, already written (see [`crate::files`]): the docker driver bind-mounts
    /// each read-only at its target.
    pub files: Vec<MountedFile>,
}

/// A secret or config file of a task: where the agent wrote it on the host, and its path in the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedFile {
    pub host_path: std::path::PathBuf,
    pub target: String,
}

/// What a driver sees of a task's container or process right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Created (prepared) but not started.
    Created,
    /// Running, with its healthcheck's verdict.
    Running {
        health: TaskHealth,
    },
    Exited {
        code: i64,
    },
    /// Nothing of this task exists on the node (never created, or removed behind our back).
    Missing,
}

/// What a running task's healthcheck says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskHealth {
    /// It has no healthcheck.
    None,
    /// No probe has passed yet (and it has not failed its retries yet).
    Starting,
    Healthy,
    /// `retries` probes failed in a row.
    Unhealthy,
}

/// Something that happened to a task behind the agent's back (or as a result of its own actions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverEvent {
    pub task_id: String,
    pub observed: Observed,
}

#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    /// Only the last N lines.
    pub tail: Option<usize>,
    pub timestamps: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: LogStream,
    /// The line as written, with the timestamp prefix when asked for.
    pub text: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DriverError {
    /// The task cannot run on this node as specified; the message says why (image, path, node).
    #[error("{0}")]
    Rejected(String),
    /// The runtime (engine, process table) failed; retrying may help.
    #[error("{0}")]
    Runtime(String),
    /// The driver cannot reach its runtime (e.g. the Docker Engine is down).
    #[error("{0}")]
    Unavailable(String),
}

/// Runs tasks on this node. Every method is idempotent where it can be: preparing an already prepared task or
/// removing a missing one is not an error.
pub trait Driver: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether the driver can run tasks now (the docker driver: the engine answers).
    fn available(&self) -> BoxFuture<'_, bool>;
    /// The engine version to report for the node, when there is an engine.
    fn engine_version(&self) -> BoxFuture<'_, Option<String>>;
    /// The engine's own labels (`dockerd --label`), which placement constraints can name as `engine.labels.K`.
    fn engine_labels(&self) -> BoxFuture<'_, BTreeMap<String, String>> {
        Box::pin(async { BTreeMap::new() })
    }
    /// Gets everything ready without starting: image (pulled when missing; failure reported, naming image and
    /// node), volumes, the container or the prepared process.
    fn prepare<'a>(&'a self, task: &'a TaskRun) -> BoxFuture<'a, Result<(), DriverError>>;
    fn start<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), DriverError>>;
    fn inspect<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<Observed, DriverError>>;
    /// Sends the stop signal, waits up to `grace`, then kills.
    fn stop<'a>(&'a self, task_id: &'a str, signal: &'a str, grace: Duration)
        -> BoxFuture<'a, Result<(), DriverError>>;
    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Every task of ours that exists on this node (by label / state file), to adopt after a restart.
    fn list(&self) -> BoxFuture<'_, Result<Vec<(String, Observed)>, DriverError>>;
    /// Changes as they happen (exit, removal, health). Start it before `list` so nothing falls in between.
    fn events(&self) -> BoxStream<'static, DriverEvent>;
    /// The ids of the tasks [`Driver::events`] would report, as they happen, for whoever only needs to know which
    /// task to look at again (the supervisor): a driver may save the work of saying what happened.
    fn wakes(&self) -> BoxStream<'static, String> {
        use futures_util::StreamExt as _;
        self.events().map(|event| event.task_id).boxed()
    }
    /// How often the supervisor looks at a task anyway when no event woke it, to cover events the driver may miss.
    fn resync_interval(&self) -> Duration {
        DEFAULT_RESYNC
    }
    fn logs<'a>(&'a self, task_id: &'a str, options: LogOptions) -> BoxStream<'a, Result<LogLine, DriverError>>;
}
