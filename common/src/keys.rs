//! The one Redis key layout every taskgate service uses.
//!
//! Every key that a script or pipeline touches together shares one Redis Cluster
//! hash tag, so every script runs on a single slot on a single node:
//!
//! - per user: `{prefix}{u:<uid>}:<suffix>` (sessions, the session index,
//!   revocation or liveness records, the rate-limit log of a signed-in user,
//!   the login throttle of an account, the task-list cache and version, the
//!   task event stream);
//! - per client address (anonymous callers, per-address ceilings, per-address
//!   throttles): `{prefix}{a:<subject>}:<suffix>` where `<subject>` is the
//!   normalised address (an IPv4 address, or the /64 of an IPv6 address);
//! - per login name that matches no account: `{prefix}{n:<sha256 hex>}:<suffix>`;
//! - fleet-wide singletons: `{prefix}{g}:<suffix>` (one slot; only used by
//!   background jobs, never on a request path).
//!
//! Only the first `{...}` of a key is its hash tag, so `REDIS_PREFIX` must not
//! contain braces: [`validate_prefix`] refuses it at start-up. Scripts never
//! build key names themselves; every key they touch is passed in `KEYS`.
//! docs/redis-keys.md lists every key of every service.

use std::fmt;

/// The hash tag of one user's keys: `{u:<uid>}`.
pub fn user_tag(uid: impl fmt::Display) -> String {
    format!("{{u:{uid}}}")
}

/// `{prefix}{u:<uid>}:<suffix>`: a key of user `uid`.
pub fn user_key(prefix: &str, uid: impl fmt::Display, suffix: &str) -> String {
    format!("{prefix}{{u:{uid}}}:{suffix}")
}

/// `{prefix}{a:<subject>}:<suffix>`: a key of one client address (already
/// normalised by the caller: IPv4 address or IPv6 /64).
pub fn addr_key(prefix: &str, subject: impl fmt::Display, suffix: &str) -> String {
    format!("{prefix}{{a:{subject}}}:{suffix}")
}

/// `{prefix}{n:<digest>}:<suffix>`: a key of a login name that matches no
/// account (`digest` is a hex hash of the normalised name, never the name).
pub fn name_key(prefix: &str, digest: impl fmt::Display, suffix: &str) -> String {
    format!("{prefix}{{n:{digest}}}:{suffix}")
}

/// `{prefix}{g}:<suffix>`: a fleet-wide key (one slot), for background work.
pub fn global_key(prefix: &str, suffix: &str) -> String {
    format!("{prefix}{{g}}:{suffix}")
}

/// Refuses a `REDIS_PREFIX` that would break the hash tags.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.contains(['{', '}']) {
        return Err(format!(
            "REDIS_PREFIX must not contain '{{' or '}}' (got {prefix:?}): braces would change the Redis Cluster hash tag of every key"
        ));
    }
    Ok(())
}

/// [`validate_prefix`] as a clap value parser, so a bad `REDIS_PREFIX` stops
/// a service at start-up with one line naming the variable.
pub fn parse_prefix(prefix: &str) -> Result<String, String> {
    validate_prefix(prefix).map(|()| prefix.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_one_hash_tag_after_the_prefix() {
        assert_eq!(user_key("tg:", 42, "rl"), "tg:{u:42}:rl");
        assert_eq!(addr_key("tg:", "2001:db8::/64", "rl"), "tg:{a:2001:db8::/64}:rl");
        assert_eq!(name_key("tg:", "ab12", "throttle"), "tg:{n:ab12}:throttle");
        assert_eq!(global_key("tg:", "sweep"), "tg:{g}:sweep");
        assert_eq!(user_tag(7), "{u:7}");
    }

    #[test]
    fn a_prefix_with_braces_is_refused() {
        assert!(validate_prefix("taskgate:").is_ok());
        assert!(validate_prefix("a{b}:").expect_err("braces are refused").contains("REDIS_PREFIX"));
    }
}
