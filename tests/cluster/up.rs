//! `swarm up`, the README's first command: a single-node cluster in one process runs the example stack, answers
//! the CLI on its socket, and on Ctrl-C removes the stack and stops.

use std::io::BufRead as _;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::wait_until;
use crate::harness::Cluster;

const SWARM: &str = env!("CARGO_BIN_EXE_swarm");

/// Processes whose environment names a service of the stack.
fn stack_processes(stack: &str) -> usize {
    let wanted = format!("SWARM_SERVICE_NAME={stack}_");
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .filter(|e| {
                    std::fs::read(e.path().join("environ"))
                        .map(|env| env.split(|b| *b == 0).any(|v| v.starts_with(wanted.as_bytes())))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

/// `swarm up`, interrupted if the test ends early so that it removes its stack (killed if it will not go).
struct Up(std::process::Child);

impl Up {
    fn interrupt(&self) -> bool {
        crate::common::interrupt(&self.0)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        crate::common::interrupt_then_kill(&mut self.0, Duration::from_secs(30));
    }
}

#[test]
fn swarm_up_runs_the_example_stack_until_interrupted() {
    let _serial = Cluster::new(); // one cluster at a time on this machine
    let dir = tempfile::tempdir().expect("temp dir");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello-process/docker-stack.yml");
    let mut up = Up(Command::new(SWARM)
        .args(["up", "-f", example, "--no-docker", "--data-dir"])
        .arg(dir.path())
        .env_remove("SWARM_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start swarm up"));
    let stdout = up.0.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let ready = wait_until("swarm up says the stack runs", Duration::from_secs(60), || {
        while let Ok(line) = lines.try_recv() {
            seen.push(line);
        }
        if seen.iter().any(|l| l.starts_with("Stack hello-process runs.")) {
            Ok(seen.join("\n"))
        } else {
            Err(seen.join("\n"))
        }
    });
    assert!(ready.contains("Applied stack hello-process: revision 1"), "{ready}");
    assert!(
        ready.contains("hello-process_hello"),
        "the status table lists the services:\n{ready}"
    );

    // Another terminal reaches it through its socket.
    let socket = dir.path().join("swarm.sock");
    let logs = wait_until("the tasks' output is readable", Duration::from_secs(15), || {
        let out = Command::new(SWARM)
            .arg("-H")
            .arg(&socket)
            .args(["service", "logs", "hello-process_hello"])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("hello from task 1") && text.contains("hello from task 2") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    assert!(logs.contains("hello-process_hello.1."), "{logs}");
    // Each task is a shell and, at times, its `sleep`: at least the 3 shells.
    assert!(
        stack_processes("hello-process") >= 3,
        "2 replicas and the global clock run as processes"
    );

    // Ctrl-C: the stack is removed, its processes end, and `up` exits 0.
    assert!(up.interrupt());
    let status = wait_until("swarm up exits", Duration::from_secs(30), || {
        up.0.try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still running".to_string())
    });
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) {
        seen.push(line);
    }
    assert!(status.success(), "exit {status}\n{}", seen.join("\n"));
    assert!(seen.iter().any(|l| l == "Stopped."), "{}", seen.join("\n"));
    assert_eq!(stack_processes("hello-process"), 0, "no task outlives `swarm up`");
}
