//! `swarm plan` and `swarm apply` against a live cluster: placement in the plan, exit codes, drift, stale saved
//! plans, `--prune`, an unplaceable service that says why, and the stack's history.

use std::time::Duration;

use crate::harness::wait_until;
use crate::harness::Cluster;
use crate::services::tasks;
use crate::services::wait_running;

fn stack(replicas: u32, with_extra: bool) -> String {
    let mut text = format!(
        r#"
services:
  web:
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    x-swarm: {{driver: process}}
    stop_grace_period: 2s
    deploy:
      replicas: {replicas}
"#
    );
    if with_extra {
        text.push_str(
            r#"  extra:
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    x-swarm: {driver: process}
    stop_grace_period: 2s
"#,
        );
    }
    text
}

#[test]
fn plan_and_apply_against_a_live_cluster() {
    let mut c = Cluster::new();
    c.init("m1");
    c.wait_all_ready();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("docker-stack.yml");
    let file = file.to_str().unwrap().to_string();
    let write = |text: &str| std::fs::write(&file, text).expect("write stack");
    let args = |extra: &[&str]| {
        let mut a = vec!["-f", file.as_str(), "--stack", "shop"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<String>>()
    };
    let swarm = |cmd: &str, extra: &[&str]| {
        let mut a = vec![cmd.to_string()];
        a.extend(args(extra));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        c.swarm("m1", &a)
    };

    // A new stack: the plan says where the tasks go, and --detailed-exitcode says there are changes.
    write(&stack(2, true));
    let plan = swarm("plan", &["--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.show());
    assert!(plan.stdout.contains("+ service.web (create)"), "{}", plan.show());
    assert!(plan.stdout.contains("placement: 2 on m1"), "{}", plan.show());

    // Apply waits until converged; the same file again changes nothing.
    swarm("apply", &["--yes"]).ok();
    wait_running(&c, "m1", "shop_web", 2, &[], Duration::from_secs(10));
    let again = swarm("plan", &["--detailed-exitcode"]);
    assert_eq!(again.code, 0, "{}", again.show());
    assert!(
        again
            .stdout
            .contains("No changes. Stack shop is up to date (revision 1)."),
        "{}",
        again.show()
    );
    let unchanged = swarm("apply", &["--yes"]).ok();
    assert!(
        unchanged.stdout.contains("Stack shop is unchanged (revision 1)."),
        "{}",
        unchanged.show()
    );

    // A change made outside the stack shows as drift, and the next apply reverts it.
    let web: serde_json::Value =
        serde_json::from_str(&c.swarm("m1", &["service", "inspect", "shop_web"]).ok().stdout).expect("inspect json");
    let web = if web.is_array() { web[0].clone() } else { web };
    assert!(web.to_string().contains("shop_web"), "{web}");
    c.swarm("m1", &["service", "scale", "shop_web=3", "--detach"]).ok();
    let drift = swarm("plan", &[]).ok();
    assert!(drift.stdout.contains("Drift"), "{}", drift.show());
    assert!(drift.stdout.contains("service.web"), "{}", drift.show());

    // A saved plan is refused once the stack moved past the revision it was made at.
    swarm("plan", &["--out", dir.path().join("plan.json").to_str().unwrap()]).ok();
    write(&stack(1, true));
    swarm("apply", &["--yes", "--detach"]).ok();
    let stale = c.swarm(
        "m1",
        &["apply", dir.path().join("plan.json").to_str().unwrap(), "--yes"],
    );
    let stale =
        stale.fails_with("plan is stale: stack shop changed at revision 2 after the plan was made at revision 1");
    assert!(stale.stderr.contains("run `swarm plan` again"), "{}", stale.show());

    // Without --prune a service left out of the file stays; with it, it goes.
    write(&stack(1, false));
    swarm("apply", &["--yes"]).ok();
    assert!(tasks(&c, "m1").unwrap().iter().any(|t| t["service"] == "shop_extra"));
    swarm("apply", &["--yes", "--prune"]).ok();
    wait_until("the pruned service's tasks are gone", Duration::from_secs(10), || {
        let all = tasks(&c, "m1")?;
        match all.iter().filter(|t| t["service"] == "shop_extra").count() {
            0 => Ok(()),
            n => Err(format!("{n} tasks of shop_extra left")),
        }
    });

    // A service no node can take: the plan and the task both say why.
    let mut text = stack(1, false);
    text.push_str(
        r#"  picky:
    command: ["sleep", "600"]
    x-swarm: {driver: process}
    deploy:
      placement:
        constraints: [node.labels.zone==east]
"#,
    );
    write(&text);
    let why = "no suitable node (1 node: 1 not matching constraint node.labels.zone==east)";
    let plan = swarm("plan", &[]).ok();
    assert!(
        plan.stdout.contains(&format!("! 1 task cannot be placed: {why}")),
        "{}",
        plan.show()
    );
    swarm("apply", &["--yes", "--detach"]).ok();
    wait_until("the pending task says why", Duration::from_secs(10), || {
        let all = tasks(&c, "m1")?;
        let t = all.iter().find(|t| t["service"] == "shop_picky").ok_or("no task yet")?;
        if t["status"]["state"] == "pending" && t["status"]["err"] == why {
            Ok(())
        } else {
            Err(t.to_string())
        }
    });
    // The label makes it placeable.
    c.write("m1", "node update --label-add zone=east m1");
    wait_running(&c, "m1", "shop_picky", 1, &[], Duration::from_secs(10));

    // Every apply that changed something is in the history, in order.
    let history = c.swarm("m1", &["stack", "history", "shop"]).ok();
    for revision in 1..=4 {
        assert!(
            history
                .stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&revision.to_string())),
            "revision {revision} missing\n{}",
            history.show()
        );
    }
}
