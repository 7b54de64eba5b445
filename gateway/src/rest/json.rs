//! The JSON form of the contract's messages on the REST surface, by one
//! general rule instead of per-message code: proto3 JSON (prost-reflect's
//! serializer and deserializer) with
//!
//! - proto field names (`refresh_token`, not `refreshToken`);
//! - every field present in responses: a field without presence carries its
//!   default, a field with presence (proto3 `optional`, messages) is `null`
//!   when unset;
//! - enum values by their short lowercase name: the value's name without the
//!   enum's own name as prefix (`TASK_STATUS_IN_PROGRESS` is `in_progress`);
//!   requests may name any value but the zero one;
//! - 64-bit integers as strings and times in RFC 3339, as proto3 JSON has them.
//!
//! Requests are held to the contract: an unknown field, a `null`, an enum
//! name that does not exist or a value of the wrong type is a 400 whose
//! BadRequest detail names the field.

use std::fmt::Write as _;

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use prost_reflect::{
    DeserializeOptions, DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage as _, SerializeOptions, Value as ProtoValue,
};
use serde::{Serialize, Serializer, ser::SerializeMap as _};
use serde_json::{Map, Value};
use taskgate_common::{
    status::{invalid_field, invalid_fields},
    validate::field_name,
};
use taskgate_proto::contract::{is_well_known, short_name};
use tonic::Status;

use crate::rest::error::RestError;

/// `message` as REST JSON, as a value (for reading single fields);
/// INTERNAL when it cannot be written (see [`to_vec`]).
pub fn render(message: &DynamicMessage) -> Result<Value, Status> {
    serde_json::to_value(Rest(message)).map_err(unwritable)
}

/// `message` as REST JSON text, written straight from the message (no
/// intermediate JSON tree). INTERNAL when the message has no JSON form (a
/// backend's timestamp out of proto3 JSON's range): a fault of the service,
/// never answered as an empty success.
pub fn to_vec(message: &DynamicMessage) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(&Rest(message)).map_err(unwritable)
}

/// The status of a reply that cannot be written as JSON.
fn unwritable(error: serde_json::Error) -> Status {
    Status::internal(format!("the backend's reply has no JSON form: {error}"))
}

/// The options of prost-reflect's proto3 JSON serializer that match the
/// REST rules, for the well-known types it writes for us.
fn proto3_options() -> SerializeOptions {
    SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false).stringify_64_bit_integers(true)
}

/// A message serialised by the REST rules: every field by its proto name,
/// `null` for an unset field with presence, enums by short name, 64-bit
/// integers as strings; the well-known types (timestamps and the like) as
/// proto3 JSON has them, by prost-reflect's serializer.
struct Rest<'a>(&'a DynamicMessage);

impl Serialize for Rest<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let message = self.0;
        let desc = message.descriptor();
        if desc.full_name() == "google.protobuf.Timestamp" {
            return timestamp(message, serializer);
        }
        if is_well_known(&desc) {
            return message.serialize_with_options(serializer, &proto3_options());
        }
        let mut map = serializer.serialize_map(None)?;
        for field in desc.fields() {
            if field.supports_presence() && !message.has_field(&field) {
                map.serialize_entry(field.name(), &())?;
            } else {
                map.serialize_entry(field.name(), &Field { field: &field, value: &message.get_field(&field) })?;
            }
        }
        map.end()
    }
}

/// The range of `google.protobuf.Timestamp` in proto3 JSON, in seconds from
/// the Unix epoch: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// A `google.protobuf.Timestamp` as proto3 JSON writes it (RFC 3339, `Z`,
/// 0, 3, 6 or 9 digits of fraction: prost-types' formatting, with
/// prost-reflect's range check), read straight from the message's two
/// fields. prost-reflect's serializer first encodes the message and decodes
/// it again as a `prost_types::Timestamp`: with two timestamps per task, that
/// was a tenth of the gateway's CPU time on a REST list.
fn timestamp<S: Serializer>(message: &DynamicMessage, serializer: S) -> Result<S::Ok, S::Error> {
    let seconds = message.get_field_by_number(1).and_then(|v| v.as_i64()).unwrap_or_default();
    let nanos = message.get_field_by_number(2).and_then(|v| v.as_i32()).unwrap_or_default();
    if !TIMESTAMP_SECONDS.contains(&seconds) {
        return Err(serde::ser::Error::custom("timestamp out of range"));
    }
    // "-0001-01-01T00:00:00.000000000Z" is 31 bytes: one allocation, one escaped write.
    let mut text = String::with_capacity(32);
    let _ = write!(text, "{}", prost_types::Timestamp { seconds, nanos });
    serializer.serialize_str(&text)
}

/// The value of one field: a list, a map or a single value.
struct Field<'a> {
    field: &'a FieldDescriptor,
    value: &'a ProtoValue,
}

impl Serialize for Field<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.value {
            ProtoValue::List(items) => {
                let kind = self.field.kind();
                serializer.collect_seq(items.iter().map(|value| Single { kind: &kind, value }))
            }
            ProtoValue::Map(entries) => {
                let kind = match self.field.kind() {
                    Kind::Message(entry) => entry.map_entry_value_field().kind(),
                    kind => kind,
                };
                serializer
                    .collect_map(entries.iter().map(|(key, value)| (MapKeyText(key), Single { kind: &kind, value })))
            }
            value => Single { kind: &self.field.kind(), value }.serialize(serializer),
        }
    }
}

/// One value of kind `kind`.
struct Single<'a> {
    kind: &'a Kind,
    value: &'a ProtoValue,
}

impl Serialize for Single<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.value {
            ProtoValue::Bool(b) => serializer.serialize_bool(*b),
            ProtoValue::I32(n) => serializer.serialize_i32(*n),
            ProtoValue::U32(n) => serializer.serialize_u32(*n),
            ProtoValue::I64(n) => serializer.collect_str(n),
            ProtoValue::U64(n) => serializer.collect_str(n),
            ProtoValue::F32(n) => float(serializer, f64::from(*n)),
            ProtoValue::F64(n) => float(serializer, *n),
            ProtoValue::String(s) => serializer.serialize_str(s),
            ProtoValue::Bytes(b) => serializer.serialize_str(&BASE64.encode(b)),
            ProtoValue::EnumNumber(n) => match self.kind {
                Kind::Enum(e) => match e.get_value(*n) {
                    Some(v) => serializer.serialize_str(&short_name(e, v.name())),
                    None => serializer.serialize_i32(*n),
                },
                _ => serializer.serialize_i32(*n),
            },
            ProtoValue::Message(m) => Rest(m).serialize(serializer),
            // Nested lists and maps do not exist in protobuf.
            ProtoValue::List(_) | ProtoValue::Map(_) => serializer.serialize_unit(),
        }
    }
}

/// A float as proto3 JSON writes it: a number, or `"NaN"`, `"Infinity"`,
/// `"-Infinity"`.
fn float<S: Serializer>(serializer: S, n: f64) -> Result<S::Ok, S::Error> {
    match n {
        n if n.is_nan() => serializer.serialize_str("NaN"),
        f64::INFINITY => serializer.serialize_str("Infinity"),
        f64::NEG_INFINITY => serializer.serialize_str("-Infinity"),
        n => serializer.serialize_f64(n),
    }
}

/// A map key as JSON object keys are: text.
struct MapKeyText<'a>(&'a MapKey);

impl Serialize for MapKeyText<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            MapKey::Bool(b) => serializer.collect_str(b),
            MapKey::I32(n) => serializer.collect_str(n),
            MapKey::I64(n) => serializer.collect_str(n),
            MapKey::U32(n) => serializer.collect_str(n),
            MapKey::U64(n) => serializer.collect_str(n),
            MapKey::String(s) => serializer.serialize_str(s),
        }
    }
}

/// Calls `visit` with the kind of each single value `value` holds for
/// `field`: the value itself, each element of a list, each value of a map.
fn each_value(field: &FieldDescriptor, value: &mut Value, visit: &mut impl FnMut(&Kind, &mut Value)) {
    let kind = if field.is_map() {
        match field.kind() {
            Kind::Message(entry) => entry.map_entry_value_field().kind(),
            kind => kind,
        }
    } else {
        field.kind()
    };
    match value {
        Value::Array(items) if field.is_list() => items.iter_mut().for_each(|v| visit(&kind, v)),
        Value::Object(entries) if field.is_map() => entries.values_mut().for_each(|v| visit(&kind, v)),
        value => visit(&kind, value),
    }
}

/// The value of `enum_` whose REST name is `name`; never the zero value,
/// which means "not given".
fn enum_value(enum_: &EnumDescriptor, name: &str) -> Option<prost_reflect::EnumValueDescriptor> {
    enum_.values().filter(|v| v.number() != 0).find(|v| short_name(enum_, v.name()) == name)
}

/// The REST names a request may use for `enum_`, for error messages.
fn enum_names(enum_: &EnumDescriptor) -> String {
    let names: Vec<String> = enum_.values().filter(|v| v.number() != 0).map(|v| short_name(enum_, v.name())).collect();
    names.join(", ")
}

/// Reads a JSON object into a `desc` message, refusing unknown fields,
/// `null`s, unknown enum names and wrongly typed values by name.
pub fn parse(desc: &MessageDescriptor, object: Map<String, Value>) -> Result<DynamicMessage, RestError> {
    let mut object = Value::Object(object);
    let mut violations = Vec::new();
    proto_names(desc, &mut object, "", &mut violations);
    if !violations.is_empty() {
        return Err(invalid_fields(violations).into());
    }
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(object, &mut track);
    DynamicMessage::deserialize_with_options(desc.clone(), deserializer, &options).map_err(|e| {
        let path = track.path().to_string();
        invalid_field(field_name(&path), format!("has the wrong type or form: {e}")).into()
    })
}

/// Checks `value` against `desc` and rewrites REST enum names to proto
/// names, collecting `(field, problem)` for what cannot be read. `path` is
/// where `value` sits, for nested names.
fn proto_names(desc: &MessageDescriptor, value: &mut Value, path: &str, violations: &mut Vec<(String, String)>) {
    let Value::Object(fields) = value else {
        violations.push((field_name(path).to_owned(), "must be a JSON object".to_owned()));
        return;
    };
    for (name, value) in fields.iter_mut() {
        let Some(field) = desc.get_field_by_name(name) else {
            violations.push((name.clone(), "unknown field".to_owned()));
            continue;
        };
        if value.is_null() {
            violations.push((name.clone(), "must not be null".to_owned()));
            continue;
        }
        each_value(&field, value, &mut |kind, value| match kind {
            Kind::Enum(e) => match value.as_str().and_then(|n| enum_value(e, n)) {
                Some(v) => *value = Value::String(v.name().to_owned()),
                None => violations.push((name.clone(), format!("must be one of {}", enum_names(e)))),
            },
            Kind::Message(m) if !is_well_known(m) => proto_names(m, value, name, violations),
            _ => {}
        });
    }
}

/// Reads `text` (a query parameter, path variable or header) as a value of
/// `field`; the error says what was expected.
pub fn parse_text(field: &FieldDescriptor, text: &str) -> Result<ProtoValue, String> {
    let number = || format!("must be a whole number in the range of {}", kind_name(&field.kind()));
    Ok(match field.kind() {
        Kind::String => ProtoValue::String(text.to_owned()),
        Kind::Bool => match text {
            "true" => ProtoValue::Bool(true),
            "false" => ProtoValue::Bool(false),
            _ => return Err("must be true or false".into()),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => ProtoValue::I32(text.parse().map_err(|_| number())?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => ProtoValue::I64(text.parse().map_err(|_| number())?),
        Kind::Uint32 | Kind::Fixed32 => ProtoValue::U32(text.parse().map_err(|_| number())?),
        Kind::Uint64 | Kind::Fixed64 => ProtoValue::U64(text.parse().map_err(|_| number())?),
        Kind::Double => ProtoValue::F64(text.parse().map_err(|_| "must be a number".to_owned())?),
        Kind::Float => ProtoValue::F32(text.parse().map_err(|_| "must be a number".to_owned())?),
        Kind::Enum(e) => match enum_value(&e, text) {
            Some(v) => ProtoValue::EnumNumber(v.number()),
            None => return Err(format!("must be one of {}", enum_names(&e))),
        },
        Kind::Bytes | Kind::Message(_) => return Err("cannot be given as text".into()),
    })
}

/// The proto type name of a scalar kind, for messages.
fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "int32",
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "int64",
        Kind::Uint32 | Kind::Fixed32 => "uint32",
        Kind::Uint64 | Kind::Fixed64 => "uint64",
        _ => "its type",
    }
}

/// Sets the field at the dotted `path` of `message` (a repeated field gets
/// `value` appended), creating the messages on the way.
pub fn set_at(message: &mut DynamicMessage, path: &str, value: ProtoValue) {
    let (first, rest) = match path.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (path, None),
    };
    let Some(field) = message.descriptor().get_field_by_name(first) else { return };
    match rest {
        Some(rest) => {
            if let ProtoValue::Message(inner) = message.get_field_mut(&field) {
                set_at(inner, rest, value);
            }
        }
        None if field.is_list() => {
            if let ProtoValue::List(items) = message.get_field_mut(&field) {
                items.push(value);
            }
        }
        None => message.set_field(&field, value),
    }
}

/// The non-empty string at the dotted `path` of `message`, if any.
pub fn string_at(message: &DynamicMessage, path: &str) -> Option<String> {
    match path.split_once('.') {
        Some((first, rest)) => match message.get_field_by_name(first)?.as_ref() {
            ProtoValue::Message(inner) => string_at(inner, rest),
            _ => None,
        },
        None => message.get_field_by_name(path)?.as_str().filter(|s| !s.is_empty()).map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use taskgate_proto::DESCRIPTOR_POOL;

    use super::*;

    fn message(name: &str) -> MessageDescriptor {
        DESCRIPTOR_POOL.get_message_by_name(name).expect("a contract message")
    }

    fn object(text: &str) -> Map<String, Value> {
        serde_json::from_str(text).expect("a JSON object")
    }

    fn field_of(error: RestError) -> String {
        let details = tonic_types::StatusExt::get_error_details(&error.status);
        details.bad_request().expect("a BadRequest detail").field_violations[0].field.clone()
    }

    #[test]
    fn enums_use_their_short_lowercase_names_both_ways() {
        let task = parse(&message("taskgate.task.v1.Task"), object(r#"{"title": "t", "status": "in_progress"}"#))
            .expect("a valid task");
        assert_eq!(task.get_field_by_name("status").and_then(|v| v.as_enum_number()), Some(2));
        assert_eq!(render(&task).expect("JSON")["status"], "in_progress");
        for bad in [r#""TASK_STATUS_TODO""#, r#""unspecified""#, "1", r#""blocked""#] {
            let text = format!(r#"{{"status": {bad}}}"#);
            let error = parse(&message("taskgate.task.v1.Task"), object(&text)).expect_err(bad);
            assert_eq!(field_of(error), "status", "{bad}");
        }
    }

    #[test]
    fn responses_have_every_field_with_null_for_unset_presence() {
        let user = DynamicMessage::new(message("taskgate.auth.v1.User"));
        let json = render(&user).expect("JSON");
        assert_eq!(json["id"], "");
        assert_eq!(json["email"], Value::Null);
        assert_eq!(json["created_at"], Value::Null);
        let list = DynamicMessage::new(message("taskgate.task.v1.ListTasksResponse"));
        assert_eq!(
            render(&list).expect("JSON"),
            serde_json::json!({"tasks": [], "next_page_token": "", "version": "0"})
        );
    }

    #[test]
    fn a_page_is_written_as_proto3_json_with_the_rest_rules() {
        let page = parse(
            &message("taskgate.task.v1.ListTasksResponse"),
            object(
                r#"{"tasks": [{"id": "t1", "title": "a \"quoted\" title", "status": "done",
                               "created_at": "2026-12-06T10:00:00.5Z", "etag": "3"},
                              {"id": "t2", "title": "b"}],
                    "version": "9223372036854775807"}"#,
            ),
        )
        .expect("a valid page");
        let text = to_vec(&page).expect("JSON");
        let json: Value = serde_json::from_slice(&text).expect("the writer writes JSON");
        assert_eq!(
            json,
            serde_json::json!({
                "tasks": [
                    {"id": "t1", "title": "a \"quoted\" title", "description": "", "status": "done",
                     "created_at": "2026-12-06T10:00:00.500Z", "updated_at": null, "etag": "3"},
                    {"id": "t2", "title": "b", "description": "", "status": "unspecified",
                     "created_at": null, "updated_at": null, "etag": ""},
                ],
                "next_page_token": "",
                "version": "9223372036854775807",
            })
        );
        assert_eq!(render(&page).expect("JSON"), json, "the value and the text agree");
    }

    #[test]
    fn timestamps_are_written_as_prost_reflect_writes_them() {
        let created_at = message("taskgate.task.v1.Task").get_field_by_name("created_at").expect("created_at");
        let Kind::Message(desc) = created_at.kind() else { panic!("a message field") };
        for (seconds, nanos) in [
            (0, 0),
            (1_765_015_200, 500_000_000),
            (1_765_015_200, 123_000),
            (1_765_015_200, 1),
            (-1, 999_999_999),
            (-62_135_596_800, 0),
            (253_402_300_799, 999_999_999),
            (951_782_400, 0),
        ] {
            let mut timestamp = DynamicMessage::new(desc.clone());
            timestamp.set_field_by_name("seconds", ProtoValue::I64(seconds));
            timestamp.set_field_by_name("nanos", ProtoValue::I32(nanos));
            let ours = to_vec(&timestamp).expect("in range");
            let mut theirs = Vec::new();
            timestamp
                .serialize_with_options(&mut serde_json::Serializer::new(&mut theirs), &proto3_options())
                .expect("in range");
            assert_eq!(String::from_utf8(ours), String::from_utf8(theirs), "{seconds} s {nanos} ns");
        }
        let mut before_year_1 = DynamicMessage::new(desc);
        before_year_1.set_field_by_name("seconds", ProtoValue::I64(-62_135_596_801));
        assert_eq!(to_vec(&before_year_1).expect_err("out of range").code(), tonic::Code::Internal);
    }

    #[test]
    fn a_reply_with_no_json_form_is_an_internal_error_not_an_empty_body() {
        let mut task = DynamicMessage::new(message("taskgate.task.v1.Task"));
        let created_at = task.descriptor().get_field_by_name("created_at").expect("created_at");
        let Kind::Message(timestamp) = created_at.kind() else { panic!("a message field") };
        let mut year_10000 = DynamicMessage::new(timestamp);
        year_10000.set_field_by_name("seconds", ProtoValue::I64(253_402_300_800));
        task.set_field(&created_at, ProtoValue::Message(year_10000));
        assert_eq!(to_vec(&task).expect_err("out of range").code(), tonic::Code::Internal);
        assert_eq!(render(&task).expect_err("out of range").code(), tonic::Code::Internal);
    }

    #[test]
    fn requests_name_the_field_that_is_wrong() {
        let task = message("taskgate.task.v1.Task");
        for (text, field) in [
            (r#"{"title": 5}"#, "title"),
            (r#"{"title": "t", "owner": "me"}"#, "owner"),
            (r#"{"title": null}"#, "title"),
            (r#"{"created_at": "yesterday"}"#, "created_at"),
        ] {
            assert_eq!(field_of(parse(&task, object(text)).expect_err(text)), field, "{text}");
        }
        assert!(parse(&task, object(r#"{"refreshToken": "x"}"#)).is_err(), "JSON names are not accepted");
    }

    #[test]
    fn text_is_read_as_the_fields_type() {
        let list = message("taskgate.task.v1.ListTasksRequest");
        let size = list.get_field_by_name("page_size").expect("page_size");
        assert_eq!(parse_text(&size, "20"), Ok(ProtoValue::I32(20)));
        for bad in ["", "ten", "1.5", "2147483648"] {
            assert!(parse_text(&size, bad).is_err(), "{bad}");
        }
        let status = list.get_field_by_name("status").expect("status");
        assert_eq!(parse_text(&status, "done"), Ok(ProtoValue::EnumNumber(3)));
        assert!(parse_text(&status, "").is_err());
    }

    #[test]
    fn nested_paths_are_set_and_read() {
        let mut update = DynamicMessage::new(message("taskgate.task.v1.UpdateTaskRequest"));
        set_at(&mut update, "task.id", ProtoValue::String("t1".into()));
        set_at(&mut update, "task.etag", ProtoValue::String("7".into()));
        assert_eq!(string_at(&update, "task.id").as_deref(), Some("t1"));
        assert_eq!(string_at(&update, "task.title"), None);
    }
}
