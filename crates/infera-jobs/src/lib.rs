//! Server-side batch prediction jobs.
//!
//! A job names a model and inputs (paths under the server's input roots, or URLs on its
//! allow-list). It is recorded in SQLite before the client hears "queued", runs through
//! [`infera_batch::run_batch`] (durable checkpoints, ordered output), and after a crash or
//! restart continues from its checkpoint, so it ends with exactly one row per input.
//! Jobs run one at a time by default, highest priority first, and their requests use the
//! scheduler's background lane, so online requests always go first.

mod download;
pub mod metrics;
pub mod policy;
mod resolve;
pub mod results;
mod run;
pub mod store;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use infera_batch::{Format, Progress};
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
    /// A server-wide limit is reached (queued jobs, disk); retry later (HTTP 429).
    #[error("{0}")]
    Busy(String),
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
    pub limits: JobLimits,
    /// Encrypts every job's results, errors and input list at rest.
    pub seal: Option<Arc<infera_seal::Keyring>>,
}

/// Per-job and per-server bounds; past them a request gets a 4xx, or inputs error rows.
#[derive(Debug, Clone)]
pub struct JobLimits {
    /// Inputs of one job, as given and after folders are listed.
    pub max_inputs: usize,
    /// Bytes of one input file or download.
    pub max_file_bytes: u64,
    /// Bytes one job may download in all; past it URL inputs become error rows.
    pub max_job_download_bytes: u64,
    /// Jobs waiting to run, server-wide; more are refused (429).
    pub max_queued: usize,
    /// Bytes the jobs' folders may take on disk; past it new jobs are refused (429).
    pub max_disk_bytes: u64,
    /// Ended jobs are deleted (files and rows) this long after they end; `None` keeps them.
    pub retention: Option<Duration>,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            max_inputs: 100_000,
            max_file_bytes: 64 << 20,
            max_job_download_bytes: 1 << 30,
            max_queued: 1000,
            max_disk_bytes: 10 << 30,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

/// What a client asks for.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub model: String,
    pub inputs: Vec<String>,
    pub recursive: bool,
    pub priority: Priority,
    pub format: Format,
    /// Who asks (an API key id; `None` on an open server).
    pub owner: Option<String>,
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
    /// Becomes true at shutdown: event streams end, the retention sweep stops.
    stop: watch::Sender<bool>,
    metrics: metrics::JobMetrics,
    /// Held for the manager's life: one server per data directory.
    _lock: File,
}

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
        Downloader::new(policy.clone())?;
        let retention = cfg.limits.retention;
        let manager = Arc::new(JobManager {
            server,
            cfg,
            store: Mutex::new(store),
            policy,
            live: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            stop: watch::channel(false).0,
            metrics: metrics::JobMetrics::new(),
            _lock: lock,
        });
        tokio::spawn(manager.clone().dispatch());
        if let Some(r) = retention {
            tokio::spawn(manager.clone().sweep(r));
        }
        Ok(manager)
    }

    /// Checks a request and records the job; it is durable when this returns. Blocking
    /// (an fsync'd database write): call it off the async runtime.
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
        let limits = &self.cfg.limits;
        if req.inputs.len() > limits.max_inputs {
            return Err(JobError::bad(format!(
                "{} inputs; a job takes at most {} (--job-max-inputs; folders count as one here)",
                req.inputs.len(),
                limits.max_inputs
            )));
        }
        if let Some(long) = req.inputs.iter().find(|i| i.len() > MAX_INPUT_LEN) {
            return Err(JobError::bad(format!(
                "an input is {} bytes long; paths and URLs are at most {MAX_INPUT_LEN}",
                long.len()
            )));
        }
        let queued = self.store.lock().count(Status::Queued)?;
        if queued >= limits.max_queued {
            return Err(JobError::Busy(format!(
                "{queued} jobs are waiting, the server's limit (--max-queued-jobs); retry when some have run"
            )));
        }
        let used = dir_size(&self.cfg.data_dir.join("jobs"));
        if used >= limits.max_disk_bytes {
            return Err(JobError::Busy(format!(
                "the jobs' files take {used} bytes, the server's limit (--jobs-max-disk-bytes); delete finished jobs or wait for --job-retention"
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
            owner: req.owner,
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

    /// A page of jobs, newest first, starting after `cursor` (the `next_cursor` of the
    /// previous page); the cursor of the page's last job comes back with it.
    /// `owner`: only that identity's jobs (`None`: everyone's).
    pub fn list(
        &self,
        status: Option<Status>,
        limit: usize,
        cursor: Option<i64>,
        owner: Option<&str>,
    ) -> Result<(Vec<JobRecord>, Option<i64>), JobError> {
        self.store.lock().list(status, limit, cursor, owner)
    }

    /// Follows the shutdown: true once the server is stopping.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
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

    pub(crate) fn job_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("jobs").join(id)
    }

    /// How many images a job over `inputs` will predict, for rate limits and quotas: one
    /// per file or URL, a folder's images for a folder the policy allows (listed, at most
    /// --job-max-inputs). Blocking.
    pub fn image_count(&self, inputs: &[String], recursive: bool) -> usize {
        let cap = self.cfg.limits.max_inputs;
        inputs
            .iter()
            .map(|i| {
                let path = Path::new(i);
                if policy::is_url(i) || self.policy.check(i).is_err() || !path.is_dir() {
                    return 1;
                }
                infera_batch::list_images(path, recursive).map_or(1, |l| l.len().clamp(1, cap))
            })
            .fold(0usize, |a, n| a.saturating_add(n))
            .min(cap)
    }

    /// The key the job files are encrypted with, if they are.
    /// The jobs' metrics, to register with the server's.
    pub fn collector(self: &Arc<Self>) -> metrics::JobCollector {
        metrics::JobCollector::new(self)
    }

    pub fn seal(&self) -> Option<&Arc<infera_seal::Keyring>> {
        self.cfg.seal.as_ref()
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
        self.stop.send_replace(true);
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
}

/// Bytes of a path or URL a job names.
const MAX_INPUT_LEN: usize = 4096;

/// Bytes of the files under `dir` (links not followed).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => total += dir_size(&e.path()),
            Ok(m) => total += m.len(),
            Err(_) => {}
        }
    }
    total
}
