//! Measures ListTasks latency over gRPC: warm cache (Redis hit), cold cache
//! (a write just changed the list: Postgres query plus refill) and no cache
//! (Redis unreachable: Postgres only), for first pages of 50 and 500 tasks.
//!
//! Runs the auth and task services in-process against the test databases:
//!
//! ```text
//! TASKGATE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:55432/postgres \
//! TASKGATE_TEST_REDIS_URL=redis://127.0.0.1:56379 \
//! cargo run --release -p task-service --example list_latency
//! ```

use std::time::{Duration, Instant};

use taskgate_proto::{
    auth::v1::{LoginRequest, RegisterRequest, auth_service_client::AuthServiceClient},
    task::v1::{ListTasksRequest, Task, UpdateTaskRequest, task_service_client::TaskServiceClient},
};
use tonic::{Request, transport::Channel};

const ROUNDS: usize = 200;
const TASKS: i64 = 2_000;

fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii token"));
    request
}

/// Starts the task service with `redis_url` and returns a client to it.
async fn task_service(database_url: &str, redis_url: &str, prefix: &str, auth_url: &str) -> TaskServiceClient<Channel> {
    let settings =
        task_service::Settings::for_tests(database_url.into(), redis_url.into(), prefix.into(), auth_url.into());
    let app = task_service::Application::build(settings).await.expect("task service");
    let addr = app.local_addr();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    TaskServiceClient::connect(format!("http://{addr}")).await.expect("connect")
}

fn summary(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    println!("{label:<34} p50 {:>9.3?}  p90 {:>9.3?}  p99 {:>9.3?}", pct(50), pct(90), pct(99));
}

#[tokio::main]
async fn main() {
    let database_url = taskgate_test_support::fresh_database().await;
    let redis_url = taskgate_test_support::redis_url();
    let prefix = taskgate_test_support::unique_prefix();

    let auth = auth_service::Application::build(auth_service::Settings::for_tests(
        database_url.clone(),
        redis_url.clone(),
        prefix.clone(),
    ))
    .await
    .expect("auth service");
    let auth_url = format!("http://{}", auth.local_addr());
    tokio::spawn(auth.run_until_stopped(std::future::pending()));
    let mut auth_client = AuthServiceClient::connect(auth_url.clone()).await.expect("connect auth");
    let password = "latency-is-a-feature-7";
    let user = auth_client
        .register(RegisterRequest { username: Some("bench".into()), password: password.into(), ..Default::default() })
        .await
        .expect("register")
        .into_inner()
        .user
        .expect("user");
    let token = auth_client
        .login(LoginRequest { login: "bench".into(), password: password.into(), ..Default::default() })
        .await
        .expect("login")
        .into_inner()
        .tokens
        .expect("tokens")
        .access_token;

    let pool = taskgate_common::db::pool(&database_url, taskgate_common::db::TASK_SCHEMA, 2).expect("pool");
    let cached = task_service(&database_url, &redis_url, &prefix, &auth_url).await;
    sqlx::query(
        "INSERT INTO tasks (id, owner_id, title, created_at) \
         SELECT gen_random_uuid(), $1::uuid, 'task ' || i, now() - make_interval(secs => i) \
         FROM generate_series(1, $2) AS i",
    )
    .bind(uuid::Uuid::parse_str(&user.id).expect("uuid"))
    .bind(TASKS)
    .execute(&pool)
    .await
    .expect("insert");
    // Nothing listens on port 1: this instance never reaches Redis.
    let uncached = task_service(&database_url, "redis://127.0.0.1:1", &prefix, &auth_url).await;
    let one = cached
        .clone()
        .list_tasks(authed(&token, ListTasksRequest { page_size: 1, ..Default::default() }))
        .await
        .expect("list")
        .into_inner()
        .tasks
        .remove(0);

    println!("{TASKS} tasks, {ROUNDS} calls each");
    for page_size in [50, 500] {
        let list = || ListTasksRequest { page_size, ..Default::default() };
        let mut client = cached.clone();
        client.list_tasks(authed(&token, list())).await.expect("warm up");
        let mut warm = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            client.list_tasks(authed(&token, list())).await.expect("list");
            warm.push(started.elapsed());
        }
        let mut cold = Vec::new();
        for i in 0..ROUNDS {
            let task = Task { id: one.id.clone(), title: format!("renamed {i}"), ..Default::default() };
            let mask = prost_types::FieldMask { paths: vec!["title".into()] };
            client
                .update_task(authed(&token, UpdateTaskRequest { task: Some(task), update_mask: Some(mask) }))
                .await
                .expect("update");
            let started = Instant::now();
            client.list_tasks(authed(&token, list())).await.expect("list");
            cold.push(started.elapsed());
        }
        let mut client = uncached.clone();
        let mut none = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            client.list_tasks(authed(&token, list())).await.expect("list");
            none.push(started.elapsed());
        }
        summary(&format!("page {page_size}: warm cache (hit)"), warm);
        summary(&format!("page {page_size}: cold cache (miss + fill)"), cold);
        summary(&format!("page {page_size}: no cache (postgres only)"), none);
    }
}
