//! Postgres restarting under the system: every call that needs it answers
//! UNAVAILABLE through the gateway on every protocol (REST: 503), from the
//! auth service and the task service alike, never INTERNAL; and the system
//! serves again once Postgres is back, with nothing but UNAVAILABLE in
//! between (connections the restart ended are told apart from bugs by the
//! one classification in `taskgate_common::fault`).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use taskgate_proto::{
    auth::v1::LoginRequest,
    task::v1::{CreateTaskRequest, Task},
};
use taskgate_test_support::{PASSWORD, PrivatePostgres};
use tonic::{Code, Status};

use crate::helpers::{StackOptions, TestStack, TestUser, bearer, spawn_stack_with};

/// How long the services may take to reconnect once Postgres is back.
const RECOVERY: Duration = Duration::from_secs(30);

/// CreateTask over native gRPC through gateway A.
async fn create_via_grpc(stack: &TestStack, user: &TestUser) -> Result<(), Status> {
    let task = Task { title: "during a restart".into(), ..Default::default() };
    let request = CreateTaskRequest { task: Some(task), ..Default::default() };
    stack.task_a.clone().create_task(bearer(request, user.access())).await.map(|_| ())
}

/// Login over native gRPC through gateway A.
async fn login_via_grpc(stack: &TestStack, user: &TestUser) -> Result<(), Status> {
    let request = LoginRequest { login: user.username.clone(), password: PASSWORD.into(), ..Default::default() };
    stack.auth_a.clone().login(request).await.map(|_| ())
}

/// `POST /api/v1/tasks` and `POST /api/v1/auth/login` through gateway A: their statuses and
/// error bodies.
async fn rest_calls(stack: &TestStack, user: &TestUser) -> Vec<(&'static str, StatusCode, Value)> {
    let create = stack
        .http
        .post(stack.url_a("/api/v1/tasks"))
        .bearer_auth(user.access())
        .json(&json!({"title": "during a restart"}));
    let login =
        stack.http.post(stack.url_a("/api/v1/auth/login")).json(&json!({"login": user.username, "password": PASSWORD}));
    let mut answers = Vec::new();
    for (what, request) in [("POST /api/v1/tasks", create), ("POST /api/v1/auth/login", login)] {
        let response = request.send().await.expect("a REST answer");
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        answers.push((what, status, body));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_answers_unavailable_from_every_service_and_the_system_recovers() {
    let mut postgres = PrivatePostgres::start();
    // The recovery loop below calls far more often than the default limit allows.
    let options = StackOptions {
        postgres_admin_url: Some(postgres.admin_url()),
        rate_limit_per_minute: 100_000,
        ..Default::default()
    };
    let stack = spawn_stack_with(options).await;
    let user = stack.user().await;
    // Both services hold pooled connections, which the stop will end under them.
    create_via_grpc(&stack, &user).await.expect("a create before the restart");
    login_via_grpc(&stack, &user).await.expect("a login before the restart");

    postgres.stop();
    for (what, answer) in [
        ("gRPC CreateTask (task service)", create_via_grpc(&stack, &user).await),
        ("gRPC Login (auth service)", login_via_grpc(&stack, &user).await),
    ] {
        let status = answer.expect_err(what);
        assert_eq!(status.code(), Code::Unavailable, "{what} without Postgres: {status:?}");
    }
    for (what, status, body) in rest_calls(&stack, &user).await {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what} without Postgres: {body}");
        assert_eq!(body["code"], 14, "{what}: {body}");
    }

    // Until both services have reconnected, every failure is UNAVAILABLE.
    postgres.restart();
    let deadline = tokio::time::Instant::now() + RECOVERY;
    loop {
        let create = create_via_grpc(&stack, &user).await;
        let login = login_via_grpc(&stack, &user).await;
        for answer in [&create, &login] {
            if let Err(status) = answer {
                assert_eq!(status.code(), Code::Unavailable, "while Postgres comes back: {status:?}");
            }
        }
        if create.is_ok() && login.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no recovery: {create:?} {login:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (what, status, body) in rest_calls(&stack, &user).await {
        assert!(status.is_success(), "{what} after the restart: {status} {body}");
    }
}
