//! The test harness: a task service on port 0 against a fresh database and
//! its own Redis prefix, a typed client over a real socket, and users with
//! real access tokens.
//!
//! [`spawn_app`] also starts the real auth service on the same database and
//! Redis prefix; users register and log in over gRPC, and the task service
//! fetches the JWKS from it, as in production. [`spawn_app_minting`] instead
//! publishes the key of an in-test [`Issuer`] through a small gRPC server
//! answering `AuthService/GetJwks`, so tests can mint tokens the auth service
//! would never issue (expired, wrongly typed, foreign audience, odd subject).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use base64::Engine as _;
use ed25519_dalek::{SigningKey, pkcs8::EncodePrivateKey as _};
use fred::prelude::*;
use jsonwebtoken::{EncodingKey, Header};
use sqlx::PgPool;
use task_service::{Application, Metrics, Settings};
use taskgate_proto::{
    auth::v1::{self as auth, Jwk, auth_service_client::AuthServiceClient, auth_service_server::AuthServiceServer},
    task::v1::{
        CreateTaskRequest, DeleteTaskRequest, GetTaskRequest, ListTasksRequest, ListTasksResponse, Task, TaskEventType,
        TaskStatus, UpdateTaskRequest, WatchTasksRequest, WatchTasksResponse, task_service_client::TaskServiceClient,
    },
};
use taskgate_tokens::Claims;
use tokio::sync::oneshot;
use tonic::{Code, Request, Response, Status, Streaming, transport::Channel};
use tonic_types::StatusExt as _;
use uuid::Uuid;

/// The password every test user registers with.
pub use taskgate_test_support::PASSWORD;

/// Where a test's users and tokens come from.
#[derive(Clone)]
pub enum Tokens {
    /// The real auth service: register and log in over gRPC.
    AuthService(AuthServiceClient<Channel>),
    /// Tokens minted in the test.
    Minted(Issuer),
}

/// A running task service and everything a test needs around it.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its admin listener (`/metrics`).
    pub admin: SocketAddr,
    /// A client on one channel to it.
    pub client: TaskServiceClient<Channel>,
    /// Its counters (Postgres list queries, cache hits).
    pub metrics: Arc<Metrics>,
    /// Its database, for direct inserts and checks.
    pub db: PgPool,
    /// Its Redis key prefix (shared with the auth service).
    pub redis_prefix: String,
    /// Its Redis URL.
    pub redis_url: String,
    /// Where users come from.
    pub tokens: Tokens,
    /// Its database URL.
    pub database_url: String,
    /// Where it fetches the JWKS.
    pub auth_url: String,
    /// Stop the servers when dropped.
    _stop: Vec<oneshot::Sender<()>>,
}

/// A user: an id and a valid access token.
#[derive(Clone)]
pub struct TestUser {
    /// The user id (the token's `sub`).
    pub id: Uuid,
    /// A valid access token.
    pub token: String,
}

/// A task service (and the auth service) on the shared test Postgres and Redis.
pub async fn spawn_app() -> TestApp {
    let database_url = taskgate_test_support::fresh_database().await;
    spawn_app_on(database_url, taskgate_test_support::redis_url()).await
}

/// A task service (and the auth service) on the given database and Redis
/// (private servers in the outage tests).
pub async fn spawn_app_on(database_url: String, redis_url: String) -> TestApp {
    spawn_app_with(database_url, redis_url, |_| {}).await
}

/// Like [`spawn_app_on`], with the task service's settings adjusted by `tweak`.
pub async fn spawn_app_with(database_url: String, redis_url: String, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    taskgate_test_support::init_test_logging();
    let redis_prefix = taskgate_test_support::unique_prefix();
    let auth_settings =
        auth_service::Settings::for_tests(database_url.clone(), redis_url.clone(), redis_prefix.clone());
    let auth_app = auth_service::Application::build(auth_settings).await.expect("building the auth service");
    let auth_url = format!("http://{}", auth_app.local_addr());
    let (stop_auth, auth_stopped) = oneshot::channel::<()>();
    tokio::spawn(auth_app.run_until_stopped(async move {
        let _ = auth_stopped.await;
    }));
    let auth_client = AuthServiceClient::connect(auth_url.clone()).await.expect("connecting to the auth service");
    let mut app = start(database_url, redis_url, redis_prefix, auth_url, Tokens::AuthService(auth_client), tweak).await;
    app._stop.push(stop_auth);
    app
}

/// A task service whose tokens are minted by an in-test [`Issuer`].
pub async fn spawn_app_minting() -> TestApp {
    let database_url = taskgate_test_support::fresh_database().await;
    let issuer = Issuer::start().await;
    let jwks_url = issuer.jwks_url.clone();
    let prefix = taskgate_test_support::unique_prefix();
    start(database_url, taskgate_test_support::redis_url(), prefix, jwks_url, Tokens::Minted(issuer), |_| {}).await
}

async fn start(
    database_url: String,
    redis_url: String,
    redis_prefix: String,
    auth_url: String,
    tokens: Tokens,
    tweak: impl FnOnce(&mut Settings),
) -> TestApp {
    taskgate_test_support::init_test_logging();
    let mut settings =
        Settings::for_tests(database_url.clone(), redis_url.clone(), redis_prefix.clone(), auth_url.clone());
    tweak(&mut settings);
    let app = Application::build(settings).await.expect("building the task service");
    let addr = app.local_addr();
    let admin = app.admin_addr();
    let metrics = app.metrics();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let client = TaskServiceClient::connect(format!("http://{addr}")).await.expect("connecting to the task service");
    let db = taskgate_common::db::pool(&database_url, taskgate_common::db::TASK_SCHEMA, 4).expect("test pool");
    TestApp {
        addr,
        admin,
        client,
        metrics,
        db,
        redis_prefix,
        redis_url,
        tokens,
        database_url,
        auth_url,
        _stop: vec![stop],
    }
}

/// `request` with `token` as its bearer token.
pub fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii token"));
    request
}

impl TestApp {
    /// A second replica of the task service: same database, same Redis
    /// prefix, same token source, reaching Redis at `redis_url`.
    pub async fn replica(&self, redis_url: String) -> TestApp {
        self.replica_with(redis_url, |_| {}).await
    }

    /// Like [`TestApp::replica`], with its settings adjusted by `tweak`.
    pub async fn replica_with(&self, redis_url: String, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        start(
            self.database_url.clone(),
            redis_url,
            self.redis_prefix.clone(),
            self.auth_url.clone(),
            self.tokens.clone(),
            tweak,
        )
        .await
    }

    /// Opens a WatchTasks stream for `user` from `since` (0: from now).
    pub async fn watch(&self, user: &TestUser, since: i64) -> Result<Streaming<WatchTasksResponse>, Status> {
        let response = self.client.clone().watch_tasks(authed(&user.token, WatchTasksRequest { since })).await?;
        Ok(response.into_inner())
    }

    /// A new user with a fresh access token: registered and logged in with
    /// the auth service, or minted.
    pub async fn user(&self) -> TestUser {
        match &self.tokens {
            Tokens::Minted(issuer) => {
                let id = Uuid::new_v4();
                let claims = issuer.claims(id);
                self.start_session(&claims).await;
                TestUser { id, token: issuer.sign(&claims, "at+jwt") }
            }
            Tokens::AuthService(client) => {
                let (user, tokens) =
                    taskgate_test_support::register_and_login(client, &taskgate_test_support::username()).await;
                TestUser { id: Uuid::parse_str(&user.id).expect("user id"), token: tokens.access_token }
            }
        }
    }

    /// Makes the session of `claims` live the way the auth service does (its
    /// key in the mirror of live sessions), so verifiers accept its tokens.
    pub async fn start_session(&self, claims: &Claims) {
        let key = taskgate_tokens::session_key(&self.redis_prefix, &claims.sub, &claims.sid);
        let redis = self.redis().await;
        let _: () = redis.hset(&key, ("uid", claims.sub.as_str())).await.expect("HSET session");
        let _: () = redis.expire(&key, 3600, None).await.expect("EXPIRE session");
    }

    /// The in-test issuer (only for [`spawn_app_minting`]).
    pub fn issuer(&self) -> &Issuer {
        match &self.tokens {
            Tokens::Minted(issuer) => issuer,
            Tokens::AuthService(_) => panic!("this app uses the real auth service; use spawn_app_minting"),
        }
    }

    /// The auth service client (only for [`spawn_app`] and friends).
    pub fn auth(&self) -> AuthServiceClient<Channel> {
        match &self.tokens {
            Tokens::AuthService(client) => client.clone(),
            Tokens::Minted(_) => panic!("this app mints its tokens"),
        }
    }

    /// A client on its own new connection (for many concurrent callers).
    pub async fn new_client(&self) -> TaskServiceClient<Channel> {
        TaskServiceClient::connect(format!("http://{}", self.addr)).await.expect("connecting to the task service")
    }

    /// CreateTask with a title (other fields default).
    pub async fn create(&self, user: &TestUser, title: &str) -> Task {
        self.try_create(user, Task { title: title.into(), ..Default::default() }).await.expect("create task")
    }

    /// CreateTask with a whole task.
    pub async fn try_create(&self, user: &TestUser, task: Task) -> Result<Task, Status> {
        let response = self
            .client
            .clone()
            .create_task(authed(&user.token, CreateTaskRequest { task: Some(task), ..Default::default() }))
            .await?;
        Ok(response.into_inner().task.expect("created task in response"))
    }

    /// GetTask.
    pub async fn get(&self, user: &TestUser, id: &str) -> Result<Task, Status> {
        let response = self.client.clone().get_task(authed(&user.token, GetTaskRequest { id: id.into() })).await?;
        Ok(response.into_inner().task.expect("task in response"))
    }

    /// UpdateTask with an optional mask.
    pub async fn update(&self, user: &TestUser, task: Task, mask: Option<&[&str]>) -> Result<Task, Status> {
        let update_mask =
            mask.map(|paths| prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() });
        let request = UpdateTaskRequest { task: Some(task), update_mask };
        let response = self.client.clone().update_task(authed(&user.token, request)).await?;
        Ok(response.into_inner().task.expect("task in response"))
    }

    /// DeleteTask.
    pub async fn delete(&self, user: &TestUser, id: &str) -> Result<(), Status> {
        self.client
            .clone()
            .delete_task(authed(&user.token, DeleteTaskRequest { id: id.into(), ..Default::default() }))
            .await
            .map(|_| ())
    }

    /// ListTasks.
    pub async fn list(&self, user: &TestUser, request: ListTasksRequest) -> Result<ListTasksResponse, Status> {
        self.client.clone().list_tasks(authed(&user.token, request)).await.map(Response::into_inner)
    }

    /// The first page of up to `page_size` tasks, all statuses.
    pub async fn first_page(&self, user: &TestUser, page_size: i32) -> Vec<Task> {
        self.list(user, ListTasksRequest { page_size, ..Default::default() }).await.expect("list tasks").tasks
    }

    /// Every task of `user` with `status` (0 for all), walking all pages of
    /// `page_size`.
    pub async fn list_all(&self, user: &TestUser, page_size: i32, status: TaskStatus) -> Vec<Task> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .list(user, ListTasksRequest { page_size, page_token: token, status: status as i32 })
                .await
                .expect("list tasks");
            all.extend(page.tasks);
            if page.next_page_token.is_empty() {
                return all;
            }
            token = page.next_page_token;
        }
    }

    /// Inserts `n` tasks for `owner` straight into Postgres, one millisecond
    /// apart (newest last), with titles `{prefix}{i}`. Only for lists that
    /// have not been read yet: it bypasses the cache on purpose.
    pub async fn insert_tasks(&self, owner: Uuid, n: i64, prefix: &str) {
        sqlx::query(
            "INSERT INTO tasks (id, owner_id, title, status, created_at, updated_at) \
             SELECT gen_random_uuid(), $1, $2 || i, \
                    (ARRAY['todo', 'in_progress', 'done'])[1 + i % 3], \
                    now() - make_interval(secs => ($3 - i) / 1000.0), now() \
             FROM generate_series(1, $3) AS i",
        )
        .bind(owner)
        .bind(prefix)
        .bind(n)
        .execute(&self.db)
        .await
        .expect("bulk insert");
    }

    /// How many tasks `owner` has in Postgres.
    pub async fn count_tasks(&self, owner: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM tasks WHERE owner_id = $1")
            .bind(owner)
            .fetch_one(&self.db)
            .await
            .expect("counting tasks")
    }

    /// A Redis client on the app's Redis.
    pub async fn redis(&self) -> Client {
        let client = Client::new(Config::from_url(&self.redis_url).expect("redis url"), None, None, None);
        client.init().await.expect("connecting to redis");
        client
    }
}

/// The next event of `stream` that is not a heartbeat, within 5 seconds.
pub async fn next_event(stream: &mut Streaming<WatchTasksResponse>) -> Result<WatchTasksResponse, Status> {
    loop {
        let next =
            tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("an event within 5 s")?;
        let event = next.ok_or_else(|| Status::unknown("the stream ended without a status"))?;
        if event.r#type != TaskEventType::Heartbeat as i32 {
            return Ok(event);
        }
    }
}

/// The status `stream` ends with, within `within`, skipping any events.
pub async fn end_of(stream: &mut Streaming<WatchTasksResponse>, within: Duration) -> Status {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await.expect("the stream ends in time") {
            Ok(Some(_)) => continue,
            Ok(None) => return Status::ok("ended"),
            Err(status) => return status,
        }
    }
}

/// Asserts `result` is INVALID_ARGUMENT with a BadRequest violation for `field`.
pub fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    let status = result.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let bad = details.bad_request().expect("a BadRequest detail");
    assert!(
        bad.field_violations.iter().any(|v| v.field == field),
        "no violation for {field}: {:?}",
        bad.field_violations
    );
}

/// Asserts `result` failed with `code`.
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    let status = result.expect_err("expected an error");
    assert_eq!(status.code(), code, "{status:?}");
    status
}

/// Retries `check` every 100 ms until it returns true, for up to `within`.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Mints access tokens with its own Ed25519 key, and publishes the key over
/// `AuthService/GetJwks` on a real gRPC server.
#[derive(Clone)]
pub struct Issuer {
    /// The key id in token headers and the JWKS.
    kid: String,
    /// The signing key.
    encoding: Arc<EncodingKey>,
    /// `http://127.0.0.1:<port>` of the JWKS server.
    pub jwks_url: String,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Issuer {
    /// Generates a key and starts the JWKS server.
    pub async fn start() -> Self {
        let (kid, encoding, jwk) = keypair();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the jwks server");
        let addr = listener.local_addr().expect("jwks address");
        let service = AuthServiceServer::new(JwksOnly { keys: vec![jwk] });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        Issuer { kid, encoding: Arc::new(encoding), jwks_url: format!("http://{addr}") }
    }

    /// Claims of a fresh, valid access token for `user`.
    pub fn claims(&self, user: Uuid) -> Claims {
        fresh_claims(user)
    }

    /// Signs `claims` with header `typ`.
    pub fn sign(&self, claims: &Claims, typ: &str) -> String {
        sign_with(&self.kid, &self.encoding, claims, typ)
    }
}

/// Claims of a fresh, valid access token for `user`.
pub fn fresh_claims(user: Uuid) -> Claims {
    let now = now();
    Claims {
        iss: "taskgate".into(),
        aud: "taskgate".into(),
        sub: user.to_string(),
        exp: now + 900,
        iat: now,
        nbf: now,
        jti: Uuid::new_v4().to_string(),
        sid: Uuid::new_v4().to_string(),
    }
}

/// Signs `claims` with `key` under `kid`.
pub fn sign_with(kid: &str, key: &EncodingKey, claims: &Claims, typ: &str) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.typ = Some(typ.into());
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).expect("signing a token")
}

/// A fresh Ed25519 key: its kid, encoding key and JWK.
pub fn keypair() -> (String, EncodingKey, Jwk) {
    let signing = SigningKey::generate(&mut rand::rngs::OsRng);
    let der = signing.to_pkcs8_der().expect("pkcs8");
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
    let kid = Uuid::new_v4().simple().to_string();
    let jwk =
        Jwk { kty: "OKP".into(), crv: "Ed25519".into(), x, kid: kid.clone(), alg: "EdDSA".into(), r#use: "sig".into() };
    (kid, EncodingKey::from_ed_der(der.as_bytes()), jwk)
}

/// An AuthService that only publishes keys; every other RPC is UNIMPLEMENTED.
struct JwksOnly {
    keys: Vec<Jwk>,
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl auth::auth_service_server::AuthService for JwksOnly {
    async fn register(&self, _: Request<auth::RegisterRequest>) -> Answer<auth::RegisterResponse> {
        Err(Status::unimplemented("test jwks server"))
    }
    async fn login(&self, _: Request<auth::LoginRequest>) -> Answer<auth::LoginResponse> {
        Err(Status::unimplemented("test jwks server"))
    }
    async fn refresh(&self, _: Request<auth::RefreshRequest>) -> Answer<auth::RefreshResponse> {
        Err(Status::unimplemented("test jwks server"))
    }
    async fn logout(&self, _: Request<auth::LogoutRequest>) -> Answer<auth::LogoutResponse> {
        Err(Status::unimplemented("test jwks server"))
    }
    async fn logout_all(&self, _: Request<auth::LogoutAllRequest>) -> Answer<auth::LogoutAllResponse> {
        Err(Status::unimplemented("test jwks server"))
    }
    async fn get_me(&self, _: Request<auth::GetMeRequest>) -> Answer<auth::GetMeResponse> {
        Err(Status::unimplemented("test jwks server"))
    }
    async fn list_sessions(&self, _: Request<auth::ListSessionsRequest>) -> Answer<auth::ListSessionsResponse> {
        Err(Status::unimplemented("test jwks server"))
    }
    async fn revoke_session(&self, _: Request<auth::RevokeSessionRequest>) -> Answer<auth::RevokeSessionResponse> {
        Err(Status::unimplemented("test jwks server"))
    }
    async fn get_jwks(&self, _: Request<auth::GetJwksRequest>) -> Answer<auth::GetJwksResponse> {
        Ok(Response::new(auth::GetJwksResponse { keys: self.keys.clone() }))
    }
    async fn disable_user(&self, _: Request<auth::DisableUserRequest>) -> Answer<auth::DisableUserResponse> {
        Err(Status::unimplemented("test jwks server"))
    }
    async fn change_password(&self, _: Request<auth::ChangePasswordRequest>) -> Answer<auth::ChangePasswordResponse> {
        Err(Status::unimplemented("test jwks server"))
    }
    async fn enable_user(&self, _: Request<auth::EnableUserRequest>) -> Answer<auth::EnableUserResponse> {
        Err(Status::unimplemented("test jwks server"))
    }
}

/// A TCP proxy in front of Redis that a test can cut and restore: a network
/// partition in which Redis keeps its data (unlike stopping the server).
pub struct RedisProxy {
    /// `redis://127.0.0.1:<proxy port>`.
    pub url: String,
    /// While set, new connections are closed at once.
    cut: Arc<std::sync::atomic::AtomicBool>,
    /// The piping tasks of open connections, aborted on a cut.
    pipes: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl RedisProxy {
    /// Starts a proxy to the Redis at `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
        let url = format!("redis://{}", listener.local_addr().expect("proxy address"));
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pipes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (cut2, pipes2) = (cut.clone(), pipes.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cut2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                pipes2.lock().expect("pipes").push(pipe.abort_handle());
            }
        });
        RedisProxy { url, cut, pipes }
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for pipe in self.pipes.lock().expect("pipes").drain(..) {
            pipe.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}
