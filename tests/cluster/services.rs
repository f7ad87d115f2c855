//! Services on a live cluster: a stack applied on 3 managers and 2 workers converges, and the cluster heals when a
//! task dies, a worker dies, a node is drained, and the leader dies during a scale-up.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::harness::holds_for;
use crate::harness::wait_until;
use crate::harness::Cluster;

const STACK: &str = r#"
services:
  web:
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    x-swarm: {driver: process}
    stop_grace_period: 2s
    deploy:
      replicas: REPLICAS
      restart_policy: {delay: 0s}
  clock:
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    x-swarm: {driver: process}
    stop_grace_period: 2s
    deploy:
      mode: global
"#;

/// Every task, as `swarm debug tasks` prints them (the store's own JSON).
pub fn tasks(c: &Cluster, manager: &str) -> Result<Vec<Value>, String> {
    let run = c.swarm(manager, &["debug", "tasks"]);
    if run.code != 0 {
        return Err(run.show());
    }
    serde_json::from_str(&run.stdout).map_err(|e| format!("{e}: {}", run.stdout))
}

/// Tasks of `service` that should run and do, by node id.
pub fn running(tasks: &[Value], service: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for t in tasks.iter().filter(|t| t["service"] == service) {
        if t["desired_state"] == "running" && t["status"]["state"] == "running" {
            *out.entry(t["node_id"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    out
}

/// Waits until `service` runs exactly `n` tasks, each in its own slot, none on `not_on`.
pub fn wait_running(
    c: &Cluster,
    manager: &str,
    service: &str,
    n: usize,
    not_on: &[String],
    limit: Duration,
) -> Vec<Value> {
    wait_until(&format!("{service} runs {n} tasks"), limit, || {
        let all = tasks(c, manager)?;
        let by_node = running(&all, service);
        let total: usize = by_node.values().sum();
        if total != n || not_on.iter().any(|id| by_node.contains_key(id)) {
            // What the other live tasks of the service are doing, for a post-mortem.
            let others: Vec<String> = all
                .iter()
                .filter(|t| t["service"] == service && t["desired_state"] == "running")
                .filter(|t| t["status"]["state"] != "running")
                .map(|t| {
                    format!(
                        "slot {} on {} {} {}",
                        t["slot"], t["node_id"], t["status"]["state"], t["status"]["err"]
                    )
                })
                .collect();
            return Err(format!("running by node {by_node:?}; not running: {others:?}"));
        }
        check_one_per_slot(&all)?;
        Ok(all)
    })
}

/// Never two running tasks that should run in one slot.
pub fn check_one_per_slot(all: &[Value]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for t in all {
        if t["desired_state"] == "running" && t["status"]["state"] == "running" && t["slot"].is_u64() {
            let key = (t["service"].to_string(), t["slot"].as_u64());
            if !seen.insert(key.clone()) {
                return Err(format!("two tasks run in slot {key:?}"));
            }
        }
    }
    Ok(())
}

/// The process of a process-driver task: the one whose environment names the task.
fn pid_of_task(task_id: &str) -> Option<u32> {
    let wanted = format!("SWARM_TASK_ID={task_id}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_string_lossy().parse().ok()?;
        let environ = std::fs::read(entry.path().join("environ")).ok()?;
        environ
            .split(|b| *b == 0)
            .any(|var| var == wanted.as_bytes())
            .then_some(pid)
    })
}

fn write_stack(dir: &std::path::Path, replicas: u32) -> String {
    let path = dir.join("docker-stack.yml");
    std::fs::write(&path, STACK.replace("REPLICAS", &replicas.to_string())).expect("write stack");
    path.display().to_string()
}

#[test]
fn a_stack_converges_on_five_nodes_and_heals_from_task_node_and_leader_loss() {
    let mut c = Cluster::new();
    c.init("m1");
    c.join_manager("m2");
    c.join_manager("m3");
    let w1 = c.join_worker("w1");
    let w2 = c.join_worker("w2");
    c.wait_all_ready();
    c.write("m1", "update --dispatcher-heartbeat 200ms --heartbeat-grace 3");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_stack(dir.path(), 4);

    // Applied through a follower: the stack converges, and `apply` says so before it exits.
    let applied = c.swarm("m2", &["apply", "-f", &file, "--stack", "app", "--yes"]).ok();
    assert!(
        applied.stdout.contains("Applied stack app: revision 1"),
        "{}",
        applied.show()
    );
    let all = wait_running(&c, "m1", "app_web", 4, &[], Duration::from_secs(20));
    assert_eq!(
        running(&all, "app_clock").len(),
        5,
        "the global service runs on every node"
    );

    // A task killed behind the agent's back is replaced (restart delay 0).
    let victim = all
        .iter()
        .find(|t| t["service"] == "app_web" && t["status"]["state"] == "running")
        .expect("a running web task")
        .clone();
    let pid = pid_of_task(victim["id"].as_str().unwrap()).expect("the task's process");
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    wait_until(
        "the killed task is seen failed and replaced",
        Duration::from_secs(10),
        || {
            let all = tasks(&c, "m1")?;
            let failed = all
                .iter()
                .any(|t| t["id"] == victim["id"] && t["status"]["state"] == "failed");
            let replaced = running(&all, "app_web").values().sum::<usize>() == 4;
            if failed && replaced {
                Ok(())
            } else {
                Err(format!("failed {failed}, running {:?}", running(&all, "app_web")))
            }
        },
    );

    // A worker's daemon dies: its web tasks move; when it returns it stops them.
    let on_w1: Vec<String> = tasks(&c, "m1")
        .unwrap()
        .iter()
        .filter(|t| t["service"] == "app_web" && t["node_id"] == w1.as_str() && t["desired_state"] == "running")
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    c.kill("w1");
    wait_running(
        &c,
        "m1",
        "app_web",
        4,
        std::slice::from_ref(&w1),
        Duration::from_secs(15),
    );
    c.restart("w1");
    wait_until("w1 stops the tasks that moved away", Duration::from_secs(15), || {
        let all = tasks(&c, "m1")?;
        let still: Vec<&Value> = all
            .iter()
            .filter(|t| on_w1.iter().any(|id| t["id"] == id.as_str()))
            .filter(|t| t["status"]["state"] == "running")
            .collect();
        if still.is_empty() {
            Ok(())
        } else {
            Err(format!("{still:#?}"))
        }
    });

    // Pause keeps the tasks; drain moves them.
    let before = running(&tasks(&c, "m1").unwrap(), "app_web");
    c.write("m1", "node update --availability pause w2");
    holds_for("a paused node keeps its tasks", Duration::from_secs(1), || {
        let now = running(&tasks(&c, "m1")?, "app_web");
        if now == before {
            Ok(())
        } else {
            Err(format!("{before:?} became {now:?}"))
        }
    });
    c.write("m1", "node update --availability drain w2");
    wait_running(
        &c,
        "m1",
        "app_web",
        4,
        std::slice::from_ref(&w2),
        Duration::from_secs(15),
    );
    c.write("m1", "node update --availability active w2");

    // The leader dies during a scale-up: the new leader finishes it with exactly 8 tasks, one per slot.
    let file = write_stack(dir.path(), 8);
    let leader = c.leader();
    let other = ["m1", "m2", "m3"]
        .into_iter()
        .find(|m| *m != leader)
        .unwrap()
        .to_string();
    let dead = c.id(&leader);
    c.swarm(&other, &["apply", "-f", &file, "--stack", "app", "--yes", "--detach"])
        .ok();
    c.kill(&leader);
    let survivors: Vec<&str> = ["m1", "m2", "m3"].into_iter().filter(|m| *m != leader).collect();
    c.wait_leader_among(&survivors);
    // The dead leader's own tasks count as running until it is seen Down: wait for 8 elsewhere.
    wait_running(
        &c,
        &other,
        "app_web",
        8,
        std::slice::from_ref(&dead),
        Duration::from_secs(20),
    );
    holds_for("the service stays at 8 tasks", Duration::from_secs(1), || {
        let all = tasks(&c, &other)?;
        check_one_per_slot(&all)?;
        let by_node = running(&all, "app_web");
        match by_node
            .iter()
            .filter(|(node, _)| **node != dead)
            .map(|(_, n)| n)
            .sum::<usize>()
        {
            8 => Ok(()),
            n => Err(format!("{n} tasks: {by_node:?}")),
        }
    });
}
