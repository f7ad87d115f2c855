//! Benchmark of the agent's docker driver against the raw Docker Engine, side by side on this machine and engine:
//!
//! - raw: 100 containers created and started through the Engine API (hand-written HTTP/1.1 over the engine's unix
//!   socket), all 100 at once (100 threads, one container each) — the parallelism our agent uses; and the same with
//!   the docker CLI (`docker create` + `docker start`, 10 threads × 10), as a user would script it; the API run is
//!   made once before ours and once after, and ours is compared with their mean (the engine slows over a run);
//! - ours: a 1-manager + 1-worker cluster of real (release) daemons; 100 docker-driver tasks assigned to the worker in
//!   ONE `POST /v1/tasks` on the manager's unix socket; timed from the request until `GET /v1/tasks` shows all 100
//!   running (the agent's reports have reached Raft), asked every [`POLL`];
//! - the worker daemon's RSS (VmRSS) while it runs the 100 tasks, split into anonymous memory and file pages.
//!
//! Every task runs `sh -c 'trap "exit 0" TERM; while true; do sleep 1; done'` in `swarm-test/busybox:1` (imported
//! from Debian's static busybox when missing). Every container the benchmark caused is removed at the end, by label,
//! also when it fails.
//!
//! Run: `cargo bench --bench agent` (`AGENT_TASKS` changes the count; `SWARM_BENCH_BIN=target/dist/swarm` runs the
//! daemons from the binary `cargo build --profile dist` ships instead of the benchmark's own release build).

mod common;

use std::io::Read as _;
use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use serde_json::json;
use serde_json::Value;
use swarm_specs::spec::Driver;
use swarm_specs::spec::TaskSpec;
use swarm_specs::task::Task;
use swarm_specs::task::TaskState;
use swarm_specs::task::TaskStatus;
use swarm_specs::task::MANUAL_SERVICE_PREFIX;

const IMAGE: &str = "swarm-test/busybox:1";
const DOCKER_SOCKET: &str = "/var/run/docker.sock";
const SCRIPT: &str = r#"trap "exit 0" TERM; while true; do sleep 1; done"#;
/// The label the docker driver puts on every container of a node.
const LABEL_NODE: &str = "io.swarm.node.id";
/// The label of the raw containers.
const LABEL_BENCH: &str = "io.swarm.bench";
const CLI_THREADS: usize = 10;
/// How often the benchmark asks the manager for the tasks while it waits for ours. The raw side learns that its
/// containers started from the engine's answers, for free; each of our polls serializes every task in the manager
/// and parses them here, on the 2 cores the engine needs. Polling every 10 ms cost about 1.9 s of CPU per run
/// (manager 1.3 s, this process 0.6 s); every 50 ms costs a fifth of it, and can only make ours look up to 50 ms
/// slower, never faster.
const POLL: Duration = Duration::from_millis(50);

// ----- a tiny HTTP/1.1 client over a unix socket -----

/// One request, `Connection: close`; returns the status and the body (chunked bodies decoded).
fn http(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{method} {path}: no HTTP header in {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {path}: bad status line in {head:?}"))?;
    let mut content = raw[end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        content = dechunk(&content);
    }
    Ok((status, String::from_utf8_lossy(&content).into_owned()))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let stop = (start + size).min(data.len());
        out.extend_from_slice(&data[start..stop]);
        data = data.get(stop + 2..).unwrap_or_default();
    }
    out
}

// ----- docker -----

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running docker {args:?}: {e}"))
}

fn labelled(label: &str) -> Vec<String> {
    let filter = format!("label={label}");
    String::from_utf8_lossy(&docker(&["ps", "-aq", "--filter", &filter]).stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn remove_labelled(label: &str) -> usize {
    let ids = labelled(label);
    for chunk in ids.chunks(50) {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(chunk.iter().map(String::as_str));
        docker(&args);
    }
    ids.len()
}

/// The engine answers and the image exists (imported from the static busybox when missing).
fn engine_ready() -> Result<String, String> {
    if !Path::new(DOCKER_SOCKET).exists() {
        return Err(format!("{DOCKER_SOCKET} does not exist"));
    }
    let version = docker(&["version", "--format", "{{.Server.Version}}"]);
    if !version.status.success() {
        return Err(format!(
            "the docker engine does not answer: {}",
            String::from_utf8_lossy(&version.stderr).trim()
        ));
    }
    if !docker(&["image", "inspect", IMAGE]).status.success() {
        swarm_agent::testing::ensure_busybox_image(IMAGE, "1")?;
    }
    Ok(String::from_utf8_lossy(&version.stdout).trim().to_string())
}

/// Containers labelled `label` that run.
fn running_count(label: &str) -> usize {
    let filter = format!("label={label}");
    String::from_utf8_lossy(&docker(&["ps", "-q", "--filter", &filter, "--filter", "status=running"]).stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .count()
}

/// Unix time in seconds of an RFC 3339 UTC timestamp as the engine writes it (`2026-01-02T03:04:05.123456789Z`).
fn unix_seconds(text: &str) -> Option<f64> {
    let (date, time) = text.trim().trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min, sec) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3_600.0 + min * 60.0 + sec)
}

/// When the engine started the last of the containers labelled `label` (Unix seconds).
fn last_started(label: &str) -> Option<f64> {
    let ids = labelled(label);
    let mut args = vec!["inspect", "--format", "{{.State.StartedAt}}"];
    args.extend(ids.iter().map(String::as_str));
    let out = docker(&args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(unix_seconds)
        .reduce(f64::max)
}

/// Raw Engine API: `count` containers, one thread each, all at once; create + start. Returns the elapsed time.
fn raw_api(count: usize, label: &str) -> Duration {
    let (key, value) = label.split_once('=').unwrap_or((label, ""));
    let body = json!({
        "Image": IMAGE,
        "Cmd": ["sh", "-c", SCRIPT],
        "Labels": { key: value },
    })
    .to_string();
    let socket = Path::new(DOCKER_SOCKET);
    let start = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..count)
            .map(|_| {
                s.spawn(|| {
                    let (code, answer) = http(socket, "POST", "/containers/create", Some(&body)).expect("create");
                    assert_eq!(code, 201, "create: {answer}");
                    let id = serde_json::from_str::<Value>(&answer).expect("create answer")["Id"]
                        .as_str()
                        .expect("an Id")
                        .to_string();
                    let (code, answer) = http(socket, "POST", &format!("/containers/{id}/start"), None).expect("start");
                    assert!(code == 204 || code == 304, "start: {code} {answer}");
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a raw API thread panicked");
        }
    });
    start.elapsed()
}

/// The docker CLI: `count` containers in `CLI_THREADS` threads, `docker create` then `docker start` each.
fn raw_cli(count: usize, label: &str) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLI_THREADS)
            .map(|t| {
                s.spawn(move || {
                    for _ in (t..count).step_by(CLI_THREADS) {
                        let out = docker(&["create", "--label", label, IMAGE, "sh", "-c", SCRIPT]);
                        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
                        let out = docker(&["start", &id]);
                        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a CLI thread panicked");
        }
    });
    start.elapsed()
}

// ----- our cluster -----

struct Daemon {
    name: String,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Daemon {
    fn start(root: &Path, name: &str) -> Daemon {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("node dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(dir.join("log")).expect("log file");
        let child = Command::new(common::swarm_bin())
            .args(["daemon", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--socket")
            .arg(dir.join("swarm.sock"))
            .args(["--hostname", name])
            .env("SWARM_LOG", "warn")
            .env_remove("SWARM_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start swarm daemon");
        let d = Daemon {
            name: name.to_string(),
            dir,
            port,
            child: Some(child),
        };
        wait_until(&format!("{name} listens"), Duration::from_secs(20), || {
            d.cli(&["info", "--json"]).is_some()
        });
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("swarm.sock")
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new(common::swarm_bin())
            .arg("-H")
            .arg(self.socket())
            .args(args)
            .env_remove("SWARM_HOST")
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn node_id(&self) -> String {
        let info: Value = serde_json::from_str(&self.cli(&["info", "--json"]).expect("info")).expect("info JSON");
        info["node_id"].as_str().expect("a node id").to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn tasks_for(node_id: &str, count: usize) -> Vec<Task> {
    let now = now_millis();
    (1..=count as u64)
        .map(|slot| {
            let command = ["sh", "-c", SCRIPT].map(String::from).to_vec();
            let mut spec = TaskSpec::with_command(Driver::Docker, Some(IMAGE.to_string()), command);
            spec.stop_grace_period_ms = 2_000;
            Task {
                id: swarm_reconciler::ca::new_id(),
                service: format!("{MANUAL_SERVICE_PREFIX}-bench"),
                slot: Some(slot),
                node_id: Some(node_id.to_string()),
                spec_version: 1,
                spec,
                desired_state: TaskState::Running,
                status: TaskStatus::new(TaskState::Assigned, now, "assigned"),
                created_at: now,
                ports: Vec::new(),
                networks: Vec::new(),
                started_at: None,
            }
        })
        .collect()
}

/// How many of `ids` `GET /v1/tasks` shows running; fails on a task that ended.
fn running_tasks(socket: &Path, ids: &[String]) -> usize {
    let (code, body) = http(socket, "GET", "/v1/tasks", None).expect("GET /v1/tasks");
    assert_eq!(code, 200, "GET /v1/tasks: {body}");
    let tasks: Vec<Task> = serde_json::from_str(&body).expect("tasks JSON");
    let mut running = 0;
    for t in tasks.iter().filter(|t| ids.contains(&t.id)) {
        assert!(
            !t.status.state.is_terminal(),
            "task {} ended: {:?} {:?}",
            t.id,
            t.status.state,
            t.status.err
        );
        running += usize::from(t.status.state == TaskState::Running);
    }
    running
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of `pid` so far, in seconds (`/proc/<pid>/stat`, clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces): utime and stime are the
    // 12th and 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

struct Ours {
    seconds: Duration,
    /// CPU the manager and the worker used from the request until all tasks ran (the manager's includes answering
    /// the benchmark's polls).
    manager_cpu: f64,
    worker_cpu: f64,
    /// From the request until the engine had started the last container.
    engine_seconds: Option<f64>,
    worker_rss_kib: u64,
    /// Of it: anonymous memory (heap, stacks) and file pages (the binary's code and data, shared libraries).
    worker_anon_kib: u64,
    worker_file_kib: u64,
    /// The worker's peak RSS (VmHWM).
    worker_peak_kib: u64,
    manager_rss_kib: u64,
}

/// Removes every container labelled with one of `labels` when dropped (after the daemons, declared before it, are
/// gone), also on a panic.
struct Cleanup {
    labels: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for label in &self.labels {
            let n = remove_labelled(label);
            if n > 0 {
                println!("cleanup: removed {n} container(s) labelled {label}");
            }
        }
    }
}

fn ours(count: usize, cleanup: &mut Cleanup) -> Ours {
    let root = tempfile::Builder::new()
        .prefix("swarm-bench-agent-")
        .tempdir()
        .expect("temp dir");
    let m1 = Daemon::start(root.path(), "m1");
    let a = m1.addr();
    m1.cli(&["init", "--advertise-addr", &a, "--listen-addr", &a])
        .expect("init");
    let m1_id = m1.node_id();
    cleanup.labels.push(format!("{LABEL_NODE}={m1_id}"));
    let token = m1
        .cli(&["join-token", "-q", "worker"])
        .expect("token")
        .trim()
        .to_string();
    let w1 = Daemon::start(root.path(), "w1");
    let w = w1.addr();
    w1.cli(&[
        "join",
        "--token",
        &token,
        "--advertise-addr",
        &w,
        "--listen-addr",
        &w,
        &a,
    ])
    .expect("join");
    let w1_id = w1.node_id();
    cleanup.labels.push(format!("{LABEL_NODE}={w1_id}"));
    wait_until("w1 is Ready with the docker driver", Duration::from_secs(30), || {
        let Some(text) = m1.cli(&["node", "inspect", &w1_id]) else {
            return false;
        };
        let nodes: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
        nodes
            .first()
            .is_some_and(|n| n["status"].as_str().is_some_and(|s| s.eq_ignore_ascii_case("ready")))
            && nodes
                .first()
                .and_then(|n| n["description"]["drivers"].as_array())
                .is_some_and(|d| d.iter().any(|d| d == "docker"))
    });
    let idle_rss = rss_kib(w1.pid());

    let tasks = tasks_for(&w1_id, count);
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    let body = serde_json::to_string(&tasks).expect("tasks JSON");
    let socket = m1.socket();
    let posted = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let cpu_before = (cpu_seconds(m1.pid()), cpu_seconds(w1.pid()));
    let start = Instant::now();
    let (code, answer) = http(&socket, "POST", "/v1/tasks", Some(&body)).expect("POST /v1/tasks");
    assert!((200..300).contains(&code), "POST /v1/tasks: {code} {answer}");
    let deadline = start + Duration::from_secs(300);
    loop {
        if running_tasks(&socket, &ids) == count {
            break;
        }
        assert!(Instant::now() < deadline, "not all {count} tasks running within 300 s");
        std::thread::sleep(POLL);
    }
    let seconds = start.elapsed();
    let manager_cpu = cpu_seconds(m1.pid()) - cpu_before.0;
    let worker_cpu = cpu_seconds(w1.pid()) - cpu_before.1;
    let engine_running = running_count(&format!("{LABEL_NODE}={w1_id}"));
    assert_eq!(
        engine_running, count,
        "the engine runs {engine_running} of the worker's containers"
    );
    let engine_seconds = last_started(&format!("{LABEL_NODE}={w1_id}")).map(|t| t - posted);
    let worker_rss_kib = rss_kib(w1.pid());
    let worker_anon_kib = status_kib(w1.pid(), "RssAnon:");
    let worker_file_kib = status_kib(w1.pid(), "RssFile:");
    let worker_peak_kib = status_kib(w1.pid(), "VmHWM:");
    let manager_rss_kib = rss_kib(m1.pid());
    println!(
        "ours: manager {} + worker {} (daemons of {} in {}); worker RSS before the tasks {:.1} MiB",
        m1.name,
        w1.name,
        common::swarm_bin(),
        root.path().display(),
        idle_rss as f64 / 1024.0,
    );
    drop(w1);
    drop(m1);
    Ours {
        seconds,
        manager_cpu,
        worker_cpu,
        engine_seconds,
        worker_rss_kib,
        worker_anon_kib,
        worker_file_kib,
        worker_peak_kib,
        manager_rss_kib,
    }
}

fn main() {
    let count: usize = std::env::var("AGENT_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let version = match engine_ready() {
        Ok(v) => v,
        Err(why) => {
            println!("skipping the agent benchmark: {why}");
            return;
        }
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("Docker Engine {version}, {cores} cores; {count} containers of {IMAGE} running `sh -c '{SCRIPT}'`");

    let run = std::process::id();
    let api_label = format!("{LABEL_BENCH}=api-{run}");
    let cli_label = format!("{LABEL_BENCH}=cli-{run}");
    let mut cleanup = Cleanup {
        labels: vec![api_label.clone(), cli_label.clone()],
    };

    // Warm the engine (image layers, the runtime) once.
    raw_api(1, &api_label);
    remove_labelled(&api_label);

    let api = raw_api(count, &api_label);
    assert_eq!(running_count(&api_label), count, "raw API containers running");
    remove_labelled(&api_label);

    let cli = raw_cli(count, &cli_label);
    assert_eq!(running_count(&cli_label), count, "raw CLI containers running");
    remove_labelled(&cli_label);

    let ours = ours(count, &mut cleanup);
    // The raw API once more, after ours and with ours removed: the engine slows down over a run (100 containers
    // created and removed three times before ours start), so ours is compared with the mean of a raw run before and
    // one after it, not with a run made on a fresher engine.
    for label in cleanup.labels.clone() {
        remove_labelled(&label);
    }
    let api_after = raw_api(count, &api_label);
    assert_eq!(running_count(&api_label), count, "raw API containers running");
    remove_labelled(&api_label);
    let api_before = api;
    let api = (api_before + api_after) / 2;

    let secs = |d: Duration| d.as_secs_f64();
    println!();
    println!("{count} containers create+start until running                 seconds   ours/raw");
    println!(
        "raw Engine API (unix socket, {count} threads, all at once)     {:>8.2}   (before ours {:.2}, after {:.2})",
        secs(api),
        secs(api_before),
        secs(api_after)
    );
    println!(
        "raw docker CLI (create+start, {CLI_THREADS} threads x {})              {:>8.2}",
        count.div_ceil(CLI_THREADS),
        secs(cli)
    );
    println!(
        "ours (one POST of {count} tasks → all running in the store)     {:>8.2}   {:>5.2}x API  {:>5.2}x CLI   (goal ≤ 1.10x)",
        secs(ours.seconds),
        secs(ours.seconds) / secs(api),
        secs(ours.seconds) / secs(cli)
    );
    if let Some(e) = ours.engine_seconds {
        println!(
            "  of which: the engine had started the last container after  {e:>8.2}   ({:>5.2}x API)",
            e / secs(api)
        );
    }
    println!(
        "  CPU used meanwhile: manager {:.2} s (with the benchmark's polls), worker {:.2} s",
        ours.manager_cpu, ours.worker_cpu
    );
    println!(
        "worker daemon RSS with {count} tasks running                     {:>8.1} MiB  (goal ≤ 20 MB); peak {:.1} MiB; \
         manager {:.1} MiB",
        ours.worker_rss_kib as f64 / 1024.0,
        ours.worker_peak_kib as f64 / 1024.0,
        ours.manager_rss_kib as f64 / 1024.0
    );
    println!(
        "  of which: anonymous (heap, stacks) {:.1} MiB, file pages (code, data, libraries) {:.1} MiB",
        ours.worker_anon_kib as f64 / 1024.0,
        ours.worker_file_kib as f64 / 1024.0
    );
    drop(cleanup);
}
