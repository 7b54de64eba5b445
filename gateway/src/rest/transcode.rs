//! Generic transcoding: one handler serves every `google.api.http` binding
//! of a descriptor pool, the way Envoy's gRPC-JSON transcoder and
//! grpc-gateway do, with no code per RPC.
//!
//! A [`Binding`] is compiled once from the rule and the RPC's descriptors.
//! For each request it builds the request message from the body (`*` or one
//! field), the path variables (`{task.id}` sets `task.id`), the query string
//! (every other field), the request headers and cookie the RPC's
//! `taskgate.api.v1.rest` option names; checks it (`field_behavior`
//! REQUIRED, then the `buf.validate` rules); sends its encoded bytes to the
//! backend through a generic tonic client; and renders the reply as
//! [`json`] says, with the success status, `ETag`, `Location`,
//! `Cache-Control` and session cookies the same option declares. A PATCH
//! sets the request's field mask to the fields its body names. A
//! server-streaming RPC is served as Server-Sent Events ([`crate::rest::watch`]).
//!
//! The rules, proto construct by proto construct, are the table in the
//! gateway's README.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Body,
    extract::{FromRequestParts as _, Path, Request},
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};
use taskgate_common::status::{invalid_field, invalid_fields};
use taskgate_proto::{
    HttpRule,
    api::v1::{Cost, HeaderFormat, Rest, SessionCookies},
    auth::v1::TokenPair,
    contract::{field_at, has_behavior, path_variables, route_path},
};
use tonic::{Status, codegen::http::uri::PathAndQuery};

use crate::{
    cookies::CookiePolicy,
    rest::{
        error::RestError,
        extract::{QueryParams, grpc_request, json_body},
        json,
    },
    upstream::Backends,
    watch::WatchSlots,
};

/// Where a binding's HTTP body goes in the request message.
#[derive(Debug, Clone)]
enum BodyTarget {
    /// No body (`body` not set): everything comes from the path and query.
    None,
    /// `body: "*"`: the whole request.
    Whole,
    /// `body: "field"`: one message field of the request.
    Field(FieldDescriptor),
}

/// One `google.api.http` binding, ready to serve.
#[derive(Debug)]
pub struct Binding {
    /// The rule as declared.
    pub rule: HttpRule,
    /// The axum path template (`{task.id}` becomes `{id}`).
    pub axum_path: String,
    /// `(axum variable, request field path)` of each path variable.
    variables: Vec<(String, String)>,
    /// Where the body goes.
    body: BodyTarget,
    /// The `REQUIRED` fields of the body's message (the request's when the
    /// body is `*` or absent), read from the descriptors once.
    required: Vec<FieldDescriptor>,
    /// The response field that is the HTTP body, if not the whole response.
    response_body: Option<FieldDescriptor>,
    /// The RPC's REST-only behaviour.
    rest: Rest,
    /// Whether calls go over the backend's connection for expensive calls.
    expensive: bool,
    /// `/package.Service/Method`.
    grpc_path: PathAndQuery,
}

impl Binding {
    /// Compiles `rule`; an error names what in the contract cannot be served.
    pub fn new(rule: HttpRule) -> Result<Binding, String> {
        let method = rule.descriptor.clone();
        let input = method.input();
        let mut variables = Vec::new();
        for variable in path_variables(&rule.path) {
            let field = field_at(&input, &variable).ok_or_else(|| format!("no field {variable}"))?;
            if field.is_list() || matches!(field.kind(), Kind::Message(_)) {
                return Err(format!("path variable {variable} is not a scalar field"));
            }
            variables.push((taskgate_common::validate::field_name(&variable).to_owned(), variable));
        }
        let body = match rule.body.as_str() {
            "" => BodyTarget::None,
            "*" => BodyTarget::Whole,
            name => match input.get_field_by_name(name) {
                Some(field) if matches!(field.kind(), Kind::Message(_)) && !field.is_list() => BodyTarget::Field(field),
                _ => return Err(format!("body {name} is not a message field of {}", input.full_name())),
            },
        };
        let required = match &body {
            BodyTarget::Field(field) => match field.kind() {
                Kind::Message(desc) => desc.fields().filter(is_required).collect(),
                _ => Vec::new(),
            },
            _ => input.fields().filter(is_required).collect(),
        };
        let response_body = match rule.response_body.as_str() {
            "" => None,
            name => Some(method.output().get_field_by_name(name).ok_or_else(|| format!("no response field {name}"))?),
        };
        let grpc_path =
            PathAndQuery::try_from(format!("/{}/{}", rule.service, rule.method)).map_err(|e| e.to_string())?;
        Ok(Binding {
            axum_path: route_path(&rule.path),
            variables,
            body,
            required,
            response_body,
            rest: taskgate_proto::rest(&method),
            expensive: taskgate_proto::policy(&method).cost() == Cost::PasswordHash,
            grpc_path,
            rule,
        })
    }

    /// Whether the RPC streams its responses (served as Server-Sent Events).
    pub fn is_streaming(&self) -> bool {
        self.rule.descriptor.is_server_streaming()
    }

    /// The REST-only behaviour declared for the RPC.
    pub fn rest(&self) -> &Rest {
        &self.rest
    }

    /// Whether an ABORTED answer means a failed precondition (412): the
    /// binding reads an entity tag from a header.
    fn conditional(&self) -> bool {
        self.rest.headers.iter().any(|h| h.format() == HeaderFormat::EntityTag)
    }
}

/// What every handler shares: the backends, the cookie policy and the
/// open-stream bound.
pub struct Shared {
    /// The upstreams.
    pub backends: Backends,
    /// How session cookies are named, set and CSRF-checked.
    pub cookies: CookiePolicy,
    /// This replica's open-stream bound, shared with the gRPC proxy.
    pub watch: WatchSlots,
}

/// Serves one request for `binding`.
pub async fn handle(binding: Arc<Binding>, shared: Arc<Shared>, request: Request) -> Response {
    let clear = binding.rest.session_cookies() == SessionCookies::Clear;
    let mut response = serve(&binding, &shared, request).await.unwrap_or_else(IntoResponse::into_response);
    if clear {
        // Whatever the outcome: a browser whose session already ended is
        // still logged out.
        shared.cookies.clear_session(response.headers_mut());
    }
    response
}

/// [`handle`], with errors as values.
async fn serve(binding: &Binding, shared: &Shared, request: Request) -> Result<Response, RestError> {
    let (mut parts, body) = request.into_parts();
    let query = QueryParams::parse(parts.uri.query());
    let with_cookies = binding.rest.session_cookies() == SessionCookies::Set && query.flag("cookies")?;
    let message = request_message(binding, shared, &mut parts, &query, body, with_cookies).await?;
    let upstream = shared.backends.upstream(&binding.rule.service, binding.expensive)?;
    let mut client = tonic::client::Grpc::new(upstream.clone());
    let request = grpc_request(&parts.headers, message);
    let codec = DynamicCodec(binding.rule.descriptor.output());
    if binding.is_streaming() {
        let permit = shared.watch.acquire()?;
        let stream = client.server_streaming(request, binding.grpc_path.clone(), codec).await?.into_inner();
        return Ok(crate::rest::watch::sse(binding.rest(), stream, permit));
    }
    let reply = client.unary(request, binding.grpc_path.clone(), codec).await.map_err(|status| {
        if binding.conditional() && status.code() == tonic::Code::Aborted {
            // RFC 9110 section 13.1.1: a failed If-Match is 412, not 409.
            RestError::with_http(StatusCode::PRECONDITION_FAILED, status)
        } else {
            status.into()
        }
    })?;
    respond(binding, shared, &parts, reply.into_inner(), with_cookies)
}

/// Builds the request message of `binding` from the HTTP request.
async fn request_message(
    binding: &Binding,
    shared: &Shared,
    parts: &mut Parts,
    query: &QueryParams,
    body: Body,
    with_cookies: bool,
) -> Result<DynamicMessage, RestError> {
    let input = binding.rule.descriptor.input();
    let mut message = DynamicMessage::new(input.clone());
    // The body's top-level fields as written, for REQUIRED and PATCH masks.
    let mut present: Vec<String> = Vec::new();
    match &binding.body {
        BodyTarget::None => {}
        BodyTarget::Whole => {
            let object = json_body(&parts.headers, body).await?.unwrap_or_default();
            present.extend(object.keys().cloned());
            message = json::parse(&input, object)?;
        }
        BodyTarget::Field(field) => match json_body(&parts.headers, body).await? {
            Some(object) => {
                present.extend(object.keys().cloned());
                let Kind::Message(desc) = field.kind() else { unreachable!("checked in Binding::new") };
                message.set_field(field, Value::Message(json::parse(&desc, object)?));
            }
            None if is_required(field) => return Err(invalid_field("body", "a JSON object is required").into()),
            None => {}
        },
    }
    query_fields(binding, &input, query, &mut message)?;
    let variables = Path::<HashMap<String, String>>::from_request_parts(parts, &())
        .await
        .map_err(|e| RestError::from(invalid_field("path", e.body_text())))?;
    for (name, path) in &binding.variables {
        let text = variables.get(name).map(String::as_str).unwrap_or_default();
        set_text(&mut message, &input, path, name, text)?;
    }
    header_fields(binding, &input, &parts.headers, &mut message)?;
    refresh_cookie(binding, shared, &parts.headers, with_cookies, &mut message)?;
    if binding.rule.verb == "PATCH" {
        set_patch_mask(binding, &input, &present, &mut message);
    } else {
        required_fields(binding, &message, &present)?;
    }
    taskgate_common::validate::check(&message)?;
    Ok(message)
}

/// Whether `field` is annotated `(google.api.field_behavior) = REQUIRED`.
fn is_required(field: &FieldDescriptor) -> bool {
    has_behavior(field, "REQUIRED")
}

/// Sets every query parameter that names a request field the path and body
/// do not carry; other parameters are ignored, as is usual for query strings.
fn query_fields(
    binding: &Binding,
    input: &MessageDescriptor,
    query: &QueryParams,
    message: &mut DynamicMessage,
) -> Result<(), RestError> {
    if matches!(binding.body, BodyTarget::Whole) {
        return Ok(());
    }
    let body_field = match &binding.body {
        BodyTarget::Field(field) => Some(field.name()),
        _ => None,
    };
    for (name, text) in query.pairs() {
        let top = name.split('.').next().unwrap_or(name);
        if Some(top) == body_field || binding.variables.iter().any(|(_, path)| path.split('.').next() == Some(top)) {
            continue;
        }
        if field_at(input, name).is_some() {
            set_text(message, input, name, name, text)?;
        }
    }
    Ok(())
}

/// Sets the field at `path` from `text`, or a 400 naming `shown`.
fn set_text(
    message: &mut DynamicMessage,
    input: &MessageDescriptor,
    path: &str,
    shown: &str,
    text: &str,
) -> Result<(), RestError> {
    let field = field_at(input, path).ok_or_else(|| RestError::from(invalid_field(shown, "unknown field")))?;
    let value = json::parse_text(&field, text).map_err(|e| RestError::from(invalid_field(shown, e)))?;
    json::set_at(message, path, value);
    Ok(())
}

/// Sets the fields the RPC reads from request headers; a header wins over
/// the body and query.
fn header_fields(
    binding: &Binding,
    input: &MessageDescriptor,
    headers: &HeaderMap,
    message: &mut DynamicMessage,
) -> Result<(), RestError> {
    for bound in &binding.rest.headers {
        let Some(value) = headers.get(bound.header.as_str()) else { continue };
        let text = value.to_str().map_err(|_| invalid_field(&bound.header, "must be visible ASCII"))?.trim();
        if bound.format() == HeaderFormat::EntityTag {
            if text == "*" {
                // Only asks that the resource exist, which every write does.
                continue;
            }
            if text.contains(',') {
                return Err(invalid_field(&bound.header, "must be a single etag (or *)").into());
            }
        }
        set_text(message, input, &bound.field, &bound.header, text)?;
    }
    Ok(())
}

/// Fills the RPC's `refresh_cookie_field` from the refresh cookie when the
/// request left it empty and the RPC reads cookies, after checking the
/// request's CSRF token: the browser sends the cookie on its own.
fn refresh_cookie(
    binding: &Binding,
    shared: &Shared,
    headers: &HeaderMap,
    with_cookies: bool,
    message: &mut DynamicMessage,
) -> Result<(), RestError> {
    let field = binding.rest.refresh_cookie_field.as_str();
    let reads_cookie = with_cookies || binding.rest.session_cookies() == SessionCookies::Clear;
    if field.is_empty() || !reads_cookie || json::string_at(message, field).is_some() {
        return Ok(());
    }
    let Some(token) = shared.cookies.refresh_token(headers) else { return Ok(()) };
    if !shared.cookies.csrf_ok_for_token(headers, token) {
        let rpc = binding.rule.method.to_lowercase();
        return Err(Status::permission_denied(format!("a cookie {rpc} needs a matching x-csrf-token")).into());
    }
    json::set_at(message, field, Value::String(token.to_owned()));
    Ok(())
}

/// Refuses a request missing a REQUIRED field of the body (or, without a
/// body, of the request), naming the field as the client writes it.
fn required_fields(binding: &Binding, message: &DynamicMessage, present: &[String]) -> Result<(), RestError> {
    let body;
    let values = match &binding.body {
        BodyTarget::Field(field) => {
            body = message.get_field(field);
            match body.as_message() {
                Some(inner) => inner,
                None => return Ok(()),
            }
        }
        _ => message,
    };
    let missing: Vec<(String, String)> = binding
        .required
        .iter()
        .filter(|f| !values.has_field(f) && !present.iter().any(|p| p == f.name()))
        .map(|f| (f.name().to_owned(), "is required".to_owned()))
        .collect();
    if missing.is_empty() { Ok(()) } else { Err(invalid_fields(missing).into()) }
}

/// A PATCH changes exactly the fields its body names: the request's
/// `google.protobuf.FieldMask` field, unless the query set it, lists them
/// (an empty list when the body names none).
fn set_patch_mask(binding: &Binding, input: &MessageDescriptor, present: &[String], message: &mut DynamicMessage) {
    let BodyTarget::Field(_) = &binding.body else { return };
    let Some(mask) = input
        .fields()
        .find(|f| matches!(f.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask") && !f.is_list())
    else {
        return;
    };
    if message.has_field(&mask) {
        return;
    }
    let Kind::Message(mask_desc) = mask.kind() else { return };
    let mut paths = DynamicMessage::new(mask_desc);
    let list = present.iter().map(|p| Value::String(p.clone())).collect();
    paths.set_field_by_name("paths", Value::List(list));
    message.set_field(&mask, Value::Message(paths));
}

/// The HTTP response for a successful call.
fn respond(
    binding: &Binding,
    shared: &Shared,
    parts: &Parts,
    reply: DynamicMessage,
    with_cookies: bool,
) -> Result<Response, RestError> {
    let body = match &binding.response_body {
        Some(field) if reply.has_field(field) => match reply.get_field(field).as_message() {
            Some(inner) => inner.clone(),
            None => {
                return Err(
                    Status::internal(format!("backend response field {} is not a message", field.name())).into()
                );
            }
        },
        Some(field) => return Err(Status::internal(format!("backend response has no {}", field.name())).into()),
        None => reply,
    };
    let rest = &binding.rest;
    let etag = (!rest.etag_field.is_empty()).then(|| json::string_at(&body, &rest.etag_field)).flatten();
    if let Some(current) = &etag
        && parts.method == Method::GET
        && none_match(&parts.headers, current)
    {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        insert(&mut response, header::ETAG, format!("\"{current}\""));
        return Ok(response);
    }
    let status = u16::try_from(rest.success_status)
        .ok()
        .filter(|s| *s != 0)
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = if status == StatusCode::NO_CONTENT {
        status.into_response()
    } else {
        let json = [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        (status, json, json::to_vec(&body)?).into_response()
    };
    if let Some(current) = etag {
        insert(&mut response, header::ETAG, format!("\"{current}\""));
    }
    if !rest.location.is_empty() {
        insert(&mut response, header::LOCATION, fill(&rest.location, &body));
    }
    if !rest.cache_control.is_empty() {
        insert(&mut response, header::CACHE_CONTROL, rest.cache_control.clone());
    }
    if with_cookies {
        let tokens: TokenPair =
            body.transcode_to().map_err(|_| Status::internal("a cookie session needs a TokenPair response"))?;
        shared.cookies.set_session(response.headers_mut(), &tokens);
    }
    Ok(response)
}

/// Whether `If-None-Match` names the entity tag `current` (or is `*`).
fn none_match(headers: &HeaderMap, current: &str) -> bool {
    let Some(wanted) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) else { return false };
    wanted.trim() == "*"
        || wanted
            .split(',')
            .map(str::trim)
            .any(|tag| tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"') == current)
}

/// `template` with each `{field}` replaced by that field of `message`.
fn fill(template: &str, message: &DynamicMessage) -> String {
    let mut out = String::with_capacity(template.len() + 36);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else { break };
        out.push_str(&json::string_at(message, &rest[open + 1..open + close]).unwrap_or_default());
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// Adds a header whose value came from the backend, if it is a valid one.
fn insert(response: &mut Response, name: header::HeaderName, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        response.headers_mut().insert(name, value);
    }
}

/// A tonic codec for messages known only by their descriptor: messages are
/// encoded as they are, and decoded as `.0` (the response type for a
/// client, the request type for a server).
#[derive(Debug, Clone)]
pub struct DynamicCodec(pub MessageDescriptor);

impl tonic::codec::Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicCodec;
    type Decoder = DynamicCodec;

    fn encoder(&mut self) -> Self::Encoder {
        self.clone()
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.clone()
    }
}

impl tonic::codec::Encoder for DynamicCodec {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        prost::Message::encode(&item, dst).map_err(|e| Status::internal(format!("encoding the request: {e}")))
    }
}

impl tonic::codec::Decoder for DynamicCodec {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding the backend's response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binding_of_the_contract_compiles() {
        for rule in taskgate_proto::HTTP_RULES.iter() {
            let binding = Binding::new(rule.clone()).unwrap_or_else(|e| panic!("{} {}: {e}", rule.verb, rule.path));
            assert!(binding.axum_path.starts_with('/'));
        }
        let login = taskgate_proto::HTTP_RULES.iter().find(|r| r.method == "Login").expect("Login");
        assert!(Binding::new(login.clone()).expect("compiles").expensive, "Login hashes a password");
    }
}
