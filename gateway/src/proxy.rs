//! The gRPC (and, through tonic-web, gRPC-web) face of the gateway: every
//! service of the contract forwarded to its backend, with no code per RPC.
//!
//! A [`ServiceProxy`] serves every method the descriptors declare for one
//! service, as the REST transcoder serves every binding. A call goes on to
//! the backend as the HTTP/2 stream it arrived as: its body, length-prefixed
//! messages and all, is neither parsed nor re-framed, which a gateway that
//! neither reads nor changes the messages has no reason to pay for (nor to
//! hold a whole message in memory for: the body streams under HTTP/2 flow
//! control). The backend applies the message size bound and the encodings it
//! accepts, the same for every caller. The call goes with the caller's
//! metadata (less hop-by-hop headers and browser credentials, which the auth
//! layer has already turned into `authorization`) and the remaining
//! `grpc-timeout` deadline, over the backend's connection its policy's cost
//! chooses; the backend's response, trailers and status come back unchanged,
//! details included, less the headers of the hop itself.
//!
//! The backend's status is counted (`metrics.upstream`) when it passes: in
//! the response headers of a trailers-only answer, else in the trailers. A
//! server-streaming call holds one of this replica's stream slots until its
//! response body ends or is dropped.

use std::{
    collections::HashMap,
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version, uri::PathAndQuery};
use http_body::{Frame, SizeHint};
use prost_reflect::ServiceDescriptor;
use taskgate_common::{balance::BoxError, metrics::GrpcCode};
use taskgate_proto::api::v1::Cost;
use tokio::sync::OwnedSemaphorePermit;
use tonic::{Code, Status, body::Body, metadata::MetadataMap};
use tower::Service;

use crate::{
    metrics::Metrics,
    protocol::ReceivedAt,
    upstream::{Backends, Upstream},
    watch::WatchSlots,
};

/// Request headers that describe the gateway hop, not the call, or that carry
/// browser credentials; none reaches a backend. (`content-type` and the
/// `grpc-*encoding` headers do: they describe the bytes, which pass
/// unchanged.)
static NOT_FORWARDED: [HeaderName; 19] = [
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
    HeaderName::from_static("grpc-timeout"),
    HeaderName::from_static("cookie"),
    HeaderName::from_static("x-csrf-token"),
    HeaderName::from_static("x-grpc-web"),
    HeaderName::from_static("x-user-agent"),
    HeaderName::from_static("origin"),
    HeaderName::from_static("referer"),
    HeaderName::from_static("date"),
    HeaderName::from_static("accept-encoding"),
];

/// Response headers of the backend hop that must not be repeated to the client.
static NOT_RETURNED: [HeaderName; 6] = [
    HeaderName::from_static("connection"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("transfer-encoding"),
    HeaderName::from_static("content-length"),
    HeaderName::from_static("date"),
    HeaderName::from_static("server"),
];

/// Turns the caller's request headers into the backend's: the hop's own
/// headers dropped, `te: trailers` (which gRPC servers may require), and the
/// caller's deadline restated as the time left of it after the time spent
/// here (`received` is when the gateway got the request). Returns the
/// deadline, or DEADLINE_EXCEEDED if it has already passed.
pub fn outbound(headers: &mut HeaderMap, received: Option<Instant>) -> Result<Option<Instant>, Status> {
    let deadline = grpc_timeout_header(headers).map(|t| received.unwrap_or_else(Instant::now) + t);
    for name in &NOT_FORWARDED {
        headers.remove(name);
    }
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    if let Some(deadline) = deadline {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Status::deadline_exceeded("deadline exceeded before the call reached the backend"));
        }
        headers.insert("grpc-timeout", timeout_value(remaining));
    }
    Ok(deadline)
}

/// `remaining` as a `grpc-timeout` value: microseconds while they fit the
/// eight digits the spec allows, else milliseconds, else hours.
fn timeout_value(remaining: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let value = match (remaining.as_micros(), remaining.as_millis()) {
        (micros, _) if micros <= MAX => format!("{}u", micros.max(1)),
        (_, millis) if millis <= MAX => format!("{millis}m"),
        _ => format!("{}H", (remaining.as_secs() / 3600).min(MAX as u64)),
    };
    HeaderValue::from_str(&value).expect("digits and a unit")
}

/// Parses `grpc-timeout` (`<1-8 digits><H|M|S|m|u|n>`), if present and valid.
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    grpc_timeout_header(metadata.as_ref())
}

/// [`grpc_timeout`] of plain HTTP headers.
fn grpc_timeout_header(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
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
    path: Uri,
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
                path: Uri::from(PathAndQuery::try_from(format!("/{name}/{}", method.name()))?),
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
    type Response = http::Response<Body>;
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
        let upstream = if call.expensive { self.upstreams.1.clone() } else { self.upstreams.0.clone() };
        let slot = if call.streaming { Some(self.watch.acquire()) } else { None };
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let forwarded = match slot.transpose() {
                Ok(slot) => forward(&call, upstream, metrics, slot, request).await,
                Err(refused) => Err(refused),
            };
            Ok(forwarded.unwrap_or_else(Status::into_http))
        })
    }
}

/// Forwards one call: the caller's stream to the backend, the backend's
/// response back, within the caller's deadline until the backend answers
/// (the backend has the deadline too, for the rest). A call the deadline cut
/// short answers DEADLINE_EXCEEDED, as does a backend that said CANCELLED
/// once it passed (tonic's answer to an expired `grpc-timeout`); one whose
/// connection failed answers UNAVAILABLE ([`crate::upstream`]). Counted
/// as a backend call once it is sent.
async fn forward<B>(
    call: &Call,
    mut upstream: Upstream,
    metrics: Arc<Metrics>,
    slot: Option<OwnedSemaphorePermit>,
    request: http::Request<B>,
) -> Result<http::Response<Body>, Status>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    let (mut parts, body) = request.into_parts();
    let received = parts.extensions.get::<ReceivedAt>().map(|r| r.0);
    let deadline = outbound(&mut parts.headers, received)?;
    let mut outgoing = http::Request::new(Body::new(body));
    *outgoing.method_mut() = Method::POST;
    *outgoing.uri_mut() = call.path.clone();
    *outgoing.version_mut() = Version::HTTP_2;
    *outgoing.headers_mut() = parts.headers;
    let mut counter = Counter { metrics, service: call.service, method: call.method, counted: false };
    let reply = upstream.call(outgoing);
    let result = match deadline {
        Some(at) => tokio::time::timeout_at(at.into(), reply)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("deadline exceeded"))),
        None => reply.await,
    };
    let mut response = match result {
        Ok(response) => response,
        Err(status) => {
            counter.failed(&status);
            return Err(status);
        }
    };
    for name in &NOT_RETURNED {
        response.headers_mut().remove(name);
    }
    if let Some(GrpcCode(code)) = GrpcCode::from_headers(response.headers()) {
        // A trailers-only answer: the backend's status, and no message.
        if code == Code::Cancelled && deadline.is_some_and(|at| Instant::now() >= at) {
            counter.ended(Code::DeadlineExceeded);
            return Err(Status::deadline_exceeded("deadline exceeded"));
        }
        counter.ended(code);
        return Ok(response);
    }
    Ok(response.map(|inner| Body::new(Forwarded { inner, counter, _slot: slot, ended: false })))
}

/// Counts a forwarded call's outcome once, when its status is known, or as
/// CANCELLED when it is dropped before (the caller went away).
struct Counter {
    /// Where it is counted.
    metrics: Arc<Metrics>,
    /// The service's full name.
    service: &'static str,
    /// The method's name.
    method: &'static str,
    /// Whether the call has been counted.
    counted: bool,
}

impl Counter {
    /// Counts the call with the status `code`, unless it was counted already
    /// (the first status seen counts, as the caller sees it).
    fn ended(&mut self, code: Code) {
        self.count(code, true);
    }

    /// Counts the call as failed with `status`: a connection failure is
    /// logged once per incident where it arises ([`crate::upstream`]), not
    /// once per call here.
    fn failed(&mut self, status: &Status) {
        self.count(status.code(), !crate::upstream::is_connection_failure(status));
    }

    /// Counts the call once; UNAVAILABLE, UNKNOWN and INTERNAL at WARN when `log`.
    fn count(&mut self, code: Code, log: bool) {
        if std::mem::replace(&mut self.counted, true) {
            return;
        }
        self.metrics.upstream(self.service, self.method, code);
        if log && matches!(code, Code::Unavailable | Code::Unknown | Code::Internal) {
            tracing::warn!(service = self.service, method = self.method, ?code, "backend call failed");
        }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        // Dropped before a status passed: the caller went away.
        self.ended(Code::Cancelled);
    }
}

/// A backend's response body on its way to the caller: unchanged, but its
/// status is counted as it passes, and a stream's slot is held until it ends.
struct Forwarded {
    /// The backend's body (its errors already settled by [`Upstream`]).
    inner: Body,
    /// Counts the call when its trailers (or an error) pass, or when dropped.
    counter: Counter,
    /// A server-streaming call's slot, released with the body.
    _slot: Option<OwnedSemaphorePermit>,
    /// Whether the body has ended early, with the trailers of an error.
    ended: bool,
}

impl http_body::Body for Forwarded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match polled {
            Some(Ok(frame)) => {
                if let Some(GrpcCode(code)) = frame.trailers_ref().and_then(GrpcCode::from_headers) {
                    self.counter.ended(code);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(status)) => {
                // The backend's stream broke (settled by Upstream: UNAVAILABLE for a
                // failed connection): the caller gets it as the call's status, in
                // trailers, as a gRPC server answers, not as a reset stream.
                self.counter.failed(&status);
                self.ended = true;
                let mut trailers = HeaderMap::new();
                if status.add_header(&mut trailers).is_err() {
                    trailers.insert("grpc-status", HeaderValue::from(Code::Internal as i32));
                }
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            None => {
                // Ended without a status: the caller's client reports a broken call.
                self.counter.ended(Code::Unknown);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
        assert_eq!(proxy.calls["Login"].path.path(), "/taskgate.auth.v1.AuthService/Login");
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

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        md(pairs).into_headers()
    }

    #[test]
    fn outbound_requests_keep_call_metadata_and_the_encoding_and_drop_the_hop() {
        let mut out = headers(&[
            ("authorization", "Bearer t"),
            ("x-request-id", "r1"),
            ("content-type", "application/grpc"),
            ("grpc-encoding", "gzip"),
            ("cookie", "tg_access=t"),
            ("content-length", "12"),
            ("host", "gateway"),
            ("grpc-timeout", "5S"),
        ]);
        let deadline = outbound(&mut out, Some(Instant::now())).expect("within deadline");
        assert!(deadline.is_some());
        for (kept, value) in [
            ("authorization", "Bearer t"),
            ("x-request-id", "r1"),
            ("content-type", "application/grpc"),
            ("grpc-encoding", "gzip"),
            ("te", "trailers"),
        ] {
            assert_eq!(out.get(kept).map(|v| v.to_str().expect("ascii")), Some(value), "{kept}");
        }
        for dropped in ["cookie", "content-length", "host"] {
            assert!(out.get(dropped).is_none(), "{dropped}");
        }
        // The deadline is restated as the time left of it.
        let left = grpc_timeout_header(&out).expect("restated");
        assert!(left <= Duration::from_secs(5) && left > Duration::from_secs(4), "{left:?}");
        let mut none = headers(&[("authorization", "Bearer t")]);
        assert_eq!(outbound(&mut none, None).expect("no deadline"), None);
        assert!(none.get("grpc-timeout").is_none());
    }

    #[test]
    fn a_passed_deadline_is_not_forwarded() {
        let mut late = headers(&[("grpc-timeout", "10m")]);
        let err = outbound(&mut late, Some(Instant::now() - Duration::from_secs(1))).expect_err("deadline passed");
        assert_eq!(err.code(), Code::DeadlineExceeded);
    }

    #[test]
    fn restated_deadlines_fit_the_eight_digits_of_the_spec() {
        for (left, value) in [
            (Duration::from_nanos(10), "1u"),
            (Duration::from_millis(250), "250000u"),
            (Duration::from_secs(99), "99000000u"),
            (Duration::from_secs(100), "100000m"),
            (Duration::from_secs(200_000), "55H"),
        ] {
            assert_eq!(timeout_value(left), value, "{left:?}");
            let parsed = grpc_timeout_header(&headers(&[("grpc-timeout", value)])).expect("parses");
            assert!(parsed <= left.max(Duration::from_micros(1)), "{value}");
        }
    }
}
