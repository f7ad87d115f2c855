//! The node side of the dispatcher: holds the session with the leader (reconnecting, through any manager, without
//! restarting tasks), feeds assignments to the agent's supervisor, sends status reports in batches, and answers
//! log requests.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use swarm_agent::driver::LogOptions;
use swarm_agent::supervisor::StatusUpdate;
use swarm_agent::supervisor::Supervisor;
use swarm_specs::task::Task;
use tokio::sync::mpsc;
use tokio::sync::watch;

use crate::dispatcher::SessionMessage;
use crate::dispatcher::StatusReport;
use crate::raftnet::PeerClient;

/// Header a non-leader manager sets to say where the leader is.
pub const LEADER_HEADER: &str = "x-swarm-leader";

/// Where to find managers: the node's current list (refreshed by heartbeats).
pub type Managers = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Keeps the node's session with the leader until `stop`: assignments in, nothing lost across reconnects.
pub async fn run_session(
    supervisor: Arc<Supervisor>,
    client: PeerClient,
    managers: Managers,
    leader_hint: Arc<std::sync::Mutex<Option<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut next = 0usize;
    loop {
        let candidates = managers();
        let hinted = leader_hint.lock().ok().and_then(|h| h.clone());
        let target = hinted.or_else(|| candidates.get(next % candidates.len().max(1)).cloned());
        next = next.wrapping_add(1);
        if let Some(addr) = target {
            tokio::select! {
                _ = stop.changed() => return,
                result = one_session(&supervisor, &client, &addr, &leader_hint) => {
                    match result {
                        Ok(()) => backoff = Duration::from_millis(50),
                        Err(e) => tracing::debug!(manager = %addr, "session: {e}"),
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn one_session(
    supervisor: &Arc<Supervisor>,
    client: &PeerClient,
    addr: &str,
    leader_hint: &Arc<std::sync::Mutex<Option<String>>>,
) -> Result<(), String> {
    let http = client.get();
    let sent = http.get(format!("https://{addr}/v1/dispatcher/session")).send().await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            // The hinted leader is gone: forget it, so the next attempt asks the other managers.
            if let Ok(mut h) = leader_hint.lock() {
                if h.as_deref() == Some(addr) {
                    *h = None;
                }
            }
            return Err(e.to_string());
        }
    };
    if !response.status().is_success() {
        let leader = response
            .headers()
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Ok(mut h) = leader_hint.lock() {
            *h = leader;
        }
        return Err(format!("{addr} answered {}", response.status()));
    }
    if let Ok(mut h) = leader_hint.lock() {
        *h = Some(addr.to_string());
    }
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut full: Option<Vec<Task>> = None;
    loop {
        // A ping arrives every 2 s: silence for longer means the leader is gone.
        let chunk = match tokio::time::timeout(Duration::from_secs(6), body.next()).await {
            Ok(Some(Ok(c))) => c,
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Ok(()),
            Err(_) => return Err("the session went silent".into()),
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let message: SessionMessage = match serde_json::from_slice(&line) {
                Ok(m) => m,
                // Only where and what kind: the text of a serde error can quote the line (secret contents, maybe).
                Err(e) => {
                    return Err(format!(
                        "bad session message ({:?} error at column {})",
                        e.classify(),
                        e.column()
                    ))
                }
            };
            match message {
                SessionMessage::Begin => {
                    if let Some(files) = supervisor.files() {
                        files.begin_full();
                    }
                    full = Some(Vec::new());
                }
                SessionMessage::Files { files } => {
                    if let Some(store) = supervisor.files() {
                        store.put(files);
                    }
                }
                SessionMessage::ForgetFiles { files } => {
                    if let Some(store) = supervisor.files() {
                        store.forget(&files);
                    }
                }
                SessionMessage::Tasks { tasks } => match full.as_mut() {
                    Some(set) => set.extend(tasks),
                    None => tasks.into_iter().for_each(|t| supervisor.assign(t)),
                },
                SessionMessage::End => {
                    if let Some(files) = supervisor.files() {
                        files.end_full();
                    }
                    if let Some(set) = full.take() {
                        supervisor.assign_all(set);
                    }
                }
                SessionMessage::Removed { task_ids } => task_ids.iter().for_each(|id| supervisor.unassign(id)),
                SessionMessage::Logs {
                    request,
                    task_id,
                    follow,
                    tail,
                    timestamps,
                } => {
                    tokio::spawn(send_logs(
                        supervisor.clone(),
                        http.clone(),
                        addr.to_string(),
                        request,
                        task_id,
                        LogOptions {
                            follow,
                            tail,
                            timestamps,
                        },
                    ));
                }
                SessionMessage::Ping => {}
            }
        }
    }
}

/// Streams a task's log lines to the leader, which relays them to whoever asked.
async fn send_logs(
    supervisor: Arc<Supervisor>,
    http: reqwest::Client,
    addr: String,
    request: String,
    task_id: String,
    options: LogOptions,
) {
    let (tx, rx) = mpsc::channel::<Result<Vec<u8>, std::io::Error>>(64);
    let reader = tokio::spawn(async move {
        let drivers = ["docker", "process"];
        for name in drivers {
            let Some(driver) = supervisor.driver(name) else {
                continue;
            };
            if matches!(
                driver.inspect(&task_id).await,
                Ok(swarm_agent::driver::Observed::Missing) | Err(_)
            ) {
                continue;
            }
            let mut lines = driver.logs(&task_id, options.clone());
            while let Some(line) = lines.next().await {
                let item = match line {
                    Ok(l) => {
                        let stream = match l.stream {
                            swarm_agent::driver::LogStream::Stdout => "stdout",
                            swarm_agent::driver::LogStream::Stderr => "stderr",
                        };
                        let json = serde_json::json!({ "stream": stream, "line": l.text });
                        Ok(format!("{json}\n").into_bytes())
                    }
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
            return;
        }
    });
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let _ = http
        .post(format!("https://{addr}/v1/dispatcher/logs/{request}"))
        .body(body)
        .send()
        .await;
    reader.abort();
}

/// Sends the supervisor's status updates to the leader in batches (at most one request per 100 ms), keeping
/// anything that could not be delivered for the next try.
pub async fn run_reporter(
    mut updates: mpsc::UnboundedReceiver<StatusUpdate>,
    client: PeerClient,
    managers: Managers,
    leader_hint: Arc<std::sync::Mutex<Option<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pending: Vec<(String, swarm_specs::task::TaskStatus)> = Vec::new();
    loop {
        if pending.is_empty() {
            tokio::select! {
                _ = stop.changed() => return,
                u = updates.recv() => match u {
                    Some(u) => pending.push((u.task_id, u.status)),
                    None => return,
                },
            }
        }
        while let Ok(u) = updates.try_recv() {
            pending.push((u.task_id, u.status));
        }
        let mut targets = Vec::new();
        if let Some(h) = leader_hint.lock().ok().and_then(|h| h.clone()) {
            targets.push(h);
        }
        targets.extend(managers());
        let report = StatusReport {
            updates: pending.clone(),
        };
        let mut delivered = false;
        for addr in targets {
            let url = format!("https://{addr}/v1/dispatcher/status");
            let sent = client
                .get()
                .post(url)
                .json(&report)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Some(response) = sent.ok().filter(|r| r.status().is_success()) {
                // Read to the end: an HTTP/2 client that drops answers unread resets their streams, and h2 closes its
                // own connection after 1,024 of those (`too_many_internal_resets`), failing the next report.
                let _ = response.bytes().await;
                delivered = true;
                break;
            }
        }
        if delivered {
            pending.clear();
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(REPORT_INTERVAL) => {}
        }
    }
}

/// A node sends its status reports at most this often (the first change goes at once; later ones are batched).
pub const REPORT_INTERVAL: Duration = Duration::from_millis(20);
