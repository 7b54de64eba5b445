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
    cache::{CachedPage, ListCache, Lookup, Shape, Stamp},
    domain::{ListQuery, PageToken, TaskDescription, TaskStatus, TaskTitle},
    repository::{Repository, Task, TaskChanges},
};

/// How long a finished load stays joinable. Its result is exact for its
/// stamp, so a reader that saw the same stamp may still use it; this closes
/// the gap between a reader's cache miss and its joining a load that has
/// just finished, which would otherwise cost a second query.
const FLIGHT_LINGER: Duration = Duration::from_secs(1);

/// How often each replica looks for invalidations another replica could not
/// deliver to Redis.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The tasks, newest first.
    pub tasks: Vec<Task>,
    /// Where the next page starts, if there is one.
    pub next: Option<PageToken>,
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
    /// The first-page cache.
    cache: Arc<ListCache>,
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
    /// A store over `repo` and `cache`.
    pub fn new(repo: Repository, cache: Arc<ListCache>, metrics: Arc<Metrics>) -> Self {
        TaskStore {
            repo,
            cache,
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

    /// Creates a task; the cache reflects it before this returns.
    pub async fn create(
        &self,
        owner: Uuid,
        title: &TaskTitle,
        description: &TaskDescription,
        status: TaskStatus,
    ) -> Result<Task, TaskError> {
        let (repo, title, description) = (self.repo.clone(), title.clone(), description.clone());
        self.write(owner, async move { repo.create(owner, &title, &description, status).await }).await
    }

    /// One task of `owner`'s (never cached: a point read is cheap).
    pub async fn get(&self, owner: Uuid, id: Uuid) -> Result<Task, TaskError> {
        self.repo.get(owner, id).await
    }

    /// Changes a task; the cache reflects it before this returns.
    pub async fn update(&self, owner: Uuid, id: Uuid, changes: &TaskChanges) -> Result<Task, TaskError> {
        let (repo, changes) = (self.repo.clone(), changes.clone());
        self.write(owner, async move { repo.update(owner, id, &changes).await }).await
    }

    /// Deletes a task; the cache reflects it before this returns.
    pub async fn delete(&self, owner: Uuid, id: Uuid) -> Result<(), TaskError> {
        let repo = self.repo.clone();
        self.write(owner, async move { repo.delete(owner, id).await }).await
    }

    /// Runs a write of `owner`'s tasks and then invalidates their cached
    /// list, in a task of its own: if the caller goes away (a client
    /// cancelling, a deadline) after the commit, the invalidation still
    /// happens, so a committed write is never hidden by the cache.
    async fn write<T: Send + 'static>(
        &self,
        owner: Uuid,
        op: impl Future<Output = Result<T, TaskError>> + Send + 'static,
    ) -> Result<T, TaskError> {
        let store = self.clone();
        let task = tokio::spawn(async move {
            let value = op.await?;
            if !store.invalidate_delay.is_zero() {
                tokio::time::sleep(store.invalidate_delay).await;
            }
            store.invalidate(owner).await;
            Ok(value)
        });
        task.await.map_err(|e| TaskError::Unexpected(anyhow::anyhow!("task write failed: {e}")))?
    }

    /// Tells the cache `owner`'s list changed (after the write committed).
    /// If Redis cannot be told, this process stops trusting the cache until
    /// it has changed the epoch, and the miss is recorded in Postgres so that
    /// every other replica's sweep changes the epoch too.
    async fn invalidate(&self, owner: Uuid) {
        if !self.cache.invalidate(owner).await
            && let Err(e) = self.repo.record_missed_invalidation().await
        {
            tracing::warn!(error = %e, "could not record a missed cache invalidation");
        }
    }

    /// One sweep: if any replica recorded invalidations it could not deliver,
    /// change the cache epoch (covering them) and delete the records.
    pub async fn sweep_missed_invalidations(&self) {
        let Ok(Some(newest)) = self.repo.newest_missed_invalidation().await else { return };
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
        loop {
            tick.tick().await;
            self.sweep_missed_invalidations().await;
        }
    }

    /// One page of `owner`'s tasks. First pages come from the cache when it
    /// is usable; later pages, and everything during a Redis outage, come
    /// from Postgres.
    pub async fn list(&self, owner: Uuid, query: ListQuery) -> Result<Page, TaskError> {
        let size = query.page_size.get();
        if query.after.is_some() {
            return self.list_from_postgres(owner, query).await;
        }
        let shape = Shape::for_page(query.filter, size);
        let cached = match self.cache.lookup(owner, shape).await {
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
        Ok(page(tasks, more, query.filter))
    }

    /// A page straight from Postgres: one more row than asked tells whether
    /// another page follows.
    async fn list_from_postgres(&self, owner: Uuid, query: ListQuery) -> Result<Page, TaskError> {
        let size = query.page_size.get();
        let mut tasks = self.repo.list(owner, query.filter, query.after, size + 1).await?;
        let more = tasks.len() > size;
        tasks.truncate(size);
        Ok(page(tasks, more, query.filter))
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
fn page(tasks: Vec<Task>, more: bool, filter: Option<TaskStatus>) -> Page {
    let next = if more { tasks.last().map(|t| PageToken { cursor: t.cursor(), filter }) } else { None };
    Page { tasks, next }
}
