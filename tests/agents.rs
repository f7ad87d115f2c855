//! Process tests of the agents: tasks assigned to a node run there, report their status back through the leader,
//! survive the agent's restart, and show their output — with real daemons on loopback and the process driver.

#[path = "common/mod.rs"]
#[allow(dead_code)]
mod common;
#[path = "cluster/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::io::BufRead as _;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

use harness::wait_until;
use harness::Cluster;
use serde_json::Value;

/// The docker test image (Debian's static busybox, imported), as the docker driver's tests build it.
const IMAGE: &str = "swarm-test/busybox:1";
/// The label the docker driver puts on every container of a node.
const LABEL_NODE: &str = "io.swarm.node.id";

/// One task as `swarm debug tasks` prints it.
fn task(c: &Cluster, manager: &str, id: &str) -> Result<Value, String> {
    let out = c.swarm(manager, &["debug", "tasks"]).ok();
    let tasks: Vec<Value> = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
    tasks
        .into_iter()
        .find(|t| t["id"] == id)
        .ok_or_else(|| format!("task {id} not listed"))
}

fn state_of(c: &Cluster, manager: &str, id: &str) -> Result<(String, Value), String> {
    let t = task(c, manager, id)?;
    Ok((t["status"]["state"].as_str().unwrap_or_default().to_string(), t))
}

fn wait_state(c: &Cluster, manager: &str, id: &str, want: &str, limit: Duration) -> Value {
    wait_until(&format!("task {id} is {want}"), limit, || {
        match state_of(c, manager, id) {
            Ok((state, t)) if state == want => Ok(t),
            Ok((state, t)) => Err(format!("state {state}: {t}")),
            Err(e) => Err(e),
        }
    })
}

fn run_on(c: &Cluster, manager: &str, node: &str, command: &[&str]) -> String {
    let mut args = vec!["debug", "run", "--node", node, "--grace-ms", "2000", "--"];
    args.extend_from_slice(command);
    c.swarm(manager, &args).ok().stdout.trim().to_string()
}

fn small_cluster() -> Cluster {
    let mut c = Cluster::new();
    c.init("m1");
    c.join_worker("w1");
    c.wait_all_ready();
    c
}

#[test]
fn an_assigned_task_runs_on_its_node_and_its_output_comes_back_through_the_leader() {
    let c = small_cluster();
    let id = run_on(
        &c,
        "m1",
        "w1",
        &["sh", "-c", "echo hello from $SWARM_TASK_SLOT; exec sleep 600"],
    );
    let t = wait_state(&c, "m1", &id, "running", Duration::from_secs(10));
    assert_eq!(t["node_id"], c.id("w1"));
    wait_until("the task's output is readable", Duration::from_secs(10), || {
        let logs = c.swarm("m1", &["debug", "logs", &id]).ok().stdout;
        if logs.contains("hello from 1") {
            Ok(())
        } else {
            Err(logs)
        }
    });
}

#[test]
fn a_task_that_exits_non_zero_is_failed_with_its_exit_code() {
    let c = small_cluster();
    let id = run_on(&c, "m1", "w1", &["sh", "-c", "exit 3"]);
    let t = wait_state(&c, "m1", &id, "failed", Duration::from_secs(10));
    assert_eq!(t["status"]["exit_code"], 3, "{t}");
    assert_eq!(t["status"]["err"], "task: non-zero exit (3)", "{t}");
}

#[test]
fn a_task_killed_behind_the_agents_back_is_reported_failed_within_seconds() {
    let c = small_cluster();
    let pid_file = std::env::temp_dir().join(format!("swarm-agent-test-{}.pid", std::process::id()));
    let script = format!("echo $$ > {}; exec sleep 600", pid_file.display());
    let id = run_on(&c, "m1", "w1", &["sh", "-c", &script]);
    wait_state(&c, "m1", &id, "running", Duration::from_secs(10));
    let pid = std::fs::read_to_string(&pid_file).expect("the task wrote its pid");
    let _ = std::fs::remove_file(&pid_file);
    let killed = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap()
        .success());
    let t = wait_state(&c, "m1", &id, "failed", Duration::from_secs(5));
    assert_eq!(t["status"]["exit_code"], 137, "{t}");
    eprintln!("failure reported {:?} after the kill", killed.elapsed());
}

#[test]
fn shutting_a_task_down_stops_its_process_and_reports_shutdown() {
    let c = small_cluster();
    let id = run_on(
        &c,
        "m1",
        "w1",
        &["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"],
    );
    wait_state(&c, "m1", &id, "running", Duration::from_secs(10));
    c.swarm("m1", &["debug", "desire", &id, "shutdown"]).ok();
    wait_state(&c, "m1", &id, "shutdown", Duration::from_secs(10));
}

#[test]
fn a_restarted_agent_adopts_its_running_task_instead_of_starting_another() {
    let mut c = small_cluster();
    let marker = std::env::temp_dir().join(format!("swarm-agent-adopt-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    // Each start of the task appends a line: a duplicate start would show as a second line.
    let script = format!("echo started >> {}; exec sleep 600", marker.display());
    let id = run_on(&c, "m1", "w1", &["sh", "-c", &script]);
    wait_state(&c, "m1", &id, "running", Duration::from_secs(10));
    c.stop("w1");
    c.restart("w1");
    c.wait_all_ready();
    // Give the restarted agent its session and a resync or two, then check nothing started twice.
    let t = wait_state(&c, "m1", &id, "running", Duration::from_secs(10));
    harness::holds_for("the task is not started a second time", Duration::from_secs(3), || {
        let starts = std::fs::read_to_string(&marker).unwrap_or_default().lines().count();
        if starts == 1 {
            Ok(())
        } else {
            Err(format!("{starts} starts; task {t}"))
        }
    });
    let _ = std::fs::remove_file(&marker);
}

// ----- helpers of the stories below -----

/// A scratch directory for the files tasks write (pid files, go-signals). On drop, every process named by a `*.pid`
/// file in it is killed: process-driver tasks run in their own session and outlive the daemons the harness kills.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("swarm-agents-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The pid the task running on `node_id` wrote (the scripts write `$$` to `<node id>.pid`), once written.
    fn pid_of(&self, node_id: &str) -> Result<u32, String> {
        let file = self.path(&format!("{node_id}.pid"));
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        text.trim()
            .parse()
            .map_err(|e| format!("{}: {text:?}: {e}", file.display()))
    }

    /// `sh -c` script: writes its pid to `<node id>.pid`, counts its starts in `starts`, then sleeps (as `exec`, so
    /// the pid stays the task's).
    fn pid_script(&self) -> String {
        format!(
            "echo $$ > {dir}/$SWARM_NODE_ID.pid; echo $SWARM_NODE_ID >> {dir}/starts; exec sleep 600",
            dir = self.dir.path().display()
        )
    }

    /// How many times a task started (lines of `starts`).
    fn starts(&self) -> usize {
        std::fs::read_to_string(self.path("starts"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "pid") {
                if let Ok(pid) = std::fs::read_to_string(entry.path()) {
                    let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
                }
            }
        }
    }
}

/// Whether `pid` is a live process (a zombie waiting for its reaper counts as gone: it runs nothing).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// The unix socket of the daemon the harness started for node `name` (the harness keeps it private): read from the
/// command line of our child `swarm daemon ... --hostname NAME`.
fn socket_of(name: &str) -> PathBuf {
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let dir = entry.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let ppid = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1));
        if ppid != Some(me.as_str()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let after = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
        if args.iter().any(|a| a == "daemon") && after("--hostname").is_some_and(|h| h == name) {
            if let Some(socket) = after("--socket") {
                return PathBuf::from(socket);
            }
        }
    }
    panic!("no `swarm daemon --hostname {name}` among this test's children");
}

/// Runs the docker CLI.
fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running docker {args:?}: {e}"))
}

/// The engine's version when the engine the daemons use (`/var/run/docker.sock`) answers, and the test image exists
/// (built on first use); why not otherwise.
fn docker_ready() -> &'static Result<String, String> {
    static READY: OnceLock<Result<String, String>> = OnceLock::new();
    READY.get_or_init(|| {
        let version = engine_version().clone()?;
        swarm_agent::testing::ensure_busybox_image(IMAGE, "1")?;
        Ok(version)
    })
}

/// The version of the Docker Engine on /var/run/docker.sock, if one answers (whether or not the test image can be
/// built: a node reports its engine either way).
fn engine_version() -> &'static Result<String, String> {
    static VERSION: OnceLock<Result<String, String>> = OnceLock::new();
    VERSION.get_or_init(|| {
        let socket = Path::new("/var/run/docker.sock");
        if !socket.exists() {
            return Err(format!("{} does not exist", socket.display()));
        }
        let version = Command::new("docker")
            .args([
                "-H",
                "unix:///var/run/docker.sock",
                "version",
                "--format",
                "{{.Server.Version}}",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("the docker CLI cannot run: {e}"))?;
        if !version.status.success() {
            return Err(format!(
                "the docker engine does not answer: {}",
                String::from_utf8_lossy(&version.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&version.stdout).trim().to_string())
    })
}

/// Ids of the containers (any state) labelled with node `node_id`, and more labels when given.
fn containers_of(node_id: &str, more: &[String]) -> Vec<String> {
    let mut args = vec!["ps".to_string(), "-aq".into(), "--filter".into()];
    args.push(format!("label={LABEL_NODE}={node_id}"));
    for label in more {
        args.extend(["--filter".to_string(), format!("label={label}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    String::from_utf8_lossy(&docker(&args).stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Removes every container labelled with one of its nodes when dropped — also when the test fails.
struct Containers {
    node_ids: Vec<String>,
}

impl Drop for Containers {
    fn drop(&mut self) {
        for node in &self.node_ids {
            let ids = containers_of(node, &[]);
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids.iter().map(String::as_str));
                docker(&args);
            }
        }
        // Stack networks the nodes' drivers created, once no container of theirs is attached.
        for node in &self.node_ids {
            let filter = format!("label={LABEL_NODE}={node}");
            let out = docker(&["network", "ls", "-q", "--filter", &filter]);
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                docker(&["network", "rm", id]);
            }
        }
    }
}

/// A CLI process left running (`debug logs -f`), killed when dropped; its stdout lines arrive on `lines`.
struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follower {
    fn start(socket: &Path, args: &[&str]) -> Follower {
        let mut child = Command::new(env!("CARGO_BIN_EXE_swarm"))
            .arg("-H")
            .arg(socket)
            .args(args)
            .env_remove("SWARM_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run swarm");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines }
    }

    /// Waits (up to `limit`) for a line equal to `want`; returns the lines seen until then.
    fn wait_line(&mut self, want: &str, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line == want;
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(e) => panic!(
                    "no line {want:?} from the follower within {limit:?} ({e}); seen {seen:?}; exited: {:?}",
                    self.child.try_wait()
                ),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ----- stories -----

#[test]
fn a_task_moved_away_while_its_node_was_down_is_stopped_there_when_the_node_comes_back() {
    let mut c = small_cluster();
    let scratch = Scratch::new();
    let (m1, w1) = (c.id("m1"), c.id("w1"));
    let id = run_on(&c, "m1", "w1", &["sh", "-c", &scratch.pid_script()]);
    wait_state(&c, "m1", &id, "running", Duration::from_secs(10));
    let old = wait_until("the task on w1 wrote its pid", Duration::from_secs(5), || {
        scratch.pid_of(&w1)
    });

    // The worker's daemon dies; its task, in a session of its own, keeps running.
    c.kill("w1");
    assert!(alive(old), "the process task {old} died with its daemon");
    c.swarm("m1", &["debug", "move", &id, "m1"]).ok();
    let t = wait_state(&c, "m1", &id, "running", Duration::from_secs(10));
    assert_eq!(t["node_id"], m1.as_str(), "{t}");
    let new = wait_until("the task on m1 wrote its pid", Duration::from_secs(5), || {
        scratch.pid_of(&m1)
    });
    assert_ne!(new, old);
    assert!(
        alive(old),
        "nothing should have stopped the task on w1 while w1 was down"
    );

    // The worker comes back: the task is no longer its, so it stops the old process.
    c.restart("w1");
    c.wait_all_ready();
    let came_back = Instant::now();
    wait_until(
        &format!("w1 stops its old process {old} of task {id}"),
        Duration::from_secs(20),
        || {
            if alive(old) {
                Err(format!(
                    "/proc/{old}/stat: {:?}",
                    std::fs::read_to_string(format!("/proc/{old}/stat"))
                ))
            } else {
                Ok(())
            }
        },
    );
    eprintln!(
        "the old process was gone {:?} after w1 was Ready again",
        came_back.elapsed()
    );
    let (state, t) = state_of(&c, "m1", &id).expect("the task is listed");
    assert_eq!(state, "running", "{t}");
    assert_eq!(t["node_id"], m1.as_str(), "{t}");
    assert!(alive(new), "the task on m1 should still run");
    assert_eq!(scratch.starts(), 2, "one start on w1, one on m1");
}

#[test]
fn a_task_keeps_running_through_a_leader_failover_and_its_later_status_reaches_the_new_leader() {
    let mut c = Cluster::new();
    c.init("m1");
    c.join_manager("m2");
    c.join_manager("m3");
    let w1 = c.join_worker("w1");
    c.wait_all_ready();
    let scratch = Scratch::new();
    let id = run_on(&c, "m1", "w1", &["sh", "-c", &scratch.pid_script()]);
    wait_state(&c, "m1", &id, "running", Duration::from_secs(10));
    let pid = wait_until("the task wrote its pid", Duration::from_secs(5), || scratch.pid_of(&w1));

    let leader = c.leader();
    c.kill(&leader);
    let survivors: Vec<&str> = ["m1", "m2", "m3"].into_iter().filter(|m| *m != leader).collect();
    let new_leader = c.wait_leader_among(&survivors);
    eprintln!("killed the leader {leader}; {new_leader} leads now");

    // The task was neither stopped nor started again.
    let (state, t) = state_of(&c, &new_leader, &id).expect("the task is listed");
    assert_eq!(state, "running", "{t}");
    assert!(alive(pid), "the task's process {pid} died in the failover");
    assert_eq!(scratch.starts(), 1, "the task started again");

    // A change made through the new leader reaches the worker, and its report comes back.
    let asked = Instant::now();
    c.swarm(&new_leader, &["debug", "desire", &id, "shutdown"]).ok();
    let t = wait_state(&c, &new_leader, &id, "shutdown", Duration::from_secs(20));
    eprintln!(
        "shutdown reported to the new leader {:?} after it was asked",
        asked.elapsed()
    );
    assert_eq!(t["node_id"], w1.as_str(), "{t}");
    wait_until("the task's process is gone", Duration::from_secs(10), || {
        if alive(pid) {
            Err(format!("{pid} still runs"))
        } else {
            Ok(())
        }
    });
    assert_eq!(scratch.starts(), 1, "the task started again");
}

#[test]
fn a_docker_task_runs_its_removal_is_reported_failed_and_a_missing_image_is_rejected() {
    let version = match docker_ready() {
        Ok(v) => v.clone(),
        Err(why) => {
            eprintln!("skipping the docker end-to-end story: {why}");
            return;
        }
    };
    let c = small_cluster();
    let (m1, w1) = (c.id("m1"), c.id("w1"));
    let _cleanup = Containers {
        node_ids: vec![m1.clone(), w1.clone()],
    };
    wait_until("w1 offers the docker driver", Duration::from_secs(10), || {
        let n = c.inspect("m1", &w1);
        let drivers = &n["description"]["drivers"];
        match drivers.as_array() {
            Some(d) if d.iter().any(|d| d == "docker") => Ok(()),
            _ => Err(format!("drivers {drivers}")),
        }
    });
    eprintln!("docker engine {version}");

    let script = r#"trap "exit 0" TERM; while true; do sleep 1; done"#;
    let run = c
        .swarm(
            "m1",
            &[
                "debug",
                "run",
                "--node",
                "w1",
                "--driver",
                "docker",
                "--image",
                IMAGE,
                "--grace-ms",
                "2000",
                "--",
                "sh",
                "-c",
                script,
            ],
        )
        .ok();
    let id = run.stdout.trim().to_string();
    let t = wait_state(&c, "m1", &id, "running", Duration::from_secs(30));
    assert_eq!(t["node_id"], w1.as_str(), "{t}");
    let containers = containers_of(&w1, &[format!("io.swarm.task.id={id}")]);
    let [container] = containers.as_slice() else {
        panic!("expected one container of task {id} on w1, found {containers:?}")
    };
    let state = docker(&["inspect", "--format", "{{.State.Status}}", container]);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "running");

    // The container disappears behind the agent's back.
    let removed = docker(&["rm", "-f", container]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    let gone = Instant::now();
    let t = wait_state(&c, "m1", &id, "failed", Duration::from_secs(10));
    let took = gone.elapsed();
    eprintln!("`docker rm -f` of a running task's container was reported failed after {took:?}");
    assert!(
        took <= Duration::from_secs(2),
        "failure reported after {took:?}; task {t}"
    );

    // An image that is nowhere: rejected, naming the image and the node.
    let missing = "swarm-test/no-such-image:404";
    let run = c
        .swarm(
            "m1",
            &[
                "debug", "run", "--node", "w1", "--driver", "docker", "--image", missing, "--", "true",
            ],
        )
        .ok();
    let id = run.stdout.trim().to_string();
    let t = wait_state(&c, "m1", &id, "rejected", Duration::from_secs(30));
    let err = t["status"]["err"].as_str().unwrap_or_default();
    assert!(err.contains(missing), "the error should name the image: {t}");
    assert!(err.contains(&w1), "the error should name the node: {t}");
    assert!(
        containers_of(&w1, &[format!("io.swarm.task.id={id}")]).is_empty(),
        "a rejected task leaves no container"
    );
}

#[test]
fn logs_tail_gives_the_last_line_and_follow_streams_a_line_written_after_the_request() {
    let c = small_cluster();
    let scratch = Scratch::new();
    let go = scratch.path("go");
    let script = format!(
        "echo one; echo two; echo three; while [ ! -e {go} ]; do sleep 0.05; done; echo after-the-request; \
         echo $$ > {pid}; exec sleep 600",
        go = go.display(),
        pid = scratch.path("task.pid").display()
    );
    let id = run_on(&c, "m1", "w1", &["sh", "-c", &script]);
    wait_state(&c, "m1", &id, "running", Duration::from_secs(10));
    wait_until("the task's first lines are readable", Duration::from_secs(10), || {
        let logs = c.swarm("m1", &["debug", "logs", &id]).ok().stdout;
        if logs == "one\ntwo\nthree\n" {
            Ok(())
        } else {
            Err(logs)
        }
    });
    let tail = c.swarm("m1", &["debug", "logs", "--tail", "1", &id]).ok();
    assert_eq!(tail.stdout, "three\n", "{}", tail.show());

    let mut follower = Follower::start(&socket_of("m1"), &["debug", "logs", "-f", &id]);
    // The request is live once it has delivered what was there already.
    let seen = follower.wait_line("three", Duration::from_secs(10));
    assert_eq!(seen, ["one", "two", "three"]);
    std::fs::write(&go, "").expect("write the go file");
    let written = Instant::now();
    follower.wait_line("after-the-request", Duration::from_secs(10));
    eprintln!("a line written after the request arrived {:?} later", written.elapsed());
}

#[test]
fn a_node_describes_its_drivers_and_engine_version() {
    let c = small_cluster();
    let docker = engine_version();
    if let Err(why) = docker {
        eprintln!("no docker engine ({why}): only the process driver is checked");
    }
    for name in ["m1", "w1"] {
        let id = c.id(name);
        let n = wait_until(
            &format!("{name} describes its drivers"),
            Duration::from_secs(10),
            || {
                let n = c.inspect("m1", &id);
                let drivers: Vec<String> = n["description"]["drivers"]
                    .as_array()
                    .map(|d| d.iter().filter_map(|d| d.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                let docker_ok = docker.is_err() || drivers.iter().any(|d| d == "docker");
                if drivers.iter().any(|d| d == "process") && docker_ok {
                    Ok(n)
                } else {
                    Err(format!("{n:#}"))
                }
            },
        );
        match docker {
            Ok(version) => assert_eq!(n["description"]["engine_version"], version.as_str(), "{n:#}"),
            Err(_) => assert!(n["description"]["engine_version"].is_null(), "{n:#}"),
        }
    }
}

#[test]
fn a_docker_stack_finds_its_services_by_name_and_a_removed_container_is_replaced() {
    if let Err(why) = docker_ready() {
        eprintln!("skipping the docker stack story: {why}");
        return;
    }
    let c = small_cluster();
    let _cleanup = Containers {
        node_ids: vec![c.id("m1"), c.id("w1")],
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("docker-stack.yml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let stack = format!(
        r#"
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www"]
    deploy:
      replicas: 2
      restart_policy: {{delay: 0s}}
  probe:
    image: {IMAGE}
    command: ["sh", "-c", "until wget -q -O - http://web:8080/index.html; do sleep 0.2; done; exec sleep 600"]
  front:
    image: {IMAGE}
    command: ["sh", "-c", "mkdir -p /www && echo hello-from-front > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports:
      - {{target: 80, published: {port}, mode: host}}
"#
    );
    std::fs::write(&file, stack).expect("write stack");
    let file = file.to_str().unwrap();
    c.swarm("m1", &["apply", "-f", file, "--stack", "dns", "--yes"]).ok();
    // The probe reached web by its service name, through the stack's network and Docker's DNS.
    wait_until("the probe reached web by name", Duration::from_secs(20), || {
        let logs = c.swarm("m1", &["service", "logs", "dns_probe"]).ok().stdout;
        if logs.contains("hello-from-web") {
            Ok(())
        } else {
            Err(logs)
        }
    });
    // A host-mode published port answers on the node.
    wait_until("the published port answers", Duration::from_secs(20), || {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "2", &format!("http://127.0.0.1:{port}/index.html")])
            .output()
            .map_err(|e| e.to_string())?;
        let body = String::from_utf8_lossy(&out.stdout).to_string();
        if body.contains("hello-from-front") {
            Ok(())
        } else {
            Err(body)
        }
    });
    // `docker rm -f` of a web container: the task is reported failed and replaced.
    let victim = {
        let out = c.swarm("m1", &["debug", "tasks"]).ok();
        let tasks: Vec<Value> = serde_json::from_str(&out.stdout).expect("tasks json");
        tasks
            .into_iter()
            .find(|t| t["service"] == "dns_web" && t["status"]["state"] == "running")
            .expect("a running web task")
    };
    let filter = format!("label=io.swarm.task.id={}", victim["id"].as_str().unwrap());
    let container = String::from_utf8_lossy(&docker(&["ps", "-q", "--filter", &filter]).stdout)
        .trim()
        .to_string();
    assert!(!container.is_empty(), "no container for task {}", victim["id"]);
    assert!(docker(&["rm", "-f", &container]).status.success());
    wait_until(
        "the removed container's task is replaced",
        Duration::from_secs(20),
        || {
            let out = c.swarm("m1", &["debug", "tasks"]).ok();
            let tasks: Vec<Value> = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
            let failed = tasks
                .iter()
                .any(|t| t["id"] == victim["id"] && t["status"]["state"] == "failed");
            let running = tasks
                .iter()
                .filter(|t| {
                    t["service"] == "dns_web" && t["desired_state"] == "running" && t["status"]["state"] == "running"
                })
                .count();
            if failed && running == 2 {
                Ok(())
            } else {
                Err(format!("failed {failed}, running {running}"))
            }
        },
    );
    c.swarm("m1", &["stack", "rm", "dns"]).ok();
}
