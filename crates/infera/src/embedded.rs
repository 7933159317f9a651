//! The example model repository, compiled into the binary.

use std::path::{Path, PathBuf};

use anyhow::Context;

include!(concat!(env!("OUT_DIR"), "/embedded_repository.rs"));

/// Writes the embedded repository under `base` (once per infera version) and returns its path.
pub fn extract(base: &Path) -> anyhow::Result<PathBuf> {
    let dir = base.join(format!("example-repository-{}", env!("CARGO_PKG_VERSION")));
    for (rel, bytes) in FILES {
        let path = dir.join(rel);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}
