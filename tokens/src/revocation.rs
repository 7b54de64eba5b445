//! Immediate revocation of access tokens: an allow-list of live sessions.
//!
//! The auth service keeps a mirror of every live session in Redis at
//! `{prefix}{u:<uid>}:sess:<sid>` ([`session_key`]) and deletes it when the
//! session ends (logout, logout-all, reuse detection, a disabled user).
//! Verifiers accept an access token only while its session's key exists:
//! one `EXISTS` per request, which the gateway folds into its rate-limit
//! script. Checking that a session is live, rather than that it was not
//! revoked, means a Redis that lost its data (restarted empty, failed over
//! to a lagging replica, flushed) makes verifiers refuse tokens until the
//! auth service rebuilds the mirror from Postgres, never accept revoked ones
//! (auth-service/README.md, "Sessions").

use fred::prelude::*;
use taskgate_common::redis::RedisHandle;

use crate::{Claims, VerifyError};

/// The Redis key that exists while session `sid` of user `uid` is live:
/// `{prefix}{u:<uid>}:sess:<sid>`, under the user's hash tag so it shares a
/// Redis Cluster slot with the user's other keys (docs/redis-keys.md).
pub fn session_key(prefix: &str, uid: &str, sid: &str) -> String {
    taskgate_common::keys::user_key(prefix, uid, &format!("sess:{sid}"))
}

/// What to do when Redis cannot answer the revocation check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationPolicy {
    /// Reject the request with UNAVAILABLE on any Redis failure (the auth
    /// service's choice: its own calls need Redis anyway).
    FailClosed,
    /// Accept the token on its signature alone, but only while Redis is
    /// unreachable (see [`redis_failure`]; an open circuit breaker counts,
    /// see [`RedisHandle::available`]); any other Redis error still
    /// rejects with UNAVAILABLE. For the task service, which must keep
    /// working through a Redis outage. (The gateway folds the check into its
    /// rate-limit script and classifies its errors the same way.)
    FailOpen,
}

/// What a failed Redis call means for a revocation check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFailure {
    /// Redis cannot be reached at all: connection refused, the connection
    /// dropped (commands cancelled), or no client of the pool is connected.
    /// The only failure a fail-open verifier may answer by accepting a token
    /// on its signature, because nobody can be making Redis fail this way
    /// on purpose from the request path. A Redis whose circuit breaker is
    /// open (it timed out [`taskgate_common::redis::breaker::OPEN_AFTER_TIMEOUTS`]
    /// times in a row, see [`RedisHandle`]) is treated the same way: callers
    /// check [`RedisHandle::available`] before calling and take this path.
    Unreachable,
    /// Redis is there but did not answer the check: a timeout (while the
    /// breaker is closed; the timeouts that open it end here too), OOM, BUSY,
    /// READONLY, CROSSSLOT, NOSCRIPT after a failed reload, a protocol or
    /// parse error... A client can provoke some of these (a slow Redis, a
    /// full one), so accepting a token here would let it revive a revoked
    /// session: every verifier fails closed with UNAVAILABLE.
    Failed,
}

/// The one classification of Redis errors used by every revocation check,
/// the gateway's included: I/O errors, cancelled commands and routing
/// failures (the connection is gone) count as [`RedisFailure::Unreachable`],
/// and so does any error after which `client`, the client that ran the
/// command, is no longer connected (a command caught by the server's death).
/// Everything else, a timeout on a live connection included, is
/// [`RedisFailure::Failed`].
pub fn redis_failure(client: &impl ClientLike, error: &fred::error::Error) -> RedisFailure {
    use fred::error::ErrorKind;
    match error.kind() {
        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Routing => RedisFailure::Unreachable,
        _ if !client.is_connected() => RedisFailure::Unreachable,
        _ => RedisFailure::Failed,
    }
}

/// Checks that a token's session is live in the Redis mirror.
#[derive(Clone)]
pub struct RevocationCheck {
    /// The shared Redis pool and its circuit breaker.
    redis: RedisHandle,
    /// Key prefix shared with the auth service (`REDIS_PREFIX`).
    prefix: String,
    /// What a Redis failure means.
    policy: RevocationPolicy,
}

impl RevocationCheck {
    /// A check against `redis` with keys under `prefix`. Pass the service's
    /// [`RedisHandle`] (a clone) so the check shares its circuit breaker; a
    /// bare [`Pool`] gets a breaker of its own.
    pub fn new(redis: impl Into<RedisHandle>, prefix: impl Into<String>, policy: RevocationPolicy) -> Self {
        RevocationCheck { redis: redis.into(), prefix: prefix.into(), policy }
    }

    /// Err([`VerifyError::Revoked`]) unless the token's session is live.
    ///
    /// While Redis is unavailable (not connected, or its circuit breaker
    /// open) nothing is sent: fail-open accepts the token and fail-closed
    /// refuses it with [`VerifyError::Unavailable`], at once.
    pub async fn check(&self, claims: &Claims) -> Result<(), VerifyError> {
        if let Some(answer) = self.while_unavailable() {
            return answer;
        }
        let client = self.redis.pool().next();
        let redis = client.with_options(&taskgate_common::redis::fail_fast());
        let answer = match self.redis.record(redis.exists::<i64, _>(self.key(claims)).await) {
            Ok(n) => Ok(n > 0),
            Err(e) => {
                tracing::debug!(error = %e, "revocation check: redis failed");
                Err(redis_failure(client, &e))
            }
        };
        self.judge(answer)
    }

    /// The key that exists while `claims`' session is live, for a script
    /// that checks it together with its own work, in the same round trip
    /// (its answer goes to [`RevocationCheck::judge`]). The key carries the
    /// user's hash tag, so it shares a Redis Cluster slot with their other keys.
    pub fn key(&self, claims: &Claims) -> String {
        session_key(&self.prefix, &claims.sub, &claims.sid)
    }

    /// The answer while Redis is unavailable (not connected, or its circuit
    /// breaker open), when nothing should be sent: fail-open accepts,
    /// fail-closed refuses. `None` while Redis is available.
    pub fn while_unavailable(&self) -> Option<Result<(), VerifyError>> {
        let reason = self.redis.unavailable_reason()?;
        Some(match self.policy {
            RevocationPolicy::FailOpen => {
                tracing::debug!(reason, "revocation check skipped: redis unreachable");
                Ok(())
            }
            RevocationPolicy::FailClosed => {
                tracing::warn!(reason, "revocation check impossible: refusing the token");
                Err(VerifyError::Unavailable)
            }
        })
    }

    /// What Redis said of the session's [`key`](RevocationCheck::key) means
    /// for the token: `Ok(live)` from an `EXISTS` (alone or inside a script),
    /// or how the command failed ([`redis_failure`]).
    pub fn judge(&self, answer: Result<bool, RedisFailure>) -> Result<(), VerifyError> {
        match answer {
            Ok(true) => Ok(()),
            Ok(false) => Err(VerifyError::Revoked),
            Err(RedisFailure::Unreachable) if self.policy == RevocationPolicy::FailOpen => {
                tracing::debug!("revocation check skipped: redis unreachable");
                Ok(())
            }
            Err(_) => {
                tracing::warn!("revocation check failed: refusing the token");
                Err(VerifyError::Unavailable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use fred::error::{Error, ErrorKind};

    use super::*;

    #[tokio::test]
    async fn only_a_lost_connection_counts_as_unreachable() {
        // A client that is not connected counts as unreachable whatever the error.
        let down = fred::types::Builder::default_centralized().build().expect("a client");
        assert_eq!(redis_failure(&down, &Error::new(ErrorKind::Timeout, "timed out")), RedisFailure::Unreachable);
        assert_eq!(redis_failure(&down, &Error::new(ErrorKind::IO, "refused")), RedisFailure::Unreachable);
        assert_eq!(redis_failure(&down, &Error::new(ErrorKind::Canceled, "closed")), RedisFailure::Unreachable);
    }

    #[tokio::test]
    async fn without_a_usable_redis_the_check_answers_by_its_policy_at_once() {
        // Never connected, and its breaker opened by timeouts: nothing may be sent.
        let pool = fred::types::Builder::default_centralized().build_pool(1).expect("a pool");
        let redis = RedisHandle::new(pool);
        for _ in 0..taskgate_common::redis::breaker::OPEN_AFTER_TIMEOUTS {
            let _ = redis.record(Err::<(), _>(Error::new(ErrorKind::Timeout, "Request timed out.")));
        }
        assert!(redis.breaker().is_open());
        let claims = Claims {
            iss: "taskgate".into(),
            aud: "taskgate".into(),
            sub: "u1".into(),
            exp: 0,
            iat: 0,
            nbf: 0,
            jti: "j1".into(),
            sid: "s1".into(),
        };
        let started = std::time::Instant::now();
        let open = RevocationCheck::new(redis.clone(), "p:", RevocationPolicy::FailOpen);
        assert_eq!(open.check(&claims).await, Ok(()));
        let closed = RevocationCheck::new(redis, "p:", RevocationPolicy::FailClosed);
        assert_eq!(closed.check(&claims).await, Err(VerifyError::Unavailable));
        assert!(started.elapsed() < taskgate_common::redis::COMMAND_TIMEOUT, "neither waited on redis");
    }
}
