//! The dynamic batcher with a gated echo session: batching, priorities, queue policies.

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
        split: false,
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
            split: false,
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
        split: false,
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
