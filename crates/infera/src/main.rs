//! `infera`: one binary to serve ONNX models over the KServe v2 / Triton protocol.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(infera::cli_main(std::env::args_os()))
}
