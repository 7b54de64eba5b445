//! Gateway integration tests: the three services, real Postgres and Redis,
//! and two gateway replicas, all in-process (see `helpers::spawn_stack`).
//!
//! One module per feature: native gRPC forwarding, gRPC-web, authentication
//! at the edge, the fleet-wide rate limit, the plain HTTP endpoints, TLS,
//! backend connections failing under calls (`transport`), a frozen Redis
//! under load (`redis_freeze`), Redis losing its data (`redis_loss`), Postgres
//! restarting (`postgres_restart`), a test-only contract served with no
//! gateway code of its own (`contract`), and
//! the attacks the public port must hold against (`abuse`).

mod abuse;
mod contract;
mod edge_auth;
mod every_rpc;
mod grpc;
mod grpc_web;
mod helpers;
mod http_endpoints;
mod metrics;
mod openapi;
mod postgres_restart;
mod ratelimit;
mod redis_freeze;
mod redis_loss;
mod rest;
mod tls;
mod transport;
mod watch;
