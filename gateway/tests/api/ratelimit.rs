//! The fleet-wide limit: 100 per rolling minute per user or address, across
//! both replicas and all three protocols, with the local fallback when Redis
//! is gone.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::Value;
use taskgate_proto::task::v1::{ListTasksRequest, ListTasksResponse};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::{StackOptions, TestStack, TestUser, bearer, grpc_web, metric, spawn_stack, spawn_stack_with};

/// `"default";r=<remaining>;t=<seconds>` parsed into (r, t).
fn ratelimit(value: &str) -> (u64, u64) {
    let mut r = None;
    let mut t = None;
    for part in value.split(';') {
        if let Some(v) = part.strip_prefix("r=") {
            r = v.parse().ok();
        }
        if let Some(v) = part.strip_prefix("t=") {
            t = v.parse().ok();
        }
    }
    (r.expect("r="), t.expect("t="))
}

/// One ListTasks by `user` over the protocol and replica picked by `i`;
/// returns the `ratelimit` header.
async fn list_somehow(stack: &TestStack, user: &TestUser, i: usize) -> String {
    let auth = format!("Bearer {}", user.access());
    match i % 4 {
        0 | 1 => {
            let client = if i.is_multiple_of(4) { stack.task_a.clone() } else { stack.task_b.clone() };
            let response = client
                .clone()
                .list_tasks(bearer(ListTasksRequest::default(), user.access()))
                .await
                .unwrap_or_else(|e| panic!("gRPC request {i} refused: {e:?}"));
            response.metadata().get("ratelimit").expect("ratelimit header").to_str().expect("ascii").to_owned()
        }
        2 => {
            let response =
                stack.http.get(stack.url_a("/api/v1/tasks")).bearer_auth(user.access()).send().await.expect("REST");
            assert_eq!(response.status(), StatusCode::OK, "REST request {i}");
            response.headers()["ratelimit"].to_str().expect("ascii").to_owned()
        }
        _ => {
            let reply = grpc_web::<_, ListTasksResponse>(
                &stack.http,
                &stack.url_b(""),
                "/taskgate.task.v1.TaskService/ListTasks",
                &ListTasksRequest::default(),
                &[("authorization", &auth)],
            )
            .await;
            assert_eq!(reply.code, Code::Ok, "gRPC-web request {i}");
            reply.headers["ratelimit"].to_str().expect("ascii").to_owned()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_101st_request_in_a_minute_is_refused_across_replicas_and_protocols() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    for i in 0..100 {
        let header = list_somehow(&stack, &alice, i).await;
        let (remaining, _) = ratelimit(&header);
        assert_eq!(remaining, 99 - i as u64, "request {i}: {header}");
    }

    // REST on replica B: 429 with every header and a RetryInfo detail.
    let response =
        stack.http.get(stack.url_b("/api/v1/tasks")).bearer_auth(alice.access()).send().await.expect("101st");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = response.headers().clone();
    assert_eq!(headers["ratelimit-policy"], "\"default\";q=100;w=60");
    let (remaining, reset) = ratelimit(headers["ratelimit"].to_str().expect("ascii"));
    assert_eq!(remaining, 0);
    assert!((1..=60).contains(&reset), "t={reset}");
    let retry_after: u64 = headers["retry-after"].to_str().expect("ascii").parse().expect("whole seconds");
    assert!((1..=60).contains(&retry_after), "retry-after {retry_after}");
    let body: Value = response.json().await.expect("json error");
    assert_eq!(body["code"], 8);
    assert_eq!(body["details"][0]["@type"], "type.googleapis.com/google.rpc.RetryInfo");

    // Native gRPC on replica A: RESOURCE_EXHAUSTED with RetryInfo.
    let err = stack
        .task_a
        .clone()
        .list_tasks(bearer(ListTasksRequest::default(), alice.access()))
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted);
    let delay = err.get_error_details().retry_info().and_then(|r| r.retry_delay).expect("RetryInfo");
    assert!(delay >= Duration::from_secs(1) && delay <= Duration::from_secs(60), "{delay:?}");
    assert!(err.metadata().get("retry-after").is_some());
    assert!(err.metadata().get("ratelimit-policy").is_some());

    // gRPC-web on replica B.
    let auth = format!("Bearer {}", alice.access());
    let reply = grpc_web::<_, ListTasksResponse>(
        &stack.http,
        &stack.url_b(""),
        "/taskgate.task.v1.TaskService/ListTasks",
        &ListTasksRequest::default(),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(reply.code, Code::ResourceExhausted);
    assert!(reply.headers.contains_key("retry-after"));

    // Another user is not affected.
    let bob = stack.user().await;
    stack.task_a.clone().list_tasks(bearer(ListTasksRequest::default(), bob.access())).await.expect("bob is fine");
    let metrics = stack.metrics_a().await;
    assert!(
        metric(&metrics, "gateway_ratelimit_decisions_total{protocol=\"grpc\",decision=\"limited\"}") >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_callers_are_limited_per_address() {
    let stack = spawn_stack().await;
    // Register and login are anonymous: two of this address's hundred.
    let alice = stack.user().await;
    for i in 0..98 {
        let url =
            if i % 2 == 0 { stack.url_a("/.well-known/jwks.json") } else { stack.url_b("/.well-known/jwks.json") };
        let response = stack.http.get(url).send().await.expect("JWKS");
        assert_eq!(response.status(), StatusCode::OK, "anonymous request {i}");
    }
    let response = stack.http.get(stack.url_a("/.well-known/jwks.json")).send().await.expect("JWKS");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    // Probes are never counted, and a signed-in user has a budget of their own.
    assert_eq!(stack.http.get(stack.url_a("/healthz")).send().await.expect("healthz").status(), StatusCode::OK);
    stack.task_b.clone().list_tasks(bearer(ListTasksRequest::default(), alice.access())).await.expect("alice is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_replica_limits_locally_and_recovers() {
    let mut redis = taskgate_test_support::PrivateRedis::start();
    let stack = spawn_stack_with(StackOptions { redis_url: Some(redis.url()), ..Default::default() }).await;
    let alice = stack.user().await;
    stack.task_a.clone().list_tasks(bearer(ListTasksRequest::default(), alice.access())).await.expect("with redis");

    redis.stop();
    // governor's quota refills one request every 60/100 s, so a replica
    // accepts its hundred at once plus one per 0.6 s spent sending them.
    for (name, client) in [("A", stack.task_a.clone()), ("B", stack.task_b.clone())] {
        let started = Instant::now();
        let mut accepted = 0u32;
        let refused = loop {
            match client.clone().list_tasks(bearer(ListTasksRequest::default(), alice.access())).await {
                Ok(_) => accepted += 1,
                // Until the Redis client notices the server is gone, a
                // command caught by its death fails closed (UNAVAILABLE);
                // only an unreachable Redis means "limit locally".
                Err(status)
                    if status.code() == Code::Unavailable
                        && accepted == 0
                        && started.elapsed() < Duration::from_secs(5) =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(status) => break status,
            }
            assert!(accepted <= 200, "replica {name} never refused without redis");
        };
        assert_eq!(refused.code(), Code::ResourceExhausted, "replica {name}: {refused:?}");
        let refills = (started.elapsed().as_secs_f64() / 0.6).ceil() as u32;
        assert!(
            (100..=100 + refills + 1).contains(&accepted),
            "replica {name} accepted {accepted} in {:?}",
            started.elapsed()
        );
    }
    let metrics = stack.metrics_a().await;
    assert_eq!(metric(&metrics, "gateway_ratelimit_fallback_active"), 1.0, "{metrics}");
    assert!(metric(&metrics, "gateway_ratelimit_fallback_decisions_total") >= 101.0);

    // Back to the shared limit once Redis returns (it lost its data, so the window is empty).
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let result = stack.task_a.clone().list_tasks(bearer(ListTasksRequest::default(), alice.access())).await;
        if let Ok(response) = &result {
            let header = response.metadata().get("ratelimit").expect("header").to_str().expect("ascii");
            if ratelimit(header).0 >= 90 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the gateway never went back to redis: {result:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let metrics = stack.metrics_a().await;
    assert_eq!(metric(&metrics, "gateway_ratelimit_fallback_active"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_anonymous_callers_are_told_apart_by_x_forwarded_for() {
    let (addr, _stop) = crate::helpers::spawn_gateway(|s| {
        s.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
        s.rate_limit_per_minute = 3;
    })
    .await;
    let http = reqwest::Client::new();
    let call = |forwarded_for: &'static str| {
        http.get(format!("http://{addr}/openapi.json")).header("x-forwarded-for", forwarded_for).send()
    };
    for _ in 0..3 {
        assert_ne!(call("203.0.113.9, 198.51.100.1").await.expect("call").status(), StatusCode::TOO_MANY_REQUESTS);
    }
    // The right-most address is the one the proxy saw; the left part is the client's to write.
    let refused = call("192.0.2.77, 198.51.100.1").await.expect("call");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(call("198.51.100.2").await.expect("call").status(), StatusCode::OK);
}

/// One user's gRPC ListTasks `requests` times, alternating replicas, 16 in
/// flight: how many were let through, and every refusal's code.
async fn hammer(stack: &TestStack, user: &TestUser, requests: usize) -> (usize, Vec<Code>) {
    let outcomes = futures::stream::iter(0..requests)
        .map(|i| {
            let mut client = if i % 2 == 0 { stack.task_a.clone() } else { stack.task_b.clone() };
            let request = bearer(ListTasksRequest::default(), user.access());
            async move { client.list_tasks(request).await.map(drop).map_err(|e| e.code()) }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let refused: Vec<Code> = outcomes.iter().filter_map(|o| o.err()).collect();
    (requests - refused.len(), refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_leases_both_replicas_together_let_no_more_than_the_limit_through_with_few_redis_calls() {
    const LIMIT: u32 = 1000;
    assert_eq!(gateway::ratelimit::lease_size(LIMIT, gateway::ratelimit::DEFAULT_MAX_LEASE), 10);
    let stack = spawn_stack_with(StackOptions { rate_limit_per_minute: LIMIT, ..Default::default() }).await;
    let alice = stack.user().await;

    let (allowed, refused) = hammer(&stack, &alice, 1200).await;
    assert!(allowed <= LIMIT as usize, "{allowed} requests let through a limit of {LIMIT}");
    // Unused slots of a lease are lost for the minute: a replica may refuse early, by little.
    assert!(allowed >= 900, "only {allowed} of {LIMIT} let through");
    assert!(refused.iter().all(|c| *c == Code::ResourceExhausted), "{refused:?}");

    // The window's log: one entry per script call that took slots, named
    // `<time>.<call>#<slots>`, and the count of the slots it holds beside it.
    let redis = crate::helpers::redis_client(&taskgate_test_support::redis_url()).await;
    let key = |suffix| taskgate_common::keys::user_key(&stack.redis_prefix, &alice.user.id, suffix);
    let (log, slots_key) = (key(gateway::ratelimit::WINDOW_LOG), key(gateway::ratelimit::WINDOW_SLOTS));
    let entries: Vec<String> =
        fred::prelude::SortedSetsInterface::zrange(&redis, &log, 0, -1, None, false, None, false)
            .await
            .expect("ZRANGE");
    let slots: usize = entries
        .iter()
        .map(|e| e.rsplit_once('#').and_then(|(_, n)| n.parse::<usize>().ok()).expect("an entry names its slots"))
        .sum();
    assert!(slots >= allowed && slots <= LIMIT as usize, "{slots} slots taken");
    let counted: Option<usize> = fred::prelude::KeysInterface::get(&redis, &slots_key).await.expect("GET");
    assert_eq!(counted, Some(slots), "the count beside the log is in step with it");
    let calls = entries.len();
    assert!(calls * 5 <= allowed, "{calls} entries (script calls) for {allowed} requests: leases are not used");

    let leased = metric(&stack.metrics_a().await, "gateway_ratelimit_leased_decisions_total");
    assert!(leased >= (allowed / 2 - calls) as f64 * 0.5, "{leased} requests from leases on replica A");

    // Refused on both replicas from now on, even with the count lost: it is rebuilt from the log.
    let deleted: i64 = fred::prelude::KeysInterface::del(&redis, &slots_key).await.expect("DEL");
    assert_eq!(deleted, 1);
    let (allowed, _) = hammer(&stack, &alice, 40).await;
    assert_eq!(allowed, 0);
    let counted: Option<usize> = fred::prelude::KeysInterface::get(&redis, &slots_key).await.expect("GET");
    assert_eq!(counted, Some(slots), "the count was rebuilt from the log");
}
