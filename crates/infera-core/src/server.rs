//! The protocol-neutral server: what every front-end calls. It validates requests against
//! the model config, hands them to the model's scheduler and shapes the response.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;

use crate::cache::ResponseCache;
use crate::config::limits::MAX_ENSEMBLE_DEPTH;
use crate::datatype::DataType;
use crate::error::{ErrorKind, ServeError, ServeResult};
use crate::metrics::Metrics;
use crate::repository::{EnsembleStep, IoDesc, Model, ModelRepository, ModelVersion, Runner};
use crate::request::{InferRequest, InferResponse, ModelMetadata, OutputTensor};
use crate::scheduler::{BACKGROUND, Job, JobOutput};
use crate::stats::StatsSnapshot;
use crate::tensor::{Tensor, element_count};
use tracing::Instrument;

/// Extensions that are really implemented; `/v2` advertises exactly these.
pub const EXTENSIONS: &[&str] = &[
    "classification",
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "schedule_policy",
    "statistics",
];

/// Triton's `--model-control-mode`: who may change which models are loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControlMode {
    /// Every model loads at start; the repository API cannot change them.
    None,
    /// Every model loads at start, then the server follows the repository's folders.
    Poll,
    /// Models load and unload through the repository API.
    #[default]
    Explicit,
}

impl std::str::FromStr for ControlMode {
    type Err = String;
    fn from_str(s: &str) -> Result<ControlMode, String> {
        match s {
            "none" => Ok(ControlMode::None),
            "poll" => Ok(ControlMode::Poll),
            "explicit" => Ok(ControlMode::Explicit),
            other => Err(format!("'{other}': use none, poll or explicit")),
        }
    }
}

/// Triton's refusal of load/unload outside explicit mode, word for word.
pub const LOAD_NOT_ALLOWED: &str =
    "explicit model load / unload is not allowed if polling is enabled";

pub struct InferenceServer {
    pub repository: Arc<ModelRepository>,
    pub metrics: Metrics,
    shutting_down: AtomicBool,
    /// `--cache-config`: answers of models with `response_cache { enable: true }`.
    cache: Option<Arc<ResponseCache>>,
    control: ControlMode,
    /// A/B splits, canaries and shadows, by the name clients call.
    pub routes: crate::routing::Routes,
    /// Where answers of shadowed routes go to be mirrored ([`InferenceServer::start_routing`]).
    pub(crate) shadow_tx: std::sync::OnceLock<tokio::sync::mpsc::Sender<crate::routing::ShadowJob>>,
}

pub struct VersionStats {
    pub name: String,
    pub version: String,
    pub stats: StatsSnapshot,
}

impl InferenceServer {
    pub fn new(repository: Arc<ModelRepository>, metrics: Metrics) -> InferenceServer {
        // Fails only when these metrics already watch a repository (tests share them).
        let _ = metrics.register(Box::new(crate::metrics::ModelReadyCollector::new(
            &repository,
        )));
        let routes = crate::routing::Routes::new(metrics.clone());
        InferenceServer {
            repository,
            metrics,
            shutting_down: AtomicBool::new(false),
            cache: None,
            control: ControlMode::default(),
            routes,
            shadow_tx: std::sync::OnceLock::new(),
        }
    }

    /// Who may load and unload models (explicit unless set).
    pub fn with_control_mode(mut self, mode: ControlMode) -> InferenceServer {
        self.control = mode;
        self
    }

    pub fn control_mode(&self) -> ControlMode {
        self.control
    }

    fn check_explicit(&self) -> ServeResult<()> {
        if self.control == ControlMode::Explicit {
            Ok(())
        } else {
            Err(ServeError::unavailable(LOAD_NOT_ALLOWED))
        }
    }

    /// Turns Triton's response cache on for the models whose config enables it.
    pub fn with_response_cache(mut self, cache: Arc<ResponseCache>) -> InferenceServer {
        self.cache = Some(cache);
        self
    }

    pub fn response_cache(&self) -> Option<&Arc<ResponseCache>> {
        self.cache.as_ref()
    }

    pub fn name(&self) -> &'static str {
        "infera"
    }

    pub fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    pub fn live(&self) -> bool {
        true
    }

    /// Ready while not draining for shutdown.
    pub fn ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Relaxed)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn model(&self, name: &str) -> ServeResult<Arc<Model>> {
        self.repository.get(name)
    }

    pub fn model_ready(&self, name: &str, version: Option<i64>) -> bool {
        self.resolve(name, version, |m, v| m.version(v).map(|_| ()))
            .is_ok()
    }

    /// The metadata of a model, or of a route's stable variant under the route's name.
    pub fn model_metadata(&self, name: &str, version: Option<i64>) -> ServeResult<ModelMetadata> {
        self.resolve(name, version, |m, v| {
            m.version(v)?;
            let mut meta = m.metadata();
            meta.name = name.to_string();
            Ok(meta)
        })
    }

    /// The model a client-facing name stands for, and the version to use: a route's stable
    /// variant when no version is named and the name is routed, else the model of that name.
    pub fn serving_model(
        &self,
        name: &str,
        version: Option<i64>,
    ) -> ServeResult<(Arc<Model>, Option<i64>)> {
        if version.is_none()
            && let Some(route) = self.routes.get(name)
        {
            let (model, version) = route.interface();
            return Ok((self.repository.get(model)?, version));
        }
        Ok((self.repository.get(name)?, version))
    }

    fn resolve<T>(
        &self,
        name: &str,
        version: Option<i64>,
        f: impl FnOnce(&Model, Option<i64>) -> ServeResult<T>,
    ) -> ServeResult<T> {
        let (m, v) = self.serving_model(name, version)?;
        f(&m, v)
    }

    /// Checks one input's name, type and shape against the model before its data is read,
    /// so a request cannot make a front-end parse (and allocate) more than the model takes.
    pub fn check_input(
        &self,
        model: &str,
        version: Option<i64>,
        name: &str,
        dtype: DataType,
        shape: &[usize],
    ) -> ServeResult<()> {
        self.resolve(model, version, |m, v| {
            m.version(v)?;
            check_input(m, find_input(m, name)?, dtype, shape).map(|_| ())
        })
    }

    /// Statistics for one model (and version), or every ready model when `name` is empty.
    pub fn statistics(&self, name: &str, version: Option<i64>) -> ServeResult<Vec<VersionStats>> {
        let models = if name.is_empty() {
            self.repository.ready_models()
        } else {
            vec![self.repository.get(name)?]
        };
        let mut out = Vec::new();
        for m in models {
            let versions: Vec<_> = match version {
                Some(_) => vec![m.version(version)?.clone()],
                None => m.versions.values().cloned().collect(),
            };
            for v in versions {
                out.push(VersionStats {
                    name: m.name.clone(),
                    version: v.version.to_string(),
                    stats: v.stats.snapshot(),
                });
            }
        }
        Ok(out)
    }

    pub async fn load(&self, name: &str, config_json: Option<String>) -> ServeResult<()> {
        self.check_explicit()?;
        let repo = self.repository.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || repo.load(&name, config_json.as_deref()))
            .await
            .map_err(|e| ServeError::internal(format!("model load task failed: {e}")))?
    }

    /// Unloads a model; see [`ModelRepository::unload`] for models that ensembles use.
    pub async fn unload(&self, name: &str, unload_dependents: bool) -> ServeResult<()> {
        self.check_explicit()?;
        let repo = self.repository.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || repo.unload(&name, unload_dependents))
            .await
            .map_err(|e| ServeError::internal(format!("model unload task failed: {e}")))?
    }

    /// An inference request. Once shutdown has begun, new online requests are refused with
    /// 503; requests already inside (ensemble steps included) and background work (batch
    /// jobs finishing their current chunk) go on.
    pub async fn infer(&self, req: InferRequest) -> ServeResult<InferResponse> {
        if self.shutting_down.load(Ordering::Relaxed) && req.priority != BACKGROUND {
            return Err(ServeError::unavailable(
                "the server is shutting down; retry on another replica",
            ));
        }
        // A request that names a version bypasses routing: clients can always reach one.
        if req.version.is_none()
            && let Some(route) = self.routes.get(&req.model)
        {
            return self.infer_routed(route, req).await;
        }
        self.infer_at(req, 0).await
    }

    /// `depth`: how many ensembles deep this request is (the load-time cycle check's backstop).
    pub(crate) async fn infer_at(
        &self,
        req: InferRequest,
        depth: usize,
    ) -> ServeResult<InferResponse> {
        let start = Instant::now();
        let model = self.repository.get(&req.model)?;
        let version = model.version(req.version)?.clone();
        let cache = self
            .cache
            .as_ref()
            .filter(|_| model.config.response_cache.is_some_and(|c| c.enable))
            .map(|c| (c, crate::cache::key(&model.name, version.version, &req)));
        if let Some((c, key)) = &cache
            && let Some(outputs) = c.get(key)
        {
            let lookup = start.elapsed();
            version.stats.record_cache_hit(lookup);
            version.stats.record_request(true, lookup);
            version.metrics.record_cache(true, lookup);
            version.metrics.record_request(Ok(()), lookup);
            return Ok(InferResponse {
                model_name: model.name.clone(),
                model_version: version.version.to_string(),
                id: req.id,
                outputs: outputs.as_ref().clone(),
            });
        }
        let lookup = start.elapsed();
        let result = self.run(&model, &version, req, depth).await;
        if let Some((c, key)) = cache
            && let Ok(r) = &result
        {
            let stored = Instant::now();
            c.insert(key, r.outputs.clone());
            let cache_time = lookup + stored.elapsed();
            version.stats.record_cache_miss(cache_time);
            version.metrics.record_cache(false, cache_time);
        }
        let total = start.elapsed();
        version.stats.record_request(result.is_ok(), total);
        version.metrics.record_request(
            result.as_ref().map(|_| ()).map_err(|e| match e.kind {
                ErrorKind::InvalidArgument | ErrorKind::NotFound => "REJECTED",
                ErrorKind::QueueFull | ErrorKind::Unavailable => "CANCELED",
                _ => "OTHER",
            }),
            total,
        );
        result
    }

    async fn run(
        &self,
        model: &Model,
        version: &ModelVersion,
        req: InferRequest,
        depth: usize,
    ) -> ServeResult<InferResponse> {
        let requested = resolve_outputs(model, &req)?;
        let (job, batch) = prepare(model, req.inputs, req.priority, req.timeout)?;
        let out = match &version.runner {
            Runner::Ensemble(steps) => self.run_ensemble(model, steps, job, &req.id, depth).await?,
            Runner::Scheduler(scheduler) => scheduler.run(job).await?,
        };
        let mut outputs = Vec::with_capacity(requested.len());
        for (io, classification) in requested {
            let t = out.outputs.get(io.index).ok_or_else(|| {
                ServeError::internal(format!("model did not produce output '{}'", io.name))
            })?;
            let t = to_client_shape(model, io, t.clone(), batch)?;
            let tensor = match classification {
                Some(k) => classify(
                    &t,
                    k,
                    io.labels.as_deref().map(Vec::as_slice),
                    model.max_batch_size() > 0,
                )?,
                None => t,
            };
            outputs.push(OutputTensor {
                name: io.name.clone(),
                tensor,
            });
        }
        Ok(InferResponse {
            model_name: model.name.clone(),
            model_version: version.version.to_string(),
            id: req.id,
            outputs,
        })
    }
}

impl InferenceServer {
    /// Runs an ensemble's steps in dataflow order; intermediate tensors never leave the server,
    /// and each step goes through its own model's scheduler (batching, statistics).
    async fn run_ensemble(
        &self,
        model: &Model,
        steps: &[EnsembleStep],
        job: Job,
        id: &str,
        depth: usize,
    ) -> ServeResult<JobOutput> {
        if depth >= MAX_ENSEMBLE_DEPTH {
            return Err(ServeError::invalid(format!(
                "ensemble '{}' nests ensembles deeper than {MAX_ENSEMBLE_DEPTH} levels",
                model.name
            )));
        }
        let mut tensors: std::collections::HashMap<String, Tensor> = model
            .inputs
            .iter()
            .map(|io| io.name.clone())
            .zip(job.inputs)
            .collect();
        for step in steps {
            let inputs = step
                .inputs
                .iter()
                .map(|(step_name, ens_name)| {
                    tensors
                        .get(ens_name)
                        .map(|t| crate::request::InputTensor {
                            name: step_name.clone(),
                            tensor: t.clone(),
                        })
                        .ok_or_else(|| {
                            ServeError::internal(format!("ensemble tensor '{ens_name}' missing"))
                        })
                })
                .collect::<ServeResult<Vec<_>>>()?;
            let request = InferRequest {
                model: step.model_name.clone(),
                version: step.model_version,
                id: id.to_string(),
                inputs,
                outputs: step
                    .outputs
                    .iter()
                    .map(|(n, _)| crate::request::RequestedOutput {
                        name: n.clone(),
                        classification: None,
                    })
                    .collect(),
                priority: job.priority,
                timeout: job.timeout,
                routing_key: None,
            };
            let step_span = tracing::debug_span!("step", model = %step.model_name);
            let response = Box::pin(self.infer_at(request, depth + 1).instrument(step_span))
                .await
                .map_err(|e| {
                    let message = format!(
                        "ensemble '{}' step '{}': {}",
                        model.name, step.model_name, e.message
                    );
                    ServeError::new(e.kind, message)
                })?;
            for out in response.outputs {
                if let Some((_, ens_name)) = step.outputs.iter().find(|(n, _)| *n == out.name) {
                    tensors.insert(ens_name.clone(), out.tensor);
                }
            }
        }
        let outputs = model
            .outputs
            .iter()
            .map(|io| {
                tensors.remove(&io.name).ok_or_else(|| {
                    ServeError::internal(format!("ensemble output '{}' was not produced", io.name))
                })
            })
            .collect::<ServeResult<Vec<_>>>()?;
        Ok(JobOutput {
            outputs,
            timing: Default::default(),
        })
    }
}

fn resolve_outputs<'m>(
    model: &'m Model,
    req: &InferRequest,
) -> ServeResult<Vec<(&'m IoDesc, Option<usize>)>> {
    if req.outputs.is_empty() {
        return Ok(model.outputs.iter().map(|o| (o, None)).collect());
    }
    req.outputs
        .iter()
        .map(|r| {
            let io = model
                .outputs
                .iter()
                .find(|o| o.name == r.name)
                .ok_or_else(|| {
                    ServeError::invalid(format!(
                        "unexpected inference output '{}' for model '{}'",
                        r.name, model.name
                    ))
                })?;
            if r.classification == Some(0) {
                return Err(ServeError::invalid(format!(
                    "classification count for output '{}' must be at least 1",
                    r.name
                )));
            }
            Ok((io, r.classification))
        })
        .collect()
}

fn shape_str(s: &[i64]) -> String {
    let parts: Vec<String> = s.iter().map(i64::to_string).collect();
    format!("[{}]", parts.join(","))
}

/// Checks the inputs against the config and puts them in model order and model shape.
pub(crate) fn prepare(
    model: &Model,
    inputs: Vec<crate::request::InputTensor>,
    priority: usize,
    timeout: Option<std::time::Duration>,
) -> ServeResult<(Job, usize)> {
    let mbs = model.max_batch_size();
    let mut slots: Vec<Option<Tensor>> = vec![None; model.model_input_count];
    let mut batch: Option<usize> = None;
    let given = inputs.len();
    for input in inputs {
        let io = find_input(model, &input.name)?;
        if slots.get(io.index).is_none_or(Option::is_some) {
            return Err(ServeError::invalid(format!(
                "input '{}' is given more than once",
                io.name
            )));
        }
        let mut t = input.tensor;
        let b = check_input(model, io, t.dtype, &t.shape)?;
        if let Some(prev) = batch.filter(|&p| mbs > 0 && p != b) {
            return Err(ServeError::invalid(format!(
                "input '{}' has batch size {b} but an earlier input has {prev}",
                io.name
            )));
        }
        batch = Some(b);
        if let Some(r) = &io.reshape {
            t.shape = reshape(&t, r, mbs > 0).ok_or_else(|| {
                ServeError::invalid(format!(
                    "input '{}' of shape {:?} cannot be reshaped to {:?}",
                    io.name, t.shape, r
                ))
            })?;
        }
        slots[io.index] = Some(t);
    }
    let inputs: Vec<Tensor> = slots.into_iter().collect::<Option<_>>().ok_or_else(|| {
        ServeError::invalid(format!(
            "expected {} inputs but got {given} inputs for model '{}'",
            model.inputs.len(),
            model.name
        ))
    })?;
    let batch = batch.unwrap_or(1);
    Ok((
        Job {
            inputs,
            batch,
            priority,
            timeout,
        },
        batch,
    ))
}

fn find_input<'m>(model: &'m Model, name: &str) -> ServeResult<&'m IoDesc> {
    model.inputs.iter().find(|i| i.name == name).ok_or_else(|| {
        ServeError::invalid(format!(
            "unexpected inference input '{}' for model '{}'; it takes {:?}",
            name,
            model.name,
            model
                .inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
        ))
    })
}

/// An input's type and shape against the config; the batch size it brings.
fn check_input(model: &Model, io: &IoDesc, dtype: DataType, shape: &[usize]) -> ServeResult<usize> {
    let mbs = model.max_batch_size();
    if dtype != io.dtype {
        return Err(ServeError::invalid(format!(
            "inference input '{}' data-type is '{}', but model '{}' expects '{}'",
            io.name, dtype, model.name, io.dtype
        )));
    }
    let expected: Vec<i64> = (mbs > 0)
        .then_some(-1)
        .into_iter()
        .chain(io.dims.iter().copied())
        .collect();
    let fits = expected.len() == shape.len()
        && expected
            .iter()
            .zip(shape)
            .all(|(&e, &g)| e == -1 || i64::try_from(g) == Ok(e));
    if !fits {
        let got: Vec<String> = shape.iter().map(usize::to_string).collect();
        return Err(ServeError::invalid(format!(
            "unexpected shape for input '{}' for model '{}'. Expected {}, got [{}]",
            io.name,
            model.name,
            shape_str(&expected),
            got.join(",")
        )));
    }
    if mbs == 0 {
        return Ok(1);
    }
    let b = shape[0];
    if b == 0 || b > mbs {
        return Err(ServeError::invalid(format!(
            "inference request batch-size must be <= {mbs} for '{}' (got {b})",
            model.name
        )));
    }
    Ok(b)
}

/// `[batch] + target`, with one -1 in `target` resolved from the element count.
fn reshape(t: &Tensor, target: &[i64], batched: bool) -> Option<Vec<usize>> {
    let total = element_count(&t.shape).ok()?;
    let lead: Vec<usize> = if batched {
        vec![*t.shape.first()?]
    } else {
        vec![]
    };
    let per = total.checked_div(lead.iter().product::<usize>().max(1))?;
    let known: usize = target
        .iter()
        .filter(|&&d| d > 0)
        .map(|&d| d as usize)
        .product();
    let mut out = lead;
    for &d in target {
        out.push(if d == -1 {
            per.checked_div(known)?
        } else {
            d as usize
        });
    }
    (element_count(&out).ok()? == total).then_some(out)
}

fn to_client_shape(model: &Model, io: &IoDesc, mut t: Tensor, batch: usize) -> ServeResult<Tensor> {
    if io.reshape.is_some() {
        let batched = model.max_batch_size() > 0;
        let mut target = io.dims.clone();
        if batched {
            target.insert(0, batch as i64);
        }
        t.shape = reshape(
            &Tensor {
                shape: vec![t.element_count()],
                ..t.clone()
            },
            &target,
            false,
        )
        .ok_or_else(|| {
            ServeError::internal(format!(
                "output '{}' of shape {:?} does not fit the configured dims {:?}",
                io.name, t.shape, io.dims
            ))
        })?;
    }
    Ok(t)
}

/// Triton's classification extension: per batch row, the top k as "score:index[:label]".
fn classify(t: &Tensor, k: usize, labels: Option<&[String]>, batched: bool) -> ServeResult<Tensor> {
    let values: Vec<f64> = match t.to_json() {
        serde_json::Value::Array(v) if t.dtype != crate::datatype::DataType::Bytes => {
            v.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect()
        }
        _ => {
            return Err(ServeError::invalid(
                "classification needs a numeric output".to_string(),
            ));
        }
    };
    let rows = if batched {
        t.shape.first().copied().unwrap_or(1).max(1)
    } else {
        1
    };
    let per_row = values.len() / rows;
    let k = k.min(per_row);
    let mut strings = Vec::with_capacity(rows * k);
    for row in values.chunks(per_row.max(1)).take(rows) {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        for &i in idx.iter().take(k) {
            let s = match labels.and_then(|l| l.get(i)) {
                Some(label) => format!("{:.6}:{i}:{label}", row[i]),
                None => format!("{:.6}:{i}", row[i]),
            };
            strings.push(Bytes::from(s));
        }
    }
    let shape = if batched { vec![rows, k] } else { vec![k] };
    Tensor::from_strings(shape, strings).map_err(|e| ServeError::internal(e.to_string()))
}
