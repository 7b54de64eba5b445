//! `spawn_app()` and small helpers shared by the test modules.

use std::net::SocketAddr;

use auth_service::{Application, Settings, keys::KeyStore};
use sqlx::PgPool;
use taskgate_proto::auth::v1::{TokenPair, User, auth_service_client::AuthServiceClient};
use tonic::transport::Channel;

/// A password that passes validation.
pub use taskgate_test_support::{PASSWORD, bearer, username};

/// A running auth service and what tests need to poke at it.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its admin listener (`/metrics`).
    pub admin: SocketAddr,
    /// A typed client over a real socket.
    pub client: AuthServiceClient<Channel>,
    /// The service's database (search_path = auth).
    pub db: PgPool,
    /// Its signing keys.
    pub keys: KeyStore,
    /// The settings it was started with.
    pub settings: Settings,
    /// Stops the server when dropped or sent to.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts the service with test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the service with test settings adjusted by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let database_url = taskgate_test_support::fresh_database().await;
    spawn_app_on(database_url, taskgate_test_support::redis_url(), tweak).await
}

/// Starts the service against the given Postgres database and Redis.
pub async fn spawn_app_on(database_url: String, redis_url: String, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    taskgate_test_support::init_test_logging();
    let mut settings = Settings::for_tests(database_url, redis_url, taskgate_test_support::unique_prefix());
    tweak(&mut settings);
    let app = Application::build(settings.clone()).await.expect("building the app");
    let addr = app.local_addr();
    let admin = app.admin_addr();
    let db = app.db_pool();
    let keys = app.key_store();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let client = AuthServiceClient::connect(format!("http://{addr}")).await.expect("connecting to the app");
    TestApp { addr, admin, client, db, keys, settings, _stop: stop }
}

impl TestApp {
    /// A new client on its own connection.
    pub async fn new_client(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::connect(format!("http://{}", self.addr)).await.expect("connecting")
    }

    /// Registers `username` with [`PASSWORD`].
    pub async fn register(&self, username: &str) -> User {
        taskgate_test_support::register(&self.client, username).await
    }

    /// Logs `login` in with [`PASSWORD`].
    pub async fn login(&self, login: &str) -> TokenPair {
        taskgate_test_support::login(&self.client, login).await
    }

    /// Registers a new user and logs in: (user, tokens).
    pub async fn user_with_session(&self) -> (User, TokenPair) {
        taskgate_test_support::register_and_login(&self.client, &username()).await
    }
}

/// The field named by the BadRequest detail of `status`.
pub fn bad_request_field(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .bad_request()
        .and_then(|b| b.field_violations.first())
        .map(|v| v.field.clone())
        .unwrap_or_default()
}

/// Decodes the JSON header of a JWT.
pub fn jwt_header(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let header = token.split('.').next().expect("header part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).expect("base64");
    serde_json::from_slice(&bytes).expect("json header")
}

/// Decodes the JSON claims of a JWT (no verification).
pub fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("payload part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64");
    serde_json::from_slice(&bytes).expect("json claims")
}
