//! Model optimization without Python: INT8 quantization (static QDQ with calibration, or
//! dynamic), ONNX graph clean-up, and the size / speed / accuracy report. Everything runs on
//! ONNX Runtime through the backend `infera serve` uses, so the numbers are the served ones.

pub mod calibrate;
pub mod clean;
pub mod data;
pub mod graph;
pub mod quantize;
pub mod report;
pub mod runtime;

use std::path::PathBuf;
use std::time::Duration;

use infera_train::metrics::argmax;

use crate::data::Images;
use crate::quantize::{Mode, Options};
use crate::runtime::Runtime;

#[derive(Debug, thiserror::Error)]
pub enum OptimizeError {
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{path}: {reason}")]
    Model { path: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Data(String),
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
}

pub struct QuantizeJob<'a> {
    pub model: PathBuf,
    pub output: PathBuf,
    pub options: Options,
    pub method: calibrate::Method,
    /// Calibration images (static mode).
    pub calibration: Option<&'a Images>,
    /// Held-out images for the FP32-vs-INT8 check.
    pub check: Option<&'a Images>,
    pub threads: usize,
}

#[derive(Debug, serde::Serialize)]
pub struct QuantizeOutcome {
    pub mode: Mode,
    pub clean: clean::CleanSummary,
    pub quantized_layers: Vec<String>,
    pub fp32_bytes: u64,
    pub int8_bytes: u64,
    /// Share of held-out images where both models pick the same class.
    pub agreement: Option<f64>,
    pub fp32_accuracy: Option<f64>,
    pub int8_accuracy: Option<f64>,
    /// INT8 throughput over FP32 at batch 64 on this CPU (above 1 pays).
    pub speedup_b64: f64,
}

/// Clean-up, calibration, quantization, then a check of agreement and speed against FP32.
pub fn quantize_file(
    rt: &Runtime,
    job: &QuantizeJob,
    mut progress: impl FnMut(&str, usize),
) -> Result<QuantizeOutcome, OptimizeError> {
    let original = graph::load(&job.model)?;
    let (model, clean) = clean::clean(&original, Some(rt))?;
    let (quantized, summary) = match job.options.mode {
        Mode::Static => {
            let images = job.calibration.ok_or_else(|| {
                OptimizeError::Data("static quantization needs calibration images".into())
            })?;
            let plan = quantize::plan(&model, &job.options);
            let ranges = calibrate::ranges(
                rt,
                &model,
                &plan.to_calibrate(),
                images,
                64,
                job.method,
                |n| progress("calibrating", n),
            )?;
            quantize::quantize_static(&model, &plan, &ranges, &job.options)?
        }
        Mode::Dynamic => quantize::quantize_dynamic(&model, &job.options)?,
    };
    if summary.quantized_layers.is_empty() {
        return Err(OptimizeError::Unsupported(
            "nothing to quantize: the model has no Conv, Gemm or MatMul with constant FP32 weights"
                .into(),
        ));
    }
    let int8_bytes = graph::save(&quantized, &job.output)?;
    let fp32_bytes = std::fs::metadata(&job.model)
        .map_err(|e| OptimizeError::Io {
            path: job.model.display().to_string(),
            reason: e.to_string(),
        })?
        .len();

    progress("checking", 0);
    let mut fp32 = rt.open_file(&job.model, job.threads)?;
    let mut int8 = rt.open_file(&job.output, job.threads)?;
    let (mut agreement, mut fp32_accuracy, mut int8_accuracy) = (None, None, None);
    if let Some(images) = job.check {
        let (mut same, mut right_a, mut right_b) = (0usize, 0usize, 0usize);
        for start in (0..images.count).step_by(250) {
            let end = (start + 250).min(images.count);
            let x = images.batch(start, end)?;
            let a = runtime::run(fp32.as_mut(), std::slice::from_ref(&x))?;
            let b = runtime::run(int8.as_mut(), std::slice::from_ref(&x))?;
            let (Some(a), Some(b)) = (a.first(), b.first()) else {
                return Err(OptimizeError::Runtime("a model returned no output".into()));
            };
            let (a, b) = (runtime::floats(a, "output")?, runtime::floats(b, "output")?);
            let classes = a.len() / (end - start);
            for (k, (ra, rb)) in a.chunks(classes).zip(b.chunks(classes)).enumerate() {
                let (pa, pb) = (argmax(ra), argmax(rb));
                same += usize::from(pa == pb);
                if let Some(l) = images.labels.as_ref().map(|l| l[start + k]) {
                    right_a += usize::from(pa == l);
                    right_b += usize::from(pb == l);
                }
            }
        }
        let n = images.count.max(1) as f64;
        agreement = Some(same as f64 / n);
        if images.labels.is_some() {
            fp32_accuracy = Some(right_a as f64 / n);
            int8_accuracy = Some(right_b as f64 / n);
        }
    }
    let item = report::item_dims(&model)?;
    let mut sessions = vec![fp32, int8];
    let settings = report::Settings {
        threads: job.threads,
        rounds: 3,
        time_per_round: Duration::from_millis(300),
    };
    let t = report::timings(&mut sessions, &item, &settings, || {})?;
    Ok(QuantizeOutcome {
        mode: job.options.mode,
        clean,
        quantized_layers: summary.quantized_layers,
        fp32_bytes,
        int8_bytes,
        agreement,
        fp32_accuracy,
        int8_accuracy,
        speedup_b64: t[1].1 / t[0].1.max(1e-12),
    })
}
