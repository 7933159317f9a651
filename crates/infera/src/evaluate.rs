//! `infera evaluate`: a served model's accuracy, per-class precision / recall / F1 and
//! confusion matrix on Fashion-MNIST, computed through the same runtime that serves it.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use infera_core::request::InferRequest;
use infera_core::{DataType, Tensor};
use infera_train::data::{self, CLASSES, Part};
use infera_train::metrics::Metrics;
use infera_train::plots;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SplitArg {
    Test,
    Train,
}

#[derive(Args, Debug)]
#[command(after_help = "\
The model gets raw pixels as FP32 0..255 in its own input shape (e.g. [N,1,28,28]) and must
return one score per class (logits or probabilities). Writes metrics.json and
confusion_matrix.png to --output-dir and prints the per-class table.

Example:
  infera evaluate --model-repository examples/model_repository --model fashion_mnist")]
pub struct EvaluateArgs {
    /// Model repository to load the model from. Default: the example repository built into infera.
    #[arg(long, env = "INFERA_MODEL_REPOSITORY", value_name = "DIR")]
    model_repository: Option<PathBuf>,

    /// The model: FP32 pixels in, ten class scores out.
    #[arg(long, default_value = "fashion_mnist")]
    model: String,

    /// Folder with the Fashion-MNIST IDX files (.gz or not).
    #[arg(long, env = "INFERA_DATA_DIR_FASHION_MNIST", default_value = data::DEFAULT_DIR)]
    data_dir: PathBuf,

    /// Which set to evaluate on.
    #[arg(long, value_enum, default_value = "test")]
    split: SplitArg,

    /// Only the first N images (quick checks).
    #[arg(long)]
    limit: Option<usize>,

    /// Images per request.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,

    /// Where metrics.json and confusion_matrix.png go. Default: eval/<model>.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,

    /// Path to libonnxruntime. Default: ORT_DYLIB_PATH or an installed `onnxruntime` wheel.
    #[arg(long, env = "INFERA_ONNXRUNTIME_LIB", value_name = "PATH")]
    onnxruntime_lib: Option<PathBuf>,
}

pub fn run(args: EvaluateArgs) -> anyhow::Result<()> {
    crate::serve::init_logging_quiet();
    let part = match args.split {
        SplitArg::Test => Part::Test,
        SplitArg::Train => Part::Train,
    };
    let mut set = data::load(&args.data_dir, part)?;
    if let Some(n) = args.limit {
        set = set.take(n);
    }
    anyhow::ensure!(!set.is_empty(), "no images to evaluate");
    let server = crate::predict::in_process(
        args.model_repository.as_deref(),
        args.onnxruntime_lib.as_deref(),
        &args.model,
    )?;
    let model = server
        .model(&args.model)
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let [input] = model.inputs.as_slice() else {
        anyhow::bail!(
            "model '{}' has {} inputs; evaluate needs one (the pixels)",
            args.model,
            model.inputs.len()
        );
    };
    let output = model
        .outputs
        .first()
        .with_context(|| format!("model '{}' has no outputs", args.model))?;
    anyhow::ensure!(
        input.dtype == DataType::F32,
        "model '{}' takes {:?}; evaluate feeds FP32 pixels 0..255",
        args.model,
        input.dtype
    );
    let batched = model.max_batch_size() > 0;
    let item_dims: Vec<i64> = if batched {
        input.dims.clone()
    } else {
        input.dims.iter().skip(1).copied().collect()
    };
    let fixed: i64 = item_dims.iter().map(|&d| d.max(1)).product();
    anyhow::ensure!(
        item_dims.iter().all(|&d| d > 0) && fixed as usize == set.pixels(),
        "model '{}' input '{}' has shape {:?} per image; evaluate needs {} pixels ({}x{})",
        args.model,
        input.name,
        input.dims,
        set.pixels(),
        set.rows,
        set.cols
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let bar = ProgressBar::new(set.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images · {per_sec} · ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut predicted = Vec::with_capacity(set.len());
    let step = if batched {
        args.batch_size
            .clamp(1, model.max_batch_size().max(1) as usize)
    } else {
        args.batch_size.max(1)
    };
    for start in (0..set.len()).step_by(step) {
        let end = (start + step).min(set.len());
        let pixels: Vec<f32> = set.images[start * set.pixels()..end * set.pixels()]
            .iter()
            .map(|&p| p as f32)
            .collect();
        let mut shape = vec![end - start];
        shape.extend(item_dims.iter().map(|&d| d as usize));
        let tensor = Tensor::from_slice(shape, &pixels)?;
        let response = runtime
            .block_on(server.infer(InferRequest::single(
                &args.model,
                None,
                &input.name,
                tensor,
                &output.name,
                0,
            )))
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let scores = response
            .outputs
            .first()
            .and_then(|o| o.tensor.to_vec::<f32>())
            .with_context(|| format!("model '{}' did not return FP32 scores", args.model))?;
        let n = end - start;
        anyhow::ensure!(
            scores.len() == n * CLASSES.len(),
            "model '{}' returned {} scores for {n} images; expected {} per image",
            args.model,
            scores.len(),
            CLASSES.len()
        );
        predicted.extend(
            scores
                .chunks(CLASSES.len())
                .map(infera_train::metrics::argmax),
        );
        bar.set_position(end as u64);
    }
    bar.finish_and_clear();

    let truth: Vec<usize> = set.labels.iter().map(|&l| l as usize).collect();
    let metrics = Metrics::compute(&truth, &predicted, &CLASSES);
    let dir = args
        .output_dir
        .unwrap_or_else(|| PathBuf::from("eval").join(&args.model));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = dir.join("metrics.json");
    std::fs::write(&json, serde_json::to_string_pretty(&metrics)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    let png = dir.join("confusion_matrix.png");
    plots::confusion_matrix_png(&metrics, &png, &format!("{} on {:?}", args.model, part))?;
    print!("{}", metrics.table());
    eprintln!("wrote {} and {}", json.display(), png.display());
    Ok(())
}
