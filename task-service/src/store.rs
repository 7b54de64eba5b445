//! Task reads and writes that keep Postgres (the truth) and the Redis list
//! cache (a copy) consistent, and load each cold list once however many
//! readers ask for it at the same time.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{
    FutureExt as _,
    future::{BoxFuture, Shared},
};
use uuid::Uuid;

use crate::{
    Metrics, TaskError,
    auth::Session,
    cache::{CachedPage, Change, ListCache, Lookup, Shape, Stamp},
    domain::{ListQuery, PageToken, RequestId, TaskStatus},
    repository::{NewTask, Repository, Task, TaskChanges},
    watch::Hub,
};

/// How long a finished load stays joinable. Its result is exact for its
/// stamp, so a reader that saw the same stamp may still use it; this closes
/// the gap between a reader's cache miss and its joining a load that has
/// just finished, which would otherwise cost a second query.
const FLIGHT_LINGER: Duration = Duration::from_secs(1);

/// How often each replica looks for invalidations another replica could not
/// deliver to Redis.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// Every how many sweeps old request ids are deleted (about a minute).
const REQUEST_ID_SWEEP_EVERY: u64 = 120;

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The tasks, newest first.
    pub tasks: Vec<Task>,
    /// Where the next page starts, if there is one.
    pub next: Option<PageToken>,
    /// The list version the page reflects at least (first pages read
    /// through Redis; 0 otherwise).
    pub version: i64,
}

/// A load of one user's first page for one filter, shared by every reader
/// that saw the same stamp.
type Flight = Shared<BoxFuture<'static, Result<Arc<CachedPage>, Arc<TaskError>>>>;

/// What identifies a load: the same user, shape and stamp see the same list.
type FlightKey = (Uuid, Shape, Stamp);

/// The service's data layer.
#[derive(Clone)]
pub struct TaskStore {
    /// Postgres, the source of truth.
    repo: Repository,
    /// The first-page cache, which also appends the event log.
    cache: Arc<ListCache>,
    /// This replica's watchers, told to list again when an event may be lost.
    hub: Arc<Hub>,
    /// Loads in progress (or just finished), each with an id so a late
    /// removal never takes out a newer load under the same key.
    flights: Arc<Mutex<HashMap<FlightKey, (u64, Flight)>>>,
    /// Source of flight ids.
    next_flight: Arc<AtomicU64>,
    /// Cache hit and miss counters.
    metrics: Arc<Metrics>,
    /// Pause between loading and filling (a test hook; zero in production).
    fill_delay: Duration,
    /// Pause between a commit and its invalidation (a test hook; zero in
    /// production).
    invalidate_delay: Duration,
}

impl TaskStore {
    /// A store over `repo` and `cache`, telling `hub` about lost events.
    pub fn new(repo: Repository, cache: Arc<ListCache>, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Self {
        TaskStore {
            repo,
            cache,
            hub,
            flights: Arc::new(Mutex::new(HashMap::new())),
            next_flight: Arc::new(AtomicU64::new(0)),
            metrics,
            fill_delay: Duration::ZERO,
            invalidate_delay: Duration::ZERO,
        }
    }

    /// Pauses `delay` between loading a list and filling the cache with it;
    /// tests use this to widen the load/write race.
    pub fn with_fill_delay(mut self, delay: Duration) -> Self {
        self.fill_delay = delay;
        self
    }

    /// Pauses `delay` between a write's commit and its invalidation; tests
    /// use this to drop a call in between.
    pub fn with_invalidate_delay(mut self, delay: Duration) -> Self {
        self.invalidate_delay = delay;
        self
    }

    /// Creates a task (or, for a request id seen before, returns the task
    /// it created); the cache and the event log reflect it before this
    /// returns.
    pub async fn create(&self, owner: Uuid, new: NewTask, request: Option<RequestId>) -> Result<Task, TaskError> {
        let repo = self.repo.clone();
        self.write(owner, async move {
            let created = repo.create(owner, &new, request.as_ref()).await?;
            let change = (!created.replayed).then(|| change("created", &created.task));
            Ok((created.task, change))
        })
        .await
    }

    /// One task of `owner`'s (never cached: a point read is cheap).
    pub async fn get(&self, owner: Uuid, id: Uuid) -> Result<Task, TaskError> {
        self.repo.get(owner, id).await
    }

    /// Changes a task (if its version is still `expected`, when given); the
    /// cache and the event log reflect it before this returns.
    pub async fn update(
        &self,
        owner: Uuid,
        id: Uuid,
        changes: &TaskChanges,
        expected: Option<i64>,
    ) -> Result<Task, TaskError> {
        let (repo, changes) = (self.repo.clone(), changes.clone());
        self.write(owner, async move {
            let task = repo.update(owner, id, &changes, expected).await?;
            let change = change("updated", &task);
            Ok((task, Some(change)))
        })
        .await
    }

    /// Deletes a task (if its version is still `expected`, when given); the
    /// cache and the event log reflect it before this returns.
    pub async fn delete(&self, owner: Uuid, id: Uuid, expected: Option<i64>) -> Result<(), TaskError> {
        let repo = self.repo.clone();
        self.write(owner, async move {
            repo.delete(owner, id, expected).await?;
            Ok(((), Some(Change { kind: "deleted", data: serde_json::json!({ "id": id }).to_string() })))
        })
        .await
    }

    /// Runs a write of `owner`'s tasks and then publishes its change (cache
    /// invalidation and event), in a task of its own: if the caller goes
    /// away (a client cancelling, a deadline) after the commit, the
    /// publication still happens, so a committed write is never hidden by
    /// the cache nor missing from the log. A write that changed nothing
    /// (`None`) publishes nothing.
    async fn write<T: Send + 'static>(
        &self,
        owner: Uuid,
        op: impl Future<Output = Result<(T, Option<Change>), TaskError>> + Send + 'static,
    ) -> Result<T, TaskError> {
        let store = self.clone();
        let task = tokio::spawn(async move {
            let (value, change) = op.await?;
            if let Some(change) = change {
                if !store.invalidate_delay.is_zero() {
                    tokio::time::sleep(store.invalidate_delay).await;
                }
                store.publish(owner, &change).await;
            }
            Ok(value)
        });
        task.await.map_err(|e| TaskError::Unexpected(anyhow::anyhow!("task write failed: {e}")))?
    }

    /// Tells the cache and `owner`'s watchers that the list changed (after
    /// the write committed). If Redis cannot be told, this process stops
    /// trusting the cache until it has changed the epoch, its own watchers
    /// of `owner` are told to list again, and the miss is recorded in
    /// Postgres so that every other replica's sweep does the same.
    async fn publish(&self, owner: Uuid, change: &Change) {
        if self.cache.publish(owner, change).await.is_some() {
            return;
        }
        self.hub.resync(owner);
        if let Err(e) = self.repo.record_missed_invalidation(owner).await {
            tracing::warn!(error = %e, "could not record a missed cache invalidation");
        }
    }

    /// One sweep: if any replica recorded invalidations it could not
    /// deliver, append a `reset` event to each named user's log (their
    /// watchers list again), change the cache epoch (covering them) and
    /// delete the records. Also notices epoch changes made by other replicas.
    pub async fn sweep_missed_invalidations(&self) {
        // Another replica's new epoch: entries stamped with the old one are
        // misses from now on. (Watchers are not told: a new epoch covers
        // cache entries; lost events are covered per user, below.)
        self.cache.refresh_epoch().await;
        let Ok(Some(newest)) = self.repo.newest_missed_invalidation().await else { return };
        let Ok(owners) = self.repo.missed_invalidation_owners(newest).await else { return };
        let reset = Change { kind: "reset", data: String::new() };
        for owner in &owners {
            match owner {
                Some(owner) => {
                    if self.cache.publish(*owner, &reset).await.is_none() {
                        return;
                    }
                }
                None => self.hub.resync_all(),
            }
        }
        // The records were read before the epoch changes, so the writes they
        // stand for had committed: every entry filled before them is older
        // than the new epoch.
        if self.cache.new_epoch().await {
            if let Err(e) = self.repo.clear_missed_invalidations(newest).await {
                tracing::debug!(error = %e, "clearing missed cache invalidations");
            }
            tracing::info!("cache epoch changed for invalidations that could not reach redis");
        }
    }

    /// Runs [`TaskStore::sweep_missed_invalidations`] every [`SWEEP_INTERVAL`].
    pub async fn sweep_forever(self) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            tick.tick().await;
            self.sweep_missed_invalidations().await;
            ticks += 1;
            if ticks.is_multiple_of(REQUEST_ID_SWEEP_EVERY) {
                match self.repo.sweep_request_ids().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(n, "forgot request ids older than 24 hours"),
                    Err(e) => tracing::debug!(error = %e, "sweeping request ids"),
                }
            }
        }
    }

    /// One page of `owner`'s tasks, for the caller whose token gave
    /// `session`. First pages come from the cache when it is usable, and the
    /// cache read checks that the session is live in the same round trip;
    /// later pages, and everything during a Redis outage, come from Postgres
    /// after a check of their own. Nothing is read for a session that ended.
    pub async fn list(&self, owner: Uuid, query: ListQuery, session: &Session<'_>) -> Result<Page, TaskError> {
        let size = query.page_size.get();
        if query.after.is_some() {
            session.check().await?;
            return self.list_from_postgres(owner, query).await;
        }
        let shape = Shape::for_page(query.filter, size);
        let (lookup, live) = self.cache.lookup(owner, shape, session.key()).await;
        match live {
            Some(answer) => session.judge(answer)?,
            None => session.check().await?,
        }
        let cached = match lookup {
            Lookup::SessionEnded => return Err(TaskError::Unauthenticated(taskgate_tokens::VerifyError::Revoked)),
            Lookup::Bypass => {
                self.metrics.cache_bypass();
                return self.list_from_postgres(owner, query).await;
            }
            Lookup::Hit(page) => {
                self.metrics.cache_hit();
                Arc::new(page)
            }
            Lookup::Miss(stamp) => {
                self.metrics.cache_miss();
                self.load_once(owner, shape, stamp).await?
            }
        };
        let tasks: Vec<Task> = cached.tasks.iter().take(size).cloned().collect();
        let more = cached.tasks.len() > size || cached.more;
        // The stamp was read before the list was loaded, so every write after
        // this version is in the log: a watcher from here misses nothing.
        Ok(page(tasks, more, query.filter, cached.stamp.version))
    }

    /// A page straight from Postgres: one more row than asked tells whether
    /// another page follows.
    async fn list_from_postgres(&self, owner: Uuid, query: ListQuery) -> Result<Page, TaskError> {
        let size = query.page_size.get();
        let mut tasks = self.repo.list(owner, query.filter, query.after, size + 1).await?;
        let more = tasks.len() > size;
        tasks.truncate(size);
        Ok(page(tasks, more, query.filter, 0))
    }

    /// Loads the first page for `stamp` from Postgres and offers it to the
    /// cache, joining a load already under way for the same stamp instead of
    /// starting another.
    async fn load_once(&self, owner: Uuid, shape: Shape, stamp: Stamp) -> Result<Arc<CachedPage>, TaskError> {
        let key = (owner, shape, stamp);
        let flight = {
            let mut flights = self.flights.lock().map_err(|_| anyhow::anyhow!("flight table poisoned"))?;
            match flights.get(&key) {
                Some((_, flight)) => flight.clone(),
                None => {
                    let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
                    let flight = self.flight(key, id);
                    flights.insert(key, (id, flight.clone()));
                    flight
                }
            }
        };
        flight.await.map_err(|e| e.share())
    }

    /// The shared future of one load. The load runs in its own task, so it
    /// finishes (and leaves the table) even if every caller waiting on it
    /// goes away; it removes itself a little after finishing (see
    /// [`FLIGHT_LINGER`]).
    fn flight(&self, key: FlightKey, id: u64) -> Flight {
        let (owner, shape, stamp) = key;
        let repo = self.repo.clone();
        let cache = self.cache.clone();
        let flights = self.flights.clone();
        let fill_delay = self.fill_delay;
        let load = tokio::spawn(async move {
            let result = async {
                let mut tasks = repo.list(owner, shape.filter, None, shape.depth + 1).await?;
                let more = tasks.len() > shape.depth;
                tasks.truncate(shape.depth);
                let page = CachedPage { stamp, tasks, more };
                if !fill_delay.is_zero() {
                    tokio::time::sleep(fill_delay).await;
                }
                cache.fill(owner, shape, &page).await;
                Ok::<_, TaskError>(Arc::new(page))
            }
            .await
            .map_err(Arc::new);
            // A failed load is forgotten at once, so the next reader retries.
            let linger = if result.is_ok() { FLIGHT_LINGER } else { Duration::ZERO };
            tokio::spawn(async move {
                tokio::time::sleep(linger).await;
                if let Ok(mut flights) = flights.lock()
                    && flights.get(&key).is_some_and(|(current, _)| *current == id)
                {
                    flights.remove(&key);
                }
            });
            result
        });
        async move {
            match load.await {
                Ok(result) => result,
                Err(e) => Err(Arc::new(TaskError::Unexpected(anyhow::anyhow!("list load task failed: {e}")))),
            }
        }
        .boxed()
        .shared()
    }
}

/// Builds a page, with a token after its last task if more follow.
fn page(tasks: Vec<Task>, more: bool, filter: Option<TaskStatus>, version: i64) -> Page {
    let next = if more { tasks.last().map(|t| PageToken { cursor: t.cursor(), filter }) } else { None };
    Page { tasks, next, version }
}

/// The event of a create or update: the task after it, as JSON.
fn change(kind: &'static str, task: &Task) -> Change {
    Change { kind, data: serde_json::to_string(task).unwrap_or_default() }
}
