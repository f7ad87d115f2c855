//! A worker's daemon restarts on its data directory: it is the same member, back without a new join.

use std::time::Duration;

use crate::harness::wait_until;
use crate::harness::Cluster;

#[test]
fn a_restarted_worker_is_ready_again_with_the_same_node_and_cluster_id() {
    let mut c = Cluster::new();
    c.init("m1");
    let w1 = c.join_worker("w1");
    c.wait_all_ready();
    // A short heartbeat, so that the stopped worker is seen Down quickly.
    c.write("m1", "update --dispatcher-heartbeat 200ms --heartbeat-grace 3");
    c.wait_steady_ready("m1", "w1", Duration::from_millis(1_200));
    let before = c.info("w1");
    assert_eq!(before.node_id, w1);
    assert!(!before.cluster_id.is_empty(), "info --json has no cluster_id");

    // A clean stop (SIGTERM), then a crash (SIGKILL): both times the same node comes back.
    for (round, crash) in [(1, false), (2, true)] {
        if crash {
            c.kill("w1");
        } else {
            c.stop("w1");
        }
        wait_until(
            &format!("w1 shows Down (round {round})"),
            Duration::from_secs(10),
            || {
                let rows = c.try_node_ls("m1")?;
                match rows.iter().find(|r| r.id == w1) {
                    Some(r) if r.status == "Down" => Ok(()),
                    _ => Err(format!("{rows:#?}")),
                }
            },
        );
        c.restart("w1");
        let after = c.info("w1");
        assert_eq!(after.local_node_state, "active", "round {round}: {after:?}");
        assert_eq!(after.node_id, before.node_id, "round {round}: the node id changed");
        assert_eq!(
            after.cluster_id, before.cluster_id,
            "round {round}: the cluster id changed"
        );
        assert!(!after.is_manager, "round {round}: {after:?}");
        let rows = c.wait_all_ready();
        assert_eq!(rows.len(), 2, "round {round}: no second record for w1: {rows:#?}");
    }
}
