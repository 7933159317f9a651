//! The native half of the `infera` Python package: the in-process server (the same
//! repository, scheduler and runtimes as `infera serve`), the background HTTP/gRPC server and
//! the command line. The Python half (`python/infera`) turns NumPy arrays into the raw
//! buffers taken here and back.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use infera_core::error::{ErrorKind, ServeError};
use infera_core::request::{InferRequest, InputTensor, RequestedOutput};
use infera_core::tensor::{Tensor, TensorData};
use infera_core::{DataType, InferenceServer};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

create_exception!(
    _infera,
    InferaError,
    PyException,
    "An error from infera, with the server's message."
);
create_exception!(
    _infera,
    NotFoundError,
    InferaError,
    "No such model, version or tensor (HTTP 404)."
);
create_exception!(
    _infera,
    InvalidInputError,
    InferaError,
    "The request is wrong: a missing input, a wrong shape or type, a bad image (HTTP 400)."
);
create_exception!(
    _infera,
    UnavailableError,
    InferaError,
    "The model is not ready, or its queue is full (HTTP 503 / 429)."
);

fn py_err(e: ServeError) -> PyErr {
    match e.kind {
        ErrorKind::NotFound => NotFoundError::new_err(e.message),
        ErrorKind::InvalidArgument | ErrorKind::TooLarge | ErrorKind::UnsupportedMediaType => {
            InvalidInputError::new_err(e.message)
        }
        ErrorKind::Unavailable | ErrorKind::QueueFull => UnavailableError::new_err(e.message),
        _ => InferaError::new_err(e.message),
    }
}

fn any_err(e: anyhow::Error) -> PyErr {
    InferaError::new_err(format!("{e:#}"))
}

/// Requests from Python threads wait here with the GIL released; the models run on the
/// scheduler's own threads, so two I/O workers are plenty.
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("infera-py")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| InferaError::new_err(format!("cannot start the runtime: {e}")))
}

/// An in-process server holding one model (and the models its ensemble steps use).
#[pyclass(frozen, module = "infera._infera")]
struct Engine {
    server: Arc<InferenceServer>,
}

/// `(name, datatype, shape)` of a model's input or output.
type TensorSpec = (String, String, Vec<i64>);
/// `(name, versions, platform, inputs, outputs)`.
type Metadata = (
    String,
    Vec<String>,
    String,
    Vec<TensorSpec>,
    Vec<TensorSpec>,
);
/// `(name, datatype, shape, data)`: raw little-endian bytes, or a list of bytes for BYTES.
type WireTensor<'py> = (String, String, Vec<usize>, Bound<'py, PyAny>);

fn specs(v: &[infera_core::request::TensorMetadata]) -> Vec<TensorSpec> {
    v.iter()
        .map(|t| (t.name.clone(), t.datatype.clone(), t.shape.clone()))
        .collect()
}

fn tensor_from_py(dtype: &str, shape: Vec<usize>, data: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let dt = DataType::parse(dtype)
        .ok_or_else(|| InvalidInputError::new_err(format!("unknown data type '{dtype}'")))?;
    let tensor = if dt == DataType::Bytes {
        let list = data.cast::<PyList>().map_err(|_| {
            InvalidInputError::new_err("a BYTES tensor is given as a list of bytes")
        })?;
        let mut items = Vec::with_capacity(list.len());
        for item in list.iter() {
            let b = item
                .cast::<PyBytes>()
                .map_err(|_| InvalidInputError::new_err("a BYTES tensor holds bytes objects"))?;
            items.push(Bytes::copy_from_slice(b.as_bytes()));
        }
        Tensor::from_strings(shape, items)
    } else {
        let b = data
            .cast::<PyBytes>()
            .map_err(|_| InvalidInputError::new_err("tensor data is given as bytes"))?;
        Tensor::from_raw(dt, shape, Bytes::copy_from_slice(b.as_bytes()))
    };
    tensor.map_err(|e| InvalidInputError::new_err(e.to_string()))
}

fn tensor_to_py<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyAny>> {
    Ok(match &t.data {
        TensorData::Raw(raw) => PyBytes::new(py, raw).into_any(),
        TensorData::Strings(items) => {
            PyList::new(py, items.iter().map(|b| PyBytes::new(py, b)))?.into_any()
        }
    })
}

#[pymethods]
impl Engine {
    /// `(name, versions, platform, inputs, outputs)`; each tensor is `(name, datatype, shape)`.
    #[pyo3(signature = (model, version=None))]
    fn metadata(&self, model: &str, version: Option<i64>) -> PyResult<Metadata> {
        let m = self.server.model_metadata(model, version).map_err(py_err)?;
        Ok((
            m.name,
            m.versions,
            m.platform,
            specs(&m.inputs),
            specs(&m.outputs),
        ))
    }

    /// Runs one request: `inputs` are `(name, datatype, shape, data)` with `data` the raw
    /// little-endian bytes (or a list of bytes for BYTES); outputs come back the same way.
    /// The GIL is released while the request waits, so threads batch together.
    #[pyo3(signature = (model, inputs, outputs=None, version=None))]
    fn infer<'py>(
        &self,
        py: Python<'py>,
        model: &str,
        inputs: Vec<WireTensor<'py>>,
        outputs: Option<Vec<String>>,
        version: Option<i64>,
    ) -> PyResult<Vec<WireTensor<'py>>> {
        let mut tensors = Vec::with_capacity(inputs.len());
        for (name, dtype, shape, data) in inputs {
            tensors.push(InputTensor {
                name,
                tensor: tensor_from_py(&dtype, shape, &data)?,
            });
        }
        let req = InferRequest {
            model: model.to_string(),
            version,
            id: String::new(),
            inputs: tensors,
            outputs: outputs
                .unwrap_or_default()
                .into_iter()
                .map(|name| RequestedOutput {
                    name,
                    classification: None,
                })
                .collect(),
            priority: 0,
            timeout: None,
            routing_key: None,
        };
        let rt = runtime()?;
        let server = self.server.clone();
        let response = py
            .detach(move || rt.block_on(server.infer(req)))
            .map_err(py_err)?;
        response
            .outputs
            .iter()
            .map(|o| {
                Ok((
                    o.name.clone(),
                    o.tensor.dtype.as_str().to_string(),
                    o.tensor.shape.clone(),
                    tensor_to_py(py, &o.tensor)?,
                ))
            })
            .collect()
    }

    /// `(inference_count, execution_count)` of the model's loaded versions: requests served
    /// and model runs (fewer runs than requests: requests were batched together).
    fn statistics(&self, model: &str) -> PyResult<(u64, u64)> {
        let stats = self.server.statistics(model, None).map_err(py_err)?;
        Ok(stats.iter().fold((0, 0), |(i, e), v| {
            (i + v.stats.inference_count, e + v.stats.execution_count)
        }))
    }

    /// Classifies encoded images (each on its own request, batched by the scheduler) and
    /// returns `/predict`'s answer for each.
    #[pyo3(signature = (model, images, version=None))]
    fn predict_images<'py>(
        &self,
        py: Python<'py>,
        model: &str,
        images: Vec<Bound<'py, PyBytes>>,
        version: Option<i64>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let images: Vec<Bytes> = images
            .iter()
            .map(|b| Bytes::copy_from_slice(b.as_bytes()))
            .collect();
        let rt = runtime()?;
        let server = self.server.clone();
        let name = model.to_string();
        let results = py.detach(move || {
            rt.block_on(futures::future::join_all(images.into_iter().map(|img| {
                let server = server.clone();
                let name = name.clone();
                async move {
                    let start = std::time::Instant::now();
                    let p = server.classify_image(&name, version, img, 0).await;
                    (p, start.elapsed().as_secs_f64() * 1e3)
                }
            })))
        });
        let mut out = Vec::with_capacity(results.len());
        for (i, (p, ms)) in results.into_iter().enumerate() {
            let p = p.map_err(|e| {
                let e = py_err(e);
                let msg = format!("image {i}: {}", e.value(py));
                match () {
                    _ if e.is_instance_of::<NotFoundError>(py) => NotFoundError::new_err(msg),
                    _ if e.is_instance_of::<InvalidInputError>(py) => {
                        InvalidInputError::new_err(msg)
                    }
                    _ if e.is_instance_of::<UnavailableError>(py) => UnavailableError::new_err(msg),
                    _ => InferaError::new_err(msg),
                }
            })?;
            let (idx, conf) = p.best();
            let d = PyDict::new(py);
            d.set_item("predicted_class", idx)?;
            d.set_item("predicted_label", p.labels.get(idx))?;
            d.set_item("confidence", conf)?;
            let probs = PyDict::new(py);
            for (l, v) in p.labels.iter().zip(&p.probabilities) {
                probs.set_item(l, v)?;
            }
            d.set_item("probabilities", probs)?;
            d.set_item("model", model)?;
            d.set_item("latency_ms", ms)?;
            out.push(d);
        }
        Ok(out)
    }
}

/// Loads `model` (and its ensemble steps) from `repository` (None: the built-in examples).
#[pyfunction]
#[pyo3(signature = (model, repository=None, onnxruntime_lib=None))]
fn open_model(
    py: Python<'_>,
    model: &str,
    repository: Option<PathBuf>,
    onnxruntime_lib: Option<PathBuf>,
) -> PyResult<Engine> {
    let server = py
        .detach(|| infera::open_model(repository.as_deref(), onnxruntime_lib.as_deref(), model))
        .map_err(|e| {
            let msg = format!("{e:#}");
            if msg.contains("no folder") || msg.contains("not found") {
                NotFoundError::new_err(msg)
            } else {
                InferaError::new_err(msg)
            }
        })?;
    Ok(Engine { server })
}

/// A server started by `serve`: HTTP, gRPC and metrics on their ports until `stop`.
#[pyclass(frozen, module = "infera._infera")]
struct ServerHandle {
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<anyhow::Result<()>>>>,
}

#[pymethods]
impl ServerHandle {
    /// Whether the server thread has ended (it failed to start, or it stopped).
    fn finished(&self) -> bool {
        self.thread
            .lock()
            .map(|t| t.as_ref().is_none_or(|t| t.is_finished()))
            .unwrap_or(true)
    }

    /// Asks the server to stop (drains in-flight requests) and waits for it; raises the
    /// server's error if it ended with one.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(tx) = self.stop.lock().ok().and_then(|mut s| s.take()) {
            let _ = tx.send(());
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            match py.detach(|| t.join()) {
                Ok(r) => r.map_err(any_err)?,
                Err(_) => return Err(InferaError::new_err("the server thread panicked")),
            }
        }
        Ok(())
    }
}

/// Starts `infera serve` with these flags (e.g. `["--http-port", "8000"]`) on a background
/// thread of this process.
#[pyfunction]
fn serve(flags: Vec<String>) -> PyResult<ServerHandle> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("infera-serve".into())
        .spawn(move || {
            infera::serve_until(flags, async move {
                let _ = rx.await;
            })
        })
        .map_err(|e| InferaError::new_err(format!("cannot start the server thread: {e}")))?;
    Ok(ServerHandle {
        stop: Mutex::new(Some(tx)),
        thread: Mutex::new(Some(thread)),
    })
}

/// Runs an `infera` command line in this process (`argv[0]` is the program name) and
/// returns its exit status, as the `infera` program would (the `infera` console script).
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    i32::from(py.detach(|| infera::cli_main(argv)))
}

/// Runs a command and raises its error (for `Model.predict_folder`).
#[pyfunction]
fn run_command(py: Python<'_>, argv: Vec<String>) -> PyResult<()> {
    py.detach(|| infera::run_command(argv)).map_err(any_err)
}

#[pymodule]
fn _infera(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("InferaError", py.get_type::<InferaError>())?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add("InvalidInputError", py.get_type::<InvalidInputError>())?;
    m.add("UnavailableError", py.get_type::<UnavailableError>())?;
    m.add_class::<Engine>()?;
    m.add_class::<ServerHandle>()?;
    m.add_function(wrap_pyfunction!(open_model, m)?)?;
    m.add_function(wrap_pyfunction!(serve, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(run_command, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
