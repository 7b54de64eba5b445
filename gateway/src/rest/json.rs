//! The JSON forms of the API's messages: proto messages from the backends
//! rendered as the documented REST shapes (snake_case fields, RFC 3339 times,
//! lowercase task statuses, absent login names as `null`), and task request
//! bodies parsed into proto messages.
//!
//! The shapes here and the schemas in [`crate::rest::openapi`] describe the
//! same thing; the OpenAPI tests check every rendered example against them.

use chrono::{DateTime, SecondsFormat};
use prost_types::{FieldMask, Timestamp};
use serde_json::{Value, json};
use taskgate_common::status::invalid_field;
use taskgate_proto::{
    auth::v1::{Jwk, Session, TokenPair, User},
    task::v1::{Task, TaskEventType, TaskStatus, WatchTasksResponse},
};

use crate::rest::{error::RestError, extract::JsonObject};

/// The task fields a client may write, in the order they are documented.
pub const WRITABLE_TASK_FIELDS: [&str; 3] = ["title", "description", "status"];

/// `time` in RFC 3339 (UTC, `Z`, fractional seconds only when non-zero); the
/// Unix epoch for an unset time, which the backends never send for the
/// fields rendered with this.
pub fn rfc3339(time: Option<&Timestamp>) -> String {
    let (seconds, nanos) = time.map_or((0, 0), |t| (t.seconds, t.nanos));
    let nanos = u32::try_from(nanos).unwrap_or(0);
    DateTime::from_timestamp(seconds, nanos).unwrap_or_default().to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `time` in RFC 3339, or `null` when unset.
fn rfc3339_or_null(time: Option<&Timestamp>) -> Value {
    time.map_or(Value::Null, |t| Value::String(rfc3339(Some(t))))
}

/// A user: `{"id","username","email","phone","created_at"}`.
pub fn user(user: &User) -> Value {
    json!({
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "phone": user.phone,
        "created_at": rfc3339(user.created_at.as_ref()),
    })
}

/// A token pair; `token_type` is always `Bearer`.
pub fn token_pair(tokens: &TokenPair) -> Value {
    json!({
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "token_type": "Bearer",
        "expires_in": tokens.expires_in,
        "refresh_expires_in": tokens.refresh_expires_in,
    })
}

/// A session, with `null` for what is unknown or never happened.
pub fn session(session: &Session) -> Value {
    json!({
        "id": session.id,
        "created_at": rfc3339(session.created_at.as_ref()),
        "last_refreshed_at": rfc3339_or_null(session.last_refreshed_at.as_ref()),
        "expires_at": rfc3339(session.expires_at.as_ref()),
        "user_agent": session.user_agent,
        "ip_address": session.ip_address,
        "current": session.current,
    })
}

/// A JSON Web Key, with `key_use` under its JWK name `use`.
pub fn jwk(key: &Jwk) -> Value {
    json!({"kty": key.kty, "crv": key.crv, "x": key.x, "kid": key.kid, "alg": key.alg, "use": key.r#use})
}

/// A task.
pub fn task(task: &Task) -> Value {
    json!({
        "id": task.id,
        "title": task.title,
        "description": task.description,
        "status": status_name(task.status),
        "created_at": rfc3339(task.created_at.as_ref()),
        "updated_at": rfc3339(task.updated_at.as_ref()),
        "etag": task.etag,
    })
}

/// The SSE `event` name of a watch event type.
pub fn event_name(kind: TaskEventType) -> &'static str {
    match kind {
        TaskEventType::Created => "created",
        TaskEventType::Updated => "updated",
        TaskEventType::Deleted => "deleted",
        TaskEventType::Heartbeat => "heartbeat",
        TaskEventType::Unspecified => "unspecified",
    }
}

/// A watch event: `{"type", "task", "version"}`; a deleted task is only
/// `{"id"}`. The version is a string, as proto3 JSON writes 64-bit integers.
pub fn watch_event(event: &WatchTasksResponse) -> Value {
    let kind = TaskEventType::try_from(event.r#type).unwrap_or(TaskEventType::Unspecified);
    let task = match (&event.task, kind) {
        (Some(t), TaskEventType::Deleted) => json!({ "id": t.id }),
        (Some(t), _) => task(t),
        (None, _) => Value::Null,
    };
    json!({ "type": event_name(kind), "task": task, "version": event.version.to_string() })
}

/// The JSON name of a task status (`todo`, `in_progress`, `done`); an
/// unspecified status is a new task's, `todo`.
pub fn status_name(status: i32) -> &'static str {
    match TaskStatus::try_from(status) {
        Ok(TaskStatus::InProgress) => "in_progress",
        Ok(TaskStatus::Done) => "done",
        Ok(TaskStatus::Todo | TaskStatus::Unspecified) | Err(_) => "todo",
    }
}

/// The task status named `name` in JSON, or a 400 naming `field`.
pub fn parse_status(field: &str, name: &str) -> Result<TaskStatus, RestError> {
    match name {
        "todo" => Ok(TaskStatus::Todo),
        "in_progress" => Ok(TaskStatus::InProgress),
        "done" => Ok(TaskStatus::Done),
        _ => Err(invalid_field(field, "must be one of todo, in_progress, done").into()),
    }
}

/// A task request body (create, replace or patch) read into a [`Task`] with
/// `id` set, plus the update mask naming exactly the fields that were present.
/// `title_required` makes a missing title a 400 (create and replace). An
/// `etag` field (replace and patch) makes the write conditional; it is not a
/// field the write changes.
pub fn task_body(mut body: JsonObject, id: String, title_required: bool) -> Result<(Task, FieldMask), RestError> {
    let paths: Vec<String> =
        WRITABLE_TASK_FIELDS.iter().filter(|field| body.has(field)).map(|field| (*field).to_owned()).collect();
    let title = if title_required { Some(body.require_string("title")?) } else { body.take_string("title")? };
    let description = body.take_string("description")?;
    let status = match body.take_string("status")? {
        Some(name) => parse_status("status", &name)?,
        None => TaskStatus::Unspecified,
    };
    let etag = if id.is_empty() { None } else { body.take_string("etag")? };
    body.finish()?;
    let task = Task {
        id,
        title: title.unwrap_or_default(),
        description: description.unwrap_or_default(),
        status: status as i32,
        created_at: None,
        updated_at: None,
        etag: etag.unwrap_or_default(),
    };
    Ok((task, FieldMask { paths }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> JsonObject {
        JsonObject::parse(text.as_bytes()).expect("a JSON object")
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        let time = Timestamp { seconds: 1_700_000_000, nanos: 0 };
        assert_eq!(rfc3339(Some(&time)), "2023-11-14T22:13:20Z");
        let time = Timestamp { seconds: 1_700_000_000, nanos: 500_000_000 };
        assert_eq!(rfc3339(Some(&time)), "2023-11-14T22:13:20.500Z");
    }

    #[test]
    fn empty_login_names_are_null() {
        let rendered = user(&User {
            id: "u".into(),
            username: Some("alice".into()),
            email: None,
            phone: None,
            created_at: Some(Timestamp { seconds: 0, nanos: 0 }),
        });
        assert_eq!(rendered["username"], "alice");
        assert_eq!(rendered["email"], Value::Null);
        assert_eq!(rendered["phone"], Value::Null);
        assert_eq!(rendered["created_at"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn jwks_use_the_jwk_field_name() {
        let key = Jwk { r#use: "sig".into(), ..Default::default() };
        assert_eq!(jwk(&key)["use"], "sig");
    }

    #[test]
    fn statuses_round_trip_through_their_json_names() {
        for status in [TaskStatus::Todo, TaskStatus::InProgress, TaskStatus::Done] {
            let name = status_name(status as i32);
            assert_eq!(parse_status("status", name).expect("a known status"), status);
        }
        assert!(parse_status("status", "TODO").is_err());
        assert!(parse_status("status", "blocked").is_err());
    }

    #[test]
    fn the_patch_mask_lists_exactly_the_fields_present() {
        let (task, mask) = task_body(body(r#"{"status": "done"}"#), "t".into(), false).expect("a valid patch");
        assert_eq!(mask.paths, ["status"]);
        assert_eq!(task.status, TaskStatus::Done as i32);

        let (_, mask) = task_body(body(r#"{"description": "", "title": "x"}"#), "t".into(), false).expect("valid");
        assert_eq!(mask.paths, ["title", "description"]);
    }

    #[test]
    fn create_and_replace_need_a_title() {
        assert!(task_body(body(r#"{"description": "d"}"#), String::new(), true).is_err());
        let (task, _) = task_body(body(r#"{"title": "t"}"#), String::new(), true).expect("a valid task");
        assert_eq!(task.status, TaskStatus::Unspecified as i32);
    }

    #[test]
    fn unknown_task_fields_and_statuses_are_refused() {
        assert!(task_body(body(r#"{"title": "t", "owner": "x"}"#), String::new(), true).is_err());
        assert!(task_body(body(r#"{"title": "t", "status": "blocked"}"#), String::new(), true).is_err());
        assert!(task_body(body(r#"{"title": "t", "status": null}"#), String::new(), true).is_err());
    }
}
