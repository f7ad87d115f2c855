//! Multi-host tests: every `swarm daemon` in its own Docker container on a user-defined Docker network, and the
//! faults a machine suffers — killed, frozen, cut off the network, rebooted — with the cluster's invariants
//! checked after each story.
//!
//! Needs a reachable Docker Engine and Debian's `busybox-static` (the node image is built from the `swarm` binary
//! under test with `docker import`; no registry). Run with `cargo test --test multihost`. `CHAOS_SEED=S` replays
//! one random fault sequence, `CHAOS_SEEDS=N` runs N of them, `CHAOS_STEPS=K` sets their length (default 6);
//! `SWARM_TEST_LOG` sets the daemons' log filter (printed for every node when a test fails).

#[path = "../common/mod.rs"]
#[allow(dead_code)] // the process helpers are for tests/cluster
mod common;
mod harness;
mod image;

mod chaos;
mod random;
