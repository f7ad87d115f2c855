//! Benchmark: `validate` + `plan` of a generated 1,000-service stack (goal: ≤ 100 ms), with `docker stack config`
//! loading the same file as a side-by-side reference when the docker CLI is present.
//!
//! Run: `cargo bench --bench validate_plan` (prints one line per figure: name, median, min, runs).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use swarm_specs::loader::LocalFiles;
use swarm_specs::LoadOptions;

const SERVICES: usize = 1_000;
const RUNS: usize = 15;

/// A stack of `n` services using most of the format: anchors, interpolation, ports, env, placement, secrets.
fn generate(n: usize, image_tag: &str) -> String {
    let mut s = String::from("version: \"3.8\"\nx-deploy: &deploy\n  update_config: {parallelism: 2, delay: 5s, order: start-first}\n  restart_policy: {condition: on-failure, delay: 1s}\nservices:\n");
    for i in 0..n {
        let _ = write!(
            s,
            "  svc{i}:\n    image: registry.local/app{i}:${{TAG:-{image_tag}}}\n    command: [\"serve\", \"--port\", \"{port}\"]\n    environment:\n      - SERVICE=svc{i}\n      - LOG_LEVEL=${{LOG_LEVEL:-info}}\n    ports:\n      - \"{published}:{port}\"\n    networks: [net{net}]\n    secrets: [shared]\n    healthcheck: {{test: [\"CMD\", \"true\"], interval: 10s}}\n    deploy:\n      <<: *deploy\n      replicas: {replicas}\n      placement:\n        constraints: [node.role==worker, node.labels.zone!=z{zone}]\n      resources:\n        limits: {{cpus: \"0.25\", memory: 128M}}\n",
            port = 8000 + i % 100,
            published = 20_000 + i,
            net = i % 10,
            replicas = 1 + i % 5,
            zone = i % 3,
        );
    }
    s.push_str("networks:\n");
    for j in 0..10 {
        let _ = writeln!(s, "  net{j}:");
    }
    s.push_str("secrets:\n  shared:\n    file: ./shared.txt\n");
    s
}

fn median(mut xs: Vec<Duration>) -> (Duration, Duration) {
    xs.sort();
    (xs[xs.len() / 2], xs[0])
}

fn report(name: &str, xs: Vec<Duration>) {
    let runs = xs.len();
    let (med, min) = median(xs);
    println!(
        "{name:<44} median {:>9.2} ms   min {:>9.2} ms   ({runs} runs)",
        ms(med),
        ms(min)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn load(path: &Path) -> swarm_specs::StackSpec {
    let options = LoadOptions {
        files: vec![path.to_path_buf()],
        stack: Some("bench".into()),
        ..Default::default()
    };
    swarm_specs::load(&options, &LocalFiles)
        .expect("generated stack is valid")
        .stack
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("shared.txt"), "s3cr3t").unwrap();
    let old = dir.path().join("old.yml");
    let new = dir.path().join("new.yml");
    std::fs::write(&old, generate(SERVICES, "1.0")).unwrap();
    std::fs::write(&new, generate(SERVICES, "1.1")).unwrap();
    // BENCH_KEEP=DIR keeps a copy of the generated stack, to profile or to load with other tools.
    if let Some(keep) = std::env::var_os("BENCH_KEEP") {
        let _ = std::fs::copy(&new, std::path::Path::new(&keep).join("new.yml"));
    }
    println!(
        "stack: {SERVICES} services, {} KiB",
        std::fs::metadata(&new).unwrap().len() / 1024
    );

    let current = load(&old);
    let mut validate = Vec::new();
    let mut plan_only = Vec::new();
    let mut both = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let desired = load(&new);
        let loaded = t.elapsed();
        let p = Instant::now();
        let plan = swarm_reconciler::plan::plan(&desired, &current);
        let planned = p.elapsed();
        assert_eq!(plan.changes.len(), SERVICES);
        validate.push(loaded);
        plan_only.push(planned);
        both.push(loaded + planned);
    }
    report("swarm validate (load+check+normalize)", validate);
    report("swarm plan (diff of 1,000 changed services)", plan_only);
    report("swarm validate + plan", both);

    // Reference: the docker CLI's loader on the same file (process start included, as a user would see it).
    let docker = std::process::Command::new("docker").arg("--version").output();
    if docker.is_ok_and(|o| o.status.success()) {
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let out = std::process::Command::new("docker")
                .args(["stack", "config", "-c"])
                .arg(&new)
                .output()
                .expect("docker stack config");
            times.push(t.elapsed());
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        report("docker stack config (reference, same file)", times);
    } else {
        println!("docker CLI not found: no reference figure");
    }
}
