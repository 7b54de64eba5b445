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
//! - `{u:<uid>}:sessions`: sorted set of the user's session ids scored by
//!   creation time (ms), at most `MAX_SESSIONS_PER_USER` of them (a new
//!   session ends the oldest). TTL: the latest session end among them.
//!   Scripts that walk it do a bounded page per call, with every key in
//!   KEYS.
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

/// Creates a session. KEYS: session, user index. ARGV: uid, refresh jti,
/// access jti, iat, user agent, ip, abs_exp, key TTL, index TTL, sid, the
/// per-user cap. Returns the ids of the oldest sessions beyond the cap, which
/// the caller then ends with REVOKE_MANY (their keys must be in KEYS).
const CREATE: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'uid', ARGV[1], 'cur', ARGV[2], 'prev', '', 'rotated_at_ms', '0',
  'succ_ajti', ARGV[3], 'succ_iat', ARGV[4], 'created_ms', string.format('%.0f', now_ms), 'last_refresh_ms', '0',
  'ua', ARGV[5], 'ip', ARGV[6], 'abs_exp', ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('ZADD', KEYS[2], now_ms, ARGV[10])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[9]) then
  redis.call('EXPIRE', KEYS[2], ARGV[9])
end
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[11])
if over > 0 then
  return redis.call('ZRANGE', KEYS[2], 0, over - 1)
end
return {}
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
  redis.call('ZREM', KEYS[2], ARGV[7])
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
redis.call('ZREM', KEYS[2], ARGV[7])
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
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
if uid then return 1 else return 0 end
"#;

/// Ends a page of a user's sessions. KEYS: user index, then for each session
/// its session key and its revocation record. ARGV: revocation TTL, then the
/// session ids in the same order. Returns how many were live.
const REVOKE_MANY: &str = r#"
local n = 0
for i = 2, #ARGV do
  local k = 2 * (i - 1)
  n = n + redis.call('DEL', KEYS[k])
  redis.call('SET', KEYS[k + 1], '1', 'EX', ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[i])
end
return n
"#;

/// A page of a user's session ids. KEYS: user index. ARGV: how many, and
/// `new` for newest first or `old` for oldest first.
const PAGE: &str = r#"
if ARGV[2] == 'new' then
  return redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'REV')
end
return redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
"#;

/// Reads a page of sessions, dropping ids whose session expired. KEYS: user
/// index, then each session key. ARGV: the session ids in the same order.
/// Returns flat groups of six strings.
const LIST: &str = r#"
local out = {}
for i, sid in ipairs(ARGV) do
  local f = redis.call('HMGET', KEYS[i + 1], 'created_ms', 'last_refresh_ms', 'ua', 'ip', 'abs_exp')
  if f[1] then
    table.insert(out, sid)
    for j = 1, 5 do table.insert(out, f[j] or '') end
  else
    redis.call('ZREM', KEYS[1], sid)
  end
end
return out
"#;

/// Most sessions one script call ends or reads: each call's work is bounded,
/// whatever the user did.
pub const PAGE_SIZE: usize = 100;
/// Most pages LogoutAll / DisableUser walk in one call (sessions created
/// while it runs could otherwise keep it going).
const MAX_PAGES: usize = 50;

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
    /// Most live sessions per user (`MAX_SESSIONS_PER_USER`); a new one
    /// beyond it ends the oldest.
    max_sessions: u32,
    /// The Lua scripts, hashed once.
    scripts: std::sync::Arc<Scripts>,
}

struct Scripts {
    create: Script,
    refresh: Script,
    revoke: Script,
    revoke_many: Script,
    page: Script,
    list: Script,
}

fn secs(d: Duration) -> String {
    d.as_secs().max(1).to_string()
}

impl SessionStore {
    /// A store on `redis` under `prefix`.
    pub fn new(
        redis: Pool,
        prefix: String,
        revocation_ttl: Duration,
        grace: Duration,
        refresh_ttl: Duration,
        max_sessions: u32,
    ) -> Self {
        SessionStore {
            redis,
            prefix,
            revocation_ttl,
            grace,
            refresh_ttl,
            max_sessions: max_sessions.max(1),
            scripts: std::sync::Arc::new(Scripts {
                create: Script::new(CREATE),
                refresh: Script::new(REFRESH),
                revoke: Script::new(REVOKE),
                revoke_many: Script::new(REVOKE_MANY),
                page: Script::new(PAGE),
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
            &self.scripts.revoke_many,
            &self.scripts.page,
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

    /// Seconds the session key should live from `now`: until the refresh
    /// token or the session expires.
    fn key_ttl(&self, now: i64, session_exp: i64) -> String {
        let left = u64::try_from(session_exp - now).unwrap_or(1);
        secs(Duration::from_secs(left).min(self.refresh_ttl))
    }

    /// Stores a new session; when the user then has more than
    /// `MAX_SESSIONS_PER_USER`, ends the oldest ones.
    pub async fn create(&self, s: NewSession<'_>) -> Result<(), AuthError> {
        let spec = s.spec;
        let left = u64::try_from(spec.session_exp - spec.iat).unwrap_or(1);
        let evict: Vec<String> = self
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
                    self.max_sessions.to_string(),
                ],
            )
            .await?;
        if !evict.is_empty() {
            let n = self.revoke_many(&spec.sub, &evict).await?;
            tracing::info!(user_id = %spec.sub, sessions = n, "oldest sessions ended: MAX_SESSIONS_PER_USER reached");
        }
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

    /// Ends the sessions `sids` of `uid` in one script call (at most
    /// [`PAGE_SIZE`] of them); returns how many were live.
    async fn revoke_many(&self, uid: &str, sids: &[String]) -> Result<i64, AuthError> {
        let mut keys = vec![self.user_key(uid)];
        for sid in sids {
            keys.push(self.session_key(uid, sid));
            keys.push(session_revocation_key(&self.prefix, uid, sid));
        }
        let mut args = vec![secs(self.revocation_ttl)];
        args.extend(sids.iter().cloned());
        self.scripts.revoke_many.run(&self.redis, keys, args).await
    }

    /// Up to `n` session ids of `uid`, newest or oldest first.
    async fn page(&self, uid: &str, n: usize, newest_first: bool) -> Result<Vec<String>, AuthError> {
        let order = if newest_first { "new" } else { "old" };
        self.scripts.page.run(&self.redis, vec![self.user_key(uid)], vec![n.to_string(), order.to_owned()]).await
    }

    /// Ends every session of `uid`, a page of [`PAGE_SIZE`] per script call;
    /// returns how many were live.
    pub async fn revoke_all(&self, uid: &str) -> Result<i64, AuthError> {
        let mut ended = 0;
        for _ in 0..MAX_PAGES {
            let sids = self.page(uid, PAGE_SIZE, false).await?;
            if sids.is_empty() {
                break;
            }
            ended += self.revoke_many(uid, &sids).await?;
        }
        Ok(ended)
    }

    /// The live sessions of `uid`, newest first (at most
    /// `MAX_SESSIONS_PER_USER`, read in one bounded script call).
    pub async fn list(&self, uid: &str) -> Result<Vec<SessionInfo>, AuthError> {
        let n = usize::try_from(self.max_sessions).unwrap_or(PAGE_SIZE).min(PAGE_SIZE);
        let sids = self.page(uid, n, true).await?;
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = vec![self.user_key(uid)];
        keys.extend(sids.iter().map(|sid| self.session_key(uid, sid)));
        let flat: Vec<String> = self.scripts.list.run(&self.redis, keys, sids).await?;
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
    fn no_script_builds_a_key_name() {
        // Every key a script touches comes from KEYS (Redis Cluster).
        for lua in [CREATE, REFRESH, REVOKE, REVOKE_MANY, PAGE, LIST] {
            assert!(!lua.contains(".. 'sess:'") && !lua.contains(".. 'revoked:'"), "{lua}");
            assert!(!lua.contains("ARGV[1] .."), "{lua}");
        }
    }
}
