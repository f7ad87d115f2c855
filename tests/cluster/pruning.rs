//! Workers that stay Down: kept by default, removed (and refused when they return) with `--node-prune-after`.

use std::time::Duration;

use serde_json::json;

use crate::harness::holds_for;
use crate::harness::wait_until;
use crate::harness::Cluster;
use crate::harness::Row;

/// `id`'s row in `node ls` on `manager`, if listed.
fn row(c: &Cluster, manager: &str, id: &str) -> Result<Option<Row>, String> {
    Ok(c.try_node_ls(manager)?.into_iter().find(|r| r.id == id))
}

/// Starts m1 and a worker w1 with a short heartbeat (so Down comes fast), once w1 beats at that period; returns
/// w1's id.
fn manager_and_worker() -> (Cluster, String) {
    let mut c = Cluster::new();
    c.init("m1");
    let w1 = c.join_worker("w1");
    c.wait_all_ready();
    c.write("m1", "update --dispatcher-heartbeat 100ms --heartbeat-grace 3");
    c.wait_steady_ready("m1", "w1", Duration::from_millis(1_200));
    (c, w1)
}

#[test]
fn a_down_worker_stays_listed_when_pruning_is_off_as_by_default() {
    let (mut c, w1) = manager_and_worker();
    c.kill("w1");
    wait_until("w1 shows Down", Duration::from_secs(10), || match row(&c, "m1", &w1)? {
        Some(r) if r.status == "Down" => Ok(()),
        other => Err(format!("{other:#?}")),
    });
    holds_for(
        "w1 stays listed as Down with pruning off",
        Duration::from_secs(3),
        || match row(&c, "m1", &w1)? {
            Some(r) if r.status == "Down" => Ok(()),
            other => Err(format!("{other:#?}")),
        },
    );
}

#[test]
fn with_node_prune_after_a_down_worker_is_removed_and_refused_when_it_comes_back() {
    let (mut c, w1) = manager_and_worker();
    c.write("m1", "update --node-prune-after 1s");
    let description = c.inspect("m1", "w1")["description"].clone();
    let heartbeat = json!({ "description": description }).to_string();
    // While a member, w1's certificate gets heartbeat answers.
    let (code, body) = c
        .post_as("w1", "m1", "/v1/heartbeat", &heartbeat)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, 200, "a member's heartbeat: {body}");

    c.kill("w1");
    wait_until("w1 shows Down", Duration::from_secs(10), || match row(&c, "m1", &w1)? {
        Some(r) if r.status == "Down" => Ok(()),
        other => Err(format!("{other:#?}")),
    });
    wait_until("w1 is pruned from `node ls`", Duration::from_secs(10), || {
        match row(&c, "m1", &w1)? {
            None => Ok(()),
            Some(r) => Err(format!("{r:#?}")),
        }
    });
    c.run("m1", &format!("node inspect {w1}"))
        .fails_with(&format!("node {w1} not found"));

    // The pruned worker's daemon comes back with its old identity: its heartbeats are refused.
    c.restart("w1");
    let (code, body) = c
        .post_as("w1", "m1", "/v1/heartbeat", &heartbeat)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        code >= 400 && body.contains(&format!("node {w1} was removed from the swarm")),
        "a pruned node's heartbeat got {code}: {body}"
    );
    // Its daemon's own heartbeats (every second until answered) do not bring it back.
    holds_for(
        "w1 stays out of `node ls` after its daemon restarted",
        Duration::from_secs(3),
        || {
            let rows = c.try_node_ls("m1")?;
            if rows.len() == 1 && rows.iter().all(|r| r.id != w1 && r.hostname != "w1") {
                Ok(())
            } else {
                Err(format!("{rows:#?}"))
            }
        },
    );
}
