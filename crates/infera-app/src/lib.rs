//! The app API: upload a photo, get a label. It translates to a core inference request on an
//! image model (one BYTES input, e.g. the `fashion_mnist_image` ensemble) and back.
//!
//! * `POST /predict[?model=NAME]`: multipart upload, raw image body, or JSON `{"image": "<base64>"}`
//!   → `{predicted_class, predicted_label, confidence, probabilities: {label: p}, model, latency_ms}`
//! * `POST /predict/batch`: several files in one multipart form → `{"predictions": [...]}`
//! * `GET /health`, `GET /stats`: status, and requests / latency percentiles / predictions per class
//! * `GET /`: a web page to drop a photo on and see the top classes, the latency and the models
//! * TorchServe's `POST /predictions/{model}[/{version}]` (top-5 `{label: p}`) and `GET /ping`
//! * `/api/inference/...`: batch jobs on the server (see [`jobs`])

pub mod jobs;
pub mod management;
mod stats;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use bytes::Bytes;
use infera_core::classify::{Prediction, image_classifier};
use infera_core::{ErrorKind, InferenceServer, ServeError};
use serde_json::{Map, Value, json};

pub use stats::AppStats;

#[derive(Clone)]
struct App {
    max_body: usize,
    server: Arc<InferenceServer>,
    default_model: Arc<String>,
    stats: Arc<AppStats>,
}

/// The app routes; `default_model` serves requests that name no model.
pub fn router(
    server: Arc<InferenceServer>,
    default_model: String,
    max_body_bytes: usize,
) -> Router {
    let app = App {
        max_body: max_body_bytes,
        server,
        default_model: Arc::new(default_model),
        stats: Arc::new(AppStats::default()),
    };
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/predict", post(predict).put(predict))
        .route("/predict/batch", post(predict_batch))
        .route("/health", get(health))
        .route("/stats", get(stats_handler))
        .route("/ping", get(ping))
        .route("/predictions/{model}", post(torchserve).put(torchserve))
        .route(
            "/predictions/{model}/{version}",
            post(torchserve_v).put(torchserve_v),
        )
        .with_state(app)
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
}

/// The page is compiled in: one self-contained file, no CDN, so it works offline.
const PAGE: &str = include_str!("page.html");

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

fn error(e: ServeError) -> Response {
    // Same status codes and JSON body as the v2 front-end (including Retry-After on 429).
    infera_http::ApiError(e).into_response()
}

#[derive(serde::Deserialize)]
struct ModelQuery {
    model: Option<String>,
}

fn prediction_json(p: &Prediction, model: &str, latency_ms: f64) -> Value {
    let (idx, conf) = p.best();
    let mut probs = Map::new();
    for (l, v) in p.labels.iter().zip(&p.probabilities) {
        probs.insert(l.clone(), json!(v));
    }
    json!({
        "predicted_class": idx,
        "predicted_label": p.labels.get(idx),
        "confidence": conf,
        "probabilities": probs,
        "model": model,
        "latency_ms": latency_ms,
    })
}

/// Files in one `/predict/batch` request.
pub const MAX_BATCH_FILES: usize = 256;

/// The image from a multipart form (first file field), a JSON body with base64, or the raw body.
async fn read_images(
    req: Request,
    many: bool,
    max_body: usize,
) -> Result<Vec<(String, Bytes)>, ServeError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let mut form = <Multipart as axum::extract::FromRequest<()>>::from_request(req, &())
            .await
            .map_err(|e| ServeError::invalid(format!("bad multipart form: {e}")))?;
        let mut out = Vec::new();
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| ServeError::invalid(format!("bad multipart form: {e}")))?
        {
            let name = field
                .file_name()
                .or(field.name())
                .unwrap_or("file")
                .to_string();
            let data = field
                .bytes()
                .await
                .map_err(|e| ServeError::invalid(format!("cannot read upload '{name}': {e}")))?;
            out.push((name, data));
            if !many {
                break;
            }
            if out.len() > MAX_BATCH_FILES {
                return Err(ServeError::invalid(format!(
                    "more than {MAX_BATCH_FILES} files in one request: split them over several"
                )));
            }
        }
        if out.is_empty() {
            return Err(ServeError::invalid(
                "the form has no file: send the image as a file field",
            ));
        }
        return Ok(out);
    }
    let body = axum::body::to_bytes(req.into_body(), max_body)
        .await
        .map_err(|e| {
            if e.to_string().contains("length limit") {
                ServeError::new(
                    ErrorKind::TooLarge,
                    "request body is larger than the server's limit (--max-body-size)",
                )
            } else {
                ServeError::invalid(format!("cannot read the request body: {e}"))
            }
        })?;
    if content_type.starts_with("application/json") {
        // Into a struct, not a JSON tree: other fields are skipped without being kept.
        #[derive(serde::Deserialize)]
        struct ImageJson {
            image: Option<String>,
            b64: Option<String>,
            data: Option<String>,
        }
        let v: ImageJson = serde_json::from_slice(&body).map_err(|e| {
            ServeError::invalid(format!("bad JSON: {e}; send {{\"image\": \"<base64>\"}}"))
        })?;
        let b64 = v.image.or(v.b64).or(v.data).ok_or_else(|| {
            ServeError::invalid("JSON body needs \"image\": \"<base64 of the file>\"")
        })?;
        let b64 = b64.split_once("base64,").map_or(b64.as_str(), |(_, d)| d);
        let data = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| ServeError::invalid(format!("\"image\" is not valid base64: {e}")))?;
        return Ok(vec![("image".into(), Bytes::from(data))]);
    }
    Ok(vec![("body".into(), body)])
}

/// Reads one image from the request, classifies it, and counts it in /stats.
async fn predict_one(
    app: &App,
    model: &str,
    version: Option<i64>,
    req: Request,
) -> Result<(Prediction, f64), ServeError> {
    let start = Instant::now();
    let result = async {
        let (_, image) = read_images(req, false, app.max_body)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| ServeError::invalid("no image in the request"))?;
        app.server.classify_image(model, version, image, 0).await
    }
    .await;
    let elapsed = start.elapsed();
    match &result {
        Ok(p) => app
            .stats
            .record(elapsed, p.labels.get(p.best().0).map(String::as_str)),
        Err(_) => app.stats.record_error(),
    }
    result.map(|p| (p, elapsed.as_secs_f64() * 1e3))
}

async fn predict(State(app): State<App>, Query(q): Query<ModelQuery>, req: Request) -> Response {
    let model = q.model.unwrap_or_else(|| app.default_model.to_string());
    match predict_one(&app, &model, None, req).await {
        Ok((p, ms)) => axum::Json(prediction_json(&p, &model, ms)).into_response(),
        Err(e) => error(e),
    }
}

async fn predict_batch(
    State(app): State<App>,
    Query(q): Query<ModelQuery>,
    req: Request,
) -> Response {
    let model = q.model.unwrap_or_else(|| app.default_model.to_string());
    let extensions = req.extensions().clone();
    let images = match read_images(req, true, app.max_body).await {
        Ok(i) => i,
        Err(e) => return error(e),
    };
    // Rate limits and quotas count images: the request itself was counted as one.
    let extra = u32::try_from(images.len().saturating_sub(1)).unwrap_or(u32::MAX);
    if let Some(refused) = infera_http::auth::charge(&extensions, extra) {
        return refused;
    }
    let jobs = images.into_iter().map(|(name, image)| {
        let app = app.clone();
        let model = model.clone();
        async move {
            let start = Instant::now();
            let r = app.server.classify_image(&model, None, image, 0).await;
            let elapsed = start.elapsed();
            match r {
                Ok(p) => {
                    let (idx, _) = p.best();
                    app.stats
                        .record(elapsed, p.labels.get(idx).map(String::as_str));
                    let mut v = prediction_json(&p, &model, elapsed.as_secs_f64() * 1e3);
                    v["filename"] = json!(name);
                    v
                }
                Err(e) => {
                    app.stats.record_error();
                    json!({ "filename": name, "error": e.message })
                }
            }
        }
    });
    let predictions = futures_join_all(jobs).await;
    axum::Json(json!({ "predictions": predictions })).into_response()
}

/// Runs the jobs concurrently (so they can batch together) and keeps their order.
async fn futures_join_all<F>(jobs: impl Iterator<Item = F>) -> Vec<Value>
where
    F: std::future::Future<Output = Value> + Send + 'static,
{
    let handles: Vec<_> = jobs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(
            h.await
                .unwrap_or_else(|e| json!({ "error": format!("prediction task failed: {e}") })),
        );
    }
    out
}

async fn health(State(app): State<App>) -> Response {
    let models: Vec<Value> = app
        .server
        .index(false)
        .into_iter()
        .map(|e| {
            let image_classifier = app
                .server
                .model(&e.name)
                .is_ok_and(|m| image_classifier(&m).is_ok());
            json!({"name": e.name, "version": e.version, "state": e.state, "reason": e.reason,
                   "image_classifier": image_classifier})
        })
        .collect();
    let ready = app.server.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({
            "status": if ready { "ok" } else { "draining" },
            "default_model": app.default_model.as_str(),
            "models": models,
        })),
    )
        .into_response()
}

async fn stats_handler(State(app): State<App>) -> Response {
    axum::Json(app.stats.to_json()).into_response()
}

async fn ping(State(app): State<App>) -> Response {
    if app.server.ready() {
        axum::Json(json!({"status": "Healthy"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "Unhealthy"})),
        )
            .into_response()
    }
}

async fn torchserve_inner(app: App, model: String, version: Option<i64>, req: Request) -> Response {
    match predict_one(&app, &model, version, req).await {
        Ok((p, _)) => {
            // TorchServe's image classifier handler answers the top 5 as {label: probability}.
            let mut order: Vec<usize> = (0..p.probabilities.len()).collect();
            order.sort_by(|&a, &b| p.probabilities[b].total_cmp(&p.probabilities[a]));
            let mut top = Map::new();
            for i in order.into_iter().take(5) {
                top.insert(p.labels[i].clone(), json!(p.probabilities[i]));
            }
            axum::Json(Value::Object(top)).into_response()
        }
        Err(e) => error(e),
    }
}

async fn torchserve(State(app): State<App>, Path(model): Path<String>, req: Request) -> Response {
    torchserve_inner(app, model, None, req).await
}

async fn torchserve_v(
    State(app): State<App>,
    Path((model, v)): Path<(String, String)>,
    req: Request,
) -> Response {
    match v.parse::<i64>() {
        Ok(v) => torchserve_inner(app, model, Some(v), req).await,
        Err(_) => error(ServeError::invalid(format!(
            "version '{v}' is not a number"
        ))),
    }
}
