//! The docker driver: each task is one container of the local Docker Engine, labelled so the agent can find it again.
//!
//! - The driver belongs to one node: [`DockerDriver::connect`] takes the node id, every container and volume it creates
//!   carries `LABEL_NODE` with it, and `list`/`events` only see containers with that label (so two agents — or two
//!   tests — sharing an engine never see each other's tasks).
//! - Tasks are found by label (`LABEL_TASK` + `LABEL_NODE`), never from memory, so a restarted agent (a second driver)
//!   adopts what the first one created.
//! - The engine may come and go: the client is (re)connected and the API version (re)negotiated on the first call
//!   after a connection failure; unreachable engine → [`DriverError::Unavailable`].

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use bollard::errors::Error as EngineError;
use bollard::models::ContainerCreateBody;
use bollard::models::ContainerState;
use bollard::models::ContainerStateStatusEnum;
use bollard::models::EndpointSettings;
use bollard::models::EventMessage;
use bollard::models::HealthConfig;
use bollard::models::HealthStatusEnum;
use bollard::models::HostConfig;
use bollard::models::HostConfigLogConfig;
use bollard::models::Ipam;
use bollard::models::IpamConfig;
use bollard::models::Mount as EngineMount;
use bollard::models::MountBindOptions;
use bollard::models::MountBindOptionsPropagationEnum;
use bollard::models::MountTmpfsOptions;
use bollard::models::MountType as EngineMountType;
use bollard::models::MountVolumeOptions;
use bollard::models::NetworkCreateRequest;
use bollard::models::NetworkingConfig;
use bollard::models::PortBinding;
use bollard::models::PortMap;
use bollard::models::ResourcesUlimits;
use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::CreateContainerOptions;
use bollard::query_parameters::CreateImageOptions;
use bollard::query_parameters::EventsOptions;
use bollard::query_parameters::KillContainerOptions;
use bollard::query_parameters::ListContainersOptions;
use bollard::query_parameters::ListNetworksOptions;
use bollard::query_parameters::LogsOptions;
use bollard::query_parameters::RemoveContainerOptions;
use bollard::query_parameters::WaitContainerOptions;
use bollard::Docker;
use futures_util::stream;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use swarm_specs::spec::Healthcheck;
use swarm_specs::spec::MountType;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::BoxFuture;
use super::Driver;
use super::DriverError;
use super::DriverEvent;
use super::LogLine;
use super::LogOptions;
use super::LogStream;
use super::Observed;
use super::TaskHealth;
use super::TaskRun;
use super::LABEL_NODE;
use super::LABEL_SERVICE;
use super::LABEL_SLOT;
use super::LABEL_STACK;
use super::LABEL_TASK;

/// How often the supervisor looks at a quiet docker task anyway (see [`Driver::resync_interval`]).
const RESYNC: Duration = Duration::from_secs(10);
/// How long one engine request may take to answer (streams — logs, events, wait — only to start answering).
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// `available()` gives up on a silent engine after this long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// After SIGKILL, how long to wait for the engine to report the container stopped.
const KILL_WAIT: Duration = Duration::from_secs(30);
/// Reconnect delays of the event stream: doubled after each failure, reset by the first event.
const EVENTS_BACKOFF_MIN: Duration = Duration::from_millis(100);
const EVENTS_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One image lookup (inspect, pull) shared by the tasks that wait for it: its outcome once known.
type ImageLookup = Arc<tokio::sync::Mutex<Option<Result<(), DriverError>>>>;

/// Runs tasks as containers of the Docker Engine behind a unix socket, for one node.
#[derive(Clone)]
pub struct DockerDriver {
    inner: Arc<Inner>,
}

struct Inner {
    /// The engine's unix socket; reconnected to after failures.
    socket: PathBuf,
    /// This node: labels what the driver creates and scopes what it lists and watches.
    node_id: String,
    /// The negotiated client, dropped on a connection failure so the next call reconnects and renegotiates.
    engine: Mutex<Option<Docker>>,
    /// Task id → container id, for what this driver created or found: saves the engine a label query on every
    /// inspect (the engine is the bottleneck when many tasks start at once). A stale entry only costs a 404.
    ids: Mutex<HashMap<String, String>>,
    /// Images seen present, so that starting many tasks of one image asks the engine once (a create that then
    /// finds the image gone forgets it and tries again).
    images: Mutex<std::collections::HashSet<String>>,
    /// Per image, held while one task looks it up (or pulls it), then holding its outcome: the tasks of a burst
    /// that need the same unknown image share that one answer instead of each asking the engine. An entry goes
    /// once the last task waiting on it has its answer, so a later task asks again.
    image_lookups: Mutex<HashMap<String, ImageLookup>>,
    /// Serializes network creation within this driver.
    networks: tokio::sync::Mutex<()>,
    /// Held (shared) from a task's network check to its container's creation; held alone to prune networks.
    networks_in_use: tokio::sync::RwLock<()>,
}

impl std::fmt::Debug for DockerDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerDriver")
            .field("socket", &self.inner.socket)
            .field("node_id", &self.inner.node_id)
            .finish()
    }
}

impl DockerDriver {
    /// The Docker Engine's usual socket.
    pub fn default_socket() -> PathBuf {
        PathBuf::from("/var/run/docker.sock")
    }

    /// A driver for node `node_id` using the engine at `socket`. Connects lazily: the first call connects and
    /// negotiates the API version, so this never fails; while the engine does not answer, `available()` is false and
    /// operations return `Unavailable`.
    pub fn connect(socket: &Path, node_id: impl Into<String>) -> DockerDriver {
        DockerDriver {
            inner: Arc::new(Inner {
                socket: socket.to_path_buf(),
                node_id: node_id.into(),
                engine: Mutex::new(None),
                ids: Mutex::new(HashMap::new()),
                images: Mutex::new(std::collections::HashSet::new()),
                image_lookups: Mutex::new(HashMap::new()),
                networks: tokio::sync::Mutex::new(()),
                networks_in_use: tokio::sync::RwLock::new(()),
            }),
        }
    }

    /// The node this driver works for.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }
}

impl Driver for DockerDriver {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn available(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let probe = async {
                let docker = self.inner.client().await?;
                docker
                    .ping()
                    .await
                    .map_err(|e| self.inner.engine_error("pinging the docker engine", e))
            };
            matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(_)))
        })
    }

    fn engine_version(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            let docker = self.inner.client().await.ok()?;
            match docker.version().await {
                Ok(version) => version.version,
                Err(e) => {
                    let e = self.inner.engine_error("reading the docker engine version", e);
                    tracing::debug!("{e}");
                    None
                }
            }
        })
    }

    fn engine_labels(&self) -> BoxFuture<'_, BTreeMap<String, String>> {
        Box::pin(async move {
            let Ok(docker) = self.inner.client().await else {
                return BTreeMap::new();
            };
            let labels = docker
                .info()
                .await
                .ok()
                .and_then(|info| info.labels)
                .unwrap_or_default();
            labels
                .iter()
                .map(|l| match l.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (l.clone(), String::new()),
                })
                .collect()
        })
    }

    fn prepare<'a>(&'a self, task: &'a TaskRun) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.inner.prepare(task))
    }

    fn start<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.inner.start(task_id))
    }

    fn inspect<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<Observed, DriverError>> {
        Box::pin(async move {
            let docker = self.inner.client().await?;
            if let Some(id) = self.inner.known_container(task_id) {
                match self.inner.observe(&docker, &id).await? {
                    Observed::Missing => self.inner.forget(task_id),
                    observed => return Ok(observed),
                }
            }
            let Some(id) = self.inner.find(&docker, task_id).await? else {
                return Ok(Observed::Missing);
            };
            self.inner.remember(task_id, &id);
            self.inner.observe(&docker, &id).await
        })
    }

    fn stop<'a>(
        &'a self,
        task_id: &'a str,
        signal: &'a str,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.inner.stop(task_id, signal, grace))
    }

    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.inner.remove(task_id))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<(String, Observed)>, DriverError>> {
        Box::pin(self.inner.list())
    }

    /// Subscribes from the moment of the call (the engine replays what happened between this call and the first
    /// poll), so `events()` then `list()` misses nothing. Reconnects with backoff and resumes after the last event
    /// seen; the stream only ends when it is dropped.
    fn events(&self) -> BoxStream<'static, DriverEvent> {
        let inner = self.inner.clone();
        self.engine_events()
            .then(move |event| {
                let inner = inner.clone();
                async move { inner.resolve(event).await }
            })
            .filter_map(futures_util::future::ready)
            .boxed()
    }

    /// The same engine events as [`DockerDriver::events`], without asking the engine what a `start` or an exit
    /// without its code means: a woken task inspects its container anyway.
    fn wakes(&self) -> BoxStream<'static, String> {
        self.engine_events().map(|event| event.task_id).boxed()
    }

    /// The engine's event stream is complete: it is resumed after the last event seen on a reconnect, and every
    /// task is woken after one. The resync only covers what could still slip through, so it can be slow — a
    /// resync of each task every second would be an inspect per task per second, which the engine, the
    /// bottleneck when many tasks start at once, has to serve between the creates and starts.
    fn resync_interval(&self) -> Duration {
        RESYNC
    }

    fn logs<'a>(&'a self, task_id: &'a str, options: LogOptions) -> BoxStream<'a, Result<LogLine, DriverError>> {
        let inner = self.inner.clone();
        let task_id = task_id.to_string();
        stream::once(async move { inner.log_lines(&task_id, options).await })
            .flat_map(|lines| match lines {
                Ok(lines) => lines,
                Err(e) => stream::iter([Err(e)]).boxed(),
            })
            .boxed()
    }
}

impl DockerDriver {
    /// This node's task events as the engine reports them (see [`Driver::events`]), before any inspect.
    fn engine_events(&self) -> BoxStream<'static, EngineEvent> {
        let (tx, rx) = mpsc::channel(256);
        let pump = pump_events(self.inner.clone(), unix_nanos(SystemTime::now()), tx);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(pump);
                ReceiverStream::new(rx).boxed()
            }
            // Called outside a runtime: start pumping on the first poll, which runs inside one.
            Err(_) => stream::once(async move {
                tokio::spawn(pump);
                ReceiverStream::new(rx)
            })
            .flatten()
            .boxed(),
        }
    }
}

impl Inner {
    fn cached(&self) -> Option<Docker> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn forget_client(&self) {
        *self.engine.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The negotiated client, connecting (and negotiating the API version) when there is none.
    async fn client(&self) -> Result<Docker, DriverError> {
        if let Some(docker) = self.cached() {
            return Ok(docker);
        }
        let Some(path) = self.socket.to_str() else {
            return Err(DriverError::Unavailable(format!(
                "docker socket path {} is not valid UTF-8",
                self.socket.display()
            )));
        };
        let docker = Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            .map_err(|e| self.unreachable(&e))?;
        let docker = docker.negotiate_version().await.map_err(|e| self.unreachable(&e))?;
        *self.engine.lock().unwrap_or_else(|e| e.into_inner()) = Some(docker.clone());
        Ok(docker)
    }

    fn unreachable(&self, e: &EngineError) -> DriverError {
        self.forget_client();
        DriverError::Unavailable(format!(
            "cannot reach the docker engine at {}: {e}",
            self.socket.display()
        ))
    }

    /// Classifies an engine error: connection failures make the engine unavailable (and drop the client), anything
    /// else is a runtime error naming what was being done.
    fn engine_error(&self, doing: &str, e: EngineError) -> DriverError {
        if is_connection_error(&e) {
            return self.unreachable(&e);
        }
        match e {
            EngineError::DockerResponseServerError { status_code, message } => {
                DriverError::Runtime(format!("{doing}: the docker engine answered {status_code}: {message}"))
            }
            e => DriverError::Runtime(format!("{doing}: {e}")),
        }
    }

    /// The id of the task's container on this node, if there is one.
    fn known_container(&self, task_id: &str) -> Option<String> {
        self.ids.lock().ok().and_then(|ids| ids.get(task_id).cloned())
    }

    fn remember(&self, task_id: &str, container_id: &str) {
        if let Ok(mut ids) = self.ids.lock() {
            ids.insert(task_id.to_string(), container_id.to_string());
        }
    }

    /// Forgets that `image` is present; true when it was remembered.
    fn forget_image(&self, image: &str) -> bool {
        self.images.lock().is_ok_and(|mut known| known.remove(image))
    }

    fn forget(&self, task_id: &str) {
        if let Ok(mut ids) = self.ids.lock() {
            ids.remove(task_id);
        }
    }

    async fn find(&self, docker: &Docker, task_id: &str) -> Result<Option<String>, DriverError> {
        Ok(self.find_all(docker, task_id).await?.into_iter().next())
    }

    async fn find_all(&self, docker: &Docker, task_id: &str) -> Result<Vec<String>, DriverError> {
        let labels = vec![
            format!("{LABEL_TASK}={task_id}"),
            format!("{LABEL_NODE}={}", self.node_id),
        ];
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), labels)])),
            ..Default::default()
        };
        let containers = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.engine_error(&format!("looking up task {task_id}'s container"), e))?;
        Ok(containers.into_iter().filter_map(|c| c.id).collect())
    }

    async fn observe(&self, docker: &Docker, container_id: &str) -> Result<Observed, DriverError> {
        match docker.inspect_container(container_id, None).await {
            Ok(container) => Ok(observed_of(container.state.as_ref())),
            Err(e) if status_of(&e) == Some(404) => Ok(Observed::Missing),
            Err(e) => Err(self.engine_error(&format!("inspecting container {container_id}"), e)),
        }
    }

    async fn prepare(&self, task: &TaskRun) -> Result<(), DriverError> {
        if task.node_id != self.node_id {
            return Err(DriverError::Rejected(format!(
                "task {} is assigned to node {}, not to this node {}",
                task.task_id, task.node_id, self.node_id
            )));
        }
        let Some(image) = task.spec.image.as_deref().filter(|i| !i.is_empty()) else {
            return Err(DriverError::Rejected(format!(
                "task {} has no image: the docker driver needs one",
                task.task_id
            )));
        };
        let mounts = engine_mounts(task)?;
        let docker = self.client().await?;
        // Already prepared (its name is taken by its own container: see the 409 case below).
        if self.known_container(&task.task_id).is_some() {
            return Ok(());
        }
        self.ensure_image(&docker, image).await?;
        self.ensure_mount_sources(&docker, task).await?;
        let created = {
            // No network this container joins is pruned between its check and the container's creation.
            let _in_use = self.networks_in_use.read().await;
            let networks = self.ensure_networks(&docker, task).await?;
            let body = container_body(task, image, mounts, &networks);
            let options = CreateContainerOptions {
                name: Some(task.name.clone()),
                ..Default::default()
            };
            docker.create_container(Some(options), body).await
        };
        match created {
            Ok(created) => {
                self.remember(&task.task_id, &created.id);
                Ok(())
            }
            // The image was known but is gone (removed meanwhile): forget it and prepare again, pulling it.
            Err(e) if status_of(&e) == Some(404) && self.forget_image(image) => Box::pin(self.prepare(task)).await,
            // The name is taken: fine if by this very task (a concurrent prepare), a conflict otherwise.
            Err(e) if status_of(&e) == Some(409) => match self.find(&docker, &task.task_id).await? {
                Some(id) => {
                    self.remember(&task.task_id, &id);
                    Ok(())
                }
                None => Err(DriverError::Rejected(format!(
                    "a container named {:?} already exists on node {} but is not task {}'s; remove it (docker rm -f {})",
                    task.name, self.node_id, task.task_id, task.name
                ))),
            },
            Err(EngineError::DockerResponseServerError {
                status_code: 400,
                message,
            }) => Err(DriverError::Rejected(format!(
                "the docker engine on node {} refused task {}'s container: {message}",
                self.node_id, task.task_id
            ))),
            Err(e) => Err(self.engine_error(&format!("creating task {}'s container", task.task_id), e)),
        }
    }

    /// The image is local, or pulled now; a failed pull rejects the task, naming image and node.
    async fn ensure_image(&self, docker: &Docker, image: &str) -> Result<(), DriverError> {
        let known = || self.images.lock().is_ok_and(|known| known.contains(image));
        if known() {
            return Ok(());
        }
        // One lookup per image at a time: the others of a burst wait for it and share its outcome.
        let lookup = self
            .image_lookups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(image.to_string())
            .or_default()
            .clone();
        let looked_up = {
            let mut outcome = lookup.lock().await;
            match &*outcome {
                Some(shared) => shared.clone(),
                None => {
                    let answer = self.look_up_image(docker, image).await;
                    *outcome = Some(answer.clone());
                    answer
                }
            }
        };
        if let Ok(mut lookups) = self.image_lookups.lock() {
            // The last one out (the map's reference and ours are all that is left) removes the entry.
            if Arc::strong_count(&lookup) <= 2 {
                lookups.remove(image);
            }
        }
        looked_up
    }

    /// Inspects `image`, pulling it when it is missing; remembers it when present.
    async fn look_up_image(&self, docker: &Docker, image: &str) -> Result<(), DriverError> {
        match docker.inspect_image(image).await {
            Ok(_) => {
                if let Ok(mut known) = self.images.lock() {
                    known.insert(image.to_string());
                }
                return Ok(());
            }
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(self.engine_error(&format!("inspecting image {image:?}"), e)),
        }
        let not_available = |why: String| {
            DriverError::Rejected(format!(
                "image {image:?} is not available on node {}: {why}",
                self.node_id
            ))
        };
        let options = CreateImageOptions {
            from_image: Some(pull_reference(image)),
            ..Default::default()
        };
        let mut pull = docker.create_image(Some(options), None, None);
        while let Some(progress) = pull.next().await {
            match progress {
                Ok(_) => {}
                Err(e) if is_connection_error(&e) => return Err(self.unreachable(&e)),
                Err(EngineError::DockerResponseServerError { message, .. }) => return Err(not_available(message)),
                Err(EngineError::DockerStreamError { error }) => return Err(not_available(error)),
                Err(e) => return Err(not_available(e.to_string())),
            }
        }
        match docker.inspect_image(image).await {
            Ok(_) => {
                if let Ok(mut known) = self.images.lock() {
                    known.insert(image.to_string());
                }
                Ok(())
            }
            Err(e) if status_of(&e) == Some(404) => Err(not_available("the pull finished without it".into())),
            Err(e) => Err(self.engine_error(&format!("inspecting image {image:?}"), e)),
        }
    }

    /// Bind sources must exist on this host; named volumes are created when missing (labelled with stack and node).
    async fn ensure_mount_sources(&self, docker: &Docker, task: &TaskRun) -> Result<(), DriverError> {
        for mount in &task.spec.mounts {
            match (mount.kind, mount.source.as_deref()) {
                (MountType::Bind, Some(source)) if !Path::new(source).exists() => {
                    return Err(DriverError::Rejected(format!(
                        "bind mount source path does not exist: {source} (on node {})",
                        self.node_id
                    )));
                }
                (MountType::Volume, Some(name)) => {
                    let request = VolumeCreateRequest {
                        name: Some(name.to_string()),
                        labels: Some(volume_labels(task)),
                        ..Default::default()
                    };
                    // Creating an existing volume returns it unchanged.
                    docker
                        .create_volume(request)
                        .await
                        .map_err(|e| self.engine_error(&format!("creating volume {name:?}"), e))?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Each network the task attaches to exists on this node: a bridge network of that name, created on demand and
    /// labelled with the stack and the node (stack networks are per-node bridges until cross-host networking).
    /// Returns each network's id. The engine lets two concurrent creates make two networks of one name (several
    /// nodes may share an engine, as in tests), and a create can become visible after a later one that another
    /// agent already uses: so an agent that created a network and then finds another of that name removes its own
    /// (nothing uses it yet) and takes the other; when both gave theirs up it tries again, and after that keeps the
    /// oldest. Extras nobody uses are removed.
    async fn ensure_networks(&self, docker: &Docker, task: &TaskRun) -> Result<HashMap<String, String>, DriverError> {
        let mut ids = HashMap::new();
        if task.spec.networks.is_empty() {
            return Ok(ids);
        }
        let _one_at_a_time = self.networks.lock().await;
        for attachment in &task.spec.networks {
            let name = attachment.target.as_str();
            let mut found = self.networks_named(docker, name).await?;
            for attempt in 0..3 {
                if !found.is_empty() {
                    break;
                }
                let request = network_request(task, name);
                let mine = match docker.create_network(request).await {
                    Ok(created) => Some(created.id),
                    Err(e) if status_of(&e) == Some(409) => None,
                    Err(e) => return Err(self.engine_error(&format!("creating network {name:?}"), e)),
                };
                found = self.networks_named(docker, name).await?;
                if let Some(mine) = mine.filter(|_| found.len() > 1 && attempt < 2) {
                    let _ = docker.remove_network(&mine).await;
                    found = self.networks_named(docker, name).await?;
                }
            }
            let Some((_, keep)) = found.first().cloned() else {
                return Err(DriverError::Rejected(format!(
                    "network {name:?} vanished right after it was created on node {}",
                    self.node_id
                )));
            };
            for (_, extra) in &found[1..] {
                let _ = docker.remove_network(extra).await;
            }
            ids.insert(name.to_string(), keep);
        }
        Ok(ids)
    }

    /// Networks with exactly this name, oldest first: `(created, id)`.
    async fn networks_named(&self, docker: &Docker, name: &str) -> Result<Vec<(String, String)>, DriverError> {
        let options = ListNetworksOptions {
            filters: Some(HashMap::from([("name".to_string(), vec![name.to_string()])])),
        };
        let list = docker
            .list_networks(Some(options))
            .await
            .map_err(|e| self.engine_error(&format!("listing networks named {name:?}"), e))?;
        let mut found: Vec<(String, String)> = list
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| Some((n.created.map(|c| c.to_string()).unwrap_or_default(), n.id?)))
            .collect();
        found.sort();
        Ok(found)
    }

    async fn start(&self, task_id: &str) -> Result<(), DriverError> {
        let docker = self.client().await?;
        let known = match self.known_container(task_id) {
            Some(id) => Some(id),
            None => self.find(&docker, task_id).await?,
        };
        let Some(id) = known else {
            return Err(DriverError::Runtime(format!(
                "task {task_id} has no container on node {}: prepare it first",
                self.node_id
            )));
        };
        match docker.start_container(&id, None).await {
            Ok(()) => Ok(()),
            // 304: already running.
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            // A remembered container that is gone: look the task up again.
            Err(e) if status_of(&e) == Some(404) && self.known_container(task_id).is_some() => {
                self.forget(task_id);
                Box::pin(self.start(task_id)).await
            }
            Err(e) => Err(self.engine_error(&format!("starting task {task_id}'s container"), e)),
        }
    }

    /// Sends `signal`, waits up to `grace` for the container to stop, then kills it.
    async fn stop(&self, task_id: &str, signal: &str, grace: Duration) -> Result<(), DriverError> {
        let docker = self.client().await?;
        let Some(id) = self.find(&docker, task_id).await? else {
            return Ok(());
        };
        if !matches!(self.observe(&docker, &id).await?, Observed::Running { .. }) {
            return Ok(());
        }
        // An empty signal would make the engine send SIGKILL.
        let signal = if signal.is_empty() { "SIGTERM" } else { signal };
        if !self.kill(&docker, &id, task_id, signal).await? {
            return Ok(());
        }
        if self.wait_stopped(&docker, &id, task_id, grace).await? {
            return Ok(());
        }
        tracing::info!(task = task_id, "still running {grace:?} after {signal}: killing it");
        if !self.kill(&docker, &id, task_id, "SIGKILL").await? {
            return Ok(());
        }
        if self.wait_stopped(&docker, &id, task_id, KILL_WAIT).await? {
            return Ok(());
        }
        Err(DriverError::Runtime(format!(
            "task {task_id}'s container is still running {KILL_WAIT:?} after SIGKILL"
        )))
    }

    /// Signals the container; false when it is gone or no longer running.
    async fn kill(&self, docker: &Docker, id: &str, task_id: &str, signal: &str) -> Result<bool, DriverError> {
        let options = KillContainerOptions {
            signal: signal.to_string(),
        };
        match docker.kill_container(id, Some(options)).await {
            Ok(()) => Ok(true),
            Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(false),
            Err(e) => Err(self.engine_error(&format!("sending {signal} to task {task_id}"), e)),
        }
    }

    /// Whether the container stopped within `limit`.
    async fn wait_stopped(
        &self,
        docker: &Docker,
        id: &str,
        task_id: &str,
        limit: Duration,
    ) -> Result<bool, DriverError> {
        let options = WaitContainerOptions {
            condition: "not-running".to_string(),
        };
        let mut wait = docker.wait_container(id, Some(options));
        match tokio::time::timeout(limit, wait.next()).await {
            Err(_) => Ok(false),
            // The wait answers once the container stopped; a non-zero exit code comes back as this error.
            Ok(None | Some(Ok(_)) | Some(Err(EngineError::DockerContainerWaitError { .. }))) => Ok(true),
            Ok(Some(Err(e))) if status_of(&e) == Some(404) => Ok(true),
            Ok(Some(Err(e))) => Err(self.engine_error(&format!("waiting for task {task_id} to stop"), e)),
        }
    }

    /// Removes the container (killing it if needed) with its anonymous volumes; named volumes stay.
    async fn remove(&self, task_id: &str) -> Result<(), DriverError> {
        let docker = self.client().await?;
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        self.forget(task_id);
        let mut networks = Vec::new();
        for id in self.find_all(&docker, task_id).await? {
            if let Ok(container) = docker.inspect_container(&id, None).await {
                let joined = container.network_settings.and_then(|n| n.networks).unwrap_or_default();
                networks.extend(joined.into_keys());
            }
            match docker.remove_container(&id, Some(options.clone())).await {
                // 409: a removal is already in progress.
                Err(e) if !matches!(status_of(&e), Some(404 | 409)) => {
                    return Err(self.engine_error(&format!("removing task {task_id}'s container"), e));
                }
                _ => {}
            }
        }
        self.prune_networks(&docker, networks).await;
        Ok(())
    }

    /// Removes the networks this node created that no container uses any more (the last task of a stack on this
    /// node is gone). Waits for containers being created to join theirs first.
    async fn prune_networks(&self, docker: &Docker, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        let _no_creation = self.networks_in_use.write().await;
        for name in names {
            let Ok(network) = docker.inspect_network(&name, None).await else {
                continue;
            };
            let ours = network
                .labels
                .as_ref()
                .is_some_and(|l| l.get(LABEL_NODE).is_some_and(|n| *n == self.node_id));
            // Containers created but not started are not endpoints yet: ask for every container that names it.
            let options = ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([("network".to_string(), vec![name.clone()])])),
                ..Default::default()
            };
            let unused = network.containers.as_ref().is_none_or(|c| c.is_empty())
                && docker
                    .list_containers(Some(options))
                    .await
                    .is_ok_and(|containers| containers.is_empty());
            if ours && unused {
                match docker.remove_network(network.id.as_deref().unwrap_or(&name)).await {
                    Ok(()) => tracing::debug!(network = %name, "removed a stack network no task uses"),
                    Err(e) => tracing::debug!(network = %name, "network not removed: {e}"),
                }
            }
        }
    }

    async fn list(&self) -> Result<Vec<(String, Observed)>, DriverError> {
        let docker = self.client().await?;
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![format!("{LABEL_NODE}={}", self.node_id), LABEL_TASK.to_string()],
            )])),
            ..Default::default()
        };
        let containers = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.engine_error("listing this node's task containers", e))?;
        let mut tasks = Vec::with_capacity(containers.len());
        for container in containers {
            let (Some(id), Some(task_id)) = (container.id, container.labels.and_then(|mut l| l.remove(LABEL_TASK)))
            else {
                continue;
            };
            match self.observe(&docker, &id).await? {
                // Removed since it was listed.
                Observed::Missing => {}
                observed => tasks.push((task_id, observed)),
            }
        }
        Ok(tasks)
    }

    async fn log_lines(
        self: Arc<Self>,
        task_id: &str,
        options: LogOptions,
    ) -> Result<BoxStream<'static, Result<LogLine, DriverError>>, DriverError> {
        let docker = self.client().await?;
        let Some(id) = self.find(&docker, task_id).await? else {
            return Err(DriverError::Runtime(format!(
                "task {task_id} has no container on node {}",
                self.node_id
            )));
        };
        let engine_options = LogsOptions {
            follow: options.follow,
            stdout: true,
            stderr: true,
            timestamps: options.timestamps,
            tail: options.tail.map_or_else(|| "all".to_string(), |n| n.to_string()),
            ..Default::default()
        };
        let doing = format!("reading task {task_id}'s logs");
        let source = docker.logs(&id, Some(engine_options)).boxed();
        let state = LogState {
            inner: self,
            doing,
            source,
            lines: LineSplitter::default(),
            pending: VecDeque::new(),
            done: false,
        };
        Ok(stream::unfold(state, |mut state| async move {
            loop {
                if let Some(item) = state.pending.pop_front() {
                    return Some((item, state));
                }
                if state.done {
                    return None;
                }
                match state.source.next().await {
                    Some(Ok(output)) => {
                        let (stream, bytes) = match &output {
                            bollard::container::LogOutput::StdErr { message } => (LogStream::Stderr, &message[..]),
                            bollard::container::LogOutput::StdOut { message }
                            | bollard::container::LogOutput::Console { message } => (LogStream::Stdout, &message[..]),
                            bollard::container::LogOutput::StdIn { .. } => continue,
                        };
                        state
                            .pending
                            .extend(state.lines.feed(stream, bytes).into_iter().map(Ok));
                    }
                    Some(Err(e)) => {
                        state.pending.extend(state.lines.finish().into_iter().map(Ok));
                        state.pending.push_back(Err(state.inner.engine_error(&state.doing, e)));
                        state.done = true;
                    }
                    None => {
                        state.pending.extend(state.lines.finish().into_iter().map(Ok));
                        state.done = true;
                    }
                }
            }
        })
        .boxed())
    }

    /// The engine event about one of this node's tasks, when it is one.
    fn engine_event(&self, message: EventMessage) -> Option<EngineEvent> {
        let actor = message.actor?;
        let attributes = actor.attributes.unwrap_or_default();
        if attributes.get(LABEL_NODE) != Some(&self.node_id) {
            return None;
        }
        let task_id = attributes.get(LABEL_TASK)?.clone();
        let meaning = event_meaning(message.action.as_deref()?, &attributes)?;
        Some(EngineEvent {
            task_id,
            container_id: actor.id,
            meaning,
        })
    }

    /// What an engine event says about its task, asking the engine when the event does not say it all.
    async fn resolve(&self, event: EngineEvent) -> Option<DriverEvent> {
        let observed = match event.meaning {
            EventMeaning::Observed(observed) => observed,
            // The event does not say whether there is a healthcheck (or the exit code): ask.
            EventMeaning::Inspect { started } => {
                let observed = match (&event.container_id, self.client().await) {
                    (Some(id), Ok(docker)) => self.observe(&docker, id).await.ok(),
                    _ => None,
                };
                match observed {
                    Some(Observed::Running { health }) => Observed::Running { health },
                    _ if started => Observed::Running {
                        health: TaskHealth::None,
                    },
                    Some(observed) => observed,
                    None => return None,
                }
            }
        };
        Some(DriverEvent {
            task_id: event.task_id,
            observed,
        })
    }

    /// After the event stream was lost: an event for every task of this node, as it is now, and `Missing` for each
    /// remembered one that is gone — whatever the engine could not replay (it restarted meanwhile) is covered.
    async fn everything_now(&self) -> Vec<EngineEvent> {
        let Ok(listed) = self.list().await else {
            return Vec::new();
        };
        let mut gone: std::collections::HashSet<String> = self
            .ids
            .lock()
            .map(|ids| ids.keys().cloned().collect())
            .unwrap_or_default();
        let mut events = Vec::with_capacity(listed.len() + gone.len());
        for (task_id, observed) in listed {
            gone.remove(&task_id);
            events.push(EngineEvent {
                task_id,
                container_id: None,
                meaning: EventMeaning::Observed(observed),
            });
        }
        events.extend(gone.into_iter().map(|task_id| EngineEvent {
            task_id,
            container_id: None,
            meaning: EventMeaning::Observed(Observed::Missing),
        }));
        events
    }
}

/// An engine event about one of this node's tasks.
#[derive(Debug)]
struct EngineEvent {
    task_id: String,
    container_id: Option<String>,
    meaning: EventMeaning,
}

struct LogState {
    inner: Arc<Inner>,
    doing: String,
    source: BoxStream<'static, Result<bollard::container::LogOutput, EngineError>>,
    lines: LineSplitter,
    pending: VecDeque<Result<LogLine, DriverError>>,
    done: bool,
}

/// Forwards this node's container events into `tx` until the receiver is dropped, reconnecting with backoff and
/// resuming after the last event it forwarded (the engine replays recent events given `since`).
async fn pump_events(inner: Arc<Inner>, since_nanos: i64, tx: mpsc::Sender<EngineEvent>) {
    let mut last_seen = since_nanos.saturating_sub(1);
    let mut backoff = EVENTS_BACKOFF_MIN;
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("label".to_string(), vec![format!("{LABEL_NODE}={}", inner.node_id)]),
        (
            "event".to_string(),
            ["start", "die", "destroy", "health_status"].map(String::from).to_vec(),
        ),
    ]);
    let mut reconnecting = false;
    loop {
        if let Ok(docker) = inner.client().await {
            if reconnecting {
                for event in inner.everything_now().await {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
            reconnecting = true;
            let options = EventsOptions {
                since: Some(format_since(last_seen.saturating_add(1))),
                until: None,
                filters: Some(filters.clone()),
            };
            let mut events = docker.events(Some(options));
            loop {
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    next = events.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        backoff = EVENTS_BACKOFF_MIN;
                        let at = message
                            .time_nano
                            .or(message.time.map(|s| s.saturating_mul(1_000_000_000)))
                            .unwrap_or(last_seen);
                        // Replayed after a reconnect: already forwarded.
                        if at <= last_seen && message.time_nano.is_some() {
                            continue;
                        }
                        last_seen = last_seen.max(at);
                        if let Some(event) = inner.engine_event(message) {
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        let e = inner.engine_error("watching docker events", e);
                        tracing::debug!("{e}; reconnecting");
                        break;
                    }
                    None => {
                        tracing::debug!("docker event stream ended; reconnecting");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(EVENTS_BACKOFF_MAX);
    }
}

/// What an engine event action says about a task.
#[derive(Debug, PartialEq, Eq)]
enum EventMeaning {
    Observed(Observed),
    /// Needs an inspect to say more; `started` = it is running (the `start` event).
    Inspect {
        started: bool,
    },
}

fn event_meaning(action: &str, attributes: &HashMap<String, String>) -> Option<EventMeaning> {
    let observed = match action {
        "start" => return Some(EventMeaning::Inspect { started: true }),
        "die" => match attributes.get("exitCode").and_then(|code| code.parse().ok()) {
            Some(code) => Observed::Exited { code },
            None => return Some(EventMeaning::Inspect { started: false }),
        },
        "destroy" => Observed::Missing,
        other => match other.strip_prefix("health_status:").map(str::trim) {
            Some("healthy") => Observed::Running {
                health: TaskHealth::Healthy,
            },
            Some("starting") => Observed::Running {
                health: TaskHealth::Starting,
            },
            Some("unhealthy") => Observed::Running {
                health: TaskHealth::Unhealthy,
            },
            _ => return None,
        },
    };
    Some(EventMeaning::Observed(observed))
}

/// A container's state as the agent sees it.
fn observed_of(state: Option<&ContainerState>) -> Observed {
    let Some(state) = state else {
        return Observed::Created;
    };
    let code = state.exit_code.unwrap_or(0);
    match state.status {
        Some(
            ContainerStateStatusEnum::RUNNING
            | ContainerStateStatusEnum::PAUSED
            | ContainerStateStatusEnum::RESTARTING
            | ContainerStateStatusEnum::STOPPING,
        ) => Observed::Running {
            health: health_of(state),
        },
        Some(
            ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD | ContainerStateStatusEnum::REMOVING,
        ) => Observed::Exited { code },
        // A start that failed (e.g. the command does not exist) leaves the container `created` with an error.
        _ if code != 0 || state.error.as_deref().is_some_and(|e| !e.is_empty()) => Observed::Exited { code },
        _ => Observed::Created,
    }
}

fn health_of(state: &ContainerState) -> TaskHealth {
    match state.health.as_ref().and_then(|h| h.status) {
        Some(HealthStatusEnum::HEALTHY) => TaskHealth::Healthy,
        Some(HealthStatusEnum::STARTING) => TaskHealth::Starting,
        Some(HealthStatusEnum::UNHEALTHY) => TaskHealth::Unhealthy,
        Some(HealthStatusEnum::NONE | HealthStatusEnum::EMPTY) | None => TaskHealth::None,
    }
}

/// The container to create for a task (everything but networks, which a later step attaches).
/// `networks`: the id of each network the task attaches to, by name (a name can be ambiguous for a moment).
fn container_body(
    task: &TaskRun,
    image: &str,
    mounts: Vec<EngineMount>,
    networks: &HashMap<String, String>,
) -> ContainerCreateBody {
    let spec = &task.spec;
    let env: Vec<String> = spec
        .env
        .iter()
        .filter_map(|(key, value)| value.as_ref().map(|value| format!("{key}={value}")))
        .chain(task.env.iter().map(|(key, value)| format!("{key}={value}")))
        .collect();
    let limits = &spec.resources.limits;
    let host_config = HostConfig {
        mounts: non_empty(mounts),
        extra_hosts: non_empty(spec.extra_hosts.iter().map(|h| extra_host(h)).collect()),
        dns: non_empty(spec.dns.clone()),
        dns_search: non_empty(spec.dns_search.clone()),
        cap_add: non_empty(spec.cap_add.clone()),
        cap_drop: non_empty(spec.cap_drop.clone()),
        sysctls: (!spec.sysctls.is_empty()).then(|| spec.sysctls.clone().into_iter().collect()),
        ulimits: non_empty(
            spec.ulimits
                .iter()
                .map(|(name, limit)| ResourcesUlimits {
                    name: Some(name.clone()),
                    soft: Some(limit.soft),
                    hard: Some(limit.hard),
                })
                .collect(),
        ),
        init: spec.init.then_some(true),
        readonly_rootfs: spec.read_only.then_some(true),
        nano_cpus: positive(limits.nano_cpus),
        memory: positive(limits.memory_bytes),
        pids_limit: (limits.pids > 0).then_some(limits.pids),
        memory_reservation: positive(spec.resources.reservations.memory_bytes),
        port_bindings: port_bindings(&task.ports),
        network_mode: spec
            .networks
            .first()
            .map(|n| networks.get(&n.target).cloned().unwrap_or_else(|| n.target.clone())),
        log_config: spec.logging.as_ref().map(|logging| HostConfigLogConfig {
            typ: Some(logging.driver.clone()),
            config: Some(logging.options.clone().into_iter().collect()),
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: spec.command.clone(),
        entrypoint: spec.entrypoint.clone(),
        env: Some(env),
        labels: Some(container_labels(task)),
        user: spec.user.clone(),
        working_dir: spec.working_dir.clone(),
        hostname: spec.hostname.clone(),
        tty: Some(spec.tty),
        open_stdin: Some(spec.stdin_open),
        stop_signal: spec.stop_signal.clone(),
        stop_timeout: Some(i64::try_from(spec.stop_grace_period_ms.div_ceil(1000)).unwrap_or(i64::MAX)),
        healthcheck: spec.healthcheck.as_ref().map(health_config),
        host_config: Some(host_config),
        networking_config: networking_config(task, networks),
        exposed_ports: non_empty(task.ports.iter().map(port_key).collect()),
        ..Default::default()
    }
}

/// The bridge network to create on this node for the task's network `name`: the stack's subnets, internal flag,
/// IPv6 and labels when the task carries its spec (options only for a bridge driver: an overlay's mean nothing here).
fn network_request(task: &TaskRun, name: &str) -> NetworkCreateRequest {
    let spec = task.networks.iter().find(|n| n.name == name);
    let mut labels: HashMap<String, String> = spec.map(|s| s.labels.clone().into_iter().collect()).unwrap_or_default();
    labels.extend(volume_labels(task));
    let pools: Vec<IpamConfig> = spec
        .map(|s| {
            s.ipam
                .iter()
                .map(|p| IpamConfig {
                    subnet: p.subnet.clone(),
                    gateway: p.gateway.clone(),
                    ip_range: p.ip_range.clone(),
                    ..Default::default()
                })
                .collect()
        })
        .unwrap_or_default();
    NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".to_string()),
        attachable: Some(true),
        internal: spec.map(|s| s.internal),
        enable_ipv6: spec.map(|s| s.enable_ipv6),
        ipam: (!pools.is_empty()).then(|| Ipam {
            config: Some(pools),
            ..Default::default()
        }),
        options: spec
            .filter(|s| s.driver == "bridge")
            .map(|s| s.driver_opts.clone().into_iter().collect()),
        labels: Some(labels),
        ..Default::default()
    }
}

/// `80/tcp`, as the engine names a container port.
fn port_key(port: &swarm_specs::spec::PortConfig) -> String {
    let protocol = match port.protocol {
        swarm_specs::spec::Protocol::Tcp => "tcp",
        swarm_specs::spec::Protocol::Udp => "udp",
        swarm_specs::spec::Protocol::Sctp => "sctp",
    };
    format!("{}/{protocol}", port.target)
}

/// The service's ports bound on this node: the published port, or one the engine picks when none is given.
fn port_bindings(ports: &[swarm_specs::spec::PortConfig]) -> Option<PortMap> {
    if ports.is_empty() {
        return None;
    }
    let mut map = PortMap::new();
    for port in ports {
        let binding = PortBinding {
            host_ip: None,
            host_port: Some(port.published.map(|p| p.to_string()).unwrap_or_default()),
        };
        map.entry(port_key(port))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(binding);
    }
    Some(map)
}

/// The task's networks, each with the service's short name (and its own aliases) as DNS aliases, so that tasks find
/// each other by service name through Docker's DNS.
fn networking_config(task: &TaskRun, networks: &HashMap<String, String>) -> Option<NetworkingConfig> {
    if task.spec.networks.is_empty() {
        return None;
    }
    let short = match &task.stack {
        Some(stack) => task.service.strip_prefix(&format!("{stack}_")).unwrap_or(&task.service),
        None => task.service.as_str(),
    };
    let endpoints = task
        .spec
        .networks
        .iter()
        .map(|attachment| {
            let mut aliases = vec![short.to_string()];
            aliases.extend(attachment.aliases.iter().cloned());
            let settings = EndpointSettings {
                aliases: Some(aliases),
                ..Default::default()
            };
            let key = networks
                .get(&attachment.target)
                .cloned()
                .unwrap_or_else(|| attachment.target.clone());
            (key, settings)
        })
        .collect();
    Some(NetworkingConfig {
        endpoints_config: Some(endpoints),
    })
}

/// The user's container labels, then ours (which win, so a task cannot pass for another).
fn container_labels(task: &TaskRun) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = task.spec.container_labels.clone().into_iter().collect();
    labels.insert(LABEL_TASK.into(), task.task_id.clone());
    labels.insert(LABEL_SERVICE.into(), task.service.clone());
    labels.insert(LABEL_NODE.into(), task.node_id.clone());
    if let Some(slot) = task.slot {
        labels.insert(LABEL_SLOT.into(), slot.to_string());
    }
    if let Some(stack) = &task.stack {
        labels.insert(LABEL_STACK.into(), stack.clone());
    }
    labels
}

/// Volumes (named, created on demand, and anonymous) carry the stack and the node that created them.
fn volume_labels(task: &TaskRun) -> HashMap<String, String> {
    let mut labels = HashMap::from([(LABEL_NODE.to_string(), task.node_id.clone())]);
    if let Some(stack) = &task.stack {
        labels.insert(LABEL_STACK.into(), stack.clone());
    }
    labels
}

fn engine_mounts(task: &TaskRun) -> Result<Vec<EngineMount>, DriverError> {
    let mut mounts = spec_mounts(task)?;
    // Secrets and configs: each file, written by the agent on its tmpfs, bind-mounted read-only at its target.
    mounts.extend(task.files.iter().map(|file| EngineMount {
        typ: Some(EngineMountType::BIND),
        source: Some(file.host_path.display().to_string()),
        target: Some(file.target.clone()),
        read_only: Some(true),
        ..Default::default()
    }));
    Ok(mounts)
}

fn spec_mounts(task: &TaskRun) -> Result<Vec<EngineMount>, DriverError> {
    task.spec
        .mounts
        .iter()
        .map(|mount| {
            let base = EngineMount {
                target: Some(mount.target.clone()),
                source: mount.source.clone(),
                read_only: Some(mount.read_only),
                ..Default::default()
            };
            Ok(match mount.kind {
                MountType::Volume => EngineMount {
                    typ: Some(EngineMountType::VOLUME),
                    volume_options: Some(MountVolumeOptions {
                        no_copy: Some(mount.no_copy),
                        labels: Some(volume_labels(task)),
                        ..Default::default()
                    }),
                    ..base
                },
                MountType::Bind => EngineMount {
                    typ: Some(EngineMountType::BIND),
                    bind_options: match mount.bind_propagation.as_deref() {
                        None => None,
                        Some(propagation) => Some(MountBindOptions {
                            propagation: Some(propagation.parse::<MountBindOptionsPropagationEnum>().map_err(
                                |_| {
                                    DriverError::Rejected(format!(
                                        "task {}: bind mount {} has propagation {propagation:?}; use one of private, \
                                         rprivate, shared, rshared, slave, rslave",
                                        task.task_id, mount.target
                                    ))
                                },
                            )?),
                            ..Default::default()
                        }),
                    },
                    ..base
                },
                MountType::Tmpfs => EngineMount {
                    typ: Some(EngineMountType::TMPFS),
                    source: None,
                    tmpfs_options: Some(MountTmpfsOptions {
                        size_bytes: mount.tmpfs_size.and_then(|size| i64::try_from(size).ok()),
                        mode: mount.tmpfs_mode.map(i64::from),
                        ..Default::default()
                    }),
                    ..base
                },
            })
        })
        .collect()
}

fn health_config(check: &Healthcheck) -> HealthConfig {
    let nanos = |ms: Option<u64>| ms.map(|ms| i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX));
    HealthConfig {
        test: Some(check.test.clone()),
        interval: nanos(check.interval_ms),
        timeout: nanos(check.timeout_ms),
        start_period: nanos(check.start_period_ms),
        start_interval: nanos(check.start_interval_ms),
        retries: check.retries.map(|r| i64::try_from(r).unwrap_or(i64::MAX)),
    }
}

/// `host=ip` (newer Compose) → `host:ip`, the engine's form.
fn extra_host(entry: &str) -> String {
    match entry.split_once('=') {
        Some((host, ip)) => format!("{host}:{ip}"),
        None => entry.to_string(),
    }
}

/// Pulling a reference without tag or digest would pull every tag: ask for `latest`, as `docker pull` does.
fn pull_reference(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || last.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

fn positive(amount: u64) -> Option<i64> {
    (amount > 0).then(|| i64::try_from(amount).unwrap_or(i64::MAX))
}

fn status_of(e: &EngineError) -> Option<u16> {
    match e {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn is_connection_error(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::HyperLegacyError { .. }
            | EngineError::HyperResponseError { .. }
            | EngineError::IOError { .. }
            | EngineError::SocketNotFoundError(_)
            | EngineError::RequestTimeoutError
    )
}

fn unix_nanos(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The engine's `since` form: `<seconds>.<nanoseconds>`.
fn format_since(nanos: i64) -> String {
    format!(
        "{}.{:09}",
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000)
    )
}

/// Cuts the engine's log frames (which may hold several lines or part of one) into lines, per stream.
#[derive(Default)]
struct LineSplitter {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl LineSplitter {
    fn feed(&mut self, stream: LogStream, bytes: &[u8]) -> Vec<LogLine> {
        let buffer = match stream {
            LogStream::Stdout => &mut self.stdout,
            LogStream::Stderr => &mut self.stderr,
        };
        buffer.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            lines.push(log_line(stream.clone(), &line[..end]));
        }
        lines
    }

    /// What is left without a final newline.
    fn finish(&mut self) -> Vec<LogLine> {
        let mut lines = Vec::new();
        for (stream, buffer) in [
            (LogStream::Stdout, &mut self.stdout),
            (LogStream::Stderr, &mut self.stderr),
        ] {
            if !buffer.is_empty() {
                lines.push(log_line(stream, buffer));
                buffer.clear();
            }
        }
        lines
    }
}

fn log_line(stream: LogStream, bytes: &[u8]) -> LogLine {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    LogLine {
        stream,
        text: String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bollard::models::Health;
    use swarm_specs::spec::Driver as SpecDriver;
    use swarm_specs::spec::Logging;
    use swarm_specs::spec::Mount;
    use swarm_specs::spec::TaskSpec;
    use swarm_specs::spec::Ulimit;

    use super::*;

    fn spec() -> TaskSpec {
        let mut spec = TaskSpec::with_command(
            SpecDriver::Docker,
            Some("swarm-test/busybox:1".into()),
            vec!["sleep".into(), "60".into()],
        );
        spec.env = BTreeMap::from([("A".into(), Some("1".into())), ("FROM_NODE".into(), None)]);
        spec.container_labels = BTreeMap::from([(LABEL_TASK.into(), "spoofed".into()), ("team".into(), "x".into())]);
        spec.user = Some("1000".into());
        spec.stop_grace_period_ms = 1_500;
        spec.stop_signal = Some("SIGINT".into());
        spec.logging = Some(Logging {
            driver: "json-file".into(),
            options: BTreeMap::from([("max-size".into(), "1m".into())]),
        });
        spec.extra_hosts = vec!["a=10.0.0.1".into(), "b:10.0.0.2".into()];
        spec.ulimits = BTreeMap::from([("nofile".into(), Ulimit { soft: 10, hard: 20 })]);
        spec.read_only = true;
        spec.resources.limits.nano_cpus = 500_000_000;
        spec
    }

    fn task(spec: TaskSpec) -> TaskRun {
        TaskRun {
            task_id: "t1".into(),
            service: "st_web".into(),
            slot: Some(2),
            node_id: "n1".into(),
            stack: Some("st".into()),
            name: "st_web.2.t1".into(),
            spec,
            env: BTreeMap::from([("SWARM_TASK_ID".into(), "t1".into())]),
            ports: Vec::new(),
            networks: Vec::new(),
            files: Vec::new(),
        }
    }

    #[test]
    fn secret_and_config_files_are_bind_mounted_read_only_at_their_targets() {
        let mut run = task(spec());
        run.files = vec![crate::driver::MountedFile {
            host_path: "/data/task-files/t1/secrets/db".into(),
            target: "/run/secrets/db".into(),
        }];
        let mounts = engine_mounts(&run).unwrap();
        let file = mounts.last().unwrap();
        assert_eq!(file.typ, Some(EngineMountType::BIND));
        assert_eq!(file.source.as_deref(), Some("/data/task-files/t1/secrets/db"));
        assert_eq!(file.target.as_deref(), Some("/run/secrets/db"));
        assert_eq!(file.read_only, Some(true));
    }

    #[test]
    fn a_stack_network_is_created_with_its_subnet_and_labels() {
        let mut run = task(spec());
        run.networks = vec![swarm_specs::spec::NetworkSpec {
            name: "st_back".into(),
            driver: "overlay".into(),
            driver_opts: BTreeMap::from([("encrypted".into(), "".into())]),
            attachable: false,
            internal: true,
            enable_ipv6: false,
            ipam: vec![swarm_specs::spec::IpamPool {
                subnet: Some("10.7.0.0/24".into()),
                gateway: None,
                ip_range: None,
            }],
            labels: BTreeMap::from([("com.docker.stack.namespace".into(), "st".into())]),
            external: false,
        }];
        let request = network_request(&run, "st_back");
        assert_eq!(request.driver.as_deref(), Some("bridge"));
        assert_eq!(request.internal, Some(true));
        assert_eq!(request.options, None, "an overlay's options mean nothing to a bridge");
        let pools = request.ipam.unwrap().config.unwrap();
        assert_eq!(pools[0].subnet.as_deref(), Some("10.7.0.0/24"));
        let labels = request.labels.unwrap();
        assert_eq!(labels["com.docker.stack.namespace"], "st");
        assert_eq!(labels[LABEL_NODE], "n1");
        // A network the task has no spec for (external, say) is a plain bridge.
        let plain = network_request(&run, "elsewhere");
        assert!(plain.ipam.is_none() && plain.internal.is_none());
    }

    #[test]
    fn published_ports_are_bound_on_the_node() {
        let mut run = task(spec());
        run.ports = vec![
            swarm_specs::units::parse_port_short("8080:80").unwrap().remove(0),
            swarm_specs::units::parse_port_short("53/udp").unwrap().remove(0),
        ];
        let body = container_body(&run, "img", vec![], &HashMap::new());
        assert_eq!(
            body.exposed_ports,
            Some(vec!["80/tcp".to_string(), "53/udp".to_string()])
        );
        let bindings = body.host_config.unwrap().port_bindings.unwrap();
        let host_port = |key: &str| bindings[key].as_ref().unwrap()[0].host_port.clone();
        assert_eq!(host_port("80/tcp"), Some("8080".to_string()));
        assert_eq!(
            host_port("53/udp"),
            Some(String::new()),
            "no published port: the engine picks one"
        );
    }

    #[test]
    fn container_body_maps_the_spec() {
        let body = container_body(&task(spec()), "img", vec![], &HashMap::new());
        assert_eq!(body.env, Some(vec!["A=1".to_string(), "SWARM_TASK_ID=t1".to_string()]));
        let labels = body.labels.unwrap_or_default();
        assert_eq!(labels.get(LABEL_TASK).map(String::as_str), Some("t1"));
        assert_eq!(labels.get(LABEL_SLOT).map(String::as_str), Some("2"));
        assert_eq!(labels.get(LABEL_STACK).map(String::as_str), Some("st"));
        assert_eq!(labels.get("team").map(String::as_str), Some("x"));
        assert_eq!(body.stop_timeout, Some(2));
        assert_eq!(body.stop_signal.as_deref(), Some("SIGINT"));
        let host = body.host_config.unwrap_or_default();
        assert_eq!(
            host.extra_hosts,
            Some(vec!["a:10.0.0.1".to_string(), "b:10.0.0.2".to_string()])
        );
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, None);
        assert_eq!(host.pids_limit, None);
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.init, None);
        assert_eq!(host.ulimits.map(|u| u.len()), Some(1));
        assert_eq!(host.log_config.and_then(|l| l.typ).as_deref(), Some("json-file"));
    }

    #[test]
    fn healthcheck_durations_are_nanoseconds() {
        let check = Healthcheck {
            test: vec!["CMD".into(), "true".into()],
            interval_ms: Some(250),
            timeout_ms: None,
            start_period_ms: None,
            start_interval_ms: None,
            retries: Some(2),
        };
        let config = health_config(&check);
        assert_eq!(config.interval, Some(250_000_000));
        assert_eq!(config.timeout, None);
        assert_eq!(config.retries, Some(2));
    }

    #[test]
    fn unknown_bind_propagation_is_rejected() {
        let mut spec = spec();
        spec.mounts = vec![Mount {
            kind: MountType::Bind,
            source: Some("/tmp".into()),
            target: "/x".into(),
            read_only: false,
            no_copy: false,
            bind_propagation: Some("sideways".into()),
            tmpfs_size: None,
            tmpfs_mode: None,
        }];
        assert!(matches!(engine_mounts(&task(spec)), Err(DriverError::Rejected(m)) if m.contains("sideways")));
    }

    #[test]
    fn events_map_to_observations() {
        let attributes = HashMap::from([("exitCode".to_string(), "137".to_string())]);
        let none = HashMap::new();
        assert_eq!(
            event_meaning("die", &attributes),
            Some(EventMeaning::Observed(Observed::Exited { code: 137 }))
        );
        assert_eq!(
            event_meaning("die", &none),
            Some(EventMeaning::Inspect { started: false })
        );
        assert_eq!(
            event_meaning("destroy", &none),
            Some(EventMeaning::Observed(Observed::Missing))
        );
        assert_eq!(
            event_meaning("health_status: healthy", &none),
            Some(EventMeaning::Observed(Observed::Running {
                health: TaskHealth::Healthy
            }))
        );
        assert_eq!(
            event_meaning("health_status: unhealthy", &none),
            Some(EventMeaning::Observed(Observed::Running {
                health: TaskHealth::Unhealthy
            }))
        );
        assert_eq!(
            event_meaning("start", &none),
            Some(EventMeaning::Inspect { started: true })
        );
        assert_eq!(event_meaning("exec_die", &none), None);
    }

    #[test]
    fn states_map_to_observations() {
        let state = |status, code, health: Option<HealthStatusEnum>, error: &str| ContainerState {
            status: Some(status),
            exit_code: Some(code),
            error: Some(error.to_string()),
            health: health.map(|status| Health {
                status: Some(status),
                ..Default::default()
            }),
            ..Default::default()
        };
        use ContainerStateStatusEnum as S;
        assert_eq!(observed_of(Some(&state(S::CREATED, 0, None, ""))), Observed::Created);
        assert_eq!(
            observed_of(Some(&state(S::CREATED, 127, None, "exec: not found"))),
            Observed::Exited { code: 127 }
        );
        assert_eq!(
            observed_of(Some(&state(S::RUNNING, 0, None, ""))),
            Observed::Running {
                health: TaskHealth::None
            }
        );
        assert_eq!(
            observed_of(Some(&state(S::RUNNING, 0, Some(HealthStatusEnum::STARTING), ""))),
            Observed::Running {
                health: TaskHealth::Starting
            }
        );
        assert_eq!(
            observed_of(Some(&state(S::RUNNING, 0, Some(HealthStatusEnum::HEALTHY), ""))),
            Observed::Running {
                health: TaskHealth::Healthy
            }
        );
        assert_eq!(
            observed_of(Some(&state(S::EXITED, 3, None, ""))),
            Observed::Exited { code: 3 }
        );
    }

    #[test]
    fn log_frames_become_lines() {
        let mut lines = LineSplitter::default();
        assert_eq!(
            lines.feed(LogStream::Stdout, b"a\r\nb"),
            vec![log_line(LogStream::Stdout, b"a")]
        );
        assert_eq!(
            lines.feed(LogStream::Stderr, b"e\n"),
            vec![log_line(LogStream::Stderr, b"e")]
        );
        assert_eq!(lines.feed(LogStream::Stdout, b"c\nd\n").len(), 2);
        assert!(lines.finish().is_empty());
        lines.feed(LogStream::Stdout, b"tail");
        assert_eq!(lines.finish(), vec![log_line(LogStream::Stdout, b"tail")]);
    }

    #[test]
    fn references_without_tag_pull_latest() {
        assert_eq!(pull_reference("busybox"), "busybox:latest");
        assert_eq!(
            pull_reference("localhost:5000/busybox"),
            "localhost:5000/busybox:latest"
        );
        assert_eq!(pull_reference("swarm-test/busybox:1"), "swarm-test/busybox:1");
        assert_eq!(pull_reference("busybox@sha256:abc"), "busybox@sha256:abc");
        assert_eq!(format_since(1_500_000_000_123), "1500.000000123");
    }
}
