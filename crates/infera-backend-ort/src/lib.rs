//! ONNX Runtime backend. libonnxruntime is loaded at run time (`load-dynamic`), so the
//! binary builds without it and falls back to another backend when it is missing.

use std::path::{Path, PathBuf};

use infera_core::DataType;
use infera_core::backend::{
    Backend, BackendError, InlineRuns, IoSpec, LoadOptions, Session, Signature,
};
use infera_core::tensor::{Tensor, TensorData};
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, TensorElementType, ValueType};

mod discover;
pub use discover::find_library;

/// The variable with which ONNX Runtime's official Linux and macOS builds (the PyPI wheels of
/// 2026, e.g. 1.31) turn their telemetry off. Left on, the library keeps a device id and an event database under
/// `~/.cache/Microsoft/DeveloperTools`, runs an uploader thread and resolves Microsoft's
/// collector, from every process that loads it: not what anyone expects of a model server.
pub const TELEMETRY_OPT_OUT_VAR: &str = "ORT_DISABLE_TELEMETRY";

/// Turns ONNX Runtime's telemetry off for this process, unless the user set
/// [`TELEMETRY_OPT_OUT_VAR`] themselves (`ORT_DISABLE_TELEMETRY=0` keeps it on). ONNX Runtime
/// reads the variable once, when it initializes, so this must run before the library loads.
///
/// # Safety
/// No other thread may exist yet: it sets an environment variable (see [`std::env::set_var`]).
/// Call it first thing in `main`.
pub unsafe fn opt_out_of_telemetry() {
    if std::env::var_os(TELEMETRY_OPT_OUT_VAR).is_none() {
        // SAFETY: the caller guarantees that this process has no other thread yet.
        unsafe { std::env::set_var(TELEMETRY_OPT_OUT_VAR, "1") };
    }
}

pub struct OrtBackend {
    env: ort::environment::Environment,
    library: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum OrtInitError {
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Load { path: String, reason: String },
}

impl OrtBackend {
    /// Loads libonnxruntime from `library` (see [`find_library`]). ONNX Runtime allows one
    /// environment per process: later backends (a second in-process server, e.g. from the
    /// Python package) share the first one's, from the same library.
    pub fn new(library: &Path) -> Result<OrtBackend, OrtInitError> {
        static LOADED: std::sync::Mutex<Option<(PathBuf, ort::environment::Environment)>> =
            std::sync::Mutex::new(None);
        let fail = |reason: String| OrtInitError::Load {
            path: library.display().to_string(),
            reason,
        };
        let mut loaded = LOADED
            .lock()
            .map_err(|_| fail("an earlier load panicked".into()))?;
        if let Some((first, env)) = loaded.as_ref() {
            if first != library {
                return Err(fail(format!(
                    "ONNX Runtime is already loaded from {} in this process",
                    first.display()
                )));
            }
            return Ok(OrtBackend {
                env: env.clone(),
                library: library.to_path_buf(),
            });
        }
        let env = ort::init_from(library)
            .map_err(|e| fail(e.to_string()))?
            .with_name("infera")
            .build()
            .map_err(|e| fail(e.to_string()))?;
        *loaded = Some((library.to_path_buf(), env.clone()));
        Ok(OrtBackend {
            env,
            library: library.to_path_buf(),
        })
    }

    pub fn library(&self) -> &Path {
        &self.library
    }
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    /// Many served models (tabular ones, small CNNs) run in microseconds, less than the
    /// hand-off to a worker thread costs; the scheduler measures which ones.
    fn inline_runs(&self) -> InlineRuns {
        InlineRuns::WhenCheap
    }

    fn load(&self, model_file: &Path, o: &LoadOptions) -> Result<Box<dyn Session>, BackendError> {
        self.open(model_file, Model::File(model_file), o)
    }

    fn load_bytes(
        &self,
        bytes: &[u8],
        name: &Path,
        o: &LoadOptions,
    ) -> Result<Box<dyn Session>, BackendError> {
        self.open(name, Model::Memory(bytes), o)
    }
}

/// Where ONNX Runtime reads the model from.
enum Model<'a> {
    File(&'a Path),
    /// Decrypted in memory; ORT copies what it needs.
    Memory(&'a [u8]),
}

impl OrtBackend {
    fn open(
        &self,
        model_file: &Path,
        model: Model<'_>,
        o: &LoadOptions,
    ) -> Result<Box<dyn Session>, BackendError> {
        let fail = |reason: String| BackendError::Load {
            path: model_file.display().to_string(),
            reason,
        };
        let opt_level = match o
            .parameters
            .get("graph_optimization_level")
            .map(String::as_str)
        {
            Some("0") | Some("disable") => GraphOptimizationLevel::Disable,
            Some("1") | Some("basic") => GraphOptimizationLevel::Level1,
            Some("2") | Some("extended") => GraphOptimizationLevel::Level2,
            _ => GraphOptimizationLevel::All,
        };
        let mut builder = ort::session::Session::builder(&self.env)
            .map_err(|e| fail(e.to_string()))?
            .with_optimization_level(opt_level)
            .map_err(|e| fail(e.to_string()))?
            .with_intra_threads(o.intra_op_threads.max(1))
            .map_err(|e| fail(e.to_string()))?
            .with_inter_threads(o.inter_op_threads.max(1))
            .map_err(|e| fail(e.to_string()))?
            // Spinning threads of several sessions fight over the same cores (p99 4.3 ms -> 0.16 ms off).
            .with_intra_op_spinning(false)
            .map_err(|e| fail(e.to_string()))?
            .with_inter_op_spinning(false)
            .map_err(|e| fail(e.to_string()))?;
        let session = match model {
            Model::File(path) => builder.commit_from_file(path),
            Model::Memory(bytes) => builder.commit_from_memory(bytes),
        }
        .map_err(|e| fail(e.to_string()))?;
        let spec = |o: &ort::value::Outlet| -> Result<IoSpec, BackendError> {
            match o.dtype() {
                ValueType::Tensor { ty, shape, .. } => Ok(IoSpec {
                    name: o.name().to_string(),
                    dtype: from_ort(*ty).ok_or_else(|| {
                        fail(format!(
                            "'{}' has element type {ty:?}, which infera cannot serve",
                            o.name()
                        ))
                    })?,
                    shape: shape.iter().copied().collect(),
                }),
                other => Err(fail(format!(
                    "'{}' is a {other:?}, not a tensor; export classifiers with zipmap disabled",
                    o.name()
                ))),
            }
        };
        let signature = Signature {
            inputs: session
                .inputs()
                .iter()
                .map(spec)
                .collect::<Result<_, _>>()?,
            outputs: session
                .outputs()
                .iter()
                .map(spec)
                .collect::<Result<_, _>>()?,
        };
        Ok(Box::new(OrtSession { session, signature }))
    }
}

struct OrtSession {
    session: ort::session::Session,
    signature: Signature,
}

impl Session for OrtSession {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let values: Vec<(String, DynValue)> = self
            .signature
            .inputs
            .iter()
            .zip(inputs)
            .map(|(spec, t)| Ok((spec.name.clone(), to_ort(t)?)))
            .collect::<Result<_, BackendError>>()?;
        let outputs = self
            .session
            .run(values)
            .map_err(|e| BackendError::Run(format!("ONNX Runtime: {e}")))?;
        let mut result = Vec::with_capacity(self.signature.outputs.len());
        for spec in &self.signature.outputs {
            let v = outputs.get(spec.name.as_str()).ok_or_else(|| {
                BackendError::Run(format!("ONNX Runtime returned no output '{}'", spec.name))
            })?;
            result.push(from_ort_value(v, spec.dtype)?);
        }
        Ok(result)
    }

    fn fits_inline(&self, inputs: &[Tensor]) -> bool {
        inputs.iter().map(Tensor::byte_len).sum::<usize>() <= MAX_INLINE_INPUT_BYTES
    }
}

/// Inputs up to this size may run on the caller's thread (a batch of a few 28×28 images, a
/// few hundred rows of tabular features); whether the model is cheap enough is measured.
const MAX_INLINE_INPUT_BYTES: usize = 64 << 10;

fn from_ort(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Float32 => DataType::F32,
        TensorElementType::Float64 => DataType::F64,
        TensorElementType::Float16 => DataType::F16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::Uint8 => DataType::U8,
        TensorElementType::Uint16 => DataType::U16,
        TensorElementType::Uint32 => DataType::U32,
        TensorElementType::Uint64 => DataType::U64,
        TensorElementType::Int8 => DataType::I8,
        TensorElementType::Int16 => DataType::I16,
        TensorElementType::Int32 => DataType::I32,
        TensorElementType::Int64 => DataType::I64,
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn run_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Run(format!("ONNX Runtime: {e}"))
}

fn to_ort(t: &Tensor) -> Result<DynValue, BackendError> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    fn typed<
        T: infera_core::tensor::Element
            + ort::value::PrimitiveTensorElementType
            + std::fmt::Debug
            + Clone,
    >(
        shape: Vec<i64>,
        t: &Tensor,
    ) -> Result<DynValue, BackendError> {
        let data = t
            .to_vec::<T>()
            .ok_or_else(|| BackendError::Run(format!("tensor is not {}", T::DTYPE)))?;
        ort::value::Tensor::from_array((shape, data))
            .map(|v| v.into_dyn())
            .map_err(run_err)
    }
    match t.dtype {
        DataType::F32 => typed::<f32>(shape, t),
        DataType::F64 => typed::<f64>(shape, t),
        DataType::F16 => typed::<half::f16>(shape, t),
        DataType::Bf16 => typed::<half::bf16>(shape, t),
        DataType::U8 => typed::<u8>(shape, t),
        DataType::U16 => typed::<u16>(shape, t),
        DataType::U32 => typed::<u32>(shape, t),
        DataType::U64 => typed::<u64>(shape, t),
        DataType::I8 => typed::<i8>(shape, t),
        DataType::I16 => typed::<i16>(shape, t),
        DataType::I32 => typed::<i32>(shape, t),
        DataType::I64 => typed::<i64>(shape, t),
        DataType::Bool => {
            let TensorData::Raw(b) = &t.data else {
                return Err(BackendError::Run("BOOL tensor without raw data".into()));
            };
            let data: Vec<bool> = b.iter().map(|&x| x != 0).collect();
            ort::value::Tensor::from_array((shape, data))
                .map(|v| v.into_dyn())
                .map_err(run_err)
        }
        DataType::Bytes => {
            let TensorData::Strings(s) = &t.data else {
                return Err(BackendError::Run("BYTES tensor without elements".into()));
            };
            let strings = s
                .iter()
                .map(|e| String::from_utf8(e.to_vec()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| BackendError::Run("ONNX string tensors must be UTF-8".into()))?;
            ort::value::Tensor::from_string_array((shape, strings.as_slice()))
                .map(|v| v.into_dyn())
                .map_err(run_err)
        }
    }
}

fn from_ort_value(v: &DynValue, dtype: DataType) -> Result<Tensor, BackendError> {
    fn typed<T: infera_core::tensor::Element + ort::value::PrimitiveTensorElementType>(
        v: &DynValue,
    ) -> Result<Tensor, BackendError> {
        let (shape, data) = v.try_extract_tensor::<T>().map_err(run_err)?;
        let shape = shape.iter().map(|&d| d.max(0) as usize).collect();
        Tensor::from_slice(shape, data).map_err(run_err)
    }
    match dtype {
        DataType::F32 => typed::<f32>(v),
        DataType::F64 => typed::<f64>(v),
        DataType::F16 => typed::<half::f16>(v),
        DataType::Bf16 => typed::<half::bf16>(v),
        DataType::U8 => typed::<u8>(v),
        DataType::U16 => typed::<u16>(v),
        DataType::U32 => typed::<u32>(v),
        DataType::U64 => typed::<u64>(v),
        DataType::I8 => typed::<i8>(v),
        DataType::I16 => typed::<i16>(v),
        DataType::I32 => typed::<i32>(v),
        DataType::I64 => typed::<i64>(v),
        DataType::Bool => {
            let (shape, data) = v.try_extract_tensor::<bool>().map_err(run_err)?;
            let shape = shape.iter().map(|&d| d.max(0) as usize).collect();
            let bytes: Vec<u8> = data.iter().map(|&b| u8::from(b)).collect();
            Tensor::from_slice(shape, &bytes)
                .map(|t| Tensor {
                    dtype: DataType::Bool,
                    ..t
                })
                .map_err(run_err)
        }
        DataType::Bytes => {
            let (shape, strings) = v.try_extract_strings().map_err(run_err)?;
            let shape = shape.iter().map(|&d| d.max(0) as usize).collect();
            Tensor::from_strings(shape, strings.into_iter().map(Into::into).collect())
                .map_err(run_err)
        }
    }
}
