//! The docker driver (being written).
