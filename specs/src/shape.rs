//! Checks a YAML tree against the stack file's JSON Schema and types its scalars, reporting every mismatch at once.
//!
//! The schema is generated from `crate::compose`, so the file format is declared once: this walker reads it to know
//! which keys exist (unknown ones get a did-you-mean), which values are numbers (`"3"` and `3` both work, `0400` is
//! octal), and which enum values are valid. Its output is JSON that deserializes into `ComposeFile` as is.

use serde_json::Map;
use serde_json::Value as Json;

use crate::diag::Pos;
use crate::diag::Severity;
use crate::diag::Spans;
use crate::units::did_you_mean;
use crate::yaml::Node;
use crate::yaml::Value;

/// One problem found while walking, before file names are attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub pos: Pos,
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

/// The result of walking one file.
#[derive(Debug, Default)]
pub struct Shaped {
    pub value: Json,
    /// Where each field path's value was written.
    pub spans: Spans,
    pub findings: Vec<Finding>,
}

pub fn shape(node: &Node, root_schema: &Json) -> Shaped {
    let mut walker = Walker {
        root: root_schema,
        findings: Vec::new(),
        spans: Spans::default(),
    };
    let value = walker.walk(node, root_schema, "").unwrap_or(Json::Null);
    Shaped {
        value,
        spans: walker.spans,
        findings: walker.findings,
    }
}

struct Walker<'a> {
    root: &'a Json,
    findings: Vec<Finding>,
    spans: Spans,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn types_of(schema: &Json) -> Vec<&str> {
    match schema.get("type") {
        Some(Json::String(t)) => vec![t.as_str()],
        Some(Json::Array(ts)) => ts.iter().filter_map(Json::as_str).collect(),
        _ if schema.get("properties").is_some() || schema.get("additionalProperties").is_some() => vec!["object"],
        _ if schema.get("enum").is_some() => vec!["string"],
        _ => vec![],
    }
}

fn found(node: &Node) -> String {
    match &node.value {
        Value::Null => "nothing (null)".into(),
        Value::Scalar { text, .. } => format!("{text:?}"),
        Value::Seq(_) => "a list".into(),
        Value::Map(_) => "a mapping".into(),
    }
}

/// YAML 1.1 booleans, as Compose files use them.
fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "y" | "Y" => Some(true),
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "n" | "N" => Some(false),
        _ => None,
    }
}

/// Integers: decimal, `0x`/`0o` prefixes, and YAML 1.1 octal (`0400`) for unquoted values.
fn parse_int(text: &str, plain: bool) -> Option<i128> {
    let t = text.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let magnitude = if let Some(hex) = digits.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i128::from_str_radix(oct, 8).ok()?
    } else if plain && digits.len() > 1 && digits.starts_with('0') && digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        i128::from_str_radix(digits, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<i128>().ok()?
    } else {
        return None;
    };
    Some(if neg { -magnitude } else { magnitude })
}

fn describe(schema: &Json, types: &[&str]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for t in types {
        let d = match *t {
            "integer" if schema.get("minimum").and_then(Json::as_f64) == Some(0.0) => "a non-negative integer",
            "integer" => "an integer",
            "number" => "a number",
            "boolean" => "true or false",
            "string" => "a string",
            "array" => "a list",
            "object" => "a mapping",
            _ => continue,
        };
        parts.push(d.to_string());
    }
    if parts.is_empty() {
        "a value".into()
    } else {
        parts.join(" or ")
    }
}

impl<'a> Walker<'a> {
    fn error(&mut self, pos: Pos, path: &str, message: String, hint: Option<String>) {
        self.findings.push(Finding {
            severity: Severity::Error,
            pos,
            path: path.to_string(),
            message,
            hint,
        });
    }

    fn resolve(&self, schema: &'a Json) -> &'a Json {
        let mut s = schema;
        for _ in 0..32 {
            match s.get("$ref").and_then(Json::as_str) {
                Some(r) => {
                    let name = r.rsplit('/').next().unwrap_or(r);
                    match self.root.get("$defs").and_then(|d| d.get(name)) {
                        Some(target) => s = target,
                        None => return s,
                    }
                }
                None => return s,
            }
        }
        s
    }

    /// Whether a schema takes only null.
    fn is_null_only(&self, schema: &'a Json) -> bool {
        types_of(self.resolve(schema)) == ["null"]
    }

    /// The node kind a schema takes: "object", "array" or "scalar" (None when several or any).
    fn kind(&self, schema: &'a Json) -> Option<&'static str> {
        let s = self.resolve(schema);
        let types = types_of(s);
        let non_null: Vec<&&str> = types.iter().filter(|t| **t != "null").collect();
        match non_null.as_slice() {
            [] => None,
            ts if ts.iter().all(|t| !matches!(**t, "object" | "array")) => Some("scalar"),
            [t] => Some(if **t == "object" { "object" } else { "array" }),
            _ => None,
        }
    }

    fn walk(&mut self, node: &Node, schema: &'a Json, path: &str) -> Option<Json> {
        let schema = self.resolve(schema);
        if is_any(schema) {
            self.spans.push(path, node.pos);
            return Some(any_json(node));
        }
        if let Some(alternatives) = schema
            .get("anyOf")
            .or_else(|| schema.get("oneOf"))
            .and_then(Json::as_array)
        {
            return self.walk_alternatives(node, alternatives, path);
        }
        self.spans.push(path, node.pos);
        let types = types_of(schema);
        match &node.value {
            Value::Null => {
                if types.contains(&"object") {
                    return self.walk_map(&[], node.pos, schema, path);
                }
                Some(Json::Null)
            }
            Value::Map(entries) => {
                if types.contains(&"object") {
                    self.walk_map(entries, node.pos, schema, path)
                } else {
                    let message = format!("expected {}, found {}", describe(schema, &types), found(node));
                    self.error(node.pos, path, message, None);
                    None
                }
            }
            Value::Seq(items) => {
                if !types.contains(&"array") {
                    let message = format!("expected {}, found {}", describe(schema, &types), found(node));
                    self.error(node.pos, path, message, None);
                    return None;
                }
                let item_schema = schema.get("items").unwrap_or(&Json::Bool(true));
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match self.walk(item, item_schema, &format!("{path}[{i}]")) {
                        Some(v) => out.push(v),
                        None => ok = false,
                    }
                }
                // Items that did not fit are reported and left out, so that the rest can still be checked.
                let _ = ok;
                Some(Json::Array(out))
            }
            Value::Scalar { text, plain } => self.walk_scalar(node, text, *plain, schema, &types, path),
        }
    }

    fn walk_alternatives(&mut self, node: &Node, alternatives: &'a [Json], path: &str) -> Option<Json> {
        if matches!(node.value, Value::Null) && alternatives.iter().any(|a| types_of(self.resolve(a)).contains(&"null"))
        {
            self.spans.push(path, node.pos);
            return Some(Json::Null);
        }
        // Usually exactly one alternative takes this kind of node (`Option<T>` is "T or null"; short or long
        // syntax is "string or mapping"): walk it directly, with no trial and no copying.
        let node_kind = match node.value {
            Value::Map(_) => Some("object"),
            Value::Seq(_) => Some("array"),
            Value::Scalar { .. } => Some("scalar"),
            Value::Null => None,
        };
        let candidates: Vec<&'a Json> = alternatives.iter().filter(|a| self.kind(a) == node_kind).collect();
        let undecided = alternatives
            .iter()
            .any(|a| self.kind(a).is_none() && !self.is_null_only(a));
        if let ([only], false) = (candidates.as_slice(), undecided) {
            return self.walk(node, only, path);
        }
        for alternative in alternatives {
            let mut trial = Walker {
                root: self.root,
                findings: Vec::new(),
                spans: Spans::default(),
            };
            if let Some(v) = trial.walk(node, alternative, path) {
                if trial.findings.is_empty() {
                    self.spans.extend(trial.spans);
                    return Some(v);
                }
            }
        }
        // Nothing fits: explain with the alternative of the node's own kind, which is what the author meant.
        let node_kind = match node.value {
            Value::Map(_) => "object",
            Value::Seq(_) => "array",
            _ => "scalar",
        };
        let same_kind: Vec<&Json> = alternatives
            .iter()
            .filter(|a| self.kind(a) == Some(node_kind))
            .collect();
        if let [only] = same_kind.as_slice() {
            return self.walk(node, only, path);
        }
        let expected: Vec<String> = alternatives
            .iter()
            .map(|a| {
                let r = self.resolve(a);
                describe(r, &types_of(r))
            })
            .filter(|d| d != "a value")
            .collect();
        let message = format!("expected {}, found {}", expected.join(" or "), found(node));
        self.error(node.pos, path, message, None);
        None
    }

    fn walk_map(
        &mut self,
        entries: &[(crate::yaml::Key, Node)],
        pos: Pos,
        schema: &'a Json,
        path: &str,
    ) -> Option<Json> {
        let properties = schema.get("properties").and_then(Json::as_object);
        let property_names = || {
            properties
                .map(|p| p.keys().map(String::as_str).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let additional = schema.get("additionalProperties");
        let mut out = Map::new();
        let mut ok = true;
        for (key, value) in entries {
            let child_path = join(path, &key.name);
            let child_schema = if let Some(s) = properties.and_then(|p| p.get(&key.name)) {
                s
            } else if key.name.starts_with("x-") && properties.is_some_and(|p| !p.is_empty()) {
                continue; // extension fields are free-form and ignored
            } else {
                match additional {
                    Some(Json::Bool(false)) => {
                        let names = property_names();
                        let hint = match did_you_mean(&key.name, &names) {
                            Some(s) => Some(format!("did you mean \"{s}\"?")),
                            None if names.len() <= 12 => Some(format!("valid keys here: {}", names.join(", "))),
                            None => Some("`swarm schema` prints every valid key".to_string()),
                        };
                        self.error(key.pos, &child_path, format!("unknown key \"{}\"", key.name), hint);
                        ok = false;
                        continue;
                    }
                    Some(s) if s.is_object() => s,
                    _ => &Json::Bool(true),
                }
            };
            match self.walk(value, child_schema, &child_path) {
                // A key written with no value means "not set" unless the field takes null.
                Some(Json::Null) if !self.allows_null(child_schema) => {}
                Some(v) => {
                    out.insert(key.name.clone(), v);
                }
                None => ok = false,
            }
        }
        // A key that failed is reported and left out, so the rest of the file can still be checked; only a missing
        // required key makes the whole mapping unusable.
        let _ = ok;
        let mut complete = true;
        if let Some(required) = schema.get("required").and_then(Json::as_array) {
            for name in required.iter().filter_map(Json::as_str) {
                if !out.contains_key(name) {
                    complete = false;
                    if !entries.iter().any(|(k, _)| k.name == name) {
                        let message = format!("missing required key \"{name}\"");
                        self.error(pos, path, message, None);
                    }
                }
            }
        }
        complete.then_some(Json::Object(out))
    }

    fn allows_null(&self, schema: &'a Json) -> bool {
        let s = self.resolve(schema);
        if types_of(s).contains(&"null") {
            return true;
        }
        s.get("anyOf")
            .or_else(|| s.get("oneOf"))
            .and_then(Json::as_array)
            .is_some_and(|alts| alts.iter().any(|a| types_of(self.resolve(a)).contains(&"null")))
    }

    fn walk_scalar(
        &mut self,
        node: &Node,
        text: &str,
        plain: bool,
        schema: &Json,
        types: &[&str],
        path: &str,
    ) -> Option<Json> {
        let mismatch = |this: &mut Self| {
            let message = format!("expected {}, found {}", describe(schema, types), found(node));
            this.error(node.pos, path, message, None);
            None
        };
        let value = if types.contains(&"string") {
            Json::String(text.to_string())
        } else if types.contains(&"integer") {
            let Some(n) = parse_int(text, plain) else {
                return mismatch(self);
            };
            let (format_min, format_max): (Option<i128>, Option<i128>) =
                match schema.get("format").and_then(Json::as_str) {
                    Some("uint8") => (Some(0), Some(u8::MAX.into())),
                    Some("uint16") => (Some(0), Some(u16::MAX.into())),
                    Some("uint32" | "uint") => (Some(0), Some(u32::MAX.into())),
                    Some("uint64") => (Some(0), Some(u64::MAX.into())),
                    Some("int32") => (Some(i32::MIN.into()), Some(i32::MAX.into())),
                    Some("int64") => (Some(i64::MIN.into()), Some(i64::MAX.into())),
                    _ => (None, None),
                };
            let bound = |key: &str| schema.get(key).and_then(Json::as_f64).map(|f| f as i128);
            let min = bound("minimum").or(format_min);
            let max = bound("maximum")
                .map(|m| format_max.map_or(m, |f| m.min(f)))
                .or(format_max);
            if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                let range = match (min, max) {
                    (Some(lo), _) if n < lo => format!("at least {lo}"),
                    (_, Some(hi)) => format!("at most {hi}"),
                    _ => String::new(),
                };
                let message = format!("expected {}, found {}", describe(schema, types), found(node));
                self.error(node.pos, path, message, Some(format!("the value must be {range}")));
                return None;
            }
            match (i64::try_from(n), u64::try_from(n)) {
                (Ok(v), _) => Json::from(v),
                (_, Ok(v)) => Json::from(v),
                _ => return mismatch(self),
            }
        } else if types.contains(&"number") {
            match text.trim().parse::<f64>() {
                Ok(f) if f.is_finite() => serde_json::Number::from_f64(f).map(Json::Number)?,
                _ => return mismatch(self),
            }
        } else if types.contains(&"boolean") {
            match parse_bool(text) {
                Some(b) => Json::Bool(b),
                None => return mismatch(self),
            }
        } else {
            return mismatch(self);
        };
        if let Some(allowed) = schema.get("enum").and_then(Json::as_array) {
            if !allowed.contains(&value) {
                let names: Vec<&str> = allowed.iter().filter_map(Json::as_str).collect();
                let hint = did_you_mean(text, &names).map(|s| format!("did you mean \"{s}\"?"));
                let message = format!("invalid value {text:?}: expected one of {}", names.join(", "));
                self.error(node.pos, path, message, hint);
                return None;
            }
        }
        Some(value)
    }
}

/// A schema that constrains nothing (`true`, `{}`, or only annotations such as `writeOnly`).
fn is_any(schema: &Json) -> bool {
    const CONSTRAINTS: &[&str] = &[
        "type",
        "$ref",
        "anyOf",
        "oneOf",
        "properties",
        "additionalProperties",
        "enum",
        "items",
        "const",
    ];
    match schema {
        Json::Bool(b) => *b,
        Json::Object(o) => !CONSTRAINTS.iter().any(|k| o.contains_key(*k)),
        _ => false,
    }
}

/// A node with no schema to follow: scalars typed by the YAML core schema.
pub fn any_json(node: &Node) -> Json {
    match &node.value {
        Value::Null => Json::Null,
        Value::Scalar { text, plain: false } => Json::String(text.clone()),
        Value::Scalar { text, plain: true } => {
            if let Some(b) = parse_bool(text).filter(|_| matches!(text.as_str(), "true" | "false" | "True" | "False")) {
                Json::Bool(b)
            } else if let Some(n) = parse_int(text, true).and_then(|n| i64::try_from(n).ok()) {
                Json::from(n)
            } else if let Some(f) = text.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                Json::Number(f)
            } else {
                Json::String(text.clone())
            }
        }
        Value::Seq(items) => Json::Array(items.iter().map(any_json).collect()),
        Value::Map(entries) => Json::Object(entries.iter().map(|(k, v)| (k.name.clone(), any_json(v))).collect()),
    }
}
