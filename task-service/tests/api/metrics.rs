//! `/metrics` on the admin listener: the go-grpc-prometheus series and the
//! cache's after a known sequence of calls, and label sets that no client
//! can grow.

use taskgate_proto::task::v1::{GetTaskRequest, ListTasksRequest};
use taskgate_test_support::metrics::{assert_random_paths_add_no_series, assert_samples, call_paths, channel, scrape};
use tonic::{Code, Request};
use uuid::Uuid;

use crate::helpers::{authed, spawn_app};

/// The labels of TaskService method `method`, as the server series write them.
fn task(method: &str) -> String {
    format!("grpc_type=\"unary\",grpc_service=\"taskgate.task.v1.TaskService\",grpc_method=\"{method}\"")
}

#[tokio::test]
async fn a_known_sequence_of_calls_shows_in_the_grpc_and_cache_series() {
    let app = spawn_app().await;
    let user = app.user().await;
    app.create(&user, "a").await;
    app.create(&user, "b").await;
    assert_eq!(app.first_page(&user, 0).await.len(), 2, "a miss: read from Postgres");
    assert_eq!(app.first_page(&user, 0).await.len(), 2, "a hit");
    let missing = app
        .client
        .clone()
        .get_task(authed(&user.token, GetTaskRequest { id: Uuid::new_v4().to_string() }))
        .await
        .expect_err("no such task");
    assert_eq!(missing.code(), Code::NotFound);
    let anonymous =
        app.client.clone().list_tasks(Request::new(ListTasksRequest::default())).await.expect_err("no token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    call_paths(channel(app.addr).await, &["/taskgate.task.v1.TaskService/Nope".to_owned()]).await;

    let text = scrape(app.admin).await;
    let expected = [
        (format!("grpc_server_started_total{{{}}}", task("CreateTask")), 2.0),
        (format!("grpc_server_handled_total{{{},grpc_code=\"OK\"}}", task("CreateTask")), 2.0),
        (format!("grpc_server_started_total{{{}}}", task("ListTasks")), 3.0),
        (format!("grpc_server_handled_total{{{},grpc_code=\"OK\"}}", task("ListTasks")), 2.0),
        (format!("grpc_server_handled_total{{{},grpc_code=\"Unauthenticated\"}}", task("ListTasks")), 1.0),
        (format!("grpc_server_handled_total{{{},grpc_code=\"NotFound\"}}", task("GetTask")), 1.0),
        (format!("grpc_server_handling_seconds_count{{{}}}", task("ListTasks")), 3.0),
        (
            "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"unknown\",grpc_method=\"unknown\",grpc_code=\"Unimplemented\"}".to_owned(),
            1.0,
        ),
        ("task_cache_misses_total".to_owned(), 1.0),
        ("task_cache_hits_total".to_owned(), 1.0),
        ("task_list_queries_total".to_owned(), 1.0),
        ("task_watch_streams".to_owned(), 0.0),
    ];
    assert_samples(&text, &expected).await;
    assert!(!text.contains("grpc_method=\"DeleteTask\""), "no series for a method nobody called:\n{text}");
}

#[tokio::test]
async fn ten_thousand_random_paths_add_no_label_sets() {
    let app = spawn_app().await;
    assert_random_paths_add_no_series(app.addr, app.admin, "taskgate.task.v1.TaskService").await;
}
