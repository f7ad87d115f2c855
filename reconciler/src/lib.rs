//! swarm-reconciler: the manager — it decides what the cluster should do and drives it there.
//!
//! Decisions are pure functions of values (see the design's rules); I/O stays at the edges. Modules:
//! - [`plan`] compares a desired stack with the current one and says what applying it would change.

pub mod plan;
