//! Who gets in: join tokens (secret and CA digest), rotation, no plaintext on the manager port, and Raft connections
//! for managers only.

use std::io::Read as _;
use std::io::Write as _;
use std::net::TcpStream;
use std::time::Duration;

use swarm_reconciler::raftnet;

use crate::harness::holds_for;
use crate::harness::Cluster;
use crate::secrets::data_dir;

/// `SWMTKN-1-<CA digest>-<secret>` with one character of part `part` (2: digest, 3: secret) changed.
fn tamper(token: &str, part: usize) -> String {
    let mut parts: Vec<String> = token.split('-').map(str::to_string).collect();
    assert_eq!(parts.len(), 4, "unexpected token shape: {token}");
    let last = parts[part].pop().expect("non-empty part");
    parts[part].push(if last == '0' { '1' } else { '0' });
    parts.join("-")
}

#[test]
fn joins_need_the_current_token_of_this_swarm_and_the_manager_port_speaks_only_tls() {
    let mut c = Cluster::new();
    c.init("m1");
    c.join_worker("w1");
    c.wait_all_ready();
    let worker_token = c.join_token("m1", "worker");
    let manager_token = c.join_token("m1", "manager");
    c.add("intruder");

    c.try_join("intruder", &tamper(&worker_token, 3), "m1")
        .fails_with("invalid join token");
    c.try_join("intruder", &tamper(&worker_token, 2), "m1")
        .fails_with("presented a CA that does not match the join token");

    // Plain HTTP on the manager port gets no HTTP answer.
    let mut stream = TcpStream::connect(c.addr("m1")).expect("connect to the manager port");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request = format!(
        "GET /v1/ping HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        c.addr("m1")
    );
    stream.write_all(request.as_bytes()).expect("send a plaintext request");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !text.starts_with("HTTP/") && !text.contains("200 OK"),
        "the manager port answered plaintext HTTP: {text:?}"
    );

    let rotated = c.run("m1", "join-token -q --rotate worker").ok();
    let new_token = rotated.stdout.trim().to_string();
    assert_ne!(new_token, worker_token, "rotation gave the same token");
    assert_eq!(c.join_token("m1", "worker"), new_token, "join-token after rotation");
    assert_eq!(
        c.join_token("m1", "manager"),
        manager_token,
        "rotating the worker token changed the manager's"
    );
    c.try_join("intruder", &worker_token, "m1")
        .fails_with("invalid join token");

    // The worker that joined with the old token keeps its place.
    let grace = c.info("m1").grace();
    let w1 = c.id("w1");
    holds_for(
        "w1 stays Ready after the rotation",
        grace + Duration::from_secs(1),
        || {
            let rows = c.try_node_ls("m1")?;
            match rows.iter().find(|r| r.id == w1) {
                Some(r) if r.status == "Ready" => Ok(()),
                _ => Err(format!("{rows:#?}")),
            }
        },
    );

    // The refused attempts left nothing behind, and the new token works.
    assert_eq!(c.node_ls("m1").len(), 2, "refused joins must not add nodes");
    c.try_join("intruder", &new_token, "m1").ok();
    let rows = c.wait_all_ready();
    assert_eq!(rows.len(), 3, "{rows:#?}");
}

/// A Raft connection (the managers' AppendEntries and votes, ALPN `swarm-raft/1`) to `manager` with `name`'s
/// certificate.
async fn dial_raft_as(c: &Cluster, name: &str, manager: &str) -> raftnet::RaftStream {
    let tls = data_dir(c, name).join("tls");
    let read = |file: &str| std::fs::read_to_string(tls.join(file)).expect("the node's TLS files");
    swarm_reconciler::tls::install_crypto_provider();
    let config = swarm_reconciler::tls::client_config(&read("ca.pem"), &read("node.pem"), &read("node.key"))
        .expect("a client configuration");
    raftnet::dial(&c.addr(manager), &config)
        .await
        .expect("a Raft connection")
}

#[test]
fn the_manager_port_takes_raft_connections_from_managers_only() {
    let mut c = Cluster::new();
    c.init("m1");
    c.join_worker("w1");
    c.wait_all_ready();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // A worker's certificate: one refusal, and the connection closes without reading a request.
        let mut worker = dial_raft_as(&c, "w1", "m1").await;
        let (tag, reason) = raftnet::read_frame(&mut worker).await.unwrap().expect("a refusal");
        let reason = String::from_utf8_lossy(&reason).into_owned();
        assert_eq!(tag, raftnet::REFUSED, "{reason}");
        assert!(reason.contains("worker certificate"), "{reason}");
        assert!(matches!(raftnet::read_frame(&mut worker).await, Ok(None) | Err(_)));

        // A manager's: a vote request of a long-gone term is answered (not granted), and changes nothing.
        let mut manager = dial_raft_as(&c, "m1", "m1").await;
        let request = openraft::raft::VoteRequest::<u64>::new(openraft::Vote::new(0, 0), None);
        let request = serde_json::to_vec(&request).unwrap();
        raftnet::write_frame(&mut manager, raftnet::Rpc::Vote as u8, &request)
            .await
            .unwrap();
        let (tag, answer) = raftnet::read_frame(&mut manager).await.unwrap().expect("an answer");
        let text = String::from_utf8_lossy(&answer).into_owned();
        assert_eq!(tag, raftnet::ANSWER, "{text}");
        let answer: Result<openraft::raft::VoteResponse<u64>, serde_json::Value> =
            serde_json::from_slice(&answer).expect("the answer's JSON");
        assert!(!answer.expect("a vote response").vote_granted, "{text}");
    });
    c.wait_all_ready();
}
