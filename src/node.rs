//! `swarm daemon`, `init`, `join`, `join-token`, `leave`, `info` and `swarm node ...`: the cluster commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use swarm_reconciler::ca::Role;
use swarm_reconciler::cluster::Node;
use swarm_reconciler::daemon::Daemon;
use swarm_reconciler::daemon::DaemonOptions;
use swarm_reconciler::manager::manager_status;
use swarm_reconciler::manager::ManagerConfig;
use swarm_reconciler::wire::*;

use crate::client::Client;

pub struct DaemonArgs {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub hostname: Option<String>,
    pub election_timeout_ms: Option<(u64, u64)>,
    pub raft_heartbeat_ms: Option<u64>,
    pub snapshot_interval: Option<u64>,
    /// Do not offer the docker driver (process driver only).
    pub no_docker: bool,
    /// The Docker Engine's socket.
    pub docker_socket: PathBuf,
    /// On shutdown, stop and remove this node's tasks instead of leaving them for the next start to adopt.
    pub stop_tasks_on_exit: bool,
}

/// Runs the node process until SIGINT or SIGTERM.
pub async fn daemon(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    let (ready, _) = tokio::sync::oneshot::channel();
    serve_daemon(args, ready, shutdown).await
}

/// Runs the node process until `shutdown` completes; `ready` fires once its socket accepts requests.
pub async fn serve_daemon(
    args: DaemonArgs,
    ready: tokio::sync::oneshot::Sender<()>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<ExitCode> {
    swarm_reconciler::tls::install_crypto_provider();
    let mut raft = swarm_reconciler::store::default_raft_config();
    if let Some((min, max)) = args.election_timeout_ms {
        raft.election_timeout_min = min;
        raft.election_timeout_max = max;
    }
    if let Some(hb) = args.raft_heartbeat_ms {
        raft.heartbeat_interval = hb;
    }
    if let Some(n) = args.snapshot_interval {
        raft.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(n.max(1));
    }
    let docker_socket = args.docker_socket.clone();
    let options = DaemonOptions {
        data_dir: args.data_dir.clone(),
        docker_socket: (!args.no_docker).then_some(docker_socket),
        manager: ManagerConfig {
            raft,
            ..ManagerConfig::default()
        },
        description: swarm_reconciler::daemon::describe_this_node(args.hostname),
    };
    let daemon = Daemon::new(options)?;
    daemon.resume().await.context("cannot resume this node's role")?;
    if let Some(parent) = args.socket.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let _ = std::fs::remove_file(&args.socket);
    let listener = tokio::net::UnixListener::bind(&args.socket)
        .with_context(|| format!("cannot listen on {}", args.socket.display()))?;
    std::fs::set_permissions(&args.socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    tracing::info!(socket = %args.socket.display(), data = %args.data_dir.display(), "swarm daemon ready");
    let _ = ready.send(());
    swarm_reconciler::tls::serve_unix(listener, swarm_reconciler::api::local_router(daemon.clone()), shutdown).await?;
    if args.stop_tasks_on_exit {
        daemon.stop_tasks().await;
    }
    daemon.stop().await;
    let _ = std::fs::remove_file(&args.socket);
    Ok(ExitCode::SUCCESS)
}

pub async fn init(client: &Client, req: InitRequest) -> anyhow::Result<ExitCode> {
    let r: InitResponse = client.post("/v1/init", &req).await?;
    println!("Swarm initialized: current node ({}) is now a manager.\n", r.node_id);
    println!("To add a worker to this swarm, run the following command:\n");
    println!("    swarm join --token {} {}\n", r.worker_token, r.advertise_addr);
    println!("To add a manager to this swarm, run 'swarm join-token manager' and follow the instructions.");
    if let Some(key) = &r.unlock_key {
        println!("\n{}", crate::secret::unlock_key_text(key));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn join(client: &Client, req: JoinRequest) -> anyhow::Result<ExitCode> {
    let r: JoinResponse = client.post("/v1/join-cluster", &req).await?;
    match r.role {
        Role::Manager => println!("This node joined a swarm as a manager."),
        Role::Worker => println!("This node joined a swarm as a worker."),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn join_token(client: &Client, role: &str, quiet: bool, rotate: bool) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/join-token/{role}{}", if rotate { "?rotate=true" } else { "" });
    let t: Token = client.get(&path).await?;
    if rotate && !quiet {
        println!("Successfully rotated {role} join token.\n");
    }
    if quiet {
        println!("{}", t.token);
        return Ok(ExitCode::SUCCESS);
    }
    let info: Info = client.get("/v1/info").await?;
    println!("To add a {role} to this swarm, run the following command:\n");
    println!("    swarm join --token {} {}\n", t.token, info.node_addr);
    Ok(ExitCode::SUCCESS)
}

pub async fn leave(client: &Client, force: bool) -> anyhow::Result<ExitCode> {
    let _: Empty = client.post("/v1/leave-cluster", &LeaveRequest { force }).await?;
    println!("Node left the swarm.");
    Ok(ExitCode::SUCCESS)
}

pub async fn info(client: &Client, format_json: bool) -> anyhow::Result<ExitCode> {
    let i: Info = client.get("/v1/info").await?;
    if format_json {
        println!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Swarm: {}", i.local_node_state);
    if i.local_node_state != "active" {
        return Ok(ExitCode::SUCCESS);
    }
    println!(" NodeID: {}", i.node_id);
    println!(" Is Manager: {}", i.is_manager);
    println!(" ClusterID: {}", i.cluster_id);
    if i.is_manager {
        println!(" Managers: {}", i.managers);
        println!(" Nodes: {}", i.nodes);
        println!(" Leader: {}", i.leader);
        println!(" Raft:");
        println!("  Term: {}", i.raft_term);
        println!("  Last Applied: {}", i.raft_last_applied);
        println!("  Snapshot Interval: {}", i.snapshot_interval);
        println!("  Election Timeout: {} ms", i.election_timeout_ms);
        println!("  Heartbeat Interval: {} ms", i.raft_heartbeat_ms);
        println!(" Dispatcher:");
        println!(
            "  Heartbeat Period: {} ms (Down after {} missed)",
            i.heartbeat_period_ms, i.heartbeat_grace
        );
    }
    println!(" CA Configuration:");
    println!("  CA Expiry: {}", ago_or_in(i.ca_expiry_unix));
    println!("  Node Certificate Expiry: {}", ago_or_in(i.cert_expiry_unix));
    println!(" Node Address: {}", i.node_addr);
    println!(" Manager Addresses:");
    for m in &i.managers_known {
        println!("  {m}");
    }
    Ok(ExitCode::SUCCESS)
}

fn ago_or_in(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if unix == 0 {
        return "-".into();
    }
    if unix >= now {
        format!("in {}", human_duration(Duration::from_secs(unix - now)))
    } else {
        format!("{} ago", human_duration(Duration::from_secs(now - unix)))
    }
}

/// Docker's `units.HumanDuration`, roughly: "37 seconds", "3 hours", "89 days".
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "about a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "about an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        172_800..=1_209_599 => format!("{} days", s / 86_400),
        1_209_600..=5_183_999 => format!("{} weeks", s / 604_800),
        5_184_000..=63_071_999 => format!("{} months", s / 2_592_000),
        _ => format!("{} years", s / 31_536_000),
    }
}

/// `swarm node ls` with Docker's columns.
pub fn format_node_table(list: &NodeList) -> String {
    let mut rows = vec![[
        "ID",
        "HOSTNAME",
        "STATUS",
        "AVAILABILITY",
        "MANAGER STATUS",
        "ENGINE VERSION",
    ]
    .map(String::from)
    .to_vec()];
    for n in &list.nodes {
        let id = if n.id == list.self_id {
            format!("{} *", n.id)
        } else {
            n.id.clone()
        };
        rows.push(vec![
            id,
            n.description.hostname.clone(),
            n.status.title().to_string(),
            n.availability.title().to_string(),
            manager_status(n, list.leader.as_deref()).to_string(),
            n.description.engine_version.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    crate::service::table(&rows)
}

pub async fn node_ls(client: &Client, quiet: bool) -> anyhow::Result<ExitCode> {
    let mut list: NodeList = client.get("/v1/nodes").await?;
    // The list comes from the leader; `*` marks the node this CLI talks to, as Docker marks it.
    if let Ok(info) = client.get::<Info>("/v1/info").await {
        list.self_id = info.node_id;
    }
    if list.stale {
        eprintln!("warning: this manager has no leader (no quorum?): the list may be out of date");
    }
    if quiet {
        for n in &list.nodes {
            println!("{}", n.id);
        }
    } else {
        print!("{}", format_node_table(&list));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn node_inspect(client: &Client, ids: &[String], pretty: bool) -> anyhow::Result<ExitCode> {
    let mut nodes: Vec<Node> = Vec::new();
    for id in ids {
        nodes.push(client.get(&format!("/v1/nodes/{}", url_segment(id))).await?);
    }
    if !pretty {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(ExitCode::SUCCESS);
    }
    for n in nodes {
        println!("ID:\t\t\t{}", n.id);
        if !n.labels.is_empty() {
            println!("Labels:");
            for (k, v) in &n.labels {
                println!(" - {k}={v}");
            }
        }
        println!("Hostname:\t\t{}", n.description.hostname);
        println!("Status:");
        println!(" State:\t\t\t{}", n.status.title());
        if !n.status_message.is_empty() {
            println!(" Message:\t\t{}", n.status_message);
        }
        println!(" Availability:\t\t{}", n.availability.title());
        println!(" Address:\t\t{}", n.addr);
        if let Some(addr) = &n.manager_addr {
            println!("Manager Status:");
            println!(" Address:\t\t{addr}");
        }
        println!("Platform:");
        println!(" Operating System:\t{}", n.description.os);
        println!(" Architecture:\t\t{}", n.description.arch);
        println!("Resources:");
        println!(" CPUs:\t\t\t{}", n.description.nano_cpus / 1_000_000_000);
        println!(
            " Memory:\t\t{:.4}GiB",
            n.description.memory_bytes as f64 / (1u64 << 30) as f64
        );
        println!(
            "Engine Version:\t\t{}",
            n.description.engine_version.as_deref().unwrap_or("-")
        );
        println!("Drivers:\t\t{}", n.description.drivers.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn node_promote_demote(client: &Client, ids: &[String], promote: bool) -> anyhow::Result<ExitCode> {
    let verb = if promote { "promote" } else { "demote" };
    for id in ids {
        let m: Message = client
            .post(&format!("/v1/nodes/{}/{verb}", url_segment(id)), &Empty {})
            .await?;
        println!("{}", m.message);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn node_rm(client: &Client, ids: &[String], force: bool) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for id in ids {
        let path = format!(
            "/v1/nodes/{}{}",
            url_segment(id),
            if force { "?force=true" } else { "" }
        );
        match client.delete::<Message>(&path).await {
            Ok(m) => println!("{}", m.message),
            Err(e) => {
                eprintln!("Error: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

pub async fn node_update(client: &Client, id: &str, update: NodeUpdate) -> anyhow::Result<ExitCode> {
    let n: Node = client
        .post(&format!("/v1/nodes/{}/update", url_segment(id)), &update)
        .await?;
    println!("{}", n.id);
    Ok(ExitCode::SUCCESS)
}

/// Node ids and hostnames are plain words; anything else is refused rather than sent into a URL.
pub fn url_segment(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub async fn debug_run(
    client: &Client,
    node: &str,
    driver: &str,
    image: Option<String>,
    service: &str,
    slot: u64,
    grace_ms: u64,
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    use swarm_specs::spec::Driver;
    use swarm_specs::task::Task;
    use swarm_specs::task::TaskState;
    use swarm_specs::task::TaskStatus;
    let target: Node = client.get(&format!("/v1/nodes/{}", url_segment(node))).await?;
    let driver = if driver == "docker" {
        Driver::Docker
    } else {
        Driver::Process
    };
    let mut spec = swarm_specs::spec::TaskSpec::with_command(driver, image, command);
    spec.stop_grace_period_ms = grace_ms;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)?;
    let task = Task {
        id: swarm_reconciler::ca::new_id(),
        service: if service.starts_with(swarm_specs::task::MANUAL_SERVICE_PREFIX) {
            service.to_string()
        } else {
            format!("{}-{service}", swarm_specs::task::MANUAL_SERVICE_PREFIX)
        },
        slot: Some(slot),
        node_id: Some(target.id.clone()),
        spec_version: 1,
        spec,
        desired_state: TaskState::Running,
        status: TaskStatus::new(TaskState::Assigned, now, "assigned"),
        created_at: now,
        ports: Vec::new(),
        networks: Vec::new(),
        started_at: None,
    };
    let _: Empty = client.post("/v1/tasks", &vec![task.clone()]).await?;
    println!("{}", task.id);
    Ok(ExitCode::SUCCESS)
}

pub async fn debug_desire(client: &Client, id: &str, state: &str) -> anyhow::Result<ExitCode> {
    use swarm_specs::task::Task;
    use swarm_specs::task::TaskState;
    let tasks: Vec<Task> = client.get("/v1/tasks").await?;
    let matches: Vec<&Task> = tasks.iter().filter(|t| t.id.starts_with(id)).collect();
    let [task] = matches.as_slice() else {
        anyhow::bail!("task {id:?} matches {} tasks", matches.len())
    };
    let mut task = (*task).clone();
    task.desired_state = match state {
        "running" => TaskState::Running,
        "shutdown" => TaskState::Shutdown,
        _ => TaskState::Remove,
    };
    let _: Empty = client.post("/v1/tasks", &vec![task]).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn debug_tasks(client: &Client) -> anyhow::Result<ExitCode> {
    let tasks: Vec<swarm_specs::task::Task> = client.get("/v1/tasks").await?;
    println!("{}", serde_json::to_string_pretty(&tasks)?);
    Ok(ExitCode::SUCCESS)
}

pub async fn debug_logs(
    client: &Client,
    id: &str,
    follow: bool,
    tail: Option<usize>,
    timestamps: bool,
) -> anyhow::Result<ExitCode> {
    let mut query = format!("?follow={follow}&timestamps={timestamps}");
    if let Some(n) = tail {
        query.push_str(&format!("&tail={n}"));
    }
    let path = format!("/v1/tasks/{}/logs{query}", url_segment(id));
    client
        .stream_lines(&path, |line| {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                let text = v.get("line").and_then(|l| l.as_str()).unwrap_or_default();
                if v.get("stream").and_then(|s| s.as_str()) == Some("stderr") {
                    eprintln!("{text}");
                } else {
                    println!("{text}");
                }
            }
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn debug_move(client: &Client, id: &str, node: &str) -> anyhow::Result<ExitCode> {
    use swarm_specs::task::Task;
    use swarm_specs::task::TaskState;
    use swarm_specs::task::TaskStatus;
    let target: Node = client.get(&format!("/v1/nodes/{}", url_segment(node))).await?;
    let tasks: Vec<Task> = client.get("/v1/tasks").await?;
    let matches: Vec<&Task> = tasks.iter().filter(|t| t.id.starts_with(id)).collect();
    let [task] = matches.as_slice() else {
        anyhow::bail!("task {id:?} matches {} tasks", matches.len())
    };
    let mut task = (*task).clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)?;
    task.node_id = Some(target.id);
    task.status = TaskStatus::new(TaskState::Assigned, now, "assigned");
    let _: Empty = client.post("/v1/tasks", &vec![task]).await?;
    Ok(ExitCode::SUCCESS)
}
