//! ModelInferRequest / ModelInferResponse <-> core requests.

use std::time::Duration;

use bytes::Bytes;
use infera_core::request::{InferRequest, InferResponse, InputTensor, RequestedOutput};
use infera_core::{DataType, ServeError, Tensor};
use infera_proto::inference::infer_parameter::ParameterChoice;
use infera_proto::inference::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
    model_infer_response::InferOutputTensor,
};

fn int_param(p: Option<&InferParameter>, key: &str) -> Result<Option<u64>, ServeError> {
    match p.and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::Int64Param(v)) if *v >= 0 => Ok(Some(*v as u64)),
        Some(ParameterChoice::Uint64Param(v)) => Ok(Some(*v)),
        Some(other) => Err(ServeError::invalid(format!(
            "parameter '{key}' must be a non-negative integer, got {other:?}"
        ))),
    }
}

/// The longest routing key, as over HTTP.
pub const MAX_ROUTING_KEY: usize = 256;

/// A client's routing key: a string or an integer parameter.
fn key_param(p: Option<&InferParameter>) -> Result<Option<String>, ServeError> {
    let key = match p.and_then(|p| p.parameter_choice.as_ref()) {
        None => return Ok(None),
        Some(ParameterChoice::StringParam(s)) => s.clone(),
        Some(ParameterChoice::Int64Param(v)) => v.to_string(),
        Some(ParameterChoice::Uint64Param(v)) => v.to_string(),
        Some(other) => {
            return Err(ServeError::invalid(format!(
                "parameter 'routing_key' must be a string, got {other:?}"
            )));
        }
    };
    if key.len() > MAX_ROUTING_KEY {
        return Err(ServeError::invalid(format!(
            "parameter 'routing_key' is longer than {MAX_ROUTING_KEY} bytes"
        )));
    }
    Ok(Some(key))
}

/// The `x-routing-key` metadata, when it is a short printable value.
pub fn routing_key_metadata(m: &tonic::metadata::MetadataMap) -> Option<String> {
    m.get("x-routing-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= MAX_ROUTING_KEY)
        .map(str::to_string)
}

fn typed_contents(
    dtype: DataType,
    shape: Vec<usize>,
    c: &InferTensorContents,
) -> Result<Tensor, infera_core::tensor::TensorError> {
    match dtype {
        DataType::Bool => {
            let v: Vec<u8> = c.bool_contents.iter().map(|&b| u8::from(b)).collect();
            Tensor::from_raw(DataType::Bool, shape, Bytes::from(v))
        }
        DataType::I8 => Tensor::from_slice(
            shape,
            &c.int_contents.iter().map(|&x| x as i8).collect::<Vec<_>>(),
        ),
        DataType::I16 => Tensor::from_slice(
            shape,
            &c.int_contents.iter().map(|&x| x as i16).collect::<Vec<_>>(),
        ),
        DataType::I32 => Tensor::from_slice(shape, &c.int_contents),
        DataType::I64 => Tensor::from_slice(shape, &c.int64_contents),
        DataType::U8 => Tensor::from_slice(
            shape,
            &c.uint_contents.iter().map(|&x| x as u8).collect::<Vec<_>>(),
        ),
        DataType::U16 => Tensor::from_slice(
            shape,
            &c.uint_contents
                .iter()
                .map(|&x| x as u16)
                .collect::<Vec<_>>(),
        ),
        DataType::U32 => Tensor::from_slice(shape, &c.uint_contents),
        DataType::U64 => Tensor::from_slice(shape, &c.uint64_contents),
        DataType::F32 => Tensor::from_slice(shape, &c.fp32_contents),
        DataType::F64 => Tensor::from_slice(shape, &c.fp64_contents),
        DataType::Bytes => Tensor::from_strings(shape, c.bytes_contents.clone()),
        DataType::F16 | DataType::Bf16 => Err(infera_core::tensor::TensorError::Mismatch),
    }
}

pub fn from_proto_request(r: ModelInferRequest) -> Result<InferRequest, ServeError> {
    let version = if r.model_version.is_empty() {
        None
    } else {
        Some(r.model_version.parse::<i64>().map_err(|_| {
            ServeError::invalid(format!("version '{}' is not a number", r.model_version))
        })?)
    };
    if r.parameters.contains_key("sequence_id") {
        return Err(ServeError::unsupported(
            "sequence batching (sequence_id) is not supported",
        ));
    }
    let use_raw = !r.raw_input_contents.is_empty();
    if use_raw && r.raw_input_contents.len() != r.inputs.len() {
        return Err(ServeError::invalid(format!(
            "expected {} raw_input_contents (one per input), got {}",
            r.inputs.len(),
            r.raw_input_contents.len()
        )));
    }
    let mut raw = r.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for i in r.inputs {
        let dtype = DataType::parse(&i.datatype).ok_or_else(|| {
            ServeError::invalid(format!(
                "input '{}' has unknown datatype '{}'",
                i.name, i.datatype
            ))
        })?;
        if i.parameters.contains_key("shared_memory_region") {
            return Err(ServeError::unsupported(format!(
                "input '{}': shared memory is not supported",
                i.name
            )));
        }
        let shape = i
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                ServeError::invalid(format!(
                    "input '{}' has a negative dimension in shape {:?}",
                    i.name, i.shape
                ))
            })?;
        let tensor = match (raw.next(), &i.contents) {
            (Some(_), Some(_)) => Err(ServeError::invalid(format!(
                "input '{}' has both contents and raw_input_contents",
                i.name
            ))),
            (Some(bytes), None) => Tensor::from_raw(dtype, shape, bytes)
                .map_err(|e| ServeError::invalid(format!("input '{}': {e}", i.name))),
            (None, Some(c)) => typed_contents(dtype, shape, c).map_err(|e| match e {
                infera_core::tensor::TensorError::Mismatch => ServeError::invalid(format!(
                    "input '{}': {dtype} data must be sent in raw_input_contents",
                    i.name
                )),
                e => ServeError::invalid(format!("input '{}': {e}", i.name)),
            }),
            (None, None) => Err(ServeError::invalid(format!(
                "input '{}' has no data",
                i.name
            ))),
        }?;
        inputs.push(InputTensor {
            name: i.name,
            tensor,
        });
    }
    let mut outputs = Vec::with_capacity(r.outputs.len());
    for o in r.outputs {
        let classification =
            int_param(o.parameters.get("classification"), "classification")?.map(|k| k as usize);
        outputs.push(RequestedOutput {
            name: o.name,
            classification,
        });
    }
    Ok(InferRequest {
        model: r.model_name,
        version,
        id: r.id,
        inputs,
        outputs,
        // Clients never reach the scheduler's background lane (usize::MAX).
        priority: int_param(r.parameters.get("priority"), "priority")?
            .unwrap_or(0)
            .min(u64::from(u32::MAX)) as usize,
        timeout: int_param(r.parameters.get("timeout"), "timeout")?
            .filter(|&t| t > 0)
            .map(Duration::from_micros),
        routing_key: key_param(r.parameters.get("routing_key"))?,
    })
}

/// Outputs go in `raw_output_contents`: tritonclient decodes numeric outputs only from there.
pub fn to_proto_response(r: InferResponse) -> ModelInferResponse {
    let mut outputs = Vec::with_capacity(r.outputs.len());
    let mut raw = Vec::with_capacity(r.outputs.len());
    for o in r.outputs {
        outputs.push(InferOutputTensor {
            name: o.name,
            datatype: o.tensor.dtype.as_str().to_string(),
            shape: o.tensor.shape.iter().map(|&d| d as i64).collect(),
            parameters: Default::default(),
            contents: None,
        });
        raw.push(o.tensor.to_raw());
    }
    ModelInferResponse {
        model_name: r.model_name,
        model_version: r.model_version,
        id: r.id,
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}
