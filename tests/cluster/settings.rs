//! `swarm update`: the heartbeat settings take effect on the running cluster, and bad values are refused whole.

use std::time::Duration;
use std::time::Instant;

use crate::harness::holds_for;
use crate::harness::wait_until;
use crate::harness::Cluster;

#[test]
fn a_shorter_dispatcher_heartbeat_marks_a_killed_worker_down_sooner_and_info_reports_it() {
    let mut c = Cluster::new();
    c.init("m1");
    let w1 = c.join_worker("w1");
    c.wait_all_ready();
    let info = c.info("m1");
    assert_eq!((info.heartbeat_period_ms, info.heartbeat_grace), (1_000, 3), "defaults");

    let run = c.write("m1", "update --dispatcher-heartbeat 200ms --heartbeat-grace 3");
    assert_eq!(run.stdout.trim(), "Swarm updated.");
    let info = c.info("m1");
    assert_eq!(
        (info.heartbeat_period_ms, info.heartbeat_grace),
        (200, 3),
        "info after the update: {info:?}"
    );
    let human = c.run("m1", "info").ok();
    assert!(
        human.stdout.contains("Heartbeat Period: 200 ms (Down after 3 missed)"),
        "{}",
        human.show()
    );

    // Kill w1 once it beats at the new period: Ready for longer than the new grace (see the next test for what
    // happens before).
    c.wait_steady_ready("m1", "w1", Duration::from_millis(1_200));
    c.kill("w1");
    let killed = Instant::now();
    wait_until("w1 shows Down on m1", Duration::from_secs(10), || {
        let rows = c.try_node_ls("m1")?;
        match rows.iter().find(|r| r.id == w1) {
            Some(r) if r.status == "Down" => Ok(()),
            _ => Err(format!("{rows:#?}")),
        }
    });
    let took = killed.elapsed();
    // 3 × 200 ms of grace, a monitor tick and the polls; with the default period it would take over 3 s.
    assert!(
        took < Duration::from_secs(3),
        "w1 was marked Down {took:?} after the kill; the grace is 600 ms"
    );
}

#[test]
fn shortening_the_dispatcher_heartbeat_does_not_mark_a_healthy_worker_down() {
    let mut c = Cluster::new();
    c.init("m1");
    let w1 = c.join_worker("w1");
    c.wait_all_ready();

    // w1 beats every second (the default) and learns the new period from the answer to its next heartbeat; until
    // then it is as healthy as before, and must not be marked Down for missing beats of a period it never had.
    c.write("m1", "update --dispatcher-heartbeat 200ms --heartbeat-grace 3");
    holds_for(
        "w1 stays Ready while it moves to the new period",
        Duration::from_millis(2_500),
        || {
            let rows = c.try_node_ls("m1")?;
            match rows.iter().find(|r| r.id == w1) {
                Some(r) if r.status == "Ready" => Ok(()),
                _ => Err(format!("{rows:#?}\n{}", c.inspect("m1", &w1))),
            }
        },
    );
}

#[test]
fn invalid_heartbeat_settings_are_refused_with_a_clear_message_and_change_nothing() {
    let mut c = Cluster::new();
    c.init("m1");
    let before = c.info("m1");

    c.run("m1", "update --dispatcher-heartbeat 1ms")
        .fails_with("the heartbeat period must be between 10ms and 1m");
    c.run("m1", "update --heartbeat-grace 0")
        .fails_with("the heartbeat grace must be at least 1 missed beat");
    // One bad value refuses the whole update: the good one is not applied either.
    c.run("m1", "update --dispatcher-heartbeat 500ms --heartbeat-grace 0")
        .fails_with("the heartbeat grace must be at least 1 missed beat");
    c.run("m1", "update --dispatcher-heartbeat soon")
        .fails_with("invalid duration \"soon\"");

    let after = c.info("m1");
    assert_eq!(
        (after.heartbeat_period_ms, after.heartbeat_grace),
        (before.heartbeat_period_ms, before.heartbeat_grace),
        "refused updates changed the settings"
    );
    // A valid update still goes through afterwards.
    c.write("m1", "update --heartbeat-grace 5");
    assert_eq!(c.info("m1").heartbeat_grace, 5);
}
