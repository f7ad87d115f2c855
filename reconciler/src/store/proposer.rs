//! Group commit on the leader: the writes that queue up while earlier entries are in flight share the next entry.
//!
//! openraft 0.9 appends each client write as an entry of its own and flushes it to disk before it replicates it,
//! and every follower flushes it again: under load a write would cost a flush on every manager and a replication
//! round however small it is. The proposer keeps at most [`IN_FLIGHT`] entry in
//! flight and puts the writes that arrive meanwhile into one [`Proposal::Batch`] (at most [`MAX_BATCH`] requests and
//! about [`MAX_BATCH_BYTES`] of values, never two requests that touch the same key), so a round's cost is shared by
//! every write in it. A write that finds a free slot goes out at once, alone, as before.

use std::collections::HashSet;
use std::sync::Arc;

use openraft::error::Fatal;
use openraft::error::RaftError;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;

use super::typ;
use super::Proposal;
use super::Request;
use super::Response;

/// Entries the proposer keeps in flight at once. One: a write that finds the slot free goes out at once, and the
/// writes that arrive while an entry commits all go into the next, which was faster than more, smaller entries in
/// `cargo bench --bench cluster` with 64 clients (8,227 / 8,464 writes/s with one slot, 6,486–7,229 with 2, 3 or 6,
/// alternating in one sitting) and the same with one client.
pub const IN_FLIGHT: usize = 1;
/// Requests in one entry at most.
pub const MAX_BATCH: usize = 256;
/// A batch takes no more requests once its values add up to this many bytes (a larger request goes alone).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// What a write through the proposer returns: the request's own response, or why its entry was not committed.
pub type ProposeResult = Result<Response, typ::RaftError<typ::ClientWriteError>>;

struct Pending {
    request: Request,
    reply: oneshot::Sender<ProposeResult>,
}

/// The leader's way in to Raft for writes. Cheap to clone; the clones share one queue.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Proposer {
    /// Starts the task that turns queued writes into entries of `raft`.
    pub fn start(raft: typ::Raft) -> Proposer {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, pending));
        Proposer { queue }
    }

    /// Commits `request` through this manager's Raft member (which must lead, or the error says who does), in an
    /// entry of its own or shared with others, and returns what applying it did.
    pub async fn write(&self, request: Request) -> ProposeResult {
        let (reply, response) = oneshot::channel();
        if self.queue.send(Pending { request, reply }).is_err() {
            return Err(RaftError::Fatal(Fatal::Stopped));
        }
        response.await.unwrap_or(Err(RaftError::Fatal(Fatal::Stopped)))
    }
}

async fn run(raft: typ::Raft, mut queue: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut held_over: Option<Pending> = None;
    loop {
        let first = match held_over.take() {
            Some(pending) => pending,
            None => match queue.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        // Writes that arrive while every slot is taken wait in the queue, and join this entry.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut keys: HashSet<(String, String)> = HashSet::new();
        let mut bytes = first.request.size();
        add_keys(&mut keys, &first.request);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            let Ok(next) = queue.try_recv() else { break };
            if next
                .request
                .keys()
                .any(|(table, key)| keys.contains(&(table.to_string(), key.to_string())))
            {
                // The same key twice in one entry would give two writes one revision: the next entry takes it.
                held_over = Some(next);
                break;
            }
            bytes += next.request.size();
            add_keys(&mut keys, &next.request);
            batch.push(next);
        }
        tokio::spawn(commit(raft.clone(), batch, slot));
    }
}

fn add_keys(keys: &mut HashSet<(String, String)>, request: &Request) {
    keys.extend(request.keys().map(|(table, key)| (table.to_string(), key.to_string())));
}

async fn commit(raft: typ::Raft, mut batch: Vec<Pending>, _slot: OwnedSemaphorePermit) {
    if batch.len() == 1 {
        let Pending { request, reply } = batch.remove(0);
        let _ = reply.send(raft.client_write(Proposal::One(request)).await.map(|r| r.data));
        return;
    }
    let (requests, replies): (Vec<Request>, Vec<oneshot::Sender<ProposeResult>>) =
        batch.into_iter().map(|p| (p.request, p.reply)).unzip();
    match raft.client_write(Proposal::Batch { batch: requests }).await {
        Ok(written) => match written.data {
            Response::Batch(responses) if responses.len() == replies.len() => {
                for (reply, response) in replies.into_iter().zip(responses) {
                    let _ = reply.send(Ok(response));
                }
            }
            other => {
                // The state machine answers a batch with a batch of the same length; anything else is a bug.
                tracing::error!(
                    ?other,
                    requests = replies.len(),
                    "a batch entry was answered with something else"
                );
                for reply in replies {
                    let _ = reply.send(Err(RaftError::Fatal(Fatal::Panicked)));
                }
            }
        },
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
