//! KServe v2 / Triton HTTP front-end. It only translates between HTTP and the core.

pub mod auth;
mod codec;
mod error;
pub mod observe;
mod routes;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use infera_core::{InferenceServer, ServeError};
use serde_json::{Value, json};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::decompression::RequestDecompressionLayer;

pub use codec::{Decoded, InputGuard, RawInput, decode_request, encode_response};
pub use error::{ApiError, ApiResult, json_error, status_of};

pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Clone)]
struct AppState {
    server: Arc<InferenceServer>,
}

/// The v2 routes, with request decompression, response compression, a body limit
/// (applied after decompression) and a panic guard.
pub fn router(server: Arc<InferenceServer>, max_body_bytes: usize) -> Router {
    let state = AppState { server };
    // Only successful inference responses are compressed: Triton's clients (the asyncio one
    // sends Accept-Encoding by default) decompress those and nothing else, and read error
    // bodies as they come. And only those over a kilobyte: a smaller one fits one TCP segment
    // either way, and setting up a compressor (tens of KiB of zeroed tables) cost more CPU per
    // request than the rest of a small request's HTTP path (an iris row behind `hey`).
    let infer_routes = Router::new()
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .layer(
            CompressionLayer::new().compress_when(
                SizeAbove::new(infera_core::MIN_COMPRESSED_BYTES)
                    .and(NotForContentType::GRPC)
                    .and(NotForContentType::IMAGES)
                    .and(NotForContentType::SSE)
                    .and(|status: StatusCode, _, _: &HeaderMap, _: &_| status.is_success()),
            ),
        );
    Router::new()
        .merge(infer_routes)
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config_v),
        )
        .route("/v2/models/{model}/stats", get(model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(model_stats_v),
        )
        .route("/v2/repository/index", post(repo_index))
        .route("/v2/repository/{repo}/index", post(repo_index_named))
        .route("/v2/repository/models/{model}/load", post(repo_load))
        .route("/v2/repository/models/{model}/unload", post(repo_unload))
        .route("/v2/admin/usage", get(admin_usage))
        .merge(routes::routes())
        .fallback(not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(RequestDecompressionLayer::new())
        .layer(CatchPanicLayer::custom(|_| {
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error while handling the request",
            )
        }))
}

async fn not_found() -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "no such endpoint; see /v2 for the protocol",
    )
}

fn parse_version(v: &str) -> Result<Option<i64>, ApiError> {
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<i64>().map(Some).map_err(|_| {
        ApiError(ServeError::invalid(format!(
            "version '{v}' is not a number"
        )))
    })
}

fn json_ok(v: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn flag(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

async fn server_metadata(State(s): State<AppState>) -> Response {
    json_ok(json!({
        "name": s.server.name(),
        "version": s.server.version(),
        "extensions": infera_core::server::EXTENSIONS,
    }))
}

async fn live(State(s): State<AppState>) -> StatusCode {
    flag(s.server.live())
}

async fn ready(State(s): State<AppState>) -> StatusCode {
    flag(s.server.ready())
}

async fn model_ready(State(s): State<AppState>, Path(model): Path<String>) -> StatusCode {
    flag(s.server.model_ready(&model, None))
}

async fn model_ready_v(
    State(s): State<AppState>,
    Path((model, v)): Path<(String, String)>,
) -> StatusCode {
    match parse_version(&v) {
        Ok(v) => flag(s.server.model_ready(&model, v)),
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

fn metadata(s: &AppState, model: &str, version: Option<i64>) -> ApiResult<Response> {
    let m = s.server.model_metadata(model, version)?;
    let tensors = |t: &[infera_core::request::TensorMetadata]| -> Vec<Value> {
        t.iter()
            .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
            .collect()
    };
    Ok(json_ok(json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": tensors(&m.inputs),
        "outputs": tensors(&m.outputs),
    })))
}

async fn model_metadata(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> ApiResult<Response> {
    metadata(&s, &model, None)
}

async fn model_metadata_v(
    State(s): State<AppState>,
    Path((model, v)): Path<(String, String)>,
) -> ApiResult<Response> {
    metadata(&s, &model, parse_version(&v)?)
}

fn config(s: &AppState, model: &str, version: Option<i64>) -> ApiResult<Response> {
    let (m, version) = s.server.serving_model(model, version)?;
    m.version(version)?;
    Ok(json_ok(m.config_json.clone()))
}

async fn model_config(State(s): State<AppState>, Path(model): Path<String>) -> ApiResult<Response> {
    config(&s, &model, None)
}

async fn model_config_v(
    State(s): State<AppState>,
    Path((model, v)): Path<(String, String)>,
) -> ApiResult<Response> {
    config(&s, &model, parse_version(&v)?)
}

fn stats(s: &AppState, model: &str, version: Option<i64>) -> ApiResult<Response> {
    let d = |d: &infera_core::stats::Duration64| json!({"count": d.count, "ns": d.ns});
    let list: Vec<Value> = s
        .server
        .statistics(model, version)?
        .iter()
        .map(|v| {
            let st = &v.stats;
            let i = &st.inference;
            json!({
                "name": v.name,
                "version": v.version,
                "last_inference": st.last_inference,
                "inference_count": st.inference_count,
                "execution_count": st.execution_count,
                "inference_stats": {
                    "success": d(&i.success), "fail": d(&i.fail), "queue": d(&i.queue),
                    "compute_input": d(&i.compute_input), "compute_infer": d(&i.compute_infer),
                    "compute_output": d(&i.compute_output), "cache_hit": d(&i.cache_hit),
                    "cache_miss": d(&i.cache_miss),
                },
                "response_stats": {},
                "batch_stats": st.batches.iter().map(|(size, b)| json!({
                    "batch_size": size,
                    "compute_input": d(&b.compute_input),
                    "compute_infer": d(&b.compute_infer),
                    "compute_output": d(&b.compute_output),
                })).collect::<Vec<_>>(),
                "memory_usage": [],
            })
        })
        .collect();
    Ok(json_ok(json!({ "model_stats": list })))
}

async fn all_stats(State(s): State<AppState>) -> ApiResult<Response> {
    stats(&s, "", None)
}

async fn model_stats(State(s): State<AppState>, Path(model): Path<String>) -> ApiResult<Response> {
    stats(&s, &model, None)
}

async fn model_stats_v(
    State(s): State<AppState>,
    Path((model, v)): Path<(String, String)>,
) -> ApiResult<Response> {
    stats(&s, &model, parse_version(&v)?)
}

fn body_or_error(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(ServeError::new(
                infera_core::ErrorKind::TooLarge,
                "request body is larger than the server's limit (--max-body-size)",
            ))
        } else {
            ApiError(ServeError::invalid(format!(
                "cannot read the request body: {e}"
            )))
        }
    })
}

async fn infer(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_infer(s, model, None, headers, body).await
}

async fn infer_v(
    State(s): State<AppState>,
    Path((model, v)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match parse_version(&v) {
        Ok(v) => run_infer(s, model, v, headers, body).await,
        Err(e) => e.into_response(),
    }
}

async fn run_infer(
    s: AppState,
    model: String,
    version: Option<i64>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match infer_inner(&s, model, version, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn infer_inner(
    s: &AppState,
    model: String,
    version: Option<i64>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = body_or_error(body)?;
    let header_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError(ServeError::invalid(
                        "Inference-Header-Content-Length must be a non-negative integer",
                    ))
                })?,
        ),
    };
    let server = &s.server;
    let guard = |name: &str, dtype, shape: &[usize]| {
        server.check_input(&model, version, name, dtype, shape)
    };
    let decoded = decode_request(
        &model,
        version,
        header_len,
        body,
        || {
            let meta = server.model_metadata(&model, version)?;
            match meta.inputs.as_slice() {
                [only] => Ok(RawInput {
                    name: only.name.clone(),
                    dtype: infera_core::DataType::parse(&only.datatype)
                        .ok_or_else(|| ServeError::internal("bad datatype in metadata"))?,
                    shape: only.shape.clone(),
                }),
                _ => Err(ServeError::invalid(format!(
                    "raw binary requests (Inference-Header-Content-Length: 0) need a model with exactly one input; '{model}' has {}",
                    meta.inputs.len()
                ))),
            }
        },
        &guard,
    )?;
    let mut request = decoded.request;
    if request.routing_key.is_none() {
        request.routing_key = headers
            .get("x-routing-key")
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty() && k.len() <= codec::MAX_ROUTING_KEY)
            .map(str::to_string);
    }
    let response = server.infer(request).await?;
    let (body, json_len) =
        encode_response(&response, &decoded.binary_outputs, decoded.binary_default);
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    match json_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok(r)
}

/// Bytes of a repository API body (index, load, unload): a config is at most 1 MiB.
pub const MAX_CONTROL_BODY: usize = 2 << 20;

fn optional_json(body: &Bytes) -> ApiResult<Value> {
    if body.len() > MAX_CONTROL_BODY {
        return Err(ApiError(ServeError::new(
            infera_core::ErrorKind::TooLarge,
            format!("a repository request body is at most {MAX_CONTROL_BODY} bytes"),
        )));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError(ServeError::invalid(format!(
            "failed to parse the request JSON: {e}"
        )))
    })
}

async fn repo_index(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req = optional_json(&body_or_error(body)?)?;
    let ready_only = req.get("ready").and_then(Value::as_bool).unwrap_or(false);
    let list: Vec<Value> = s
        .server
        .index(ready_only)
        .into_iter()
        .map(|e| {
            let mut v = json!({"name": e.name, "state": e.state, "reason": e.reason});
            if !e.version.is_empty() {
                v["version"] = Value::String(e.version);
            }
            v
        })
        .collect();
    Ok(json_ok(Value::Array(list)))
}

async fn repo_index_named(
    State(s): State<AppState>,
    Path(_repo): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    repo_index(State(s), body).await
}

/// Endpoints that change state take JSON (Triton's clients send it with no content type,
/// or as `application/octet-stream` from the asyncio client) and only from the server's
/// own origin: a page on another site can post a form or `text/plain`, never these.
pub fn state_change_allowed(headers: &HeaderMap) -> ApiResult<()> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        if essence != "application/json" && essence != "application/octet-stream" {
            return Err(ApiError(ServeError::new(
                infera_core::ErrorKind::UnsupportedMediaType,
                format!(
                    "this endpoint takes a JSON body: send it with Content-Type: application/json (got '{}')",
                    essence.escape_debug()
                ),
            )));
        }
    }
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "same-origin" && v != "none");
    let foreign_origin = headers.get(header::ORIGIN).is_some_and(|origin| {
        let origin = origin.to_str().unwrap_or("");
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        origin
            .split_once("://")
            .is_none_or(|(_, rest)| !rest.eq_ignore_ascii_case(host))
    });
    if cross_site || foreign_origin {
        return Err(ApiError(ServeError::new(
            infera_core::ErrorKind::Forbidden,
            "requests that change the server's state are not accepted from another site's page",
        )));
    }
    Ok(())
}

async fn repo_load(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    state_change_allowed(&headers)?;
    let req = optional_json(&body_or_error(body)?)?;
    let params = req.get("parameters").and_then(Value::as_object);
    if let Some(k) = params.and_then(|p| p.keys().find(|k| k.starts_with("file:"))) {
        return Err(ApiError(ServeError::unsupported(format!(
            "'{}': loading model files through the API is not supported; put them in the repository",
            k.escape_debug()
        ))));
    }
    let config = match params.and_then(|p| p.get("config")) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(ApiError(ServeError::invalid(
                "parameter 'config' must be a string holding the model config as JSON",
            )));
        }
    };
    s.server.load(&model, config).await?;
    Ok(json_ok(json!({})))
}

async fn repo_unload(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    state_change_allowed(&headers)?;
    let req = optional_json(&body_or_error(body)?)?;
    let dependents = match req.pointer("/parameters/unload_dependents") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError(ServeError::invalid(
                "parameter 'unload_dependents' must be true or false",
            )));
        }
    };
    s.server.unload(&model, dependents).await?;
    Ok(json_ok(json!({})))
}

/// Per-key usage for admins (the auth middleware lets only admins through).
async fn admin_usage(auth: Option<axum::Extension<Arc<infera_auth::Auth>>>) -> Response {
    match auth {
        Some(a) => json_ok(a.usage()),
        None => json_error(
            StatusCode::NOT_FOUND,
            "no usage: authentication is not set up",
        ),
    }
}

/// The Prometheus endpoint, served on its own port as Triton does.
pub fn metrics_router(metrics: infera_core::metrics::Metrics) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    m.render(),
                )
            }
        }),
    )
}
