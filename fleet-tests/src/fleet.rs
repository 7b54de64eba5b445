//! Starting a fleet in one process: every replica is the real service library on a port of
//! its own, on a tokio runtime of its own, so that killing it (shutting its runtime down) drops
//! its listener and every connection at once, as a crashed process would.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use taskgate_proto::{
    auth::v1::{TokenPair, auth_service_client::AuthServiceClient},
    task::v1::task_service_client::TaskServiceClient,
};
use taskgate_test_support::PrivateRedisCluster;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// One running replica of a service.
pub struct Replica {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The runtime everything of the replica runs on; `None` once killed.
    runtime: Option<tokio::runtime::Runtime>,
    /// A task replica's counters (reads served), to see how load spread.
    pub metrics: Option<Arc<task_service::Metrics>>,
}

impl Replica {
    /// Kills the replica outright: its runtime stops, its listener and connections close without
    /// a goodbye, calls in progress are cut.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// First-page ListTasks reads this task replica served (from the cache, Postgres, or around
    /// the cache).
    pub fn reads(&self) -> u64 {
        self.metrics.as_ref().map_or(0, |m| m.cache_hits() + m.cache_misses() + m.cache_bypasses())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a replica hands back once built.
type Built = (SocketAddr, Option<Arc<task_service::Metrics>>, tokio::runtime::Runtime);

/// Builds a replica with `build` on a runtime of its own (on a thread of its own: the services'
/// build futures need not be `Send`), serves it there with `serve`, and hands the runtime over.
async fn start_replica<A, B, Fut, S, D>(build: impl FnOnce() -> B + Send + 'static, serve: S, describe: D) -> Replica
where
    A: Send + 'static,
    B: Future<Output = A>,
    S: FnOnce(A) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
    D: FnOnce(&A) -> (SocketAddr, Option<Arc<task_service::Metrics>>) + Send + 'static,
{
    let (ready, built) = oneshot::channel::<Built>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for a replica");
        let app = runtime.block_on(build());
        let (addr, metrics) = describe(&app);
        runtime.spawn(serve(app));
        let _ = ready.send((addr, metrics, runtime));
    });
    let (addr, metrics, runtime) = built.await.expect("the replica failed to start");
    Replica { addr, runtime: Some(runtime), metrics }
}

/// Starts an auth-service replica.
pub async fn start_auth(settings: auth_service::Settings) -> Replica {
    start_replica(
        move || async move { auth_service::Application::build(settings).await.expect("building an auth replica") },
        |app| async move { app.run_until_stopped(std::future::pending()).await.expect("an auth replica failed") },
        |app| (app.local_addr(), None),
    )
    .await
}

/// Starts a task-service replica.
pub async fn start_task(settings: task_service::Settings) -> Replica {
    start_replica(
        move || async move { task_service::Application::build(settings).await.expect("building a task replica") },
        |app| async move { app.run_until_stopped(std::future::pending()).await.expect("a task replica failed") },
        |app| (app.local_addr(), Some(app.metrics())),
    )
    .await
}

/// Starts a gateway replica.
pub async fn start_gateway(settings: gateway::Settings) -> Replica {
    start_replica(
        move || async move { gateway::Application::build(settings).await.expect("building a gateway replica") },
        |app| async move { app.run_until_stopped(std::future::pending()).await.expect("a gateway replica failed") },
        |app| (app.local_addr(), None),
    )
    .await
}

/// A whole fleet on a private Redis Cluster and a fresh database.
pub struct Fleet {
    /// The gateways, each knowing every backend replica.
    pub gateways: Vec<Replica>,
    /// The task-service replicas, each knowing every auth replica.
    pub tasks: Vec<Replica>,
    /// The auth-service replicas.
    pub auths: Vec<Replica>,
    /// The Redis key prefix the fleet shares.
    pub prefix: String,
    /// Plain HTTP client for the REST routes.
    pub http: reqwest::Client,
    /// The Redis Cluster; stopped last.
    pub redis: PrivateRedisCluster,
}

/// How many replicas of what.
#[derive(Clone, Copy)]
pub struct Size {
    /// auth-service replicas.
    pub auths: usize,
    /// task-service replicas.
    pub tasks: usize,
    /// Gateways.
    pub gateways: usize,
}

/// Starts `size` replicas on a private Redis Cluster, reached through `redis_url` (given the
/// cluster) when set, else through the URL naming every node.
pub async fn spawn_fleet(size: Size, redis_url: impl FnOnce(&PrivateRedisCluster) -> String) -> Fleet {
    taskgate_test_support::init_test_logging();
    let redis = PrivateRedisCluster::start();
    let redis_url = redis_url(&redis);
    let database_url = taskgate_test_support::fresh_database().await;
    let prefix = taskgate_test_support::unique_prefix();

    let auths = futures::future::join_all((0..size.auths).map(|_| {
        start_auth(auth_service::Settings::for_tests(database_url.clone(), redis_url.clone(), prefix.clone()))
    }))
    .await;
    let auth_urls = auths.iter().map(Replica::url).collect::<Vec<_>>().join(",");
    let tasks = futures::future::join_all((0..size.tasks).map(|_| {
        start_task(task_service::Settings::for_tests(
            database_url.clone(),
            redis_url.clone(),
            prefix.clone(),
            auth_urls.clone(),
        ))
    }))
    .await;
    let task_urls = tasks.iter().map(Replica::url).collect::<Vec<_>>().join(",");
    let mut gateways = Vec::new();
    for _ in 0..size.gateways {
        let settings =
            gateway::Settings::for_tests(auth_urls.clone(), task_urls.clone(), redis_url.clone(), prefix.clone());
        gateways.push(start_gateway(settings).await);
    }
    Fleet {
        gateways,
        tasks,
        auths,
        prefix,
        http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client"),
        redis,
    }
}

/// A plaintext HTTP/2 channel to `addr`.
pub fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("valid url").connect_lazy()
}

impl Fleet {
    /// An AuthService client through gateway `i`.
    pub fn auth_via(&self, i: usize) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(channel(self.gateways[i].addr))
    }

    /// A TaskService client through gateway `i`.
    pub fn task_via(&self, i: usize) -> TaskServiceClient<Channel> {
        TaskServiceClient::new(channel(self.gateways[i].addr))
    }

    /// A TaskService client straight to task replica `i`.
    pub fn task_direct(&self, i: usize) -> TaskServiceClient<Channel> {
        TaskServiceClient::new(channel(self.tasks[i].addr))
    }

    /// An AuthService client straight to auth replica `i` (registration and login bypass the
    /// gateways' per-address limit on anonymous calls, which the fleet's tests do not study).
    pub fn auth_direct(&self, i: usize) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(channel(self.auths[i].addr))
    }

    /// `http://<gateway i><path>`.
    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{path}", self.gateways[i].addr)
    }

    /// Registers and logs in a new user at auth replica `i`; returns its id and tokens.
    pub async fn user(&self, i: usize) -> (String, TokenPair) {
        let auth = self.auth_direct(i % self.auths.len());
        let (user, tokens) = taskgate_test_support::register_and_login(&auth, &taskgate_test_support::username()).await;
        (user.id, tokens)
    }
}
