//! Triton's `model_warmup`: sample requests run through a freshly built model before it is
//! swapped in, so the first client requests do not pay for lazy initialisation, and a model
//! that cannot run them never replaces one that serves.

use std::path::Path;

use bytes::Bytes;
use infera_proto::inference::model_warmup::Input as WarmupInput;
use infera_proto::inference::model_warmup::input::InputDataType;

use super::files;
use super::model::{Model, Runner};
use crate::config::limits::MAX_WARMUP_BYTES;
use crate::datatype::DataType;
use crate::error::{ServeError, ServeResult};
use crate::request::InputTensor;
use crate::server::prepare;
use crate::tensor::Tensor;

/// Runs every warm-up sample on every version, `count` times per instance. Blocking.
pub fn warm(model: &Model, dir: &Path, instances: usize) -> ServeResult<()> {
    for (i, w) in model.config.model_warmup.iter().enumerate() {
        let fail = |m: String| {
            ServeError::invalid(format!(
                "model '{}': model_warmup[{i}] '{}': {m}",
                model.name, w.name
            ))
        };
        let batch = (w.batch_size.max(1) as usize).min(model.max_batch_size().max(1));
        let mut inputs = Vec::with_capacity(model.inputs.len());
        for io in &model.inputs {
            let spec = w
                .inputs
                .get(&io.name)
                .ok_or_else(|| fail(format!("gives no data for input '{}'", io.name)))?;
            let tensor = sample(spec, io.dtype, batch, model.max_batch_size() > 0, dir)
                .map_err(|m| fail(format!("input '{}': {m}", io.name)))?;
            inputs.push(InputTensor {
                name: io.name.clone(),
                tensor,
            });
        }
        for version in model.versions.values() {
            let Runner::Scheduler(scheduler) = &version.runner else {
                continue;
            };
            let mut waiting = Vec::new();
            for _ in 0..(w.count.max(1) as usize) * instances.max(1) {
                let (job, _) =
                    prepare(model, inputs.clone(), 0, None).map_err(|e| fail(e.message))?;
                waiting.push(scheduler.submit(job).map_err(|e| fail(e.message))?);
            }
            for rx in waiting {
                rx.blocking_recv()
                    .map_err(|_| fail("the model worker stopped".into()))?
                    .map_err(|e| fail(e.message))?;
            }
        }
    }
    Ok(())
}

fn sample(
    spec: &WarmupInput,
    dtype: DataType,
    batch: usize,
    batched: bool,
    dir: &Path,
) -> Result<Tensor, String> {
    let want = infera_proto::inference::DataType::try_from(spec.data_type)
        .ok()
        .and_then(DataType::from_config);
    if want != Some(dtype) {
        return Err(format!(
            "data_type must be the input's, {}",
            dtype.to_config().as_str_name()
        ));
    }
    let mut shape: Vec<usize> = batched.then_some(batch).into_iter().collect();
    shape.extend(spec.dims.iter().map(|&d| d.max(1) as usize));
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .unwrap_or(usize::MAX);
    let size = dtype.size();
    if n.saturating_mul(size.unwrap_or(16)) > MAX_WARMUP_BYTES {
        return Err(format!(
            "shape {shape:?} is over the limit of {MAX_WARMUP_BYTES} bytes for a warm-up sample"
        ));
    }
    match &spec.input_data_type {
        Some(InputDataType::InputDataFile(name)) => {
            // Triton keeps warm-up files in the model's `warmup/` folder.
            let path = files::confined(dir, &format!("warmup/{name}")).map_err(|r| r.0)?;
            let data = files::read_bounded(&path).map_err(|e| format!("'{name}': {e}"))?;
            match size {
                None => Tensor::from_strings(shape, vec![Bytes::from(data); n])
                    .map_err(|e| e.to_string()),
                Some(s) => {
                    Tensor::from_raw(dtype, shape.clone(), Bytes::from(data)).map_err(|_| {
                        format!(
                            "'{name}' must hold exactly {} bytes for shape {shape:?}",
                            n * s
                        )
                    })
                }
            }
        }
        Some(InputDataType::RandomData(true)) => match size {
            None => Tensor::from_strings(shape, vec![Bytes::from_static(b"0"); n])
                .map_err(|e| e.to_string()),
            Some(s) => {
                let mut seed = 0x9E37_79B9_7F4A_7C15u64;
                let raw: Vec<u8> = match dtype {
                    DataType::F32 => (0..n)
                        .flat_map(|_| (unit(&mut seed) as f32).to_le_bytes())
                        .collect(),
                    DataType::F64 => (0..n).flat_map(|_| unit(&mut seed).to_le_bytes()).collect(),
                    DataType::F16 => (0..n)
                        .flat_map(|_| half::f16::from_f64(unit(&mut seed)).to_le_bytes())
                        .collect(),
                    DataType::Bf16 => (0..n)
                        .flat_map(|_| half::bf16::from_f64(unit(&mut seed)).to_le_bytes())
                        .collect(),
                    DataType::Bool => (0..n).map(|_| (next(&mut seed) & 1) as u8).collect(),
                    _ => (0..n * s).map(|_| (next(&mut seed) % 100) as u8).collect(),
                };
                Tensor::from_raw(dtype, shape, Bytes::from(raw)).map_err(|e| e.to_string())
            }
        },
        _ => match size {
            None => Tensor::from_strings(shape, vec![Bytes::from_static(b"0"); n])
                .map_err(|e| e.to_string()),
            Some(s) => Tensor::from_raw(dtype, shape, Bytes::from(vec![0u8; n * s]))
                .map_err(|e| e.to_string()),
        },
    }
}

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn unit(state: &mut u64) -> f64 {
    (next(state) >> 11) as f64 / (1u64 << 53) as f64
}
