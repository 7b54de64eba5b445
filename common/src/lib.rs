//! Plumbing shared by taskgate's three services, so each `main.rs` stays thin
//! and every service starts, logs, connects and reports errors the same way.
//!
//! # Layout
//! - [`telemetry`]: tracing-subscriber set-up (JSON or human logs).
//! - [`settings`]: reading the command line and `.env`; secret settings.
//! - [`shutdown`]: the Ctrl-C / SIGTERM future every server waits on.
//! - [`grpc`]: grpc.health.v1 and server reflection, and a health probe client.
//! - [`db`]: Postgres pools (one schema per service) and migrations.
//! - [`redis`]: a fred Redis pool that reconnects by itself, and the circuit
//!   breaker that stops requests waiting on a Redis that does not answer.
//! - [`balance`]: channels balanced over every replica of a backend (DNS or a list).
//! - [`mtls`]: mutual TLS between the services, and who may speak for a client.
//! - [`keys`]: the Redis key layout (per-user hash tags for Redis Cluster).
//! - [`status`]: `tonic::Status` builders carrying google.rpc error details.
//! - [`validate`]: checking request messages against the contract's
//!   `buf.validate` rules (INVALID_ARGUMENT naming each broken field).
//! - [`fault`]: the one classification of Postgres and Redis errors into gRPC codes.
//! - [`metrics`]: Prometheus metrics: the go-grpc-prometheus server series
//!   and the admin listener serving `/metrics`.
//! - [`memory`]: giving the allocator's freed memory back to the system
//!   when a service goes quiet.

pub mod balance;
pub mod db;
pub mod fault;
pub mod grpc;
pub mod keys;
pub mod memory;
pub mod metrics;
pub mod mtls;
pub mod redis;
pub mod settings;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod validate;
