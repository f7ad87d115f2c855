//! `swarm apply --watch`, the local loop: on a one-node cluster, every save of the stack file is planned and
//! applied (the plan printed each time), an invalid save prints its diagnostic and applies nothing, and Ctrl-C ends
//! it.

use std::io::BufRead as _;
use std::path::Path;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use crate::harness::wait_until;
use crate::harness::Cluster;
use crate::services::wait_running;

const SWARM: &str = env!("CARGO_BIN_EXE_swarm");

fn stack(replicas: &str) -> String {
    format!(
        r#"services:
  web:
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    x-swarm: {{driver: process}}
    stop_grace_period: 2s
    deploy:
      replicas: {replicas}
"#
    )
}

/// `swarm apply --watch` as a child process, its stdout and stderr read line by line into one list. Interrupted
/// (then killed if it will not go) when dropped.
struct Watching {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Watching {
    fn start(socket: &Path, file: &Path) -> Watching {
        let mut child = Command::new(SWARM)
            .arg("-H")
            .arg(socket)
            .args(["apply", "--watch", "--stack", "live", "-f"])
            .arg(file)
            .env_remove("SWARM_HOST")
            .env_remove("SWARM_CERT_PATH")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start swarm apply --watch");
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let out = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Watching {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until a line after the first `from` contains `text`; returns the index just past it.
    #[track_caller]
    fn wait_for(&mut self, from: usize, text: &str) -> usize {
        wait_until(
            &format!("swarm apply --watch prints {text:?}"),
            Duration::from_secs(60),
            || {
                while let Ok(line) = self.lines.try_recv() {
                    self.seen.push(line);
                }
                match self.seen.iter().skip(from).position(|l| l.contains(text)) {
                    Some(i) => Ok(from + i + 1),
                    None => Err(self.output()),
                }
            },
        )
    }

    /// The output from line `from` to `to`.
    fn between(&self, from: usize, to: usize) -> String {
        self.seen[from..to].join("\n")
    }

    fn output(&self) -> String {
        self.seen.join("\n")
    }

    fn interrupt(&self) -> bool {
        crate::common::interrupt(&self.child)
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        crate::common::interrupt_then_kill(&mut self.child, Duration::from_secs(15));
    }
}

#[test]
fn apply_watch_applies_every_save_and_survives_an_invalid_one() {
    let mut c = Cluster::new();
    c.init("m1");
    c.wait_all_ready();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("stack.yml");
    std::fs::write(&file, stack("1")).expect("write stack");
    let mut watch = Watching::start(&c.socket("m1"), &file);

    // The first round applies the file as it is, then watches it (and the .env beside it).
    let end = watch.wait_for(0, "Watching ");
    let first = watch.between(0, end);
    assert!(
        first.contains("+ service.web (create)"),
        "the plan is printed:\n{first}"
    );
    assert!(first.contains("Applied stack live: revision 1"), "{first}");
    assert!(
        watch.seen[end - 1].contains("stack.yml") && watch.seen[end - 1].contains(".env"),
        "{first}"
    );
    wait_running(&c, "m1", "live_web", 1, &[], Duration::from_secs(10));

    // A save: planned (the plan printed again) and applied.
    std::fs::write(&file, stack("2")).expect("write stack");
    let start = watch.wait_for(end, "Changed: ");
    let end = watch.wait_for(start, "Watching ");
    let second = watch.between(start - 1, end);
    assert!(second.contains("Changed: ") && second.contains("stack.yml"), "{second}");
    assert!(second.contains("~ service.web"), "the plan is printed:\n{second}");
    assert!(second.contains("Applied stack live: revision 2"), "{second}");
    wait_running(&c, "m1", "live_web", 2, &[], Duration::from_secs(10));

    // An invalid save: the diagnostic, nothing applied, still watching.
    std::fs::write(&file, stack("two")).expect("write stack");
    let start = watch.wait_for(end, "Changed: ");
    // The diagnostic comes on stderr, read by another thread than stdout's "Changed:" and "Watching": it may land
    // before either in `seen`, so it is looked for from the end of the previous round.
    let told = watch.wait_for(end, "Nothing applied.");
    let invalid_from = end;
    let end = watch.wait_for(start, "Watching ").max(told);
    let invalid = watch.between(invalid_from, end);
    assert!(
        invalid.contains("stack.yml:7:") && invalid.contains("services.web.deploy.replicas"),
        "the diagnostic names the place:\n{invalid}"
    );
    assert!(invalid.contains("Nothing applied."), "{invalid}");
    assert!(!invalid.contains("Applied stack"), "{invalid}");
    assert!(
        matches!(watch.child.try_wait(), Ok(None)),
        "still running\n{}",
        watch.output()
    );

    // A valid save again, the way editors save (a new file renamed over the old one): applied.
    let tmp = dir.path().join(".stack.yml.swp");
    std::fs::write(&tmp, stack("3")).expect("write stack");
    std::fs::rename(&tmp, &file).expect("rename stack");
    let start = watch.wait_for(end, "Changed: ");
    let end = watch.wait_for(start, "Watching ");
    let third = watch.between(start - 1, end);
    assert!(third.contains("Applied stack live: revision 3"), "{third}");
    wait_running(&c, "m1", "live_web", 3, &[], Duration::from_secs(10));
    let history = c.swarm("m1", &["stack", "history", "live"]).ok();
    assert!(
        !history.stdout.lines().any(|l| l.split_whitespace().next() == Some("4")),
        "the invalid save made no revision:\n{}",
        history.show()
    );

    // Ctrl-C ends it, with exit code 0.
    assert!(watch.interrupt());
    let status = wait_until("swarm apply --watch exits", Duration::from_secs(15), || {
        watch
            .child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still running".to_string())
    });
    assert!(status.success(), "exit {status}\n{}", watch.output());
    watch.wait_for(end, "Stopped watching.");
}
