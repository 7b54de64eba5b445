//! ListTasks: newest first, page sizes, status filter, page tokens, and
//! pages that stay consistent while tasks are added.

use std::collections::HashSet;

use taskgate_proto::task::v1::{ListTasksRequest, Task, TaskStatus};

use crate::helpers::spawn_app;

/// Asserts `tasks` are strictly newest first, ties broken by id descending.
fn assert_newest_first(tasks: &[Task]) {
    for pair in tasks.windows(2) {
        let key = |t: &Task| {
            let at = t.created_at.expect("created_at");
            (at.seconds, at.nanos, t.id.clone())
        };
        assert!(key(&pair[0]) > key(&pair[1]), "not newest first: {:?} then {:?}", pair[0], pair[1]);
    }
}

#[tokio::test]
async fn tasks_are_listed_newest_first_fifty_by_default() {
    let app = spawn_app().await;
    let user = app.user().await;
    let first = app.create(&user, "first").await;
    let second = app.create(&user, "second").await;
    let third = app.create(&user, "third").await;
    let titles: Vec<_> = app.first_page(&user, 0).await.into_iter().map(|t| t.title).collect();
    assert_eq!(titles, ["third", "second", "first"]);
    let _ = (first, second, third);

    let other = app.user().await;
    app.insert_tasks(other.id, 60, "bulk").await;
    let page = app.list(&other, ListTasksRequest::default()).await.expect("list");
    assert_eq!(page.tasks.len(), 50);
    assert!(!page.next_page_token.is_empty());
    assert_eq!(page.tasks[0].title, "bulk60");
    assert_newest_first(&page.tasks);
}

#[tokio::test]
async fn page_size_n_returns_the_last_n_and_sizes_above_500_are_capped() {
    let app = spawn_app().await;
    let user = app.user().await;
    app.insert_tasks(user.id, 620, "t").await;
    let last_three: Vec<_> = app.first_page(&user, 3).await.into_iter().map(|t| t.title).collect();
    assert_eq!(last_three, ["t620", "t619", "t618"]);
    let page = app.list(&user, ListTasksRequest { page_size: 10_000, ..Default::default() }).await.expect("list");
    assert_eq!(page.tasks.len(), 500);
    assert!(!page.next_page_token.is_empty());
    let rest = app
        .list(&user, ListTasksRequest { page_size: 10_000, page_token: page.next_page_token, ..Default::default() })
        .await
        .expect("second page");
    assert_eq!(rest.tasks.len(), 120);
    assert!(rest.next_page_token.is_empty(), "no token after the last page");
}

#[tokio::test]
async fn a_page_that_ends_exactly_at_the_last_task_has_no_next_token() {
    let app = spawn_app().await;
    let user = app.user().await;
    app.insert_tasks(user.id, 4, "t").await;
    let page = app.list(&user, ListTasksRequest { page_size: 4, ..Default::default() }).await.expect("list");
    assert_eq!(page.tasks.len(), 4);
    assert!(page.next_page_token.is_empty());
    let page = app.list(&user, ListTasksRequest { page_size: 2, ..Default::default() }).await.expect("list");
    let page = app
        .list(&user, ListTasksRequest { page_size: 2, page_token: page.next_page_token, ..Default::default() })
        .await
        .expect("list");
    assert_eq!(page.tasks.len(), 2);
    assert!(page.next_page_token.is_empty());
}

#[tokio::test]
async fn page_tokens_walk_every_task_exactly_once_even_with_equal_timestamps() {
    let app = spawn_app().await;
    let user = app.user().await;
    // 90 tasks sharing only three creation times: the id breaks the ties.
    sqlx::query(
        "INSERT INTO tasks (id, owner_id, title, created_at) \
         SELECT gen_random_uuid(), $1, 'tie' || i, timestamptz '2026-01-01' + make_interval(secs => i % 3) \
         FROM generate_series(1, 90) AS i",
    )
    .bind(user.id)
    .execute(&app.db)
    .await
    .expect("insert");
    for size in [1, 7, 30, 500] {
        let all = app.list_all(&user, size, TaskStatus::Unspecified).await;
        assert_eq!(all.len(), 90, "page size {size}");
        assert_eq!(all.iter().map(|t| &t.id).collect::<HashSet<_>>().len(), 90, "no duplicates at size {size}");
        assert_newest_first(&all);
    }
}

#[tokio::test]
async fn the_status_filter_returns_only_matching_tasks_on_every_page() {
    let app = spawn_app().await;
    let user = app.user().await;
    // insert_tasks cycles statuses: i % 3 == 0 todo, 1 in_progress, 2 done.
    app.insert_tasks(user.id, 30, "t").await;
    for (status, expected) in [(TaskStatus::Todo, 10), (TaskStatus::InProgress, 10), (TaskStatus::Done, 10)] {
        let tasks = app.list_all(&user, 4, status).await;
        assert_eq!(tasks.len(), expected, "{status:?}");
        assert!(tasks.iter().all(|t| t.status == status as i32), "{status:?}");
        assert_newest_first(&tasks);
    }
    // A filtered first page stays correct after a write (cached per filter).
    let done = app.list_all(&user, 50, TaskStatus::Done).await;
    let moved = Task { id: done[0].id.clone(), status: TaskStatus::Todo as i32, ..Default::default() };
    app.update(&user, moved, Some(&["status"])).await.expect("update");
    assert_eq!(app.list_all(&user, 50, TaskStatus::Done).await.len(), 9);
    assert_eq!(app.list_all(&user, 50, TaskStatus::Todo).await.len(), 11);
}

#[tokio::test]
async fn pagination_is_stable_while_tasks_are_added() {
    let app = spawn_app().await;
    let user = app.user().await;
    app.insert_tasks(user.id, 300, "old").await;
    let before: HashSet<String> =
        app.list_all(&user, 500, TaskStatus::Unspecified).await.into_iter().map(|t| t.id).collect();
    assert_eq!(before.len(), 300);

    // A writer keeps adding tasks while a reader walks small pages.
    let writer = {
        let app_client = app.client.clone();
        let token = user.token.clone();
        tokio::spawn(async move {
            let mut client = app_client;
            for i in 0..60 {
                let task = Task { title: format!("new{i}"), ..Default::default() };
                let request = crate::helpers::authed(
                    &token,
                    taskgate_proto::task::v1::CreateTaskRequest { task: Some(task), ..Default::default() },
                );
                client.create_task(request).await.expect("create while paging");
            }
        })
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .list(&user, ListTasksRequest { page_size: 7, page_token: token, ..Default::default() })
            .await
            .expect("page");
        seen.extend(page.tasks);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        tokio::task::yield_now().await;
    }
    writer.await.expect("writer");
    let ids: Vec<&String> = seen.iter().map(|t| &t.id).collect();
    let unique: HashSet<&String> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no task appears twice");
    for id in &before {
        assert!(unique.contains(id), "task {id} that existed before paging was skipped");
    }
    assert_newest_first(&seen);
}
