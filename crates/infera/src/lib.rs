//! `infera`: one program to serve ONNX models over the KServe v2 / Triton protocol; this
//! library is the program, for the `infera` binary and for embedding (the Python package).

mod embedded;
mod encrypt;
mod evaluate;
mod keys;
mod models;
mod optimize;
mod predict;
mod serve;
mod trainer;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "infera",
    version,
    about = "Serve ONNX models over the KServe v2 / Triton protocol (HTTP and gRPC); train and export image classifiers",
    long_about = "infera serves ONNX models from a Triton-style model repository over the KServe v2 / \
Open Inference Protocol, so Triton's own clients (tritonclient, perf_analyzer) work unchanged.\n\n\
Quick start: `infera serve` serves the embedded example repository on Triton's default ports.\n\
Training: `infera train` / `sweep` / `export` run the separate infera-trainer program (burn), so \
the server never links the training framework."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model repository over HTTP (8000), gRPC (8001) and Prometheus metrics (8002).
    Serve(Box<serve::ServeArgs>),
    /// Check what `serve` needs with the same flags (ONNX Runtime, the model repository, free
    /// ports, TLS files, keys, the data directory) and say what to fix.
    Doctor(Box<serve::ServeArgs>),
    /// Classify a folder of images in-process into a CSV/JSONL file; crash-safe, resumable.
    Predict(predict::PredictArgs),
    /// Accuracy, per-class precision/recall/F1 and the confusion matrix of a model on Fashion-MNIST.
    Evaluate(evaluate::EvaluateArgs),
    /// Train an image classifier (burn, CPU) from a config with key=value overrides.
    #[command(disable_help_flag = true)]
    Train(Forwarded),
    /// Grid search over training settings, ranked by validation accuracy.
    #[command(disable_help_flag = true)]
    Sweep(Forwarded),
    /// Export a training checkpoint to ONNX as a model-repository entry, parity-checked.
    #[command(disable_help_flag = true)]
    Export(Forwarded),
    /// Shrink a model: INT8 quantization, graph clean-up, pruning of checkpoints.
    Optimize(optimize::OptimizeArgs),
    /// Compare models: size, parameters, FLOPs per layer, latency, throughput, accuracy.
    Report(optimize::ReportArgs),
    /// The models of a running server: list, load, unload, reload (over its HTTP API).
    Models(models::ModelsArgs),
    /// API keys for `infera serve --auth-keys`: create (printed once), list, revoke.
    Keys(keys::KeysArgs),
    /// Encrypt a file at rest (AES-256-GCM), e.g. a model as model.onnx.enc.
    Encrypt(encrypt::CryptArgs),
    /// Decrypt a file infera encrypted (a model, or a batch job's results).
    Decrypt(encrypt::CryptArgs),
}

/// Arguments passed through to the trainer (`infera train --help` shows them).
#[derive(clap::Args)]
pub(crate) struct Forwarded {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub(crate) args: Vec<std::ffi::OsString>,
}

/// Runs a command line (`args[0]` is the program name) as the `infera` program does and
/// returns its exit status. `--help`, `--version` and usage errors print and exit the
/// process, as clap does.
pub fn cli_main<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    match run(cli.command) {
        Ok(()) => 0,
        Err(e) => {
            // One line with the causes, no backtrace: it is a message for people.
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// Runs a command line and returns its error instead of printing it; usage errors (and
/// `--help`) come back as errors holding clap's text. For programs embedding infera.
pub fn run_command<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|e| anyhow::anyhow!("{}", e.render()))?;
    run(cli.command)
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve::run(*args),
        Command::Doctor(args) => serve::doctor::run(*args),
        Command::Predict(args) => predict::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Train(f) => trainer::run("train", f.args),
        Command::Sweep(f) => trainer::run("sweep", f.args),
        Command::Export(f) => trainer::run("export", f.args),
        Command::Optimize(args) => optimize::run(args),
        Command::Report(args) => optimize::report_cmd(args),
        Command::Keys(args) => keys::run(args),
        Command::Models(args) => models::run(args),
        Command::Encrypt(args) => encrypt::run(args, true),
        Command::Decrypt(args) => encrypt::run(args, false),
    }
}

/// Parses `infera serve` flags (without the program and command names) and serves until
/// `stop` resolves, then drains as on SIGTERM. For programs embedding the server.
pub fn serve_until<I, T>(
    flags: I,
    stop: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut args: Vec<std::ffi::OsString> = vec!["infera".into(), "serve".into()];
    args.extend(flags.into_iter().map(Into::into));
    let cli = Cli::try_parse_from(args).map_err(|e| anyhow::anyhow!("{}", e.render()))?;
    let Command::Serve(args) = cli.command else {
        unreachable!("parsed as serve")
    };
    serve::run_until(*args, stop)
}

/// An in-process server (no ports) with `model` loaded, with the ensemble steps it uses:
/// what `infera predict` runs on. `model_repository` None is the built-in example repository.
pub fn open_model(
    model_repository: Option<&std::path::Path>,
    onnxruntime_lib: Option<&std::path::Path>,
    model: &str,
) -> anyhow::Result<std::sync::Arc<infera_core::InferenceServer>> {
    predict::in_process(model_repository, onnxruntime_lib, model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent_and_defaults_parse() {
        Cli::command().debug_assert();
        // Reading every flag's default catches a parser whose type differs from its field's.
        let Command::Serve(args) = Cli::try_parse_from(["infera", "serve"]).unwrap().command else {
            panic!("serve")
        };
        assert!(
            format!("{args:?}").contains("job_retention: 604800s"),
            "{args:?}"
        );
        assert!(Cli::try_parse_from(["infera", "serve", "--job-retention", "0"]).is_ok());
        assert!(Cli::try_parse_from(["infera", "serve", "--job-retention", "soon"]).is_err());
    }
}
