//! Secrets and configs end to end: a planted secret value that must never show up in a log, a CLI output, the
//! Raft files or anywhere else on the managers' and the worker's disks, while the container reads it (with its
//! owner and mode) from `/run/secrets`; rotation by content; delivery only to the node that runs the task, on a
//! tmpfs that goes away with the task; a joining manager that gets the key; workers refused; and autolock.

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::harness::holds_for;
use crate::harness::wait_until;
use crate::harness::Cluster;
use crate::harness::Run;
use crate::services::tasks;

const IMAGE: &str = "swarm-test/busybox:1";
const SWARM: &str = env!("CARGO_BIN_EXE_swarm");

/// A value found nowhere unless it leaked: unique per run.
fn plant(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("planted-{what}-{nanos:x}-{}", std::process::id())
}

fn base64(data: &[u8]) -> String {
    swarm_specs::spec::base64_bytes::encode(data)
}

/// The node's directory (data, socket, log), from its socket's path.
pub fn node_dir(c: &Cluster, name: &str) -> PathBuf {
    c.socket(name).parent().expect("socket in the node dir").to_path_buf()
}

pub fn data_dir(c: &Cluster, name: &str) -> PathBuf {
    node_dir(c, name).join("data")
}

/// Every file under `dir` (and `dir` itself, when it is a file).
pub fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if meta.is_file() {
        out.push(dir.to_path_buf());
    } else if meta.is_dir() {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            files_under(&entry.path(), out);
        }
    }
}

/// Where any of `needles` occurs in `haystack` (the needle's index).
pub fn find_any(haystack: &[u8], needles: &[Vec<u8>]) -> Option<usize> {
    needles
        .iter()
        .position(|n| !n.is_empty() && haystack.windows(n.len()).any(|w| w == n.as_slice()))
}

/// The planted values as they could appear: raw, and base64 (as they travel in requests).
pub fn needles(plants: &[String]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for p in plants {
        out.push(p.as_bytes().to_vec());
        // The content is the whole file, so its base64 starts at a group boundary: its first 24 characters.
        out.push(base64(p.as_bytes()).as_bytes()[..24].to_vec());
    }
    out
}

/// Whether `dir` is a mount point of a tmpfs.
pub fn is_tmpfs(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let wanted = dir.display().to_string();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.get(4) == Some(&wanted.as_str()) && f.iter().skip_while(|x| **x != "-").nth(1) == Some(&"tmpfs")
    })
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("run docker")
}

/// The running container of `service` (one task).
fn container_of(service: &str) -> Result<String, String> {
    let out = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.swarm.service.name={service}"),
    ]);
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    match ids.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(format!("containers of {service}: {other:?}")),
    }
}

fn exec(container: &str, args: &[&str]) -> String {
    let mut all = vec!["exec", container];
    all.extend_from_slice(args);
    let out = docker(&all);
    assert!(
        out.status.success(),
        "docker {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl` to `manager`'s TLS port as node `name` (its certificate): HTTP status and body.
fn curl_as(c: &Cluster, name: &str, manager: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let tls = data_dir(c, name).join("tls");
    let port = c
        .addr(manager)
        .rsplit_once(':')
        .map(|(_, p)| p.to_string())
        .unwrap_or_default();
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--max-time", "10", "-X", method])
        .arg("--cacert")
        .arg(tls.join("ca.pem"))
        .arg("--cert")
        .arg(tls.join("node.pem"))
        .arg("--key")
        .arg(tls.join("node.key"))
        .args(["--resolve", &format!("swarm-manager:{port}:127.0.0.1")])
        .args(["-H", "content-type: application/json", "--write-out", "\n%{http_code}"]);
    if let Some(body) = body {
        cmd.args(["--data-binary", body]);
    }
    let out = cmd
        .arg(format!("https://swarm-manager:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (answer, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.trim().parse().unwrap_or(0), answer.to_string())
}

/// `swarm -H SOCKET ARGS` with `input` on standard input (the harness gives commands none).
fn swarm_with_input(c: &Cluster, name: &str, args: &[&str], input: &str) -> Run {
    use std::io::Write as _;
    let start = std::time::Instant::now();
    let mut child = Command::new(SWARM)
        .arg("-H")
        .arg(c.socket(name))
        .args(args)
        .env_remove("SWARM_HOST")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run swarm");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait for swarm");
    Run {
        command: format!("swarm {} (on {name}, with input)", args.join(" ")),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// The stored names `secret ls` lists.
pub fn secret_names(c: &Cluster, manager: &str) -> Vec<String> {
    let out = c.swarm(manager, &["secret", "ls"]).ok().stdout;
    out.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

fn stack_file(db_file: &str) -> String {
    format!(
        r#"
services:
  app:
    image: {IMAGE}
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    stop_grace_period: 2s
    secrets:
      - db_password
      - source: api_key
        target: api
        uid: "1000"
        gid: "1001"
        mode: 0440
    configs:
      - source: app_conf
        target: /etc/app.conf
    deploy:
      placement:
        constraints: [node.hostname == w1]
secrets:
  db_password:
    file: ./{db_file}
  api_key:
    external: true
configs:
  app_conf:
    file: ./app.conf
"#
    )
}

#[test]
fn a_planted_secret_never_leaves_its_lane() {
    swarm_agent::testing::ensure_busybox_image(IMAGE, "1").expect("test image");
    let mut c = Cluster::new();
    c.init("m1");
    c.join_manager("m2");
    c.join_worker("w1");
    c.wait_all_ready();
    let mut outputs: Vec<String> = Vec::new();
    let mut keep = |run: Run| -> Run {
        outputs.push(format!("{}\n{}\n{}", run.command, run.stdout, run.stderr));
        run
    };

    // The manager that joined got the key from the other, over their mutual-TLS channel, and keeps it wrapped.
    wait_until("m2 holds the secrets key", Duration::from_secs(20), || {
        let path = data_dir(&c, "m2").join("secrets/key.json");
        std::fs::read_to_string(&path)
            .map(|_| ())
            .map_err(|e| format!("{}: {e}", path.display()))
    });
    assert!(
        data_dir(&c, "m2").join("secrets/kek").exists(),
        "without autolock the KEK sits beside it"
    );
    assert!(!data_dir(&c, "w1").join("secrets").exists(), "a worker holds no key");

    let db1 = plant("db1");
    let db2 = plant("db2");
    let db3 = plant("db3");
    let api = plant("api");
    let plants = [db1.clone(), db2.clone(), db3.clone(), api.clone()];
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("api.txt"), &api).unwrap();
    std::fs::write(dir.path().join("db1.txt"), &db1).unwrap();
    std::fs::write(dir.path().join("app.conf"), "[app]\nport = 80\n").unwrap();
    let file = dir.path().join("docker-stack.yml");
    let file = file.to_str().unwrap().to_string();

    // A secret made by hand, used by the stack as an external one.
    let api_file = dir.path().join("api.txt");
    keep(
        c.swarm(
            "m1",
            &[
                "secret",
                "create",
                "--label",
                "team=db",
                "api_key",
                api_file.to_str().unwrap(),
            ],
        )
        .ok(),
    );
    keep(c.swarm("m1", &["secret", "create", "api_key", api_file.to_str().unwrap()]))
        .fails_with("secret api_key already exists");

    // Workers' certificates are refused on the secrets API and on the managers' key transfer.
    let (code, body) = curl_as(&c, "w1", "m1", "GET", "/v1/secrets", None);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("worker certificate"), "{body}");
    let create = format!(r#"{{"name":"x","data":"{}"}}"#, base64(b"x"));
    let (code, body) = curl_as(&c, "w1", "m2", "POST", "/v1/secrets", Some(&create));
    assert_eq!(code, 400, "{body}");
    let (code, body) = curl_as(&c, "w1", "m1", "GET", "/v1/internal/secrets-key", None);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("for managers"), "{body}");
    // A manager's certificate gets the key (what a joining manager does); it is base64 of 32 random bytes.
    let (code, body) = curl_as(&c, "m2", "m1", "GET", "/v1/internal/secrets-key", None);
    assert_eq!(code, 200, "{body}");

    // Plan and apply: the content travels to the leader, sealed before it enters the log.
    std::fs::write(&file, stack_file("db1.txt")).unwrap();
    keep(c.swarm("m1", &["plan", "-f", &file, "--stack", "sec"]));
    keep(c.swarm("m1", &["plan", "-f", &file, "--stack", "sec", "--format", "json"]));
    keep(
        c.swarm("m2", &["apply", "-f", &file, "--stack", "sec", "--yes", "--no-color"])
            .ok(),
    );

    // In the container: the files with their owner and mode, read-only.
    let container = wait_until("the app container runs", Duration::from_secs(30), || {
        container_of("sec_app")
    });
    assert_eq!(exec(&container, &["cat", "/run/secrets/db_password"]), db1);
    assert_eq!(exec(&container, &["cat", "/run/secrets/api"]), api);
    assert_eq!(exec(&container, &["cat", "/etc/app.conf"]), "[app]\nport = 80\n");
    let modes = exec(
        &container,
        &[
            "stat",
            "-c",
            "%n %u %g %a",
            "/run/secrets/db_password",
            "/run/secrets/api",
            "/etc/app.conf",
        ],
    );
    assert_eq!(
        modes,
        "/run/secrets/db_password 0 0 400\n/run/secrets/api 1000 1001 440\n/etc/app.conf 0 0 444\n"
    );
    let write = docker(&["exec", &container, "sh", "-c", "echo x > /run/secrets/db_password"]);
    assert!(!write.status.success(), "the secret is mounted read-only");

    // Delivered to w1 only, onto a tmpfs; the managers got nothing.
    let w1_files = data_dir(&c, "w1").join("task-files");
    assert!(is_tmpfs(&w1_files), "{} is a tmpfs", w1_files.display());
    for manager in ["m1", "m2"] {
        assert!(
            !data_dir(&c, manager).join("task-files").exists(),
            "{manager} received nothing"
        );
    }

    // Every view of it, none with the content.
    let stored: Vec<String> = secret_names(&c, "m1");
    let db_name = stored
        .iter()
        .find(|n| n.starts_with("sec_db_password-"))
        .expect("the stack's secret")
        .clone();
    for args in [
        vec!["secret", "ls"],
        vec!["secret", "inspect", "api_key", &db_name],
        vec!["secret", "inspect", "--pretty", "api_key"],
        vec!["config", "ls"],
        vec!["stack", "ps", "sec", "--no-trunc"],
        vec!["stack", "history", "sec"],
        vec!["stack", "services", "sec"],
        vec!["service", "inspect", "sec_app"],
        vec!["service", "inspect", "--pretty", "sec_app"],
        vec!["service", "ps", "sec_app"],
        vec!["debug", "tasks"],
    ] {
        keep(c.swarm("m1", &args).ok());
    }
    let inspect = keep(c.swarm("m1", &["secret", "inspect", "api_key"]).ok());
    let v: Value = serde_json::from_str(&inspect.stdout).expect("inspect JSON");
    assert_eq!(v[0]["Spec"]["Name"], "api_key");
    assert_eq!(v[0]["Spec"]["Labels"]["team"], "db");
    assert!(v[0]["Spec"].get("Data").is_none());

    // In use: refused, naming the service.
    keep(c.swarm("m1", &["secret", "rm", "api_key"])).fails_with("in use by the following service: sec_app");

    // Rotation by content: a new stored name, the service rolls, the container reads the new value.
    std::fs::write(dir.path().join("db2.txt"), &db2).unwrap();
    std::fs::write(&file, stack_file("db2.txt")).unwrap();
    keep(c.swarm("m1", &["plan", "-f", &file, "--stack", "sec"]));
    keep(c.swarm("m1", &["apply", "-f", &file, "--stack", "sec", "--yes"]).ok());
    wait_until("the app reads the rotated secret", Duration::from_secs(30), || {
        let id = container_of("sec_app")?;
        let out = docker(&["exec", &id, "cat", "/run/secrets/db_password"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text == db2).then_some(()).ok_or_else(|| "not yet".to_string())
    });
    // The first version stays while the service's previous spec names it (a `service rollback` needs it); one
    // rotation later nothing does, and it goes — with no earlier versions kept for `stack rollback` (the default
    // keeps 2 per secret).
    keep(c.swarm("m1", &["update", "--secret-history-limit", "0"]).ok());
    std::fs::write(dir.path().join("db3.txt"), &db3).unwrap();
    std::fs::write(&file, stack_file("db3.txt")).unwrap();
    keep(c.swarm("m1", &["apply", "-f", &file, "--stack", "sec", "--yes"]).ok());
    wait_until("the first version is removed", Duration::from_secs(20), || {
        let names = secret_names(&c, "m1");
        match (
            names.contains(&db_name),
            names.iter().filter(|n| n.starts_with("sec_db_password-")).count(),
        ) {
            (false, 2) => Ok(()),
            _ => Err(format!("{names:?}")),
        }
    });
    let container = container_of("sec_app").expect("the app runs");
    assert_eq!(exec(&container, &["cat", "/run/secrets/db_password"]), db3);

    // The task stops: its files go, and the tmpfs with them.
    keep(c.swarm("m1", &["stack", "rm", "sec"]).ok());
    wait_until(
        "the app's container and files are gone",
        Duration::from_secs(30),
        || {
            let containers = docker(&["ps", "-aq", "--filter", "label=io.swarm.service.name=sec_app"]);
            if !containers.stdout.is_empty() {
                return Err("a container is left".into());
            }
            if w1_files.exists() || is_tmpfs(&w1_files) {
                let mut left = Vec::new();
                files_under(&w1_files, &mut left);
                return Err(format!("{} still there: {left:?}", w1_files.display()));
            }
            Ok(())
        },
    );
    wait_until("the stack's secrets are removed", Duration::from_secs(20), || {
        let names = secret_names(&c, "m1");
        (names == ["api_key"]).then_some(()).ok_or_else(|| format!("{names:?}"))
    });
    keep(c.swarm("m1", &["secret", "rm", "api_key"]).ok());

    // Nothing anywhere: CLI outputs, daemon logs, and every file of every node (Raft log, snapshots, state).
    let needles = needles(&plants);
    for text in &outputs {
        if let Some(i) = find_any(text.as_bytes(), &needles) {
            panic!("planted value {i} leaked in CLI output:\n{text}");
        }
    }
    for node in ["m1", "m2", "w1"] {
        let mut files = Vec::new();
        files_under(&node_dir(&c, node), &mut files);
        assert!(
            node == "w1"
                || files.iter().any(|f| f.ends_with("raft/raft.redb"))
                    && files.iter().any(|f| f.ends_with("raft/state.redb")),
            "{node}: no Raft log or state file scanned: {files:?}"
        );
        for path in files {
            let Ok(bytes) = std::fs::read(&path) else { continue };
            if let Some(i) = find_any(&bytes, &needles) {
                panic!("planted value {i} found in {}", path.display());
            }
        }
    }
}

/// The unlock key printed in an output.
fn unlock_key_in(text: &str) -> String {
    text.split_whitespace()
        .find(|w| w.starts_with("SWMKEY-1-"))
        .unwrap_or_else(|| panic!("no unlock key in:\n{text}"))
        .to_string()
}

fn key_file(c: &Cluster) -> Value {
    let text = std::fs::read_to_string(data_dir(c, "m1").join("secrets/key.json")).expect("key.json");
    serde_json::from_str(&text).expect("key.json is JSON")
}

#[test]
fn autolock_keeps_a_restarted_manager_locked_until_unlocked() {
    let mut c = Cluster::new();
    c.add("m1");
    let addr = c.addr("m1");
    let init = c
        .swarm(
            "m1",
            &["init", "--autolock", "--advertise-addr", &addr, "--listen-addr", &addr],
        )
        .ok();
    let key1 = unlock_key_in(&init.stdout);
    assert!(init.stdout.contains("swarm unlock"), "{}", init.stdout);
    assert!(
        !data_dir(&c, "m1").join("secrets/kek").exists(),
        "no KEK on disk with autolock"
    );
    assert_eq!(unlock_key_in(&c.swarm("m1", &["unlock-key"]).ok().stdout), key1);

    // A process task reads its secret from SWARM_SECRETS_DIR.
    let dir = tempfile::tempdir().expect("temp dir");
    let secret_file = dir.path().join("s.txt");
    std::fs::write(&secret_file, "opensesame").unwrap();
    c.swarm("m1", &["secret", "create", "s1", secret_file.to_str().unwrap()])
        .ok();
    let stack = r#"
services:
  app:
    command: ["sh", "-c", "[ \"$$(cat $$SWARM_SECRETS_DIR/s1)\" = opensesame ] && echo has-secret; trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    x-swarm: {driver: process}
    stop_grace_period: 2s
    secrets: [s1]
    deploy:
      restart_policy: {delay: 500ms}
secrets:
  s1: {external: true}
"#;
    let file = dir.path().join("docker-stack.yml");
    std::fs::write(&file, stack).unwrap();
    let file = file.to_str().unwrap().to_string();
    c.swarm("m1", &["apply", "-f", &file, "--stack", "lk", "--yes"]).ok();
    wait_until("the task read its secret", Duration::from_secs(20), || {
        let logs = c.swarm("m1", &["service", "logs", "lk_app"]);
        logs.stdout
            .contains("has-secret")
            .then_some(())
            .ok_or_else(|| logs.show())
    });

    // Restarted: locked. It cannot seal a new secret, nor deliver one to a new task.
    c.stop("m1");
    c.restart("m1");
    c.swarm("m1", &["secret", "create", "s2", secret_file.to_str().unwrap()])
        .fails_with("the swarm is locked: run `swarm unlock`");
    c.swarm("m1", &["service", "scale", "lk_app=2", "--detach"]).ok();
    wait_until("a new task is refused its secret", Duration::from_secs(20), || {
        let all = tasks(&c, "m1")?;
        all.iter()
            .any(|t| {
                t["service"] == "lk_app"
                    && t["status"]["err"]
                        .as_str()
                        .is_some_and(|e| e.contains("was not delivered"))
            })
            .then_some(())
            .ok_or_else(|| format!("{all:#?}"))
    });
    swarm_with_input(&c, "m1", &["unlock"], "not a key\n").fails_with("invalid unlock key: expected SWMKEY-1-");
    let other = "SWMKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    swarm_with_input(&c, "m1", &["unlock"], other).fails_with("does not decrypt this manager's secrets key");
    swarm_with_input(&c, "m1", &["unlock"], &format!("{key1}\n")).ok();
    swarm_with_input(&c, "m1", &["unlock"], &key1).fails_with("not locked");
    c.swarm("m1", &["secret", "create", "s2", secret_file.to_str().unwrap()])
        .ok();
    wait_until("both tasks run once unlocked", Duration::from_secs(30), || {
        let all = tasks(&c, "m1")?;
        let running = all
            .iter()
            .filter(|t| t["service"] == "lk_app" && t["status"]["state"] == "running")
            .count();
        (running == 2).then_some(()).ok_or_else(|| format!("{running} running"))
    });

    // A new unlock key: the manager rewraps its copy; the old key no longer opens it.
    let key2 = c
        .swarm("m1", &["unlock-key", "--rotate", "-q"])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert_ne!(key2, key1);
    wait_until("the key is rewrapped", Duration::from_secs(10), || {
        let file = key_file(&c);
        (file["generation"] == 2).then_some(()).ok_or_else(|| file.to_string())
    });
    c.stop("m1");
    c.restart("m1");
    swarm_with_input(&c, "m1", &["unlock"], &key1).fails_with("does not decrypt");
    swarm_with_input(&c, "m1", &["unlock"], &key2).ok();

    // Autolock off: the KEK is back beside the key, and a restart needs no unlock.
    c.swarm("m1", &["update", "--autolock=false"]).ok();
    wait_until("the key is wrapped locally", Duration::from_secs(10), || {
        let file = key_file(&c);
        (file["wrapping"] == "local")
            .then_some(())
            .ok_or_else(|| file.to_string())
    });
    c.stop("m1");
    c.restart("m1");
    c.swarm("m1", &["secret", "create", "s3", secret_file.to_str().unwrap()])
        .ok();
    c.swarm("m1", &["unlock-key"]).fails_with("autolock is not enabled");
    c.swarm("m1", &["stack", "rm", "lk"]).ok();
    let files = data_dir(&c, "m1").join("task-files");
    wait_until("the tasks' files and tmpfs are gone", Duration::from_secs(30), || {
        (!files.exists() && !is_tmpfs(&files))
            .then_some(())
            .ok_or_else(|| format!("{} is still there", files.display()))
    });
}

#[test]
fn earlier_versions_of_a_rotated_secret_are_kept_for_stack_rollback_as_configured() {
    let mut c = Cluster::new();
    c.init("m1");
    c.wait_all_ready();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("docker-stack.yml");
    let file = file.to_str().unwrap().to_string();
    let deploy = |version: &str| {
        std::fs::write(dir.path().join("pw.txt"), format!("pw-{version}")).unwrap();
        std::fs::write(
            &file,
            r#"
services:
  app:
    command: ["sh", "-c", "echo has $$(cat $$SWARM_SECRETS_DIR/pw); trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    x-swarm: {driver: process}
    stop_grace_period: 1s
    secrets: [pw]
secrets:
  pw:
    file: ./pw.txt
"#,
        )
        .unwrap();
        c.swarm("m1", &["apply", "-f", &file, "--stack", "hist", "--yes"]).ok();
    };
    let versions = |c: &Cluster| {
        secret_names(c, "m1")
            .into_iter()
            .filter(|n| n.starts_with("hist_pw-"))
            .count()
    };
    let reads = |c: &Cluster, version: &str| {
        let want = format!("has pw-{version}");
        wait_until(&format!("the task reads pw-{version}"), Duration::from_secs(20), || {
            let logs = c.swarm("m1", &["service", "logs", "hist_app"]);
            logs.stdout.contains(&want).then_some(()).ok_or_else(|| logs.show())
        });
    };

    // Three versions: v3 is used, v2 is what `service rollback` returns to, v1 is kept by the default history (2).
    for v in ["v1", "v2", "v3"] {
        deploy(v);
        reads(&c, v);
    }
    holds_for("the default history keeps all three", Duration::from_secs(4), || {
        let n = versions(&c);
        (n == 3).then_some(()).ok_or_else(|| format!("{n} versions"))
    });
    c.swarm("m1", &["stack", "rollback", "hist", "--to", "1"]).ok();
    reads(&c, "v1");

    // Without history, a version nothing uses goes, and a rollback that needs it says why it cannot.
    c.swarm("m1", &["update", "--secret-history-limit", "0"]).ok();
    deploy("v4");
    reads(&c, "v4");
    wait_until("only the versions in use are left", Duration::from_secs(20), || {
        let n = versions(&c);
        (n == 2).then_some(()).ok_or_else(|| format!("{n} versions"))
    });
    c.swarm("m1", &["stack", "rollback", "hist", "--to", "2"])
        .fails_with("its content was not sent")
        .fails_with("--secret-history-limit");
}
