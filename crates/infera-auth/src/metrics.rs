//! Per-identity usage as Prometheus metrics, read from the keys' counters at scrape time
//! (nothing is recorded per request beyond the counters the limits already keep).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use crate::Auth;

pub struct UsageCollector {
    auth: Arc<Auth>,
    descs: Vec<Desc>,
}

fn requests() -> IntCounterVec {
    IntCounterVec::new(
        Opts::new(
            "infera_auth_requests_total",
            "Requests per API key since start, by outcome (allowed, or refused by a rate, concurrency or quota limit)",
        ),
        &["key", "outcome"],
    )
    .expect("valid metric")
}

fn quota() -> IntGaugeVec {
    IntGaugeVec::new(
        Opts::new(
            "infera_auth_quota_used",
            "Units (requests or images) used of each key's quota in the current period",
        ),
        &["key"],
    )
    .expect("valid metric")
}

impl UsageCollector {
    pub fn new(auth: Arc<Auth>) -> UsageCollector {
        let descs = requests()
            .desc()
            .into_iter()
            .chain(quota().desc())
            .cloned()
            .collect();
        UsageCollector { auth, descs }
    }
}

impl Collector for UsageCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (r, q) = (requests(), quota());
        let index = self.auth.index.read().clone();
        for s in index.by_digest.values() {
            let id = s.entry.id.as_str();
            r.with_label_values(&[id, "allowed"])
                .inc_by(s.allowed.load(Ordering::Relaxed));
            r.with_label_values(&[id, "refused"])
                .inc_by(s.refused.load(Ordering::Relaxed));
            if let Some((_, used)) = self.auth.quotas.used(id) {
                q.with_label_values(&[id])
                    .set(i64::try_from(used).unwrap_or(i64::MAX));
            }
        }
        let mut out = r.collect();
        out.extend(q.collect());
        out
    }
}
