//! swarm-reconciler: the manager — it decides what the cluster should do and drives it there.
//!
//! Decisions are pure functions of values (see the design's rules); I/O stays at the edges. Modules:
//! - [`plan`] compares a desired stack with the current one and says what applying it would change;
//! - [`store`] is the Raft log and state machine on redb, the only source of truth, with a watch stream;
//! - [`ca`] and [`tls`] are the cluster's PKI (root CA, node certificates, join tokens) and mutual TLS;
//! - [`cluster`] holds the cluster's own objects (the cluster record, nodes);
//! - [`manager`] is one manager: writes through the leader, quorum errors, heartbeats, membership changes;
//! - [`raftnet`] carries Raft RPCs between managers; [`api`] serves the HTTP routes; [`wire`] their bodies;
//! - [`daemon`] is `swarm daemon`: the node process that runs the roles and survives restarts;
//! - [`dispatcher`] (leader) sends each node its tasks and batches their status reports into Raft;
//!   [`node_agent`] is the node's end of that session, feeding the agent's supervisor;
//! - [`objects`] are services and stacks; [`orchestrator`] (leader) turns services into tasks and places them with
//!   [`scheduler`]; [`stacks`] plans and applies stacks against the live cluster;
//! - [`secrets`]: secrets sealed with the cluster's key before they enter the log, configs, their delivery to the
//!   nodes that need them, autolock;
//! - [`gitops`] (leader) follows git repositories and keeps the stacks they hold applied.

pub mod api;
pub mod ca;
pub mod cluster;
pub mod daemon;
pub mod dispatcher;
pub mod gitops;
pub mod manager;
pub mod node_agent;
pub mod objects;
pub mod orchestrator;
pub mod plan;
pub mod raftnet;
pub mod routes;
pub mod scheduler;
pub mod secrets;
/// The in-process cluster simulation (real managers, in-memory Raft, fake nodes) of the scale bench and tests.
#[doc(hidden)]
pub mod sim;
pub mod stacks;
pub mod store;
pub mod tls;
pub mod wire;
