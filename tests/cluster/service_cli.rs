//! Docker's service commands on a live cluster: create waits until converged, update replaces the tasks one slot
//! at a time, scale, ps with history rows, inspect with the previous spec, logs, rm.

use std::time::Duration;

use serde_json::Value;

use crate::harness::wait_until;
use crate::harness::Cluster;
use crate::services::tasks;
use crate::services::wait_running;

#[test]
fn a_service_is_created_updated_scaled_inspected_and_removed_as_with_docker() {
    let mut c = Cluster::new();
    c.init("m1");
    c.join_worker("w1");
    c.wait_all_ready();

    let created = c
        .swarm(
            "m1",
            &[
                "service",
                "create",
                "--driver",
                "process",
                "--name",
                "api",
                "--replicas",
                "2",
                "--env",
                "GREETING=hello",
                "--restart-delay",
                "0s",
                "--stop-grace-period",
                "2s",
                "--",
                "sh",
                "-c",
                "trap 'exit 0' TERM; echo $GREETING from $SWARM_TASK_SLOT; while true; do sleep 1; done",
            ],
        )
        .ok();
    assert!(
        created.stderr.contains("verify: Service api converged"),
        "{}",
        created.show()
    );
    wait_running(&c, "m1", "api", 2, &[], Duration::from_secs(5));

    let ls = c.swarm("m1", &["service", "ls"]).ok();
    let row = ls
        .stdout
        .lines()
        .find(|l| l.contains(" api "))
        .unwrap_or_else(|| panic!("{}", ls.show()));
    assert!(row.contains("replicated") && row.contains("2/2"), "{row}");

    // An update of the task template replaces both tasks, and the old ones show as history.
    let updated = c
        .swarm("m1", &["service", "update", "--env-add", "GREETING=bonjour", "api"])
        .ok();
    assert!(
        updated.stderr.contains("verify: Service api converged"),
        "{}",
        updated.show()
    );
    let all = tasks(&c, "m1").unwrap();
    let live: Vec<&Value> = all
        .iter()
        .filter(|t| t["service"] == "api" && t["desired_state"] == "running")
        .collect();
    assert_eq!(live.len(), 2);
    assert!(live.iter().all(|t| t["spec_version"] == 2), "{live:#?}");
    let ps = c.swarm("m1", &["service", "ps", "api"]).ok();
    assert!(ps.stdout.contains(r" \_ api.1"), "history rows:\n{}", ps.stdout);
    let inspect: Value = serde_json::from_str(&c.swarm("m1", &["service", "inspect", "api"]).ok().stdout).unwrap();
    let text = inspect.to_string();
    assert!(text.contains("bonjour") && text.contains("PreviousSpec"), "{text}");

    // The output of both tasks, tagged with their task names.
    wait_until("the logs show the new greeting", Duration::from_secs(10), || {
        let logs = c.swarm("m1", &["service", "logs", "api"]).ok().stdout;
        if logs.contains("bonjour from 1") && logs.contains("bonjour from 2") && logs.contains("api.1.") {
            Ok(())
        } else {
            Err(logs)
        }
    });

    c.swarm("m1", &["service", "scale", "api=4"]).ok();
    wait_running(&c, "m1", "api", 4, &[], Duration::from_secs(5));
    let refused = c.swarm(
        "m1",
        &[
            "service", "create", "--driver", "process", "--name", "api", "--", "true",
        ],
    );
    refused.fails_with("service api already exists");

    c.swarm("m1", &["service", "rm", "api"]).ok();
    wait_until("the service's tasks are gone", Duration::from_secs(10), || {
        let all = tasks(&c, "m1")?;
        match all.iter().filter(|t| t["service"] == "api").count() {
            0 => Ok(()),
            n => Err(format!("{n} left")),
        }
    });
}

#[test]
fn a_service_gets_secrets_and_configs_from_flags_and_keeps_them_from_being_removed() {
    let mut c = Cluster::new();
    c.init("m1");
    c.wait_all_ready();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    c.swarm("m1", &["secret", "create", "token", &file("token", "opensesame")])
        .ok();
    c.swarm("m1", &["config", "create", "greeting", &file("greeting", "hello")])
        .ok();
    let reader = "trap 'exit 0' TERM; echo read $(cat $SWARM_SECRETS_DIR/tok) $(cat $SWARM_CONFIGS_DIR/etc/greeting) \
                  $(stat -c %a $SWARM_SECRETS_DIR/tok); while true; do sleep 0.2; done";

    // A missing secret is refused before anything is created.
    c.swarm(
        "m1",
        &[
            "service", "create", "--driver", "process", "--name", "app", "--secret", "nope", "--", "sh", "-c", reader,
        ],
    )
    .fails_with("secret nope does not exist; create it first");
    c.swarm(
        "m1",
        &["service", "create", "--driver", "process", "--name", "app", "--detach"],
    )
    .fails_with("COMMAND");

    c.swarm(
        "m1",
        &[
            "service",
            "create",
            "--driver",
            "process",
            "--name",
            "app",
            "--stop-grace-period",
            "2s",
            "--secret",
            "source=token,target=tok,mode=0440",
            "--config",
            "source=greeting,target=/etc/greeting",
            "--",
            "sh",
            "-c",
            reader,
        ],
    )
    .ok();
    wait_until("the task read its secret and config", Duration::from_secs(20), || {
        let logs = c.swarm("m1", &["service", "logs", "app"]);
        logs.stdout
            .contains("read opensesame hello 440")
            .then_some(())
            .ok_or_else(|| logs.show())
    });

    // In use: not removable. Once the service lets go of it (an update), it is.
    c.swarm("m1", &["secret", "rm", "token"]).fails_with("app");
    c.swarm(
        "m1",
        &[
            "service",
            "update",
            "--secret-rm",
            "token",
            "--config-rm",
            "greeting",
            "--detach",
            "app",
        ],
    )
    .ok();
    wait_until("the secret can be removed", Duration::from_secs(20), || {
        let rm = c.swarm("m1", &["secret", "rm", "token"]);
        (rm.code == 0).then_some(()).ok_or_else(|| rm.show())
    });
    c.swarm("m1", &["service", "update", "--secret-add", "token", "app"])
        .fails_with("secret token does not exist");
    let inspect = c.swarm("m1", &["service", "inspect", "app"]).ok();
    let inspect: Value = serde_json::from_str(&inspect.stdout).expect("inspect JSON");
    let task = &inspect[0]["Spec"]["task"];
    assert_eq!(
        (&task["secrets"], &task["configs"]),
        (&Value::Array(vec![]), &Value::Array(vec![])),
        "{inspect:#}"
    );
    assert_eq!(
        inspect[0]["PreviousSpec"]["task"]["secrets"][0]["target"], "/run/secrets/tok",
        "{inspect:#}"
    );
}
