//! taskgate as a fleet on a Redis Cluster: many replicas of every service, and a primary failover.
//!
//! Not part of a plain `cargo test` (`test = false` in Cargo.toml): `cargo xtask test` runs it in
//! its Redis Cluster pass (`cargo test -p fleet-tests --test cluster`), once every service's
//! scripts keep to one hash slot.

mod failover;
mod fleet;
