//! swarm-agent: what every node runs for its tasks.
//!
//! - [`driver`]: the `Driver` trait and its two implementations, `docker` (containers through the Docker Engine,
//!   with bollard) and `process` (child processes), which the task state machine drives;
//! - [`machine`]: the per-task state machine, a pure step function advancing a task one state at a time;
//! - [`supervisor`]: one loop per assigned task driving that machine, woken by driver events and assignments;
//! - [`files`]: the secret and config contents the managers deliver, written for tasks to a tmpfs.

pub mod driver;
pub mod files;
pub mod machine;
pub mod supervisor;
#[doc(hidden)]
pub mod testing;
