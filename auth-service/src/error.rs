//! What can go wrong at the service boundary, and the one table that turns
//! it into a gRPC status. Every message here is safe to show a client.

use std::time::Duration;

use taskgate_common::{fault::Fault, status};
use taskgate_tokens::VerifyError;
use tonic::Status;

/// Every error an RPC of the auth service can return.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A request field failed validation.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The request field, as named in the proto.
        field: &'static str,
        /// What is wrong with it, for the user.
        reason: String,
    },
    /// The request breaks rules of the contract (`buf.validate` annotations
    /// in `proto/`): one `(field, reason)` per broken rule.
    #[error("invalid argument: {0:?}")]
    Violations(Vec<(String, String)>),
    /// A user with this login name exists already.
    #[error("a user with this {0} already exists")]
    AlreadyExists(&'static str),
    /// Unknown login or wrong password (deliberately not told apart).
    #[error("invalid login or password")]
    InvalidCredentials,
    /// A presented token failed verification.
    #[error(transparent)]
    TokenInvalid(#[from] VerifyError),
    /// The session of a refresh token is gone: logged out, expired, revoked
    /// after reuse, or its user disabled.
    #[error("session has been revoked")]
    SessionRevoked,
    /// The caller may not do this.
    #[error("permission denied")]
    PermissionDenied,
    /// The named thing does not exist (or is not the caller's).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Too many failed logins; try again after `retry_after`.
    #[error("too many failed login attempts, try again later")]
    Throttled {
        /// When the sliding window lets the next attempt through.
        retry_after: Duration,
    },
    /// Too many registrations from one address; try again after `retry_after`.
    #[error("too many registrations from this address, try again later")]
    RegistrationsThrottled {
        /// When the address's window lets the next registration through.
        retry_after: Duration,
    },
    /// Every password hashing thread is busy and the queue is full; try again
    /// after `retry_after` (about the time the queue takes to drain).
    #[error("the server is busy checking passwords, try again shortly")]
    Busy {
        /// About when the queue has room again.
        retry_after: Duration,
    },
    /// The call would break a rule about the system's state (for example,
    /// disabling the last active admin); the message says which.
    #[error("{0}")]
    FailedPrecondition(&'static str),
    /// A backing store is down; names which (a fixed, safe message).
    #[error("{0}")]
    Unavailable(&'static str),
    /// Postgres refused a write (a constraint, a lost race) where the
    /// service had nothing more particular to say: the fault's own code.
    #[error("refused by the database: {0:?}")]
    Store(Fault),
    /// A bug or an unforeseen failure; logged, never shown.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// The message of [`AuthError::Unavailable`] for Postgres.
pub const DATABASE_UNAVAILABLE: &str = "database unavailable";
/// The message of [`AuthError::Unavailable`] for Redis.
pub const SESSIONS_UNAVAILABLE: &str = "session store unavailable";

impl AuthError {
    /// An [`AuthError::InvalidArgument`] for `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        AuthError::InvalidArgument { field, reason: reason.into() }
    }
}

/// Checks `message` against the contract's `buf.validate` rules.
pub fn check<M: prost_reflect::ReflectMessage>(message: &M) -> Result<(), AuthError> {
    let violations = taskgate_common::validate::violations(message)?;
    if violations.is_empty() { Ok(()) } else { Err(AuthError::Violations(violations)) }
}

impl From<sqlx::Error> for AuthError {
    /// The workspace's one classification ([`Fault`]); a unique violation
    /// the caller did not expect to name is a bare ALREADY_EXISTS.
    fn from(e: sqlx::Error) -> Self {
        match Fault::of_sqlx(&e) {
            Fault::Unavailable => {
                tracing::warn!(error = %e, "postgres unavailable");
                AuthError::Unavailable(DATABASE_UNAVAILABLE)
            }
            Fault::Internal => AuthError::Unexpected(anyhow::Error::new(e).context("database query")),
            fault => {
                tracing::debug!(error = %e, "refused by the database");
                AuthError::Store(fault)
            }
        }
    }
}

impl From<fred::error::Error> for AuthError {
    /// The workspace's one classification ([`Fault`]).
    fn from(e: fred::error::Error) -> Self {
        match Fault::of_redis(&e) {
            Fault::Unavailable => {
                tracing::warn!(error = %e, "redis unavailable");
                AuthError::Unavailable(SESSIONS_UNAVAILABLE)
            }
            _ => AuthError::Unexpected(anyhow::Error::new(e).context("redis command")),
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidArgument { field, reason } => status::invalid_field(field, reason),
            AuthError::Violations(violations) => status::invalid_fields(violations),
            AuthError::AlreadyExists(_) => Status::already_exists(e.to_string()),
            AuthError::InvalidCredentials | AuthError::SessionRevoked => Status::unauthenticated(e.to_string()),
            AuthError::TokenInvalid(v) => Status::from(v),
            AuthError::PermissionDenied => Status::permission_denied(e.to_string()),
            AuthError::NotFound(_) => Status::not_found(e.to_string()),
            AuthError::Throttled { retry_after }
            | AuthError::RegistrationsThrottled { retry_after }
            | AuthError::Busy { retry_after } => status::retry_after(e.to_string(), retry_after),
            AuthError::FailedPrecondition(message) => Status::failed_precondition(message),
            AuthError::Unavailable(message) => Status::unavailable(message),
            AuthError::Store(fault) => fault.status(),
            AuthError::Unexpected(inner) => {
                tracing::error!(error = ?inner, "unexpected error");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn unexpected_errors_hide_their_inner_message() {
        let status = Status::from(AuthError::Unexpected(anyhow::anyhow!("SELECT secret FROM x")));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("SELECT"));
    }

    #[test]
    fn a_pool_timeout_is_unavailable() {
        let status = Status::from(AuthError::from(sqlx::Error::PoolTimedOut));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), DATABASE_UNAVAILABLE);
    }

    #[test]
    fn a_connection_ended_by_a_postgres_restart_is_unavailable() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        assert_eq!(Status::from(AuthError::from(io)).code(), Code::Unavailable);
        let busy = fred::error::Error::new(fred::error::ErrorKind::Unknown, "BUSY Redis is busy running a script.");
        assert_eq!(Status::from(AuthError::from(busy)).message(), SESSIONS_UNAVAILABLE);
    }

    #[test]
    fn token_errors_are_unauthenticated() {
        let status = Status::from(AuthError::from(VerifyError::Expired));
        assert_eq!(status.code(), Code::Unauthenticated);
    }
}
