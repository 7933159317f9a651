//! Files that must survive a crash whole: model files, checkpoints, resume points. A write
//! goes to a temporary file beside the target, reaches the disk, and replaces the target by a
//! rename, so a crash at any moment leaves either the old content or the new, never half.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` atomically and durably (see the module comment). The
/// temporary file is `path` + ".part"; the error names the file the failing step touched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DurableError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(DurableError::at("cannot create", &tmp))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(DurableError::at("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(DurableError::at("cannot replace", path))?;
    sync_parent(path)
}

/// Makes a rename or a new file in `path`'s folder durable (the folder entry itself).
pub fn sync_parent(path: &Path) -> Result<(), DurableError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(DurableError::at("cannot sync the folder", dir))
}

#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct DurableError {
    /// What failed, as the start of a message: "cannot create", "cannot write", ...
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl DurableError {
    fn at(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DurableError {
        let path = path.to_path_buf();
        move |source| DurableError {
            action,
            path,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn a_failed_write_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-folder").join("x");
        let e = write_atomic(&path, b"x").unwrap_err().to_string();
        assert!(
            e.starts_with("cannot create") && e.contains("x.part"),
            "{e}"
        );
    }
}
