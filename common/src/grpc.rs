//! The gRPC skeleton every backend serves with: the server and its layers
//! ([`backend_server`]), grpc.health.v1 and reflection, serving with a
//! bounded drain ([`serve_backend`]), and the client side of the health
//! protocol used by `<binary> healthcheck` ([`healthcheck`]).

use std::time::Duration;

use anyhow::Context as _;
use tonic_health::{
    ServingStatus,
    pb::{
        HealthCheckRequest, health_check_response,
        health_client::HealthClient,
        health_server::{Health, HealthServer},
    },
    server::HealthReporter,
};
use tower_http::{
    classify::{GrpcCode, GrpcErrorsAsFailures, GrpcFailureClass, SharedClassifier},
    trace::{DefaultOnBodyChunk, DefaultOnEos, DefaultOnRequest, DefaultOnResponse, OnEos, OnResponse},
};

/// Largest gRPC message a backend decodes: the largest valid request is a
/// few tens of KB (a task description is at most 10,000 characters).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Calls a backend runs at once per connection (a stream counts until its
/// handler has answered, not for its whole life). A gateway replica sends
/// everything for one backend replica over one connection, up to
/// `GATEWAY_MAX_IN_FLIGHT` (1,024 by default) at once, so the limit sits
/// above that.
pub const CALLS_PER_CONNECTION: usize = 2048;

/// Open HTTP/2 streams a backend allows per connection. One gateway
/// connection carries every WatchTasks stream of its replica
/// (`GATEWAY_MAX_WATCH_STREAMS`, 10,000 by default) as well as its calls in
/// flight, so the limit sits above both; raise it with them.
pub const STREAMS_PER_CONNECTION: u32 = 16_384;

/// How long a backend keeps one client connection before asking the client
/// (HTTP/2 GOAWAY) to open a new one, calls in flight finishing first. Bounds
/// how long a client that balances by connection (a load balancer, a gateway
/// started before a scale-up) keeps sending everything to the old replicas.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);

/// The trace layer every backend's gRPC server runs outermost ([`trace_layer`]).
pub type TraceLayer = tower_http::trace::TraceLayer<
    SharedClassifier<GrpcErrorsAsFailures>,
    MakeSpan,
    DefaultOnRequest,
    RecordStatus,
    DefaultOnBodyChunk,
    RecordStatus,
    OnFailure,
>;

/// A backend server's layers: [`trace_layer`] outermost, then whatever the
/// service adds after it.
pub type Layers = crate::metrics::grpc::Layered<tower::layer::util::Stack<TraceLayer, tower::layer::util::Identity>>;

/// How [`trace_layer`] names a call's span.
pub type MakeSpan = fn(&http::Request<tonic::body::Body>) -> tracing::Span;

/// How [`trace_layer`] logs a failed call.
pub type OnFailure = fn(GrpcFailureClass, Duration, &tracing::Span);

/// Answers a client caused: the call was handled correctly, so the trace
/// layer does not count them as failures (they would page whoever watches
/// the logs); each service logs what it must about them itself. ABORTED is
/// among them: an edit that lost to a concurrent one (a stale etag), which
/// the client resolves by reading again; so is UNIMPLEMENTED, a method the
/// server does not have (a scanner probing paths must not page anyone).
pub const CLIENT_ERRORS: [GrpcCode; 9] = [
    GrpcCode::InvalidArgument,
    GrpcCode::NotFound,
    GrpcCode::AlreadyExists,
    GrpcCode::Unauthenticated,
    GrpcCode::PermissionDenied,
    GrpcCode::FailedPrecondition,
    GrpcCode::ResourceExhausted,
    GrpcCode::Aborted,
    GrpcCode::Unimplemented,
];

/// One span per call carrying its method and the gateway's `x-request-id`,
/// so every log line of the call (an unexpected error's too) names it.
/// When traces are exported it is the call's OpenTelemetry server span, a
/// child of the caller's `traceparent`, with the standard `rpc.*`
/// attributes and the call's `rpc.grpc.status_code`. Client errors ([`CLIENT_ERRORS`]) are not failures; UNAVAILABLE and
/// DEADLINE_EXCEEDED are logged at WARN (a dependency is away, the call may
/// be retried), every other failure at ERROR.
pub fn trace_layer() -> TraceLayer {
    tower_http::trace::TraceLayer::new(SharedClassifier::new(classifier()))
        .make_span_with(request_span as MakeSpan)
        .on_response(RecordStatus)
        .on_eos(RecordStatus)
        .on_failure(on_failure as OnFailure)
}

/// gRPC's classifier, with [`CLIENT_ERRORS`] counted as successes.
fn classifier() -> GrpcErrorsAsFailures {
    CLIENT_ERRORS.iter().fold(GrpcErrorsAsFailures::new(), |classifier, code| classifier.with_success(*code))
}

/// The span of one call: its method and the `x-request-id` it came with,
/// continuing the trace of the caller's `traceparent`.
fn request_span(request: &http::Request<tonic::body::Body>) -> tracing::Span {
    let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
    let path = request.uri().path();
    let (service, method) = rpc_name(path);
    let span = tracing::info_span!(
        "grpc",
        method = %path,
        request_id = %request_id,
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    crate::telemetry::extract(&span, request.headers());
    span
}

/// `("pkg.Service", "Method")` of a gRPC path `/pkg.Service/Method`.
pub fn rpc_name(path: &str) -> (&str, &str) {
    path.trim_start_matches('/').split_once('/').unwrap_or((path, ""))
}

/// Records a call's `grpc-status` (from a trailers-only answer's headers,
/// or the trailers) on its span as `rpc.grpc.status_code`, when traces are
/// exported; logs like tower-http's defaults otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordStatus;

impl RecordStatus {
    /// Notes the `grpc-status` in `headers`, if any.
    fn record(headers: &http::HeaderMap, span: &tracing::Span) {
        if crate::telemetry::exporting()
            && let Some(code) = headers.get("grpc-status").and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
        {
            span.record("rpc.grpc.status_code", code);
        }
    }
}

impl<B> OnResponse<B> for RecordStatus {
    fn on_response(self, response: &http::Response<B>, latency: Duration, span: &tracing::Span) {
        RecordStatus::record(response.headers(), span);
        DefaultOnResponse::default().on_response(response, latency, span);
    }
}

impl OnEos for RecordStatus {
    fn on_eos(self, trailers: Option<&http::HeaderMap>, stream_duration: Duration, span: &tracing::Span) {
        if let Some(trailers) = trailers {
            RecordStatus::record(trailers, span);
        }
        DefaultOnEos::default().on_eos(trailers, stream_duration, span);
    }
}

/// Logs a failed call at the level its code means, and marks its span as
/// an error for the trace.
fn on_failure(class: GrpcFailureClass, latency: Duration, span: &tracing::Span) {
    span.record("otel.status_code", "error");
    let latency_ms = latency.as_millis() as u64;
    match class {
        GrpcFailureClass::Code(code) if is_transient(code.get()) => {
            tracing::warn!(code = code.get(), latency_ms, "call failed: a dependency is unavailable or slow");
        }
        GrpcFailureClass::Code(code) => tracing::error!(code = code.get(), latency_ms, "call failed"),
        GrpcFailureClass::Error(error) => tracing::error!(%error, latency_ms, "call failed"),
    }
}

/// UNAVAILABLE or DEADLINE_EXCEEDED.
fn is_transient(code: i32) -> bool {
    code == tonic::Code::Unavailable as i32 || code == tonic::Code::DeadlineExceeded as i32
}

/// A backend's server with the limits every taskgate backend listens under,
/// one per line; the caller adds its timeout, layers and services.
pub fn server(mtls: Option<&crate::mtls::Mtls>) -> anyhow::Result<tonic::transport::Server> {
    let server = tonic::transport::Server::builder()
        // One client cannot queue unbounded work on its connection; past the
        // limit calls are refused at once (UNAVAILABLE) rather than queued.
        .concurrency_limit_per_connection(CALLS_PER_CONNECTION)
        .load_shed(true)
        // HTTP/2 streams one connection may open, and the header block size:
        // far above what the gateway sends, far below what could hurt.
        .max_concurrent_streams(Some(STREAMS_PER_CONNECTION))
        .http2_max_header_list_size(Some(16 * 1024))
        // Notice dead peers behind NATs and load balancers, and drop them.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .tcp_nodelay(true)
        // Clients that balance by connection spread over new replicas after scaling.
        .max_connection_age(MAX_CONNECTION_AGE);
    match mtls {
        // Only peers with a certificate from the private CA get a connection.
        Some(mtls) => server.tls_config(mtls.server()).context("mutual TLS settings"),
        None => Ok(server),
    }
}

/// How long a stopping backend lets in-flight calls (open WatchTasks streams
/// included) finish before it drops them. tonic's graceful shutdown alone
/// waits for every connection to close, which with the hyper we pin can be
/// for ever (hyperium/hyper#4170).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A backend's server: [`server`]'s limits and mutual TLS, a deadline of
/// `request_timeout` on every call (a call stuck on a store must not hold its
/// stream for ever; the stores' own timeouts come first), and [`trace_layer`]
/// outermost, so every log line of a call names its request id.
pub fn backend_server(
    mtls: Option<&crate::mtls::Mtls>,
    request_timeout: Duration,
    metrics: std::sync::Arc<crate::metrics::grpc::GrpcServerMetrics>,
) -> anyhow::Result<tonic::transport::Server<Layers>> {
    Ok(server(mtls)?
        .timeout(request_timeout)
        .layer(trace_layer())
        // Inside the trace layer: counts every call that reaches the routes
        // (unknown methods too, as `unknown`) with its final code.
        .layer(crate::metrics::grpc::GrpcMetricsLayer::new(metrics)))
}

/// A backend's two listeners, bound: gRPC, and the admin endpoint serving
/// `/metrics`. Port 0 becomes a real port, which the addresses tell.
pub struct Listeners {
    /// The gRPC listener.
    grpc: tokio::net::TcpListener,
    /// Its address.
    grpc_addr: std::net::SocketAddr,
    /// The admin endpoint.
    admin: crate::metrics::Admin,
    /// Its address.
    admin_addr: std::net::SocketAddr,
}

impl Listeners {
    /// Binds gRPC at `grpc` and the admin endpoint (serving `registry`) at
    /// `admin`, each an address and the setting it comes from (named in the
    /// error when the address is taken).
    pub async fn bind(
        grpc: (std::net::SocketAddr, &str),
        admin: (std::net::SocketAddr, &str),
        registry: crate::metrics::Registry,
    ) -> anyhow::Result<Listeners> {
        let listener = crate::metrics::bind(grpc.0, grpc.1).await?;
        let grpc_addr = listener.local_addr().context("reading the bound address")?;
        let admin = crate::metrics::Admin::bind(admin.0, admin.1, registry).await?;
        let admin_addr = admin.local_addr()?;
        Ok(Listeners { grpc: listener, grpc_addr, admin, admin_addr })
    }

    /// Where gRPC is served.
    pub fn grpc_addr(&self) -> std::net::SocketAddr {
        self.grpc_addr
    }

    /// Where `/metrics` is served.
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.admin_addr
    }
}

/// Serves `router` (the backend's own services on a [`backend_server`]), with
/// grpc.health.v1 (SERVING for `name`) and reflection beside them, on
/// `listeners` (and `/metrics` on their admin endpoint) until `shutdown` completes; then in-flight calls get up to
/// `drain` to finish, and whatever is still open after it is dropped.
pub async fn serve_backend(
    router: tonic::transport::server::Router<Layers>,
    name: &str,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> anyhow::Result<()> {
    let Listeners { grpc: listener, grpc_addr: addr, admin, admin_addr } = listeners;
    // Stopped once the gRPC server has drained, so a scrape during the drain still answers.
    let admin = admin.spawn();
    let (_reporter, health) = health(&[name]).await;
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    // The server learns of the shutdown through `stopping`; the drain's clock
    // starts when it does.
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let stopping = async move {
        shutdown.await;
        let _ = stopped_tx.send(());
    };
    tracing::info!(%addr, admin = %admin_addr, service = name, "listening");
    let serve = router
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopping,
        );
    let drained = async move {
        if stopped_rx.await.is_ok() {
            tokio::time::sleep(drain).await;
        } else {
            // The server ended without a shutdown: let `serve` report how.
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        served = serve => served.context("serving gRPC"),
        () = drained => {
            tracing::warn!(drain_ms = drain.as_millis() as u64, "calls still open after the drain timeout were dropped");
            Ok(())
        }
    };
    admin.abort();
    tracing::info!(service = name, "stopped");
    result
}

/// `<binary> healthcheck`: asks the server listening on `listen_addr` (an
/// unspecified address means this machine) whether `service` is SERVING,
/// over mutual TLS when `mtls` is given.
pub async fn healthcheck(
    listen_addr: std::net::SocketAddr,
    service: &str,
    mtls: Option<&crate::mtls::Mtls>,
) -> anyhow::Result<()> {
    let mut addr = listen_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    probe_with(&format!("http://{addr}"), service, mtls).await
}

/// A health reporter with `services` (and the overall "" service) marked
/// SERVING, and the gRPC service that answers health checks.
pub async fn health(services: &[&str]) -> (HealthReporter, HealthServer<impl Health>) {
    let (reporter, service) = tonic_health::server::health_reporter();
    for name in services {
        reporter.set_service_status(*name, ServingStatus::Serving).await;
    }
    reporter.set_service_status("", ServingStatus::Serving).await;
    (reporter, service)
}

/// Server reflection (v1 and v1alpha, for older grpcurl) over every taskgate
/// proto, so `grpcurl`/`buf curl` work without proto files.
pub fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
)> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(taskgate_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection service (v1)")?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(taskgate_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building reflection service (v1alpha)")?;
    Ok((v1, v1alpha))
}

/// Asks the grpc.health.v1 service at `url` (such as `http://127.0.0.1:50051`)
/// whether `service` is SERVING; used by container health checks.
pub async fn probe(url: &str, service: &str) -> anyhow::Result<()> {
    probe_with(url, service, None).await
}

/// [`probe`], over mutual TLS when `mtls` is given (a backend with
/// `MTLS_*` set answers nothing else).
pub async fn probe_with(url: &str, service: &str, mtls: Option<&crate::mtls::Mtls>) -> anyhow::Result<()> {
    let url = crate::mtls::backend_url(url, mtls);
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid health-check url {url}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    if let Some(mtls) = mtls {
        endpoint = endpoint.tls_config(mtls.client()).context("mutual TLS settings")?;
    }
    let channel = endpoint.connect().await.with_context(|| format!("connecting to {url}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest { service: service.to_owned() })
        .await
        .context("health check call")?
        .into_inner();
    anyhow::ensure!(
        response.status == health_check_response::ServingStatus::Serving as i32,
        "service {service:?} is not serving"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use tower_http::classify::{ClassifiedResponse, ClassifyResponse as _};

    use super::*;

    /// Whether the trace layer counts a trailers-only answer with `code` as a failure.
    fn is_failure(code: tonic::Code) -> bool {
        let response =
            http::Response::builder().header("grpc-status", (code as i32).to_string()).body(()).expect("a response");
        !matches!(classifier().classify_response(&response), ClassifiedResponse::Ready(Ok(())))
    }

    #[test]
    fn client_errors_are_not_failures_and_server_errors_are() {
        for code in [
            tonic::Code::Ok,
            tonic::Code::InvalidArgument,
            tonic::Code::NotFound,
            tonic::Code::AlreadyExists,
            tonic::Code::Unauthenticated,
            tonic::Code::PermissionDenied,
            tonic::Code::FailedPrecondition,
            tonic::Code::ResourceExhausted,
        ] {
            assert!(!is_failure(code), "{code:?} counted as a failure");
        }
        for code in
            [tonic::Code::Internal, tonic::Code::Unknown, tonic::Code::Unavailable, tonic::Code::DeadlineExceeded]
        {
            assert!(is_failure(code), "{code:?} not counted as a failure");
        }
        assert!(is_transient(tonic::Code::Unavailable as i32) && is_transient(tonic::Code::DeadlineExceeded as i32));
        assert!(!is_transient(tonic::Code::Internal as i32));
    }
}
