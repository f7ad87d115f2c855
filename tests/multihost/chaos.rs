//! Chaos stories on machines: a leader killed in the middle of `swarm apply`, a leader cut off into a minority, a
//! worker frozen past its heartbeat grace. Each ends by checking the cluster's invariants: no acknowledged write
//! lost, one leader per term, every slot run once, the service at its spec.

use std::time::Duration;

use crate::harness::command;
use crate::harness::holds_for;
use crate::harness::one_leader_per_term;
use crate::harness::wait_until;
use crate::harness::Cluster;
use crate::harness::COMMAND_TIMEOUT;

/// A stack of one replicated service of `replicas` process tasks (optionally on workers only).
pub fn stack(replicas: usize, workers_only: bool) -> String {
    let placement = if workers_only {
        "\n      placement:\n        constraints: [node.role == worker]"
    } else {
        ""
    };
    format!(
        r#"services:
  web:
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    x-swarm: {{driver: process}}
    stop_grace_period: 2s
    deploy:
      replicas: {replicas}
      restart_policy: {{delay: 0s}}{placement}
"#
    )
}

/// Waits until every manager in `managers` shows `labels` on node `on` (and, for `absent`, not those).
pub fn wait_labels(c: &Cluster, managers: &[String], on: &str, labels: &[String], absent: &[&str]) {
    for m in managers {
        wait_until(
            &format!("{m} shows the acknowledged labels on {on}"),
            Duration::from_secs(15),
            || {
                let record = c.try_inspect(m, on)?;
                let have = &record["labels"];
                let missing: Vec<&String> = labels.iter().filter(|k| have.get(k.as_str()).is_none()).collect();
                let present: Vec<&&str> = absent.iter().filter(|k| have.get(**k).is_some()).collect();
                assert!(
                    present.is_empty(),
                    "{m} shows labels {present:?} on {on}, from writes that failed: {have}"
                );
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("missing {missing:?}; labels {have}"))
                }
            },
        );
    }
}

fn others(all: &[String], but: &str) -> Vec<String> {
    all.iter().filter(|m| *m != but).cloned().collect()
}

#[test]
fn the_leader_killed_during_apply_loses_no_acknowledged_write_and_the_stack_converges() {
    let mut c = Cluster::with(&["m1", "m2", "m3"], &["w1", "w2"]);
    let managers = c.managers();
    let leader = c.leader();
    let survivors = others(&managers, &leader);
    let via = survivors[0].clone();

    // Acknowledged writes, one through each manager.
    let mut acked = Vec::new();
    for (i, m) in managers.iter().enumerate() {
        c.write(m, &format!("node update --label-add before{i}=yes w1"));
        acked.push(format!("before{i}"));
    }

    // `apply` through a follower; the leader dies once the stack is in the store, before it has converged.
    c.put_file(&via, "/tmp/docker-stack.yml", &stack(6, false));
    let container = c.container(&via);
    let apply = std::thread::spawn(move || {
        command(
            "docker",
            &[
                "exec",
                &container,
                "swarm",
                "apply",
                "-f",
                "/tmp/docker-stack.yml",
                "--stack",
                "app",
                "--yes",
            ],
            None,
            COMMAND_TIMEOUT + Duration::from_secs(20),
        )
    });
    wait_until(
        "the stack's first task is in the store",
        Duration::from_secs(20),
        || {
            let all = c.tasks(&via)?;
            if all.iter().any(|t| t["service"] == "app_web") || apply.is_finished() {
                Ok(())
            } else {
                Err(format!("{} tasks, none of app_web", all.len()))
            }
        },
    );
    let killed_at = std::time::Instant::now();
    c.kill(&leader);
    let survivor_refs: Vec<&str> = survivors.iter().map(String::as_str).collect();
    let new = c.leader_among(&survivor_refs);
    eprintln!("{leader} killed; {new} leads after {:?}", killed_at.elapsed());

    let run = apply.join().expect("the apply thread");
    assert_ne!(run.code, -2, "`apply` hung when the leader died:\n{}", run.show());
    assert!(!run.stderr.contains("panicked"), "`apply` panicked:\n{}", run.show());
    if run.code == 0 {
        assert!(run.stdout.contains("Applied stack app"), "{}", run.show());
    } else {
        // A clean failure says why; the user applies again, and the same stack is applied once.
        assert!(
            !run.stderr.trim().is_empty(),
            "`apply` failed without a word:\n{}",
            run.show()
        );
        eprintln!("apply failed when the leader died (allowed):\n{}", run.show());
        c.write(&via, "apply -f /tmp/docker-stack.yml --stack app --yes");
    }
    eprintln!("apply ended after {:?}: exit {}", run.elapsed, run.code);
    c.wait_converged("app_web", 6, Duration::from_secs(40));

    // No acknowledged write is lost: on the survivors, and on the old leader once it is back.
    wait_labels(&c, &survivors, "w1", &acked, &[]);
    c.start(&leader);
    c.wait_all_ready();
    wait_labels(&c, &managers, "w1", &acked, &[]);
    c.stays_converged("app_web", 6, Duration::from_secs(3));
}

#[test]
fn a_leader_cut_into_a_minority_fails_writes_and_the_majority_takes_over() {
    let mut c = Cluster::with(&["m1", "m2", "m3"], &[]);
    let managers = c.managers();
    let watch = c.observe_leaders();
    let old = c.leader();
    let majority = others(&managers, &old);
    let majority_refs: Vec<&str> = majority.iter().map(String::as_str).collect();
    c.write(&majority[0], &format!("node update --label-add before=yes {old}"));

    c.partition(&[&old], &majority_refs);
    // A write on the minority fails within its timeout — not a hang, and not applied.
    let run = c.swarm(&old, &["node", "update", "--label-add", "minority=yes", &old]);
    eprintln!("write on the cut-off leader: {}", run.show());
    assert_ne!(run.code, -2, "a write on the minority hung:\n{}", run.show());
    assert_ne!(
        run.code,
        0,
        "a write on a one-manager minority succeeded:\n{}",
        run.show()
    );
    assert!(
        run.elapsed <= Duration::from_secs(15),
        "the minority's write took {:?}:\n{}",
        run.elapsed,
        run.show()
    );

    // The majority elects a leader among itself and takes writes.
    let new = c.leader_among(&majority_refs);
    c.write(&majority[1], &format!("node update --label-add majority=yes {old}"));
    eprintln!("{new} leads the majority");

    c.heal();
    let after = c.leader();
    eprintln!("after heal {after} leads");
    wait_labels(
        &c,
        &managers,
        &old,
        &["before".into(), "majority".into()],
        &["minority"],
    );
    // After the heal, never two managers claim leadership at the same time.
    let ids: Vec<(String, String)> = managers.iter().map(|m| (m.clone(), c.id(m))).collect();
    holds_for("one manager claims leadership", Duration::from_secs(3), || {
        let claims: Vec<String> = ids
            .iter()
            .filter(|(m, id)| {
                c.try_info(m)
                    .map(|i| i.leader_id() == Some(id.as_str()))
                    .unwrap_or(false)
            })
            .map(|(m, _)| m.clone())
            .collect();
        if claims.len() <= 1 {
            Ok(())
        } else {
            Err(format!("{claims:?} each claim to lead"))
        }
    });
    let sightings = watch.finish();
    let terms = one_leader_per_term(&sightings).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{} sightings; leader by term {terms:?}", sightings.len());
    assert!(terms.len() >= 2, "the watch saw no new term: {terms:?}");
}

#[test]
fn a_worker_frozen_past_its_grace_has_its_tasks_replaced_and_stops_them_when_it_thaws() {
    let mut c = Cluster::with(&["m1", "m2", "m3"], &["w1", "w2"]);
    c.put_file("m1", "/tmp/docker-stack.yml", &stack(4, true));
    c.run("m1", "apply -f /tmp/docker-stack.yml --stack app --yes").ok();
    c.wait_converged("app_web", 4, Duration::from_secs(30));
    let moved = c.live_tasks_on("w1");
    assert!(!moved.is_empty(), "w1 runs no task of app_web");

    c.pause("w1");
    let paused_at = std::time::Instant::now();
    c.wait_status("w1", "Down", Duration::from_secs(20));
    eprintln!("w1 Down {:?} after the pause", paused_at.elapsed());
    c.wait_converged("app_web", 4, Duration::from_secs(30));
    eprintln!("app_web back at 4 tasks {:?} after the pause", paused_at.elapsed());

    c.unpause("w1");
    let thawed_at = std::time::Instant::now();
    wait_until("w1 stops the tasks that moved away", Duration::from_secs(30), || {
        let still: Vec<String> = c.live_tasks_on("w1").intersection(&moved).cloned().collect();
        if still.is_empty() {
            Ok(())
        } else {
            Err(format!("still running on w1: {still:?}"))
        }
    });
    eprintln!("w1 stopped its moved tasks {:?} after the thaw", thawed_at.elapsed());
    c.wait_status("w1", "Ready", Duration::from_secs(20));
    c.wait_converged("app_web", 4, Duration::from_secs(30));
    c.stays_converged("app_web", 4, Duration::from_secs(3));
}
