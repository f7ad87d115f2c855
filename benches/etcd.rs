//! The reference for `benches/cluster.rs`: a three-member etcd cluster (Debian's etcd-server 3.4) on loopback, each
//! member's data in a temporary directory with etcd's default fsync, measured the way cluster.rs measures ours:
//!
//! - committed writes per second through the leader with 1 and with 64 concurrent clients, each a small put sent
//!   through etcd's HTTP/JSON gateway (`POST /v3/kv/put`) by the same reqwest loop (`common::throughput`);
//! - leader failover: kill -9 the leader, time until a surviving member accepts a put (p50, p99).
//!
//! Run: `cargo bench --bench etcd` (needs `apt-get install etcd-server`; `ETCD` names another binary). The sizes are
//! cluster.rs's: `WRITE_SECONDS`, `FAILOVER_TRIALS`; `BENCH_JSON` names a file to also get the figures as JSON.
//! etcd reads its own settings from `ETCD_*` variables, e.g. `ETCD_ELECTION_TIMEOUT=300 ETCD_HEARTBEAT_INTERVAL=50`
//! for an election timeout like ours; by default it is etcd's (1 s, heartbeat 100 ms).

mod common;

use std::path::Path;
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
use serde_json::Value;

struct Member {
    name: String,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Member {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Starts the member; with its data directory already there (a restart), etcd ignores the initial-cluster flags.
    fn start(&mut self, initial_cluster: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let child = Command::new(etcd_bin())
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &self.url(),
                "--advertise-client-urls",
                &self.url(),
            ])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", initial_cluster])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "swarm-bench",
            ])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e}): apt-get install etcd-server", etcd_bin()));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

fn etcd_bin() -> String {
    std::env::var("ETCD").unwrap_or_else(|_| "etcd".into())
}

/// What a member says about itself: its id, the leader it knows, and how far it has applied the log.
struct Status {
    member_id: String,
    leader: String,
    applied: String,
}

fn field<'a>(v: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|n| v.get(n))
}

async fn status(client: &reqwest::Client, member: &Member) -> Option<Status> {
    let response = client
        .post(format!("{}/v3/maintenance/status", member.url()))
        .json(&serde_json::json!({}))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?;
    let v: Value = response.error_for_status().ok()?.json().await.ok()?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    Some(Status {
        member_id: text(v.get("header").and_then(|h| field(h, &["member_id", "memberId"])))?,
        leader: text(v.get("leader"))?,
        applied: text(field(&v, &["raftAppliedIndex", "raft_applied_index"]))?,
    })
}

struct Cluster {
    members: Vec<Member>,
    initial: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Cluster {
    fn start(root: &Path) -> Cluster {
        let mut members: Vec<Member> = (1..=3)
            .map(|i| {
                let dir = root.join(format!("e{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                Member {
                    name: format!("e{i}"),
                    dir,
                    client_port: free_port(),
                    peer_port: free_port(),
                    child: None,
                }
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in members.iter_mut() {
            m.start(&initial);
        }
        swarm_reconciler::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let cluster = Cluster {
            members,
            initial,
            client,
            runtime,
        };
        wait_until(Duration::from_secs(30), || cluster.all_healthy());
        cluster
    }

    fn statuses(&self) -> Vec<Option<Status>> {
        self.runtime.block_on(async {
            let mut out = Vec::new();
            for m in &self.members {
                out.push(match m.child {
                    Some(_) => status(&self.client, m).await,
                    None => None,
                });
            }
            out
        })
    }

    /// Every member runs, knows the same leader and has applied the same log: the state a failover starts from,
    /// as in cluster.rs.
    fn all_healthy(&self) -> bool {
        let statuses = self.statuses();
        let Some(Some(first)) = statuses.first() else {
            return false;
        };
        statuses.iter().all(|s| {
            s.as_ref()
                .is_some_and(|s| s.leader == first.leader && s.leader != "0" && s.applied == first.applied)
        })
    }

    fn leader_index(&self) -> Option<usize> {
        let statuses = self.statuses();
        let leader = statuses.iter().flatten().next()?.leader.clone();
        statuses
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.member_id == leader))
    }

    /// Kill -9 the leader, then time until a put on a surviving member commits. A put sent while the old leader
    /// is still believed alive can hang until etcd's request timeout (about 7 s), so a new attempt starts every
    /// 10 ms next to the ones in flight and the first success ends the measurement.
    fn failover(&mut self, trials: usize) -> Failover {
        let mut times = Vec::new();
        for trial in 0..trials {
            let leader = self.leader_index().expect("a leader");
            let survivor = (leader + 1) % self.members.len();
            let url = format!("{}/v3/kv/put", self.members[survivor].url());
            let body = put_body(&format!("failover-{trial}"), "1");
            self.members[leader].kill();
            let t = Instant::now();
            let client = self.client.clone();
            self.runtime.block_on(async move {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let mut attempts = tokio::task::JoinSet::new();
                loop {
                    assert!(
                        t.elapsed() < Duration::from_secs(30),
                        "no put accepted 30 s after killing the leader"
                    );
                    let (send, tx) = (client.post(&url).json(&body).send(), tx.clone());
                    attempts.spawn(async move {
                        if send.await.is_ok_and(|r| r.status().is_success()) {
                            let _ = tx.send(());
                        }
                    });
                    if tokio::time::timeout(Duration::from_millis(10), rx.recv()).await.is_ok() {
                        break;
                    }
                }
                attempts.abort_all();
            });
            times.push(t.elapsed());
            if std::env::var_os("FAILOVER_VERBOSE").is_some() {
                let (killed, target) = (&self.members[leader].name, &self.members[survivor].name);
                println!(
                    "  trial {trial}: killed {killed}, put on {target} after {:?}",
                    t.elapsed()
                );
            }
            let initial = self.initial.clone();
            self.members[leader].start(&initial);
            wait_until(Duration::from_secs(30), || self.all_healthy());
        }
        Failover::of(times)
    }
}

/// The JSON body of a put: the gateway takes keys and values as base64.
fn put_body(key: &str, value: &str) -> Value {
    serde_json::json!({ "key": base64(key.as_bytes()), "value": base64(value.as_bytes()) })
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn throughput(client: reqwest::Client, leader: String, clients: usize, seconds: u64) -> f64 {
    let url = format!("{leader}/v3/kv/put");
    common::throughput(clients, seconds, move |c, i| {
        // The same key space and value as cluster.rs: 100 keys per client, `{"i":N}`.
        let body = put_body(
            &format!("bench/c{c}-{}", i % 100),
            &serde_json::json!({ "i": i }).to_string(),
        );
        let send = client.post(&url).json(&body).send();
        common::succeeded(send)
    })
    .await
}

fn main() {
    let trials: usize = common::env_or("FAILOVER_TRIALS", 20);
    let seconds: u64 = common::env_or("WRITE_SECONDS", 5);
    let mut figures = Figures::new("etcd");
    let version = Command::new(etcd_bin())
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): apt-get install etcd-server", etcd_bin()));
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(root.path());
    println!("etcd: 3 members on loopback ({version}), WAL fsync on, through the HTTP/JSON gateway");
    figures.about("system", version.replace("etcd Version: ", "etcd "));
    figures.about("write_seconds", seconds);

    let leader = cluster.leader_index().expect("leader");
    let url = cluster.members[leader].url();
    for clients in [1, 64] {
        let rate = cluster
            .runtime
            .block_on(throughput(cluster.client.clone(), url.clone(), clients, seconds));
        println!("committed writes/s, {clients:>2} client(s)                  {rate:>9.0}");
        figures.set(&format!("writes_per_s_{clients}"), rate);
    }

    if trials > 0 {
        let failover = cluster.failover(trials);
        failover.print();
        failover.record(&mut figures);
    }
    figures.write();
}
