//! The two architectures infera trains: the baseline CNN and a small ResNet. Both take raw
//! pixels (0..255) and normalise inside `forward`, so the exported graph does the same and no
//! client can get preprocessing wrong.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

/// Fashion-MNIST's pixel statistics (over the 60,000 training images, on the 0..1 scale).
pub const PIXEL_MEAN: f32 = 0.2860;
pub const PIXEL_STD: f32 = 0.3530;

/// `x * NORM_SCALE + NORM_SHIFT` turns a raw 0..255 pixel into a normalised one.
pub const NORM_SCALE: f32 = 1.0 / (255.0 * PIXEL_STD);
pub const NORM_SHIFT: f32 = -PIXEL_MEAN / PIXEL_STD;

/// What `config.json` records about a model: enough to rebuild it before loading weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "architecture", rename_all = "snake_case")]
pub enum Architecture {
    /// conv-bn-relu-pool ×2 → fc → dropout → fc.
    Cnn {
        channels: [usize; 2],
        hidden: usize,
        dropout: f64,
    },
    /// Stem conv, three residual stages (the last two halve the size), global pooling, fc.
    ResnetSmall { channels: [usize; 3], dropout: f64 },
}

impl Architecture {
    pub fn name(&self) -> &'static str {
        match self {
            Architecture::Cnn { .. } => "cnn",
            Architecture::ResnetSmall { .. } => "resnet_small",
        }
    }

    pub fn init(&self, classes: usize, device: &Device) -> Classifier {
        match *self {
            Architecture::Cnn {
                channels,
                hidden,
                dropout,
            } => Classifier::Cnn(Cnn::new(channels, hidden, dropout, classes, device)),
            Architecture::ResnetSmall { channels, dropout } => {
                Classifier::ResnetSmall(ResnetSmall::new(channels, dropout, classes, device))
            }
        }
    }
}

// One model lives per run, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Classifier {
    Cnn(Cnn),
    ResnetSmall(ResnetSmall),
}

impl Classifier {
    /// Logits `[N, classes]` for raw pixels `[N, 1, H, W]` in 0..255.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        let x = pixels.mul_scalar(NORM_SCALE).add_scalar(NORM_SHIFT);
        match self {
            Classifier::Cnn(m) => m.forward(x),
            Classifier::ResnetSmall(m) => m.forward(x),
        }
    }
}

/// conv 3×3 (same padding, no bias: BatchNorm follows) → BatchNorm.
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

impl ConvBn {
    fn new(input: usize, output: usize, kernel: usize, stride: usize, device: &Device) -> Self {
        let pad = kernel / 2;
        ConvBn {
            conv: Conv2dConfig::new([input, output], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(output).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(self.conv.forward(x))
    }
}

#[derive(Module, Debug)]
pub struct Cnn {
    pub block1: ConvBn,
    pub block2: ConvBn,
    pub pool: MaxPool2d,
    pub fc1: Linear,
    pub dropout: Dropout,
    pub fc2: Linear,
}

impl Cnn {
    fn new(
        channels: [usize; 2],
        hidden: usize,
        dropout: f64,
        classes: usize,
        device: &Device,
    ) -> Self {
        Cnn {
            block1: ConvBn::new(1, channels[0], 3, 1, device),
            block2: ConvBn::new(channels[0], channels[1], 3, 1, device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc1: LinearConfig::new(channels[1] * 7 * 7, hidden).init(device),
            dropout: DropoutConfig::new(dropout).init(),
            fc2: LinearConfig::new(hidden, classes).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(relu(self.block1.forward(x)));
        let x = self.pool.forward(relu(self.block2.forward(x)));
        let x: Tensor<2> = x.flatten(1, 3);
        let x = self.dropout.forward(relu(self.fc1.forward(x)));
        self.fc2.forward(x)
    }
}

/// The basic residual block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)).
#[derive(Module, Debug)]
pub struct Residual {
    pub first: ConvBn,
    pub second: ConvBn,
    /// 1×1 conv + BN when the block changes channels or size.
    pub shortcut: Option<ConvBn>,
}

impl Residual {
    fn new(input: usize, output: usize, stride: usize, device: &Device) -> Self {
        Residual {
            first: ConvBn::new(input, output, 3, stride, device),
            second: ConvBn::new(output, output, 3, 1, device),
            shortcut: (input != output || stride != 1)
                .then(|| ConvBn::new(input, output, 1, stride, device)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let skip = match &self.shortcut {
            Some(s) => s.forward(x.clone()),
            None => x.clone(),
        };
        let y = self.second.forward(relu(self.first.forward(x)));
        relu(y + skip)
    }
}

#[derive(Module, Debug)]
pub struct ResnetSmall {
    pub stem: ConvBn,
    pub stage1: Residual,
    pub stage2: Residual,
    pub stage3: Residual,
    pub pool: AdaptiveAvgPool2d,
    pub dropout: Dropout,
    pub fc: Linear,
}

impl ResnetSmall {
    fn new(channels: [usize; 3], dropout: f64, classes: usize, device: &Device) -> Self {
        ResnetSmall {
            stem: ConvBn::new(1, channels[0], 3, 1, device),
            stage1: Residual::new(channels[0], channels[0], 1, device),
            stage2: Residual::new(channels[0], channels[1], 2, device),
            stage3: Residual::new(channels[1], channels[2], 2, device),
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dropout: DropoutConfig::new(dropout).init(),
            fc: LinearConfig::new(channels[2], classes).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = relu(self.stem.forward(x));
        let x = self
            .stage3
            .forward(self.stage2.forward(self.stage1.forward(x)));
        let x: Tensor<2> = self.pool.forward(x).flatten(1, 3);
        self.fc.forward(self.dropout.forward(x))
    }
}
