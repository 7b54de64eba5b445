//! [`Fault`]: the one classification of Postgres (sqlx) and Redis (fred)
//! errors every service uses, so the same fault gets the same gRPC code
//! whichever service meets it.
//!
//! | fault | what happened | gRPC code |
//! |---|---|---|
//! | [`Fault::Unavailable`] | the store cannot be reached, is starting, stopping, failing over, busy or out of connections | UNAVAILABLE |
//! | [`Fault::AlreadyExists`] | a unique constraint refused the write (23505) | ALREADY_EXISTS |
//! | [`Fault::Precondition`] | a foreign key, check or exclusion constraint refused it (23503, 23514, 23P01) | FAILED_PRECONDITION |
//! | [`Fault::InvalidValue`] | a value the column cannot hold: null, too long, out of range, not text (23502, class 22) | INVALID_ARGUMENT |
//! | [`Fault::Conflict`] | a serialization failure or deadlock: the transaction may be retried (40001, 40P01) | ABORTED |
//! | [`Fault::Internal`] | anything else: a bug, a schema out of step | INTERNAL |
//!
//! A service keeps its own error enum (its messages name its domain), and
//! maps each fault onto it; [`Fault::code`] and [`Fault::message`] are the
//! code and the safe message when it has nothing more particular to say.
//! The cause of an [`Fault::Internal`] is logged by the service, never sent.

use std::borrow::Cow;

use tonic::Code;

/// What a store error means for the call that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The store is away or overloaded for now; the call may be retried.
    Unavailable,
    /// A unique constraint refused the write.
    AlreadyExists,
    /// A foreign key, check or exclusion constraint refused the write.
    Precondition,
    /// A value the column cannot hold.
    InvalidValue,
    /// The transaction lost a race (serialization failure, deadlock).
    Conflict,
    /// Anything else.
    Internal,
}

/// Redis error replies a server gives while it loads, fails over, runs a
/// long script, is out of memory or its cluster is reconfiguring: the
/// command may succeed on a retry.
const TRANSIENT_REDIS_REPLIES: [&str; 8] =
    ["LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "OOM", "NOREPLICAS"];

impl Fault {
    /// Classifies a sqlx error.
    pub fn of_sqlx(error: &sqlx::Error) -> Fault {
        match error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Fault::Unavailable,
            sqlx::Error::Database(db) => Fault::of_sqlstate(db.code().unwrap_or(Cow::Borrowed("")).as_ref()),
            _ => Fault::Internal,
        }
    }

    /// Classifies a Postgres SQLSTATE code.
    pub fn of_sqlstate(code: &str) -> Fault {
        match code {
            // 08: connection exception; 57P01-57P05: the server is shutting
            // down, restarting or not yet accepting connections; 53: out of
            // connections, memory or disk.
            c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => Fault::Unavailable,
            "23505" => Fault::AlreadyExists,
            "23503" | "23514" | "23P01" => Fault::Precondition,
            "23502" => Fault::InvalidValue,
            c if c.starts_with("22") => Fault::InvalidValue,
            "40001" | "40P01" => Fault::Conflict,
            _ => Fault::Internal,
        }
    }

    /// Classifies a fred error: a lost, refused or timed-out connection,
    /// back-pressure and the transient error replies are
    /// [`Fault::Unavailable`]; a command, argument or reply the code did not
    /// expect is [`Fault::Internal`].
    pub fn of_redis(error: &fred::error::Error) -> Fault {
        use fred::error::ErrorKind;
        if TRANSIENT_REDIS_REPLIES.iter().any(|reply| error.details().starts_with(reply)) {
            return Fault::Unavailable;
        }
        match error.kind() {
            ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Routing
            | ErrorKind::Backpressure
            | ErrorKind::Cluster
            | ErrorKind::Tls
            | ErrorKind::Sentinel => Fault::Unavailable,
            _ => Fault::Internal,
        }
    }

    /// The gRPC code of this fault.
    pub fn code(self) -> Code {
        match self {
            Fault::Unavailable => Code::Unavailable,
            Fault::AlreadyExists => Code::AlreadyExists,
            Fault::Precondition => Code::FailedPrecondition,
            Fault::InvalidValue => Code::InvalidArgument,
            Fault::Conflict => Code::Aborted,
            Fault::Internal => Code::Internal,
        }
    }

    /// A message safe to send a client: it names the kind of fault, never
    /// the query, the value or the store's own words.
    pub fn message(self) -> &'static str {
        match self {
            Fault::Unavailable => "store unavailable",
            Fault::AlreadyExists => "already exists",
            Fault::Precondition => "the change conflicts with stored data",
            Fault::InvalidValue => "a value is out of range for its field",
            Fault::Conflict => "the change raced another one: retry it",
            Fault::Internal => "internal error",
        }
    }

    /// A status with [`Fault::code`] and [`Fault::message`].
    pub fn status(self) -> tonic::Status {
        tonic::Status::new(self.code(), self.message())
    }
}

#[cfg(test)]
mod tests {
    use fred::error::{Error as RedisError, ErrorKind};

    use super::*;

    #[test]
    fn a_restarting_or_unreachable_postgres_is_unavailable() {
        // admin_shutdown (a restart ends the pooled connections), cannot_connect_now
        // (starting up or shutting down), connection_failure, too_many_connections.
        for code in ["57P01", "57P03", "08006", "08001", "53300", "53100"] {
            assert_eq!(Fault::of_sqlstate(code), Fault::Unavailable, "{code}");
        }
        for error in [sqlx::Error::PoolTimedOut, sqlx::Error::PoolClosed, sqlx::Error::WorkerCrashed] {
            assert_eq!(Fault::of_sqlx(&error), Fault::Unavailable, "{error}");
        }
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(Fault::of_sqlx(&io), Fault::Unavailable);
    }

    #[test]
    fn constraint_violations_are_classified_by_kind() {
        assert_eq!(Fault::of_sqlstate("23505"), Fault::AlreadyExists);
        assert_eq!(Fault::of_sqlstate("23503"), Fault::Precondition);
        assert_eq!(Fault::of_sqlstate("23514"), Fault::Precondition);
        assert_eq!(Fault::of_sqlstate("23502"), Fault::InvalidValue);
        assert_eq!(Fault::of_sqlstate("22001"), Fault::InvalidValue);
        assert_eq!(Fault::of_sqlstate("40001"), Fault::Conflict);
        assert_eq!(Fault::AlreadyExists.code(), Code::AlreadyExists);
        assert_eq!(Fault::Conflict.code(), Code::Aborted);
    }

    #[test]
    fn the_rest_is_internal_and_says_nothing() {
        assert_eq!(Fault::of_sqlstate("42P01"), Fault::Internal);
        assert_eq!(Fault::of_sqlx(&sqlx::Error::RowNotFound), Fault::Internal);
        let status = Fault::Internal.status();
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn redis_outages_and_transient_replies_are_unavailable() {
        for (kind, details) in [
            (ErrorKind::IO, "Connection refused."),
            (ErrorKind::Timeout, "Request timed out."),
            (ErrorKind::Canceled, "Connection closed."),
            (ErrorKind::Unknown, "BUSY Redis is busy running a script."),
            (ErrorKind::Unknown, "LOADING Redis is loading the dataset in memory"),
            (ErrorKind::Unknown, "READONLY You can't write against a read only replica."),
            (ErrorKind::Unknown, "OOM command not allowed when used memory > 'maxmemory'."),
        ] {
            assert_eq!(Fault::of_redis(&RedisError::new(kind.clone(), details)), Fault::Unavailable, "{details}");
        }
        for (kind, details) in [
            (ErrorKind::Unknown, "ERR wrong number of arguments"),
            (ErrorKind::Parse, "unexpected reply"),
            (ErrorKind::InvalidArgument, "bad key"),
        ] {
            assert_eq!(Fault::of_redis(&RedisError::new(kind, details)), Fault::Internal, "{details}");
        }
    }
}
