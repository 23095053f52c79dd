//! Compiles every `.proto` under `proto/` into Rust (prost messages + tonic clients and servers)
//! and writes the file descriptor set that gRPC reflection serves, so `grpcurl describe` works
//! without .proto files. protoc comes from `protoc-bin-vendored`: a fresh machine needs nothing.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = find_protos(Path::new("proto"))?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("ordermesh_descriptor.bin"))
        .compile_with_config(
            config,
            &protos,
            &[PathBuf::from("proto"), protoc_bin_vendored::include_path()?],
        )?;

    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

/// All `.proto` files below `dir`, sorted so the generated code does not depend on directory order.
fn find_protos(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(find_protos(&path)?);
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}
