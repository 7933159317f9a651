//! Per model-version request queue and workers: Triton's dynamic batcher.
//!
//! Each instance (session) has its own OS thread. A free worker forms the next batch
//! itself, so batches grow naturally while every worker is busy, and a queue delay is
//! only waited for when a worker is idle. Requests are grouped only with requests whose
//! non-batch shapes match, so batching never changes a result.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// A large request may be cut across idle instances ([`Scheduler::run`]): only for
    /// dynamically batched models whose outputs have fixed non-batch dims, so the parts
    /// join back into exactly the rows one run would give.
    pub split: bool,
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
    /// Open while the request waits: a trace's "queue" span (disabled unless traces are on).
    queue_span: tracing::Span,
    /// The span that asked (the request or an ensemble step): the "backend" span's parent.
    parent: tracing::Span,
    /// Set on the parts of one cut request, which must not be batched back together.
    part_of: Option<u64>,
}

struct Queues {
    /// One deque per priority level (one when levels are off), then the background lane.
    levels: Vec<VecDeque<Pending>>,
    /// Requests whose timeout passed under a DELAY policy: served after all others.
    delayed: VecDeque<Pending>,
    len: usize,
    shutdown: bool,
    /// Worker threads running now.
    workers: usize,
    /// Workers asked to stop: the next ones between batches do (a resize down drains).
    retire: usize,
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
    /// What one batch item has recently cost the model, in nanoseconds (0: not yet run).
    item_cost_ns: AtomicU64,
    /// What a run of one request has recently cost the model, in nanoseconds (0: not yet).
    single_cost_ns: AtomicU64,
    /// Batches taken and not yet answered.
    running: AtomicUsize,
    /// Sessions for requests run on the caller's thread ([`inline`]).
    inline: Mutex<inline::Pool>,
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
                workers: 0,
                retire: 0,
                last_online: None,
                background_resume: None,
            }),
            ready: Condvar::new(),
            stats,
            metrics,
            item_cost_ns: AtomicU64::new(0),
            single_cost_ns: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            inline: Mutex::new(inline::Pool::default()),
        });
        let scheduler = Scheduler { shared };
        for session in sessions {
            scheduler.spawn(session)?;
        }
        Ok(scheduler)
    }

    fn spawn(&self, session: Box<dyn Session>) -> std::io::Result<()> {
        let s = self.shared.clone();
        let mut q = s.queues.lock();
        let i = q.workers;
        std::thread::Builder::new()
            .name(format!("{}-{i}", s.model))
            .spawn({
                let s = s.clone();
                move || worker(s, session)
            })?;
        q.workers += 1;
        Ok(())
    }

    /// Instances serving now (workers asked to stop are not counted).
    pub fn instances(&self) -> usize {
        let q = self.shared.queues.lock();
        q.workers - q.retire
    }

    /// Grows or shrinks the instances to `n` (at least 1) without stopping the queue: new
    /// sessions come from `open`; a shrink lets the surplus workers finish the batch they run
    /// and stop, so no request in flight or queued fails.
    pub fn resize(
        &self,
        n: usize,
        mut open: impl FnMut() -> ServeResult<Box<dyn Session>>,
    ) -> ServeResult<()> {
        let n = n.max(1);
        let mut q = self.shared.queues.lock();
        let now = q.workers - q.retire;
        if n < now {
            q.retire += now - n;
            drop(q);
            self.shared.ready.notify_all();
            return Ok(());
        }
        // Workers not yet gone are kept rather than replaced.
        let kept = q.retire.min(n - now);
        q.retire -= kept;
        let missing = n - now - kept;
        drop(q);
        for _ in 0..missing {
            let session = open()?;
            self.spawn(session).map_err(|e| {
                ServeError::internal(format!(
                    "model '{}': cannot start a worker: {e}",
                    self.shared.model
                ))
            })?;
        }
        Ok(())
    }

    /// Queues a job. Fails at once (never blocks) when the queue is full.
    pub fn submit(&self, job: Job) -> ServeResult<oneshot::Receiver<JobResult>> {
        self.enqueue(job, None)
    }

    fn enqueue(&self, job: Job, part_of: Option<u64>) -> ServeResult<oneshot::Receiver<JobResult>> {
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
        let queue_span = tracing::debug_span!("queue", model = %s.model);
        let parent = if queue_span.is_disabled() {
            tracing::Span::none()
        } else {
            tracing::Span::current()
        };
        q.levels[level].push_back(Pending {
            job,
            enqueued: now,
            // A timeout too large to represent is no timeout.
            deadline: timeout.and_then(|t| now.checked_add(t)),
            tx,
            queue_span,
            parent,
            part_of,
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
        let mut parts = Vec::new();
        'outer: for &k in &order {
            for i in 0..queue_of(q, k) {
                let p = at(q, k, i);
                if p.part_of.is_some_and(|g| parts.contains(&g)) {
                    continue;
                }
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
                parts.extend(p.part_of);
                total += p.job.batch;
            }
        }
        let largest_preferred = d.preferred.last().copied();
        let due = head.enqueued.checked_add(d.max_delay).unwrap_or(now);
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
        let mut batch = {
            let mut q = s.queues.lock();
            loop {
                if q.retire > 0 {
                    q.retire -= 1;
                    q.workers -= 1;
                    return;
                }
                let now = Instant::now();
                let next_deadline = s.expire(&mut q, now);
                match s.pick(&mut q, now) {
                    Pick::Take(chosen) => {
                        s.running.fetch_add(1, Ordering::Relaxed);
                        break take(&mut q, chosen);
                    }
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
        for p in &mut batch {
            // The wait is over: closes the "queue" span.
            p.queue_span = tracing::Span::none();
        }
        if batch.is_empty() {
            s.running.fetch_sub(1, Ordering::Relaxed);
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
    if result.is_err() && batch.len() > 1 {
        // One request's bad data (or a runtime failure it provokes) must not fail the others
        // it was batched with: run each alone, so only the culprit gets the error.
        for (i, p) in batch.into_iter().enumerate() {
            if i > 0 {
                // Each run holds one count of `running`, which its `finish` gives back.
                s.running.fetch_add(1, Ordering::Relaxed);
            }
            execute(s, session, vec![p]);
        }
        return;
    }
    finish(s, batch, result, start);
}

fn run_guarded(s: &Shared, session: &mut dyn Session, batch: &[Pending]) -> ServeResult<BatchRun> {
    let sizes: Vec<usize> = batch.iter().map(|p| p.job.batch).collect();
    // One run serves several requests: it is the first one's child and follows the others.
    let span = batch.first().map_or_else(tracing::Span::none, |first| {
        tracing::debug_span!(parent: &first.parent, "backend", model = %s.model, batch = sizes.iter().sum::<usize>())
    });
    for p in batch.iter().skip(1) {
        span.follows_from(&p.parent);
    }
    let _entered = span.enter();
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
    // Before the answers go out, so a caller that comes straight back finds this worker free.
    s.running.fetch_sub(1, Ordering::Relaxed);
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
            s.record_cost(t_infer, total, batch.len());
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

mod inline;
mod split;
#[cfg(test)]
mod tests;
