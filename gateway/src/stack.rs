//! The one middleware stack every request goes through, whatever its
//! protocol, built in one place so its order can be read top to bottom.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::MatchedPath,
    middleware::{from_fn, from_fn_with_state},
};
use http::{HeaderName, HeaderValue, Method, Request, Response};
use taskgate_common::telemetry;
use tower::ServiceBuilder;
use tower_http::{
    classify::ServerErrorsFailureClass,
    cors::{AllowOrigin, CorsLayer},
    trace::{DefaultOnResponse, OnResponse, TraceLayer},
};
use tracing::{Level, Span};

use crate::{
    auth::{self, EdgeAuth},
    edge,
    metrics::{self, Metrics},
    policy,
    protocol::Protocol,
    ratelimit::{self, RateLimiter},
};

/// What the layers need.
pub struct Parts {
    /// Where requests are counted.
    pub metrics: Arc<Metrics>,
    /// The token verifier.
    pub auth: Arc<EdgeAuth>,
    /// The fleet-wide limiter.
    pub limiter: Arc<RateLimiter>,
    /// `CORS_ALLOWED_ORIGINS`.
    pub cors_allowed_origins: String,
    /// `REQUEST_TIMEOUT_SECONDS`.
    pub request_timeout: Duration,
    /// `GATEWAY_MAX_IN_FLIGHT`.
    pub max_in_flight: usize,
}

/// Wraps every route of `router` in the stack, outermost layer first.
pub fn apply(router: Router, parts: Parts) -> Router {
    let stack = ServiceBuilder::new()
        // First, so every layer below reads the route's policy from the contract.
        .layer(from_fn_with_state(policy::Routes::contract(), policy::classify))
        // So every response is counted, the refusals of the layers below included.
        .layer(from_fn_with_state(parts.metrics.clone(), metrics::track))
        // Load shedding before any work is spent on a request: past the in-flight
        // limit, RESOURCE_EXHAUSTED / 503 with Retry-After at once, never a queue.
        .layer(from_fn_with_state(Arc::new(edge::Shedder::new(parts.max_in_flight, parts.metrics)), edge::shed))
        // Before anything logs, so every log line and every backend call carries the id.
        .layer(from_fn(edge::request_id))
        // One span per request, with the id, around everything that can log
        // (when traces are exported, the server span continuing the client's
        // `traceparent`); one INFO line per response is the access log.
        .layer(TraceLayer::new_for_http().make_span_with(span).on_response(AccessLog).on_failure(on_failure))
        // Preflights are answered here, before authentication; CORS headers go on every answer.
        .layer(cors(&parts.cors_allowed_origins))
        // Strips client-supplied identity headers and verifies the token.
        .layer(from_fn_with_state(parts.auth, auth::authenticate))
        // Needs the verified subject; one Redis round trip also checks revocation.
        .layer(from_fn_with_state(parts.limiter, ratelimit::limit))
        // Bounds only the time spent on the backend call.
        .layer(from_fn_with_state(parts.request_timeout, edge::timeout))
        // Innermost: gRPC callers of unknown paths get UNIMPLEMENTED, not the REST fallback's JSON 404.
        .layer(from_fn(edge::grpc_unimplemented));
    router.layer(stack)
}

/// The tracing span of one request. With traces exported it is also the
/// gateway's OpenTelemetry server span, a child of the client's
/// `traceparent` (REST, gRPC and gRPC-web alike), named after the gRPC
/// method or the REST route, with the standard HTTP attributes.
fn span<B>(request: &Request<B>) -> tracing::Span {
    let id = request.headers().get(edge::REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (method, path) = (request.method(), request.uri().path());
    if !telemetry::exporting() {
        return tracing::info_span!("request", %method, %path, request_id = %id);
    }
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let name = match route {
        // gRPC and gRPC-web: `pkg.Service/Method`, as the backends name their spans.
        _ if Protocol::of(request.headers()).is_grpc() => path.trim_start_matches('/').to_owned(),
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    };
    let span = tracing::info_span!(
        "request",
        %method,
        %path,
        request_id = %id,
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = route,
        url.path = %path,
        http.response.status_code = tracing::field::Empty,
    );
    telemetry::extract(&span, request.headers());
    span
}

/// The access log line (INFO, tower-http's), and the status on the span.
#[derive(Debug, Clone, Copy)]
struct AccessLog;

impl<B> OnResponse<B> for AccessLog {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        if telemetry::exporting() {
            span.record("http.response.status_code", response.status().as_u16());
        }
        DefaultOnResponse::new().level(Level::INFO).on_response(response, latency, span);
    }
}

/// A REST 5xx (or a body that failed) at ERROR, but for 503: those are
/// answered on purpose (a backend unreachable, load shed, the rate-limit
/// store down), each logged with its cause where it arises, once per
/// incident, and the access log line has every one.
fn on_failure(class: ServerErrorsFailureClass, latency: Duration, span: &Span) {
    span.record("otel.status_code", "error");
    if matches!(class, ServerErrorsFailureClass::StatusCode(status) if status == http::StatusCode::SERVICE_UNAVAILABLE)
    {
        return;
    }
    tracing::error!(classification = %class, latency_ms = latency.as_millis(), "response failed");
}

/// CORS: any origin reflected without credentials for `*`, or the listed
/// origins with credentials (cookies). The gRPC status and rate-limit headers
/// are exposed to scripts; W3C trace context may be sent, so a browser's
/// traces continue through the gateway.
pub fn cors(allowed: &str) -> CorsLayer {
    const ALLOW: [&str; 12] = [
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        "x-csrf-token",
        "x-request-id",
        "connect-protocol-version",
        "connect-timeout-ms",
        "accept",
        "traceparent",
        "tracestate",
    ];
    const EXPOSE: [&str; 7] = [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "x-request-id",
        "ratelimit",
        "ratelimit-policy",
        "retry-after",
    ];
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS])
        .allow_headers(ALLOW.map(HeaderName::from_static))
        .expose_headers(EXPOSE.map(HeaderName::from_static))
        .max_age(Duration::from_secs(600));
    if allowed.trim() == "*" {
        return layer.allow_origin(AllowOrigin::mirror_request());
    }
    let origins: Vec<HeaderValue> = allowed
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    layer.allow_origin(origins).allow_credentials(true)
}
