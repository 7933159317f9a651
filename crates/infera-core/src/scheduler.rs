//! Per model-version request queue and workers: Triton's dynamic batcher.
//!
//! Each instance (session) has its own OS thread. A free worker forms the next batch
//! itself, so batches grow naturally while every worker is busy, and a queue delay is
//! only waited for when a worker is idle. Requests are grouped only with requests whose
//! non-batch shapes match, so batching never changes a result.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use crate::backend::Session;
use crate::error::{ErrorKind, ServeError, ServeResult};
use crate::metrics::VersionMetrics;
use crate::stats::{ModelStats, RequestTiming};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutAction {
    Reject,
    Delay,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueuePolicy {
    pub timeout_action: TimeoutAction,
    pub default_timeout: Option<Duration>,
    pub allow_timeout_override: bool,
    /// 0 = no per-level bound (the scheduler-wide bound still applies).
    pub max_queue_size: usize,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            timeout_action: TimeoutAction::Reject,
            default_timeout: None,
            allow_timeout_override: false,
            max_queue_size: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BatchPolicy {
    /// 0: the model has no batch dimension; each request runs alone.
    pub max_batch_size: usize,
    /// `None`: Triton's default scheduler (no batching across requests).
    pub dynamic: Option<DynamicBatching>,
    /// The scheduler-wide bound on queued requests; beyond it requests are refused (HTTP 429).
    pub max_queue: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DynamicBatching {
    /// Ascending.
    pub preferred: Vec<usize>,
    pub max_delay: Duration,
    /// 0 = one level. Level 1 is the highest priority.
    pub priority_levels: usize,
    pub default_level: usize,
    /// Index 0 for the single level or level 1; index n-1 for level n.
    pub level_policies: Vec<QueuePolicy>,
}

/// Priority of batch work (server-side jobs, `infera predict`): served only when no online
/// request of any level is waiting, so a big job never slows interactive traffic down.
pub const BACKGROUND: usize = usize::MAX;

/// A request ready for the model: inputs in model order, already in the model's shapes.
#[derive(Debug)]
pub struct Job {
    pub inputs: Vec<Tensor>,
    /// Items in the batch dimension (1 for models without one).
    pub batch: usize,
    /// 0 = the default level; [`BACKGROUND`] = after everything else.
    pub priority: usize,
    /// The request's own timeout, honoured when the level's policy allows overriding.
    pub timeout: Option<Duration>,
}

#[derive(Debug)]
pub struct JobOutput {
    /// All model outputs, in model order, this request's rows only.
    pub outputs: Vec<Tensor>,
    pub timing: RequestTiming,
}

pub type JobResult = ServeResult<JobOutput>;

struct Pending {
    job: Job,
    enqueued: Instant,
    deadline: Option<Instant>,
    tx: oneshot::Sender<JobResult>,
}

struct Queues {
    /// One deque per priority level (one when levels are off), then the background lane.
    levels: Vec<VecDeque<Pending>>,
    /// Requests whose timeout passed under a DELAY policy: served after all others.
    delayed: VecDeque<Pending>,
    len: usize,
    shutdown: bool,
    /// When an online request last arrived.
    last_online: Option<Instant>,
    /// While online traffic is recent, background batches wait until then.
    background_resume: Option<Instant>,
}

/// Online traffic counts as present for this long after a request arrives.
const ONLINE_RECENT: Duration = Duration::from_millis(250);
/// While online traffic is present, a background batch that took `t` is followed by `t * this`
/// without background work on that worker: batch jobs get at most 1/(1 + this) of the time
/// queue order alone cannot give online requests (they share the same cores).
const BACKGROUND_PAUSE: u32 = 8;

struct Shared {
    model: String,
    policy: BatchPolicy,
    queues: Mutex<Queues>,
    ready: Condvar,
    stats: Arc<ModelStats>,
    metrics: VersionMetrics,
}

/// The queue and workers of one model version. Dropping it lets the workers finish
/// what is queued, then stop.
pub struct Scheduler {
    shared: Arc<Shared>,
}

impl Scheduler {
    pub fn new(
        model: &str,
        sessions: Vec<Box<dyn Session>>,
        policy: BatchPolicy,
        stats: Arc<ModelStats>,
        metrics: VersionMetrics,
    ) -> std::io::Result<Scheduler> {
        let levels = policy
            .dynamic
            .as_ref()
            .map_or(1, |d| d.priority_levels.max(1));
        let shared = Arc::new(Shared {
            model: model.to_string(),
            policy,
            queues: Mutex::new(Queues {
                levels: (0..=levels).map(|_| VecDeque::new()).collect(),
                delayed: VecDeque::new(),
                len: 0,
                shutdown: false,
                last_online: None,
                background_resume: None,
            }),
            ready: Condvar::new(),
            stats,
            metrics,
        });
        for (i, session) in sessions.into_iter().enumerate() {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("{model}-{i}"))
                .spawn(move || worker(s, session))?;
        }
        Ok(Scheduler { shared })
    }

    /// Queues a job. Fails at once (never blocks) when the queue is full.
    pub fn submit(&self, job: Job) -> ServeResult<oneshot::Receiver<JobResult>> {
        let s = &self.shared;
        let now = Instant::now();
        let (level, policy) = s.level_of(job.priority)?;
        let timeout = match (job.timeout, policy) {
            (Some(t), Some(p)) if p.allow_timeout_override => Some(t),
            (_, Some(p)) => p.default_timeout,
            (t, None) => t,
        };
        let (tx, rx) = oneshot::channel();
        let mut q = s.queues.lock();
        if q.shutdown {
            return Err(ServeError::unavailable(format!(
                "model '{}' is being unloaded",
                s.model
            )));
        }
        if q.len >= s.policy.max_queue {
            return Err(ServeError::new(
                ErrorKind::QueueFull,
                format!(
                    "model '{}' has {} requests queued (the limit); retry later",
                    s.model, q.len
                ),
            ));
        }
        if let Some(p) = policy
            && p.max_queue_size > 0
            && q.levels[level].len() >= p.max_queue_size
        {
            return Err(ServeError::new(
                ErrorKind::QueueFull,
                format!(
                    "Exceeds maximum queue size: model '{}' priority level {} holds {} requests",
                    s.model,
                    level + 1,
                    p.max_queue_size
                ),
            ));
        }
        if job_is_online(&job) {
            q.last_online = Some(now);
        }
        q.levels[level].push_back(Pending {
            job,
            enqueued: now,
            deadline: timeout.map(|t| now + t),
            tx,
        });
        q.len += 1;
        s.metrics.pending.inc();
        drop(q);
        s.ready.notify_one();
        Ok(rx)
    }

    pub fn queued(&self) -> usize {
        self.shared.queues.lock().len
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.queues.lock().shutdown = true;
        self.shared.ready.notify_all();
    }
}

impl Shared {
    fn level_of(&self, priority: usize) -> ServeResult<(usize, Option<&QueuePolicy>)> {
        if priority == BACKGROUND {
            let configured = self
                .policy
                .dynamic
                .as_ref()
                .map_or(1, |d| d.priority_levels.max(1));
            return Ok((configured, None));
        }
        let Some(d) = &self.policy.dynamic else {
            return Ok((0, None));
        };
        if d.priority_levels == 0 {
            return Ok((0, d.level_policies.first()));
        }
        let level = if priority == 0 {
            d.default_level
        } else {
            priority
        };
        if level > d.priority_levels {
            return Err(ServeError::invalid(format!(
                "priority {priority} is outside 1..={} for model '{}'",
                d.priority_levels, self.model
            )));
        }
        Ok((level - 1, d.level_policies.get(level - 1)))
    }

    /// Drops requests whose client went away, and applies queue timeouts.
    fn expire(&self, q: &mut Queues, now: Instant) -> Option<Instant> {
        let mut next_deadline: Option<Instant> = None;
        let mut removed = 0usize;
        let policies = self.policy.dynamic.as_ref().map(|d| &d.level_policies);
        let Queues {
            levels, delayed, ..
        } = q;
        for (level, queue) in levels.iter_mut().enumerate() {
            let action = policies
                .and_then(|p| p.get(level))
                .map_or(TimeoutAction::Reject, |p| p.timeout_action);
            let mut i = 0;
            while i < queue.len() {
                let p = &queue[i];
                if p.tx.is_closed() {
                    queue.remove(i);
                    removed += 1;
                    continue;
                }
                match p.deadline {
                    Some(d) if d <= now => {
                        if let Some(p) = queue.remove(i) {
                            match action {
                                TimeoutAction::Reject => {
                                    removed += 1;
                                    let _ = p.tx.send(Err(ServeError::unavailable(
                                        "Request timeout expired",
                                    )));
                                }
                                TimeoutAction::Delay => delayed.push_back(Pending {
                                    deadline: None,
                                    ..p
                                }),
                            }
                        }
                        continue;
                    }
                    Some(d) => next_deadline = Some(next_deadline.map_or(d, |n| n.min(d))),
                    None => {}
                }
                i += 1;
            }
        }
        let before = delayed.len();
        delayed.retain(|p| !p.tx.is_closed());
        removed += before - delayed.len();
        if removed > 0 {
            q.len -= removed;
            self.metrics.pending.sub(removed as i64);
        }
        next_deadline
    }

    /// Picks the next batch, or says how long to wait for one.
    fn pick(&self, q: &mut Queues, now: Instant) -> Pick {
        // Online levels, then requests delayed by their timeout policy, then background work
        // unless it is pausing for online traffic (then it neither leads nor fills a batch).
        let background = q.levels.len() - 1;
        let online_until = q.last_online.map(|t| t + ONLINE_RECENT);
        let pausing = q
            .background_resume
            .filter(|&r| r > now && online_until.is_some_and(|o| o > now));
        let mut order: Vec<(bool, usize)> = (0..background)
            .map(|l| (false, l))
            .chain([(true, 0)])
            .collect();
        if pausing.is_none() {
            order.push((false, background));
        }
        let queue_of = |q: &Queues, (delayed, l): (bool, usize)| -> usize {
            if delayed {
                q.delayed.len()
            } else {
                q.levels[l].len()
            }
        };
        let Some(&head_queue) = order.iter().find(|&&k| queue_of(q, k) > 0) else {
            return match (pausing, online_until) {
                (Some(r), Some(o)) if !q.levels[background].is_empty() => Pick::WaitUntil(r.min(o)),
                _ => Pick::Empty,
            };
        };
        let head = at(q, head_queue, 0);
        let Some(d) = &self.policy.dynamic else {
            return Pick::Take(vec![(head_queue, 0)]);
        };
        let max = self.policy.max_batch_size.max(1);
        let key: Vec<&[usize]> = head.job.inputs.iter().map(|t| &t.shape[1..]).collect();
        let mut chosen = Vec::new();
        let mut total = 0usize;
        'outer: for &k in &order {
            for i in 0..queue_of(q, k) {
                let p = at(q, k, i);
                let fits = p.job.inputs.len() == key.len()
                    && p.job
                        .inputs
                        .iter()
                        .zip(&key)
                        .all(|(t, s)| &t.shape[1..] == *s);
                if !fits || total + p.job.batch > max {
                    if total >= max {
                        break 'outer;
                    }
                    continue;
                }
                chosen.push((k, i));
                total += p.job.batch;
            }
        }
        let largest_preferred = d.preferred.last().copied();
        let due = head.enqueued + d.max_delay;
        let ready = total >= max
            || largest_preferred.is_some_and(|p| total >= p)
            || d.preferred.contains(&total)
            || q.shutdown
            || now >= due;
        if !ready {
            return Pick::WaitUntil(due);
        }
        // Send the largest preferred size that the queue can fill, else everything gathered.
        if let Some(&p) = d.preferred.iter().rev().find(|&&p| p <= total) {
            let mut sum = 0;
            let cut = chosen
                .iter()
                .position(|&(k, i)| {
                    sum += at(q, k, i).job.batch;
                    sum > p
                })
                .unwrap_or(chosen.len());
            chosen.truncate(cut.max(1));
        }
        Pick::Take(chosen)
    }
}

fn at(q: &Queues, (delayed, l): (bool, usize), i: usize) -> &Pending {
    if delayed {
        &q.delayed[i]
    } else {
        &q.levels[l][i]
    }
}

enum Pick {
    Empty,
    WaitUntil(Instant),
    Take(Vec<((bool, usize), usize)>),
}

fn take(q: &mut Queues, mut chosen: Vec<((bool, usize), usize)>) -> Vec<Pending> {
    // Remove from the back so earlier indices stay valid.
    chosen.sort_by(|a, b| b.cmp(a));
    let mut out: Vec<Pending> = chosen
        .into_iter()
        .filter_map(|((delayed, l), i)| {
            if delayed {
                q.delayed.remove(i)
            } else {
                q.levels[l].remove(i)
            }
        })
        .collect();
    out.reverse();
    q.len -= out.len();
    out
}

fn worker(s: Arc<Shared>, mut session: Box<dyn Session>) {
    loop {
        let batch = {
            let mut q = s.queues.lock();
            loop {
                let now = Instant::now();
                let next_deadline = s.expire(&mut q, now);
                match s.pick(&mut q, now) {
                    Pick::Take(chosen) => break take(&mut q, chosen),
                    Pick::Empty if q.shutdown => return,
                    Pick::Empty => match next_deadline {
                        Some(d) => {
                            s.ready.wait_until(&mut q, d);
                        }
                        None => s.ready.wait(&mut q),
                    },
                    Pick::WaitUntil(due) => {
                        let until = next_deadline.map_or(due, |d| d.min(due));
                        s.ready.wait_until(&mut q, until);
                    }
                }
            }
        };
        s.metrics.pending.sub(batch.len() as i64);
        if batch.is_empty() {
            continue;
        }
        let background = batch.iter().any(|p| !job_is_online(&p.job));
        let start = Instant::now();
        execute(&s, session.as_mut(), batch);
        if background {
            let end = Instant::now();
            let mut q = s.queues.lock();
            if q.last_online.is_some_and(|t| t + ONLINE_RECENT > end) {
                let pause = end + (end - start) * BACKGROUND_PAUSE;
                q.background_resume = Some(q.background_resume.map_or(pause, |r| r.max(pause)));
            }
        }
    }
}

fn job_is_online(job: &Job) -> bool {
    job.priority != BACKGROUND
}

fn execute(s: &Shared, session: &mut dyn Session, batch: Vec<Pending>) {
    let start = Instant::now();
    let result = run_guarded(s, session, &batch);
    if let Err(e) = &result
        && e.kind == ErrorKind::InvalidArgument
        && batch.len() > 1
    {
        // One request's bad data must not fail the others it was batched with.
        for p in batch {
            execute(s, session, vec![p]);
        }
        return;
    }
    finish(s, batch, result, start);
}

fn run_guarded(s: &Shared, session: &mut dyn Session, batch: &[Pending]) -> ServeResult<BatchRun> {
    let sizes: Vec<usize> = batch.iter().map(|p| p.job.batch).collect();
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        run_batch(session, batch, &sizes, s.policy.max_batch_size > 0)
    }))
    .unwrap_or_else(|_| {
        Err(ServeError::internal(format!(
            "the runtime failed while running model '{}'",
            s.model
        )))
    })
}

fn finish(s: &Shared, batch: Vec<Pending>, result: ServeResult<BatchRun>, start: Instant) {
    let total: usize = batch.iter().map(|p| p.job.batch).sum();
    match result {
        Ok((per_request, t_in, t_infer, t_out)) => {
            let timing = RequestTiming {
                queue: Duration::ZERO,
                compute_input: t_in,
                compute_infer: t_infer,
                compute_output: t_out,
            };
            let timings: Vec<RequestTiming> = batch
                .iter()
                .map(|p| RequestTiming {
                    queue: start.saturating_duration_since(p.enqueued),
                    ..timing
                })
                .collect();
            s.stats.record_execution(total, &timing, &timings);
            s.metrics.exec_count.inc();
            s.metrics.inference_count.inc_by(total as u64);
            s.metrics.batch_size.observe(total as f64);
            s.metrics.compute_seconds.observe(t_infer.as_secs_f64());
            s.metrics
                .compute_infer_us
                .inc_by(t_infer.as_micros() as u64);
            for ((p, outputs), t) in batch.into_iter().zip(per_request).zip(timings) {
                s.metrics.queue_seconds.observe(t.queue.as_secs_f64());
                s.metrics.queue_us.inc_by(t.queue.as_micros() as u64);
                let _ = p.tx.send(Ok(JobOutput { outputs, timing: t }));
            }
        }
        Err(e) => {
            for p in batch {
                let _ = p.tx.send(Err(e.clone()));
            }
        }
    }
}

type BatchRun = (Vec<Vec<Tensor>>, Duration, Duration, Duration);

fn run_batch(
    session: &mut dyn Session,
    batch: &[Pending],
    sizes: &[usize],
    batched: bool,
) -> ServeResult<BatchRun> {
    let t0 = Instant::now();
    let n_inputs = batch.first().map_or(0, |p| p.job.inputs.len());
    let inputs: Vec<Tensor> = if batch.len() == 1 {
        batch[0].job.inputs.clone()
    } else {
        (0..n_inputs)
            .map(|i| {
                let parts: Vec<&Tensor> = batch.iter().map(|p| &p.job.inputs[i]).collect();
                Tensor::concat(&parts)
            })
            .collect::<Result<_, _>>()
            .map_err(|e| ServeError::internal(format!("batching inputs: {e}")))?
    };
    let t1 = Instant::now();
    let outputs = session.run(&inputs).map_err(|e| match e {
        crate::backend::BackendError::Input(m) => ServeError::invalid(m),
        other => ServeError::internal(other.to_string()),
    })?;
    let t2 = Instant::now();
    let mut per_request: Vec<Vec<Tensor>> = (0..batch.len()).map(|_| Vec::new()).collect();
    for out in outputs {
        let parts = if batch.len() == 1 || !batched {
            vec![out]
        } else {
            out.split(sizes).map_err(|_| {
                ServeError::internal(format!(
                    "model returned an output of shape {:?}, which does not hold the batch of {}",
                    out.shape,
                    sizes.iter().sum::<usize>()
                ))
            })?
        };
        for (r, part) in per_request.iter_mut().zip(parts) {
            r.push(part);
        }
    }
    Ok((per_request, t1 - t0, t2 - t1, t2.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendError, Signature};
    use crate::metrics::Metrics;

    /// Returns its input as output, records batch sizes, and can be held shut by a gate.
    struct Echo {
        sig: Signature,
        log: Arc<Mutex<Vec<(usize, f32)>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Session for Echo {
        fn signature(&self) -> &Signature {
            &self.sig
        }
        fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
            let (open, cv) = &*self.gate;
            let mut o = open.lock();
            while !*o {
                cv.wait(&mut o);
            }
            drop(o);
            let first = inputs[0].to_vec::<f32>().unwrap_or_default();
            self.log
                .lock()
                .push((inputs[0].shape[0], first.first().copied().unwrap_or(0.0)));
            Ok(vec![inputs[0].clone()])
        }
    }

    struct Rig {
        sched: Scheduler,
        log: Arc<Mutex<Vec<(usize, f32)>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Rig {
        fn new(policy: BatchPolicy, open: bool) -> Rig {
            let log = Arc::new(Mutex::new(Vec::new()));
            let gate = Arc::new((Mutex::new(open), Condvar::new()));
            let session = Box::new(Echo {
                sig: Signature::default(),
                log: log.clone(),
                gate: gate.clone(),
            });
            let sched = Scheduler::new(
                "m",
                vec![session],
                policy,
                Arc::new(ModelStats::default()),
                Metrics::new().for_version("m", 1),
            )
            .unwrap();
            Rig { sched, log, gate }
        }
        fn open(&self) {
            *self.gate.0.lock() = true;
            self.gate.1.notify_all();
        }
        fn submit(
            &self,
            value: f32,
            batch: usize,
            priority: usize,
            timeout: Option<Duration>,
        ) -> ServeResult<oneshot::Receiver<JobResult>> {
            self.sched.submit(Job {
                inputs: vec![Tensor::from_slice(vec![batch, 1], &vec![value; batch]).unwrap()],
                batch,
                priority,
                timeout,
            })
        }
        fn batches(&self) -> Vec<usize> {
            self.log.lock().iter().map(|e| e.0).collect()
        }
        /// The first value of each executed batch, in execution order.
        fn firsts(&self) -> Vec<f32> {
            self.log.lock().iter().map(|e| e.1).collect()
        }
    }

    fn wait(rx: oneshot::Receiver<JobResult>) -> JobResult {
        rx.blocking_recv().expect("worker answered")
    }

    fn value(r: JobResult) -> Vec<f32> {
        r.unwrap().outputs[0].to_vec::<f32>().unwrap()
    }

    fn dynamic(max: usize, preferred: Vec<usize>, delay_ms: u64) -> BatchPolicy {
        BatchPolicy {
            max_batch_size: max,
            dynamic: Some(DynamicBatching {
                preferred,
                max_delay: Duration::from_millis(delay_ms),
                priority_levels: 0,
                default_level: 0,
                level_policies: vec![QueuePolicy::default()],
            }),
            max_queue: 100,
        }
    }

    /// Lets the worker pick the first request and block on the gate, so the rest queue up.
    fn hold_worker(rig: &Rig) -> oneshot::Receiver<JobResult> {
        let first = rig.submit(0.0, 1, 0, None).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        first
    }

    #[test]
    fn without_dynamic_batching_each_request_runs_alone() {
        let rig = Rig::new(
            BatchPolicy {
                max_batch_size: 8,
                dynamic: None,
                max_queue: 100,
            },
            false,
        );
        let first = hold_worker(&rig);
        let rxs: Vec<_> = (1..=3)
            .map(|i| rig.submit(i as f32, i, 0, None).unwrap())
            .collect();
        rig.open();
        wait(first).unwrap();
        for (i, rx) in rxs.into_iter().enumerate() {
            assert_eq!(value(wait(rx)), vec![(i + 1) as f32; i + 1]);
        }
        assert_eq!(rig.batches(), vec![1, 1, 2, 3]);
    }

    #[test]
    fn queued_requests_are_batched_and_split_back() {
        let rig = Rig::new(dynamic(8, vec![], 0), false);
        let first = hold_worker(&rig);
        let rxs: Vec<_> = (1..=3)
            .map(|i| rig.submit(i as f32, i, 0, None).unwrap())
            .collect();
        rig.open();
        wait(first).unwrap();
        for (i, rx) in rxs.into_iter().enumerate() {
            assert_eq!(value(wait(rx)), vec![(i + 1) as f32; i + 1]);
        }
        assert_eq!(rig.batches(), vec![1, 6]);
    }

    #[test]
    fn max_batch_size_caps_a_batch() {
        let rig = Rig::new(dynamic(4, vec![], 0), false);
        let first = hold_worker(&rig);
        let rxs: Vec<_> = (0..10)
            .map(|_| rig.submit(1.0, 1, 0, None).unwrap())
            .collect();
        rig.open();
        wait(first).unwrap();
        rxs.into_iter().for_each(|r| {
            wait(r).unwrap();
        });
        assert_eq!(rig.batches(), vec![1, 4, 4, 2]);
    }

    #[test]
    fn the_queue_delay_gathers_a_batch() {
        let rig = Rig::new(dynamic(8, vec![], 80), true);
        let start = Instant::now();
        let rxs: Vec<_> = (0..3)
            .map(|_| rig.submit(1.0, 1, 0, None).unwrap())
            .collect();
        rxs.into_iter().for_each(|r| {
            wait(r).unwrap();
        });
        assert!(
            start.elapsed() >= Duration::from_millis(70),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(rig.batches(), vec![3]);
    }

    #[test]
    fn a_preferred_size_is_sent_without_waiting_out_the_delay() {
        let rig = Rig::new(dynamic(8, vec![2, 4], 5_000), true);
        let start = Instant::now();
        let a = rig.submit(1.0, 1, 0, None).unwrap();
        let b = rig.submit(1.0, 1, 0, None).unwrap();
        wait(a).unwrap();
        wait(b).unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(rig.batches(), vec![2]);
    }

    #[test]
    fn after_the_delay_the_largest_preferred_size_goes_first() {
        let rig = Rig::new(dynamic(8, vec![2], 50), true);
        let start = Instant::now();
        let rxs: Vec<_> = (0..3)
            .map(|_| rig.submit(1.0, 1, 0, None).unwrap())
            .collect();
        rxs.into_iter().for_each(|r| {
            wait(r).unwrap();
        });
        assert!(
            start.elapsed() >= Duration::from_millis(45),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(rig.batches(), vec![2, 1]);
    }

    #[test]
    fn more_than_the_largest_preferred_size_is_cut_to_it() {
        let rig = Rig::new(dynamic(8, vec![2, 3], 0), false);
        let first = hold_worker(&rig);
        let rxs: Vec<_> = (0..5)
            .map(|_| rig.submit(1.0, 1, 0, None).unwrap())
            .collect();
        rig.open();
        wait(first).unwrap();
        rxs.into_iter().for_each(|r| {
            wait(r).unwrap();
        });
        assert_eq!(rig.batches(), vec![1, 3, 2]);
    }

    #[test]
    fn different_shapes_are_not_batched_together() {
        let rig = Rig::new(dynamic(8, vec![], 0), false);
        let first = hold_worker(&rig);
        let a = rig.submit(1.0, 1, 0, None).unwrap();
        let odd = rig
            .sched
            .submit(Job {
                inputs: vec![Tensor::from_slice(vec![1, 2], &[5.0f32, 5.0]).unwrap()],
                batch: 1,
                priority: 0,
                timeout: None,
            })
            .unwrap();
        let b = rig.submit(2.0, 1, 0, None).unwrap();
        rig.open();
        wait(first).unwrap();
        assert_eq!(value(wait(a)), vec![1.0]);
        assert_eq!(value(wait(b)), vec![2.0]);
        assert_eq!(value(wait(odd)), vec![5.0, 5.0]);
        assert_eq!(rig.batches(), vec![1, 2, 1]);
    }

    fn with_priorities(levels: usize, policies: Vec<QueuePolicy>, max_batch: usize) -> BatchPolicy {
        BatchPolicy {
            max_batch_size: max_batch,
            dynamic: Some(DynamicBatching {
                preferred: vec![],
                max_delay: Duration::ZERO,
                priority_levels: levels,
                default_level: levels,
                level_policies: policies,
            }),
            max_queue: 100,
        }
    }

    #[test]
    fn higher_priority_runs_first() {
        let rig = Rig::new(
            with_priorities(2, vec![QueuePolicy::default(); 2], 1),
            false,
        );
        let first = hold_worker(&rig);
        let low = rig.submit(2.0, 1, 0, None).unwrap();
        let high = rig.submit(1.0, 1, 1, None).unwrap();
        assert!(
            rig.submit(1.0, 1, 3, None).is_err(),
            "level 3 does not exist"
        );
        rig.open();
        wait(first).unwrap();
        assert_eq!(value(wait(high)), vec![1.0]);
        assert_eq!(value(wait(low)), vec![2.0]);
        assert_eq!(rig.firsts(), vec![0.0, 1.0, 2.0]);
    }

    #[test]
    fn background_work_waits_for_online_requests() {
        for policy in [
            dynamic(1, vec![], 0),
            with_priorities(2, vec![QueuePolicy::default(); 2], 1),
        ] {
            let rig = Rig::new(policy, false);
            let first = hold_worker(&rig);
            let bg = rig.submit(9.0, 1, BACKGROUND, None).unwrap();
            let online = rig.submit(1.0, 1, 0, None).unwrap();
            let low = rig.submit(2.0, 1, 0, None).unwrap();
            rig.open();
            wait(first).unwrap();
            assert_eq!(value(wait(bg)), vec![9.0]);
            wait(online).unwrap();
            wait(low).unwrap();
            assert_eq!(rig.firsts(), vec![0.0, 1.0, 2.0, 9.0]);
        }
    }

    #[test]
    fn background_work_pauses_while_online_traffic_is_present() {
        let rig = Rig::new(dynamic(4, vec![], 0), false);
        let held = rig.submit(0.0, 1, BACKGROUND, None).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let online = rig.submit(1.0, 1, 0, None).unwrap();
        let bg = rig.submit(9.0, 1, BACKGROUND, None).unwrap();
        rig.open();
        wait(held).unwrap();
        wait(online).unwrap();
        wait(bg).unwrap();
        // The background batch took 30 ms while online traffic was present, so background
        // work pauses: it does not ride along in the online request's batch.
        assert_eq!(rig.batches(), vec![1, 1, 1]);
        assert_eq!(rig.firsts(), vec![0.0, 1.0, 9.0]);
    }

    #[test]
    fn reject_policy_fails_requests_that_waited_too_long() {
        let policy = QueuePolicy {
            timeout_action: TimeoutAction::Reject,
            default_timeout: Some(Duration::from_secs(60)),
            allow_timeout_override: true,
            max_queue_size: 0,
        };
        let rig = Rig::new(with_priorities(0, vec![policy], 4), false);
        let first = hold_worker(&rig);
        let short = rig
            .submit(1.0, 1, 0, Some(Duration::from_millis(20)))
            .unwrap();
        let long = rig.submit(2.0, 1, 0, None).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        rig.open();
        wait(first).unwrap();
        let e = wait(short).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert_eq!(e.message, "Request timeout expired");
        assert_eq!(value(wait(long)), vec![2.0]);
    }

    #[test]
    fn delay_policy_serves_timed_out_requests_last() {
        let policy = QueuePolicy {
            timeout_action: TimeoutAction::Delay,
            default_timeout: None,
            allow_timeout_override: true,
            max_queue_size: 0,
        };
        let rig = Rig::new(with_priorities(0, vec![policy], 1), false);
        let first = hold_worker(&rig);
        let late = rig
            .submit(1.0, 1, 0, Some(Duration::from_millis(10)))
            .unwrap();
        let other = rig.submit(2.0, 1, 0, None).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        rig.open();
        wait(first).unwrap();
        assert_eq!(value(wait(other)), vec![2.0]);
        assert_eq!(value(wait(late)), vec![1.0]);
        assert_eq!(rig.batches(), vec![1, 1, 1]);
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let mut policy = dynamic(4, vec![], 0);
        policy.max_queue = 2;
        let rig = Rig::new(policy, false);
        let first = hold_worker(&rig);
        let a = rig.submit(1.0, 1, 0, None).unwrap();
        let b = rig.submit(1.0, 1, 0, None).unwrap();
        let e = rig.submit(1.0, 1, 0, None).unwrap_err();
        assert_eq!(e.kind, ErrorKind::QueueFull);
        assert_eq!(rig.sched.queued(), 2);
        rig.open();
        for r in [first, a, b] {
            wait(r).unwrap();
        }
    }

    #[test]
    fn a_level_queue_limit_refuses_at_once() {
        let policy = QueuePolicy {
            max_queue_size: 1,
            ..QueuePolicy::default()
        };
        let rig = Rig::new(with_priorities(0, vec![policy], 4), false);
        let first = hold_worker(&rig);
        let a = rig.submit(1.0, 1, 0, None).unwrap();
        let e = rig.submit(1.0, 1, 0, None).unwrap_err();
        assert!(e.message.contains("Exceeds maximum queue size"), "{e}");
        rig.open();
        wait(first).unwrap();
        wait(a).unwrap();
    }

    #[test]
    fn requests_whose_client_left_are_dropped() {
        let rig = Rig::new(dynamic(8, vec![], 0), false);
        let first = hold_worker(&rig);
        let gone = rig.submit(1.0, 3, 0, None).unwrap();
        drop(gone);
        let kept = rig.submit(2.0, 1, 0, None).unwrap();
        rig.open();
        wait(first).unwrap();
        assert_eq!(value(wait(kept)), vec![2.0]);
        assert_eq!(rig.batches(), vec![1, 1]);
    }

    #[test]
    fn dropping_the_scheduler_finishes_queued_work() {
        let rig = Rig::new(dynamic(1, vec![], 0), false);
        let first = hold_worker(&rig);
        let a = rig.submit(7.0, 1, 0, None).unwrap();
        let Rig { sched, gate, .. } = rig;
        drop(sched);
        *gate.0.lock() = true;
        gate.1.notify_all();
        wait(first).unwrap();
        assert_eq!(value(wait(a)), vec![7.0]);
    }
}
