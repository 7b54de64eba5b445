//! Integration tests of the task service against real Postgres and Redis:
//! one binary, a module per feature.

mod auth;
mod cache;
mod crud;
mod etags;
mod helpers;
mod idempotency;
mod large;
mod list;
mod metrics;
mod outages;
mod ownership;
mod shutdown;
mod validation;
mod watch;
