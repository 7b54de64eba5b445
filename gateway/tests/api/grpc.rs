//! Native gRPC through the gateway: both services, status details, metadata
//! and deadlines reaching the backend.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use taskgate_proto::{
    auth::v1::GetMeRequest,
    task::v1::{
        CreateTaskRequest, CreateTaskResponse, DeleteTaskRequest, DeleteTaskResponse, GetTaskRequest, GetTaskResponse,
        ListTasksRequest, ListTasksResponse, Task, UpdateTaskRequest, UpdateTaskResponse,
        task_service_server::{TaskService, TaskServiceServer},
    },
};
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt as _;

use crate::helpers::{StackOptions, bearer, grpc_web, lazy_channel, spawn_stack, spawn_stack_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_grpc_reaches_both_services_through_either_replica() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let created = stack
        .task_a
        .clone()
        .create_task(bearer(
            CreateTaskRequest {
                task: Some(Task { title: "buy milk".into(), ..Default::default() }),
                ..Default::default()
            },
            alice.access(),
        ))
        .await
        .expect("create through gateway A")
        .into_inner()
        .task
        .expect("a task");
    let listed = stack
        .task_b
        .clone()
        .list_tasks(bearer(ListTasksRequest::default(), alice.access()))
        .await
        .expect("list through gateway B")
        .into_inner();
    assert_eq!(listed.tasks.len(), 1);
    assert_eq!(listed.tasks[0].id, created.id);
    let me = stack
        .auth_b
        .clone()
        .get_me(bearer(GetMeRequest {}, alice.access()))
        .await
        .expect("GetMe through gateway B")
        .into_inner()
        .user
        .expect("a user");
    assert_eq!(me.id, alice.user.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_and_their_details_pass_through_unchanged() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let empty =
        || CreateTaskRequest { task: Some(Task { title: "   ".into(), ..Default::default() }), ..Default::default() };
    let via_gateway =
        stack.task_a.clone().create_task(bearer(empty(), alice.access())).await.expect_err("an empty title");
    let direct = stack.task_direct().create_task(bearer(empty(), alice.access())).await.expect_err("an empty title");
    assert_eq!(via_gateway.code(), Code::InvalidArgument);
    assert_eq!(via_gateway.code(), direct.code());
    assert_eq!(via_gateway.message(), direct.message());
    assert_eq!(via_gateway.details(), direct.details());
    let details = via_gateway.get_error_details();
    let bad = details.bad_request().expect("a BadRequest detail through the gateway");
    assert_eq!(bad.field_violations[0].field, "title");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_answered_by_the_gateway_itself() {
    let stack = spawn_stack().await;
    let mut health = HealthClient::new(lazy_channel(stack.gateway_a));
    for service in ["", "taskgate.auth.v1.AuthService", "taskgate.task.v1.TaskService"] {
        let reply = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .expect("health check without a token")
            .into_inner();
        assert_eq!(reply.status, 1, "{service:?} should be SERVING");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_or_generated_and_returned() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let mut request = bearer(ListTasksRequest::default(), alice.access());
    request.metadata_mut().insert("x-request-id", "test-req-42".parse().expect("ascii"));
    let response = stack.task_a.clone().list_tasks(request).await.expect("list");
    assert_eq!(response.metadata().get("x-request-id").expect("echoed"), "test-req-42");
    let response =
        stack.task_a.clone().list_tasks(bearer(ListTasksRequest::default(), alice.access())).await.expect("list");
    let generated = response.metadata().get("x-request-id").expect("generated").to_str().expect("ascii");
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated} should be a UUID");
}

/// A TaskService that records the metadata of every call and, for
/// ListTasks, sleeps `page_size` milliseconds before answering; UpdateTask
/// fails with an INTERNAL of its own.
#[derive(Clone, Default)]
struct RecordingTasks {
    seen: Arc<Mutex<Vec<MetadataMap>>>,
}

impl RecordingTasks {
    fn record<T>(&self, request: &Request<T>) {
        self.seen.lock().expect("lock").push(request.metadata().clone());
    }

    fn last(&self) -> MetadataMap {
        self.seen.lock().expect("lock").last().cloned().expect("a recorded call")
    }

    /// Serves it on a free port.
    async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = tonic::service::Routes::new(TaskServiceServer::new(self.clone())).into_axum_router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }
}

#[tonic::async_trait]
impl TaskService for RecordingTasks {
    async fn create_task(&self, r: Request<CreateTaskRequest>) -> Result<Response<CreateTaskResponse>, Status> {
        self.record(&r);
        Err(taskgate_common::status::invalid_field("task.title", "must not be empty"))
    }

    async fn get_task(&self, r: Request<GetTaskRequest>) -> Result<Response<GetTaskResponse>, Status> {
        self.record(&r);
        Err(Status::not_found("no such task"))
    }

    async fn list_tasks(&self, r: Request<ListTasksRequest>) -> Result<Response<ListTasksResponse>, Status> {
        self.record(&r);
        let sleep = u64::try_from(r.get_ref().page_size).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(sleep)).await;
        Ok(Response::new(ListTasksResponse::default()))
    }

    async fn update_task(&self, r: Request<UpdateTaskRequest>) -> Result<Response<UpdateTaskResponse>, Status> {
        self.record(&r);
        Err(Status::internal("the fake failed on its own"))
    }

    async fn delete_task(&self, r: Request<DeleteTaskRequest>) -> Result<Response<DeleteTaskResponse>, Status> {
        self.record(&r);
        Err(Status::unimplemented("not in the fake"))
    }

    type WatchTasksStream = futures::stream::Empty<Result<taskgate_proto::task::v1::WatchTasksResponse, Status>>;

    async fn watch_tasks(
        &self,
        r: Request<taskgate_proto::task::v1::WatchTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        self.record(&r);
        Err(Status::unimplemented("not in the fake"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_gets_the_token_the_request_id_and_the_real_peer_but_no_spoofed_identity() {
    let fake = RecordingTasks::default();
    let fake_addr = fake.start().await;
    let stack =
        spawn_stack_with(StackOptions { task_url: Some(format!("http://{fake_addr}")), ..Default::default() }).await;
    let alice = stack.user().await;
    let mut request = bearer(ListTasksRequest::default(), alice.access());
    for (k, v) in [
        ("x-request-id", "trace-me-1"),
        ("x-user-id", "00000000-0000-0000-0000-000000000001"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-client-ip", "203.0.113.9"),
        ("x-authenticated-user", "admin"),
        ("cookie", "tg_access=nope"),
    ] {
        request.metadata_mut().insert(k, v.parse().expect("ascii"));
    }
    stack.task_a.clone().list_tasks(request).await.expect("list through the gateway");
    let seen = fake.last();
    assert_eq!(seen.get("authorization").expect("token forwarded"), format!("Bearer {}", alice.access()).as_str());
    assert_eq!(seen.get("x-request-id").expect("request id forwarded"), "trace-me-1");
    assert_eq!(seen.get("x-client-ip").expect("peer address set"), "127.0.0.1");
    for spoofed in ["x-user-id", "x-forwarded-for", "x-authenticated-user", "cookie"] {
        assert!(seen.get(spoofed).is_none(), "{spoofed} must not reach the backend");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_reach_the_backend_and_expire_as_deadline_exceeded() {
    let fake = RecordingTasks::default();
    let fake_addr = fake.start().await;
    let stack =
        spawn_stack_with(StackOptions { task_url: Some(format!("http://{fake_addr}")), ..Default::default() }).await;
    let alice = stack.user().await;

    // A generous deadline arrives at the backend, shortened by the time spent at the gateway.
    let mut request = bearer(ListTasksRequest::default(), alice.access());
    request.set_timeout(Duration::from_secs(5));
    stack.task_a.clone().list_tasks(request).await.expect("list within the deadline");
    let forwarded = gateway::proxy::grpc_timeout(&fake.last()).expect("grpc-timeout forwarded");
    assert!(forwarded <= Duration::from_secs(5) && forwarded > Duration::from_secs(4), "{forwarded:?}");

    // A backend slower than the deadline: the caller gets DEADLINE_EXCEEDED
    // when the deadline passes, not when the backend finishes. gRPC-web, so no
    // client-side timer can answer first.
    let auth = format!("Bearer {}", alice.access());
    let started = Instant::now();
    let reply = grpc_web::<_, ListTasksResponse>(
        &stack.http,
        &stack.url_a(""),
        "/taskgate.task.v1.TaskService/ListTasks",
        &ListTasksRequest { page_size: 3000, ..Default::default() },
        &[("authorization", &auth), ("grpc-timeout", "300m")],
    )
    .await;
    assert_eq!(reply.code, Code::DeadlineExceeded, "{reply:?}");
    assert!(started.elapsed() < Duration::from_millis(2500), "took {:?}", started.elapsed());
    let forwarded = gateway::proxy::grpc_timeout(&fake.last()).expect("grpc-timeout forwarded");
    assert!(forwarded <= Duration::from_millis(300), "{forwarded:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_own_internal_answer_stays_internal() {
    let fake = RecordingTasks::default();
    let fake_addr = fake.start().await;
    let stack =
        spawn_stack_with(StackOptions { task_url: Some(format!("http://{fake_addr}")), ..Default::default() }).await;
    let alice = stack.user().await;
    let task = Task { id: uuid::Uuid::new_v4().to_string(), title: "t".into(), ..Default::default() };
    let request = bearer(UpdateTaskRequest { task: Some(task.clone()), update_mask: None }, alice.access());
    let status = stack.task_a.clone().update_task(request).await.expect_err("the fake fails");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(status.message(), "the fake failed on its own");

    let response = stack
        .http
        .put(stack.url_a(&format!("/api/v1/tasks/{}", task.id)))
        .bearer_auth(alice.access())
        .json(&serde_json::json!({"title": "t"}))
        .send()
        .await
        .expect("PUT through the gateway");
    assert_eq!(response.status(), reqwest::StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.headers().get("retry-after").is_none(), "an answer, not an outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_both_services_without_a_token() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let stack = spawn_stack().await;
    let mut client = ServerReflectionClient::new(lazy_channel(stack.gateway_b));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies =
        client.server_reflection_info(futures::stream::iter([request])).await.expect("reflection").into_inner();
    let reply = replies.message().await.expect("a reply").expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("not a service list: {reply:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in ["taskgate.auth.v1.AuthService", "taskgate.task.v1.TaskService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} not in {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_describes_each_rpcs_policy_option() {
    use prost::Message as _;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let stack = spawn_stack().await;
    let mut client = ServerReflectionClient::new(lazy_channel(stack.gateway_a));
    // As a reflection client (grpcurl, buf curl) does: the file declaring
    // the service, then each import it names, by file name.
    let mut wanted = vec![MessageRequest::FileContainingSymbol("taskgate.auth.v1.AuthService".into())];
    // Each file as served (raw: prost_types would drop the custom options)
    // and its decoded form, for its name and imports.
    let mut files: Vec<(Vec<u8>, prost_types::FileDescriptorProto)> = Vec::new();
    while let Some(message_request) = wanted.pop() {
        let request = ServerReflectionRequest { host: String::new(), message_request: Some(message_request) };
        let mut replies =
            client.server_reflection_info(futures::stream::iter([request])).await.expect("reflection").into_inner();
        let reply = replies.message().await.expect("a reply").expect("one message");
        let Some(MessageResponse::FileDescriptorResponse(served)) = reply.message_response else {
            panic!("not a file descriptor answer: {reply:?}");
        };
        for bytes in served.file_descriptor_proto {
            let file = prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("a file descriptor");
            if files.iter().any(|(_, f)| f.name == file.name) {
                continue;
            }
            for dependency in &file.dependency {
                if !files.iter().any(|(_, f)| f.name.as_ref() == Some(dependency)) {
                    wanted.push(MessageRequest::FileByFilename(dependency.clone()));
                }
            }
            files.push((bytes, file));
        }
    }
    // Imports before the files that import them.
    files.reverse();
    let mut set = Vec::new();
    for (bytes, _) in &files {
        // FileDescriptorSet field 1, length-delimited: each file as served.
        prost::encoding::bytes::encode(1, bytes, &mut set);
    }
    let pool = prost_reflect::DescriptorPool::decode(set.as_slice()).expect("the served files form a pool");
    let auth = pool.get_service_by_name("taskgate.auth.v1.AuthService").expect("AuthService served");
    let policy = |name: &str| taskgate_proto::policy(&auth.methods().find(|m| m.name() == name).expect("method"));
    use taskgate_proto::api::v1::{Access, RateLimit};
    assert_eq!(policy("Login").access(), Access::Public);
    assert_eq!(policy("Logout").access(), Access::TokenOptional);
    assert_eq!(policy("GetMe").access(), Access::TokenRequired);
    assert_eq!(policy("Refresh").rate_limit(), RateLimit::RefreshTokenOwner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_answer_unimplemented_not_a_json_404() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    let mut grpc = tonic::client::Grpc::new(lazy_channel(stack.gateway_a));
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<ListTasksRequest, ListTasksResponse>::default();
    let err = grpc
        .unary(
            bearer(ListTasksRequest::default(), alice.access()),
            http::uri::PathAndQuery::from_static("/no.such.v1.Service/Method"),
            codec,
        )
        .await
        .expect_err("no such service");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_bound_is_refused_as_the_backend_refuses_it_and_nothing_is_created() {
    let stack = spawn_stack().await;
    let alice = stack.user().await;
    // The gateway streams the body on without reading it; the backend's bound
    // (the same constant) refuses it from its length prefix.
    let huge = || CreateTaskRequest {
        task: Some(Task { title: "x".repeat(taskgate_common::grpc::MAX_MESSAGE_BYTES + 1), ..Default::default() }),
        ..Default::default()
    };
    let via_gateway = stack.task_a.clone().create_task(bearer(huge(), alice.access())).await.expect_err("too large");
    let direct = stack.task_direct().create_task(bearer(huge(), alice.access())).await.expect_err("too large");
    assert_eq!(via_gateway.code(), Code::OutOfRange, "{via_gateway:?}");
    assert_eq!(via_gateway.code(), direct.code());
    assert_eq!(via_gateway.message(), direct.message());
    let listed = stack
        .task_a
        .clone()
        .list_tasks(bearer(ListTasksRequest::default(), alice.access()))
        .await
        .expect("the gateway still serves")
        .into_inner();
    assert!(listed.tasks.is_empty(), "nothing was created: {listed:?}");
}
