//! The training loop, written out by hand (burn's Learner measured ~8x slower here): seeded
//! shuffling and augmentation, the LR schedule per step, validation every epoch, early
//! stopping on validation accuracy, best and final checkpoints.

use std::time::Instant;

use anyhow::Context;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use indicatif::{ProgressBar, ProgressStyle};
use infera_train::data::{Rng, Split};
use infera_train::plots::EpochRecord;

use crate::augment::augment;
use crate::model::Classifier;
use crate::recipe::{AugmentConfig, OptimizerName, Recipe};
use crate::resume::{self, LoopState, Resumed};

/// Called after every epoch with its record (checkpointing, logging, MLflow).
pub trait EpochSink {
    fn epoch_end(
        &mut self,
        record: &EpochRecord,
        model: &Classifier,
        best: bool,
    ) -> anyhow::Result<()>;

    /// Called after `epoch_end` with everything a resumed run needs (default: not kept).
    fn resume_point(
        &mut self,
        _model: &Classifier,
        _optimizer: &ModuleOptimizer,
        _state: &LoopState,
    ) -> anyhow::Result<()> {
        Ok(())
    }
}

pub struct TrainSummary {
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub best_val_accuracy: f64,
    pub stopped_early: bool,
    pub final_model: Classifier,
}

/// Raw pixels of `split[indices]` as a `[N, 1, H, W]` tensor, augmented when asked.
fn batch_tensor(
    split: &Split,
    indices: &[usize],
    augmentation: Option<(&AugmentConfig, &mut Rng)>,
    device: &Device,
) -> Tensor<4> {
    let (h, w) = (split.rows, split.cols);
    let mut pixels = vec![0f32; indices.len() * h * w];
    match augmentation {
        Some((cfg, rng)) => {
            for (out, &i) in pixels.chunks_exact_mut(h * w).zip(indices) {
                augment(split.image(i), w, h, cfg, rng, out);
            }
        }
        None => {
            for (out, &i) in pixels.chunks_exact_mut(h * w).zip(indices) {
                for (o, &p) in out.iter_mut().zip(split.image(i)) {
                    *o = f32::from(p);
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(pixels, [indices.len(), 1, h, w]), device)
}

fn label_tensor(split: &Split, indices: &[usize], device: &Device) -> Tensor<1, Int> {
    let labels: Vec<i64> = indices
        .iter()
        .map(|&i| i64::from(split.labels[i]))
        .collect();
    Tensor::from_data(TensorData::new(labels, [indices.len()]), device)
}

/// Logits `[N × classes]` (row-major) of a model in inference mode over a whole split.
pub fn logits(model: &Classifier, split: &Split, device: &Device, batch: usize) -> Vec<f32> {
    let mut out = Vec::new();
    let all: Vec<usize> = (0..split.len()).collect();
    for chunk in all.chunks(batch.max(1)) {
        let x = batch_tensor(split, chunk, None, device);
        let y = model.forward(x).into_data();
        out.extend(y.iter::<f32>());
    }
    out
}

pub fn argmax_rows(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks_exact(classes)
        .map(infera_train::metrics::argmax)
        .collect()
}

/// Mean cross-entropy and accuracy of `logits` against `labels`.
fn loss_and_accuracy(logits: &[f32], labels: &[u8], classes: usize) -> (f64, f64) {
    let mut loss = 0.0;
    let mut correct = 0usize;
    for (row, &label) in logits.chunks_exact(classes).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
        loss += sum.ln() - f64::from(row[label as usize] - max);
        correct += usize::from(infera_train::metrics::argmax(row) == label as usize);
    }
    let n = labels.len().max(1) as f64;
    (loss / n, correct as f64 / n)
}

/// One optimizer type for all three: burn 0.22's `init()` returns a `ModuleOptimizer`.
fn optimizer(recipe: &Recipe) -> ModuleOptimizer {
    let o = &recipe.optimizer;
    let decay = (o.weight_decay > 0.0).then(|| WeightDecayConfig::new(o.weight_decay as f32));
    match o.name {
        OptimizerName::Adam => AdamConfig::new().with_weight_decay(decay).init(),
        OptimizerName::Adamw => AdamWConfig::new()
            .with_weight_decay(o.weight_decay as f32)
            .init(),
        OptimizerName::Sgd => SgdConfig::new()
            .with_weight_decay(decay)
            .with_momentum(Some(MomentumConfig::new().with_momentum(o.momentum)))
            .init(),
    }
}

/// Where training starts and what it keeps fixed: fine-tuning a pruned model starts from its
/// weights and keeps its pruned weights at zero after every step.
#[derive(Default)]
pub struct Start {
    pub model: Option<Classifier>,
    pub after_step: Option<Box<dyn Fn(Classifier) -> Classifier>>,
    /// Continue an interrupted run from its last finished epoch.
    pub resume: Option<Resumed>,
}

/// The device RNG (dropout) is seeded afresh each epoch, so a resumed run draws what an
/// uninterrupted one would without saving the backend's RNG.
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Trains `recipe.model` on `train`, choosing by accuracy on `validation`.
#[allow(clippy::too_many_arguments)]
pub fn train(
    recipe: &Recipe,
    classes: usize,
    train: &Split,
    validation: &Split,
    device: &Device,
    show_progress: bool,
    sink: &mut dyn EpochSink,
    start: Start,
) -> anyhow::Result<TrainSummary> {
    device.seed(recipe.seed);
    let ad = device.clone().autodiff();
    let mut optim = optimizer(recipe);
    let mut rng = Rng::new(recipe.seed ^ 0x5EED_0FDA_7A00);
    let mut history = Vec::new();
    let (mut best_acc, mut best_epoch, mut since_best) = (-1.0f64, 0usize, 0usize);
    let mut stopped_early = false;
    let mut first_epoch = 1;
    let mut model = match (start.resume, start.model) {
        (Some(r), _) => {
            let model = resume::with_param_ids(r.model.to_device(&ad).train(), &r.state.param_ids)?;
            optim = optim.load(&r.optimizer_file).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the optimizer state {}: {e}",
                    r.optimizer_file.display()
                )
            })?;
            let st = r.state;
            rng = Rng::new(st.rng);
            (best_acc, best_epoch, since_best) = (st.best_accuracy, st.best_epoch, st.since_best);
            stopped_early = st.stopped_early;
            history = st.history;
            first_epoch = st.epoch + 1;
            model
        }
        (None, Some(m)) => m.to_device(&ad).train(),
        (None, None) => recipe.model.init(classes, &ad),
    };
    let mut loss_fn = CrossEntropyLossConfig::new();
    if recipe.train.label_smoothing > 0.0 {
        loss_fn = loss_fn.with_smoothing(Some(recipe.train.label_smoothing));
    }
    let loss_fn = loss_fn.init(&ad);
    let epochs = recipe.train.epochs;
    let batch = recipe.train.batch_size;
    let steps = train.len().div_ceil(batch);
    if stopped_early {
        first_epoch = epochs + 1;
    }

    for epoch in first_epoch..=epochs {
        device.seed(epoch_seed(recipe.seed, epoch));
        let started = Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        rng.shuffle(&mut order);
        let bar = if show_progress {
            ProgressBar::new(steps as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .context("progress bar template")?
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("epoch {epoch}/{epochs}"));
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut lr = 0.0;
        for (step, idx) in order.chunks(batch).enumerate() {
            lr = recipe.schedule.lr(
                recipe.optimizer.lr,
                (epoch - 1) as f64 + step as f64 / steps as f64,
                epochs,
            );
            let x = batch_tensor(train, idx, Some((&recipe.augment, &mut rng)), &ad);
            let y = label_tensor(train, idx, &ad);
            let out = model.forward(x);
            let loss = loss_fn.forward(out.clone(), y.clone());
            let predicted = out.clone().detach().argmax(1).flatten::<1>(0, 1);
            let hits: i64 = predicted.equal(y).int().sum().into_scalar::<i64>();
            let loss_value: f32 = loss.clone().detach().into_scalar::<f32>();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            if let Some(f) = &start.after_step {
                model = f(model);
            }
            loss_sum += f64::from(loss_value) * idx.len() as f64;
            correct += hits as usize;
            seen += idx.len();
            if step % 10 == 0 || step + 1 == steps {
                bar.set_message(format!(
                    "loss {:.4} acc {:.2}% lr {lr:.2e}",
                    loss_sum / seen as f64,
                    100.0 * correct as f64 / seen as f64
                ));
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let train_seconds = started.elapsed().as_secs_f64();
        let eval = model.valid();
        let val_logits = logits(&eval, validation, device, 500);
        let (val_loss, val_acc) = loss_and_accuracy(&val_logits, &validation.labels, classes);
        let record = EpochRecord {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val_loss,
            val_accuracy: val_acc,
            lr,
            seconds: train_seconds,
        };
        let improved = val_acc > best_acc;
        if improved {
            best_acc = val_acc;
            best_epoch = epoch;
            since_best = 0;
        } else {
            since_best += 1;
        }
        sink.epoch_end(&record, &eval, improved)?;
        history.push(record);
        let patience = recipe.train.early_stopping_patience;
        if patience > 0 && since_best >= patience && epoch < epochs {
            stopped_early = true;
        }
        let state = LoopState {
            epoch,
            rng: rng.state(),
            best_accuracy: best_acc,
            best_epoch,
            since_best,
            stopped_early,
            history: history.clone(),
            param_ids: resume::param_ids(&model),
        };
        sink.resume_point(&eval, &optim, &state)?;
        if stopped_early {
            tracing::info!(
                epoch,
                best_epoch,
                "early stop: no validation improvement for {patience} epochs"
            );
            break;
        }
    }
    Ok(TrainSummary {
        history,
        best_epoch,
        best_val_accuracy: best_acc,
        stopped_early,
        final_model: model.valid(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_accuracy_match_hand_computation() {
        // Two examples, two classes: uniform logits (loss ln 2, counts as class 0) and a
        // confident right answer.
        let logits = [0.0, 0.0, 0.0, 10.0];
        let (loss, acc) = loss_and_accuracy(&logits, &[1, 1], 2);
        let expected = (2f64.ln() + (1.0 + (-10f64).exp()).ln()) / 2.0;
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
        assert_eq!(acc, 0.5);
    }
}
