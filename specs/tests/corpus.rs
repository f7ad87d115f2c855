//! Real-world stack files load, and docker/cli's full example loads to what docker's own loader reads from it.

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::Path;

use serde_json::Value as Json;
use swarm_specs::spec::ContentSource;
use swarm_specs::spec::ServiceMode;
use swarm_specs::spec::ServiceSpec;
use swarm_specs::LoadOptions;
use swarm_specs::Loaded;
use swarm_specs::StackSpec;

use common::MemFiles;
use common::CORPUS;

#[test]
fn corpus_table_lists_every_file_in_the_corpus() {
    let Some(dir) = common::corpus_dir() else { return };
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yml") || n.ends_with(".yaml"))
        .collect();
    let listed: BTreeSet<String> = CORPUS.iter().map(|c| c.name.to_string()).collect();
    assert_eq!(
        on_disk,
        listed,
        "tests/common/mod.rs CORPUS must list exactly the files in {}",
        dir.display()
    );
}

#[test]
fn every_corpus_file_loads_without_errors() {
    let Some(dir) = common::corpus_dir() else { return };
    let mut failures = Vec::new();
    for case in CORPUS {
        let files = case.files(&dir);
        let loaded = match swarm_specs::load(&case.options(&dir), &files) {
            Ok(loaded) => loaded,
            Err(diagnostics) => {
                failures.push(format!("{}: rejected:\n{diagnostics}", case.name));
                continue;
            }
        };
        if !files.unused().is_empty() {
            failures.push(format!("{}: placeholders never read: {:?}", case.name, files.unused()));
        }
        let unset: Vec<String> = loaded
            .diagnostics
            .warnings()
            .filter(|w| w.message.contains("variable is not set"))
            .map(ToString::to_string)
            .collect();
        if !unset.is_empty() {
            failures.push(format!("{}: variables left unset:\n{}", case.name, unset.join("\n")));
        }
        let text = std::fs::read_to_string(dir.join(case.name)).unwrap();
        let expected: BTreeSet<String> = common::generic_yaml(&text)["services"]
            .as_object()
            .map(|m| m.keys().map(|k| format!("corpus_{k}")).collect())
            .unwrap_or_default();
        let ours: BTreeSet<String> = loaded.stack.services.keys().cloned().collect();
        if ours != expected {
            failures.push(format!("{}: services {ours:?}, the file has {expected:?}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn load_corpus(name: &str) -> Option<Loaded> {
    let dir = common::corpus_dir()?;
    let case = CORPUS.iter().find(|c| c.name == name).expect("listed in CORPUS");
    Some(
        swarm_specs::load(&case.options(&dir), &case.files(&dir))
            .unwrap_or_else(|d| panic!("{name} does not load:\n{d}")),
    )
}

fn service<'a>(stack: &'a StackSpec, key: &str) -> &'a ServiceSpec {
    let name = format!("{}_{key}", stack.name);
    stack
        .services
        .get(&name)
        .unwrap_or_else(|| panic!("no service {name}; have {:?}", stack.services.keys()))
}

fn env<'a>(svc: &'a ServiceSpec, key: &str) -> Option<&'a str> {
    svc.task.env.get(key).and_then(|v| v.as_deref())
}

#[test]
fn corpus_variables_replace_their_defaults() {
    if let Some(faas) = load_corpus("openfaas__faas__docker-compose.yml") {
        let gateway = service(&faas.stack, "gateway");
        assert_eq!(env(gateway, "basic_auth"), Some("true"));
        assert_eq!(
            env(gateway, "auth_proxy_url"),
            Some("http://basic-auth-plugin:8080/validate")
        );
        // Numbers in an environment mapping become their text.
        assert_eq!(env(gateway, "faas_nats_port"), Some("4222"));
    }
    if let Some(voting) = load_corpus("BretFisher__dogvscat__stack-voting.yml") {
        let drivers: BTreeSet<&str> = voting.stack.volumes.values().map(|v| v.driver.as_str()).collect();
        assert_eq!(drivers, BTreeSet::from(["rexray/dobs"]));
    }
    if let Some(prom) = load_corpus("stefanprodan__swarmprom__docker-compose.yml") {
        let command = service(&prom.stack, "prometheus")
            .task
            .command
            .clone()
            .unwrap_or_default();
        assert!(
            command.contains(&"--storage.tsdb.retention=48h".to_string()),
            "{command:?}"
        );
    }
    if let Some(prom) = load_corpus("BretFisher__dogvscat__stack-swarmprom.yml") {
        assert_eq!(
            env(service(&prom.stack, "grafana"), "GF_SECURITY_ADMIN_USER"),
            Some("root")
        );
        assert_eq!(env(service(&prom.stack, "alertmanager"), "SLACK_CHANNEL"), Some("ops"));
        // Unset, so the default applies.
        assert_eq!(
            env(service(&prom.stack, "alertmanager"), "SLACK_USER"),
            Some("alertmanager")
        );
    }
}

/// htpasswd hashes (`$2y$05$...`) inside a `${VAR:-default}` are kept literally, as `docker stack config` does.
#[test]
fn htpasswd_hash_in_a_default_stays_literal() {
    let Some(elk) = load_corpus("BretFisher__dogvscat__stack-elk.yml") else {
        return;
    };
    let kibana = service(&elk.stack, "kibana");
    assert_eq!(
        kibana
            .labels
            .get("traefik.http.middlewares.kibana-auth.basicauth.users")
            .map(String::as_str),
        Some("admin:$2y$05$oZcj4FgdSFEYNCH0EH/3Vu7Hp72gkvEadHzMsDhGFkbvS/ZrKMKfK")
    );
}

#[test]
fn escaped_dollars_reach_the_command_as_single_dollars() {
    let Some(ghost) = load_corpus("BretFisher__dogvscat__stack-ghost.yml") else {
        return;
    };
    let command = service(&ghost.stack, "db-backup")
        .task
        .command
        .clone()
        .unwrap_or_default();
    assert_eq!(command.first().map(String::as_str), Some("sh"));
    assert_eq!(command.get(1).map(String::as_str), Some("-c"));
    assert!(
        command[2].contains("--password=$(< $MYSQL_ROOT_PASSWORD_FILE)"),
        "{command:?}"
    );
}

// ---- docker/cli's full example -------------------------------------------------------------------------------

/// Where the full example is served from: docker's golden file was made with `/foo` as the working directory.
const FULL_DIR: &str = "/foo";
const FULL_STACK: &str = "full";

/// Changes to docker/cli's full example before loading it, each for something that `docker stack deploy` itself
/// rejects (docker's loader does not check these; its deploy step does). Everything else is loaded as written.
const FULL_EXAMPLE_EDITS: &[(&str, &str, &str)] = &[
    (
        "constraints: [node=foo]",
        "constraints: [node.hostname==foo]",
        "`node=foo` is not a Swarm constraint (swarmkit only knows == and !=)",
    ),
    (
        "  secret4:\n    name: bar\n",
        "  secret4:\n    name: bar\n    file: ./secret_data\n",
        "a stack-defined secret needs content; docker's golden shows it reading the directory /foo",
    ),
    (
        "  config4:\n    name: foo\n",
        "  config4:\n    name: foo\n    file: ./config_data\n",
        "a stack-defined config needs content; docker's golden shows it reading the directory /foo",
    ),
    (
        "  external-network:\n",
        "  other-other-network:\n\n  external-network:\n",
        "docker's convert step fails with `undefined network \"other-other-network\"`",
    ),
    (
        "  external-volume:\n",
        "  datavolume:\n\n  external-volume:\n",
        "docker's convert step fails with `undefined volume \"datavolume\"`",
    ),
    (
        "      - type: cluster\n        source: group:mygroup\n        target: /srv\n",
        "",
        "cluster (CSI) volumes need a CSI plugin on a Docker Swarm; swarm has none",
    ),
];

/// docker/cli's env files for the full example (cli/compose/loader/testdata), as its loader test sees them.
const EXAMPLE1_ENV: &str = "# passed through\nFOO=foo_from_env_file\n\n# overridden in example2.env\nBAR=bar_from_env_file\n\n# overridden in full-example.yml\nBAZ=baz_from_env_file\n";
const EXAMPLE2_ENV: &str =
    "BAR=bar_from_env_file_2\n\n# overridden in configDetails.Environment\nQUX=quz_from_env_file_2\n";

fn full_example() -> Option<(Result<Loaded, swarm_specs::Diagnostics>, Json)> {
    let dir = common::reference_dir()?;
    let mut text = std::fs::read_to_string(dir.join("docker-cli-full-example.yml")).unwrap();
    for (from, to, why) in FULL_EXAMPLE_EDITS {
        assert_eq!(text.matches(from).count(), 1, "edit {from:?} ({why}) no longer applies");
        text = text.replacen(from, to, 1);
    }
    let golden: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("docker-cli-full-example.golden.json")).unwrap())
            .unwrap();
    let path = Path::new(FULL_DIR).join("docker-compose.yml");
    let files = MemFiles::default()
        .with(&path, text)
        .with("/foo/example1.env", EXAMPLE1_ENV)
        .with("/foo/example2.env", EXAMPLE2_ENV)
        .with("/foo/secret_data", "secret payload\n")
        .with("/foo/config_data", "config payload\n");
    let options = LoadOptions {
        files: vec![path],
        stack: Some(FULL_STACK.into()),
        // docker/cli made its golden file with HOME=/root.
        environment: BTreeMap::from([
            ("QUX".to_string(), "qux_from_environment".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ]),
        ..LoadOptions::default()
    };
    Some((swarm_specs::load(&options, &files), golden))
}

#[test]
fn full_example_loads_and_warns_about_keys_a_swarm_ignores() {
    let Some((loaded, _)) = full_example() else { return };
    let loaded = loaded.unwrap_or_else(|d| panic!("docker/cli's full example does not load:\n{d}"));
    let warning = loaded
        .diagnostics
        .warnings()
        .find(|w| w.path == "services.foo" && w.message.starts_with("Ignoring unsupported options: "))
        .unwrap_or_else(|| panic!("no `Ignoring unsupported options` warning in:\n{}", loaded.diagnostics));
    // docker/cli's types.UnsupportedProperties that the example sets. (`restart` is in docker's list too, yet its
    // convert uses it as the restart policy when deploy.restart_policy is absent; we honour it, so we do not warn.)
    for key in [
        "build",
        "cgroup_parent",
        "devices",
        "domainname",
        "external_links",
        "ipc",
        "links",
        "mac_address",
        "network_mode",
        "pid",
        "privileged",
        "security_opt",
    ] {
        assert!(warning.message.contains(key), "{key} missing from: {warning}");
    }
}

/// Collects every difference between our spec and docker's golden parse, so one run shows them all.
#[derive(Default)]
struct Diff(Vec<String>);

impl Diff {
    fn same<T: PartialEq + Debug>(&mut self, field: &str, ours: T, docker: T) {
        if ours != docker {
            self.0
                .push(format!("{field}:\n    ours:   {ours:?}\n    docker: {docker:?}"));
        }
    }
}

fn text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

fn texts(v: &Json) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(text).collect()).unwrap_or_default()
}

fn string_map(v: &Json) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        .unwrap_or_default()
}

/// Go's `time.Duration` text as docker prints it (`1m0s`, `10s`, `500ms`), in milliseconds.
fn go_duration_ms(v: &Json) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a duration: {v}"));
    let mut total = 0.0;
    let mut number = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(n) = chars.peek().filter(|n| n.is_ascii_alphabetic()) {
            unit.push(*n);
            chars.next();
        }
        let scale = match unit.as_str() {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1_000.0,
            "ms" => 1.0,
            other => panic!("unit {other} in {s}"),
        };
        total += number.parse::<f64>().unwrap() * scale;
        number.clear();
    }
    total.round() as u64
}

/// Docker's `cpus` text (`"0.001"`) in billionths of a CPU.
fn nano_cpus(v: &Json) -> u64 {
    let s = text(v);
    let (whole, frac) = s.split_once('.').unwrap_or((&s, ""));
    let frac = format!("{frac:0<9}");
    whole.parse::<u64>().unwrap() * 1_000_000_000 + frac[..9].parse::<u64>().unwrap()
}

fn number(v: &Json) -> u64 {
    match v {
        Json::Number(n) => n.as_u64().unwrap(),
        Json::String(s) => s.parse().unwrap(),
        other => panic!("not a number: {other}"),
    }
}

/// Serde name of one of our enums (`tcp`, `ingress`, `start-first`, ...), to compare with docker's text.
fn name<T: serde::Serialize>(value: &T) -> String {
    text(&serde_json::to_value(value).unwrap())
}

/// A mount as both sides can say it: type, source, target, read-only, tmpfs size.
type MountRow = (String, Option<String>, String, bool, Option<u64>);

#[test]
fn full_example_matches_dockers_golden_parse() {
    let Some((loaded, golden)) = full_example() else { return };
    let loaded = loaded.unwrap_or_else(|d| panic!("docker/cli's full example does not load:\n{d}"));
    let stack = &loaded.stack;
    let g = &golden["services"]["foo"];
    let foo = service(stack, "foo");
    let task = &foo.task;
    let mut d = Diff::default();

    d.same("image", task.image.clone(), Some(text(&g["image"])));
    d.same("command", task.command.clone(), Some(texts(&g["command"])));
    d.same("entrypoint", task.entrypoint.clone(), Some(texts(&g["entrypoint"])));
    d.same(
        "environment",
        task.env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
            .collect(),
        string_map(&g["environment"]),
    );
    d.same("hostname", task.hostname.clone(), Some(text(&g["hostname"])));
    d.same("user", task.user.clone(), Some(text(&g["user"])));
    d.same("working_dir", task.working_dir.clone(), Some(text(&g["working_dir"])));
    d.same(
        "stop_grace_period",
        task.stop_grace_period_ms,
        go_duration_ms(&g["stop_grace_period"]),
    );
    d.same("stop_signal", task.stop_signal.clone(), Some(text(&g["stop_signal"])));
    d.same("cap_add", task.cap_add.clone(), texts(&g["cap_add"]));
    d.same("cap_drop", task.cap_drop.clone(), texts(&g["cap_drop"]));
    d.same("dns", task.dns.clone(), texts(&g["dns"]));
    d.same("dns_search", task.dns_search.clone(), texts(&g["dns_search"]));
    let mut hosts = texts(&g["extra_hosts"]);
    hosts.sort();
    d.same("extra_hosts", task.extra_hosts.clone(), hosts);
    d.same(
        "flags read_only/stdin_open/tty",
        (task.read_only, task.stdin_open, task.tty),
        (g["read_only"] == true, g["stdin_open"] == true, g["tty"] == true),
    );
    d.same("sysctls", task.sysctls.clone(), string_map(&g["sysctls"]));
    let mut labels = task.container_labels.clone();
    labels.remove("com.docker.stack.namespace");
    d.same("labels", labels, string_map(&g["labels"]));
    d.same(
        "logging",
        task.logging.as_ref().map(|l| (l.driver.clone(), l.options.clone())),
        Some((text(&g["logging"]["driver"]), string_map(&g["logging"]["options"]))),
    );

    // Ports: docker expands ranges and drops the host IP; both sides sorted.
    let ours_ports: BTreeSet<(u16, Option<u16>, String, String)> = foo
        .ports
        .iter()
        .map(|p| (p.target, p.published, name(&p.protocol), name(&p.mode)))
        .collect();
    let docker_ports: BTreeSet<(u16, Option<u16>, String, String)> = g["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                number(&p["target"]) as u16,
                p.get("published").map(|n| number(n) as u16),
                text(&p["protocol"]),
                text(&p["mode"]),
            )
        })
        .collect();
    d.same("ports", ours_ports, docker_ports);
    d.same(
        "ports (count, ranges expanded)",
        foo.ports.len(),
        g["ports"].as_array().unwrap().len(),
    );

    // Secrets and configs: source by the name the file uses, target made absolute as the engine does.
    let refs = |kind: &str| -> BTreeSet<(String, String, String, String, Option<u32>)> {
        let (refs, keys): (&Vec<_>, BTreeMap<&String, &String>) = if kind == "secrets" {
            (&task.secrets, stack.secrets.iter().map(|(n, s)| (n, &s.key)).collect())
        } else {
            (&task.configs, stack.configs.iter().map(|(n, c)| (n, &c.key)).collect())
        };
        let explicit: BTreeMap<String, Option<u32>> = g[kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (text(&r["source"]), r.get("mode").map(|m| number(m) as u32)))
            .collect();
        refs.iter()
            .map(|r| {
                let key = keys
                    .get(&r.source)
                    .map(|k| k.to_string())
                    .unwrap_or_else(|| r.source.clone());
                // Only modes written in the file are in the golden; defaults are checked in docker_differential.rs.
                let mode = explicit.get(&key).copied().flatten().map(|_| r.mode);
                (key, r.target.clone(), r.uid.clone(), r.gid.clone(), mode)
            })
            .collect()
    };
    let docker_refs = |kind: &str, dir: &str| -> BTreeSet<(String, String, String, String, Option<u32>)> {
        g[kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let source = text(&r["source"]);
                let target = r.get("target").map(text).unwrap_or_else(|| source.clone());
                let target = if target.starts_with('/') {
                    target
                } else {
                    format!("{dir}{target}")
                };
                let uid = r.get("uid").map(text).unwrap_or_else(|| "0".into());
                let gid = r.get("gid").map(text).unwrap_or_else(|| "0".into());
                (source, target, uid, gid, r.get("mode").map(|m| number(m) as u32))
            })
            .collect()
    };
    d.same("secrets", refs("secrets"), docker_refs("secrets", "/run/secrets/"));
    d.same("configs", refs("configs"), docker_refs("configs", "/"));

    // Networks: the file's names, stored as <stack>_<name>.
    let docker_networks: BTreeMap<String, Vec<String>> = g["networks"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (format!("{FULL_STACK}_{k}"), texts(&v["aliases"])))
        .collect();
    d.same(
        "networks",
        task.networks
            .iter()
            .map(|n| (n.target.clone(), n.aliases.clone()))
            .collect::<BTreeMap<_, _>>(),
        docker_networks,
    );

    // Mounts.
    let home = "/root";
    let docker_mounts: BTreeSet<MountRow> = g["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] != "cluster")
        .map(|v| {
            let kind = text(&v["type"]);
            let source = v.get("source").map(text).map(|s| match kind.as_str() {
                "volume" => format!("{FULL_STACK}_{s}"),
                _ => s.replace("/bar/", &format!("{home}/")),
            });
            (
                kind,
                source,
                text(&v["target"]),
                v["read_only"] == true,
                v["tmpfs"].get("size").map(number),
            )
        })
        .collect();
    d.same(
        "volumes",
        task.mounts
            .iter()
            .map(|m| {
                (
                    name(&m.kind),
                    m.source.clone(),
                    m.target.clone(),
                    m.read_only,
                    m.tmpfs_size,
                )
            })
            .collect::<BTreeSet<_>>(),
        docker_mounts,
    );

    d.same(
        "healthcheck",
        task.healthcheck.as_ref().map(|h| {
            (
                h.test.clone(),
                h.interval_ms,
                h.timeout_ms,
                h.start_period_ms,
                h.start_interval_ms,
                h.retries,
            )
        }),
        Some((
            texts(&g["healthcheck"]["test"]),
            Some(go_duration_ms(&g["healthcheck"]["interval"])),
            Some(go_duration_ms(&g["healthcheck"]["timeout"])),
            Some(go_duration_ms(&g["healthcheck"]["start_period"])),
            Some(go_duration_ms(&g["healthcheck"]["start_interval"])),
            Some(number(&g["healthcheck"]["retries"])),
        )),
    );
    let docker_ulimits: BTreeMap<String, (i64, i64)> = g["ulimits"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| match v {
            Json::Number(n) => (k.clone(), (n.as_i64().unwrap(), n.as_i64().unwrap())),
            pair => (
                k.clone(),
                (pair["soft"].as_i64().unwrap(), pair["hard"].as_i64().unwrap()),
            ),
        })
        .collect();
    d.same(
        "ulimits",
        task.ulimits
            .iter()
            .map(|(k, u)| (k.clone(), (u.soft, u.hard)))
            .collect(),
        docker_ulimits,
    );

    // deploy.
    let dg = &g["deploy"];
    d.same(
        "deploy.mode/replicas",
        foo.mode.clone(),
        ServiceMode::Replicated {
            replicas: number(&dg["replicas"]),
        },
    );
    d.same(
        "deploy.endpoint_mode",
        name(&foo.endpoint_mode),
        text(&dg["endpoint_mode"]),
    );
    let mut service_labels = foo.labels.clone();
    service_labels.remove("com.docker.stack.namespace");
    service_labels.remove("com.docker.stack.image");
    d.same("deploy.labels", service_labels, string_map(&dg["labels"]));
    let r = &task.resources;
    let rg = &dg["resources"];
    d.same(
        "deploy.resources.limits (nano cpus, bytes, pids)",
        (r.limits.nano_cpus, r.limits.memory_bytes, r.limits.pids),
        (
            nano_cpus(&rg["limits"]["cpus"]),
            number(&rg["limits"]["memory"]),
            number(&rg["limits"]["pids"]) as i64,
        ),
    );
    d.same(
        "deploy.resources.reservations (nano cpus, bytes)",
        (r.reservations.nano_cpus, r.reservations.memory_bytes),
        (
            nano_cpus(&rg["reservations"]["cpus"]),
            number(&rg["reservations"]["memory"]),
        ),
    );
    for (field, ours) in [
        ("update_config", &foo.update_config),
        ("rollback_config", &foo.rollback_config),
    ] {
        let u = &dg[field];
        d.same(
            &format!("deploy.{field}"),
            (
                ours.parallelism,
                ours.delay_ms,
                name(&ours.failure_action),
                ours.monitor_ms,
                ours.max_failure_ratio_ppm,
                name(&ours.order),
            ),
            (
                number(&u["parallelism"]),
                go_duration_ms(&u["delay"]),
                text(&u["failure_action"]),
                go_duration_ms(&u["monitor"]),
                (u["max_failure_ratio"].as_f64().unwrap() * 1e6).round() as u32,
                text(&u["order"]),
            ),
        );
    }
    let rp = &task.restart_policy;
    let rpg = &dg["restart_policy"];
    d.same(
        "deploy.restart_policy",
        (name(&rp.condition), rp.delay_ms, rp.max_attempts, rp.window_ms),
        (
            text(&rpg["condition"]),
            go_duration_ms(&rpg["delay"]),
            number(&rpg["max_attempts"]),
            go_duration_ms(&rpg["window"]),
        ),
    );
    let pg = &dg["placement"];
    d.same(
        "deploy.placement preferences/max_replicas_per_node",
        (task.placement.preferences.clone(), task.placement.max_replicas_per_node),
        (
            pg["preferences"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| text(&p["spread"]))
                .collect(),
            number(&pg["max_replicas_per_node"]),
        ),
    );

    // Top-level objects: stored name, and whether the stack owns them.
    let object_names = |kind: &str| -> BTreeMap<String, bool> {
        golden[kind]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let external = v["external"] == true;
                let name = match v.get("name") {
                    Some(n) if external => text(n),
                    Some(n) => format!("{}-", text(n)),
                    None => format!("{FULL_STACK}_{k}-"),
                };
                (name, external)
            })
            .collect()
    };
    // Stack-defined secrets/configs get a content digest after the `-`: compare the part before it.
    let strip_digest = |name: &str, external: bool| -> String {
        if external {
            name.to_string()
        } else {
            name.rsplit_once('-').map(|(a, _)| format!("{a}-")).unwrap_or_default()
        }
    };
    d.same(
        "secrets (stored names)",
        stack
            .secrets
            .values()
            .map(|s| {
                let external = s.source == ContentSource::External;
                (strip_digest(&s.name, external), external)
            })
            .collect(),
        object_names("secrets"),
    );
    d.same(
        "configs (stored names)",
        stack
            .configs
            .values()
            .map(|c| {
                let external = c.source == ContentSource::External;
                (strip_digest(&c.name, external), external)
            })
            .collect(),
        object_names("configs"),
    );
    let mut docker_networks: BTreeMap<String, (bool, Option<String>)> = BTreeMap::new();
    for (k, v) in golden["networks"].as_object().unwrap() {
        let external = v["external"] == true;
        let stored = if external {
            text(&v["name"])
        } else {
            format!("{FULL_STACK}_{k}")
        };
        let driver = (!external).then(|| v.get("driver").map(text).unwrap_or_else(|| "overlay".into()));
        docker_networks.insert(stored, (external, driver));
    }
    // Our edit defines other-other-network (docker's golden only has it on the service).
    docker_networks.insert(
        format!("{FULL_STACK}_other-other-network"),
        (false, Some("overlay".into())),
    );
    d.same(
        "networks (stored name, external, driver)",
        stack
            .networks
            .values()
            .map(|n| (n.name.clone(), (n.external, (!n.external).then(|| n.driver.clone()))))
            .collect(),
        docker_networks,
    );
    let other = stack.networks.get(&format!("{FULL_STACK}_other-network"));
    let og = &golden["networks"]["other-network"];
    d.same(
        "networks.other-network driver_opts/subnets",
        other.map(|n| {
            (
                n.driver_opts.clone(),
                n.ipam.iter().filter_map(|p| p.subnet.clone()).collect::<Vec<_>>(),
            )
        }),
        Some((
            string_map(&og["driver_opts"]),
            og["ipam"]["config"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| text(&c["subnet"]))
                .collect(),
        )),
    );
    let mut docker_volumes: BTreeMap<String, (bool, Option<String>)> = BTreeMap::new();
    for (k, v) in golden["volumes"].as_object().unwrap() {
        let external = v["external"] == true;
        let stored = v.get("name").map(text).unwrap_or_else(|| format!("{FULL_STACK}_{k}"));
        let driver = (!external).then(|| v.get("driver").map(text).unwrap_or_else(|| "local".into()));
        docker_volumes.insert(stored, (external, driver));
    }
    docker_volumes.insert(format!("{FULL_STACK}_datavolume"), (false, Some("local".into())));
    d.same(
        "volumes (stored name, external, driver)",
        stack
            .volumes
            .values()
            .map(|v| (v.name.clone(), (v.external, (!v.external).then(|| v.driver.clone()))))
            .collect(),
        docker_volumes,
    );

    assert!(
        d.0.is_empty(),
        "our spec differs from docker's golden parse of the full example:\n{}",
        d.0.join("\n")
    );
}
