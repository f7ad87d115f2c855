//! Benchmark: the pure scheduler placing 100,000 tasks on 1,000 simulated nodes with constraints and a spread
//! preference (goal ≥ 10,000 placements/s; Nomad's published record is 3,750/s).
//!
//! Also the orchestrator's whole pass over the same services: creating and placing every task, then a pass with
//! nothing to do.
//!
//! Run: `cargo bench --bench scheduler`.

use std::collections::BTreeMap;
use std::time::Instant;

use swarm_reconciler::ca::Role;
use swarm_reconciler::cluster::Availability;
use swarm_reconciler::cluster::Node;
use swarm_reconciler::cluster::NodeDescription;
use swarm_reconciler::cluster::NodeStatus;
use swarm_reconciler::objects::Service;
use swarm_reconciler::orchestrator::reconcile;
use swarm_reconciler::orchestrator::Inputs;
use swarm_reconciler::scheduler::schedule;
use swarm_reconciler::scheduler::Decision;
use swarm_specs::spec::Driver;
use swarm_specs::spec::EndpointMode;
use swarm_specs::spec::ServiceMode;
use swarm_specs::spec::ServiceSpec;
use swarm_specs::spec::TaskSpec;
use swarm_specs::spec::UpdateConfig;
use swarm_specs::task::Task;
use swarm_specs::task::TaskState;
use swarm_specs::task::TaskStatus;
use swarm_specs::units::parse_constraint;

const NODES: usize = 1_000;
const TASKS: usize = 100_000;
const SERVICES: usize = 100;

fn node(i: usize) -> Node {
    let zone = ["a", "b", "c"][i % 3];
    Node {
        id: format!("node{i:04}"),
        role: if i < 3 { Role::Manager } else { Role::Worker },
        availability: Availability::Active,
        labels: BTreeMap::from([("zone".to_string(), zone.to_string())]),
        status: NodeStatus::Ready,
        status_message: String::new(),
        addr: format!("10.0.{}.{}", i / 250, i % 250),
        manager_addr: None,
        raft_id: None,
        description: NodeDescription {
            hostname: format!("host{i:04}"),
            engine_version: None,
            os: "linux".into(),
            arch: "x86_64".into(),
            nano_cpus: 64_000_000_000,
            memory_bytes: 256 << 30,
            engine_labels: BTreeMap::new(),
            drivers: vec!["docker".into(), "process".into()],
        },
        created_at: 0,
        updated_at: 0,
        status_changed_at: 0,
    }
}

fn main() {
    let nodes: Vec<Node> = (0..NODES).map(node).collect();
    let mut pending = Vec::with_capacity(TASKS);
    for s in 0..SERVICES {
        let mut spec = TaskSpec::with_command(Driver::Docker, Some(format!("app{s}:1")), vec!["serve".into()]);
        spec.placement.constraints = vec![parse_constraint("node.role==worker").unwrap()];
        if s % 2 == 0 {
            spec.placement
                .constraints
                .push(parse_constraint("node.labels.zone!=c").unwrap());
        }
        spec.placement.preferences = vec!["node.labels.zone".into()];
        spec.resources.reservations.memory_bytes = 64 << 20;
        for i in 0..TASKS / SERVICES {
            pending.push(Task {
                id: format!("t{s}-{i}"),
                service: format!("stack_svc{s}"),
                slot: Some(i as u64 + 1),
                node_id: None,
                spec_version: 1,
                spec: spec.clone(),
                desired_state: TaskState::Running,
                status: TaskStatus::new(TaskState::Pending, 0, "pending"),
                created_at: 0,
                ports: Vec::new(),
                networks: Vec::new(),
                started_at: None,
            });
        }
    }
    let mut rates = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let decisions = schedule(&nodes, &[], &pending, &|_| Vec::new(), &|_, _| 0);
        let elapsed = t.elapsed();
        let placed = decisions
            .iter()
            .filter(|d| matches!(d, Decision::Assign { .. }))
            .count();
        assert_eq!(placed, TASKS, "every task fits");
        rates.push(TASKS as f64 / elapsed.as_secs_f64());
        println!(
            "placed {placed} tasks on {NODES} nodes in {:.0} ms",
            elapsed.as_secs_f64() * 1000.0
        );
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "scheduler: {TASKS} tasks, {SERVICES} services, {NODES} nodes, constraints + zone spread: median {:.0} placements/s (goal ≥ 10,000)",
        rates[1]
    );
    orchestrator(&nodes, &pending);
}

/// The orchestrator's whole decision from the same services with no task yet: 100,000 tasks created and placed,
/// then the pass after (every task running) that must decide nothing.
fn orchestrator(nodes: &[Node], pending: &[Task]) {
    let mut services = Vec::new();
    for s in 0..SERVICES {
        let task = pending[s * (TASKS / SERVICES)].spec.clone();
        let spec = ServiceSpec {
            name: format!("stack_svc{s}"),
            labels: BTreeMap::new(),
            mode: ServiceMode::Replicated {
                replicas: (TASKS / SERVICES) as u64,
            },
            task,
            endpoint_mode: EndpointMode::Vip,
            ports: Vec::new(),
            update_config: UpdateConfig::default(),
            rollback_config: UpdateConfig::default(),
        };
        services.push(Service::new(format!("svc{s}"), spec, 0));
    }
    let mut times = Vec::new();
    let mut steady = Vec::new();
    for _ in 0..3 {
        let mut next = 0u64;
        let inputs = Inputs {
            services: &services,
            tasks: &[],
            nodes,
            networks: &[],
            now: 1,
            history_limit: 5,
        };
        let t = Instant::now();
        let actions = reconcile(&inputs, &mut || {
            next += 1;
            format!("t{next}")
        });
        times.push(t.elapsed());
        assert_eq!(actions.create.len(), TASKS);
        assert!(actions.create.iter().all(|t| t.node_id.is_some()), "every task placed");
        let running: Vec<(Task, u64)> = actions
            .create
            .into_iter()
            .map(|mut t| {
                t.status = TaskStatus::new(TaskState::Running, 1, "running");
                (t, 1)
            })
            .collect();
        let running: Vec<(&Task, u64)> = running.iter().map(|(t, r)| (t, *r)).collect();
        let inputs = Inputs {
            tasks: &running,
            ..inputs
        };
        let t = Instant::now();
        let again = reconcile(&inputs, &mut || unreachable!("nothing to create"));
        steady.push(t.elapsed());
        assert!(again.is_empty());
    }
    times.sort();
    steady.sort();
    println!(
        "orchestrator: {TASKS} tasks created and placed in one pass: median {:.0} ms ({:.0} tasks/s); the next pass, nothing to do: median {:.0} ms",
        times[1].as_secs_f64() * 1000.0,
        TASKS as f64 / times[1].as_secs_f64(),
        steady[1].as_secs_f64() * 1000.0
    );
}
