//! Process tests of the agents: tasks assigned to a node run there, report their status back through the leader,
//! survive the agent's restart, and show their output — with real daemons on loopback and the process driver.

#[path = "cluster/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::Duration;
use std::time::Instant;

use harness::wait_until;
use harness::Cluster;
use serde_json::Value;

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
