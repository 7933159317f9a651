//! `infera-trainer`: the training side of infera, run as `infera train|sweep|export`. A
//! separate program so the server's binary never links the training framework.

mod augment;
mod checkpoint;
mod dataset;
mod export;
mod mlflow;
mod model;
mod onnx;
mod recipe;
mod run;
mod sweep;
mod train;

use std::path::PathBuf;

use anyhow::{Context, bail};
use burn::prelude::*;
use clap::{Args, Parser, Subcommand, ValueEnum};
use infera_train::data::{self, Part};

use crate::recipe::Recipe;

#[derive(Parser)]
#[command(
    name = "infera",
    bin_name = "infera",
    version,
    about = "Train, sweep and export infera's image classifiers (burn, CPU)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a config file (with includes) and key=value overrides.
    Train(TrainArgs),
    /// Grid search: one short training per combination, a table sorted by validation accuracy.
    Sweep(SweepArgs),
    /// Checkpoint → ONNX (BatchNorm folded, normalisation inside) → model-repository entry.
    Export(ExportArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    /// burn's pure-Rust CPU backend (SIMD, multi-threaded). burn's ndarray backend with
    /// OpenBLAS measured 16x slower here, so it is not built in.
    Flex,
}

impl BackendArg {
    fn device(self) -> Device {
        match self {
            BackendArg::Flex => Device::flex(),
        }
    }
}

#[derive(Args, Clone)]
struct Common {
    /// The recipe: a TOML file; `include = [...]` pulls in others.
    #[arg(
        long,
        short,
        value_name = "FILE",
        default_value = "configs/fashion_mnist.toml"
    )]
    config: PathBuf,

    /// Overrides, Hydra-style: `optimizer.lr=0.0005`, `model=resnet_small` (a config group from
    /// <config dir>/model/), `+new.key=1` to add a key.
    #[arg(value_name = "KEY=VALUE")]
    overrides: Vec<String>,

    /// Where runs go: each run writes <runs-dir>/<id>/.
    #[arg(long, default_value = "runs", value_name = "DIR")]
    runs_dir: PathBuf,

    /// Training backend.
    #[arg(long, value_enum, default_value = "flex")]
    backend: BackendArg,

    /// No progress bars (logs and CI).
    #[arg(long)]
    no_progress: bool,

    /// Also log params, per-epoch metrics and artifacts to this MLflow tracking server.
    #[arg(long, env = "MLFLOW_TRACKING_URI", value_name = "URL")]
    mlflow_uri: Option<String>,

    /// MLflow experiment (created when missing).
    #[arg(long, env = "MLFLOW_EXPERIMENT_NAME", default_value = "infera")]
    mlflow_experiment: String,
}

#[derive(Args)]
#[command(after_help = "\
A run writes <runs-dir>/<id>/: config.toml (resolved), train.log, checkpoints/best and
checkpoints/final (model.safetensors + config.json), metrics.json (history and test metrics),
training_curves.png and confusion_matrix.png.

Examples:
  infera train --config configs/fashion_mnist.toml
  infera train optimizer.lr=0.0005 train.epochs=5
  infera train model=resnet_small optimizer=sgd")]
struct TrainArgs {
    #[command(flatten)]
    common: Common,

    /// Run id (folder name). Default: date-time and architecture.
    #[arg(long)]
    run_id: Option<String>,
}

#[derive(Args)]
#[command(after_help = "\
Each --grid adds an axis; every combination trains once (with the overrides applied) and is
ranked by its best validation accuracy. The test set is not used. Results go to
<runs-dir>/<sweep id>/results.md and results.csv, each trial to its own sub-folder.

Example:
  infera sweep --grid optimizer.lr=0.001,0.0003 --grid train.batch_size=64,128 train.epochs=3")]
struct SweepArgs {
    #[command(flatten)]
    common: Common,

    /// An axis: key=value1,value2,...
    #[arg(long = "grid", value_name = "KEY=V1,V2,...", required = true)]
    grid: Vec<String>,
}

#[derive(Args)]
#[command(after_help = "\
The ONNX model takes raw pixels `input` [N,1,28,28] FP32 0..255 (normalisation is inside) and
returns `logits` [N,classes]; opset 17, dynamic batch, BatchNorm folded into the convolutions.
It is checked on export: ONNX Runtime's logits must match burn's within 1e-4 on the first
--parity-images test images, or the export is removed and the command fails.

Example:
  infera export --checkpoint runs/20261122-101500-cnn/checkpoints/best \\
      --model-repository examples/model_repository --name fashion_mnist")]
struct ExportArgs {
    /// Checkpoint folder (model.safetensors + config.json).
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,

    /// Model repository to write the entry into.
    #[arg(long, value_name = "DIR")]
    model_repository: PathBuf,

    /// Model name in the repository.
    #[arg(long, default_value = "fashion_mnist")]
    name: String,

    /// Version folder.
    #[arg(long, default_value_t = 1)]
    version: u64,

    /// max_batch_size in config.pbtxt.
    #[arg(long, default_value_t = 64)]
    max_batch_size: usize,

    /// Test images for the parity check.
    #[arg(long, default_value_t = 1000)]
    parity_images: usize,

    /// Folder with Fashion-MNIST's IDX files (parity images).
    #[arg(long, env = "INFERA_DATA_DIR_FASHION_MNIST", default_value = data::DEFAULT_DIR)]
    data_dir: PathBuf,

    /// Path to libonnxruntime. Default: ORT_DYLIB_PATH or an installed `onnxruntime` wheel.
    #[arg(long, env = "INFERA_ONNXRUNTIME_LIB", value_name = "PATH")]
    onnxruntime_lib: Option<PathBuf>,
}

fn load_recipe(common: &Common) -> anyhow::Result<(Recipe, toml::Table)> {
    let table = infera_train::config::load(&common.config, &common.overrides)?;
    let recipe = Recipe::from_table(table.clone())
        .map_err(|e| anyhow::anyhow!("config {}: {e}", common.config.display()))?;
    Ok((recipe, table))
}

fn options(common: &Common, run_dir: PathBuf, evaluate_test: bool) -> run::RunOptions {
    run::RunOptions {
        run_dir,
        device: common.backend.device(),
        backend: format!("{:?}", common.backend).to_lowercase(),
        progress: !common.no_progress,
        evaluate_test,
        mlflow_uri: common.mlflow_uri.clone(),
        mlflow_experiment: common.mlflow_experiment.clone(),
    }
}

fn train_cmd(args: TrainArgs) -> anyhow::Result<()> {
    let (recipe, table) = load_recipe(&args.common)?;
    let id = args.run_id.unwrap_or_else(|| run::new_run_id(&recipe));
    let run_dir = args.common.runs_dir.join(&id);
    if run_dir.join("metrics.json").exists() {
        bail!("run {} exists; pass another --run-id", run_dir.display());
    }
    let result = run::run(&recipe, &table, &options(&args.common, run_dir, true))?;
    println!(
        "\nrun {}: best epoch {} (validation accuracy {:.2}%), {:.1} s/epoch",
        result.run_dir.display(),
        result.best_epoch,
        100.0 * result.best_val_accuracy,
        result.seconds_per_epoch
    );
    if let Some(t) = &result.test {
        println!(
            "test accuracy {:.2}%, macro F1 {:.4}",
            100.0 * t.accuracy,
            t.macro_f1
        );
    }
    println!(
        "export it with: infera export --checkpoint {} --model-repository <repo>",
        result.run_dir.join("checkpoints/best").display()
    );
    Ok(())
}

fn export_cmd(args: ExportArgs) -> anyhow::Result<()> {
    let device = Device::flex();
    let library = infera_backend_ort::find_library(args.onnxruntime_lib.as_deref()).context(
        "ONNX Runtime not found for the parity check (pass --onnxruntime-lib or set ORT_DYLIB_PATH; `pip install onnxruntime==1.31.1` provides it)",
    )?;
    let test = data::load(&args.data_dir, Part::Test).with_context(|| {
        format!(
            "parity images: no Fashion-MNIST test set in {}",
            args.data_dir.display()
        )
    })?;
    let parity_images = test.take(args.parity_images.min(test.len()).max(1));
    let outcome = export::export_checkpoint(
        &args.checkpoint,
        &args.model_repository,
        &args.name,
        args.version,
        args.max_batch_size,
        &library,
        &parity_images,
        &device,
    )?;
    let p = &outcome.parity;
    println!(
        "parity on {} images: max |ORT - burn| = {:.2e} (tolerance {:.0e}), top-1 agreement {:.2}%",
        p.images,
        p.max_abs_diff,
        p.tolerance,
        100.0 * p.argmax_agreement
    );
    if p.max_abs_diff.is_nan() || p.max_abs_diff > p.tolerance {
        let _ = std::fs::remove_file(&outcome.model_path);
        bail!(
            "ONNX export does not match the checkpoint (max difference {:.2e} > {:.0e}); removed {}",
            p.max_abs_diff,
            p.tolerance,
            outcome.model_path.display()
        );
    }
    let report = args.model_repository.join(&args.name).join("export.json");
    std::fs::write(
        &report,
        serde_json::to_vec_pretty(&serde_json::json!({
            "checkpoint": args.checkpoint,
            "onnx_bytes": outcome.bytes,
            "opset": onnx::OPSET,
            "parity": p,
        }))?,
    )?;
    println!(
        "wrote {} ({:.1} KiB); serve it with: infera serve --model-repository {}",
        outcome.model_path.display(),
        outcome.bytes as f64 / 1024.0,
        args.model_repository.display()
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train_cmd(a),
        Command::Sweep(a) => sweep::run(&a.common, &a.grid),
        Command::Export(a) => export_cmd(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
