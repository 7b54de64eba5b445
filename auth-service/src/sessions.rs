//! Sessions (refresh-token families): the durable record in Postgres, and
//! the mirror of the live ones in Redis that every verifier reads.
//!
//! Postgres (`sessions`, migrations/auth/0002_sessions.sql) holds every
//! session: user, start, absolute end, current and previous refresh `jti`,
//! when and why it ended. Rotation is decided there, in one conditional
//! `UPDATE`, and committed before a new pair is handed out, so no
//! acknowledged rotation or revocation can be lost with Redis.
//!
//! The mirror in Redis is an allow-list: a verifier accepts an access token
//! only while its session's key exists. Losing Redis's data therefore makes
//! every verifier refuse (never accept) tokens until the mirror is rebuilt
//! from Postgres, which [`SessionStore::keep_mirror_whole`] does within
//! seconds, with nothing restarted (auth-service/README.md, "Sessions").
//!
//! Keys, all under `REDIS_PREFIX` and the user's hash tag `{u:<uid>}` (so a
//! user's keys share one Redis Cluster slot; docs/redis-keys.md), every one
//! with a TTL:
//! - `{u:<uid>}:sess:<sid>` ([`taskgate_tokens::session_key`]): hash with
//!   `uid`, `created_ms`, `last_refresh_ms`, `ua`, `ip` and `abs_exp`
//!   (absolute end, epoch seconds). Exists exactly while the session is
//!   live; TTL: until the current refresh token or the session expires,
//!   whichever is first.
//! - `{u:<uid>}:sessions`: sorted set of the user's session ids scored by
//!   creation time (ms), trimmed to the newest `MAX_SESSIONS_PER_USER`.
//!   TTL: the latest session end among them. Scripts that walk it do a
//!   bounded page per call, with every key in KEYS.
//! - `{u:<uid>}:ended:<sid>`: written when a session ends, so a rebuild
//!   that read the session as live just before cannot write it back. TTL:
//!   the access-token lifetime plus the verifiers' leeway.
//! - `{g}:sessions:mirror` and `{g}:sessions:mirror-lock`: the marker a
//!   completed rebuild leaves, and the lock that lets one replica rebuild at
//!   a time (plain commands, never in a script with user keys).
//!
//! No token is stored, only `jti`s.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use fred::{
    prelude::*,
    types::{Expiration, SetOptions},
};
use futures::{StreamExt as _, TryStreamExt as _};
use sqlx::PgPool;
use taskgate_common::{keys, redis::RedisHandle};
use taskgate_tokens::session_key;
use uuid::Uuid;

use crate::{error::AuthError, error::SESSIONS_UNAVAILABLE, issuer::PairSpec, metrics::AuthMetrics};

/// Writes (or refreshes) the mirror of one live session, unless the session
/// was ended meanwhile. KEYS: session, user index, end record. ARGV: uid,
/// created_ms, last_refresh_ms, user agent, ip, abs_exp, key TTL, sid, the
/// per-user cap. Returns 1 if written, 0 if the session has an end record.
const MIRROR: &str = r#"
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'uid', ARGV[1], 'created_ms', ARGV[2], 'last_refresh_ms', ARGV[3],
  'ua', ARGV[4], 'ip', ARGV[5], 'abs_exp', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[8])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[7]) then
  redis.call('EXPIRE', KEYS[2], ARGV[7])
end
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[9]) + 1))
return 1
"#;

/// Ends one session's mirror. KEYS: session, user index, end record. ARGV:
/// sid, end-record TTL.
const REVOKE: &str = r#"
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
return 1
"#;

/// Ends a page of a user's sessions. KEYS: user index, then for each session
/// its session key and its end record. ARGV: end-record TTL, then the
/// session ids in the same order. Returns how many were mirrored.
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

/// A Lua script (the shared [`taskgate_common::redis::Script`]: EVALSHA,
/// EVAL when the node does not have it) behind this service's Redis policy.
pub(crate) struct Script(taskgate_common::redis::Script);

impl Script {
    pub(crate) fn new(lua: &'static str) -> Self {
        Script(taskgate_common::redis::Script::new(lua))
    }

    /// Runs the script; UNAVAILABLE at once when Redis is not connected or
    /// its circuit breaker is open (a frozen Redis costs no timeout).
    #[tracing::instrument(name = "redis script", skip_all, fields(otel.kind = "client", db.system = "redis", db.operation = "EVALSHA", db.redis.script = %self.0.sha1()))]
    pub(crate) async fn run<R: FromValue>(
        &self,
        redis: &RedisHandle,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, AuthError> {
        if !redis.available() {
            return Err(AuthError::Unavailable(SESSIONS_UNAVAILABLE));
        }
        Ok(redis.record(self.0.run(redis.pool(), keys, args).await)?)
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
    /// No such session (ended, expired, its user disabled, or never existed).
    Missing,
    /// An older token: theft assumed, the session is now revoked.
    Reuse,
}

/// Why a session ended; stored with it in `sessions.revoked_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Logout of this session.
    Logout,
    /// LogoutAll from one of the user's sessions.
    LogoutAll,
    /// The user ended it from their session list (RevokeSession).
    RevokedByUser,
    /// An admin disabled the user.
    UserDisabled,
    /// The user changed their password.
    PasswordChanged,
    /// A newer login went past `MAX_SESSIONS_PER_USER`.
    SessionLimit,
    /// An old refresh token was presented again: theft assumed.
    RefreshReuse,
}

impl EndReason {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Logout => "logout",
            EndReason::LogoutAll => "logout_all",
            EndReason::RevokedByUser => "revoked_by_user",
            EndReason::UserDisabled => "user_disabled",
            EndReason::PasswordChanged => "password_changed",
            EndReason::SessionLimit => "session_limit",
            EndReason::RefreshReuse => "refresh_reuse",
        }
    }
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

/// What the mirror of a live session holds, as read from `sessions`.
#[derive(Debug, sqlx::FromRow)]
struct MirrorRow {
    id: Uuid,
    user_id: Uuid,
    created_at: DateTime<Utc>,
    rotated_at: Option<DateTime<Utc>>,
    expires_at: DateTime<Utc>,
    refresh_expires_at: DateTime<Utc>,
    user_agent: String,
    ip: String,
}

/// The columns of [`MirrorRow`] (of `sessions s`), for `RETURNING` and
/// `SELECT`; a macro so each query stays one static string.
macro_rules! mirror_columns {
    () => {
        "s.id, s.user_id, s.created_at, s.rotated_at, s.expires_at, s.refresh_expires_at, s.user_agent, s.ip"
    };
}

/// What a refresh that rotated nothing finds in `sessions`.
#[derive(Debug, sqlx::FromRow)]
struct RefreshState {
    current_jti: String,
    previous_jti: Option<String>,
    access_jti: String,
    issued_at: i64,
    /// Revoked, past its absolute end, or its user disabled.
    over: bool,
    /// Its user is disabled (and the session not yet revoked).
    user_disabled: bool,
    /// The last rotation is at most the grace window old.
    in_grace: bool,
    #[sqlx(flatten)]
    mirror: MirrorRow,
}

/// How often each replica checks that the Redis mirror is whole.
pub const MIRROR_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a rebuild's marker lives: when it expires the mirror is rebuilt
/// anyway, a daily reconciliation with Postgres that repairs whatever a
/// partial loss the marker did not see (one shard of a Redis Cluster) left.
const MIRROR_MARKER_TTL: Duration = Duration::from_secs(24 * 3600);
/// Rows read from Postgres per query when the mirror is rebuilt.
const REBUILD_PAGE: i64 = 500;
/// Mirror writes in flight at once during a rebuild.
const REBUILD_CONCURRENCY: usize = 32;
/// How long one replica may hold the rebuild lock before another takes over.
const REBUILD_LOCK_TTL: Duration = Duration::from_secs(60);
/// Rows purged per statement, so a purge never holds locks for long.
const PURGE_BATCH: i64 = 1000;
/// How many mirror checks pass between two purges (about an hour).
const PURGE_EVERY_CHECKS: u32 = 3600;

/// Sessions: the durable record in Postgres and the mirror in Redis the
/// verifiers read. Cheap to clone.
#[derive(Clone)]
pub struct SessionStore {
    /// Shared Redis pool and its circuit breaker.
    redis: RedisHandle,
    /// The auth database (`sessions`, joined with `users`).
    db: PgPool,
    /// `REDIS_PREFIX`.
    prefix: String,
    /// TTL of an end record: the longest an access token of the session can
    /// still verify (lifetime plus leeway).
    revocation_ttl: Duration,
    /// How long the predecessor of the current refresh token still gets the
    /// same successor pair.
    grace: Duration,
    /// Refresh-token lifetime, bounding how long an idle session lives.
    refresh_ttl: Duration,
    /// Most live sessions per user (`MAX_SESSIONS_PER_USER`); a new one
    /// beyond it ends the oldest.
    max_sessions: u32,
    /// Set when a mirror write failed after Postgres changed: the next
    /// mirror check rebuilds the mirror from Postgres.
    dirty: Arc<AtomicBool>,
    /// The Lua scripts, hashed once.
    scripts: Arc<Scripts>,
    /// Where ended sessions are counted, by reason.
    metrics: AuthMetrics,
}

struct Scripts {
    mirror: Script,
    revoke: Script,
    revoke_many: Script,
    page: Script,
    list: Script,
}

fn secs(d: Duration) -> String {
    d.as_secs().max(1).to_string()
}

fn parse_id(id: &str) -> Result<Uuid, AuthError> {
    Uuid::parse_str(id).map_err(|_| AuthError::from(taskgate_tokens::VerifyError::InvalidClaims))
}

impl SessionStore {
    /// A store on `db` and `redis` (keys under `prefix`).
    pub fn new(
        db: PgPool,
        redis: RedisHandle,
        prefix: String,
        revocation_ttl: Duration,
        grace: Duration,
        refresh_ttl: Duration,
        max_sessions: u32,
    ) -> Self {
        SessionStore {
            redis,
            db,
            prefix,
            revocation_ttl,
            grace,
            refresh_ttl,
            max_sessions: max_sessions.max(1),
            dirty: Arc::new(AtomicBool::new(false)),
            scripts: Arc::new(Scripts {
                mirror: Script::new(MIRROR),
                revoke: Script::new(REVOKE),
                revoke_many: Script::new(REVOKE_MANY),
                page: Script::new(PAGE),
                list: Script::new(LIST),
            }),
            metrics: AuthMetrics::default(),
        }
    }

    /// This store, counting ended sessions in `metrics`.
    pub fn with_metrics(mut self, metrics: AuthMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    fn session_key(&self, uid: &str, sid: &str) -> String {
        session_key(&self.prefix, uid, sid)
    }

    fn user_key(&self, uid: &str) -> String {
        keys::user_key(&self.prefix, uid, "sessions")
    }

    /// The record that a session ended, which keeps a rebuild racing with
    /// the end from writing the session back.
    fn end_key(&self, uid: &str, sid: &str) -> String {
        keys::user_key(&self.prefix, uid, &format!("ended:{sid}"))
    }

    /// Whether the mirror was rebuilt since Redis last lost it: `complete`
    /// once a rebuild finished, `rebuilding` while one runs, absent after a
    /// loss.
    fn marker_key(&self) -> String {
        keys::global_key(&self.prefix, "sessions:mirror")
    }

    fn lock_key(&self) -> String {
        keys::global_key(&self.prefix, "sessions:mirror-lock")
    }

    /// Refuses at once when Redis is away: a session change the verifiers
    /// cannot see must not be acknowledged.
    fn require_redis(&self) -> Result<(), AuthError> {
        if self.redis.available() { Ok(()) } else { Err(AuthError::Unavailable(SESSIONS_UNAVAILABLE)) }
    }

    /// Runs a mirror write; a failure marks the mirror for a rebuild.
    async fn mirror_write<R: FromValue>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, AuthError> {
        let result = script.run(&self.redis, keys, args).await;
        if result.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Writes the mirror of the live session `row`.
    async fn mirror(&self, row: &MirrorRow) -> Result<bool, AuthError> {
        let (uid, sid) = (row.user_id.to_string(), row.id.to_string());
        let now = Utc::now();
        let until = row.refresh_expires_at.min(row.expires_at);
        let ttl = u64::try_from((until - now).num_seconds()).unwrap_or(0).max(1);
        let written: i64 = self
            .mirror_write(
                &self.scripts.mirror,
                vec![self.session_key(&uid, &sid), self.user_key(&uid), self.end_key(&uid, &sid)],
                vec![
                    uid,
                    row.created_at.timestamp_millis().to_string(),
                    row.rotated_at.map_or(0, |t| t.timestamp_millis()).to_string(),
                    row.user_agent.clone(),
                    row.ip.clone(),
                    row.expires_at.timestamp().to_string(),
                    ttl.to_string(),
                    sid,
                    self.max_sessions.to_string(),
                ],
            )
            .await?;
        Ok(written == 1)
    }

    /// Stores a new session; when the user then has more than
    /// `MAX_SESSIONS_PER_USER`, ends the oldest ones.
    #[tracing::instrument(name = "sessions insert", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "INSERT", db.collection.name = "sessions"))]
    pub async fn create(&self, s: NewSession<'_>) -> Result<(), AuthError> {
        self.require_redis()?;
        let spec = s.spec;
        let (uid, sid) = (parse_id(&spec.sub)?, parse_id(&spec.sid)?);
        let created_at = Utc::now();
        let expires_at = DateTime::from_timestamp(spec.session_exp, 0).unwrap_or(created_at);
        let refresh_ttl = chrono::Duration::from_std(self.refresh_ttl).unwrap_or(chrono::Duration::MAX);
        let refresh_expires_at = created_at.checked_add_signed(refresh_ttl).unwrap_or(expires_at).min(expires_at);
        let evicted: Vec<Uuid> = sqlx::query_scalar(
            "WITH inserted AS (
                INSERT INTO sessions (id, user_id, created_at, expires_at, refresh_expires_at, current_jti,
                                      access_jti, issued_at, user_agent, ip)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
            )
            UPDATE sessions SET revoked_at = now(), revoked_reason = $12
            WHERE id IN (SELECT id FROM sessions
                         WHERE user_id = $2 AND revoked_at IS NULL AND refresh_expires_at > now() AND id <> $1
                         ORDER BY created_at DESC, id DESC OFFSET $11)
            RETURNING id",
        )
        .bind(sid)
        .bind(uid)
        .bind(created_at)
        .bind(expires_at)
        .bind(refresh_expires_at)
        .bind(&spec.refresh_jti)
        .bind(&spec.access_jti)
        .bind(spec.iat)
        .bind(s.user_agent)
        .bind(s.ip)
        .bind(i64::from(self.max_sessions) - 1)
        .bind(EndReason::SessionLimit.as_str())
        .fetch_all(&self.db)
        .await?;
        self.mirror(&MirrorRow {
            id: sid,
            user_id: uid,
            created_at,
            rotated_at: None,
            expires_at,
            refresh_expires_at,
            user_agent: s.user_agent.to_owned(),
            ip: s.ip.to_owned(),
        })
        .await?;
        self.metrics.sessions_revoked(EndReason::SessionLimit, evicted.len() as u64);
        if !evicted.is_empty() {
            let evicted: Vec<String> = evicted.iter().map(Uuid::to_string).collect();
            for page in evicted.chunks(PAGE_SIZE) {
                self.revoke_many(&spec.sub, page).await?;
            }
            tracing::info!(user_id = %spec.sub, sessions = evicted.len(), "oldest sessions ended: MAX_SESSIONS_PER_USER reached");
        }
        Ok(())
    }

    /// Checks the presented refresh token (`presented_jti` of session
    /// `next.sid`, user `next.sub`) and rotates to `next` (whose
    /// `session_exp` is ignored: the stored one counts).
    ///
    /// Postgres decides, in one conditional `UPDATE`: of N concurrent
    /// refreshes with the current token exactly one rotates, and the rotation
    /// is committed before anyone sees the new pair. Only when it rotates
    /// nothing does a second query tell a retry within the grace window
    /// (the same successor again) from reuse (the session ends). The mirror
    /// follows, written back if Redis had lost it.
    #[tracing::instrument(name = "sessions refresh", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "UPDATE", db.collection.name = "sessions"))]
    pub async fn refresh(&self, presented_jti: &str, next: &PairSpec) -> Result<RefreshOutcome, AuthError> {
        self.require_redis()?;
        let (uid, sid) = (parse_id(&next.sub)?, parse_id(&next.sid)?);
        let refresh_secs = i64::try_from(self.refresh_ttl.as_secs()).unwrap_or(i64::MAX);
        let rotated: Option<MirrorRow> = sqlx::query_as(concat!(
            "UPDATE sessions s SET previous_jti = s.current_jti, current_jti = $3, access_jti = $4, issued_at = $5,
                 rotated_at = now(), refresh_expires_at = LEAST(s.expires_at, now() + $6 * interval '1 second')
             FROM users u
             WHERE s.id = $1 AND s.user_id = $2 AND u.id = s.user_id AND u.disabled_at IS NULL
               AND s.current_jti = $7 AND s.revoked_at IS NULL AND s.expires_at > now()
               AND s.refresh_expires_at > now()
             RETURNING ",
            mirror_columns!()
        ))
        .bind(sid)
        .bind(uid)
        .bind(&next.refresh_jti)
        .bind(&next.access_jti)
        .bind(next.iat)
        .bind(refresh_secs)
        .bind(presented_jti)
        .fetch_optional(&self.db)
        .await?;
        if let Some(row) = rotated {
            self.mirror(&row).await?;
            return Ok(RefreshOutcome::Rotated(PairSpec { session_exp: row.expires_at.timestamp(), ..next.clone() }));
        }
        let grace_ms = i64::try_from(self.grace.as_millis()).unwrap_or(i64::MAX);
        let state: Option<RefreshState> = sqlx::query_as(concat!(
            "SELECT s.current_jti, s.previous_jti, s.access_jti, s.issued_at,
                    (s.revoked_at IS NOT NULL OR s.expires_at <= now() OR s.refresh_expires_at <= now()
                     OR u.disabled_at IS NOT NULL) AS over,
                    (s.revoked_at IS NULL AND u.disabled_at IS NOT NULL) AS user_disabled,
                    COALESCE(now() - s.rotated_at <= $3 * interval '1 millisecond', false) AS in_grace, ",
            mirror_columns!(),
            " FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id = $1 AND s.user_id = $2"
        ))
        .bind(sid)
        .bind(uid)
        .bind(grace_ms)
        .fetch_optional(&self.db)
        .await?;
        let Some(state) = state else { return Ok(RefreshOutcome::Missing) };
        if state.user_disabled {
            self.end(&next.sub, &next.sid, EndReason::UserDisabled).await?;
            return Ok(RefreshOutcome::Missing);
        }
        if state.over {
            return Ok(RefreshOutcome::Missing);
        }
        if state.in_grace && state.previous_jti.as_deref() == Some(presented_jti) {
            self.mirror(&state.mirror).await?;
            return Ok(RefreshOutcome::Grace(PairSpec {
                sub: next.sub.clone(),
                sid: next.sid.clone(),
                access_jti: state.access_jti,
                refresh_jti: state.current_jti,
                iat: state.issued_at,
                session_exp: state.mirror.expires_at.timestamp(),
            }));
        }
        self.end(&next.sub, &next.sid, EndReason::RefreshReuse).await?;
        Ok(RefreshOutcome::Reuse)
    }

    /// Ends session `sid` of user `uid`, which comes from a verified token:
    /// in Postgres first, then in the mirror (whatever Postgres said, so a
    /// mirror an earlier failure left behind goes too). Returns whether the
    /// session was live.
    pub async fn end(&self, uid: &str, sid: &str, reason: EndReason) -> Result<bool, AuthError> {
        self.require_redis()?;
        let was_live = self.end_in_database(uid, sid, reason).await?;
        self.end_mirror(uid, sid).await?;
        Ok(was_live == Some(true))
    }

    /// Ends session `sid` named by user `uid` (RevokeSession): only one of
    /// `uid`'s own sessions, and the mirror only when the session exists, so
    /// made-up ids cost nothing. Returns whether a live session ended.
    pub async fn end_owned(&self, uid: &str, sid: &str, reason: EndReason) -> Result<bool, AuthError> {
        self.require_redis()?;
        match self.end_in_database(uid, sid, reason).await? {
            None => Ok(false),
            Some(was_live) => {
                self.end_mirror(uid, sid).await?;
                Ok(was_live)
            }
        }
    }

    /// Marks the session ended in Postgres (keeping the first end's time and
    /// reason). `None` when `uid` has no such session, else whether it was live.
    #[tracing::instrument(name = "sessions end", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "UPDATE", db.collection.name = "sessions"))]
    async fn end_in_database(&self, uid: &str, sid: &str, reason: EndReason) -> Result<Option<bool>, AuthError> {
        let (uid, sid) = (parse_id(uid)?, parse_id(sid)?);
        let was_live: Option<bool> = sqlx::query_scalar(
            "WITH old AS (SELECT revoked_at FROM sessions WHERE id = $1 AND user_id = $2 FOR UPDATE)
             UPDATE sessions s SET revoked_at = COALESCE(s.revoked_at, now()),
                                   revoked_reason = COALESCE(s.revoked_reason, $3)
             FROM old WHERE s.id = $1 AND s.user_id = $2
             RETURNING old.revoked_at IS NULL",
        )
        .bind(sid)
        .bind(uid)
        .bind(reason.as_str())
        .fetch_optional(&self.db)
        .await?;
        if was_live == Some(true) {
            self.metrics.sessions_revoked(reason, 1);
        }
        Ok(was_live)
    }

    async fn end_mirror(&self, uid: &str, sid: &str) -> Result<(), AuthError> {
        let _: i64 = self
            .mirror_write(
                &self.scripts.revoke,
                vec![self.session_key(uid, sid), self.user_key(uid), self.end_key(uid, sid)],
                vec![sid.to_owned(), secs(self.revocation_ttl)],
            )
            .await?;
        Ok(())
    }

    /// Ends the mirrors of sessions `sids` of `uid` in one script call (at
    /// most [`PAGE_SIZE`] of them); returns how many were mirrored.
    async fn revoke_many(&self, uid: &str, sids: &[String]) -> Result<i64, AuthError> {
        let mut keys = vec![self.user_key(uid)];
        for sid in sids {
            keys.push(self.session_key(uid, sid));
            keys.push(self.end_key(uid, sid));
        }
        let mut args = vec![secs(self.revocation_ttl)];
        args.extend(sids.iter().cloned());
        self.mirror_write(&self.scripts.revoke_many, keys, args).await
    }

    /// Up to `n` session ids of `uid` in the mirror, newest or oldest first.
    async fn page(&self, uid: &str, n: usize, newest_first: bool) -> Result<Vec<String>, AuthError> {
        let order = if newest_first { "new" } else { "old" };
        self.scripts.page.run(&self.redis, vec![self.user_key(uid)], vec![n.to_string(), order.to_owned()]).await
    }

    /// Ends every session of `uid`: in Postgres in one statement, then their
    /// mirrors a page of [`PAGE_SIZE`] per script call, then whatever else
    /// the mirror still lists. Returns how many were live.
    #[tracing::instrument(name = "sessions end all", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "UPDATE", db.collection.name = "sessions"))]
    pub async fn end_all(&self, uid: &str, reason: EndReason) -> Result<i64, AuthError> {
        self.require_redis()?;
        let ended: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE sessions SET revoked_at = now(), revoked_reason = $2
             WHERE user_id = $1 AND revoked_at IS NULL RETURNING id",
        )
        .bind(parse_id(uid)?)
        .bind(reason.as_str())
        .fetch_all(&self.db)
        .await?;
        self.metrics.sessions_revoked(reason, ended.len() as u64);
        let ended: Vec<String> = ended.iter().map(Uuid::to_string).collect();
        for page in ended.chunks(PAGE_SIZE) {
            self.revoke_many(uid, page).await?;
        }
        for _ in 0..MAX_PAGES {
            let sids = self.page(uid, PAGE_SIZE, false).await?;
            if sids.is_empty() {
                break;
            }
            self.revoke_many(uid, &sids).await?;
        }
        Ok(i64::try_from(ended.len()).unwrap_or(i64::MAX))
    }

    /// The live sessions of `uid`, newest first (at most
    /// `MAX_SESSIONS_PER_USER`, read from the mirror in one bounded script call).
    pub async fn list(&self, uid: &str) -> Result<Vec<SessionInfo>, AuthError> {
        self.require_redis()?;
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

    /// Keeps the Redis mirror whole for as long as the service runs: every
    /// [`MIRROR_CHECK_INTERVAL`] it checks the marker a completed rebuild
    /// leaves in Redis, and rebuilds the mirror from Postgres when the marker
    /// is gone (Redis restarted empty, failed over to a replica that lagged,
    /// was flushed) or when one of this replica's mirror writes failed. Also
    /// purges long-ended sessions about once an hour.
    pub async fn keep_mirror_whole(self) {
        let mut ticks = tokio::time::interval(MIRROR_CHECK_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checks: u32 = 0;
        loop {
            ticks.tick().await;
            if let Err(e) = self.check_mirror().await {
                tracing::warn!(error = %e, "checking the session mirror failed; trying again");
            }
            checks = checks.wrapping_add(1);
            if checks.is_multiple_of(PURGE_EVERY_CHECKS) {
                match self.purge().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(sessions = n, "purged sessions that ended long ago"),
                    Err(e) => tracing::warn!(error = %e, "purging old sessions failed"),
                }
            }
        }
    }

    /// One check of the mirror, and a rebuild if it needs one (by one replica
    /// at a time). Returns whether this call rebuilt it.
    pub async fn check_mirror(&self) -> Result<bool, AuthError> {
        if !self.redis.available() {
            return Ok(false);
        }
        let redis = self.redis.pool();
        let marker: Option<String> = self.redis.record(redis.get(self.marker_key()).await)?;
        if marker.as_deref() == Some("complete") && !self.dirty.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let lock: Option<String> = redis
            .set(
                self.lock_key(),
                Uuid::new_v4().to_string(),
                Some(Expiration::EX(i64::try_from(REBUILD_LOCK_TTL.as_secs()).unwrap_or(60))),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        if lock.is_none() {
            return Ok(false);
        }
        self.dirty.store(false, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let result = self.rebuild().await;
        let _: i64 = redis.del(self.lock_key()).await.unwrap_or(0);
        let (live, ended) = result.inspect_err(|_| self.dirty.store(true, Ordering::Relaxed))?;
        tracing::info!(
            live,
            ended,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "session mirror rebuilt from the database"
        );
        Ok(true)
    }

    /// Writes the mirror of every live session and the end record of every
    /// session that ended within the access-token lifetime. The marker says
    /// `rebuilding` meanwhile and `complete` only if it survived the whole
    /// rebuild (a loss in the middle leaves it absent, so the next check
    /// starts over). Returns (live sessions written, ended sessions written).
    async fn rebuild(&self) -> Result<(usize, usize), AuthError> {
        let marker_ttl = Some(Expiration::EX(i64::try_from(MIRROR_MARKER_TTL.as_secs()).unwrap_or(86_400)));
        let redis = self.redis.pool();
        let _: () = redis.set(self.marker_key(), "rebuilding", marker_ttl.clone(), None, false).await?;
        let mut live = 0;
        let mut after = Uuid::nil();
        loop {
            let rows: Vec<MirrorRow> = sqlx::query_as(concat!(
                "SELECT ",
                mirror_columns!(),
                " FROM sessions s
                 WHERE s.id > $1 AND s.revoked_at IS NULL AND s.expires_at > now() AND s.refresh_expires_at > now()
                 ORDER BY s.id LIMIT $2"
            ))
            .bind(after)
            .bind(REBUILD_PAGE)
            .fetch_all(&self.db)
            .await?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            live += rows.len();
            // Owned rows and a cloned store: futures borrowing the page trip
            // the Send check of the spawned task that runs this.
            futures::stream::iter(rows)
                .map(|row| {
                    let store = self.clone();
                    async move { store.mirror(&row).await }
                })
                .buffer_unordered(REBUILD_CONCURRENCY)
                .try_collect::<Vec<bool>>()
                .await?;
        }
        let mut ended = 0;
        let mut after = Uuid::nil();
        let window = i64::try_from(self.revocation_ttl.as_secs()).unwrap_or(i64::MAX);
        loop {
            let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
                "SELECT id, user_id FROM sessions
                 WHERE id > $1 AND revoked_at > now() - $2 * interval '1 second'
                 ORDER BY id LIMIT $3",
            )
            .bind(after)
            .bind(window)
            .bind(REBUILD_PAGE)
            .fetch_all(&self.db)
            .await?;
            let Some(last) = rows.last() else { break };
            after = last.0;
            ended += rows.len();
            futures::stream::iter(rows)
                .map(|(sid, uid)| {
                    let store = self.clone();
                    async move { store.end_mirror(&uid.to_string(), &sid.to_string()).await }
                })
                .buffer_unordered(REBUILD_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
        }
        let done: Option<String> =
            redis.set(self.marker_key(), "complete", marker_ttl, Some(SetOptions::XX), true).await?;
        if done.is_none() {
            return Err(AuthError::Unavailable(SESSIONS_UNAVAILABLE));
        }
        Ok((live, ended))
    }

    /// Deletes up to [`PURGE_BATCH`] sessions whose last refresh token
    /// expired more than 30 days ago (the audit trail of when and why each
    /// ended is kept that long); returns how many.
    async fn purge(&self) -> Result<u64, AuthError> {
        let done = sqlx::query(
            "DELETE FROM sessions WHERE id IN (
                 SELECT id FROM sessions WHERE refresh_expires_at < now() - interval '30 days' LIMIT $1)",
        )
        .bind(PURGE_BATCH)
        .execute(&self.db)
        .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_script_builds_a_key_name() {
        // Every key a script touches comes from KEYS (Redis Cluster).
        for lua in [MIRROR, REVOKE, REVOKE_MANY, PAGE, LIST] {
            assert!(!lua.contains(".. 'sess:'") && !lua.contains(".. 'ended:'"), "{lua}");
            assert!(!lua.contains("ARGV[1] .."), "{lua}");
        }
    }
}
