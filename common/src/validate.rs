//! Request validation from the contract: every request message is checked
//! against the `buf.validate` (protovalidate) rules declared in `proto/`,
//! by prost-protovalidate reading them from the message's descriptor, before
//! a handler looks at it.
//!
//! A violation becomes INVALID_ARGUMENT with a google.rpc.BadRequest detail,
//! one field violation per broken rule, named the way the services have
//! always named fields: by the field's own name (`title`, not `task.title`).
//! Rules that need domain knowledge (trimming, normalising, strength) stay
//! in the services' domain types, which take their limits from the
//! constants `taskgate-proto` generates from the same annotations.

use std::sync::LazyLock;

use prost_protovalidate::{Error, Validator};
use prost_reflect::ReflectMessage;
use tonic::Status;

/// One validator for the process: it compiles each message's rules once and
/// caches them.
static VALIDATOR: LazyLock<Validator> = LazyLock::new(Validator::new);

/// The `(field, description)` of every rule `message` breaks; empty when it
/// keeps them all. An error means a rule could not be evaluated: a mistake in
/// the contract, not in the request.
pub fn violations<M: ReflectMessage>(message: &M) -> Result<Vec<(String, String)>, anyhow::Error> {
    match VALIDATOR.validate(message) {
        Ok(()) => Ok(Vec::new()),
        Err(Error::Validation(error)) => Ok(error
            .violations()
            .iter()
            .map(|v| (field_name(&v.field_path()).to_owned(), v.message().to_owned()))
            .collect()),
        Err(error) => Err(anyhow::Error::new(error)
            .context(format!("evaluating the buf.validate rules of {}", message.descriptor().full_name()))),
    }
}

/// `Ok` when `message` keeps every rule, else INVALID_ARGUMENT naming each
/// broken field (see [`crate::status::invalid_fields`]); INTERNAL (logged)
/// when the rules cannot be evaluated.
pub fn check<M: ReflectMessage>(message: &M) -> Result<(), Status> {
    match violations(message) {
        Ok(violations) if violations.is_empty() => Ok(()),
        Ok(violations) => Err(crate::status::invalid_fields(violations)),
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "request validation failed");
            Err(Status::internal("internal error"))
        }
    }
}

/// The value of one rule declared on a field, read from the contract's
/// descriptors: `declared_rule("taskgate.task.v1.Task", "title",
/// "string.max_len")` is `Some(Value::U64(200))`. `None` when the message,
/// the field or the rule does not exist or is not set.
pub fn declared_rule(message: &str, field: &str, rule: &str) -> Option<prost_reflect::Value> {
    let field = taskgate_proto::DESCRIPTOR_POOL.get_message_by_name(message)?.get_field_by_name(field)?;
    let mut value = prost_reflect::Value::Message(field_rules(&field)?);
    for part in rule.split('.') {
        let prost_reflect::Value::Message(rules) = value else { return None };
        let desc = rules.descriptor().get_field_by_name(part)?;
        if !rules.has_field(&desc) {
            return None;
        }
        value = rules.get_field(&desc).into_owned();
    }
    Some(value)
}

/// The `(buf.validate.field)` rules declared on `field` (a
/// `buf.validate.FieldRules` message), from whatever pool it belongs to;
/// `None` when it declares none or its pool lacks the extension.
pub fn field_rules(field: &prost_reflect::FieldDescriptor) -> Option<prost_reflect::DynamicMessage> {
    let extension = field.parent_pool().get_extension_by_name("buf.validate.field")?;
    let options = field.options();
    if !options.has_extension(&extension) {
        return None;
    }
    options.get_extension(&extension).as_message().cloned()
}

/// The name users see for a field path: its last field (`task.title` is
/// `title`, `tasks[2].id` is `id`).
pub fn field_name(path: &str) -> &str {
    let last = path.rsplit('.').next().unwrap_or(path);
    last.split('[').next().unwrap_or(last)
}

#[cfg(test)]
mod tests {
    use taskgate_proto::task::v1::{CreateTaskRequest, GetTaskRequest, ListTasksRequest, Task};
    use tonic::Code;
    use tonic_types::StatusExt as _;

    use super::*;

    fn fields(status: &Status) -> Vec<String> {
        let details = status.get_error_details();
        let bad = details.bad_request().expect("a BadRequest detail");
        bad.field_violations.iter().map(|v| v.field.clone()).collect()
    }

    #[test]
    fn declared_rules_are_read_from_the_descriptors() {
        use prost_reflect::Value;
        assert_eq!(declared_rule("taskgate.task.v1.Task", "title", "string.max_len"), Some(Value::U64(200)));
        assert_eq!(declared_rule("taskgate.task.v1.GetTaskRequest", "id", "string.uuid"), Some(Value::Bool(true)));
        assert_eq!(declared_rule("taskgate.task.v1.Task", "title", "string.min_len"), None);
        assert_eq!(declared_rule("taskgate.task.v1.Task", "etag", "string.max_len"), None);
        assert_eq!(declared_rule("taskgate.task.v1.Nothing", "title", "string.max_len"), None);
    }

    #[test]
    fn every_rule_of_the_contract_can_be_evaluated() {
        // The validator runs without a CEL interpreter: a rule it cannot
        // evaluate would answer INTERNAL to every request of that message.
        let messages: Vec<_> =
            taskgate_proto::DESCRIPTOR_POOL.all_messages().filter(|m| m.full_name().starts_with("taskgate.")).collect();
        assert!(messages.len() > 30, "only {} messages", messages.len());
        for message in messages {
            let empty = prost_reflect::DynamicMessage::new(message.clone());
            if let Err(error) = violations(&empty) {
                panic!("{}: {error:#}", message.full_name());
            }
        }
    }

    #[test]
    fn field_paths_are_named_by_their_last_field() {
        assert_eq!(field_name("title"), "title");
        assert_eq!(field_name("task.title"), "title");
        assert_eq!(field_name("tasks[2].id"), "id");
        assert_eq!(field_name("ids[0]"), "ids");
    }

    #[test]
    fn a_valid_request_passes() {
        let request = CreateTaskRequest {
            task: Some(Task { title: "buy milk".into(), ..Default::default() }),
            request_id: "6f1d0b5e-8c1a-4a53-9d7e-2b8e0d8c1a11".into(),
        };
        check(&request).expect("valid");
        check(&ListTasksRequest::default()).expect("defaults are valid");
    }

    #[test]
    fn every_broken_rule_is_named() {
        let request = CreateTaskRequest {
            task: Some(Task {
                title: "t".repeat(201),
                description: "d".repeat(10_001),
                status: 9,
                ..Default::default()
            }),
            request_id: "has a space".into(),
        };
        let status = check(&request).expect_err("invalid");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(fields(&status), ["title", "description", "status", "request_id"]);
        let status = check(&GetTaskRequest { id: "not-a-uuid".into() }).expect_err("invalid");
        assert_eq!(fields(&status), ["id"]);
        let status = check(&ListTasksRequest { page_size: -1, ..Default::default() }).expect_err("invalid");
        assert_eq!(fields(&status), ["page_size"]);
    }
}
