//! A Triton-layout model repository: `<model>/config.pbtxt`, `<model>/<version>/model.onnx`.
//!
//! Each model loads on its own: a broken one is listed UNAVAILABLE with its reason while the
//! others serve. Loading is a transaction: the new model is built and warmed beside the one
//! that serves, checked against the models it calls and the ensembles that call it, and only
//! then swapped in; a failed load leaves the old model serving. Requests hold their model, so
//! in-flight requests on a replaced or unloaded model finish on it.

mod autocomplete;
mod build;
mod ensemble;
pub mod files;
mod model;
mod policy;
pub mod poll;
mod resize;
mod warmup;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use tracing::{info, warn};

use crate::backend::Backend;
use crate::config::check_model_name;
use crate::error::{ErrorKind, ServeError, ServeResult};
use crate::metrics::Metrics;
use crate::request::IndexEntry;

pub use model::{EnsembleStep, IoDesc, Model, ModelVersion, Runner};

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
    /// Sessions one model may open (instances × versions served); each holds the model.
    pub max_sessions: usize,
    /// Opens encrypted model files (`model.onnx.enc`, made by `infera encrypt`) in memory.
    pub keyring: Option<Arc<infera_seal::Keyring>>,
}

impl Default for RepositoryOptions {
    fn default() -> Self {
        RepositoryOptions {
            default_max_batch_size: 4,
            max_queue: 1024,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_sessions: 16,
            keyring: None,
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

struct Slot {
    state: ModelState,
    /// Why the model is not ready, or why its last reload failed while it kept serving.
    reason: String,
    model: Option<Arc<Model>>,
}

impl Slot {
    fn empty(state: ModelState) -> Slot {
        Slot {
            state,
            reason: String::new(),
            model: None,
        }
    }
}

/// Loads and unloads waiting for their turn; more are refused rather than queued forever.
const MAX_WAITING_CHANGES: usize = 16;
const UNLOADED: &str = "unloaded";

pub struct ModelRepository {
    root: PathBuf,
    backends: Backends,
    options: RepositoryOptions,
    metrics: Metrics,
    models: RwLock<BTreeMap<String, Slot>>,
    /// Loads and unloads run one at a time: each checks the whole dependency graph.
    changes: Mutex<()>,
    waiting: AtomicUsize,
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
            changes: Mutex::new(()),
            waiting: AtomicUsize::new(0),
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
            if entry.path().is_dir() && check_model_name(&name).is_ok() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Loads every model in the repository, ensembles last (so they are checked against the
    /// models they call); failures are logged and kept in the index.
    pub fn load_all(&self) -> std::io::Result<()> {
        let names = self.model_names()?;
        self.load_each(names);
        Ok(())
    }

    /// Loads the named models, ensembles after the models they call; failures are logged
    /// and kept in the index.
    pub fn load_each(&self, names: Vec<String>) {
        let is_ensemble = |n: &str| {
            self.read_config(n, &self.root.join(n), None)
                .is_ok_and(|c| c.platform == crate::config::ENSEMBLE_PLATFORM)
        };
        let (ensembles, models): (Vec<String>, Vec<String>) =
            names.into_iter().partition(|n| is_ensemble(n));
        for name in models.iter().chain(&ensembles) {
            if let Err(e) = self.load(name, None) {
                warn!(model = %name, error = %e, "model failed to load");
            }
        }
    }

    /// Waits for the change lock; refuses when too many changes are already waiting.
    fn begin_change(&self) -> ServeResult<parking_lot::MutexGuard<'_, ()>> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING_CHANGES {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ServeError::unavailable(
                "too many model loads and unloads are waiting; retry when they are done",
            ));
        }
        let guard = self.changes.lock();
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        Ok(guard)
    }

    /// Loads (or reloads) one model, optionally with a config given as proto-JSON.
    /// Blocking: call it off the async runtime.
    ///
    /// The new model is built, checked and warmed while the old one (if any) keeps serving,
    /// then swapped in. On failure the old one stays, READY, and the index gives the reason.
    pub fn load(&self, name: &str, config_json: Option<&str>) -> ServeResult<()> {
        check_model_name(name).map_err(ServeError::invalid)?;
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Err(ServeError::not_found(format!(
                "failed to load '{name}', failed to poll from model repository: no folder '{name}' in the model repository"
            )));
        }
        let _change = self.begin_change()?;
        {
            let mut models = self.models.write();
            let slot = models
                .entry(name.to_string())
                .or_insert_with(|| Slot::empty(ModelState::Loading));
            if slot.model.is_none() {
                slot.state = ModelState::Loading;
                slot.reason.clear();
            }
        }
        let started = std::time::Instant::now();
        let result = self.prepare(name, &dir, config_json);
        let mut models = self.models.write();
        let slot = models
            .entry(name.to_string())
            .or_insert_with(|| Slot::empty(ModelState::Loading));
        match result {
            Ok(model) => {
                info!(
                    model = %name,
                    backend = model.backend,
                    versions = ?model.versions.keys().collect::<Vec<_>>(),
                    ms = started.elapsed().as_millis() as u64,
                    replaced = slot.model.is_some(),
                    "model ready"
                );
                // The old model is dropped when its last in-flight request lets go of it.
                *slot = Slot {
                    state: ModelState::Ready,
                    reason: String::new(),
                    model: Some(Arc::new(model)),
                };
                Ok(())
            }
            Err(e) if slot.model.is_some() => {
                warn!(model = %name, error = %e, "reload failed; the loaded model keeps serving");
                slot.state = ModelState::Ready;
                slot.reason = format!(
                    "the last load failed, the previous config keeps serving: {}",
                    e.message
                );
                Err(e)
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

    /// Builds, checks and warms a model without touching what serves.
    fn prepare(&self, name: &str, dir: &Path, config_json: Option<&str>) -> ServeResult<Model> {
        let cfg = self.read_config(name, dir, config_json)?;
        if let Some(model) = self.try_resize(name, &cfg)? {
            return Ok(model);
        }
        self.check_graph(name, &cfg)?;
        let model = self.build(name, dir, cfg)?;
        self.check_neighbours(&model)?;
        warmup::warm(&model, dir, policy::instance_count(&model.config))?;
        Ok(model)
    }

    /// Refuses an ensemble whose calls, with the loaded ensembles', would form a cycle.
    fn check_graph(
        &self,
        name: &str,
        cfg: &infera_proto::inference::ModelConfig,
    ) -> ServeResult<()> {
        use infera_proto::inference::model_config::SchedulingChoice;
        let mut graph: BTreeMap<String, Vec<String>> = self
            .models
            .read()
            .iter()
            .filter_map(|(n, s)| Some((n.clone(), s.model.as_ref()?)))
            .map(|(n, m)| (n, m.dependencies().into_iter().map(String::from).collect()))
            .collect();
        let calls = match &cfg.scheduling_choice {
            Some(SchedulingChoice::EnsembleScheduling(e))
                if cfg.platform == crate::config::ENSEMBLE_PLATFORM =>
            {
                e.step.iter().map(|s| s.model_name.clone()).collect()
            }
            _ => Vec::new(),
        };
        graph.insert(name.to_string(), calls);
        match ensemble::find_cycle(&graph, name) {
            Some(cycle) => Err(ServeError::invalid(format!(
                "model '{name}': ensemble_scheduling: the models would call each other in a cycle: {}",
                cycle.join(" → ")
            ))),
            None => Ok(()),
        }
    }

    /// The new model against the loaded models it calls and the loaded ensembles calling it.
    fn check_neighbours(&self, model: &Model) -> ServeResult<()> {
        let models = self.models.read();
        let loaded = |n: &str| models.get(n).and_then(|s| s.model.clone());
        for callee in model.dependencies() {
            if let Some(c) = loaded(callee) {
                ensemble::check_calls(model, &c).map_err(ServeError::invalid)?;
            }
        }
        for (n, slot) in models.iter() {
            if let Some(caller) = &slot.model
                && n != &model.name
                && caller.dependencies().contains(&model.name.as_str())
            {
                ensemble::check_calls(caller, model).map_err(|why| {
                    ServeError::invalid(format!(
                        "model '{}': the new config would break a loaded ensemble: {why}",
                        model.name
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// Unloads a model. A model that loaded ensembles call is refused unless
    /// `unload_dependents` (Triton's parameter), which unloads those ensembles too.
    pub fn unload(&self, name: &str, unload_dependents: bool) -> ServeResult<()> {
        let _change = self.begin_change()?;
        let mut models = self.models.write();
        if models.get(name).is_none_or(|s| s.model.is_none()) {
            return Err(ServeError::not_found(format!(
                "failed to unload '{name}': model is not loaded"
            )));
        }
        // Everything that calls `name`, directly or through other ensembles.
        let mut dependents: Vec<String> = Vec::new();
        let mut frontier = vec![name.to_string()];
        while let Some(callee) = frontier.pop() {
            for (n, slot) in models.iter() {
                if let Some(m) = &slot.model
                    && m.dependencies().contains(&callee.as_str())
                    && n != name
                    && !dependents.contains(n)
                {
                    dependents.push(n.clone());
                    frontier.push(n.clone());
                }
            }
        }
        if !dependents.is_empty() && !unload_dependents {
            dependents.sort();
            return Err(ServeError::new(
                ErrorKind::Conflict,
                format!(
                    "failed to unload '{name}': the loaded ensembles {dependents:?} use it; unload them first, or pass the parameter \"unload_dependents\": true to unload them too"
                ),
            ));
        }
        for n in std::iter::once(name.to_string()).chain(dependents) {
            if let Some(slot) = models.get_mut(&n) {
                // In-flight requests hold the model; its workers stop once they are done.
                *slot = Slot {
                    state: ModelState::Unavailable,
                    reason: UNLOADED.to_string(),
                    model: None,
                };
                info!(model = %n, "model unloaded");
            }
        }
        Ok(())
    }

    /// Drops what the index remembers of an unloaded model whose folder is gone (a
    /// registration that failed or was undone). False when the model is loaded.
    pub fn forget(&self, name: &str) -> bool {
        let mut models = self.models.write();
        if models.get(name).is_some_and(|s| s.model.is_some()) {
            return false;
        }
        models.remove(name);
        true
    }

    /// A ready model, or the reason it is not.
    pub fn get(&self, name: &str) -> ServeResult<Arc<Model>> {
        let models = self.models.read();
        match models.get(name) {
            Some(Slot { model: Some(m), .. }) => Ok(m.clone()),
            Some(slot) if slot.state == ModelState::Loading => Err(ServeError::unavailable(
                format!("model '{name}' is still loading"),
            )),
            Some(slot) if slot.reason != UNLOADED => Err(ServeError::unavailable(format!(
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
                Some(Slot {
                    model: Some(m),
                    reason,
                    ..
                }) => {
                    for v in m.versions.keys() {
                        out.push(IndexEntry {
                            name: name.clone(),
                            version: v.to_string(),
                            state: ModelState::Ready.as_str().into(),
                            reason: reason.clone(),
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
                    reason: UNLOADED.into(),
                }),
                _ => {}
            }
        }
        out
    }
}
