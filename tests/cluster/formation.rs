//! A swarm forms: init, managers and workers join, and every manager sees the same cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::wait_until;
use crate::harness::Cluster;
use crate::harness::NOT_A_MANAGER;

/// `node ls` on `manager` shows the five nodes Ready, `*` on itself, `leader` as the one Leader.
fn check_listing(c: &Cluster, manager: &str, leader: &str) -> Result<(), String> {
    let rows = c.try_node_ls(manager)?;
    let hostnames: BTreeSet<&str> = rows.iter().map(|r| r.hostname.as_str()).collect();
    if rows.len() != 5 || hostnames != BTreeSet::from(["m1", "m2", "m3", "w1", "w2"]) {
        return Err(format!("not the five nodes: {rows:#?}"));
    }
    for row in &rows {
        let expected = match row.hostname.as_str() {
            "w1" | "w2" => "",
            name if name == leader => "Leader",
            _ => "Reachable",
        };
        let right = row.id == c.id(&row.hostname)
            && row.status == "Ready"
            && row.availability == "Active"
            && row.is_self == (row.hostname == manager)
            && row.manager_status == expected;
        if !right {
            return Err(format!(
                "row of {} should be Ready, Active, MANAGER STATUS {expected:?}, `*` only on {manager} (the leader \
                 is {leader}): {rows:#?}",
                row.hostname
            ));
        }
    }
    Ok(())
}

#[test]
fn three_managers_and_two_workers_form_a_swarm_every_manager_lists_alike() {
    let mut c = Cluster::new();
    c.init("m1");
    c.join_manager("m2");
    c.join_manager("m3");
    c.join_worker("w1");
    c.join_worker("w2");
    c.wait_all_ready();
    let leader = c.leader();

    for manager in ["m1", "m2", "m3"] {
        // Followers apply the log a moment after the leader.
        wait_until(
            &format!("`node ls` on {manager} shows the swarm"),
            Duration::from_secs(5),
            || check_listing(&c, manager, &leader),
        );
        let info = c.info(manager);
        assert!(info.is_manager, "{info:?}");
        assert_eq!((info.managers, info.nodes), (3, 5), "info on {manager}: {info:?}");
        assert_eq!(
            info.leader,
            format!("{} ({})", c.id(&leader), c.addr(&leader)),
            "the leader in `info` on {manager}"
        );
    }

    // Each manager's record holds its own manager address and Raft id (Docker's ManagerStatus).
    let mut raft_ids = BTreeSet::new();
    for manager in ["m1", "m2", "m3"] {
        let node = c.inspect("m1", manager);
        assert_eq!(
            node["manager_addr"],
            c.addr(manager).as_str(),
            "`node inspect {manager}` shows another manager's address (m1 {}, m2 {}, m3 {}): {node}",
            c.addr("m1"),
            c.addr("m2"),
            c.addr("m3")
        );
        raft_ids.insert(node["raft_id"].to_string());
    }
    assert_eq!(raft_ids.len(), 3, "three managers, three Raft ids: {raft_ids:?}");

    for worker in ["w1", "w2"] {
        c.run(worker, "node ls").fails_with(NOT_A_MANAGER);
        let info = c.info(worker);
        assert!(!info.is_manager && info.local_node_state == "active", "{info:?}");
    }
}
