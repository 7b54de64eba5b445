//! The gateway's `/metrics` after a known sequence of calls: the
//! go-grpc-prometheus server series (with `protocol`), the proxy's client
//! series, the REST series and the rate-limit decisions.

use reqwest::StatusCode;
use taskgate_proto::task::v1::ListTasksRequest;
use taskgate_test_support::metrics::{promtool_check, value};

use crate::helpers::{bearer, spawn_stack};

/// The labels of `method` of `service` (`auth` or `task`).
fn labels(service: &str, method: &str) -> String {
    let service = match service {
        "auth" => "taskgate.auth.v1.AuthService",
        _ => "taskgate.task.v1.TaskService",
    };
    format!("grpc_type=\"unary\",grpc_service=\"{service}\",grpc_method=\"{method}\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_sequence_of_calls_shows_in_the_grpc_http_and_limiter_series() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    stack.task_a.clone().list_tasks(bearer(ListTasksRequest::default(), alice.access())).await.expect("list");
    let response = stack.http.get(stack.url_a("/api/v1/tasks")).send().await.expect("REST list");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let text = stack.metrics_a().await;
    for (service, method) in [("auth", "Register"), ("auth", "Login"), ("task", "ListTasks")] {
        let l = labels(service, method);
        for (sample, expected) in [
            (format!("grpc_server_started_total{{protocol=\"grpc\",{l}}}"), 1.0),
            (format!("grpc_server_handled_total{{protocol=\"grpc\",{l},grpc_code=\"OK\"}}"), 1.0),
            (format!("grpc_server_handling_seconds_count{{protocol=\"grpc\",{l}}}"), 1.0),
            (format!("grpc_client_handled_total{{{l},grpc_code=\"OK\"}}"), 1.0),
        ] {
            assert_eq!(value(&text, &sample), expected, "{sample}\n{text}");
        }
    }
    for (sample, expected) in [
        ("http_server_requests_total{method=\"GET\",route=\"/api/v1/tasks\",code=\"401\"}", 1.0),
        ("http_server_request_duration_seconds_count{method=\"GET\",route=\"/api/v1/tasks\"}", 1.0),
        ("gateway_ratelimit_decisions_total{protocol=\"grpc\",decision=\"limited\"}", 0.0),
        ("gateway_ratelimit_fallback_active", 0.0),
        ("gateway_shed_total{protocol=\"grpc\"}", 0.0),
    ] {
        assert_eq!(value(&text, sample), expected, "{sample}\n{text}");
    }
    assert!(value(&text, "gateway_ratelimit_decisions_total{protocol=\"grpc\",decision=\"allowed\"}") >= 3.0, "{text}");
    assert!(!text.contains("grpc_method=\"DeleteTask\""), "no series for a method nobody called:\n{text}");
    promtool_check(&text).await;
}
