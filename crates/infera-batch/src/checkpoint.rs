//! The durable record of a run's progress. Rows go to `<output>.partial` (and errors to
//! `<errors>.partial`); after each chunk both are fsync'd, then the checkpoint, which records
//! how many inputs are done and how many bytes of each file belong to them, is replaced
//! atomically (write, fsync, rename, fsync the folder). A crash at any point leaves a
//! checkpoint that matches a prefix of the partial files; resuming truncates them to it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::BatchError;
use crate::output::Format;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub model: String,
    pub input: PathBuf,
    pub recursive: bool,
    pub format: Format,
    pub total: usize,
    /// Inputs (in list order) whose row or error is in the partial files.
    pub done: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub output_bytes: u64,
    pub errors_bytes: u64,
}

/// Where a run keeps its files, all beside the output.
#[derive(Debug, Clone)]
pub struct RunPaths {
    pub output: PathBuf,
    pub errors: PathBuf,
    pub output_partial: PathBuf,
    pub errors_partial: PathBuf,
    pub checkpoint: PathBuf,
    pub files: PathBuf,
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl RunPaths {
    pub fn new(output: &Path, errors: Option<&Path>) -> RunPaths {
        let errors = errors.map_or_else(
            || {
                let stem = output
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "predictions".into());
                output.with_file_name(format!("{stem}.errors.csv"))
            },
            Path::to_path_buf,
        );
        RunPaths {
            output_partial: with_suffix(output, ".partial"),
            errors_partial: with_suffix(&errors, ".partial"),
            checkpoint: with_suffix(output, ".checkpoint"),
            files: with_suffix(output, ".files.json"),
            output: output.to_path_buf(),
            errors,
        }
    }
}

/// Makes a new or renamed entry in `path`'s folder durable.
pub fn sync_dir(path: &Path) -> Result<(), BatchError> {
    infera_core::durable::sync_parent(path).map_err(from_durable)
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BatchError> {
    infera_core::durable::write_atomic(path, bytes).map_err(from_durable)
}

fn from_durable(e: infera_core::durable::DurableError) -> BatchError {
    BatchError::io(e.action, e.path)(e.source)
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<(), BatchError> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| BatchError::Resume(format!("cannot encode the checkpoint: {e}")))?;
        write_atomic(path, &bytes)
    }

    pub fn load(path: &Path) -> Result<Checkpoint, BatchError> {
        let bytes = std::fs::read(path).map_err(BatchError::io("cannot read checkpoint", path))?;
        let c: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| {
            BatchError::Resume(format!(
                "checkpoint {} is damaged ({e}); delete it and the .partial files to start over",
                path.display()
            ))
        })?;
        if c.version != 1 || c.done > c.total {
            return Err(BatchError::Resume(format!(
                "checkpoint {} is not one this version of infera wrote",
                path.display()
            )));
        }
        Ok(c)
    }
}

/// Opens a partial file for appending after cutting it back to `len` bytes (what the
/// checkpoint vouches for); anything after that came from a chunk that never completed.
pub fn reopen_truncated(path: &Path, len: u64) -> Result<File, BatchError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(BatchError::io("cannot reopen", path))?;
    let actual = f
        .metadata()
        .map_err(BatchError::io("cannot inspect", path))?
        .len();
    if actual < len {
        return Err(BatchError::Resume(format!(
            "{} has {actual} bytes but the checkpoint vouches for {len}: it was changed or lost; start over",
            path.display()
        )));
    }
    f.set_len(len)
        .and_then(|_| f.sync_all())
        .map_err(BatchError::io("cannot truncate", path))?;
    let f = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(BatchError::io("cannot reopen", path))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn checkpoint_round_trips_and_truncation_cuts_back() {
        let d = tempfile::tempdir().unwrap();
        let c = Checkpoint {
            version: 1,
            model: "m".into(),
            input: "/in".into(),
            recursive: false,
            format: Format::Csv,
            total: 10,
            done: 4,
            succeeded: 3,
            failed: 1,
            output_bytes: 5,
            errors_bytes: 0,
        };
        let p = d.path().join("out.csv.checkpoint");
        c.save(&p).unwrap();
        assert_eq!(Checkpoint::load(&p).unwrap(), c);
        assert!(!d.path().join("out.csv.checkpoint.part").exists());
        let part = d.path().join("out.csv.partial");
        std::fs::write(&part, b"hellogarbage").unwrap();
        let mut f = reopen_truncated(&part, 5).unwrap();
        f.write_all(b" world").unwrap();
        assert_eq!(std::fs::read(&part).unwrap(), b"hello world");
        assert!(reopen_truncated(&part, 100).is_err());
        std::fs::write(&p, b"{not json").unwrap();
        assert!(
            Checkpoint::load(&p)
                .unwrap_err()
                .to_string()
                .contains("damaged")
        );
    }

    #[test]
    fn paths_sit_beside_the_output() {
        let r = RunPaths::new(Path::new("/x/predictions.csv"), None);
        assert_eq!(r.errors, Path::new("/x/predictions.errors.csv"));
        assert_eq!(r.checkpoint, Path::new("/x/predictions.csv.checkpoint"));
        assert_eq!(r.output_partial, Path::new("/x/predictions.csv.partial"));
    }
}
