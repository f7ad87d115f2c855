//! The process driver: runs a task's command as a child process of the agent — for hosts without Docker, for tests,
//! and for the nodes of the multi-host harness.
//!
//! # State on disk
//!
//! Every task gets `<state dir>/tasks/<task id>/`, which is the driver's memory across agent restarts:
//! - `task.json`: what `prepare` resolved (argv, environment, working directory, user, healthcheck, stop settings)
//!   and, once started, the pid, its start time (field 22 of `/proc/<pid>/stat`) and the boot id, so that a pid the
//!   kernel has since given to another process is never mistaken for ours;
//! - `stdout.log`, `stderr.log`: the task's output. They *are* the process's stdout and stderr (opened for append),
//!   not pipes to the agent, so a task survives an agent restart without a broken pipe;
//! - `exit_code`: written when the task exits; a death by signal is `128 + signo`, as Docker reports it.
//!
//! # Adoption after an agent restart
//!
//! `list` and `inspect` read the task directories and adopt a task whose process is still alive (same pid, start
//! time and boot) as Running. The new agent is not that process's parent, and the kernel tells only the parent how
//! a process ended, so the driver watches it through a pidfd (`pidfd_open`; polling `/proc` where that is missing)
//! and, when it ends, records exit code **-1** with the note "exit code unknown (the agent restarted while the task
//! ran)" in `task.json` and the agent's log. A task that ended while no agent ran is reported the same way. Running
//! every task under a small supervisor process could have kept the real code, but it would change the task's argv,
//! pid and process tree; the process driver keeps those exactly as specified. Dropping a `ProcessDriver` stops its
//! watchers but leaves the processes running, which is how the tests simulate an agent restart.
//!
//! # Processes
//!
//! A task runs once: `start` of a task that already ran does nothing (a restart is a new task), and `stop` of a task
//! that never started does nothing either.
//! A task runs in its own session and process group (`setsid`), with only its own environment: the spec's values,
//! the agent's extra variables, and `PATH` from the agent unless the spec sets one — nothing else of the agent's
//! environment leaks in (`- KEY` entries without a value are left out). The working directory defaults to `/`, as
//! in a container without `WORKDIR`. `user` (`uid[:gid]` or `name[:group]`, names from `/etc/passwd` and
//! `/etc/group`) needs a root agent; supplementary groups are dropped. Stop signals go to the whole process group,
//! and when the task's main process exits, whatever remains of its group is killed — as Docker does when a
//! container's main process exits.
//!
//! # Health
//!
//! Docker's rules: the first probe runs one interval after the start (`start_interval`, default 5 s, while starting
//! within `start_period`), failures during the start period do not count while the task has not been healthy yet, one
//! success makes it healthy and `retries` consecutive failures unhealthy. An adopted task is probed at once.
//! [`ProcessDriver::health`] tells "starting" from "unhealthy", which `Observed` folds into `Some(false)`.
//!
//! # Logs
//!
//! `logs` reads the two files; `follow` polls them every 100 ms until the task no longer runs. The files hold no
//! times, so `timestamps` prefixes each line with the time the driver *read* it (RFC 3339, UTC, nanoseconds), and
//! `tail` counts lines per stream: stdout and stderr are separate files and their relative order is not kept.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::fs;
use std::fs::OpenOptions;
use std::future::Future;
use std::io;
use std::io::SeekFrom;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use futures_util::stream;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde::Deserialize;
use serde::Serialize;
use swarm_specs::spec::Healthcheck;
use swarm_specs::units::parse_signal;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncSeekExt;
use tokio::io::Interest;
use tokio::process::Child;
use tokio::process::Command;
use tokio::sync::broadcast;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::BroadcastStream;

use super::BoxFuture;
use super::Driver;
use super::DriverError;
use super::DriverEvent;
use super::LogLine;
use super::LogOptions;
use super::LogStream;
use super::Observed;
use super::TaskHealth;
use super::TaskRun;

/// `PATH` for tasks when the agent itself has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEFAULT_STOP_SIGNAL: &str = "SIGTERM";
const DEFAULT_WORKING_DIR: &str = "/";
/// Docker's healthcheck defaults.
const HEALTH_INTERVAL: Duration = Duration::from_secs(30);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
const HEALTH_START_INTERVAL: Duration = Duration::from_secs(5);
const HEALTH_RETRIES: u64 = 3;
/// How long a SIGKILLed process group may take to go before `stop` reports a failure (a process stuck in the kernel).
const KILL_WAIT: Duration = Duration::from_secs(10);
const LOG_POLL: Duration = Duration::from_millis(100);
/// How often an adopted process is checked when the kernel offers no pidfd.
const ADOPTED_POLL: Duration = Duration::from_millis(250);
const EVENT_BUFFER: usize = 1024;
/// Most bytes of a log file read at once, so a big log streams instead of filling memory.
const LOG_CHUNK: u64 = 64 * 1024;
const UNKNOWN_EXIT_NOTE: &str = "exit code unknown (the agent restarted while the task ran)";

const TASKS_DIR: &str = "tasks";
const TASK_FILE: &str = "task.json";
const STDOUT_LOG: &str = "stdout.log";
const STDERR_LOG: &str = "stderr.log";
const EXIT_CODE_FILE: &str = "exit_code";

/// A task's healthcheck state (what `Observed::Running` reports as a [`TaskHealth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// No probe has passed yet.
    Starting,
    Healthy,
    /// `retries` probes failed in a row.
    Unhealthy,
}

/// Runs tasks as child processes; see the module documentation for the state it keeps and how it adopts tasks.
pub struct ProcessDriver {
    inner: Arc<Inner>,
}

impl ProcessDriver {
    /// A driver keeping its task state under `<state_dir>/tasks/` (created on the first `prepare`). `node_id` names
    /// the node in errors.
    pub fn new(state_dir: &Path, node_id: &str) -> ProcessDriver {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        ProcessDriver {
            inner: Arc::new(Inner {
                tasks_dir: state_dir.join(TASKS_DIR),
                node_id: node_id.to_string(),
                events,
                live: Mutex::new(HashMap::new()),
                locks: Mutex::new(HashMap::new()),
                background: Mutex::new(JoinSet::new()),
            }),
        }
    }

    /// The directory holding a task's state and logs.
    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.inner.task_dir(task_id)
    }

    /// The healthcheck state of a task this driver runs or has adopted; None without a healthcheck or such a task.
    pub fn health(&self, task_id: &str) -> Option<HealthStatus> {
        let live = lock(&self.inner.live);
        live.get(task_id).and_then(|task| task.status().health)
    }
}

impl Drop for ProcessDriver {
    /// Stops watching; the processes keep running so that the next driver on this state directory adopts them.
    fn drop(&mut self) {
        lock(&self.inner.background).abort_all();
    }
}

impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    fn available(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }

    fn engine_version(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async { None })
    }

    fn prepare<'a>(&'a self, task: &'a TaskRun) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.inner.prepare(task))
    }

    fn start<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.inner.start(task_id))
    }

    fn inspect<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<Observed, DriverError>> {
        Box::pin(async move {
            check_task_id(task_id)?;
            Ok(self.inner.observe(task_id)?.observed)
        })
    }

    fn stop<'a>(
        &'a self,
        task_id: &'a str,
        signal: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            check_task_id(task_id)?;
            let task_lock = self.inner.task_lock(task_id);
            let _held = task_lock.lock().await;
            self.inner.stop_locked(task_id, signal, grace).await
        })
    }

    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.inner.remove(task_id))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<(String, Observed)>, DriverError>> {
        Box::pin(async move { self.inner.list() })
    }

    fn events(&self) -> BoxStream<'static, DriverEvent> {
        BroadcastStream::new(self.inner.events.subscribe())
            .filter_map(|event| futures_util::future::ready(event.ok()))
            .boxed()
    }

    fn logs<'a>(&'a self, task_id: &'a str, options: LogOptions) -> BoxStream<'a, Result<LogLine, DriverError>> {
        if let Err(e) = check_task_id(task_id) {
            return stream::once(async move { Err(e) }).boxed();
        }
        let reader = LogReader {
            inner: Arc::clone(&self.inner),
            task_id: task_id.to_string(),
            options,
            files: None,
            queue: VecDeque::new(),
            finished: false,
        };
        stream::unfold(reader, LogReader::next_line).boxed()
    }
}

/// What the driver shares with its watchers.
struct Inner {
    /// `<state dir>/tasks`: one directory per task.
    tasks_dir: PathBuf,
    /// Named in errors, so a person knows which node refused.
    node_id: String,
    events: broadcast::Sender<DriverEvent>,
    /// Tasks this driver started or adopted; their status is kept by the watcher that owns the process.
    live: Mutex<HashMap<String, Arc<LiveTask>>>,
    /// One lock per task so that prepare, start, stop and remove of a task never interleave.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Exit watchers and health checkers, aborted when the driver is dropped.
    background: Mutex<JoinSet<()>>,
}

/// A started (or adopted) task.
struct LiveTask {
    /// The main process; also the id of the task's session and process group.
    pid: u32,
    /// Changed only by the task's watchers; events are sent while it is held so they keep its order.
    status: watch::Sender<Status>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Status {
    exit: Option<i64>,
    health: Option<HealthStatus>,
}

impl Status {
    fn observed(self) -> Observed {
        match self.exit {
            Some(code) => Observed::Exited { code },
            None => Observed::Running {
                health: match self.health {
                    None => TaskHealth::None,
                    Some(HealthStatus::Starting) => TaskHealth::Starting,
                    Some(HealthStatus::Healthy) => TaskHealth::Healthy,
                    Some(HealthStatus::Unhealthy) => TaskHealth::Unhealthy,
                },
            },
        }
    }
}

impl LiveTask {
    fn new(pid: u32, status: Status) -> LiveTask {
        LiveTask {
            pid,
            status: watch::Sender::new(status),
        }
    }

    fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// Waits until the task has exited and returns its code.
    async fn exited(&self) -> i64 {
        let mut rx = self.status.subscribe();
        let code = rx.wait_for(|s| s.exit.is_some()).await.ok().and_then(|s| s.exit);
        code.unwrap_or(-1)
    }
}

/// `task.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TaskFile {
    task_id: String,
    /// `<service>.<slot>.<task id>`, for people reading the directory.
    name: String,
    /// Exactly as the process sees it: entrypoint then command.
    argv: Vec<String>,
    /// The whole environment of the process.
    env: BTreeMap<String, String>,
    working_dir: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    healthcheck: Option<Healthcheck>,
    #[serde(default)]
    stop_signal: Option<String>,
    stop_grace_period_ms: u64,
    /// Set once started.
    #[serde(default)]
    pid: Option<u32>,
    /// The process's start time in clock ticks after boot (`/proc/<pid>/stat` field 22): with the boot id, tells our
    /// process from a later one that got the same pid.
    #[serde(default)]
    start_time: Option<u64>,
    #[serde(default)]
    boot_id: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    started_at: Option<String>,
    /// Why the exit code is what it is, when the driver could not learn it.
    #[serde(default)]
    exit_note: Option<String>,
}

/// How a task's processes (the task and its health probes) are launched.
struct ExecContext {
    env: BTreeMap<String, String>,
    working_dir: PathBuf,
    /// `(uid, gid)` to switch to; None runs as the agent.
    ids: Option<(u32, u32)>,
}

/// What `observe` found.
struct Observation {
    observed: Observed,
    live: Option<Arc<LiveTask>>,
}

impl Inner {
    fn task_dir(&self, task_id: &str) -> PathBuf {
        self.tasks_dir.join(task_id)
    }

    fn task_lock(&self, task_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.locks).entry(task_id.to_string()).or_default())
    }

    fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let mut background = lock(&self.background);
        while background.try_join_next().is_some() {}
        background.spawn(work);
    }

    fn emit(&self, task_id: &str, observed: Observed) {
        // No receiver is fine: nobody is listening yet.
        let _ = self.events.send(DriverEvent {
            task_id: task_id.to_string(),
            observed,
        });
    }

    fn read_task_file(&self, task_id: &str) -> Result<Option<TaskFile>, DriverError> {
        let path = self.task_dir(task_id).join(TASK_FILE);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(runtime(format!("cannot read {}: {e}", path.display()))),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| runtime(format!("task state {} is damaged: {e}", path.display())))
    }

    fn write_task_file(&self, file: &TaskFile) -> Result<(), DriverError> {
        let path = self.task_dir(&file.task_id).join(TASK_FILE);
        let json = serde_json::to_vec_pretty(file).map_err(|e| runtime(format!("cannot encode task state: {e}")))?;
        write_atomic(&path, &json).map_err(|e| runtime(format!("cannot write {}: {e}", path.display())))
    }

    /// The recorded exit code, when the task has exited (-1 when the file is unreadable).
    fn read_exit_code(&self, task_id: &str) -> Option<i64> {
        match fs::read_to_string(self.task_dir(task_id).join(EXIT_CODE_FILE)) {
            Ok(text) => Some(text.trim().parse().unwrap_or(-1)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(_) => Some(-1),
        }
    }

    async fn prepare(self: &Arc<Self>, run: &TaskRun) -> Result<(), DriverError> {
        let task_id = run.task_id.as_str();
        check_task_id(task_id)?;
        let task_lock = self.task_lock(task_id);
        let _held = task_lock.lock().await;
        if self.read_task_file(task_id)?.is_some_and(|file| file.pid.is_some()) {
            return Ok(());
        }
        let file = self.plan_task(run)?;
        let dir = self.task_dir(task_id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| runtime(format!("cannot create {}: {e}", dir.display())))?;
        self.write_task_file(&file)
    }

    /// Resolves and checks what the task will run, refusing what cannot run on this node.
    fn plan_task(&self, run: &TaskRun) -> Result<TaskFile, DriverError> {
        let spec = &run.spec;
        let node = &self.node_id;
        let argv: Vec<String> = spec
            .entrypoint
            .iter()
            .chain(spec.command.iter())
            .flatten()
            .cloned()
            .collect();
        let Some(program) = argv.first() else {
            return Err(DriverError::Rejected(format!(
                "task {} ({}) has no command: a process-driver service needs `command` (or `entrypoint`)",
                run.task_id, run.name
            )));
        };
        if program.is_empty() || argv.iter().any(|arg| arg.contains('\0')) {
            return Err(DriverError::Rejected(format!(
                "task {} ({}) has an empty program name or an argument with a NUL byte",
                run.task_id, run.name
            )));
        }
        let mut env = BTreeMap::from([(
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string()),
        )]);
        env.extend(spec.env.iter().filter_map(|(k, v)| Some((k.clone(), v.clone()?))));
        env.extend(run.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some((key, _)) = env
            .iter()
            .find(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
        {
            return Err(DriverError::Rejected(format!(
                "environment variable {key:?} of task {} cannot be passed to a process (a name must be non-empty \
                 without '=' or NUL, a value without NUL)",
                run.task_id
            )));
        }
        let working_dir = spec
            .working_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_WORKING_DIR.to_string());
        if !Path::new(&working_dir).is_absolute() {
            return Err(DriverError::Rejected(format!(
                "working directory \"{working_dir}\" of task {} must be an absolute path",
                run.task_id
            )));
        }
        if !Path::new(&working_dir).is_dir() {
            return Err(DriverError::Rejected(format!(
                "working directory \"{working_dir}\" does not exist on node {node}"
            )));
        }
        if let Some(user) = &spec.user {
            resolve_user(user, node)?;
        }
        let path_var = env.get("PATH").map(String::as_str).unwrap_or_default();
        if resolve_program(program, path_var, Path::new(&working_dir)).is_none() {
            return Err(not_found(program, path_var, node));
        }
        Ok(TaskFile {
            task_id: run.task_id.clone(),
            name: run.name.clone(),
            argv,
            env,
            working_dir,
            user: spec.user.clone(),
            healthcheck: spec.healthcheck.clone(),
            stop_signal: spec.stop_signal.clone(),
            stop_grace_period_ms: spec.stop_grace_period_ms,
            pid: None,
            start_time: None,
            boot_id: None,
            started_at: None,
            exit_note: None,
        })
    }

    async fn start(self: &Arc<Self>, task_id: &str) -> Result<(), DriverError> {
        check_task_id(task_id)?;
        let node = &self.node_id;
        let task_lock = self.task_lock(task_id);
        let _held = task_lock.lock().await;
        match self.observe(task_id)?.observed {
            Observed::Created => {}
            Observed::Missing => {
                return Err(runtime(format!("task {task_id} is not prepared on node {node}")));
            }
            // Started before: a task runs once (a restart is a new task), so there is nothing more to do.
            Observed::Running { .. } | Observed::Exited { .. } => return Ok(()),
        }
        let mut file = self
            .read_task_file(task_id)?
            .ok_or_else(|| runtime(format!("task {task_id} is not prepared on node {node}")))?;
        let context = exec_context(&file, node)?;
        let argv0 = file.argv.first().cloned().unwrap_or_default();
        let path_var = context.env.get("PATH").map(String::as_str).unwrap_or_default();
        let program =
            resolve_program(&argv0, path_var, &context.working_dir).ok_or_else(|| not_found(&argv0, path_var, node))?;
        let dir = self.task_dir(task_id);
        let stdout = open_log(&dir.join(STDOUT_LOG))?;
        let stderr = open_log(&dir.join(STDERR_LOG))?;
        let mut command = context.command(&program, &file.argv);
        command.stdout(stdout).stderr(stderr);
        let mut child = command.spawn().map_err(|e| {
            runtime(format!(
                "cannot start \"{argv0}\" for task {task_id} on node {node}: {e}"
            ))
        })?;
        let Some(pid) = child.id() else {
            return Err(runtime(format!(
                "task {task_id} on node {node}: the process vanished at start"
            )));
        };
        // The child is not reaped yet, so this pid is ours for the pidfd and the start time.
        let pidfd = pidfd_open(pid);
        let probe = file.healthcheck.as_ref().and_then(Probe::of);
        let task = Arc::new(LiveTask::new(
            pid,
            Status {
                exit: None,
                health: probe.as_ref().map(|_| HealthStatus::Starting),
            },
        ));
        {
            // Under the live map's lock, so `observe` sees either no pid and no live task, or both.
            let mut live = lock(&self.live);
            file.pid = Some(pid);
            file.start_time = proc_stat(pid).map(|stat| stat.start_time);
            file.boot_id = boot_id();
            file.started_at = Some(rfc3339(SystemTime::now()));
            if let Err(e) = self.write_task_file(&file) {
                // Without its state the task could not be found again after a restart: undo the start.
                drop(live);
                let _ = kill_group(pid, libc::SIGKILL);
                self.spawn(async move {
                    let _ = child.wait().await;
                });
                return Err(e);
            }
            live.insert(task_id.to_string(), Arc::clone(&task));
        }
        // Before the watchers exist, so this event cannot come after the exit.
        self.emit(task_id, task.status().observed());
        self.spawn(wait_child(
            Arc::clone(self),
            task_id.to_string(),
            Arc::clone(&task),
            child,
            pidfd,
        ));
        if let (Some(probe), Some(healthcheck)) = (probe, file.healthcheck) {
            let settings = HealthSettings::new(&healthcheck, false);
            self.spawn(run_health(
                Arc::clone(self),
                task_id.to_string(),
                task,
                probe,
                context,
                settings,
            ));
        }
        tracing::debug!(task = task_id, pid, "process task started");
        Ok(())
    }

    /// What a task is now; adopts a task whose process outlived the agent that started it.
    fn observe(self: &Arc<Self>, task_id: &str) -> Result<Observation, DriverError> {
        let mut live = lock(&self.live);
        if let Some(task) = live.get(task_id) {
            return Ok(Observation {
                observed: task.status().observed(),
                live: Some(Arc::clone(task)),
            });
        }
        let Some(mut file) = self.read_task_file(task_id)? else {
            return Ok(Observation {
                observed: Observed::Missing,
                live: None,
            });
        };
        let observed = |observed| Ok(Observation { observed, live: None });
        if let Some(code) = self.read_exit_code(task_id) {
            return observed(Observed::Exited { code });
        }
        let Some(pid) = file.pid else {
            return observed(Observed::Created);
        };
        // Opened before the identity check, so the descriptor is known to be our process if the check passes.
        let pidfd = pidfd_open(pid);
        let start_time = file.start_time;
        let ours = start_time.is_some_and(|t| same_process(pid, t, file.boot_id.as_deref()));
        if !ours {
            // Ended while no agent watched it.
            tracing::warn!(task = task_id, pid, "{UNKNOWN_EXIT_NOTE}");
            file.exit_note = Some(UNKNOWN_EXIT_NOTE.to_string());
            self.write_task_file(&file)?;
            let path = self.task_dir(task_id).join(EXIT_CODE_FILE);
            write_atomic(&path, b"-1\n").map_err(|e| runtime(format!("cannot write {}: {e}", path.display())))?;
            return observed(Observed::Exited { code: -1 });
        }
        let probe = file.healthcheck.as_ref().and_then(Probe::of);
        let task = Arc::new(LiveTask::new(
            pid,
            Status {
                exit: None,
                health: probe.as_ref().map(|_| HealthStatus::Starting),
            },
        ));
        live.insert(task_id.to_string(), Arc::clone(&task));
        drop(live);
        tracing::info!(task = task_id, pid, "adopted a running process task");
        let boot = file.boot_id.clone();
        self.spawn(wait_adopted(
            Arc::clone(self),
            task_id.to_string(),
            Arc::clone(&task),
            pidfd,
            start_time.unwrap_or_default(),
            boot,
        ));
        if let (Some(probe), Some(healthcheck)) = (probe, &file.healthcheck) {
            match exec_context(&file, &self.node_id) {
                Ok(context) => {
                    let settings = HealthSettings::new(healthcheck, true);
                    let work = run_health(
                        Arc::clone(self),
                        task_id.to_string(),
                        Arc::clone(&task),
                        probe,
                        context,
                        settings,
                    );
                    self.spawn(work);
                }
                Err(e) => {
                    tracing::warn!(task = task_id, "cannot run the healthcheck of an adopted task: {e}");
                    task.status.send_modify(|s| s.health = Some(HealthStatus::Unhealthy));
                }
            }
        }
        Ok(Observation {
            observed: task.status().observed(),
            live: Some(task),
        })
    }

    /// Records an exit: files first, then the status, so whoever waits on the status finds the files written.
    fn record_exit(&self, task_id: &str, task: &LiveTask, code: i64, note: Option<&str>) {
        let dir = self.task_dir(task_id);
        if let Err(e) = write_atomic(&dir.join(EXIT_CODE_FILE), format!("{code}\n").as_bytes()) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(task = task_id, "cannot record the exit code: {e}");
            }
        }
        if let Some(note) = note {
            tracing::warn!(task = task_id, pid = task.pid, "{note}");
            if let Ok(Some(mut file)) = self.read_task_file(task_id) {
                file.exit_note = Some(note.to_string());
                if let Err(e) = self.write_task_file(&file) {
                    tracing::warn!(task = task_id, "{e}");
                }
            }
        }
        task.status.send_if_modified(|status| {
            if status.exit.is_some() {
                return false;
            }
            status.exit = Some(code);
            self.emit(task_id, Observed::Exited { code });
            true
        });
        tracing::debug!(task = task_id, code, "process task exited");
    }

    async fn stop_locked(self: &Arc<Self>, task_id: &str, signal: &str, grace: Duration) -> Result<(), DriverError> {
        let node = &self.node_id;
        let Some(task) = self.observe(task_id)?.live else {
            return Ok(());
        };
        if task.status().exit.is_some() {
            return Ok(());
        }
        let signal = match signal.trim() {
            "" => self
                .read_task_file(task_id)?
                .and_then(|file| file.stop_signal)
                .unwrap_or_else(|| DEFAULT_STOP_SIGNAL.to_string()),
            given => given.to_string(),
        };
        let signo = signal_number(&signal)
            .map_err(|e| DriverError::Rejected(format!("cannot stop task {task_id} on node {node}: {e}")))?;
        let pid = task.pid;
        let signal_group = |signo: i32, name: &str| match kill_group(pid, signo) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(runtime(format!(
                "cannot send {name} to task {task_id} (process group {pid}) on node {node}: {e}"
            ))),
        };
        signal_group(signo, &signal)?;
        if tokio::time::timeout(grace, task.exited()).await.is_ok() {
            return Ok(());
        }
        tracing::debug!(
            task = task_id,
            pid,
            ?grace,
            "still running after the grace period; killing"
        );
        signal_group(libc::SIGKILL, "SIGKILL")?;
        match tokio::time::timeout(KILL_WAIT, task.exited()).await {
            Ok(_) => Ok(()),
            Err(_) => Err(runtime(format!(
                "task {task_id} (pid {pid}) on node {node} did not exit within {}s of SIGKILL",
                KILL_WAIT.as_secs()
            ))),
        }
    }

    async fn remove(self: &Arc<Self>, task_id: &str) -> Result<(), DriverError> {
        check_task_id(task_id)?;
        let task_lock = self.task_lock(task_id);
        let _held = task_lock.lock().await;
        let was_live = match self.observe(task_id) {
            Ok(observation) => {
                if observation
                    .live
                    .as_ref()
                    .is_some_and(|task| task.status().exit.is_none())
                {
                    let grace_ms = self
                        .read_task_file(task_id)?
                        .map_or(0, |file| file.stop_grace_period_ms);
                    self.stop_locked(task_id, "", Duration::from_millis(grace_ms)).await?;
                }
                observation.live.is_some()
            }
            // A damaged state file: the process cannot be known, but the directory still goes.
            Err(e) => {
                tracing::warn!(task = task_id, "removing a task whose state cannot be read: {e}");
                false
            }
        };
        lock(&self.live).remove(task_id);
        let dir = self.task_dir(task_id);
        let existed = match fs::remove_dir_all(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(runtime(format!("cannot remove {}: {e}", dir.display()))),
        };
        if existed || was_live {
            self.emit(task_id, Observed::Missing);
        }
        lock(&self.locks).remove(task_id);
        Ok(())
    }

    fn list(self: &Arc<Self>) -> Result<Vec<(String, Observed)>, DriverError> {
        let entries = match fs::read_dir(&self.tasks_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(runtime(format!("cannot list {}: {e}", self.tasks_dir.display()))),
        };
        let mut tasks = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| runtime(format!("cannot list {}: {e}", self.tasks_dir.display())))?;
            let Some(task_id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if check_task_id(&task_id).is_err() || !entry.path().is_dir() {
                continue;
            }
            match self.observe(&task_id) {
                // A directory without task.json: a prepare that did not finish.
                Ok(Observation {
                    observed: Observed::Missing,
                    ..
                }) => {}
                Ok(observation) => tasks.push((task_id, observation.observed)),
                Err(e) => tracing::warn!(task = task_id, "skipping a task whose state cannot be read: {e}"),
            }
        }
        tasks.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(tasks)
    }
}

/// Waits for a child this driver spawned.
async fn wait_child(inner: Arc<Inner>, task_id: String, task: Arc<LiveTask>, mut child: Child, pidfd: Option<OwnedFd>) {
    // Wait for the exit without reaping, so the process group id cannot be reused while the rest of the group is
    // killed.
    let watched = match pidfd {
        Some(pidfd) => pidfd_exited(pidfd).await,
        None => false,
    };
    if watched {
        let _ = kill_group(task.pid, libc::SIGKILL);
    }
    let code = match child.wait().await {
        Ok(status) => exit_code(status),
        Err(e) => {
            tracing::warn!(task = task_id, "cannot learn how the process ended: {e}");
            -1
        }
    };
    if !watched {
        let _ = kill_group(task.pid, libc::SIGKILL);
    }
    inner.record_exit(&task_id, &task, code, None);
}

/// Waits for a process another agent started: only the end can be known, not the exit code.
async fn wait_adopted(
    inner: Arc<Inner>,
    task_id: String,
    task: Arc<LiveTask>,
    pidfd: Option<OwnedFd>,
    start_time: u64,
    boot: Option<String>,
) {
    let watched = match pidfd {
        Some(pidfd) => pidfd_exited(pidfd).await,
        None => false,
    };
    if !watched {
        while same_process(task.pid, start_time, boot.as_deref()) {
            tokio::time::sleep(ADOPTED_POLL).await;
        }
    }
    let _ = kill_group(task.pid, libc::SIGKILL);
    inner.record_exit(&task_id, &task, -1, Some(UNKNOWN_EXIT_NOTE));
}

/// A healthcheck's test.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    /// `["CMD", program, args...]`
    Exec(Vec<String>),
    /// `["CMD-SHELL", script]`, run with `/bin/sh -c`.
    Shell(String),
}

impl Probe {
    /// None for `["NONE"]` and for tests normalization would have refused.
    fn of(healthcheck: &Healthcheck) -> Option<Probe> {
        match healthcheck.test.split_first() {
            Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => Some(Probe::Exec(rest.to_vec())),
            Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => Some(Probe::Shell(rest.join(" "))),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct HealthSettings {
    interval: Duration,
    timeout: Duration,
    start_period: Duration,
    start_interval: Duration,
    retries: u64,
    /// Run the first probe at once (an adopted task, whose health was lost with the previous agent).
    probe_at_once: bool,
}

impl HealthSettings {
    fn new(healthcheck: &Healthcheck, adopted: bool) -> HealthSettings {
        let duration = |ms: Option<u64>, default| ms.filter(|ms| *ms > 0).map_or(default, Duration::from_millis);
        HealthSettings {
            interval: duration(healthcheck.interval_ms, HEALTH_INTERVAL),
            timeout: duration(healthcheck.timeout_ms, HEALTH_TIMEOUT),
            start_period: if adopted {
                Duration::ZERO
            } else {
                duration(healthcheck.start_period_ms, Duration::ZERO)
            },
            start_interval: duration(healthcheck.start_interval_ms, HEALTH_START_INTERVAL),
            retries: healthcheck.retries.filter(|r| *r > 0).unwrap_or(HEALTH_RETRIES),
            probe_at_once: adopted,
        }
    }
}

/// Docker's health state machine: the next state after one probe result. `in_start_period` is whether the probe
/// began within the start period; `failures` is the running count of consecutive failures.
fn next_health(
    current: HealthStatus,
    passed: bool,
    in_start_period: bool,
    failures: &mut u64,
    retries: u64,
) -> HealthStatus {
    if passed {
        *failures = 0;
        return HealthStatus::Healthy;
    }
    if current == HealthStatus::Starting && in_start_period {
        return current;
    }
    *failures += 1;
    if *failures >= retries {
        HealthStatus::Unhealthy
    } else {
        current
    }
}

async fn run_health(
    inner: Arc<Inner>,
    task_id: String,
    task: Arc<LiveTask>,
    probe: Probe,
    context: ExecContext,
    settings: HealthSettings,
) {
    let started = Instant::now();
    let mut failures = 0;
    let mut first = true;
    loop {
        let wait = if first && settings.probe_at_once {
            Duration::ZERO
        } else if started.elapsed() < settings.start_period && task.status().health == Some(HealthStatus::Starting) {
            settings.start_interval
        } else {
            settings.interval
        };
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = task.exited() => return,
        }
        let in_start_period = started.elapsed() < settings.start_period;
        let passed = tokio::select! {
            passed = run_probe(&probe, &context, settings.timeout) => passed,
            _ = task.exited() => return,
        };
        task.status.send_if_modified(|status| {
            let current = status.health.unwrap_or(HealthStatus::Starting);
            let next = next_health(current, passed, in_start_period, &mut failures, settings.retries);
            if status.exit.is_some() || next == current {
                return false;
            }
            status.health = Some(next);
            tracing::debug!(task = task_id, ?next, "health changed");
            inner.emit(&task_id, status.observed());
            true
        });
    }
}

/// Runs one probe; true when it exits 0 within the timeout.
async fn run_probe(probe: &Probe, context: &ExecContext, timeout: Duration) -> bool {
    let (program, argv) = match probe {
        Probe::Exec(argv) => {
            let path_var = context.env.get("PATH").map(String::as_str).unwrap_or_default();
            let Some(program) = argv
                .first()
                .and_then(|p| resolve_program(p, path_var, &context.working_dir))
            else {
                return false;
            };
            (program, argv.clone())
        }
        Probe::Shell(script) => (
            PathBuf::from("/bin/sh"),
            vec!["/bin/sh".to_string(), "-c".to_string(), script.clone()],
        ),
    };
    let mut command = context.command(&program, &argv);
    command.stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
    let Ok(mut child) = command.spawn() else {
        return false;
    };
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status.success(),
        Ok(Err(_)) => false,
        Err(_) => {
            // Not reaped yet, so the group id is still the probe's.
            if let Some(pid) = pid {
                let _ = kill_group(pid, libc::SIGKILL);
            }
            let _ = child.wait().await;
            false
        }
    }
}

impl ExecContext {
    fn command(&self, program: &Path, argv: &[String]) -> Command {
        let mut command = Command::new(program);
        if let Some((argv0, args)) = argv.split_first() {
            command.arg0(argv0).args(args);
        }
        command
            .env_clear()
            .envs(&self.env)
            .current_dir(&self.working_dir)
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.ids {
            // std calls setgroups(0), setgid and setuid in the child, in that order.
            command.uid(uid).gid(gid);
        }
        // SAFETY: the closure runs in the forked child before exec; it only calls setsid, which is async-signal-safe,
        // and builds an io::Error from errno, which does not allocate.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
        }
        command
    }
}

fn exec_context(file: &TaskFile, node: &str) -> Result<ExecContext, DriverError> {
    let ids = match &file.user {
        Some(user) => resolve_user(user, node)?,
        None => None,
    };
    Ok(ExecContext {
        env: file.env.clone(),
        working_dir: PathBuf::from(&file.working_dir),
        ids,
    })
}

/// Reads a task's logs; a `stream::unfold` state.
struct LogReader {
    inner: Arc<Inner>,
    task_id: String,
    options: LogOptions,
    /// Opened on the first read, where the tail is found.
    files: Option<[LogFile; 2]>,
    queue: VecDeque<Result<LogLine, DriverError>>,
    finished: bool,
}

impl LogReader {
    async fn next_line(mut self) -> Option<(Result<LogLine, DriverError>, LogReader)> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some((item, self));
            }
            if self.finished {
                return None;
            }
            if let Err(e) = self.fill().await {
                self.finished = true;
                self.queue.push_back(Err(e));
            }
        }
    }

    async fn fill(&mut self) -> Result<(), DriverError> {
        let dir = self.inner.task_dir(&self.task_id);
        if self.files.is_none() {
            if !dir.is_dir() {
                return Err(DriverError::Rejected(format!(
                    "no task {} on node {}",
                    self.task_id, self.inner.node_id
                )));
            }
            let mut files = [
                LogFile::new(dir.join(STDOUT_LOG), LogStream::Stdout),
                LogFile::new(dir.join(STDERR_LOG), LogStream::Stderr),
            ];
            if let Some(n) = self.options.tail {
                for file in &mut files {
                    file.offset = tail_offset(&file.path, n).await.map_err(|e| file.error(&e))?;
                }
            }
            self.files = Some(files);
        }
        let Some(files) = self.files.as_mut() else {
            return Ok(());
        };
        // Decided before reading, so lines written just before the exit are still read.
        let last = !self.options.follow
            || !matches!(
                self.inner.observe(&self.task_id).map(|o| o.observed),
                Ok(Observed::Running { .. })
            );
        let mut at_end = true;
        for file in files.iter_mut() {
            let (lines, end) = file.read_chunk(last).await.map_err(|e| file.error(&e))?;
            at_end &= end;
            for line in lines {
                let text = if self.options.timestamps {
                    format!("{} {line}", rfc3339(SystemTime::now()))
                } else {
                    line
                };
                self.queue.push_back(Ok(LogLine {
                    stream: file.stream.clone(),
                    text,
                }));
            }
        }
        if at_end {
            if last {
                self.finished = true;
            } else if self.queue.is_empty() {
                tokio::time::sleep(LOG_POLL).await;
            }
        }
        Ok(())
    }
}

/// One log file being read.
struct LogFile {
    path: PathBuf,
    stream: LogStream,
    /// Where the next read starts.
    offset: u64,
    /// The start of a line whose end has not been written yet.
    partial: Vec<u8>,
}

impl LogFile {
    fn new(path: PathBuf, stream: LogStream) -> LogFile {
        LogFile {
            path,
            stream,
            offset: 0,
            partial: Vec::new(),
        }
    }

    fn error(&self, e: &io::Error) -> DriverError {
        runtime(format!("cannot read {}: {e}", self.path.display()))
    }

    /// The complete lines of the next chunk, and whether the end of the file was reached. At the end, `flush` also
    /// returns an unfinished last line.
    async fn read_chunk(&mut self, flush: bool) -> io::Result<(Vec<String>, bool)> {
        let mut file = match tokio::fs::File::open(&self.path).await {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((self.flush(flush), true)),
            Err(e) => return Err(e),
        };
        let len = file.metadata().await?.len();
        if len < self.offset {
            // Truncated behind our back: start over.
            self.offset = 0;
            self.partial.clear();
        }
        file.seek(SeekFrom::Start(self.offset)).await?;
        let mut buf = Vec::new();
        let read = file
            .take(LOG_CHUNK.min(len - self.offset))
            .read_to_end(&mut buf)
            .await?;
        self.offset += read as u64;
        let at_end = self.offset >= len;
        self.partial.extend_from_slice(&buf);
        let mut lines = Vec::new();
        if let Some(last_newline) = self.partial.iter().rposition(|b| *b == b'\n') {
            let rest = self.partial.split_off(last_newline + 1);
            let complete = std::mem::replace(&mut self.partial, rest);
            lines.extend(
                complete
                    .split(|b| *b == b'\n')
                    .map(|line| String::from_utf8_lossy(line).into_owned()),
            );
            // `split` yields an empty piece after the final newline.
            lines.pop();
        }
        if at_end {
            lines.extend(self.flush(flush));
        }
        Ok((lines, at_end))
    }

    fn flush(&mut self, flush: bool) -> Vec<String> {
        if flush && !self.partial.is_empty() {
            vec![String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned()]
        } else {
            Vec::new()
        }
    }
}

/// Where the last `n` lines of a file begin (a final newline ends the last line rather than starting another).
async fn tail_offset(path: &Path, n: usize) -> io::Result<u64> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata().await?.len();
    if n == 0 {
        return Ok(len);
    }
    let mut seen = 0;
    let mut end = len;
    let mut buf = vec![0u8; 8192];
    while end > 0 {
        let size = end.min(buf.len() as u64);
        let start = end - size;
        let chunk = buf.get_mut(..size as usize).unwrap_or_default();
        file.seek(SeekFrom::Start(start)).await?;
        file.read_exact(chunk).await?;
        for (i, byte) in chunk.iter().enumerate().rev() {
            let at = start + i as u64;
            if *byte == b'\n' && at + 1 != len {
                seen += 1;
                if seen == n {
                    return Ok(at + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn runtime(message: String) -> DriverError {
    DriverError::Runtime(message)
}

fn not_found(program: &str, path_var: &str, node: &str) -> DriverError {
    let looked = if program.contains('/') {
        "not an executable file".to_string()
    } else {
        format!("no executable file of that name in PATH {path_var}")
    };
    DriverError::Rejected(format!("command \"{program}\" not found on node {node} ({looked})"))
}

/// Task ids name directories, so only plain names are accepted.
fn check_task_id(task_id: &str) -> Result<(), DriverError> {
    let plain = !task_id.is_empty()
        && task_id.len() <= 128
        && !task_id.starts_with('.')
        && task_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if plain {
        Ok(())
    } else {
        Err(DriverError::Rejected(format!(
            "invalid task id {task_id:?}: use up to 128 letters, digits, '-', '_' and '.', not starting with '.'"
        )))
    }
}

/// The file a program name refers to: a path (relative to the working directory) or a name looked up in `PATH`.
fn resolve_program(program: &str, path_var: &str, working_dir: &Path) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let path = working_dir.join(program);
        return is_executable(&path).then_some(path);
    }
    path_var
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| working_dir.join(dir).join(program))
        .find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// `uid[:gid]` or `name[:group]` to the ids to switch to; None when no switch is needed (the agent is that user).
fn resolve_user(user: &str, node: &str) -> Result<Option<(u32, u32)>, DriverError> {
    let (name, group) = match user.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (user, None),
    };
    let invalid = || {
        DriverError::Rejected(format!(
            "invalid user \"{user}\": use a uid or user name, optionally followed by :gid or :group"
        ))
    };
    if name.is_empty() || group == Some("") {
        return Err(invalid());
    }
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let (uid, primary_gid) = match name.parse::<u32>() {
        // A uid without an entry runs with gid 0, as in Docker.
        Ok(uid) => (uid, lookup_id(&passwd, |f| f.get(2) == Some(&name), 3).unwrap_or(0)),
        Err(_) => {
            let uid = lookup_id(&passwd, |f| f.first() == Some(&name), 2);
            let gid = lookup_id(&passwd, |f| f.first() == Some(&name), 3);
            match (uid, gid) {
                (Some(uid), Some(gid)) => (uid, gid),
                _ => {
                    return Err(DriverError::Rejected(format!(
                        "user \"{name}\" not found in /etc/passwd on node {node} (use a numeric uid or a user that \
                         exists on the node)"
                    )))
                }
            }
        }
    };
    let gid = match group {
        None => primary_gid,
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = fs::read_to_string("/etc/group").unwrap_or_default();
                lookup_id(&groups, |f| f.first() == Some(&group), 2).ok_or_else(|| {
                    DriverError::Rejected(format!(
                        "group \"{group}\" not found in /etc/group on node {node} (use a numeric gid or a group \
                         that exists on the node)"
                    ))
                })?
            }
        },
    };
    match effective_ids() {
        Some((0, _)) => Ok(Some((uid, gid))),
        Some(current) if current == (uid, gid) => Ok(None),
        current => Err(DriverError::Rejected(format!(
            "cannot run a task as user \"{user}\" on node {node}: the agent runs as uid {}, not as root, so it \
             cannot switch users (run the agent as root or drop `user`)",
            current.map_or_else(|| "?".to_string(), |(uid, _)| uid.to_string())
        ))),
    }
}

/// A numeric field of the first `/etc/passwd`-style line whose fields match.
fn lookup_id(table: &str, matches: impl Fn(&[&str]) -> bool, field: usize) -> Option<u32> {
    table
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| matches(fields))
        .and_then(|fields| fields.get(field)?.parse().ok())
}

/// The agent's effective uid and gid, from `/proc/self/status`.
fn effective_ids() -> Option<(u32, u32)> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|id| id.parse().ok())
    };
    Some((field("Uid:")?, field("Gid:")?))
}

/// A signal given by name or number (`SIGTERM`, `term`, `15`, `SIGRTMIN+3`) to its number.
fn signal_number(signal: &str) -> Result<i32, String> {
    let name = parse_signal(signal).map_err(|e| e.0)?;
    (1..=64)
        .find(|n| parse_signal(&n.to_string()).is_ok_and(|candidate| candidate == name))
        .ok_or_else(|| format!("signal {signal:?} has no number on Linux"))
}

/// Sends a signal to a process group.
fn kill_group(pgid: u32, signal: i32) -> io::Result<()> {
    // Never 0 (our own group) or 1 (every process): only a task's group.
    let pgid = libc::pid_t::try_from(pgid)
        .ok()
        .filter(|pgid| *pgid > 1)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("invalid process group {pgid}")))?;
    // SAFETY: kill takes two integers and touches no memory; a negative pid addresses the process group.
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A pidfd for `pid` (Linux 5.3+), None where the kernel has none or the process is gone.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just created this descriptor (close-on-exec) and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until the process behind a pidfd has exited; false when the pidfd cannot be watched.
async fn pidfd_exited(pidfd: OwnedFd) -> bool {
    // SAFETY: an OwnedFd stays open, and `as_raw_fd` returns the same descriptor, until the AsyncFd drops it.
    match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
        Ok(fd) => fd.readable().await.is_ok(),
        Err(_) => false,
    }
}

/// What the driver reads from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: char,
    start_time: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `/proc/<pid>/stat`; the command name (field 2) may hold spaces and parentheses, so fields are counted
/// after its last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` begins at field 3 (state); the start time is field 22.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        start_time: fields.get(22 - 3)?.parse().ok()?,
    })
}

/// Whether `pid` is still the process that started at `start_time` in boot `boot`, and has not exited.
fn same_process(pid: u32, start_time: u64, boot: Option<&str>) -> bool {
    if boot.is_some() && boot_id().as_deref() != boot {
        return false;
    }
    proc_stat(pid).is_some_and(|stat| stat.start_time == start_time && !matches!(stat.state, 'Z' | 'X' | 'x'))
}

fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_string())
}

/// Docker's convention: the exit status, or 128 + the signal that killed the process.
fn exit_code(status: ExitStatus) -> i64 {
    match (status.code(), status.signal()) {
        (Some(code), _) => i64::from(code),
        (None, Some(signal)) => 128 + i64::from(signal),
        (None, None) => -1,
    }
}

fn open_log(path: &Path) -> Result<fs::File, DriverError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| runtime(format!("cannot open {}: {e}", path.display())))
}

/// Writes a file so that readers see the old or the new content, never a part (and it survives a crash).
fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

/// RFC 3339 in UTC with nanoseconds, as Docker prints log timestamps.
fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (year, month, day) = swarm_specs::units::civil_from_days(days);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(signal_number("SIGTERM"), Ok(libc::SIGTERM));
        assert_eq!(signal_number("term"), Ok(libc::SIGTERM));
        assert_eq!(signal_number("9"), Ok(libc::SIGKILL));
        assert_eq!(signal_number("SIGUSR1"), Ok(libc::SIGUSR1));
        assert_eq!(signal_number("SIGRTMIN+3"), Ok(37));
        assert!(signal_number("SIGNOPE").is_err_and(|e| e.contains("SIGNOPE")));
    }

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let text = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                state: 'S',
                start_time: 987_654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(951_782_400 + 3661, 5); // 2000-02-29 01:01:01
        assert_eq!(rfc3339(t), "2000-02-29T01:01:01.000000005Z");
        assert_eq!(swarm_specs::units::civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn health_follows_docker() {
        let mut failures = 0;
        use HealthStatus::*;
        // Failures in the start period do not count while starting.
        assert_eq!(next_health(Starting, false, true, &mut failures, 2), Starting);
        assert_eq!(failures, 0);
        assert_eq!(next_health(Starting, false, false, &mut failures, 2), Starting);
        assert_eq!(next_health(Starting, false, false, &mut failures, 2), Unhealthy);
        assert_eq!(next_health(Unhealthy, true, false, &mut failures, 2), Healthy);
        assert_eq!(failures, 0);
        // Once healthy, a failure counts even inside the start period.
        assert_eq!(next_health(Healthy, false, true, &mut failures, 2), Healthy);
        assert_eq!(next_health(Healthy, false, true, &mut failures, 2), Unhealthy);
    }

    #[test]
    fn probes_from_tests() {
        let check = |test: &[&str]| {
            Probe::of(&Healthcheck {
                test: test.iter().map(|s| s.to_string()).collect(),
                interval_ms: None,
                timeout_ms: None,
                start_period_ms: None,
                start_interval_ms: None,
                retries: None,
            })
        };
        assert_eq!(check(&["CMD", "true"]), Some(Probe::Exec(vec!["true".into()])));
        assert_eq!(check(&["CMD-SHELL", "exit 1"]), Some(Probe::Shell("exit 1".into())));
        assert_eq!(check(&["NONE"]), None);
        assert_eq!(check(&[]), None);
    }

    #[test]
    fn task_ids_name_plain_directories() {
        assert!(check_task_id("abc-1_2.x").is_ok());
        for bad in ["", ".", "..", "a/b", ".hidden", "a b"] {
            assert!(check_task_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn users_resolve_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n";
        assert_eq!(lookup_id(passwd, |f| f.first() == Some(&"nobody"), 2), Some(65534));
        assert_eq!(lookup_id(passwd, |f| f.first() == Some(&"ghost"), 2), None);
    }
}
