//! A user's successive commands on different managers: each write is checked against the newest state, wherever it
//! is sent.

use crate::harness::Cluster;

#[test]
fn back_to_back_updates_through_different_managers_all_succeed() {
    let mut c = Cluster::new();
    c.init("m1");
    c.join_manager("m2");
    c.join_manager("m3");
    c.wait_all_ready();
    // Nobody else changes m1's record: every update must apply, none may fail with "changed meanwhile".
    let mut failed = Vec::new();
    for i in 0..30 {
        let manager = ["m1", "m2", "m3"][i % 3];
        let run = c.run(manager, &format!("node update --label-add k{i}=v m1"));
        if run.code != 0 {
            failed.push(format!("update {i} on {manager}: {}", run.stderr.trim()));
        }
    }
    assert!(
        failed.is_empty(),
        "updates refused although nothing else wrote the node:\n{failed:#?}"
    );
    let labels = c.inspect("m1", "m1")["labels"].clone();
    assert_eq!(labels.as_object().map(|l| l.len()), Some(30), "labels of m1: {labels}");
}
