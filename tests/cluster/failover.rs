//! Managers crash: a new leader takes over while a majority lives, and writes are refused (and lost for good)
//! without one.

use std::time::Duration;
use std::time::Instant;

use crate::harness::wait_until;
use crate::harness::Cluster;

fn three_managers() -> Cluster {
    let mut c = Cluster::new();
    c.init("m1");
    c.join_manager("m2");
    c.join_manager("m3");
    c.wait_all_ready();
    c
}

#[test]
fn killing_the_leader_elects_another_and_shows_it_down_within_the_heartbeat_grace() {
    let mut c = three_managers();
    let old = c.leader();
    let grace = c.info(&old).grace();
    let survivors: Vec<&str> = ["m1", "m2", "m3"].into_iter().filter(|n| *n != old).collect();

    c.kill(&old);
    let new = c.wait_leader_among(&survivors);
    let elected = Instant::now();

    // A write on a follower goes through the new leader.
    let follower = *survivors.iter().find(|n| **n != new).expect("two survivors");
    c.write(follower, &format!("node update --label-add after=failover {follower}"));
    for survivor in &survivors {
        wait_until(&format!("{survivor} shows the label"), Duration::from_secs(5), || {
            let labels = c.try_inspect(survivor, follower)?["labels"].clone();
            match labels["after"].as_str() {
                Some("failover") => Ok(()),
                _ => Err(labels.to_string()),
            }
        });
    }

    let old_id = c.id(&old);
    let row = wait_until(
        &format!("{old} shows Down and Unreachable on {follower}"),
        grace + Duration::from_secs(5),
        || {
            let rows = c.try_node_ls(follower)?;
            match rows.iter().find(|r| r.id == old_id) {
                Some(r) if r.status == "Down" && r.manager_status == "Unreachable" => Ok(r.clone()),
                _ => Err(format!("{rows:#?}")),
            }
        },
    );
    let took = elected.elapsed();
    // The new leader gives every node a full grace period from its election; allow one check tick and the polls.
    assert!(
        took <= grace + Duration::from_secs(2),
        "{old} was marked Down {took:?} after the election; the heartbeat grace is {grace:?}: {row:?}"
    );
    let leaders: Vec<String> = c
        .node_ls(follower)
        .into_iter()
        .filter(|r| r.manager_status == "Leader")
        .map(|r| r.hostname)
        .collect();
    assert_eq!(leaders, [new], "exactly one Leader, the new one");
}

/// A new leader does not know how far its followers match, and its first AppendEntries to one carries the entries
/// from the middle of its log. openraft 0.9 gives that call 50 ms (the heartbeat interval); with large entries there
/// an uncapped call never made it, and the new leader, with one follower left, could not commit anything.
#[test]
fn a_new_leader_replicates_large_entries_to_the_last_follower_and_takes_writes() {
    let mut c = three_managers();
    let old = c.leader();
    // 60 entries of 100 KiB: 6 MiB in that first call, uncapped.
    let value = "x".repeat(100 * 1024);
    for i in 0..60 {
        let request = serde_json::json!({
            "guards": [],
            "ops": [{ "Put": { "table": "test", "key": format!("large-{i}"), "value": value } }],
        });
        let (code, answer) = c
            .post_as(&old, &old, "/v1/internal/write", &request.to_string())
            .expect("the leader answers");
        assert_eq!(code, 200, "writing entry {i} of 100 KiB: {answer}");
    }
    let applied = c.info(&old).raft_last_applied;
    for name in ["m1", "m2", "m3"] {
        wait_until(
            &format!("{name} applied the large entries"),
            Duration::from_secs(10),
            || {
                let info = c.info(name);
                (info.raft_last_applied >= applied)
                    .then_some(())
                    .ok_or(format!("{info:?}"))
            },
        );
    }

    c.kill(&old);
    let survivors: Vec<&str> = ["m1", "m2", "m3"].into_iter().filter(|n| *n != old).collect();
    // Uncapped, the follower never heard from the new leader: the survivors did not agree on one.
    let new = c.wait_leader_among(&survivors);
    let follower = *survivors.iter().find(|n| **n != new).expect("two survivors");
    c.write(follower, &format!("node update --label-add after=large {follower}"));
}

#[test]
fn without_quorum_a_write_fails_fast_and_is_not_applied_when_the_managers_return() {
    let mut c = three_managers();
    // The survivor is the leader: the one manager that could append the entry to its log.
    let survivor = c.leader();
    let lost: Vec<&str> = ["m1", "m2", "m3"].into_iter().filter(|n| *n != survivor).collect();
    for name in &lost {
        c.kill(name);
    }

    let run = c.run(&survivor, &format!("node update --label-add lost=write {survivor}"));
    let run = run.fails_with("cluster has no quorum: 1 of 3 managers reachable");
    assert!(
        run.elapsed <= Duration::from_secs(5),
        "the refused write took {:?}; it should fail within 5 s\n{}",
        run.elapsed,
        run.show()
    );
    // Reads still answer (from this manager's copy).
    assert_eq!(c.node_ls(&survivor).len(), 3);

    for name in &lost {
        c.restart(name);
    }
    c.wait_leader_among(&["m1", "m2", "m3"]);
    // A write after recovery: once every manager applied it, the refused entry (earlier in any log) is settled.
    c.write(&survivor, &format!("node update --label-add back=yes {survivor}"));
    for name in ["m1", "m2", "m3"] {
        let labels = wait_until(
            &format!("{name} applied the write made after recovery"),
            Duration::from_secs(10),
            || {
                let labels = c.try_inspect(name, &survivor)?["labels"].clone();
                match labels["back"].as_str() {
                    Some("yes") => Ok(labels),
                    _ => Err(labels.to_string()),
                }
            },
        );
        assert!(
            labels.get("lost").is_none(),
            "the write refused for lack of quorum was applied later, on {name}: labels {labels}"
        );
    }
}
