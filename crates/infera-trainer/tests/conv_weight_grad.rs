//! The trainer's burn flex is a vendored copy with its own conv2d weight gradient
//! (vendor/burn-flex/src/ops/conv_weight_grad.rs). Through burn's public API, the gradient that
//! autodiff hands the optimizer must equal burn-backend's reference formulation: a convolution
//! of the batch/channel-swapped input with the swapped output gradient as its kernel.

use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

struct Case {
    input: [usize; 4],
    weight: [usize; 4],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
}

fn autodiff_weight_grad(case: &Case, x: &Tensor<4>, g: &Tensor<4>) -> Tensor<4> {
    let ad = Device::flex().autodiff();
    let x = Tensor::<4>::from_data(x.to_data(), &ad);
    let g = Tensor::<4>::from_data(g.to_data(), &ad);
    let w = Tensor::<4>::random(case.weight, Distribution::Normal(0.0, 0.1), &ad).require_grad();
    let options = ConvOptions::new(case.stride, case.padding, case.dilation, 1);
    let y = conv2d(x, w.clone(), None, options);
    let grads = (y * g).sum().backward();
    let grad = w.grad(&grads).expect("the weight requires a gradient");
    Tensor::<4>::from_data(grad.to_data(), &Device::flex())
}

fn reference_weight_grad(case: &Case, x: &Tensor<4>, g: &Tensor<4>) -> Tensor<4> {
    let options = ConvOptions::new(case.dilation, case.padding, case.stride, 1);
    let swapped = conv2d(
        x.clone().swap_dims(0, 1),
        g.clone().swap_dims(0, 1),
        None,
        options,
    );
    let [co, ci, kh, kw] = case.weight;
    swapped.swap_dims(0, 1).slice([0..co, 0..ci, 0..kh, 0..kw])
}

fn output_size(case: &Case) -> [usize; 2] {
    [0, 1].map(|a| {
        (case.input[2 + a] + 2 * case.padding[a] - case.dilation[a] * (case.weight[2 + a] - 1) - 1)
            / case.stride[a]
            + 1
    })
}

#[test]
fn autodiff_weight_gradient_matches_burns_reference_formulation() {
    let device = Device::flex();
    let cases = [
        // The shipped CNN's two layers, at a small batch.
        Case {
            input: [6, 1, 28, 28],
            weight: [8, 1, 3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
        },
        Case {
            input: [6, 8, 14, 14],
            weight: [16, 8, 3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
        },
        // The ResNet's stride-2 3×3 and its 1×1 stride-2 shortcut.
        Case {
            input: [4, 8, 14, 14],
            weight: [16, 8, 3, 3],
            stride: [2, 2],
            padding: [1, 1],
            dilation: [1, 1],
        },
        Case {
            input: [4, 8, 14, 14],
            weight: [16, 8, 1, 1],
            stride: [2, 2],
            padding: [0, 0],
            dilation: [1, 1],
        },
        // Odd kernel, mixed strides and dilation.
        Case {
            input: [3, 3, 11, 13],
            weight: [4, 3, 5, 3],
            stride: [2, 1],
            padding: [2, 0],
            dilation: [1, 2],
        },
    ];
    for case in &cases {
        let [ho, wo] = output_size(case);
        let x = Tensor::<4>::random(case.input, Distribution::Normal(0.0, 1.0), &device);
        let g = Tensor::<4>::random(
            [case.input[0], case.weight[0], ho, wo],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let ours: Vec<f32> = autodiff_weight_grad(case, &x, &g)
            .into_data()
            .try_to_vec()
            .unwrap();
        let reference: Vec<f32> = reference_weight_grad(case, &x, &g)
            .into_data()
            .try_to_vec()
            .unwrap();
        assert_eq!(ours.len(), reference.len());
        let scale = reference.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let worst = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 1e-5 * scale,
            "input {:?}, weight {:?}, stride {:?}: max |difference| {worst} (max |dW| {scale})",
            case.input,
            case.weight,
            case.stride
        );
    }
}
