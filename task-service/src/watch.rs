//! WatchTasks: each user's task events, replayed from a bounded log and then
//! tailed live, on every replica.
//!
//! # Where events come from
//! Every write appends its event to the user's Redis stream
//! `P{u:<uid>}:tasks:events` in the same script that bumps the user's list
//! version (see [`crate::cache`]); the entry id is `<version>-0`, so a list
//! version (what ListTasks returns) and a stream position are the same
//! number, and versions go up by exactly one per event. A watcher therefore
//! knows it missed nothing when each event it reads is its cursor plus one;
//! any gap (the log was trimmed past `since`, Redis lost data, an event
//! could not be written) ends the stream with LIST_AGAIN instead of
//! skipping silently.
//!
//! # How a replica learns of new events
//! The same script publishes the new version on the sharded pub/sub channel
//! `P{u:<uid>}:tasks:notify` (SPUBLISH, which Redis Cluster routes to the
//! user's shard). Each replica keeps one subscriber connection
//! ([`Hub`]); it subscribes (SSUBSCRIBE) to a user's channel while it has at
//! least one watcher of that user and wakes those watchers, which then read
//! the log from their own cursor (XRANGE). So a thousand watchers cost one
//! Redis connection, not a thousand blocked ones. A message lost on the way
//! (a reconnect) is caught by each watcher's periodic check, which also
//! renews its lease and looks for the session's revocation record.
//!
//! # Limits and lifetime
//! - At most `WATCH_MAX_STREAMS_PER_USER` open streams per user across the
//!   fleet: each stream holds a lease in the sorted set
//!   `P{u:<uid>}:tasks:watchers`, renewed by its periodic check and dropped
//!   when it ends (a crashed replica's leases expire after [`LEASE`]).
//! - Heartbeat events on idle streams every `WATCH_HEARTBEAT_SECONDS`.
//! - A stream whose reader does not take an event within
//!   `WATCH_SEND_TIMEOUT_SECONDS` (its buffer of [`BUFFER`] events is full)
//!   is ended with RESOURCE_EXHAUSTED; nothing more is buffered for it.
//! - The stream ends with UNAUTHENTICATED when the access token expires, and
//!   within one check interval after its session is revoked.
//! - If Redis fails a write's event, this replica tells the user's watchers
//!   to list again at once, and the other replicas' watchers get a `reset`
//!   event from the sweep of `cache_invalidations` (see [`crate::store`]).
//!   The one case left: if Postgres could not record the owner either (both
//!   stores failing around one write), watchers on other replicas are not
//!   told.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use fred::{
    clients::SubscriberClient,
    interfaces::{
        EventInterface as _, KeysInterface as _, PubsubInterface as _, SortedSetsInterface as _, StreamsInterface as _,
    },
    prelude::{ClientLike as _, Value},
    types::Builder,
};
use futures::Stream;
use taskgate_common::{
    keys,
    redis::{RedisHandle, Script},
};
use taskgate_proto::task::v1::{self as pb, TaskEventType, WatchTasksResponse};
use taskgate_tokens::{Claims, VerifyError, session_key};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;
use uuid::Uuid;

use crate::{Metrics, TaskError, cache::VERSION_TTL, repository::Task};

/// Events buffered per stream before a slow reader is noticed.
pub const BUFFER: usize = 32;

/// How long a stream's lease lives without renewal; a replica that dies
/// leaves its streams counted against the user for at most this long.
pub const LEASE: Duration = Duration::from_secs(30);

/// Events read from the log per round trip.
const REPLAY_BATCH: u64 = 100;

/// The watch settings (see the crate's settings for the variables).
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Open streams allowed per user, fleet-wide.
    pub max_streams_per_user: u32,
    /// Pause between heartbeats on an idle stream.
    pub heartbeat: Duration,
    /// Pause between a stream's checks (revocation, lease, missed wake-ups).
    pub check_interval: Duration,
    /// How long a full stream buffer may wait for its reader.
    pub send_timeout: Duration,
}

/// Opens a stream if the user has room for it, and returns the user's list
/// version (creating it like the cache's read script).
/// KEYS: watchers, version. ARGV: now ms, lease end ms, limit, member, TTL.
const OPEN_SCRIPT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return {0, ''}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2] - ARGV[1])
local ver = redis.call('GET', KEYS[2])
if not ver then
  local t = redis.call('TIME')
  ver = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('SET', KEYS[2], ver, 'EX', ARGV[5])
end
return {1, ver}
";

/// A stream's periodic check: renews its lease, and answers whether its
/// session is still live (its key in the auth service's mirror exists) and
/// the user's current version.
/// KEYS: watchers, session, version. ARGV: member, lease end ms, lease ms.
const CHECK_SCRIPT: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {redis.call('EXISTS', KEYS[2]), redis.call('GET', KEYS[3]) or ''}
";

/// [`OPEN_SCRIPT`], run by its hash.
static OPEN: LazyLock<Script> = LazyLock::new(|| Script::new(OPEN_SCRIPT));
/// [`CHECK_SCRIPT`], run by its hash.
static CHECK: LazyLock<Script> = LazyLock::new(|| Script::new(CHECK_SCRIPT));

/// What a user's watchers on this replica are told.
#[derive(Debug, Clone, Copy, Default)]
struct Signal {
    /// Bumped when a new event may be in the log.
    wake: u64,
    /// Bumped when an event may have been lost: list again.
    resync: u64,
    /// Set when the replica begins to stop: end the stream.
    stopping: bool,
}

/// One user's watchers on this replica.
struct UserWatchers {
    /// Their wake-up channel.
    signal: watch::Sender<Signal>,
    /// How many there are; the channel is unsubscribed at zero.
    count: usize,
}

/// This replica's watchers, and the one subscriber connection that wakes them.
pub struct Hub {
    /// The shared pool and its circuit breaker, for log reads and scripts.
    redis: RedisHandle,
    /// The one connection subscribed to the channels of watched users.
    subscriber: SubscriberClient,
    /// `REDIS_PREFIX`.
    prefix: String,
    /// Watchers by user (bounded by the open streams).
    users: Mutex<HashMap<Uuid, UserWatchers>>,
    /// The limits.
    config: WatchConfig,
    /// Where open streams and slow-reader disconnects are counted.
    metrics: Arc<Metrics>,
    /// Source of ids for the test-visible count of streams opened.
    opened: AtomicU64,
    /// Set by [`Hub::stop`]: no stream opens any more.
    stopping: AtomicBool,
}

impl Hub {
    /// Connects the subscriber to `redis_url` (lazily, reconnecting by
    /// itself and re-subscribing what it had) and starts routing messages.
    pub async fn start(
        redis_url: &str,
        redis: RedisHandle,
        prefix: String,
        config: WatchConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Hub>> {
        let subscriber = Builder::from_config(taskgate_common::redis::config(redis_url)?)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(1);
            })
            .set_policy(fred::prelude::ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .build_subscriber_client()
            .context("building the redis subscriber")?;
        subscriber.connect();
        let _ = tokio::time::timeout(Duration::from_secs(2), subscriber.wait_for_connect()).await;
        subscriber.manage_subscriptions();
        let hub = Arc::new(Hub {
            redis,
            subscriber,
            prefix,
            users: Mutex::new(HashMap::new()),
            config,
            metrics,
            opened: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&hub);
        let mut messages = hub.subscriber.message_rx();
        let mut reconnects = hub.subscriber.reconnect_rx();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = messages.recv() => match message {
                        Ok(message) => {
                            let Some(hub) = weak.upgrade() else { return };
                            if let Some(owner) = hub.owner_of(&message.channel) {
                                hub.signal(owner, |s| s.wake += 1);
                            }
                        }
                        // Lagged: some wake-ups were dropped; wake everyone.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let Some(hub) = weak.upgrade() else { return };
                            hub.signal_all(|s| s.wake += 1);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    reconnected = reconnects.recv() => {
                        let Some(hub) = weak.upgrade() else { return };
                        if matches!(reconnected, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                            return;
                        }
                        // Messages published while disconnected are gone; the log is not.
                        hub.signal_all(|s| s.wake += 1);
                    }
                }
            }
        });
        Ok(hub)
    }

    /// The user whose notify channel is `channel`.
    fn owner_of(&self, channel: &str) -> Option<Uuid> {
        let rest = channel.strip_prefix(&self.prefix)?.strip_prefix("{u:")?;
        let (uid, suffix) = rest.split_once('}')?;
        (suffix == ":tasks:notify").then_some(())?;
        Uuid::parse_str(uid).ok()
    }

    fn key(&self, owner: Uuid, what: &str) -> String {
        keys::user_key(&self.prefix, owner, &format!("tasks:{what}"))
    }

    fn signal(&self, owner: Uuid, change: impl FnOnce(&mut Signal)) {
        if let Ok(users) = self.users.lock()
            && let Some(user) = users.get(&owner)
        {
            user.signal.send_modify(change);
        }
    }

    fn signal_all(&self, change: impl Fn(&mut Signal)) {
        if let Ok(users) = self.users.lock() {
            for user in users.values() {
                user.signal.send_modify(&change);
            }
        }
    }

    /// Tells `owner`'s watchers on this replica to list again: one of their
    /// events could not be written.
    pub fn resync(&self, owner: Uuid) {
        self.signal(owner, |s| s.resync += 1);
    }

    /// Tells every watcher on this replica to list again.
    pub fn resync_all(&self) {
        self.signal_all(|s| s.resync += 1);
    }

    /// Ends every open stream with UNAVAILABLE and refuses new ones: the
    /// replica is stopping, and its clients watch again elsewhere from the
    /// last version they received, instead of holding the drain open (a
    /// watch never ends by itself).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.signal_all(|s| s.stopping = true);
    }

    /// How many streams are open on this replica.
    pub fn open_streams(&self) -> usize {
        self.users.lock().map(|users| users.values().map(|u| u.count).sum()).unwrap_or(0)
    }

    /// How many streams this replica has opened since it started.
    pub fn streams_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Registers a watcher of `owner`, subscribing to their channel first if
    /// it is the first one here, so no publication after this returns is
    /// missed.
    async fn join(self: &Arc<Self>, owner: Uuid) -> Result<(Membership, watch::Receiver<Signal>), TaskError> {
        let (receiver, first) = {
            let mut users = self.users.lock().map_err(|_| anyhow::anyhow!("watcher table poisoned"))?;
            let user = users
                .entry(owner)
                .or_insert_with(|| UserWatchers { signal: watch::Sender::new(Signal::default()), count: 0 });
            user.count += 1;
            (user.signal.subscribe(), user.count == 1)
        };
        let membership = Membership { hub: self.clone(), owner };
        if first && let Err(e) = self.subscriber.ssubscribe(self.key(owner, "notify")).await {
            // The periodic check still finds new events, just later.
            tracing::warn!(error = %e, "subscribing to a user's task notifications");
        }
        Ok((membership, receiver))
    }

    fn leave(&self, owner: Uuid) {
        let last = match self.users.lock() {
            Ok(mut users) => match users.get_mut(&owner) {
                Some(user) => {
                    user.count -= 1;
                    if user.count == 0 {
                        users.remove(&owner);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            },
            Err(_) => false,
        };
        if last {
            let subscriber = self.subscriber.clone();
            let channel = self.key(owner, "notify");
            tokio::spawn(async move {
                if let Err(e) = subscriber.sunsubscribe(channel).await {
                    tracing::debug!(error = %e, "unsubscribing from a user's task notifications");
                }
            });
        }
    }

    /// Opens a stream of `owner`'s events after `since` (0: from now), for
    /// the caller whose verified token is `claims`.
    pub async fn open(self: &Arc<Self>, owner: Uuid, claims: Claims, since: i64) -> Result<WatchStream, TaskError> {
        if since < 0 {
            return Err(TaskError::invalid("since", "must be 0 or a version from ListTasks or an event"));
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Err(TaskError::Stopping);
        }
        if !self.redis.available() {
            return Err(TaskError::EventsUnavailable);
        }
        let member = Uuid::new_v4().to_string();
        let now = now_ms();
        let keys = vec![self.key(owner, "watchers"), self.key(owner, "ver")];
        let args = vec![
            now.to_string(),
            (now + LEASE.as_millis() as i64).to_string(),
            self.config.max_streams_per_user.to_string(),
            member.clone(),
            VERSION_TTL.as_secs().to_string(),
        ];
        let opened = OPEN.run::<Value, _>(self.redis.pool().next_connected(), keys, args).await;
        let reply = self.redis.record(opened).map_err(|e| {
            tracing::debug!(error = %e, "opening a watch stream");
            TaskError::EventsUnavailable
        })?;
        let mut parts = reply.into_array().into_iter();
        let allowed = parts.next().and_then(|v| v.as_i64()) == Some(1);
        if !allowed {
            return Err(TaskError::TooManyStreams(self.config.max_streams_per_user));
        }
        let current = parts.next().and_then(|v| v.as_i64()).unwrap_or(0);
        let (membership, signals) = self.join(owner).await?;
        // A stop between the check above and joining reached no signal of ours.
        if self.stopping.load(Ordering::SeqCst) {
            return Err(TaskError::Stopping);
        }
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.metrics.watch_opened();

        let (sender, receiver) = mpsc::channel(BUFFER);
        let (kill, killed) = oneshot::channel();
        let watcher = Watcher {
            hub: self.clone(),
            owner,
            member,
            session_key: session_key(&self.prefix, &claims.sub, &claims.sid),
            expires_at: claims.exp,
            cursor: if since > 0 { since } else { current },
            sender,
            kill: Some(kill),
            signals,
            _membership: membership,
        };
        tokio::spawn(watcher.run(since > 0));
        Ok(WatchStream { receiver, killed: Some(killed), done: false })
    }
}

/// A watcher's place in the hub; leaving is dropping it.
struct Membership {
    hub: Arc<Hub>,
    owner: Uuid,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(self.owner);
    }
}

/// Why a watcher stopped.
enum End {
    /// The client went away.
    Gone,
    /// End the stream with this status.
    Status(Status),
}

impl From<TaskError> for End {
    fn from(error: TaskError) -> Self {
        End::Status(error.into())
    }
}

/// One open stream's producer, running in its own task.
struct Watcher {
    hub: Arc<Hub>,
    owner: Uuid,
    /// This stream's member in the user's lease set.
    member: String,
    /// The session's key in the mirror of live sessions.
    session_key: String,
    /// When the access token expires (unix seconds).
    expires_at: i64,
    /// The last version sent (or the starting point).
    cursor: i64,
    /// The stream's bounded buffer.
    sender: mpsc::Sender<Result<WatchTasksResponse, Status>>,
    /// Ends the stream at once (slow reader), bypassing the full buffer.
    kill: Option<oneshot::Sender<Status>>,
    /// Wake-ups from the hub.
    signals: watch::Receiver<Signal>,
    /// Keeps the user's subscription while this stream lives.
    _membership: Membership,
}

impl Watcher {
    async fn run(mut self, replay: bool) {
        if let End::Status(status) = self.serve(replay).await {
            // The buffer may be full; do not wait long for a reader that may
            // never come.
            let _ = tokio::time::timeout(self.hub.config.send_timeout, self.sender.send(Err(status))).await;
        }
        self.hub.metrics.watch_closed();
        let redis = self.hub.redis.clone();
        let (key, member) = (self.hub.key(self.owner, "watchers"), self.member.clone());
        // In the background, even while Redis is unavailable: a command
        // buffered until the connection returns frees the slot sooner than
        // the lease expiring.
        tokio::spawn(async move {
            let _ = redis.record(redis.pool().next_connected().zrem::<i64, _, _>(key, member).await);
        });
    }

    async fn serve(&mut self, replay: bool) -> End {
        let first = *self.signals.borrow_and_update();
        if first.stopping {
            return TaskError::Stopping.into();
        }
        let mut resync = first.resync;
        if replay && let Err(end) = self.catch_up(true).await {
            return end;
        }
        let config = self.hub.config.clone();
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + config.heartbeat, config.heartbeat);
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + config.check_interval, config.check_interval);
        let expiry = Duration::from_secs(u64::try_from(self.expires_at - chrono::Utc::now().timestamp()).unwrap_or(0));
        let expired = tokio::time::sleep(expiry);
        tokio::pin!(expired);
        loop {
            let step = tokio::select! {
                changed = self.signals.changed() => {
                    if changed.is_err() {
                        return End::Gone;
                    }
                    let signal = *self.signals.borrow_and_update();
                    if signal.stopping {
                        Err(TaskError::Stopping.into())
                    } else if signal.resync != resync {
                        resync = signal.resync;
                        Err(TaskError::ListAgain("an event may have been lost").into())
                    } else {
                        self.catch_up(false).await
                    }
                }
                _ = heartbeat.tick() => {
                    let beat = WatchTasksResponse {
                        r#type: TaskEventType::Heartbeat as i32,
                        task: None,
                        version: self.cursor,
                    };
                    self.send(beat).await
                }
                _ = check.tick() => self.check().await,
                () = &mut expired => Err(TaskError::Unauthenticated(VerifyError::Expired).into()),
                () = self.sender.closed() => Err(End::Gone),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Sends every event after the cursor, checking that none is missing.
    /// `opening` also checks a log with nothing after the cursor against the
    /// user's version (a `since` from before a trim or from nowhere).
    async fn catch_up(&mut self, opening: bool) -> Result<(), End> {
        let redis = self.hub.redis.clone();
        loop {
            // What a failed read would end in, without waiting for it.
            if !redis.available() {
                return Err(TaskError::EventsUnavailable.into());
            }
            let start = format!("({}-0", self.cursor);
            let read = redis
                .pool()
                .next_connected()
                .xrange::<Vec<(String, HashMap<String, String>)>, _, _, _>(
                    self.hub.key(self.owner, "events"),
                    start,
                    "+",
                    Some(REPLAY_BATCH),
                )
                .await;
            let entries = redis.record(read).map_err(|e| {
                tracing::debug!(error = %e, "reading the task event log");
                End::from(TaskError::EventsUnavailable)
            })?;
            if entries.is_empty() {
                if opening {
                    let read =
                        redis.pool().next_connected().get::<Option<i64>, _>(self.hub.key(self.owner, "ver")).await;
                    let current = redis.record(read).map_err(|_| End::from(TaskError::EventsUnavailable))?;
                    if current != Some(self.cursor) {
                        return Err(TaskError::ListAgain("the event log does not reach back to this version").into());
                    }
                }
                return Ok(());
            }
            let full = entries.len() as u64 == REPLAY_BATCH;
            for (id, fields) in entries {
                let version = id.split('-').next().and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                if version != self.cursor + 1 {
                    return Err(TaskError::ListAgain("the event log does not reach back to this version").into());
                }
                let event = decode(version, &fields)?;
                self.send(event).await?;
                self.cursor = version;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// The periodic check: lease, revocation, and events a lost wake-up hid.
    async fn check(&mut self) -> Result<(), End> {
        let lease = self.hub.config.check_interval.max(LEASE);
        let keys =
            vec![self.hub.key(self.owner, "watchers"), self.session_key.clone(), self.hub.key(self.owner, "ver")];
        let args =
            vec![self.member.clone(), (now_ms() + lease.as_millis() as i64).to_string(), lease.as_millis().to_string()];
        let redis = &self.hub.redis;
        // A Redis that is unavailable: as for a blip below, without waiting.
        if !redis.available() {
            return Ok(());
        }
        let checked = CHECK.run::<Value, _>(redis.pool().next_connected(), keys, args).await;
        let reply = match redis.record(checked) {
            Ok(reply) => reply,
            // A Redis blip: the stream stays; the next check tries again.
            Err(e) => {
                tracing::debug!(error = %e, "checking a watch stream");
                return Ok(());
            }
        };
        let mut parts = reply.into_array().into_iter();
        if parts.next().and_then(|v| v.as_i64()) == Some(0) {
            return Err(TaskError::Unauthenticated(VerifyError::Revoked).into());
        }
        match parts.next().and_then(|v| v.as_i64()) {
            Some(current) if current == self.cursor => Ok(()),
            Some(current) if current > self.cursor => self.catch_up(false).await,
            _ => Err(TaskError::ListAgain("the event log was lost").into()),
        }
    }

    /// Puts one event in the buffer, ending the stream if the reader has not
    /// made room within the send timeout.
    async fn send(&mut self, event: WatchTasksResponse) -> Result<(), End> {
        match tokio::time::timeout(self.hub.config.send_timeout, self.sender.send(Ok(event))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => {
                self.hub.metrics.watch_slow_reader();
                if let Some(kill) = self.kill.take() {
                    let _ = kill.send(Status::resource_exhausted(
                        "the stream was ended because its reader fell behind; list again and watch from the new version",
                    ));
                }
                Err(End::Gone)
            }
        }
    }
}

/// One log entry as an event.
fn decode(version: i64, fields: &HashMap<String, String>) -> Result<WatchTasksResponse, End> {
    let data = fields.get("data").map(String::as_str).unwrap_or_default();
    let kind = fields.get("type").map(String::as_str).unwrap_or_default();
    let bad = |e: serde_json::Error| End::from(TaskError::Unexpected(anyhow::anyhow!("bad event in the log: {e}")));
    let (kind, task) = match kind {
        "created" | "updated" => {
            let task: Task = serde_json::from_str(data).map_err(bad)?;
            let kind = if kind == "created" { TaskEventType::Created } else { TaskEventType::Updated };
            (kind, crate::service::to_proto(&task))
        }
        "deleted" => {
            #[derive(serde::Deserialize)]
            struct Deleted {
                id: Uuid,
            }
            let deleted: Deleted = serde_json::from_str(data).map_err(bad)?;
            (TaskEventType::Deleted, pb::Task { id: deleted.id.to_string(), ..Default::default() })
        }
        // `reset`: events of this user may have been lost.
        _ => return Err(TaskError::ListAgain("events may have been lost during a redis outage").into()),
    };
    Ok(WatchTasksResponse { r#type: kind as i32, task: Some(task), version })
}

/// The stream a WatchTasks call answers with: the watcher's buffer, unless
/// the watcher ended it early, in which case its status comes first.
pub struct WatchStream {
    /// The watcher's bounded buffer.
    receiver: mpsc::Receiver<Result<WatchTasksResponse, Status>>,
    /// An early end (a slow reader); taken once fired or dropped.
    killed: Option<oneshot::Receiver<Status>>,
    /// Set once the stream has ended.
    done: bool,
}

impl Stream for WatchStream {
    type Item = Result<WatchTasksResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(killed) = self.killed.as_mut() {
            match Pin::new(killed).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    self.done = true;
                    self.killed = None;
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Err(_)) => self.killed = None,
                Poll::Pending => {}
            }
        }
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_events_carry_only_the_id() {
        let id = Uuid::now_v7();
        let fields = HashMap::from([
            ("type".to_owned(), "deleted".to_owned()),
            ("data".to_owned(), serde_json::json!({ "id": id }).to_string()),
        ]);
        let Ok(event) = decode(7, &fields) else { panic!("decodes") };
        assert_eq!(event.r#type, TaskEventType::Deleted as i32);
        assert_eq!(event.version, 7);
        assert_eq!(event.task.map(|t| t.id), Some(id.to_string()));
    }

    #[test]
    fn a_reset_entry_asks_the_client_to_list_again() {
        let fields = HashMap::from([("type".to_owned(), "reset".to_owned())]);
        let Err(End::Status(status)) = decode(7, &fields) else { panic!("a status") };
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    }
}
