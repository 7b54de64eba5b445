//! The OpenAPI 3.1 description of a REST surface, generated from the
//! descriptors of its contract, as `protoc-gen-openapiv2` does for
//! grpc-gateway: the gateway serves [`document`] at `/openapi.json`, and a
//! test's own contract gets its document from [`generate`].
//!
//! [`generate`] makes one pass over the `google.api.http` bindings of a
//! descriptor pool, each of which becomes an operation, and one pass over the
//! messages and enums those operations reach, each of which becomes a schema
//! in `components/schemas`. Nothing here names an RPC, a field or a limit:
//!
//! - Paths and methods are the bindings; a variable is named by the last
//!   segment of its field path (`{task.id}` is `{id}`, see `taskgate_proto::contract::route_path`).
//! - Parameters: the path variables; for a binding whose body is not `*`,
//!   every scalar or enum request field the path and the body leave over, in
//!   the query; the request headers of the RPC's `taskgate.api.v1.rest`
//!   option (`If-Match`, `Idempotency-Key`, ...); `If-None-Match` on a GET
//!   with an `etag_field`; `cookies` on an RPC that sets session cookies.
//! - The request body is the body field's message, or for `*` the request
//!   minus its path fields, without OUTPUT_ONLY fields; `required` lists the
//!   REQUIRED fields, except in a PATCH, which changes the fields present.
//! - The success response has the option's `success_status` (200 when unset;
//!   204 has no body), the `response_body` field's message and the `ETag`,
//!   `Location`, `Set-Cookie` and `Cache-Control` headers the option
//!   declares; a server-streaming RPC answers Server-Sent Events. Errors are
//!   google.rpc.Status JSON, for the statuses the binding can cause, plus a
//!   `default`.
//! - `security` is the RPC's `taskgate.api.v1.policy` access; summaries and
//!   descriptions are the proto comments.
//! - Schemas follow the REST JSON rules: proto field names; in responses every
//!   field is present, `null` when a field with presence is unset; enum values
//!   by their name without the enum's prefix, lowercased; 64-bit integers as
//!   strings; Timestamp as RFC 3339, FieldMask as a comma-separated string.
//!   `buf.validate` rules become `minLength`, `maxLength`, `pattern`,
//!   `format`, `minimum` and the like. A message's output schema is named by
//!   its full name, its request forms with `-Input` and `-Patch`.
//!
//! Tests hold real responses to the document with the `jsonschema` crate
//! (`taskgate_test_support::openapi`). A copy is committed as
//! `gateway/static/openapi.json` for tools that want the document without a
//! running gateway; a test fails when it is stale (`TASKGATE_BLESS=1 cargo
//! test -p taskgate-openapi` rewrites it). CI should also run `python3 -m
//! openapi_spec_validator gateway/static/openapi.json`; the tests do not, to
//! keep `cargo test` free of Python.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::LazyLock,
};

use prost_reflect::{
    DescriptorPool, EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor, ReflectMessage as _,
    Value as Proto,
};
use serde_json::{Map, Value, json};
use taskgate_proto::{
    HttpRule,
    api::v1::{Access, HeaderField, HeaderFormat, SessionCookies},
    contract::{field_at, has_behavior, is_well_known, path_variables, route_path, short_name},
};

/// The contract's document, generated once.
static DOCUMENT: LazyLock<Value> = LazyLock::new(|| generate(&taskgate_proto::DESCRIPTOR_POOL));

/// The OpenAPI document of the contract (`taskgate_proto::DESCRIPTOR_POOL`),
/// generated on first use.
pub fn document() -> &'static Value {
    &DOCUMENT
}

/// The OpenAPI 3.1 document of every `google.api.http` binding in `pool`.
pub fn generate(pool: &DescriptorPool) -> Value {
    let mut schemas = Schemas::default();
    let (mut paths, mut tags, mut ids) = (Map::new(), BTreeMap::new(), BTreeSet::new());
    for rule in taskgate_proto::http_rules(pool) {
        let service = rule.descriptor.parent_service();
        tags.entry(service.name().to_owned()).or_insert_with(|| comment(&service.parent_file(), service.path()));
        let id = operation_id(&rule, &mut ids);
        let item = paths.entry(route_path(&rule.path)).or_insert_with(|| json!({}));
        item[rule.verb.to_ascii_lowercase()] = operation(&rule, id, &mut schemas);
    }
    let tags: Vec<Value> = tags.into_iter().map(|(name, about)| json!({"name": name, "description": about})).collect();
    let mut schemas = schemas.finish();
    schemas.extend(status_schemas());
    let responses: Map<String, Value> =
        ERRORS.iter().map(|(status, name, _)| ((*name).to_owned(), error_response(*status))).collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "taskgate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "taskgate's REST/JSON API: accounts, sessions and each user's tasks. \
                Every route is a transcoding of a gRPC method (`google.api.http`); errors are \
                google.rpc.Status JSON with the HTTP status of the gRPC code.",
            "license": { "name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0" },
        },
        "servers": [{ "url": "/" }],
        "tags": tags,
        "security": [{ "bearerAuth": [] }, { "cookieAuth": [] }],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "headers": {
                "ETag": {
                    "description": "The resource's entity tag, quoted (RFC 9110)",
                    "schema": { "type": "string" },
                },
                "SetCookie": {
                    "description": "With cookies=true: tg_access, tg_refresh (HttpOnly) and tg_csrf; when a session \
                        ends, the same three with Max-Age=0",
                    "schema": { "type": "string" },
                },
            },
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
                "cookieAuth": {
                    "type": "apiKey", "in": "cookie", "name": "tg_access",
                    "description": "The cookie set by login?cookies=true; writes must also send an \
                        x-csrf-token header equal to the tg_csrf cookie",
                },
            },
        },
    })
}

/// A unique `operationId` for `rule`: the RPC name in lowerCamel case, with
/// the verb appended for a method's further bindings (`updateTaskPatch`).
fn operation_id(rule: &HttpRule, taken: &mut BTreeSet<String>) -> String {
    let mut chars = rule.method.chars();
    let base: String = chars.next().map(|c| c.to_ascii_lowercase()).into_iter().chain(chars).collect();
    let verb =
        rule.verb.get(..1).unwrap_or_default().to_owned() + &rule.verb.get(1..).unwrap_or_default().to_lowercase();
    let mut id = base.clone();
    for n in 1.. {
        if !taken.contains(&id) {
            break;
        }
        id = if n == 1 { format!("{base}{verb}") } else { format!("{base}{verb}{n}") };
    }
    taken.insert(id.clone());
    id
}

/// The OpenAPI operation object of `rule`.
fn operation(rule: &HttpRule, id: String, schemas: &mut Schemas) -> Value {
    let method = &rule.descriptor;
    let (rest, input) = (taskgate_proto::rest(method), method.input());
    let access = taskgate_proto::policy(method).access();
    let cookies = rest.session_cookies();
    let text = comment(&method.parent_file(), method.path());
    let summary = first_sentence(&text);

    // What only the REST option says, in words, after the RPC's own comment.
    let mut notes = Vec::new();
    if cookies == SessionCookies::Set {
        notes.push("With `?cookies=true` the tokens are also set as the session cookies.".to_owned());
    } else if cookies == SessionCookies::Clear {
        notes.push("The session cookies are deleted whatever the outcome.".to_owned());
    }
    if !rest.refresh_cookie_field.is_empty() {
        let field = &rest.refresh_cookie_field;
        notes.push(format!(
            "The refresh cookie fills `{field}` when the request leaves it empty (with a matching \
            `x-csrf-token` header)."
        ));
    }
    notes.push(format!("Transcoded to `{}/{}`.", rule.service, rule.method));
    let description = if text.is_empty() { notes.join(" ") } else { format!("{text}\n\n{}", notes.join(" ")) };

    // Parameters: the path, the query, the headers.
    let variables = path_variables(&rule.path);
    let bound: Vec<&str> = variables.iter().map(String::as_str).collect();
    let mut parameters = Vec::new();
    for path in &bound {
        let Some(field) = field_at(&input, path) else { continue };
        let schema = describe(schemas.value(&field, Mode::Input, false), &field_comment(&field));
        parameters.push(parameter(path.rsplit('.').next().unwrap_or(path), "path", "", schema));
    }
    if rule.body != "*" {
        for field in input.fields() {
            let elsewhere = field.name() == rule.body || bound.contains(&field.name()) || output_only(&field);
            if !elsewhere && !matches!(field.kind(), Kind::Message(_)) {
                parameters.push(parameter(field.name(), "query", "", schemas.field(&field, Mode::Input)));
            }
        }
    }
    for header in &rest.headers {
        let field = field_at(&input, &header.field);
        let entity_tag = header.format() == HeaderFormat::EntityTag;
        let schema = match &field {
            Some(field) if !entity_tag => schemas.field(field, Mode::Input),
            _ => describe(json!({ "type": "string" }), &field.as_ref().map(field_comment).unwrap_or_default()),
        };
        let about = if entity_tag { "An entity tag (RFC 9110) or `*`; fills" } else { "Fills" };
        parameters.push(parameter(&header.header, "header", &format!("{about} `{}`.", header.field), schema));
    }
    if rule.verb == "GET" && !rest.etag_field.is_empty() {
        let about = "An entity tag the client has: 304 without a body while the resource still has it";
        parameters.push(parameter("If-None-Match", "header", about, json!({ "type": "string" })));
    }
    if cookies == SessionCookies::Set {
        let about = "`true` also sets the tg_access, tg_refresh and tg_csrf cookies (for browsers)";
        let schema = json!({ "type": "string", "enum": ["true", "false"], "default": "false" });
        parameters.push(parameter("cookies", "query", about, schema));
    }

    // The success response, with the headers the REST option declares.
    let status = if rest.success_status == 0 { 200 } else { rest.success_status };
    let mut success = json!({ "description": if summary.is_empty() { "Success" } else { summary.as_str() } });
    let output = method.output();
    if method.is_server_streaming() {
        let event = schemas.message_ref(&output, Mode::Output);
        success["description"] = json!(sse_description(output.full_name(), &rest.headers));
        success["content"] = json!({ "text/event-stream": { "schema": { "type": "string" } } });
        success["content"]["text/event-stream"]["x-event-data"] = event;
    } else if status != 204 {
        let schema = match output.get_field_by_name(&rule.response_body) {
            Some(field) if field.is_list() || field.is_map() => schemas.field(&field, Mode::Output),
            Some(field) => schemas.value(&field, Mode::Output, true),
            None => schemas.message_ref(&output, Mode::Output),
        };
        success["content"] = json!({ "application/json": { "schema": schema } });
    }
    let header_ref = |name: &str| json!({ "$ref": format!("#/components/headers/{name}") });
    let mut headers = Map::new();
    if !rest.etag_field.is_empty() {
        headers.insert("ETag".into(), header_ref("ETag"));
    }
    if !rest.location.is_empty() {
        let about = format!("The new resource's URL, `{}`", rest.location);
        headers.insert("Location".into(), json!({ "description": about, "schema": { "type": "string" } }));
    }
    if cookies != SessionCookies::Unspecified {
        headers.insert("Set-Cookie".into(), header_ref("SetCookie"));
    }
    if !rest.cache_control.is_empty() {
        let value = &rest.cache_control;
        let schema = json!({ "type": "string", "const": value });
        headers.insert("Cache-Control".into(), json!({ "description": format!("`{value}`"), "schema": schema }));
    }
    if !headers.is_empty() {
        success["headers"] = Value::Object(headers);
    }
    let mut responses = Map::new();
    responses.insert(status.to_string(), success);
    if rule.verb == "GET" && !rest.etag_field.is_empty() {
        let about = "If-None-Match names the current entity tag: not modified, no body";
        responses.insert("304".into(), json!({ "description": about, "headers": { "ETag": header_ref("ETag") } }));
    }

    // The errors: bad input, credentials, policy, the rate limit and the
    // backends anywhere; the others where the binding can cause them.
    let entity_tag = rest.headers.iter().any(|h| h.format() == HeaderFormat::EntityTag);
    for &(code, name, _) in ERRORS {
        let documented = match code {
            404 => !bound.is_empty() || matches!(access, Access::TokenRequired | Access::Unspecified),
            409 => entity_tag || (rule.verb == "POST" && status == 201),
            412 => entity_tag,
            413 | 415 => !rule.body.is_empty(),
            _ => true,
        };
        if !documented {
            continue;
        }
        let key = if code == 0 { "default".to_owned() } else { code.to_string() };
        let response = if cookies == SessionCookies::Clear {
            // The cookies are deleted with every answer: say so on errors too.
            let mut response = error_response(code);
            response["headers"]["Set-Cookie"] = header_ref("SetCookie");
            response
        } else {
            json!({ "$ref": format!("#/components/responses/{name}") })
        };
        responses.insert(key, response);
    }

    let tag = method.parent_service().name().to_owned();
    let mut object = json!({ "operationId": id, "summary": summary, "description": description, "tags": [tag] });
    object["responses"] = Value::Object(responses);
    if !parameters.is_empty() {
        object["parameters"] = Value::Array(parameters);
    }
    if !rule.body.is_empty() {
        let (schema, required) = request_body(rule, &rest.refresh_cookie_field, &bound, schemas);
        let content = json!({ "application/json": { "schema": schema } });
        object["requestBody"] = json!({ "required": required, "content": content });
    }
    match access {
        Access::Public => object["security"] = json!([]),
        Access::TokenOptional => object["security"] = json!([{}, { "bearerAuth": [] }, { "cookieAuth": [] }]),
        Access::TokenRequired | Access::Unspecified => {}
    }
    object
}

/// The request body schema of `rule` (whose body is not empty), and whether
/// a body is required: when the body is one REQUIRED field, or when `*` has
/// a REQUIRED field that the refresh cookie cannot fill.
fn request_body(rule: &HttpRule, cookie_field: &str, bound: &[&str], schemas: &mut Schemas) -> (Value, bool) {
    let input = rule.descriptor.input();
    let mode = if rule.verb == "PATCH" { Mode::Patch } else { Mode::Input };
    let field = input.get_field_by_name(&rule.body);
    let message = match &field {
        None => input.clone(),
        Some(f) => match f.kind() {
            Kind::Message(m) if !f.is_list() && !f.is_map() && !is_well_known(&m) => m,
            _ => return (schemas.field(f, mode), required(f)),
        },
    };
    // Path variables inside the body's message are left out of it.
    let prefix = format!("{}.", rule.body);
    let path_fields: Vec<String> = bound
        .iter()
        .filter_map(|path| if field.is_none() { Some(*path) } else { path.strip_prefix(prefix.as_str()) })
        .filter(|name| message.get_field_by_name(name).is_some_and(|f| !output_only(&f)))
        .map(str::to_owned)
        .collect();
    let schema = if path_fields.is_empty() {
        schemas.message_ref(&message, mode)
    } else {
        schemas.message(&message, mode, &path_fields)
    };
    let required = match &field {
        Some(field) => required(field),
        None => message
            .fields()
            .any(|f| required(&f) && f.name() != cookie_field && !path_fields.iter().any(|p| p == f.name())),
    };
    (schema, required)
}

/// A parameter object; its description is `about` then its schema's.
fn parameter(name: &str, place: &str, about: &str, mut schema: Value) -> Value {
    let own = schema.as_object_mut().and_then(|s| s.remove("description"));
    let description = format!("{about} {}", own.as_ref().and_then(Value::as_str).unwrap_or_default());
    let mut out = json!({ "name": name, "in": place, "required": place == "path", "schema": schema });
    if !description.trim().is_empty() {
        out["description"] = json!(description.trim());
    }
    out
}

/// What the success response of a server-streaming binding says: a Server-Sent
/// Events stream of `event` messages.
fn sse_description(event: &str, headers: &[HeaderField]) -> String {
    let resume = headers.iter().find(|h| h.header.eq_ignore_ascii_case("last-event-id")).map(|h| {
        format!(" Each event's `id` is where to resume: sent back as `Last-Event-ID`, it fills `{}`.", h.field)
    });
    format!(
        "A Server-Sent Events stream. Each event's `data` is a `{event}` in JSON (its schema is in the components) \
         and its `event` the kind of event; heartbeats are comments.{} A stream that fails ends with an `error` \
         event whose data is a google.rpc.Status (see the description for why); a failure before the stream \
         starts is an ordinary JSON error response.",
        resume.unwrap_or_default()
    )
}

/// How a message is used: each use has its own schema.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// In a response: every field present, fields with presence nullable.
    Output,
    /// In a request: no OUTPUT_ONLY fields; REQUIRED fields required.
    Input,
    /// In a PATCH request: like [`Mode::Input`], but nothing is required.
    Patch,
}

/// `components/schemas` while it is built: the schemas of the messages and
/// enums that the operations refer to, and those they refer to in turn.
#[derive(Default)]
struct Schemas {
    /// The schemas by name; a message's is `null` until [`Schemas::finish`]
    /// describes it.
    named: BTreeMap<String, Value>,
    /// The messages referred to and not described yet.
    pending: Vec<(String, MessageDescriptor, Mode)>,
}

impl Schemas {
    /// Describes every message referred to, transitively, and hands back the
    /// schemas.
    fn finish(mut self) -> Map<String, Value> {
        while let Some((name, message, mode)) = self.pending.pop() {
            let schema = self.message(&message, mode, &[]);
            self.named.insert(name, schema);
        }
        self.named.into_iter().collect()
    }

    /// A `$ref` to the schema of `message` used as `mode`.
    fn message_ref(&mut self, message: &MessageDescriptor, mode: Mode) -> Value {
        let suffix = match mode {
            Mode::Output => "",
            Mode::Input => "-Input",
            Mode::Patch => "-Patch",
        };
        let name = format!("{}{suffix}", message.full_name());
        if !self.named.contains_key(&name) {
            self.named.insert(name.clone(), Value::Null);
            self.pending.push((name.clone(), message.clone(), mode));
        }
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    /// The schema of `message` used as `mode`, without the `excluded` fields.
    fn message(&mut self, message: &MessageDescriptor, mode: Mode, excluded: &[String]) -> Value {
        let (mut properties, mut required) = (Map::new(), Vec::new());
        for field in message.fields() {
            if excluded.iter().any(|e| e == field.name()) || (mode != Mode::Output && output_only(&field)) {
                continue;
            }
            if mode == Mode::Output || (mode == Mode::Input && self::required(&field)) {
                required.push(field.name().to_owned());
            }
            properties.insert(field.name().to_owned(), self.field(&field, mode));
        }
        let mut schema = json!({ "type": "object", "properties": properties, "additionalProperties": false });
        if !required.is_empty() {
            schema["required"] = json!(required);
        }
        describe(schema, &comment(&message.parent_file(), message.path()))
    }

    /// The schema of `field`: a value, a list of values or a map, nullable in
    /// a response when the field has presence, described by its comment.
    fn field(&mut self, field: &FieldDescriptor, mode: Mode) -> Value {
        let schema = match field.kind() {
            Kind::Message(entry) if field.is_map() => {
                json!({ "type": "object", "additionalProperties": self.kind(&entry.map_entry_value_field().kind(), mode) })
            }
            _ if field.is_list() => {
                let mut list = Rules::of(field).list;
                list.extend([("type".into(), json!("array")), ("items".into(), self.value(field, mode, true))]);
                Value::Object(list)
            }
            _ if mode == Mode::Output && field.supports_presence() => nullable(self.value(field, mode, true)),
            _ => self.value(field, mode, true),
        };
        describe(schema, &field_comment(field))
    }

    /// The schema of one value of `field` with its `buf.validate` rules;
    /// with `allow_zero`, IGNORE_IF_ZERO_VALUE also lets the zero value through.
    fn value(&mut self, field: &FieldDescriptor, mode: Mode, allow_zero: bool) -> Value {
        let mut schema = self.kind(&field.kind(), mode);
        let rules = Rules::of(field);
        if let Some(object) = schema.as_object_mut()
            && !rules.keywords.is_empty()
        {
            if rules.ignore_if_zero && allow_zero {
                let zero = match field.kind() {
                    Kind::String | Kind::Bytes => json!(""),
                    Kind::Bool => json!(false),
                    Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => json!("0"),
                    _ => json!(0),
                };
                object.insert("anyOf".into(), json!([rules.keywords, { "const": zero }]));
            } else {
                object.extend(rules.keywords);
            }
        }
        describe(schema, &rules.notes.join(" "))
    }

    /// The schema of one value of `kind`.
    fn kind(&mut self, kind: &Kind, mode: Mode) -> Value {
        match kind {
            Kind::Double => json!({ "type": "number", "format": "double" }),
            Kind::Float => json!({ "type": "number", "format": "float" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX })
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({ "type": "integer", "format": "uint32", "minimum": u32::MIN, "maximum": u32::MAX })
            }
            // proto3 JSON writes 64-bit integers as strings (a double would
            // lose precision).
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({ "type": "string", "format": "int64", "pattern": "^-?[0-9]+$" })
            }
            Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64", "pattern": "^[0-9]+$" }),
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
            Kind::Enum(e) => {
                let name = e.full_name().to_owned();
                self.named.entry(name.clone()).or_insert_with(|| enum_schema(e));
                json!({ "$ref": format!("#/components/schemas/{name}") })
            }
            // The well-known types proto3 JSON writes specially.
            Kind::Message(message) => match message.full_name() {
                "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
                "google.protobuf.Duration" => json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$" }),
                "google.protobuf.FieldMask" => json!({ "type": "string" }),
                "google.protobuf.Empty" => json!({ "type": "object", "additionalProperties": false }),
                "google.protobuf.Struct" => json!({ "type": "object" }),
                "google.protobuf.ListValue" => json!({ "type": "array" }),
                "google.protobuf.Value" | "google.protobuf.Any" => json!({}),
                // The wrappers (`StringValue`, ...) are their `value`.
                _ if is_well_known(message) => match message.get_field_by_name("value") {
                    Some(value) => self.kind(&value.kind(), mode),
                    None => json!({}),
                },
                _ => self.message_ref(message, mode),
            },
        }
    }
}

/// The schema of an enum: the JSON names of its values but the zero one.
fn enum_schema(e: &EnumDescriptor) -> Value {
    let (mut names, mut lines) = (Vec::new(), vec![comment(&e.parent_file(), e.path())]);
    for value in e.values().filter(|v| v.number() != 0) {
        // `TASK_STATUS_IN_PROGRESS` is `in_progress`.
        let name = short_name(e, value.name());
        lines.push(format!("- `{name}`: {}", comment(&value.parent_file(), value.path()).replace('\n', " ")));
        names.push(name);
    }
    describe(json!({ "type": "string", "enum": names }), &lines.join("\n"))
}

/// `schema`, also allowing `null`.
fn nullable(mut schema: Value) -> Value {
    match schema.get("type").and_then(Value::as_str).map(str::to_owned) {
        Some(kind) if schema.get("$ref").is_none() => {
            schema["type"] = json!([kind, "null"]);
            schema
        }
        _ => json!({ "anyOf": [schema, { "type": "null" }] }),
    }
}

/// `schema` with `text` put before its description.
fn describe(mut schema: Value, text: &str) -> Value {
    let text = text.trim();
    if !text.is_empty() {
        schema["description"] = match schema.get("description").and_then(Value::as_str) {
            Some(before) => json!(format!("{text} {before}")),
            None => json!(text),
        };
    }
    schema
}

/// The `buf.validate` rules of a field, as JSON Schema.
#[derive(Default)]
struct Rules {
    /// Keywords for one value (`maxLength`, `pattern`, `minimum`, ...).
    keywords: Map<String, Value>,
    /// Keywords for a repeated field's array (`minItems`, `maxItems`).
    list: Map<String, Value>,
    /// What JSON Schema cannot say exactly, in words.
    notes: Vec<String>,
    /// `ignore = IGNORE_IF_ZERO_VALUE`: the zero value skips the rules.
    ignore_if_zero: bool,
}

impl Rules {
    /// The rules declared on `field`; none when it declares none, its pool
    /// lacks buf.validate, or it says IGNORE_ALWAYS.
    fn of(field: &FieldDescriptor) -> Rules {
        let mut out = Rules::default();
        let Some(rules) = taskgate_common::validate::field_rules(field) else { return out };
        let ignore = rules.get_field_by_name("ignore").and_then(|v| v.as_enum_number()).unwrap_or_default();
        let ignore = match rules.descriptor().get_field_by_name("ignore").map(|f| f.kind()) {
            Some(Kind::Enum(e)) => e.get_value(ignore).map(|v| v.name().to_owned()).unwrap_or_default(),
            _ => String::new(),
        };
        if ignore == "IGNORE_ALWAYS" {
            return out;
        }
        out.ignore_if_zero = ignore == "IGNORE_IF_ZERO_VALUE";
        // Bounds apply to JSON numbers only; 64-bit integers are strings.
        let numeric = matches!(
            field.kind(),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 | Kind::Double | Kind::Float
        );
        for (typed_field, typed) in rules.fields() {
            let Proto::Message(typed) = typed else { continue };
            let list = typed_field.name() == "repeated";
            for (rule, value) in typed.fields() {
                let number = match value {
                    Proto::I32(n) => json!(n),
                    Proto::I64(n) => json!(n),
                    Proto::U32(n) => json!(n),
                    Proto::U64(n) => json!(n),
                    Proto::F32(n) => json!(n),
                    Proto::F64(n) => json!(n),
                    _ => Value::Null,
                };
                let (keyword, value) = match (rule.name(), value) {
                    ("min_len", _) => ("minLength", number),
                    ("max_len", _) => ("maxLength", number),
                    ("len", _) => {
                        out.keywords.insert("minLength".into(), number.clone());
                        ("maxLength", number)
                    }
                    ("max_bytes", _) => {
                        out.notes.push(format!("At most {number} bytes of UTF-8 (maxLength is an upper bound)."));
                        ("maxLength", number)
                    }
                    ("pattern", Proto::String(re2)) => ("pattern", json!(ecma_pattern(re2))),
                    ("uuid", Proto::Bool(true)) => ("format", json!("uuid")),
                    ("email", Proto::Bool(true)) => ("format", json!("email")),
                    ("gte", _) if numeric => ("minimum", number),
                    ("gt", _) if numeric => ("exclusiveMinimum", number),
                    ("lte", _) if numeric => ("maximum", number),
                    ("lt", _) if numeric => ("exclusiveMaximum", number),
                    ("min_items", _) if list => ("minItems", number),
                    ("max_items", _) if list => ("maxItems", number),
                    _ => continue,
                };
                let target = if list { &mut out.list } else { &mut out.keywords };
                // Of two length limits (`max_len` and `max_bytes`), the smaller.
                let known = target.get(keyword).and_then(Value::as_u64);
                let looser = keyword == "maxLength" && known.zip(value.as_u64()).is_some_and(|(a, b)| a <= b);
                if !value.is_null() && !looser {
                    target.insert(keyword.into(), value);
                }
            }
        }
        out
    }
}

/// An RE2 pattern (protovalidate's syntax) in the ECMA-262 syntax of JSON
/// Schema: `\x{a0}` is `\u00a0`, `\A` and `\z` are `^` and `$`; the rest of
/// what the contract uses is written the same in both.
fn ecma_pattern(re2: &str) -> String {
    let mut out = String::with_capacity(re2.len());
    let mut chars = re2.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('x') if chars.as_str().starts_with('{') => {
                let rest = chars.as_str();
                let close = rest.find('}').unwrap_or(rest.len());
                let code = u32::from_str_radix(&rest[1..close], 16).unwrap_or_default();
                match char::from_u32(code) {
                    Some(c) if code > 0xFFFF => out.push(c),
                    _ => out.push_str(&format!("\\u{code:04x}")),
                }
                chars = rest.get(close + 1..).unwrap_or_default().chars();
            }
            Some('A') => out.push('^'),
            Some('z') => out.push('$'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Whether `field` is annotated `(google.api.field_behavior) = REQUIRED`.
fn required(field: &FieldDescriptor) -> bool {
    has_behavior(field, "REQUIRED")
}

/// Whether `field` is annotated `(google.api.field_behavior) = OUTPUT_ONLY`.
fn output_only(field: &FieldDescriptor) -> bool {
    has_behavior(field, "OUTPUT_ONLY")
}

/// The leading comment of the element at `path` in `file` (see
/// `SourceCodeInfo`), without the space after each `//`; empty when it has
/// none or the pool was built without source info.
fn comment(file: &FileDescriptor, path: &[i32]) -> String {
    let Some(info) = &file.file_descriptor_proto().source_code_info else { return String::new() };
    let location = info.location.iter().find(|l| l.path == path);
    let text = location.and_then(|l| l.leading_comments.as_deref()).unwrap_or_default();
    text.lines().map(|l| l.strip_prefix(' ').unwrap_or(l)).collect::<Vec<_>>().join("\n").trim().to_owned()
}

/// The comment of `field`.
fn field_comment(field: &FieldDescriptor) -> String {
    comment(&field.parent_file(), field.path())
}

/// The first sentence of `text`, without its full stop: an operation's summary.
fn first_sentence(text: &str) -> String {
    let paragraph = text.split("\n\n").next().unwrap_or_default().replace('\n', " ");
    let end = paragraph.find(". ").map_or(paragraph.len(), |i| i + 1);
    paragraph[..end].trim().trim_end_matches('.').to_owned()
}

/// Every documented error response: its HTTP status (0 for `default`), its
/// name in `components/responses` and what it means.
const ERRORS: &[(u16, &str, &str)] = &[
    (
        400,
        "BadRequest",
        "Invalid input (INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE); a BadRequest detail names the field",
    ),
    (401, "Unauthenticated", "Missing, invalid or expired credentials (UNAUTHENTICATED)"),
    (403, "PermissionDenied", "Not allowed, a disabled account, or a missing CSRF token (PERMISSION_DENIED)"),
    (404, "NotFound", "No such resource, or it belongs to someone else (NOT_FOUND)"),
    (409, "Conflict", "It exists already (ALREADY_EXISTS), or a concurrent change got in first (ABORTED)"),
    (412, "PreconditionFailed", "The resource changed since the given entity tag was read (ABORTED)"),
    (413, "PayloadTooLarge", "The body is larger than the gateway reads"),
    (415, "UnsupportedMediaType", "A body that is not application/json"),
    (429, "TooManyRequests", "Rate limited (RESOURCE_EXHAUSTED); a RetryInfo detail says when to retry"),
    (503, "Unavailable", "A backend is unavailable (UNAVAILABLE)"),
    (0, "Error", "Any other failure, as a google.rpc.Status"),
];

/// The response object of the error `status` of [`ERRORS`].
fn error_response(status: u16) -> Value {
    let about = ERRORS.iter().find(|e| e.0 == status).map_or("", |e| e.2);
    let schema = json!({ "$ref": "#/components/schemas/Status" });
    let mut response = json!({ "description": about, "content": { "application/json": { "schema": schema } } });
    if matches!(status, 429 | 503) {
        response["headers"] =
            json!({ "Retry-After": { "description": "Seconds to wait", "schema": { "type": "integer" } } });
    }
    response
}

/// The google.rpc.Status JSON of every error response.
fn status_schemas() -> Map<String, Value> {
    let schemas = json!({
        "Status": {
            "type": "object",
            "description": "google.rpc.Status: a gRPC code, a message and typed details",
            "required": ["code", "message", "details"],
            "properties": {
                "code": { "type": "integer", "format": "int32", "description": "The google.rpc.Code" },
                "message": { "type": "string" },
                "details": { "type": "array", "items": { "$ref": "#/components/schemas/StatusDetail" } },
            },
            "additionalProperties": false,
        },
        "StatusDetail": {
            "type": "object",
            "description": "A google.rpc error detail such as BadRequest (`field_violations`) or RetryInfo (`retry_delay`)",
            "required": ["@type"],
            "properties": {
                "@type": { "type": "string" },
                "field_violations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["field", "description"],
                        "properties": { "field": { "type": "string" }, "description": { "type": "string" } },
                    },
                },
                "retry_delay": { "type": "string", "description": "A duration such as `1.5s`" },
            },
        },
    });
    match schemas {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use taskgate_proto::HTTP_RULES;
    use taskgate_test_support::openapi::{check, check_response};

    use super::*;

    /// Every `$ref` string in `value`.
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(fields) => {
                for (name, field) in fields {
                    match (name.as_str(), field) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(field, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| refs(i, out)),
            _ => {}
        }
    }

    /// `schema` with its `$ref` followed, within `doc`.
    fn resolved<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(reference) => doc.pointer(reference.trim_start_matches('#')).expect("a resolvable $ref"),
            None => schema,
        }
    }

    /// The request body schema of `verb path`, resolved.
    fn body_schema<'a>(doc: &'a Value, verb: &str, path: &str) -> &'a Value {
        resolved(doc, &doc["paths"][path][verb]["requestBody"]["content"]["application/json"]["schema"])
    }

    #[test]
    fn the_documented_paths_and_methods_are_exactly_the_annotated_rules() {
        let doc = document();
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, item)| {
                item.as_object().expect("path item").keys().map(move |verb| (verb.to_ascii_uppercase(), path.clone()))
            })
            .collect();
        let annotated: BTreeSet<(String, String)> =
            HTTP_RULES.iter().map(|r| (r.verb.to_owned(), route_path(&r.path))).collect();
        assert_eq!(documented, annotated);
        assert_eq!(documented.len(), HTTP_RULES.len(), "two bindings share a path and verb");
    }

    #[test]
    fn operation_ids_are_unique_and_a_second_binding_gets_its_verb() {
        let doc = document();
        let ids: Vec<&str> = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .flat_map(|item| item.as_object().expect("path item").values())
            .map(|op| op["operationId"].as_str().expect("an operationId"))
            .collect();
        assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len(), "{ids:?}");
        assert_eq!(doc["paths"]["/api/v1/tasks/{id}"]["put"]["operationId"], "updateTask");
        assert_eq!(doc["paths"]["/api/v1/tasks/{id}"]["patch"]["operationId"], "updateTaskPatch");
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let mut all = Vec::new();
        refs(doc, &mut all);
        assert!(all.len() > 50);
        for reference in all {
            let pointer = reference.strip_prefix('#').expect("local ref");
            assert!(doc.pointer(pointer).is_some_and(|v| !v.is_null()), "dangling {reference}");
        }
    }

    #[test]
    fn it_is_openapi_3_1_with_the_security_schemes() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
        assert_eq!(doc["components"]["securitySchemes"]["cookieAuth"]["in"], "cookie");
        assert_eq!(doc["paths"]["/api/v1/auth/register"]["post"]["security"], json!([]));
        assert_eq!(
            doc["paths"]["/api/v1/auth/logout"]["post"]["security"],
            json!([{}, { "bearerAuth": [] }, { "cookieAuth": [] }])
        );
        assert!(doc["paths"]["/api/v1/tasks"]["post"].get("security").is_none(), "the default: a token");
        let create = &doc["paths"]["/api/v1/tasks"]["post"]["responses"];
        assert!(create.get("201").is_some() && create.get("401").is_some() && create.get("429").is_some());
        assert!(create["201"]["headers"].get("Location").is_some() && create["201"]["headers"].get("ETag").is_some());
        assert!(doc["paths"]["/api/v1/tasks/{id}"]["delete"]["responses"].get("204").is_some());
        assert!(doc["paths"]["/api/v1/tasks/{id}"]["delete"]["responses"].get("412").is_some());
        assert!(doc["paths"]["/api/v1/tasks/{id}"]["get"]["responses"].get("304").is_some());
        assert!(doc["paths"]["/api/v1/auth/register"]["post"]["responses"].get("409").is_some());
        let watch = &doc["paths"]["/api/v1/tasks:watch"]["get"]["responses"]["200"]["content"];
        assert!(watch.get("text/event-stream").is_some());
    }

    #[test]
    fn every_operation_documents_the_common_errors_and_a_default() {
        let doc = document();
        for item in doc["paths"].as_object().expect("paths").values() {
            for (verb, op) in item.as_object().expect("path item") {
                for status in ["400", "401", "403", "429", "503", "default"] {
                    assert!(op["responses"].get(status).is_some(), "{verb} {} lacks {status}", op["operationId"]);
                }
            }
        }
    }

    #[test]
    fn parameters_come_from_the_bindings_and_the_rest_option() {
        let doc = document();
        let names = |path: &str, verb: &str| -> Vec<(String, String)> {
            doc["paths"][path][verb]["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            (
                                p["in"].as_str().unwrap_or_default().to_owned(),
                                p["name"].as_str().unwrap_or_default().to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let pair = |place: &str, name: &str| (place.to_owned(), name.to_owned());
        let list = names("/api/v1/tasks", "get");
        for p in [pair("query", "page_size"), pair("query", "page_token"), pair("query", "status")] {
            assert!(list.contains(&p), "{p:?} in {list:?}");
        }
        assert!(names("/api/v1/tasks/{id}", "put").contains(&pair("header", "If-Match")));
        assert!(names("/api/v1/tasks/{id}", "get").contains(&pair("header", "If-None-Match")));
        assert!(names("/api/v1/tasks", "post").contains(&pair("header", "Idempotency-Key")));
        assert!(names("/api/v1/tasks:watch", "get").contains(&pair("header", "Last-Event-ID")));
        assert!(names("/api/v1/auth/login", "post").contains(&pair("query", "cookies")));
        assert_eq!(names("/api/v1/auth/sessions/{id}", "delete"), [pair("path", "id")]);
        let status = &doc["paths"]["/api/v1/tasks"]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["name"] == "status")
            .expect("a status parameter")["schema"];
        assert_eq!(resolved(doc, status)["enum"], json!(["todo", "in_progress", "done"]));
    }

    #[test]
    fn request_bodies_follow_the_field_behaviour() {
        let doc = document();
        let register = body_schema(doc, "post", "/api/v1/auth/register");
        let declared = |message: &str| -> BTreeSet<String> {
            let message = taskgate_proto::DESCRIPTOR_POOL.get_message_by_name(message).expect("a message");
            message.fields().filter(required).map(|f| f.name().to_owned()).collect()
        };
        let documented: BTreeSet<String> =
            serde_json::from_value(register["required"].clone()).expect("a list of names");
        assert_eq!(documented, declared("taskgate.auth.v1.RegisterRequest"));
        assert!(!documented.is_empty());

        let create = body_schema(doc, "post", "/api/v1/tasks");
        assert!(create["properties"].get("id").is_none() && create["properties"].get("created_at").is_none());
        assert_eq!(create["required"], json!(["title"]));
        assert!(body_schema(doc, "patch", "/api/v1/tasks/{id}").get("required").is_none(), "a PATCH needs nothing");
        let body = |verb: &str, path: &str| doc["paths"][path][verb]["requestBody"]["required"].clone();
        assert_eq!(body("post", "/api/v1/tasks"), true);
        assert_eq!(body("put", "/api/v1/tasks/{id}"), true);
        assert_eq!(body("post", "/api/v1/auth/login"), true);
        for path in ["/api/v1/auth/refresh", "/api/v1/auth/logout", "/api/v1/auth/logout-all"] {
            assert_eq!(body("post", path), false, "{path}");
        }
        let enable = body_schema(doc, "post", "/api/v1/admin/users/{id}/enable");
        assert_eq!(enable["properties"], json!({}), "the path's id is not in the body");
    }

    #[test]
    fn the_task_title_length_is_the_contracts() {
        let doc = document();
        let task = &doc["components"]["schemas"]["taskgate.task.v1.Task"];
        let max = taskgate_proto::task::v1::rules::TASK_TITLE_MAX_LEN;
        assert_eq!(task["properties"]["title"]["maxLength"], json!(max));
        assert_eq!(body_schema(doc, "post", "/api/v1/tasks")["properties"]["title"]["maxLength"], json!(max));
    }

    #[test]
    fn summaries_and_descriptions_come_from_the_proto_comments() {
        let doc = document();
        let create = &doc["paths"]["/api/v1/tasks"]["post"];
        assert_eq!(create["summary"], "Creates a task owned by the caller");
        let description = create["description"].as_str().expect("a description");
        assert!(description.ends_with("Transcoded to `taskgate.task.v1.TaskService/CreateTask`."), "{description}");
        let task = &doc["components"]["schemas"]["taskgate.task.v1.Task"];
        assert!(task["description"].as_str().is_some_and(|d| d.starts_with("One to-do item")));
        assert!(task["properties"]["title"]["description"].as_str().is_some_and(|d| d.starts_with("The title")));
    }

    #[test]
    fn re2_escapes_become_ecma_262() {
        assert_eq!(ecma_pattern(r"^[ \x{a0}-]*\+\d$"), r"^[ \u00a0-]*\+\d$");
        assert_eq!(ecma_pattern(r"\Aab\z"), "^ab$");
        assert_eq!(ecma_pattern(r"\\x{41}"), r"\\x{41}");
        let doc = document();
        let phone = &body_schema(doc, "post", "/api/v1/auth/register")["properties"]["phone"]["pattern"];
        let phone = phone.as_str().expect("a phone pattern");
        assert!(phone.contains(r"\u00a0") && !phone.contains(r"\x{"), "{phone}");
    }

    #[test]
    fn the_committed_copy_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway/static/openapi.json");
        let mut current = serde_json::to_string_pretty(&document()).expect("serialisable");
        current.push('\n');
        if std::env::var_os("TASKGATE_BLESS").is_some() {
            std::fs::write(path, &current).expect("writing static/openapi.json");
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == current,
            "gateway/static/openapi.json is stale: run `TASKGATE_BLESS=1 cargo test -p taskgate-openapi`"
        );
    }

    #[test]
    fn the_schemas_refuse_shape_mistakes() {
        let doc = document();
        let user = json!({ "$ref": "#/components/schemas/taskgate.auth.v1.User" });
        let good = json!({"id": "6f1d0b5e-8c1a-4a53-9d7e-2b8e0d8c1a11", "username": "a", "email": null,
            "phone": null, "created_at": "2024-01-01T00:00:00Z"});
        check(doc, &user, &good).expect("a valid user");
        let mut extra = good.clone();
        extra["owner"] = json!("x");
        assert!(check(doc, &user, &extra).is_err());
        let mut missing = good.clone();
        missing.as_object_mut().expect("object").remove("phone");
        assert!(check(doc, &user, &missing).is_err());
        let mut wrong = good;
        wrong["created_at"] = json!("yesterday");
        assert!(check(doc, &user, &wrong).is_err());

        let task = json!({ "$ref": "#/components/schemas/taskgate.task.v1.Task" });
        let good = json!({"id": "6f1d0b5e-8c1a-4a53-9d7e-2b8e0d8c1a11", "title": "t", "description": "",
            "status": "in_progress", "created_at": "2024-01-01T00:00:00Z", "updated_at": null, "etag": "1"});
        check(doc, &task, &good).expect("a valid task");
        for (field, bad) in
            [("id", json!("42")), ("status", json!("TASK_STATUS_DONE")), ("status", json!("unspecified"))]
        {
            let mut task_value = good.clone();
            task_value[field] = bad;
            assert!(check(doc, &task, &task_value).is_err(), "{field}: {}", task_value[field]);
        }
        let list = json!({ "$ref": "#/components/schemas/taskgate.task.v1.ListTasksResponse" });
        check(doc, &list, &json!({"tasks": [], "next_page_token": "", "version": "12"})).expect("a valid page");
        assert!(check(doc, &list, &json!({"tasks": [], "next_page_token": "", "version": 12})).is_err());
        check_response(doc, "DELETE", "/api/v1/tasks/{id}", 204, None).expect("204 has no body");
    }
}
