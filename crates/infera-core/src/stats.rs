//! Per model-version statistics with Triton's field set (the `statistics` extension).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Duration64 {
    pub count: u64,
    pub ns: u64,
}

impl Duration64 {
    fn add(&mut self, d: Duration) {
        self.count += 1;
        self.ns += u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InferStats {
    pub success: Duration64,
    pub fail: Duration64,
    pub queue: Duration64,
    pub compute_input: Duration64,
    pub compute_infer: Duration64,
    pub compute_output: Duration64,
    pub cache_hit: Duration64,
    pub cache_miss: Duration64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub compute_input: Duration64,
    pub compute_infer: Duration64,
    pub compute_output: Duration64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Milliseconds since the epoch; 0 when nothing ran yet.
    pub last_inference: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub inference: InferStats,
    pub batches: BTreeMap<usize, BatchStats>,
}

/// Timings of one request, as recorded by the scheduler.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestTiming {
    pub queue: Duration,
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
}

#[derive(Debug, Default)]
pub struct ModelStats {
    inner: Mutex<StatsSnapshot>,
}

impl ModelStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        self.inner.lock().clone()
    }

    /// One model execution over `batch` items made of `requests` requests.
    pub fn record_execution(
        &self,
        batch: usize,
        timing: &RequestTiming,
        requests: &[RequestTiming],
    ) {
        let mut s = self.inner.lock();
        s.execution_count += 1;
        s.inference_count += batch as u64;
        s.last_inference = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let b = s.batches.entry(batch).or_default();
        b.compute_input.add(timing.compute_input);
        b.compute_infer.add(timing.compute_infer);
        b.compute_output.add(timing.compute_output);
        for r in requests {
            s.inference.queue.add(r.queue);
            s.inference.compute_input.add(r.compute_input);
            s.inference.compute_infer.add(r.compute_infer);
            s.inference.compute_output.add(r.compute_output);
        }
    }

    /// A request's end: its whole duration from arrival to response.
    /// A request answered from the response cache, and the time the lookup took.
    pub fn record_cache_hit(&self, lookup: Duration) {
        self.inner.lock().inference.cache_hit.add(lookup);
    }

    /// A cacheable request that ran, and the time spent looking it up and storing its answer.
    pub fn record_cache_miss(&self, cache_time: Duration) {
        self.inner.lock().inference.cache_miss.add(cache_time);
    }

    pub fn record_request(&self, ok: bool, total: Duration) {
        let mut s = self.inner.lock();
        if ok {
            s.inference.success.add(total);
        } else {
            s.inference.fail.add(total);
        }
    }
}
