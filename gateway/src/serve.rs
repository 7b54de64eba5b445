//! The public port's connection loop: HTTP/1.1 and HTTP/2 (h2c prior
//! knowledge, or ALPN under TLS) on one listener, with every bound a hostile
//! client could otherwise push on.
//!
//! - [`ConnectionLimits::max_connections`]: a semaphore around `accept`; past
//!   it new clients wait in the kernel's accept queue.
//! - [`ConnectionLimits::header_timeout`]: a new connection must send its
//!   first bytes (or finish its TLS handshake) within it, and an HTTP/1.1
//!   client its request head.
//! - [`ConnectionLimits::idle_timeout`]: a connection with no request in
//!   progress (response bodies included) for that long is shut down
//!   gracefully, HTTP/1.1 keep-alive and HTTP/2 alike; HTTP/2 peers are also
//!   pinged, and dropped when they stop answering.
//! - Header size, HTTP/2 streams per connection and read buffer: fixed
//!   limits below, sized for this API.

use std::{
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, body::Body};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, watch},
};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::protocol::ClientAddr;

/// Most concurrent HTTP/2 streams per connection: far above what a client
/// of this API needs in parallel, small enough to bound one connection's share.
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Largest request header block (HTTP/2 header list, HTTP/1.1 read buffer).
const MAX_HEADER_BYTES: u32 = 16 * 1024;
/// HTTP/2 keep-alive ping interval and how long a ping may go unanswered.
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// See [`PING_INTERVAL`].
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle connection that was asked to shut down may take to go
/// (an HTTP/2 peer that does not answer the GOAWAY ping is dropped then).
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// HTTP/2 streams a client may reset before the connection is dropped
/// (the "rapid reset" attack).
const MAX_PENDING_RESETS: usize = 20;

/// The bounds of the connection loop, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// `GATEWAY_MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// `GATEWAY_HEADER_TIMEOUT_MS`.
    pub header_timeout: Duration,
    /// `GATEWAY_IDLE_TIMEOUT_MS`.
    pub idle_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting and gives open connections up to `drain` to finish.
pub async fn run(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    drain: Duration,
    shutdown: impl Future<Output = ()> + Send,
) {
    let builder = Arc::new(http_builder(limits));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Every connection task holds a sender; when all are gone, draining is done.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            builder: builder.clone(),
            app: app.clone(),
            peer,
            limits,
            stopping: stopping.clone(),
            _open: open.clone(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            connection.serve(stream, tls).await;
        });
    }
    drop(listener);
    let _ = stop.send(true);
    drop(open);
    if tokio::time::timeout(drain, all_closed.recv()).await.is_err() {
        tracing::warn!("some connections were still busy after the drain timeout");
    }
}

/// The HTTP/1.1 and HTTP/2 settings of every connection.
fn http_builder(limits: ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Slowloris: the whole request head within the header timeout.
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES as usize * 4);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS);
    builder
}

/// One accepted connection and what serving it needs.
struct Connection {
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    peer: SocketAddr,
    limits: ConnectionLimits,
    /// Turns true when the server shuts down.
    stopping: watch::Receiver<bool>,
    /// Dropped when the connection ends (see [`run`]).
    _open: mpsc::Sender<()>,
}

impl Connection {
    /// The first-bytes deadline (or the TLS handshake's), then HTTP.
    async fn serve(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        let deadline = self.limits.header_timeout;
        let peer = self.peer;
        match tls {
            None => {
                // Protocol sniffing waits for bytes: a client that sends none
                // gets the header timeout, not for ever.
                let mut first = [0_u8; 1];
                match tokio::time::timeout(deadline, stream.peek(&mut first)).await {
                    Ok(Ok(n)) if n > 0 => self.http(stream).await,
                    Ok(_) => {}
                    Err(_) => tracing::debug!(%peer, "no bytes before the header timeout"),
                }
            }
            Some(acceptor) => match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => self.http(stream).await,
                Ok(Err(e)) => tracing::debug!(error = %e, %peer, "tls handshake failed"),
                Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
            },
        }
    }

    /// Serves HTTP on `io`, shutting the connection down gracefully when the
    /// server stops or when no request has been in progress for the idle timeout.
    async fn http<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let (app, peer) = (self.app.clone(), self.peer);
        let tracked = activity.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ClientAddr(peer));
            let busy = Busy::start(tracked.clone());
            let call = app.clone().oneshot(request.map(Body::new));
            async move {
                let response = call.await?;
                // Busy until the body ends, so a long stream is not "idle".
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| Body::new(TrackedBody { inner: body, _busy: busy })),
                )
            }
        });
        let mut connection = pin!(self.builder.serve_connection_with_upgrades(TokioIo::new(io), service));
        let idle = self.limits.idle_timeout;
        let mut closing_by: Option<tokio::time::Instant> = None;
        loop {
            let check_at = tokio::time::Instant::now() + activity.idle_left(idle);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                    return;
                }
                changed = self.stopping.changed(), if closing_by.is_none() => {
                    if changed.is_ok() {
                        connection.as_mut().graceful_shutdown();
                        // The server's drain timeout bounds this one.
                        closing_by = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
                    }
                }
                () = tokio::time::sleep_until(check_at), if closing_by.is_none() => {
                    if activity.idle_left(idle).is_zero() {
                        tracing::debug!(%peer, "closing an idle connection");
                        connection.as_mut().graceful_shutdown();
                        closing_by = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                    }
                }
                () = sleep_until_opt(closing_by) => return,
            }
        }
    }
}

/// Sleeps until `at`, or for ever when there is no `at`.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Requests in progress on one connection, and when the last one ended.
struct Activity {
    /// When the connection was accepted; times below are offsets from it.
    epoch: Instant,
    /// Requests whose response body has not ended.
    in_progress: AtomicUsize,
    /// Milliseconds from `epoch` to the end of the latest request.
    last_end_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity { epoch: Instant::now(), in_progress: AtomicUsize::new(0), last_end_ms: AtomicU64::new(0) }
    }

    /// How long until the connection has been idle for `idle`: `idle` while
    /// a request is in progress (look again then), zero once it is idle enough.
    fn idle_left(&self, idle: Duration) -> Duration {
        if self.in_progress.load(Ordering::Acquire) > 0 {
            return idle;
        }
        let last_end = Duration::from_millis(self.last_end_ms.load(Ordering::Acquire));
        let idle_for = self.epoch.elapsed().saturating_sub(last_end);
        idle.saturating_sub(idle_for)
    }
}

/// One request in progress; ends when dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Busy {
        activity.in_progress.fetch_add(1, Ordering::AcqRel);
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let now = u64::try_from(self.0.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_end_ms.fetch_max(now, Ordering::AcqRel);
        self.0.in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request [`Busy`] until it ends or is dropped.
struct TrackedBody {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
