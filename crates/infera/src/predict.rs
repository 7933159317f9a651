//! `infera predict`: classify a folder of images in-process (no server), crash-safe.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use infera_batch::{BatchOptions, Format, Inputs, run_batch};
use infera_core::InferenceServer;
use infera_core::metrics::Metrics;
use infera_core::repository::{ModelRepository, RepositoryOptions};
use infera_proto::inference::model_config::SchedulingChoice;

#[derive(Args, Debug)]
#[command(after_help = "\
Rows are written in the order of the files' paths relative to --input (sorted byte-wise).
Progress is saved after every --batch-size files (fsync'd). If the run is killed, run the same
command with --resume: it continues where it stopped, and the output ends up identical to an
uninterrupted run. Unreadable or corrupt files go to the errors file with the reason.

Example:
  infera predict --model fashion_mnist_image --input photos/ --output predictions.csv --recursive")]
pub struct PredictArgs {
    /// Model repository to load the model from. Default: the example repository built into infera.
    #[arg(long, env = "INFERA_MODEL_REPOSITORY", value_name = "DIR")]
    model_repository: Option<PathBuf>,

    /// The model: one image (BYTES) input, class scores out (e.g. an ensemble with image_preprocess).
    #[arg(long, default_value = "fashion_mnist_image")]
    model: String,

    /// Encrypt the output, errors and input list at rest (AES-256-GCM; read them back with
    /// `infera decrypt`). Give the same key to --resume.
    #[arg(long, env = "INFERA_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    encryption_key_file: Option<PathBuf>,

    /// Folder of images (png, jpg, jpeg, bmp, webp, gif).
    #[arg(long, value_name = "DIR")]
    input: PathBuf,

    /// Where the predictions go.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,

    /// Where unreadable files are listed with the reason. Default: <output stem>.errors.csv.
    #[arg(long, value_name = "FILE")]
    errors: Option<PathBuf>,

    /// csv: filename, predicted_class, predicted_label, confidence, prob_<label>... ; jsonl: one JSON object per line.
    #[arg(long, default_value = "csv")]
    format: Format,

    /// Files per chunk: they are classified together (the model's dynamic batcher batches
    /// them) and progress is saved after each chunk.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,

    /// Chunks in flight at once (one per pipeline stage keeps decode and inference busy).
    #[arg(long, default_value_t = 4)]
    workers: usize,

    /// Also read sub-folders.
    #[arg(long)]
    recursive: bool,

    /// Continue an interrupted run of the same command.
    #[arg(long)]
    resume: bool,

    /// Replace an existing output file.
    #[arg(long)]
    overwrite: bool,

    /// Path to libonnxruntime. Default: ORT_DYLIB_PATH or an installed `onnxruntime` wheel.
    #[arg(long, env = "INFERA_ONNXRUNTIME_LIB", value_name = "PATH")]
    onnxruntime_lib: Option<PathBuf>,
}

/// Loads a model and, for an ensemble, the models its steps use.
fn load_with_steps(repo: &ModelRepository, name: &str, depth: usize) -> anyhow::Result<()> {
    anyhow::ensure!(depth < 8, "ensembles nest too deep at '{name}'");
    repo.load(name, None)
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let model = repo
        .get(name)
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    if let Some(SchedulingChoice::EnsembleScheduling(s)) = &model.config.scheduling_choice {
        for step in &s.step {
            load_with_steps(repo, &step.model_name, depth + 1)?;
        }
    }
    Ok(())
}

/// An in-process server holding just `model` (and its ensemble steps).
pub(crate) fn in_process(
    model_repository: Option<&std::path::Path>,
    onnxruntime_lib: Option<&std::path::Path>,
    model: &str,
) -> anyhow::Result<Arc<InferenceServer>> {
    let repo_dir = crate::serve::repository_dir(model_repository)?;
    let metrics = Metrics::new();
    let repository = Arc::new(ModelRepository::new(
        &repo_dir,
        crate::serve::backends(onnxruntime_lib),
        RepositoryOptions::default(),
        metrics.clone(),
    ));
    load_with_steps(&repository, model, 0)
        .with_context(|| format!("cannot load model '{model}'"))?;
    Ok(Arc::new(InferenceServer::new(repository, metrics)))
}

pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    crate::serve::init_logging_quiet();
    let server = in_process(
        args.model_repository.as_deref(),
        args.onnxruntime_lib.as_deref(),
        &args.model,
    )?;
    let opts = BatchOptions {
        model: args.model.clone(),
        inputs: Inputs::Folder {
            dir: args.input.clone(),
            recursive: args.recursive,
        },
        output: args.output.clone(),
        errors: args.errors.clone(),
        format: args.format,
        batch_size: args.batch_size,
        workers: args.workers,
        resume: args.resume,
        overwrite: args.overwrite,
        priority: 0,
        // Local files the user chose: no download, no size cap beyond memory.
        fetch: None,
        max_file_bytes: u64::MAX,
        seal: args
            .encryption_key_file
            .as_deref()
            .map(crate::encrypt::keyring)
            .transpose()?,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images · {per_sec} · ETA {eta} · {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let cancel = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let summary = runtime.block_on(async {
        let c = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                c.store(true, Ordering::Relaxed);
            }
        });
        run_batch(
            server,
            &opts,
            |p| {
                bar.set_length(p.total as u64);
                bar.set_position(p.done as u64);
                bar.set_message(format!("{} errors", p.failed));
            },
            Some(&cancel),
        )
        .await
    });
    bar.finish_and_clear();
    let s = summary?;
    let p = &s.progress;
    let resumed = if s.resumed_from > 0 {
        format!(" (resumed after {})", s.resumed_from)
    } else {
        String::new()
    };
    // Throughput of this run's images, from the model being ready to the output in place:
    // the figure to compare with the model's own in-process speed (load time excluded).
    let seconds = started.elapsed().as_secs_f64();
    let rate = p.done.saturating_sub(s.resumed_from) as f64 / seconds.max(1e-9);
    eprintln!(
        "{} images in {seconds:.2} s ({rate:.0} images/s){resumed}: {} predicted → {}, {} unreadable → {}",
        p.total,
        p.succeeded,
        s.output.display(),
        p.failed,
        s.errors.display()
    );
    Ok(())
}
