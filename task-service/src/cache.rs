//! The Redis list cache, and why it is never stale.
//!
//! # Keys (all under `REDIS_PREFIX`)
//! - `tasks:{owner}:pages`: a hash with one field per [`Shape`]: a status
//!   filter (`all`, `todo`, `in_progress`, `done`) and a depth (50, the
//!   default page, or 500, the largest). Each holds the user's newest tasks
//!   of that shape as JSON, with the stamp they were filled at. Any first page
//!   is cut from the shallowest entry deep enough for it; later pages are not
//!   cached. So the cache holds at most 4 x (50 + 500) tasks per user, and a
//!   default page does not pay for reading 500.
//! - `tasks:{owner}:ver`: the user's list version.
//! - `tasks:epoch`: the global epoch.
//! - `tasks:seq`: the counter new versions and epochs are drawn from, so no
//!   value ever repeats (not even after a key expires or Redis loses its
//!   data, since a missing counter restarts from the current time in
//!   microseconds). A stamp that matches therefore means "nothing changed".
//!
//! # Read-your-writes
//! A write commits in Postgres, *then* gives the user a new version (and
//! drops their pages) before it answers. A reader fetches the epoch, the
//! version and the entry in one script; it uses the entry only if the entry
//! was filled at that very `(epoch, version)`. On a miss it queries Postgres
//! *after* having read the stamp, and stores the result with a script that
//! writes only if the stamp is still current. A reader that loaded the old
//! list before a write therefore cannot store it after the write's bump: its
//! check-and-set fails.
//!
//! # Redis outages
//! While Redis is down, reads and writes go straight to Postgres. A write
//! then cannot bump its user's version, so when Redis returns, entries filled
//! before the write could be served. Such a failed bump marks this process
//! *dirty*: it serves nothing from Redis until it has given the whole cache a
//! new epoch, which makes every older entry a miss. Start-up begins dirty too,
//! so a process that crashed while dirty is covered by its successor. The
//! outage is logged once when it starts and once when the cache recovers.
//!
//! Other replicas learn of such a write through Postgres: the writer also
//! records it in `cache_invalidations`, and every replica sweeps that table
//! (every [`crate::store::SWEEP_INTERVAL`]); one that can reach Redis changes
//! the epoch and deletes the records. The remaining gap: until that sweep, a
//! replica that *can* reach Redis may still serve an entry older than the
//! write (about one sweep interval, instead of a TTL).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use fred::{
    interfaces::LuaInterface as _,
    prelude::{Pool, Value},
};
use serde::{Deserialize, Serialize};
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

/// How long a user's version key lives without writes. Any value is safe
/// (versions never repeat); it only bounds the keys idle users leave behind.
const VERSION_TTL: Duration = Duration::from_secs(24 * 3600);

// Values travel as strings: Lua numbers are doubles and print as `1.7e+15`.

/// Reads epoch, version and one entry in one round trip, creating a fresh
/// epoch or version when missing.
/// KEYS: epoch, seq, version, pages. ARGV: field, now micros, version TTL.
const READ_SCRIPT: &str = r"
local function fresh()
  if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SET', KEYS[2], ARGV[2]) end
  redis.call('INCR', KEYS[2])
  return redis.call('GET', KEYS[2])
end
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = fresh()
  redis.call('SET', KEYS[1], epoch)
end
local ver = redis.call('GET', KEYS[3])
if not ver then
  ver = fresh()
  redis.call('SET', KEYS[3], ver, 'EX', ARGV[3])
end
local entry = redis.call('HGET', KEYS[4], ARGV[1])
return {epoch, ver, entry or ''}
";

/// Stores an entry only if epoch and version are still those it was loaded
/// under. KEYS: epoch, version, pages. ARGV: field, epoch, version, entry, TTL.
const FILL_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[2] or redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return 0
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[5])
return 1
";

/// Gives a user a new version and drops their entries.
/// KEYS: seq, version, pages. ARGV: now micros, version TTL.
const BUMP_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('INCR', KEYS[1])
local v = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[2], v, 'EX', ARGV[2])
redis.call('DEL', KEYS[3])
return v
";

/// Gives the whole cache a new epoch. KEYS: seq, epoch. ARGV: now micros.
const EPOCH_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('INCR', KEYS[1])
local v = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[2], v)
return v
";

/// The state of the cache an entry was filled at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// The global epoch.
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
    /// A current entry.
    Hit(CachedPage),
    /// No current entry; load and fill under this stamp.
    Miss(Stamp),
}

/// The list cache: a view of Redis that knows whether it may be trusted.
pub struct ListCache {
    /// The shared Redis pool.
    redis: Pool,
    /// `REDIS_PREFIX`.
    prefix: String,
    /// How long entries live.
    ttl: Duration,
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
    pub fn new(redis: Pool, prefix: impl Into<String>, ttl: Duration, metrics: Arc<Metrics>) -> Self {
        ListCache {
            redis,
            prefix: prefix.into(),
            ttl,
            up: AtomicBool::new(true),
            failed_bumps: AtomicU64::new(1),
            covered_bumps: AtomicU64::new(0),
            epoch_lock: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    fn key(&self, owner: Uuid, what: &str) -> String {
        format!("{}tasks:{owner}:{what}", self.prefix)
    }

    fn global(&self, what: &str) -> String {
        format!("{}tasks:{what}", self.prefix)
    }

    /// Whether Redis may be used now: connected, and no failed bump left
    /// uncovered (covering them with a new epoch first if possible).
    async fn usable(&self) -> bool {
        if !taskgate_common::redis::is_up(&self.redis) {
            self.went_down("not connected");
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

    /// Reads `owner`'s entry of `shape` together with the current stamp.
    pub async fn lookup(&self, owner: Uuid, shape: Shape) -> Lookup {
        if !self.usable().await {
            return Lookup::Bypass;
        }
        let keys = vec![self.global("epoch"), self.global("seq"), self.key(owner, "ver"), self.key(owner, "pages")];
        let args = vec![shape.field(), now_micros().to_string(), VERSION_TTL.as_secs().to_string()];
        let reply = match self.redis.next_connected().eval::<Value, _, _, _>(READ_SCRIPT, keys, args).await {
            Ok(reply) => reply,
            Err(e) => {
                self.went_down(&e.to_string());
                return Lookup::Bypass;
            }
        };
        self.came_up();
        let mut parts = reply.into_array().into_iter();
        let (Some(epoch), Some(version)) =
            (parts.next().and_then(|v| v.as_i64()), parts.next().and_then(|v| v.as_i64()))
        else {
            tracing::error!("unexpected reply from the cache read script");
            return Lookup::Bypass;
        };
        // An empty string (no entry) may arrive as nil.
        let entry = parts.next().and_then(Value::into_string).unwrap_or_default();
        let stamp = Stamp { epoch, version };
        if entry.is_empty() {
            return Lookup::Miss(stamp);
        }
        match serde_json::from_str::<CachedPage>(&entry) {
            Ok(page) if page.stamp == stamp => Lookup::Hit(page),
            Ok(_) => Lookup::Miss(stamp),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable cache entry, reloading");
                Lookup::Miss(stamp)
            }
        }
    }

    /// Stores `page` as `owner`'s entry of `shape` if its stamp is still
    /// current. Returns whether it was stored.
    pub async fn fill(&self, owner: Uuid, shape: Shape, page: &CachedPage) -> bool {
        let entry = match serde_json::to_string(page) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::error!(error = %e, "serialising a cache entry");
                return false;
            }
        };
        let keys = vec![self.global("epoch"), self.key(owner, "ver"), self.key(owner, "pages")];
        let args = vec![
            shape.field(),
            page.stamp.epoch.to_string(),
            page.stamp.version.to_string(),
            entry,
            self.ttl.as_secs().max(1).to_string(),
        ];
        match self.redis.next_connected().eval::<i64, _, _, _>(FILL_SCRIPT, keys, args).await {
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
    /// acknowledged: gives the user a new version. If Redis cannot be told,
    /// the process turns dirty (see the module docs), which is just as safe.
    ///
    /// Returns false when Redis could not be told; the caller then records
    /// the miss where other replicas see it (see [`ListCache::new_epoch`]).
    pub async fn invalidate(&self, owner: Uuid) -> bool {
        if taskgate_common::redis::is_up(&self.redis) {
            let keys = vec![self.global("seq"), self.key(owner, "ver"), self.key(owner, "pages")];
            let args = vec![now_micros(), VERSION_TTL.as_secs() as i64];
            match self.redis.next_connected().eval::<i64, _, _, _>(BUMP_SCRIPT, keys, args).await {
                Ok(_) => {
                    self.came_up();
                    return true;
                }
                Err(e) => self.went_down(&e.to_string()),
            }
        } else {
            self.went_down("not connected");
        }
        self.failed_bumps.fetch_add(1, Ordering::SeqCst);
        false
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
        if !taskgate_common::redis::is_up(&self.redis) {
            return false;
        }
        let keys = vec![self.global("seq"), self.global("epoch")];
        match self.redis.next_connected().eval::<i64, _, _, _>(EPOCH_SCRIPT, keys, vec![now_micros()]).await {
            Ok(_) => {
                self.came_up();
                true
            }
            Err(e) => {
                self.went_down(&e.to_string());
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

/// The current time in microseconds, where a lost counter restarts.
fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
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
