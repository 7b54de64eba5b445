//! Patched for taskgate: compiles `buf/validate/validate.proto` with protox
//! (pure Rust) instead of running a system `protoc`, then generates the same
//! prost types, `ReflectMessage` derives and descriptor set as upstream's
//! build script (prost-reflect-build's attributes, applied by hand).

use std::env;
use std::fs;
use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "proto";
    let files = &["buf/validate/validate.proto"];

    for f in files {
        println!("cargo:rerun-if-changed={proto_dir}/{f}");
    }

    let base_path = PathBuf::from(
        env::var("OUT_DIR")
            .map_err(|err| format!("missing OUT_DIR environment variable: {err}"))?,
    );
    let descriptor_path = base_path.join("file_descriptor_set.bin");

    let mut compiler = protox::Compiler::new([proto_dir])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(files)?;
    let fds = compiler.file_descriptor_set();
    fs::write(&descriptor_path, fds.encode_to_vec())?;

    let mut config = prost_build::Config::new();
    #[cfg(feature = "reflect")]
    for message in compiler.descriptor_pool().all_messages() {
        let full_name = message.full_name();
        config
            .type_attribute(full_name, "#[derive(::prost_reflect::ReflectMessage)]")
            .type_attribute(full_name, format!(r#"#[prost_reflect(message_name = "{full_name}")]"#))
            .type_attribute(full_name, r#"#[prost_reflect(descriptor_pool = "DESCRIPTOR_POOL")]"#);
    }
    config.compile_fds(fds)?;
    Ok(())
}
