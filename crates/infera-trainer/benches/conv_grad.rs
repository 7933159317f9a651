//! One training step's convolution work on burn flex, split into its parts: the forward conv,
//! forward + input gradient, forward + weight gradient, at the shapes of the baseline CNN's two
//! layers (batch 128). `reference_grad_w` is the weight gradient alone in burn-backend's default
//! formulation (a conv of the swapped input with the swapped output gradient as its kernel),
//! which stock burn flex runs; the trainer's vendored flex computes it with one GEMM per image
//! instead. Compare `forward+grad_w` − `forward` with `reference_grad_w` (docs/benchmarks.md,
//! "Where burn flex's training time goes").
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
        let plain = Device::flex();
        let x = Tensor::<4>::random(input, Distribution::Normal(0.0, 1.0), &plain);
        let g = Tensor::<4>::random(
            [input[0], weight[0], input[2], input[3]],
            Distribution::Normal(0.0, 1.0),
            &plain,
        );
        group.bench_function(format!("{name}/reference_grad_w"), |b| {
            b.iter(|| {
                let swapped = conv2d(
                    x.clone().swap_dims(0, 1),
                    g.clone().swap_dims(0, 1),
                    None,
                    ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
                );
                swapped.swap_dims(0, 1).sum().into_scalar::<f32>()
            })
        });
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
