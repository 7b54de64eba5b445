//! [`Application`]: connects to Postgres, Redis and the auth service, applies
//! migrations, binds the listener, and serves until told to stop.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use taskgate_common::{
    balance::BalancedChannel,
    db, grpc,
    metrics::{Registry, grpc::GrpcServerMetrics},
    mtls::Mtls,
};
use taskgate_proto::{service_names, task::v1::task_service_server::TaskServiceServer};
use taskgate_tokens::{GrpcKeySource, RevocationCheck, RevocationPolicy, Verifier, VerifierConfig};

use crate::{
    Metrics, Settings, auth::Authenticator, cache::ListCache, repository::Repository, service::TaskApi,
    store::TaskStore, watch::Hub,
};

/// Longest a single RPC may run before the server gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The task service, built and bound, ready to serve.
pub struct Application {
    /// The bound gRPC and admin listeners (port 0 in tests, resolved in them).
    listeners: grpc::Listeners,
    /// The gRPC service.
    api: TaskApi,
    /// Counters shared with the service, for tests.
    metrics: Arc<Metrics>,
    /// Mutual TLS material, when MTLS_* is set.
    mtls: Option<Mtls>,
    /// The go-grpc-prometheus series, counted by the server's layer.
    grpc_metrics: Arc<GrpcServerMetrics>,
}

impl Application {
    /// Connects (lazily, where that lets the service start while a dependency
    /// is down), migrates the `task` schema and binds the listen address.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = db::pool(settings.database_url.expose_secret(), db::TASK_SCHEMA, settings.db_max_connections)?;
        if settings.migrate_at_start {
            db::migrate_when_ready(&pool, db::TASK_SCHEMA, &db::TASK_MIGRATOR, db::MIGRATION_PATIENCE).await?;
        }
        // One handle (pool and circuit breaker) for every Redis call of the
        // process: the revocation check, the list cache and WatchTasks.
        let redis = taskgate_common::redis::RedisHandle::connect(
            settings.redis_url.expose_secret(),
            taskgate_common::redis::POOL_SIZE,
        )
        .await?;

        // One channel to the auth service's replicas for the life of the
        // process, balanced per call (over mutual TLS when it is on); it
        // connects on first use and follows replicas as they come and go.
        let mtls = settings.mtls.load()?;
        let auth_channel = BalancedChannel::new(&settings.auth_url, Some(Duration::from_secs(5)), mtls.as_ref())
            .context("AUTH_SERVICE_URL")?;
        let mut verifier_config = VerifierConfig::new(settings.jwt_issuer.clone(), settings.jwt_audience.clone());
        verifier_config.refresh_interval = Some(Duration::from_secs(settings.jwks_refresh_seconds));
        let verifier = Verifier::new(Arc::new(GrpcKeySource::new(auth_channel)), verifier_config);
        let revocation = RevocationCheck::new(redis.clone(), settings.redis_prefix.clone(), RevocationPolicy::FailOpen);
        let auth = Authenticator::new(verifier, revocation);

        let metrics = Arc::new(Metrics::default());
        // One registry per instance: tests run many services in one process.
        let mut registry = Registry::default();
        let grpc_metrics = GrpcServerMetrics::register(&mut registry, &[service_names::TASK]);
        taskgate_common::telemetry::register_metrics(&mut registry);
        metrics.register(&mut registry);
        taskgate_common::keys::validate_prefix(&settings.redis_prefix).map_err(anyhow::Error::msg)?;
        let cache = Arc::new(
            ListCache::new(
                redis.clone(),
                settings.redis_prefix.clone(),
                settings.cache_ttl(),
                settings.watch_event_log_length,
                metrics.clone(),
            )
            .with_max_entry_bytes(usize::try_from(settings.cache_max_entry_bytes).unwrap_or(usize::MAX)),
        );
        // Start clean: covers writes a previous process could not announce.
        cache.settle().await;
        let hub = Hub::start(
            settings.redis_url.expose_secret(),
            redis,
            settings.redis_prefix.clone(),
            settings.watch(),
            metrics.clone(),
        )
        .await?;
        let store = TaskStore::new(Repository::new(pool, metrics.clone()), cache, hub.clone(), metrics.clone())
            .with_fill_delay(settings.cache_fill_delay)
            .with_invalidate_delay(settings.cache_invalidate_delay);

        let listeners = grpc::Listeners::bind(
            (settings.listen_addr, "TASK_LISTEN_ADDR"),
            (settings.admin_addr, "TASK_ADMIN_ADDR"),
            registry,
        )
        .await?;
        Ok(Application { listeners, api: TaskApi::new(auth, store, hub), metrics, mtls, grpc_metrics })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners.grpc_addr()
    }

    /// The address of the admin listener (`/metrics`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.listeners.admin_addr()
    }

    /// This replica's watch streams (for tests).
    pub fn hub(&self) -> Arc<Hub> {
        self.api.hub().clone()
    }

    /// Counters of the work done (queries, cache hits), shared with the
    /// running service.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves TaskService, health and reflection until `shutdown` completes,
    /// then drains in-flight calls for at most [`grpc::DRAIN_TIMEOUT`].
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.run_until_stopped_draining(shutdown, grpc::DRAIN_TIMEOUT).await
    }

    /// [`Application::run_until_stopped`] with a drain of `drain` (tests use a short one).
    pub async fn run_until_stopped_draining(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
        drain: Duration,
    ) -> anyhow::Result<()> {
        taskgate_common::memory::give_back_when_quiet();
        // Covers invalidations other replicas could not deliver to Redis.
        let sweeper = tokio::spawn(self.api.store().clone().sweep_forever());
        let hub = self.api.hub().clone();
        let router = grpc::backend_server(self.mtls.as_ref(), REQUEST_TIMEOUT, self.grpc_metrics)?
            .add_service(TaskServiceServer::new(self.api).max_decoding_message_size(grpc::MAX_MESSAGE_BYTES));
        // Open watch streams never end by themselves: end them when the stop
        // begins, so the drain waits only for ordinary calls.
        let shutdown = async move {
            shutdown.await;
            hub.stop();
        };
        let result = grpc::serve_backend(router, service_names::TASK, self.listeners, shutdown, drain).await;
        sweeper.abort();
        result
    }
}
