//! Readers every consumer of the contract shares: the REST transcoder, the
//! OpenAPI generator and the gateway's route policy read the descriptors
//! through these, so they cannot disagree on a path, a field or a name.

use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor, Value};

/// The variables of a `google.api.http` path template, as field paths
/// (`/api/v1/tasks/{task.id}` has `task.id`).
pub fn path_variables(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        let inside = &rest[open + 1..open + close];
        // `{name=pattern}`: only the field path matters to a router.
        out.push(inside.split('=').next().unwrap_or(inside).to_owned());
        rest = &rest[open + close + 1..];
    }
    out
}

/// A path template as routers and OpenAPI write it: `{task.id}` becomes
/// `{id}` (the last segment of a nested field path names the variable).
pub fn route_path(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else { break };
        let variable = &rest[open + 1..open + close];
        let variable = variable.split('=').next().unwrap_or(variable);
        out.push('{');
        out.push_str(variable.rsplit('.').next().unwrap_or(variable));
        out.push('}');
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// The field at the dotted `path` (`task.id`) of a `desc` message, if every
/// step but the last is a singular message field.
pub fn field_at(desc: &MessageDescriptor, path: &str) -> Option<FieldDescriptor> {
    let (first, rest) = match path.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (path, None),
    };
    let field = desc.get_field_by_name(first)?;
    match (rest, field.kind()) {
        (None, _) => Some(field),
        (Some(rest), Kind::Message(inner)) if !field.is_list() && !field.is_map() => field_at(&inner, rest),
        _ => None,
    }
}

/// Whether `field` declares the `(google.api.field_behavior)` named `name`
/// (`REQUIRED`, `OUTPUT_ONLY`, ...).
pub fn has_behavior(field: &FieldDescriptor, name: &str) -> bool {
    let Some(extension) = field.parent_pool().get_extension_by_name("google.api.field_behavior") else {
        return false;
    };
    let (options, Kind::Enum(behavior)) = (field.options(), extension.kind()) else { return false };
    if !options.has_extension(&extension) {
        return false;
    }
    let Value::List(values) = options.get_extension(&extension).into_owned() else { return false };
    values.iter().filter_map(Value::as_enum_number).any(|n| behavior.get_value(n).is_some_and(|v| v.name() == name))
}

/// Whether proto3 JSON gives `message` a form of its own (Timestamp as a
/// string, and so on), which the REST rules leave alone.
pub fn is_well_known(message: &MessageDescriptor) -> bool {
    message.package_name() == "google.protobuf"
}

/// The REST name of the value of `enum_` named `full`: the name less the
/// enum's own name as prefix, lowercased (`TASK_STATUS_IN_PROGRESS` of
/// `TaskStatus` is `in_progress`).
pub fn short_name(enum_: &EnumDescriptor, full: &str) -> String {
    let mut prefix = String::with_capacity(enum_.name().len() + 4);
    for (i, c) in enum_.name().chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            prefix.push('_');
        }
        prefix.push(c.to_ascii_uppercase());
    }
    prefix.push('_');
    full.strip_prefix(&prefix).unwrap_or(full).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_templates_read_as_routes_and_field_paths() {
        assert_eq!(route_path("/api/v1/tasks/{task.id}"), "/api/v1/tasks/{id}");
        assert_eq!(route_path("/api/v1/admin/users/{id}/disable"), "/api/v1/admin/users/{id}/disable");
        assert_eq!(route_path("/v1/{name=shelves/*}:get"), "/v1/{name}:get");
        assert_eq!(route_path("/api/v1/tasks"), "/api/v1/tasks");
        assert_eq!(path_variables("/api/v1/tasks/{task.id}"), ["task.id"]);
        assert_eq!(path_variables("/v1/{name=shelves/*}/books/{book}"), ["name", "book"]);
    }

    #[test]
    fn enum_values_have_short_lowercase_names() {
        let pool = &crate::DESCRIPTOR_POOL;
        let status = pool.get_enum_by_name("taskgate.task.v1.TaskStatus").expect("TaskStatus");
        assert_eq!(short_name(&status, "TASK_STATUS_IN_PROGRESS"), "in_progress");
        assert_eq!(short_name(&status, "OTHER"), "other");
    }

    #[test]
    fn field_paths_and_behaviour_are_read_from_the_descriptors() {
        let pool = &crate::DESCRIPTOR_POOL;
        let update = pool.get_message_by_name("taskgate.task.v1.UpdateTaskRequest").expect("UpdateTaskRequest");
        assert_eq!(field_at(&update, "task.id").expect("task.id").name(), "id");
        assert!(field_at(&update, "task.nope").is_none());
        let task = pool.get_message_by_name("taskgate.task.v1.Task").expect("Task");
        let (id, title) = (task.get_field_by_name("id").expect("id"), task.get_field_by_name("title").expect("title"));
        assert!(has_behavior(&id, "OUTPUT_ONLY") && !has_behavior(&id, "REQUIRED"));
        assert!(has_behavior(&title, "REQUIRED") && !has_behavior(&title, "OUTPUT_ONLY"));
    }
}
