//! Waiting for services to converge, with Docker's progress display.
//!
//! [`wait_converged`] polls the manager (services and tasks every 200 ms) and decides with [`assess`], a pure
//! function of one service and its tasks: converged, still moving, or failed for good (a task that keeps failing,
//! a slot the restart policy will not refill, a task no node can take). On a terminal the display is Docker's
//! (`overall progress: 2 out of 3 tasks`, one bar per slot); elsewhere one plain line per change, for CI logs.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::io::IsTerminal as _;
use std::time::Duration;
use std::time::Instant;

use indicatif::MultiProgress;
use indicatif::ProgressBar;
use indicatif::ProgressDrawTarget;
use indicatif::ProgressStyle;
use swarm_reconciler::objects::Service;
use swarm_reconciler::objects::UpdateState;
use swarm_reconciler::orchestrator::Progress;
use swarm_reconciler::routes::ServiceInfo;
use swarm_specs::spec::RestartCondition;
use swarm_specs::spec::ServiceMode;
use swarm_specs::task::Task;
use swarm_specs::task::TaskState;

use crate::client::Client;
use crate::node::url_segment;

const POLL: Duration = Duration::from_millis(200);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// A task no node can take is given this long for the cluster to change (a node joining, another task leaving).
const UNPLACEABLE_GRACE: Duration = Duration::from_secs(10);
/// How long the wait goes on while no manager answers (a leader change takes well under a second).
const UNREACHABLE_GRACE: Duration = Duration::from_secs(15);
/// How long a service must stay converged before the wait believes it (Docker waits its update monitor, 5 s).
const STABLE_FOR: Duration = Duration::from_secs(1);
/// Failed tasks of the current version that make a service count as failing.
const FAILURES_TO_GIVE_UP: usize = 3;
/// Width of Docker's progress bar, in `=`.
const BAR_WIDTH: u64 = 50;

/// Waits until each `(service, task_version)` runs all its tasks at that version (jobs: completed them).
///
/// Returns false, after printing the tasks' errors to stderr, when a service failed or the wait timed out
/// (`SWARM_CONVERGE_TIMEOUT` seconds, default 120). `quiet` hides the progress display, not the errors.
pub async fn wait_converged(client: &Client, services: &[(String, u64)], quiet: bool) -> anyhow::Result<bool> {
    if services.is_empty() {
        return Ok(true);
    }
    let timeout = converge_timeout(std::env::var("SWARM_CONVERGE_TIMEOUT").ok().as_deref())?;
    let started = Instant::now();
    let mut display = Display::new(quiet, services.len());
    let mut unplaceable_since: HashMap<String, Instant> = HashMap::new();
    let mut last: Vec<Option<Assessment>> = vec![None; services.len()];
    let mut done = vec![false; services.len()];
    let mut stable_since: Vec<Option<Instant>> = vec![None; services.len()];
    let mut failing_since: Option<Instant> = None;
    loop {
        // A leader change (or a manager that died under the CLI) is no reason to give up the wait: the managers
        // get a moment to answer again.
        let (tasks, infos) = match read_state(client, services, &done).await {
            Ok(state) => {
                failing_since = None;
                state
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= UNREACHABLE_GRACE || started.elapsed() >= timeout {
                    display.stop();
                    return Err(e.context(format!(
                        "the managers did not answer for {} s while waiting for the services to converge",
                        since.elapsed().as_secs()
                    )));
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        let now = Instant::now();
        let unplaceable: HashSet<&str> = tasks
            .iter()
            .filter(|t| t.desired_state <= TaskState::Running && t.status.state <= TaskState::Pending)
            .filter(|t| t.status.err.is_some())
            .map(|t| t.id.as_str())
            .collect();
        unplaceable_since.retain(|id, _| unplaceable.contains(id.as_str()));
        for id in &unplaceable {
            unplaceable_since.entry(id.to_string()).or_insert(now);
        }
        let stuck: HashSet<&str> = unplaceable_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= UNPLACEABLE_GRACE)
            .map(|(id, _)| id.as_str())
            .collect();
        for (i, ((name, version), info)) in services.iter().zip(infos).enumerate() {
            let Some(info) = info.filter(|_| !done[i]) else {
                continue;
            };
            let mine: Vec<&Task> = tasks.iter().filter(|t| t.service == info.service.spec.name).collect();
            let assessment = assess(&info.service, info.progress, &mine, *version, &stuck);
            if !assessment.failures.is_empty() {
                display.show(i, name, &assessment, Verify::No);
                display.stop();
                for line in &assessment.failures {
                    eprintln!("{line}");
                }
                return Ok(false);
            }
            // A task that crashes right after it started was seen running: converged must last a moment (a job's
            // completion is final).
            let job = matches!(
                info.service.spec.mode,
                ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob
            );
            let verify = if !assessment.converged {
                stable_since[i] = None;
                Verify::No
            } else if job || now.duration_since(*stable_since[i].get_or_insert(now)) >= STABLE_FOR {
                done[i] = true;
                Verify::Converged
            } else {
                Verify::Waiting
            };
            display.show(i, name, &assessment, verify);
            last[i] = Some(assessment);
        }
        if done.iter().all(|d| *d) {
            return Ok(true);
        }
        if started.elapsed() >= timeout {
            display.stop();
            for (i, (name, _)) in services.iter().enumerate() {
                let Some(a) = last[i].as_ref().filter(|_| !done[i]) else {
                    continue;
                };
                eprintln!("{name}: not converged after {}s ({})", timeout.as_secs(), a.status);
                for line in &a.errors {
                    eprintln!("{line}");
                }
            }
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `SWARM_CONVERGE_TIMEOUT`, in seconds, when set.
fn converge_timeout(value: Option<&str>) -> anyhow::Result<Duration> {
    match value.map(str::trim) {
        None | Some("") => Ok(DEFAULT_TIMEOUT),
        Some(text) => text.parse::<u64>().map(Duration::from_secs).map_err(|_| {
            anyhow::anyhow!("SWARM_CONVERGE_TIMEOUT must be a whole number of seconds (e.g. 300), got {text:?}")
        }),
    }
}

/// Where one service stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub converged: bool,
    /// `overall progress: 2 out of 3 tasks` (jobs: `job progress: 1 out of 3 complete`).
    pub overall: String,
    /// One line per slot (global services: per node), as Docker draws them.
    pub keys: Vec<String>,
    /// `2/3 running` (jobs: `1/3 complete`).
    pub status: String,
    /// `web_web: 2/3 running`, plus the first task error if there is one: the plain-output line.
    pub summary: String,
    /// Why the service will not converge without a change; empty while it still may.
    pub failures: Vec<String>,
    /// Errors the current tasks report (printed when the wait times out).
    pub errors: Vec<String>,
}

/// A task's key within its service: its slot, or its node for global services.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Slot(u64),
    Node(String),
}

fn key_of(task: &Task, global: bool) -> Option<Key> {
    if global {
        task.node_id.clone().map(Key::Node)
    } else {
        task.slot.map(Key::Slot)
    }
}

/// `web_web.2`, or `web_web.<node id>` for a global task: the name `service ps` shows.
fn task_label(service: &str, key: &Key) -> String {
    match key {
        Key::Slot(slot) => format!("{service}.{slot}"),
        Key::Node(node) => format!("{service}.{node}"),
    }
}

/// Decides where a service stands from its tasks. `expected` is the task version the caller waits for (a newer one
/// on the service wins); `stuck` names tasks that have been unplaceable for longer than the grace period.
/// Every task, and each service not yet done.
async fn read_state(
    client: &Client,
    services: &[(String, u64)],
    done: &[bool],
) -> anyhow::Result<(Vec<Task>, Vec<Option<ServiceInfo>>)> {
    let tasks: Vec<Task> = client.get("/v1/tasks").await?;
    let mut infos = Vec::with_capacity(services.len());
    for ((name, _), done) in services.iter().zip(done) {
        infos.push(match done {
            true => None,
            false => Some(client.get(&format!("/v1/services/{}", url_segment(name))).await?),
        });
    }
    Ok((tasks, infos))
}

pub fn assess(
    service: &Service,
    progress: Progress,
    tasks: &[&Task],
    expected: u64,
    stuck: &HashSet<&str>,
) -> Assessment {
    let name = service.name();
    let version = expected.max(service.task_version);
    let (global, job) = match service.spec.mode {
        ServiceMode::Replicated { .. } => (false, false),
        ServiceMode::Global => (true, false),
        ServiceMode::ReplicatedJob { .. } => (false, true),
        ServiceMode::GlobalJob => (true, true),
    };
    let live = |t: &Task| t.desired_state <= TaskState::Running;
    let current: Vec<&Task> = tasks.iter().copied().filter(|t| t.spec_version == version).collect();

    // Every key's tasks (all versions, for the restart-attempt count), and its newest task of this version.
    let mut keyed: BTreeMap<Key, Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        if let Some(k) = key_of(t, global) {
            keyed.entry(k).or_default().push(t);
        }
    }
    let newest = |k: &Key| -> Option<&Task> {
        keyed
            .get(k)?
            .iter()
            .copied()
            .filter(|t| t.spec_version == version)
            .max_by_key(|t| (t.created_at, t.status.timestamp))
    };
    let shown: Vec<Key> = match service.spec.mode {
        ServiceMode::Replicated { replicas } => (1..=replicas).map(Key::Slot).collect(),
        ServiceMode::ReplicatedJob { total_completions, .. } => (1..=total_completions).map(Key::Slot).collect(),
        ServiceMode::Global | ServiceMode::GlobalJob => keyed
            .iter()
            .filter(|(_, ts)| ts.iter().any(|t| t.spec_version == version))
            .map(|(k, _)| k.clone())
            .collect(),
    };
    let total = shown.len();
    let mut keys = Vec::with_capacity(total);
    let mut running = 0u64;
    for key in &shown {
        let id = match key {
            Key::Slot(slot) => format!("{slot}/{total}"),
            Key::Node(node) => node.chars().take(12).collect(),
        };
        let task = newest(key);
        if task.is_some_and(|t| live(t) && t.status.state == TaskState::Running) {
            running += 1;
        }
        keys.push(match task {
            None => format!("{id}:"),
            Some(t) => slot_line(&id, t, job),
        });
    }

    // The rollout must have ended too: a task that fails within `monitor` still rolls the update back.
    let update = service.update_status.as_ref();
    let rolling = update.is_some_and(|u| u.state.in_progress());
    let done = if job {
        progress.completed >= progress.desired
    } else {
        running == progress.desired
            && progress.running == progress.desired
            && tasks.iter().filter(|t| live(t)).all(|t| t.spec_version == version)
            && !rolling
    };
    let (overall, status) = if job {
        (
            format!(
                "job progress: {} out of {} complete",
                progress.completed, progress.desired
            ),
            format!("{}/{} complete", progress.completed, progress.desired),
        )
    } else {
        (
            format!("overall progress: {running} out of {} tasks", progress.desired),
            format!("{running}/{} running", progress.desired),
        )
    };

    // Errors of this version's tasks, newest first per key.
    let mut errors = Vec::new();
    for key in keyed.keys() {
        if let Some(t) = newest(key) {
            if let Some(line) = error_line(name, key, t) {
                errors.push(line);
            }
        }
    }
    let summary = match errors.first() {
        Some(e) if !done => format!("{name}: {status} ({e})"),
        _ => format!("{name}: {status}"),
    };

    let mut failures = Vec::new();
    // A rolled-back update (rolled back after what is awaited) and a paused one are failures, never success.
    if let Some(u) = update {
        let rolled_back = u.state.is_rollback() && service.task_version > expected;
        let paused = matches!(u.state, UpdateState::Paused | UpdateState::RollbackPaused);
        if rolled_back || paused {
            failures.push(format!("{name}: {}: {}", u.state.as_str(), u.message));
        }
    }
    if !done {
        // A task that keeps failing.
        let failed: Vec<&Task> = current
            .iter()
            .copied()
            .filter(|t| matches!(t.status.state, TaskState::Failed | TaskState::Rejected))
            .collect();
        if failed.len() >= FAILURES_TO_GIVE_UP {
            // One line per distinct error, newest first, with how often it happened.
            let mut newest_failed = failed.clone();
            newest_failed.sort_by_key(|t| std::cmp::Reverse(t.created_at));
            let mut counted: Vec<(String, usize)> = Vec::new();
            for t in newest_failed {
                let Some(line) = key_of(t, global).and_then(|key| error_line(name, &key, t)) else {
                    continue;
                };
                match counted.iter_mut().find(|(l, _)| *l == line) {
                    Some((_, n)) => *n += 1,
                    None => counted.push((line, 1)),
                }
            }
            failures.extend(counted.into_iter().map(|(line, n)| match n {
                1 => line,
                n => format!("{line} ({n} times)"),
            }));
        }
        // A slot the restart policy will not refill (what the orchestrator decides in `key_need`).
        let policy = &service.spec.task.restart_policy;
        for key in &shown {
            let Some(t) = newest(key) else { continue };
            let members = &keyed[key];
            if members.iter().any(|m| live(m)) {
                continue;
            }
            let failed = matches!(t.status.state, TaskState::Failed | TaskState::Rejected);
            let exited = t.status.state == TaskState::Complete && !job;
            if !failed && !exited {
                continue;
            }
            let attempts = members
                .iter()
                .filter(|m| {
                    matches!(
                        m.status.state,
                        TaskState::Failed | TaskState::Rejected | TaskState::Complete
                    )
                })
                .count() as u64;
            let restarts = match policy.condition {
                RestartCondition::None => false,
                RestartCondition::OnFailure => failed,
                RestartCondition::Any => true,
            } && (policy.max_attempts == 0 || policy.window_ms > 0 || attempts <= policy.max_attempts);
            if !restarts {
                let why = match error_line(name, key, t) {
                    Some(line) => line,
                    None => format!("{} {}", task_label(name, key), t.status.state.title().to_lowercase()),
                };
                failures.push(format!("{why} (the restart policy does not restart it)"));
            }
        }
        // A task no node can take.
        for t in current.iter().filter(|t| stuck.contains(t.id.as_str()) && live(t)) {
            if let Some(key) = key_of(t, global) {
                failures.extend(error_line(name, &key, t));
            }
        }
        let mut seen = HashSet::new();
        failures.retain(|l| seen.insert(l.clone()));
    }
    Assessment {
        converged: done,
        overall,
        keys,
        status,
        summary,
        failures,
        errors,
    }
}

/// `web_web.2 failed: task: non-zero exit (1)`, `web_web.1 pending: no suitable node (...)`; none without an error.
fn error_line(service: &str, key: &Key, task: &Task) -> Option<String> {
    let state = task.status.state;
    let err = match (&task.status.err, state) {
        (Some(e), _) => e.clone(),
        (None, TaskState::Failed | TaskState::Rejected) => match task.status.exit_code {
            Some(code) => format!("{} (exit code {code})", task.status.message),
            None => task.status.message.clone(),
        },
        _ => return None,
    };
    Some(format!(
        "{} {}: {}",
        task_label(service, key),
        state.title().to_lowercase(),
        err
    ))
}

/// Docker's bar position for a state: `new` 1 ... `running` 9 (of 9), `complete` 10 (of 10, for jobs).
fn state_position(state: TaskState) -> Option<u64> {
    Some(match state {
        TaskState::New => 1,
        TaskState::Pending => 3,
        TaskState::Assigned => 4,
        TaskState::Accepted => 5,
        TaskState::Preparing => 6,
        TaskState::Ready => 7,
        TaskState::Starting => 8,
        TaskState::Running => 9,
        TaskState::Complete => 10,
        _ => return None,
    })
}

/// `[=========================>                         ]`: Docker's bar, `current` of `total`.
fn bar(current: u64, total: u64) -> String {
    let filled = (current.min(total) * 100 / total.max(1) / 2).min(BAR_WIDTH) as usize;
    format!("[{}>{}]", "=".repeat(filled), " ".repeat(BAR_WIDTH as usize - filled))
}

/// One slot's line: `1/3: running   [==...==>]`, or the task's error in place of the state.
fn slot_line(id: &str, task: &Task, job: bool) -> String {
    let state = task.status.state;
    if let Some(err) = task.status.err.as_deref().filter(|_| state != TaskState::Running) {
        let first = err.lines().next().unwrap_or_default();
        return format!("{id}: {}", shorten(first, 100));
    }
    let word = state.title().to_lowercase();
    match state_position(state) {
        Some(position) => format!("{id}: {word:<9} {}", bar(position, if job { 10 } else { 9 })),
        None => format!("{id}: {word}"),
    }
}

/// `text`, cut to `max` characters with an ellipsis.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The last line of a service's display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    No,
    /// Converged, and waiting for it to last [`STABLE_FOR`].
    Waiting,
    Converged,
}

/// How the wait shows itself: nothing, plain lines when something changes, or Docker's redrawn bars.
enum Display {
    Quiet,
    Plain {
        last: Vec<String>,
    },
    Bars {
        multi: MultiProgress,
        /// Per service: its header, its overall line, then one line per key.
        bars: Vec<Vec<ProgressBar>>,
    },
}

impl Display {
    fn new(quiet: bool, services: usize) -> Display {
        if quiet {
            Display::Quiet
        } else if std::io::stderr().is_terminal() {
            Display::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: vec![Vec::new(); services],
            }
        } else {
            Display::Plain {
                last: vec![String::new(); services],
            }
        }
    }

    fn show(&mut self, i: usize, name: &str, a: &Assessment, verify: Verify) {
        let verify_line = match verify {
            Verify::No => None,
            Verify::Waiting => Some(format!(
                "verify: Waiting {} second(s) to verify that tasks are stable...",
                STABLE_FOR.as_secs()
            )),
            Verify::Converged => Some(format!("verify: Service {name} converged")),
        };
        match self {
            Display::Quiet => {}
            Display::Plain { last } => {
                if last[i] != a.summary {
                    eprintln!("{}", a.summary);
                    last[i] = a.summary.clone();
                }
                if let (Verify::Converged, Some(line)) = (verify, &verify_line) {
                    eprintln!("{line}");
                }
            }
            Display::Bars { multi, bars } => {
                let mut lines = vec![name.to_string(), a.overall.clone()];
                lines.extend(a.keys.iter().cloned());
                lines.extend(verify_line);
                let (before, rest) = bars.split_at_mut(i);
                let mine = &mut rest[0];
                while mine.len() > lines.len() {
                    if let Some(extra) = mine.pop() {
                        multi.remove(&extra);
                    }
                }
                while mine.len() < lines.len() {
                    let bar = ProgressBar::no_length().with_style(line_style());
                    // After this service's last line, or the previous service's, so services stay in order.
                    let anchor = mine.last().or_else(|| before.iter().rev().find_map(|b| b.last()));
                    let bar = match anchor {
                        Some(a) => multi.insert_after(a, bar),
                        None => multi.add(bar),
                    };
                    mine.push(bar);
                }
                for (bar, line) in mine.iter().zip(lines) {
                    if bar.message() != line {
                        bar.set_message(line);
                    }
                    if verify == Verify::Converged {
                        bar.finish();
                    }
                }
            }
        }
    }

    /// Leaves the display as it is, so errors printed after it do not tear it.
    fn stop(&mut self) {
        if let Display::Bars { bars, .. } = self {
            for bar in bars.iter().flatten() {
                bar.abandon();
            }
        }
    }
}

fn line_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use swarm_specs::spec::Driver;
    use swarm_specs::spec::EndpointMode;
    use swarm_specs::spec::ServiceSpec;
    use swarm_specs::spec::TaskSpec;
    use swarm_specs::spec::UpdateConfig;
    use swarm_specs::task::TaskStatus;

    use super::*;

    fn service(mode: ServiceMode, task_version: u64) -> Service {
        let spec = ServiceSpec {
            name: "web_web".into(),
            labels: BTreeMap::new(),
            mode,
            task: TaskSpec::with_command(Driver::Process, None, vec!["sleep".into(), "1000".into()]),
            endpoint_mode: EndpointMode::Vip,
            ports: Vec::new(),
            update_config: UpdateConfig::default(),
            rollback_config: UpdateConfig::default(),
        };
        let mut s = Service::new("svc1".into(), spec, 0);
        s.task_version = task_version;
        s
    }

    fn task(id: &str, slot: u64, version: u64, state: TaskState, created: u64) -> Task {
        Task {
            id: id.into(),
            service: "web_web".into(),
            slot: Some(slot),
            node_id: Some("node1abcdefghijk".into()),
            spec_version: version,
            spec: TaskSpec::with_command(Driver::Process, None, vec!["sleep".into()]),
            desired_state: TaskState::Running,
            status: TaskStatus::new(state, created, "x"),
            created_at: created,
            ports: Vec::new(),
            networks: Vec::new(),
            started_at: None,
        }
    }

    fn progress(running: u64, desired: u64) -> Progress {
        Progress {
            running,
            desired,
            completed: 0,
        }
    }

    #[test]
    fn bars_are_dockers() {
        assert_eq!(bar(9, 9), format!("[{}>]", "=".repeat(50)));
        assert_eq!(bar(0, 9), format!("[>{}]", " ".repeat(50)));
        let t = task("a", 1, 1, TaskState::Running, 1);
        assert_eq!(
            slot_line("1/4", &t, false),
            format!("1/4: running   [{}>]", "=".repeat(50))
        );
        let t = task("a", 1, 1, TaskState::Preparing, 1);
        assert_eq!(
            slot_line("1/4", &t, false),
            format!("1/4: preparing [{}>{}]", "=".repeat(33), " ".repeat(17))
        );
    }

    #[test]
    fn converged_when_every_slot_runs_the_expected_version() {
        let s = service(ServiceMode::Replicated { replicas: 2 }, 2);
        let a = task("a", 1, 2, TaskState::Running, 10);
        let b = task("b", 2, 2, TaskState::Running, 10);
        let out = assess(&s, progress(2, 2), &[&a, &b], 2, &HashSet::new());
        assert!(out.converged, "{out:?}");
        assert_eq!(out.overall, "overall progress: 2 out of 2 tasks");
        assert_eq!(out.summary, "web_web: 2/2 running");
    }

    #[test]
    fn old_tasks_running_are_not_convergence() {
        let s = service(ServiceMode::Replicated { replicas: 2 }, 2);
        let a = task("a", 1, 2, TaskState::Running, 10);
        let b = task("b", 2, 1, TaskState::Running, 5);
        let out = assess(&s, progress(2, 2), &[&a, &b], 2, &HashSet::new());
        assert!(!out.converged);
        assert_eq!(out.summary, "web_web: 1/2 running");
        assert_eq!(out.keys[1], "2/2:", "slot 2 has no task of the new version yet");
        assert!(out.failures.is_empty());
    }

    #[test]
    fn three_failures_of_the_current_version_fail_the_wait() {
        let s = service(ServiceMode::Replicated { replicas: 1 }, 1);
        let mut failed: Vec<Task> = (0..3)
            .map(|i| {
                let mut t = task(&format!("f{i}"), 1, 1, TaskState::Failed, i);
                t.desired_state = TaskState::Shutdown;
                t.status.err = Some("task: non-zero exit (1)".into());
                t
            })
            .collect();
        let live = task("n", 1, 1, TaskState::Starting, 9);
        failed.push(live);
        let refs: Vec<&Task> = failed.iter().collect();
        let out = assess(&s, progress(0, 1), &refs, 1, &HashSet::new());
        assert!(!out.converged);
        assert_eq!(
            out.failures,
            vec!["web_web.1 failed: task: non-zero exit (1) (3 times)"]
        );
    }

    #[test]
    fn a_slot_the_restart_policy_leaves_empty_fails_at_once() {
        let mut s = service(ServiceMode::Replicated { replicas: 1 }, 1);
        s.spec.task.restart_policy.condition = RestartCondition::None;
        let mut t = task("a", 1, 1, TaskState::Failed, 1);
        t.desired_state = TaskState::Shutdown;
        t.status.err = Some("exec: \"nope\": not found".into());
        let out = assess(&s, progress(0, 1), &[&t], 1, &HashSet::new());
        assert_eq!(
            out.failures,
            vec!["web_web.1 failed: exec: \"nope\": not found (the restart policy does not restart it)"]
        );
        s.spec.task.restart_policy.condition = RestartCondition::Any;
        let out = assess(&s, progress(0, 1), &[&t], 1, &HashSet::new());
        assert!(out.failures.is_empty(), "it will be restarted: {out:?}");
    }

    #[test]
    fn an_unplaceable_task_fails_only_once_it_is_stuck() {
        let s = service(ServiceMode::Replicated { replicas: 1 }, 1);
        let mut t = task("p", 1, 1, TaskState::Pending, 1);
        t.node_id = None;
        t.status.err = Some("no suitable node (1 node: 1 lacks 64 GiB memory)".into());
        let out = assess(&s, progress(0, 1), &[&t], 1, &HashSet::new());
        assert!(out.failures.is_empty());
        assert_eq!(out.keys, vec!["1/1: no suitable node (1 node: 1 lacks 64 GiB memory)"]);
        assert_eq!(
            out.summary,
            "web_web: 0/1 running (web_web.1 pending: no suitable node (1 node: 1 lacks 64 GiB memory))"
        );
        let stuck: HashSet<&str> = ["p"].into_iter().collect();
        let out = assess(&s, progress(0, 1), &[&t], 1, &stuck);
        assert_eq!(
            out.failures,
            vec!["web_web.1 pending: no suitable node (1 node: 1 lacks 64 GiB memory)"]
        );
    }

    #[test]
    fn jobs_converge_when_complete() {
        let s = service(
            ServiceMode::ReplicatedJob {
                max_concurrent: 2,
                total_completions: 2,
            },
            1,
        );
        let a = task("a", 1, 1, TaskState::Complete, 1);
        let b = task("b", 2, 1, TaskState::Running, 1);
        let p = Progress {
            running: 1,
            desired: 2,
            completed: 1,
        };
        let out = assess(&s, p, &[&a, &b], 1, &HashSet::new());
        assert!(!out.converged);
        assert_eq!(out.overall, "job progress: 1 out of 2 complete");
        assert_eq!(out.keys[0], format!("1/2: complete  [{}>]", "=".repeat(50)));
        let done = Progress {
            running: 0,
            desired: 2,
            completed: 2,
        };
        assert!(assess(&s, done, &[&a, &b], 1, &HashSet::new()).converged);
    }

    #[test]
    fn timeout_comes_from_the_environment() {
        assert_eq!(converge_timeout(None).ok(), Some(DEFAULT_TIMEOUT));
        assert_eq!(converge_timeout(Some("5")).ok(), Some(Duration::from_secs(5)));
        let err = converge_timeout(Some("5m"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("SWARM_CONVERGE_TIMEOUT"), "{err}");
    }
}
