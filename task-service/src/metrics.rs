//! Counters that show what the service did, for tests and for operators.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of work done since start-up. Shared by every part of the service.
#[derive(Debug, Default)]
pub struct Metrics {
    /// ListTasks queries sent to Postgres (cache fills and uncached pages).
    list_queries: AtomicU64,
    /// First-page reads answered from Redis.
    cache_hits: AtomicU64,
    /// First-page reads that found no current entry in Redis.
    cache_misses: AtomicU64,
    /// First-page reads that skipped Redis (down, or not yet known clean).
    cache_bypasses: AtomicU64,
    /// Redis outages noticed (each logged once, when it starts).
    cache_outages: AtomicU64,
    /// Postgres outages noticed (each logged once, when it starts).
    database_outages: AtomicU64,
    /// WatchTasks streams open now.
    watch_streams: AtomicU64,
    /// WatchTasks streams ended because their reader fell behind.
    watch_slow_readers: AtomicU64,
}

impl Metrics {
    /// ListTasks queries sent to Postgres so far.
    pub fn list_queries(&self) -> u64 {
        self.list_queries.load(Ordering::Relaxed)
    }

    /// First-page reads answered from Redis so far.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.load(Ordering::Relaxed)
    }

    /// First-page reads that missed the cache so far.
    pub fn cache_misses(&self) -> u64 {
        self.cache_misses.load(Ordering::Relaxed)
    }

    /// First-page reads that went around the cache so far.
    pub fn cache_bypasses(&self) -> u64 {
        self.cache_bypasses.load(Ordering::Relaxed)
    }

    /// Redis outages noticed so far; each was logged once.
    pub fn cache_outages(&self) -> u64 {
        self.cache_outages.load(Ordering::Relaxed)
    }

    /// Postgres outages noticed so far; each was logged once.
    pub fn database_outages(&self) -> u64 {
        self.database_outages.load(Ordering::Relaxed)
    }

    /// WatchTasks streams open on this replica now.
    pub fn watch_streams(&self) -> u64 {
        self.watch_streams.load(Ordering::Relaxed)
    }

    /// WatchTasks streams ended so far because their reader fell behind.
    pub fn watch_slow_readers(&self) -> u64 {
        self.watch_slow_readers.load(Ordering::Relaxed)
    }

    pub(crate) fn watch_opened(&self) {
        self.watch_streams.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn watch_closed(&self) {
        self.watch_streams.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn watch_slow_reader(&self) {
        self.watch_slow_readers.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn cache_outage(&self) {
        self.cache_outages.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn database_outage(&self) {
        self.database_outages.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn list_query(&self) {
        self.list_queries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn cache_bypass(&self) {
        self.cache_bypasses.fetch_add(1, Ordering::Relaxed);
    }
}
