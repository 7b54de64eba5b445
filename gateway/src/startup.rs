//! Building the gateway (channels, Redis, verifier, routes, the middleware
//! stack) and serving it: the public port through [`crate::serve`], and
//! `/metrics` on a separate admin listener.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{Router, routing::get};
use secrecy::ExposeSecret as _;
use taskgate_common::{balance::BalancedChannel, mtls::Mtls};
use taskgate_proto::service_names;
use taskgate_tokens::{GrpcKeySource, Verifier, VerifierConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::server::NamedService;
use tonic_health::server::HealthReporter;
use tower::Layer as _;

use crate::{
    Settings,
    auth::EdgeAuth,
    cookies::CookiePolicy,
    edge::{self, Demo, Readiness},
    metrics::{self, Metrics},
    proxy::ServiceProxy,
    ratelimit::RateLimiter,
    rest,
    serve::{self, ConnectionLimits},
    stack, tls,
    upstream::{Backends, Upstream},
    watch::WatchSlots,
};

/// A built gateway, bound to its ports and ready to serve.
pub struct Application {
    /// The bound public listener.
    listener: TcpListener,
    /// Its address (the real port when port 0 was asked for).
    local_addr: SocketAddr,
    /// The bound admin listener (`/metrics`).
    admin_listener: TcpListener,
    /// Its address.
    admin_addr: SocketAddr,
    /// Every public route behind the middleware stack.
    app: Router,
    /// The admin routes.
    admin: Router,
    /// Present when TLS is configured.
    tls: Option<TlsAcceptor>,
    /// Connection bounds of the public port.
    limits: ConnectionLimits,
}

impl Application {
    /// Binds the ports and builds everything; backends and Redis need not be
    /// up yet (channels connect lazily, Redis reconnects by itself).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(settings.listen_addr)
            .await
            .with_context(|| format!("binding GATEWAY_LISTEN_ADDR {}", settings.listen_addr))?;
        let local_addr = listener.local_addr().context("reading the bound address")?;
        let admin_listener = TcpListener::bind(settings.admin_addr)
            .await
            .with_context(|| format!("binding GATEWAY_ADMIN_ADDR {}", settings.admin_addr))?;
        let admin_addr = admin_listener.local_addr().context("reading the bound admin address")?;
        let tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            _ => None,
        };

        let mtls = settings.mtls.load()?;
        let auth_channel = channel(&settings.auth_url, mtls.as_ref()).context("AUTH_SERVICE_URL")?;
        // Calls that hash a password (Register, Login, ChangePassword) get a
        // balanced channel of their own (their own connection to every
        // replica): a flood of them must not queue Refresh, Logout or GetMe
        // behind it on one HTTP/2 connection.
        let auth_upstream = Upstream::new("auth", auth_channel.clone());
        let auth_hashing_upstream =
            auth_upstream.sharing_incidents(channel(&settings.auth_url, mtls.as_ref()).context("AUTH_SERVICE_URL")?);
        let task_channel = channel(&settings.task_url, mtls.as_ref()).context("TASK_SERVICE_URL")?;
        // One handle (pool and circuit breaker) shared by the limiter and /readyz.
        let redis = taskgate_common::redis::RedisHandle::connect(
            settings.redis_url.expose_secret(),
            taskgate_common::redis::POOL_SIZE,
        )
        .await?;
        let metrics = Metrics::new();
        let mut verifier_config = VerifierConfig::new(settings.jwt_issuer.clone(), settings.jwt_audience.clone());
        verifier_config.refresh_interval = Some(Duration::from_secs(settings.jwks_refresh_seconds));
        let verifier = Verifier::new(Arc::new(GrpcKeySource::new(auth_channel.clone())), verifier_config);
        let limiter =
            RateLimiter::new(redis.clone(), settings.redis_prefix.clone(), settings.limits(), metrics.clone()).await;
        let cookies = CookiePolicy::new(settings.cookie_secure, settings.csrf_secret.as_ref());

        let task_upstream = Upstream::new("task", task_channel.clone());
        let watch = WatchSlots::new(settings.max_watch_streams as usize);
        let backends = Backends::new()
            .with_expensive(service_names::AUTH, auth_upstream, auth_hashing_upstream)
            .with(service_names::TASK, task_upstream);
        let (grpc, health) = grpc_routes(&backends, &metrics, &watch).await?;
        edge::spawn_backend_health(health, auth_channel.clone(), task_channel.clone());
        let readiness = Arc::new(Readiness::new(auth_channel, task_channel, redis));
        let mut routes = Router::new()
            .route("/healthz", get(edge::healthz))
            .route("/readyz", get(edge::readyz).with_state(readiness));
        if let Some(demo) = Demo::choose(&settings.demo_dir) {
            let demo = Arc::new(demo);
            routes = routes
                .route("/demo", get(edge::demo).with_state(demo.clone()))
                .route("/demo/", get(edge::demo).with_state(demo.clone()))
                .route("/demo/{*path}", get(edge::demo).with_state(demo));
        }
        let rest_routes = rest::router(backends, cookies.clone(), watch);
        let routes = routes.merge(grpc).merge(rest_routes);

        let app = stack::apply(
            routes,
            stack::Parts {
                metrics: metrics.clone(),
                auth: Arc::new(EdgeAuth::new(verifier, settings.trusted_proxies.clone(), cookies)),
                limiter,
                cors_allowed_origins: settings.cors_allowed_origins.clone(),
                request_timeout: settings.request_timeout(),
                max_in_flight: settings.max_in_flight as usize,
            },
        );
        let admin = Router::new().route("/metrics", get(metrics::render).with_state(metrics));
        let limits = ConnectionLimits {
            max_connections: settings.max_connections as usize,
            header_timeout: settings.header_timeout(),
            idle_timeout: settings.idle_timeout(),
        };
        tracing::info!(%local_addr, %admin_addr, tls = tls.is_some(), mtls = mtls.is_some(), "gateway listening");
        Ok(Application { listener, local_addr, admin_listener, admin_addr, app, admin, tls, limits })
    }

    /// The address the gateway listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the admin listener (`/metrics`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves until `shutdown` completes, then stops accepting and gives
    /// in-flight requests up to 10 s to finish.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Application { listener, admin_listener, app, admin, tls, limits, .. } = self;
        taskgate_common::memory::give_back_when_quiet();
        // The admin port is for the operator's scraper only: plain HTTP, no stack.
        let admin = tokio::spawn(async move {
            if let Err(e) = axum::serve(admin_listener, admin).await {
                tracing::error!(error = %e, "the admin listener failed");
            }
        });
        serve::run(listener, app, tls, limits, taskgate_common::grpc::DRAIN_TIMEOUT, shutdown).await;
        admin.abort();
        Ok(())
    }
}

/// A channel balanced over every replica `spec` names (a list of URLs or a
/// DNS name), each replica one lazily connecting HTTP/2 connection, over
/// mutual TLS when `mtls` is given.
fn channel(spec: &str, mtls: Option<&Mtls>) -> anyhow::Result<BalancedChannel> {
    BalancedChannel::new(spec, None, mtls)
}

/// The path pattern tonic serves a named service under.
fn service_path<S: NamedService>(_: &S) -> String {
    format!("/{}/{{*rest}}", S::NAME)
}

/// The gRPC services, each behind tonic-web so gRPC-web works on the same
/// paths: a proxy for each service of the contract, to its upstreams in
/// `backends`, and health and reflection answered by the gateway. Also
/// returns the health reporter, whose per-service status follows the backends.
async fn grpc_routes(
    backends: &Backends,
    metrics: &Arc<Metrics>,
    watch: &WatchSlots,
) -> anyhow::Result<(Router, HealthReporter)> {
    let web = tonic_web::GrpcWebLayer::new();
    let (reporter, health) = taskgate_common::grpc::health(&[service_names::AUTH, service_names::TASK]).await;
    let (reflection_v1, reflection_v1alpha) = taskgate_common::grpc::reflection()?;
    let mut router = Router::new()
        .route_service(&service_path(&health), web.layer(health))
        .route_service(&service_path(&reflection_v1), web.layer(reflection_v1))
        .route_service(&service_path(&reflection_v1alpha), web.layer(reflection_v1alpha));
    for name in [service_names::AUTH, service_names::TASK] {
        let service = taskgate_proto::DESCRIPTOR_POOL
            .get_service_by_name(name)
            .with_context(|| format!("{name} is not in the contract"))?;
        let proxy = ServiceProxy::new(&service, backends, metrics.clone(), watch.clone())?;
        router = router.route_service(&format!("/{name}/{{*rest}}"), web.layer(proxy));
    }
    Ok((router, reporter))
}
