//! `swarm service ...`: Docker's service commands (ls, ps, inspect, create, update, scale, rm, logs).
//!
//! The commands read and write through the manager's API; the tables, the filters and the flag-to-spec edits are
//! pure functions below, shared with `swarm stack` (`stack ps` and `stack services` print the same tables).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;
use swarm_reconciler::cluster::now_millis;
use swarm_reconciler::cluster::Node;
use swarm_reconciler::objects::Service;
use swarm_reconciler::objects::UpdateState;
use swarm_reconciler::orchestrator::Progress;
use swarm_reconciler::routes::ServiceInfo;
use swarm_reconciler::routes::ServiceUpdate;
use swarm_reconciler::scheduler::filters::human_bytes;
use swarm_reconciler::wire::Empty;
use swarm_reconciler::wire::NodeList;
use swarm_specs::normalize::split_shell_words;
use swarm_specs::spec::Driver;
use swarm_specs::spec::EndpointMode;
use swarm_specs::spec::FailureAction;
use swarm_specs::spec::FileRef;
use swarm_specs::spec::PortConfig;
use swarm_specs::spec::Protocol;
use swarm_specs::spec::PublishMode;
use swarm_specs::spec::RestartCondition;
use swarm_specs::spec::ServiceMode;
use swarm_specs::spec::ServiceSpec;
use swarm_specs::spec::TaskSpec;
use swarm_specs::spec::UpdateConfig;
use swarm_specs::spec::UpdateOrder;
use swarm_specs::task::Task;
use swarm_specs::task::TaskState;
use swarm_specs::units;
use swarm_specs::units::UnitError;

use crate::client::Client;
use crate::node::human_duration;
use crate::node::url_segment;
use crate::progress::shorten;
use crate::progress::wait_converged;

/// Docker's `ERROR` column width in `service ps` (longer errors are cut unless `--no-trunc`).
const MAX_ERROR_LENGTH: usize = 30;
/// A process-driver service's command in the IMAGE column is cut to this many characters unless `--no-trunc`.
const MAX_COMMAND_LENGTH: usize = 40;

#[derive(clap::Subcommand)]
pub enum ServiceCommand {
    /// List services.
    #[command(alias = "list")]
    Ls {
        /// Only display IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Filter: name=PREFIX, id=PREFIX, label=KEY[=VALUE], mode=replicated|global|replicated-job|global-job.
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
    },
    /// List the tasks of one or more services (history included, newest first in each slot).
    Ps {
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
        #[command(flatten)]
        opts: PsArgs,
    },
    /// Show services in detail (JSON, or --pretty).
    Inspect {
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
        /// Print a readable summary instead of JSON.
        #[arg(long)]
        pretty: bool,
    },
    /// Create a new service.
    Create(Box<CreateArgs>),
    /// Update a service: read it, change its spec, and write it back.
    Update(Box<UpdateArgs>),
    /// Go back to the service's previous spec, following its rollback config.
    Rollback {
        service: String,
        /// Exit at once instead of waiting for the service to converge.
        #[arg(short, long)]
        detach: bool,
        /// Do not show the progress.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Scale one or more replicated services.
    Scale {
        #[arg(required = true, value_name = "SERVICE=REPLICAS")]
        scales: Vec<String>,
        /// Exit at once instead of waiting for the services to converge.
        #[arg(short, long)]
        detach: bool,
    },
    /// Remove one or more services.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
    },
    /// Fetch the logs of a service's tasks (stderr lines go to stderr).
    Logs {
        service: String,
        /// Follow the output.
        #[arg(short, long)]
        follow: bool,
        /// Number of lines to show from the end of each task's output, or `all`.
        #[arg(short = 'n', long, value_name = "N", default_value = "all", value_parser = parse_tail)]
        tail: Tail,
        /// Show timestamps.
        #[arg(short, long)]
        timestamps: bool,
        /// Do not include task IDs in the prefix.
        #[arg(long)]
        no_task_ids: bool,
    },
}

/// The options of `service ps` and `stack ps`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PsArgs {
    /// Filter: desired-state=running|shutdown|accepted, node=ID|HOSTNAME, name=TASK NAME, id=PREFIX.
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
    /// Do not truncate ids, images and errors.
    #[arg(long)]
    pub no_trunc: bool,
    /// Only display task IDs.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    Replicated,
    Global,
    ReplicatedJob,
    GlobalJob,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverArg {
    Docker,
    Process,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RestartConditionArg {
    None,
    OnFailure,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpdateOrderArg {
    StartFirst,
    StopFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailureActionArg {
    Pause,
    Continue,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EndpointModeArg {
    Vip,
    Dnsrr,
}

/// What `service create` and `service update` both set: how tasks run, restart, update, and what they may use.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TaskFlags {
    /// Restart when: none, on-failure or any (the default).
    #[arg(long, value_enum)]
    pub restart_condition: Option<RestartConditionArg>,
    /// Delay between restart attempts (e.g. 5s).
    #[arg(long, value_name = "DURATION")]
    pub restart_delay: Option<String>,
    /// Give up restarting after N attempts (0 = never give up).
    #[arg(long, value_name = "N")]
    pub restart_max_attempts: Option<u64>,
    /// Window in which restart attempts are counted (e.g. 1m).
    #[arg(long, value_name = "DURATION")]
    pub restart_window: Option<String>,
    /// CPU limit (e.g. 0.5).
    #[arg(long, value_name = "CPUS")]
    pub limit_cpu: Option<String>,
    /// Memory limit (e.g. 512m).
    #[arg(long, value_name = "BYTES")]
    pub limit_memory: Option<String>,
    /// Process limit (0 = none).
    #[arg(long, value_name = "N")]
    pub limit_pids: Option<i64>,
    /// CPUs the scheduler reserves for each task.
    #[arg(long, value_name = "CPUS")]
    pub reserve_cpu: Option<String>,
    /// Memory the scheduler reserves for each task.
    #[arg(long, value_name = "BYTES")]
    pub reserve_memory: Option<String>,
    /// Tasks updated at a time (0 = all at once).
    #[arg(long, value_name = "N")]
    pub update_parallelism: Option<u64>,
    /// Delay between updates of successive tasks.
    #[arg(long, value_name = "DURATION")]
    pub update_delay: Option<String>,
    /// Stop the old task first (stop-first, the default) or start the new one first.
    #[arg(long, value_enum)]
    pub update_order: Option<UpdateOrderArg>,
    /// What to do when an update fails: pause, continue or rollback.
    #[arg(long, value_enum)]
    pub update_failure_action: Option<FailureActionArg>,
    /// How long each updated task is watched for failure.
    #[arg(long, value_name = "DURATION")]
    pub update_monitor: Option<String>,
    /// Share of updated tasks that may fail before the failure action (0 to 1).
    #[arg(long, value_name = "RATIO")]
    pub update_max_failure_ratio: Option<f64>,
    /// Tasks rolled back at a time (0 = all at once).
    #[arg(long, value_name = "N")]
    pub rollback_parallelism: Option<u64>,
    /// Delay between rollbacks of successive tasks.
    #[arg(long, value_name = "DURATION")]
    pub rollback_delay: Option<String>,
    /// Rollback order: stop-first or start-first.
    #[arg(long, value_enum)]
    pub rollback_order: Option<UpdateOrderArg>,
    /// What to do when a rollback fails: pause or continue.
    #[arg(long, value_enum)]
    pub rollback_failure_action: Option<FailureActionArg>,
    /// How long each rolled-back task is watched for failure.
    #[arg(long, value_name = "DURATION")]
    pub rollback_monitor: Option<String>,
    /// Share of rolled-back tasks that may fail before the failure action (0 to 1).
    #[arg(long, value_name = "RATIO")]
    pub rollback_max_failure_ratio: Option<f64>,
    /// Time a task gets to stop before it is killed (e.g. 10s).
    #[arg(long, value_name = "DURATION")]
    pub stop_grace_period: Option<String>,
    /// Signal that stops a task (e.g. SIGINT).
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Working directory inside the task.
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User the task runs as (NAME|UID[:GROUP|GID]).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Hostname of the task's container.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Override the image's entrypoint (a command line, split as a shell would).
    #[arg(long, value_name = "COMMAND")]
    pub entrypoint: Option<String>,
    /// At most N tasks of the service on one node (0 = no limit).
    #[arg(long, value_name = "N")]
    pub replicas_max_per_node: Option<u64>,
    /// How the service is reached: vip (a virtual IP, the default) or dnsrr (DNS round robin).
    #[arg(long, value_enum)]
    pub endpoint_mode: Option<EndpointModeArg>,
}

#[derive(clap::Args, Debug, Clone)]
#[command(override_usage = "swarm service create [OPTIONS] IMAGE [COMMAND [ARG...]]
       swarm service create --driver process [OPTIONS] [--] COMMAND [ARG...]")]
#[command(after_help = "\
IMAGE [COMMAND [ARG...]] with --driver docker (the default): the image, then the command that replaces its own.
COMMAND [ARG...] with --driver process: there is no image; the arguments are the program and its arguments, run
as a process on the node. Put `--` before them when they start with `-`:

  swarm service create --name web -p 8080:80 --replicas 3 nginx:1.27
  swarm service create --driver process --name tick -- sh -c 'while true; do date; sleep 1; done'")]
pub struct CreateArgs {
    /// Service name (default: the image's or program's name and a random suffix).
    #[arg(long)]
    pub name: Option<String>,
    /// Replicated (N tasks), global (one per node), or a job that runs to completion.
    #[arg(long, value_enum, default_value = "replicated")]
    pub mode: ModeArg,
    /// Number of tasks (replicated-job: completions wanted).
    #[arg(long, value_name = "N")]
    pub replicas: Option<u64>,
    /// Job tasks run at once (replicated-job; default: --replicas).
    #[arg(long, value_name = "N")]
    pub max_concurrent: Option<u64>,
    /// How tasks run: docker containers, or plain processes (then there is no IMAGE).
    #[arg(long, value_enum, default_value = "docker")]
    pub driver: DriverArg,
    /// Set an environment variable (KEY alone takes its value from this shell, else from the node).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Service label.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Container label.
    #[arg(long = "container-label", value_name = "KEY=VALUE")]
    pub container_labels: Vec<String>,
    /// Publish a port: PUBLISHED:TARGET[/PROTOCOL], or published=P,target=T[,protocol=udp][,mode=host].
    #[arg(short = 'p', long = "publish", value_name = "PORT")]
    pub publish: Vec<String>,
    /// Placement constraint (e.g. node.role==worker, node.labels.zone==east).
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<String>,
    /// Placement preference: spread=node.labels.NAME.
    #[arg(long = "placement-pref", value_name = "PREF")]
    pub placement_prefs: Vec<String>,
    /// Give the tasks a secret: NAME, or source=NAME[,target=T][,uid=U][,gid=G][,mode=0400] (at /run/secrets/T).
    #[arg(long = "secret", value_name = "SECRET")]
    pub secrets: Vec<String>,
    /// Give the tasks a config: NAME, or source=NAME[,target=/PATH][,uid=U][,gid=G][,mode=0444].
    #[arg(long = "config", value_name = "CONFIG")]
    pub configs: Vec<String>,
    #[command(flatten)]
    pub task: TaskFlags,
    /// Exit at once instead of waiting for the service to converge.
    #[arg(short, long)]
    pub detach: bool,
    /// Do not show the progress.
    #[arg(short, long)]
    pub quiet: bool,
    /// The image and its command (docker driver), or the command (process driver).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARG"
    )]
    pub args: Vec<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct UpdateArgs {
    /// New image (docker driver).
    #[arg(long)]
    pub image: Option<String>,
    /// New command: a command line, split as a shell would (the program and its arguments for the process driver).
    #[arg(long, value_name = "COMMAND")]
    pub args: Option<String>,
    /// Add or change an environment variable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub env_add: Vec<String>,
    /// Remove an environment variable.
    #[arg(long, value_name = "KEY")]
    pub env_rm: Vec<String>,
    /// Number of tasks (replicated-job: completions wanted).
    #[arg(long, value_name = "N")]
    pub replicas: Option<u64>,
    #[arg(long, value_name = "EXPR")]
    pub constraint_add: Vec<String>,
    #[arg(long, value_name = "EXPR")]
    pub constraint_rm: Vec<String>,
    #[arg(long, value_name = "KEY=VALUE")]
    pub label_add: Vec<String>,
    #[arg(long, value_name = "KEY")]
    pub label_rm: Vec<String>,
    #[arg(long, value_name = "KEY=VALUE")]
    pub container_label_add: Vec<String>,
    #[arg(long, value_name = "KEY")]
    pub container_label_rm: Vec<String>,
    /// Publish a port (as --publish of `service create`).
    #[arg(long, value_name = "PORT")]
    pub publish_add: Vec<String>,
    /// Stop publishing a port: TARGET[/PROTOCOL], or PUBLISHED:TARGET[/PROTOCOL].
    #[arg(long, value_name = "PORT")]
    pub publish_rm: Vec<String>,
    #[arg(long, value_name = "PREF")]
    pub placement_pref_add: Vec<String>,
    #[arg(long, value_name = "PREF")]
    pub placement_pref_rm: Vec<String>,
    /// Add or change a secret (as --secret of `service create`).
    #[arg(long, value_name = "SECRET")]
    pub secret_add: Vec<String>,
    /// Remove a secret, by name.
    #[arg(long, value_name = "NAME")]
    pub secret_rm: Vec<String>,
    /// Add or change a config (as --config of `service create`).
    #[arg(long, value_name = "CONFIG")]
    pub config_add: Vec<String>,
    /// Remove a config, by name.
    #[arg(long, value_name = "NAME")]
    pub config_rm: Vec<String>,
    #[command(flatten)]
    pub task: TaskFlags,
    /// Replace the tasks even if nothing changed.
    #[arg(long)]
    pub force: bool,
    /// Roll back to the previous spec instead (as `service rollback`; no other change may be given).
    #[arg(long)]
    pub rollback: bool,
    /// Exit at once instead of waiting for the service to converge.
    #[arg(short, long)]
    pub detach: bool,
    /// Do not show the progress.
    #[arg(short, long)]
    pub quiet: bool,
    pub service: String,
}

/// `--tail`: a number of lines, or every line (`all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail(Option<usize>);

fn parse_tail(text: &str) -> Result<Tail, String> {
    if text == "all" {
        return Ok(Tail(None));
    }
    text.parse()
        .map(|n| Tail(Some(n)))
        .map_err(|_| format!("expected a number of lines or \"all\", got {text:?}"))
}

pub async fn run(client: &Client, cmd: ServiceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ServiceCommand::Ls { quiet, filters } => ls(client, quiet, &filters).await,
        ServiceCommand::Ps { services, opts } => ps(client, &services, &opts).await,
        ServiceCommand::Inspect { services, pretty } => inspect(client, &services, pretty).await,
        ServiceCommand::Create(args) => create(client, &args).await,
        ServiceCommand::Update(args) if args.rollback => {
            let info: ServiceInfo = client.get(&service_path(&args.service)).await?;
            let mut spec = info.service.spec.clone();
            apply_update(&mut spec, &args, &|k| std::env::var(k).ok())?;
            if spec != info.service.spec || args.force {
                anyhow::bail!("--rollback goes back to the previous spec: give no other change with it");
            }
            rollback(client, &args.service, args.detach, args.quiet).await
        }
        ServiceCommand::Update(args) => update(client, &args).await,
        ServiceCommand::Rollback { service, detach, quiet } => rollback(client, &service, detach, quiet).await,
        ServiceCommand::Scale { scales, detach } => scale(client, &scales, detach).await,
        ServiceCommand::Rm { services } => rm(client, &services).await,
        ServiceCommand::Logs {
            service,
            follow,
            tail,
            timestamps,
            no_task_ids,
        } => logs(client, &service, follow, tail, timestamps, no_task_ids).await,
    }
}

fn service_path(name: &str) -> String {
    format!("/v1/services/{}", url_segment(name))
}

async fn ls(client: &Client, quiet: bool, filters: &[String]) -> anyhow::Result<ExitCode> {
    let filter = ServiceFilter::parse(filters)?;
    let list: Vec<ServiceInfo> = client.get("/v1/services").await?;
    let shown: Vec<&ServiceInfo> = list.iter().filter(|i| filter.matches(&i.service)).collect();
    print!("{}", format_services(&shown, quiet));
    Ok(ExitCode::SUCCESS)
}

/// Every task, and every node (for hostnames): what the task tables need.
pub async fn tasks_and_nodes(client: &Client) -> anyhow::Result<(Vec<Task>, Vec<Node>)> {
    let tasks: Vec<Task> = client.get("/v1/tasks").await?;
    let nodes: NodeList = client.get("/v1/nodes").await?;
    Ok((tasks, nodes.nodes))
}

async fn ps(client: &Client, names: &[String], opts: &PsArgs) -> anyhow::Result<ExitCode> {
    let filter = TaskFilter::parse(&opts.filters)?;
    let mut services = Vec::new();
    for name in names {
        let info: ServiceInfo = client.get(&service_path(name)).await?;
        services.push(info.service);
    }
    let (tasks, nodes) = tasks_and_nodes(client).await?;
    print!(
        "{}",
        format_tasks(&services, &tasks, &nodes, &filter, now_millis(), opts)
    );
    eprint!("{}", update_notes(&services, now_millis()));
    Ok(ExitCode::SUCCESS)
}

/// One line per service whose rolling update is not simply done (in progress, paused, rolled back), for `service
/// ps`, `stack ps` and `stack services`; on stderr so the tables stay as Docker prints them.
pub fn update_notes(services: &[Service], now: u64) -> String {
    let mut out = String::new();
    for s in services {
        let Some(u) = &s.update_status else { continue };
        if u.state == UpdateState::Completed {
            continue;
        }
        let when = ago(now, u.completed_at.unwrap_or(u.started_at));
        out.push_str(&format!("{}: {} ({when}): {}\n", s.name(), u.state.as_str(), u.message));
    }
    out
}

async fn inspect(client: &Client, names: &[String], pretty: bool) -> anyhow::Result<ExitCode> {
    let mut infos = Vec::new();
    for name in names {
        let info: ServiceInfo = client.get(&service_path(name)).await?;
        infos.push(info);
    }
    if pretty {
        let text: Vec<String> = infos.iter().map(format_pretty).collect();
        print!("{}", text.join("\n"));
    } else {
        let json: Vec<serde_json::Value> = infos.iter().map(inspect_json).collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(ExitCode::SUCCESS)
}

async fn create(client: &Client, args: &CreateArgs) -> anyhow::Result<ExitCode> {
    let suffix: String = swarm_reconciler::ca::new_id().chars().take(5).collect();
    let spec = build_spec(args, &|k| std::env::var(k).ok(), &suffix)?;
    let service: Service = client.post("/v1/services", &spec).await?;
    println!("{}", service.id);
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let done = wait_converged(client, &[(service.spec.name.clone(), service.task_version)], args.quiet).await?;
    Ok(exit_code(done))
}

async fn update(client: &Client, args: &UpdateArgs) -> anyhow::Result<ExitCode> {
    let info: ServiceInfo = client.get(&service_path(&args.service)).await?;
    let mut spec = info.service.spec.clone();
    apply_update(&mut spec, args, &|k| std::env::var(k).ok())?;
    let body = ServiceUpdate {
        spec,
        version: info.service.version,
        force: args.force,
    };
    let service: Service = client
        .post(&format!("{}/update", service_path(info.service.name())), &body)
        .await?;
    println!("{}", args.service);
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let done = wait_converged(client, &[(service.spec.name.clone(), service.task_version)], args.quiet).await?;
    Ok(exit_code(done))
}

async fn rollback(client: &Client, name: &str, detach: bool, quiet: bool) -> anyhow::Result<ExitCode> {
    let service: Service = client
        .post(&format!("{}/rollback", service_path(name)), &serde_json::json!({}))
        .await?;
    println!("{name}");
    if detach {
        return Ok(ExitCode::SUCCESS);
    }
    let done = wait_converged(client, &[(service.spec.name.clone(), service.task_version)], quiet).await?;
    Ok(exit_code(done))
}

async fn scale(client: &Client, scales: &[String], detach: bool) -> anyhow::Result<ExitCode> {
    let wanted = scales
        .iter()
        .map(|s| parse_scale(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut failed = false;
    let mut scaled = Vec::new();
    for (name, replicas) in wanted {
        let result = async {
            let info: ServiceInfo = client.get(&service_path(&name)).await?;
            let mut spec = info.service.spec.clone();
            set_replicas(&mut spec, replicas)?;
            let body = ServiceUpdate {
                spec,
                version: info.service.version,
                force: false,
            };
            let service: Service = client
                .post(&format!("{}/update", service_path(info.service.name())), &body)
                .await?;
            anyhow::Ok(service)
        }
        .await;
        match result {
            Ok(service) => {
                println!("{name} scaled to {replicas}");
                scaled.push((service.spec.name.clone(), service.task_version));
            }
            Err(e) => {
                eprintln!("Error: {name}: {e:#}");
                failed = true;
            }
        }
    }
    if !detach && !wait_converged(client, &scaled, false).await? {
        failed = true;
    }
    Ok(exit_code(!failed))
}

async fn rm(client: &Client, names: &[String]) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for name in names {
        match client.delete::<Empty>(&service_path(name)).await {
            Ok(_) => println!("{name}"),
            Err(e) => {
                eprintln!("Error: {e:#}");
                failed = true;
            }
        }
    }
    Ok(exit_code(!failed))
}

/// One line of `GET /v1/services/{name}/logs`: the agent's line, tagged by the manager with its task and node.
#[derive(Debug, Deserialize)]
struct LogEntry {
    line: String,
    #[serde(default)]
    stream: String,
    #[serde(default)]
    task: String,
    #[serde(default)]
    node: String,
}

async fn logs(
    client: &Client,
    name: &str,
    follow: bool,
    tail: Tail,
    timestamps: bool,
    no_task_ids: bool,
) -> anyhow::Result<ExitCode> {
    let info: ServiceInfo = client.get(&service_path(name)).await?;
    let slot_width = match info.service.spec.mode {
        ServiceMode::Replicated { replicas } => digits(replicas),
        ServiceMode::ReplicatedJob { total_completions, .. } => digits(total_completions),
        ServiceMode::Global | ServiceMode::GlobalJob => 0,
    };
    let mut path = format!(
        "{}/logs?follow={follow}&timestamps={timestamps}",
        service_path(info.service.name())
    );
    if let Tail(Some(n)) = tail {
        path.push_str(&format!("&tail={n}"));
    }
    client
        .stream_lines(&path, |line| {
            let Ok(entry) = serde_json::from_str::<LogEntry>(line) else {
                return;
            };
            let prefix = log_prefix(&entry.task, &entry.node, no_task_ids, slot_width);
            if entry.stream == "stderr" {
                eprintln!("{prefix}    | {}", entry.line);
            } else {
                println!("{prefix}    | {}", entry.line);
            }
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn digits(n: u64) -> usize {
    n.max(1).to_string().len()
}

/// `web_web.1.abcdef123456@host` as Docker prints it, padded so slots 1 and 10 line up.
fn log_prefix(task: &str, node: &str, no_task_ids: bool, slot_width: usize) -> String {
    let without_id = task.rsplit_once('.').map_or(task, |(rest, _)| rest);
    let slot = without_id.rsplit_once('.').map(|(_, s)| s).unwrap_or_default();
    let padding = if slot.bytes().all(|b| b.is_ascii_digit()) && !slot.is_empty() {
        slot_width.saturating_sub(slot.len())
    } else {
        0
    };
    let name = if no_task_ids { without_id } else { task };
    format!("{name}@{node}{}", " ".repeat(padding))
}

// ---------------------------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------------------------

/// Rows in columns three spaces apart, as Docker's tables (the first row is the header); no trailing spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// An id as Docker shows it in tables: its first 12 characters.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// `37 seconds ago`: how long before `now` (Unix milliseconds) `then` was.
pub fn ago(now: u64, then: u64) -> String {
    format!(
        "{} ago",
        human_duration(Duration::from_millis(now.saturating_sub(then)))
    )
}

/// `service ls` (and `stack services`): ID, NAME, MODE, REPLICAS, IMAGE, PORTS, sorted by name.
pub fn format_services(list: &[&ServiceInfo], quiet: bool) -> String {
    let mut list = list.to_vec();
    list.sort_by(|a, b| a.service.name().cmp(b.service.name()));
    if quiet {
        return list.iter().map(|i| format!("{}\n", short_id(&i.service.id))).collect();
    }
    let mut rows = vec![header(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"])];
    for info in list {
        let s = &info.service;
        rows.push(vec![
            short_id(&s.id).to_string(),
            s.name().to_string(),
            mode_title(&s.spec.mode).to_string(),
            replicas_text(&s.spec, info.progress),
            image_text(&s.spec.task, false),
            ports_text(&s.spec.ports),
        ]);
    }
    table(&rows)
}

/// The MODE column: `replicated`, `global`, `replicated job`, `global job`.
pub fn mode_title(mode: &ServiceMode) -> &'static str {
    match mode {
        ServiceMode::Replicated { .. } => "replicated",
        ServiceMode::Global => "global",
        ServiceMode::ReplicatedJob { .. } => "replicated job",
        ServiceMode::GlobalJob => "global job",
    }
}

/// The `--mode` / `mode=` filter spelling.
fn mode_key(mode: &ServiceMode) -> &'static str {
    match mode {
        ServiceMode::Replicated { .. } => "replicated",
        ServiceMode::Global => "global",
        ServiceMode::ReplicatedJob { .. } => "replicated-job",
        ServiceMode::GlobalJob => "global-job",
    }
}

/// The REPLICAS column: `2/3`, `2/3 (max 1 per node)`; jobs `1/2 (3/5 completed)` (running/active, then completed).
pub fn replicas_text(spec: &ServiceSpec, p: Progress) -> String {
    match spec.mode {
        ServiceMode::Replicated { .. } => match spec.task.placement.max_replicas_per_node {
            0 => format!("{}/{}", p.running, p.desired),
            max => format!("{}/{} (max {max} per node)", p.running, p.desired),
        },
        ServiceMode::Global => format!("{}/{}", p.running, p.desired),
        ServiceMode::ReplicatedJob {
            max_concurrent,
            total_completions,
        } => {
            let active = max_concurrent.min(total_completions.saturating_sub(p.completed));
            format!("{}/{active} ({}/{total_completions} completed)", p.running, p.completed)
        }
        ServiceMode::GlobalJob => format!(
            "{}/{} ({}/{} completed)",
            p.running,
            p.desired.saturating_sub(p.completed),
            p.completed,
            p.desired
        ),
    }
}

/// The IMAGE column: the image without its digest (unless `no_trunc`), or a process-driver service's command.
pub fn image_text(task: &TaskSpec, no_trunc: bool) -> String {
    match (&task.image, task.driver) {
        (Some(image), Driver::Docker) => {
            if no_trunc {
                image.clone()
            } else {
                image.split('@').next().unwrap_or(image).to_string()
            }
        }
        _ => {
            let words: Vec<&str> = task
                .entrypoint
                .iter()
                .flatten()
                .chain(task.command.iter().flatten())
                .map(String::as_str)
                .collect();
            let command = words.join(" ");
            if no_trunc {
                command
            } else {
                shorten(&command, MAX_COMMAND_LENGTH)
            }
        }
    }
}

/// The PORTS column of `service ls`: ingress ports as `*:8080->80/tcp`, consecutive ones merged into ranges.
pub fn ports_text(ports: &[PortConfig]) -> String {
    let mut ingress: Vec<(Protocol, u16, u16)> = ports
        .iter()
        .filter(|p| p.mode == PublishMode::Ingress)
        .filter_map(|p| p.published.map(|published| (p.protocol, published, p.target)))
        .collect();
    ingress.sort();
    // (protocol, published start, published end, target start, target end)
    let mut ranges: Vec<(Protocol, u16, u16, u16, u16)> = Vec::new();
    for (protocol, published, target) in ingress {
        if let Some(last) = ranges.last_mut() {
            let is_range = last.4 != last.3;
            let follows = last.0 == protocol
                && u32::from(published) == u32::from(last.2) + 1
                && u32::from(target) == u32::from(last.4) + 1;
            if follows || (last.0 == protocol && published == last.2 && target == last.4 && !is_range) {
                last.2 = published;
                last.4 = target;
                continue;
            }
        }
        ranges.push((protocol, published, published, target, target));
    }
    let span = |a: u16, b: u16| if a == b { a.to_string() } else { format!("{a}-{b}") };
    ranges
        .iter()
        .map(|(protocol, p0, p1, t0, t1)| format!("*:{}->{}/{protocol}", span(*p0, *p1), span(*t0, *t1)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The PORTS column of `service ps`: the host-mode ports a running task publishes on its node.
fn host_ports_text(ports: &[PortConfig]) -> String {
    ports
        .iter()
        .filter(|p| p.mode == PublishMode::Host)
        .filter_map(|p| {
            p.published
                .map(|published| format!("*:{published}->{}/{}", p.target, p.protocol))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `service ls` filters: the same key given twice matches either value; different keys must all match.
#[derive(Debug, Default, PartialEq)]
pub struct ServiceFilter {
    ids: Vec<String>,
    names: Vec<String>,
    labels: Vec<(String, Option<String>)>,
    modes: Vec<String>,
}

impl ServiceFilter {
    pub fn parse(filters: &[String]) -> anyhow::Result<ServiceFilter> {
        let mut f = ServiceFilter::default();
        for text in filters {
            let (key, value) = split_filter(text)?;
            match key {
                "id" => f.ids.push(value.to_string()),
                "name" => f.names.push(value.to_string()),
                "label" => f.labels.push(match value.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (value.to_string(), None),
                }),
                "mode" => match value {
                    "replicated" | "global" | "replicated-job" | "global-job" => f.modes.push(value.to_string()),
                    _ => anyhow::bail!(
                        "invalid filter {text:?}: the mode is replicated, global, replicated-job or global-job"
                    ),
                },
                _ => anyhow::bail!("invalid filter {text:?}: the keys are id, label, mode and name"),
            }
        }
        Ok(f)
    }

    pub fn matches(&self, s: &Service) -> bool {
        (self.ids.is_empty() || self.ids.iter().any(|id| s.id.starts_with(id.as_str())))
            && (self.names.is_empty() || self.names.iter().any(|n| s.name().starts_with(n.as_str())))
            && self.labels.iter().all(|(k, v)| match v {
                None => s.spec.labels.contains_key(k),
                Some(v) => s.spec.labels.get(k) == Some(v),
            })
            && (self.modes.is_empty() || self.modes.iter().any(|m| m == mode_key(&s.spec.mode)))
    }
}

fn split_filter(text: &str) -> anyhow::Result<(&str, &str)> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k, v)),
        _ => anyhow::bail!("invalid filter {text:?}: write KEY=VALUE, e.g. name=web"),
    }
}

/// `service ps` filters, combined as [`ServiceFilter`]'s.
#[derive(Debug, Default, PartialEq)]
pub struct TaskFilter {
    desired: Vec<TaskState>,
    nodes: Vec<String>,
    names: Vec<String>,
    ids: Vec<String>,
}

impl TaskFilter {
    pub fn parse(filters: &[String]) -> anyhow::Result<TaskFilter> {
        let mut f = TaskFilter::default();
        for text in filters {
            let (key, value) = split_filter(text)?;
            match key {
                "desired-state" => {
                    let state = TaskState::ALL
                        .into_iter()
                        .find(|s| s.title().eq_ignore_ascii_case(value))
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "invalid filter {text:?}: the desired state is running, shutdown or accepted"
                            )
                        })?;
                    f.desired.push(state);
                }
                "node" => f.nodes.push(value.to_string()),
                "name" => f.names.push(value.to_string()),
                "id" => f.ids.push(value.to_string()),
                _ => anyhow::bail!("invalid filter {text:?}: the keys are desired-state, id, name and node"),
            }
        }
        Ok(f)
    }

    /// `name` is the task's name (`web.1`), `hostname` its node's.
    fn matches(&self, task: &Task, name: &str, hostname: &str) -> bool {
        let full_name = format!("{name}.{}", task.id);
        (self.desired.is_empty() || self.desired.contains(&task.desired_state))
            && (self.nodes.is_empty()
                || self
                    .nodes
                    .iter()
                    .any(|n| n == hostname || task.node_id.as_deref().is_some_and(|id| id.starts_with(n.as_str()))))
            && (self.names.is_empty() || self.names.iter().any(|n| full_name.starts_with(n.as_str())))
            && (self.ids.is_empty() || self.ids.iter().any(|id| task.id.starts_with(id.as_str())))
    }
}

/// `service ps` (and `stack ps`): the tasks of `services`, by service and slot (global: node), newest first within
/// a slot; a slot's older tasks are named ` \_ web.1` as Docker does.
pub fn format_tasks(
    services: &[Service],
    tasks: &[Task],
    nodes: &[Node],
    filter: &TaskFilter,
    now: u64,
    opts: &PsArgs,
) -> String {
    let hostname = |id: Option<&str>| -> String {
        id.and_then(|id| nodes.iter().find(|n| n.id == id))
            .map(|n| n.description.hostname.clone())
            .unwrap_or_default()
    };
    let mut shown: Vec<(&Service, &Task, String, String)> = Vec::new();
    for t in tasks {
        let Some(service) = services.iter().find(|s| s.spec.name == t.service) else {
            continue;
        };
        let name = match (t.slot, &t.node_id) {
            (Some(slot), _) => format!("{}.{slot}", t.service),
            (None, Some(node)) => format!("{}.{node}", t.service),
            (None, None) => format!("{}.{}", t.service, t.id),
        };
        let host = hostname(t.node_id.as_deref());
        if filter.matches(t, &name, &host) {
            shown.push((service, t, name, host));
        }
    }
    shown.sort_by(|a, b| {
        // A slot's tasks together, whatever node each ran on (a global task's key is its node); newest first.
        let key = |t: &Task| (t.service.clone(), t.slot, t.slot.is_none().then(|| t.node_id.clone()));
        key(a.1)
            .cmp(&key(b.1))
            .then(b.1.created_at.cmp(&a.1.created_at))
            .then(a.1.id.cmp(&b.1.id))
    });
    let id = |t: &Task| -> String {
        if opts.no_trunc {
            t.id.clone()
        } else {
            short_id(&t.id).to_string()
        }
    };
    if opts.quiet {
        return shown.iter().map(|(_, t, _, _)| format!("{}\n", id(t))).collect();
    }
    let mut rows = vec![header(&[
        "ID",
        "NAME",
        "IMAGE",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
        "PORTS",
    ])];
    let mut previous = String::new();
    for (service, t, name, host) in &shown {
        let shown_name = if *name == previous {
            format!(" \\_ {name}")
        } else {
            name.clone()
        };
        previous = name.clone();
        let ports = if t.status.state == TaskState::Running && t.desired_state <= TaskState::Running {
            host_ports_text(&service.spec.ports)
        } else {
            String::new()
        };
        rows.push(vec![
            id(t),
            shown_name,
            image_text(&t.spec, opts.no_trunc),
            host.clone(),
            t.desired_state.title().to_string(),
            format!("{} {}", t.status.state.title(), ago(now, t.status.timestamp)),
            error_text(t.status.err.as_deref().unwrap_or_default(), !opts.no_trunc),
            ports,
        ]);
    }
    table(&rows)
}

/// The ERROR column: quoted, and cut to 30 characters unless not truncating.
fn error_text(err: &str, truncate: bool) -> String {
    if err.is_empty() {
        return String::new();
    }
    let err = if truncate {
        shorten(err, MAX_ERROR_LENGTH)
    } else {
        err.to_string()
    };
    format!("\"{err}\"")
}

// ---------------------------------------------------------------------------------------------------------------
// Inspect
// ---------------------------------------------------------------------------------------------------------------

/// `service inspect`: the stored service, with Docker's field names for its envelope.
fn inspect_json(info: &ServiceInfo) -> serde_json::Value {
    let s = &info.service;
    let mut v = serde_json::json!({
        "ID": s.id,
        "Version": { "Index": s.version },
        "CreatedAt": rfc3339(s.created_at),
        "UpdatedAt": rfc3339(s.updated_at),
        "Spec": s.spec,
    });
    if let Some(previous) = &s.previous_spec {
        v["PreviousSpec"] = serde_json::json!(previous);
    }
    v["TaskVersion"] = serde_json::json!(s.task_version);
    if let Some(u) = &s.update_status {
        let mut status = serde_json::json!({
            "State": u.state.as_str(),
            "StartedAt": rfc3339(u.started_at),
            "Message": u.message,
        });
        if let Some(done) = u.completed_at {
            status["CompletedAt"] = serde_json::json!(rfc3339(done));
        }
        v["UpdateStatus"] = status;
    }
    v["ServiceStatus"] = serde_json::json!({
        "RunningTasks": info.progress.running,
        "DesiredTasks": info.progress.desired,
        "CompletedTasks": info.progress.completed,
    });
    v
}

/// Unix milliseconds as RFC 3339 in UTC (`2024-05-01T12:00:00.250Z`).
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (year, month, day) = units::civil_from_days(days);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        ms % 1000
    )
}

fn ms_text(ms: u64) -> String {
    units::format_duration(Duration::from_millis(ms))
}

/// `service inspect --pretty`.
fn format_pretty(info: &ServiceInfo) -> String {
    let s = &info.service;
    let spec = &s.spec;
    let task = &spec.task;
    let mut out = String::new();
    let mut line = |indent: usize, label: &str, value: &str| {
        let label = format!("{}{label}:", " ".repeat(indent));
        if value.is_empty() {
            out.push_str(&label);
        } else {
            out.push_str(&format!("{label:<24}{value}"));
        }
        out.push('\n');
    };
    line(0, "ID", &s.id);
    line(0, "Name", &spec.name);
    if let Some(u) = &s.update_status {
        let now = now_millis();
        line(0, "UpdateStatus", "");
        line(1, "State", u.state.as_str());
        line(1, "Started", &ago(now, u.started_at));
        if let Some(done) = u.completed_at {
            line(1, "Completed", &ago(now, done));
        }
        line(1, "Message", &u.message);
    }
    if !spec.labels.is_empty() {
        line(0, "Labels", "");
        for (k, v) in &spec.labels {
            line(1, k, v);
        }
    }
    let mode = mode_title(&spec.mode);
    line(
        0,
        "Service Mode",
        &format!("{}{}", mode[..1].to_uppercase(), &mode[1..]),
    );
    match spec.mode {
        ServiceMode::Replicated { replicas } => line(1, "Replicas", &replicas.to_string()),
        ServiceMode::ReplicatedJob {
            max_concurrent,
            total_completions,
        } => {
            line(1, "Max Concurrent", &max_concurrent.to_string());
            line(1, "Total Completions", &total_completions.to_string());
        }
        ServiceMode::Global | ServiceMode::GlobalJob => {}
    }
    let placement = &task.placement;
    if !placement.constraints.is_empty() || !placement.preferences.is_empty() || placement.max_replicas_per_node > 0 {
        line(0, "Placement", "");
        if !placement.constraints.is_empty() {
            let list: Vec<String> = placement.constraints.iter().map(ToString::to_string).collect();
            line(1, "Constraints", &format!("[{}]", list.join(", ")));
        }
        for p in &placement.preferences {
            line(1, "Preference", &format!("spread={p}"));
        }
        if placement.max_replicas_per_node > 0 {
            line(1, "Max Replicas Per Node", &placement.max_replicas_per_node.to_string());
        }
    }
    for (title, u) in [
        ("UpdateConfig", &spec.update_config),
        ("RollbackConfig", &spec.rollback_config),
    ] {
        line(0, title, "");
        line(1, "Parallelism", &u.parallelism.to_string());
        if u.delay_ms > 0 {
            line(1, "Delay", &ms_text(u.delay_ms));
        }
        line(1, "On failure", failure_action_text(u.failure_action));
        line(1, "Monitoring Period", &ms_text(u.monitor_ms));
        line(
            1,
            "Max failure ratio",
            &format!("{}", f64::from(u.max_failure_ratio_ppm) / 1e6),
        );
        line(1, "Update order", update_order_text(u.order));
    }
    line(
        0,
        match task.driver {
            Driver::Docker => "ContainerSpec",
            Driver::Process => "ProcessSpec",
        },
        "",
    );
    if let Some(image) = &task.image {
        line(1, "Image", image);
    }
    if let Some(entrypoint) = &task.entrypoint {
        line(1, "Command", &entrypoint.join(" "));
    }
    if let Some(command) = &task.command {
        line(1, "Args", &command.join(" "));
    }
    if !task.env.is_empty() {
        let env: Vec<String> = task
            .env
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            })
            .collect();
        line(1, "Env", &env.join(" "));
    }
    if let Some(dir) = &task.working_dir {
        line(1, "Dir", dir);
    }
    if let Some(user) = &task.user {
        line(1, "User", user);
    }
    if let Some(hostname) = &task.hostname {
        line(1, "Hostname", hostname);
    }
    line(1, "StopGracePeriod", &ms_text(task.stop_grace_period_ms));
    if let Some(signal) = &task.stop_signal {
        line(1, "StopSignal", signal);
    }
    let r = &task.resources;
    if r.limits != Default::default() || r.reservations != Default::default() {
        line(0, "Resources", "");
        for (title, a) in [("Reservations", &r.reservations), ("Limits", &r.limits)] {
            if *a == Default::default() {
                continue;
            }
            line(1, title, "");
            if a.nano_cpus > 0 {
                line(2, "CPU", &units::format_cpus(a.nano_cpus));
            }
            if a.memory_bytes > 0 {
                line(2, "Memory", &human_bytes(a.memory_bytes));
            }
            if a.pids > 0 {
                line(2, "Pids", &a.pids.to_string());
            }
        }
    }
    let policy = &task.restart_policy;
    line(0, "Restart Policy", "");
    line(1, "Condition", restart_condition_text(policy.condition));
    line(1, "Delay", &ms_text(policy.delay_ms));
    line(1, "Max Attempts", &policy.max_attempts.to_string());
    if policy.window_ms > 0 {
        line(1, "Window", &ms_text(policy.window_ms));
    }
    line(
        0,
        "Endpoint Mode",
        match spec.endpoint_mode {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        },
    );
    if !spec.ports.is_empty() {
        line(0, "Ports", "");
        for p in &spec.ports {
            match p.published {
                Some(published) => line(1, "PublishedPort", &published.to_string()),
                None => line(1, "PublishedPort", "(none)"),
            }
            line(2, "Protocol", p.protocol.as_str());
            line(2, "TargetPort", &p.target.to_string());
            line(2, "PublishMode", p.mode.as_str());
        }
    }
    out
}

fn failure_action_text(a: FailureAction) -> &'static str {
    match a {
        FailureAction::Pause => "pause",
        FailureAction::Continue => "continue",
        FailureAction::Rollback => "rollback",
    }
}

fn update_order_text(o: UpdateOrder) -> &'static str {
    match o {
        UpdateOrder::StopFirst => "stop-first",
        UpdateOrder::StartFirst => "start-first",
    }
}

fn restart_condition_text(c: RestartCondition) -> &'static str {
    match c {
        RestartCondition::None => "none",
        RestartCondition::OnFailure => "on-failure",
        RestartCondition::Any => "any",
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Flags to spec
// ---------------------------------------------------------------------------------------------------------------

/// A parse error from `swarm_specs::units`, naming the flag it came from.
fn flag<T>(name: &str, result: Result<T, UnitError>) -> anyhow::Result<T> {
    result.map_err(|e| anyhow::anyhow!("--{name}: {e}"))
}

fn duration_ms(name: &str, text: &str) -> anyhow::Result<u64> {
    let d = flag(name, units::parse_duration(text))?;
    u64::try_from(d.as_millis()).map_err(|_| anyhow::anyhow!("--{name}: {text:?} is too long"))
}

/// `KEY=VALUE` (or `KEY`, an empty value) for labels.
fn parse_label(name: &str, text: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = text.split_once('=').unwrap_or((text, ""));
    if k.trim().is_empty() {
        anyhow::bail!("--{name} {text:?}: the label key is empty (write KEY=VALUE)");
    }
    Ok((k.to_string(), v.to_string()))
}

/// `KEY=VALUE`, or `KEY` alone: its value from this shell, else from the node (as `- KEY` in a stack file).
fn parse_env(
    name: &str,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<(String, Option<String>)> {
    let (k, v) = match text.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (text, lookup(text)),
    };
    if k.is_empty() || k.contains(char::is_whitespace) {
        anyhow::bail!("--{name} {text:?}: the variable name is empty or has spaces (write KEY=VALUE)");
    }
    Ok((k.to_string(), v))
}

/// `--publish`: `PUBLISHED:TARGET[/PROTOCOL]` (any short form a stack file allows), or the long form
/// `published=8080,target=80[,protocol=udp][,mode=host]`.
fn parse_publish(name: &str, text: &str) -> anyhow::Result<Vec<PortConfig>> {
    if !text.contains('=') {
        return flag(name, units::parse_port_short(text));
    }
    let mut target = None;
    let mut published = None;
    let mut protocol = Protocol::Tcp;
    let mut mode = PublishMode::Ingress;
    for field in text.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--{name} {text:?}: {field:?} is not KEY=VALUE"))?;
        let port = |v: &str| -> anyhow::Result<u16> {
            v.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| anyhow::anyhow!("--{name} {text:?}: {v:?} is not a port (1-65535)"))
        };
        match k {
            "target" => target = Some(port(v)?),
            "published" => published = Some(port(v)?),
            "protocol" => protocol = flag(name, units::parse_protocol(v))?,
            "mode" => mode = flag(name, units::parse_publish_mode(v))?,
            _ => anyhow::bail!("--{name} {text:?}: unknown field {k:?} (use published, target, protocol and mode)"),
        }
    }
    let target = target.ok_or_else(|| anyhow::anyhow!("--{name} {text:?}: target=PORT is missing"))?;
    Ok(vec![PortConfig {
        target,
        published,
        protocol,
        mode,
        host_ip: None,
    }])
}

/// `--placement-pref spread=node.labels.zone`.
fn parse_preference(name: &str, text: &str) -> anyhow::Result<String> {
    let Some(descriptor) = text.strip_prefix("spread=") else {
        anyhow::bail!("--{name} {text:?}: write spread=node.labels.NAME (spread is the only strategy)");
    };
    flag(name, units::parse_spread_preference(descriptor))
}

fn mode_from(mode: ModeArg, replicas: Option<u64>, max_concurrent: Option<u64>) -> anyhow::Result<ServiceMode> {
    if max_concurrent.is_some() && mode != ModeArg::ReplicatedJob {
        anyhow::bail!("--max-concurrent can only be used with replicated-job mode");
    }
    Ok(match mode {
        ModeArg::Replicated => ServiceMode::Replicated {
            replicas: replicas.unwrap_or(1),
        },
        ModeArg::ReplicatedJob => {
            let total = replicas.unwrap_or(1);
            ServiceMode::ReplicatedJob {
                max_concurrent: max_concurrent.unwrap_or(total),
                total_completions: total,
            }
        }
        ModeArg::Global | ModeArg::GlobalJob if replicas.is_some() => {
            anyhow::bail!("--replicas: replicas can only be used with replicated or replicated-job mode")
        }
        ModeArg::Global => ServiceMode::Global,
        ModeArg::GlobalJob => ServiceMode::GlobalJob,
    })
}

/// Sets a replicated service's replicas, or a replicated job's completions.
fn set_replicas(spec: &mut ServiceSpec, n: u64) -> anyhow::Result<()> {
    match &mut spec.mode {
        ServiceMode::Replicated { replicas } => *replicas = n,
        ServiceMode::ReplicatedJob { total_completions, .. } => *total_completions = n,
        ServiceMode::Global | ServiceMode::GlobalJob => {
            anyhow::bail!("scale can only be used with replicated or replicated-job mode")
        }
    }
    Ok(())
}

/// `web=3` for `service scale`.
fn parse_scale(text: &str) -> anyhow::Result<(String, u64)> {
    let parsed = text
        .split_once('=')
        .and_then(|(name, n)| Some((name, n.parse::<u64>().ok()?)))
        .filter(|(name, _)| !name.is_empty());
    match parsed {
        Some((name, n)) => Ok((name.to_string(), n)),
        None => anyhow::bail!("invalid scale specifier {text:?}: write SERVICE=REPLICAS, e.g. web=3"),
    }
}

/// The `--update-*` or `--rollback-*` flags.
struct Rollout<'a> {
    parallelism: Option<u64>,
    delay: Option<&'a str>,
    order: Option<UpdateOrderArg>,
    failure_action: Option<FailureActionArg>,
    monitor: Option<&'a str>,
    max_failure_ratio: Option<f64>,
}

impl Rollout<'_> {
    fn apply(&self, prefix: &str, u: &mut UpdateConfig) -> anyhow::Result<()> {
        if let Some(n) = self.parallelism {
            u.parallelism = n;
        }
        if let Some(d) = self.delay {
            u.delay_ms = duration_ms(&format!("{prefix}-delay"), d)?;
        }
        if let Some(o) = self.order {
            u.order = match o {
                UpdateOrderArg::StartFirst => UpdateOrder::StartFirst,
                UpdateOrderArg::StopFirst => UpdateOrder::StopFirst,
            };
        }
        if let Some(a) = self.failure_action {
            u.failure_action = match a {
                FailureActionArg::Pause => FailureAction::Pause,
                FailureActionArg::Continue => FailureAction::Continue,
                FailureActionArg::Rollback => FailureAction::Rollback,
            };
        }
        if let Some(d) = self.monitor {
            u.monitor_ms = duration_ms(&format!("{prefix}-monitor"), d)?;
        }
        if let Some(r) = self.max_failure_ratio {
            if !(0.0..=1.0).contains(&r) {
                anyhow::bail!(
                    "--{prefix}-max-failure-ratio: {r} is not between 0 and 1 (0.1 tolerates one failed task in ten)"
                );
            }
            u.max_failure_ratio_ppm = (r * 1_000_000.0).round() as u32;
        }
        Ok(())
    }
}

impl TaskFlags {
    /// Changes what the flags set, leaving the rest of `spec` as it is.
    fn apply(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        let task = &mut spec.task;
        let policy = &mut task.restart_policy;
        if let Some(c) = self.restart_condition {
            policy.condition = match c {
                RestartConditionArg::None => RestartCondition::None,
                RestartConditionArg::OnFailure => RestartCondition::OnFailure,
                RestartConditionArg::Any => RestartCondition::Any,
            };
        }
        if let Some(d) = &self.restart_delay {
            policy.delay_ms = duration_ms("restart-delay", d)?;
        }
        if let Some(n) = self.restart_max_attempts {
            policy.max_attempts = n;
        }
        if let Some(d) = &self.restart_window {
            policy.window_ms = duration_ms("restart-window", d)?;
        }
        let r = &mut task.resources;
        if let Some(c) = &self.limit_cpu {
            r.limits.nano_cpus = flag("limit-cpu", units::parse_cpus(c))?;
        }
        if let Some(m) = &self.limit_memory {
            r.limits.memory_bytes = flag("limit-memory", units::parse_bytes(m))?;
        }
        if let Some(p) = self.limit_pids {
            r.limits.pids = p;
        }
        if let Some(c) = &self.reserve_cpu {
            r.reservations.nano_cpus = flag("reserve-cpu", units::parse_cpus(c))?;
        }
        if let Some(m) = &self.reserve_memory {
            r.reservations.memory_bytes = flag("reserve-memory", units::parse_bytes(m))?;
        }
        if r.limits.memory_bytes > 0 && r.reservations.memory_bytes > r.limits.memory_bytes {
            anyhow::bail!("--reserve-memory is above --limit-memory: reserve at most the limit");
        }
        let update = Rollout {
            parallelism: self.update_parallelism,
            delay: self.update_delay.as_deref(),
            order: self.update_order,
            failure_action: self.update_failure_action,
            monitor: self.update_monitor.as_deref(),
            max_failure_ratio: self.update_max_failure_ratio,
        };
        update.apply("update", &mut spec.update_config)?;
        let rollback = Rollout {
            parallelism: self.rollback_parallelism,
            delay: self.rollback_delay.as_deref(),
            order: self.rollback_order,
            failure_action: self.rollback_failure_action,
            monitor: self.rollback_monitor.as_deref(),
            max_failure_ratio: self.rollback_max_failure_ratio,
        };
        if rollback.failure_action == Some(FailureActionArg::Rollback) {
            anyhow::bail!("--rollback-failure-action: a rollback cannot roll back; use pause or continue");
        }
        rollback.apply("rollback", &mut spec.rollback_config)?;
        if let Some(d) = &self.stop_grace_period {
            task.stop_grace_period_ms = duration_ms("stop-grace-period", d)?;
        }
        if let Some(s) = &self.stop_signal {
            task.stop_signal = Some(flag("stop-signal", units::parse_signal(s))?);
        }
        if let Some(w) = &self.workdir {
            task.working_dir = Some(w.clone()).filter(|w| !w.is_empty());
        }
        if let Some(u) = &self.user {
            task.user = Some(u.clone()).filter(|u| !u.is_empty());
        }
        if let Some(h) = &self.hostname {
            task.hostname = Some(h.clone()).filter(|h| !h.is_empty());
        }
        if let Some(e) = &self.entrypoint {
            let words = split_shell_words(e).map_err(|why| anyhow::anyhow!("--entrypoint: {why}"))?;
            task.entrypoint = Some(words).filter(|w| !w.is_empty());
        }
        if let Some(n) = self.replicas_max_per_node {
            if !matches!(
                spec.mode,
                ServiceMode::Replicated { .. } | ServiceMode::ReplicatedJob { .. }
            ) {
                anyhow::bail!("--replicas-max-per-node can only be used with replicated or replicated-job mode");
            }
            task.placement.max_replicas_per_node = n;
        }
        if let Some(m) = self.endpoint_mode {
            spec.endpoint_mode = match m {
                EndpointModeArg::Vip => EndpointMode::Vip,
                EndpointModeArg::Dnsrr => EndpointMode::Dnsrr,
            };
        }
        check_endpoint(spec)
    }
}

/// Docker refuses routing-mesh ports on a DNS round-robin service: there is no virtual IP to route to.
fn check_endpoint(spec: &ServiceSpec) -> anyhow::Result<()> {
    if spec.endpoint_mode == EndpointMode::Dnsrr && spec.ports.iter().any(|p| p.mode == PublishMode::Ingress) {
        anyhow::bail!(
            "ports published in ingress mode cannot be used with --endpoint-mode dnsrr: publish them with mode=host"
        );
    }
    Ok(())
}

/// A name for a service created without `--name`: the image's (or program's) name and a random suffix.
fn default_name(driver: DriverArg, args: &[String], suffix: &str) -> String {
    let first = args.first().map(String::as_str).unwrap_or("service");
    let base = match driver {
        DriverArg::Docker => {
            let without_digest = first.split('@').next().unwrap_or(first);
            let repository = without_digest.rsplit('/').next().unwrap_or(without_digest);
            repository.split(':').next().unwrap_or(repository)
        }
        DriverArg::Process => first.rsplit('/').next().unwrap_or(first),
    };
    let base: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let base = base.trim_matches('-');
    format!("{}-{suffix}", if base.is_empty() { "service" } else { base })
}

/// The spec `service create` sends: Swarm's defaults (as a stack file service gets them) and the flags.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Secret,
    Config,
}

/// `--secret` / `--config`: `NAME`, or `source=NAME,target=T,uid=U,gid=G,mode=M` as Docker takes them. A relative
/// secret target lands under `/run/secrets/`, a relative config target under `/`, as in a stack file.
fn parse_file_ref(flag: &str, kind: FileKind, text: &str) -> anyhow::Result<FileRef> {
    let bad = |why: String| anyhow::anyhow!("--{flag} {text:?}: {why}");
    let (mut source, mut target, mut uid, mut gid, mut mode) = (None, None, None, None, None);
    if !text.contains('=') {
        source = Some(text.trim().to_string());
    } else {
        for field in text.split(',') {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| bad(format!("{field:?} is not KEY=VALUE")))?;
            let value = value.trim().to_string();
            match key.trim() {
                "source" | "src" => source = Some(value),
                "target" => target = Some(value),
                "uid" => uid = Some(value),
                "gid" => gid = Some(value),
                "mode" => {
                    let m = u32::from_str_radix(&value, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| bad(format!("mode {value:?} is not an octal permission such as 0440")))?;
                    mode = Some(m);
                }
                other => {
                    return Err(bad(format!(
                        "unknown key {other:?} (use source, target, uid, gid, mode)"
                    )))
                }
            }
        }
    }
    let source = source
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("no source: give the name, or source=NAME".into()))?;
    let target = target.filter(|t| !t.is_empty()).unwrap_or_else(|| source.clone());
    let target = match (target.starts_with('/'), kind) {
        (true, _) => target,
        (false, FileKind::Secret) => format!("/run/secrets/{target}"),
        (false, FileKind::Config) => format!("/{target}"),
    };
    for (what, id) in [("uid", &uid), ("gid", &gid)] {
        if id.as_ref().is_some_and(|v| v.parse::<u32>().is_err()) {
            return Err(bad(format!("{what} must be a number")));
        }
    }
    Ok(FileRef {
        source,
        target,
        uid: uid.unwrap_or_else(|| "0".into()),
        gid: gid.unwrap_or_else(|| "0".into()),
        mode: mode.unwrap_or(match kind {
            FileKind::Secret => 0o400,
            FileKind::Config => 0o444,
        }),
    })
}

/// Adds a reference, replacing one to the same object or at the same target.
fn add_file_ref(refs: &mut Vec<FileRef>, new: FileRef) {
    refs.retain(|r| r.source != new.source && r.target != new.target);
    refs.push(new);
    refs.sort();
}

fn build_spec(args: &CreateArgs, lookup: &dyn Fn(&str) -> Option<String>, suffix: &str) -> anyhow::Result<ServiceSpec> {
    let (driver, image, command) = match args.driver {
        DriverArg::Docker => {
            let (image, command) = args
                .args
                .split_first()
                .ok_or_else(|| anyhow::anyhow!("an IMAGE is required with the docker driver"))?;
            (Driver::Docker, Some(image.clone()), command.to_vec())
        }
        DriverArg::Process => {
            if args.args.is_empty() {
                anyhow::bail!("the process driver needs a COMMAND (its program and arguments)");
            }
            (Driver::Process, None, args.args.clone())
        }
    };
    let mut task = TaskSpec::with_command(driver, image, command);
    if task.command.as_ref().is_some_and(Vec::is_empty) {
        task.command = None; // the image's own command
    }
    for e in &args.env {
        let (k, v) = parse_env("env", e, lookup)?;
        task.env.insert(k, v);
    }
    for l in &args.container_labels {
        let (k, v) = parse_label("container-label", l)?;
        task.container_labels.insert(k, v);
    }
    for c in &args.constraints {
        task.placement
            .constraints
            .push(flag("constraint", units::parse_constraint(c))?);
    }
    task.placement.constraints.sort();
    task.placement.constraints.dedup();
    for p in &args.placement_prefs {
        task.placement.preferences.push(parse_preference("placement-pref", p)?);
    }
    for r in &args.secrets {
        add_file_ref(&mut task.secrets, parse_file_ref("secret", FileKind::Secret, r)?);
    }
    for r in &args.configs {
        add_file_ref(&mut task.configs, parse_file_ref("config", FileKind::Config, r)?);
    }
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = parse_label("label", l)?;
        labels.insert(k, v);
    }
    let mut ports = Vec::new();
    for p in &args.publish {
        ports.extend(parse_publish("publish", p)?);
    }
    ports.sort();
    ports.dedup();
    let mut spec = ServiceSpec {
        name: match &args.name {
            Some(name) => name.clone(),
            None => default_name(args.driver, &args.args, suffix),
        },
        labels,
        mode: mode_from(args.mode, args.replicas, args.max_concurrent)?,
        task,
        endpoint_mode: EndpointMode::Vip,
        ports,
        update_config: UpdateConfig::default(),
        rollback_config: UpdateConfig::default(),
    };
    args.task.apply(&mut spec)?;
    Ok(spec)
}

/// The edits of `service update`, removals before additions (as Docker applies them).
fn apply_update(
    spec: &mut ServiceSpec,
    args: &UpdateArgs,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    let task = &mut spec.task;
    if let Some(image) = &args.image {
        if task.driver == Driver::Process {
            anyhow::bail!(
                "--image: service {} runs with the process driver, which uses no image (change its command with --args)",
                spec.name
            );
        }
        task.image = Some(image.clone());
    }
    if let Some(line) = &args.args {
        let words = split_shell_words(line).map_err(|why| anyhow::anyhow!("--args: {why}"))?;
        if words.is_empty() && task.driver == Driver::Process {
            anyhow::bail!("--args: a process-driver service needs a command");
        }
        task.command = Some(words).filter(|w| !w.is_empty());
    }
    for k in &args.env_rm {
        task.env.remove(k);
    }
    for e in &args.env_add {
        let (k, v) = parse_env("env-add", e, lookup)?;
        task.env.insert(k, v);
    }
    for c in &args.constraint_rm {
        let c = flag("constraint-rm", units::parse_constraint(c))?;
        task.placement.constraints.retain(|x| *x != c);
    }
    for c in &args.constraint_add {
        task.placement
            .constraints
            .push(flag("constraint-add", units::parse_constraint(c))?);
    }
    task.placement.constraints.sort();
    task.placement.constraints.dedup();
    for p in &args.placement_pref_rm {
        let p = parse_preference("placement-pref-rm", p)?;
        task.placement.preferences.retain(|x| *x != p);
    }
    for p in &args.placement_pref_add {
        let p = parse_preference("placement-pref-add", p)?;
        if !task.placement.preferences.contains(&p) {
            task.placement.preferences.push(p);
        }
    }
    for name in &args.secret_rm {
        task.secrets.retain(|r| r.source != *name);
    }
    for r in &args.secret_add {
        add_file_ref(&mut task.secrets, parse_file_ref("secret-add", FileKind::Secret, r)?);
    }
    for name in &args.config_rm {
        task.configs.retain(|r| r.source != *name);
    }
    for r in &args.config_add {
        add_file_ref(&mut task.configs, parse_file_ref("config-add", FileKind::Config, r)?);
    }
    for k in &args.container_label_rm {
        task.container_labels.remove(k);
    }
    for l in &args.container_label_add {
        let (k, v) = parse_label("container-label-add", l)?;
        task.container_labels.insert(k, v);
    }
    for k in &args.label_rm {
        spec.labels.remove(k);
    }
    for l in &args.label_add {
        let (k, v) = parse_label("label-add", l)?;
        spec.labels.insert(k, v);
    }
    for p in &args.publish_rm {
        for gone in parse_publish("publish-rm", p)? {
            spec.ports.retain(|x| {
                !(x.target == gone.target
                    && x.protocol == gone.protocol
                    && (gone.published.is_none() || x.published == gone.published))
            });
        }
    }
    for p in &args.publish_add {
        spec.ports.extend(parse_publish("publish-add", p)?);
    }
    spec.ports.sort();
    spec.ports.dedup();
    if let Some(n) = args.replicas {
        set_replicas(spec, n).map_err(|_| {
            anyhow::anyhow!("--replicas: replicas can only be used with replicated or replicated-job mode")
        })?;
    }
    args.task.apply(spec)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use swarm_specs::task::TaskStatus;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ServiceCommand,
    }

    fn parse(args: &[&str]) -> ServiceCommand {
        let mut all = vec!["service"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all) {
            Ok(cli) => cli.command,
            Err(e) => panic!("{e}"),
        }
    }

    fn create_args(args: &[&str]) -> CreateArgs {
        let mut all = vec!["create"];
        all.extend_from_slice(args);
        match parse(&all) {
            ServiceCommand::Create(a) => *a,
            _ => panic!("not a create"),
        }
    }

    fn update_args(args: &[&str]) -> UpdateArgs {
        let mut all = vec!["update"];
        all.extend_from_slice(args);
        match parse(&all) {
            ServiceCommand::Update(a) => *a,
            _ => panic!("not an update"),
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn spec_of(args: &[&str]) -> ServiceSpec {
        build_spec(&create_args(args), &no_env, "abcde").unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn error_of(args: &[&str]) -> String {
        match build_spec(&create_args(args), &no_env, "abcde") {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    fn service(name: &str, mode: ServiceMode) -> Service {
        let spec = spec_of(&["--name", name, "nginx:1.27@sha256:abc"]);
        Service::new(format!("{name}0123456789abcdefghij"), ServiceSpec { mode, ..spec }, 0)
    }

    fn info(s: Service, running: u64, desired: u64) -> ServiceInfo {
        ServiceInfo {
            service: s,
            progress: Progress {
                running,
                desired,
                completed: 0,
            },
        }
    }

    fn task(id: &str, service: &str, slot: u64, state: TaskState, desired: TaskState, created: u64) -> Task {
        Task {
            id: id.to_string(),
            service: service.into(),
            slot: Some(slot),
            node_id: Some("n1xxxxxxxxxxxxxxxxxxxxxxx".into()),
            spec_version: 1,
            spec: TaskSpec::with_command(Driver::Docker, Some("nginx:1.27".into()), vec![]),
            desired_state: desired,
            status: TaskStatus::new(state, created, "x"),
            created_at: created,
            ports: Vec::new(),
            networks: Vec::new(),
            started_at: None,
        }
    }

    fn node(id: &str, hostname: &str) -> Node {
        let mut n = Node::joining(
            id,
            swarm_reconciler::ca::Role::Worker,
            "127.0.0.1:2377",
            0,
            Default::default(),
            swarm_reconciler::cluster::NodeStatus::Ready,
            0,
        );
        n.description.hostname = hostname.into();
        n
    }

    #[test]
    fn tables_align_columns_three_spaces_apart() {
        let rows = vec![
            header(&["ID", "NAME", "PORTS"]),
            vec!["abc".into(), "web".into(), "".into()],
        ];
        assert_eq!(table(&rows), "ID    NAME   PORTS\nabc   web\n");
    }

    #[test]
    fn relative_times_read_like_dockers() {
        assert_eq!(ago(100_000, 63_000), "37 seconds ago");
        assert_eq!(ago(1000, 1000), "less than a second ago");
        assert_eq!(
            ago(0, 5),
            "less than a second ago",
            "a clock ahead is not negative time"
        );
    }

    #[test]
    fn replicas_column() {
        let mut spec = spec_of(&["--name", "web", "nginx"]);
        let p = Progress {
            running: 2,
            desired: 3,
            completed: 0,
        };
        assert_eq!(replicas_text(&spec, p), "2/3");
        spec.task.placement.max_replicas_per_node = 1;
        assert_eq!(replicas_text(&spec, p), "2/3 (max 1 per node)");
        spec.mode = ServiceMode::ReplicatedJob {
            max_concurrent: 2,
            total_completions: 5,
        };
        let p = Progress {
            running: 2,
            desired: 5,
            completed: 3,
        };
        assert_eq!(replicas_text(&spec, p), "2/2 (3/5 completed)");
    }

    #[test]
    fn ports_column_merges_ranges_and_skips_host_ports() {
        let mut ports = Vec::new();
        for p in ["8080:80", "8081:81", "53:53/udp", "9000:90"] {
            ports.extend(parse_publish("publish", p).unwrap_or_default());
        }
        ports.extend(parse_publish("publish", "published=7000,target=70,mode=host").unwrap_or_default());
        assert_eq!(
            ports_text(&ports),
            "*:8080-8081->80-81/tcp, *:9000->90/tcp, *:53->53/udp"
        );
        assert_eq!(host_ports_text(&ports), "*:7000->70/tcp");
    }

    #[test]
    fn image_column_drops_digests_and_shows_commands_of_processes() {
        let spec = spec_of(&["--name", "web", "nginx:1.27@sha256:abc"]);
        assert_eq!(image_text(&spec.task, false), "nginx:1.27");
        assert_eq!(image_text(&spec.task, true), "nginx:1.27@sha256:abc");
        let spec = spec_of(&[
            "--driver",
            "process",
            "--name",
            "tick",
            "--",
            "sh",
            "-c",
            "while true; do date; sleep 1; done; echo this is long",
        ]);
        assert_eq!(
            image_text(&spec.task, false),
            "sh -c while true; do date; sleep 1; don…"
        );
    }

    #[test]
    fn service_table_sorts_by_name() {
        let a = info(service("web", ServiceMode::Replicated { replicas: 3 }), 3, 3);
        let b = info(service("api", ServiceMode::Global), 1, 2);
        let text = format_services(&[&a, &b], false);
        assert_eq!(
            text,
            "ID             NAME   MODE         REPLICAS   IMAGE        PORTS\n\
             api012345678   api    global       1/2        nginx:1.27\n\
             web012345678   web    replicated   3/3        nginx:1.27\n"
        );
        assert_eq!(format_services(&[&a, &b], true), "api012345678\nweb012345678\n");
    }

    #[test]
    fn service_filters() {
        let web = service("web_web", ServiceMode::Replicated { replicas: 1 });
        let mut labelled = web.clone();
        labelled.spec.labels.insert("tier".into(), "front".into());
        let f = |args: &[&str]| {
            let v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            ServiceFilter::parse(&v).unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(f(&["name=web"]).matches(&web));
        assert!(!f(&["name=api"]).matches(&web));
        assert!(f(&["name=api", "name=web"]).matches(&web), "one key, either value");
        assert!(f(&["mode=replicated"]).matches(&web));
        assert!(!f(&["mode=global"]).matches(&web));
        assert!(f(&["label=tier"]).matches(&labelled) && !f(&["label=tier"]).matches(&web));
        assert!(!f(&["label=tier=back"]).matches(&labelled));
        let err = ServiceFilter::parse(&["colour=red".to_string()])
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid filter \"colour=red\": the keys are id, label, mode and name")
        );
    }

    #[test]
    fn a_slots_tasks_stay_together_newest_first_across_nodes() {
        let web = service("web", ServiceMode::Replicated { replicas: 1 });
        let mut moved_away = task("old", "web", 1, TaskState::Running, TaskState::Shutdown, 1_000);
        moved_away.node_id = Some("zzz".into());
        let mut replacement = task("new", "web", 1, TaskState::Running, TaskState::Running, 2_000);
        replacement.node_id = Some("aaa".into());
        let nodes = vec![node("zzz", "w1"), node("aaa", "m1")];
        let quiet = PsArgs {
            quiet: true,
            ..PsArgs::default()
        };
        let text = format_tasks(
            &[web],
            &[moved_away, replacement],
            &nodes,
            &TaskFilter::default(),
            3_000,
            &quiet,
        );
        assert_eq!(text, "new\nold\n");
    }

    #[test]
    fn task_table_groups_slots_newest_first_with_history_indented() {
        let web = service("web", ServiceMode::Replicated { replicas: 2 });
        let mut failed = task("t1old", "web", 1, TaskState::Failed, TaskState::Shutdown, 1_000);
        failed.status.err = Some("task: non-zero exit (1): the process could not start".into());
        let tasks = vec![
            task("t2", "web", 2, TaskState::Running, TaskState::Running, 5_000),
            failed,
            task("t1new", "web", 1, TaskState::Running, TaskState::Running, 8_000),
        ];
        let nodes = vec![node("n1xxxxxxxxxxxxxxxxxxxxxxx", "m1")];
        let opts = PsArgs::default();
        let text = format_tasks(&[web], &tasks, &nodes, &TaskFilter::default(), 45_000, &opts);
        assert_eq!(
            text,
            "ID      NAME        IMAGE        NODE   DESIRED STATE   CURRENT STATE            ERROR                              PORTS\n\
             t1new   web.1       nginx:1.27   m1     Running         Running 37 seconds ago\n\
             t1old    \\_ web.1   nginx:1.27   m1     Shutdown        Failed 44 seconds ago    \"task: non-zero exit (1): the …\"\n\
             t2      web.2       nginx:1.27   m1     Running         Running 40 seconds ago\n"
        );
        let running = TaskFilter::parse(&["desired-state=running".to_string()]).unwrap_or_default();
        let quiet = PsArgs {
            quiet: true,
            ..PsArgs::default()
        };
        let web = service("web", ServiceMode::Replicated { replicas: 2 });
        assert_eq!(
            format_tasks(&[web], &tasks, &nodes, &running, 45_000, &quiet),
            "t1new\nt2\n"
        );
    }

    #[test]
    fn task_filters() {
        let t = task("abc123", "web", 1, TaskState::Running, TaskState::Running, 0);
        let f = |s: &str| TaskFilter::parse(&[s.to_string()]).unwrap_or_else(|e| panic!("{e}"));
        assert!(f("node=m1").matches(&t, "web.1", "m1"));
        assert!(f("node=n1xx").matches(&t, "web.1", "m1"));
        assert!(!f("node=m2").matches(&t, "web.1", "m1"));
        assert!(f("name=web.1").matches(&t, "web.1", "m1"));
        assert!(!f("name=web.2").matches(&t, "web.1", "m1"));
        assert!(!f("desired-state=shutdown").matches(&t, "web.1", "m1"));
        assert!(TaskFilter::parse(&["desired-state=sleeping".to_string()]).is_err());
    }

    #[test]
    fn errors_are_quoted_and_cut_like_dockers() {
        assert_eq!(error_text("", true), "");
        assert_eq!(error_text("short", true), "\"short\"");
        let long = "no suitable node (3 nodes: 3 lack 64 GiB memory)";
        assert_eq!(error_text(long, true), "\"no suitable node (3 nodes: 3 …\"");
        assert_eq!(error_text(long, false), format!("\"{long}\""));
    }

    #[test]
    fn secrets_and_configs_are_given_as_docker_takes_them() {
        let spec = spec_of(&[
            "--secret",
            "db",
            "--secret",
            "source=api_key,target=api,uid=1000,gid=1001,mode=0440",
            "--config",
            "src=app_conf,target=/etc/app.conf",
            "--config",
            "motd",
            "busybox",
        ]);
        let text = |refs: &[FileRef]| {
            refs.iter()
                .map(|r| format!("{}>{}:{}:{}:{:o}", r.source, r.target, r.uid, r.gid, r.mode))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            text(&spec.task.secrets),
            ["api_key>/run/secrets/api:1000:1001:440", "db>/run/secrets/db:0:0:400"]
        );
        assert_eq!(
            text(&spec.task.configs),
            ["app_conf>/etc/app.conf:0:0:444", "motd>/motd:0:0:444"]
        );

        let mut spec = spec;
        let args = update_args(&[
            "--secret-rm",
            "db",
            "--secret-add",
            "source=db2,target=db",
            "--config-rm",
            "motd",
            "web",
        ]);
        apply_update(&mut spec, &args, &no_env).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            text(&spec.task.secrets),
            ["api_key>/run/secrets/api:1000:1001:440", "db2>/run/secrets/db:0:0:400"]
        );
        assert_eq!(text(&spec.task.configs), ["app_conf>/etc/app.conf:0:0:444"]);

        for (flag, why) in [
            ("source=db,mode=999", "is not an octal permission"),
            ("target=x", "no source"),
            ("source=db,owner=me", "unknown key \"owner\""),
            ("source=db,uid=root", "uid must be a number"),
            ("source=", "no source"),
        ] {
            let err = error_of(&["--secret", flag, "busybox"]);
            assert!(err.contains("--secret") && err.contains(why), "{flag}: {err}");
        }
    }

    #[test]
    fn create_flags_become_a_spec_with_swarm_defaults() {
        let spec = spec_of(&[
            "--name",
            "web",
            "--replicas",
            "3",
            "-e",
            "A=1",
            "--label",
            "tier=front",
            "--container-label",
            "c=d",
            "-p",
            "8080:80",
            "--constraint",
            "node.role==worker",
            "--placement-pref",
            "spread=node.labels.zone",
            "--limit-memory",
            "512m",
            "--reserve-cpu",
            "0.5",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "2s",
            "--update-parallelism",
            "2",
            "--update-order",
            "start-first",
            "--stop-grace-period",
            "30s",
            "nginx:1.27",
            "nginx",
            "-g",
            "daemon off;",
        ]);
        assert_eq!(spec.name, "web");
        assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 3 });
        assert_eq!(spec.task.image.as_deref(), Some("nginx:1.27"));
        assert_eq!(
            spec.task.command,
            Some(vec!["nginx".into(), "-g".into(), "daemon off;".into()])
        );
        assert_eq!(spec.task.env.get("A"), Some(&Some("1".to_string())));
        assert_eq!(spec.labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(spec.task.container_labels.get("c").map(String::as_str), Some("d"));
        assert_eq!(ports_text(&spec.ports), "*:8080->80/tcp");
        assert_eq!(spec.task.placement.constraints[0].to_string(), "node.role==worker");
        assert_eq!(spec.task.placement.preferences, vec!["node.labels.zone"]);
        assert_eq!(spec.task.resources.limits.memory_bytes, 512 << 20);
        assert_eq!(spec.task.resources.reservations.nano_cpus, 500_000_000);
        assert_eq!(spec.task.restart_policy.condition, RestartCondition::OnFailure);
        assert_eq!(spec.task.restart_policy.delay_ms, 2_000);
        assert_eq!(spec.update_config.parallelism, 2);
        assert_eq!(spec.update_config.order, UpdateOrder::StartFirst);
        assert_eq!(spec.rollback_config, UpdateConfig::default());
        assert_eq!(spec.task.stop_grace_period_ms, 30_000);
        assert_eq!(spec.endpoint_mode, EndpointMode::Vip);
    }

    #[test]
    fn process_services_take_their_command_from_the_arguments() {
        let spec = spec_of(&["--driver", "process", "--name", "tick", "--", "sh", "-c", "echo hi"]);
        assert_eq!(spec.task.driver, Driver::Process);
        assert_eq!(spec.task.image, None);
        assert_eq!(
            spec.task.command,
            Some(vec!["sh".into(), "-c".into(), "echo hi".into()])
        );
        let spec = spec_of(&["nginx"]);
        assert_eq!(spec.name, "nginx-abcde");
        assert_eq!(spec.task.command, None, "the image's own command");
        let spec = spec_of(&["--driver", "process", "/usr/bin/python3", "-m", "http.server"]);
        assert_eq!(spec.name, "python3-abcde");
        let args = create_args(&["-d", "-q", "--name", "web", "nginx", "-d"]);
        assert!(args.detach && args.quiet);
        assert_eq!(
            args.args,
            vec!["nginx", "-d"],
            "flags after the image belong to its command"
        );
    }

    #[test]
    fn bad_flags_are_named_in_the_error() {
        assert!(error_of(&["--limit-memory", "lots", "nginx"]).starts_with("--limit-memory: invalid size \"lots\""));
        assert!(error_of(&["--restart-delay", "5 days", "nginx"]).starts_with("--restart-delay: invalid duration"));
        assert!(
            error_of(&["--constraint", "node.role=worker", "nginx"]).starts_with("--constraint: invalid constraint")
        );
        assert!(error_of(&["-p", "http", "nginx"]).starts_with("--publish: invalid port"));
        assert_eq!(
            error_of(&["--mode", "global", "--replicas", "2", "nginx"]),
            "--replicas: replicas can only be used with replicated or replicated-job mode"
        );
        assert!(error_of(&["--placement-pref", "node.labels.zone", "nginx"]).starts_with("--placement-pref"));
        assert!(error_of(&["--endpoint-mode", "dnsrr", "-p", "80:80", "nginx"]).contains("dnsrr"));
    }

    #[test]
    fn jobs_default_their_concurrency_to_the_completions() {
        let spec = spec_of(&["--mode", "replicated-job", "--replicas", "4", "busybox"]);
        assert_eq!(
            spec.mode,
            ServiceMode::ReplicatedJob {
                max_concurrent: 4,
                total_completions: 4
            }
        );
    }

    #[test]
    fn update_flags_edit_the_spec_removals_first() {
        let mut spec = spec_of(&[
            "--name",
            "web",
            "-e",
            "A=1",
            "-e",
            "B=2",
            "--label",
            "x=1",
            "-p",
            "8080:80",
            "--constraint",
            "node.role==worker",
            "nginx:1.25",
        ]);
        let args = update_args(&[
            "--image",
            "nginx:1.27",
            "--env-rm",
            "A",
            "--env-add",
            "B=3",
            "--label-rm",
            "x",
            "--label-add",
            "y=2",
            "--publish-rm",
            "80",
            "--publish-add",
            "9090:90",
            "--constraint-rm",
            "node.role==worker",
            "--constraint-add",
            "node.role==manager",
            "--replicas",
            "5",
            "--limit-cpu",
            "1.5",
            "web",
        ]);
        apply_update(&mut spec, &args, &no_env).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(spec.task.image.as_deref(), Some("nginx:1.27"));
        assert_eq!(spec.task.env.len(), 1);
        assert_eq!(spec.task.env.get("B"), Some(&Some("3".to_string())));
        assert_eq!(spec.labels.keys().collect::<Vec<_>>(), vec!["y"]);
        assert_eq!(ports_text(&spec.ports), "*:9090->90/tcp");
        assert_eq!(spec.task.placement.constraints.len(), 1);
        assert_eq!(spec.task.placement.constraints[0].to_string(), "node.role==manager");
        assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 5 });
        assert_eq!(spec.task.resources.limits.nano_cpus, 1_500_000_000);
    }

    #[test]
    fn scale_refuses_global_services() {
        assert_eq!(parse_scale("web=3").ok(), Some(("web".to_string(), 3)));
        assert!(parse_scale("web").is_err() && parse_scale("web=x").is_err() && parse_scale("=3").is_err());
        let mut spec = spec_of(&["--name", "agent", "--mode", "global", "nginx"]);
        let err = set_replicas(&mut spec, 2).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("scale can only be used with replicated or replicated-job mode")
        );
        let mut process = spec_of(&["--driver", "process", "--name", "p", "sleep", "9"]);
        let image = update_args(&["--image", "nginx", "p"]);
        assert!(apply_update(&mut process, &image, &no_env).is_err());
    }

    #[test]
    fn env_without_a_value_comes_from_the_shell_or_the_node() {
        let lookup = |k: &str| (k == "HOME").then(|| "/root".to_string());
        assert_eq!(
            parse_env("env", "HOME", &lookup).ok(),
            Some(("HOME".into(), Some("/root".into())))
        );
        assert_eq!(parse_env("env", "UNSET", &lookup).ok(), Some(("UNSET".into(), None)));
        assert!(parse_env("env", "=x", &lookup).is_err());
    }

    #[test]
    fn log_prefixes_pad_slots_and_can_drop_ids() {
        assert_eq!(
            log_prefix("web_web.1.abcdef123456", "m1", false, 2),
            "web_web.1.abcdef123456@m1 "
        );
        assert_eq!(
            log_prefix("web_web.10.abcdef123456", "m1", false, 2),
            "web_web.10.abcdef123456@m1"
        );
        assert_eq!(log_prefix("web_web.1.abcdef123456", "m1", true, 1), "web_web.1@m1");
        assert_eq!(parse_tail("all"), Ok(Tail(None)));
        assert_eq!(parse_tail("10"), Ok(Tail(Some(10))));
        assert!(parse_tail("ten").is_err());
    }

    #[test]
    fn inspect_uses_dockers_envelope() {
        let s = service("web", ServiceMode::Replicated { replicas: 1 });
        let v = inspect_json(&info(s, 1, 1));
        assert_eq!(v["Version"]["Index"], 1);
        assert_eq!(v["CreatedAt"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["Spec"]["name"], "web");
        assert!(v.get("PreviousSpec").is_none());
        assert_eq!(rfc3339(1_714_564_800_250), "2024-05-01T12:00:00.250Z");
        let pretty = format_pretty(&info(service("web", ServiceMode::Replicated { replicas: 1 }), 1, 1));
        assert!(pretty.contains("Name:                   web\n"), "{pretty}");
        assert!(pretty.contains(" Replicas:              1\n"), "{pretty}");
    }
}
