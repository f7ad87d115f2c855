//! A swarm that lost its quorum for good is rebuilt from one surviving manager with `init --force-new-cluster`:
//! the data stays, writes work again, and new managers can join.

use std::time::Duration;

use crate::harness::wait_until;
use crate::harness::Cluster;

#[test]
fn force_new_cluster_on_the_last_manager_keeps_the_data_takes_writes_and_admits_a_new_manager() {
    let mut c = Cluster::new();
    c.init("m1");
    c.join_manager("m2");
    c.join_manager("m3");
    let w1 = c.join_worker("w1");
    c.wait_all_ready();
    let manager_token = c.join_token("m1", "manager");
    let cluster_id = c.info("m1").cluster_id;
    assert!(!cluster_id.is_empty(), "info --json has no cluster_id");

    // The survivor is a follower: the general case (its log may trail the leader's, so wait for the label).
    let leader = c.leader();
    let survivor = ["m1", "m2", "m3"]
        .into_iter()
        .find(|n| *n != leader)
        .expect("a follower");
    let lost: Vec<&str> = ["m1", "m2", "m3"].into_iter().filter(|n| *n != survivor).collect();
    let survivor_id = c.id(survivor);
    c.write(&leader, "node update --label-add keep=me w1");
    wait_until(&format!("{survivor} shows the label"), Duration::from_secs(10), || {
        let labels = c.try_inspect(survivor, "w1")?["labels"].clone();
        match labels["keep"].as_str() {
            Some("me") => Ok(()),
            _ => Err(labels.to_string()),
        }
    });

    for name in &lost {
        c.kill(name);
    }
    // Once the survivor noticed that no leader is left, a write fails for lack of quorum.
    wait_until(&format!("{survivor} knows no leader"), Duration::from_secs(10), || {
        let info = c.info(survivor);
        match info.leader_id() {
            None => Ok(()),
            Some(_) => Err(info.leader),
        }
    });
    c.run(survivor, "node update --label-add lost=write w1")
        .fails_with("cluster has no quorum: 1 of 3 managers reachable");

    let run = c.run(survivor, "init --force-new-cluster").ok();
    assert!(
        run.stdout.contains(&format!(
            "Swarm initialized: current node ({survivor_id}) is now a manager."
        )),
        "{}",
        run.show()
    );
    let info = c.info(survivor);
    assert_eq!(info.node_id, survivor_id, "the survivor keeps its node id");
    assert_eq!(info.cluster_id, cluster_id, "the swarm keeps its cluster id");

    // Writes work again, and the data from before is there.
    c.write(survivor, "node update --label-add after=recovery w1");
    let labels = c.inspect(survivor, "w1")["labels"].clone();
    assert_eq!(labels["keep"], "me", "the label from before the loss: {labels}");
    assert_eq!(labels["after"], "recovery", "{labels}");
    assert!(
        labels.get("lost").is_none(),
        "the write refused without quorum was applied: {labels}"
    );

    // The worker is still a member and reports to the rebuilt cluster by itself; the lost managers are Down.
    let rows = wait_until(
        &format!("w1 is Ready and the lost managers Down on {survivor}"),
        Duration::from_secs(10),
        || {
            let rows = c.try_node_ls(survivor)?;
            let status = |name: &str| {
                rows.iter()
                    .find(|r| r.hostname == name)
                    .map(|r| (r.status.as_str(), r.manager_status.as_str()))
            };
            let lost_down = lost.iter().all(|n| status(n) == Some(("Down", "Unreachable")));
            if rows.len() == 4 && status("w1") == Some(("Ready", "")) && lost_down {
                Ok(rows)
            } else {
                Err(format!("{rows:#?}"))
            }
        },
    );
    assert!(rows.iter().any(|r| r.id == w1), "w1 kept its id: {rows:#?}");
    assert!(
        rows.iter()
            .any(|r| r.hostname == survivor && r.is_self && r.manager_status == "Leader"),
        "{survivor} leads: {rows:#?}"
    );

    // A fresh node joins as a manager with the manager token from before the loss.
    c.add("m4");
    let run = c.try_join("m4", &manager_token, survivor).ok();
    assert!(
        run.stdout.contains("This node joined a swarm as a manager."),
        "{}",
        run.show()
    );
    let m4 = c.id("m4");
    wait_until(
        &format!("{survivor} and m4 are the two reachable managers, on both"),
        Duration::from_secs(15),
        || {
            for name in [survivor, "m4"] {
                let rows = c.try_node_ls(name)?;
                let mut up: Vec<(String, String)> = rows
                    .iter()
                    .filter(|r| r.manager_status == "Leader" || r.manager_status == "Reachable")
                    .map(|r| (r.hostname.clone(), r.manager_status.clone()))
                    .collect();
                up.sort();
                let want = vec![
                    (survivor.to_string(), "Leader".to_string()),
                    ("m4".to_string(), "Reachable".to_string()),
                ];
                let m4_ready = rows.iter().any(|r| r.id == m4 && r.status == "Ready");
                if up != want || rows.len() != 5 || !m4_ready {
                    return Err(format!("on {name}: {rows:#?}"));
                }
            }
            Ok(())
        },
    );
    // The two managers form a quorum: a write through the new one commits.
    c.write("m4", "node update --label-add via=m4 w1");
    wait_until(
        &format!("{survivor} applied the write made through m4"),
        Duration::from_secs(5),
        || {
            let labels = c.try_inspect(survivor, "w1")?["labels"].clone();
            match labels["via"].as_str() {
                Some("m4") => Ok(()),
                _ => Err(labels.to_string()),
            }
        },
    );
}
