//! Test support for the request path: an in-memory backend (`backend: "memory"`) whose
//! behaviour config parameters choose, and throwaway Triton-layout repositories.
//!
//! The memory backend takes one FP32 input `INPUT` `[-1, dims]` and returns `OUTPUT`,
//! the input times `scale`. Parameters:
//! * `dims` (default 4), `scale` (default 1), `input_name`, `output_name`;
//! * `fail_load: "true"`: loading fails; `load_ms`: loading takes this long;
//! * `run_ms`: each run takes this long;
//! * `fail_value`: a run whose input holds this value fails (a runtime error);
//! * `panic_value`: a run whose input holds this value panics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use infera_core::backend::{Backend, BackendError, IoSpec, LoadOptions, Session, Signature};
use infera_core::metrics::Metrics;
use infera_core::repository::{Backends, ModelRepository, RepositoryOptions};
use infera_core::{DataType, InferenceServer, Tensor};

pub struct MemoryBackend;

struct MemorySession {
    signature: Signature,
    scale: f32,
    run: Duration,
    fail_value: Option<f32>,
    panic_value: Option<f32>,
}

fn param<T: std::str::FromStr>(o: &LoadOptions, key: &str) -> Result<Option<T>, BackendError> {
    match o.parameters.get(key) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| BackendError::Load {
            path: "memory".into(),
            reason: format!("parameter '{key}': cannot read '{v}'"),
        }),
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn needs_model_file(&self) -> bool {
        false
    }

    fn load(&self, _: &Path, o: &LoadOptions) -> Result<Box<dyn Session>, BackendError> {
        if let Some(ms) = param::<u64>(o, "load_ms")? {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if param::<bool>(o, "fail_load")?.unwrap_or(false) {
            return Err(BackendError::Load {
                path: "memory".into(),
                reason: "fail_load is set".into(),
            });
        }
        let dims: i64 = param(o, "dims")?.unwrap_or(4);
        let name = |k: &str, d: &str| o.parameters.get(k).cloned().unwrap_or_else(|| d.into());
        Ok(Box::new(MemorySession {
            signature: Signature {
                inputs: vec![IoSpec {
                    name: name("input_name", "INPUT"),
                    dtype: DataType::F32,
                    shape: vec![-1, dims],
                }],
                outputs: vec![IoSpec {
                    name: name("output_name", "OUTPUT"),
                    dtype: DataType::F32,
                    shape: vec![-1, dims],
                }],
            },
            scale: param(o, "scale")?.unwrap_or(1.0),
            run: Duration::from_millis(param(o, "run_ms")?.unwrap_or(0)),
            fail_value: param(o, "fail_value")?,
            panic_value: param(o, "panic_value")?,
        }))
    }
}

impl Session for MemorySession {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let x = inputs
            .first()
            .and_then(|t| t.to_vec::<f32>().map(|v| (t.shape.clone(), v)))
            .ok_or_else(|| BackendError::Input("INPUT must be FP32".into()))?;
        std::thread::sleep(self.run);
        if self.fail_value.is_some_and(|f| x.1.contains(&f)) {
            return Err(BackendError::Run("the runtime failed on this input".into()));
        }
        if self.panic_value.is_some_and(|p| x.1.contains(&p)) {
            panic!("the runtime crashed on this input");
        }
        let y: Vec<f32> = x.1.iter().map(|v| v * self.scale).collect();
        Tensor::from_slice(x.0, &y)
            .map(|t| vec![t])
            .map_err(|e| BackendError::Run(e.to_string()))
    }
}

/// A throwaway model repository.
pub struct Repo {
    dir: tempfile::TempDir,
}

impl Default for Repo {
    fn default() -> Self {
        Repo::new()
    }
}

impl Repo {
    pub fn new() -> Repo {
        Repo {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// The repository folder.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    /// A folder beside the repository, for files that must stay out of reach.
    pub fn outside(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Writes `<name>/config.pbtxt` (and the model folder).
    pub fn model(&self, name: &str, config: &str) -> &Repo {
        let d = self.path().join(name);
        std::fs::create_dir_all(&d).expect("model folder");
        std::fs::write(d.join("config.pbtxt"), config).expect("config.pbtxt");
        self
    }

    /// Writes a side file into a model's folder.
    pub fn file(&self, model: &str, name: &str, text: &str) -> &Repo {
        let p = self.path().join(model).join(name);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("folder");
        std::fs::write(p, text).expect("side file");
        self
    }

    /// A server over this repository with the memory backend (and `more`), every model loaded.
    pub fn server(&self, more: Vec<Arc<dyn Backend>>) -> Arc<InferenceServer> {
        let mut backends = Backends::default();
        backends.others.push(Arc::new(MemoryBackend));
        backends.others.extend(more);
        let metrics = Metrics::new();
        std::fs::create_dir_all(self.path()).expect("repository folder");
        let repo = Arc::new(ModelRepository::new(
            self.path(),
            backends,
            RepositoryOptions {
                cores: 2,
                ..Default::default()
            },
            metrics.clone(),
        ));
        repo.load_all().expect("the repository is readable");
        Arc::new(InferenceServer::new(repo, metrics))
    }
}

/// A memory model `[-1, dims]` with dynamic batching up to `max_batch` and the given
/// backend parameters (`dims` is set for you).
pub fn memory_config(name: &str, dims: usize, max_batch: usize, params: &[(&str, &str)]) -> String {
    let mut p = vec![format!(
        "{{ key: \"dims\" value: {{ string_value: \"{dims}\" }} }}"
    )];
    p.extend(
        params
            .iter()
            .map(|(k, v)| format!("{{ key: \"{k}\" value: {{ string_value: \"{v}\" }} }}")),
    );
    format!(
        r#"name: "{name}"
backend: "memory"
max_batch_size: {max_batch}
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
dynamic_batching {{ }}
parameters [ {} ]
"#,
        p.join(", ")
    )
}

/// An ensemble calling `steps` in a chain, each memory-like (`INPUT` → `OUTPUT`).
pub fn chain_config(name: &str, dims: usize, max_batch: usize, steps: &[&str]) -> String {
    let mut text = format!(
        r#"name: "{name}"
platform: "ensemble"
max_batch_size: {max_batch}
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
ensemble_scheduling {{ step [
"#
    );
    for (i, s) in steps.iter().enumerate() {
        let from = if i == 0 {
            "INPUT".to_string()
        } else {
            format!("t{i}")
        };
        let to = if i + 1 == steps.len() {
            "OUTPUT".to_string()
        } else {
            format!("t{}", i + 1)
        };
        text.push_str(&format!(
            "  {{ model_name: \"{s}\" model_version: -1 input_map {{ key: \"INPUT\" value: \"{from}\" }} output_map {{ key: \"OUTPUT\" value: \"{to}\" }} }}{}\n",
            if i + 1 == steps.len() { "" } else { "," }
        ));
    }
    text.push_str("] }\n");
    text
}
