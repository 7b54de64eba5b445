//! Authentication at the edge: tokens checked before any backend is
//! reached, revocation seen at once, spoofed identity ignored, cookies with
//! CSRF protection.

use reqwest::StatusCode;
use serde_json::Value;
use taskgate_proto::{
    auth::v1::LogoutRequest,
    task::v1::{CreateTaskRequest, ListTasksRequest, ListTasksResponse, Task},
};
use tonic::{Code, Request};

use crate::helpers::{StackOptions, TestStack, TestUser, bearer, grpc_web, metric, spawn_stack, spawn_stack_with};

/// The sample counting ListTasks calls the gRPC proxy of a gateway forwarded.
const FORWARDED_LISTS: &str = "grpc_client_handled_total{grpc_type=\"unary\",grpc_service=\"taskgate.task.v1.TaskService\",grpc_method=\"ListTasks\",grpc_code=\"OK\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_is_refused_at_the_gateway_right_after_logout() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    stack.task_a.clone().list_tasks(bearer(ListTasksRequest::default(), alice.access())).await.expect("list");
    assert_eq!(metric(&stack.metrics_a().await, FORWARDED_LISTS), 1.0);

    logout_then_lists_are_refused(&stack, &alice).await;
    // Nothing after the logout was forwarded.
    assert_eq!(metric(&stack.metrics_a().await, FORWARDED_LISTS), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rate_limit_leases_a_logout_still_takes_effect_at_once() {
    // From a limit of 200 a minute, each replica spends a lease without asking Redis (and so
    // without the session check): the task service's own check refuses the token instead.
    let stack = spawn_stack_with(StackOptions { rate_limit_per_minute: 1000, ..Default::default() }).await;
    let alice = stack.user().await;
    for client in [stack.task_a.clone(), stack.task_b.clone()] {
        client.clone().list_tasks(bearer(ListTasksRequest::default(), alice.access())).await.expect("takes a lease");
    }
    logout_then_lists_are_refused(&stack, &alice).await;
    // The refusals came from the task service: gateway A forwarded them inside its lease.
    let refused_upstream = FORWARDED_LISTS.replace("grpc_code=\"OK\"", "grpc_code=\"Unauthenticated\"");
    assert!(metric(&stack.metrics_a().await, &refused_upstream) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_leases_turned_off_the_gateway_itself_refuses_a_logged_out_token() {
    let stack = spawn_stack_with(StackOptions {
        rate_limit_per_minute: 1000,
        gateway: |s| s.rate_limit_max_lease = 1,
        ..Default::default()
    })
    .await;
    let alice = stack.user().await;
    for client in [stack.task_a.clone(), stack.task_b.clone()] {
        client.clone().list_tasks(bearer(ListTasksRequest::default(), alice.access())).await.expect("list");
    }
    logout_then_lists_are_refused(&stack, &alice).await;
    let metrics = stack.metrics_a().await;
    assert_eq!(metric(&metrics, FORWARDED_LISTS), 1.0, "nothing after the logout was forwarded");
    assert_eq!(metric(&metrics, "gateway_ratelimit_leased_decisions_total"), 0.0);
}

/// Logs `user` out through gateway B; the next list through either gateway, over gRPC and REST,
/// is refused as revoked.
async fn logout_then_lists_are_refused(stack: &TestStack, user: &TestUser) {
    stack
        .auth_b
        .clone()
        .logout(bearer(LogoutRequest { refresh_token: String::new() }, user.access()))
        .await
        .expect("logout through gateway B");

    for client in [stack.task_a.clone(), stack.task_b.clone()] {
        let err = client
            .clone()
            .list_tasks(bearer(ListTasksRequest::default(), user.access()))
            .await
            .expect_err("a revoked session");
        assert_eq!(err.code(), Code::Unauthenticated);
        assert_eq!(err.message(), "session has been revoked");
    }
    let response =
        stack.http.get(stack.url_a("/api/v1/tasks")).bearer_auth(user.access()).send().await.expect("REST list");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_are_ignored() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let bob = stack.user().await;
    stack
        .task_a
        .clone()
        .create_task(bearer(
            CreateTaskRequest {
                task: Some(Task { title: "bob's secret".into(), ..Default::default() }),
                ..Default::default()
            },
            bob.access(),
        ))
        .await
        .expect("bob creates a task");

    let mut request = bearer(ListTasksRequest::default(), alice.access());
    for name in ["x-user-id", "x-authenticated-user", "x-forwarded-user", "x-taskgate-user"] {
        request.metadata_mut().insert(name, bob.user.id.parse().expect("ascii"));
    }
    let listed = stack.task_a.clone().list_tasks(request).await.expect("alice lists").into_inner();
    assert!(listed.tasks.is_empty(), "alice must only see her own tasks");

    let body: Value = stack
        .http
        .get(stack.url_b("/api/v1/tasks"))
        .bearer_auth(alice.access())
        .header("x-user-id", &bob.user.id)
        .send()
        .await
        .expect("REST list")
        .json()
        .await
        .expect("json");
    assert_eq!(body["tasks"].as_array().map(Vec::len), Some(0), "{body}");

    // With no token at all, a spoofed header gets nobody in.
    let mut request = Request::new(ListTasksRequest::default());
    request.metadata_mut().insert("x-user-id", bob.user.id.parse().expect("ascii"));
    let err = stack.task_a.clone().list_tasks(request).await.expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_invalid_tokens_are_refused_before_any_backend() {
    let stack = spawn_stack().await;
    let err = stack.task_a.clone().list_tasks(ListTasksRequest::default()).await.expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "missing bearer token");
    let err =
        stack.task_a.clone().list_tasks(bearer(ListTasksRequest::default(), "not.a.jwt")).await.expect_err("junk");
    assert_eq!(err.code(), Code::Unauthenticated);

    let response = stack.http.get(stack.url_a("/api/v1/tasks")).send().await.expect("REST list");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.expect("json error");
    assert_eq!(body["code"], 16);

    let reply = grpc_web::<_, ListTasksResponse>(
        &stack.http,
        &stack.url_a(""),
        "/taskgate.task.v1.TaskService/ListTasks",
        &ListTasksRequest::default(),
        &[("authorization", "Bearer x.y.z")],
    )
    .await;
    assert_eq!(reply.code, Code::Unauthenticated);
    assert_eq!(reply.grpc_message, "malformed token");

    let metrics = stack.metrics_a().await;
    assert!(
        !metrics
            .contains("grpc_client_handled_total{grpc_type=\"unary\",grpc_service=\"taskgate.task.v1.TaskService\""),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "grpc_server_handled_total{protocol=\"grpc\",grpc_type=\"unary\",grpc_service=\"taskgate.task.v1.TaskService\",grpc_method=\"ListTasks\",grpc_code=\"Unauthenticated\"}"
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_sessions_work_and_cookie_writes_need_the_csrf_token() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let jar = stack.cookie_login(&alice.username).await;
    let (access, csrf) = (&jar["__Host-tg_access"], jar["__Host-tg_csrf"].clone());
    let cookies = format!("__Host-tg_access={access}; __Host-tg_csrf={csrf}");

    let response =
        stack.http.get(stack.url_a("/api/v1/tasks")).header("cookie", &cookies).send().await.expect("cookie read");
    assert_eq!(response.status(), StatusCode::OK);

    let create = |csrf: Option<&str>| {
        let mut call = stack
            .http
            .post(stack.url_a("/api/v1/tasks"))
            .header("cookie", &cookies)
            .json(&serde_json::json!({"title": "from a browser"}));
        if let Some(csrf) = csrf {
            call = call.header("x-csrf-token", csrf);
        }
        call.send()
    };
    let response = create(None).await.expect("cookie write without csrf");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.expect("json error");
    assert_eq!(body["code"], 7);
    assert_eq!(create(Some("wrong")).await.expect("wrong csrf").status(), StatusCode::FORBIDDEN);
    assert_eq!(create(Some(&csrf)).await.expect("right csrf").status(), StatusCode::CREATED);

    // A Bearer header needs no CSRF token: no browser adds it on its own.
    let response = stack
        .http
        .post(stack.url_a("/api/v1/tasks"))
        .bearer_auth(alice.access())
        .json(&serde_json::json!({"title": "from a script"}))
        .send()
        .await
        .expect("bearer write");
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_on_a_public_route_is_dropped_not_refused() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let login = taskgate_proto::auth::v1::LoginRequest {
        login: alice.username.clone(),
        password: crate::helpers::PASSWORD.into(),
        ..Default::default()
    };
    stack.auth_a.clone().login(bearer(login, "expired.or.junk")).await.expect("login with a junk bearer header");
    let response = stack
        .http
        .get(stack.url_b("/.well-known/jwks.json"))
        .bearer_auth("junk")
        .header("cookie", "__Host-tg_access=junk")
        .send()
        .await
        .expect("JWKS");
    assert_eq!(response.status(), StatusCode::OK);
}
