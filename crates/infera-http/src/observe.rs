//! Request ids and the access log, as a middleware in front of everything on a port: the id
//! comes from `X-Request-Id` or is made, goes back in the response, and is a field of the
//! request's tracing span (so log lines made while handling it carry it); with the access
//! log on, one line per request (method, path, status, latency, bytes, identity).

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use infera_auth::Identity;
use infera_core::request_id::request_id;
use tracing::Instrument;

/// The request's id, in its extensions for handlers that want it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub async fn layer(State(access_log): State<bool>, mut req: Request, next: Next) -> Response {
    let id = request_id(
        req.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
    );
    let span = tracing::info_span!("request", id = %id);
    let started = Instant::now();
    let line = access_log.then(|| (req.method().clone(), req.uri().path().to_owned()));
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).instrument(span.clone()).await;
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
    resp
}

/// `router` behind [`layer`].
pub fn observe(router: axum::Router, access_log: bool) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(access_log, layer))
}
