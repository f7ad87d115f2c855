//! `swarm`: the command line. Thin: clap parses, library crates decide, this file prints.

mod apply;
mod client;
mod config;
mod node;
mod progress;
mod secret;
mod service;
mod source;
mod stack;
mod stackfile;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;

#[derive(Parser)]
#[command(
    name = "swarm",
    version,
    about = "A GitOps-native container orchestrator for Docker stack files"
)]
struct Cli {
    /// The daemon to talk to: a unix socket path (`unix:///run/swarm/swarm.sock`) or `https://MANAGER:2377` with
    /// SWARM_CERT_PATH holding ca.pem, cert.pem and key.pem.
    #[arg(long, short = 'H', env = "SWARM_HOST", global = true)]
    host: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Which stack files to read and how to interpolate them (shared by validate, config and plan).
#[derive(clap::Args, Debug, Clone)]
pub struct StackArgs {
    /// Stack file; repeat to merge several, later files overriding earlier ones.
    #[arg(short = 'f', long = "file", value_name = "FILE", default_value = "docker-stack.yml")]
    pub files: Vec<PathBuf>,
    /// Variables for interpolation (default: `.env` beside the first file). The environment wins.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Stack name (default: the file's `name:`, else the first file's directory name).
    #[arg(long, short = 's', value_name = "NAME")]
    pub stack: Option<String>,
    /// age key file (`age-keygen -o key.txt`) for secret and config files encrypted with age (`*.age`, or
    /// `x-swarm: {encrypted: age}`); repeat for several. They are decrypted here, before anything is sent.
    #[arg(
        long = "age-key-file",
        value_name = "FILE",
        env = "SWARM_AGE_KEY_FILE",
        value_delimiter = ','
    )]
    pub age_key_files: Vec<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node process (what dockerd is to Docker): it keeps the node's state and runs its role.
    Daemon {
        /// Where the node keeps its identity, certificates and Raft data.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// The unix socket the CLI talks to.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// The hostname this node reports (default: the machine's).
        #[arg(long)]
        hostname: Option<String>,
        /// Raft election timeout range in milliseconds, e.g. 150-300 (openraft's default).
        #[arg(long, value_name = "MIN-MAX", value_parser = parse_range)]
        election_timeout: Option<(u64, u64)>,
        /// Raft heartbeat interval in milliseconds (default 50).
        #[arg(long, value_name = "MS")]
        raft_heartbeat: Option<u64>,
        /// Raft log entries between snapshots (default 10000).
        #[arg(long, value_name = "N")]
        snapshot_interval: Option<u64>,
        /// Run tasks as processes only, even when a Docker Engine is reachable.
        #[arg(long)]
        no_docker: bool,
        /// The Docker Engine's unix socket for the docker driver.
        #[arg(long, value_name = "PATH", default_value = "/var/run/docker.sock")]
        docker_socket: PathBuf,
    },
    /// Make this node the first manager of a new swarm.
    Init {
        /// Address other nodes use to reach this one (IP or IP:PORT; the port defaults to the listen port).
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Address the manager API listens on.
        #[arg(long, default_value = "0.0.0.0:2377")]
        listen_addr: String,
        /// Rebuild a cluster that lost its quorum for good from this manager's data.
        #[arg(long)]
        force_new_cluster: bool,
        /// Protect the managers' secrets key with an unlock key, printed once: a restarted manager cannot use
        /// secrets until `swarm unlock` gives it.
        #[arg(long)]
        autolock: bool,
    },
    /// Join a swarm as a worker or a manager, as the token says.
    Join {
        #[arg(long)]
        token: String,
        #[arg(long)]
        advertise_addr: Option<String>,
        #[arg(long, default_value = "0.0.0.0:2377")]
        listen_addr: String,
        /// A manager's address, HOST:PORT.
        remote: String,
    },
    /// Print (or rotate) the token to join as a worker or a manager.
    JoinToken {
        #[arg(value_parser = ["worker", "manager"])]
        role: String,
        #[arg(short, long)]
        quiet: bool,
        #[arg(long)]
        rotate: bool,
    },
    /// Change cluster settings, as `docker swarm update`.
    Update {
        /// How often nodes report, e.g. 1s.
        #[arg(long, value_name = "DURATION")]
        dispatcher_heartbeat: Option<String>,
        /// Missed heartbeats before a node is Down.
        #[arg(long, value_name = "N")]
        heartbeat_grace: Option<u32>,
        /// How long node certificates last, e.g. 2160h.
        #[arg(long, value_name = "DURATION")]
        cert_expiry: Option<String>,
        /// Remove workers that stay Down this long (e.g. 24h), or `off`.
        #[arg(long, value_name = "DURATION|off")]
        node_prune_after: Option<String>,
        /// Finished tasks kept per slot.
        #[arg(long, value_name = "N")]
        task_history_limit: Option<u32>,
        /// Earlier versions of each stack secret or config kept once unused, for `stack rollback` (default 2).
        #[arg(long, value_name = "N")]
        secret_history_limit: Option<u32>,
        /// Turn autolock on (a new unlock key is printed once) or off.
        #[arg(long, value_name = "true|false", num_args = 0..=1, default_missing_value = "true")]
        autolock: Option<bool>,
    },
    /// Unlock a manager that restarted with autolock on: give the unlock key on standard input (or at the prompt).
    Unlock,
    /// Print the unlock key (autolock), or replace it with a new one.
    UnlockKey {
        /// Make a new unlock key; the old one no longer unlocks managers once they rewrapped their copy.
        #[arg(long)]
        rotate: bool,
        /// Print only the key.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Leave the swarm.
    Leave {
        #[arg(short, long)]
        force: bool,
    },
    /// Show the Swarm section of this node's information.
    Info {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage services.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Manage stacks.
    #[command(subcommand)]
    Stack(stack::StackCommand),
    /// Manage secrets: encrypted in the cluster, delivered only to the nodes whose tasks use them.
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Manage GitOps sources: git repositories whose stacks the manager keeps applied.
    #[command(subcommand)]
    Source(source::SourceCommand),
    /// Low-level task commands for testing the dispatcher and agents (services come with `swarm apply`).
    #[command(subcommand, hide = true)]
    Debug(DebugCommand),
    /// Check stack files: exit 0 when valid, 1 when not; warnings go to stderr.
    Validate {
        #[command(flatten)]
        stack: StackArgs,
        /// Print nothing on success.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print the stack after interpolation and merging, as `docker stack config` does; or, with a subcommand,
    /// manage configs (create, ls, inspect, rm) as `docker config` does.
    #[command(args_conflicts_with_subcommands = true)]
    Config {
        #[command(subcommand)]
        action: Option<config::ConfigCommand>,
        #[command(flatten)]
        stack: StackArgs,
        /// Print the canonical spec the manager stores (JSON) instead of the stack file.
        #[arg(long)]
        normalized: bool,
    },
    /// Print the stack file JSON Schema (point your editor's YAML language server at it).
    Schema,
    /// Apply a stack to the cluster in one step, then wait until every service converged.
    Apply {
        #[command(flatten)]
        stack: StackArgs,
        /// A plan saved with `swarm plan --out FILE`: applied as planned, refused if the stack moved since.
        #[arg(value_name = "PLAN")]
        plan: Option<PathBuf>,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long, alias = "auto-approve")]
        yes: bool,
        /// Remove services, networks and volumes the stack no longer has.
        #[arg(long)]
        prune: bool,
        /// Return once applied, without waiting for the services to converge.
        #[arg(short, long)]
        detach: bool,
        #[arg(long)]
        no_color: bool,
        /// Print only the result.
        #[arg(short, long)]
        quiet: bool,
        /// Keep running: apply now, then plan and apply again on every save of the stack files, the .env (or
        /// --env-file) and the env_file, secret and config files they name, until Ctrl-C. Implies --yes. Each
        /// apply waits for convergence as usual, but a save during that wait ends it and applies the new version
        /// at once (with --detach nothing is waited for). An invalid file prints its errors, applies nothing, and
        /// watching goes on.
        #[arg(short, long, conflicts_with = "plan")]
        watch: bool,
    },
    /// Start a single-node cluster in this process, apply the stack, and run until Ctrl-C.
    Up {
        #[command(flatten)]
        stack: StackArgs,
        /// Where the cluster keeps its data (default: ~/.local/share/swarm/up/STACK).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Run tasks as processes only, even when a Docker Engine is reachable.
        #[arg(long)]
        no_docker: bool,
        #[arg(long, value_name = "PATH", default_value = "/var/run/docker.sock")]
        docker_socket: PathBuf,
        /// Address of the embedded manager (default: a free port on 127.0.0.1).
        #[arg(long, value_name = "ADDR")]
        listen_addr: Option<String>,
    },
    /// Show what applying the stack would change: a semantic diff, not a text diff.
    Plan {
        #[command(flatten)]
        stack: StackArgs,
        /// Compare with these stack files (the current state) instead of the live cluster (the default).
        #[arg(long, value_name = "FILE", conflicts_with = "base_git")]
        base: Vec<PathBuf>,
        /// Compare with the same files at this git revision (e.g. `origin/main`, `HEAD~1`).
        #[arg(long, value_name = "REV")]
        base_git: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        /// Exit 0 when there is nothing to change, 2 when there are changes, 1 on error.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Never colour the output (it is coloured only on a terminal anyway).
        #[arg(long)]
        no_color: bool,
        /// Also write the plan as JSON to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// List nodes.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show nodes in detail (JSON, or --pretty).
    Inspect {
        #[arg(required = true)]
        nodes: Vec<String>,
        #[arg(long)]
        pretty: bool,
    },
    /// Make workers managers.
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers.
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes from the swarm.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        nodes: Vec<String>,
        /// Remove a node that is not down.
        #[arg(short, long)]
        force: bool,
    },
    /// Change a node's availability or labels.
    Update {
        #[arg(long, value_parser = ["active", "pause", "drain"])]
        availability: Option<String>,
        #[arg(long, value_name = "KEY=VALUE")]
        label_add: Vec<String>,
        #[arg(long, value_name = "KEY")]
        label_rm: Vec<String>,
        node: String,
    },
}

#[derive(Subcommand)]
enum DebugCommand {
    /// Assign one task to a node directly (what the orchestrator and scheduler will do).
    Run {
        /// Node id, unique id prefix or hostname.
        #[arg(long)]
        node: String,
        #[arg(long, default_value = "process", value_parser = ["process", "docker"])]
        driver: String,
        #[arg(long)]
        image: Option<String>,
        /// Stored as `swarm-debug-SERVICE`: the orchestrator leaves such tasks alone.
        #[arg(long, default_value = "task")]
        service: String,
        #[arg(long, default_value_t = 1)]
        slot: u64,
        /// Stop grace period in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        grace_ms: u64,
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Change a task's desired state (running, shutdown, remove).
    Desire {
        task: String,
        #[arg(value_parser = ["running", "shutdown", "remove"])]
        state: String,
    },
    /// Reassign a task to another node (what the orchestrator does when a node is lost).
    Move { task: String, node: String },
    /// Print every task as JSON.
    Tasks,
    /// Print a task's output.
    Logs {
        task: String,
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        tail: Option<usize>,
        #[arg(short, long)]
        timestamps: bool,
    },
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (a, b) = text.split_once('-').ok_or("expected MIN-MAX, e.g. 150-300")?;
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not a number of milliseconds"))?;
    let b: u64 = b
        .trim()
        .parse()
        .map_err(|_| format!("{b:?} is not a number of milliseconds"))?;
    if a == 0 || a >= b {
        return Err("MIN must be above 0 and below MAX".into());
    }
    Ok((a, b))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWARM_LOG").unwrap_or_else(|_| {
                // `swarm up` prints its own progress; the embedded daemon only speaks up about problems.
                if matches!(cli.command, Command::Up { .. }) {
                    "warn".into()
                } else {
                    "warn,swarm=info".into()
                }
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = run(cli).await;
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = || client::Client::from_host(cli.host.as_deref());
    match cli.command {
        Command::Daemon {
            data_dir,
            socket,
            hostname,
            election_timeout,
            raft_heartbeat,
            snapshot_interval,
            no_docker,
            docker_socket,
        } => {
            let socket = socket
                .or_else(|| {
                    cli.host
                        .as_deref()
                        .map(|h| PathBuf::from(h.trim_start_matches("unix://")))
                })
                .unwrap_or_else(client::default_socket);
            let args = node::DaemonArgs {
                data_dir: data_dir.unwrap_or_else(client::default_data_dir),
                socket,
                hostname,
                election_timeout_ms: election_timeout,
                raft_heartbeat_ms: raft_heartbeat,
                snapshot_interval,
                no_docker,
                docker_socket,
                stop_tasks_on_exit: false,
            };
            node::daemon(args).await
        }
        Command::Init {
            advertise_addr,
            listen_addr,
            force_new_cluster,
            autolock,
        } => {
            let req = swarm_reconciler::wire::InitRequest {
                advertise_addr,
                listen_addr: Some(listen_addr),
                force_new_cluster,
                autolock,
            };
            node::init(&client()?, req).await
        }
        Command::Join {
            token,
            advertise_addr,
            listen_addr,
            remote,
        } => {
            let req = swarm_reconciler::wire::JoinRequest {
                token,
                remote_addr: remote,
                advertise_addr,
                listen_addr: Some(listen_addr),
            };
            node::join(&client()?, req).await
        }
        Command::JoinToken { role, quiet, rotate } => node::join_token(&client()?, &role, quiet, rotate).await,
        Command::Leave { force } => node::leave(&client()?, force).await,
        Command::Update {
            dispatcher_heartbeat,
            heartbeat_grace,
            cert_expiry,
            node_prune_after,
            task_history_limit,
            secret_history_limit,
            autolock,
        } => {
            let ms = |text: &str| -> anyhow::Result<u64> {
                let d = swarm_specs::units::parse_duration(text)?;
                Ok(u64::try_from(d.as_millis())?)
            };
            let update = swarm_reconciler::wire::SettingsUpdate {
                heartbeat_period_ms: dispatcher_heartbeat.as_deref().map(ms).transpose()?,
                heartbeat_grace,
                prune_down_after_ms: match node_prune_after.as_deref() {
                    None => None,
                    Some("off") => Some(None),
                    Some(d) => Some(Some(ms(d)?)),
                },
                node_cert_validity_ms: cert_expiry.as_deref().map(ms).transpose()?,
                task_history_limit,
                secret_history_limit,
            };
            secret::update(&client()?, update, autolock).await
        }
        Command::Unlock => secret::unlock(&client()?).await,
        Command::UnlockKey { rotate, quiet } => secret::unlock_key(&client()?, rotate, quiet).await,
        Command::Secret(cmd) => secret::run(&client()?, cmd).await,
        Command::Info { json } => node::info(&client()?, json).await,
        Command::Debug(cmd) => {
            let c = client()?;
            match cmd {
                DebugCommand::Run {
                    node,
                    driver,
                    image,
                    service,
                    slot,
                    grace_ms,
                    command,
                } => node::debug_run(&c, &node, &driver, image, &service, slot, grace_ms, command).await,
                DebugCommand::Desire { task, state } => node::debug_desire(&c, &task, &state).await,
                DebugCommand::Tasks => node::debug_tasks(&c).await,
                DebugCommand::Move { task, node: target } => node::debug_move(&c, &task, &target).await,
                DebugCommand::Logs {
                    task,
                    follow,
                    tail,
                    timestamps,
                } => node::debug_logs(&c, &task, follow, tail, timestamps).await,
            }
        }
        Command::Service(cmd) => service::run(&client()?, cmd).await,
        Command::Stack(cmd) => stack::run(&client()?, cmd).await,
        Command::Source(cmd) => source::run(&client()?, cmd).await,
        Command::Node(cmd) => {
            let c = client()?;
            match cmd {
                NodeCommand::Ls { quiet } => node::node_ls(&c, quiet).await,
                NodeCommand::Inspect { nodes, pretty } => node::node_inspect(&c, &nodes, pretty).await,
                NodeCommand::Promote { nodes } => node::node_promote_demote(&c, &nodes, true).await,
                NodeCommand::Demote { nodes } => node::node_promote_demote(&c, &nodes, false).await,
                NodeCommand::Rm { nodes, force } => node::node_rm(&c, &nodes, force).await,
                NodeCommand::Update {
                    availability,
                    label_add,
                    label_rm,
                    node: id,
                } => {
                    let update = swarm_reconciler::wire::NodeUpdate {
                        availability,
                        label_add,
                        label_rm,
                    };
                    node::node_update(&c, &id, update).await
                }
            }
        }
        Command::Validate { stack, quiet } => stackfile::validate(&stack, quiet),
        Command::Config { action: Some(cmd), .. } => config::run(&client()?, cmd).await,
        Command::Config {
            action: None,
            stack,
            normalized,
        } => stackfile::config(&stack, normalized),
        Command::Schema => stackfile::schema(),
        Command::Plan {
            stack,
            base,
            base_git,
            format,
            detailed_exitcode,
            no_color,
            out,
        } => {
            let opts = stackfile::PlanArgs {
                base,
                base_git,
                format,
                detailed_exitcode,
                no_color,
                out,
            };
            if opts.base.is_empty() && opts.base_git.is_none() {
                apply::plan(&client()?, &stack, &opts).await
            } else {
                stackfile::plan(&stack, &opts)
            }
        }
        Command::Apply {
            stack,
            plan,
            yes,
            prune,
            detach,
            no_color,
            quiet,
            watch,
        } => {
            let args = apply::ApplyArgs {
                stack,
                plan_file: plan,
                yes,
                prune,
                detach,
                no_color,
                quiet,
            };
            if watch {
                watch::watch(&client()?, &args).await
            } else {
                apply::apply(&client()?, &args).await
            }
        }
        Command::Up {
            stack,
            data_dir,
            no_docker,
            docker_socket,
            listen_addr,
        } => {
            apply::up(apply::UpArgs {
                stack,
                data_dir,
                no_docker,
                docker_socket,
                listen_addr,
            })
            .await
        }
    }
}
