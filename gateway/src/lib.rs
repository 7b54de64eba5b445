//! taskgate's gateway: the only thing clients talk to. Native gRPC, gRPC-web
//! and REST/JSON on one port, each through the same authentication and
//! fleet-wide rate limit before a request is forwarded to a backend.
//!
//! # Layout
//! - [`settings`]: configuration from the environment.
//! - [`startup`]: [`Application`]: building everything and serving it.
//! - [`serve`]: the public port's connection loop and its bounds.
//! - [`stack`]: the middleware stack, in order.
//! - [`auth`]: identity-header stripping, token verification, cookies and CSRF.
//! - [`cookies`]: the browser session cookies and CSRF tokens, which the
//!   authentication layer reads and the REST login, refresh and logout set.
//! - [`policy`]: each request's route and the policy `proto/` declares for it.
//! - [`ratelimit`]: the Redis sliding-window limit with revocation check, and
//!   the local fallback.
//! - [`proxy`]: the gRPC services as forwarding proxies to the backends.
//! - [`upstream`]: the backend channels, where a failed connection becomes
//!   UNAVAILABLE and is logged once per incident.
//! - [`rest`]: REST/JSON routes transcoded to the backends' gRPC APIs, the
//!   JSON error shape, OpenAPI document and docs page.
//! - [`edge`]: `/healthz`, `/readyz`, `/demo`, request ids, the request timeout.
//! - [`metrics`]: Prometheus counters and histograms, `/metrics`.
//! - [`protocol`]: telling the protocols apart and answering errors in each.
//! - [`tls`]: the optional rustls acceptor.
//! - [`watch`]: the per-replica bound on open WatchTasks streams.

pub mod auth;
pub mod cookies;
pub mod edge;
pub mod metrics;
pub mod policy;
pub mod protocol;
pub mod proxy;
pub mod ratelimit;
pub mod rest;
pub mod serve;
pub mod settings;
pub mod stack;
pub mod startup;
pub mod tls;
pub mod upstream;
pub mod watch;

pub use settings::Settings;
pub use startup::Application;
