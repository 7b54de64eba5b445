//! REST/JSON routes, transcoded to the backends' gRPC APIs as declared by the
//! `google.api.http` annotations in `proto/`.
//!
//! # Layout
//! - [`error`]: the one JSON error shape (google.rpc.Status) and the
//!   gRPC-to-HTTP status table.

pub mod error;

use axum::Router;
use taskgate_proto::{
    auth::v1::auth_service_client::AuthServiceClient, task::v1::task_service_client::TaskServiceClient,
};
use tonic::transport::Channel;

/// The REST routes, forwarding to `auth` and `task` over their pooled channels.
///
/// Authentication and rate limiting are layers the caller wraps around this
/// router; by the time a handler runs, any token (header or cookie) has been
/// verified and normalised into an `authorization: Bearer` header.
pub fn router(auth: AuthServiceClient<Channel>, task: TaskServiceClient<Channel>) -> Router {
    let _ = (auth, task);
    Router::new()
}
