//! Compiles `proto/` with protox (pure Rust, no system `protoc`), generates the
//! tonic/prost code, writes the descriptor set used by server reflection, and
//! extracts the `google.api.http` annotations into a Rust table that the
//! gateway serves its REST routes from.

use std::{env, fmt::Write as _, fs, path::PathBuf};

use prost_reflect::{DynamicMessage, ReflectMessage as _, Value};

const PROTO_ROOT: &str = "../proto";
const FILES: &[&str] = &["taskgate/auth/v1/auth.proto", "taskgate/task/v1/task.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(FILES)?;
    let pool = compiler.descriptor_pool();
    // Encoded by protox itself: `prost_types` would drop the custom options
    // (google.api.http, taskgate.api.v1.policy) that reflection clients and
    // the gateway read.
    fs::write(out_dir.join("taskgate_descriptor.bin"), compiler.encode_file_descriptor_set())?;
    let fds = compiler.file_descriptor_set();

    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;

    fs::write(out_dir.join("http_rules.rs"), http_rules(&pool)?)?;
    Ok(())
}

/// Renders every `google.api.http` binding (including additional bindings)
/// as one `HttpRule` literal, in declaration order.
fn http_rules(pool: &prost_reflect::DescriptorPool) -> Result<String, Box<dyn std::error::Error>> {
    let ext = pool.get_extension_by_name("google.api.http").ok_or("google.api.http extension not found")?;
    let mut out = String::from("&[\n");
    for service in pool.services() {
        if !service.full_name().starts_with("taskgate.") {
            continue;
        }
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&ext) {
                continue;
            }
            let rule = options.get_extension(&ext);
            let Value::Message(rule) = rule.as_ref() else {
                return Err("google.api.http is not a message".into());
            };
            let mut rules = vec![rule.clone()];
            if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").map(|v| v.into_owned()) {
                for r in more {
                    if let Value::Message(m) = r {
                        rules.push(m);
                    }
                }
            }
            for r in rules {
                let (verb, path) = pattern(&r)?;
                let body = string_field(&r, "body");
                let response_body = string_field(&r, "response_body");
                writeln!(
                    out,
                    "    HttpRule {{ service: {:?}, method: {:?}, verb: {:?}, path: {:?}, body: {:?}, response_body: {:?} }},",
                    service.full_name(),
                    method.name(),
                    verb,
                    path,
                    body,
                    response_body
                )?;
            }
        }
    }
    out.push(']');
    Ok(out)
}

fn pattern(rule: &DynamicMessage) -> Result<(&'static str, String), Box<dyn std::error::Error>> {
    for (field, verb) in [("get", "GET"), ("put", "PUT"), ("post", "POST"), ("delete", "DELETE"), ("patch", "PATCH")] {
        let desc = rule.descriptor().get_field_by_name(field).ok_or("bad HttpRule descriptor")?;
        if rule.has_field(&desc) {
            return Ok((verb, string_field(rule, field)));
        }
    }
    Err("google.api.http rule without a supported verb".into())
}

fn string_field(rule: &DynamicMessage, name: &str) -> String {
    rule.get_field_by_name(name).and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
