//! Cutting one large request across idle instances.
//!
//! A model served as several single-threaded instances runs a lone batch-64 request on one
//! core while the others idle. When instances are idle and the request is long enough for the
//! hand-off to pay, its rows are cut into one part per idle instance, the parts run side by
//! side, and their outputs are joined back in order: the same rows, sooner.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Job, JobOutput, Scheduler, Shared};
use crate::error::{ServeError, ServeResult};
use crate::stats::RequestTiming;
use crate::tensor::Tensor;

/// A part shorter than this is not worth its own run: the hand-off to another thread and the
/// extra session call cost tens of microseconds.
const MIN_PART_RUN: Duration = Duration::from_micros(250);

/// Names the parts of one cut request, so the batcher never joins them back into one run.
static NEXT_GROUP: AtomicU64 = AtomicU64::new(0);

impl Scheduler {
    /// Runs a job and waits for its outputs: on this thread when it is small and cheap
    /// (see `inline`), else through the queue, cut across idle instances when that finishes
    /// it sooner (see the module comment).
    pub async fn run(&self, job: Job) -> ServeResult<JobOutput> {
        let job = match self.run_inline(job) {
            Ok(result) => return result,
            Err(job) => job,
        };
        let parts = self.shared.parts_for(&job);
        if parts < 2 {
            return answer(self.submit(job)?).await;
        }
        let sizes = even_sizes(job.batch, parts);
        let mut inputs: Vec<Vec<Tensor>> = (0..parts)
            .map(|_| Vec::with_capacity(job.inputs.len()))
            .collect();
        for t in &job.inputs {
            let pieces = t
                .split(&sizes)
                .map_err(|e| ServeError::internal(format!("splitting a request: {e}")))?;
            for (part, piece) in inputs.iter_mut().zip(pieces) {
                part.push(piece);
            }
        }
        let group = NEXT_GROUP.fetch_add(1, Ordering::Relaxed);
        // All parts are queued before any is awaited, so idle workers start together. If one
        // cannot be queued, the receivers already made are dropped and the workers skip them.
        let receivers = inputs
            .into_iter()
            .zip(&sizes)
            .map(|(inputs, &batch)| {
                self.enqueue(
                    Job {
                        inputs,
                        batch,
                        priority: job.priority,
                        timeout: job.timeout,
                    },
                    Some(group),
                )
            })
            .collect::<ServeResult<Vec<_>>>()?;
        let mut outs = Vec::with_capacity(parts);
        for rx in receivers {
            outs.push(answer(rx).await?);
        }
        join(outs)
    }
}

async fn answer(rx: tokio::sync::oneshot::Receiver<super::JobResult>) -> ServeResult<JobOutput> {
    rx.await
        .map_err(|_| ServeError::internal("the model worker stopped before answering"))?
}

impl Shared {
    /// How many parts to cut `job` into: one per idle instance, each at least
    /// [`MIN_PART_RUN`] long by the model's recent cost per item; 1 means do not cut.
    pub(super) fn parts_for(&self, job: &Job) -> usize {
        if !self.policy.split || job.batch < 2 {
            return 1;
        }
        let cost = self.item_cost_ns.load(Ordering::Relaxed);
        if cost == 0 {
            return 1;
        }
        let by_cost = (job.batch as u128 * cost as u128 / MIN_PART_RUN.as_nanos()) as usize;
        let idle = {
            let q = self.queues.lock();
            if q.len > 0 {
                0
            } else {
                (q.workers - q.retire).saturating_sub(self.running.load(Ordering::Relaxed))
            }
        };
        idle.min(by_cost).min(job.batch).max(1)
    }

    /// Keeps running estimates of one item's cost and of a lone request's run (a quarter
    /// weight to each new run).
    pub(super) fn record_cost(&self, run: Duration, items: usize, requests: usize) {
        if items == 0 {
            return;
        }
        let ns = run.as_nanos().min(u64::MAX as u128) as u64;
        blend(&self.item_cost_ns, ns / items as u64);
        if requests == 1 {
            blend(&self.single_cost_ns, ns);
        }
    }
}

fn blend(estimate: &AtomicU64, sample: u64) {
    let old = estimate.load(Ordering::Relaxed);
    let new = if old == 0 {
        sample.max(1)
    } else {
        (old / 4 * 3 + sample / 4).max(1)
    };
    estimate.store(new, Ordering::Relaxed);
}

/// `total` rows cut into `parts` sizes that differ by at most one, larger first.
pub(super) fn even_sizes(total: usize, parts: usize) -> Vec<usize> {
    let (base, extra) = (total / parts, total % parts);
    (0..parts).map(|i| base + usize::from(i < extra)).collect()
}

/// Joins the parts' outputs back into one request's, rows in order.
fn join(outs: Vec<JobOutput>) -> ServeResult<JobOutput> {
    let mut timing = RequestTiming::default();
    for o in &outs {
        timing.queue = timing.queue.max(o.timing.queue);
        timing.compute_input = timing.compute_input.max(o.timing.compute_input);
        timing.compute_infer = timing.compute_infer.max(o.timing.compute_infer);
        timing.compute_output = timing.compute_output.max(o.timing.compute_output);
    }
    let n = outs.first().map_or(0, |o| o.outputs.len());
    let outputs = (0..n)
        .map(|i| {
            let parts: Vec<&Tensor> = outs.iter().filter_map(|o| o.outputs.get(i)).collect();
            if parts.len() != outs.len() {
                return Err(ServeError::internal(
                    "a part of a split request lost an output",
                ));
            }
            Tensor::concat(&parts).map_err(|e| {
                ServeError::internal(format!("joining the parts of a split request: {e}"))
            })
        })
        .collect::<ServeResult<Vec<_>>>()?;
    Ok(JobOutput { outputs, timing })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;
    use crate::backend::{BackendError, Session, Signature};
    use crate::metrics::Metrics;
    use crate::scheduler::{BatchPolicy, DynamicBatching, QueuePolicy};
    use crate::stats::ModelStats;

    /// Doubles its input, taking `per_row` per row, and logs each run's batch size.
    struct Slow {
        sig: Signature,
        per_row: Duration,
        log: Arc<Mutex<Vec<usize>>>,
    }

    impl Session for Slow {
        fn signature(&self) -> &Signature {
            &self.sig
        }
        fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
            let rows = inputs[0].shape[0];
            std::thread::sleep(self.per_row * rows as u32);
            self.log.lock().push(rows);
            let doubled: Vec<f32> = inputs[0]
                .to_vec::<f32>()
                .unwrap_or_default()
                .iter()
                .map(|v| v * 2.0)
                .collect();
            Ok(vec![
                Tensor::from_slice(inputs[0].shape.clone(), &doubled).unwrap(),
            ])
        }
    }

    fn scheduler(
        instances: usize,
        split: bool,
        per_row: Duration,
    ) -> (Scheduler, Arc<Mutex<Vec<usize>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sessions = (0..instances)
            .map(|_| {
                Box::new(Slow {
                    sig: Signature::default(),
                    per_row,
                    log: log.clone(),
                }) as Box<dyn Session>
            })
            .collect();
        let policy = BatchPolicy {
            max_batch_size: 64,
            dynamic: Some(DynamicBatching {
                preferred: vec![],
                max_delay: Duration::ZERO,
                priority_levels: 0,
                default_level: 0,
                level_policies: vec![QueuePolicy::default()],
            }),
            max_queue: 100,
            split,
        };
        let s = Scheduler::new(
            "m",
            sessions,
            policy,
            Arc::new(ModelStats::default()),
            Metrics::new().for_version("m", 1),
        )
        .unwrap();
        (s, log)
    }

    fn job(rows: usize) -> Job {
        let values: Vec<f32> = (0..rows * 3).map(|v| v as f32).collect();
        Job {
            inputs: vec![Tensor::from_slice(vec![rows, 3], &values).unwrap()],
            batch: rows,
            priority: 0,
            timeout: None,
        }
    }

    /// Runs `rows` after a warm-up run has taught the scheduler the cost per row, once both
    /// workers wait for work.
    fn run_after_warmup(s: &Scheduler, rows: usize) -> JobOutput {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(s.run(job(1))).unwrap();
        let started = std::time::Instant::now();
        while s.shared.running.load(Ordering::Relaxed) > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "workers never idle"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        rt.block_on(s.run(job(rows))).unwrap()
    }

    fn expected(rows: usize) -> Vec<f32> {
        (0..rows * 3).map(|v| v as f32 * 2.0).collect()
    }

    #[test]
    fn a_long_request_runs_on_every_idle_instance_and_joins_in_order() {
        let (s, log) = scheduler(2, true, Duration::from_micros(100));
        let out = run_after_warmup(&s, 63);
        assert_eq!(out.outputs[0].shape, vec![63, 3]);
        assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), expected(63));
        let mut runs = log.lock()[1..].to_vec();
        runs.sort_unstable();
        assert_eq!(runs, vec![31, 32]);
    }

    #[test]
    fn short_requests_and_unsplittable_models_run_whole() {
        // 10 rows that cost next to nothing: a part would be far below the hand-off's cost.
        let (s, log) = scheduler(2, true, Duration::ZERO);
        let out = run_after_warmup(&s, 10);
        assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), expected(10));
        assert_eq!(log.lock()[1..], [10]);
        // Outputs whose rows could depend on the batch are never cut.
        let (s, log) = scheduler(2, false, Duration::from_micros(100));
        run_after_warmup(&s, 64);
        assert_eq!(log.lock()[1..], [64]);
        // One instance: nothing to share the work with.
        let (s, log) = scheduler(1, true, Duration::from_micros(100));
        run_after_warmup(&s, 64);
        assert_eq!(log.lock()[1..], [64]);
    }

    #[test]
    fn sizes_differ_by_at_most_one() {
        assert_eq!(even_sizes(64, 2), vec![32, 32]);
        assert_eq!(even_sizes(7, 3), vec![3, 2, 2]);
        assert_eq!(even_sizes(2, 2), vec![1, 1]);
    }
}
