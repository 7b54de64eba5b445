//! The auth service's own Prometheus series, the ones that explain what it
//! is doing beyond the go-grpc-prometheus call counts:
//!
//! - `auth_logins_total{outcome}`: `success`, `invalid_credentials`,
//!   `throttled` (the failed-login windows), `busy` (the hashing queue is
//!   full), `invalid_argument`, `error`.
//! - `auth_refreshes_total{outcome}`: `rotated`, `grace` (a retry within
//!   `REFRESH_GRACE_SECONDS`), `reuse_detected` (theft assumed, the session
//!   ended), `session_ended`, `invalid_token`, `invalid_argument`, `error`.
//! - `auth_sessions_revoked_total{reason}`: sessions ended, by
//!   [`EndReason`](crate::sessions::EndReason).
//! - `auth_password_hash_queue_depth` (gauge): hashes waiting for a thread.
//! - `auth_password_hash_wait_seconds` (histogram): how long they waited.
//!
//! Every label value is a `&'static str` from the lists above.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use taskgate_common::metrics::latency_histogram;

use crate::AuthError;

/// An `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Outcome {
    /// What happened, from a fixed list.
    pub outcome: &'static str,
}

/// A `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Reason {
    /// Why a session ended: an [`EndReason`](crate::sessions::EndReason) name.
    pub reason: &'static str,
}

/// The auth service's domain series. Cloning shares the counts; a default
/// value counts into series no registry exports (the unit tests' case).
#[derive(Debug, Clone)]
pub struct AuthMetrics {
    /// `auth_logins_total`.
    pub logins: Family<Outcome, Counter>,
    /// `auth_refreshes_total`.
    pub refreshes: Family<Outcome, Counter>,
    /// `auth_sessions_revoked_total`.
    pub sessions_revoked: Family<Reason, Counter>,
    /// `auth_password_hash_queue_depth`.
    pub hash_queue_depth: Gauge,
    /// `auth_password_hash_wait_seconds`.
    pub hash_wait: Histogram,
}

impl Default for AuthMetrics {
    fn default() -> Self {
        AuthMetrics {
            logins: Family::default(),
            refreshes: Family::default(),
            sessions_revoked: Family::default(),
            hash_queue_depth: Gauge::default(),
            hash_wait: latency_histogram(),
        }
    }
}

impl AuthMetrics {
    /// New series, registered in `registry`.
    pub fn register(registry: &mut Registry) -> AuthMetrics {
        let metrics = AuthMetrics::default();
        registry.register("auth_logins", "Login attempts, by outcome", metrics.logins.clone());
        registry.register("auth_refreshes", "Refresh-token exchanges, by outcome", metrics.refreshes.clone());
        registry.register("auth_sessions_revoked", "Sessions ended, by reason", metrics.sessions_revoked.clone());
        registry.register(
            "auth_password_hash_queue_depth",
            "Password hashes waiting for a hashing thread",
            metrics.hash_queue_depth.clone(),
        );
        registry.register(
            "auth_password_hash_wait_seconds",
            "Time a password hash waited for a hashing thread",
            metrics.hash_wait.clone(),
        );
        metrics
    }

    /// Counts a login that ended with `result`.
    pub fn login<T>(&self, result: &Result<T, AuthError>) {
        let outcome = match result {
            Ok(_) => "success",
            Err(AuthError::InvalidCredentials) => "invalid_credentials",
            Err(AuthError::Throttled { .. }) => "throttled",
            Err(AuthError::Busy { .. }) => "busy",
            Err(AuthError::InvalidArgument { .. } | AuthError::Violations(_)) => "invalid_argument",
            Err(_) => "error",
        };
        self.logins.get_or_create(&Outcome { outcome }).inc();
    }

    /// Counts a refresh that ended with `outcome` (see the module's list).
    pub fn refresh(&self, outcome: &'static str) {
        self.refreshes.get_or_create(&Outcome { outcome }).inc();
    }

    /// Counts `n` sessions ended for `reason`.
    pub fn sessions_revoked(&self, reason: crate::sessions::EndReason, n: u64) {
        if n > 0 {
            self.sessions_revoked.get_or_create(&Reason { reason: reason.as_str() }).inc_by(n);
        }
    }
}
