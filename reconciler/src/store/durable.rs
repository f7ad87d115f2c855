//! How far a manager's Raft log is durable, for the leader's appends that return before they are synced.
//!
//! openraft 0.9 replicates an entry only once the leader's own append of it has returned, so the leader's fsync and
//! then a follower's came one after the other on every write. The leader's append of its own entries now returns
//! once they are in redb (without durability, readable) and written to the write-ahead file; the file is synced on
//! the blocking pool meanwhile, while the entries travel to the followers (etcd's leader, too, writes its WAL while
//! it sends). openraft may then count the leader as holding entries that are not durable yet, so nothing that
//! makes a commit visible may happen before they are:
//!
//! - the state machine applies an entry (so the client hears of it and reads see it) only once it is durable here;
//! - the leader tells followers a commit index (`leader_commit`) only once the entries up to it are durable here
//!   ([`crate::raftnet::Gated`]).
//!
//! A commit therefore shows only once a majority, the leader among them, holds its entries durably, as before. A
//! leader that crashes first loses entries that no one saw committed, which Raft allows. A follower's append is
//! synced before it returns (its answer tells the leader the entries are durable), and so are truncations. One file
//! takes every record in order, so a sync makes every earlier record durable too; the leader's vote is saved by a
//! durable redb commit, which makes every entry before it durable as well.

use tokio::sync::watch;

/// What is known durable: every entry with an index below `below`, or the log could not be synced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Durable {
    Below(u64),
    Failed(String),
}

/// Waits for entries to become durable in the log it was taken from ([`super::LogStore::durable`]).
#[derive(Clone)]
pub struct DurableLog(watch::Receiver<Durable>);

impl DurableLog {
    pub(crate) fn new(receiver: watch::Receiver<Durable>) -> DurableLog {
        DurableLog(receiver)
    }

    /// Returns once the entry at `index` and every one before it are durable; an error if the log cannot be synced
    /// (or is closed), after which nothing may count on its entries.
    pub async fn wait(&self, index: u64) -> Result<(), String> {
        let mut receiver = self.0.clone();
        let durable = receiver
            .wait_for(|durable| match durable {
                Durable::Below(below) => *below > index,
                Durable::Failed(_) => true,
            })
            .await
            .map_err(|_| "the Raft log is closed".to_string())?;
        match &*durable {
            Durable::Below(_) => Ok(()),
            Durable::Failed(e) => Err(format!("the Raft log could not be synced: {e}")),
        }
    }

    /// Whether the entry at `index` is durable now.
    pub fn is_durable(&self, index: u64) -> bool {
        matches!(&*self.0.borrow(), Durable::Below(below) if *below > index)
    }
}
