//! Every RPC of both services through the gateway, with a success and a
//! typical error each, once over native gRPC and once over gRPC-web.

use prost::Message;
use taskgate_proto::{
    auth::v1::{
        DisableUserRequest, DisableUserResponse, GetJwksRequest, GetJwksResponse, GetMeRequest, GetMeResponse,
        ListSessionsRequest, ListSessionsResponse, LoginRequest, LoginResponse, LogoutAllRequest, LogoutAllResponse,
        LogoutRequest, LogoutResponse, RefreshRequest, RefreshResponse, RegisterRequest, RegisterResponse,
        RevokeSessionRequest, RevokeSessionResponse, TokenPair,
    },
    task::v1::{
        CreateTaskRequest, CreateTaskResponse, DeleteTaskRequest, DeleteTaskResponse, GetTaskRequest, GetTaskResponse,
        ListTasksRequest, ListTasksResponse, Task, UpdateTaskRequest, UpdateTaskResponse,
    },
};
use tonic::{Code, Request, transport::Channel};

use crate::helpers::{PASSWORD, TestStack, grpc_web, lazy_channel, spawn_stack, username};

/// How the calls travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Grpc,
    GrpcWeb,
}

/// Calls any RPC by path over one protocol, alternating the two replicas.
struct Caller<'a> {
    stack: &'a TestStack,
    via: Via,
    channels: [Channel; 2],
    calls: std::cell::Cell<usize>,
}

impl<'a> Caller<'a> {
    fn new(stack: &'a TestStack, via: Via) -> Self {
        let channels = [lazy_channel(stack.gateway_a), lazy_channel(stack.gateway_b)];
        Caller { stack, via, channels, calls: std::cell::Cell::new(0) }
    }

    async fn call<Req, Resp>(&self, rpc: &'static str, message: Req, token: Option<&str>) -> Result<Resp, Code>
    where
        Req: Message + Send + Sync + 'static,
        Resp: Message + Default + Send + Sync + 'static,
    {
        let n = self.calls.get();
        self.calls.set(n + 1);
        match self.via {
            Via::Grpc => {
                let mut grpc = tonic::client::Grpc::new(self.channels[n % 2].clone());
                grpc.ready().await.expect("the channel is ready");
                let mut request = Request::new(message);
                if let Some(token) = token {
                    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
                }
                let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
                grpc.unary(request, http::uri::PathAndQuery::from_static(rpc), codec)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| s.code())
            }
            Via::GrpcWeb => {
                let base = if n.is_multiple_of(2) { self.stack.url_a("") } else { self.stack.url_b("") };
                let auth = token.map(|t| format!("Bearer {t}"));
                let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
                let reply = grpc_web::<Req, Resp>(&self.stack.http, &base, rpc, &message, &headers).await;
                match reply.code {
                    Code::Ok => Ok(reply.message.unwrap_or_default()),
                    code => Err(code),
                }
            }
        }
    }
}

const REGISTER: &str = "/taskgate.auth.v1.AuthService/Register";
const LOGIN: &str = "/taskgate.auth.v1.AuthService/Login";
const REFRESH: &str = "/taskgate.auth.v1.AuthService/Refresh";
const LOGOUT: &str = "/taskgate.auth.v1.AuthService/Logout";
const LOGOUT_ALL: &str = "/taskgate.auth.v1.AuthService/LogoutAll";
const GET_ME: &str = "/taskgate.auth.v1.AuthService/GetMe";
const LIST_SESSIONS: &str = "/taskgate.auth.v1.AuthService/ListSessions";
const REVOKE_SESSION: &str = "/taskgate.auth.v1.AuthService/RevokeSession";
const GET_JWKS: &str = "/taskgate.auth.v1.AuthService/GetJwks";
const DISABLE_USER: &str = "/taskgate.auth.v1.AuthService/DisableUser";
const CREATE_TASK: &str = "/taskgate.task.v1.TaskService/CreateTask";
const GET_TASK: &str = "/taskgate.task.v1.TaskService/GetTask";
const LIST_TASKS: &str = "/taskgate.task.v1.TaskService/ListTasks";
const UPDATE_TASK: &str = "/taskgate.task.v1.TaskService/UpdateTask";
const DELETE_TASK: &str = "/taskgate.task.v1.TaskService/DeleteTask";

async fn login(c: &Caller<'_>, name: &str) -> TokenPair {
    let request = LoginRequest { login: name.to_owned(), password: PASSWORD.into(), ..Default::default() };
    c.call::<_, LoginResponse>(LOGIN, request, None).await.expect("login").tokens.expect("tokens")
}

async fn every_rpc(via: Via) {
    let stack = spawn_stack().await;
    let c = Caller::new(&stack, via);
    let name = username();
    let register = |password: &str| RegisterRequest {
        username: Some(name.clone()),
        password: password.to_owned(),
        ..Default::default()
    };

    // Register, Login, GetJwks (anonymous).
    let err = c.call::<_, RegisterResponse>(REGISTER, register("short"), None).await.expect_err("a short password");
    assert_eq!(err, Code::InvalidArgument);
    let user = c.call::<_, RegisterResponse>(REGISTER, register(PASSWORD), None).await.expect("register").user;
    let user = user.expect("a user");
    let err = c.call::<_, RegisterResponse>(REGISTER, register(PASSWORD), None).await.expect_err("taken");
    assert_eq!(err, Code::AlreadyExists);
    let wrong = LoginRequest { login: name.clone(), password: "not the password".into(), ..Default::default() };
    assert_eq!(c.call::<_, LoginResponse>(LOGIN, wrong, None).await.expect_err("bad password"), Code::Unauthenticated);
    let first = login(&c, &name).await;
    let second = login(&c, &name).await;
    let jwks = c.call::<_, GetJwksResponse>(GET_JWKS, GetJwksRequest {}, None).await.expect("jwks");
    assert!(!jwks.keys.is_empty());

    // GetMe and Refresh.
    let me = c.call::<_, GetMeResponse>(GET_ME, GetMeRequest {}, Some(&first.access_token)).await.expect("me");
    assert_eq!(me.user.expect("a user").id, user.id);
    assert_eq!(
        c.call::<_, GetMeResponse>(GET_ME, GetMeRequest {}, None).await.expect_err("anon"),
        Code::Unauthenticated
    );
    let junk = RefreshRequest { refresh_token: "junk".into() };
    assert_eq!(c.call::<_, RefreshResponse>(REFRESH, junk, None).await.expect_err("junk"), Code::Unauthenticated);
    let refresh = RefreshRequest { refresh_token: first.refresh_token.clone() };
    let first = c.call::<_, RefreshResponse>(REFRESH, refresh, None).await.expect("refresh").tokens.expect("tokens");
    let token = first.access_token.clone();

    // ListSessions and RevokeSession.
    let sessions = c
        .call::<_, ListSessionsResponse>(LIST_SESSIONS, ListSessionsRequest {}, Some(&token))
        .await
        .expect("sessions")
        .sessions;
    assert_eq!(sessions.len(), 2);
    let other = sessions.iter().find(|s| !s.current).expect("the second session").id.clone();
    let bad = RevokeSessionRequest { id: "not-a-uuid".into() };
    let err = c.call::<_, RevokeSessionResponse>(REVOKE_SESSION, bad, Some(&token)).await.expect_err("bad id");
    assert_eq!(err, Code::InvalidArgument);
    let revoke = RevokeSessionRequest { id: other };
    c.call::<_, RevokeSessionResponse>(REVOKE_SESSION, revoke, Some(&token)).await.expect("revoke");
    let err = c.call::<_, GetMeResponse>(GET_ME, GetMeRequest {}, Some(&second.access_token)).await;
    assert_eq!(err.expect_err("revoked session"), Code::Unauthenticated);

    // The task service, all five.
    let empty = CreateTaskRequest { task: Some(Task::default()), ..Default::default() };
    assert_eq!(
        c.call::<_, CreateTaskResponse>(CREATE_TASK, empty, Some(&token)).await.expect_err("no title"),
        Code::InvalidArgument
    );
    let create = CreateTaskRequest {
        task: Some(Task { title: "write tests".into(), ..Default::default() }),
        ..Default::default()
    };
    let task = c.call::<_, CreateTaskResponse>(CREATE_TASK, create, Some(&token)).await.expect("create").task;
    let task = task.expect("a task");
    let got = c.call::<_, GetTaskResponse>(GET_TASK, GetTaskRequest { id: task.id.clone() }, Some(&token)).await;
    assert_eq!(got.expect("get").task.expect("a task").title, "write tests");
    let missing = GetTaskRequest { id: uuid::Uuid::new_v4().to_string() };
    assert_eq!(c.call::<_, GetTaskResponse>(GET_TASK, missing, Some(&token)).await.expect_err("none"), Code::NotFound);
    let update = UpdateTaskRequest {
        task: Some(Task { id: task.id.clone(), title: "write more tests".into(), ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["title".into()] }),
    };
    let updated = c.call::<_, UpdateTaskResponse>(UPDATE_TASK, update, Some(&token)).await.expect("update").task;
    assert_eq!(updated.expect("a task").title, "write more tests");
    let listed = c.call::<_, ListTasksResponse>(LIST_TASKS, ListTasksRequest::default(), Some(&token)).await;
    assert_eq!(listed.expect("list").tasks.len(), 1);
    let delete = DeleteTaskRequest { id: task.id.clone(), ..Default::default() };
    c.call::<_, DeleteTaskResponse>(DELETE_TASK, delete, Some(&token)).await.expect("delete");
    let gone = c.call::<_, GetTaskResponse>(GET_TASK, GetTaskRequest { id: task.id }, Some(&token)).await;
    assert_eq!(gone.expect_err("deleted"), Code::NotFound);

    // DisableUser is for admins only.
    let disable = DisableUserRequest { id: user.id.clone() };
    let err = c.call::<_, DisableUserResponse>(DISABLE_USER, disable, Some(&token)).await.expect_err("not an admin");
    assert_eq!(err, Code::PermissionDenied);

    // Logout by refresh token, then LogoutAll.
    let logout = LogoutRequest { refresh_token: first.refresh_token.clone() };
    c.call::<_, LogoutResponse>(LOGOUT, logout, None).await.expect("logout");
    let err = c.call::<_, GetMeResponse>(GET_ME, GetMeRequest {}, Some(&token)).await.expect_err("logged out");
    assert_eq!(err, Code::Unauthenticated);
    let third = login(&c, &name).await;
    let all = c
        .call::<_, LogoutAllResponse>(LOGOUT_ALL, LogoutAllRequest {}, Some(&third.access_token))
        .await
        .expect("logout all");
    assert!(all.revoked_sessions >= 1);
    let err = c.call::<_, GetMeResponse>(GET_ME, GetMeRequest {}, Some(&third.access_token)).await;
    assert_eq!(err.expect_err("every session ended"), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_works_through_the_gateway_over_native_grpc() {
    every_rpc(Via::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_works_through_the_gateway_over_grpc_web() {
    every_rpc(Via::GrpcWeb).await;
}
