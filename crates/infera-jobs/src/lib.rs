//! Server-side batch prediction jobs.
//!
//! A job names a model and inputs (paths under the server's input roots, or URLs on its
//! allow-list). It is recorded in SQLite before the client hears "queued", runs through
//! [`infera_batch::run_batch`] (durable checkpoints, ordered output), and after a crash or
//! restart continues from its checkpoint, so it ends with exactly one row per input.
//! Jobs run one at a time by default, highest priority first, and their requests use the
//! scheduler's background lane, so online requests always go first.

mod download;
pub mod policy;
mod resolve;
pub mod results;
pub mod store;

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use infera_batch::checkpoint::RunPaths;
use infera_batch::{BatchOptions, Format, Inputs, Progress, Summary, run_batch};
use infera_core::InferenceServer;
use infera_core::classify::image_classifier;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

pub use policy::{InputPolicy, Refusal};
pub use store::{JobRecord, Priority, Status};

use crate::download::Downloader;
use crate::store::{Store, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Config(String),
    #[error("job database: {0}")]
    Store(String),
    #[error("{message}")]
    BadRequest {
        message: String,
        /// Inputs refused, each with its reason.
        refused: Vec<Refusal>,
        /// At least one refusal is a policy decision (HTTP 403), not a malformed input.
        forbidden: bool,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

impl JobError {
    fn bad(message: impl Into<String>) -> JobError {
        JobError::BadRequest {
            message: message.into(),
            refused: Vec::new(),
            forbidden: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Holds `jobs.db` and one folder per job (outputs, checkpoints, downloads).
    pub data_dir: PathBuf,
    pub input_roots: Vec<PathBuf>,
    /// URL prefixes jobs may fetch from.
    pub allow_urls: Vec<String>,
    /// Jobs running at once; the rest wait in priority order.
    pub max_running: usize,
    /// Inputs per checkpoint.
    pub batch_size: usize,
    /// Chunks in flight per job.
    pub workers: usize,
    pub max_download_bytes: u64,
}

/// What a client asks for.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub model: String,
    pub inputs: Vec<String>,
    pub recursive: bool,
    pub priority: Priority,
    pub format: Format,
}

pub struct JobManager {
    server: Arc<InferenceServer>,
    cfg: JobConfig,
    store: Mutex<Store>,
    policy: Arc<InputPolicy>,
    /// Running jobs and their cancel flags.
    live: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Progress subscribers (SSE), by job.
    watchers: Mutex<HashMap<String, watch::Sender<JobRecord>>>,
    wake: Notify,
    stopping: AtomicBool,
    /// Held for the manager's life: one server per data directory.
    _lock: File,
}

const MAX_INPUTS: usize = 100_000;

impl JobManager {
    /// Opens (or creates) the data directory, puts jobs interrupted by a crash or stop
    /// back in the queue, and starts running jobs. Call inside a tokio runtime.
    pub fn start(
        server: Arc<InferenceServer>,
        cfg: JobConfig,
    ) -> Result<Arc<JobManager>, JobError> {
        let dir = &cfg.data_dir;
        std::fs::create_dir_all(dir.join("jobs")).map_err(|e| {
            JobError::Config(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path)
            .map_err(|e| JobError::Config(format!("cannot create {}: {e}", lock_path.display())))?;
        lock.try_lock().map_err(|_| {
            JobError::Config(format!(
                "data directory {} is in use by another infera server; give each server its own --data-dir",
                dir.display()
            ))
        })?;
        let store = Store::open(&dir.join("jobs.db"))?;
        let resumed = store.requeue_interrupted()?;
        if resumed > 0 {
            info!(
                jobs = resumed,
                "resuming batch jobs interrupted by the last stop"
            );
        }
        let policy = Arc::new(InputPolicy::new(&cfg.input_roots, &cfg.allow_urls)?);
        // Built per run (on the job's own runtime); built once here to fail early.
        Downloader::new(policy.clone(), cfg.max_download_bytes)?;
        let manager = Arc::new(JobManager {
            server,
            cfg,
            store: Mutex::new(store),
            policy,
            live: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            _lock: lock,
        });
        tokio::spawn(manager.clone().dispatch());
        Ok(manager)
    }

    /// Checks a request and records the job; it is durable when this returns.
    pub fn submit(&self, req: JobRequest) -> Result<JobRecord, JobError> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(JobError::Conflict("the server is shutting down".into()));
        }
        let model = self
            .server
            .model(&req.model)
            .map_err(|e| JobError::NotFound(e.message))?;
        image_classifier(&model).map_err(|why| {
            JobError::bad(format!(
                "model '{}' {why}; batch jobs need one image (BYTES) input and class scores out",
                req.model
            ))
        })?;
        if req.inputs.is_empty() {
            return Err(JobError::bad(
                "\"inputs\" is empty: give paths under the input roots or http(s) URLs",
            ));
        }
        if req.inputs.len() > MAX_INPUTS {
            return Err(JobError::bad(format!(
                "{} inputs; a job takes at most {MAX_INPUTS} (folders count as one)",
                req.inputs.len()
            )));
        }
        let refused: Vec<Refusal> = req
            .inputs
            .iter()
            .filter_map(|i| self.policy.check(i).err())
            .collect();
        if !refused.is_empty() {
            let forbidden = refused.iter().any(|r| r.forbidden);
            let first = &refused[0];
            let message = if refused.len() == 1 {
                format!("input '{}' {}", first.input, first.reason)
            } else {
                format!(
                    "{} inputs refused; the first: '{}' {}",
                    refused.len(),
                    first.input,
                    first.reason
                )
            };
            return Err(JobError::BadRequest {
                message,
                refused,
                forbidden,
            });
        }
        let rec = JobRecord {
            id: uuid::Uuid::new_v4().simple().to_string(),
            model: req.model,
            inputs: req.inputs,
            recursive: req.recursive,
            priority: req.priority,
            format: req.format,
            status: Status::Queued,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            progress: Progress::default(),
            error: None,
            restarts: 0,
        };
        self.store.lock().insert(&rec)?;
        info!(job = %rec.id, model = %rec.model, inputs = rec.inputs.len(), priority = ?rec.priority, "batch job queued");
        self.wake.notify_one();
        Ok(rec)
    }

    pub fn get(&self, id: &str) -> Result<JobRecord, JobError> {
        self.store
            .lock()
            .get(id)?
            .ok_or_else(|| JobError::NotFound(format!("no job '{id}'")))
    }

    pub fn list(&self, status: Option<Status>, limit: usize) -> Result<Vec<JobRecord>, JobError> {
        self.store.lock().list(status, limit)
    }

    /// Whether a cancel was asked for a job that is still finishing its current chunk.
    pub fn cancelling(&self, id: &str) -> bool {
        self.live
            .lock()
            .get(id)
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// A queued job is cancelled at once; a running one after its current chunk.
    pub fn cancel(&self, id: &str) -> Result<JobRecord, JobError> {
        let rec = self.get(id)?;
        if rec.status.is_terminal() {
            return Err(JobError::Conflict(format!(
                "job '{id}' already {}",
                rec.status.as_str()
            )));
        }
        if self.store.lock().set_status(
            id,
            Status::Cancelled,
            Some("cancelled by request"),
            &[Status::Queued],
        )? {
            info!(job = %id, "queued batch job cancelled");
            self.publish(id);
        } else if let Some(flag) = self.live.lock().get(id) {
            flag.store(true, Ordering::Relaxed);
            info!(job = %id, "cancelling batch job after its current chunk");
        }
        self.get(id)
    }

    /// Follows a job's record as it changes; the channel closes after its final state.
    pub fn subscribe(&self, id: &str) -> Result<watch::Receiver<JobRecord>, JobError> {
        let rec = self.get(id)?;
        if rec.status.is_terminal() {
            return Ok(watch::channel(rec).1);
        }
        Ok(self
            .watchers
            .lock()
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(rec).0)
            .subscribe())
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("jobs").join(id)
    }

    /// The job's results file (complete once the job has succeeded).
    pub fn output_path(&self, rec: &JobRecord) -> PathBuf {
        let ext = match rec.format {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        };
        self.job_dir(&rec.id).join(format!("predictions.{ext}"))
    }

    /// The job's errors CSV (`filename,error`); while running, what is there so far.
    pub fn errors_path(&self, rec: &JobRecord) -> PathBuf {
        let done = self.job_dir(&rec.id).join("errors.csv");
        if rec.status.is_terminal() || done.exists() {
            done
        } else {
            self.job_dir(&rec.id).join("errors.csv.partial")
        }
    }

    /// Sends the job's current record to its followers; without followers there is nothing
    /// to read (this runs after every checkpoint).
    fn publish(&self, id: &str) {
        if !self.watchers.lock().contains_key(id) {
            return;
        }
        let Ok(Some(rec)) = self.store.lock().get(id) else {
            return;
        };
        let mut watchers = self.watchers.lock();
        if let Some(tx) = watchers.get(id) {
            tx.send_replace(rec.clone());
        }
        if rec.status.is_terminal() {
            watchers.remove(id);
        }
    }

    /// Stops taking jobs, interrupts running ones after their current chunk (they stay
    /// `running` in the database and resume at the next start) and waits for them.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        for flag in self.live.lock().values() {
            flag.store(true, Ordering::Relaxed);
        }
        self.wake.notify_one();
        for _ in 0..600 {
            if self.live.lock().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        warn!("batch jobs did not stop within 30 s; they resume at the next start");
    }

    async fn dispatch(self: Arc<Self>) {
        loop {
            let woken = self.wake.notified();
            while !self.stopping.load(Ordering::Relaxed)
                && self.live.lock().len() < self.cfg.max_running.max(1)
            {
                let next = self.store.lock().claim_next();
                match next {
                    Ok(Some(rec)) => {
                        let cancel = Arc::new(AtomicBool::new(false));
                        self.live.lock().insert(rec.id.clone(), cancel.clone());
                        self.publish(&rec.id);
                        self.spawn_run(rec, cancel);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "cannot read the job queue");
                        break;
                    }
                }
            }
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            woken.await;
        }
    }

    /// A job runs on its own thread and runtime: its file writes and fsyncs block, and must
    /// not stall the threads that serve online requests.
    fn spawn_run(self: &Arc<Self>, rec: JobRecord, cancel: Arc<AtomicBool>) {
        let m = self.clone();
        let id = rec.id.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("job-{}", &id[..8.min(id.len())]))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(m.run(rec, cancel)),
                    Err(e) => m.abandon(&rec.id, &format!("cannot start a runtime: {e}")),
                }
            });
        if let Err(e) = spawned {
            self.abandon(&id, &format!("cannot start a thread: {e}"));
        }
    }

    /// A job that could not even start: it fails with the reason.
    fn abandon(&self, id: &str, why: &str) {
        warn!(job = %id, error = why, "batch job failed to start");
        let _ = self
            .store
            .lock()
            .set_status(id, Status::Failed, Some(why), &[Status::Running]);
        self.live.lock().remove(id);
        self.publish(id);
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>, rec: JobRecord, cancel: Arc<AtomicBool>) {
        info!(job = %rec.id, model = %rec.model, restarts = rec.restarts, "batch job started");
        let result = self.execute(&rec, &cancel).await;
        let interrupted = self.stopping.load(Ordering::Relaxed);
        let outcome = match result {
            Ok(s) if s.progress.total == 0 => Some((Status::Failed, Some("no inputs".to_string()))),
            Ok(s) if s.progress.succeeded == 0 => Some((
                Status::Failed,
                Some(format!(
                    "none of the {} inputs could be predicted; see the job's errors",
                    s.progress.total
                )),
            )),
            Ok(_) => Some((Status::Succeeded, None)),
            Err(_) if interrupted => None,
            Err(_) if cancel.load(Ordering::Relaxed) => {
                Some((Status::Cancelled, Some("cancelled by request".to_string())))
            }
            Err(e) => Some((Status::Failed, Some(e))),
        };
        if let Some((status, error)) = outcome {
            if let Err(e) =
                self.store
                    .lock()
                    .set_status(&rec.id, status, error.as_deref(), &[Status::Running])
            {
                warn!(job = %rec.id, error = %e, "cannot record the job's end");
            }
            if status == Status::Succeeded || status == Status::Failed {
                let _ = std::fs::remove_dir_all(self.job_dir(&rec.id).join("downloads"));
            }
            info!(job = %rec.id, status = status.as_str(), error = error.as_deref().unwrap_or(""), "batch job ended");
        } else {
            info!(job = %rec.id, "batch job interrupted by shutdown; it resumes at the next start");
        }
        self.live.lock().remove(&rec.id);
        self.publish(&rec.id);
        self.wake.notify_one();
    }

    async fn execute(&self, rec: &JobRecord, cancel: &AtomicBool) -> Result<Summary, String> {
        let dir = self.job_dir(&rec.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let output = self.output_path(rec);
        let errors = dir.join("errors.csv");
        let paths = RunPaths::new(&output, Some(&errors));
        let resume = paths.checkpoint.exists();
        if !resume && output.exists() {
            // Finished just before the last stop, before the database heard of it.
            return Ok(Summary {
                progress: rec.progress.clone(),
                resumed_from: rec.progress.done,
                output,
                errors,
            });
        }
        let inputs = if resume {
            info!(job = %rec.id, done = rec.progress.done, total = rec.progress.total, "resuming batch job from its checkpoint");
            Inputs::List(Vec::new())
        } else {
            let downloader = Downloader::new(self.policy.clone(), self.cfg.max_download_bytes)
                .map_err(|e| e.to_string())?;
            let files = resolve::resolve(
                &rec.inputs,
                rec.recursive,
                &self.policy,
                &downloader,
                &dir.join("downloads"),
            )
            .await;
            if cancel.load(Ordering::Relaxed) {
                return Err("cancelled".into());
            }
            Inputs::List(files)
        };
        let opts = BatchOptions {
            model: rec.model.clone(),
            inputs,
            output,
            errors: Some(errors),
            format: rec.format,
            batch_size: self.cfg.batch_size.max(1),
            workers: self.cfg.workers.max(1),
            resume,
            overwrite: false,
            priority: infera_core::scheduler::BACKGROUND,
        };
        let id = rec.id.clone();
        let on_progress = |p: &Progress| {
            if let Err(e) = self.store.lock().set_progress(&id, p) {
                warn!(job = %id, error = %e, "cannot record progress");
            }
            self.publish(&id);
        };
        run_batch(self.server.clone(), &opts, on_progress, Some(cancel))
            .await
            .map_err(|e| e.to_string())
    }
}
