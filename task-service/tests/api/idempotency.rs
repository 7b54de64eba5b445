//! Idempotent create (AIP-155): a request id makes a retried create return
//! the first call's task, enforced by Postgres across callers.

use taskgate_proto::task::v1::{CreateTaskRequest, Task};
use tonic::{Code, Status};

use crate::helpers::{TestApp, TestUser, assert_code, assert_invalid, authed, spawn_app};

async fn create_with(app: &TestApp, user: &TestUser, title: &str, request_id: &str) -> Result<Task, Status> {
    let request = CreateTaskRequest {
        task: Some(Task { title: title.into(), ..Default::default() }),
        request_id: request_id.into(),
    };
    let response = app.new_client().await.create_task(authed(&user.token, request)).await?;
    Ok(response.into_inner().task.expect("task"))
}

#[tokio::test]
async fn ten_concurrent_creates_with_one_request_id_make_exactly_one_task() {
    let app = spawn_app().await;
    let user = app.user().await;
    let id = uuid::Uuid::new_v4().to_string();
    let calls: Vec<_> = (0..10).map(|_| create_with(&app, &user, "once", &id)).collect();
    let results = futures::future::join_all(calls).await;
    let tasks: Vec<Task> = results.into_iter().map(|r| r.expect("every call succeeds")).collect();
    assert!(tasks.iter().all(|t| t == &tasks[0]), "every call answers the same task");
    assert_eq!(app.count_tasks(user.id).await, 1);
    // And a later retry too.
    assert_eq!(create_with(&app, &user, "once", &id).await.expect("retry"), tasks[0]);
}

#[tokio::test]
async fn the_same_request_id_with_another_payload_is_refused() {
    let app = spawn_app().await;
    let user = app.user().await;
    create_with(&app, &user, "first", "key-1").await.expect("first");
    assert_invalid(create_with(&app, &user, "second", "key-1").await, "request_id");
    assert_eq!(app.count_tasks(user.id).await, 1);
}

#[tokio::test]
async fn request_ids_are_per_user_and_creates_without_one_are_never_merged() {
    let app = spawn_app().await;
    let (alice, bob) = (app.user().await, app.user().await);
    let a = create_with(&app, &alice, "same", "shared-key").await.expect("alice");
    let b = create_with(&app, &bob, "same", "shared-key").await.expect("bob");
    assert_ne!(a.id, b.id);
    create_with(&app, &alice, "same", "").await.expect("no id");
    create_with(&app, &alice, "same", "").await.expect("no id again");
    assert_eq!(app.count_tasks(alice.id).await, 3);
    assert_invalid(create_with(&app, &alice, "x", "has a space").await, "request_id");
}

#[tokio::test]
async fn a_request_id_older_than_24_hours_is_forgotten() {
    let app = spawn_app().await;
    let user = app.user().await;
    let first = create_with(&app, &user, "daily", "key-day").await.expect("first");
    sqlx::query("UPDATE create_requests SET created_at = now() - interval '25 hours'")
        .execute(&app.db)
        .await
        .expect("age the request id");
    let second = create_with(&app, &user, "daily", "key-day").await.expect("second");
    assert_ne!(first.id, second.id, "an expired id creates anew");
    assert_eq!(app.count_tasks(user.id).await, 2);
}

#[tokio::test]
async fn a_retry_after_the_task_was_deleted_says_so() {
    let app = spawn_app().await;
    let user = app.user().await;
    let task = create_with(&app, &user, "short-lived", "key-gone").await.expect("create");
    app.delete(&user, &task.id).await.expect("delete");
    assert_code(create_with(&app, &user, "short-lived", "key-gone").await, Code::FailedPrecondition);
}
