//! Load generator: how much the gateway costs on top of a direct call.
//!
//! Starts the whole stack in-process on 127.0.0.1 (auth service, task
//! service, one gateway with the rate limit raised out of the way) against
//! the Postgres and Redis named by `TASKGATE_TEST_DATABASE_URL` and
//! `TASKGATE_TEST_REDIS_URL`, signs one user in, creates a few tasks, then
//! drives ListTasks four ways, one after the other, and prints requests/s,
//! p50 and p99 for each:
//!
//! - REST `GET /api/v1/tasks` through the gateway (HTTP/1.1 keep-alive pool);
//! - native gRPC through the gateway (one HTTP/2 connection);
//! - gRPC-web through the gateway (HTTP/1.1 keep-alive pool);
//! - native gRPC straight to the task service (one HTTP/2 connection).
//!
//! ```text
//! cargo run --release -p gateway --example loadgen -- [REQUESTS] [CONCURRENCY]
//! ```
//!
//! Each run is bounded: REQUESTS per path (default 5000) or 30 s, whichever
//! comes first, with CONCURRENCY requests in flight (default 32).
//!
//! Tracing is off (no subscriber) unless `LOADGEN_TRACES` is set: `off`
//! installs the services' subscriber without an exporter, `on` with one
//! exporting every span to an in-process OTLP receiver, so the cost of
//! traces can be measured (`RUST_LOG=warn` keeps the access log out of it).

use std::time::Duration;

use bytes::{BufMut as _, BytesMut};
use prost::Message as _;
use taskgate_proto::{
    auth::v1::{LoginRequest, RegisterRequest, auth_service_client::AuthServiceClient},
    task::v1::{CreateTaskRequest, ListTasksRequest, Task, task_service_client::TaskServiceClient},
};
use taskgate_test_support::load::{Run, closed_loop};
use tonic::{Request, transport::Channel};

/// The subscriber `LOADGEN_TRACES` asks for (see the module docs).
async fn traces() -> (Option<taskgate_test_support::OtlpReceiver>, Option<taskgate_common::telemetry::Telemetry>) {
    use taskgate_common::telemetry::{Export, LogFormat, init_with};
    let export = |endpoint| Export { endpoint, service_name: "loadgen".into() };
    match std::env::var("LOADGEN_TRACES").as_deref() {
        Ok("on") => {
            let receiver = taskgate_test_support::OtlpReceiver::start().await;
            let telemetry = init_with(LogFormat::Json, export(Some(receiver.endpoint())));
            (Some(receiver), Some(telemetry))
        }
        Ok(_) => (None, Some(init_with(LogFormat::Json, export(None)))),
        Err(_) => (None, None),
    }
}

/// The longest one path is driven.
const MAX_RUN: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (requests, concurrency) = taskgate_test_support::load::requests_and_concurrency(5000)?;

    // The receiver (when exporting) and the guard live to the end of the run.
    let (_receiver, _telemetry) = traces().await;
    let stack = Stack::start().await?;
    println!(
        "taskgate loadgen: ListTasks ({} tasks per page), {requests} requests per path, {concurrency} in flight",
        stack.tasks
    );
    Run::header();

    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let url = format!("http://{}/api/v1/tasks", stack.gateway);
    let auth = format!("Bearer {}", stack.token);
    let rest = {
        let (http, url, auth) = (http.clone(), url.clone(), auth.clone());
        closed_loop(requests, concurrency, MAX_RUN, move |_| {
            let call = http.get(&url).header("authorization", &auth).send();
            async move { call.await.map(|r| r.status().is_success()).unwrap_or(false) }
        })
        .await
    };
    rest.print("REST  via gateway");

    let grpc_gateway = TaskServiceClient::new(channel(&format!("http://{}", stack.gateway)).await?);
    let grpc = drive_grpc(grpc_gateway, &stack.token, requests, concurrency).await;
    grpc.print("gRPC  via gateway");

    let web_url = format!("http://{}/taskgate.task.v1.TaskService/ListTasks", stack.gateway);
    let payload = ListTasksRequest::default().encode_to_vec();
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(u32::try_from(payload.len())?);
    frame.put_slice(&payload);
    let frame = frame.freeze();
    let web = closed_loop(requests, concurrency, MAX_RUN, move |_| {
        let call = http
            .post(&web_url)
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .header("authorization", &auth)
            .body(frame.clone())
            .send();
        async move {
            match call.await {
                Ok(r) => r.bytes().await.map(|b| b.len() > 5 && b[0] == 0).unwrap_or(false),
                Err(_) => false,
            }
        }
    })
    .await;
    web.print("gRPC-web via gateway");

    let grpc_direct = TaskServiceClient::new(channel(&format!("http://{}", stack.task)).await?);
    let direct = drive_grpc(grpc_direct, &stack.token, requests, concurrency).await;
    direct.print("gRPC  direct to task service");

    println!(
        "gateway/direct gRPC: throughput x{:.2}, p50 +{:.2} ms, p99 +{:.2} ms",
        grpc.rate() / direct.rate(),
        grpc.percentile(0.50) - direct.percentile(0.50),
        grpc.percentile(0.99) - direct.percentile(0.99)
    );
    Ok(())
}

/// A connected HTTP/2 channel.
async fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())?.tcp_nodelay(true).connect().await?)
}

/// Drives native gRPC ListTasks on `client`.
async fn drive_grpc(client: TaskServiceClient<Channel>, token: &str, requests: usize, concurrency: usize) -> Run {
    let auth: tonic::metadata::MetadataValue<_> = match format!("Bearer {token}").parse() {
        Ok(v) => v,
        Err(_) => return Run::default(),
    };
    closed_loop(requests, concurrency, MAX_RUN, move |_| {
        let mut client = client.clone();
        let mut request = Request::new(ListTasksRequest::default());
        request.metadata_mut().insert("authorization", auth.clone());
        async move { client.list_tasks(request).await.is_ok() }
    })
    .await
}

/// The in-process system under test.
struct Stack {
    gateway: std::net::SocketAddr,
    task: std::net::SocketAddr,
    token: String,
    tasks: usize,
}

impl Stack {
    async fn start() -> anyhow::Result<Stack> {
        let database_url = taskgate_test_support::fresh_database().await;
        let redis_url = taskgate_test_support::redis_url();
        let prefix = taskgate_test_support::unique_prefix();
        let auth = auth_service::Application::build(auth_service::Settings::for_tests(
            database_url.clone(),
            redis_url.clone(),
            prefix.clone(),
        ))
        .await?;
        let auth_url = format!("http://{}", auth.local_addr());
        tokio::spawn(auth.run_until_stopped(std::future::pending()));
        let task = task_service::Application::build(task_service::Settings::for_tests(
            database_url,
            redis_url.clone(),
            prefix.clone(),
            auth_url.clone(),
        ))
        .await?;
        let task_addr = task.local_addr();
        tokio::spawn(task.run_until_stopped(std::future::pending()));
        let mut settings = gateway::Settings::for_tests(auth_url, format!("http://{task_addr}"), redis_url, prefix);
        // The bench measures the forwarding path, not the limit.
        settings.rate_limit_per_minute = u32::MAX;
        // Still checked on every signed-in request (in memory), never reached.
        settings.rate_limit_per_address_per_minute = u32::MAX;
        let gateway = gateway::Application::build(settings).await?;
        let gateway_addr = gateway.local_addr();
        tokio::spawn(gateway.run_until_stopped(std::future::pending()));

        let channel = channel(&format!("http://{gateway_addr}")).await?;
        let mut auth = AuthServiceClient::new(channel.clone());
        let username = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let password = "correct horse battery staple".to_owned();
        auth.register(RegisterRequest {
            username: Some(username.clone()),
            password: password.clone(),
            ..Default::default()
        })
        .await?;
        let token = auth
            .login(LoginRequest { login: username, password, ..Default::default() })
            .await?
            .into_inner()
            .tokens
            .map(|t| t.access_token)
            .ok_or_else(|| anyhow::anyhow!("login returned no tokens"))?;
        let mut tasks = TaskServiceClient::new(channel);
        let count = 10;
        for i in 0..count {
            let mut request = Request::new(CreateTaskRequest {
                task: Some(Task { title: format!("task {i}"), ..Default::default() }),
                ..Default::default()
            });
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
            tasks.create_task(request).await?;
        }
        Ok(Stack { gateway: gateway_addr, task: task_addr, token, tasks: count })
    }
}
