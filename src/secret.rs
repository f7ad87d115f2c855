//! `swarm secret create|ls|inspect|rm` (as `docker secret`), and what `swarm config` shares with it; `swarm unlock`
//! and `swarm unlock-key`. A secret's content goes to the manager once, at creation, and is never shown again.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::io::Read as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use swarm_reconciler::cluster::now_millis;
use swarm_reconciler::secrets::routes::AutolockAnswer;
use swarm_reconciler::secrets::routes::AutolockRequest;
use swarm_reconciler::secrets::routes::CreateRequest;
use swarm_reconciler::secrets::routes::ObjectInfo;
use swarm_reconciler::secrets::routes::UnlockKeyAnswer;
use swarm_reconciler::wire::Empty;
use swarm_reconciler::wire::Message;
use swarm_specs::spec::base64_bytes;

use crate::client::Client;
use crate::node::url_segment;
use crate::service::ago;
use crate::service::table;

/// Docker's limit on a secret's or config's size.
const MAX_SIZE: usize = 500 * 1024;

#[derive(clap::Subcommand)]
pub enum SecretCommand {
    /// Create a secret from a file, or from standard input with `-`.
    Create {
        /// Secret labels.
        #[arg(short, long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        name: String,
        /// The file holding the content, or `-` for standard input.
        file: String,
    },
    /// List secrets.
    #[command(alias = "list")]
    Ls {
        /// Only display IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show secrets in detail (never their content).
    Inspect {
        #[arg(required = true)]
        secrets: Vec<String>,
        /// Print in a human friendly format.
        #[arg(long)]
        pretty: bool,
    },
    /// Remove secrets (refused while a service uses one).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        secrets: Vec<String>,
    },
}

/// Which of the two kinds a command is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Secret,
    Config,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Kind::Secret => "/v1/secrets",
            Kind::Config => "/v1/configs",
        }
    }
}

pub async fn run(client: &Client, cmd: SecretCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretCommand::Create { labels, name, file } => create(client, Kind::Secret, &name, &file, &labels).await,
        SecretCommand::Ls { quiet } => ls(client, Kind::Secret, quiet).await,
        SecretCommand::Inspect { secrets, pretty } => inspect(client, Kind::Secret, &secrets, pretty).await,
        SecretCommand::Rm { secrets } => rm(client, Kind::Secret, &secrets).await,
    }
}

/// `KEY=VALUE` (or `KEY`, an empty value) labels.
pub fn parse_labels(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for label in labels {
        let (key, value) = label.split_once('=').unwrap_or((label.as_str(), ""));
        if key.is_empty() {
            anyhow::bail!("invalid label {label:?}: expected KEY=VALUE");
        }
        out.insert(key.to_string(), value.to_string());
    }
    Ok(out)
}

/// The content of `file`, or of standard input for `-`; at most 500 KiB, at least one byte.
fn read_content(kind: Kind, file: &str) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    if file == "-" {
        std::io::stdin()
            .take(MAX_SIZE as u64 + 1)
            .read_to_end(&mut data)
            .context("cannot read standard input")?;
    } else {
        let path = Path::new(file);
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_SIZE as u64 + 1).read_to_end(&mut data))
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    if data.is_empty() {
        anyhow::bail!(
            "the {} is empty: give a file with its content, or `-` to read standard input",
            kind.name()
        );
    }
    if data.len() > MAX_SIZE {
        anyhow::bail!("{file} is larger than 500 KiB, the limit for a {}", kind.name());
    }
    Ok(data)
}

pub async fn create(
    client: &Client,
    kind: Kind,
    name: &str,
    file: &str,
    labels: &[String],
) -> anyhow::Result<ExitCode> {
    let data = read_content(kind, file)?;
    let request = CreateRequest {
        name: name.to_string(),
        labels: parse_labels(labels)?,
        data: base64_bytes::encode(&data),
    };
    let info: ObjectInfo = client.post(kind.path(), &request).await?;
    println!("{}", info.id);
    Ok(ExitCode::SUCCESS)
}

pub async fn ls(client: &Client, kind: Kind, quiet: bool) -> anyhow::Result<ExitCode> {
    let list: Vec<ObjectInfo> = client.get(kind.path()).await?;
    print!("{}", format_list(&list, quiet, now_millis()));
    Ok(ExitCode::SUCCESS)
}

/// `ls`: ID, NAME, CREATED, UPDATED, sorted by name.
pub fn format_list(list: &[ObjectInfo], quiet: bool, now: u64) -> String {
    let mut list: Vec<&ObjectInfo> = list.iter().collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    if quiet {
        return list.iter().map(|i| format!("{}\n", i.id)).collect();
    }
    let mut rows = vec![["ID", "NAME", "CREATED", "UPDATED"].map(String::from).to_vec()];
    let when = |t: Option<u64>| t.map(|t| ago(now, t)).unwrap_or_else(|| "-".into());
    for info in list {
        rows.push(vec![
            info.id.clone(),
            info.name.clone(),
            when(info.created_at),
            when(info.updated_at),
        ]);
    }
    table(&rows)
}

pub async fn inspect(client: &Client, kind: Kind, names: &[String], pretty: bool) -> anyhow::Result<ExitCode> {
    let mut found = Vec::new();
    let mut failed = false;
    for name in names {
        match client
            .get::<ObjectInfo>(&format!("{}/{}", kind.path(), url_segment(name)))
            .await
        {
            Ok(info) => found.push(info),
            Err(e) => {
                eprintln!("Error: {e:#}");
                failed = true;
            }
        }
    }
    if pretty {
        let texts: Vec<String> = found.iter().map(|i| format_pretty(kind, i)).collect();
        print!("{}", texts.join("\n\n"));
        if !texts.is_empty() {
            println!();
        }
    } else {
        let json: Vec<serde_json::Value> = found.iter().map(|i| docker_json(kind, i)).collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// As `docker secret|config inspect` shows it; a secret's spec has no data, a config's has it base64.
pub fn docker_json(kind: Kind, info: &ObjectInfo) -> serde_json::Value {
    let mut spec = serde_json::json!({ "Name": info.name, "Labels": info.labels });
    if kind == Kind::Config {
        spec["Data"] = serde_json::json!(info.data.clone().unwrap_or_default());
    }
    let mut v = serde_json::json!({
        "ID": info.id,
        "Version": { "Index": info.version },
        "Spec": spec,
    });
    if let Some(stack) = &info.stack {
        v["Stack"] = serde_json::json!(stack);
    }
    if let Some(t) = info.created_at {
        v["CreatedAt"] = serde_json::json!(rfc3339(t));
    }
    if let Some(t) = info.updated_at {
        v["UpdatedAt"] = serde_json::json!(rfc3339(t));
    }
    v
}

/// `--pretty`: a config's content as text (lossy for binary content); never a secret's.
pub fn format_pretty(kind: Kind, info: &ObjectInfo) -> String {
    let mut lines = vec![
        format!("ID:              {}", info.id),
        format!("Name:            {}", info.name),
    ];
    if !info.labels.is_empty() {
        lines.push("Labels:".into());
        for (k, v) in &info.labels {
            lines.push(format!(" - {k}={v}"));
        }
    }
    if let Some(stack) = &info.stack {
        lines.push(format!("Stack:           {stack}"));
    }
    if kind == Kind::Config {
        // A secret's digest is not shown: it would let anyone test guesses of a weak secret.
        lines.push(format!("Digest:          sha256:{}", info.digest));
    }
    if let Some(t) = info.created_at {
        lines.push(format!("Created at:      {}", rfc3339(t)));
    }
    if let Some(t) = info.updated_at {
        lines.push(format!("Updated at:      {}", rfc3339(t)));
    }
    if kind == Kind::Config {
        let data = info.data.as_deref().and_then(base64_bytes::decode).unwrap_or_default();
        lines.push("Data:".into());
        lines.push(String::from_utf8_lossy(&data).trim_end_matches('\n').to_string());
    }
    lines.join("\n")
}

pub async fn rm(client: &Client, kind: Kind, names: &[String]) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for name in names {
        match client
            .delete::<Empty>(&format!("{}/{}", kind.path(), url_segment(name)))
            .await
        {
            Ok(_) => println!("{name}"),
            Err(e) => {
                eprintln!("Error: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Unix milliseconds as RFC 3339 in UTC.
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (year, month, day) = swarm_specs::units::civil_from_days(days);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        ms % 1000
    )
}

/// What Docker prints with an unlock key.
pub fn unlock_key_text(key: &str) -> String {
    format!(
        "To unlock a swarm manager after it restarts, run the `swarm unlock`\ncommand and provide the following \
         key:\n\n    {key}\n\nPlease remember to store this key in a password manager, since without it you\nwill \
         not be able to restart the manager.\n"
    )
}

/// `swarm update`: cluster settings, and autolock (through its own route: it needs the secrets key).
pub async fn update(
    client: &Client,
    update: swarm_reconciler::wire::SettingsUpdate,
    autolock: Option<bool>,
) -> anyhow::Result<ExitCode> {
    let settings = update.heartbeat_period_ms.is_some()
        || update.heartbeat_grace.is_some()
        || update.prune_down_after_ms.is_some()
        || update.node_cert_validity_ms.is_some()
        || update.task_history_limit.is_some()
        || update.secret_history_limit.is_some();
    if settings || autolock.is_none() {
        let _: swarm_reconciler::cluster::Settings = client.post("/v1/cluster/update", &update).await?;
    }
    let mut key = None;
    if let Some(enabled) = autolock {
        let answer: AutolockAnswer = client.post("/v1/swarm/autolock", &AutolockRequest { enabled }).await?;
        key = answer.unlock_key;
    }
    println!("Swarm updated.");
    if let Some(key) = key {
        print!("{}", unlock_key_text(&key));
    }
    Ok(ExitCode::SUCCESS)
}

/// `swarm unlock`: the key from standard input (a prompt on a terminal).
pub async fn unlock(client: &Client) -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        print!("Please enter unlock key: ");
        std::io::stdout().flush()?;
    }
    let mut line = String::new();
    stdin.read_line(&mut line).context("cannot read the unlock key")?;
    let body = serde_json::json!({ "key": line.trim() });
    let answer: Message = client.post("/v1/unlock", &body).await?;
    if stdin.is_terminal() {
        println!("{}", answer.message);
    }
    Ok(ExitCode::SUCCESS)
}

/// `swarm unlock-key [--rotate] [-q]`.
pub async fn unlock_key(client: &Client, rotate: bool, quiet: bool) -> anyhow::Result<ExitCode> {
    let path = if rotate {
        "/v1/swarm/unlock-key?rotate=true"
    } else {
        "/v1/swarm/unlock-key"
    };
    let answer: UnlockKeyAnswer = client.get(path).await?;
    let Some(key) = answer.unlock_key else {
        anyhow::bail!("no unlock key is set: autolock is off (`swarm update --autolock=true` enables it)");
    };
    if quiet {
        println!("{key}");
        return Ok(ExitCode::SUCCESS);
    }
    if rotate {
        println!("Successfully rotated manager unlock key.\n");
    }
    print!("{}", unlock_key_text(&key));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(data: Option<&str>) -> ObjectInfo {
        ObjectInfo {
            id: "abc123".into(),
            name: "web_conf-1".into(),
            labels: BTreeMap::from([("k".into(), "v".into())]),
            digest: "ff".into(),
            version: 12,
            created_at: Some(1_714_564_800_250),
            updated_at: Some(1_714_564_800_250),
            stack: Some("web".into()),
            data: data.map(String::from),
        }
    }

    #[test]
    fn labels_parse_as_key_value() {
        let labels = parse_labels(&["a=1".into(), "b".into(), "c=x=y".into()]).unwrap();
        assert_eq!(labels["a"], "1");
        assert_eq!(labels["b"], "");
        assert_eq!(labels["c"], "x=y");
        assert!(parse_labels(&["=v".into()]).is_err());
    }

    #[test]
    fn inspect_shows_a_config_s_data_and_never_a_secret_s() {
        let config = docker_json(Kind::Config, &info(Some("aGVsbG8=")));
        assert_eq!(config["Spec"]["Data"], "aGVsbG8=");
        assert_eq!(config["Version"]["Index"], 12);
        assert_eq!(config["CreatedAt"], "2024-05-01T12:00:00.250Z");
        let secret = docker_json(Kind::Secret, &info(None));
        assert!(secret["Spec"].get("Data").is_none());
        let pretty = format_pretty(Kind::Config, &info(Some("aGVsbG8=")));
        assert!(pretty.ends_with("Data:\nhello"), "{pretty}");
        assert!(!format_pretty(Kind::Secret, &info(None)).contains("Data"));
    }

    #[test]
    fn ls_is_a_table_sorted_by_name() {
        let mut a = info(None);
        a.name = "b".into();
        let mut b = info(None);
        b.name = "a".into();
        b.created_at = None;
        let text = format_list(&[a, b], false, 1_714_564_837_250);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID") && lines[0].contains("NAME"));
        assert!(lines[1].contains(" a ") && lines[1].contains('-'));
        assert!(lines[2].contains("37 seconds ago"), "{text}");
        assert_eq!(format_list(&[info(None)], true, 0), "abc123\n");
    }
}
