//! gRPC-web on the same port and paths, encoded by hand as a browser library would.

use reqwest::StatusCode;
use taskgate_proto::{
    auth::v1::{LoginRequest, LoginResponse},
    task::v1::{CreateTaskRequest, CreateTaskResponse, ListTasksRequest, ListTasksResponse, Task},
};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::{PASSWORD, grpc_web, spawn_stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_list_tasks_work_over_grpc_web() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let login = grpc_web::<_, LoginResponse>(
        &stack.http,
        &stack.url_b(""),
        "/taskgate.auth.v1.AuthService/Login",
        &LoginRequest { login: alice.username.clone(), password: PASSWORD.into(), ..Default::default() },
        &[],
    )
    .await;
    assert_eq!(login.http_status, StatusCode::OK);
    assert_eq!(login.code, Code::Ok, "{login:?}");
    let tokens = login.message.and_then(|m| m.tokens).expect("tokens over gRPC-web");
    let auth = format!("Bearer {}", tokens.access_token);

    let created = grpc_web::<_, CreateTaskResponse>(
        &stack.http,
        &stack.url_a(""),
        "/taskgate.task.v1.TaskService/CreateTask",
        &CreateTaskRequest {
            task: Some(Task { title: "web task".into(), ..Default::default() }),
            ..Default::default()
        },
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(created.code, Code::Ok, "{created:?}");

    let listed = grpc_web::<_, ListTasksResponse>(
        &stack.http,
        &stack.url_a(""),
        "/taskgate.task.v1.TaskService/ListTasks",
        &ListTasksRequest::default(),
        &[("authorization", &auth), ("x-request-id", "web-1")],
    )
    .await;
    assert_eq!(listed.code, Code::Ok, "{listed:?}");
    let tasks = listed.message.expect("a message").tasks;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].title, "web task");
    assert_eq!(listed.headers["x-request-id"], "web-1");
    assert!(listed.headers.contains_key("ratelimit"));

    // The code in the trailer frame is what /metrics counts.
    let metrics = stack.metrics_a().await;
    let sample = "grpc_server_handled_total{protocol=\"grpc-web\",grpc_type=\"unary\",grpc_service=\"taskgate.task.v1.TaskService\",grpc_method=\"ListTasks\",grpc_code=\"OK\"} 1";
    assert!(metrics.contains(sample), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_errors_carry_status_and_details() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let auth = format!("Bearer {}", alice.access());
    let reply = grpc_web::<_, CreateTaskResponse>(
        &stack.http,
        &stack.url_a(""),
        "/taskgate.task.v1.TaskService/CreateTask",
        &CreateTaskRequest { task: Some(Task::default()), ..Default::default() },
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(reply.code, Code::InvalidArgument, "{reply:?}");
    let details = reply
        .trailers
        .iter()
        .find(|(k, _)| k == "grpc-status-details-bin")
        .map(|(_, v)| v.clone())
        .or_else(|| reply.headers.get("grpc-status-details-bin").and_then(|v| v.to_str().ok()).map(str::to_owned))
        .expect("status details over gRPC-web");
    use base64::Engine as _;
    let raw =
        base64::engine::general_purpose::STANDARD_NO_PAD.decode(details.trim_end_matches('=')).expect("base64 details");
    let status = tonic::Status::with_details(Code::InvalidArgument, "x", raw.into());
    let field = status.get_error_details().bad_request().map(|b| b.field_violations[0].field.clone());
    assert_eq!(field.as_deref(), Some("title"));
}
