//! `/v2/routes`: reading and changing traffic routes (A/B splits, canaries, shadows) at run time.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use infera_core::ServeError;
use infera_core::routing::RouteSpec;
use serde_json::{Value, json};

use crate::{ApiError, ApiResult, AppState, MAX_CONTROL_BODY, body_or_error, json_ok};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/routes", get(list))
        .route("/v2/routes/{name}", get(show).put(set).delete(remove))
        .route("/v2/routes/{name}/{action}", post(canary_action))
}

async fn list(State(s): State<AppState>) -> Response {
    let all: Vec<Value> = s.server.routes.all().iter().map(|r| r.status()).collect();
    json_ok(Value::Array(all))
}

async fn show(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(json_ok(s.server.routes.route(&name)?.status()))
}

async fn set(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    crate::state_change_allowed(&headers)?;
    let body = body_or_error(body)?;
    if body.len() > MAX_CONTROL_BODY {
        return Err(ApiError(ServeError::new(
            infera_core::ErrorKind::TooLarge,
            format!("a route is at most {MAX_CONTROL_BODY} bytes of JSON"),
        )));
    }
    let spec: RouteSpec = serde_json::from_slice(&body).map_err(|e| {
        ApiError(ServeError::invalid(format!(
            "failed to parse the route JSON: {e}"
        )))
    })?;
    s.server.set_route(&name, spec)?;
    Ok(json_ok(s.server.routes.route(&name)?.status()))
}

async fn remove(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    crate::state_change_allowed(&headers)?;
    s.server.routes.remove(&name)?;
    Ok(json_ok(json!({})))
}

/// `POST .../promote` and `.../rollback`: a canary's hand controls.
async fn canary_action(
    State(s): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    crate::state_change_allowed(&headers)?;
    let route = s.server.routes.route(&name)?;
    match action.as_str() {
        "promote" => route.promote()?,
        "rollback" => route.rollback()?,
        _ => {
            return Err(ApiError(ServeError::not_found(format!(
                "no action '{}' on routes: use promote or rollback",
                action.escape_debug()
            ))));
        }
    }
    Ok(json_ok(route.status()))
}
