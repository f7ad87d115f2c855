//! The docker driver against this machine's Docker Engine (each test prints why and passes when there is none).
//!
//! Every test works as its own node (a unique node id), so parallel tests never see each other's containers, and
//! its `TestNode` removes everything labelled with that node when it is dropped — also when the test fails.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use support::docker;
use support::docker_json;
use support::next_event;
use support::wait_observed;
use support::Proxy;
use support::TestNode;
use swarm_agent::driver::docker::DockerDriver;
use swarm_agent::driver::Driver;
use swarm_agent::driver::DriverError;
use swarm_agent::driver::LogOptions;
use swarm_agent::driver::LogStream;
use swarm_agent::driver::Observed;
use swarm_agent::driver::TaskHealth;
use swarm_agent::driver::LABEL_NODE;
use swarm_agent::driver::LABEL_STACK;
use swarm_agent::driver::LABEL_TASK;
use swarm_specs::spec::Healthcheck;
use swarm_specs::spec::Mount;
use swarm_specs::spec::MountType;
use swarm_specs::spec::Ulimit;
use tokio::time::Instant;

const IMAGE_1: &str = "swarm-test/busybox:1";
const IMAGE_2: &str = "swarm-test/busybox:2";
const SOON: Duration = Duration::from_secs(20);

fn running(o: &Observed) -> bool {
    matches!(o, Observed::Running { .. })
}

fn exited(o: &Observed) -> bool {
    matches!(o, Observed::Exited { .. })
}

/// The task's output lines (stdout and stderr), waiting for the container to finish writing them.
async fn output(driver: &DockerDriver, task_id: &str, options: LogOptions) -> Vec<(LogStream, String)> {
    let lines: Vec<_> = driver.logs(task_id, options).collect().await;
    lines
        .into_iter()
        .map(|l| l.map(|l| (l.stream, l.text)).expect("log line"))
        .collect()
}

/// The first `n` stdout lines of a running task (following its log).
async fn first_lines(driver: &DockerDriver, task_id: &str, n: usize) -> Vec<String> {
    let options = LogOptions {
        follow: true,
        ..Default::default()
    };
    let lines = driver
        .logs(task_id, options)
        .map(|l| l.expect("log line").text)
        .take(n)
        .collect::<Vec<_>>();
    tokio::time::timeout(SOON, lines).await.expect("log lines in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_task_runs_with_its_env_and_command() {
    let Some(node) = TestNode::new("run") else { return };
    let d = &node.driver;
    assert!(d.available().await);
    assert!(d.engine_version().await.is_some_and(|v| !v.is_empty()));
    assert_eq!(d.inspect("nope").await.expect("inspect"), Observed::Missing);

    let mut task = node.task(
        "web",
        IMAGE_1,
        r#"echo "greeting=$GREETING task=$SWARM_TASK_ID from-node=${FROM_NODE-unset}"; cat /VERSION; exec sleep 60"#,
    );
    task.spec.env.insert("GREETING".into(), Some("hello".into()));
    task.spec.env.insert("FROM_NODE".into(), None);
    d.prepare(&task).await.expect("prepare");
    assert_eq!(d.inspect(&task.task_id).await.expect("inspect"), Observed::Created);
    // Preparing again changes nothing.
    d.prepare(&task).await.expect("prepare again");
    assert_eq!(node.containers().len(), 1);

    d.start(&task.task_id).await.expect("start");
    d.start(&task.task_id).await.expect("start again");
    wait_observed(d, &task.task_id, SOON, running).await;
    assert_eq!(
        first_lines(d, &task.task_id, 2).await,
        [
            format!("greeting=hello task={} from-node=unset", task.task_id),
            "1".to_string()
        ]
    );
    d.prepare(&task).await.expect("prepare a running task");
    assert_eq!(
        d.inspect(&task.task_id).await.expect("inspect"),
        Observed::Running {
            health: TaskHealth::None
        }
    );

    let v2 = node.task("v2", IMAGE_2, "cat /VERSION; exec sleep 60");
    d.prepare(&v2).await.expect("prepare v2");
    d.start(&v2.task_id).await.expect("start v2");
    assert_eq!(first_lines(d, &v2.task_id, 1).await, ["2"]);

    d.remove(&task.task_id).await.expect("remove");
    d.remove(&task.task_id).await.expect("remove again");
    d.stop(&task.task_id, "SIGTERM", Duration::from_secs(1))
        .await
        .expect("stop a removed task");
    assert_eq!(d.inspect(&task.task_id).await.expect("inspect"), Observed::Missing);
    let listed: Vec<String> = d.list().await.expect("list").into_iter().map(|(id, _)| id).collect();
    assert_eq!(listed, [v2.task_id.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_a_task_that_handles_the_signal_within_the_grace() {
    let Some(node) = TestNode::new("stop-trap") else { return };
    let d = &node.driver;
    let task = node.task(
        "trap",
        IMAGE_1,
        r#"trap "exit 0" TERM; echo ready; while :; do sleep 0.1; done"#,
    );
    d.prepare(&task).await.expect("prepare");
    d.start(&task.task_id).await.expect("start");
    assert_eq!(first_lines(d, &task.task_id, 1).await, ["ready"]);

    let grace = Duration::from_secs(10);
    let began = Instant::now();
    d.stop(&task.task_id, "SIGTERM", grace).await.expect("stop");
    assert!(began.elapsed() < grace, "stopping took {:?}", began.elapsed());
    assert_eq!(
        d.inspect(&task.task_id).await.expect("inspect"),
        Observed::Exited { code: 0 }
    );
    // Stopping a stopped task is fine.
    d.stop(&task.task_id, "SIGTERM", grace).await.expect("stop again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_a_task_that_ignores_the_signal_after_the_grace() {
    let Some(node) = TestNode::new("stop-kill") else { return };
    let d = &node.driver;
    let task = node.task(
        "stubborn",
        IMAGE_1,
        r#"trap "" TERM; echo ready; while :; do sleep 0.1; done"#,
    );
    d.prepare(&task).await.expect("prepare");
    d.start(&task.task_id).await.expect("start");
    assert_eq!(first_lines(d, &task.task_id, 1).await, ["ready"]);

    let grace = Duration::from_millis(1500);
    let began = Instant::now();
    d.stop(&task.task_id, "SIGTERM", grace).await.expect("stop");
    let took = began.elapsed();
    assert!(
        took >= grace && took < grace + Duration::from_secs(10),
        "stopping took {took:?}"
    );
    assert_eq!(
        d.inspect(&task.task_id).await.expect("inspect"),
        Observed::Exited { code: 137 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthchecks_report_healthy_and_unhealthy() {
    let Some(node) = TestNode::new("health") else { return };
    let d = &node.driver;
    let mut events = d.events();
    let check = |cmd: &str| Healthcheck {
        test: vec!["CMD".into(), cmd.into()],
        interval_ms: Some(200),
        timeout_ms: Some(2_000),
        start_period_ms: None,
        start_interval_ms: None,
        retries: Some(1),
    };
    let mut good = node.task("good", IMAGE_1, "exec sleep 60");
    good.spec.healthcheck = Some(check("true"));
    let mut bad = node.task("bad", IMAGE_1, "exec sleep 60");
    bad.spec.healthcheck = Some(check("false"));
    for task in [&good, &bad] {
        d.prepare(task).await.expect("prepare");
        d.start(&task.task_id).await.expect("start");
    }

    wait_observed(d, &good.task_id, SOON, |o| {
        *o == Observed::Running {
            health: TaskHealth::Healthy,
        }
    })
    .await;
    // Starting until its retries failed, then unhealthy, as the engine says.
    let deadline = Instant::now() + SOON;
    while docker_json(&["inspect", &bad.name])["State"]["Health"]["Status"] != "unhealthy" {
        assert!(
            Instant::now() < deadline,
            "the failing check never made the container unhealthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        d.inspect(&bad.task_id).await.expect("inspect"),
        Observed::Running {
            health: TaskHealth::Unhealthy
        }
    );

    // The events say so too: healthy for one; for the other, started (health starting) then unhealthy.
    let (mut good_healthy, mut bad_not_healthy) = (false, 0);
    let deadline = Instant::now() + SOON;
    while !(good_healthy && bad_not_healthy >= 2) {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("health events in time")
            .expect("event stream open");
        if event.task_id == good.task_id
            && event.observed
                == (Observed::Running {
                    health: TaskHealth::Healthy,
                })
        {
            good_healthy = true;
        }
        let not_healthy = [TaskHealth::Starting, TaskHealth::Unhealthy].map(|health| Observed::Running { health });
        if event.task_id == bad.task_id && not_healthy.contains(&event.observed) {
            bad_not_healthy += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_volumes_binds_and_tmpfs() {
    let Some(node) = TestNode::new("mounts") else { return };
    let d = &node.driver;
    let host = tempfile::tempdir().expect("temp dir");
    std::fs::write(host.path().join("hello.txt"), "from-host\n").expect("write");
    let volume = format!("{}_data", node.stack());
    let mount = |kind, source: Option<&str>, target: &str, read_only| Mount {
        kind,
        source: source.map(String::from),
        target: target.into(),
        read_only,
        no_copy: false,
        bind_propagation: None,
        tmpfs_size: None,
        tmpfs_mode: None,
    };
    let mut task = node.task(
        "files",
        IMAGE_1,
        "cat /host/hello.txt; \
         (echo x > /host/new) 2>/dev/null && echo bind-writable || echo bind-read-only; \
         stat -c %a /scratch; \
         echo kept > /data/file && cat /data/file; \
         echo anon > /anon/file && cat /anon/file; \
         mount",
    );
    task.spec.mounts = vec![
        mount(MountType::Volume, Some(&volume), "/data", false),
        mount(MountType::Volume, None, "/anon", false),
        mount(MountType::Bind, host.path().to_str(), "/host", true),
        Mount {
            tmpfs_size: Some(1 << 20),
            tmpfs_mode: Some(0o1770),
            ..mount(MountType::Tmpfs, None, "/scratch", false)
        },
    ];
    d.prepare(&task).await.expect("prepare");
    d.start(&task.task_id).await.expect("start");
    assert_eq!(
        wait_observed(d, &task.task_id, SOON, exited).await,
        Observed::Exited { code: 0 }
    );
    let lines: Vec<String> = output(d, &task.task_id, LogOptions::default())
        .await
        .into_iter()
        .filter(|(stream, _)| *stream == LogStream::Stdout)
        .map(|(_, text)| text)
        .collect();
    assert_eq!(
        lines[..5],
        ["from-host", "bind-read-only", "1770", "kept", "anon"],
        "{lines:?}"
    );
    let scratch = lines
        .iter()
        .find(|l| l.contains(" /scratch "))
        .expect("/scratch is mounted");
    assert!(
        scratch.starts_with("tmpfs on /scratch type tmpfs") && scratch.contains("size=1024k"),
        "{scratch}"
    );
    assert!(!host.path().join("new").exists());

    let labels = &docker_json(&["volume", "inspect", &volume])["Labels"];
    assert_eq!(labels[LABEL_STACK], node.stack().as_str());
    assert_eq!(labels[LABEL_NODE], node.id.as_str());
    let mounts = docker_json(&["inspect", &task.name])["Mounts"].clone();
    let anonymous = mounts
        .as_array()
        .and_then(|m| m.iter().find(|m| m["Destination"] == "/anon"))
        .and_then(|m| m["Name"].as_str())
        .expect("the anonymous volume")
        .to_string();

    // Removing the task removes its anonymous volume; the named one stays for the next task.
    d.remove(&task.task_id).await.expect("remove");
    assert!(!docker(&["volume", "inspect", &anonymous]).status.success());
    assert!(docker(&["volume", "inspect", &volume]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bind_source_rejects_the_task() {
    let Some(node) = TestNode::new("bind-missing") else {
        return;
    };
    let mut task = node.task("files", IMAGE_1, "true");
    let missing = format!("/nonexistent/{}", node.id);
    task.spec.mounts = vec![Mount {
        kind: MountType::Bind,
        source: Some(missing.clone()),
        target: "/x".into(),
        read_only: false,
        no_copy: false,
        bind_propagation: None,
        tmpfs_size: None,
        tmpfs_mode: None,
    }];
    match node.driver.prepare(&task).await {
        Err(DriverError::Rejected(message)) => assert_eq!(
            message,
            format!("bind mount source path does not exist: {missing} (on node {})", node.id)
        ),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(node.containers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_settings_reach_the_engine() {
    let Some(node) = TestNode::new("limits") else { return };
    let d = &node.driver;
    let mut task = node.task(
        "limited",
        IMAGE_1,
        "id -u; hostname; pwd; ulimit -n; (echo x > /rootfs-file) 2>/dev/null || echo read-only; exec sleep 60",
    );
    let spec = &mut task.spec;
    spec.resources.limits.memory_bytes = 64 << 20;
    spec.resources.limits.pids = 100;
    spec.resources.limits.nano_cpus = 250_000_000;
    spec.ulimits = BTreeMap::from([("nofile".into(), Ulimit { soft: 1024, hard: 2048 })]);
    spec.user = Some("1000:1000".into());
    spec.working_dir = Some("/tmp".into());
    spec.hostname = Some("limited-host".into());
    spec.extra_hosts = vec!["db=10.1.2.3".into()];
    spec.dns_search = vec!["example.test".into()];
    spec.cap_add = vec!["NET_ADMIN".into()];
    spec.cap_drop = vec!["MKNOD".into()];
    spec.init = true;
    spec.read_only = true;
    spec.stop_signal = Some("SIGINT".into());
    spec.stop_grace_period_ms = 3_500;
    spec.container_labels = BTreeMap::from([("team".into(), "blue".into())]);
    spec.logging = Some(swarm_specs::spec::Logging {
        driver: "json-file".into(),
        options: BTreeMap::from([("max-size".into(), "1m".into())]),
    });
    d.prepare(&task).await.expect("prepare");

    let c = docker_json(&["inspect", &task.name]);
    let host = &c["HostConfig"];
    assert_eq!(host["Memory"], 64 << 20);
    assert_eq!(host["PidsLimit"], 100);
    assert_eq!(host["NanoCpus"], 250_000_000);
    assert_eq!(host["Ulimits"][0]["Name"], "nofile");
    assert_eq!(host["Ulimits"][0]["Hard"], 2048);
    assert_eq!(host["ExtraHosts"][0], "db:10.1.2.3");
    assert_eq!(host["DnsSearch"][0], "example.test");
    assert_eq!(host["CapAdd"][0], "NET_ADMIN");
    assert_eq!(host["CapDrop"][0], "MKNOD");
    assert_eq!(host["Init"], true);
    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(host["LogConfig"]["Config"]["max-size"], "1m");
    assert_eq!(c["Config"]["StopSignal"], "SIGINT");
    assert_eq!(c["Config"]["StopTimeout"], 4);
    assert_eq!(c["Config"]["Labels"]["team"], "blue");
    assert_eq!(c["Config"]["Labels"][LABEL_TASK], task.task_id.as_str());

    d.start(&task.task_id).await.expect("start");
    assert_eq!(
        first_lines(d, &task.task_id, 5).await,
        ["1000", "limited-host", "/tmp", "1024", "read-only"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_tail_and_timestamps() {
    let Some(node) = TestNode::new("logs") else { return };
    let d = &node.driver;
    // The engine copies stdout and stderr separately, so their relative order is not kept: one task each.
    let task = node.task("chatty", IMAGE_1, "echo one; echo two; echo three; printf four");
    let errors = node.task("errors", IMAGE_1, "echo out; echo err >&2");
    for task in [&task, &errors] {
        d.prepare(task).await.expect("prepare");
        d.start(&task.task_id).await.expect("start");
        wait_observed(d, &task.task_id, SOON, exited).await;
    }
    let all = output(d, &task.task_id, LogOptions::default()).await;
    let stdout = |text: &str| (LogStream::Stdout, text.to_string());
    assert_eq!(all, [stdout("one"), stdout("two"), stdout("three"), stdout("four")]);
    let mut both = output(d, &errors.task_id, LogOptions::default()).await;
    both.sort_by_key(|(stream, _)| *stream == LogStream::Stderr);
    assert_eq!(both, [stdout("out"), (LogStream::Stderr, "err".to_string())]);

    let tail = LogOptions {
        tail: Some(1),
        ..Default::default()
    };
    assert_eq!(
        output(d, &task.task_id, tail).await,
        [(LogStream::Stdout, "four".to_string())]
    );

    let stamped = LogOptions {
        tail: Some(2),
        timestamps: true,
        ..Default::default()
    };
    let lines = output(d, &task.task_id, stamped).await;
    assert_eq!(lines.len(), 2);
    for (_, line) in &lines {
        let (stamp, rest) = line.split_once(' ').expect("a timestamp prefix");
        assert!(
            stamp.len() > 20 && stamp.contains('T') && stamp.ends_with('Z'),
            "{line:?}"
        );
        assert!(["three", "four"].contains(&rest), "{line:?}");
    }

    // Following a running task: lines as they come, and the end when it exits.
    let live = node.task("live", IMAGE_1, "echo ready; sleep 0.3; echo later");
    d.prepare(&live).await.expect("prepare");
    d.start(&live.task_id).await.expect("start");
    let follow = LogOptions {
        follow: true,
        ..Default::default()
    };
    let followed = tokio::time::timeout(SOON, output(d, &live.task_id, follow))
        .await
        .expect("the followed log ends when the task exits");
    let followed: Vec<&str> = followed.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(followed, ["ready", "later"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_rejects_the_task_naming_image_and_node() {
    let Some(node) = TestNode::new("no-image") else { return };
    let task = node.task("ghost", "swarm-test/absent:1", "true");
    match node.driver.prepare(&task).await {
        Err(DriverError::Rejected(message)) => assert!(
            message.starts_with(&format!(
                "image \"swarm-test/absent:1\" is not available on node {}: ",
                node.id
            )) && message.len() > 70,
            "{message}"
        ),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(node.containers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_driver_adopts_the_containers_of_the_last_one() {
    let Some(node) = TestNode::new("adopt") else { return };
    let first = &node.driver;
    let created = node.task("created", IMAGE_1, "exec sleep 60");
    let started = node.task("started", IMAGE_1, "exec sleep 60");
    first.prepare(&created).await.expect("prepare");
    first.prepare(&started).await.expect("prepare");
    first.start(&started.task_id).await.expect("start");
    wait_observed(first, &started.task_id, SOON, running).await;

    let second = DockerDriver::connect(&DockerDriver::default_socket(), node.id.clone());
    let listed: BTreeMap<String, Observed> = second.list().await.expect("list").into_iter().collect();
    assert_eq!(
        listed,
        BTreeMap::from([
            (created.task_id.clone(), Observed::Created),
            (
                started.task_id.clone(),
                Observed::Running {
                    health: TaskHealth::None
                }
            ),
        ])
    );
    let other_node = DockerDriver::connect(&DockerDriver::default_socket(), format!("{}-other", node.id));
    assert!(other_node.list().await.expect("list").is_empty());
    assert_eq!(
        other_node.inspect(&started.task_id).await.expect("inspect"),
        Observed::Missing
    );

    second.remove(&started.task_id).await.expect("remove");
    let left: Vec<String> = first
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, [created.task_id.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_rm_is_an_event_within_a_second() {
    let Some(node) = TestNode::new("ext-rm") else { return };
    let d = &node.driver;
    let mut events = d.events();
    let task = node.task("victim", IMAGE_1, "exec sleep 60");
    d.prepare(&task).await.expect("prepare");
    d.start(&task.task_id).await.expect("start");
    next_event(&mut events, SOON, |e| e.task_id == task.task_id && running(&e.observed)).await;

    assert!(docker(&["rm", "-f", &task.name]).status.success());
    next_event(&mut events, Duration::from_secs(1), |e| {
        e.task_id == task.task_id && e.observed == Observed::Missing
    })
    .await;
    assert_eq!(d.inspect(&task.task_id).await.expect("inspect"), Observed::Missing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_kill_is_an_exit_event_with_the_code() {
    let Some(node) = TestNode::new("ext-kill") else { return };
    let d = &node.driver;
    let mut events = d.events();
    let task = node.task("victim", IMAGE_1, "exec sleep 60");
    let quitter = node.task("quitter", IMAGE_1, "exit 3");
    d.prepare(&task).await.expect("prepare");
    d.start(&task.task_id).await.expect("start");
    next_event(&mut events, SOON, |e| e.task_id == task.task_id && running(&e.observed)).await;

    assert!(docker(&["kill", &task.name]).status.success());
    let event = next_event(&mut events, SOON, |e| e.task_id == task.task_id && exited(&e.observed)).await;
    assert_eq!(event.observed, Observed::Exited { code: 137 });

    d.prepare(&quitter).await.expect("prepare");
    d.start(&quitter.task_id).await.expect("start");
    let event = next_event(&mut events, SOON, |e| {
        e.task_id == quitter.task_id && exited(&e.observed)
    })
    .await;
    assert_eq!(event.observed, Observed::Exited { code: 3 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_engine_connection_is_unavailable_then_recovers() {
    let Some(node) = TestNode::new("proxy") else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let proxy = Proxy::start(&dir.path().join("docker.sock"), &DockerDriver::default_socket()).await;
    let d = DockerDriver::connect(proxy.path(), node.id.clone());
    assert!(d.available().await);
    let mut events = d.events();
    let task = node.task("survivor", IMAGE_1, "exec sleep 60");
    d.prepare(&task).await.expect("prepare");
    d.start(&task.task_id).await.expect("start");
    next_event(&mut events, SOON, |e| e.task_id == task.task_id && running(&e.observed)).await;

    proxy.cut().await;
    assert!(!d.available().await);
    assert_eq!(d.engine_version().await, None);
    let unavailable = |r: Result<_, DriverError>| matches!(r, Err(DriverError::Unavailable(_)));
    assert!(unavailable(d.inspect(&task.task_id).await.map(|_| ())));
    assert!(unavailable(d.list().await.map(|_| ())));
    assert!(unavailable(d.start(&task.task_id).await));
    assert!(unavailable(d.prepare(&node.task("late", IMAGE_1, "true")).await));
    // Something happens while the driver cannot see it…
    assert!(docker(&["kill", &task.name]).status.success());

    proxy.restore().await;
    assert!(d.available().await);
    let listed: Vec<(String, Observed)> = d.list().await.expect("list after restore");
    assert_eq!(listed, [(task.task_id.clone(), Observed::Exited { code: 137 })]);
    // …and the event stream, reconnected, still reports it.
    let event = next_event(&mut events, SOON, |e| e.task_id == task.task_id && exited(&e.observed)).await;
    assert_eq!(event.observed, Observed::Exited { code: 137 });
    d.start(&task.task_id)
        .await
        .expect("restart through the restored connection");
    next_event(&mut events, SOON, |e| e.task_id == task.task_id && running(&e.observed)).await;
}

mod support {
    //! Test harness: the engine check and test images, a node that cleans up after itself, waits with deadlines,
    //! and a unix-socket proxy that can cut the driver off from the engine.

    use std::collections::BTreeMap;
    use std::path::Path;
    use std::path::PathBuf;
    use std::process::Command;
    use std::process::Output;
    use std::sync::Arc;
    use std::sync::OnceLock;
    use std::time::Duration;

    use futures_util::stream::BoxStream;
    use futures_util::StreamExt;
    use swarm_agent::driver::docker::DockerDriver;
    use swarm_agent::driver::Driver;
    use swarm_agent::driver::DriverEvent;
    use swarm_agent::driver::Observed;
    use swarm_agent::driver::TaskRun;
    use swarm_agent::driver::LABEL_NODE;
    use swarm_specs::spec::Driver as TaskDriver;
    use swarm_specs::spec::TaskSpec;
    use tokio::net::UnixListener;
    use tokio::net::UnixStream;
    use tokio::sync::Mutex;
    use tokio::task::JoinHandle;
    use tokio::task::JoinSet;
    use tokio::time::Instant;

    use super::IMAGE_1;
    use super::IMAGE_2;

    /// Runs the docker CLI against the machine's engine.
    pub fn docker(args: &[&str]) -> Output {
        Command::new("docker")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running docker {args:?}: {e}"))
    }

    /// The first object of a `docker ... inspect` answer.
    pub fn docker_json(args: &[&str]) -> serde_json::Value {
        let out = docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("docker prints JSON");
        value[0].clone()
    }

    /// Whether the engine answers and the test images exist (built on first use); why not otherwise.
    fn engine_ready() -> &'static Result<(), String> {
        static READY: OnceLock<Result<(), String>> = OnceLock::new();
        READY.get_or_init(|| {
            if !DockerDriver::default_socket().exists() {
                return Err(format!("{} does not exist", DockerDriver::default_socket().display()));
            }
            let version = Command::new("docker")
                .args(["version", "--format", "{{.Server.Version}}"])
                .output()
                .map_err(|e| format!("the docker CLI cannot run: {e}"))?;
            if !version.status.success() {
                return Err(format!(
                    "the docker engine does not answer: {}",
                    String::from_utf8_lossy(&version.stderr).trim()
                ));
            }
            swarm_agent::testing::ensure_busybox_image(IMAGE_1, "1")?;
            swarm_agent::testing::ensure_busybox_image(IMAGE_2, "2")
        })
    }

    /// One test's node: a driver for a node id of its own, and cleanup of everything labelled with it on drop.
    pub struct TestNode {
        pub id: String,
        pub driver: DockerDriver,
    }

    impl TestNode {
        /// None (after printing why) when there is no engine to test against.
        pub fn new(name: &str) -> Option<TestNode> {
            if let Err(why) = engine_ready() {
                eprintln!("skipping the docker driver test {name}: {why}");
                return None;
            }
            let id = format!("dt-{name}-{}", std::process::id());
            let node = TestNode {
                driver: DockerDriver::connect(&DockerDriver::default_socket(), id.clone()),
                id,
            };
            node.clean();
            Some(node)
        }

        pub fn stack(&self) -> String {
            format!("st-{}", self.id)
        }

        /// A task of this node running `script` with `sh -c`.
        pub fn task(&self, key: &str, image: &str, script: &str) -> TaskRun {
            let task_id = format!("{}-{key}", self.id);
            let service = format!("{}_{key}", self.stack());
            let command = ["sh", "-c", script].map(String::from).to_vec();
            TaskRun {
                name: format!("{service}.1.{task_id}"),
                task_id: task_id.clone(),
                service,
                slot: Some(1),
                node_id: self.id.clone(),
                stack: Some(self.stack()),
                spec: TaskSpec::with_command(TaskDriver::Docker, Some(image.into()), command),
                env: BTreeMap::from([("SWARM_TASK_ID".into(), task_id)]),
                ports: Vec::new(),
                networks: Vec::new(),
                files: Vec::new(),
            }
        }

        /// Ids of the containers labelled with this node.
        pub fn containers(&self) -> Vec<String> {
            labelled(&["ps", "-aq"], &self.id)
        }

        fn clean(&self) {
            let containers = self.containers();
            if !containers.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(containers.iter().map(String::as_str));
                docker(&args);
            }
            let volumes = labelled(&["volume", "ls", "-q"], &self.id);
            if !volumes.is_empty() {
                let mut args = vec!["volume", "rm", "-f"];
                args.extend(volumes.iter().map(String::as_str));
                docker(&args);
            }
            for network in labelled(&["network", "ls", "-q"], &self.id) {
                docker(&["network", "rm", &network]);
            }
        }
    }

    impl Drop for TestNode {
        fn drop(&mut self) {
            self.clean();
        }
    }

    fn labelled(list: &[&str], node_id: &str) -> Vec<String> {
        let filter = format!("label={LABEL_NODE}={node_id}");
        let mut args = list.to_vec();
        args.extend(["--filter", &filter]);
        let out = docker(&args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// Polls `inspect` until `want` holds, failing the test at the deadline.
    pub async fn wait_observed(
        driver: &DockerDriver,
        task_id: &str,
        within: Duration,
        want: impl Fn(&Observed) -> bool,
    ) -> Observed {
        let deadline = Instant::now() + within;
        loop {
            let observed = driver.inspect(task_id).await.expect("inspect");
            if want(&observed) {
                return observed;
            }
            assert!(
                Instant::now() < deadline,
                "task {task_id} is still {observed:?} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The next event `want` accepts, failing the test when none comes within `within`.
    pub async fn next_event(
        events: &mut BoxStream<'static, DriverEvent>,
        within: Duration,
        mut want: impl FnMut(&DriverEvent) -> bool,
    ) -> DriverEvent {
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(event)) if want(&event) => return event,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the event stream ended"),
                Err(_) => panic!("no matching event within {within:?}"),
            }
        }
    }

    /// Forwards a unix socket to the engine's; `cut` closes it (listener and open connections), `restore` reopens it.
    pub struct Proxy {
        path: PathBuf,
        upstream: PathBuf,
        accept: Mutex<Option<JoinHandle<()>>>,
        connections: Arc<Mutex<JoinSet<()>>>,
    }

    impl Proxy {
        pub async fn start(path: &Path, upstream: &Path) -> Proxy {
            let proxy = Proxy {
                path: path.to_path_buf(),
                upstream: upstream.to_path_buf(),
                accept: Mutex::new(None),
                connections: Arc::new(Mutex::new(JoinSet::new())),
            };
            proxy.restore().await;
            proxy
        }

        pub fn path(&self) -> &Path {
            &self.path
        }

        pub async fn cut(&self) {
            if let Some(accept) = self.accept.lock().await.take() {
                accept.abort();
                let _ = accept.await;
            }
            self.connections.lock().await.shutdown().await;
            let _ = std::fs::remove_file(&self.path);
        }

        pub async fn restore(&self) {
            let _ = std::fs::remove_file(&self.path);
            let listener = UnixListener::bind(&self.path).expect("bind the proxy socket");
            let upstream = self.upstream.clone();
            let connections = self.connections.clone();
            let accept = tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let upstream = upstream.clone();
                    connections.lock().await.spawn(async move {
                        if let Ok(mut engine) = UnixStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                        }
                    });
                }
            });
            *self.accept.lock().await = Some(accept);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_network_is_created_for_its_first_task_and_removed_after_its_last() {
    let Some(node) = TestNode::new("net") else { return };
    let d = &node.driver;
    let network = format!("{}_back", node.stack());
    let attach = |task: &mut swarm_agent::driver::TaskRun| {
        task.spec.networks = vec![swarm_specs::spec::NetworkAttachment {
            target: network.clone(),
            aliases: Vec::new(),
        }];
        task.networks = vec![swarm_specs::spec::NetworkSpec {
            name: network.clone(),
            driver: "overlay".into(),
            driver_opts: BTreeMap::new(),
            attachable: false,
            internal: false,
            enable_ipv6: false,
            ipam: Vec::new(),
            labels: BTreeMap::from([(LABEL_STACK.to_string(), node.stack())]),
            external: false,
        }];
    };
    let exists = || {
        let out = docker(&["network", "ls", "-q", "--filter", &format!("name=^{network}$")]);
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    };
    let mut a = node.task("a", IMAGE_1, "exec sleep 60");
    let mut b = node.task("b", IMAGE_1, "exec sleep 60");
    attach(&mut a);
    attach(&mut b);
    // Both prepared at once: one network of that name, not two.
    let (ra, rb) = tokio::join!(d.prepare(&a), d.prepare(&b));
    ra.expect("prepare a");
    rb.expect("prepare b");
    let listed = docker(&["network", "ls", "-q", "--filter", &format!("name=^{network}$")]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 1);
    d.remove(&a.task_id).await.expect("remove a");
    assert!(exists(), "b still uses the network");
    d.remove(&b.task_id).await.expect("remove b");
    assert!(!exists(), "the last task gone, the network goes");
}
