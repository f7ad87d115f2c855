//! Process tests of the manager cluster: real `swarm daemon` processes on loopback, driven through the CLI.
//!
//! One binary for every topic (faster linking); the clusters run one at a time (see `harness`). Run with
//! `cargo test --test cluster`; set `SWARM_TEST_LOG` (e.g. `info,swarm_reconciler=debug`) for more detail in the
//! daemon logs that a failing test prints.

#[path = "../common/mod.rs"]
mod common;
mod harness;

mod age;
mod consistency;
mod durability;
mod failover;
mod formation;
mod gitops;
mod ids;
mod membership;
mod pruning;
mod recovery;
mod restart;
mod roles;
mod secrets;
mod security;
mod service_cli;
mod services;
mod settings;
mod stacks;
mod up;
mod updates;
mod watch;
