//! Graph clean-up before serving or quantizing: Constant nodes become initializers,
//! Identity and inference-time Dropout disappear, BatchNormalization is folded into the
//! convolution before it, subgraphs of constants are computed once (with ONNX Runtime), and
//! nodes and initializers nothing reads are removed. The outputs do not change beyond float
//! rounding; the tests check it.

use std::collections::HashSet;

use infera_core::DataType as CoreType;
use infera_proto::onnx::tensor_proto::DataType;
use infera_proto::onnx::{GraphProto, ModelProto, TensorProto};

use crate::OptimizeError;
use crate::graph;
use crate::quantize::remove_unused_initializers;
use crate::runtime::Runtime;

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CleanSummary {
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub constants_to_initializers: usize,
    pub identities_removed: usize,
    pub batchnorms_folded: usize,
    pub nodes_folded: usize,
    pub dead_nodes_removed: usize,
}

/// Runs every pass. `runtime` computes constant subgraphs; without it they are left alone.
pub fn clean(
    model: &ModelProto,
    runtime: Option<&Runtime>,
) -> Result<(ModelProto, CleanSummary), OptimizeError> {
    let mut m = model.clone();
    let mut s = CleanSummary {
        nodes_before: graph::graph(model).node.len(),
        ..Default::default()
    };
    let g = m.graph.as_mut().expect("checked by load");
    s.constants_to_initializers = constants_to_initializers(g);
    s.identities_removed = remove_identities(g);
    s.batchnorms_folded = fold_batchnorms(g)?;
    if let Some(rt) = runtime {
        s.nodes_folded = fold_constants(&m, rt).map(|(folded, n)| {
            m = folded;
            n
        })?;
    }
    let g = m.graph.as_mut().expect("checked by load");
    s.dead_nodes_removed = remove_dead_nodes(g);
    remove_unused_initializers(g);
    s.nodes_after = g.node.len();
    Ok((m, s))
}

fn constants_to_initializers(g: &mut GraphProto) -> usize {
    let mut moved = 0;
    let mut keep = Vec::with_capacity(g.node.len());
    for n in std::mem::take(&mut g.node) {
        let value = (n.op_type == "Constant" && n.domain.is_empty() && n.output.len() == 1)
            .then(|| graph::attr(&n, "value").and_then(|a| a.t.clone()))
            .flatten();
        match value {
            Some(mut t) => {
                t.name = n.output[0].clone();
                g.initializer.push(t);
                moved += 1;
            }
            None => keep.push(n),
        }
    }
    g.node = keep;
    moved
}

/// Identity, and Dropout whose mask nobody reads (at inference it passes its input through).
fn remove_identities(g: &mut GraphProto) -> usize {
    let mut removed = 0;
    loop {
        let consumers = graph::consumers(g);
        let pos = g.node.iter().position(|n| {
            n.domain.is_empty()
                && (n.op_type == "Identity"
                    || (n.op_type == "Dropout"
                        && n.output.get(1).is_none_or(|m| {
                            m.is_empty()
                                || !consumers.contains_key(m) && !graph::is_graph_output(g, m)
                        })))
                && !n.input.is_empty()
                && !n.output.is_empty()
        });
        let Some(i) = pos else { break };
        let n = g.node.remove(i);
        let (from, to) = (n.output[0].clone(), n.input[0].clone());
        if graph::is_graph_output(g, &from) {
            // The graph output keeps its name: the producer writes it directly, unless the
            // value is a graph input or an initializer (then the Identity has to stay).
            let producer = g.node.iter().position(|p| p.output.contains(&to));
            match producer {
                Some(p) if !graph::is_graph_output(g, &to) => {
                    for o in &mut g.node[p].output {
                        if *o == to {
                            *o = from.clone();
                        }
                    }
                    graph::rename_input(g, &to, &from);
                }
                _ => {
                    g.node.insert(i, n);
                    break;
                }
            }
        } else {
            graph::rename_input(g, &from, &to);
        }
        removed += 1;
    }
    removed
}

/// Conv → BatchNormalization with constant weights: w' = w·γ/√(σ²+ε), b' = (b − μ)·γ/√(σ²+ε) + β.
fn fold_batchnorms(g: &mut GraphProto) -> Result<usize, OptimizeError> {
    let mut folded = 0;
    loop {
        let consumers = graph::consumers(g);
        let inits = graph::initializer_index(g);
        let found = g.node.iter().enumerate().find_map(|(bi, bn)| {
            if bn.op_type != "BatchNormalization" || bn.output.len() != 1 || bn.input.len() != 5 {
                return None;
            }
            if !bn.input[1..].iter().all(|t| inits.contains_key(t)) {
                return None;
            }
            let ci = g
                .node
                .iter()
                .position(|c| c.output.first() == Some(&bn.input[0]))?;
            let conv = &g.node[ci];
            let sole_reader = consumers.get(&bn.input[0]).is_some_and(|r| r.len() == 1)
                && !graph::is_graph_output(g, &bn.input[0]);
            (conv.op_type == "Conv"
                && conv.domain.is_empty()
                && sole_reader
                && conv.input.get(1).is_some_and(|w| inits.contains_key(w)))
            .then_some((ci, bi))
        });
        let Some((ci, bi)) = found else { break };
        let bn = g.node[bi].clone();
        let eps = graph::attr_f(&bn, "epsilon").unwrap_or(1e-5);
        let get = |name: &str| graph::floats(&g.initializer[inits[name]]);
        let (gamma, beta, mean, var) = (
            get(&bn.input[1])?,
            get(&bn.input[2])?,
            get(&bn.input[3])?,
            get(&bn.input[4])?,
        );
        let conv = g.node[ci].clone();
        let w_init = g.initializer[inits[&conv.input[1]]].clone();
        let mut w = graph::floats(&w_init)?;
        let out_c = w_init.dims[0] as usize;
        if out_c == 0 || gamma.len() != out_c {
            break;
        }
        let mut b = match conv.input.get(2).filter(|b| !b.is_empty()) {
            Some(b) => graph::floats(
                &g.initializer[inits.get(b).copied().ok_or_else(|| {
                    OptimizeError::Unsupported(format!("Conv bias '{b}' is not a constant"))
                })?],
            )?,
            None => vec![0.0; out_c],
        };
        let per_out = w.len() / out_c;
        for o in 0..out_c {
            let s = gamma[o] / (var[o] + eps).sqrt();
            for v in &mut w[o * per_out..(o + 1) * per_out] {
                *v *= s;
            }
            b[o] = (b[o] - mean[o]) * s + beta[o];
        }
        let mut names = graph::Names::of(g);
        let wn = names.fresh(&format!("{}_folded", conv.input[1]));
        let bname = names.fresh(&format!("{}.bias_folded", conv.name));
        g.initializer.push(graph::f32_tensor(&wn, &w_init.dims, &w));
        g.initializer
            .push(graph::f32_tensor(&bname, &[out_c as i64], &b));
        let c = &mut g.node[ci];
        c.input.truncate(1);
        c.input.push(wn);
        c.input.push(bname);
        c.output[0] = bn.output[0].clone();
        g.node.remove(bi);
        folded += 1;
    }
    Ok(folded)
}

fn onnx_type(t: CoreType) -> DataType {
    match t {
        CoreType::Bool => DataType::Bool,
        CoreType::U8 => DataType::Uint8,
        CoreType::U16 => DataType::Uint16,
        CoreType::U32 => DataType::Uint32,
        CoreType::U64 => DataType::Uint64,
        CoreType::I8 => DataType::Int8,
        CoreType::I16 => DataType::Int16,
        CoreType::I32 => DataType::Int32,
        CoreType::I64 => DataType::Int64,
        CoreType::F16 => DataType::Float16,
        CoreType::F32 => DataType::Float,
        CoreType::F64 => DataType::Double,
        CoreType::Bf16 => DataType::Bfloat16,
        CoreType::Bytes => DataType::String,
    }
}

/// Nodes whose inputs are all constant are computed once; their outputs become initializers.
fn fold_constants(model: &ModelProto, rt: &Runtime) -> Result<(ModelProto, usize), OptimizeError> {
    let g = graph::graph(model);
    let mut constant: HashSet<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
    let mut foldable = Vec::new();
    for (i, n) in g.node.iter().enumerate() {
        let pure = n.domain.is_empty()
            && !matches!(
                n.op_type.as_str(),
                "RandomNormal"
                    | "RandomUniform"
                    | "RandomNormalLike"
                    | "RandomUniformLike"
                    | "Multinomial"
                    | "If"
                    | "Loop"
                    | "Scan"
            )
            && !n.input.is_empty()
            && n.input.iter().all(|x| x.is_empty() || constant.contains(x));
        if pure {
            constant.extend(n.output.iter().cloned());
            foldable.push(i);
        }
    }
    if foldable.is_empty() {
        return Ok((model.clone(), 0));
    }
    let folded_set: HashSet<usize> = foldable.iter().copied().collect();
    // Only the values something else reads need computing.
    let wanted: Vec<String> = foldable
        .iter()
        .flat_map(|&i| g.node[i].output.iter().cloned())
        .filter(|o| {
            graph::is_graph_output(g, o)
                || g.node
                    .iter()
                    .enumerate()
                    .any(|(j, n)| !folded_set.contains(&j) && n.input.contains(o))
        })
        .collect();
    let mut probe = model.clone();
    let pg = probe.graph.as_mut().expect("checked by load");
    pg.node = foldable.iter().map(|&i| g.node[i].clone()).collect();
    pg.input.clear();
    pg.value_info.clear();
    pg.output = wanted.iter().map(|o| graph::untyped_value(o)).collect();
    let mut session = rt.open(&probe, 1)?;
    let values = crate::runtime::run(session.as_mut(), &[])?;
    let mut out = model.clone();
    let og = out.graph.as_mut().expect("checked by load");
    og.node = og
        .node
        .iter()
        .enumerate()
        .filter(|(i, _)| !folded_set.contains(i))
        .map(|(_, n)| n.clone())
        .collect();
    for (name, v) in wanted.iter().zip(values) {
        if graph::is_graph_output(og, name) {
            continue;
        }
        let dims: Vec<i64> = v.shape.iter().map(|&d| d as i64).collect();
        og.initializer.push(TensorProto {
            name: name.clone(),
            dims,
            data_type: onnx_type(v.dtype) as i32,
            raw_data: v.to_raw().to_vec(),
            ..Default::default()
        });
    }
    Ok((out, foldable.len()))
}

/// Nodes none of whose outputs lead to a graph output.
fn remove_dead_nodes(g: &mut GraphProto) -> usize {
    let mut needed: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    let mut keep = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(n.input.iter().filter(|x| !x.is_empty()).cloned());
        }
    }
    let before = g.node.len();
    let mut k = keep.into_iter();
    g.node.retain(|_| k.next().unwrap_or(true));
    g.value_info.retain(|v| needed.contains(&v.name));
    before - g.node.len()
}
