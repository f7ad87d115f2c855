//! The scale simulation, small: 3 real managers over the in-memory Raft network and 200 fake nodes converge on
//! 2,000 tasks; then 20 nodes stop, are marked Down, and their tasks run elsewhere. (The full-size run is
//! `cargo bench --bench scale`.)

use std::time::Duration;
use std::time::Instant;

use swarm_reconciler::cluster::Settings;
use swarm_reconciler::dispatcher::SessionMessage;
use swarm_reconciler::sim::Census;
use swarm_reconciler::sim::Sim;
use swarm_reconciler::store;
use swarm_reconciler::store::Request;
use swarm_specs::spec::Driver;
use swarm_specs::spec::TaskSpec;
use swarm_specs::task::Task;
use swarm_specs::task::TaskState;
use swarm_specs::task::TaskStatus;
use swarm_specs::task::MANUAL_SERVICE_PREFIX;

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

/// The next message of a session that is not a ping (within 10 s).
async fn next(session: &mut tokio::sync::mpsc::Receiver<SessionMessage>) -> SessionMessage {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), session.recv())
            .await
            .expect("a session message within 10 s")
            .expect("the session is open");
        if message != SessionMessage::Ping {
            return message;
        }
    }
}

fn ids(message: &SessionMessage) -> Vec<String> {
    match message {
        SessionMessage::Tasks { tasks } => tasks.iter().map(|t| t.id.clone()).collect(),
        SessionMessage::Removed { task_ids } => task_ids.clone(),
        other => panic!("expected tasks or removals, got {other:?}"),
    }
}

/// A task placed by hand on `node` (the orchestrator leaves such tasks alone).
fn manual_task(id: &str, node: &str) -> Task {
    Task {
        id: id.into(),
        service: format!("{MANUAL_SERVICE_PREFIX}{id}"),
        slot: None,
        node_id: Some(node.into()),
        spec_version: 1,
        spec: TaskSpec::with_command(Driver::Process, None, vec!["true".into()]),
        desired_state: TaskState::Running,
        status: TaskStatus::new(TaskState::Assigned, 1, "assigned"),
        created_at: 1,
        ports: Vec::new(),
        networks: Vec::new(),
        started_at: None,
    }
}

/// The dispatcher hands each node's session only the changes of its own tasks: a task moving from one node to
/// another is removed from the first session and sent to the second; other nodes' tasks never reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_gets_only_its_nodes_task_changes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = Sim::start(
        dir.path(),
        1,
        Settings::default(),
        store::raft_config(10_000, 50, 150, 300),
    )
    .await;
    let leader = sim.leader().clone();
    let write = |tasks: Vec<Task>| {
        let leader = leader.clone();
        async move {
            let ops = tasks.iter().map(store::put).collect();
            leader
                .write(Request { guards: vec![], ops })
                .await
                .expect("write tasks");
        }
    };
    // n1 already has a task when its session opens: the complete set carries it.
    write(vec![manual_task("before", "n1")]).await;
    let mut n1 = sim.dispatchers[0].session("n1");
    let mut n2 = sim.dispatchers[0].session("n2");
    assert_eq!(next(&mut n1).await, SessionMessage::Begin);
    assert_eq!(ids(&next(&mut n1).await), ["before"]);
    assert_eq!(next(&mut n1).await, SessionMessage::End);
    assert_eq!(next(&mut n2).await, SessionMessage::Begin);
    assert_eq!(next(&mut n2).await, SessionMessage::End);

    // A task for n1 and one for a node without a session, then one for n2: each session sees only its own (the
    // router keeps the order of the changes, so anything else would have come first).
    write(vec![manual_task("t1", "n1"), manual_task("t9", "n9")]).await;
    write(vec![manual_task("t2", "n2")]).await;
    assert_eq!(ids(&next(&mut n1).await), ["t1"]);
    assert_eq!(ids(&next(&mut n2).await), ["t2"]);

    // t1 moves to n2: n1 is told to drop it, n2 gets it.
    write(vec![manual_task("t1", "n2")]).await;
    assert_eq!(ids(&next(&mut n1).await), ["t1"]);
    assert!(matches!(
        next(&mut n2).await,
        SessionMessage::Tasks { tasks } if tasks.len() == 1 && tasks[0].id == "t1" && tasks[0].node_id.as_deref() == Some("n2")
    ));

    // Deleted: only the node that had it hears of it.
    leader
        .write(Request {
            guards: vec![],
            ops: vec![store::delete::<Task>("t1"), store::delete::<Task>("before")],
        })
        .await
        .expect("delete");
    assert_eq!(
        next(&mut n1).await,
        SessionMessage::Removed {
            task_ids: vec!["before".into()]
        }
    );
    assert_eq!(
        next(&mut n2).await,
        SessionMessage::Removed {
            task_ids: vec!["t1".into()]
        }
    );
    sim.shutdown().await;
}
