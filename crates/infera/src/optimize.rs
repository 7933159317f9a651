//! `infera optimize quantize | clean | prune` and `infera report`: shrink a model and show
//! what it cost and gained, without Python.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use infera_backend_image::Pipeline;
use infera_optimize::calibrate::Method;
use infera_optimize::data::{self, Source};
use infera_optimize::quantize::{Mode, Options};
use infera_optimize::runtime::Runtime;
use infera_optimize::{QuantizeJob, clean, graph, report};
use infera_train::data::{DEFAULT_DIR, Part};

#[derive(Args)]
pub struct OptimizeArgs {
    #[command(subcommand)]
    command: OptimizeCommand,
}

#[derive(Subcommand)]
enum OptimizeCommand {
    /// INT8-quantize an ONNX model: static QDQ with calibration (default) or dynamic.
    Quantize(QuantizeArgs),
    /// Clean up an ONNX graph: fold BatchNorm and constants, drop Identity/Dropout and dead nodes.
    Clean(CleanArgs),
    /// Prune a training checkpoint (magnitude; --structured removes whole channels), fine-tune, export.
    #[command(disable_help_flag = true)]
    Prune(crate::Forwarded),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Static,
    Dynamic,
}

#[derive(Args)]
#[command(after_help = "\
Static mode (the default) measures each activation's range on the calibration images and
writes a QDQ model (QuantizeLinear/DequantizeLinear pairs) that ONNX Runtime runs with INT8
kernels: UINT8 activations (asymmetric), INT8 weights (symmetric), INT32 biases. Dynamic mode
quantizes weights only and the activations per batch at run time; on CNNs it is usually slower
than FP32 on CPU, and the tool says so when quantization does not pay.

Calibration images: `fashion-mnist` (the training set, first --calibration-size images) or a
folder of images (flat, or class subfolders). Folder images go through the server's own image
pipeline: the served preprocessing model named by --preprocess, or by default the shipped
`fashion_preprocess` settings (fit inside the model's input, triangle filter, raw pixels
0..255 in the model's channels), so the model is calibrated on the pixels it is served.

Example:
  infera optimize quantize --model examples/model_repository/fashion_mnist/1/model.onnx \\
      --calibration fashion-mnist --output /tmp/fashion_mnist_int8/1/model.onnx")]
struct QuantizeArgs {
    /// The FP32 ONNX model.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Where the INT8 model goes.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Calibration images: `fashion-mnist` or a folder of images (static mode).
    #[arg(long, value_name = "DATA", default_value = "fashion-mnist")]
    calibration: String,
    /// How many calibration images.
    #[arg(long, default_value_t = 512)]
    calibration_size: usize,
    /// Range per activation: `minmax` or `percentile[:P]` (P-th percentile at each end, default 99.999).
    #[arg(long, default_value = "minmax", value_parser = |s: &str| s.parse::<Method>())]
    calibration_method: Method,
    #[arg(long, value_enum, default_value = "static")]
    mode: ModeArg,
    /// One weight scale per output channel (more accurate, slightly larger).
    #[arg(long)]
    per_channel: bool,
    /// Also quantize the model's outputs (scores lose precision; off by default).
    #[arg(long)]
    quantize_outputs: bool,
    /// Images for the FP32-vs-INT8 check: `fashion-mnist:test`, a folder, or `none`.
    #[arg(long, value_name = "DATA", default_value = "fashion-mnist:test")]
    check: String,
    /// How many check images.
    #[arg(long, default_value_t = 2000)]
    check_size: usize,
    /// The served `image_preprocess` model (its folder or config.pbtxt) whose pipeline folder
    /// images go through. Default: the shipped `fashion_preprocess` settings at the model's size.
    #[arg(long, value_name = "MODEL_DIR")]
    preprocess: Option<PathBuf>,
    /// Folder with the Fashion-MNIST IDX files.
    #[arg(long, env = "INFERA_DATA_DIR_FASHION_MNIST", default_value = DEFAULT_DIR)]
    data_dir: PathBuf,
    /// ONNX Runtime threads for the check and timing.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    /// Path to libonnxruntime. Default: ORT_DYLIB_PATH or an installed `onnxruntime` wheel.
    #[arg(long, env = "INFERA_ONNXRUNTIME_LIB", value_name = "PATH")]
    onnxruntime_lib: Option<PathBuf>,
}

#[derive(Args)]
struct CleanArgs {
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Path to libonnxruntime (computes constant subgraphs).
    #[arg(long, env = "INFERA_ONNXRUNTIME_LIB", value_name = "PATH")]
    onnxruntime_lib: Option<PathBuf>,
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} · {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

/// The served preprocessing a folder of images goes through (`--preprocess`).
fn preprocess_pipeline(dir: Option<&std::path::Path>) -> anyhow::Result<Option<Pipeline>> {
    dir.map(|d| Pipeline::from_model_config(d).map_err(|e| anyhow::anyhow!("--preprocess {e}")))
        .transpose()
}

fn images_for(
    spec: &str,
    data_dir: &std::path::Path,
    default: Part,
    item: &[usize],
    preprocess: Option<&Pipeline>,
    limit: usize,
) -> anyhow::Result<Option<data::Images>> {
    if spec == "none" {
        return Ok(None);
    }
    let source = Source::parse(spec, data_dir, default);
    let images = data::load(&source, item, preprocess, Some(limit))
        .with_context(|| format!("cannot load images from '{spec}'"))?;
    Ok(Some(images))
}

pub fn run(args: OptimizeArgs) -> anyhow::Result<()> {
    match args.command {
        OptimizeCommand::Quantize(a) => quantize(a),
        OptimizeCommand::Clean(a) => clean_cmd(a),
        OptimizeCommand::Prune(f) => crate::trainer::run("prune", f.args),
    }
}

fn quantize(a: QuantizeArgs) -> anyhow::Result<()> {
    crate::serve::init_logging_quiet();
    anyhow::ensure!(
        a.model != a.output,
        "--output is the same file as --model; write the INT8 model elsewhere"
    );
    let rt = Runtime::new(a.onnxruntime_lib.as_deref())?;
    let model = graph::load(&a.model)?;
    let item = report::item_dims(&model)?;
    let mode = match a.mode {
        ModeArg::Static => Mode::Static,
        ModeArg::Dynamic => Mode::Dynamic,
    };
    let preprocess = preprocess_pipeline(a.preprocess.as_deref())?;
    let calibration = match mode {
        Mode::Static => images_for(
            &a.calibration,
            &a.data_dir,
            Part::Train,
            &item,
            preprocess.as_ref(),
            a.calibration_size,
        )?,
        Mode::Dynamic => None,
    };
    anyhow::ensure!(
        mode == Mode::Dynamic || calibration.is_some(),
        "static quantization needs --calibration images (or use --mode dynamic)"
    );
    let check = images_for(
        &a.check,
        &a.data_dir,
        Part::Test,
        &item,
        preprocess.as_ref(),
        a.check_size,
    )?;
    let job = QuantizeJob {
        model: a.model.clone(),
        output: a.output.clone(),
        options: Options {
            mode,
            per_channel: a.per_channel,
            quantize_outputs: a.quantize_outputs,
        },
        method: a.calibration_method,
        calibration: calibration.as_ref(),
        check: check.as_ref(),
        threads: a.threads,
    };
    let pb = bar(
        calibration.as_ref().map_or(0, |c| c.count) as u64,
        "calibrating",
    );
    let outcome = infera_optimize::quantize_file(&rt, &job, |stage, n| {
        if stage == "calibrating" {
            pb.inc(n as u64);
        } else {
            pb.set_message(stage.to_string());
        }
    })?;
    pb.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    }
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v));
    eprintln!(
        "wrote {} ({:?} INT8, {} layers): {} -> {} bytes ({:.1}% of FP32)",
        a.output.display(),
        outcome.mode,
        outcome.quantized_layers.len(),
        outcome.fp32_bytes,
        outcome.int8_bytes,
        100.0 * outcome.int8_bytes as f64 / outcome.fp32_bytes.max(1) as f64
    );
    if outcome.agreement.is_some() {
        eprintln!(
            "check on {}: FP32 accuracy {}, INT8 accuracy {}, same top-1 on {}",
            a.check,
            pct(outcome.fp32_accuracy),
            pct(outcome.int8_accuracy),
            pct(outcome.agreement)
        );
    }
    if outcome.speedup_b64 < 1.0 {
        eprintln!(
            "warning: quantization does not pay here: the INT8 model runs at {:.2}x FP32's throughput (batch 64, {} thread{}) on this CPU.{}",
            outcome.speedup_b64,
            a.threads,
            if a.threads == 1 { "" } else { "s" },
            if outcome.mode == Mode::Dynamic {
                " Dynamic quantization re-quantizes every activation at run time; try --mode static."
            } else {
                " Keep the FP32 model for speed; the INT8 one still saves space."
            }
        );
    } else {
        eprintln!(
            "INT8 throughput {:.2}x FP32 at batch 64 on this CPU ({} thread{}); `infera report` measures more",
            outcome.speedup_b64,
            a.threads,
            if a.threads == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

fn clean_cmd(a: CleanArgs) -> anyhow::Result<()> {
    crate::serve::init_logging_quiet();
    let rt = Runtime::new(a.onnxruntime_lib.as_deref())?;
    let model = graph::load(&a.model)?;
    let (cleaned, s) = clean::clean(&model, Some(&rt))?;
    let bytes = graph::save(&cleaned, &a.output)?;
    eprintln!(
        "wrote {} ({bytes} bytes): {} -> {} nodes ({} constants to initializers, {} Identity/Dropout removed, {} BatchNorms folded, {} nodes precomputed, {} dead nodes removed)",
        a.output.display(),
        s.nodes_before,
        s.nodes_after,
        s.constants_to_initializers,
        s.identities_removed,
        s.batchnorms_folded,
        s.nodes_folded,
        s.dead_nodes_removed
    );
    Ok(())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Table,
    Markdown,
    Json,
}

#[derive(Args)]
#[command(after_help = "\
Measures every model in one run, in interleaved rounds (the machine may be shared), on ONNX
Runtime with --threads intra-op threads (1 = one served instance per core):
  size (file bytes), parameters (initializer elements), FLOPs per layer (Conv/Gemm/MatMul,
  multiply-add = 2) and whether each layer is memory- or compute-bound at batch 1 and 64
  (roofline: its FLOP/byte against this CPU's measured peak / copy bandwidth), p50 latency at
  batch 1, throughput at batch 64, top-1 accuracy on --data, and speedup / compression
  against the first model.

Example:
  infera report --model fp32/1/model.onnx --model int8/1/model.onnx --format markdown")]
pub struct ReportArgs {
    /// Models to compare; the first is the baseline. Repeat the flag.
    #[arg(long = "model", value_name = "FILE", required = true)]
    models: Vec<PathBuf>,
    /// Images for accuracy: `test` / `train` (Fashion-MNIST), a folder with class subfolders, or `none`.
    #[arg(long, value_name = "DATA", default_value = "test")]
    data: String,
    /// Only the first N images for accuracy.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Also write the report to this file (format by extension: .json, .md, else text).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// ONNX Runtime intra-op threads per model.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The served `image_preprocess` model whose pipeline folder images go through.
    #[arg(long, value_name = "MODEL_DIR")]
    preprocess: Option<PathBuf>,
    /// Timing rounds (models take turns in each).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Milliseconds per model, round and measurement.
    #[arg(long, default_value_t = 1000)]
    round_ms: u64,
    #[arg(long, env = "INFERA_DATA_DIR_FASHION_MNIST", default_value = DEFAULT_DIR)]
    data_dir: PathBuf,
    #[arg(long, env = "INFERA_ONNXRUNTIME_LIB", value_name = "PATH")]
    onnxruntime_lib: Option<PathBuf>,
}

pub fn report_cmd(a: ReportArgs) -> anyhow::Result<()> {
    crate::serve::init_logging_quiet();
    let rt = Runtime::new(a.onnxruntime_lib.as_deref())?;
    let first = graph::load(&a.models[0])?;
    let item = report::item_dims(&first)?;
    let preprocess = preprocess_pipeline(a.preprocess.as_deref())?;
    let images = images_for(
        &a.data,
        &a.data_dir,
        Part::Test,
        &item,
        preprocess.as_ref(),
        a.limit.unwrap_or(usize::MAX),
    )?;
    let settings = report::Settings {
        threads: a.threads,
        rounds: a.rounds.max(1),
        time_per_round: Duration::from_millis(a.round_ms),
    };
    let pb = bar((a.rounds.max(1) * a.models.len()) as u64, "report");
    let r = report::report(&rt, &a.models, images.as_ref(), &settings, |msg| {
        if msg == "timing" {
            pb.inc(1);
        }
        pb.set_message(msg.to_string());
    });
    pb.finish_and_clear();
    let r = r?;
    let render = |f: Format| -> anyhow::Result<String> {
        Ok(match f {
            Format::Table => r.text(),
            Format::Markdown => r.markdown(),
            Format::Json => serde_json::to_string_pretty(&r)? + "\n",
        })
    };
    print!("{}", render(a.format)?);
    if let Some(path) = &a.output {
        let f = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            Some("md") => Format::Markdown,
            _ => Format::Table,
        };
        std::fs::write(path, render(f)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
