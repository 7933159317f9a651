//! The training recipe: what a config file (after includes and overrides) must say. Unknown
//! keys are errors, so a typo in a config or an override never trains silently with defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::Architecture;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Seeds weight init, shuffling, dropout, augmentation and the validation split.
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub data: DataConfig,
    pub model: Architecture,
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    pub train: TrainLoopConfig,
    #[serde(default)]
    pub augment: AugmentConfig,
}

fn default_seed() -> u64 {
    42
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `fashion_mnist` (IDX files) or `image_folder` (one sub-folder per class).
    #[serde(default = "default_format")]
    pub format: DataFormat,
    /// Where the data is. Fashion-MNIST: the folder with the IDX files (downloaded there
    /// with `download = true` when missing).
    #[serde(default = "default_data_dir")]
    pub dir: PathBuf,
    /// Fetch missing Fashion-MNIST files from `mirror` (SHA-256 checked).
    #[serde(default)]
    pub download: bool,
    #[serde(default = "default_mirror")]
    pub mirror: String,
    /// Images held out of the training set for validation (early stopping, model choice).
    #[serde(default = "default_validation")]
    pub validation: usize,
    /// Train on the first N images only (0 = all): quick runs and CI.
    #[serde(default)]
    pub train_limit: usize,
    /// Evaluate on the first N test images only (0 = all).
    #[serde(default)]
    pub test_limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    FashionMnist,
    ImageFolder,
}

fn default_format() -> DataFormat {
    DataFormat::FashionMnist
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(infera_train::data::DEFAULT_DIR)
}
fn default_mirror() -> String {
    infera_train::download::OFFICIAL_MIRROR.to_string()
}
fn default_validation() -> usize {
    5000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    pub name: OptimizerName,
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// SGD only.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
}

fn default_momentum() -> f64 {
    0.9
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerName {
    Adam,
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// `constant`, `step` (× gamma every step_epochs) or `cosine` (to 0 at the last epoch).
    #[serde(default = "default_schedule")]
    pub kind: ScheduleKind,
    /// Linear warm-up from lr/10 over this many epochs.
    #[serde(default)]
    pub warmup_epochs: usize,
    #[serde(default = "default_step_epochs")]
    pub step_epochs: usize,
    #[serde(default = "default_gamma")]
    pub gamma: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            kind: default_schedule(),
            warmup_epochs: 0,
            step_epochs: default_step_epochs(),
            gamma: default_gamma(),
        }
    }
}

fn default_schedule() -> ScheduleKind {
    ScheduleKind::Cosine
}
fn default_step_epochs() -> usize {
    5
}
fn default_gamma() -> f64 {
    0.3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    Step,
    Cosine,
}

impl ScheduleConfig {
    /// The learning rate at `progress` epochs into training (fractional within an epoch).
    pub fn lr(&self, base: f64, progress: f64, epochs: usize) -> f64 {
        let warm = self.warmup_epochs as f64;
        if progress < warm {
            return base * (0.1 + 0.9 * progress / warm);
        }
        match self.kind {
            ScheduleKind::Constant => base,
            ScheduleKind::Step => {
                base * self
                    .gamma
                    .powi((progress / self.step_epochs.max(1) as f64).floor() as i32)
            }
            ScheduleKind::Cosine => {
                let span = (epochs as f64 - warm).max(1.0);
                let t = ((progress - warm) / span).clamp(0.0, 1.0);
                base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainLoopConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Stop when validation accuracy has not improved for this many epochs (0 = never).
    #[serde(default)]
    pub early_stopping_patience: usize,
    /// Label smoothing for the cross-entropy loss (0 = none).
    #[serde(default)]
    pub label_smoothing: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Probability of a horizontal flip.
    #[serde(default)]
    pub hflip: f64,
    /// Random rotation within ± this many degrees.
    #[serde(default)]
    pub rotate_degrees: f64,
    /// Random shift within ± this many pixels in each direction.
    #[serde(default)]
    pub shift_pixels: f64,
    /// Random brightness factor within 1 ± this.
    #[serde(default)]
    pub brightness: f64,
    /// Probability of random erasing (cutout): a rectangle of 2–25% of the image, aspect
    /// ratio 0.3–3.3, filled with noise, so the model cannot lean on any one region.
    #[serde(default)]
    pub erase: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            hflip: 0.0,
            rotate_degrees: 0.0,
            shift_pixels: 0.0,
            brightness: 0.0,
            erase: 0.0,
        }
    }
}

impl AugmentConfig {
    pub fn is_off(&self) -> bool {
        self.hflip == 0.0
            && self.rotate_degrees == 0.0
            && self.shift_pixels == 0.0
            && self.brightness == 0.0
            && self.erase == 0.0
    }
}

impl Recipe {
    /// Reads a recipe from a loaded config table; errors name the key that is wrong.
    pub fn from_table(table: toml::Table) -> Result<Recipe, String> {
        let recipe: Recipe = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().trim().to_string())?;
        recipe.check()?;
        Ok(recipe)
    }

    fn check(&self) -> Result<(), String> {
        if self.train.epochs == 0 {
            return Err("train.epochs must be at least 1".into());
        }
        if self.train.batch_size == 0 {
            return Err("train.batch_size must be at least 1".into());
        }
        if !(self.optimizer.lr > 0.0 && self.optimizer.lr.is_finite()) {
            return Err(format!(
                "optimizer.lr must be > 0, got {}",
                self.optimizer.lr
            ));
        }
        let dropout = match self.model {
            Architecture::Cnn { dropout, .. } | Architecture::ResnetSmall { dropout, .. } => {
                dropout
            }
        };
        if !(0.0..1.0).contains(&dropout) {
            return Err(format!("model.dropout must be in [0, 1), got {dropout}"));
        }
        for (key, p) in [("hflip", self.augment.hflip), ("erase", self.augment.erase)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("augment.{key} is a probability, got {p}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_starts_at_base_and_ends_at_zero() {
        let s = ScheduleConfig::default();
        assert!((s.lr(0.01, 0.0, 10) - 0.01).abs() < 1e-12);
        assert!((s.lr(0.01, 5.0, 10) - 0.005).abs() < 1e-12);
        assert!(s.lr(0.01, 10.0, 10).abs() < 1e-12);
    }

    #[test]
    fn warmup_then_step_schedule() {
        let s = ScheduleConfig {
            kind: ScheduleKind::Step,
            warmup_epochs: 1,
            step_epochs: 2,
            gamma: 0.5,
        };
        assert!((s.lr(1.0, 0.0, 10) - 0.1).abs() < 1e-12);
        assert!((s.lr(1.0, 1.5, 10) - 1.0).abs() < 1e-12);
        assert!((s.lr(1.0, 2.0, 10) - 0.5).abs() < 1e-12);
        assert!((s.lr(1.0, 4.5, 10) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let base = r#"
            [data]
            [model]
            architecture = "cnn"
            channels = [32, 64]
            hidden = 128
            dropout = 0.3
            [optimizer]
            name = "adam"
            lr = 0.001
            [train]
            epochs = 1
            batch_size = 64
        "#;
        let ok: toml::Table = toml::from_str(base).unwrap();
        Recipe::from_table(ok).unwrap();
        let typo: toml::Table = toml::from_str(&base.replace("epochs = 1", "epoch = 1")).unwrap();
        let e = Recipe::from_table(typo).unwrap_err();
        assert!(e.contains("epoch"), "{e}");
        let bad: toml::Table = toml::from_str(&base.replace("\"adam\"", "\"lbfgs\"")).unwrap();
        let e = Recipe::from_table(bad).unwrap_err();
        assert!(e.contains("lbfgs"), "{e}");
        let bad: toml::Table =
            toml::from_str(&base.replace("dropout = 0.3", "dropout = 1.5")).unwrap();
        assert!(Recipe::from_table(bad).unwrap_err().contains("dropout"));
    }
}
