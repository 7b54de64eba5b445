//! What can go wrong at the service boundary, and the one table that turns
//! it into a gRPC status. Every message here is safe to show a client.

use std::time::Duration;

use taskgate_common::status;
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

impl From<sqlx::Error> for AuthError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => {
                tracing::warn!(error = %e, "postgres unavailable");
                AuthError::Unavailable(DATABASE_UNAVAILABLE)
            }
            other => AuthError::Unexpected(anyhow::Error::new(other).context("database query")),
        }
    }
}

impl From<fred::error::Error> for AuthError {
    fn from(e: fred::error::Error) -> Self {
        use fred::error::ErrorKind;
        // Replies a restarting or failing-over server gives; they pass.
        let transient =
            ["LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN"].iter().any(|p| e.details().starts_with(p));
        match e.kind() {
            _ if transient => {
                tracing::warn!(error = %e, "redis unavailable");
                AuthError::Unavailable(SESSIONS_UNAVAILABLE)
            }
            ErrorKind::InvalidArgument | ErrorKind::InvalidCommand | ErrorKind::Parse | ErrorKind::Unknown => {
                AuthError::Unexpected(anyhow::Error::new(e).context("redis command"))
            }
            _ => {
                tracing::warn!(error = %e, "redis unavailable");
                AuthError::Unavailable(SESSIONS_UNAVAILABLE)
            }
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidArgument { field, reason } => status::invalid_field(field, reason),
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
    fn token_errors_are_unauthenticated() {
        let status = Status::from(AuthError::from(VerifyError::Expired));
        assert_eq!(status.code(), Code::Unauthenticated);
    }
}
