//! Prometheus metrics, hand-rolled: a few maps behind short-held mutexes and
//! atomics, rendered as the text exposition format at `/metrics`.
//!
//! - `taskgate_gateway_requests_total{protocol,route,code}`: every response;
//!   `code` is the gRPC code name for gRPC and gRPC-web (read from the
//!   trailers), the HTTP status for REST.
//! - `taskgate_gateway_request_duration_seconds{protocol,route}`: histogram,
//!   from receipt to the end of the response body.
//! - `taskgate_gateway_rate_limited_total{protocol}`: requests refused by the limit.
//! - `taskgate_gateway_upstream_requests_total{service,method,code}` and
//!   `taskgate_gateway_upstream_errors_total{service,method,code}`: calls the
//!   gRPC proxy made to the backends, and those that failed in transport
//!   (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, UNKNOWN, INTERNAL).
//! - `taskgate_gateway_ratelimit_fallback_active` (gauge) and
//!   `taskgate_gateway_ratelimit_fallback_decisions_total`: the local limiter in use.

use std::{
    collections::HashMap,
    fmt::Write as _,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
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
use http::{HeaderMap, header::CONTENT_TYPE};
use http_body::{Body as _, Frame, SizeHint};
use taskgate_proto::HTTP_RULES;
use tonic::Code;

use crate::protocol::{Protocol, ReceivedAt};

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One latency histogram.
#[derive(Default, Clone)]
struct Histogram {
    /// Observations at or below each bucket bound (not cumulative; summed on render).
    buckets: [u64; BUCKETS.len()],
    /// Observations above the last bound.
    overflow: u64,
    /// Sum of all observations, in seconds.
    sum: f64,
    /// Number of observations.
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        match BUCKETS.iter().position(|b| seconds <= *b) {
            Some(i) => self.buckets[i] += 1,
            None => self.overflow += 1,
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// Every metric the gateway exports. Shared by all requests of a replica.
#[derive(Default)]
pub struct Metrics {
    /// Responses by (protocol, route, code).
    requests: Mutex<HashMap<(&'static str, String, String), u64>>,
    /// Latency by (protocol, route).
    latency: Mutex<HashMap<(&'static str, String), Histogram>>,
    /// Rate-limit refusals by protocol.
    rate_limited: Mutex<HashMap<&'static str, u64>>,
    /// Proxied calls by (service, method, code).
    upstream: Mutex<HashMap<(&'static str, &'static str, Code), u64>>,
    /// Decisions made by the local fallback limiter.
    fallback_decisions: AtomicU64,
    /// Whether the local fallback limiter is in use right now.
    fallback_active: AtomicBool,
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// Counts one finished request.
    pub fn request(&self, protocol: Protocol, route: String, code: String, seconds: f64) {
        if let Ok(mut map) = self.latency.lock() {
            map.entry((protocol.as_str(), route.clone())).or_default().observe(seconds);
        }
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((protocol.as_str(), route, code)).or_default() += 1;
        }
    }

    /// Counts one rate-limit refusal.
    pub fn rate_limited(&self, protocol: Protocol) {
        if let Ok(mut map) = self.rate_limited.lock() {
            *map.entry(protocol.as_str()).or_default() += 1;
        }
    }

    /// Counts one call the proxy made to a backend.
    pub fn upstream(&self, service: &'static str, method: &'static str, code: Code) {
        if let Ok(mut map) = self.upstream.lock() {
            *map.entry((service, method, code)).or_default() += 1;
        }
    }

    /// Counts one decision of the local fallback limiter.
    pub fn fallback_decision(&self) {
        self.fallback_decisions.fetch_add(1, Ordering::Relaxed);
    }

    /// Records whether the local fallback limiter is in use.
    pub fn set_fallback_active(&self, active: bool) {
        self.fallback_active.store(active, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP taskgate_gateway_requests_total Responses by protocol, route and code.\n");
        out.push_str("# TYPE taskgate_gateway_requests_total counter\n");
        if let Ok(map) = self.requests.lock() {
            let mut rows: Vec<_> = map.iter().collect();
            rows.sort();
            for ((protocol, route, code), n) in rows {
                let _ = writeln!(
                    out,
                    "taskgate_gateway_requests_total{{protocol=\"{protocol}\",route=\"{}\",code=\"{code}\"}} {n}",
                    escape(route)
                );
            }
        }
        out.push_str(
            "# HELP taskgate_gateway_request_duration_seconds Time from receipt to the end of the response.\n",
        );
        out.push_str("# TYPE taskgate_gateway_request_duration_seconds histogram\n");
        if let Ok(map) = self.latency.lock() {
            let mut rows: Vec<_> = map.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(b.0));
            for ((protocol, route), h) in rows {
                let labels = format!("protocol=\"{protocol}\",route=\"{}\"", escape(route));
                let mut cumulative = 0;
                for (bound, n) in BUCKETS.iter().zip(h.buckets.iter()) {
                    cumulative += n;
                    let _ = writeln!(
                        out,
                        "taskgate_gateway_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    out,
                    "taskgate_gateway_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(out, "taskgate_gateway_request_duration_seconds_sum{{{labels}}} {}", h.sum);
                let _ = writeln!(out, "taskgate_gateway_request_duration_seconds_count{{{labels}}} {}", h.count);
            }
        }
        out.push_str("# HELP taskgate_gateway_rate_limited_total Requests refused by the rate limit.\n");
        out.push_str("# TYPE taskgate_gateway_rate_limited_total counter\n");
        if let Ok(map) = self.rate_limited.lock() {
            for protocol in ["grpc", "grpc-web", "rest"] {
                let n = map.get(protocol).copied().unwrap_or(0);
                let _ = writeln!(out, "taskgate_gateway_rate_limited_total{{protocol=\"{protocol}\"}} {n}");
            }
        }
        out.push_str("# HELP taskgate_gateway_upstream_requests_total Calls the gRPC proxy made to the backends.\n");
        out.push_str("# TYPE taskgate_gateway_upstream_requests_total counter\n");
        let upstream: Vec<_> = match self.upstream.lock() {
            Ok(map) => map.iter().map(|((s, m, c), n)| (*s, *m, *c, *n)).collect(),
            Err(_) => Vec::new(),
        };
        let mut upstream = upstream;
        upstream.sort_by_key(|(s, m, c, _)| (*s, *m, *c as i32));
        for (service, method, code, n) in &upstream {
            let _ = writeln!(
                out,
                "taskgate_gateway_upstream_requests_total{{service=\"{service}\",method=\"{method}\",code=\"{}\"}} {n}",
                code_name(*code)
            );
        }
        out.push_str("# HELP taskgate_gateway_upstream_errors_total Proxied calls that failed in transport.\n");
        out.push_str("# TYPE taskgate_gateway_upstream_errors_total counter\n");
        for (service, method, code, n) in upstream.iter().filter(|(_, _, c, _)| is_transport_error(*c)) {
            let _ = writeln!(
                out,
                "taskgate_gateway_upstream_errors_total{{service=\"{service}\",method=\"{method}\",code=\"{}\"}} {n}",
                code_name(*code)
            );
        }
        out.push_str("# HELP taskgate_gateway_ratelimit_fallback_active 1 while Redis is unreachable and the local limiter decides.\n");
        out.push_str("# TYPE taskgate_gateway_ratelimit_fallback_active gauge\n");
        let active = u8::from(self.fallback_active.load(Ordering::Relaxed));
        let _ = writeln!(out, "taskgate_gateway_ratelimit_fallback_active {active}");
        out.push_str(
            "# HELP taskgate_gateway_ratelimit_fallback_decisions_total Requests decided by the local limiter.\n",
        );
        out.push_str("# TYPE taskgate_gateway_ratelimit_fallback_decisions_total counter\n");
        let n = self.fallback_decisions.load(Ordering::Relaxed);
        let _ = writeln!(out, "taskgate_gateway_ratelimit_fallback_decisions_total {n}");
        out
    }
}

/// Codes that mean the backend could not be reached or did not answer in time.
fn is_transport_error(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Internal)
}

/// The canonical upper-case name of a gRPC code (`OK`, `NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Escapes a label value.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The route label of a request: the gRPC method path, the REST path
/// template from the `google.api.http` rules, a fixed endpoint, or `other`
/// (so unknown paths cannot blow up the label set).
pub fn route_label(protocol: Protocol, method: &http::Method, path: &str) -> String {
    if protocol.is_grpc() {
        let known = HTTP_RULES.iter().any(|r| {
            path.strip_prefix('/')
                .and_then(|p| p.split_once('/'))
                .is_some_and(|(service, m)| service == r.service && m == r.method)
        }) || path.starts_with("/grpc.health.v1.Health/")
            || path.starts_with("/grpc.reflection.");
        return if known { path.to_owned() } else { "other".to_owned() };
    }
    if let Some(rule) = HTTP_RULES.iter().find(|r| r.verb == method.as_str() && template_matches(r.path, path)) {
        return rule.path.to_owned();
    }
    match path {
        "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/docs" => path.to_owned(),
        p if p.starts_with("/docs/") => "/docs/*".to_owned(),
        p if p == "/demo" || p.starts_with("/demo/") => "/demo/*".to_owned(),
        _ => "other".to_owned(),
    }
}

/// True when `path` fits `template` segment by segment (`{var}` matches one segment).
fn template_matches(template: &str, path: &str) -> bool {
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) if ts.starts_with('{') && !ps.is_empty() => continue,
            (Some(ts), Some(ps)) if ts == ps => continue,
            _ => return false,
        }
    }
}

/// The outermost middleware: stamps [`ReceivedAt`], and counts the response
/// when its body ends (so gRPC codes in trailers are seen).
pub async fn track(State(metrics): State<Arc<Metrics>>, mut request: Request, next: Next) -> Response {
    let start = Instant::now();
    request.extensions_mut().insert(ReceivedAt(start));
    let protocol = Protocol::of(request.headers());
    let route = route_label(protocol, request.method(), request.uri().path());
    let response = next.run(request).await;
    let code = if protocol.is_grpc() {
        grpc_status(response.headers()).map(str::to_owned)
    } else {
        Some(response.status().as_u16().to_string())
    };
    let record = Record { metrics, protocol, route, start, code };
    if response.body().is_end_stream() {
        // Nothing left to observe (trailers-only answers, empty bodies): count it now.
        drop(record);
        return response;
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::new(Observed { inner: body, record: Some(record) }))
}

/// The `grpc-status` of a trailers-only response or of trailers, by name.
fn grpc_status(headers: &HeaderMap) -> Option<&'static str> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(code_name(Code::from_i32(code)))
}

/// What is counted when a response body is finished (or dropped).
struct Record {
    metrics: Arc<Metrics>,
    protocol: Protocol,
    route: String,
    start: Instant,
    /// The code, once known.
    code: Option<String>,
}

impl Drop for Record {
    fn drop(&mut self) {
        let code = self.code.take().unwrap_or_else(|| "UNKNOWN".to_owned());
        let route = std::mem::take(&mut self.route);
        self.metrics.request(self.protocol, route, code, self.start.elapsed().as_secs_f64());
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
        let protocol = self.record.as_ref().map(|r| r.protocol);
        let mut code = None;
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    code = grpc_status(trailers);
                } else if let Some(data) = frame.data_ref()
                    && protocol == Some(Protocol::GrpcWeb)
                    && data.first() == Some(&0x80)
                {
                    code = grpc_web_trailer_status(&data[data.len().min(5)..]);
                }
            }
            Poll::Ready(None | Some(Err(_))) => {
                // The end: count it before the response is even flushed.
                self.record.take();
            }
            Poll::Pending => {}
        }
        if let (Some(code), Some(record)) = (code, self.record.as_mut()) {
            record.code = Some(code.to_owned());
        }
        if self.inner.is_end_stream() {
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
fn grpc_web_trailer_status(block: &[u8]) -> Option<&'static str> {
    let text = std::str::from_utf8(block).ok()?;
    text.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("grpc-status"))
        .and_then(|(_, v)| v.trim().parse::<i32>().ok())
        .map(|c| code_name(Code::from_i32(c)))
}

/// `GET /metrics`.
pub async fn render(State(metrics): State<Arc<Metrics>>) -> Response {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render()).into_response()
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;

    #[test]
    fn rest_routes_are_labelled_by_their_template() {
        assert_eq!(route_label(Protocol::Rest, &Method::GET, "/api/v1/tasks"), "/api/v1/tasks");
        assert_eq!(route_label(Protocol::Rest, &Method::GET, "/api/v1/tasks/0193-abc"), "/api/v1/tasks/{id}");
        assert_eq!(route_label(Protocol::Rest, &Method::PATCH, "/api/v1/tasks/x"), "/api/v1/tasks/{task.id}");
        assert_eq!(route_label(Protocol::Rest, &Method::GET, "/no/such/thing"), "other");
    }

    #[test]
    fn grpc_routes_are_labelled_by_known_methods_only() {
        let m = Method::POST;
        assert_eq!(
            route_label(Protocol::Grpc, &m, "/taskgate.task.v1.TaskService/ListTasks"),
            "/taskgate.task.v1.TaskService/ListTasks"
        );
        assert_eq!(route_label(Protocol::Grpc, &m, "/taskgate.task.v1.TaskService/Nope"), "other");
    }

    #[test]
    fn the_exposition_has_counters_and_histograms() {
        let m = Metrics::new();
        m.request(Protocol::Rest, "/api/v1/tasks".into(), "200".into(), 0.003);
        m.rate_limited(Protocol::Grpc);
        m.upstream("task", "ListTasks", Code::Unavailable);
        let text = m.render();
        assert!(
            text.contains("taskgate_gateway_requests_total{protocol=\"rest\",route=\"/api/v1/tasks\",code=\"200\"} 1")
        );
        assert!(text.contains("le=\"0.005\"} 1"));
        assert!(text.contains("taskgate_gateway_rate_limited_total{protocol=\"grpc\"} 1"));
        assert!(text.contains(
            "taskgate_gateway_upstream_errors_total{service=\"task\",method=\"ListTasks\",code=\"UNAVAILABLE\"} 1"
        ));
    }

    #[test]
    fn grpc_web_trailer_blocks_are_read() {
        assert_eq!(grpc_web_trailer_status(b"grpc-status:5\r\ngrpc-message:nope\r\n"), Some("NOT_FOUND"));
        assert_eq!(grpc_web_trailer_status(b"garbage"), None);
    }
}
