//! Compiles `proto/` with protox (pure Rust, so no `protoc` on the build machine), then generates the
//! prost types and their canonical proto3 JSON mapping (pbjson) from the same descriptors, so the JSON
//! and protobuf forms can never drift apart.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/mqim/v1/im.proto"];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_bytes = fds.encode_to_vec();
    fs::write(out.join("descriptors.bin"), &descriptor_bytes)?;

    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(fds.clone())?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .build(&[".mqim"])?;

    // The request operations, derived from the `Request.op` oneof, so the server can tell an unknown
    // operation from a malformed one without keeping a second list by hand.
    let mut ops = Vec::new();
    for file in &fds.file {
        for msg in &file.message_type {
            if msg.name() != "Request" {
                continue;
            }
            let op_index = msg
                .oneof_decl
                .iter()
                .position(|o| o.name() == "op")
                .ok_or("Request has no `op` oneof")?;
            for field in &msg.field {
                if field.oneof_index == Some(op_index as i32) {
                    ops.push(field.json_name().to_string());
                }
            }
        }
    }
    fs::write(
        out.join("request_ops.rs"),
        format!(
            "/// JSON names of the operations a `Request` may carry (from the schema).\npub const REQUEST_OPS: &[&str] = &{ops:?};\n"
        ),
    )?;
    Ok(())
}
