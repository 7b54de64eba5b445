//! Create, get, update (full and masked) and delete, the happy paths.

use taskgate_proto::task::v1::{Task, TaskStatus};
use tonic::Code;

use crate::helpers::{assert_code, spawn_app};

#[tokio::test]
async fn create_fills_in_defaults_and_get_returns_the_same_task() {
    let app = spawn_app().await;
    let user = app.user().await;
    let created = app.create(&user, "  buy milk  ").await;
    assert_eq!(created.title, "buy milk", "the title is trimmed");
    assert_eq!(created.description, "");
    assert_eq!(created.status, TaskStatus::Todo as i32, "unspecified status becomes TODO");
    assert!(uuid::Uuid::parse_str(&created.id).is_ok());
    assert!(created.created_at.is_some() && created.updated_at.is_some());
    let fetched = app.get(&user, &created.id).await.expect("get");
    assert_eq!(fetched, created);
}

#[tokio::test]
async fn create_keeps_a_given_description_and_status() {
    let app = spawn_app().await;
    let user = app.user().await;
    let task = Task {
        title: "write report".into(),
        description: "quarterly, with charts".into(),
        status: TaskStatus::InProgress as i32,
        ..Default::default()
    };
    let created = app.try_create(&user, task).await.expect("create");
    assert_eq!(created.description, "quarterly, with charts");
    assert_eq!(created.status, TaskStatus::InProgress as i32);
}

#[tokio::test]
async fn update_without_a_mask_replaces_every_field_and_absent_ones_take_defaults() {
    let app = spawn_app().await;
    let user = app.user().await;
    let created = app
        .try_create(
            &user,
            Task {
                title: "old".into(),
                description: "old text".into(),
                status: TaskStatus::Done as i32,
                ..Default::default()
            },
        )
        .await
        .expect("create");
    let replaced = app
        .update(&user, Task { id: created.id.clone(), title: "new".into(), ..Default::default() }, None)
        .await
        .expect("update");
    assert_eq!(replaced.title, "new");
    assert_eq!(replaced.description, "");
    assert_eq!(replaced.status, TaskStatus::Todo as i32);
    assert_eq!(replaced.created_at, created.created_at);
    let at = |t: &Task| t.updated_at.map(|ts| (ts.seconds, ts.nanos)).expect("updated_at");
    assert!(at(&replaced) > at(&created), "updated_at moves forward");
    let star = app
        .update(&user, Task { id: created.id.clone(), title: "star".into(), ..Default::default() }, Some(&["*"]))
        .await
        .expect("update with *");
    assert_eq!(star.title, "star");
    assert_eq!(app.get(&user, &created.id).await.expect("get"), star);
}

#[tokio::test]
async fn update_with_a_mask_changes_only_the_named_fields() {
    let app = spawn_app().await;
    let user = app.user().await;
    let created = app
        .try_create(&user, Task { title: "keep".into(), description: "keep too".into(), ..Default::default() })
        .await
        .expect("create");
    let patch =
        Task { id: created.id.clone(), status: TaskStatus::Done as i32, title: String::new(), ..Default::default() };
    let patched = app.update(&user, patch, Some(&["status"])).await.expect("patch");
    assert_eq!(patched.status, TaskStatus::Done as i32);
    assert_eq!(patched.title, "keep", "an empty title outside the mask is ignored");
    assert_eq!(patched.description, "keep too");
    let patch =
        Task { id: created.id.clone(), title: "renamed".into(), description: "new".into(), ..Default::default() };
    let patched = app.update(&user, patch, Some(&["title", "description"])).await.expect("patch");
    assert_eq!((patched.title.as_str(), patched.description.as_str()), ("renamed", "new"));
    assert_eq!(patched.status, TaskStatus::Done as i32, "status was not in the mask");
}

#[tokio::test]
async fn delete_removes_the_task_and_a_second_delete_is_not_found() {
    let app = spawn_app().await;
    let user = app.user().await;
    let created = app.create(&user, "short-lived").await;
    app.delete(&user, &created.id).await.expect("delete");
    assert_code(app.get(&user, &created.id).await, Code::NotFound);
    assert_code(app.delete(&user, &created.id).await, Code::NotFound);
    assert!(app.first_page(&user, 0).await.is_empty());
}

#[tokio::test]
async fn a_missing_id_is_not_found_on_get_update_and_delete() {
    let app = spawn_app().await;
    let user = app.user().await;
    let id = uuid::Uuid::new_v4().to_string();
    assert_code(app.get(&user, &id).await, Code::NotFound);
    let update = Task { id: id.clone(), title: "x".into(), ..Default::default() };
    assert_code(app.update(&user, update, None).await, Code::NotFound);
    assert_code(app.delete(&user, &id).await, Code::NotFound);
}

#[tokio::test]
async fn the_server_reports_serving_over_grpc_health() {
    let app = crate::helpers::spawn_app().await;
    taskgate_common::grpc::probe(&format!("http://{}", app.addr), taskgate_proto::service_names::TASK)
        .await
        .expect("health check");
}
