//! Prometheus metrics. Names follow Triton's (`nv_inference_*`) so existing Grafana
//! dashboards and alerts keep working; histograms add what Triton's counters cannot show.

mod api;
mod ready;

use std::time::Duration;

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use api::{ApiMetrics, InFlight, ModelLabel};
pub use ready::ModelReadyCollector;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub success: IntCounterVec,
    pub failure: IntCounterVec,
    pub inference_count: IntCounterVec,
    pub exec_count: IntCounterVec,
    pub request_us: IntCounterVec,
    pub queue_us: IntCounterVec,
    pub compute_infer_us: IntCounterVec,
    pub pending: IntGaugeVec,
    pub queue_seconds: HistogramVec,
    pub compute_seconds: HistogramVec,
    pub request_seconds: HistogramVec,
    pub batch_size: HistogramVec,
    /// Photos classified (`/predict`, TorchServe, batch prediction, jobs), by top-1 class.
    pub predictions: IntCounterVec,
    /// The top-1 probability of each classified photo: a falling mean is a drift signal.
    pub confidence: HistogramVec,
    pub api: ApiMetrics,
    /// Triton's response cache counters (`--cache-config`).
    pub cache_hits: IntCounterVec,
    pub cache_misses: IntCounterVec,
    pub cache_hit_us: IntCounterVec,
    pub cache_miss_us: IntCounterVec,
    /// Seconds from the process start to serving on every port (the cold-start objective).
    pub startup_seconds: Gauge,
    /// Routed requests by route, variant and outcome (`success`, `failure`).
    pub route_requests: IntCounterVec,
    /// The weight each variant has now (a canary moves it).
    pub route_weight: IntGaugeVec,
    /// Canaries rolled back, automatically or by hand.
    pub route_rollbacks: IntCounterVec,
    /// Mirrored requests by result: `agree`, `disagree`, `failed`, `dropped`.
    pub shadow_requests: IntCounterVec,
}

const LABELS: &[&str] = &["model", "version"];

fn plain_counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn latency_buckets() -> Vec<f64> {
    vec![
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.3, 0.5, 1.0, 2.5,
    ]
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, extra: &[&str]| {
            let labels: Vec<&str> = LABELS.iter().chain(extra).copied().collect();
            let c = IntCounterVec::new(Opts::new(name, help), &labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let hist = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), LABELS)
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let pending = IntGaugeVec::new(
            Opts::new(
                "nv_inference_pending_request_count",
                "Requests waiting in the queue or running",
            ),
            LABELS,
        )
        .expect("valid metric");
        registry
            .register(Box::new(pending.clone()))
            .expect("unique metric");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        Metrics {
            success: counter("nv_inference_request_success", "Successful requests", &[]),
            failure: counter(
                "nv_inference_request_failure",
                "Failed requests",
                &["reason"],
            ),
            inference_count: counter(
                "nv_inference_count",
                "Inferences performed (a batch of n counts n)",
                &[],
            ),
            exec_count: counter("nv_inference_exec_count", "Model executions (batches)", &[]),
            request_us: counter(
                "nv_inference_request_duration_us",
                "Cumulative end-to-end request time in microseconds",
                &[],
            ),
            queue_us: counter(
                "nv_inference_queue_duration_us",
                "Cumulative time requests waited in the queue, in microseconds",
                &[],
            ),
            compute_infer_us: counter(
                "nv_inference_compute_infer_duration_us",
                "Cumulative model execution time in microseconds",
                &[],
            ),
            pending,
            queue_seconds: hist(
                "infera_queue_duration_seconds",
                "Time a request waited in the queue",
                latency_buckets(),
            ),
            compute_seconds: hist(
                "infera_compute_duration_seconds",
                "Time one batch spent in the model",
                latency_buckets(),
            ),
            request_seconds: hist(
                "infera_request_duration_seconds",
                "End-to-end request time inside the server",
                latency_buckets(),
            ),
            batch_size: hist(
                "infera_batch_size",
                "Items per model execution",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            ),
            predictions: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "infera_predictions_total",
                        "Classified photos by top-1 class",
                    ),
                    &["model", "class"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            confidence: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "infera_prediction_confidence",
                        "Top-1 probability of each classified photo",
                    )
                    .buckets(vec![
                        0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0,
                    ]),
                    &["model"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(h.clone()))
                    .expect("unique metric");
                h
            },
            api: ApiMetrics::new(&registry),
            cache_hits: counter(
                "nv_cache_num_hits_per_model",
                "Requests answered from the response cache",
                &[],
            ),
            cache_misses: counter(
                "nv_cache_num_misses_per_model",
                "Cacheable requests not in the response cache",
                &[],
            ),
            cache_hit_us: counter(
                "nv_cache_hit_duration_per_model",
                "Cumulative time of cache lookups that hit, in microseconds",
                &[],
            ),
            cache_miss_us: counter(
                "nv_cache_miss_duration_per_model",
                "Cumulative time of cache lookups that missed and of storing their answers, in microseconds",
                &[],
            ),
            startup_seconds: {
                let g = Gauge::new(
                    "infera_startup_duration_seconds",
                    "Seconds from the process start until every model was loaded and every port served",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            route_requests: plain_counter(
                &registry,
                "infera_route_requests_total",
                "Requests through a route, by variant and outcome",
                &["route", "variant", "outcome"],
            ),
            route_weight: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "infera_route_weight",
                        "The weight of each variant of a route now",
                    ),
                    &["route", "variant"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            route_rollbacks: plain_counter(
                &registry,
                "infera_route_rollbacks_total",
                "Canary candidates rolled back (automatically or by hand)",
                &["route"],
            ),
            shadow_requests: plain_counter(
                &registry,
                "infera_shadow_requests_total",
                "Requests mirrored to a shadow model, by result (agree, disagree, failed, dropped)",
                &["route", "result"],
            ),
            registry,
        }
    }

    /// Counts one classified photo under its top-1 class. Classes past the first
    /// [`MAX_CLASS_SERIES`] share one series, so a model with a huge label file cannot
    /// flood the scrape.
    pub fn record_prediction(&self, model: &str, class: usize, label: &str, confidence: f32) {
        let label = if class < MAX_CLASS_SERIES {
            label
        } else {
            "other"
        };
        self.predictions.with_label_values(&[model, label]).inc();
        self.confidence
            .with_label_values(&[model])
            .observe(f64::from(confidence));
    }

    /// Adds a collector read at every scrape (e.g. per-identity usage).
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> Result<(), String> {
        self.registry.register(c).map_err(|e| e.to_string())
    }

    /// The text exposition format for `/metrics`.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }

    pub fn for_version(&self, model: &str, version: i64) -> VersionMetrics {
        let v = version.to_string();
        let l = [model, v.as_str()];
        // Every reason from the load on (as Triton does), so ratios have data before a failure.
        for reason in ["REJECTED", "CANCELED", "OTHER"] {
            self.failure.with_label_values(&[model, v.as_str(), reason]);
        }
        VersionMetrics {
            metrics: self.clone(),
            model: model.to_string(),
            version: v.clone(),
            inference_count: self.inference_count.with_label_values(&l),
            exec_count: self.exec_count.with_label_values(&l),
            queue_us: self.queue_us.with_label_values(&l),
            compute_infer_us: self.compute_infer_us.with_label_values(&l),
            pending: self.pending.with_label_values(&l),
            queue_seconds: self.queue_seconds.with_label_values(&l),
            compute_seconds: self.compute_seconds.with_label_values(&l),
            batch_size: self.batch_size.with_label_values(&l),
            success: self.success.with_label_values(&l),
            request_us: self.request_us.with_label_values(&l),
            request_seconds: self.request_seconds.with_label_values(&l),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The metric children of one model version, resolved once so the hot path does no lookups.
#[derive(Clone)]
pub struct VersionMetrics {
    metrics: Metrics,
    model: String,
    version: String,
    pub inference_count: prometheus::IntCounter,
    pub exec_count: prometheus::IntCounter,
    pub queue_us: prometheus::IntCounter,
    pub compute_infer_us: prometheus::IntCounter,
    pub pending: prometheus::IntGauge,
    pub queue_seconds: prometheus::Histogram,
    pub compute_seconds: prometheus::Histogram,
    pub batch_size: prometheus::Histogram,
    pub success: prometheus::IntCounter,
    pub request_us: prometheus::IntCounter,
    pub request_seconds: prometheus::Histogram,
}

impl VersionMetrics {
    /// A response cache lookup: a hit, or a miss whose answer was then stored.
    pub fn record_cache(&self, hit: bool, took: Duration) {
        let m = &self.metrics;
        let l = [self.model.as_str(), self.version.as_str()];
        let (count, us) = if hit {
            (&m.cache_hits, &m.cache_hit_us)
        } else {
            (&m.cache_misses, &m.cache_miss_us)
        };
        count.with_label_values(&l).inc();
        us.with_label_values(&l).inc_by(took.as_micros() as u64);
    }

    pub fn record_request(&self, result: Result<(), &str>, total: Duration) {
        match result {
            Ok(()) => self.success.inc(),
            Err(reason) => self
                .metrics
                .failure
                .with_label_values(&[&self.model, &self.version, reason])
                .inc(),
        }
        self.request_us.inc_by(total.as_micros() as u64);
        self.request_seconds.observe(total.as_secs_f64());
    }
}

/// Classes of one model with their own `infera_predictions_total` series.
pub const MAX_CLASS_SERIES: usize = 256;
