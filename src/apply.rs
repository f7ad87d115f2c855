//! `swarm plan` against a live cluster, `swarm apply` and `swarm up`.

use std::io::IsTerminal as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use swarm_reconciler::plan;
use swarm_reconciler::plan::Plan;
use swarm_reconciler::routes::ServiceInfo;
use swarm_reconciler::stacks::ApplyRequest;
use swarm_reconciler::stacks::ApplyResponse;
use swarm_reconciler::stacks::LivePlan;
use swarm_reconciler::stacks::PlanRequest;
use swarm_specs::StackSpec;

use crate::client::Client;
use crate::node::url_segment;
use crate::stackfile;
use crate::stackfile::PlanArgs;
use crate::Format;
use crate::StackArgs;

/// The stack file's source as the history records it: the files and a digest of their bytes.
fn source_of(args: &StackArgs) -> String {
    let mut bytes = Vec::new();
    for f in &args.files {
        bytes.extend(std::fs::read(f).unwrap_or_default());
    }
    let digest = swarm_specs::normalize::digest(&bytes);
    let files: Vec<String> = args.files.iter().map(|f| f.display().to_string()).collect();
    format!("{} sha256:{}", files.join(","), &digest[..12])
}

async fn live_plan(client: &Client, desired: &StackSpec) -> anyhow::Result<LivePlan> {
    client
        .post(
            &format!("/v1/stacks/{}/plan", url_segment(&desired.name)),
            &PlanRequest { spec: desired.clone() },
        )
        .await
        .context("cannot plan against the cluster (to plan without one, pass --base FILE or --base-git REV)")
}

/// The live plan as a person reads it: the changes with their placement, the drift, what is not honoured yet.
fn render_live(live: &LivePlan, color: bool) -> String {
    let mut out = plan::render(&live.plan, color);
    if let Some(revision) = live.plan.base_revision.filter(|r| *r > 0) {
        out = out.replacen(
            "No changes. The stack matches the desired state.",
            &format!(
                "No changes. Stack {} is up to date (revision {revision}).",
                live.plan.stack
            ),
            1,
        );
    }
    if !live.drift.is_empty() {
        out.push_str(&format!(
            "\nDrift: changed outside the stack since revision {} (applying the file reverts it):\n",
            live.plan.base_revision.unwrap_or(0)
        ));
        for change in &live.drift {
            out.push_str(&format!("  ~ {}\n", change.address));
            for field in &change.fields {
                out.push_str(&format!(
                    "      {}: {} (stack) -> {} (cluster)\n",
                    field.path, field.after, field.before
                ));
            }
        }
    }
    if live
        .plan
        .changes
        .iter()
        .any(|c| c.action == plan::Action::Remove && !matches!(c.kind, plan::Kind::Secret | plan::Kind::Config))
    {
        out.push_str("\nRemovals are applied only with `swarm apply --prune`; without it those objects stay.\n");
    }
    if !live.notices.is_empty() {
        out.push_str("\nNot yet honoured by this version:\n");
        for notice in &live.notices {
            out.push_str(&format!("  - {notice}\n"));
        }
    }
    out
}

/// `swarm plan` against the cluster the client reaches.
pub async fn plan(client: &Client, args: &StackArgs, opts: &PlanArgs) -> anyhow::Result<ExitCode> {
    let desired = stackfile::load_stack(args)?;
    let mut live = live_plan(client, &desired).await?;
    live.plan.desired = Some(desired);
    if let Some(out) = &opts.out {
        let json = serde_json::to_string_pretty(&live.plan)?;
        std::fs::write(out, format!("{json}\n")).with_context(|| format!("cannot write {}", out.display()))?;
    }
    match opts.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&live)?),
        Format::Human => {
            let color = !opts.no_color && std::io::stdout().is_terminal();
            print!("{}", render_live(&live, color));
        }
    }
    Ok(if opts.detailed_exitcode && live.plan.has_changes() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

pub struct ApplyArgs {
    pub stack: StackArgs,
    /// A plan saved by `swarm plan --out`, applied instead of the files.
    pub plan_file: Option<PathBuf>,
    pub yes: bool,
    pub prune: bool,
    pub detach: bool,
    pub no_color: bool,
    pub quiet: bool,
}

/// `swarm apply`: plan, confirm, apply in one entry, wait until converged.
pub async fn apply(client: &Client, args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    let Some(applied) = submit(client, args).await? else {
        return Ok(ExitCode::from(1));
    };
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    converge(client, &applied, args.quiet).await
}

/// What one apply wrote: the stack, and the services with the task version each converges to.
pub struct Applied {
    pub stack: String,
    pub services: Vec<(String, u64)>,
}

/// The first half of `swarm apply`: prints the plan, asks (unless `--yes`), applies it in one entry and says what
/// changed. `None` when the person declined.
pub async fn submit(client: &Client, args: &ApplyArgs) -> anyhow::Result<Option<Applied>> {
    let color = !args.no_color && std::io::stdout().is_terminal();
    let (desired, expected, source, secrets) = match &args.plan_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let saved = Plan::from_json(&text).with_context(|| format!("cannot use {}", path.display()))?;
            let desired = saved.desired.clone().with_context(|| {
                format!(
                    "{} has no desired stack: save the plan from a live cluster with `swarm plan -f FILE --out {}`",
                    path.display(),
                    path.display()
                )
            })?;
            if !args.quiet {
                print!("{}", plan::render(&saved, color));
            }
            // A saved plan holds no secret content: a new secret in it is refused, saying so.
            let none = std::collections::BTreeSet::new();
            (desired, saved.base_revision, format!("plan {}", path.display()), none)
        }
        None => {
            let desired = stackfile::load_stack(&args.stack)?;
            let mut live = live_plan(client, &desired).await?;
            let kept = if args.prune { 0 } else { keep_unpruned(&mut live.plan) };
            if !args.quiet {
                if kept > 0 {
                    println!(
                        "{kept} object{} of the stack not in the file {} kept (--prune removes {}).\n",
                        if kept == 1 { "" } else { "s" },
                        if kept == 1 { "is" } else { "are" },
                        if kept == 1 { "it" } else { "them" },
                    );
                }
                print!("{}", render_live(&live, color));
            }
            let base = live.plan.base_revision;
            if live.plan.has_changes() && !args.yes && !confirm(&desired.name)? {
                println!("Apply cancelled.");
                return Ok(None);
            }
            let secrets = new_secrets(&live.plan);
            (desired, base, source_of(&args.stack), secrets)
        }
    };
    if args.plan_file.is_some() && !args.yes && !confirm(&desired.name)? {
        println!("Apply cancelled.");
        return Ok(None);
    }
    let name = desired.name.clone();
    let request = ApplyRequest {
        // The content of new and rotated secrets only (a secret's spec never carries it).
        secret_data: swarm_reconciler::secrets::SecretPayloads::of(&desired, &secrets),
        spec: desired,
        expected_revision: expected,
        prune: args.prune,
        source,
    };
    let response: ApplyResponse = client
        .post(&format!("/v1/stacks/{}/apply", url_segment(&name)), &request)
        .await?;
    if response.changed {
        let s = &response.plan.summary;
        println!(
            "Applied stack {name}: revision {} ({} created, {} updated, {} rotated, {} removed).",
            response.revision, s.create, s.update, s.rotate, s.remove
        );
    } else {
        println!("Stack {name} is unchanged (revision {}).", response.revision);
    }
    Ok(Some(Applied {
        stack: name,
        services: response.services,
    }))
}

/// The second half of `swarm apply`: waits until every service of the stack converged (exit 1 when one did not).
pub async fn converge(client: &Client, applied: &Applied, quiet: bool) -> anyhow::Result<ExitCode> {
    if crate::progress::wait_converged(client, &applied.services, quiet).await? {
        Ok(ExitCode::SUCCESS)
    } else {
        let name = &applied.stack;
        eprintln!("stack {name} did not converge (see the tasks above; `swarm stack ps {name}` shows them all)");
        Ok(ExitCode::from(1))
    }
}

/// Without `--prune`, objects the file no longer has stay (as `docker stack deploy` does): their removals leave the
/// plan. Returns how many. Rotated secrets and configs still go: nothing references the old version.
fn keep_unpruned(plan: &mut Plan) -> usize {
    let before = plan.changes.len();
    plan.changes
        .retain(|c| c.action != plan::Action::Remove || matches!(c.kind, plan::Kind::Secret | plan::Kind::Config));
    let kept = before - plan.changes.len();
    plan.summary.remove -= kept;
    kept
}

/// The stored names of the secrets a plan creates or rotates: the manager needs their content.
fn new_secrets(plan: &Plan) -> std::collections::BTreeSet<String> {
    plan.changes
        .iter()
        .filter(|c| c.kind == plan::Kind::Secret && c.action != plan::Action::Remove)
        .filter_map(|c| c.after.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .collect()
}

/// Asks on a terminal; refuses without one (CI passes --yes).
fn confirm(stack: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("refusing to apply without confirmation: stdin is not a terminal; pass --yes to apply anyway");
    }
    print!("\nApply these changes to stack {stack}? Only 'yes' will be accepted: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

pub struct UpArgs {
    pub stack: StackArgs,
    pub data_dir: Option<PathBuf>,
    pub no_docker: bool,
    pub docker_socket: PathBuf,
    /// Address of the embedded manager's API (default: a free port on 127.0.0.1).
    pub listen_addr: Option<String>,
}

/// `swarm up`: a single-node cluster in this process, the stack applied, a status table, until Ctrl-C.
pub async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let desired = stackfile::load_stack(&args.stack)?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| crate::client::default_data_dir().join("up").join(&desired.name));
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let socket = data_dir.join("swarm.sock");
    println!("Starting a single-node swarm (data in {})", data_dir.display());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon_args = crate::node::DaemonArgs {
        data_dir: data_dir.clone(),
        socket: socket.clone(),
        hostname: None,
        election_timeout_ms: None,
        raft_heartbeat_ms: None,
        snapshot_interval: None,
        no_docker: args.no_docker,
        docker_socket: args.docker_socket.clone(),
        stop_tasks_on_exit: true,
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let daemon = tokio::spawn(crate::node::serve_daemon(daemon_args, ready_tx, async {
        let _ = stopped.await;
    }));
    if ready_rx.await.is_err() {
        return match daemon.await {
            Ok(Err(e)) => Err(e),
            _ => Err(anyhow::anyhow!("the embedded daemon did not start")),
        };
    }
    let client = Client::Unix(socket.clone());
    let info: swarm_reconciler::wire::Info = client.get("/v1/info").await?;
    if info.local_node_state != "active" {
        let listen = match &args.listen_addr {
            Some(a) => a.clone(),
            None => free_local_addr()?,
        };
        let request = swarm_reconciler::wire::InitRequest {
            advertise_addr: Some(listen.clone()),
            listen_addr: Some(listen),
            force_new_cluster: false,
            autolock: false,
        };
        let _: swarm_reconciler::wire::InitResponse = client.post("/v1/init", &request).await?;
    }
    let apply_args = ApplyArgs {
        stack: StackArgs {
            stack: Some(desired.name.clone()),
            ..args.stack.clone()
        },
        plan_file: None,
        yes: true,
        prune: true,
        detach: false,
        no_color: false,
        quiet: false,
    };
    let result = wait_for_nodes(&client).await;
    let code = match result {
        Ok(()) => apply(&client, &apply_args).await,
        Err(e) => Err(e),
    };
    let code = match code {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    };
    print_status(&client, &desired.name).await;
    println!(
        "\nStack {} runs. Other terminals reach this cluster with SWARM_HOST=unix://{} (try `swarm service ls`).\nPress Ctrl-C to stop: the stack is removed and the cluster stops (its data stays in {}).",
        desired.name,
        socket.display(),
        data_dir.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("\nStopping: removing stack {}...", desired.name);
    let _: Result<Vec<String>, _> = client
        .delete(&format!("/v1/stacks/{}", url_segment(&desired.name)))
        .await;
    wait_tasks_gone(&client, &desired.name).await;
    let _ = stop.send(());
    let _ = daemon.await;
    println!("Stopped.");
    Ok(code)
}

/// This node is Ready (its agent reported) before the stack is placed, so the first plan shows a real placement.
async fn wait_for_nodes(client: &Client) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let list: swarm_reconciler::wire::NodeList = client.get("/v1/nodes").await?;
        if list
            .nodes
            .iter()
            .any(|n| n.status == swarm_reconciler::cluster::NodeStatus::Ready)
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("this node did not become Ready within 30 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn wait_tasks_gone(client: &Client, stack: &str) {
    let prefix = format!("{stack}_");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let Ok(tasks) = client.get::<Vec<swarm_specs::task::Task>>("/v1/tasks").await else {
            return;
        };
        if !tasks.iter().any(|t| t.service.starts_with(&prefix)) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn print_status(client: &Client, stack: &str) {
    let Ok(services) = client.get::<Vec<ServiceInfo>>("/v1/services").await else {
        return;
    };
    let mine: Vec<&ServiceInfo> = services.iter().filter(|i| i.service.stack() == Some(stack)).collect();
    println!();
    print!("{}", crate::service::format_services(&mine, false));
}

/// A free port on loopback for the embedded manager (asked of the kernel, then released).
fn free_local_addr() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.to_string())
}

/// The CI examples (`examples/ci/`) stay valid YAML, and every `swarm` command in them parses with this CLI.
#[cfg(test)]
mod ci_examples {
    use clap::Parser as _;

    use crate::Cli;
    use crate::Command;

    fn example(name: &str) -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/ci")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
    }

    /// The shell scripts of a CI file: GitHub's `run` steps, GitLab's `script`, `before_script` and `after_script`.
    fn scripts(value: &serde_json::Value, out: &mut Vec<String>) {
        fn all_strings(value: &serde_json::Value, out: &mut Vec<String>) {
            match value {
                serde_json::Value::String(s) => out.push(s.clone()),
                serde_json::Value::Array(items) => items.iter().for_each(|v| all_strings(v, out)),
                _ => {}
            }
        }
        match value {
            serde_json::Value::Array(items) => items.iter().for_each(|v| scripts(v, out)),
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    if matches!(key.as_str(), "run" | "script" | "before_script" | "after_script") {
                        all_strings(v, out);
                    } else {
                        scripts(v, out);
                    }
                }
            }
            _ => {}
        }
    }

    #[derive(Debug, PartialEq)]
    enum Token {
        Word(String),
        /// `;`, `&&`, `||`, `|`, `&`, parentheses, a new line: the next word starts a command.
        Separator,
        /// `>`, `>>`, `<`, `2>&1`...: ends the command's arguments.
        Redirect,
    }

    /// Splits a shell script as sh does, enough for CI scripts: quotes removed, `$VARIABLES` left as written.
    fn tokens(script: &str) -> Vec<Token> {
        let script = script.replace("\\\n", "");
        let mut out = Vec::new();
        let mut word: Option<String> = None;
        let mut chars = script.chars().peekable();
        let flush = |word: &mut Option<String>, out: &mut Vec<Token>| {
            if let Some(w) = word.take() {
                out.push(Token::Word(w));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '\'' => {
                    let w = word.get_or_insert_with(String::new);
                    for c in chars.by_ref() {
                        if c == '\'' {
                            break;
                        }
                        w.push(c);
                    }
                }
                '"' => {
                    let w = word.get_or_insert_with(String::new);
                    while let Some(c) = chars.next() {
                        match c {
                            '"' => break,
                            '\\' if matches!(chars.peek(), Some('"' | '\\' | '$' | '`')) => {
                                w.extend(chars.next());
                            }
                            c => w.push(c),
                        }
                    }
                }
                '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
                '#' if word.is_none() => {
                    while chars.peek().is_some_and(|c| *c != '\n') {
                        chars.next();
                    }
                }
                '>' | '<' => {
                    // `2>` and `2>&1`: the descriptor belongs to the redirection.
                    if word.as_deref().is_some_and(|w| w.chars().all(|c| c.is_ascii_digit())) {
                        word = None;
                    }
                    flush(&mut word, &mut out);
                    while chars.peek().is_some_and(|c| matches!(c, '>' | '&' | '0'..='9')) {
                        chars.next();
                    }
                    out.push(Token::Redirect);
                }
                ';' | '&' | '|' | '(' | ')' | '\n' => {
                    flush(&mut word, &mut out);
                    out.push(Token::Separator);
                }
                c if c.is_whitespace() => flush(&mut word, &mut out),
                c => word.get_or_insert_with(String::new).push(c),
            }
        }
        flush(&mut word, &mut out);
        out
    }

    /// The `swarm ...` commands of a script, each as its words.
    fn swarm_commands(script: &str) -> Vec<Vec<String>> {
        let mut commands = Vec::new();
        let mut at_start = true;
        let mut current: Option<Vec<String>> = None;
        for token in tokens(script) {
            match token {
                Token::Separator | Token::Redirect => {
                    commands.extend(current.take());
                    at_start = token == Token::Separator;
                }
                Token::Word(w) => match &mut current {
                    Some(words) => words.push(w),
                    None if at_start && w == "swarm" => current = Some(vec![w]),
                    // Keywords and variable assignments may come before the command.
                    None if at_start
                        && (matches!(w.as_str(), "if" | "then" | "else" | "do" | "!" | "time") || w.contains('=')) => {}
                    None => at_start = false,
                },
            }
        }
        commands.extend(current);
        commands
    }

    /// Checks one example: valid YAML, every swarm command parses, and it has a plan with --detailed-exitcode and
    /// an apply with --yes.
    fn check(name: &str) -> serde_json::Value {
        let doc = example(name);
        let mut shell = Vec::new();
        scripts(&doc, &mut shell);
        let commands: Vec<Vec<String>> = shell.iter().flat_map(|s| swarm_commands(s)).collect();
        let (mut plans, mut applies) = (0, 0);
        for words in &commands {
            let cli = Cli::try_parse_from(words)
                .unwrap_or_else(|e| panic!("{name}: `{}` does not parse:\n{e}", words.join(" ")));
            match cli.command {
                Command::Plan { detailed_exitcode, .. } => {
                    assert!(
                        detailed_exitcode,
                        "{name}: `{}` lacks --detailed-exitcode",
                        words.join(" ")
                    );
                    plans += 1;
                }
                Command::Apply { yes, watch, .. } => {
                    assert!(yes && !watch, "{name}: `{}` must apply with --yes", words.join(" "));
                    applies += 1;
                }
                _ => {}
            }
        }
        assert!(plans >= 1 && applies >= 1, "{name}: swarm commands found: {commands:?}");
        doc
    }

    #[test]
    fn the_github_actions_example_is_valid_and_its_swarm_commands_parse() {
        let doc = check("github-actions.yml");
        assert!(
            doc["on"]["pull_request"].is_object() && doc["on"]["push"].is_object(),
            "{doc}"
        );
        assert!(doc["jobs"]["plan"]["steps"].is_array() && doc["jobs"]["apply"]["steps"].is_array());
    }

    #[test]
    fn the_gitlab_ci_example_is_valid_and_its_swarm_commands_parse() {
        let doc = check("gitlab-ci.yml");
        assert!(
            doc["plan"]["script"].is_array() && doc["apply"]["script"].is_array(),
            "{doc}"
        );
    }

    #[test]
    fn shell_commands_are_split_as_sh_does() {
        assert_eq!(
            swarm_commands(
                "code=0; swarm plan -f \"$STACK_FILE\" --stack 'my stack' > plan.txt || code=$?\n\
                 cargo install --git x swarm\nif swarm apply \\\n  --yes; then echo swarm ok; fi # swarm x"
            ),
            vec![
                vec!["swarm", "plan", "-f", "$STACK_FILE", "--stack", "my stack"],
                vec!["swarm", "apply", "--yes"],
            ]
        );
        assert_eq!(
            swarm_commands("swarm plan 2>&1 | tee plan.txt"),
            vec![vec!["swarm", "plan"]]
        );
    }
}
