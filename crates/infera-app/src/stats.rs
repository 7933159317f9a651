//! What `/stats` reports: requests, errors, latency percentiles over the most recent requests,
//! and how many predictions went to each class.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};

const WINDOW: usize = 10_000;

#[derive(Default)]
pub struct AppStats {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    requests: u64,
    errors: u64,
    recent_ms: VecDeque<f64>,
    per_class: BTreeMap<String, u64>,
}

impl AppStats {
    pub fn record(&self, latency: Duration, label: Option<&str>) {
        let mut s = self.inner.lock();
        s.requests += 1;
        if s.recent_ms.len() == WINDOW {
            s.recent_ms.pop_front();
        }
        s.recent_ms.push_back(latency.as_secs_f64() * 1e3);
        if let Some(l) = label {
            *s.per_class.entry(l.to_string()).or_default() += 1;
        }
    }

    pub fn record_error(&self) {
        let mut s = self.inner.lock();
        s.requests += 1;
        s.errors += 1;
    }

    pub fn to_json(&self) -> Value {
        let s = self.inner.lock();
        let mut sorted: Vec<f64> = s.recent_ms.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let pct = |p: f64| -> Value {
            if sorted.is_empty() {
                Value::Null
            } else {
                let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
                json!(sorted[i.min(sorted.len() - 1)])
            }
        };
        json!({
            "requests": s.requests,
            "errors": s.errors,
            "latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "window": sorted.len()},
            "predictions_per_class": s.per_class,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_counts() {
        let s = AppStats::default();
        for ms in 1..=100 {
            s.record(
                Duration::from_millis(ms),
                Some(if ms % 2 == 0 { "Bag" } else { "Coat" }),
            );
        }
        s.record_error();
        let j = s.to_json();
        assert_eq!(j["requests"], 101);
        assert_eq!(j["errors"], 1);
        assert_eq!(j["latency_ms"]["p50"], 51.0);
        assert_eq!(j["latency_ms"]["p99"], 99.0);
        assert_eq!(j["predictions_per_class"]["Bag"], 50);
    }
}
