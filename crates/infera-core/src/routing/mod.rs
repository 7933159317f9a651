//! Traffic routing for a name clients call: weighted variants (A/B tests), sticky by a
//! client's routing key, a canary that steps a candidate up while it stays healthy and rolls
//! it back the moment it does not, and shadow traffic that mirrors requests to a candidate
//! and counts how often it agrees with the model that answered.
//!
//! A variant names a model (and version) of the repository; routing only decides which one a
//! request runs on. Requests that name a version bypass the route, so a client can always
//! reach one version directly.

mod canary;
mod serve;
mod shadow;
mod spec;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde_json::{Value, json};
use tracing::{info, warn};

pub use canary::{Outcome, Outcomes, Phase, Verdict, Window, evaluate};
pub use serve::ShadowJob;
pub use shadow::{ShadowCounters, agree};
pub use spec::{CanarySpec, RouteSpec, ShadowSpec, VariantSpec};

use crate::error::{ErrorKind, ServeError, ServeResult};
use crate::metrics::Metrics;

/// Routes one server holds; each is an operator's config, not a client's.
pub const MAX_ROUTES: usize = 64;
/// Keys are hashed into this many buckets; weights cut the buckets into variants.
const BUCKETS: u64 = 1 << 32;

/// One route at run time: its spec, the weights in force (a canary moves them) and what its
/// variants have answered.
pub struct Route {
    pub name: String,
    pub spec: RouteSpec,
    weights: RwLock<Vec<u32>>,
    outcomes: Vec<Mutex<Outcomes>>,
    success: Vec<AtomicU64>,
    failure: Vec<AtomicU64>,
    canary: Mutex<Option<Phase>>,
    pub shadow: ShadowCounters,
    metrics: Metrics,
}

/// Where a routed request goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub variant: usize,
    pub model: String,
    pub version: Option<i64>,
}

impl Route {
    fn new(name: &str, spec: RouteSpec, metrics: Metrics) -> Route {
        let n = spec.variants.len();
        let mut weights: Vec<u32> = spec.variants.iter().map(|v| v.weight).collect();
        let mut phase = None;
        if let (Some(c), Some((cand, stable))) = (&spec.canary, spec.canary_pair()) {
            weights[cand] = c.start_weight;
            weights[stable] = 100 - c.start_weight;
            phase = Some(Phase::Running {
                weight: c.start_weight,
                next_step: Instant::now() + Duration::from_secs(c.step_secs),
            });
        }
        let route = Route {
            name: name.to_string(),
            weights: RwLock::new(Vec::new()),
            outcomes: (0..n).map(|_| Mutex::new(Outcomes::default())).collect(),
            success: (0..n).map(|_| AtomicU64::new(0)).collect(),
            failure: (0..n).map(|_| AtomicU64::new(0)).collect(),
            canary: Mutex::new(phase),
            shadow: ShadowCounters::default(),
            spec,
            metrics,
        };
        route.set_weights(weights);
        route.start_series();
        route
    }

    /// Every series of the route from its start at 0, so rates and ratios have data before
    /// the first failure, rollback or disagreement.
    fn start_series(&self) {
        let m = &self.metrics;
        for v in &self.spec.variants {
            for o in ["success", "failure"] {
                m.route_requests
                    .with_label_values(&[&self.name, &v.name, o]);
            }
        }
        if self.spec.canary.is_some() {
            m.route_rollbacks.with_label_values(&[&self.name]);
        }
        if self.spec.shadow.is_some() {
            for r in ["agree", "disagree", "failed", "dropped"] {
                m.shadow_requests.with_label_values(&[&self.name, r]);
            }
        }
    }

    fn set_weights(&self, weights: Vec<u32>) {
        for (v, w) in self.spec.variants.iter().zip(&weights) {
            self.metrics
                .route_weight
                .with_label_values(&[self.name.as_str(), v.name.as_str()])
                .set(i64::from(*w));
        }
        *self.weights.write() = weights;
    }

    pub fn weights(&self) -> Vec<u32> {
        self.weights.read().clone()
    }

    /// The variant for a request: by the hash of its routing key when it has one (the same
    /// key always lands on the same variant while the weights stay), else at random.
    pub fn pick(&self, key: Option<&str>) -> Choice {
        let bucket = match key {
            Some(k) => {
                let mut h = std::hash::DefaultHasher::new();
                self.name.hash(&mut h);
                k.hash(&mut h);
                h.finish() % BUCKETS
            }
            None => random() % BUCKETS,
        };
        let weights = self.weights.read();
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut variant = weights.iter().rposition(|&w| w > 0).unwrap_or(0);
        if total > 0 {
            let mut point = bucket * total / BUCKETS;
            for (i, &w) in weights.iter().enumerate() {
                if point < u64::from(w) {
                    variant = i;
                    break;
                }
                point -= u64::from(w);
            }
        }
        let v = &self.spec.variants[variant];
        Choice {
            variant,
            model: v.model_or(&self.name).to_string(),
            version: v.version,
        }
    }

    /// Whether this (successful) request is mirrored to the shadow model.
    pub fn sample_shadow(&self) -> Option<&ShadowSpec> {
        let s = self.spec.shadow.as_ref()?;
        let draw = (random() % 1_000_000) as f64 / 10_000.0;
        (draw < s.percent).then_some(s)
    }

    /// The model and version that stand for the route in metadata, readiness and input
    /// checks: the stable variant of a canary, else the first variant (variants of one route
    /// serve the same inputs and outputs).
    pub fn interface(&self) -> (&str, Option<i64>) {
        let i = self.spec.canary_pair().map_or(0, |(_, stable)| stable);
        let v = &self.spec.variants[i];
        (v.model_or(&self.name), v.version)
    }

    pub fn shadow_model(&self) -> Option<(String, Option<i64>)> {
        let s = self.spec.shadow.as_ref()?;
        Some((
            s.model.clone().unwrap_or_else(|| self.name.clone()),
            s.version,
        ))
    }

    /// Counts an answer of a variant. `failed`: the server or model failed (the client's own
    /// mistakes are not the variant's and are not passed here).
    pub fn record(&self, variant: usize, failed: bool, latency: Duration) {
        let name = self.spec.variants[variant].name.as_str();
        let (count, outcome) = if failed {
            (&self.failure[variant], "failure")
        } else {
            (&self.success[variant], "success")
        };
        count.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .route_requests
            .with_label_values(&[self.name.as_str(), name, outcome])
            .inc();
        if self.spec.canary.is_some() {
            self.outcomes[variant].lock().push(Outcome {
                at: Instant::now(),
                ok: !failed,
                latency,
            });
        }
    }

    pub fn record_shadow(&self, result: &str) {
        let c = &self.shadow;
        let counter = match result {
            "agree" => &c.agreed,
            "disagree" => &c.disagreed,
            "failed" => &c.failed,
            _ => &c.dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .shadow_requests
            .with_label_values(&[self.name.as_str(), result])
            .inc();
    }

    /// Steps or rolls back a running canary; a no-op for routes without one.
    pub fn tick(&self, now: Instant) {
        let (Some(spec), Some((cand, stable))) = (&self.spec.canary, self.spec.canary_pair())
        else {
            return;
        };
        let mut phase = self.canary.lock();
        let Some(Phase::Running { weight, next_step }) = phase.clone() else {
            return;
        };
        let since = now
            .checked_sub(Duration::from_secs(spec.window_secs))
            .unwrap_or(now);
        let s = self.outcomes[stable].lock().window(since);
        let c = self.outcomes[cand].lock().window(since);
        match evaluate(spec, &s, &c, now >= next_step) {
            Verdict::Hold => {}
            Verdict::Rollback(reason) => self.roll_back(&mut phase, reason),
            Verdict::Step => {
                let weight = (weight + spec.step_weight).min(spec.max_weight);
                self.canary_weights(weight);
                if weight >= 100 {
                    info!(route = %self.name, "canary promoted: the candidate takes all traffic");
                    *phase = Some(Phase::Promoted);
                } else {
                    info!(route = %self.name, weight, "canary stepped up");
                    *phase = Some(Phase::Running {
                        weight,
                        next_step: now + Duration::from_secs(spec.step_secs),
                    });
                }
            }
        }
    }

    fn canary_weights(&self, candidate: u32) {
        if let Some((cand, stable)) = self.spec.canary_pair() {
            let mut w = vec![0; 2];
            w[cand] = candidate;
            w[stable] = 100 - candidate;
            self.set_weights(w);
        }
    }

    fn roll_back(&self, phase: &mut Option<Phase>, reason: String) {
        warn!(route = %self.name, %reason, "canary rolled back: the stable variant takes all traffic");
        self.canary_weights(0);
        self.metrics
            .route_rollbacks
            .with_label_values(&[self.name.as_str()])
            .inc();
        *phase = Some(Phase::RolledBack { reason });
    }

    /// `POST .../rollback`: the candidate to 0 now.
    pub fn rollback(&self) -> ServeResult<()> {
        let mut phase = self.canary.lock();
        if phase.is_none() {
            return Err(no_canary(&self.name));
        }
        self.roll_back(&mut phase, "rolled back by hand".into());
        Ok(())
    }

    /// `POST .../promote`: the candidate to 100 now.
    pub fn promote(&self) -> ServeResult<()> {
        let mut phase = self.canary.lock();
        if phase.is_none() {
            return Err(no_canary(&self.name));
        }
        info!(route = %self.name, "canary promoted by hand");
        self.canary_weights(100);
        *phase = Some(Phase::Promoted);
        Ok(())
    }

    /// Why the candidate was rolled back, with its model and version, if it was.
    pub fn rolled_back(&self) -> Option<(String, Option<i64>, String)> {
        let (cand, _) = self.spec.canary_pair()?;
        match &*self.canary.lock() {
            Some(Phase::RolledBack { reason }) => {
                let v = &self.spec.variants[cand];
                Some((
                    v.model_or(&self.name).to_string(),
                    v.version,
                    reason.clone(),
                ))
            }
            _ => None,
        }
    }

    /// The route as `GET /v2/routes/{name}` shows it.
    pub fn status(&self) -> Value {
        let weights = self.weights();
        let variants: Vec<Value> = self
            .spec
            .variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                json!({
                    "name": v.name,
                    "model": v.model_or(&self.name),
                    "version": v.version.map(|n| n.to_string()),
                    "weight": weights[i],
                    "success": self.success[i].load(Ordering::Relaxed),
                    "failure": self.failure[i].load(Ordering::Relaxed),
                })
            })
            .collect();
        let mut out = json!({"name": self.name, "variants": variants});
        if let Some(c) = &self.spec.canary {
            let phase = self.canary.lock().clone();
            let mut canary = serde_json::to_value(c).unwrap_or(Value::Null);
            if let Some(p) = &phase {
                canary["phase"] = p.as_str().into();
                if let Phase::RolledBack { reason } = p {
                    canary["reason"] = reason.clone().into();
                }
            }
            out["canary"] = canary;
        }
        if let Some((model, version)) = self.shadow_model() {
            let mut s = self.shadow.json();
            s["model"] = model.into();
            s["version"] = version.map(|n| n.to_string()).into();
            s["percent"] = self.spec.shadow.as_ref().map_or(0.0, |s| s.percent).into();
            out["shadow"] = s;
        }
        out
    }

    fn forget_series(&self) {
        let m = &self.metrics;
        for v in &self.spec.variants {
            let _ = m.route_weight.remove_label_values(&[&self.name, &v.name]);
            for o in ["success", "failure"] {
                let _ = m
                    .route_requests
                    .remove_label_values(&[&self.name, &v.name, o]);
            }
        }
        let _ = m.route_rollbacks.remove_label_values(&[&self.name]);
        for r in ["agree", "disagree", "failed", "dropped"] {
            let _ = m.shadow_requests.remove_label_values(&[&self.name, r]);
        }
    }
}

fn no_canary(route: &str) -> ServeError {
    ServeError::new(
        ErrorKind::Conflict,
        format!("route '{route}' has no canary; set one with a 'canary' block"),
    )
}

/// Every route of a server, by the name clients call.
pub struct Routes {
    routes: RwLock<BTreeMap<String, Arc<Route>>>,
    metrics: Metrics,
}

impl Routes {
    pub fn new(metrics: Metrics) -> Routes {
        Routes {
            routes: RwLock::new(BTreeMap::new()),
            metrics,
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Route>> {
        let routes = self.routes.read();
        if routes.is_empty() {
            return None;
        }
        routes.get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Route>> {
        self.routes.read().values().cloned().collect()
    }

    /// Sets (or replaces) a route; a replaced route's counters start again. The caller has
    /// checked that its variants' models serve.
    pub fn set(&self, name: &str, spec: RouteSpec) -> ServeResult<Arc<Route>> {
        spec.validate(name)
            .map_err(|e| ServeError::invalid(format!("route '{name}': {e}")))?;
        let mut routes = self.routes.write();
        if !routes.contains_key(name) && routes.len() >= MAX_ROUTES {
            return Err(ServeError::new(
                ErrorKind::Conflict,
                format!("the server holds at most {MAX_ROUTES} routes; delete one first"),
            ));
        }
        if let Some(old) = routes.remove(name) {
            old.forget_series();
        }
        let route = Arc::new(Route::new(name, spec, self.metrics.clone()));
        routes.insert(name.to_string(), route.clone());
        info!(route = %name, variants = route.spec.variants.len(), "route set");
        Ok(route)
    }

    pub fn remove(&self, name: &str) -> ServeResult<()> {
        match self.routes.write().remove(name) {
            Some(r) => {
                r.forget_series();
                info!(route = %name, "route deleted");
                Ok(())
            }
            None => Err(not_found(name)),
        }
    }

    pub fn route(&self, name: &str) -> ServeResult<Arc<Route>> {
        self.routes
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// Moves every running canary on; the server calls it a few times a second.
    pub fn tick(&self, now: Instant) {
        for r in self.all() {
            r.tick(now);
        }
    }
}

fn not_found(name: &str) -> ServeError {
    ServeError::not_found(format!("no route named '{name}'"))
}

/// A fast, well-mixed random number (SplitMix64 over a counter seeded from the clock): a
/// weight split needs uniform draws, not unpredictable ones.
fn random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9, |d| d.as_nanos() as u64)
    });
    let mut z = STATE
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(seed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
