//! The one trait every runtime implements. The core never sees ONNX Runtime or tract types.

use std::collections::BTreeMap;
use std::path::Path;

use thiserror::Error;

use crate::datatype::DataType;
use crate::tensor::Tensor;

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("cannot load {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("{0}")]
    Run(String),
    /// The request's data cannot be processed (e.g. a corrupt image): the client's fault.
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Unsupported(String),
}

/// One model input or output as the model file declares it; -1 marks a free dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoSpec {
    pub name: String,
    pub dtype: DataType,
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
}

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Threads inside one operator; the repository divides the cores among instances.
    pub intra_op_threads: usize,
    pub inter_op_threads: usize,
    /// The model config's `parameters`, for backend-specific knobs.
    pub parameters: BTreeMap<String, String>,
    /// The model's folder in the repository, for backends that read side files (e.g. labels):
    /// read them through [`LoadOptions::side_file`], never by joining paths.
    pub model_dir: std::path::PathBuf,
    /// The config's `max_batch_size` (0: no batch dimension), for backends that size buffers.
    pub max_batch_size: usize,
}

impl LoadOptions {
    /// Reads a file a parameter names, relative to the model's folder. Anything that leads
    /// outside it (after symlinks) or is larger than the side-file limit is refused with a
    /// message that does not tell whether an outside file exists.
    pub fn side_file(&self, name: &str) -> Result<Vec<u8>, String> {
        let path = crate::repository::files::confined(&self.model_dir, name).map_err(|r| r.0)?;
        crate::repository::files::read_bounded(&path)
            .map_err(|e| format!("'{}': {e}", name.escape_debug()))
    }
}

/// When a backend's requests may skip the queue and run on the caller's thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InlineRuns {
    /// Always through the queue and a worker thread.
    #[default]
    Never,
    /// Small inputs always run inline: their cost is known to be microseconds (decoding a
    /// thumbnail, a softmax over ten scores).
    WhenSmall,
    /// Small inputs run inline while the model's measured cost per run stays within the
    /// scheduler's budget (tens of microseconds): a model's cost is only known once it ran.
    WhenCheap,
}

/// A runtime that can open model files.
pub trait Backend: Send + Sync {
    /// The name used in `backend:` and in logs.
    fn name(&self) -> &'static str;
    /// False for backends configured only by config.pbtxt (no file in the version folder).
    fn needs_model_file(&self) -> bool {
        true
    }
    /// Whether small requests may run on the caller's thread, where a hand-off to a worker
    /// thread would cost more than the run itself ([`Session::fits_inline`]).
    fn inline_runs(&self) -> InlineRuns {
        InlineRuns::Never
    }
    fn load(
        &self,
        model_file: &Path,
        options: &LoadOptions,
    ) -> Result<Box<dyn Session>, BackendError>;
    /// Loads a model given in memory (an encrypted model file, decrypted at load so the
    /// plain model never touches the disk); `name` is for messages.
    fn load_bytes(
        &self,
        bytes: &[u8],
        name: &Path,
        options: &LoadOptions,
    ) -> Result<Box<dyn Session>, BackendError> {
        let _ = (bytes, options);
        Err(BackendError::Load {
            path: name.display().to_string(),
            reason: format!(
                "the {} backend cannot load encrypted model files",
                self.name()
            ),
        })
    }
}

/// One loaded copy of a model (one instance of an instance group). Not shared between threads.
pub trait Session: Send {
    fn signature(&self) -> &Signature;
    /// Runs the model; inputs are in signature order, outputs come back in signature order.
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError>;
    /// Whether these inputs are small enough to run on the caller's thread (an async
    /// runtime's: it must take tens of microseconds, not milliseconds). Only asked of
    /// backends whose [`Backend::inline_runs`] is not `Never`.
    fn fits_inline(&self, inputs: &[Tensor]) -> bool {
        let _ = inputs;
        false
    }
}
