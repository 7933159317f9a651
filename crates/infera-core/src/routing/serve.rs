//! Routing on the request path: [`InferenceServer::infer`] hands a request for a routed name
//! here, which picks the variant, counts its answer for the canary and mirrors it to the
//! shadow model. The canary's clock and the shadow's worker run as two background tasks.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument;

use super::{Route, RouteSpec, agree};
use crate::error::{ErrorKind, ServeError, ServeResult};
use crate::request::{IndexEntry, InferRequest, InferResponse, OutputTensor};
use crate::scheduler::BACKGROUND;
use crate::server::InferenceServer;

/// Mirrored requests waiting for the shadow model; more are dropped (and counted).
const SHADOW_QUEUE: usize = 256;
/// Mirrored requests the shadow model runs at once.
const SHADOW_CONCURRENCY: usize = 2;
/// How often canaries are judged.
const CANARY_TICK: Duration = Duration::from_millis(250);

pub struct ShadowJob {
    route: Arc<Route>,
    request: InferRequest,
    serving: Vec<OutputTensor>,
}

impl InferenceServer {
    /// Sets (or replaces) a route after checking that every model it names serves.
    pub fn set_route(&self, name: &str, spec: RouteSpec) -> ServeResult<()> {
        spec.validate(name)
            .map_err(|e| ServeError::invalid(format!("route '{name}': {e}")))?;
        let check = |what: String, model: &str, version: Option<i64>| {
            self.repository
                .get(model)
                .and_then(|m| m.version(version).map(|_| ()))
                .map_err(|e| ServeError::invalid(format!("route '{name}': {what}: {}", e.message)))
        };
        for v in &spec.variants {
            check(format!("variant '{}'", v.name), v.model_or(name), v.version)?;
        }
        if let Some(s) = &spec.shadow {
            check(
                "shadow".into(),
                s.model.as_deref().unwrap_or(name),
                s.version,
            )?;
        }
        self.routes.set(name, spec).map(|_| ())
    }

    /// A request for a routed name: runs on the chosen variant; the answer is counted for
    /// the variant (and its canary) and, when sampled, mirrored to the shadow model.
    pub(crate) async fn infer_routed(
        &self,
        route: Arc<Route>,
        mut req: InferRequest,
    ) -> ServeResult<InferResponse> {
        let choice = route.pick(req.routing_key.as_deref());
        req.model = choice.model;
        req.version = choice.version;
        let mirror = route.sample_shadow().is_some().then(|| req.clone());
        let start = Instant::now();
        let result = self.infer_at(req, 0).await;
        let failed = match &result {
            Ok(_) => false,
            // The client's own mistakes say nothing about the variant.
            Err(e) => !matches!(
                e.kind,
                ErrorKind::InvalidArgument
                    | ErrorKind::NotFound
                    | ErrorKind::TooLarge
                    | ErrorKind::UnsupportedMediaType
            ),
        };
        let client_error = result.is_err() && !failed;
        if !client_error {
            route.record(choice.variant, failed, start.elapsed());
        }
        if let (Some(request), Ok(response)) = (mirror, &result) {
            self.mirror(route, request, response);
        }
        result
    }

    fn mirror(&self, route: Arc<Route>, request: InferRequest, response: &InferResponse) {
        let Some(tx) = self.shadow_tx.get() else {
            route.record_shadow("dropped");
            return;
        };
        let job = ShadowJob {
            serving: response.outputs.clone(),
            route: route.clone(),
            request,
        };
        if tx.try_send(job).is_err() {
            route.record_shadow("dropped");
        }
    }

    /// Starts the canary clock and the shadow worker. Call once, inside the runtime.
    pub fn start_routing(self: &Arc<Self>) {
        let (tx, mut rx) = mpsc::channel::<ShadowJob>(SHADOW_QUEUE);
        if self.shadow_tx.set(tx).is_err() {
            return;
        }
        let weak: Weak<InferenceServer> = Arc::downgrade(self);
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(SHADOW_CONCURRENCY));
            while let Some(job) = rx.recv().await {
                let Some(server) = weak.upgrade() else { break };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                tokio::spawn(async move {
                    server.run_shadow(job).await;
                    drop(permit);
                });
            }
        });
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CANARY_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(server) = weak.upgrade() else { break };
                server.routes.tick(Instant::now());
            }
        });
    }

    async fn run_shadow(&self, job: ShadowJob) {
        let Some((model, version)) = job.route.shadow_model() else {
            return;
        };
        let mut request = job.request;
        request.model = model;
        request.version = version;
        // Behind every client request: a shadow must never slow the model that answers.
        request.priority = BACKGROUND;
        let span = tracing::debug_span!("shadow", route = %job.route.name);
        let result = Box::pin(self.infer_at(request, 0).instrument(span)).await;
        job.route.record_shadow(match result {
            Ok(r) if agree(&job.serving, &r.outputs) => "agree",
            Ok(_) => "disagree",
            Err(_) => "failed",
        });
    }

    /// The repository index, with the reason of every canary candidate that was rolled back.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let mut index = self.repository.index(ready_only);
        for route in self.routes.all() {
            if let Some((model, version, reason)) = route.rolled_back() {
                let note = format!("canary of route '{}' rolled back: {reason}", route.name);
                for e in index.iter_mut().filter(|e| {
                    e.name == model && version.is_none_or(|v| e.version == v.to_string())
                }) {
                    e.reason = if e.reason.is_empty() {
                        note.clone()
                    } else {
                        format!("{}; {note}", e.reason)
                    };
                }
            }
        }
        index
    }
}
