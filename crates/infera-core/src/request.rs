//! Protocol-neutral inference requests and responses: what every front-end translates to and from.

use std::time::Duration;

use crate::tensor::Tensor;

#[derive(Debug, Clone)]
pub struct InferRequest {
    pub model: String,
    /// `None` = the newest loaded version.
    pub version: Option<i64>,
    pub id: String,
    pub inputs: Vec<InputTensor>,
    /// Empty = every output, with default settings.
    pub outputs: Vec<RequestedOutput>,
    /// 0 = the model's default priority level; 1 is the highest.
    pub priority: usize,
    pub timeout: Option<Duration>,
    /// Pins a client to one variant of a routed model (A/B tests): the `routing_key`
    /// request parameter or the `X-Routing-Key` header.
    pub routing_key: Option<String>,
}

impl InferRequest {
    /// One input tensor in, one named output back (in-process callers: classify, evaluate).
    pub fn single(
        model: &str,
        version: Option<i64>,
        input: &str,
        tensor: Tensor,
        output: &str,
        priority: usize,
    ) -> InferRequest {
        InferRequest {
            model: model.to_string(),
            version,
            id: String::new(),
            inputs: vec![InputTensor {
                name: input.to_string(),
                tensor,
            }],
            outputs: vec![RequestedOutput {
                name: output.to_string(),
                classification: None,
            }],
            priority,
            timeout: None,
            routing_key: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct InputTensor {
    pub name: String,
    pub tensor: Tensor,
}

#[derive(Debug, Clone, Default)]
pub struct RequestedOutput {
    pub name: String,
    /// Triton's classification extension: return the top k as "score:index[:label]".
    pub classification: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub outputs: Vec<OutputTensor>,
}

#[derive(Debug, Clone)]
pub struct OutputTensor {
    pub name: String,
    pub tensor: Tensor,
}

/// Model metadata as `GET /v2/models/{m}` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// A row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    pub state: String,
    pub reason: String,
}
