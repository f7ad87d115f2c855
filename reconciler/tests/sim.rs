//! The scale simulation, small: 3 real managers over the in-memory Raft network and 200 fake nodes converge on
//! 2,000 tasks; then 20 nodes stop, are marked Down, and their tasks run elsewhere. (The full-size run is
//! `cargo bench --bench scale`.)

use std::time::Duration;
use std::time::Instant;

use swarm_reconciler::cluster::Settings;
use swarm_reconciler::sim::Census;
use swarm_reconciler::sim::Sim;

const NODES: usize = 200;
const TASKS: usize = 2_000;
const STOPPED: usize = 20;

async fn until(sim: &Sim, timeout: Duration, what: &str, done: impl Fn(&Census) -> bool) -> Census {
    let start = Instant::now();
    loop {
        let census = sim.census();
        if done(&census) {
            return census;
        }
        let terms = sim.terms();
        assert!(
            terms.iter().all(|(term, _)| *term == terms[0].0),
            "{what}: an election happened (term, leader per manager: {terms:?}); the fake nodes do not follow it"
        );
        assert!(
            start.elapsed() < timeout,
            "{what}: not after {timeout:?}: {} running, {} not yet",
            census.running,
            census.not_running
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_nodes_converge_and_tasks_leave_stopped_nodes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = Settings {
        heartbeat_period_ms: 500,
        heartbeat_grace: 3,
        ..Settings::default()
    };
    // Election timeouts of 1–2 s: 3 managers and 200 nodes share the test's two threads, and the fake nodes do not
    // follow a new leader.
    let raft = swarm_reconciler::store::raft_config(10_000, 100, 1_000, 2_000);
    let mut sim = Sim::start(dir.path(), 3, settings, raft).await;
    let first_term = sim.terms()[0].0;
    sim.add_nodes(NODES, Duration::from_millis(500)).await;
    sim.create_services(4, TASKS).await;

    let census = until(&sim, Duration::from_secs(60), "all tasks running", |c| {
        c.running == TASKS && c.not_running == 0
    })
    .await;
    assert!(
        census.running_per_node.len() > NODES * 9 / 10,
        "the tasks are spread over the nodes"
    );
    let on_stopped: usize = sim.nodes[..STOPPED]
        .iter()
        .map(|n| census.running_per_node.get(&n.id).copied().unwrap_or(0))
        .sum();
    assert!(on_stopped > 0, "the nodes about to stop run tasks");

    for i in 0..STOPPED {
        sim.stop_node(i);
    }
    let stopped: Vec<String> = sim.nodes[..STOPPED].iter().map(|n| n.id.clone()).collect();
    until(
        &sim,
        Duration::from_secs(60),
        "tasks moved off the stopped nodes",
        |c| c.running == TASKS && c.not_running == 0 && stopped.iter().all(|id| !c.running_per_node.contains_key(id)),
    )
    .await;
    for id in &stopped {
        let (node, _) = sim.leader().node(id).expect("node record");
        assert_eq!(
            node.status,
            swarm_reconciler::cluster::NodeStatus::Down,
            "{id} is marked Down"
        );
    }
    assert_eq!(sim.terms()[0].0, first_term, "no election during the test");
    sim.shutdown().await;
}
