//! Benchmarks of the manager cluster: three real `swarm daemon` processes on loopback, Raft on disk with fsync.
//!
//! - leader failover: kill -9 the leader, time until a surviving manager accepts a write (20 trials; p50, p99);
//! - committed writes per second through the leader with 1 and with 64 concurrent clients.
//!
//! Run: `cargo bench --bench cluster` (set `FAILOVER_TRIALS` / `WRITE_SECONDS` to change the sizes, `BENCH_JSON` to
//! a file to also get the figures as JSON; `SWARM_BENCH_BIN` to run the daemons from another build, such as
//! `target/dist/swarm`). `benches/etcd.rs` measures etcd the same way, as the reference.

mod common;

use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use common::free_port;
use common::wait_until;
use common::Failover;
use common::Figures;

use swarm_reconciler::store::Op;
use swarm_reconciler::store::Request;
use swarm_reconciler::wire::Info;

struct Node {
    name: String,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Node {
    fn socket(&self) -> String {
        self.dir.join("swarm.sock").display().to_string()
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let child = Command::new(common::swarm_bin())
            .args(["daemon", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--socket", &self.socket(), "--hostname", &self.name])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start swarm daemon");
        self.child = Some(child);
        wait_until(Duration::from_secs(10), || self.cli(&["info", "--json"]).is_some());
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new(common::swarm_bin())
            .arg("-H")
            .arg(self.socket())
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn info(&self) -> Option<Info> {
        serde_json::from_str(&self.cli(&["info", "--json"])?).ok()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cluster(root: &std::path::Path) -> Vec<Node> {
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| {
            let dir = root.join(format!("m{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            Node {
                name: format!("m{i}"),
                dir,
                port: free_port(),
                child: None,
            }
        })
        .collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    let a = nodes[0].addr();
    nodes[0]
        .cli(&["init", "--advertise-addr", &a, "--listen-addr", &a])
        .expect("init");
    let token = nodes[0]
        .cli(&["join-token", "-q", "manager"])
        .expect("token")
        .trim()
        .to_string();
    for n in &nodes[1..] {
        let addr = n.addr();
        n.cli(&[
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &addr,
            "--listen-addr",
            &addr,
            &a,
        ])
        .expect("join");
    }
    wait_until(Duration::from_secs(20), || all_healthy(&nodes));
    nodes
}

/// Every manager runs, knows the same leader, counts three managers, and has applied the same log (a restarted
/// manager has caught up): the state a failover is measured from.
fn all_healthy(nodes: &[Node]) -> bool {
    let infos: Vec<Option<Info>> = nodes.iter().map(Node::info).collect();
    let Some(Some(first)) = infos.first() else { return false };
    infos.iter().all(|i| {
        i.as_ref().is_some_and(|i| {
            i.managers == 3
                && i.leader == first.leader
                && !i.leader.starts_with("none")
                && i.raft_last_applied == first.raft_last_applied
        })
    })
}

fn leader_index(nodes: &[Node]) -> Option<usize> {
    let info = nodes.iter().find_map(|n| n.child.as_ref().and_then(|_| n.info()))?;
    let leader_id = info.leader.split(' ').next()?.to_string();
    nodes
        .iter()
        .position(|n| n.info().is_some_and(|i| i.node_id == leader_id))
}

fn failover(nodes: &mut [Node], trials: usize) -> Failover {
    let mut times = Vec::new();
    for trial in 0..trials {
        let leader = leader_index(nodes).expect("a leader");
        let survivor = (leader + 1) % nodes.len();
        let label = format!("trial={trial}");
        let target = nodes[survivor].name.clone();
        let verbose = std::env::var_os("FAILOVER_VERBOSE").is_some();
        let term_before = verbose.then(|| nodes[leader].info().map_or(0, |i| i.raft_term));
        nodes[leader].kill();
        let t = Instant::now();
        // The first write a surviving manager accepts ends the measurement.
        while nodes[survivor]
            .cli(&["node", "update", "--label-add", &label, &target])
            .is_none()
        {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no write accepted 30 s after killing the leader"
            );
        }
        let took = t.elapsed();
        times.push(took);
        if let Some(term_before) = term_before {
            // More than one term between the old leader's and the new one's: an election round failed (a split vote).
            let term_after = nodes[survivor].info().map_or(0, |i| i.raft_term);
            println!(
                "  trial {trial}: killed {}, write on {} after {took:?}, term {term_before} -> {term_after}",
                nodes[leader].name, target,
            );
        }
        nodes[leader].start();
        wait_until(Duration::from_secs(30), || all_healthy(nodes));
    }
    Failover::of(times)
}

/// A client of the leader's Raft write endpoint, authenticated with a manager's own certificate.
fn write_client(node: &Node) -> reqwest::Client {
    let tls = node.dir.join("data/tls");
    let read = |f: &str| std::fs::read_to_string(tls.join(f)).unwrap();
    swarm_reconciler::tls::install_crypto_provider();
    let config = swarm_reconciler::tls::client_config(&read("ca.pem"), &read("node.pem"), &read("node.key")).unwrap();
    swarm_reconciler::tls::http_client(config, Duration::from_secs(10)).unwrap()
}

async fn throughput(client: reqwest::Client, leader: String, clients: usize, seconds: u64) -> f64 {
    let url = format!("https://{leader}/v1/internal/write");
    common::throughput(clients, seconds, move |c, i| {
        let request = Request {
            guards: vec![],
            ops: vec![Op::Put {
                table: "bench".into(),
                key: format!("c{c}-{}", i % 100),
                value: serde_json::json!({ "i": i }).into(),
            }],
        };
        let send = client.post(&url).json(&request).send();
        common::succeeded(send)
    })
    .await
}

fn main() {
    let trials: usize = common::env_or("FAILOVER_TRIALS", 20);
    let seconds: u64 = common::env_or("WRITE_SECONDS", 5);
    let mut figures = Figures::new("cluster");
    let root = tempfile::tempdir().unwrap();
    // BENCH_KEEP=1 keeps the managers' data and logs (`m1/log` ...; SWARM_LOG sets what they log) to look into.
    let keep = std::env::var_os("BENCH_KEEP").is_some();
    if keep {
        println!("managers' data and logs: {}", root.path().display());
    }
    let mut nodes = cluster(root.path());
    println!("cluster: 3 managers on loopback, Raft log and state on redb with fsync, election timeout 150-300 ms");
    figures.about("system", "swarm");
    figures.about("write_seconds", seconds);

    let leader = leader_index(&nodes).expect("leader");
    let client = write_client(&nodes[leader]);
    let addr = nodes[leader].addr();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for clients in [1, 64] {
        let rate = runtime.block_on(throughput(client.clone(), addr.clone(), clients, seconds));
        println!("committed writes/s, {clients:>2} client(s)                  {rate:>9.0}");
        figures.set(&format!("writes_per_s_{clients}"), rate);
    }

    // FAILOVER_TRIALS=0: throughput only, as benches/etcd.rs.
    if trials > 0 {
        let failover = failover(&mut nodes, trials);
        failover.print();
        failover.record(&mut figures);
    }
    figures.write();
    if keep {
        drop(nodes);
        let _ = root.keep();
    }
}
