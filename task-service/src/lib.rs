//! taskgate's task service: each user's tasks in Postgres, and each user's
//! first list pages in a Redis cache that is never stale.
//!
//! Every call acts as the user named by the verified access token (checked
//! here with the shared `taskgate-tokens` crate, not trusted from a header),
//! and every SQL statement is scoped to that owner, so another user's task is
//! indistinguishable from a missing one.
//!
//! # Layout
//! - [`settings`]: configuration from the environment ([`Settings`]).
//! - [`startup`]: [`Application`], which connects, migrates, binds and serves.
//! - [`domain`]: validated input types (`TaskTitle`, `TaskId`, `PageToken`, ...).
//! - [`error`]: [`TaskError`], the one error at the gRPC boundary.
//! - [`auth`]: who is calling: token verification and revocation.
//! - [`repository`]: the Postgres queries, every one scoped to its owner.
//! - [`cache`]: the Redis list cache: versions, epochs, outage handling.
//! - [`store`]: reads and writes that keep Postgres and the cache consistent,
//!   with single-flight loading of cold lists.
//! - [`watch`]: WatchTasks: the per-user event log, its live tail across
//!   replicas, and the limits on open streams.
//! - [`service`]: the `TaskService` gRPC implementation.
//! - [`metrics`]: counters tests and operators read (queries, cache hits).

pub mod auth;
pub mod cache;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod repository;
pub mod service;
pub mod settings;
pub mod startup;
pub mod store;
pub mod watch;

pub use error::TaskError;
pub use metrics::Metrics;
pub use settings::Settings;
pub use startup::Application;
