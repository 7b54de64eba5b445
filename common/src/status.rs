//! `tonic::Status` builders that carry google.rpc error details, so every
//! service reports field errors and retry hints in the same shape.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt as _};

/// INVALID_ARGUMENT with a google.rpc.BadRequest detail naming `field`.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    let message = format!("invalid {field}: {description}");
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// INVALID_ARGUMENT with one BadRequest violation per `(field, description)`.
pub fn invalid_fields(violations: Vec<(String, String)>) -> Status {
    let message = violations.iter().map(|(f, d)| format!("invalid {f}: {d}")).collect::<Vec<_>>().join("; ");
    let details = ErrorDetails::with_bad_request(
        violations.into_iter().map(|(f, d)| FieldViolation::new(f, d)).collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// RESOURCE_EXHAUSTED with a google.rpc.RetryInfo detail.
pub fn retry_after(message: impl Into<String>, retry_after: Duration) -> Status {
    Status::with_error_details(Code::ResourceExhausted, message, ErrorDetails::with_retry_info(Some(retry_after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_field_names_the_field_in_a_bad_request_detail() {
        let status = invalid_field("title", "must not be empty");
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request detail");
        assert_eq!(bad.field_violations[0].field, "title");
    }

    #[test]
    fn retry_after_carries_retry_info() {
        let status = retry_after("slow down", Duration::from_secs(7));
        assert_eq!(status.code(), Code::ResourceExhausted);
        let info = status.get_error_details().retry_info().cloned().expect("retry info");
        assert_eq!(info.retry_delay, Some(Duration::from_secs(7)));
    }
}
