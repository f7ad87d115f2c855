//! From the file's shape (`ComposeFile`) to the canonical `StackSpec`: defaults, names, units, references, and the
//! semantic checks that need the whole stack (undefined references, port clashes, replicas on a global service).

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;

use indexmap::IndexMap;

use crate::compose;
use crate::compose::ComposeFile;
use crate::compose::External;
use crate::compose::ListOrMap;
use crate::diag::Pos;
use crate::diag::Severity;
use crate::shape::Finding;
use crate::spec::*;
use crate::units;
use crate::units::did_you_mean;

/// What normalization reads besides the file: the stack name, variables, and the files a stack refers to.
pub struct Context<'a> {
    pub stack: &'a str,
    /// Directory that relative paths (env_file, secret files, bind mounts) are resolved against.
    pub base_dir: &'a Path,
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
    pub read_file: &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    /// Keys for secret and config files encrypted with age.
    pub age_identities: &'a [crate::age::Identity],
    /// Where each field path was written (from `shape`).
    pub spans: &'a crate::diag::Spans,
}

struct Cx<'a> {
    ctx: &'a Context<'a>,
    findings: Vec<Finding>,
}

impl Cx<'_> {
    fn pos(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.ctx.spans.get(p) {
                return pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.ctx.spans.get("").unwrap_or_default(),
            }
        }
    }

    fn error(&mut self, path: &str, message: impl Into<String>, hint: Option<String>) {
        let pos = self.pos(path);
        self.findings.push(Finding {
            severity: Severity::Error,
            pos,
            path: path.into(),
            message: message.into(),
            hint,
        });
    }

    fn warn(&mut self, path: &str, message: impl Into<String>) {
        let pos = self.pos(path);
        self.findings.push(Finding {
            severity: Severity::Warning,
            pos,
            path: path.into(),
            message: message.into(),
            hint: None,
        });
    }

    fn duration_ms(&mut self, path: &str, value: &Option<String>) -> Option<u64> {
        let text = value.as_ref()?;
        match units::parse_duration(text) {
            Ok(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Err(e) => {
                self.error(path, e.to_string(), None);
                None
            }
        }
    }

    fn bytes(&mut self, path: &str, value: &Option<String>) -> Option<u64> {
        let text = value.as_ref()?;
        match units::parse_bytes(text) {
            Ok(b) => Some(b),
            Err(e) => {
                self.error(path, e.to_string(), None);
                None
            }
        }
    }
}

/// Content digest used in stored names and plans: SHA-256, hex.
pub fn digest(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Prefix of the digest put in stored names: long enough to never collide in practice, short enough for Docker's
/// 64-character name limit.
const NAME_DIGEST_LEN: usize = 10;

/// Splits a command line as a POSIX shell would (quotes and backslashes), as Compose does for `command: "..."`.
pub fn split_shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => word.push(ch),
                        None => return Err(format!("unterminated single quote in {line:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\' | '$' | '`')) => word.push(ch),
                            Some('\n') => {}
                            Some(ch) => {
                                word.push('\\');
                                word.push(ch);
                            }
                            None => return Err(format!("unterminated double quote in {line:?}")),
                        },
                        Some(ch) => word.push(ch),
                        None => return Err(format!("unterminated double quote in {line:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(ch) => word.push(ch),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// One line of a service env file: a variable (with its value, or none to take it from the environment), or why
/// the line is invalid.
type EnvFileEntry = Result<(String, Option<String>), String>;

/// A service's `env_file`, read as `docker stack deploy` reads it (not like `.env`): `KEY=VALUE` taken literally
/// (no quotes, no inline comments), a bare `KEY` takes its value from the environment, `#` lines are comments.
fn parse_service_env_file(text: &str) -> Vec<(usize, EnvFileEntry)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start_matches('\u{feff}').trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (line.trim_end(), None),
        };
        let entry = if key.is_empty() || key.contains(char::is_whitespace) {
            Err(format!(
                "invalid variable name {key:?}: names cannot be empty or contain spaces"
            ))
        } else {
            Ok((key.to_string(), value))
        };
        out.push((i + 1, entry));
    }
    out
}

/// `KEY=VALUE` list or mapping to a sorted map; a list entry without `=` has no value.
fn list_or_map(value: &Option<ListOrMap>, separator: char) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    match value {
        None => {}
        Some(ListOrMap::List(items)) => {
            for item in items {
                match item.split_once(separator) {
                    Some((k, v)) => out.insert(k.to_string(), Some(v.to_string())),
                    None => out.insert(item.clone(), None),
                };
            }
        }
        Some(ListOrMap::Map(map)) => {
            for (k, v) in map {
                out.insert(k.clone(), v.as_ref().map(|s| s.0.clone()));
            }
        }
    }
    out
}

fn labels(value: &Option<ListOrMap>) -> BTreeMap<String, String> {
    list_or_map(value, '=')
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect()
}

fn is_external(external: &Option<External>) -> (bool, Option<String>) {
    match external {
        None | Some(External::Bool(false)) => (false, None),
        Some(External::Bool(true)) => (true, None),
        Some(External::Named { name }) => (true, Some(name.clone())),
    }
}

/// Turns a checked `ComposeFile` into a `StackSpec`, reporting every semantic problem it finds.
pub fn normalize(file: &ComposeFile, ctx: &Context<'_>) -> (StackSpec, Vec<Finding>) {
    let mut cx = Cx {
        ctx,
        findings: Vec::new(),
    };
    let stack = ctx.stack;
    let mut spec = StackSpec {
        name: stack.to_string(),
        ..StackSpec::default()
    };
    let namespace = || BTreeMap::from([(STACK_NAMESPACE_LABEL.to_string(), stack.to_string())]);

    // Networks, volumes, secrets, configs first: services refer to their stored names.
    let mut network_names: IndexMap<String, String> = IndexMap::new();
    for (key, net) in &file.networks {
        let path = format!("networks.{key}");
        let (external, ext_name) = is_external(&net.external);
        let name = stored_object_name(stack, key, external, ext_name, &net.name);
        if external && (net.driver.is_some() || net.ipam.is_some()) {
            cx.error(
                &path,
                "an external network cannot also set driver or ipam",
                Some("remove them, or make the network part of the stack (drop `external`)".into()),
            );
        }
        let mut ipam = Vec::new();
        for (i, pool) in net.ipam.iter().flat_map(|p| p.config.iter().flatten()).enumerate() {
            if let Some(subnet) = &pool.subnet {
                if !is_cidr(subnet) {
                    cx.error(
                        &format!("{path}.ipam.config[{i}].subnet"),
                        format!("invalid subnet {subnet:?}"),
                        Some("write it in CIDR form, e.g. 10.0.9.0/24".into()),
                    );
                }
            }
            ipam.push(IpamPool {
                subnet: pool.subnet.clone(),
                gateway: pool.gateway.clone(),
                ip_range: pool.ip_range.clone(),
            });
        }
        let mut labels = labels(&net.labels);
        if !external {
            labels.extend(namespace());
        }
        network_names.insert(key.clone(), name.clone());
        spec.networks.insert(
            name.clone(),
            NetworkSpec {
                name,
                driver: net.driver.clone().unwrap_or_else(|| "overlay".into()),
                driver_opts: net
                    .driver_opts
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect(),
                attachable: net.attachable.unwrap_or(false),
                internal: net.internal.unwrap_or(false),
                enable_ipv6: net.enable_ipv6.unwrap_or(false),
                ipam,
                labels,
                external,
            },
        );
    }

    let mut volume_names: IndexMap<String, String> = IndexMap::new();
    for (key, vol) in &file.volumes {
        let (external, ext_name) = is_external(&vol.external);
        let name = stored_object_name(stack, key, external, ext_name, &vol.name);
        let mut labels = labels(&vol.labels);
        if !external {
            labels.extend(namespace());
        }
        volume_names.insert(key.clone(), name.clone());
        spec.volumes.insert(
            name.clone(),
            VolumeSpec {
                name,
                driver: vol.driver.clone().unwrap_or_else(|| "local".into()),
                driver_opts: vol
                    .driver_opts
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect(),
                labels,
                external,
            },
        );
    }

    let mut secret_names: IndexMap<String, String> = IndexMap::new();
    for (key, def) in &file.secrets {
        let path = format!("secrets.{key}");
        if def.content.is_some() {
            cx.error(
                &format!("{path}.content"),
                "`content` is only allowed for configs",
                Some("put the secret in a file (`file:`) or an environment variable (`environment:`)".into()),
            );
        }
        let Some((source, data, labels)) = file_object(&mut cx, &path, key, def) else {
            // Already reported; still a defined name, so references to it are not reported again.
            secret_names.insert(key.clone(), format!("{stack}_{key}"));
            continue;
        };
        {
            let name = stored_name(stack, key, def, &data, &source);
            secret_names.insert(key.clone(), name.clone());
            let digest = if source == ContentSource::External {
                String::new()
            } else {
                digest(&data)
            };
            spec.secrets.insert(
                name.clone(),
                SecretSpec {
                    name,
                    key: key.clone(),
                    labels,
                    source,
                    digest,
                    data: SecretBytes(data),
                },
            );
        }
    }
    let mut config_names: IndexMap<String, String> = IndexMap::new();
    for (key, def) in &file.configs {
        let path = format!("configs.{key}");
        let Some((source, data, labels)) = file_object(&mut cx, &path, key, def) else {
            config_names.insert(key.clone(), format!("{stack}_{key}"));
            continue;
        };
        {
            let name = stored_name(stack, key, def, &data, &source);
            config_names.insert(key.clone(), name.clone());
            let digest = if source == ContentSource::External {
                String::new()
            } else {
                digest(&data)
            };
            spec.configs.insert(
                name.clone(),
                ConfigSpec {
                    name,
                    key: key.clone(),
                    labels,
                    source,
                    digest,
                    data,
                },
            );
        }
    }

    let mut uses_default_network = false;
    let mut published: BTreeMap<(u16, Protocol), String> = BTreeMap::new();
    for (key, svc) in &file.services {
        let path = format!("services.{key}");
        if !valid_name(key) {
            cx.error(
                &path,
                format!("invalid service name {key:?}"),
                Some("use letters, digits, `_`, `.` and `-`, starting with a letter or digit".into()),
            );
        }
        let refs = Refs {
            networks: &network_names,
            volumes: &volume_names,
            secrets: &secret_names,
            configs: &config_names,
        };
        let service = service(&mut cx, stack, key, svc, &refs, &mut uses_default_network);
        for (i, port) in service.ports.iter().enumerate() {
            let Some(p) = port.published else { continue };
            if port.mode == PublishMode::Host {
                continue;
            }
            if let Some(other) = published.insert((p, port.protocol), key.clone()) {
                cx.error(
                    &format!("{path}.ports[{i}]"),
                    format!(
                        "port {p}/{} is already published by service {other:?}",
                        protocol_name(&port.protocol)
                    ),
                    Some("each published port can be used by one service; pick another published port".into()),
                );
            }
        }
        spec.services.insert(service.name.clone(), service);
    }
    if uses_default_network && !network_names.contains_key("default") {
        let name = format!("{stack}_default");
        spec.networks.insert(
            name.clone(),
            NetworkSpec {
                name,
                driver: "overlay".into(),
                driver_opts: BTreeMap::new(),
                attachable: false,
                internal: false,
                enable_ipv6: false,
                ipam: Vec::new(),
                labels: namespace(),
                external: false,
            },
        );
    }
    (spec, cx.findings)
}

fn protocol_name(p: &Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn is_cidr(text: &str) -> bool {
    let Some((addr, bits)) = text.split_once('/') else {
        return false;
    };
    let Ok(bits) = bits.parse::<u8>() else { return false };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => bits <= 32,
        Ok(std::net::IpAddr::V6(_)) => bits <= 128,
        Err(_) => false,
    }
}

/// Docker's naming: `name:` (or the legacy `external: {name: ...}`) as given, else the key for external objects and
/// `<stack>_<key>` for the stack's own.
fn stored_object_name(
    stack: &str,
    key: &str,
    external: bool,
    ext_name: Option<String>,
    name: &Option<String>,
) -> String {
    match ext_name.or(name.clone()) {
        Some(n) => n,
        None if external => key.to_string(),
        None => format!("{stack}_{key}"),
    }
}

fn stored_name(stack: &str, key: &str, def: &compose::FileObject, data: &[u8], source: &ContentSource) -> String {
    let (external, ext_name) = is_external(&def.external);
    if external || *source == ContentSource::External {
        return ext_name.or(def.name.clone()).unwrap_or_else(|| key.to_string());
    }
    let base = def.name.clone().unwrap_or_else(|| format!("{stack}_{key}"));
    let d = digest(data);
    format!("{base}-{}", &d[..NAME_DIGEST_LEN])
}

/// Reads a secret's or config's content from where the stack says it is.
fn file_object(
    cx: &mut Cx<'_>,
    path: &str,
    key: &str,
    def: &compose::FileObject,
) -> Option<(ContentSource, Vec<u8>, BTreeMap<String, String>)> {
    let (external, _) = is_external(&def.external);
    let labels = labels(&def.labels);
    let given = [
        def.file.is_some(),
        def.environment.is_some(),
        def.content.is_some(),
        external,
    ];
    match given.iter().filter(|g| **g).count() {
        1 => {}
        0 => {
            cx.error(
                path,
                format!("{key:?} has no content"),
                Some("set one of `file`, `environment`, `content` (configs) or `external: true`".into()),
            );
            return None;
        }
        _ => {
            cx.error(
                path,
                format!("{key:?} sets more than one of `file`, `environment`, `content` and `external`"),
                Some("keep exactly one of them".into()),
            );
            return None;
        }
    }
    if external {
        return Some((ContentSource::External, Vec::new(), labels));
    }
    if let Some(file) = &def.file {
        let full = PathBuf::from(resolve_host_path(cx.ctx.base_dir, file, (cx.ctx.lookup)("HOME")));
        return match (cx.ctx.read_file)(&full) {
            Ok(data) => {
                let encrypted = def.x_swarm.as_ref().and_then(|x| x.encrypted).is_some() || file.ends_with(".age");
                if !encrypted {
                    return Some((ContentSource::File, data, labels));
                }
                decrypt_file(cx, path, &full, &data).map(|data| (ContentSource::File, data, labels))
            }
            Err(e) => {
                cx.error(
                    &format!("{path}.file"),
                    format!("cannot read {}: {e}", full.display()),
                    Some("the path is relative to the stack file's directory".into()),
                );
                None
            }
        };
    }
    if let Some(var) = &def.environment {
        return match (cx.ctx.lookup)(var) {
            Some(value) => Some((ContentSource::Environment, value.into_bytes(), labels)),
            None => {
                cx.error(
                    &format!("{path}.environment"),
                    format!("environment variable {var:?} is not set"),
                    Some(format!("export {var}=... before running, or put it in the .env file")),
                );
                None
            }
        };
    }
    def.content
        .as_ref()
        .map(|c| (ContentSource::Inline, c.clone().into_bytes(), labels))
}

/// Decrypts a secret or config file kept encrypted with age (`*.age`, or `x-swarm: {encrypted: age}`).
fn decrypt_file(cx: &mut Cx<'_>, path: &str, full: &Path, data: &[u8]) -> Option<Vec<u8>> {
    let field = format!("{path}.file");
    if cx.ctx.age_identities.is_empty() {
        cx.error(
            &field,
            format!("{} is encrypted with age and no age key was given", full.display()),
            Some(
                "pass `--age-key-file KEY` (or set SWARM_AGE_KEY_FILE); a git source takes `swarm source add ... \
                 --age-key-file KEY`"
                    .into(),
            ),
        );
        return None;
    }
    match crate::age::decrypt(cx.ctx.age_identities, data) {
        Ok(plain) => Some(plain),
        Err(e) => {
            let hint = match e {
                crate::age::AgeError::NotAge => {
                    "encrypt it with `age -r age1... -o FILE.age FILE`, or drop `x-swarm: {encrypted: age}` / the \
                     `.age` name for a plain file"
                }
                crate::age::AgeError::NoMatchingKey(_) => "pass the key the file was encrypted to (`age -r` recipient)",
                _ => "re-encrypt the file with `age -r age1...`",
            };
            cx.error(
                &field,
                format!("cannot decrypt {}: {e}", full.display()),
                Some(hint.into()),
            );
            None
        }
    }
}

struct Refs<'a> {
    networks: &'a IndexMap<String, String>,
    volumes: &'a IndexMap<String, String>,
    secrets: &'a IndexMap<String, String>,
    configs: &'a IndexMap<String, String>,
}

fn undefined(cx: &mut Cx<'_>, path: &str, kind: &str, name: &str, defined: &IndexMap<String, String>) {
    let names: Vec<&str> = defined.keys().map(String::as_str).collect();
    let hint = match did_you_mean(name, &names) {
        Some(s) => format!("did you mean {s:?}?"),
        None => format!("define it under the top-level `{kind}s:` key"),
    };
    cx.error(path, format!("{kind} {name:?} is not defined"), Some(hint));
}

fn command(cx: &mut Cx<'_>, path: &str, value: &Option<compose::Command>) -> Option<Vec<String>> {
    match value.as_ref()? {
        compose::Command::List(args) => Some(args.clone()),
        compose::Command::String(line) => match split_shell_words(line) {
            Ok(words) => Some(words),
            Err(e) => {
                cx.error(path, e, Some("close the quote, or write the command as a list".into()));
                None
            }
        },
    }
}

fn service(
    cx: &mut Cx<'_>,
    stack: &str,
    key: &str,
    svc: &compose::Service,
    refs: &Refs<'_>,
    uses_default_network: &mut bool,
) -> ServiceSpec {
    let path = format!("services.{key}");
    let p = |field: &str| format!("{path}.{field}");
    let ns = (STACK_NAMESPACE_LABEL.to_string(), stack.to_string());

    let ignored: Vec<&str> = compose::IGNORED_SERVICE_KEYS
        .iter()
        .copied()
        .filter(|k| ignored_field(svc, k))
        .collect();
    if !ignored.is_empty() {
        cx.warn(&path, format!("Ignoring unsupported options: {}", ignored.join(", ")));
    }

    let x = svc.x_swarm.clone().unwrap_or_default();
    let driver = match x.driver {
        Some(compose::DriverName::Process) => Driver::Process,
        _ => Driver::Docker,
    };
    let command_args = command(cx, &p("command"), &svc.command);
    let entrypoint = command(cx, &p("entrypoint"), &svc.entrypoint);
    match driver {
        Driver::Docker if svc.image.as_deref().is_none_or(str::is_empty) => cx.error(
            &path,
            "missing \"image\"",
            Some("every service needs an image (or `x-swarm: {driver: process}` and a `command`)".into()),
        ),
        Driver::Process if command_args.is_none() && entrypoint.is_none() => cx.error(
            &path,
            "a process-driver service needs a \"command\"",
            Some("set `command:` to the program and its arguments".into()),
        ),
        _ => {}
    }

    // Environment: env_file first (in order), then `environment` on top.
    let mut env: BTreeMap<String, Option<String>> = BTreeMap::new();
    let env_files = match &svc.env_file {
        None => vec![],
        Some(compose::StringOrList::String(s)) => vec![s.clone()],
        Some(compose::StringOrList::List(l)) => l.clone(),
    };
    for (i, f) in env_files.iter().enumerate() {
        let fpath = format!("{}[{i}]", p("env_file"));
        let fpath = if matches!(svc.env_file, Some(compose::StringOrList::String(_))) {
            p("env_file")
        } else {
            fpath
        };
        let full = PathBuf::from(resolve_host_path(cx.ctx.base_dir, f, (cx.ctx.lookup)("HOME")));
        match (cx.ctx.read_file)(&full) {
            Err(e) => cx.error(
                &fpath,
                format!("cannot read {}: {e}", full.display()),
                Some("the path is relative to the stack file's directory".into()),
            ),
            Ok(bytes) => {
                for (line, entry) in parse_service_env_file(&String::from_utf8_lossy(&bytes)) {
                    match entry {
                        Ok((k, Some(v))) => {
                            env.insert(k, Some(v));
                        }
                        Ok((k, None)) => {
                            if let Some(v) = (cx.ctx.lookup)(&k) {
                                env.insert(k, Some(v));
                            }
                        }
                        Err(e) => cx.error(&fpath, format!("{} line {line}: {e}", full.display()), None),
                    }
                }
            }
        }
    }
    for (k, v) in list_or_map(&svc.environment, '=') {
        let v = v.or_else(|| (cx.ctx.lookup)(&k));
        env.insert(k, v);
    }

    let mut container_labels = labels(&svc.labels);
    container_labels.insert(ns.0.clone(), ns.1.clone());

    let healthcheck = svc.healthcheck.as_ref().map(|h| {
        let hp = p("healthcheck");
        let test = if h.disable == Some(true) {
            Some(vec!["NONE".to_string()])
        } else {
            match &h.test {
                None => None,
                Some(compose::Command::String(s)) => Some(vec!["CMD-SHELL".to_string(), s.clone()]),
                Some(compose::Command::List(l)) => {
                    if !matches!(l.first().map(String::as_str), Some("CMD" | "CMD-SHELL" | "NONE")) {
                        cx.error(
                            &format!("{hp}.test"),
                            "a healthcheck test list must start with \"CMD\", \"CMD-SHELL\" or \"NONE\"",
                            Some("e.g. [\"CMD\", \"curl\", \"-f\", \"http://localhost\"]".into()),
                        );
                    }
                    Some(l.clone())
                }
            }
        };
        Healthcheck {
            test: test.unwrap_or_default(),
            interval_ms: cx.duration_ms(&format!("{hp}.interval"), &h.interval),
            timeout_ms: cx.duration_ms(&format!("{hp}.timeout"), &h.timeout),
            start_period_ms: cx.duration_ms(&format!("{hp}.start_period"), &h.start_period),
            start_interval_ms: cx.duration_ms(&format!("{hp}.start_interval"), &h.start_interval),
            retries: h.retries,
        }
    });

    let stop_signal = svc.stop_signal.as_ref().and_then(|s| match units::parse_signal(s) {
        Ok(sig) => Some(sig),
        Err(e) => {
            cx.error(&p("stop_signal"), e.to_string(), None);
            None
        }
    });

    // Ports.
    let mut ports: Vec<PortConfig> = Vec::new();
    for (i, port) in svc.ports.iter().flatten().enumerate() {
        let pp = format!("{}[{i}]", p("ports"));
        match port {
            compose::Port::Short(s) => match units::parse_port_short(s) {
                Ok(list) => ports.extend(list),
                Err(e) => cx.error(&pp, e.to_string(), None),
            },
            compose::Port::Long(l) => {
                let protocol = match l.protocol.as_deref().map(units::parse_protocol).transpose() {
                    Ok(p) => p.unwrap_or(Protocol::Tcp),
                    Err(e) => {
                        cx.error(&format!("{pp}.protocol"), e.to_string(), None);
                        Protocol::Tcp
                    }
                };
                let mode = match l.mode {
                    Some(compose::PublishModeName::Host) => PublishMode::Host,
                    _ => PublishMode::Ingress,
                };
                if l.target == 0 {
                    cx.error(
                        &format!("{pp}.target"),
                        "port 0 is not a valid target",
                        Some("use the port the task listens on (1-65535)".into()),
                    );
                }
                let published: Vec<Option<u16>> = match &l.published {
                    None => vec![None],
                    Some(text) => match published_range(text) {
                        Some(range) => range.into_iter().map(Some).collect(),
                        None => {
                            cx.error(
                                &format!("{pp}.published"),
                                format!("invalid published port {text:?}"),
                                Some("use a port (8080) or a range (8080-8081) between 1 and 65535".into()),
                            );
                            vec![None]
                        }
                    },
                };
                for published in published {
                    ports.push(PortConfig {
                        target: l.target,
                        published,
                        protocol,
                        mode,
                        host_ip: l.host_ip.clone(),
                    });
                }
            }
        }
    }
    ports.sort();
    ports.dedup();

    // Networks.
    let mut networks: Vec<NetworkAttachment> = Vec::new();
    let attach = |cx: &mut Cx<'_>,
                  np: String,
                  name: &str,
                  aliases: Vec<String>,
                  out: &mut Vec<NetworkAttachment>,
                  default: &mut bool| {
        if let Some(stored) = refs.networks.get(name) {
            out.push(NetworkAttachment {
                target: stored.clone(),
                aliases,
            });
        } else if name == "default" {
            *default = true;
            out.push(NetworkAttachment {
                target: format!("{stack}_default"),
                aliases,
            });
        } else {
            undefined(cx, &np, "network", name, refs.networks);
        }
    };
    match &svc.networks {
        None => attach(
            cx,
            p("networks"),
            "default",
            vec![],
            &mut networks,
            uses_default_network,
        ),
        Some(compose::ServiceNetworks::List(names)) => {
            for (i, n) in names.iter().enumerate() {
                attach(
                    cx,
                    format!("{}[{i}]", p("networks")),
                    n,
                    vec![],
                    &mut networks,
                    uses_default_network,
                );
            }
        }
        Some(compose::ServiceNetworks::Map(map)) => {
            for (n, cfg) in map {
                let mut aliases = cfg.as_ref().and_then(|c| c.aliases.clone()).unwrap_or_default();
                aliases.sort();
                attach(
                    cx,
                    format!("{}.{n}", p("networks")),
                    n,
                    aliases,
                    &mut networks,
                    uses_default_network,
                );
            }
        }
    }
    networks.sort();

    // Mounts.
    let mut mounts: Vec<Mount> = Vec::new();
    for (i, vol) in svc.volumes.iter().flatten().enumerate() {
        let vp = format!("{}[{i}]", p("volumes"));
        let mount = match vol {
            compose::ServiceVolume::Short(s) => match units::parse_volume_short(s) {
                Ok(v) => Mount {
                    kind: v.kind,
                    source: v.source,
                    target: v.target,
                    read_only: v.read_only,
                    no_copy: v.no_copy,
                    bind_propagation: v.bind_propagation,
                    tmpfs_size: None,
                    tmpfs_mode: None,
                },
                Err(e) => {
                    cx.error(&vp, e.to_string(), None);
                    continue;
                }
            },
            compose::ServiceVolume::Long(l) => {
                let kind = match l.kind {
                    compose::VolumeType::Volume => MountType::Volume,
                    compose::VolumeType::Bind => MountType::Bind,
                    compose::VolumeType::Tmpfs => MountType::Tmpfs,
                };
                if !l.target.starts_with('/') {
                    cx.error(
                        &format!("{vp}.target"),
                        format!("mount target {:?} is not an absolute path", l.target),
                        Some("targets are paths inside the container, e.g. /data".into()),
                    );
                }
                let tmpfs_size = l
                    .tmpfs
                    .as_ref()
                    .and_then(|t| cx.bytes(&format!("{vp}.tmpfs.size"), &t.size));
                Mount {
                    kind,
                    source: l.source.clone().filter(|s| !s.is_empty()),
                    target: l.target.clone(),
                    read_only: l.read_only.unwrap_or(false),
                    no_copy: l.volume.as_ref().and_then(|v| v.nocopy).unwrap_or(false),
                    bind_propagation: l.bind.as_ref().and_then(|b| b.propagation.clone()),
                    tmpfs_size,
                    tmpfs_mode: l.tmpfs.as_ref().and_then(|t| t.mode),
                }
            }
        };
        let mut mount = mount;
        match (mount.kind, mount.source.clone()) {
            (MountType::Volume, Some(src)) => match refs.volumes.get(&src) {
                Some(stored) => mount.source = Some(stored.clone()),
                None => undefined(cx, &vp, "volume", &src, refs.volumes),
            },
            (MountType::Bind, Some(src)) => {
                mount.source = Some(resolve_host_path(cx.ctx.base_dir, &src, (cx.ctx.lookup)("HOME")))
            }
            (MountType::Bind, None) => cx.error(&vp, "a bind mount needs a source path", None),
            _ => {}
        }
        mounts.push(mount);
    }
    mounts.sort();

    let secrets = file_refs(cx, &p("secrets"), &svc.secrets, "secret", refs.secrets, 0o400);
    let configs = file_refs(cx, &p("configs"), &svc.configs, "config", refs.configs, 0o444);

    let logging = svc.logging.as_ref().map(|l| Logging {
        driver: l.driver.clone().unwrap_or_else(|| "json-file".into()),
        options: l
            .options
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_ref().map(|s| s.0.clone()).unwrap_or_default()))
            .collect(),
    });

    let mut extra_hosts: Vec<String> = match &svc.extra_hosts {
        None => vec![],
        Some(ListOrMap::List(items)) => items.clone(),
        Some(ListOrMap::Map(map)) => map
            .iter()
            .map(|(h, ip)| format!("{h}:{}", ip.as_ref().map(|s| s.0.as_str()).unwrap_or("")))
            .collect(),
    };
    extra_hosts.sort();
    extra_hosts.dedup();

    let string_list = |v: &Option<compose::StringOrList>| match v {
        None => vec![],
        Some(compose::StringOrList::String(s)) => vec![s.clone()],
        Some(compose::StringOrList::List(l)) => l.clone(),
    };
    let sorted = |v: &Option<Vec<String>>| {
        let mut v = v.clone().unwrap_or_default();
        v.sort();
        v.dedup();
        v
    };

    let mut ulimits = BTreeMap::new();
    for (name, u) in svc.ulimits.iter().flatten() {
        let (soft, hard) = match u {
            compose::Ulimit::Single(n) => (*n, *n),
            compose::Ulimit::Pair { soft, hard } => (*soft, *hard),
        };
        if soft > hard {
            cx.error(
                &format!("{}.{name}", p("ulimits")),
                format!("soft limit {soft} is above hard limit {hard}"),
                Some("the soft limit must be at most the hard limit".into()),
            );
        }
        ulimits.insert(name.clone(), Ulimit { soft, hard });
    }

    let sysctls = list_or_map(&svc.sysctls, '=')
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect();

    // Deploy.
    let deploy = svc.deploy.clone().unwrap_or_default();
    let dp = p("deploy");
    let mode = match deploy.mode.unwrap_or(compose::ModeName::Replicated) {
        compose::ModeName::Replicated => ServiceMode::Replicated {
            replicas: deploy.replicas.unwrap_or(1),
        },
        compose::ModeName::ReplicatedJob => {
            let total = x.total_completions.or(deploy.replicas).unwrap_or(1);
            ServiceMode::ReplicatedJob {
                max_concurrent: x.max_concurrent.unwrap_or(total),
                total_completions: total,
            }
        }
        global => {
            if deploy.replicas.is_some() {
                cx.error(
                    &format!("{dp}.replicas"),
                    "replicas can only be set on a replicated service",
                    Some("remove `replicas`, or use `mode: replicated`".into()),
                );
            }
            if global == compose::ModeName::Global {
                ServiceMode::Global
            } else {
                ServiceMode::GlobalJob
            }
        }
    };

    let placement_in = deploy.placement.clone().unwrap_or_default();
    let mut constraints = Vec::new();
    for (i, c) in placement_in.constraints.iter().flatten().enumerate() {
        match units::parse_constraint(c) {
            Ok(c) => constraints.push(c),
            Err(e) => cx.error(&format!("{dp}.placement.constraints[{i}]"), e.to_string(), None),
        }
    }
    constraints.sort();
    constraints.dedup();
    let mut preferences = Vec::new();
    for (i, pref) in placement_in.preferences.iter().flatten().enumerate() {
        match units::parse_spread_preference(&pref.spread) {
            Ok(s) => preferences.push(s),
            Err(e) => cx.error(&format!("{dp}.placement.preferences[{i}].spread"), e.to_string(), None),
        }
    }
    if placement_in.max_replicas_per_node.is_some()
        && !matches!(mode, ServiceMode::Replicated { .. } | ServiceMode::ReplicatedJob { .. })
    {
        cx.error(
            &format!("{dp}.placement.max_replicas_per_node"),
            "max_replicas_per_node can only be set on a replicated service",
            None,
        );
    }
    let placement = Placement {
        constraints,
        preferences,
        max_replicas_per_node: placement_in.max_replicas_per_node.unwrap_or(0),
    };

    let resources_in = deploy.resources.clone().unwrap_or_default();
    let amounts = |cx: &mut Cx<'_>, which: &str, r: &Option<compose::ResourceSpec>| {
        let Some(r) = r else { return ResourceAmounts::default() };
        let rp = format!("{dp}.resources.{which}");
        let nano_cpus = match r.cpus.as_deref().map(units::parse_cpus).transpose() {
            Ok(n) => n.unwrap_or(0),
            Err(e) => {
                cx.error(&format!("{rp}.cpus"), e.to_string(), None);
                0
            }
        };
        ResourceAmounts {
            nano_cpus,
            memory_bytes: cx.bytes(&format!("{rp}.memory"), &r.memory).unwrap_or(0),
            pids: r.pids.unwrap_or(0),
        }
    };
    let resources = Resources {
        limits: amounts(cx, "limits", &resources_in.limits),
        reservations: amounts(cx, "reservations", &resources_in.reservations),
    };
    if resources.reservations.memory_bytes > 0
        && resources.limits.memory_bytes > 0
        && resources.reservations.memory_bytes > resources.limits.memory_bytes
    {
        cx.error(
            &format!("{dp}.resources.reservations.memory"),
            "the memory reservation is above the memory limit",
            Some("reserve at most the limit".into()),
        );
    }

    let restart_policy = match &deploy.restart_policy {
        None => match svc.restart.as_deref().map(restart_from_compose) {
            None => RestartPolicy::default(),
            Some(Ok(policy)) => policy,
            Some(Err(e)) => {
                cx.error(
                    &p("restart"),
                    e,
                    Some("use no, always, unless-stopped, on-failure or on-failure:N".into()),
                );
                RestartPolicy::default()
            }
        },
        Some(r) => {
            let rp = format!("{dp}.restart_policy");
            let d = RestartPolicy::default();
            RestartPolicy {
                condition: match r.condition {
                    Some(compose::RestartConditionName::None) => RestartCondition::None,
                    Some(compose::RestartConditionName::OnFailure) => RestartCondition::OnFailure,
                    Some(compose::RestartConditionName::Any) | None => RestartCondition::Any,
                },
                delay_ms: cx.duration_ms(&format!("{rp}.delay"), &r.delay).unwrap_or(d.delay_ms),
                max_attempts: r.max_attempts.unwrap_or(0),
                window_ms: cx.duration_ms(&format!("{rp}.window"), &r.window).unwrap_or(0),
            }
        }
    };

    let update_config = update_config(cx, &format!("{dp}.update_config"), &deploy.update_config, false);
    let rollback_config = update_config_fn(cx, &format!("{dp}.rollback_config"), &deploy.rollback_config);

    let mut service_labels = labels(&deploy.labels);
    service_labels.insert(ns.0.clone(), ns.1.clone());
    if let Some(image) = &svc.image {
        service_labels.insert(STACK_IMAGE_LABEL.to_string(), image.clone());
    }

    let stop_grace_period_ms = cx
        .duration_ms(&p("stop_grace_period"), &svc.stop_grace_period)
        .unwrap_or(10_000);

    ServiceSpec {
        name: format!("{stack}_{key}"),
        labels: service_labels,
        mode,
        endpoint_mode: match deploy.endpoint_mode {
            Some(compose::EndpointModeName::Dnsrr) => EndpointMode::Dnsrr,
            _ => EndpointMode::Vip,
        },
        ports,
        update_config,
        rollback_config,
        task: TaskSpec {
            driver,
            image: svc.image.clone(),
            command: command_args,
            entrypoint,
            env,
            container_labels,
            user: svc.user.clone(),
            working_dir: svc.working_dir.clone(),
            hostname: svc.hostname.clone(),
            healthcheck,
            stop_grace_period_ms,
            stop_signal,
            networks,
            mounts,
            secrets,
            configs,
            logging,
            extra_hosts,
            dns: string_list(&svc.dns),
            dns_search: string_list(&svc.dns_search),
            cap_add: sorted(&svc.cap_add),
            cap_drop: sorted(&svc.cap_drop),
            ulimits,
            init: svc.init.unwrap_or(false),
            tty: svc.tty.unwrap_or(false),
            stdin_open: svc.stdin_open.unwrap_or(false),
            read_only: svc.read_only.unwrap_or(false),
            sysctls,
            placement,
            resources,
            restart_policy,
        },
    }
}

/// The Compose `restart:` key, which `docker stack deploy` uses when `deploy.restart_policy` is absent.
fn restart_from_compose(text: &str) -> Result<RestartPolicy, String> {
    let d = RestartPolicy::default();
    match text.split_once(':') {
        None => match text {
            "no" => Ok(RestartPolicy {
                condition: RestartCondition::None,
                ..d
            }),
            "always" | "unless-stopped" => Ok(RestartPolicy {
                condition: RestartCondition::Any,
                ..d
            }),
            "on-failure" => Ok(RestartPolicy {
                condition: RestartCondition::OnFailure,
                ..d
            }),
            _ => Err(format!("invalid restart policy {text:?}")),
        },
        Some(("on-failure", n)) => match n.parse::<u64>() {
            Ok(max_attempts) => Ok(RestartPolicy {
                condition: RestartCondition::OnFailure,
                max_attempts,
                ..d
            }),
            Err(_) => Err(format!(
                "invalid restart policy {text:?}: {n:?} is not a number of attempts"
            )),
        },
        _ => Err(format!("invalid restart policy {text:?}")),
    }
}

fn update_config_fn(cx: &mut Cx<'_>, path: &str, value: &Option<compose::UpdateConfig>) -> UpdateConfig {
    update_config(cx, path, value, true)
}

fn update_config(cx: &mut Cx<'_>, path: &str, value: &Option<compose::UpdateConfig>, rollback: bool) -> UpdateConfig {
    let d = UpdateConfig::default();
    let Some(u) = value else { return d };
    let failure_action = match u.failure_action {
        None => d.failure_action,
        Some(compose::FailureActionName::Pause) => FailureAction::Pause,
        Some(compose::FailureActionName::Continue) => FailureAction::Continue,
        Some(compose::FailureActionName::Rollback) => {
            if rollback {
                cx.error(
                    &format!("{path}.failure_action"),
                    "a rollback cannot itself roll back",
                    Some("use pause or continue".into()),
                );
            }
            FailureAction::Rollback
        }
    };
    let ratio = u.max_failure_ratio.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&ratio) {
        cx.error(
            &format!("{path}.max_failure_ratio"),
            format!("{ratio} is not between 0 and 1"),
            Some("a ratio of 0.1 tolerates one failed task in ten".into()),
        );
    }
    UpdateConfig {
        parallelism: u.parallelism.unwrap_or(d.parallelism),
        delay_ms: cx.duration_ms(&format!("{path}.delay"), &u.delay).unwrap_or(d.delay_ms),
        failure_action,
        monitor_ms: cx
            .duration_ms(&format!("{path}.monitor"), &u.monitor)
            .unwrap_or(d.monitor_ms),
        max_failure_ratio_ppm: (ratio.clamp(0.0, 1.0) * 1_000_000.0).round() as u32,
        order: match u.order {
            Some(compose::UpdateOrderName::StartFirst) => UpdateOrder::StartFirst,
            _ => UpdateOrder::StopFirst,
        },
    }
}

fn file_refs(
    cx: &mut Cx<'_>,
    path: &str,
    value: &Option<Vec<compose::FileReference>>,
    kind: &str,
    defined: &IndexMap<String, String>,
    default_mode: u32,
) -> Vec<FileRef> {
    let mut out = Vec::new();
    for (i, r) in value.iter().flatten().enumerate() {
        let rp = format!("{path}[{i}]");
        let (source, target, uid, gid, mode) = match r {
            compose::FileReference::Short(s) => (s.clone(), None, None, None, None),
            compose::FileReference::Long(l) => {
                (l.source.clone(), l.target.clone(), l.uid.clone(), l.gid.clone(), l.mode)
            }
        };
        let Some(stored) = defined.get(&source) else {
            undefined(cx, &rp, kind, &source, defined);
            continue;
        };
        let target = target.unwrap_or_else(|| source.clone());
        let target = if target.starts_with('/') {
            target
        } else if kind == "secret" {
            format!("/run/secrets/{target}")
        } else {
            format!("/{target}")
        };
        let mode = mode.unwrap_or(default_mode);
        if mode > 0o7777 {
            cx.error(
                &format!("{rp}.mode"),
                format!("file mode {mode:#o} is not a valid permission"),
                Some("write it in octal, e.g. 0440".into()),
            );
        }
        out.push(FileRef {
            source: stored.clone(),
            target,
            uid: uid.unwrap_or_else(|| "0".into()),
            gid: gid.unwrap_or_else(|| "0".into()),
            mode,
        });
    }
    out.sort();
    out
}

fn published_range(text: &str) -> Option<Vec<u16>> {
    let parse = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p > 0);
    match text.split_once('-') {
        None => parse(text).map(|p| vec![p]),
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            (a <= b).then(|| (a..=b).collect())
        }
    }
}

fn resolve_host_path(base: &Path, src: &str, home: Option<String>) -> String {
    if let Some(rest) = src.strip_prefix("~/") {
        if let Some(home) = home {
            return PathBuf::from(home).join(rest).display().to_string();
        }
    }
    if src.starts_with('/') {
        return src.to_string();
    }
    let joined = base.join(src);
    // Lexically tidy `./` and `../` so that the same directory always gets the same name.
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out.display().to_string()
}

fn ignored_field(svc: &compose::Service, key: &str) -> bool {
    let v = match key {
        "build" => &svc.build,
        "cgroup_parent" => &svc.cgroup_parent,
        "cgroupns_mode" => &svc.cgroupns_mode,
        "container_name" => &svc.container_name,
        "credential_spec" => &svc.credential_spec,
        "depends_on" => &svc.depends_on,
        "devices" => &svc.devices,
        "domainname" => &svc.domainname,
        "external_links" => &svc.external_links,
        "ipc" => &svc.ipc,
        "isolation" => &svc.isolation,
        "links" => &svc.links,
        "mac_address" => &svc.mac_address,
        "network_mode" => &svc.network_mode,
        "pid" => &svc.pid,
        "platform" => &svc.platform,
        "privileged" => &svc.privileged,
        "profiles" => &svc.profiles,
        "pull_policy" => &svc.pull_policy,
        "security_opt" => &svc.security_opt,
        "shm_size" => &svc.shm_size,
        "tmpfs" => &svc.tmpfs,
        "userns_mode" => &svc.userns_mode,
        _ => return false,
    };
    v.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_split_like_a_shell() {
        assert_eq!(
            split_shell_words("echo 'a b' \"c \\\"d\\\"\" e\\ f").unwrap(),
            vec!["echo", "a b", "c \"d\"", "e f"]
        );
        assert_eq!(split_shell_words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_shell_words("a ''").unwrap(), vec!["a", ""]);
        assert!(split_shell_words("echo 'oops").is_err());
    }

    #[test]
    fn published_ranges() {
        assert_eq!(published_range("8080"), Some(vec![8080]));
        assert_eq!(published_range("8080-8082"), Some(vec![8080, 8081, 8082]));
        assert_eq!(published_range("0"), None);
        assert_eq!(published_range("9-1"), None);
    }

    #[test]
    fn host_paths_are_made_absolute() {
        assert_eq!(
            resolve_host_path(Path::new("/srv/app"), "./data", None),
            "/srv/app/data"
        );
        assert_eq!(resolve_host_path(Path::new("/srv/app"), "../x", None), "/srv/x");
        assert_eq!(resolve_host_path(Path::new("/srv/app"), "/abs", None), "/abs");
    }
}
