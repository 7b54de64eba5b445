//! `spawn_stack()`: the whole system in-process, and small helpers shared by
//! the test modules.
//!
//! A stack is a fresh database, one Redis prefix, the auth and task services
//! on port 0, and TWO gateway replicas sharing Redis and the prefix (so the
//! fleet-wide limit can be seen). Everything stops when the [`TestStack`] is
//! dropped. REST tests use [`TestStack::http`] with [`TestStack::url_a`].

use std::{future::Future, net::SocketAddr, time::Duration};

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use prost::Message;
use taskgate_proto::{
    auth::v1::{TokenPair, User, auth_service_client::AuthServiceClient},
    task::v1::task_service_client::TaskServiceClient,
};
use taskgate_test_support::CuttableProxy;
use tonic::transport::Channel;

/// A password that passes the auth service's rules.
pub use taskgate_test_support::{PASSWORD, bearer, username};

/// A connected client of the Redis at `url` (a test's own, or the shared one), to look at or
/// change what the services keep there.
pub async fn redis_client(url: &str) -> fred::prelude::Client {
    let client = fred::prelude::Client::new(fred::prelude::Config::from_url(url).expect("redis url"), None, None, None);
    fred::prelude::ClientLike::init(&client).await.expect("connect to redis");
    client
}

/// How a stack differs from the default one.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Where the gateways send TaskService calls instead of the real task
    /// service (a recording fake, say).
    pub task_url: Option<String>,
    /// `RATE_LIMIT_PER_MINUTE` of both gateways.
    pub rate_limit_per_minute: u32,
    /// `CORS_ALLOWED_ORIGINS` of both gateways.
    pub cors_allowed_origins: String,
    /// `COOKIE_SECURE` of both gateways.
    pub cookie_secure: bool,
    /// Whether the services talk over mutual TLS with a private CA.
    pub mtls: bool,
    /// `JWKS_REFRESH_SECONDS` of the gateways and the task service, and
    /// `KEY_RELOAD_SECONDS` of the auth service.
    pub key_refresh_seconds: u64,
    /// Any other change to both gateways' settings.
    pub gateway: fn(&mut gateway::Settings),
    /// Task service replicas (same database and Redis); gateway A sends to
    /// the first, gateway B to the last.
    pub task_replicas: usize,
    /// `GATEWAY_MAX_WATCH_STREAMS` of both gateways.
    pub max_watch_streams: u32,
    /// Name the backends the way a fleet does: the auth service by a DNS
    /// name (`localhost`, re-resolved by the balancer) and, for both
    /// gateways, every task replica in one comma-separated list.
    pub balanced: bool,
    /// Redis for every service (they share it: the gateways read the auth
    /// service's mirror of live sessions); the shared test Redis if unset.
    /// Set to a [`taskgate_test_support::PrivateRedis`] to stop it mid-test.
    pub redis_url: Option<String>,
    /// Any other change to the auth service's settings.
    pub auth: fn(&mut auth_service::Settings),
    /// Send both gateways' backend calls through a [`CuttableProxy`] in
    /// front of each backend ([`TestStack::auth_proxy`], [`TestStack::task_proxy`]);
    /// the task service still reaches the auth service directly.
    pub through_proxies: bool,
    /// The Postgres server the stack's database is made on (a superuser URL);
    /// the shared test Postgres if unset. Set to a
    /// [`taskgate_test_support::PrivatePostgres`] to stop it mid-test.
    pub postgres_admin_url: Option<String>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            task_url: None,
            rate_limit_per_minute: 100,
            cors_allowed_origins: "*".into(),
            cookie_secure: true,
            mtls: false,
            key_refresh_seconds: 300,
            gateway: |_| {},
            task_replicas: 1,
            max_watch_streams: 10_000,
            balanced: false,
            redis_url: None,
            auth: |_| {},
            through_proxies: false,
            postgres_admin_url: None,
        }
    }
}

/// A running system and clients for it.
pub struct TestStack {
    /// Gateway replica A.
    pub gateway_a: SocketAddr,
    /// Gateway replica B (same Redis, same prefix).
    pub gateway_b: SocketAddr,
    /// Gateway A's admin listener (`/metrics`).
    pub admin_a: SocketAddr,
    /// The auth service's settings (for its commands, such as `revoke-key`).
    #[allow(dead_code)] // for modules that run auth-service commands
    pub auth_settings: auth_service::Settings,
    /// The certificates, when the stack uses mutual TLS.
    #[allow(dead_code)] // for modules that call backends over mutual TLS
    pub certs: Option<std::sync::Arc<taskgate_test_support::TestCerts>>,
    /// The auth service, for direct calls.
    #[allow(dead_code)] // for modules that call the auth service directly
    pub auth_addr: SocketAddr,
    /// The task service, for direct calls.
    pub task_addr: SocketAddr,
    /// The proxy between the gateways and the auth service, when the stack
    /// was started [`StackOptions::through_proxies`].
    pub auth_proxy: Option<CuttableProxy>,
    /// The proxy between the gateways and the (first) task service replica,
    /// when the stack was started [`StackOptions::through_proxies`].
    pub task_proxy: Option<CuttableProxy>,
    /// The Redis key prefix every component of this stack uses.
    #[allow(dead_code)] // for modules that look at Redis keys
    pub redis_prefix: String,
    /// An HTTP/1.1 client for REST and gRPC-web (no cookie store).
    pub http: reqwest::Client,
    /// Native gRPC AuthService client through gateway A.
    pub auth_a: AuthServiceClient<Channel>,
    /// Native gRPC TaskService client through gateway A.
    pub task_a: TaskServiceClient<Channel>,
    /// Native gRPC AuthService client through gateway B.
    pub auth_b: AuthServiceClient<Channel>,
    /// Native gRPC TaskService client through gateway B.
    pub task_b: TaskServiceClient<Channel>,
    /// Stops every server of the stack when dropped.
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

/// A registered user with a live session.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// The user as the auth service returned it.
    pub user: User,
    /// Their username.
    pub username: String,
    /// The session's tokens.
    pub tokens: TokenPair,
}

impl TestUser {
    /// The access token.
    pub fn access(&self) -> &str {
        &self.tokens.access_token
    }
}

/// Starts the default stack.
pub async fn spawn_stack() -> TestStack {
    spawn_stack_with(StackOptions::default()).await
}

/// Runs `server` until the returned sender is dropped.
fn serve<F, Fut>(server: F) -> tokio::sync::oneshot::Sender<()>
where
    F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let fut = server(Box::pin(async move {
        let _ = stopped.await;
    }));
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            panic!("a server of the test stack failed: {e:#}");
        }
    });
    stop
}

/// Starts a stack as `options` say.
pub async fn spawn_stack_with(options: StackOptions) -> TestStack {
    taskgate_test_support::init_test_logging();
    let database_url = match &options.postgres_admin_url {
        Some(admin_url) => taskgate_test_support::fresh_database_on(admin_url).await,
        None => taskgate_test_support::fresh_database().await,
    };
    let redis_url = options.redis_url.clone().unwrap_or_else(taskgate_test_support::redis_url);
    let prefix = taskgate_test_support::unique_prefix();
    let mut stop = Vec::new();

    let certs = options.mtls.then(|| std::sync::Arc::new(taskgate_test_support::TestCerts::new()));
    let mtls = |name: &str| certs.as_ref().map(|c| c.bundle.settings(name)).unwrap_or_default();
    let mut auth_settings = auth_service::Settings::for_tests(database_url.clone(), redis_url.clone(), prefix.clone());
    auth_settings.mtls = mtls("auth");
    auth_settings.key_reload_interval = Duration::from_secs(options.key_refresh_seconds);
    (options.auth)(&mut auth_settings);
    let auth = auth_service::Application::build(auth_settings.clone()).await.expect("building the auth service");
    let auth_addr = auth.local_addr();
    stop.push(serve(|s| auth.run_until_stopped(s)));
    let auth_url =
        if options.balanced { format!("http://localhost:{}", auth_addr.port()) } else { format!("http://{auth_addr}") };

    let mut task_addrs = Vec::new();
    for _ in 0..options.task_replicas.max(1) {
        let mut task_settings = task_service::Settings::for_tests(
            database_url.clone(),
            redis_url.clone(),
            prefix.clone(),
            auth_url.clone(),
        );
        task_settings.mtls = mtls("task");
        task_settings.jwks_refresh_seconds = options.key_refresh_seconds;
        let task = task_service::Application::build(task_settings).await.expect("building the task service");
        task_addrs.push(task.local_addr());
        stop.push(serve(|s| task.run_until_stopped(s)));
    }
    let task_addr = task_addrs[0];
    let (auth_proxy, task_proxy) = if options.through_proxies {
        (Some(CuttableProxy::start(auth_addr).await), Some(CuttableProxy::start(task_addr).await))
    } else {
        (None, None)
    };
    let gateway_auth_url = auth_proxy.as_ref().map_or_else(|| auth_url.clone(), CuttableProxy::url);

    let mut gateways = Vec::new();
    let mut admins = Vec::new();
    for i in 0..2 {
        let proxied = task_proxy.as_ref().map(CuttableProxy::url);
        let task_url = options.task_url.clone().or(proxied).unwrap_or_else(|| {
            if options.balanced {
                return task_addrs.iter().map(|a| format!("http://{a}")).collect::<Vec<_>>().join(",");
            }
            let replica = if i == 0 { task_addrs[0] } else { task_addrs[task_addrs.len() - 1] };
            format!("http://{replica}")
        });
        let mut settings =
            gateway::Settings::for_tests(gateway_auth_url.clone(), task_url, redis_url.clone(), prefix.clone());
        settings.max_watch_streams = options.max_watch_streams;
        settings.rate_limit_per_minute = options.rate_limit_per_minute;
        settings.cors_allowed_origins = options.cors_allowed_origins.clone();
        settings.cookie_secure = options.cookie_secure;
        settings.mtls = mtls("gateway");
        settings.jwks_refresh_seconds = options.key_refresh_seconds;
        (options.gateway)(&mut settings);
        let app = gateway::Application::build(settings).await.expect("building a gateway");
        gateways.push(app.local_addr());
        admins.push(app.admin_addr());
        stop.push(serve(|s| app.run_until_stopped(s)));
    }
    let (gateway_a, gateway_b) = (gateways[0], gateways[1]);

    TestStack {
        gateway_a,
        gateway_b,
        admin_a: admins[0],
        auth_settings,
        certs,
        auth_addr,
        task_addr,
        auth_proxy,
        task_proxy,
        redis_prefix: prefix,
        http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client"),
        auth_a: AuthServiceClient::new(lazy_channel(gateway_a)),
        task_a: TaskServiceClient::new(lazy_channel(gateway_a)),
        auth_b: AuthServiceClient::new(lazy_channel(gateway_b)),
        task_b: TaskServiceClient::new(lazy_channel(gateway_b)),
        _stop: stop,
    }
}

/// A lone gateway with `tweak`ed test settings, its backends pointing at
/// nothing (channels connect lazily), on the shared test Redis; it stops
/// when the returned sender is dropped.
pub async fn spawn_gateway(
    tweak: impl FnOnce(&mut gateway::Settings),
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let lone = spawn_lone_gateway(tweak).await;
    (lone.addr, lone.stop)
}

/// A gateway started by [`spawn_lone_gateway`].
pub struct LoneGateway {
    /// Its public port.
    pub addr: SocketAddr,
    /// Its admin port (`/metrics`).
    #[allow(dead_code)] // for modules that scrape metrics
    pub admin: SocketAddr,
    /// Stops it when dropped.
    pub stop: tokio::sync::oneshot::Sender<()>,
}

/// Like [`spawn_gateway`], also telling the admin address.
pub async fn spawn_lone_gateway(tweak: impl FnOnce(&mut gateway::Settings)) -> LoneGateway {
    taskgate_test_support::init_test_logging();
    let mut settings = gateway::Settings::for_tests(
        "http://127.0.0.1:9".into(),
        "http://127.0.0.1:9".into(),
        taskgate_test_support::redis_url(),
        taskgate_test_support::unique_prefix(),
    );
    tweak(&mut settings);
    let app = gateway::Application::build(settings).await.expect("building a gateway");
    let (addr, admin) = (app.local_addr(), app.admin_addr());
    LoneGateway { addr, admin, stop: serve(|s| app.run_until_stopped(s)) }
}

/// A plaintext HTTP/2 channel to `addr`.
pub fn lazy_channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("valid url").connect_lazy()
}

impl TestStack {
    /// `http://<gateway A><path>`.
    pub fn url_a(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway_a)
    }

    /// `http://<gateway B><path>`.
    pub fn url_b(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway_b)
    }

    /// A TaskService client that bypasses the gateways.
    pub fn task_direct(&self) -> TaskServiceClient<Channel> {
        TaskServiceClient::new(lazy_channel(self.task_addr))
    }

    /// Registers a new user and logs in, over native gRPC through gateway A.
    pub async fn user(&self) -> TestUser {
        let username = username();
        let (user, tokens) = taskgate_test_support::register_and_login(&self.auth_a, &username).await;
        TestUser { user, username, tokens }
    }

    /// Logs `username` in over REST with `?cookies=true` through gateway A;
    /// returns the value of every cookie the answer sets, by name.
    #[allow(dead_code)] // for modules that test browser sessions
    pub async fn cookie_login(&self, username: &str) -> std::collections::HashMap<String, String> {
        let response = self
            .http
            .post(self.url_a("/api/v1/auth/login?cookies=true"))
            .json(&serde_json::json!({"login": username, "password": PASSWORD}))
            .send()
            .await
            .expect("cookie login");
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|c| c.split(';').next()?.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    /// The `/metrics` text of gateway A (from its admin listener).
    pub async fn metrics_a(&self) -> String {
        let url = format!("http://{}/metrics", self.admin_a);
        self.http.get(url).send().await.expect("GET /metrics").text().await.expect("metrics text")
    }
}

/// The value of the sample `name_and_labels` (exact text before the value)
/// in a Prometheus exposition, 0 when absent.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name_and_labels))
        .filter_map(|rest| rest.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The outcome of one gRPC-web call made by hand.
#[derive(Debug)]
pub struct GrpcWebReply<T> {
    /// The HTTP status (200 for every gRPC outcome).
    pub http_status: reqwest::StatusCode,
    /// The response headers (rate-limit headers, x-request-id, CORS).
    pub headers: reqwest::header::HeaderMap,
    /// The decoded message, when one came.
    pub message: Option<T>,
    /// The grpc-status, from the trailer frame or (trailers-only) the headers.
    pub code: tonic::Code,
    /// The grpc-message, percent-decoded loosely.
    pub grpc_message: String,
    /// The trailers, lower-cased names.
    pub trailers: Vec<(String, String)>,
}

/// Makes a gRPC-web call the way a browser library does: POST, content type
/// `application/grpc-web+proto`, a 5-byte frame header before the message;
/// the reply's trailer frame (flag 0x80) carries the status.
pub async fn grpc_web<Req: Message, Resp: Message + Default>(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    request: &Req,
    headers: &[(&str, &str)],
) -> GrpcWebReply<Resp> {
    let payload = request.encode_to_vec();
    let mut body = BytesMut::with_capacity(payload.len() + 5);
    body.put_u8(0);
    body.put_u32(u32::try_from(payload.len()).expect("small message"));
    body.put_slice(&payload);
    let mut call = http
        .post(format!("{base}{path}"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(body.freeze());
    for (k, v) in headers {
        call = call.header(*k, *v);
    }
    let response = call.send().await.expect("gRPC-web request");
    let http_status = response.status();
    let response_headers = response.headers().clone();
    let mut bytes: Bytes = response.bytes().await.expect("gRPC-web body");
    let mut message = None;
    let mut trailers = Vec::new();
    while bytes.len() >= 5 {
        let flag = bytes.get_u8();
        let len = bytes.get_u32() as usize;
        let frame = bytes.split_to(len.min(bytes.len()));
        if flag & 0x80 == 0 {
            message = Some(Resp::decode(frame).expect("a decodable message"));
        } else {
            for line in String::from_utf8_lossy(&frame).split("\r\n") {
                if let Some((k, v)) = line.split_once(':') {
                    trailers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
        }
    }
    let header = |name: &str| response_headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let trailer = |name: &str| trailers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let code = trailer("grpc-status").or_else(|| header("grpc-status")).and_then(|c| c.parse::<i32>().ok());
    let grpc_message = trailer("grpc-message").or_else(|| header("grpc-message")).unwrap_or_default();
    GrpcWebReply {
        http_status,
        headers: response_headers,
        message,
        code: tonic::Code::from_i32(code.expect("a grpc-status in the trailers or headers")),
        grpc_message: grpc_message.replace("%20", " "),
        trailers,
    }
}
