//! A backend connection that fails under a call: refused, or reset or closed
//! while the call is in flight. The gateways reach each backend through a
//! `CuttableProxy` that holds the backend's reply back, so a cut always
//! falls between a request reaching the backend and its answer; the
//! gateway must answer UNAVAILABLE (REST: 503 with `Retry-After`), never
//! INTERNAL or UNKNOWN, and serve again once the backend is back.

use std::{future::Future, time::Duration};

use reqwest::{StatusCode, header::RETRY_AFTER};
use serde_json::{Value, json};
use taskgate_proto::{
    auth::v1::LoginRequest,
    task::v1::{CreateTaskRequest, Task, WatchTasksRequest},
};
use taskgate_test_support::{Cut, CuttableProxy, PASSWORD};
use tonic::{Code, Status};

use crate::helpers::{StackOptions, TestStack, TestUser, bearer, spawn_stack_with, username};

/// How long any step may take.
const WAIT: Duration = Duration::from_secs(10);

/// The default stack, its gateways reaching the backends through proxies.
async fn proxied_stack() -> TestStack {
    spawn_stack_with(StackOptions { through_proxies: true, ..Default::default() }).await
}

/// The proxy in front of the auth service.
fn auth_proxy(stack: &TestStack) -> &CuttableProxy {
    stack.auth_proxy.as_ref().expect("a proxied stack")
}

/// The proxy in front of the task service.
fn task_proxy(stack: &TestStack) -> &CuttableProxy {
    stack.task_proxy.as_ref().expect("a proxied stack")
}

/// Starts `call` with `proxy` holding the backend's replies, cuts `proxy`
/// as `how` says once `marker` (bytes of the call's request) has reached
/// the backend, and returns what the call answered. The proxy is left
/// refusing connections.
async fn cut_mid_call<T: Send + 'static>(
    proxy: &CuttableProxy,
    how: Cut,
    marker: &str,
    call: impl Future<Output = T> + Send + 'static,
) -> T {
    proxy.hold_replies();
    let call = tokio::spawn(call);
    proxy.wait_until_sent(marker.as_bytes(), WAIT).await;
    proxy.cut(how);
    tokio::time::timeout(WAIT, call).await.expect("an answer soon after the cut").expect("the call's task")
}

/// Restores `proxy` and waits until `call` succeeds through the gateway again.
async fn restore_and_recover<F, Fut, T, E>(proxy: &CuttableProxy, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Debug,
{
    proxy.restore();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match call().await {
            Ok(_) => return,
            Err(e) if tokio::time::Instant::now() >= deadline => panic!("no recovery after the restore: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Asserts a gRPC answer is the gateway's UNAVAILABLE, with a retry delay.
fn assert_unavailable<T: std::fmt::Debug>(answer: Result<T, Status>, what: &str) {
    let status = answer.expect_err(what);
    assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    let details = tonic_types::StatusExt::get_error_details(&status);
    assert!(details.retry_info().is_some(), "{what}: a RetryInfo detail: {status:?}");
}

/// Asserts a REST answer is a 503 with `Retry-After` and UNAVAILABLE's body.
async fn assert_rest_unavailable(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
    let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let seconds: u64 = retry_after.as_deref().and_then(|v| v.parse().ok()).unwrap_or_default();
    assert!(seconds >= 1, "{what}: Retry-After {retry_after:?}");
    let body: Value = response.json().await.expect("a JSON error body");
    assert_eq!(body["code"], 14, "{what}: {body}");
}

/// A CreateTask for a task titled `title`.
fn create(title: &str) -> CreateTaskRequest {
    CreateTaskRequest { task: Some(Task { title: title.into(), ..Default::default() }), ..Default::default() }
}

/// A title no other call uses: the marker of one call's request.
fn marker() -> String {
    format!("cut-{}", uuid::Uuid::new_v4().simple())
}

/// CreateTask through gateway A, as `user`.
async fn create_via_grpc(stack: &TestStack, user: &TestUser) -> Result<(), Status> {
    stack.task_a.clone().create_task(bearer(create(&marker()), user.access())).await.map(|_| ())
}

/// Login through gateway A, with [`PASSWORD`].
async fn login_via_grpc(stack: &TestStack, login: &str) -> Result<(), Status> {
    let request = LoginRequest { login: login.to_owned(), password: PASSWORD.into(), ..Default::default() };
    stack.auth_a.clone().login(request).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_service_connection_cut_mid_call_answers_unavailable_not_internal() {
    let stack = proxied_stack().await;
    let proxy = task_proxy(&stack);
    let user = stack.user().await;
    for how in [Cut::Reset, Cut::Close] {
        let title = marker();
        let (client, token) = (stack.task_a.clone(), user.access().to_owned());
        let request = bearer(create(&title), &token);
        let answer = cut_mid_call(proxy, how, &title, async move { client.clone().create_task(request).await }).await;
        assert_unavailable(answer, &format!("gRPC CreateTask, connection {how:?} mid-call"));
        restore_and_recover(proxy, || create_via_grpc(&stack, &user)).await;

        let title = marker();
        let post = stack.http.post(stack.url_a("/api/v1/tasks")).bearer_auth(&token).json(&json!({"title": title}));
        let response = cut_mid_call(proxy, how, &title, post.send()).await.expect("a REST answer");
        assert_rest_unavailable(response, &format!("POST /api/v1/tasks, connection {how:?} mid-call")).await;
        restore_and_recover(proxy, || create_via_grpc(&stack, &user)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_service_connection_cut_mid_call_answers_unavailable_not_internal() {
    let stack = proxied_stack().await;
    let proxy = auth_proxy(&stack);
    let user = stack.user().await;
    // The gateway has the auth service's keys before their replies are held.
    let me = stack.http.get(stack.url_a("/api/v1/users/me")).bearer_auth(user.access());
    assert_eq!(me.send().await.expect("GET /users/me").status(), StatusCode::OK);
    let login_again = || login_via_grpc(&stack, &user.username);

    // Login, over the channel of the calls that hash a password.
    let (client, name) = (stack.auth_a.clone(), user.username.clone());
    let request = LoginRequest { login: name.clone(), password: PASSWORD.into(), ..Default::default() };
    let answer = cut_mid_call(proxy, Cut::Reset, &name, async move { client.clone().login(request).await }).await;
    assert_unavailable(answer, "gRPC Login, connection reset mid-call");
    restore_and_recover(proxy, login_again).await;

    let login = stack.http.post(stack.url_a("/api/v1/auth/login")).json(&json!({"login": name, "password": PASSWORD}));
    let response = cut_mid_call(proxy, Cut::Close, &name, login.send()).await.expect("a REST answer");
    assert_rest_unavailable(response, "POST /api/v1/auth/login, connection closed mid-call").await;
    restore_and_recover(proxy, login_again).await;

    // Refresh, over the channel of the cheap calls; the refresh token is the marker.
    let tokens = taskgate_test_support::login(&stack.auth_a, &user.username).await;
    let refresh =
        stack.http.post(stack.url_a("/api/v1/auth/refresh")).json(&json!({"refresh_token": tokens.refresh_token}));
    let response = cut_mid_call(proxy, Cut::Reset, &tokens.refresh_token, refresh.send()).await.expect("a REST answer");
    assert_rest_unavailable(response, "POST /api/v1/auth/refresh, connection reset mid-call").await;
    restore_and_recover(proxy, login_again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_cut_mid_stream_ends_unavailable_not_internal() {
    let stack = proxied_stack().await;
    let proxy = task_proxy(&stack);
    let user = stack.user().await;

    let mut stream = stack
        .task_a
        .clone()
        .watch_tasks(bearer(WatchTasksRequest { since: 0 }, user.access()))
        .await
        .expect("a watch stream")
        .into_inner();
    proxy.cut(Cut::Reset);
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends soon after the cut");
    assert_unavailable(end, "gRPC WatchTasks, connection reset mid-stream");
    restore_and_recover(proxy, || create_via_grpc(&stack, &user)).await;

    // Server-Sent Events: the stream is already a 200, so it ends with an error event.
    let mut events = stack
        .http
        .get(stack.url_a("/api/v1/tasks:watch"))
        .bearer_auth(user.access())
        .send()
        .await
        .expect("an SSE stream");
    assert_eq!(events.status(), StatusCode::OK);
    proxy.cut(Cut::Close);
    let mut text = String::new();
    tokio::time::timeout(WAIT, async {
        while let Some(chunk) = events.chunk().await.expect("the event stream") {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the event stream ends soon after the cut");
    let error = text.split("event: error\n").nth(1).expect("an error event");
    let data = error.lines().find_map(|l| l.strip_prefix("data: ")).expect("the error event's data");
    let status: Value = serde_json::from_str(data).expect("a JSON status");
    assert_eq!(status["code"], 14, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_backend_connection_answers_unavailable_and_the_gateway_recovers() {
    let stack = proxied_stack().await;
    let user = stack.user().await;
    // The gateway has the auth service's keys before the auth service goes.
    let me = stack.http.get(stack.url_a("/api/v1/users/me")).bearer_auth(user.access());
    assert_eq!(me.send().await.expect("GET /users/me").status(), StatusCode::OK);
    auth_proxy(&stack).cut(Cut::Reset);
    task_proxy(&stack).cut(Cut::Reset);

    assert_unavailable(create_via_grpc(&stack, &user).await, "gRPC CreateTask, connection refused");
    let login = LoginRequest { login: user.username.clone(), password: PASSWORD.into(), ..Default::default() };
    assert_unavailable(stack.auth_a.clone().login(login).await, "gRPC Login, connection refused");
    let post = stack.http.post(stack.url_a("/api/v1/tasks")).bearer_auth(user.access()).json(&json!({"title": "t"}));
    assert_rest_unavailable(post.send().await.expect("a REST answer"), "POST /api/v1/tasks, refused").await;
    let me = stack.http.get(stack.url_a("/api/v1/users/me")).bearer_auth(user.access());
    assert_rest_unavailable(me.send().await.expect("a REST answer"), "GET /api/v1/users/me, refused").await;
    let login =
        stack.http.post(stack.url_a("/api/v1/auth/login")).json(&json!({"login": username(), "password": PASSWORD}));
    assert_rest_unavailable(login.send().await.expect("a REST answer"), "POST /api/v1/auth/login, refused").await;

    restore_and_recover(task_proxy(&stack), || create_via_grpc(&stack, &user)).await;
    restore_and_recover(auth_proxy(&stack), || login_via_grpc(&stack, &user.username)).await;
}
