//! Building the gateway (channels, Redis, verifier, routes, the middleware
//! stack) and serving it on one port: HTTP/1.1 and HTTP/2 (h2c prior
//! knowledge, or ALPN under TLS) on the same listener.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{Router, routing::get};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use taskgate_proto::{
    auth::v1::{auth_service_client::AuthServiceClient, auth_service_server::AuthServiceServer},
    service_names,
    task::v1::{task_service_client::TaskServiceClient, task_service_server::TaskServiceServer},
};
use taskgate_tokens::{GrpcKeySource, Verifier, VerifierConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::{
    server::NamedService,
    transport::{Channel, Endpoint},
};
use tonic_health::server::HealthReporter;
use tower::{Layer as _, ServiceExt as _};

use crate::{
    Settings,
    auth::EdgeAuth,
    edge::{self, Demo, Readiness},
    metrics::{self, Metrics},
    protocol::ClientAddr,
    proxy::{auth::AuthProxy, task::TaskProxy},
    ratelimit::RateLimiter,
    rest, stack, tls,
    watch::WatchSlots,
};

/// Redis clients in the pool; each multiplexes many commands.
const REDIS_POOL_SIZE: usize = 4;
/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send an HTTP/1.1 request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A built gateway, bound to its port and ready to serve.
pub struct Application {
    /// The bound public listener.
    listener: TcpListener,
    /// Its address (the real port when port 0 was asked for).
    local_addr: SocketAddr,
    /// Every route behind the middleware stack.
    app: Router,
    /// Present when TLS is configured.
    tls: Option<TlsAcceptor>,
}

impl Application {
    /// Binds the port and builds everything; backends and Redis need not be up
    /// yet (channels connect lazily, Redis reconnects by itself).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(settings.listen_addr)
            .await
            .with_context(|| format!("binding GATEWAY_LISTEN_ADDR {}", settings.listen_addr))?;
        let local_addr = listener.local_addr().context("reading the bound address")?;
        let tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            _ => None,
        };

        let auth_channel = channel(&settings.auth_url).context("AUTH_SERVICE_URL")?;
        // Calls that hash a password (Register, Login, ChangePassword) get a
        // connection of their own: a flood of them must not queue Refresh,
        // Logout or GetMe behind it on one HTTP/2 connection.
        let auth_hashing = AuthServiceClient::new(channel(&settings.auth_url).context("AUTH_SERVICE_URL")?);
        let task_channel = channel(&settings.task_url).context("TASK_SERVICE_URL")?;
        let redis = taskgate_common::redis::connect(&settings.redis_url, REDIS_POOL_SIZE).await?;
        let metrics = Metrics::new();
        let verifier = Verifier::new(
            Arc::new(GrpcKeySource::new(auth_channel.clone())),
            VerifierConfig::new(settings.jwt_issuer.clone(), settings.jwt_audience.clone()),
        );
        let limiter = RateLimiter::new(
            redis.clone(),
            settings.redis_prefix.clone(),
            settings.rate_limit_per_minute,
            metrics.clone(),
        )
        .await;

        let auth_client = AuthServiceClient::new(auth_channel.clone());
        let task_client = TaskServiceClient::new(task_channel.clone());
        let watch = WatchSlots::new(settings.max_watch_streams as usize);
        let (grpc, health) = grpc_routes(
            AuthProxy::new(auth_client.clone(), auth_hashing.clone(), metrics.clone()),
            TaskProxy::new(task_client.clone(), metrics.clone(), watch.clone()),
        )
        .await?;
        edge::spawn_backend_health(health, auth_channel.clone(), task_channel.clone());
        let readiness = Arc::new(Readiness { auth: auth_channel, task: task_channel, redis });
        let mut routes = Router::new()
            .route("/healthz", get(edge::healthz))
            .route("/readyz", get(edge::readyz).with_state(readiness))
            .route("/metrics", get(metrics::render).with_state(metrics.clone()));
        if let Some(demo) = Demo::choose(&settings.demo_dir) {
            let demo = Arc::new(demo);
            routes = routes
                .route("/demo", get(edge::demo).with_state(demo.clone()))
                .route("/demo/", get(edge::demo).with_state(demo.clone()))
                .route("/demo/{*path}", get(edge::demo).with_state(demo));
        }
        let mut rest_routes = rest::router_with_hashing_client(auth_client, auth_hashing, task_client, watch);
        if !settings.cookie_secure {
            // COOKIE_SECURE=false: plain-HTTP development, where browsers drop `Secure` cookies.
            rest_routes = rest_routes.layer(axum::Extension(rest::InsecureCookies));
        }
        let routes = routes.merge(grpc).merge(rest_routes);

        let app = stack::apply(
            routes,
            stack::Parts {
                metrics,
                auth: Arc::new(EdgeAuth::new(verifier, settings.trusted_proxies.clone())),
                limiter,
                cors_allowed_origins: settings.cors_allowed_origins.clone(),
                request_timeout: settings.request_timeout(),
            },
        );
        tracing::info!(%local_addr, tls = tls.is_some(), "gateway listening");
        Ok(Application { listener, local_addr, app, tls })
    }

    /// The address the gateway listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting and gives
    /// in-flight requests up to 10 s to finish.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Application { listener, app, tls, .. } = self;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // A client gets 10 s to send its request head (slowloris); idle h2
        // connections are pinged so dead peers are noticed.
        builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
        builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let service = hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ClientAddr(peer));
                app.clone().oneshot(request.map(axum::body::Body::new))
            });
            match &tls {
                None => {
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                    });
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => return tracing::debug!(error = %e, %peer, "tls handshake failed"),
                            Err(_) => return tracing::debug!(%peer, "tls handshake timed out"),
                        };
                        let connection =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                        if let Err(e) = watcher.watch(connection).await {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                    });
                }
            }
        }
        drop(listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
            tracing::warn!("some connections were still busy after the drain timeout");
        }
        Ok(())
    }
}

/// A lazily connecting, pooled HTTP/2 channel to a backend.
fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid backend url {url}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// The path pattern tonic serves a named service under.
fn service_path<S: NamedService>(_: &S) -> String {
    format!("/{}/{{*rest}}", S::NAME)
}

/// The gRPC services, each behind tonic-web so gRPC-web works on the same
/// paths: the two proxies, and health and reflection answered by the gateway.
/// Also returns the health reporter, whose per-service status follows the backends.
async fn grpc_routes(auth: AuthProxy, task: TaskProxy) -> anyhow::Result<(Router, HealthReporter)> {
    let web = tonic_web::GrpcWebLayer::new();
    let auth = AuthServiceServer::new(auth);
    let task = TaskServiceServer::new(task);
    let (reporter, health) = taskgate_common::grpc::health(&[service_names::AUTH, service_names::TASK]).await;
    let (reflection_v1, reflection_v1alpha) = taskgate_common::grpc::reflection()?;
    let router = Router::new()
        .route_service(&service_path(&auth), web.layer(auth))
        .route_service(&service_path(&task), web.layer(task))
        .route_service(&service_path(&health), web.layer(health))
        .route_service(&service_path(&reflection_v1), web.layer(reflection_v1))
        .route_service(&service_path(&reflection_v1alpha), web.layer(reflection_v1alpha));
    Ok((router, reporter))
}
