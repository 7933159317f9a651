//! One training run and everything it leaves behind in `runs/<id>/`: the resolved config,
//! `train.log`, `checkpoints/{best,final}/`, `metrics.json` and the plots, optionally mirrored
//! to MLflow.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::prelude::*;
use infera_train::data::split_validation;
use infera_train::metrics::Metrics;
use infera_train::plots::{self, EpochRecord};
use serde_json::json;

use crate::checkpoint::{self, CheckpointConfig, InputSpec};
use crate::dataset::{self, IMAGE_SIDE};
use crate::mlflow::{self, Mlflow};
use crate::model::Classifier;
use crate::recipe::Recipe;
use crate::resume::{self, LoopState};
use crate::train::{self, EpochSink};

pub struct RunOptions {
    pub run_dir: PathBuf,
    pub device: Device,
    /// The backend's name, recorded in checkpoints.
    pub backend: String,
    pub progress: bool,
    /// Evaluate the best checkpoint on the test set (final runs; sweeps choose on validation).
    pub evaluate_test: bool,
    pub mlflow_uri: Option<String>,
    pub mlflow_experiment: String,
    /// Start from these weights instead of a fresh model (fine-tuning).
    pub start: train::Start,
    /// Continue the run in `run_dir` from its last resume point.
    pub resume: bool,
}

pub struct RunResult {
    pub run_dir: PathBuf,
    pub best_epoch: usize,
    pub best_val_accuracy: f64,
    pub test: Option<Metrics>,
    pub seconds_per_epoch: f64,
}

/// A run id that sorts by time: `20261122-153012-cnn`.
pub fn new_run_id(recipe: &Recipe) -> String {
    format!(
        "{}-{}",
        chrono::Local::now().format("%Y%m%d-%H%M%S"),
        recipe.model.name()
    )
}

struct Sink<'a> {
    run_dir: &'a Path,
    log: std::fs::File,
    recipe: &'a Recipe,
    classes: &'a [String],
    mlflow: Option<&'a Mlflow>,
    backend: &'a str,
}

impl Sink<'_> {
    fn checkpoint_config(&self, record: &EpochRecord) -> CheckpointConfig {
        CheckpointConfig {
            model: self.recipe.model.clone(),
            classes: self.classes.to_vec(),
            input: InputSpec::grayscale(IMAGE_SIDE),
            epoch: record.epoch,
            val_accuracy: record.val_accuracy,
            seed: self.recipe.seed,
            framework: format!("burn 0.22.1 ({})", self.backend),
        }
    }
}

impl EpochSink for Sink<'_> {
    fn epoch_end(&mut self, r: &EpochRecord, model: &Classifier, best: bool) -> anyhow::Result<()> {
        let line = format!(
            "epoch {:>3}  train loss {:.4} acc {:.2}%  val loss {:.4} acc {:.2}%  lr {:.2e}  {:.1}s{}",
            r.epoch,
            r.train_loss,
            100.0 * r.train_accuracy,
            r.val_loss,
            100.0 * r.val_accuracy,
            r.lr,
            r.seconds,
            if best { "  (best)" } else { "" }
        );
        println!("{line}");
        writeln!(self.log, "{line}")?;
        if best {
            let cfg = self.checkpoint_config(r);
            checkpoint::save(&self.run_dir.join("checkpoints/best"), model, &cfg)?;
        }
        if let Some(m) = self.mlflow {
            m.log_metrics(
                r.epoch as i64,
                &[
                    ("train_loss", r.train_loss),
                    ("train_accuracy", r.train_accuracy),
                    ("val_loss", r.val_loss),
                    ("val_accuracy", r.val_accuracy),
                    ("lr", r.lr),
                    ("epoch_seconds", r.seconds),
                ],
            )?;
        }
        Ok(())
    }

    fn resume_point(
        &mut self,
        model: &Classifier,
        optimizer: &burn::optim::ModuleOptimizer,
        state: &LoopState,
    ) -> anyhow::Result<()> {
        let Some(last) = state.history.last() else {
            return Ok(());
        };
        let cfg = self.checkpoint_config(last);
        resume::save(
            &self.run_dir.join("checkpoints"),
            model,
            &cfg,
            optimizer,
            state,
        )
    }
}

pub fn run(
    recipe: &Recipe,
    resolved: &toml::Table,
    mut opts: RunOptions,
) -> anyhow::Result<RunResult> {
    let mut start = std::mem::take(&mut opts.start);
    let opts = &opts;
    let run_dir = &opts.run_dir;
    let mut log = if opts.resume {
        let resumed = resume::load(&run_dir.join("checkpoints"), &opts.device)?;
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(run_dir.join("train.log"))?;
        let line = format!(
            "resuming {} after epoch {}",
            run_dir.display(),
            resumed.state.epoch
        );
        println!("{line}");
        writeln!(log, "{line}")?;
        start.resume = Some(resumed);
        log
    } else {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("cannot create {}", run_dir.display()))?;
        std::fs::write(
            run_dir.join("config.toml"),
            toml::to_string_pretty(resolved)?,
        )?;
        std::fs::File::create(run_dir.join("train.log"))?
    };
    writeln!(
        log,
        "run {} with {}",
        run_dir.display(),
        serde_json::to_string(recipe)?
    )?;

    let loaded = Instant::now();
    let data = dataset::load(&recipe.data)?;
    let (train_split, validation) =
        split_validation(&data.train, recipe.data.validation, recipe.seed);
    let summary = format!(
        "data: {} training, {} validation, {} test images, {} classes (loaded in {:.1}s)",
        train_split.len(),
        validation.len(),
        data.test.len(),
        data.classes.len(),
        loaded.elapsed().as_secs_f64()
    );
    println!("{summary}");
    writeln!(log, "{summary}")?;

    let run_name = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tracker = match &opts.mlflow_uri {
        Some(uri) => {
            let m = Mlflow::start(uri, &opts.mlflow_experiment, &run_name)?;
            let mut params = Vec::new();
            mlflow::flatten_params("", resolved, &mut params);
            m.log_params(&params)?;
            println!("mlflow: run {} in experiment {}", m.run_id, m.experiment_id);
            Some(m)
        }
        None => None,
    };

    let result = (|| -> anyhow::Result<RunResult> {
        let mut sink = Sink {
            run_dir,
            log: log.try_clone()?,
            recipe,
            classes: &data.classes,
            mlflow: tracker.as_ref(),
            backend: &opts.backend,
        };
        let outcome = train::train(
            recipe,
            data.classes.len(),
            &train_split,
            &validation,
            &opts.device,
            opts.progress,
            &mut sink,
            start,
        )?;
        let last = outcome.history.last().context("no epoch ran")?.clone();
        checkpoint::save(
            &run_dir.join("checkpoints/final"),
            &outcome.final_model,
            &sink.checkpoint_config(&last),
        )?;
        plots::training_curves_png(&outcome.history, &run_dir.join("training_curves.png"))?;
        let seconds_per_epoch =
            outcome.history.iter().map(|r| r.seconds).sum::<f64>() / outcome.history.len() as f64;

        let test = if opts.evaluate_test {
            let (best, _) = checkpoint::load(&run_dir.join("checkpoints/best"), &opts.device)?;
            let logits = train::logits(&best, &data.test, &opts.device, 500);
            let predicted = train::argmax_rows(&logits, data.classes.len());
            let truth: Vec<usize> = data.test.labels.iter().map(|&l| l as usize).collect();
            let labels: Vec<&str> = data.classes.iter().map(String::as_str).collect();
            let m = Metrics::compute(&truth, &predicted, &labels);
            plots::confusion_matrix_png(
                &m,
                &run_dir.join("confusion_matrix.png"),
                &format!(
                    "{} (best epoch {}) on the test set",
                    recipe.model.name(),
                    outcome.best_epoch
                ),
            )?;
            println!(
                "\ntest set ({} images), best checkpoint (epoch {}):",
                m.examples, outcome.best_epoch
            );
            println!("{}", m.table());
            writeln!(
                log,
                "test: accuracy {:.4} macro F1 {:.4}",
                m.accuracy, m.macro_f1
            )?;
            Some(m)
        } else {
            None
        };
        let metrics = json!({
            "run": run_name,
            "model": recipe.model.name(),
            "best_epoch": outcome.best_epoch,
            "best_val_accuracy": outcome.best_val_accuracy,
            "stopped_early": outcome.stopped_early,
            "epochs_run": outcome.history.len(),
            "seconds_per_epoch": seconds_per_epoch,
            "history": outcome.history,
            "test": test,
        });
        std::fs::write(
            run_dir.join("metrics.json"),
            serde_json::to_vec_pretty(&metrics)?,
        )?;
        if let Some(m) = &tracker {
            let mut finals = vec![
                ("best_val_accuracy", outcome.best_val_accuracy),
                ("seconds_per_epoch", seconds_per_epoch),
            ];
            if let Some(t) = &test {
                finals.push(("test_accuracy", t.accuracy));
                finals.push(("test_macro_f1", t.macro_f1));
            }
            m.log_metrics(outcome.history.len() as i64, &finals)?;
            for name in [
                "config.toml",
                "metrics.json",
                "train.log",
                "training_curves.png",
                "confusion_matrix.png",
                "checkpoints/best/model.safetensors",
                "checkpoints/best/config.json",
            ] {
                let path = run_dir.join(name);
                if path.is_file() {
                    m.log_artifact(&path, name)?;
                }
            }
        }
        Ok(RunResult {
            run_dir: run_dir.clone(),
            best_epoch: outcome.best_epoch,
            best_val_accuracy: outcome.best_val_accuracy,
            test,
            seconds_per_epoch,
        })
    })();
    if let Some(m) = &tracker {
        match (&result, m.finish(result.is_ok())) {
            (Ok(_), Err(e)) => return Err(e),
            // The run's own error matters more than a failure to mark it failed.
            (Err(_), Err(e)) => tracing::warn!("cannot mark the MLflow run failed: {e:#}"),
            _ => {}
        }
    }
    let result = result?;
    writeln!(
        log,
        "done: best epoch {} val acc {:.4}",
        result.best_epoch, result.best_val_accuracy
    )?;
    Ok(result)
}
