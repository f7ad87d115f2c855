//! What the process harness (`tests/cluster`) and the container harness (`tests/multihost`) share: waiting for a
//! condition, and reading `swarm node ls`. Included by both with `#[path]`.

use std::process::Child;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

/// One row of `swarm node ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: String,
    /// The `*` after the id: the node answering.
    pub is_self: bool,
    pub hostname: String,
    pub status: String,
    pub availability: String,
    pub manager_status: String,
    pub engine_version: String,
}

/// Parses `swarm node ls` by the header's column positions (the MANAGER STATUS cell of a worker is empty, so
/// splitting on spaces would shift the columns).
pub fn parse_node_ls(text: &str) -> Vec<Row> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let names = [
        "ID",
        "HOSTNAME",
        "STATUS",
        "AVAILABILITY",
        "MANAGER STATUS",
        "ENGINE VERSION",
    ];
    let mut starts = Vec::new();
    let mut from = 0;
    for name in names {
        let at = header[from..]
            .find(name)
            .map(|i| i + from)
            .unwrap_or_else(|| panic!("`node ls` header lacks {name:?}: {header:?}"));
        starts.push(at);
        from = at + name.len();
    }
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let cell = |i: usize| {
                let end = starts.get(i + 1).copied().unwrap_or(usize::MAX).min(line.len());
                line.get(starts[i].min(line.len())..end)
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            let id = cell(0);
            let (id, is_self) = match id.strip_suffix(" *") {
                Some(id) => (id.to_string(), true),
                None => (id, false),
            };
            Row {
                id,
                is_self,
                hostname: cell(1),
                status: cell(2),
                availability: cell(3),
                manager_status: cell(4),
                engine_version: cell(5),
            }
        })
        .collect()
}

/// Polls `check` every `poll` until it returns `Ok` or `timeout` passes; then panics naming `what` and the last
/// state `check` reported.
#[track_caller]
pub fn wait_until_every<T>(
    poll: Duration,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting until {what}; last seen:\n{last}")
            }
            Err(_) => std::thread::sleep(poll),
        }
    }
}

/// Checks that `check` holds at every poll (every `poll`) for `period` (a property that must *stay* true, such as a node staying
/// Ready); panics at the first poll where it does not.
#[track_caller]
pub fn holds_for_every(poll: Duration, what: &str, period: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    while start.elapsed() < period {
        if let Err(seen) = check() {
            panic!("{what} stopped holding after {:?}:\n{seen}", start.elapsed());
        }
        std::thread::sleep(poll);
    }
}

/// Sends SIGINT to `child` (what Ctrl-C does); true when the signal was delivered.
pub fn interrupt(child: &Child) -> bool {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Ends `child` when a test is over: interrupted first so that it cleans up after itself, killed if it is still
/// running after `grace`.
pub fn interrupt_then_kill(child: &mut Child, grace: Duration) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    interrupt(child);
    let deadline = Instant::now() + grace;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
