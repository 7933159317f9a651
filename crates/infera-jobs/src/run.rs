//! Running jobs: the dispatcher takes queued jobs by priority, each runs on its own thread
//! and runtime (its file writes and fsyncs block), and a retention sweep deletes old ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use infera_batch::checkpoint::RunPaths;
use infera_batch::{BatchOptions, Inputs, Progress, Summary, run_batch};
use tracing::{info, warn};

use crate::download::{Downloader, JobFetch};
use crate::store::{JobRecord, Status, now_ms};
use crate::{JobManager, resolve};

impl JobManager {
    pub(crate) async fn dispatch(self: Arc<Self>) {
        loop {
            let woken = self.wake.notified();
            while !self.stopping.load(Ordering::Relaxed)
                && self.live.lock().len() < self.cfg.max_running.max(1)
            {
                // The claim is an fsync'd write: on the blocking pool, not a request thread.
                let m = self.clone();
                let next = tokio::task::spawn_blocking(move || {
                    let next = m.store.lock().claim_next();
                    if let Ok(Some(rec)) = &next {
                        let cancel = Arc::new(AtomicBool::new(false));
                        m.live.lock().insert(rec.id.clone(), cancel.clone());
                        m.publish(&rec.id);
                        return next.map(|r| r.map(|r| (r, cancel)));
                    }
                    next.map(|_| None)
                })
                .await;
                match next {
                    Ok(Ok(Some((rec, cancel)))) => self.spawn_run(rec, cancel),
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        warn!(error = %e, "cannot read the job queue");
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "the job queue task failed");
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
            // Files of earlier versions, which downloaded before running.
            let _ = std::fs::remove_dir_all(self.job_dir(&rec.id).join("downloads"));
            self.metrics
                .ended
                .with_label_values(&[status.as_str()])
                .inc();
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
            let files = resolve::resolve(
                &rec.inputs,
                rec.recursive,
                &self.policy,
                self.cfg.limits.max_inputs,
            )
            .await?;
            if cancel.load(Ordering::Relaxed) {
                return Err("cancelled".into());
            }
            Inputs::List(files)
        };
        let fetch = JobFetch {
            downloader: Arc::new(Downloader::new(self.policy.clone()).map_err(|e| e.to_string())?),
            policy: self.policy.clone(),
            per_file: self.cfg.limits.max_file_bytes,
            per_job: self.cfg.limits.max_job_download_bytes,
            used: Default::default(),
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
            fetch: Some(Arc::new(fetch)),
            max_file_bytes: self.cfg.limits.max_file_bytes,
            seal: self.cfg.seal.clone(),
        };
        let id = rec.id.clone();
        let last = parking_lot::Mutex::new((rec.progress.succeeded, rec.progress.failed));
        let on_progress = |p: &Progress| {
            let mut last = last.lock();
            let m = &self.metrics;
            m.images
                .with_label_values(&["succeeded"])
                .inc_by(p.succeeded.saturating_sub(last.0) as u64);
            m.images
                .with_label_values(&["failed"])
                .inc_by(p.failed.saturating_sub(last.1) as u64);
            *last = (p.succeeded, p.failed);
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

impl JobManager {
    /// Deletes the files and rows of jobs that ended more than `retention` ago, every
    /// tenth of the retention (at most hourly, at least every 10 s).
    pub(crate) async fn sweep(self: Arc<Self>, retention: Duration) {
        let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let mut stop = self.stop.subscribe();
        loop {
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            let m = self.clone();
            let swept = tokio::task::spawn_blocking(move || m.delete_expired(retention)).await;
            match swept {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => info!(
                    jobs = n,
                    "deleted batch jobs past their retention (--job-retention)"
                ),
                Ok(Err(e)) => warn!(error = %e, "cannot delete expired batch jobs"),
                Err(e) => warn!(error = %e, "the retention sweep failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Blocking: removes each expired job's folder, then its row.
    pub(crate) fn delete_expired(&self, retention: Duration) -> Result<usize, crate::JobError> {
        let cutoff = now_ms() - retention.as_millis().min(i64::MAX as u128) as i64;
        let ids = self.store.lock().ended_before(cutoff)?;
        for id in &ids {
            let dir = self.job_dir(id);
            if dir.exists()
                && let Err(e) = std::fs::remove_dir_all(&dir)
            {
                warn!(job = %id, error = %e, "cannot delete an expired job's files");
                continue;
            }
            self.store.lock().delete(id)?;
        }
        Ok(ids.len())
    }
}
