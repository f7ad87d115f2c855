//! Planning: what applying a desired stack to the current one would change, as data and as text for a person.
//!
//! [`plan`] is a pure function of two [`StackSpec`]s. Objects are paired by their address (the name the stack
//! file uses), compared as JSON, and every difference becomes one [`Change`]. The JSON form of [`Plan`] is what
//! `swarm plan --format json` prints and `swarm apply plan.json` reads back, so its field names are a
//! versioned format ([`FORMAT_VERSION`]); [`render`] is the Terraform-style text for a terminal.
//!
//! Secret content never reaches a plan: [`SecretSpec`](swarm_specs::spec::SecretSpec) does not serialize it, and a
//! rotated secret shows only its stored name and digest.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use console::Style;
use serde::Deserialize;
use serde::Serialize;
use serde_json::json;
use serde_json::Value;
use similar::ChangeTag;
use similar::TextDiff;
use swarm_specs::spec::base64_bytes;
use swarm_specs::spec::ContentSource;
use swarm_specs::StackSpec;

/// Version of the plan's JSON format; bumped whenever a reader of the previous version would misread a plan.
pub const FORMAT_VERSION: &str = "1";

/// Compact JSON values up to this many characters are shown on the field's line; longer ones as a line diff.
const INLINE_WIDTH: usize = 60;

/// Everything applying a desired stack would change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// [`FORMAT_VERSION`] of the program that wrote the plan.
    pub format_version: String,
    /// Name of the stack.
    pub stack: String,
    /// Store revision the current state was read at, so `apply` can refuse a plan made against older state.
    /// `None` until the manager fills it in; [`plan`] only compares specs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_revision: Option<u64>,
    /// Networks, volumes, secrets, configs, then services (the order objects are created in), each by address.
    pub changes: Vec<Change>,
    pub summary: Summary,
    /// The desired stack (secret content excluded), so that `swarm apply plan.json` applies exactly what was planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<StackSpec>,
}

impl Plan {
    /// Whether applying the plan would change anything.
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// Reads a plan written by `swarm plan --format json`, refusing a format version this program does not know.
    pub fn from_json(text: &str) -> Result<Plan, PlanError> {
        let value: Value = serde_json::from_str(text).map_err(PlanError::Json)?;
        match value.get("format_version").and_then(Value::as_str) {
            Some(FORMAT_VERSION) => serde_json::from_value(value).map_err(PlanError::Json),
            found => Err(PlanError::UnsupportedVersion {
                found: found.map(str::to_string),
            }),
        }
    }
}

/// Why a saved plan cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the plan is not valid plan JSON: {0}; write it with `swarm plan --format json`")]
    Json(serde_json::Error),
    #[error(
        "the plan has format_version {}, but this swarm reads version {FORMAT_VERSION:?}; \
         make the plan again with this swarm (`swarm plan --format json`)",
        .found.as_deref().map_or_else(|| "(missing)".to_string(), |v| format!("{v:?}"))
    )]
    UnsupportedVersion { found: Option<String> },
}

/// The kind of object a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Network,
    Volume,
    Secret,
    Config,
    Service,
}

impl Kind {
    /// The first part of an address: `service`, `network`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Volume => "volume",
            Kind::Secret => "secret",
            Kind::Config => "config",
            Kind::Service => "service",
        }
    }
}

/// What applying a change does to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Remove,
    /// A stack-defined secret or config got new content: a new object under a new stored name replaces the old one.
    Rotate,
}

/// One object that differs between the desired and the current stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Stable name of the object: `service.web`, `network.front`, `secret.db_password`. When two objects of one
    /// kind would share an address (a managed `front` and an external network named `front`), both use their stored
    /// names instead: `network["s_front"]`, `network["front"]`.
    pub address: String,
    pub kind: Kind,
    /// Written as a list, as Terraform does (`"actions": ["update"]`), so a compound action can be added later.
    #[serde(rename = "actions", with = "action_list")]
    pub action: Action,
    /// The object as it is; `null` for a create. For a secret rotation only `{name, digest}`.
    pub before: Value,
    /// The object as it will be; `null` for a remove. For a secret rotation only `{name, digest}`.
    pub after: Value,
    /// For updates and rotations: each differing field. Arrays are compared whole.
    pub fields: Vec<FieldChange>,
    /// For services: whether applying the change restarts the service's tasks (any field is [`Effect::Replace`]).
    pub replaces_tasks: bool,
    /// Where the scheduler would put the tasks (a placement dry-run); `None` until the scheduler fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Value>,
}

/// One field of an object that differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    /// Path in the object's JSON: `task.image`, `labels["com.example.team"]`.
    pub path: String,
    /// `null` when the field is absent.
    pub before: Value,
    pub after: Value,
    pub effect: Effect,
}

/// How Docker Swarm applies a field change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Needs new tasks (services), or a new object (networks and volumes cannot be updated; a secret's or
    /// config's content cannot either).
    Replace,
    /// Applied to the object without touching its tasks: service labels, replicas, update and rollback
    /// configs, endpoint mode; secret and config labels.
    InPlace,
}

/// How many objects each action touches; `unchanged` counts objects present and equal on both sides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub remove: usize,
    pub rotate: usize,
    pub unchanged: usize,
}

mod action_list {
    use serde::de::Error as _;
    use serde::Deserialize;
    use serde::Deserializer;
    use serde::Serialize;
    use serde::Serializer;

    use super::Action;

    pub fn serialize<S: Serializer>(action: &Action, s: S) -> Result<S::Ok, S::Error> {
        [action].serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Action, D::Error> {
        match Vec::<Action>::deserialize(d)?.as_slice() {
            [one] => Ok(*one),
            other => Err(D::Error::custom(format!(
                "expected exactly one action in `actions`, found {}",
                other.len()
            ))),
        }
    }
}

/// Compares the desired stack with the current one. External objects are only referenced: one that appears or
/// disappears is no change (and not counted); one that turns managed, or back, is an update.
pub fn plan(desired: &StackSpec, current: &StackSpec) -> Plan {
    let mut changes = Vec::new();
    let mut summary = Summary::default();
    for kind in [Kind::Network, Kind::Volume, Kind::Secret, Kind::Config, Kind::Service] {
        diff_kind(
            kind,
            entries(kind, desired),
            entries(kind, current),
            &mut changes,
            &mut summary,
        );
    }
    let stack = if desired.name.is_empty() {
        &current.name
    } else {
        &desired.name
    };
    Plan {
        format_version: FORMAT_VERSION.to_string(),
        stack: stack.clone(),
        base_revision: None,
        changes,
        summary,
        desired: None,
    }
}

/// One object of one side, reduced to what pairing and comparing need.
struct Entry<'a> {
    /// Key in the stack's map: the stored name.
    stored: String,
    /// Name in the stack file: the stored name without `<stack>_`, or a secret's or config's `key`.
    derived: String,
    external: bool,
    /// Stack-defined secret or config: new content gives a new stored name, which is a rotation.
    rotates: bool,
    /// The object itself: compared typed, serialized only when it is part of a change.
    object: Obj<'a>,
}

#[derive(PartialEq)]
enum Obj<'a> {
    Service(&'a swarm_specs::spec::ServiceSpec),
    Network(&'a swarm_specs::spec::NetworkSpec),
    Volume(&'a swarm_specs::spec::VolumeSpec),
    Secret(&'a swarm_specs::spec::SecretSpec),
    Config(&'a swarm_specs::spec::ConfigSpec),
}

impl Entry<'_> {
    fn value(&self) -> Value {
        match self.object {
            Obj::Service(o) => to_json(o),
            Obj::Network(o) => to_json(o),
            Obj::Volume(o) => to_json(o),
            Obj::Secret(o) => to_json(o),
            Obj::Config(o) => to_json(o),
        }
    }

    /// What a rotation shows of the object: a secret only by name and digest.
    fn rotation_view(&self) -> Value {
        match self.object {
            Obj::Secret(s) => json!({ "name": self.stored, "digest": s.digest }),
            _ => self.value(),
        }
    }
}

fn entries(kind: Kind, stack: &StackSpec) -> Vec<Entry<'_>> {
    let plain = |stored: &String, external: bool, object| Entry {
        stored: stored.clone(),
        derived: strip_stack(&stack.name, stored),
        external,
        rotates: false,
        object,
    };
    match kind {
        Kind::Service => stack
            .services
            .iter()
            .map(|(name, s)| plain(name, false, Obj::Service(s)))
            .collect(),
        Kind::Network => stack
            .networks
            .iter()
            .map(|(name, n)| plain(name, n.external, Obj::Network(n)))
            .collect(),
        Kind::Volume => stack
            .volumes
            .iter()
            .map(|(name, v)| plain(name, v.external, Obj::Volume(v)))
            .collect(),
        Kind::Secret => stack
            .secrets
            .iter()
            .map(|(name, s)| {
                let external = s.source == ContentSource::External;
                Entry {
                    stored: name.clone(),
                    derived: s.key.clone(),
                    external,
                    rotates: !external,
                    object: Obj::Secret(s),
                }
            })
            .collect(),
        Kind::Config => stack
            .configs
            .iter()
            .map(|(name, c)| {
                let external = c.source == ContentSource::External;
                Entry {
                    stored: name.clone(),
                    derived: c.key.clone(),
                    external,
                    rotates: !external,
                    object: Obj::Config(c),
                }
            })
            .collect(),
    }
}

/// The specs serialize to JSON without fail (string-keyed maps, no custom errors); should that ever change, the
/// plan shows the reason in place of the object rather than dropping it.
fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|e| Value::String(format!("<cannot show this object: {e}>")))
}

fn strip_stack(stack: &str, stored: &str) -> String {
    if stack.is_empty() {
        return stored.to_string();
    }
    match stored.strip_prefix(stack).and_then(|rest| rest.strip_prefix('_')) {
        Some(rest) if !rest.is_empty() => rest.to_string(),
        _ => stored.to_string(),
    }
}

fn diff_kind(
    kind: Kind,
    desired: Vec<Entry<'_>>,
    current: Vec<Entry<'_>>,
    changes: &mut Vec<Change>,
    summary: &mut Summary,
) {
    let mut ambiguous = BTreeSet::new();
    for side in [&desired, &current] {
        let mut seen = BTreeSet::new();
        for entry in side {
            if !seen.insert(entry.derived.as_str()) {
                ambiguous.insert(entry.derived.clone());
            }
        }
    }
    let address = |entry: &Entry<'_>| {
        if ambiguous.contains(&entry.derived) {
            format!("{}[{}]", kind.as_str(), Value::String(entry.stored.clone()))
        } else {
            format!("{}.{}", kind.as_str(), entry.derived)
        }
    };
    let mut want: BTreeMap<String, Entry<'_>> = desired.into_iter().map(|e| (address(&e), e)).collect();
    let mut have: BTreeMap<String, Entry<'_>> = current.into_iter().map(|e| (address(&e), e)).collect();
    let addresses: BTreeSet<String> = want.keys().chain(have.keys()).cloned().collect();

    for address in addresses {
        let change = |action, before: Value, after: Value| {
            let fields = field_changes(kind, &before, &after);
            let replaces_tasks = kind == Kind::Service && fields.iter().any(|f| f.effect == Effect::Replace);
            Change {
                address: address.clone(),
                kind,
                action,
                before,
                after,
                fields,
                replaces_tasks,
                placement: None,
            }
        };
        match (want.remove(&address), have.remove(&address)) {
            (Some(d), Some(c)) if d.object == c.object => summary.unchanged += 1,
            (Some(d), Some(c)) if d.rotates && c.rotates && d.stored != c.stored => {
                summary.rotate += 1;
                changes.push(change(Action::Rotate, c.rotation_view(), d.rotation_view()));
            }
            (Some(d), Some(c)) => {
                let (before, after) = (c.value(), d.value());
                if before == after {
                    summary.unchanged += 1;
                    continue;
                }
                summary.update += 1;
                changes.push(change(Action::Update, before, after));
            }
            (Some(d), None) if !d.external => {
                summary.create += 1;
                changes.push(change(Action::Create, Value::Null, d.value()));
            }
            (None, Some(c)) if !c.external => {
                summary.remove += 1;
                changes.push(change(Action::Remove, c.value(), Value::Null));
            }
            _ => {}
        }
    }
}

/// The differing fields of two versions of one object; empty when either side is absent (create, remove).
fn field_changes(kind: Kind, before: &Value, after: &Value) -> Vec<FieldChange> {
    if before.is_null() || after.is_null() {
        return Vec::new();
    }
    let mut found = Vec::new();
    walk(&mut Vec::new(), before, after, &mut found);
    found
        .into_iter()
        .map(|(path, before, after)| FieldChange {
            effect: effect(kind, &path),
            path: format_path(&path),
            before,
            after,
        })
        .collect()
}

type Found = (Vec<String>, Value, Value);

fn walk(path: &mut Vec<String>, before: &Value, after: &Value, found: &mut Vec<Found>) {
    if before == after {
        return;
    }
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for key in keys {
                path.push(key.clone());
                walk(
                    path,
                    b.get(key).unwrap_or(&Value::Null),
                    a.get(key).unwrap_or(&Value::Null),
                    found,
                );
                path.pop();
            }
        }
        _ => found.push((path.clone(), before.clone(), after.clone())),
    }
}

/// Updated without new tasks; everything else about a service (all of `task`) replaces them. Unlike Docker Swarm,
/// published ports replace tasks: each task's container binds them on its node until the routing mesh exists.
fn effect(kind: Kind, path: &[String]) -> Effect {
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    match (kind, path.as_slice()) {
        (
            Kind::Service,
            ["labels", ..]
            | ["mode", "replicas"]
            | ["update_config", ..]
            | ["rollback_config", ..]
            | ["endpoint_mode", ..],
        ) => Effect::InPlace,
        (Kind::Secret | Kind::Config, ["labels", ..]) => Effect::InPlace,
        _ => Effect::Replace,
    }
}

/// `task.image`; a key that is not a plain word is quoted: `labels["com.example.team"]`.
fn format_path(path: &[String]) -> String {
    let mut out = String::new();
    for segment in path {
        let plain = !segment.is_empty()
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if plain {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        } else {
            out.push('[');
            out.push_str(&Value::String(segment.clone()).to_string());
            out.push(']');
        }
    }
    out
}

/// Renders a plan for a terminal, in Terraform's style; `color` adds ANSI colours.
pub fn render(plan: &Plan, color: bool) -> String {
    if !plan.has_changes() {
        return "No changes. The stack matches the desired state.\n".to_string();
    }
    let paint = Paint { color };
    let mut out = String::new();
    for change in &plan.changes {
        render_change(&mut out, change, &paint);
        out.push('\n');
    }
    let s = &plan.summary;
    out.push_str(&format!(
        "Plan: {} to create, {} to update, {} to remove, {} to rotate.\n",
        s.create, s.update, s.remove, s.rotate
    ));
    out
}

struct Paint {
    color: bool,
}

impl Paint {
    fn apply(&self, style: Style, text: &str) -> String {
        if self.color {
            style.force_styling(true).apply_to(text).to_string()
        } else {
            text.to_string()
        }
    }
}

fn green() -> Style {
    Style::new().green()
}

fn yellow() -> Style {
    Style::new().yellow()
}

fn red() -> Style {
    Style::new().red()
}

fn cyan() -> Style {
    Style::new().cyan()
}

fn line(out: &mut String, indent: usize, text: &str) {
    let text = format!("{:indent$}{text}", "");
    out.push_str(text.trim_end());
    out.push('\n');
}

fn render_change(out: &mut String, change: &Change, paint: &Paint) {
    let (sign, style, what) = match change.action {
        Action::Create => ("+", green(), "create"),
        Action::Update if change.replaces_tasks => ("~", yellow(), "update, replaces tasks"),
        Action::Update => ("~", yellow(), "update"),
        Action::Remove => ("-", red(), "remove"),
        Action::Rotate => ("±", cyan(), "rotate"),
    };
    let header = format!("{} {} ({what})", paint.apply(style, sign), printable(&change.address));
    line(out, 0, &header);
    match change.action {
        Action::Create => {
            for text in create_summary(change.kind, &change.after) {
                line(out, 4, &printable(&text));
            }
        }
        Action::Update | Action::Rotate => {
            for field in &change.fields {
                render_field(out, change.kind, field, paint);
            }
        }
        Action::Remove => {}
    }
    if let Some(placement) = &change.placement {
        for text in placement_lines(placement) {
            line(out, 4, &printable(&text));
        }
    }
}

/// The scheduler dry-run of a service, for a person: `placement: 2 on node-a, 1 on node-b` and what cannot be placed.
fn placement_lines(placement: &Value) -> Vec<String> {
    let Some(nodes) = placement.get("nodes").and_then(Value::as_object) else {
        return vec![format!("placement: {placement}")];
    };
    let mut lines = Vec::new();
    let spread: Vec<String> = nodes
        .iter()
        .map(|(node, count)| format!("{} on {node}", count.as_u64().unwrap_or(0)))
        .collect();
    let new_tasks = placement.get("new_tasks").and_then(Value::as_u64).unwrap_or(0);
    if new_tasks == 0 {
        lines.push("placement: no new tasks".to_string());
    } else if !spread.is_empty() {
        lines.push(format!("placement: {}", spread.join(", ")));
    }
    for item in placement
        .get("unplaceable")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let count = item.get("count").and_then(Value::as_u64).unwrap_or(0);
        let reason = item.get("reason").and_then(Value::as_str).unwrap_or("");
        let tasks = if count == 1 { "task" } else { "tasks" };
        lines.push(format!("! {count} {tasks} cannot be placed: {reason}"));
    }
    if let Some(skipped) = placement.get("skipped_nodes").and_then(Value::as_str) {
        lines.push(format!("placement: {skipped}"));
    }
    lines
}

/// A few facts about a new object instead of its whole JSON.
fn create_summary(kind: Kind, after: &Value) -> Vec<String> {
    let text = |pointer: &str| after.pointer(pointer).and_then(Value::as_str);
    let number = |pointer: &str| after.pointer(pointer).and_then(Value::as_u64).unwrap_or(0);
    let mut lines = Vec::new();
    match kind {
        Kind::Service => {
            match text("/task/image") {
                Some(image) => lines.push(format!("image: {}", Value::String(image.to_string()))),
                None => lines.push(format!("driver: {}", text("/task/driver").unwrap_or("?"))),
            }
            let mode = match text("/mode/kind") {
                Some("replicated") => {
                    let replicas = number("/mode/replicas");
                    let noun = if replicas == 1 { "replica" } else { "replicas" };
                    format!("replicated, {replicas} {noun}")
                }
                Some("replicated-job") => format!(
                    "replicated-job, {} completions, {} at a time",
                    number("/mode/total_completions"),
                    number("/mode/max_concurrent")
                ),
                Some(other) => other.to_string(),
                None => "?".to_string(),
            };
            lines.push(format!("mode: {mode}"));
            let ports: Vec<String> = after
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(port_summary)
                .collect();
            if !ports.is_empty() {
                lines.push(format!("ports: {}", ports.join(", ")));
            }
        }
        Kind::Network => {
            let mut driver = text("/driver").unwrap_or("?").to_string();
            for flag in ["attachable", "internal"] {
                if after.get(flag).and_then(Value::as_bool) == Some(true) {
                    driver.push_str(", ");
                    driver.push_str(flag);
                }
            }
            lines.push(format!("driver: {driver}"));
        }
        Kind::Volume => lines.push(format!("driver: {}", text("/driver").unwrap_or("?"))),
        Kind::Secret | Kind::Config => lines.push(format!("name: {}", text("/name").unwrap_or("?"))),
    }
    lines
}

/// `8080:80/tcp`, `80/udp`, `8080:80/tcp (host)`.
fn port_summary(port: &Value) -> String {
    let target = port.get("target").and_then(Value::as_u64).unwrap_or(0);
    let protocol = port.get("protocol").and_then(Value::as_str).unwrap_or("tcp");
    let mut text = match port.get("published").and_then(Value::as_u64) {
        Some(published) => format!("{published}:{target}/{protocol}"),
        None => format!("{target}/{protocol}"),
    };
    if port.get("mode").and_then(Value::as_str) == Some("host") {
        text.push_str(" (host)");
    }
    text
}

fn render_field(out: &mut String, kind: Kind, field: &FieldChange, paint: &Paint) {
    let before = shown(kind, &field.path, &field.before);
    let after = shown(kind, &field.path, &field.after);
    let sign = paint.apply(yellow(), "~");
    match (inline(&before), inline(&after)) {
        (Some(b), Some(a)) => {
            let (path, b, a) = (printable(&field.path), printable(&b), printable(&a));
            line(out, 4, &format!("{sign} {path}: {b} → {a}"));
        }
        _ => {
            line(out, 4, &format!("{sign} {}:", printable(&field.path)));
            render_text_diff(out, &as_text(&before), &as_text(&after), paint);
        }
    }
}

/// The value as a person reads it: a config's content decoded from base64.
fn shown(kind: Kind, path: &str, value: &Value) -> Value {
    match (kind, path, value) {
        (Kind::Config, "data", Value::String(encoded)) => match base64_bytes::decode(encoded) {
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Value::String(text),
                Err(e) => Value::String(format!("<{} bytes of binary content>", e.as_bytes().len())),
            },
            None => value.clone(),
        },
        _ => value.clone(),
    }
}

/// The value on one line, or `None` when it needs a line diff.
fn inline(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\n') => None,
        Value::Array(_) | Value::Object(_) => {
            let compact = value.to_string();
            (compact.chars().count() <= INLINE_WIDTH).then_some(compact)
        }
        _ => Some(value.to_string()),
    }
}

/// The value as lines for a line diff; an absent value is no lines.
fn as_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(_) | Value::Object(_) => {
            let pretty = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
            format!("{pretty}\n")
        }
        _ => format!("{value}\n"),
    }
}

fn render_text_diff(out: &mut String, before: &str, after: &str, paint: &Paint) {
    let diff = TextDiff::from_lines(before, after);
    for hunk in diff.unified_diff().context_radius(3).iter_hunks() {
        line(out, 8, &paint.apply(cyan(), &hunk.header().to_string()));
        for change in hunk.iter_changes() {
            let text = printable(change.value().trim_end_matches(['\n', '\r']));
            let text = match change.tag() {
                ChangeTag::Delete => paint.apply(red(), &format!("-{text}")),
                ChangeTag::Insert => paint.apply(green(), &format!("+{text}")),
                ChangeTag::Equal => format!(" {text}"),
            };
            line(out, 8, &text);
        }
    }
}

/// Control characters from config content or names are shown escaped, so a plan cannot drive the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::json;
    use swarm_specs::normalize::digest;
    use swarm_specs::spec::*;

    use super::*;

    const STACK: &str = "s";

    fn stack() -> StackSpec {
        StackSpec {
            name: STACK.to_string(),
            ..StackSpec::default()
        }
    }

    fn namespace() -> BTreeMap<String, String> {
        BTreeMap::from([(STACK_NAMESPACE_LABEL.to_string(), STACK.to_string())])
    }

    /// A replicated service as normalization would produce it from `image:` and `deploy.replicas:` alone.
    fn service(key: &str, image: &str, replicas: u64) -> ServiceSpec {
        ServiceSpec {
            name: format!("{STACK}_{key}"),
            labels: namespace(),
            mode: ServiceMode::Replicated { replicas },
            task: TaskSpec {
                command: None,
                ..TaskSpec::with_command(Driver::Docker, Some(image.to_string()), Vec::new())
            },
            endpoint_mode: EndpointMode::Vip,
            ports: Vec::new(),
            update_config: UpdateConfig::default(),
            rollback_config: UpdateConfig::default(),
        }
    }

    fn port(published: u16, target: u16) -> PortConfig {
        PortConfig {
            target,
            published: Some(published),
            protocol: Protocol::Tcp,
            mode: PublishMode::Ingress,
            host_ip: None,
        }
    }

    fn network(stored: &str, external: bool) -> NetworkSpec {
        NetworkSpec {
            name: stored.to_string(),
            driver: "overlay".to_string(),
            driver_opts: BTreeMap::new(),
            attachable: false,
            internal: false,
            enable_ipv6: false,
            ipam: Vec::new(),
            labels: if external { BTreeMap::new() } else { namespace() },
            external,
        }
    }

    fn volume(stored: &str, external: bool) -> VolumeSpec {
        VolumeSpec {
            name: stored.to_string(),
            driver: "local".to_string(),
            driver_opts: BTreeMap::new(),
            labels: if external { BTreeMap::new() } else { namespace() },
            external,
        }
    }

    /// A stack-defined secret, named as normalization names it: `<stack>_<key>-<digest prefix>`.
    fn secret(key: &str, content: &str) -> SecretSpec {
        let digest = digest(content.as_bytes());
        SecretSpec {
            name: format!("{STACK}_{key}-{}", &digest[..10]),
            key: key.to_string(),
            labels: BTreeMap::new(),
            source: ContentSource::File,
            digest,
            data: SecretBytes(content.as_bytes().to_vec()),
        }
    }

    fn external_secret(key: &str, name: &str) -> SecretSpec {
        SecretSpec {
            name: name.to_string(),
            key: key.to_string(),
            labels: BTreeMap::new(),
            source: ContentSource::External,
            digest: String::new(),
            data: SecretBytes::default(),
        }
    }

    fn config(key: &str, content: &str) -> ConfigSpec {
        let digest = digest(content.as_bytes());
        ConfigSpec {
            name: format!("{STACK}_{key}-{}", &digest[..10]),
            key: key.to_string(),
            labels: BTreeMap::new(),
            source: ContentSource::Inline,
            digest,
            data: content.as_bytes().to_vec(),
        }
    }

    fn with_services(services: impl IntoIterator<Item = ServiceSpec>) -> StackSpec {
        let mut spec = stack();
        for s in services {
            spec.services.insert(s.name.clone(), s);
        }
        spec
    }

    fn add_network(spec: &mut StackSpec, n: NetworkSpec) {
        spec.networks.insert(n.name.clone(), n);
    }

    fn add_volume(spec: &mut StackSpec, v: VolumeSpec) {
        spec.volumes.insert(v.name.clone(), v);
    }

    fn add_secret(spec: &mut StackSpec, s: SecretSpec) {
        spec.secrets.insert(s.name.clone(), s);
    }

    fn add_config(spec: &mut StackSpec, c: ConfigSpec) {
        spec.configs.insert(c.name.clone(), c);
    }

    fn one_change(plan: &Plan) -> &Change {
        assert_eq!(plan.changes.len(), 1, "expected one change, got {:#?}", plan.changes);
        &plan.changes[0]
    }

    fn field<'a>(change: &'a Change, path: &str) -> &'a FieldChange {
        change
            .fields
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no field {path} in {:#?}", change.fields))
    }

    #[test]
    fn identical_stacks_have_no_changes() {
        let mut spec = with_services([service("web", "nginx:1.27", 2), service("api", "api:1", 1)]);
        add_network(&mut spec, network("s_front", false));
        add_network(&mut spec, network("proxy", true));
        add_volume(&mut spec, volume("s_data", false));
        add_secret(&mut spec, secret("db_password", "hunter2"));
        add_config(&mut spec, config("nginx_conf", "server {}\n"));

        let plan = plan(&spec, &spec.clone());

        assert!(!plan.has_changes());
        assert_eq!(
            plan.summary,
            Summary {
                unchanged: 7,
                ..Summary::default()
            }
        );
        assert_eq!(
            render(&plan, false),
            "No changes. The stack matches the desired state.\n"
        );
    }

    #[test]
    fn a_new_service_is_created_and_summarised() {
        let mut web = service("web", "nginx:1.27", 3);
        web.ports = vec![port(8080, 80)];
        let desired = with_services([web.clone()]);

        let plan = plan(&desired, &stack());

        let change = one_change(&plan);
        assert_eq!(change.address, "service.web");
        assert_eq!(change.kind, Kind::Service);
        assert_eq!(change.action, Action::Create);
        assert_eq!(change.before, Value::Null);
        assert_eq!(change.after, serde_json::to_value(&web).unwrap());
        assert!(change.fields.is_empty());
        assert_eq!(plan.summary.create, 1);
        assert_eq!(
            render(&plan, false),
            "+ service.web (create)\n    image: \"nginx:1.27\"\n    mode: replicated, 3 replicas\n    \
             ports: 8080:80/tcp\n\nPlan: 1 to create, 0 to update, 0 to remove, 0 to rotate.\n"
        );
    }

    #[test]
    fn objects_gone_from_the_stack_are_removed() {
        let mut current = with_services([service("web", "nginx:1.27", 1)]);
        add_network(&mut current, network("s_old", false));
        let desired = with_services([service("web", "nginx:1.27", 1)]);

        let plan = plan(&desired, &current);

        let change = one_change(&plan);
        assert_eq!(change.address, "network.old");
        assert_eq!(change.action, Action::Remove);
        assert_eq!(change.after, Value::Null);
        assert_eq!(change.before["name"], "s_old");
        assert_eq!(plan.summary.remove, 1);
        assert_eq!(plan.summary.unchanged, 1);
    }

    #[test]
    fn a_replica_change_is_an_in_place_update() {
        let current = with_services([service("web", "nginx:1.27", 2)]);
        let desired = with_services([service("web", "nginx:1.27", 5)]);

        let plan = plan(&desired, &current);

        let change = one_change(&plan);
        assert_eq!(change.action, Action::Update);
        assert_eq!(
            change.fields,
            vec![FieldChange {
                path: "mode.replicas".to_string(),
                before: json!(2),
                after: json!(5),
                effect: Effect::InPlace,
            }]
        );
        assert!(!change.replaces_tasks);
        assert!(render(&plan, false).starts_with("~ service.web (update)\n    ~ mode.replicas: 2 → 5\n"));
    }

    #[test]
    fn an_image_change_replaces_tasks() {
        let current = with_services([service("web", "nginx:1.25", 2)]);
        let desired = with_services([service("web", "nginx:1.27", 2)]);

        let plan = plan(&desired, &current);

        let change = one_change(&plan);
        let image = field(change, "task.image");
        assert_eq!(
            (&image.before, &image.after),
            (&json!("nginx:1.25"), &json!("nginx:1.27"))
        );
        assert_eq!(image.effect, Effect::Replace);
        assert!(change.replaces_tasks);
    }

    #[test]
    fn in_place_and_replacing_fields_are_classified_as_swarm_applies_them() {
        let current = with_services([service("web", "nginx:1.27", 2)]);
        let mut web = service("web", "nginx:1.27", 2);
        web.labels.insert("com.example.team".to_string(), "edge".to_string());
        web.endpoint_mode = EndpointMode::Dnsrr;
        web.update_config.parallelism = 2;
        web.rollback_config.order = UpdateOrder::StartFirst;
        let in_place = with_services([web.clone()]);

        let plan_in_place = plan(&in_place, &current);

        let change = one_change(&plan_in_place);
        let paths: Vec<(&str, Effect)> = change.fields.iter().map(|f| (f.path.as_str(), f.effect)).collect();
        assert_eq!(
            paths,
            vec![
                ("endpoint_mode", Effect::InPlace),
                ("labels[\"com.example.team\"]", Effect::InPlace),
                ("rollback_config.order", Effect::InPlace),
                ("update_config.parallelism", Effect::InPlace),
            ]
        );
        assert!(!change.replaces_tasks);

        web.task.env.insert("LOG_LEVEL".to_string(), Some("debug".to_string()));
        // Ports are bound by each task's container (no routing mesh yet): they replace tasks.
        web.ports = vec![port(8080, 80)];
        let plan_replace = plan(&with_services([web]), &current);
        let change = one_change(&plan_replace);
        assert_eq!(field(change, "task.env.LOG_LEVEL").effect, Effect::Replace);
        assert_eq!(field(change, "ports").effect, Effect::Replace);
        assert!(change.replaces_tasks);
        assert!(render(&plan_replace, false).starts_with("~ service.web (update, replaces tasks)\n"));
    }

    #[test]
    fn switching_mode_replaces_tasks() {
        let current = with_services([service("web", "nginx:1.27", 2)]);
        let mut web = service("web", "nginx:1.27", 2);
        web.mode = ServiceMode::Global;

        let plan = plan(&with_services([web]), &current);

        let change = one_change(&plan);
        assert_eq!(field(change, "mode.kind").effect, Effect::Replace);
        assert!(change.replaces_tasks);
    }

    #[test]
    fn a_secret_with_new_content_is_rotated_showing_only_name_and_digest() {
        let mut current = stack();
        let old = secret("db_password", "hunter2");
        add_secret(&mut current, old.clone());
        let mut desired = stack();
        let new = secret("db_password", "correct horse");
        add_secret(&mut desired, new.clone());

        let plan = plan(&desired, &current);

        let change = one_change(&plan);
        assert_eq!(change.address, "secret.db_password");
        assert_eq!(change.action, Action::Rotate);
        assert_eq!(change.before, json!({ "name": old.name, "digest": old.digest }));
        assert_eq!(change.after, json!({ "name": new.name, "digest": new.digest }));
        let paths: Vec<&str> = change.fields.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["digest", "name"]);
        assert_eq!(
            plan.summary,
            Summary {
                rotate: 1,
                ..Summary::default()
            }
        );
    }

    #[test]
    fn secret_content_appears_in_no_output() {
        const PLANTED: &str = "planted-secret-value-9d3f";
        let mut current = stack();
        add_secret(&mut current, secret("db_password", PLANTED));
        add_secret(&mut current, secret("gone", PLANTED));
        let mut labelled = secret("api_key", PLANTED);
        add_secret(&mut current, labelled.clone());
        let mut desired = stack();
        add_secret(&mut desired, secret("db_password", "other"));
        add_secret(&mut desired, secret("new", PLANTED));
        labelled.labels.insert("team".to_string(), "edge".to_string());
        add_secret(&mut desired, labelled);

        let plan = plan(&desired, &current);
        assert_eq!((plan.summary.create, plan.summary.update), (1, 1));
        assert_eq!((plan.summary.remove, plan.summary.rotate), (1, 1));

        let outputs = [
            serde_json::to_string_pretty(&plan).unwrap(),
            render(&plan, false),
            render(&plan, true),
            format!("{plan:?}"),
        ];
        // The content could leak as text, as base64 (as configs serialize) or as a JSON byte array.
        let needles = [
            PLANTED.to_string(),
            base64_bytes::encode(PLANTED.as_bytes()),
            serde_json::to_string(PLANTED.as_bytes()).unwrap(),
        ];
        for output in outputs {
            for needle in &needles {
                assert!(!output.contains(needle), "secret content leaked into:\n{output}");
            }
        }
    }

    #[test]
    fn a_config_with_new_content_is_rotated_with_a_content_diff() {
        let mut current = stack();
        add_config(
            &mut current,
            config("nginx_conf", "server {\n  listen 80;\n  root /srv;\n}\n"),
        );
        let mut desired = stack();
        let new = config("nginx_conf", "server {\n  listen 8080;\n  root /srv;\n}\n");
        add_config(&mut desired, new.clone());

        let plan = plan(&desired, &current);

        let change = one_change(&plan);
        assert_eq!(change.address, "config.nginx_conf");
        assert_eq!(change.action, Action::Rotate);
        assert_eq!(change.after, serde_json::to_value(&new).unwrap());
        let text = render(&plan, false);
        let diff = [
            "    ~ data:",
            "        @@ -1,4 +1,4 @@",
            "         server {",
            "        -  listen 80;",
            "        +  listen 8080;",
            "           root /srv;",
            "         }",
        ]
        .join("\n");
        assert!(text.contains(&diff), "no content diff in:\n{text}");
        assert!(text.starts_with("± config.nginx_conf (rotate)\n"));
    }

    #[test]
    fn external_objects_are_referenced_never_created_or_removed() {
        let mut desired = stack();
        add_network(&mut desired, network("proxy", true));
        add_volume(&mut desired, volume("backups", true));
        add_secret(&mut desired, external_secret("tls_key", "prod_tls_key"));
        let mut current = stack();
        add_network(&mut current, network("legacy", true));

        let added = plan(&desired, &current);
        assert!(!added.has_changes(), "{:#?}", added.changes);
        assert_eq!(added.summary, Summary::default());
    }

    #[test]
    fn turning_an_object_external_or_managed_is_an_update() {
        let mut current = stack();
        add_network(&mut current, network("s_front", false));
        add_secret(&mut current, secret("tls_key", "pem"));
        let mut desired = stack();
        add_network(&mut desired, network("front", true));
        add_secret(&mut desired, external_secret("tls_key", "prod_tls_key"));

        let plan = plan(&desired, &current);

        let actions: Vec<(&str, Action)> = plan.changes.iter().map(|c| (c.address.as_str(), c.action)).collect();
        assert_eq!(
            actions,
            [("network.front", Action::Update), ("secret.tls_key", Action::Update)]
        );
        assert_eq!(field(&plan.changes[0], "external").after, json!(true));
    }

    #[test]
    fn pointing_at_another_external_secret_is_an_update_not_a_rotation() {
        let mut current = stack();
        add_secret(&mut current, external_secret("tls_key", "tls_2024"));
        let mut desired = stack();
        add_secret(&mut desired, external_secret("tls_key", "tls_2025"));

        let plan = plan(&desired, &current);

        assert_eq!(one_change(&plan).action, Action::Update);
    }

    #[test]
    fn objects_sharing_an_address_are_told_apart_by_stored_name() {
        let mut current = stack();
        add_network(&mut current, network("s_front", false));
        add_network(&mut current, network("front", true));
        let mut desired = current.clone();
        if let Some(n) = desired.networks.get_mut("s_front") {
            n.attachable = true;
        }

        let plan = plan(&desired, &current);

        assert_eq!(one_change(&plan).address, "network[\"s_front\"]");
        assert_eq!(plan.summary.unchanged, 1);
    }

    #[test]
    fn summary_counts_every_action() {
        let mut current = with_services([service("api", "api:1", 1), service("old", "old:1", 1)]);
        add_secret(&mut current, secret("db_password", "a"));
        add_volume(&mut current, volume("s_data", false));
        let mut desired = with_services([
            service("api", "api:2", 1),
            service("web", "nginx:1.27", 1),
            service("worker", "worker:1", 1),
        ]);
        add_secret(&mut desired, secret("db_password", "b"));
        add_volume(&mut desired, volume("s_data", false));

        let plan = plan(&desired, &current);

        assert_eq!(
            plan.summary,
            Summary {
                create: 2,
                update: 1,
                remove: 1,
                rotate: 1,
                unchanged: 1,
            }
        );
        assert!(render(&plan, false).ends_with("\nPlan: 2 to create, 1 to update, 1 to remove, 1 to rotate.\n"));
    }

    #[test]
    fn json_has_the_versioned_shape() {
        let mut current = stack();
        add_network(&mut current, network("s_front", false));
        add_volume(&mut current, volume("s_cache", false));
        let mut desired = stack();
        let mut front = network("s_front", false);
        front.attachable = true;
        add_network(&mut desired, front);

        let plan = plan(&desired, &current);

        let namespace = json!({ "com.docker.stack.namespace": "s" });
        let front = |attachable: bool| {
            json!({
                "name": "s_front", "driver": "overlay", "driver_opts": {}, "attachable": attachable,
                "internal": false, "enable_ipv6": false, "ipam": [], "labels": namespace, "external": false,
            })
        };
        assert_eq!(
            serde_json::to_value(&plan).unwrap(),
            json!({
                "format_version": "1",
                "stack": "s",
                "changes": [
                    {
                        "address": "network.front",
                        "kind": "network",
                        "actions": ["update"],
                        "before": front(false),
                        "after": front(true),
                        "fields": [
                            { "path": "attachable", "before": false, "after": true, "effect": "replace" },
                        ],
                        "replaces_tasks": false,
                    },
                    {
                        "address": "volume.cache",
                        "kind": "volume",
                        "actions": ["remove"],
                        "before": {
                            "name": "s_cache", "driver": "local", "driver_opts": {}, "labels": namespace,
                            "external": false,
                        },
                        "after": null,
                        "fields": [],
                        "replaces_tasks": false,
                    },
                ],
                "summary": { "create": 0, "update": 1, "remove": 1, "rotate": 0, "unchanged": 0 },
            })
        );
    }

    #[test]
    fn json_round_trips_with_the_optional_fields() {
        let current = with_services([service("web", "nginx:1.25", 1)]);
        let desired = with_services([service("web", "nginx:1.27", 1)]);
        let mut plan = plan(&desired, &current);
        plan.base_revision = Some(42);
        plan.changes[0].placement = Some(json!({ "node-1": 1 }));

        let text = serde_json::to_string(&plan).unwrap();

        assert!(text.contains("\"base_revision\":42") && text.contains("\"placement\":{\"node-1\":1}"));
        assert_eq!(Plan::from_json(&text).unwrap(), plan);
    }

    #[test]
    fn reading_a_plan_refuses_unknown_versions_and_bad_json() {
        let future = r#"{"format_version": "2", "stack": "s", "changes": [], "summary": {}}"#;
        let err = Plan::from_json(future).unwrap_err();
        assert!(matches!(&err, PlanError::UnsupportedVersion { found: Some(v) } if v == "2"));
        assert!(err.to_string().contains("reads version \"1\""), "{err}");

        let missing = Plan::from_json("{}").unwrap_err();
        assert!(missing.to_string().contains("format_version (missing)"), "{missing}");

        let two_actions = r#"{"format_version": "1", "stack": "s", "summary":
            {"create": 0, "update": 0, "remove": 0, "rotate": 0, "unchanged": 0},
            "changes": [{"address": "service.web", "kind": "service", "actions": ["remove", "create"],
            "before": null, "after": null, "fields": [], "replaces_tasks": false}]}"#;
        let err = Plan::from_json(two_actions).unwrap_err();
        assert!(err.to_string().contains("exactly one action"), "{err}");
    }

    #[test]
    fn human_output_of_a_small_plan() {
        let mut current = with_services([service("api", "nginx:1.25", 2)]);
        add_network(&mut current, network("s_old", false));
        let old = secret("db_password", "hunter2");
        add_secret(&mut current, old.clone());
        let mut web = service("web", "nginx:1.27", 1);
        web.ports = vec![port(8080, 80)];
        let mut desired = with_services([service("api", "nginx:1.27", 3), web]);
        let new = secret("db_password", "hunter3");
        add_secret(&mut desired, new.clone());

        let text = render(&plan(&desired, &current), false);

        let expected = format!(
            "- network.old (remove)

± secret.db_password (rotate)
    ~ digest: \"{}\" → \"{}\"
    ~ name: \"{}\" → \"{}\"

~ service.api (update, replaces tasks)
    ~ mode.replicas: 2 → 3
    ~ task.image: \"nginx:1.25\" → \"nginx:1.27\"

+ service.web (create)
    image: \"nginx:1.27\"
    mode: replicated, 1 replica
    ports: 8080:80/tcp

Plan: 1 to create, 1 to update, 1 to remove, 1 to rotate.
",
            old.digest, new.digest, old.name, new.name
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn colour_is_added_only_when_asked() {
        let desired = with_services([service("web", "nginx:1.27", 1)]);
        let plan = plan(&desired, &stack());

        assert!(!render(&plan, false).contains('\x1b'));
        let coloured = render(&plan, true);
        assert!(coloured.starts_with(&format!(
            "{} service.web",
            Style::new().green().force_styling(true).apply_to("+")
        )));
    }

    #[test]
    fn long_lists_are_shown_as_a_line_diff() {
        let mut web = service("web", "app:1", 1);
        web.task.command = Some(
            ["serve", "--port", "8080", "--workers", "4", "--log-format", "json"]
                .map(String::from)
                .to_vec(),
        );
        let current = with_services([web.clone()]);
        if let Some(command) = web.task.command.as_mut() {
            command[4] = "8".to_string();
        }
        let desired = with_services([web]);

        let text = render(&plan(&desired, &current), false);

        assert!(
            text.contains("    ~ task.command:\n        @@ -3,7 +3,7 @@\n"),
            "{text}"
        );
        assert!(text.contains("\n        -  \"4\",\n        +  \"8\",\n"), "{text}");
    }

    #[test]
    fn control_characters_in_config_content_are_escaped() {
        let mut current = stack();
        add_config(&mut current, config("motd", "hello\n"));
        let mut desired = stack();
        add_config(&mut desired, config("motd", "hello\n\x1b[2Jgone\n"));

        let text = render(&plan(&desired, &current), false);

        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(text.contains("+\\u{1b}[2Jgone"), "{text}");
    }

    fn stack_strategy() -> impl Strategy<Value = StackSpec> {
        let services = prop::collection::btree_map(
            prop::sample::select(vec!["web", "api", "worker"]),
            (
                prop::sample::select(vec!["nginx:1.25", "nginx:1.27"]),
                0..3u64,
                any::<bool>(),
            ),
            0..3,
        );
        let stored = || prop::sample::select(vec!["s_front", "s_back", "front", "back"]);
        let networks = prop::collection::btree_map(stored(), (any::<bool>(), any::<bool>()), 0..3);
        let volumes = prop::collection::btree_map(stored(), any::<bool>(), 0..3);
        let files = || {
            prop::collection::vec(
                (
                    prop::sample::select(vec!["a", "b"]),
                    prop::sample::select(vec!["x", "y"]),
                    any::<bool>(),
                ),
                0..3,
            )
        };
        (services, networks, volumes, files(), files()).prop_map(|(services, networks, volumes, secrets, configs)| {
            let mut spec = stack();
            for (key, (image, replicas, labelled)) in services {
                let mut s = service(key, image, replicas);
                if labelled {
                    s.labels.insert("tier".to_string(), "front".to_string());
                }
                spec.services.insert(s.name.clone(), s);
            }
            for (name, (external, attachable)) in networks {
                let mut n = network(name, external);
                n.attachable = attachable;
                add_network(&mut spec, n);
            }
            for (name, external) in volumes {
                add_volume(&mut spec, volume(name, external));
            }
            for (key, content, external) in secrets {
                let s = if external {
                    external_secret(key, content)
                } else {
                    secret(key, content)
                };
                add_secret(&mut spec, s);
            }
            for (key, content, external) in configs {
                let mut c = config(key, content);
                if external {
                    c.name = content.to_string();
                    c.source = ContentSource::External;
                }
                add_config(&mut spec, c);
            }
            spec
        })
    }

    fn object_count(spec: &StackSpec) -> usize {
        spec.services.len() + spec.networks.len() + spec.volumes.len() + spec.secrets.len() + spec.configs.len()
    }

    fn count(plan: &Plan, action: Action) -> usize {
        plan.changes.iter().filter(|c| c.action == action).count()
    }

    proptest! {
        #[test]
        fn a_stack_compared_with_itself_has_no_changes(spec in stack_strategy()) {
            let plan = plan(&spec, &spec);
            prop_assert!(!plan.has_changes());
            prop_assert_eq!(plan.summary, Summary { unchanged: object_count(&spec), ..Summary::default() });
        }

        #[test]
        fn plans_in_both_directions_agree(a in stack_strategy(), b in stack_strategy()) {
            let forward = plan(&a, &b);
            let backward = plan(&b, &a);
            prop_assert_eq!(forward.summary.create, backward.summary.remove);
            prop_assert_eq!(forward.summary.remove, backward.summary.create);
            prop_assert_eq!(forward.summary.update, backward.summary.update);
            prop_assert_eq!(forward.summary.rotate, backward.summary.rotate);
            prop_assert_eq!(forward.summary.unchanged, backward.summary.unchanged);
            for (action, counted) in [
                (Action::Create, forward.summary.create),
                (Action::Update, forward.summary.update),
                (Action::Remove, forward.summary.remove),
                (Action::Rotate, forward.summary.rotate),
            ] {
                prop_assert_eq!(count(&forward, action), counted);
            }
            let addresses: BTreeSet<&str> = forward.changes.iter().map(|c| c.address.as_str()).collect();
            prop_assert_eq!(addresses.len(), forward.changes.len());
            prop_assert!(forward.summary.create + forward.summary.update + forward.summary.rotate
                + forward.summary.unchanged <= object_count(&a));
            let text = serde_json::to_string(&forward).unwrap();
            prop_assert_eq!(Plan::from_json(&text).unwrap(), forward);
        }
    }
}
