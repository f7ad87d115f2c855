//! A `Cluster` of real `swarm daemon` processes on loopback, driven through the CLI as a user would.
//!
//! Each node has its own temporary directory (data, unix socket, log) and a free loopback port. Every daemon is
//! killed when the `Cluster` is dropped, also when the test panics; then the tail of every node's log is printed
//! and the directories are kept for a post-mortem. Clusters run one at a time: the machine has two cores, and
//! Raft's election timeouts are short.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;
use std::time::Instant;

use serde::Deserialize;

use crate::common;
pub use crate::common::parse_node_ls;
pub use crate::common::Row;

const SWARM: &str = env!("CARGO_BIN_EXE_swarm");

/// How long one CLI command may take before the test gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How often conditions are polled (each poll usually runs a CLI process).
const POLL: Duration = Duration::from_millis(40);

/// The worker's answer to cluster commands (Docker's text).
pub const NOT_A_MANAGER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify \
                                 cluster state. Please run this command on a manager node or promote the current \
                                 node to a manager.";

/// One cluster at a time per test binary.
static SERIAL: Mutex<()> = Mutex::new(());

/// One node: a directory, a socket, a port, and the daemon while it runs.
struct Node {
    name: String,
    dir: tempfile::TempDir,
    port: u16,
    /// Set once the node is in the swarm (init or join), cleared when it leaves.
    id: Option<String>,
    daemon: Option<Child>,
    /// How many times the daemon was started (marks the log).
    starts: u32,
}

impl Node {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("swarm.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// The result of one CLI command.
pub struct Run {
    pub command: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// Asserts the command succeeded.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "`{}` failed\n{}", self.command, self.show());
        self
    }

    /// Asserts the command failed and said `text` on stderr.
    #[track_caller]
    pub fn fails_with(self, text: &str) -> Run {
        assert_ne!(self.code, 0, "`{}` should have failed\n{}", self.command, self.show());
        assert!(
            self.stderr.contains(text),
            "`{}` should have said {text:?}\n{}",
            self.command,
            self.show()
        );
        self
    }

    pub fn show(&self) -> String {
        format!(
            "exit code {} after {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// The fields of `swarm info --json` the tests look at.
#[derive(Debug, Clone, Deserialize)]
pub struct Info {
    pub local_node_state: String,
    pub node_id: String,
    #[serde(default)]
    pub cluster_id: String,
    pub is_manager: bool,
    pub managers: usize,
    pub nodes: usize,
    /// `NODEID (ADDR)`, or `none (no quorum?)`.
    pub leader: String,
    pub heartbeat_period_ms: u64,
    pub heartbeat_grace: u32,
    #[serde(default)]
    pub raft_last_applied: u64,
}

impl Info {
    /// The leader's node id, when this manager knows one.
    pub fn leader_id(&self) -> Option<&str> {
        self.leader
            .split_once(" (")
            .map(|(id, _)| id)
            .filter(|_| !self.leader.starts_with("none"))
    }

    /// The leader's manager address, when this manager knows one.
    pub fn leader_addr(&self) -> Option<&str> {
        self.leader_id()?;
        self.leader.split_once(" (")?.1.strip_suffix(')')
    }

    /// How long a node may stay silent before it is marked Down.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.heartbeat_period_ms * u64::from(self.heartbeat_grace))
    }
}

/// A free loopback port below the kernel's ephemeral range, so that no outgoing connection takes it while a node
/// is down between restarts. The start is spread by process id so that test binaries running at once rarely try
/// the same ports.
fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    const LOW: usize = 20_000;
    const SPAN: usize = 12_000;
    let _ = NEXT.compare_exchange(
        usize::MAX,
        (std::process::id() as usize * 7_919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

/// Polls `check` every [`POLL`] until it returns `Ok` or `timeout` passes; then panics naming `what` and the last
/// state `check` reported.
#[track_caller]
pub fn wait_until<T>(what: &str, timeout: Duration, check: impl FnMut() -> Result<T, String>) -> T {
    common::wait_until_every(POLL, what, timeout, check)
}

/// Checks that `check` holds at every poll for `period` (a property that must *stay* true, such as a node staying
/// Ready); panics at the first poll where it does not.
#[track_caller]
pub fn holds_for(what: &str, period: Duration, check: impl FnMut() -> Result<(), String>) {
    common::holds_for_every(POLL, what, period, check)
}

pub struct Cluster {
    nodes: Vec<Node>,
    _serial: MutexGuard<'static, ()>,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster {
            nodes: Vec::new(),
            _serial: SERIAL.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node named {name} in this cluster"))
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node named {name} in this cluster"))
    }

    /// Creates a node and starts its daemon, outside any swarm.
    pub fn add(&mut self, name: &str) {
        assert!(self.nodes.iter().all(|n| n.name != name), "node {name} exists already");
        self.nodes.push(Node {
            name: name.to_string(),
            dir: tempfile::Builder::new()
                .prefix(&format!("swarm-{name}-"))
                .tempdir()
                .expect("temp dir"),
            port: free_port(),
            id: None,
            daemon: None,
            starts: 0,
        });
        self.start(name);
    }

    /// Starts the node's daemon on its directory, socket and port, and waits until its socket answers (the daemon
    /// resumes its role before it listens).
    pub fn start(&mut self, name: &str) {
        let node = self.node_mut(name);
        assert!(node.daemon.is_none(), "node {name} is running already");
        node.starts += 1;
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(node.log())
            .expect("log file");
        writeln!(log, "===== harness: start #{} of {name} =====", node.starts).expect("write log");
        let child = Command::new(SWARM)
            .arg("daemon")
            .arg("--data-dir")
            .arg(node.dir.path().join("data"))
            .arg("--socket")
            .arg(node.socket())
            .arg("--hostname")
            .arg(name)
            // SWARM_TEST_LOG overrides the daemons' log filter when a failure needs more detail.
            .env(
                "SWARM_LOG",
                std::env::var("SWARM_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .env_remove("SWARM_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn swarm daemon");
        node.daemon = Some(child);
        let socket = node.socket();
        wait_until(
            &format!("the daemon of {name} listens on its socket"),
            Duration::from_secs(20),
            || {
                let node = self.node_mut(name);
                if let Some(status) = node.daemon.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    node.daemon = None;
                    panic!(
                        "the daemon of {name} exited at start: {status}; see {}",
                        node.log().display()
                    );
                }
                std::os::unix::net::UnixStream::connect(&socket)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        );
    }

    /// SIGKILL: the process dies at once, as in a crash or a power cut.
    pub fn kill(&mut self, name: &str) {
        let node = self.node_mut(name);
        let mut child = node
            .daemon
            .take()
            .unwrap_or_else(|| panic!("node {name} is not running"));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, and waits for the daemon to exit.
    pub fn stop(&mut self, name: &str) {
        let node = self.node_mut(name);
        let mut child = node
            .daemon
            .take()
            .unwrap_or_else(|| panic!("node {name} is not running"));
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {name}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(status.success(), "the daemon of {name} exited with {status} on SIGTERM");
                return;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon of {name} did not exit within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a stopped or killed node again on the same directory, socket and port.
    pub fn restart(&mut self, name: &str) {
        self.start(name);
    }

    pub fn is_running(&self, name: &str) -> bool {
        self.node(name).daemon.is_some()
    }

    /// The node's id in the swarm.
    pub fn id(&self, name: &str) -> String {
        self.node(name)
            .id
            .clone()
            .unwrap_or_else(|| panic!("node {name} is not in a swarm"))
    }

    /// The node's manager address (`127.0.0.1:PORT`).
    pub fn addr(&self, name: &str) -> String {
        self.node(name).addr()
    }

    /// The node's unix socket, for a test that runs a long-lived `swarm -H SOCKET ...` itself.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.node(name).socket()
    }

    /// POSTs `body` (JSON) to `path` on `manager`'s TLS port as the node `name`, with the certificate in its data
    /// directory (what its daemon presents), through `curl`. Returns the HTTP status and the body; `Err` when
    /// no HTTP answer came.
    pub fn post_as(&self, name: &str, manager: &str, path: &str, body: &str) -> Result<(u16, String), String> {
        let tls = self.node(name).dir.path().join("data").join("tls");
        let port = self.node(manager).port;
        let output = Command::new("curl")
            .arg("--silent")
            .arg("--show-error")
            .args(["--max-time", "10"])
            .arg("--cacert")
            .arg(tls.join("ca.pem"))
            .arg("--cert")
            .arg(tls.join("node.pem"))
            .arg("--key")
            .arg(tls.join("node.key"))
            // Managers' certificates name the role, not an address.
            .args(["--resolve", &format!("swarm-manager:{port}:127.0.0.1")])
            .args(["-H", "content-type: application/json"])
            .args(["--data-binary", body])
            .args(["--write-out", "\n%{http_code}"])
            .arg(format!("https://swarm-manager:{port}{path}"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run curl: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let (answer, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
        match code.trim().parse::<u16>() {
            Ok(code) if code != 0 && output.status.success() => Ok((code, answer.to_string())),
            _ => Err(format!(
                "curl {path} as {name} on {manager}: {}\n{stdout}\n{stderr}",
                output.status
            )),
        }
    }

    /// POSTs `body` to `path` on `manager`'s TLS port without a client certificate (as a CI system or a git host
    /// calls a webhook), checking the server against the cluster's CA, with extra `headers` (`Name: value`).
    /// Returns the HTTP status and the body; `Err` when no HTTP answer came.
    pub fn post_anonymous(
        &self,
        manager: &str,
        path: &str,
        headers: &[String],
        body: &str,
    ) -> Result<(u16, String), String> {
        let ca = self.node(manager).dir.path().join("data").join("tls").join("ca.pem");
        let port = self.node(manager).port;
        let mut command = Command::new("curl");
        command
            .arg("--silent")
            .arg("--show-error")
            .args(["--max-time", "10"])
            .arg("--cacert")
            .arg(ca)
            .args(["--resolve", &format!("swarm-manager:{port}:127.0.0.1")])
            .args(["--data-binary", body])
            .args(["--write-out", "\n%{http_code}"]);
        for header in headers {
            command.args(["-H", header]);
        }
        let output = command
            .arg(format!("https://swarm-manager:{port}{path}"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run curl: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let (answer, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
        match code.trim().parse::<u16>() {
            Ok(code) if code != 0 && output.status.success() => Ok((code, answer.to_string())),
            _ => Err(format!(
                "curl {path} on {manager}: {}\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )),
        }
    }

    /// Runs `swarm -H <socket of name> LINE`, the line split on whitespace: `c.run("m1", "node ls")`.
    pub fn run(&self, name: &str, line: &str) -> Run {
        let args: Vec<&str> = line.split_whitespace().collect();
        self.swarm(name, &args)
    }

    /// Runs a write command like [`Self::run`] and asserts it succeeds, retrying (as its message asks) while it
    /// fails with "changed meanwhile; try again": a follower checks a write against its own replica, which may
    /// lag the leader by a heartbeat. `consistency.rs` pins that behaviour; other stories retry past it.
    #[track_caller]
    pub fn write(&self, name: &str, line: &str) -> Run {
        wait_until(
            &format!("`swarm {line}` on {name} succeeds"),
            Duration::from_secs(5),
            || {
                let run = self.run(name, line);
                match run.code {
                    0 => Ok(run),
                    _ if run.stderr.contains("changed meanwhile; try again") => Err(run.show()),
                    _ => panic!("`{}` failed\n{}", run.command, run.show()),
                }
            },
        )
    }

    /// Runs `swarm -H <socket of name> ARGS`.
    pub fn swarm(&self, name: &str, args: &[&str]) -> Run {
        let node = self.node(name);
        let command = format!("swarm {}  (on {name})", args.join(" "));
        let start = Instant::now();
        let child = Command::new(SWARM)
            .arg("-H")
            .arg(node.socket())
            .args(args)
            .env_remove("SWARM_HOST")
            .env_remove("SWARM_CERT_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run swarm");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let output = match rx.recv_timeout(COMMAND_TIMEOUT) {
            Ok(output) => output.expect("wait for swarm"),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                panic!("`{command}` did not finish within {COMMAND_TIMEOUT:?}");
            }
        };
        Run {
            command,
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    }

    /// Starts `name` and makes it the first manager of a new swarm. Returns its node id.
    pub fn init(&mut self, name: &str) -> String {
        self.add(name);
        let addr = self.addr(name);
        self.swarm(name, &["init", "--advertise-addr", &addr, "--listen-addr", &addr])
            .ok();
        let id = self.info(name).node_id;
        self.node_mut(name).id = Some(id.clone());
        id
    }

    /// Starts `name` and joins it as a manager through a manager of the swarm. Returns its node id.
    pub fn join_manager(&mut self, name: &str) -> String {
        self.join_as(name, "manager")
    }

    /// Starts `name` and joins it as a worker through a manager of the swarm. Returns its node id.
    pub fn join_worker(&mut self, name: &str) -> String {
        self.join_as(name, "worker")
    }

    fn join_as(&mut self, name: &str, role: &str) -> String {
        let manager = self.a_manager();
        let token = self.join_token(&manager, role);
        self.add(name);
        let run = self.try_join(name, &token, &manager).ok();
        assert!(
            run.stdout.contains(&format!("This node joined a swarm as a {role}.")),
            "{}",
            run.show()
        );
        self.id(name)
    }

    /// Runs `swarm join` on `name` (already started) with `token` through `manager`'s address. On success the
    /// harness records the node's id.
    pub fn try_join(&mut self, name: &str, token: &str, manager: &str) -> Run {
        let addr = self.addr(name);
        let remote = self.addr(manager);
        let run = self.swarm(
            name,
            &[
                "join",
                "--token",
                token,
                "--advertise-addr",
                &addr,
                "--listen-addr",
                &addr,
                &remote,
            ],
        );
        if run.code == 0 {
            let id = self.info(name).node_id;
            self.node_mut(name).id = Some(id);
        }
        run
    }

    /// `swarm leave [--force]` on `name`; on success the harness forgets the node's id.
    pub fn leave(&mut self, name: &str, force: bool) -> Run {
        let run = if force {
            self.swarm(name, &["leave", "--force"])
        } else {
            self.swarm(name, &["leave"])
        };
        if run.code == 0 {
            self.node_mut(name).id = None;
        }
        run
    }

    /// `swarm join-token -q ROLE` on `manager`.
    pub fn join_token(&self, manager: &str, role: &str) -> String {
        self.swarm(manager, &["join-token", "-q", role])
            .ok()
            .stdout
            .trim()
            .to_string()
    }

    /// `swarm info --json` on `name`.
    #[track_caller]
    pub fn info(&self, name: &str) -> Info {
        let run = self.swarm(name, &["info", "--json"]).ok();
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("info --json on {name}: {e}\n{}", run.show()))
    }

    /// `swarm node ls` on `name`, parsed; `Err` with the command's output when it fails.
    pub fn try_node_ls(&self, name: &str) -> Result<Vec<Row>, String> {
        let run = self.swarm(name, &["node", "ls"]);
        if run.code != 0 {
            return Err(run.show());
        }
        Ok(parse_node_ls(&run.stdout))
    }

    /// `swarm node ls` on `name`, parsed.
    #[track_caller]
    pub fn node_ls(&self, name: &str) -> Vec<Row> {
        parse_node_ls(&self.swarm(name, &["node", "ls"]).ok().stdout)
    }

    /// `swarm node inspect NODE` on `name`: the node's JSON record.
    #[track_caller]
    pub fn inspect(&self, name: &str, node: &str) -> serde_json::Value {
        self.try_inspect(name, node).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `swarm node inspect NODE` on `name`; `Err` with the command's output when it fails.
    pub fn try_inspect(&self, name: &str, node: &str) -> Result<serde_json::Value, String> {
        let run = self.swarm(name, &["node", "inspect", node]);
        if run.code != 0 {
            return Err(format!("`{}`: {}", run.command, run.show()));
        }
        match serde_json::from_str::<Vec<serde_json::Value>>(&run.stdout) {
            Ok(mut list) if list.len() == 1 => Ok(list.remove(0)),
            _ => Err(format!("`{}` printed no single record: {}", run.command, run.show())),
        }
    }

    /// The first running member whose `node ls` works.
    pub fn a_manager(&self) -> String {
        wait_until(
            "some running node answers as a manager",
            Duration::from_secs(10),
            || {
                for node in self.nodes.iter().filter(|n| n.daemon.is_some() && n.id.is_some()) {
                    if self.try_node_ls(&node.name).is_ok() {
                        return Ok(node.name.clone());
                    }
                }
                Err("no running member answered `node ls`".into())
            },
        )
    }

    /// The name of the node whose manager address is `addr`.
    pub fn name_at(&self, addr: &str) -> Option<String> {
        self.nodes.iter().find(|n| n.addr() == addr).map(|n| n.name.clone())
    }

    /// Waits until `node ls` on a manager shows every running member Ready and a leader. Returns that listing.
    pub fn wait_all_ready(&self) -> Vec<Row> {
        let manager = self.a_manager();
        wait_until(
            "every running member is Ready and there is a leader",
            Duration::from_secs(20),
            || {
                let rows = self.try_node_ls(&manager)?;
                let members = self.nodes.iter().filter(|n| n.daemon.is_some() && n.id.is_some());
                for node in members {
                    let id = node.id.as_deref().unwrap_or_default();
                    if !rows.iter().any(|r| r.id == id && r.status == "Ready") {
                        return Err(format!("{} ({id}) is not Ready on {manager}: {rows:#?}", node.name));
                    }
                }
                if !rows.iter().any(|r| r.manager_status == "Leader") {
                    return Err(format!("no leader on {manager}: {rows:#?}"));
                }
                Ok(rows)
            },
        )
    }

    /// Waits until `node ls` on `manager` has shown `name` Ready at every poll for `period` in a row (e.g. settled
    /// on a new heartbeat period). Returns its id.
    pub fn wait_steady_ready(&self, manager: &str, name: &str, period: Duration) -> String {
        let id = self.id(name);
        let mut ready_since: Option<Instant> = None;
        wait_until(
            &format!("{name} is Ready on {manager} for {period:?} in a row"),
            period + Duration::from_secs(10),
            || {
                let rows = self.try_node_ls(manager)?;
                match rows.iter().find(|r| r.id == id) {
                    Some(r) if r.status == "Ready" => {
                        let since = *ready_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= period {
                            Ok(())
                        } else {
                            Err(format!("Ready for {:?} only", since.elapsed()))
                        }
                    }
                    _ => {
                        ready_since = None;
                        Err(format!("{rows:#?}"))
                    }
                }
            },
        );
        id
    }

    /// Waits until every running node among `names` names the same leader, one of `names`. Returns its name.
    /// The leader is recognised by its address, which is what Raft itself dials.
    pub fn wait_leader_among(&self, names: &[&str]) -> String {
        wait_until(
            &format!("{names:?} agree on a leader among them"),
            Duration::from_secs(20),
            || {
                let mut seen = BTreeMap::new();
                for name in names.iter().filter(|n| self.is_running(n)) {
                    let info = self.info(name);
                    seen.insert(*name, info.leader_addr().and_then(|addr| self.name_at(addr)));
                }
                let leaders: HashSet<_> = seen.values().collect();
                match leaders.into_iter().collect::<Vec<_>>().as_slice() {
                    [Some(leader)] if names.contains(&leader.as_str()) => Ok(leader.clone()),
                    _ => Err(format!("leader as each manager sees it: {seen:?}")),
                }
            },
        )
    }

    /// The current leader's name, as the first running manager sees it.
    pub fn leader(&self) -> String {
        let managers: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.daemon.is_some() && n.id.is_some())
            .filter(|n| self.info(&n.name).is_manager)
            .map(|n| n.name.clone())
            .collect();
        let managers: Vec<&str> = managers.iter().map(String::as_str).collect();
        self.wait_leader_among(&managers)
    }

    /// The last `lines` lines of the node's daemon log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.node(name).log()).unwrap_or_default();
        let all: Vec<String> = text
            .lines()
            .map(|l| match l.char_indices().nth(400) {
                Some((cut, _)) => format!("{} …", &l[..cut]),
                None => l.to_string(),
            })
            .collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Kills the process-driver tasks of these nodes: they run in sessions of their own and outlive their daemon (so
/// that an agent restart adopts them), so a test must end them itself. They carry `SWARM_NODE_ID` in their
/// environment. Their docker-driver containers go too (found by their node label).
fn kill_tasks_of(node_ids: &[String]) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let ours = environ.split(|b| *b == 0).any(|var| {
            node_ids
                .iter()
                .any(|id| var == format!("SWARM_NODE_ID={id}").as_bytes())
        });
        if ours {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
    for id in node_ids {
        let listed = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=io.swarm.node.id={id}")])
            .stderr(Stdio::null())
            .output();
        let Ok(listed) = listed else { continue };
        let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.daemon.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let ids: Vec<String> = self.nodes.iter().filter_map(|n| n.id.clone()).collect();
        kill_tasks_of(&ids);
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!(
                    "----- {} (id {}, port {}): last lines of {} -----\n{}",
                    node.name,
                    node.id.as_deref().unwrap_or("-"),
                    node.port,
                    node.log().display(),
                    self.log_tail(&node.name, 40)
                );
            }
            // Keep the directories for a post-mortem.
            for node in self.nodes.drain(..) {
                let _ = node.dir.keep();
            }
        }
    }
}
