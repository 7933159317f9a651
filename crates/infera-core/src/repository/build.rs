//! Building a model from its folder and config: backend choice, sessions per version and
//! instance, I/O binding, schedulers. Nothing here touches the registry: a built model is
//! swapped in only once it is complete and warm.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use infera_proto::inference::ModelConfig;
use tracing::warn;

use super::autocomplete::{autocomplete, bind_io};
use super::model::{Model, ModelVersion, Resizable, Runner, SessionOpener};
use super::{ModelRepository, ensemble, files, policy};
use crate::backend::{Backend, InlineRuns, LoadOptions, Session, Signature};
use crate::config::limits::MAX_CONFIG_BYTES;
use crate::config::{self, ConfigError, ENSEMBLE_PLATFORM, ONNX_PLATFORM};
use crate::error::{ServeError, ServeResult};
use crate::scheduler::Scheduler;
use crate::stats::ModelStats;

impl ModelRepository {
    /// The config a load uses: the one given (proto-JSON), else config.pbtxt, else empty
    /// (auto-completed from the model file).
    pub(super) fn read_config(
        &self,
        name: &str,
        dir: &Path,
        config_json: Option<&str>,
    ) -> ServeResult<ModelConfig> {
        let fail = |e: ConfigError| ServeError::invalid(format!("model '{name}': {e}"));
        let config_path = dir.join("config.pbtxt");
        let cfg = match config_json {
            Some(json) => config::parse_json(json).map_err(fail)?,
            None if config_path.is_file() => {
                let bytes =
                    files::read_limited(&config_path, MAX_CONFIG_BYTES as u64).map_err(|e| {
                        ServeError::invalid(format!("model '{name}': config.pbtxt: {e}"))
                    })?;
                let text = String::from_utf8(bytes).map_err(|_| {
                    ServeError::invalid(format!("model '{name}': config.pbtxt is not UTF-8 text"))
                })?;
                config::parse_pbtxt(&text).map_err(fail)?
            }
            None => ModelConfig::default(),
        };
        config::validate(&cfg, name).map_err(fail)?;
        Ok(cfg)
    }

    pub(super) fn build(&self, name: &str, dir: &Path, mut cfg: ModelConfig) -> ServeResult<Model> {
        let fail = |e: ConfigError| ServeError::invalid(format!("model '{name}': {e}"));
        cfg.name = name.to_string();
        if cfg.platform == ENSEMBLE_PLATFORM {
            return ensemble::build(name, cfg, dir, &self.metrics).map_err(fail);
        }
        let read_config = cfg.clone();
        let files = super::poll::files_fingerprint(dir);
        let backend = self.pick_backend(&mut cfg).map_err(fail)?;
        let versions = match policy::select_versions(dir, &cfg) {
            // A backend without model files may leave out the version folder: it is version 1.
            Err(e) if !backend.needs_model_file() && e.field == "versions" => vec![1],
            other => other.map_err(fail)?,
        };
        let model_file = if cfg.default_model_filename.is_empty() {
            "model.onnx".to_string()
        } else {
            cfg.default_model_filename.clone()
        };
        let instances = policy::instance_count(&cfg);
        if instances * versions.len() > self.options.max_sessions {
            return Err(ServeError::invalid(format!(
                "model '{name}': instance_group: {instances} instances × {} versions is over this server's limit of {} sessions per model (--max-model-sessions)",
                versions.len(),
                self.options.max_sessions
            )));
        }
        let options = LoadOptions {
            intra_op_threads: policy::thread_param(
                &cfg,
                "intra_op_thread_count",
                (self.options.cores / instances).max(1),
            ),
            inter_op_threads: policy::thread_param(&cfg, "inter_op_thread_count", 1),
            parameters: cfg
                .parameters
                .iter()
                .map(|(k, v)| (k.clone(), v.string_value.clone()))
                .collect(),
            model_dir: dir.to_path_buf(),
            max_batch_size: cfg.max_batch_size.max(0) as usize,
        };

        // Per version: the instances' sessions, then the inline ones.
        type Sessions = Vec<Box<dyn Session>>;
        let mut loaded: BTreeMap<i64, (Sessions, (Sessions, InlineRuns))> = BTreeMap::new();
        let mut openers: Option<BTreeMap<i64, SessionOpener>> = Some(BTreeMap::new());
        let mut signature: Option<Signature> = None;
        for &v in &versions {
            let sealed_name = if model_file.ends_with(".enc") {
                model_file.clone()
            } else {
                format!("{model_file}.enc")
            };
            let sealed = backend.needs_model_file()
                && !dir.join(v.to_string()).join(&model_file).exists()
                && dir.join(v.to_string()).join(&sealed_name).exists();
            let file = if sealed { &sealed_name } else { &model_file };
            let path = if backend.needs_model_file() {
                files::confined(dir, &format!("{v}/{file}")).map_err(|r| {
                    ServeError::invalid(format!(
                        "model '{name}': version {v}: default_model_filename: {}",
                        r.0
                    ))
                })?
            } else {
                dir.join(v.to_string())
            };
            let plain = if sealed {
                Some(self.decrypt(name, v, &path)?)
            } else {
                None
            };
            match (&mut openers, sealed) {
                (Some(o), false) => {
                    let (backend, path, options) = (backend.clone(), path.clone(), options.clone());
                    let name = name.to_string();
                    o.insert(
                        v,
                        Arc::new(move || {
                            backend
                                .load(&path, &options)
                                .map_err(|e| ServeError::invalid(format!("model '{name}': {e}")))
                        }),
                    );
                }
                _ => openers = None,
            }
            let mut sessions = Vec::with_capacity(instances);
            for _ in 0..instances {
                let s = match &plain {
                    Some(bytes) => backend.load_bytes(bytes, &path, &options),
                    None => backend.load(&path, &options),
                }
                .map_err(|e| ServeError::invalid(format!("model '{name}': {e}")))?;
                sessions.push(s);
            }
            // Cheap backends also run small requests on the callers' threads: one session per
            // core, beside the instances (see the scheduler's `inline` module).
            let runs = backend.inline_runs();
            let mut inline = Vec::new();
            if inline_allowed(runs, &path) && plain.is_none() {
                // An inline run must not fan out over threads of its own: the caller's thread
                // is the one that runs it.
                let single = LoadOptions {
                    intra_op_threads: 1,
                    inter_op_threads: 1,
                    ..options.clone()
                };
                for _ in 0..inline_sessions() {
                    inline.push(
                        backend
                            .load(&path, &single)
                            .map_err(|e| ServeError::invalid(format!("model '{name}': {e}")))?,
                    );
                }
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
            loaded.insert(v, (sessions, (inline, runs)));
        }
        let signature = signature.unwrap_or_default();
        config::validate(&cfg, name).map_err(fail)?;
        let (inputs, outputs) = bind_io(&cfg, &signature, dir).map_err(fail)?;
        let policy = policy::batch_policy(&cfg, &signature, self.options.max_queue);
        let mut version_map = BTreeMap::new();
        for (v, (sessions, (inline, runs))) in loaded {
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
            scheduler.add_inline_sessions(inline, runs);
            version_map.insert(
                v,
                Arc::new(ModelVersion {
                    version: v,
                    runner: Runner::Scheduler(scheduler),
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
            resizable: openers.map(|open| Resizable {
                read_config,
                files,
                open,
            }),
        })
    }

    /// The plaintext of an encrypted model file, in memory only.
    fn decrypt(&self, name: &str, v: i64, path: &Path) -> ServeResult<Vec<u8>> {
        let keyring = self.options.keyring.as_ref().ok_or_else(|| {
            ServeError::invalid(format!(
                "model '{name}': version {v}: the model file is encrypted; start the server with --encryption-key-file"
            ))
        })?;
        let bytes = std::fs::read(path).map_err(|e| {
            ServeError::invalid(format!(
                "model '{name}': version {v}: cannot read the model file: {e}"
            ))
        })?;
        let file = format!("model '{name}' version {v}");
        infera_seal::open_all(keyring, &bytes, &file)
            .map_err(|e| ServeError::invalid(e.to_string()))
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
                            "'{}' is not supported: infera serves ONNX models (platform \"onnxruntime_onnx\") and the backends {known:?}",
                            other.escape_debug()
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

/// Model files larger than this never run inline: extra sessions of a large model cost memory,
/// and a large model is rarely cheap enough to run on the caller's thread anyway.
const MAX_INLINE_MODEL_BYTES: u64 = 8 << 20;

/// Whether a version gets inline sessions: always for backends whose small runs are known to
/// be cheap, for the others only when the model file is small (the scheduler then decides by
/// measured cost).
fn inline_allowed(runs: InlineRuns, model_file: &Path) -> bool {
    match runs {
        InlineRuns::Never => false,
        InlineRuns::WhenSmall => true,
        InlineRuns::WhenCheap => std::fs::metadata(model_file)
            .is_ok_and(|m| m.is_file() && m.len() <= MAX_INLINE_MODEL_BYTES),
    }
}

/// One inline session per core: more could never run at once.
fn inline_sessions() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(64))
}
