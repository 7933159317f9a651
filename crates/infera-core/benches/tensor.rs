//! Hot paths of batching and decoding, beside a plain memcpy of the same bytes as the
//! baseline measured in the same run.
//!
//! cargo bench -p infera-core --bench tensor

use bytes::Bytes;
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use infera_core::{DataType, Tensor};

fn image(batch: usize) -> Tensor {
    let v: Vec<f32> = (0..batch * 784).map(|i| (i % 255) as f32).collect();
    Tensor::from_slice(vec![batch, 1, 28, 28], &v).expect("valid")
}

fn benches(c: &mut Criterion) {
    let parts: Vec<Tensor> = (0..16).map(|_| image(1)).collect();
    let refs: Vec<&Tensor> = parts.iter().collect();
    let raw: Vec<Bytes> = parts.iter().map(Tensor::to_raw).collect();
    c.bench_function("baseline: memcpy 16 x 3136 B", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(16 * 3136);
            for r in &raw {
                out.extend_from_slice(black_box(r));
            }
            out
        })
    });
    c.bench_function("concat 16 x [1,1,28,28] f32", |b| {
        b.iter(|| Tensor::concat(black_box(&refs)).expect("same shapes"))
    });
    let joined = Tensor::concat(&refs).expect("same shapes");
    let sizes = [1usize; 16];
    c.bench_function("split [16,1,28,28] into 16", |b| {
        b.iter(|| joined.split(black_box(&sizes)).expect("fits"))
    });
    let json = serde_json::Value::Array((0..784).map(|i| ((i % 255) as f64).into()).collect());
    c.bench_function("from_json 784 FP32 values", |b| {
        b.iter(|| {
            Tensor::from_json(DataType::F32, vec![1, 1, 28, 28], black_box(&json)).expect("valid")
        })
    });
    let raw_one = raw[0].clone();
    c.bench_function("from_raw 3136 B FP32 (binary extension)", |b| {
        b.iter(|| {
            Tensor::from_raw(
                DataType::F32,
                vec![1, 1, 28, 28],
                black_box(raw_one.clone()),
            )
            .expect("valid")
        })
    });
}

criterion_group!(tensor, benches);
criterion_main!(tensor);
