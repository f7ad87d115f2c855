//! Promote and demote: the node takes up (or gives up) the manager role by itself.

use std::time::Duration;

use crate::harness::wait_until;
use crate::harness::Cluster;
use crate::harness::NOT_A_MANAGER;

#[test]
fn a_promoted_worker_manages_and_a_demoted_one_does_not_and_the_last_manager_stays() {
    let mut c = Cluster::new();
    c.init("m1");
    let w1 = c.join_worker("w1");
    c.wait_all_ready();
    c.run("w1", "node ls").fails_with(NOT_A_MANAGER);

    let run = c.run("m1", "node promote w1").ok();
    assert_eq!(
        run.stdout.trim(),
        format!("Node {w1} promoted to a manager in the swarm.")
    );
    // Once w1's replica caught up, it lists itself (the `*`).
    wait_until(
        "w1 answers `node ls` as a manager and lists itself",
        Duration::from_secs(15),
        || {
            let rows = c.try_node_ls("w1")?;
            match rows.iter().find(|r| r.id == w1) {
                Some(r) if r.is_self && rows.len() == 2 => Ok(()),
                _ => Err(format!("{rows:#?}")),
            }
        },
    );
    wait_until("m1 lists w1 as a Reachable manager", Duration::from_secs(10), || {
        let rows = c.try_node_ls("m1")?;
        match rows.iter().find(|r| r.id == w1) {
            Some(r) if r.manager_status == "Reachable" && r.status == "Ready" => Ok(()),
            _ => Err(format!("{rows:#?}")),
        }
    });
    // `node inspect` shows its manager address (and its Raft id, which a later demotion needs).
    wait_until(
        "w1's record has its manager address and Raft id",
        Duration::from_secs(10),
        || {
            let node = c.try_inspect("m1", "w1")?;
            if node["manager_addr"] == c.addr("w1").as_str() && node["raft_id"].is_u64() {
                Ok(())
            } else {
                Err(node.to_string())
            }
        },
    );
    assert!(c.info("w1").is_manager);
    assert_eq!(c.info("m1").managers, 2);
    // The new manager takes writes.
    c.write("w1", "node update --label-add promoted=yes w1");

    let run = c.run("m1", "node demote w1").ok();
    assert_eq!(run.stdout.trim(), format!("Manager {w1} demoted in the swarm."));
    wait_until(
        "w1 refuses `node ls` as a worker again",
        Duration::from_secs(15),
        || {
            let run = c.run("w1", "node ls");
            if run.code != 0 && run.stderr.contains(NOT_A_MANAGER) {
                Ok(())
            } else {
                Err(run.show())
            }
        },
    );
    let rows = c.node_ls("m1");
    let row = rows.iter().find(|r| r.id == w1).expect("w1 listed");
    assert_eq!(row.manager_status, "", "{rows:#?}");
    assert!(!c.info("w1").is_manager);

    c.run("m1", "node demote m1")
        .fails_with("attempting to demote the last manager");
    // The swarm still works with its one manager.
    c.write("m1", "node update --label-add still=manager m1");
    let rows = c.wait_all_ready();
    let leader: Vec<&str> = rows
        .iter()
        .filter(|r| r.manager_status == "Leader")
        .map(|r| r.hostname.as_str())
        .collect();
    assert_eq!(leader, ["m1"], "{rows:#?}");
}

/// Between its removal from the Raft membership and the election of a remaining manager, the old leader still leads
/// for a moment; the demotion's own record write must reach the new leader instead of waiting on an entry that no
/// voter will take.
#[test]
fn a_leader_that_demotes_itself_hands_over_and_its_node_becomes_a_worker() {
    let mut c = Cluster::new();
    c.init("m1");
    c.join_manager("m2");
    c.wait_all_ready();
    let leader = c.leader();
    let other = if leader == "m1" { "m2" } else { "m1" };
    let leader_id = c.id(&leader);

    let run = c.run(&leader, &format!("node demote {leader}")).ok();
    assert_eq!(run.stdout.trim(), format!("Manager {leader_id} demoted in the swarm."));
    wait_until(&format!("{other} leads alone"), Duration::from_secs(15), || {
        let rows = c.try_node_ls(other)?;
        let me = rows.iter().find(|r| r.is_self).ok_or("no self row")?;
        let old = rows.iter().find(|r| r.id == leader_id).ok_or("no old leader row")?;
        if me.manager_status == "Leader" && old.manager_status.is_empty() {
            Ok(())
        } else {
            Err(format!("{rows:#?}"))
        }
    });
    c.write(other, &format!("node update --label-add handed=over {leader}"));
    assert_eq!(c.info(other).managers, 1);
}
