//! `infera_model_ready`: every model of the repository, 1 when a version is ready to serve,
//! 0 when it failed to load, is loading or is unloaded, read from the repository index at
//! each scrape (the "model not ready" alert).

use std::sync::{Arc, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};

use crate::repository::ModelRepository;
use crate::repository::ModelState;

pub struct ModelReadyCollector {
    gauge: IntGaugeVec,
    repository: Weak<ModelRepository>,
}

impl ModelReadyCollector {
    pub fn new(repository: &Arc<ModelRepository>) -> ModelReadyCollector {
        ModelReadyCollector {
            gauge: IntGaugeVec::new(
                Opts::new(
                    "infera_model_ready",
                    "1 for each model version ready to serve; 0 for a model that failed to load, is loading or is unloaded",
                ),
                &["model", "version"],
            )
            .expect("valid metric"),
            repository: Arc::downgrade(repository),
        }
    }
}

impl Collector for ModelReadyCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Models come and go: only the current index is reported.
        self.gauge.reset();
        if let Some(repo) = self.repository.upgrade() {
            for e in repo.index(false) {
                let ready = e.state == ModelState::Ready.as_str();
                self.gauge
                    .with_label_values(&[&e.name, &e.version])
                    .set(i64::from(ready));
            }
        }
        self.gauge.collect()
    }
}
