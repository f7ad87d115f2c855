//! The supervisor: keeps one small loop per assigned task that drives the state machine against the task's driver,
//! wakes it on driver events and assignment changes, adopts what a previous run left behind, and removes what is
//! no longer assigned. It never loses a task: a task leaves its map only once its runtime object is gone.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt as _;
use swarm_specs::task::Task;
use swarm_specs::task::TaskState;
use swarm_specs::task::TaskStatus;
use tokio::sync::mpsc;
use tokio::sync::watch;

use crate::driver::Driver;
use crate::driver::DriverError;
use crate::driver::Observed;
use crate::driver::TaskRun;
use crate::files::TaskFiles;
use crate::machine;
use crate::machine::Action;

/// A status change to report to the managers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub task_id: String,
    pub status: TaskStatus,
}

/// How often a task's loop looks at its runtime even without events (missed events are covered by this resync),
/// unless its driver says otherwise ([`Driver::resync_interval`]).
pub const RESYNC: Duration = crate::driver::DEFAULT_RESYNC;

struct Entry {
    /// The latest assignment (desired state, spec); the loop reads it on every step.
    task: watch::Sender<Task>,
    /// Set when the task is no longer assigned to this node: the loop stops and removes it.
    unassigned: watch::Sender<bool>,
}

pub struct Supervisor {
    node_id: String,
    drivers: BTreeMap<String, Arc<dyn Driver>>,
    tasks: Mutex<HashMap<String, Entry>>,
    reports: mpsc::UnboundedSender<StatusUpdate>,
    /// Wakes a task's loop: a driver event for it arrived.
    wake: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// The secret and config contents delivered to this node, and the tasks' files (None: this node takes none).
    files: Option<Arc<TaskFiles>>,
    /// How many task loops are doing something rather than waiting for a change.
    busy: std::sync::atomic::AtomicUsize,
    /// Told when the last busy loop settles (and when the supervisor goes): see [`release_memory`].
    settled: Arc<tokio::sync::Notify>,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Lets `release_memory` see that the supervisor is gone.
        self.settled.notify_one();
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Supervisor {
    /// `drivers` by name (`docker`, `process`); status changes are sent to `reports`.
    pub fn new(
        node_id: &str,
        drivers: Vec<Arc<dyn Driver>>,
        reports: mpsc::UnboundedSender<StatusUpdate>,
    ) -> Arc<Supervisor> {
        Supervisor::build(node_id, drivers, reports, None)
    }

    /// Like [`Supervisor::new`], for a node that takes secrets and configs: their contents are kept in `files` and
    /// written for each task that uses them.
    pub fn with_files(
        node_id: &str,
        drivers: Vec<Arc<dyn Driver>>,
        reports: mpsc::UnboundedSender<StatusUpdate>,
        files: Arc<TaskFiles>,
    ) -> Arc<Supervisor> {
        Supervisor::build(node_id, drivers, reports, Some(files))
    }

    fn build(
        node_id: &str,
        drivers: Vec<Arc<dyn Driver>>,
        reports: mpsc::UnboundedSender<StatusUpdate>,
        files: Option<Arc<TaskFiles>>,
    ) -> Arc<Supervisor> {
        let drivers = drivers.into_iter().map(|d| (d.name().to_string(), d)).collect();
        let supervisor = Arc::new(Supervisor {
            node_id: node_id.to_string(),
            drivers,
            tasks: Mutex::new(HashMap::new()),
            reports,
            wake: Mutex::new(HashMap::new()),
            files,
            busy: std::sync::atomic::AtomicUsize::new(0),
            settled: Arc::new(tokio::sync::Notify::new()),
        });
        for driver in supervisor.drivers.values() {
            tokio::spawn(forward_events(Arc::downgrade(&supervisor), driver.clone()));
        }
        tokio::spawn(release_memory(Arc::downgrade(&supervisor), supervisor.settled.clone()));
        supervisor
    }

    pub fn driver(&self, name: &str) -> Option<Arc<dyn Driver>> {
        self.drivers.get(name).cloned()
    }

    /// The node's secret and config contents and files, when it takes them.
    pub fn files(&self) -> Option<&Arc<TaskFiles>> {
        self.files.as_ref()
    }

    /// The driver names this node can run now (the docker driver only while its engine answers).
    pub async fn available_drivers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, driver) in &self.drivers {
            if driver.available().await {
                out.push(name.clone());
            }
        }
        out
    }

    /// Task ids the supervisor currently runs.
    pub fn task_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .tasks
            .lock()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// The complete set of tasks assigned to this node (first message of a session): starts new ones, updates
    /// known ones, and stops and removes everything else of ours — also what a previous run left behind. Returns at
    /// once: leftovers are removed in the background, so the session goes on taking assignments meanwhile.
    pub fn assign_all(self: &Arc<Self>, tasks: Vec<Task>) {
        self.replace_assignments(tasks);
        let me = self.clone();
        tokio::spawn(async move { me.remove_leftovers().await });
    }

    /// Stops and removes every task of this node, and returns once they are gone (or after a minute).
    pub async fn clear(self: &Arc<Self>) {
        self.replace_assignments(Vec::new());
        // Each unassigned task's own loop stops and removes it, then forgets it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !self.task_ids().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.remove_leftovers().await;
    }

    /// Assigns these tasks and unassigns every other known one.
    fn replace_assignments(self: &Arc<Self>, tasks: Vec<Task>) {
        let assigned: std::collections::HashSet<String> = tasks.iter().map(|t| t.id.clone()).collect();
        for task in tasks {
            self.assign(task);
        }
        let known = self.task_ids();
        for id in known.iter().filter(|id| !assigned.contains(*id)) {
            self.unassign(id);
        }
    }

    /// What the drivers run that this supervisor does not know (left from before a restart): stopped and removed.
    /// Known tasks, assigned or being unassigned, are their own loops' business — also one assigned after the
    /// full set this runs for.
    async fn remove_leftovers(&self) {
        for driver in self.drivers.values() {
            let Ok(found) = driver.list().await else { continue };
            let known: std::collections::HashSet<String> = self.task_ids().into_iter().collect();
            for (id, observed) in found {
                if !known.contains(&id) && observed != Observed::Missing {
                    tracing::info!(task = %id, driver = driver.name(), "removing a task that is no longer assigned");
                    let _ = driver.stop(&id, "SIGTERM", Duration::from_secs(10)).await;
                    let _ = driver.remove(&id).await;
                }
            }
        }
        if let Some(files) = &self.files {
            files.retain(&self.task_ids().into_iter().collect());
        }
    }

    /// A new or changed assignment.
    pub fn assign(self: &Arc<Self>, task: Task) {
        let Ok(mut tasks) = self.tasks.lock() else { return };
        if let Some(entry) = tasks.get(&task.id) {
            // Only what the loop acts on wakes it: a status is this agent's own report coming back (it is the only
            // writer of that field once the task is assigned), and a wake would only make the loop ask the runtime
            // again. The latest task is kept either way.
            entry.task.send_if_modified(|known| {
                let changed = !same_assignment(known, &task);
                *known = task;
                changed
            });
            return;
        }
        let (task_tx, task_rx) = watch::channel(task.clone());
        let (gone_tx, gone_rx) = watch::channel(false);
        tasks.insert(
            task.id.clone(),
            Entry {
                task: task_tx,
                unassigned: gone_tx,
            },
        );
        drop(tasks);
        let notify = Arc::new(tokio::sync::Notify::new());
        if let Ok(mut wake) = self.wake.lock() {
            wake.insert(task.id.clone(), notify.clone());
        }
        tokio::spawn(self.clone().run_task(task_rx, gone_rx, notify));
    }

    /// The task is no longer assigned to this node: stop and remove it.
    pub fn unassign(&self, task_id: &str) {
        if let Ok(tasks) = self.tasks.lock() {
            if let Some(entry) = tasks.get(task_id) {
                entry.unassigned.send_replace(true);
            }
        }
    }

    fn wake(&self, task_id: &str) {
        if let Some(n) = self.wake.lock().ok().and_then(|w| w.get(task_id).cloned()) {
            n.notify_one();
        }
    }

    fn report(&self, task_id: &str, status: TaskStatus) {
        let _ = self.reports.send(StatusUpdate {
            task_id: task_id.to_string(),
            status,
        });
    }

    /// What the driver needs to prepare `task`, its secret and config files written first.
    fn run_for(&self, task: &Task) -> Result<TaskRun, DriverError> {
        let mut run = self.run_without_files(task);
        if task.spec.secrets.is_empty() && task.spec.configs.is_empty() {
            return Ok(run);
        }
        let Some(files) = &self.files else {
            return Err(DriverError::Rejected(format!(
                "node {} takes no secrets or configs (its agent runs without a task files directory)",
                self.node_id
            )));
        };
        let written = files.write(task, &self.node_id)?;
        run.files = written.files;
        if task.spec.driver == swarm_specs::spec::Driver::Process {
            // A process has no mount namespace: it reads its files where they are.
            run.env.extend(written.env);
        }
        Ok(run)
    }

    fn run_without_files(&self, task: &Task) -> TaskRun {
        let mut env = BTreeMap::new();
        env.insert("SWARM_TASK_ID".to_string(), task.id.clone());
        env.insert("SWARM_SERVICE_NAME".to_string(), task.service.clone());
        env.insert("SWARM_NODE_ID".to_string(), self.node_id.clone());
        if let Some(slot) = task.slot {
            env.insert("SWARM_TASK_SLOT".to_string(), slot.to_string());
        }
        TaskRun {
            task_id: task.id.clone(),
            service: task.service.clone(),
            slot: task.slot,
            node_id: self.node_id.clone(),
            stack: task
                .spec
                .container_labels
                .get(swarm_specs::spec::STACK_NAMESPACE_LABEL)
                .cloned(),
            name: task.container_name(),
            spec: task.spec.clone(),
            env,
            ports: task.ports.clone(),
            networks: task.networks.clone(),
            files: Vec::new(),
        }
    }

    /// One task's loop, counted busy except while it waits.
    async fn run_task(
        self: Arc<Self>,
        task_rx: watch::Receiver<Task>,
        gone_rx: watch::Receiver<bool>,
        notify: Arc<tokio::sync::Notify>,
    ) {
        self.busy();
        self.clone().drive_task(task_rx, gone_rx, notify).await;
        self.idle();
    }

    fn busy(&self) {
        self.busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn idle(&self) {
        if self.busy.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.settled.notify_one();
        }
    }

    /// Waits for a change to the task (see [`wait_change`]), not counted busy meanwhile.
    async fn wait_change(
        &self,
        task_rx: &mut watch::Receiver<Task>,
        gone_rx: &mut watch::Receiver<bool>,
        notify: &tokio::sync::Notify,
        resync: Duration,
    ) {
        self.idle();
        wait_change(task_rx, gone_rx, notify, resync).await;
        self.busy();
    }

    /// One task's loop: step, act, report; wait for a change; until the task is gone.
    async fn drive_task(
        self: Arc<Self>,
        mut task_rx: watch::Receiver<Task>,
        mut gone_rx: watch::Receiver<bool>,
        notify: Arc<tokio::sync::Notify>,
    ) {
        let first = task_rx.borrow().clone();
        let id = first.id.clone();
        let driver_name = match first.spec.driver {
            swarm_specs::spec::Driver::Docker => "docker",
            swarm_specs::spec::Driver::Process => "process",
        };
        let mut current = first.status.clone();
        let Some(driver) = self.driver(driver_name) else {
            let mut status = TaskStatus::new(TaskState::Rejected, now_millis(), "rejected");
            status.err = Some(format!("node {} cannot run the {driver_name} driver", self.node_id));
            self.report(&id, status);
            self.idle();
            let _ = gone_rx.wait_for(|g| *g).await;
            self.busy();
            self.forget(&id);
            return;
        };
        let resync = driver.resync_interval();
        // What the runtime is known to show without asking it: after a step that only reported, the same as
        // before; right after a prepare, the created container or process. Forgotten on any other step and
        // whenever the loop waited (something may have changed meanwhile).
        let mut known: Option<Observed> = None;
        loop {
            if *gone_rx.borrow() {
                let grace = Duration::from_millis(task_rx.borrow().spec.stop_grace_period_ms);
                let signal = task_rx
                    .borrow()
                    .spec
                    .stop_signal
                    .clone()
                    .unwrap_or_else(|| "SIGTERM".into());
                // Never forget a task whose container or process may still exist: retry until it is gone.
                let mut backoff = Duration::from_millis(200);
                loop {
                    let stopped = driver.stop(&id, &signal, grace).await;
                    match stopped.and(driver.remove(&id).await) {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(task = %id, "cannot remove a task that is no longer assigned (retrying): {e}");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                self.remove_files(&id);
                self.forget(&id);
                return;
            }
            let task = task_rx.borrow().clone();
            // Before Ready nothing of ours runs yet, and preparing is idempotent: no need to ask the runtime.
            let remembered = known.take();
            let observed = if current.state < TaskState::Ready && task.desired_state < TaskState::Shutdown {
                Ok(Observed::Missing)
            } else if let Some(remembered) = remembered {
                Ok(remembered)
            } else {
                driver.inspect(&id).await
            };
            let observed = match observed {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(task = %id, "cannot inspect: {e}");
                    self.wait_change(&mut task_rx, &mut gone_rx, &notify, resync).await;
                    continue;
                }
            };
            let step = machine::step(task.desired_state, current.state, &observed);
            let unchanged = observed;
            let acted: Result<(), DriverError> = match step.action {
                Action::Wait => Ok(()),
                Action::Report => Ok(()),
                Action::Prepare => match self.run_for(&task) {
                    Ok(run) => driver.prepare(&run).await,
                    Err(e) => Err(e),
                },
                Action::Start => driver.start(&id).await,
                Action::Stop => {
                    let grace = Duration::from_millis(task.spec.stop_grace_period_ms);
                    let signal = task.spec.stop_signal.clone().unwrap_or_else(|| "SIGTERM".into());
                    driver.stop(&id, &signal, grace).await
                }
                Action::Remove => driver.remove(&id).await,
            };
            match (acted, step.report) {
                (Ok(()), Some(r)) => {
                    let mut status = TaskStatus::new(r.state, now_millis(), r.message);
                    status.err = r.err;
                    status.exit_code = r.exit_code;
                    if current.advance(status.clone()) {
                        self.report(&id, status);
                        known = match step.action {
                            Action::Report => Some(unchanged),
                            Action::Prepare => Some(Observed::Created),
                            _ => None,
                        };
                    } else {
                        self.wait_change(&mut task_rx, &mut gone_rx, &notify, resync).await;
                    }
                }
                (Ok(()), None) if step.action == Action::Wait => {
                    if current.state.is_terminal() {
                        // It stopped for good (a new task replaces it, never this one again): its files go.
                        self.remove_files(&id);
                    }
                    self.wait_change(&mut task_rx, &mut gone_rx, &notify, resync).await;
                }
                (Ok(()), None) => {}
                (Err(e), _) => {
                    // The driver could not do it: the task ends here (the orchestrator replaces failed tasks).
                    let state = if matches!(e, DriverError::Rejected(_)) {
                        TaskState::Rejected
                    } else {
                        TaskState::Failed
                    };
                    let mut status = TaskStatus::new(state, now_millis(), step_name(&step.action));
                    status.err = Some(e.to_string());
                    if current.advance(status.clone()) {
                        self.report(&id, status);
                    }
                    self.wait_change(&mut task_rx, &mut gone_rx, &notify, resync).await;
                }
            }
        }
    }

    fn remove_files(&self, task_id: &str) {
        if let Some(files) = &self.files {
            files.remove(task_id);
        }
    }

    fn forget(&self, task_id: &str) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.remove(task_id);
        }
        if let Ok(mut wake) = self.wake.lock() {
            wake.remove(task_id);
        }
    }
}

/// Whether two versions of a task ask the same of this node: equal but for the status the agent reports (and when
/// the managers saw it start).
fn same_assignment(a: &Task, b: &Task) -> bool {
    // Spelled out field by field, so a new field has to be placed on one side or the other.
    let Task {
        id,
        service,
        slot,
        node_id,
        spec_version,
        spec,
        desired_state,
        status: _,
        created_at,
        ports,
        networks,
        started_at: _,
    } = a;
    *id == b.id
        && *service == b.service
        && *slot == b.slot
        && *node_id == b.node_id
        && *spec_version == b.spec_version
        && *spec == b.spec
        && *desired_state == b.desired_state
        && *created_at == b.created_at
        && *ports == b.ports
        && *networks == b.networks
}

fn step_name(action: &Action) -> &'static str {
    match action {
        Action::Prepare => "preparing",
        Action::Start => "starting",
        Action::Stop => "stopping",
        Action::Remove => "removing",
        Action::Wait | Action::Report => "",
    }
}

/// Waits for a new assignment, an unassignment, a driver event, or the periodic resync.
async fn wait_change(
    task_rx: &mut watch::Receiver<Task>,
    gone_rx: &mut watch::Receiver<bool>,
    notify: &tokio::sync::Notify,
    resync: Duration,
) {
    tokio::select! {
        _ = task_rx.changed() => {}
        _ = gone_rx.changed() => {}
        _ = notify.notified() => {}
        _ = tokio::time::sleep(resync) => {}
    }
}

/// Gives the memory freed by a burst of task changes back to the system once every task loop has settled.
///
/// Starting many tasks at once allocates in every runtime thread (engine answers, task copies, reports), and glibc
/// keeps what was freed in each thread's arena, where it stays resident: after 100 starts the worker held about
/// 7 MB of heap with 1.7 MB of it in use. `malloc_trim` hands the free pages back; it runs once per burst, when
/// the last loop settles (a busy loop is one waiting for the runtime, so a burst has no such moment before its end),
/// and costs about a millisecond.
async fn release_memory(supervisor: std::sync::Weak<Supervisor>, settled: Arc<tokio::sync::Notify>) {
    loop {
        settled.notified().await;
        let Some(s) = supervisor.upgrade() else { return };
        if s.busy.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            trim_heap();
        }
    }
}

/// Returns the allocator's free memory to the system, where the allocator can.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heaps under their locks; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn forward_events(supervisor: std::sync::Weak<Supervisor>, driver: Arc<dyn Driver>) {
    let mut wakes = driver.wakes();
    while let Some(task_id) = wakes.next().await {
        let Some(s) = supervisor.upgrade() else { return };
        s.wake(&task_id);
    }
}
