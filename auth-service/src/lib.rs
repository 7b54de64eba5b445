//! taskgate's auth service: accounts, argon2id passwords, EdDSA-signed access
//! and refresh tokens, and sessions (refresh-token families) in Redis with
//! atomic rotation, reuse detection and immediate revocation.
//!
//! # Layout
//! - [`settings`]: configuration from the environment.
//! - [`startup`]: [`Application`]: pools, migrations, keys, admin bootstrap,
//!   the gRPC server.
//! - [`service`]: the `AuthService` RPCs.
//! - [`domain`]: validated usernames, emails, phones, passwords.
//! - [`password`]: argon2id on a bounded blocking pool.
//! - [`keys`]: Ed25519 signing keys, JWKS, rotation.
//! - [`issuer`]: minting token pairs.
//! - [`sessions`]: sessions in Redis and their Lua scripts.
//! - [`throttle`]: the failed-login sliding windows.
//! - [`users`]: the `users` table.
//! - [`error`]: [`AuthError`] and its mapping to gRPC statuses.
//! - [`metrics`]: the service's own Prometheus series (logins, refreshes,
//!   revocations, the hashing queue).

pub mod domain;
pub mod error;
pub mod issuer;
pub mod keys;
pub mod metrics;
pub mod password;
pub mod service;
pub mod sessions;
pub mod settings;
pub mod startup;
pub mod throttle;
pub mod users;

pub use error::AuthError;
pub use settings::Settings;
pub use startup::{Application, migrate, revoke_key, rotate_keys};
