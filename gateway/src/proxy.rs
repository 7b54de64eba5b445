//! The gRPC (and, through tonic-web, gRPC-web) face of the gateway: the two
//! taskgate services implemented as forwarding proxies.
//!
//! Each method hands the decoded request to a client on the one pooled
//! HTTP/2 channel to its backend, with the caller's metadata (less hop-by-hop
//! headers and browser credentials, which the auth layer has already turned
//! into `authorization`) and the remaining `grpc-timeout` deadline, and
//! returns the backend's response or status unchanged, details included.
//!
//! # Layout
//! - [`auth`] – `taskgate.auth.v1.AuthService`.
//! - [`task`] – `taskgate.task.v1.TaskService`.

pub mod auth;
pub mod task;

use std::{
    future::Future,
    time::{Duration, Instant},
};

use tonic::{Code, Extensions, Request, Response, Status, metadata::MetadataMap};

use crate::{metrics::Metrics, protocol::ReceivedAt};

/// Request headers that describe the gateway hop, not the call, or that carry
/// browser credentials; none reaches a backend.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "host",
    "content-length",
    "content-type",
    "accept-encoding",
    "grpc-accept-encoding",
    "grpc-encoding",
    "grpc-timeout",
    "cookie",
    "x-csrf-token",
    "x-grpc-web",
    "x-user-agent",
    "origin",
    "referer",
    "date",
];

/// Response metadata of the backend hop that must not be repeated to the client.
const NOT_RETURNED: &[&str] =
    &["connection", "keep-alive", "transfer-encoding", "content-length", "date", "server", "grpc-encoding"];

/// Builds the backend request from the caller's: filtered metadata and the
/// caller's deadline less the time already spent here. Returns the deadline
/// too, or DEADLINE_EXCEEDED if it has already passed.
pub fn outbound<T>(request: Request<T>) -> Result<(Request<T>, Option<Instant>), Status> {
    let received = request.extensions().get::<ReceivedAt>().map_or_else(Instant::now, |r| r.0);
    let deadline = grpc_timeout(request.metadata()).map(|t| received + t);
    let (metadata, _extensions, message) = request.into_parts();
    let mut headers = metadata.into_headers();
    for name in NOT_FORWARDED {
        headers.remove(*name);
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
    for name in NOT_RETURNED {
        metadata.remove(*name);
    }
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

/// Forwards one unary call: `forward!(self, "task", "ListTasks", list_tasks, request)`.
macro_rules! forward {
    ($self:ident, $service:literal, $method:literal, $call:ident, $request:ident) => {{
        let (request, deadline) = $crate::proxy::outbound($request)?;
        let mut client = $self.client.clone();
        $crate::proxy::finish(&$self.metrics, $service, $method, deadline, client.$call(request)).await
    }};
}
pub(crate) use forward;

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
