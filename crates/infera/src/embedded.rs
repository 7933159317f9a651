//! The example model repository, compiled into the binary.

use std::path::{Path, PathBuf};

use anyhow::Context;

include!(concat!(env!("OUT_DIR"), "/embedded_repository.rs"));

/// Writes the embedded repository under `base` (only the files that differ from what is there)
/// and returns its path.
pub fn extract(base: &Path) -> anyhow::Result<PathBuf> {
    let dir = base.join(format!("example-repository-{}", env!("CARGO_PKG_VERSION")));
    for (rel, bytes) in FILES {
        let path = dir.join(rel);
        // Compared by content, not only size: a retrained model of the same architecture has
        // the same size, and a stale copy from an earlier build must not be served. The size
        // and file-type check first keeps the read bounded (no huge file, no FIFO to block on).
        let unchanged = std::fs::metadata(&path)
            .is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64)
            && std::fs::read(&path).is_ok_and(|on_disk| on_disk == *bytes);
        if unchanged {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        // One temporary name per process, so two infera processes starting together never
        // write into the same file.
        let tmp = path.with_extension(format!("partial-{}", std::process::id()));
        std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_file_of_the_same_size_is_replaced() {
        let base = tempfile::tempdir().unwrap();
        let dir = extract(base.path()).unwrap();
        let (rel, bytes) = FILES.iter().find(|(_, b)| !b.is_empty()).unwrap();
        let path = dir.join(rel);
        let stale: Vec<u8> = bytes.iter().map(|b| !b).collect();
        std::fs::write(&path, &stale).unwrap();
        extract(base.path()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), *bytes);
    }
}
