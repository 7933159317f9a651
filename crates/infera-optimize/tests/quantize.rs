//! Quantization and clean-up on tiny hand-built graphs: scales and integer values checked
//! against hand computation, outputs checked with ONNX Runtime.

use std::collections::HashMap;

use infera_core::tensor::Tensor;
use infera_optimize::graph::{self, pb};
use infera_optimize::quantize::{self, Mode, Options, activation_params, weight_params};
use infera_optimize::runtime::{self, Runtime};
use infera_optimize::{calibrate, clean};
use pb::tensor_proto::DataType;

/// ONNX Runtime allows one environment per process: the tests share it.
fn runtime() -> &'static Runtime {
    static RT: std::sync::OnceLock<Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        Runtime::new(None).expect(
            "these tests need ONNX Runtime: set ORT_DYLIB_PATH (scripts/test.sh does) or pip install onnxruntime==1.31.1",
        )
    })
}

fn io(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            denotation: String::new(),
                            value: Some(match d {
                                Some(v) => dimension::Value::DimValue(*v),
                                None => dimension::Value::DimParam("N".into()),
                            }),
                        })
                        .collect(),
                }),
            })),
        }),
        doc_string: String::new(),
    }
}

fn model(
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    input: pb::ValueInfoProto,
    output: pb::ValueInfoProto,
) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            name: "tiny".into(),
            node: nodes,
            initializer: inits,
            input: vec![input],
            output: vec![output],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// x [N,2] → Gemm(W1, b1) → Relu → Gemm(W2, b2) → y [N,1]. Nodes are named after their
/// outputs, as many exporters (and ours) do.
fn tiny_mlp() -> pb::ModelProto {
    model(
        vec![
            graph::node("Gemm", "h", &["x", "w1", "b1"], &["h"]),
            graph::node("Relu", "r", &["h"], &["r"]),
            graph::node("Gemm", "y", &["r", "w2", "b2"], &["y"]),
        ],
        vec![
            graph::f32_tensor("w1", &[2, 2], &[1.0, -0.5, 0.25, 2.0]),
            graph::f32_tensor("b1", &[2], &[0.1, -0.2]),
            graph::f32_tensor("w2", &[2, 1], &[0.5, -1.0]),
            graph::f32_tensor("b2", &[1], &[0.3]),
        ],
        io("x", &[None, Some(2)]),
        io("y", &[None, Some(1)]),
    )
}

fn options(mode: Mode, per_channel: bool, quantize_outputs: bool) -> Options {
    Options {
        mode,
        per_channel,
        quantize_outputs,
    }
}

fn init<'a>(m: &'a pb::ModelProto, name: &str) -> &'a pb::TensorProto {
    graph::graph(m)
        .initializer
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no initializer {name}"))
}

fn run(rt: &Runtime, m: &pb::ModelProto, x: &[f32], shape: Vec<usize>) -> Vec<f32> {
    let mut s = rt.open(m, 1).unwrap();
    let out = runtime::run(s.as_mut(), &[Tensor::from_slice(shape, x).unwrap()]).unwrap();
    out[0].to_vec::<f32>().unwrap()
}

#[test]
fn scale_and_zero_point_formulas() {
    // [-1, 3]: 4/255 per step, zero at round(1 / (4/255)) = round(63.75) = 64.
    let p = activation_params(-1.0, 3.0);
    assert!((p.scale - 4.0 / 255.0).abs() < 1e-9);
    assert_eq!(p.zero_point, 64);
    // A range that excludes 0 is widened to include it: [2, 5.1] -> [0, 5.1].
    let p = activation_params(2.0, 5.1);
    assert!((p.scale - 0.02).abs() < 1e-7);
    assert_eq!(p.zero_point, 0);
    // An empty range does not divide by zero.
    assert_eq!(activation_params(0.0, 0.0).scale, 1.0);
    // Weights: symmetric around 0, the largest magnitude maps to 64 (the reduced range).
    let w = weight_params(&[0.5, -0.64, 0.2]);
    assert!((w.scale - 0.01).abs() < 1e-9);
    assert_eq!(w.zero_point, 0);
    let q: Vec<i8> = [0.5f32, -0.64, 0.2, 0.9]
        .iter()
        .map(|&v| quantize::quantize_weight(v, w.scale))
        .collect();
    // Beyond the range (only possible with another tensor's scale) clamps to 64.
    assert_eq!(q, vec![50, -64, 20, 64]);
    // Half-way values round to even, like numpy's rint in ONNX Runtime's quantizer.
    assert_eq!(quantize::quantize_weight(0.025, 0.01), 2);
    assert_eq!(quantize::quantize_weight(0.035, 0.01), 4);
}

#[test]
fn static_quantization_of_a_tiny_model_gives_hand_computed_values() {
    let m = tiny_mlp();
    let opts = options(Mode::Static, false, false);
    let plan = quantize::plan(&m, &opts);
    // The ReLU folds into fc1; x and fc1's (ReLU'd) output are quantized, y stays FP32.
    assert_eq!(plan.activations, vec!["x".to_string(), "r".to_string()]);
    let ranges: HashMap<String, (f32, f32)> = [
        ("x".to_string(), (0.0, 2.55)),
        ("r".to_string(), (0.0, 5.1)),
    ]
    .into();
    let (q, summary) = quantize::quantize_static(&m, &plan, &ranges, &opts).unwrap();

    let x_scale = graph::floats(init(&q, "x_scale")).unwrap();
    assert!((x_scale[0] - 0.01).abs() < 1e-7);
    assert_eq!(init(&q, "x_zero_point").raw_data, vec![0u8]);
    let r_scale = graph::floats(init(&q, "r_scale")).unwrap();
    assert!((r_scale[0] - 0.02).abs() < 1e-7);
    // W1: max |w| = 2 -> scale 2/64; 1.0 -> 32, -0.5 -> -16, 0.25 -> 8, 2.0 -> 64.
    let w_scale = graph::floats(init(&q, "w1_scale")).unwrap()[0];
    assert!((w_scale - 2.0 / 64.0).abs() < 1e-7);
    let w1: Vec<i8> = init(&q, "w1_quantized")
        .raw_data
        .iter()
        .map(|&b| b as i8)
        .collect();
    assert_eq!(w1, vec![32, -16, 8, 64]);
    // b1 in INT32 with scale x_scale * w_scale = 0.01 * 2/64: 0.1 -> 320, -0.2 -> -640.
    let b1: Vec<i32> = init(&q, "b1_quantized")
        .raw_data
        .chunks(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(b1, vec![320, -640]);
    assert_eq!(summary.quantized_layers.len(), 2);
    // No ReLU left, and the graph output keeps its name.
    let g = graph::graph(&q);
    assert!(g.node.iter().all(|n| n.op_type != "Relu"));
    assert_eq!(g.output[0].name, "y");

    // ONNX Runtime runs it and agrees with FP32 within the quantization error.
    let rt = runtime();
    let x = [0.5, 1.0, 2.0, 0.1, 0.0, 0.0];
    let a = run(rt, &m, &x, vec![3, 2]);
    let b = run(rt, &q, &x, vec![3, 2]);
    for (u, v) in a.iter().zip(&b) {
        assert!((u - v).abs() < 0.03, "FP32 {a:?} vs INT8 {b:?}");
    }
    // The ReLU is kept by the UINT8 range: fc1's negative outputs must not leak through.
    // x = (0, 1): h = (0.35, 1.8) both positive; x = (1, 0): h = (1.1, -0.7) -> relu 0.
    let y = run(rt, &q, &[1.0, 0.0], vec![1, 2]);
    let expected = 0.5 * 1.1 + 0.3;
    assert!((y[0] - expected).abs() < 0.03, "{y:?} vs {expected}");
}

#[test]
fn quantized_outputs_keep_their_names_and_run() {
    let m = tiny_mlp();
    let opts = options(Mode::Static, false, true);
    let plan = quantize::plan(&m, &opts);
    assert_eq!(plan.activations, vec!["x", "r", "y"]);
    let ranges: HashMap<String, (f32, f32)> = [
        ("x".to_string(), (0.0, 2.55)),
        ("r".to_string(), (0.0, 5.1)),
        ("y".to_string(), (-5.0, 5.0)),
    ]
    .into();
    let (q, _) = quantize::quantize_static(&m, &plan, &ranges, &opts).unwrap();
    let g = graph::graph(&q);
    assert_eq!(g.output[0].name, "y");
    let mut names: Vec<&str> = g.node.iter().map(|n| n.name.as_str()).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "node names must be unique");
    let x = [0.5, 1.0, 2.0, 0.1];
    let (a, b) = (
        run(runtime(), &m, &x, vec![2, 2]),
        run(runtime(), &q, &x, vec![2, 2]),
    );
    for (u, v) in a.iter().zip(&b) {
        assert!((u - v).abs() < 0.06, "FP32 {a:?} vs INT8 {b:?}");
    }
}

#[test]
fn per_channel_weights_get_one_scale_per_output() {
    let m = tiny_mlp();
    let opts = options(Mode::Static, true, false);
    let plan = quantize::plan(&m, &opts);
    let ranges: HashMap<String, (f32, f32)> = [
        ("x".to_string(), (0.0, 2.55)),
        ("r".to_string(), (0.0, 5.1)),
    ]
    .into();
    let (q, _) = quantize::quantize_static(&m, &plan, &ranges, &opts).unwrap();
    // W1 is [in=2, out=2] (Gemm without transB): columns are channels, max |w| 1.0 and 2.0.
    let s = graph::floats(init(&q, "w1_scale")).unwrap();
    assert!(
        (s[0] - 1.0 / 64.0).abs() < 1e-7 && (s[1] - 2.0 / 64.0).abs() < 1e-7,
        "{s:?}"
    );
    let w1: Vec<i8> = init(&q, "w1_quantized")
        .raw_data
        .iter()
        .map(|&b| b as i8)
        .collect();
    assert_eq!(w1, vec![64, -16, 16, 64]);
    let rt = runtime();
    let x = [0.5, 1.0, 2.0, 0.1];
    let (a, b) = (run(rt, &m, &x, vec![2, 2]), run(rt, &q, &x, vec![2, 2]));
    for (u, v) in a.iter().zip(&b) {
        assert!((u - v).abs() < 0.03, "FP32 {a:?} vs INT8 {b:?}");
    }
}

#[test]
fn calibration_measures_ranges_with_onnx_runtime() {
    let rt = runtime();
    let m = tiny_mlp();
    let images = infera_optimize::data::Images {
        pixels: vec![0.0, 1.0, 2.0, -1.0, 1.0, 0.0],
        labels: None,
        item: vec![2],
        count: 3,
    };
    let r = calibrate::ranges(
        rt,
        &m,
        &["x".to_string(), "r".to_string()],
        &images,
        2,
        calibrate::Method::MinMax,
        |_| {},
    )
    .unwrap();
    assert_eq!(r["x"], (-1.0, 2.0));
    // h rows: (0,1) -> (0.35, 1.8); (2,-1) -> (1.85, -3.2); (1,0) -> (1.1, -0.7); relu min 0.
    let (lo, hi) = r["r"];
    assert_eq!(lo, 0.0);
    assert!((hi - 1.85).abs() < 1e-6, "{hi}");
}

#[test]
fn percentile_ignores_rare_outliers() {
    // 999 values spread over [0, 1) and one at 100.
    let mut hist = vec![0u64; 2048];
    for i in 0..999 {
        let v = i as f32 / 999.0;
        hist[((v / 100.0) * 2048.0) as usize] += 1;
    }
    hist[2047] += 1;
    let (lo, hi) = calibrate::percentile_range(&hist, 0.0, 100.0, 99.9);
    assert_eq!(lo, 0.0);
    assert!(hi < 1.1, "{hi}");
    let (_, all) = calibrate::percentile_range(&hist, 0.0, 100.0, 100.0);
    assert_eq!(all, 100.0);
}

#[test]
fn dynamic_quantization_runs_and_stays_close() {
    let rt = runtime();
    let m = tiny_mlp();
    let opts = options(Mode::Dynamic, false, false);
    let (q, s) = quantize::quantize_dynamic(&m, &opts).unwrap();
    assert_eq!(s.quantized_layers.len(), 2);
    assert!(
        graph::graph(&q)
            .node
            .iter()
            .any(|n| n.op_type == "MatMulInteger")
    );
    let x = [0.5, 1.0, 2.0, 0.1];
    let (a, b) = (run(rt, &m, &x, vec![2, 2]), run(rt, &q, &x, vec![2, 2]));
    for (u, v) in a.iter().zip(&b) {
        assert!((u - v).abs() < 0.05, "FP32 {a:?} vs INT8 {b:?}");
    }
}

/// x [N,1,4,4] → Mul(Constant 2) → Conv → BatchNorm → Identity → Relu → y, plus a dead
/// branch and a constant subgraph (Add of two constants feeding the Mul).
fn messy_cnn() -> pb::ModelProto {
    let mut constant = graph::node("Constant", "c", &[], &["c"]);
    constant.attribute.push(pb::AttributeProto {
        name: "value".into(),
        r#type: pb::attribute_proto::AttributeType::Tensor as i32,
        t: Some(graph::f32_tensor("", &[], &[1.5])),
        ..Default::default()
    });
    let mut conv = graph::node("Conv", "conv", &["xs", "w", "b"], &["conv_out"]);
    conv.attribute.push(graph::attr_ints("pads", &[1, 1, 1, 1]));
    let mut bn = graph::node(
        "BatchNormalization",
        "bn",
        &["conv_out", "g", "beta", "mean", "var"],
        &["bn_out"],
    );
    bn.attribute.push(graph::attr_float("epsilon", 1e-3));
    let w: Vec<f32> = (0..2 * 9).map(|i| (i as f32 - 8.0) / 10.0).collect();
    model(
        vec![
            constant,
            graph::node("Add", "two", &["c", "half"], &["two"]),
            graph::node("Mul", "scale", &["x", "two"], &["xs"]),
            conv,
            bn,
            graph::node("Identity", "id", &["bn_out"], &["id_out"]),
            graph::node("Relu", "relu", &["id_out"], &["y"]),
            graph::node("Sigmoid", "dead", &["xs"], &["unused"]),
        ],
        vec![
            graph::f32_tensor("half", &[], &[0.5]),
            graph::f32_tensor("w", &[2, 1, 3, 3], &w),
            graph::f32_tensor("b", &[2], &[0.1, -0.1]),
            graph::f32_tensor("g", &[2], &[1.5, 0.5]),
            graph::f32_tensor("beta", &[2], &[0.2, -0.3]),
            graph::f32_tensor("mean", &[2], &[0.05, -0.4]),
            graph::f32_tensor("var", &[2], &[2.0, 0.25]),
            graph::f32_tensor("never_read", &[3], &[1.0, 2.0, 3.0]),
        ],
        io("x", &[None, Some(1), Some(4), Some(4)]),
        io("y", &[None, Some(2), Some(4), Some(4)]),
    )
}

#[test]
fn clean_up_folds_batchnorm_and_constants_and_removes_dead_nodes_without_changing_outputs() {
    let rt = runtime();
    let m = messy_cnn();
    let (c, s) = clean::clean(&m, Some(rt)).unwrap();
    let ops: Vec<&str> = graph::graph(&c)
        .node
        .iter()
        .map(|n| n.op_type.as_str())
        .collect();
    assert_eq!(ops, vec!["Mul", "Conv", "Relu"], "{s:?}");
    assert_eq!(s.constants_to_initializers, 1);
    assert_eq!(s.identities_removed, 1);
    assert_eq!(s.batchnorms_folded, 1);
    assert_eq!(s.nodes_folded, 1);
    assert_eq!(s.dead_nodes_removed, 1);
    assert!(
        graph::graph(&c)
            .initializer
            .iter()
            .all(|t| t.name != "never_read")
    );
    let x: Vec<f32> = (0..2 * 16).map(|i| (i as f32 * 0.37).sin()).collect();
    let (a, b) = (
        run(rt, &m, &x, vec![2, 1, 4, 4]),
        run(rt, &c, &x, vec![2, 1, 4, 4]),
    );
    assert_eq!(a.len(), b.len());
    for (u, v) in a.iter().zip(&b) {
        assert!((u - v).abs() < 1e-5, "{u} vs {v}");
    }
}
