//! The canary's judgement: the candidate's error ratio and p95 latency over a sliding window,
//! compared with the stable variant's over the same window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::spec::CanarySpec;

/// Outcomes one variant keeps for its window; older ones go first.
const MAX_OUTCOMES: usize = 50_000;

#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub at: Instant,
    pub ok: bool,
    pub latency: Duration,
}

/// The recent outcomes of one variant.
#[derive(Debug, Default)]
pub struct Outcomes(VecDeque<Outcome>);

impl Outcomes {
    pub fn push(&mut self, o: Outcome) {
        if self.0.len() == MAX_OUTCOMES {
            self.0.pop_front();
        }
        self.0.push_back(o);
    }

    /// Drops what is older than `since` and summarises the rest.
    pub fn window(&mut self, since: Instant) -> Window {
        while self.0.front().is_some_and(|o| o.at < since) {
            self.0.pop_front();
        }
        let requests = self.0.len() as u64;
        let failures = self.0.iter().filter(|o| !o.ok).count() as u64;
        let mut ok: Vec<Duration> = self.0.iter().filter(|o| o.ok).map(|o| o.latency).collect();
        ok.sort_unstable();
        let p95 = (!ok.is_empty()).then(|| ok[((ok.len() * 95).div_ceil(100)).max(1) - 1]);
        Window {
            requests,
            failures,
            p95,
        }
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub requests: u64,
    pub failures: u64,
    /// Of the successful requests.
    pub p95: Option<Duration>,
}

impl Window {
    pub fn error_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.failures as f64 / self.requests as f64
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not enough evidence yet, or the next step is not due.
    Hold,
    Step,
    Rollback(String),
}

/// Where a canary is.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    Running { weight: u32, next_step: Instant },
    Promoted,
    RolledBack { reason: String },
}

impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Running { .. } => "running",
            Phase::Promoted => "promoted",
            Phase::RolledBack { .. } => "rolled_back",
        }
    }
}

/// Judges the candidate against the stable variant. A candidate with fewer than
/// `min_requests` in the window is neither stepped up nor rolled back.
pub fn evaluate(spec: &CanarySpec, stable: &Window, candidate: &Window, step_due: bool) -> Verdict {
    if candidate.requests < spec.min_requests.max(1) {
        return Verdict::Hold;
    }
    let ratio = candidate.error_ratio();
    if ratio > spec.max_error_ratio {
        return Verdict::Rollback(format!(
            "error ratio {ratio:.3} > {} ({} of {} requests in {} s)",
            spec.max_error_ratio, candidate.failures, candidate.requests, spec.window_secs
        ));
    }
    if let (Some(c), Some(s)) = (candidate.p95, stable.p95)
        && stable.requests >= spec.min_requests
    {
        let limit = (s.as_secs_f64() * spec.max_latency_ratio)
            .max(s.as_secs_f64() + spec.latency_slack_ms / 1000.0);
        if c.as_secs_f64() > limit {
            return Verdict::Rollback(format!(
                "p95 latency {:.1} ms > {:.1} ms (stable p95 {:.1} ms, over {} s)",
                c.as_secs_f64() * 1000.0,
                limit * 1000.0,
                s.as_secs_f64() * 1000.0,
                spec.window_secs
            ));
        }
    }
    if step_due {
        Verdict::Step
    } else {
        Verdict::Hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CanarySpec {
        serde_json::from_str(r#"{"candidate":"c","min_requests":10,"max_error_ratio":0.05}"#)
            .unwrap()
    }

    fn window(requests: u64, failures: u64, p95_ms: u64) -> Window {
        Window {
            requests,
            failures,
            p95: Some(Duration::from_millis(p95_ms)),
        }
    }

    #[test]
    fn judges_errors_latency_and_evidence() {
        let s = spec();
        let stable = window(100, 0, 10);
        assert_eq!(
            evaluate(&s, &stable, &window(5, 5, 10), true),
            Verdict::Hold
        );
        assert_eq!(
            evaluate(&s, &stable, &window(20, 0, 12), true),
            Verdict::Step
        );
        assert_eq!(
            evaluate(&s, &stable, &window(20, 1, 12), false),
            Verdict::Hold
        );
        let Verdict::Rollback(why) = evaluate(&s, &stable, &window(20, 6, 10), false) else {
            panic!("30% errors must roll back");
        };
        assert!(why.starts_with("error ratio 0.300"), "{why}");
        // 2x and 5 ms over the stable p95 are both needed.
        assert_eq!(
            evaluate(&s, &stable, &window(20, 0, 15), true),
            Verdict::Step
        );
        assert!(matches!(
            evaluate(&s, &stable, &window(20, 0, 21), true),
            Verdict::Rollback(w) if w.starts_with("p95 latency 21.0 ms")
        ));
        let fast = window(100, 0, 1);
        assert_eq!(evaluate(&s, &fast, &window(20, 0, 5), true), Verdict::Step);
    }

    #[test]
    fn window_slides_and_p95_counts_only_successes() {
        let t0 = Instant::now();
        let mut o = Outcomes::default();
        for i in 0..100u64 {
            o.push(Outcome {
                at: t0 + Duration::from_millis(i),
                ok: i % 10 != 0,
                latency: Duration::from_millis(i),
            });
        }
        let w = o.window(t0);
        assert_eq!((w.requests, w.failures), (100, 10));
        // 90 successes: the 86th smallest (1..99 without multiples of 10) is 95.
        assert_eq!(w.p95, Some(Duration::from_millis(95)));
        let w = o.window(t0 + Duration::from_millis(50));
        assert_eq!((w.requests, w.failures), (50, 5));
    }
}
