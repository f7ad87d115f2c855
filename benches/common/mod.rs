//! What the benchmarks share: the daemons' binary, and for the cluster benchmarks the concurrent write loop, failover
//! statistics and their figures as JSON.
//!
//! `benches/cluster.rs` (ours) and `benches/etcd.rs` (the reference) measure with the same loop, so their figures
//! differ only by the system under test. Each bench uses a subset of this module.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// The binary the benchmarks run as daemons: `SWARM_BENCH_BIN` (for instance the shipped `target/dist/swarm`), or
/// the release build cargo made for the benchmark.
pub fn swarm_bin() -> String {
    std::env::var("SWARM_BENCH_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_swarm").to_string())
}

/// A number from the environment, or `default` when it is unset or not a number.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "condition not met within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a write `send` made succeeded, its answer read to the end, as a client that wants the answer reads it
/// (a dropped answer resets its HTTP/2 stream, and a server may close a connection with many of those). Says why
/// when it did not.
pub async fn succeeded(send: impl Future<Output = reqwest::Result<reqwest::Response>>) -> bool {
    match send.await {
        Ok(response) => {
            let status = response.status();
            match response.bytes().await {
                Ok(_) if status.is_success() => true,
                Ok(body) => {
                    eprintln!("write refused: {status}: {}", String::from_utf8_lossy(&body));
                    false
                }
                Err(e) => {
                    eprintln!("write failed reading its answer: {e:?}");
                    false
                }
            }
        }
        Err(e) => {
            eprintln!("write failed: {e:?}");
            false
        }
    }
}

/// Committed writes per second with `clients` concurrent clients, each sending its next write when the previous
/// one has committed, for `seconds`. `write(client, i)` sends client's `i`-th write and says whether it committed;
/// a failed write fails the benchmark.
pub async fn throughput<W, F>(clients: usize, seconds: u64, write: W) -> f64
where
    W: Fn(usize, u64) -> F + Send + Sync + 'static,
    F: Future<Output = bool> + Send + 'static,
{
    let write = Arc::new(write);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (write, done) = (write.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                assert!(write(c, i).await, "write failed");
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Failover times of all trials, summarised the same way for every system.
pub struct Failover {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub trials: usize,
}

impl Failover {
    pub fn of(mut times: Vec<Duration>) -> Failover {
        times.sort();
        Failover {
            p50: percentile(&times, 0.5),
            p99: percentile(&times, 0.99),
            max: *times.last().expect("at least one trial"),
            trials: times.len(),
        }
    }

    pub fn print(&self) {
        println!(
            "leader failover (kill -9 → write accepted)   p50 {:>7.0} ms   p99 {:>7.0} ms   max {:>7.0} ms   ({} trials)",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.trials
        );
    }

    pub fn record(&self, figures: &mut Figures) {
        figures.set("failover_p50_ms", ms(self.p50));
        figures.set("failover_p99_ms", ms(self.p99));
        figures.set("failover_max_ms", ms(self.max));
        figures.set("failover_trials", self.trials as f64);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A bench's figures, written as `{"bench": NAME, "figures": {KEY: NUMBER, ...}, "about": {KEY: TEXT, ...}}` to
/// the file named by `BENCH_JSON` (when set) for `bench/report`.
pub struct Figures {
    bench: String,
    figures: serde_json::Map<String, serde_json::Value>,
    about: serde_json::Map<String, serde_json::Value>,
}

impl Figures {
    pub fn new(bench: &str) -> Figures {
        Figures {
            bench: bench.to_string(),
            figures: serde_json::Map::new(),
            about: serde_json::Map::new(),
        }
    }

    /// Describes the run: the system measured, its version, the sizes.
    pub fn about(&mut self, key: &str, text: impl std::fmt::Display) {
        self.about.insert(key.to_string(), serde_json::json!(text.to_string()));
    }

    pub fn set(&mut self, key: &str, value: f64) {
        self.figures.insert(key.to_string(), serde_json::json!(value));
    }

    /// Writes the file if `BENCH_JSON` names one; says where.
    pub fn write(&self) {
        let Some(path) = std::env::var_os("BENCH_JSON").map(PathBuf::from) else {
            return;
        };
        let json = serde_json::json!({ "bench": self.bench, "figures": self.figures, "about": self.about });
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap() + "\n")
            .unwrap_or_else(|e| panic!("cannot write BENCH_JSON {}: {e}", path.display()));
        println!("figures written to {}", path.display());
    }
}
