//! One training step's convolution work on burn flex, split into its parts: the forward conv,
//! forward + input gradient, forward + weight gradient, at the shapes of the baseline CNN's two
//! layers (batch 128). The weight gradient is the part burn computes the slow way (see
//! docs/benchmarks.md, "Where burn flex's training time goes"); this is its before/after gauge.
//!
//! `cargo bench -p infera-trainer --bench conv_grad`

use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use criterion::{Criterion, criterion_group, criterion_main};

fn conv_parts(c: &mut Criterion) {
    let ad = Device::flex().autodiff();
    let mut group = c.benchmark_group("conv_grad");
    group.sample_size(10);
    for (name, input, weight) in [
        ("layer1", [128, 1, 28, 28], [32, 1, 3, 3]),
        ("layer2", [128, 32, 14, 14], [64, 32, 3, 3]),
    ] {
        let x0: Tensor<4> = Tensor::random(input, Distribution::Normal(0.0, 1.0), &ad);
        let w0: Tensor<4> = Tensor::random(weight, Distribution::Normal(0.0, 0.1), &ad);
        let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        for (part, grad_x, grad_w) in [
            ("forward", false, false),
            ("forward+grad_x", true, false),
            ("forward+grad_w", false, true),
        ] {
            group.bench_function(format!("{name}/{part}"), |b| {
                b.iter(|| {
                    let x = if grad_x {
                        x0.clone().require_grad()
                    } else {
                        x0.clone().detach()
                    };
                    let w = if grad_w {
                        w0.clone().require_grad()
                    } else {
                        w0.clone().detach()
                    };
                    let y = conv2d(x, w, None, opts.clone()).sum();
                    if grad_x || grad_w {
                        drop(y.backward());
                    } else {
                        y.into_scalar::<f32>();
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Plots need system fonts that a bare machine may not have; the numbers are what count.
    config = Criterion::default().without_plots();
    targets = conv_parts
}
criterion_main!(benches);
