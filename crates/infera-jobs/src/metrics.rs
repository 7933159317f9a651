//! Batch job metrics: jobs waiting and running (read from the store at each scrape), images
//! predicted or failed, jobs ended by status. A job whose images stop moving while it runs
//! is the "stuck job" alert.

use std::sync::{Arc, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use crate::JobManager;
use crate::store::Status;

#[derive(Clone)]
pub struct JobMetrics {
    jobs: IntGaugeVec,
    pub(crate) images: IntCounterVec,
    pub(crate) ended: IntCounterVec,
}

impl JobMetrics {
    pub(crate) fn new() -> JobMetrics {
        let m = JobMetrics {
            jobs: IntGaugeVec::new(
                Opts::new("infera_jobs", "Batch jobs queued or running now"),
                &["status"],
            )
            .expect("valid metric"),
            images: IntCounterVec::new(
                Opts::new(
                    "infera_job_images_total",
                    "Images batch jobs predicted (succeeded) or could not (failed)",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            ended: IntCounterVec::new(
                Opts::new(
                    "infera_jobs_ended_total",
                    "Batch jobs that ended, by status (succeeded, failed, cancelled)",
                ),
                &["status"],
            )
            .expect("valid metric"),
        };
        // Every series from the start, so rules over them have data before the first job.
        for s in ["queued", "running"] {
            m.jobs.with_label_values(&[s]);
        }
        for o in ["succeeded", "failed"] {
            m.images.with_label_values(&[o]);
        }
        for s in ["succeeded", "failed", "cancelled"] {
            m.ended.with_label_values(&[s]);
        }
        m
    }
}

/// The collector to register with the server's metrics; it holds the manager weakly.
pub struct JobCollector {
    metrics: JobMetrics,
    manager: Weak<JobManager>,
}

impl JobCollector {
    pub(crate) fn new(m: &Arc<JobManager>) -> JobCollector {
        JobCollector {
            metrics: m.metrics.clone(),
            manager: Arc::downgrade(m),
        }
    }
}

impl Collector for JobCollector {
    fn desc(&self) -> Vec<&Desc> {
        let m = &self.metrics;
        let mut d = m.jobs.desc();
        d.extend(m.images.desc());
        d.extend(m.ended.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let m = &self.metrics;
        if let Some(manager) = self.manager.upgrade() {
            let store = manager.store.lock();
            for s in [Status::Queued, Status::Running] {
                if let Ok(n) = store.count(s) {
                    m.jobs.with_label_values(&[s.as_str()]).set(n as i64);
                }
            }
        }
        let mut f = m.jobs.collect();
        f.extend(m.images.collect());
        f.extend(m.ended.collect());
        f
    }
}
