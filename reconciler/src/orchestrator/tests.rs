//! The orchestrator's decisions, told as small stories on a simulated cluster: [`Sim`] applies the actions as the
//! store would and plays the agents (assigned tasks start, stopped tasks stop).

use std::collections::BTreeMap;

use proptest::prelude::*;
use swarm_specs::spec::Driver;
use swarm_specs::spec::EndpointMode;
use swarm_specs::spec::FailureAction;
use swarm_specs::spec::RestartCondition;
use swarm_specs::spec::ServiceSpec;
use swarm_specs::spec::TaskSpec;
use swarm_specs::spec::UpdateConfig;

use super::*;
use crate::ca::Role;
use crate::cluster::NodeDescription;

const GIB: u64 = 1 << 30;

fn node(id: &str) -> Node {
    let description = NodeDescription {
        hostname: format!("host-{id}"),
        engine_version: None,
        os: "linux".into(),
        arch: "x86_64".into(),
        nano_cpus: 4_000_000_000,
        memory_bytes: 8 * GIB,
        engine_labels: BTreeMap::new(),
        drivers: vec!["process".into()],
    };
    Node::joining(id, Role::Worker, "10.0.0.1:4789", 0, description, NodeStatus::Ready, 0)
}

fn spec(name: &str, mode: ServiceMode) -> ServiceSpec {
    let mut task = TaskSpec::with_command(Driver::Process, None, vec!["sleep".into(), "1000".into()]);
    task.restart_policy.delay_ms = 0;
    ServiceSpec {
        name: name.into(),
        labels: BTreeMap::new(),
        mode,
        task,
        endpoint_mode: EndpointMode::Vip,
        ports: Vec::new(),
        update_config: UpdateConfig::default(),
        rollback_config: UpdateConfig::default(),
    }
}

fn replicated(name: &str, replicas: u64) -> ServiceSpec {
    spec(name, ServiceMode::Replicated { replicas })
}

/// A cluster in memory: the store's tasks with revisions, nodes, services and a clock.
struct Sim {
    nodes: Vec<Node>,
    services: Vec<Service>,
    tasks: BTreeMap<String, (Task, u64)>,
    revision: u64,
    now: u64,
    next_id: u64,
    history_limit: usize,
    /// Tasks that ran on a node when it went Down: out of reach, they run on until that node is back and its agent
    /// hears what to do.
    lost: std::collections::BTreeSet<String>,
}

impl Sim {
    fn new(nodes: &[&str]) -> Sim {
        Sim {
            nodes: nodes.iter().map(|n| node(n)).collect(),
            services: Vec::new(),
            tasks: BTreeMap::new(),
            revision: 1,
            now: 1_000_000,
            next_id: 0,
            history_limit: 5,
            lost: Default::default(),
        }
    }

    fn create(&mut self, spec: ServiceSpec) {
        self.services
            .push(Service::new(format!("svc-{}", spec.name), spec, self.now));
    }

    fn update(&mut self, name: &str, change: impl FnOnce(&mut ServiceSpec)) {
        let s = self.services.iter_mut().find(|s| s.spec.name == name).unwrap();
        let mut spec = s.spec.clone();
        change(&mut spec);
        if let Some(updated) = s.updated(spec, false, self.now) {
            *s = updated;
        }
    }

    /// The node stops answering: what runs there is out of the cluster's reach until it returns.
    fn node_down(&mut self, index: usize) {
        let id = self.nodes[index].id.clone();
        self.nodes[index].status = NodeStatus::Down;
        for (t, _) in self.tasks.values() {
            if t.node_id.as_deref() == Some(id.as_str()) && t.status.state <= TaskState::Running {
                self.lost.insert(t.id.clone());
            }
        }
    }

    fn node_mut(&mut self, id: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap()
    }

    /// One orchestrator pass, applied as the store applies it.
    fn step(&mut self) -> Actions {
        let tasks: Vec<(Task, u64)> = self.tasks.values().cloned().collect();
        let tasks: Vec<(&Task, u64)> = tasks.iter().map(|(t, r)| (t, *r)).collect();
        let inputs = Inputs {
            services: &self.services,
            tasks: &tasks,
            nodes: &self.nodes,
            networks: &[],
            now: self.now,
            history_limit: self.history_limit,
        };
        let mut next = self.next_id;
        let actions = reconcile(&inputs, &mut || {
            next += 1;
            format!("t{next:04}")
        });
        self.next_id = next;
        self.revision += 1;
        for t in &actions.create {
            assert!(self.tasks.insert(t.id.clone(), (t.clone(), self.revision)).is_none());
        }
        for (t, rev) in &actions.update {
            let old = self.tasks.get_mut(&t.id).unwrap();
            assert_eq!(old.1, *rev, "updates are guarded by the revision they read");
            *old = (t.clone(), self.revision);
        }
        for (id, rev) in &actions.delete {
            assert_eq!(self.tasks.remove(id).unwrap().1, *rev);
        }
        for changed in &actions.services {
            let s = self.services.iter_mut().find(|s| s.id == changed.id).unwrap();
            *s = changed.clone();
        }
        actions
    }

    /// The agents on Ready nodes: assigned tasks run, tasks told to stop stop.
    fn agents(&mut self) {
        self.now += 10;
        let ready: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Ready)
            .map(|n| n.id.clone())
            .collect();
        self.revision += 1;
        for (t, rev) in self.tasks.values_mut() {
            if !t.node_id.as_ref().is_some_and(|n| ready.contains(n)) {
                continue;
            }
            let next = if t.desired_state > TaskState::Running && t.status.state <= TaskState::Running {
                TaskState::Shutdown
            } else if t.desired_state == TaskState::Running && t.status.state == TaskState::Assigned {
                TaskState::Running
            } else {
                continue;
            };
            t.status = TaskStatus::new(next, self.now, "agent");
            if next == TaskState::Running {
                t.started_at = Some(self.now);
            }
            *rev = self.revision;
        }
    }

    /// Orchestrator and agents until nothing changes.
    fn settle(&mut self) {
        for _ in 0..50 {
            let actions = self.step();
            let before = self.tasks.clone();
            self.agents();
            if actions.is_empty() && before == self.tasks {
                return;
            }
        }
        panic!(
            "the cluster did not settle: {:#?}",
            self.tasks.values().map(|(t, _)| t).collect::<Vec<_>>()
        );
    }

    fn fail(&mut self, id: &str) {
        let t = &mut self.tasks.get_mut(id).unwrap().0;
        let mut status = TaskStatus::new(TaskState::Failed, self.now, "container exited");
        status.exit_code = Some(1);
        t.status = status;
    }

    /// Running tasks that should run, per node.
    fn running(&self, service: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (t, _) in self.tasks.values() {
            if t.service == service && t.desired_state == TaskState::Running && t.status.state == TaskState::Running {
                *out.entry(t.node_id.clone().unwrap()).or_default() += 1;
            }
        }
        out
    }

    fn running_count(&self, service: &str) -> usize {
        self.running(service).values().sum()
    }

    fn live_on(&self, service: &str, node: &str) -> Vec<&Task> {
        self.tasks
            .values()
            .map(|(t, _)| t)
            .filter(|t| {
                t.service == service && t.node_id.as_deref() == Some(node) && t.desired_state <= TaskState::Running
            })
            .collect()
    }

    /// At most one task per slot runs on a Ready node, unless a start-first update is under way — or a node that was
    /// Down came back and has not yet stopped what was moved away from it.
    fn check_one_per_slot(&self) {
        let mut seen: BTreeMap<(String, u64), usize> = BTreeMap::new();
        for (t, _) in self.tasks.values().filter(|(t, _)| !self.lost.contains(&t.id)) {
            let on_ready = t
                .node_id
                .as_ref()
                .and_then(|id| self.nodes.iter().find(|n| &n.id == id))
                .is_some_and(|n| n.status == NodeStatus::Ready);
            if let (Some(slot), true, true) = (t.slot, on_ready, t.status.state == TaskState::Running) {
                *seen.entry((t.service.clone(), slot)).or_default() += 1;
            }
        }
        for ((service, slot), n) in seen {
            assert!(n <= 1, "{n} tasks run in slot {service}.{slot}");
        }
    }
}

#[test]
fn a_replicated_service_gets_one_task_per_slot_spread_over_the_nodes() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    sim.create(replicated("web", 6));
    sim.settle();
    assert_eq!(
        sim.running("web"),
        BTreeMap::from([("n1".into(), 2), ("n2".into(), 2), ("n3".into(), 2)])
    );
    let slots: Vec<u64> = sim.tasks.values().filter_map(|(t, _)| t.slot).collect();
    assert_eq!(slots.len(), 6);
    assert_eq!((1..=6).filter(|s| slots.contains(s)).count(), 6);
    assert!(sim.step().is_empty(), "a second pass changes nothing");
}

#[test]
fn scaling_down_stops_the_highest_slots_and_forgets_them() {
    let mut sim = Sim::new(&["n1", "n2"]);
    sim.create(replicated("web", 4));
    sim.settle();
    sim.update("web", |s| s.mode = ServiceMode::Replicated { replicas: 2 });
    sim.settle();
    assert_eq!(sim.running_count("web"), 2);
    let slots: Vec<u64> = sim.tasks.values().filter_map(|(t, _)| t.slot).collect();
    assert!(slots.iter().all(|&s| s <= 2), "{slots:?}");
}

#[test]
fn a_failed_task_is_restarted_after_the_delay_and_kept_as_history() {
    let mut sim = Sim::new(&["n1"]);
    let mut web = replicated("web", 1);
    web.task.restart_policy.delay_ms = 5_000;
    sim.create(web);
    sim.settle();
    let first = sim.tasks.keys().next().unwrap().clone();
    sim.fail(&first);
    let actions = sim.step();
    assert!(actions.create.is_empty(), "not before the delay");
    assert_eq!(actions.wake_at, Some(sim.now + 5_000));
    assert_eq!(sim.tasks[&first].0.desired_state, TaskState::Shutdown);
    sim.now += 5_000;
    sim.settle();
    assert_eq!(sim.running_count("web"), 1);
    assert_eq!(sim.tasks.len(), 2, "the failed task stays in the history");
}

#[test]
fn restart_conditions_and_attempts_are_honoured() {
    let mut sim = Sim::new(&["n1"]);
    let mut none = replicated("none", 1);
    none.task.restart_policy.condition = RestartCondition::None;
    let mut limited = replicated("limited", 1);
    limited.task.restart_policy.max_attempts = 2;
    let mut on_failure = replicated("onfail", 1);
    on_failure.task.restart_policy.condition = RestartCondition::OnFailure;
    sim.create(none);
    sim.create(limited);
    sim.create(on_failure);
    sim.settle();
    let id_of = |sim: &Sim, service: &str| {
        sim.tasks
            .values()
            .find(|(t, _)| t.service == service && t.desired_state == TaskState::Running)
            .map(|(t, _)| t.id.clone())
    };
    let none_task = id_of(&sim, "none").unwrap();
    sim.fail(&none_task);
    // An exit with code 0 under on-failure is not restarted.
    let done = id_of(&sim, "onfail").unwrap();
    sim.tasks.get_mut(&done).unwrap().0.status = TaskStatus::new(TaskState::Complete, sim.now, "exited 0");
    for _ in 0..5 {
        if let Some(id) = id_of(&sim, "limited") {
            sim.fail(&id);
        }
        sim.settle();
    }
    assert_eq!(sim.running_count("none"), 0);
    assert_eq!(sim.running_count("onfail"), 0);
    let limited_tasks = sim.tasks.values().filter(|(t, _)| t.service == "limited").count();
    assert_eq!(limited_tasks, 3, "the first run and two restarts, then it gives up");
}

#[test]
fn tasks_on_a_node_that_goes_down_move_and_stay_stopped_when_it_returns() {
    let mut sim = Sim::new(&["n1", "n2"]);
    sim.create(replicated("web", 4));
    sim.settle();
    sim.node_down(0);
    sim.settle();
    assert_eq!(sim.running("web"), BTreeMap::from([("n2".into(), 4)]));
    let old_on_n1: Vec<String> = sim
        .tasks
        .values()
        .filter(|(t, _)| t.node_id.as_deref() == Some("n1"))
        .map(|(t, _)| t.id.clone())
        .collect();
    assert_eq!(old_on_n1.len(), 2);
    sim.node_mut("n1").status = NodeStatus::Ready;
    sim.settle();
    for id in old_on_n1 {
        let (t, _) = &sim.tasks[&id];
        assert_eq!(
            t.desired_state,
            TaskState::Shutdown,
            "the returning node stops what was moved"
        );
        assert_eq!(t.status.state, TaskState::Shutdown);
    }
    assert_eq!(sim.running_count("web"), 4);
    sim.check_one_per_slot();
}

#[test]
fn drain_moves_tasks_and_pause_keeps_them() {
    let mut sim = Sim::new(&["n1", "n2"]);
    sim.create(replicated("web", 2));
    sim.settle();
    sim.node_mut("n1").availability = Availability::Pause;
    sim.settle();
    assert_eq!(sim.running("web"), BTreeMap::from([("n1".into(), 1), ("n2".into(), 1)]));
    sim.node_mut("n1").availability = Availability::Drain;
    sim.settle();
    assert_eq!(sim.running("web"), BTreeMap::from([("n2".into(), 2)]));
}

#[test]
fn a_spec_change_replaces_one_slot_at_a_time_stop_first() {
    let mut sim = Sim::new(&["n1", "n2"]);
    sim.create(replicated("web", 3));
    sim.settle();
    sim.update("web", |s| {
        s.task
            .env
            .insert("V".into(), Some("2".into()))
            .map(|_| ())
            .unwrap_or(())
    });
    let actions = sim.step();
    assert_eq!(actions.update.len(), 1, "parallelism 1: one task told to stop");
    assert!(
        actions.create.is_empty(),
        "stop-first: nothing new before the old one stopped"
    );
    assert!(sim.step().is_empty(), "it waits until the agent saw it stop");
    sim.settle();
    let current = sim
        .tasks
        .values()
        .filter(|(t, _)| t.spec_version == 2 && t.status.state == TaskState::Running)
        .count();
    assert_eq!(current, 3);
    assert_eq!(sim.running_count("web"), 3);
    sim.check_one_per_slot();
}

#[test]
fn start_first_starts_the_new_task_before_stopping_the_old_one() {
    let mut sim = Sim::new(&["n1"]);
    let mut web = replicated("web", 1);
    web.update_config.order = UpdateOrder::StartFirst;
    sim.create(web);
    sim.settle();
    sim.update("web", |s| s.task.image = Some("two".into()));
    let actions = sim.step();
    assert_eq!(actions.create.len(), 1);
    assert!(actions
        .update
        .iter()
        .all(|(t, _)| t.desired_state == TaskState::Running));
    sim.agents();
    let actions = sim.step();
    assert_eq!(actions.update.len(), 1, "the new one runs: the old one stops");
    assert_eq!(actions.update[0].0.desired_state, TaskState::Shutdown);
    sim.settle();
    assert_eq!(sim.running_count("web"), 1);
}

#[test]
fn a_global_service_runs_once_per_eligible_node() {
    let mut sim = Sim::new(&["n1", "n2"]);
    sim.create(spec("agent", ServiceMode::Global));
    sim.settle();
    assert_eq!(
        sim.running("agent"),
        BTreeMap::from([("n1".into(), 1), ("n2".into(), 1)])
    );
    sim.nodes.push(node("n3"));
    sim.settle();
    assert_eq!(sim.live_on("agent", "n3").len(), 1, "a new node gets one");
    sim.node_mut("n2").availability = Availability::Drain;
    sim.node_mut("n3").status = NodeStatus::Down;
    sim.settle();
    assert!(sim.live_on("agent", "n2").is_empty(), "a drained node loses it");
    assert_eq!(
        sim.live_on("agent", "n3").len(),
        1,
        "a Down node keeps it: there is nowhere else for it"
    );
    sim.node_mut("n1").labels.insert("role".into(), "edge".into());
    sim.update("agent", |s| {
        s.task.placement.constraints = vec![swarm_specs::units::parse_constraint("node.labels.role==edge").unwrap()]
    });
    sim.settle();
    assert_eq!(sim.running("agent"), BTreeMap::from([("n1".into(), 1)]));
}

#[test]
fn a_global_task_waits_on_its_node_until_it_fits() {
    let mut sim = Sim::new(&["n1", "n2"]);
    sim.nodes[1].description.memory_bytes = GIB;
    let mut agent = spec("agent", ServiceMode::Global);
    agent.task.resources.reservations.memory_bytes = 2 * GIB;
    sim.create(agent);
    sim.settle();
    assert_eq!(sim.running("agent"), BTreeMap::from([("n1".into(), 1)]));
    let waiting = sim.live_on("agent", "n2");
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].status.state, TaskState::Pending);
    assert_eq!(
        waiting[0].status.err.as_deref(),
        Some("no suitable node (1 node: 1 lacks 2 GiB memory)")
    );
    sim.nodes[1].description.memory_bytes = 4 * GIB;
    sim.settle();
    assert_eq!(
        sim.running("agent"),
        BTreeMap::from([("n1".into(), 1), ("n2".into(), 1)])
    );
}

#[test]
fn history_is_kept_per_slot_up_to_the_limit() {
    let mut sim = Sim::new(&["n1"]);
    sim.history_limit = 3;
    sim.create(replicated("web", 1));
    sim.settle();
    for _ in 0..6 {
        let id = sim
            .tasks
            .values()
            .find(|(t, _)| t.desired_state == TaskState::Running)
            .map(|(t, _)| t.id.clone())
            .unwrap();
        sim.fail(&id);
        sim.settle();
    }
    assert_eq!(sim.tasks.len(), 3, "the running task and the two newest failures");
    let newest = sim.tasks.values().map(|(t, _)| t.created_at).max().unwrap();
    assert!(sim
        .tasks
        .values()
        .any(|(t, _)| t.created_at == newest && t.status.state == TaskState::Running));
}

#[test]
fn max_attempts_counts_past_the_history_limit() {
    let mut sim = Sim::new(&["n1"]);
    sim.history_limit = 2;
    let mut web = replicated("web", 1);
    web.task.restart_policy.max_attempts = 4;
    sim.create(web);
    sim.settle();
    for _ in 0..8 {
        if let Some(id) = sim
            .tasks
            .values()
            .find(|(t, _)| t.desired_state == TaskState::Running)
            .map(|(t, _)| t.id.clone())
        {
            sim.fail(&id);
        }
        sim.settle();
    }
    assert_eq!(sim.running_count("web"), 0, "it gave up");
    assert_eq!(sim.next_id, 5, "the first run and four restarts");
}

#[test]
fn removing_a_service_deletes_its_tasks() {
    let mut sim = Sim::new(&["n1"]);
    sim.create(replicated("web", 2));
    sim.settle();
    sim.services.clear();
    let actions = sim.step();
    assert_eq!(actions.delete.len(), 2);
    assert!(sim.tasks.is_empty());
}

#[test]
fn an_unplaceable_task_stays_pending_and_says_why() {
    let mut sim = Sim::new(&["n1", "n2"]);
    let mut big = replicated("big", 1);
    big.task.resources.reservations.memory_bytes = 64 * GIB;
    sim.create(big);
    sim.settle();
    let (t, _) = sim.tasks.values().next().unwrap();
    assert_eq!(t.status.state, TaskState::Pending);
    assert_eq!(
        t.status.err.as_deref(),
        Some("no suitable node (2 nodes: 2 lack 64 GiB memory)")
    );
    assert!(sim.step().is_empty(), "the same reason is not written again");
    sim.nodes[0].description.memory_bytes = 128 * GIB;
    sim.settle();
    assert_eq!(sim.running("big"), BTreeMap::from([("n1".into(), 1)]));
}

#[test]
fn a_replicated_job_runs_to_its_completions_with_bounded_concurrency() {
    let mut sim = Sim::new(&["n1", "n2"]);
    let mut job = spec(
        "migrate",
        ServiceMode::ReplicatedJob {
            max_concurrent: 2,
            total_completions: 5,
        },
    );
    job.task.restart_policy.condition = RestartCondition::OnFailure;
    sim.create(job);
    let mut completed = 0;
    for _ in 0..20 {
        sim.step();
        sim.agents();
        let live = sim
            .tasks
            .values()
            .filter(|(t, _)| t.desired_state == TaskState::Running && t.status.state <= TaskState::Running)
            .count();
        assert!(live <= 2, "max_concurrent 2, found {live}");
        // Every running task completes.
        for (t, _) in sim.tasks.values_mut() {
            if t.status.state == TaskState::Running {
                t.status = TaskStatus::new(TaskState::Complete, sim.now, "exited 0");
                completed += 1;
            }
        }
    }
    assert_eq!(completed, 5);
    assert!(sim.step().create.is_empty(), "done: no more tasks");
}

#[test]
fn duplicate_live_tasks_in_a_slot_are_cut_back_to_one() {
    // A leader change between a decision and its write can leave two tasks in one slot.
    let mut sim = Sim::new(&["n1", "n2"]);
    sim.create(replicated("web", 1));
    sim.settle();
    let (mut twin, _) = sim.tasks.values().next().unwrap().clone();
    twin.id = "twin".into();
    twin.node_id = Some("n2".into());
    twin.created_at += 1;
    sim.tasks.insert("twin".into(), (twin, 1));
    sim.settle();
    assert_eq!(sim.running_count("web"), 1);
    sim.check_one_per_slot();
}

impl Sim {
    fn service(&self, name: &str) -> &Service {
        self.services.iter().find(|s| s.spec.name == name).unwrap()
    }

    fn update_state(&self, name: &str) -> Option<UpdateState> {
        self.service(name).update_status.as_ref().map(|u| u.state)
    }

    /// Live tasks of the service's current version, and how many of them run.
    fn current(&self, name: &str) -> (usize, usize) {
        let version = self.service(name).task_version;
        let live: Vec<&Task> = self
            .tasks
            .values()
            .map(|(t, _)| t)
            .filter(|t| t.service == name && t.spec_version == version && t.desired_state == TaskState::Running)
            .collect();
        let running = live.iter().filter(|t| t.status.state == TaskState::Running).count();
        (live.len(), running)
    }

    /// Passes and agents until the service's rollout leaves `state` (time moves by `tick` when nothing else does).
    fn run_while(&mut self, name: &str, state: UpdateState, tick: u64) {
        for _ in 0..500 {
            if self.update_state(name) != Some(state) {
                return;
            }
            let actions = self.step();
            let before = self.tasks.clone();
            self.agents();
            if actions.is_empty() && before == self.tasks {
                self.now += tick;
            }
        }
        panic!("{name} stayed {state:?}");
    }

    fn new_tasks_failing(&mut self, version: u64) {
        let ids: Vec<String> = self
            .tasks
            .values()
            .filter(|(t, _)| t.spec_version == version && t.status.state == TaskState::Running)
            .map(|(t, _)| t.id.clone())
            .collect();
        for id in ids {
            self.fail(&id);
        }
    }
}

fn image(tag: &str) -> impl FnOnce(&mut ServiceSpec) + '_ {
    move |s| s.task.image = Some(tag.to_string())
}

#[test]
fn an_update_keeps_parallelism_keys_in_flight_and_completes_after_the_monitor() {
    let mut sim = Sim::new(&["n1", "n2"]);
    let mut web = replicated("web", 6);
    web.update_config.parallelism = 2;
    web.update_config.monitor_ms = 1_000;
    sim.create(web);
    sim.settle();
    assert_eq!(sim.update_state("web"), None, "creating is not an update");
    sim.update("web", image("two"));
    assert_eq!(sim.update_state("web"), Some(UpdateState::Updating));
    let mut most = 0;
    for _ in 0..100 {
        sim.step();
        // In flight: keys whose old task was told to stop, or whose new task does not run yet.
        let version = sim.service("web").task_version;
        let stopping = sim
            .tasks
            .values()
            .filter(|(t, _)| t.spec_version < version && t.desired_state > TaskState::Running)
            .filter(|(t, _)| t.status.state <= TaskState::Running)
            .count();
        let (live, running) = sim.current("web");
        most = most.max(stopping + live - running);
        sim.agents();
        if running == 6 {
            break;
        }
    }
    assert_eq!(most, 2, "two keys at a time");
    assert_eq!(
        sim.update_state("web"),
        Some(UpdateState::Updating),
        "watched for 1s first"
    );
    sim.now += 1_000;
    sim.step();
    let status = sim.service("web").update_status.clone().unwrap();
    assert_eq!(status.state, UpdateState::Completed);
    assert_eq!(status.message, "update completed");
    assert_eq!(status.completed_at, Some(sim.now));
}

#[test]
fn the_delay_spaces_successive_keys_and_names_when_to_wake() {
    let mut sim = Sim::new(&["n1"]);
    let mut web = replicated("web", 2);
    web.update_config.delay_ms = 10_000;
    sim.create(web);
    sim.settle();
    sim.update("web", image("two"));
    sim.settle();
    assert_eq!(sim.current("web"), (1, 1), "one key updated, the other waits the delay");
    let started = sim
        .tasks
        .values()
        .find_map(|(t, _)| (t.spec_version == 2).then_some(t.started_at))
        .flatten();
    let actions = sim.step();
    assert!(actions.is_empty());
    assert_eq!(actions.wake_at, Some(started.unwrap() + 10_000));
    sim.now = actions.wake_at.unwrap();
    sim.settle();
    assert_eq!(sim.current("web"), (2, 2));
}

#[test]
fn a_failed_update_pauses_and_resumes_with_the_same_spec() {
    let mut sim = Sim::new(&["n1", "n2"]);
    let mut web = replicated("web", 4);
    web.update_config.monitor_ms = 5_000;
    sim.create(web);
    sim.settle();
    sim.update("web", image("broken"));
    sim.step();
    sim.agents();
    sim.step();
    sim.agents();
    sim.new_tasks_failing(2);
    sim.step();
    let status = sim.service("web").update_status.clone().unwrap();
    assert_eq!(status.state, UpdateState::Paused);
    assert!(
        status
            .message
            .starts_with("update paused due to failure or early termination of task t"),
        "{}",
        status.message
    );
    sim.settle();
    let old = sim
        .tasks
        .values()
        .filter(|(t, _)| t.spec_version == 1 && t.status.state == TaskState::Running);
    assert_eq!(old.count(), 3, "no other key is updated while paused");
    assert_eq!(
        sim.running_count("web"),
        4,
        "the failed key is restarted, with the new spec"
    );
    // `service update` with the same spec resumes; failures before the resume no longer count.
    sim.update("web", |_| {});
    assert_eq!(sim.update_state("web"), Some(UpdateState::Updating));
    sim.run_while("web", UpdateState::Updating, 1_000);
    assert_eq!(sim.update_state("web"), Some(UpdateState::Completed));
    assert_eq!(sim.current("web"), (4, 4));
}

#[test]
fn a_failure_after_the_monitor_period_does_not_count() {
    let mut sim = Sim::new(&["n1"]);
    let mut web = replicated("web", 2);
    web.update_config.monitor_ms = 1_000;
    sim.create(web);
    sim.settle();
    sim.update("web", image("two"));
    sim.settle();
    assert_eq!(sim.current("web"), (2, 2));
    sim.now += 1_000;
    sim.new_tasks_failing(2);
    sim.run_while("web", UpdateState::Updating, 1_000);
    assert_eq!(sim.update_state("web"), Some(UpdateState::Completed));
}

#[test]
fn failure_action_rollback_restores_the_previous_spec_keeping_untouched_tasks() {
    let mut sim = Sim::new(&["n1", "n2"]);
    let mut web = replicated("web", 4);
    web.update_config.failure_action = FailureAction::Rollback;
    web.rollback_config.parallelism = 0;
    sim.create(web);
    sim.settle();
    let untouched: Vec<String> = sim
        .tasks
        .values()
        .filter(|(t, _)| t.slot != Some(1))
        .map(|(t, _)| t.id.clone())
        .collect();
    sim.update("web", image("broken"));
    sim.step();
    sim.agents();
    sim.step();
    sim.agents();
    sim.new_tasks_failing(2);
    sim.step();
    let service = sim.service("web").clone();
    let status = service.update_status.clone().unwrap();
    assert_eq!(status.state, UpdateState::RollbackStarted);
    assert!(status
        .message
        .starts_with("update rolled back due to failure or early termination of task"));
    assert_eq!(service.spec.task.image, None, "back to the previous spec");
    assert_eq!(service.previous_spec.unwrap().task.image.as_deref(), Some("broken"));
    sim.run_while("web", UpdateState::RollbackStarted, 1_000);
    assert_eq!(sim.update_state("web"), Some(UpdateState::RollbackCompleted));
    assert_eq!(sim.current("web"), (4, 4));
    for id in untouched {
        let (t, _) = &sim.tasks[&id];
        assert_eq!(t.status.state, TaskState::Running, "{id} never had to move");
    }
}

#[test]
fn the_failure_ratio_tolerates_failures_up_to_its_share_of_keys() {
    let mut sim = Sim::new(&["n1", "n2"]);
    let mut web = replicated("web", 4);
    web.update_config.parallelism = 0;
    web.update_config.max_failure_ratio_ppm = 500_000;
    sim.create(web);
    sim.settle();
    sim.update("web", image("two"));
    sim.step();
    sim.agents();
    sim.step();
    sim.agents();
    let failing: Vec<String> = sim
        .tasks
        .values()
        .filter(|(t, _)| t.spec_version == 2 && t.status.state == TaskState::Running)
        .map(|(t, _)| t.id.clone())
        .collect();
    assert_eq!(failing.len(), 4, "parallelism 0: all at once");
    sim.fail(&failing[0]);
    sim.fail(&failing[1]);
    sim.step();
    assert_eq!(
        sim.update_state("web"),
        Some(UpdateState::Updating),
        "2 of 4 is within 0.5"
    );
    sim.fail(&failing[2]);
    sim.step();
    assert_eq!(sim.update_state("web"), Some(UpdateState::Paused), "3 of 4 is not");
}

#[test]
fn a_manual_rollback_uses_the_rollback_config() {
    let mut sim = Sim::new(&["n1"]);
    let mut web = replicated("web", 3);
    web.update_config.parallelism = 1;
    web.rollback_config.parallelism = 0;
    web.rollback_config.monitor_ms = 0;
    sim.create(web);
    sim.settle();
    sim.update("web", image("two"));
    sim.run_while("web", UpdateState::Updating, 1_000);
    let rolled = sim
        .service("web")
        .rolled_back("manually requested rollback", sim.now)
        .unwrap();
    sim.services[0] = rolled;
    let actions = sim.step();
    assert_eq!(actions.update.len(), 3, "parallelism 0: every key at once");
    sim.run_while("web", UpdateState::RollbackStarted, 1_000);
    assert_eq!(sim.update_state("web"), Some(UpdateState::RollbackCompleted));
    assert_eq!(sim.service("web").spec.task.image, None);
}

#[derive(Debug, Clone)]
enum Event {
    Fail(usize),
    NodeDown(usize),
    NodeUp(usize),
    Drain(usize),
    Activate(usize),
    Scale(u64),
    Update,
    Agents,
    Pass,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0..20usize).prop_map(Event::Fail),
        (0..3usize).prop_map(Event::NodeDown),
        (0..3usize).prop_map(Event::NodeUp),
        (0..3usize).prop_map(Event::Drain),
        (0..3usize).prop_map(Event::Activate),
        (0..6u64).prop_map(Event::Scale),
        Just(Event::Update),
        Just(Event::Agents),
        Just(Event::Pass),
        Just(Event::Pass),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever happens, stop-first never runs two tasks in one slot on Ready nodes, and once every node is back and
    /// active the service converges to its replica count with one pass changing nothing after.
    #[test]
    fn invariants_hold_under_random_faults(events in proptest::collection::vec(event(), 1..40)) {
        let mut sim = Sim::new(&["n1", "n2", "n3"]);
        let mut web = replicated("web", 3);
        // Failures are the faults here, not reasons to pause the update (the rollout stories check that).
        web.update_config.failure_action = FailureAction::Continue;
        sim.create(web);
        let mut version = 0;
        for e in events {
            match e {
                Event::Fail(i) => {
                    let live: Vec<String> = sim.tasks.values()
                        .filter(|(t, _)| t.status.state == TaskState::Running)
                        .map(|(t, _)| t.id.clone()).collect();
                    if !live.is_empty() {
                        let id = live[i % live.len()].clone();
                        sim.fail(&id);
                    }
                }
                Event::NodeDown(i) => sim.node_down(i),
                Event::NodeUp(i) => sim.nodes[i].status = NodeStatus::Ready,
                Event::Drain(i) => sim.nodes[i].availability = Availability::Drain,
                Event::Activate(i) => sim.nodes[i].availability = Availability::Active,
                Event::Scale(n) => sim.update("web", |s| s.mode = ServiceMode::Replicated { replicas: n }),
                Event::Update => {
                    version += 1;
                    sim.update("web", |s| { s.task.env.insert("V".into(), Some(version.to_string())); });
                }
                Event::Agents => sim.agents(),
                Event::Pass => { sim.step(); }
            }
            sim.check_one_per_slot();
        }
        for n in &mut sim.nodes {
            n.status = NodeStatus::Ready;
            n.availability = Availability::Active;
        }
        sim.settle();
        sim.check_one_per_slot();
        let ServiceMode::Replicated { replicas } = sim.services[0].spec.mode else { unreachable!() };
        prop_assert_eq!(sim.running_count("web") as u64, replicas);
        let version = sim.services[0].task_version;
        prop_assert!(sim.tasks.values().all(|(t, _)| t.desired_state > TaskState::Running || t.spec_version == version));
        prop_assert!(
            sim.tasks.values().all(|(t, _)| t.status.state != TaskState::Running || t.desired_state == TaskState::Running),
            "every node is back: what was moved away from them has stopped"
        );
        prop_assert!(sim.step().is_empty());
    }
}

#[derive(Debug, Clone)]
enum Rollout {
    Fail(usize),
    Update,
    Rollback,
    Resume,
    Agents,
    Pass,
    Later,
}

fn rollout_event() -> impl Strategy<Value = Rollout> {
    prop_oneof![
        (0..20usize).prop_map(Rollout::Fail),
        Just(Rollout::Update),
        Just(Rollout::Rollback),
        Just(Rollout::Resume),
        Just(Rollout::Agents),
        Just(Rollout::Pass),
        Just(Rollout::Pass),
        Just(Rollout::Later),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Updates that fail, roll back by themselves or by hand, pause and resume, in any order: stop-first never runs
    /// two tasks in a slot, the update status is always one Swarm has, and once nothing fails any more the service
    /// settles to its replica count with the update ended (completed, paused or rolled back) and a pass changing
    /// nothing.
    #[test]
    fn rollouts_keep_one_task_per_slot_and_end(events in proptest::collection::vec(rollout_event(), 1..40)) {
        let mut sim = Sim::new(&["n1", "n2"]);
        let mut web = replicated("web", 3);
        web.update_config.failure_action = FailureAction::Rollback;
        web.update_config.monitor_ms = 1_000;
        web.update_config.delay_ms = 100;
        web.rollback_config.monitor_ms = 1_000;
        sim.create(web);
        let mut version = 0;
        for e in events {
            match e {
                Rollout::Fail(i) => {
                    let live: Vec<String> = sim.tasks.values()
                        .filter(|(t, _)| t.status.state == TaskState::Running)
                        .map(|(t, _)| t.id.clone()).collect();
                    if !live.is_empty() {
                        let id = live[i % live.len()].clone();
                        sim.fail(&id);
                    }
                }
                Rollout::Update => {
                    version += 1;
                    sim.update("web", |s| { s.task.env.insert("V".into(), Some(version.to_string())); });
                }
                Rollout::Rollback => {
                    if let Some(rolled) = sim.services[0].rolled_back("manually requested rollback", sim.now) {
                        sim.services[0] = rolled;
                    }
                }
                Rollout::Resume => sim.update("web", |_| {}),
                Rollout::Agents => sim.agents(),
                Rollout::Pass => { sim.step(); }
                Rollout::Later => sim.now += 700,
            }
            sim.check_one_per_slot();
        }
        // No more failures: run until nothing changes and no timer is pending.
        for _ in 0..200 {
            let actions = sim.step();
            let before = sim.tasks.clone();
            sim.agents();
            sim.check_one_per_slot();
            if actions.is_empty() && before == sim.tasks {
                match actions.wake_at {
                    Some(at) => sim.now = sim.now.max(at),
                    None => break,
                }
            }
        }
        let state = sim.update_state("web");
        prop_assert!(
            !state.is_some_and(UpdateState::in_progress),
            "the update never ended: {:?}", sim.services[0].update_status
        );
        prop_assert_eq!(sim.running_count("web"), 3);
        prop_assert!(sim.step().is_empty());
    }
}
