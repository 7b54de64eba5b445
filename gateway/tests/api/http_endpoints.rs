//! The plain HTTP side of the port: CORS, health, readiness, metrics and request ids.

use reqwest::StatusCode;
use serde_json::Value;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::{StackOptions, spawn_stack, spawn_stack_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_without_a_token_and_allow_trace_context() {
    let stack = spawn_stack().await;
    for (path, headers) in [
        ("/api/v1/tasks", "authorization,content-type,x-csrf-token,traceparent,tracestate"),
        (
            "/taskgate.task.v1.TaskService/ListTasks",
            "x-grpc-web,content-type,x-user-agent,grpc-timeout,traceparent,tracestate",
        ),
    ] {
        let response = stack
            .http
            .request(reqwest::Method::OPTIONS, stack.url_a(path))
            .header("origin", "http://app.example.test")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", headers)
            .send()
            .await
            .expect("preflight");
        assert!(response.status().is_success(), "{path}: {}", response.status());
        let h = response.headers();
        assert_eq!(h["access-control-allow-origin"], "http://app.example.test");
        let allowed = h["access-control-allow-headers"].to_str().expect("ascii").to_owned();
        for wanted in headers.split(',') {
            assert!(allowed.contains(wanted), "{wanted} not in {allowed}");
        }
    }
    let response = stack
        .http
        .get(stack.url_a("/.well-known/jwks.json"))
        .header("origin", "http://app.example.test")
        .send()
        .await
        .expect("cross-origin GET");
    let exposed = response.headers()["access-control-expose-headers"].to_str().expect("ascii").to_owned();
    for wanted in ["grpc-status", "grpc-message", "grpc-status-details-bin", "ratelimit", "retry-after", "x-request-id"]
    {
        assert!(exposed.contains(wanted), "{wanted} not in {exposed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer() {
    let stack = spawn_stack().await;
    let response = stack.http.get(stack.url_a("/healthz")).send().await.expect("healthz");
    assert_eq!(response.status(), StatusCode::OK);
    let response = stack.http.get(stack.url_b("/readyz")).send().await.expect("readyz");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body, serde_json::json!({"auth": true, "task": true, "redis": true}));

    stack.http.get(stack.url_a("/api/v1/tasks")).send().await.expect("a 401 to count");
    let metrics = stack.metrics_a().await;
    for wanted in [
        "http_server_requests_total{method=\"GET\",route=\"/api/v1/tasks\",code=\"401\"} 1",
        "http_server_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/tasks\",le=\"+Inf\"} 1",
        "# TYPE gateway_ratelimit_decisions_total counter",
        "gateway_ratelimit_fallback_active 0",
    ] {
        assert!(metrics.contains(wanted), "{wanted} missing from\n{metrics}");
    }
    taskgate_test_support::metrics::promtool_check(&metrics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_a_backend_is_down() {
    let stack =
        spawn_stack_with(StackOptions { task_url: Some("http://127.0.0.1:9".into()), ..Default::default() }).await;
    let response = stack.http.get(stack.url_a("/readyz")).send().await.expect("readyz");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["task"], false);
    assert_eq!(body["auth"], true);

    // The gateway's own grpc.health.v1 follows the backends too.
    let health = HealthClient::new(crate::helpers::lazy_channel(stack.gateway_a));
    let status = |service: &'static str| {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest { service: service.into() })
                .await
                .expect("health check")
                .into_inner()
                .status
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while status("taskgate.task.v1.TaskService").await != 2 {
        assert!(std::time::Instant::now() < deadline, "TaskService never reported NOT_SERVING");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status("taskgate.auth.v1.AuthService").await, 1);
    assert_eq!(status("").await, 1);
    assert_eq!(stack.http.get(stack.url_a("/healthz")).send().await.expect("healthz").status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_and_bad_ones_replaced() {
    let stack = spawn_stack().await;
    let response =
        stack.http.get(stack.url_a("/healthz")).header("x-request-id", "abc-123").send().await.expect("healthz");
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    for bad in [None, Some("has spaces in it")] {
        let mut call = stack.http.get(stack.url_a("/api/v1/tasks"));
        if let Some(bad) = bad {
            call = call.header("x-request-id", bad);
        }
        let response = call.send().await.expect("request");
        let id = response.headers()["x-request-id"].to_str().expect("ascii");
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id} should be a fresh UUID");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_folder_is_served_under_demo_when_present() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("assets")).expect("assets folder");
    std::fs::write(dir.path().join("index.html"), "<h1>demo</h1>").expect("index");
    std::fs::write(dir.path().join("assets/demo.js"), "console.log(1)").expect("script");
    let root = dir.path().to_owned();
    let (addr, _stop) = crate::helpers::spawn_gateway(|s| s.demo_dir = root).await;
    let http = reqwest::Client::new();
    let page = http.get(format!("http://{addr}/demo/")).send().await.expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"].to_str().expect("ascii").starts_with("text/html"));
    assert_eq!(page.text().await.expect("body"), "<h1>demo</h1>");
    let script = http.get(format!("http://{addr}/demo/assets/demo.js")).send().await.expect("script");
    assert!(script.headers()["content-type"].to_str().expect("ascii").starts_with("text/javascript"));
    let escape = http.get(format!("http://{addr}/demo/..%2F..%2Fetc%2Fpasswd")).send().await.expect("escape");
    assert_eq!(escape.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_origins_may_send_cookies_and_others_get_no_cors_grant() {
    let (addr, _stop) =
        crate::helpers::spawn_gateway(|s| s.cors_allowed_origins = "https://app.example.test, https://b.test".into())
            .await;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("http://{addr}/api/v1/tasks"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,x-csrf-token")
            .send()
    };
    let allowed = preflight("https://app.example.test").await.expect("preflight");
    assert!(allowed.status().is_success());
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://app.example.test");
    assert_eq!(allowed.headers()["access-control-allow-credentials"], "true");
    let other = preflight("https://evil.test").await.expect("preflight");
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_demo_folder_the_embedded_demo_is_served() {
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/web/dist/index.html");
    let Ok(expected) = std::fs::read_to_string(&built) else {
        // No demo was built into this checkout, so none is embedded either.
        assert!(gateway::edge::DEMO_FILES.is_empty());
        return;
    };
    let (addr, _stop) = crate::helpers::spawn_gateway(|s| s.demo_dir = "/nonexistent/demo".into()).await;
    let page = reqwest::get(format!("http://{addr}/demo/")).await.expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.text().await.expect("body"), expected);
    let missing = reqwest::get(format!("http://{addr}/demo/nope.js")).await.expect("missing");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}
