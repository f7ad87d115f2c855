//! A `Cluster` of `swarm daemon`s, each in its own Docker container on a user-defined Docker network: every node is
//! a host with its own address, and a fault is what happens to a machine — `kill` (power cut: the node's tasks die
//! with it), `pause` (a frozen machine), `partition`/`heal` (the cable pulled and plugged back, same address),
//! `restart`.
//!
//! The daemons run `--no-docker`: tasks are processes inside the node's container. The CLI runs inside the node
//! (`docker exec NODE swarm ...`), as an operator logged into that machine would run it. Containers and the network
//! carry the label `io.swarm.test=multihost-<pid>-<n>` and are removed when the `Cluster` is dropped, also when the
//! test panics (the tail of every node's log is printed first). Leftovers of a test process that was killed are
//! removed by the next run. Clusters run one at a time.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashSet;
use std::io::Write as _;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;

use crate::common;
pub use crate::common::parse_node_ls;
pub use crate::common::Row;
use crate::image;
use crate::image::LABEL;

pub const SWARM: &str = env!("CARGO_BIN_EXE_swarm");

/// How long one command may take before the test calls it hung.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(40);

/// How often conditions are polled (each poll runs `docker exec`, about 50–100 ms by itself).
const POLL: Duration = Duration::from_millis(100);

/// Polls `check` every [`POLL`] until it returns `Ok` or `timeout` passes; then panics naming `what` and the last
/// state `check` reported.
#[track_caller]
pub fn wait_until<T>(what: &str, timeout: Duration, check: impl FnMut() -> Result<T, String>) -> T {
    common::wait_until_every(POLL, what, timeout, check)
}

/// Checks that `check` holds at every poll for `period`; panics at the first poll where it does not.
#[track_caller]
pub fn holds_for(what: &str, period: Duration, check: impl FnMut() -> Result<(), String>) {
    common::holds_for_every(POLL, what, period, check)
}

/// The heartbeat settings of every cluster: a node silent for 3 × 500 ms is Down.
pub const HEARTBEAT: &str = "500ms";
pub const HEARTBEAT_GRACE: u32 = 3;

/// One cluster at a time per test binary.
static SERIAL: Mutex<()> = Mutex::new(());

/// The result of one command.
#[derive(Debug, Clone)]
pub struct Run {
    pub command: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "`{}` failed\n{}", self.command, self.show());
        self
    }

    pub fn show(&self) -> String {
        format!(
            "exit code {} after {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Runs `program args` with `input` on stdin; a command that outlives `timeout` is killed and reported with code
/// -2 (`timed out` on stderr), so a caller can tell a hang from a failure.
pub fn command(program: &str, args: &[&str], input: Option<&str>, timeout: Duration) -> Run {
    let command = format!("{program} {}", args.join(" "));
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{command}`: {e}"));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => {
            let output = output.expect("wait for command");
            Run {
                command,
                code: output.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                elapsed: start.elapsed(),
            }
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            Run {
                command,
                code: -2,
                stdout: String::new(),
                stderr: format!("timed out after {timeout:?}"),
                elapsed: start.elapsed(),
            }
        }
    }
}

/// `docker ARGS`.
pub fn docker(args: &[&str]) -> Run {
    command("docker", args, None, COMMAND_TIMEOUT)
}

/// The fields of `swarm info --json` the tests look at.
#[derive(Debug, Clone, Deserialize)]
pub struct Info {
    pub local_node_state: String,
    pub node_id: String,
    pub is_manager: bool,
    /// `NODEID (ADDR)`, or `none (no quorum?)`.
    pub leader: String,
    #[serde(default)]
    pub raft_term: u64,
}

impl Info {
    pub fn leader_id(&self) -> Option<&str> {
        if self.leader.starts_with("none") {
            return None;
        }
        self.leader.split_once(" (").map(|(id, _)| id)
    }

    /// The leader's manager address (`IP:PORT`).
    pub fn leader_addr(&self) -> Option<&str> {
        self.leader_id()?;
        self.leader.split_once(" (")?.1.strip_suffix(')')
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Running,
    Killed,
    Paused,
}

struct Node {
    name: String,
    container: String,
    ip: String,
    manager: bool,
    id: Option<String>,
    power: Power,
    /// Off the network (partitioned away).
    cut: bool,
}

impl Node {
    fn addr(&self) -> String {
        format!("{}:2377", self.ip)
    }

    /// Answers `docker exec` and can reach the others.
    fn reachable(&self) -> bool {
        self.power == Power::Running && !self.cut
    }
}

pub struct Cluster {
    run_id: String,
    network: String,
    /// The first three octets of the network's /24.
    prefix: String,
    image: String,
    nodes: Vec<Node>,
    _serial: MutexGuard<'static, ()>,
}

/// Fails the test with a clear message when the Docker Engine does not answer: these tests need it (CI has it).
fn require_docker() {
    let run = command(
        "docker",
        &["version", "--format", "{{.Server.Version}}"],
        None,
        Duration::from_secs(20),
    );
    assert!(
        run.code == 0,
        "the multi-host tests need a reachable Docker Engine (they run every swarm node as a container), \
         and `docker version` failed; start Docker or point DOCKER_HOST at one.\n{}",
        run.show()
    );
}

/// Removes containers and networks left by test processes that no longer exist (killed before their `Drop`).
fn remove_leftovers() {
    let alive = |value: &str| -> bool {
        let pid = value
            .strip_prefix("multihost-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        match pid {
            Some(pid) => pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists(),
            None => true,
        }
    };
    let format = format!("{{{{.ID}}}} {{{{.Label \"{LABEL}\"}}}}");
    let listed = docker(&["ps", "-a", "--filter", &format!("label={LABEL}"), "--format", &format]);
    for line in listed.stdout.lines() {
        if let Some((id, value)) = line.split_once(' ') {
            if !alive(value) {
                docker(&["rm", "-f", "-v", id]);
            }
        }
    }
    let listed = docker(&[
        "network",
        "ls",
        "--filter",
        &format!("label={LABEL}"),
        "--format",
        "{{.Name}}",
    ]);
    for name in listed.stdout.lines() {
        let value = docker(&[
            "network",
            "inspect",
            "--format",
            &format!("{{{{index .Labels \"{LABEL}\"}}}}"),
            name,
        ]);
        if !alive(value.stdout.trim()) {
            docker(&["network", "rm", name]);
        }
    }
}

impl Cluster {
    /// The /16 blocks the test networks' /24s are taken from.
    const BLOCKS: [&str; 4] = ["172.28", "172.29", "172.30", "10.213"];

    /// A new, empty cluster: the node image (built if the binary changed) and a fresh network.
    pub fn new() -> Cluster {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        require_docker();
        remove_leftovers();
        let image = image::node_image(SWARM);
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let run_id = format!(
            "multihost-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let network = format!("swarm-{run_id}");
        // A free /24, spread by process id; Docker refuses overlapping pools, and other networks may hold a whole
        // /16 (Docker Swarm's docker_gwbridge takes the next free one), so several /16s are tried.
        let first = (std::process::id() as usize * 31 + SEQ.load(Ordering::SeqCst)) % 256;
        let mut created = None;
        let mut last = String::new();
        let candidates = Self::BLOCKS
            .iter()
            .flat_map(|block| (0..256).map(move |k| format!("{block}.{}", (first + k) % 256)));
        for prefix in candidates {
            let run = docker(&[
                "network",
                "create",
                "--driver",
                "bridge",
                "--label",
                &format!("{LABEL}={run_id}"),
                "--subnet",
                &format!("{prefix}.0/24"),
                &network,
            ]);
            if run.code == 0 {
                created = Some(prefix);
                break;
            }
            last = run.show();
        }
        let prefix =
            created.unwrap_or_else(|| panic!("cannot create a test network in any of {:?}: {last}", Self::BLOCKS));
        Cluster {
            run_id,
            network,
            prefix,
            image,
            nodes: Vec::new(),
            _serial: serial,
        }
    }

    /// A cluster of `managers` (the first one inits) and `workers`, all Ready, with the test heartbeat settings.
    pub fn with(managers: &[&str], workers: &[&str]) -> Cluster {
        let mut c = Cluster::new();
        let (first, rest) = managers.split_first().expect("at least one manager");
        c.init(first);
        c.write(
            first,
            &format!("update --dispatcher-heartbeat {HEARTBEAT} --heartbeat-grace {HEARTBEAT_GRACE}"),
        );
        for m in rest {
            c.join(m, "manager");
        }
        for w in workers {
            c.join(w, "worker");
        }
        c.wait_all_ready();
        c
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

    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    pub fn managers(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.manager)
            .map(|n| n.name.clone())
            .collect()
    }

    pub fn workers(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| !n.manager)
            .map(|n| n.name.clone())
            .collect()
    }

    pub fn power(&self, name: &str) -> Power {
        self.node(name).power
    }

    pub fn is_cut(&self, name: &str) -> bool {
        self.node(name).cut
    }

    /// The node's container name, for a command run outside the harness (e.g. in another thread).
    pub fn container(&self, name: &str) -> String {
        self.node(name).container.clone()
    }

    pub fn id(&self, name: &str) -> String {
        self.node(name)
            .id
            .clone()
            .unwrap_or_else(|| panic!("node {name} is not in the swarm"))
    }

    /// Every node's id (of those that joined).
    pub fn ids(&self) -> Vec<String> {
        self.nodes.iter().filter_map(|n| n.id.clone()).collect()
    }

    /// The name of the node with `id` or manager address `addr`.
    pub fn name_of(&self, id_or_addr: &str) -> Option<String> {
        self.nodes
            .iter()
            .find(|n| n.id.as_deref() == Some(id_or_addr) || n.addr() == id_or_addr)
            .map(|n| n.name.clone())
    }

    /// Creates the node's container (its own address on the network) and waits until its daemon answers.
    pub fn add(&mut self, name: &str, manager: bool) {
        assert!(self.nodes.iter().all(|n| n.name != name), "node {name} exists already");
        let ip = format!("{}.{}", self.prefix, 10 + self.nodes.len());
        let container = format!("swarm-{}-{name}", self.run_id);
        let log = std::env::var("SWARM_TEST_LOG").unwrap_or_else(|_| "info".into());
        docker(&[
            "run",
            "--detach",
            "--init",
            "--name",
            &container,
            "--hostname",
            name,
            "--label",
            &format!("{LABEL}={}", self.run_id),
            "--network",
            &self.network,
            "--ip",
            &ip,
            "--env",
            &format!("SWARM_LOG={log}"),
            "--env",
            "NO_COLOR=1",
            &self.image,
            "swarm",
            "daemon",
            "--no-docker",
            "--hostname",
            name,
        ])
        .ok();
        self.nodes.push(Node {
            name: name.to_string(),
            container,
            ip,
            manager,
            id: None,
            power: Power::Running,
            cut: false,
        });
        self.wait_answers(name);
    }

    fn wait_answers(&self, name: &str) {
        wait_until(
            &format!("the daemon of {name} answers"),
            Duration::from_secs(30),
            || {
                let run = self.swarm(name, &["info", "--json"]);
                if run.code == 0 {
                    return Ok(());
                }
                let state = docker(&["inspect", "--format", "{{.State.Status}}", &self.node(name).container]);
                if state.stdout.trim() == "exited" {
                    panic!("the daemon of {name} exited:\n{}", self.log_tail(name, 40));
                }
                Err(run.show())
            },
        );
    }

    /// `docker exec NODE swarm ARGS`.
    pub fn swarm(&self, name: &str, args: &[&str]) -> Run {
        self.swarm_timeout(name, args, COMMAND_TIMEOUT)
    }

    /// `docker exec NODE swarm ARGS`, killed after `timeout` (code -2).
    pub fn swarm_timeout(&self, name: &str, args: &[&str], timeout: Duration) -> Run {
        let node = self.node(name);
        let mut all = vec!["exec", node.container.as_str(), "swarm"];
        all.extend_from_slice(args);
        let mut run = command("docker", &all, None, timeout);
        run.command = format!("swarm {}  (on {name})", args.join(" "));
        run
    }

    /// `docker exec NODE swarm LINE`, the line split on whitespace.
    pub fn run(&self, name: &str, line: &str) -> Run {
        let args: Vec<&str> = line.split_whitespace().collect();
        self.swarm(name, &args)
    }

    /// Runs a write and asserts it succeeds, retrying while it fails with "changed meanwhile; try again" (a
    /// follower checks a write against its own replica, which may lag the leader by a heartbeat).
    #[track_caller]
    pub fn write(&self, name: &str, line: &str) -> Run {
        wait_until(
            &format!("`swarm {line}` on {name} succeeds"),
            Duration::from_secs(10),
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

    /// Writes `content` to `path` inside the node's container.
    pub fn put_file(&self, name: &str, path: &str, content: &str) {
        let node = self.node(name);
        command(
            "docker",
            &["exec", "-i", &node.container, "sh", "-c", &format!("cat > {path}")],
            Some(content),
            COMMAND_TIMEOUT,
        )
        .ok();
    }

    /// Starts `name` as the first manager of a new swarm.
    pub fn init(&mut self, name: &str) -> String {
        self.add(name, true);
        let addr = self.node(name).addr();
        self.swarm(
            name,
            &["init", "--advertise-addr", &addr, "--listen-addr", "0.0.0.0:2377"],
        )
        .ok();
        let id = self.info(name).node_id;
        self.node_mut(name).id = Some(id.clone());
        id
    }

    /// Starts `name` and joins it as `role` (manager | worker) through a reachable manager.
    pub fn join(&mut self, name: &str, role: &str) -> String {
        let manager = self.a_manager();
        let token = self
            .swarm(&manager, &["join-token", "-q", role])
            .ok()
            .stdout
            .trim()
            .to_string();
        self.add(name, role == "manager");
        let addr = self.node(name).addr();
        let remote = self.node(&manager).addr();
        let run = self
            .swarm(
                name,
                &[
                    "join",
                    "--token",
                    &token,
                    "--advertise-addr",
                    &addr,
                    "--listen-addr",
                    "0.0.0.0:2377",
                    &remote,
                ],
            )
            .ok();
        assert!(
            run.stdout.contains(&format!("joined a swarm as a {role}")),
            "{}",
            run.show()
        );
        let id = self.info(name).node_id;
        self.node_mut(name).id = Some(id.clone());
        id
    }

    /// `swarm info --json` on `name`; `Err` when it does not answer.
    pub fn try_info(&self, name: &str) -> Result<Info, String> {
        let run = self.swarm_timeout(name, &["info", "--json"], Duration::from_secs(10));
        if run.code != 0 {
            return Err(run.show());
        }
        serde_json::from_str(&run.stdout).map_err(|e| format!("info --json on {name}: {e}\n{}", run.show()))
    }

    #[track_caller]
    pub fn info(&self, name: &str) -> Info {
        self.try_info(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `swarm node ls` on `name`, parsed; `Err` with the output when it fails.
    pub fn try_node_ls(&self, name: &str) -> Result<Vec<Row>, String> {
        let run = self.swarm_timeout(name, &["node", "ls"], Duration::from_secs(10));
        if run.code != 0 {
            return Err(run.show());
        }
        Ok(parse_node_ls(&run.stdout))
    }

    /// Every task in the store, as `swarm debug tasks` on `manager` prints them.
    pub fn tasks(&self, manager: &str) -> Result<Vec<Value>, String> {
        let run = self.swarm_timeout(manager, &["debug", "tasks"], Duration::from_secs(10));
        if run.code != 0 {
            return Err(run.show());
        }
        serde_json::from_str(&run.stdout).map_err(|e| format!("{e}: {}", run.stdout))
    }

    /// `swarm node inspect NODE` on `name`: the node's JSON record.
    pub fn try_inspect(&self, name: &str, node: &str) -> Result<Value, String> {
        let run = self.swarm_timeout(name, &["node", "inspect", node], Duration::from_secs(10));
        if run.code != 0 {
            return Err(run.show());
        }
        match serde_json::from_str::<Vec<Value>>(&run.stdout) {
            Ok(mut list) if list.len() == 1 => Ok(list.remove(0)),
            _ => Err(format!("`{}` printed no single record: {}", run.command, run.show())),
        }
    }

    /// Reachable managers (running, not paused, on the network).
    pub fn reachable_managers(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.manager && n.id.is_some() && n.reachable())
            .map(|n| n.name.clone())
            .collect()
    }

    /// A reachable manager whose `node ls` works.
    pub fn a_manager(&self) -> String {
        wait_until(
            "some reachable manager answers `node ls`",
            Duration::from_secs(20),
            || {
                for name in self.reachable_managers() {
                    if self.try_node_ls(&name).is_ok() {
                        return Ok(name);
                    }
                }
                Err("no reachable manager answered `node ls`".into())
            },
        )
    }

    /// Waits until every running node among `names` names the same leader, one of `names`. Returns its name.
    pub fn leader_among(&self, names: &[&str]) -> String {
        wait_until(
            &format!("{names:?} agree on a leader among them"),
            Duration::from_secs(30),
            || {
                let mut seen = BTreeMap::new();
                for name in names.iter().filter(|n| self.node(n).power == Power::Running) {
                    let info = self.try_info(name)?;
                    seen.insert(*name, info.leader_addr().and_then(|addr| self.name_of(addr)));
                }
                let leaders: HashSet<_> = seen.values().collect();
                match leaders.into_iter().collect::<Vec<_>>().as_slice() {
                    [Some(leader)] if names.contains(&leader.as_str()) => Ok(leader.clone()),
                    _ => Err(format!("leader as each manager sees it: {seen:?}")),
                }
            },
        )
    }

    /// The leader, as every reachable manager agrees.
    pub fn leader(&self) -> String {
        let managers = self.reachable_managers();
        let managers: Vec<&str> = managers.iter().map(String::as_str).collect();
        self.leader_among(&managers)
    }

    /// Waits until `node ls` shows every reachable node Ready, every other member Down, and a leader.
    pub fn wait_all_ready(&self) -> Vec<Row> {
        wait_until(
            "every reachable node is Ready (the others Down) and there is a leader",
            Duration::from_secs(40),
            || {
                let manager = self
                    .reachable_managers()
                    .into_iter()
                    .next()
                    .ok_or("no reachable manager")?;
                let rows = self.try_node_ls(&manager)?;
                for node in self.nodes.iter().filter(|n| n.id.is_some()) {
                    let id = node.id.as_deref().unwrap_or_default();
                    let want = if node.reachable() { "Ready" } else { "Down" };
                    if !rows.iter().any(|r| r.id == id && r.status == want) {
                        return Err(format!("{} ({id}) is not {want} on {manager}: {rows:#?}", node.name));
                    }
                }
                if !rows.iter().any(|r| r.manager_status == "Leader") {
                    return Err(format!("no leader on {manager}: {rows:#?}"));
                }
                Ok(rows)
            },
        )
    }

    /// Waits until a reachable manager shows `name` with `status` (Ready | Down).
    pub fn wait_status(&self, name: &str, status: &str, limit: Duration) {
        let id = self.id(name);
        wait_until(&format!("{name} shows {status}"), limit, || {
            let manager = self
                .reachable_managers()
                .into_iter()
                .next()
                .ok_or("no reachable manager")?;
            let rows = self.try_node_ls(&manager)?;
            match rows.iter().find(|r| r.id == id) {
                Some(r) if r.status == status => Ok(()),
                _ => Err(format!("on {manager}: {rows:#?}")),
            }
        });
    }

    // ----- faults -----

    /// `docker kill`: the machine loses power; its daemon and its tasks die at once.
    pub fn kill(&mut self, name: &str) {
        self.switch(name, "kill", Power::Running, Power::Killed);
    }

    /// `docker start` of a killed node (same address, same disk); waits until its daemon answers.
    pub fn start(&mut self, name: &str) {
        self.switch(name, "start", Power::Killed, Power::Running);
        self.wait_answers(name);
    }

    /// A crash and a reboot: `kill` then `start`.
    pub fn restart(&mut self, name: &str) {
        if self.node(name).power == Power::Paused {
            self.unpause(name);
        }
        if self.node(name).power == Power::Running {
            self.kill(name);
        }
        self.start(name);
    }

    /// `docker pause`: every process of the machine is frozen (it neither talks nor answers).
    pub fn pause(&mut self, name: &str) {
        self.switch(name, "pause", Power::Running, Power::Paused);
    }

    pub fn unpause(&mut self, name: &str) {
        self.switch(name, "unpause", Power::Paused, Power::Running);
    }

    /// `docker <verb>` of a node's container, which must be `from`; it is `to` afterwards.
    fn switch(&mut self, name: &str, verb: &str, from: Power, to: Power) {
        let node = self.node(name);
        assert_eq!(node.power, from, "{verb} {name}: it is {:?}", node.power);
        docker(&[verb, &node.container]).ok();
        self.node_mut(name).power = to;
    }

    /// Cuts `side` off the network (`docker network disconnect`): the nodes of `side` reach nobody, the `rest`
    /// still reach each other. With one network, a side of several nodes is several islands of one: name the
    /// minority as `side`.
    pub fn partition(&mut self, side: &[&str], rest: &[&str]) {
        let all: BTreeSet<String> = side.iter().chain(rest).map(|s| s.to_string()).collect();
        assert_eq!(
            all,
            self.names().into_iter().collect::<BTreeSet<_>>(),
            "a partition names every node once"
        );
        for name in side {
            let node = self.node(name);
            if node.cut {
                continue;
            }
            docker(&["network", "disconnect", "--force", &self.network, &node.container]).ok();
            self.node_mut(name).cut = true;
        }
    }

    /// Plugs every cut node back in, on its own address (`docker network connect --ip`).
    pub fn heal(&mut self) {
        let cut: Vec<String> = self.nodes.iter().filter(|n| n.cut).map(|n| n.name.clone()).collect();
        for name in cut {
            let node = self.node(&name);
            docker(&["network", "connect", "--ip", &node.ip, &self.network, &node.container]).ok();
            self.node_mut(&name).cut = false;
        }
    }

    /// Heals every fault: plugs cut nodes back, unpauses paused ones, starts killed ones.
    pub fn heal_all(&mut self) {
        self.heal();
        for name in self.names() {
            match self.power(&name) {
                Power::Paused => self.unpause(&name),
                Power::Killed => self.start(&name),
                Power::Running => {}
            }
        }
    }

    // ----- services and their invariants -----

    /// Waits until `service` runs exactly `n` tasks on Ready nodes, one per slot, as the leader's store says, and
    /// the processes agree (no slot has two live task processes). Returns the tasks.
    #[track_caller]
    pub fn wait_converged(&self, service: &str, n: usize, limit: Duration) -> Vec<Value> {
        wait_until(&format!("{service} converges to {n} tasks"), limit, || {
            self.converges(service, n)
        })
    }

    /// `Ok` when `service` runs exactly `n` tasks on Ready nodes, one per slot, by the store and by the processes of
    /// the reachable nodes.
    pub fn converges(&self, service: &str, n: usize) -> Result<Vec<Value>, String> {
        let manager = self.a_manager();
        let rows = self.try_node_ls(&manager)?;
        let all = self.tasks(&manager)?;
        let ready: BTreeSet<&str> = rows
            .iter()
            .filter(|r| r.status == "Ready")
            .map(|r| r.id.as_str())
            .collect();
        let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
        let mut slots = BTreeSet::new();
        let mut elsewhere = Vec::new();
        for t in all.iter().filter(|t| t["service"] == service) {
            if t["desired_state"] == "running" && t["status"]["state"] == "running" {
                let node = t["node_id"].as_str().unwrap_or_default();
                if !ready.contains(node) {
                    elsewhere.push(format!("slot {} on {node} (not Ready)", t["slot"]));
                    continue;
                }
                *by_node
                    .entry(self.name_of(node).unwrap_or(node.to_string()))
                    .or_default() += 1;
                if !slots.insert(t["slot"].to_string()) {
                    return Err(format!("two tasks of {service} run in slot {} by the store", t["slot"]));
                }
            }
        }
        let total: usize = by_node.values().sum();
        if total != n || !elsewhere.is_empty() {
            let pending: Vec<String> = all
                .iter()
                .filter(|t| t["service"] == service && t["desired_state"] == "running")
                .filter(|t| t["status"]["state"] != "running")
                .map(|t| {
                    format!(
                        "slot {} on {} {} {}",
                        t["slot"], t["node_id"], t["status"]["state"], t["status"]["err"]
                    )
                })
                .collect();
            return Err(format!(
                "running on Ready nodes {by_node:?}; on others {elsewhere:?}; not running yet {pending:?}"
            ));
        }
        self.no_slot_runs_twice_among(service, |n| n.reachable())?;
        Ok(all)
    }

    /// The real invariant, from the machines themselves: no slot of `service` has live processes of two different
    /// tasks on the cluster's nodes (read from `/proc`: a task's processes carry `SWARM_TASK_ID`,
    /// `SWARM_SERVICE_NAME`, `SWARM_TASK_SLOT` and `SWARM_NODE_ID` in their environment). Frozen processes of a
    /// paused node count: they run again when it is unpaused.
    /// Over `period`, `service` keeps `n` running tasks and never runs a slot twice.
    pub fn stays_converged(&self, service: &str, n: usize, period: Duration) {
        holds_for(
            &format!("{service} stays at {n} tasks, each slot run once"),
            period,
            || {
                self.converges(service, n).map(|_| ())?;
                self.no_slot_runs_twice(service)
            },
        );
    }

    pub fn no_slot_runs_twice(&self, service: &str) -> Result<(), String> {
        self.no_slot_runs_twice_among(service, |_| true)
    }

    /// [`Self::no_slot_runs_twice`] over the nodes `keep` selects (while a node is frozen or cut off, the cluster
    /// rightly replaces its tasks: its processes are left out until it is back).
    fn no_slot_runs_twice_among(&self, service: &str, keep: impl Fn(&Node) -> bool) -> Result<(), String> {
        let ids: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| keep(n))
            .filter_map(|n| n.id.clone())
            .collect();
        let mut slots: BTreeMap<String, BTreeMap<(String, String), Vec<u32>>> = BTreeMap::new();
        for p in task_processes(&ids) {
            if p.service == service {
                let node = self.name_of(&p.node).unwrap_or(p.node.clone());
                slots
                    .entry(p.slot)
                    .or_default()
                    .entry((p.task, node))
                    .or_default()
                    .push(p.pid);
            }
        }
        let twice: Vec<String> = slots
            .iter()
            .filter(|(_, tasks)| tasks.len() > 1)
            .map(|(slot, tasks)| format!("slot {slot}: {tasks:?}"))
            .collect();
        if twice.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{service} runs a slot twice ((task, node): pids): {}",
                twice.join("; ")
            ))
        }
    }

    /// The ids of the tasks that have live processes on `name`.
    pub fn live_tasks_on(&self, name: &str) -> BTreeSet<String> {
        let id = self.id(name);
        task_processes(&self.ids())
            .into_iter()
            .filter(|p| p.node == id)
            .map(|p| p.task)
            .collect()
    }

    /// The last `lines` lines of the node's log (`docker logs`).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let node = self.node(name);
        let run = docker(&["logs", "--tail", &lines.to_string(), &node.container]);
        let text = format!("{}{}", run.stdout, run.stderr);
        text.lines()
            .map(|l| match l.char_indices().nth(400) {
                Some((cut, _)) => format!("{} …", &l[..cut]),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A recorder of every manager's view of (term, leader), polled in the background until dropped.
    pub fn observe_leaders(&self) -> LeaderWatch {
        let managers: Vec<(String, String)> = self
            .nodes
            .iter()
            .filter(|n| n.manager)
            .map(|n| (n.name.clone(), n.container.clone()))
            .collect();
        let ids: BTreeMap<String, String> = self
            .nodes
            .iter()
            .filter_map(|n| Some((n.id.clone()?, n.name.clone())))
            .collect();
        LeaderWatch::start(managers, ids)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SWARM_TEST_LOGS=N prints the last N lines of every node's log after a passing test too.
        let wanted: Option<usize> = std::env::var("SWARM_TEST_LOGS").ok().and_then(|v| v.parse().ok());
        if std::thread::panicking() || wanted.is_some() {
            for node in &self.nodes {
                eprintln!(
                    "----- {} ({}, id {}, {:?}{}): last lines of its log -----\n{}",
                    node.name,
                    node.ip,
                    node.id.as_deref().unwrap_or("-"),
                    node.power,
                    if node.cut { ", cut off" } else { "" },
                    self.log_tail(&node.name, wanted.unwrap_or(40))
                );
            }
        }
        // A paused container cannot be removed by every engine version: unpause first.
        for node in self.nodes.iter().filter(|n| n.power == Power::Paused) {
            docker(&["unpause", &node.container]);
        }
        let listed = docker(&["ps", "-aq", "--filter", &format!("label={LABEL}={}", self.run_id)]);
        let ids: Vec<&str> = listed.stdout.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids);
            docker(&args);
        }
        docker(&["network", "rm", &self.network]);
    }
}

/// One live process of a task.
#[derive(Debug, Clone)]
pub struct TaskProcess {
    pub pid: u32,
    pub task: String,
    pub service: String,
    pub slot: String,
    pub node: String,
}

/// The live (or frozen) task processes of the nodes `node_ids`, from the host's `/proc` (the containers' processes
/// are the host's).
pub fn task_processes(node_ids: &[String]) -> Vec<TaskProcess> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // Zombies have exited: their environment reads empty.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let mut vars = BTreeMap::new();
        for var in environ.split(|b| *b == 0) {
            let var = String::from_utf8_lossy(var);
            if let Some((k, v)) = var.split_once('=') {
                if k.starts_with("SWARM_") {
                    vars.insert(k.to_string(), v.to_string());
                }
            }
        }
        let Some(node) = vars.get("SWARM_NODE_ID") else {
            continue;
        };
        if !node_ids.contains(node) {
            continue;
        }
        let get = |k: &str| vars.get(k).cloned().unwrap_or_default();
        out.push(TaskProcess {
            pid,
            task: get("SWARM_TASK_ID"),
            service: get("SWARM_SERVICE_NAME"),
            slot: get("SWARM_TASK_SLOT"),
            node: node.clone(),
        });
    }
    out
}

/// One manager's view at one moment.
#[derive(Debug, Clone)]
pub struct Sighting {
    pub at: Duration,
    pub manager: String,
    pub term: u64,
    /// The leader's name, as that manager names it.
    pub leader: Option<String>,
}

/// Polls `swarm info --json` on every manager in turn, in a thread, and records (term, leader) as each sees it.
pub struct LeaderWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Sighting>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LeaderWatch {
    fn start(managers: Vec<(String, String)>, ids: BTreeMap<String, String>) -> LeaderWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let stop = stop.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    for (name, container) in &managers {
                        let run = command(
                            "docker",
                            &["exec", container, "swarm", "info", "--json"],
                            None,
                            Duration::from_secs(5),
                        );
                        let Ok(info) = serde_json::from_str::<Info>(&run.stdout) else {
                            continue;
                        };
                        if !info.is_manager || info.local_node_state != "active" {
                            continue;
                        }
                        let leader = info
                            .leader_id()
                            .map(|id| ids.get(id).cloned().unwrap_or(id.to_string()));
                        seen.lock().unwrap().push(Sighting {
                            at: start.elapsed(),
                            manager: name.clone(),
                            term: info.raft_term,
                            leader,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        LeaderWatch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    pub fn sightings(&self) -> Vec<Sighting> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops polling and returns every sighting.
    pub fn finish(mut self) -> Vec<Sighting> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.sightings()
    }
}

impl Drop for LeaderWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Raft's election safety as the managers report it: at most one leader per term. `Err` names the term and who
/// saw whom.
pub fn one_leader_per_term(sightings: &[Sighting]) -> Result<BTreeMap<u64, String>, String> {
    let mut by_term: BTreeMap<u64, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for s in sightings {
        if let Some(leader) = &s.leader {
            by_term
                .entry(s.term)
                .or_default()
                .entry(leader.clone())
                .or_default()
                .push(format!("{} at {:?}", s.manager, s.at));
        }
    }
    let mut out = BTreeMap::new();
    for (term, leaders) in by_term {
        if leaders.len() > 1 {
            return Err(format!("term {term} had {} leaders: {leaders:#?}", leaders.len()));
        }
        out.insert(term, leaders.into_keys().next().unwrap_or_default());
    }
    Ok(out)
}
