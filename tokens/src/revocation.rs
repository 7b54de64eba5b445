//! Immediate revocation of access tokens.
//!
//! When a session ends (logout, logout-all, reuse detection, a disabled
//! user), the auth service writes `{prefix}{u:<uid>}:revoked:<sid>` with a TTL of
//! the longest access-token lifetime: after that every access token of the
//! session has expired anyway, so the record can go. Verifiers reject an
//! access token whose session has such a record: one `EXISTS` per request,
//! which the gateway folds into its rate-limit script (see
//! [`session_revocation_key`]).

use fred::prelude::*;

use crate::{Claims, VerifyError};

/// The Redis key that marks session `sid` of user `uid` as revoked:
/// `{prefix}{u:<uid>}:revoked:<sid>`, under the user's hash tag so it shares a
/// Redis Cluster slot with the user's other keys (docs/redis-keys.md).
pub fn session_revocation_key(prefix: &str, uid: &str, sid: &str) -> String {
    taskgate_common::keys::user_key(prefix, uid, &format!("revoked:{sid}"))
}

/// What to do when Redis cannot answer the revocation check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationPolicy {
    /// Reject the request with UNAVAILABLE (the auth service's choice: its
    /// own calls need Redis anyway).
    FailClosed,
    /// Accept the token on its signature alone and log the outage; for the
    /// task service, which must keep working without Redis. (The gateway
    /// folds the check into its rate-limit script and makes the same choice
    /// when Redis is down.)
    FailOpen,
}

/// Checks tokens against the revocation records in Redis.
#[derive(Clone)]
pub struct RevocationCheck {
    /// The shared Redis pool.
    redis: Pool,
    /// Key prefix shared with the auth service (`REDIS_PREFIX`).
    prefix: String,
    /// What a Redis failure means.
    policy: RevocationPolicy,
}

impl RevocationCheck {
    /// A check against `redis` with keys under `prefix`.
    pub fn new(redis: Pool, prefix: impl Into<String>, policy: RevocationPolicy) -> Self {
        RevocationCheck { redis, prefix: prefix.into(), policy }
    }

    /// Err([`VerifyError::Revoked`]) if the token's session was revoked.
    pub async fn check(&self, claims: &Claims) -> Result<(), VerifyError> {
        let key = session_revocation_key(&self.prefix, &claims.sub, &claims.sid);
        match self.redis.exists::<i64, _>(key).await {
            Ok(0) => Ok(()),
            Ok(_) => Err(VerifyError::Revoked),
            Err(e) => match self.policy {
                RevocationPolicy::FailClosed => {
                    tracing::warn!(error = %e, "revocation check failed: redis unavailable");
                    Err(VerifyError::Unavailable)
                }
                RevocationPolicy::FailOpen => {
                    tracing::debug!(error = %e, "revocation check skipped: redis unavailable");
                    Ok(())
                }
            },
        }
    }
}
