//! The login and registration throttles: sliding windows in Redis that
//! *reserve* an attempt before any password is hashed, so a burst of
//! parallel guesses is counted exactly like a sequence of them.
//!
//! Keys (docs/redis-keys.md), each a sorted set of attempt times in ms with
//! a TTL of its window, each in its own hash slot and so each reserved by its
//! own atomic script call:
//! - `{u:<uid>}:throttle`: attempts against one account, whichever of its
//!   username, email or phone was typed (one budget per account);
//! - `{n:<sha256>}:throttle`: attempts against a login name that matches no
//!   account (same limit and cost, so the answer does not tell them apart);
//! - `{a:<addr>}:throttle`: attempts from one client address (IPv4, or the
//!   /64 of an IPv6 address), across accounts;
//! - `{a:<addr>}:register`: registrations from one client address.
//!
//! A login reserves a slot on its address, then on its account, before it
//! hashes: the script refuses when the window is full, else adds a pending
//! attempt. After hashing, a failure simply stays in the windows (it is
//! counted); a success clears the account's earlier failures and frees its
//! address slot; an attempt that could not be evaluated (hashing queue full,
//! a store down) frees both.
//!
//! Why an attacker cannot lock an owner out: the per-address budget is
//! smaller than the per-account one (defaults 5 and 10 per 15 minutes), so
//! one attacking address runs out of attempts long before the account does,
//! and the owner, from any other address, still logs in. Only an attacker
//! with more than `account / address` addresses can fill an account's
//! window, and then only for as long as they keep attacking: the window
//! slides, there is no permanent lockout.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use sha2::Digest as _;
use taskgate_common::keys;
use taskgate_common::redis::RedisHandle;
use uuid::Uuid;

use crate::{error::AuthError, sessions::Script};

/// Reserves one attempt in a sliding window. KEYS[1]: the window. ARGV:
/// window ms, limit, a unique member. Returns `{0, earlier}` when reserved
/// (`earlier`: attempts already in the window), or `{wait_ms, n}` when the
/// window is full (`wait_ms`: until its oldest counted attempt slides out).
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
  return {math.max(1, math.floor(tonumber(oldest[2]) + window - now)), n}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return {0, n}
"#;

/// Frees a reservation. KEYS[1]: the window. ARGV: the member, and `clear`
/// to also drop every attempt made before it (a success forgets earlier
/// failures) or `free` to drop only this one.
const RELEASE: &str = r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[2] == 'clear' and score then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', score)
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"#;

/// How the throttles are tuned.
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// Login attempts per account (or unknown name) within `window`.
    pub max_per_account: u32,
    /// Login attempts per client address within `window`.
    pub max_per_ip: u32,
    /// The login sliding window.
    pub window: Duration,
    /// Delay added per earlier attempt on the account, capped at [`MAX_DELAY`].
    pub delay_step: Duration,
    /// Registrations per client address within `register_window`.
    pub max_registrations_per_ip: u32,
    /// The registration sliding window.
    pub register_window: Duration,
}

/// The longest progressive delay.
pub const MAX_DELAY: Duration = Duration::from_secs(2);

/// Whose budget a login attempt spends.
#[derive(Debug, Clone)]
pub enum Subject {
    /// An existing account: every login name of it shares this budget.
    Account(Uuid),
    /// A login name that matches no account, normalised (lowercase).
    UnknownName(String),
}

/// A reserved login attempt, to settle after hashing.
#[must_use = "a reservation is settled with succeeded, failed or cancel"]
pub struct Reservation {
    /// The account's (or name's) window.
    account_key: String,
    /// The address's window.
    address_key: String,
    /// This attempt's member in both windows.
    member: String,
    /// Attempts already in the account's window when this one was reserved.
    pub earlier: u32,
}

/// The throttles. Cheap to clone.
#[derive(Clone)]
pub struct LoginThrottle {
    /// Shared Redis pool.
    redis: RedisHandle,
    /// `REDIS_PREFIX`.
    prefix: String,
    /// Limits.
    config: ThrottleConfig,
    /// RESERVE and RELEASE.
    scripts: std::sync::Arc<(Script, Script)>,
}

/// The address a throttle counts: IPv4 as is (IPv4-mapped IPv6 turned into
/// IPv4), IPv6 as its /64 (one host usually owns a whole /64), `unknown`
/// when there is none.
pub fn normalised_address(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        Err(_) => "unknown".to_owned(),
    }
}

fn retry(wait_ms: i64) -> Duration {
    let ms = u64::try_from(wait_ms).unwrap_or(1);
    // Round up to whole seconds: clients show and wait on seconds.
    Duration::from_secs(ms.div_ceil(1000).max(1))
}

impl LoginThrottle {
    /// Throttles with keys under `prefix`.
    pub fn new(redis: RedisHandle, prefix: String, config: ThrottleConfig) -> Self {
        LoginThrottle {
            redis,
            prefix,
            config,
            scripts: std::sync::Arc::new((Script::new(RESERVE), Script::new(RELEASE))),
        }
    }

    fn account_key(&self, subject: &Subject) -> String {
        match subject {
            Subject::Account(uid) => keys::user_key(&self.prefix, uid, "throttle"),
            Subject::UnknownName(name) => {
                let digest = sha2::Sha256::digest(name.as_bytes());
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                keys::name_key(&self.prefix, hex, "throttle")
            }
        }
    }

    /// Reserves one attempt in `key`'s window: Ok(earlier attempts) or
    /// Err(wait in ms) when it is full.
    async fn reserve(
        &self,
        key: &str,
        window: Duration,
        limit: u32,
        member: &str,
    ) -> Result<Result<u32, i64>, AuthError> {
        let reply: Vec<i64> = self
            .scripts
            .0
            .run(
                &self.redis,
                vec![key.to_owned()],
                vec![window.as_millis().to_string(), limit.to_string(), member.to_owned()],
            )
            .await?;
        match reply.as_slice() {
            [0, earlier] => Ok(Ok(u32::try_from(*earlier).unwrap_or(u32::MAX))),
            [wait, _] => Ok(Err(*wait)),
            _ => Err(AuthError::Unexpected(anyhow::anyhow!("malformed throttle reply"))),
        }
    }

    async fn release(&self, key: &str, member: &str, mode: &str) -> Result<(), AuthError> {
        let _: i64 =
            self.scripts.1.run(&self.redis, vec![key.to_owned()], vec![member.to_owned(), mode.to_owned()]).await?;
        Ok(())
    }

    /// Before checking a password: reserves an attempt on the address and on
    /// the account (or unknown name), or answers [`AuthError::Throttled`]
    /// when either window is full. Then waits the progressive delay for the
    /// attempts already in the account's window (pending ones included, so
    /// a burst is slowed like a sequence).
    pub async fn reserve_login(&self, subject: &Subject, ip: &str) -> Result<Reservation, AuthError> {
        let member = Uuid::new_v4().simple().to_string();
        let address_key = keys::addr_key(&self.prefix, normalised_address(ip), "throttle");
        let account_key = self.account_key(subject);
        if let Err(wait) = self.reserve(&address_key, self.config.window, self.config.max_per_ip, &member).await? {
            return Err(AuthError::Throttled { retry_after: retry(wait) });
        }
        let refused = match self.reserve(&account_key, self.config.window, self.config.max_per_account, &member).await {
            Ok(Ok(earlier)) => {
                if earlier > 0 && !self.config.delay_step.is_zero() {
                    tokio::time::sleep(self.config.delay_step.saturating_mul(earlier).min(MAX_DELAY)).await;
                }
                return Ok(Reservation { account_key, address_key, member, earlier });
            }
            Ok(Err(wait)) => AuthError::Throttled { retry_after: retry(wait) },
            Err(e) => e,
        };
        // Not evaluated: the address gets its slot back.
        if let Err(e) = self.release(&address_key, &member, "free").await {
            tracing::warn!(error = %e, "freeing a login reservation failed");
        }
        Err(refused)
    }

    /// The password was wrong: the attempt stays counted in both windows.
    pub fn failed(&self, reservation: Reservation) {
        drop(reservation);
    }

    /// The password was right: the account forgets its earlier failures and
    /// the address gets this attempt's slot back.
    pub async fn succeeded(&self, reservation: Reservation) -> Result<(), AuthError> {
        self.release(&reservation.account_key, &reservation.member, "clear").await?;
        self.release(&reservation.address_key, &reservation.member, "free").await
    }

    /// The attempt could not be evaluated (hashing refused, a store down):
    /// it is not counted anywhere. Best effort.
    pub async fn cancel(&self, reservation: Reservation) {
        for key in [&reservation.account_key, &reservation.address_key] {
            if let Err(e) = self.release(key, &reservation.member, "free").await {
                tracing::warn!(error = %e, "freeing a login reservation failed");
            }
        }
    }

    /// Before a registration hashes anything: counts it against the
    /// address, or answers [`AuthError::RegistrationsThrottled`].
    pub async fn reserve_registration(&self, ip: &str) -> Result<(), AuthError> {
        let key = keys::addr_key(&self.prefix, normalised_address(ip), "register");
        let member = Uuid::new_v4().simple().to_string();
        match self.reserve(&key, self.config.register_window, self.config.max_registrations_per_ip, &member).await? {
            Ok(_) => Ok(()),
            Err(wait) => Err(AuthError::RegistrationsThrottled { retry_after: retry(wait) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_counted_per_ipv4_host_and_per_ipv6_64() {
        assert_eq!(normalised_address("203.0.113.7"), "203.0.113.7");
        assert_eq!(normalised_address("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(normalised_address("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(normalised_address("2001:db8:1:2::9"), "2001:db8:1:2::/64");
        assert_eq!(normalised_address(""), "unknown");
    }

    #[test]
    fn waits_round_up_to_whole_seconds() {
        assert_eq!(retry(1), Duration::from_secs(1));
        assert_eq!(retry(1001), Duration::from_secs(2));
    }
}
