//! The go-grpc-prometheus server series, counted by a tower layer every
//! backend runs ([`GrpcMetricsLayer`]):
//!
//! - `grpc_server_started_total{grpc_type,grpc_service,grpc_method}`
//! - `grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}`
//! - `grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}` (histogram)
//!
//! A call's code is read where gRPC puts it: in the response headers of a
//! trailers-only answer (errors, unknown methods), otherwise in the trailers
//! at the end of the body, which the layer wraps to see them. A call whose
//! response is dropped before a code was seen (the client went away, the
//! server's timeout fired) counts as `Canceled`.
//!
//! Labels are bounded by construction: a method is labelled only if it is a
//! method of a service this server declares (read from the descriptor sets),
//! anything else is `unknown` / `unknown` / `unary`, so no request path can
//! add a label set.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, LazyLock},
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use prost::Message as _;

use super::{GrpcCode, HistogramFamily, histogram_family};

/// The label value of any method the server does not declare.
pub const UNKNOWN: &str = "unknown";

/// What go-grpc-prometheus labels a call with: its streaming type, its fully
/// qualified service and its method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MethodLabels {
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub grpc_type: &'static str,
    /// The fully qualified service (`taskgate.task.v1.TaskService`), or `unknown`.
    pub grpc_service: &'static str,
    /// The method (`ListTasks`), or `unknown`.
    pub grpc_method: &'static str,
}

/// [`MethodLabels`] and the code the call ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CodeLabels {
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub grpc_type: &'static str,
    /// The fully qualified service, or `unknown`.
    pub grpc_service: &'static str,
    /// The method, or `unknown`.
    pub grpc_method: &'static str,
    /// The code, as Go names it (`OK`, `NotFound`).
    pub grpc_code: GrpcCode,
}

impl MethodLabels {
    /// The labels of a path no served service declares.
    pub const UNKNOWN: MethodLabels = MethodLabels { grpc_type: "unary", grpc_service: UNKNOWN, grpc_method: UNKNOWN };

    /// These labels with `code`.
    pub fn with_code(self, code: tonic::Code) -> CodeLabels {
        CodeLabels {
            grpc_type: self.grpc_type,
            grpc_service: self.grpc_service,
            grpc_method: self.grpc_method,
            grpc_code: GrpcCode(code),
        }
    }
}

/// Every method of every proto a taskgate server may serve (taskgate's own,
/// grpc.health.v1 and server reflection v1 and v1alpha), by path
/// (`/<package>.<Service>/<Method>`): read once from the descriptor sets, so
/// no list is written by hand.
static METHODS: LazyLock<HashMap<String, MethodLabels>> = LazyLock::new(|| {
    let sets = [
        taskgate_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = HashMap::new();
    for bytes in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else { continue };
        for file in set.file {
            for service in &file.service {
                // Leaked once per declared service and method: a few dozen
                // short strings for the life of the process, which lets every
                // label be a `&'static str`.
                let service_name: &'static str = format!("{}.{}", file.package(), service.name()).leak();
                for method in &service.method {
                    let grpc_type = match (method.client_streaming(), method.server_streaming()) {
                        (false, false) => "unary",
                        (true, false) => "client_stream",
                        (false, true) => "server_stream",
                        (true, true) => "bidi_stream",
                    };
                    let method_name: &'static str = method.name().to_owned().leak();
                    methods.insert(
                        format!("/{service_name}/{method_name}"),
                        MethodLabels { grpc_type, grpc_service: service_name, grpc_method: method_name },
                    );
                }
            }
        }
    }
    methods
});

/// The labels of the method at `path` (`/<package>.<Service>/<Method>`), if
/// any taskgate proto declares it, whichever server serves it.
pub fn declared_method(path: &str) -> Option<MethodLabels> {
    METHODS.get(path).copied()
}

/// The labels of `method` of `service` (fully qualified), if a taskgate
/// proto declares it: a scan of a few dozen entries, without allocating.
pub fn method_labels(service: &str, method: &str) -> Option<MethodLabels> {
    METHODS.values().find(|m| m.grpc_service == service && m.grpc_method == method).copied()
}

/// Every declared method of `service` (fully qualified), for tests and for
/// pre-creating series.
pub fn methods_of(service: &str) -> Vec<MethodLabels> {
    METHODS.values().filter(|m| m.grpc_service == service).copied().collect()
}

/// The services every taskgate backend serves besides its own
/// ([`crate::grpc::health`] and [`crate::grpc::reflection`]).
pub const COMMON_SERVICES: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// A server's layers with [`GrpcMetricsLayer`] added innermost.
pub type Layered<L> = tower::layer::util::Stack<GrpcMetricsLayer, L>;

/// The three go-grpc-prometheus server series of one server.
#[derive(Debug)]
pub struct GrpcServerMetrics {
    /// The fully qualified services this server serves: a method of any
    /// other is labelled `unknown`.
    services: Vec<&'static str>,
    /// `grpc_server_started_total`.
    started: Family<MethodLabels, Counter>,
    /// `grpc_server_handled_total`.
    handled: Family<CodeLabels, Counter>,
    /// `grpc_server_handling_seconds`.
    handling: HistogramFamily<MethodLabels>,
}

impl GrpcServerMetrics {
    /// The series for a server serving `services` (fully qualified names,
    /// such as `taskgate.auth.v1.AuthService`) and [`COMMON_SERVICES`],
    /// registered in `registry`.
    pub fn register(registry: &mut Registry, services: &[&str]) -> Arc<GrpcServerMetrics> {
        let mut served: Vec<&'static str> = METHODS
            .values()
            .map(|m| m.grpc_service)
            .filter(|s| services.contains(s) || COMMON_SERVICES.contains(s))
            .collect();
        served.sort_unstable();
        served.dedup();
        let services = served;
        let metrics = GrpcServerMetrics {
            services,
            started: Family::default(),
            handled: Family::default(),
            handling: histogram_family(),
        };
        registry.register("grpc_server_started", "RPCs started on the server", metrics.started.clone());
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, whatever their code",
            metrics.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from receiving an RPC to its final status (the end of its response stream)",
            metrics.handling.clone(),
        );
        Arc::new(metrics)
    }

    /// The labels of a call to `path`: a method of a served service, or
    /// [`MethodLabels::UNKNOWN`].
    pub fn labels(&self, path: &str) -> MethodLabels {
        declared_method(path).filter(|m| self.services.contains(&m.grpc_service)).unwrap_or(MethodLabels::UNKNOWN)
    }

    /// Counts a call that started.
    pub fn started(&self, labels: MethodLabels) {
        self.started.get_or_create(&labels).inc();
    }

    /// Counts a call that ended with `code` after `seconds`.
    pub fn handled(&self, labels: MethodLabels, code: tonic::Code, seconds: f64) {
        self.handled.get_or_create(&labels.with_code(code)).inc();
        self.handling.get_or_create(&labels).observe(seconds);
    }
}

/// Builds [`GrpcMetrics`] around a server's routes.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    /// Where calls are counted.
    metrics: Arc<GrpcServerMetrics>,
}

impl GrpcMetricsLayer {
    /// A layer counting into `metrics`.
    pub fn new(metrics: Arc<GrpcServerMetrics>) -> GrpcMetricsLayer {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner, metrics: self.metrics.clone() }
    }
}

/// Counts every call passing through to `S` in the go-grpc-prometheus series.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    /// The server's routes.
    inner: S,
    /// Where calls are counted.
    metrics: Arc<GrpcServerMetrics>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let labels = self.metrics.labels(request.uri().path());
        self.metrics.started(labels);
        let call = Call { metrics: self.metrics.clone(), labels, start: Instant::now(), code: None };
        ResponseFuture { inner: self.inner.call(request), call: Some(call) }
    }
}

/// One call being counted: it is counted as handled when dropped, with the
/// code seen by then, or `Canceled` when none was.
#[derive(Debug)]
struct Call {
    /// Where it is counted.
    metrics: Arc<GrpcServerMetrics>,
    /// Its method.
    labels: MethodLabels,
    /// When it started.
    start: Instant,
    /// Its final code, once seen.
    code: Option<tonic::Code>,
}

impl Call {
    /// Counts the call as ended with `code`.
    fn finish(mut self, code: tonic::Code) {
        self.code = Some(code);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(tonic::Code::Cancelled);
        self.metrics.handled(self.labels, code, self.start.elapsed().as_secs_f64());
    }
}

pin_project! {
    /// The future of a counted call's response.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // Moved into the body once the headers are out.
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<CountedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                // A trailers-only answer carries its code in the headers.
                let call = match (GrpcCode::from_headers(response.headers()), call) {
                    (Some(code), Some(call)) => {
                        call.finish(code.0);
                        None
                    }
                    (_, call) => call,
                };
                Ok(response.map(|inner| CountedBody { inner, call }))
            }
            Err(error) => {
                if let Some(call) = call {
                    call.finish(tonic::Code::Unknown);
                }
                Err(error)
            }
        })
    }
}

pin_project! {
    /// A response body that counts its call when the trailers pass by.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        // Taken when the code is seen; dropped with the body otherwise.
        call: Option<Call>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(GrpcCode::from_headers)
                    && let Some(call) = this.call.take()
                {
                    call.finish(code.0);
                }
            }
            // A body that fails, or ends without a status, ended abnormally.
            Some(Err(_)) | None => {
                if let Some(call) = this.call.take() {
                    call.finish(tonic::Code::Unknown);
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_methods_get_their_own_labels() {
        let mut registry = Registry::default();
        let metrics = GrpcServerMetrics::register(&mut registry, &[]);
        let check = metrics.labels("/grpc.health.v1.Health/Check");
        assert_eq!(
            (check.grpc_service, check.grpc_method, check.grpc_type),
            ("grpc.health.v1.Health", "Check", "unary")
        );
        assert_eq!(metrics.labels("/grpc.health.v1.Health/Watch").grpc_type, "server_stream");
        // Declared by a proto, but not served here.
        assert_eq!(metrics.labels("/taskgate.task.v1.TaskService/ListTasks"), MethodLabels::UNKNOWN);
        assert_eq!(metrics.labels("/no/such"), MethodLabels::UNKNOWN);
    }
}
