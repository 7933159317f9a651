//! `infera`: one binary to serve ONNX models over the KServe v2 / Triton protocol.

fn main() -> std::process::ExitCode {
    // SAFETY: first statement of `main`: no other thread exists yet.
    unsafe { infera_backend_ort::opt_out_of_telemetry() };
    std::process::ExitCode::from(infera::cli_main(std::env::args_os()))
}
