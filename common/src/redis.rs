//! The Redis connection every service uses: a small fred pool that reconnects
//! by itself and fails commands quickly while Redis is away, behind a
//! circuit breaker that stops requests waiting on a Redis that does not
//! answer ([`RedisHandle`]).
//!
//! `REDIS_URL` takes every form fred understands:
//! - `redis://[user:pass@]host:port[/db]`: one server;
//! - `rediss://...`: one server over TLS (rustls, the system's roots);
//! - `redis-cluster://host:port[?node=host:port&node=...]`: a Redis Cluster,
//!   from one or more seed nodes (one is enough: the others are discovered);
//!   `rediss-cluster://` over TLS;
//! - `redis-sentinel://host:port[/db]?sentinelServiceName=<name>&node=host:port`:
//!   the primary a group of sentinels names.
//!
//! On a cluster fred routes every command and script by its keys' slot,
//! follows MOVED/ASK redirections, and after a connection to a node drops
//! (a primary died and its replica took over) reconnects and reloads the slot
//! map, seeded from the configured nodes and from every node it last knew, so
//! losing the one seed node of the URL does not lose the cluster.
//!
//! # Two kinds of outage, one question: [`RedisHandle::available`]
//! A *dead* Redis (refused or dropped connections) costs nothing: the pool
//! reports no connected client, and [`fail_fast`] commands fail at once. A
//! *frozen* one (stopped, swapping, a network that drops packets) keeps its
//! connections open, so every command waits out its [`COMMAND_TIMEOUT`], and
//! a request making three Redis calls waits three times. [`RedisHandle`]
//! pairs the pool with a [`Breaker`]: after [`breaker::OPEN_AFTER_TIMEOUTS`]
//! timeouts in a row it opens, [`RedisHandle::available`] answers false
//! without calling Redis, and one background task PINGs Redis (within
//! [`PROBE_TIMEOUT`]) after a backoff of 100 ms doubling up to 1 s, closing
//! the breaker at the first answer. So a frozen Redis costs a few requests
//! one timeout each, then nothing until it answers again, and a thawed one
//! is back in use within about a second.
//!
//! While `available()` is false a caller takes its documented outage path at
//! once (the gateway's local limiter, the task service's fail-open
//! revocation check and Postgres-only lists...): an open breaker counts as
//! *unreachable*, like a lost connection. An error Redis *answers* (OOM,
//! BUSY...) is not an outage and does not open the breaker; callers keep
//! failing closed on those.
//!
//! # Use
//! One handle per pool, made at start-up and cloned into every component
//! (clones share the breaker); check [`RedisHandle::available`] before a call
//! and hand the call's result to [`RedisHandle::record`], which passes it
//! through:
//!
//! ```no_run
//! use fred::prelude::*;
//! use taskgate_common::redis::{RedisHandle, fail_fast};
//!
//! /// Whether `key` exists; `None` while Redis cannot be used.
//! async fn exists(redis: &RedisHandle, key: &str) -> Option<bool> {
//!     if !redis.available() {
//!         return None; // the outage path, at once
//!     }
//!     let client = redis.pool().next();
//!     let reply = redis.record(client.with_options(&fail_fast()).exists::<i64, _>(key).await);
//!     reply.ok().map(|n| n > 0)
//! }
//!
//! # async fn start() -> anyhow::Result<()> {
//! let redis = RedisHandle::connect("redis://127.0.0.1:6379", 4).await?;
//! let _found = exists(&redis, "some-key").await;
//! # Ok(())
//! # }
//! ```
//!
//! Code that still holds a bare [`Pool`] can make a handle of it
//! (`RedisHandle::from(pool)`), with a breaker of its own.

pub mod breaker;

use std::time::Duration;

use anyhow::Context as _;
pub use breaker::Breaker;
use fred::{
    error::ErrorKind,
    prelude::*,
    types::{MultipleKeys, MultipleValues, config::ClusterDiscoveryPolicy},
};

/// How long a command may wait for Redis before failing; bounds the latency a
/// Redis outage adds to a request.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

/// Redis clients in each service's pool; each multiplexes many commands.
pub const POOL_SIZE: usize = 4;

/// Connects a pool of `size` clients to `url`.
///
/// It does not wait for Redis to be reachable: the pool keeps reconnecting in
/// the background (exponential back-off up to 2 s). Services wrap it in a
/// [`RedisHandle`] ([`RedisHandle::connect`] does both) and check
/// [`RedisHandle::available`] to skip Redis work during an outage.
pub async fn connect(url: &str, size: usize) -> anyhow::Result<Pool> {
    let config = config(url)?;
    let pool = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(1);
            c.internal_command_timeout = Duration::from_secs(1);
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = COMMAND_TIMEOUT;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
        .build_pool(size.max(1))
        .context("building redis pool")?;
    pool.connect();
    // Give a healthy Redis a moment so the first requests find it connected;
    // an absent one is not an error here.
    let _ = tokio::time::timeout(Duration::from_secs(2), pool.wait_for_connect()).await;
    Ok(pool)
}

/// The fred configuration of `url`: on a cluster, the slot map is reloaded
/// from every node last known as well as from the URL's seeds.
pub fn config(url: &str) -> anyhow::Result<Config> {
    let mut config = Config::from_url(url).context("REDIS_URL is not a valid redis url")?;
    if config.server.is_clustered() {
        config
            .server
            .set_cluster_discovery_policy(ClusterDiscoveryPolicy::UseCache)
            .context("configuring redis cluster discovery")?;
    }
    Ok(config)
}

/// True when at least one client of the pool is connected right now. A
/// frozen Redis still counts as connected: prefer
/// [`RedisHandle::available`], which also knows about timeouts.
pub fn is_up(pool: &Pool) -> bool {
    pool.clients().iter().any(|c| c.is_connected())
}

/// Per-command options for calls on a request path: fail at once (a
/// cancelled command) when the connection is down or drops, instead of
/// waiting in fred's buffer for a reconnection until the command timeout, so
/// "Redis is unreachable" is told apart from "Redis is slow".
pub fn fail_fast() -> Options {
    Options { fail_fast: true, ..Default::default() }
}

/// How long the breaker's probe PING may take: a Redis that answers PING
/// slower than this is not ready for requests, whose commands have
/// [`COMMAND_TIMEOUT`]. Short, so one probe adds little to the next backoff.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// A Redis pool and the circuit breaker of its calls (see the module
/// documentation). Cheap to clone: clones share the pool and the breaker.
#[derive(Clone)]
pub struct RedisHandle {
    /// The pool the calls go to.
    pool: Pool,
    /// Opened by timeouts of calls on `pool`, closed by a PING answered.
    breaker: Breaker,
}

impl RedisHandle {
    /// A handle on `pool` with a closed breaker of its own, whose probe PINGs
    /// a connected client of the pool.
    pub fn new(pool: Pool) -> RedisHandle {
        let probed = pool.clone();
        let breaker = Breaker::new("redis", move || {
            let client = probed.next_connected().clone();
            Box::pin(answers_ping(client))
        });
        RedisHandle { pool, breaker }
    }

    /// [`connect`]s a pool of `size` clients to `url` and makes a handle of it.
    pub async fn connect(url: &str, size: usize) -> anyhow::Result<RedisHandle> {
        Ok(RedisHandle::new(connect(url, size).await?))
    }

    /// The pool, for the calls themselves.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The breaker (shared by every clone of this handle).
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Whether a call may be made now: a client of the pool is connected and
    /// the breaker is closed. When false, take the outage path without
    /// calling (an open breaker counts as Redis unreachable). One atomic load
    /// plus fred's connection check: no lock of ours, no round trip.
    pub fn available(&self) -> bool {
        !self.breaker.is_open() && is_up(&self.pool)
    }

    /// Why [`RedisHandle::available`] is false, for logs; `None` when it is true.
    pub fn unavailable_reason(&self) -> Option<&'static str> {
        if self.breaker.is_open() {
            Some("redis is not answering (circuit breaker open after repeated timeouts)")
        } else if !is_up(&self.pool) {
            Some("redis is not connected")
        } else {
            None
        }
    }

    /// Reports the outcome of one call to the breaker and returns it
    /// unchanged: a timeout counts towards opening it; an answer, even an
    /// error reply (OOM, BUSY, NOSCRIPT...), starts the count again; a lost
    /// or missing connection (I/O, cancelled, routing, back-pressure errors)
    /// says nothing about a frozen Redis and is left to the pool.
    pub fn record<T>(&self, result: Result<T, fred::error::Error>) -> Result<T, fred::error::Error> {
        match &result {
            Ok(_) => self.breaker.record_success(),
            Err(e) => match e.kind() {
                ErrorKind::Timeout => self.breaker.record_timeout(),
                ErrorKind::IO
                | ErrorKind::Canceled
                | ErrorKind::Routing
                | ErrorKind::Backpressure
                | ErrorKind::Config
                | ErrorKind::Url
                | ErrorKind::Tls => {}
                _ => self.breaker.record_success(),
            },
        }
        result
    }
}

impl From<Pool> for RedisHandle {
    /// [`RedisHandle::new`]: a breaker of its own for `pool`.
    fn from(pool: Pool) -> RedisHandle {
        RedisHandle::new(pool)
    }
}

/// A Lua script as every service runs one: by `EVALSHA` (fred's
/// [`fred::types::scripts::Script`], its SHA-1 computed once), so a call
/// sends the script's hash, not its text. A node that does not have it
/// cached (restarted, `SCRIPT FLUSH`, a new cluster node) answers `NOSCRIPT`,
/// and that one call is sent whole with `EVAL`, which caches it on the node
/// owning the keys' slot: the right node on a Redis Cluster too, where a
/// `SCRIPT LOAD` would reach one node only. Every key the script touches
/// must be in `keys`, all of them sharing one hash tag.
#[derive(Debug, Clone)]
pub struct Script {
    /// The hash fred sends.
    script: fred::types::scripts::Script,
    /// The text, for the `NOSCRIPT` fallback.
    lua: &'static str,
}

impl Script {
    /// The script whose source is `lua`.
    pub fn new(lua: &'static str) -> Script {
        Script { script: fred::types::scripts::Script::from_lua(lua), lua }
    }

    /// The script's SHA-1, as `EVALSHA` names it.
    pub fn sha1(&self) -> &str {
        self.script.sha1()
    }

    /// Runs the script on `client` (a pool, or one of its clients) with
    /// `keys` and `args`. fred 10 gives scripts no per-call options (a
    /// `with_options` client has no `LuaInterface`; calling `eval` on one
    /// reaches the plain client through `Deref`, options dropped), so a
    /// caller that must not wait on a disconnected Redis asks
    /// [`RedisHandle::available`] first.
    pub async fn run<R, C>(&self, client: &C, keys: Vec<String>, args: Vec<String>) -> Result<R, fred::error::Error>
    where
        R: FromValue,
        C: LuaInterface + Send + Sync,
    {
        // Converted once: a clone for the fallback then copies no string.
        let keys = MultipleKeys::from(keys);
        let args = MultipleValues::try_from(args)?;
        match self.script.evalsha(client, keys.clone(), args.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => client.eval(self.lua, keys, args).await,
            other => other,
        }
    }
}

/// Whether `client` answers a PING within [`PROBE_TIMEOUT`] (at once false
/// when it is not connected).
async fn answers_ping(client: Client) -> bool {
    let options = Options { timeout: Some(PROBE_TIMEOUT), fail_fast: true, ..Default::default() };
    let client = client.with_options(&options);
    // fred's own timeout should fire first; this one bounds the probe whatever happens.
    matches!(tokio::time::timeout(PROBE_TIMEOUT * 2, client.ping::<String>(None)).await, Ok(Ok(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_redis_url_form_is_accepted() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://user:pass@127.0.0.1:6379/2",
            "rediss://redis.example.com:6380",
            "redis-cluster://127.0.0.1:7000",
            "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002",
            "redis-sentinel://127.0.0.1:26379/0?sentinelServiceName=mymaster&node=127.0.0.1:26380",
        ] {
            assert!(config(url).is_ok(), "{url} refused");
        }
    }

    /// A handle on a pool that never connects (nothing is called).
    fn idle_handle() -> RedisHandle {
        let pool = Builder::default_centralized().build_pool(1).expect("a pool");
        RedisHandle::new(pool)
    }

    #[tokio::test]
    async fn timeouts_in_a_row_open_the_breaker_and_make_redis_unavailable() {
        let redis = idle_handle();
        let timeout = || Err::<(), _>(fred::error::Error::new(ErrorKind::Timeout, "Request timed out."));
        for _ in 0..breaker::OPEN_AFTER_TIMEOUTS {
            assert!(!redis.breaker().is_open());
            assert!(redis.record(timeout()).is_err(), "the result is passed through");
        }
        assert!(redis.breaker().is_open());
        assert!(!redis.available());
        assert_eq!(redis.unavailable_reason().map(|r| r.contains("circuit breaker")), Some(true));
        assert!(redis.clone().breaker().is_open(), "clones share the breaker");
    }

    #[tokio::test]
    async fn an_error_reply_resets_the_count_and_a_lost_connection_does_not_count() {
        let redis = idle_handle();
        let error = |kind, details: &'static str| Err::<(), _>(fred::error::Error::new(kind, details));
        for _ in 1..breaker::OPEN_AFTER_TIMEOUTS {
            let _ = redis.record(error(ErrorKind::Timeout, "Request timed out."));
        }
        // Redis answered (with an error): it is not frozen.
        let _ = redis.record(error(ErrorKind::Unknown, "BUSY Redis is busy running a script."));
        for _ in 1..breaker::OPEN_AFTER_TIMEOUTS {
            let _ = redis.record(error(ErrorKind::Timeout, "Request timed out."));
        }
        // Neither an answer nor a timeout.
        let _ = redis.record(error(ErrorKind::IO, "Connection refused."));
        let _ = redis.record(error(ErrorKind::Canceled, "Connection closed."));
        assert!(!redis.breaker().is_open());
        let _ = redis.record(error(ErrorKind::Timeout, "Request timed out."));
        assert!(redis.breaker().is_open(), "the lost connections did not start the count again");
    }

    #[test]
    fn a_cluster_url_with_one_seed_is_a_cluster() {
        let config = config("redis-cluster://127.0.0.1:7000").expect("cluster url");
        assert!(config.server.is_clustered());
    }
}
