//! Compiles `proto/` with protox (pure Rust, no system `protoc`), generates the
//! tonic/prost code, writes the descriptor set used by server reflection
//! (and, decoded, by the gateway's REST layer), and extracts the numeric and
//! pattern limits of the `buf.validate` annotations into constants the
//! services' domain types use (so every limit is written once, in the proto).

use std::{env, fmt::Write as _, fs, path::PathBuf};

use prost_reflect::Value;

const PROTO_ROOT: &str = "../proto";
const FILES: &[&str] = &["taskgate/auth/v1/auth.proto", "taskgate/task/v1/task.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(FILES)?;
    let pool = compiler.descriptor_pool();
    let fds = compiler.file_descriptor_set();
    // Encoded by protox itself, which keeps every option (the `buf.validate`
    // and `google.api.http` extensions); prost's `FileDescriptorSet` type
    // would drop them as unknown fields.
    fs::write(out_dir.join("taskgate_descriptor.bin"), compiler.encode_file_descriptor_set())?;

    // Every taskgate message is a `prost_reflect::ReflectMessage` over the
    // crate's descriptor pool, so the validator reads its `buf.validate`
    // rules from the descriptors.
    let mut builder = tonic_prost_build::configure().build_client(true).build_server(true);
    for message in pool.all_messages().filter(|m| m.full_name().starts_with("taskgate.")) {
        let name = message.full_name();
        builder = builder
            .message_attribute(name, "#[derive(::prost_reflect::ReflectMessage)]")
            .message_attribute(name, r#"#[prost_reflect(descriptor_pool = "crate::DESCRIPTOR_POOL")]"#)
            .message_attribute(name, format!(r#"#[prost_reflect(message_name = "{name}")]"#));
    }
    builder.compile_fds(fds)?;

    for package in ["taskgate.auth.v1", "taskgate.task.v1"] {
        fs::write(out_dir.join(format!("rules.{package}.rs")), rule_constants(&pool, package)?)?;
    }
    Ok(())
}

/// Renders one constant per numeric or pattern rule of the `buf.validate`
/// field annotations in `package`, named `MESSAGE_FIELD_RULE` (for example
/// `TASK_TITLE_MAX_LEN` for `Task.title`'s `string.max_len`). Lengths and
/// counts are `usize`; bounds keep the field's type; patterns are `&str`.
fn rule_constants(pool: &prost_reflect::DescriptorPool, package: &str) -> Result<String, Box<dyn std::error::Error>> {
    let ext = pool.get_extension_by_name("buf.validate.field").ok_or("buf.validate.field extension not found")?;
    let mut out = String::new();
    for message in pool.all_messages().filter(|m| m.package_name() == package) {
        for field in message.fields() {
            let options = field.options();
            if !options.has_extension(&ext) {
                continue;
            }
            let rules = options.get_extension(&ext);
            let Value::Message(rules) = rules.as_ref() else {
                return Err("buf.validate.field is not a message".into());
            };
            // The typed rules (`string`, `int32`, ...) are the set message fields.
            for (kind, typed) in rules.fields() {
                let Value::Message(typed) = typed else { continue };
                for (rule, value) in typed.fields() {
                    let (ty, literal) = match value {
                        // Lengths and counts (`max_len`, `min_bytes`, `max_items`, ...).
                        Value::U64(n)
                            if ["_len", "_bytes", "_items", "_pairs"].iter().any(|s| rule.name().ends_with(s)) =>
                        {
                            ("usize", n.to_string())
                        }
                        Value::U64(n) => ("u64", n.to_string()),
                        Value::U32(n) => ("u32", n.to_string()),
                        Value::I32(n) => ("i32", n.to_string()),
                        Value::I64(n) => ("i64", n.to_string()),
                        Value::String(s) => ("&str", format!("{s:?}")),
                        _ => continue,
                    };
                    let name = format!(
                        "{}_{}_{}",
                        upper_snake(message.name()),
                        field.name().to_uppercase(),
                        rule.name().to_uppercase()
                    );
                    writeln!(
                        out,
                        "/// `{}.{}`: `(buf.validate.field).{}.{} = {}`.",
                        message.name(),
                        field.name(),
                        kind.name(),
                        rule.name(),
                        literal.replace('`', "\\`")
                    )?;
                    writeln!(out, "pub const {name}: {ty} = {literal};")?;
                }
            }
        }
    }
    Ok(out)
}

/// `CreateTaskRequest` to `CREATE_TASK_REQUEST`.
fn upper_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}
