//! The gRPC (and, through tonic-web, gRPC-web) face of the gateway: every
//! service of the contract forwarded to its backend, with no code per RPC.
//!
//! A [`ServiceProxy`] serves every method the descriptors declare for one
//! service, as the REST transcoder serves every binding. tonic's server takes
//! each call apart (framing, the message size bound, status and trailers),
//! and the message goes on to the backend as the bytes it arrived as
//! ([`BytesCodec`]): never parsed, never re-encoded, which a gateway that
//! neither reads nor changes the messages has no reason to pay for. It goes
//! with the caller's metadata (less hop-by-hop headers and browser
//! credentials, which the auth layer has already turned into
//! `authorization`) and the remaining `grpc-timeout` deadline, over the
//! backend's connection its policy's cost chooses; the backend's response or
//! status comes back unchanged, details included.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::{Buf as _, BufMut as _, Bytes};
use futures::future::BoxFuture;
use http::{HeaderName, uri::PathAndQuery};
use prost_reflect::ServiceDescriptor;
use taskgate_common::balance::BoxError;
use taskgate_proto::api::v1::Cost;
use tonic::{
    Code, Extensions, Request, Response, Status, Streaming,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataMap,
};
use tower::Service;

use crate::{
    metrics::Metrics,
    protocol::ReceivedAt,
    upstream::{Backends, Upstream},
    watch::{Held, WatchSlots},
};

/// Request headers that describe the gateway hop, not the call, or that carry
/// browser credentials; none reaches a backend.
static NOT_FORWARDED: [HeaderName; 22] = [
    HeaderName::from_static("connection"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("proxy-authorization"),
    HeaderName::from_static("transfer-encoding"),
    HeaderName::from_static("upgrade"),
    HeaderName::from_static("te"),
    HeaderName::from_static("trailer"),
    HeaderName::from_static("host"),
    HeaderName::from_static("content-length"),
    HeaderName::from_static("content-type"),
    HeaderName::from_static("accept-encoding"),
    HeaderName::from_static("grpc-accept-encoding"),
    HeaderName::from_static("grpc-encoding"),
    HeaderName::from_static("grpc-timeout"),
    HeaderName::from_static("cookie"),
    HeaderName::from_static("x-csrf-token"),
    HeaderName::from_static("x-grpc-web"),
    HeaderName::from_static("x-user-agent"),
    HeaderName::from_static("origin"),
    HeaderName::from_static("referer"),
    HeaderName::from_static("date"),
];

/// Response metadata of the backend hop that must not be repeated to the client.
static NOT_RETURNED: [HeaderName; 7] = [
    HeaderName::from_static("connection"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("transfer-encoding"),
    HeaderName::from_static("content-length"),
    HeaderName::from_static("date"),
    HeaderName::from_static("server"),
    HeaderName::from_static("grpc-encoding"),
];

/// Builds the backend request from the caller's: filtered metadata and the
/// caller's deadline less the time already spent here. Returns the deadline
/// too, or DEADLINE_EXCEEDED if it has already passed.
pub fn outbound<T>(request: Request<T>) -> Result<(Request<T>, Option<Instant>), Status> {
    let received = request.extensions().get::<ReceivedAt>().map_or_else(Instant::now, |r| r.0);
    let deadline = grpc_timeout(request.metadata()).map(|t| received + t);
    let (metadata, _extensions, message) = request.into_parts();
    let mut headers = metadata.into_headers();
    for name in &NOT_FORWARDED {
        headers.remove(name);
    }
    let mut out = Request::from_parts(MetadataMap::from_headers(headers), Extensions::new(), message);
    if let Some(deadline) = deadline {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Status::deadline_exceeded("deadline exceeded before the call reached the backend"));
        }
        out.set_timeout(remaining);
    }
    Ok((out, deadline))
}

/// Awaits the backend call within `deadline`, counts it, and returns its
/// outcome unchanged but for metadata of the hop itself. A call the deadline
/// cut short answers DEADLINE_EXCEEDED (tonic's client says CANCELLED); one
/// whose connection failed answers UNAVAILABLE ([`crate::upstream`]).
pub async fn finish<T>(
    metrics: &Metrics,
    service: &'static str,
    method: &'static str,
    deadline: Option<Instant>,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    let result = match deadline {
        Some(at) => match tokio::time::timeout_at(at.into(), call).await {
            Ok(result) => result,
            Err(_) => Err(Status::deadline_exceeded("deadline exceeded")),
        },
        None => call.await,
    };
    let result = match result {
        Err(status) if status.code() == Code::Cancelled && deadline.is_some_and(|at| Instant::now() >= at) => {
            Err(Status::deadline_exceeded("deadline exceeded"))
        }
        Err(mut status) => {
            clean(status.metadata_mut());
            Err(status)
        }
        Ok(mut response) => {
            clean(response.metadata_mut());
            Ok(response)
        }
    };
    let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
    metrics.upstream(service, method, code);
    match &result {
        // Logged once per incident where the connection failed (crate::upstream).
        Err(status) if crate::upstream::is_connection_failure(status) => {}
        Err(_) if matches!(code, Code::Unavailable | Code::Unknown | Code::Internal) => {
            tracing::warn!(service, method, ?code, "backend call failed");
        }
        _ => {}
    }
    result
}

/// Drops response metadata that belongs to the backend hop.
fn clean(metadata: &mut MetadataMap) {
    let mut headers = std::mem::take(metadata).into_headers();
    for name in &NOT_RETURNED {
        headers.remove(name);
    }
    *metadata = MetadataMap::from_headers(headers);
}

/// Parses `grpc-timeout` (`<1-8 digits><H|M|S|m|u|n>`), if present and valid.
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// One RPC as the proxy forwards it.
struct Call {
    /// The service's full name, for metrics (named once per service).
    service: &'static str,
    /// The method's name, for metrics (the contract's methods are a fixed set, named once).
    method: &'static str,
    /// `/<service>/<method>`.
    path: PathAndQuery,
    /// Whether it goes over the backend's connection for expensive calls
    /// (its policy's cost is `COST_PASSWORD_HASH`).
    expensive: bool,
    /// Whether the RPC streams its responses.
    streaming: bool,
}

/// Every method of one contract service, forwarded to its backend with the
/// message bytes untouched. A tower service over HTTP requests, as a tonic
/// generated server is; cheap to clone.
#[derive(Clone)]
pub struct ServiceProxy {
    /// The service's methods by name.
    calls: Arc<HashMap<String, Arc<Call>>>,
    /// The backend's connections: for cheap calls, and for expensive ones.
    upstreams: (Upstream, Upstream),
    /// Where forwarded calls are counted.
    metrics: Arc<Metrics>,
    /// This replica's open-stream bound.
    watch: WatchSlots,
}

impl ServiceProxy {
    /// The proxy of `service` (a service of the contract) to its upstreams
    /// in `backends`: a call whose policy declares `COST_PASSWORD_HASH` goes
    /// over the one for expensive calls, every other over the cheap one.
    pub fn new(
        service: &ServiceDescriptor,
        backends: &Backends,
        metrics: Arc<Metrics>,
        watch: WatchSlots,
    ) -> anyhow::Result<ServiceProxy> {
        let name = service.full_name();
        let upstreams = (backends.upstream(name, false)?.clone(), backends.upstream(name, true)?.clone());
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        let mut calls = HashMap::new();
        for method in service.methods() {
            let call = Call {
                service: name,
                method: Box::leak(method.name().to_owned().into_boxed_str()),
                path: PathAndQuery::try_from(format!("/{name}/{}", method.name()))?,
                expensive: taskgate_proto::policy(&method).cost() == Cost::PasswordHash,
                streaming: method.is_server_streaming(),
            };
            calls.insert(method.name().to_owned(), Arc::new(call));
        }
        Ok(ServiceProxy { calls: Arc::new(calls), upstreams, metrics, watch })
    }
}

impl<B> Service<http::Request<B>> for ServiceProxy
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let name = request.uri().path().rsplit('/').next().unwrap_or_default();
        let Some(call) = self.calls.get(name).cloned() else {
            let status = Status::unimplemented(format!("no method {}", request.uri().path()));
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let (metrics, watch) = (self.metrics.clone(), self.watch.clone());
        let upstream = if call.expensive { self.upstreams.1.clone() } else { self.upstreams.0.clone() };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(BytesCodec)
                .apply_max_message_size_config(Some(taskgate_common::grpc::MAX_MESSAGE_BYTES), None);
            Ok(if call.streaming {
                let forward = tower::service_fn(move |r| {
                    stream(call.clone(), upstream.clone(), metrics.clone(), watch.clone(), r)
                });
                grpc.server_streaming(forward, request).await
            } else {
                let forward = tower::service_fn(move |r| unary(call.clone(), upstream.clone(), metrics.clone(), r));
                grpc.unary(forward, request).await
            })
        })
    }
}

/// Forwards one unary call.
async fn unary(
    call: Arc<Call>,
    upstream: Upstream,
    metrics: Arc<Metrics>,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, Status> {
    let (request, deadline) = outbound(request)?;
    // An Upstream is always ready (it settles its channel's readiness within the call).
    let mut client = tonic::client::Grpc::new(upstream);
    let reply = client.unary(request, call.path.clone(), BytesCodec);
    finish(&metrics, call.service, call.method, deadline, reply).await
}

/// Forwards one server-streaming call: the backend's stream, passed through
/// message by message (so the client's flow control reaches the backend,
/// which ends streams whose reader falls behind), holding one of this
/// replica's stream slots.
async fn stream(
    call: Arc<Call>,
    upstream: Upstream,
    metrics: Arc<Metrics>,
    watch: WatchSlots,
    request: Request<Bytes>,
) -> Result<Response<Held<Streaming<Bytes>>>, Status> {
    let permit = watch.acquire()?;
    let (request, _deadline) = outbound(request)?;
    let mut client = tonic::client::Grpc::new(upstream);
    let reply = client.server_streaming(request, call.path.clone(), BytesCodec);
    let (metadata, stream, extensions) = finish(&metrics, call.service, call.method, None, reply).await?.into_parts();
    Ok(Response::from_parts(metadata, Held::new(stream, permit), extensions))
}

/// A message as the bytes it is on the wire: what the proxy forwards,
/// neither parsed nor re-encoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> BytesCodec {
        *self
    }

    fn decoder(&mut self) -> BytesCodec {
        *self
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&'static str, &'static str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().expect("ascii"));
        }
        m
    }

    #[tokio::test]
    async fn every_method_of_the_contract_is_forwarded_and_the_hashing_ones_on_their_own_connection() {
        let upstream = Upstream::new(
            "auth",
            taskgate_common::balance::BalancedChannel::from(
                tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy(),
            ),
        );
        let pool = &taskgate_proto::DESCRIPTOR_POOL;
        let auth = pool.get_service_by_name(taskgate_proto::service_names::AUTH).expect("AuthService");
        assert!(ServiceProxy::new(&auth, &Backends::new(), Metrics::new(), WatchSlots::new(1)).is_err(), "no backend");
        let backends = Backends::new().with(taskgate_proto::service_names::AUTH, upstream);
        let proxy = ServiceProxy::new(&auth, &backends, Metrics::new(), WatchSlots::new(1)).expect("paths");
        assert_eq!(proxy.calls.len(), auth.methods().len());
        let mut expensive: Vec<&str> = proxy.calls.values().filter(|c| c.expensive).map(|c| c.method).collect();
        expensive.sort_unstable();
        assert_eq!(expensive, ["ChangePassword", "Login", "Register"]);
        assert_eq!(proxy.calls["Login"].path.as_str(), "/taskgate.auth.v1.AuthService/Login");
    }

    #[test]
    fn grpc_timeout_units_parse() {
        assert_eq!(grpc_timeout(&md(&[("grpc-timeout", "250m")])), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(&md(&[("grpc-timeout", "2S")])), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(&md(&[("grpc-timeout", "1H")])), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(&md(&[("grpc-timeout", "10x")])), None);
        assert_eq!(grpc_timeout(&md(&[("grpc-timeout", "123456789S")])), None);
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }

    #[test]
    fn outbound_requests_keep_call_metadata_and_drop_the_hop() {
        let request = Request::from_parts(
            md(&[
                ("authorization", "Bearer t"),
                ("x-request-id", "r1"),
                ("cookie", "tg_access=t"),
                ("te", "trailers"),
                ("grpc-timeout", "5S"),
            ]),
            Extensions::new(),
            (),
        );
        let (out, deadline) = outbound(request).expect("within deadline");
        assert!(deadline.is_some());
        assert_eq!(out.metadata().get("authorization").expect("kept"), "Bearer t");
        assert_eq!(out.metadata().get("x-request-id").expect("kept"), "r1");
        assert!(out.metadata().get("cookie").is_none());
        assert!(out.metadata().get("te").is_none());
        // The deadline is re-stated by tonic from the remaining time.
        assert!(out.metadata().get("grpc-timeout").is_some());
    }

    #[test]
    fn a_passed_deadline_is_not_forwarded() {
        let mut extensions = Extensions::new();
        extensions.insert(ReceivedAt(Instant::now() - Duration::from_secs(1)));
        let request = Request::from_parts(md(&[("grpc-timeout", "10m")]), extensions, ());
        let err = outbound(request).expect_err("deadline passed");
        assert_eq!(err.code(), Code::DeadlineExceeded);
    }
}
