//! swarm-agent: what every node runs for its tasks.
//!
//! - [`driver`]: the `Driver` trait and its two implementations, `docker` (containers through the Docker Engine,
//!   with bollard) and `process` (child processes), which the task state machine drives.

pub mod driver;
