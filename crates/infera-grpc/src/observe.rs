//! Request ids and the access log for gRPC, as a tower layer in front of the service: the id
//! comes from `x-request-id` metadata or is made, goes back in the response metadata, and is
//! a field of the call's tracing span; with the access log on, one line per call; with
//! metrics, `infera_api_*` by RPC, model and status.

use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::BoxFuture;
use infera_core::metrics::{ApiMetrics, ModelLabel};
use tracing::Instrument;

#[derive(Clone)]
pub struct ObserveLayer {
    access_log: bool,
    metrics: Option<ApiMetrics>,
    traces: bool,
}

impl ObserveLayer {
    pub fn new(access_log: bool) -> ObserveLayer {
        ObserveLayer {
            access_log,
            metrics: None,
            traces: false,
        }
    }

    /// Traces are exported: responses carry the server span's `traceparent` metadata.
    pub fn with_traces(mut self, on: bool) -> ObserveLayer {
        self.traces = on;
        self
    }

    /// Counts calls in `infera_api_*`.
    pub fn with_metrics(mut self, m: ApiMetrics) -> ObserveLayer {
        self.metrics = Some(m);
        self
    }
}

/// The RPCs of the inference service; any other method is counted as `unknown`, so
/// clients cannot mint series.
const RPCS: &[&str] = &[
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
];

/// gRPC status codes by number, as grpc-go and Prometheus' gRPC middleware name them.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn code_name(status: &str) -> &'static str {
    status
        .parse::<usize>()
        .ok()
        .and_then(|n| CODES.get(n).copied())
        .unwrap_or("UNKNOWN")
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            access_log: self.access_log,
            metrics: self.metrics.clone(),
            traces: self.traces,
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    access_log: bool,
    metrics: Option<ApiMetrics>,
    traces: bool,
}

impl<S, B, R> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (id, span) = infera_core::telemetry::request_span(|h| {
            req.headers().get(h).and_then(|v| v.to_str().ok())
        });
        let traces = self.traces;
        let rpc = req.uri().path().rsplit('/').next().unwrap_or("");
        let rpc = RPCS
            .iter()
            .find(|r| **r == rpc)
            .copied()
            .unwrap_or("unknown");
        let in_flight = self.metrics.as_ref().map(|m| m.start("grpc", rpc));
        let access_log = self.access_log;
        let started = Instant::now();
        // The clone that was polled ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut resp = inner.call(req).instrument(span.clone()).await?;
            // Errors come back trailers-only, with their status in the headers; a stream's
            // own end status (in its trailers) is not waited for.
            let status = code_name(
                resp.headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0"),
            );
            let model = resp
                .extensions()
                .get::<ModelLabel>()
                .map_or("", |m| m.0.as_str());
            if access_log {
                tracing::info!(
                    target: "infera::access",
                    parent: &span,
                    method = %rpc,
                    model,
                    grpc_status = %status,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "access"
                );
            }
            if let Some(f) = in_flight {
                f.finish(model, status);
            }
            if let Ok(v) = http::HeaderValue::from_str(&id) {
                resp.headers_mut().insert("x-request-id", v);
            }
            if traces
                && let Some(v) = infera_core::telemetry::traceparent(&span)
                    .and_then(|tp| http::HeaderValue::from_str(&tp).ok())
            {
                resp.headers_mut().insert("traceparent", v);
            }
            Ok(resp)
        })
    }
}
