//! Finding libonnxruntime without starting Python: the PyPI wheel `onnxruntime` ships it
//! under `site-packages/onnxruntime/capi/`.

use std::path::{Path, PathBuf};

/// The library to load: `explicit` (a flag), else `ORT_DYLIB_PATH`, else an installed
/// `onnxruntime` wheel in the usual Python locations. A directory means "look inside it".
pub fn find_library(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(resolve(p));
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Some(resolve(Path::new(&p)));
    }
    site_packages_dirs()
        .into_iter()
        .find_map(|sp| library_in(&sp.join("onnxruntime").join("capi")))
}

fn resolve(p: &Path) -> PathBuf {
    if p.is_dir() {
        library_in(p).unwrap_or_else(|| p.join("libonnxruntime.so"))
    } else {
        p.to_path_buf()
    }
}

/// The versioned `libonnxruntime.so.X.Y.Z` in `dir`, else plain `libonnxruntime.so`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so") || n == "libonnxruntime.dylib")
        })
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

fn site_packages_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(PathBuf::from(v).join("lib"));
    }
    roots.push(PathBuf::from(".venv/lib"));
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
        roots.push(home.join(".cache/infera/venv/lib"));
        roots.push(home.join(".local/lib"));
        if let Ok(entries) = std::fs::read_dir(home.join(".pyenv/versions")) {
            roots.extend(entries.filter_map(Result::ok).map(|e| e.path().join("lib")));
        }
    }
    roots.push(PathBuf::from("/usr/local/lib"));
    roots.push(PathBuf::from("/usr/lib"));
    let mut out = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        let mut pythons: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .collect();
        pythons.sort();
        for py in pythons.into_iter().rev() {
            out.push(py.join("site-packages"));
            out.push(py.join("dist-packages"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_the_versioned_library_in_a_directory() {
        let dir = std::env::temp_dir().join(format!("infera-ort-find-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["libonnxruntime.so", "libonnxruntime.so.1.31.1", "other.so"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        assert_eq!(
            find_library(Some(&dir)),
            Some(dir.join("libonnxruntime.so.1.31.1"))
        );
        let file = dir.join("libonnxruntime.so");
        assert_eq!(find_library(Some(&file)), Some(file));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
