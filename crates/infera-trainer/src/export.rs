//! `infera export`: checkpoint → ONNX → a ready model-repository entry, verified by running
//! the exported file through ONNX Runtime (the server's own backend code) beside burn.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::prelude::*;
use infera_core::backend::{Backend, LoadOptions};
use infera_train::data::Split;

use crate::checkpoint::{self, CheckpointConfig};
use crate::dataset::IMAGE_SIDE;
use crate::model::Classifier;
use crate::onnx;

/// How far ONNX Runtime's logits may be from burn's.
pub const PARITY_TOLERANCE: f32 = 1e-4;

#[derive(Debug, serde::Serialize)]
pub struct Parity {
    pub images: usize,
    pub max_abs_diff: f32,
    pub argmax_agreement: f64,
    pub tolerance: f32,
}

/// Writes `<repo>/<name>/{config.pbtxt, labels.txt, <version>/model.onnx}`.
pub fn write_repository_entry(
    repo: &Path,
    name: &str,
    version: u64,
    onnx: &[u8],
    config: &CheckpointConfig,
    max_batch_size: usize,
    source: &str,
) -> anyhow::Result<PathBuf> {
    let dir = repo.join(name);
    let version_dir = dir.join(version.to_string());
    std::fs::create_dir_all(&version_dir)
        .with_context(|| format!("cannot create {}", version_dir.display()))?;
    let model_path = version_dir.join("model.onnx");
    infera_core::durable::write_atomic(&model_path, onnx)?;
    std::fs::write(dir.join("labels.txt"), config.classes.join("\n") + "\n")?;
    let [c, h, w] = config.input.shape;
    let preferred: Vec<String> = [16, 32, 64]
        .iter()
        .filter(|&&b| b <= max_batch_size)
        .map(|b| b.to_string())
        .collect();
    let pbtxt = format!(
        "# Exported by `infera export` from {source}.\n\
# Takes raw pixels (FP32 0..255); the normalisation is inside the graph, so clients cannot\n\
# get preprocessing wrong.\n\
name: \"{name}\"\n\
platform: \"onnxruntime_onnx\"\n\
max_batch_size: {max_batch_size}\n\
input [\n  {{ name: \"{input}\" data_type: TYPE_FP32 dims: [ {c}, {h}, {w} ] }}\n]\n\
output [\n  {{ name: \"{output}\" data_type: TYPE_FP32 dims: [ {classes} ] label_filename: \"labels.txt\" }}\n]\n\
dynamic_batching {{\n  preferred_batch_size: [ {preferred} ]\n  max_queue_delay_microseconds: 0\n}}\n\
instance_group [ {{ count: 2 kind: KIND_CPU }} ]\n",
        input = onnx::INPUT,
        output = onnx::OUTPUT,
        classes = config.classes.len(),
        preferred = if preferred.is_empty() {
            max_batch_size.to_string()
        } else {
            preferred.join(", ")
        },
    );
    std::fs::write(dir.join("config.pbtxt"), pbtxt)?;
    Ok(model_path)
}

/// `split` with every image mirrored left to right.
fn mirrored(split: &Split) -> Split {
    let mut images = split.images.clone();
    for row in images.chunks_exact_mut(split.cols.max(1)) {
        row.reverse();
    }
    Split {
        images,
        labels: split.labels.clone(),
        rows: split.rows,
        cols: split.cols,
    }
}

/// Runs `onnx_file` in ONNX Runtime and `model` in burn over `images`, comparing logits (with
/// `flip_average`, burn's are the mean over each image and its mirror, as the export's).
pub fn check_parity(
    model: &Classifier,
    onnx_file: &Path,
    ort_library: &Path,
    images: &Split,
    device: &Device,
    flip_average: bool,
) -> anyhow::Result<Parity> {
    let classes = match model {
        Classifier::Cnn(m) => m.fc2.weight.val().dims()[1],
        Classifier::ResnetSmall(m) => m.fc.weight.val().dims()[1],
    };
    let backend = infera_backend_ort::OrtBackend::new(ort_library)?;
    let options = LoadOptions {
        intra_op_threads: 2,
        inter_op_threads: 1,
        parameters: Default::default(),
        model_dir: onnx_file.parent().unwrap_or(Path::new(".")).to_path_buf(),
        max_batch_size: 0,
    };
    let mut session = backend
        .load(onnx_file, &options)
        .map_err(|e| anyhow::anyhow!("ONNX Runtime cannot load the export: {e}"))?;
    let side = images.rows;
    let per_image = images.pixels();
    let mut ort_logits = Vec::with_capacity(images.len() * classes);
    for start in (0..images.len()).step_by(250) {
        let end = (start + 250).min(images.len());
        let pixels: Vec<f32> = images.images[start * per_image..end * per_image]
            .iter()
            .map(|&p| f32::from(p))
            .collect();
        let input =
            infera_core::tensor::Tensor::from_slice(vec![end - start, 1, side, side], &pixels)?;
        let out = session
            .run(&[input])
            .map_err(|e| anyhow::anyhow!("ONNX Runtime failed on the export: {e}"))?;
        ort_logits.extend(
            out.first()
                .and_then(|t| t.to_vec::<f32>())
                .context("ONNX Runtime returned no FP32 logits")?,
        );
    }
    let mut burn_logits = crate::train::logits(model, images, device, 250);
    if flip_average {
        let other = crate::train::logits(model, &mirrored(images), device, 250);
        for (a, b) in burn_logits.iter_mut().zip(other) {
            *a = (*a + b) / 2.0;
        }
    }
    if burn_logits.len() != ort_logits.len() {
        bail!(
            "ONNX Runtime returned {} logits, burn {}",
            ort_logits.len(),
            burn_logits.len()
        );
    }
    let max_diff = ort_logits
        .iter()
        .zip(&burn_logits)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let ort_top = crate::train::argmax_rows(&ort_logits, classes);
    let burn_top = crate::train::argmax_rows(&burn_logits, classes);
    let agree = ort_top
        .iter()
        .zip(&burn_top)
        .filter(|(a, b)| a == b)
        .count();
    Ok(Parity {
        images: images.len(),
        max_abs_diff: max_diff,
        argmax_agreement: agree as f64 / images.len().max(1) as f64,
        tolerance: PARITY_TOLERANCE,
    })
}

pub struct ExportOutcome {
    pub model_path: PathBuf,
    pub parity: Parity,
    pub bytes: usize,
}

#[allow(clippy::too_many_arguments)]
pub fn export_checkpoint(
    checkpoint_dir: &Path,
    repo: &Path,
    name: &str,
    version: u64,
    max_batch_size: usize,
    ort_library: &Path,
    parity_images: &Split,
    device: &Device,
    flip_average: bool,
) -> anyhow::Result<ExportOutcome> {
    let (model, config) = checkpoint::load(checkpoint_dir, device)?;
    if config.input.shape != [1, IMAGE_SIDE, IMAGE_SIDE] {
        bail!(
            "only 1×28×28 models are exported, the checkpoint takes {:?}",
            config.input.shape
        );
    }
    let doc = format!(
        "{} trained by infera ({}), epoch {}, validation accuracy {:.4}{}; classes: {}",
        config.model.name(),
        config.framework,
        config.epoch,
        config.val_accuracy,
        if flip_average {
            "; logits averaged with the mirrored image's"
        } else {
            ""
        },
        config.classes.join(", ")
    );
    let bytes = onnx::export(&model, config.classes.len(), IMAGE_SIDE, &doc, flip_average)?;
    let model_path = write_repository_entry(
        repo,
        name,
        version,
        &bytes,
        &config,
        max_batch_size,
        &checkpoint_dir.display().to_string(),
    )?;
    let parity = check_parity(
        &model,
        &model_path,
        ort_library,
        parity_images,
        device,
        flip_average,
    )?;
    Ok(ExportOutcome {
        model_path,
        parity,
        bytes: bytes.len(),
    })
}
