//! The jobs API: batch prediction on the server, translated to `infera-jobs`.
//!
//! * `POST /api/inference/batch {model, inputs, priority?, output_format?, recursive?}`
//!   → 202 `{job_id, status: "queued", ...}`
//! * `GET /api/inference/jobs[?status=S&limit=N&cursor=C]`: newest first, a page at a time
//!   (`next_cursor` fetches the next one); inputs are counted, not listed
//! * `GET /api/inference/job/{id}[?offset=&limit=]`: status, progress, errors and a page of
//!   results; `?download=results|errors` sends the file itself
//! * `DELETE /api/inference/job/{id}`: cancel
//! * `GET /api/inference/job/{id}/events`: progress as server-sent events until the end

mod request;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use infera_auth::Identity;
use infera_batch::Format;
use infera_http::json_error;
use infera_jobs::{JobError, JobManager, JobRecord, Status, results};
use request::parse_request;
use serde_json::{Value, json};

type Jobs = Option<Arc<JobManager>>;

/// The routes; without a manager (no `--data-dir`) they explain how to turn jobs on.
pub fn router(jobs: Jobs) -> Router {
    Router::new()
        .route("/api/inference/batch", post(create))
        .route("/api/inference/jobs", get(list))
        .route("/api/inference/job/{id}", get(show).delete(cancel))
        .route("/api/inference/job/{id}/events", get(events))
        .with_state(jobs)
}

fn error(e: JobError) -> Response {
    let status = match &e {
        JobError::BadRequest {
            forbidden: true, ..
        } => StatusCode::FORBIDDEN,
        JobError::BadRequest { .. } => StatusCode::BAD_REQUEST,
        JobError::NotFound(_) => StatusCode::NOT_FOUND,
        JobError::Conflict(_) => StatusCode::CONFLICT,
        JobError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
        JobError::Config(_) | JobError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    match e {
        JobError::BadRequest {
            message, refused, ..
        } if !refused.is_empty() => (
            status,
            axum::Json(json!({"error": message, "refused": refused})),
        )
            .into_response(),
        e => json_error(status, &e.to_string()),
    }
}

/// Runs a blocking job-store call (SQLite with synchronous=FULL, file reads) on the
/// blocking pool, never on the threads that serve requests.
async fn blocking<T: Send + 'static>(
    m: &Arc<JobManager>,
    f: impl FnOnce(&JobManager) -> T + Send + 'static,
) -> T {
    let m = m.clone();
    match tokio::task::spawn_blocking(move || f(&m)).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Inputs a job view lists; the rest are counted.
const VIEW_INPUTS: usize = 100;

fn jobs_off() -> Response {
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "batch jobs are off: start the server with --data-dir DIR (and --batch-input-root DIR or --batch-allow-url PREFIX)",
    )
}

/// A job as the API shows it; `inputs` only in full views, and at most [`VIEW_INPUTS`].
fn view(m: &JobManager, j: &JobRecord) -> Value {
    let mut v = summary(m, j);
    v["inputs"] = json!(&j.inputs[..j.inputs.len().min(VIEW_INPUTS)]);
    v["inputs_truncated"] = json!(j.inputs.len() > VIEW_INPUTS);
    v
}

fn summary(m: &JobManager, j: &JobRecord) -> Value {
    let p = &j.progress;
    let percent = if p.total == 0 {
        0.0
    } else {
        (p.done as f64 * 1000.0 / p.total as f64).round() / 10.0
    };
    let base = format!("/api/inference/job/{}", j.id);
    json!({
        "job_id": j.id,
        "model": j.model,
        "status": j.status,
        "cancelling": m.cancelling(&j.id),
        "priority": j.priority,
        "output_format": match j.format { Format::Csv => "csv", Format::Jsonl => "jsonl" },
        "input_count": j.inputs.len(),
        "recursive": j.recursive,
        "created_at": infera_jobs::store::rfc3339(j.created_ms),
        "started_at": j.started_ms.map(infera_jobs::store::rfc3339),
        "finished_at": j.finished_ms.map(infera_jobs::store::rfc3339),
        "progress": {
            "total": p.total, "done": p.done, "succeeded": p.succeeded, "failed": p.failed,
            "percent": percent,
        },
        "error": j.error,
        "restarts": j.restarts,
        "links": {
            "self": base,
            "events": format!("{base}/events"),
            "results": format!("{base}?download=results"),
            "errors": format!("{base}?download=errors"),
        },
    })
}

/// Bytes of a job request: 100,000 inputs of a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 64 << 20;

/// The caller (anonymous on an open server).
fn caller(who: Option<Extension<Identity>>) -> Identity {
    who.map_or_else(Identity::anonymous, |e| e.0)
}

/// Whether `who` may see `job`: its own, or every job from the operator role up. Others'
/// jobs answer 404, as if they did not exist.
fn visible(who: &Identity, job: &JobRecord) -> bool {
    who.sees_all_jobs() || job.owner.as_deref() == Some(&*who.id)
}

fn no_job(id: &str) -> Response {
    error(JobError::NotFound(format!("no job '{id}'")))
}

async fn create(
    State(jobs): State<Jobs>,
    who: Option<Extension<Identity>>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(m) = &jobs else {
        return jobs_off();
    };
    if let Err(e) = infera_http::state_change_allowed(&headers) {
        return e.into_response();
    }
    if body.len() > MAX_REQUEST_BYTES {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a job request is at most {MAX_REQUEST_BYTES} bytes"),
        );
    }
    let who = caller(who);
    let req = match parse_request(&body, Some(who.id.to_string())) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e),
    };
    if !who.may_use(&req.model) {
        return json_error(
            StatusCode::FORBIDDEN,
            &format!("the key '{}' may not use model '{}'", who.id, req.model),
        );
    }
    // Rate limits and quotas count the job's images (the request itself counted one).
    let (inputs, recursive) = (req.inputs.clone(), req.recursive);
    let images = blocking(m, move |m| m.image_count(&inputs, recursive)).await;
    let extra = u32::try_from(images.saturating_sub(1)).unwrap_or(u32::MAX);
    if let Some(refused) = infera_http::auth::charge(&extensions, extra) {
        return refused;
    }
    match blocking(m, move |m| m.submit(req)).await {
        Ok(j) => {
            let location = format!("/api/inference/job/{}", j.id);
            (
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                axum::Json(view(m, &j)),
            )
                .into_response()
        }
        Err(e) => error(e),
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<i64>,
}

async fn list(
    State(jobs): State<Jobs>,
    who: Option<Extension<Identity>>,
    Query(q): Query<ListQuery>,
) -> Response {
    let Some(m) = &jobs else {
        return jobs_off();
    };
    let status = match q.status.as_deref().map(|s| (s, Status::parse(s))) {
        None => None,
        Some((_, Some(s))) => Some(s),
        Some((s, None)) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "unknown status '{s}': use queued, running, succeeded, failed or cancelled"
                ),
            );
        }
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let cursor = q.cursor;
    let who = caller(who);
    let owner = (!who.sees_all_jobs()).then(|| who.id.to_string());
    match blocking(m, move |m| m.list(status, limit, cursor, owner.as_deref())).await {
        Ok((js, next)) => {
            let views: Vec<Value> = js.iter().map(|j| summary(m, j)).collect();
            axum::Json(json!({ "jobs": views, "next_cursor": next })).into_response()
        }
        Err(e) => error(e),
    }
}

#[derive(serde::Deserialize)]
struct ShowQuery {
    offset: Option<usize>,
    limit: Option<usize>,
    download: Option<String>,
}

async fn show(
    State(jobs): State<Jobs>,
    who: Option<Extension<Identity>>,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Response {
    let Some(m) = &jobs else {
        return jobs_off();
    };
    let asked = id.clone();
    let j = match blocking(m, move |m| m.get(&id)).await {
        Ok(j) if visible(&caller(who), &j) => j,
        Ok(_) => return no_job(&asked),
        Err(e) => return error(e),
    };
    if let Some(what) = q.download.as_deref() {
        return download(m, &j, what).await;
    }
    let mut v = view(m, &j);
    let (errors_file, results_file) = (m.errors_path(&j), m.output_path(&j));
    let seal = m.seal().cloned();
    let seal2 = seal.clone();
    let errors = tokio::task::spawn_blocking(move || {
        results::errors_page(&errors_file, 100, seal2.as_deref())
    })
    .await
    .unwrap_or_default();
    v["errors"] = json!(errors);
    if j.status == Status::Succeeded {
        let offset = q.offset.unwrap_or(0);
        let limit = q.limit.unwrap_or(100).min(1000);
        let format = j.format;
        let page = tokio::task::spawn_blocking(move || {
            results::results_page(&results_file, format, offset, limit, seal.as_deref())
        })
        .await
        .unwrap_or_else(|e| Err(format!("cannot read the results: {e}")));
        match page {
            Ok(rows) => {
                let next = offset + rows.len();
                v["results"] = json!({
                    "offset": offset,
                    "count": rows.len(),
                    "total": j.progress.succeeded,
                    "next_offset": (next < j.progress.succeeded).then_some(next),
                    "rows": rows,
                });
            }
            Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        }
    }
    axum::Json(v).into_response()
}

async fn download(m: &JobManager, j: &JobRecord, what: &str) -> Response {
    let (path, content_type, name) = match what {
        "results" | "true" | "1" => {
            if j.status != Status::Succeeded {
                return json_error(
                    StatusCode::CONFLICT,
                    &format!(
                        "job '{}' is {}: results can be downloaded once it has succeeded",
                        j.id,
                        j.status.as_str()
                    ),
                );
            }
            let p = m.output_path(j);
            let (ct, ext) = match j.format {
                Format::Csv => ("text/csv; charset=utf-8", "csv"),
                Format::Jsonl => ("application/x-ndjson", "jsonl"),
            };
            (p, ct, format!("{}-predictions.{ext}", j.id))
        }
        "errors" => (
            m.errors_path(j),
            "text/csv; charset=utf-8",
            format!("{}-errors.csv", j.id),
        ),
        other => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("download={other}: use download=results or download=errors"),
            );
        }
    };
    let headers = [
        (header::CONTENT_TYPE, content_type.to_string()),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ),
    ];
    if let Some(k) = m.seal().cloned() {
        return match sealed_download(k, path).await {
            Ok(body) => (headers, body).into_response(),
            Err((status, msg)) => json_error(status, &msg),
        };
    }
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return json_error(
                StatusCode::NOT_FOUND,
                &format!("job '{}' has no {what} file (yet)", j.id),
            );
        }
        Err(e) => {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot read the {what}: {e}"),
            );
        }
    };
    (
        headers,
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response()
}

/// A job file encrypted at rest, decrypted for an authorised caller. The whole file is
/// authenticated before the first byte goes out, so damage is a 500, not a cut-off download
/// of data that cannot be trusted.
async fn sealed_download(
    k: Arc<infera_seal::Keyring>,
    path: std::path::PathBuf,
) -> Result<Body, (StatusCode, String)> {
    use std::io::Read;
    if !path.exists() {
        return Err((
            StatusCode::NOT_FOUND,
            "the file does not exist (yet)".into(),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    tokio::task::spawn_blocking(move || {
        let check = results::open(&path, Some(&k)).and_then(|mut r| {
            std::io::copy(&mut r, &mut std::io::sink())
                .map(drop)
                .map_err(|e| e.to_string())
        });
        let failed = check.is_err();
        let _ = ready_tx.send(check);
        if failed {
            return;
        }
        let Ok(mut r) = results::open(&path, Some(&k)) else {
            return;
        };
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    match ready_rx.await {
        Ok(Ok(())) => Ok(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )),
        Ok(Err(e)) => Err((StatusCode::INTERNAL_SERVER_ERROR, e)),
        Err(_) => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the file".into(),
        )),
    }
}

async fn cancel(
    State(jobs): State<Jobs>,
    who: Option<Extension<Identity>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(m) = &jobs else {
        return jobs_off();
    };
    if let Err(e) = infera_http::state_change_allowed(&headers) {
        return e.into_response();
    }
    let who = caller(who);
    let asked = id.clone();
    let mine = blocking(m, move |m| m.get(&asked).map(|j| visible(&who, &j))).await;
    if !matches!(mine, Ok(true)) {
        return no_job(&id);
    }
    match blocking(m, move |m| m.cancel(&id)).await {
        Ok(j) => {
            let status = if j.status.is_terminal() {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            (status, axum::Json(view(m, &j))).into_response()
        }
        Err(e) => error(e),
    }
}

struct Follow {
    rx: tokio::sync::watch::Receiver<JobRecord>,
    m: Arc<JobManager>,
    id: String,
    last: Option<JobRecord>,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Follow {
    /// The job's record from the store, read on the blocking pool.
    async fn read(&self) -> Option<JobRecord> {
        let id = self.id.clone();
        blocking(&self.m, move |m| m.get(&id)).await.ok()
    }

    /// The next state to report, or `None` when the job disappeared or the server stops.
    async fn next(&mut self) -> Option<JobRecord> {
        if self.last.is_none() {
            return Some(self.rx.borrow_and_update().clone());
        }
        loop {
            if *self.stopping.borrow() {
                return None;
            }
            let changed = tokio::select! {
                c = tokio::time::timeout(Duration::from_secs(5), self.rx.changed()) => c,
                _ = self.stopping.changed() => return None,
            };
            match changed {
                Ok(Ok(())) => return Some(self.rx.borrow_and_update().clone()),
                // Closed: the job ended (its final state is in the store), or ended and
                // was followed again; re-read rather than trust the channel.
                Ok(Err(_)) => {
                    let j = self.read().await?;
                    if j.status.is_terminal() {
                        return Some(j);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let id = self.id.clone();
                    self.rx = blocking(&self.m, move |m| m.subscribe(&id)).await.ok()?;
                }
                // Quiet for a while: the store is the truth if a wake-up was missed.
                Err(_) => {
                    let j = self.read().await?;
                    if Some(&j) != self.last.as_ref() {
                        return Some(j);
                    }
                }
            }
        }
    }
}

/// One `progress` event per change, then `end` with the final state.
async fn events(
    State(jobs): State<Jobs>,
    who: Option<Extension<Identity>>,
    Path(id): Path<String>,
) -> Response {
    let Some(m) = jobs else {
        return jobs_off();
    };
    let who = caller(who);
    let asked = id.clone();
    let mine = blocking(&m, move |m| m.get(&asked).map(|j| visible(&who, &j))).await;
    if !matches!(mine, Ok(true)) {
        return no_job(&id);
    }
    let sid = id.clone();
    let rx = match blocking(&m, move |m| m.subscribe(&sid)).await {
        Ok(rx) => rx,
        Err(e) => return error(e),
    };
    let stopping = m.stopping();
    let follow = Follow {
        rx,
        m,
        id,
        last: None,
        stopping,
    };
    let stream = futures::stream::unfold(Some(follow), |state| async move {
        let mut f = state?;
        let j = f.next().await?;
        let done = j.status.is_terminal();
        let data = view(&f.m, &j).to_string();
        let mut out = vec![Ok::<Event, Infallible>(
            Event::default().event("progress").data(data.clone()),
        )];
        if done {
            out.push(Ok(Event::default().event("end").data(data)));
        }
        f.last = Some(j);
        Some((futures::stream::iter(out), (!done).then_some(f)))
    })
    .flatten();
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
