//! Prometheus metrics of the gateway, in `prometheus-client` series
//! exported at `/metrics` on the admin listener:
//!
//! - gRPC and gRPC-web calls, as go-grpc-prometheus names them, with a
//!   `protocol` label (`grpc` or `grpc-web`):
//!   `grpc_server_started_total{protocol,grpc_type,grpc_service,grpc_method}`,
//!   `grpc_server_handled_total{...,grpc_code}` (the code read from the
//!   trailers, or the gRPC-web trailer frame) and the
//!   `grpc_server_handling_seconds{...}` histogram.
//! - REST and the plain HTTP endpoints:
//!   `http_server_requests_total{method,route,code}` and the
//!   `http_server_request_duration_seconds{method,route}` histogram, from
//!   receipt to the end of the response body.
//! - The proxy's calls to the backends, as go-grpc-prometheus names a
//!   client's: `grpc_client_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}`.
//! - `gateway_ratelimit_decisions_total{protocol,decision}` (`allowed`,
//!   `limited`, `revoked`, `unavailable`), `gateway_ratelimit_fallback_active`
//!   (gauge: 1 while Redis is unreachable and the local limiter decides) and
//!   `gateway_ratelimit_fallback_decisions_total`; `gateway_ratelimit_leased_decisions_total`
//!   (requests allowed from a lease, with no Redis call: see [`crate::ratelimit`]).
//! - `gateway_shed_total{protocol}`: requests refused by load shedding.
//!
//! Label values come only from fixed sets: a gRPC method is one some proto
//! the gateway serves declares (read from the descriptor sets), a REST route
//! is the path template axum matched, of a `google.api.http` binding or one
//! of the gateway's own endpoints ([`crate::policy`]), an
//! HTTP method one of the standard ones, and anything else is `unknown` /
//! `other`; so no request can add a label set. See
//! [`taskgate_common::metrics`] for the locking.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    body::Body,
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http_body::{Body as _, Frame, SizeHint};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use taskgate_common::metrics::{
    GrpcCode, HistogramFamily,
    grpc::{MethodLabels, declared_method},
    histogram_family,
};
use tonic::Code;

use crate::{
    policy::Route,
    protocol::{Protocol, ReceivedAt},
};

/// The labels of a gRPC or gRPC-web call at the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GrpcLabels {
    /// `grpc` or `grpc-web`.
    pub protocol: &'static str,
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub grpc_type: &'static str,
    /// The fully qualified service, or `unknown`.
    pub grpc_service: &'static str,
    /// The method, or `unknown`.
    pub grpc_method: &'static str,
}

/// [`GrpcLabels`] and the code the call ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GrpcCodeLabels {
    /// `grpc` or `grpc-web`.
    pub protocol: &'static str,
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub grpc_type: &'static str,
    /// The fully qualified service, or `unknown`.
    pub grpc_service: &'static str,
    /// The method, or `unknown`.
    pub grpc_method: &'static str,
    /// The code, as Go names it.
    pub grpc_code: GrpcCode,
}

/// The labels of a REST or plain HTTP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    /// The HTTP method ([`method_label`]).
    pub method: &'static str,
    /// The path template axum matched ([`Route::label`]).
    pub route: &'static str,
}

/// [`HttpLabels`] and the response's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpCodeLabels {
    /// The HTTP method ([`method_label`]).
    pub method: &'static str,
    /// The path template axum matched ([`Route::label`]).
    pub route: &'static str,
    /// The response status; only the gateway chooses it.
    pub code: u16,
}

/// A `protocol` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProtocolLabel {
    /// `grpc`, `grpc-web` or `rest`.
    pub protocol: &'static str,
}

/// The labels of a rate-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `grpc`, `grpc-web` or `rest`.
    pub protocol: &'static str,
    /// `allowed`, `limited`, `revoked` or `unavailable`.
    pub decision: &'static str,
}

/// The labels of a call the proxy made to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ClientLabels {
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub grpc_type: &'static str,
    /// The backend's fully qualified service.
    pub grpc_service: &'static str,
    /// The method.
    pub grpc_method: &'static str,
    /// The code, as Go names it.
    pub grpc_code: GrpcCode,
}

/// Every metric the gateway exports, and the registry that serves them.
/// Shared by all requests of a replica.
pub struct Metrics {
    /// The registry `/metrics` renders.
    registry: Registry,
    /// `grpc_server_started_total`.
    grpc_started: Family<GrpcLabels, Counter>,
    /// `grpc_server_handled_total`.
    grpc_handled: Family<GrpcCodeLabels, Counter>,
    /// `grpc_server_handling_seconds`.
    grpc_handling: HistogramFamily<GrpcLabels>,
    /// `http_server_requests_total`.
    http_requests: Family<HttpCodeLabels, Counter>,
    /// `http_server_request_duration_seconds`.
    http_duration: HistogramFamily<HttpLabels>,
    /// `grpc_client_handled_total`: the proxy's calls to the backends.
    upstream: Family<ClientLabels, Counter>,
    /// `gateway_ratelimit_decisions_total`.
    decisions: Family<DecisionLabels, Counter>,
    /// `gateway_ratelimit_fallback_decisions_total`.
    fallback_decisions: Counter,
    /// `gateway_ratelimit_fallback_active`.
    fallback_active: Gauge,
    /// `gateway_ratelimit_leased_decisions_total`.
    leased_decisions: Counter,
    /// `gateway_shed_total`.
    shed: Family<ProtocolLabel, Counter>,
}

impl Metrics {
    /// Empty metrics in a registry of their own (one per gateway instance).
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let m = Metrics {
            grpc_started: Family::default(),
            grpc_handled: Family::default(),
            grpc_handling: histogram_family(),
            http_requests: Family::default(),
            http_duration: histogram_family(),
            upstream: Family::default(),
            decisions: Family::default(),
            fallback_decisions: Counter::default(),
            fallback_active: Gauge::default(),
            leased_decisions: Counter::default(),
            shed: Family::default(),
            registry: Registry::default(),
        };
        taskgate_common::telemetry::register_metrics(&mut registry);
        registry.register("grpc_server_started", "RPCs started on the server", m.grpc_started.clone());
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, whatever their code",
            m.grpc_handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from receiving an RPC to its final status (the end of its response stream)",
            m.grpc_handling.clone(),
        );
        registry.register(
            "http_server_requests",
            "REST and plain HTTP requests, by method, route template and status",
            m.http_requests.clone(),
        );
        registry.register(
            "http_server_request_duration_seconds",
            "Time from receipt to the end of the response body",
            m.http_duration.clone(),
        );
        registry.register(
            "grpc_client_handled",
            "Calls the gateway made to the backends, by their code",
            m.upstream.clone(),
        );
        registry.register(
            "gateway_ratelimit_decisions",
            "Rate-limit decisions, by protocol and decision",
            m.decisions.clone(),
        );
        registry.register(
            "gateway_ratelimit_fallback_decisions",
            "Requests decided by the local fallback limiter while Redis was unreachable",
            m.fallback_decisions.clone(),
        );
        registry.register(
            "gateway_ratelimit_fallback_active",
            "1 while Redis is unreachable and the per-replica limiter decides",
            m.fallback_active.clone(),
        );
        registry.register(
            "gateway_ratelimit_leased_decisions",
            "Requests allowed from a slot this replica leased earlier, with no Redis call",
            m.leased_decisions.clone(),
        );
        registry.register("gateway_shed", "Requests refused because too many were in progress", m.shed.clone());
        // The series an alert or dashboard reads even before their first
        // event, so a missing series never hides a zero.
        for protocol in [Protocol::Grpc, Protocol::GrpcWeb, Protocol::Rest] {
            let protocol = protocol.as_str();
            let _ = m.decisions.get_or_create(&DecisionLabels { protocol, decision: "limited" });
            let _ = m.shed.get_or_create(&ProtocolLabel { protocol });
        }
        Arc::new(Metrics { registry, ..m })
    }

    /// Counts a gRPC or gRPC-web call that started.
    pub fn grpc_started(&self, labels: GrpcLabels) {
        self.grpc_started.get_or_create(&labels).inc();
    }

    /// Counts a gRPC or gRPC-web call that ended with `code` after `seconds`.
    pub fn grpc_handled(&self, labels: GrpcLabels, code: Code, seconds: f64) {
        let GrpcLabels { protocol, grpc_type, grpc_service, grpc_method } = labels;
        let with_code = GrpcCodeLabels { protocol, grpc_type, grpc_service, grpc_method, grpc_code: GrpcCode(code) };
        self.grpc_handled.get_or_create(&with_code).inc();
        self.grpc_handling.get_or_create(&labels).observe(seconds);
    }

    /// Counts a REST or plain HTTP request answered with `status` after `seconds`.
    pub fn http(&self, labels: HttpLabels, status: u16, seconds: f64) {
        let HttpLabels { method, route } = labels;
        self.http_requests.get_or_create(&HttpCodeLabels { method, route, code: status }).inc();
        self.http_duration.get_or_create(&labels).observe(seconds);
    }

    /// Counts one request refused by load shedding.
    pub fn shed(&self, protocol: Protocol) {
        self.shed.get_or_create(&ProtocolLabel { protocol: protocol.as_str() }).inc();
    }

    /// Counts one rate-limit decision: `allowed`, `limited`, `revoked` or `unavailable`.
    pub fn ratelimit_decision(&self, protocol: Protocol, decision: &'static str) {
        self.decisions.get_or_create(&DecisionLabels { protocol: protocol.as_str(), decision }).inc();
    }

    /// Counts one call the proxy made to a backend: `service` is the
    /// service's full name, `method` the RPC's name (both from the contract,
    /// so the label set is bounded).
    pub fn upstream(&self, service: &'static str, method: &'static str, code: Code) {
        let grpc_type = taskgate_common::metrics::grpc::method_labels(service, method).map_or("unary", |m| m.grpc_type);
        let labels = ClientLabels { grpc_type, grpc_service: service, grpc_method: method, grpc_code: GrpcCode(code) };
        self.upstream.get_or_create(&labels).inc();
    }

    /// Counts one decision of the local fallback limiter.
    pub fn fallback_decision(&self) {
        self.fallback_decisions.inc();
    }

    /// Counts one request allowed from a lease.
    pub fn leased_decision(&self) {
        self.leased_decisions.inc();
    }

    /// Records whether the local fallback limiter is in use.
    pub fn set_fallback_active(&self, active: bool) {
        self.fallback_active.set(i64::from(active));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        taskgate_common::metrics::render(&self.registry)
    }
}

/// The bounded `method` label of a REST request: a standard HTTP method, or `other`.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The labels of a gRPC or gRPC-web call to `path`: a method some proto the
/// gateway serves declares (taskgate's, health, reflection), or `unknown`.
pub fn grpc_labels(protocol: Protocol, path: &str) -> GrpcLabels {
    let m = declared_method(path).unwrap_or(MethodLabels::UNKNOWN);
    GrpcLabels {
        protocol: protocol.as_str(),
        grpc_type: m.grpc_type,
        grpc_service: m.grpc_service,
        grpc_method: m.grpc_method,
    }
}

/// The outermost middleware: stamps [`ReceivedAt`], and counts the response
/// when its body ends (so gRPC codes in trailers are seen).
pub async fn track(State(metrics): State<Arc<Metrics>>, mut request: Request, next: Next) -> Response {
    let start = Instant::now();
    request.extensions_mut().insert(ReceivedAt(start));
    let protocol = Protocol::of(request.headers());
    let kind = if protocol.is_grpc() {
        let labels = grpc_labels(protocol, request.uri().path());
        metrics.grpc_started(labels);
        Kind::Grpc(labels)
    } else {
        Kind::Http(HttpLabels { method: method_label(request.method()), route: Route::of(&request).label })
    };
    let response = next.run(request).await;
    let code = match kind {
        Kind::Grpc(_) => GrpcCode::from_headers(response.headers()).map(|c| c.0),
        Kind::Http(_) => None,
    };
    let record = Record { metrics, kind, start, status: response.status().as_u16(), code };
    if code.is_some() || (kind.is_http() && response.body().is_end_stream()) {
        // Nothing left to observe (trailers-only answers, empty bodies): count it now.
        drop(record);
        return response;
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::new(Observed { inner: body, record: Some(record) }))
}

/// What a request is counted as.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A gRPC or gRPC-web call.
    Grpc(GrpcLabels),
    /// A REST or plain HTTP request.
    Http(HttpLabels),
}

impl Kind {
    fn is_http(self) -> bool {
        matches!(self, Kind::Http(_))
    }
}

/// What is counted when a response body is finished (or dropped).
struct Record {
    /// Where it is counted.
    metrics: Arc<Metrics>,
    /// Its labels.
    kind: Kind,
    /// When the request arrived.
    start: Instant,
    /// The HTTP status of the response.
    status: u16,
    /// The gRPC code, once known; a call dropped before one is `Canceled`.
    code: Option<Code>,
}

impl Drop for Record {
    fn drop(&mut self) {
        let seconds = self.start.elapsed().as_secs_f64();
        match self.kind {
            Kind::Grpc(labels) => self.metrics.grpc_handled(labels, self.code.unwrap_or(Code::Cancelled), seconds),
            Kind::Http(labels) => self.metrics.http(labels, self.status, seconds),
        }
    }
}

/// A response body that reads the gRPC status as it passes by: from the
/// trailers (gRPC) or from the trailer frame (gRPC-web, flag byte 0x80).
struct Observed {
    inner: Body,
    /// Taken (and so counted) when the body ends, or on drop if it never does.
    record: Option<Record>,
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let grpc_web = matches!(self.record.as_ref().map(|r| r.kind), Some(Kind::Grpc(l)) if l.protocol == "grpc-web");
        let mut code = None;
        let mut ended = false;
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    code = GrpcCode::from_headers(trailers).map(|c| c.0);
                } else if let Some(data) = frame.data_ref()
                    && grpc_web
                    && data.first() == Some(&0x80)
                {
                    code = grpc_web_trailer_status(&data[data.len().min(5)..]);
                }
            }
            Poll::Ready(None | Some(Err(_))) => ended = true,
            Poll::Pending => {}
        }
        if let Some(record) = self.record.as_mut() {
            if code.is_some() {
                record.code = code;
            } else if ended && record.code.is_none() {
                // The stream ended without a status: not a normal end.
                record.code = Some(Code::Unknown);
            }
        }
        if ended || code.is_some() || self.inner.is_end_stream() {
            // The end: count it before the response is even flushed.
            self.record.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `grpc-status` line of a gRPC-web trailer block (`name:value\r\n` lines).
fn grpc_web_trailer_status(block: &[u8]) -> Option<Code> {
    let text = std::str::from_utf8(block).ok()?;
    text.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("grpc-status"))
        .and_then(|(_, v)| v.trim().parse::<i32>().ok())
        .map(Code::from_i32)
}

/// `GET /metrics`.
pub async fn render(State(metrics): State<Arc<Metrics>>) -> Response {
    ([(CONTENT_TYPE, taskgate_common::metrics::CONTENT_TYPE_TEXT)], metrics.render()).into_response()
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;

    #[test]
    fn unknown_methods_are_other() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").expect("a method")), "other");
    }

    #[test]
    fn grpc_calls_are_labelled_by_known_methods_only() {
        let list = grpc_labels(Protocol::Grpc, "/taskgate.task.v1.TaskService/ListTasks");
        assert_eq!((list.grpc_service, list.grpc_method), ("taskgate.task.v1.TaskService", "ListTasks"));
        assert_eq!(grpc_labels(Protocol::Grpc, "/taskgate.task.v1.TaskService/WatchTasks").grpc_type, "server_stream");
        assert_eq!(grpc_labels(Protocol::GrpcWeb, "/grpc.health.v1.Health/Check").grpc_method, "Check");
        assert_eq!(
            grpc_labels(Protocol::Grpc, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").grpc_type,
            "bidi_stream"
        );
        for unknown in
            ["/taskgate.task.v1.TaskService/Nope", "/grpc.reflection.deadbeef", "/grpc.health.v1.Health/Nope"]
        {
            let labels = grpc_labels(Protocol::Grpc, unknown);
            assert_eq!((labels.grpc_service, labels.grpc_method), ("unknown", "unknown"), "{unknown}");
        }
    }

    #[test]
    fn the_exposition_has_counters_and_histograms() {
        let m = Metrics::new();
        m.http(HttpLabels { method: "GET", route: "/api/v1/tasks" }, 200, 0.003);
        m.ratelimit_decision(Protocol::Grpc, "limited");
        m.upstream(taskgate_proto::service_names::TASK, "ListTasks", Code::Unavailable);
        m.grpc_started(grpc_labels(Protocol::Grpc, "/taskgate.task.v1.TaskService/ListTasks"));
        m.grpc_handled(grpc_labels(Protocol::Grpc, "/taskgate.task.v1.TaskService/ListTasks"), Code::NotFound, 0.01);
        let text = m.render();
        for wanted in [
            "http_server_requests_total{method=\"GET\",route=\"/api/v1/tasks\",code=\"200\"} 1",
            "http_server_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/tasks\",le=\"0.005\"} 1",
            "gateway_ratelimit_decisions_total{protocol=\"grpc\",decision=\"limited\"} 1",
            "grpc_client_handled_total{grpc_type=\"unary\",grpc_service=\"taskgate.task.v1.TaskService\",grpc_method=\"ListTasks\",grpc_code=\"Unavailable\"} 1",
            "grpc_server_handled_total{protocol=\"grpc\",grpc_type=\"unary\",grpc_service=\"taskgate.task.v1.TaskService\",grpc_method=\"ListTasks\",grpc_code=\"NotFound\"} 1",
            "gateway_ratelimit_fallback_active 0",
        ] {
            assert!(text.contains(wanted), "{wanted} missing from\n{text}");
        }
    }

    #[test]
    fn grpc_web_trailer_blocks_are_read() {
        assert_eq!(grpc_web_trailer_status(b"grpc-status:5\r\ngrpc-message:nope\r\n"), Some(Code::NotFound));
        assert_eq!(grpc_web_trailer_status(b"garbage"), None);
    }
}
