//! Request ids, the access log and the API metrics, as a middleware in front of everything
//! on a port: the id comes from `X-Request-Id` or is made, goes back in the response, and is
//! a field of the request's tracing span (so log lines made while handling it carry it); with
//! the access log on, one line per request (method, path, model, status, latency, bytes,
//! identity); with metrics, `infera_api_*` by route template, model and status.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use infera_auth::Identity;
use infera_core::InferenceServer;
use infera_core::metrics::ApiMetrics;
use tracing::Instrument;

/// The request's id, in its extensions for handlers that want it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// What [`layer`] does besides request ids.
#[derive(Clone, Default)]
pub struct Observe {
    pub access_log: bool,
    /// Counts requests in `infera_api_*`; the server says which model names are real.
    pub metrics: Option<(ApiMetrics, Arc<InferenceServer>)>,
    /// The model `/predict` uses when the request names none.
    pub default_model: Arc<str>,
    /// Traces are exported: responses carry the server span's `traceparent`.
    pub traces: bool,
}

pub async fn layer(State(o): State<Observe>, mut req: Request, next: Next) -> Response {
    let (id, span) = infera_core::telemetry::request_span(|h| {
        req.headers().get(h).and_then(|v| v.to_str().ok())
    });
    let started = Instant::now();
    let wants_model = o.access_log || o.metrics.is_some();
    // Only names the repository knows: a label or log field made of whatever a client put
    // in the path would let it mint unbounded series.
    let model = wants_model
        .then(|| {
            let e = crate::auth::classify(
                req.method(),
                req.uri().path(),
                req.uri().query(),
                &o.default_model,
            );
            e.model
                .filter(|m| o.metrics.as_ref().is_none_or(|(_, s)| s.model(m).is_ok()))
        })
        .flatten()
        .unwrap_or_default();
    let in_flight = o.metrics.as_ref().map(|(m, _)| {
        let endpoint = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str);
        m.start("http", endpoint)
    });
    let line = o
        .access_log
        .then(|| (req.method().clone(), req.uri().path().to_owned()));
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).instrument(span.clone()).await;
    if let Some(f) = in_flight {
        f.finish(&model, resp.status().as_str());
    }
    if let Some((method, path)) = line {
        let who = resp
            .extensions()
            .get::<Identity>()
            .map_or_else(|| "-".to_string(), |w| w.id.to_string());
        // Known for whole bodies; streams (downloads, server-sent events) have none.
        let bytes = axum::body::HttpBody::size_hint(resp.body()).exact();
        tracing::info!(
            target: "infera::access",
            parent: &span,
            %method,
            path,
            model,
            status = resp.status().as_u16(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            bytes,
            who,
            "access"
        );
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    if o.traces
        && let Some(v) = infera_core::telemetry::traceparent(&span)
            .and_then(|tp| HeaderValue::from_str(&tp).ok())
    {
        resp.headers_mut().insert("traceparent", v);
    }
    resp
}

/// `router` behind [`layer`], with the access log as asked and no API metrics.
pub fn observe(router: axum::Router, access_log: bool) -> axum::Router {
    observe_with(
        router,
        Observe {
            access_log,
            ..Observe::default()
        },
    )
}

/// `router` behind [`layer`].
pub fn observe_with(router: axum::Router, o: Observe) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(o, layer))
}
