//! Request ids and the access log for gRPC, as a tower layer in front of the service: the id
//! comes from `x-request-id` metadata or is made, goes back in the response metadata, and is
//! a field of the call's tracing span; with the access log on, one line per call.

use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::BoxFuture;
use infera_core::request_id::request_id;
use tracing::Instrument;

#[derive(Clone)]
pub struct ObserveLayer {
    access_log: bool,
}

impl ObserveLayer {
    pub fn new(access_log: bool) -> ObserveLayer {
        ObserveLayer { access_log }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            access_log: self.access_log,
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    access_log: bool,
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
        let id = request_id(
            req.headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
        );
        let span = tracing::info_span!("request", id = %id);
        let method = self
            .access_log
            .then(|| req.uri().path().rsplit('/').next().unwrap_or("").to_owned());
        let started = Instant::now();
        // The clone that was polled ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut resp = inner.call(req).instrument(span.clone()).await?;
            if let Some(method) = method {
                // Errors come back trailers-only, with their status in the headers.
                let status = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0")
                    .to_owned();
                tracing::info!(
                    target: "infera::access",
                    parent: &span,
                    method = %method,
                    grpc_status = %status,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "access"
                );
            }
            if let Ok(v) = http::HeaderValue::from_str(&id) {
                resp.headers_mut().insert("x-request-id", v);
            }
            Ok(resp)
        })
    }
}
