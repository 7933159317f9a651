//! `infera-trainer`: the training side of infera, run as `infera train|sweep|export`. A
//! separate program so the server's binary never links the training framework.

mod augment;
mod checkpoint;
mod dataset;
mod export;
mod mlflow;
mod model;
mod onnx;
mod prune;
mod recipe;
mod resume;
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
    /// Magnitude pruning of a checkpoint (--structured: whole channels), fine-tuning, export.
    Prune(PruneArgs),
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
  infera train model=resnet_small optimizer=sgd
  infera train --resume runs/20261122-101500-cnn    # after a crash or kill

Every epoch also leaves a resume point in checkpoints/last-<epoch>/ (weights, optimizer
state, loop state), switched in atomically by checkpoints/last.json.")]
struct TrainArgs {
    #[command(flatten)]
    common: Common,

    /// Run id (folder name). Default: date-time and architecture.
    #[arg(long, conflicts_with = "resume")]
    run_id: Option<String>,

    /// Continue an interrupted run (e.g. runs/20261122-101500-cnn) from its last finished
    /// epoch, with its own config.toml: weights, optimizer state, LR schedule position, RNG
    /// and early stopping carry on, so it ends as an uninterrupted run would.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
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

    /// Test-time augmentation inside the graph: also run each image mirrored left to right
    /// and return the mean of both logits. Twice the compute per image; on Fashion-MNIST it
    /// adds about 0.2-0.3 points of accuracy (docs/model-card.md).
    #[arg(long)]
    flip_average: bool,

    /// Folder with Fashion-MNIST's IDX files (parity images).
    #[arg(long, env = "INFERA_DATA_DIR_FASHION_MNIST", default_value = data::DEFAULT_DIR)]
    data_dir: PathBuf,

    /// Path to libonnxruntime. Default: ORT_DYLIB_PATH or an installed `onnxruntime` wheel.
    #[arg(long, env = "INFERA_ONNXRUNTIME_LIB", value_name = "PATH")]
    onnxruntime_lib: Option<PathBuf>,
}

#[derive(Args)]
#[command(after_help = "\
Prunes a trained checkpoint by weight magnitude, fine-tunes it with the recipe (--config and
KEY=VALUE overrides; epochs and learning rate from the flags below) starting from the pruned
weights, and evaluates the original, the pruned and the fine-tuned model on the test set.

  --structured   removes the whole conv channels and hidden units with the smallest L1 norm
                 (cnn architecture): the model gets narrower and its ONNX file smaller.
  (default)      zeroes the smallest weights of each layer and keeps them at zero while
                 fine-tuning: same file size, sparse weights.

Writes <runs-dir>/<id>/ like `infera train` plus prune.json; with --model-repository the
fine-tuned checkpoint is exported (parity-checked) as <name>.

Example:
  infera optimize prune --checkpoint examples/checkpoints/fashion_mnist --amount 0.3 \\
      --structured --finetune-epochs 1 --model-repository /tmp/repo --name fashion_mnist_pruned")]
struct PruneArgs {
    #[command(flatten)]
    common: Common,

    /// Checkpoint folder (model.safetensors + config.json).
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,

    /// Share of channels (structured) or weights (unstructured) to remove, 0 < amount < 1.
    #[arg(long)]
    amount: f64,

    /// Remove whole channels (the model and its file shrink) instead of single weights.
    #[arg(long)]
    structured: bool,

    /// With --structured: round the channels kept per layer to a multiple of this (8 fills
    /// the CPU's SIMD blocks; 1 keeps exactly 1 - amount).
    #[arg(long, default_value_t = 1)]
    channel_multiple: usize,

    /// Fine-tuning epochs after pruning (0: none).
    #[arg(long, default_value_t = 1)]
    finetune_epochs: usize,

    /// Peak learning rate for fine-tuning (lower than training's: the weights are close).
    #[arg(long, default_value_t = 0.0005)]
    finetune_lr: f64,

    /// Run id (folder name). Default: date-time and "pruned".
    #[arg(long)]
    run_id: Option<String>,

    /// Export the fine-tuned model into this model repository.
    #[arg(long, value_name = "DIR")]
    model_repository: Option<PathBuf>,

    /// Model name in the repository.
    #[arg(long, default_value = "fashion_mnist_pruned")]
    name: String,

    /// Path to libonnxruntime (export parity check).
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
        start: Default::default(),
        resume: false,
    }
}

fn train_cmd(args: TrainArgs) -> anyhow::Result<()> {
    let (recipe, table, run_dir) = match &args.resume {
        Some(dir) => {
            if !args.common.overrides.is_empty() {
                bail!(
                    "--resume continues the run with its own config.toml; drop the KEY=VALUE overrides"
                );
            }
            let path = dir.join("config.toml");
            if !path.is_file() {
                bail!("{} is not a run folder (no config.toml)", dir.display());
            }
            let table = infera_train::config::load(&path, &[])?;
            let recipe = Recipe::from_table(table.clone())
                .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
            (recipe, table, dir.clone())
        }
        None => {
            let (recipe, table) = load_recipe(&args.common)?;
            let id = args.run_id.unwrap_or_else(|| run::new_run_id(&recipe));
            (recipe, table, args.common.runs_dir.join(&id))
        }
    };
    if run_dir.join("metrics.json").exists() {
        match args.resume {
            Some(_) => bail!("run {} has finished; nothing to resume", run_dir.display()),
            None => bail!("run {} exists; pass another --run-id", run_dir.display()),
        }
    }
    let mut opts = options(&args.common, run_dir, true);
    opts.resume = args.resume.is_some();
    let result = run::run(&recipe, &table, opts)?;
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
        args.flip_average,
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
            "flip_average": args.flip_average,
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

fn prune_cmd(args: PruneArgs) -> anyhow::Result<()> {
    use burn::module::Module;
    if !(args.amount > 0.0 && args.amount < 1.0) {
        bail!(
            "--amount must be between 0 and 1 (e.g. 0.3), got {}",
            args.amount
        );
    }
    let device = args.common.backend.device();
    let (model, cfg) = checkpoint::load(&args.checkpoint, &device)?;
    let (mut recipe, _) = load_recipe(&args.common)?;
    let data = dataset::load(&recipe.data)?;
    if data.classes.len() != cfg.classes.len() {
        bail!(
            "the checkpoint has {} classes but the data set has {}",
            cfg.classes.len(),
            data.classes.len()
        );
    }
    let classes = cfg.classes.len();
    let test_accuracy = |m: &model::Classifier| -> f64 {
        let logits = train::logits(m, &data.test, &device, 500);
        let predicted = train::argmax_rows(&logits, classes);
        let right = predicted
            .iter()
            .zip(&data.test.labels)
            .filter(|(p, l)| **p == **l as usize)
            .count();
        right as f64 / data.test.len().max(1) as f64
    };
    let original = test_accuracy(&model);
    let (_, params_before) = prune::sparsity(&model);
    let (pruned, arch, masks) = if args.structured {
        let (p, a) = prune::structured(
            &model,
            &cfg.model,
            classes,
            args.amount,
            args.channel_multiple,
            &device,
        )?;
        (p, a, None)
    } else {
        let mut mag = prune::Magnitude {
            amount: args.amount,
            masks: Default::default(),
        };
        let p = model.clone().map(&mut mag);
        (p, cfg.model.clone(), Some(mag.masks))
    };
    let (sparsity, params_after) = prune::sparsity(&pruned);
    let after_pruning = test_accuracy(&pruned);
    println!(
        "pruned {}: {params_before} -> {params_after} parameters, {:.1}% zero weights; test accuracy {:.2}% -> {:.2}% before fine-tuning",
        if args.structured {
            "channels"
        } else {
            "weights"
        },
        100.0 * sparsity,
        100.0 * original,
        100.0 * after_pruning
    );

    let id = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("{}-pruned", chrono::Local::now().format("%Y%m%d-%H%M%S")));
    let run_dir = args.common.runs_dir.join(&id);
    if run_dir.join("prune.json").exists() {
        bail!("run {} exists; pass another --run-id", run_dir.display());
    }
    let best = run_dir.join("checkpoints/best");
    let fine_tuned = if args.finetune_epochs > 0 {
        recipe.model = arch.clone();
        recipe.train.epochs = args.finetune_epochs;
        recipe.optimizer.lr = args.finetune_lr;
        recipe.train.early_stopping_patience = 0;
        recipe.schedule.warmup_epochs = 0;
        let table = toml::Table::try_from(&recipe)?;
        let mut opts = options(&args.common, run_dir.clone(), true);
        opts.start = train::Start {
            model: Some(pruned),
            after_step: masks.map(|m| {
                Box::new(move |c: model::Classifier| c.map(&mut prune::KeepZero(&m)))
                    as Box<dyn Fn(model::Classifier) -> model::Classifier>
            }),
            resume: None,
        };
        let result = run::run(&recipe, &table, opts)?;
        result.test.map(|t| t.accuracy)
    } else {
        let mut c = cfg.clone();
        c.model = arch.clone();
        checkpoint::save(&best, &pruned, &c)?;
        None
    };
    let (tuned_model, _) = checkpoint::load(&best, &device)?;
    let (final_sparsity, final_params) = prune::sparsity(&tuned_model);
    let summary = serde_json::json!({
        "checkpoint": args.checkpoint,
        "amount": args.amount,
        "structured": args.structured,
        "architecture_before": cfg.model,
        "architecture_after": arch,
        "params_before": params_before,
        "params_after": final_params,
        "zero_weights": final_sparsity,
        "finetune_epochs": args.finetune_epochs,
        "test_accuracy": {
            "original": original,
            "pruned": after_pruning,
            "fine_tuned": fine_tuned,
        },
        "pruned_checkpoint": best,
    });
    std::fs::create_dir_all(&run_dir)?;
    std::fs::write(
        run_dir.join("prune.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    println!(
        "test accuracy: original {:.2}%, pruned {:.2}%, fine-tuned {}; checkpoint {}",
        100.0 * original,
        100.0 * after_pruning,
        fine_tuned.map_or("-".into(), |a| format!("{:.2}%", 100.0 * a)),
        best.display()
    );
    if let Some(repo) = args.model_repository {
        export_cmd(ExportArgs {
            checkpoint: best,
            model_repository: repo,
            name: args.name,
            version: 1,
            max_batch_size: 64,
            parity_images: 1000,
            flip_average: false,
            data_dir: recipe.data.dir.clone(),
            onnxruntime_lib: args.onnxruntime_lib,
        })?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // SAFETY: first statement of `main`: no other thread exists yet (the export checks its
    // ONNX file with ONNX Runtime).
    unsafe { infera_backend_ort::opt_out_of_telemetry() };
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
        Command::Prune(a) => prune_cmd(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
