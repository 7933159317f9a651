//! Our own ONNX exporter for our layer set (burn-onnx's export kept BatchNorm, auto-named
//! tensors and broke the model). The graph takes raw pixels `input` [N,1,28,28] FP32 0..255,
//! normalises them itself, has BatchNorm folded into the convolutions, a dynamic batch
//! dimension, and returns `logits` [N, classes]. Opset 17. With flip averaging the graph also
//! runs every image mirrored and returns the mean of both logits (test-time augmentation).

use anyhow::Context;
use burn::nn::Linear;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use infera_proto::onnx::{
    self as pb, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType,
    tensor_proto::DataType,
    tensor_shape_proto::{Dimension, dimension},
};
use prost::Message;

use crate::model::{Classifier, ConvBn, NORM_SCALE, NORM_SHIFT, Residual};

pub const OPSET: i64 = 17;
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "logits";

fn floats(t: Tensor<1>) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read weights: {e:?}"))
}

fn floats_nd<const D: usize>(t: Tensor<D>) -> anyhow::Result<Vec<f32>> {
    floats(t.flatten(0, D - 1))
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn dims_type(dims: &[Option<i64>], batch: &str) -> TypeProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v),
                None => dimension::Value::DimParam(batch.into()),
            }),
        })
        .collect();
    TypeProto {
        denotation: String::new(),
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
            elem_type: DataType::Float as i32,
            shape: Some(TensorShapeProto { dim }),
        })),
    }
}

#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Graph {
    fn constant(&mut self, name: &str, dims: &[i64], data: Vec<f32>) -> String {
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.into()
    }

    fn ints(&mut self, name: &str, data: &[i64]) -> String {
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: vec![data.len() as i64],
            data_type: DataType::Int64 as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.into()
    }

    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        let output = name.to_string();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: name.into(),
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
        output
    }

    /// Conv with its BatchNorm folded in: w' = w·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε).
    fn conv_bn(&mut self, name: &str, x: &str, layer: &ConvBn) -> anyhow::Result<String> {
        let conv = &layer.conv;
        let [out_c, in_c, kh, kw] = conv.weight.val().dims();
        let mut w = floats_nd(conv.weight.val())?;
        let mut b = match &conv.bias {
            Some(b) => floats(b.val())?,
            None => vec![0.0; out_c],
        };
        let bn = &layer.bn;
        let gamma = floats(bn.gamma.val())?;
        let beta = floats(bn.beta.val())?;
        let mean = floats(bn.running_mean.value())?;
        let var = floats(bn.running_var.value())?;
        let per_out = in_c * kh * kw;
        for o in 0..out_c {
            let s = gamma[o] / (var[o] + bn.epsilon as f32).sqrt();
            for v in &mut w[o * per_out..(o + 1) * per_out] {
                *v *= s;
            }
            b[o] = (b[o] - mean[o]) * s + beta[o];
        }
        let wn = self.constant(
            &format!("{name}.weight"),
            &[out_c as i64, in_c as i64, kh as i64, kw as i64],
            w,
        );
        let bname = self.constant(&format!("{name}.bias"), &[out_c as i64], b);
        let pads = match conv.padding {
            PaddingConfig2d::Explicit(top, left, bottom, right) => {
                [top as i64, left as i64, bottom as i64, right as i64]
            }
            PaddingConfig2d::Valid => [0; 4],
            PaddingConfig2d::Same => anyhow::bail!("{name}: 'same' padding is not exported"),
        };
        let to_i64 = |a: [usize; 2]| [a[0] as i64, a[1] as i64];
        Ok(self.node(
            "Conv",
            name,
            &[x, &wn, &bname],
            vec![
                attr_ints("kernel_shape", &[kh as i64, kw as i64]),
                attr_ints("strides", &to_i64(conv.stride)),
                attr_ints("dilations", &to_i64(conv.dilation)),
                attr_ints("pads", &pads),
                attr_int("group", conv.groups as i64),
            ],
        ))
    }

    fn relu(&mut self, name: &str, x: &str) -> String {
        self.node("Relu", name, &[x], vec![])
    }

    fn max_pool(&mut self, name: &str, x: &str) -> String {
        self.node(
            "MaxPool",
            name,
            &[x],
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("strides", &[2, 2]),
            ],
        )
    }

    /// burn keeps Linear weights as [in, out], which is Gemm's B without a transpose.
    fn linear(&mut self, name: &str, x: &str, layer: &Linear) -> anyhow::Result<String> {
        let [d_in, d_out] = layer.weight.val().dims();
        let w = floats_nd(layer.weight.val())?;
        let b = match &layer.bias {
            Some(b) => floats(b.val())?,
            None => vec![0.0; d_out],
        };
        let wn = self.constant(&format!("{name}.weight"), &[d_in as i64, d_out as i64], w);
        let bn = self.constant(&format!("{name}.bias"), &[d_out as i64], b);
        Ok(self.node("Gemm", name, &[x, &wn, &bn], vec![]))
    }

    fn residual(&mut self, name: &str, x: &str, block: &Residual) -> anyhow::Result<String> {
        let skip = match &block.shortcut {
            Some(s) => self.conv_bn(&format!("{name}.shortcut"), x, s)?,
            None => x.to_string(),
        };
        let y = self.conv_bn(&format!("{name}.first"), x, &block.first)?;
        let y = self.relu(&format!("{name}.first.relu"), &y);
        let y = self.conv_bn(&format!("{name}.second"), &y, &block.second)?;
        let y = self.node("Add", &format!("{name}.add"), &[&y, &skip], vec![]);
        Ok(self.relu(&format!("{name}.relu"), &y))
    }
}

/// The model as ONNX bytes. `side` is the input image side (28 for Fashion-MNIST). With
/// `flip_average`, the mirrored images go through the same layers in the same batch (one
/// session run, twice the work) and the two logits are averaged.
pub fn export(
    model: &Classifier,
    classes: usize,
    side: usize,
    doc: &str,
    flip_average: bool,
) -> anyhow::Result<Vec<u8>> {
    let mut g = Graph::default();
    let scale = g.constant("normalize.scale", &[], vec![NORM_SCALE]);
    let shift = g.constant("normalize.shift", &[], vec![NORM_SHIFT]);
    let x = g.node("Mul", "normalize.mul", &[INPUT, &scale], vec![]);
    let mut x = g.node("Add", "normalize", &[&x, &shift], vec![]);
    if flip_average {
        // Reverse the width axis: start at the last column, step -1 past the first.
        let starts = g.ints("flip.starts", &[-1]);
        let ends = g.ints("flip.ends", &[i64::MIN]);
        let axes = g.ints("flip.axes", &[3]);
        let steps = g.ints("flip.steps", &[-1]);
        let mirrored = g.node(
            "Slice",
            "flip",
            &[&x, &starts, &ends, &axes, &steps],
            vec![],
        );
        x = g.node(
            "Concat",
            "flip.batch",
            &[&x, &mirrored],
            vec![attr_int("axis", 0)],
        );
    }
    let last = match model {
        Classifier::Cnn(m) => {
            let x = g.conv_bn("block1", &x, &m.block1)?;
            let x = g.relu("block1.relu", &x);
            let x = g.max_pool("block1.pool", &x);
            let x = g.conv_bn("block2", &x, &m.block2)?;
            let x = g.relu("block2.relu", &x);
            let x = g.max_pool("block2.pool", &x);
            let x = g.node("Flatten", "flatten", &[&x], vec![attr_int("axis", 1)]);
            let x = g.linear("fc1", &x, &m.fc1)?;
            let x = g.relu("fc1.relu", &x);
            g.linear("fc2", &x, &m.fc2)?
        }
        Classifier::ResnetSmall(m) => {
            let x = g.conv_bn("stem", &x, &m.stem)?;
            let x = g.relu("stem.relu", &x);
            let x = g.residual("stage1", &x, &m.stage1)?;
            let x = g.residual("stage2", &x, &m.stage2)?;
            let x = g.residual("stage3", &x, &m.stage3)?;
            let x = g.node("GlobalAveragePool", "pool", &[&x], vec![]);
            let x = g.node("Flatten", "flatten", &[&x], vec![attr_int("axis", 1)]);
            g.linear("fc", &x, &m.fc)?
        }
    };
    let last = if flip_average {
        // [2N, C] → [2, N, C] → mean over the first axis.
        let shape = g.ints("flip.shape", &[2, -1, classes as i64]);
        let pairs = g.node("Reshape", "flip.pairs", &[&last, &shape], vec![]);
        g.node(
            "ReduceMean",
            "flip.mean",
            &[&pairs],
            vec![attr_ints("axes", &[0]), attr_int("keepdims", 0)],
        )
    } else {
        last
    };
    // The last node's output gets the public name.
    let node = g.nodes.last_mut().context("empty graph")?;
    debug_assert_eq!(node.output.first(), Some(&last));
    node.output = vec![OUTPUT.into()];
    let side = side as i64;
    let graph = GraphProto {
        node: g.nodes,
        name: "infera_classifier".into(),
        initializer: g.initializers,
        input: vec![ValueInfoProto {
            name: INPUT.into(),
            r#type: Some(dims_type(&[None, Some(1), Some(side), Some(side)], "N")),
            doc_string: "raw grayscale pixels, FP32 0..255".into(),
        }],
        output: vec![ValueInfoProto {
            name: OUTPUT.into(),
            r#type: Some(dims_type(&[None, Some(classes as i64)], "N")),
            doc_string: "class logits".into(),
        }],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "infera".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc.into(),
        graph: Some(graph),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;
    use infera_core::backend::{Backend, LoadOptions};

    use super::*;
    use crate::model::Architecture;

    /// Exports a model whose BatchNorm statistics are far from their initial values, runs the
    /// file in tract (independent of ONNX Runtime) and compares with burn's own forward.
    fn parity(arch: Architecture, flip_average: bool) {
        let device = Device::flex();
        device.seed(3);
        let ad = device.clone().autodiff();
        let model = arch.init(10, &ad);
        // Training-mode passes move the running mean / variance away from 0 / 1.
        for _ in 0..5 {
            let x = Tensor::<4>::random([8, 1, 28, 28], Distribution::Uniform(0.0, 255.0), &ad);
            let _ = model.forward(x);
        }
        let model = model.valid();
        let bytes = export(&model, 10, 28, "test", flip_average).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, &bytes).unwrap();
        let options = LoadOptions {
            intra_op_threads: 1,
            inter_op_threads: 1,
            parameters: Default::default(),
            model_dir: dir.path().to_path_buf(),
            max_batch_size: 0,
        };
        let mut session = infera_backend_tract::TractBackend
            .load(&path, &options)
            .unwrap();
        for batch in [1usize, 5] {
            let x = Tensor::<4>::random(
                [batch, 1, 28, 28],
                Distribution::Uniform(0.0, 255.0),
                &device,
            );
            let pixels: Vec<f32> = x.to_data().iter::<f32>().collect();
            let expected = if flip_average {
                (model.forward(x.clone()) + model.forward(x.flip([3]))).div_scalar(2.0)
            } else {
                model.forward(x)
            };
            let expected: Vec<f32> = expected.into_data().iter::<f32>().collect();
            let input =
                infera_core::tensor::Tensor::from_slice(vec![batch, 1, 28, 28], &pixels).unwrap();
            let out = session.run(&[input]).unwrap();
            assert_eq!(out[0].shape, vec![batch, 10]);
            let got: Vec<f32> = out[0].to_vec::<f32>().unwrap();
            let diff = got
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "max difference {diff}");
        }
        assert!(!bytes.windows(18).any(|w| w == b"BatchNormalization"));
    }

    #[test]
    fn cnn_export_matches_burn() {
        let arch = Architecture::Cnn {
            channels: [8, 16],
            hidden: 32,
            dropout: 0.5,
        };
        parity(arch.clone(), false);
        parity(arch, true);
    }

    #[test]
    fn resnet_export_matches_burn() {
        parity(
            Architecture::ResnetSmall {
                channels: [8, 16, 32],
                dropout: 0.2,
            },
            false,
        );
    }
}
