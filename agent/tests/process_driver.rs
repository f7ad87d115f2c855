//! The process driver against real processes: each test has its own state directory and node, and kills every
//! process it started when it ends, passed or not.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use swarm_agent::driver::process::HealthStatus;
use swarm_agent::driver::process::ProcessDriver;
use swarm_agent::driver::Driver;
use swarm_agent::driver::DriverError;
use swarm_agent::driver::DriverEvent;
use swarm_agent::driver::LogLine;
use swarm_agent::driver::LogOptions;
use swarm_agent::driver::LogStream;
use swarm_agent::driver::Observed;
use swarm_agent::driver::TaskHealth;
use swarm_agent::driver::TaskRun;
use swarm_specs::spec;
use swarm_specs::spec::Healthcheck;
use swarm_specs::spec::TaskSpec;
use tempfile::TempDir;

const NODE: &str = "node-1";
const DEADLINE: Duration = Duration::from_secs(20);

/// A node's state directory and driver. Dropping it kills every process group its tasks started.
struct Node {
    dir: TempDir,
    driver: Option<ProcessDriver>,
    events: BoxStream<'static, DriverEvent>,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let driver = ProcessDriver::new(dir.path(), NODE);
        let events = driver.events();
        Node {
            dir,
            driver: Some(driver),
            events,
        }
    }

    fn driver(&self) -> &ProcessDriver {
        self.driver.as_ref().expect("a driver")
    }

    /// Drops the driver and makes a new one on the same state directory, as an agent restart does.
    fn restart(&mut self) {
        self.driver = None;
        let driver = ProcessDriver::new(self.dir.path(), NODE);
        self.events = driver.events();
        self.driver = Some(driver);
    }

    fn task_dir(&self, task_id: &str) -> PathBuf {
        self.dir.path().join("tasks").join(task_id)
    }

    fn stdout(&self, task_id: &str) -> String {
        fs::read_to_string(self.task_dir(task_id).join("stdout.log")).unwrap_or_default()
    }

    /// A scratch path outside the state directory, for files the tests and tasks exchange.
    fn scratch(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    async fn run(&self, run: &TaskRun) {
        self.driver().prepare(run).await.expect("prepare");
        self.driver().start(&run.task_id).await.expect("start");
    }

    /// The pid of a started task, from its state file.
    fn pid(&self, task_id: &str) -> u32 {
        recorded_process(&self.task_dir(task_id)).expect("a started task").0
    }

    /// Waits for the task's next event that satisfies `want`.
    async fn event(&mut self, task_id: &str, want: impl Fn(&Observed) -> bool) -> Observed {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(Some(event)) if event.task_id == task_id && want(&event.observed) => return event.observed,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the event stream ended"),
                Err(_) => panic!("no matching event for {task_id} within {DEADLINE:?}"),
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir(self.dir.path().join("tasks")) else {
            return;
        };
        for entry in entries.flatten() {
            if let Some((pid, start_time)) = recorded_process(&entry.path()) {
                // The leader is still the task's, or it is gone and what is left of its group is the task's (a group
                // id is not reused while the group has members).
                if stat(pid).is_none_or(|s| s.start_time == start_time || s.state == 'Z') {
                    kill_group(pid);
                }
            }
        }
    }
}

/// `(pid, start time)` from a task directory's `task.json`.
fn recorded_process(task_dir: &Path) -> Option<(u32, u64)> {
    let text = fs::read_to_string(task_dir.join("task.json")).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((
        u32::try_from(state["pid"].as_u64()?).ok()?,
        state["start_time"].as_u64()?,
    ))
}

/// Kills a process group when dropped, for a process the state files do not describe.
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

fn kill_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid > 1 {
        // SAFETY: kill takes two integers and touches no memory; a negative pid addresses the task's process group.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

struct Stat {
    state: char,
    pgrp: u32,
    start_time: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text.get(text.rfind(')')? + 1..)?.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Whether a process runs (exists and is not a zombie waiting for its parent).
fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// Live (non-zombie) processes of a process group.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|s| s.pgrp == pgid && s.state != 'Z' && s.state != 'X'))
        .collect()
}

/// Polls a condition until it holds or the deadline passes.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn task(task_id: &str, argv: &[&str]) -> TaskRun {
    let argv = argv.iter().map(|a| a.to_string()).collect();
    TaskRun {
        task_id: task_id.to_string(),
        service: "app_web".to_string(),
        slot: Some(1),
        node_id: NODE.to_string(),
        stack: Some("app".to_string()),
        name: format!("app_web.1.{task_id}"),
        spec: TaskSpec::with_command(spec::Driver::Process, None, argv),
        env: BTreeMap::from([("SWARM_TASK_ID".to_string(), task_id.to_string())]),
        ports: Vec::new(),
        networks: Vec::new(),
        files: Vec::new(),
    }
}

fn healthcheck(test: &[&str], interval_ms: u64, retries: u64) -> Healthcheck {
    Healthcheck {
        test: test.iter().map(|s| s.to_string()).collect(),
        interval_ms: Some(interval_ms),
        timeout_ms: None,
        start_period_ms: None,
        start_interval_ms: None,
        retries: Some(retries),
    }
}

async fn collect_logs(driver: &ProcessDriver, task_id: &str, options: LogOptions) -> Vec<LogLine> {
    let lines = tokio::time::timeout(DEADLINE, driver.logs(task_id, options).collect::<Vec<_>>())
        .await
        .expect("logs end");
    lines.into_iter().map(|line| line.expect("a log line")).collect()
}

fn texts(lines: &[LogLine], stream: LogStream) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.stream == stream)
        .map(|l| l.text.clone())
        .collect()
}

async fn next_line(stream: &mut BoxStream<'_, Result<LogLine, DriverError>>) -> Option<LogLine> {
    let line = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("a line in time");
    line.map(|l| l.expect("a log line"))
}

fn rejected(result: Result<(), DriverError>) -> String {
    match result {
        Err(DriverError::Rejected(message)) => message,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn runs_entrypoint_and_command_with_the_task_env() {
    let mut node = Node::new();
    let mut run = task(
        "t1",
        &[
            "echo \"$GREETING $1\" && echo \"task $SWARM_TASK_ID\" && echo oops >&2",
            "x",
            "world",
        ],
    );
    run.spec.entrypoint = Some(vec!["sh".into(), "-c".into()]);
    run.spec.env.insert("GREETING".into(), Some("hello".into()));
    node.driver().prepare(&run).await.expect("prepare");
    assert_eq!(node.driver().inspect("t1").await.unwrap(), Observed::Created);
    node.driver().start("t1").await.expect("start");

    assert_eq!(
        node.event("t1", |o| matches!(o, Observed::Exited { .. })).await,
        Observed::Exited { code: 0 }
    );
    let logs = collect_logs(node.driver(), "t1", LogOptions::default()).await;
    assert_eq!(texts(&logs, LogStream::Stdout), ["hello world", "task t1"]);
    assert_eq!(texts(&logs, LogStream::Stderr), ["oops"]);
    // Starting again does not run the task a second time.
    node.driver().start("t1").await.expect("start again");
    assert_eq!(node.driver().inspect("t1").await.unwrap(), Observed::Exited { code: 0 });
    assert_eq!(node.stdout("t1").lines().count(), 2);
    assert_eq!(
        node.driver().list().await.unwrap(),
        [("t1".to_string(), Observed::Exited { code: 0 })]
    );
}

#[tokio::test]
async fn reports_exit_codes_and_signal_deaths() {
    let mut node = Node::new();
    node.run(&task("t3", &["sh", "-c", "exit 3"])).await;
    assert_eq!(
        node.event("t3", |o| matches!(o, Observed::Exited { .. })).await,
        Observed::Exited { code: 3 }
    );
    assert_eq!(node.driver().inspect("t3").await.unwrap(), Observed::Exited { code: 3 });
    assert_eq!(
        fs::read_to_string(node.task_dir("t3").join("exit_code"))
            .unwrap()
            .trim(),
        "3"
    );

    node.run(&task("usr1", &["sh", "-c", "kill -USR1 $$"])).await;
    let code = 128 + i64::from(libc::SIGUSR1);
    assert_eq!(
        node.event("usr1", |o| matches!(o, Observed::Exited { .. })).await,
        Observed::Exited { code }
    );
}

#[tokio::test]
async fn stop_within_the_grace_period_lets_the_task_exit_cleanly() {
    let mut node = Node::new();
    let script = "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.1; done";
    node.run(&task("t", &["sh", "-c", script])).await;
    eventually("the trap to be set", || node.stdout("t").contains("ready")).await;

    let started = Instant::now();
    node.driver()
        .stop("t", "", Duration::from_secs(30))
        .await
        .expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped in {:?}",
        started.elapsed()
    );
    assert_eq!(node.driver().inspect("t").await.unwrap(), Observed::Exited { code: 0 });
    assert!(node.stdout("t").contains("bye"));

    // The spec's stop signal is used when the caller names none.
    let mut run = task(
        "usr1",
        &[
            "sh",
            "-c",
            "trap 'exit 7' USR1; echo ready; while :; do sleep 0.1; done",
        ],
    );
    run.spec.stop_signal = Some("SIGUSR1".into());
    node.run(&run).await;
    eventually("the trap to be set", || node.stdout("usr1").contains("ready")).await;
    node.driver()
        .stop("usr1", "", Duration::from_secs(30))
        .await
        .expect("stop");
    assert_eq!(
        node.event("usr1", |o| matches!(o, Observed::Exited { .. })).await,
        Observed::Exited { code: 7 }
    );
    // Stopping a stopped task is fine.
    node.driver()
        .stop("usr1", "", Duration::from_secs(30))
        .await
        .expect("stop again");
}

#[tokio::test]
async fn stop_kills_a_task_that_ignores_the_signal_after_the_grace_period() {
    let node = Node::new();
    node.run(&task(
        "t",
        &["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"],
    ))
    .await;
    eventually("the trap to be set", || node.stdout("t").contains("ready")).await;

    let grace = Duration::from_secs(1);
    let started = Instant::now();
    node.driver().stop("t", "TERM", grace).await.expect("stop");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= grace && elapsed < grace + Duration::from_secs(5),
        "stopped in {elapsed:?}"
    );
    assert_eq!(
        node.driver().inspect("t").await.unwrap(),
        Observed::Exited { code: 137 }
    );
}

#[tokio::test]
async fn stop_leaves_no_process_of_the_group() {
    let node = Node::new();
    node.run(&task("t", &["sh", "-c", "sleep 100 & echo \"grandchild $!\"; wait"]))
        .await;
    eventually("the grandchild", || node.stdout("t").contains("grandchild")).await;
    let pgid = node.pid("t");
    assert!(
        group_members(pgid).len() >= 2,
        "the task and its grandchild run in the task's group"
    );

    node.driver()
        .stop("t", "SIGTERM", Duration::from_secs(5))
        .await
        .expect("stop");
    eventually("the group to be gone", || group_members(pgid).is_empty()).await;
}

#[tokio::test]
async fn the_group_is_killed_when_the_main_process_exits() {
    let mut node = Node::new();
    node.run(&task("t", &["sh", "-c", "sleep 100 & echo \"$!\""])).await;
    assert_eq!(
        node.event("t", |o| matches!(o, Observed::Exited { .. })).await,
        Observed::Exited { code: 0 }
    );
    let grandchild: u32 = node.stdout("t").trim().parse().expect("the grandchild's pid");
    eventually("the grandchild to be killed", || !alive(grandchild)).await;
}

#[tokio::test]
async fn a_passing_healthcheck_makes_the_task_healthy() {
    let mut node = Node::new();
    let mut run = task("t", &["sleep", "100"]);
    run.spec.healthcheck = Some(healthcheck(&["CMD", "true"], 100, 3));
    node.run(&run).await;
    // Starting: the first event, before any probe result.
    assert_eq!(
        node.event("t", |_| true).await,
        Observed::Running {
            health: TaskHealth::Starting
        }
    );
    let healthy = Observed::Running {
        health: TaskHealth::Healthy,
    };
    assert_eq!(node.event("t", |o| *o == healthy).await, healthy);
    assert_eq!(node.driver().inspect("t").await.unwrap(), healthy);
    assert_eq!(node.driver().health("t"), Some(HealthStatus::Healthy));

    // Without a healthcheck there is no health.
    node.run(&task("plain", &["sleep", "100"])).await;
    assert_eq!(
        node.driver().inspect("plain").await.unwrap(),
        Observed::Running {
            health: TaskHealth::None
        }
    );
}

#[tokio::test]
async fn a_failing_healthcheck_makes_the_task_unhealthy_after_its_retries() {
    let mut node = Node::new();
    let probes = node.scratch("probes");
    let flag = node.scratch("flag");
    let mut run = task("t", &["sleep", "100"]);
    run.spec.env.insert("PROBES".into(), Some(probes.clone()));
    run.spec.env.insert("FLAG".into(), Some(flag.clone()));
    run.spec.healthcheck = Some(healthcheck(
        &["CMD-SHELL", "echo x >> \"$PROBES\"; test -e \"$FLAG\""],
        100,
        3,
    ));
    node.run(&run).await;

    eventually("unhealthy", || {
        node.driver().health("t") == Some(HealthStatus::Unhealthy)
    })
    .await;
    let count = fs::read_to_string(&probes).unwrap_or_default().lines().count();
    assert!(
        count >= 3,
        "unhealthy after {count} probes, expected at least 3 failures"
    );
    assert_eq!(
        node.driver().inspect("t").await.unwrap(),
        Observed::Running {
            health: TaskHealth::Unhealthy
        }
    );

    // One success makes it healthy again; three failures unhealthy again.
    fs::write(&flag, "").unwrap();
    let healthy = Observed::Running {
        health: TaskHealth::Healthy,
    };
    node.event("t", |o| *o == healthy).await;
    fs::remove_file(&flag).unwrap();
    node.event("t", |o| {
        *o == Observed::Running {
            health: TaskHealth::Unhealthy,
        }
    })
    .await;
    assert_eq!(node.driver().health("t"), Some(HealthStatus::Unhealthy));
}

#[tokio::test]
async fn a_probe_that_times_out_fails() {
    let node = Node::new();
    let mut run = task("t", &["sleep", "100"]);
    let mut check = healthcheck(&["CMD", "sleep", "100"], 100, 1);
    check.timeout_ms = Some(200);
    run.spec.healthcheck = Some(check);
    node.run(&run).await;
    eventually("unhealthy", || {
        node.driver().health("t") == Some(HealthStatus::Unhealthy)
    })
    .await;
}

#[tokio::test]
async fn refuses_tasks_that_cannot_run_on_the_node() {
    let node = Node::new();
    let driver = node.driver();

    let message = rejected(driver.prepare(&task("t1", &["no-such-program-xyz", "--flag"])).await);
    assert!(
        message.contains("command \"no-such-program-xyz\" not found on node node-1"),
        "{message}"
    );
    let message = rejected(driver.prepare(&task("t2", &["/nonexistent/bin/tool"])).await);
    assert!(
        message.contains("\"/nonexistent/bin/tool\" not found on node node-1"),
        "{message}"
    );

    let mut run = task("t3", &["true"]);
    run.spec.command = None;
    assert!(rejected(driver.prepare(&run).await).contains("needs `command`"));

    let mut run = task("t4", &["true"]);
    run.spec.working_dir = Some("/no/such/dir".into());
    let message = rejected(driver.prepare(&run).await);
    assert!(
        message.contains("\"/no/such/dir\" does not exist on node node-1"),
        "{message}"
    );

    let mut run = task("t5", &["true"]);
    run.spec.user = Some("no-such-user-xyz".into());
    let message = rejected(driver.prepare(&run).await);
    assert!(
        message.contains("no-such-user-xyz") && message.contains("node-1"),
        "{message}"
    );

    assert!(rejected(driver.prepare(&task("../escape", &["true"])).await).contains("invalid task id"));
    for id in ["t1", "t2", "t3", "t4", "t5"] {
        assert_eq!(driver.inspect(id).await.unwrap(), Observed::Missing, "{id}");
    }
    assert!(driver.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn logs_tail_follow_and_timestamps() {
    let node = Node::new();
    let go = node.scratch("go");
    let end = node.scratch("end");
    let script = "for i in 1 2 3 4 5; do echo line$i; done; echo err >&2; \
                  while [ ! -e \"$GO\" ]; do sleep 0.05; done; echo after; \
                  while [ ! -e \"$END\" ]; do sleep 0.05; done";
    let mut run = task("t", &["sh", "-c", script]);
    run.spec.env.insert("GO".into(), Some(go.clone()));
    run.spec.env.insert("END".into(), Some(end.clone()));
    node.run(&run).await;
    eventually("the first lines", || node.stdout("t").contains("line5")).await;
    let driver = node.driver();

    let tail = LogOptions {
        tail: Some(2),
        ..LogOptions::default()
    };
    let lines = collect_logs(driver, "t", tail).await;
    assert_eq!(texts(&lines, LogStream::Stdout), ["line4", "line5"]);
    assert_eq!(texts(&lines, LogStream::Stderr), ["err"]);

    let stamped = LogOptions {
        timestamps: true,
        ..LogOptions::default()
    };
    let lines = collect_logs(driver, "t", stamped).await;
    let first = &texts(&lines, LogStream::Stdout)[0];
    let (time, text) = first.split_once(' ').expect("a timestamp");
    assert_eq!(text, "line1");
    assert!(
        time.len() == 30 && time.as_bytes()[10] == b'T' && time.ends_with('Z'),
        "{time}"
    );

    let follow = LogOptions {
        follow: true,
        tail: Some(1),
        timestamps: false,
    };
    let mut stream = driver.logs("t", follow);
    let mut seen = Vec::new();
    while !seen.contains(&"line5".to_string()) {
        seen.push(next_line(&mut stream).await.expect("the tail").text);
    }
    fs::write(&go, "").unwrap();
    loop {
        let line = next_line(&mut stream).await.expect("the new line");
        if line.stream == LogStream::Stdout {
            assert_eq!(line.text, "after");
            break;
        }
    }
    // The stream ends with the task.
    fs::write(&end, "").unwrap();
    let rest = next_line(&mut stream).await;
    assert!(rest.is_none(), "unexpected line after the end: {rest:?}");
}

#[tokio::test]
async fn adopts_a_running_task_after_an_agent_restart() {
    let mut node = Node::new();
    let mut run = task("t", &["sh", "-c", "echo ready; exec sleep 100"]);
    // Probed a minute after the start; an adopted task is probed at once.
    run.spec.healthcheck = Some(healthcheck(&["CMD", "true"], 60_000, 3));
    node.run(&run).await;
    eventually("the task to run", || node.stdout("t").contains("ready")).await;
    let pid = node.pid("t");

    node.restart();
    let starting = Observed::Running {
        health: TaskHealth::Starting,
    };
    assert_eq!(node.driver().list().await.unwrap(), [("t".to_string(), starting)]);
    let healthy = Observed::Running {
        health: TaskHealth::Healthy,
    };
    node.event("t", |o| *o == healthy).await;
    assert_eq!(node.driver().inspect("t").await.unwrap(), healthy);
    node.driver().stop("t", "", Duration::from_secs(5)).await.expect("stop");
    eventually("the process to end", || !alive(pid)).await;
    // The new agent is not the parent: the code is unknown, and the state says why.
    assert_eq!(
        node.event("t", |o| matches!(o, Observed::Exited { .. })).await,
        Observed::Exited { code: -1 }
    );
    let state = fs::read_to_string(node.task_dir("t").join("task.json")).unwrap();
    assert!(
        state.contains("exit code unknown (the agent restarted while the task ran)"),
        "{state}"
    );
    node.restart();
    assert_eq!(node.driver().inspect("t").await.unwrap(), Observed::Exited { code: -1 });
}

#[tokio::test]
async fn a_task_that_ended_while_no_agent_ran_is_reported_exited() {
    let mut node = Node::new();
    node.run(&task("t", &["sleep", "100"])).await;
    let pid = node.pid("t");
    node.driver = None;
    kill_group(pid);
    eventually("the process to end", || !alive(pid)).await;

    node.restart();
    assert_eq!(
        node.driver().list().await.unwrap(),
        [("t".to_string(), Observed::Exited { code: -1 })]
    );
}

#[tokio::test]
async fn a_reused_pid_is_not_mistaken_for_the_task() {
    let mut node = Node::new();
    node.run(&task("t", &["sleep", "100"])).await;
    let pid = node.pid("t");
    let _guard = GroupGuard(pid);
    node.driver = None;
    // Same pid, another start time: what the state of a task would look like if its pid had been reused.
    let path = node.task_dir("t").join("task.json");
    let mut state: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let start_time = state["start_time"].as_u64().unwrap();
    state["start_time"] = serde_json::json!(start_time + 1);
    fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();

    node.restart();
    assert_eq!(node.driver().inspect("t").await.unwrap(), Observed::Exited { code: -1 });
    node.driver().stop("t", "SIGKILL", Duration::ZERO).await.expect("stop");
    node.driver().remove("t").await.expect("remove");
    assert!(alive(pid), "a process that is not the task's was signalled");
}

#[tokio::test]
async fn remove_stops_the_task_and_deletes_its_directory() {
    let mut node = Node::new();
    let mut run = task("t", &["sleep", "100"]);
    run.spec.stop_grace_period_ms = 5_000;
    node.run(&run).await;
    let pid = node.pid("t");

    node.driver().remove("t").await.expect("remove");
    assert!(!node.task_dir("t").exists());
    assert!(!alive(pid));
    node.event("t", |o| matches!(o, Observed::Exited { .. })).await;
    node.event("t", |o| *o == Observed::Missing).await;
    assert_eq!(node.driver().inspect("t").await.unwrap(), Observed::Missing);
    node.driver().remove("t").await.expect("removing again");
    assert!(node.driver().list().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_agent_environment_does_not_leak_into_tasks() {
    let mut node = Node::new();
    let mut run = task("t", &["env"]);
    run.spec.env.insert("FOO".into(), Some("bar".into()));
    run.spec.env.insert("FROM_NODE".into(), None);
    node.run(&run).await;
    node.event("t", |o| matches!(o, Observed::Exited { .. })).await;

    let output = node.stdout("t");
    let keys: BTreeSet<&str> = output
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, BTreeSet::from(["FOO", "PATH", "SWARM_TASK_ID"]), "{output}");
    assert!(output.contains("FOO=bar\n"));
    // The test runner has these, so the check above means something.
    assert!(std::env::var_os("HOME").is_some() || std::env::var_os("CARGO_MANIFEST_DIR").is_some());
}

#[tokio::test]
async fn runs_as_the_given_user() {
    let mut node = Node::new();
    let mut run = task("t", &["sh", "-c", "id -u; id -g"]);
    run.spec.user = Some("65534:65534".into());
    let as_root = fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !as_root {
        let message = rejected(node.driver().prepare(&run).await);
        assert!(message.contains("not as root"), "{message}");
        return;
    }
    node.run(&run).await;
    node.event("t", |o| matches!(o, Observed::Exited { .. })).await;
    assert_eq!(node.stdout("t"), "65534\n65534\n");
}
