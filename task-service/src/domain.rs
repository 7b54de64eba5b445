//! Validated input types. Requests are parsed into these at the edge, so the
//! rest of the service never sees an unchecked string or number.
//!
//! Every limit a request must keep is declared once, with a `buf.validate`
//! annotation in `proto/taskgate/task/v1/task.proto`, and checked there by
//! the validator before a handler runs; the types here take the same limits
//! from [`rules`] and add what the contract cannot say (trimming, NUL,
//! defaults).

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use taskgate_proto::task::v1::rules;

use crate::TaskError;

/// The most characters a title may have (`Task.title`'s `max_len`).
pub const TITLE_MAX_CHARS: usize = rules::TASK_TITLE_MAX_LEN;
/// The most characters a description may have (`Task.description`'s `max_len`).
pub const DESCRIPTION_MAX_CHARS: usize = rules::TASK_DESCRIPTION_MAX_LEN;
/// The page size used when a request gives none.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// The largest page served; larger requests are served this many.
pub const MAX_PAGE_SIZE: usize = 500;

/// A task title: trimmed, 1 to [`TITLE_MAX_CHARS`] characters, no NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskTitle(String);

impl TaskTitle {
    /// Trims and checks `raw`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let title = raw.trim();
        if title.is_empty() {
            return Err("must not be empty".into());
        }
        if title.chars().count() > TITLE_MAX_CHARS {
            return Err(format!("must be at most {TITLE_MAX_CHARS} characters"));
        }
        if title.contains('\0') {
            return Err("must not contain NUL characters".into());
        }
        Ok(TaskTitle(title.to_owned()))
    }

    /// The title text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A create's idempotency key (AIP-155): 1 to [`RequestId::MAX_LEN`] visible
/// ASCII characters (the contract's pattern `^[!-~]*$`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// The longest request id accepted.
    pub const MAX_LEN: usize = rules::CREATE_TASK_REQUEST_REQUEST_ID_MAX_LEN;

    /// Checks `raw`; an empty string means "no request id".
    pub fn parse(raw: &str) -> Result<Option<Self>, String> {
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be visible ASCII characters (a UUID is a good choice)".into());
        }
        Ok(Some(RequestId(raw.to_owned())))
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An etag (AIP-154) as the service hands it out: the task's version in
/// decimal. Quotes and a weak `W/` prefix, as HTTP writes them, are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Etag(pub i64);

impl Etag {
    /// Parses `raw`; an empty string means "unconditional".
    pub fn parse(raw: &str) -> Result<Option<Self>, String> {
        let text = raw.trim();
        let text = text.strip_prefix("W/").unwrap_or(text);
        let text = text.trim_matches('"');
        if text.is_empty() {
            return if raw.trim().is_empty() { Ok(None) } else { Err("is not an etag this service issued".into()) };
        }
        match text.parse::<i64>() {
            Ok(version) if version > 0 => Ok(Some(Etag(version))),
            _ => Err("is not an etag this service issued".into()),
        }
    }

    /// The etag text for a task at `version`.
    pub fn render(version: i64) -> String {
        version.to_string()
    }
}

/// A task description: at most [`DESCRIPTION_MAX_CHARS`] characters, no NUL;
/// may be empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskDescription(String);

impl TaskDescription {
    /// Checks `raw` (kept as given, not trimmed: it is free text).
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.chars().count() > DESCRIPTION_MAX_CHARS {
            return Err(format!("must be at most {DESCRIPTION_MAX_CHARS} characters"));
        }
        if raw.contains('\0') {
            return Err("must not contain NUL characters".into());
        }
        Ok(TaskDescription(raw.to_owned()))
    }

    /// The description text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a task stands; stored as `todo`, `in_progress` or `done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Not started; the default.
    #[default]
    Todo,
    /// Being worked on.
    InProgress,
    /// Finished.
    Done,
}

impl TaskStatus {
    /// Reads the proto enum value: `Ok(None)` for UNSPECIFIED, an error for a
    /// number the contract does not define.
    pub fn from_proto(value: i32) -> Result<Option<Self>, String> {
        use taskgate_proto::task::v1::TaskStatus as P;
        match P::try_from(value) {
            Ok(P::Unspecified) => Ok(None),
            Ok(P::Todo) => Ok(Some(TaskStatus::Todo)),
            Ok(P::InProgress) => Ok(Some(TaskStatus::InProgress)),
            Ok(P::Done) => Ok(Some(TaskStatus::Done)),
            Err(_) => Err(format!("unknown status {value}")),
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> i32 {
        use taskgate_proto::task::v1::TaskStatus as P;
        match self {
            TaskStatus::Todo => P::Todo as i32,
            TaskStatus::InProgress => P::InProgress as i32,
            TaskStatus::Done => P::Done as i32,
        }
    }

    /// The value stored in the `status` column.
    pub fn as_db(self) -> &'static str {
        match self {
            TaskStatus::Todo => "todo",
            TaskStatus::InProgress => "in_progress",
            TaskStatus::Done => "done",
        }
    }

    /// Reads the `status` column.
    pub fn from_db(value: &str) -> Option<Self> {
        match value {
            "todo" => Some(TaskStatus::Todo),
            "in_progress" => Some(TaskStatus::InProgress),
            "done" => Some(TaskStatus::Done),
            _ => None,
        }
    }

    /// One byte naming an optional status filter, for page tokens.
    fn filter_byte(filter: Option<Self>) -> u8 {
        match filter {
            None => 0,
            Some(TaskStatus::Todo) => 1,
            Some(TaskStatus::InProgress) => 2,
            Some(TaskStatus::Done) => 3,
        }
    }
}

/// A task id: a UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskId(pub Uuid);

impl TaskId {
    /// Parses a UUID in any of its usual text forms.
    pub fn parse(raw: &str) -> Result<Self, String> {
        Uuid::parse_str(raw.trim()).map(TaskId).map_err(|_| "must be a UUID".to_owned())
    }
}

/// How many tasks a list page holds: 1 to 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(usize);

impl PageSize {
    /// 0 means the default (50); above 500 is served as 500 (AIP-158);
    /// negative is an error.
    pub fn parse(raw: i32) -> Result<Self, String> {
        match raw {
            n if n < rules::LIST_TASKS_REQUEST_PAGE_SIZE_GTE => Err("must not be negative".into()),
            0 => Ok(PageSize(DEFAULT_PAGE_SIZE)),
            n => Ok(PageSize((n as usize).min(MAX_PAGE_SIZE))),
        }
    }

    /// The size.
    pub fn get(self) -> usize {
        self.0
    }
}

/// Where the next page starts: just after the task with this
/// `(created_at, id)` in newest-first order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The last returned task's creation time.
    pub created_at: DateTime<Utc>,
    /// The last returned task's id, the tie-breaker.
    pub id: Uuid,
}

/// An opaque page token: a cursor and the status filter it was issued for.
///
/// Encoded as base64url of `version (1) | filter (1) | created_at micros (8)
/// | id (16) | check (4)`, where `check` is the first bytes of SHA-256 over
/// the rest. The check catches damaged or hand-edited tokens; it is not a
/// signature, and needs not be one: a forged cursor can only move within the
/// caller's own tasks, since every query is scoped to the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageToken {
    /// Where the next page starts.
    pub cursor: Cursor,
    /// The status filter of the listing it continues.
    pub filter: Option<TaskStatus>,
}

/// The token format version.
const TOKEN_VERSION: u8 = 1;
/// Bytes in a decoded token.
const TOKEN_LEN: usize = 1 + 1 + 8 + 16 + 4;

impl PageToken {
    /// The opaque text form.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(TOKEN_LEN);
        bytes.push(TOKEN_VERSION);
        bytes.push(TaskStatus::filter_byte(self.filter));
        bytes.extend_from_slice(&self.cursor.created_at.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(self.cursor.id.as_bytes());
        let check = Sha256::digest(&bytes);
        bytes.extend_from_slice(&check[..4]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes a token and checks it continues a listing with `filter`.
    pub fn decode(raw: &str, filter: Option<TaskStatus>) -> Result<Self, String> {
        let bytes = URL_SAFE_NO_PAD.decode(raw.trim()).map_err(|_| "malformed page token".to_owned())?;
        if bytes.len() != TOKEN_LEN || bytes[0] != TOKEN_VERSION {
            return Err("malformed page token".into());
        }
        let (body, check) = bytes.split_at(TOKEN_LEN - 4);
        if Sha256::digest(body)[..4] != *check {
            return Err("malformed page token".into());
        }
        if body[1] != TaskStatus::filter_byte(filter) {
            return Err("page token was issued for a different status filter".into());
        }
        let micros = i64::from_be_bytes(body[2..10].try_into().map_err(|_| "malformed page token".to_owned())?);
        let created_at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or("malformed page token")?;
        let id = Uuid::from_slice(&body[10..26]).map_err(|_| "malformed page token".to_owned())?;
        Ok(PageToken { cursor: Cursor { created_at, id }, filter })
    }
}

/// A checked ListTasks request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListQuery {
    /// Tasks per page.
    pub page_size: PageSize,
    /// Only this status, or all.
    pub filter: Option<TaskStatus>,
    /// Where to continue, or `None` for the first page.
    pub after: Option<Cursor>,
}

impl ListQuery {
    /// Validates every field, reporting each bad one.
    pub fn parse(page_size: i32, page_token: &str, status: i32) -> Result<Self, TaskError> {
        let mut violations = Vec::new();
        let size = PageSize::parse(page_size).map_err(|e| violations.push(("page_size", e))).ok();
        let filter = TaskStatus::from_proto(status).map_err(|e| violations.push(("status", e))).ok();
        let after = match (filter, page_token.is_empty()) {
            (_, true) => None,
            (Some(filter), false) => PageToken::decode(page_token, filter)
                .map_err(|e| violations.push(("page_token", e)))
                .ok()
                .map(|t| t.cursor),
            // The status itself was bad; the token cannot be checked against it.
            (None, false) => None,
        };
        match (size, filter) {
            (Some(page_size), Some(filter)) if violations.is_empty() => Ok(ListQuery { page_size, filter, after }),
            _ => Err(TaskError::InvalidArgument(violations)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule declared in task.proto, read from the descriptors at run time.
    fn declared(message: &str, field: &str, rule: &str) -> prost_reflect::Value {
        taskgate_common::validate::declared_rule(&format!("taskgate.task.v1.{message}"), field, rule)
            .unwrap_or_else(|| panic!("{message}.{field} declares no {rule}"))
    }

    #[test]
    fn the_domain_limits_are_the_rules_declared_in_the_proto() {
        use prost_reflect::Value;
        let len = |n: usize| Value::U64(n as u64);
        assert_eq!(declared("Task", "title", "string.max_len"), len(TITLE_MAX_CHARS));
        assert_eq!(declared("Task", "description", "string.max_len"), len(DESCRIPTION_MAX_CHARS));
        assert_eq!(declared("CreateTaskRequest", "request_id", "string.max_len"), len(RequestId::MAX_LEN));
        assert_eq!(declared("ListTasksRequest", "page_size", "int32.gte"), Value::I32(0));
        assert_eq!(declared("GetTaskRequest", "id", "string.uuid"), Value::Bool(true));
        assert_eq!(declared("DeleteTaskRequest", "id", "string.uuid"), Value::Bool(true));
        // And the domain types draw the line exactly there.
        assert!(TaskTitle::parse(&"t".repeat(TITLE_MAX_CHARS)).is_ok());
        assert!(TaskTitle::parse(&"t".repeat(TITLE_MAX_CHARS + 1)).is_err());
        assert!(TaskDescription::parse(&"d".repeat(DESCRIPTION_MAX_CHARS)).is_ok());
        assert!(TaskDescription::parse(&"d".repeat(DESCRIPTION_MAX_CHARS + 1)).is_err());
        assert!(RequestId::parse(&"r".repeat(RequestId::MAX_LEN)).is_ok());
        assert!(PageSize::parse(0).is_ok() && PageSize::parse(-1).is_err());
        // The pattern is the domain's "visible ASCII".
        assert_eq!(declared("CreateTaskRequest", "request_id", "string.pattern"), Value::String("^[!-~]*$".into()));
        assert!((0u8..=127).filter(u8::is_ascii_graphic).eq(b'!'..=b'~'));
    }

    #[test]
    fn etags_parse_with_or_without_http_quoting() {
        assert_eq!(Etag::parse("").expect("empty"), None);
        assert_eq!(Etag::parse("7").expect("bare"), Some(Etag(7)));
        assert_eq!(Etag::parse("\"7\"").expect("quoted"), Some(Etag(7)));
        assert_eq!(Etag::parse("W/\"7\"").expect("weak"), Some(Etag(7)));
        assert!(Etag::parse("abc").is_err());
        assert!(Etag::parse("0").is_err());
        assert!(Etag::parse("\"\"").is_err());
    }

    #[test]
    fn request_ids_are_short_visible_ascii() {
        assert_eq!(RequestId::parse("").expect("empty"), None);
        assert!(RequestId::parse("6f1d0b5e-8c1a-4a53-9d7e-2b8e0d8c1a11").expect("uuid").is_some());
        assert!(RequestId::parse("has space").is_err());
        assert!(RequestId::parse(&"x".repeat(RequestId::MAX_LEN + 1)).is_err());
    }

    #[test]
    fn titles_are_trimmed_and_bounded() {
        assert_eq!(TaskTitle::parse("  buy milk ").expect("valid").as_str(), "buy milk");
        assert!(TaskTitle::parse("   ").is_err());
        assert!(TaskTitle::parse("").is_err());
        assert!(TaskTitle::parse(&"é".repeat(TITLE_MAX_CHARS)).is_ok());
        assert!(TaskTitle::parse(&"é".repeat(TITLE_MAX_CHARS + 1)).is_err());
        assert!(TaskTitle::parse("a\0b").is_err());
    }

    #[test]
    fn descriptions_are_bounded_in_characters() {
        assert!(TaskDescription::parse("").is_ok());
        assert!(TaskDescription::parse(&"ü".repeat(DESCRIPTION_MAX_CHARS)).is_ok());
        assert!(TaskDescription::parse(&"a".repeat(DESCRIPTION_MAX_CHARS + 1)).is_err());
    }

    #[test]
    fn statuses_round_trip_and_unknown_numbers_are_rejected() {
        for s in [TaskStatus::Todo, TaskStatus::InProgress, TaskStatus::Done] {
            assert_eq!(TaskStatus::from_proto(s.to_proto()), Ok(Some(s)));
            assert_eq!(TaskStatus::from_db(s.as_db()), Some(s));
        }
        assert_eq!(TaskStatus::from_proto(0), Ok(None));
        assert!(TaskStatus::from_proto(9).is_err());
    }

    #[test]
    fn page_sizes_default_cap_and_reject_negatives() {
        assert_eq!(PageSize::parse(0).expect("ok").get(), 50);
        assert_eq!(PageSize::parse(7).expect("ok").get(), 7);
        assert_eq!(PageSize::parse(100_000).expect("ok").get(), 500);
        assert!(PageSize::parse(-1).is_err());
    }

    #[test]
    fn page_tokens_round_trip_and_detect_tampering() {
        let token = PageToken {
            cursor: Cursor {
                created_at: DateTime::<Utc>::from_timestamp_micros(1_700_000_000_123_456).expect("time"),
                id: Uuid::now_v7(),
            },
            filter: Some(TaskStatus::Done),
        };
        let text = token.encode();
        assert_eq!(PageToken::decode(&text, Some(TaskStatus::Done)), Ok(token));
        assert!(PageToken::decode(&text, None).is_err(), "another filter");
        let mut bytes = URL_SAFE_NO_PAD.decode(&text).expect("b64");
        bytes[5] ^= 1;
        assert!(PageToken::decode(&URL_SAFE_NO_PAD.encode(bytes), Some(TaskStatus::Done)).is_err());
        assert!(PageToken::decode("not a token", None).is_err());
        assert!(PageToken::decode("", None).is_err());
    }

    #[test]
    fn list_queries_report_every_bad_field() {
        let Err(TaskError::InvalidArgument(v)) = ListQuery::parse(-1, "zzz", 0) else {
            panic!("expected invalid argument");
        };
        let fields: Vec<_> = v.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["page_size", "page_token"]);
        let q = ListQuery::parse(0, "", 3).expect("valid");
        assert_eq!(q.filter, Some(TaskStatus::Done));
        assert_eq!(q.page_size.get(), 50);
    }
}
