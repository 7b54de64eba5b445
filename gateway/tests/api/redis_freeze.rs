//! A frozen Redis (SIGSTOP: its connections stay open, nothing answers)
//! under steady load through the gateway to the task service: the circuit
//! breakers of both stop requests waiting on Redis within two seconds of the
//! freeze, and put Redis back in use within two seconds of the thaw.
//!
//! (Not in the Redis Cluster pass: it freezes a private single Redis.)

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use taskgate_proto::{
    auth::v1::LogoutRequest,
    task::v1::{CreateTaskRequest, ListTasksRequest, Task},
};
use taskgate_test_support::PrivateRedis;
use tonic::Code;

use crate::helpers::{StackOptions, TestStack, bearer, metric, spawn_stack_with};

/// Concurrent callers: no fewer than the breaker's threshold of timeouts in
/// a row, so the calls caught by the freeze open it together.
const CALLERS: usize = 4;
/// The pause between one caller's requests: about 160 requests a second in
/// all, and at most a few thousand over the whole test.
const PACE: Duration = Duration::from_millis(25);
/// Load before the freeze; the first [`WARM_UP`] of it is not measured.
const BEFORE: Duration = Duration::from_secs(3);
/// Time for connections to open and caches to fill.
const WARM_UP: Duration = Duration::from_millis(500);
/// How long Redis stays frozen.
const FROZEN: Duration = Duration::from_secs(5);
/// Load after the thaw.
const AFTER: Duration = Duration::from_secs(3);
/// How soon after the freeze starts, and after it ends, latency must be normal again.
const RECOVERY: Duration = Duration::from_secs(2);
/// How much slower than normal "normal again" may be (median against median).
const SLOWDOWN: u32 = 2;

/// One request of the load.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// When it started, from the start of the load.
    at: Duration,
    /// How long it took.
    took: Duration,
    /// Its outcome.
    code: Code,
}

/// The samples that started in `[from, to)`.
fn window(samples: &[Sample], from: Duration, to: Duration) -> Vec<Sample> {
    samples.iter().filter(|s| s.at >= from && s.at < to).copied().collect()
}

/// The median and the largest latency of `samples`.
fn median_and_max(samples: &[Sample]) -> (Duration, Duration) {
    let mut took: Vec<Duration> = samples.iter().map(|s| s.took).collect();
    took.sort();
    (took[took.len() / 2], took[took.len() - 1])
}

/// Runs `CALLERS` callers through gateway A until `stop`: caller 0 creates
/// a task, the others list the first page, each every [`PACE`].
fn start_load(
    stack: &TestStack,
    token: &str,
    started: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Sample>>> {
    (0..CALLERS)
        .map(|caller| {
            let client = stack.task_a.clone();
            let (token, stop) = (token.to_owned(), stop.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut n = 0_u32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let at = started.elapsed();
                    let result = if caller == 0 {
                        let task = Task { title: format!("load {n}"), ..Default::default() };
                        let request = CreateTaskRequest { task: Some(task), ..Default::default() };
                        let mut request = bearer(request, &token);
                        request.set_timeout(Duration::from_secs(5));
                        client.clone().create_task(request).await.map(|_| ())
                    } else {
                        let mut request = bearer(ListTasksRequest::default(), &token);
                        request.set_timeout(Duration::from_secs(5));
                        client.clone().list_tasks(request).await.map(|_| ())
                    };
                    let took = started.elapsed() - at;
                    samples.push(Sample { at, took, code: result.map_or_else(|s| s.code(), |()| Code::Ok) });
                    tokio::time::sleep(PACE).await;
                }
                samples
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_a_frozen_redis_stops_slowing_requests_within_two_seconds_and_is_used_again_within_two_seconds_of_thawing()
 {
    let redis = PrivateRedis::start();
    let stack = spawn_stack_with(StackOptions {
        redis_url: Some(redis.url()),
        // The load must not meet the limits, fleet-wide or local.
        rate_limit_per_minute: 1_000_000,
        gateway: |s| s.rate_limit_per_address_per_minute = 1_000_000,
        ..Default::default()
    })
    .await;
    let alice = stack.user().await;
    // Bob logs out: his token must be refused again once Redis is back.
    let bob = stack.user().await;
    stack
        .auth_a
        .clone()
        .logout(bearer(LogoutRequest { refresh_token: String::new() }, bob.access()))
        .await
        .expect("logout");

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let callers = start_load(&stack, alice.access(), started, stop.clone());

    tokio::time::sleep(BEFORE).await;
    let frozen_at = started.elapsed();
    redis.freeze();
    tokio::time::sleep(FROZEN - Duration::from_millis(500)).await;
    let during = stack.metrics_a().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let thawed_at = started.elapsed();
    redis.thaw();
    tokio::time::sleep(RECOVERY).await;
    // Two seconds after the thaw, the task service checks revocation again
    // (while its breaker was open it could not), and gateway A's limit is
    // fleet-wide again.
    let direct = stack.task_direct().list_tasks(bearer(ListTasksRequest::default(), bob.access())).await;
    let after = stack.metrics_a().await;
    tokio::time::sleep(AFTER - RECOVERY).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for caller in callers {
        samples.extend(caller.await.expect("a caller"));
    }
    let ended_at = started.elapsed();

    let normal = window(&samples, WARM_UP, frozen_at);
    let caught = window(&samples, frozen_at, frozen_at + RECOVERY);
    let frozen = window(&samples, frozen_at + RECOVERY, thawed_at);
    let thawing = window(&samples, thawed_at, thawed_at + RECOVERY);
    let thawed = window(&samples, thawed_at + RECOVERY, ended_at);
    let (normal_p50, normal_max) = median_and_max(&normal);
    let (caught_p50, caught_max) = median_and_max(&caught);
    let (frozen_p50, frozen_max) = median_and_max(&frozen);
    let (thawing_p50, thawing_max) = median_and_max(&thawing);
    let (thawed_p50, thawed_max) = median_and_max(&thawed);
    let refused = caught.iter().filter(|s| s.code != Code::Ok).count();
    let report = format!(
        "{} requests; median / max latency: normal {normal_p50:?} / {normal_max:?} ({} requests); \
         first {RECOVERY:?} of the freeze {caught_p50:?} / {caught_max:?} ({} requests, {refused} refused); \
         rest of the freeze {frozen_p50:?} / {frozen_max:?} ({} requests); \
         first {RECOVERY:?} after the thaw {thawing_p50:?} / {thawing_max:?} ({} requests); \
         after that {thawed_p50:?} / {thawed_max:?} ({} requests)",
        samples.len(),
        normal.len(),
        caught.len(),
        frozen.len(),
        thawing.len(),
        thawed.len(),
    );
    eprintln!("{report}");

    assert!(normal.len() >= 50 && frozen.len() >= 50 && thawed.len() >= 20, "too little load: {report}");
    // The freeze did cost something before the breakers opened.
    assert!(caught_max >= taskgate_common::redis::COMMAND_TIMEOUT, "the freeze was not felt: {report}");
    // From two seconds into the freeze: every request served, as fast as normal, none waiting on Redis.
    let failed: Vec<_> = frozen.iter().chain(&thawed).filter(|s| s.code != Code::Ok).collect();
    assert!(failed.is_empty(), "requests failed outside the first two seconds: {failed:?}; {report}");
    assert!(frozen_p50 <= normal_p50 * SLOWDOWN, "slow two seconds into the freeze: {report}");
    assert!(frozen_max < taskgate_common::redis::COMMAND_TIMEOUT, "a request waited on redis: {report}");
    assert_eq!(metric(&during, "gateway_ratelimit_fallback_active"), 1.0, "the gateway limited locally");
    // From two seconds after the thaw: as fast as normal, with Redis in use again.
    assert!(thawed_p50 <= normal_p50 * SLOWDOWN, "slow two seconds after the thaw: {report}");
    assert!(thawed_max < taskgate_common::redis::COMMAND_TIMEOUT, "a request waited on redis: {report}");
    assert_eq!(metric(&after, "gateway_ratelimit_fallback_active"), 0.0, "the gateway is back on redis");
    let refused = direct.expect_err("bob's revoked session is refused by the task service again");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}
