//! A Triton-layout model repository: `<model>/config.pbtxt`, `<model>/<version>/model.onnx`.
//!
//! Each model loads on its own: a broken one is listed UNAVAILABLE with its reason while the
//! others serve. Loading and unloading swap whole `Model`s, so in-flight requests finish on
//! the version they started with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use infera_proto::inference::{
    ModelConfig, ModelDynamicBatching, ModelInput, ModelOutput, ModelQueuePolicy,
    model_config::SchedulingChoice, model_instance_group::Kind,
    model_queue_policy::TimeoutAction as PbTimeoutAction, model_version_policy::PolicyChoice,
};
use parking_lot::RwLock;
use tracing::{info, warn};

use crate::backend::{Backend, LoadOptions, Session, Signature};
use crate::config::{self, ConfigError, ENSEMBLE_PLATFORM, ONNX_PLATFORM};
use crate::datatype::DataType;
use crate::error::{ServeError, ServeResult};
use crate::metrics::{Metrics, VersionMetrics};
use crate::request::{IndexEntry, ModelMetadata, TensorMetadata};
use crate::scheduler::{BatchPolicy, DynamicBatching, QueuePolicy, Scheduler, TimeoutAction};
use crate::stats::ModelStats;

/// The runtimes the server was built with, by the names configs use.
#[derive(Clone, Default)]
pub struct Backends {
    /// ONNX Runtime, when its library was found.
    pub onnxruntime: Option<Arc<dyn Backend>>,
    /// The pure-Rust fallback, when compiled in.
    pub tract: Option<Arc<dyn Backend>>,
    /// Backends chosen only by `backend: "<name>"` (e.g. image_preprocess).
    pub others: Vec<Arc<dyn Backend>>,
}

#[derive(Debug, Clone)]
pub struct RepositoryOptions {
    /// `max_batch_size` given to auto-completed models whose inputs have a free first dim.
    pub default_max_batch_size: i32,
    /// Requests queued per model version before new ones are refused (HTTP 429).
    pub max_queue: usize,
    /// Cores to divide among a model's instances.
    pub cores: usize,
}

impl Default for RepositoryOptions {
    fn default() -> Self {
        RepositoryOptions {
            default_max_batch_size: 4,
            max_queue: 1024,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    Ready,
    Unavailable,
    Loading,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Ready => "READY",
            ModelState::Unavailable => "UNAVAILABLE",
            ModelState::Loading => "LOADING",
        }
    }
}

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

pub struct ModelVersion {
    pub version: i64,
    pub scheduler: Scheduler,
    pub stats: Arc<ModelStats>,
    pub metrics: VersionMetrics,
}

pub struct Model {
    pub name: String,
    pub config: ModelConfig,
    pub config_json: serde_json::Value,
    pub backend: &'static str,
    pub inputs: Vec<IoDesc>,
    pub outputs: Vec<IoDesc>,
    /// Inputs the model file declares, for putting request tensors in model order.
    pub model_input_count: usize,
    pub versions: BTreeMap<i64, Arc<ModelVersion>>,
    /// Set for `platform: "ensemble"`: the steps the server runs natively, in dataflow order.
    pub ensemble: Option<Vec<EnsembleStep>>,
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

struct Slot {
    state: ModelState,
    reason: String,
    model: Option<Arc<Model>>,
}

pub struct ModelRepository {
    root: PathBuf,
    backends: Backends,
    options: RepositoryOptions,
    metrics: Metrics,
    models: RwLock<BTreeMap<String, Slot>>,
}

impl ModelRepository {
    pub fn new(
        root: impl Into<PathBuf>,
        backends: Backends,
        options: RepositoryOptions,
        metrics: Metrics,
    ) -> ModelRepository {
        ModelRepository {
            root: root.into(),
            backends,
            options,
            metrics,
            models: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Model folders in the repository (hidden folders skipped), sorted.
    pub fn model_names(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && !name.starts_with('.') {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Loads every model in the repository; failures are logged and kept in the index.
    pub fn load_all(&self) -> std::io::Result<()> {
        for name in self.model_names()? {
            if let Err(e) = self.load(&name, None) {
                warn!(model = %name, error = %e, "model failed to load");
            }
        }
        Ok(())
    }

    /// Loads (or reloads) one model, optionally with a config given as proto-JSON.
    /// Blocking: call it off the async runtime.
    pub fn load(&self, name: &str, config_json: Option<&str>) -> ServeResult<()> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(ServeError::invalid(format!("invalid model name '{name}'")));
        }
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Err(ServeError::not_found(format!(
                "failed to load '{name}', failed to poll from model repository: no folder '{name}' in {}",
                self.root.display()
            )));
        }
        {
            let mut models = self.models.write();
            let slot = models.entry(name.to_string()).or_insert(Slot {
                state: ModelState::Loading,
                reason: String::new(),
                model: None,
            });
            if slot.model.is_none() {
                slot.state = ModelState::Loading;
            }
        }
        let started = std::time::Instant::now();
        let result = self.build(name, &dir, config_json);
        let mut models = self.models.write();
        let slot = models.entry(name.to_string()).or_insert(Slot {
            state: ModelState::Loading,
            reason: String::new(),
            model: None,
        });
        match result {
            Ok(model) => {
                info!(
                    model = %name,
                    backend = model.backend,
                    versions = ?model.versions.keys().collect::<Vec<_>>(),
                    ms = started.elapsed().as_millis() as u64,
                    "model ready"
                );
                *slot = Slot {
                    state: ModelState::Ready,
                    reason: String::new(),
                    model: Some(Arc::new(model)),
                };
                Ok(())
            }
            Err(e) => {
                *slot = Slot {
                    state: ModelState::Unavailable,
                    reason: e.message.clone(),
                    model: None,
                };
                Err(e)
            }
        }
    }

    pub fn unload(&self, name: &str) -> ServeResult<()> {
        let mut models = self.models.write();
        match models.get_mut(name) {
            Some(slot) => {
                // Dropping the last Arc of each version stops its workers once the queue drains.
                slot.model = None;
                slot.state = ModelState::Unavailable;
                slot.reason = "unloaded".to_string();
                info!(model = %name, "model unloaded");
                Ok(())
            }
            None => Err(ServeError::not_found(format!(
                "failed to unload '{name}': model is not loaded"
            ))),
        }
    }

    /// A ready model, or the reason it is not.
    pub fn get(&self, name: &str) -> ServeResult<Arc<Model>> {
        let models = self.models.read();
        match models.get(name) {
            Some(Slot { model: Some(m), .. }) => Ok(m.clone()),
            Some(slot) if slot.state == ModelState::Loading => Err(ServeError::unavailable(
                format!("model '{name}' is still loading"),
            )),
            Some(slot) if slot.reason != "unloaded" => Err(ServeError::unavailable(format!(
                "model '{name}' is not ready: {}",
                slot.reason
            ))),
            _ => Err(ServeError::not_found(format!(
                "Request for unknown model: '{name}' is not found"
            ))),
        }
    }

    pub fn ready_models(&self) -> Vec<Arc<Model>> {
        self.models
            .read()
            .values()
            .filter_map(|s| s.model.clone())
            .collect()
    }

    /// Every model folder, with the state of each loaded version or the reason it is not loaded.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let models = self.models.read();
        let mut names: Vec<String> = self.model_names().unwrap_or_default();
        for n in models.keys() {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        names.sort();
        let mut out = Vec::new();
        for name in names {
            match models.get(&name) {
                Some(Slot { model: Some(m), .. }) => {
                    for v in m.versions.keys() {
                        out.push(IndexEntry {
                            name: name.clone(),
                            version: v.to_string(),
                            state: ModelState::Ready.as_str().into(),
                            reason: String::new(),
                        });
                    }
                }
                Some(slot) if !ready_only => out.push(IndexEntry {
                    name,
                    version: String::new(),
                    state: slot.state.as_str().into(),
                    reason: slot.reason.clone(),
                }),
                None if !ready_only => out.push(IndexEntry {
                    name,
                    version: String::new(),
                    state: ModelState::Unavailable.as_str().into(),
                    reason: "unloaded".into(),
                }),
                _ => {}
            }
        }
        out
    }

    fn build(&self, name: &str, dir: &Path, config_json: Option<&str>) -> ServeResult<Model> {
        let fail = |e: ConfigError| ServeError::invalid(format!("model '{name}': {e}"));
        let config_path = dir.join("config.pbtxt");
        let mut cfg = match config_json {
            Some(json) => config::parse_json(json).map_err(fail)?,
            None if config_path.is_file() => {
                let text = std::fs::read_to_string(&config_path).map_err(|e| {
                    ServeError::invalid(format!("model '{name}': cannot read config.pbtxt: {e}"))
                })?;
                config::parse_pbtxt(&text).map_err(fail)?
            }
            None => ModelConfig::default(),
        };
        config::validate(&cfg, name).map_err(fail)?;
        cfg.name = name.to_string();
        if cfg.platform == ENSEMBLE_PLATFORM {
            return self.build_ensemble(name, cfg, dir).map_err(fail);
        }
        let backend = self.pick_backend(&mut cfg).map_err(fail)?;
        let versions = match select_versions(dir, &cfg) {
            // A backend without model files may leave out the version folder: it is version 1.
            Err(e) if !backend.needs_model_file() && e.field == "versions" => vec![1],
            other => other.map_err(fail)?,
        };

        let model_file = if cfg.default_model_filename.is_empty() {
            "model.onnx".to_string()
        } else {
            cfg.default_model_filename.clone()
        };
        let instances = instance_count(&cfg);
        let threads = cfg
            .parameters
            .get("intra_op_thread_count")
            .and_then(|p| p.string_value.trim().parse().ok())
            .unwrap_or((self.options.cores / instances).max(1));
        let options = LoadOptions {
            intra_op_threads: threads,
            inter_op_threads: cfg
                .parameters
                .get("inter_op_thread_count")
                .and_then(|p| p.string_value.trim().parse().ok())
                .unwrap_or(1),
            parameters: cfg
                .parameters
                .iter()
                .map(|(k, v)| (k.clone(), v.string_value.clone()))
                .collect(),
            model_dir: dir.to_path_buf(),
        };

        let mut loaded: BTreeMap<i64, Vec<Box<dyn Session>>> = BTreeMap::new();
        let mut signature: Option<Signature> = None;
        for &v in &versions {
            let path = dir.join(v.to_string()).join(&model_file);
            if backend.needs_model_file() && !path.is_file() {
                return Err(ServeError::invalid(format!(
                    "model '{name}': version {v} has no model file {}",
                    path.display()
                )));
            }
            let mut sessions = Vec::with_capacity(instances);
            for _ in 0..instances {
                let s = backend
                    .load(&path, &options)
                    .map_err(|e| ServeError::invalid(format!("model '{name}': {e}")))?;
                sessions.push(s);
            }
            let sig = sessions[0].signature().clone();
            match &signature {
                None => {
                    autocomplete(&mut cfg, &sig, self.options.default_max_batch_size);
                    signature = Some(sig);
                }
                Some(first) if *first != sig => {
                    return Err(ServeError::invalid(format!(
                        "model '{name}': version {v} has different inputs or outputs than version {}",
                        versions[0]
                    )));
                }
                Some(_) => {}
            }
            loaded.insert(v, sessions);
        }
        let signature = signature.unwrap_or_default();
        config::validate(&cfg, name).map_err(fail)?;
        let (inputs, outputs) = bind_io(&cfg, &signature, dir).map_err(fail)?;
        let policy = batch_policy(&cfg, self.options.max_queue);
        let mut version_map = BTreeMap::new();
        for (v, sessions) in loaded {
            let stats = Arc::new(ModelStats::default());
            let metrics = self.metrics.for_version(name, v);
            let scheduler = Scheduler::new(
                name,
                sessions,
                policy.clone(),
                stats.clone(),
                metrics.clone(),
            )
            .map_err(|e| {
                ServeError::internal(format!("model '{name}': cannot start workers: {e}"))
            })?;
            version_map.insert(
                v,
                Arc::new(ModelVersion {
                    version: v,
                    scheduler,
                    stats,
                    metrics,
                }),
            );
        }
        Ok(Model {
            name: name.to_string(),
            config_json: config::to_json(&cfg),
            config: cfg,
            backend: backend.name(),
            inputs,
            outputs,
            model_input_count: signature.inputs.len(),
            versions: version_map,
            ensemble: None,
        })
    }

    /// An ensemble has no runtime of its own: its inputs and outputs come from the config and
    /// its steps run on the composing models' schedulers (checked when it runs, since the
    /// composing models may load after it).
    fn build_ensemble(
        &self,
        name: &str,
        mut cfg: ModelConfig,
        dir: &Path,
    ) -> Result<Model, ConfigError> {
        let Some(SchedulingChoice::EnsembleScheduling(sched)) = &cfg.scheduling_choice else {
            return Err(ConfigError::new(
                "ensemble_scheduling",
                "an ensemble needs ensemble_scheduling { step [ ... ] }",
            ));
        };
        if sched.step.is_empty() {
            return Err(ConfigError::new(
                "ensemble_scheduling.step",
                "lists no steps",
            ));
        }
        let mut available: Vec<&str> = cfg.input.iter().map(|i| i.name.as_str()).collect();
        let mut pending: Vec<usize> = (0..sched.step.len()).collect();
        let mut order = Vec::new();
        // Order the steps so each runs after the steps producing its inputs.
        while !pending.is_empty() {
            let ready = pending.iter().position(|&i| {
                sched.step[i]
                    .input_map
                    .values()
                    .all(|t| available.contains(&t.as_str()))
            });
            let Some(pos) = ready else {
                let i = pending[0];
                let missing: Vec<&String> = sched.step[i]
                    .input_map
                    .values()
                    .filter(|t| !available.contains(&t.as_str()))
                    .collect();
                return Err(ConfigError::new(
                    format!("ensemble_scheduling.step[{i}].input_map"),
                    format!("no ensemble input or step output provides {missing:?}"),
                ));
            };
            let i = pending.remove(pos);
            available.extend(sched.step[i].output_map.values().map(String::as_str));
            order.push(i);
        }
        let mut steps = Vec::new();
        for i in order {
            let st = &sched.step[i];
            if st.model_name.is_empty() || st.model_name == name {
                return Err(ConfigError::new(
                    format!("ensemble_scheduling.step[{i}].model_name"),
                    "must name another model",
                ));
            }
            steps.push(EnsembleStep {
                model_name: st.model_name.clone(),
                model_version: (st.model_version > 0).then_some(st.model_version),
                inputs: st
                    .input_map
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                outputs: st
                    .output_map
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
        }
        if let Some(o) = cfg
            .output
            .iter()
            .find(|o| !available.contains(&o.name.as_str()))
        {
            return Err(ConfigError::new(
                "output",
                format!("no step produces ensemble output '{}'", o.name),
            ));
        }
        let io = |kind: &str,
                  i: usize,
                  n: &str,
                  dt: i32,
                  dims: &[i64],
                  labels: &str|
         -> Result<IoDesc, ConfigError> {
            let dtype = infera_proto::inference::DataType::try_from(dt)
                .ok()
                .and_then(DataType::from_config)
                .ok_or_else(|| {
                    ConfigError::new(format!("{kind}[{i}].data_type"), "unknown data type")
                })?;
            let labels = read_labels(dir, &format!("{kind}[{i}]"), labels)?;
            Ok(IoDesc {
                name: n.to_string(),
                dtype,
                dims: dims.to_vec(),
                reshape: None,
                index: i,
                labels,
            })
        };
        let inputs = cfg
            .input
            .iter()
            .enumerate()
            .map(|(i, c)| io("input", i, &c.name, c.data_type, &c.dims, ""))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = cfg
            .output
            .iter()
            .enumerate()
            .map(|(i, c)| {
                io(
                    "output",
                    i,
                    &c.name,
                    c.data_type,
                    &c.dims,
                    &c.label_filename,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        cfg.backend.clear();
        let stats = Arc::new(ModelStats::default());
        let metrics = self.metrics.for_version(name, 1);
        let policy = BatchPolicy {
            max_batch_size: cfg.max_batch_size.max(0) as usize,
            dynamic: None,
            max_queue: 1,
        };
        // No sessions: the ensemble's own scheduler is never given work.
        let scheduler = Scheduler::new(name, Vec::new(), policy, stats.clone(), metrics.clone())
            .map_err(|e| ConfigError::new("ensemble", e.to_string()))?;
        let version = Arc::new(ModelVersion {
            version: 1,
            scheduler,
            stats,
            metrics,
        });
        Ok(Model {
            name: name.to_string(),
            config_json: config::to_json(&cfg),
            model_input_count: inputs.len(),
            config: cfg,
            backend: "ensemble",
            inputs,
            outputs,
            versions: BTreeMap::from([(1, version)]),
            ensemble: Some(steps),
        })
    }

    fn pick_backend(&self, cfg: &mut ModelConfig) -> Result<Arc<dyn Backend>, ConfigError> {
        let want = if !cfg.backend.is_empty() {
            cfg.backend.as_str()
        } else if !cfg.platform.is_empty() {
            cfg.platform.as_str()
        } else {
            "onnxruntime"
        };
        let field = if cfg.backend.is_empty() {
            "platform"
        } else {
            "backend"
        };
        let chosen = match want {
            "onnxruntime" | ONNX_PLATFORM => {
                match (&self.backends.onnxruntime, &self.backends.tract) {
                    (Some(b), _) => b.clone(),
                    (None, Some(t)) => {
                        warn!(model = %cfg.name, "ONNX Runtime is not available; serving with tract");
                        t.clone()
                    }
                    (None, None) => {
                        return Err(ConfigError::new(
                            field,
                            "ONNX Runtime was not found (set ORT_DYLIB_PATH or --onnxruntime-lib, or `pip install onnxruntime`) and this build has no tract fallback",
                        ));
                    }
                }
            }
            "tract" => self.backends.tract.clone().ok_or_else(|| {
                ConfigError::new(
                    field,
                    "this build of infera has no tract backend (build with --features tract)",
                )
            })?,
            other => match self.backends.others.iter().find(|b| b.name() == other) {
                Some(b) => b.clone(),
                None => {
                    let mut known = vec!["onnxruntime", "tract"];
                    known.extend(self.backends.others.iter().map(|b| b.name()));
                    return Err(ConfigError::new(
                        field,
                        format!(
                            "'{other}' is not supported: infera serves ONNX models (platform \"onnxruntime_onnx\") and the backends {known:?}"
                        ),
                    ));
                }
            },
        };
        if cfg.platform.is_empty() && cfg.backend.is_empty() {
            cfg.platform = ONNX_PLATFORM.into();
            cfg.backend = "onnxruntime".into();
        } else if cfg.platform.is_empty() && cfg.backend == "onnxruntime" {
            cfg.platform = ONNX_PLATFORM.into();
        } else if cfg.backend.is_empty() && cfg.platform == ONNX_PLATFORM {
            cfg.backend = "onnxruntime".into();
        }
        Ok(chosen)
    }
}

fn instance_count(cfg: &ModelConfig) -> usize {
    let mut n = 0usize;
    for g in &cfg.instance_group {
        if g.kind == Kind::Gpu as i32 {
            warn!(model = %cfg.name, "KIND_GPU instance group: this server has no GPU support, running on CPU");
        }
        n += if g.count == 0 { 1 } else { g.count as usize };
    }
    n.max(1)
}

/// The version folders to serve, per the version policy (default: the newest one).
fn select_versions(dir: &Path, cfg: &ModelConfig) -> Result<Vec<i64>, ConfigError> {
    let mut found: Vec<i64> = std::fs::read_dir(dir)
        .map_err(|e| ConfigError::new("versions", e.to_string()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .filter(|&v| v > 0)
        .collect();
    found.sort_unstable();
    if found.is_empty() {
        return Err(ConfigError::new(
            "versions",
            "no version folders (e.g. 1/model.onnx) in the model directory",
        ));
    }
    let chosen: Vec<i64> = match cfg
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
    {
        Some(PolicyChoice::All(_)) => found,
        Some(PolicyChoice::Specific(s)) => {
            if let Some(missing) = s.versions.iter().find(|v| !found.contains(v)) {
                return Err(ConfigError::new(
                    "version_policy.specific.versions",
                    format!("version {missing} has no folder"),
                ));
            }
            let mut v = s.versions.clone();
            v.sort_unstable();
            v.dedup();
            v
        }
        Some(PolicyChoice::Latest(l)) => {
            let n = (l.num_versions.max(1) as usize).min(found.len());
            found[found.len() - n..].to_vec()
        }
        None => vec![found[found.len() - 1]],
    };
    Ok(chosen)
}

/// Fills what config.pbtxt left out from the model file, as Triton's auto-complete does.
fn autocomplete(cfg: &mut ModelConfig, sig: &Signature, default_mbs: i32) {
    let batchable = sig
        .inputs
        .iter()
        .chain(&sig.outputs)
        .all(|io| io.shape.first() == Some(&-1));
    let filling = cfg.input.is_empty() && cfg.output.is_empty();
    if filling && cfg.max_batch_size == 0 && batchable && default_mbs > 0 {
        cfg.max_batch_size = default_mbs;
        if cfg.scheduling_choice.is_none() {
            cfg.scheduling_choice = Some(SchedulingChoice::DynamicBatching(
                ModelDynamicBatching::default(),
            ));
        }
    }
    let strip = cfg.max_batch_size > 0;
    let dims = |shape: &[i64]| -> Vec<i64> {
        if strip {
            shape.get(1..).unwrap_or(&[]).to_vec()
        } else {
            shape.to_vec()
        }
    };
    if cfg.input.is_empty() {
        cfg.input = sig
            .inputs
            .iter()
            .map(|io| ModelInput {
                name: io.name.clone(),
                data_type: io.dtype.to_config() as i32,
                dims: dims(&io.shape),
                ..Default::default()
            })
            .collect();
    }
    if cfg.output.is_empty() {
        cfg.output = sig
            .outputs
            .iter()
            .map(|io| ModelOutput {
                name: io.name.clone(),
                data_type: io.dtype.to_config() as i32,
                dims: dims(&io.shape),
                ..Default::default()
            })
            .collect();
    }
    if cfg.instance_group.is_empty() {
        cfg.instance_group = vec![infera_proto::inference::ModelInstanceGroup {
            name: cfg.name.clone(),
            kind: Kind::Cpu as i32,
            count: 1,
            ..Default::default()
        }];
    }
}

/// Matches config inputs/outputs to the model file's, checking types and shapes.
fn bind_io(
    cfg: &ModelConfig,
    sig: &Signature,
    dir: &Path,
) -> Result<(Vec<IoDesc>, Vec<IoDesc>), ConfigError> {
    let batch = cfg.max_batch_size > 0;
    let check = |kind: &str,
                 i: usize,
                 name: &str,
                 dtype: i32,
                 dims: &[i64],
                 reshape: Option<&[i64]>,
                 model: &[crate::backend::IoSpec]|
     -> Result<IoDesc, ConfigError> {
        let field = format!("{kind}[{i}]");
        let (index, spec) = model
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
            .ok_or_else(|| {
                ConfigError::new(
                    format!("{field}.name"),
                    format!(
                        "the model file has no {kind} '{name}'; it has {:?}",
                        model.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()
                    ),
                )
            })?;
        let dt = infera_proto::inference::DataType::try_from(dtype)
            .ok()
            .and_then(DataType::from_config)
            .ok_or_else(|| ConfigError::new(format!("{field}.data_type"), "unknown data type"))?;
        if dt != spec.dtype {
            return Err(ConfigError::new(
                format!("{field}.data_type"),
                format!(
                    "{kind} '{name}' is {} in the config but {} in the model file",
                    dt.to_config().as_str_name(),
                    spec.dtype.to_config().as_str_name()
                ),
            ));
        }
        let inner = reshape.unwrap_or(dims);
        let full: Vec<i64> = batch
            .then_some(-1)
            .into_iter()
            .chain(inner.iter().copied())
            .collect();
        let compatible = full.len() == spec.shape.len()
            && full
                .iter()
                .zip(&spec.shape)
                .all(|(&c, &m)| c == m || c == -1 || m == -1);
        // Models with unknown rank (or scalar outputs) are trusted at run time.
        if !compatible && !spec.shape.is_empty() {
            let hint = if batch && spec.shape.first() != Some(&-1) {
                " (max_batch_size > 0 needs a free first dimension in the model; set max_batch_size: 0 and list the full shape)"
            } else {
                ""
            };
            return Err(ConfigError::new(
                format!("{field}.dims"),
                format!(
                    "{kind} '{name}': the config gives shape {full:?} (batch dim first when max_batch_size > 0) but the model file has {:?}{hint}",
                    spec.shape
                ),
            ));
        }
        Ok(IoDesc {
            name: name.to_string(),
            dtype: dt,
            dims: dims.to_vec(),
            reshape: reshape.map(<[i64]>::to_vec),
            index,
            labels: None,
        })
    };
    let mut inputs = Vec::new();
    for (i, c) in cfg.input.iter().enumerate() {
        let r = c.reshape.as_ref().map(|r| r.shape.as_slice());
        inputs.push(check(
            "input",
            i,
            &c.name,
            c.data_type,
            &c.dims,
            r,
            &sig.inputs,
        )?);
    }
    if let Some(missing) = sig
        .inputs
        .iter()
        .find(|s| !inputs.iter().any(|i| i.name == s.name))
    {
        return Err(ConfigError::new(
            "input",
            format!(
                "the model file needs input '{}', which the config does not list",
                missing.name
            ),
        ));
    }
    let mut outputs = Vec::new();
    for (i, c) in cfg.output.iter().enumerate() {
        let r = c.reshape.as_ref().map(|r| r.shape.as_slice());
        let mut io = check("output", i, &c.name, c.data_type, &c.dims, r, &sig.outputs)?;
        io.labels = read_labels(dir, &format!("output[{i}]"), &c.label_filename)?;
        outputs.push(io);
    }
    Ok((inputs, outputs))
}

/// The labels file an output names (one label per line), if it names one.
fn read_labels(
    dir: &Path,
    field: &str,
    file: &str,
) -> Result<Option<Arc<Vec<String>>>, ConfigError> {
    if file.is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(dir.join(file)).map_err(|e| {
        ConfigError::new(
            format!("{field}.label_filename"),
            format!("cannot read '{file}': {e}"),
        )
    })?;
    Ok(Some(Arc::new(text.lines().map(str::to_string).collect())))
}

fn queue_policy(p: Option<&ModelQueuePolicy>) -> QueuePolicy {
    let Some(p) = p else {
        return QueuePolicy::default();
    };
    QueuePolicy {
        timeout_action: if p.timeout_action == PbTimeoutAction::Delay as i32 {
            TimeoutAction::Delay
        } else {
            TimeoutAction::Reject
        },
        default_timeout: (p.default_timeout_microseconds > 0)
            .then(|| Duration::from_micros(p.default_timeout_microseconds)),
        allow_timeout_override: p.allow_timeout_override,
        max_queue_size: p.max_queue_size as usize,
    }
}

fn batch_policy(cfg: &ModelConfig, max_queue: usize) -> BatchPolicy {
    let dynamic = match &cfg.scheduling_choice {
        Some(SchedulingChoice::DynamicBatching(db)) if cfg.max_batch_size > 0 => {
            let default = queue_policy(db.default_queue_policy.as_ref());
            let levels = db.priority_levels as usize;
            let level_policies = (1..=levels.max(1))
                .map(|l| {
                    db.priority_queue_policy
                        .get(&(l as u64))
                        .map_or_else(|| default.clone(), |p| queue_policy(Some(p)))
                })
                .collect();
            let mut preferred: Vec<usize> = db
                .preferred_batch_size
                .iter()
                .map(|&p| p as usize)
                .collect();
            preferred.sort_unstable();
            preferred.dedup();
            Some(DynamicBatching {
                preferred,
                max_delay: Duration::from_micros(db.max_queue_delay_microseconds),
                priority_levels: levels,
                default_level: db.default_priority_level as usize,
                level_policies,
            })
        }
        _ => None,
    };
    BatchPolicy {
        max_batch_size: cfg.max_batch_size.max(0) as usize,
        dynamic,
        max_queue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::IoSpec;

    fn sig() -> Signature {
        Signature {
            inputs: vec![IoSpec {
                name: "x".into(),
                dtype: DataType::F32,
                shape: vec![-1, 4],
            }],
            outputs: vec![IoSpec {
                name: "y".into(),
                dtype: DataType::I64,
                shape: vec![-1],
            }],
        }
    }

    #[test]
    fn autocomplete_adds_batch_dim_and_dynamic_batching() {
        let mut cfg = ModelConfig {
            name: "m".into(),
            ..Default::default()
        };
        autocomplete(&mut cfg, &sig(), 4);
        assert_eq!(cfg.max_batch_size, 4);
        assert_eq!(cfg.input[0].dims, vec![4]);
        assert!(cfg.output[0].dims.is_empty());
        assert!(matches!(
            cfg.scheduling_choice,
            Some(SchedulingChoice::DynamicBatching(_))
        ));
        let (inputs, _) = bind_io(&cfg, &sig(), Path::new(".")).unwrap();
        assert_eq!(inputs[0].dims, vec![4]);
    }

    #[test]
    fn autocomplete_without_free_batch_dim_keeps_full_shape() {
        let mut s = sig();
        s.inputs[0].shape = vec![2, 4];
        let mut cfg = ModelConfig::default();
        autocomplete(&mut cfg, &s, 4);
        assert_eq!(cfg.max_batch_size, 0);
        assert_eq!(cfg.input[0].dims, vec![2, 4]);
        assert!(cfg.scheduling_choice.is_none());
    }

    #[test]
    fn bind_reports_wrong_type_and_shape() {
        let mut cfg = config::parse_pbtxt(
            "max_batch_size: 8 input [{ name: \"x\" data_type: TYPE_INT32 dims: [4] }] output [{ name: \"y\" data_type: TYPE_INT64 dims: [1] reshape { shape: [] } }]",
        )
        .unwrap();
        let e = bind_io(&cfg, &sig(), Path::new(".")).unwrap_err();
        assert_eq!(e.field, "input[0].data_type");
        assert!(e.reason.contains("TYPE_FP32"), "{e}");
        cfg.input[0].data_type = DataType::F32.to_config() as i32;
        cfg.input[0].dims = vec![5];
        let e = bind_io(&cfg, &sig(), Path::new(".")).unwrap_err();
        assert_eq!(e.field, "input[0].dims");
        cfg.input[0].dims = vec![4];
        bind_io(&cfg, &sig(), Path::new(".")).unwrap();
        cfg.input[0].name = "nope".into();
        assert_eq!(
            bind_io(&cfg, &sig(), Path::new(".")).unwrap_err().field,
            "input[0].name"
        );
    }

    #[test]
    fn version_policies() {
        let dir = std::env::temp_dir().join(format!("infera-versions-{}", std::process::id()));
        for v in ["1", "2", "3", "notes"] {
            std::fs::create_dir_all(dir.join(v)).unwrap();
        }
        let pick = |text: &str| select_versions(&dir, &config::parse_pbtxt(text).unwrap());
        assert_eq!(pick("").unwrap(), vec![3]);
        assert_eq!(
            pick("version_policy { latest { num_versions: 2 } }").unwrap(),
            vec![2, 3]
        );
        assert_eq!(pick("version_policy { all { } }").unwrap(), vec![1, 2, 3]);
        assert_eq!(
            pick("version_policy { specific { versions: [1] } }").unwrap(),
            vec![1]
        );
        assert!(pick("version_policy { specific { versions: [7] } }").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
