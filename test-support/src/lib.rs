//! Test harness shared by every taskgate crate (a dev-dependency only).
//!
//! `cargo xtask test` starts one PostgreSQL and one Redis on free ports and
//! passes them in `TASKGATE_TEST_DATABASE_URL` and `TASKGATE_TEST_REDIS_URL`.
//! Each test then gets:
//! - its own database, cloned from a template that has every service's
//!   migrations applied ([`fresh_database`]), so tests never see each
//!   other's rows and can run in parallel;
//! - its own Redis key prefix ([`unique_prefix`]) on the shared server;
//! - when it needs to stop (or freeze) a server mid-test, a private one
//!   ([`PrivateRedis`], [`PrivatePostgres`]), or a private Redis Cluster
//!   whose primaries it can kill ([`PrivateRedisCluster`]);
//! - when it needs a backend's connections to fail mid-call, a TCP proxy in
//!   front of the backend that it can cut ([`CuttableProxy`]);
//! - when it checks the traces the services export, an OTLP receiver
//!   ([`OtlpReceiver`]).
//!
//! `cargo xtask test` runs the Redis-touching integration tests twice: once
//! with `TASKGATE_TEST_REDIS_URL` naming a single Redis, once naming a Redis
//! Cluster (`redis-cluster://...`, 3 primaries and 3 replicas). Tests need no
//! change for the second pass: every key a test's services write carries the
//! test's unique prefix and a hash tag, and nothing is cleaned up (the servers
//! are thrown away with the run), so nothing scans or deletes across nodes.
//!
//! # Layout
//! Everything is in this file, but for [`proxy`] (the cuttable proxy),
//! [`otlp`] (the trace receiver), [`metrics`] (scraping `/metrics`) and
//! [`load`] (bounded load for the benchmarks); it is small on purpose.

pub mod load;
pub mod metrics;
pub mod openapi;
pub mod otlp;
pub mod proxy;

pub use otlp::OtlpReceiver;
pub use proxy::{Cut, CuttableProxy};

use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection as _, PgConnection};
use taskgate_common::db;
use taskgate_proto::auth::v1::{
    LoginRequest, RegisterRequest, TokenPair, User, auth_service_client::AuthServiceClient,
};
use tonic::{Request, transport::Channel};

/// The password every test user gets: long enough, and not a common one.
pub const PASSWORD: &str = "correct horse battery staple";

/// A fresh username no other test uses.
pub fn username() -> String {
    format!("u{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A request carrying `authorization: Bearer <token>`.
pub fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii token"));
    request
}

/// Registers `username` with [`PASSWORD`] through `auth` (the auth service or
/// a gateway in front of it).
pub async fn register(auth: &AuthServiceClient<Channel>, username: &str) -> User {
    auth.clone()
        .register(RegisterRequest {
            username: Some(username.to_owned()),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner()
        .user
        .expect("a registered user")
}

/// Logs `login` in with [`PASSWORD`] through `auth`.
pub async fn login(auth: &AuthServiceClient<Channel>, login: &str) -> TokenPair {
    auth.clone()
        .login(LoginRequest { login: login.to_owned(), password: PASSWORD.into(), ..Default::default() })
        .await
        .expect("login")
        .into_inner()
        .tokens
        .expect("a token pair")
}

/// [`register`]s `username`, then [`login`]s: the user and its tokens.
pub async fn register_and_login(auth: &AuthServiceClient<Channel>, username: &str) -> (User, TokenPair) {
    let user = register(auth, username).await;
    (user, login(auth, username).await)
}

/// The template database every test database is cloned from.
const TEMPLATE: &str = "taskgate_template";
/// Advisory-lock key that serialises template creation across test processes.
const TEMPLATE_LOCK: i64 = 0x7461_736b_6761_7465;

/// The URL of the test PostgreSQL server's `postgres` database.
///
/// Panics with instructions when the suite was not started by `cargo xtask test`.
pub fn admin_database_url() -> String {
    std::env::var("TASKGATE_TEST_DATABASE_URL")
        .expect("TASKGATE_TEST_DATABASE_URL is not set: run the tests with `cargo xtask test`")
}

/// The URL of the shared test Redis server.
pub fn redis_url() -> String {
    std::env::var("TASKGATE_TEST_REDIS_URL")
        .expect("TASKGATE_TEST_REDIS_URL is not set: run the tests with `cargo xtask test`")
}

/// A Redis key prefix no other test uses, such as `t3f2a...:`.
pub fn unique_prefix() -> String {
    format!("t{}:", uuid::Uuid::new_v4().simple())
}

/// Turns `postgres://host/db` into `postgres://host/<name>` (query kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let root = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

/// Creates the migrated template once per server (any test process may be
/// first; an advisory lock makes the others wait).
async fn ensure_template(admin: &mut PgConnection, admin_url: &str) {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut *admin)
        .await
        .expect("taking the template lock");
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(TEMPLATE)
        .fetch_optional(&mut *admin)
        .await
        .expect("looking for the template database");
    if exists.is_none() {
        let building = format!("{TEMPLATE}_building");
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {building}")))
            .execute(&mut *admin)
            .await
            .expect("dropping a half-built template");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {building}")))
            .execute(&mut *admin)
            .await
            .expect("creating the template database");
        let url = with_database(admin_url, &building);
        for (schema, migrator) in [(db::AUTH_SCHEMA, &db::AUTH_MIGRATOR), (db::TASK_SCHEMA, &db::TASK_MIGRATOR)] {
            let pool = db::pool(&url, schema, 1).expect("template pool");
            db::migrate(&pool, schema, migrator).await.expect("migrating the template");
            pool.close().await;
        }
        // Renaming last means a template that exists is always complete.
        sqlx::query(AssertSqlSafe(format!("ALTER DATABASE {building} RENAME TO {TEMPLATE}")))
            .execute(&mut *admin)
            .await
            .expect("publishing the template");
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut *admin)
        .await
        .expect("releasing the template lock");
}

/// Creates a database for one test, with every service's schema migrated,
/// and returns its URL. Databases are left behind: the whole server is
/// thrown away at the end of the run.
pub async fn fresh_database() -> String {
    fresh_database_on(&admin_database_url()).await
}

/// Like [`fresh_database`], on the server behind `admin_url`.
pub async fn fresh_database_on(admin_url: &str) -> String {
    let mut admin = PgConnection::connect(admin_url).await.expect("connecting to the test postgres");
    ensure_template(&mut admin, admin_url).await;
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    // CREATE DATABASE ... TEMPLATE fails while another session touches the
    // template; that is brief, so retry.
    let mut attempt = 0;
    loop {
        let sql = format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE} STRATEGY FILE_COPY");
        match sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await {
            Ok(_) => break,
            Err(e) if attempt < 50 => {
                attempt += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("creating test database {name}: {e}"),
        }
    }
    let _ = admin.close().await;
    with_database(admin_url, &name)
}

/// Creates an empty database (no schema, no migration) and returns its URL,
/// for tests of the migrations themselves.
pub async fn empty_database() -> String {
    let admin_url = admin_database_url();
    let mut admin = PgConnection::connect(&admin_url).await.expect("connecting to the test postgres");
    let name = format!("empty_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("creating an empty database");
    let _ = admin.close().await;
    with_database(&admin_url, &name)
}

/// The variable naming a file every ERROR line any test logs is appended to
/// (`cargo xtask test` sets it, and fails the run on an ERROR line a client
/// caused).
pub const ERROR_LOG_VAR: &str = "TASKGATE_TEST_ERROR_LOG";

/// Installs the tests' log subscriber: service logs in the test output when
/// `TEST_LOG` is set, and every ERROR line, named after the test (the
/// thread) that logged it, appended to the file [`ERROR_LOG_VAR`] names.
pub fn init_test_logging() {
    use tracing_subscriber::{
        Layer as _, filter::LevelFilter, fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _,
    };
    let shown = std::env::var_os("TEST_LOG")
        .is_some()
        .then(|| fmt::layer().with_test_writer().with_filter(tracing_subscriber::EnvFilter::new("info")));
    let errors = std::env::var_os(ERROR_LOG_VAR).and_then(|path| {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).ok()?;
        Some(
            fmt::layer()
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false)
                .with_thread_names(true)
                .with_filter(LevelFilter::ERROR),
        )
    });
    let _ = tracing_subscriber::registry().with(shown).with(errors).try_init();
}

/// A private CA and certificates for `gateway`, `auth` and `task` in a
/// temporary folder, for stacks whose services talk over mutual TLS.
pub struct TestCerts {
    /// The files; `bundle.settings("auth")` are the auth service's settings.
    pub bundle: taskgate_common::mtls::generate::Bundle,
    /// Holds the folder until the test ends.
    _dir: tempfile::TempDir,
}

impl TestCerts {
    /// Generates the CA and the three service certificates.
    pub fn new() -> TestCerts {
        let dir = tempfile::tempdir().expect("temp dir for certificates");
        let bundle = taskgate_common::mtls::generate::write(dir.path(), &["gateway", "auth", "task"])
            .expect("generating test certificates");
        TestCerts { bundle, _dir: dir }
    }
}

impl Default for TestCerts {
    fn default() -> Self {
        TestCerts::new()
    }
}

/// A Redis server of the test's own, for tests that stop it mid-way.
pub struct PrivateRedis {
    /// The running server; stopped on drop.
    server: devstack::Redis,
    /// Holds the server's folder until the test ends.
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    /// Starts a fresh `redis-server` on a free port.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let server = devstack::Redis::start(dir.path(), None).expect("starting a private redis");
        PrivateRedis { server, _dir: dir }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url(0)
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        self.server.stop().expect("stopping the private redis");
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.server.start_again().expect("restarting the private redis");
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is
    /// answered until [`PrivateRedis::thaw`] (a hung Redis, not a dead one).
    pub fn freeze(&self) {
        self.server.freeze().expect("freezing the private redis");
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn thaw(&self) {
        self.server.thaw().expect("thawing the private redis");
    }
}

/// Whether the shared test Redis is a Redis Cluster (the cluster pass of
/// `cargo xtask test`).
pub fn redis_is_cluster() -> bool {
    let url = redis_url();
    url.starts_with("redis-cluster://") || url.starts_with("rediss-cluster://")
}

/// A Redis Cluster of the test's own (3 primaries, 3 replicas), for tests
/// that kill a primary mid-way.
pub struct PrivateRedisCluster {
    /// The running nodes; stopped on drop.
    cluster: devstack::RedisCluster,
    /// Holds the nodes' folder until the test ends.
    _dir: tempfile::TempDir,
}

impl PrivateRedisCluster {
    /// Starts six `redis-server --cluster-enabled yes` nodes on free ports and
    /// joins them (a few seconds).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the redis cluster");
        let cluster = devstack::RedisCluster::start(dir.path(), 3, 1).expect("starting a private redis cluster");
        PrivateRedisCluster { cluster, _dir: dir }
    }

    /// `redis-cluster://<first node>?node=...` naming every node.
    pub fn url(&self) -> String {
        self.cluster.url()
    }

    /// `redis-cluster://<first node>`: one seed, the rest discovered.
    pub fn seed_url(&self) -> String {
        self.cluster.seed_url()
    }

    /// Kills the primary serving `key`'s slot and returns its index.
    pub fn kill_primary_for(&mut self, key: &str) -> usize {
        let index = self.cluster.primary_for(key).expect("finding the primary of the key");
        self.cluster.kill(index).expect("killing a primary");
        index
    }

    /// The index of the running primary serving `key`'s slot, if any.
    pub fn primary_for(&self, key: &str) -> Option<usize> {
        self.cluster.primary_for(key).ok()
    }

    /// Starts node `index` again (it rejoins as a replica after a failover).
    pub fn restart(&mut self, index: usize) {
        self.cluster.restart(index).expect("restarting a cluster node");
    }

    /// Waits until every running node reports the cluster healthy.
    pub fn wait_until_healthy(&self, timeout: Duration) {
        self.cluster.wait_until_healthy(timeout).expect("the redis cluster did not heal");
    }
}

/// A PostgreSQL server of the test's own, for tests that stop it mid-way.
pub struct PrivatePostgres {
    /// The running cluster; stopped on drop.
    server: devstack::Postgres,
    /// Holds the cluster's folder until the test ends.
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// Creates and starts a cluster on a free port (a few seconds).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for postgres");
        let server = devstack::Postgres::start(dir.path(), None).expect("starting a private postgres");
        PrivatePostgres { server, _dir: dir }
    }

    /// The URL of its `postgres` database; pass to [`fresh_database_on`].
    pub fn admin_url(&self) -> String {
        self.server.url("postgres")
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        self.server.stop().expect("stopping the private postgres");
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.server.start_again().expect("restarting the private postgres");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_swaps_the_database_name() {
        assert_eq!(with_database("postgres://u@h:5/postgres", "x"), "postgres://u@h:5/x");
        assert_eq!(
            with_database("postgres://u@h:5/postgres?sslmode=disable", "x"),
            "postgres://u@h:5/x?sslmode=disable"
        );
    }

    #[tokio::test]
    async fn fresh_databases_have_both_schemas_and_are_distinct() {
        if std::env::var_os("TASKGATE_TEST_DATABASE_URL").is_none() {
            panic!("run with `cargo xtask test`");
        }
        let a = fresh_database().await;
        let b = fresh_database().await;
        assert_ne!(a, b);
        let mut conn = PgConnection::connect(&a).await.expect("connect");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema IN ('auth','task') AND table_name IN ('users','tasks')")
            .fetch_one(&mut conn)
            .await
            .expect("query");
        assert_eq!(n, 2);
    }
}
