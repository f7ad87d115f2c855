//! Nodes leave and are removed: what `leave` and `node rm` allow, refuse, and leave behind.

use std::time::Duration;

use crate::harness::wait_until;
use crate::harness::Cluster;

#[test]
fn a_worker_that_leaves_disappears_and_node_rm_refuses_ready_workers_and_managers() {
    let mut c = Cluster::new();
    c.init("m1");
    let w1 = c.join_worker("w1");
    let w2 = c.join_worker("w2");
    c.wait_all_ready();

    let run = c.leave("w1", false).ok();
    assert_eq!(run.stdout.trim(), "Node left the swarm.");
    assert_eq!(c.info("w1").local_node_state, "inactive");
    wait_until("w1 is gone from `node ls`", Duration::from_secs(5), || {
        let rows = c.try_node_ls("m1")?;
        if rows.iter().any(|r| r.id == w1) {
            Err(format!("{rows:#?}"))
        } else {
            Ok(())
        }
    });

    c.run("m1", "node rm w2")
        .fails_with(&format!("node {w2} is not down and can't be removed"));
    assert!(c.node_ls("m1").iter().any(|r| r.id == w2), "a refused rm removed w2");
    let run = c.run("m1", "node rm --force w2").ok();
    assert_eq!(run.stdout.trim(), w2);
    let rows = c.node_ls("m1");
    assert!(
        !rows.iter().any(|r| r.id == w2),
        "w2 still listed after rm --force: {rows:#?}"
    );

    let m1 = c.id("m1");
    c.run("m1", "node rm m1").fails_with(&format!(
        "node {m1} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"
    ));
    c.run("m1", "node rm --force m1").fails_with("must be demoted");
    let rows = c.node_ls("m1");
    assert_eq!(rows.len(), 1, "only m1 is left: {rows:#?}");
    assert_eq!(rows[0].manager_status, "Leader");
}

#[test]
fn a_manager_leaving_without_force_gets_dockers_warning() {
    let mut c = Cluster::new();
    c.init("m1");
    c.join_manager("m2");
    c.wait_all_ready();

    // Docker's text when leaving would lose the quorum (2 managers → 1).
    c.leave("m2", false).fails_with(
        "You are attempting to leave the swarm on a node that is participating as a manager. Removing this node \
         leaves 1 managers out of 2. Without a Raft quorum your swarm will be inaccessible. The only way to restore \
         a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to \
         suppress this message.",
    );
    assert!(c.info("m2").is_manager, "a refused leave changed the node");

    // With --force it leaves, and the remaining manager still takes writes.
    c.leave("m2", true).ok();
    assert_eq!(c.info("m2").local_node_state, "inactive");
    c.run("m1", "node update --label-add alone=yes m1").ok();

    // Docker's text for the last manager.
    c.leave("m1", false).fails_with(
        "You are attempting to leave the swarm on a node that is participating as a manager. Removing the last \
         manager erases all current state of the swarm. Use `--force` to ignore this message.",
    );
    assert!(c.info("m1").is_manager, "a refused leave changed the node");
}
