//! Requests at the API edge: what the HTTP and gRPC front-ends' layers count.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Requests as the front-ends see them (HTTP routes, gRPC methods), by status: what
/// dashboards and SLA alerts read. `endpoint` is a route template or RPC name and `model` a
/// model the repository knows (else empty), so clients cannot mint new series.
#[derive(Clone)]
pub struct ApiMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGaugeVec,
}

/// Buckets that resolve the latency objectives people set (100, 200, 300, 500 ms, 1 s).
fn api_buckets() -> Vec<f64> {
    vec![
        0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

impl ApiMetrics {
    pub(super) fn new(registry: &Registry) -> ApiMetrics {
        let requests = IntCounterVec::new(
            Opts::new(
                "infera_api_requests_total",
                "Requests answered by the HTTP and gRPC front-ends, by endpoint, model and status code",
            ),
            &["protocol", "endpoint", "model", "code"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "infera_api_request_duration_seconds",
                "Time from a request's arrival at a front-end to its response",
            )
            .buckets(api_buckets()),
            &["protocol", "endpoint", "model"],
        )
        .expect("valid metric");
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "infera_api_requests_in_flight",
                "Requests a front-end is handling now",
            ),
            &["protocol", "endpoint"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        ApiMetrics {
            requests,
            duration,
            in_flight,
        }
    }

    /// Counts a request in flight until [`InFlight::finish`] (or drop, for a request whose
    /// client went away, which is then counted with code `cancelled`).
    pub fn start(&self, protocol: &'static str, endpoint: &str) -> InFlight {
        let gauge = self.in_flight.with_label_values(&[protocol, endpoint]);
        gauge.inc();
        InFlight {
            metrics: self.clone(),
            gauge,
            protocol,
            endpoint: endpoint.to_string(),
            started: std::time::Instant::now(),
            finished: false,
        }
    }
}

/// The model a front-end's handler served, put in the response's extensions for the layer
/// that counts requests (gRPC carries the model in the body, which the layer does not read).
#[derive(Debug, Clone)]
pub struct ModelLabel(pub String);

/// One request being handled; see [`ApiMetrics::start`].
pub struct InFlight {
    metrics: ApiMetrics,
    gauge: prometheus::IntGauge,
    protocol: &'static str,
    endpoint: String,
    started: std::time::Instant,
    finished: bool,
}

impl InFlight {
    pub fn finish(mut self, model: &str, code: &str) {
        self.record(model, code);
    }

    fn record(&mut self, model: &str, code: &str) {
        self.finished = true;
        self.gauge.dec();
        let m = &self.metrics;
        m.requests
            .with_label_values(&[self.protocol, &self.endpoint, model, code])
            .inc();
        m.duration
            .with_label_values(&[self.protocol, &self.endpoint, model])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.finished {
            self.record("", "cancelled");
        }
    }
}
