//! Counters that show what the service did, for operators (exported at
//! `/metrics` on the admin listener) and for tests (read directly):
//!
//! - `task_list_queries_total`: ListTasks queries sent to Postgres.
//! - `task_cache_hits_total`, `task_cache_misses_total`,
//!   `task_cache_bypasses_total`: first-page reads answered from Redis, not
//!   found there, or sent around it (Redis down or not known clean).
//! - `task_cache_outages_total`, `task_database_outages_total`: outages of
//!   Redis and Postgres noticed (each logged once, when it starts).
//! - `task_watch_streams` (gauge): WatchTasks streams open on this replica.
//! - `task_watch_slow_readers_total`: streams ended because their reader fell behind.

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

/// Counts of work done since start-up. Shared by every part of the service;
/// clones of a counter share its value, so [`Metrics::register`] exports the
/// very counters the service increments.
#[derive(Debug, Default)]
pub struct Metrics {
    /// ListTasks queries sent to Postgres (cache fills and uncached pages).
    list_queries: Counter,
    /// First-page reads answered from Redis.
    cache_hits: Counter,
    /// First-page reads that found no current entry in Redis.
    cache_misses: Counter,
    /// First-page reads that skipped Redis (down, or not yet known clean).
    cache_bypasses: Counter,
    /// Redis outages noticed (each logged once, when it starts).
    cache_outages: Counter,
    /// Postgres outages noticed (each logged once, when it starts).
    database_outages: Counter,
    /// WatchTasks streams open now.
    watch_streams: Gauge,
    /// WatchTasks streams ended because their reader fell behind.
    watch_slow_readers: Counter,
}

impl Metrics {
    /// Adds every counter to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("task_list_queries", "ListTasks queries sent to Postgres", self.list_queries.clone());
        registry.register("task_cache_hits", "First-page list reads answered from Redis", self.cache_hits.clone());
        registry.register(
            "task_cache_misses",
            "First-page list reads that found no current entry in Redis",
            self.cache_misses.clone(),
        );
        registry.register(
            "task_cache_bypasses",
            "First-page list reads sent around Redis (down, or not known clean)",
            self.cache_bypasses.clone(),
        );
        registry.register("task_cache_outages", "Redis outages noticed", self.cache_outages.clone());
        registry.register("task_database_outages", "Postgres outages noticed", self.database_outages.clone());
        registry.register("task_watch_streams", "WatchTasks streams open on this replica", self.watch_streams.clone());
        registry.register(
            "task_watch_slow_readers",
            "WatchTasks streams ended because their reader fell behind",
            self.watch_slow_readers.clone(),
        );
    }

    /// ListTasks queries sent to Postgres so far.
    pub fn list_queries(&self) -> u64 {
        self.list_queries.get()
    }

    /// First-page reads answered from Redis so far.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.get()
    }

    /// First-page reads that missed the cache so far.
    pub fn cache_misses(&self) -> u64 {
        self.cache_misses.get()
    }

    /// First-page reads that went around the cache so far.
    pub fn cache_bypasses(&self) -> u64 {
        self.cache_bypasses.get()
    }

    /// Redis outages noticed so far; each was logged once.
    pub fn cache_outages(&self) -> u64 {
        self.cache_outages.get()
    }

    /// Postgres outages noticed so far; each was logged once.
    pub fn database_outages(&self) -> u64 {
        self.database_outages.get()
    }

    /// WatchTasks streams open on this replica now.
    pub fn watch_streams(&self) -> u64 {
        u64::try_from(self.watch_streams.get()).unwrap_or(0)
    }

    /// WatchTasks streams ended so far because their reader fell behind.
    pub fn watch_slow_readers(&self) -> u64 {
        self.watch_slow_readers.get()
    }

    pub(crate) fn watch_opened(&self) {
        self.watch_streams.inc();
    }

    pub(crate) fn watch_closed(&self) {
        self.watch_streams.dec();
    }

    pub(crate) fn watch_slow_reader(&self) {
        self.watch_slow_readers.inc();
    }

    pub(crate) fn cache_outage(&self) {
        self.cache_outages.inc();
    }

    pub(crate) fn database_outage(&self) {
        self.database_outages.inc();
    }

    pub(crate) fn list_query(&self) {
        self.list_queries.inc();
    }

    pub(crate) fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub(crate) fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    pub(crate) fn cache_bypass(&self) {
        self.cache_bypasses.inc();
    }
}
