//! The in-process ONNX Runtime floor for bench/serve_bench.py: the same backend the server
//! uses, called directly. Prints JSON: p50 latency at batch 1 and throughput at batch 64.
//!
//! cargo run --release -p infera-backend-ort --example floor -- MODEL.onnx SECONDS

use std::path::PathBuf;
use std::time::{Duration, Instant};

use infera_backend_ort::{OrtBackend, find_library};
use infera_core::backend::{Backend, LoadOptions, Session};
use infera_core::{DataType, Tensor};

fn input(session: &dyn Session, batch: usize) -> Vec<Tensor> {
    session
        .signature()
        .inputs
        .iter()
        .map(|spec| {
            let mut shape: Vec<usize> = spec.shape.iter().map(|&d| d.max(1) as usize).collect();
            shape[0] = batch;
            let n: usize = shape.iter().product();
            match spec.dtype {
                DataType::I32 => Tensor::from_slice(shape, &vec![1i32; n]),
                _ => {
                    Tensor::from_slice(shape, &(0..n).map(|i| (i % 255) as f32).collect::<Vec<_>>())
                }
            }
            .expect("valid tensor")
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = PathBuf::from(
        args.get(1)
            .expect("usage: floor MODEL.onnx [SECONDS] [THREADS]"),
    );
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let threads: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2);
    let lib = find_library(None).ok_or_else(|| anyhow::anyhow!("ONNX Runtime not found"))?;
    let backend = OrtBackend::new(&lib)?;
    let opts = LoadOptions {
        intra_op_threads: threads,
        inter_op_threads: 1,
        ..Default::default()
    };
    let mut s = backend.load(&model, &opts)?;
    let one = input(s.as_ref(), 1);
    let mut lat = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(secs / 2.0);
    while Instant::now() < end {
        let t = Instant::now();
        s.run(&one)?;
        lat.push(t.elapsed());
    }
    lat.sort();
    let p50 = lat[lat.len() / 2];
    let many = input(s.as_ref(), 64);
    let (mut n, start) = (0usize, Instant::now());
    while start.elapsed() < Duration::from_secs_f64(secs / 2.0) {
        s.run(&many)?;
        n += 64;
    }
    let throughput = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "{{\"p50_batch1_us\": {:.1}, \"throughput_batch64\": {:.1}, \"threads\": {threads}}}",
        p50.as_secs_f64() * 1e6,
        throughput
    );
    Ok(())
}
