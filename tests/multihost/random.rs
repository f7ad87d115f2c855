//! Random fault sequences, reproducible from a seed: managers killed, restarted or cut off (at most one at a time,
//! so a majority stays), workers frozen, thawed or cut off, and healed; a write is attempted after every step.
//! After everything is healed: one leader that every manager names, every node Ready, the service at its spec with
//! each slot run once (by the store and by the machines' processes), no acknowledged write lost, one leader per
//! term. `CHAOS_SEED=S` replays one sequence, `CHAOS_SEEDS=N` runs N, `CHAOS_STEPS=K` sets their length (default 6).

use std::time::Duration;
use std::time::Instant;

use crate::chaos::stack;
use crate::chaos::wait_labels;
use crate::harness::one_leader_per_term;
use crate::harness::Cluster;
use crate::harness::Power;

/// splitmix64: small, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Debug, Clone)]
enum Fault {
    KillManager(String),
    StartManager(String),
    RestartManager(String),
    Cut(String),
    Heal,
    PauseWorker(String),
    UnpauseWorker(String),
}

/// The faults allowed in the cluster's state: at most one manager down or cut off at a time.
fn choices(c: &Cluster) -> Vec<Fault> {
    let mut out = Vec::new();
    let managers = c.managers();
    let faulty = managers
        .iter()
        .filter(|m| c.power(m) != Power::Running || c.is_cut(m))
        .count();
    for m in &managers {
        match c.power(m) {
            Power::Killed => out.push(Fault::StartManager(m.clone())),
            Power::Running if faulty == 0 => {
                out.push(Fault::KillManager(m.clone()));
                out.push(Fault::RestartManager(m.clone()));
                out.push(Fault::Cut(m.clone()));
            }
            _ => {}
        }
    }
    for w in c.workers() {
        match c.power(&w) {
            Power::Paused => out.push(Fault::UnpauseWorker(w)),
            Power::Running => {
                out.push(Fault::PauseWorker(w.clone()));
                if !c.is_cut(&w) {
                    out.push(Fault::Cut(w));
                }
            }
            Power::Killed => {}
        }
    }
    if c.names().iter().any(|n| c.is_cut(n)) {
        out.push(Fault::Heal);
    }
    out
}

fn inflict(c: &mut Cluster, fault: &Fault) {
    match fault {
        Fault::KillManager(m) => c.kill(m),
        Fault::StartManager(m) => c.start(m),
        Fault::RestartManager(m) => c.restart(m),
        Fault::Cut(n) => {
            let rest: Vec<String> = c.names().into_iter().filter(|x| x != n).collect();
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            c.partition(&[n], &rest);
        }
        Fault::Heal => c.heal(),
        Fault::PauseWorker(w) => c.pause(w),
        Fault::UnpauseWorker(w) => c.unpause(w),
    }
}

/// Prints how to replay the sequence when the test fails.
struct SeedNote {
    seed: u64,
    steps: usize,
}

impl Drop for SeedNote {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n*** chaos sequence failed: replay with CHAOS_SEED={} CHAOS_STEPS={} cargo test --test multihost random ***\n",
                self.seed, self.steps
            );
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

#[test]
fn random_faults_heal_into_a_converged_cluster() {
    let steps = env_number("CHAOS_STEPS").unwrap_or(6) as usize;
    let seeds: Vec<u64> = match env_number("CHAOS_SEED") {
        Some(seed) => vec![seed],
        None => {
            let count = env_number("CHAOS_SEEDS").unwrap_or(1);
            let mut rng = Rng(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64);
            (0..count).map(|_| rng.next() % 1_000_000_000).collect()
        }
    };
    for seed in seeds {
        let _note = SeedNote { seed, steps };
        eprintln!("chaos: CHAOS_SEED={seed} CHAOS_STEPS={steps}");
        run(seed, steps);
    }
}

fn run(seed: u64, steps: usize) {
    let started = Instant::now();
    let mut rng = Rng(seed);
    let mut c = Cluster::with(&["m1", "m2", "m3"], &["w1", "w2"]);
    let managers = c.managers();
    c.put_file("m1", "/tmp/docker-stack.yml", &stack(4, false));
    c.run("m1", "apply -f /tmp/docker-stack.yml --stack app --yes").ok();
    c.wait_converged("app_web", 4, Duration::from_secs(30));
    let watch = c.observe_leaders();

    // Acknowledged label writes: (node labelled, key).
    let mut acked: Vec<(String, String)> = Vec::new();
    for step in 0..steps {
        let options = choices(&c);
        let fault = options[rng.below(options.len())].clone();
        let hold = Duration::from_millis(500 + rng.below(2_000) as u64);
        eprintln!(
            "chaos seed {seed} step {step}: {fault:?}, then {hold:?} ({:?} in)",
            started.elapsed()
        );
        inflict(&mut c, &fault);
        // The fault's duration (not a synchronisation: nothing waits on it).
        std::thread::sleep(hold);

        // A write through a manager of the majority: it must answer (success or a clean refusal), never hang.
        let reachable = c.reachable_managers();
        let via = reachable[rng.below(reachable.len())].clone();
        let key = format!("step{step}");
        let run = c.swarm_timeout(
            &via,
            &["node", "update", "--label-add", &format!("{key}=yes"), &via],
            Duration::from_secs(20),
        );
        assert_ne!(
            run.code,
            -2,
            "a write hung after {fault:?} (seed {seed}):\n{}",
            run.show()
        );
        if run.code == 0 {
            acked.push((via, key));
        } else {
            eprintln!("  write on {via} refused: {}", run.stderr.trim());
        }
    }

    c.heal_all();
    let leader = c.leader();
    c.wait_all_ready();
    eprintln!("chaos seed {seed}: healed, {leader} leads ({:?} in)", started.elapsed());
    c.wait_converged("app_web", 4, Duration::from_secs(60));
    c.stays_converged("app_web", 4, Duration::from_secs(3));
    for node in &managers {
        let keys: Vec<String> = acked
            .iter()
            .filter(|(n, _)| n == node)
            .map(|(_, k)| k.clone())
            .collect();
        wait_labels(&c, &managers, node, &keys, &[]);
    }
    let sightings = watch.finish();
    let terms = one_leader_per_term(&sightings).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    eprintln!(
        "chaos seed {seed}: {} of {steps} writes acknowledged and kept; leader by term {terms:?}; {:?}",
        acked.len(),
        started.elapsed()
    );
}
