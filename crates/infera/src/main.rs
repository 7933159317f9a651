//! `infera`: one binary to serve ONNX models over the KServe v2 / Triton protocol.

// glibc's malloc was ~12% of the server's CPU per request under load (chunk consolidation and
// unlinking; tokio frees on another thread what it allocated on one): mimalloc's per-thread
// free lists take a fraction of that (docs/benchmarks.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // SAFETY: first statement of `main`: no other thread exists yet.
    unsafe { infera_backend_ort::opt_out_of_telemetry() };
    std::process::ExitCode::from(infera::cli_main(std::env::args_os()))
}
