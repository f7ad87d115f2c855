//! A whole cluster in one process, for the scale simulation (`benches/scale.rs`) and its small CI test.
//!
//! Real managers — [`Manager`], the redb state machine, the orchestrator loop and the dispatcher — with Raft over
//! the in-memory network of [`crate::store::testing`], and many simulated worker nodes with a fake runtime: each
//! node is a `Ready` record with resources, heartbeats the leader, holds a dispatcher session (the same stream the
//! HTTP route feeds, without HTTP) and "runs" every task it is given at once, reporting
//! accepted → starting → running through the dispatcher's status path.
//!
//! The nodes talk to the leader found at start; a leader change is not followed (the scale runs do not need it).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use swarm_specs::spec::Driver;
use swarm_specs::spec::EndpointMode;
use swarm_specs::spec::ServiceMode;
use swarm_specs::spec::ServiceSpec;
use swarm_specs::spec::TaskSpec;
use swarm_specs::spec::UpdateConfig;
use swarm_specs::task::Task;
use swarm_specs::task::TaskState;
use swarm_specs::task::TaskStatus;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ca::Role;
use crate::cluster::now_millis;
use crate::cluster::Availability;
use crate::cluster::Cluster;
use crate::cluster::Node;
use crate::cluster::NodeDescription;
use crate::cluster::NodeStatus;
use crate::cluster::Settings;
use crate::dispatcher::Dispatcher;
use crate::dispatcher::SessionMessage;
use crate::manager::Manager;
use crate::manager::ManagerConfig;
use crate::objects::Service;
use crate::raftnet::PeerClient;
use crate::store;
use crate::store::testing::Router;
use crate::store::Object;
use crate::store::Request;

/// The cluster: managers (index 0 is the leader at start) and their dispatchers.
pub struct Sim {
    pub router: Router,
    pub managers: Vec<Arc<Manager>>,
    pub dispatchers: Vec<Arc<Dispatcher>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub nodes: Vec<FakeNode>,
    /// Tasks whose `running` report the leader acknowledged (may count a task twice after a resend).
    pub reported_running: Arc<AtomicUsize>,
}

/// One simulated worker.
pub struct FakeNode {
    pub id: String,
    /// Set to stop the node: no more heartbeats, its session is dropped.
    pub stopped: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// The worker record of simulated node `i`: 64 CPUs, 256 GiB, in one of three zones.
pub fn worker(i: usize) -> Node {
    let now = now_millis();
    Node {
        id: node_id(i),
        role: Role::Worker,
        availability: Availability::Active,
        labels: BTreeMap::from([("zone".to_string(), ["a", "b", "c"][i % 3].to_string())]),
        status: NodeStatus::Ready,
        status_message: String::new(),
        addr: format!("10.{}.{}.{}", i / 65_536, (i / 256) % 256, i % 256),
        manager_addr: None,
        raft_id: None,
        description: NodeDescription {
            hostname: format!("host{i:05}"),
            engine_version: None,
            os: "linux".into(),
            arch: "x86_64".into(),
            nano_cpus: 64_000_000_000,
            memory_bytes: 256 << 30,
            engine_labels: BTreeMap::new(),
            drivers: vec!["docker".into(), "process".into()],
        },
        created_at: now,
        updated_at: now,
        status_changed_at: now,
    }
}

pub fn node_id(i: usize) -> String {
    format!("sim-node-{i:05}")
}

/// A replicated service `name` with `replicas` tasks of a small image, 16 MiB reserved each.
pub fn service(name: &str, replicas: u64) -> Service {
    let mut task = TaskSpec::with_command(Driver::Docker, Some(format!("{name}:1")), vec!["serve".into()]);
    task.resources.reservations.memory_bytes = 16 << 20;
    let spec = ServiceSpec {
        name: name.to_string(),
        labels: BTreeMap::new(),
        mode: ServiceMode::Replicated { replicas },
        task,
        endpoint_mode: EndpointMode::Vip,
        ports: Vec::new(),
        update_config: UpdateConfig::default(),
        rollback_config: UpdateConfig::default(),
    };
    Service::new(format!("id-{name}"), spec, now_millis())
}

impl Sim {
    /// Starts `managers` managers with their stores under `dir` (a tmpfs keeps fsync cheap), forms the cluster with
    /// `settings` and Raft timing `raft` (see [`store::raft_config`]), and starts every manager's orchestrator loop,
    /// leader duties and dispatcher.
    pub async fn start(dir: &Path, managers: u64, settings: Settings, raft: openraft::Config) -> Sim {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let router = Router::new();
        let client = PeerClient::new(reqwest::Client::new());
        let (stop, stop_rx) = watch::channel(false);
        let config = ManagerConfig {
            write_timeout: Duration::from_secs(30),
            raft,
        };
        let mut ms = Vec::new();
        for id in 1..=managers {
            let sub: PathBuf = dir.join(format!("manager-{id}"));
            let keyring = Arc::new(crate::secrets::Keyring::new(sub.join("keys")));
            let m = Manager::start_with_network(
                &sub.join("raft"),
                id,
                &Router::peer(id).node_id,
                router.network(id),
                client.clone(),
                keyring,
                config.clone(),
            )
            .await
            .expect("start a manager");
            router.add(id, m.raft.clone());
            ms.push(m);
        }
        ms[0].initialize(Router::peer(1)).await.expect("initialize");
        ms[0]
            .raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.current_leader == Some(1), "leader")
            .await
            .expect("manager 1 leads");
        for id in 2..=managers {
            ms[0].add_manager(id, Router::peer(id)).await.expect("add a manager");
        }
        let cluster = Cluster {
            id: "sim".into(),
            created_at: now_millis(),
            ca_cert_pem: String::new(),
            ca_key_pem: String::new(),
            worker_secret: String::new(),
            manager_secret: String::new(),
            settings,
            removed_nodes: Default::default(),
        };
        ms[0]
            .write(Request {
                guards: vec![],
                ops: vec![store::put(&cluster)],
            })
            .await
            .expect("write the cluster record");
        let mut tasks = Vec::new();
        let mut dispatchers = Vec::new();
        for m in &ms {
            tasks.push(tokio::spawn(m.clone().run_leader_duties(stop_rx.clone())));
            tasks.push(tokio::spawn(crate::orchestrator::run::run(m.clone(), stop_rx.clone())));
            dispatchers.push(Dispatcher::start(m.clone(), stop_rx.clone()));
        }
        Sim {
            router,
            managers: ms,
            dispatchers,
            stop,
            tasks,
            nodes: Vec::new(),
            reported_running: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The manager that led at start; the fake nodes talk to it only.
    pub fn leader(&self) -> &Arc<Manager> {
        &self.managers[0]
    }

    /// Each manager's Raft term and the leader it knows: a term above the first leader's means an election
    /// happened, which the fake nodes do not follow (the run is then not valid).
    pub fn terms(&self) -> Vec<(u64, Option<u64>)> {
        self.managers
            .iter()
            .map(|m| {
                let metrics = m.raft.metrics().borrow().clone();
                (metrics.current_term, metrics.current_leader)
            })
            .collect()
    }

    /// Registers `count` more workers (Ready, in batches of 1,000 per Raft entry) and starts their fake agents:
    /// a heartbeat every `heartbeat` and a dispatcher session each.
    pub async fn add_nodes(&mut self, count: usize, heartbeat: Duration) {
        let first = self.nodes.len();
        let records: Vec<Node> = (first..first + count).map(worker).collect();
        for chunk in records.chunks(1_000) {
            self.leader()
                .write(Request {
                    guards: vec![],
                    ops: chunk.iter().map(store::put).collect(),
                })
                .await
                .expect("register nodes");
        }
        for node in records {
            let stopped = Arc::new(AtomicBool::new(false));
            let handle = tokio::spawn(run_node(
                self.leader().clone(),
                self.dispatchers[0].clone(),
                node.id.clone(),
                heartbeat,
                stopped.clone(),
                self.reported_running.clone(),
            ));
            self.nodes.push(FakeNode {
                id: node.id,
                stopped,
                handle,
            });
        }
    }

    /// Creates `services` replicated services totalling `tasks` tasks (the remainder on the first ones), in Raft
    /// entries of at most 100 services.
    pub async fn create_services(&self, services: usize, tasks: usize) {
        let all: Vec<Service> = (0..services)
            .map(|s| {
                let replicas = tasks / services + usize::from(s < tasks % services);
                service(&format!("sim_svc{s:04}"), replicas as u64)
            })
            .collect();
        for chunk in all.chunks(100) {
            self.leader()
                .write(Request {
                    guards: vec![],
                    ops: chunk.iter().map(store::put).collect(),
                })
                .await
                .expect("create services");
        }
    }

    /// Stops a node's fake agent: no more heartbeats, and its session ends.
    pub fn stop_node(&self, index: usize) {
        let node = &self.nodes[index];
        node.stopped.store(true, Ordering::SeqCst);
        node.handle.abort();
    }

    /// The leader's view of the tasks meant to run: (running, not yet running), and per node the running ones.
    pub fn census(&self) -> Census {
        // Only the three fields it counts are decoded: the count runs every 100 ms and must not weigh on the
        // leader's memory or CPU it is there to measure.
        #[derive(serde::Deserialize)]
        struct Row {
            node_id: Option<String>,
            desired_state: TaskState,
            status: State,
        }
        #[derive(serde::Deserialize)]
        struct State {
            state: TaskState,
        }
        let mut census = Census::default();
        for (key, value, _) in self.leader().sm.list_json(Task::TABLE) {
            let Ok(task) = value.decode::<Row>() else {
                tracing::warn!(key, "a task that does not decode");
                continue;
            };
            if task.desired_state != TaskState::Running {
                continue;
            }
            if task.status.state == TaskState::Running {
                census.running += 1;
                *census
                    .running_per_node
                    .entry(task.node_id.unwrap_or_default())
                    .or_default() += 1;
            } else {
                census.not_running += 1;
            }
        }
        census
    }

    /// Polls the leader's store until `want` tasks run and none is left behind, or `timeout` passes.
    pub async fn wait_running(&self, want: usize, timeout: Duration) -> Result<Census, Census> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let census = self.census();
            if census.running == want && census.not_running == 0 {
                return Ok(census);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(census);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for node in &self.nodes {
            node.handle.abort();
        }
        for m in &self.managers {
            m.shutdown().await;
        }
        for t in self.tasks {
            t.abort();
        }
    }
}

/// What the leader's store says about the tasks meant to run.
#[derive(Debug, Default, Clone)]
pub struct Census {
    pub running: usize,
    pub not_running: usize,
    pub running_per_node: HashMap<String, usize>,
}

/// One fake agent: heartbeats and a session; every task given to it runs at once.
async fn run_node(
    manager: Arc<Manager>,
    dispatcher: Arc<Dispatcher>,
    id: String,
    heartbeat: Duration,
    stopped: Arc<AtomicBool>,
    reported_running: Arc<AtomicUsize>,
) {
    let beats = {
        let (manager, id, stopped) = (manager.clone(), id.clone(), stopped.clone());
        // Spread the first beats over a period, as real nodes are.
        let offset = heartbeat.mul_f64((hash(&id) % 1000) as f64 / 1000.0);
        tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(heartbeat);
            while !stopped.load(Ordering::SeqCst) {
                tick.tick().await;
                let _ = manager.heartbeat(&id).await;
            }
        })
    };
    let _beats = AbortOnDrop(beats);
    let mut session = dispatcher.session(&id);
    while let Some(message) = session.recv().await {
        let mut updates = Vec::new();
        let mut running = 0;
        let mut take = |message: SessionMessage| {
            if let SessionMessage::Tasks { tasks } = message {
                for task in tasks {
                    let now = now_millis();
                    if task.desired_state <= TaskState::Running && task.status.state < TaskState::Running {
                        for state in [TaskState::Accepted, TaskState::Starting, TaskState::Running] {
                            updates.push((task.id.clone(), TaskStatus::new(state, now, "")));
                        }
                        running += 1;
                    } else if task.desired_state > TaskState::Running && task.status.state <= TaskState::Running {
                        updates.push((task.id.clone(), TaskStatus::new(TaskState::Shutdown, now, "stopped")));
                    }
                }
            }
        };
        take(message);
        // Everything already queued goes in the same report, as an agent batches its changes.
        while let Ok(more) = session.try_recv() {
            take(more);
        }
        if updates.is_empty() || stopped.load(Ordering::SeqCst) {
            continue;
        }
        let (dispatcher, id, reported) = (dispatcher.clone(), id.clone(), reported_running.clone());
        tokio::spawn(async move {
            // An agent keeps a report until the leader took it.
            for _ in 0..20 {
                if dispatcher.report(&id, updates.clone()).await.is_ok() {
                    reported.fetch_add(running, Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
