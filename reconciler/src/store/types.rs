//! The values that travel through Raft: peers, write requests with their guards and ops, responses, and the
//! committed changes the watch stream delivers.

/// How to reach a manager: its API address and its swarm node id (string, as `swarm node ls` shows).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    pub addr: String,
    pub node_id: String,
}

/// One write: every op applies, or none (when a guard fails). Tables are plain names so later features add
/// tables, not variants.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// Checked in order against the state before this entry; the first that fails stops the write.
    pub guards: Vec<Guard>,
    /// Applied in order; a later op on the same key wins.
    pub ops: Vec<Op>,
}

/// A condition a [`Request`] needs to hold before its ops apply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Guard {
    /// The key's current mod revision must be exactly this (0 = the key must not exist).
    Revision { table: String, key: String, revision: u64 },
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// Store `value` under `key`; the key's mod revision becomes the entry's log index.
    Put {
        table: String,
        key: String,
        value: serde_json::Value,
    },
    /// Remove `key`; deleting a key that does not exist changes nothing.
    Delete { table: String, key: String },
}

/// What applying an entry did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Response {
    /// The request's ops were applied at this revision (the entry's log index).
    Applied { revision: u64 },
    /// `guards[index]` did not hold: the key's mod revision was `actual_revision` (0 = absent). Nothing applied.
    GuardFailed { index: usize, actual_revision: u64 },
    /// A membership entry.
    Membership,
    /// A blank entry (a new leader's first entry).
    Blank,
}

/// A committed change, as the watch stream delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub table: String,
    pub key: String,
    /// The new value, or `None` when the key was deleted.
    pub value: Option<serde_json::Value>,
    /// The key's mod revision after the change (for a deletion: the revision that deleted it).
    pub revision: u64,
}

/// The changes of one applied entry (or of one installed snapshot), durable before they are sent.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The state machine's revision once these changes are applied.
    pub revision: u64,
    /// Shared: the watch stream hands every subscriber a clone of each `Committed`, and an entry can hold a thousand
    /// tasks, so the changes themselves are not copied per subscriber.
    pub changes: std::sync::Arc<[Change]>,
}
