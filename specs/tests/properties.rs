//! Properties of the loader: no input makes it panic, and spellings that mean the same stack give the same spec.

mod common;

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::Config;
use proptest::test_runner::RngSeed;
use swarm_specs::Diagnostics;
use swarm_specs::LoadOptions;
use swarm_specs::Loaded;

use common::MemFiles;

const PATH: &str = "/gen/stack.yml";

/// Fixed seed: every run tries the same inputs, and nothing is written next to the sources.
fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x5741_524d),
        failure_persistence: None,
        ..Config::default()
    }
}

fn load_bytes(bytes: &[u8], environment: &[(&str, &str)]) -> Result<Loaded, Diagnostics> {
    let options = LoadOptions {
        files: vec![PATH.into()],
        stack: Some("gen".into()),
        environment: environment
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..LoadOptions::default()
    };
    swarm_specs::load(&options, &MemFiles::default().with(PATH, bytes))
}

/// Loading must end in a spec or in errors that each say what is wrong.
fn load_never_panics(bytes: &[u8]) -> Result<(), TestCaseError> {
    // Variables that the generated `${...}` refer to, set and empty.
    if let Err(diagnostics) = load_bytes(bytes, &[("A", "a"), ("E", "")]) {
        prop_assert!(diagnostics.has_errors(), "failed without an error: {diagnostics}");
        for d in diagnostics.errors() {
            prop_assert!(!d.message.is_empty(), "an error without a message: {d:?}");
        }
    }
    Ok(())
}

// ---- arbitrary input -------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        load_never_panics(String::from_utf8_lossy(&bytes).as_bytes())?;
        load_never_panics(&bytes)?;
    }
}

/// A small YAML-ish grammar: mappings, lists (block and flow), scalars with `$`, anchors, aliases and `<<` merges.
#[derive(Debug, Clone)]
enum Y {
    Scalar(&'static str),
    Alias(&'static str),
    Anchored(&'static str, Box<Y>),
    Map(Vec<(&'static str, Y)>),
    List(Vec<Y>),
    FlowMap(Vec<(&'static str, Y)>),
    FlowList(Vec<Y>),
}

const KEYS: &[&str] = &[
    "services",
    "web",
    "api",
    "image",
    "deploy",
    "replicas",
    "mode",
    "environment",
    "ports",
    "secrets",
    "configs",
    "networks",
    "volumes",
    "x-common",
    "<<",
    "target",
    "published",
    "protocol",
    "source",
    "file",
    "external",
    "name",
    "command",
    "labels",
    "healthcheck",
    "test",
    "interval",
    "placement",
    "constraints",
    "resources",
    "limits",
    "memory",
    "cpus",
    "update_config",
    "max_failure_ratio",
    "order",
    "version",
    "driver",
    "x-swarm",
    "env_file",
    "\"quoted key\"",
    "1",
    "${A}",
    "? complex",
];

/// Scalars that YAML reads as plain values.
const SCALARS: &[&str] = &[
    "nginx",
    "nginx:1.27",
    "3",
    "-1",
    "0",
    "0440",
    "0o777",
    "1.5",
    "1e400",
    "true",
    "no",
    "null",
    "~",
    "''",
    "\"\"",
    "$",
    "$$",
    "$A",
    "${A}",
    "${A:-b}",
    "${E:-x}",
    "${A:?m}",
    "${Z:?missing}",
    "${",
    "${A",
    "$1",
    "${A:-${E:-$$}}",
    "'single'",
    "\"double\"",
    "80:80",
    "8080:80/udp",
    "127.0.0.1:80:80",
    "1-3:1-3",
    "1m30s",
    "10x",
    "512M",
    "1.5g",
    "node.role==manager",
    "node.labels.a != b",
    "é ü",
    "0x1F",
    "99999999999999999999",
    "global",
    "replicated",
    "start-first",
    "./file",
    "/abs",
    "data:/data:ro",
    "SIGTERM",
    "0.5",
    "external",
    "!!str x",
];

/// Scalars that are likely to break the YAML around them.
const RISKY: &[&str] = &[
    "a: b",
    "- c",
    "# comment",
    "-",
    "[",
    "{",
    "*",
    "&",
    "!tag x",
    "|",
    ">",
    "%",
    "@",
    "`",
];

fn yaml_value() -> impl Strategy<Value = Y> {
    let leaf = prop_oneof![
        12 => proptest::sample::select(SCALARS).prop_map(Y::Scalar),
        1 => proptest::sample::select(RISKY).prop_map(Y::Scalar),
        1 => proptest::sample::select(&["a", "b"][..]).prop_map(Y::Alias),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        let key = proptest::sample::select(KEYS);
        prop_oneof![
            4 => proptest::collection::vec((key.clone(), inner.clone()), 0..6).prop_map(Y::Map),
            2 => proptest::collection::vec(inner.clone(), 0..5).prop_map(Y::List),
            1 => (proptest::sample::select(&["a", "b"][..]), inner.clone()).prop_map(|(n, v)| Y::Anchored(n, Box::new(v))),
            1 => proptest::collection::vec((key, inner.clone()), 0..3).prop_map(Y::FlowMap),
            1 => proptest::collection::vec(inner, 0..3).prop_map(Y::FlowList),
        ]
    })
}

fn inline(y: &Y) -> Option<String> {
    match y {
        Y::Scalar(s) => Some(s.to_string()),
        Y::Alias(a) => Some(format!("*{a}")),
        Y::FlowMap(entries) => Some(format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{k}: {}", inline(v).unwrap_or_else(|| "{}".into())))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Y::FlowList(items) => Some(format!(
            "[{}]",
            items
                .iter()
                .map(|v| inline(v).unwrap_or_else(|| "[]".into()))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Y::Map(entries) if entries.is_empty() => Some("{}".into()),
        Y::List(items) if items.is_empty() => Some("[]".into()),
        Y::Anchored(name, v) => inline(v).map(|t| format!("&{name} {t}")),
        Y::Map(_) | Y::List(_) => None,
    }
}

/// Block style at `indent`; `head` is what precedes the value on its line (`key:` or `-`).
fn render(y: &Y, indent: usize, head: &str, out: &mut String) {
    let pad = " ".repeat(indent);
    if let Some(text) = inline(y) {
        out.push_str(&format!("{pad}{head} {text}\n"));
        return;
    }
    let (anchor, body) = match y {
        Y::Anchored(name, v) => (format!(" &{name}"), v.as_ref()),
        other => (String::new(), other),
    };
    if !head.is_empty() || !anchor.is_empty() {
        out.push_str(&format!("{pad}{head}{anchor}\n"));
    }
    let child = if head.is_empty() && anchor.is_empty() {
        indent
    } else {
        indent + 2
    };
    match body {
        Y::Map(entries) => {
            for (k, v) in entries {
                render(v, child, &format!("{k}:"), out);
            }
        }
        Y::List(items) => {
            for v in items {
                render(v, child, "-", out);
            }
        }
        other => render(other, child, "", out),
    }
}

fn document() -> impl Strategy<Value = String> {
    let service_map = proptest::collection::vec((proptest::sample::select(KEYS), yaml_value()), 0..6).prop_map(Y::Map);
    let services = proptest::collection::vec((proptest::sample::select(&["web", "api", "db"][..]), service_map), 1..3)
        .prop_map(|s| Y::Map(vec![("services", Y::Map(s))]));
    let root = prop_oneof![2 => yaml_value(), 3 => services];
    // A few stray characters, to reach the parser's error paths from nearly valid text.
    let noise = prop_oneof![
        3 => Just(vec![]),
        1 => proptest::collection::vec((any::<prop::sample::Index>(), proptest::sample::select(NOISE)), 1..4),
    ];
    (root, noise).prop_map(|(root, noise)| {
        let mut text = String::new();
        render(&root, 0, "", &mut text);
        for (at, c) in noise {
            let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
            text.insert(boundaries[at.index(boundaries.len())], c);
        }
        text
    })
}

const NOISE: &[char] = &[
    ' ', '\t', ':', '-', '{', '}', '[', ']', '&', '*', '$', '#', '\'', '"', '\n', '|', '>', '!', '%', '@', '`', '?',
    ',', '\\', '\u{feff}', '\0',
];

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn yaml_ish_text_never_panics(text in document()) {
        load_never_panics(text.as_bytes())?;
    }
}

#[test]
fn the_grammar_reaches_the_loader_beyond_yaml_errors() {
    // Without this, the property above could be passing on text that never gets past the YAML parser.
    let mut runner = proptest::test_runner::TestRunner::new(config(1));
    let (mut loaded, mut shape_errors) = (0, 0);
    let documents = document();
    for _ in 0..300 {
        let text = documents.new_tree(&mut runner).unwrap().current();
        match load_bytes(text.as_bytes(), &[("A", "a"), ("E", "")]) {
            Ok(_) => loaded += 1,
            Err(d) if d.errors().any(|e| e.path.starts_with("services")) => shape_errors += 1,
            Err(_) => {}
        }
    }
    println!("loaded {loaded}, errors below services {shape_errors}");
    assert!(
        loaded > 0 && shape_errors > 10,
        "loaded {loaded}, errors below services {shape_errors}"
    );
}

#[test]
fn deep_nesting_and_alias_bombs_are_errors_not_crashes() {
    for text in [
        "[".repeat(100_000),
        "{a: ".repeat(50_000),
        (0..5_000)
            .map(|i| format!("{}- x\n", " ".repeat(i)))
            .collect::<String>(),
        // Each level doubles the one before: 2^40 nodes if expanded.
        std::iter::once("a0: &a0 [x, x]\n".to_string())
            .chain((1..40).map(|i| format!("a{i}: &a{i} [*a{}, *a{}]\n", i - 1, i - 1)))
            .collect(),
    ] {
        let err = load_bytes(text.as_bytes(), &[]).expect_err("must be refused");
        assert!(err.has_errors(), "{err}");
    }
}

// ---- generated valid stacks ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct GenService {
    image: String,
    replicas: Option<u64>,
    env: BTreeMap<String, Option<String>>,
    /// (published, target, udp)
    ports: Vec<(u16, u16, bool)>,
    command: Option<Vec<String>>,
}

fn gen_service() -> impl Strategy<Value = GenService> {
    (
        "[a-z]{1,8}(/[a-z]{1,8})?(:[a-z0-9][a-z0-9.]{0,5})?",
        proptest::option::of(0u64..20),
        proptest::collection::btree_map(
            "[A-Z_][A-Z0-9_]{0,8}",
            proptest::option::weighted(0.9, "([a-zA-Z0-9 _=:#./-]|\\$\\$){0,12}"),
            0..5,
        ),
        proptest::collection::vec((1u16..=65535, any::<bool>()), 0..3),
        proptest::option::of(proptest::collection::vec("[a-z0-9][a-z0-9-]{0,5}", 1..4)),
    )
        .prop_map(|(image, replicas, env, targets, command)| GenService {
            image,
            replicas,
            env,
            ports: targets.into_iter().map(|(t, udp)| (0, t, udp)).collect(),
            command,
        })
}

/// Services with distinct names, and published ports that no two services share.
fn gen_stack() -> impl Strategy<Value = BTreeMap<String, GenService>> {
    proptest::collection::btree_map("[a-z][a-z0-9]{0,7}", gen_service(), 1..5).prop_map(|mut services| {
        let mut next = 20_000u16;
        for svc in services.values_mut() {
            for port in &mut svc.ports {
                port.0 = next;
                next += 1;
            }
        }
        services
    })
}

/// How a stack is spelled; every combination must mean the same stack.
#[derive(Debug, Clone, Copy)]
struct Spelling {
    env_as_list: bool,
    long_ports: bool,
    quoted_numbers: bool,
    block_command: bool,
    /// Order of services and of the keys inside each service.
    shuffle: u64,
}

fn spelling() -> impl Strategy<Value = Spelling> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<u64>()).prop_map(
        |(env_as_list, long_ports, quoted_numbers, block_command, shuffle)| Spelling {
            env_as_list,
            long_ports,
            quoted_numbers,
            block_command,
            shuffle,
        },
    )
}

/// Fisher-Yates with splitmix64: a deterministic order for a seed.
fn shuffled<T>(mut items: Vec<T>, seed: &mut u64) -> Vec<T> {
    for i in (1..items.len()).rev() {
        *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        items.swap(i, (z % (i as u64 + 1)) as usize);
    }
    items
}

fn render_stack(services: &BTreeMap<String, GenService>, s: Spelling) -> String {
    let mut seed = s.shuffle;
    let mut out = String::from("services:\n");
    for (name, svc) in shuffled(services.iter().collect(), &mut seed) {
        out.push_str(&format!("  {name}:\n"));
        let mut parts: Vec<String> = vec![format!("    image: \"{}\"\n", svc.image)];
        if let Some(r) = svc.replicas {
            let r = if s.quoted_numbers {
                format!("\"{r}\"")
            } else {
                r.to_string()
            };
            parts.push(format!("    deploy:\n      replicas: {r}\n"));
        }
        if !svc.env.is_empty() {
            let mut text = String::from("    environment:\n");
            for (k, v) in shuffled(svc.env.iter().collect(), &mut seed) {
                text.push_str(&match (s.env_as_list, v) {
                    (true, Some(v)) => format!("      - \"{k}={v}\"\n"),
                    (true, None) => format!("      - {k}\n"),
                    (false, Some(v)) => format!("      {k}: \"{v}\"\n"),
                    (false, None) => format!("      {k}:\n"),
                });
            }
            parts.push(text);
        }
        if !svc.ports.is_empty() {
            let mut text = String::from("    ports:\n");
            for (published, target, udp) in &svc.ports {
                let protocol = if *udp { "udp" } else { "tcp" };
                text.push_str(&if s.long_ports {
                    let (p, t) = if s.quoted_numbers {
                        (format!("\"{published}\""), format!("\"{target}\""))
                    } else {
                        (published.to_string(), target.to_string())
                    };
                    format!("      - target: {t}\n        published: {p}\n        protocol: {protocol}\n")
                } else if *udp {
                    format!("      - \"{published}:{target}/udp\"\n")
                } else {
                    format!("      - \"{published}:{target}\"\n")
                });
            }
            parts.push(text);
        }
        if let Some(cmd) = &svc.command {
            parts.push(if s.block_command {
                let items: String = cmd.iter().map(|c| format!("      - \"{c}\"\n")).collect();
                format!("    command:\n{items}")
            } else {
                format!("    command: {}\n", cmd.join(" "))
            });
        }
        for part in shuffled(parts, &mut seed) {
            out.push_str(&part);
        }
    }
    out
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn generated_stack_loads_to_what_it_says(services in gen_stack(), s in spelling()) {
        let text = render_stack(&services, s);
        let loaded = load_bytes(text.as_bytes(), &[]).map_err(|d| TestCaseError::fail(format!("{d}\n---\n{text}")))?;
        prop_assert_eq!(loaded.stack.services.len(), services.len());
        for (name, want) in &services {
            let svc = &loaded.stack.services[&format!("gen_{name}")];
            prop_assert_eq!(svc.task.image.as_deref(), Some(want.image.as_str()));
            prop_assert_eq!(
                &svc.mode,
                &swarm_specs::spec::ServiceMode::Replicated { replicas: want.replicas.unwrap_or(1) }
            );
            let env: BTreeMap<String, Option<String>> = want
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.as_ref().map(|v| v.replace("$$", "$"))))
                .collect();
            prop_assert_eq!(&svc.task.env, &env);
            prop_assert_eq!(&svc.task.command, &want.command);
            let mut ports: Vec<(Option<u16>, u16)> = svc.ports.iter().map(|p| (p.published, p.target)).collect();
            ports.sort();
            let mut want_ports: Vec<(Option<u16>, u16)> = want.ports.iter().map(|p| (Some(p.0), p.1)).collect();
            want_ports.sort();
            prop_assert_eq!(ports, want_ports);
        }
    }

    #[test]
    fn spelling_and_order_do_not_change_the_spec(services in gen_stack(), a in spelling(), b in spelling()) {
        let (text_a, text_b) = (render_stack(&services, a), render_stack(&services, b));
        let one = load_bytes(text_a.as_bytes(), &[]).map_err(|d| TestCaseError::fail(format!("{d}\n---\n{text_a}")))?;
        let two = load_bytes(text_b.as_bytes(), &[]).map_err(|d| TestCaseError::fail(format!("{d}\n---\n{text_b}")))?;
        prop_assert_eq!(one.stack, two.stack, "\n--- one\n{}\n--- two\n{}", text_a, text_b);
    }
}

#[test]
fn spellings_really_differ() {
    // The equality property is only worth something if the two texts it compares are not the same text.
    let services = BTreeMap::from([(
        "web".to_string(),
        GenService {
            image: "nginx".into(),
            replicas: Some(2),
            env: BTreeMap::from([("A".into(), Some("1".into())), ("B".into(), None)]),
            ports: vec![(20000, 80, false)],
            command: Some(vec!["serve".into()]),
        },
    )]);
    let plain = Spelling {
        env_as_list: false,
        long_ports: false,
        quoted_numbers: false,
        block_command: false,
        shuffle: 0,
    };
    let other = Spelling {
        env_as_list: true,
        long_ports: true,
        quoted_numbers: true,
        block_command: true,
        shuffle: 7,
    };
    let (a, b) = (render_stack(&services, plain), render_stack(&services, other));
    assert_ne!(a, b);
    assert!(a.contains("A: \"1\"") && b.contains("- \"A=1\""), "{a}\n{b}");
    let (one, two) = (
        load_bytes(a.as_bytes(), &[]).unwrap(),
        load_bytes(b.as_bytes(), &[]).unwrap(),
    );
    assert_eq!(one.stack, two.stack);
}
