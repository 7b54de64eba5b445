//! Integration tests of the auth service against real Postgres and Redis.
//! Each test starts its own server on port 0 with a fresh database and its
//! own Redis prefix, so they run in parallel.

mod abuse;
mod accounts;
mod credentials;
mod helpers;
mod jwt_attacks;
mod keys;
mod login;
mod memory;
mod metrics;
mod outages;
mod sessions;
mod tokens;
