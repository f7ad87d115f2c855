//! Rolling updates on a live cluster with the docker driver and locally built image tags: parallelism, delay and
//! both orders, a failed update paused then rolled back (by hand, or by its failure action), an unhealthy version
//! rolled back by `swarm apply` (which then fails), `stack rollback`, and an update that outlives the leader it
//! started on.
//!
//! The tags differ only in `/VERSION`; the task script exits at once when it reads `broken`, and the stack's
//! healthcheck fails when it reads `sick`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::harness::holds_for;
use crate::harness::wait_until;
use crate::harness::Cluster;
use crate::services::tasks;

const V1: &str = "swarm-test/busybox:1";
const V2: &str = "swarm-test/busybox:2";
const BROKEN: &str = "swarm-test/busybox:broken";
const SICK: &str = "swarm-test/busybox:sick";

/// Exits 3 on the broken tag; otherwise runs until SIGTERM.
const SCRIPT: &str = r#"[ "$(cat /VERSION)" = broken ] && exit 3; trap 'exit 0' TERM; while true; do sleep 0.2; done"#;

fn images() {
    for (tag, version) in [(V1, "1"), (V2, "2"), (BROKEN, "broken"), (SICK, "sick")] {
        swarm_agent::testing::ensure_busybox_image(tag, version).unwrap_or_else(|e| panic!("test image {tag}: {e}"));
    }
}

/// A docker service of `replicas` tasks of [`V1`] with these extra flags, created and converged.
fn create(c: &Cluster, manager: &str, name: &str, replicas: u32, flags: &[&str]) {
    let replicas = replicas.to_string();
    let mut args = vec![
        "service",
        "create",
        "--name",
        name,
        "--replicas",
        &replicas,
        "--restart-delay",
        "0s",
        "--stop-grace-period",
        "2s",
        "--quiet",
    ];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[V1, "sh", "-c", SCRIPT]);
    c.swarm(manager, &args).ok();
}

fn inspect(c: &Cluster, manager: &str, name: &str) -> Value {
    let out = c.swarm(manager, &["service", "inspect", name]).ok().stdout;
    let v: Value = serde_json::from_str(&out).expect("inspect JSON");
    if v.is_array() {
        v[0].clone()
    } else {
        v
    }
}

fn update_state(c: &Cluster, manager: &str, name: &str) -> String {
    inspect(c, manager, name)["UpdateStatus"]["State"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

fn image_of(t: &Value) -> &str {
    t["spec"]["image"].as_str().unwrap_or_default()
}

fn ms(t: &Value, field: &str) -> u64 {
    t[field].as_u64().unwrap_or_else(|| panic!("no {field} in {t}"))
}

/// The tasks of `service` made from `image`, by slot (the newest of each slot).
fn by_slot<'a>(all: &'a [Value], service: &str, image: &str) -> BTreeMap<u64, &'a Value> {
    let mut out: BTreeMap<u64, &Value> = BTreeMap::new();
    for t in all.iter().filter(|t| t["service"] == service && image_of(t) == image) {
        let slot = t["slot"].as_u64().expect("slot");
        if out.get(&slot).is_none_or(|o| ms(o, "created_at") < ms(t, "created_at")) {
            out.insert(slot, t);
        }
    }
    out
}

/// Running tasks of `service` with `image`.
fn running_with(all: &[Value], service: &str, image: &str) -> Vec<String> {
    all.iter()
        .filter(|t| t["service"] == service && image_of(t) == image)
        .filter(|t| t["desired_state"] == "running" && t["status"]["state"] == "running")
        .map(|t| t["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// No new task was created while `parallelism` others were still in flight: created, and not yet running for
/// `delay_ms`.
fn assert_paced(new: &BTreeMap<u64, &Value>, parallelism: usize, delay_ms: u64) {
    for (slot, k) in new {
        let created = ms(k, "created_at");
        let in_flight: Vec<u64> = new
            .iter()
            .filter(|(s, j)| *s != slot && ms(j, "created_at") <= created)
            .filter(|(_, j)| created < ms(j, "started_at") + delay_ms)
            .map(|(s, _)| *s)
            .collect();
        assert!(
            in_flight.len() < parallelism,
            "slot {slot} started while slots {in_flight:?} were in flight: {new:#?}"
        );
    }
}

#[test]
fn a_rolling_update_keeps_to_parallelism_delay_and_order() {
    images();
    let mut c = Cluster::new();
    c.init("m1");
    let flags = [
        "--update-parallelism",
        "2",
        "--update-delay",
        "1s",
        "--update-monitor",
        "1s",
    ];
    create(&c, "m1", "web", 4, &flags);

    // Stop-first, two slots at a time, a second between batches; `update` returns once it completed.
    let run = c
        .swarm("m1", &["service", "update", "--quiet", "--image", V2, "web"])
        .ok();
    assert!(
        run.elapsed >= Duration::from_secs(2),
        "a delay and a monitor period at least: {run:?}",
        run = run.show()
    );
    let status = &inspect(&c, "m1", "web")["UpdateStatus"];
    assert_eq!(status["State"], "completed", "{status}");
    assert_eq!(status["Message"], "update completed");
    let all = tasks(&c, "m1").unwrap();
    let old = by_slot(&all, "web", V1);
    let new = by_slot(&all, "web", V2);
    assert_eq!(running_with(&all, "web", V2).len(), 4);
    assert_paced(&new, 2, 1_000);
    for (slot, t) in &new {
        let stopped = ms(&old[slot]["status"], "timestamp");
        assert!(
            stopped <= ms(t, "created_at"),
            "stop-first: slot {slot}'s old task stopped at {stopped}, after its new one was made: {t}"
        );
    }

    // Start-first, one at a time: every old task stops only after its replacement runs.
    c.swarm(
        "m1",
        &[
            "service",
            "update",
            "--quiet",
            "--image",
            V1,
            "--update-order",
            "start-first",
            "--update-parallelism",
            "1",
            "--update-delay",
            "0s",
            "web",
        ],
    )
    .ok();
    let all = tasks(&c, "m1").unwrap();
    let old = by_slot(&all, "web", V2);
    let new = by_slot(&all, "web", V1);
    assert_eq!(running_with(&all, "web", V1).len(), 4);
    assert_paced(&new, 1, 0);
    for (slot, t) in &new {
        let stopped = ms(&old[slot]["status"], "timestamp");
        assert!(
            ms(t, "started_at") <= stopped,
            "start-first: slot {slot}'s old task stopped at {stopped}, before its new one ran: {t}"
        );
    }
}

#[test]
fn a_failing_update_pauses_and_is_rolled_back_by_hand_or_by_its_failure_action() {
    images();
    let mut c = Cluster::new();
    c.init("m1");
    create(&c, "m1", "api", 3, &["--update-monitor", "2s"]);
    let before = running_with(&tasks(&c, "m1").unwrap(), "api", V1);

    // The broken tag exits at once (after a moment seen running, which may let the next slot go too): the update
    // pauses, and `update` fails saying so.
    let failed = c.swarm("m1", &["service", "update", "--quiet", "--image", BROKEN, "api"]);
    failed.fails_with("api: paused: update paused due to failure or early termination of task");
    assert_eq!(update_state(&c, "m1", "api"), "paused");
    let untouched = running_with(&tasks(&c, "m1").unwrap(), "api", V1);
    assert!(!untouched.is_empty() && untouched.len() < 3, "{untouched:?}");
    holds_for("no other slot is updated while paused", Duration::from_secs(3), || {
        let now = running_with(&tasks(&c, "m1")?, "api", V1);
        if now == untouched {
            Ok(())
        } else {
            Err(format!("{untouched:?} became {now:?}"))
        }
    });
    let ps = c.swarm("m1", &["service", "ps", "api"]).ok();
    assert!(ps.stderr.contains("api: paused"), "{}", ps.show());

    // `service rollback` goes back to the previous spec; the two untouched tasks keep running.
    c.swarm("m1", &["service", "rollback", "--quiet", "api"]).ok();
    assert_eq!(update_state(&c, "m1", "api"), "rollback_completed");
    let all = tasks(&c, "m1").unwrap();
    let running = running_with(&all, "api", V1);
    assert_eq!(running.len(), 3);
    assert!(
        untouched.iter().all(|id| before.contains(id) && running.contains(id)),
        "the slots never updated were not restarted: {untouched:?} → {running:?}"
    );
    let spec = &inspect(&c, "m1", "api")["Spec"];
    assert_eq!(spec["task"]["image"], V1, "{spec}");

    // With failure action rollback the cluster rolls back by itself, and the update is reported as failed.
    let failed = c.swarm(
        "m1",
        &[
            "service",
            "update",
            "--quiet",
            "--image",
            BROKEN,
            "--update-failure-action",
            "rollback",
            "api",
        ],
    );
    failed.fails_with("update rolled back due to failure or early termination of task");
    wait_until(
        "the rollback completes",
        Duration::from_secs(30),
        || match update_state(&c, "m1", "api").as_str() {
            "rollback_completed" => Ok(()),
            other => Err(other.to_string()),
        },
    );
    let all = tasks(&c, "m1").unwrap();
    assert_eq!(running_with(&all, "api", V1).len(), 3);
    assert!(running_with(&all, "api", BROKEN).is_empty());
}

#[test]
fn an_unhealthy_version_is_rolled_back_and_apply_fails_then_stack_rollback_restores_a_revision() {
    images();
    let mut c = Cluster::new();
    c.init("m1");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker-stack.yml");
    let write = |image: &str, replicas: u32| {
        let text = format!(
            r#"services:
  web:
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    stop_grace_period: 2s
    healthcheck:
      test: ["CMD-SHELL", "[ \"$$(cat /VERSION)\" != sick ]"]
      interval: 500ms
      timeout: 2s
      retries: 1
    deploy:
      replicas: {replicas}
      restart_policy: {{delay: 0s}}
      update_config: {{parallelism: 1, monitor: 3s, failure_action: rollback}}
      rollback_config: {{parallelism: 0, monitor: 1s}}
"#
        );
        std::fs::write(&file, text).unwrap();
    };
    let apply = |extra: &[&str]| {
        let mut args = vec![
            "apply",
            "-f",
            file.to_str().unwrap(),
            "--stack",
            "shop",
            "--yes",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        c.swarm("m1", &args)
    };
    write(V1, 2);
    apply(&[]).ok();
    write(V2, 2);
    apply(&[]).ok();
    assert_eq!(update_state(&c, "m1", "shop_web"), "completed");

    // The sick tag never turns healthy: the task fails within the monitor, the update rolls back, apply fails.
    write(SICK, 2);
    let failed = apply(&[]);
    let failed = failed.fails_with("shop_web: rollback_");
    assert!(
        failed
            .stderr
            .contains("update rolled back due to failure or early termination of task"),
        "{}",
        failed.show()
    );
    assert!(failed.stderr.contains("did not converge"), "{}", failed.show());
    wait_until(
        "the rollback completes",
        Duration::from_secs(30),
        || match update_state(&c, "m1", "shop_web").as_str() {
            "rollback_completed" => Ok(()),
            other => Err(other.to_string()),
        },
    );
    assert_eq!(running_with(&tasks(&c, "m1").unwrap(), "shop_web", V2).len(), 2);
    let services = c.swarm("m1", &["stack", "services", "shop"]).ok();
    assert!(
        services.stderr.contains("shop_web: rollback_completed"),
        "{}",
        services.show()
    );

    // `stack rollback --to 1` applies revision 1 again as a new revision.
    let back = c
        .swarm("m1", &["stack", "rollback", "shop", "--to", "1", "--quiet"])
        .ok();
    assert!(
        back.stdout.contains("Rolled back stack shop: revision"),
        "{}",
        back.show()
    );
    assert_eq!(running_with(&tasks(&c, "m1").unwrap(), "shop_web", V1).len(), 2);
    let history = c.swarm("m1", &["stack", "history", "shop"]).ok();
    assert!(history.stdout.contains("rollback to revision 1"), "{}", history.show());
    c.swarm("m1", &["stack", "rollback", "shop", "--to", "9"])
        .fails_with("stack shop has no revision 9");
}

#[test]
fn an_update_interrupted_by_the_leader_s_death_continues_on_the_next_leader() {
    images();
    let mut c = Cluster::new();
    c.init("m1");
    c.join_manager("m2");
    c.join_manager("m3");
    c.wait_all_ready();
    // The tasks stay off m1, the leader that dies.
    let flags = [
        "--constraint",
        "node.hostname!=m1",
        "--update-delay",
        "1s",
        "--update-monitor",
        "1s",
    ];
    create(&c, "m1", "web", 4, &flags);
    c.swarm("m1", &["service", "update", "--detach", "--image", V2, "web"])
        .ok();
    wait_until("the first slot runs the new image", Duration::from_secs(30), || {
        let all = tasks(&c, "m1")?;
        match running_with(&all, "web", V2).len() {
            0 => Err("none yet".to_string()),
            _ => Ok(()),
        }
    });
    c.kill("m1");
    let leader = c.wait_leader_among(&["m2", "m3"]);
    wait_until(
        "the update completes on the new leader",
        Duration::from_secs(60),
        || match update_state(&c, &leader, "web").as_str() {
            "completed" => Ok(()),
            other => Err(other.to_string()),
        },
    );
    let all = tasks(&c, &leader).unwrap();
    assert_eq!(running_with(&all, "web", V2).len(), 4);
    let old = by_slot(&all, "web", V1);
    for (slot, t) in by_slot(&all, "web", V2) {
        let stopped = ms(&old[&slot]["status"], "timestamp");
        assert!(stopped <= ms(t, "created_at"), "slot {slot} ran two tasks at once: {t}");
    }
}
