//! Scale simulation: 3 real managers (Raft over an in-memory network, redb on tmpfs, the real orchestrator and
//! dispatcher) and thousands of simulated nodes in one process. Each fake node is Ready with resources, heartbeats
//! the leader, holds a dispatcher session and runs every task it is given at once (accepted → starting → running
//! through the dispatcher's status path). Measures the time until every task runs, memory, and the cost of a
//! heartbeat on the leader.
//!
//! Run: `cargo bench --bench scale` (a small case, 1,000 nodes / 10,000 tasks, then the full one).
//! Knobs: `SCALE_NODES` (5,000), `SCALE_TASKS` (150,000), `SCALE_SERVICES` (tasks / 1,000), `SCALE_MANAGERS` (3;
//! with 1 the process's memory is the leader's: the fake nodes keep nothing of what they are sent), `SCALE_TIMEOUT`
//! (seconds to wait for convergence, 300), `SCALE_ONLY=small|full`, `SCALE_ELECTION_MS` (minimum Raft election
//! timeout, 1,000; 0 for the production 150–300 ms).
//!
//! Memory: heap counted by this binary's global allocator (live and peak) and the process RSS. Both cover the whole
//! process — every manager (each with its own copy of the state) and the fake nodes — so with 3 managers they bound
//! the leader's memory from above, and `SCALE_MANAGERS=1` measures a leader alone.

use std::alloc::GlobalAlloc;
use std::alloc::Layout;
use std::alloc::System;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use swarm_reconciler::cluster::Settings;
use swarm_reconciler::sim::Sim;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Bytes this thread allocated minus those it freed: what one synchronous piece of work keeps, whatever the other
    /// threads do meanwhile.
    static THREAD_NET: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

fn thread_net(delta: isize) {
    // `try_with`: the slot is gone while the thread exits.
    let _ = THREAD_NET.try_with(|n| n.set(n.get() + delta));
}
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            thread_net(layout.size() as isize);
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        thread_net(-(layout.size() as isize));
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            thread_net(new_size as isize - layout.size() as isize);
            if new_size > layout.size() {
                let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// (VmRSS, VmHWM) in bytes.
fn rss() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<usize>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.replace(['_', ','], ""))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let nodes = env("SCALE_NODES", 5_000);
    let tasks = env("SCALE_TASKS", 150_000);
    let only = std::env::var("SCALE_ONLY").unwrap_or_default();
    if only != "full" {
        case(1_000, 10_000, None);
    }
    if only != "small" {
        case(
            nodes,
            tasks,
            std::env::var("SCALE_SERVICES").ok().and_then(|s| s.parse().ok()),
        );
    }
}

fn case(nodes: usize, tasks: usize, services: Option<usize>) {
    let services = services.unwrap_or((tasks / 1_000).max(1));
    let managers = env("SCALE_MANAGERS", 3).max(1) as u64;
    let timeout = Duration::from_secs(env("SCALE_TIMEOUT", 300) as u64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::Builder::new()
        .prefix("swarm-scale")
        .tempdir_in(if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        })
        .expect("temp dir");
    let base_heap = LIVE.load(Ordering::Relaxed);
    PEAK.store(base_heap, Ordering::Relaxed);
    println!("scale: {nodes} nodes, {tasks} tasks in {services} services, {managers} managers");
    runtime.block_on(async {
        // Raft timing: election timeout SCALE_ELECTION_MS–2× (default 1,000 ms), heartbeat a tenth of it; 0 is the
        // production default (50 ms, 150–300 ms), which elects a new leader under this load on 2 cores (see the
        // report) — and the fake nodes do not follow a new leader.
        let raft = match env("SCALE_ELECTION_MS", 1_000) as u64 {
            0 => swarm_reconciler::store::default_raft_config(),
            min => swarm_reconciler::store::raft_config(10_000, (min / 10).max(10), min, 2 * min),
        };
        let mut sim = Sim::start(dir.path(), managers, Settings::default(), raft).await;
        let first_term = sim.terms()[0].0;
        let t = Instant::now();
        sim.add_nodes(nodes, Duration::from_millis(1_000)).await;
        // Let every session send its (empty) full set before the services arrive.
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("  {nodes} nodes registered, sessions open: {:.1} s", t.elapsed().as_secs_f64());
        let idle_heap = LIVE.load(Ordering::Relaxed);
        heartbeats(&sim, "idle cluster").await;

        let start = Instant::now();
        sim.create_services(services, tasks).await;
        let mut last_print = Instant::now();
        let converged = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let reported = sim.reported_running.load(Ordering::Relaxed);
            if reported >= tasks {
                let census = sim.census();
                if census.running == tasks && census.not_running == 0 {
                    break Some(start.elapsed());
                }
            }
            if last_print.elapsed() >= Duration::from_secs(5) {
                last_print = Instant::now();
                let census = sim.census();
                println!(
                    "  … {:.0} s: {} running, {} placed or pending, {} running reports acknowledged; heap {:.0} MiB",
                    start.elapsed().as_secs_f64(),
                    census.running,
                    census.not_running,
                    reported,
                    mib(LIVE.load(Ordering::Relaxed) - base_heap),
                );
            }
            let terms = sim.terms();
            if terms.iter().any(|(term, _)| *term != first_term) {
                println!("  ! election after {:.1} s (term, leader per manager: {terms:?}): the fake nodes stay with manager 1, the run is not valid", start.elapsed().as_secs_f64());
                break None;
            }
            if start.elapsed() > timeout {
                println!("  NOT converged after {} s", timeout.as_secs());
                break None;
            }
        };
        match converged {
            Some(elapsed) => println!(
                "  all {tasks} tasks running after {:.1} s (goal ≤ 60 s at 150,000) — {:.0} tasks/s",
                elapsed.as_secs_f64(),
                tasks as f64 / elapsed.as_secs_f64()
            ),
            None => {
                let census = sim.census();
                println!(
                    "  stopped after {:.0} s: {} running, {} not yet",
                    start.elapsed().as_secs_f64(),
                    census.running,
                    census.not_running
                );
            }
        }
        let (rss_now, rss_peak) = rss();
        println!(
            "  memory (whole process: {managers} managers + {nodes} fake nodes): heap live {:.0} MiB (idle cluster before the services: {:.0} MiB), heap peak {:.0} MiB; RSS {:.0} MiB, peak RSS {:.0} MiB",
            mib(LIVE.load(Ordering::Relaxed) - base_heap),
            mib(idle_heap - base_heap),
            mib(PEAK.load(Ordering::Relaxed) - base_heap),
            mib(rss_now),
            mib(rss_peak),
        );

        // One manager's in-memory copy of the tasks: the JSON text its state machine holds.
        let copy = sim.leader().sm.list_json("tasks");
        let text: usize = copy.iter().map(|(key, v, _)| key.len() + v.as_str().len()).sum();
        println!(
            "  one manager's tasks in its state machine (JSON text): {:.0} MiB for {} tasks, {:.1} KiB each",
            mib(text),
            copy.len(),
            text as f64 / 1024.0 / copy.len().max(1) as f64
        );
        drop(copy);
        // What the leader's orchestrator keeps: every task decoded (measured as a fresh decode of them all).
        let before = THREAD_NET.with(|n| n.get());
        let decoded = swarm_reconciler::store::list::<swarm_specs::task::Task>(&sim.leader().sm);
        let typed = (THREAD_NET.with(|n| n.get()) - before).max(0) as usize;
        println!(
            "  the orchestrator's decoded copy of the tasks: {:.0} MiB, {:.1} KiB each",
            mib(typed),
            typed as f64 / 1024.0 / decoded.len().max(1) as f64
        );
        drop(decoded);
        if sim.leader().is_leader() {
            heartbeats(&sim, "after").await;
            resync_all(&sim, tasks).await;
        }
        sim.shutdown().await;
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
}

/// The cost of a heartbeat on the leader, as the route serves it: read the cluster record and the node, then
/// record the beat (no write: every node is Ready already). The fake nodes keep beating meanwhile.
async fn heartbeats(sim: &Sim, when: &str) {
    let leader = sim.leader().clone();
    let ids: Vec<String> = sim.nodes.iter().map(|n| n.id.clone()).collect();
    let mut per_call = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        for id in &ids {
            let _ = leader.cluster();
            let _ = leader.node(id);
            let _ = leader.heartbeat(id).await;
        }
        per_call.push(t.elapsed() / ids.len() as u32);
    }
    per_call.sort();
    let t = Instant::now();
    let transitions = leader.check_heartbeats().await.unwrap_or_default();
    let check = t.elapsed();
    println!(
        "  heartbeat on the leader ({when}): {:.1} µs per call over {} nodes (median of 3 rounds; {:.0}% of a core at one beat per node per second); the leader's check of all {} nodes: {:.1} ms ({} transitions)",
        per_call[1].as_secs_f64() * 1e6,
        ids.len(),
        per_call[1].as_secs_f64() * ids.len() as f64 * 100.0,
        ids.len(),
        check.as_secs_f64() * 1000.0,
        transitions.len(),
    );
}

/// Every node opens a second session at once, as after a leader change: the time until each has its complete set.
async fn resync_all(sim: &Sim, tasks: usize) {
    use swarm_reconciler::dispatcher::SessionMessage;
    let t = Instant::now();
    let sessions: Vec<_> = sim
        .nodes
        .iter()
        .map(|n| {
            let mut rx = sim.dispatchers[0].session(&n.id);
            tokio::spawn(async move {
                let mut count = 0;
                while let Some(message) = rx.recv().await {
                    match message {
                        SessionMessage::Tasks { tasks } => count += tasks.len(),
                        SessionMessage::End => break,
                        _ => {}
                    }
                }
                count
            })
        })
        .collect();
    let mut received = 0;
    for s in sessions {
        received += s.await.unwrap_or(0);
    }
    println!(
        "  every node's complete set again at once (as after a leader change): {} sessions, {received} of {tasks} tasks in {:.2} s",
        sim.nodes.len(),
        t.elapsed().as_secs_f64()
    );
}
