//! Compiles `proto/*.proto` with prost (protox parses them: no system `protoc`) and regenerates
//! `include/criu.h` from `src/capi` with cbindgen. CI fails when the committed header is stale.

use std::path::{Path, PathBuf};

fn main() {
    compile_protos();
    generate_header();
    // The cdylib is what dlopen("libcriu.so.2") and -lcriu find: give it libcriu's SONAME.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcriu.so.2");
}

fn compile_protos() {
    let dir = Path::new("proto");
    println!("cargo:rerun-if-changed=proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("proto/ directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    let fds = protox::compile(&files, [dir]).expect("parsing proto/*.proto");
    let mut cfg = prost_build::Config::new();
    cfg.compile_fds(fds).expect("generating Rust from proto/");

    // The same schemas without comments, for reflection (`pb::FILE_DESCRIPTOR_SET`).
    let bytes = protox::Compiler::new([dir])
        .and_then(|mut c| {
            c.include_source_info(false)
                .include_imports(true)
                .open_files(&files)?;
            Ok(c.encode_file_descriptor_set())
        })
        .expect("parsing proto/*.proto");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("criu-descriptors.bin");
    std::fs::write(out, bytes).expect("writing the descriptor set");
}

fn generate_header() {
    println!("cargo:rerun-if-changed=src/capi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let config = cbindgen::Config::from_file(Path::new(&crate_dir).join("cbindgen.toml"))
        .expect("cbindgen.toml");
    let out = Path::new(&crate_dir).join("include/criu.h");
    let capi = Path::new(&crate_dir).join("src/capi");
    let prologue = std::fs::read_to_string(capi.join("prologue.h")).expect("src/capi/prologue.h");
    // Only the C API module (cbindgen follows its `mod` lines into the other files): the rest
    // of the crate is not libcriu's.
    let builder = cbindgen::Builder::new()
        .with_config(config)
        .with_after_include(prologue)
        .with_src(capi.join("mod.rs"));
    match builder.generate() {
        // write_to_file only touches the file when the text changed, so builds stay incremental.
        Ok(bindings) => {
            bindings.write_to_file(out);
        }
        Err(e) => panic!("cbindgen failed to generate include/criu.h: {e}"),
    }
}
