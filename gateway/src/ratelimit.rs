//! The fleet-wide rate limit, and the session revocation check that rides in
//! the same Redis round trip.
//!
//! A decision is one `EVALSHA` of `ratelimit/window.lua`: if the caller's
//! session is not live (its key in the auth service's mirror of live
//! sessions, [`taskgate_tokens::session_key`], is absent) the answer is
//! "revoked"; otherwise a
//! sliding-window log (a ZSET of the calls that took slots, scored by Redis'
//! own clock so all replicas agree, with a count of the slots it holds beside
//! it) decides whether the request is one of the subject's
//! `RATE_LIMIT_PER_MINUTE` in the last 60 seconds. The subject is `user:<sub>`
//! for a verified access token or (Refresh) a verified refresh token, and
//! `ip:<address>` otherwise, where the address is an IPv4 address or the /64
//! of an IPv6 one ([`ClientIp::subject`]).
//!
//! **Leases.** Below a limit of 200 a minute every request makes that call.
//! From 200 up, the call takes a lease: [`lease_size`] slots of the window at
//! once (1% of the limit, at most `RATE_LIMIT_MAX_LEASE`, [`DEFAULT_MAX_LEASE`]
//! by default), which this replica spends on
//! the same subject's (and session's) next requests for at most [`LEASE_FOR`],
//! without calling Redis. A lease's slots are logged at the moment the lease
//! ends, so each stays in the window for a full minute after the last moment
//! it can be used: the fleet never lets more than the limit through in any
//! minute. A lease is one entry of the log whatever its size, so a subject
//! at 1,000 requests a second holds about 600 entries in Redis, not 60,000,
//! and taking a lease costs Redis no more than taking one slot. Slots a
//! lease leaves unused are lost for that minute, so a subject spread over N
//! replicas may be refused up to N leases early. While a lease
//! lasts the gateway does not look at the session again; each backend checks
//! revocation on every call (the task service in its cache script, the auth
//! service on its own), so a logout still takes effect at once.
//!
//! Signed-in traffic also meets a per-address ceiling
//! (`RATE_LIMIT_PER_ADDRESS_PER_MINUTE`), so free accounts made from one
//! address do not multiply the per-user limit. It lives in another Redis
//! Cluster slot than the user's window, and a second Redis call per request
//! is not worth it: each replica enforces it in memory with a keyed
//! `governor` limiter (so N replicas allow up to N times the ceiling).
//!
//! Redis failures are classified by [`taskgate_tokens::redis_failure`], the
//! same function every revocation check uses. Only while Redis is
//! unreachable (connection refused or lost, no client connected, or the
//! pool's circuit breaker open after repeated timeouts: see
//! [`taskgate_common::redis::RedisHandle`]) does the gateway fall back to an
//! in-process limiter with the same quota, per replica, and let verified
//! tokens through without the revocation check (see the README for why).
//! Any other Redis error (a timeout while the breaker is closed, OOM, BUSY,
//! READONLY, CROSSSLOT, NOSCRIPT after a failed reload...) fails closed:
//! the request is answered UNAVAILABLE / 503, because a client that can make
//! Redis slow or full must not revive its revoked tokens that way.

use std::{
    num::NonZeroU32,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use dashmap::DashMap;
use fred::prelude::*;
use governor::{
    Quota,
    clock::{Clock as _, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DefaultKeyedStateStore,
};
use http::{HeaderMap, HeaderValue, header::RETRY_AFTER};
use taskgate_common::{
    keys,
    redis::{RedisHandle, Script},
};
use taskgate_tokens::{Claims, RedisFailure, redis_failure, session_key};
use tonic::Status;

use crate::{
    auth::RefreshOf,
    metrics::Metrics,
    policy::{RateLimit, Route},
    protocol::{ClientAddr, ClientIp, Protocol, reject},
};

/// The script run once per request.
const SCRIPT: &str = include_str!("ratelimit/window.lua");
/// The rolling window the limit counts over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Most slots one lease takes from a subject's window by default
/// (`RATE_LIMIT_MAX_LEASE`): a lease left unused when its subject stops is
/// lost for the minute, so the cap bounds how early a subject spread over
/// many replicas can be refused.
pub const DEFAULT_MAX_LEASE: u32 = 100;
/// The highest `RATE_LIMIT_MAX_LEASE` accepted.
pub const MAX_LEASE: u32 = 1000;
/// How long a replica may spend a lease's slots.
pub const LEASE_FOR: Duration = Duration::from_secs(1);

/// The slots one Redis call takes for a limit of `limit` a minute: 1% of
/// it, at most `max_lease`; 1 (a call per request, no lease) below 200 or
/// when `max_lease` is 1.
pub fn lease_size(limit: u32, max_lease: u32) -> u32 {
    (limit / 100).clamp(1, max_lease.clamp(1, MAX_LEASE))
}

/// The fallback limiter's type: keyed by subject, reporting remaining capacity.
type LocalLimiter =
    governor::RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// Most keys either in-process limiter holds; idle keys are dropped every
/// minute, and when a flood of addresses fills it anyway, it is emptied
/// (each key restarts with a full budget, which only errs towards letting
/// a request through).
pub const MAX_LOCAL_KEYS: usize = 100_000;

/// A keyed in-process limiter of at most [`MAX_LOCAL_KEYS`] keys.
struct Local {
    /// Requests per key per [`WINDOW`].
    quota: Quota,
    /// The limiter; swapped for an empty one when full of busy keys.
    limiter: std::sync::RwLock<Arc<LocalLimiter>>,
    /// Checks so far; the key count is looked at every 1,024th, since
    /// counting visits every shard of the map.
    checks: std::sync::atomic::AtomicU64,
}

impl Local {
    fn new(per_minute: u32) -> Local {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
        Local {
            quota,
            limiter: std::sync::RwLock::new(Arc::new(Local::fresh(quota))),
            checks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn fresh(quota: Quota) -> LocalLimiter {
        governor::RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>()
    }

    /// Ok(remaining) or Err(time until a request is allowed) for `key`.
    fn check(&self, key: &str) -> Result<u32, Duration> {
        let Ok(limiter) = self.limiter.read().map(|l| Arc::clone(&l)) else { return Ok(0) };
        if self.checks.fetch_add(1, Ordering::Relaxed).is_multiple_of(1024) && limiter.len() >= MAX_LOCAL_KEYS {
            limiter.retain_recent();
            if limiter.len() >= MAX_LOCAL_KEYS
                && let Ok(mut slot) = self.limiter.write()
            {
                tracing::warn!(keys = MAX_LOCAL_KEYS, "in-process rate limiter full: starting it afresh");
                *slot = Arc::new(Local::fresh(self.quota));
            }
        }
        match limiter.check_key(&key.to_owned()) {
            Ok(snapshot) => Ok(snapshot.remaining_burst_capacity()),
            Err(not_until) => Err(not_until.wait_time_from(limiter.clock().now())),
        }
    }

    /// Drops idle keys.
    fn tidy(&self) {
        if let Ok(limiter) = self.limiter.read() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Slots this replica took from a subject's shared window ahead of use.
#[derive(Debug)]
struct Lease {
    /// Slots not spent yet.
    left: u32,
    /// When the lease ends: taken before the Redis call, so never later
    /// than the time its slots are logged at.
    until: Instant,
    /// What the window had left when the lease was taken, for the headers.
    remaining: u32,
    /// When the window's oldest entry leaves it, as of the lease.
    reset_at: Instant,
}

impl Lease {
    /// Whether a slot of it may still be spent at `now`.
    fn live(&self, now: Instant) -> bool {
        self.left > 0 && now < self.until
    }
}

/// This replica's leases, keyed by subject and session: at most
/// [`MAX_LOCAL_KEYS`], spent ones dropped every minute.
#[derive(Debug, Default)]
struct Leases {
    /// Subject and session id → lease.
    map: DashMap<String, Lease>,
}

impl Leases {
    /// Spends one slot of `key`'s lease, if it has one left in time.
    fn take(&self, key: &str) -> Option<Decision> {
        let mut lease = self.map.get_mut(key)?;
        let now = Instant::now();
        if !lease.live(now) {
            return None;
        }
        lease.left -= 1;
        Some(Decision {
            outcome: Outcome::Allowed,
            remaining: lease.remaining,
            reset: lease.reset_at.saturating_duration_since(now),
        })
    }

    /// Keeps `slots` more slots for `key`, usable until `until`. Slots added
    /// to a live lease end when it does: a slot is never used later than
    /// the moment Redis logged it at.
    fn add(&self, key: String, slots: u32, until: Instant, decision: &Decision) {
        let now = Instant::now();
        if self.len() >= MAX_LOCAL_KEYS && !self.map.contains_key(&key) {
            self.tidy();
            if self.len() >= MAX_LOCAL_KEYS {
                // Dropping leases only refuses early: their slots stay counted in Redis.
                tracing::warn!(keys = MAX_LOCAL_KEYS, "rate-limit leases full: dropping them all");
                self.map.clear();
            }
        }
        let fresh = Lease { left: slots, until, remaining: decision.remaining, reset_at: now + decision.reset };
        let mut lease = self.map.entry(key).or_insert_with(|| Lease { left: 0, ..fresh });
        if lease.live(now) {
            lease.left = lease.left.saturating_add(slots);
            lease.remaining = fresh.remaining;
            lease.reset_at = fresh.reset_at;
        } else {
            *lease = fresh;
        }
    }

    /// Drops spent and ended leases.
    fn tidy(&self) {
        let now = Instant::now();
        self.map.retain(|_, lease| lease.live(now));
        self.map.shrink_to_fit();
    }

    /// Leases held.
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// The configured quotas.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `RATE_LIMIT_PER_MINUTE`: requests per subject (user or address), fleet-wide.
    pub per_subject: u32,
    /// `RATE_LIMIT_PER_ADDRESS_PER_MINUTE`: signed-in requests per address, per replica.
    pub per_address: u32,
    /// `RATE_LIMIT_MAX_LEASE`: most slots one Redis call leases to the replica ([`lease_size`]).
    pub max_lease: u32,
}

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Within the limit; forward it.
    Allowed,
    /// Over the limit; answer 429 / RESOURCE_EXHAUSTED.
    Limited,
    /// The token's session has been revoked; answer 401 / UNAUTHENTICATED.
    Revoked,
    /// Redis answered with an error other than being unreachable; neither
    /// the limit nor revocation could be checked: answer 503 / UNAVAILABLE.
    Unavailable,
}

impl Outcome {
    /// The `decision` label of `gateway_ratelimit_decisions_total`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Limited => "limited",
            Outcome::Revoked => "revoked",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// A decision with what the `RateLimit` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Allowed, limited or revoked.
    pub outcome: Outcome,
    /// Requests the subject may still make in the current window.
    pub remaining: u32,
    /// Time until a slot frees (the oldest counted request leaves the window).
    pub reset: Duration,
}

/// The rate limiter shared by every request of one replica.
pub struct RateLimiter {
    /// Shared Redis pool and its circuit breaker; the window logs and
    /// revocation records live there.
    redis: RedisHandle,
    /// Key prefix shared with the auth service (`REDIS_PREFIX`).
    prefix: String,
    /// Accepted requests per subject per [`WINDOW`].
    limit: u32,
    /// `limit` and the window in milliseconds, as the script's arguments.
    limit_arg: String,
    /// See `limit_arg`.
    window_arg: String,
    /// The `RateLimit-Policy` header value.
    policy: HeaderValue,
    /// Slots one Redis call takes ([`lease_size`]).
    lease: u32,
    /// `lease` and [`LEASE_FOR`] in milliseconds, as the script's arguments.
    lease_args: [String; 2],
    /// This replica's unspent leases.
    leases: Leases,
    /// The window script.
    script: Script,
    /// The per-replica fallback used while Redis is unreachable.
    local: Local,
    /// The per-replica ceiling of signed-in requests per address.
    per_address: Local,
    /// Its quota per [`WINDOW`].
    per_address_limit: u32,
    /// True while in fallback mode, so the switch is logged once per outage.
    degraded: AtomicBool,
    /// Where rejections and fallback use are counted.
    metrics: Arc<Metrics>,
}

impl RateLimiter {
    /// A limiter of `limit` requests per minute per subject on `redis`.
    pub async fn new(redis: RedisHandle, prefix: String, limits: Limits, metrics: Arc<Metrics>) -> Arc<RateLimiter> {
        let limit = limits.per_subject.max(1);
        let lease = lease_size(limit, limits.max_lease);
        let limiter = Arc::new(RateLimiter {
            redis,
            prefix,
            limit,
            limit_arg: limit.to_string(),
            window_arg: WINDOW.as_millis().to_string(),
            policy: HeaderValue::from_str(&format!("\"default\";q={limit};w={}", WINDOW.as_secs()))
                .unwrap_or_else(|_| HeaderValue::from_static("\"default\"")),
            lease,
            lease_args: [lease.to_string(), LEASE_FOR.as_millis().to_string()],
            leases: Leases::default(),
            script: Script::new(SCRIPT),
            local: Local::new(limit),
            per_address: Local::new(limits.per_address.max(1)),
            per_address_limit: limits.per_address.max(1),
            degraded: AtomicBool::new(false),
            metrics,
        });
        spawn_local_cleanup(Arc::downgrade(&limiter));
        limiter
    }

    /// The configured limit per window.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Decides one request of `subject`, checking `session` (user id, session
    /// id) for revocation. While Redis is unavailable (not connected, or its
    /// circuit breaker open) it does not wait on Redis: the local limiter decides.
    ///
    /// With leases (a limit of 200 or more), a slot of this subject's and
    /// session's lease answers first, without Redis.
    pub async fn check(&self, subject: &str, session: Option<(&str, &str)>) -> Decision {
        let lease = (self.lease > 1).then(|| format!("{subject} {}", session.map_or("", |(_, sid)| sid)));
        if let Some(decision) = lease.as_deref().and_then(|key| self.leases.take(key)) {
            self.metrics.leased_decision();
            return decision;
        }
        if let Some(reason) = self.redis.unavailable_reason() {
            self.degrade(reason);
        } else {
            let client = self.redis.pool().next();
            let until = Instant::now() + LEASE_FOR;
            match self.redis.record(self.check_redis(client, subject, session).await) {
                Ok((decision, granted)) => {
                    if self.degraded.swap(false, Ordering::Relaxed) {
                        self.metrics.set_fallback_active(false);
                        tracing::info!("redis is back: rate limiting is fleet-wide again");
                    }
                    if let Some(key) = lease
                        && granted > 1
                    {
                        self.leases.add(key, granted - 1, until, &decision);
                    }
                    return decision;
                }
                Err(e) if redis_failure(client, &e) == RedisFailure::Unreachable => self.degrade(&e.to_string()),
                Err(e) => {
                    // Fail closed: see the module documentation.
                    tracing::warn!(error = %e, "rate-limit script failed: refusing the request");
                    return Decision { outcome: Outcome::Unavailable, remaining: 0, reset: Duration::from_secs(1) };
                }
            }
        }
        self.check_local(subject)
    }

    /// The per-address ceiling of signed-in traffic: Ok, or Err(time until
    /// a request is allowed again). In memory, this replica only.
    pub fn check_address(&self, address: &str) -> Result<(), Duration> {
        self.per_address.check(address).map(|_| ())
    }

    /// Switches to the local limiter, logging and counting the first switch of an outage.
    fn degrade(&self, why: &str) {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            self.metrics.set_fallback_active(true);
            tracing::warn!(
                reason = why,
                "redis unreachable: falling back to the per-replica rate limiter; session revocation is not checked"
            );
        }
        self.metrics.fallback_decision();
    }

    /// One `EVALSHA` (an `EVAL` when the node has not seen the script): the
    /// decision and the slots taken (more than one is a lease).
    #[tracing::instrument(name = "rate limit script", skip_all, fields(otel.kind = "client", db.system = "redis", db.operation = "EVALSHA"))]
    async fn check_redis(
        &self,
        client: &Client,
        subject: &str,
        session: Option<(&str, &str)>,
    ) -> Result<(Decision, u32), fred::error::Error> {
        let (log, slots) = window_keys(&self.prefix, subject);
        let mut keys = Vec::with_capacity(3);
        keys.extend([log, slots]);
        if let Some((uid, sid)) = session {
            keys.push(session_key(&self.prefix, uid, sid));
        }
        let member = uuid::Uuid::new_v4().simple().to_string();
        let [lease, hold] = &self.lease_args;
        let args = vec![self.limit_arg.clone(), self.window_arg.clone(), member, lease.clone(), hold.clone()];
        let reply: Vec<i64> = self.script.run(client, keys, args).await?;
        let (outcome, remaining, reset_ms, granted) = match reply.as_slice() {
            [o, r, t, g] => (*o, *r, *t, *g),
            _ => {
                return Err(fred::error::Error::new(
                    fred::error::ErrorKind::Parse,
                    "unexpected rate-limit script reply",
                ));
            }
        };
        let outcome = match outcome {
            0 => Outcome::Allowed,
            2 => Outcome::Revoked,
            _ => Outcome::Limited,
        };
        let decision = Decision {
            outcome,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(0),
            reset: Duration::from_millis(u64::try_from(reset_ms.max(0)).unwrap_or(0)),
        };
        Ok((decision, u32::try_from(granted.max(0)).unwrap_or(0)))
    }

    /// The in-process decision: same quota, this replica only, no revocation check.
    fn check_local(&self, subject: &str) -> Decision {
        let period = WINDOW / self.limit;
        match self.local.check(subject) {
            Ok(remaining) => Decision { outcome: Outcome::Allowed, remaining, reset: period },
            Err(wait) => Decision { outcome: Outcome::Limited, remaining: 0, reset: wait },
        }
    }

    /// The `RateLimit-Policy` header value (built once: it is on every response).
    pub fn policy_header(&self) -> HeaderValue {
        self.policy.clone()
    }
}

/// Forgets idle keys of the in-process limiters once a minute, for as long as the limiter lives.
fn spawn_local_cleanup(limiter: Weak<RateLimiter>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WINDOW);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(limiter) = limiter.upgrade() else { break };
            limiter.local.tidy();
            limiter.per_address.tidy();
            limiter.leases.tidy();
        }
    });
}

/// Whole seconds, rounded up.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Sets `RateLimit-Policy` and `RateLimit` on a response.
fn set_headers(headers: &mut HeaderMap, limiter: &RateLimiter, decision: &Decision) {
    headers.insert("ratelimit-policy", limiter.policy_header());
    let value = format!("\"default\";r={};t={}", decision.remaining, ceil_secs(decision.reset));
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert("ratelimit", value);
    }
}

/// The Redis keys of `subject`'s window, its log and its count of slots:
/// `user:<uid>`'s live under the user's hash tag (with the session records
/// the same script reads), `ip:<addr>`'s under the address's
/// (docs/redis-keys.md).
fn window_keys(prefix: &str, subject: &str) -> (String, String) {
    let key = |suffix| match subject.split_once(':') {
        Some(("user", uid)) => keys::user_key(prefix, uid, suffix),
        Some(("ip", addr)) => keys::addr_key(prefix, addr, suffix),
        _ => keys::addr_key(prefix, subject, suffix),
    };
    (key(WINDOW_LOG), key(WINDOW_SLOTS))
}

/// The key suffix of a subject's window log (`rl` held one entry per slot in
/// earlier releases; a new name keeps the two formats from being mixed).
pub const WINDOW_LOG: &str = "rl:log";
/// The key suffix of the count of slots a subject's window log holds.
pub const WINDOW_SLOTS: &str = "rl:slots";

/// The rate-limit middleware: one decision per request, headers on every
/// response it lets through or refuses.
pub async fn limit(State(limiter): State<Arc<RateLimiter>>, request: Request, next: Next) -> Response {
    if Route::of(&request).rate_limit == RateLimit::Exempt {
        return next.run(request).await;
    }
    let protocol = Protocol::of(request.headers());
    let claims = request.extensions().get::<Claims>();
    let address = match (request.extensions().get::<ClientIp>(), request.extensions().get::<ClientAddr>()) {
        (Some(ip), _) => ip.subject(),
        (None, Some(ClientAddr(addr))) => ClientIp(addr.ip()).subject(),
        (None, None) => "unknown".to_owned(),
    };
    let user = claims.map(|c| c.sub.as_str()).or(request.extensions().get::<RefreshOf>().map(|r| r.0.as_str()));
    if user.is_some()
        && let Err(wait) = limiter.check_address(&address)
    {
        limiter.metrics.ratelimit_decision(protocol, "limited");
        let decision = Decision { outcome: Outcome::Limited, remaining: 0, reset: wait };
        let message =
            format!("signed-in requests from one address are limited to {} per minute", limiter.per_address_limit);
        return limited(protocol, &limiter, &decision, message);
    }
    let subject = match user {
        Some(uid) => format!("user:{uid}"),
        None => format!("ip:{address}"),
    };
    let session = claims.map(|c| (c.sub.as_str(), c.sid.as_str()));
    let decision = limiter.check(&subject, session).await;
    limiter.metrics.ratelimit_decision(protocol, decision.outcome.label());
    let mut response = match decision.outcome {
        Outcome::Allowed => next.run(request).await,
        Outcome::Revoked => return reject(protocol, &Status::unauthenticated("session has been revoked")),
        Outcome::Unavailable => {
            let status = Status::unavailable("the rate limit and revocation store is failing; retry shortly");
            let mut response = reject(protocol, &status);
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(1));
            return response;
        }
        Outcome::Limited => {
            let message = format!("rate limit of {} requests per minute exceeded", limiter.limit);
            return limited(protocol, &limiter, &decision, message);
        }
    };
    set_headers(response.headers_mut(), &limiter, &decision);
    response
}

/// The RESOURCE_EXHAUSTED / 429 answer for `decision`, with `Retry-After`
/// and the `RateLimit` headers.
fn limited(protocol: Protocol, limiter: &RateLimiter, decision: &Decision, message: String) -> Response {
    let seconds = ceil_secs(decision.reset).max(1);
    let status =
        taskgate_common::status::retry_after(format!("{message}; retry in {seconds}s"), Duration::from_secs(seconds));
    let mut response = reject(protocol, &status);
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
    set_headers(response.headers_mut(), limiter, decision);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::from_millis(0)), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(59_001)), 60);
    }

    fn allowed(remaining: u32) -> Decision {
        Decision { outcome: Outcome::Allowed, remaining, reset: Duration::from_secs(60) }
    }

    #[test]
    fn a_lease_is_spent_slot_by_slot_and_not_after_it_ends() {
        let leases = Leases::default();
        leases.add("user:a s1".into(), 2, Instant::now() + LEASE_FOR, &allowed(7));
        assert_eq!(leases.take("user:a s1").map(|d| d.remaining), Some(7));
        assert!(leases.take("user:a s1").is_some());
        assert_eq!(leases.take("user:a s1"), None, "two slots, two requests");
        assert_eq!(leases.take("user:a s2"), None, "a lease belongs to one session");

        leases.add("user:b s1".into(), 5, Instant::now() - Duration::from_millis(1), &allowed(7));
        assert_eq!(leases.take("user:b s1"), None, "an ended lease is not spent");
        leases.tidy();
        assert_eq!(leases.len(), 0, "spent and ended leases are dropped");
    }

    #[test]
    fn slots_added_to_a_live_lease_end_with_it() {
        let leases = Leases::default();
        let soon = Instant::now() + Duration::from_millis(30);
        leases.add("user:a s".into(), 1, soon, &allowed(9));
        leases.add("user:a s".into(), 3, Instant::now() + LEASE_FOR, &allowed(5));
        assert_eq!(leases.take("user:a s").map(|d| d.remaining), Some(5));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(leases.take("user:a s"), None, "the later slots ended with the live lease");
    }

    #[test]
    fn leases_are_bounded() {
        let leases = Leases::default();
        let until = Instant::now() + Duration::from_secs(60);
        for i in 0..MAX_LOCAL_KEYS + 10 {
            leases.add(format!("ip:10.0.{i} "), 5, until, &allowed(1));
            assert!(leases.len() <= MAX_LOCAL_KEYS);
        }
        let last = format!("ip:10.0.{} ", MAX_LOCAL_KEYS + 9);
        assert!(leases.take(&last).is_some(), "the newest lease survives the flush");
    }

    #[test]
    fn lease_sizes() {
        let d = DEFAULT_MAX_LEASE;
        assert_eq!(lease_size(100, d), 1);
        assert_eq!(lease_size(199, d), 1);
        assert_eq!(lease_size(200, d), 2);
        assert_eq!(lease_size(5_000, d), 50);
        assert_eq!(lease_size(10_000, d), d);
        assert_eq!(lease_size(1_000_000_000, d), d);
        assert_eq!(lease_size(1_000_000_000, 1), 1, "1 turns leases off");
        assert_eq!(lease_size(1_000_000_000, u32::MAX), MAX_LEASE);
    }
}
