//! The gateway's end of its connections to a backend: the one place a
//! transport failure becomes UNAVAILABLE, and where it is logged, once per
//! incident.
//!
//! tonic reports a connection that was reset or closed mid-call as UNKNOWN or
//! INTERNAL ("transport error", "h2 protocol error: ..."), which the REST
//! surface would send as a 500, though the call never got an answer and may
//! well succeed when retried. [`Upstream`] wraps a backend's balanced channel
//! and settles every failure of the channel itself (no response) and every
//! error of a response body (a stream cut after its headers) by one table,
//! read off the error's sources (never its text):
//!
//! - the connection failed: refused, reset, closed or sent GOAWAY (a
//!   `tonic::ConnectError`, an `h2::Error` of I/O or GOAWAY, or else a
//!   `hyper::Error`, `tonic::transport::Error` or `std::io::Error`):
//!   UNAVAILABLE, with a RetryInfo of [`RETRY_AFTER`];
//! - one stream was reset (an `h2::Error` of RST_STREAM: the backend gave up
//!   on the call, or h2 refused its frames): tonic's mapping, the gRPC
//!   spec's (INTERNAL, CANCELLED, ...);
//! - the call's own deadline (`tonic::TimeoutExpired`), a status raised on
//!   the gateway's side, anything else: tonic's mapping, unchanged.
//!
//! A status the backend sent (`grpc-status` in headers or trailers) is an
//! answer, not a failure, and never passes through the table: a backend's
//! own INTERNAL stays INTERNAL.
//!
//! Failures of one backend's connections are logged as incidents: a WARN
//! with the cause when they start, an INFO with the number of failed calls
//! when a call gets through again, and at most one WARN per [`QUIET`] for a
//! backend that keeps flapping. The cause is the error's own text (an
//! address, an OS error), never a request's content.

use std::{
    collections::HashMap,
    error::Error,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http_body_util::BodyExt as _;
use taskgate_common::balance::{BalancedChannel, BoxError};
use tonic::{Code, Status, body::Body};
use tonic_types::{ErrorDetails, StatusExt as _};
use tower::{Service, ServiceExt as _};

/// How long a client is told to wait before retrying a call that failed on
/// a backend connection (the RetryInfo of the status, `Retry-After` over REST).
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// At most one WARN per backend per this period: a backend whose
/// connections flap starts no new incident in the log before it has passed.
pub const QUIET: Duration = Duration::from_secs(10);

/// A backend's balanced channel whose transport failures answer UNAVAILABLE
/// and are logged once per incident (see the module docs). Cheap to clone;
/// clones share the channel and the incident log.
#[derive(Clone)]
pub struct Upstream {
    /// The channel to the backend's replicas.
    channel: BalancedChannel,
    /// The backend's incident log, shared by every channel to it.
    incidents: Arc<Incidents>,
}

impl Upstream {
    /// Calls to `service` (`"auth"`, `"task"`: the name in logs and
    /// messages) over `channel`.
    pub fn new(service: &'static str, channel: BalancedChannel) -> Upstream {
        Upstream { channel, incidents: Arc::new(Incidents::new(service)) }
    }

    /// Calls to the same backend over another channel, logged in the same
    /// incidents as this one's.
    pub fn sharing_incidents(&self, channel: BalancedChannel) -> Upstream {
        Upstream { channel, incidents: self.incidents.clone() }
    }
}

/// The upstreams calls go to, by full service name: what the REST transcoder
/// and the gRPC proxy both forward over.
#[derive(Clone, Debug, Default)]
pub struct Backends {
    /// Service → (upstream for cheap calls, upstream for expensive ones).
    services: HashMap<String, (Upstream, Upstream)>,
}

impl Backends {
    /// No backends yet.
    pub fn new() -> Backends {
        Backends::default()
    }

    /// Sends every call to `service` over `upstream`.
    pub fn with(self, service: &str, upstream: Upstream) -> Backends {
        self.with_expensive(service, upstream.clone(), upstream)
    }

    /// Sends calls to `service` over `cheap`, except the RPCs whose policy
    /// says they hash a password, which go over `expensive` (a connection of
    /// their own, so a flood of them never queues cheap calls).
    pub fn with_expensive(mut self, service: &str, cheap: Upstream, expensive: Upstream) -> Backends {
        self.services.insert(service.to_owned(), (cheap, expensive));
        self
    }

    /// The upstream for calls to `service`: the one for expensive calls
    /// when `expensive`, else the one for cheap calls; UNIMPLEMENTED when no
    /// backend serves `service`.
    pub fn upstream(&self, service: &str, expensive: bool) -> Result<&Upstream, Status> {
        let (cheap, costly) =
            self.services.get(service).ok_or_else(|| Status::unimplemented(format!("no backend serves {service}")))?;
        Ok(if expensive { costly } else { cheap })
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream").field("service", &self.incidents.service).finish_non_exhaustive()
    }
}

impl Service<http::Request<Body>> for Upstream {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Status>> + Send>>;

    /// Always ready: the channel is polled ready within the call, so that a
    /// failure there is settled by the table too (tonic's generated clients
    /// turn a readiness error into UNKNOWN).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let channel = self.channel.clone();
        let incidents = self.incidents.clone();
        Box::pin(async move {
            match channel.oneshot(request).await {
                Ok(response) => {
                    incidents.reached();
                    Ok(response
                        .map(|body| Body::new(body.map_err(move |status: Status| incidents.settle_status(status)))))
                }
                Err(error) => Err(incidents.settle(error)),
            }
        })
    }
}

/// Whether `status` is the UNAVAILABLE of a failed backend connection (made
/// here, and already logged with its incident).
pub fn is_connection_failure(status: &Status) -> bool {
    status.code() == Code::Unavailable && status.source().is_some_and(|s| s.is::<ConnectionFailed>())
}

/// The source of a connection failure's status: which backend, and why.
#[derive(Debug)]
struct ConnectionFailed {
    /// The backend.
    service: &'static str,
    /// The failure's error chain, as text.
    cause: String,
}

impl fmt::Display for ConnectionFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the connection to the {} service failed: {}", self.service, self.cause)
    }
}

impl Error for ConnectionFailed {}

/// Whether the failure whose error chain starts at `first` is one of the
/// backend connection (see the table in the module docs).
fn connection_failed(first: Option<&(dyn Error + 'static)>) -> bool {
    let mut transport = false;
    let mut next = first;
    while let Some(error) = next {
        if error.is::<Status>() || error.is::<tonic::TimeoutExpired>() {
            // Raised on this side (the request's own body, its deadline).
            return false;
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            // The connection broke or is going away; a stream reset (by the
            // backend or by h2 over a protocol error) keeps the spec's mapping.
            return h2.is_io() || h2.is_go_away();
        }
        if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
            transport |= !hyper.is_user();
        }
        transport |=
            error.is::<tonic::ConnectError>() || error.is::<tonic::transport::Error>() || error.is::<std::io::Error>();
        next = error.source();
    }
    transport
}

/// `error` and its sources as one line, each part once (wrappers often
/// repeat their source's text).
fn describe(error: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let text = error.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = error.source();
    }
    parts.join(": ")
}

/// One backend's connection failures, logged as incidents (see the module docs).
struct Incidents {
    /// The backend.
    service: &'static str,
    /// Whether an incident is open: read on every successful call, so the
    /// lock is only taken while one is.
    open: AtomicBool,
    /// The open incident, or the last one.
    current: Mutex<Incident>,
}

/// A run of connection failures of one backend.
#[derive(Default)]
struct Incident {
    /// Whether it is still going on.
    open: bool,
    /// Calls that failed in it.
    failed_calls: u64,
    /// Whether its start was logged at WARN (so its end is logged at INFO).
    warned: bool,
    /// When the last WARN was logged, for [`QUIET`].
    last_warn: Option<Instant>,
}

/// What settling a failure or a success logged, for the tests.
#[derive(Debug, PartialEq, Eq)]
enum Logged {
    /// Nothing above DEBUG.
    Quiet,
    /// A WARN: an incident began.
    Began,
    /// An INFO: an incident ended.
    Ended,
}

impl Incidents {
    fn new(service: &'static str) -> Incidents {
        Incidents { service, open: AtomicBool::new(false), current: Mutex::new(Incident::default()) }
    }

    /// What a call that failed with `error` (no response) answers.
    fn settle(&self, error: BoxError) -> Status {
        if connection_failed(Some(&*error)) { self.unavailable(describe(&*error)) } else { Status::from_error(error) }
    }

    /// What a response body that failed with `status` (tonic's reading of
    /// the body's error) ends with.
    fn settle_status(&self, status: Status) -> Status {
        match status.source() {
            Some(source) if connection_failed(Some(source)) => self.unavailable(describe(source)),
            _ => status,
        }
    }

    /// The UNAVAILABLE for a connection failure of `cause`, logged with its incident.
    fn unavailable(&self, cause: String) -> Status {
        let cause = ConnectionFailed { service: self.service, cause };
        self.failed(&cause.cause, Instant::now());
        let mut status = Status::with_error_details(
            Code::Unavailable,
            format!("the {} service could not be reached; retry shortly", self.service),
            ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
        );
        status.set_source(Arc::new(cause));
        status
    }

    /// Counts a failed call at `now`; the first of an incident is a WARN.
    fn failed(&self, cause: &str, now: Instant) -> Logged {
        let service = self.service;
        let mut incident = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        incident.failed_calls += 1;
        if incident.open {
            tracing::debug!(service, cause, "backend connection still failing");
            return Logged::Quiet;
        }
        incident.open = true;
        self.open.store(true, Ordering::Release);
        incident.warned = incident.last_warn.is_none_or(|at| now.duration_since(at) >= QUIET);
        if !incident.warned {
            tracing::debug!(service, cause, "backend connection failing again");
            return Logged::Quiet;
        }
        incident.last_warn = Some(now);
        tracing::warn!(
            service,
            cause,
            "backend connection failed; its calls answer UNAVAILABLE until one gets through"
        );
        Logged::Began
    }

    /// Notes a call that got a response; the first after an incident ends it.
    fn reached(&self) -> Logged {
        if !self.open.load(Ordering::Acquire) {
            return Logged::Quiet;
        }
        let mut incident = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if !incident.open {
            return Logged::Quiet;
        }
        incident.open = false;
        self.open.store(false, Ordering::Release);
        let failed_calls = std::mem::take(&mut incident.failed_calls);
        if !incident.warned {
            tracing::debug!(service = self.service, failed_calls, "backend reachable again");
            return Logged::Quiet;
        }
        tracing::info!(service = self.service, failed_calls, "backend reachable again");
        Logged::Ended
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// An I/O error as a connection that broke reports it.
    fn broken_connection() -> io::Error {
        io::Error::from(io::ErrorKind::ConnectionReset)
    }

    #[test]
    fn a_broken_or_refused_connection_is_a_connection_failure() {
        let reset: BoxError = Box::new(broken_connection());
        assert!(connection_failed(Some(&*reset)));
        let refused: BoxError =
            Box::new(tonic::ConnectError(Box::new(io::Error::from(io::ErrorKind::ConnectionRefused))));
        assert!(connection_failed(Some(&*refused)));
        let closed: BoxError = Box::new(io::Error::from(io::ErrorKind::UnexpectedEof));
        assert!(connection_failed(Some(&*closed)));
        let wrapped = Status::from_error(Box::new(broken_connection()));
        assert!(connection_failed(wrapped.source()), "tonic's status of a broken connection");
    }

    #[test]
    fn a_stream_reset_a_deadline_or_a_local_status_is_not() {
        let local: BoxError = Box::new(Status::internal("encoding failed"));
        assert!(!connection_failed(Some(&*local)));
        let deadline: BoxError = Box::new(tonic::TimeoutExpired(()));
        assert!(!connection_failed(Some(&*deadline)));
        let stream_reset: BoxError = Box::new(h2::Error::from(h2::Reason::INTERNAL_ERROR));
        assert!(!connection_failed(Some(&*stream_reset)));
        let plain: BoxError = "something else".into();
        assert!(!connection_failed(Some(&*plain)));
        assert!(!connection_failed(None));
    }

    #[test]
    fn a_connection_failure_answers_unavailable_with_retry_info_and_its_cause() {
        let incidents = Incidents::new("task");
        let status = incidents.settle(Box::new(broken_connection()));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(is_connection_failure(&status));
        assert_eq!(status.get_error_details().retry_info().and_then(|r| r.retry_delay), Some(RETRY_AFTER));
        let cause = status.source().map(ToString::to_string).unwrap_or_default();
        assert!(cause.contains("task service") && cause.contains("connection reset"), "{cause}");
        assert!(!status.message().contains("reset"), "the client message names no internals");

        let body_error = Status::from_error(Box::new(broken_connection()));
        assert_ne!(body_error.code(), Code::Unavailable, "tonic alone would not say UNAVAILABLE");
        assert_eq!(incidents.settle_status(body_error).code(), Code::Unavailable);
    }

    #[test]
    fn other_failures_keep_the_code_tonic_gives_them() {
        let incidents = Incidents::new("auth");
        assert_eq!(incidents.settle(Box::new(tonic::TimeoutExpired(()))).code(), Code::Cancelled);
        let answered = Status::internal("the backend's own INTERNAL");
        let settled = incidents.settle_status(answered);
        assert_eq!(settled.code(), Code::Internal);
        assert_eq!(settled.message(), "the backend's own INTERNAL");
        assert!(!incidents.open.load(Ordering::Acquire), "no incident began");
    }

    #[test]
    fn an_incident_is_one_warn_then_one_info_and_flapping_stays_quiet() {
        let incidents = Incidents::new("auth");
        let start = Instant::now();
        assert_eq!(incidents.reached(), Logged::Quiet);
        assert_eq!(incidents.failed("reset", start), Logged::Began);
        assert_eq!(incidents.failed("reset", start), Logged::Quiet);
        assert_eq!(incidents.failed("refused", start), Logged::Quiet);
        assert_eq!(incidents.reached(), Logged::Ended);
        assert_eq!(incidents.reached(), Logged::Quiet);
        // Failing again soon after: counted, not logged again.
        assert_eq!(incidents.failed("reset", start + QUIET / 2), Logged::Quiet);
        assert_eq!(incidents.reached(), Logged::Quiet);
        assert_eq!(incidents.failed("reset", start + QUIET), Logged::Began);
        assert_eq!(incidents.reached(), Logged::Ended);
    }
}
