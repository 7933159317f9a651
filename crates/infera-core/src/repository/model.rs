//! A loaded model: its config, its inputs and outputs as clients see them, and per version
//! what runs it (a scheduler over runtime sessions, or the steps of an ensemble).

use std::collections::BTreeMap;
use std::sync::Arc;

use infera_proto::inference::ModelConfig;

use crate::backend::Session;
use crate::datatype::DataType;
use crate::error::{ServeError, ServeResult};
use crate::metrics::VersionMetrics;
use crate::request::{ModelMetadata, TensorMetadata};
use crate::scheduler::Scheduler;
use crate::stats::ModelStats;

/// An input or output as clients see it (config dims) and as the model takes it (reshape).
#[derive(Debug, Clone)]
pub struct IoDesc {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<i64>,
    pub reshape: Option<Vec<i64>>,
    /// Position in the model's own input or output list.
    pub index: usize,
    pub labels: Option<Arc<Vec<String>>>,
}

/// One step of an ensemble: a composing model and how its tensors map to the ensemble's.
#[derive(Debug, Clone)]
pub struct EnsembleStep {
    pub model_name: String,
    /// `None` = the newest version (Triton's -1).
    pub model_version: Option<i64>,
    /// (step model's input name, ensemble tensor name)
    pub inputs: Vec<(String, String)>,
    /// (step model's output name, ensemble tensor name)
    pub outputs: Vec<(String, String)>,
}

/// What executes a version's requests.
pub enum Runner {
    /// A runtime model: its queue, dynamic batcher and instance threads.
    Scheduler(Scheduler),
    /// A pipeline of other models, run in this order; each step goes through its own model.
    Ensemble(Vec<EnsembleStep>),
}

pub struct ModelVersion {
    pub version: i64,
    pub runner: Runner,
    pub stats: Arc<ModelStats>,
    pub metrics: VersionMetrics,
}

/// Opens one more runtime session of a version (for a resize).
pub type SessionOpener = Arc<dyn Fn() -> ServeResult<Box<dyn Session>> + Send + Sync>;

/// What lets a loaded model change its instance count in place.
pub struct Resizable {
    /// The config as read, before auto-complete: a reload whose config differs from it only
    /// in `instance_group` resizes instead of reloading.
    pub read_config: ModelConfig,
    /// The model's files other than config.pbtxt, when it was built.
    pub files: u64,
    pub open: BTreeMap<i64, SessionOpener>,
}

pub struct Model {
    pub name: String,
    pub config: ModelConfig,
    pub config_json: serde_json::Value,
    /// The runtime's name, or "ensemble".
    pub backend: &'static str,
    pub inputs: Vec<IoDesc>,
    pub outputs: Vec<IoDesc>,
    /// Inputs the model file declares, for putting request tensors in model order.
    pub model_input_count: usize,
    pub versions: BTreeMap<i64, Arc<ModelVersion>>,
    /// `None` for ensembles and encrypted models (their plaintext is not kept to open more).
    pub resizable: Option<Resizable>,
}

impl Model {
    pub fn max_batch_size(&self) -> usize {
        self.config.max_batch_size.max(0) as usize
    }

    pub fn version(&self, v: Option<i64>) -> ServeResult<&Arc<ModelVersion>> {
        match v {
            None => self.versions.values().next_back(),
            Some(v) => self.versions.get(&v),
        }
        .ok_or_else(|| match v {
            Some(v) => ServeError::not_found(format!(
                "Request for unknown model: '{}' version {v} is not found",
                self.name
            )),
            None => ServeError::unavailable(format!("model '{}' has no ready version", self.name)),
        })
    }

    /// The steps of an ensemble; `None` for a runtime model.
    pub fn ensemble_steps(&self) -> Option<&[EnsembleStep]> {
        self.versions.values().find_map(|v| match &v.runner {
            Runner::Ensemble(steps) => Some(steps.as_slice()),
            Runner::Scheduler(_) => None,
        })
    }

    /// The models this one calls (an ensemble's composing models), each once.
    pub fn dependencies(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .ensemble_steps()
            .unwrap_or_default()
            .iter()
            .map(|s| s.model_name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    pub fn metadata(&self) -> ModelMetadata {
        let batch = self.max_batch_size() > 0;
        let meta = |io: &IoDesc| TensorMetadata {
            name: io.name.clone(),
            datatype: io.dtype.as_str().to_string(),
            shape: batch
                .then_some(-1)
                .into_iter()
                .chain(io.dims.iter().copied())
                .collect(),
        };
        ModelMetadata {
            name: self.name.clone(),
            versions: self.versions.keys().map(i64::to_string).collect(),
            platform: if self.config.platform.is_empty() {
                self.config.backend.clone()
            } else {
                self.config.platform.clone()
            },
            inputs: self.inputs.iter().map(meta).collect(),
            outputs: self.outputs.iter().map(meta).collect(),
        }
    }
}
