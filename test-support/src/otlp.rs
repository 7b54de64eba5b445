//! An in-process OTLP trace receiver: the collector's gRPC `TraceService`
//! on a free port, keeping every span it is sent, so a test can check what
//! the services exported.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
/// A span as exported (ids as bytes, `kind` 2 for a server span, 3 for a client's).
pub use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    /// Where it listens.
    addr: SocketAddr,
    /// Every span received so far, in arrival order.
    spans: Arc<Mutex<Vec<Span>>>,
    /// Stops the server when dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The gRPC service, sharing the list of spans with [`OtlpReceiver`].
struct Collector {
    /// Where received spans go.
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let received =
            request.into_inner().resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).extend(received);
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl OtlpReceiver {
    /// Starts a receiver on 127.0.0.1, port 0.
    pub async fn start() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the OTLP receiver");
        let addr = listener.local_addr().expect("the OTLP receiver's address");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = TraceServiceServer::new(Collector { spans: spans.clone() });
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        OtlpReceiver { addr, spans, _stop: stop }
    }

    /// The endpoint to export to (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The spans received once `done` holds of them, or whatever came
    /// within `patience`.
    pub async fn wait_for(&self, patience: Duration, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let give_up = tokio::time::Instant::now() + patience;
        loop {
            let spans = self.spans();
            if done(&spans) || tokio::time::Instant::now() >= give_up {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
