//! The values that travel through Raft: peers, write requests with their guards and ops, responses, and the
//! committed changes the watch stream delivers.

use std::sync::Arc;

use serde_json::value::RawValue;

/// A stored value as JSON text, shared: the Raft log, the state machine and every watcher hold the same text, and a
/// copy is a reference count. Text rather than a parsed `serde_json::Value`: a task is 0.9 KiB of text and 7–8 KiB
/// parsed (150,000 tasks did not fit a manager's memory budget parsed), redb and the Raft messages carry text
/// anyway, and a reader decodes it straight into its own type. It serializes as the JSON it holds, so the log, the
/// snapshots and the wire format are the same as with a `Value`. Two values are equal when their texts are (as
/// written by `encode`; compare with a `Value` for equality of meaning).
#[derive(Clone)]
pub struct Json(Arc<RawValue>);

impl Json {
    /// `value` serialized.
    pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Json, serde_json::Error> {
        Ok(Json(Arc::from(serde_json::value::to_raw_value(value)?)))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The value as a `T` (only what `T` names is read; other fields are skipped).
    pub fn decode<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.as_str())
    }

    /// The value parsed (`Null` if it cannot be: a value deeper than serde_json's recursion limit).
    pub fn to_value(&self) -> serde_json::Value {
        self.decode().unwrap_or(serde_json::Value::Null)
    }
}

impl From<serde_json::Value> for Json {
    fn from(value: serde_json::Value) -> Json {
        // A `Value` always serializes (its map keys are strings).
        Json::encode(&value).unwrap_or_else(|_| Json(Arc::from(RawValue::NULL.to_owned())))
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Json) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<serde_json::Value> for Json {
    fn eq(&self, other: &serde_json::Value) -> bool {
        self.to_value() == *other
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Json {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        Box::<RawValue>::deserialize(d).map(|raw| Json(Arc::from(raw)))
    }
}

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
    Put { table: String, key: String, value: Json },
    /// Remove `key`; deleting a key that does not exist changes nothing.
    Delete { table: String, key: String },
}

impl Request {
    /// Every (table, key) the request reads (guards) or writes (ops).
    pub fn keys(&self) -> impl Iterator<Item = (&str, &str)> {
        let guards = self.guards.iter().map(|g| match g {
            Guard::Revision { table, key, .. } => (table.as_str(), key.as_str()),
        });
        let ops = self.ops.iter().map(|op| match op {
            Op::Put { table, key, .. } | Op::Delete { table, key } => (table.as_str(), key.as_str()),
        });
        guards.chain(ops)
    }

    /// About how many bytes the request adds to an entry: its keys and values.
    pub fn size(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put { table, key, value } => table.len() + key.len() + value.as_str().len(),
                Op::Delete { table, key } => table.len() + key.len(),
            })
            .sum()
    }
}

/// What a normal Raft entry carries: one request, or several that arrived together at the leader (group commit,
/// see [`super::Proposer`]). The requests of a batch apply in order, each on its own (a failed guard fails only its
/// request), all at the entry's index as their revision; no two of them touch the same key, so a key's revision
/// still names exactly one request's write. Untagged: a single request is stored as it always was.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged, try_from = "ProposalFields")]
pub enum Proposal {
    One(Request),
    Batch { batch: Vec<Request> },
}

/// How a [`Proposal`] is read: serde's untagged enums buffer the input, which a [`Json`] value (raw text) cannot be
/// read from, so the fields of both shapes are read as one struct.
#[derive(serde::Deserialize)]
struct ProposalFields {
    guards: Option<Vec<Guard>>,
    ops: Option<Vec<Op>>,
    batch: Option<Vec<Request>>,
}

impl Proposal {
    /// About how many bytes the proposal's requests carry (see [`Request::size`]).
    pub fn size(&self) -> usize {
        match self {
            Proposal::One(request) => request.size(),
            Proposal::Batch { batch } => batch.iter().map(Request::size).sum(),
        }
    }
}

impl TryFrom<ProposalFields> for Proposal {
    type Error = &'static str;

    fn try_from(fields: ProposalFields) -> Result<Proposal, Self::Error> {
        match fields {
            ProposalFields {
                guards: None,
                ops: None,
                batch: Some(batch),
            } => Ok(Proposal::Batch { batch }),
            ProposalFields {
                guards: Some(guards),
                ops: Some(ops),
                batch: None,
            } => Ok(Proposal::One(Request { guards, ops })),
            _ => Err("a proposal has either `guards` and `ops` (one request) or `batch` (several)"),
        }
    }
}

impl From<Request> for Proposal {
    fn from(request: Request) -> Proposal {
        Proposal::One(request)
    }
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
    /// A [`Proposal::Batch`]: what each of its requests did, in order.
    Batch(Vec<Response>),
}

/// A committed change, as the watch stream delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub table: String,
    pub key: String,
    /// The new value, or `None` when the key was deleted.
    pub value: Option<Json>,
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
