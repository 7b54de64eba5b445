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
//! - `taskgate_gateway_shed_total{protocol}`: requests refused by load shedding.
//!
//! Label values come only from fixed sets: a gRPC route is a method some
//! served service declares (read from the descriptor sets), a REST route is a
//! `google.api.http` template or one of the gateway's own endpoints, and
//! anything else is `other`; on top of that, [`MAX_SERIES`] caps every map.
//! `/metrics` copies each map under its lock and formats the copy after
//! letting go, so a scrape never holds a lock the request path needs for
//! longer than a copy of a few hundred entries.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use prost::Message as _;

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

/// Most label sets one metric map holds; past it, new ones are counted
/// under route `other`. The fixed label sets make this unreachable in
/// practice (a few hundred at most); it is the backstop.
pub const MAX_SERIES: usize = 2_000;

/// A response code label: the gRPC code name, or the HTTP status for REST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CodeLabel {
    /// A gRPC status code name (`OK`, `NOT_FOUND`).
    Grpc(&'static str),
    /// An HTTP status code.
    Http(u16),
}

impl std::fmt::Display for CodeLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodeLabel::Grpc(name) => f.write_str(name),
            CodeLabel::Http(status) => write!(f, "{status}"),
        }
    }
}

/// Every metric the gateway exports. Shared by all requests of a replica.
#[derive(Default)]
pub struct Metrics {
    /// Responses by (protocol, route, code); at most [`MAX_SERIES`] entries.
    requests: Mutex<HashMap<(&'static str, &'static str, CodeLabel), u64>>,
    /// Latency by (protocol, route); at most [`MAX_SERIES`] entries.
    latency: Mutex<HashMap<(&'static str, &'static str), Histogram>>,
    /// Requests refused by load shedding, by protocol.
    shed: Mutex<HashMap<&'static str, u64>>,
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
    pub fn request(&self, protocol: Protocol, route: &'static str, code: CodeLabel, seconds: f64) {
        if let Ok(mut map) = self.latency.lock() {
            let mut key = (protocol.as_str(), route);
            if map.len() >= MAX_SERIES && !map.contains_key(&key) {
                key.1 = "other";
            }
            map.entry(key).or_default().observe(seconds);
        }
        if let Ok(mut map) = self.requests.lock() {
            let mut key = (protocol.as_str(), route, code);
            if map.len() >= MAX_SERIES && !map.contains_key(&key) {
                key = (protocol.as_str(), "other", CodeLabel::Grpc("OTHER"));
            }
            *map.entry(key).or_default() += 1;
        }
    }

    /// Counts one request refused by load shedding.
    pub fn shed(&self, protocol: Protocol) {
        if let Ok(mut map) = self.shed.lock() {
            *map.entry(protocol.as_str()).or_default() += 1;
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
        // Copies under the lock, sorts and formats after letting go.
        let mut rows: Vec<_> = snapshot(&self.requests);
        rows.sort();
        for ((protocol, route, code), n) in rows {
            let _ = writeln!(
                out,
                "taskgate_gateway_requests_total{{protocol=\"{protocol}\",route=\"{}\",code=\"{code}\"}} {n}",
                escape(route)
            );
        }
        out.push_str(
            "# HELP taskgate_gateway_request_duration_seconds Time from receipt to the end of the response.\n",
        );
        out.push_str("# TYPE taskgate_gateway_request_duration_seconds histogram\n");
        {
            let mut rows: Vec<_> = snapshot(&self.latency);
            rows.sort_by(|a, b| a.0.cmp(&b.0));
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
        let limited: HashMap<_, _> = snapshot(&self.rate_limited).into_iter().collect();
        for protocol in ["grpc", "grpc-web", "rest"] {
            let n = limited.get(protocol).copied().unwrap_or(0);
            let _ = writeln!(out, "taskgate_gateway_rate_limited_total{{protocol=\"{protocol}\"}} {n}");
        }
        out.push_str("# HELP taskgate_gateway_shed_total Requests refused because too many were in flight.\n");
        out.push_str("# TYPE taskgate_gateway_shed_total counter\n");
        let shed: HashMap<_, _> = snapshot(&self.shed).into_iter().collect();
        for protocol in ["grpc", "grpc-web", "rest"] {
            let n = shed.get(protocol).copied().unwrap_or(0);
            let _ = writeln!(out, "taskgate_gateway_shed_total{{protocol=\"{protocol}\"}} {n}");
        }
        out.push_str("# HELP taskgate_gateway_upstream_requests_total Calls the gRPC proxy made to the backends.\n");
        out.push_str("# TYPE taskgate_gateway_upstream_requests_total counter\n");
        let mut upstream: Vec<_> = snapshot(&self.upstream).into_iter().map(|((s, m, c), n)| (s, m, c, n)).collect();
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

/// The entries of `map`, copied while its lock is held (briefly).
fn snapshot<K: Clone, V: Clone>(map: &Mutex<HashMap<K, V>>) -> Vec<(K, V)> {
    map.lock().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
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

/// Every gRPC method the gateway serves, as `/<package>.<Service>/<Method>`:
/// read once from the descriptor sets of taskgate's protos, grpc.health.v1
/// and server reflection (v1 and v1alpha), so no list is written by hand.
static GRPC_METHODS: std::sync::LazyLock<HashSet<String>> = std::sync::LazyLock::new(|| {
    let sets = [
        taskgate_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = HashSet::new();
    for bytes in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else { continue };
        for file in set.file {
            let package = file.package().to_owned();
            for service in file.service {
                for method in &service.method {
                    methods.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                }
            }
        }
    }
    methods
});

/// The route label of a request: a gRPC method the gateway serves, the REST
/// path template from the `google.api.http` rules, a fixed endpoint, or
/// `other`. Always a `'static` string from a fixed set, so no client can add
/// a label value.
pub fn route_label(protocol: Protocol, method: &http::Method, path: &str) -> &'static str {
    if protocol.is_grpc() {
        return GRPC_METHODS.get(path).map_or("other", String::as_str);
    }
    if let Some(rule) = HTTP_RULES.iter().find(|r| r.verb == method.as_str() && template_matches(r.path, path)) {
        return rule.path;
    }
    match path {
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/openapi.json" => "/openapi.json",
        "/docs" => "/docs",
        p if p.starts_with("/docs/") => "/docs/*",
        p if p == "/demo" || p.starts_with("/demo/") => "/demo/*",
        _ => "other",
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
        grpc_status(response.headers()).map(CodeLabel::Grpc)
    } else {
        Some(CodeLabel::Http(response.status().as_u16()))
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
    route: &'static str,
    start: Instant,
    /// The code, once known.
    code: Option<CodeLabel>,
}

impl Drop for Record {
    fn drop(&mut self) {
        let code = self.code.take().unwrap_or(CodeLabel::Grpc("UNKNOWN"));
        self.metrics.request(self.protocol, self.route, code, self.start.elapsed().as_secs_f64());
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
            record.code = Some(CodeLabel::Grpc(code));
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
        assert_eq!(route_label(Protocol::Grpc, &m, "/grpc.health.v1.Health/Check"), "/grpc.health.v1.Health/Check");
        assert_eq!(
            route_label(Protocol::Grpc, &m, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        );
        assert_eq!(route_label(Protocol::Grpc, &m, "/grpc.reflection.deadbeef"), "other");
        assert_eq!(route_label(Protocol::Grpc, &m, "/grpc.health.v1.Health/Nope"), "other");
    }

    #[test]
    fn the_label_sets_are_capped() {
        let m = Metrics::new();
        for i in 0..(MAX_SERIES + 500) {
            let code = CodeLabel::Http(u16::try_from(i % 60_000).unwrap_or(0));
            m.request(Protocol::Rest, "/api/v1/tasks", code, 0.001);
        }
        assert!(m.requests.lock().map(|r| r.len()).unwrap_or(0) <= MAX_SERIES + 1);
    }

    #[test]
    fn the_exposition_has_counters_and_histograms() {
        let m = Metrics::new();
        m.request(Protocol::Rest, "/api/v1/tasks", CodeLabel::Http(200), 0.003);
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
