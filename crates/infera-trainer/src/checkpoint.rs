//! Checkpoints in the layout Hugging Face users already keep: a folder with
//! `model.safetensors` (the weights) and `config.json` (how to rebuild the model around them).

use std::path::Path;

use anyhow::{Context, bail};
use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use serde::{Deserialize, Serialize};

use crate::model::{Architecture, Classifier, PIXEL_MEAN, PIXEL_STD};

pub const WEIGHTS: &str = "model.safetensors";
pub const CONFIG: &str = "config.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointConfig {
    pub model: Architecture,
    /// Class names in output order.
    pub classes: Vec<String>,
    pub input: InputSpec,
    pub epoch: usize,
    pub val_accuracy: f64,
    pub seed: u64,
    pub framework: String,
}

/// What the model expects: raw pixels, normalised inside the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputSpec {
    pub shape: [usize; 3],
    pub dtype: String,
    pub range: [f32; 2],
    pub mean: f32,
    pub std: f32,
}

impl InputSpec {
    pub fn grayscale(side: usize) -> InputSpec {
        InputSpec {
            shape: [1, side, side],
            dtype: "float32".into(),
            range: [0.0, 255.0],
            mean: PIXEL_MEAN,
            std: PIXEL_STD,
        }
    }
}

pub fn save(dir: &Path, model: &Classifier, config: &CheckpointConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Written next to the target and renamed, so a crash never leaves a half checkpoint.
    let tmp = dir.join(format!("{WEIGHTS}.part"));
    let mut store = SafetensorsStore::from_file(&tmp).metadata("format", "infera-classifier");
    model
        .save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(WEIGHTS))?;
    infera_core::durable::write_atomic(&dir.join(CONFIG), &serde_json::to_vec_pretty(config)?)?;
    Ok(())
}

pub fn load(dir: &Path, device: &Device) -> anyhow::Result<(Classifier, CheckpointConfig)> {
    let config_path = dir.join(CONFIG);
    let text = std::fs::read_to_string(&config_path).with_context(|| {
        format!(
            "{} is not a checkpoint folder (no {CONFIG}; pass runs/<id>/checkpoints/best or final)",
            dir.display()
        )
    })?;
    let config: CheckpointConfig = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not an infera checkpoint config",
            config_path.display()
        )
    })?;
    if config.classes.is_empty() {
        bail!("{} lists no classes", config_path.display());
    }
    let mut model = config.model.init(config.classes.len(), device);
    let weights = dir.join(WEIGHTS);
    if !weights.is_file() {
        bail!("{} is missing", weights.display());
    }
    let mut store = SafetensorsStore::from_file(&weights);
    let result = model
        .load_from(&mut store)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", weights.display()))?;
    if !result.missing.is_empty() {
        bail!(
            "{} does not fit the architecture in {CONFIG}: missing {:?}",
            weights.display(),
            result.missing
        );
    }
    Ok((model.valid(), config))
}
