//! Holding responses to an OpenAPI 3.1 document, with the `jsonschema`
//! crate validating bodies against the document's schemas (JSON Schema
//! 2020-12, formats such as `uuid` and `date-time` checked).

use serde_json::{Value, json};

/// Follows local `$ref`s (`#/components/...`) of an OpenAPI object, such as
/// a response, in `doc`.
fn resolve<'a>(doc: &'a Value, mut object: &'a Value) -> Result<&'a Value, String> {
    while let Some(reference) = object.get("$ref").and_then(Value::as_str) {
        let pointer = reference.strip_prefix('#').ok_or_else(|| format!("non-local $ref {reference}"))?;
        object = doc.pointer(pointer).ok_or_else(|| format!("dangling $ref {reference}"))?;
    }
    Ok(object)
}

/// Checks `value` against `schema`, a schema of `doc` (its `$ref`s point
/// into `doc`'s `components`). The error lists every violation with its
/// JSON path.
pub fn check(doc: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    // The schema as the root of a document that also holds the components,
    // so `#/components/schemas/...` resolves as it does in the OpenAPI file.
    let mut root = match schema {
        Value::Object(fields) => Value::Object(fields.clone()),
        other => json!({ "allOf": [other] }),
    };
    root["components"] = doc.get("components").cloned().unwrap_or(Value::Null);
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .map_err(|e| format!("the schema does not compile: {e}"))?;
    let errors: Vec<String> = validator.iter_errors(value).map(|e| format!("{}: {}", e.instance_path(), e)).collect();
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}

/// Checks a response against the document: `status` must be documented for
/// `verb path` (or fall under `default`), and `body` must match its schema;
/// a documented response without content must have no body.
pub fn check_response(doc: &Value, verb: &str, path: &str, status: u16, body: Option<&Value>) -> Result<(), String> {
    let operation = doc
        .get("paths")
        .and_then(|p| p.get(path))
        .and_then(|item| item.get(verb.to_ascii_lowercase()))
        .ok_or_else(|| format!("{verb} {path} is not documented"))?;
    let responses = operation.get("responses").ok_or_else(|| format!("{verb} {path} has no responses"))?;
    let response = responses
        .get(status.to_string())
        .or_else(|| responses.get("default"))
        .ok_or_else(|| format!("{verb} {path} does not document {status}"))?;
    let response = resolve(doc, response)?;
    match (response.pointer("/content/application~1json/schema"), body) {
        (Some(schema), Some(body)) => check(doc, schema, body).map_err(|e| format!("{verb} {path} {status}: {e}")),
        (Some(_), None) => Err(format!("{verb} {path} {status}: documented a JSON body, got none")),
        (None, Some(body)) => Err(format!("{verb} {path} {status}: documented no body, got {body}")),
        (None, None) => Ok(()),
    }
}
