//! Tests of taskgate run as a fleet, and the harness that starts one.
//!
//! # Layout
//! - [`fleet`]: replicas of each service started in-process, each on a tokio runtime of its own so
//!   a test can kill one outright, on a private Redis Cluster.
//! - [`processes`]: the three release binaries as separate processes, with their CPU time and
//!   resident memory, for the benchmark and capacity examples.
//! - `tests/fleet/`: many replicas migrating one database at once, `MIGRATE_AT_START`, and every
//!   environment variable of the Kubernetes manifests against the services' settings.
//! - `tests/cluster/` (run by the Redis Cluster pass of `cargo xtask test`): 2 gateways, 3
//!   task-service and 2 auth-service replicas under load, and a Redis primary killed under load.

pub mod fleet;
pub mod processes;
