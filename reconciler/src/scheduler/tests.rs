use std::collections::BTreeMap;

use proptest::prelude::*;
use swarm_specs::spec::Constraint;
use swarm_specs::spec::ConstraintOp;
use swarm_specs::spec::Driver;
use swarm_specs::spec::PortConfig;
use swarm_specs::spec::Protocol;
use swarm_specs::spec::PublishMode;
use swarm_specs::spec::TaskSpec;
use swarm_specs::task::Task;
use swarm_specs::task::TaskState;
use swarm_specs::task::TaskStatus;
use swarm_specs::units::parse_constraint;

use super::*;
use crate::ca::Role;
use crate::cluster::Availability;
use crate::cluster::NodeDescription;
use crate::cluster::NodeStatus;

const GIB: u64 = 1 << 30;
const CPU: u64 = 1_000_000_000;

fn node(id: &str) -> Node {
    let description = NodeDescription {
        hostname: format!("host-{id}"),
        engine_version: None,
        os: "linux".into(),
        arch: "x86_64".into(),
        nano_cpus: 4 * CPU,
        memory_bytes: 8 * GIB,
        engine_labels: BTreeMap::new(),
        drivers: vec!["docker".into(), "process".into()],
    };
    Node::joining(id, Role::Worker, "10.0.0.1:4789", 0, description, NodeStatus::Ready, 0)
}

fn labelled(id: &str, labels: &[(&str, &str)]) -> Node {
    let mut n = node(id);
    n.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    n
}

fn spec() -> TaskSpec {
    TaskSpec::with_command(Driver::Process, None, vec!["sleep".into(), "1000".into()])
}

fn task(id: &str, service: &str, spec: &TaskSpec) -> Task {
    Task {
        id: id.into(),
        service: service.into(),
        slot: None,
        node_id: None,
        spec_version: 1,
        spec: spec.clone(),
        desired_state: TaskState::Running,
        status: TaskStatus::new(TaskState::Pending, 0, "pending"),
        created_at: 0,
        ports: Vec::new(),
        networks: Vec::new(),
        started_at: None,
    }
}

fn tasks(n: usize, service: &str, spec: &TaskSpec) -> Vec<Task> {
    (0..n).map(|i| task(&format!("{service}-{i}"), service, spec)).collect()
}

fn running(id: &str, service: &str, spec: &TaskSpec, node_id: &str) -> Task {
    let mut t = task(id, service, spec);
    t.node_id = Some(node_id.into());
    t.status = TaskStatus::new(TaskState::Running, 0, "started");
    t
}

fn no_ports(_: &str) -> Vec<PortConfig> {
    Vec::new()
}

fn no_failures(_: &str, _: &str) -> u32 {
    0
}

fn run(nodes: &[Node], existing: &[Task], pending: &[Task]) -> Vec<Decision> {
    schedule(nodes, existing, pending, &no_ports, &no_failures)
}

/// Tasks placed per node (nodes without any are left out).
fn per_node(decisions: &[Decision]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for d in decisions {
        if let Decision::Assign { node_id, .. } = d {
            *out.entry(node_id.clone()).or_default() += 1;
        }
    }
    out
}

fn reasons(decisions: &[Decision]) -> Vec<String> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Unplaceable { reason, .. } => Some(reason.clone()),
            Decision::Assign { .. } => None,
        })
        .collect()
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn constraint(key: &str, op: ConstraintOp, value: &str) -> Constraint {
    Constraint {
        key: key.into(),
        op,
        value: value.into(),
    }
}

fn constrained(constraints: Vec<Constraint>) -> TaskSpec {
    let mut s = spec();
    s.placement.constraints = constraints;
    s
}

#[test]
fn only_ready_active_nodes_take_tasks() {
    let mut down = node("down");
    down.status = NodeStatus::Down;
    let mut unknown = node("unknown");
    unknown.status = NodeStatus::Unknown;
    let mut paused = node("paused");
    paused.availability = Availability::Pause;
    let mut drained = node("drained");
    drained.availability = Availability::Drain;
    let nodes = [down, unknown, paused, drained];
    let decisions = run(&nodes, &[], &tasks(2, "web", &spec()));
    assert_eq!(
        reasons(&decisions),
        vec!["no suitable node (4 nodes: 1 down, 1 not ready, 1 paused, 1 drained)"; 2]
    );

    let nodes = [nodes[2].clone(), node("ok")];
    assert_eq!(
        per_node(&run(&nodes, &[], &tasks(3, "web", &spec()))),
        counts(&[("ok", 3)])
    );
}

#[test]
fn a_node_without_the_driver_is_skipped() {
    let mut no_docker = node("a");
    no_docker.description.drivers = vec!["process".into()];
    let mut docker = spec();
    docker.driver = Driver::Docker;
    let decisions = run(&[no_docker.clone()], &[], &tasks(1, "web", &docker));
    assert_eq!(
        reasons(&decisions),
        vec!["no suitable node (1 node: 1 lacks the docker driver)"]
    );
    assert_eq!(
        per_node(&run(&[no_docker, node("b")], &[], &tasks(2, "web", &docker))),
        counts(&[("b", 2)])
    );
}

#[test]
fn reservations_accumulate_across_a_batch_and_count_existing_tasks() {
    let mut big = spec();
    big.resources.reservations.memory_bytes = 3 * GIB;
    // 8 GiB: 3 tasks of 3 GiB do not fit, 2 do.
    let decisions = run(&[node("a")], &[], &tasks(3, "db", &big));
    assert_eq!(per_node(&decisions), counts(&[("a", 2)]));
    assert_eq!(
        reasons(&decisions),
        vec!["no suitable node (1 node: 1 lacks 3 GiB memory)"]
    );

    // An existing task already holds 3 GiB: one more fits.
    let existing = [running("old", "db", &big, "a")];
    assert_eq!(
        per_node(&run(&[node("a")], &existing, &tasks(2, "db", &big))),
        counts(&[("a", 1)])
    );

    // A finished task holds nothing.
    let mut done = running("done", "db", &big, "a");
    done.status = TaskStatus::new(TaskState::Complete, 0, "finished");
    assert_eq!(
        per_node(&run(&[node("a")], &[done], &tasks(2, "db", &big))),
        counts(&[("a", 2)])
    );

    let mut cpus = spec();
    cpus.resources.reservations.nano_cpus = 3 * CPU / 2;
    let decisions = run(&[node("a")], &[], &tasks(3, "cpu", &cpus));
    assert_eq!(per_node(&decisions), counts(&[("a", 2)]));
    assert_eq!(reasons(&decisions), vec!["no suitable node (1 node: 1 lacks 1.5 CPUs)"]);

    let mut both = spec();
    both.resources.reservations = ResourceAmounts {
        nano_cpus: 8 * CPU,
        memory_bytes: 16 * GIB,
        pids: 0,
    };
    assert_eq!(
        reasons(&run(&[node("a"), node("b")], &[], &tasks(1, "x", &both))),
        vec!["no suitable node (2 nodes: 2 lack 8 CPUs and 16 GiB memory)"]
    );
}

#[test]
fn constraints_match_each_key() {
    let mut n = labelled("n1", &[("zone", "east")]);
    n.role = Role::Manager;
    n.description.engine_labels.insert("disk".into(), "ssd".into());
    n.addr = "192.168.1.20:2377".into();
    let matching = [
        "node.id==n1",
        "node.hostname==host-n1",
        "node.role==manager",
        "node.platform.os==linux",
        "node.platform.arch==x86_64",
        "node.labels.zone==east",
        "engine.labels.disk==ssd",
        "node.ip==192.168.1.20",
        "node.ip==192.168.0.0/16",
        "node.id!=n2",
        "node.role!=worker",
        "node.ip!=10.0.0.0/8",
    ];
    for text in matching {
        let c = parse_constraint(text).unwrap();
        assert!(filters::constraint_matches(&n, &c), "{text} should match");
    }
    let failing = [
        "node.id==n2",
        "node.hostname!=host-n1",
        "node.role==worker",
        "node.platform.os==windows",
        "node.labels.zone==west",
        "engine.labels.disk!=ssd",
        "node.ip==192.168.1.21",
        "node.ip==10.0.0.0/8",
    ];
    for text in failing {
        let c = parse_constraint(text).unwrap();
        assert!(!filters::constraint_matches(&n, &c), "{text} should not match");
    }
}

#[test]
fn constraint_case_rules_follow_swarm() {
    let n = labelled("n1", &[("zone", "east")]);
    // Keys are case-insensitive, role and platform values too.
    for c in [
        constraint("NODE.ROLE", ConstraintOp::Eq, "Worker"),
        constraint("node.platform.os", ConstraintOp::Eq, "Linux"),
        constraint("Node.Platform.Arch", ConstraintOp::Eq, "X86_64"),
        constraint("NODE.LABELS.zone", ConstraintOp::Eq, "east"),
    ] {
        assert!(filters::constraint_matches(&n, &c), "{c} should match");
    }
    // Label names and values are case-sensitive.
    for c in [
        constraint("node.labels.Zone", ConstraintOp::Eq, "east"),
        constraint("node.labels.zone", ConstraintOp::Eq, "East"),
    ] {
        assert!(!filters::constraint_matches(&n, &c), "{c} should not match");
    }
}

#[test]
fn not_equal_on_a_missing_label_matches() {
    let nodes = [node("bare"), labelled("east", &[("zone", "east")])];
    let s = constrained(vec![parse_constraint("node.labels.zone!=east").unwrap()]);
    assert_eq!(
        per_node(&run(&nodes, &[], &tasks(2, "web", &s))),
        counts(&[("bare", 2)])
    );
    let s = constrained(vec![parse_constraint("node.labels.zone==east").unwrap()]);
    assert_eq!(
        per_node(&run(&nodes, &[], &tasks(2, "web", &s))),
        counts(&[("east", 2)])
    );
}

#[test]
fn host_mode_ports_conflict() {
    let ports = |service: &str| -> Vec<PortConfig> {
        let mode = if service == "mesh" {
            PublishMode::Ingress
        } else {
            PublishMode::Host
        };
        vec![PortConfig {
            target: 80,
            published: Some(8080),
            protocol: Protocol::Tcp,
            mode,
            host_ip: None,
        }]
    };
    let nodes = [node("a"), node("b"), node("c")];
    // Another service holds 8080/tcp on a.
    let existing = [running("old", "other", &spec(), "a")];
    let decisions = schedule(&nodes, &existing, &tasks(3, "web", &spec()), &ports, &no_failures);
    assert_eq!(per_node(&decisions), counts(&[("b", 1), ("c", 1)]));
    assert_eq!(
        reasons(&decisions),
        vec!["no suitable node (3 nodes: 3 have host port 8080/tcp in use)"]
    );
    // Ingress ports do not hold the node's port.
    let decisions = schedule(&nodes, &[], &tasks(6, "mesh", &spec()), &ports, &no_failures);
    assert_eq!(per_node(&decisions), counts(&[("a", 2), ("b", 2), ("c", 2)]));
}

#[test]
fn max_replicas_per_node_caps_each_node() {
    let mut s = spec();
    s.placement.max_replicas_per_node = 2;
    let existing = [running("old", "web", &s, "a")];
    let decisions = run(&[node("a"), node("b")], &existing, &tasks(4, "web", &s));
    assert_eq!(per_node(&decisions), counts(&[("a", 1), ("b", 2)]));
    assert_eq!(
        reasons(&decisions),
        vec!["no suitable node (2 nodes: 2 are at max_replicas_per_node 2)"]
    );
}

#[test]
fn spreads_evenly() {
    let nodes = [node("a"), node("b"), node("c")];
    let decisions = run(&nodes, &[], &tasks(100, "web", &spec()));
    assert_eq!(per_node(&decisions), counts(&[("a", 34), ("b", 33), ("c", 33)]));
}

#[test]
fn fewest_tasks_of_the_service_then_fewest_overall() {
    let nodes = [node("a"), node("b"), node("c")];
    // a runs 2 tasks of another service, b runs 1 of this one.
    let existing = [
        running("o1", "other", &spec(), "a"),
        running("o2", "other", &spec(), "a"),
        running("w1", "web", &spec(), "b"),
    ];
    let decisions = run(&nodes, &existing, &tasks(2, "web", &spec()));
    assert_eq!(per_node(&decisions), counts(&[("a", 1), ("c", 1)]));
    let decisions = run(&nodes, &existing, &tasks(1, "web", &spec()));
    assert_eq!(per_node(&decisions), counts(&[("c", 1)]));
}

#[test]
fn a_node_where_the_service_keeps_failing_is_tried_last() {
    let nodes = [node("a"), node("b")];
    let failures = |service: &str, node: &str| if service == "web" && node == "a" { 5 } else { 0 };
    let existing = [running("o1", "web", &spec(), "b"), running("o2", "web", &spec(), "b")];
    let decisions = schedule(&nodes, &existing, &tasks(2, "web", &spec()), &no_ports, &failures);
    assert_eq!(per_node(&decisions), counts(&[("b", 2)]));
    // Other services still prefer it; and it is used when nothing else fits.
    let decisions = schedule(&nodes, &existing, &tasks(1, "api", &spec()), &no_ports, &failures);
    assert_eq!(per_node(&decisions), counts(&[("a", 1)]));
    let decisions = schedule(&nodes[..1], &[], &tasks(1, "web", &spec()), &no_ports, &failures);
    assert_eq!(per_node(&decisions), counts(&[("a", 1)]));
}

#[test]
fn one_spread_preference_evens_out_zones() {
    let nodes = [
        labelled("a1", &[("zone", "a")]),
        labelled("b1", &[("zone", "b")]),
        labelled("b2", &[("zone", "b")]),
        labelled("b3", &[("zone", "b")]),
        node("none"),
    ];
    let mut s = spec();
    s.placement.preferences = vec!["node.labels.zone".into()];
    let decisions = run(&nodes, &[], &tasks(9, "web", &s));
    assert_eq!(
        per_node(&decisions),
        counts(&[("a1", 3), ("b1", 1), ("b2", 1), ("b3", 1), ("none", 3)])
    );
}

#[test]
fn two_nested_spread_preferences_even_out_zones_then_racks() {
    let nodes = [
        labelled("a1-1", &[("zone", "a"), ("rack", "1")]),
        labelled("a2-1", &[("zone", "a"), ("rack", "2")]),
        labelled("a2-2", &[("zone", "a"), ("rack", "2")]),
        labelled("b1-1", &[("zone", "b"), ("rack", "1")]),
        labelled("b1-2", &[("zone", "b"), ("rack", "1")]),
        labelled("b1-3", &[("zone", "b"), ("rack", "1")]),
        labelled("b2-1", &[("zone", "b"), ("rack", "2")]),
    ];
    let mut s = spec();
    s.placement.preferences = vec!["spread=node.labels.zone".into(), "node.labels.rack".into()];
    // b already has 2 tasks in rack 2: the 10 new ones even out to 3 per rack.
    let existing = [running("o1", "web", &s, "b2-1"), running("o2", "web", &s, "b2-1")];
    let decisions = run(&nodes, &existing, &tasks(10, "web", &s));
    assert_eq!(
        per_node(&decisions),
        counts(&[
            ("a1-1", 3),
            ("a2-1", 2),
            ("a2-2", 1),
            ("b1-1", 1),
            ("b1-2", 1),
            ("b1-3", 1),
            ("b2-1", 1),
        ])
    );
}

#[test]
fn explains_a_mixed_case_with_counts_and_sizes() {
    let mut small_east = labelled("e1", &[("zone", "east")]);
    small_east.description.memory_bytes = GIB;
    let mut small_east2 = labelled("e2", &[("zone", "east")]);
    small_east2.description.memory_bytes = 3 * GIB / 2;
    let nodes = [
        labelled("w1", &[("zone", "west")]),
        labelled("w2", &[("zone", "west")]),
        node("w3"),
        small_east,
        small_east2,
    ];
    let mut s = constrained(vec![parse_constraint("node.labels.zone==east").unwrap()]);
    s.resources.reservations.memory_bytes = 2 * GIB;
    let decisions = run(&nodes, &[], &tasks(1, "db", &s));
    assert_eq!(
        decisions,
        vec![Decision::Unplaceable {
            task_id: "db-0".into(),
            reason: "no suitable node (5 nodes: 3 not matching constraint node.labels.zone==east, 2 lack 2 GiB memory)"
                .into(),
        }]
    );
    assert_eq!(
        run(&[], &[], &tasks(1, "db", &s)),
        vec![Decision::Unplaceable {
            task_id: "db-0".into(),
            reason: "no suitable node (0 nodes)".into(),
        }]
    );
    assert_eq!(filters::human_bytes(512 << 20), "512 MiB");
    assert_eq!(filters::human_cpus(CPU), "1 CPU");
    assert_eq!(filters::human_cpus(CPU / 2), "0.5 CPUs");
}

#[test]
fn decisions_follow_the_pending_order_across_groups() {
    let mut other = spec();
    other.env.insert("MODE".into(), Some("b".into()));
    let pending = [
        task("t1", "web", &spec()),
        task("t2", "api", &spec()),
        task("t3", "web", &other),
        task("t4", "web", &spec()),
    ];
    let ids: Vec<String> = run(&[node("a")], &[], &pending)
        .into_iter()
        .map(|d| match d {
            Decision::Assign { task_id, .. } | Decision::Unplaceable { task_id, .. } => task_id,
        })
        .collect();
    assert_eq!(ids, ["t1", "t2", "t3", "t4"]);
}

#[test]
fn places_ten_thousand_tasks_on_a_thousand_nodes() {
    let nodes: Vec<Node> = (0..1000).map(|i| node(&format!("n{i}"))).collect();
    let mut s = spec();
    s.resources.reservations.memory_bytes = 256 << 20;
    let decisions = run(&nodes, &[], &tasks(10_000, "web", &s));
    assert_eq!(per_node(&decisions).values().sum::<usize>(), 10_000);
}

fn arb_node(i: usize) -> impl Strategy<Value = Node> {
    (
        prop::sample::select(vec!["", "east", "west"]),
        1u64..=8,
        0u8..6,
        any::<bool>(),
    )
        .prop_map(move |(zone, gib, state, docker)| {
            let mut n = if zone.is_empty() {
                node(&format!("n{i}"))
            } else {
                labelled(&format!("n{i}"), &[("zone", zone)])
            };
            n.description.memory_bytes = gib * GIB;
            match state {
                0 => n.status = NodeStatus::Down,
                1 => n.availability = Availability::Drain,
                _ => {}
            }
            if !docker {
                n.description.drivers = vec!["process".into()];
            }
            n
        })
}

fn arb_spec() -> impl Strategy<Value = TaskSpec> {
    (
        0u64..4,
        prop::option::of((any::<bool>(), prop::sample::select(vec!["east", "west"]))),
        0u64..3,
        any::<bool>(),
    )
        .prop_map(|(gib, zone, max, docker)| {
            let mut s = spec();
            s.resources.reservations.memory_bytes = gib * GIB;
            if let Some((eq, value)) = zone {
                let op = if eq { ConstraintOp::Eq } else { ConstraintOp::Ne };
                s.placement.constraints = vec![constraint("node.labels.zone", op, value)];
            }
            s.placement.max_replicas_per_node = max;
            if docker {
                s.driver = Driver::Docker;
            }
            s
        })
}

fn arb_case() -> impl Strategy<Value = (Vec<Node>, Vec<Task>)> {
    let nodes = (0usize..8).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>());
    let groups = prop::collection::vec((0usize..3, arb_spec(), 1usize..12), 0..5);
    (nodes, groups).prop_map(|(nodes, groups)| {
        let mut pending = Vec::new();
        for (g, (service, spec, n)) in groups.into_iter().enumerate() {
            for i in 0..n {
                pending.push(task(&format!("t{g}-{i}"), &format!("svc{service}"), &spec));
            }
        }
        (nodes, pending)
    })
}

proptest! {
    #[test]
    fn every_assignment_passes_the_filters((nodes, pending) in arb_case()) {
        let ports = |service: &str| -> Vec<PortConfig> {
            if service == "svc2" {
                vec![PortConfig {
                    target: 80,
                    published: Some(80),
                    protocol: Protocol::Tcp,
                    mode: PublishMode::Host,
                    host_ip: None,
                }]
            } else {
                Vec::new()
            }
        };
        let decisions = schedule(&nodes, &[], &pending, &ports, &no_failures);
        prop_assert_eq!(decisions.len(), pending.len());
        let mut memory: BTreeMap<&str, u64> = BTreeMap::new();
        let mut per_service: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        // A service's tasks can have different specs (during an update): each is placed while its node holds fewer
        // than its own max_replicas_per_node of the service, and a task of another spec may join later, as in
        // swarmkit. So what holds afterwards is the count per spec.
        let mut per_spec: BTreeMap<(&str, &str, String), u64> = BTreeMap::new();
        for (decision, task) in decisions.iter().zip(&pending) {
            let Decision::Assign { task_id, node_id } = decision else { continue };
            prop_assert_eq!(task_id, &task.id);
            let n = nodes.iter().find(|n| &n.id == node_id).unwrap();
            prop_assert!(n.status == NodeStatus::Ready && n.availability == Availability::Active);
            prop_assert!(filters::check_driver(n, task.spec.driver).is_ok());
            for c in &task.spec.placement.constraints {
                let zone = n.labels.get("zone").map(String::as_str).unwrap_or("");
                prop_assert_eq!(zone == c.value, c.op == ConstraintOp::Eq, "{} on {:?}", c, zone);
            }
            *memory.entry(&n.id).or_default() += task.spec.resources.reservations.memory_bytes;
            prop_assert!(memory[n.id.as_str()] <= n.description.memory_bytes);
            let count = per_service.entry((&n.id, &task.service)).or_default();
            *count += 1;
            prop_assert!(task.service != "svc2" || *count <= 1, "host port 80 taken twice on {}", n.id);
            let spec = serde_json::to_string(&task.spec).unwrap();
            let count = per_spec.entry((&n.id, &task.service, spec)).or_default();
            *count += 1;
            let max = task.spec.placement.max_replicas_per_node;
            prop_assert!(max == 0 || *count <= max);
        }
    }
}
