//! `infera`: one binary to serve ONNX models over the KServe v2 / Triton protocol.

mod embedded;
mod evaluate;
mod predict;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "infera",
    version,
    about = "Serve ONNX models over the KServe v2 / Triton protocol (HTTP and gRPC)",
    long_about = "infera serves ONNX models from a Triton-style model repository over the KServe v2 / \
Open Inference Protocol, so Triton's own clients (tritonclient, perf_analyzer) work unchanged.\n\n\
Quick start: `infera serve` serves the embedded example repository on Triton's default ports."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model repository over HTTP (8000), gRPC (8001) and Prometheus metrics (8002).
    Serve(serve::ServeArgs),
    /// Classify a folder of images in-process into a CSV/JSONL file; crash-safe, resumable.
    Predict(predict::PredictArgs),
    /// Accuracy, per-class precision/recall/F1 and the confusion matrix of a model on Fashion-MNIST.
    Evaluate(evaluate::EvaluateArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Evaluate(args) => evaluate::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the causes, no backtrace: it is a message for people.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
