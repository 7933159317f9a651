//! Jobs in SQLite (WAL, synchronous=FULL): a job acknowledged to a client survives a crash.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use infera_batch::{Format, Progress};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use crate::JobError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "queued" => Status::Queued,
            "running" => Status::Running,
            "succeeded" => Status::Succeeded,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low = 0,
    Normal = 1,
    High = 2,
}

impl Priority {
    pub fn parse(s: &str) -> Option<Priority> {
        Some(match s.to_ascii_lowercase().as_str() {
            "low" => Priority::Low,
            "normal" | "default" => Priority::Normal,
            "high" => Priority::High,
            _ => return None,
        })
    }

    fn from_i64(v: i64) -> Priority {
        match v {
            i64::MIN..=0 => Priority::Low,
            1 => Priority::Normal,
            _ => Priority::High,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub model: String,
    pub inputs: Vec<String>,
    pub recursive: bool,
    pub priority: Priority,
    pub format: Format,
    pub status: Status,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub progress: Progress,
    pub error: Option<String>,
    /// Times the job was picked up again after the server stopped mid-job.
    pub restarts: i64,
    /// The identity (API key id) that created it; callers below operator see only theirs.
    pub owner: Option<String>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

pub struct Store {
    conn: Connection,
}

const COLUMNS: &str = "id, model, inputs, recursive, priority, format, status, created_ms, \
    started_ms, finished_ms, total, done, succeeded, failed, error, restarts, owner";

fn sql_err(e: rusqlite::Error) -> JobError {
    JobError::Store(e.to_string())
}

fn record(row: &Row) -> rusqlite::Result<JobRecord> {
    let inputs: String = row.get(2)?;
    let format: String = row.get(5)?;
    let status: String = row.get(6)?;
    let count = |i: usize| -> rusqlite::Result<usize> { Ok(row.get::<_, i64>(i)?.max(0) as usize) };
    Ok(JobRecord {
        id: row.get(0)?,
        model: row.get(1)?,
        inputs: serde_json::from_str(&inputs).unwrap_or_default(),
        recursive: row.get(3)?,
        priority: Priority::from_i64(row.get(4)?),
        format: format.parse().unwrap_or(Format::Csv),
        status: Status::parse(&status).unwrap_or(Status::Failed),
        created_ms: row.get(7)?,
        started_ms: row.get(8)?,
        finished_ms: row.get(9)?,
        progress: Progress {
            total: count(10)?,
            done: count(11)?,
            succeeded: count(12)?,
            failed: count(13)?,
        },
        error: row.get(14)?,
        restarts: row.get(15)?,
        owner: row.get(16)?,
    })
}

fn format_str(f: Format) -> &'static str {
    match f {
        Format::Csv => "csv",
        Format::Jsonl => "jsonl",
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, JobError> {
        let conn = Connection::open(path).map_err(|e| {
            JobError::Store(format!(
                "cannot open the job database {}: {e}",
                path.display()
            ))
        })?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS jobs (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 id TEXT NOT NULL UNIQUE,
                 model TEXT NOT NULL,
                 inputs TEXT NOT NULL,
                 recursive INTEGER NOT NULL,
                 priority INTEGER NOT NULL,
                 format TEXT NOT NULL,
                 status TEXT NOT NULL,
                 created_ms INTEGER NOT NULL,
                 started_ms INTEGER,
                 finished_ms INTEGER,
                 total INTEGER NOT NULL DEFAULT 0,
                 done INTEGER NOT NULL DEFAULT 0,
                 succeeded INTEGER NOT NULL DEFAULT 0,
                 failed INTEGER NOT NULL DEFAULT 0,
                 error TEXT,
                 restarts INTEGER NOT NULL DEFAULT 0
             );
             CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, priority, seq);",
        )
        .and_then(|()| {
            // Databases from before jobs had owners get the column.
            let has_owner = conn
                .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'owner'")?
                .exists([])?;
            if !has_owner {
                conn.execute_batch("ALTER TABLE jobs ADD COLUMN owner TEXT;")?;
            }
            Ok(())
        })
        .map_err(|e| {
            JobError::Store(format!(
                "cannot set up the job database {}: {e}",
                path.display()
            ))
        })?;
        Ok(Store { conn })
    }

    pub fn insert(&self, j: &JobRecord) -> Result<(), JobError> {
        self.conn
            .execute(
                "INSERT INTO jobs (id, model, inputs, recursive, priority, format, status, created_ms, owner)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    j.id,
                    j.model,
                    serde_json::to_string(&j.inputs).unwrap_or_else(|_| "[]".into()),
                    j.recursive,
                    j.priority as i64,
                    format_str(j.format),
                    j.status.as_str(),
                    j.created_ms,
                    j.owner
                ],
            )
            .map_err(sql_err)?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<JobRecord>, JobError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                record,
            )
            .optional()
            .map_err(sql_err)
    }

    /// A page of jobs, newest first, after `cursor` (a row number from the last page);
    /// the cursor for the next page when there may be more.
    pub fn list(
        &self,
        status: Option<Status>,
        limit: usize,
        cursor: Option<i64>,
        owner: Option<&str>,
    ) -> Result<(Vec<JobRecord>, Option<i64>), JobError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS}, seq FROM jobs WHERE (?1 IS NULL OR status = ?1) AND seq < ?3
                 AND (?4 IS NULL OR owner = ?4) ORDER BY seq DESC LIMIT ?2"
            ))
            .map_err(sql_err)?;
        let rows = stmt
            .query_map(
                params![
                    status.map(Status::as_str),
                    limit as i64,
                    cursor.unwrap_or(i64::MAX),
                    owner
                ],
                |row| Ok((record(row)?, row.get::<_, i64>(17)?)),
            )
            .map_err(sql_err)?;
        let page: Vec<(JobRecord, i64)> = rows.collect::<Result<_, _>>().map_err(sql_err)?;
        let next = (page.len() == limit)
            .then(|| page.last().map(|p| p.1))
            .flatten();
        Ok((page.into_iter().map(|p| p.0).collect(), next))
    }

    pub fn count(&self, status: Status) -> Result<usize, JobError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE status = ?1",
                [status.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as usize)
            .map_err(sql_err)
    }

    /// Jobs that ended before `ms` (succeeded, failed or cancelled).
    pub fn ended_before(&self, ms: i64) -> Result<Vec<String>, JobError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled')
                 AND finished_ms IS NOT NULL AND finished_ms < ?1 ORDER BY seq LIMIT 1000",
            )
            .map_err(sql_err)?;
        let rows = stmt.query_map([ms], |r| r.get(0)).map_err(sql_err)?;
        rows.collect::<Result<_, _>>().map_err(sql_err)
    }

    pub fn delete(&self, id: &str) -> Result<(), JobError> {
        self.conn
            .execute("DELETE FROM jobs WHERE id = ?1", [id])
            .map_err(sql_err)?;
        Ok(())
    }

    /// Claims the next queued job (highest priority, then oldest) and marks it running.
    pub fn claim_next(&self) -> Result<Option<JobRecord>, JobError> {
        let next: Option<String> = self
            .conn
            .query_row(
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY priority DESC, seq ASC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql_err)?;
        let Some(id) = next else { return Ok(None) };
        self.conn
            .execute(
                "UPDATE jobs SET status = 'running', started_ms = COALESCE(started_ms, ?2)
                 WHERE id = ?1 AND status = 'queued'",
                params![id, now_ms()],
            )
            .map_err(sql_err)?;
        self.get(&id)
    }

    /// Jobs that were running when the server stopped go back to the queue, first in line
    /// among their priority (they keep their place by age).
    pub fn requeue_interrupted(&self) -> Result<usize, JobError> {
        self.conn
            .execute(
                "UPDATE jobs SET status = 'queued', restarts = restarts + 1 WHERE status = 'running'",
                [],
            )
            .map_err(sql_err)
    }

    pub fn set_progress(&self, id: &str, p: &Progress) -> Result<(), JobError> {
        self.conn
            .execute(
                "UPDATE jobs SET total = ?2, done = ?3, succeeded = ?4, failed = ?5 WHERE id = ?1",
                params![
                    id,
                    p.total as i64,
                    p.done as i64,
                    p.succeeded as i64,
                    p.failed as i64
                ],
            )
            .map_err(sql_err)?;
        Ok(())
    }

    /// Moves a job to a final state (or back to queued); `only_from` guards against races
    /// with cancellation.
    pub fn set_status(
        &self,
        id: &str,
        status: Status,
        error: Option<&str>,
        only_from: &[Status],
    ) -> Result<bool, JobError> {
        let finished = status.is_terminal().then(now_ms);
        let from: Vec<&str> = only_from.iter().map(|s| s.as_str()).collect();
        let placeholders = (0..from.len())
            .map(|i| format!("?{}", i + 5))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE jobs SET status = ?2, error = COALESCE(?3, error), finished_ms = ?4
             WHERE id = ?1 AND status IN ({placeholders})"
        );
        let status = status.as_str();
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&id, &status, &error, &finished];
        for f in &from {
            args.push(f);
        }
        let n = self.conn.execute(&sql, args.as_slice()).map_err(sql_err)?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, priority: Priority) -> JobRecord {
        JobRecord {
            id: id.into(),
            model: "m".into(),
            inputs: vec!["/in".into()],
            recursive: true,
            priority,
            format: Format::Jsonl,
            status: Status::Queued,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            progress: Progress::default(),
            error: None,
            restarts: 0,
            owner: Some("alice".into()),
        }
    }

    #[test]
    fn high_priority_first_then_oldest_and_interrupted_jobs_come_back() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("jobs.db")).unwrap();
        s.insert(&job("a", Priority::Normal)).unwrap();
        s.insert(&job("b", Priority::Low)).unwrap();
        s.insert(&job("c", Priority::High)).unwrap();
        s.insert(&job("d", Priority::Normal)).unwrap();
        let order: Vec<String> =
            std::iter::from_fn(|| s.claim_next().unwrap().map(|j| j.id)).collect();
        assert_eq!(order, ["c", "a", "d", "b"]);
        assert!(
            s.set_status("a", Status::Succeeded, None, &[Status::Running])
                .unwrap()
        );
        assert!(
            !s.set_status(
                "a",
                Status::Cancelled,
                None,
                &[Status::Queued, Status::Running]
            )
            .unwrap(),
            "a finished job is not cancelled"
        );
        s.set_progress(
            "d",
            &Progress {
                total: 10,
                done: 4,
                succeeded: 3,
                failed: 1,
            },
        )
        .unwrap();
        drop(s);
        let s = Store::open(&d.path().join("jobs.db")).unwrap();
        assert_eq!(s.requeue_interrupted().unwrap(), 3);
        let d_job = s.get("d").unwrap().unwrap();
        assert_eq!(d_job.status, Status::Queued);
        assert_eq!(d_job.restarts, 1);
        assert_eq!(d_job.progress.done, 4);
        assert_eq!(d_job.format, Format::Jsonl);
        assert_eq!(s.get("a").unwrap().unwrap().status, Status::Succeeded);
        assert_eq!(s.list(None, 10, None, None).unwrap().0.len(), 4);
        assert_eq!(
            s.list(Some(Status::Queued), 10, None, None)
                .unwrap()
                .0
                .len(),
            3
        );
        // Pages of two, newest first, then the rest.
        let (first, next) = s.list(None, 2, None, None).unwrap();
        let ids: Vec<&str> = first.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["d", "c"]);
        let (second, last) = s.list(None, 2, next, None).unwrap();
        let ids: Vec<&str> = second.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(s.list(None, 2, last, None).unwrap().0.len(), 0);
        assert_eq!(s.count(Status::Queued).unwrap(), 3);
        assert_eq!(s.list(None, 10, None, Some("alice")).unwrap().0.len(), 4);
        assert_eq!(s.list(None, 10, None, Some("bob")).unwrap().0.len(), 0);
        // Retention: only ended jobs, by their end time.
        assert_eq!(s.ended_before(now_ms() + 1000).unwrap(), ["a"]);
        assert!(s.ended_before(0).unwrap().is_empty());
        s.delete("a").unwrap();
        assert!(s.get("a").unwrap().is_none());
    }
}
