//! Reading, writing and editing ONNX graphs (the protobuf types come from tract-onnx).

use std::collections::{HashMap, HashSet};
use std::path::Path;

pub use infera_proto::onnx as pb;
use infera_proto::onnx::attribute_proto::AttributeType;
use infera_proto::onnx::tensor_proto::DataType;
use infera_proto::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, TypeProto, ValueInfoProto,
};
use prost::Message;

use crate::OptimizeError;

pub fn load(path: &Path) -> Result<ModelProto, OptimizeError> {
    let bytes = std::fs::read(path).map_err(|e| OptimizeError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let model = ModelProto::decode(bytes.as_slice()).map_err(|e| OptimizeError::Model {
        path: path.display().to_string(),
        reason: format!("not an ONNX model: {e}"),
    })?;
    if model.graph.is_none() {
        return Err(OptimizeError::Model {
            path: path.display().to_string(),
            reason: "not an ONNX model: it has no graph".into(),
        });
    }
    Ok(model)
}

pub fn save(model: &ModelProto, path: &Path) -> Result<u64, OptimizeError> {
    let bytes = model.encode_to_vec();
    let io = |e: std::io::Error| OptimizeError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // A failed write or a crash never leaves half a model.
    infera_core::durable::write_atomic(path, &bytes).map_err(|e| OptimizeError::Io {
        path: e.path.display().to_string(),
        reason: format!("{}: {}", e.action, e.source),
    })?;
    Ok(bytes.len() as u64)
}

pub fn graph(model: &ModelProto) -> &GraphProto {
    model.graph.as_ref().expect("checked by load")
}

/// The default-domain opset the model was exported with.
pub fn opset(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(0)
}

pub fn element_size(data_type: i32) -> usize {
    match DataType::try_from(data_type).unwrap_or(DataType::Undefined) {
        DataType::Float | DataType::Int32 | DataType::Uint32 => 4,
        DataType::Double | DataType::Int64 | DataType::Uint64 => 8,
        DataType::Float16 | DataType::Bfloat16 | DataType::Int16 | DataType::Uint16 => 2,
        _ => 1,
    }
}

pub fn element_count(t: &TensorProto) -> u64 {
    t.dims.iter().map(|&d| d.max(0) as u64).product()
}

/// The values of an FP32 tensor, stored either as `raw_data` or `float_data`.
pub fn floats(t: &TensorProto) -> Result<Vec<f32>, OptimizeError> {
    if t.data_type != DataType::Float as i32 {
        return Err(OptimizeError::Unsupported(format!(
            "tensor '{}' is not FP32 (data type {})",
            t.name, t.data_type
        )));
    }
    if t.data_location == Some(1) {
        return Err(OptimizeError::Unsupported(format!(
            "tensor '{}' is stored outside the model file (external data)",
            t.name
        )));
    }
    let v: Vec<f32> = if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    if v.len() as u64 != element_count(t) {
        return Err(OptimizeError::Unsupported(format!(
            "tensor '{}' holds {} values for dims {:?}",
            t.name,
            v.len(),
            t.dims
        )));
    }
    Ok(v)
}

fn raw(name: &str, dims: &[i64], data_type: DataType, raw_data: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type as i32,
        raw_data,
        ..Default::default()
    }
}

pub fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    raw(
        name,
        dims,
        DataType::Float,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

pub fn i8_tensor(name: &str, dims: &[i64], v: &[i8]) -> TensorProto {
    raw(
        name,
        dims,
        DataType::Int8,
        v.iter().map(|&x| x as u8).collect(),
    )
}

pub fn u8_tensor(name: &str, dims: &[i64], v: &[u8]) -> TensorProto {
    raw(name, dims, DataType::Uint8, v.to_vec())
}

pub fn i32_tensor(name: &str, dims: &[i64], v: &[i32]) -> TensorProto {
    raw(
        name,
        dims,
        DataType::Int32,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: name.into(),
        op_type: op.into(),
        ..Default::default()
    }
}

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

pub fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

pub fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).map(|a| a.i)
}

pub fn attr_f(node: &NodeProto, name: &str) -> Option<f32> {
    attr(node, name).map(|a| a.f)
}

/// A tensor-typed value (element type only, any shape): what extra graph outputs need.
pub fn value_info(name: &str, data_type: DataType) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: data_type as i32,
                shape: None,
            })),
        }),
        doc_string: String::new(),
    }
}

/// A value of any type and shape (ONNX Runtime infers them), for exposing intermediates.
pub fn untyped_value(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        ..Default::default()
    }
}

/// The declared dims of a value (`None` for a symbolic or missing dimension).
pub fn dims(v: &ValueInfoProto) -> Option<Vec<Option<i64>>> {
    let pb::type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
    Some(
        t.shape
            .as_ref()?
            .dim
            .iter()
            .map(|d| match d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => Some(v),
                _ => None,
            })
            .collect(),
    )
}

/// Graph inputs that are not initializers (older exporters list weights as inputs too).
pub fn real_inputs(g: &GraphProto) -> Vec<&ValueInfoProto> {
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    g.input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .collect()
}

/// The model's one input (an image batch); models with several inputs are refused.
pub fn single_input(g: &GraphProto) -> Result<&ValueInfoProto, OptimizeError> {
    match real_inputs(g).as_slice() {
        [input] => Ok(*input),
        other => Err(OptimizeError::Unsupported(format!(
            "the model has {} inputs; this needs one image input",
            other.len()
        ))),
    }
}

pub fn initializer_index(g: &GraphProto) -> HashMap<String, usize> {
    g.initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect()
}

/// For each tensor name, the indices of the nodes that read it.
pub fn consumers(g: &GraphProto) -> HashMap<String, Vec<usize>> {
    let mut m: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for input in n.input.iter().filter(|s| !s.is_empty()) {
            let e = m.entry(input.clone()).or_default();
            if e.last() != Some(&i) {
                e.push(i);
            }
        }
    }
    m
}

pub fn producers(g: &GraphProto) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for o in &n.output {
            m.insert(o.clone(), i);
        }
    }
    m
}

pub fn is_graph_output(g: &GraphProto, name: &str) -> bool {
    g.output.iter().any(|o| o.name == name)
}

/// Replaces every read of `from` by `to`.
pub fn rename_input(g: &mut GraphProto, from: &str, to: &str) {
    for n in &mut g.node {
        for i in &mut n.input {
            if i == from {
                *i = to.to_string();
            }
        }
    }
}

/// A name not yet used by any tensor or node of the graph.
pub struct Names(HashSet<String>);

impl Names {
    pub fn of(g: &GraphProto) -> Names {
        let mut s = HashSet::new();
        for n in &g.node {
            s.extend(n.input.iter().cloned());
            s.extend(n.output.iter().cloned());
            s.insert(n.name.clone());
        }
        s.extend(g.initializer.iter().map(|t| t.name.clone()));
        s.extend(g.input.iter().map(|t| t.name.clone()));
        Names(s)
    }

    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.0.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.0.insert(name.clone());
        name
    }
}
