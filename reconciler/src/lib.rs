//! swarm-reconciler
