//! `infera optimize prune`: magnitude pruning of a trained checkpoint, fine-tuning, export.
//!
//! * structured (`--structured`, the CNN): whole conv channels and hidden units with the
//!   smallest L1 norm go (a conv filter is judged with its BatchNorm scale, which is what the
//!   exported, folded filter will be), and the layers after them lose the matching inputs. The
//!   model gets narrower, so the exported file and the FLOPs shrink.
//! * unstructured (default, any architecture): the smallest weights of every conv and linear
//!   layer are set to zero and kept at zero while fine-tuning. The dense ONNX file keeps its
//!   size; it compresses well and sparse kernels can use it.

use std::collections::HashMap;

use anyhow::bail;
use burn::module::{ModuleMapper, Param, ParamId, RunningState};
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::model::{Architecture, Classifier, Cnn, ConvBn};

fn values<const D: usize>(t: Tensor<D>) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read weights: {e:?}"))
}

fn tensor<const D: usize>(v: Vec<f32>, dims: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v, dims), device)
}

/// The entries of a row-major tensor with `dims` whose index along `axis` is in `keep`.
pub fn gather(data: &[f32], dims: &[usize], axis: usize, keep: &[usize]) -> Vec<f32> {
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(outer * keep.len() * inner);
    for o in 0..outer {
        for &k in keep {
            let start = (o * dims[axis] + k) * inner;
            out.extend_from_slice(&data[start..start + inner]);
        }
    }
    out
}

/// The `n` indices with the largest scores, in increasing index order.
pub fn top(scores: &[f32], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(n.clamp(1, scores.len()));
    idx.sort_unstable();
    idx
}

/// How many of `count` channels stay, rounded to a multiple of `multiple` (SIMD kernels work
/// in blocks of 8 or 16 channels: 24 channels can run faster than 22).
fn kept(count: usize, amount: f64, multiple: usize) -> usize {
    let n = ((count as f64 * (1.0 - amount)).round() as usize).clamp(1, count);
    let m = multiple.max(1);
    if m == 1 || count < m {
        return n;
    }
    (((n as f64 / m as f64).round() as usize) * m).clamp(m, count)
}

/// L1 norm of each output channel of a conv+BN block, with the BN scale applied.
fn conv_importance(block: &ConvBn) -> anyhow::Result<Vec<f32>> {
    let [out_c, ..] = block.conv.weight.val().dims();
    let w = values(block.conv.weight.val())?;
    let gamma = values(block.bn.gamma.val())?;
    let var = values(block.bn.running_var.value())?;
    let per = w.len() / out_c;
    Ok((0..out_c)
        .map(|o| {
            let scale = gamma[o].abs() / (var[o] + block.bn.epsilon as f32).sqrt();
            w[o * per..(o + 1) * per]
                .iter()
                .map(|v| v.abs())
                .sum::<f32>()
                * scale
        })
        .collect())
}

/// `block` keeping output channels `keep_out` and input channels `keep_in`.
fn prune_conv_bn(
    block: &ConvBn,
    fresh: &mut ConvBn,
    keep_in: Option<&[usize]>,
    keep_out: &[usize],
    device: &Device,
) -> anyhow::Result<()> {
    let dims = block.conv.weight.val().dims();
    let mut w = gather(&values(block.conv.weight.val())?, &dims, 0, keep_out);
    let mut d = [keep_out.len(), dims[1], dims[2], dims[3]];
    if let Some(keep_in) = keep_in {
        w = gather(&w, &d, 1, keep_in);
        d[1] = keep_in.len();
    }
    fresh.conv.weight = Param::from_tensor(tensor(w, d, device));
    let pick = |t: Tensor<1>| -> anyhow::Result<Tensor<1>> {
        let v = gather(&values(t)?, &[dims[0]], 0, keep_out);
        Ok(tensor(v, [keep_out.len()], device))
    };
    fresh.bn.gamma = Param::from_tensor(pick(block.bn.gamma.val())?);
    fresh.bn.beta = Param::from_tensor(pick(block.bn.beta.val())?);
    fresh.bn.running_mean = RunningState::new(pick(block.bn.running_mean.value())?);
    fresh.bn.running_var = RunningState::new(pick(block.bn.running_var.value())?);
    Ok(())
}

/// Structured pruning of the CNN: `amount` of the channels of both convs and of the hidden
/// units go. Returns the narrower model and its architecture.
pub fn structured(
    model: &Classifier,
    arch: &Architecture,
    classes: usize,
    amount: f64,
    multiple: usize,
    device: &Device,
) -> anyhow::Result<(Classifier, Architecture)> {
    let (Classifier::Cnn(m), Architecture::Cnn { dropout, .. }) = (model, arch) else {
        bail!(
            "structured pruning supports the cnn architecture; for {} use unstructured pruning (drop --structured)",
            arch.name()
        );
    };
    let keep1 = top(
        &conv_importance(&m.block1)?,
        kept(m.block1.bn.gamma.val().dims()[0], amount, multiple),
    );
    let keep2 = top(
        &conv_importance(&m.block2)?,
        kept(m.block2.bn.gamma.val().dims()[0], amount, multiple),
    );
    let [fc_in, hidden] = m.fc1.weight.val().dims();
    let spatial = fc_in / m.block2.bn.gamma.val().dims()[0];
    let fc1_w = values(m.fc1.weight.val())?;
    // Inputs of fc1 that came from a removed channel go too.
    let rows: Vec<usize> = keep2
        .iter()
        .flat_map(|&c| (c * spatial)..((c + 1) * spatial))
        .collect();
    let fc1_w = gather(&fc1_w, &[fc_in, hidden], 0, &rows);
    let hidden_scores: Vec<f32> = (0..hidden)
        .map(|j| (0..rows.len()).map(|i| fc1_w[i * hidden + j].abs()).sum())
        .collect();
    let keep_h = top(&hidden_scores, kept(hidden, amount, multiple));

    let new_arch = Architecture::Cnn {
        channels: [keep1.len(), keep2.len()],
        hidden: keep_h.len(),
        dropout: *dropout,
    };
    let Classifier::Cnn(mut fresh) = new_arch.init(classes, device) else {
        bail!("internal: cnn architecture built another model");
    };
    prune_conv_bn(&m.block1, &mut fresh.block1, None, &keep1, device)?;
    prune_conv_bn(&m.block2, &mut fresh.block2, Some(&keep1), &keep2, device)?;
    let w1 = gather(&fc1_w, &[rows.len(), hidden], 1, &keep_h);
    fresh.fc1.weight = Param::from_tensor(tensor(w1, [rows.len(), keep_h.len()], device));
    if let Some(b) = &m.fc1.bias {
        let v = gather(&values(b.val())?, &[hidden], 0, &keep_h);
        fresh.fc1.bias = Some(Param::from_tensor(tensor(v, [keep_h.len()], device)));
    }
    let [_, out] = m.fc2.weight.val().dims();
    let w2 = gather(&values(m.fc2.weight.val())?, &[hidden, out], 0, &keep_h);
    fresh.fc2.weight = Param::from_tensor(tensor(w2, [keep_h.len(), out], device));
    if let Some(b) = &m.fc2.bias {
        fresh.fc2.bias = Some(Param::from_tensor(b.val()));
    }
    Ok((Classifier::Cnn(Cnn { ..fresh }), new_arch))
}

/// Zeroes the smallest `amount` of each weight matrix / filter bank (rank ≥ 2) and remembers
/// the masks, so fine-tuning can keep them at zero.
pub struct Magnitude {
    pub amount: f64,
    pub masks: HashMap<ParamId, (Vec<f32>, Vec<usize>)>,
}

impl ModuleMapper for Magnitude {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if D < 2 {
            return param;
        }
        let id = param.id;
        let amount = self.amount;
        let mut mask = None;
        let p = param.map(|w| {
            let dims = w.dims();
            let device = w.device();
            let Ok(v) = values(w.clone()) else {
                return w;
            };
            let mut mags: Vec<f32> = v.iter().map(|x| x.abs()).collect();
            let cut = ((v.len() as f64) * amount).floor() as usize;
            if cut == 0 {
                return w;
            }
            mags.sort_by(f32::total_cmp);
            let threshold = mags[cut - 1];
            // Ties at the threshold: zero exactly `cut` weights, the first ones found.
            let mut left = cut;
            let m: Vec<f32> = v
                .iter()
                .map(|x| {
                    if left > 0 && x.abs() <= threshold {
                        left -= 1;
                        0.0
                    } else {
                        1.0
                    }
                })
                .collect();
            let masked: Vec<f32> = v.iter().zip(&m).map(|(a, b)| a * b).collect();
            mask = Some((m, dims.to_vec()));
            Tensor::from_data(TensorData::new(masked, dims), &device)
        });
        if let Some(m) = mask {
            self.masks.insert(id, m);
        }
        p
    }
}

/// Multiplies the weights by their masks again (after each optimizer step).
pub struct KeepZero<'a>(pub &'a HashMap<ParamId, (Vec<f32>, Vec<usize>)>);

impl ModuleMapper for KeepZero<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some((mask, dims)) = self.0.get(&param.id) else {
            return param;
        };
        let Ok(dims) = <[usize; D]>::try_from(dims.as_slice()) else {
            return param;
        };
        param.map(|w| {
            let grad = w.is_require_grad();
            let m: Tensor<D> = Tensor::from_data(TensorData::new(mask.clone(), dims), &w.device());
            w.mul(m).detach().set_require_grad(grad)
        })
    }
}

/// Share of exactly-zero weights in rank ≥ 2 parameters, and the count of all parameters.
pub fn sparsity(model: &Classifier) -> (f64, usize) {
    struct Count {
        zero: usize,
        weights: usize,
        all: usize,
    }
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let v = param.val();
            self.all += v.shape().num_elements();
            if D >= 2 {
                let vals = v
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap_or_default();
                self.weights += vals.len();
                self.zero += vals.iter().filter(|x| **x == 0.0).count();
            }
        }
    }
    let mut c = Count {
        zero: 0,
        weights: 0,
        all: 0,
    };
    model.visit(&mut c);
    (c.zero as f64 / c.weights.max(1) as f64, c.all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_picks_along_an_axis() {
        // 2×3 matrix, keep columns 0 and 2; then rows 1.
        let m = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(gather(&m, &[2, 3], 1, &[0, 2]), vec![1.0, 3.0, 4.0, 6.0]);
        assert_eq!(gather(&m, &[2, 3], 0, &[1]), vec![4.0, 5.0, 6.0]);
    }

    #[test]
    fn top_keeps_the_largest_in_index_order() {
        assert_eq!(top(&[0.1, 5.0, 0.3, 4.0], 2), vec![1, 3]);
        assert_eq!(top(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
        assert_eq!(kept(32, 0.3, 1), 22);
        assert_eq!(kept(1, 0.99, 1), 1);
        // Rounded to blocks of 8: 22.4 -> 24, 44.8 -> 48, 89.6 -> 88; never below one block.
        assert_eq!(kept(32, 0.3, 8), 24);
        assert_eq!(kept(64, 0.3, 8), 48);
        assert_eq!(kept(128, 0.3, 8), 88);
        assert_eq!(kept(16, 0.9, 8), 8);
    }

    fn small_cnn(device: &Device) -> (Architecture, Classifier) {
        let arch = Architecture::Cnn {
            channels: [4, 6],
            hidden: 10,
            dropout: 0.0,
        };
        let model = arch.init(3, device).valid();
        (arch, model)
    }

    #[test]
    fn structured_pruning_narrows_every_layer_and_the_model_still_runs() {
        let device = Device::flex();
        let (arch, model) = small_cnn(&device);
        let (pruned, new_arch) = structured(&model, &arch, 3, 0.5, 1, &device).unwrap();
        assert_eq!(
            new_arch,
            Architecture::Cnn {
                channels: [2, 3],
                hidden: 5,
                dropout: 0.0
            }
        );
        let x = Tensor::<4>::from_data(
            TensorData::new(
                (0..2 * 784).map(|i| (i % 255) as f32).collect::<Vec<_>>(),
                [2, 1, 28, 28],
            ),
            &device,
        );
        let y = pruned.valid().forward(x);
        assert_eq!(y.dims(), [2, 3]);
    }

    #[test]
    fn magnitude_pruning_zeroes_the_smallest_share_and_fine_tuning_keeps_them_zero() {
        let device = Device::flex();
        let (_, model) = small_cnn(&device);
        let mut mag = Magnitude {
            amount: 0.5,
            masks: HashMap::new(),
        };
        let pruned = model.map(&mut mag);
        let (s, _) = sparsity(&pruned);
        assert!((s - 0.5).abs() < 0.01, "sparsity {s}");
        // Any change to the weights is undone where the mask is zero.
        struct AddOne;
        impl ModuleMapper for AddOne {
            fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
                p.map(|w| w.add_scalar(1.0))
            }
        }
        let moved = pruned.map(&mut AddOne).map(&mut KeepZero(&mag.masks));
        let (s2, _) = sparsity(&moved);
        assert!((s2 - 0.5).abs() < 0.01, "sparsity after a step {s2}");
    }
}
