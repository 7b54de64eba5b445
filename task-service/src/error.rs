//! [`TaskError`]: everything a task call can fail with, and the one table
//! that turns it into a gRPC status.

use std::collections::HashMap;

use taskgate_common::fault::Fault;
use taskgate_tokens::VerifyError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// The google.rpc.ErrorInfo reason of a watch that must list again.
pub const LIST_AGAIN: &str = "LIST_AGAIN";

/// The google.rpc.ErrorInfo domain of the task service's errors.
pub const ERROR_DOMAIN: &str = "tasks.taskgate";

/// Why a task call failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Input that does not parse or validate: one `(field, reason)` per problem.
    #[error("invalid argument: {0:?}")]
    InvalidArgument(Vec<(&'static str, String)>),
    /// No such task for this caller (missing, or someone else's).
    #[error("task not found")]
    NotFound,
    /// The caller's token is missing, invalid, expired or revoked.
    #[error(transparent)]
    Unauthenticated(#[from] VerifyError),
    /// A conditional write named an etag the task no longer has (AIP-154).
    #[error("the task changed since its etag was read")]
    EtagMismatch,
    /// A create's request id matched an earlier create whose task has since
    /// been deleted, so the original answer cannot be repeated.
    #[error("the task created with this request_id has been deleted")]
    RequestDeleted,
    /// A watcher cannot be brought up to date from the event log (it does
    /// not reach back far enough, or events may have been lost): the client
    /// must list again and watch from the new version.
    #[error("list again: {0}")]
    ListAgain(&'static str),
    /// The caller already has as many open watch streams as allowed.
    #[error("too many open watch streams")]
    TooManyStreams(u32),
    /// Postgres cannot be reached right now.
    #[error("database unavailable")]
    Unavailable,
    /// Postgres refused a write (a constraint, a lost race): the call gets
    /// the fault's own code.
    #[error("refused by the database: {0:?}")]
    Store(Fault),
    /// Redis (the event log) cannot be reached right now; only WatchTasks
    /// needs it.
    #[error("event log unavailable")]
    EventsUnavailable,
    /// This replica is stopping: watch again (another replica answers).
    #[error("replica stopping")]
    Stopping,
    /// Anything else; logged, never shown to the client.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl TaskError {
    /// An [`TaskError::InvalidArgument`] naming one field.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        TaskError::InvalidArgument(vec![(field, reason.into())])
    }

    /// Classifies a sqlx error with the workspace's one table
    /// ([`Fault`]): connection trouble means UNAVAILABLE (the pool recovers
    /// by itself once Postgres returns), a constraint or a lost race gets
    /// its own code, anything else is unexpected.
    pub fn from_db(error: sqlx::Error, doing: &'static str) -> Self {
        match Fault::of_sqlx(&error) {
            Fault::Unavailable => {
                // Logged once per outage by the repository, not per request.
                tracing::debug!(error = %error, "{doing}: database unavailable");
                TaskError::Unavailable
            }
            Fault::Internal => TaskError::Unexpected(anyhow::Error::new(error).context(doing)),
            fault => {
                tracing::debug!(error = %error, "{doing}: refused by the database");
                TaskError::Store(fault)
            }
        }
    }

    /// A copy of an error shared between the callers of one single-flight
    /// load (`anyhow::Error` is not `Clone`).
    pub fn share(&self) -> Self {
        match self {
            TaskError::InvalidArgument(v) => TaskError::InvalidArgument(v.clone()),
            TaskError::NotFound => TaskError::NotFound,
            TaskError::Unauthenticated(e) => TaskError::Unexpected(anyhow::anyhow!("{e}")),
            TaskError::EtagMismatch => TaskError::EtagMismatch,
            TaskError::RequestDeleted => TaskError::RequestDeleted,
            TaskError::ListAgain(why) => TaskError::ListAgain(why),
            TaskError::TooManyStreams(n) => TaskError::TooManyStreams(*n),
            TaskError::Unavailable => TaskError::Unavailable,
            TaskError::Store(fault) => TaskError::Store(*fault),
            TaskError::EventsUnavailable => TaskError::EventsUnavailable,
            TaskError::Stopping => TaskError::Stopping,
            TaskError::Unexpected(e) => TaskError::Unexpected(anyhow::anyhow!("{e:#}")),
        }
    }
}

impl From<TaskError> for Status {
    fn from(error: TaskError) -> Self {
        match error {
            TaskError::InvalidArgument(violations) => taskgate_common::status::invalid_fields(
                violations.into_iter().map(|(field, reason)| (field.to_owned(), reason)).collect(),
            ),
            TaskError::NotFound => Status::not_found("task not found"),
            TaskError::Unauthenticated(e) => e.into(),
            TaskError::EtagMismatch => {
                Status::aborted("the task changed since its etag was read: read it again and retry")
            }
            TaskError::RequestDeleted => {
                Status::failed_precondition("the task created with this request_id has been deleted")
            }
            TaskError::ListAgain(why) => Status::with_error_details(
                Code::FailedPrecondition,
                format!("list again, then watch from the new version: {why}"),
                ErrorDetails::with_error_info(LIST_AGAIN, ERROR_DOMAIN, HashMap::new()),
            ),
            TaskError::TooManyStreams(limit) => {
                Status::resource_exhausted(format!("at most {limit} watch streams may be open per user"))
            }
            TaskError::Unavailable => Status::unavailable("database unavailable"),
            TaskError::Store(fault) => fault.status(),
            TaskError::EventsUnavailable => Status::unavailable("event log unavailable"),
            TaskError::Stopping => {
                Status::unavailable("this replica is stopping: watch again with since set to the last version received")
            }
            TaskError::Unexpected(e) => {
                tracing::error!(error = %format!("{e:#}"), "unexpected error in the task service");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_table_holds() {
        assert_eq!(Status::from(TaskError::NotFound).code(), Code::NotFound);
        assert_eq!(Status::from(TaskError::invalid("title", "empty")).code(), Code::InvalidArgument);
        assert_eq!(Status::from(TaskError::Unauthenticated(VerifyError::Expired)).code(), Code::Unauthenticated);
        let unavailable = Status::from(TaskError::Unavailable);
        assert_eq!(unavailable.code(), Code::Unavailable);
        assert_eq!(unavailable.message(), "database unavailable");
        assert_eq!(Status::from(TaskError::EtagMismatch).code(), Code::Aborted);
        let relist = Status::from(TaskError::ListAgain("trimmed"));
        assert_eq!(relist.code(), Code::FailedPrecondition);
        assert_eq!(relist.get_error_details().error_info().map(|i| i.reason.as_str()), Some(LIST_AGAIN));
        assert_eq!(Status::from(TaskError::TooManyStreams(5)).code(), Code::ResourceExhausted);
    }

    #[test]
    fn unexpected_errors_do_not_leak_their_message() {
        let status = Status::from(TaskError::Unexpected(anyhow::anyhow!("secret detail")));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }

    #[test]
    fn connection_errors_are_unavailable() {
        assert!(matches!(TaskError::from_db(sqlx::Error::PoolTimedOut, "x"), TaskError::Unavailable));
        assert!(matches!(TaskError::from_db(sqlx::Error::RowNotFound, "x"), TaskError::Unexpected(_)));
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(TaskError::from_db(io, "x"), TaskError::Unavailable));
    }
}
