//! TorchServe's management API, on its own port (`--management-port`, off unless asked for):
//! register a model from the model store or an allowed URL, scale its workers (instances),
//! describe, list, unregister, and set the default version. Status codes and JSON shapes
//! are TorchServe's, so its scripts and curl habits keep working:
//!
//! * `POST /models?url=&model_name=&initial_workers=&batch_size=&max_batch_delay=&synchronous=`
//! * `PUT /models/{name}[/{version}]?min_worker=&synchronous=` (scaling down drains)
//! * `GET /models?limit=&next_page_token=`, `GET /models/{name}[/{version}|/all]`
//! * `DELETE /models/{name}[/{version}]`, `PUT /models/{name}/{version}/set-default`

mod describe;
pub mod source;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use infera_core::config::{check_model_name, parse_pbtxt, to_json, to_pbtxt};
use infera_core::routing::RouteSpec;
use infera_core::{ErrorKind, InferenceServer, ServeError, ServeResult};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tracing::{info, warn};

pub use source::{SourcePolicy, allowed_urls};

/// Models one page of `GET /models` lists at most (TorchServe's bound).
const MAX_LIMIT: usize = 1000;
/// Instances one scale call may ask for; the repository's session limit applies too.
const MAX_WORKERS: usize = 64;

#[derive(Clone)]
struct Mgmt {
    server: Arc<InferenceServer>,
    sources: Arc<SourcePolicy>,
    /// Models registered through this API: unregistering them removes their folder.
    registered: Arc<Mutex<BTreeSet<String>>>,
}

pub fn router(server: Arc<InferenceServer>, sources: SourcePolicy) -> Router {
    let state = Mgmt {
        server,
        sources: Arc::new(sources),
        registered: Arc::default(),
    };
    Router::new()
        .route("/models", get(list).post(register))
        .route(
            "/models/{name}",
            get(describe_default).put(scale).delete(unregister),
        )
        .route(
            "/models/{name}/{version}",
            get(describe_version)
                .put(scale_version)
                .delete(unregister_version),
        )
        .route("/models/{name}/{version}/set-default", put(set_default))
        .with_state(state)
}

/// TorchServe's error body: `{"code", "type", "message"}`.
struct MgmtError(ServeError);

impl From<ServeError> for MgmtError {
    fn from(e: ServeError) -> Self {
        MgmtError(e)
    }
}

impl IntoResponse for MgmtError {
    fn into_response(self) -> Response {
        let (status, kind) = match self.0.kind {
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "ModelNotFoundException"),
            ErrorKind::InvalidArgument | ErrorKind::UnsupportedMediaType => {
                (StatusCode::BAD_REQUEST, "BadRequestException")
            }
            ErrorKind::Conflict => (StatusCode::CONFLICT, "ConflictStatusException"),
            ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "ForbiddenException"),
            ErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
            ErrorKind::Unavailable | ErrorKind::QueueFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
            ),
            ErrorKind::Unsupported => (StatusCode::NOT_IMPLEMENTED, "MethodNotAllowedException"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalServerException"),
        };
        let body = json!({"code": status.as_u16(), "type": kind, "message": self.0.message});
        (status, axum::Json(body)).into_response()
    }
}

type MgmtResult = Result<Response, MgmtError>;

fn status(code: StatusCode, message: impl Into<String>) -> Response {
    (code, axum::Json(json!({ "status": message.into() }))).into_response()
}

type Params = Query<HashMap<String, String>>;

fn number<T: std::str::FromStr>(q: &HashMap<String, String>, key: &str) -> ServeResult<Option<T>> {
    match q.get(key) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            ServeError::invalid(format!("Parameter {key} must be a whole number, not '{v}'"))
        }),
    }
}

fn flag(q: &HashMap<String, String>, key: &str) -> ServeResult<bool> {
    match q.get(key).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(v) => Err(ServeError::invalid(format!(
            "Parameter {key} must be true or false, not '{v}'"
        ))),
    }
}

fn parse_version(v: &str) -> ServeResult<i64> {
    // TorchServe versions look like "1.0"; infera's are the repository's folder numbers.
    let whole = v.strip_suffix(".0").unwrap_or(v);
    whole.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ServeError::invalid(format!(
            "'{v}' is not a model version (a version folder number such as 1)"
        ))
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ServeResult<T> + Send + 'static,
) -> ServeResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServeError::internal(format!("model management task failed: {e}")))?
}

async fn register(State(m): State<Mgmt>, Query(q): Params) -> MgmtResult {
    let url = q
        .get("url")
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| ServeError::invalid("Parameter url is required."))?
        .clone();
    let name = match q.get("model_name") {
        Some(n) => n.clone(),
        None => source::default_name(&url),
    };
    check_model_name(&name).map_err(ServeError::invalid)?;
    let workers: Option<usize> = number(&q, "initial_workers")?;
    let batch_size: Option<i32> = number(&q, "batch_size")?;
    let delay_ms: Option<u64> = number(&q, "max_batch_delay")?;
    if workers.is_some_and(|w| w > MAX_WORKERS) || batch_size.is_some_and(|b| b < 1) {
        return Err(ServeError::invalid(format!(
            "initial_workers is 0 to {MAX_WORKERS}, batch_size at least 1"
        ))
        .into());
    }
    let synchronous = flag(&q, "synchronous")?;
    let root = m.server.repository.root().to_path_buf();
    if root.join(&name).exists() || m.server.repository.get(&name).is_ok() {
        return Err(ServeError::new(
            ErrorKind::Conflict,
            format!("Model version 1 is already registered for model {name}"),
        )
        .into());
    }
    let stage = tempfile::Builder::new()
        .prefix(".register-")
        .tempdir_in(&root)
        .map_err(|e| {
            ServeError::internal(format!("cannot stage the model in the repository: {e}"))
        })?;
    m.sources.stage(&url, stage.path()).await?;
    let target = root.join(&name);
    let staged = stage.path().to_path_buf();
    let placed = {
        let target = target.clone();
        blocking(move || {
            let model = source::normalise(&staged)?;
            if target.exists() {
                return Err(ServeError::new(
                    ErrorKind::Conflict,
                    format!(
                        "Model version 1 is already registered for model {}",
                        target.display()
                    ),
                ));
            }
            std::fs::rename(&model, &target).map_err(|e| {
                ServeError::internal(format!("cannot place the model in the repository: {e}"))
            })
        })
        .await
    };
    placed?;
    m.registered.lock().insert(name.clone());
    {
        let (t, n) = (target.clone(), name.clone());
        let written = blocking(move || write_config(&t, &n, workers, batch_size, delay_ms)).await;
        if let Err(e) = written {
            m.registered.lock().remove(&name);
            let _ = std::fs::remove_dir_all(&target);
            return Err(e.into());
        }
    }
    info!(model = %name, url = %url, "registering a model");
    let load = {
        let (m, name) = (m.clone(), name.clone());
        async move {
            let repo = m.server.repository.clone();
            let n = name.clone();
            let r = blocking(move || repo.load(&n, None)).await;
            if r.is_err() {
                // A model that cannot load is not registered: its folder goes.
                m.registered.lock().remove(&name);
                let dir = m.server.repository.root().join(&name);
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
                let _ = m.server.repository.forget(&name);
            }
            r
        }
    };
    if !synchronous {
        tokio::spawn(async move {
            if let Err(e) = load.await {
                warn!(error = %e, "the model registered in the background failed to load");
            }
        });
        return Ok(status(StatusCode::ACCEPTED, "Processing worker updates..."));
    }
    load.await?;
    let model = m.server.repository.get(&name)?;
    let v = model.version(None)?;
    let instances = match &v.runner {
        infera_core::repository::Runner::Scheduler(s) => s.instances(),
        infera_core::repository::Runner::Ensemble(_) => 0,
    };
    Ok(status(
        StatusCode::OK,
        format!(
            "Model \"{name}\" Version: {} registered with {instances} initial workers",
            v.version
        ),
    ))
}

/// Writes TorchServe's batching and worker parameters, and the registered name, into the
/// registered folder's config.pbtxt (the folder is infera's own copy). A folder without a
/// config and without parameters keeps being auto-completed from its model file.
fn write_config(
    dir: &Path,
    name: &str,
    workers: Option<usize>,
    batch_size: Option<i32>,
    delay_ms: Option<u64>,
) -> ServeResult<()> {
    let path = dir.join("config.pbtxt");
    let mut cfg = if path.is_file() {
        let bytes = infera_core::repository::files::read_limited(
            &path,
            infera_core::config::limits::MAX_CONFIG_BYTES as u64,
        )
        .map_err(|e| ServeError::invalid(format!("model '{name}': config.pbtxt: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            ServeError::invalid(format!("model '{name}': config.pbtxt is not UTF-8"))
        })?;
        parse_pbtxt(&text).map_err(|e| ServeError::invalid(format!("model '{name}': {e}")))?
    } else if workers.is_none() && batch_size.is_none() && delay_ms.is_none() {
        return Ok(());
    } else {
        Default::default()
    };
    let before = cfg.clone();
    cfg.name = name.to_string();
    if let Some(b) = batch_size {
        cfg.max_batch_size = b;
    }
    if batch_size.is_some() || delay_ms.is_some() {
        use infera_proto::inference::model_config::SchedulingChoice;
        let mut d = match cfg.scheduling_choice.take() {
            Some(SchedulingChoice::DynamicBatching(d)) => d,
            _ => Default::default(),
        };
        if let Some(ms) = delay_ms {
            d.max_queue_delay_microseconds = ms.saturating_mul(1000);
        }
        cfg.scheduling_choice = Some(SchedulingChoice::DynamicBatching(d));
    }
    if let Some(w) = workers.filter(|w| *w > 0) {
        cfg.instance_group = vec![infera_proto::inference::ModelInstanceGroup {
            name: name.to_string(),
            count: w as i32,
            kind: infera_proto::inference::model_instance_group::Kind::Cpu as i32,
            ..Default::default()
        }];
    }
    if cfg == before && path.is_file() {
        return Ok(());
    }
    std::fs::write(&path, to_pbtxt(&cfg))
        .map_err(|e| ServeError::internal(format!("cannot write config.pbtxt: {e}")))
}

async fn scale(State(m): State<Mgmt>, UrlPath(name): UrlPath<String>, q: Params) -> MgmtResult {
    scale_to(m, name, None, q.0).await
}

async fn scale_version(
    State(m): State<Mgmt>,
    UrlPath((name, version)): UrlPath<(String, String)>,
    q: Params,
) -> MgmtResult {
    scale_to(m, name, Some(parse_version(&version)?), q.0).await
}

/// Scales a model's instances. infera's instances serve every loaded version, so a version
/// in the path is checked, then the whole model scales.
async fn scale_to(
    m: Mgmt,
    name: String,
    version: Option<i64>,
    q: HashMap<String, String>,
) -> MgmtResult {
    let model = m.server.repository.get(&name)?;
    model.version(version)?;
    let min: Option<usize> = number(&q, "min_worker")?;
    let max: Option<usize> = number(&q, "max_worker")?;
    let n = min.or(max).unwrap_or(1);
    if n == 0 || n > MAX_WORKERS {
        return Err(ServeError::invalid(format!(
            "min_worker is 1 to {MAX_WORKERS} (infera keeps one instance at least; DELETE the model to stop it)"
        ))
        .into());
    }
    let synchronous = flag(&q, "synchronous")?;
    let repo = m.server.repository.clone();
    let job = {
        let name = name.clone();
        blocking(move || repo.resize(&name, n))
    };
    if !synchronous {
        tokio::spawn(async move {
            if let Err(e) = job.await {
                warn!(error = %e, "scaling workers failed");
            }
        });
        return Ok(status(StatusCode::ACCEPTED, "Processing worker updates..."));
    }
    job.await?;
    Ok(status(
        StatusCode::OK,
        format!("Workers scaled to {n} for model: {name}"),
    ))
}

async fn list(State(m): State<Mgmt>, Query(q): Params) -> MgmtResult {
    let limit: usize = number(&q, "limit")?.unwrap_or(100).clamp(1, MAX_LIMIT);
    let start: usize = number(&q, "next_page_token")?.unwrap_or(0);
    let mut names: Vec<String> = m
        .server
        .repository
        .ready_models()
        .iter()
        .map(|m| m.name.clone())
        .collect();
    names.sort();
    let page: Vec<Value> = names
        .iter()
        .skip(start)
        .take(limit)
        .map(|n| json!({"modelName": n, "modelUrl": n}))
        .collect();
    let mut body = json!({ "models": page });
    if start.saturating_add(limit) < names.len() {
        body["nextPageToken"] = json!((start + limit).to_string());
    }
    Ok(axum::Json(body).into_response())
}

async fn describe_default(State(m): State<Mgmt>, UrlPath(name): UrlPath<String>) -> MgmtResult {
    Ok(axum::Json(describe::describe(
        &m.server,
        &name,
        describe::Which::Default,
    )?)
    .into_response())
}

async fn describe_version(
    State(m): State<Mgmt>,
    UrlPath((name, version)): UrlPath<(String, String)>,
) -> MgmtResult {
    let which = if version == "all" {
        describe::Which::All
    } else {
        describe::Which::One(parse_version(&version)?)
    };
    Ok(axum::Json(describe::describe(&m.server, &name, which)?).into_response())
}

async fn unregister(State(m): State<Mgmt>, UrlPath(name): UrlPath<String>) -> MgmtResult {
    let repo = m.server.repository.clone();
    {
        let name = name.clone();
        blocking(move || repo.unload(&name, false)).await?;
    }
    let _ = m.server.routes.remove(&name);
    if m.registered.lock().remove(&name) {
        let dir = m.server.repository.root().join(&name);
        blocking(move || {
            std::fs::remove_dir_all(dir)
                .map_err(|e| ServeError::internal(format!("cannot remove the model folder: {e}")))
        })
        .await?;
        let _ = m.server.repository.forget(&name);
    }
    Ok(status(
        StatusCode::OK,
        format!("Model \"{name}\" unregistered"),
    ))
}

/// Unregisters one version: the model reloads serving the others (the last one unloads it).
async fn unregister_version(
    State(m): State<Mgmt>,
    UrlPath((name, version)): UrlPath<(String, String)>,
) -> MgmtResult {
    let v = parse_version(&version)?;
    let model = m.server.repository.get(&name)?;
    model.version(Some(v))?;
    let rest: Vec<i64> = model.versions.keys().copied().filter(|k| *k != v).collect();
    if rest.is_empty() {
        return unregister(State(m), UrlPath(name)).await;
    }
    if let Some(route) = m.server.routes.get(&name)
        && route.spec.variants.iter().any(|x| x.version == Some(v))
    {
        return Err(ServeError::new(
            ErrorKind::Conflict,
            format!("version {v} of model {name} is the default version or in a route; set another default first"),
        )
        .into());
    }
    let mut cfg = model.config.clone();
    cfg.version_policy = Some(infera_proto::inference::ModelVersionPolicy {
        policy_choice: Some(
            infera_proto::inference::model_version_policy::PolicyChoice::Specific(
                infera_proto::inference::model_version_policy::Specific { versions: rest },
            ),
        ),
    });
    let json = to_json(&cfg).to_string();
    let repo = m.server.repository.clone();
    {
        let name = name.clone();
        blocking(move || repo.load(&name, Some(&json))).await?;
    }
    Ok(status(
        StatusCode::OK,
        format!("Model \"{name}\" Version: {v} unregistered"),
    ))
}

/// The version served when a request names none: a one-variant route under the model's
/// name, so it shows in `/v2/routes` and survives reloads of the model.
async fn set_default(
    State(m): State<Mgmt>,
    UrlPath((name, version)): UrlPath<(String, String)>,
) -> MgmtResult {
    let v = parse_version(&version)?;
    m.server.repository.get(&name)?.version(Some(v))?;
    let spec: RouteSpec = serde_json::from_value(json!({
        "variants": [{"name": "default", "version": v, "weight": 100}]
    }))
    .map_err(|e| ServeError::internal(format!("default version route: {e}")))?;
    m.server.set_route(&name, spec)?;
    Ok(status(
        StatusCode::OK,
        format!("Default version successfully updated for model \"{name}\" to \"{v}\""),
    ))
}
