//! Calibration: run the FP32 model over sample images and record each activation's range.
//!
//! * `minmax`: the smallest and largest value seen (ONNX Runtime's default);
//! * `percentile:P`: the P-th percentile of the values at each end (e.g. 99.99), from a
//!   2048-bin histogram per tensor, so a few outliers do not stretch the scale.

use std::collections::HashMap;

use infera_proto::onnx::ModelProto;
use infera_proto::onnx::tensor_proto::DataType;

use crate::OptimizeError;
use crate::data::Images;
use crate::graph;
use crate::runtime::{self, Runtime};

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum Method {
    MinMax,
    Percentile(f64),
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Method, String> {
        if s == "minmax" {
            return Ok(Method::MinMax);
        }
        if let Some(p) = s.strip_prefix("percentile") {
            let p = p.strip_prefix(':').unwrap_or("99.999");
            let v: f64 = p
                .parse()
                .map_err(|_| format!("'{p}' is not a percentile (e.g. percentile:99.99)"))?;
            if !(50.0..=100.0).contains(&v) {
                return Err(format!("percentile {v} is outside 50..100"));
            }
            return Ok(Method::Percentile(v));
        }
        Err(format!(
            "unknown calibration method '{s}' (minmax or percentile[:P])"
        ))
    }
}

const BINS: usize = 2048;

/// `(min, max)` per tensor name, measured over `images` in batches.
pub fn ranges(
    runtime: &Runtime,
    model: &ModelProto,
    tensors: &[String],
    images: &Images,
    batch: usize,
    method: Method,
    mut progress: impl FnMut(usize),
) -> Result<HashMap<String, (f32, f32)>, OptimizeError> {
    let g = graph::graph(model);
    let input = graph::single_input(g)?;
    let input_name = input.name.clone();
    // Graph inputs are measured from the data; everything else is exposed as an output.
    let outputs: Vec<String> = tensors
        .iter()
        .filter(|t| **t != input_name)
        .cloned()
        .collect();
    let mut probe = model.clone();
    let pg = probe.graph.as_mut().expect("checked by load");
    pg.output = outputs
        .iter()
        .map(|t| graph::value_info(t, DataType::Float))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut session = runtime.open(&probe, threads)?;
    let batch = batch.max(1);

    let mut observe = |pass: &mut dyn FnMut(&str, &[f32])| -> Result<(), OptimizeError> {
        for start in (0..images.count).step_by(batch) {
            let end = (start + batch).min(images.count);
            let x = images.batch(start, end)?;
            if tensors.contains(&input_name) {
                pass(&input_name, &runtime::floats(&x, &input_name)?);
            }
            let out = runtime::run(session.as_mut(), &[x])?;
            for (name, t) in outputs.iter().zip(&out) {
                pass(name, &runtime::floats(t, name)?);
            }
            progress(end - start);
        }
        Ok(())
    };
    let mut minmax: HashMap<String, (f32, f32)> = HashMap::new();
    observe(&mut |name, v| {
        let e = minmax
            .entry(name.to_string())
            .or_insert((f32::INFINITY, f32::NEG_INFINITY));
        for &x in v.iter().filter(|x| x.is_finite()) {
            e.0 = e.0.min(x);
            e.1 = e.1.max(x);
        }
    })?;
    let Method::Percentile(p) = method else {
        return Ok(minmax);
    };
    let mut hist: HashMap<String, Vec<u64>> = HashMap::new();
    observe(&mut |name, v| {
        let (lo, hi) = minmax[name];
        let h = hist
            .entry(name.to_string())
            .or_insert_with(|| vec![0; BINS]);
        let width = (hi - lo).max(f32::MIN_POSITIVE);
        for &x in v.iter().filter(|x| x.is_finite()) {
            let b = (((x - lo) / width) * BINS as f32) as usize;
            h[b.min(BINS - 1)] += 1;
        }
    })?;
    Ok(minmax
        .into_iter()
        .map(|(name, (lo, hi))| {
            let range = percentile_range(&hist[&name], lo, hi, p);
            (name, range)
        })
        .collect())
}

/// The values at the `(100 - p)`-th and `p`-th percentiles of a histogram over `[lo, hi]`.
pub fn percentile_range(hist: &[u64], lo: f32, hi: f32, p: f64) -> (f32, f32) {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return (lo, hi);
    }
    let width = (hi - lo) / hist.len() as f32;
    let cut = ((1.0 - p / 100.0) * total as f64).round() as u64;
    let mut seen = 0;
    let mut low = lo;
    for (i, &c) in hist.iter().enumerate() {
        seen += c;
        if seen > cut {
            low = lo + i as f32 * width;
            break;
        }
    }
    seen = 0;
    let mut high = hi;
    for (i, &c) in hist.iter().enumerate().rev() {
        seen += c;
        if seen > cut {
            high = lo + (i + 1) as f32 * width;
            break;
        }
    }
    (low.max(lo), high.min(hi))
}
