//! swarm-agent
