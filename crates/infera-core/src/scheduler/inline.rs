//! Running small, cheap requests on the caller's thread.
//!
//! Decoding a 28×28 PNG, a softmax over ten scores or a RandomForest over four features takes
//! microseconds; handing the request to a worker thread and the answer back costs more than
//! that (two context switches, each tens of microseconds on a busy machine). For backends
//! that allow it ([`InlineRuns`]), the scheduler keeps a few extra sessions and runs a request
//! right where it arrives when the session says it is small ([`Session::fits_inline`]),
//! nothing is queued ahead of it, and, for backends whose cost is only known by measuring,
//! the model's recent runs took no more than [`INLINE_BUDGET`] and its requests have not
//! overlapped for [`CONTENDED_HOLD`]. Statistics, metrics and trace spans are the same as for
//! a worker's run.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Job, JobResult, Pending, Scheduler, Shared, execute, job_is_online};
use crate::backend::{InlineRuns, Session};

/// The longest a measured-cost model may take to run on the caller's thread: an async
/// runtime's thread that runs a model serves no other connection meanwhile (the others' work
/// is stolen by the other runtime threads). Large enough for a batch-1 run of the small
/// Fashion-MNIST CNN on a slow 2-core VM (150-300 µs); at most one inline run per core
/// happens at a time.
const INLINE_BUDGET: Duration = Duration::from_micros(500);

/// How long a measured-cost model's requests stay on the workers after two of them overlapped.
/// Concurrent requests of such a cheap model cost less in the workers' batches than on the
/// callers' threads: with some requests running here, the workers sleep between the ones that
/// do reach the queue, and each of those pays a wake-up (iris at concurrency 16: ~20% more CPU
/// per request than with no inline runs; see docs/benchmarks.md). A lone client never overlaps
/// itself, so it keeps the inline path.
const CONTENDED_HOLD: Duration = Duration::from_millis(2);

/// The sessions inline runs take, and when they may.
#[derive(Default)]
pub(super) struct Pool {
    sessions: Vec<Box<dyn Session>>,
    runs: InlineRuns,
    /// Sessions taken out for a run now.
    out: usize,
    /// When a measured-cost model's request last found another one being served.
    contended: Option<Instant>,
}

impl Scheduler {
    /// Adds sessions that small requests run on from the caller's thread (see the module
    /// comment). Without any, every request goes through the queue.
    pub fn add_inline_sessions(&self, sessions: Vec<Box<dyn Session>>, runs: InlineRuns) {
        let mut pool = self.shared.inline.lock();
        pool.sessions.extend(sessions);
        pool.runs = runs;
    }

    /// Runs `job` here and now if it can; otherwise gives it back for the queue.
    pub(super) fn run_inline(&self, job: Job) -> Result<JobResult, Job> {
        let s = &self.shared;
        if !job_is_online(&job) {
            return Err(job);
        }
        // A free inline session, taken out of the pool so the run holds no lock.
        let Some(mut session) = s.inline.try_lock().and_then(|mut pool| {
            let cheap = match pool.runs {
                InlineRuns::Never => false,
                InlineRuns::WhenSmall => true,
                InlineRuns::WhenCheap => s.cheap_now(&job, &mut pool),
            };
            let session = if cheap { pool.sessions.pop() } else { None };
            pool.out += usize::from(session.is_some());
            session
        }) else {
            return Err(job);
        };
        // Never ahead of queued requests (an overlap), and not once the model is being unloaded.
        let queued = session.fits_inline(&job.inputs).then(|| {
            let q = s.queues.lock();
            (q.len > 0, q.shutdown)
        });
        if queued != Some((false, false)) {
            let mut pool = s.inline.lock();
            if pool.runs == InlineRuns::WhenCheap && queued.is_some_and(|(ahead, _)| ahead) {
                pool.contended = Some(Instant::now());
            }
            pool.sessions.push(session);
            pool.out -= 1;
            return Err(job);
        }
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let pending = Pending {
            job,
            enqueued: Instant::now(),
            deadline: None,
            tx,
            // No wait: the "queue" span closes at once, so traces keep their shape.
            queue_span: tracing::Span::none(),
            parent: tracing::Span::current(),
            part_of: None,
        };
        {
            let _queue = tracing::debug_span!(parent: &pending.parent, "queue", model = %s.model);
        }
        // `execute` gives back one count of `running`, as for a worker's batch.
        s.running.fetch_add(1, Ordering::Relaxed);
        execute(s, session.as_mut(), vec![pending]);
        s.give_back(session);
        Ok(rx.try_recv().unwrap_or_else(|_| {
            Err(crate::error::ServeError::internal(format!(
                "model '{}' gave no answer",
                s.model
            )))
        }))
    }
}

impl Shared {
    fn give_back(&self, session: Box<dyn Session>) {
        let mut pool = self.inline.lock();
        pool.sessions.push(session);
        pool.out -= 1;
    }

    /// Whether a model whose cost is only known by measuring may run `job` inline now: its
    /// recent runs fit the budget, and its requests have not overlapped lately (another one
    /// inline or, for a model that batches, a batch running; see [`CONTENDED_HOLD`]). Until
    /// the model has run once, requests go to the workers, which measure it.
    fn cheap_now(&self, job: &Job, pool: &mut Pool) -> bool {
        let single = self.single_cost_ns.load(Ordering::Relaxed);
        let per_item = self.item_cost_ns.load(Ordering::Relaxed);
        let expected = single.max(per_item.saturating_mul(job.batch as u64));
        if single == 0 || u128::from(expected) > INLINE_BUDGET.as_nanos() {
            return false;
        }
        let now = Instant::now();
        if pool.out > 0
            || (self.policy.dynamic.is_some() && self.running.load(Ordering::Relaxed) > 0)
        {
            pool.contended = Some(now);
            return false;
        }
        pool.contended
            .is_none_or(|t| now.saturating_duration_since(t) >= CONTENDED_HOLD)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread::ThreadId;
    use std::time::Duration;

    use parking_lot::{Condvar, Mutex};

    use super::super::{BatchPolicy, DynamicBatching, Job, QueuePolicy, Scheduler};
    use crate::backend::{BackendError, InlineRuns, Session, Signature};
    use crate::metrics::Metrics;
    use crate::stats::ModelStats;
    use crate::tensor::Tensor;

    /// Echoes its input and logs the thread it ran on; fits inline up to two rows; a row
    /// holding -1 panics; worker sessions can be held shut by a gate; each run takes `cost`.
    struct Probe {
        sig: Signature,
        threads: Arc<Mutex<Vec<ThreadId>>>,
        gate: Option<Arc<(Mutex<bool>, Condvar)>>,
        cost: Duration,
    }

    impl Session for Probe {
        fn signature(&self) -> &Signature {
            &self.sig
        }
        fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
            if let Some(gate) = &self.gate {
                let mut open = gate.0.lock();
                while !*open {
                    gate.1.wait(&mut open);
                }
            }
            std::thread::sleep(self.cost);
            assert!(
                !inputs[0].to_vec::<f32>().unwrap().contains(&-1.0),
                "a broken model"
            );
            self.threads.lock().push(std::thread::current().id());
            Ok(vec![inputs[0].clone()])
        }
        fn fits_inline(&self, inputs: &[Tensor]) -> bool {
            inputs[0].shape[0] <= 2
        }
    }

    struct Rig {
        sched: Scheduler,
        stats: Arc<ModelStats>,
        threads: Arc<Mutex<Vec<ThreadId>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
        rt: tokio::runtime::Runtime,
    }

    fn rig(worker_open: bool) -> Rig {
        rig_with(worker_open, InlineRuns::WhenSmall, Duration::ZERO, false)
    }

    fn rig_with(worker_open: bool, runs: InlineRuns, cost: Duration, batching: bool) -> Rig {
        let threads = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new((Mutex::new(worker_open), Condvar::new()));
        let probe = |gate: Option<Arc<(Mutex<bool>, Condvar)>>| {
            Box::new(Probe {
                sig: Signature::default(),
                threads: threads.clone(),
                gate,
                cost,
            }) as Box<dyn Session>
        };
        let stats = Arc::new(ModelStats::default());
        let dynamic = batching.then(|| DynamicBatching {
            preferred: vec![],
            max_delay: Duration::ZERO,
            priority_levels: 0,
            default_level: 0,
            level_policies: vec![QueuePolicy::default()],
        });
        let sched = Scheduler::new(
            "m",
            vec![probe(Some(gate.clone()))],
            BatchPolicy {
                max_batch_size: 8,
                dynamic,
                max_queue: 100,
                split: false,
            },
            stats.clone(),
            Metrics::new().for_version("m", 1),
        )
        .unwrap();
        sched.add_inline_sessions(vec![probe(None)], runs);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        Rig {
            sched,
            stats,
            threads,
            gate,
            rt,
        }
    }

    fn job(rows: usize, value: f32) -> Job {
        Job {
            inputs: vec![Tensor::from_slice(vec![rows, 1], &vec![value; rows]).unwrap()],
            batch: rows,
            priority: 0,
            timeout: None,
        }
    }

    #[test]
    fn a_small_request_runs_on_the_callers_thread_and_is_counted() {
        let r = rig(true);
        let out = r.rt.block_on(r.sched.run(job(2, 7.0))).unwrap();
        assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), [7.0, 7.0]);
        assert_eq!(*r.threads.lock(), [std::thread::current().id()]);
        let stats = r.stats.snapshot();
        assert_eq!((stats.inference_count, stats.execution_count), (2, 1));
    }

    #[test]
    fn a_large_request_goes_to_a_worker() {
        let r = rig(true);
        r.rt.block_on(r.sched.run(job(3, 1.0))).unwrap();
        assert_ne!(*r.threads.lock(), [std::thread::current().id()]);
    }

    #[test]
    fn a_small_request_does_not_overtake_queued_ones() {
        let r = rig(false);
        // The worker takes the first request and blocks on the gate; the second waits queued.
        let first = r.sched.submit(job(3, 1.0)).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let second = r.sched.submit(job(3, 2.0)).unwrap();
        let opener = {
            let gate = r.gate.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                *gate.0.lock() = true;
                gate.1.notify_all();
            })
        };
        let out = r.rt.block_on(r.sched.run(job(1, 3.0))).unwrap();
        assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), [3.0]);
        opener.join().unwrap();
        first.blocking_recv().unwrap().unwrap();
        second.blocking_recv().unwrap().unwrap();
        // All three ran on the worker, in order.
        let threads = r.threads.lock();
        assert_eq!(threads.len(), 3);
        assert!(threads.iter().all(|t| *t != std::thread::current().id()));
    }

    #[test]
    fn a_panicking_inline_run_fails_only_that_request() {
        let r = rig(true);
        let e = r.rt.block_on(r.sched.run(job(1, -1.0))).unwrap_err();
        assert!(e.message.contains("runtime failed"), "{}", e.message);
        // The inline session went back to the pool and serves the next request.
        r.rt.block_on(r.sched.run(job(1, 5.0))).unwrap();
        assert_eq!(*r.threads.lock(), [std::thread::current().id()]);
    }

    fn on_this_thread(r: &Rig) -> Vec<bool> {
        let me = std::thread::current().id();
        r.threads.lock().iter().map(|t| *t == me).collect()
    }

    #[test]
    fn a_measured_cheap_model_runs_inline_once_it_has_run_on_a_worker() {
        let r = rig_with(true, InlineRuns::WhenCheap, Duration::ZERO, false);
        for v in 0..3 {
            r.rt.block_on(r.sched.run(job(1, v as f32))).unwrap();
        }
        // The first run measures the model on a worker; the cheap ones after it run here.
        assert_eq!(on_this_thread(&r), [false, true, true]);
    }

    #[test]
    fn a_model_over_the_budget_stays_on_the_workers() {
        let r = rig_with(true, InlineRuns::WhenCheap, Duration::from_millis(2), false);
        for v in 0..3 {
            r.rt.block_on(r.sched.run(job(1, v as f32))).unwrap();
        }
        assert_eq!(on_this_thread(&r), [false, false, false]);
    }

    #[test]
    fn a_batching_model_runs_inline_only_while_no_batch_runs() {
        let r = rig_with(false, InlineRuns::WhenCheap, Duration::ZERO, true);
        // Teach the scheduler the cost with the worker open, then hold the worker shut.
        *r.gate.0.lock() = true;
        r.rt.block_on(r.sched.run(job(1, 1.0))).unwrap();
        *r.gate.0.lock() = false;
        let busy = r.sched.submit(job(3, 2.0)).unwrap();
        let started = std::time::Instant::now();
        while r
            .sched
            .shared
            .running
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the worker never started"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // A batch is running: a new request is left for the worker to batch.
        assert!(r.sched.run_inline(job(1, 3.0)).is_err());
        *r.gate.0.lock() = true;
        r.gate.1.notify_all();
        busy.blocking_recv().unwrap().unwrap();
        while r
            .sched
            .shared
            .running
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The held run's wait was measured as its cost; forget it.
        let shared = &r.sched.shared;
        shared
            .single_cost_ns
            .store(1, std::sync::atomic::Ordering::Relaxed);
        shared
            .item_cost_ns
            .store(1, std::sync::atomic::Ordering::Relaxed);
        // Right after the overlap, requests stay on the worker; once it is past, one runs here.
        r.rt.block_on(r.sched.run(job(1, 4.0))).unwrap();
        std::thread::sleep(super::CONTENDED_HOLD);
        r.rt.block_on(r.sched.run(job(1, 5.0))).unwrap();
        assert_eq!(on_this_thread(&r), [false, false, false, true]);
    }

    #[test]
    fn a_cheap_model_stays_on_the_workers_while_its_requests_overlap() {
        let r = rig_with(true, InlineRuns::WhenCheap, Duration::ZERO, false);
        r.rt.block_on(r.sched.run(job(1, 1.0))).unwrap();
        // Another request holds the inline session (it runs on another caller's thread).
        let held = r.sched.shared.inline.lock().sessions.pop().unwrap();
        r.sched.shared.inline.lock().out += 1;
        assert!(r.sched.run_inline(job(1, 2.0)).is_err());
        r.sched.shared.give_back(held);
        // Free again, but the overlap was just now: still the worker.
        assert!(r.sched.run_inline(job(1, 3.0)).is_err());
        std::thread::sleep(super::CONTENDED_HOLD);
        r.rt.block_on(r.sched.run(job(1, 4.0))).unwrap();
        assert_eq!(on_this_thread(&r), [false, true]);
    }
}
