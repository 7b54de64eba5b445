//! The Redis list cache and event log, and why the cache is never stale.
//!
//! # Keys (docs/redis-keys.md; every one under the user's hash tag, so each
//! script below touches one Redis Cluster slot)
//! - `P{u:<uid>}:tasks:pages`: a hash with one field per [`Shape`]: a status
//!   filter (`all`, `todo`, `in_progress`, `done`) and a depth (50, the
//!   default page, or 500, the largest). Each holds the user's newest tasks
//!   of that shape as JSON, with the stamp they were filled at. Any first page
//!   is cut from the shallowest entry deep enough for it; later pages are not
//!   cached. So the cache holds at most 4 x (50 + 500) tasks per user, and a
//!   default page does not pay for reading 500. An entry larger than
//!   `TASK_CACHE_MAX_ENTRY_BYTES` (default [`DEFAULT_MAX_ENTRY_BYTES`]) is not
//!   stored (that list is read from Postgres), so a user's pages hold at most
//!   8 x that many bytes whatever their tasks' descriptions: 2 MiB by
//!   default, where 500 tasks of 10,000-character descriptions would be 5 MB
//!   an entry.
//! - `P{u:<uid>}:tasks:ver`: the user's list version. It never repeats: a
//!   missing counter restarts from Redis' clock in microseconds (far above any
//!   earlier value), and every write adds exactly one.
//! - `P{u:<uid>}:tasks:events`: the user's event log, a stream capped at
//!   `WATCH_EVENT_LOG_LENGTH` entries whose ids are `<version>-0`, appended
//!   by the same script that bumps the version (see [`crate::watch`]).
//! - `P{u:<uid>}:tasks:notify`: the sharded pub/sub channel that script
//!   publishes the new version on, waking the user's watchers on every
//!   replica.
//! - `P{g}:tasks:epoch`: the fleet-wide epoch. No request-path script reads
//!   it: each replica holds it in memory, stamps it into the entries it
//!   fills, refreshes it every [`crate::store::SWEEP_INTERVAL`], and changes
//!   it (INCR) only when recovering from an outage.
//!
//! # Read-your-writes
//! A write commits in Postgres, *then* gives the user a new version (and
//! drops their pages, and appends its event) before it answers. A reader
//! fetches the version and the entry in one script; it uses the entry only if
//! the entry was filled at that very `(epoch, version)`. On a miss it queries
//! Postgres *after* having read the stamp, and stores the result with a
//! script that writes only if the version is still current. A reader that
//! loaded the old list before a write therefore cannot store it after the
//! write's bump: its check-and-set fails.
//!
//! # Redis outages
//! While Redis is down (not connected, or its circuit breaker open after
//! repeated timeouts: see [`taskgate_common::redis::RedisHandle`]), reads and
//! writes go straight to Postgres without waiting on Redis. A write
//! then cannot bump its user's version, so when Redis returns, entries filled
//! before the write could be served. Such a failed bump marks this process
//! *dirty*: it serves nothing from Redis until it has changed the fleet-wide
//! epoch, which makes every entry stamped with an older epoch a miss.
//! Start-up begins dirty too, so a process that crashed while dirty is
//! covered by its successor. The outage is logged once when it starts and
//! once when the cache recovers.
//!
//! Other replicas learn of such a write through Postgres: the writer also
//! records it (with its owner) in `cache_invalidations`, and every replica
//! sweeps that table (every [`crate::store::SWEEP_INTERVAL`]); one that can
//! reach Redis bumps each named user's version with a `reset` event (which
//! tells their watchers to list again), changes the epoch and deletes the
//! records. Every replica also re-reads the epoch on each sweep. The
//! remaining gap: until the next sweep, a replica that *can* reach Redis may
//! still serve an entry older than the write (about one sweep interval,
//! instead of a TTL).

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use fred::{interfaces::KeysInterface as _, prelude::Value};
use serde::{Deserialize, Serialize};
use taskgate_common::{
    keys,
    redis::{RedisHandle, Script},
};
use taskgate_tokens::{RedisFailure, redis_failure};
use uuid::Uuid;

use crate::{Metrics, domain::TaskStatus, repository::Task};

/// The depths entries are kept at: the default page size, and the largest.
pub const CACHE_DEPTHS: [usize; 2] = [crate::domain::DEFAULT_PAGE_SIZE, crate::domain::MAX_PAGE_SIZE];

/// Which cached list a first page is cut from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    /// The status filter, or all.
    pub filter: Option<TaskStatus>,
    /// How many of the newest tasks the entry holds.
    pub depth: usize,
}

impl Shape {
    /// The shallowest shape that can serve a first page of `page_size`.
    pub fn for_page(filter: Option<TaskStatus>, page_size: usize) -> Self {
        let depth = CACHE_DEPTHS.into_iter().find(|d| page_size <= *d).unwrap_or(crate::domain::MAX_PAGE_SIZE);
        Shape { filter, depth }
    }

    /// The field of the user's pages hash.
    fn field(self) -> String {
        format!("{}:{}", self.filter.map_or("all", TaskStatus::as_db), self.depth)
    }
}

/// The largest cache entry stored, in bytes (serialised JSON), by default.
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 256 * 1024;

/// How long a user's version key and event log live without writes. Any
/// value is safe (versions never repeat); it only bounds the keys idle users
/// leave behind.
pub const VERSION_TTL: Duration = Duration::from_secs(24 * 3600);

// Values travel as strings: Lua numbers are doubles and print as `1.7e+15`.
// A missing version starts from Redis' own clock (`TIME`, in microseconds),
// not a replica's, so replicas with skewed clocks cannot make it repeat.

/// Checks that the caller's session is live, then reads the version and one
/// entry, in one round trip, creating a fresh version when missing. A dead
/// session reads nothing. KEYS: version, pages, session (all under the
/// user's hash tag). ARGV: field, version TTL.
const READ_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[3]) == 0 then
  return {'', '', 0}
end
local ver = redis.call('GET', KEYS[1])
if not ver then
  local t = redis.call('TIME')
  ver = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('SET', KEYS[1], ver, 'EX', ARGV[2])
end
local entry = redis.call('HGET', KEYS[2], ARGV[1])
return {ver, entry or '', 1}
";

/// Stores an entry only if the version is still the one it was loaded
/// under. KEYS: version, pages. ARGV: field, version, entry, TTL.
const FILL_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
";

/// After a write: gives the user a new version, drops their entries,
/// appends the write's event under the new version and publishes the
/// version to the user's watchers, all in one round trip. An append that
/// Redis refuses (a log left ahead of a lost version counter) starts the log
/// afresh: watchers then find a gap and list again.
/// KEYS: version, pages, events, notify. ARGV: TTL, log length, event type,
/// event payload.
const BUMP_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], t[1] .. string.format('%06d', tonumber(t[2])))
end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
local v = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[2])
local added = redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], v .. '-0', 'type', ARGV[3], 'data', ARGV[4])
if type(added) == 'table' and added.err then
  redis.call('DEL', KEYS[3])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], v .. '-0', 'type', ARGV[3], 'data', ARGV[4])
end
redis.call('EXPIRE', KEYS[3], ARGV[1])
redis.call('SPUBLISH', KEYS[4], v)
return v
";

/// [`READ_SCRIPT`], run by its hash.
static READ: LazyLock<Script> = LazyLock::new(|| Script::new(READ_SCRIPT));
/// [`FILL_SCRIPT`], run by its hash.
static FILL: LazyLock<Script> = LazyLock::new(|| Script::new(FILL_SCRIPT));
/// [`BUMP_SCRIPT`], run by its hash.
static BUMP: LazyLock<Script> = LazyLock::new(|| Script::new(BUMP_SCRIPT));

/// One change of a user's list, as the event log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `created`, `updated`, `deleted` or `reset` (events may have been lost:
    /// list again).
    pub kind: &'static str,
    /// The task after the change as JSON (only `{"id": ...}` for `deleted`;
    /// empty for `reset`).
    pub data: String,
}

/// The state of the cache an entry was filled at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// The fleet-wide epoch, as this replica knew it.
    pub epoch: i64,
    /// The user's list version.
    pub version: i64,
}

/// One cached first page: a user's newest tasks for one status filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedPage {
    /// When (in cache terms) it was loaded.
    pub stamp: Stamp,
    /// Up to the shape's depth of tasks, newest first.
    pub tasks: Vec<Task>,
    /// Whether more tasks follow the last one.
    pub more: bool,
}

/// What a cache read found.
#[derive(Debug)]
pub enum Lookup {
    /// Redis cannot be used now: go to Postgres and store nothing.
    Bypass,
    /// The caller's session is not live: answer nothing.
    SessionEnded,
    /// A current entry.
    Hit(CachedPage),
    /// No current entry; load and fill under this stamp.
    Miss(Stamp),
}

/// The list cache: a view of Redis that knows whether it may be trusted.
pub struct ListCache {
    /// The shared Redis pool and its circuit breaker.
    redis: RedisHandle,
    /// `REDIS_PREFIX`.
    prefix: String,
    /// How long entries live.
    ttl: Duration,
    /// How many events each user's log keeps (`WATCH_EVENT_LOG_LENGTH`).
    log_length: u64,
    /// Entries larger than this many bytes are not stored.
    max_entry_bytes: usize,
    /// The fleet-wide epoch as last read or set; 0 until known.
    epoch: AtomicI64,
    /// Whether Redis worked last time we tried; flips are logged, so an
    /// outage is logged once however many requests it fails.
    up: AtomicBool,
    /// Writes whose version bump failed (plus one for start-up).
    failed_bumps: AtomicU64,
    /// How many of `failed_bumps` a successful epoch change covers. The
    /// cache may be used only while the two are equal.
    covered_bumps: AtomicU64,
    /// One epoch change at a time.
    epoch_lock: tokio::sync::Mutex<()>,
    /// Where outages are counted.
    metrics: Arc<Metrics>,
}

impl ListCache {
    /// A cache in `redis` under `prefix`, with entries living `ttl`. It starts
    /// dirty: the first use gives the cache a new epoch.
    pub fn new(
        redis: RedisHandle,
        prefix: impl Into<String>,
        ttl: Duration,
        log_length: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        ListCache {
            redis,
            prefix: prefix.into(),
            ttl,
            log_length: log_length.max(1),
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            epoch: AtomicI64::new(0),
            up: AtomicBool::new(true),
            failed_bumps: AtomicU64::new(1),
            covered_bumps: AtomicU64::new(0),
            epoch_lock: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    /// Stores no entry larger than `bytes` (serialised): such lists are read
    /// from Postgres every time, and a user's pages stay within 8 x `bytes`.
    pub fn with_max_entry_bytes(mut self, bytes: usize) -> Self {
        self.max_entry_bytes = bytes.max(1);
        self
    }

    /// `P{u:<owner>}:tasks:<what>`.
    pub fn key(&self, owner: Uuid, what: &str) -> String {
        keys::user_key(&self.prefix, owner, &format!("tasks:{what}"))
    }

    /// `P{g}:tasks:epoch`.
    fn epoch_key(&self) -> String {
        keys::global_key(&self.prefix, "tasks:epoch")
    }

    /// The fleet-wide epoch as this replica knows it (0: not known yet).
    pub fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Whether Redis may be used now: available (connected, breaker
    /// closed), and no failed bump left uncovered (covering them with a new
    /// epoch first if possible).
    async fn usable(&self) -> bool {
        if let Some(reason) = self.redis.unavailable_reason() {
            self.went_down(reason);
            return false;
        }
        if self.failed_bumps.load(Ordering::SeqCst) == self.covered_bumps.load(Ordering::SeqCst) {
            return true;
        }
        // Someone else is changing the epoch: skip the cache this once.
        let Ok(_guard) = self.epoch_lock.try_lock() else { return false };
        // Read before the epoch changes: the writes counted here committed
        // before it, so the new epoch covers them.
        let failed = self.failed_bumps.load(Ordering::SeqCst);
        if !self.new_epoch().await {
            return false;
        }
        self.covered_bumps.fetch_max(failed, Ordering::SeqCst);
        self.failed_bumps.load(Ordering::SeqCst) == self.covered_bumps.load(Ordering::SeqCst)
    }

    /// Reads `owner`'s entry of `shape` together with the current stamp,
    /// checking in the same round trip that the caller's session (the key
    /// `session`) is live. Also returns what the read said of the session:
    /// `None` when nothing was sent (the cache is not usable), so the caller
    /// must check it on its own; else the answer or how Redis failed.
    #[tracing::instrument(name = "cache read", skip_all, fields(otel.kind = "client", db.system = "redis", db.operation = "EVALSHA", db.redis.script = "read"))]
    pub async fn lookup(
        &self,
        owner: Uuid,
        shape: Shape,
        session: String,
    ) -> (Lookup, Option<Result<bool, RedisFailure>>) {
        if !self.usable().await {
            return (Lookup::Bypass, None);
        }
        let epoch = self.epoch();
        let keys = vec![self.key(owner, "ver"), self.key(owner, "pages"), session];
        let args = vec![shape.field(), VERSION_TTL.as_secs().to_string()];
        let client = self.redis.pool().next_connected();
        // `usable` has just seen a connected client and a closed breaker; a
        // failure now counts as unreachable (the session check fails open,
        // as the service's policy says).
        let read = READ.run::<Value, _>(client, keys, args).await;
        let reply = match self.redis.record(read) {
            Ok(reply) => reply,
            Err(e) => {
                let failure = redis_failure(client, &e);
                self.went_down(&e.to_string());
                return (Lookup::Bypass, Some(Err(failure)));
            }
        };
        self.came_up();
        let mut parts = reply.into_array().into_iter();
        let version = parts.next();
        // An empty string (no entry) may arrive as nil.
        let entry = parts.next().and_then(Value::into_string).unwrap_or_default();
        let live = parts.next().and_then(|v| v.as_i64());
        if live == Some(0) {
            return (Lookup::SessionEnded, Some(Ok(false)));
        }
        let Some(version) = version.and_then(|v| v.as_i64()).filter(|_| live == Some(1)) else {
            tracing::error!("unexpected reply from the cache read script");
            // The session was not seen live: the caller checks it on its own.
            return (Lookup::Bypass, None);
        };
        let stamp = Stamp { epoch, version };
        let lookup = if entry.is_empty() {
            Lookup::Miss(stamp)
        } else {
            match serde_json::from_str::<CachedPage>(&entry) {
                Ok(page) if page.stamp == stamp => Lookup::Hit(page),
                Ok(_) => Lookup::Miss(stamp),
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable cache entry, reloading");
                    Lookup::Miss(stamp)
                }
            }
        };
        (lookup, Some(Ok(true)))
    }

    /// Stores `page` as `owner`'s entry of `shape` if its stamp is still
    /// current. Returns whether it was stored.
    #[tracing::instrument(name = "cache fill", skip_all, fields(otel.kind = "client", db.system = "redis", db.operation = "EVALSHA", db.redis.script = "fill"))]
    pub async fn fill(&self, owner: Uuid, shape: Shape, page: &CachedPage) -> bool {
        // Redis went away since the lookup: do not wait on it for a fill.
        if !self.redis.available() {
            return false;
        }
        let entry = match serde_json::to_string(page) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::error!(error = %e, "serialising a cache entry");
                return false;
            }
        };
        if entry.len() > self.max_entry_bytes {
            tracing::debug!(bytes = entry.len(), limit = self.max_entry_bytes, "a list too large to cache");
            return false;
        }
        let keys = vec![self.key(owner, "ver"), self.key(owner, "pages")];
        let args = vec![shape.field(), page.stamp.version.to_string(), entry, self.ttl.as_secs().max(1).to_string()];
        let filled = FILL.run::<i64, _>(self.redis.pool().next_connected(), keys, args).await;
        match self.redis.record(filled) {
            Ok(stored) => {
                self.came_up();
                stored == 1
            }
            Err(e) => {
                self.went_down(&e.to_string());
                false
            }
        }
    }

    /// Called after a write to `owner`'s tasks has committed, before it is
    /// acknowledged: gives the user a new version and appends `change` to
    /// their event log (one script). If Redis cannot be told, the process
    /// turns dirty (see the module docs), which is just as safe for the
    /// cache; the caller must then tell the user's watchers to list again.
    ///
    /// Returns the new version, or `None` when Redis could not be told; the
    /// caller then records the miss where other replicas see it (see
    /// [`ListCache::new_epoch`]).
    #[tracing::instrument(name = "cache bump", skip_all, fields(otel.kind = "client", db.system = "redis", db.operation = "EVALSHA", db.redis.script = "bump"))]
    pub async fn publish(&self, owner: Uuid, change: &Change) -> Option<i64> {
        if let Some(reason) = self.redis.unavailable_reason() {
            self.went_down(reason);
        } else {
            let keys = vec![
                self.key(owner, "ver"),
                self.key(owner, "pages"),
                self.key(owner, "events"),
                self.key(owner, "notify"),
            ];
            let args = vec![
                VERSION_TTL.as_secs().to_string(),
                self.log_length.to_string(),
                change.kind.to_owned(),
                change.data.clone(),
            ];
            let bumped = BUMP.run::<i64, _>(self.redis.pool().next_connected(), keys, args).await;
            match self.redis.record(bumped) {
                Ok(version) => {
                    self.came_up();
                    return Some(version);
                }
                Err(e) => self.went_down(&e.to_string()),
            }
        }
        self.failed_bumps.fetch_add(1, Ordering::SeqCst);
        None
    }

    /// Changes the epoch now if the cache is dirty and Redis is reachable;
    /// start-up calls this so the first requests find a clean cache.
    pub async fn settle(&self) -> bool {
        self.usable().await
    }

    /// Gives the whole cache a new epoch, making every entry filled before
    /// it a miss. Used for invalidations another replica could not deliver;
    /// the caller must have seen their records (so their writes committed)
    /// before calling. Returns whether it happened.
    pub async fn new_epoch(&self) -> bool {
        if !self.redis.available() {
            return false;
        }
        match self.redis.record(self.redis.pool().next_connected().incr::<i64, _>(self.epoch_key()).await) {
            Ok(epoch) => {
                self.came_up();
                self.epoch.fetch_max(epoch, Ordering::SeqCst);
                true
            }
            Err(e) => {
                self.went_down(&e.to_string());
                false
            }
        }
    }

    /// Re-reads the fleet-wide epoch (another replica may have changed it).
    /// Returns true when it moved since the last read.
    pub async fn refresh_epoch(&self) -> bool {
        if !self.redis.available() {
            return false;
        }
        match self.redis.record(self.redis.pool().next_connected().get::<Option<i64>, _>(self.epoch_key()).await) {
            Ok(Some(epoch)) => {
                let before = self.epoch.fetch_max(epoch, Ordering::SeqCst);
                before != 0 && epoch > before
            }
            // Lost with Redis' data: start a new one, which also covers
            // anything filled before the loss.
            Ok(None) => self.new_epoch().await,
            Err(e) => {
                tracing::debug!(error = %e, "reading the cache epoch");
                false
            }
        }
    }

    fn went_down(&self, why: &str) {
        if self.up.swap(false, Ordering::SeqCst) {
            self.metrics.cache_outage();
            tracing::warn!(reason = why, "task cache unavailable: serving lists straight from postgres");
        }
    }

    fn came_up(&self) {
        if !self.up.swap(true, Ordering::SeqCst) {
            tracing::info!("task cache recovered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_page_is_cut_from_the_shallowest_entry_deep_enough() {
        assert_eq!(Shape::for_page(None, 1).depth, 50);
        assert_eq!(Shape::for_page(None, 50).depth, 50);
        assert_eq!(Shape::for_page(Some(TaskStatus::Done), 51).depth, 500);
        assert_eq!(Shape::for_page(None, 500).depth, 500);
        assert_eq!(Shape::for_page(Some(TaskStatus::InProgress), 7).field(), "in_progress:50");
        assert_eq!(Shape::for_page(None, 200).field(), "all:500");
    }
}
