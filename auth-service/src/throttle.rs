//! The login throttle: sliding windows of failed logins in Redis, per
//! account and per client address, so brute force slows down and then stops
//! for a while, without ever locking an account for good.
//!
//! Keys (under `REDIS_PREFIX`): `throttle:acct:{login}` and
//! `throttle:ip:{addr}`, sorted sets of failure times in ms, each with a TTL
//! of the window.

use std::time::Duration;

use fred::prelude::Pool;

use crate::{error::AuthError, sessions::Script};

/// Drops failures older than the window and tells how long to wait. KEYS:
/// account set, address set. ARGV: window ms, account limit, address limit.
/// Returns `{wait_ms, account_failures}`.
const CHECK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local wait = 0
local counts = {}
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local n = redis.call('ZCARD', key)
  counts[i] = n
  local limit = tonumber(ARGV[i + 1])
  if n >= limit then
    local oldest = redis.call('ZRANGE', key, n - limit, n - limit, 'WITHSCORES')
    local w = tonumber(oldest[2]) + window - now
    if w > wait then wait = w end
  end
end
return {math.floor(wait), counts[1]}
"#;

/// Records a failure in both windows. KEYS: account set, address set.
/// ARGV: window ms, a unique member.
const FAIL: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[2])
  redis.call('PEXPIRE', key, ARGV[1])
end
return 1
"#;

/// How the throttle is tuned.
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// Failures per account within `window` before RESOURCE_EXHAUSTED.
    pub max_per_account: u32,
    /// Failures per client address within `window` before RESOURCE_EXHAUSTED.
    pub max_per_ip: u32,
    /// The sliding window.
    pub window: Duration,
    /// Delay added per earlier failure on the account, capped at [`MAX_DELAY`].
    pub delay_step: Duration,
}

/// The longest progressive delay.
pub const MAX_DELAY: Duration = Duration::from_secs(2);

/// The throttle. Cheap to clone.
#[derive(Clone)]
pub struct LoginThrottle {
    /// Shared Redis pool.
    redis: Pool,
    /// `REDIS_PREFIX`.
    prefix: String,
    /// Limits.
    config: ThrottleConfig,
    scripts: std::sync::Arc<(Script, Script)>,
}

impl LoginThrottle {
    /// A throttle with keys under `prefix`.
    pub fn new(redis: Pool, prefix: String, config: ThrottleConfig) -> Self {
        LoginThrottle { redis, prefix, config, scripts: std::sync::Arc::new((Script::new(CHECK), Script::new(FAIL))) }
    }

    fn keys(&self, account: &str, ip: &str) -> Vec<String> {
        vec![format!("{}throttle:acct:{account}", self.prefix), format!("{}throttle:ip:{ip}", self.prefix)]
    }

    /// Before checking a password: Err(Throttled) when a window is full,
    /// otherwise waits the progressive delay for earlier failures.
    pub async fn before_attempt(&self, account: &str, ip: &str) -> Result<(), AuthError> {
        let reply: Vec<i64> = self
            .scripts
            .0
            .run(
                &self.redis,
                self.keys(account, ip),
                vec![
                    self.config.window.as_millis().to_string(),
                    self.config.max_per_account.to_string(),
                    self.config.max_per_ip.to_string(),
                ],
            )
            .await?;
        let (wait_ms, failures) = match reply.as_slice() {
            [w, f] => (*w, *f),
            _ => return Err(AuthError::Unexpected(anyhow::anyhow!("malformed throttle reply"))),
        };
        if wait_ms > 0 {
            let ms = u64::try_from(wait_ms).unwrap_or(0);
            // Round up to whole seconds: clients show and wait on seconds.
            return Err(AuthError::Throttled { retry_after: Duration::from_secs(ms.div_ceil(1000).max(1)) });
        }
        let failures = u32::try_from(failures).unwrap_or(0);
        if failures > 0 && !self.config.delay_step.is_zero() {
            tokio::time::sleep(self.config.delay_step.saturating_mul(failures).min(MAX_DELAY)).await;
        }
        Ok(())
    }

    /// Counts a failed attempt against the account and the address.
    pub async fn failed(&self, account: &str, ip: &str) -> Result<(), AuthError> {
        let _: i64 = self
            .scripts
            .1
            .run(
                &self.redis,
                self.keys(account, ip),
                vec![self.config.window.as_millis().to_string(), uuid::Uuid::new_v4().simple().to_string()],
            )
            .await?;
        Ok(())
    }

    /// After a successful login: forgets the account's failures (the
    /// address keeps its count).
    pub async fn succeeded(&self, account: &str) -> Result<(), AuthError> {
        use fred::prelude::KeysInterface as _;
        let key = format!("{}throttle:acct:{account}", self.prefix);
        let _: i64 = self.redis.del(key).await?;
        Ok(())
    }
}
