//! Client channels that spread calls over every replica of a backend.
//!
//! A backend is named by a comma-separated list of URLs (`http://10.0.0.5:50052,http://10.0.0.6:50052`)
//! or by a URL whose host is a DNS name (`http://task-service:50052`), which is resolved again every
//! [`RESOLVE_EVERY`], as a Kubernetes headless Service needs: each address it returns is one replica.
//! Both forms may be mixed.
//!
//! The balancing itself is tonic's balanced channel: tower's power-of-two-choices balancer over one
//! lazily connected HTTP/2 connection per replica, picking the replica with fewer calls in flight.
//! What tonic leaves out, this module adds:
//!
//! - a replica that stops accepting connections is taken out of the set (probed every
//!   [`PROBE_EVERY`], and at once when a call fails to reach it) and put back when it accepts
//!   again; when every replica fails the probe all stay in, so callers get UNAVAILABLE at once
//!   instead of waiting for a replica to appear;
//! - safe calls ([`SAFE_METHODS`]: reads that change nothing) that fail with UNAVAILABLE before
//!   the replica answered (connection refused or reset, or a trailers-only UNAVAILABLE) are sent
//!   once more through the balancer, which picks again, after the replica set was probed anew (so
//!   a replica that just died is out of it).
//!
//! With mutual TLS on ([`crate::mtls`]), every replica is reached over `https` with the same
//! client certificate and CA as a single channel would use: a replica of a fixed address is
//! verified against that address, a replica found through a DNS name against the name (so the
//! certificates need name the Service, not every pod's address).
//!
//! Backends also close each connection after a maximum age ([`crate::grpc::MAX_CONNECTION_AGE`]), so
//! long-lived HTTP/2 connections from a client that balances by connection spread over new
//! replicas after scaling.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use http_body_util::BodyExt as _;
use tokio::sync::{Notify, watch};
use tonic::{
    body::Body,
    transport::{Channel, ClientTlsConfig, Endpoint, Uri, channel::Change},
};
use tower::{Service, ServiceExt as _};
use tracing::Instrument as _;

use crate::mtls::Mtls;

/// How often the DNS names of a backend are resolved again (new and removed replicas).
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);
/// How often each replica is probed with a TCP connect.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe's TCP connect may take before the replica counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Room for endpoint changes not yet taken in by the balancer.
const CHANGE_BUFFER: usize = 64;

/// The gRPC methods retried once on UNAVAILABLE: reads that change nothing, so running one twice
/// is harmless.
pub const SAFE_METHODS: &[&str] = &[
    "/taskgate.task.v1.TaskService/GetTask",
    "/taskgate.task.v1.TaskService/ListTasks",
    "/taskgate.auth.v1.AuthService/GetMe",
    "/taskgate.auth.v1.AuthService/GetJwks",
    "/taskgate.auth.v1.AuthService/ListSessions",
    "/grpc.health.v1.Health/Check",
];

/// The error a [`BalancedChannel`] call fails with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a backend's replicas are.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A fixed address.
    Fixed {
        /// `http` or `https`.
        scheme: String,
        /// The replica's address.
        addr: SocketAddr,
    },
    /// A DNS name whose addresses are the replicas, resolved again every [`RESOLVE_EVERY`].
    Dns {
        /// `http` or `https`.
        scheme: String,
        /// The name.
        host: String,
        /// The port every replica listens on.
        port: u16,
    },
}

/// Parses `spec`: comma-separated `http(s)://host:port` URLs, each turned to `https` when mutual
/// TLS is on ([`crate::mtls::backend_url`]).
fn parse(spec: &str, mtls: Option<&Mtls>) -> anyhow::Result<Vec<Target>> {
    let mut targets = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let url = crate::mtls::backend_url(part, mtls);
        let uri: Uri = url.parse().with_context(|| format!("invalid backend url {part:?}"))?;
        let scheme = uri.scheme_str().unwrap_or("http").to_owned();
        anyhow::ensure!(scheme == "http" || scheme == "https", "backend url {part:?} must be http:// or https://");
        let host = uri.host().with_context(|| format!("backend url {part:?} has no host"))?;
        let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        targets.push(match bare.parse::<IpAddr>() {
            Ok(ip) => Target::Fixed { scheme, addr: SocketAddr::new(ip, port) },
            Err(_) => Target::Dns { scheme, host: host.to_owned(), port },
        });
    }
    anyhow::ensure!(!targets.is_empty(), "no backend url in {spec:?}");
    Ok(targets)
}

/// One replica of a backend.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Replica {
    /// `http` or `https`.
    scheme: String,
    /// Where it listens.
    addr: SocketAddr,
    /// The DNS name it was found under, which its TLS certificate must be valid for; `None` for
    /// a fixed address (checked against the address itself).
    name: Option<String>,
}

impl Replica {
    /// Its URL, e.g. `http://10.0.0.5:50052`: the key the balancer knows it by.
    fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }
}

/// A channel to every replica of one backend, balanced per call, with safe calls retried once on
/// UNAVAILABLE. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct BalancedChannel {
    /// tonic's balanced channel (tower p2c over one connection per replica).
    channel: Channel,
    /// The link to the background task, shared by every clone (one reference count per clone
    /// and per call, not one per field).
    probes: Arc<Probes>,
}

/// How calls reach the task that keeps the replica set.
struct Probes {
    /// Asks the background task to probe every replica now (a call just failed to reach one).
    now: Arc<Notify>,
    /// Counts the probe rounds applied to the balancer, so a retry can wait for the next one.
    rounds: watch::Receiver<u64>,
}

impl fmt::Debug for BalancedChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancedChannel").finish_non_exhaustive()
    }
}

impl BalancedChannel {
    /// A channel to the replicas `spec` names (see the module docs), over mutual TLS when `mtls`
    /// is given. `timeout`, when set, bounds every call. Must be called inside a tokio runtime: a
    /// background task keeps the replica set up to date until every clone of the channel is
    /// dropped.
    pub fn new(spec: &str, timeout: Option<Duration>, mtls: Option<&Mtls>) -> anyhow::Result<Self> {
        let targets = parse(spec, mtls)?;
        let (channel, changes) = Channel::balance_channel::<String>(CHANGE_BUFFER);
        let template = Template { timeout, tls: mtls.map(Mtls::client) };
        // Fixed replicas go in at once, so the first call does not wait for the first probe.
        let mut current = HashMap::new();
        for target in &targets {
            if let Target::Fixed { scheme, addr } = target {
                let replica = Replica { scheme: scheme.clone(), addr: *addr, name: None };
                let endpoint = template.endpoint(&replica)?;
                let url = replica.url();
                changes.try_send(Change::Insert(url.clone(), endpoint)).context("queueing a backend replica")?;
                current.insert(url, replica);
            }
        }
        let (round_done, rounds) = watch::channel(0);
        let probes = Arc::new(Probes { now: Arc::new(Notify::new()), rounds });
        tokio::spawn(maintain(targets, template, changes, current, probes.now.clone(), round_done));
        Ok(BalancedChannel { channel, probes })
    }

    /// The underlying tonic channel (balanced, without the retry).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

impl Probes {
    /// Has every replica probed now and waits (briefly) until the result is applied, so that a
    /// replica a call just failed to reach is out of the balancer before the next call.
    async fn reprobe(&self) {
        let mut rounds = self.rounds.clone();
        rounds.borrow_and_update();
        self.now.notify_one();
        let _ = tokio::time::timeout(PROBE_TIMEOUT * 2, rounds.changed()).await;
    }
}

impl From<Channel> for BalancedChannel {
    /// Wraps a channel made elsewhere (one fixed endpoint, or tonic's own balancing): no replica
    /// set is maintained, safe calls are still retried once.
    fn from(channel: Channel) -> Self {
        let (_, rounds) = watch::channel(0);
        BalancedChannel { channel, probes: Arc::new(Probes { now: Arc::new(Notify::new()), rounds }) }
    }
}

/// How every replica's endpoint is configured.
#[derive(Clone)]
struct Template {
    /// Upper bound on one call, when set.
    timeout: Option<Duration>,
    /// The mutual-TLS client configuration every replica is reached with, when mutual TLS is on.
    tls: Option<ClientTlsConfig>,
}

impl Template {
    /// A lazily connecting endpoint for one replica.
    fn endpoint(&self, replica: &Replica) -> anyhow::Result<Endpoint> {
        let url = replica.url();
        let mut endpoint = Endpoint::from_shared(url.clone())
            .with_context(|| format!("invalid backend url {url}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if let Some(timeout) = self.timeout {
            endpoint = endpoint.timeout(timeout);
        }
        if let Some(tls) = &self.tls {
            // A replica found through a DNS name proves that name, not its pod's address.
            let tls = match &replica.name {
                Some(name) => tls.clone().domain_name(name.clone()),
                None => tls.clone(),
            };
            endpoint = endpoint.tls_config(tls).context("mutual TLS to a backend replica")?;
        }
        Ok(endpoint)
    }
}

/// Keeps the balancer's replica set equal to the reachable addresses of `targets` (or to all of
/// them when none is reachable). Ends when the balancer is gone.
async fn maintain(
    targets: Vec<Target>,
    template: Template,
    changes: tokio::sync::mpsc::Sender<Change<String, Endpoint>>,
    mut current: HashMap<String, Replica>,
    probe_now: Arc<Notify>,
    round_done: watch::Sender<u64>,
) {
    let mut known: BTreeSet<Replica> = BTreeSet::new();
    let mut last_resolve: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = probe_now.notified() => {}
        }
        if changes.is_closed() {
            return;
        }
        if last_resolve.is_none_or(|at| at.elapsed() >= RESOLVE_EVERY) {
            known = resolve(&targets, &known).await;
            last_resolve = Some(tokio::time::Instant::now());
        }
        let probes = known.iter().map(|replica| async move {
            let connect = tokio::net::TcpStream::connect(replica.addr);
            let up = matches!(tokio::time::timeout(PROBE_TIMEOUT, connect).await, Ok(Ok(_)));
            (replica, up)
        });
        let probed = futures::future::join_all(probes).await;
        let any_up = probed.iter().any(|(_, up)| *up);
        let wanted: HashMap<String, &Replica> =
            probed.into_iter().filter(|(_, up)| *up || !any_up).map(|(replica, _)| (replica.url(), replica)).collect();
        let gone: Vec<String> = current.keys().filter(|url| !wanted.contains_key(*url)).cloned().collect();
        for url in gone {
            tracing::info!(replica = %url, "backend replica out of the balancer");
            current.remove(&url);
            if changes.send(Change::Remove(url)).await.is_err() {
                return;
            }
        }
        for (url, replica) in wanted {
            if current.contains_key(&url) {
                continue;
            }
            let endpoint = match template.endpoint(replica) {
                Ok(endpoint) => endpoint,
                Err(e) => {
                    tracing::warn!(replica = %url, error = %format!("{e:#}"), "backend replica left out");
                    continue;
                }
            };
            tracing::info!(replica = %url, "backend replica in the balancer");
            current.insert(url.clone(), replica.clone());
            if changes.send(Change::Insert(url, endpoint)).await.is_err() {
                return;
            }
        }
        round_done.send_modify(|n| *n += 1);
    }
}

/// Every replica of `targets`; a name that fails to resolve keeps its previous addresses (a DNS
/// hiccup must not empty the set).
async fn resolve(targets: &[Target], previous: &BTreeSet<Replica>) -> BTreeSet<Replica> {
    let mut found = BTreeSet::new();
    for target in targets {
        match target {
            Target::Fixed { scheme, addr } => {
                found.insert(Replica { scheme: scheme.clone(), addr: *addr, name: None });
            }
            Target::Dns { scheme, host, port } => match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(addrs) => {
                    found.extend(addrs.map(|addr| Replica { scheme: scheme.clone(), addr, name: Some(host.clone()) }))
                }
                Err(e) => {
                    tracing::warn!(error = %e, %host, "resolving a backend name failed; keeping its last addresses");
                    found.extend(previous.iter().filter(|r| r.name.as_deref() == Some(host.as_str())).cloned());
                }
            },
        }
    }
    found
}

/// True when a response says UNAVAILABLE in its headers (a trailers-only answer: no message was
/// produced, so nothing was done).
fn is_unavailable(response: &http::Response<Body>) -> bool {
    response.headers().get("grpc-status").is_some_and(|v| v.as_bytes() == b"14")
}

impl Service<http::Request<Body>> for BalancedChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    /// With traces exported, the call (its retry included) is a client span
    /// whose context goes to the backend as `traceparent`.
    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if !crate::telemetry::exporting() {
            return self.call_untraced(request);
        }
        let path = request.uri().path();
        let (service, method) = crate::grpc::rpc_name(path);
        let span = tracing::info_span!(
            "grpc client",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
        );
        crate::telemetry::inject(&span, request.headers_mut());
        let call = span.in_scope(|| self.call_untraced(request));
        Box::pin(call.instrument(span))
    }
}

impl BalancedChannel {
    /// [`Service::call`] without a span.
    fn call_untraced(&mut self, request: http::Request<Body>) -> <Self as Service<http::Request<Body>>>::Future {
        // The channel that was polled ready takes the first attempt; a clone takes the retry.
        let ready = self.channel.clone();
        let ready = std::mem::replace(&mut self.channel, ready);
        let probes = self.probes.clone();
        if !SAFE_METHODS.contains(&request.uri().path()) {
            let mut channel = ready;
            return Box::pin(async move {
                let result = channel.call(request).await;
                if result.is_err() {
                    // Not retried (it may have run), but the next call should avoid the replica.
                    probes.now.notify_one();
                }
                result.map_err(Into::into)
            });
        }
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // Safe calls are small unary requests: keep the body to send it twice.
            let bytes = body.collect().await.map_err(|s| Box::new(s) as BoxError)?.to_bytes();
            let rebuild = |parts: http::request::Parts| {
                http::Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes.clone())))
            };
            let mut channel = ready;
            match channel.call(rebuild(parts.clone())).await {
                Ok(response) if !is_unavailable(&response) => return Ok(response),
                Ok(_) | Err(_) => {}
            }
            tracing::debug!(method = %parts.uri.path(), "safe call unavailable; retrying once");
            probes.reprobe().await;
            // The same balanced channel picks again, after the probe took the failed replica out.
            channel.oneshot(rebuild(parts)).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_urls_and_dns_names_is_parsed_into_replicas() {
        let targets =
            parse("http://127.0.0.1:5000, http://[::1]:5001,http://task-service.ns.svc:50052", None).expect("parse");
        assert_eq!(
            targets,
            [
                Target::Fixed { scheme: "http".into(), addr: "127.0.0.1:5000".parse().expect("addr") },
                Target::Fixed { scheme: "http".into(), addr: "[::1]:5001".parse().expect("addr") },
                Target::Dns { scheme: "http".into(), host: "task-service.ns.svc".into(), port: 50052 },
            ]
        );
    }

    #[test]
    fn empty_or_foreign_backend_urls_are_refused() {
        assert!(parse("", None).is_err());
        assert!(parse(" , ", None).is_err());
        assert!(parse("ftp://127.0.0.1:1", None).is_err());
    }

    #[tokio::test]
    async fn a_dns_name_resolves_to_one_replica_per_address() {
        let found = resolve(&parse("http://localhost:7", None).expect("parse"), &BTreeSet::new()).await;
        assert!(!found.is_empty());
        assert!(found.iter().all(|r| r.scheme == "http"
            && r.addr.port() == 7
            && r.addr.ip().is_loopback()
            && r.name.as_deref() == Some("localhost")));
    }
}
