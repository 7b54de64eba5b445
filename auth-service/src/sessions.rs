//! Sessions (refresh-token families) in Redis, and the atomic scripts that
//! rotate, revoke and list them.
//!
//! Keys, all under `REDIS_PREFIX` and the user's hash tag `{u:<uid>}` (so a
//! user's keys share one Redis Cluster slot; docs/redis-keys.md), every one
//! with a TTL:
//! - `{u:<uid>}:sess:<sid>`: hash with `uid`, `cur` (jti of the one current refresh
//!   token), `prev` (its immediate predecessor), `rotated_at_ms`, the
//!   parameters of the current pair (`succ_ajti`, `succ_iat`) so the grace
//!   window can mint it again, `created_ms`, `last_refresh_ms`, `ua`, `ip`
//!   and `abs_exp` (absolute end, epoch seconds). TTL: until the current
//!   refresh token or the session expires, whichever is first.
//! - `{u:<uid>}:sessions`: set of the user's session ids. TTL: the latest
//!   session end among them.
//! - `{u:<uid>}:revoked:<sid>` ([`taskgate_tokens::session_revocation_key`]):
//!   written when a session ends, so verifiers reject its access tokens at
//!   once. TTL: the access-token lifetime plus the verifiers' leeway.
//!
//! No token is stored, only `jti`s.

use std::time::Duration;

use fred::{prelude::*, types::MultipleKeys};
use sha1::Digest as _;
use taskgate_common::keys;
use taskgate_tokens::session_revocation_key;

use crate::{error::AuthError, error::SESSIONS_UNAVAILABLE, issuer::PairSpec};

/// Creates a session. KEYS: session, user set. ARGV: uid, refresh jti,
/// access jti, iat, user agent, ip, abs_exp, key TTL, set TTL, sid.
const CREATE: &str = r#"
local t = redis.call('TIME')
local now_ms = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('HSET', KEYS[1], 'uid', ARGV[1], 'cur', ARGV[2], 'prev', '', 'rotated_at_ms', '0',
  'succ_ajti', ARGV[3], 'succ_iat', ARGV[4], 'created_ms', now_ms, 'last_refresh_ms', '0',
  'ua', ARGV[5], 'ip', ARGV[6], 'abs_exp', ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('SADD', KEYS[2], ARGV[10])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[9]) then
  redis.call('EXPIRE', KEYS[2], ARGV[9])
end
return 1
"#;

/// Check-and-rotate, the heart of refresh. KEYS: session, user set,
/// revocation record. ARGV: presented jti, new refresh jti, new access jti,
/// iat, grace ms, revocation TTL, sid, refresh-token lifetime in seconds, uid.
/// A session past its absolute end (`abs_exp`) is deleted and `missing`.
///
/// Returns `{'rotated', rjti, ajti, iat, abs_exp}`, `{'grace', ...same}` with
/// the stored successor, `{'missing'}` or `{'reuse'}` (session revoked).
const REFRESH: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local f = redis.call('HMGET', KEYS[1], 'uid', 'cur', 'prev', 'rotated_at_ms', 'succ_ajti', 'succ_iat', 'abs_exp')
if f[1] ~= ARGV[9] then return {'missing'} end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = tonumber(f[7]) - tonumber(t[1])
if left <= 0 then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[7])
  return {'missing'}
end
if ARGV[1] == f[2] then
  redis.call('HSET', KEYS[1], 'prev', f[2], 'cur', ARGV[2], 'rotated_at_ms', string.format('%.0f', now_ms),
    'succ_ajti', ARGV[3], 'succ_iat', ARGV[4], 'last_refresh_ms', string.format('%.0f', now_ms))
  redis.call('EXPIRE', KEYS[1], math.max(1, math.min(left, tonumber(ARGV[8]))))
  return {'rotated', ARGV[2], ARGV[3], ARGV[4], f[7]}
end
if f[3] and f[3] ~= '' and ARGV[1] == f[3] and now_ms - tonumber(f[4]) <= tonumber(ARGV[5]) then
  return {'grace', f[2], f[5], f[6], f[7]}
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[7])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[6])
return {'reuse'}
"#;

/// Ends one session. KEYS: session, user set, revocation record. ARGV: sid,
/// revocation TTL, owner uid ('' to skip the ownership check). Returns 1 if a
/// live session was ended, 0 if there was none (or it is not the owner's).
const REVOKE: &str = r#"
local uid = redis.call('HGET', KEYS[1], 'uid')
if ARGV[3] ~= '' and uid ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
if uid then return 1 else return 0 end
"#;

/// Ends every session of a user. KEYS: user set. ARGV: the user's key prefix
/// (`{prefix}{u:<uid>}:`, so every key built here shares the set's hash tag),
/// revocation TTL. Returns how many live sessions ended.
const REVOKE_ALL: &str = r#"
local sids = redis.call('SMEMBERS', KEYS[1])
local n = 0
for _, sid in ipairs(sids) do
  n = n + redis.call('DEL', ARGV[1] .. 'sess:' .. sid)
  redis.call('SET', ARGV[1] .. 'revoked:' .. sid, '1', 'EX', ARGV[2])
end
redis.call('DEL', KEYS[1])
return n
"#;

/// Lists a user's live sessions, dropping ids whose session expired. KEYS:
/// user set. ARGV: the user's key prefix (`{prefix}{u:<uid>}:`). Returns
/// flat groups of six strings.
const LIST: &str = r#"
local sids = redis.call('SMEMBERS', KEYS[1])
local out = {}
for _, sid in ipairs(sids) do
  local f = redis.call('HMGET', ARGV[1] .. 'sess:' .. sid, 'created_ms', 'last_refresh_ms', 'ua', 'ip', 'abs_exp')
  if f[1] then
    table.insert(out, sid)
    for i = 1, 5 do table.insert(out, f[i] or '') end
  else
    redis.call('SREM', KEYS[1], sid)
  end
end
return out
"#;

/// A Lua script run with EVALSHA, falling back to EVAL when the server does
/// not have it cached (first use, or after a Redis restart).
pub(crate) struct Script {
    /// The source.
    lua: &'static str,
    /// Its SHA1, as EVALSHA wants.
    sha: String,
}

impl Script {
    pub(crate) fn new(lua: &'static str) -> Self {
        let sha = format!("{:x}", sha1::Sha1::digest(lua.as_bytes()));
        Script { lua, sha }
    }

    /// Runs the script; UNAVAILABLE at once when no Redis connection is up.
    pub(crate) async fn run<R: FromValue>(
        &self,
        redis: &Pool,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, AuthError> {
        if !taskgate_common::redis::is_up(redis) {
            return Err(AuthError::Unavailable(SESSIONS_UNAVAILABLE));
        }
        let k: MultipleKeys = keys.iter().map(String::as_str).collect();
        match redis.evalsha::<R, _, _, _>(self.sha.as_str(), k, args.clone()).await {
            Err(e) if e.details().contains("NOSCRIPT") => {
                let k: MultipleKeys = keys.iter().map(String::as_str).collect();
                Ok(redis.eval::<R, _, _, _>(self.lua, k, args).await?)
            }
            other => Ok(other?),
        }
    }

    /// Caches the script on the server (best effort; `run` copes without).
    pub(crate) async fn load(&self, redis: &Pool) {
        if let Err(e) = redis.script_load::<String, _>(self.lua).await {
            tracing::debug!(error = %e, "could not preload a redis script");
        }
    }
}

/// What to store when a session starts.
pub struct NewSession<'a> {
    /// The first pair's parameters (ids, user, issue time, session end).
    pub spec: &'a PairSpec,
    /// The `user-agent` of the login, possibly empty.
    pub user_agent: &'a str,
    /// The client address of the login, possibly empty.
    pub ip: &'a str,
}

/// What a refresh found.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was current: here is the new pair's spec.
    Rotated(PairSpec),
    /// The token was the immediate predecessor, within the grace window:
    /// the same successor as before.
    Grace(PairSpec),
    /// No such session (ended, expired or never existed).
    Missing,
    /// An older token: theft assumed, the session is now revoked.
    Reuse,
}

/// One live session, for ListSessions.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Session id.
    pub id: String,
    /// When it started, ms since the epoch.
    pub created_ms: i64,
    /// Last rotation, ms since the epoch; 0 if never.
    pub last_refresh_ms: i64,
    /// User agent at login.
    pub user_agent: String,
    /// Client address at login.
    pub ip: String,
    /// Absolute end, seconds since the epoch.
    pub abs_exp: i64,
}

/// The Redis side of sessions. Cheap to clone.
#[derive(Clone)]
pub struct SessionStore {
    /// Shared Redis pool.
    redis: Pool,
    /// `REDIS_PREFIX`.
    prefix: String,
    /// TTL of a revocation record: the longest an access token of the
    /// session can still verify (lifetime plus leeway).
    revocation_ttl: Duration,
    /// How long the predecessor of the current refresh token still gets the
    /// same successor pair.
    grace: Duration,
    /// Refresh-token lifetime, bounding how long an idle session lives.
    refresh_ttl: Duration,
    scripts: std::sync::Arc<Scripts>,
}

struct Scripts {
    create: Script,
    refresh: Script,
    revoke: Script,
    revoke_all: Script,
    list: Script,
}

fn secs(d: Duration) -> String {
    d.as_secs().max(1).to_string()
}

impl SessionStore {
    /// A store on `redis` under `prefix`.
    pub fn new(redis: Pool, prefix: String, revocation_ttl: Duration, grace: Duration, refresh_ttl: Duration) -> Self {
        SessionStore {
            redis,
            prefix,
            revocation_ttl,
            grace,
            refresh_ttl,
            scripts: std::sync::Arc::new(Scripts {
                create: Script::new(CREATE),
                refresh: Script::new(REFRESH),
                revoke: Script::new(REVOKE),
                revoke_all: Script::new(REVOKE_ALL),
                list: Script::new(LIST),
            }),
        }
    }

    /// Preloads the scripts (best effort).
    pub async fn load_scripts(&self) {
        for s in [
            &self.scripts.create,
            &self.scripts.refresh,
            &self.scripts.revoke,
            &self.scripts.revoke_all,
            &self.scripts.list,
        ] {
            s.load(&self.redis).await;
        }
    }

    fn session_key(&self, uid: &str, sid: &str) -> String {
        keys::user_key(&self.prefix, uid, &format!("sess:{sid}"))
    }

    fn user_key(&self, uid: &str) -> String {
        keys::user_key(&self.prefix, uid, "sessions")
    }

    /// `{prefix}{u:<uid>}:`, which the scripts that walk a user's sessions
    /// extend with `sess:<sid>` and `revoked:<sid>`.
    fn user_key_prefix(&self, uid: &str) -> String {
        keys::user_key(&self.prefix, uid, "")
    }

    /// Seconds the session key should live from `now`: until the refresh
    /// token or the session expires.
    fn key_ttl(&self, now: i64, session_exp: i64) -> String {
        let left = u64::try_from(session_exp - now).unwrap_or(1);
        secs(Duration::from_secs(left).min(self.refresh_ttl))
    }

    /// Stores a new session.
    pub async fn create(&self, s: NewSession<'_>) -> Result<(), AuthError> {
        let spec = s.spec;
        let left = u64::try_from(spec.session_exp - spec.iat).unwrap_or(1);
        let _: i64 = self
            .scripts
            .create
            .run(
                &self.redis,
                vec![self.session_key(&spec.sub, &spec.sid), self.user_key(&spec.sub)],
                vec![
                    spec.sub.clone(),
                    spec.refresh_jti.clone(),
                    spec.access_jti.clone(),
                    spec.iat.to_string(),
                    s.user_agent.to_owned(),
                    s.ip.to_owned(),
                    spec.session_exp.to_string(),
                    self.key_ttl(spec.iat, spec.session_exp),
                    left.max(1).to_string(),
                    spec.sid.clone(),
                ],
            )
            .await?;
        Ok(())
    }

    /// Atomically checks the presented refresh token (`presented_jti` of
    /// session `next.sid`, user `next.sub`) and rotates to `next` (whose
    /// `session_exp` is ignored: the stored one counts).
    pub async fn refresh(&self, presented_jti: &str, next: &PairSpec) -> Result<RefreshOutcome, AuthError> {
        let reply: Vec<String> = self
            .scripts
            .refresh
            .run(
                &self.redis,
                vec![
                    self.session_key(&next.sub, &next.sid),
                    self.user_key(&next.sub),
                    session_revocation_key(&self.prefix, &next.sub, &next.sid),
                ],
                vec![
                    presented_jti.to_owned(),
                    next.refresh_jti.clone(),
                    next.access_jti.clone(),
                    next.iat.to_string(),
                    self.grace.as_millis().to_string(),
                    secs(self.revocation_ttl),
                    next.sid.clone(),
                    secs(self.refresh_ttl),
                    next.sub.clone(),
                ],
            )
            .await?;
        let spec = |r: &[String]| -> Result<PairSpec, AuthError> {
            let bad = || AuthError::Unexpected(anyhow::anyhow!("malformed refresh script reply"));
            match r {
                [_, rjti, ajti, iat, abs_exp] => Ok(PairSpec {
                    sub: next.sub.clone(),
                    sid: next.sid.clone(),
                    access_jti: ajti.clone(),
                    refresh_jti: rjti.clone(),
                    iat: iat.parse().map_err(|_| bad())?,
                    session_exp: abs_exp.parse().map_err(|_| bad())?,
                }),
                _ => Err(bad()),
            }
        };
        match reply.first().map(String::as_str) {
            Some("rotated") => Ok(RefreshOutcome::Rotated(spec(&reply)?)),
            Some("grace") => Ok(RefreshOutcome::Grace(spec(&reply)?)),
            Some("reuse") => Ok(RefreshOutcome::Reuse),
            Some("missing") => Ok(RefreshOutcome::Missing),
            _ => Err(AuthError::Unexpected(anyhow::anyhow!("unknown refresh script reply"))),
        }
    }

    /// Ends session `sid` of user `uid` and writes its revocation record.
    /// With `owner_only`, does nothing unless the session is live and
    /// `uid`'s. Returns whether a live session ended.
    pub async fn revoke(&self, uid: &str, sid: &str, owner_only: bool) -> Result<bool, AuthError> {
        let n: i64 = self
            .scripts
            .revoke
            .run(
                &self.redis,
                vec![self.session_key(uid, sid), self.user_key(uid), session_revocation_key(&self.prefix, uid, sid)],
                vec![
                    sid.to_owned(),
                    secs(self.revocation_ttl),
                    if owner_only { uid.to_owned() } else { String::new() },
                ],
            )
            .await?;
        Ok(n > 0)
    }

    /// Ends every session of `uid`; returns how many were live.
    pub async fn revoke_all(&self, uid: &str) -> Result<i64, AuthError> {
        self.scripts
            .revoke_all
            .run(&self.redis, vec![self.user_key(uid)], vec![self.user_key_prefix(uid), secs(self.revocation_ttl)])
            .await
    }

    /// The live sessions of `uid`, newest first.
    pub async fn list(&self, uid: &str) -> Result<Vec<SessionInfo>, AuthError> {
        let flat: Vec<String> =
            self.scripts.list.run(&self.redis, vec![self.user_key(uid)], vec![self.user_key_prefix(uid)]).await?;
        let mut sessions: Vec<SessionInfo> = flat
            .chunks_exact(6)
            .map(|c| SessionInfo {
                id: c[0].clone(),
                created_ms: c[1].parse().unwrap_or(0),
                last_refresh_ms: c[2].parse().unwrap_or(0),
                user_agent: c[3].clone(),
                ip: c[4].clone(),
                abs_exp: c[5].parse().unwrap_or(0),
            })
            .collect();
        sessions.sort_by_key(|s| std::cmp::Reverse(s.created_ms));
        Ok(sessions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_build_revocation_keys_like_the_tokens_crate() {
        // REVOKE_ALL builds `{prefix}{u:<uid>}:revoked:<sid>` from the user's key prefix.
        assert_eq!(session_revocation_key("p:", "u1", "s1"), "p:{u:u1}:revoked:s1");
        assert_eq!(keys::user_key("p:", "u1", ""), "p:{u:u1}:");
        assert!(REVOKE_ALL.contains("ARGV[1] .. 'revoked:' .. sid"));
    }
}
