//! WatchTasks through the gateways: native gRPC across two gateways and two
//! task-service replicas, Server-Sent Events with `Last-Event-ID` resume, the
//! rate limit counting a stream once, the per-replica stream bound, and the
//! REST forms of etags and idempotency keys.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use taskgate_proto::task::v1::{CreateTaskRequest, Task, TaskEventType, WatchTasksRequest, WatchTasksResponse};
use tonic::{Code, Streaming};

use crate::helpers::{StackOptions, TestStack, TestUser, bearer, spawn_stack, spawn_stack_with};

/// The next non-heartbeat event, within 5 s.
async fn next_event(stream: &mut Streaming<WatchTasksResponse>) -> WatchTasksResponse {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("an event within 5 s")
            .expect("no error")
            .expect("the stream is open");
        if event.r#type != TaskEventType::Heartbeat as i32 {
            return event;
        }
    }
}

async fn create_via_b(stack: &TestStack, user: &TestUser, title: &str) -> Task {
    let request =
        CreateTaskRequest { task: Some(Task { title: title.into(), ..Default::default() }), ..Default::default() };
    stack
        .task_b
        .clone()
        .create_task(bearer(request, user.access()))
        .await
        .expect("create")
        .into_inner()
        .task
        .expect("task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_task_service_replicas_and_two_gateways_deliver_across_each_other() {
    let stack = spawn_stack_with(StackOptions { task_replicas: 2, ..Default::default() }).await;
    let user = stack.user().await;
    // Watching through gateway A (task replica 1), writing through gateway B
    // (task replica 2), and the other way round.
    let mut on_a = stack
        .task_a
        .clone()
        .watch_tasks(bearer(WatchTasksRequest { since: 0 }, user.access()))
        .await
        .expect("watch a")
        .into_inner();
    let mut on_b = stack
        .task_b
        .clone()
        .watch_tasks(bearer(WatchTasksRequest { since: 0 }, user.access()))
        .await
        .expect("watch b")
        .into_inner();
    let written = create_via_b(&stack, &user, "through b").await;
    let request = CreateTaskRequest {
        task: Some(Task { title: "through a".into(), ..Default::default() }),
        ..Default::default()
    };
    stack.task_a.clone().create_task(bearer(request, user.access())).await.expect("create through a");
    for stream in [&mut on_a, &mut on_b] {
        let first = next_event(stream).await;
        assert_eq!(first.r#type, TaskEventType::Created as i32);
        assert_eq!(first.task.as_ref().map(|t| t.id.as_str()), Some(written.id.as_str()));
        let second = next_event(stream).await;
        assert_eq!(second.task.map(|t| t.title), Some("through a".to_owned()));
    }
}

/// Reads SSE frames from `response` until `count` events (not comments) came.
async fn sse_events(mut response: reqwest::Response, count: usize) -> Vec<(String, String, Value)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    while events.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("an SSE chunk within 5 s")
            .expect("a chunk")
            .expect("the stream is open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !event.is_empty() {
                events.push((id, event, serde_json::from_str(&data).expect("JSON data")));
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_deliver_changes_and_resume_with_last_event_id() {
    let stack = spawn_stack().await;
    let user = stack.user().await;
    let auth = format!("Bearer {}", user.access());
    let listed: Value = stack
        .http
        .get(stack.url_a("/api/v1/tasks"))
        .header("authorization", &auth)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let version = listed["version"].as_str().expect("a version string").to_owned();

    let response = stack
        .http
        .get(stack.url_a(&format!("/api/v1/tasks:watch?since={version}")))
        .header("authorization", &auth)
        .send()
        .await
        .expect("watch");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let created = create_via_b(&stack, &user, "over sse").await;
    let events = sse_events(response, 1).await;
    let (id, kind, data) = &events[0];
    assert_eq!(kind, "created");
    assert_eq!(data["task"]["id"], created.id.as_str());
    assert_eq!(data["task"]["etag"], created.etag.as_str());
    assert_eq!(id.parse::<i64>().expect("numeric id"), version.parse::<i64>().expect("numeric") + 1);

    // Two writes while disconnected; EventSource reconnects with Last-Event-ID.
    create_via_b(&stack, &user, "away 1").await;
    create_via_b(&stack, &user, "away 2").await;
    let response = stack
        .http
        .get(stack.url_b("/api/v1/tasks:watch"))
        .header("authorization", &auth)
        .header("last-event-id", id.as_str())
        .send()
        .await
        .expect("resume");
    let replayed = sse_events(response, 2).await;
    let titles: Vec<&str> = replayed.iter().map(|(_, _, d)| d["task"]["title"].as_str().unwrap_or_default()).collect();
    assert_eq!(titles, ["away 1", "away 2"]);

    // A version the log cannot serve ends with an `error` event asking to list again.
    let response = stack
        .http
        .get(stack.url_a("/api/v1/tasks:watch?since=1"))
        .header("authorization", &auth)
        .send()
        .await
        .expect("watch from nowhere");
    let (_, kind, data) = sse_events(response, 1).await.remove(0);
    assert_eq!(kind, "error");
    assert_eq!(data["code"], 9, "FAILED_PRECONDITION: {data}");
    assert_eq!(data["details"][0]["reason"], "LIST_AGAIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_stream_counts_once_against_the_rate_limit() {
    let stack = spawn_stack_with(StackOptions { rate_limit_per_minute: 4, ..Default::default() }).await;
    let user = stack.user().await; // register + login are anonymous requests
    let mut stream = stack
        .task_a
        .clone()
        .watch_tasks(bearer(WatchTasksRequest { since: 0 }, user.access()))
        .await
        .expect("watch")
        .into_inner();
    for i in 0..3 {
        create_via_b(&stack, &user, &format!("t{i}")).await;
    }
    for _ in 0..3 {
        next_event(&mut stream).await; // delivered events cost nothing
    }
    let request =
        CreateTaskRequest { task: Some(Task { title: "fifth".into(), ..Default::default() }), ..Default::default() };
    let refused = stack.task_b.clone().create_task(bearer(request, user.access())).await.expect_err("over the limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "the stream was the 1st request, the creates the 2nd-4th");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_refuses_streams_beyond_its_replica_limit_on_every_protocol() {
    let stack = spawn_stack_with(StackOptions { max_watch_streams: 1, ..Default::default() }).await;
    let (alice, bob) = (stack.user().await, stack.user().await);
    let _open =
        stack.task_a.clone().watch_tasks(bearer(WatchTasksRequest { since: 0 }, alice.access())).await.expect("first");
    let refused = stack
        .task_a
        .clone()
        .watch_tasks(bearer(WatchTasksRequest { since: 0 }, bob.access()))
        .await
        .expect_err("second");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    // Refused at the gateway: no backend call, so none is counted (the open
    // stream is counted when it ends).
    let text = stack.metrics_a().await;
    assert!(!text.contains("grpc_client_handled_total{grpc_type=\"server_stream\""), "{text}");
    let sse = stack
        .http
        .get(stack.url_a("/api/v1/tasks:watch"))
        .header("authorization", format!("Bearer {}", bob.access()))
        .send()
        .await
        .expect("sse");
    assert_eq!(sse.status(), StatusCode::TOO_MANY_REQUESTS);
    // The other replica has its own slots.
    assert!(stack.task_b.clone().watch_tasks(bearer(WatchTasksRequest { since: 0 }, bob.access())).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_etags_give_412_on_a_stale_if_match_and_304_on_a_current_if_none_match() {
    let stack = spawn_stack().await;
    let user = stack.user().await;
    let auth = format!("Bearer {}", user.access());
    let created = stack
        .http
        .post(stack.url_a("/api/v1/tasks"))
        .header("authorization", &auth)
        .json(&json!({ "title": "shared" }))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::CREATED);
    let etag = created.headers()["etag"].to_str().expect("ascii").to_owned();
    let task: Value = created.json().await.expect("json");
    assert_eq!(etag, format!("\"{}\"", task["etag"].as_str().expect("etag field")));
    let url = stack.url_a(&format!("/api/v1/tasks/{}", task["id"].as_str().expect("id")));

    let not_modified =
        stack.http.get(&url).header("authorization", &auth).header("if-none-match", &etag).send().await.expect("get");
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);

    let first = stack
        .http
        .patch(&url)
        .header("authorization", &auth)
        .header("if-match", &etag)
        .json(&json!({ "title": "laptop" }))
        .send()
        .await
        .expect("patch");
    assert_eq!(first.status(), StatusCode::OK);
    let new_etag = first.headers()["etag"].to_str().expect("ascii").to_owned();
    assert_ne!(new_etag, etag);
    let stale = stack
        .http
        .put(&url)
        .header("authorization", &auth)
        .header("if-match", &etag)
        .json(&json!({ "title": "phone" }))
        .send()
        .await
        .expect("put");
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let body: Value = stale.json().await.expect("json error");
    assert_eq!(body["code"], 10, "ABORTED: {body}");
    let stale_field = stack
        .http
        .patch(&url)
        .header("authorization", &auth)
        .json(&json!({ "title": "phone", "etag": task["etag"] }))
        .send()
        .await
        .expect("patch with etag field");
    assert_eq!(stale_field.status(), StatusCode::PRECONDITION_FAILED);
    let stale_delete =
        stack.http.delete(&url).header("authorization", &auth).header("if-match", &etag).send().await.expect("delete");
    assert_eq!(stale_delete.status(), StatusCode::PRECONDITION_FAILED);
    let changed =
        stack.http.get(&url).header("authorization", &auth).header("if-none-match", &etag).send().await.expect("get");
    assert_eq!(changed.status(), StatusCode::OK);
    let delete = stack
        .http
        .delete(&url)
        .header("authorization", &auth)
        .header("if-match", &new_etag)
        .send()
        .await
        .expect("delete");
    assert_eq!(delete.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_a_retried_rest_create_return_the_first_task() {
    let stack = spawn_stack().await;
    let user = stack.user().await;
    let auth = format!("Bearer {}", user.access());
    let post = |title: &'static str| {
        stack
            .http
            .post(stack.url_b("/api/v1/tasks"))
            .header("authorization", &auth)
            .header("idempotency-key", "rest-key-1")
            .json(&json!({ "title": title }))
            .send()
    };
    let first: Value = post("once").await.expect("first").json().await.expect("json");
    let second: Value = post("once").await.expect("retry").json().await.expect("json");
    assert_eq!(first["id"], second["id"]);
    let other = post("different").await.expect("other payload");
    assert_eq!(other.status(), StatusCode::BAD_REQUEST);
    let list: Value = stack
        .http
        .get(stack.url_a("/api/v1/tasks"))
        .header("authorization", &auth)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["tasks"].as_array().map(Vec::len), Some(1));
}
