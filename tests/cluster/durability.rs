//! What the cluster stores survives restarts of every manager.

use std::time::Duration;

use serde_json::json;
use serde_json::Value;

use crate::harness::wait_until;
use crate::harness::Cluster;

/// The parts of a node record a user set or the cluster decided (not status or timestamps).
fn kept(node: &Value) -> Value {
    json!({
        "id": node["id"],
        "hostname": node["description"]["hostname"],
        "role": node["role"],
        "availability": node["availability"],
        "labels": node["labels"],
        "manager_addr": node["manager_addr"],
        "raft_id": node["raft_id"],
    })
}

#[test]
fn restarting_every_manager_keeps_nodes_labels_availability_and_roles() {
    let mut c = Cluster::new();
    c.init("m1");
    c.join_manager("m2");
    c.join_manager("m3");
    c.join_worker("w1");
    c.wait_all_ready();
    c.write("m1", "node update --label-add zone=a --label-add disk=ssd m2");
    c.write("m2", "node update --availability drain --label-add tier=edge w1");
    c.write("m3", "node update --availability pause m3");
    let names = ["m1", "m2", "m3", "w1"];
    let before: Vec<Value> = names.iter().map(|n| kept(&c.inspect("m1", n))).collect();
    assert_eq!(before[1]["labels"], json!({"zone": "a", "disk": "ssd"}));
    assert_eq!(before[3]["availability"], "drain");

    for manager in ["m1", "m2", "m3"] {
        c.stop(manager);
    }
    for manager in ["m1", "m2", "m3"] {
        c.restart(manager);
    }
    c.wait_leader_among(&["m1", "m2", "m3"]);
    let rows = c.wait_all_ready();

    for manager in ["m1", "m2", "m3"] {
        // A manager that lagged before the stop catches up from the leader.
        wait_until(
            &format!("{manager} shows the node records as they were before the restart"),
            Duration::from_secs(10),
            || {
                let after = names
                    .iter()
                    .map(|n| c.try_inspect(manager, n).map(|node| kept(&node)))
                    .collect::<Result<Vec<Value>, String>>()?;
                if after == before {
                    Ok(())
                } else {
                    Err(format!("before: {before:#?}\nafter: {after:#?}"))
                }
            },
        );
    }
    let mut shown: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r.hostname,
                r.availability,
                r.manager_status.replace("Leader", "Reachable")
            )
        })
        .collect();
    shown.sort();
    assert_eq!(
        shown,
        [
            "m1 Active Reachable",
            "m2 Active Reachable",
            "m3 Pause Reachable",
            "w1 Drain "
        ],
        "node ls after the restart: {rows:#?}"
    );
    // And the cluster takes writes again.
    c.write("m3", "node update --label-rm tier w1");
}
