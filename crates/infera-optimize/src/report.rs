//! `infera report`: size, parameters, FLOPs per layer with a roofline verdict, latency,
//! throughput and accuracy of several models, measured in one run and compared with the
//! first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use infera_core::backend::Session;
use infera_core::tensor::Tensor;
use infera_proto::onnx::ModelProto;

use crate::OptimizeError;
use crate::data::Images;
use crate::graph;
use crate::runtime::{self, Runtime};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    Memory,
    Compute,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Layer {
    pub name: String,
    pub op: String,
    /// Multiply-adds count two.
    pub flops_b1: u64,
    /// Weights, input and output activations, at the element size the runtime uses.
    pub bytes_b1: u64,
    pub bytes_b64: u64,
    pub int8: bool,
    pub intensity_b1: f64,
    pub intensity_b64: f64,
    pub bound_b1: Bound,
    pub bound_b64: Bound,
}

/// This CPU's roofline: measured peak arithmetic and memory bandwidth.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Machine {
    pub threads: usize,
    pub peak_gflops_fp32: f64,
    pub peak_gops_int8: f64,
    pub bandwidth_gbs: f64,
}

impl Machine {
    /// FLOPs per byte above which a layer is compute-bound.
    pub fn ridge(&self, int8: bool) -> f64 {
        let peak = if int8 {
            self.peak_gops_int8
        } else {
            self.peak_gflops_fp32
        };
        peak / self.bandwidth_gbs.max(1e-9)
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelReport {
    pub path: PathBuf,
    pub file_bytes: u64,
    pub params: u64,
    pub flops_b1: u64,
    pub p50_ms_b1: f64,
    pub throughput_b64: f64,
    pub accuracy: Option<f64>,
    /// Against the first model: its p50 over this one's (higher is faster).
    pub latency_speedup: f64,
    /// This one's throughput over the first model's.
    pub throughput_speedup: f64,
    /// The first model's file size over this one's.
    pub compression: f64,
    pub layers: Vec<Layer>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub machine: Machine,
    pub rounds: usize,
    pub accuracy_images: usize,
    pub models: Vec<ModelReport>,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub threads: usize,
    /// Measurement rounds; the models take turns in each, so drift hits all alike.
    pub rounds: usize,
    /// Time spent per model and round on each of latency and throughput.
    pub time_per_round: Duration,
}

const COMPUTE_OPS: [&str; 8] = [
    "Conv",
    "ConvInteger",
    "QLinearConv",
    "Gemm",
    "QGemm",
    "MatMul",
    "MatMulInteger",
    "QLinearMatMul",
];

struct Probe {
    shapes: HashMap<String, Vec<usize>>,
    elem_bytes: HashMap<String, usize>,
}

fn probe(rt: &Runtime, model: &ModelProto, item: &[usize]) -> Result<Probe, OptimizeError> {
    let g = graph::graph(model);
    let mut m = model.clone();
    let mg = m.graph.as_mut().expect("checked by load");
    let mut outs: Vec<String> = Vec::new();
    for n in &g.node {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            outs.push(o.clone());
        }
    }
    mg.output = outs.iter().map(|o| graph::untyped_value(o)).collect();
    let mut session = rt.open(&m, 1)?;
    let inputs = graph::real_inputs(g);
    let mut shape = vec![1];
    shape.extend(item);
    let x = Tensor::from_slice(shape.clone(), &vec![0.0f32; shape.iter().product()])
        .map_err(|e| OptimizeError::Data(e.to_string()))?;
    let values = runtime::run(session.as_mut(), &[x])?;
    let mut p = Probe {
        shapes: HashMap::new(),
        elem_bytes: HashMap::new(),
    };
    for i in inputs {
        p.shapes.insert(i.name.clone(), shape.clone());
        p.elem_bytes.insert(i.name.clone(), 4);
    }
    for t in &g.initializer {
        p.shapes
            .insert(t.name.clone(), t.dims.iter().map(|&d| d as usize).collect());
        p.elem_bytes
            .insert(t.name.clone(), graph::element_size(t.data_type));
    }
    for (name, v) in outs.iter().zip(values) {
        p.elem_bytes
            .insert(name.clone(), v.dtype.size().unwrap_or(4));
        p.shapes.insert(name.clone(), v.shape);
    }
    Ok(p)
}

/// Parameters (all initializer elements) and the FLOPs and bytes of each compute layer.
pub fn analyze(
    rt: &Runtime,
    model: &ModelProto,
    item: &[usize],
    machine: &Machine,
) -> Result<(u64, Vec<Layer>), OptimizeError> {
    let g = graph::graph(model);
    let params: u64 = g.initializer.iter().map(graph::element_count).sum();
    let p = probe(rt, model, item)?;
    let producers = graph::producers(g);
    let consumers = graph::consumers(g);
    // In a QDQ graph the runtime reads a DequantizeLinear's INT8 input, not its FP32 output.
    let stored_bytes = |t: &str| -> usize {
        match producers.get(t).map(|&i| &g.node[i]) {
            Some(n) if n.op_type == "DequantizeLinear" => {
                p.elem_bytes.get(&n.input[0]).copied().unwrap_or(1)
            }
            _ => p.elem_bytes.get(t).copied().unwrap_or(4),
        }
    };
    let count = |t: &str| -> u64 {
        p.shapes
            .get(t)
            .map_or(0, |s| s.iter().map(|&d| d as u64).product())
    };
    let mut layers = Vec::new();
    for n in &g.node {
        if !COMPUTE_OPS.contains(&n.op_type.as_str()) || n.input.is_empty() || n.output.is_empty() {
            continue;
        }
        let (x, w) = match n.op_type.as_str() {
            "QLinearConv" | "QLinearMatMul" | "QGemm" => (&n.input[0], n.input.get(3)),
            _ => (&n.input[0], n.input.get(1)),
        };
        let Some(w) = w else { continue };
        let out = &n.output[0];
        let out_shape = p.shapes.get(out).cloned().unwrap_or_default();
        let w_shape = p.shapes.get(w).cloned().unwrap_or_default();
        let x_shape = p.shapes.get(x).cloned().unwrap_or_default();
        let out_elems: u64 = out_shape.iter().map(|&d| d as u64).product();
        let macs = if n.op_type.contains("Conv") {
            out_elems * w_shape.iter().skip(1).map(|&d| d as u64).product::<u64>()
        } else {
            out_elems * x_shape.last().copied().unwrap_or(0) as u64
        };
        let flops_b1 = 2 * macs;
        let out_bytes = match consumers.get(out).map(Vec::as_slice) {
            Some([c]) if g.node[*c].op_type == "QuantizeLinear" => 1,
            _ => p.elem_bytes.get(out).copied().unwrap_or(4),
        } as u64;
        let x_bytes = stored_bytes(x) as u64;
        let w_bytes = stored_bytes(w) as u64;
        let int8 = w_bytes == 1;
        let act_b1 = count(x) * x_bytes + out_elems * out_bytes;
        let weights = count(w) * w_bytes;
        let bytes_b1 = weights + act_b1;
        let bytes_b64 = weights + 64 * act_b1;
        let intensity_b1 = flops_b1 as f64 / bytes_b1.max(1) as f64;
        let intensity_b64 = 64.0 * flops_b1 as f64 / bytes_b64.max(1) as f64;
        let ridge = machine.ridge(int8);
        let bound = |i: f64| {
            if i >= ridge {
                Bound::Compute
            } else {
                Bound::Memory
            }
        };
        layers.push(Layer {
            name: if n.name.is_empty() {
                out.clone()
            } else {
                n.name.clone()
            },
            op: n.op_type.clone(),
            flops_b1,
            bytes_b1,
            bytes_b64,
            int8,
            intensity_b1,
            intensity_b64,
            bound_b1: bound(intensity_b1),
            bound_b64: bound(intensity_b64),
        });
    }
    Ok((params, layers))
}

/// A Gemm [m, k] × [k, n] model, FP32 or (when `int8`) quantized as QDQ, for the peak test.
fn gemm_model(m: usize, k: usize, n: usize, int8: bool) -> Result<ModelProto, OptimizeError> {
    use infera_proto::onnx::tensor_proto::DataType;
    use infera_proto::onnx::tensor_shape_proto::{Dimension, dimension};
    use infera_proto::onnx::{OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto};
    let w: Vec<f32> = (0..k * n).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
    let b = vec![0.0f32; n];
    let vi = |name: &str, dims: &[usize]| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            denotation: String::new(),
            value: Some(infera_proto::onnx::type_proto::Value::TensorType(
                infera_proto::onnx::type_proto::Tensor {
                    elem_type: DataType::Float as i32,
                    shape: Some(TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension {
                                denotation: String::new(),
                                value: Some(dimension::Value::DimValue(d as i64)),
                            })
                            .collect(),
                    }),
                },
            )),
        }),
        doc_string: String::new(),
    };
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(infera_proto::onnx::GraphProto {
            name: "peak".into(),
            node: vec![graph::node("Gemm", "gemm", &["x", "w", "b"], &["y"])],
            initializer: vec![
                graph::f32_tensor("w", &[k as i64, n as i64], &w),
                graph::f32_tensor("b", &[n as i64], &b),
            ],
            input: vec![vi("x", &[m, k])],
            output: vec![vi("y", &[m, n])],
            ..Default::default()
        }),
        ..Default::default()
    };
    if !int8 {
        return Ok(model);
    }
    let opts = crate::quantize::Options {
        mode: crate::quantize::Mode::Static,
        per_channel: false,
        quantize_outputs: true,
    };
    let plan = crate::quantize::plan(&model, &opts);
    let ranges = plan
        .to_calibrate()
        .into_iter()
        .map(|t| (t, (-8.0, 8.0)))
        .collect();
    Ok(crate::quantize::quantize_static(&model, &plan, &ranges, &opts)?.0)
}

fn time_runs(
    session: &mut dyn Session,
    x: &Tensor,
    min_time: Duration,
    min_runs: usize,
) -> Result<Vec<f64>, OptimizeError> {
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < min_runs || start.elapsed() < min_time {
        let t = Instant::now();
        runtime::run(session, std::slice::from_ref(x))?;
        samples.push(t.elapsed().as_secs_f64());
        if samples.len() > 100_000 {
            break;
        }
    }
    Ok(samples)
}

/// Measures this CPU: Gemm peak through ONNX Runtime (FP32 and INT8) and copy bandwidth.
pub fn machine(rt: &Runtime, threads: usize) -> Result<Machine, OptimizeError> {
    let (m, k, n) = (256, 1024, 1024);
    let flops = 2.0 * (m * k * n) as f64;
    let x = Tensor::from_slice(vec![m, k], &vec![0.5f32; m * k])
        .map_err(|e| OptimizeError::Data(e.to_string()))?;
    let mut peak = [0.0; 2];
    for (i, int8) in [false, true].into_iter().enumerate() {
        let mut s = rt.open(&gemm_model(m, k, n, int8)?, threads)?;
        runtime::run(s.as_mut(), std::slice::from_ref(&x))?;
        let t = time_runs(s.as_mut(), &x, Duration::from_millis(300), 5)?;
        let best = t.iter().cloned().fold(f64::INFINITY, f64::min);
        peak[i] = flops / best / 1e9;
    }
    // Bandwidth: copying a buffer far larger than the caches reads and writes it once.
    let len = 256 << 20;
    let src = vec![1u8; len];
    let mut dst = vec![0u8; len];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&mut dst);
    }
    Ok(Machine {
        threads,
        peak_gflops_fp32: peak[0],
        peak_gops_int8: peak[1],
        bandwidth_gbs: 2.0 * len as f64 / best / 1e9,
    })
}

/// Top-1 accuracy of a model returning one score per class.
pub fn accuracy(
    session: &mut dyn Session,
    images: &Images,
    labels: &[usize],
) -> Result<f64, OptimizeError> {
    let mut correct = 0usize;
    let batch = 250;
    for start in (0..images.count).step_by(batch) {
        let end = (start + batch).min(images.count);
        let out = runtime::run(session, &[images.batch(start, end)?])?;
        let first = out
            .first()
            .ok_or_else(|| OptimizeError::Runtime("the model returned no output".into()))?;
        let scores = runtime::floats(first, "output")?;
        let n = end - start;
        if scores.is_empty() || scores.len() % n != 0 {
            return Err(OptimizeError::Runtime(format!(
                "the model returned {} scores for {n} images",
                scores.len()
            )));
        }
        let classes = scores.len() / n;
        for (row, &label) in scores.chunks(classes).zip(&labels[start..end]) {
            if infera_train::metrics::argmax(row) == label {
                correct += 1;
            }
        }
    }
    Ok(correct as f64 / images.count.max(1) as f64)
}

/// The per-image input dims [C, H, W] of a model with one batched image input.
pub fn item_dims(model: &ModelProto) -> Result<Vec<usize>, OptimizeError> {
    let g = graph::graph(model);
    let input = graph::single_input(g)?;
    let dims = graph::dims(input).unwrap_or_default();
    let item: Option<Vec<usize>> = dims.iter().skip(1).map(|d| d.map(|v| v as usize)).collect();
    match item {
        Some(item) if !dims.is_empty() && !item.is_empty() => Ok(item),
        _ => Err(OptimizeError::Unsupported(format!(
            "input '{}' has dims {dims:?}; this needs a batch dimension and fixed image dims",
            input.name
        ))),
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// p50 latency at batch 1 (ms) and throughput at batch 64 (images/s) of each model, measured
/// in interleaved rounds.
pub fn timings(
    sessions: &mut [Box<dyn Session>],
    item: &[usize],
    settings: &Settings,
    mut progress: impl FnMut(),
) -> Result<Vec<(f64, f64)>, OptimizeError> {
    let make = |n: usize| {
        let mut shape = vec![n];
        shape.extend(item);
        let len: usize = shape.iter().product();
        // Mid-grey with some texture, so no kernel takes a shortcut on zeros.
        let v: Vec<f32> = (0..len).map(|i| ((i * 37) % 256) as f32).collect();
        Tensor::from_slice(shape, &v).map_err(|e| OptimizeError::Data(e.to_string()))
    };
    let (x1, x64) = (make(1)?, make(64)?);
    for s in sessions.iter_mut() {
        for _ in 0..3 {
            runtime::run(s.as_mut(), std::slice::from_ref(&x64))?;
        }
    }
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); sessions.len()];
    let mut tput: Vec<Vec<f64>> = vec![Vec::new(); sessions.len()];
    for _ in 0..settings.rounds.max(1) {
        for (i, s) in sessions.iter_mut().enumerate() {
            lat[i].extend(time_runs(s.as_mut(), &x1, settings.time_per_round, 20)?);
            let t = time_runs(s.as_mut(), &x64, settings.time_per_round, 3)?;
            tput[i].push(64.0 * t.len() as f64 / t.iter().sum::<f64>());
            progress();
        }
    }
    Ok(lat
        .iter_mut()
        .zip(tput.iter_mut())
        .map(|(l, t)| (median(l) * 1e3, median(t)))
        .collect())
}

/// Everything for `infera report`.
pub fn report(
    rt: &Runtime,
    paths: &[PathBuf],
    images: Option<&Images>,
    settings: &Settings,
    mut progress: impl FnMut(&str),
) -> Result<Report, OptimizeError> {
    progress("measuring this CPU");
    let machine = machine(rt, settings.threads)?;
    let mut models = Vec::new();
    let mut sessions = Vec::new();
    let mut item = Vec::new();
    for path in paths {
        let model = graph::load(path)?;
        let this_item = item_dims(&model)?;
        if item.is_empty() {
            item = this_item.clone();
        } else if item != this_item {
            return Err(OptimizeError::Unsupported(format!(
                "{} takes {this_item:?} per image but the first model takes {item:?}; compare models of one task",
                path.display()
            )));
        }
        progress(&format!("analysing {}", path.display()));
        let (params, layers) = analyze(rt, &model, &this_item, &machine)?;
        let file_bytes = std::fs::metadata(path)
            .map_err(|e| OptimizeError::Io {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?
            .len();
        let mut session = rt.open_file(path, settings.threads)?;
        let accuracy = match images {
            Some(im) => match &im.labels {
                Some(labels) => {
                    progress(&format!("accuracy of {}", path.display()));
                    Some(accuracy(session.as_mut(), im, labels)?)
                }
                None => None,
            },
            None => None,
        };
        sessions.push(session);
        models.push(ModelReport {
            path: path.clone(),
            file_bytes,
            params,
            flops_b1: layers.iter().map(|l| l.flops_b1).sum(),
            p50_ms_b1: 0.0,
            throughput_b64: 0.0,
            accuracy,
            latency_speedup: 1.0,
            throughput_speedup: 1.0,
            compression: 1.0,
            layers,
        });
    }
    progress("timing");
    let times = timings(&mut sessions, &item, settings, || progress("timing"))?;
    for (m, (p50, tp)) in models.iter_mut().zip(&times) {
        m.p50_ms_b1 = *p50;
        m.throughput_b64 = *tp;
    }
    let (b_p50, b_tp, b_size) = (
        models[0].p50_ms_b1,
        models[0].throughput_b64,
        models[0].file_bytes,
    );
    for m in &mut models {
        m.latency_speedup = b_p50 / m.p50_ms_b1.max(1e-12);
        m.throughput_speedup = m.throughput_b64 / b_tp.max(1e-12);
        m.compression = b_size as f64 / m.file_bytes.max(1) as f64;
    }
    Ok(Report {
        machine,
        rounds: settings.rounds,
        accuracy_images: images.map_or(0, |i| i.count),
        models,
    })
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn file_name(p: &Path) -> String {
    let parts: Vec<_> = p.iter().rev().take(3).collect();
    parts
        .into_iter()
        .rev()
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

impl Report {
    fn rows(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let head = vec![
            "model",
            "size",
            "params",
            "FLOPs b1",
            "p50 b1",
            "throughput b64",
            "accuracy",
            "speedup (p50)",
            "speedup (b64)",
            "compression",
        ];
        let rows = self
            .models
            .iter()
            .map(|m| {
                vec![
                    file_name(&m.path),
                    human_bytes(m.file_bytes),
                    human_count(m.params),
                    human_count(m.flops_b1),
                    format!("{:.3} ms", m.p50_ms_b1),
                    format!("{:.0} img/s", m.throughput_b64),
                    m.accuracy
                        .map_or("-".into(), |a| format!("{:.2}%", 100.0 * a)),
                    format!("{:.2}x", m.latency_speedup),
                    format!("{:.2}x", m.throughput_speedup),
                    format!("{:.2}x", m.compression),
                ]
            })
            .collect();
        (head, rows)
    }

    fn layer_rows(&self, m: &ModelReport) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let head = vec![
            "layer",
            "op",
            "type",
            "FLOPs b1",
            "FLOP/byte b1",
            "bound b1",
            "FLOP/byte b64",
            "bound b64",
        ];
        let bound = |b: Bound| match b {
            Bound::Memory => "memory".to_string(),
            Bound::Compute => "compute".to_string(),
        };
        let rows = m
            .layers
            .iter()
            .map(|l| {
                vec![
                    l.name.clone(),
                    l.op.clone(),
                    if l.int8 { "int8" } else { "fp32" }.into(),
                    human_count(l.flops_b1),
                    format!("{:.1}", l.intensity_b1),
                    bound(l.bound_b1),
                    format!("{:.1}", l.intensity_b64),
                    bound(l.bound_b64),
                ]
            })
            .collect();
        (head, rows)
    }

    fn machine_line(&self) -> String {
        let m = &self.machine;
        format!(
            "This CPU ({} thread{}): FP32 peak {:.1} GFLOP/s, INT8 peak {:.1} GOP/s, memory {:.1} GB/s; a layer is compute-bound above {:.1} FLOP/byte (FP32) or {:.1} (INT8).",
            m.threads,
            if m.threads == 1 { "" } else { "s" },
            m.peak_gflops_fp32,
            m.peak_gops_int8,
            m.bandwidth_gbs,
            m.ridge(false),
            m.ridge(true)
        )
    }

    pub fn text(&self) -> String {
        let mut s = table(self.rows());
        for m in &self.models {
            s.push_str(&format!("\nLayers of {}:\n", file_name(&m.path)));
            s.push_str(&table(self.layer_rows(m)));
        }
        s.push('\n');
        s.push_str(&self.machine_line());
        s.push('\n');
        s
    }

    pub fn markdown(&self) -> String {
        let mut s = markdown(self.rows());
        for m in &self.models {
            s.push_str(&format!("\n**Layers of `{}`**\n\n", file_name(&m.path)));
            s.push_str(&markdown(self.layer_rows(m)));
        }
        s.push('\n');
        s.push_str(&self.machine_line());
        s.push('\n');
        s
    }
}

fn table((head, rows): (Vec<&'static str>, Vec<Vec<String>>)) -> String {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i == 0 {
                s.push_str(&format!("{c:<w$}"));
            } else {
                s.push_str(&format!("  {c:>w$}"));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut s = line(head.iter().map(|h| h.to_string()).collect());
    s.push_str(&line(width.iter().map(|&w| "-".repeat(w)).collect()));
    for r in rows {
        s.push_str(&line(r));
    }
    s
}

fn markdown((head, rows): (Vec<&'static str>, Vec<Vec<String>>)) -> String {
    let mut s = format!("| {} |\n", head.join(" | "));
    s.push_str(&format!(
        "|{}\n",
        head.iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    ));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}
