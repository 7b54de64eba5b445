//! The gateway's own plain-HTTP endpoints and small middlewares: `/healthz`,
//! `/readyz`, the optional `/demo` page, request ids, load shedding and the
//! request timeout.

use std::{
    path::{Component, Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use fred::prelude::*;
use http::{HeaderValue, StatusCode, header::CONTENT_TYPE};
use taskgate_common::{balance::BalancedChannel, redis::RedisHandle};
use taskgate_proto::service_names;
use tonic::Status;
use tonic_health::{
    pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient},
    server::HealthReporter,
};

use crate::protocol::{Protocol, reject};

/// The header carrying the request id in both directions.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What `/readyz` asks, and its last answer.
pub struct Readiness {
    /// The balanced channel to the auth service's replicas.
    auth: BalancedChannel,
    /// The balanced channel to the task service's replicas.
    task: BalancedChannel,
    /// The shared Redis pool and its circuit breaker.
    redis: RedisHandle,
    /// The last answer and when it was made; held across one round of
    /// probes (at most [`PROBE_TIMEOUT`]) so concurrent callers share it.
    last: tokio::sync::Mutex<Option<(Instant, Probes)>>,
}

/// Whether (auth, task, redis) answered a round of readiness probes.
type Probes = (bool, bool, bool);

/// How long a `/readyz` answer is reused: however often it is called, the
/// backends and Redis are probed at most once per this period.
pub const READINESS_CACHE: Duration = Duration::from_secs(1);

impl Readiness {
    /// Probes of `auth`, `task` and `redis`.
    pub fn new(auth: BalancedChannel, task: BalancedChannel, redis: RedisHandle) -> Readiness {
        Readiness { auth, task, redis, last: tokio::sync::Mutex::new(None) }
    }

    /// (auth, task, redis) up, probed at most once per [`READINESS_CACHE`].
    async fn probe(&self) -> Probes {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = *last
            && at.elapsed() < READINESS_CACHE
        {
            return answer;
        }
        let answer = tokio::join!(
            backend_serving(self.auth.clone()),
            backend_serving(self.task.clone()),
            redis_answers(&self.redis)
        );
        *last = Some((Instant::now(), answer));
        answer
    }
}

/// How long each readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 when both backends report SERVING and Redis answers a
/// PING, 503 naming what is down otherwise; cached for [`READINESS_CACHE`].
pub async fn readyz(State(ready): State<Arc<Readiness>>) -> Response {
    let (auth, task, redis) = ready.probe().await;
    let body = serde_json::json!({"auth": auth, "task": task, "redis": redis});
    let status = if auth && task && redis { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

/// How often the gateway's own grpc.health.v1 status of each proxied service
/// is brought in step with its backend.
const BACKEND_HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps the gateway's grpc.health.v1 status of `taskgate.auth.v1.AuthService`
/// and `taskgate.task.v1.TaskService` in step with the backends (the overall
/// `""` status stays SERVING while the process runs).
pub fn spawn_backend_health(reporter: HealthReporter, auth: BalancedChannel, task: BalancedChannel) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(BACKEND_HEALTH_INTERVAL);
        loop {
            tick.tick().await;
            for (service, channel) in [(service_names::AUTH, &auth), (service_names::TASK, &task)] {
                let status = if backend_serving(channel.clone()).await {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                reporter.set_service_status(service, status).await;
            }
        }
    });
}

/// grpc.health.v1 `Check("")` on a backend (one of its replicas, the
/// balancer picking) within [`PROBE_TIMEOUT`].
async fn backend_serving(channel: BalancedChannel) -> bool {
    let mut client = HealthClient::new(channel);
    let call = client.check(HealthCheckRequest { service: String::new() });
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, call).await,
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
    )
}

/// A Redis PING within [`PROBE_TIMEOUT`]; false at once while Redis is not
/// connected or its circuit breaker is open (requests are not using it).
async fn redis_answers(redis: &RedisHandle) -> bool {
    redis.available()
        && matches!(tokio::time::timeout(PROBE_TIMEOUT, redis.pool().ping::<String>(None)).await, Ok(Ok(_)))
}

/// True for an inbound request id worth keeping: 1-128 visible ASCII
/// characters from a conservative set, so it is safe in logs and headers.
pub fn valid_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'='))
}

/// Request-id middleware: keeps a valid inbound `x-request-id`, replaces a
/// missing or invalid one with a UUID, and returns it on the response. The
/// header stays on the request, so the backends receive it as metadata.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = match request.headers().get(REQUEST_ID_HEADER) {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => {
            let fresh = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string());
            let fresh = fresh.unwrap_or_else(|_| HeaderValue::from_static("unknown"));
            request.headers_mut().insert(REQUEST_ID_HEADER, fresh.clone());
            fresh
        }
    };
    let mut response = next.run(request).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, id);
    response
}

/// Timeout middleware: a request that has not produced its response headers
/// within `limit` gets DEADLINE_EXCEEDED (gRPC) or 504 (REST).
pub async fn timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    let protocol = Protocol::of(request.headers());
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => reject(protocol, &Status::deadline_exceeded("the gateway gave up waiting for the backend")),
    }
}

/// The concurrency limit of the load-shedding layer.
pub struct Shedder {
    /// One permit per request in progress (`GATEWAY_MAX_IN_FLIGHT`).
    permits: Arc<tokio::sync::Semaphore>,
    /// Where refusals are counted.
    metrics: Arc<crate::metrics::Metrics>,
}

impl Shedder {
    /// At most `max_in_flight` requests at once.
    pub fn new(max_in_flight: usize, metrics: Arc<crate::metrics::Metrics>) -> Shedder {
        Shedder { permits: Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1))), metrics }
    }
}

/// Load shedding (tower's `ConcurrencyLimit` + `LoadShed`, answered in the
/// request's protocol): a request that finds every permit taken gets
/// RESOURCE_EXHAUSTED / 503 with `Retry-After: 1` at once. `/healthz` is
/// never shed, so an overloaded replica is not also declared dead.
pub async fn shed(State(shedder): State<Arc<Shedder>>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let Ok(_permit) = shedder.permits.clone().try_acquire_owned() else {
        let protocol = Protocol::of(request.headers());
        shedder.metrics.shed(protocol);
        let status = taskgate_common::status::retry_after(
            "the gateway is at its limit of requests in progress; retry shortly",
            Duration::from_secs(1),
        );
        let mut response = reject(protocol, &status);
        if protocol == Protocol::Rest {
            // 429 is for a client over its own limit; this is the server's.
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(1));
        return response;
    };
    next.run(request).await
}

/// Answers gRPC and gRPC-web calls to paths no service serves with
/// UNIMPLEMENTED, as gRPC clients expect, instead of the REST fallback's JSON 404/405.
pub async fn grpc_unimplemented(request: Request, next: Next) -> Response {
    let protocol = Protocol::of(request.headers());
    if !protocol.is_grpc() {
        return next.run(request).await;
    }
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if matches!(response.status(), StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED) {
        return reject(protocol, &Status::unimplemented(format!("no such method: {path}")));
    }
    response
}

include!(concat!(env!("OUT_DIR"), "/demo_files.rs"));

/// Where the browser demo's files come from.
#[derive(Clone)]
pub enum Demo {
    /// A folder read at run time (`DEMO_DIR`, when it exists).
    Folder(PathBuf),
    /// The copy of `clients/web/dist` embedded at build time ([`DEMO_FILES`]).
    Embedded,
}

impl Demo {
    /// The folder if it exists, else the embedded copy if there is one, else nothing.
    pub fn choose(folder: &Path) -> Option<Demo> {
        if folder.is_dir() {
            Some(Demo::Folder(folder.to_owned()))
        } else if DEMO_FILES.is_empty() {
            None
        } else {
            Some(Demo::Embedded)
        }
    }
}

/// `GET /demo`, `/demo/` and `/demo/{*path}`: a static file, `index.html` for folders.
pub async fn demo(State(demo): State<Arc<Demo>>, request: Request) -> Response {
    let rest = request.uri().path().trim_start_matches("/demo").trim_start_matches('/');
    match demo.as_ref() {
        Demo::Folder(root) => {
            let Some(mut path) = safe_join(root, rest) else {
                return StatusCode::NOT_FOUND.into_response();
            };
            if rest.is_empty() || tokio::fs::metadata(&path).await.map(|m| m.is_dir()).unwrap_or(false) {
                path = path.join("index.html");
            }
            match tokio::fs::read(&path).await {
                Ok(bytes) => ([(CONTENT_TYPE, content_type(&path))], bytes).into_response(),
                Err(_) => StatusCode::NOT_FOUND.into_response(),
            }
        }
        Demo::Embedded => {
            let wanted = if rest.is_empty() { "index.html" } else { rest };
            match DEMO_FILES.iter().find(|(name, _)| *name == wanted) {
                Some((name, bytes)) => ([(CONTENT_TYPE, content_type(Path::new(name)))], *bytes).into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }
    }
}

/// `root/rest`, or None if `rest` tries to climb out of `root`.
fn safe_join(root: &Path, rest: &str) -> Option<PathBuf> {
    let rest = Path::new(rest);
    rest.components().all(|c| matches!(c, Component::Normal(_))).then(|| root.join(rest))
}

/// The content type for a file name.
fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_checked() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123_X.y")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        assert!(!valid_request_id(&HeaderValue::from_static("has space")));
        assert!(!valid_request_id(&HeaderValue::from_str(&"a".repeat(129)).expect("ascii")));
    }

    #[test]
    fn demo_paths_cannot_escape_the_folder() {
        let root = Path::new("/srv/demo");
        assert_eq!(safe_join(root, "assets/app.js"), Some(PathBuf::from("/srv/demo/assets/app.js")));
        assert_eq!(safe_join(root, "../etc/passwd"), None);
        assert_eq!(safe_join(root, "/etc/passwd"), None);
    }
}
