//! The stack file's JSON Schema as published for editors (`swarm schema`, `schemas/stack.schema.json`).
//!
//! It is the schema the loader checks against, loosened where Compose is looser than the types: any number or
//! boolean may be written as a string (`replicas: ${REPLICAS}`), and `x-*` extension keys are allowed on every
//! object that has fixed keys.

use serde_json::json;
use serde_json::Value as Json;

use crate::loader::raw_schema;

pub fn editor_schema() -> Json {
    let mut schema = raw_schema().clone();
    loosen(&mut schema);
    if let Json::Object(root) = &mut schema {
        root.insert("$id".into(), json!("https://swarm.invalid/schemas/stack.schema.json"));
        root.insert(
            "title".into(),
            json!("swarm stack file (Compose format as docker stack deploy reads it)"),
        );
    }
    schema
}

fn loosen(value: &mut Json) {
    match value {
        Json::Object(map) => {
            if let Some(t) = map.get_mut("type") {
                let mut types: Vec<Json> = match t {
                    Json::String(s) => vec![Json::String(s.clone())],
                    Json::Array(a) => a.clone(),
                    _ => vec![],
                };
                let scalar = types
                    .iter()
                    .any(|t| matches!(t.as_str(), Some("integer" | "number" | "boolean")));
                if scalar && !types.contains(&json!("string")) {
                    types.push(json!("string"));
                    *t = Json::Array(types);
                    // Bounds and formats describe the number; a string is checked when the stack is loaded.
                    map.remove("format");
                }
            }
            if map.get("additionalProperties") == Some(&Json::Bool(false)) {
                map.insert("patternProperties".into(), json!({ "^x-": {} }));
            }
            for v in map.values_mut() {
                loosen(v);
            }
        }
        Json::Array(items) => items.iter_mut().for_each(loosen),
        _ => {}
    }
}
