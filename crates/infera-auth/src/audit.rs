//! The audit log: one JSON line per management action and per refused request, written by
//! its own thread so a slow disk never holds a request. Secrets never reach it: events name
//! identities by id, never by key.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::AuthError;

/// Lines waiting for the writer; past it lines are dropped (and counted), never waited for.
const BACKLOG: usize = 10_000;

pub struct Audit {
    tx: SyncSender<Value>,
    dropped: AtomicU64,
}

impl Audit {
    /// Appends to `path` (created with owner-only permissions).
    pub fn open(path: &Path) -> Result<Audit, AuthError> {
        let mut opts = std::fs::OpenOptions::new();
        opts.append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut file = opts.open(path).map_err(|e| {
            AuthError::Config(format!("cannot open the audit log {}: {e}", path.display()))
        })?;
        let (tx, rx) = sync_channel::<Value>(BACKLOG);
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut lines = first.to_string();
                    lines.push('\n');
                    while let Ok(more) = rx.try_recv() {
                        lines.push_str(&more.to_string());
                        lines.push('\n');
                    }
                    if let Err(e) = file.write_all(lines.as_bytes()).and_then(|()| file.flush()) {
                        tracing::warn!(error = %e, "cannot write the audit log");
                    }
                }
            })
            .map_err(|e| AuthError::Config(format!("cannot start the audit log: {e}")))?;
        Ok(Audit {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    /// Records an event: `who` (identity id), `action`, `target`, `outcome`, `from`.
    pub fn record(&self, who: &str, action: &str, target: &str, outcome: &str, from: &str) {
        let line = json!({
            "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "who": who,
            "action": action,
            "target": target,
            "outcome": outcome,
            "from": from,
        });
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_json_lines() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("audit.jsonl");
        let a = Audit::open(&path).unwrap();
        a.record("ops", "load", "fashion_mnist", "ok", "127.0.0.1");
        a.record("-", "infer", "m", "401 no credential", "10.0.0.9");
        drop(a);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["who"], "ops");
        assert_eq!(lines[1]["outcome"], "401 no credential");
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
    }
}
