//! Resumable runs: after every epoch the run folder gets `checkpoints/last-<epoch>/` with the
//! weights, the optimizer's state and the loop's own state (RNG, early stopping, history),
//! then `checkpoints/last.json` is switched to it by an atomic rename. A run killed at any
//! moment resumes from the last complete epoch and ends as an uninterrupted run would.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use infera_core::durable::write_atomic;
use infera_train::plots::EpochRecord;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointConfig};
use crate::model::Classifier;

const POINTER: &str = "last.json";
const OPTIMIZER: &str = "optimizer.bpk";
const STATE: &str = "state.json";

/// The training loop's state at the end of an epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoopState {
    pub epoch: usize,
    pub rng: u64,
    pub best_accuracy: f64,
    pub best_epoch: usize,
    pub since_best: usize,
    pub stopped_early: bool,
    pub history: Vec<EpochRecord>,
    /// The model's parameter ids in visiting order: the optimizer's state is keyed by them, and
    /// a model rebuilt from the weights gets new random ones.
    pub param_ids: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
struct Pointer {
    dir: String,
}

/// Writes the resume point of `epoch` under `checkpoints` and makes it the current one.
pub fn save(
    checkpoints: &Path,
    model: &Classifier,
    config: &CheckpointConfig,
    optimizer: &ModuleOptimizer,
    state: &LoopState,
) -> anyhow::Result<()> {
    let name = format!("last-{}", state.epoch);
    let dir = checkpoints.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    checkpoint::save(&dir, model, config)?;
    optimizer
        .save(dir.join(OPTIMIZER))
        .map_err(|e| anyhow::anyhow!("cannot write the optimizer state: {e}"))?;
    std::fs::write(dir.join(STATE), serde_json::to_vec(state)?)?;
    sync_dir(&dir)?;
    write_atomic(
        &checkpoints.join(POINTER),
        &serde_json::to_vec(&Pointer { dir: name.clone() })?,
    )?;
    // Older resume points are no longer needed once the pointer has moved.
    for entry in std::fs::read_dir(checkpoints)?.flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with("last-") && n != name {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.path().is_file() {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// A run's last resume point, ready to continue on `train_device` (an autodiff device).
pub struct Resumed {
    pub model: Classifier,
    pub optimizer_file: PathBuf,
    pub state: LoopState,
}

/// Reads the last resume point of the run whose checkpoints folder is `checkpoints`.
pub fn load(checkpoints: &Path, device: &Device) -> anyhow::Result<Resumed> {
    let pointer_path = checkpoints.join(POINTER);
    let text = std::fs::read_to_string(&pointer_path).with_context(|| {
        format!(
            "{} has no finished epoch to resume from (no {})",
            checkpoints.display(),
            pointer_path.display()
        )
    })?;
    let pointer: Pointer = serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged", pointer_path.display()))?;
    if pointer.dir.contains(['/', '\\']) || !pointer.dir.starts_with("last-") {
        bail!("{} names no resume point", pointer_path.display());
    }
    let dir = checkpoints.join(&pointer.dir);
    let (model, _) = checkpoint::load(&dir, device)?;
    let state: LoopState = serde_json::from_slice(
        &std::fs::read(dir.join(STATE))
            .with_context(|| format!("cannot read {}", dir.join(STATE).display()))?,
    )
    .with_context(|| format!("{} is damaged", dir.join(STATE).display()))?;
    Ok(Resumed {
        model,
        optimizer_file: dir.join(OPTIMIZER),
        state,
    })
}

/// The ids of the model's float parameters, in visiting order.
pub fn param_ids(model: &Classifier) -> Vec<u64> {
    struct Ids(Vec<u64>);
    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.id.val());
        }
    }
    let mut ids = Ids(Vec::new());
    model.visit(&mut ids);
    ids.0
}

/// Gives the model's float parameters the ids a saved optimizer state refers to.
pub fn with_param_ids(model: Classifier, ids: &[u64]) -> anyhow::Result<Classifier> {
    struct SetIds<'a> {
        ids: &'a [u64],
        next: usize,
    }
    impl ModuleMapper for SetIds<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let Some(&id) = self.ids.get(self.next) else {
                self.next += 1;
                return param;
            };
            self.next += 1;
            let (_, value, mapper) = param.consume();
            Param::from_mapped_value(ParamId::from(id), value, mapper)
        }
    }
    let count = param_ids(&model).len();
    if count != ids.len() {
        bail!(
            "the resume point holds {} parameter ids, the model has {count}: it is from another architecture",
            ids.len()
        );
    }
    let mut mapper = SetIds { ids, next: 0 };
    Ok(model.map(&mut mapper))
}
