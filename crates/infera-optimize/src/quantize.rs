//! INT8 quantization of ONNX graphs, in the same scheme as ONNX Runtime's own tool so that its
//! graph optimizer fuses the result into integer kernels (QLinearConv, QGemm, ...):
//!
//! * activations: UINT8, asymmetric, the calibrated range widened to include 0 (so zero padding
//!   and ReLU stay exact): `scale = (max - min) / 255`, `zero_point = round(-min / scale)`;
//! * weights: INT8 in ONNX Runtime's reduced range, symmetric: `scale = max|w| / 64`,
//!   `zero_point = 0`, per tensor or per output channel. x86 CPUs without VNNI (AVX2 only, as
//!   many cloud EPYCs) multiply UINT8 by INT8 with an instruction that saturates sums of two
//!   products at 16 bits; full-range weights lost 1.5 points of Fashion-MNIST accuracy there,
//!   7-bit ones cannot overflow (2 × 255 × 64 < 32767);
//! * biases: INT32 with `scale = activation scale × weight scale`, `zero_point = 0`;
//! * rounding is half to even, as numpy's `rint` in ONNX Runtime's quantizer.
//!
//! Static mode writes QDQ (QuantizeLinear/DequantizeLinear pairs around each quantized
//! tensor). Dynamic mode quantizes weights only and lets the runtime quantize activations per
//! batch (DynamicQuantizeLinear + ConvInteger / MatMulInteger).

use std::collections::{HashMap, HashSet};

use infera_proto::onnx::tensor_proto::DataType;
use infera_proto::onnx::{GraphProto, ModelProto, NodeProto};

use crate::OptimizeError;
use crate::graph::{self, Names};

/// A quantization's scale and zero point.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
}

/// UINT8 parameters for an activation observed in `[min, max]`.
pub fn activation_params(min: f32, max: f32) -> QParams {
    let lo = min.min(0.0);
    let hi = max.max(0.0);
    let scale = (hi - lo) / 255.0;
    if !scale.is_finite() || scale <= 0.0 {
        return QParams {
            scale: 1.0,
            zero_point: 0,
        };
    }
    QParams {
        scale,
        zero_point: (-lo / scale).round_ties_even().clamp(0.0, 255.0) as i32,
    }
}

/// The largest quantized weight magnitude (ONNX Runtime's `reduce_range`; see the module
/// comment for why).
pub const WEIGHT_QMAX: f32 = 64.0;

/// Symmetric INT8 parameters for weights.
pub fn weight_params(w: &[f32]) -> QParams {
    let amax = w.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    QParams {
        scale: if amax > 0.0 { amax / WEIGHT_QMAX } else { 1.0 },
        zero_point: 0,
    }
}

pub fn quantize_u8(x: f32, p: QParams) -> u8 {
    ((x / p.scale).round_ties_even() + p.zero_point as f32).clamp(0.0, 255.0) as u8
}

pub fn quantize_weight(w: f32, scale: f32) -> i8 {
    (w / scale)
        .round_ties_even()
        .clamp(-WEIGHT_QMAX, WEIGHT_QMAX) as i8
}

pub fn quantize_bias(b: f32, scale: f32) -> i32 {
    let q = (b / scale).round_ties_even();
    q.clamp(i32::MIN as f32, i32::MAX as f32) as i32
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Static,
    Dynamic,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub mode: Mode,
    /// One weight scale per output channel instead of one per tensor.
    pub per_channel: bool,
    /// Also quantize the graph outputs (coarser scores, one fewer FP32 layer). Off by default:
    /// class scores keep their full precision.
    pub quantize_outputs: bool,
}

/// Ops whose weight input is quantized: the work is here.
const COMPUTE: [&str; 3] = ["Conv", "Gemm", "MatMul"];
/// Ops that only move or select values: their output keeps their input's quantization.
const PASS_THROUGH: [&str; 7] = [
    "MaxPool",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Identity",
];

/// What static quantization will do to a graph, decided before calibration.
#[derive(Debug, Default)]
pub struct Plan {
    /// Compute nodes (by index) whose weights are quantized.
    pub compute: Vec<usize>,
    /// ReLU nodes folded into the compute node before them (the UINT8 range does their job).
    pub fused_relu: HashSet<usize>,
    /// For a compute node that absorbed a ReLU: the ReLU's output, which it now produces.
    pub relu_output: HashMap<usize, String>,
    /// Activations that get a QDQ pair, in graph order.
    pub activations: Vec<String>,
    /// Activations that share another one's parameters (outputs of pass-through ops).
    pub alias: HashMap<String, String>,
}

impl Plan {
    /// The activations whose range calibration has to measure.
    pub fn to_calibrate(&self) -> Vec<String> {
        self.activations
            .iter()
            .filter(|a| !self.alias.contains_key(*a))
            .cloned()
            .collect()
    }
}

fn quantizable(g: &GraphProto, n: &NodeProto, inits: &HashMap<String, usize>) -> bool {
    if !COMPUTE.contains(&n.op_type.as_str()) || !n.domain.is_empty() || n.output.is_empty() {
        return false;
    }
    let Some(&w) = n.input.get(1).and_then(|w| inits.get(w)) else {
        return false;
    };
    let w = &g.initializer[w];
    if w.data_type != DataType::Float as i32 {
        return false;
    }
    match n.op_type.as_str() {
        // Gemm's transA and alpha/beta are not part of the integer kernels.
        "Gemm" => {
            graph::attr_i(n, "transA").unwrap_or(0) == 0
                && graph::attr_f(n, "alpha").unwrap_or(1.0) == 1.0
                && graph::attr_f(n, "beta").unwrap_or(1.0) == 1.0
                && w.dims.len() == 2
        }
        "MatMul" => w.dims.len() == 2,
        _ => w.dims.len() >= 3,
    }
}

pub fn plan(model: &ModelProto, opts: &Options) -> Plan {
    let g = graph::graph(model);
    let inits = graph::initializer_index(g);
    let consumers = graph::consumers(g);
    let mut plan = Plan::default();
    let mut quantized: HashSet<String> = HashSet::new();
    let push = |plan: &mut Plan, quantized: &mut HashSet<String>, t: &str| {
        if quantized.insert(t.to_string()) {
            plan.activations.push(t.to_string());
        }
    };
    let output_ok = |t: &str| opts.quantize_outputs || !graph::is_graph_output(g, t);
    for (i, n) in g.node.iter().enumerate() {
        if quantizable(g, n, &inits) {
            plan.compute.push(i);
            let x = &n.input[0];
            if !inits.contains_key(x) && output_ok(x) {
                push(&mut plan, &mut quantized, x);
            }
            let mut out = n.output[0].clone();
            if let Some([r]) = consumers.get(&out).map(Vec::as_slice) {
                let relu = &g.node[*r];
                if relu.op_type == "Relu"
                    && !graph::is_graph_output(g, &out)
                    && output_ok(&relu.output[0])
                {
                    plan.fused_relu.insert(*r);
                    plan.relu_output.insert(i, relu.output[0].clone());
                    out = relu.output[0].clone();
                }
            }
            if output_ok(&out) {
                push(&mut plan, &mut quantized, &out);
            }
        } else if PASS_THROUGH.contains(&n.op_type.as_str())
            && n.domain.is_empty()
            && !n.output.is_empty()
            && n.input.first().is_some_and(|x| quantized.contains(x))
            && output_ok(&n.output[0])
        {
            let src = plan
                .alias
                .get(&n.input[0])
                .cloned()
                .unwrap_or_else(|| n.input[0].clone());
            plan.alias.insert(n.output[0].clone(), src);
            push(&mut plan, &mut quantized, &n.output[0]);
        }
    }
    plan
}

/// What quantization did, for the report and the tests.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub quantized_layers: Vec<String>,
    pub activations: HashMap<String, QParams>,
    pub weights: HashMap<String, Vec<f32>>,
}

/// Static QDQ quantization with calibrated activation ranges (`ranges[name] = (min, max)`).
pub fn quantize_static(
    model: &ModelProto,
    plan: &Plan,
    ranges: &HashMap<String, (f32, f32)>,
    opts: &Options,
) -> Result<(ModelProto, Summary), OptimizeError> {
    let opset = graph::opset(model);
    if opset < 10 || (opts.per_channel && opset < 13) {
        return Err(OptimizeError::Unsupported(format!(
            "the model uses opset {opset}; QuantizeLinear needs 10 and per-channel scales 13 (re-export with a newer opset)"
        )));
    }
    let mut out = model.clone();
    let g = out.graph.as_mut().expect("checked by load");
    let inits = graph::initializer_index(g);
    let mut names = Names::of(g);
    let mut summary = Summary::default();

    let mut params: HashMap<String, QParams> = HashMap::new();
    for a in &plan.activations {
        let src = plan.alias.get(a).unwrap_or(a);
        let &(lo, hi) = ranges.get(src).ok_or_else(|| {
            OptimizeError::Unsupported(format!("calibration measured no range for '{src}'"))
        })?;
        params.insert(a.clone(), activation_params(lo, hi));
    }

    let mut prologue: Vec<NodeProto> = Vec::new();
    let mut new_inits = Vec::new();
    let mut qdq_of: HashMap<String, (String, String)> = HashMap::new(); // tensor -> (scale, zp) names
    for a in &plan.activations {
        let p = params[a];
        let src = plan.alias.get(a).unwrap_or(a);
        let key = src.clone();
        if let std::collections::hash_map::Entry::Vacant(e) = qdq_of.entry(key) {
            let s = names.fresh(&format!("{}_scale", e.key()));
            let z = names.fresh(&format!("{}_zero_point", e.key()));
            new_inits.push(graph::f32_tensor(&s, &[], &[p.scale]));
            new_inits.push(graph::u8_tensor(&z, &[], &[p.zero_point as u8]));
            e.insert((s, z));
        }
        summary.activations.insert(a.clone(), p);
    }

    // Weights and biases: INT8 / INT32 initializers behind DequantizeLinear.
    let mut weight_dq: HashMap<usize, (String, Option<String>)> = HashMap::new();
    for &i in &plan.compute {
        let n = &g.node[i];
        let w_init = &g.initializer[inits[&n.input[1]]];
        let w = graph::floats(w_init)?;
        let dims = w_init.dims.clone();
        let axis: usize = match n.op_type.as_str() {
            "Conv" => 0,
            "Gemm" if graph::attr_i(n, "transB").unwrap_or(0) == 1 => 0,
            _ => 1,
        };
        let channels = dims[axis] as usize;
        let scales: Vec<f32> = if opts.per_channel {
            per_channel_scales(&w, &dims, axis)
        } else {
            vec![weight_params(&w).scale; 1]
        };
        let q: Vec<i8> = w
            .iter()
            .enumerate()
            .map(|(k, &v)| quantize_weight(v, scales[channel_of(k, &dims, axis) % scales.len()]))
            .collect();
        let wname = &n.input[1];
        let qn = names.fresh(&format!("{wname}_quantized"));
        let sn = names.fresh(&format!("{wname}_scale"));
        let zn = names.fresh(&format!("{wname}_zero_point"));
        let dqn = names.fresh(&format!("{wname}_dequantized"));
        let sdims: Vec<i64> = if opts.per_channel {
            vec![channels as i64]
        } else {
            vec![]
        };
        new_inits.push(graph::i8_tensor(&qn, &dims, &q));
        new_inits.push(graph::f32_tensor(&sn, &sdims, &scales));
        new_inits.push(graph::i8_tensor(&zn, &sdims, &vec![0; scales.len()]));
        let mut dq = graph::node("DequantizeLinear", &dqn, &[&qn, &sn, &zn], &[&dqn]);
        if opts.per_channel {
            dq.attribute.push(graph::attr_int("axis", axis as i64));
        }
        prologue.push(dq);
        summary.weights.insert(wname.clone(), scales.clone());

        // The bias can only be INT32 when the input's scale is known.
        let mut bias_dq = None;
        if let (Some(b), Some(xp)) = (
            n.input
                .get(2)
                .filter(|b| !b.is_empty())
                .and_then(|b| inits.get(b)),
            params.get(&n.input[0]),
        ) {
            let b_init = &g.initializer[*b];
            let bias = graph::floats(b_init)?;
            if b_init.dims.len() == 1 && bias.len() == channels {
                let bscale: Vec<f32> = scales.iter().map(|s| s * xp.scale).collect();
                let qb: Vec<i32> = bias
                    .iter()
                    .enumerate()
                    .map(|(k, &v)| quantize_bias(v, bscale[k % bscale.len()]))
                    .collect();
                let bname = &b_init.name;
                let qn = names.fresh(&format!("{bname}_quantized"));
                let sn = names.fresh(&format!("{bname}_scale"));
                let zn = names.fresh(&format!("{bname}_zero_point"));
                let dqn = names.fresh(&format!("{bname}_dequantized"));
                new_inits.push(graph::i32_tensor(&qn, &b_init.dims, &qb));
                new_inits.push(graph::f32_tensor(&sn, &sdims, &bscale));
                new_inits.push(graph::i32_tensor(&zn, &sdims, &vec![0; bscale.len()]));
                let mut dq = graph::node("DequantizeLinear", &dqn, &[&qn, &sn, &zn], &[&dqn]);
                if opts.per_channel {
                    dq.attribute.push(graph::attr_int("axis", 0));
                }
                prologue.push(dq);
                bias_dq = Some(dqn);
            }
        }
        weight_dq.insert(i, (dqn, bias_dq));
        summary
            .quantized_layers
            .push(format!("{} ({})", n.name, n.op_type));
    }

    // Rebuild the node list: weight DQs first, then each node followed by the QDQ pairs of
    // the activations it produces. Readers of a quantized activation read its DQ output.
    let real_inputs: Vec<String> = graph::real_inputs(g)
        .iter()
        .map(|v| v.name.clone())
        .collect();
    let mut dq_name: HashMap<String, String> = HashMap::new();
    let mut renamed_output: HashMap<String, String> = HashMap::new();
    for a in &plan.activations {
        if graph::is_graph_output(g, a) {
            renamed_output.insert(a.clone(), names.fresh(&format!("{a}_float")));
            dq_name.insert(a.clone(), a.clone());
        } else {
            dq_name.insert(a.clone(), names.fresh(&format!("{a}_dequantized")));
        }
    }
    let qdq_pair = |a: &str, names: &mut Names| -> Vec<NodeProto> {
        let src = plan.alias.get(a).map(String::as_str).unwrap_or(a);
        let (s, z) = &qdq_of[src];
        let input = renamed_output.get(a).map(String::as_str).unwrap_or(a);
        let q = names.fresh(&format!("{a}_quantized"));
        // Fresh node names: a graph output's name may also be its producer's node name.
        let dq_node = names.fresh(&format!("{a}_dequantize"));
        vec![
            graph::node("QuantizeLinear", &q, &[input, s, z], &[&q]),
            graph::node("DequantizeLinear", &dq_node, &[&q, s, z], &[&dq_name[a]]),
        ]
    };
    let mut nodes = prologue;
    for a in plan.activations.iter().filter(|a| real_inputs.contains(a)) {
        nodes.extend(qdq_pair(a, &mut names));
    }
    let old = std::mem::take(&mut g.node);
    for (i, mut n) in old.into_iter().enumerate() {
        if plan.fused_relu.contains(&i) {
            continue;
        }
        if let Some((w, b)) = weight_dq.get(&i) {
            n.input[1] = w.clone();
            if let Some(b) = b {
                n.input[2] = b.clone();
            }
            // The ReLU this node absorbed: its output is now this node's.
            if let Some(out) = plan.relu_output.get(&i) {
                n.output[0] = out.clone();
            }
        }
        for input in &mut n.input {
            if let Some(d) = dq_name.get(input.as_str()) {
                *input = d.clone();
            }
        }
        let produced: Vec<String> = n
            .output
            .iter()
            .filter(|o| dq_name.contains_key(o.as_str()))
            .cloned()
            .collect();
        for o in &mut n.output {
            if let Some(r) = renamed_output.get(o.as_str()) {
                *o = r.clone();
            }
        }
        nodes.push(n);
        for a in produced {
            nodes.extend(qdq_pair(&a, &mut names));
        }
    }
    g.node = nodes;
    g.initializer.extend(new_inits);
    remove_unused_initializers(g);
    Ok((out, summary))
}

/// The output channel of flat element `k` of a weight with `dims`, along `axis`.
fn channel_of(k: usize, dims: &[i64], axis: usize) -> usize {
    let inner: usize = dims[axis + 1..].iter().map(|&d| d as usize).product();
    (k / inner) % dims[axis] as usize
}

fn per_channel_scales(w: &[f32], dims: &[i64], axis: usize) -> Vec<f32> {
    let c = dims[axis] as usize;
    let mut amax = vec![0.0f32; c];
    for (k, &v) in w.iter().enumerate() {
        let ch = channel_of(k, dims, axis);
        amax[ch] = amax[ch].max(v.abs());
    }
    amax.iter()
        .map(|&m| if m > 0.0 { m / WEIGHT_QMAX } else { 1.0 })
        .collect()
}

pub fn remove_unused_initializers(g: &mut GraphProto) {
    let used: HashSet<String> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(g.output.iter().map(|o| o.name.clone()))
        .collect();
    let removed: HashSet<String> = g
        .initializer
        .iter()
        .filter(|t| !used.contains(&t.name))
        .map(|t| t.name.clone())
        .collect();
    g.initializer.retain(|t| used.contains(&t.name));
    // Weights listed as graph inputs (old exporters) go with their initializer.
    g.input.retain(|i| !removed.contains(&i.name));
}

/// Dynamic quantization: INT8 weights; activations are quantized per batch at run time.
/// Conv becomes ConvInteger, Gemm/MatMul become MatMulInteger, each followed by the
/// rescale to FP32 and the bias.
pub fn quantize_dynamic(
    model: &ModelProto,
    opts: &Options,
) -> Result<(ModelProto, Summary), OptimizeError> {
    let opset = graph::opset(model);
    if opset < 11 {
        return Err(OptimizeError::Unsupported(format!(
            "the model uses opset {opset}; dynamic quantization needs 11 (re-export with a newer opset)"
        )));
    }
    let mut out = model.clone();
    let g = out.graph.as_mut().expect("checked by load");
    let inits = graph::initializer_index(g);
    let mut names = Names::of(g);
    let mut summary = Summary::default();
    let mut new_inits = Vec::new();
    let old = std::mem::take(&mut g.node);
    let mut nodes = Vec::with_capacity(old.len());
    for n in old {
        let ok = quantizable(g, &n, &inits);
        if !ok {
            nodes.push(n);
            continue;
        }
        let w_init = &g.initializer[inits[&n.input[1]]];
        let mut w = graph::floats(w_init)?;
        let mut dims = w_init.dims.clone();
        let is_conv = n.op_type == "Conv";
        if n.op_type == "Gemm" && graph::attr_i(&n, "transB").unwrap_or(0) == 1 {
            // MatMulInteger wants B as [K, N].
            let (r, c) = (dims[0] as usize, dims[1] as usize);
            let mut t = vec![0.0; w.len()];
            for i in 0..r {
                for j in 0..c {
                    t[j * r + i] = w[i * c + j];
                }
            }
            w = t;
            dims = vec![c as i64, r as i64];
        }
        let axis = if is_conv { 0 } else { 1 };
        let channels = dims[axis] as usize;
        let scales = if opts.per_channel {
            per_channel_scales(&w, &dims, axis)
        } else {
            vec![weight_params(&w).scale]
        };
        // ConvInteger and MatMulInteger in ONNX Runtime take UINT8 weights: shift INT8 by 128.
        let q: Vec<u8> = w
            .iter()
            .enumerate()
            .map(|(k, &v)| {
                (quantize_weight(v, scales[channel_of(k, &dims, axis) % scales.len()]) as i32 + 128)
                    as u8
            })
            .collect();
        let base = n.input[1].clone();
        let qn = names.fresh(&format!("{base}_quantized"));
        let zn = names.fresh(&format!("{base}_zero_point"));
        let sn = names.fresh(&format!("{base}_scale"));
        new_inits.push(graph::u8_tensor(&qn, &dims, &q));
        let zdims: Vec<i64> = if opts.per_channel {
            vec![channels as i64]
        } else {
            vec![]
        };
        new_inits.push(graph::u8_tensor(&zn, &zdims, &vec![128; scales.len()]));
        // The rescale broadcasts over the output: [1, C, 1, ...] for Conv, [C] for MatMul.
        let sdims: Vec<i64> = match (opts.per_channel, is_conv) {
            (false, _) => vec![],
            (true, true) => {
                let mut d = vec![1, channels as i64];
                d.extend(std::iter::repeat_n(1, w_init.dims.len() - 2));
                d
            }
            (true, false) => vec![channels as i64],
        };
        new_inits.push(graph::f32_tensor(&sn, &sdims, &scales));

        let x = n.input[0].clone();
        let xq = names.fresh(&format!("{x}_quantized"));
        let xs = names.fresh(&format!("{x}_scale"));
        let xz = names.fresh(&format!("{x}_zero_point"));
        nodes.push(graph::node(
            "DynamicQuantizeLinear",
            &xq,
            &[&x],
            &[&xq, &xs, &xz],
        ));
        let acc = names.fresh(&format!("{}_int32", n.output[0]));
        let mut core = graph::node(
            if is_conv {
                "ConvInteger"
            } else {
                "MatMulInteger"
            },
            &acc,
            &[&xq, &qn, &xz, &zn],
            &[&acc],
        );
        // The integer node takes the layer's name, so reports still say which layer it is.
        core.name = if n.name.is_empty() {
            acc.clone()
        } else {
            n.name.clone()
        };
        if is_conv {
            core.attribute = n.attribute.clone();
        }
        nodes.push(core);
        let f = names.fresh(&format!("{}_float", n.output[0]));
        let mut cast = graph::node("Cast", &f, &[&acc], &[&f]);
        cast.attribute
            .push(graph::attr_int("to", DataType::Float as i64));
        nodes.push(cast);
        let scaled_x = names.fresh(&format!("{}_scaled_x", n.output[0]));
        nodes.push(graph::node("Mul", &scaled_x, &[&f, &xs], &[&scaled_x]));
        let has_bias = n.input.get(2).is_some_and(|b| !b.is_empty());
        let scaled = if has_bias {
            names.fresh(&format!("{}_scaled", n.output[0]))
        } else {
            n.output[0].clone()
        };
        // Node names stay unique: exporters often name a node after its output.
        let mul_name = names.fresh(&format!("{}_rescale", n.output[0]));
        nodes.push(graph::node("Mul", &mul_name, &[&scaled_x, &sn], &[&scaled]));
        if has_bias {
            let b = n.input[2].clone();
            let b = if is_conv {
                // Conv's bias is [C]; the output is [N, C, ...].
                let b_init = &g.initializer[inits.get(&b).copied().ok_or_else(|| {
                    OptimizeError::Unsupported(format!("Conv bias '{b}' is not a constant"))
                })?];
                let bv = graph::floats(b_init)?;
                let mut d = vec![1, bv.len() as i64];
                d.extend(std::iter::repeat_n(1, w_init.dims.len() - 2));
                let bn = names.fresh(&format!("{b}_broadcast"));
                new_inits.push(graph::f32_tensor(&bn, &d, &bv));
                bn
            } else {
                b
            };
            let add_name = names.fresh(&format!("{}_add_bias", n.output[0]));
            nodes.push(graph::node(
                "Add",
                &add_name,
                &[&scaled, &b],
                &[&n.output[0]],
            ));
        }
        summary
            .quantized_layers
            .push(format!("{} ({})", n.name, n.op_type));
        summary.weights.insert(base, scales);
    }
    g.node = nodes;
    g.initializer.extend(new_inits);
    remove_unused_initializers(g);
    Ok((out, summary))
}
