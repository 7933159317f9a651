use prost_reflect::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // protox is a pure-Rust protoc, so building needs nothing but cargo.
    let fds = protox::compile(["grpc_service.proto", "model_config.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("inference_descriptor.bin"), fds.encode_to_vec())?;
    // Messages name themselves (prost::Name), so the codec can check each against its schema
    // before decoding it (guard.rs).
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        .codec_path("crate::guard::GuardedCodec")
        .compile_fds_with_config(fds, config)?;
    // ONNX's own schema (onnx.proto3, the copy tract compiles), for the crates that read and
    // write model files without needing a runtime (infera-optimize).
    let onnx = protox::compile(["onnx/onnx.proto3"], ["proto"])?;
    prost_build::Config::new().compile_fds(onnx)?;
    Ok(())
}
