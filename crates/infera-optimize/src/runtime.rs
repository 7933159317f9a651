//! ONNX Runtime sessions for calibration, checks and timing: the same backend `infera serve`
//! uses, so what is measured here is what is served.

use std::path::Path;

use infera_backend_ort::OrtBackend;
use infera_core::backend::{Backend, LoadOptions, Session};
use infera_core::tensor::Tensor;
use infera_proto::onnx::ModelProto;

use crate::OptimizeError;
use crate::graph;

pub struct Runtime {
    backend: OrtBackend,
}

impl Runtime {
    /// `library`: libonnxruntime, or `None` for ORT_DYLIB_PATH / an installed wheel.
    pub fn new(library: Option<&Path>) -> Result<Runtime, OptimizeError> {
        let lib = infera_backend_ort::find_library(library).ok_or_else(|| {
            OptimizeError::Runtime(
                "ONNX Runtime not found (pass --onnxruntime-lib or set ORT_DYLIB_PATH; `pip install onnxruntime==1.31.1` provides it)".into(),
            )
        })?;
        let backend = OrtBackend::new(&lib).map_err(|e| OptimizeError::Runtime(e.to_string()))?;
        Ok(Runtime { backend })
    }

    pub fn open_file(
        &self,
        path: &Path,
        threads: usize,
    ) -> Result<Box<dyn Session>, OptimizeError> {
        let opts = LoadOptions {
            intra_op_threads: threads.max(1),
            inter_op_threads: 1,
            parameters: Default::default(),
            model_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            max_batch_size: 0,
        };
        self.backend
            .load(path, &opts)
            .map_err(|e| OptimizeError::Runtime(e.to_string()))
    }

    /// A session for an in-memory model (written to a temporary file for ONNX Runtime).
    pub fn open(
        &self,
        model: &ModelProto,
        threads: usize,
    ) -> Result<Box<dyn Session>, OptimizeError> {
        let dir = tempfile::tempdir().map_err(|e| OptimizeError::Io {
            path: std::env::temp_dir().display().to_string(),
            reason: e.to_string(),
        })?;
        let path = dir.path().join("model.onnx");
        graph::save(model, &path)?;
        self.open_file(&path, threads)
    }
}

pub fn run(session: &mut dyn Session, inputs: &[Tensor]) -> Result<Vec<Tensor>, OptimizeError> {
    session
        .run(inputs)
        .map_err(|e| OptimizeError::Runtime(e.to_string()))
}

/// The FP32 values of an output, or an error naming it.
pub fn floats(t: &Tensor, name: &str) -> Result<Vec<f32>, OptimizeError> {
    t.to_vec::<f32>()
        .ok_or_else(|| OptimizeError::Runtime(format!("'{name}' is not an FP32 tensor")))
}
