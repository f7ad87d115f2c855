//! The stack-file front end end to end: read files, interpolate, check shape, merge `-f` files, normalize.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Map;
use serde_json::Value as Json;

use crate::compose::ComposeFile;
use crate::diag::Diagnostic;
use crate::diag::Diagnostics;
use crate::diag::Pos;
use crate::diag::Severity;
use crate::interpolate;
use crate::normalize;
use crate::shape;
use crate::shape::Finding;
use crate::spec::StackSpec;
use crate::yaml;
use crate::yaml::Node;
use crate::yaml::Value;

/// Reads the files a stack refers to. The working tree is one; a git revision (for `plan --base-git`) is another.
pub trait Files {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
}

/// The local file system.
pub struct LocalFiles;

impl Files for LocalFiles {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

/// What to load.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Stack files in order; later files override earlier ones.
    pub files: Vec<PathBuf>,
    /// `--env-file`; without it, a `.env` beside the first file is read when present.
    pub env_file: Option<PathBuf>,
    /// `--stack`; without it, the file's `name:` or the first file's directory name.
    pub stack: Option<String>,
    /// The process environment; it wins over env files.
    pub environment: BTreeMap<String, String>,
    /// Keys for secret and config files encrypted with age (`--age-key-file`).
    pub age_identities: Vec<crate::age::Identity>,
}

/// A loaded stack: the merged file, its canonical spec, and what was found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: ComposeFile,
    pub stack: StackSpec,
    /// Warnings; with [`load_unchecked`], also the errors of the semantic checks.
    pub diagnostics: Diagnostics,
}

/// The schema that loading checks against: generated from `crate::compose`, exactly as `swarm schema` prints it
/// before it is loosened for editors.
pub fn raw_schema() -> &'static Json {
    static SCHEMA: OnceLock<Json> = OnceLock::new();
    SCHEMA.get_or_init(|| serde_json::to_value(schemars::schema_for!(ComposeFile)).unwrap_or(Json::Null))
}

/// Loads, checks and normalizes a stack. On failure, every error found is returned (with any warnings).
pub fn load(options: &LoadOptions, files: &dyn Files) -> Result<Loaded, Diagnostics> {
    let loaded = load_unchecked(options, files)?;
    if loaded.diagnostics.has_errors() {
        return Err(loaded.diagnostics);
    }
    Ok(loaded)
}

/// As [`load`], but a file whose shape is right is returned even when semantic checks (references, constraints,
/// port clashes, unreadable secret files, ...) found errors: they are in `diagnostics`. For tools and tests that
/// look at what a file says before asking whether it can be deployed.
pub fn load_unchecked(options: &LoadOptions, files: &dyn Files) -> Result<Loaded, Diagnostics> {
    let names: Vec<String> = options.files.iter().map(|p| p.display().to_string()).collect();
    let mut findings: Vec<Finding> = Vec::new();
    let mut diagnostics: Vec<Diagnostic> = Vec::new();
    let Some(first) = options.files.first() else {
        return Err(Diagnostics(vec![plain_error(
            "no stack file given",
            Some("pass one with -f FILE"),
        )]));
    };
    let base_dir = first.parent().map(Path::to_path_buf).unwrap_or_default();
    let base_dir = if base_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base_dir
    };

    // Variables: the process environment wins, then --env-file or .env.
    let mut variables: HashMap<String, String> = HashMap::new();
    let env_file = options
        .env_file
        .clone()
        .map(|p| (p, true))
        .unwrap_or_else(|| (base_dir.join(".env"), false));
    match files.read(&env_file.0) {
        Ok(bytes) => match interpolate::parse_env_file(&String::from_utf8_lossy(&bytes)) {
            Ok(pairs) => variables.extend(pairs),
            Err(e) => diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: Some(env_file.0.display().to_string()),
                line_col: Some((e.line as u32, 1)),
                path: String::new(),
                message: e.message.clone(),
                hint: Some("env files hold KEY=VALUE lines".into()),
            }),
        },
        Err(e) if env_file.1 => diagnostics.push(plain_error(
            &format!("cannot read env file {}: {e}", env_file.0.display()),
            Some("check the --env-file path"),
        )),
        Err(_) => {}
    }
    variables.extend(options.environment.clone());
    let lookup = |name: &str| variables.get(name).cloned();

    let mut merged: Option<(Json, crate::diag::Spans)> = None;
    let mut declared_name: Option<String> = None;
    for (index, path) in options.files.iter().enumerate() {
        let file_id = index as u16;
        let text = match files.read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => {
                    diagnostics.push(file_error(&names[index], "the file is not UTF-8 text", None));
                    continue;
                }
            },
            Err(e) => {
                diagnostics.push(file_error(&names[index], &format!("cannot read the file: {e}"), None));
                continue;
            }
        };
        let mut node = match yaml::parse(&text, file_id) {
            Ok(node) => node,
            Err(e) => {
                findings.push(Finding {
                    severity: Severity::Error,
                    pos: e.pos,
                    path: String::new(),
                    message: e.message,
                    hint: e.hint,
                });
                continue;
            }
        };
        if matches!(node.value, Value::Null) {
            findings.push(Finding {
                severity: Severity::Error,
                pos: node.pos,
                path: String::new(),
                message: "the file is empty".into(),
                hint: Some("a stack file is a mapping with a `services:` key".into()),
            });
            continue;
        }
        if !matches!(node.value, Value::Map(_)) {
            findings.push(Finding {
                severity: Severity::Error,
                pos: node.pos,
                path: String::new(),
                message: "a stack file must be a mapping with a `services:` key".into(),
                hint: None,
            });
            continue;
        }
        let mut missing: Vec<(String, Pos)> = Vec::new();
        interpolate_tree(&mut node, "", &lookup, &mut findings, &mut missing);
        let mut seen = std::collections::HashSet::new();
        for (var, pos) in missing {
            if seen.insert(var.clone()) {
                findings.push(Finding {
                    severity: Severity::Warning,
                    pos,
                    path: String::new(),
                    message: format!("The \"{var}\" variable is not set. Defaulting to a blank string."),
                    hint: None,
                });
            }
        }
        let shaped = shape::shape(&node, raw_schema());
        findings.extend(shaped.findings);
        if let Some(n) = shaped.value.get("name").and_then(Json::as_str) {
            declared_name = Some(n.to_string());
        }
        merged = Some(match merged {
            None => (shaped.value, shaped.spans),
            Some((base, mut spans)) => {
                spans.extend(shaped.spans);
                (merge_files(base, shaped.value), spans)
            }
        });
    }

    let to_diagnostics = |findings: Vec<Finding>, mut out: Vec<Diagnostic>| {
        out.extend(findings.into_iter().map(|f| Diagnostic {
            severity: f.severity,
            file: names.get(f.pos.file as usize).cloned(),
            line_col: (f.pos.line > 0).then_some((f.pos.line, f.pos.col)),
            path: f.path,
            message: f.message,
            hint: f.hint,
        }));
        Diagnostics(out)
    };

    let stack_name = options
        .stack
        .clone()
        .or(declared_name)
        .unwrap_or_else(|| default_stack_name(&base_dir));
    if let Err(e) = check_stack_name(&stack_name) {
        diagnostics.push(plain_error(
            &e,
            Some("pass a name with --stack NAME (letters, digits, `_` and `-`)"),
        ));
    }
    // Shape errors do not stop the semantic checks: the parts that fit are still normalized, and the semantic
    // findings about objects without shape errors are reported too (the others would only repeat them).
    let shape_failed: std::collections::HashSet<String> = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| owner(&f.path))
        .collect();
    let Some((value, spans)) = merged.filter(|_| !diagnostics.iter().any(Diagnostic::is_error)) else {
        return Err(to_diagnostics(findings, diagnostics));
    };
    let file: ComposeFile = match serde_json::from_value(value) {
        Ok(f) => f,
        Err(_) if !shape_failed.is_empty() => return Err(to_diagnostics(findings, diagnostics)),
        Err(e) => {
            diagnostics.push(file_error(
                &names[0],
                &format!("internal: the checked file did not fit the model: {e}"),
                None,
            ));
            return Err(to_diagnostics(findings, diagnostics));
        }
    };
    let read = |p: &Path| files.read(p);
    let ctx = normalize::Context {
        stack: &stack_name,
        base_dir: &base_dir,
        lookup: &lookup,
        read_file: &read,
        age_identities: &options.age_identities,
        spans: &spans,
    };
    let (stack, more) = normalize::normalize(&file, &ctx);
    let shape_errors = !shape_failed.is_empty();
    findings.extend(more.into_iter().filter(|f| !shape_failed.contains(&owner(&f.path))));
    findings.sort_by_key(|f| f.pos);
    if shape_errors {
        return Err(to_diagnostics(findings, diagnostics));
    }
    Ok(Loaded {
        file,
        stack,
        diagnostics: to_diagnostics(findings, diagnostics),
    })
}

/// The object a field path belongs to (`services.web.deploy.replicas` → `services.web`).
fn owner(path: &str) -> String {
    let mut parts = path.splitn(3, '.');
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => format!("{a}.{}", b.split('[').next().unwrap_or(b)),
        (Some(a), None) => a.split('[').next().unwrap_or(a).to_string(),
        _ => String::new(),
    }
}

fn plain_error(message: &str, hint: Option<&str>) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: None,
        line_col: None,
        path: String::new(),
        message: message.to_string(),
        hint: hint.map(str::to_string),
    }
}

fn file_error(file: &str, message: &str, hint: Option<&str>) -> Diagnostic {
    Diagnostic {
        file: Some(file.to_string()),
        ..plain_error(message, hint)
    }
}

/// Docker's rule for stack names: what the name of a network or service may start with.
pub fn check_stack_name(name: &str) -> Result<(), String> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid stack name {name:?}"))
    }
}

/// Compose's project-name rule: the directory name, lower-cased, with other characters dropped.
fn default_stack_name(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let raw = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    let name = name.trim_start_matches(['_', '-']).to_string();
    if name.is_empty() {
        "stack".into()
    } else {
        name
    }
}

/// Interpolates every scalar value (never a key) in place.
fn interpolate_tree(
    node: &mut Node,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    findings: &mut Vec<Finding>,
    missing: &mut Vec<(String, Pos)>,
) {
    let pos = node.pos;
    match &mut node.value {
        Value::Scalar { text, .. } => {
            if !text.contains('$') {
                return;
            }
            match interpolate::interpolate(text, lookup) {
                Ok(done) => {
                    *text = done.value;
                    missing.extend(done.missing.into_iter().map(|m| (m, pos)));
                }
                Err(e) => {
                    let hint = match &e {
                        interpolate::InterpolationError::Required { variable, .. } => {
                            Some(format!("set {variable} in the environment or in the .env file"))
                        }
                        interpolate::InterpolationError::Syntax { .. } => None,
                    };
                    findings.push(Finding {
                        severity: Severity::Error,
                        pos,
                        path: path.to_string(),
                        message: e.to_string(),
                        hint,
                    });
                }
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, &format!("{path}[{i}]"), lookup, findings, missing);
            }
        }
        Value::Map(entries) => {
            for (key, value) in entries.iter_mut() {
                let child = if path.is_empty() {
                    key.name.clone()
                } else {
                    format!("{path}.{}", key.name)
                };
                interpolate_tree(value, &child, lookup, findings, missing);
            }
        }
        Value::Null => {}
    }
}

/// Compose's override rules for `-f a.yml -f b.yml`, on the checked JSON of each file.
///
/// Mappings merge key by key and scalars are replaced; `command`, `entrypoint` and `healthcheck.test` are replaced
/// whole; lists of `KEY=VALUE` (environment, labels, ...) merge by key; ports, volumes, secrets and configs merge by
/// their identity (published port, target, source); other lists are concatenated without duplicates.
pub fn merge_files(base: Json, over: Json) -> Json {
    merge_at(base, over, "")
}

fn merge_at(base: Json, over: Json, path: &str) -> Json {
    let leaf = path.rsplit('.').next().unwrap_or(path);
    let in_service = path.starts_with("services.");
    match (base, over) {
        (Json::Object(mut a), Json::Object(b)) => {
            for (k, v) in b {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let merged = match a.remove(&k) {
                    Some(old) => merge_at(old, v, &child),
                    None => v,
                };
                a.insert(k, merged);
            }
            Json::Object(a)
        }
        (old, new) if in_service && matches!(leaf, "command" | "entrypoint" | "test") => {
            let _ = old;
            new
        }
        (old, new) if in_service && matches!(leaf, "environment" | "labels" | "sysctls" | "extra_hosts") => {
            let sep = if leaf == "extra_hosts" { ':' } else { '=' };
            let mut map = as_map(old, sep);
            for (k, v) in as_map(new, sep) {
                map.insert(k, v);
            }
            Json::Object(map)
        }
        (Json::Array(a), Json::Array(b)) => {
            let identity: Option<fn(&Json) -> Option<String>> = match leaf {
                "ports" if in_service => Some(port_identity),
                "volumes" if in_service => {
                    Some(|v| field_or_short(v, "target", |s| s.split(':').nth(1).or(Some(s)).map(str::to_string)))
                }
                "secrets" | "configs" if in_service => Some(|v| field_or_short(v, "source", |s| Some(s.to_string()))),
                _ => None,
            };
            let mut out: Vec<Json> = a;
            for item in b {
                let existing = match identity {
                    Some(id) => {
                        let key = id(&item);
                        out.iter().position(|o| key.is_some() && id(o) == key)
                    }
                    None => out.iter().position(|o| *o == item),
                };
                match existing {
                    Some(i) => out[i] = item,
                    None => out.push(item),
                }
            }
            Json::Array(out)
        }
        (_, new) => new,
    }
}

fn as_map(value: Json, sep: char) -> Map<String, Json> {
    match value {
        Json::Object(m) => m,
        Json::Array(items) => items
            .into_iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .map(|s| match s.split_once(sep) {
                Some((k, v)) => (k.to_string(), Json::String(v.to_string())),
                None => (s, Json::Null),
            })
            .collect(),
        _ => Map::new(),
    }
}

fn field_or_short(v: &Json, field: &str, short: fn(&str) -> Option<String>) -> Option<String> {
    match v {
        Json::String(s) => short(s),
        Json::Object(m) => m.get(field).and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

fn port_identity(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(m) => Some(format!(
            "{}:{}/{}",
            m.get("published").map(|p| p.to_string()).unwrap_or_default(),
            m.get("target").map(|p| p.to_string()).unwrap_or_default(),
            m.get("protocol").and_then(Json::as_str).unwrap_or("tcp")
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files served from memory, by file name.
    struct Memory(Vec<(&'static str, &'static str)>);

    impl Files for Memory {
        fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
            let name = path.to_string_lossy();
            self.0
                .iter()
                .find(|(n, _)| name.ends_with(n))
                .map(|(_, t)| t.as_bytes().to_vec())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
        }
    }

    fn options(files: &[&str], env: &[(&str, &str)]) -> LoadOptions {
        LoadOptions {
            files: files.iter().map(|f| PathBuf::from(format!("/stack/{f}"))).collect(),
            stack: Some("s".into()),
            environment: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..LoadOptions::default()
        }
    }

    #[test]
    fn override_files_merge_with_compose_rules() {
        let files = Memory(vec![
            (
                "base.yml",
                "services:\n  web:\n    image: nginx:1\n    command: [a, b]\n    environment: [A=1, B=2]\n    ports: ['80:80']\n    deploy: {replicas: 2, labels: {x: '1'}}\n",
            ),
            (
                "prod.yml",
                "services:\n  web:\n    image: nginx:2\n    command: [c]\n    environment: {B: '3', C: '4'}\n    ports: ['443:443']\n    deploy: {labels: {y: '2'}}\n",
            ),
        ]);
        let loaded = load(&options(&["base.yml", "prod.yml"], &[]), &files).unwrap();
        let web = &loaded.stack.services["s_web"];
        assert_eq!(web.task.image.as_deref(), Some("nginx:2"));
        assert_eq!(web.task.command, Some(vec!["c".to_string()]));
        let env: Vec<(&str, Option<&str>)> = web.task.env.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
        assert_eq!(env, vec![("A", Some("1")), ("B", Some("3")), ("C", Some("4"))]);
        assert_eq!(web.ports.len(), 2);
        assert_eq!(web.mode, crate::spec::ServiceMode::Replicated { replicas: 2 });
        assert_eq!(web.labels.get("x").map(String::as_str), Some("1"));
        assert_eq!(web.labels.get("y").map(String::as_str), Some("2"));
    }

    #[test]
    fn environment_wins_over_dot_env_which_is_read_beside_the_first_file() {
        let files = Memory(vec![
            (
                "docker-stack.yml",
                "services:\n  web:\n    image: nginx:${TAG}\n    environment:\n      - MODE=${MODE}\n",
            ),
            (".env", "TAG=from-dotenv\nMODE=from-dotenv\n"),
        ]);
        let loaded = load(&options(&["docker-stack.yml"], &[("MODE", "from-env")]), &files).unwrap();
        let web = &loaded.stack.services["s_web"];
        assert_eq!(web.task.image.as_deref(), Some("nginx:from-dotenv"));
        assert_eq!(web.task.env["MODE"].as_deref(), Some("from-env"));
    }

    #[test]
    fn a_missing_variable_warns_once_and_becomes_empty() {
        let files = Memory(vec![(
            "a.yml",
            "services:\n  web:\n    image: nginx${NOPE}\n    hostname: h${NOPE}\n",
        )]);
        let loaded = load(&options(&["a.yml"], &[]), &files).unwrap();
        assert_eq!(loaded.stack.services["s_web"].task.image.as_deref(), Some("nginx"));
        let warnings: Vec<String> = loaded.diagnostics.warnings().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            vec!["/stack/a.yml:3:12: warning: The \"NOPE\" variable is not set. Defaulting to a blank string."]
        );
    }

    #[test]
    fn errors_name_the_file_they_are_in() {
        let files = Memory(vec![
            ("a.yml", "services:\n  web:\n    image: nginx\n"),
            ("b.yml", "services:\n  web:\n    deploy:\n      replicas: -1\n"),
        ]);
        let err = load(&options(&["a.yml", "b.yml"], &[]), &files).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/stack/b.yml:4:17: error: services.web.deploy.replicas: expected a non-negative integer, found \"-1\"\n  hint: the value must be at least 0"
        );
    }

    #[test]
    fn keys_are_never_interpolated_and_dollar_dollar_is_a_dollar() {
        let files = Memory(vec![(
            "a.yml",
            "services:\n  web:\n    image: nginx\n    labels:\n      $KEY: $$VALUE\n",
        )]);
        let loaded = load(&options(&["a.yml"], &[("KEY", "k")]), &files).unwrap();
        assert_eq!(loaded.stack.services["s_web"].task.container_labels["$KEY"], "$VALUE");
    }

    #[test]
    fn octal_modes_and_quoted_numbers() {
        let files = Memory(vec![
            (
                "a.yml",
                "services:\n  web:\n    image: nginx\n    secrets: [{source: pw, mode: 0440}]\n    deploy: {replicas: \"3\"}\nsecrets:\n  pw: {file: pw.txt}\n",
            ),
            ("pw.txt", "x"),
        ]);
        let loaded = load(&options(&["a.yml"], &[]), &files).unwrap();
        let web = &loaded.stack.services["s_web"];
        assert_eq!(web.task.secrets[0].mode, 0o440);
        assert_eq!(web.task.secrets[0].target, "/run/secrets/pw");
        assert_eq!(web.mode, crate::spec::ServiceMode::Replicated { replicas: 3 });
    }
}
