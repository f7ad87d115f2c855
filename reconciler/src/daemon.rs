//! `swarm daemon`: the long-running node process. It owns the node's identity and certificates in its data
//! directory, serves the local CLI on a unix socket, and — once the node is in a swarm — runs the manager (Raft,
//! TLS API) or just the node session (heartbeats) according to its role, switching on promote and demote.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ca;
use crate::ca::Role;
use crate::cluster::now_millis;
use crate::cluster::Availability;
use crate::cluster::Cluster;
use crate::cluster::Node;
use crate::cluster::NodeDescription;
use crate::cluster::NodeStatus;
use crate::cluster::Settings;
use crate::dispatcher::Dispatcher;
use crate::manager::Manager;
use crate::manager::ManagerConfig;
use crate::manager::ManagerError;
use crate::raftnet::PeerClient;
use crate::store;
use crate::store::Peer;
use crate::store::Request;
use crate::tls;
use crate::wire::*;
use swarm_agent::supervisor::Supervisor;

/// Default port of the manager API and Raft, as Docker's 2377.
pub const DEFAULT_PORT: u16 = 2377;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The request cannot be served in the node's current state; the text says what to do.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Remote(String),
}

impl DaemonError {
    fn io(context: &str, e: impl std::fmt::Display) -> DaemonError {
        DaemonError::Io(format!("{context}: {e}"))
    }
}

pub const NOT_A_MANAGER: &str =
    "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster \
     state. Please run this command on a manager node or promote the current node to a manager.";
pub const NOT_IN_SWARM: &str =
    "This node is not a swarm manager. Use \"swarm init\" or \"swarm join\" to connect this node to swarm and try again.";

/// What the node remembers about itself across restarts (`<data>/node.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub node_id: String,
    pub cluster_id: String,
    pub role: Role,
    pub raft_id: u64,
    pub listen_addr: String,
    pub advertise_addr: String,
    /// Manager addresses to reach the cluster through, refreshed by every heartbeat.
    pub managers: Vec<String>,
}

/// How the daemon was started.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub data_dir: PathBuf,
    /// The Docker Engine's socket for the docker driver (None: process driver only).
    pub docker_socket: Option<PathBuf>,
    pub manager: ManagerConfig,
    /// What the node says about itself; probed at start (hostname, platform, resources, engine).
    pub description: NodeDescription,
}

struct Certs {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// Things running for the current role; dropped (stopped) on a role change or leave.
struct Running {
    manager: Option<Arc<Manager>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    server_cert: Option<Arc<tls::ReloadableCert>>,
}

pub struct Daemon {
    pub options: DaemonOptions,
    state: RwLock<Option<NodeState>>,
    running: tokio::sync::Mutex<Option<Running>>,
    /// Quick access for request handlers; mirrors `running.manager`.
    manager: RwLock<Option<Arc<Manager>>>,
    /// The leader's dispatcher (managers only; it answers only while this manager leads).
    dispatcher: RwLock<Option<Arc<Dispatcher>>>,
    /// The GitOps loop (managers only; it syncs only while this manager leads).
    gitops: RwLock<Option<Arc<crate::gitops::run::GitOps>>>,
    /// The node's tasks: lives from joining to leaving, across role changes, so tasks never restart with them.
    agent: std::sync::Mutex<Option<Agent>>,
    /// Where the leader was last seen, to open the session there directly.
    leader_hint: Arc<std::sync::Mutex<Option<String>>>,
    client: PeerClient,
    /// The cluster's secrets key as this manager holds it (`<data>/secrets`); survives role restarts, so an unlocked
    /// manager stays unlocked.
    keyring: Arc<crate::secrets::Keyring>,
}

/// The node's task runner and the loop reporting its status changes.
struct Agent {
    supervisor: Arc<Supervisor>,
    stop: watch::Sender<bool>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes a file atomically (temp file + rename), private to the owner.
fn write_private(path: &Path, data: &[u8]) -> Result<(), DaemonError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| DaemonError::io(&format!("cannot write {}", tmp.display()), e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| DaemonError::io("cannot write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| DaemonError::io(&format!("cannot write {}", path.display()), e))
}

fn random_u64() -> u64 {
    let id = ca::new_id();
    // new_id is random base-36; fold it into a non-zero u64.
    id.bytes()
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        })
        .max(1)
}

impl Daemon {
    pub fn new(options: DaemonOptions) -> Result<Arc<Daemon>, DaemonError> {
        std::fs::create_dir_all(options.data_dir.join("tls"))
            .map_err(|e| DaemonError::io(&format!("cannot create {}", options.data_dir.display()), e))?;
        let state: Option<NodeState> = read_json(&options.data_dir.join("node.json"));
        let client = PeerClient::new(
            crate::tls::placeholder_client().map_err(|e| DaemonError::io("cannot make the HTTP client", e))?,
        );
        let keyring = Arc::new(crate::secrets::Keyring::new(options.data_dir.join("secrets")));
        Ok(Arc::new(Daemon {
            options,
            state: RwLock::new(state),
            running: tokio::sync::Mutex::new(None),
            manager: RwLock::new(None),
            dispatcher: RwLock::new(None),
            gitops: RwLock::new(None),
            agent: std::sync::Mutex::new(None),
            leader_hint: Arc::new(std::sync::Mutex::new(None)),
            client,
            keyring,
        }))
    }

    /// This node's copy of the cluster's secrets key (managers only hold one).
    pub fn keyring(&self) -> &Arc<crate::secrets::Keyring> {
        &self.keyring
    }

    pub fn state(&self) -> Option<NodeState> {
        self.state.read().ok().and_then(|s| s.clone())
    }

    pub fn dispatcher(&self) -> Option<Arc<Dispatcher>> {
        self.dispatcher.read().ok().and_then(|d| d.clone())
    }

    pub fn gitops(&self) -> Option<Arc<crate::gitops::run::GitOps>> {
        self.gitops.read().ok().and_then(|g| g.clone())
    }

    pub fn supervisor(&self) -> Option<Arc<Supervisor>> {
        self.agent
            .lock()
            .ok()
            .and_then(|a| a.as_ref().map(|a| a.supervisor.clone()))
    }

    /// The node's current list of managers, as the session and the reporter read it (it changes with heartbeats).
    fn managers_source(self: &Arc<Self>) -> crate::node_agent::Managers {
        let me = Arc::downgrade(self);
        Arc::new(move || {
            me.upgrade()
                .and_then(|d| d.state())
                .map(|s| s.managers)
                .unwrap_or_default()
        })
    }

    /// Starts the node's task runner once the node has an identity; keeps it across role changes.
    fn ensure_agent(self: &Arc<Self>, state: &NodeState) -> Arc<Supervisor> {
        let mut slot = self.agent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(agent) = slot.as_ref() {
            return agent.supervisor.clone();
        }
        let tasks_dir = self.options.data_dir.join("tasks");
        let mut drivers: Vec<Arc<dyn swarm_agent::driver::Driver>> = vec![Arc::new(
            swarm_agent::driver::process::ProcessDriver::new(&tasks_dir, &state.node_id),
        )];
        if let Some(socket) = &self.options.docker_socket {
            drivers.push(Arc::new(swarm_agent::driver::docker::DockerDriver::connect(
                socket,
                &state.node_id,
            )));
        }
        let (reports, updates) = tokio::sync::mpsc::unbounded_channel();
        let files = Arc::new(swarm_agent::files::TaskFiles::new(
            self.options.data_dir.join("task-files"),
        ));
        let supervisor = Supervisor::with_files(&state.node_id, drivers, reports, files);
        let (stop, stop_rx) = watch::channel(false);
        let managers = self.managers_source();
        tokio::spawn(crate::node_agent::run_reporter(
            updates,
            self.client.clone(),
            managers,
            self.leader_hint.clone(),
            stop_rx,
        ));
        *slot = Some(Agent {
            supervisor: supervisor.clone(),
            stop,
        });
        supervisor
    }

    pub fn manager(&self) -> Option<Arc<Manager>> {
        self.manager.read().ok().and_then(|m| m.clone())
    }

    /// The manager, or the error a worker (or a node outside a swarm) gives for cluster commands.
    pub fn require_manager(&self) -> Result<Arc<Manager>, DaemonError> {
        match (self.state(), self.manager()) {
            (_, Some(m)) => Ok(m),
            (Some(_), None) => Err(DaemonError::Refused(NOT_A_MANAGER.into())),
            (None, None) => Err(DaemonError::Refused(NOT_IN_SWARM.into())),
        }
    }

    fn tls_dir(&self) -> PathBuf {
        self.options.data_dir.join("tls")
    }

    fn raft_dir(&self) -> PathBuf {
        self.options.data_dir.join("raft")
    }

    fn save_state(&self, state: Option<NodeState>) -> Result<(), DaemonError> {
        let path = self.options.data_dir.join("node.json");
        match &state {
            Some(s) => write_private(&path, &serde_json::to_vec_pretty(s).unwrap_or_default())?,
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        if let Ok(mut slot) = self.state.write() {
            *slot = state;
        }
        Ok(())
    }

    fn save_certs(&self, certs: &Certs) -> Result<(), DaemonError> {
        let dir = self.tls_dir();
        write_private(&dir.join("ca.pem"), certs.ca_pem.as_bytes())?;
        write_private(&dir.join("node.key"), certs.key_pem.as_bytes())?;
        write_private(&dir.join("node.pem"), certs.cert_pem.as_bytes())
    }

    fn load_certs(&self) -> Result<Certs, DaemonError> {
        let dir = self.tls_dir();
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| DaemonError::io(&format!("cannot read {}", dir.join(name).display()), e))
        };
        Ok(Certs {
            ca_pem: read("ca.pem")?,
            cert_pem: read("node.pem")?,
            key_pem: read("node.key")?,
        })
    }

    fn use_certs(&self, certs: &Certs) -> Result<(), DaemonError> {
        let config = tls::client_config(&certs.ca_pem, &certs.cert_pem, &certs.key_pem)
            .map_err(|e| DaemonError::io("cannot use the node certificate", e))?;
        let raft = tls::raft_client_config(&config);
        let client = tls::http_client(config, Duration::from_secs(10)).map_err(|e| DaemonError::io("tls client", e))?;
        self.client.replace(client, Some(raft));
        Ok(())
    }

    /// Resumes the node's role after a restart.
    pub async fn resume(self: &Arc<Self>) -> Result<(), DaemonError> {
        let Some(state) = self.state() else { return Ok(()) };
        let certs = self.load_certs()?;
        self.use_certs(&certs)?;
        self.start_role(&state, &certs, None).await
    }

    /// Starts what the role needs: for a manager its Raft member and TLS API; for every node the session loop.
    /// Boxed, because roles change from inside the session loop that this starts (a recursive future).
    fn start_role<'a>(
        self: &'a Arc<Self>,
        state: &'a NodeState,
        certs: &'a Certs,
        init: Option<(Cluster, store::Op)>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), DaemonError>> + Send + 'a>> {
        Box::pin(async move {
            let mut running = self.running.lock().await;
            if let Some(old) = running.take() {
                self.stop_running(old).await;
            }
            let (stop, stop_rx) = watch::channel(false);
            let mut tasks = Vec::new();
            let mut server_cert = None;
            let mut manager = None;
            if state.role == Role::Manager {
                if let Err(e) = self.keyring.load() {
                    // Secrets cannot be used until this is fixed; everything else can.
                    tracing::error!("{e}");
                }
                let m = Manager::start(
                    &self.raft_dir(),
                    state.raft_id,
                    &state.node_id,
                    self.client.clone(),
                    self.keyring.clone(),
                    self.options.manager.clone(),
                )
                .await?;
                let cert = tls::ReloadableCert::new(&certs.ca_pem, &certs.cert_pem, &certs.key_pem)
                    .map_err(|e| DaemonError::io("cannot load the node certificate", e))?;
                let config = tls::server_config_reloadable(&certs.ca_pem, cert.clone())
                    .map_err(|e| DaemonError::io("cannot configure TLS", e))?;
                let listener = tokio::net::TcpListener::bind(&state.listen_addr)
                    .await
                    .map_err(|e| DaemonError::io(&format!("cannot listen on {}", state.listen_addr), e))?;
                let router = crate::api::cluster_router(self.clone());
                let raft = crate::api::raft_streams(self.clone());
                let mut rx = stop_rx.clone();
                tasks.push(tokio::spawn(async move {
                    let shutdown = async move {
                        let _ = rx.wait_for(|s| *s).await;
                    };
                    if let Err(e) = tls::serve(listener, config, router, Some(raft), shutdown).await {
                        tracing::error!("manager API stopped: {e}");
                    }
                }));
                if let Some((cluster, key_info)) = init {
                    let me = Peer {
                        addr: state.advertise_addr.clone(),
                        node_id: state.node_id.clone(),
                    };
                    m.initialize(me).await?;
                    let node = self.own_node(state);
                    m.write(Request {
                        guards: vec![],
                        ops: vec![store::put(&cluster), store::put(&node), key_info],
                    })
                    .await?;
                }
                tasks.push(tokio::spawn(m.clone().run_leader_duties(stop_rx.clone())));
                tasks.push(tokio::spawn(crate::orchestrator::run::run(m.clone(), stop_rx.clone())));
                tasks.push(tokio::spawn(crate::secrets::run(m.clone(), stop_rx.clone())));
                let (gitops, gitops_task) = crate::gitops::run::GitOps::start(
                    m.clone(),
                    self.options.data_dir.join("gitops"),
                    Arc::new(now_millis),
                    stop_rx.clone(),
                );
                tasks.push(gitops_task);
                if let Ok(mut slot) = self.gitops.write() {
                    *slot = Some(gitops);
                }
                server_cert = Some(cert);
                manager = Some(m);
            }
            let supervisor = self.ensure_agent(state);
            let managers = self.managers_source();
            tasks.push(tokio::spawn(crate::node_agent::run_session(
                supervisor,
                self.client.clone(),
                managers,
                self.leader_hint.clone(),
                stop_rx.clone(),
            )));
            if let Some(m) = &manager {
                if let Ok(mut slot) = self.dispatcher.write() {
                    *slot = Some(Dispatcher::start(m.clone(), stop_rx.clone()));
                }
            }
            tasks.push(tokio::spawn(session_loop(self.clone(), stop_rx)));
            if let Ok(mut slot) = self.manager.write() {
                *slot = manager.clone();
            }
            *running = Some(Running {
                manager,
                stop,
                tasks,
                server_cert,
            });
            Ok(())
        })
    }

    async fn stop_running(&self, old: Running) {
        let _ = old.stop.send(true);
        if let Some(m) = &old.manager {
            m.shutdown().await;
        }
        for t in &old.tasks {
            t.abort();
        }
        // Wait until they are gone: the API listener's port must be free before a new role binds it again.
        for t in old.tasks {
            let _ = t.await;
        }
        if let Ok(mut slot) = self.manager.write() {
            *slot = None;
        }
        if let Ok(mut slot) = self.dispatcher.write() {
            *slot = None;
        }
        if let Ok(mut slot) = self.gitops.write() {
            *slot = None;
        }
    }

    /// Stops and removes every task running on this node, and returns once they are gone (`swarm up` on Ctrl-C).
    /// The node stays in the swarm; on its next start its tasks are assigned again.
    pub async fn stop_tasks(&self) {
        let supervisor = self.supervisor();
        if let Some(supervisor) = supervisor {
            supervisor.clear().await;
        }
    }

    /// Stops and removes every task of this node and the task runner itself (on leave).
    async fn stop_agent(&self) {
        let agent = self.agent.lock().ok().and_then(|mut a| a.take());
        if let Some(agent) = agent {
            agent.supervisor.clear().await;
            let _ = agent.stop.send(true);
        }
    }

    fn own_node(&self, state: &NodeState) -> Node {
        Node::joining(
            &state.node_id,
            state.role,
            &state.advertise_addr,
            state.raft_id,
            self.options.description.clone(),
            NodeStatus::Ready,
            now_millis(),
        )
    }

    /// `swarm init`: a new cluster with this node as its only manager.
    pub async fn init(self: &Arc<Self>, req: InitRequest) -> Result<InitResponse, DaemonError> {
        if req.force_new_cluster {
            return self.force_new_cluster().await;
        }
        if self.state().is_some() {
            return Err(DaemonError::Refused(
                "This node is already part of a swarm. Use \"swarm leave\" to leave this swarm and join another one."
                    .into(),
            ));
        }
        let listen_addr = req.listen_addr.unwrap_or_else(|| format!("0.0.0.0:{DEFAULT_PORT}"));
        let advertise_addr = advertise(&req.advertise_addr, &listen_addr)?;
        let cluster_id = ca::new_id();
        let node_id = ca::new_id();
        let settings = Settings::default();
        let root = ca::RootCa::generate(&cluster_id, Duration::from_secs(20 * 365 * 24 * 3600))
            .map_err(|e| DaemonError::io("cannot create the cluster CA", e))?;
        let (key_pem, csr_pem) = ca::new_node_key(&node_id).map_err(|e| DaemonError::io("cannot create a key", e))?;
        let cert_pem = root
            .issue(
                &csr_pem,
                &node_id,
                Role::Manager,
                Duration::from_millis(settings.node_cert_validity_ms),
            )
            .map_err(|e| DaemonError::io("cannot issue the node certificate", e))?;
        let certs = Certs {
            ca_pem: root.cert_pem().to_string(),
            cert_pem,
            key_pem,
        };
        let cluster = Cluster {
            id: cluster_id.clone(),
            created_at: now_millis(),
            ca_cert_pem: root.cert_pem().to_string(),
            ca_key_pem: root.key_pem().to_string(),
            worker_secret: ca::new_secret(),
            manager_secret: ca::new_secret(),
            settings,
            removed_nodes: Default::default(),
        };
        let state = NodeState {
            node_id: node_id.clone(),
            cluster_id,
            role: Role::Manager,
            raft_id: random_u64(),
            listen_addr,
            advertise_addr: advertise_addr.clone(),
            managers: vec![advertise_addr.clone()],
        };
        let _ = std::fs::remove_dir_all(self.raft_dir());
        self.keyring.forget();
        let (key_info, unlock_key) = crate::secrets::initialize(&self.keyring, req.autolock)
            .map_err(|e| DaemonError::io("cannot create the cluster's secrets key", e))?;
        self.save_certs(&certs)?;
        self.use_certs(&certs)?;
        self.save_state(Some(state.clone()))?;
        let worker_token = ca::JoinToken {
            ca_digest: root.digest(),
            secret: cluster.worker_secret.clone(),
        }
        .to_string();
        if let Err(e) = self.start_role(&state, &certs, Some((cluster, key_info))).await {
            let _ = self.save_state(None);
            self.keyring.forget();
            return Err(e);
        }
        Ok(InitResponse {
            node_id,
            worker_token,
            advertise_addr,
            unlock_key: unlock_key.map(|k| k.reveal()),
        })
    }

    /// `swarm init --force-new-cluster`: this manager alone becomes the cluster again, keeping the data.
    async fn force_new_cluster(self: &Arc<Self>) -> Result<InitResponse, DaemonError> {
        let Some(state) = self.state().filter(|s| s.role == Role::Manager) else {
            return Err(DaemonError::Refused(
                "--force-new-cluster needs a node that was a manager: it rebuilds the cluster from this node's data"
                    .into(),
            ));
        };
        let manager = self.require_manager()?;
        let mut running = self.running.lock().await;
        if let Some(old) = running.take() {
            self.stop_running(old).await;
        }
        drop(running);
        // Every entry of this manager's log counts (an acknowledged write may not be applied here yet); keep every
        // object, then start a fresh Raft log holding only this manager.
        let applied = manager.apply_whole_log().await?;
        if applied > 0 {
            tracing::info!(
                entries = applied,
                "--force-new-cluster applied the rest of this manager's log"
            );
        }
        let mut ops = Vec::new();
        for table in manager.sm.tables() {
            for (key, value, _) in manager.sm.list_json(&table) {
                ops.push(store::Op::Put {
                    table: table.clone(),
                    key,
                    value,
                });
            }
        }
        let backup = self
            .options
            .data_dir
            .join(format!("raft.before-force-new-cluster.{}", now_millis()));
        std::fs::rename(self.raft_dir(), &backup)
            .map_err(|e| DaemonError::io("cannot set the old raft data aside", e))?;
        let certs = self.load_certs()?;
        let mut state = state;
        state.raft_id = random_u64();
        state.managers = vec![state.advertise_addr.clone()];
        self.save_state(Some(state.clone()))?;
        self.start_role(&state, &certs, None).await?;
        let m = self.require_manager()?;
        m.initialize(Peer {
            addr: state.advertise_addr.clone(),
            node_id: state.node_id.clone(),
        })
        .await?;
        // Other managers are no longer members: they show as Down managers until removed or re-joined.
        for op in ops.iter_mut() {
            if let store::Op::Put { table, value, .. } = op {
                if table == "nodes" {
                    if let Ok(mut node) = value.decode::<Node>() {
                        if node.id == state.node_id {
                            node.raft_id = Some(state.raft_id);
                            node.status = NodeStatus::Ready;
                        } else if node.role == Role::Manager {
                            node.status = NodeStatus::Down;
                            node.status_message = "not a member after --force-new-cluster".into();
                        }
                        *value = store::Json::encode(&node).unwrap_or_else(|_| value.clone());
                    }
                }
            }
        }
        m.write(Request { guards: vec![], ops }).await?;
        let cluster = m
            .cluster()
            .ok_or_else(|| DaemonError::Refused("the cluster record is missing".into()))?;
        let digest = ca::ca_digest(&cluster.ca_cert_pem).map_err(|e| DaemonError::io("CA", e))?;
        Ok(InitResponse {
            node_id: state.node_id,
            worker_token: ca::JoinToken {
                ca_digest: digest,
                secret: cluster.worker_secret,
            }
            .to_string(),
            advertise_addr: state.advertise_addr,
            unlock_key: None,
        })
    }

    /// `swarm join`: checks the manager's CA against the token, gets a certificate, starts the role.
    pub async fn join(self: &Arc<Self>, req: JoinRequest) -> Result<JoinResponse, DaemonError> {
        if self.state().is_some() {
            return Err(DaemonError::Refused(
                "This node is already part of a swarm. Use \"swarm leave\" to leave this swarm and join another one."
                    .into(),
            ));
        }
        let token: ca::JoinToken = req
            .token
            .parse()
            .map_err(|e: ca::CaError| DaemonError::Refused(format!("invalid join token: {e}")))?;
        let remote = with_default_port(&req.remote_addr);
        // 1. Fetch the CA without trusting anyone, and trust it only if it matches the token's digest.
        let bootstrap = tls::http_client(tls::bootstrap_client_config(), Duration::from_secs(10))
            .map_err(|e| DaemonError::io("tls client", e))?;
        let ca_pem = bootstrap
            .get(format!("https://{remote}/v1/ca"))
            .send()
            .await
            .map_err(|e| DaemonError::Remote(format!("cannot reach the manager at {remote}: {e}")))?
            .text()
            .await
            .map_err(|e| DaemonError::Remote(format!("cannot read the CA from {remote}: {e}")))?;
        let digest = ca::ca_digest(&ca_pem)
            .map_err(|e| DaemonError::Remote(format!("{remote} sent an invalid CA certificate: {e}")))?;
        if !ca::secrets_equal(&digest, &token.ca_digest) {
            return Err(DaemonError::Refused(format!(
                "the manager at {remote} presented a CA that does not match the join token: check the token, or \
                 someone may be intercepting the connection"
            )));
        }
        // 2. Ask for a certificate over a connection that verifies the manager against that CA.
        let listen_addr = req
            .listen_addr
            .clone()
            .unwrap_or_else(|| format!("0.0.0.0:{DEFAULT_PORT}"));
        let advertise_addr = advertise(&req.advertise_addr, &listen_addr)?;
        let provisional_id = ca::new_id();
        let (key_pem, csr_pem) =
            ca::new_node_key(&provisional_id).map_err(|e| DaemonError::io("cannot create a key", e))?;
        let raft_id = random_u64();
        let join_client = tls::http_client(
            tls::join_client_config(&ca_pem).map_err(|e| DaemonError::io("tls", e))?,
            Duration::from_secs(30),
        )
        .map_err(|e| DaemonError::io("tls client", e))?;
        let admission: Admission = post_json(
            &join_client,
            &format!("https://{remote}/v1/join"),
            &AdmissionRequest {
                token: req.token.clone(),
                csr_pem,
                addr: advertise_addr.clone(),
                raft_id,
                description: self.options.description.clone(),
            },
        )
        .await?;
        let certs = Certs {
            ca_pem,
            cert_pem: admission.cert_pem,
            key_pem,
        };
        let state = NodeState {
            node_id: admission.node_id.clone(),
            cluster_id: admission.cluster_id,
            role: admission.role,
            raft_id,
            listen_addr,
            advertise_addr: advertise_addr.clone(),
            managers: admission.managers,
        };
        self.save_certs(&certs)?;
        self.use_certs(&certs)?;
        let _ = std::fs::remove_dir_all(self.raft_dir());
        // A key of an earlier swarm is worthless here; a manager gets this one's from another manager.
        self.keyring.forget();
        self.save_state(Some(state.clone()))?;
        self.start_role(&state, &certs, None).await?;
        if state.role == Role::Manager {
            self.attach_to_raft(&state).await?;
        }
        Ok(JoinResponse {
            node_id: state.node_id,
            role: state.role,
        })
    }

    /// A new or promoted manager asks the leader to add it to the Raft membership.
    async fn attach_to_raft(&self, state: &NodeState) -> Result<(), DaemonError> {
        let body = AttachRequest {
            raft_id: state.raft_id,
            addr: state.advertise_addr.clone(),
            on_behalf_of: None,
        };
        let mut last = String::new();
        // Leadership may move while the membership changes: keep trying every manager for a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let managers = self
                .state()
                .map(|s| s.managers)
                .unwrap_or_else(|| state.managers.clone());
            for addr in managers.iter().filter(|a| **a != state.advertise_addr) {
                let url = format!("https://{addr}/v1/managers/attach");
                match post_json::<_, Empty>(&self.client.get(), &url, &body).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(DaemonError::Remote(format!(
            "no manager could add this node to the Raft cluster: {last}"
        )))
    }

    /// Switches the node's role after a promotion or demotion decided by the cluster.
    async fn change_role(self: &Arc<Self>, role: Role) -> Result<(), DaemonError> {
        let Some(mut state) = self.state() else { return Ok(()) };
        if state.role == role {
            return Ok(());
        }
        let certs = self.renew_certificate(&state).await?;
        state.role = role;
        if role == Role::Worker {
            let _ = std::fs::remove_dir_all(self.raft_dir());
            // Workers never hold the secrets key.
            self.keyring.forget();
        }
        self.save_state(Some(state.clone()))?;
        let me = self.clone();
        // Restarting the role stops this very session loop: do it from its own task.
        let handle = tokio::spawn(async move {
            if let Err(e) = me.start_role(&state, &certs, None).await {
                tracing::error!("cannot start the new role: {e}");
                return;
            }
            if role == Role::Manager {
                if let Err(e) = me.attach_to_raft(&state).await {
                    tracing::error!("{e}");
                }
            }
        });
        drop(handle);
        Ok(())
    }

    /// What the node reports about itself: fixed facts, plus the drivers it can run now and the engine version.
    async fn current_description(&self) -> NodeDescription {
        let mut description = self.options.description.clone();
        if let Some(supervisor) = self.supervisor() {
            description.drivers = supervisor.available_drivers().await;
            if let Some(docker) = supervisor.driver("docker") {
                if description.drivers.iter().any(|d| d == "docker") {
                    description.engine_version = docker.engine_version().await;
                    description.engine_labels = docker.engine_labels().await;
                }
            }
        }
        description
    }

    /// Gets a fresh certificate from a manager; the manager decides the role from the store.
    async fn renew_certificate(&self, state: &NodeState) -> Result<Certs, DaemonError> {
        let (key_pem, csr_pem) =
            ca::new_node_key(&state.node_id).map_err(|e| DaemonError::io("cannot create a key", e))?;
        let mut last = String::new();
        for addr in &state.managers {
            let url = format!("https://{addr}/v1/certs/renew");
            match post_json::<_, Renewal>(
                &self.client.get(),
                &url,
                &RenewRequest {
                    csr_pem: csr_pem.clone(),
                },
            )
            .await
            {
                Ok(r) => {
                    let certs = Certs {
                        ca_pem: r.ca_pem,
                        cert_pem: r.cert_pem,
                        key_pem: key_pem.clone(),
                    };
                    self.save_certs(&certs)?;
                    self.use_certs(&certs)?;
                    if let Some(running) = self.running.lock().await.as_ref() {
                        if let Some(server) = &running.server_cert {
                            let _ = server.reload(&certs.cert_pem, &certs.key_pem);
                        }
                    }
                    return Ok(certs);
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(DaemonError::Remote(format!(
            "no manager renewed the certificate: {last}"
        )))
    }

    /// `swarm leave`.
    pub async fn leave(self: &Arc<Self>, force: bool) -> Result<(), DaemonError> {
        let Some(state) = self.state() else {
            return Err(DaemonError::Refused("This node is not part of a swarm".into()));
        };
        if state.role == Role::Manager && !force {
            let managers = self.manager().map(|m| m.voters().len()).unwrap_or(1);
            let mut message =
                String::from("You are attempting to leave the swarm on a node that is participating as a manager. ");
            if managers <= 1 {
                message.push_str("Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message.");
            } else {
                let left = managers - 1;
                if left < managers / 2 + 1 {
                    message.push_str(&format!(
                        "Removing this node leaves {left} managers out of {managers}. Without a Raft quorum your swarm \
                         will be inaccessible. The only way to restore a swarm that has lost consensus is to \
                         reinitialize it with `--force-new-cluster`. "
                    ));
                }
                message.push_str("Use `--force` to suppress this message.");
            }
            return Err(DaemonError::Refused(message));
        }
        // Tell the cluster, so the node disappears from `node ls` (best effort: leaving works offline too).
        if state.role == Role::Worker {
            for addr in &state.managers {
                let url = format!("https://{addr}/v1/leave");
                if post_json::<_, Empty>(&self.client.get(), &url, &Empty {}).await.is_ok() {
                    break;
                }
            }
        } else if let Some(m) = self.manager() {
            // Leave the Raft membership first (as a demotion, run by the leader), so the others keep their quorum.
            if m.voters().len() > 1 {
                let _ = tokio::time::timeout(Duration::from_secs(5), self.demote(&state.node_id)).await;
            }
        }
        if let Some(old) = self.running.lock().await.take() {
            self.stop_running(old).await;
        }
        self.stop_agent().await;
        self.save_state(None)?;
        let _ = std::fs::remove_dir_all(self.raft_dir());
        self.keyring.forget();
        let _ = std::fs::remove_dir_all(self.tls_dir());
        let _ = std::fs::create_dir_all(self.tls_dir());
        Ok(())
    }

    pub async fn stop(&self) {
        if let Some(old) = self.running.lock().await.take() {
            self.stop_running(old).await;
        }
    }

    /// `swarm info`'s Swarm section.
    pub fn info(&self) -> Info {
        let Some(state) = self.state() else {
            return Info {
                local_node_state: "inactive".into(),
                ..Info::default()
            };
        };
        let mut info = Info {
            local_node_state: "active".into(),
            node_id: state.node_id.clone(),
            node_addr: state.advertise_addr.clone(),
            cluster_id: state.cluster_id.clone(),
            is_manager: state.role == Role::Manager,
            managers_known: state.managers.clone(),
            ..Info::default()
        };
        if let Ok(certs) = self.load_certs() {
            if let Ok(not_after) = ca::expiry(&certs.ca_pem) {
                info.ca_expiry_unix = unix_secs(not_after);
            }
            if let Ok(node) = ca::inspect_cert(&certs.cert_pem) {
                info.cert_expiry_unix = unix_secs(node.not_after);
            }
        }
        if let Some(m) = self.manager() {
            let metrics = m.raft.metrics().borrow().clone();
            let nodes = m.nodes();
            info.nodes = nodes.len();
            info.managers = nodes.iter().filter(|n| n.role == Role::Manager).count();
            info.raft_term = metrics.current_term;
            info.raft_last_applied = metrics.last_applied.map(|l| l.index).unwrap_or(0);
            info.leader = m
                .leader()
                .map(|(_, p)| format!("{} ({})", p.node_id, p.addr))
                .unwrap_or_else(|| "none (no quorum?)".into());
            if let Some(c) = m.cluster() {
                info.heartbeat_period_ms = c.settings.heartbeat_period_ms;
                info.heartbeat_grace = c.settings.heartbeat_grace;
            }
            let raft = &self.options.manager.raft;
            info.election_timeout_ms = format!("{}-{}", raft.election_timeout_min, raft.election_timeout_max);
            info.raft_heartbeat_ms = raft.heartbeat_interval;
            if let openraft::SnapshotPolicy::LogsSinceLast(n) = raft.snapshot_policy {
                info.snapshot_interval = n;
            }
        }
        info
    }

    // ---- cluster API (manager side) ----

    /// A node asks to join: checks the token, issues its certificate, records it.
    pub async fn admit(&self, req: AdmissionRequest) -> Result<Admission, DaemonError> {
        let m = self.require_manager()?;
        let cluster = m
            .cluster()
            .ok_or_else(|| DaemonError::Refused("the cluster is not initialized".into()))?;
        let token: ca::JoinToken = req
            .token
            .parse()
            .map_err(|e: ca::CaError| DaemonError::Refused(format!("invalid join token: {e}")))?;
        let digest = ca::ca_digest(&cluster.ca_cert_pem).map_err(|e| DaemonError::io("CA", e))?;
        let role = if !ca::secrets_equal(&token.ca_digest, &digest) {
            None
        } else if ca::secrets_equal(&token.secret, &cluster.manager_secret) {
            Some(Role::Manager)
        } else if ca::secrets_equal(&token.secret, &cluster.worker_secret) {
            Some(Role::Worker)
        } else {
            None
        };
        let Some(role) = role else {
            return Err(DaemonError::Refused(
                "invalid join token: it is not (or no longer) a token of this swarm. Ask a manager for the current one \
                 with `swarm join-token worker|manager`"
                    .into(),
            ));
        };
        let node_id = ca::new_id();
        let root =
            ca::RootCa::from_pem(&cluster.ca_cert_pem, &cluster.ca_key_pem).map_err(|e| DaemonError::io("CA", e))?;
        let cert_pem = root
            .issue(
                &req.csr_pem,
                &node_id,
                role,
                Duration::from_millis(cluster.settings.node_cert_validity_ms),
            )
            .map_err(|e| DaemonError::Refused(format!("cannot sign the certificate request: {e}")))?;
        let now = now_millis();
        let node = Node::joining(
            &node_id,
            role,
            &req.addr,
            req.raft_id,
            req.description,
            NodeStatus::Unknown,
            now,
        );
        m.write(Request {
            guards: vec![],
            ops: vec![store::put(&node)],
        })
        .await?;
        Ok(Admission {
            node_id,
            cluster_id: cluster.id,
            role,
            cert_pem,
            managers: manager_addrs(&m),
        })
    }

    /// Adds the calling manager to the Raft membership (on the leader; forwarded there otherwise).
    pub async fn attach(&self, caller: &tls::PeerIdentity, mut req: AttachRequest) -> Result<(), DaemonError> {
        let m = self.require_manager()?;
        // A manager forwarding the request speaks for the node that sent it.
        let node_id = req.on_behalf_of.clone().unwrap_or_else(|| caller.node_id.clone());
        let Some((node, _)) = m.node(&node_id) else {
            return Err(DaemonError::NotFound(format!("node {node_id} not found")));
        };
        if node.role != Role::Manager {
            return Err(DaemonError::Refused(format!("node {} is not a manager", node.id)));
        }
        if !m.is_leader() {
            let (_, leader) = m
                .leader()
                .ok_or_else(|| DaemonError::Manager(ManagerError::Rejected("no leader".into())))?;
            req.on_behalf_of = Some(node_id);
            let url = format!("https://{}/v1/managers/attach", leader.addr);
            return post_json::<_, Empty>(&m.client.get(), &url, &req).await.map(|_| ());
        }
        m.add_manager(
            req.raft_id,
            Peer {
                addr: req.addr.clone(),
                node_id: node.id.clone(),
            },
        )
        .await?;
        // Record where the new manager is; retried, since heartbeats may update the node meanwhile.
        for _ in 0..20 {
            let (mut node, revision) = m.node(&node_id).ok_or_else(|| DaemonError::NotFound("node".into()))?;
            node.raft_id = Some(req.raft_id);
            node.manager_addr = Some(req.addr.clone());
            node.updated_at = now_millis();
            if !matches!(
                m.write(crate::manager::guarded_put(&node, revision)).await?,
                store::Response::GuardFailed { .. }
            ) {
                return Ok(());
            }
        }
        Err(DaemonError::Refused(format!(
            "node {node_id} kept changing while it was being added; try again"
        )))
    }

    /// A heartbeat from a node: recorded on the leader (forwarded there), answered with what the node must know.
    pub async fn heartbeat(
        &self,
        caller: &tls::PeerIdentity,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, DaemonError> {
        let m = self.require_manager()?;
        let cluster = m
            .cluster()
            .ok_or_else(|| DaemonError::Refused("the cluster is not initialized".into()))?;
        if cluster.removed_nodes.contains(&caller.node_id) {
            return Err(DaemonError::Refused(format!(
                "node {} was removed from the swarm",
                caller.node_id
            )));
        }
        let Some((node, revision)) = m.node(&caller.node_id) else {
            return Err(DaemonError::NotFound(format!(
                "node {} is not a member of this swarm",
                caller.node_id
            )));
        };
        if m.is_leader() {
            if node.description != req.description {
                let mut updated = node.clone();
                updated.description = req.description.clone();
                updated.updated_at = now_millis();
                m.write(crate::manager::guarded_put(&updated, revision)).await?;
            }
            m.heartbeat(&caller.node_id).await?;
        } else if let Some((_, leader)) = m.leader() {
            let url = format!("https://{}/v1/internal/heartbeat", leader.addr);
            let body = ForwardedHeartbeat {
                node_id: caller.node_id.clone(),
                request: req.clone(),
            };
            post_json::<_, Empty>(&m.client.get(), &url, &body).await?;
        } else {
            return Err(DaemonError::Manager(ManagerError::Rejected("no leader".into())));
        }
        Ok(HeartbeatResponse {
            role: node.role,
            period_ms: cluster.settings.heartbeat_period_ms,
            managers: manager_addrs(&m),
        })
    }

    /// Signs a new certificate for the caller with the role the store gives it.
    pub fn renew(&self, caller: &tls::PeerIdentity, req: RenewRequest) -> Result<Renewal, DaemonError> {
        let m = self.require_manager()?;
        let cluster = m
            .cluster()
            .ok_or_else(|| DaemonError::Refused("the cluster is not initialized".into()))?;
        let (node, _) = m
            .node(&caller.node_id)
            .ok_or_else(|| DaemonError::NotFound("node not found".into()))?;
        if cluster.removed_nodes.contains(&node.id) {
            return Err(DaemonError::Refused("node was removed".into()));
        }
        let root =
            ca::RootCa::from_pem(&cluster.ca_cert_pem, &cluster.ca_key_pem).map_err(|e| DaemonError::io("CA", e))?;
        let cert_pem = root
            .issue(
                &req.csr_pem,
                &node.id,
                node.role,
                Duration::from_millis(cluster.settings.node_cert_validity_ms),
            )
            .map_err(|e| DaemonError::Refused(format!("cannot sign the certificate request: {e}")))?;
        Ok(Renewal {
            cert_pem,
            ca_pem: cluster.ca_cert_pem,
        })
    }

    /// A worker left: remove it from the node list.
    pub async fn node_left(&self, caller: &tls::PeerIdentity) -> Result<(), DaemonError> {
        let m = self.require_manager()?;
        let Some((node, revision)) = m.node(&caller.node_id) else {
            return Ok(());
        };
        if node.role == Role::Manager {
            return Err(DaemonError::Refused(
                "a manager must be demoted before it leaves".into(),
            ));
        }
        self.remove_node_record(&m, &node.id, revision).await
    }

    async fn remove_node_record(&self, m: &Manager, node_id: &str, revision: u64) -> Result<(), DaemonError> {
        let (mut cluster, cluster_rev) = store::get::<Cluster>(&m.sm, crate::cluster::CLUSTER_KEY)
            .ok_or_else(|| DaemonError::Refused("the cluster is not initialized".into()))?;
        cluster.removed_nodes.insert(node_id.to_string());
        let request = Request {
            guards: vec![
                store::Guard::Revision {
                    table: <Node as store::Object>::TABLE.into(),
                    key: node_id.into(),
                    revision,
                },
                store::Guard::Revision {
                    table: <Cluster as store::Object>::TABLE.into(),
                    key: crate::cluster::CLUSTER_KEY.into(),
                    revision: cluster_rev,
                },
            ],
            ops: vec![store::delete::<Node>(node_id), store::put(&cluster)],
        };
        match m.write(request).await? {
            store::Response::GuardFailed { .. } => Err(DaemonError::Refused(
                "the node changed while it was being removed; try again".into(),
            )),
            _ => Ok(()),
        }
    }

    pub fn list_nodes(&self) -> Result<NodeList, DaemonError> {
        let m = self.require_manager()?;
        let leader = m.leader().map(|(_, p)| p.node_id);
        let mut nodes = m.nodes();
        nodes.sort_by(|a, b| {
            a.description
                .hostname
                .cmp(&b.description.hostname)
                .then(a.id.cmp(&b.id))
        });
        Ok(NodeList {
            nodes,
            leader,
            self_id: self.state().map(|s| s.node_id).unwrap_or_default(),
            stale: !m.is_leader() && m.leader().is_none(),
        })
    }

    fn find_node(&self, m: &Manager, wanted: &str) -> Result<(Node, u64), DaemonError> {
        let nodes = m.nodes();
        let node = crate::cluster::resolve_node(&nodes, wanted).map_err(DaemonError::NotFound)?;
        m.node(&node.id)
            .ok_or_else(|| DaemonError::NotFound(format!("node {wanted} not found")))
    }

    pub fn inspect_node(&self, wanted: &str) -> Result<Node, DaemonError> {
        let m = self.require_manager()?;
        Ok(self.find_node(&m, wanted)?.0)
    }

    pub async fn update_node(&self, wanted: &str, update: NodeUpdate) -> Result<Node, DaemonError> {
        let m = self.require_manager()?;
        let (mut node, revision) = self.find_node(&m, wanted)?;
        if let Some(a) = &update.availability {
            node.availability = Availability::parse(a).map_err(DaemonError::Refused)?;
        }
        for kv in &update.label_add {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            if k.is_empty() {
                return Err(DaemonError::Refused(format!(
                    "invalid label {kv:?}: expected KEY=VALUE"
                )));
            }
            node.labels.insert(k.to_string(), v.to_string());
        }
        for k in &update.label_rm {
            if node.labels.remove(k).is_none() {
                return Err(DaemonError::Refused(format!("key {k} doesn't exist in node's labels")));
            }
        }
        node.updated_at = now_millis();
        self.write_node(&m, &node, revision).await?;
        Ok(node)
    }

    async fn write_node(&self, m: &Manager, node: &Node, revision: u64) -> Result<(), DaemonError> {
        match m.write(crate::manager::guarded_put(node, revision)).await? {
            store::Response::GuardFailed { .. } => Err(DaemonError::Refused(format!(
                "node {} changed meanwhile; try again",
                node.id
            ))),
            _ => Ok(()),
        }
    }

    pub async fn promote(&self, wanted: &str) -> Result<String, DaemonError> {
        let m = self.require_manager()?;
        let (mut node, revision) = self.find_node(&m, wanted)?;
        if node.role == Role::Manager {
            return Ok(format!("Node {} is already a manager.", node.id));
        }
        node.role = Role::Manager;
        node.updated_at = now_millis();
        self.write_node(&m, &node, revision).await?;
        Ok(format!("Node {} promoted to a manager in the swarm.", node.id))
    }

    /// Membership changes run on the leader: a follower passes the command on.
    async fn forward_to_leader(&self, m: &Manager, path: &str) -> Result<Option<String>, DaemonError> {
        if m.is_leader() {
            return Ok(None);
        }
        let (_, leader) = m
            .leader()
            .ok_or_else(|| DaemonError::Manager(ManagerError::Rejected("no leader".into())))?;
        let url = format!("https://{}{path}", leader.addr);
        let answer: Message = post_json(&m.client.get(), &url, &Empty {}).await?;
        Ok(Some(answer.message))
    }

    pub async fn demote(&self, wanted: &str) -> Result<String, DaemonError> {
        let m = self.require_manager()?;
        let (node, _) = self.find_node(&m, wanted)?;
        if let Some(answer) = self
            .forward_to_leader(&m, &format!("/v1/nodes/{}/demote", node.id))
            .await?
        {
            return Ok(answer);
        }
        if node.role == Role::Worker {
            return Ok(format!("Node {} is already a worker.", node.id));
        }
        let managers = m.nodes().iter().filter(|n| n.role == Role::Manager).count();
        if managers <= 1 {
            return Err(DaemonError::Refused(
                "attempting to demote the last manager of the swarm".into(),
            ));
        }
        // The Raft membership knows each member's node id: it is the truth about who votes.
        let member = m
            .voters()
            .into_iter()
            .find(|(_, peer)| peer.node_id == node.id)
            .map(|(id, _)| id);
        if let Some(raft_id) = member.or(node.raft_id) {
            if m.voters().iter().any(|(id, _)| *id == raft_id) {
                m.remove_manager(raft_id).await?;
            }
        }
        let (mut node, revision) = self.find_node(&m, &node.id)?;
        node.role = Role::Worker;
        node.raft_id = None;
        node.manager_addr = None;
        node.updated_at = now_millis();
        self.write_node(&m, &node, revision).await?;
        Ok(format!("Manager {} demoted in the swarm.", node.id))
    }

    pub async fn remove_node(&self, wanted: &str, force: bool) -> Result<String, DaemonError> {
        let m = self.require_manager()?;
        let (node, revision) = self.find_node(&m, wanted)?;
        if node.role == Role::Manager {
            return Err(DaemonError::Refused(format!(
                "node {} is a cluster manager and is a member of the raft cluster. It must be demoted to worker \
                 before removal",
                node.id
            )));
        }
        if node.status != NodeStatus::Down && !force {
            return Err(DaemonError::Refused(format!(
                "node {} is not down and can't be removed (use --force to remove it anyway)",
                node.id
            )));
        }
        self.remove_node_record(&m, &node.id, revision).await?;
        Ok(node.id)
    }

    /// `swarm update`: changes cluster settings (checked, then written with a guard).
    pub async fn update_settings(&self, update: SettingsUpdate) -> Result<Settings, DaemonError> {
        let m = self.require_manager()?;
        let (mut cluster, revision) = store::get::<Cluster>(&m.sm, crate::cluster::CLUSTER_KEY)
            .ok_or_else(|| DaemonError::Refused("the cluster is not initialized".into()))?;
        let s = &mut cluster.settings;
        if let Some(p) = update.heartbeat_period_ms {
            if !(10..=60_000).contains(&p) {
                return Err(DaemonError::Refused(
                    "the heartbeat period must be between 10ms and 1m".into(),
                ));
            }
            s.heartbeat_period_ms = p;
        }
        if let Some(g) = update.heartbeat_grace {
            if g == 0 {
                return Err(DaemonError::Refused(
                    "the heartbeat grace must be at least 1 missed beat".into(),
                ));
            }
            s.heartbeat_grace = g;
        }
        if let Some(p) = update.prune_down_after_ms {
            s.prune_down_after_ms = p;
        }
        if let Some(v) = update.node_cert_validity_ms {
            if v < 3_600_000 {
                return Err(DaemonError::Refused(
                    "node certificates must be valid for at least 1h".into(),
                ));
            }
            s.node_cert_validity_ms = v;
        }
        if let Some(l) = update.task_history_limit {
            s.task_history_limit = l;
        }
        if let Some(l) = update.secret_history_limit {
            s.secret_history_limit = l;
        }
        if let store::Response::GuardFailed { .. } = m.write(crate::manager::guarded_put(&cluster, revision)).await? {
            return Err(DaemonError::Refused("the cluster changed meanwhile; try again".into()));
        }
        Ok(cluster.settings)
    }

    pub async fn join_token(&self, role: Role, rotate: bool) -> Result<String, DaemonError> {
        let m = self.require_manager()?;
        let (mut cluster, revision) = store::get::<Cluster>(&m.sm, crate::cluster::CLUSTER_KEY)
            .ok_or_else(|| DaemonError::Refused("the cluster is not initialized".into()))?;
        if rotate {
            match role {
                Role::Worker => cluster.worker_secret = ca::new_secret(),
                Role::Manager => cluster.manager_secret = ca::new_secret(),
            }
            if let store::Response::GuardFailed { .. } =
                m.write(crate::manager::guarded_put(&cluster, revision)).await?
            {
                return Err(DaemonError::Refused("the cluster changed meanwhile; try again".into()));
            }
        }
        let digest = ca::ca_digest(&cluster.ca_cert_pem).map_err(|e| DaemonError::io("CA", e))?;
        let secret = match role {
            Role::Worker => cluster.worker_secret,
            Role::Manager => cluster.manager_secret,
        };
        Ok(ca::JoinToken {
            ca_digest: digest,
            secret,
        }
        .to_string())
    }
}

fn manager_addrs(m: &Manager) -> Vec<String> {
    m.voters().into_iter().map(|(_, p)| p.addr).collect()
}

fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The host part of `host:port` (IPv6 in brackets kept as is).
pub fn host_of(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host.to_string(),
        _ => addr.to_string(),
    }
}

fn with_default_port(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => addr.to_string(),
        _ => format!("{addr}:{DEFAULT_PORT}"),
    }
}

/// The address other nodes use: `--advertise-addr` (its port defaults to the listen port), else the listen address
/// when it names a specific IP.
fn advertise(given: &Option<String>, listen: &str) -> Result<String, DaemonError> {
    let listen_port = listen.rsplit_once(':').map(|(_, p)| p).unwrap_or("2377");
    match given {
        Some(a) if a.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) => Ok(a.clone()),
        Some(a) => Ok(format!("{a}:{listen_port}")),
        None => {
            let host = host_of(listen);
            if host == "0.0.0.0" || host == "[::]" || host.is_empty() {
                Err(DaemonError::Refused(
                    "could not choose an IP address to advertise: pass --advertise-addr with this node's address"
                        .into(),
                ))
            } else {
                Ok(listen.to_string())
            }
        }
    }
}

async fn post_json<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
    client: &reqwest::Client,
    url: &str,
    body: &Req,
) -> Result<Resp, DaemonError> {
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| DaemonError::Remote(format!("cannot reach {url}: {e}")))?;
    if !response.status().is_success() {
        let err: Option<ApiError> = response.json().await.ok();
        return Err(DaemonError::Remote(
            err.map(|e| e.message).unwrap_or_else(|| format!("{url} failed")),
        ));
    }
    response
        .json()
        .await
        .map_err(|e| DaemonError::Remote(format!("invalid answer from {url}: {e}")))
}

/// The node's session with the cluster: a heartbeat every period to some manager; it learns the manager list and
/// role changes from the answers, and renews its certificate when it nears expiry.
async fn session_loop(daemon: Arc<Daemon>, mut stop: watch::Receiver<bool>) {
    let mut period = Duration::from_millis(1_000);
    let mut next_manager = 0usize;
    loop {
        if let Some(state) = daemon.state() {
            let body = HeartbeatRequest {
                description: daemon.current_description().await,
            };
            let managers = state.managers.clone();
            let mut answered = None;
            for i in 0..managers.len() {
                let addr = &managers[(next_manager + i) % managers.len()];
                let url = format!("https://{addr}/v1/heartbeat");
                let client = daemon.client.get();
                let call = post_json::<_, HeartbeatResponse>(&client, &url, &body);
                match tokio::time::timeout(period, call).await {
                    Ok(Ok(r)) => {
                        next_manager = (next_manager + i) % managers.len();
                        answered = Some(r);
                        break;
                    }
                    _ => continue,
                }
            }
            if let Some(r) = answered {
                period = Duration::from_millis(r.period_ms.max(10));
                if !r.managers.is_empty() && r.managers != state.managers {
                    let mut s = state.clone();
                    s.managers = r.managers.clone();
                    let _ = daemon.save_state(Some(s));
                }
                if r.role != state.role {
                    if let Err(e) = daemon.change_role(r.role).await {
                        tracing::warn!("role change to {:?}: {e}", r.role);
                    }
                }
                if let Ok(certs) = daemon.load_certs() {
                    if ca::inspect_cert(&certs.cert_pem)
                        .is_ok_and(|info| ca::needs_renewal(&info, std::time::SystemTime::now()))
                    {
                        if let Err(e) = daemon.renew_certificate(&state).await {
                            tracing::warn!("certificate renewal: {e}");
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// The node's own description: hostname, platform, resources; the engine fields are filled by the agent.
pub fn describe_this_node(hostname: Option<String>) -> NodeDescription {
    let hostname = hostname.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    });
    let nano_cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1)
        * 1_000_000_000;
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    NodeDescription {
        hostname,
        engine_version: None,
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        nano_cpus,
        memory_bytes,
        engine_labels: Default::default(),
        drivers: vec!["process".to_string()],
    }
}
