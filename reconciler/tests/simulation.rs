//! Seeded fault simulation of 3 and 5 managers: writes under partitions, one-way cuts, held messages, crashes
//! and restarts from disk, checked against Raft's promises.
//!
//! Each seed draws a schedule of steps (see `simulation/schedule.rs`). After every step each node's metrics are
//! sampled (and a monitor per node sees every update in between); at the end everything is healed, every crashed
//! node restarts from its store, and the state machines are compared. Invariants:
//! 1. at most one leader per term — in openraft's default mode, one per (term, node): see `cluster.rs` — no node's
//!    vote or applied index goes back (not even across a restart), no two nodes apply different entries at one
//!    index, no node's Raft core dies, and no malformed AppendEntries reaches a node that would accept it;
//! 2. every acknowledged write is in every state machine, with its value, after healing;
//! 3. while a majority talks cleanly, a write succeeds within [`LIVENESS`]; while no node reaches a majority, no
//!    write is acknowledged; after healing, a write succeeds within [`LIVENESS`];
//! 4. all state machines end with the same `kv` table and the same revision, holding nothing a client did not
//!    write.
//!
//! Time is real, with short Raft timers (heartbeat 20 ms, election 50–100 ms): `start_paused` needs tokio's
//! `test-util` feature, which the workspace does not enable. Node stores live on tmpfs (free fsync), so a run's
//! timing is Raft's, not the disk's.
//!
//! Replay: `SIM_SEED=S` runs one seed (both tests), `SIM_SEEDS=N` runs seeds 1..=N, `SIM_STEPS=K` sets the steps
//! per seed, `SIM_SNAPSHOT=N` snapshots every N entries, `SIM_LOG=1` prints every seed's step log (with
//! `--nocapture`). The schedule is a function of the seed and of which node leads when each step is drawn;
//! openraft's election timeouts come from its own RNG and real time decides races, so a replay follows the same
//! schedule as long as the same nodes win the elections — usually, not always.

// A test crate's root resolves modules next to itself, so the helpers under `simulation/` need their paths.
#[path = "simulation/cluster.rs"]
mod cluster;
#[path = "simulation/rng.rs"]
mod rng;
#[path = "simulation/schedule.rs"]
mod schedule;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use swarm_reconciler::store;
use tokio::time::Instant;

use self::cluster::Sim;
use self::cluster::Write;
use self::rng::Rng;
use self::schedule::Faults;
use self::schedule::Quorum;
use self::schedule::Step;

/// How long a write may take while a majority can talk (an election included).
const LIVENESS: Duration = Duration::from_secs(5);
/// How long one attempt on one node may take before the next believer is tried.
const ATTEMPT: Duration = Duration::from_millis(300);
/// How long a write is watched, and must not succeed, while no majority exists.
const NO_QUORUM: Duration = Duration::from_millis(300);
/// How long a write is tried under partial connectivity, where either outcome is fine.
const PARTIAL: Duration = Duration::from_secs(1);
/// How long the healed cluster may take to agree on its last entry.
const CONVERGE: Duration = Duration::from_secs(10);
/// Seeds run side by side, each on its own thread and runtime (the runs mostly wait on timers).
const WORKERS: usize = 3;
const DEFAULT_STEPS: usize = 30;

#[test]
fn three_managers_keep_raft_promises_under_seeded_faults() {
    simulate("three_managers_keep_raft_promises_under_seeded_faults", 3, 20);
}

#[test]
fn five_managers_keep_raft_promises_under_seeded_faults() {
    simulate("five_managers_keep_raft_promises_under_seeded_faults", 5, 10);
}

/// What one seed did.
#[derive(Default)]
struct Tally {
    seeds: usize,
    steps: usize,
    acked: usize,
    late: usize,
    unacked: usize,
    unanswered: usize,
    faults: BTreeMap<&'static str, usize>,
    terms: usize,
    /// Terms in which more than one node led (openraft's default leader ids allow it; see `cluster.rs`).
    shared_terms: usize,
    /// Malformed AppendEntries requests the targets refused (by vote) before reading them.
    malformed: usize,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.seeds += other.seeds;
        self.steps += other.steps;
        self.acked += other.acked;
        self.late += other.late;
        self.unacked += other.unacked;
        self.unanswered += other.unanswered;
        for (kind, count) in &other.faults {
            *self.faults.entry(kind).or_default() += count;
        }
        self.terms += other.terms;
        self.shared_terms += other.shared_terms;
        self.malformed += other.malformed;
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number; set it to a whole number, or unset it")),
    )
}

fn simulate(test: &str, nodes: usize, default_seeds: u64) {
    let seeds: Vec<u64> = match env_number("SIM_SEED") {
        Some(seed) => vec![seed],
        None => (1..=env_number("SIM_SEEDS").unwrap_or(default_seeds)).collect(),
    };
    let steps = env_number("SIM_STEPS").map_or(DEFAULT_STEPS, |s| s as usize);
    let started = std::time::Instant::now();

    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..WORKERS.min(seeds.len()) {
            scope.spawn(|| {
                while let Some(&seed) = seeds.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let result = run_seed(seed, nodes, steps);
                    results
                        .lock()
                        .expect("no worker panics holding the lock")
                        .push((seed, result));
                }
            });
        }
    });

    let mut results = results.into_inner().expect("workers are done");
    results.sort_by_key(|(seed, _)| *seed);
    let mut total = Tally::default();
    let mut failures = Vec::new();
    for (seed, result) in results {
        match result {
            Ok(tally) => total.add(&tally),
            Err(failure) => failures.push(format!(
                "{failure}\nreplay: SIM_SEED={seed} cargo test -p swarm-reconciler --test simulation {test}"
            )),
        }
    }
    let faults: Vec<String> = total.faults.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
    println!(
        "simulation: {nodes} managers, {} seeds x {steps} steps in {:.1} s: {} writes acknowledged ({} late), {} not, \
         {} never answered; {} faults ({}); {} leader terms ({} with several leaders); {} malformed AppendEntries \
         refused",
        total.seeds,
        started.elapsed().as_secs_f64(),
        total.acked,
        total.late,
        total.unacked,
        total.unanswered,
        total.faults.values().sum::<usize>(),
        faults.join(", "),
        total.terms,
        total.shared_terms,
        total.malformed,
    );
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n\n")
    );
}

/// One seed on its own runtime; a panic becomes a failure that names the seed.
fn run_seed(seed: u64, nodes: usize, steps: usize) -> Result<Tally, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("seed {seed}: cannot build a runtime: {e}"))?;
    std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(run(seed, nodes, steps)))).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(ToString::to_string))
            .unwrap_or_default();
        Err(format!("seed {seed} ({nodes} managers) panicked: {message}"))
    })
}

/// The run of one seed, with the step log in its failure.
async fn run(seed: u64, nodes: usize, steps: usize) -> Result<Tally, String> {
    let mut log = Vec::new();
    let result = drive(seed, nodes, steps, &mut log).await;
    if std::env::var_os("SIM_LOG").is_some() {
        println!("seed {seed} ({nodes} managers):\n  {}", log.join("\n  "));
    }
    result.map_err(|violation| {
        format!(
            "seed {seed} ({nodes} managers) failed: {violation}\nstep log:\n  {}",
            log.join("\n  ")
        )
    })
}

async fn drive(seed: u64, nodes: usize, steps: usize, log: &mut Vec<String>) -> Result<Tally, String> {
    // The cluster size is part of the stream, so seed 1 of 3 managers and seed 1 of 5 differ.
    let mut rng = Rng::new(seed ^ ((nodes as u64) << 32));
    // Small snapshot intervals make lagging and restarted nodes catch up by snapshot install, not only by log.
    let snapshot_every = rng.pick(&[4, 16, 1000]);
    let snapshot_every = env_number("SIM_SNAPSHOT").unwrap_or(snapshot_every);
    log.push(format!(
        "snapshot every {snapshot_every} entries, heartbeat 20 ms, election 50-100 ms"
    ));
    let mut sim = Sim::start(nodes, store::raft_config(snapshot_every, 20, 50, 100)).await?;
    let started = Instant::now();
    let mut faults = Faults::new(nodes);
    let mut tally = Tally {
        seeds: 1,
        ..Tally::default()
    };
    // k{n} → the revision its acknowledged write got.
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut next_write = 1;

    for i in 0..steps {
        let step = faults.next_step(&mut rng, sim.leader(), next_write);
        faults.apply(&step);
        let quorum = faults.quorum();
        let outcome = match &step {
            Step::Write { n, pick } => {
                next_write += 1;
                write(&mut sim, *n, *pick, &quorum, &mut acked, &mut tally).await
            }
            Step::Crash(id) => sim.crash(*id).await.map(|()| String::new()),
            Step::Restart(id) => sim.restart(*id).await.map(|()| String::new()),
            Step::Idle(ms) => {
                // Not a wait for a condition: letting time pass under the current faults is the step itself.
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                Ok(String::new())
            }
            link => {
                sim.cut(link);
                Ok(String::new())
            }
        };
        if step.is_fault() {
            *tally.faults.entry(step.kind()).or_default() += 1;
        }
        tally.steps += 1;
        sim.sample();
        let at = started.elapsed().as_millis();
        let leader = sim.leader().map_or("-".to_string(), |id| id.to_string());
        match outcome {
            Ok(outcome) => log.push(format!(
                "{i:>3} {at:>6} ms  {step}  [{quorum}, leader {leader}]  {outcome}"
            )),
            Err(violation) => {
                log.push(format!(
                    "{i:>3} {at:>6} ms  {step}  [{quorum}, leader {leader}]  FAILED"
                ));
                return Err(explain(&sim, violation));
            }
        }
        check(&sim)?;
    }

    // Heal everything, restart every crashed node from its store, and check the promises.
    sim.cut(&Step::Heal);
    faults.apply(&Step::Heal);
    for id in faults.down.clone() {
        sim.restart(id).await?;
        faults.apply(&Step::Restart(id));
    }
    let at = started.elapsed().as_millis();
    log.push(format!("end {at:>6} ms  heal and restart every crashed node"));
    let n = next_write;
    match sim.write(n, 0, LIVENESS, ATTEMPT).await {
        Write::Acked { revision, .. } => {
            acked.insert(n, revision);
            tally.acked += 1;
        }
        Write::Unacked { attempts } => {
            let failure =
                format!("liveness: no write acknowledged within {LIVENESS:?} of healing ({attempts} attempts)");
            return Err(explain(&sim, failure));
        }
    }
    sim.converge(CONVERGE).await.map_err(|e| explain(&sim, e))?;
    let (late, unanswered) = sim.settle(LIVENESS).await;
    tally.late = late.len();
    tally.unanswered = unanswered;
    for (n, revision) in late {
        let first = acked.entry(n).or_insert(revision);
        *first = (*first).min(revision);
    }
    // A late acknowledgement means an entry committed after the first convergence: wait for it everywhere.
    sim.converge(CONVERGE).await.map_err(|e| explain(&sim, e))?;
    check_contents(&sim, &acked, next_write).map_err(|e| explain(&sim, e))?;
    sim.sample();
    check(&sim)?;
    (tally.terms, tally.shared_terms) = sim.leader_terms();
    tally.malformed = sim.malformed().len();
    sim.shutdown().await?;
    Ok(tally)
}

/// The first invariant a node's metrics or the network broke so far.
fn check(sim: &Sim) -> Result<(), String> {
    // Requests whose entries do not follow prev_log_id (openraft 0.9.25's stale streams) are refused on arrival,
    // as `store::is_contiguous` makes the real receiver refuse them; had one been delivered to a node that takes it,
    // the node would have a hole in its log (debug builds of openraft panic instead). The checks below catch that.
    if let Some(violation) = sim.violations().first() {
        return Err(violation.clone());
    }
    Ok(())
}

/// A failure to converge or to make progress, with the invariant broken before it (its likely cause), if any.
fn explain(sim: &Sim, failure: String) -> String {
    match check(sim) {
        Err(cause) => format!("{cause}\nand then: {failure}"),
        Ok(()) => failure,
    }
}

/// Runs a write step and checks it against what the quorum model promises.
async fn write(
    sim: &mut Sim,
    n: u64,
    pick: u64,
    quorum: &Quorum,
    acked: &mut BTreeMap<u64, u64>,
    tally: &mut Tally,
) -> Result<String, String> {
    let within = match quorum {
        Quorum::Clean(_) => LIVENESS,
        Quorum::None => NO_QUORUM,
        Quorum::Partial => PARTIAL,
    };
    match sim.write(n, pick, within, ATTEMPT).await {
        Write::Acked { node, revision, .. } if *quorum == Quorum::None => Err(format!(
            "k{n} was acknowledged by node {node} at revision {revision} while no node reached a majority"
        )),
        Write::Acked {
            node,
            revision,
            attempts,
        } => {
            acked.insert(n, revision);
            tally.acked += 1;
            Ok(format!("acked by {node} at {revision} ({attempts} attempts)"))
        }
        Write::Unacked { attempts } => {
            if let Quorum::Clean(group) = quorum {
                return Err(format!(
                    "liveness: k{n} was not acknowledged within {LIVENESS:?} ({attempts} attempts) although \
                     {group:?} are a majority that talk to each other"
                ));
            }
            tally.unacked += 1;
            Ok(format!("not acked ({attempts} attempts)"))
        }
    }
}

/// Every node holds the same table at the same revision; it has every acknowledged write and nothing else but
/// writes a client attempted.
fn check_contents(sim: &Sim, acked: &BTreeMap<u64, u64>, last_write: u64) -> Result<(), String> {
    let contents = sim.contents();
    let (&first, (revision, rows)) = contents.iter().next().ok_or("no node is running")?;
    for (id, (other_revision, other_rows)) in &contents {
        if other_revision != revision {
            return Err(format!(
                "node {id} is at revision {other_revision}, node {first} at {revision}"
            ));
        }
        if other_rows != rows {
            return Err(format!(
                "node {id}'s kv table differs from node {first}'s:\n  {id}: {other_rows:?}\n  {first}: {rows:?}"
            ));
        }
    }
    for (n, at) in acked {
        let key = format!("k{n}");
        match rows.iter().find(|(k, _, _)| *k == key) {
            None => {
                return Err(format!(
                    "acknowledged write {key} (revision {at}) is lost on every node"
                ))
            }
            Some((_, value, _)) if *value != json!(n) => {
                return Err(format!("acknowledged write {key} holds {value}, not {n}"))
            }
            // A retry of the same write may commit after it, so the key's revision is at least the acknowledged one.
            Some((_, _, revision)) if revision < at => {
                return Err(format!(
                    "acknowledged write {key} at revision {at} reads back at older revision {revision}"
                ))
            }
            Some(_) => {}
        }
    }
    for (key, value, _) in rows {
        let n: Option<u64> = key.strip_prefix('k').and_then(|n| n.parse().ok());
        if !n.is_some_and(|n| n <= last_write && *value == json!(n)) {
            return Err(format!("{key} = {value} is in the store, but no client wrote it"));
        }
    }
    Ok(())
}

/// openraft 0.9.25 keeps a deposed leader's replication streams running: they read the node's log as it is now
/// (rewritten by the new leader, its prefix purged) and send it under the old vote, with the old prev_log_id. A
/// node restarted from a store that still holds that old vote accepts the request, gap and all.
///
/// The receiver refuses the gapped request (`store::is_contiguous`): this test shows the cluster stays whole.
#[test]
fn a_deposed_leaders_gapped_append_is_refused_and_the_restarted_follower_stays_whole() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // Whether the stale request reaches node 4 is a race (node 4 must be back before the stream's next retry),
    // so the scenario runs a few times; with the bug, about half the runs hit it.
    for attempt in 1..=5 {
        runtime.block_on(deposed_leader_scenario(attempt));
    }
}

async fn deposed_leader_scenario(attempt: u32) {
    let mut sim = Sim::start(5, store::raft_config(4, 20, 50, 100)).await.expect("start");
    assert_eq!(
        sim.leader(),
        Some(1),
        "node 1 initialized the cluster, so it leads first"
    );
    // Node 4 goes down holding the first leader's vote and the first entries; node 1's stream to it now retries
    // every backoff period, holding on to its pending data.
    sim.crash(4).await.expect("crash 4");
    // Cut off, node 1 still leads in its own eyes and appends writes it cannot commit (indexes 2..=16).
    sim.cut(&Step::Isolate(1));
    for n in 1..=15 {
        let stranded = sim.write_on(1, n, Duration::from_millis(2)).await;
        assert!(stranded.is_err(), "k{n} cannot commit on a cut-off node: {stranded:?}");
    }
    // The others elect a leader and write past a few snapshots, so node 1 will catch up from a snapshot.
    for n in 16..=30 {
        let written = sim.write(n, 0, LIVENESS, ATTEMPT).await;
        assert!(matches!(written, Write::Acked { .. }), "k{n}: {written:?}");
    }
    sim.cut(&Step::Rejoin(1));
    let deadline = Instant::now() + LIVENESS;
    loop {
        let m = sim.metrics(1).expect("node 1 runs");
        if m.state == openraft::ServerState::Follower && m.purged.is_some_and(|p| p.index > 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 did not catch up from a snapshot: {m}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Node 4 comes back, maybe before node 1's stale stream to it retries.
    sim.restart(4).await.expect("restart 4");
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if let Err(violation) = check(&sim) {
            panic!("run {attempt}: {violation}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sim.shutdown().await.expect("shutdown");
}
