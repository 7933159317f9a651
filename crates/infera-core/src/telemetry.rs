//! W3C trace context for the front-ends: a request's span continues the trace named by the
//! client's `traceparent`, and the response names the server's span in its own
//! `traceparent`. Both are no-ops unless OpenTelemetry export is on (`--otlp-endpoint`).

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A request's id and its span, from the request's headers (`header(name)`): the client's
/// `x-request-id` when it is sane, else a new one; the span continues the client's
/// `traceparent`. The same for every front-end.
pub fn request_span<'a>(
    header: impl Fn(&'static str) -> Option<&'a str>,
) -> (String, tracing::Span) {
    let id = crate::request_id::request_id(header("x-request-id"));
    let span = tracing::info_span!("request", id = %id);
    if let Some(tp) = header("traceparent") {
        continue_trace(&span, tp);
    }
    (id, span)
}

/// Makes `span` a child of the remote span a `traceparent` header names (ignored when
/// malformed, as the W3C recommends).
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    let carrier =
        std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The `traceparent` that names `span`, when it is exported.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}
