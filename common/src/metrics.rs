//! Prometheus metrics shared by every service: the go-grpc-prometheus server
//! series ([`grpc`]), gRPC code names as Go spells them, the latency buckets,
//! and the admin listener that serves `/metrics`.
//!
//! Each service builds one [`Registry`] per instance (never a global), so
//! tests that start many services in one process see only their own
//! counts. Metrics are `prometheus-client` counters, gauges and histograms;
//! their label values are `&'static str`s from fixed sets or small `Copy`
//! types, so counting a request allocates nothing once its label set exists.
//!
//! Locking: a `Family` keeps its series in a map behind a read-write lock.
//! The request path takes the read side (shared with a scrape), and only the
//! first request of a new label set takes the write side, which a scrape in
//! progress delays by the time it takes to format a few hundred lines. Since
//! every label set comes from a fixed set, that happens a bounded number of
//! times in the life of a process.

pub mod grpc;

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{Router, extract::State, http::header::CONTENT_TYPE, response::IntoResponse, routing::get};
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
pub use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of every latency histogram's buckets: from half a
/// millisecond (a cache hit) to ten seconds (past every timeout but the
/// request limit).
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A histogram with [`LATENCY_BUCKETS`]; a plain `fn` so that a `Family` of
/// them has a nameable type.
pub fn latency_histogram() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(LATENCY_BUCKETS)
}

/// A family of latency histograms keyed by the label set `S`.
pub type HistogramFamily<S> = prometheus_client::metrics::family::Family<
    S,
    prometheus_client::metrics::histogram::Histogram,
    fn() -> prometheus_client::metrics::histogram::Histogram,
>;

/// A new, empty [`HistogramFamily`] with [`LATENCY_BUCKETS`].
pub fn histogram_family<S: Clone + std::hash::Hash + Eq>() -> HistogramFamily<S> {
    HistogramFamily::new_with_constructor(latency_histogram as fn() -> _)
}

/// The name go-grpc-prometheus gives a gRPC code (`OK`, `Canceled`,
/// `InvalidArgument`...): Go's `codes.Code.String()`, which dashboards and
/// alerts written for Go services expect.
pub fn go_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// A `grpc_code` label value: one of the 17 gRPC codes, written as Go
/// writes it ([`go_code_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcCode(pub tonic::Code);

impl GrpcCode {
    /// The code in a `grpc-status` header or trailer, if there is one;
    /// a value that is not a number is UNKNOWN, as the gRPC spec says.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<GrpcCode> {
        let value = headers.get("grpc-status")?;
        let code = value.to_str().ok().and_then(|v| v.trim().parse::<i32>().ok()).unwrap_or(2);
        Some(GrpcCode(tonic::Code::from_i32(code)))
    }
}

impl EncodeLabelValue for GrpcCode {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, go_code_name(self.0))
    }
}

/// The Prometheus text exposition (format 0.0.4, which `promtool check
/// metrics` and every Prometheus read) of everything in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail; a metric's own encoder could only
    // fail on a label value it cannot write, which ours never are.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The admin router: `GET /metrics` answers [`render`] of `registry`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(registry)
}

/// `GET /metrics`.
async fn scrape(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], render(&registry))
}

/// Binds the admin listener at `addr`; `variable` names the setting in the
/// error when the address is taken.
pub async fn bind(addr: SocketAddr, variable: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {variable} {addr}"))
}

/// A backend's admin endpoint, bound and ready: `/metrics` from one
/// registry (each instance has its own; tests run many in one process).
pub struct Admin {
    /// The bound listener.
    listener: tokio::net::TcpListener,
    /// Every metric of the instance.
    registry: Arc<Registry>,
}

impl Admin {
    /// Binds `addr` (the setting `variable`) for `registry`.
    pub async fn bind(addr: SocketAddr, variable: &str, registry: Registry) -> anyhow::Result<Admin> {
        Ok(Admin { listener: bind(addr, variable).await?, registry: Arc::new(registry) })
    }

    /// The bound address (port 0 becomes the real port).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listener.local_addr().context("reading the admin address")
    }

    /// Serves `/metrics` until the task is aborted (the server's owner
    /// stops it after its gRPC drain, so a scrape during the drain answers).
    pub fn spawn(self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        tokio::spawn(serve(self.listener, self.registry, std::future::pending()))
    }
}

/// Serves `/metrics` from `registry` on `listener` (plain HTTP/1.1 and
/// HTTP/2, for Prometheus) until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(registry)).with_graceful_shutdown(shutdown).await.context("serving /metrics")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_as_go_names_them() {
        assert_eq!(go_code_name(tonic::Code::Cancelled), "Canceled");
        assert_eq!(go_code_name(tonic::Code::Ok), "OK");
        let mut headers = http::HeaderMap::new();
        assert_eq!(GrpcCode::from_headers(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(GrpcCode::from_headers(&headers), Some(GrpcCode(tonic::Code::NotFound)));
        headers.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(GrpcCode::from_headers(&headers), Some(GrpcCode(tonic::Code::Unknown)));
    }
}
